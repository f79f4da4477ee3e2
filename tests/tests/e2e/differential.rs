//! Differential imagesets, sequence acceptance, missing layers, registry-held state,
//! crash recovery, and registry-to-registry mirroring.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use airlock_imageset::read::read_head;
use airlock_imageset::{BLOCK, ImagesetManifest, padded};
use airlock_tests::bins::{self, Output, run, run_ok};
use airlock_tests::images::{Format, Image, ImageBuilder, PushClient, layer};
use airlock_tests::registry::Registry;

use crate::util::*;

/// Pushes `image` to `repo:tag` and describes it for the configuration.
fn place(client: &PushClient, image: Image, repo: &str, tag: &str) -> Placed {
    image.push(client, repo, Some(tag)).unwrap();
    Placed {
        image,
        repo: repo.into(),
        config_ref: format!("{repo}:{tag}"),
        dest_ref: format!("{repo}:{tag}"),
    }
}

/// The imageset manifest carried by the chunk files in `dir` for `sequence`.
fn manifest_of(dir: &Path, sequence: u64) -> (ImagesetManifest, Vec<PathBuf>) {
    let mut found = None;
    let mut files = Vec::new();
    for f in chunk_files(dir) {
        let head = read_head(&f).unwrap();
        if head.manifest.sequence == sequence {
            files.push(f);
            found = Some((*head.manifest).clone());
        }
    }
    (found.expect("imageset in the directory"), files)
}

/// Bytes of blob content an imageset carries.
fn carried_bytes(m: &ImagesetManifest) -> u64 {
    m.blobs
        .iter()
        .flat_map(|b| &b.parts)
        .map(|p| p.length)
        .sum()
}

/// The format overhead of an imageset, from its structure alone: per chunk the
/// metadata (manifest entry), the identity entry and the end-of-archive marker; per
/// part a header and padding.
fn overhead(m: &ImagesetManifest, files: &[PathBuf]) -> u64 {
    let head = read_head(&files[0]).unwrap();
    let per_chunk = head.payload_offset + 2 * BLOCK + 2 * BLOCK;
    let parts: u64 = m
        .blobs
        .iter()
        .flat_map(|b| &b.parts)
        .map(|p| BLOCK + padded(p.length) - p.length)
        .sum();
    m.chunks.len() as u64 * per_chunk + parts
}

fn config_for(dir: &Path, source: &Registry, placed: &[&Placed], head: &str) -> PathBuf {
    let mut text = head.to_string();
    text.push_str("mirror:\n  additionalImages:\n");
    for p in placed {
        text.push_str(&format!("  - name: {}/{}\n", source.addr(), p.config_ref));
    }
    let path = dir.join("isc.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

const V2: &str = "apiVersion: mirror.openshift.io/v2alpha1\nkind: ImageSetConfiguration\n";

#[test]
fn three_imagesets_ship_only_new_blobs_and_end_byte_exact() {
    let source = Registry::plain().unwrap();
    let dest = Registry::plain().unwrap();
    let client = PushClient::new(&source).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let ws = tmp.path().join("ws-c");
    let base = layer(1, 400_000);

    // 1: two images sharing a base layer.
    let web = place(
        &client,
        ImageBuilder::new(Format::Oci)
            .with_layer(&base)
            .layer(2, 100_000)
            .build(),
        "shop/web",
        "v1",
    );
    let api = place(
        &client,
        ImageBuilder::new(Format::Docker)
            .with_layer(&base)
            .layer(3, 120_000)
            .pretty()
            .build(),
        "shop/api",
        "v1",
    );
    let config = config_for(tmp.path(), &source, &[&web, &api], V2);
    run_ok(&mut create_cmd(&config, &out, &ws, "300KiB", &source));
    let (m1, files1) = manifest_of(&out, 1);
    let all1 = dedup_bytes([&web, &api].iter().flat_map(|p| p.image.all_blobs()));
    let manifests1: u64 = (web.image.manifest.len() + api.image.manifest.len()) as u64;
    assert_eq!(
        carried_bytes(&m1),
        all1 + manifests1,
        "the first imageset carries everything once"
    );

    // 2: web's tag moves to a new image on the same base; a new image joins, on the
    // same base too. Only the new blobs travel, plus every manifest.
    let web2 = place(
        &client,
        ImageBuilder::new(Format::Oci)
            .with_layer(&base)
            .layer(4, 90_000)
            .build(),
        "shop/web",
        "v1",
    );
    let cart = place(
        &client,
        ImageBuilder::new(Format::Oci)
            .with_layer(&base)
            .layer(5, 70_000)
            .pretty()
            .build(),
        "shop/cart",
        "v1",
    );
    let config = config_for(tmp.path(), &source, &[&web2, &api, &cart], V2);
    run_ok(&mut create_cmd(&config, &out, &ws, "300KiB", &source));
    let (m2, files2) = manifest_of(&out, 2);
    assert!(!m2.full);
    let shipped1: HashSet<&str> = [&web, &api]
        .iter()
        .flat_map(|p| p.image.all_blobs())
        .map(|b| b.digest.as_str())
        .collect();
    let new2: u64 = dedup_bytes(
        [&web2, &cart]
            .iter()
            .flat_map(|p| p.image.all_blobs())
            .filter(|b| !shipped1.contains(b.digest.as_str())),
    );
    let manifests2 =
        (web2.image.manifest.len() + api.image.manifest.len() + cart.image.manifest.len()) as u64;
    assert_eq!(
        carried_bytes(&m2),
        new2 + manifests2,
        "only new blobs and the manifests travel"
    );
    let chunk_bytes2: u64 = files2
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    assert_eq!(
        chunk_bytes2,
        new2 + manifests2 + overhead(&m2, &files2),
        "and nothing else but the format"
    );
    assert_eq!(
        m2.images.len(),
        3,
        "the imageset still lists the whole desired state"
    );
    assert!(
        m2.blobs
            .iter()
            .any(|b| b.digest.as_str() == base.digest && b.parts.is_empty()),
        "the base is listed, not carried"
    );

    // 3: a new tag for cart reusing web's first layer, nothing else new but a config.
    let cart2 = place(
        &client,
        ImageBuilder::new(Format::Oci)
            .arch("arm64")
            .with_layer(&base)
            .with_layer(&web.image.blobs[2])
            .build(),
        "shop/cart",
        "v2",
    );
    let config = config_for(tmp.path(), &source, &[&web2, &api, &cart, &cart2], V2);
    run_ok(&mut create_cmd(&config, &out, &ws, "300KiB", &source));
    let (m3, _) = manifest_of(&out, 3);
    let shipped2: HashSet<&str> = shipped1
        .iter()
        .copied()
        .chain(
            [&web2, &cart]
                .iter()
                .flat_map(|p| p.image.all_blobs())
                .map(|b| b.digest.as_str()),
        )
        .collect();
    let new3 = dedup_bytes(
        cart2
            .image
            .all_blobs()
            .into_iter()
            .filter(|b| !shipped2.contains(b.digest.as_str())),
    );
    assert_eq!(
        new3,
        cart2.image.blobs[0].bytes.len() as u64,
        "only the new config is new"
    );
    let manifests3 = [&web2, &api, &cart, &cart2]
        .iter()
        .map(|p| p.image.manifest.len() as u64)
        .sum::<u64>();
    assert_eq!(carried_bytes(&m3), new3 + manifests3);

    let (_, files3) = manifest_of(&out, 3);
    let shipped: Vec<u64> = [&files1, &files2, &files3]
        .iter()
        .map(|fs| fs.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum())
        .collect();
    // What a tool without differential imagesets would carry: every image, whole.
    let image_sizes: u64 = [&web, &api, &web2, &cart, &cart2]
        .iter()
        .map(|p| {
            p.image.manifest.len() as u64
                + p.image
                    .all_blobs()
                    .iter()
                    .map(|b| b.bytes.len() as u64)
                    .sum::<u64>()
        })
        .sum();
    eprintln_figures(&shipped, image_sizes);

    // All three, in one directory: published in sequence, and the mirror serves the
    // current state byte for byte.
    let published = publish(&out, &dest, "m", &tmp.path().join("ws-d"));
    assert_eq!(published.code, 0, "{published}");
    for seq in 1..=3 {
        assert!(
            published.stdout.contains(&format!("sequence {seq} (")),
            "{published}"
        );
    }
    assert_byte_exact(&source, &dest, "m", &[web2, api, cart, cart2]);
}

fn dedup_bytes<'a>(blobs: impl Iterator<Item = &'a airlock_tests::images::Blob>) -> u64 {
    let mut seen = HashSet::new();
    blobs
        .filter(|b| seen.insert(b.digest.clone()))
        .map(|b| b.bytes.len() as u64)
        .sum()
}

#[allow(
    clippy::print_stderr,
    reason = "figures for the closing note, shown with --nocapture"
)]
fn eprintln_figures(shipped: &[u64], image_sizes: u64) {
    eprintln!(
        "chunk bytes per imageset {shipped:?}, total {}, against {image_sizes} bytes for all image sizes",
        shipped.iter().sum::<u64>()
    );
}

/// Creates sequences 1..=n of one connected workspace, each into its own directory;
/// each sequence adds an image, so that each has something to ship.
fn sequences(s: &Setup, ws: &str, n: u64) -> Vec<PathBuf> {
    let client = PushClient::new(&s.source).unwrap();
    let mut text = std::fs::read_to_string(&s.config).unwrap();
    (1..=n)
        .map(|seq| {
            let extra = ImageBuilder::new(Format::Oci)
                .layer(900 + seq, 2000)
                .build();
            let repo = format!("extra/{ws}-{seq}");
            extra.push(&client, &repo, Some("1")).unwrap();
            text.push_str(&format!("  - name: {}/{repo}:1\n", s.source.addr()));
            let config = s.path(&format!("{ws}-seq{seq}.yaml"));
            std::fs::write(&config, &text).unwrap();
            let out = s.path(&format!("{ws}-seq{seq}"));
            let created = create(&config, &out, &s.path(ws), "1MiB", &s.source);
            assert_eq!(created.code, 0, "{created}");
            assert!(
                created.stdout.contains(&format!("sequence {seq}:")),
                "{created}"
            );
            out
        })
        .collect()
}

fn gather(dirs: &[&PathBuf], into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    for d in dirs {
        for f in chunk_files(d) {
            std::fs::copy(&f, into.join(f.file_name().unwrap())).unwrap();
        }
    }
}

#[test]
fn sequences_out_of_order_wait_duplicates_skip_foreign_ones_are_refused() {
    let s = Setup::plain();
    let sets = sequences(&s, "ws-c", 3);

    // 1 and 3 arrive: 1 is published, 3 waits for 2.
    let drop = s.path("drop");
    gather(&[&sets[0], &sets[2]], &drop);
    let first = s.publish(&drop, "m", "ws-d");
    assert_eq!(first.code, EX_INCOMPLETE, "{first}");
    assert!(
        first
            .stderr
            .contains("sequence 3 is waiting for sequence 2"),
        "{first}"
    );
    assert!(
        first.stdout.contains("sequence 1 (") && !first.stdout.contains("sequence 3 ("),
        "{first}"
    );
    // 2 arrives: 2 and then 3 are taken, in order.
    gather(&[&sets[1]], &drop);
    let second = s.publish(&drop, "m", "ws-d");
    assert_eq!(second.code, 0, "{second}");
    let (i2, i3) = (
        second.stdout.find("sequence 2 (").unwrap(),
        second.stdout.find("sequence 3 (").unwrap(),
    );
    assert!(i2 < i3, "accepted in sequence order: {second}");
    s.assert_byte_exact("m");

    // 2 again (a diode resends): skipped quietly.
    let again = s.publish(&sets[1], "m", "ws-d");
    assert_eq!(again.code, 0, "{again}");
    assert!(!again.stdout.contains("accepted"), "{again}");

    // Another connected workspace: its sequence 2, and its sequence 1 (a full one).
    let other = sequences(&s, "ws-other", 2);
    for (dir, want) in [
        (&other[1], "comes from another connected workspace"),
        (&other[0], "starts a new workspace"),
    ] {
        let refused = s.publish(dir, "m", "ws-d");
        assert_eq!(refused.code, EX_STATE, "{refused}");
        assert!(refused.stderr.contains(want), "{refused}");
        let head = read_head(&chunk_files(dir)[0]).unwrap();
        assert!(
            refused.stderr.contains(&head.manifest.uuid.to_string()),
            "names what arrived: {refused}"
        );
        let ours = read_head(&chunk_files(&sets[0])[0]).unwrap();
        assert!(
            refused.stderr.contains(&ours.manifest.uuid.to_string()),
            "names what the site follows: {refused}"
        );
    }
}

/// The hex digests of the blobs in the content store of workspace `ws`.
fn stored(ws: &Path) -> Vec<String> {
    std::fs::read_dir(ws.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_registry_added_after_the_store_was_emptied_is_published_to_from_another() {
    // As in acceptance: published with --empty-store, then the same imageset to
    // a new registry, its layers fetched from the first.
    let s = Setup::plain();
    let (_, out) = s.create("1MiB");
    let ws = s.path("ws-d");
    let emptied = run(publish_cmd(&out, &s.dest, "m", &ws).arg("--empty-store"));
    assert_eq!(emptied.code, 0, "{emptied}");
    let from_first = format!("docker://{}/m", s.dest.addr());
    let second = Registry::plain().unwrap();
    let published = run(publish_cmd(&out, &second, "m", &ws).args(["--fetch-from", &from_first]));
    assert_eq!(published.code, 0, "{published}");
    assert_byte_exact(&s.source, &second, "m", &s.placed);

    // A store emptied of its manifests too (as before they were kept): they
    // are fetched like layers, by digest.
    for hex in stored(&ws) {
        std::fs::remove_file(ws.join("blobs/sha256").join(hex)).unwrap();
    }
    let third = Registry::plain().unwrap();
    let published = run(publish_cmd(&out, &third, "m", &ws).args(["--fetch-from", &from_first]));
    assert_eq!(published.code, 0, "{published}");
    assert!(
        published
            .stderr
            .contains("manifest missing from the content store fetched and verified"),
        "{published}"
    );
    assert_byte_exact(&s.source, &third, "m", &s.placed);
}

#[test]
fn pruned_store_fetches_a_missing_layer_from_the_target_or_says_where_it_looked() {
    let source = Registry::plain().unwrap();
    let dest = Registry::plain().unwrap();
    let client = PushClient::new(&source).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let ws_c = tmp.path().join("ws-c");
    let ws_d = tmp.path().join("ws-d");
    let base = layer(11, 300_000);
    let app = place(
        &client,
        ImageBuilder::new(Format::Oci)
            .with_layer(&base)
            .layer(12, 5000)
            .build(),
        "team/app",
        "1",
    );
    let config = config_for(tmp.path(), &source, &[&app], V2);
    let out1 = tmp.path().join("out1");
    run_ok(&mut create_cmd(&config, &out1, &ws_c, "1MiB", &source));
    let mut cmd = publish_cmd(&out1, &dest, "m", &ws_d);
    cmd.arg("--empty-store");
    let published = run(&mut cmd);
    assert_eq!(published.code, 0, "{published}");
    assert!(
        published.stdout.contains("emptied the content store"),
        "{published}"
    );
    // Only the manifests stay: a registry added later is published to from them.
    let (m1, _) = manifest_of(&out1, 1);
    let manifests: HashSet<String> = m1
        .blobs
        .iter()
        .filter(|b| b.media_type.is_some())
        .map(|b| b.digest.hex().to_string())
        .collect();
    let left: HashSet<String> = stored(&ws_d).into_iter().collect();
    assert_eq!(left, manifests, "the store holds the manifests alone");

    // Set 2: a new repository built on the same base. The base does not travel (set 1
    // shipped it), the store no longer has it, the new repository lacks it: it is
    // fetched from the repository where set 1 published it.
    let tool = place(
        &client,
        ImageBuilder::new(Format::Oci)
            .with_layer(&base)
            .layer(13, 6000)
            .build(),
        "team/tool",
        "1",
    );
    let config = config_for(tmp.path(), &source, &[&app, &tool], V2);
    let out2 = tmp.path().join("out2");
    run_ok(&mut create_cmd(&config, &out2, &ws_c, "1MiB", &source));
    let (m2, _) = manifest_of(&out2, 2);
    assert!(
        m2.blobs
            .iter()
            .any(|b| b.digest.as_str() == base.digest && b.parts.is_empty())
    );
    let mut cmd = publish_cmd(&out2, &dest, "m", &ws_d);
    cmd.arg("--empty-store");
    let published = run(&mut cmd);
    assert_eq!(published.code, 0, "{published}");
    assert!(
        published
            .stderr
            .contains("missing layer fetched and verified"),
        "{published}"
    );
    assert_byte_exact(&source, &dest, "m", &[app, tool]);

    // Set 3: another new repository on the base, after the base was deleted from
    // every repository of the target. Nothing of the new image may be pushed.
    let dest_client = PushClient::new(&dest).unwrap();
    for repo in ["m/team/app", "m/team/tool"] {
        dest_client.delete_blob(repo, &base.digest).unwrap();
    }
    let job = place(
        &client,
        ImageBuilder::new(Format::Oci)
            .with_layer(&base)
            .layer(14, 7000)
            .build(),
        "team/job",
        "1",
    );
    let config = config_for(tmp.path(), &source, &[&job], V2);
    let out3 = tmp.path().join("out3");
    run_ok(&mut create_cmd(&config, &out3, &ws_c, "1MiB", &source));
    let failed = run(&mut publish_cmd(&out3, &dest, "m", &ws_d));
    assert_eq!(failed.code, EX_DATA, "{failed}");
    for want in [
        "team/job:1",
        base.digest.as_str(),
        "could not be fetched from",
        &format!("{}/m/team/", dest.addr()),
        "nothing of this image was pushed",
    ] {
        assert!(failed.stderr.contains(want), "want {want:?}: {failed}");
    }
    assert!(
        !catalog(&dest).iter().any(|r| r == "m/team/job"),
        "nothing of team/job: {:?}",
        catalog(&dest)
    );
}

#[test]
fn both_workspaces_lost_continue_from_the_registries() {
    let source = Registry::plain().unwrap();
    let dest = Registry::plain().unwrap();
    let state = Registry::plain().unwrap();
    let client = PushClient::new(&source).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let v1 = format!(
        "apiVersion: mirror.openshift.io/v1alpha2\nkind: ImageSetConfiguration\nstorageConfig:\n  registry:\n    imageURL: {}/airlock/workspace:site-a\n    skipTLS: true\n",
        state.addr()
    );
    let base = layer(21, 200_000);
    let a = place(
        &client,
        ImageBuilder::new(Format::Oci)
            .with_layer(&base)
            .layer(22, 1000)
            .build(),
        "x/a",
        "1",
    );
    let config = config_for(tmp.path(), &source, &[&a], &v1);
    let out1 = tmp.path().join("out1");
    run_ok(&mut create_cmd(
        &config,
        &out1,
        &tmp.path().join("ws-c"),
        "1MiB",
        &source,
    ));
    assert_eq!(publish(&out1, &dest, "m", &tmp.path().join("ws-d")).code, 0);
    std::fs::remove_dir_all(tmp.path().join("ws-c")).unwrap();
    std::fs::remove_dir_all(tmp.path().join("ws-d")).unwrap();

    // New machines on both sides.
    let b = place(
        &client,
        ImageBuilder::new(Format::Oci)
            .with_layer(&base)
            .layer(23, 1000)
            .build(),
        "x/b",
        "1",
    );
    let config = config_for(tmp.path(), &source, &[&a, &b], &v1);
    let out2 = tmp.path().join("out2");
    let created = run_ok(&mut create_cmd(
        &config,
        &out2,
        &tmp.path().join("ws-c2"),
        "1MiB",
        &source,
    ));
    assert!(
        created.stdout.contains("sequence 2:"),
        "continues the sequence: {created}"
    );
    let (m2, _) = manifest_of(&out2, 2);
    assert!(
        m2.blobs
            .iter()
            .any(|x| x.digest.as_str() == base.digest && x.parts.is_empty()),
        "and the shipped record"
    );
    let published = publish(&out2, &dest, "m", &tmp.path().join("ws-d2"));
    assert_eq!(published.code, 0, "{published}");
    assert!(
        published
            .stdout
            .contains("continued from the workspace state"),
        "{published}"
    );
    assert!(published.stdout.contains("sequence 2 ("), "{published}");
    assert_byte_exact(&source, &dest, "m", &[a, b]);
}

/// Runs `cmd` with `AIRLOCK_CRASH_AT=point` and checks that it died there.
fn crash(mut cmd: Command, point: &str) -> Output {
    cmd.env("AIRLOCK_CRASH_AT", point);
    let out = run(&mut cmd);
    assert_ne!(out.code, 0, "the process must die at {point}: {out}");
    assert!(out.stderr.contains(point), "{out}");
    out
}

#[test]
fn crash_at_every_commit_point_then_rerun_ends_as_an_uninterrupted_run() {
    let source = Registry::plain().unwrap();
    let state = Registry::plain().unwrap();
    let client = PushClient::new(&source).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let v1 = format!(
        "apiVersion: mirror.openshift.io/v1alpha2\nkind: ImageSetConfiguration\nstorageConfig:\n  registry:\n    imageURL: {}/state/ws\n    skipTLS: true\n",
        state.addr()
    );
    let images = [
        place(
            &client,
            ImageBuilder::new(Format::Oci)
                .layer(31, 200_000)
                .layer(32, 50_000)
                .build(),
            "c/a",
            "1",
        ),
        place(
            &client,
            ImageBuilder::new(Format::Docker)
                .layer(33, 150_000)
                .pretty()
                .build(),
            "c/b",
            "1",
        ),
    ];
    let config = config_for(tmp.path(), &source, &images.iter().collect::<Vec<_>>(), &v1);

    // After a crash before the imageset is recorded, nothing of it is in --out and
    // the rerun makes sequence 1 again; after it was recorded (in the registry copy,
    // or also locally), the rerun moves its files out of staging and finds nothing new.
    let points = [
        ("filled", "sequence 1:"),
        ("renamed", "sequence 1:"),
        ("state-pushed", "no updates since"),
        ("committed", "no updates since"),
    ];
    for (k, (point, want)) in points.iter().enumerate() {
        let dest = Registry::plain().unwrap();
        let out = tmp.path().join(format!("out-{k}"));
        let ws = tmp.path().join(format!("ws-c-{k}"));
        let state_tag = format!("{}/state/ws{k}", state.addr());
        let config = {
            let text = std::fs::read_to_string(&config)
                .unwrap()
                .replace(&format!("{}/state/ws", state.addr()), &state_tag);
            let p = tmp.path().join(format!("isc-{k}.yaml"));
            std::fs::write(&p, text).unwrap();
            p
        };
        crash(create_cmd(&config, &out, &ws, "200KiB", &source), point);
        assert!(
            chunk_files(&out).is_empty(),
            "{point}: no chunk file in --out before the run is over"
        );
        let rerun = run_ok(&mut create_cmd(&config, &out, &ws, "200KiB", &source));
        assert!(rerun.stdout.contains(want), "{point}: {rerun}");
        assert!(
            !chunk_files(&out).is_empty(),
            "{point}: the imageset's files are in --out"
        );
        let staged = out.join(".airlock-staging");
        assert!(
            std::fs::read_dir(&staged).map_or(true, |mut d| d.next().is_none()),
            "{point}: staging is empty"
        );
        let published = publish(&out, &dest, "m", &tmp.path().join(format!("ws-d-{k}")));
        assert_eq!(published.code, 0, "{point}: {published}");
        assert_byte_exact(&source, &dest, "m", &images);
    }

    // The disconnected side, killed at each of its commit points.
    let out = tmp.path().join("out-0");
    for point in ["ingested", "accepted", "published-images"] {
        let dest = Registry::plain().unwrap();
        let ws = tmp.path().join(format!("ws-d-{point}"));
        crash(publish_cmd(&out, &dest, "m", &ws), point);
        let rerun = run(&mut publish_cmd(&out, &dest, "m", &ws));
        assert_eq!(rerun.code, 0, "{point}: {rerun}");
        assert_byte_exact(&source, &dest, "m", &images);
        let again = run(&mut publish_cmd(&out, &dest, "m", &ws));
        assert!(
            !again.stdout.contains("uploaded"),
            "{point}: nothing left to do: {again}"
        );
    }
}

#[test]
fn mirror_to_a_registry_holding_half_uploads_only_the_other_half() {
    let source = Registry::plain().unwrap();
    let dest = Registry::plain().unwrap();
    let client = PushClient::new(&source).unwrap();
    let images: Vec<Placed> = (0..4u64)
        .map(|i| {
            place(
                &client,
                ImageBuilder::new(Format::Oci)
                    .layer(40 + i, 100_000)
                    .layer(50 + i, 20_000)
                    .build(),
                &format!("half/img{i}"),
                "1",
            )
        })
        .collect();
    // The target already has the first two, where mirror will put them.
    let target = PushClient::new(&dest).unwrap();
    for p in &images[..2] {
        p.image
            .push(&target, &format!("m/{}", p.repo), Some("1"))
            .unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    let config = config_for(tmp.path(), &source, &images.iter().collect::<Vec<_>>(), V2);
    let mut cmd = bins::connected();
    cmd.arg("mirror")
        .arg("--config")
        .arg(&config)
        .arg("--workspace")
        .arg(tmp.path().join("ws"));
    cmd.arg("--to")
        .arg(format!("docker://{}/m", dest.addr()))
        .arg("--dest-tls-verify=false");
    source_flags(&mut cmd, &source);
    let out = run_ok(&mut cmd);
    let other_half: u64 = images[2..]
        .iter()
        .flat_map(|p| p.image.all_blobs())
        .map(|b| b.bytes.len() as u64)
        .sum();
    let blobs = images[2..]
        .iter()
        .map(|p| p.image.all_blobs().len())
        .sum::<usize>();
    assert!(
        out.stdout.contains(&format!(
            "{blobs} blobs uploaded ({})",
            airlock_common::size::ByteSize(other_half)
        )),
        "uploads exactly the other half ({blobs} blobs, {other_half} bytes): {out}"
    );
    assert!(
        out.stdout.contains(&format!(
            "{} already present",
            images[..2]
                .iter()
                .map(|p| p.image.all_blobs().len())
                .sum::<usize>()
        )),
        "{out}"
    );
    assert_byte_exact(&source, &dest, "m", &images);
    assert!(
        tmp.path()
            .join("ws/cluster-resources/itms-oc-mirror.yaml")
            .is_file()
    );
}

/// Starts `cmd`, waits until `proxy` holds its transfer, and SIGKILLs it there.
fn kill_when_stalled(mut cmd: Command, proxy: &airlock_tests::proxy::SlowProxy) {
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stalled = proxy.wait_stalled(std::time::Duration::from_secs(60));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    stalled.unwrap();
    proxy.release();
}

#[test]
fn sigkill_in_the_middle_of_a_download_and_of_an_upload() {
    use airlock_tests::proxy::{Direction, SlowProxy};
    let source = Registry::plain().unwrap();
    let dest = Registry::plain().unwrap();
    let client = PushClient::new(&source).unwrap();
    let images = [
        place(
            &client,
            ImageBuilder::new(Format::Oci).layer(61, 600_000).build(),
            "k/a",
            "1",
        ),
        place(
            &client,
            ImageBuilder::new(Format::Docker)
                .layer(62, 600_000)
                .pretty()
                .build(),
            "k/b",
            "1",
        ),
    ];
    // The source is reached through a proxy that stalls the download mid-layer.
    let src_proxy = SlowProxy::start(&source.addr(), Direction::Download, 400_000).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut text = V2.to_string();
    text.push_str("mirror:\n  additionalImages:\n");
    for p in &images {
        text.push_str(&format!(
            "  - name: {}/{}\n",
            src_proxy.addr(),
            p.config_ref
        ));
    }
    let config = tmp.path().join("isc.yaml");
    std::fs::write(&config, text).unwrap();
    let (out, ws_c) = (tmp.path().join("out"), tmp.path().join("ws-c"));
    let create = || {
        let mut cmd = bins::connected();
        cmd.arg("create")
            .arg("--config")
            .arg(&config)
            .arg("--out")
            .arg(&out)
            .arg("--workspace")
            .arg(&ws_c);
        cmd.args(["--limit", "300KiB", "--src-tls-verify=false"]);
        cmd
    };
    kill_when_stalled(create(), &src_proxy);
    let left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        left,
        [".airlock-staging"],
        "nothing but the staging directory: {left:?}"
    );
    let rerun = run_ok(&mut create());
    assert!(
        rerun.stdout.contains("sequence 1:"),
        "the sequence did not advance: {rerun}"
    );
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names.iter().all(|n| !n.ends_with(".part")),
        "the rerun cleared the leftovers: {names:?}"
    );

    // The destination is reached through a proxy that stalls an upload mid-layer.
    let dst_proxy = SlowProxy::start(&dest.addr(), Direction::Upload, 400_000).unwrap();
    let ws_d = tmp.path().join("ws-d");
    let publish = || {
        let mut cmd = bins::disconnected();
        cmd.arg("publish")
            .arg("--from")
            .arg(&out)
            .arg("--workspace")
            .arg(&ws_d);
        cmd.arg("--to")
            .arg(format!("docker://{}/m", dst_proxy.addr()))
            .arg("--dest-tls-verify=false");
        cmd
    };
    kill_when_stalled(publish(), &dst_proxy);
    let rerun = run(&mut publish());
    assert_eq!(rerun.code, 0, "{rerun}");
    assert_byte_exact(&source, &dest, "m", &images);
    let again = run(&mut publish());
    assert!(
        !again.stdout.contains("uploaded"),
        "nothing left to do: {again}"
    );
}
