//! A chart as the OCI artifact `helm push` makes: an image manifest whose config
//! is the chart's metadata (`application/vnd.cncf.helm.config.v1+json`) and whose
//! one layer is the packaged chart, its bytes unchanged
//! (`application/vnd.cncf.helm.chart.content.v1.tar+gzip`). `helm pull
//! oci://HOST/charts/NAME --version V` reads exactly that.
//!
//! The manifest is made from the chart alone (no timestamps), so the same chart
//! gives the same digest in every imageset and is not shipped twice.

use airlock_imageset::{BlobRecord, ImageKind, ImageRecord};
use airlock_oci::digest::Digest;
use airlock_oci::manifest::OCI_MANIFEST;
use airlock_registry::RawManifest;
use bytes::Bytes;
use serde_json::json;

use super::source::{CHART_MEDIA_TYPE, CONFIG_MEDIA_TYPE, Fetched, Origin, host_port};
use crate::derive::Derived;

/// The artifact of a chart from a repository or a local file, published to
/// `target` (`charts/NAME`, checked) with tag `tag`.
pub fn make(f: &Fetched, target: String, tag: String) -> Derived {
    let meta = &f.chart.metadata;
    // Where the chart came from, as an image name: the repository's host for a
    // chart served over HTTP, `localhost` for a local one. It is what the record
    // and the imageset's listing show; the site publishes to `target`.
    let host = match &f.origin {
        Origin::Http(url) => reqwest::Url::parse(url)
            .ok()
            .and_then(|u| host_port(&u))
            .filter(|h| h.contains('.') || h.contains(':') || h == "localhost")
            .unwrap_or_else(|| "localhost".into()),
        Origin::Local(_) | Origin::Oci(_) => "localhost".into(),
    };
    let repository = format!("{}/{target}", host.to_ascii_lowercase());
    let config = Bytes::from(serde_json::to_vec(&f.chart.chart_yaml).expect("JSON serialises"));
    let config_digest = Digest::of(&config);
    let layer_digest = Digest::of(&f.archive);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest.as_str(), "size": config.len()},
        "layers": [{"mediaType": CHART_MEDIA_TYPE, "digest": layer_digest.as_str(), "size": f.archive.len()}],
        "annotations": {
            "org.opencontainers.image.title": meta.name,
            "org.opencontainers.image.version": meta.version,
        },
    });
    let manifest = RawManifest::from_bytes(
        Bytes::from(serde_json::to_vec(&manifest).expect("JSON serialises")),
        OCI_MANIFEST.to_string(),
    );
    let blob = |digest: &Digest, size: usize| BlobRecord {
        digest: digest.clone(),
        size: size as u64,
        media_type: None,
        repository: repository.clone(),
        parts: Vec::new(),
    };
    Derived {
        image: ImageRecord {
            source: format!("{repository}:{tag}"),
            repository: repository.clone(),
            tag: Some(tag),
            by_digest: false,
            digest: manifest.digest.clone(),
            target_repository: Some(target),
            kind: ImageKind::Chart,
            subject: None,
            catalog_source: None,
            platforms: Vec::new(),
        },
        blobs: vec![
            (blob(&config_digest, config.len()), Some(config)),
            (
                blob(&layer_digest, f.archive.len()),
                Some(f.archive.clone()),
            ),
        ],
        manifests: vec![manifest],
    }
}
