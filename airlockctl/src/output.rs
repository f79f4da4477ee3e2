//! What `airlockctl` prints: tables for people, JSON for scripts.
//!
//! The JSON is built from the types below, not from the generated protobuf
//! types, so that its keys stay what `docs/airlockctl.md` documents even if the
//! protocol grows: keys are only ever added.

use airlock_cli::table;
use airlock_common::size::ByteSize;
use airlock_proto::v1;
use serde::Serialize;

/// `status -o json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The agent's version.
    pub version: String,
    /// The connected workspace followed; null before the first imageset.
    pub uuid: Option<String>,
    /// The last sequence accepted; 0 before the first imageset.
    pub accepted_sequence: u64,
    /// Configured clusters.
    pub clusters: u32,
    /// Clusters holding the last accepted sequence.
    pub clusters_current: u32,
    /// What the agent is doing.
    pub activity: String,
    /// When it started.
    pub started: String,
    /// Its drop directory.
    pub drop_dir: String,
    /// Files waiting there.
    pub waiting_files: u32,
    /// Bytes uploaded to the clusters' registries since the agent started.
    pub uploaded_bytes: u64,
    /// Bytes read from the content store for them.
    pub store_read_bytes: u64,
}

impl From<v1::AgentStatus> for Status {
    fn from(s: v1::AgentStatus) -> Self {
        Status {
            version: s.version,
            uuid: (!s.uuid.is_empty()).then_some(s.uuid),
            accepted_sequence: s.accepted_sequence,
            clusters: s.clusters,
            clusters_current: s.clusters_current,
            activity: s.activity,
            started: s.started,
            drop_dir: s.drop_dir,
            waiting_files: s.waiting_files,
            uploaded_bytes: s.uploaded_bytes,
            store_read_bytes: s.store_read_bytes,
        }
    }
}

/// `imagesets -o json`, one per imageset.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Imageset {
    /// The connected workspace.
    pub uuid: String,
    /// Its sequence.
    pub sequence: u64,
    /// When it was created.
    pub created: String,
    /// Whether it carries every blob.
    pub full: bool,
    /// Images of its desired state.
    pub images: u32,
    /// Bytes carried in its chunk files.
    pub carried_bytes: u64,
    /// Release versions among its images.
    pub releases: Vec<String>,
    /// Clusters it is published to.
    pub published_to: Vec<String>,
    /// Why it was refused (never accepted); null for an accepted imageset.
    pub refused: Option<String>,
    /// For a delete imageset: the images it removes.
    pub deletes: u32,
    /// Per cluster whose registry was last pruned to this sequence: what was
    /// deleted and kept there.
    pub pruned: Vec<ImagesetPruning>,
}

/// What pruning did at one cluster's registry for an imageset.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImagesetPruning {
    /// The cluster.
    pub cluster: String,
    /// Manifests deleted.
    pub deleted: u64,
    /// Manifests no longer listed but kept, with why.
    pub kept: Vec<Kept>,
    /// Why nothing was pruned; null when it was.
    pub not_pruned: Option<String>,
}

impl From<v1::Imageset> for Imageset {
    fn from(i: v1::Imageset) -> Self {
        Imageset {
            uuid: i.uuid,
            sequence: i.sequence,
            created: i.created,
            full: i.full,
            images: i.images,
            carried_bytes: i.carried_bytes,
            releases: i.releases,
            published_to: i.published_to,
            refused: (!i.refused.is_empty()).then_some(i.refused),
            deletes: i.deletes,
            pruned: i
                .pruned
                .into_iter()
                .map(|p| ImagesetPruning {
                    cluster: p.cluster,
                    deleted: p.deleted,
                    kept: p.kept.into_iter().map(kept).collect(),
                    not_pruned: some(p.not_pruned),
                })
                .collect(),
        }
    }
}

/// `clusters -o json`, one per cluster.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    /// Its configured name.
    pub name: String,
    /// Its registry, `docker://HOST[:PORT][/PREFIX]`.
    pub registry: String,
    /// The last sequence published there; 0: none.
    pub published_sequence: u64,
    /// `current`, `behind`, `retrying` or `publishing`.
    pub state: &'static str,
    /// Why the last attempt failed, while retrying.
    pub last_error: Option<String>,
    /// Seconds to the next attempt, while retrying.
    pub retry_in_seconds: Option<u64>,
    /// The version the cluster runs; null without API access or before a check.
    pub version: Option<String>,
    /// The version it is updating to, when different.
    pub desired_version: Option<String>,
    /// Mirrored releases it can update to.
    pub available_updates: Vec<String>,
    /// Objects changed or deleted on the cluster since Airlock applied them.
    pub drift: Vec<String>,
    /// CatalogSources not running the latest published catalog.
    pub catalogs_behind: Vec<String>,
    /// What the cluster cannot take.
    pub notes: Vec<String>,
    /// Why the last API check failed.
    pub api_error: Option<String>,
    /// When the API was last checked; null without API access.
    pub checked: Option<String>,
    /// What pruning did at its registry last; null before the first prune.
    pub pruning: Option<Pruning>,
}

/// What pruning did at a cluster's registry for the last sequence published.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pruning {
    /// The sequence the registry was pruned to.
    pub sequence: u64,
    /// Manifests deleted.
    pub deleted: u64,
    /// Manifests no longer listed but kept, with why.
    pub kept: Vec<Kept>,
    /// Why nothing was pruned; null when it was.
    pub not_pruned: Option<String>,
}

/// A manifest kept although no longer listed.
#[derive(Debug, Serialize)]
pub struct Kept {
    /// `REPOSITORY@DIGEST` at the registry.
    pub manifest: String,
    /// Why (`in use by cluster east (release 4.15.3 (desired))`).
    pub reason: String,
}

/// `publish --dry-run -o json`: what publishing to one cluster would do.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// The cluster.
    pub cluster: String,
    /// Its registry and prefix.
    pub destination: String,
    /// The sequences that would be published, in order.
    pub would_publish: Vec<u64>,
    /// The manifests that would be deleted.
    pub deletes: Vec<PlannedDelete>,
    /// Manifests no longer listed that would be kept, with why.
    pub kept: Vec<Kept>,
    /// Why nothing would be pruned; null when something was planned.
    pub not_pruned: Option<String>,
    /// What could not be found out.
    pub problems: Vec<String>,
}

/// A manifest a publish would delete.
#[derive(Debug, Serialize)]
pub struct PlannedDelete {
    /// `REPOSITORY@DIGEST` at the registry.
    pub manifest: String,
    /// `image`, `child`, `referrer` or `referrers tag`.
    pub role: String,
    /// The image it belongs to.
    pub image: String,
}

impl From<v1::PublishPlan> for Plan {
    fn from(p: v1::PublishPlan) -> Self {
        Plan {
            cluster: p.cluster,
            destination: p.destination,
            would_publish: p.would_publish,
            deletes: p
                .deletes
                .into_iter()
                .map(|d| PlannedDelete {
                    manifest: d.manifest,
                    role: d.role,
                    image: d.image,
                })
                .collect(),
            kept: p.kept.into_iter().map(kept).collect(),
            not_pruned: some(p.not_pruned),
            problems: p.problems,
        }
    }
}

/// `publish --dry-run` for people: per cluster, what would be published, then
/// each manifest that would be deleted or kept.
pub fn plans_text(plans: &[Plan]) -> String {
    let mut out = String::from("dry run, nothing changed\n");
    for p in plans {
        let sequences: Vec<String> = p.would_publish.iter().map(u64::to_string).collect();
        out.push_str(&if sequences.is_empty() {
            format!("{}: {} is up to date\n", p.cluster, p.destination)
        } else {
            format!(
                "{}: would publish sequence {} to {}\n",
                p.cluster,
                sequences.join(", "),
                p.destination
            )
        });
        if let Some(why) = &p.not_pruned {
            out.push_str(&format!("{}: would not prune: {why}\n", p.cluster));
        } else if !p.deletes.is_empty() || !p.kept.is_empty() {
            out.push_str(&format!(
                "{}: would prune: {} manifests to delete, {} kept in use\n",
                p.cluster,
                p.deletes.len(),
                p.kept.len()
            ));
        }
        for d in &p.deletes {
            out.push_str(&format!(
                "  delete {} ({} of {})\n",
                d.manifest, d.role, d.image
            ));
        }
        for k in &p.kept {
            out.push_str(&format!("  keep {}: {}\n", k.manifest, k.reason));
        }
        for problem in &p.problems {
            out.push_str(&format!("{}: cannot tell: {problem}\n", p.cluster));
        }
    }
    out
}

fn kept(k: v1::KeptManifest) -> Kept {
    Kept {
        manifest: k.manifest,
        reason: k.reason,
    }
}

fn state(s: i32) -> &'static str {
    match v1::ClusterState::try_from(s) {
        Ok(v1::ClusterState::Current) => "current",
        Ok(v1::ClusterState::Behind) => "behind",
        Ok(v1::ClusterState::Retrying) => "retrying",
        Ok(v1::ClusterState::Publishing) => "publishing",
        _ => "unknown",
    }
}

fn some(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl From<v1::Cluster> for Cluster {
    fn from(c: v1::Cluster) -> Self {
        let retrying = c.state == v1::ClusterState::Retrying as i32;
        let api = c.api.unwrap_or_default();
        Cluster {
            version: some(api.version),
            desired_version: some(api.desired_version),
            available_updates: api.available_updates,
            drift: api.drift,
            catalogs_behind: api.catalogs_behind,
            notes: api.notes,
            api_error: some(api.error),
            checked: some(api.checked),
            pruning: c.pruning.map(|p| Pruning {
                sequence: p.sequence,
                deleted: p.deleted,
                kept: p.kept.into_iter().map(kept).collect(),
                not_pruned: some(p.not_pruned),
            }),
            state: state(c.state),
            name: c.name,
            registry: c.registry,
            published_sequence: c.published_sequence,
            last_error: (!c.last_error.is_empty()).then_some(c.last_error),
            retry_in_seconds: retrying.then_some(c.retry_in_seconds),
        }
    }
}

/// One imageset's outcome in `ingest -o json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IngestOutcome {
    /// The connected workspace.
    pub uuid: String,
    /// Its sequence.
    pub sequence: u64,
    /// `accepted`, `duplicate`, `waiting`, `refused` or `damaged`.
    pub outcome: &'static str,
    /// Why, for every outcome but accepted and duplicate.
    pub message: Option<String>,
}

/// A quarantined file in `ingest -o json`.
#[derive(Debug, Serialize)]
pub struct Quarantined {
    /// The file's name as sent.
    pub file: String,
    /// Why.
    pub reason: String,
}

/// A publication in `ingest` and `publish -o json`.
#[derive(Debug, Serialize)]
pub struct Published {
    /// The cluster.
    pub cluster: String,
    /// The sequence.
    pub sequence: u64,
}

/// `ingest -o json`.
#[derive(Debug, Serialize)]
pub struct Ingest {
    /// What became of each imageset the files belong to.
    pub imagesets: Vec<IngestOutcome>,
    /// Files set aside as unusable.
    pub quarantined: Vec<Quarantined>,
    /// Clusters published to meanwhile.
    pub published: Vec<Published>,
}

fn outcome(o: i32) -> &'static str {
    match v1::Outcome::try_from(o) {
        Ok(v1::Outcome::Accepted) => "accepted",
        Ok(v1::Outcome::Duplicate) => "duplicate",
        Ok(v1::Outcome::Waiting) => "waiting",
        Ok(v1::Outcome::Refused) => "refused",
        Ok(v1::Outcome::Damaged) => "damaged",
        _ => "unknown",
    }
}

fn published(p: Vec<v1::Published>) -> Vec<Published> {
    p.into_iter()
        .map(|p| Published {
            cluster: p.cluster,
            sequence: p.sequence,
        })
        .collect()
}

impl From<v1::IngestResponse> for Ingest {
    fn from(r: v1::IngestResponse) -> Self {
        Ingest {
            imagesets: r
                .imagesets
                .into_iter()
                .map(|i| IngestOutcome {
                    outcome: outcome(i.outcome),
                    uuid: i.uuid,
                    sequence: i.sequence,
                    message: (!i.message.is_empty()).then_some(i.message),
                })
                .collect(),
            quarantined: r
                .quarantined
                .into_iter()
                .map(|q| Quarantined {
                    file: q.file,
                    reason: q.reason,
                })
                .collect(),
            published: published(r.published),
        }
    }
}

/// `publish -o json`.
#[derive(Debug, Serialize)]
pub struct Publish {
    /// The clusters attempted, after the attempt.
    pub clusters: Vec<Cluster>,
    /// What was published.
    pub published: Vec<Published>,
}

impl From<v1::PublishResponse> for Publish {
    fn from(r: v1::PublishResponse) -> Self {
        Publish {
            clusters: r.clusters.into_iter().map(Cluster::from).collect(),
            published: published(r.published),
        }
    }
}

/// One line of `watch -o json` (one JSON object per line).
#[derive(Debug, Serialize)]
pub struct Event {
    /// When, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// `accepted`, `quarantined`, `published`, `publishFailed` or `lagged`.
    pub kind: &'static str,
    /// The cluster concerned.
    pub cluster: Option<String>,
    /// The imageset concerned.
    pub uuid: Option<String>,
    /// Its sequence.
    pub sequence: Option<u64>,
    /// The file concerned.
    pub file: Option<String>,
    /// Details.
    pub message: String,
    /// Events missed (`lagged` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missed: Option<u64>,
}

impl From<v1::Event> for Event {
    fn from(e: v1::Event) -> Self {
        let kind = match v1::EventKind::try_from(e.kind) {
            Ok(v1::EventKind::Accepted) => "accepted",
            Ok(v1::EventKind::Quarantined) => "quarantined",
            Ok(v1::EventKind::Published) => "published",
            Ok(v1::EventKind::PublishFailed) => "publishFailed",
            Ok(v1::EventKind::Lagged) => "lagged",
            Ok(v1::EventKind::Applied) => "applied",
            Ok(v1::EventKind::Drifted) => "drifted",
            _ => "unknown",
        };
        let some = |s: String| (!s.is_empty()).then_some(s);
        Event {
            time: e.time,
            kind,
            cluster: some(e.cluster),
            sequence: (!e.uuid.is_empty()).then_some(e.sequence),
            uuid: some(e.uuid),
            file: some(e.file),
            message: e.message,
            missed: (kind == "lagged").then_some(e.missed),
        }
    }
}

/// The table of `status`.
pub fn status_table(s: &Status) -> String {
    let follows = match &s.uuid {
        Some(u) => format!("{u}, sequence {} accepted", s.accepted_sequence),
        None => "nothing yet (no imageset accepted)".into(),
    };
    format!(
        "agent      {} (up since {})\nfollows    {follows}\nclusters   {} of {} current\nactivity   {}\ndrop dir   {} ({} files waiting)\nuploaded   {} to registries, {} read from the store\n",
        s.version,
        s.started,
        s.clusters_current,
        s.clusters,
        s.activity,
        s.drop_dir,
        s.waiting_files,
        ByteSize(s.uploaded_bytes),
        ByteSize(s.store_read_bytes),
    )
}

/// The table of `imagesets`, with the refused ones and their reasons below it.
pub fn imagesets_table(list: &[Imageset]) -> String {
    let rows: Vec<[String; 6]> = list
        .iter()
        .map(|i| {
            [
                i.sequence.to_string(),
                i.created.clone(),
                match (i.full, i.deletes) {
                    (true, _) => format!("{} (full)", i.images),
                    (false, 0) => i.images.to_string(),
                    (false, n) => format!("{} (deletes {n})", i.images),
                },
                ByteSize(i.carried_bytes).to_string(),
                i.releases.join(","),
                match &i.refused {
                    Some(_) => "REFUSED".to_string(),
                    None => i.published_to.join(","),
                },
            ]
        })
        .collect();
    let mut out = table(
        [
            "SEQUENCE",
            "CREATED",
            "IMAGES",
            "CARRIED",
            "RELEASES",
            "PUBLISHED TO",
        ],
        &rows,
    );
    for i in list {
        if let Some(why) = &i.refused {
            out.push_str(&format!(
                "refused {} sequence {}: {why}\n",
                i.uuid, i.sequence
            ));
        }
        for p in &i.pruned {
            match &p.not_pruned {
                Some(why) => out.push_str(&format!(
                    "sequence {} at {}: not pruned: {why}\n",
                    i.sequence, p.cluster
                )),
                None => out.push_str(&format!(
                    "sequence {} at {}: {} manifests pruned, {} kept in use\n",
                    i.sequence,
                    p.cluster,
                    p.deleted,
                    p.kept.len()
                )),
            }
            for k in &p.kept {
                out.push_str(&format!("  kept {}: {}\n", k.manifest, k.reason));
            }
        }
    }
    out
}

/// The table of `clusters` (and of `publish` and `reconcile`), with the drift
/// and notes of each cluster listed below it.
pub fn clusters_table(list: &[Cluster]) -> String {
    let rows: Vec<[String; 7]> = list
        .iter()
        .map(|c| {
            let note = match (&c.last_error, c.retry_in_seconds, &c.api_error) {
                (Some(e), Some(s), _) => format!("retry in {s} s: {e}"),
                (Some(e), None, _) => e.clone(),
                (None, _, Some(e)) => format!("API: {e}"),
                _ => String::new(),
            };
            let version = match (&c.version, &c.desired_version) {
                (Some(v), Some(d)) => format!("{v} → {d}"),
                (Some(v), None) => v.clone(),
                _ => "-".into(),
            };
            [
                c.name.clone(),
                c.registry.clone(),
                c.published_sequence.to_string(),
                c.state.to_string(),
                version,
                c.available_updates.join(","),
                note,
            ]
        })
        .collect();
    let mut out = table(
        [
            "NAME",
            "REGISTRY",
            "PUBLISHED",
            "STATE",
            "VERSION",
            "UPDATES",
            "NOTE",
        ],
        &rows,
    );
    for c in list {
        for (what, lines) in [
            ("drift", &c.drift),
            ("behind", &c.catalogs_behind),
            ("note", &c.notes),
        ] {
            for l in lines {
                out.push_str(&format!("{}: {what}: {l}\n", c.name));
            }
        }
        if let Some(p) = &c.pruning {
            match &p.not_pruned {
                Some(why) => out.push_str(&format!(
                    "{}: not pruned at sequence {}: {why}\n",
                    c.name, p.sequence
                )),
                None => out.push_str(&format!(
                    "{}: pruned to sequence {}: {} manifests deleted, {} kept in use\n",
                    c.name,
                    p.sequence,
                    p.deleted,
                    p.kept.len()
                )),
            }
            for k in &p.kept {
                out.push_str(&format!("{}: kept: {}: {}\n", c.name, k.manifest, k.reason));
            }
        }
    }
    out
}

/// The report of `ingest`.
pub fn ingest_text(r: &Ingest) -> String {
    let mut out = String::new();
    for i in &r.imagesets {
        out.push_str(&format!(
            "imageset {}/{}: {}",
            i.uuid, i.sequence, i.outcome
        ));
        if let Some(m) = &i.message {
            out.push_str(&format!(": {m}"));
        }
        out.push('\n');
    }
    for q in &r.quarantined {
        out.push_str(&format!("quarantined {}: {}\n", q.file, q.reason));
    }
    for p in &r.published {
        out.push_str(&format!(
            "published sequence {} to cluster {}\n",
            p.sequence, p.cluster
        ));
    }
    out
}

/// One line of `watch`.
pub fn event_line(e: &Event) -> String {
    let mut out = format!("{} {}", e.time, e.kind);
    if let Some(c) = &e.cluster {
        out.push_str(&format!(" cluster={c}"));
    }
    if let (Some(u), Some(s)) = (&e.uuid, e.sequence) {
        out.push_str(&format!(" imageset={u}/{s}"));
    }
    if let Some(f) = &e.file {
        out.push_str(&format!(" file={f}"));
    }
    if !e.message.is_empty() {
        out.push_str(&format!(" {}", e.message));
    }
    out
}
