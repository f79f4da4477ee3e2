//! OpenShift release signatures: fetched from Red Hat's signature store, verified
//! against the release keys, carried in the imageset for the cluster's
//! cluster-version operator.
//!
//! A cluster refuses to update to a release whose signature it cannot find; behind
//! an air gap it finds them only in a `ConfigMap` that the mirror tool writes. So
//! the signature of every mirrored release is fetched at `create`, checked here
//! (a forged or stale signature found only at update time would cost a transfer),
//! and written as that `ConfigMap` on the far side.
//!
//! The store serves `<base>/sha256=<hex>/signature-1`: an OpenPGP message (usually
//! compressed) holding one literal packet, the "atomic container signature" JSON
//! that names the release by manifest digest, and one signature packet over it.
//! Red Hat signed with version 3 signature packets until 2023 and version 4 since;
//! both are verified (see [`verify`]).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_oci::digest::Digest;
use airlock_registry::RegistryError;
use pgp::composed::{Deserializable, SignedPublicKey};
use pgp::packet::{Packet, PacketParser, Signature};
use pgp::types::KeyDetails;

use crate::http::GetError;

/// Red Hat's release signature store.
pub const SIGNATURE_URL: &str =
    "https://mirror.openshift.com/pub/openshift-v4/signatures/openshift/release/";
/// The environment variable oc-mirror users set to use another signature store.
pub const SIGNATURE_URL_ENV: &str = "OCP_SIGNATURE_URL";
/// The environment variable oc-mirror users set to verify with another key file.
pub const KEY_ENV: &str = "OCP_SIGNATURE_VERIFICATION_PK";

/// Red Hat's release keys (release key 2, `199E2F91FD431D51`, which signs
/// OpenShift releases, and beta key 2), as oc-mirror and the cluster-version operator
/// trust them.
const RED_HAT_KEYS: &str = include_str!("../keys/redhat-release.asc");

/// Signatures are about 1 KiB; anything much larger is not one.
const MAX_SIGNATURE_BYTES: usize = 64 << 10;
/// The signed JSON is a few hundred bytes; bounds what a compressed packet may
/// expand to.
const MAX_SIGNED_BYTES: u64 = 64 << 10;

/// Why a release signature could not be had or trusted.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// The key file could not be read or holds no usable public key.
    #[error("release signature keys {source_name}: {message}")]
    Keyring {
        /// The file (or "built-in").
        source_name: String,
        /// What is wrong.
        message: String,
    },
    /// The signature store could not be reached or failed.
    #[error("release {release} ({digest}): signature {url}: {source}")]
    Fetch {
        /// The release (version and architecture).
        release: String,
        /// The release image digest.
        digest: Digest,
        /// What was fetched.
        url: String,
        /// What went wrong (boxed: `Error` stays small).
        source: Box<GetError>,
    },
    /// `--signature-url` or `OCP_SIGNATURE_URL` is not a URL.
    #[error("signature store URL {url:?} is not a URL: {source}")]
    StoreUrl {
        /// As given.
        url: String,
        /// Why it does not parse.
        source: url::ParseError,
    },
    /// No HTTP client for the store (a bad proxy setting).
    #[error("{0}")]
    StoreClient(#[from] RegistryError),
    /// The signature is missing, malformed, forged, or signs something else.
    #[error("release {release} ({digest}): {message}")]
    Invalid {
        /// The release (version and architecture).
        release: String,
        /// The release image digest.
        digest: Digest,
        /// What is wrong with it.
        message: String,
    },
}

/// What to do when no release key verifies a release signature.
const RELEASE_HINT: &str = "; if the release is not Red Hat's, pass its key with --release-keyring";

/// Public keys a release signature must be made with.
#[derive(Debug)]
pub struct Keyring {
    keys: Vec<SignedPublicKey>,
    source: String,
    /// What to do when no key verifies, said after the refusal.
    hint: &'static str,
}

impl Keyring {
    /// The keys of `file` (ASCII-armoured or binary, one or more keys); without a
    /// file, of `OCP_SIGNATURE_VERIFICATION_PK` if set, else Red Hat's.
    ///
    /// oc-mirror falls back to Red Hat's key when the override file cannot be read;
    /// here that is an error, since the user asked for other keys.
    pub fn load(file: Option<&Path>) -> Result<Keyring, SignatureError> {
        let file: Option<PathBuf> = file.map(Path::to_path_buf).or_else(|| {
            std::env::var_os(KEY_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
        match file {
            Some(f) => {
                let name = f.display().to_string();
                let bytes = std::fs::read(&f).map_err(|e| SignatureError::Keyring {
                    source_name: name.clone(),
                    message: e.to_string(),
                })?;
                Keyring::parse(&bytes, &name)
            }
            None => Keyring::parse(RED_HAT_KEYS.as_bytes(), "built-in (Red Hat release keys)"),
        }
        .map(|k| Keyring {
            hint: RELEASE_HINT,
            ..k
        })
    }

    /// The keys of `bytes`, read from `source` (for messages).
    pub fn parse(bytes: &[u8], source: &str) -> Result<Keyring, SignatureError> {
        let err = |message: String| SignatureError::Keyring {
            source_name: source.to_string(),
            message,
        };
        let keys: Vec<SignedPublicKey> = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
            let (keys, _) = SignedPublicKey::from_armor_many(bytes)
                .map_err(|e| err(format!("not an OpenPGP public key block: {e}")))?;
            keys.collect::<Result<_, _>>()
                .map_err(|e| err(format!("a key does not parse: {e}")))?
        } else {
            SignedPublicKey::from_bytes_many(bytes)
                .map_err(|e| err(format!("not an OpenPGP public key file: {e}")))?
                .collect::<Result<_, _>>()
                .map_err(|e| err(format!("a key does not parse: {e}")))?
        };
        if keys.is_empty() {
            return Err(err("holds no public key".into()));
        }
        for k in &keys {
            k.verify_bindings()
                .map_err(|e| err(format!("key {:X}: {e}", k.fingerprint())))?;
        }
        Ok(Keyring {
            keys,
            source: source.to_string(),
            hint: "",
        })
    }

    /// The keys of both, named by both sources.
    pub fn merge(mut self, other: Keyring) -> Keyring {
        self.keys.extend(other.keys);
        self.source = format!("{}, {}", self.source, other.source);
        self
    }

    /// Where the keys came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Checks `sig` with every primary key and subkey; the fingerprint of the one that
    /// made it.
    fn check(&self, sig: &Signature, data: &[u8]) -> Option<String> {
        for key in &self.keys {
            if sig.verify(&key.primary_key, data).is_ok() {
                return Some(format!("{:X}", key.fingerprint()));
            }
            for sub in &key.public_subkeys {
                if sig.verify(&sub.key, data).is_ok() {
                    return Some(format!("{:X}", sub.key.fingerprint()));
                }
            }
        }
        None
    }
}

/// What a verified signature says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The image reference it was made for (informational: releases are mirrored
    /// under other names, so only the digest binds).
    pub docker_reference: String,
    /// Fingerprint of the key that made it.
    pub key: String,
}

#[derive(serde::Deserialize)]
struct SignedDocument {
    critical: Critical,
}

#[derive(serde::Deserialize)]
struct Critical {
    #[serde(rename = "type")]
    kind: String,
    image: SignedImage,
    identity: Identity,
}

#[derive(serde::Deserialize)]
struct SignedImage {
    #[serde(rename = "docker-manifest-digest")]
    digest: String,
}

#[derive(serde::Deserialize)]
struct Identity {
    #[serde(rename = "docker-reference")]
    reference: String,
}

/// Checks that `sig` is a signature by a key of `keyring` over an atomic container
/// signature document for `digest`.
///
/// The packets are taken apart here rather than through rPGP's message reader,
/// which (as of pgp 0.20) refuses a version 3 signature after a one-pass signature
/// packet; Red Hat's release signatures before 2023 are exactly that. The signature
/// packet itself is then checked by rPGP, for both versions.
pub fn verify(
    keyring: &Keyring,
    sig: &[u8],
    digest: &Digest,
    release: &str,
) -> Result<Verified, SignatureError> {
    let invalid = |message: String| SignatureError::Invalid {
        release: release.to_string(),
        digest: digest.clone(),
        message,
    };
    let (data, signature) = split(sig).map_err(|m| invalid(format!("the signature {m}")))?;
    let key = keyring.check(&signature, &data).ok_or_else(|| {
        invalid(format!(
            "the signature (by key {}) is not valid for any key of {}{}",
            signature
                .issuer_key_id()
                .iter()
                .map(|k| hex::encode_upper(k.as_ref()))
                .next()
                .unwrap_or_else(|| "unknown".into()),
            keyring.source(),
            keyring.hint
        ))
    })?;
    let doc: SignedDocument = serde_json::from_slice(&data).map_err(|e| {
        invalid(format!(
            "the signed document is not an atomic container signature: {e}"
        ))
    })?;
    if doc.critical.kind != "atomic container signature" {
        return Err(invalid(format!(
            "the signed document is of type {:?}, not \"atomic container signature\"",
            doc.critical.kind
        )));
    }
    if doc.critical.image.digest != digest.as_str() {
        return Err(invalid(format!(
            "the signature is for image {}, not this release; the signature store or the update graph is wrong",
            doc.critical.image.digest
        )));
    }
    Ok(Verified {
        docker_reference: doc.critical.identity.reference,
        key,
    })
}

/// The signed bytes and the signature packet of a signed message (compressed or
/// not, with or without a one-pass signature packet).
fn split(message: &[u8]) -> Result<(Vec<u8>, Signature), String> {
    let packets = |bytes: &[u8]| -> Result<Vec<Packet>, String> {
        PacketParser::new(bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("is not an OpenPGP message: {e}"))
    };
    let mut list = packets(message)?;
    if let [Packet::CompressedData(c)] = &list[..] {
        let mut inner = Vec::new();
        c.decompress()
            .map_err(|e| format!("cannot be decompressed: {e}"))?
            .take(MAX_SIGNED_BYTES + 1)
            .read_to_end(&mut inner)
            .map_err(|e| format!("cannot be decompressed: {e}"))?;
        if inner.len() as u64 > MAX_SIGNED_BYTES {
            return Err(format!("expands to more than {MAX_SIGNED_BYTES} bytes"));
        }
        list = packets(&inner)?;
    }
    let mut data = None;
    let mut signature = None;
    for p in list {
        match p {
            Packet::LiteralData(l) if data.is_none() => data = Some(l.data().to_vec()),
            Packet::Signature(s) if signature.is_none() => signature = Some(s),
            Packet::OnePassSignature(_) | Packet::Marker(_) | Packet::Padding(_) => {}
            other => {
                return Err(format!(
                    "holds an unexpected {:?} packet (one literal and one signature packet expected)",
                    pgp::packet::PacketTrait::tag(&other)
                ));
            }
        }
    }
    match (data, signature) {
        (Some(d), Some(s)) => Ok((d, s)),
        (None, _) => Err("holds no signed data".into()),
        (_, None) => Err("holds no signature packet".into()),
    }
}

/// A client of a release signature store.
#[derive(Debug)]
pub struct SignatureStore {
    client: reqwest::Client,
    base: String,
}

impl SignatureStore {
    /// A client of `url` (else `OCP_SIGNATURE_URL`, else Red Hat's store).
    pub fn new(url: Option<String>) -> Result<SignatureStore, SignatureError> {
        let mut base = url
            .or_else(|| {
                std::env::var(SIGNATURE_URL_ENV)
                    .ok()
                    .filter(|v| !v.is_empty())
            })
            .unwrap_or_else(|| SIGNATURE_URL.to_string());
        if let Err(source) = reqwest::Url::parse(&base) {
            return Err(SignatureError::StoreUrl { url: base, source });
        }
        if !base.ends_with('/') {
            base.push('/');
        }
        let client = airlock_registry::http_client(&base, Duration::from_secs(120))?;
        Ok(SignatureStore { client, base })
    }

    /// The first signature of the release image `digest`.
    pub async fn fetch(&self, digest: &Digest, release: &str) -> Result<Vec<u8>, SignatureError> {
        let url = format!("{}sha256={}/signature-1", self.base, digest.hex());
        let fetched = crate::http::get(
            &self.client,
            "release signature read",
            &url,
            MAX_SIGNATURE_BYTES,
            "check the network, or set --signature-url / OCP_SIGNATURE_URL to a reachable store",
        )
        .await;
        match fetched {
            Ok(body) => Ok(body),
            Err(GetError::Status(reqwest::StatusCode::NOT_FOUND)) => Err(SignatureError::Invalid {
                release: release.to_string(),
                digest: digest.clone(),
                message: format!(
                    "the signature store has no signature for it ({url}: HTTP 404); a cluster would refuse to update to it. Mirror it unsigned only with --ignore-release-signature"
                ),
            }),
            Err(source) => Err(SignatureError::Fetch {
                release: release.to_string(),
                digest: digest.clone(),
                url,
                source: Box::new(source),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Red Hat's signature of OpenShift 4.15.0 for x86_64 (version 4 packet).
    const OCP_4_15_0: &[u8] =
        include_bytes!("../testdata/release-signatures/ocp-release-4.15.0-x86_64.sig");
    const OCP_4_15_0_DIGEST: &str =
        "sha256:0da6316466d60a3a4535d5fed3589feb0391989982fba59d47d4c729912d6363";
    /// A 2022 Red Hat signature of an operator bundle (version 3 packet).
    const BUNDLE_2022: &[u8] = include_bytes!(
        "../testdata/release-signatures/aws-load-balancer-operator-bundle-0.0.1.sig"
    );
    const BUNDLE_2022_DIGEST: &str =
        "sha256:50b9402635dd4b312a86bed05dcdbda8c00120d3789ec2e9b527045100b3bdb4";

    fn red_hat() -> Keyring {
        Keyring::load(None).unwrap()
    }

    fn digest(s: &str) -> Digest {
        s.parse().unwrap()
    }

    #[test]
    fn real_red_hat_signatures_verify_in_both_packet_versions() {
        let v = verify(&red_hat(), OCP_4_15_0, &digest(OCP_4_15_0_DIGEST), "4.15.0").unwrap();
        assert_eq!(
            v.docker_reference,
            "quay.io/openshift-release-dev/ocp-release:4.15.0-x86_64"
        );
        assert_eq!(v.key, "567E347AD0044ADE55BA8A5F199E2F91FD431D51");
        let v3 = verify(
            &red_hat(),
            BUNDLE_2022,
            &digest(BUNDLE_2022_DIGEST),
            "bundle",
        )
        .unwrap();
        assert_eq!(v3.key, "567E347AD0044ADE55BA8A5F199E2F91FD431D51");
    }

    #[test]
    fn a_signature_for_another_digest_is_refused() {
        let e = verify(
            &red_hat(),
            OCP_4_15_0,
            &digest(BUNDLE_2022_DIGEST),
            "4.15.0",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(&format!(
                "the signature is for image {OCP_4_15_0_DIGEST}, not this release"
            )),
            "{e}"
        );
    }

    #[test]
    fn a_tampered_signature_never_verifies_other_content() {
        let d = digest(OCP_4_15_0_DIGEST);
        let genuine = verify(&red_hat(), OCP_4_15_0, &d, "4.15.0").unwrap();
        // Flipping a byte breaks the compressed stream, a packet, the signed document
        // or the signature. Only bytes no signature covers (the one-pass packet's
        // hints) may change and still verify, and then the content is the genuine one.
        let mut refused = 0;
        for i in 0..OCP_4_15_0.len() {
            let mut forged = OCP_4_15_0.to_vec();
            forged[i] ^= 0x20;
            match verify(&red_hat(), &forged, &d, "4.15.0") {
                Ok(v) => assert_eq!(v, genuine, "byte {i} flipped verifies as other content"),
                Err(_) => refused += 1,
            }
        }
        assert!(
            refused > OCP_4_15_0.len() * 9 / 10,
            "only {refused} of {} flips refused",
            OCP_4_15_0.len()
        );
    }

    #[test]
    fn another_key_does_not_verify() {
        // Only beta key 2 of Red Hat's file: not the key releases are signed with.
        let all = SignedPublicKey::from_armor_many(RED_HAT_KEYS.as_bytes())
            .unwrap()
            .0
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let beta = Keyring {
            keys: all
                .into_iter()
                .filter(|k| format!("{:X}", k.fingerprint()).ends_with("F21541EB"))
                .collect(),
            source: "beta".into(),
            hint: RELEASE_HINT,
        };
        let e = verify(&beta, OCP_4_15_0, &digest(OCP_4_15_0_DIGEST), "4.15.0")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("by key 199E2F91FD431D51") && e.contains("--release-keyring"),
            "{e}"
        );
    }

    #[test]
    fn garbage_and_unusable_keys_are_clear_errors() {
        let d = digest(OCP_4_15_0_DIGEST);
        let e = verify(&red_hat(), b"<html>not found</html>", &d, "4.15.0").unwrap_err();
        assert!(e.to_string().contains("is not an OpenPGP message"), "{e}");
        let e =
            Keyring::parse(b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nxx\n", "k.asc").unwrap_err();
        assert!(
            e.to_string().starts_with("release signature keys k.asc: "),
            "{e}"
        );
        let e = Keyring::load(Some(Path::new("/nonexistent/key.asc"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/key.asc"), "{e}");
    }
}
