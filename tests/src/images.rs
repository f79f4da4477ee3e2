//! Test images in real formats, and an independent minimal client that pushes them.
//!
//! Layers are real gzip-compressed tar archives of random (incompressible) bytes,
//! seeded so a test can rebuild the same layer to share it between images. Manifests
//! can be pretty-printed, so that any re-serialisation by the code under test changes
//! a digest and fails the byte-for-byte comparison. The pusher speaks the distribution
//! API directly with plain HTTP requests, sharing no code with Airlock's client.

use std::io::Write;

use anyhow::{Context, Result, bail};
use rand::{RngCore, SeedableRng};
use serde_json::{Value, json};

use crate::registry::Registry;

/// sha256 digest string of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Manifest flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Docker v2 schema 2 (and Docker manifest lists).
    Docker,
    /// OCI image manifest (and OCI indexes).
    Oci,
}

impl Format {
    fn manifest_type(self) -> &'static str {
        match self {
            Format::Docker => "application/vnd.docker.distribution.manifest.v2+json",
            Format::Oci => "application/vnd.oci.image.manifest.v1+json",
        }
    }
    fn index_type(self) -> &'static str {
        match self {
            Format::Docker => "application/vnd.docker.distribution.manifest.list.v2+json",
            Format::Oci => "application/vnd.oci.image.index.v1+json",
        }
    }
    fn config_type(self) -> &'static str {
        match self {
            Format::Docker => "application/vnd.docker.container.image.v1+json",
            Format::Oci => "application/vnd.oci.image.config.v1+json",
        }
    }
    fn layer_type(self) -> &'static str {
        match self {
            Format::Docker => "application/vnd.docker.image.rootfs.diff.tar.gzip",
            Format::Oci => "application/vnd.oci.image.layer.v1.tar+gzip",
        }
    }
}

/// A blob with its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// Digest.
    pub digest: String,
    /// Bytes.
    pub bytes: Vec<u8>,
    /// Digest of the uncompressed tar, for layers (the config's diff_id).
    pub diff_id: Option<String>,
}

impl Blob {
    /// A blob of `bytes`; `diff_id` for layers.
    pub fn new(bytes: Vec<u8>, diff_id: Option<String>) -> Self {
        Blob {
            digest: digest_of(&bytes),
            bytes,
            diff_id,
        }
    }
}

/// A gzip-compressed tar layer with one file of `size` random bytes from `seed`.
pub fn layer(seed: u64, size: usize) -> Blob {
    let mut content = vec![0u8; size];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut content);
    files_layer(&[(&format!("data/file-{seed}.bin"), &content)])
}

/// A gzip-compressed tar layer holding `files` (path, bytes), in order.
pub fn files_layer(files: &[(&str, &[u8])]) -> Blob {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut h = tar::Header::new_ustar();
        h.set_path(path).expect("short path");
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        tar.append(&h, *content).expect("in-memory tar");
    }
    let raw = tar.into_inner().expect("in-memory tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).expect("in-memory gzip");
    let compressed = gz.finish().expect("in-memory gzip");
    Blob::new(compressed, Some(digest_of(&raw)))
}

/// A built image (or index), with everything needed to push it.
#[derive(Debug, Clone)]
pub struct Image {
    /// The manifest bytes, as pushed.
    pub manifest: Vec<u8>,
    /// Its media type.
    pub media_type: String,
    /// Its digest.
    pub digest: String,
    /// Config and layers (empty for an index).
    pub blobs: Vec<Blob>,
    /// Child images (for an index).
    pub children: Vec<Image>,
}

fn encode(value: &Value, pretty: bool) -> Vec<u8> {
    if pretty {
        let mut out = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"   ");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        serde::Serialize::serialize(value, &mut ser).expect("json");
        out
    } else {
        serde_json::to_vec(value).expect("json")
    }
}

/// Builds an image manifest.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    format: Format,
    arch: String,
    layers: Vec<Blob>,
    pretty: bool,
    annotations: Option<Value>,
    labels: Option<Value>,
}

impl ImageBuilder {
    /// An image of `format` for linux/amd64 with no layers yet.
    pub fn new(format: Format) -> Self {
        ImageBuilder {
            format,
            arch: "amd64".into(),
            layers: Vec::new(),
            pretty: false,
            annotations: None,
            labels: None,
        }
    }

    /// The architecture.
    pub fn arch(mut self, arch: &str) -> Self {
        self.arch = arch.into();
        self
    }

    /// Adds a new random layer.
    pub fn layer(mut self, seed: u64, size: usize) -> Self {
        self.layers.push(layer(seed, size));
        self
    }

    /// Adds an existing layer (shared with another image).
    pub fn with_layer(mut self, blob: &Blob) -> Self {
        self.layers.push(blob.clone());
        self
    }

    /// Pretty-prints the manifest (3-space indentation, as Docker does).
    pub fn pretty(mut self) -> Self {
        self.pretty = true;
        self
    }

    /// Manifest annotations (OCI).
    pub fn annotations(mut self, a: Value) -> Self {
        self.annotations = Some(a);
        self
    }

    /// Config labels (`config.Labels`).
    pub fn labels(mut self, l: Value) -> Self {
        self.labels = Some(l);
        self
    }

    /// The image.
    pub fn build(self) -> Image {
        let diff_ids: Vec<&str> = self
            .layers
            .iter()
            .filter_map(|l| l.diff_id.as_deref())
            .collect();
        let mut config = json!({
            "architecture": self.arch,
            "os": "linux",
            "config": {"Env": ["PATH=/usr/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        if let Some(l) = self.labels {
            config["config"]["Labels"] = l;
        }
        let config = Blob::new(serde_json::to_vec(&config).expect("json"), None);
        let layers: Vec<Value> = self
            .layers
            .iter()
            .map(|l| json!({"mediaType": self.format.layer_type(), "digest": l.digest, "size": l.bytes.len()}))
            .collect();
        let mut m = json!({
            "schemaVersion": 2,
            "mediaType": self.format.manifest_type(),
            "config": {"mediaType": self.format.config_type(), "digest": config.digest, "size": config.bytes.len()},
            "layers": layers,
        });
        if let Some(a) = self.annotations {
            m["annotations"] = a;
        }
        let manifest = encode(&m, self.pretty);
        let mut blobs = vec![config];
        blobs.extend(self.layers);
        Image {
            digest: digest_of(&manifest),
            manifest,
            media_type: self.format.manifest_type().into(),
            blobs,
            children: Vec::new(),
        }
    }
}

/// A multi-platform index of `children` (their architecture taken from their configs).
pub fn index(format: Format, children: Vec<Image>, pretty: bool) -> Image {
    let entries: Vec<Value> = children
        .iter()
        .map(|c| {
            let config: Value = serde_json::from_slice(&c.blobs[0].bytes).expect("config json");
            json!({
                "mediaType": c.media_type,
                "digest": c.digest,
                "size": c.manifest.len(),
                "platform": {"architecture": config["architecture"], "os": config["os"]},
            })
        })
        .collect();
    let m = json!({"schemaVersion": 2, "mediaType": format.index_type(), "manifests": entries});
    let manifest = encode(&m, pretty);
    Image {
        digest: digest_of(&manifest),
        manifest,
        media_type: format.index_type().into(),
        blobs: Vec::new(),
        children,
    }
}

/// A two-platform index (linux/amd64 and linux/arm64) of `format`: an OCI index of
/// OCI manifests, or a Docker manifest list of Docker v2s2 manifests — never mixed,
/// as real registries serve them. Each child is a full image with one layer of
/// `layer_bytes` (seeds `seed` and `seed + 1`); `pretty` applies to every manifest.
pub fn two_platform(format: Format, seed: u64, layer_bytes: usize, pretty: bool) -> Image {
    let child = |arch: &str, seed: u64| {
        let b = ImageBuilder::new(format)
            .arch(arch)
            .layer(seed, layer_bytes);
        if pretty { b.pretty() } else { b }.build()
    };
    index(
        format,
        vec![child("amd64", seed), child("arm64", seed + 1)],
        pretty,
    )
}

/// The bytes a registry stores for `images`: every distinct blob (config or layer,
/// of the images and their children) counted once, manifests not included. This is
/// what a full copy of the images must move at least once.
pub fn distinct_blob_bytes<'a>(images: impl IntoIterator<Item = &'a Image>) -> u64 {
    let mut seen = std::collections::BTreeSet::new();
    images
        .into_iter()
        .flat_map(Image::all_blobs)
        .filter(|b| seen.insert(b.digest.clone()))
        .map(|b| b.bytes.len() as u64)
        .sum()
}

impl Image {
    /// The config blob of an image manifest (`None` for an index).
    pub fn config_blob(&self) -> Option<&Blob> {
        self.blobs.first()
    }

    /// The layers of an image manifest, in order (empty for an index).
    pub fn layer_blobs(&self) -> &[Blob] {
        self.blobs.get(1..).unwrap_or_default()
    }

    /// Every distinct blob of the image and its children.
    pub fn all_blobs(&self) -> Vec<&Blob> {
        let mut out: Vec<&Blob> = Vec::new();
        for b in self
            .blobs
            .iter()
            .chain(self.children.iter().flat_map(|c| c.all_blobs()))
        {
            if !out.iter().any(|o| o.digest == b.digest) {
                out.push(b);
            }
        }
        out
    }

    /// Pushes blobs, children by digest, then this manifest by `tag` (or by digest).
    pub fn push(&self, client: &PushClient, repo: &str, tag: Option<&str>) -> Result<()> {
        for b in &self.blobs {
            client.push_blob(repo, b)?;
        }
        for c in &self.children {
            c.push(client, repo, None)?;
        }
        client.push_manifest(
            repo,
            tag.unwrap_or(&self.digest),
            &self.manifest,
            &self.media_type,
        )
    }
}

/// A minimal distribution-API client for seeding registries.
pub struct PushClient {
    base: String,
    client: reqwest::blocking::Client,
    credentials: Option<(String, String)>,
}

impl PushClient {
    /// A client for `registry`, with its CA and credentials.
    pub fn new(registry: &Registry) -> Result<Self> {
        Ok(PushClient {
            base: registry.url(),
            client: registry.http_client()?,
            credentials: registry
                .credentials()
                .map(|(u, p)| (u.to_string(), p.to_string())),
        })
    }

    fn auth(&self, r: reqwest::blocking::RequestBuilder) -> reqwest::blocking::RequestBuilder {
        match &self.credentials {
            Some((u, p)) => r.basic_auth(u, Some(p)),
            None => r,
        }
    }

    /// Uploads a blob unless the repository has it.
    pub fn push_blob(&self, repo: &str, blob: &Blob) -> Result<()> {
        let head = self
            .auth(
                self.client
                    .head(format!("{}/v2/{repo}/blobs/{}", self.base, blob.digest)),
            )
            .send()?;
        if head.status().is_success() {
            return Ok(());
        }
        self.upload_blob(repo, blob)
    }

    /// Uploads a blob without asking first: a POST that opens the upload, a PUT
    /// with the bytes and the digest.
    pub fn upload_blob(&self, repo: &str, blob: &Blob) -> Result<()> {
        let resp = self
            .auth(
                self.client
                    .post(format!("{}/v2/{repo}/blobs/uploads/", self.base)),
            )
            .send()?;
        if resp.status() != 202 {
            bail!("POST upload {repo}: {}", resp.status());
        }
        let location = resp
            .headers()
            .get("location")
            .context("upload without Location")?
            .to_str()?
            .to_string();
        let location = if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            location
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let resp = self
            .auth(
                self.client
                    .put(format!("{location}{sep}digest={}", blob.digest)),
            )
            .header("Content-Type", "application/octet-stream")
            .body(blob.bytes.clone())
            .send()?;
        if resp.status() != 201 {
            bail!(
                "PUT blob {repo}@{}: {} {}",
                blob.digest,
                resp.status(),
                resp.text().unwrap_or_default()
            );
        }
        Ok(())
    }

    /// Puts manifest bytes under `reference` (tag or digest).
    pub fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<()> {
        let resp = self
            .auth(
                self.client
                    .put(format!("{}/v2/{repo}/manifests/{reference}", self.base)),
            )
            .header("Content-Type", media_type)
            .body(bytes.to_vec())
            .send()?;
        if resp.status() != 201 {
            bail!(
                "PUT manifest {repo}:{reference}: {} {}",
                resp.status(),
                resp.text().unwrap_or_default()
            );
        }
        Ok(())
    }

    /// Mounts blob `digest` of repository `from` into `repo` (cross-repository
    /// mount), so that seeding many repositories with one base layer uploads it
    /// once. Fails if the registry declines.
    pub fn mount_blob(&self, repo: &str, from: &str, digest: &str) -> Result<()> {
        let resp = self
            .auth(self.client.post(format!(
                "{}/v2/{repo}/blobs/uploads/?mount={digest}&from={from}",
                self.base
            )))
            .send()?;
        if resp.status() != 201 {
            bail!("mount {digest} from {from} into {repo}: {}", resp.status());
        }
        Ok(())
    }

    /// Deletes a blob from a repository (the registry must allow deletes).
    pub fn delete_blob(&self, repo: &str, digest: &str) -> Result<()> {
        let resp = self
            .auth(
                self.client
                    .delete(format!("{}/v2/{repo}/blobs/{digest}", self.base)),
            )
            .send()?;
        if !resp.status().is_success() {
            bail!("DELETE blob {repo}@{digest}: {}", resp.status());
        }
        Ok(())
    }
}
