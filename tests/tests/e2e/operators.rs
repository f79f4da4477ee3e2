//! Operator catalogs: reading catalog images and listing what a configuration
//! selects.

use airlock_tests::bins::{self, run};
use airlock_tests::images::{Format, ImageBuilder, PushClient, files_layer, index};
use airlock_tests::registry::Registry;
use serde_json::{Value, json};

use crate::util::*;

const HEAD: &str = "apiVersion: mirror.openshift.io/v2alpha1\nkind: ImageSetConfiguration\n";
const PACKAGE: &str = "cluster-kube-descheduler-operator";

fn fixture() -> Vec<u8> {
    std::fs::read(airlock_tests::fixtures_dir().join(
        "cluster-kube-descheduler-operator/v4.17/catalog/cluster-kube-descheduler-operator/catalog.json",
    ))
    .unwrap()
}

/// The blobs of the fixture, as JSON values.
fn blobs(bytes: &[u8]) -> Vec<Value> {
    serde_json::Deserializer::from_slice(bytes)
        .into_iter::<Value>()
        .map(Result::unwrap)
        .collect()
}

/// A catalog image in `opm generate dockerfile`'s layout, two platforms: a base
/// layer (opm), the FBC under /configs with a package that a layer above removes,
/// and a pre-built cache on top.
fn push_catalog(client: &PushClient, repo: &str, labels: Value) {
    let base = files_layer(&[("bin/opm", b"#!opm"), ("etc/os-release", b"ID=test")]);
    let configs = files_layer(&[
        (&format!("configs/{PACKAGE}/catalog.json"), &fixture()),
        (
            "configs/removed/catalog.json",
            br#"{"schema":"olm.package","name":"removed","defaultChannel":"x"}"#,
        ),
    ]);
    let top = files_layer(&[
        ("configs/.wh.removed", b""),
        ("tmp/cache/pogreb.v1/db", b"cache"),
    ]);
    let child = |arch: &str| {
        ImageBuilder::new(Format::Oci)
            .arch(arch)
            .with_layer(&base)
            .with_layer(&configs)
            .with_layer(&top)
            .labels(labels.clone())
            .build()
    };
    index(Format::Oci, vec![child("amd64"), child("arm64")], false)
        .push(client, repo, Some("v4.17"))
        .unwrap();
}

fn list(config: &std::path::Path, src: &Registry) -> airlock_tests::bins::Output {
    let mut cmd = bins::connected();
    cmd.args(["list", "bundles", "-o", "json", "--config"])
        .arg(config);
    source_flags(&mut cmd, src);
    run(&mut cmd)
}

#[test]
fn list_bundles_reads_the_catalog_image_and_prints_the_channel_heads() {
    let src = Registry::plain().unwrap();
    let client = PushClient::new(&src).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let a = src.addr();
    push_catalog(
        &client,
        "catalogs/index",
        json!({"operators.operatorframework.io.index.configs.v1": "/configs"}),
    );
    let config = tmp.path().join("isc.yaml");
    std::fs::write(
        &config,
        format!("{HEAD}mirror:\n  operators:\n  - catalog: {a}/catalogs/index:v4.17\n"),
    )
    .unwrap();
    let out = list(&config, &src);
    assert_eq!(out.code, 0, "{out}");
    let got: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();

    // Expected from the fixture itself: each channel's head (the entry no other
    // entry replaces or skips), with its bundle's image and related images.
    let all = blobs(&fixture());
    let mut channels: Vec<&Value> = all
        .iter()
        .filter(|b| b["schema"] == "olm.channel")
        .collect();
    channels.sort_by_key(|c| c["name"].as_str().unwrap().to_string());
    let expected: Vec<Value> = channels
        .iter()
        .map(|c| {
            let entries = c["entries"].as_array().unwrap();
            let pointed: Vec<&str> = entries
                .iter()
                .flat_map(|e| {
                    e["replaces"].as_str().into_iter().chain(
                        e["skips"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|s| s.as_str().unwrap()),
                    )
                })
                .collect();
            let head = entries
                .iter()
                .map(|e| e["name"].as_str().unwrap())
                .find(|n| !pointed.contains(n))
                .unwrap();
            let bundle = all
                .iter()
                .find(|b| b["schema"] == "olm.bundle" && b["name"] == head)
                .unwrap();
            let version = bundle["properties"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["type"] == "olm.package")
                .unwrap()["value"]["version"]
                .clone();
            let related: Vec<&Value> = bundle["relatedImages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| &r["image"])
                .collect();
            json!({
                "catalog": format!("{a}/catalogs/index:v4.17"),
                "package": PACKAGE,
                "channel": c["name"],
                "bundle": head,
                "version": version,
                "image": bundle["image"],
                "relatedImages": related,
            })
        })
        .collect();
    assert_eq!(got, expected);
    let keys: Vec<&String> = got[0].as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "bundle",
            "catalog",
            "channel",
            "image",
            "package",
            "relatedImages",
            "version"
        ]
    );
    // The whited-out package is not in the catalog; only the catalog was pulled.
    assert!(!out.stdout.contains("\"removed\""), "{out}");
    let log = src.log();
    assert!(log.contains("/v2/catalogs/index/manifests/v4.17"), "{log}");
    assert!(
        log.lines()
            .filter(|l| l.contains("/v2/") && !l.contains("/v2/ ") && !l.contains("/v2/\""))
            .all(|l| l.contains("/v2/catalogs/index/")),
        "{log}"
    );

    // A package the catalog lacks, and a channel the package lacks: the field and
    // what the catalog has.
    std::fs::write(
        &config,
        format!("{HEAD}mirror:\n  operators:\n  - catalog: {a}/catalogs/index:v4.17\n    packages:\n    - name: nope\n"),
    )
    .unwrap();
    let bad = list(&config, &src);
    assert_eq!(bad.code, EX_CONFIG, "{bad}");
    assert!(
        bad.stderr
            .contains("mirror.operators[0].packages[0].name: package \"nope\" is not in catalog"),
        "{bad}"
    );
    std::fs::write(
        &config,
        format!("{HEAD}mirror:\n  operators:\n  - catalog: {a}/catalogs/index:v4.17\n    packages:\n    - name: {PACKAGE}\n      channels:\n      - name: fast\n"),
    )
    .unwrap();
    let bad = list(&config, &src);
    assert_eq!(bad.code, EX_CONFIG, "{bad}");
    assert!(
        bad.stderr
            .contains("has no channel \"fast\"; its channels are 4.13, stable"),
        "{bad}"
    );
}

#[test]
fn a_sqlite_catalog_is_refused_with_what_to_use_instead() {
    let src = Registry::plain().unwrap();
    let client = PushClient::new(&src).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    push_catalog(
        &client,
        "catalogs/old",
        json!({"operators.operatorframework.io.index.database.v1": "/database/index.db"}),
    );
    let config = tmp.path().join("isc.yaml");
    std::fs::write(
        &config,
        format!(
            "{HEAD}mirror:\n  operators:\n  - catalog: {}/catalogs/old:v4.17\n",
            src.addr()
        ),
    )
    .unwrap();
    let out = list(&config, &src);
    assert_eq!(out.code, EX_DATA, "{out}");
    assert!(out.stderr.contains("it is a SQLite catalog"), "{out}");
    assert!(
        out.stderr.contains("use a file-based catalog image"),
        "{out}"
    );
}
