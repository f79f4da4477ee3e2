//! Catalogs read from the real fixtures.

use std::path::{Path, PathBuf};

use super::fbc::{Builder, Catalog, FbcError};

pub(crate) fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/real")
        .join(rel)
}

/// Every real catalog fixture: (name, FBC root).
pub(crate) const FIXTURES: &[(&str, &str)] = &[
    (
        "cluster-kube-descheduler-operator v4.17 (JSON)",
        "cluster-kube-descheduler-operator/v4.17/catalog",
    ),
    (
        "redhat-operator-index v4.12 subset (JSON, bundle objects)",
        "oc-mirror/catalogs/redhat-operator-index-v4.12-subset/configs",
    ),
    (
        "community-operators-prod v4.17 kubevirt-wol (YAML)",
        "community-operators-prod/catalogs/v4.17",
    ),
    (
        "operator-registry index-declcfgs-latest (YAML, 3 packages in one file)",
        "operator-registry/catalogs/index-declcfgs-latest",
    ),
];

pub(crate) fn load(rel: &str) -> Catalog {
    let mut b = Builder::default();
    b.add_dir(&fixture(rel)).unwrap();
    b.finish().unwrap()
}

#[test]
fn every_real_fixture_reads_with_one_head_per_channel() {
    for (name, rel) in FIXTURES {
        let c = load(rel);
        assert!(!c.packages.is_empty(), "{name}");
        for p in c.packages.values() {
            let default = p.default_channel.as_deref().unwrap();
            assert!(p.channels.contains_key(default), "{name}: {}", p.name);
            for ch in p.channels.values() {
                let head = ch.head().unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(p.bundles.contains_key(&head.name));
            }
            for b in p.bundles.values() {
                assert!(!b.image.is_empty(), "{name}: {}", b.name);
            }
        }
    }
}

#[test]
fn json_and_yaml_streams_give_the_same_blobs() {
    let yaml = "---\nschema: olm.package\nname: p\ndefaultChannel: c\n---\nschema: olm.channel\npackage: p\nname: c\nentries:\n- name: p.v1.0.0\n---\nschema: olm.bundle\npackage: p\nname: p.v1.0.0\nimage: r/p@sha256:00\nproperties:\n- type: olm.package\n  value: {packageName: p, version: 1.0.0}\n---\nschema: vendor.example\npackage: p\nname: extra\n";
    let json = r#"{"schema":"olm.package","name":"p","defaultChannel":"c"}
{"schema":"olm.channel","package":"p","name":"c","entries":[{"name":"p.v1.0.0"}]}
{
  "schema": "olm.bundle", "package": "p", "name": "p.v1.0.0", "image": "r/p@sha256:00",
  "properties": [{"type": "olm.package", "value": {"packageName": "p", "version": "1.0.0"}}]
}
{"schema":"vendor.example","package":"p","name":"extra"}"#;
    let read = |name: &str, bytes: &str| {
        let mut b = Builder::default();
        b.add_file(name, bytes.as_bytes()).unwrap();
        b.finish().unwrap()
    };
    let (y, j) = (read("a.yaml", yaml), read("a.json", json));
    let (py, pj) = (&y.packages["p"], &j.packages["p"]);
    assert_eq!(py.raw, pj.raw);
    assert_eq!(py.channels["c"].raw, pj.channels["c"].raw);
    assert_eq!(py.bundles["p.v1.0.0"].raw, pj.bundles["p.v1.0.0"].raw);
    assert_eq!(py.others, pj.others, "unknown schemas are kept");
    assert_eq!(py.others.len(), 1);
}

#[test]
fn malformed_catalogs_are_refused_naming_the_file_and_blob() {
    let refuse = |text: &str| -> String {
        let mut b = Builder::default();
        if let Err(e) = b.add_file("pkg/catalog.json", text.as_bytes()) {
            return e.to_string();
        }
        b.finish().unwrap_err().to_string()
    };
    let e = refuse(r#"{"schema":"olm.package","name":"p"} {"schema":"#);
    assert!(e.starts_with("pkg/catalog.json: "), "{e}");
    let e = refuse(r#"{"schema":"olm.channel","package":"q","name":"c","entries":[]}"#);
    assert!(
        e.contains("names package \"q\", which has no olm.package"),
        "{e}"
    );
    let e = refuse(
        r#"{"schema":"olm.package","name":"p"}{"schema":"olm.bundle","package":"p","name":"p.v1","image":"x","properties":[{"type":"olm.package","value":{"packageName":"p","version":"one"}}]}"#,
    );
    assert!(
        e.contains("olm.bundle \"p.v1\": version \"one\" is not semver"),
        "{e}"
    );
    let e = refuse(
        r#"{"schema":"olm.package","name":"p"}{"schema":"olm.channel","package":"p","name":"c","entries":[{"name":"p.v9"}]}"#,
    );
    assert!(
        e.contains("names bundle \"p.v9\", which is not in the catalog"),
        "{e}"
    );
    let e = refuse("- a\n- b\n");
    assert!(e.contains("document 1 is not an object"), "{e}");
    assert!(matches!(
        Builder::default().add_dir(Path::new("/nonexistent/catalog")),
        Err(FbcError::Io { .. })
    ));
}

mod filtering {
    use std::collections::{BTreeMap, BTreeSet};

    use airlock_config::schema::{IncludeChannel, IncludePackage, Operator};
    use serde_json::Value;

    use super::{FIXTURES, load};
    use crate::catalog::fbc::Catalog;
    use crate::catalog::filter::select;

    fn op(packages: Vec<IncludePackage>, full: bool) -> Operator {
        Operator {
            catalog: "registry.example/index:v4.17".into(),
            packages,
            full,
            ..Default::default()
        }
    }

    fn package(name: &str) -> IncludePackage {
        IncludePackage {
            name: name.into(),
            ..Default::default()
        }
    }

    /// Entry names of a channel, from the blob as read.
    fn entries(raw: &Value) -> Vec<String> {
        raw["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// Heads of `names` in the channel blob: not replaced or skipped by any of them.
    fn heads_among(raw: &Value, names: &[String]) -> Vec<String> {
        let pointed: BTreeSet<&str> = raw["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| names.iter().any(|n| n == e["name"].as_str().unwrap()))
            .flat_map(|e| {
                e["replaces"].as_str().into_iter().chain(
                    e["skips"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str),
                )
            })
            .collect();
        names
            .iter()
            .filter(|n| !pointed.contains(n.as_str()))
            .cloned()
            .collect()
    }

    /// Bundle versions, from the `olm.package` property as read.
    fn versions(c: &Catalog, package: &str) -> BTreeMap<String, semver::Version> {
        c.packages[package]
            .bundles
            .iter()
            .map(|(name, b)| {
                let v = b.raw["properties"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["type"] == "olm.package")
                    .unwrap()["value"]["version"]
                    .as_str()
                    .unwrap();
                (name.clone(), semver::Version::parse(v).unwrap())
            })
            .collect()
    }

    #[test]
    fn no_packages_means_every_channel_head_or_with_full_everything() {
        for (name, rel) in FIXTURES {
            let c = load(rel);
            // Dependencies are checked below; here the selection rules alone.
            let no_deps = |full| {
                let mut o = op(Vec::new(), full);
                o.skip_dependencies = true;
                o
            };
            let heads = select(&c, &no_deps(false), 0).unwrap();
            let full = select(&c, &no_deps(true), 0).unwrap();
            assert_eq!(heads.packages.len(), c.packages.len(), "{name}");
            for (pname, p) in &c.packages {
                for (ch, channel) in &p.channels {
                    let all = entries(&channel.raw);
                    assert_eq!(
                        heads.packages[pname].channels[ch],
                        heads_among(&channel.raw, &all),
                        "{name}: {pname}/{ch}"
                    );
                    assert_eq!(
                        full.packages[pname].channels[ch], all,
                        "{name}: {pname}/{ch}"
                    );
                }
                assert_eq!(
                    heads.packages[pname].default_channel,
                    p.raw["defaultChannel"].as_str().unwrap()
                );
            }
        }
    }

    #[test]
    fn real_dependency_is_resolved_to_the_highest_version_in_range_and_joined() {
        // In operator-registry's index, foo's head requires bar "<0.2.0".
        let c = load("operator-registry/catalogs/index-declcfgs-latest");
        let foo_head = select(&c, &op(vec![package("foo")], false), 0).unwrap();
        let v = versions(&c, "bar");
        let bound = semver::Version::new(0, 2, 0);
        let wanted = v
            .iter()
            .filter(|(_, ver)| **ver < bound)
            .max_by(|a, b| a.1.cmp(b.1))
            .map(|(n, _)| n.clone())
            .unwrap();
        let bar = &foo_head.packages["bar"];
        let default = c.packages["bar"].raw["defaultChannel"].as_str().unwrap();
        assert_eq!(bar.default_channel, default);
        let with_dep: Vec<&String> = bar.channels.values().flatten().collect();
        assert!(with_dep.contains(&&wanted), "{with_dep:?}");
        for (ch, got) in &bar.channels {
            let raw = &c.packages["bar"].channels[ch].raw;
            assert_eq!(heads_among(raw, got).len(), 1, "{ch}: {got:?}");
        }
    }

    #[test]
    fn channel_range_selects_the_entries_in_range_joined_into_one_graph() {
        let c = load("cluster-kube-descheduler-operator/v4.17/catalog");
        let pname = "cluster-kube-descheduler-operator";
        let v = versions(&c, pname);
        let stable = &c.packages[pname].channels["stable"].raw;
        let (min, max) = (semver::Version::new(5, 0, 1), semver::Version::new(5, 1, 2));
        let in_range: Vec<String> = entries(stable)
            .into_iter()
            .filter(|e| v[e] >= min && v[e] <= max)
            .collect();
        assert!(in_range.len() >= 4, "{in_range:?}");
        let mut p = package(pname);
        p.channels = vec![IncludeChannel {
            name: "stable".into(),
            min_version: Some(min.to_string()),
            max_version: Some(max.to_string()),
            min_bundle: None,
        }];
        let s = select(&c, &op(vec![p], false), 0).unwrap();
        let got = &s.packages[pname].channels["stable"];
        for e in &in_range {
            assert!(got.contains(e), "{e} in range but not selected: {got:?}");
        }
        for e in got.iter().filter(|e| !in_range.contains(e)) {
            assert!(v[e] < min || v[e] > max, "{e}");
        }
        assert_eq!(heads_among(stable, got).len(), 1, "one head: {got:?}");
        assert_eq!(s.packages[pname].channels.len(), 1);
        assert_eq!(s.packages[pname].default_channel, "stable");
    }

    #[test]
    fn package_range_applies_to_every_channel_and_drops_those_it_empties() {
        let c = load("cluster-kube-descheduler-operator/v4.17/catalog");
        let pname = "cluster-kube-descheduler-operator";
        let v = versions(&c, pname);
        let mut p = package(pname);
        p.min_version = Some("5.1.0".into());
        let s = select(&c, &op(vec![p.clone()], false), 0).unwrap();
        let min = semver::Version::new(5, 1, 0);
        for (ch, channel) in &c.packages[pname].channels {
            let expected: Vec<String> = entries(&channel.raw)
                .into_iter()
                .filter(|e| v[e] >= min)
                .collect();
            match s.packages[pname].channels.get(ch) {
                Some(got) => {
                    for e in &expected {
                        assert!(got.contains(e), "{ch}: {e}");
                    }
                    assert_eq!(heads_among(&channel.raw, got).len(), 1);
                }
                None => assert!(expected.is_empty(), "{ch} dropped but has {expected:?}"),
            }
        }
        assert!(!s.packages[pname].channels.contains_key("4.13"));

        // Dropping the default channel is an error, as in oc-mirror.
        p.min_version = None;
        p.max_version = Some("4.13.9".into());
        let e = select(&c, &op(vec![p], false), 0).unwrap_err().to_string();
        assert!(
            e.contains("the default channel \"stable\" of package \"cluster-kube-descheduler-operator\" was filtered out"),
            "{e}"
        );
    }

    #[test]
    fn unknown_package_or_channel_and_a_lost_default_channel_are_clear_errors() {
        let c = load("cluster-kube-descheduler-operator/v4.17/catalog");
        let pname = "cluster-kube-descheduler-operator";
        let e = select(&c, &op(vec![package("no-such-operator")], false), 2)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("mirror.operators[2].packages[0].name: package \"no-such-operator\" is not in catalog"),
            "{e}"
        );
        let mut p = package(pname);
        p.channels = vec![IncludeChannel {
            name: "fast".into(),
            ..Default::default()
        }];
        let e = select(&c, &op(vec![p.clone()], false), 0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("channels[0].name: package \"cluster-kube-descheduler-operator\" has no channel \"fast\"; its channels are 4.13, stable"),
            "{e}"
        );
        p.channels[0].name = "4.13".into();
        let e = select(&c, &op(vec![p.clone()], false), 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("the default channel \"stable\""), "{e}");
        p.default_channel = Some("4.13".into());
        let s = select(&c, &op(vec![p.clone()], false), 0).unwrap();
        assert_eq!(s.packages[pname].default_channel, "4.13");
        p.default_channel = Some("stable".into());
        let e = select(&c, &op(vec![p], false), 0).unwrap_err().to_string();
        assert!(
            e.contains("defaultChannel has been set with 'stable', please ensure that 'stable' is declared in the channels section"),
            "{e}"
        );
    }

    #[test]
    fn dependencies_are_added_unless_skipped() {
        let yaml = r#"
schema: olm.package
name: app
defaultChannel: stable
---
schema: olm.channel
package: app
name: stable
entries: [{name: app.v1.0.0}]
---
schema: olm.bundle
package: app
name: app.v1.0.0
image: r/app-bundle@sha256:01
properties:
- {type: olm.package, value: {packageName: app, version: 1.0.0}}
- {type: olm.package.required, value: {packageName: lib, versionRange: ">=1.0.0 <2.0.0"}}
- {type: olm.gvk.required, value: {group: db.example, version: v1, kind: Db}}
---
schema: olm.package
name: lib
defaultChannel: stable
---
schema: olm.channel
package: lib
name: stable
entries:
- {name: lib.v1.0.0}
- {name: lib.v1.5.0, replaces: lib.v1.0.0}
- {name: lib.v2.0.0, replaces: lib.v1.5.0}
---
schema: olm.bundle
package: lib
name: lib.v1.0.0
image: r/lib@sha256:10
properties: [{type: olm.package, value: {packageName: lib, version: 1.0.0}}]
---
schema: olm.bundle
package: lib
name: lib.v1.5.0
image: r/lib@sha256:15
properties: [{type: olm.package, value: {packageName: lib, version: 1.5.0}}]
---
schema: olm.bundle
package: lib
name: lib.v2.0.0
image: r/lib@sha256:20
properties: [{type: olm.package, value: {packageName: lib, version: 2.0.0}}]
---
schema: olm.package
name: db
defaultChannel: stable
---
schema: olm.channel
package: db
name: stable
entries: [{name: db.v3.0.0}]
---
schema: olm.bundle
package: db
name: db.v3.0.0
image: r/db@sha256:30
properties:
- {type: olm.package, value: {packageName: db, version: 3.0.0}}
- {type: olm.gvk, value: {group: db.example, version: v1, kind: Db}}
---
schema: olm.package
name: unrelated
defaultChannel: stable
---
schema: olm.channel
package: unrelated
name: stable
entries: [{name: unrelated.v1.0.0}]
---
schema: olm.bundle
package: unrelated
name: unrelated.v1.0.0
image: r/u@sha256:40
properties: [{type: olm.package, value: {packageName: unrelated, version: 1.0.0}}]
"#;
        let mut b = crate::catalog::fbc::Builder::default();
        b.add_file("catalog.yaml", yaml.as_bytes()).unwrap();
        let c = b.finish().unwrap();
        let s = select(&c, &op(vec![package("app")], false), 0).unwrap();
        let picked: Vec<(&str, &Vec<String>)> = s
            .packages
            .iter()
            .map(|(p, sp)| (p.as_str(), &sp.channels["stable"]))
            .collect();
        assert_eq!(
            picked,
            [
                ("app", &vec!["app.v1.0.0".to_string()]),
                ("db", &vec!["db.v3.0.0".to_string()]),
                // The highest version in range, not the channel head.
                ("lib", &vec!["lib.v1.5.0".to_string()]),
            ]
        );
        let mut skip = op(vec![package("app")], false);
        skip.skip_dependencies = true;
        let s = select(&c, &skip, 0).unwrap();
        assert_eq!(s.packages.keys().collect::<Vec<_>>(), ["app"]);
    }
}

#[test]
fn a_light_read_selects_the_same_and_completes_the_selected_packages() {
    use crate::catalog::filter::select;
    use crate::catalog::image::CatalogImage;
    use airlock_config::schema::Operator;

    let rel = "oc-mirror/catalogs/redhat-operator-index-v4.12-subset/configs";
    let root = fixture(rel);
    let mut files = std::collections::BTreeMap::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let name = p.strip_prefix(&root).unwrap().display().to_string();
                files.insert(name, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut light = Builder::light();
    for (f, b) in &files {
        light.add_file(f, b).unwrap();
    }
    let light = light.finish().unwrap();
    let full = load(rel);
    assert!(light.light && !full.light);
    let op = Operator {
        catalog: "r/index:v4.12".into(),
        ..Default::default()
    };
    let selection = select(&light, &op, 0).unwrap();
    assert_eq!(selection, select(&full, &op, 0).unwrap());
    for (name, p) in &light.packages {
        for (b, bundle) in &p.bundles {
            let types: Vec<&str> = bundle.raw["properties"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["type"].as_str().unwrap())
                .collect();
            assert!(!types.contains(&"olm.bundle.object"), "{name}/{b}");
            let whole = &full.packages[name].bundles[b].raw;
            assert!(whole.to_string().len() > bundle.raw.to_string().len());
        }
    }
    let image = CatalogImage {
        digest: airlock_oci::digest::Digest::of(b"catalog"),
        root: "/configs".into(),
        catalog: light,
        cache_dir: None,
        files,
    };
    let complete = image.complete(&selection).unwrap();
    assert!(!complete.light);
    for (name, sp) in &selection.packages {
        for b in sp.channels.values().flatten() {
            assert_eq!(
                complete.packages[name].bundles[b].raw,
                full.packages[name].bundles[b].raw
            );
        }
    }
}

#[test]
fn indexignore_files_leave_out_what_they_match_as_opm_does() {
    let mut files = std::collections::BTreeMap::new();
    let package = br#"{"schema":"olm.package","name":"p","defaultChannel":"c"}
{"schema":"olm.channel","package":"p","name":"c","entries":[{"name":"p.v1"}]}
{"schema":"olm.bundle","package":"p","name":"p.v1","image":"r/p@sha256:00","properties":[{"type":"olm.package","value":{"packageName":"p","version":"1.0.0"}}]}"#;
    files.insert("p/catalog.json".to_string(), package.to_vec());
    files.insert("README.md".to_string(), b"- not a catalog\n".to_vec());
    files.insert("p/notes.txt".to_string(), b"not json either".to_vec());
    files.insert(
        "p/keep.txt".to_string(),
        b"{\"schema\":\"vendor.x\",\"package\":\"p\"}".to_vec(),
    );
    files.insert(".indexignore".to_string(), b"/README.md\n".to_vec());
    files.insert("p/.indexignore".to_string(), b"*.txt\n!keep.txt\n".to_vec());
    let mut b = Builder::default();
    b.add_tree(&files).unwrap();
    let c = b.finish().unwrap();
    assert_eq!(c.packages["p"].others.len(), 1, "keep.txt is re-included");
    // Without the ignore files, the README is refused.
    files.remove(".indexignore");
    let mut b = Builder::default();
    let e = b.add_tree(&files).unwrap_err().to_string();
    assert!(e.starts_with("README.md: "), "{e}");
}
