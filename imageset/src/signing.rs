//! Signing imageset manifests, and checking them against trusted keys.
//!
//! Keys and signatures are [minisign](https://jedisct1.github.io/minisign/)'s
//! (Ed25519, prehashed signatures), through the `minisign` crate, so that an
//! operator can check any imageset with the `minisign` command in Debian:
//!
//! ```sh
//! tar xOf chunk.tar airlock/imageset.json > m.json
//! tar xOf chunk.tar airlock/imageset.json.sig > m.json.minisig
//! minisign -V -p airlock.pub -m m.json -x m.json.minisig
//! ```
//!
//! What is signed is the manifest entry's data, exactly as stored (padding
//! included). The manifest lists every chunk's sha256, which covers every other
//! byte of the imageset; so one signature covers the whole imageset.

use std::path::{Path, PathBuf};

use minisign::{KeyPair, PublicKey, PublicKeyBox, SecretKey, SecretKeyBox, SignatureBox};

/// Length of the base64 signature line (2 algorithm + 8 key id + 64 signature bytes).
const SIGNATURE_LINE: usize = 100;
/// Length of the base64 global-signature line (64 bytes).
const GLOBAL_LINE: usize = 88;
const UNTRUSTED_PREFIX: &str = "untrusted comment: ";
const TRUSTED_PREFIX: &str = "trusted comment: ";

/// Why a key or signature could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// A key file could not be read or parsed.
    #[error("{}: {message}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(String),
}

/// A minisign signature and the key id it names.
fn parse(signature: &[u8]) -> Result<(SignatureBox, KeyId), Untrusted> {
    let text =
        std::str::from_utf8(signature).map_err(|_| Untrusted::Malformed("not text".into()))?;
    let sig = SignatureBox::from_string(text).map_err(|e| Untrusted::Malformed(e.to_string()))?;
    let id = KeyId::from_slice(sig.keynum());
    Ok((sig, id))
}

/// The key a signature says it was made with, unchecked: for describing an
/// imageset where no key is trusted. `None` when it does not parse.
pub fn claimed_signer(signature: &[u8]) -> Option<KeyId> {
    parse(signature).ok().map(|(_, id)| id)
}

/// A minisign key id, printed as minisign prints it (16 upper-case hex digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId([u8; 8]);

impl KeyId {
    fn from_slice(b: &[u8]) -> Self {
        let mut id = [0u8; 8];
        id.copy_from_slice(&b[..8]);
        KeyId(id)
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016X}", u64::from_le_bytes(self.0))
    }
}

fn key_error(path: &Path, message: impl std::fmt::Display) -> SigningError {
    SigningError::Key {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Writes a new key pair as `PREFIX.key` (secret, mode 0600) and `PREFIX.pub`, in
/// minisign's format. With a password the secret key is encrypted (scrypt, as
/// minisign does); without one it is not, which suits an unattended agent whose key
/// is protected by file permissions (minisign's `-W`).
pub fn generate(
    prefix: &Path,
    password: Option<String>,
) -> Result<(PathBuf, PathBuf, KeyId), SigningError> {
    let secret = prefix.with_extension("key");
    let public = prefix.with_extension("pub");
    for p in [&secret, &public] {
        if p.exists() {
            return Err(key_error(p, "exists already; refusing to overwrite a key"));
        }
    }
    let pair = match &password {
        Some(pw) => KeyPair::generate_encrypted_keypair(Some(pw.clone())),
        None => KeyPair::generate_unencrypted_keypair(),
    }
    .map_err(|e| SigningError::Sign(e.to_string()))?;
    let id = KeyId::from_slice(pair.pk.keynum());
    let sk_box = pair
        .sk
        .to_box(Some(&format!("airlock signing key {id}")))
        .map_err(|e| key_error(&secret, e))?;
    let pk_box = pair.pk.to_box().map_err(|e| key_error(&public, e))?;
    write_private(&secret, sk_box.into_string().as_bytes())?;
    std::fs::write(&public, pk_box.into_string()).map_err(|e| key_error(&public, e))?;
    Ok((secret, public, id))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SigningError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| key_error(path, e))?;
    f.write_all(bytes).map_err(|e| key_error(path, e))
}

/// A secret key, ready to sign.
pub struct Signer {
    key: SecretKey,
    id: KeyId,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.id)
    }
}

impl Signer {
    /// Loads a minisign secret key; `password` for an encrypted one.
    pub fn load(path: &Path, password: Option<String>) -> Result<Self, SigningError> {
        let text = std::fs::read_to_string(path).map_err(|e| key_error(path, e))?;
        let sk_box = SecretKeyBox::from_string(&text)
            .map_err(|e| key_error(path, format!("not a minisign secret key: {e}")))?;
        let key = match password {
            Some(pw) => sk_box.into_secret_key(Some(pw)),
            None => sk_box.into_unencrypted_secret_key(),
        }
        .map_err(|e| {
            key_error(
                path,
                format!(
                    "{e}; an encrypted key needs --sign-password-file (or AIRLOCK_SIGN_PASSWORD)"
                ),
            )
        })?;
        let id = KeyId::from_slice(key.keynum());
        Ok(Signer { key, id })
    }

    /// The key id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The untrusted comment of every signature this key makes.
    pub fn untrusted_comment(&self) -> String {
        format!("signature from airlock key {}", self.id)
    }

    /// The exact length of a signature with these comments; fixed in advance so the
    /// chunk layout can reserve it before the manifest exists.
    pub fn signature_len(&self, trusted_comment: &str) -> usize {
        UNTRUSTED_PREFIX.len()
            + self.untrusted_comment().len()
            + 1
            + SIGNATURE_LINE
            + 1
            + TRUSTED_PREFIX.len()
            + trusted_comment.len()
            + 1
            + GLOBAL_LINE
            + 1
    }

    /// Signs `data`; the result is a minisign signature file's text.
    pub fn sign(&self, data: &[u8], trusted_comment: &str) -> Result<Vec<u8>, SigningError> {
        let sig = minisign::sign(
            None,
            &self.key,
            std::io::Cursor::new(data),
            Some(trusted_comment),
            Some(&self.untrusted_comment()),
        )
        .map_err(|e| SigningError::Sign(e.to_string()))?;
        let text = sig.into_string().into_bytes();
        if text.len() != self.signature_len(trusted_comment) {
            return Err(SigningError::Sign(format!(
                "signature of {} bytes, expected {}",
                text.len(),
                self.signature_len(trusted_comment)
            )));
        }
        Ok(text)
    }
}

/// The public keys an imageset may be signed with.
#[derive(Debug, Default)]
pub struct TrustStore {
    keys: Vec<(KeyId, PublicKey, PathBuf)>,
}

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Untrusted {
    /// The imageset carries no signature.
    #[error(
        "the imageset is not signed, but this site requires a signature from one of: {trusted}"
    )]
    Unsigned {
        /// The trusted key ids.
        trusted: String,
    },
    /// Signed with a key that is not trusted.
    #[error("the imageset is signed by key {key}, which is not trusted here (trusted: {trusted})")]
    UnknownKey {
        /// The signing key id.
        key: String,
        /// The trusted key ids.
        trusted: String,
    },
    /// The signature does not verify: the manifest was altered after signing, or the
    /// signature is forged.
    #[error(
        "the signature by key {key} does not match the manifest ({reason}): the manifest was altered after signing, or the signature is forged"
    )]
    Invalid {
        /// The signing key id.
        key: String,
        /// minisign's reason.
        reason: String,
    },
    /// The signature entry is not a minisign signature.
    #[error("the signature entry is not a minisign signature: {0}")]
    Malformed(String),
}

impl TrustStore {
    /// Loads minisign public key files.
    pub fn load(paths: &[PathBuf]) -> Result<Self, SigningError> {
        let mut keys = Vec::new();
        for path in paths {
            let text = std::fs::read_to_string(path).map_err(|e| key_error(path, e))?;
            let pk = PublicKeyBox::from_string(&text)
                .and_then(PublicKeyBox::into_public_key)
                .or_else(|_| PublicKey::from_base64(text.trim()))
                .map_err(|e| key_error(path, format!("not a minisign public key: {e}")))?;
            keys.push((KeyId::from_slice(pk.keynum()), pk, path.clone()));
        }
        Ok(TrustStore { keys })
    }

    /// Whether any key is trusted (then every imageset must be signed by one).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn trusted(&self) -> String {
        self.keys
            .iter()
            .map(|(id, _, path)| format!("{id} ({})", path.display()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Checks `signature` over `data`; returns the signing key id.
    pub fn verify(&self, data: &[u8], signature: Option<&[u8]>) -> Result<KeyId, Untrusted> {
        let Some(signature) = signature else {
            return Err(Untrusted::Unsigned {
                trusted: self.trusted(),
            });
        };
        let (sig, id) = parse(signature)?;
        let Some((_, pk, _)) = self.keys.iter().find(|(k, _, _)| *k == id) else {
            return Err(Untrusted::UnknownKey {
                key: id.to_string(),
                trusted: self.trusted(),
            });
        };
        minisign::verify(pk, &sig, std::io::Cursor::new(data), true, false, false).map_err(
            |e| Untrusted::Invalid {
                key: id.to_string(),
                reason: e.to_string(),
            },
        )?;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_have_the_announced_length_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let (sk, pk, id) = generate(&dir.path().join("site"), None).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sk).unwrap().permissions())
                & 0o777,
            0o600
        );
        let signer = Signer::load(&sk, None).unwrap();
        assert_eq!(signer.id(), id);
        let comment = "airlock imageset 1234 sequence 7";
        let sig = signer.sign(b"manifest", comment).unwrap();
        assert_eq!(sig.len(), signer.signature_len(comment));
        let trust = TrustStore::load(&[pk]).unwrap();
        assert_eq!(trust.verify(b"manifest", Some(&sig)), Ok(id));
        assert!(matches!(
            trust.verify(b"manifesT", Some(&sig)),
            Err(Untrusted::Invalid { .. })
        ));
        assert!(matches!(
            trust.verify(b"manifest", None),
            Err(Untrusted::Unsigned { .. })
        ));
        assert!(
            generate(&dir.path().join("site"), None).is_err(),
            "never overwrites a key"
        );
    }

    #[test]
    fn another_key_is_named_with_the_trusted_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (_, pk_a, id_a) = generate(&dir.path().join("a"), None).unwrap();
        let (sk_b, _, id_b) = generate(&dir.path().join("b"), Some("pw".into())).unwrap();
        assert!(
            Signer::load(&sk_b, None).is_err(),
            "an encrypted key needs its password"
        );
        let signer = Signer::load(&sk_b, Some("pw".into())).unwrap();
        let sig = signer.sign(b"m", "c").unwrap();
        let err = TrustStore::load(&[pk_a])
            .unwrap()
            .verify(b"m", Some(&sig))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&id_b.to_string()) && err.contains(&id_a.to_string()),
            "{err}"
        );
    }
}
