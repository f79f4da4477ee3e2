//! The content store: verified blobs and manifests by digest, on disk.
//!
//! `<workspace>/blobs/sha256/<hex>` holds content whose sha256 was checked when it
//! entered; nothing else is ever put there. Content is assembled in
//! `<workspace>/tmp/` (a split blob arrives in parts, chunk after chunk), hashed as
//! it is written, synced, and renamed into place only when it matches its digest.
//! The rename is the commit: after a crash the store holds whole, verified blobs
//! and leftovers in `tmp/`, which the next ingest clears.
//!
//! Blobs are synced in batches, by a thread of their own, rather than one by one
//! as they are read. An operator catalog brings thousands of blobs of a few KiB,
//! and each file's own `fsync` costs a journal commit (about a millisecond on
//! ext4, whatever the size): 12,200 of them took 6–12 s where one `syncfs` per
//! batch takes under 2 s. A release brings large blobs, whose write-back is the
//! cost: synced beside the reading and hashing of the next batch, it no longer
//! adds to it. The order is the same (written, verified, synced, then renamed),
//! so the rule above holds.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use airlock_common::io::FileError;
use airlock_imageset::read::{Assembly, DigestCheck, PartSink, altered};
use airlock_imageset::{BlobRecord, PartRecord};
use airlock_oci::digest::{Digest, Hasher};

/// A temporary file name no other writer uses, in this process or another: two
/// writers of the same blob must never share (and truncate) one file.
fn unique_name(digest: &Digest, what: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}.{what}.{}.{n}", digest.hex(), std::process::id())
}

/// The content store of a workspace.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// The store under the workspace directory `workspace`, created if missing.
    pub fn open(workspace: &Path) -> std::io::Result<Self> {
        let store = Store {
            root: workspace.to_path_buf(),
        };
        std::fs::create_dir_all(store.blobs_dir())?;
        std::fs::create_dir_all(store.tmp_dir())?;
        Ok(store)
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    /// Where the blob with `digest` lives (whether or not it is there).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    /// Whether the store holds `digest`.
    pub fn has(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// The bytes of a (small) stored object, such as a manifest.
    pub fn read(&self, digest: &Digest) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.path(digest))
    }

    /// Removes leftovers of interrupted ingests.
    pub fn clear_tmp(&self) -> std::io::Result<()> {
        for entry in std::fs::read_dir(self.tmp_dir())? {
            let entry = entry?;
            std::fs::remove_file(entry.path())?;
        }
        Ok(())
    }

    /// A sink that stores the parts of chunks as they are verified.
    pub fn sink(&self) -> std::io::Result<StoreSink<'_>> {
        Ok(StoreSink {
            store: self,
            // Opened before any blob is written: `syncfs` reports the write-back
            // errors recorded since its handle was opened, and must see all of
            // this sink's.
            tmp: Arc::new(File::open(self.tmp_dir())?),
            written: Assembly::default(),
            held: DigestCheck::default(),
            unsynced: Vec::new(),
            unsynced_bytes: 0,
            committing: None,
            stored: 0,
            announce: None,
        })
    }
}

/// Told the digest of each blob as it enters the store, whole, verified and
/// synced: what may travel before the imageset it came in is accepted (see
/// `early`).
pub type Announce = futures::channel::mpsc::UnboundedSender<Digest>;

/// Whether `syncfs` reports write-back errors of the files it syncs: Linux
/// 5.8 and later. Before, it reported none, so each blob is synced on its own
/// (its `fsync` does report them) before it joins a batch.
fn syncfs_reports_errors() -> bool {
    static REPORTS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REPORTS.get_or_init(|| at_least_5_8(&rustix::system::uname().release().to_string_lossy()))
}

/// Whether a kernel release (`uname -r`) is Linux 5.8 or later; one that does
/// not parse is taken for older, which only costs speed.
fn at_least_5_8(release: &str) -> bool {
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    version >= (5, 8)
}

/// A batch is handed over to be synced and renamed into place when it holds
/// this many blobs...
const BATCH_BLOBS: usize = 1024;
/// ...or this many bytes, so that little verified work waits unsynced.
const BATCH_BYTES: u64 = 64 << 20;

/// Syncs a batch of verified blobs in `tmp/` and renames each into place,
/// announcing each; returns how many were. On an error, the batch's files
/// still in `tmp/` are removed.
fn commit(
    store: &Store,
    tmp: &File,
    mut batch: Vec<(PathBuf, Digest)>,
    announce: Option<&Announce>,
) -> std::io::Result<u64> {
    let result = (|| {
        rustix::fs::syncfs(tmp)?;
        let mut renamed = 0;
        while let Some((path, digest)) = batch.last() {
            std::fs::rename(path, store.path(digest))?;
            if let Some(a) = announce {
                // A listener gone (it gave up) is no reason to stop storing.
                let _ = a.unbounded_send(digest.clone());
            }
            batch.pop();
            renamed += 1;
        }
        Ok(renamed)
    })();
    for (path, _) in &batch {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// A blob being written into the store's `tmp/`.
struct Partial {
    path: PathBuf,
    file: File,
}

/// Receives parts from [`airlock_imageset::read::verify`] and commits each
/// blob to the store once all of it has arrived and matches its digest. Chunks must
/// be verified in index order, so that the parts of a split blob arrive in order.
pub struct StoreSink<'a> {
    store: &'a Store,
    /// The handle every batch's `syncfs` goes through.
    tmp: Arc<File>,
    written: Assembly<Partial>,
    /// Blobs the store already held when their first part came: checked, not
    /// written, since no payload hash covers a chunk read into the store.
    held: DigestCheck,
    /// Blobs verified and written, closed but not yet synced, in `tmp/`.
    unsynced: Vec<(PathBuf, Digest)>,
    unsynced_bytes: u64,
    /// The batch before, being synced and renamed: at most one at a time.
    committing: Option<std::thread::JoinHandle<std::io::Result<u64>>>,
    stored: u64,
    announce: Option<Announce>,
}

impl StoreSink<'_> {
    /// Announces every blob this sink commits to `announce`.
    pub fn announcing(mut self, announce: Option<Announce>) -> Self {
        self.announce = announce;
        self
    }

    /// Waits for the batch being committed, if any.
    fn wait(&mut self) -> std::io::Result<()> {
        if let Some(thread) = self.committing.take() {
            self.stored += thread.join().expect("a commit thread does not panic")?;
        }
        Ok(())
    }

    /// Hands the waiting batch over to be committed, once the one before is.
    fn hand_over(&mut self) -> std::io::Result<()> {
        self.wait()?;
        let batch = std::mem::take(&mut self.unsynced);
        self.unsynced_bytes = 0;
        let (store, tmp, announce) = (self.store.clone(), self.tmp.clone(), self.announce.clone());
        // A thread that cannot start leaves the batch's files in `tmp/`, which
        // the next ingest clears.
        let thread = std::thread::Builder::new()
            .name("store-commit".into())
            .spawn(move || commit(&store, &tmp, batch, announce.as_ref()))?;
        self.committing = Some(thread);
        Ok(())
    }

    /// Commits what waits and makes the renames durable: after a power loss, a
    /// blob whose acceptance was recorded must still be there. Returns the blobs
    /// this sink committed to the store.
    pub fn finish(mut self) -> std::io::Result<u64> {
        if !self.unsynced.is_empty() {
            self.hand_over()?;
        }
        self.wait()?;
        File::open(self.store.blobs_dir())?.sync_all()?;
        Ok(self.stored)
    }
}

impl PartSink for StoreSink<'_> {
    fn part(
        &mut self,
        index: usize,
        blob: &BlobRecord,
        part: usize,
        record: &PartRecord,
        data: &mut dyn Read,
    ) -> std::io::Result<()> {
        // Decided at the first part: a blob begun is finished the same way.
        if part == 0 && self.store.has(&blob.digest) || part != 0 && !self.written.begun(index) {
            self.held.part(index, blob, part, record, data)?;
            if record.offset + record.length == blob.size && !self.store.has(&blob.digest) {
                // Checked but not kept: another process emptied the store meanwhile.
                return Err(std::io::Error::other(format!(
                    "blob {} left the store while the chunk was read; run again",
                    blob.digest
                )));
            }
            return Ok(());
        }
        let begin = || {
            let path = self.store.tmp_dir().join(unique_name(&blob.digest, "part"));
            let file = File::create(&path)?;
            Ok(Partial { path, file })
        };
        let done = self
            .written
            .part(index, blob, part, record, data, begin, |p, bytes| {
                p.file.write_all(bytes)
            })?;
        let Some((actual, p)) = done else {
            return Ok(());
        };
        if actual != blob.digest {
            let _ = std::fs::remove_file(&p.path);
            return Err(altered(format!(
                "blob {} ({} bytes, from {}) hashes to {actual}: content was altered",
                blob.digest, blob.size, blob.repository
            )));
        }
        if !syncfs_reports_errors() {
            p.file.sync_data()?;
        }
        drop(p.file);
        self.unsynced.push((p.path, blob.digest.clone()));
        self.unsynced_bytes += blob.size;
        if self.unsynced.len() >= BATCH_BLOBS || self.unsynced_bytes >= BATCH_BYTES {
            self.hand_over()?;
        }
        Ok(())
    }

    fn checks_digests(&self) -> bool {
        true
    }

    fn pending(&self) -> usize {
        self.written.pending() + self.held.pending()
    }
}

impl Drop for StoreSink<'_> {
    fn drop(&mut self) {
        for p in self.written.drain() {
            let _ = std::fs::remove_file(&p.path);
        }
        for (path, _) in self.unsynced.drain(..) {
            let _ = std::fs::remove_file(&path);
        }
        // Its blobs are verified: committed, they spare a rerun their bytes.
        let _ = self.wait();
    }
}

/// Why a blob could not be fetched into the store; the store keeps nothing of it.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The registry failed while serving it.
    #[error(transparent)]
    Registry(#[from] airlock_registry::RegistryError),
    /// It went on past its declared size.
    #[error("more than the {size} bytes the manifest declares")]
    TooLong {
        /// The size declared.
        size: u64,
    },
    /// It ended before its declared size.
    #[error("{got} bytes, the manifest declares {size}")]
    Size {
        /// The bytes received.
        got: u64,
        /// The size declared.
        size: u64,
    },
    /// Its bytes are not the digest asked for.
    #[error("content hashes to {actual}")]
    Digest {
        /// What they hash to.
        actual: Digest,
    },
    /// The store's file could not be written.
    #[error(transparent)]
    Io(#[from] FileError),
}

impl Store {
    /// Downloads a blob into the store from a stream, checking its size and digest
    /// before it becomes visible. Used to fetch layers an imageset does not carry.
    pub async fn fetch(
        &self,
        digest: &Digest,
        size: u64,
        mut stream: futures::stream::BoxStream<
            'static,
            Result<bytes::Bytes, airlock_registry::RegistryError>,
        >,
    ) -> Result<(), FetchError> {
        use futures::StreamExt;
        use tokio::io::AsyncWriteExt;
        let tmp = self.tmp_dir().join(unique_name(digest, "fetch"));
        let io = |source| FileError::new(&tmp, source);
        let result: Result<(), FetchError> = async {
            let mut file = tokio::fs::File::create(&tmp).await.map_err(io)?;
            let mut hasher = Hasher::new();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                hasher.update(&chunk);
                if hasher.len() > size {
                    return Err(FetchError::TooLong { size });
                }
                file.write_all(&chunk).await.map_err(io)?;
            }
            file.sync_data().await.map_err(io)?;
            if hasher.len() != size {
                return Err(FetchError::Size {
                    got: hasher.len(),
                    size,
                });
            }
            let actual = hasher.finish();
            if actual != *digest {
                return Err(FetchError::Digest { actual });
            }
            std::fs::rename(&tmp, self.path(digest)).map_err(io)?;
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Removes every stored blob but those of `keep`: after a publish, the
    /// registry holds them, and a later imageset that needs one fetches it from
    /// there. Returns the bytes freed.
    pub fn empty(&self, keep: &std::collections::HashSet<Digest>) -> std::io::Result<u64> {
        let mut freed = 0;
        for entry in std::fs::read_dir(self.blobs_dir())? {
            let entry = entry?;
            let kept = entry
                .file_name()
                .to_str()
                .and_then(|hex| format!("sha256:{hex}").parse::<Digest>().ok())
                .is_some_and(|d| keep.contains(&d));
            if kept {
                continue;
            }
            freed += entry.metadata()?.len();
            std::fs::remove_file(entry.path())?;
        }
        Ok(freed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(bytes: &[u8], parts: &[(u64, u64)]) -> BlobRecord {
        BlobRecord {
            digest: Digest::of(bytes),
            size: bytes.len() as u64,
            media_type: None,
            repository: "example.com/app".into(),
            parts: parts
                .iter()
                .enumerate()
                .map(|(i, &(offset, length))| PartRecord {
                    chunk: i as u32 + 1,
                    offset,
                    length,
                    sha256: None,
                })
                .collect(),
        }
    }

    /// Hands `bytes` to `sink` as the parts of `blob`.
    fn feed(sink: &mut StoreSink<'_>, blob: &BlobRecord, bytes: &[u8]) -> std::io::Result<()> {
        for (i, p) in blob.parts.iter().enumerate() {
            let range = p.offset as usize..(p.offset + p.length) as usize;
            sink.part(0, blob, i, p, &mut &bytes[range])?;
        }
        Ok(())
    }

    /// No payload hash covers a chunk read into the store, so a blob the store
    /// already holds, carried again, must still be checked: whole or split,
    /// altered bytes are refused and the stored blob stays as it was.
    #[test]
    fn a_blob_the_store_holds_is_still_checked_when_carried_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let bytes: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        for parts in [&[(0, 5000)][..], &[(0, 3000), (3000, 2000)]] {
            let blob = record(&bytes, parts);
            let mut sink = store.sink().unwrap();
            feed(&mut sink, &blob, &bytes).unwrap();
            sink.hand_over().and_then(|()| sink.wait()).unwrap();
            let mut altered = bytes.clone();
            altered[4000] ^= 1;
            let err = feed(&mut sink, &blob, &altered).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
            assert!(err.to_string().contains("content was altered"), "{err}");
            assert_eq!(sink.pending(), 0);
            assert_eq!(store.read(&blob.digest).unwrap(), bytes);
            feed(&mut sink, &blob, &bytes).expect("the intact copy again");
        }
    }

    /// A split blob is written part by part and kept only when it hashes to its
    /// digest; one the store held at its first part but lost before its last
    /// (another process emptied the store) is an error, not a blob silently
    /// missing after an ingest that succeeded.
    #[test]
    fn a_split_blob_is_kept_only_whole_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let bytes: Vec<u8> = (0..9000u32).map(|i| (i * 13) as u8).collect();
        let blob = record(&bytes, &[(0, 4000), (4000, 3000), (7000, 2000)]);
        let mut altered = bytes.clone();
        altered[100] ^= 1;
        let mut sink = store.sink().unwrap();
        let err = feed(&mut sink, &blob, &altered).unwrap_err();
        assert!(err.to_string().contains("content was altered"), "{err}");
        assert!(!store.has(&blob.digest));
        feed(&mut sink, &blob, &bytes).unwrap();
        sink.hand_over().and_then(|()| sink.wait()).unwrap();
        assert_eq!(store.read(&blob.digest).unwrap(), bytes);

        let mut sink = store.sink().unwrap();
        let parts = &blob.parts;
        sink.part(0, &blob, 0, &parts[0], &mut &bytes[..4000])
            .unwrap();
        std::fs::remove_file(store.path(&blob.digest)).unwrap();
        sink.part(0, &blob, 1, &parts[1], &mut &bytes[4000..7000])
            .unwrap();
        let err = sink
            .part(0, &blob, 2, &parts[2], &mut &bytes[7000..])
            .unwrap_err();
        assert!(err.to_string().contains("left the store"), "{err}");
    }

    #[test]
    fn syncfs_is_trusted_with_errors_from_linux_5_8() {
        for (release, new_enough) in [
            ("4.18.0-553.el8_10.x86_64", false),
            ("5.7.19", false),
            ("5.8.0-63-generic", true),
            ("5.14.0-427.el9.x86_64", true),
            ("6.18.44-fc-v1272", true),
            ("", false),
        ] {
            assert_eq!(at_least_5_8(release), new_enough, "{release}");
        }
    }

    /// Blobs are committed in batches: none is in the store before its batch is
    /// handed over; a sink dropped on an error leaves no temporary files, and no
    /// store entries but those of a batch already handed over, which is
    /// committed whole; a full batch is handed over by itself.
    #[test]
    fn blobs_enter_the_store_a_batch_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tmp_files = || std::fs::read_dir(store.tmp_dir()).unwrap().count();
        let small: Vec<Vec<u8>> = (0..2 * BATCH_BLOBS as u32 + 1)
            .map(|i| i.to_be_bytes().repeat(10))
            .collect();
        let blobs: Vec<BlobRecord> = small.iter().map(|b| record(b, &[(0, 40)])).collect();
        let fed = |range: std::ops::Range<usize>| blobs[range.clone()].iter().zip(&small[range]);

        let mut sink = store.sink().unwrap();
        for (blob, bytes) in fed(0..3) {
            feed(&mut sink, blob, bytes).unwrap();
        }
        assert!(blobs[..3].iter().all(|b| !store.has(&b.digest)));
        assert_eq!(tmp_files(), 3);
        drop(sink);
        assert_eq!(tmp_files(), 0, "an abandoned batch leaves nothing behind");
        assert!(blobs[..3].iter().all(|b| !store.has(&b.digest)));

        let mut sink = store.sink().unwrap();
        for (blob, bytes) in fed(0..BATCH_BLOBS + 1) {
            feed(&mut sink, blob, bytes).unwrap();
        }
        drop(sink);
        assert!(blobs[..BATCH_BLOBS].iter().all(|b| store.has(&b.digest)));
        assert!(!store.has(&blobs[BATCH_BLOBS].digest));
        assert_eq!(tmp_files(), 0);

        let mut sink = store.sink().unwrap();
        for (blob, bytes) in fed(BATCH_BLOBS..2 * BATCH_BLOBS + 1) {
            feed(&mut sink, blob, bytes).unwrap();
        }
        assert_eq!(sink.finish().unwrap(), BATCH_BLOBS as u64 + 1);
        assert!(blobs.iter().all(|b| store.has(&b.digest)));
        assert_eq!(
            store.read(&blobs[2 * BATCH_BLOBS].digest).unwrap(),
            small[2 * BATCH_BLOBS]
        );
        assert_eq!(tmp_files(), 0);
    }
}
