//! `publish`: take every complete imageset from a directory, in sequence order, and
//! publish the workspace's content to a registry.
//!
//! 1. Scan the directory; group chunk files by imageset.
//! 2. In sequence order, judge each imageset against the workspace (accept,
//!    duplicate, wait, refuse); verify every chunk of an acceptable, complete one
//!    into the content store, and only then record it as accepted.
//! 3. Push every accepted imageset not yet published to this destination, in order.
//! 4. Write the cluster resources (mirror sets) for what is now published.
//!
//! Whatever cannot be done (a missing chunk, a damaged file, an imageset waiting for
//! its predecessor) is reported with the files concerned, and makes the command exit
//! non-zero, but does not stop the imagesets that can be published.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock_common::exit_codes;
use airlock_common::imageset::read::ChunkError;
use airlock_common::reference::Destination;
use airlock_common::registry::{RegistryClient, RegistryOptions};
use airlock_common::resources;
use airlock_common::size::ByteSize;
use airlock_common::telemetry::Progress;

use crate::error::Error;
use crate::ingest;
use crate::push::{self, Pusher};
use crate::scan::{self, Candidate};
use crate::store::Store;
use crate::workspace::{Verdict, Workspace};

/// What `publish` is asked to do.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// The directory holding chunk files.
    pub from: PathBuf,
    /// The mirror registry and prefix.
    pub to: Destination,
    /// The workspace directory; defaults to `~/.airlock/site`.
    pub workspace: Option<PathBuf>,
    /// Blob transfers at once.
    pub parallel: usize,
    /// How to reach the destination registry.
    pub registry: RegistryOptions,
}

/// Something `publish` could not do; the run continues with what it can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The exit code this problem calls for.
    pub code: i32,
    /// What, with the files concerned and what to do.
    pub message: String,
}

/// What `publish` did.
#[derive(Debug, Default)]
pub struct PublishReport {
    /// Imagesets accepted in this run: (UUID, sequence, blobs stored).
    pub accepted: Vec<(uuid::Uuid, u64, u64)>,
    /// Sequences published to the destination in this run.
    pub published: Vec<u64>,
    /// Counters: uploaded, uploaded bytes, mounted, present, manifests.
    pub stats: [u64; 5],
    /// Cluster resource files written.
    pub resources: Vec<PathBuf>,
    /// What could not be done.
    pub problems: Vec<Problem>,
    /// Wall time.
    pub elapsed: Duration,
}

impl PublishReport {
    /// The exit code: the most serious problem's, or success.
    pub fn exit_code(&self) -> i32 {
        let rank = |c: i32| match c {
            exit_codes::DATA => 4,
            exit_codes::STATE => 3,
            exit_codes::UNAVAILABLE => 2,
            exit_codes::INCOMPLETE => 1,
            _ => 0,
        };
        self.problems
            .iter()
            .map(|p| p.code)
            .max_by_key(|&c| rank(c))
            .unwrap_or(exit_codes::OK)
    }
}

/// The workspace directory to use.
pub fn workspace_dir(explicit: Option<&Path>) -> Result<PathBuf, Error> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".airlock/site"))
        .ok_or_else(|| Error::Usage("no --workspace given and HOME is not set".into()))
}

fn missing_message(c: &Candidate) -> String {
    let names: Vec<&str> = c.missing().iter().map(|r| r.name.as_str()).collect();
    format!(
        "{} is incomplete: {} of {} chunk files missing: {}; nothing of it was published. Copy the missing files into the directory and run publish again",
        c.manifest.label(),
        names.len(),
        c.manifest.chunks.len(),
        names.join(", ")
    )
}

/// Runs `publish`.
pub async fn publish(opts: &PublishOptions) -> Result<PublishReport, Error> {
    let started = Instant::now();
    let mut report = PublishReport::default();
    if !opts.from.is_dir() {
        return Err(Error::Usage(format!(
            "--from {}: not a directory",
            opts.from.display()
        )));
    }
    let ws_dir = workspace_dir(opts.workspace.as_deref())?;
    let ws = Workspace::open(&ws_dir)?;
    let store = Store::open(&ws_dir).map_err(|e| Error::io(&ws_dir, e))?;
    store.clear_tmp().map_err(|e| Error::io(&ws_dir, e))?;

    let found = scan::scan(&opts.from).map_err(|e| Error::io(&opts.from, e))?;
    tracing::info!(dir = %opts.from.display(), imagesets = found.imagesets.len(), damaged = found.damaged.len(), other = found.other.len(), "scanned");
    for e in &found.damaged {
        report.problems.push(Problem {
            code: exit_codes::DATA,
            message: format!("{e}; the file was not used"),
        });
    }
    if found.imagesets.is_empty() && ws.accepted()?.is_none() {
        report.problems.push(Problem {
            code: exit_codes::INCOMPLETE,
            message: format!("no imageset chunk files found in {}", opts.from.display()),
        });
    }

    // Accept in sequence order; an acceptance may unblock an imageset that waits.
    let mut pending: Vec<&Candidate> = found.imagesets.values().collect();
    loop {
        let mut progressed = false;
        let mut still = Vec::new();
        for c in pending {
            match ws.judge(&c.manifest)? {
                Verdict::Duplicate => {
                    tracing::info!(uuid = %c.manifest.uuid, sequence = c.manifest.sequence, "already accepted; skipped");
                }
                Verdict::Refuse(why) => report.problems.push(Problem {
                    code: exit_codes::STATE,
                    message: why,
                }),
                Verdict::Wait { .. } => still.push(c),
                Verdict::Accept => {
                    if !c.conflicting.is_empty() {
                        let files: Vec<String> = c
                            .conflicting
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect();
                        report.problems.push(Problem {
                            code: exit_codes::DATA,
                            message: format!(
                                "{}: chunk files disagree on its manifest ({}); refusing it: a file was altered or two different imagesets claim the same sequence",
                                c.manifest.label(),
                                files.join(", ")
                            ),
                        });
                        continue;
                    }
                    if !c.missing().is_empty() {
                        report.problems.push(Problem {
                            code: exit_codes::INCOMPLETE,
                            message: missing_message(c),
                        });
                        continue;
                    }
                    let (candidate, st) = (c.clone(), store.clone());
                    let result: Result<u64, ChunkError> =
                        tokio::task::spawn_blocking(move || ingest::ingest(&candidate, &st))
                            .await
                            .expect("ingest does not panic");
                    match result {
                        Ok(stored) => {
                            ws.accept(&c.manifest)?;
                            tracing::info!(uuid = %c.manifest.uuid, sequence = c.manifest.sequence, blobs_stored = stored, "imageset verified and accepted");
                            report
                                .accepted
                                .push((c.manifest.uuid, c.manifest.sequence, stored));
                            progressed = true;
                        }
                        Err(e) => report.problems.push(Problem {
                            code: exit_codes::DATA,
                            message: format!(
                                "{}: {e}; nothing of it was published",
                                c.manifest.label()
                            ),
                        }),
                    }
                }
            }
        }
        pending = still;
        if !progressed || pending.is_empty() {
            break;
        }
    }
    for c in pending {
        let Verdict::Wait { expected } = ws.judge(&c.manifest)? else {
            continue;
        };
        let mut message = format!("{} is waiting for sequence {expected}", c.manifest.label());
        if !c.missing().is_empty() {
            message.push_str(&format!("; it also lacks chunks: {}", missing_message(c)));
        }
        report.problems.push(Problem {
            code: exit_codes::INCOMPLETE,
            message,
        });
    }

    // Publish what was accepted and not yet published here.
    if let Some((uuid, last)) = ws.accepted()? {
        let dest_key = opts.to.to_string();
        let from = ws.published(&dest_key)?.unwrap_or(0) + 1;
        if from <= last {
            let client = RegistryClient::connect(opts.to.registry(), &opts.registry).await?;
            let manifests = (from..=last)
                .map(|s| ws.manifest(&uuid, s))
                .collect::<Result<Vec<_>, _>>()?;
            let total: u64 = manifests
                .iter()
                .flat_map(|m| m.blobs.iter().filter(|b| b.media_type.is_none()))
                .map(|b| b.size)
                .sum();
            let pusher = Pusher::new(
                &client,
                &store,
                &opts.to,
                opts.parallel,
                Progress::bytes("publish", total),
            );
            for m in &manifests {
                pusher.push_imageset(m).await?;
                ws.mark_published(&dest_key, m.sequence)?;
                report.published.push(m.sequence);
                tracing::info!(uuid = %m.uuid, sequence = m.sequence, destination = %dest_key, "imageset published");
            }
            report.stats = pusher.stats.get();
        }
        let latest = ws.manifest(&uuid, last)?;
        let dir = ws_dir.join("cluster-resources");
        report.resources = resources::write_mirror_sets(&dir, &push::mirrored(&latest, &opts.to))
            .map_err(|e| Error::io(&dir, e))?;
    }
    report.elapsed = started.elapsed();
    tracing::info!(
        accepted = report.accepted.len(),
        published = report.published.len(),
        uploaded = report.stats[0],
        uploaded_bytes = %ByteSize(report.stats[1]),
        problems = report.problems.len(),
        "publish finished"
    );
    Ok(report)
}
