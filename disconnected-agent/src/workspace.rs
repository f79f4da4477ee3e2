//! The disconnected workspace: which imagesets were accepted, and which were
//! published where.
//!
//! State lives in a sled database in the workspace directory:
//!
//! - tree `meta`: `uuid` (16 bytes) and `sequence` (u64 BE): the connected
//!   workspace this site follows and the last imageset accepted from it;
//! - tree `published`: destination (`docker://host/prefix`) → last sequence
//!   published there;
//! - tree `applied`: cluster name → the published sequence whose cluster
//!   resources were last applied through the cluster's API;
//! - tree `pruned`: destination → the sequence whose image list the destination
//!   was last pruned to: what every sequence from it to the one published last
//!   placed there, and the last no longer lists, is what pruning deletes next;
//! - tree `kept`: destination → JSON list of the image records that the last
//!   prune there kept although no longer listed (a cluster ran them), so that the
//!   next prune looks at them again;
//! - tree `locations`: registry host, NUL, digest → a repository of that registry
//!   known to hold the blob, for fetching layers an imageset does not carry.
//!
//! An accepted imageset's manifest is kept as `imagesets/<uuid>-<sequence>.json`,
//! and its content in the store. Acceptance is recorded only after every chunk was
//! verified and every blob is in the store; publication only after every image was
//! pushed. A crash between those points is recovered by publishing again, which is
//! idempotent.

use std::path::{Path, PathBuf};

use airlock_imageset::{ImageRecord, ImagesetManifest, validate};
use airlock_state::{self as state, StateError};
use uuid::Uuid;

/// An open disconnected workspace.
#[derive(Debug)]
pub struct Workspace {
    path: PathBuf,
    db: state::Db,
    meta: state::Tree,
    published: state::Tree,
    applied: state::Tree,
    pruned: state::Tree,
    kept: state::Tree,
    locations: state::Tree,
}

/// What the workspace records in the destination registry after each publish, so
/// that a new machine (or one that lost its workspace) continues the sequence.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SiteState {
    /// Always [`SITE_STATE_FORMAT`].
    pub format: String,
    /// The connected workspace followed.
    pub uuid: Uuid,
    /// The last sequence published to this destination.
    pub sequence: u64,
    /// Repositories of this registry that hold each blob.
    pub locations: Vec<(airlock_oci::digest::Digest, String)>,
}

/// The value of [`SiteState::format`].
pub const SITE_STATE_FORMAT: &str = "airlock.site-workspace/v1";

/// Whether the stored sequence `stored` (none: nothing yet) is before `value`.
/// Sequences are stored big-endian, so byte order is numeric order.
fn later(stored: Option<Vec<u8>>, value: &[u8]) -> bool {
    stored.is_none_or(|v| v.as_slice() < value)
}

fn location_key(registry: &str, digest: &airlock_oci::digest::Digest) -> Vec<u8> {
    let mut k = registry.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(digest.as_str().as_bytes());
    k
}

/// What to do with an imageset that arrived, given what the workspace holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The next imageset: verify and take it.
    Accept,
    /// Already taken (diodes resend); skip quietly.
    Duplicate,
    /// A later imageset; hold it until `expected` arrives.
    Wait {
        /// The sequence that must come first.
        expected: u64,
    },
    /// Never acceptable here; the reason says what the workspace holds and what to do.
    Refuse(String),
}

impl Workspace {
    /// Opens the workspace at `path`, creating it if missing.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let db = state::open(path)?;
        let meta = db.tree("meta")?;
        let published = db.tree("published")?;
        let applied = db.tree("applied")?;
        let pruned = db.tree("pruned")?;
        let kept = db.tree("kept")?;
        let locations = db.tree("locations")?;
        std::fs::create_dir_all(path.join("imagesets"))
            .map_err(|e| StateError::storage(path, e))?;
        Ok(Workspace {
            path: path.to_path_buf(),
            db,
            meta,
            published,
            applied,
            pruned,
            kept,
            locations,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connected workspace followed and the last sequence accepted.
    pub fn accepted(&self) -> Result<Option<(Uuid, u64)>, StateError> {
        let get = |k: &str| self.meta.get(k);
        match (get("uuid")?, get("sequence")?) {
            (Some(u), Some(s)) => Ok(Some((
                Uuid::from_slice(&u).map_err(|e| StateError::storage(&self.path, e))?,
                state::read_u64(&self.path, &s)?,
            ))),
            _ => Ok(None),
        }
    }

    /// The acceptance rule: a first imageset only into an empty workspace, then the
    /// same UUID with the next sequence number.
    pub fn judge(&self, m: &ImagesetManifest) -> Result<Verdict, StateError> {
        Ok(match self.accepted()? {
            None if m.sequence == 1 => Verdict::Accept,
            None => Verdict::Wait { expected: 1 },
            Some((uuid, _)) if uuid != m.uuid => Verdict::Refuse(if m.sequence == 1 {
                format!(
                    "{} starts a new workspace, but this site already follows workspace {uuid}; \
                     publish it into a new, empty --workspace, or keep creating imagesets from the workspace {uuid} on the connected side",
                    m.label()
                )
            } else {
                format!(
                    "{} comes from another connected workspace; this site follows workspace {uuid}. \
                     Use the connected workspace {uuid}, or publish this one into its own --workspace",
                    m.label()
                )
            }),
            Some((_, last)) if m.sequence <= last => Verdict::Duplicate,
            Some((_, last)) if m.sequence == last + 1 => Verdict::Accept,
            Some((_, last)) => Verdict::Wait { expected: last + 1 },
        })
    }

    fn manifest_path(&self, uuid: &Uuid, sequence: u64) -> PathBuf {
        self.path
            .join("imagesets")
            .join(format!("{uuid}-{sequence:06}.json"))
    }

    /// Records an imageset as accepted. Its content must already be in the store.
    pub fn accept(&self, m: &ImagesetManifest) -> Result<(), StateError> {
        let path = self.manifest_path(&m.uuid, m.sequence);
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(m).map_err(|e| StateError::storage(&self.path, e))?;
        std::fs::write(&tmp, json)
            .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .and_then(|()| std::fs::File::open(self.path.join("imagesets"))?.sync_all())
            .map_err(|e| StateError::storage(&self.path, format!("{}: {e}", path.display())))?;
        state::transaction([&self.meta], |[meta]| {
            meta.insert("uuid", m.uuid.as_bytes())?;
            meta.insert("sequence", state::key(m.sequence))?;
            Ok(())
        })?;
        self.flush()
    }

    /// The manifest of an accepted imageset.
    pub fn manifest(&self, uuid: &Uuid, sequence: u64) -> Result<ImagesetManifest, StateError> {
        let path = self.manifest_path(uuid, sequence);
        let bytes = std::fs::read(&path)
            .map_err(|e| StateError::storage(&self.path, format!("{}: {e}", path.display())))?;
        let m: ImagesetManifest = serde_json::from_slice(&bytes)
            .map_err(|e| StateError::storage(&self.path, format!("{}: {e}", path.display())))?;
        // A manifest accepted by a build that checked less may hold what this one
        // refuses at the gap; say so here rather than fail somewhere inside publish.
        validate::check_content(&m).map_err(|e| {
            StateError::storage(
                &self.path,
                format!(
                    "{}: {} was accepted but is not valid: {e}; publish into a new, empty workspace from a full imageset",
                    path.display(),
                    m.label()
                ),
            )
        })?;
        Ok(m)
    }

    /// The last sequence published to `destination`.
    pub fn published(&self, destination: &str) -> Result<Option<u64>, StateError> {
        self.sequence_in(&self.published, destination)
    }

    /// The published sequence whose resources were last applied to `cluster`.
    pub fn applied(&self, cluster: &str) -> Result<Option<u64>, StateError> {
        self.sequence_in(&self.applied, cluster)
    }

    /// Records that the resources of `sequence` were applied to `cluster`.
    pub fn mark_applied(&self, cluster: &str, sequence: u64) -> Result<(), StateError> {
        self.applied.insert(cluster, state::key(sequence))?;
        self.flush()
    }

    /// The sequence whose image list `destination` was last pruned to.
    pub fn pruned(&self, destination: &str) -> Result<Option<u64>, StateError> {
        self.sequence_in(&self.pruned, destination)
    }

    /// Records that `destination` holds no more than `sequence` lists (or that what
    /// it held beyond was kept on purpose). Never goes back.
    pub fn mark_pruned(&self, destination: &str, sequence: u64) -> Result<(), StateError> {
        self.raise(&self.pruned, destination, sequence)?;
        self.flush()
    }

    /// What the last prune of `destination` kept although no longer listed.
    pub fn kept(&self, destination: &str) -> Result<Vec<ImageRecord>, StateError> {
        match self.kept.get(destination)? {
            Some(v) => serde_json::from_slice(&v).map_err(|e| {
                StateError::storage(&self.path, format!("kept images of {destination}: {e}"))
            }),
            None => Ok(Vec::new()),
        }
    }

    /// Records, at once, that `destination` is pruned to `sequence` and that it
    /// still holds `kept` beyond what that sequence lists.
    pub fn mark_pruned_keeping(
        &self,
        destination: &str,
        sequence: u64,
        kept: &[ImageRecord],
    ) -> Result<(), StateError> {
        let json = serde_json::to_vec(kept).map_err(|e| StateError::storage(&self.path, e))?;
        state::transaction([&self.pruned, &self.kept], |[p, k]| {
            let value = state::key(sequence);
            if later(p.get(destination)?, &value) {
                p.insert(destination, value)?;
                k.insert(destination, &json)?;
            }
            Ok(())
        })?;
        self.flush()
    }

    /// The sequence `tree` holds for `key`.
    fn sequence_in(&self, tree: &state::Tree, key: &str) -> Result<Option<u64>, StateError> {
        tree.get(key)?
            .map(|v| state::read_u64(&self.path, &v))
            .transpose()
    }

    /// Sets `key` to `sequence` in `tree` unless it holds a later one.
    fn raise(&self, tree: &state::Tree, key: &str, sequence: u64) -> Result<(), StateError> {
        state::transaction([tree], |[t]| {
            let value = state::key(sequence);
            if later(t.get(key)?, &value) {
                t.insert(key, value)?;
            }
            Ok(())
        })
    }

    /// Records that `sequence` is published to `destination`. Never goes back:
    /// two clusters may share a destination, and the slower one's older
    /// sequence may end after the other's newer one.
    pub fn mark_published(&self, destination: &str, sequence: u64) -> Result<(), StateError> {
        self.raise(&self.published, destination, sequence)?;
        self.flush()
    }

    /// Remembers which repositories of `registry` hold which blobs.
    pub fn record_locations(
        &self,
        registry: &str,
        placed: &[(airlock_oci::digest::Digest, String)],
    ) -> Result<(), StateError> {
        let sets = placed
            .iter()
            .map(|(digest, repo)| (location_key(registry, digest), repo.as_bytes().to_vec()))
            .collect();
        self.locations.insert_all(sets)?;
        self.flush()
    }

    /// Repositories of `registry` known to hold each blob.
    pub fn locations(
        &self,
        registry: &str,
    ) -> Result<std::collections::HashMap<airlock_oci::digest::Digest, String>, StateError> {
        let mut prefix = registry.as_bytes().to_vec();
        prefix.push(0);
        let mut out = std::collections::HashMap::new();
        for kv in self.locations.scan_prefix(&prefix) {
            let (k, v) = kv?;
            let digest = std::str::from_utf8(&k[prefix.len()..])
                .ok()
                .and_then(|d| d.parse().ok());
            let repo = String::from_utf8(v).ok();
            if let (Some(d), Some(r)) = (digest, repo) {
                out.insert(d, r);
            }
        }
        Ok(out)
    }

    /// The state to record at `destination` (on `registry`) after publishing `sequence`.
    pub fn site_state(
        &self,
        registry: &str,
        uuid: Uuid,
        sequence: u64,
    ) -> Result<SiteState, StateError> {
        let mut locations: Vec<_> = self.locations(registry)?.into_iter().collect();
        locations.sort();
        Ok(SiteState {
            format: SITE_STATE_FORMAT.to_string(),
            uuid,
            sequence,
            locations,
        })
    }

    /// Continues from a state found at `destination` (on `registry`): everything up to
    /// its sequence counts as accepted and published there.
    pub fn import(
        &self,
        destination: &str,
        registry: &str,
        state: &SiteState,
    ) -> Result<(), StateError> {
        state::transaction([&self.meta], |[meta]| {
            meta.insert("uuid", state.uuid.as_bytes())?;
            meta.insert("sequence", state::key(state.sequence))?;
            Ok(())
        })?;
        self.published
            .insert(destination, state::key(state.sequence))?;
        // What earlier sequences placed is not known here: pruning starts from
        // this sequence's list.
        self.raise(&self.pruned, destination, state.sequence)?;
        self.record_locations(registry, &state.locations)
    }

    /// Whether the manifest of an accepted imageset is kept here (an imported
    /// position has none for the sequences published by another machine).
    pub fn has_manifest(&self, uuid: &Uuid, sequence: u64) -> bool {
        self.manifest_path(uuid, sequence).is_file()
    }

    fn flush(&self) -> Result<(), StateError> {
        self.db.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_imageset::FORMAT;

    fn manifest(uuid: Uuid, sequence: u64) -> ImagesetManifest {
        ImagesetManifest {
            format: FORMAT.into(),
            uuid,
            sequence,
            full: sequence == 1,
            created: "2026-11-24T10:00:00Z".into(),
            limit: 1 << 20,
            chunks: Vec::new(),
            parity: Vec::new(),
            images: Vec::new(),
            blobs: Vec::new(),
            releases: Vec::new(),
            deletes: Vec::new(),
        }
    }

    #[test]
    fn acceptance_follows_uuid_and_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::open(dir.path()).unwrap();
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        assert_eq!(
            ws.judge(&manifest(a, 2)).unwrap(),
            Verdict::Wait { expected: 1 }
        );
        assert_eq!(ws.judge(&manifest(a, 1)).unwrap(), Verdict::Accept);
        ws.accept(&manifest(a, 1)).unwrap();
        assert_eq!(ws.judge(&manifest(a, 1)).unwrap(), Verdict::Duplicate);
        assert_eq!(
            ws.judge(&manifest(a, 3)).unwrap(),
            Verdict::Wait { expected: 2 }
        );
        assert_eq!(ws.judge(&manifest(a, 2)).unwrap(), Verdict::Accept);
        let Verdict::Refuse(why) = ws.judge(&manifest(b, 1)).unwrap() else {
            panic!()
        };
        assert!(
            why.contains("starts a new workspace") && why.contains(&a.to_string()),
            "{why}"
        );
        let Verdict::Refuse(why) = ws.judge(&manifest(b, 2)).unwrap() else {
            panic!()
        };
        assert!(why.contains("another connected workspace"), "{why}");
        assert_eq!(ws.manifest(&a, 1).unwrap(), manifest(a, 1));
    }

    #[test]
    fn publication_is_tracked_per_destination_and_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::open(dir.path()).unwrap();
        assert_eq!(ws.published("docker://a").unwrap(), None);
        ws.mark_published("docker://a", 3).unwrap();
        ws.mark_published("docker://a", 2).unwrap();
        drop(ws);
        let ws = Workspace::open(dir.path()).unwrap();
        assert_eq!(ws.published("docker://a").unwrap(), Some(3));
        assert_eq!(ws.published("docker://b").unwrap(), None);
    }

    #[test]
    fn the_pruned_mark_is_kept_per_destination_and_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::open(dir.path()).unwrap();
        assert_eq!(ws.pruned("docker://a").unwrap(), None);
        ws.mark_pruned("docker://a", 4).unwrap();
        ws.mark_pruned("docker://a", 1).unwrap();
        drop(ws);
        let ws = Workspace::open(dir.path()).unwrap();
        assert_eq!(ws.pruned("docker://a").unwrap(), Some(4));
        assert_eq!(ws.pruned("docker://b").unwrap(), None);
        assert_eq!(
            ws.published("docker://a").unwrap(),
            None,
            "a tree of its own"
        );
    }
}
