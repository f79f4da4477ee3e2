//! `--require-signatures`: every mirrored image must carry a valid cosign
//! signature by one of the given keys.
//!
//! What is verified is cosign's key-based "simple signing" format, the one
//! `cosign sign --key` has written since its first release: a `sha256-<hex>.sig`
//! image in the image's repository whose layers are the signed payloads (JSON
//! naming the image's manifest digest), each with its signature, base64, in the
//! layer annotation `dev.cosignproject.cosign/signature`. Keys are ECDSA P-256
//! public keys in PEM, as `cosign generate-key-pair` writes `cosign.pub`.
//!
//! Not verified, and so not accepted as a signature: keyless (Fulcio certificate)
//! signatures, Rekor transparency-log inclusion, the sigstore bundle format of
//! cosign 3 stored as an OCI referrer, and keys other than P-256 (RSA, Ed25519,
//! KMS). `docs/policy.md` says so to users. A maintained Rust crate for all of it
//! exists (`sigstore`), but it brings its own OCI client, TLS and TUF stacks for
//! what is here one ECDSA check with the `p256` crate the tree already has.

use std::path::{Path, PathBuf};

use airlock_config::ImageSpec;
use airlock_imageset::ImageKind;
use airlock_oci::digest::Digest;
use airlock_oci::manifest::Descriptor;
use airlock_registry::Pool;
use base64::Engine;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;

use crate::collect::Resolved;
use crate::error::Error;
use crate::payload::small_blob;

/// cosign's simple-signing layer media type.
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation that holds the signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

/// The keys signatures must be made with.
#[derive(Debug)]
pub struct Keys(Vec<(PathBuf, VerifyingKey)>);

impl Keys {
    /// Reads each key file; a file that is not a P-256 public key in PEM is an
    /// error naming it.
    pub fn load(paths: &[PathBuf]) -> Result<Self, Error> {
        let pems = paths
            .iter()
            .map(|path| {
                std::fs::read_to_string(path)
                    .map(|pem| (path.clone(), pem))
                    .map_err(|e| format!("{}: {e}", path.display()))
            })
            .collect::<Result<Vec<_>, String>>()
            .and_then(Self::from_pems)
            .map_err(|e| Error::Usage(format!("--require-signatures {e}")))?;
        Ok(pems)
    }

    /// Keys from PEM texts, each named by where it came from (a file, or the
    /// place in a policy that holds it).
    pub fn from_pems(pems: Vec<(PathBuf, String)>) -> Result<Self, String> {
        pems.into_iter()
            .map(|(name, pem)| {
                VerifyingKey::from_public_key_pem(&pem)
                    .map(|key| (name.clone(), key))
                    .map_err(|e| format!(
                        "{}: not an ECDSA P-256 public key in PEM ({e}); cosign keys from `cosign generate-key-pair` (cosign.pub) are supported",
                        name.display()
                    ))
            })
            .collect::<Result<_, String>>()
            .map(Keys)
    }

    /// The key file that verifies `signature` over `payload`, if any.
    fn verifying(&self, payload: &[u8], signature: &[u8]) -> Option<&Path> {
        let sig = Signature::from_der(signature)
            .or_else(|_| Signature::from_slice(signature))
            .ok()?;
        self.0
            .iter()
            .find(|(_, key)| key.verify(payload, &sig).is_ok())
            .map(|(path, _)| path.as_path())
    }
}

/// The simple-signing payload, as far as it is checked.
#[derive(serde::Deserialize)]
struct Payload {
    critical: Critical,
}

#[derive(serde::Deserialize)]
struct Critical {
    image: SignedImage,
    #[serde(rename = "type")]
    kind: String,
    identity: Option<SignedIdentity>,
}

#[derive(serde::Deserialize)]
struct SignedIdentity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

/// What a signature's signed identity (`critical.identity.docker-reference`,
/// `""` when absent) must satisfy; the error says why it does not.
pub type IdentityCheck<'a> = &'a (dyn Fn(&str) -> Result<(), String> + Sync);

/// Accepts any identity (`--require-signatures` checks keys and digests only).
pub fn any_identity(_: &str) -> Result<(), String> {
    Ok(())
}

#[derive(serde::Deserialize)]
struct SignedImage {
    #[serde(rename = "docker-manifest-digest")]
    digest: String,
}

/// Checks one signature layer; the error says why it does not count.
async fn check_layer(
    keys: &Keys,
    pool: &Pool,
    signature_image: &ImageSpec,
    layer: &Descriptor,
    subject: &Digest,
    identity: IdentityCheck<'_>,
) -> Result<PathBuf, String> {
    let Some(encoded) = layer.annotations.get(SIGNATURE_ANNOTATION) else {
        return Err(format!(
            "layer {} has no {SIGNATURE_ANNOTATION}",
            layer.digest
        ));
    };
    let src = &signature_image.source;
    let client = pool
        .client(src.registry())
        .await
        .map_err(|e| e.to_string())?;
    let payload = small_blob(&client, src.repository(), layer, "signature payload")
        .await
        .map_err(|e| e.to_string())?;
    verify_payload(keys, &payload, encoded, subject, identity)
        .map(Path::to_path_buf)
        .map_err(|e| format!("layer {}: {e}", layer.digest))
}

/// Whether `payload`, signed as `encoded` (base64), is a cosign signature of
/// `subject` by one of `keys`; returns the key file.
fn verify_payload<'k>(
    keys: &'k Keys,
    payload: &[u8],
    encoded: &str,
    subject: &Digest,
    identity: IdentityCheck<'_>,
) -> Result<&'k Path, String> {
    let signature = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|e| format!("signature is not base64: {e}"))?;
    let Some(key) = keys.verifying(payload, &signature) else {
        return Err("the signature is not valid for any of the keys".into());
    };
    let p: Payload = serde_json::from_slice(payload).map_err(|e| format!("payload: {e}"))?;
    if p.critical.kind != "cosign container image signature" {
        return Err(format!(
            "payload type {:?} is not a cosign container image signature",
            p.critical.kind
        ));
    }
    if p.critical.image.digest != subject.as_str() {
        return Err(format!(
            "signed by {} but for {}, not this image",
            key.display(),
            p.critical.image.digest
        ));
    }
    let signed = p
        .critical
        .identity
        .map(|i| i.docker_reference)
        .unwrap_or_default();
    identity(&signed).map_err(|e| format!("signed by {}, but {e}", key.display()))?;
    Ok(key)
}

/// The key file of a cosign signature of `top`, among the `found` referrers
/// (resolved as `found_resolved`), that one of `keys` verifies and whose signed
/// identity `identity` accepts; else why each candidate does not count (empty:
/// there is no signature at all).
pub async fn signature_of(
    keys: &Keys,
    pool: &Pool,
    top: &Digest,
    found: &[ImageSpec],
    found_resolved: &[std::sync::Arc<Resolved>],
    identity: IdentityCheck<'_>,
) -> Result<PathBuf, Vec<String>> {
    let signatures = found.iter().zip(found_resolved).filter(|(s, _)| {
        s.kind == ImageKind::Referrer
            && s.subject.as_ref() == Some(top)
            && s.source.tag().is_some_and(|t| t.ends_with(".sig"))
    });
    let mut problems = Vec::new();
    for (sig, tree) in signatures {
        for m in &tree.manifests {
            let Ok(parsed) = m.parse() else { continue };
            for layer in parsed.blobs().skip(1) {
                if layer.media_type != SIMPLE_SIGNING {
                    continue;
                }
                match check_layer(keys, pool, sig, layer, top, identity).await {
                    Ok(key) => return Ok(key),
                    Err(p) => problems.push(p),
                }
            }
        }
    }
    Err(problems)
}

/// Refuses unless each of `images` (resolved as `resolved`) has a signature, among
/// the `found` referrers (resolved as `found_resolved`), that one of `keys`
/// verifies for its top manifest. All unsigned images are named at once.
pub async fn require(
    keys: &Keys,
    pool: &Pool,
    images: &[ImageSpec],
    resolved: &[std::sync::Arc<Resolved>],
    found: &[ImageSpec],
    found_resolved: &[std::sync::Arc<Resolved>],
) -> Result<(), Error> {
    let mut refused = Vec::new();
    for (image, r) in images.iter().zip(resolved) {
        match signature_of(keys, pool, &r.top, found, found_resolved, &any_identity).await {
            Ok(key) => {
                tracing::info!(image = %image.name, digest = %r.top, key = %key.display(), "cosign signature verified")
            }
            Err(problems) if problems.is_empty() => refused.push(format!(
                "{} ({}): no cosign signature ({}.sig)",
                image.name,
                r.top,
                r.top.tag_form()
            )),
            Err(problems) => refused.push(format!(
                "{} ({}): {}",
                image.name,
                r.top,
                problems.join("; ")
            )),
        }
    }
    if refused.is_empty() {
        return Ok(());
    }
    Err(Error::Unsigned(refused))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real cosign signature in the fixtures (oc-mirror's test data): its
    /// manifest, payload, and the public key that its Rekor entry records.
    fn real_signature() -> (String, Vec<u8>, String, Digest) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(
            "../fixtures/real/oc-mirror/cosign/sha256-02f29c270f30416a266571383098d7b98a49488723087fd917128045bcd1ca75.sig",
        );
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
        let blob = |d: &str| {
            std::fs::read(
                dir.join("blobs/sha256")
                    .join(d.trim_start_matches("sha256:")),
            )
            .unwrap()
        };
        let manifest: serde_json::Value =
            serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().unwrap()))
                .unwrap();
        let layer = &manifest["layers"][0];
        assert_eq!(layer["mediaType"], SIMPLE_SIGNING);
        let annotations = &layer["annotations"];
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.decode(s).unwrap();
        let bundle: serde_json::Value =
            serde_json::from_str(annotations["dev.sigstore.cosign/bundle"].as_str().unwrap())
                .unwrap();
        let entry: serde_json::Value =
            serde_json::from_slice(&b64(bundle["Payload"]["body"].as_str().unwrap())).unwrap();
        let pem = String::from_utf8(b64(entry["spec"]["signature"]["publicKey"]["content"]
            .as_str()
            .unwrap()))
        .unwrap();
        (
            annotations[SIGNATURE_ANNOTATION]
                .as_str()
                .unwrap()
                .to_string(),
            blob(layer["digest"].as_str().unwrap()),
            pem,
            "sha256:02f29c270f30416a266571383098d7b98a49488723087fd917128045bcd1ca75"
                .parse()
                .unwrap(),
        )
    }

    #[test]
    fn verifies_a_real_cosign_signature_and_refuses_any_change() {
        let (signature, payload, pem, subject) = real_signature();
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("cosign.pub");
        std::fs::write(&key, pem).unwrap();
        let keys = Keys::load(std::slice::from_ref(&key)).unwrap();
        assert_eq!(
            verify_payload(&keys, &payload, &signature, &subject, &any_identity).unwrap(),
            key
        );
        let other: Digest = Digest::of(b"another image");
        let e = verify_payload(&keys, &payload, &signature, &other, &any_identity).unwrap_err();
        assert!(e.contains("not this image"), "{e}");
        for i in [0, payload.len() / 2, payload.len() - 1] {
            let mut changed = payload.clone();
            changed[i] ^= 1;
            let e =
                verify_payload(&keys, &changed, &signature, &subject, &any_identity).unwrap_err();
            assert!(e.contains("not valid for any of the keys"), "byte {i}: {e}");
        }
        let e =
            verify_payload(&keys, &payload, "not base64!", &subject, &any_identity).unwrap_err();
        assert!(e.contains("not base64"), "{e}");
    }
}
