//! Signatures and referrers as the tools that make them lay them out: cosign's
//! `sha256-<digest>.sig` signature images (simple signing, ECDSA P-256 keys, as
//! `cosign generate-key-pair` makes), and OCI 1.1 referrers with the referrers tag
//! index that clients such as oras maintain on registries without the referrers API.

use base64::Engine;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey, LineEnding};
use rand08::SeedableRng;
use serde_json::{Value, json};

use crate::images::{Blob, Image, PushClient};

/// cosign's simple-signing layer media type.
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation holding the base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A cosign key pair.
pub struct CosignKey(SigningKey);

impl CosignKey {
    /// A key made from `seed`, so runs are reproducible.
    pub fn from_seed(seed: u64) -> Self {
        CosignKey(SigningKey::random(
            &mut rand08::rngs::StdRng::seed_from_u64(seed),
        ))
    }

    /// The public key as `cosign.pub` holds it (PEM, SubjectPublicKeyInfo).
    pub fn public_pem(&self) -> String {
        self.0
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("a P-256 key encodes")
    }

    /// The signature image cosign pushes as `sha256-<hex>.sig` for the image
    /// `docker_reference` (repository, no tag) at `digest`.
    pub fn signature_image(&self, docker_reference: &str, digest: &str) -> Image {
        let payload = serde_json::to_vec(&json!({
            "critical": {
                "identity": {"docker-reference": docker_reference},
                "image": {"docker-manifest-digest": digest},
                "type": "cosign container image signature",
            },
            "optional": null,
        }))
        .expect("json");
        let signature: Signature = self.0.sign(&payload);
        let encoded = base64::engine::general_purpose::STANDARD.encode(signature.to_der());
        signature_image_with(payload, &encoded)
    }
}

/// A cosign signature image with `payload` and `signature` as given (for forged ones).
pub fn signature_image_with(payload: Vec<u8>, signature: &str) -> Image {
    let layer = Blob::new(payload, None);
    let config = json!({
        "architecture": "", "os": "", "config": {},
        "created": "0001-01-01T00:00:00Z",
        "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
    });
    let config = Blob::new(serde_json::to_vec(&config).expect("json"), None);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": config.bytes.len(), "digest": config.digest},
        "layers": [{
            "mediaType": SIMPLE_SIGNING,
            "size": layer.bytes.len(),
            "digest": layer.digest,
            "annotations": {SIGNATURE_ANNOTATION: signature},
        }],
    });
    artifact(manifest, vec![config, layer])
}

/// An OCI 1.1 artifact of `artifact_type` holding `content`, about `subject`.
pub fn referrer(subject: &Image, artifact_type: &str, content: &[u8]) -> Image {
    let empty = Blob::new(b"{}".to_vec(), None);
    let layer = Blob::new(content.to_vec(), None);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2, "digest": empty.digest},
        "layers": [{"mediaType": artifact_type, "size": layer.bytes.len(), "digest": layer.digest}],
        "subject": {"mediaType": subject.media_type, "size": subject.manifest.len(), "digest": subject.digest},
        "annotations": {"org.opencontainers.image.created": "2026-11-25T00:00:00Z"},
    });
    artifact(manifest, vec![empty, layer])
}

/// The referrers tag index (`sha256-<hex>` of the subject) listing `referrers`, as a
/// client writes it on a registry without the referrers API.
pub fn referrers_index(referrers: &[&Image]) -> Image {
    let entries: Vec<Value> = referrers
        .iter()
        .map(|r| {
            let m: Value = serde_json::from_slice(&r.manifest).expect("json");
            json!({"mediaType": r.media_type, "digest": r.digest, "size": r.manifest.len(), "artifactType": m["artifactType"]})
        })
        .collect();
    let manifest = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries});
    let bytes = serde_json::to_vec(&manifest).expect("json");
    Image {
        digest: crate::images::digest_of(&bytes),
        manifest: bytes,
        media_type: OCI_INDEX.into(),
        blobs: Vec::new(),
        children: Vec::new(),
    }
}

/// The cosign tag of a signature, attestation or SBOM of `digest`:
/// `sha256-<hex>.<suffix>` (`sha256-<hex>` alone is the referrers tag).
pub fn cosign_tag(digest: &str, suffix: &str) -> String {
    format!("{}.{suffix}", digest.replace(':', "-"))
}

/// What [`attach`] pushed next to an image.
pub struct Attached {
    /// The cosign signature of the image (its index).
    pub sig: Image,
    /// The cosign signature of its first child (`cosign sign --recursive`).
    pub child_sig: Image,
    /// An SBOM as an OCI 1.1 referrer of the image.
    pub sbom: Image,
    /// The referrers tag index listing the SBOM.
    pub index: Image,
}

/// Signs the multi-platform `image` (already pushed to `repo` of the registry at
/// `addr`) with `key` as `cosign sign --recursive` does, and attaches an SBOM as
/// an OCI referrer listed in the referrers tag index, as a client does on a
/// registry without the referrers API (docker-registry 2.8).
pub fn attach(
    client: &PushClient,
    addr: &str,
    repo: &str,
    image: &Image,
    key: &CosignKey,
) -> Attached {
    let name = format!("{addr}/{repo}");
    let sig = key.signature_image(&name, &image.digest);
    sig.push(client, repo, Some(&cosign_tag(&image.digest, "sig")))
        .expect("push the signature");
    let child = &image.children[0];
    let child_sig = key.signature_image(&name, &child.digest);
    child_sig
        .push(client, repo, Some(&cosign_tag(&child.digest, "sig")))
        .expect("push the child's signature");
    let sbom = referrer(
        image,
        "application/spdx+json",
        br#"{"spdxVersion":"SPDX-2.3"}"#,
    );
    sbom.push(client, repo, None).expect("push the SBOM");
    let index = referrers_index(&[&sbom]);
    client
        .push_manifest(
            repo,
            &image.digest.replace(':', "-"),
            &index.manifest,
            &index.media_type,
        )
        .expect("push the referrers tag");
    Attached {
        sig,
        child_sig,
        sbom,
        index,
    }
}

fn artifact(manifest: Value, blobs: Vec<Blob>) -> Image {
    let bytes = serde_json::to_vec(&manifest).expect("json");
    Image {
        digest: crate::images::digest_of(&bytes),
        manifest: bytes,
        media_type: OCI_MANIFEST.into(),
        blobs,
        children: Vec::new(),
    }
}
