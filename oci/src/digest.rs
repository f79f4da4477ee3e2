//! Content digests (`sha256:<hex>`), the identity of every manifest and blob.
//!
//! A digest string coming from a registry, a manifest or a chunk file is untrusted
//! input: it ends up in file names in the content store, so it is validated here once,
//! strictly (algorithm `sha256`, exactly 64 lowercase hex digits), and code that holds
//! a [`Digest`] can use [`Digest::hex`] in a path without further checks.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// A validated `sha256:<64 lowercase hex>` digest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

/// Why a string is not a digest Airlock accepts.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    /// Not of the form `algorithm:encoded`.
    #[error("invalid digest {0}: expected sha256:<64 hex digits>")]
    Malformed(String),
    /// A well-formed digest with an algorithm other than sha256.
    #[error("unsupported digest algorithm in {0}: only sha256 is supported")]
    Algorithm(String),
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }

    /// The 64 hex digits, safe to use as a file name.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tag form used by cosign and the referrers tag schema: `sha256-<hex>`.
    pub fn tag_form(&self) -> String {
        format!("sha256-{}", self.hex())
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, DigestError> {
        let Some((algorithm, encoded)) = s.split_once(':') else {
            return Err(DigestError::Malformed(crate::quote::clipped(s)));
        };
        if algorithm.is_empty()
            || !algorithm
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b))
            || encoded.is_empty()
        {
            return Err(DigestError::Malformed(crate::quote::clipped(s)));
        }
        if algorithm != "sha256" {
            return Err(DigestError::Algorithm(crate::quote::clipped(s)));
        }
        if encoded.len() != 64
            || !encoded
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(DigestError::Malformed(crate::quote::clipped(s)));
        }
        Ok(Digest(s.to_string()))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An incremental sha256 over a stream of bytes, for checking content while it is
/// copied instead of reading it twice.
#[derive(Clone, Default)]
pub struct Hasher {
    inner: Sha256,
    len: u64,
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hasher({} bytes)", self.len)
    }
}

impl Hasher {
    /// A hasher that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.inner.update(bytes);
        self.len += bytes.len() as u64;
    }

    /// How many bytes were fed.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was fed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest of everything fed.
    pub fn finish(self) -> Digest {
        Digest(format!("sha256:{}", hex::encode(self.inner.finalize())))
    }
}

/// A sha256 computed on another thread, so that a reader that must compute two
/// hashes over the same bytes (a chunk's payload, and the blobs inside it) uses two
/// cores instead of one. The reader hands over the very blocks it read (shared,
/// not copied) through a bounded channel, so memory stays bounded whatever the size
/// of the data.
#[derive(Debug)]
pub struct BackgroundHasher {
    tx: Option<std::sync::mpsc::SyncSender<bytes::Bytes>>,
    worker: Option<std::thread::JoinHandle<Hasher>>,
}

/// Blocks in flight to the hashing thread.
const IN_FLIGHT: usize = 4;

impl Default for BackgroundHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl BackgroundHasher {
    /// Starts the hashing thread.
    pub fn new() -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<bytes::Bytes>(IN_FLIGHT);
        let worker = std::thread::spawn(move || {
            let mut h = Hasher::new();
            for block in rx {
                h.update(&block);
            }
            h
        });
        BackgroundHasher {
            tx: Some(tx),
            worker: Some(worker),
        }
    }

    /// Feeds a block (best about 1 MiB: a channel message per block).
    pub fn update(&mut self, block: bytes::Bytes) {
        if let Some(tx) = &self.tx {
            // The worker only stops when the sender is dropped.
            let _ = tx.send(block);
        }
    }

    /// The digest of everything fed.
    pub fn finish(mut self) -> Digest {
        drop(self.tx.take());
        self.worker
            .take()
            .expect("finish is called once")
            .join()
            .expect("the hashing thread does not panic")
            .finish()
    }
}

impl Drop for BackgroundHasher {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn digest_of_bytes_matches_known_value() {
        assert_eq!(Digest::of(b"").as_str(), EMPTY);
        let mut h = Hasher::new();
        h.update(b"");
        assert_eq!(h.finish().as_str(), EMPTY);
    }

    #[test]
    fn incremental_hash_equals_one_shot() {
        let mut h = Hasher::new();
        h.update(b"hello ");
        h.update(b"world");
        assert_eq!(h.len(), 11);
        assert_eq!(h.finish(), Digest::of(b"hello world"));
    }

    #[test]
    fn background_hash_equals_one_shot() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut h = BackgroundHasher::new();
        for piece in data.chunks(777_777) {
            h.update(bytes::Bytes::copy_from_slice(piece));
        }
        assert_eq!(h.finish(), Digest::of(&data));
        assert_eq!(BackgroundHasher::new().finish(), Digest::of(b""));
    }

    #[test]
    fn parse_rejects_anything_that_could_escape_a_path() {
        for bad in [
            "sha256:../../etc/passwd",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:",
            ":abc",
        ] {
            assert!(
                matches!(bad.parse::<Digest>(), Err(DigestError::Malformed(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            "sha512:abcd".parse::<Digest>(),
            Err(DigestError::Algorithm(_))
        ));
        assert_eq!(EMPTY.parse::<Digest>().unwrap().hex().len(), 64);
    }
}
