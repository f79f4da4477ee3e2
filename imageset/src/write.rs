//! Writing the chunk files of an imageset, crash-safely.
//!
//! The layout is planned first ([`prepare`]), so every entry's place in every file is
//! known before a byte of content arrives. The files are created under temporary
//! names (`<name>.part`) at their final size with all tar headers in place; blob
//! bytes are then written straight to their offsets, by as many concurrent downloads
//! as the caller likes, through [`BlobWriter`]. A chunk whose every part has been
//! written and verified is sealed at once, while later blobs still download: its
//! bytes synced and, in version 1, its payload hashed (unless parity files will
//! hash it). In version 2 no chunk is hashed: the blob digests prove the parts,
//! and a split blob's writer hashes each of its parts as the bytes pass.
//! [`Prepared::finish`] hashes what was not sealed (version 1), fills in the
//! hashes the writers and seals recorded, writes the manifest (now complete) into
//! every chunk, syncs, and only then renames the files to their final names. A
//! crash at any point leaves at most `.part` files, never a chunk under its final
//! name.

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::layout::{self, LayoutError};
use super::{
    BLOCK, CHUNK_ENTRY, ChunkIdentity, ChunkRecord, ImagesetManifest, PARITY_EXTRA, Version,
    chunk_file_name, padded, parity, parity_file_name,
};
use crate::signing::Signer;
use crate::validate::MAX_CHUNKS;
use airlock_oci::digest::{Digest, Hasher};

/// Why writing failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The layout is impossible.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A file could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The manifest could not be signed.
    #[error(transparent)]
    Sign(#[from] crate::signing::SigningError),
    /// Content did not match its digest or size.
    #[error("blob {digest}: {problem}")]
    Content {
        /// The blob.
        digest: Digest,
        /// What is wrong.
        problem: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WriteError + '_ {
    move |source| WriteError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The tar header Airlock writes for an entry: ustar, regular file, mode 0644, owner
/// 0:0 without names, modification time `mtime`. The reader compares headers with
/// this byte for byte, so the format has exactly one encoding of each entry.
pub fn entry_header(name: &str, size: u64, mtime: u64) -> [u8; 512] {
    let mut h = tar::Header::new_ustar();
    h.set_path(name).expect("entry names are short ASCII");
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    *h.as_bytes()
}

/// The bytes of a chunk identity entry's data (JSON, shorter than one block).
pub fn identity_bytes(id: &ChunkIdentity) -> Vec<u8> {
    let bytes = serde_json::to_vec(id).expect("identity serialises");
    debug_assert!(bytes.len() as u64 <= BLOCK);
    bytes
}

/// Seconds since the epoch of an RFC 3339 timestamp written by [`now`].
pub fn mtime_of(created: &str) -> u64 {
    chrono::DateTime::parse_from_rfc3339(created)
        .map(|t| t.timestamp().max(0) as u64)
        .unwrap_or(0)
}

/// The current time in the format of [`ImagesetManifest::created`].
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Where one part of a blob goes.
#[derive(Debug, Clone)]
pub struct Target {
    /// The temporary chunk file.
    pub path: PathBuf,
    /// Offset of the part's data in the file.
    pub offset: u64,
    /// Length of the part.
    pub length: u64,
}

/// An imageset whose chunk files exist under temporary names, waiting for content.
#[derive(Debug)]
pub struct Prepared {
    manifest: ImagesetManifest,
    reserve: u64,
    /// The signature's trusted comment and exact length, when signed.
    signature: Option<(String, u64)>,
    /// Data chunks, then parity files.
    temp: Vec<PathBuf>,
    finals: Vec<PathBuf>,
    /// For each blob, for each part: (chunk index from 0, data offset in the file).
    offsets: Vec<Vec<(usize, u64)>>,
    sealing: Arc<Sealing>,
    done: bool,
}

/// Data chunks sealed as soon as their last part is verified. Otherwise the
/// payload hashes and the write-back of every chunk waited for the last
/// download: at 1.7 GiB, a second or two of hashing on both cores and as much
/// idle waiting on the disk, with nothing left to overlap them.
#[derive(Debug)]
struct Sealing {
    /// Parts not yet written and verified, per data chunk.
    left: Vec<AtomicUsize>,
    /// Bytes written so far, per data chunk, to write it back every `step`.
    written: Vec<AtomicU64>,
    /// [`WRITE_BACK_STEP`]; smaller in tests.
    step: u64,
    /// Per data chunk, whether a write-back of it runs: one at a time, so that
    /// on a disk slower than the downloads syncs do not queue up, each holding
    /// a blocking thread.
    flushing: Vec<AtomicBool>,
    /// The write-backs run while chunks fill, with the chunk of each.
    flushes: Mutex<Vec<(usize, Flush)>>,
    /// The data chunks' temporary files.
    paths: Vec<PathBuf>,
    /// Where the payload starts: the metadata's length, the same in every
    /// file.
    meta: u64,
    /// Whether sealing hashes the payload: in version 1 without parity files,
    /// whose encoding hashes it otherwise.
    hash: bool,
    /// Version 2: the sha256 of each part of each split blob, by blob index,
    /// recorded once the blob is verified.
    part_hashes: Mutex<std::collections::HashMap<usize, Vec<String>>>,
    /// Per data chunk, its sealing once begun.
    sealed: Mutex<Vec<Option<Seal>>>,
    /// Per data chunk, held by each write into it. The kernel writes into one
    /// file one write at a time anyway (ext4 takes the inode's lock), and its
    /// waiters spin: when the copy into the page cache is slow (the VM's
    /// costly state), that spinning took 10 % of `create`'s CPU. Waiters here
    /// sleep (docs/benchmarks.md, stop 52).
    writing: Vec<Mutex<()>>,
}

/// A chunk's sealing: its payload hash when [`Sealing::hash`].
type Seal = tokio::task::JoinHandle<std::io::Result<Option<String>>>;

/// A chunk's write-back while it fills.
type Flush = tokio::task::JoinHandle<std::io::Result<()>>;

/// How much of a chunk is written between two write-backs of it while it
/// fills. Within a run of a few seconds the kernel starts writing back only
/// past `vm.dirty_background_ratio` (10 % of available memory: gigabytes on a
/// large host), so a whole chunk waited for its seal's sync, and the last
/// chunk's sync came after the last download with nothing left to overlap it.
const WRITE_BACK_STEP: u64 = 64 << 20;

impl Sealing {
    /// Counts `n` bytes written into `chunk`; each time the count passes a
    /// multiple of `step`, syncs what has reached the chunk (the last write
    /// may still be in flight) on a blocking thread, unless a sync of it
    /// still runs.
    fn wrote(self: &Arc<Self>, chunk: usize, n: u64) {
        let before = self.written[chunk].fetch_add(n, Ordering::Relaxed);
        if before / self.step == (before + n) / self.step
            || self.flushing[chunk].swap(true, Ordering::AcqRel)
        {
            return;
        }
        let path = self.paths[chunk].clone();
        let sealing = Arc::clone(self);
        let flush = tokio::task::spawn_blocking(move || {
            let synced = sync_data(&path);
            sealing.flushing[chunk].store(false, Ordering::Release);
            synced
        });
        // Kept for `finish`: a write-back error this sync sees is not reported
        // again to a sync through a file opened after it was seen, as the
        // seal's is.
        self.flushes
            .lock()
            .expect("not poisoned")
            .push((chunk, flush));
    }

    /// Counts one verified part of `chunk`, sealing it when it was the last.
    fn part_verified(&self, chunk: usize) {
        let left = self.left[chunk].fetch_sub(1, Ordering::AcqRel);
        debug_assert!(left >= 1, "chunk {chunk}: a part verified twice");
        if left != 1 {
            return;
        }
        let path = self.paths[chunk].clone();
        let (meta, hash) = (self.meta, self.hash);
        let task = tokio::task::spawn_blocking(move || {
            let sync = || sync_data(&path);
            if !hash {
                return sync().map(|()| None);
            }
            // Side by side, the hash reading the page cache while the sync
            // writes it back: the last chunk's seal, which nothing overlaps,
            // takes the longer of the two instead of both.
            std::thread::scope(|s| {
                let synced = std::thread::Builder::new().spawn_scoped(s, sync)?;
                let sha256 = hash_payload(&path, meta)?;
                synced.join().expect("a sync does not panic")?;
                Ok(Some(sha256))
            })
        });
        self.sealed.lock().expect("not poisoned")[chunk] = Some(task);
    }
}

/// Syncs the data of the file at `path` through a handle of its own.
fn sync_data(path: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .sync_data()
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if !self.done {
            for p in &self.temp {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

fn manifest_json(m: &ImagesetManifest) -> Vec<u8> {
    let mut v = serde_json::to_vec_pretty(m).expect("manifest serialises");
    v.push(b'\n');
    v
}

/// Metadata bytes: the manifest entry of `reserve` bytes, and the signature entry.
fn metadata_len(reserve: u64, signature: Option<u64>) -> u64 {
    BLOCK
        + padded(reserve)
        + BLOCK
        + padded(super::MANIFEST_SUM_LEN)
        + signature.map_or(0, |s| BLOCK + padded(s))
}

/// How the chunks of an imageset are written.
#[derive(Debug, Default, Clone, Copy)]
pub struct Options<'a> {
    /// Signs the manifest.
    pub signer: Option<&'a Signer>,
    /// Parity files to add (`--parity N`).
    pub parity: u32,
    /// The format version to write.
    pub version: Version,
}

/// Plans the chunks for `skeleton` (images and blobs filled in, no chunks or parts),
/// carrying the blobs listed in `carry`, and creates the chunk files under temporary
/// names in `out_dir`.
pub fn prepare(
    out_dir: &Path,
    mut skeleton: ImagesetManifest,
    carry: &[usize],
    options: &Options<'_>,
) -> Result<Prepared, WriteError> {
    let signature = options.signer.map(|s| {
        let comment = format!(
            "airlock imageset {} sequence {}",
            skeleton.uuid, skeleton.sequence
        );
        let len = s.signature_len(&comment) as u64;
        (comment, len)
    });
    let sig_len = signature.as_ref().map(|(_, l)| *l);
    let n_parity = options.parity;
    let version = options.version;
    skeleton.format = version.format().into();
    // The manifest's length must be known before its hashes are: each hash
    // is reserved as a placeholder of the same length.
    let placeholder = || Some("0".repeat(64));
    // Parity files hold one shard (the largest payload) plus a little structure;
    // data chunks leave room for it so that parity files fit the limit too.
    let data_limit = if n_parity > 0 {
        skeleton.limit.saturating_sub(PARITY_EXTRA)
    } else {
        skeleton.limit
    };
    // The manifest lists the chunks, so its size depends on the layout, which depends
    // on its size. Reserve, plan, measure, and grow the reserve until it holds; the
    // numbers that change between rounds are a few digits, so two rounds are typical.
    let mut reserve = 4096u64;
    let mut rounds = 0;
    let sizes = loop {
        rounds += 1;
        if rounds > 32 {
            // Each chunk holds so little besides the manifest that the manifest grows
            // faster than the chunks it adds make room.
            return Err(WriteError::Layout(LayoutError::LimitTooSmall {
                limit: skeleton.limit,
                metadata: metadata_len(reserve, sig_len),
                overhead: layout::CHUNK_OVERHEAD,
                minimum: 4 * metadata_len(reserve, sig_len),
            }));
        }
        let meta = metadata_len(reserve, sig_len);
        let sizes = layout::plan(&mut skeleton.blobs, carry, data_limit, meta).map_err(|e| {
            // Report the limit as given, and a minimum that leaves parity files room.
            match e {
                LayoutError::LimitTooSmall {
                    metadata,
                    overhead,
                    minimum,
                    ..
                } => LayoutError::LimitTooSmall {
                    limit: skeleton.limit,
                    metadata,
                    overhead,
                    minimum: minimum + (skeleton.limit - data_limit),
                },
                other => other,
            }
        })?;
        // Checked before the manifest listing them all is made.
        if sizes.len() > MAX_CHUNKS {
            // The payload spread over the most chunk files, each with the
            // metadata it has now and room for the manifest to list them
            // (about 200 bytes a chunk).
            let payload: u128 = sizes.iter().map(|&s| u128::from(s - meta)).sum();
            let mib = 1u128 << 20;
            let minimum = payload.div_ceil(MAX_CHUNKS as u128)
                + u128::from(meta + (skeleton.limit - data_limit))
                + 32 * mib;
            return Err(WriteError::Layout(LayoutError::TooManyChunks {
                limit: skeleton.limit,
                chunks: sizes.len(),
                max: MAX_CHUNKS,
                minimum: u64::try_from(minimum.next_multiple_of(mib)).unwrap_or(u64::MAX),
            }));
        }
        if version == Version::V2 {
            for b in skeleton.blobs.iter_mut().filter(|b| b.parts.len() > 1) {
                for p in &mut b.parts {
                    p.sha256 = placeholder();
                }
            }
        }
        let count = sizes.len() as u32;
        skeleton.chunks = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| ChunkRecord {
                index: i as u32 + 1,
                name: chunk_file_name(&skeleton.uuid, skeleton.sequence, i as u32 + 1, count),
                size,
                sha256: if version == Version::V1 {
                    placeholder()
                } else {
                    None
                },
            })
            .collect();
        let shard = sizes.iter().map(|s| s - meta).max().unwrap_or(0);
        skeleton.parity = (1..=n_parity)
            .map(|j| ChunkRecord {
                index: j,
                name: parity_file_name(&skeleton.uuid, skeleton.sequence, j, n_parity),
                size: meta + PARITY_EXTRA + shard,
                sha256: placeholder(),
            })
            .collect();
        let len = manifest_json(&skeleton).len() as u64;
        if len <= reserve {
            break sizes;
        }
        reserve = padded(len + len / 16 + BLOCK);
    };
    let count = sizes.len() as u32;
    let mtime = mtime_of(&skeleton.created);
    let meta = metadata_len(reserve, sig_len);
    let data_temp: Vec<PathBuf> = skeleton
        .chunks
        .iter()
        .map(|c| out_dir.join(format!("{}.part", c.name)))
        .collect();
    let mut left = vec![0; sizes.len()];
    for part in skeleton.blobs.iter().flat_map(|b| &b.parts) {
        left[part.chunk as usize - 1] += 1;
    }
    let mut prepared = Prepared {
        offsets: skeleton
            .blobs
            .iter()
            .map(|b| Vec::with_capacity(b.parts.len()))
            .collect(),
        sealing: Arc::new(Sealing {
            written: left.iter().map(|_| AtomicU64::new(0)).collect(),
            step: WRITE_BACK_STEP,
            flushing: left.iter().map(|_| AtomicBool::new(false)).collect(),
            flushes: Mutex::new(Vec::new()),
            left: left.into_iter().map(AtomicUsize::new).collect(),
            paths: data_temp.clone(),
            meta,
            hash: n_parity == 0 && version == Version::V1,
            part_hashes: Mutex::default(),
            sealed: Mutex::new((0..sizes.len()).map(|_| None).collect()),
            writing: (0..sizes.len()).map(|_| Mutex::new(())).collect(),
        }),
        manifest: skeleton,
        reserve,
        signature,
        temp: data_temp,
        finals: Vec::new(),
        done: false,
    };
    std::fs::create_dir_all(out_dir).map_err(io(out_dir))?;
    for (i, &size) in sizes.iter().enumerate() {
        let index = i as u32 + 1;
        let name = &prepared.manifest.chunks[i].name;
        let final_path = out_dir.join(name);
        let temp_path = prepared.temp[i].clone();
        prepared.finals.push(final_path);
        let mut f = std::fs::File::create(&temp_path).map_err(io(&temp_path))?;
        f.set_len(size).map_err(io(&temp_path))?;
        let mut pos = meta;
        let id = identity_bytes(&ChunkIdentity {
            uuid: prepared.manifest.uuid,
            sequence: prepared.manifest.sequence,
            chunk: index,
            chunks: count,
            parity: None,
        });
        let mut head = Vec::with_capacity(1024);
        head.extend_from_slice(&entry_header(CHUNK_ENTRY, id.len() as u64, mtime));
        head.extend_from_slice(&id);
        f.seek(SeekFrom::Start(pos)).map_err(io(&temp_path))?;
        f.write_all(&head).map_err(io(&temp_path))?;
        pos += super::CHUNK_ENTRY_LEN;
        let parts: Vec<(usize, usize, u64)> = prepared
            .manifest
            .parts_in_chunk(index)
            .map(|(b, p, part)| (b, p, part.length))
            .collect();
        for (b, p, length) in parts {
            let entry = prepared.manifest.blobs[b].entry_name(p);
            f.seek(SeekFrom::Start(pos)).map_err(io(&temp_path))?;
            f.write_all(&entry_header(&entry, length, mtime))
                .map_err(io(&temp_path))?;
            prepared.offsets[b].push((i, pos + BLOCK));
            pos += BLOCK + padded(length);
        }
        debug_assert_eq!(pos + super::TRAILER_LEN, size);
    }
    for record in prepared.manifest.parity.clone() {
        let final_path = out_dir.join(&record.name);
        let temp_path = out_dir.join(format!("{}.part", record.name));
        prepared.temp.push(temp_path.clone());
        prepared.finals.push(final_path);
        let mut f = std::fs::File::create(&temp_path).map_err(io(&temp_path))?;
        f.set_len(record.size).map_err(io(&temp_path))?;
        let id = identity_bytes(&ChunkIdentity {
            uuid: prepared.manifest.uuid,
            sequence: prepared.manifest.sequence,
            chunk: record.index,
            chunks: count,
            parity: Some(n_parity),
        });
        let shard = record.size - meta - PARITY_EXTRA;
        let mut head = Vec::with_capacity(1536);
        head.extend_from_slice(&entry_header(CHUNK_ENTRY, id.len() as u64, mtime));
        head.extend_from_slice(&id);
        head.resize(super::CHUNK_ENTRY_LEN as usize, 0);
        head.extend_from_slice(&entry_header(parity::SHARD_ENTRY, shard, mtime));
        f.seek(SeekFrom::Start(meta)).map_err(io(&temp_path))?;
        f.write_all(&head).map_err(io(&temp_path))?;
    }
    Ok(prepared)
}

impl Prepared {
    /// The manifest as planned: its hashes are placeholders of their length
    /// (version 1's `chunks[].sha256`, version 2's `parts[].sha256`) until
    /// [`Prepared::finish`].
    pub fn manifest(&self) -> &ImagesetManifest {
        &self.manifest
    }

    /// Where the parts of blob `index` go, in blob order; empty if not carried.
    pub fn targets(&self, index: usize) -> Vec<Target> {
        self.manifest.blobs[index]
            .parts
            .iter()
            .zip(&self.offsets[index])
            .map(|(part, &(chunk, offset))| Target {
                path: self.temp[chunk].clone(),
                offset,
                length: part.length,
            })
            .collect()
    }

    /// A writer for the content of blob `index`.
    pub fn blob_writer(&self, index: usize) -> BlobWriter {
        let blob = &self.manifest.blobs[index];
        let split = blob.parts.len() > 1 && self.manifest.version() == Version::V2;
        BlobWriter {
            index,
            part_hashers: if split {
                blob.parts.iter().map(|_| Hasher::new()).collect()
            } else {
                Vec::new()
            },
            digest: blob.digest.clone(),
            size: blob.size,
            targets: self.targets(index),
            chunks: self.offsets[index].iter().map(|&(c, _)| c).collect(),
            sealing: self.sealing.clone(),
            current: 0,
            written: 0,
            in_flight: None,
            hasher: Some(Hasher::new()),
            received: 0,
        }
    }

    /// Hashes every chunk's payload not hashed when it was sealed (version 1),
    /// fills in the part hashes the blob writers recorded (version 2), computes
    /// the parity files, writes the (signed) manifest into every file, syncs, and
    /// gives the files their final names. Returns the final manifest and the
    /// paths (chunks, then parity files). A write-back error that a sync met
    /// while the chunks filled fails it: the seals' syncs are not told of it.
    pub async fn finish(
        mut self,
        signer: Option<&Signer>,
    ) -> Result<(ImagesetManifest, Vec<PathBuf>), WriteError> {
        let meta = self.sealing.meta;
        let k = self.manifest.chunks.len();
        let sealings = std::mem::take(&mut *self.sealing.sealed.lock().expect("not poisoned"));
        let mut sealed = Vec::with_capacity(k);
        for (task, path) in sealings.into_iter().zip(&self.temp) {
            sealed.push(match task {
                Some(task) => task
                    .await
                    .expect("sealing task does not panic")
                    .map_err(io(path))?,
                None => None,
            });
        }
        let flushes = std::mem::take(&mut *self.sealing.flushes.lock().expect("not poisoned"));
        for (chunk, flush) in flushes {
            flush
                .await
                .expect("a write-back does not panic")
                .map_err(io(&self.temp[chunk]))?;
        }
        let data: Vec<(PathBuf, u64)> = self.temp[..k]
            .iter()
            .zip(&self.manifest.chunks)
            .map(|(p, c)| (p.clone(), c.size - meta))
            .collect();
        let parity_paths = self.temp[k..].to_vec();
        let shard = self
            .manifest
            .parity
            .first()
            .map_or(0, |p| p.size - meta - PARITY_EXTRA);
        let v1 = self.manifest.version() == Version::V1;
        let (hashes, parity_hashes) =
            tokio::task::spawn_blocking(move || -> Result<_, WriteError> {
                if parity_paths.is_empty() {
                    if !v1 {
                        return Ok((None, Vec::new()));
                    }
                    let unsealed: Vec<&Path> = data
                        .iter()
                        .zip(&sealed)
                        .filter(|(_, hash)| hash.is_none())
                        .map(|((p, _), _)| p.as_path())
                        .collect();
                    let mut hashed = hash_payloads(&unsealed, meta)?.into_iter();
                    let hashes = sealed
                        .into_iter()
                        .map(|h| h.unwrap_or_else(|| hashed.next().expect("one per unsealed")))
                        .collect();
                    return Ok((Some(hashes), Vec::new()));
                }
                let hashes =
                    parity::encode(&data, meta, shard, &parity_paths, v1).map_err(|e| {
                        WriteError::Io {
                            path: parity_paths[0].clone(),
                            source: e,
                        }
                    })?;
                let parity_hashes = parity_paths
                    .iter()
                    .map(|p| hash_payload(p, meta).map_err(io(p)))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((hashes, parity_hashes))
            })
            .await
            .expect("hashing task does not panic")?;
        for (record, hash) in self
            .manifest
            .chunks
            .iter_mut()
            .zip(hashes.into_iter().flatten())
        {
            record.sha256 = Some(hash);
        }
        for (record, hash) in self.manifest.parity.iter_mut().zip(parity_hashes) {
            record.sha256 = Some(hash);
        }
        let mut part_hashes =
            std::mem::take(&mut *self.sealing.part_hashes.lock().expect("not poisoned"));
        for (i, blob) in self.manifest.blobs.iter_mut().enumerate() {
            if blob.parts.iter().all(|p| p.sha256.is_none()) {
                continue;
            }
            let hashes = part_hashes.remove(&i).ok_or_else(|| WriteError::Content {
                digest: blob.digest.clone(),
                problem: "the imageset was finished before this blob was".into(),
            })?;
            for (part, hash) in blob.parts.iter_mut().zip(hashes) {
                part.sha256 = Some(hash);
            }
        }
        let mut json = manifest_json(&self.manifest);
        if json.len() as u64 > self.reserve {
            // Cannot happen (the hashes filled in have the placeholders' length), but
            // a truncated manifest must never be written.
            return Err(WriteError::Io {
                path: self.temp[0].clone(),
                source: std::io::Error::other("the manifest outgrew the space reserved for it"),
            });
        }
        // Pad with spaces, which JSON ignores, to the reserved size: the entry's size
        // in its header was fixed when the files were laid out.
        json.resize(self.reserve as usize, b' ');
        let mtime = mtime_of(&self.manifest.created);
        let mut head = entry_header(super::MANIFEST_ENTRY, self.reserve, mtime).to_vec();
        head.extend_from_slice(&json);
        head.resize(padded(head.len() as u64) as usize, 0);
        head.extend_from_slice(&entry_header(
            super::MANIFEST_SUM_ENTRY,
            super::MANIFEST_SUM_LEN,
            mtime,
        ));
        head.extend_from_slice(format!("{}\n", Digest::of(&json).hex()).as_bytes());
        head.resize(padded(head.len() as u64) as usize, 0);
        match (&self.signature, signer) {
            (Some((comment, len)), Some(signer)) => {
                let sig = signer.sign(&json, comment)?;
                debug_assert_eq!(sig.len() as u64, *len);
                head.extend_from_slice(&entry_header(super::SIGNATURE_ENTRY, *len, mtime));
                head.extend_from_slice(&sig);
                head.resize(meta as usize, 0);
            }
            (None, None) => {}
            _ => panic!("finish must get the signer the imageset was prepared for"),
        }
        debug_assert_eq!(head.len() as u64, meta);
        let head = std::sync::Arc::new(head);
        for path in self.temp.clone() {
            let head = head.clone();
            tokio::task::spawn_blocking(move || -> Result<(), WriteError> {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io(&path))?;
                f.write_all(&head).map_err(io(&path))?;
                f.sync_all().map_err(io(&path))
            })
            .await
            .expect("sync task does not panic")?;
        }
        for (temp, fin) in self.temp.iter().zip(&self.finals) {
            std::fs::rename(temp, fin).map_err(io(fin))?;
        }
        if let Some(dir) = self.finals.first().and_then(|p| p.parent()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }
        self.done = true;
        Ok((self.manifest.clone(), self.finals.clone()))
    }
}

/// sha256 (hex) of a file from `offset` to its end: a chunk's or parity file's
/// payload hash as the manifest records it.
fn hash_payload(path: &std::path::Path, offset: u64) -> std::io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut hasher = airlock_oci::digest::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finish().hex().to_string())
}

/// The payload hash of every file of `paths`, as many at once as there are cores:
/// it is the last step before the files are final, after every download, and one
/// core would leave the others idle through a pass over the whole imageset.
fn hash_payloads(paths: &[&Path], meta: u64) -> Result<Vec<String>, WriteError> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    // Once one file fails the others are not worth hashing.
    let failed = std::sync::atomic::AtomicBool::new(false);
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(paths.len());
    let mut hashes: Vec<Option<String>> = vec![None; paths.len()];
    let done = std::sync::Mutex::new(&mut hashes);
    std::thread::scope(|s| -> Result<(), WriteError> {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| -> Result<(), WriteError> {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(p) = paths.get(i) else {
                            return Ok(());
                        };
                        if failed.load(std::sync::atomic::Ordering::Relaxed) {
                            return Ok(());
                        }
                        let h = hash_payload(p, meta).map_err(|e| {
                            failed.store(true, std::sync::atomic::Ordering::Relaxed);
                            io(p)(e)
                        })?;
                        done.lock().expect("not poisoned")[i] = Some(h);
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("a hashing thread does not panic"))
    })?;
    Ok(hashes
        .into_iter()
        .map(|h| h.expect("every file was hashed"))
        .collect())
}

/// A write of a blob's bytes, which hands back the file it wrote to.
type InFlight = tokio::task::JoinHandle<std::io::Result<std::fs::File>>;

/// Writes one blob's bytes into its parts, in order, checking size and digest
/// (the digest left to the source when it is [`BlobWriter::checked_by_source`]).
#[derive(Debug)]
pub struct BlobWriter {
    /// The blob's index in the manifest.
    index: usize,
    /// Version 2, a split blob: a hash of each part, for `parts[].sha256`.
    part_hashers: Vec<Hasher>,
    digest: Digest,
    size: u64,
    targets: Vec<Target>,
    /// The data chunk of each target.
    chunks: Vec<usize>,
    sealing: Arc<Sealing>,
    current: usize,
    written: u64,
    /// The last write, on a blocking thread, with its target: one at a time,
    /// so that the next frame downloads and hashes while it runs and no more
    /// than one frame per blob waits in memory. It hands back its file for the
    /// next write to the same part: files are opened per part, not per chunk
    /// for the whole run, since an imageset may have more chunks than a
    /// process may hold files open.
    in_flight: Option<(usize, InFlight)>,
    /// The blob's hash; none when its source proves the digest
    /// ([`BlobWriter::checked_by_source`]).
    hasher: Option<Hasher>,
    received: u64,
}

impl BlobWriter {
    /// A writer for bytes whose source checks them against the blob's digest
    /// and fails before its end when they do not match, as every blob stream
    /// of the registry client does: hashing them here as well cost `create` a
    /// second sha256 pass over everything it downloads, over a quarter of its
    /// CPU (docs/benchmarks.md, stop 52). The writer still checks the size,
    /// and hashes a split blob's parts (version 2). The caller must not
    /// [`finish`](BlobWriter::finish) it unless the source ended without an
    /// error.
    pub fn checked_by_source(mut self) -> Self {
        self.hasher = None;
        self
    }

    fn content(&self, problem: String) -> WriteError {
        WriteError::Content {
            digest: self.digest.clone(),
            problem,
        }
    }

    /// Appends bytes of the blob. The bytes themselves go to the write, not
    /// a copy: `tokio::fs::File` would copy every frame into a buffer of its
    /// own first.
    pub async fn write(&mut self, mut bytes: Bytes) -> Result<(), WriteError> {
        if self.received + bytes.len() as u64 > self.size {
            return Err(self.content(format!(
                "source sent more than the {} bytes its manifest declares",
                self.size
            )));
        }
        self.received += bytes.len() as u64;
        if let Some(h) = &mut self.hasher {
            h.update(&bytes);
        }
        while !bytes.is_empty() {
            let target = &self.targets[self.current];
            let room = target.length - self.written;
            if room == 0 {
                self.current += 1;
                self.written = 0;
                continue;
            }
            let n = (room as usize).min(bytes.len());
            let piece = bytes.split_to(n);
            if let Some(h) = self.part_hashers.get_mut(self.current) {
                h.update(&piece);
            }
            let offset = target.offset + self.written;
            // The file, or where to open it.
            let file = match self.settle().await? {
                Some((target, file)) if target == self.current => Ok(file),
                _ => Err(self.targets[self.current].path.clone()),
            };
            let (sealing, chunk) = (self.sealing.clone(), self.chunks[self.current]);
            let write = tokio::task::spawn_blocking(move || {
                let file = match file {
                    Ok(f) => f,
                    Err(path) => std::fs::OpenOptions::new().write(true).open(path)?,
                };
                // A panic elsewhere cannot leave the lock's `()` inconsistent.
                let _one = sealing.writing[chunk]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                file.write_all_at(&piece, offset)?;
                Ok(file)
            });
            self.in_flight = Some((self.current, write));
            self.sealing.wrote(self.chunks[self.current], n as u64);
            self.written += n as u64;
        }
        Ok(())
    }

    /// Waits for the write in flight, if any, and returns its target and
    /// file. The write stays recorded until it is done: a caller that drops
    /// this future and then abandons the writer still waits for it.
    async fn settle(&mut self) -> Result<Option<(usize, std::fs::File)>, WriteError> {
        let Some((target, write)) = &mut self.in_flight else {
            return Ok(None);
        };
        let target = *target;
        // A blocking task fails to join only when the runtime shuts down.
        let done = write
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        self.in_flight = None;
        let file = done.map_err(io(&self.targets[target].path))?;
        Ok(Some((target, file)))
    }

    /// Waits for the write in flight, if any, of a writer given up on (its
    /// transfer failed): a retry must not have its bytes overwritten by a
    /// write of the attempt before, landing late in a chunk already sealed.
    pub async fn abandon(mut self) {
        let _ = self.settle().await;
    }

    /// Checks that the whole blob arrived and, unless its source checked
    /// that, that it hashes to its digest; a chunk whose parts are all
    /// verified then is sealed.
    pub async fn finish(mut self) -> Result<(), WriteError> {
        self.settle().await?;
        if self.received != self.size {
            return Err(self.content(format!(
                "source sent {} bytes, its manifest declares {}",
                self.received, self.size
            )));
        }
        if let Some(h) = self.hasher.take() {
            let actual = h.finish();
            if actual != self.digest {
                return Err(self.content(format!("content hashes to {actual}")));
            }
        }
        if !self.part_hashers.is_empty() {
            let hashes = std::mem::take(&mut self.part_hashers)
                .into_iter()
                .map(|h| h.finish().hex().to_string())
                .collect();
            self.sealing
                .part_hashes
                .lock()
                .expect("not poisoned")
                .insert(self.index, hashes);
        }
        // Counted only here, once the bytes are verified: a retried blob is
        // written again but finished once, so no chunk is sealed while a part
        // of it may still change.
        for &chunk in &self.chunks {
            self.sealing.part_verified(chunk);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two blobs, 100,000 and 200,000 bytes, planned with a 150,000-byte
    /// limit: blob 0 fills chunk 1, blob 1 is split over chunks 2 and 3.
    fn two_blobs(dir: &Path) -> (Prepared, Vec<Vec<u8>>) {
        two_blobs_in(dir, Version::default())
    }

    fn two_blobs_in(dir: &Path, version: Version) -> (Prepared, Vec<Vec<u8>>) {
        let contents: Vec<Vec<u8>> = [100_000u32, 200_000]
            .iter()
            .map(|&n| (0..n).map(|i| (i * 31 % 251) as u8).rev().collect())
            .collect();
        let skeleton = ImagesetManifest {
            format: crate::FORMAT.into(),
            uuid: uuid::Uuid::from_u128(7),
            sequence: 1,
            full: true,
            created: "2026-12-06T10:00:00Z".into(),
            limit: 150_000,
            chunks: Vec::new(),
            parity: Vec::new(),
            images: Vec::new(),
            blobs: contents
                .iter()
                .map(|c| crate::BlobRecord {
                    digest: Digest::of(c),
                    size: c.len() as u64,
                    media_type: None,
                    repository: "example.com/app".into(),
                    parts: Vec::new(),
                })
                .collect(),
            releases: Vec::new(),
            deletes: Vec::new(),
        };
        let options = Options {
            version,
            ..Options::default()
        };
        let prepared = prepare(dir, skeleton, &[0, 1], &options).unwrap();
        (prepared, contents)
    }

    /// A chunk is synced (in version 1 hashed) once every part in it is
    /// verified, while other blobs are still to come; a blob that fails its
    /// digest counts for nothing, so no chunk is sealed while a part of it may
    /// still change. In version 2 the split blob's parts get the sha256 of what
    /// was written, and no chunk a hash.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_chunk_is_sealed_once_its_parts_are_verified_and_not_before() {
        for version in [Version::V1, Version::V2] {
            sealed_once_verified(version).await;
        }
    }

    async fn sealed_once_verified(version: Version) {
        let dir = tempfile::tempdir().unwrap();
        let (prepared, contents) = two_blobs_in(dir.path(), version);
        let chunks_of = |b: usize| -> Vec<u32> {
            prepared.manifest().blobs[b]
                .parts
                .iter()
                .map(|p| p.chunk)
                .collect()
        };
        assert_eq!((chunks_of(0), chunks_of(1)), (vec![1], vec![2, 3]));
        let sealed = || -> Vec<bool> {
            let s = prepared.sealing.sealed.lock().unwrap();
            s.iter().map(Option::is_some).collect()
        };
        let write = |b: usize, bytes: Vec<u8>| {
            let mut w = prepared.blob_writer(b);
            async move {
                w.write(bytes.into()).await?;
                w.finish().await
            }
        };

        // A failed attempt at the split blob records no part hashes; the
        // retry's are those of what it wrote.
        let mut altered = contents[1].clone();
        altered[150_000] ^= 1;
        assert!(write(1, altered).await.is_err());
        assert_eq!(sealed(), [false, false, false]);
        write(1, contents[1].clone()).await.unwrap();
        assert_eq!(sealed(), [false, true, true]);
        let mut altered = contents[0].clone();
        altered[5] ^= 1;
        assert!(write(0, altered).await.is_err());
        assert_eq!(sealed(), [false, true, true]);
        write(0, contents[0].clone()).await.unwrap();
        assert_eq!(sealed(), [true, true, true]);

        let meta = prepared.sealing.meta;
        let paths = prepared.temp.clone();
        let (manifest, _) = prepared.finish(None).await.unwrap();
        for (record, path) in manifest.chunks.iter().zip(&paths) {
            let name = dir.path().join(&record.name);
            let payload = hash_payload(&name, meta).unwrap();
            let listed = (version == Version::V1).then_some(payload);
            assert_eq!(record.sha256, listed);
            assert!(!path.exists(), "renamed to its final name");
        }
        let mut offset = 0;
        for part in &manifest.blobs[1].parts {
            let bytes = &contents[1][offset..offset + part.length as usize];
            let listed = (version == Version::V2).then(|| Digest::of(bytes).hex().to_string());
            assert_eq!(part.sha256, listed);
            offset += part.length as usize;
        }
    }

    /// The write-backs started while chunk 1 fills, once they have run.
    async fn flushed(prepared: &Prepared) -> usize {
        let flushes = std::mem::take(&mut *prepared.sealing.flushes.lock().unwrap());
        let n = flushes.len();
        for (chunk, flush) in flushes {
            assert_eq!(chunk, 0);
            flush.await.unwrap().unwrap();
        }
        n
    }

    /// A chunk is written back each time another step of it is written,
    /// while its blob is still downloading: otherwise the last chunk's whole
    /// write-back waits until after the last download.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_filling_chunk_is_written_back_every_step_while_it_fills() {
        let dir = tempfile::tempdir().unwrap();
        let (mut prepared, contents) = two_blobs(dir.path());
        Arc::get_mut(&mut prepared.sealing).unwrap().step = 30_000;
        let mut w = prepared.blob_writer(0);
        w.write(contents[0][..20_000].to_vec().into())
            .await
            .unwrap();
        assert_eq!(flushed(&prepared).await, 0, "less than a step written");
        w.write(contents[0][20_000..40_000].to_vec().into())
            .await
            .unwrap();
        assert_eq!(flushed(&prepared).await, 1, "past the first step");
        w.write(contents[0][40_000..50_000].to_vec().into())
            .await
            .unwrap();
        assert_eq!(flushed(&prepared).await, 0, "still short of the second");
        w.write(contents[0][50_000..95_000].to_vec().into())
            .await
            .unwrap();
        assert_eq!(flushed(&prepared).await, 1, "past the second and third");
    }

    /// A write-back error is not reported again to a sync through a file
    /// opened after it was seen: one met by a write-back while the chunk
    /// filled fails the imageset, naming the chunk, though the seal's own sync
    /// succeeded after it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_back_error_met_while_filling_fails_the_imageset() {
        let dir = tempfile::tempdir().unwrap();
        let (prepared, contents) = two_blobs(dir.path());
        let failed = tokio::task::spawn_blocking(|| Err(std::io::Error::other("EIO")));
        prepared.sealing.flushes.lock().unwrap().push((1, failed));
        for (b, bytes) in contents.iter().enumerate() {
            let mut w = prepared.blob_writer(b);
            w.write(bytes.clone().into()).await.unwrap();
            w.finish().await.unwrap();
        }
        let chunk_2 = prepared.temp[1].clone();
        match prepared.finish(None).await {
            Err(WriteError::Io { path, source }) => {
                assert_eq!(path, chunk_2);
                assert_eq!(source.to_string(), "EIO");
            }
            other => panic!("expected the write-back's error, got {other:?}"),
        }
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "no chunk file is left behind: {left:?}");
    }

    /// Puts a directory where chunk `k`'s file was: opening it for writing
    /// fails.
    fn unwritable(prepared: &Prepared, k: usize) -> PathBuf {
        let path = prepared.temp[k].clone();
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        path
    }

    /// A write runs on a blocking thread after `write` has returned; its
    /// failure still fails the blob, naming the chunk file: when the writer
    /// finishes, or at the next write, though that one goes to the next
    /// chunk. A blob whose write failed does not count as verified.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_write_fails_the_blob_naming_its_chunk_file() {
        let dir = tempfile::tempdir().unwrap();
        let (prepared, contents) = two_blobs(dir.path());
        let named = |result: Result<(), WriteError>| match result {
            Err(WriteError::Io { path, .. }) => path,
            other => panic!("expected the write's error, got {other:?}"),
        };

        let chunk_1 = unwritable(&prepared, 0);
        let mut w = prepared.blob_writer(0);
        w.write(contents[0].clone().into()).await.unwrap();
        assert_eq!(named(w.finish().await), chunk_1);

        // Blob 1 fills chunk 2, then goes on into chunk 3.
        let chunk_2 = unwritable(&prepared, 1);
        let mut w = prepared.blob_writer(1);
        assert_eq!(named(w.write(contents[1].clone().into()).await), chunk_2);
        w.abandon().await;

        let left: Vec<usize> = prepared
            .sealing
            .left
            .iter()
            .map(|l| l.load(Ordering::Acquire))
            .collect();
        assert_eq!(left, [1, 1, 1], "no part counts as verified");
    }

    #[test]
    fn headers_are_ustar_regular_files() {
        let h = entry_header("blobs/sha256/abc", 1234, 1_700_000_000);
        let parsed = tar::Header::from_byte_slice(&h);
        assert_eq!(parsed.entry_type(), tar::EntryType::Regular);
        assert_eq!(parsed.size().unwrap(), 1234);
        assert_eq!(parsed.path().unwrap().to_str(), Some("blobs/sha256/abc"));
        assert_eq!(&h[257..263], b"ustar\0");
    }

    #[test]
    fn timestamps_round_trip_to_mtime() {
        assert_eq!(mtime_of("2026-11-24T10:00:00Z"), 1_795_514_400);
        assert!(mtime_of(&now()) > 1_700_000_000);
    }
}
