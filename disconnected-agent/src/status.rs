//! What the running agent shows of itself: the state of each cluster, what it is
//! doing, and a stream of events.
//!
//! The agent's loop owns the work and writes here; readers (the control plane)
//! only read, so a status request never waits for a publish that runs for hours.
//! The workspace itself is read directly: sled serves readers beside the writer.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use airlock_oci::reference::Destination;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::error::Error;
use crate::site::Site;

/// How many events a slow watcher may fall behind before it misses some.
const EVENT_BACKLOG: usize = 1024;

/// A cluster's publishing state, as last seen by the loop.
#[derive(Debug, Clone)]
pub struct ClusterView {
    /// Its configured name.
    pub name: String,
    /// Its registry.
    pub registry: Destination,
    /// Being published to now.
    pub publishing: bool,
    /// Why the last attempt failed; cleared by a success.
    pub last_error: Option<String>,
    /// When the next attempt is due, while retrying.
    pub retry_at: Option<Instant>,
    /// What its API showed at the last check; none without API access.
    pub api: Option<ApiView>,
    /// What pruning did at its registry last; none before the first prune.
    pub pruning: Option<PruneView>,
}

/// What pruning did at a cluster's registry for the last sequence published.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneView {
    /// The sequence the registry was pruned to.
    pub sequence: u64,
    /// Manifests deleted.
    pub deleted: u64,
    /// `REPOSITORY@DIGEST` kept although no longer listed, with why.
    pub kept: Vec<(String, String)>,
    /// Why nothing was pruned, when nothing was.
    pub not_pruned: Option<String>,
}

/// A cluster as its API shows it, against what Airlock published and applied.
#[derive(Debug, Clone, Default)]
pub struct ApiView {
    /// The version the cluster runs (its last completed update).
    pub version: Option<String>,
    /// The version it is going to, when different.
    pub desired_version: Option<String>,
    /// Mirrored releases newer than `version` that it can update to.
    pub available_updates: Vec<String>,
    /// Objects Airlock applied that were changed or deleted on the cluster.
    pub drift: Vec<String>,
    /// CatalogSources that do not run the latest published catalog.
    pub catalogs_behind: Vec<String>,
    /// What this cluster cannot take (no ImageTagMirrorSet before 4.13, a kind
    /// whose operator is not installed).
    pub notes: Vec<String>,
    /// Why the last check failed.
    pub error: Option<String>,
    /// When it was last checked, RFC 3339 UTC.
    pub checked: Option<String>,
}

/// Where a cluster stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    /// Holds the last accepted sequence.
    Current,
    /// Behind; published to on the next pass.
    Behind,
    /// The last attempt failed; retried with backoff.
    Retrying,
    /// Being published to now.
    Publishing,
}

/// What kind of thing happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// An imageset was verified and accepted.
    Accepted,
    /// A file was set aside as unusable.
    Quarantined,
    /// An imageset was published to a cluster.
    Published,
    /// Publishing to a cluster failed; it is retried with backoff.
    PublishFailed,
    /// Cluster resources were applied through a cluster's API.
    Applied,
    /// A cluster's API showed objects changed or deleted since Airlock applied them.
    Drifted,
}

/// Something the agent did, for watchers and the journal alike.
#[derive(Debug, Clone)]
pub struct AgentEvent {
    /// When, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// What.
    pub kind: EventKind,
    /// The cluster concerned.
    pub cluster: Option<String>,
    /// The imageset concerned.
    pub imageset: Option<(Uuid, u64)>,
    /// The file concerned.
    pub file: Option<PathBuf>,
    /// Details.
    pub message: String,
}

impl AgentEvent {
    /// An event of `kind` happening now.
    pub fn now(kind: EventKind, message: impl Into<String>) -> Self {
        AgentEvent {
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            kind,
            cluster: None,
            imageset: None,
            file: None,
            message: message.into(),
        }
    }
}

/// The shared view of the running agent.
#[derive(Debug)]
pub struct Status {
    /// The workspace, store and trusted keys.
    pub site: Arc<Site>,
    /// When the agent started, RFC 3339 UTC.
    pub started: String,
    /// The drop directory.
    pub drop_dir: PathBuf,
    clusters: Mutex<Vec<ClusterView>>,
    activity: Mutex<String>,
    /// Bytes uploaded to the clusters' registries, and read from the store for them.
    traffic: Mutex<(u64, u64)>,
    /// The imagesets refused lately, oldest first, at most [`REFUSED_KEPT`].
    refused: Mutex<std::collections::VecDeque<Refused>>,
    events: broadcast::Sender<AgentEvent>,
}

/// How many refused imagesets the agent remembers for `airlockctl imagesets`.
pub const REFUSED_KEPT: usize = 32;

/// An imageset refused since the agent started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Its workspace UUID and sequence, as its manifest says.
    pub imageset: (Uuid, u64),
    /// When it was created, as its manifest says.
    pub created: String,
    /// Images its manifest lists.
    pub images: u32,
    /// Why it was refused.
    pub reason: String,
}

impl Status {
    /// A view of an agent about to start on `site`.
    pub fn new(site: Arc<Site>, drop_dir: PathBuf, clusters: Vec<ClusterView>) -> Self {
        Status {
            site,
            started: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            drop_dir,
            clusters: Mutex::new(clusters),
            activity: Mutex::new("starting".into()),
            traffic: Mutex::default(),
            refused: Mutex::default(),
            events: broadcast::channel(EVENT_BACKLOG).0,
        }
    }

    /// The clusters, in configuration order.
    pub fn clusters(&self) -> Vec<ClusterView> {
        self.clusters.lock().expect("not poisoned").clone()
    }

    /// Replaces the cluster list (the configuration was reloaded).
    pub fn set_clusters(&self, views: Vec<ClusterView>) {
        *self.clusters.lock().expect("not poisoned") = views;
    }

    /// Changes cluster `i`'s view.
    pub fn update_cluster(&self, i: usize, f: impl FnOnce(&mut ClusterView)) {
        if let Some(c) = self.clusters.lock().expect("not poisoned").get_mut(i) {
            f(c);
        }
    }

    /// What the agent is doing.
    pub fn activity(&self) -> String {
        self.activity.lock().expect("not poisoned").clone()
    }

    /// Says what the agent is doing now.
    pub fn set_activity(&self, what: impl Into<String>) {
        *self.activity.lock().expect("not poisoned") = what.into();
    }

    /// Counts the publishes that started together: `uploaded` bytes sent to
    /// registries, all their clusters together, for `read` bytes read from the store.
    /// Blobs sent while their imageset was verified count, read and uploaded,
    /// in the publish that closes their uploads.
    pub fn add_traffic(&self, uploaded: u64, read: u64) {
        let mut t = self.traffic.lock().expect("not poisoned");
        t.0 += uploaded;
        t.1 += read;
    }

    /// Bytes uploaded to registries and read from the store since the agent started.
    pub fn traffic(&self) -> (u64, u64) {
        *self.traffic.lock().expect("not poisoned")
    }

    /// Remembers a refused imageset (once, however often its files are seen).
    pub fn refused(&self, r: Refused) {
        let mut list = self.refused.lock().expect("not poisoned");
        if list.contains(&r) {
            return;
        }
        if list.len() == REFUSED_KEPT {
            list.pop_front();
        }
        list.push_back(r);
    }

    /// The imagesets refused lately, oldest first.
    pub fn refused_list(&self) -> Vec<Refused> {
        self.refused
            .lock()
            .expect("not poisoned")
            .iter()
            .cloned()
            .collect()
    }

    /// Tells watchers; nobody watching is fine.
    pub fn emit(&self, event: AgentEvent) {
        let _ = self.events.send(event);
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<AgentEvent> {
        self.events.subscribe()
    }

    /// The last sequence published to `view`'s registry (0: none), and its state
    /// against the last accepted sequence.
    pub fn cluster_state(&self, view: &ClusterView) -> Result<(u64, ClusterState), Error> {
        let published = self.site.ws.published(&view.registry.key())?.unwrap_or(0);
        let accepted = self.site.ws.accepted()?.map_or(0, |(_, s)| s);
        let state = if view.publishing {
            ClusterState::Publishing
        } else if view.retry_at.is_some() {
            ClusterState::Retrying
        } else if published >= accepted {
            ClusterState::Current
        } else {
            ClusterState::Behind
        };
        Ok((published, state))
    }
}
