//! The rebuilt catalog: the original catalog image, every platform of it, with the
//! filtered catalog in place of its own and without its pre-built serve cache.
//!
//! One layer goes on top ([`crate::derive`]): an opaque marker on the catalog root
//! hides the original catalog, the filtered one is written under the same root,
//! and a whiteout removes the cache directory that `opm serve --cache-dir` would
//! otherwise check against the catalog. opm refuses to serve when the cache does
//! not match the catalog, and the cache's format is opm's own, so rather than
//! regenerate it Airlock removes it and drops `--cache-dir` from the command: the
//! catalog pod builds its cache when it starts. oc-mirror v2 does the same (its
//! PR #899 measured about 42 s for 45–70 operators).
//!
//! The layer is deterministic (sorted entries, root-owned, fixed modes and times,
//! gzip without a timestamp), so the same selection gives the same digest and an
//! unchanged catalog costs nothing in the next imageset.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::fbc::Catalog;
use super::filter::Selection;
use crate::derive::{Entry, Layer};

/// The filtered catalog's files, relative to the catalog root: one
/// `<package>/catalog.json` per package (a stream of JSON objects: the package,
/// its channels, its bundles, its deprecations and other blobs), and
/// `_others.json` for blobs of unknown schemas that name no package.
///
/// `catalog` must have been read whole, not [`Builder::light`](super::fbc::Builder::light).
pub fn files(catalog: &Catalog, selection: &Selection) -> BTreeMap<String, Vec<u8>> {
    assert!(!catalog.light, "a light catalog cannot be written back");
    let mut out = BTreeMap::new();
    for (name, sp) in &selection.packages {
        let p = &catalog.packages[name];
        let mut blobs: Vec<Value> = Vec::new();
        let mut package = p.raw.clone();
        package["defaultChannel"] = json!(sp.default_channel);
        blobs.push(package);
        let mut kept_bundles = BTreeSet::new();
        for (channel, bundles) in &sp.channels {
            let c = &p.channels[channel];
            let entries: Vec<Value> = c.raw["entries"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| {
                    e["name"]
                        .as_str()
                        .is_some_and(|n| bundles.iter().any(|b| b == n))
                })
                .cloned()
                .collect();
            let mut raw = c.raw.clone();
            raw["entries"] = Value::Array(entries);
            blobs.push(raw);
            kept_bundles.extend(bundles.iter().map(String::as_str));
        }
        for b in &kept_bundles {
            blobs.push(p.bundles[*b].raw.clone());
        }
        if let Some(d) = &p.deprecations {
            let kept: Vec<Value> = d["entries"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| {
                    let name = e["reference"]["name"].as_str().unwrap_or_default();
                    match e["reference"]["schema"].as_str() {
                        Some("olm.package") => true,
                        Some("olm.channel") => sp.channels.contains_key(name),
                        Some("olm.bundle") => kept_bundles.contains(name),
                        _ => true,
                    }
                })
                .cloned()
                .collect();
            if !kept.is_empty() {
                let mut d = d.clone();
                d["entries"] = Value::Array(kept);
                blobs.push(d);
            }
        }
        blobs.extend(p.others.iter().cloned());
        out.insert(format!("{name}/catalog.json"), stream(&blobs));
    }
    if !catalog.others.is_empty() {
        out.insert("_others.json".to_string(), stream(&catalog.others));
    }
    out
}

/// Blobs as opm writes them: pretty JSON objects one after another.
fn stream(blobs: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in blobs {
        out.extend(serde_json::to_vec_pretty(b).expect("json serialises"));
        out.push(b'\n');
    }
    out
}

/// The layer that replaces the catalog under `root` with `files` and removes
/// `cache_dir` (both paths from the image root).
pub fn layer(
    root: &str,
    files: &BTreeMap<String, Vec<u8>>,
    cache_dir: Option<&str>,
) -> std::io::Result<Layer> {
    let root = root.trim_matches('/');
    let dir = Entry::Dir { mtime: 0 };
    let marker = Entry::File {
        mtime: 0,
        data: (&[][..]).into(),
    };
    // Keyed with a trailing slash on directories, which fixes the entry order.
    let mut entries: BTreeMap<String, Entry<'_>> = BTreeMap::new();
    entries.insert(format!("{root}/"), dir.clone());
    entries.insert(format!("{root}/.wh..wh..opq"), marker.clone());
    for (path, bytes) in files {
        let parts: Vec<&str> = path.split('/').collect();
        for i in 1..parts.len() {
            entries.insert(format!("{root}/{}/", parts[..i].join("/")), dir.clone());
        }
        entries.insert(
            format!("{root}/{path}"),
            Entry::File {
                mtime: 0,
                data: bytes.as_slice().into(),
            },
        );
    }
    if let Some(cache) = cache_dir
        .map(|c| c.trim_matches('/'))
        .filter(|c| !c.is_empty())
    {
        let whiteout = match cache.rsplit_once('/') {
            Some((parent, name)) => format!("{parent}/.wh.{name}"),
            None => format!(".wh.{cache}"),
        };
        entries.insert(whiteout, marker);
    }
    Layer::of_entries(
        entries
            .iter()
            .map(|(name, e)| (name.trim_end_matches('/').to_string(), e)),
    )
}

/// The serve cache directory a catalog image's command names (`--cache-dir=DIR`
/// or `--cache-dir DIR` in `Entrypoint` or `Cmd`).
pub fn cache_dir(config: &Value) -> Option<String> {
    let args: Vec<&str> = ["Entrypoint", "Cmd"]
        .iter()
        .flat_map(|k| config["config"][k].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    args.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix("--cache-dir=")
            .map(str::to_string)
            .or_else(|| (*a == "--cache-dir").then(|| args.get(i + 1).map(|s| s.to_string()))?)
    })
}

/// Drops the cache flags (`--cache-dir[=DIR]`, `--cache-only`,
/// `--cache-enforce-integrity`) from the command, which otherwise stays as it was.
pub fn drop_cache_flags(config: &mut Value) -> Result<(), String> {
    let Some(cmd) = config["config"]
        .get_mut("Cmd")
        .and_then(Value::as_array_mut)
    else {
        return Ok(());
    };
    let mut kept = Vec::new();
    let mut skip_next = false;
    for a in cmd.iter() {
        let s = a.as_str().unwrap_or_default();
        if skip_next {
            skip_next = false;
            continue;
        }
        if s == "--cache-dir" {
            skip_next = true;
            continue;
        }
        if s.starts_with("--cache-dir=")
            || s.starts_with("--cache-only")
            || s.starts_with("--cache-enforce-integrity")
        {
            continue;
        }
        kept.push(a.clone());
    }
    *cmd = kept;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::fbc::Builder;
    use crate::catalog::filter::select;
    use crate::catalog::tests::{fixture, load};
    use crate::layers::{Limits, Overlay};
    use airlock_config::schema::{IncludePackage, Operator};

    const PACKAGE: &str = "cluster-kube-descheduler-operator";

    #[test]
    fn the_layer_replaces_the_catalog_with_the_selection_and_removes_the_cache() {
        let catalog = load("cluster-kube-descheduler-operator/v4.17/catalog");
        let op = Operator {
            catalog: "r/index:v4.17".into(),
            packages: vec![IncludePackage {
                name: PACKAGE.into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let selection = select(&catalog, &op, 0).unwrap();
        let files = files(&catalog, &selection);
        let new = layer("/configs", &files, Some("/tmp/cache")).unwrap();
        let again = layer(
            "/configs",
            &super::files(&catalog, &selection),
            Some("/tmp/cache"),
        )
        .unwrap();
        assert_eq!(new.digest, again.digest, "deterministic");

        // The original image: its catalog (plus a package the filter leaves out) and
        // its cache, read back through the new layer as a runtime would.
        let original = std::fs::read(fixture(
            "cluster-kube-descheduler-operator/v4.17/catalog/cluster-kube-descheduler-operator/catalog.json",
        ))
        .unwrap();
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in [
            (format!("configs/{PACKAGE}/catalog.json"), &original[..]),
            ("configs/other/catalog.json".to_string(), b"{}"),
            ("tmp/cache/cache.json".to_string(), b"{}"),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, path, data).unwrap();
        }
        let below = b.into_inner().unwrap();
        let limits = Limits {
            file: 1 << 30,
            total: 1 << 30,
        };
        let mut configs = Overlay::new("configs", limits);
        let mut cache = Overlay::new("tmp/cache", limits);
        for o in [&mut configs, &mut cache] {
            o.scan_layer(&mut &new.bytes[..]).unwrap();
            o.scan_layer(&mut &below[..]).unwrap();
        }
        assert!(cache.into_files().is_empty(), "the cache is gone");
        let mut reread = Builder::default();
        for (path, bytes) in configs.into_files() {
            reread.add_file(&path, &bytes).unwrap();
        }
        let reread = reread.finish().unwrap();
        assert_eq!(reread.packages.keys().collect::<Vec<_>>(), [PACKAGE]);
        let p = &reread.packages[PACKAGE];
        let sp = &selection.packages[PACKAGE];
        assert_eq!(
            p.default_channel.as_deref(),
            Some(sp.default_channel.as_str())
        );
        for (channel, bundles) in &sp.channels {
            let names: Vec<&String> = p.channels[channel]
                .entries
                .iter()
                .map(|e| &e.name)
                .collect();
            assert_eq!(names, bundles.iter().collect::<Vec<_>>());
            let head = p.channels[channel].head().unwrap();
            assert_eq!(&head.name, bundles.last().unwrap());
        }
        let kept: BTreeSet<&String> = sp.channels.values().flatten().collect();
        assert_eq!(p.bundles.keys().collect::<BTreeSet<_>>(), kept);
        // Everything else of a kept bundle is as it was.
        for b in &kept {
            assert_eq!(p.bundles[*b].raw, catalog.packages[PACKAGE].bundles[*b].raw);
        }
        assert_eq!(p.raw["icon"], catalog.packages[PACKAGE].raw["icon"]);
    }

    #[test]
    fn cache_flags_are_found_and_dropped() {
        let mut config = json!({"config": {
            "Entrypoint": ["/bin/opm"],
            "Cmd": ["serve", "/configs", "--cache-dir=/tmp/cache", "--cache-only"],
        }});
        assert_eq!(cache_dir(&config).as_deref(), Some("/tmp/cache"));
        drop_cache_flags(&mut config).unwrap();
        assert_eq!(config["config"]["Cmd"], json!(["serve", "/configs"]));
        assert_eq!(cache_dir(&config), None);
        let mut split = json!({"config": {"Cmd": ["serve", "/configs", "--cache-dir", "/c"]}});
        assert_eq!(cache_dir(&split).as_deref(), Some("/c"));
        drop_cache_flags(&mut split).unwrap();
        assert_eq!(split["config"]["Cmd"], json!(["serve", "/configs"]));
    }
}
