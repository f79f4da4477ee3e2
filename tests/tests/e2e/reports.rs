//! The JSON reports of `create`, `mirror` and `verify` (`-o json`): the keys
//! their `--output` help documents, snapshot-tested, with what changes from run
//! to run (the UUID, times, temporary paths, ports) replaced by placeholders.

use serde_json::Value;

use airlock_tests::bins::{self, run_ok};

use crate::util::*;

/// Numbers that differ between runs: times, how the blobs shared between
/// images happened to arrive (uploaded once and mounted, or found present,
/// depends on which upload finished first), and retries a loaded machine may need.
const VOLATILE: [&str; 6] = [
    "seconds",
    "blobsUploaded",
    "uploadedBytes",
    "blobsMounted",
    "blobsPresent",
    "retries",
];

/// `value` with what differs between runs made stable: the [`VOLATILE`]
/// numbers, and in strings each of `replace` (text, placeholder): the temporary
/// directory, the registries' addresses, the UUID and its short form in file names.
fn stable(mut value: Value, replace: &[(String, &str)]) -> Value {
    fn walk(v: &mut Value, replace: &[(String, &str)]) {
        match v {
            Value::String(s) => {
                for (text, placeholder) in replace {
                    *s = s.replace(text.as_str(), placeholder);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| walk(i, replace)),
            Value::Object(map) => {
                for (k, item) in map.iter_mut() {
                    if VOLATILE.contains(&k.as_str()) {
                        *item = Value::from(format!("[{k}]"));
                    } else {
                        walk(item, replace);
                    }
                }
            }
            _ => {}
        }
    }
    walk(&mut value, replace);
    value
}

#[test]
fn create_mirror_and_verify_report_json_with_their_documented_keys() {
    let s = Setup::plain();
    let out = s.path("out");
    let mut create = create_cmd(&s.config, &out, &s.path("ws-c"), "400KiB", &s.source);
    create.args(["-o", "json"]);
    let created: Value = serde_json::from_str(&run_ok(&mut create).stdout).unwrap();
    // The report agrees with what was written.
    let m = read_manifest(&out);
    assert_eq!(created["uuid"], m.uuid.to_string());
    assert_eq!(created["images"], m.images.len());
    assert_eq!(
        created["chunks"].as_array().unwrap().len(),
        chunk_files(&out).len()
    );
    let uuid = m.uuid.to_string();
    let replace = [
        (uuid.clone(), "[uuid]"),
        (uuid[..8].to_string(), "[uuid8]"),
        (s.tmp.path().display().to_string(), "[tmp]"),
        (s.source.addr(), "[source]"),
        (s.dest.addr(), "[dest]"),
    ];
    insta::assert_json_snapshot!("create", stable(created, &replace));

    let mut verify = bins::disconnected();
    verify.args(["verify", "-o", "json", "--from"]).arg(&out);
    let verified: Value = serde_json::from_str(&run_ok(&mut verify).stdout).unwrap();
    assert_eq!(verified["verified"][0]["uuid"], uuid, "{verified}");
    assert_eq!(
        verified["verified"][0]["sequence"], m.sequence,
        "{verified}"
    );
    insta::assert_json_snapshot!("verify", stable(verified, &replace));

    let mut mirror = s.mirror_cmd(&s.config, "ws-m");
    mirror.args(["-o", "json"]);
    let mirrored: Value = serde_json::from_str(&run_ok(&mut mirror).stdout).unwrap();
    s.assert_byte_exact("m");
    assert!(
        mirrored["uploadedBytes"].as_u64().unwrap() > 0,
        "{mirrored}"
    );
    insta::assert_json_snapshot!("mirror", stable(mirrored, &replace));
}
