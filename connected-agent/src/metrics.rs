//! The connected agent's metrics (docs/operations.md): what its runs made,
//! counted as each run ends.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::create::CreateReport;

/// A label set of one label.
type Labels = Vec<(&'static str, String)>;

/// The agent's metrics and the registry that serves them.
#[derive(Debug)]
pub struct Metrics {
    /// What `/metrics` encodes.
    pub registry: Arc<Mutex<Registry>>,
    created: Counter,
    failed: Counter,
    shipped: Counter,
    duration: Histogram,
    last_success: Gauge<f64, AtomicU64>,
    source_errors: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let created = Counter::default();
        registry.register(
            "airlock_imagesets_created",
            "Imagesets written to the outbox",
            created.clone(),
        );
        let failed = Counter::default();
        registry.register(
            "airlock_create_failures",
            "Runs that ended in an error (retried on the schedule)",
            failed.clone(),
        );
        let shipped = Counter::default();
        registry.register(
            "airlock_bytes_shipped",
            "Bytes of blobs carried in the imagesets written",
            shipped.clone(),
        );
        // 1 s to about 9 hours.
        let duration = Histogram::new(exponential_buckets(1.0, 2.0, 16));
        registry.register(
            "airlock_create_duration_seconds",
            "How long each run that ended well took",
            duration.clone(),
        );
        let last_success = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "airlock_last_success_timestamp_seconds",
            "When a run last ended well (an imageset written, or nothing to write), Unix time",
            last_success.clone(),
        );
        let source_errors = Family::<Labels, Counter>::default();
        registry.register(
            "airlock_source_errors",
            "Images left out because their source registry would not serve them (continueOnError), by registry",
            source_errors.clone(),
        );
        Metrics {
            registry: Arc::new(Mutex::new(registry)),
            created,
            failed,
            shipped,
            duration,
            last_success,
            source_errors,
        }
    }
}

impl Metrics {
    /// A run ended well at `at` (at start: the newest imageset in the outbox,
    /// so that a restart does not look like a long failure).
    pub fn succeeded_at(&self, at: std::time::SystemTime) {
        let since = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.last_success.set(since.as_secs_f64());
    }

    /// A run ended with `report` (`None`: in an error).
    pub fn ran(&self, report: Option<&CreateReport>, took: Duration) {
        let Some(report) = report else {
            self.failed.inc();
            return;
        };
        self.duration.observe(took.as_secs_f64());
        self.succeeded_at(std::time::SystemTime::now());
        for m in &report.missing {
            let registry = m
                .image
                .trim_start_matches("docker://")
                .parse::<airlock_oci::reference::ImageRef>()
                .map_or_else(|_| "unknown".to_string(), |r| r.registry().to_string());
            self.source_errors
                .get_or_create(&vec![("registry", registry)])
                .inc();
        }
        if report.unchanged_since.is_none() {
            self.created.inc();
            self.shipped.inc_by(report.blob_bytes);
        }
    }
}
