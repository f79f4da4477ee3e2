//! Each cluster's state in the loop: its registry connection, its API, and the
//! backoff that spaces out retries of a registry that is down.
//!
//! A cluster's state lives only in memory: what was published and applied is in
//! the workspace, so a restart loses nothing but the connections and the backoff
//! (which starts again from a second).

use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_oci::reference::Destination;
use airlock_registry::auth::AuthSource;
use airlock_registry::{RegistryClient, RegistryOptions};

use super::Daemon;
use crate::agent_config::AgentConfig;
use crate::cluster_api::{self, ClusterApi};
use crate::site::Target;
use crate::status::{AgentEvent, ApiView, ClusterView, EventKind};

/// Longest wait between retries of a registry that is down.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// First wait after a failure.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// Retries after failures: the wait doubles at each failure up to
/// [`MAX_BACKOFF`], each given or taken a fifth at random so that clusters that
/// failed together do not retry in step; a success starts again from a second.
#[derive(Debug, Clone)]
pub(super) struct Backoff {
    next: Duration,
    until: Option<Instant>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: FIRST_BACKOFF,
            until: None,
        }
    }
}

impl Backoff {
    /// A failure at `now`: returns the wait before the next try.
    pub(super) fn fail(&mut self, now: Instant) -> Duration {
        let wait = self.next.mul_f64(rand::random_range(0.8..1.2));
        self.until = Some(now + wait);
        self.next = (self.next * 2).min(MAX_BACKOFF);
        wait
    }

    /// A success: whether it ends a run of failures.
    pub(super) fn succeed(&mut self) -> bool {
        let failing = self.until.is_some() || self.next != FIRST_BACKOFF;
        *self = Backoff::default();
        failing
    }

    /// Try at once, without forgetting how long the failures have lasted (a
    /// request of the operator, or a publish that ends and is looked at again).
    pub(super) fn try_now(&mut self) {
        self.until = None;
    }

    /// When the next try is due, while waiting for it.
    pub(super) fn until(&self) -> Option<Instant> {
        self.until
    }

    /// Whether a try is due at `now`.
    pub(super) fn due(&self, now: Instant) -> bool {
        self.until.is_none_or(|u| u <= now)
    }
}

pub(super) struct Cluster {
    pub(super) access: Option<cluster_api::Access>,
    pub(super) kube: Option<ClusterApi>,
    /// Objects no longer published but left on the cluster (someone else
    /// manages them too), as found at the last apply: noted at every check.
    pub(super) left: Vec<String>,
    /// When its API is due to be checked again.
    pub(super) next_check: Instant,
    pub(super) name: String,
    pub(super) options: RegistryOptions,
    /// Delete from its registry what the published imageset no longer lists.
    pub(super) pruning: bool,
    pub(super) target: Option<Target>,
    pub(super) retry: Backoff,
}

/// The clusters of `config` in their initial state, with their views.
pub(super) fn fresh_clusters(
    config: &AgentConfig,
    destinations: &[Destination],
    apis: Vec<Option<cluster_api::Access>>,
) -> (Vec<Cluster>, Vec<ClusterView>) {
    config
        .clusters
        .iter()
        .zip(destinations)
        .zip(apis)
        .map(|((c, d), access)| {
            let view = ClusterView {
                name: c.name.clone(),
                registry: d.clone(),
                publishing: false,
                last_error: None,
                retry_at: None,
                api: access.as_ref().map(|_| ApiView::default()),
                pruning: None,
            };
            let cluster = Cluster {
                access,
                kube: None,
                left: Vec::new(),
                next_check: Instant::now(),
                name: c.name.clone(),
                options: RegistryOptions {
                    tls_verify: c.tls_verify,
                    cert_dir: c.cert_dir.clone(),
                    auth: AuthSource::new(c.auth_file.clone()),
                    mirrors: None,
                },
                pruning: c.pruning.unwrap_or(config.pruning),
                target: None,
                retry: Backoff::default(),
            };
            (cluster, view)
        })
        .unzip()
}

/// Whether cluster `i`'s destination is pruned: only when every cluster
/// publishing to that same destination asks for it, since what one keeps is
/// there for all of them.
pub(super) fn prunes(clusters: &[Cluster], destinations: &[Destination], i: usize) -> bool {
    let dest = &destinations[i];
    clusters
        .iter()
        .zip(destinations)
        .filter(|(_, d)| *d == dest)
        .all(|(c, _)| c.pruning)
}

/// The clusters with a readable API that pull from cluster `i`'s registry
/// (several clusters may share one): pruning keeps what any of them runs.
pub(super) fn users_of(
    clusters: &[Cluster],
    destinations: &[Destination],
    i: usize,
) -> Vec<(String, cluster_api::Access)> {
    let registry = destinations[i].registry();
    clusters
        .iter()
        .zip(destinations)
        .filter(|(_, d)| d.registry() == registry)
        .filter_map(|(c, _)| Some((c.name.clone(), c.access.clone()?)))
        .collect()
}

impl Daemon {
    /// The targets of clusters `which`, connecting those not yet connected all at
    /// once (a registry that does not answer must not delay the others); a cluster
    /// whose registry cannot be reached is left out and retried with backoff.
    pub(super) async fn targets(&mut self, which: &[usize]) -> Vec<(usize, Target)> {
        let missing: Vec<usize> = which
            .iter()
            .copied()
            .filter(|&i| self.clusters[i].target.is_none())
            .collect();
        let connected = futures::future::join_all(missing.iter().map(|&i| {
            RegistryClient::connect(self.destinations[i].registry(), &self.clusters[i].options)
        }))
        .await;
        for (i, result) in missing.into_iter().zip(connected) {
            match result {
                Ok(client) => {
                    self.clusters[i].target = Some(Target {
                        dest: self.destinations[i].clone(),
                        client: Arc::new(client),
                    })
                }
                Err(e) => self.failed(i, &e.to_string()),
            }
        }
        which
            .iter()
            .filter_map(|&i| self.clusters[i].target.clone().map(|t| (i, t)))
            .collect()
    }

    /// Publishing to cluster `i` failed: it is retried with backoff, and the
    /// failure is shown on it until a publish succeeds.
    pub(super) fn failed(&mut self, i: usize, why: &str) {
        let c = &mut self.clusters[i];
        c.target = None;
        let delay = c.retry.fail(Instant::now());
        tracing::warn!(cluster = %c.name, retry_in_s = delay.as_secs(), error = %why, "publishing to this cluster failed; retrying with backoff");
        let mut event = AgentEvent::now(
            EventKind::PublishFailed,
            format!("{why}; retrying in {} s", delay.as_secs()),
        );
        event.cluster = Some(c.name.clone());
        self.status.emit(event);
        let retry_at = c.retry.until();
        self.status.update_cluster(i, |v| {
            v.publishing = false;
            v.last_error = Some(why.to_string());
            v.retry_at = retry_at;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn backoff_doubles_up_to_five_minutes_with_a_fifth_of_jitter() {
        let mut b = Backoff::default();
        let now = Instant::now();
        assert!(b.due(now));
        let mut base = FIRST_BACKOFF;
        for _ in 0..12 {
            let wait = b.fail(now);
            assert!(
                wait >= base.mul_f64(0.8) && wait <= base.mul_f64(1.2),
                "{wait:?} against {base:?}"
            );
            assert_eq!(b.until(), Some(now + wait));
            assert!(!b.due(now));
            assert!(b.due(now + wait));
            base = (base * 2).min(MAX_BACKOFF);
        }
        assert_eq!(base, MAX_BACKOFF, "twelve failures reach the cap");
    }

    #[test]
    fn a_success_starts_again_from_a_second_and_says_it_ended_failures() {
        let mut b = Backoff::default();
        assert!(!b.succeed(), "nothing had failed");
        let now = Instant::now();
        b.fail(now);
        b.fail(now);
        b.try_now();
        assert!(b.due(now), "try_now makes a try due");
        let wait = b.fail(now);
        assert!(
            wait >= Duration::from_millis(3200),
            "try_now kept the doubling"
        );
        assert!(b.succeed());
        let wait = b.fail(now);
        assert!(wait <= FIRST_BACKOFF.mul_f64(1.2));
    }

    fn cluster(name: &str, pruning: bool, kubeconfig: Option<&str>) -> Cluster {
        Cluster {
            access: kubeconfig.map(|k| cluster_api::Access::Kubeconfig(PathBuf::from(k))),
            kube: None,
            left: Vec::new(),
            next_check: Instant::now(),
            name: name.to_string(),
            options: RegistryOptions::default(),
            pruning,
            target: None,
            retry: Backoff::default(),
        }
    }

    fn dest(s: &str) -> Destination {
        s.parse().unwrap()
    }

    #[test]
    fn a_destination_shared_by_clusters_is_pruned_only_if_all_of_them_prune() {
        let clusters = [
            cluster("a", true, None),
            cluster("b", false, None),
            cluster("c", true, None),
        ];
        let dests = [
            dest("docker://mirror:5000/m"),
            dest("docker://mirror:5000/m"),
            dest("docker://mirror:5000/other"),
        ];
        assert!(!prunes(&clusters, &dests, 0), "b keeps what it runs there");
        assert!(!prunes(&clusters, &dests, 1));
        assert!(prunes(&clusters, &dests, 2), "a prefix of its own");
    }

    #[test]
    fn the_users_of_a_registry_are_the_clusters_with_an_api_that_pull_from_it() {
        let clusters = [
            cluster("a", true, Some("/a.kubeconfig")),
            cluster("b", true, None),
            cluster("c", true, Some("/c.kubeconfig")),
            cluster("d", true, Some("/d.kubeconfig")),
        ];
        let dests = [
            dest("docker://mirror:5000/m"),
            dest("docker://mirror:5000/m"),
            dest("docker://mirror:5000/other"),
            dest("docker://elsewhere:5000/m"),
        ];
        let names: Vec<String> = users_of(&clusters, &dests, 0)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["a", "c"], "same registry, any prefix; b has no API");
        let names: Vec<String> = users_of(&clusters, &dests, 3)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["d"]);
    }
}
