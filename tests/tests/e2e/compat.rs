//! What oc-mirror users rely on: `--continue-on-error`, so that one image that
//! cannot be pulled does not abort a run of hundreds of gigabytes.

use airlock_tests::bins::run;
use airlock_tests::faults::{Fault, FaultProxy};
use airlock_tests::images::{Format, Image, ImageBuilder, PushClient};
use airlock_tests::registry::Registry;
use airlock_tests::skopeo::inspect_raw_at;

use crate::util::*;

#[test]
fn continue_on_error_leaves_out_what_cannot_be_pulled_and_carries_over_what_the_site_has() {
    let s = Setup::plain();
    // Sequence 1 also has an image of a second registry, which then goes away.
    let mut other = Registry::plain().unwrap();
    let ghost = ImageBuilder::new(Format::Oci).layer(71, 40_000).build();
    ghost
        .push(&PushClient::new(&other).unwrap(), "extra/ghost", Some("1"))
        .unwrap();
    let ghost_ref = format!("docker://{}/extra/ghost:1", other.addr());
    let config = s.path("isc.yaml");
    let base = std::fs::read_to_string(&s.config).unwrap();
    let with = |extra: &str| {
        std::fs::write(&config, format!("{base}  - name: {ghost_ref}\n{extra}")).unwrap();
    };
    with("");
    let create = |out: &str| create_cmd(&config, &s.path(out), &s.path("ws-c"), "1MiB", &s.source);
    let first = run(&mut create("out1"));
    assert_eq!(first.code, 0, "{first}");
    let published = s.publish(&s.path("out1"), "m", "ws-d");
    assert_eq!(published.code, 0, "{published}");
    let at_site = "m/extra/ghost:1";
    assert_eq!(inspect_raw_at(&s.dest, at_site).unwrap(), ghost.manifest);

    // Sequence 2: the second registry is down, a new image does not exist,
    // and another new one does.
    other.stop();
    let none_ref = format!("docker://{}/team/none:1", s.source.addr());
    let fresh = ImageBuilder::new(Format::Oci).layer(72, 30_000).build();
    fresh
        .push(
            &PushClient::new(&s.source).unwrap(),
            "team/fresh",
            Some("1"),
        )
        .unwrap();
    with(&format!(
        "  - name: {none_ref}\n  - name: docker://{}/team/fresh:1\n",
        s.source.addr()
    ));
    let stopped = run(&mut create("out2"));
    assert_eq!(
        stopped.code, EX_UNAVAILABLE,
        "without the flag the run stops: {stopped}"
    );
    assert!(
        stopped.stderr.contains("extra/ghost") || stopped.stderr.contains("team/none"),
        "{stopped}"
    );
    assert!(
        !s.path("out2").exists() || chunk_files(&s.path("out2")).is_empty(),
        "nothing written"
    );

    // A dry run always completes, and says what is missing.
    let dry = run(create("dry").arg("--dry-run"));
    assert_eq!(dry.code, EX_PARTIAL, "{dry}");
    assert!(s.path("dry/missing.txt").exists(), "{dry}");

    let partial = run(create("out2").arg("--continue-on-error"));
    assert_eq!(partial.code, EX_PARTIAL, "{partial}");
    assert!(
        partial.stdout.contains("2 images failed and were left out"),
        "{partial}"
    );
    let missing = std::fs::read_to_string(s.path("out2/missing.txt")).unwrap();
    let lines: Vec<&str> = missing.lines().collect();
    assert_eq!(lines.len(), 2, "{missing}");
    let ghost_line = lines.iter().find(|l| l.starts_with(&ghost_ref)).unwrap();
    assert!(
        ghost_line.ends_with("\tcarried over as it was in sequence 1"),
        "{missing}"
    );
    let none_line = lines.iter().find(|l| l.starts_with(&none_ref)).unwrap();
    assert!(none_line.ends_with("\tnot in the imageset"), "{missing}");

    // The site publishes the rest and keeps the image it already had: the
    // imageset still lists it, so pruning does not take it away.
    let published = s.publish(&s.path("out2"), "m", "ws-d");
    assert_eq!(published.code, 0, "{published}");
    assert!(
        published.stdout.contains("published sequence 2"),
        "{published}"
    );
    assert_eq!(inspect_raw_at(&s.dest, at_site).unwrap(), ghost.manifest);
    s.assert_byte_exact("m");

    // Regression: the registry back and the image that does not exist taken out
    // of the configuration, nothing changed: no imageset, although the carried
    // image was listed last and is now listed in the configuration's order.
    other.start_again().unwrap();
    with(&format!(
        "  - name: docker://{}/team/fresh:1\n",
        s.source.addr()
    ));
    let again = run(&mut create("out3"));
    assert_eq!(again.code, 0, "{again}");
    assert!(
        again.stdout.contains("nothing created") || again.stderr.contains("nothing created"),
        "{again}"
    );
    assert!(!s.path("out3").exists() || chunk_files(&s.path("out3")).is_empty());
}

#[test]
fn describe_says_what_an_imageset_holds_without_a_workspace() {
    let s = Setup::plain();
    let keys = s.path("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (key, _, key_id) = keygen(&keys, "site");
    let out = s.path("out");
    let created = run(
        create_cmd(&s.config, &out, &s.path("ws-c"), "150KiB", &s.source)
            .args(["--parity", "1", "--sign-key"])
            .arg(&key),
    );
    assert_eq!(created.code, 0, "{created}");
    let describe = |what: &std::path::Path, json: bool| {
        let mut cmd = airlock_tests::bins::disconnected();
        cmd.arg("describe").arg(what);
        if json {
            cmd.args(["-o", "json"]);
        }
        run(&mut cmd)
    };

    let text = describe(&out, false);
    assert_eq!(text.code, 0, "{text}");
    assert!(text.stdout.contains("sequence 1 (full)"), "{text}");
    assert!(
        text.stdout.contains(", format airlock.imageset/v2\n"),
        "{text}"
    );
    assert!(
        text.stdout.contains(&format!("signed by key {key_id}")),
        "{text}"
    );
    for p in &s.placed {
        assert!(
            text.stdout
                .contains(&format!("{}/{}", s.source.addr(), p.config_ref)),
            "{}: {text}",
            p.config_ref
        );
    }
    let json = describe(&out, true);
    assert_eq!(json.code, 0, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let d = &v[0];
    assert_eq!(d["images"].as_array().unwrap().len(), s.placed.len());
    assert_eq!(d["chunks"]["listed"], d["chunks"]["found"]);
    assert!(d["chunks"]["listed"].as_u64().unwrap() > 1, "{d}");
    assert_eq!(d["parity"]["listed"], 1);
    assert_eq!(
        d["blobs"]["carried"], d["blobs"]["listed"],
        "a full imageset"
    );
    assert_eq!(d["signer"], key_id.as_str());
    assert_eq!(d["format"], airlock_imageset::FORMAT_V2);
    assert_eq!(
        d["files"].as_array().unwrap().len(),
        chunk_files(&out).len()
    );

    // One file alone: its imageset, with that file found.
    let one = describe(&chunk_files(&out)[0], true);
    assert_eq!(one.code, 0, "{one}");
    let v: serde_json::Value = serde_json::from_str(&one.stdout).unwrap();
    assert_eq!(v[0]["files"].as_array().unwrap().len(), 1);
    assert_eq!(v[0]["uuid"], d["uuid"]);

    // What is not an imageset is named.
    let junk = s.path("junk.tar");
    std::fs::write(&junk, vec![7u8; 4096]).unwrap();
    let refused = describe(&junk, false);
    assert_eq!(refused.code, EX_DATA, "{refused}");
    assert!(
        refused.stderr.contains("not an Airlock imageset chunk"),
        "{refused}"
    );
    let empty = s.path("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let nothing = describe(&empty, false);
    assert_eq!(nothing.code, EX_CONFIG, "{nothing}");
    assert!(
        nothing.stderr.contains("no imageset chunk files"),
        "{nothing}"
    );
}

#[test]
fn mirror_continues_on_error_too() {
    let s = Setup::plain();
    let config = s.path("isc.yaml");
    let text = std::fs::read_to_string(&s.config).unwrap();
    let none_ref = format!("docker://{}/team/none:1", s.source.addr());
    std::fs::write(&config, format!("{text}  - name: {none_ref}\n")).unwrap();
    let ws = s.path("ws");
    let mirror = || {
        let mut cmd = airlock_tests::bins::connected();
        cmd.arg("mirror")
            .arg("--config")
            .arg(&config)
            .arg("--workspace")
            .arg(&ws)
            .arg("--to")
            .arg(format!("docker://{}/m", s.dest.addr()))
            .arg("--dest-tls-verify=false");
        source_flags(&mut cmd, &s.source);
        cmd
    };
    let stopped = run(&mut mirror());
    assert_eq!(stopped.code, EX_UNAVAILABLE, "{stopped}");
    assert!(stopped.stderr.contains("team/none"), "{stopped}");
    let partial = run(mirror().arg("--continue-on-error"));
    assert_eq!(partial.code, EX_PARTIAL, "{partial}");
    let missing = std::fs::read_to_string(ws.join("missing.txt")).unwrap();
    assert!(
        missing.starts_with(&format!("{none_ref}\t")) && missing.lines().count() == 1,
        "{missing}"
    );
    s.assert_byte_exact("m");
}

#[test]
fn oc_mirror_command_lines_work_unchanged() {
    let s = Setup::plain();
    let isc = s.config.to_str().unwrap().to_string();
    let dir = s.path("archive");
    let connected = |args: &[&str]| {
        let mut cmd = airlock_tests::bins::connected();
        cmd.args(args);
        run(&mut cmd)
    };
    // Mirror to disk: the chunks in DIR, the workspace in DIR/working-dir.
    let m2d = connected(&[
        "-c",
        &isc,
        &format!("file://{}", dir.display()),
        "--v2",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
    ]);
    assert_eq!(m2d.code, 0, "{m2d}");
    assert!(!chunk_files(&dir).is_empty(), "{m2d}");
    assert!(dir.join("working-dir").is_dir(), "{m2d}");

    // Disk to mirror, on the other side.
    let mut d2m = airlock_tests::bins::disconnected();
    d2m.args(["-c", &isc, "--from"])
        .arg(format!("file://{}", dir.display()))
        .arg(format!("docker://{}/m", s.dest.addr()))
        .args(["--v2", "--dest-tls-verify=false", "--workspace"])
        .arg(format!("file://{}", s.path("ws-d").display()));
    let d2m = run(&mut d2m);
    assert_eq!(d2m.code, 0, "{d2m}");
    s.assert_byte_exact("m");

    // Mirror to mirror.
    let other = Registry::plain().unwrap();
    let m2m = connected(&[
        "-c",
        &isc,
        "--workspace",
        &format!("file://{}", s.path("ws-m").display()),
        &format!("docker://{}/m", other.addr()),
        "--v2",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
    ]);
    assert_eq!(m2m.code, 0, "{m2m}");
    assert_byte_exact(&s.source, &other, "m", &s.placed);

    // What Airlock does not act on is refused by name, before anything runs.
    let since = connected(&["-c", &isc, "file:///tmp/x", "--since", "2024-01-01"]);
    assert_eq!(since.code, 2, "{since}");
    assert!(
        since
            .stderr
            .contains("--since: oc-mirror's flag, not acted on by Airlock"),
        "{since}"
    );
    let wrong_side = connected(&["-c", &isc, "--from", "file:///tmp/x", "docker://m:5000"]);
    assert_eq!(wrong_side.code, 2, "{wrong_side}");
    assert!(
        wrong_side
            .stderr
            .contains("run it on the disconnected side"),
        "{wrong_side}"
    );
    // A policy is checked where images are pulled; disk to mirror says so.
    let mut cmd = airlock_tests::bins::disconnected();
    cmd.args([
        "-c",
        &isc,
        "--from",
        "file:///tmp/x",
        "docker://m:5000",
        "--secure-policy",
    ]);
    let policy_d2m = run(&mut cmd);
    assert_eq!(policy_d2m.code, 2, "{policy_d2m}");
    assert!(
        policy_d2m
            .stderr
            .contains("airlock-connected --secure-policy")
            && policy_d2m.stderr.contains("--trust"),
        "{policy_d2m}"
    );
}

/// A site that reaches its sources only through a pull-through cache says so in
/// registries.conf, as podman, skopeo and oc-mirror read it: the imageset names
/// the real sources (so the mirror sets map them), and the bytes come from the
/// cache. Here the real source is down (nothing listens on port 1); everything it
/// holds is in the cache, behind a first mirror that has nothing.
#[test]
fn registries_conf_mirrors_serve_sources_and_blocked_entries_refuse_them() {
    let s = Setup::plain();
    let empty = Registry::plain().unwrap();
    let real = "127.0.0.1:1";
    let cache = s.source.addr().to_string();
    let config = s.config_at("real.yaml", real);
    // The same images, each named by digest only.
    let by_digest = s.path("by-digest.yaml");
    let mut text = String::from(
        "apiVersion: mirror.openshift.io/v2alpha1\nkind: ImageSetConfiguration\nmirror:\n  additionalImages:\n",
    );
    for p in &s.placed {
        text.push_str(&format!("  - name: {real}/{}@{}\n", p.repo, p.image.digest));
    }
    std::fs::write(&by_digest, text).unwrap();
    let conf = s.path("registries.conf");
    let mut n = 0;
    let mut create_from = |config: &std::path::Path, rules: &str| {
        std::fs::write(&conf, rules).unwrap();
        n += 1;
        let out = s.path(&format!("out{n}"));
        let mut cmd = create_cmd(config, &out, &s.path(&format!("ws{n}")), "1MiB", &s.source);
        cmd.arg("--registries-conf").arg(&conf);
        (run(&mut cmd), out)
    };
    let mirrored = format!(
        "unqualified-search-registries = ['docker.io']\n[[registry]]\nlocation = '{real}'\n[[registry.mirror]]\nlocation = '{}/nothing-here'\ninsecure = true\n[[registry.mirror]]\nlocation = '{cache}'\ninsecure = true\n",
        empty.addr()
    );

    // A blocked repository stops the run, naming the file that blocks it.
    let (blocked, out) = create_from(
        &config,
        &format!("{mirrored}[[registry]]\nprefix = '{real}/platform'\nblocked = true\n"),
    );
    assert_ne!(blocked.code, 0, "{blocked}");
    assert!(
        blocked.stderr.contains(&format!("{real}/platform/"))
            && blocked.code == 64
            && blocked
                .stderr
                .contains(&format!("is blocked by {}", conf.display())),
        "{blocked}"
    );
    assert!(!out.exists() || chunk_files(&out).is_empty());

    // Digest-only mirroring sends the tags to the real source, which is down;
    // every mirror's failure is named too.
    let digest_only = mirrored.replacen(
        "[[registry.mirror]]",
        "mirror-by-digest-only = true\n[[registry.mirror]]",
        1,
    );
    let (tags, _) = create_from(&config, &digest_only);
    assert_ne!(tags.code, 0, "{tags}");
    assert!(tags.stderr.contains(real), "{tags}");
    // Images named by digest, and the signature tags named after their
    // digests, come from the mirrors.
    let (digests, out) = create_from(&by_digest, &digest_only);
    assert_eq!(digests.code, 0, "{digests}");
    assert_eq!(
        airlock_imageset::read::read_head(&chunk_files(&out)[0])
            .unwrap()
            .manifest
            .images
            .len(),
        s.placed.len()
    );

    // Through the cache: every image, named as the configuration names it.
    let (made, out) = create_from(&config, &mirrored);
    assert_eq!(made.code, 0, "{made}");
    let head = airlock_imageset::read::read_head(&chunk_files(&out)[0]).unwrap();
    assert_eq!(head.manifest.images.len(), s.placed.len());
    assert!(
        head.manifest
            .images
            .iter()
            .all(|i| i.source.contains(real) && !i.source.contains(&cache)),
        "{:?}",
        head.manifest.images
    );
    let published = s.publish(&out, "m", "ws-d");
    assert_eq!(published.code, 0, "{published}");
    s.assert_byte_exact("m");

    // A malformed file is refused before any registry is contacted.
    let (bad, _) = create_from(&config, "[[registry]]\nlocation = 'https://quay.io'\n");
    assert_eq!(bad.code, 64, "{bad}");
    assert!(
        bad.stderr.contains("registry[0].location") && bad.stderr.contains("scheme"),
        "{bad}"
    );
}

/// `extra/broken:1` (one layer from `seed`) pushed to the source of `s`, and a
/// configuration with it added, named at `registry` (the source, or a proxy in
/// front of it): the image, the configuration, and how it names the image.
fn with_broken(s: &Setup, seed: u64, registry: &str) -> (Image, std::path::PathBuf, String) {
    let broken = ImageBuilder::new(Format::Oci).layer(seed, 30_000).build();
    broken
        .push(
            &PushClient::new(&s.source).unwrap(),
            "extra/broken",
            Some("1"),
        )
        .unwrap();
    let config = s.path("isc.yaml");
    let text = std::fs::read_to_string(&s.config).unwrap();
    let broken_ref = format!("docker://{registry}/extra/broken:1");
    std::fs::write(&config, format!("{text}  - name: {broken_ref}\n")).unwrap();
    (broken, config, broken_ref)
}

/// `missing.txt` in `out` names `image` alone, for its `layer`.
fn assert_left_out_alone(out: &std::path::Path, image: &str, layer: &str) {
    let missing = std::fs::read_to_string(out.join("missing.txt")).unwrap();
    assert!(
        missing.starts_with(&format!("{image}\t"))
            && missing.contains(&format!("blob {layer} cannot be pulled"))
            && missing.lines().count() == 1,
        "{missing}"
    );
}

/// A layer the source registry has lost (its manifest still served) is found
/// before anything is written: with --continue-on-error its image is left out
/// and named in missing.txt, and the rest is shipped; without, the run stops.
#[test]
fn continue_on_error_leaves_out_an_image_whose_layer_is_gone() {
    let s = Setup::plain();
    let (broken, config, broken_ref) = with_broken(&s, 91, &s.source.addr());
    let layer = broken.blobs.last().unwrap().digest.clone();
    let hex = layer.strip_prefix("sha256:").unwrap();
    let data = s.source.storage_dir().join(format!(
        "docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    std::fs::remove_file(&data).unwrap();
    let create = |out: &str| create_cmd(&config, &s.path(out), &s.path("ws-c"), "1MiB", &s.source);

    let stopped = run(&mut create("out1"));
    assert_ne!(stopped.code, 0, "{stopped}");
    assert!(stopped.stderr.contains(hex), "{stopped}");

    let partial = run(create("out2").arg("--continue-on-error"));
    assert_eq!(partial.code, EX_PARTIAL, "{partial}");
    assert_left_out_alone(&s.path("out2"), &broken_ref, &layer);
    let published = s.publish(&s.path("out2"), "m", "ws-d");
    assert_eq!(published.code, 0, "{published}");
    s.assert_byte_exact("m");
}

/// A layer the site already has costs nothing when the source later loses it:
/// the check asks only for blobs the workspace has not shipped, so the image
/// stays in the next imageset instead of being left out.
#[test]
fn a_layer_already_shipped_that_the_source_loses_leaves_nothing_out() {
    let s = Setup::plain();
    let create =
        |out: &str| create_cmd(&s.config, &s.path(out), &s.path("ws-c"), "1MiB", &s.source);
    let first = run(&mut create("out1"));
    assert_eq!(first.code, 0, "{first}");
    let image = &s.placed[0].image;
    let layer = image.blobs.last().unwrap().digest.clone();
    let hex = layer.strip_prefix("sha256:").unwrap();
    std::fs::remove_file(s.source.storage_dir().join(format!(
        "docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    )))
    .unwrap();
    let second = run(create("out2").arg("--continue-on-error"));
    assert_eq!(second.code, 0, "{second}");
    assert!(
        !second.stderr.contains("left out") && !s.path("out2").join("missing.txt").exists(),
        "{second}"
    );
}

/// A layer the source answers a HEAD for but fails to serve once the imageset
/// is being written (after the check before writing): with --continue-on-error
/// its image is left out then, and the imageset written again without it.
#[test]
fn continue_on_error_leaves_out_an_image_whose_layer_fails_while_the_imageset_is_written() {
    let s = Setup::plain();
    let proxy = FaultProxy::start(&s.source.addr()).unwrap();
    let (broken, config, broken_ref) = with_broken(&s, 93, &proxy.addr());
    let layer = broken.blobs.last().unwrap().digest.clone();
    proxy.fail_always("GET", &format!("/blobs/{layer}"), Fault::ServerError);
    let create = |out: &str| create_cmd(&config, &s.path(out), &s.path("ws-c"), "1MiB", &s.source);

    let stopped = run(&mut create("out1"));
    assert_ne!(stopped.code, 0, "{stopped}");
    assert!(stopped.stderr.contains(&layer), "{stopped}");
    assert!(chunk_files(&s.path("out1")).is_empty(), "{stopped}");

    let partial = run(create("out2").arg("--continue-on-error"));
    assert_eq!(partial.code, EX_PARTIAL, "{partial}");
    assert!(
        partial
            .stderr
            .contains("it is written again without their images"),
        "{partial}"
    );
    let staging = s.path("out2").join(".airlock-staging");
    assert!(
        !staging.exists() || std::fs::read_dir(&staging).unwrap().next().is_none(),
        "the first write left nothing behind"
    );
    assert_left_out_alone(&s.path("out2"), &broken_ref, &layer);
    assert!(
        read_manifest(&s.path("out2"))
            .blobs
            .iter()
            .all(|b| b.digest.to_string() != layer),
        "nothing of the image left out travels"
    );
    let published = s.publish(&s.path("out2"), "m", "ws-d");
    assert_eq!(published.code, 0, "{published}");
    s.assert_byte_exact("m");
}

/// A site that reaches its source only through a registries.conf mirror (a
/// pull-through cache) waits out the mirror's throttling: its 429, with the
/// source out of reach, is retried, not taken for the source being down.
#[test]
fn a_throttling_mirror_is_waited_for_when_the_source_is_out_of_reach() {
    let s = Setup::plain();
    let cache = FaultProxy::start(&s.source.addr()).unwrap();
    cache.fail_nth("GET", "/manifests/", 1, Fault::TooManyRequests);
    cache.fail_nth("GET", "/blobs/sha256:", 1, Fault::TooManyRequests);
    let real = "127.0.0.1:1";
    let config = s.config_at("real.yaml", real);
    let conf = s.path("registries.conf");
    let rules = format!(
        "[[registry]]\nlocation = '{real}'\n[[registry.mirror]]\nlocation = '{}'\ninsecure = true\n",
        cache.addr()
    );
    std::fs::write(&conf, rules).unwrap();
    let out = s.path("out");
    let mut cmd = create_cmd(&config, &out, &s.path("ws-c"), "1GiB", &s.source);
    cmd.arg("--registries-conf").arg(&conf);
    let created = run(&mut cmd);
    assert_eq!(created.code, 0, "{created}");
    assert_eq!(cache.served(), 2, "both 429s were served\n{created}");
    let published = s.publish(&out, "m", "ws-d");
    assert_eq!(published.code, 0, "{published}");
    s.assert_byte_exact("m");
}

/// A registries.conf mirror that fails a lookup (here a 500 for every cosign
/// tag) is not hidden behind another mirror's "not here" when the source is
/// out of reach: the run stops, naming the failure, rather than mirroring
/// the images as if they had no signatures.
#[test]
fn a_mirror_that_failed_is_not_hidden_behind_another_mirrors_not_here() {
    let s = Setup::plain();
    let empty = Registry::plain().unwrap();
    let failing = FaultProxy::start(&s.source.addr()).unwrap();
    failing.fail_always("HEAD", ".sig", Fault::ServerError);
    let real = "127.0.0.1:1";
    let config = s.config_at("real.yaml", real);
    let conf = s.path("registries.conf");
    let mirrors = |first: &str, second: &str| {
        format!(
            "[[registry]]\nlocation = '{real}'\n[[registry.mirror]]\nlocation = '{first}'\ninsecure = true\n[[registry.mirror]]\nlocation = '{second}'\ninsecure = true\n"
        )
    };
    let create_with = |rules: String, name: &str| {
        std::fs::write(&conf, rules).unwrap();
        let out = s.path(&format!("out-{name}"));
        let mut cmd = create_cmd(
            &config,
            &out,
            &s.path(&format!("ws-{name}")),
            "1MiB",
            &s.source,
        );
        cmd.arg("--registries-conf").arg(&conf);
        (run(&mut cmd), out)
    };
    let (stopped, out) = create_with(mirrors(&failing.addr(), &empty.addr()), "failing");
    assert_ne!(stopped.code, 0, "{stopped}");
    assert!(
        stopped.stderr.contains("HTTP 500") && stopped.stderr.contains(".sig"),
        "{stopped}"
    );
    assert!(!out.exists() || chunk_files(&out).is_empty());
    // Without the failing mirror, the empty one's "not here" and the cache's
    // stand: the images have no signatures, and are mirrored.
    let (made, _) = create_with(mirrors(&empty.addr(), &s.source.addr()), "cache");
    assert_eq!(made.code, 0, "{made}");
}
