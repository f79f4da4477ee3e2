//! The database that holds an agent's workspace state: opening and locking it,
//! keyspaces, and transactions across them.
//!
//! Both agents keep their state in sled, one database per workspace directory. sled
//! takes an exclusive file lock, so two processes can never write the same
//! workspace; the error says so in words an operator can act on.
//!
//! Invariant: sled is used only here, behind [`Db`], [`Tree`] and
//! [`transaction`]; no other crate depends on it, so what the agents record is
//! independent of how it is stored.

use std::path::{Path, PathBuf};

/// Why workspace state could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Another process holds the workspace.
    #[error("workspace {} is in use by another Airlock process; wait for it to finish", path.display())]
    Locked {
        /// The workspace directory.
        path: PathBuf,
    },
    /// The database could not be opened, read or written.
    #[error("workspace {}: {message}", path.display())]
    Storage {
        /// The workspace directory.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

impl StateError {
    /// A storage error for the workspace at `path`.
    pub fn storage(path: &Path, e: impl std::fmt::Display) -> Self {
        StateError::Storage {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    }
}

/// An open workspace database; holding it holds its lock.
#[derive(Debug, Clone)]
pub struct Db {
    db: sled::Db,
    path: PathBuf,
}

/// One keyspace of a [`Db`]. Keys and values are bytes; every error names the
/// workspace. Like the `Db` (and its clones), a `Tree` keeps the lock held.
#[derive(Debug, Clone)]
pub struct Tree {
    tree: sled::Tree,
    path: PathBuf,
}

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// How long [`open`] waits for a workspace's lock before calling it in use.
///
/// sled releases its file lock from its background I/O threads, a moment after
/// the last handle is dropped, so a workspace closed and opened again in one
/// process (a test, a reload) can find it still held. A second process that
/// really holds it holds it for longer than this.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens (creating if needed) the state database of the workspace at `dir`.
pub fn open(dir: &Path) -> Result<Db, StateError> {
    std::fs::create_dir_all(dir).map_err(|e| StateError::storage(dir, e))?;
    let started = std::time::Instant::now();
    loop {
        match sled::open(dir.join("state")) {
            Ok(db) => {
                return Ok(Db {
                    db,
                    path: dir.to_path_buf(),
                });
            }
            Err(sled::Error::Io(io))
                if io.kind() == std::io::ErrorKind::WouldBlock
                    || io.to_string().contains("lock") =>
            {
                if started.elapsed() >= LOCK_WAIT {
                    return Err(StateError::Locked {
                        path: dir.to_path_buf(),
                    });
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(other) => return Err(StateError::storage(dir, other)),
        }
    }
}

impl Db {
    /// The keyspace `name`, made if missing.
    pub fn tree(&self, name: &str) -> Result<Tree, StateError> {
        Ok(Tree {
            tree: self.db.open_tree(name).map_err(|e| self.storage(e))?,
            path: self.path.clone(),
        })
    }

    /// Writes everything to disk before it returns.
    pub fn flush(&self) -> Result<(), StateError> {
        self.db.flush().map(|_| ()).map_err(|e| self.storage(e))
    }

    fn storage(&self, e: impl std::fmt::Display) -> StateError {
        StateError::storage(&self.path, e)
    }
}

impl Tree {
    fn storage(&self, e: impl std::fmt::Display) -> StateError {
        StateError::storage(&self.path, e)
    }

    /// The value of `key`.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, StateError> {
        self.tree
            .get(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| self.storage(e))
    }

    /// Whether `key` has a value.
    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> Result<bool, StateError> {
        self.tree.contains_key(key).map_err(|e| self.storage(e))
    }

    /// Sets `key` to `value`.
    pub fn insert(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<(), StateError> {
        self.tree
            .insert(key.as_ref(), value.as_ref())
            .map(|_| ())
            .map_err(|e| self.storage(e))
    }

    /// Removes `key`.
    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<(), StateError> {
        self.tree
            .remove(key)
            .map(|_| ())
            .map_err(|e| self.storage(e))
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> impl Iterator<Item = Result<Entry, StateError>> + '_ {
        self.entries(self.tree.iter())
    }

    /// The entries whose keys begin with `prefix`, in key order.
    pub fn scan_prefix(
        &self,
        prefix: impl AsRef<[u8]>,
    ) -> impl Iterator<Item = Result<Entry, StateError>> + '_ {
        self.entries(self.tree.scan_prefix(prefix))
    }

    fn entries(&self, it: sled::Iter) -> impl Iterator<Item = Result<Entry, StateError>> + '_ {
        it.map(|kv| {
            kv.map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(|e| self.storage(e))
        })
    }

    /// Sets every key of `entries` at once, or none.
    pub fn insert_all(&self, entries: Vec<Entry>) -> Result<(), StateError> {
        let mut batch = sled::Batch::default();
        for (k, v) in entries {
            batch.insert(k, v);
        }
        self.tree.apply_batch(batch).map_err(|e| self.storage(e))
    }
}

/// A keyspace inside [`transaction`].
pub struct TxTree<'a>(&'a sled::transaction::TransactionalTree);

/// What stops a transaction's closure: a conflict with another transaction,
/// after which [`transaction`] runs the closure again, or a storage failure,
/// which [`transaction`] returns as [`StateError::Storage`]. `?` on a
/// [`TxTree`] operation hands it on.
#[derive(Debug)]
pub struct TxError(sled::transaction::UnabortableTransactionError);

impl TxTree<'_> {
    /// The value of `key`, as this transaction sees it.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, TxError> {
        self.0
            .get(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(TxError)
    }

    /// Sets `key` to `value`.
    pub fn insert(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<(), TxError> {
        self.0
            .insert(key.as_ref(), value.as_ref())
            .map(|_| ())
            .map_err(TxError)
    }

    /// Removes `key`.
    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<(), TxError> {
        self.0.remove(key.as_ref()).map(|_| ()).map_err(TxError)
    }
}

/// Runs `f` over `trees` (of one database) as one transaction: all of its
/// writes happen, or none. `f` may run more than once.
pub fn transaction<const N: usize, R>(
    trees: [&Tree; N],
    f: impl Fn(&[TxTree<'_>; N]) -> Result<R, TxError>,
) -> Result<R, StateError> {
    let path = trees.first().map(|t| t.path.clone()).unwrap_or_default();
    let inner: Vec<&sled::Tree> = trees.iter().map(|t| &t.tree).collect();
    use sled::Transactional as _;
    inner
        .as_slice()
        .transaction(|view| {
            // sled's view has one tree per tree given, in order.
            let txs: [TxTree<'_>; N] = std::array::from_fn(|i| TxTree(&view[i]));
            f(&txs).map_err(|TxError(e)| e.into())
        })
        .map_err(|e: sled::transaction::TransactionError<()>| {
            StateError::storage(&path, format!("{e:?}"))
        })
}

/// Whether a workspace database exists at `dir` (without creating one).
pub fn exists(dir: &Path) -> bool {
    dir.join("state").exists()
}

/// A u64 as a sled key that sorts numerically.
pub fn key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// Reads a u64 stored with [`key`].
pub fn read_u64(dir: &Path, v: &[u8]) -> Result<u64, StateError> {
    let bytes: [u8; 8] = v
        .try_into()
        .map_err(|_| StateError::storage(dir, "corrupt number in workspace state"))?;
    Ok(u64::from_be_bytes(bytes))
}

/// A test hook for crash recovery: with `AIRLOCK_CRASH_AT=<point>` in the
/// environment, the process aborts at that point as a SIGKILL would stop it, so that
/// tests can check the recovery from a crash at each step without timing games.
/// The points are listed in `docs/workspace.md`.
pub fn crash_point(point: &str) {
    if std::env::var("AIRLOCK_CRASH_AT").is_ok_and(|p| p == point) {
        tracing::warn!(point, "AIRLOCK_CRASH_AT: aborting");
        std::process::abort();
    }
}

/// Free bytes on the file system holding `dir`. A test hook,
/// `AIRLOCK_TEST_FREE_SPACE=<bytes>`, stands in for a full disk, which tests cannot
/// make without mounting a small file system.
pub fn free_space(dir: &Path) -> std::io::Result<u64> {
    if let Some(bytes) = std::env::var("AIRLOCK_TEST_FREE_SPACE")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return Ok(bytes);
    }
    fs4::available_space(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_open_is_refused_in_words_while_the_first_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path()).unwrap();
        let e = open(dir.path()).unwrap_err();
        assert!(matches!(e, StateError::Locked { .. }), "{e}");
        assert!(e.to_string().contains("in use by another Airlock process"));
        drop(db);
        open(dir.path()).unwrap();
    }

    /// sled lets go of its lock from background threads a moment after the
    /// last handle is dropped, so a workspace closed and at once opened again in
    /// one process could be refused as "in use" (a disconnected workspace test
    /// once was). `open` waits for a lock let go within `LOCK_WAIT`: here the
    /// holder lets go a fifth of a second after the second open begins.
    #[test]
    fn a_workspace_let_go_of_shortly_after_is_opened_not_refused() {
        let dir = tempfile::tempdir().unwrap();
        let held = open(dir.path()).unwrap();
        let (opening, begun) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            begun.recv().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(held);
        });
        opening.send(()).unwrap();
        let opened = open(dir.path());
        holder.join().unwrap();
        opened.unwrap();
    }

    #[test]
    fn a_transaction_writes_every_tree_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path()).unwrap();
        let (a, b) = (db.tree("a").unwrap(), db.tree("b").unwrap());
        transaction([&a, &b], |[a, b]| {
            a.insert("k", key(1))?;
            b.insert("k", key(2))?;
            Ok(())
        })
        .unwrap();
        assert_eq!(a.get("k").unwrap(), Some(key(1).to_vec()));
        assert_eq!(b.get("k").unwrap(), Some(key(2).to_vec()));
        // A transaction that fails part way leaves nothing of itself.
        let failed = transaction([&a, &b], |[a, b]| {
            a.insert("k", key(3))?;
            b.remove("k")?;
            // What a storage failure in the middle looks like.
            Err::<(), _>(TxError(
                sled::transaction::UnabortableTransactionError::Storage(sled::Error::Unsupported(
                    "test".into(),
                )),
            ))
        });
        assert!(failed.is_err());
        assert_eq!(a.get("k").unwrap(), Some(key(1).to_vec()));
        assert_eq!(b.get("k").unwrap(), Some(key(2).to_vec()));
    }

    #[test]
    fn entries_come_back_in_key_order_and_a_batch_applies_whole() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path()).unwrap();
        let t = db.tree("t").unwrap();
        t.insert_all(vec![
            (b"p/2".to_vec(), b"two".to_vec()),
            (b"p/1".to_vec(), b"one".to_vec()),
            (b"q".to_vec(), b"q".to_vec()),
        ])
        .unwrap();
        let under_p: Vec<Entry> = t.scan_prefix("p/").map(Result::unwrap).collect();
        assert_eq!(
            under_p,
            [
                (b"p/1".to_vec(), b"one".to_vec()),
                (b"p/2".to_vec(), b"two".to_vec())
            ]
        );
        assert!(t.contains_key("q").unwrap());
        t.remove("q").unwrap();
        assert!(!t.contains_key("q").unwrap());
        assert_eq!(t.iter().count(), 2);
    }
}
