//! Reading each blob from the store once for all the clusters published to at once.
//!
//! Clusters published to in the same pass upload the same blobs at nearly the same
//! time. Each upload streams its blob in blocks through one shared cache: the first
//! upload to need a block reads it from the store, the others are handed the same
//! bytes. Each cluster of the pass is a [`Taker`], and a block is dropped as soon
//! as every taker that may still take it has. A cluster may take only the blobs of
//! the imageset it is publishing ([`Taker::expect`]); probably not one its registry
//! holds where an image needs it ([`Taker::in_place`]); while it uploads a blob,
//! the blocks its upload has not yet reached, and no other; no block of a blob
//! it uploaded before (what a retry, or an upload to another repository, reads
//! again is not kept for it); nothing once its publish ended ([`Taker::leave`]).
//! Past `cap` bytes kept, the oldest blocks are dropped first, so memory stays
//! bounded whatever the size of the imageset: the cap, plus the few blocks each
//! upload has in flight, plus at most [`SPARE_BLOCKS`] buffers kept for the next
//! reads until the pass ends. An upload that needs a block already dropped (its
//! registry fell far behind) reads the block from the store itself. Which clusters
//! had taken a block dropped for room is remembered, so that a block read again is
//! kept only for the clusters still to come, and dropped when they have: a cluster
//! far behind would otherwise fill the cache with blocks that wait for takers who
//! have been and gone, and push out the blocks the clusters ahead of it share.
//!
//! The clusters ahead wait, a little, for the ones behind: when the cache is full
//! and room was made (a block was taken by every cluster that may take it) less
//! than [`PATIENCE`] ago, a block nobody has read yet is read only once room is
//! made again, or when none was made for `PATIENCE`. Clusters whose registries
//! run at different speeds on shared cores then keep pace instead of drifting
//! apart and reading everything twice. Only a cluster that may take a block is
//! waited for, which is why the takers say what they will not take: a cluster
//! publishing an older imageset first, or whose registry has the blob, would
//! otherwise hold the others' blocks in the cache, and each block that did make
//! room would renew the wait. A cluster that stops taking blocks without saying
//! so holds the others back until `PATIENCE` passes with no room made. And no
//! cluster waits for more than [`WAITING_SHARE`] of its time: one far slower
//! than the others (over a slow link) does not set their pace; it falls behind
//! and reads its blocks again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use airlock_oci::digest::Digest;
use airlock_registry::RegistryError;
use bytes::Bytes;
use fixedbitset::FixedBitSet;
use futures::StreamExt;
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::stream::BoxStream;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Bytes read from the store at a time: large enough that a read costs little per
/// byte, small enough that a pass over many clusters holds few of them.
pub const BLOCK: u64 = 1 << 20;

/// Bytes of blocks kept for the clusters that have not taken them yet.
pub const CAP: u64 = 64 << 20;

/// Blocks dropped for room whose takers are remembered: a cluster this many
/// blocks (MiB) behind the first still reads each block once. About 100 bytes each.
const REMEMBERED: usize = 4096;

/// How long the clusters ahead wait for the clusters behind to make room:
/// longer than a registry's pause between two blocks on a loaded machine,
/// short against a publish.
const PATIENCE: Duration = Duration::from_secs(2);

/// The most of its time (past one [`PATIENCE`]) a cluster spends with an upload
/// waiting for the clusters behind: a cluster whose registry is far slower than
/// the others' (over a slow link) makes them take twice as long at most, and
/// is left behind to read its blocks again. Its other uploads go on while one
/// waits, which is why a quarter was too little for clusters of about the same
/// speed on shared cores to keep pace (docs/benchmarks.md, stop 44).
const WAITING_SHARE: f64 = 0.5;

type Key = (Digest, u64);

/// A block being read or read. The read runs on a task of its own, so it
/// completes whichever upload polls for it, or none: an upload whose registry
/// stopped reading never holds a block back from the others.
type Read = Shared<BoxFuture<'static, Result<Bytes, Arc<std::io::Error>>>>;

/// The blocks read in one publishing pass, shared by its clusters.
#[derive(Debug)]
pub struct SharedReads {
    cap: u64,
    began: Instant,
    state: Mutex<State>,
    read: AtomicU64,
    /// Told when room was made: a block was dropped that every cluster that may
    /// take it had taken, or a read failed.
    room: Notify,
    /// Bytes of blocks alive anywhere: kept here, queued in an upload, or in a
    /// registry connection's send buffer. What the pass costs in memory.
    live: Arc<Live>,
}

/// One cluster of a pass: the uploads of its publish take blocks through it.
/// Dropping it is leaving the pass.
#[derive(Debug)]
pub struct Taker {
    reads: Arc<SharedReads>,
    id: usize,
}

#[derive(Debug, Default)]
struct Live {
    now: AtomicU64,
    peak: AtomicU64,
    spare: Spare,
}

/// Whole-block buffers no longer in use, for the next reads. A fresh block is
/// memory the kernel faults in and zeroes page by page as the read fills it,
/// which took 8 % of the agent's CPU samples (docs/benchmarks.md, stop
/// 45). At most [`SPARE_BLOCKS`] are kept, until the pass ends, and a buffer is
/// made only when none is spare: the buffers in use (read into, kept, queued)
/// and the spare ones are never more than were in use at once.
/// [`SharedReads::peak_bytes`] counts blocks once read, not spare buffers, so
/// those add at most `SPARE_BLOCKS` blocks to it. Shorter blocks (a blob's
/// last, a small blob's only) are not kept: each would hold a whole block's
/// memory for a few bytes.
#[derive(Default)]
struct Spare(Mutex<Vec<Vec<u8>>>);

/// Buffers kept for the next reads at most: more than a pass's uploads free
/// between two of its reads.
const SPARE_BLOCKS: usize = 16;

impl Spare {
    fn lock(&self) -> MutexGuard<'_, Vec<Vec<u8>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A buffer of `len` bytes for a read to fill whole: what it held before
    /// is overwritten or, when the read fails, never handed on.
    fn take(&self, len: usize) -> Vec<u8> {
        if len == BLOCK as usize
            && let Some(buf) = self.lock().pop()
        {
            return buf;
        }
        vec![0; len]
    }

    fn give(&self, buf: Vec<u8>) {
        if buf.len() == BLOCK as usize {
            let mut spare = self.lock();
            if spare.len() < SPARE_BLOCKS {
                spare.push(buf);
            }
        }
    }
}

impl std::fmt::Debug for Spare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Spare({} blocks)", self.lock().len())
    }
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
        self.live.spare.give(std::mem::take(&mut self.buf));
    }
}

#[derive(Debug, Default)]
struct State {
    /// The pass's clusters, by taker id.
    members: Vec<Member>,
    blocks: HashMap<Key, Slot>,
    /// Blocks oldest first, to drop from. Entries of blocks dropped since are
    /// skipped (their generation no longer matches) and swept out now and then.
    order: VecDeque<(Key, u64)>,
    kept: u64,
    next_generation: u64,
    /// Which clusters had taken each block dropped for room, oldest first (by
    /// the generation of the drop) up to [`REMEMBERED`].
    taken_before: HashMap<Key, Remembered>,
    dropped: VecDeque<(Key, u64)>,
    /// When room was last made, or the first block was kept: the clusters
    /// behind are moving. `None` while nothing was kept.
    room_made: Option<Instant>,
}

/// What the cache knows of one cluster of the pass.
#[derive(Debug, Default)]
struct Member {
    /// Its publish ended: it takes nothing more.
    left: bool,
    /// The blobs of the imageset it publishes now; `None` until told: any.
    only: Option<HashSet<Digest>>,
    /// Blobs its registry holds where they are needed: it takes one only if it
    /// opens it after all (for a repository that lacks it).
    in_place: HashSet<Digest>,
    /// Its uploads under way, by blob: the index past the last block each
    /// took. It takes the blocks of these from there on, and no other.
    /// Two uploads of one blob at once (a mount declined in two repositories)
    /// share the cluster's one mark on a block: the second reads alone what
    /// the first took.
    open: HashMap<Digest, Vec<Arc<AtomicU64>>>,
    /// Blobs it uploaded (or tried to): a block of one read again, for a retry
    /// or for another repository, is not kept for it.
    done: HashSet<Digest>,
    /// Its uploads waiting for room now, since when, and how long it waited
    /// before: the time during which at least one of them waited.
    waits: u32,
    waiting_since: Option<Instant>,
    waited: Duration,
}

impl Member {
    fn may_take(&self, (digest, index): &Key) -> bool {
        if self.left {
            return false;
        }
        match self.open.get(digest) {
            Some(uploads) => uploads
                .iter()
                .any(|next| next.load(Ordering::Relaxed) <= *index),
            None => {
                !self.done.contains(digest)
                    && !self.in_place.contains(digest)
                    && self.only.as_ref().is_none_or(|only| only.contains(digest))
            }
        }
    }

    /// How much longer it may wait for the clusters behind, with the pass
    /// `elapsed`: one [`PATIENCE`] and a [`WAITING_SHARE`] of the pass, less
    /// what it waited.
    fn patience_left(&self, elapsed: Duration) -> Duration {
        let waited = self.waited + self.waiting_since.map_or(Duration::ZERO, |t| t.elapsed());
        (PATIENCE + elapsed.mul_f64(WAITING_SHARE)).saturating_sub(waited)
    }

    fn begin_wait(&mut self) {
        if self.waits == 0 {
            self.waiting_since = Some(Instant::now());
        }
        self.waits += 1;
    }

    fn end_wait(&mut self) {
        self.waits -= 1;
        if self.waits == 0
            && let Some(since) = self.waiting_since.take()
        {
            self.waited += since.elapsed();
        }
    }
}

#[derive(Debug)]
struct Remembered {
    takers: FixedBitSet,
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
    /// The clusters that took it, by taker id.
    takers: FixedBitSet,
    len: u64,
    generation: u64,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("takers", &self.takers)
            .field("len", &self.len)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl State {
    fn drop_block(&mut self, key: &Key, generation: u64) -> Option<Slot> {
        current(&self.blocks, key, generation)?;
        let slot = self.blocks.remove(key).expect("just seen");
        self.kept -= slot.len;
        Some(slot)
    }

    fn make_room(&mut self, cap: u64) {
        while self.kept > cap {
            let Some((key, generation)) = self.order.pop_front() else {
                break;
            };
            if let Some(slot) = self.drop_block(&key, generation)
                && !slot.takers.is_clear()
            {
                self.remember(key, slot.takers);
            }
        }
        sweep(&mut self.order, &self.blocks);
    }

    fn remember(&mut self, key: Key, takers: FixedBitSet) {
        let generation = self.next_generation;
        self.next_generation += 1;
        self.taken_before
            .insert(key.clone(), Remembered { takers, generation });
        self.dropped.push_back((key, generation));
        while self.taken_before.len() > REMEMBERED {
            let Some((key, generation)) = self.dropped.pop_front() else {
                break;
            };
            self.forget(&key, generation);
        }
        sweep(&mut self.dropped, &self.taken_before);
    }

    /// The clusters that had taken `key` before it was dropped for room.
    fn taken_before(&self, key: &Key) -> FixedBitSet {
        self.taken_before
            .get(key)
            .map(|r| r.takers.clone())
            .unwrap_or_default()
    }

    fn forget(&mut self, key: &Key, generation: u64) {
        if current(&self.taken_before, key, generation).is_some() {
            self.taken_before.remove(key);
        }
    }

    /// Whether a cluster other than `reader` may still take block `key`,
    /// which `takers` took.
    fn awaited(&self, key: &Key, takers: &FixedBitSet, reader: Option<usize>) -> bool {
        self.members
            .iter()
            .enumerate()
            .any(|(id, member)| Some(id) != reader && !takers.contains(id) && member.may_take(key))
    }

    /// Drops the blocks among `keys` that no cluster may take any more; whether
    /// that made room.
    fn release(&mut self, keys: impl IntoIterator<Item = Key>) -> bool {
        let mut made = false;
        for key in keys {
            let done = self
                .blocks
                .get(&key)
                .filter(|slot| !self.awaited(&key, &slot.takers, None))
                .map(|slot| slot.generation);
            if let Some(generation) = done {
                self.drop_block(&key, generation);
                made = true;
            }
        }
        if made {
            self.room_made = Some(Instant::now());
        }
        made
    }

    /// How long cluster `reader` waits before keeping `len` more bytes, in a
    /// pass `elapsed` old: while the cache is full, room was last made less
    /// than [`PATIENCE`] ago, and its patience lasts; `None` to keep them now.
    fn wait_for_room(
        &self,
        reader: usize,
        len: u64,
        cap: u64,
        elapsed: Duration,
    ) -> Option<Duration> {
        if self.kept + len <= cap {
            return None;
        }
        let wait = PATIENCE
            .checked_sub(self.room_made?.elapsed())?
            .min(self.members[reader].patience_left(elapsed));
        // Zero is none: a paused clock would stand at the deadline for ever.
        (!wait.is_zero()).then_some(wait)
    }
}

impl SharedReads {
    /// Shared reads for a pass publishing to `clusters` clusters at once, and
    /// a taker for each of them.
    pub fn new(clusters: usize) -> (Arc<Self>, Vec<Taker>) {
        Self::with_cap(clusters, CAP)
    }

    fn with_cap(clusters: usize, cap: u64) -> (Arc<Self>, Vec<Taker>) {
        let reads = Arc::new(SharedReads {
            cap,
            began: Instant::now(),
            state: Mutex::new(State {
                members: (0..clusters).map(|_| Member::default()).collect(),
                ..State::default()
            }),
            read: AtomicU64::new(0),
            room: Notify::new(),
            live: Arc::default(),
        });
        let takers = (0..clusters)
            .map(|id| Taker {
                reads: reads.clone(),
                id,
            })
            .collect();
        (reads, takers)
    }

    /// How many clusters the pass publishes to.
    pub fn clusters(&self) -> usize {
        self.lock().members.len()
    }

    /// Bytes read from the store so far.
    pub fn read_bytes(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// The most bytes of blocks alive at once, wherever they were.
    pub fn peak_bytes(&self) -> u64 {
        self.live.peak.load(Ordering::Relaxed)
    }

    /// The state, also from a `Drop` after a panic elsewhere: every change to it
    /// is made whole under the lock, so a panic leaves nothing half done.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes what cluster `id` may take, and drops the blocks nobody may take
    /// any more.
    fn update(&self, id: usize, change: impl FnOnce(&mut Member, &HashMap<Key, Slot>) -> Vec<Key>) {
        let mut s = self.lock();
        let s = &mut *s;
        let keys = change(&mut s.members[id], &s.blocks);
        if s.release(keys) {
            self.room.notify_waiters();
        }
    }

    /// Starts reading block `index` (`len` bytes) of `file` on a task of its own.
    fn start_read(self: &Arc<Self>, file: &Arc<File>, index: u64, len: u64) -> Read {
        let (file, shared) = (file.clone(), self.clone());
        // Taken here, on one of the runtime's few workers, not on the
        // blocking thread: glibc gives every thread that allocates at the same
        // time an arena of its own and keeps what is freed there, so blocks
        // allocated across the blocking pool's many threads held twice the memory.
        let mut buf = self.live.spare.take(len as usize);
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

    /// Starts reading block `index` of `file` and keeps it for the clusters
    /// still to take it (`takers` took it before).
    fn keep(
        self: &Arc<Self>,
        s: &mut State,
        key: Key,
        file: &Arc<File>,
        index: u64,
        len: u64,
        takers: FixedBitSet,
    ) -> (Read, u64) {
        let read = self.start_read(file, index, len);
        let generation = s.next_generation;
        s.next_generation += 1;
        s.blocks.insert(
            key.clone(),
            Slot {
                read: read.clone(),
                takers,
                len,
                generation,
            },
        );
        s.order.push_back((key, generation));
        s.kept += len;
        // Its first takers have just started: the wait for them begins.
        s.room_made.get_or_insert_with(Instant::now);
        s.make_room(self.cap);
        (read, generation)
    }

    /// Block `index` (`len` bytes) of `opened`'s blob, for its cluster: kept
    /// from another cluster's upload, or read from `file`.
    async fn block(
        self: &Arc<Self>,
        opened: &Opened,
        file: &Arc<File>,
        index: u64,
        len: u64,
    ) -> std::io::Result<Bytes> {
        let (reader, digest) = (opened.id, &opened.digest);
        let key = (digest.clone(), index);
        // Set while the block waits for room; dropped after the loop, never
        // under the lock it takes.
        let mut waiting: Option<Waiting<'_>> = None;
        let kept = loop {
            // Registered before the state is looked at, so that room made in
            // between is not missed.
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            let wait = {
                let mut s = self.lock();
                if let Some(slot) = s.blocks.get(&key) {
                    break Some((slot.read.clone(), slot.generation));
                }
                let takers = s.taken_before(&key);
                if !s.awaited(&key, &takers, Some(reader)) {
                    // The last cluster to take it: nobody to keep it for.
                    s.taken_before.remove(&key);
                    break None;
                }
                // Only the clusters ahead wait: a block read before was
                // dropped for one of the clusters behind.
                let wait = s
                    .wait_for_room(reader, len, self.cap, self.began.elapsed())
                    .filter(|_| takers.is_clear());
                match wait {
                    Some(wait) => {
                        if waiting.is_none() {
                            s.members[reader].begin_wait();
                            waiting = Some(Waiting {
                                reads: self,
                                id: reader,
                            });
                        }
                        wait
                    }
                    None => {
                        s.taken_before.remove(&key);
                        break Some(self.keep(&mut s, key.clone(), file, index, len, takers));
                    }
                }
            };
            let _ = tokio::time::timeout(wait, room).await;
        };
        drop(waiting);
        let Some((read, generation)) = kept else {
            let bytes = self.start_read(file, index, len).await.map_err(unshared)?;
            opened.took(index);
            return Ok(bytes);
        };
        let result = read.await;
        let mut s = self.lock();
        let made_room = match &result {
            Ok(_) => {
                let took = s
                    .blocks
                    .get_mut(&key)
                    .filter(|s| s.generation == generation);
                if let Some(slot) = took {
                    slot.takers.grow(reader + 1);
                    slot.takers.insert(reader);
                }
                opened.took(index);
                s.release([key])
            }
            // The next upload to need it tries the read again.
            Err(_) => s.drop_block(&key, generation).is_some(),
        };
        drop(s);
        if made_room {
            self.room.notify_waiters();
        }
        result.map_err(unshared)
    }
}

/// A block of cluster `id` waiting for room: the wait ends when it is
/// dropped, also when its upload is dropped mid-wait.
struct Waiting<'a> {
    reads: &'a SharedReads,
    id: usize,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.reads.lock().members[self.id].end_wait();
    }
}

/// An upload of cluster `id` under way: it takes the blocks of the blob from
/// `next` (past the last it took) on until dropped. Once none of its uploads
/// has the blob open, the cluster is done with it: blocks read again later are
/// not kept for it.
struct Opened {
    reads: Arc<SharedReads>,
    id: usize,
    digest: Digest,
    size: u64,
    next: Arc<AtomicU64>,
}

impl Opened {
    /// Block `index` was taken: counted when taken, not when asked for (a
    /// block asked for may wait for room, and must be kept for it) nor when
    /// handed over (the one read ahead may be taken already).
    fn took(&self, index: u64) {
        self.next.fetch_max(index + 1, Ordering::Relaxed);
    }

    /// The bytes of the blob, stored at `path`, as an upload body. Fails at
    /// once when the file is missing or not of the blob's size. The digest is
    /// not hashed again: the store verified it when the blob came in, and the
    /// registry checks it when the upload completes.
    fn stream(
        self,
        path: &Path,
    ) -> std::io::Result<BoxStream<'static, Result<Bytes, RegistryError>>> {
        let size = self.size;
        let file = Arc::new(File::open(path)?);
        let actual = file.metadata()?.len();
        if actual != size {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the file is {actual} bytes, the blob's manifest says {size}"),
            ));
        }
        let path = path.to_path_buf();
        let opened = Arc::new(self);
        Ok(futures::stream::iter(0..size.div_ceil(BLOCK))
            .map(move |index| {
                let (opened, path, file) = (opened.clone(), path.clone(), file.clone());
                async move {
                    let len = BLOCK.min(size - index * BLOCK);
                    opened
                        .reads
                        .block(&opened, &file, index, len)
                        .await
                        .map_err(|source| RegistryError::LocalFile {
                            target: opened.digest.to_string(),
                            path,
                            source,
                        })
                }
            })
            // The next block is read while this one is sent.
            .buffered(2)
            .boxed())
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        let (digest, size, next) = (&self.digest, self.size, &self.next);
        self.reads.update(self.id, |member, _| {
            if let Some(uploads) = member.open.get_mut(digest) {
                uploads.retain(|other| !Arc::ptr_eq(other, next));
                if uploads.is_empty() {
                    member.open.remove(digest);
                    member.done.insert(digest.clone());
                }
            }
            blocks_of(digest, size)
        });
    }
}

/// The keys of every block of `digest` (`size` bytes).
fn blocks_of(digest: &Digest, size: u64) -> Vec<Key> {
    (0..size.div_ceil(BLOCK))
        .map(|index| (digest.clone(), index))
        .collect()
}

impl Taker {
    /// The cluster publishes an imageset whose blobs are `blobs`: it takes no
    /// other, unless it opens one.
    pub fn expect(&self, blobs: impl IntoIterator<Item = Digest>) {
        let only = blobs.into_iter().collect();
        self.reads.update(self.id, |member, blocks| {
            member.only = Some(only);
            blocks.keys().cloned().collect()
        });
    }

    /// Blob `digest` (`size` bytes) is in place at the cluster's registry where
    /// one of its images needs it: it probably takes it no more, though it
    /// still may, for a repository that lacks it. No change while it uploads it.
    pub fn in_place(&self, digest: &Digest, size: u64) {
        self.reads.update(self.id, |member, _| {
            if member.in_place.insert(digest.clone()) {
                blocks_of(digest, size)
            } else {
                Vec::new()
            }
        });
    }

    /// The cluster's publish ended: it takes nothing more.
    pub fn leave(&self) {
        self.reads.update(self.id, |member, blocks| {
            if std::mem::replace(&mut member.left, true) {
                Vec::new()
            } else {
                blocks.keys().cloned().collect()
            }
        });
    }

    /// Blob `digest`, stored at `path` (`size` bytes), as the body of this
    /// cluster's upload, read with the other clusters'. Fails at once when the
    /// file is missing or not of the blob's size.
    pub fn stream(
        &self,
        digest: &Digest,
        path: &Path,
        size: u64,
    ) -> std::io::Result<BoxStream<'static, Result<Bytes, RegistryError>>> {
        let next = Arc::new(AtomicU64::new(0));
        self.reads.update(self.id, |member, _| {
            member
                .open
                .entry(digest.clone())
                .or_default()
                .push(next.clone());
            Vec::new()
        });
        let opened = Opened {
            reads: self.reads.clone(),
            id: self.id,
            digest: digest.clone(),
            size,
            next,
        };
        opened.stream(path)
    }
}

impl Drop for Taker {
    fn drop(&mut self) {
        self.leave();
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

    /// A pass a minute old, on the paused clock: the clusters have patience
    /// to spare, so whether they wait depends on the cache alone.
    async fn a_minute_into_the_pass() {
        tokio::time::advance(Duration::from_secs(60)).await;
    }

    /// What was waited since `started` is less than `bound`.
    fn assert_waited_under(started: Instant, bound: Duration, for_what: &str) {
        let waited = started.elapsed();
        assert!(waited < bound, "waited {waited:?} for {for_what}");
    }

    /// What a registry receives: each block copied out and let go, as hyper
    /// does, after `pause` (the registry's time per block).
    async fn upload_at(taker: &Taker, d: &Digest, p: &Path, size: u64, pause: Duration) -> Vec<u8> {
        taker
            .stream(d, p, size)
            .unwrap()
            .try_fold(Vec::new(), |mut got, block| async move {
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
                got.extend_from_slice(&block);
                Ok(got)
            })
            .await
            .unwrap()
    }

    async fn upload(taker: &Taker, d: &Digest, p: &Path, size: u64) -> Vec<u8> {
        upload_at(taker, d, p, size, Duration::ZERO).await
    }

    #[tokio::test]
    async fn three_uploads_at_once_read_each_blob_once_and_hold_nothing_after() {
        let dir = tempfile::tempdir().unwrap();
        let blobs: Vec<_> = [(3 * BLOCK as usize + 17, 1), (5, 2), (BLOCK as usize, 3)]
            .iter()
            .map(|&(n, s)| blob(dir.path(), n, s))
            .collect();
        let (shared, takers) = SharedReads::new(3);
        let cluster = |taker| {
            let blobs = &blobs;
            async move {
                let mut got = Vec::new();
                for (d, p, data) in blobs {
                    got.push(upload(taker, d, p, data.len() as u64).await);
                }
                got
            }
        };
        let all = futures::future::join_all(takers.iter().map(cluster)).await;
        for got in all {
            let want: Vec<Vec<u8>> = blobs.iter().map(|b| b.2.clone()).collect();
            assert!(got == want, "every upload gets the blob's exact bytes");
        }
        let total: u64 = blobs.iter().map(|b| b.2.len() as u64).sum();
        assert_eq!(shared.read_bytes(), total);
        assert_nothing_held(&shared, "taken by all three, dropped");
    }

    #[tokio::test]
    async fn a_whole_block_is_read_into_a_buffer_freed_before_not_into_fresh_memory() {
        let dir = tempfile::tempdir().unwrap();
        let (d, p, data) = blob(dir.path(), 4 * BLOCK as usize + 3, 7);
        let (shared, t) = SharedReads::new(1);
        assert!(upload(&t[0], &d, &p, data.len() as u64).await == data);
        let spare: Vec<*const u8> = shared
            .live
            .spare
            .lock()
            .iter()
            .map(|b| b.as_ptr())
            .collect();
        // As many as were alive at once: the upload read its later blocks
        // into the buffers of its first.
        assert!((1..=4).contains(&spare.len()), "{} spare", spare.len());
        let (e, q, other) = blob(dir.path(), 2 * BLOCK as usize, 8);
        let mut stream = t[0].stream(&e, &q, other.len() as u64).unwrap();
        let first = stream.next().await.unwrap().unwrap();
        assert!(
            first[..] == other[..BLOCK as usize],
            "the buffer holds the new block's bytes"
        );
        assert!(spare.contains(&first.as_ptr()), "read into a spare buffer");
    }

    #[test]
    fn spare_buffers_are_whole_blocks_and_at_most_spare_blocks_of_them() {
        let spare = Spare::default();
        spare.give(vec![0; 5]);
        assert_eq!(spare.lock().len(), 0, "a short block is not kept");
        for _ in 0..SPARE_BLOCKS + 3 {
            spare.give(vec![0; BLOCK as usize]);
        }
        assert_eq!(spare.lock().len(), SPARE_BLOCKS);
        assert_eq!(spare.take(5).len(), 5);
        assert_eq!(
            spare.lock().len(),
            SPARE_BLOCKS,
            "a short read takes no whole block"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_cluster_far_behind_reads_dropped_blocks_itself_and_memory_stays_under_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let (d, p, data) = blob(dir.path(), 32 * BLOCK as usize, 9);
        let cap = 2 * BLOCK;
        let (shared, t) = SharedReads::with_cap(2, cap);
        a_minute_into_the_pass().await;
        // The fast cluster takes the whole blob before the slow one starts.
        assert!(upload(&t[0], &d, &p, data.len() as u64).await == data);
        assert_eq!(shared.read_bytes(), 32 * BLOCK);
        assert!(upload(&t[1], &d, &p, data.len() as u64).await == data);
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
    #[tokio::test(start_paused = true)]
    async fn a_block_read_again_for_the_last_cluster_does_not_push_out_the_blocks_it_needs_next() {
        let dir = tempfile::tempdir().unwrap();
        let (x, xp, xd) = blob(dir.path(), 4 * BLOCK as usize, 1);
        let (y, yp, yd) = blob(dir.path(), 4 * BLOCK as usize, 2);
        let (shared, t) = SharedReads::with_cap(3, 4 * BLOCK);
        a_minute_into_the_pass().await;
        let size = 4 * BLOCK;
        for (taker, d, p, data) in [
            (&t[0], &x, &xp, &xd),
            (&t[1], &x, &xp, &xd),
            (&t[0], &y, &yp, &yd),
            (&t[1], &y, &yp, &yd),
        ] {
            assert!(upload(taker, d, p, size).await == *data);
        }
        assert_eq!(
            shared.read_bytes(),
            8 * BLOCK,
            "the second cluster read nothing"
        );
        assert!(upload(&t[2], &x, &xp, size).await == xd);
        assert!(upload(&t[2], &y, &yp, size).await == yd);
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
        let first = FixedBitSet::from_iter([0]);
        for index in 0..3 * REMEMBERED as u64 {
            s.remember((d.clone(), index), first.clone());
            // Every other block is read again at once.
            if index % 2 == 0 {
                assert_eq!(s.taken_before(&(d.clone(), index)), first);
                s.taken_before.remove(&(d.clone(), index));
            }
        }
        assert!(s.taken_before.len() <= REMEMBERED);
        assert!(
            s.dropped.len() <= 2 * REMEMBERED + 64,
            "{}",
            s.dropped.len()
        );
        let last = (d.clone(), 3 * REMEMBERED as u64 - 1);
        assert_eq!(s.taken_before(&last), first, "the latest is remembered");
        assert!(
            s.taken_before(&(d, 1)).is_clear(),
            "the oldest is forgotten"
        );
    }

    #[tokio::test]
    async fn clusters_uploading_together_hold_a_few_blocks_whatever_the_blob_size() {
        let dir = tempfile::tempdir().unwrap();
        let (d, p, data) = blob(dir.path(), 48 * BLOCK as usize + 3, 4);
        let (shared, t) = SharedReads::with_cap(3, 4 * BLOCK);
        let size = data.len() as u64;
        let all = futures::future::join_all(t.iter().map(|t| upload(t, &d, &p, size))).await;
        assert!(all.iter().all(|got| *got == data));
        let peak = shared.peak_bytes();
        assert!(
            peak <= 4 * BLOCK + 3 * 3 * BLOCK,
            "memory grew with the blob: {peak}"
        );
    }

    /// One cluster's registry took a block and stopped reading, with the next
    /// ones asked for: the other waits for it once at most.
    #[tokio::test(start_paused = true)]
    async fn a_cluster_that_stops_reading_holds_no_other_cluster_back() {
        let dir = tempfile::tempdir().unwrap();
        let (d, p, data) = blob(dir.path(), 16 * BLOCK as usize, 5);
        let (_shared, t) = SharedReads::with_cap(2, 2 * BLOCK);
        a_minute_into_the_pass().await;
        let size = data.len() as u64;
        let mut stuck = t[0].stream(&d, &p, size).unwrap();
        assert!(stuck.next().await.unwrap().unwrap()[..] == data[..BLOCK as usize]);
        let started = Instant::now();
        assert!(upload(&t[1], &d, &p, size).await == data);
        assert_waited_under(started, 2 * PATIENCE, "a cluster that stopped");
        drop(stuck);
    }

    /// Two clusters whose registries take blocks at different speeds (one every
    /// 80 ms, the other every 100 ms): the one ahead waits for room instead of
    /// running off, so the one behind reads nothing again.
    #[tokio::test(start_paused = true)]
    async fn a_cluster_ahead_waits_for_room_so_the_one_behind_reads_nothing_again() {
        let dir = tempfile::tempdir().unwrap();
        let (d, p, data) = blob(dir.path(), 16 * BLOCK as usize, 6);
        let (shared, t) = SharedReads::with_cap(2, 2 * BLOCK);
        let size = data.len() as u64;
        let (fast, slow) = tokio::join!(
            upload_at(&t[0], &d, &p, size, Duration::from_millis(80)),
            upload_at(&t[1], &d, &p, size, Duration::from_millis(100))
        );
        assert!(fast == data && slow == data);
        assert_eq!(shared.read_bytes(), 16 * BLOCK, "every block read once");
    }

    /// A registry ten times slower than the other's (a slow link) does not set
    /// the pace: the faster cluster waits half of its time at most.
    #[tokio::test(start_paused = true)]
    async fn a_cluster_far_slower_than_the_others_does_not_set_their_pace() {
        let dir = tempfile::tempdir().unwrap();
        let (small, sp, sd) = blob(dir.path(), BLOCK as usize, 16);
        let (d, p, data) = blob(dir.path(), 16 * BLOCK as usize, 17);
        let (_shared, t) = SharedReads::with_cap(2, 2 * BLOCK);
        // Both take the first blob: room was made just now.
        let (a, b) = tokio::join!(
            upload(&t[0], &small, &sp, BLOCK),
            upload(&t[1], &small, &sp, BLOCK)
        );
        assert!(a == sd && b == sd);
        let size = data.len() as u64;
        let started = Instant::now();
        let fast = async {
            let got = upload_at(&t[0], &d, &p, size, Duration::from_millis(100)).await;
            (got, started.elapsed())
        };
        let ((fast, took), slow) =
            tokio::join!(fast, upload_at(&t[1], &d, &p, size, Duration::from_secs(1)));
        assert!(fast == data && slow == data);
        // Alone, 1.6 s; at the slow one's pace, 16 s; with 2 s and half of
        // its time to wait, under 8 s.
        assert!(
            took < Duration::from_secs(8),
            "the fast cluster took {took:?}"
        );
    }

    /// A cluster that stops taking blocks without saying so holds the others
    /// back once, for `PATIENCE`, not once per block.
    #[tokio::test(start_paused = true)]
    async fn a_cluster_that_silently_takes_nothing_holds_the_others_back_once() {
        let dir = tempfile::tempdir().unwrap();
        let (small, sp, sd) = blob(dir.path(), BLOCK as usize, 7);
        let (d, p, data) = blob(dir.path(), 16 * BLOCK as usize, 8);
        let (_shared, t) = SharedReads::with_cap(2, 2 * BLOCK);
        a_minute_into_the_pass().await;
        // Both take the first blob: room was made just now.
        let (a, b) = tokio::join!(
            upload(&t[0], &small, &sp, BLOCK),
            upload(&t[1], &small, &sp, BLOCK)
        );
        assert!(a == sd && b == sd);
        let started = Instant::now();
        assert!(upload(&t[0], &d, &p, data.len() as u64).await == data);
        let waited = started.elapsed();
        assert!(
            waited >= PATIENCE && waited < 2 * PATIENCE,
            "waited {waited:?} for a cluster that takes nothing"
        );
    }

    /// Three clusters take blob X; two of them also take blob Y, which the
    /// third's registry has. The blocks of Y are not kept for the third, so
    /// they do not fill the cache while the blocks of X make room and renew
    /// the wait: nobody waits for room at all, and each blob is read once.
    #[tokio::test(start_paused = true)]
    async fn a_blob_in_place_at_one_cluster_holds_the_others_back_nowhere() {
        let dir = tempfile::tempdir().unwrap();
        let (x, xp, xd) = blob(dir.path(), 16 * BLOCK as usize, 10);
        let (y, yp, yd) = blob(dir.path(), 16 * BLOCK as usize, 11);
        let (shared, t) = SharedReads::with_cap(3, 4 * BLOCK);
        a_minute_into_the_pass().await;
        let size = 16 * BLOCK;
        t[2].in_place(&y, size);
        let (x, xp, xd, y, yp, yd) = (&x, &xp, &xd, &y, &yp, &yd);
        let both = |taker| async move {
            let (gx, gy) = tokio::join!(upload(taker, x, xp, size), upload(taker, y, yp, size));
            gx == *xd && gy == *yd
        };
        let started = Instant::now();
        let (a, b, c) = tokio::join!(both(&t[0]), both(&t[1]), upload(&t[2], x, xp, size));
        assert!(a && b && c == *xd);
        assert_eq!(started.elapsed(), Duration::ZERO, "nobody waited for room");
        assert_eq!(shared.read_bytes(), 32 * BLOCK, "each blob read once");
        assert_nothing_held(&shared, "every block taken by every cluster that takes it");
    }

    /// One cluster publishes an older imageset first, whose blobs are not the
    /// others': what they read is not kept for it, and what it reads is read
    /// alone, kept for nobody.
    #[tokio::test(start_paused = true)]
    async fn a_cluster_publishing_another_imageset_is_not_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let (new, np, nd) = blob(dir.path(), 8 * BLOCK as usize, 12);
        let (old, op, od) = blob(dir.path(), 8 * BLOCK as usize, 13);
        let (shared, t) = SharedReads::with_cap(3, 2 * BLOCK);
        a_minute_into_the_pass().await;
        let size = 8 * BLOCK;
        t[0].expect([new.clone()]);
        t[1].expect([new.clone()]);
        t[2].expect([old.clone(), Digest::of(b"another blob")]);
        let started = Instant::now();
        let (a, b, c) = tokio::join!(
            upload(&t[0], &new, &np, size),
            upload_at(&t[1], &new, &np, size, Duration::from_millis(100)),
            upload(&t[2], &old, &op, size)
        );
        assert!(a == nd && b == nd && c == od);
        assert_waited_under(
            started,
            PATIENCE,
            "a cluster that takes none of these blocks",
        );
        assert_eq!(shared.read_bytes(), 16 * BLOCK, "each blob read once");
        assert_nothing_held(&shared, "nothing kept for the third cluster");
    }

    /// An upload retried (or sent again to another repository) after every
    /// cluster took the blob reads it again for itself alone: kept for the
    /// others, who are done with it, it would fill the cache and hold back
    /// the blob they share next.
    #[tokio::test(start_paused = true)]
    async fn a_blob_uploaded_again_after_everyone_took_it_is_kept_for_nobody() {
        let dir = tempfile::tempdir().unwrap();
        let (x, xp, xd) = blob(dir.path(), 8 * BLOCK as usize, 18);
        let (y, yp, yd) = blob(dir.path(), 8 * BLOCK as usize, 19);
        let (shared, t) = SharedReads::with_cap(2, 4 * BLOCK);
        a_minute_into_the_pass().await;
        let size = 8 * BLOCK;
        let (a, b) = tokio::join!(upload(&t[0], &x, &xp, size), upload(&t[1], &x, &xp, size));
        assert!(a == xd && b == xd);
        let started = Instant::now();
        let (again, a, b) = tokio::join!(
            upload(&t[0], &x, &xp, size),
            upload(&t[0], &y, &yp, size),
            upload_at(&t[1], &y, &yp, size, Duration::from_millis(10))
        );
        assert!(again == xd && a == yd && b == yd);
        assert_waited_under(started, PATIENCE, "room taken by blocks nobody needs");
        assert_eq!(shared.read_bytes(), 24 * BLOCK, "X twice, Y once");
        assert_nothing_held(&shared, "nothing kept for a cluster done with X");
    }

    #[tokio::test]
    async fn a_cluster_that_leaves_releases_what_was_kept_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let (d, p, data) = blob(dir.path(), 4 * BLOCK as usize, 14);
        let (shared, mut t) = SharedReads::new(2);
        assert!(upload(&t[0], &d, &p, data.len() as u64).await == data);
        assert_eq!(
            shared.state.lock().unwrap().kept,
            4 * BLOCK,
            "kept for the other"
        );
        // Its publish ended (failed) before it took them.
        drop(t.pop());
        assert_nothing_held(&shared, "nobody left to take them");
    }

    /// A cluster whose registry had the blob in one repository may still need
    /// it in another: once it opens the blob, the blocks are kept for it again,
    /// even when another of its images finds the blob in place meanwhile.
    #[tokio::test]
    async fn a_blob_in_place_then_opened_is_shared_again() {
        let dir = tempfile::tempdir().unwrap();
        let (d, p, data) = blob(dir.path(), 4 * BLOCK as usize, 15);
        let (shared, t) = SharedReads::new(2);
        let size = data.len() as u64;
        t[1].in_place(&d, size);
        let later = t[1].stream(&d, &p, size).unwrap();
        assert!(upload(&t[0], &d, &p, size).await == data);
        assert_eq!(
            shared.state.lock().unwrap().kept,
            size,
            "kept for the upload"
        );
        t[1].in_place(&(d.clone()), size);
        t[1].in_place(&Digest::of(b"another blob"), BLOCK);
        assert_eq!(
            shared.state.lock().unwrap().kept,
            size,
            "still kept for the upload under way"
        );
        let got: Vec<u8> = later
            .try_fold(Vec::new(), |mut got, block| async move {
                got.extend_from_slice(&block);
                Ok(got)
            })
            .await
            .unwrap();
        assert!(got == data);
        assert_eq!(shared.read_bytes(), size, "read once, for both");
        assert_nothing_held(&shared, "taken by both");
    }

    /// A cluster retries an upload while another cluster is half-way through
    /// the same blob: the blocks the other has handed over already are read
    /// again for the retry alone, not kept for the other until it is done.
    #[tokio::test]
    async fn a_retry_keeps_nothing_for_an_upload_past_the_blocks_it_reads_again() {
        let dir = tempfile::tempdir().unwrap();
        let (d, p, data) = blob(dir.path(), 16 * BLOCK as usize, 20);
        let (shared, t) = SharedReads::new(2);
        let size = data.len() as u64;
        let mut half = t[1].stream(&d, &p, size).unwrap();
        for index in 0..8 {
            let block = half.next().await.unwrap().unwrap();
            assert!(block[..] == data[index * BLOCK as usize..][..BLOCK as usize]);
        }
        assert!(upload(&t[0], &d, &p, size).await == data);
        assert_eq!(
            shared.read_bytes(),
            size,
            "the first upload read nothing again"
        );
        // The eight it handed over, and the one it read ahead if that was
        // taken already.
        let taken = shared.state.lock().unwrap().members[1].open[&d][0].load(Ordering::Relaxed);
        assert!((8..=9).contains(&taken), "{taken}");
        assert!(upload(&t[0], &d, &p, size).await == data);
        assert_eq!(
            shared.read_bytes(),
            size + taken * BLOCK,
            "the retry read again the blocks the other had taken"
        );
        let kept: Vec<u64> = {
            let s = shared.state.lock().unwrap();
            let mut kept: Vec<u64> = s.blocks.keys().map(|(_, index)| *index).collect();
            kept.sort_unstable();
            kept
        };
        assert_eq!(
            kept,
            (taken..16).collect::<Vec<_>>(),
            "kept only what the other still takes"
        );
        drop(half);
        assert_nothing_held(&shared, "the other cluster dropped its upload");
    }

    #[tokio::test]
    async fn a_store_file_of_the_wrong_size_is_refused_before_anything_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let (d, p, data) = blob(dir.path(), 100, 1);
        let (shared, t) = SharedReads::new(2);
        let e = t[0].stream(&d, &p, data.len() as u64 + 1).err().unwrap();
        assert!(e.to_string().contains("the file is 100 bytes"), "{e}");
        assert!(t[0].stream(&d, &dir.path().join("absent"), 1).is_err());
        assert_eq!(shared.read_bytes(), 0);
    }
}
