//! SIGHUP: the cluster list and the settings that need no restart are taken
//! from the configuration file again; the rest is kept as the agent started
//! with it, and a change to it is logged as waiting for a restart.

use super::Daemon;
use super::cluster::fresh_clusters;
use crate::agent_config::{self, AgentConfig};
use crate::status::ClusterView;

/// The fields of `new` that differ from `old` and take effect only at a restart
/// (what the agent opened or bound when it started, and what it trusts).
fn needs_restart(old: &AgentConfig, new: &AgentConfig) -> Vec<&'static str> {
    [
        ("workspace", old.workspace != new.workspace),
        ("dropDir", old.drop_dir != new.drop_dir),
        ("quarantineDir", old.quarantine_dir != new.quarantine_dir),
        ("trust", old.trust != new.trust),
        ("allowUnsigned", old.allow_unsigned != new.allow_unsigned),
        (
            "grpc",
            old.grpc.as_ref().map(|g| &g.listen) != new.grpc.as_ref().map(|g| &g.listen),
        ),
        ("metrics", old.metrics != new.metrics),
    ]
    .into_iter()
    .filter_map(|(field, changed)| changed.then_some(field))
    .collect()
}

/// `new`, with what needs a restart kept as in `old`.
fn keep_restart_only(old: &AgentConfig, new: AgentConfig) -> AgentConfig {
    AgentConfig {
        grpc: old.grpc.clone(),
        workspace: old.workspace.clone(),
        drop_dir: old.drop_dir.clone(),
        quarantine_dir: old.quarantine_dir.clone(),
        trust: old.trust.clone(),
        allow_unsigned: old.allow_unsigned,
        ..new
    }
}

impl Daemon {
    /// Takes the cluster list (and the settings that need no restart) from the
    /// configuration file again. A cluster whose name, registry and access are
    /// unchanged keeps its state (connection, backoff); a new one starts from
    /// nothing and is brought up to the current state by the next round. A file
    /// that does not check out changes nothing: the agent carries on as it was.
    pub(super) fn reload(&mut self) {
        let Some(path) = self.config_path.clone() else {
            return;
        };
        let checked = match agent_config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "configuration not reloaded; the agent carries on with the one it had");
                return;
            }
        };
        for field in needs_restart(&self.config, &checked.config) {
            tracing::warn!(
                field,
                "this field changed but takes effect only at a restart"
            );
        }
        let new = &checked.config;
        let (mut clusters, views) =
            fresh_clusters(new, &checked.destinations, checked.apis.clone());
        let mut kept = Vec::new();
        for (i, c) in clusters.iter_mut().enumerate() {
            let same = self
                .config
                .clusters
                .iter()
                .position(|o| *o == new.clusters[i]);
            if let Some(j) = same {
                let pruning = c.pruning;
                std::mem::swap(c, &mut self.clusters[j]);
                // The agent-wide `pruning` may have changed under it.
                c.pruning = pruning;
                kept.push(c.name.clone());
            }
        }
        let added: Vec<&str> = clusters
            .iter()
            .filter(|c| !kept.contains(&c.name))
            .map(|c| c.name.as_str())
            .collect();
        let removed: Vec<&str> = self
            .clusters
            .iter()
            .filter(|o| !clusters.iter().any(|c| c.name == o.name))
            .map(|o| o.name.as_str())
            .collect();
        tracing::info!(added = ?added, removed = ?removed, kept = kept.len(), "configuration reloaded");
        // A publish to a cluster removed or changed is stopped; a registry keeps
        // nothing of an unfinished upload.
        self.publishing.retain(|name, task| {
            let keep = kept.contains(name);
            if !keep {
                task.abort();
            }
            keep
        });
        let fetch_changed = self.config.fetch_from != new.fetch_from;
        self.config = keep_restart_only(&self.config, checked.config);
        self.destinations = checked.destinations;
        if fetch_changed {
            self.fetch_dests = checked.fetch_from;
            self.fetch_from.clear();
        }
        // Kept clusters keep what was seen of them.
        let before = self.status.clusters();
        let views: Vec<ClusterView> = views
            .into_iter()
            .map(|v| {
                before
                    .iter()
                    .find(|b| kept.contains(&v.name) && b.name == v.name)
                    .cloned()
                    .unwrap_or(v)
            })
            .collect();
        self.clusters = clusters;
        self.status.set_clusters(views);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_common::duration::Span;
    use std::time::Duration;

    fn config(extra: &str) -> AgentConfig {
        serde_yaml_ng::from_str(&format!(
            "workspace: /ws\ndropDir: /drop\nquarantineDir: /q\nallowUnsigned: true\n{extra}clusters:\n- name: prod\n  registry: docker://mirror:5000/m\n"
        ))
        .unwrap()
    }

    #[test]
    fn what_was_opened_at_start_waits_for_a_restart_and_the_rest_is_taken() {
        let old = config("settleSeconds: 5\n");
        let new = config("settle: 9s\nparallel: 2\n");
        assert!(needs_restart(&old, &new).is_empty());
        let mut new = config("");
        new.workspace = "/elsewhere".into();
        new.drop_dir = "/drop2".into();
        new.allow_unsigned = false;
        new.trust = vec!["/k.pub".into()];
        new.settle = Some(Span::secs(9));
        assert_eq!(
            needs_restart(&old, &new),
            ["workspace", "dropDir", "trust", "allowUnsigned"]
        );
        let kept = keep_restart_only(&old, new);
        assert_eq!(kept.workspace, old.workspace);
        assert_eq!(kept.drop_dir, old.drop_dir);
        assert!(kept.allow_unsigned && kept.trust.is_empty());
        assert_eq!(
            kept.settle(),
            Duration::from_secs(9),
            "taken without a restart"
        );
    }
}
