//! Operator catalogs: reading catalog images and listing what a configuration
//! selects.

use airlock_tests::bins::{self, run};
use std::collections::{BTreeMap, BTreeSet};

use std::time::Duration;

use airlock_tests::faults::{Fault, FaultProxy};
use airlock_tests::images::{Format, Image, ImageBuilder, PushClient, files_layer, index, layer};
use airlock_tests::kube_api::{KubeApi, Res};
use airlock_tests::registry::Registry;
use airlock_tests::release::release_image;
use airlock_tests::skopeo::inspect_raw_at;
use serde_json::{Value, json};

use crate::agent::{Served, deliver, eventually};
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
    push_catalog_with(client, repo, labels, &fixture());
}

fn push_catalog_with(client: &PushClient, repo: &str, labels: Value, fbc: &[u8]) {
    let base = files_layer(&[("bin/opm", b"#!opm"), ("etc/os-release", b"ID=test")]);
    let configs = files_layer(&[
        (&format!("configs/{PACKAGE}/catalog.json"), fbc),
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
            let head = channel_head(c);
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

/// A registry that throttles answers the catalog image's manifest, its config
/// and its top layer 429: the catalog is read after waiting, not given up on.
#[test]
fn reading_a_catalog_waits_out_a_429_on_its_manifest_its_config_and_a_layer() {
    let src = Registry::plain().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    push_catalog(
        &PushClient::new(&src).unwrap(),
        "catalogs/index",
        json!({"operators.operatorframework.io.index.configs.v1": "/configs"}),
    );
    let proxy = FaultProxy::start(&src.addr()).unwrap();
    proxy.fail_nth("GET", "/manifests/", 1, Fault::TooManyRequests);
    // The config is read first, and again after its 429; then the top layer.
    proxy.fail_nth("GET", "/blobs/sha256:", 1, Fault::TooManyRequests);
    proxy.fail_nth("GET", "/blobs/sha256:", 3, Fault::TooManyRequests);
    let config = tmp.path().join("isc.yaml");
    std::fs::write(
        &config,
        format!(
            "{HEAD}mirror:\n  operators:\n  - catalog: {}/catalogs/index:v4.17\n",
            proxy.addr()
        ),
    )
    .unwrap();
    let out = list(&config, &src);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(proxy.served(), 3, "the 429s were served\n{out}");
    for retried in ["manifest read", "config blob", "layer read"] {
        let line = format!("{retried} failed; retrying");
        assert!(out.stderr.contains(&line), "{line}\n{out}");
    }
    let listed: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
    let heads: BTreeSet<String> = listed
        .iter()
        .map(|b| b["bundle"].as_str().unwrap().to_string())
        .collect();
    let all = blobs(&fixture());
    let channels = all.iter().filter(|b| b["schema"] == "olm.channel");
    assert_eq!(heads, channels.map(channel_head).collect(), "{out}");
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

/// A bundle blob's image and related images.
fn pullspecs_of(b: &Value) -> Vec<String> {
    std::iter::once(&b["image"])
        .chain(
            b["relatedImages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| &r["image"]),
        )
        .map(|i| i.as_str().unwrap().to_string())
        .collect()
}

/// Pushes a small image for every pullspec of the fixture's bundles and returns
/// the fixture with each pullspec rewritten to its image, and the images by their
/// new pullspec.
fn localise(client: &PushClient, a: &str, fbc: &[u8]) -> (String, BTreeMap<String, Image>) {
    let mut specs: Vec<String> = blobs(fbc)
        .iter()
        .filter(|b| b["schema"] == "olm.bundle")
        .flat_map(pullspecs_of)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // Longest first, so no pullspec is replaced inside a longer one.
    specs.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut text = String::from_utf8(fbc.to_vec()).unwrap();
    let mut images = BTreeMap::new();
    for (i, spec) in specs.iter().enumerate() {
        let path = spec.split(['@', ':']).next().unwrap();
        let repo = format!("ops/{}", path.rsplit('/').next().unwrap());
        let image = ImageBuilder::new(Format::Oci)
            .layer(2_000 + i as u64, 3_000)
            .build();
        image.push(client, &repo, None).unwrap();
        let local = format!("{a}/{repo}@{}", image.digest);
        text = text.replace(spec.as_str(), &local);
        images.insert(local, image);
    }
    (text, images)
}

/// The head bundle of each channel and the pullspecs they need, from the FBC.
fn heads_and_pullspecs(fbc: &[u8]) -> (BTreeSet<String>, BTreeSet<String>) {
    let all = blobs(fbc);
    let heads: BTreeSet<String> = all
        .iter()
        .filter(|b| b["schema"] == "olm.channel")
        .map(channel_head)
        .collect();
    let pullspecs = all
        .iter()
        .filter(|b| b["schema"] == "olm.bundle" && heads.contains(b["name"].as_str().unwrap()))
        .flat_map(pullspecs_of)
        .collect();
    (heads, pullspecs)
}

/// The files of the top layer of `reference` at `registry` (skopeo copies it out).
fn top_layer_files(registry: &Registry, reference: &str) -> BTreeMap<String, Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let opts = airlock_tests::skopeo::SkopeoOpts::for_registry(registry);
    airlock_tests::skopeo::copy_all(
        &format!("docker://{}/{reference}", registry.addr()),
        &opts,
        &format!("dir:{}", dir.path().display()),
        &airlock_tests::skopeo::SkopeoOpts::default(),
    )
    .unwrap();
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap()).unwrap();
    let child = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join(format!(
            "{}.manifest.json",
            child.trim_start_matches("sha256:")
        )))
        .unwrap(),
    )
    .unwrap();
    let top = manifest["layers"].as_array().unwrap().last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let gz = std::fs::read(dir.path().join(top)).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&gz[..]));
    let mut out = BTreeMap::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut bytes).unwrap();
        out.insert(path, bytes);
    }
    out
}

/// The fixture catalog, its bundles pushed to `a`, as `catalogs/index:v4.17`;
/// returns its labels, its file-based catalog and the bundle images by pull spec.
fn push_localised_catalog(
    client: &PushClient,
    a: &str,
) -> (Value, String, BTreeMap<String, Image>) {
    let labels = json!({"operators.operatorframework.io.index.configs.v1": "/configs"});
    let (fbc, images) = localise(client, a, &fixture());
    push_catalog_with(client, "catalogs/index", labels.clone(), fbc.as_bytes());
    (labels, fbc, images)
}

/// A source registry with [`push_localised_catalog`] in it, a temporary
/// directory, and the registry's address.
fn localised_catalog() -> (Registry, tempfile::TempDir, String) {
    let src = Registry::plain().unwrap();
    let client = PushClient::new(&src).unwrap();
    let a = src.addr();
    push_localised_catalog(&client, &a);
    (src, tempfile::tempdir().unwrap(), a)
}

/// `isc.yaml` in `dir`: the localised catalog of `a`, filtered to [`PACKAGE`].
fn package_config(dir: &std::path::Path, a: &str) -> std::path::PathBuf {
    let config = dir.join("isc.yaml");
    std::fs::write(
        &config,
        format!("{HEAD}mirror:\n  operators:\n  - catalog: {a}/catalogs/index:v4.17\n    packages:\n    - name: {PACKAGE}\n"),
    )
    .unwrap();
    config
}

#[test]
fn create_and_publish_carry_the_selected_bundles_and_a_rebuilt_catalog_with_its_resources() {
    let src = Registry::plain().unwrap();
    let dest = Registry::plain().unwrap();
    let client = PushClient::new(&src).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let a = src.addr();
    let (labels, fbc, images) = push_localised_catalog(&client, &a);
    let config = package_config(tmp.path(), &a);
    let (heads, wanted) = heads_and_pullspecs(fbc.as_bytes());
    assert_eq!(heads.len(), 2, "one head per channel");

    // Dry run: the catalog, every bundle and related image in mapping.txt.
    let dry = tmp.path().join("dry");
    let out = run(create_cmd(&config, &dry, &tmp.path().join("ws"), "1MiB", &src).arg("--dry-run"));
    assert_eq!(out.code, 0, "{out}");
    let mapping = std::fs::read_to_string(dry.join("mapping.txt")).unwrap();
    let sources: BTreeSet<String> = mapping
        .lines()
        .map(|l| {
            l.split('=')
                .next()
                .unwrap()
                .trim_start_matches("docker://")
                .to_string()
        })
        .collect();
    let mut expected: BTreeSet<String> = wanted.clone();
    expected.insert(format!("{a}/catalogs/index:v4.17"));
    assert_eq!(sources, expected);

    let log_before = src.log().len();
    let out_dir = tmp.path().join("out");
    let created = create(&config, &out_dir, &tmp.path().join("ws"), "1MiB", &src);
    assert_eq!(created.code, 0, "{created}");
    let published = publish(&out_dir, &dest, "mirror", &tmp.path().join("ws-d"));
    assert_eq!(published.code, 0, "{published}");

    // Every selected bundle and related image is byte-exact at the destination;
    // the images of other bundles were never pulled.
    let log = src.log()[log_before..].to_string();
    for (pullspec, image) in &images {
        let (repo_at, digest) = pullspec.split_once('@').unwrap();
        let repo = repo_at.strip_prefix(&format!("{a}/")).unwrap();
        if wanted.contains(pullspec) {
            let got = inspect_raw_at(&dest, &format!("mirror/{repo}@{digest}")).unwrap();
            assert_eq!(got, image.manifest, "{pullspec}");
        } else {
            assert!(
                !log.contains(&format!("/v2/{repo}/manifests/{digest}")),
                "{pullspec} is not selected but was pulled"
            );
        }
    }

    // The rebuilt catalog holds exactly the heads, over an opaque catalog root.
    let files = top_layer_files(&dest, "mirror/catalogs/index:v4.17");
    assert!(
        files.contains_key("configs/.wh..wh..opq"),
        "{:?}",
        files.keys()
    );
    let filtered = blobs(&files[&format!("configs/{PACKAGE}/catalog.json")]);
    let bundles: BTreeSet<String> = filtered
        .iter()
        .filter(|b| b["schema"] == "olm.bundle")
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(bundles, heads);
    let package = filtered
        .iter()
        .find(|b| b["schema"] == "olm.package")
        .unwrap();
    assert_eq!(package["defaultChannel"], "stable");

    // CatalogSource and ClusterCatalog point at the published catalog by digest.
    let top = inspect_raw_at(&dest, "mirror/catalogs/index:v4.17").unwrap();
    let digest = airlock_tests::images::digest_of(&top);
    let at = format!("{}/mirror/catalogs/index@{digest}", dest.addr());
    let resources = tmp.path().join("ws-d/cluster-resources");
    let cs: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(resources.join("cs-index-v4-17.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(cs["kind"], "CatalogSource");
    assert_eq!(cs["spec"]["sourceType"], "grpc");
    assert_eq!(cs["spec"]["image"], at.as_str());
    let cc: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(resources.join("cc-index-v4-17.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(cc["kind"], "ClusterCatalog");
    assert_eq!(cc["spec"]["source"]["image"]["ref"], at.as_str());
    let idms = std::fs::read_to_string(resources.join("idms-oc-mirror.yaml")).unwrap();
    assert!(idms.contains("name: idms-operator-0"), "{idms}");
    assert!(
        !idms.contains("catalogs/index"),
        "catalogs are in no mirror set: {idms}"
    );

    // A new bundle in the stable channel: the next imageset carries its image and
    // the new catalog layer, and nothing that travelled before.
    let mut all = blobs(fbc.as_bytes());
    let old_head = all
        .iter()
        .find(|b| b["schema"] == "olm.channel" && b["name"] == "stable")
        .map(channel_head)
        .unwrap();
    let old_bundle = all
        .iter()
        .find(|b| b["schema"] == "olm.bundle" && b["name"] == old_head.as_str())
        .unwrap()
        .clone();
    let new_image = ImageBuilder::new(Format::Oci).layer(9_999, 3_000).build();
    new_image.push(&client, "ops/new-bundle", None).unwrap();
    let mut new_bundle = old_bundle.clone();
    new_bundle["name"] = json!("clusterkubedescheduleroperator.v5.1.5");
    new_bundle["image"] = json!(format!("{a}/ops/new-bundle@{}", new_image.digest));
    for p in new_bundle["properties"].as_array_mut().unwrap() {
        if p["type"] == "olm.package" {
            p["value"]["version"] = json!("5.1.5");
        }
    }
    for c in all
        .iter_mut()
        .filter(|b| b["schema"] == "olm.channel" && b["name"] == "stable")
    {
        c["entries"].as_array_mut().unwrap().push(json!({
            "name": "clusterkubedescheduleroperator.v5.1.5",
            "replaces": old_head,
        }));
    }
    all.push(new_bundle);
    let next: Vec<u8> = all
        .iter()
        .flat_map(|b| {
            let mut v = serde_json::to_vec_pretty(b).unwrap();
            v.push(b'\n');
            v
        })
        .collect();
    push_catalog_with(&client, "catalogs/index", labels, &next);
    let out2 = tmp.path().join("out2");
    let created = create(&config, &out2, &tmp.path().join("ws"), "1MiB", &src);
    assert_eq!(created.code, 0, "{created}");
    let head = airlock_imageset::read::read_head(&chunk_files(&out2)[0]).unwrap();
    let carried: BTreeSet<String> = head
        .manifest
        .blobs
        .iter()
        .filter(|b| b.media_type.is_none() && b.carried())
        .map(|b| b.digest.to_string())
        .collect();
    for b in &new_image.blobs {
        assert!(
            carried.contains(&b.digest),
            "new bundle blob {} not carried",
            b.digest
        );
    }
    let old_image = &images[old_bundle["image"].as_str().unwrap()];
    for b in &old_image.blobs {
        assert!(
            !carried.contains(&b.digest),
            "old bundle blob {} carried again",
            b.digest
        );
    }
    // Only these travel: the new bundle's blobs; the source catalog's new FBC
    // layer (hidden in the rebuilt image, but part of it); the new filtered
    // layer; and one new config per platform.
    assert_eq!(carried.len(), new_image.blobs.len() + 4, "{carried:?}");
    let published = publish(&out2, &dest, "mirror", &tmp.path().join("ws-d"));
    assert_eq!(published.code, 0, "{published}");
    let files = top_layer_files(&dest, "mirror/catalogs/index:v4.17");
    let filtered = blobs(&files[&format!("configs/{PACKAGE}/catalog.json")]);
    assert!(filtered.iter().any(
        |b| b["schema"] == "olm.bundle" && b["name"] == "clusterkubedescheduleroperator.v5.1.5"
    ));
}

/// The head of a channel blob: the entry no other entry replaces or skips.
fn channel_head(c: &Value) -> String {
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
    entries
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .find(|n| !pointed.contains(n))
        .unwrap()
        .to_string()
}

#[test]
fn an_old_cluster_with_its_catalog_source_pinned_or_deleted_is_reported_and_reconcile_restores_it()
{
    let (src, tmp, a) = localised_catalog();
    let dest = Registry::plain().unwrap();
    let client = PushClient::new(&src).unwrap();
    // A release newer than the cluster runs, mirrored alongside the catalog.
    let cli = ImageBuilder::new(Format::Oci).layer(90, 20_000).build();
    cli.push(&client, "openshift-release-dev/ocp-v4.0-art-dev", None)
        .unwrap();
    let cli_ref = format!("{a}/openshift-release-dev/ocp-v4.0-art-dev@{}", cli.digest);
    release_image(
        "4.20.0",
        "amd64",
        &layer(91, 10_000),
        &[("cli", cli_ref)],
        &[],
    )
    .push(
        &client,
        "openshift-release-dev/ocp-release",
        Some("4.20.0-x86_64"),
    )
    .unwrap();
    let config = tmp.path().join("isc.yaml");
    std::fs::write(
        &config,
        format!(
            "{HEAD}mirror:\n  platform:\n    release: {a}/openshift-release-dev/ocp-release:4.20.0-x86_64\n  operators:\n  - catalog: {a}/catalogs/index:v4.17\n    packages:\n    - name: {PACKAGE}\n"
        ),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let mut cmd = create_cmd(&config, &out, &tmp.path().join("ws"), "1MiB", &src);
    let created = run(cmd.arg("--ignore-release-signature"));
    assert_eq!(created.code, 0, "{created}");

    let api = KubeApi::start(&tmp.path().join("api"), "4.19.7").unwrap();
    let kubeconfig = api.kubeconfig_file().unwrap();
    let served = Served::fleet(&[("prod", &dest, Some(kubeconfig.as_path()))]);
    deliver(&out, &served.site.path("drop"));
    let catalog_source = || {
        api.list(&Res::CATALOG_SOURCE)
            .into_iter()
            .find(|c| c["metadata"]["namespace"] == "openshift-marketplace")
    };
    eventually(
        Duration::from_secs(60),
        "the CatalogSource applied",
        || catalog_source().is_some() && !api.list(&Res::CLUSTER_CATALOG).is_empty(),
        || served.agent.log(),
    );
    let cs = catalog_source().unwrap();
    let name = cs["metadata"]["name"].as_str().unwrap().to_string();
    let published = cs["spec"]["image"].as_str().unwrap().to_string();
    assert!(
        published.starts_with(&format!("{}/m/catalogs/index@sha256:", dest.addr())),
        "{published}"
    );
    let cc = api.list(&Res::CLUSTER_CATALOG).remove(0);
    let cc_name = cc["metadata"]["name"].as_str().unwrap().to_string();

    // An administrator pins the CatalogSource to another catalog, OLM reports it
    // failing, and the ClusterCatalog is deleted.
    let old = format!("{}/m/catalogs/index@sha256:{}", dest.addr(), "0".repeat(64));
    api.edit(
        &Res::CATALOG_SOURCE,
        Some("openshift-marketplace"),
        &name,
        "kubectl-edit",
        json!({"spec": {"image": old}}),
    )
    .unwrap();
    api.set_status(
        &Res::CATALOG_SOURCE,
        Some("openshift-marketplace"),
        &name,
        json!({"connectionState": {"lastObservedState": "TRANSIENT_FAILURE"}}),
    )
    .unwrap();
    assert!(api.delete(&Res::CLUSTER_CATALOG, None, &cc_name));
    let want_drift = json!([
        format!("CatalogSource openshift-marketplace/{name}: .spec.image changed"),
        format!("ClusterCatalog {cc_name}: deleted"),
    ]);
    eventually(
        Duration::from_secs(30),
        "the drift, the catalog behind and its state reported",
        || {
            let c = served.json(&["clusters"]);
            let mut drift = c[0]["drift"].clone();
            if let Some(d) = drift.as_array_mut() {
                d.sort_by_key(|v| v.to_string());
            }
            drift == want_drift
                && c[0]["catalogsBehind"][0]
                    .as_str()
                    .is_some_and(|b| b.contains(&old) && b.contains(&published))
                && c[0]["notes"]
                    .to_string()
                    .contains("catalog connection TRANSIENT_FAILURE")
        },
        || format!("{}\n{}", served.json(&["clusters"]), served.agent.log()),
    );
    // The old version, and the mirrored release it can update to.
    let c = served.json(&["clusters"]);
    assert_eq!(c[0]["version"], "4.19.7", "{c}");
    assert_eq!(c[0]["availableUpdates"], json!(["4.20.0"]), "{c}");

    // Reconcile: both restored, the pinned image taken back.
    let reconciled = served.ctl(&["reconcile", "--cluster", "prod"]);
    assert_eq!(reconciled.code, 0, "{reconciled}");
    assert_eq!(catalog_source().unwrap()["spec"]["image"], published);
    assert_eq!(api.list(&Res::CLUSTER_CATALOG).len(), 1);
    let after = served.json(&["clusters"]);
    assert_eq!(after[0]["drift"], json!([]), "{after}");
    assert_eq!(after[0]["catalogsBehind"], json!([]), "{after}");

    // The CatalogSource itself deleted: reported, and reconcile brings it back.
    assert!(api.delete(&Res::CATALOG_SOURCE, Some("openshift-marketplace"), &name));
    let deleted = json!([format!(
        "CatalogSource openshift-marketplace/{name}: deleted"
    )]);
    eventually(
        Duration::from_secs(30),
        "the deleted CatalogSource reported",
        || served.json(&["clusters"])[0]["drift"] == deleted,
        || format!("{}\n{}", served.json(&["clusters"]), served.agent.log()),
    );
    let human = served.ctl(&["clusters"]);
    assert!(human.stdout.contains("4.19.7"), "{human}");
    let reconciled = served.ctl(&["reconcile", "--cluster", "prod"]);
    assert_eq!(reconciled.code, 0, "{reconciled}");
    let restored = catalog_source().expect("the CatalogSource restored");
    assert_eq!(restored["spec"]["image"], published);
    assert_eq!(
        restored["metadata"]["managedFields"][0]["manager"],
        "airlock"
    );
    assert_eq!(served.json(&["clusters"])[0]["drift"], json!([]));
}

/// A filtered catalog ships its source catalog's layers under a new digest:
/// `--secure-policy` holds that source to its own scope, as it holds the
/// bundles and related images to theirs.
#[test]
fn secure_policy_holds_a_rebuilt_catalog_to_its_source_scope() {
    let (src, tmp, a) = localised_catalog();
    let config = package_config(tmp.path(), &a);
    let policy = tmp.path().join("policy.json");
    std::fs::write(
        &policy,
        json!({
            "default": [{"type": "insecureAcceptAnything"}],
            "transports": {"docker": {format!("{a}/catalogs"): [{"type": "reject"}]}},
        })
        .to_string(),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let refused = run(
        create_cmd(&config, &out, &tmp.path().join("ws"), "1MiB", &src).args([
            "--secure-policy",
            "--policy",
            policy.to_str().unwrap(),
        ]),
    );
    assert_eq!(refused.code, EX_DATA, "{refused}");
    assert!(
        refused.stderr.contains("1 image(s) refused")
            && refused
                .stderr
                .contains(&format!("  - {a}/catalogs/index:v4.17 (sha256:"))
            && refused
                .stderr
                .contains(&format!("transports.docker[\"{a}/catalogs\"]: rejected")),
        "{refused}"
    );
    assert!(!out.exists() || chunk_files(&out).is_empty());
}

/// oc-mirror's `targetCatalogSourceTemplate`: the CatalogSource written at the
/// site keeps the template's display and pod settings, with Airlock's name,
/// namespace and image; a template that would change where the catalog comes
/// from is refused at create with its field.
#[test]
fn a_catalog_source_template_travels_to_the_site_and_shapes_the_catalog_source() {
    let (src, tmp, a) = localised_catalog();
    let dest = Registry::plain().unwrap();
    let template = tmp.path().join("cs-template.yaml");
    let config = tmp.path().join("isc.yaml");
    std::fs::write(
        &config,
        format!(
            "{HEAD}mirror:\n  operators:\n  - catalog: {a}/catalogs/index:v4.17\n    targetCatalogSourceTemplate: {}\n    packages:\n    - name: {PACKAGE}\n",
            template.display()
        ),
    )
    .unwrap();

    std::fs::write(
        &template,
        "apiVersion: operators.coreos.com/v1alpha1\nkind: CatalogSource\nmetadata:\n  name: ignored\nspec:\n  sourceType: grpc\n  configMap: my-catalog\n",
    )
    .unwrap();
    let refused = create(
        &config,
        &tmp.path().join("bad"),
        &tmp.path().join("ws-bad"),
        "1MiB",
        &src,
    );
    assert_eq!(refused.code, EX_CONFIG, "{refused}");
    assert!(
        refused
            .stderr
            .contains("mirror.operators[0].targetCatalogSourceTemplate")
            && refused.stderr.contains("spec.configMap"),
        "{refused}"
    );

    std::fs::write(
        &template,
        "apiVersion: operators.coreos.com/v1alpha1\nkind: CatalogSource\nmetadata:\n  name: my-operators\n  labels:\n    team: platform\nspec:\n  displayName: Site operators\n  publisher: Platform team\n  updateStrategy:\n    registryPoll:\n      interval: 30m\n  grpcPodConfig:\n    nodeSelector:\n      node-role.kubernetes.io/infra: \"\"\n",
    )
    .unwrap();
    let out = tmp.path().join("out");
    let created = create(&config, &out, &tmp.path().join("ws"), "1MiB", &src);
    assert_eq!(created.code, 0, "{created}");
    let published = publish(&out, &dest, "mirror", &tmp.path().join("ws-d"));
    assert_eq!(published.code, 0, "{published}");
    let cs: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(
            tmp.path()
                .join("ws-d/cluster-resources/cs-index-v4-17.yaml"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(cs["metadata"]["name"], "cs-index-v4-17");
    assert_eq!(cs["metadata"]["namespace"], "openshift-marketplace");
    assert_eq!(cs["metadata"]["labels"]["team"], "platform");
    assert_eq!(cs["metadata"]["annotations"]["createdBy"], "airlock");
    assert_eq!(cs["spec"]["displayName"], "Site operators");
    assert_eq!(cs["spec"]["publisher"], "Platform team");
    assert_eq!(
        cs["spec"]["updateStrategy"]["registryPoll"]["interval"],
        "30m"
    );
    assert_eq!(
        cs["spec"]["grpcPodConfig"]["nodeSelector"]["node-role.kubernetes.io/infra"],
        ""
    );
    assert_eq!(cs["spec"]["sourceType"], "grpc");
    let image = cs["spec"]["image"].as_str().unwrap();
    assert!(
        image.starts_with(&format!("{}/mirror/catalogs/index@sha256:", dest.addr())),
        "{image}"
    );
}

/// A cluster whose admission policy denies one object (here the CatalogSource)
/// still gets the others, says which was refused and why, and gets the refused
/// one once the policy allows it, without a new imageset.
#[test]
fn an_object_the_cluster_refuses_does_not_hold_back_the_others_and_is_applied_once_allowed() {
    let (src, tmp, a) = localised_catalog();
    let dest = Registry::plain().unwrap();
    let config = package_config(tmp.path(), &a);
    let out = tmp.path().join("out");
    let created = create(&config, &out, &tmp.path().join("ws"), "1MiB", &src);
    assert_eq!(created.code, 0, "{created}");

    let api = KubeApi::start(&tmp.path().join("api"), "4.19.7").unwrap();
    api.deny_writes(&Res::CATALOG_SOURCE, "catalog sources need a team label");
    let kubeconfig = api.kubeconfig_file().unwrap();
    let served = Served::fleet(&[("prod", &dest, Some(kubeconfig.as_path()))]);
    deliver(&out, &served.site.path("drop"));
    let refused_note = || {
        served.json(&["clusters"])[0]["notes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find(|n| n.contains("not applied: the cluster refused it"))
            .map(str::to_string)
    };
    eventually(
        Duration::from_secs(60),
        "the other objects applied and the refusal reported",
        || !api.list(&Res::CLUSTER_CATALOG).is_empty() && refused_note().is_some(),
        || served.agent.log(),
    );
    let note = refused_note().unwrap();
    assert!(
        note.starts_with("CatalogSource openshift-marketplace/cs-index-v4-17")
            && note.contains("catalog sources need a team label"),
        "{note}"
    );
    assert!(api.list(&Res::CATALOG_SOURCE).is_empty());

    api.allow_writes();
    eventually(
        Duration::from_secs(30),
        "the CatalogSource applied once allowed",
        || !api.list(&Res::CATALOG_SOURCE).is_empty() && refused_note().is_none(),
        || served.agent.log(),
    );
}

/// `operators[].platforms`: the rebuilt catalog is made of the platforms asked
/// for only (a new, complete index, which any registry takes), and the site's
/// CatalogSource names it.
#[test]
fn a_catalog_filtered_by_platform_is_rebuilt_of_those_platforms_only() {
    let (src, tmp, a) = localised_catalog();
    let dest = Registry::plain().unwrap();
    let config = tmp.path().join("isc.yaml");
    std::fs::write(
        &config,
        format!("{HEAD}mirror:\n  operators:\n  - catalog: {a}/catalogs/index:v4.17\n    platforms:\n    - os: linux\n      architecture: arm64\n    packages:\n    - name: {PACKAGE}\n"),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let created = create(&config, &out, &tmp.path().join("ws"), "1MiB", &src);
    assert_eq!(created.code, 0, "{created}");
    let published = publish(&out, &dest, "mirror", &tmp.path().join("ws-d"));
    assert_eq!(published.code, 0, "{published}");
    let top: Value =
        serde_json::from_slice(&inspect_raw_at(&dest, "mirror/catalogs/index:v4.17").unwrap())
            .unwrap();
    let platforms: Vec<&str> = top["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(platforms, ["arm64"]);
    let files = top_layer_files(&dest, "mirror/catalogs/index:v4.17");
    assert!(files.contains_key(&format!("configs/{PACKAGE}/catalog.json")));

    // A platform the catalog does not have is named with those it has.
    std::fs::write(
        &config,
        format!("{HEAD}mirror:\n  operators:\n  - catalog: {a}/catalogs/index:v4.17\n    platforms:\n    - os: linux\n      architecture: s390x\n    packages:\n    - name: {PACKAGE}\n"),
    )
    .unwrap();
    let refused = create(
        &config,
        &tmp.path().join("none"),
        &tmp.path().join("ws2"),
        "1MiB",
        &src,
    );
    assert_ne!(refused.code, 0, "{refused}");
    assert!(
        refused
            .stderr
            .contains("has no image for linux/s390x (it has linux/amd64, linux/arm64)"),
        "{refused}"
    );
}

/// oc-mirror v2's `catalog: oci:///path`: a catalog in a local OCI layout
/// (made here by skopeo, as users make them) is filtered and rebuilt, or
/// copied whole, and lands where oc-mirror puts it: `targetCatalog` or the
/// layout directory's name, tag `targetTag` or `latest`. No local path travels,
/// and a layout whose bytes do not match their digests is refused.
#[test]
fn a_catalog_in_a_local_oci_layout_is_mirrored_as_oc_mirror_names_it() {
    let src = Registry::plain().unwrap();
    let dest = Registry::plain().unwrap();
    let client = PushClient::new(&src).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let a = src.addr();
    let (_, fbc, images) = push_localised_catalog(&client, &a);
    let (heads, wanted) = heads_and_pullspecs(fbc.as_bytes());
    let layout = tmp.path().join("layouts/redhat-operator-index");
    std::fs::create_dir_all(layout.parent().unwrap()).unwrap();
    airlock_tests::skopeo::copy_all(
        &format!("docker://{a}/catalogs/index:v4.17"),
        &airlock_tests::skopeo::SkopeoOpts::for_registry(&src),
        &format!("oci:{}", layout.display()),
        &airlock_tests::skopeo::SkopeoOpts::default(),
    )
    .unwrap();
    let config = tmp.path().join("isc.yaml");
    let write = |entry: &str| {
        std::fs::write(
            &config,
            format!(
                "{HEAD}mirror:\n  operators:\n  - catalog: oci://{}\n{entry}",
                layout.display()
            ),
        )
        .unwrap()
    };
    let create_in = |out: &str, ws: &str| {
        let out = tmp.path().join(out);
        (
            create(&config, &out, &tmp.path().join(ws), "1MiB", &src),
            out,
        )
    };

    write(&format!("    packages:\n    - name: {PACKAGE}\n"));
    let (created, out) = create_in("out", "ws");
    assert_eq!(created.code, 0, "{created}");
    let head = airlock_imageset::read::read_head(&chunk_files(&out)[0]).unwrap();
    let text = String::from_utf8_lossy(&head.manifest_bytes);
    assert!(
        !text.contains(&tmp.path().display().to_string()),
        "a local path travelled"
    );
    assert!(text.contains("oci-layout.invalid/redhat-operator-index:latest"));
    let published = publish(&out, &dest, "mirror", &tmp.path().join("ws-d"));
    assert_eq!(published.code, 0, "{published}");
    let files = top_layer_files(&dest, "mirror/redhat-operator-index:latest");
    let bundles: BTreeSet<String> = blobs(&files[&format!("configs/{PACKAGE}/catalog.json")])
        .iter()
        .filter(|b| b["schema"] == "olm.bundle")
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(bundles, heads);
    for pullspec in &wanted {
        let (repo_at, digest) = pullspec.split_once('@').unwrap();
        let repo = repo_at.strip_prefix(&format!("{a}/")).unwrap();
        let got = inspect_raw_at(&dest, &format!("mirror/{repo}@{digest}")).unwrap();
        assert_eq!(got, images[pullspec].manifest, "{pullspec}");
    }

    // Copied whole, under the names the entry gives it: byte for byte.
    let template = tmp.path().join("cs.yaml");
    std::fs::write(
        &template,
        "apiVersion: operators.coreos.com/v1alpha1\nkind: CatalogSource\nmetadata:\n  name: x\nspec:\n  displayName: Site operators\n",
    )
    .unwrap();
    write(&format!(
        "    full: true\n    targetCatalog: site/operators\n    targetTag: v1\n    targetCatalogSourceTemplate: {}\n",
        template.display()
    ));
    let (created, whole) = create_in("whole", "ws2");
    assert_eq!(created.code, 0, "{created}");
    let catalog = read_manifest(&whole)
        .images
        .into_iter()
        .find(|i| i.kind == airlock_imageset::ImageKind::Catalog)
        .unwrap();
    assert_eq!(catalog.source, "oci-layout.invalid/site/operators:v1");
    assert_eq!(
        catalog.catalog_source.unwrap().display_name.as_deref(),
        Some("Site operators"),
        "the template travels with the layout's catalog"
    );
    let published = publish(&whole, &dest, "mirror", &tmp.path().join("ws-d2"));
    assert_eq!(published.code, 0, "{published}");
    assert_eq!(
        inspect_raw_at(&dest, "mirror/site/operators:v1").unwrap(),
        inspect_raw_at(&src, "catalogs/index:v4.17").unwrap()
    );
    // Deleted as oc-mirror users write it: by the same oci: entry.
    let delete = tmp.path().join("delete.yaml");
    std::fs::write(
        &delete,
        format!(
            "apiVersion: mirror.openshift.io/v2alpha1\nkind: DeleteImageSetConfiguration\ndelete:\n  operators:\n  - catalog: oci://{}/\n    targetCatalog: site/operators\n    targetTag: v1\n",
            layout.display()
        ),
    )
    .unwrap();
    let deleted = tmp.path().join("deleted");
    let made = run(&mut imageset_cmd(
        "delete",
        &delete,
        &deleted,
        &tmp.path().join("ws2"),
    ));
    assert_eq!(made.code, 0, "{made}");
    let published = publish(&deleted, &dest, "mirror", &tmp.path().join("ws-d2"));
    assert_eq!(published.code, 0, "{published}");
    assert!(
        inspect_raw_at(&dest, "mirror/site/operators:v1").is_err(),
        "the catalog is deleted"
    );

    // A flipped byte in a layer of the layout, and a directory that is no layout.
    let index: Value =
        serde_json::from_slice(&inspect_raw_at(&src, "catalogs/index:v4.17").unwrap()).unwrap();
    let child: Value = serde_json::from_slice(
        &std::fs::read(
            layout.join("blobs/sha256").join(
                index["manifests"][0]["digest"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("sha256:"),
            ),
        )
        .unwrap(),
    )
    .unwrap();
    let config_blob = layout.join("blobs/sha256").join(
        child["config"]["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:"),
    );
    let mut bytes = std::fs::read(&config_blob).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&config_blob, bytes).unwrap();
    write(&format!("    packages:\n    - name: {PACKAGE}\n"));
    let (refused, _) = create_in("bad", "ws3");
    assert_ne!(refused.code, 0, "{refused}");
    assert!(refused.stderr.contains("hashes to"), "{refused}");
    std::fs::write(
        &config,
        format!(
            "{HEAD}mirror:\n  operators:\n  - catalog: oci://{}\n",
            tmp.path().join("nowhere").display()
        ),
    )
    .unwrap();
    let (refused, _) = create_in("none", "ws4");
    assert_eq!(refused.code, EX_CONFIG, "{refused}");
    assert!(
        refused
            .stderr
            .contains("isc.yaml:5:5: mirror.operators[0].catalog"),
        "{refused}"
    );
    assert!(
        refused.stderr.contains("nowhere/oci-layout")
            && refused.stderr.contains("skopeo copy --all"),
        "{refused}"
    );
}
