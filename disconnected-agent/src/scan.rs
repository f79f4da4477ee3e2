//! Finding imagesets among the files of a directory.
//!
//! Files are identified by their content, never by their names: a file manager may
//! rename a chunk, a diode may deliver chunks of several imagesets interleaved, and
//! a USB stick may carry other files too. Each file's first entries say which
//! imageset and which chunk it is; files are grouped by imageset (UUID and
//! sequence), and an imageset is complete when every chunk its manifest lists is
//! present. Reading a chunk's head costs one manifest read; the content is read
//! only at ingest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use airlock_imageset::read::{ChunkError, ChunkHead, read_head};
use airlock_imageset::{ChunkRecord, ImagesetManifest};
use airlock_oci::digest::Digest;
use uuid::Uuid;

/// The chunks found of one imageset.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The manifest all its chunks carry (one copy, shared with the heads).
    pub manifest: Arc<ImagesetManifest>,
    /// sha256 of the manifest entry.
    pub manifest_digest: Digest,
    /// The manifest entry's bytes, as signed.
    pub manifest_bytes: Arc<Vec<u8>>,
    /// The signature entry, if any.
    pub signature: Option<Vec<u8>>,
    /// The chunk files found, by chunk index.
    pub chunks: BTreeMap<u32, ChunkHead>,
    /// The parity files found, by parity index.
    pub parity: BTreeMap<u32, ChunkHead>,
    /// Files that claim to belong to this imageset but carry a different manifest.
    pub conflicting: Vec<PathBuf>,
    /// Second copies of chunks or parity files already found (a resend, a copy under
    /// another name); used when the first copy turns out damaged.
    pub spares: Vec<ChunkHead>,
}

impl Candidate {
    /// The chunks the manifest lists that were not found.
    pub fn missing(&self) -> Vec<&ChunkRecord> {
        self.manifest
            .chunks
            .iter()
            .filter(|c| !self.chunks.contains_key(&c.index))
            .collect()
    }

    /// The parity files the manifest lists that were not found.
    pub fn missing_parity(&self) -> Vec<&ChunkRecord> {
        self.manifest
            .parity
            .iter()
            .filter(|c| !self.parity.contains_key(&c.index))
            .collect()
    }
}

/// What a directory holds.
#[derive(Debug, Default)]
pub struct Found {
    /// Imagesets, ordered by UUID and sequence.
    pub imagesets: BTreeMap<(Uuid, u64), Candidate>,
    /// Files that claim to be chunks but are damaged: they are not used.
    pub damaged: Vec<ChunkError>,
    /// Files that are not chunks at all.
    pub other: Vec<PathBuf>,
    /// Chunks of imagesets not held this time: the manifests of those before them
    /// already fill [`HELD_MANIFEST_BYTES`]. Read again once those are taken.
    pub deferred: Vec<PathBuf>,
    /// Chunks of imagesets judged before (the caller's `skip`), by imageset: not
    /// held, only their files kept, to remove them once they are published.
    pub skipped: BTreeMap<(Uuid, u64), Vec<PathBuf>>,
}

/// Most manifest bytes held at once, all imagesets of a scan together. A manifest
/// may be up to 64 MiB ([`airlock_imageset::MAX_MANIFEST_BYTES`]) and a
/// folder may hold dozens of imagesets; without a bound, memory would grow with
/// what lands in the folder. The imagesets held are the lowest (UUID, sequence)
/// first, so the next one to accept is always among them; the one lowest is held
/// even alone over the bound.
pub const HELD_MANIFEST_BYTES: usize = 128 << 20;

impl Found {
    /// The manifest bytes held.
    fn held(&self) -> usize {
        self.imagesets
            .values()
            .map(|c| c.manifest_bytes.len())
            .sum()
    }

    /// Lets go of the highest imagesets until what is held fits the bound; their
    /// files are deferred. Returns the lowest key let go.
    fn fit(&mut self, budget: usize) -> Option<(Uuid, u64)> {
        let mut ceiling = None;
        while self.imagesets.len() > 1 && self.held() > budget {
            let (key, c) = self.imagesets.pop_last()?;
            self.deferred.extend(
                c.chunks
                    .into_values()
                    .chain(c.parity.into_values())
                    .chain(c.spares)
                    .map(|h| h.path)
                    .chain(c.conflicting),
            );
            ceiling = Some(key);
        }
        ceiling
    }
}

/// Whether a file name is one to look at: not hidden, not a transfer in progress.
pub fn eligible(name: &str) -> bool {
    !name.starts_with('.')
        && ![".part", ".tmp", ".repair", ".damaged", ".reason"]
            .iter()
            .any(|s| name.ends_with(s))
}

/// Reads the head of every eligible regular file in `dir` (not recursive).
pub fn scan(dir: &Path) -> std::io::Result<Found> {
    Ok(read_heads(list(dir)?))
}

/// The eligible regular files of `dir` (not recursive, symlinks not followed), sorted.
pub fn list(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        // symlink_metadata: a symlink in a drop directory is not followed.
        if eligible(name) && entry.path().symlink_metadata()?.is_file() {
            paths.push(entry.path());
        }
    }
    paths.sort();
    Ok(paths)
}

/// Reads the head of each file and groups the chunks by imageset, holding at most
/// [`HELD_MANIFEST_BYTES`] of manifests.
pub fn read_heads(paths: Vec<PathBuf>) -> Found {
    read_heads_within(paths, HELD_MANIFEST_BYTES, &|_| false)
}

/// [`read_heads`] within `budget` bytes of manifests, not holding the imagesets
/// whose manifest digest `skip` names (judged before: taken, or duplicates of what
/// was), so that they leave room for the ones deferred so far.
pub fn read_heads_within(
    paths: Vec<PathBuf>,
    budget: usize,
    skip: &dyn Fn(&Digest) -> bool,
) -> Found {
    let mut found = Found::default();
    // Imagesets from this key up are not held.
    let mut ceiling: Option<(Uuid, u64)> = None;
    for path in paths {
        match read_head(&path) {
            Ok(head) if skip(&head.manifest_digest) => {
                found
                    .skipped
                    .entry((head.manifest.uuid, head.manifest.sequence))
                    .or_default()
                    .push(head.path);
            }
            Ok(head)
                if ceiling.is_some_and(|c| (head.manifest.uuid, head.manifest.sequence) >= c) =>
            {
                found.deferred.push(head.path);
            }
            Ok(head) => {
                add(&mut found, head);
                if let Some(c) = found.fit(budget) {
                    ceiling = Some(ceiling.map_or(c, |old| old.min(c)));
                }
            }
            Err(ChunkError::NotAChunk { path, reason }) => {
                tracing::debug!(file = %path.display(), %reason, "not an imageset chunk");
                found.other.push(path);
            }
            Err(e) => {
                tracing::warn!(file = %e.path().display(), error = %e, "damaged chunk file");
                found.damaged.push(e);
            }
        }
    }
    found
}

fn add(found: &mut Found, mut head: ChunkHead) {
    let key = (head.manifest.uuid, head.manifest.sequence);
    let candidate = found.imagesets.entry(key).or_insert_with(|| Candidate {
        manifest: head.manifest.clone(),
        manifest_digest: head.manifest_digest.clone(),
        manifest_bytes: head.manifest_bytes.clone(),
        signature: head.signature.clone(),
        chunks: BTreeMap::new(),
        parity: BTreeMap::new(),
        conflicting: Vec::new(),
        spares: Vec::new(),
    });
    if head.manifest_digest != candidate.manifest_digest {
        candidate.conflicting.push(head.path);
        return;
    }
    // Keep one copy of the manifest per imageset, not one per chunk.
    head.manifest = candidate.manifest.clone();
    head.manifest_bytes = candidate.manifest_bytes.clone();
    // A second copy of the same chunk (resent, or copied twice) is kept aside, in
    // case the first is damaged.
    let files = if head.identity.parity.is_some() {
        &mut candidate.parity
    } else {
        &mut candidate.chunks
    };
    match files.entry(head.identity.chunk) {
        std::collections::btree_map::Entry::Vacant(v) => {
            v.insert(head);
        }
        std::collections::btree_map::Entry::Occupied(_) => candidate.spares.push(head),
    }
}
