//! Reading each blob from the store once for all the clusters published to at once.
//!
//! Clusters published to in the same pass upload the same blobs at nearly the same
//! time. Each upload streams its blob in blocks through one shared cache: the first
//! upload to need a block reads it from the store, the others are handed the same
//! bytes. A block is dropped as soon as every cluster of the pass has taken it;
//! past `cap` bytes kept, the oldest blocks are dropped first, so memory stays
//! bounded whatever the size of the imageset: the cap, plus the few blocks each
//! upload has in flight. An upload that needs a block already
//! dropped (its registry fell far behind, or it uploads a blob twice) reads the
//! block from the store itself: no cluster ever waits for a slower one. How many
//! clusters had taken a block dropped for room is remembered, so that a block
//! read again is kept only for the clusters still to come, and dropped when they
//! have: a cluster far behind would otherwise fill the cache with blocks that
//! wait for takers who have been and gone, and push out the blocks the clusters
//! ahead of it share.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use airlock_oci::digest::Digest;
use airlock_registry::RegistryError;
use bytes::Bytes;
use futures::StreamExt;
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::stream::BoxStream;

/// Bytes read from the store at a time: large enough that a read costs little per
/// byte, small enough that a pass over many clusters holds few of them.
pub const BLOCK: u64 = 1 << 20;

/// Bytes of blocks kept for the clusters that have not taken them yet.
pub const CAP: u64 = 64 << 20;

/// Blocks dropped for room whose takers are remembered: a cluster this many
/// blocks (MiB) behind the first still reads each block once. About 100 bytes each.
const REMEMBERED: usize = 4096;

type Key = (Digest, u64);

/// A block being read or read. The read runs on a task of its own, so it
/// completes whichever upload polls for it, or none: an upload whose registry
/// stopped reading never holds a block back from the others.
type Read = Shared<BoxFuture<'static, Result<Bytes, Arc<std::io::Error>>>>;

/// The blocks read in one publishing pass, shared by its clusters.
#[derive(Debug)]
pub struct SharedReads {
    /// How many uploads of each block the pass expects: one per cluster.
    cohort: u32,
    cap: u64,
    state: Mutex<State>,
    read: AtomicU64,
    /// Bytes of blocks alive anywhere: kept here, queued in an upload, or in a
    /// registry connection's send buffer. What the pass costs in memory.
    live: Arc<Live>,
}

#[derive(Debug, Default)]
struct Live {
    now: AtomicU64,
    peak: AtomicU64,
}

/// The memory of one block, counted in `Live` while any copy of it exists.
struct Counted {
    buf: Vec<u8>,
    live: Arc<Live>,
}

impl AsRef<[u8]> for Counted {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.live
            .now
            .fetch_sub(self.buf.len() as u64, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
struct State {
    blocks: HashMap<Key, Slot>,
    /// Blocks oldest first, to drop from. Entries of blocks dropped since are
    /// skipped (their generation no longer matches) and swept out now and then.
    order: VecDeque<(Key, u64)>,
    kept: u64,
    next_generation: u64,
    /// How many clusters had taken each block dropped for room, oldest first
    /// (by the generation of the drop) up to [`REMEMBERED`].
    taken_before: HashMap<Key, Remembered>,
    dropped: VecDeque<(Key, u64)>,
}

#[derive(Debug)]
struct Remembered {
    taken: u32,
    generation: u64,
}

/// An entry of a map whose age queue names it by key and generation: once the
/// key was removed or put in again, the queue's entry for it is stale.
trait Aged {
    fn generation(&self) -> u64;
}

impl Aged for Slot {
    fn generation(&self) -> u64 {
        self.generation
    }
}

impl Aged for Remembered {
    fn generation(&self) -> u64 {
        self.generation
    }
}

/// The entry of `map` that the age queue's `(key, generation)` names, if it is
/// still there.
fn current<'a, V: Aged>(map: &'a HashMap<Key, V>, key: &Key, generation: u64) -> Option<&'a V> {
    map.get(key).filter(|v| v.generation() == generation)
}

/// Sweeps the stale entries out of an age queue now and then: it is skipped
/// over as it is read, so it only has to stay in proportion to its map.
fn sweep<V: Aged>(queue: &mut VecDeque<(Key, u64)>, map: &HashMap<Key, V>) {
    if queue.len() > 2 * map.len() + 64 {
        queue.retain(|(k, g)| current(map, k, *g).is_some());
    }
}

/// A read's error, shared by every upload that awaited it, for one of them.
fn unshared(e: Arc<std::io::Error>) -> std::io::Error {
    std::io::Error::new(e.kind(), e.to_string())
}

struct Slot {
    read: Read,
    taken: u32,
    len: u64,
    generation: u64,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("taken", &self.taken)
            .field("len", &self.len)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl State {
    fn drop_block(&mut self, key: &Key, generation: u64) {
        if current(&self.blocks, key, generation).is_some() {
            let slot = self.blocks.remove(key).expect("just seen");
            self.kept -= slot.len;
        }
    }

    fn make_room(&mut self, cap: u64) {
        while self.kept > cap {
            let Some((key, generation)) = self.order.pop_front() else {
                break;
            };
            let taken = current(&self.blocks, &key, generation).map(|s| s.taken);
            self.drop_block(&key, generation);
            if let Some(taken @ 1..) = taken {
                self.remember(key, taken);
            }
        }
        sweep(&mut self.order, &self.blocks);
    }

    fn remember(&mut self, key: Key, taken: u32) {
        let generation = self.next_generation;
        self.next_generation += 1;
        self.taken_before
            .insert(key.clone(), Remembered { taken, generation });
        self.dropped.push_back((key, generation));
        while self.taken_before.len() > REMEMBERED {
            let Some((key, generation)) = self.dropped.pop_front() else {
                break;
            };
            self.forget(&key, generation);
        }
        sweep(&mut self.dropped, &self.taken_before);
    }

    /// How many clusters had taken `key` before it was dropped for room; it is
    /// forgotten, as the block is being read again.
    fn recall(&mut self, key: &Key) -> u32 {
        self.taken_before.remove(key).map_or(0, |r| r.taken)
    }

    fn forget(&mut self, key: &Key, generation: u64) {
        if current(&self.taken_before, key, generation).is_some() {
            self.taken_before.remove(key);
        }
    }
}

impl SharedReads {
    /// Shared reads for a pass publishing to `clusters` clusters at once.
    pub fn new(clusters: usize) -> Self {
        Self::with_cap(clusters, CAP)
    }

    fn with_cap(clusters: usize, cap: u64) -> Self {
        SharedReads {
            cohort: u32::try_from(clusters.max(1)).unwrap_or(u32::MAX),
            cap,
            state: Mutex::default(),
            read: AtomicU64::new(0),
            live: Arc::default(),
        }
    }

    /// How many clusters the pass publishes to.
    pub fn clusters(&self) -> u32 {
        self.cohort
    }

    /// Bytes read from the store so far.
    pub fn read_bytes(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// The most bytes of blocks alive at once, wherever they were.
    pub fn peak_bytes(&self) -> u64 {
        self.live.peak.load(Ordering::Relaxed)
    }

    /// The bytes of `digest`, stored at `path` (`size` bytes), as an upload body.
    /// Fails at once when the file is missing or not of the blob's size. The
    /// digest is not hashed again: the store verified it when the blob came in,
    /// and the registry checks it when the upload completes.
    pub fn stream(
        self: &Arc<Self>,
        digest: &Digest,
        path: &Path,
        size: u64,
    ) -> std::io::Result<BoxStream<'static, Result<Bytes, RegistryError>>> {
        let file = Arc::new(File::open(path)?);
        let actual = file.metadata()?.len();
        if actual != size {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the file is {actual} bytes, the blob's manifest says {size}"),
            ));
        }
        let (shared, digest, path) = (self.clone(), digest.clone(), path.to_path_buf());
        Ok(futures::stream::iter(0..size.div_ceil(BLOCK))
            .map(move |index| {
                let (shared, digest, path, file) =
                    (shared.clone(), digest.clone(), path.clone(), file.clone());
                async move {
                    let len = BLOCK.min(size - index * BLOCK);
                    shared
                        .block(&digest, &file, index, len)
                        .await
                        .map_err(|source| RegistryError::LocalFile {
                            target: digest.to_string(),
                            path,
                            source,
                        })
                }
            })
            // The next block is read while this one is sent.
            .buffered(2)
            .boxed())
    }

    /// Starts reading block `index` (`len` bytes) of `file` on a task of its own.
    fn start_read(self: &Arc<Self>, file: &Arc<File>, index: u64, len: u64) -> Read {
        let (file, shared) = (file.clone(), self.clone());
        // Allocated here, on one of the runtime's few workers, not on the
        // blocking thread: glibc gives every thread that allocates at the same
        // time an arena of its own and keeps what is freed there, so blocks
        // allocated across the blocking pool's many threads held twice the memory.
        let mut buf = vec![0; len as usize];
        let task = tokio::task::spawn_blocking(move || {
            file.read_exact_at(&mut buf, index * BLOCK)?;
            shared.read.fetch_add(len, Ordering::Relaxed);
            let now = shared.live.now.fetch_add(len, Ordering::Relaxed) + len;
            shared.live.peak.fetch_max(now, Ordering::Relaxed);
            Ok(Bytes::from_owner(Counted {
                buf,
                live: shared.live.clone(),
            }))
        });
        async move {
            match task.await {
                Ok(result) => result.map_err(Arc::new),
                Err(e) => Err(Arc::new(std::io::Error::other(format!(
                    "the read of a store block failed: {e}"
                )))),
            }
        }
        .boxed()
        .shared()
    }

    /// Block `index` (`len` bytes) of `digest`: kept from another cluster's
    /// upload, or read from `file`.
    async fn block(
        self: &Arc<Self>,
        digest: &Digest,
        file: &Arc<File>,
        index: u64,
        len: u64,
    ) -> std::io::Result<Bytes> {
        let key = (digest.clone(), index);
        let kept = {
            let mut s = self.state.lock().expect("not poisoned");
            match s.blocks.get(&key) {
                Some(slot) => Some((slot.read.clone(), slot.generation)),
                None => {
                    let taken = s.recall(&key);
                    if taken + 1 >= self.cohort {
                        // The last cluster to take it: nobody to keep it for.
                        None
                    } else {
                        let read = self.start_read(file, index, len);
                        let generation = s.next_generation;
                        s.next_generation += 1;
                        s.blocks.insert(
                            key.clone(),
                            Slot {
                                read: read.clone(),
                                taken,
                                len,
                                generation,
                            },
                        );
                        s.order.push_back((key.clone(), generation));
                        s.kept += len;
                        s.make_room(self.cap);
                        Some((read, generation))
                    }
                }
            }
        };
        let Some((read, generation)) = kept else {
            return self.start_read(file, index, len).await.map_err(unshared);
        };
        let result = read.await;
        let mut s = self.state.lock().expect("not poisoned");
        match result {
            Ok(bytes) => {
                if let Some(slot) = s
                    .blocks
                    .get_mut(&key)
                    .filter(|s| s.generation == generation)
                {
                    slot.taken += 1;
                    if slot.taken >= self.cohort {
                        s.drop_block(&key, generation);
                    }
                }
                Ok(bytes)
            }
            // The next upload to need it tries the read again.
            Err(e) => {
                s.drop_block(&key, generation);
                Err(unshared(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    fn blob(dir: &Path, size: usize, seed: u8) -> (Digest, std::path::PathBuf, Vec<u8>) {
        let data: Vec<u8> = (0..size)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect();
        let digest = Digest::of(&data);
        let path = dir.join(digest.hex());
        std::fs::write(&path, &data).unwrap();
        (digest, path, data)
    }

    /// Nothing is kept for any cluster and no block is alive anywhere.
    fn assert_nothing_held(shared: &SharedReads, why: &str) {
        let s = shared.state.lock().unwrap();
        assert_eq!((s.kept, s.blocks.len()), (0, 0), "{why}");
        assert_eq!(
            shared.live.now.load(Ordering::Relaxed),
            0,
            "no block leaked"
        );
    }

    /// What a registry receives: each block copied out and let go, as hyper does.
    async fn upload(shared: &Arc<SharedReads>, d: &Digest, p: &Path, size: u64) -> Vec<u8> {
        shared
            .stream(d, p, size)
            .unwrap()
            .try_fold(Vec::new(), |mut got, block| async move {
                got.extend_from_slice(&block);
                Ok(got)
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn three_uploads_at_once_read_each_blob_once_and_hold_nothing_after() {
        let dir = tempfile::tempdir().unwrap();
        let blobs: Vec<_> = [(3 * BLOCK as usize + 17, 1), (5, 2), (BLOCK as usize, 3)]
            .iter()
            .map(|&(n, s)| blob(dir.path(), n, s))
            .collect();
        let shared = Arc::new(SharedReads::new(3));
        let cluster = |_| async {
            let mut got = Vec::new();
            for (d, p, data) in &blobs {
                got.push(upload(&shared, d, p, data.len() as u64).await);
            }
            got
        };
        let all = futures::future::join_all((0..3).map(cluster)).await;
        for got in all {
            let want: Vec<Vec<u8>> = blobs.iter().map(|b| b.2.clone()).collect();
            assert!(got == want, "every upload gets the blob's exact bytes");
        }
        let total: u64 = blobs.iter().map(|b| b.2.len() as u64).sum();
        assert_eq!(shared.read_bytes(), total);
        assert_nothing_held(&shared, "taken by all three, dropped");
    }

    #[tokio::test]
    async fn a_cluster_far_behind_reads_dropped_blocks_itself_and_memory_stays_under_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let (d, p, data) = blob(dir.path(), 32 * BLOCK as usize, 9);
        let cap = 2 * BLOCK;
        let shared = Arc::new(SharedReads::with_cap(2, cap));
        // The fast cluster takes the whole blob before the slow one starts.
        assert!(upload(&shared, &d, &p, data.len() as u64).await == data);
        assert_eq!(shared.read_bytes(), 32 * BLOCK);
        assert!(upload(&shared, &d, &p, data.len() as u64).await == data);
        assert_eq!(
            shared.read_bytes(),
            62 * BLOCK,
            "the slow cluster read all but the two blocks still kept"
        );
        // Kept blocks, plus the two an upload reads ahead and the one it sends.
        let peak = shared.peak_bytes();
        assert!(peak <= cap + 4 * BLOCK, "memory grew with the blob: {peak}");
        assert_nothing_held(
            &shared,
            "the slow cluster was the last to take each block: none is kept for it",
        );
    }

    /// Two clusters take blob X, then blob Y, which pushes X out of the cache; a
    /// third takes both after them. The blocks of X it reads again are the last
    /// anyone needs, so they must not push out Y, which it takes next.
    #[tokio::test]
    async fn a_block_read_again_for_the_last_cluster_does_not_push_out_the_blocks_it_needs_next() {
        let dir = tempfile::tempdir().unwrap();
        let (x, xp, xd) = blob(dir.path(), 4 * BLOCK as usize, 1);
        let (y, yp, yd) = blob(dir.path(), 4 * BLOCK as usize, 2);
        let shared = Arc::new(SharedReads::with_cap(3, 4 * BLOCK));
        let size = 4 * BLOCK;
        for (d, p, data) in [
            (&x, &xp, &xd),
            (&x, &xp, &xd),
            (&y, &yp, &yd),
            (&y, &yp, &yd),
        ] {
            assert!(upload(&shared, d, p, size).await == *data);
        }
        assert_eq!(
            shared.read_bytes(),
            8 * BLOCK,
            "the second cluster read nothing"
        );
        assert!(upload(&shared, &x, &xp, size).await == xd);
        assert!(upload(&shared, &y, &yp, size).await == yd);
        assert_eq!(
            shared.read_bytes(),
            12 * BLOCK,
            "the third cluster read X again and took Y from the cache"
        );
        assert_nothing_held(&shared, "every block taken by all three");
    }

    #[test]
    fn what_is_remembered_of_dropped_blocks_stays_bounded() {
        let mut s = State::default();
        let d = Digest::of(b"a blob");
        for index in 0..3 * REMEMBERED as u64 {
            s.remember((d.clone(), index), 1);
            // Every other block is read again at once.
            if index % 2 == 0 {
                assert_eq!(s.recall(&(d.clone(), index)), 1);
            }
        }
        assert!(s.taken_before.len() <= REMEMBERED);
        assert!(
            s.dropped.len() <= 2 * REMEMBERED + 64,
            "{}",
            s.dropped.len()
        );
        let last = (d.clone(), 3 * REMEMBERED as u64 - 1);
        assert_eq!(s.recall(&last), 1, "the latest is remembered");
        assert_eq!(s.recall(&(d, 1)), 0, "the oldest is forgotten");
    }

    #[tokio::test]
    async fn clusters_uploading_together_hold_a_few_blocks_whatever_the_blob_size() {
        let dir = tempfile::tempdir().unwrap();
        let (d, p, data) = blob(dir.path(), 48 * BLOCK as usize + 3, 4);
        let shared = Arc::new(SharedReads::with_cap(3, 4 * BLOCK));
        let size = data.len() as u64;
        let all = futures::future::join_all((0..3).map(|_| upload(&shared, &d, &p, size))).await;
        assert!(all.iter().all(|got| *got == data));
        let peak = shared.peak_bytes();
        assert!(
            peak <= 4 * BLOCK + 3 * 3 * BLOCK,
            "memory grew with the blob: {peak}"
        );
    }

    #[tokio::test]
    async fn a_cluster_that_stops_reading_holds_no_other_cluster_back() {
        let dir = tempfile::tempdir().unwrap();
        let (d, p, data) = blob(dir.path(), 6 * BLOCK as usize, 5);
        let shared = Arc::new(SharedReads::new(2));
        // Its registry took one block and stopped reading, with the next ones
        // already asked for.
        let mut stuck = shared.stream(&d, &p, data.len() as u64).unwrap();
        assert!(stuck.next().await.unwrap().unwrap()[..] == data[..BLOCK as usize]);
        let other = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            upload(&shared, &d, &p, data.len() as u64),
        )
        .await
        .expect("the other cluster's upload finishes while one is stuck");
        assert!(other == data);
        drop(stuck);
    }

    #[tokio::test]
    async fn a_store_file_of_the_wrong_size_is_refused_before_anything_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let (d, p, data) = blob(dir.path(), 100, 1);
        let shared = Arc::new(SharedReads::new(2));
        let e = shared.stream(&d, &p, data.len() as u64 + 1).err().unwrap();
        assert!(e.to_string().contains("the file is 100 bytes"), "{e}");
        assert!(shared.stream(&d, &dir.path().join("absent"), 1).is_err());
        assert_eq!(shared.read_bytes(), 0);
    }
}
