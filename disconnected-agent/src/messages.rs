//! What the control plane and the agent's loop say to each other: the requests,
//! with where to answer, and the answers. A module of its own so that the control
//! plane (`control`) and the loop (`daemon`) each depend on it, not on each other.

use std::path::PathBuf;
use std::sync::Arc;

use airlock_registry::prune::Pruned;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::site::Outcome;

/// Requests of the control plane, served by the loop between rounds so that they
/// go through exactly what the drop directory goes through.
pub(crate) enum Command {
    /// These complete files, received elsewhere, go into the drop directory and
    /// are taken now. The loop places them itself, so that no other round takes
    /// them before this one and the answer covers them.
    Ingest {
        staged: Vec<PathBuf>,
        reply: oneshot::Sender<Result<(Vec<PathBuf>, Round), String>>,
    },
    /// Re-apply the resources of the named cluster (or of all) through its API,
    /// taking back fields changed on the cluster, and check it again.
    Reconcile {
        cluster: Option<String>,
        reply: oneshot::Sender<()>,
    },
    /// Publish now, clearing the backoff of the named cluster (or of all).
    Publish {
        cluster: Option<String>,
        reply: oneshot::Sender<Round>,
    },
    /// Say what publishing to the named cluster (or to all) would do; change nothing.
    Plan {
        cluster: Option<String>,
        reply: oneshot::Sender<Vec<ClusterPlan>>,
    },
}

/// What publishing to one cluster would do (`airlockctl publish --dry-run`).
#[derive(Debug, Default)]
pub struct ClusterPlan {
    /// The cluster.
    pub cluster: String,
    /// Its destination.
    pub destination: String,
    /// The sequences that would be published there, in order.
    pub would_publish: Vec<u64>,
    /// What pruning (or a delete imageset) would then delete and keep.
    pub pruned: Option<Pruned>,
    /// Why nothing would be pruned.
    pub not_pruned: Option<String>,
    /// What could not be found out.
    pub problems: Vec<String>,
}

/// What one round did.
#[derive(Debug, Default)]
pub struct Round {
    /// Each imageset judged, with its files.
    pub outcomes: Vec<((Uuid, u64), Outcome, Vec<PathBuf>)>,
    /// Files set aside, by the path they had in the drop directory, with why.
    pub quarantined: Vec<(PathBuf, String)>,
    /// Sequences published, by cluster name.
    pub published: Vec<(String, u64)>,
}

/// Where the control plane hands its requests: the loop's own queue. `send` is
/// false once the loop has stopped.
#[derive(Clone)]
pub(crate) struct Commands(Arc<dyn Fn(Command) -> bool + Send + Sync>);

impl Commands {
    pub(crate) fn new(send: impl Fn(Command) -> bool + Send + Sync + 'static) -> Self {
        Commands(Arc::new(send))
    }

    pub(crate) fn send(&self, command: Command) -> bool {
        (self.0)(command)
    }
}
