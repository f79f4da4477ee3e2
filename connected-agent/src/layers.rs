//! The files under one directory of an image's filesystem, read from its layers
//! top first, as a container runtime would see them.
//!
//! A release payload keeps two files in `release-manifests/`; a catalog image keeps
//! its file-based catalog in `/configs`. Both are found the same way: each layer,
//! read from the top down, decides what the layers above left open. A regular file
//! is found; a whiteout `.wh.NAME` removes NAME (file or directory) from the layers
//! below; an opaque marker `.wh..wh..opq` hides everything below its directory; a
//! whiteout or opaque marker on the directory itself ends the search. Nothing is
//! written to disk: the files are held in memory, within limits, so a path in a
//! layer can never reach the filesystem.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};

use airlock_oci::digest::Digest;
use airlock_oci::manifest::{Manifest, ManifestError};
use airlock_oci::reference::ImageRef;
use airlock_registry::{Pool, RawManifest, RegistryClient, RegistryError};
use futures::TryStreamExt;

use crate::reads::Reads;

/// Bounds on what a hostile layer can make Airlock hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest single file.
    pub file: u64,
    /// Largest sum of all files kept.
    pub total: u64,
}

/// What the layers read so far decided about a directory.
#[derive(Debug)]
pub struct Overlay {
    dir: String,
    limits: Limits,
    total: u64,
    /// The files to keep, by relative path (`None`: every file). A release
    /// payload's directory holds hundreds of manifests, of which three matter.
    only: Option<Vec<String>>,
    /// Files found, by path relative to the directory.
    files: BTreeMap<String, Vec<u8>>,
    /// Paths (files or directories) removed by a layer above.
    removed: Vec<String>,
    /// Directories made opaque by a layer above (`""` is the directory itself).
    opaque: Vec<String>,
    /// The directory itself was removed or made opaque above.
    sealed: bool,
}

fn under(path: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn split(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some((parent, name)) => (parent, name),
        None => ("", path),
    }
}

impl Overlay {
    /// Nothing decided yet about `dir` (a path from the image root, such as
    /// `configs` or `release-manifests`).
    pub fn new(dir: &str, limits: Limits) -> Self {
        Overlay {
            dir: dir.trim_matches('/').to_string(),
            limits,
            total: 0,
            only: None,
            files: BTreeMap::new(),
            removed: Vec::new(),
            opaque: Vec::new(),
            sealed: false,
        }
    }

    /// Keeps only the files at `rels` (whiteouts are still followed for all).
    pub fn only(mut self, rels: &[&str]) -> Self {
        self.only = Some(rels.iter().map(|r| r.to_string()).collect());
        self
    }

    /// Whether lower layers can no longer change anything.
    pub fn is_sealed(&self) -> bool {
        self.sealed
    }

    /// Whether a layer above decided `rel` (found it, or removed it).
    pub fn decided(&self, rel: &str) -> bool {
        self.hidden(rel) || self.files.contains_key(rel)
    }

    /// A file found, by path relative to the directory.
    pub fn get(&self, rel: &str) -> Option<&[u8]> {
        self.files.get(rel).map(Vec::as_slice)
    }

    /// Every file found, by relative path.
    pub fn into_files(self) -> BTreeMap<String, Vec<u8>> {
        self.files
    }

    fn hidden(&self, rel: &str) -> bool {
        self.sealed
            || self.removed.iter().any(|r| under(rel, r))
            || self
                .opaque
                .iter()
                .any(|o| o.is_empty() || under(rel, o) && rel != o)
    }

    /// Reads one layer (gzip-compressed or plain tar), the next one down.
    pub fn scan_layer(&mut self, r: &mut impl Read) -> Result<(), ScanError> {
        let mut r = BufReader::with_capacity(1 << 16, r);
        let magic = r.fill_buf()?;
        let reader: Box<dyn Read + '_> = if magic.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::bufread::GzDecoder::new(r))
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            return Err(ScanError::Zstd);
        } else {
            Box::new(r)
        };
        let (parent, base) = split(&self.dir);
        let dir_whiteout = if parent.is_empty() {
            format!(".wh.{base}")
        } else {
            format!("{parent}/.wh.{base}")
        };
        let prefix = format!("{}/", self.dir);
        let mut found: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut removed = Vec::new();
        let mut opaque = Vec::new();
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let raw = entry.path()?;
            let path = raw.to_string_lossy().into_owned();
            let path = path.trim_start_matches("./").trim_start_matches('/');
            if path == dir_whiteout {
                opaque.push(String::new());
                continue;
            }
            let Some(rel) = path.strip_prefix(&prefix) else {
                continue;
            };
            let rel = rel.trim_end_matches('/');
            if rel.split('/').any(|c| c == ".." || c == ".") {
                return Err(ScanError::DotPath {
                    path: path.to_string(),
                });
            }
            if rel.is_empty() || self.decided(rel) {
                continue;
            }
            let (parent, name) = split(rel);
            if name == ".wh..wh..opq" {
                opaque.push(parent.to_string());
                continue;
            }
            if let Some(gone) = name.strip_prefix(".wh.") {
                removed.push(if parent.is_empty() {
                    gone.to_string()
                } else {
                    format!("{parent}/{gone}")
                });
                continue;
            }
            let kind = entry.header().entry_type();
            if kind.is_dir()
                || self
                    .only
                    .as_ref()
                    .is_some_and(|o| !o.iter().any(|w| w == rel))
            {
                continue;
            }
            if !kind.is_file() {
                return Err(ScanError::NotRegular {
                    path: path.to_string(),
                    kind: format!("{kind:?}"),
                });
            }
            let size = entry.header().size()?;
            if size > self.limits.file {
                return Err(ScanError::FileTooLarge {
                    path: path.to_string(),
                    size,
                    limit: self.limits.file,
                });
            }
            self.total += size;
            if self.total > self.limits.total {
                return Err(ScanError::TotalTooLarge {
                    dir: self.dir.clone(),
                    limit: self.limits.total,
                });
            }
            let mut bytes = Vec::with_capacity(size as usize);
            (&mut entry).take(size).read_to_end(&mut bytes)?;
            found.insert(rel.to_string(), bytes);
        }
        self.files.extend(found);
        self.sealed |= opaque.iter().any(String::is_empty);
        self.removed.extend(removed);
        self.opaque.extend(opaque);
        Ok(())
    }
}

/// Why the files of a layer could not be read from its archive.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The archive is not a readable (optionally gzipped) tar.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A compression Airlock does not read.
    #[error("zstd-compressed layers are not supported")]
    Zstd,
    /// A path that could climb out of the directory.
    #[error("{path}: a path with '.' or '..' components is refused")]
    DotPath {
        /// As the archive names it.
        path: String,
    },
    /// A link, device or other entry where a file is read.
    #[error("{path} is not a regular file ({kind})")]
    NotRegular {
        /// As the archive names it.
        path: String,
        /// The tar entry type.
        kind: String,
    },
    /// One file over the bound.
    #[error("{path} is {size} bytes; more than {limit} is refused")]
    FileTooLarge {
        /// As the archive names it.
        path: String,
        /// Its size.
        size: u64,
        /// The bound.
        limit: u64,
    },
    /// The files read so far over the bound.
    #[error("the files under /{dir} exceed {limit} bytes in all")]
    TotalTooLarge {
        /// The directory read.
        dir: String,
        /// The bound.
        limit: u64,
    },
}

/// Why an image's files could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The registry failed.
    #[error("{0}")]
    Registry(#[source] RegistryError),
    /// A manifest of the image does not parse.
    #[error("manifest {digest}: {source}")]
    Manifest {
        /// The manifest.
        digest: Digest,
        /// Why.
        source: ManifestError,
    },
    /// A layer is not what it should be: not its digest, or not a readable archive.
    #[error("layer {digest}: {source}")]
    Layer {
        /// The layer.
        digest: Digest,
        /// Why.
        source: ScanError,
    },
}

/// An image opened for reading its files: its registry's client and its top
/// manifest, as pulled and as parsed.
pub struct Opened {
    /// The registry's client.
    pub client: std::sync::Arc<RegistryClient>,
    /// The top manifest's digest.
    pub digest: Digest,
    /// The top manifest.
    pub manifest: Manifest,
}

/// Opens `image`: pulls and parses its top manifest.
pub async fn open(pool: &Pool, image: &ImageRef) -> Result<Opened, LayerError> {
    let client = pool
        .client(image.registry())
        .await
        .map_err(LayerError::Registry)?;
    let reference = image.manifest_reference();
    let top = Reads::new()
        .run("manifest read", &image.to_string(), || {
            client.get_manifest(image.repository(), &reference)
        })
        .await
        .map_err(LayerError::Registry)?;
    let manifest = parse(&top)?;
    Ok(Opened {
        client,
        digest: top.digest,
        manifest,
    })
}

impl Opened {
    /// Pulls and parses a child manifest of the top index.
    pub async fn child(&self, image: &ImageRef, digest: &Digest) -> Result<Manifest, LayerError> {
        let of = format!("{}@{digest}", image.name());
        let m = Reads::new()
            .run("manifest read", &of, || {
                self.client
                    .get_manifest(image.repository(), digest.as_str())
            })
            .await
            .map_err(LayerError::Registry)?;
        parse(&m)
    }
}

fn parse(m: &RawManifest) -> Result<Manifest, LayerError> {
    m.parse().map_err(|source| LayerError::Manifest {
        digest: m.digest.clone(),
        source,
    })
}

/// Streams layer `digest` of `repository` through `overlay` (the layers above it
/// already read) and returns it. The layer is always read to its end, so the
/// registry client checks its digest: a forged layer is an error, not a silently
/// different set of files.
pub async fn read_layer(
    client: &RegistryClient,
    repository: &str,
    digest: &Digest,
    mut overlay: Overlay,
) -> Result<Overlay, LayerError> {
    // Only opening the layer is retried: a layer that fails midway has been
    // scanned in part, and the scan cannot begin again.
    let of = format!("{repository}@{digest}");
    let stream = Reads::new()
        .run("layer read", &of, || client.blob_stream(repository, digest))
        .await
        .map_err(LayerError::Registry)?;
    let reader =
        tokio_util::io::StreamReader::new(stream.map_err(|e| std::io::Error::other(e.to_string())));
    let digest = digest.clone();
    tokio::task::spawn_blocking(move || {
        let mut sync = tokio_util::io::SyncIoBridge::new(reader);
        let scanned = overlay.scan_layer(&mut sync);
        let layer_err = |source| LayerError::Layer {
            digest: digest.clone(),
            source,
        };
        std::io::copy(&mut sync, &mut std::io::sink()).map_err(|e| layer_err(e.into()))?;
        scanned.map_err(layer_err)?;
        Ok(overlay)
    })
    .await
    .expect("the layer reader does not panic")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    const LIMITS: Limits = Limits {
        file: 1 << 20,
        total: 4 << 20,
    };

    /// The overlay of `layers_top_first`, or the message an operator would read.
    fn read(dir: &str, layers_top_first: &[Vec<u8>]) -> Result<Overlay, String> {
        let mut o = Overlay::new(dir, LIMITS);
        for l in layers_top_first {
            o.scan_layer(&mut &l[..]).map_err(|e| e.to_string())?;
        }
        Ok(o)
    }

    #[test]
    fn upper_layers_decide_whiteouts_remove_and_opaque_directories_hide() {
        let base = tar_of(&[
            ("configs/a/catalog.json", b"a-old"),
            ("configs/b/catalog.json", b"b"),
            ("configs/c/catalog.json", b"c"),
            ("configs/d/x.json", b"d"),
            ("etc/passwd", b"not ours"),
        ]);
        let middle = gz(&tar_of(&[
            ("./configs/a/catalog.json", b"a-new"),
            ("configs/.wh.b", b""),
            ("configs/c/.wh..wh..opq", b""),
            ("configs/c/other.json", b"c2"),
        ]));
        let top = tar_of(&[("configs/d/.wh.x.json", b""), ("configs/e.yaml", b"e")]);
        let o = read("configs", &[top, middle, base]).unwrap();
        let files = o.into_files();
        let got: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        assert_eq!(
            got,
            [
                ("a/catalog.json", &b"a-new"[..]),
                ("c/other.json", b"c2"),
                ("e.yaml", b"e"),
            ]
        );
    }

    #[test]
    fn a_whiteout_or_opaque_marker_on_the_directory_seals_it() {
        let lower = tar_of(&[("configs/a.json", b"a")]);
        for marker in [".wh.configs", "configs/.wh..wh..opq"] {
            let top = tar_of(&[(marker, b""), ("configs/b.json", b"b")]);
            let o = read("configs", &[top, lower.clone()]).unwrap();
            assert!(o.is_sealed(), "{marker}");
            // The marking layer's own files stay; everything below is gone.
            let files = o.into_files();
            assert_eq!(files.keys().collect::<Vec<_>>(), ["b.json"], "{marker}");
        }
    }

    #[test]
    fn hostile_layers_are_refused() {
        let zstd = [0x28, 0xb5, 0x2f, 0xfd, 0, 0];
        assert!(
            read("configs", &[zstd.to_vec()])
                .unwrap_err()
                .contains("zstd")
        );
        let link = {
            let mut b = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_cksum();
            b.append_link(&mut h, "configs/p/catalog.json", "/etc/passwd")
                .unwrap();
            b.into_inner().unwrap()
        };
        assert!(
            read("configs", &[link])
                .unwrap_err()
                .contains("not a regular file")
        );
        let mut raw = tar_of(&[("configs/xx/catalog.json", b"x")]);
        // Rewrite the name in place to a traversal (the tar crate refuses to write one).
        let at = raw.windows(2).position(|w| w == b"xx").unwrap();
        raw[at..at + 2].copy_from_slice(b"..");
        let mut h = tar::Header::from_byte_slice(&raw[..512]).clone();
        h.set_cksum();
        raw[..512].copy_from_slice(h.as_bytes());
        assert!(read("configs", &[raw]).unwrap_err().contains("'..'"));
        let big = vec![0u8; (LIMITS.file + 1) as usize];
        let e = read("configs", &[tar_of(&[("configs/big.json", &big)])]).unwrap_err();
        assert!(e.contains("more than"), "{e}");
        let half = vec![0u8; (LIMITS.file - 1) as usize];
        let many: Vec<(String, &[u8])> = (0..5)
            .map(|i| (format!("configs/{i}.json"), &half[..]))
            .collect();
        let entries: Vec<(&str, &[u8])> = many.iter().map(|(p, b)| (p.as_str(), *b)).collect();
        let e = read("configs", &[tar_of(&entries)]).unwrap_err();
        assert!(e.contains("in all"), "{e}");
    }

    /// Regression: a release payload's `release-manifests/` holds hundreds of
    /// cluster manifests; holding them all counted against the bound on files
    /// kept, so a large payload could be refused for files nobody reads.
    #[test]
    fn only_the_files_asked_for_are_kept_and_counted() {
        let big = vec![b'x'; (LIMITS.file - 1) as usize];
        let mut entries: Vec<(String, &[u8])> = (0..8)
            .map(|i| (format!("release-manifests/0000_{i}_crd.yaml"), &big[..]))
            .collect();
        entries.push(("release-manifests/image-references".into(), b"refs"));
        let entries: Vec<(&str, &[u8])> = entries.iter().map(|(p, b)| (p.as_str(), *b)).collect();
        let layer = tar_of(&entries);
        let lower = tar_of(&[("release-manifests/release-metadata", b"meta")]);
        assert!(read("release-manifests", std::slice::from_ref(&layer)).is_err());
        let mut o = Overlay::new("release-manifests", LIMITS)
            .only(&["image-references", "release-metadata"]);
        o.scan_layer(&mut &layer[..]).unwrap();
        assert!(o.decided("image-references") && !o.decided("release-metadata"));
        o.scan_layer(&mut &lower[..]).unwrap();
        let files = o.into_files();
        assert_eq!(
            files.keys().collect::<Vec<_>>(),
            ["image-references", "release-metadata"]
        );
    }
}
