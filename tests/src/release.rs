//! Synthetic OpenShift release payloads in the real layout, and update graphs that
//! name them: a release image whose top layer holds
//! `release-manifests/image-references` (an ImageStream naming component images by
//! digest) and `release-manifests/release-metadata`, on a base layer like the
//! cluster-version-operator image it is built from.

use serde_json::{Value, json};

use crate::images::{Blob, Format, Image, ImageBuilder, files_layer};

/// A release image naming `components` (`(name, pull spec)`) as its payload,
/// with `files` (`(path under release-manifests/, bytes)`) beside its two files.
pub fn release_image(
    version: &str,
    arch: &str,
    base: &Blob,
    components: &[(&str, String)],
    files: &[(&str, &[u8])],
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
    let paths: Vec<String> = files
        .iter()
        .map(|(p, _)| format!("release-manifests/{p}"))
        .collect();
    let mut entries: Vec<(&str, &[u8])> = vec![
        ("release-manifests/image-references", &refs),
        ("release-manifests/release-metadata", &meta),
    ];
    entries.extend(paths.iter().zip(files).map(|(p, (_, b))| (p.as_str(), *b)));
    let payload = files_layer(&entries);
    ImageBuilder::new(Format::Docker)
        .arch(arch)
        .with_layer(base)
        .with_layer(&payload)
        .build()
}

/// `0000_50_installer_coreos-bootimages.yaml` as the installer ships it in a
/// payload: a ConfigMap whose `data.stream` JSON names, for each `(architecture
/// key, digest-ref)`, a KubeVirt container image, beside other clouds' images.
pub fn coreos_bootimages(kubevirt: &[(&str, String)]) -> Vec<u8> {
    let mut archs = serde_json::Map::new();
    for key in ["aarch64", "ppc64le", "s390x", "x86_64"] {
        let mut images = json!({"gcp": {"release": "415-92-0", "project": "rhcos-cloud", "name": format!("rhcos-415-92-gcp-{key}")}});
        if let Some((_, r)) = kubevirt.iter().find(|(k, _)| *k == key) {
            let repo = r.split('@').next().unwrap_or_default();
            images["kubevirt"] = json!({"release": "415.92.0", "image": repo, "digest-ref": r});
        }
        archs.insert(key.into(), json!({"artifacts": {}, "images": images}));
    }
    let stream = json!({
        "stream": "rhcos-4.15",
        "metadata": {"last-modified": "2026-11-01T00:00:00Z", "generator": "plume cosa2stream 8d8e5e7"},
        "architectures": archs,
    });
    let stream = serde_json::to_string_pretty(&stream).expect("json");
    let indented: String = stream.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: coreos-bootimages\n  namespace: openshift-machine-config-operator\n  annotations:\n    include.release.openshift.io/self-managed-high-availability: \"true\"\ndata:\n  releaseVersion: 0.0.1-snapshot\n  stream: |\n{indented}"
    )
    .into_bytes()
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

/// A release signing key, standing in for Red Hat's: signs "atomic container
/// signature" documents the way Red Hat's signature store serves them (a compressed
/// OpenPGP message with a one-pass signature).
pub struct ReleaseSigner {
    key: pgp::composed::SignedSecretKey,
}

impl ReleaseSigner {
    /// A fresh Ed25519 key.
    pub fn new() -> Self {
        use pgp::composed::{KeyType, SecretKeyParamsBuilder};
        let params = SecretKeyParamsBuilder::default()
            .key_type(KeyType::Ed25519)
            .can_certify(true)
            .can_sign(true)
            .primary_user_id("Airlock test release key <test@example.invalid>".into())
            .build()
            .expect("key parameters");
        let key = params
            .generate(rand08::thread_rng())
            .expect("key generation");
        ReleaseSigner { key }
    }

    /// The public key, ASCII-armoured.
    pub fn public_key(&self) -> String {
        self.key
            .to_public_key()
            .to_armored_string(Default::default())
            .expect("armour")
    }

    /// The signature of the image `digest`, as the store serves it.
    pub fn sign(&self, digest: &str, reference: &str) -> Vec<u8> {
        let doc = json!({
            "critical": {
                "image": {"docker-manifest-digest": digest},
                "type": "atomic container signature",
                "identity": {"docker-reference": reference}
            },
            "optional": {"creator": "Airlock tests"}
        });
        let mut builder =
            pgp::composed::MessageBuilder::from_bytes("", serde_json::to_vec(&doc).expect("json"));
        builder
            .compression(pgp::types::CompressionAlgorithm::ZLIB)
            .sign(
                &self.key.primary_key,
                pgp::types::Password::empty(),
                pgp::crypto::hash::HashAlgorithm::Sha256,
            );
        builder
            .to_vec(rand08::thread_rng())
            .expect("signed message")
    }
}

impl Default for ReleaseSigner {
    fn default() -> Self {
        Self::new()
    }
}
