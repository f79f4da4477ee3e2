//! Reading images from a local OCI image layout (`oci:DIR`), as oc-mirror v2 reads
//! operator catalogs named `oci:///path`.
//!
//! A layout is a directory with an `oci-layout` file, an `index.json` naming the
//! images it holds, and every manifest and blob under `blobs/<algorithm>/<hex>`
//! (the OCI image layout specification). Each layout is given a repository and
//! tag under the reserved host [`HOST`], so that the code that reads registries
//! reads it unchanged: [`super::Pool`] hands out a client for [`HOST`] whose reads
//! come from the files. Everything read is checked as a registry's answer is:
//! every manifest and blob against its digest, every manifest's size and shape.
//! Only a [`Digest`]'s hex ever becomes part of a path.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use super::{ErrorKind, RawManifest, RegistryError};
use airlock_oci::digest::{Digest, Hasher};
use airlock_oci::manifest;
use airlock_oci::reference::{ImageRef, valid_repository};

/// The host of images read from local layouts. `.invalid` never resolves
/// (RFC 2606), so a read meant for a layout cannot reach a registry.
pub const HOST: &str = "oci-layout.invalid";

/// The annotation naming an image in `index.json` (`skopeo copy ... oci:DIR:TAG`).
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Largest `index.json` read: it lists a handful of images.
const MAX_INDEX_BYTES: u64 = 4 << 20;

/// The layouts a run reads, by the repository and tag each is given under
/// [`HOST`]. A repository may have several (one per tag): a read by digest is
/// served by the first that holds it, which is sound since every byte is
/// checked against the digest.
#[derive(Debug, Default)]
pub struct Layouts(RwLock<HashMap<String, Vec<(String, PathBuf)>>>);

#[derive(serde::Deserialize)]
struct LayoutFile {
    #[serde(rename = "imageLayoutVersion")]
    version: String,
}

#[derive(serde::Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<manifest::Descriptor>,
}

fn request(
    operation: &'static str,
    target: String,
    kind: ErrorKind,
    message: String,
) -> RegistryError {
    RegistryError::Request {
        operation,
        target,
        kind,
        message,
    }
}

/// Why a local OCI layout cannot be read as a catalog. Each names the file or
/// the name concerned and what a layout needs.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The path of the layout could not be made absolute.
    #[error("{path:?}: {source}")]
    Path {
        /// As configured.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// The path ends without a directory name to name the catalog by.
    #[error("{path:?} names no directory")]
    NoName {
        /// As configured.
        path: String,
    },
    /// `oci:DIR:REFERENCE`, which picks one image of several in a layout.
    #[error(
        "{path:?}: oci:DIR:REFERENCE is not supported; name the layout's directory, which holds one image"
    )]
    Reference {
        /// As configured.
        path: String,
    },
    /// The directory's name cannot be a repository name.
    #[error(
        "the layout directory's name {:?} is not a repository name (lowercase letters, digits, '.', '_', '-'); give the catalog a targetCatalog",
        airlock_oci::quote::clip(name)
    )]
    BadName {
        /// The directory's name.
        name: String,
    },
    /// The reference made from the names does not parse.
    #[error(transparent)]
    Target(#[from] airlock_oci::reference::ReferenceError),
    /// No `oci-layout` file.
    #[error(
        "{}: {source}; an OCI image layout holds an oci-layout file (make one with skopeo copy --all docker://IMAGE oci:{})",
        dir.join("oci-layout").display(),
        dir.display()
    )]
    NoLayoutFile {
        /// The directory.
        dir: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// An `oci-layout` file that is not JSON of the expected shape.
    #[error("{}: {source}", dir.join("oci-layout").display())]
    BadLayoutFile {
        /// The directory.
        dir: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A layout version this reader does not know.
    #[error(
        "{}: imageLayoutVersion {:?}; expected 1.x",
        dir.join("oci-layout").display(),
        airlock_oci::quote::clip(version)
    )]
    Version {
        /// The directory.
        dir: PathBuf,
        /// The version it says.
        version: String,
    },
    /// No `index.json`.
    #[error("{}: missing", dir.join("index.json").display())]
    NoIndex {
        /// The directory.
        dir: PathBuf,
    },
    /// Two layouts would be read as the same reference.
    #[error(
        "{} and {} would both be {reference}; give one a targetCatalog or a targetTag",
        first.display(),
        second.display()
    )]
    Clash {
        /// The layout added first.
        first: PathBuf,
        /// The one that clashes with it.
        second: PathBuf,
        /// The reference both would be.
        reference: Box<ImageRef>,
    },
}

/// Where a catalog named `catalog` (oc-mirror v2's `oci:///abs/path`, or
/// `oci:relative/path` from the working directory) is read from when it names a
/// local layout: its directory, and the reference it is read and recorded as,
/// `oci-layout.invalid/NAME:TAG`, NAME being `target_catalog` or the directory's
/// name and TAG `target_tag` or `latest`, where oc-mirror places it at the
/// mirror. No local path then travels in an imageset. `None` when `catalog` is
/// not `oci:`.
pub fn catalog(
    catalog: &str,
    target_catalog: Option<&str>,
    target_tag: Option<&str>,
) -> Option<Result<(PathBuf, ImageRef), LayoutError>> {
    let path = catalog.strip_prefix("oci:")?;
    let path = path.strip_prefix("//").unwrap_or(path);
    Some((|| {
        let dir = std::path::absolute(path).map_err(|source| LayoutError::Path {
            path: path.to_string(),
            source,
        })?;
        let name = match target_catalog {
            Some(t) => t.to_string(),
            None => dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| LayoutError::NoName {
                    path: path.to_string(),
                })?,
        };
        if target_catalog.is_none() && name.contains(':') {
            return Err(LayoutError::Reference {
                path: path.to_string(),
            });
        }
        if !valid_repository(&name) {
            return Err(LayoutError::BadName { name });
        }
        let tag = target_tag.unwrap_or("latest");
        let reference = format!("{HOST}/{name}:{tag}").parse::<ImageRef>()?;
        Ok((dir, reference))
    })())
}

/// Whether `dir` is an OCI image layout: an `oci-layout` file of version 1.x
/// and an `index.json`.
pub fn check(dir: &Path) -> Result<(), LayoutError> {
    let text =
        std::fs::read(dir.join("oci-layout")).map_err(|source| LayoutError::NoLayoutFile {
            dir: dir.to_path_buf(),
            source,
        })?;
    let layout: LayoutFile =
        serde_json::from_slice(&text).map_err(|source| LayoutError::BadLayoutFile {
            dir: dir.to_path_buf(),
            source,
        })?;
    if !layout.version.starts_with("1.") {
        return Err(LayoutError::Version {
            dir: dir.to_path_buf(),
            version: layout.version,
        });
    }
    if !dir.join("index.json").is_file() {
        return Err(LayoutError::NoIndex {
            dir: dir.to_path_buf(),
        });
    }
    Ok(())
}

impl Layouts {
    /// Reads the layout at `dir` as `reference` (a repository of [`HOST`] and a
    /// tag), after checking that it is one.
    pub fn add(&self, reference: &ImageRef, dir: &Path) -> Result<(), LayoutError> {
        check(dir)?;
        let tag = reference.tag().unwrap_or("latest").to_string();
        let mut map = self.0.write().expect("not poisoned");
        let dirs = map.entry(reference.repository().to_string()).or_default();
        match dirs.iter().find(|(t, _)| *t == tag) {
            Some((_, other)) if other != dir => Err(LayoutError::Clash {
                first: other.clone(),
                second: dir.to_path_buf(),
                reference: Box::new(reference.clone()),
            }),
            Some(_) => Ok(()),
            None => {
                dirs.push((tag, dir.to_path_buf()));
                Ok(())
            }
        }
    }

    /// The layouts of `repository`, with their tags.
    fn dirs(
        &self,
        repository: &str,
        target: &str,
        operation: &'static str,
    ) -> Result<Vec<(String, PathBuf)>, RegistryError> {
        self.0
            .read()
            .expect("not poisoned")
            .get(repository)
            .cloned()
            .ok_or_else(|| {
                request(
                    operation,
                    target.to_string(),
                    ErrorKind::NotFound,
                    "no local OCI layout is known by this name".into(),
                )
            })
    }

    /// Where the first layout of `repository` that holds `digest` keeps it.
    fn find(
        &self,
        repository: &str,
        digest: &Digest,
        target: &str,
        operation: &'static str,
    ) -> Result<Option<PathBuf>, RegistryError> {
        Ok(self
            .dirs(repository, target, operation)?
            .iter()
            // A Digest is sha256 and 64 hex digits: safe in a path.
            .map(|(_, dir)| dir.join("blobs").join("sha256").join(digest.hex()))
            .find(|p| p.exists()))
    }

    /// The descriptor `index.json` gives the layout's image: the one named
    /// `name` (`org.opencontainers.image.ref.name`), else the only one.
    fn lookup(
        dir: &Path,
        name: &str,
        target: &str,
        operation: &'static str,
    ) -> Result<manifest::Descriptor, RegistryError> {
        let fail = |kind, message: String| request(operation, target.to_string(), kind, message);
        let path = dir.join("index.json");
        let bytes = read_bounded(&path, MAX_INDEX_BYTES)
            .map_err(|e| fail(ErrorKind::Protocol, format!("{}: {e}", path.display())))?;
        let index: Index = serde_json::from_slice(&bytes)
            .map_err(|e| fail(ErrorKind::Protocol, format!("{}: {e}", path.display())))?;
        let named =
            |d: &&manifest::Descriptor| d.annotations.get(REF_NAME).is_some_and(|n| n == name);
        if let Some(d) = index.manifests.iter().find(named) {
            return Ok(d.clone());
        }
        match index.manifests.as_slice() {
            [only] => Ok(only.clone()),
            [] => Err(fail(
                ErrorKind::NotFound,
                format!("{} lists no image", path.display()),
            )),
            many => {
                let names: Vec<&str> = many
                    .iter()
                    .filter_map(|d| d.annotations.get(REF_NAME).map(String::as_str))
                    .collect();
                Err(fail(
                    ErrorKind::NotFound,
                    format!(
                        "{} lists {} images and none is named {name:?} (named: {}); keep one image in the layout (skopeo copy --all docker://IMAGE oci:DIR into an empty DIR)",
                        path.display(),
                        many.len(),
                        if names.is_empty() {
                            "none".to_string()
                        } else {
                            names.join(", ")
                        }
                    ),
                ))
            }
        }
    }

    /// A manifest by tag or digest, with its exact bytes, checked against its
    /// digest (and, by tag, against the size `index.json` gives it).
    pub fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
        target: &str,
    ) -> Result<RawManifest, RegistryError> {
        const OP: &str = "pull manifest";
        let fail = |kind, message: String| request(OP, target.to_string(), kind, message);
        let (digest, size, path) = match reference.parse::<Digest>() {
            Ok(d) => {
                let path = self.find(repository, &d, target, OP)?;
                (d, None, path)
            }
            Err(_) => {
                let dirs = self.dirs(repository, target, OP)?;
                let Some((_, dir)) = dirs.iter().find(|(t, _)| t == reference) else {
                    return Err(fail(
                        ErrorKind::NotFound,
                        "no local OCI layout is known by this tag".into(),
                    ));
                };
                let d = Self::lookup(dir, reference, target, OP)?;
                let path = dir.join("blobs").join("sha256").join(d.digest.hex());
                (d.digest, Some(d.size), Some(path))
            }
        };
        let Some(path) = path else {
            return Err(fail(
                ErrorKind::NotFound,
                format!("no layout of {repository} holds manifest {digest}"),
            ));
        };
        let bytes = match read_bounded(&path, manifest::MAX_MANIFEST_BYTES as u64) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(fail(
                    ErrorKind::NotFound,
                    format!("{} is missing", path.display()),
                ));
            }
            Err(e) => {
                return Err(fail(
                    ErrorKind::Protocol,
                    format!("{}: {e}", path.display()),
                ));
            }
        };
        let computed = Digest::of(&bytes);
        if computed != digest {
            return Err(fail(
                ErrorKind::Digest,
                format!("{} hashes to {computed}", path.display()),
            ));
        }
        if let Some(size) = size.filter(|s| *s != bytes.len() as u64) {
            return Err(fail(
                ErrorKind::Protocol,
                format!(
                    "{} is {} bytes, index.json says {size}",
                    path.display(),
                    bytes.len()
                ),
            ));
        }
        let parsed = manifest::parse(&bytes, None).map_err(|source| RegistryError::Manifest {
            target: target.to_string(),
            source,
        })?;
        Ok(RawManifest {
            bytes: Bytes::from(bytes),
            digest,
            media_type: parsed.media_type,
        })
    }

    /// Whether a layout of `repository` holds a blob (or manifest) of this digest.
    pub fn has(
        &self,
        repository: &str,
        digest: &Digest,
        target: &str,
    ) -> Result<bool, RegistryError> {
        Ok(self
            .find(repository, digest, target, "check blob")?
            .is_some())
    }

    /// Whether a layout of `repository` names an image `tag` in its `index.json`
    /// (a cosign `sha256-….sig` tag, when the layout was written with it).
    pub fn has_tag(
        &self,
        repository: &str,
        tag: &str,
        target: &str,
    ) -> Result<bool, RegistryError> {
        for (_, dir) in self.dirs(repository, target, "check tag")? {
            match Self::lookup(&dir, tag, target, "check tag") {
                Ok(d) if d.annotations.get(REF_NAME).is_some_and(|n| n == tag) => return Ok(true),
                Ok(_) => {}
                Err(e) if e.kind() == Some(ErrorKind::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// A blob's bytes; the stream ends with an error if they do not hash to
    /// `digest`. Only a regular file is read, and only as many bytes as it had
    /// when opened.
    pub async fn blob_stream(
        &self,
        repository: &str,
        digest: &Digest,
        target: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, RegistryError>>, RegistryError> {
        const OP: &str = "pull blob";
        let found = self.find(repository, digest, target, OP)?;
        let target = target.to_string();
        let fail = move |kind, message: String| request(OP, target.clone(), kind, message);
        let Some(path) = found else {
            return Err(fail(
                ErrorKind::NotFound,
                format!("no layout of {repository} holds blob {digest}"),
            ));
        };
        let opened = async {
            let file = tokio::fs::File::open(&path).await?;
            let meta = file.metadata().await?;
            if !meta.is_file() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not a regular file",
                ));
            }
            Ok((file, meta.len()))
        };
        let (file, len) = opened
            .await
            .map_err(|e| fail(ErrorKind::Protocol, format!("{}: {e}", path.display())))?;
        let shown = path.display().to_string();
        let expected = digest.clone();
        let read_fail = fail.clone();
        let bytes = crate::file_blocks(file.into_std().await, len);
        let stream =
            futures::stream::unfold((bytes, Some(Hasher::new())), move |(mut bytes, hasher)| {
                let (shown, expected, fail) = (shown.clone(), expected.clone(), read_fail.clone());
                async move {
                    let mut hasher = hasher?;
                    match bytes.next().await {
                        Some(Ok(chunk)) => {
                            hasher.update(&chunk);
                            Some((Ok(chunk), (bytes, Some(hasher))))
                        }
                        Some(Err(e)) => Some((
                            Err(fail(ErrorKind::Protocol, format!("{shown}: {e}"))),
                            (bytes, None),
                        )),
                        None => {
                            let got = hasher.finish();
                            (got != expected).then(|| {
                                (
                                    Err(fail(
                                        ErrorKind::Digest,
                                        format!("{shown} hashes to {got}, not {expected}"),
                                    )),
                                    (bytes, None),
                                )
                            })
                        }
                    }
                }
            });
        Ok(stream.boxed())
    }
}

/// The bytes of `path`, refused beyond `max`.
fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    /// A layout in a fresh directory holding `blobs`, with `index.json` listing
    /// `entries` (digest, size, ref.name).
    fn layout(blobs: &[&[u8]], entries: &[(&Digest, usize, Option<&str>)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        for b in blobs {
            std::fs::write(dir.path().join("blobs/sha256").join(Digest::of(b).hex()), b).unwrap();
        }
        let manifests: Vec<serde_json::Value> = entries
            .iter()
            .map(|(d, size, name)| {
                let mut e = serde_json::json!({
                    "mediaType": manifest::OCI_MANIFEST, "digest": d.as_str(), "size": size
                });
                if let Some(n) = name {
                    e["annotations"] = serde_json::json!({ REF_NAME: n });
                }
                e
            })
            .collect();
        std::fs::write(
            dir.path().join("index.json"),
            serde_json::json!({"schemaVersion": 2, "manifests": manifests}).to_string(),
        )
        .unwrap();
        dir
    }

    fn cat(tag: &str) -> ImageRef {
        format!("{HOST}/cat:{tag}").parse().unwrap()
    }

    fn image(layer: &[u8]) -> (Vec<u8>, Digest) {
        let config = b"{}";
        let m = serde_json::json!({
            "schemaVersion": 2, "mediaType": manifest::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": Digest::of(config).as_str(), "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": Digest::of(layer).as_str(), "size": layer.len()}]
        })
        .to_string()
        .into_bytes();
        let d = Digest::of(&m);
        (m, d)
    }

    #[tokio::test]
    async fn a_layout_serves_its_image_by_name_and_digest_and_checks_every_byte() {
        let (m, d) = image(b"layer");
        let dir = layout(&[&m, b"{}", b"layer"], &[(&d, m.len(), None)]);
        let l = Layouts::default();
        l.add(&cat("latest"), dir.path()).unwrap();
        let by_tag = l.get_manifest("cat", "latest", "t").unwrap();
        assert_eq!(
            (by_tag.digest.clone(), &by_tag.bytes[..]),
            (d.clone(), &m[..])
        );
        assert_eq!(l.get_manifest("cat", d.as_str(), "t").unwrap(), by_tag);
        let layer = Digest::of(b"layer");
        assert!(l.has("cat", &layer, "t").unwrap());
        assert!(!l.has("cat", &Digest::of(b"other"), "t").unwrap());
        let got: Vec<Bytes> = l
            .blob_stream("cat", &layer, "t")
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(got.concat(), b"layer");
        assert!(
            !l.has_tag("cat", "v1", "t").unwrap(),
            "an unnamed entry has no tag"
        );

        // A flipped byte in a blob: the stream ends with the digest error.
        std::fs::write(dir.path().join("blobs/sha256").join(layer.hex()), b"layeR").unwrap();
        let e = l
            .blob_stream("cat", &layer, "t")
            .await
            .unwrap()
            .try_collect::<Vec<Bytes>>()
            .await
            .unwrap_err();
        assert_eq!(e.kind(), Some(ErrorKind::Digest), "{e}");
        // A manifest whose bytes do not hash to their name, or of another size than index.json says.
        std::fs::write(
            dir.path().join("blobs/sha256").join(d.hex()),
            [&m[..], b" "].concat(),
        )
        .unwrap();
        let e = l.get_manifest("cat", d.as_str(), "t").unwrap_err();
        assert_eq!(e.kind(), Some(ErrorKind::Digest), "{e}");
        let missing = l
            .get_manifest("cat", Digest::of(b"x").as_str(), "t")
            .unwrap_err();
        assert_eq!(missing.kind(), Some(ErrorKind::NotFound), "{missing}");
        let unknown = l.get_manifest("other", "latest", "t").unwrap_err();
        assert_eq!(unknown.kind(), Some(ErrorKind::NotFound), "{unknown}");
    }

    #[test]
    fn of_several_images_the_one_named_is_read_and_none_named_is_an_error_listing_them() {
        let (a, da) = image(b"a");
        let (b, db) = image(b"b");
        let named = layout(
            &[&a, &b],
            &[(&da, a.len(), Some("v1")), (&db, b.len(), Some("latest"))],
        );
        let l = Layouts::default();
        l.add(&cat("latest"), named.path()).unwrap();
        assert_eq!(l.get_manifest("cat", "latest", "t").unwrap().digest, db);
        assert!(l.has_tag("cat", "v1", "t").unwrap());
        let unnamed = layout(
            &[&a, &b],
            &[(&da, a.len(), Some("v1")), (&db, b.len(), Some("v2"))],
        );
        let l = Layouts::default();
        l.add(&cat("latest"), unnamed.path()).unwrap();
        let e = l
            .get_manifest("cat", "latest", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lists 2 images") && e.contains("v1, v2"), "{e}");
        let wrong_size = layout(&[&a], &[(&da, a.len() + 1, None)]);
        let l = Layouts::default();
        l.add(&cat("latest"), wrong_size.path()).unwrap();
        let e = l
            .get_manifest("cat", "latest", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("index.json says"), "{e}");
    }

    #[test]
    fn what_is_not_a_layout_and_two_layouts_under_one_name_are_refused() {
        let l = Layouts::default();
        let empty = tempfile::tempdir().unwrap();
        let e = l.add(&cat("latest"), empty.path()).unwrap_err().to_string();
        assert!(
            e.contains("oci-layout") && e.contains("skopeo copy --all"),
            "{e}"
        );
        std::fs::write(
            empty.path().join("oci-layout"),
            r#"{"imageLayoutVersion":"2.0.0"}"#,
        )
        .unwrap();
        assert!(
            l.add(&cat("latest"), empty.path())
                .unwrap_err()
                .to_string()
                .contains("expected 1.x")
        );
        std::fs::write(
            empty.path().join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        assert!(
            l.add(&cat("latest"), empty.path())
                .unwrap_err()
                .to_string()
                .contains("index.json: missing")
        );
        let one = layout(&[], &[]);
        let two = layout(&[], &[]);
        l.add(&cat("latest"), one.path()).unwrap();
        l.add(&cat("latest"), one.path()).unwrap();
        let e = l.add(&cat("latest"), two.path()).unwrap_err().to_string();
        assert!(e.contains("targetCatalog"), "{e}");
        let e = l
            .get_manifest("cat", "latest", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lists no image"), "{e}");
    }

    /// Two layouts of one catalog name, each under its own tag (two OpenShift
    /// versions' catalogs): each is read by its tag, either by digest.
    #[test]
    fn one_name_holds_a_layout_per_tag() {
        let (a, da) = image(b"a");
        let (b, db) = image(b"b");
        let (one, two) = (
            layout(&[&a], &[(&da, a.len(), None)]),
            layout(&[&b], &[(&db, b.len(), None)]),
        );
        let l = Layouts::default();
        l.add(&cat("v4.16"), one.path()).unwrap();
        l.add(&cat("v4.17"), two.path()).unwrap();
        assert_eq!(l.get_manifest("cat", "v4.16", "t").unwrap().digest, da);
        assert_eq!(l.get_manifest("cat", "v4.17", "t").unwrap().digest, db);
        assert_eq!(l.get_manifest("cat", db.as_str(), "t").unwrap().digest, db);
        assert!(l.get_manifest("cat", "latest", "t").is_err());
    }

    #[test]
    fn a_catalog_is_named_as_oc_mirror_names_it_and_a_bad_name_says_what_to_do() {
        let named = |c: &str, target: Option<&str>, tag: Option<&str>| {
            catalog(c, target, tag)
                .unwrap()
                .map(|(dir, r)| (dir, r.to_string()))
        };
        let (dir, r) = named("oci:///srv/catalogs/redhat-operator-index/", None, None).unwrap();
        assert_eq!(dir, Path::new("/srv/catalogs/redhat-operator-index/"));
        assert_eq!(r, "oci-layout.invalid/redhat-operator-index:latest");
        let (_, r) = named("oci:///srv/x", Some("site/operators"), Some("v1")).unwrap();
        assert_eq!(r, "oci-layout.invalid/site/operators:v1");
        let (dir, _) = named("oci:rel/index", None, None).unwrap();
        assert!(dir.is_absolute() && dir.ends_with("rel/index"), "{dir:?}");
        assert!(
            named("oci:///srv/Index", None, None)
                .unwrap_err()
                .to_string()
                .contains("targetCatalog")
        );
        assert!(
            named("oci:///srv/index:v1", None, None)
                .unwrap_err()
                .to_string()
                .contains("oci:DIR:REFERENCE")
        );
        assert!(
            named("oci:///", None, None)
                .unwrap_err()
                .to_string()
                .contains("names no directory")
        );
        assert!(catalog("quay.io/a/index:v1", None, None).is_none());
    }
}
