//! The connected workspace: the identity and sequence of the imagesets it made.
//!
//! State lives in a sled database in the workspace directory:
//!
//! - tree `meta`: `uuid` (16 bytes) and `sequence` (u64, big endian), the last
//!   imageset made;
//! - tree `imagesets`: sequence (u64 BE) → JSON [`ImagesetRecord`].
//!
//! Nothing is written until an imageset's chunk files have their final names:
//! [`Workspace::commit`] records the new sequence in one transaction and flushes.
//! A `create` that fails or is killed before that leaves the workspace exactly as it
//! was, so the next run makes the same sequence number again (oc-mirror#169).

use std::path::{Path, PathBuf};

use airlock_common::state;

use serde::{Deserialize, Serialize};
use sled::Transactional;
use uuid::Uuid;

pub use airlock_common::state::StateError as WorkspaceError;

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
    /// Whether it shipped everything.
    pub full: bool,
    /// Its chunk files.
    pub chunks: Vec<String>,
    /// Bytes of all chunk files.
    pub bytes: u64,
    /// Images listed.
    pub images: usize,
}

/// An open connected workspace. Holding it holds sled's lock on the directory.
#[derive(Debug)]
pub struct Workspace {
    path: PathBuf,
    db: sled::Db,
    meta: sled::Tree,
    imagesets: sled::Tree,
}

impl Workspace {
    fn storage(path: &Path, e: impl std::fmt::Display) -> WorkspaceError {
        WorkspaceError::storage(path, e)
    }

    /// Opens the workspace at `path`, creating it if missing.
    pub fn open(path: &Path) -> Result<Self, WorkspaceError> {
        let db = state::open(path)?;
        let meta = db.open_tree("meta").map_err(|e| Self::storage(path, e))?;
        let imagesets = db
            .open_tree("imagesets")
            .map_err(|e| Self::storage(path, e))?;
        Ok(Workspace {
            path: path.to_path_buf(),
            db,
            meta,
            imagesets,
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
        let uuid = self
            .meta
            .get("uuid")
            .map_err(|e| Self::storage(&self.path, e))?;
        let seq = self
            .meta
            .get("sequence")
            .map_err(|e| Self::storage(&self.path, e))?;
        match (uuid, seq) {
            (Some(u), Some(s)) => {
                let uuid = Uuid::from_slice(&u).map_err(|e| Self::storage(&self.path, e))?;
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

    /// Records a finished imageset, atomically, and flushes to disk.
    pub fn commit(&self, record: &ImagesetRecord) -> Result<(), WorkspaceError> {
        let json = serde_json::to_vec(record).map_err(|e| Self::storage(&self.path, e))?;
        (&self.meta, &self.imagesets)
            .transaction(|(meta, imagesets)| {
                meta.insert("uuid", record.uuid.as_bytes().as_slice())?;
                meta.insert("sequence", &state::key(record.sequence))?;
                imagesets.insert(&state::key(record.sequence), json.as_slice())?;
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| Self::storage(&self.path, format!("{e:?}")))?;
        self.db.flush().map_err(|e| Self::storage(&self.path, e))?;
        Ok(())
    }

    /// Every imageset recorded, in sequence order.
    pub fn imagesets(&self) -> Result<Vec<ImagesetRecord>, WorkspaceError> {
        self.imagesets
            .iter()
            .values()
            .map(|v| {
                let v = v.map_err(|e| Self::storage(&self.path, e))?;
                serde_json::from_slice(&v).map_err(|e| Self::storage(&self.path, e))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(uuid: Uuid, sequence: u64) -> ImagesetRecord {
        ImagesetRecord {
            uuid,
            sequence,
            created: "2026-11-24T10:00:00Z".into(),
            full: sequence == 1,
            chunks: vec![format!("c{sequence}.tar")],
            bytes: 10,
            images: 1,
        }
    }

    #[test]
    fn sequence_advances_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::open(dir.path()).unwrap();
        assert_eq!(ws.last().unwrap(), None);
        let (uuid, seq) = ws.next(false).unwrap();
        assert_eq!(seq, 1);
        // Not committed: a new run starts over (with a new UUID, since none was kept).
        assert_eq!(ws.next(false).unwrap().1, 1);
        ws.commit(&record(uuid, 1)).unwrap();
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
        assert_eq!(ws.imagesets().unwrap(), vec![record(uuid, 1)]);
    }

    #[test]
    fn a_second_process_is_told_the_workspace_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let _ws = Workspace::open(dir.path()).unwrap();
        // sled locks per process with a file lock; a second open in the same process
        // goes through the same lock.
        match Workspace::open(dir.path()) {
            Err(WorkspaceError::Locked { path }) => assert_eq!(path, dir.path()),
            other => panic!("expected Locked, got {other:?}"),
        }
    }
}
