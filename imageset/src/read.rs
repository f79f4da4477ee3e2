//! Reading chunk files, which are hostile input until proven otherwise.
//!
//! A chunk arrives from the other side of an air gap, through a diode, a scanner or
//! a USB stick, and may be truncated, corrupted, renamed, or forged. The reader
//! never interprets the tar archive freely: it knows from the manifest exactly which
//! entries must follow, in which order, with which sizes, and it compares every
//! header byte for byte with the header Airlock would have written
//! ([`super::write::entry_header`]). Anything else (a path with `../`, a symlink, a
//! device, a PAX or GNU extension header, a size that disagrees with the manifest, a
//! duplicate entry, trailing data) is refused with the chunk's name and what was
//! found. No name from the archive is ever used as a path, so nothing can be
//! written outside the workspace whatever the archive says.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::validate;
use super::write::{entry_header, identity_bytes, mtime_of};
use super::{
    BLOCK, BlobRecord, CHUNK_ENTRY, ChunkIdentity, ImagesetManifest, MANIFEST_ENTRY,
    MANIFEST_SUM_ENTRY, MANIFEST_SUM_LEN, MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES, PartRecord,
    SIGNATURE_ENTRY, TRAILER_LEN, Version, padded,
};
use airlock_common::io::read_blocks;
use airlock_oci::digest::{Digest, Hasher};

/// Why a chunk file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        /// The chunk file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not an Airlock chunk at all.
    #[error("{}: not an Airlock imageset chunk: {reason}", path.display())]
    NotAChunk {
        /// The file.
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },
    /// The chunk is fine, but its content could not be stored locally (a full disk).
    #[error("{}: its content could not be stored in the workspace: {source}", path.display())]
    Store {
        /// The chunk file being read.
        path: PathBuf,
        /// The local I/O error.
        source: std::io::Error,
    },
    /// The file ends before what its own first entries say it holds: damaged in
    /// transfer, or still being written by a writer that paused.
    #[error("{}: {reason}", path.display())]
    Truncated {
        /// The chunk file.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// The file claims to be a chunk but is damaged or forged.
    #[error("{}: {reason}", path.display())]
    Corrupt {
        /// The chunk file.
        path: PathBuf,
        /// What is wrong, and what was expected.
        reason: String,
    },
    /// A blob split across chunks does not match its digest. That shows when
    /// its last part is read, from `path`, but the damage may be in any chunk
    /// holding a part: proving them one by one tells which (by their payload
    /// hashes in version 1, their part hashes in version 2).
    #[error("{}: {reason}", path.display())]
    Split {
        /// The chunk file read when the blob failed.
        path: PathBuf,
        /// What is wrong.
        reason: String,
        /// The chunks holding a part of the blob (indexes from 1).
        chunks: Vec<u32>,
    },
}

impl ChunkError {
    /// The chunk file concerned.
    pub fn path(&self) -> &Path {
        match self {
            ChunkError::Io { path, .. }
            | ChunkError::Store { path, .. }
            | ChunkError::NotAChunk { path, .. }
            | ChunkError::Truncated { path, .. }
            | ChunkError::Corrupt { path, .. }
            | ChunkError::Split { path, .. } => path,
        }
    }
}

/// What the first entries of a chunk say: enough to identify and group it, without
/// reading its content.
#[derive(Debug, Clone)]
pub struct ChunkHead {
    /// The chunk file.
    pub path: PathBuf,
    /// The imageset manifest it carries; shared, since an imageset of thousands of
    /// chunks must not hold thousands of copies of a manifest that lists them all.
    pub manifest: Arc<ImagesetManifest>,
    /// sha256 of the manifest entry's bytes; equal in every chunk of an imageset.
    pub manifest_digest: Digest,
    /// The manifest entry's bytes, as signed.
    pub manifest_bytes: Arc<Vec<u8>>,
    /// The signature entry, if the imageset is signed.
    pub signature: Option<Vec<u8>>,
    /// Which chunk this is.
    pub identity: ChunkIdentity,
    /// Where the hashed payload starts.
    pub payload_offset: u64,
}

fn read_exact(
    r: &mut impl Read,
    buf: &mut [u8],
    path: &Path,
    what: &str,
) -> Result<(), ChunkError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ChunkError::Truncated {
                path: path.to_path_buf(),
                reason: format!("truncated: the file ends inside {what}"),
            }
        } else {
            ChunkError::Io {
                path: path.to_path_buf(),
                source: e,
            }
        }
    })
}

/// Checks a header's checksum and returns its name, type and size, for messages.
fn describe(h: &[u8; 512]) -> Result<(String, char, u64), String> {
    if h.iter().all(|&b| b == 0) {
        return Err("an end-of-archive block".into());
    }
    let header = tar::Header::from_byte_slice(h);
    let stored = header
        .cksum()
        .map_err(|_| "a header with an unreadable checksum".to_string())?;
    let computed: u32 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                u32::from(b' ')
            } else {
                u32::from(b)
            }
        })
        .sum();
    if stored != computed {
        return Err("a header with a wrong checksum (not a tar archive, or damaged)".into());
    }
    let name = String::from_utf8_lossy(&header.path_bytes()).into_owned();
    let kind = h[156] as char;
    let size = header
        .size()
        .map_err(|_| format!("entry {name:?} with an unreadable size"))?;
    Ok((name, kind, size))
}

fn kind_name(kind: char) -> &'static str {
    match kind {
        '0' | '\0' => "regular file",
        '1' => "hard link",
        '2' => "symbolic link",
        '3' | '4' => "device file",
        '5' => "directory",
        '6' => "FIFO",
        'x' | 'g' => "PAX extended header",
        'L' | 'K' => "GNU long-name header",
        _ => "special entry",
    }
}

/// Compares a header with the expected one and explains any difference.
fn expect_header(
    found: &[u8; 512],
    name: &str,
    size: u64,
    mtime: u64,
    path: &Path,
) -> Result<(), ChunkError> {
    let expected = entry_header(name, size, mtime);
    if *found == expected {
        return Ok(());
    }
    let corrupt = |reason: String| ChunkError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    match describe(found) {
        Err(what) => Err(corrupt(format!("expected entry {name:?}, found {what}"))),
        Ok((n, k, s)) => {
            if n != name {
                Err(corrupt(format!(
                    "expected entry {name:?}, found {} {n:?}",
                    kind_name(k)
                )))
            } else if !matches!(k, '0' | '\0') {
                Err(corrupt(format!(
                    "entry {n:?} is a {}, expected a regular file",
                    kind_name(k)
                )))
            } else if s != size {
                Err(corrupt(format!(
                    "entry {n:?} declares {s} bytes, the manifest says {size}"
                )))
            } else {
                Err(corrupt(format!(
                    "entry {n:?} has a header that differs from the format's (owner, mode or time)"
                )))
            }
        }
    }
}

/// Reads the manifest, signature and identity entries of a chunk file.
pub fn read_head(path: &Path) -> Result<ChunkHead, ChunkError> {
    let ioe = |source| ChunkError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(ioe)?;
    let file_len = file.metadata().map_err(ioe)?.len();
    let mut r = BufReader::new(file);
    let not_chunk = |reason: String| ChunkError::NotAChunk {
        path: path.to_path_buf(),
        reason,
    };
    let corrupt = |reason: String| ChunkError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };

    let truncated = |reason: String| ChunkError::Truncated {
        path: path.to_path_buf(),
        reason,
    };
    let mut h = [0u8; 512];
    if file_len < BLOCK {
        return Err(not_chunk(format!(
            "{file_len} bytes, shorter than one tar header"
        )));
    }
    read_exact(&mut r, &mut h, path, "the first header")?;
    let (name, kind, size) =
        describe(&h).map_err(|what| not_chunk(format!("it starts with {what}")))?;
    if name != MANIFEST_ENTRY || !matches!(kind, '0' | '\0') {
        return Err(not_chunk(format!(
            "its first entry is {} {name:?}, expected {MANIFEST_ENTRY:?}",
            kind_name(kind)
        )));
    }
    if size > MAX_MANIFEST_BYTES {
        return Err(corrupt(format!(
            "the manifest entry declares {size} bytes, more than the {MAX_MANIFEST_BYTES}-byte bound"
        )));
    }
    if BLOCK + padded(size) > file_len {
        return Err(truncated(format!(
            "truncated: the manifest entry declares {size} bytes but the file has {file_len}"
        )));
    }
    let mut manifest_bytes = vec![0u8; size as usize];
    read_exact(&mut r, &mut manifest_bytes, path, "the manifest")?;
    let mut pad = vec![0u8; (padded(size) - size) as usize];
    read_exact(&mut r, &mut pad, path, "the manifest")?;
    let manifest_header = h;
    read_exact(&mut r, &mut h, path, "the manifest checksum header")?;
    let mut sum = [0u8; BLOCK as usize];
    read_exact(&mut r, &mut sum, path, "the manifest checksum")?;
    let want = format!("{}\n", Digest::of(&manifest_bytes).hex());
    if sum[..MANIFEST_SUM_LEN as usize] != *want.as_bytes()
        || sum[MANIFEST_SUM_LEN as usize..].iter().any(|&b| b != 0)
    {
        return Err(corrupt(
            "the imageset manifest in this chunk is damaged: it does not match its sha256 entry"
                .into(),
        ));
    }
    /// Only the version, whatever else a manifest of another version holds.
    #[derive(serde::Deserialize)]
    struct Format {
        format: String,
    }
    let manifest: ImagesetManifest = serde_json::from_slice(&manifest_bytes).map_err(|e| {
        // A later version's fields are unknown here: say that the version
        // is, not the first of its fields.
        let problem = match serde_json::from_slice::<Format>(&manifest_bytes) {
            Ok(Format { format }) => validate::check_format(&format).err(),
            Err(_) => None,
        };
        match problem {
            Some(p) => corrupt(format!("the imageset manifest is not valid: {p}")),
            None => corrupt(format!("the imageset manifest is not valid: {e}")),
        }
    })?;
    validate::check_header(&manifest)
        .map_err(|e| corrupt(format!("the imageset manifest is not valid: {e}")))?;
    let mtime = mtime_of(&manifest.created);
    expect_header(&manifest_header, MANIFEST_ENTRY, size, mtime, path)?;
    expect_header(&h, MANIFEST_SUM_ENTRY, MANIFEST_SUM_LEN, mtime, path)?;
    let mut offset = BLOCK + padded(size) + BLOCK + padded(MANIFEST_SUM_LEN);

    read_exact(&mut r, &mut h, path, "the second header")?;
    let mut signature = None;
    if let Ok((name, _, sig_size)) = describe(&h)
        && name == SIGNATURE_ENTRY
    {
        if sig_size > MAX_SIGNATURE_BYTES {
            return Err(corrupt(format!(
                "the signature entry declares {sig_size} bytes, more than the {MAX_SIGNATURE_BYTES}-byte bound"
            )));
        }
        expect_header(&h, SIGNATURE_ENTRY, sig_size, mtime, path)?;
        let mut sig = vec![0u8; padded(sig_size) as usize];
        read_exact(&mut r, &mut sig, path, "the signature")?;
        sig.truncate(sig_size as usize);
        signature = Some(sig);
        offset += BLOCK + padded(sig_size);
        read_exact(&mut r, &mut h, path, "the chunk identity header")?;
    }
    let payload_offset = offset;
    let mut data = [0u8; 512];
    read_exact(&mut r, &mut data, path, "the chunk identity")?;
    let id_len = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1) as u64;
    let identity: ChunkIdentity = serde_json::from_slice(&data[..id_len as usize])
        .map_err(|e| corrupt(format!("the chunk identity entry is not valid: {e}")))?;
    expect_header(&h, CHUNK_ENTRY, id_len, mtime, path)?;
    if identity_bytes(&identity) != data[..id_len as usize] {
        return Err(corrupt(
            "the chunk identity entry is not in the format's encoding".into(),
        ));
    }
    if identity.uuid != manifest.uuid || identity.sequence != manifest.sequence {
        return Err(corrupt(format!(
            "the chunk says it belongs to imageset {} sequence {}, but carries the manifest of {}",
            identity.uuid,
            identity.sequence,
            manifest.label()
        )));
    }
    validate::check(&manifest, payload_offset)
        .map_err(|e| corrupt(format!("the imageset manifest is not valid: {e}")))?;
    let count = manifest.chunks.len() as u32;
    let (list, what) = match identity.parity {
        None => (&manifest.chunks, "chunks"),
        Some(_) => (&manifest.parity, "parity files"),
    };
    let of = list.len() as u32;
    if identity.chunks != count
        || identity.parity.is_some_and(|n| n != of)
        || identity.chunk == 0
        || identity.chunk > of
    {
        return Err(corrupt(format!(
            "{} {} of {} does not fit the manifest's {of} {what}",
            if identity.parity.is_some() {
                "parity file"
            } else {
                "chunk"
            },
            identity.chunk,
            identity.parity.unwrap_or(identity.chunks)
        )));
    }
    let record = &list[identity.chunk as usize - 1];
    if record.index != identity.chunk {
        return Err(corrupt("the manifest's chunk list is out of order".into()));
    }
    if file_len < record.size {
        return Err(truncated(format!(
            "truncated ({file_len} bytes, the manifest says {}): the file was cut short in transfer, or is still being written",
            record.size
        )));
    }
    if file_len > record.size {
        return Err(corrupt(format!(
            "too long ({file_len} bytes, the manifest says {}): the file was extended in transfer",
            record.size
        )));
    }
    Ok(ChunkHead {
        path: path.to_path_buf(),
        manifest_digest: Digest::of(&manifest_bytes),
        manifest: Arc::new(manifest),
        manifest_bytes: Arc::new(manifest_bytes),
        signature,
        identity,
        payload_offset,
    })
}

/// Receives the content of a chunk's parts while the chunk is verified.
pub trait PartSink {
    /// Part `part` of `blob` (index `blob_index` in the manifest); `data` yields exactly
    /// `record.length` bytes. Bytes the sink does not read are still read (and
    /// hashed, unless the sink [checks digests](PartSink::checks_digests)).
    /// An error of kind `InvalidData` (content that does not match its digest) is
    /// reported as corruption of the chunk, or for a split blob as
    /// [`ChunkError::Split`]; any other as a local storage failure
    /// ([`ChunkError::Store`]), which says nothing about the chunk.
    fn part(
        &mut self,
        blob_index: usize,
        blob: &BlobRecord,
        part: usize,
        record: &PartRecord,
        data: &mut dyn Read,
    ) -> std::io::Result<()>;

    /// Whether the sink reads every byte it is handed and checks it against its
    /// blob's digest (a split blob's when its last part is in), and reports
    /// [`pending`](PartSink::pending) blobs. A data chunk's payload hash is then
    /// not computed: the digests cover every part, and [`verify`] compares every
    /// other byte (identity, headers, padding, end marker) with what the format
    /// writes, so each byte is hashed once rather than twice.
    fn checks_digests(&self) -> bool {
        false
    }

    /// Blobs begun but not finished: parts still expected from later chunks.
    /// After the last chunk, any is an error; only a sink that checks digests
    /// need count them.
    fn pending(&self) -> usize {
        0
    }
}

/// A sink that keeps nothing, for verifying a chunk without extracting it.
pub struct Discard;

impl PartSink for Discard {
    fn part(
        &mut self,
        _: usize,
        _: &BlobRecord,
        _: usize,
        _: &PartRecord,
        _: &mut dyn Read,
    ) -> std::io::Result<()> {
        Ok(())
    }
}

/// Blobs taken in part by part, as chunks hand them over: a hash for each blob
/// begun, continued by each part in order, and a state `T` of the caller's (the
/// file a store writes), shared by the sinks that check digests.
#[derive(Debug)]
pub struct Assembly<T> {
    partial: std::collections::HashMap<usize, (Hasher, T)>,
    /// One buffer for every part: small blobs are many.
    buf: Vec<u8>,
}

impl<T> Default for Assembly<T> {
    fn default() -> Self {
        Assembly {
            partial: Default::default(),
            buf: Vec::new(),
        }
    }
}

/// The error for content that does not match what the manifest says of it.
pub fn altered(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

impl<T> Assembly<T> {
    /// Takes part `part` of blob `index`: at the first part a state from
    /// `begin`, then every byte to the blob's hash and to `write`. When that
    /// was the last part, returns what the blob hashes to and its state, for
    /// the caller to compare and keep.
    #[allow(clippy::too_many_arguments)]
    pub fn part(
        &mut self,
        index: usize,
        blob: &BlobRecord,
        part: usize,
        record: &PartRecord,
        data: &mut dyn Read,
        begin: impl FnOnce() -> std::io::Result<T>,
        mut write: impl FnMut(&mut T, &[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<Option<(Digest, T)>> {
        if part == 0 {
            self.partial.insert(index, (Hasher::default(), begin()?));
        }
        let (hasher, state) = self.partial.get_mut(&index).ok_or_else(|| {
            altered(format!(
                "blob {} part {} arrived before its first part",
                blob.digest,
                part + 1
            ))
        })?;
        if hasher.len() != record.offset {
            return Err(altered(format!(
                "blob {} part {} starts at byte {}, but {} bytes were received",
                blob.digest,
                part + 1,
                record.offset,
                hasher.len()
            )));
        }
        if self.buf.is_empty() {
            self.buf.resize(256 << 10, 0);
        }
        loop {
            let n = data.read(&mut self.buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&self.buf[..n]);
            write(state, &self.buf[..n])?;
        }
        if record.offset + record.length < blob.size {
            return Ok(None);
        }
        let (hasher, state) = self.partial.remove(&index).expect("present above");
        Ok(Some((hasher.finish(), state)))
    }

    /// Whether blob `index` was begun and is not finished.
    pub fn begun(&self, index: usize) -> bool {
        self.partial.contains_key(&index)
    }

    /// Blobs begun and not finished.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }

    /// The states of the blobs not finished, taken out.
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.partial.drain().map(|(_, (_, state))| state)
    }
}

/// A sink that keeps nothing but checks every blob against its digest, for
/// verifying an imageset completely without storing it. Chunks must be verified in
/// index order, so that the parts of a split blob arrive in order.
#[derive(Default)]
pub struct DigestCheck {
    blobs: Assembly<()>,
    /// Blobs checked so far.
    pub checked: u64,
}

impl PartSink for DigestCheck {
    fn part(
        &mut self,
        index: usize,
        blob: &BlobRecord,
        part: usize,
        record: &PartRecord,
        data: &mut dyn Read,
    ) -> std::io::Result<()> {
        let done = self
            .blobs
            .part(index, blob, part, record, data, || Ok(()), |_, _| Ok(()))?;
        let Some((actual, ())) = done else {
            return Ok(());
        };
        if actual != blob.digest {
            return Err(altered(format!(
                "blob {} hashes to {actual}: content was altered",
                blob.digest
            )));
        }
        self.checked += 1;
        Ok(())
    }

    fn checks_digests(&self) -> bool {
        true
    }

    fn pending(&self) -> usize {
        self.blobs.pending()
    }
}

/// Reads a file in 1 MiB blocks and shares each block with a [`BackgroundHasher`]:
/// the payload hash costs another core, but no copy.
struct HashingReader {
    file: File,
    block: bytes::Bytes,
    hasher: airlock_oci::digest::BackgroundHasher,
}

const BLOCK_BYTES: u64 = 1 << 20;

impl Read for HashingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.block.is_empty() {
            let mut v = Vec::with_capacity(BLOCK_BYTES as usize);
            (&mut self.file).take(BLOCK_BYTES).read_to_end(&mut v)?;
            self.block = bytes::Bytes::from(v);
            self.hasher.update(self.block.clone());
        }
        Ok(take_into(&mut self.block, buf))
    }
}

/// Moves the start of `block` into `buf`; how much.
fn take_into(block: &mut bytes::Bytes, buf: &mut [u8]) -> usize {
    let n = buf.len().min(block.len());
    buf[..n].copy_from_slice(&block[..n]);
    bytes::Buf::advance(block, n);
    n
}

/// Reads a file in 1 MiB blocks on a thread of its own, a few blocks ahead: the
/// kernel's copy out of the page cache runs on another core while the sink
/// hashes, as the payload hash does in [`HashingReader`].
struct ReadAhead {
    blocks: std::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
    block: bytes::Bytes,
}

impl ReadAhead {
    fn new(file: File) -> Self {
        let (send, blocks) = std::sync::mpsc::sync_channel(4);
        // Ends at the end of the file, on an error, or when the reader is
        // dropped (the send fails).
        std::thread::spawn(move || {
            read_blocks(file, BLOCK_BYTES, |block| {
                send.send(block.map(bytes::Bytes::from)).is_ok()
            })
        });
        ReadAhead {
            blocks,
            block: bytes::Bytes::new(),
        }
    }
}

impl Read for ReadAhead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.block.is_empty() {
            match self.blocks.recv() {
                Ok(block) => self.block = block?,
                // The reading thread ended: the end of the file.
                Err(_) => return Ok(0),
            }
        }
        Ok(take_into(&mut self.block, buf))
    }
}

/// A part's bytes as [`verify`] hands them over, hashed on the way when the
/// part must be proved on its own (version 2, a sink that checks nothing).
struct PartReader<R> {
    inner: R,
    hasher: Option<Hasher>,
}

impl<R: Read> Read for PartReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// A chunk's payload as [`verify`] reads it: hashed on the way, or plain when
/// the blob digests or the part hashes cover it.
enum Payload {
    Hashed(HashingReader),
    Plain(ReadAhead),
}

impl Read for Payload {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Payload::Hashed(r) => r.read(buf),
            Payload::Plain(r) => r.read(buf),
        }
    }
}

/// Reads a chunk's whole payload, checks every header against the manifest, hands
/// each part to `sink`, and checks that every byte is what the manifest says.
///
/// - For a data chunk and a sink that [checks digests](PartSink::checks_digests):
///   by the blob digests, and the format's own bytes for the rest. This proves
///   the parts of a blob split across chunks only when its last part is read:
///   the caller reads the chunks in index order and checks
///   [`PartSink::pending`] after the last.
/// - For a version-2 data chunk read by a sink that checks nothing: part by
///   part, each against its blob's digest or, a split blob's, its own sha256,
///   and the format's own bytes for the rest.
/// - Otherwise (a parity file; a version-1 chunk read by a sink that checks
///   nothing): by the payload's sha256.
///
/// An error means the chunk must not be used ([`ChunkError::Split`]: one of
/// the chunks it names); what the sink received from it is untrusted (a sink
/// verifies blob digests before it keeps anything).
pub fn verify(head: &ChunkHead, sink: &mut dyn PartSink) -> Result<(), ChunkError> {
    let path = head.path.as_path();
    let ioe = |source| ChunkError::Io {
        path: path.to_path_buf(),
        source,
    };
    let corrupt = |reason: String| ChunkError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = File::open(path).map_err(ioe)?;
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(head.payload_offset)).map_err(ioe)?;
    let data_chunk = head.identity.parity.is_none();
    let derived = data_chunk && sink.checks_digests();
    let by_parts = data_chunk && !derived && head.manifest.version() == Version::V2;
    let mut r = if derived || by_parts {
        Payload::Plain(ReadAhead::new(file))
    } else {
        // The payload hash runs on its own thread while the sink reads.
        Payload::Hashed(HashingReader {
            file,
            block: bytes::Bytes::new(),
            hasher: airlock_oci::digest::BackgroundHasher::new(),
        })
    };
    let m = &head.manifest;
    let mtime = mtime_of(&m.created);
    let mut h = [0u8; 512];
    read_exact(&mut r, &mut h, path, "the chunk identity")?;
    let mut id = [0u8; 512];
    read_exact(&mut r, &mut id, path, "the chunk identity")?;
    // As the head was read (the file may have changed since), byte for byte.
    let identity = identity_bytes(&head.identity);
    expect_header(&h, CHUNK_ENTRY, identity.len() as u64, mtime, path)?;
    if id[..identity.len()] != identity[..] || id[identity.len()..].iter().any(|&b| b != 0) {
        return Err(corrupt(
            "the chunk identity entry differs from the one read before".into(),
        ));
    }
    let index = head.identity.chunk;
    let parts: Vec<(usize, usize, &PartRecord)> = if head.identity.parity.is_some() {
        Vec::new()
    } else {
        m.parts_in_chunk(index).collect()
    };
    if head.identity.parity.is_some() {
        let shard = m.parity[index as usize - 1].size - head.payload_offset - super::PARITY_EXTRA;
        read_exact(&mut r, &mut h, path, "the parity header")?;
        expect_header(&h, super::parity::SHARD_ENTRY, shard, mtime, path)?;
        let copied = std::io::copy(&mut (&mut r).take(shard), &mut std::io::sink()).map_err(ioe)?;
        if copied != shard {
            return Err(corrupt(
                "truncated: the file ends inside the parity shard".into(),
            ));
        }
    }
    for (b, p, part) in parts {
        let blob = &m.blobs[b];
        let name = blob.entry_name(p);
        read_exact(&mut r, &mut h, path, &format!("the header of {name}"))?;
        expect_header(&h, &name, part.length, mtime, path)?;
        let mut data = PartReader {
            inner: (&mut r).take(part.length),
            hasher: by_parts.then(Hasher::new),
        };
        sink.part(b, blob, p, part, &mut data).map_err(|e| {
            if e.kind() != std::io::ErrorKind::InvalidData {
                ChunkError::Store {
                    path: path.to_path_buf(),
                    source: e,
                }
            } else if blob.parts.len() > 1 {
                let mut chunks: Vec<u32> = blob.parts.iter().map(|p| p.chunk).collect();
                chunks.dedup();
                ChunkError::Split {
                    path: path.to_path_buf(),
                    reason: format!(
                        "{e} (its parts are in {}: one of them was damaged)",
                        split_across(m, &chunks)
                    ),
                    chunks,
                }
            } else {
                corrupt(e.to_string())
            }
        })?;
        let rest = std::io::copy(&mut data, &mut std::io::sink()).map_err(ioe)?;
        if derived && rest != 0 {
            // A sink that checks digests reads all it is handed: these bytes
            // were checked by nothing.
            return Err(ChunkError::Store {
                path: path.to_path_buf(),
                source: std::io::Error::other(format!(
                    "{rest} bytes of {name} were left unread by a sink that checks digests"
                )),
            });
        }
        if data.inner.limit() != 0 {
            return Err(corrupt(format!("truncated: the file ends inside {name}")));
        }
        if let Some(h) = data.hasher.take() {
            let actual = h.finish();
            let expected = match &part.sha256 {
                Some(hex) => hex.as_str(),
                None => blob.digest.hex(),
            };
            if actual.hex() != expected {
                return Err(corrupt(format!(
                    "{name} hashes to sha256:{}, the manifest says sha256:{expected}: the file was damaged in transfer",
                    actual.hex()
                )));
            }
        }
        let mut pad = [0u8; BLOCK as usize];
        let pad = &mut pad[..(padded(part.length) - part.length) as usize];
        read_exact(&mut r, pad, path, &format!("the padding of {name}"))?;
        if pad.iter().any(|&b| b != 0) {
            return Err(corrupt(format!("the padding after {name} is not zeros")));
        }
    }
    let mut trailer = [0u8; TRAILER_LEN as usize];
    read_exact(&mut r, &mut trailer, path, "the end-of-archive marker")?;
    if trailer.iter().any(|&b| b != 0) {
        return Err(corrupt("the end-of-archive marker is not zeros".into()));
    }
    let mut extra = [0u8; 1];
    let n = r.read(&mut extra).map_err(ioe)?;
    if n != 0 {
        return Err(corrupt("data after the end-of-archive marker".into()));
    }
    let Payload::Hashed(r) = r else {
        return Ok(());
    };
    let actual = r.hasher.finish();
    let list = if head.identity.parity.is_some() {
        &m.parity
    } else {
        &m.chunks
    };
    // Present in version 1 and in every parity file (`validate`).
    let Some(expected) = list[index as usize - 1].sha256.as_deref() else {
        return Err(corrupt(
            "the manifest lists no payload sha256 for it".into(),
        ));
    };
    if actual.hex() != expected {
        return Err(corrupt(format!(
            "payload sha256 is {}, the manifest says {expected}: the file was damaged in transfer",
            actual.hex()
        )));
    }
    Ok(())
}

/// The names of chunks `chunks` (indexes from 1), for a message.
fn split_across(m: &ImagesetManifest, chunks: &[u32]) -> String {
    let names: Vec<&str> = chunks
        .iter()
        .filter_map(|&c| m.chunks.get((c as usize).wrapping_sub(1)))
        .map(|c| c.name.as_str())
        .collect();
    names.join(", ")
}
