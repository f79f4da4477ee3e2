//! The connected workspace: the identity and sequence of the imagesets it made, and
//! every blob and manifest they shipped.
//!
//! State lives in a sled database in the workspace directory:
//!
//! - tree `meta`: `uuid` (16 bytes) and `sequence` (u64, big endian), the last
//!   imageset made;
//! - tree `imagesets`: sequence (u64 BE) → JSON [`ImagesetRecord`];
//! - tree `shipped`: UUID (16 bytes) + digest → sequence (u64 BE) of the imageset
//!   that carried the content. Keyed by UUID so that `--full`, which starts a new
//!   UUID, starts with nothing shipped;
//! - tree `contents`: UUID → JSON [`Contents`] of the last imageset, what `delete`
//!   works from.
//!
//! Nothing is written until an imageset's chunk files have their final names:
//! [`Workspace::commit`] records the new sequence and what it shipped in one
//! transaction and flushes. A `create` that fails or is killed before that leaves the
//! workspace exactly as it was, so the next run makes the same sequence number again
//! and ships the same blobs (oc-mirror#169).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use airlock_oci::digest::Digest;
use airlock_state as state;

use crate::contents::Contents;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use airlock_state::StateError as WorkspaceError;

/// What the workspace remembers of one imageset it made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImagesetRecord {
    /// The workspace UUID the imageset belongs to.
    pub uuid: Uuid,
    /// Its sequence number.
    pub sequence: u64,
    /// When it was made.
    pub created: String,
    /// Whether it started the workspace and shipped everything.
    pub full: bool,
    /// Its chunk files.
    pub chunks: Vec<String>,
    /// Bytes of all chunk files.
    pub bytes: u64,
    /// Images listed.
    pub images: usize,
    /// sha256 of the imageset's image list (JSON): equal for two imagesets that ask
    /// for the same images at the same digests, so an unchanged configuration over
    /// unchanged sources makes no new imageset.
    pub desired_state: Digest,
}

/// The whole state of a workspace, as exported to (and imported from) a registry,
/// so that a new machine continues the same UUID and sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkspaceState {
    /// Always [`STATE_FORMAT`].
    pub format: String,
    /// The workspace UUID.
    pub uuid: Uuid,
    /// The last sequence made.
    pub sequence: u64,
    /// The imagesets of this UUID.
    pub imagesets: Vec<ImagesetRecord>,
    /// Every digest shipped under this UUID, with the sequence that carried it.
    pub shipped: Vec<(Digest, u64)>,
    /// What the last imageset holds and why (absent for a workspace whose last
    /// imageset was made before this was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contents: Option<Contents>,
}

/// The value of [`WorkspaceState::format`].
pub const STATE_FORMAT: &str = "airlock.connected-workspace/v1";

/// An open connected workspace. Holding it holds sled's lock on the directory.
#[derive(Debug)]
pub struct Workspace {
    path: PathBuf,
    db: state::Db,
    meta: state::Tree,
    imagesets: state::Tree,
    shipped: state::Tree,
    contents: state::Tree,
}

fn shipped_key(uuid: &Uuid, digest: &Digest) -> Vec<u8> {
    let mut k = uuid.as_bytes().to_vec();
    k.extend_from_slice(digest.as_str().as_bytes());
    k
}

impl Workspace {
    fn storage(&self, e: impl std::fmt::Display) -> WorkspaceError {
        WorkspaceError::storage(&self.path, e)
    }

    /// Opens the workspace at `path`, creating it if missing.
    pub fn open(path: &Path) -> Result<Self, WorkspaceError> {
        let db = state::open(path)?;
        Ok(Workspace {
            path: path.to_path_buf(),
            meta: db.tree("meta")?,
            imagesets: db.tree("imagesets")?,
            shipped: db.tree("shipped")?,
            contents: db.tree("contents")?,
            db,
        })
    }

    /// Whether a workspace exists at `path` (without creating one).
    pub fn exists(path: &Path) -> bool {
        state::exists(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The workspace UUID and last sequence, if any imageset was made.
    pub fn last(&self) -> Result<Option<(Uuid, u64)>, WorkspaceError> {
        let uuid = self.meta.get("uuid")?;
        let seq = self.meta.get("sequence")?;
        match (uuid, seq) {
            (Some(u), Some(s)) => {
                let uuid = Uuid::from_slice(&u).map_err(|e| self.storage(e))?;
                Ok(Some((uuid, state::read_u64(&self.path, &s)?)))
            }
            _ => Ok(None),
        }
    }

    /// The UUID and sequence the next imageset gets: the next number of this
    /// workspace, or a new UUID at sequence 1 for the first imageset or a `full` one.
    pub fn next(&self, full: bool) -> Result<(Uuid, u64), WorkspaceError> {
        Ok(match self.last()? {
            Some((uuid, seq)) if !full => (uuid, seq + 1),
            _ => (Uuid::new_v4(), 1),
        })
    }

    /// Whether an imageset of workspace `uuid` already shipped `digest`.
    pub fn shipped(&self, uuid: &Uuid, digest: &Digest) -> Result<bool, WorkspaceError> {
        self.shipped.contains_key(shipped_key(uuid, digest))
    }

    /// Records a finished imageset, the content it carried and what it holds,
    /// atomically, and flushes to disk. `freed` are digests no longer counted as
    /// shipped (what a delete imageset removed): if selected again, they travel again.
    pub fn commit(
        &self,
        record: &ImagesetRecord,
        carried: &[Digest],
        freed: &[Digest],
        contents: &Contents,
    ) -> Result<(), WorkspaceError> {
        let json = serde_json::to_vec(record).map_err(|e| self.storage(e))?;
        let held = serde_json::to_vec(contents).map_err(|e| self.storage(e))?;
        state::transaction(
            [&self.meta, &self.imagesets, &self.shipped, &self.contents],
            |[meta, imagesets, shipped, held_tree]| {
                meta.insert("uuid", record.uuid.as_bytes())?;
                meta.insert("sequence", state::key(record.sequence))?;
                imagesets.insert(state::key(record.sequence), &json)?;
                for d in freed {
                    shipped.remove(shipped_key(&record.uuid, d))?;
                }
                for d in carried {
                    shipped.insert(shipped_key(&record.uuid, d), state::key(record.sequence))?;
                }
                held_tree.insert(record.uuid.as_bytes(), &held)?;
                Ok(())
            },
        )?;
        self.db.flush()?;
        Ok(())
    }

    /// Records what the last imageset of `uuid` holds, for a workspace that made
    /// it before this was recorded.
    pub fn record_contents(&self, uuid: &Uuid, contents: &Contents) -> Result<(), WorkspaceError> {
        let held = serde_json::to_vec(contents).map_err(|e| self.storage(e))?;
        self.contents.insert(uuid.as_bytes(), held)?;
        self.db.flush()?;
        Ok(())
    }

    /// What the last imageset of `uuid` holds, if recorded.
    pub fn contents(&self, uuid: &Uuid) -> Result<Option<Contents>, WorkspaceError> {
        self.contents
            .get(uuid.as_bytes())?
            .map(|v| serde_json::from_slice(&v).map_err(|e| self.storage(e)))
            .transpose()
    }

    /// Every imageset recorded, in sequence order.
    pub fn imagesets(&self) -> Result<Vec<ImagesetRecord>, WorkspaceError> {
        self.imagesets
            .iter()
            .map(|kv| {
                let (_, v) = kv?;
                serde_json::from_slice(&v).map_err(|e| self.storage(e))
            })
            .collect()
    }

    /// The state of the current UUID, for keeping in a registry; `None` when empty.
    pub fn export(&self) -> Result<Option<WorkspaceState>, WorkspaceError> {
        let Some((uuid, sequence)) = self.last()? else {
            return Ok(None);
        };
        let mut shipped = Vec::new();
        for kv in self.shipped.scan_prefix(uuid.as_bytes()) {
            let (k, v) = kv?;
            let digest = std::str::from_utf8(&k[16..])
                .ok()
                .and_then(|s| s.parse::<Digest>().ok())
                .ok_or_else(|| self.storage("corrupt shipped record"))?;
            shipped.push((digest, state::read_u64(&self.path, &v)?));
        }
        let imagesets = self
            .imagesets()?
            .into_iter()
            .filter(|r| r.uuid == uuid)
            .collect();
        Ok(Some(WorkspaceState {
            format: STATE_FORMAT.to_string(),
            uuid,
            sequence,
            imagesets,
            shipped,
            contents: self.contents(&uuid)?,
        }))
    }

    /// Replaces the current position with `state` (from a registry), keeping
    /// nothing of a previous UUID's shipped records in the way, nor a shipped record
    /// of this UUID that `state` no longer has (a delete made elsewhere freed it).
    pub fn import(&self, state: &WorkspaceState) -> Result<(), WorkspaceError> {
        let listed: HashSet<Vec<u8>> = state
            .shipped
            .iter()
            .map(|(d, _)| shipped_key(&state.uuid, d))
            .collect();
        let mut stale = Vec::new();
        for kv in self.shipped.scan_prefix(state.uuid.as_bytes()) {
            let (k, _) = kv?;
            if !listed.contains(&k) {
                stale.push(k);
            }
        }
        let held = state
            .contents
            .as_ref()
            .map(|c| serde_json::to_vec(c).map_err(|e| self.storage(e)))
            .transpose()?;
        state::transaction(
            [&self.meta, &self.imagesets, &self.shipped, &self.contents],
            |[meta, imagesets, shipped, held_tree]| {
                meta.insert("uuid", state.uuid.as_bytes())?;
                meta.insert("sequence", state::key(state.sequence))?;
                for r in &state.imagesets {
                    let json = serde_json::to_vec(r).expect("records serialise");
                    imagesets.insert(state::key(r.sequence), json)?;
                }
                for k in &stale {
                    shipped.remove(k)?;
                }
                for (d, seq) in &state.shipped {
                    shipped.insert(shipped_key(&state.uuid, d), state::key(*seq))?;
                }
                match &held {
                    Some(h) => held_tree.insert(state.uuid.as_bytes(), h)?,
                    None => held_tree.remove(state.uuid.as_bytes())?,
                };
                Ok(())
            },
        )?;
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(sequence: u64) -> Contents {
        Contents {
            sequence,
            images: Vec::new(),
            releases: Vec::new(),
            blobs: Vec::new(),
            owners: Vec::new(),
            trees: Vec::new(),
        }
    }

    fn record(uuid: Uuid, sequence: u64) -> ImagesetRecord {
        ImagesetRecord {
            uuid,
            sequence,
            created: "2026-11-24T10:00:00Z".into(),
            full: sequence == 1,
            chunks: vec![format!("c{sequence}.tar")],
            bytes: 10,
            images: 1,
            desired_state: Digest::of(b"[]"),
        }
    }

    #[test]
    fn sequence_and_shipped_content_advance_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::open(dir.path()).unwrap();
        assert_eq!(ws.last().unwrap(), None);
        let (uuid, seq) = ws.next(false).unwrap();
        assert_eq!(seq, 1);
        let a = Digest::of(b"a");
        assert!(!ws.shipped(&uuid, &a).unwrap());
        ws.commit(&record(uuid, 1), std::slice::from_ref(&a), &[], &held(1))
            .unwrap();
        assert!(ws.shipped(&uuid, &a).unwrap());
        assert_eq!(ws.next(false).unwrap(), (uuid, 2));
        drop(ws);
        let ws = Workspace::open(dir.path()).unwrap();
        assert_eq!(
            ws.last().unwrap(),
            Some((uuid, 1)),
            "state survives reopening"
        );
        let (full_uuid, full_seq) = ws.next(true).unwrap();
        assert_ne!(full_uuid, uuid);
        assert_eq!(full_seq, 1);
        assert!(
            !ws.shipped(&full_uuid, &a).unwrap(),
            "a full imageset starts with nothing shipped"
        );
        assert_eq!(ws.imagesets().unwrap(), vec![record(uuid, 1)]);
    }

    #[test]
    fn export_and_import_carry_the_whole_position() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::open(dir.path()).unwrap();
        assert_eq!(ws.export().unwrap(), None);
        let uuid = Uuid::new_v4();
        ws.commit(
            &record(uuid, 1),
            &[Digest::of(b"a"), Digest::of(b"b")],
            &[],
            &held(1),
        )
        .unwrap();
        ws.commit(&record(uuid, 2), &[Digest::of(b"c")], &[], &held(2))
            .unwrap();
        let state = ws.export().unwrap().unwrap();
        assert_eq!(state.sequence, 2);
        assert_eq!(state.shipped.len(), 3);
        assert_eq!(state.contents, Some(held(2)));
        let other = tempfile::tempdir().unwrap();
        let fresh = Workspace::open(other.path()).unwrap();
        fresh.import(&state).unwrap();
        assert_eq!(fresh.next(false).unwrap(), (uuid, 3));
        assert!(fresh.shipped(&uuid, &Digest::of(b"b")).unwrap());
        assert_eq!(fresh.export().unwrap().unwrap(), state);
    }

    #[test]
    fn what_a_delete_frees_is_no_longer_shipped_here_or_after_an_import() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::open(dir.path()).unwrap();
        let uuid = Uuid::new_v4();
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        ws.commit(&record(uuid, 1), &[a.clone(), b.clone()], &[], &held(1))
            .unwrap();
        let before = ws.export().unwrap().unwrap();
        ws.commit(&record(uuid, 2), &[], std::slice::from_ref(&b), &held(2))
            .unwrap();
        assert!(ws.shipped(&uuid, &a).unwrap());
        assert!(!ws.shipped(&uuid, &b).unwrap(), "freed by the delete");
        // A machine that still has b shipped takes the registry copy made after the
        // delete: b is freed there too.
        let after = ws.export().unwrap().unwrap();
        let other = tempfile::tempdir().unwrap();
        let behind = Workspace::open(other.path()).unwrap();
        behind.import(&before).unwrap();
        assert!(behind.shipped(&uuid, &b).unwrap());
        behind.import(&after).unwrap();
        assert!(!behind.shipped(&uuid, &b).unwrap());
        assert_eq!(behind.contents(&uuid).unwrap(), Some(held(2)));
    }

    #[test]
    fn a_second_process_is_told_the_workspace_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let _ws = Workspace::open(dir.path()).unwrap();
        match Workspace::open(dir.path()) {
            Err(WorkspaceError::Locked { path }) => assert_eq!(path, dir.path()),
            other => panic!("expected Locked, got {other:?}"),
        }
    }
}
