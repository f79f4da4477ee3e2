//! Bringing each cluster's API in line with what was published to its registry:
//! applying the cluster resources, withdrawing those no longer published, and
//! reading back drift, catalog health and the updates the cluster can take.
//! What a difference *is* lives next to the Kubernetes client
//! ([`crate::cluster_api::Desired::drift`] and `catalog_state`); this module
//! decides when to look and what to show.

use std::time::Instant;

use super::Daemon;
use crate::cluster_api::{self, Applied, ClusterApi, Withdrawn};
use crate::status::{AgentEvent, ApiView, EventKind};

/// The versions among `mirrored` newer than `current`, oldest first, each once;
/// when the cluster's update service `offered` updates, only those. Nothing when
/// `current` is not a version (a cluster mid-install reports none).
fn newer_releases<'a>(
    mirrored: impl Iterator<Item = &'a str>,
    current: &str,
    offered: &[String],
) -> Vec<String> {
    let Ok(current) = semver::Version::parse(current) else {
        return Vec::new();
    };
    let mut out: Vec<semver::Version> = mirrored
        .filter_map(|v| semver::Version::parse(v).ok())
        .filter(|v| *v > current)
        .filter(|v| offered.is_empty() || offered.contains(&v.to_string()))
        .collect();
    out.sort();
    out.dedup();
    out.iter().map(|v| v.to_string()).collect()
}

impl Daemon {
    /// Brings cluster `i`'s API in line with what is published to its registry:
    /// applies the cluster resources when a newer sequence is published there than
    /// was last applied (or always, taking fields back, with `force`), and, when
    /// due, reads its version and checks every object for drift. Failures are
    /// shown on the cluster and retried at the next check; they never stop the
    /// agent or the other clusters.
    pub(super) async fn reconcile(&mut self, i: usize, force: bool) {
        let every = self.config.reconcile_interval();
        let c = &mut self.clusters[i];
        let Some(access) = c.access.clone() else {
            return;
        };
        if self.publishing.contains_key(&c.name) {
            // Its resources are rewritten when the publish ends; applying them
            // now could record as applied what is about to change.
            if force {
                tracing::info!(cluster = %c.name, "publishing; its resources are applied when the publish ends");
            }
            return;
        }
        let published = self
            .site
            .ws
            .published(&self.destinations[i].key())
            .ok()
            .flatten()
            .unwrap_or(0);
        let applied = self.site.ws.applied(&c.name).ok().flatten().unwrap_or(0);
        let apply = force || (published > 0 && applied < published);
        if !apply && Instant::now() < c.next_check {
            return;
        }
        c.next_check = Instant::now() + every;
        let name = c.name.clone();
        let result = self.check(i, &access, published, apply, force).await;
        let view = match result {
            Ok(view) => view,
            Err(e) => {
                tracing::warn!(cluster = %name, error = %e, "cluster API check failed; retrying at the next check");
                self.clusters[i].kube = None;
                let mut view = self.status.clusters()[i].api.clone().unwrap_or_default();
                view.error = Some(e.to_string());
                view
            }
        };
        let before = self.status.clusters()[i].api.clone().unwrap_or_default();
        if !view.drift.is_empty() && view.drift != before.drift {
            tracing::warn!(cluster = %name, drift = ?view.drift, "cluster resources changed on the cluster");
            let mut event = AgentEvent::now(EventKind::Drifted, view.drift.join("; "));
            event.cluster = Some(name.clone());
            self.status.emit(event);
        }
        self.status.update_cluster(i, |v| v.api = Some(view));
    }

    /// Connects to cluster `i`'s API if need be, applies (with `apply`) and
    /// reads back what Airlock wants there: the view `reconcile` shows.
    async fn check(
        &mut self,
        i: usize,
        access: &cluster_api::Access,
        published: u64,
        apply: bool,
        force: bool,
    ) -> Result<ApiView, cluster_api::ApiError> {
        let name = self.clusters[i].name.clone();
        let kube = match &self.clusters[i].kube {
            Some(k) => k.clone(),
            None => {
                let k = ClusterApi::connect(access).await?;
                self.clusters[i].kube = Some(k.clone());
                k
            }
        };
        let versions = kube.versions().await?;
        let current = versions.current.clone();
        let dir = self.site.dir.join("cluster-resources").join(&name);
        let (desired, notes) =
            cluster_api::desired(&dir, current.as_deref().and_then(cluster_api::minor))?;
        let mut view = ApiView {
            desired_version: versions
                .desired
                .clone()
                .filter(|d| Some(d) != current.as_ref()),
            version: current.clone(),
            notes,
            checked: Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            ..ApiView::default()
        };
        let mut unserved = Vec::new();
        let mut refused = 0;
        if apply && published > 0 {
            for d in &desired {
                match kube.apply(d, force).await? {
                    Applied::Done => {}
                    // Shown by the drift check below.
                    Applied::Conflict(why) => tracing::warn!(cluster = %name, "{why}"),
                    Applied::Unserved(why) => {
                        view.notes.push(why);
                        unserved.push(d.label());
                    }
                    Applied::Refused(why) => {
                        tracing::warn!(cluster = %name, "{why}");
                        view.notes.push(why);
                        unserved.push(d.label());
                        refused += 1;
                    }
                }
            }
            let mut left = Vec::new();
            if self.clusters[i].pruning {
                for w in kube.withdraw(&desired).await? {
                    match w {
                        Withdrawn::Deleted(label) => {
                            tracing::info!(cluster = %name, object = %label, "no longer published; deleted from the cluster")
                        }
                        Withdrawn::Left(why) => {
                            tracing::warn!(cluster = %name, "{why}");
                            left.push(why);
                        }
                    }
                }
            }
            self.clusters[i].left = left;
            // With an object refused, the sequence is not recorded as applied,
            // so that the next check applies again (the refusal may be lifted:
            // a webhook's policy changed, a quota raised).
            if refused == 0
                && let Err(e) = self.site.ws.mark_applied(&name, published)
            {
                tracing::error!(cluster = %name, error = %e, "cannot record the applied sequence");
            }
            tracing::info!(cluster = %name, sequence = published, objects = desired.len(), refused, forced = force, "cluster resources applied");
            let mut event = AgentEvent::now(
                EventKind::Applied,
                match refused {
                    0 => format!("{} objects applied", desired.len() - unserved.len()),
                    n => format!(
                        "{} objects applied, {n} refused by the cluster",
                        desired.len() - unserved.len()
                    ),
                },
            );
            event.cluster = Some(name.clone());
            event.imageset = self
                .site
                .ws
                .accepted()
                .ok()
                .flatten()
                .map(|(u, _)| (u, published));
            self.status.emit(event);
        }
        view.notes.extend(self.clusters[i].left.iter().cloned());
        for d in desired.iter().filter(|d| !unserved.contains(&d.label())) {
            let live = kube.live(d).await?;
            if let Some(drift) = d.drift(live.as_ref()) {
                view.drift.push(drift);
            }
            let catalog = d.catalog_state(live.as_ref());
            view.notes.extend(catalog.note);
            view.catalogs_behind.extend(catalog.behind);
        }
        view.available_updates = self.updates(published, current.as_deref(), &versions.available);
        Ok(view)
    }

    /// Mirrored releases (of the sequence published to the cluster) newer than
    /// `current`; when the cluster's update service lists updates, only those.
    fn updates(&self, published: u64, current: Option<&str>, offered: &[String]) -> Vec<String> {
        let (Some(current), Some((uuid, _))) = (current, self.site.ws.accepted().ok().flatten())
        else {
            return Vec::new();
        };
        if published == 0 || !self.site.ws.has_manifest(&uuid, published) {
            return Vec::new();
        }
        let Ok(m) = self.site.ws.manifest(&uuid, published) else {
            return Vec::new();
        };
        newer_releases(
            m.releases.iter().map(|r| r.version.as_str()),
            current,
            offered,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::newer_releases;

    fn newer(mirrored: &[&str], current: &str, offered: &[&str]) -> Vec<String> {
        let offered: Vec<String> = offered.iter().map(|s| s.to_string()).collect();
        newer_releases(mirrored.iter().copied(), current, &offered)
    }

    #[test]
    fn updates_are_the_newer_mirrored_releases_in_order_once_each() {
        let mirrored = [
            "4.16.3",
            "4.15.9",
            "4.16.10",
            "4.16.3",
            "4.17.0-rc.1",
            "junk",
        ];
        assert_eq!(
            newer(&mirrored, "4.16.2", &[]),
            ["4.16.3", "4.16.10", "4.17.0-rc.1"]
        );
        assert!(newer(&mirrored, "4.17.0", &[]).is_empty());
        assert!(newer(&mirrored, "not a version", &[]).is_empty());
    }

    #[test]
    fn an_update_service_that_lists_updates_limits_them() {
        let mirrored = ["4.16.3", "4.16.10", "4.17.1"];
        assert_eq!(
            newer(&mirrored, "4.16.2", &["4.16.10", "4.17.1", "4.18.0"]),
            ["4.16.10", "4.17.1"],
            "4.18.0 is offered but not mirrored"
        );
    }
}
