//! Every imageset is hostile: forgeries with every checksum consistent (unsigned, as
//! the default configuration accepts) for each field of the manifest. Each is
//! refused with the field named, no panic, nothing written outside the folders,
//! nothing pushed, and the workspace left able to take the genuine imageset.

use std::collections::BTreeSet;
use std::path::Path;

use airlock_disconnected::scan;
use airlock_imageset::read::read_head;
use airlock_tests::bins::run;
use airlock_tests::forge;
use airlock_tests::skopeo::list_tags;
use serde_json::{Value, json};

use crate::util::*;

type Edit = Box<dyn Fn(&mut Value)>;

/// The first blob without a media type: a layer.
fn a_layer(m: &Value) -> Value {
    m["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b.get("mediaType").is_none())
        .unwrap()["digest"]
        .clone()
}

fn listing(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn forged_manifests_are_refused_by_field_and_leave_nothing_behind() {
    let s = Setup::plain();
    let genuine = s.path("genuine");
    let created = run(
        create_cmd(&s.config, &genuine, &s.path("ws-c"), "400KiB", &s.source)
            .args(["--parity", "1"]),
    );
    assert_eq!(created.code, 0, "{created}");
    assert!(
        chunk_files(&genuine).len() >= 4,
        "several chunks and a parity file"
    );

    // The drop folder's parent holds a sentinel; an escape would change either.
    let site = s.path("site");
    std::fs::create_dir_all(&site).unwrap();
    let sentinel = site.join("sentinel.tar");
    std::fs::write(&sentinel, b"keep me").unwrap();
    let outside = s.path("outside.tar");
    let absolute = outside.to_str().unwrap().to_string();

    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "parity rebuild to ../",
            Box::new(|m| m["chunks"][0]["name"] = json!("../sentinel.tar")),
            "chunks[0].name: \"../sentinel.tar\"; expected \"airlock-",
        ),
        (
            "parity rebuild to an absolute path",
            Box::new(move |m| m["chunks"][0]["name"] = json!(absolute.clone())),
            "chunks[0].name: ",
        ),
        (
            "upper-case repository",
            Box::new(|m| m["images"][0]["repository"] = json!("Example.com/UPPER")),
            "images[0].repository: invalid image reference \"Example.com/UPPER\"",
        ),
        (
            "empty repository",
            Box::new(|m| m["images"][0]["repository"] = json!("")),
            "images[0].repository: ",
        ),
        (
            "repository that climbs",
            Box::new(|m| m["images"][1]["repository"] = json!("host.io/../../x")),
            "images[1].repository: ",
        ),
        (
            "blob repository",
            Box::new(|m| m["blobs"][0]["repository"] = json!("no-host")),
            "blobs[0].repository: \"no-host\"",
        ),
        (
            "tag",
            Box::new(|m| m["images"][0]["tag"] = json!("bad tag!")),
            "images[0].tag: \"bad tag!\"",
        ),
        (
            "a tag of 70 000 characters",
            Box::new(|m| m["images"][0]["tag"] = json!("t".repeat(70_000))),
            "images[0].tag: \"tttt",
        ),
        (
            "target repository",
            Box::new(|m| m["images"][0]["targetRepository"] = json!("../x")),
            "images[0].targetRepository: \"../x\"",
        ),
        (
            "media type",
            Box::new(|m| {
                let i = m["blobs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .position(|b| b.get("mediaType").is_some())
                    .unwrap();
                m["blobs"][i]["mediaType"] = json!("text/html");
            }),
            "].mediaType: \"text/html\"; expected one of",
        ),
        (
            "image digest that is a layer",
            Box::new(|m| m["images"][0]["digest"] = a_layer(m)),
            "images[0].digest: sha256:",
        ),
        (
            "release signature that is not base64",
            Box::new(|m| {
                m["images"][0]["kind"] = json!("release");
                let digest = m["images"][0]["digest"].as_str().unwrap().to_string();
                let repo = m["images"][0]["repository"].as_str().unwrap().to_string();
                m["releases"] = json!([{
                    "version": "4.14.3", "arch": "amd64",
                    "image": format!("{repo}@{digest}"), "digest": digest,
                    "tag": "4.14.3-x86_64", "signature": "<script>not base64</script>",
                }]);
            }),
            "releases[0].signature: \"<script>not base64</script>\": not base64",
        ),
        (
            "sequence 0",
            Box::new(|m| m["sequence"] = json!(0)),
            "sequence: 0; sequences start at 1",
        ),
        (
            "images of the wrong type",
            Box::new(|m| m["images"] = json!("everything")),
            "the imageset manifest is not valid: invalid type",
        ),
    ];

    let ws = s.path("ws-d");
    for (i, (what, edit, want)) in cases.iter().enumerate() {
        let drop = site.join(format!("drop{i}"));
        copy_dir(&genuine, &drop);
        forge::rewrite(&drop, edit).unwrap();
        // One chunk lost: the imageset would need a rebuild from parity.
        std::fs::remove_file(&chunk_files(&drop)[0]).unwrap();
        let before = listing(&drop);
        let out = run(&mut publish_cmd(&drop, &s.dest, "m", &ws));
        assert_eq!(out.code, EX_DATA, "{what}: {out}");
        assert!(out.stderr.contains(want), "{what}: want {want:?}: {out}");
        assert!(
            out.stderr.len() < 20_000,
            "{what}: {} bytes of stderr",
            out.stderr.len()
        );
        assert_eq!(listing(&drop), before, "{what}: the drop folder changed");
        assert_eq!(
            std::fs::read(&sentinel).unwrap(),
            b"keep me",
            "{what}: the sentinel was overwritten"
        );
        assert!(!outside.exists(), "{what}: a file was written outside");
        assert!(
            catalog(&s.dest).is_empty(),
            "{what}: something was pushed: {:?}",
            catalog(&s.dest)
        );
    }
    assert_eq!(
        listing(&site),
        (0..cases.len())
            .map(|i| format!("drop{i}"))
            .chain(["sentinel.tar".to_string()])
            .collect(),
        "nothing appeared beside the drop folders"
    );

    // The same workspace then takes the genuine imageset, rebuilding a lost chunk.
    let drop = site.join("genuine");
    copy_dir(&genuine, &drop);
    let lost = chunk_files(&drop)[0].clone();
    std::fs::remove_file(&lost).unwrap();
    let out = run(&mut publish_cmd(&drop, &s.dest, "m", &ws));
    assert_eq!(out.code, 0, "{out}");
    assert!(lost.exists(), "rebuilt under its derived name: {out}");
    s.assert_byte_exact("m");
}

/// A resend of an accepted imageset is welcome; another manifest under the same
/// sequence is refused and reported, never skipped as a duplicate.
#[test]
fn another_manifest_for_an_accepted_sequence_is_refused() {
    let s = Setup::plain();
    let (_, genuine) = s.create("100MiB");
    let ws = s.path("ws-d");
    let out = run(&mut publish_cmd(&genuine, &s.dest, "m", &ws));
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stderr.contains("warning: no --trust key given"),
        "publishing unsigned is named as a risk: {out}"
    );
    let resent = run(&mut publish_cmd(&genuine, &s.dest, "m", &ws));
    assert_eq!(resent.code, 0, "a resend is a duplicate: {resent}");

    let forged = s.path("forged");
    copy_dir(&genuine, &forged);
    std::fs::write(forged.join("notes.txt"), b"not a chunk").unwrap();
    forge::rewrite(&forged, |m| m["images"][0]["tag"] = json!("6.6")).unwrap();
    let out = run(&mut publish_cmd(&forged, &s.dest, "m", &ws));
    assert_eq!(out.code, EX_DATA, "{out}");
    assert!(
        out.stderr
            .contains("was accepted earlier with another manifest"),
        "{out}"
    );
    assert!(
        out.stdout
            .contains("notes.txt: not an Airlock imageset chunk"),
        "non-chunk files are named: {out}"
    );
    let head = read_head(&chunk_files(&genuine)[0]).unwrap();
    let first = &head.manifest.images[0];
    let (_, path) = first.repository.split_once('/').unwrap();
    let tags = list_tags(&s.dest, &format!("m/{path}")).unwrap();
    assert!(
        first.tag.as_ref().is_some_and(|t| tags.contains(t)) && !tags.contains(&"6.6".into()),
        "{tags:?}"
    );
    s.assert_byte_exact("m");
}

/// Every byte matches its digest, but the "manifest" an image names is a layer:
/// refused once its bytes are read, before anything is accepted or pushed.
#[test]
fn a_layer_posing_as_a_manifest_is_refused_at_ingest() {
    let s = Setup::plain();
    let (_, genuine) = s.create("100MiB");
    let forged = s.path("forged");
    copy_dir(&genuine, &forged);
    forge::rewrite(&forged, |m| {
        let layer = a_layer(m);
        let i = m["blobs"]
            .as_array()
            .unwrap()
            .iter()
            .position(|b| b["digest"] == layer)
            .unwrap();
        m["blobs"][i]["mediaType"] = json!("application/vnd.oci.image.manifest.v1+json");
        m["images"][0]["digest"] = layer;
    })
    .unwrap();
    let ws = s.path("ws-d");
    let out = run(&mut publish_cmd(&forged, &s.dest, "m", &ws));
    assert_eq!(out.code, EX_DATA, "{out}");
    assert!(
        out.stderr
            .contains("is not a application/vnd.oci.image.manifest.v1+json"),
        "{out}"
    );
    assert!(catalog(&s.dest).is_empty(), "{:?}", catalog(&s.dest));
    let out = run(&mut publish_cmd(&genuine, &s.dest, "m", &ws));
    assert_eq!(out.code, 0, "{out}");
    s.assert_byte_exact("m");
}

/// Many imagesets with large manifests in one folder: a scan holds only as many
/// manifests as its bound allows, lowest sequence first whatever the file order,
/// and the next scan, without the ones taken, holds the next.
#[test]
fn a_scan_holds_a_bounded_amount_of_manifests_lowest_sequence_first() {
    let s = Setup::plain();
    let all = s.path("all");
    let mut per_sequence = Vec::new();
    for (i, late) in [None, Some(77), Some(78)].into_iter().enumerate() {
        let config = late.map_or(s.config.clone(), |seed| s.with_late_image(seed).1);
        let out = s.path(&format!("out{i}"));
        let created = create(&config, &out, &s.path("ws-c"), "300KiB", &s.source);
        assert_eq!(created.code, 0, "{created}");
        per_sequence.push(chunk_files(&out).len());
        copy_dir(&out, &all);
    }
    let mut files = scan::list(&all).unwrap();
    files.reverse();
    let largest = files
        .iter()
        .map(|f| read_head(f).unwrap().manifest_bytes.len())
        .max()
        .unwrap();
    let held = |found: &scan::Found| -> Vec<u64> { found.imagesets.keys().map(|k| k.1).collect() };

    let first = scan::read_heads_within(files.clone(), largest + 1, &|_| false);
    assert_eq!(held(&first), [1]);
    assert_eq!(first.deferred.len(), per_sequence[1] + per_sequence[2]);
    assert!(first.damaged.is_empty() && first.other.is_empty());

    // Sequence 1 judged: its files are kept (to be removed once published), its
    // manifest not held, and sequence 2 is read.
    let taken = first
        .imagesets
        .values()
        .next()
        .unwrap()
        .manifest_digest
        .clone();
    let second = scan::read_heads_within(files.clone(), largest + 1, &|d| *d == taken);
    assert_eq!(held(&second), [2]);
    assert_eq!(second.deferred.len(), per_sequence[2]);
    let skipped: Vec<(u64, usize)> = second.skipped.iter().map(|(k, f)| (k.1, f.len())).collect();
    assert_eq!(skipped, [(1, per_sequence[0])]);

    let all_at_once = scan::read_heads(files);
    assert_eq!(held(&all_at_once), [1, 2, 3]);
    assert!(all_at_once.deferred.is_empty());
}

/// Structure-aware fuzzing of what crosses the gap: random fields of a genuine
/// manifest replaced by hostile values (every checksum made consistent), one chunk
/// lost so that parity rebuilds write files. Whatever the forgery: no panic, nothing
/// written outside the drop folder and the workspace, and inside the drop folder
/// only names Airlock derives.
#[test]
fn fuzzed_manifests_never_panic_nor_write_outside_the_drop_folder_and_workspace() {
    use airlock_disconnected::ingest;
    use airlock_disconnected::store::Store;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let s = Setup::plain();
    let genuine = s.path("genuine");
    let created = run(
        create_cmd(&s.config, &genuine, &s.path("ws-c"), "400KiB", &s.source)
            .args(["--parity", "1"]),
    );
    assert_eq!(created.code, 0, "{created}");
    let pointers = [
        "/chunks/0/name",
        "/chunks/1/name",
        "/parity/0/name",
        "/images/0/repository",
        "/images/0/tag",
        "/images/0/targetRepository",
        "/images/0/source",
        "/images/0/digest",
        "/images/1/subject",
        "/blobs/0/repository",
        "/blobs/0/mediaType",
        "/blobs/1/digest",
        "/created",
        "/chunks/0/size",
        "/blobs/0/size",
        "/blobs/0/parts/0/offset",
        "/blobs/0/parts/0/length",
        "/blobs/0/parts/0/chunk",
        "/sequence",
        "/limit",
        "/full",
    ];
    let root = s.path("fuzz");
    // An absolute path of the test's own, checked below with the rest of `root`.
    let absolute = json!(root.join("absolute-escape.tar"));
    let value = prop_oneof![
        Just(json!("../../escape.tar")),
        Just(absolute.clone()),
        Just(json!("")),
        Just(json!("Example.com/UPPER")),
        Just(json!("host.io/../../x")),
        Just(json!("application/vnd.oci.image.manifest.v1+json")),
        Just(json!(
            "sha256:0000000000000000000000000000000000000000000000000000000000000000"
        )),
        Just(json!("x".repeat(100_000))),
        Just(json!(null)),
        Just(json!(true)),
        Just(json!([])),
        any::<u64>().prop_map(|n| json!(n)),
        (0u64..4096).prop_map(|n| json!(n)),
        "\\PC{0,40}".prop_map(|t| json!(t)),
    ];
    // Names are where a path could slip in: a third of the edits aim there.
    let escape = prop_oneof![
        Just(json!("../../escape.tar")),
        Just(json!("../escape.tar")),
        Just(absolute),
        Just(json!("sub/dir.tar")),
    ];
    let edit = prop_oneof![
        2 => (0..pointers.len(), value),
        1 => (0..3usize, escape),
    ];
    let edits = proptest::collection::vec(edit, 1..4);
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    let case = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(&edits, |edits| {
            let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let parent = root.join(format!("case{n}"));
            let drop = parent.join("drop");
            copy_dir(&genuine, &drop);
            let sentinel = parent.join("sentinel.tar");
            std::fs::write(&sentinel, b"keep me").unwrap();
            forge::rewrite(&drop, |m| {
                for (p, v) in &edits {
                    if let Some(slot) = m.pointer_mut(pointers[*p]) {
                        *slot = v.clone();
                    }
                }
            })
            .unwrap();
            std::fs::remove_file(&chunk_files(&drop)[0]).unwrap();
            let found = scan::scan(&drop).unwrap();
            let store = Store::open(&parent.join("ws")).unwrap();
            for c in found.imagesets.values() {
                let counted = std::sync::atomic::AtomicU64::new(0);
                if ingest::ingest(c, &store, &drop, &counted, None).is_ok() {
                    let _ = ingest::check_manifests(&c.manifest, &store);
                }
            }
            prop_assert_eq!(std::fs::read(&sentinel).unwrap(), b"keep me".to_vec());
            prop_assert_eq!(
                listing(&parent),
                ["drop", "sentinel.tar", "ws"]
                    .map(String::from)
                    .into_iter()
                    .collect::<BTreeSet<_>>()
            );
            for name in listing(&drop) {
                prop_assert!(name.starts_with("airlock-"), "{name:?} in the drop folder");
            }
            std::fs::remove_dir_all(&parent).unwrap();
            prop_assert!(
                listing(&root).is_empty(),
                "{:?} beside the cases",
                listing(&root)
            );
            Ok(())
        })
        .unwrap();
}
