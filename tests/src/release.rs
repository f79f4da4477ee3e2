//! Synthetic OpenShift release payloads in the real layout, and update graphs that
//! name them: a release image whose top layer holds
//! `release-manifests/image-references` (an ImageStream naming component images by
//! digest) and `release-manifests/release-metadata`, on a base layer like the
//! cluster-version-operator image it is built from.

use serde_json::{Value, json};

use crate::images::{Blob, Format, Image, ImageBuilder, files_layer};

/// A release image naming `components` (`(name, pull spec)`) as its payload.
pub fn release_image(
    version: &str,
    arch: &str,
    base: &Blob,
    components: &[(&str, String)],
) -> Image {
    let tags: Vec<Value> = components
        .iter()
        .map(|(name, image)| {
            json!({
                "name": name,
                "annotations": {"io.openshift.build.commit.id": "0123456789abcdef"},
                "from": {"kind": "DockerImage", "name": image},
                "generation": null,
                "importPolicy": {},
                "referencePolicy": {"type": ""}
            })
        })
        .collect();
    let references = json!({
        "kind": "ImageStream",
        "apiVersion": "image.openshift.io/v1",
        "metadata": {"name": version, "creationTimestamp": "2026-11-01T00:00:00Z"},
        "spec": {"lookupPolicy": {"local": false}, "tags": tags},
        "status": {"dockerImageRepository": ""}
    });
    let metadata = json!({
        "kind": "cincinnati-metadata-v0",
        "version": version,
        "previous": [],
        "metadata": {"url": format!("https://example.invalid/errata/{version}")}
    });
    let refs = serde_json::to_vec_pretty(&references).expect("json");
    let meta = serde_json::to_vec(&metadata).expect("json");
    let payload = files_layer(&[
        ("release-manifests/image-references", &refs),
        ("release-manifests/release-metadata", &meta),
    ]);
    ImageBuilder::new(Format::Docker)
        .arch(arch)
        .with_layer(base)
        .with_layer(&payload)
        .build()
}

/// An update graph document: `nodes` as (version, payload pull spec), `edges` as
/// pairs of indices, every node in `channel`.
pub fn graph(channel: &str, nodes: &[(&str, String)], edges: &[(usize, usize)]) -> Vec<u8> {
    let nodes: Vec<Value> = nodes
        .iter()
        .map(|(v, payload)| {
            json!({
                "version": v,
                "payload": payload,
                "metadata": {"io.openshift.upgrades.graph.release.channels": channel}
            })
        })
        .collect();
    let edges: Vec<[usize; 2]> = edges.iter().map(|&(a, b)| [a, b]).collect();
    serde_json::to_vec(
        &json!({"version": 1, "nodes": nodes, "edges": edges, "conditionalEdges": []}),
    )
    .expect("json")
}
