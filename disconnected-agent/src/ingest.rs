//! Verifying an imageset's chunks, repairing them from parity when some are lost or
//! damaged, and taking the content into the store.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use airlock_imageset::ImagesetManifest;
use airlock_oci::digest::Digest;
use airlock_oci::manifest::{self, widen};
use airlock_oci::quote::clipped;

use airlock_imageset::parity;
use airlock_imageset::read::{self, ChunkError, ChunkHead, Discard, PartSink};
use airlock_imageset::{BlobRecord, PartRecord};
use airlock_registry::progress::Progress;

use crate::scan::Candidate;
use crate::store::{Announce, Store};

/// Why an imageset could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Files are missing or damaged beyond what parity rebuilds; the imageset waits.
    #[error("{0}")]
    Incomplete(String),
    /// A chunk is damaged and there is no parity to rebuild it.
    #[error(transparent)]
    Damaged(#[from] ChunkError),
    /// Every byte matches its digest, but what the bytes are contradicts the
    /// manifest ([`check_manifests`]): forged, refused whole.
    #[error("{0}")]
    Forged(String),
}

/// What ingesting did.
#[derive(Debug, Default)]
pub struct Ingested {
    /// Blobs committed to the store.
    pub stored: u64,
    /// Chunk files rebuilt from parity.
    pub rebuilt: Vec<PathBuf>,
    /// Damaged files set aside (renamed with `.damaged`).
    pub set_aside: Vec<PathBuf>,
}

/// The size of a chunk or parity file, as its manifest records it (parity
/// files are numbered from 1 too, in a list of their own).
pub fn file_size(head: &ChunkHead) -> u64 {
    let files = match head.identity.parity {
        Some(_) => &head.manifest.parity,
        None => &head.manifest.chunks,
    };
    files
        .iter()
        .find(|r| r.index == head.identity.chunk)
        .map_or(0, |r| r.size)
}

/// The bytes of the chunk files of `candidate`'s imageset, all of them (those
/// lost too, which a repair rebuilds): what taking it in verifies.
pub fn chunk_bytes(candidate: &Candidate) -> u64 {
    candidate.manifest.chunks.iter().map(|r| r.size).sum()
}

/// [`read::verify`], counting into `progress` the bytes read: the blob bytes as
/// they pass, the rest of the file (headers, padding) once it is done. A file
/// that fails is taken back out of the count. Returns the bytes counted.
pub fn verify_counted(
    head: &ChunkHead,
    sink: &mut dyn PartSink,
    progress: &dyn Progress,
) -> Result<u64, ChunkError> {
    let mut counted = Counted {
        inner: sink,
        progress,
        bytes: 0,
    };
    match read::verify(head, &mut counted) {
        Ok(()) => {
            let size = file_size(head);
            progress.add(size.saturating_sub(counted.bytes));
            Ok(size.max(counted.bytes))
        }
        Err(e) => {
            progress.sub(counted.bytes);
            Err(e)
        }
    }
}

/// The file to blame for `e`. A split blob's damage shows when its last part is
/// read, so the chunks holding its parts are proved alone (by their payload
/// hashes in version 1, part by part in version 2) and the first that fails is
/// named: a site sets aside the damaged file, not the intact one read after
/// it. `e` itself when all of them pass (a forger who fixed those hashes), and
/// for any other error.
pub fn blame(chunks: &BTreeMap<u32, ChunkHead>, e: ChunkError) -> ChunkError {
    let ChunkError::Split {
        chunks: holding, ..
    } = &e
    else {
        return e;
    };
    holding
        .iter()
        .filter_map(|i| chunks.get(i))
        .find_map(|head| read::verify(head, &mut Discard).err())
        .unwrap_or(e)
}

/// A sink that counts what it hands on.
struct Counted<'a> {
    inner: &'a mut dyn PartSink,
    progress: &'a dyn Progress,
    bytes: u64,
}

impl PartSink for Counted<'_> {
    fn part(
        &mut self,
        blob_index: usize,
        blob: &BlobRecord,
        part: usize,
        record: &PartRecord,
        data: &mut dyn std::io::Read,
    ) -> std::io::Result<()> {
        let mut reader = CountingRead {
            inner: data,
            progress: self.progress,
            bytes: &mut self.bytes,
        };
        self.inner.part(blob_index, blob, part, record, &mut reader)
    }

    fn checks_digests(&self) -> bool {
        self.inner.checks_digests()
    }

    fn pending(&self) -> usize {
        self.inner.pending()
    }
}

struct CountingRead<'a> {
    inner: &'a mut dyn std::io::Read,
    progress: &'a dyn Progress,
    bytes: &'a mut u64,
}

impl std::io::Read for CountingRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        *self.bytes += n as u64;
        self.progress.add(n as u64);
        Ok(n)
    }
}

/// Verifies every chunk of a complete imageset, in chunk order, storing each blob
/// once its bytes are all in and match their digest, and announcing it to
/// `announce`. On error nothing is accepted; blobs already committed to the store
/// are verified content and stay.
fn verify_into_store(
    candidate: &Candidate,
    store: &Store,
    progress: &dyn Progress,
    announce: Option<Announce>,
) -> Result<u64, ChunkError> {
    let mut sink = store
        .sink()
        .map_err(store_failure(candidate.chunks.values().next()))?
        .announcing(announce);
    // A pass that fails is taken back out of the count: the pass after a
    // repair counts every chunk again.
    let mut counted = 0;
    for head in candidate.chunks.values() {
        match verify_counted(head, &mut sink, progress) {
            Ok(n) => counted += n,
            Err(e) => {
                progress.sub(counted);
                return Err(blame(&candidate.chunks, e));
            }
        }
        tracing::debug!(chunk = %head.path.display(), index = head.identity.chunk, "chunk verified");
    }
    if sink.pending() != 0 {
        let last = candidate
            .chunks
            .values()
            .last()
            .expect("a complete imageset has chunks");
        return Err(ChunkError::Corrupt {
            path: last.path.clone(),
            reason: format!(
                "{} blobs are incomplete after the last chunk",
                sink.pending()
            ),
        });
    }
    sink.finish()
        .map_err(store_failure(candidate.chunks.values().last()))
}

/// A local storage failure, told against the chunk read at the time.
fn store_failure(head: Option<&ChunkHead>) -> impl FnOnce(std::io::Error) -> ChunkError + '_ {
    move |source| ChunkError::Store {
        path: head.map(|h| h.path.clone()).unwrap_or_default(),
        source,
    }
}

/// Takes an imageset into the store, rebuilding lost or damaged chunks from its
/// parity files first when it has them. `dir` is where rebuilt chunks are written.
/// `progress` counts the chunk bytes verified (again, after a repair); `announce`
/// is told each blob committed, and closed when this returns.
pub fn ingest(
    candidate: &Candidate,
    store: &Store,
    dir: &Path,
    progress: &dyn Progress,
    announce: Option<Announce>,
) -> Result<Ingested, IngestError> {
    let chosen;
    let candidate = if candidate.spares.is_empty() {
        candidate
    } else {
        chosen = choose_copies(candidate);
        &chosen
    };
    if candidate.missing().is_empty() {
        match verify_into_store(candidate, store, progress, announce.clone()) {
            Ok(stored) => {
                return Ok(Ingested {
                    stored,
                    ..Ingested::default()
                });
            }
            // A local disk problem is not a damaged chunk: parity cannot help.
            Err(e @ ChunkError::Store { .. }) => return Err(e.into()),
            Err(e) if candidate.manifest.parity.is_empty() => return Err(e.into()),
            Err(e) => tracing::warn!(error = %e, "a chunk is damaged; rebuilding from parity"),
        }
    } else if candidate.manifest.parity.is_empty() {
        return Err(IngestError::Incomplete(missing_message(candidate, &[])));
    }
    let mut result = repair(candidate, dir)?;
    let repaired = rescan(candidate, &result.rebuilt)?;
    result.stored = verify_into_store(&repaired, store, progress, announce)?;
    Ok(result)
}

/// Checks each manifest the imageset lists whose bytes are in the store (all it
/// carries, verified just now, and those earlier imagesets carried, unless the
/// store was pruned): it parses as the media type the imageset lists for it, and
/// every blob and child manifest it references is listed in the imageset. A forger
/// can give any bytes a consistent digest, or list a layer shipped earlier as a
/// manifest; without this, such an imageset would be accepted, and every publish
/// after it would fail.
///
/// The one exception is an index that images filtered by platform (their
/// `platforms`): of its children, only those one of their filters keeps must be
/// listed. When any image needs the index whole, or another listed manifest
/// names it as a child, every child must be.
pub fn check_manifests(m: &ImagesetManifest, store: &Store) -> Result<(), String> {
    // Each listed digest, and whether it is listed as a manifest.
    let listed: HashMap<&Digest, bool> = m
        .blobs
        .iter()
        .map(|b| (&b.digest, b.media_type.is_some()))
        .collect();
    // The platforms each filtered index keeps (empty: every one).
    let mut filters: HashMap<&Digest, Vec<String>> = HashMap::new();
    for i in &m.images {
        match filters.get_mut(&i.digest) {
            Some(kept) => widen(kept, &i.platforms),
            None => {
                filters.insert(&i.digest, i.platforms.clone());
            }
        }
    }
    filters.retain(|_, kept| !kept.is_empty());
    let unlisted = |digest: &Digest, d: &manifest::Descriptor, child: bool, filtered: &[String]| {
        let how = match filtered {
            [] => String::new(),
            f => format!(" for {}", f.join(", ")),
        };
        match listed.get(&d.digest) {
            None => Err(format!(
                "manifest {digest} references {}{how}, which the imageset does not list",
                d.digest
            )),
            Some(false) if child => Err(format!(
                "manifest {digest} references {} as a child manifest, which the imageset lists as a blob",
                d.digest
            )),
            Some(_) => Ok(()),
        }
    };
    // Pass 1: every manifest but a filtered index is checked whole; what any
    // of them names as a child is needed whole. Only the children of filtered
    // indexes are kept for pass 2, so memory stays bounded by those.
    let mut nested: HashSet<Digest> = HashSet::new();
    let mut sparse: Vec<(&Digest, Vec<manifest::Descriptor>)> = Vec::new();
    for b in m
        .blobs
        .iter()
        .filter(|b| b.carried() || store.has(&b.digest))
    {
        let Some(media_type) = &b.media_type else {
            continue;
        };
        let bytes = store
            .read(&b.digest)
            .map_err(|e| format!("manifest {}: cannot read it from the store: {e}", b.digest))?;
        let parsed = manifest::parse(&bytes, Some(media_type))
            .map_err(|e| format!("manifest {} is not a {media_type}: {e}", b.digest))?;
        if parsed.media_type != *media_type {
            return Err(format!(
                "manifest {} says it is a {}, the imageset lists it as {media_type}",
                b.digest,
                clipped(&parsed.media_type)
            ));
        }
        for d in parsed.blobs() {
            unlisted(&b.digest, d, false, &[])?;
        }
        match filters.get(&b.digest) {
            Some(kept) => {
                let children = manifest::kept_children(parsed.children(), kept);
                nested.extend(children.iter().map(|c| c.digest.clone()));
                sparse.push((&b.digest, parsed.children().to_vec()));
            }
            None => {
                for c in parsed.children() {
                    unlisted(&b.digest, c, true, &[])?;
                    nested.insert(c.digest.clone());
                }
            }
        }
    }
    // Pass 2: a filtered index another manifest needs as a child is needed whole.
    for (digest, children) in &sparse {
        let kept: &[String] = match nested.contains(*digest) {
            true => &[],
            false => &filters[digest],
        };
        for c in manifest::kept_children(children, kept) {
            unlisted(digest, c, true, kept)?;
        }
    }
    Ok(())
}

/// Where a chunk or parity file arrived more than once, keeps an intact copy: the
/// first copy is verified, and replaced by a spare that verifies when it does not.
fn choose_copies(c: &Candidate) -> Candidate {
    let mut chosen = c.clone();
    for spare in &c.spares {
        let files = if spare.identity.parity.is_some() {
            &mut chosen.parity
        } else {
            &mut chosen.chunks
        };
        let Some(first) = files.get(&spare.identity.chunk) else {
            continue;
        };
        if read::verify(first, &mut Discard).is_err() && read::verify(spare, &mut Discard).is_ok() {
            tracing::info!(damaged = %first.path.display(), intact = %spare.path.display(), "using an intact second copy of a chunk");
            files.insert(spare.identity.chunk, spare.clone());
        }
    }
    chosen
}

/// Names the files an imageset still needs.
pub fn missing_message(c: &Candidate, damaged: &[String]) -> String {
    let m = &c.manifest;
    let mut lacking: Vec<String> = c.missing().iter().map(|r| r.name.clone()).collect();
    lacking.extend(damaged.iter().cloned());
    if m.parity.is_empty() {
        return format!(
            "{} is incomplete: {} of {} chunk files missing or damaged: {}; nothing of it was published. Copy them into the directory and run again",
            m.label(),
            lacking.len(),
            m.chunks.len(),
            lacking.join(", ")
        );
    }
    lacking.extend(c.missing_parity().iter().map(|r| r.name.clone()));
    let n = m.parity.len();
    let total = m.chunks.len() + n;
    let need = lacking.len().saturating_sub(n);
    format!(
        "{} is incomplete: {} of its {total} chunk and parity files are missing or damaged, parity rebuilds {n}; copy any {need} of: {}; nothing of it was published",
        m.label(),
        lacking.len(),
        lacking.join(", ")
    )
}

/// Which of the imageset's files are intact: verifies every present chunk and
/// parity file, sets damaged ones aside, and rebuilds the missing chunks.
fn repair(c: &Candidate, dir: &Path) -> Result<Ingested, IngestError> {
    let m = &c.manifest;
    let mut damaged = Vec::new();
    let mut set_aside = Vec::new();
    let mut check = |head: Option<&ChunkHead>, name: &str| -> Option<PathBuf> {
        let head = head?;
        match read::verify(head, &mut Discard) {
            Ok(()) => Some(head.path.clone()),
            Err(e) => {
                tracing::warn!(file = %head.path.display(), error = %e, "damaged; setting it aside");
                damaged.push(name.to_string());
                let aside = PathBuf::from(format!("{}.damaged", head.path.display()));
                if std::fs::rename(&head.path, &aside).is_ok() {
                    set_aside.push(aside);
                }
                None
            }
        }
    };
    let data: Vec<Option<PathBuf>> = m
        .chunks
        .iter()
        .map(|r| check(c.chunks.get(&r.index), &r.name))
        .collect();
    let parity: Vec<Option<PathBuf>> = m
        .parity
        .iter()
        .map(|r| check(c.parity.get(&r.index), &r.name))
        .collect();
    let intact = data.iter().flatten().count() + parity.iter().flatten().count();
    if intact < m.chunks.len() {
        return Err(IngestError::Incomplete(missing_message(c, &damaged)));
    }
    let any = data
        .iter()
        .chain(&parity)
        .flatten()
        .next()
        .expect("at least one intact file");
    let head = read::read_head(any)?;
    // The file may have been replaced since the scan; its metadata must be the
    // imageset's, whose sizes were checked against this very length.
    if head.manifest_digest != c.manifest_digest {
        return Err(IngestError::Incomplete(format!(
            "{}: {} changed while it was being repaired; it is looked at again on the next run",
            m.label(),
            any.display()
        )));
    }
    let mut metadata = vec![0u8; head.payload_offset as usize];
    std::fs::File::open(any)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut metadata))
        .map_err(|source| ChunkError::Io {
            path: any.clone(),
            source,
        })?;
    let rebuilt =
        parity::repair(m, head.payload_offset, &metadata, &data, &parity, dir).map_err(|why| {
            IngestError::Incomplete(format!("{}: repair from parity failed: {why}", m.label()))
        })?;
    for r in &rebuilt {
        tracing::info!(file = %r.display(), "chunk rebuilt from parity and verified");
    }
    Ok(Ingested {
        stored: 0,
        rebuilt,
        set_aside,
    })
}

/// The candidate with its chunks re-read after a repair.
fn rescan(c: &Candidate, rebuilt: &[PathBuf]) -> Result<Candidate, ChunkError> {
    let mut repaired = c.clone();
    for path in rebuilt {
        let head = read::read_head(path)?;
        repaired.chunks.insert(head.identity.chunk, head);
    }
    // Chunks that were present but damaged were set aside and rebuilt under their
    // manifest names; any still pointing at a set-aside path are replaced above.
    Ok(repaired)
}
