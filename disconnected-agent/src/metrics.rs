//! The disconnected agent's metrics (docs/operations.md). What a cluster's
//! state is (the sequence published to it, whether its registry answered,
//! drift) is read from the agent's [`Status`] at each scrape, so it can never
//! disagree with `airlockctl`; what happened (imagesets accepted, files
//! quarantined) is counted where it happens.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::status::Status;

/// A label set of one label.
type Labels = Vec<(&'static str, String)>;

/// Why a file was quarantined, as the `reason` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quarantine {
    /// Not a chunk or parity file of an imageset.
    NotImageset,
    /// A chunk whose head cannot be read.
    Unreadable,
    /// A file of an imageset that was refused (forged, unsigned, out of place).
    Refused,
    /// A chunk whose bytes do not match its imageset.
    Damaged,
    /// A damaged chunk set aside after parity rebuilt it.
    Rebuilt,
}

impl Quarantine {
    fn label(self) -> &'static str {
        match self {
            Quarantine::NotImageset => "not_imageset",
            Quarantine::Unreadable => "unreadable",
            Quarantine::Refused => "refused",
            Quarantine::Damaged => "damaged",
            Quarantine::Rebuilt => "rebuilt_from_parity",
        }
    }
}

/// The agent's metrics and the registry that serves them.
#[derive(Debug)]
pub struct Metrics {
    /// What `/metrics` encodes.
    pub registry: Arc<Mutex<Registry>>,
    accepted: Counter,
    quarantined: Family<Labels, Counter>,
    waiting: Gauge,
    uploaded: Family<Labels, Counter>,
    durations: Family<Labels, Histogram>,
    pruned: Family<Labels, Counter>,
}

impl Metrics {
    /// The metrics of an agent whose state `status` shows.
    pub fn new(status: Arc<Status>) -> Self {
        let mut registry = Registry::default();
        let accepted = Counter::default();
        registry.register(
            "airlock_imagesets_accepted",
            "Imagesets verified and accepted from the drop directory or the control plane",
            accepted.clone(),
        );
        let quarantined = Family::<Labels, Counter>::default();
        registry.register(
            "airlock_files_quarantined",
            "Files set aside in the quarantine directory, by reason",
            quarantined.clone(),
        );
        let waiting = Gauge::default();
        registry.register(
            "airlock_imagesets_waiting",
            "Complete imagesets held for an earlier sequence that has not arrived",
            waiting.clone(),
        );
        let uploaded = Family::<Labels, Counter>::default();
        registry.register(
            "airlock_bytes_uploaded",
            "Bytes of blobs uploaded to the cluster's registry",
            uploaded.clone(),
        );
        // 1 s to about 9 hours.
        let durations = Family::<Labels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(1.0, 2.0, 16))) as fn() -> Histogram,
        );
        registry.register(
            "airlock_publish_duration_seconds",
            "How long each publish to the cluster's registry that ended well took",
            durations.clone(),
        );
        let pruned = Family::<Labels, Counter>::default();
        registry.register(
            "airlock_manifests_pruned",
            "Manifests deleted from the cluster's registry by pruning and delete imagesets",
            pruned.clone(),
        );
        registry.register_collector(Box::new(Clusters { status }));
        Metrics {
            registry: Arc::new(Mutex::new(registry)),
            accepted,
            quarantined,
            waiting,
            uploaded,
            durations,
            pruned,
        }
    }

    /// An imageset was accepted.
    pub fn accepted(&self) {
        self.accepted.inc();
    }

    /// How many complete imagesets wait for their predecessor, as the last
    /// scan of the drop directory found.
    pub fn waiting(&self, n: usize) {
        self.waiting.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A publish to `cluster` ended: the bytes it uploaded, the manifests it
    /// pruned, and how long it took when it ended well.
    pub fn published(&self, cluster: &str, uploaded: u64, pruned: u64, took: Option<Duration>) {
        let labels = vec![("cluster", cluster.to_string())];
        self.uploaded.get_or_create(&labels).inc_by(uploaded);
        self.pruned.get_or_create(&labels).inc_by(pruned);
        if let Some(took) = took {
            self.durations
                .get_or_create(&labels)
                .observe(took.as_secs_f64());
        }
    }

    /// A file was quarantined.
    pub fn quarantined(&self, why: Quarantine) {
        self.quarantined
            .get_or_create(&vec![("reason", why.label().to_string())])
            .inc();
    }
}

/// Each cluster's state, read from the agent's status at each scrape.
#[derive(Debug)]
struct Clusters {
    status: Arc<Status>,
}

impl Collector for Clusters {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let published = Family::<Labels, Gauge>::default();
        let up = Family::<Labels, Gauge>::default();
        let drift = Family::<Labels, Gauge>::default();
        for view in self.status.clusters() {
            let cluster = vec![("cluster", view.name.clone())];
            // Left out when the workspace cannot be read: a 0 would look like
            // a cluster that went backwards.
            if let Ok(sequence) = self.status.site.ws.published(&view.registry.key()) {
                published
                    .get_or_create(&cluster)
                    .set(i64::try_from(sequence.unwrap_or(0)).unwrap_or(i64::MAX));
            }
            up.get_or_create(&cluster)
                .set(i64::from(view.last_error.is_none()));
            let drifted = view.api.as_ref().is_some_and(|a| !a.drift.is_empty());
            drift.get_or_create(&cluster).set(i64::from(drifted));
        }
        for (name, help, family) in [
            (
                "airlock_published_sequence",
                "The last sequence published to the cluster's registry",
                &published,
            ),
            (
                "airlock_cluster_up",
                "1 when the last attempt to publish to the cluster's registry succeeded",
                &up,
            ),
            (
                "airlock_drift",
                "1 when the last check of the cluster's API found objects changed since Airlock applied them",
                &drift,
            ),
        ] {
            let metric = encoder.encode_descriptor(name, help, None, family.metric_type())?;
            family.encode(metric)?;
        }
        Ok(())
    }
}
