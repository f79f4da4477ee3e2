//! `platform.graph: true`: the update-graph data image that an OpenShift Update
//! Service (OSUS) in the disconnected cluster serves updates from.
//!
//! As oc-mirror v2 does, the image is built on the connected side, at `create`: the
//! graph data (Red Hat's `graph-data` tarball of channels, blocked edges and release
//! metadata) becomes one layer under `/var/lib/cincinnati-graph-data`, on top of a
//! base image (UBI 9, every platform of it), with the command OSUS's init container
//! expects. The result is an ordinary image of the imageset, so it travels
//! differentially, is covered by the imageset's signature and is published by the
//! same code as every other image, to `openshift/graph-image:latest`; the
//! disconnected side then writes the `UpdateService` that points at it by digest.
//! Building it on the far side instead (oc-mirror v1) would need an image builder
//! there and give an image whose digest nobody signed.
//!
//! The layer is made deterministically (sorted entries, owner root, fixed modes,
//! the tarball's own timestamps, gzip without a timestamp): the same graph data
//! gives the same layer, so an unchanged graph costs nothing in the next imageset.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Component;
use std::time::Duration;

use airlock_imageset::{ImageKind, ImageRecord};
use airlock_oci::reference::ImageRef;
use airlock_registry::Pool;
use serde_json::{Value, json};

use crate::derive::{self, Derived, Entry, Layer};

/// Red Hat's graph data.
pub const GRAPH_DATA_URL: &str = "https://api.openshift.com/api/upgrades_info/graph-data";
/// The base image oc-mirror builds the graph image on.
pub const GRAPH_BASE_IMAGE: &str = "registry.access.redhat.com/ubi9/ubi:latest";
/// Repository (under the mirror prefix) of the graph image.
pub const GRAPH_IMAGE_REPO: &str = "openshift/graph-image";
/// Tag of the graph image.
pub const GRAPH_IMAGE_TAG: &str = "latest";
/// Where the layer puts the graph data.
pub const DATA_DIR: &str = "var/lib/cincinnati-graph-data";
/// What the image runs: OSUS's init container copies the data into the volume the
/// graph builder reads.
pub const COMMAND: [&str; 3] = [
    "/bin/bash",
    "-c",
    "exec cp -rp /var/lib/cincinnati-graph-data/* /var/lib/cincinnati/graph-data",
];

/// The real tarball is a few MiB; bounds what a wrong URL can make `create` hold.
const MAX_DOWNLOAD: usize = 64 << 20;
/// Bounds what the tarball may expand to.
const MAX_UNPACKED: u64 = 512 << 20;
/// Bounds the number of entries (the real data has a few thousand).
const MAX_ENTRIES: usize = 200_000;

/// Why the graph image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GraphImageError {
    /// The graph data could not be downloaded.
    #[error("graph data {url}: {source}")]
    Fetch {
        /// Where from.
        url: String,
        /// What went wrong.
        source: crate::http::GetError,
    },
    /// The graph data is not a tarball of files and directories.
    #[error("graph data {url}: {message}")]
    Data {
        /// Where from.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// The base image could not be read.
    #[error("graph image base {image}: {source}")]
    Base {
        /// The base image.
        image: String,
        /// What went wrong.
        source: Box<crate::derive::DeriveError>,
    },
}

/// The graph data as an image layer.
#[derive(Debug, Clone)]
pub struct DataLayer {
    /// The layer.
    pub layer: Layer,
    /// Files in it.
    pub files: usize,
}

/// Re-roots the graph data tarball (gzip-compressed or not) under [`DATA_DIR`].
///
/// The tarball comes from the network and is treated as hostile: only regular
/// files and directories with relative, `..`-free paths are taken; anything else
/// (links, devices, absolute or escaping paths) is refused, and sizes are bounded.
pub fn data_layer(tarball: &[u8], url: &str) -> Result<DataLayer, GraphImageError> {
    let err = |message: String| GraphImageError::Data {
        url: url.to_string(),
        message,
    };
    let reader: Box<dyn Read> = if tarball.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(tarball))
    } else {
        Box::new(tarball)
    };
    let mut archive = tar::Archive::new(reader);
    let mut entries: BTreeMap<String, Entry<'static>> = BTreeMap::new();
    let mut unpacked = 0u64;
    for entry in archive
        .entries()
        .map_err(|e| err(format!("not a tar archive: {e}")))?
    {
        let mut entry = entry.map_err(|e| err(format!("not a tar archive: {e}")))?;
        let raw = entry
            .path()
            .map_err(|e| err(format!("an entry name is not a path: {e}")))?
            .into_owned();
        let mut parts = Vec::new();
        for c in raw.components() {
            match c {
                Component::Normal(p) => parts.push(
                    p.to_str()
                        .ok_or_else(|| err(format!("entry {raw:?}: the name is not UTF-8")))?
                        .to_string(),
                ),
                Component::CurDir => {}
                _ => {
                    return Err(err(format!(
                        "entry {}: absolute or parent-relative paths are refused",
                        raw.display()
                    )));
                }
            }
        }
        if parts.is_empty() {
            continue;
        }
        let name = parts.join("/");
        let mtime = entry.header().mtime().unwrap_or(0);
        let kind = entry.header().entry_type();
        let item = if kind.is_dir() {
            Entry::Dir { mtime }
        } else if kind.is_file() {
            let size = entry.size();
            unpacked += size;
            if unpacked > MAX_UNPACKED {
                return Err(err(format!("expands to more than {MAX_UNPACKED} bytes")));
            }
            let mut data = Vec::with_capacity(size as usize);
            entry
                .read_to_end(&mut data)
                .map_err(|e| err(format!("entry {name}: {e}")))?;
            Entry::File {
                mtime,
                data: data.into(),
            }
        } else if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
            continue;
        } else {
            return Err(err(format!(
                "entry {name} is a {kind:?}; graph data holds only files and directories"
            )));
        };
        // Parents a tarball leaves implicit become directories.
        for i in 1..parts.len() {
            entries
                .entry(parts[..i].join("/"))
                .or_insert(Entry::Dir { mtime: 0 });
        }
        if entries.insert(name.clone(), item).is_some() {
            return Err(err(format!("entry {name} appears twice")));
        }
        if entries.len() > MAX_ENTRIES {
            return Err(err(format!("has more than {MAX_ENTRIES} entries")));
        }
    }
    let files = entries
        .values()
        .filter(|e| matches!(e, Entry::File { .. }))
        .count();
    if files == 0 {
        return Err(err("holds no files".into()));
    }

    let prefix: Vec<&str> = DATA_DIR.split('/').collect();
    let root = Entry::Dir { mtime: 0 };
    let dirs = (1..=prefix.len()).map(|i| (prefix[..i].join("/"), &root));
    let data = entries
        .iter()
        .map(|(name, e)| (format!("{DATA_DIR}/{name}"), e));
    Layer::of_entries(dirs.chain(data))
        .map(|layer| DataLayer { layer, files })
        .map_err(|e| err(format!("writing the layer: {e}")))
}

/// Downloads the graph data tarball.
pub async fn fetch_data(url: &str) -> Result<Vec<u8>, GraphImageError> {
    let get = async {
        let client = airlock_registry::http_client(url, Duration::from_secs(600))?;
        crate::http::get(
            &client,
            "graph data read",
            url,
            MAX_DOWNLOAD,
            "check the network, or set --graph-data-url to a reachable copy",
        )
        .await
    };
    get.await.map_err(|source| GraphImageError::Fetch {
        url: url.to_string(),
        source,
    })
}

/// Builds the graph image from `base` (every platform of it) and `layer`.
pub async fn build(
    pool: &Pool,
    base: &ImageRef,
    layer: &DataLayer,
) -> Result<Derived, GraphImageError> {
    let record = ImageRecord {
        source: base.to_string(),
        repository: base.name(),
        tag: Some(GRAPH_IMAGE_TAG.into()),
        by_digest: false,
        digest: layer.layer.digest.clone(),
        target_repository: Some(GRAPH_IMAGE_REPO.into()),
        kind: ImageKind::GraphData,
        subject: None,
        catalog_source: None,
        platforms: Vec::new(),
    };
    let set_command = |config: &mut Value| {
        config["config"]["Cmd"] = json!(COMMAND);
        Ok(())
    };
    derive::derive(
        pool,
        base,
        record,
        &layer.layer,
        &format!("airlock: graph data in /{DATA_DIR}"),
        &set_command,
        &[],
    )
    .await
    .map_err(|source| GraphImageError::Base {
        image: base.to_string(),
        source: Box::new(source),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tarball(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o600);
            h.set_uid(1000);
            h.set_mtime(1_700_000_000);
            if *kind == tar::EntryType::Symlink {
                h.set_link_name("/etc/passwd").unwrap();
            }
            // Bypass the builder's path checks, as a hostile tarball would.
            let bytes = name.as_bytes();
            h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &b.into_inner().unwrap()).unwrap();
        gz.finish().unwrap()
    }

    fn unpack(layer: &DataLayer) -> Vec<(String, u32, u64, Vec<u8>)> {
        let mut a = tar::Archive::new(flate2::read::GzDecoder::new(&layer.layer.bytes[..]));
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let h = e.header().clone();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                    data,
                )
            })
            .collect()
    }

    #[test]
    fn graph_data_is_rerooted_owned_by_root_and_deterministic() {
        let t = tarball(&[
            (
                "./channels/stable-4.20.yaml",
                tar::EntryType::Regular,
                b"name: stable-4.20\n",
            ),
            (
                "blocked-edges/4.20.1.yaml",
                tar::EntryType::Regular,
                b"to: 4.20.1\n",
            ),
            ("version", tar::EntryType::Regular, b"1.2\n"),
        ]);
        let a = data_layer(&t, "u").unwrap();
        let b = data_layer(&t, "u").unwrap();
        let (la, lb) = (&a.layer, &b.layer);
        assert_eq!((&la.digest, &la.diff_id), (&lb.digest, &lb.diff_id));
        assert_eq!(a.files, 3);
        assert_eq!(airlock_oci::digest::Digest::of(&la.bytes), la.digest);
        let entries = unpack(&a);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "var/",
                "var/lib/",
                "var/lib/cincinnati-graph-data/",
                "var/lib/cincinnati-graph-data/blocked-edges/",
                "var/lib/cincinnati-graph-data/blocked-edges/4.20.1.yaml",
                "var/lib/cincinnati-graph-data/channels/",
                "var/lib/cincinnati-graph-data/channels/stable-4.20.yaml",
                "var/lib/cincinnati-graph-data/version",
            ]
        );
        assert!(entries.iter().all(|e| e.2 == 0), "owned by root");
        let file = entries
            .iter()
            .find(|e| e.0.ends_with("stable-4.20.yaml"))
            .unwrap();
        assert_eq!(
            (file.1, file.3.as_slice()),
            (0o644, &b"name: stable-4.20\n"[..])
        );
        // The diff_id is the digest of the uncompressed tar.
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(&a.layer.bytes[..])
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(airlock_oci::digest::Digest::of(&tar), a.layer.diff_id);
    }

    #[test]
    fn hostile_graph_data_is_refused_with_the_entry() {
        for (name, kind, want) in [
            (
                "../../etc/cron.d/x",
                tar::EntryType::Regular,
                "../../etc/cron.d/x: absolute or parent-relative",
            ),
            (
                "/etc/passwd",
                tar::EntryType::Regular,
                "/etc/passwd: absolute or parent-relative",
            ),
            (
                "channels/link",
                tar::EntryType::Symlink,
                "channels/link is a Symlink",
            ),
            ("dev", tar::EntryType::Char, "dev is a Char"),
        ] {
            let t = tarball(&[("ok", tar::EntryType::Regular, b"x"), (name, kind, b"")]);
            let e = data_layer(&t, "https://example.invalid/graph-data")
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("graph data https://example.invalid/graph-data: "),
                "{e}"
            );
            assert!(e.contains(want), "{name}: {e}");
        }
        let e = data_layer(b"<html>", "u").unwrap_err().to_string();
        assert!(
            e.contains("holds no files") || e.contains("not a tar archive"),
            "{e}"
        );
        let twice = tarball(&[
            ("a", tar::EntryType::Regular, b"1"),
            ("./a", tar::EntryType::Regular, b"2"),
        ]);
        assert!(
            data_layer(&twice, "u")
                .unwrap_err()
                .to_string()
                .contains("entry a appears twice")
        );
    }
}
