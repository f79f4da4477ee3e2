//! The control plane: `airlock.v1.Control` over gRPC with mutual TLS.
//!
//! Reads (status, imagesets, clusters, events) are served from [`Status`] and the
//! workspace without involving the agent's loop. Work (ingest, publish) is handed
//! to the loop as a [`Command`] and answered when the loop has done it, so that a
//! file sent over gRPC meets exactly the checks of the drop directory: it *is*
//! placed in the drop directory, renamed in complete, like a file a diode delivers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_proto::v1;
use airlock_proto::v1::control_server::{Control, ControlServer};
use futures::Stream;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::StreamExt;
use tonic::transport::ServerTlsConfig;
use tonic::{Request, Response, Status as RpcStatus, Streaming};

use crate::error::Error;
use crate::messages::{Command, Commands, Round};
use crate::scan;
use crate::site::Outcome;
use crate::status::{AgentEvent, ClusterState, ClusterView, EventKind, Status};

/// Where files being received are kept until complete: hidden, inside the drop
/// directory, so that the final rename is atomic and the scanner never sees a
/// partial file.
const STAGING: &str = ".airlock-ingest";

/// How long requests in flight may take to finish once the agent stops.
const DRAIN: Duration = Duration::from_secs(10);

/// Removes what an interrupted ingest left behind.
pub fn clear_staging(drop_dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(drop_dir.join(STAGING)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The configured control plane, not yet bound.
#[derive(Debug, Clone)]
pub struct Server {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The server identity and the CA client certificates must chain to.
    pub tls: ServerTlsConfig,
}

/// The bound and serving control plane.
pub struct Running {
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Server {
    /// Binds the address and starts serving; stops accepting when `stop` turns true.
    pub(crate) async fn start(
        self,
        status: Arc<Status>,
        loop_tx: Commands,
        stop: watch::Receiver<bool>,
    ) -> Result<Running, Error> {
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .map_err(|source| Error::Bind {
                field: "grpc.listen",
                addr: self.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            field: "grpc.listen",
            addr: self.listen,
            source,
        })?;
        let service = ControlService {
            status,
            loop_tx,
            stop: stop.clone(),
        };
        let router = tonic::transport::Server::builder()
            .tls_config(self.tls)
            .map_err(|e| Error::Usage(format!("grpc.tls: {e}")))?
            .add_service(ControlServer::new(service));
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let mut stop = stop;
        let task = tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        });
        tracing::info!(%addr, "control plane listening (gRPC, mutual TLS)");
        Ok(Running { task })
    }
}

impl Running {
    /// Waits for requests in flight to finish, for a bounded time.
    pub async fn drain(self) {
        match tokio::time::timeout(DRAIN, self.task).await {
            Ok(Ok(Ok(()))) => tracing::info!("control plane stopped"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "control plane stopped with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "control plane task failed"),
            Err(_) => tracing::warn!(
                seconds = DRAIN.as_secs(),
                "control plane requests still running; stopping anyway"
            ),
        }
    }
}

struct ControlService {
    status: Arc<Status>,
    loop_tx: Commands,
    stop: watch::Receiver<bool>,
}

fn internal(e: impl std::fmt::Display) -> RpcStatus {
    RpcStatus::internal(e.to_string())
}

/// Who is asking, for the journal: the client certificate's subject is not parsed;
/// the peer address is enough to correlate with the TLS log.
fn peer<T>(r: &Request<T>) -> String {
    r.remote_addr().map(|a| a.to_string()).unwrap_or_default()
}

impl ControlService {
    /// Hands `command` to the agent's loop and waits for its answer.
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, RpcStatus> {
        let (reply, answer) = oneshot::channel();
        if !self.loop_tx.send(command(reply)) {
            return Err(RpcStatus::unavailable("the agent is stopping"));
        }
        answer.await.map_err(|_| {
            RpcStatus::unavailable(
                "the agent stopped or its round failed before answering (see its log); files it placed in the drop directory are taken on its next round",
            )
        })
    }

    /// Refuses a cluster name the agent does not have (empty: all clusters).
    fn known(&self, views: &[ClusterView], name: &str) -> Result<(), RpcStatus> {
        if name.is_empty() || views.iter().any(|v| v.name == name) {
            return Ok(());
        }
        let known: Vec<&str> = views.iter().map(|v| v.name.as_str()).collect();
        Err(RpcStatus::not_found(format!(
            "no cluster named {name:?}; the agent has: {}",
            known.join(", ")
        )))
    }

    fn cluster(&self, view: &ClusterView) -> Result<v1::Cluster, RpcStatus> {
        let (published, state) = self.status.cluster_state(view).map_err(internal)?;
        let state = match state {
            ClusterState::Current => v1::ClusterState::Current,
            ClusterState::Behind => v1::ClusterState::Behind,
            ClusterState::Retrying => v1::ClusterState::Retrying,
            ClusterState::Publishing => v1::ClusterState::Publishing,
        };
        Ok(v1::Cluster {
            name: view.name.clone(),
            registry: view.registry.to_string(),
            published_sequence: published,
            state: state.into(),
            last_error: view.last_error.clone().unwrap_or_default(),
            retry_in_seconds: view
                .retry_at
                .map(|r| r.saturating_duration_since(Instant::now()).as_secs())
                .unwrap_or(0),
            api: view.api.clone().map(|a| v1::ClusterApi {
                version: a.version.unwrap_or_default(),
                desired_version: a.desired_version.unwrap_or_default(),
                available_updates: a.available_updates,
                drift: a.drift,
                catalogs_behind: a.catalogs_behind,
                notes: a.notes,
                error: a.error.unwrap_or_default(),
                checked: a.checked.unwrap_or_default(),
            }),
            pruning: view.pruning.clone().map(|p| v1::Pruning {
                sequence: p.sequence,
                deleted: p.deleted,
                kept: kept_manifests(&p.kept),
                not_pruned: p.not_pruned.unwrap_or_default(),
            }),
        })
    }
}

fn published(round: &Round) -> Vec<v1::Published> {
    round
        .published
        .iter()
        .map(|(cluster, sequence)| v1::Published {
            cluster: cluster.clone(),
            sequence: *sequence,
        })
        .collect()
}

/// A file being received: its staged path, how much is announced and written.
struct Receiving {
    name: String,
    path: PathBuf,
    file: tokio::fs::File,
    size: u64,
    written: u64,
}

impl Receiving {
    async fn finish(mut self) -> Result<(String, PathBuf), RpcStatus> {
        if self.written != self.size {
            return Err(RpcStatus::invalid_argument(format!(
                "file {}: {} bytes arrived, {} were announced",
                self.name, self.written, self.size
            )));
        }
        let synced = match self.file.flush().await {
            Ok(()) => self.file.sync_all().await,
            Err(e) => Err(e),
        };
        synced.map_err(|e| internal(format!("file {}: {e}", self.name)))?;
        Ok((self.name, self.path))
    }
}

/// The staging directory of one stream; removed with whatever it holds when the
/// stream ends, however it ends.
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Checks a file name a client sent: it becomes a name in the drop directory.
fn check_name(name: &str) -> Result<(), RpcStatus> {
    let plain = !name.is_empty()
        && name.len() <= 255
        && !name.contains(['/', '\\', '\0'])
        && name != ".."
        && scan::eligible(name);
    if plain {
        Ok(())
    } else {
        Err(RpcStatus::invalid_argument(format!(
            "file name {name:?}: expected a plain file name (no directory, not hidden, not ending in .part, .tmp, .repair, .damaged or .reason)"
        )))
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::Event, RpcStatus>> + Send>>;

/// Manifests kept although no longer listed (`REPOSITORY@DIGEST`, why).
fn kept_manifests(kept: &[(String, String)]) -> Vec<v1::KeptManifest> {
    kept.iter()
        .map(|(manifest, reason)| v1::KeptManifest {
            manifest: manifest.clone(),
            reason: reason.clone(),
        })
        .collect()
}

/// A dry run's plan for one cluster, as the control plane says it.
fn plan(p: crate::messages::ClusterPlan) -> v1::PublishPlan {
    let pruned = p.pruned.unwrap_or_default();
    v1::PublishPlan {
        cluster: p.cluster,
        destination: p.destination,
        would_publish: p.would_publish,
        deletes: pruned
            .deleted
            .iter()
            .map(|d| v1::PlannedDelete {
                manifest: d.at.to_string(),
                role: d.role.to_string(),
                image: d.image.clone(),
            })
            .collect(),
        kept: pruned
            .kept
            .iter()
            .map(|(at, why)| v1::KeptManifest {
                manifest: at.to_string(),
                reason: why.clone(),
            })
            .collect(),
        not_pruned: p
            .not_pruned
            .or(pruned
                .refused
                .map(|a| format!("the registry refuses deletes ({a})")))
            .unwrap_or_default(),
        problems: p.problems,
    }
}

fn event(e: AgentEvent) -> v1::Event {
    let kind = match e.kind {
        EventKind::Accepted => v1::EventKind::Accepted,
        EventKind::Quarantined => v1::EventKind::Quarantined,
        EventKind::Published => v1::EventKind::Published,
        EventKind::PublishFailed => v1::EventKind::PublishFailed,
        EventKind::Applied => v1::EventKind::Applied,
        EventKind::Drifted => v1::EventKind::Drifted,
    };
    v1::Event {
        time: e.time,
        kind: kind.into(),
        cluster: e.cluster.unwrap_or_default(),
        uuid: e.imageset.map(|(u, _)| u.to_string()).unwrap_or_default(),
        sequence: e.imageset.map_or(0, |(_, s)| s),
        file: e
            .file
            .and_then(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default(),
        message: e.message,
        missed: 0,
    }
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn get_status(
        &self,
        _: Request<v1::GetStatusRequest>,
    ) -> Result<Response<v1::AgentStatus>, RpcStatus> {
        let ws = &self.status.site.ws;
        let accepted = ws.accepted().map_err(internal)?;
        let views = self.status.clusters();
        let mut current = 0;
        for v in &views {
            if self.status.cluster_state(v).map_err(internal)?.1 == ClusterState::Current {
                current += 1;
            }
        }
        let waiting = scan::list(&self.status.drop_dir).map_err(internal)?.len();
        let (uploaded, read) = self.status.traffic();
        Ok(Response::new(v1::AgentStatus {
            version: env!("CARGO_PKG_VERSION").into(),
            uuid: accepted.map(|(u, _)| u.to_string()).unwrap_or_default(),
            accepted_sequence: accepted.map_or(0, |(_, s)| s),
            clusters: views.len() as u32,
            clusters_current: current,
            activity: self.status.activity(),
            started: self.status.started.clone(),
            drop_dir: self.status.drop_dir.display().to_string(),
            waiting_files: waiting as u32,
            uploaded_bytes: uploaded,
            store_read_bytes: read,
        }))
    }

    async fn list_imagesets(
        &self,
        _: Request<v1::ListImagesetsRequest>,
    ) -> Result<Response<v1::ListImagesetsResponse>, RpcStatus> {
        let ws = &self.status.site.ws;
        let refused = self
            .status
            .refused_list()
            .into_iter()
            .map(|r| v1::Imageset {
                uuid: r.imageset.0.to_string(),
                sequence: r.imageset.1,
                created: r.created,
                images: r.images,
                refused: r.reason,
                ..v1::Imageset::default()
            });
        let Some((uuid, last)) = ws.accepted().map_err(internal)? else {
            return Ok(Response::new(v1::ListImagesetsResponse {
                imagesets: refused.collect(),
            }));
        };
        let views = self.status.clusters();
        let mut published = Vec::new();
        for v in &views {
            published.push(self.status.cluster_state(v).map_err(internal)?.0);
        }
        let mut imagesets = Vec::new();
        for seq in 1..=last {
            // A workspace continued from a registry lacks the manifests of what an
            // earlier machine accepted.
            if !ws.has_manifest(&uuid, seq) {
                continue;
            }
            let m = ws.manifest(&uuid, seq).map_err(internal)?;
            imagesets.push(v1::Imageset {
                uuid: uuid.to_string(),
                sequence: seq,
                created: m.created.clone(),
                full: m.full,
                images: m.images.len() as u32,
                carried_bytes: m
                    .blobs
                    .iter()
                    .filter(|b| !b.parts.is_empty())
                    .map(|b| b.size)
                    .sum(),
                releases: m.releases.iter().map(|r| r.version.clone()).collect(),
                published_to: views
                    .iter()
                    .zip(&published)
                    .filter(|(_, p)| **p >= seq)
                    .map(|(v, _)| v.name.clone())
                    .collect(),
                refused: String::new(),
                deletes: m.deletes.len() as u32,
                pruned: views
                    .iter()
                    .filter_map(|v| {
                        let p = v.pruning.as_ref().filter(|p| p.sequence == seq)?;
                        Some(v1::ImagesetPruning {
                            cluster: v.name.clone(),
                            deleted: p.deleted,
                            kept: kept_manifests(&p.kept),
                            not_pruned: p.not_pruned.clone().unwrap_or_default(),
                        })
                    })
                    .collect(),
            });
        }
        imagesets.extend(refused);
        Ok(Response::new(v1::ListImagesetsResponse { imagesets }))
    }

    async fn list_clusters(
        &self,
        _: Request<v1::ListClustersRequest>,
    ) -> Result<Response<v1::ListClustersResponse>, RpcStatus> {
        let clusters = self
            .status
            .clusters()
            .iter()
            .map(|v| self.cluster(v))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(v1::ListClustersResponse { clusters }))
    }

    async fn ingest(
        &self,
        request: Request<Streaming<v1::IngestRequest>>,
    ) -> Result<Response<v1::IngestResponse>, RpcStatus> {
        let who = peer(&request);
        let mut stream = request.into_inner();
        let drop_dir = self.status.drop_dir.clone();
        let staging = Staging(
            drop_dir
                .join(STAGING)
                .join(uuid::Uuid::new_v4().to_string()),
        );
        tokio::fs::create_dir_all(&staging.0)
            .await
            .map_err(|e| internal(format!("{}: {e}", staging.0.display())))?;
        let mut received: Vec<(String, PathBuf)> = Vec::new();
        let mut current: Option<Receiving> = None;
        while let Some(message) = stream.next().await {
            match message?.item {
                Some(v1::ingest_request::Item::Start(start)) => {
                    if let Some(done) = current.take() {
                        received.push(done.finish().await?);
                    }
                    check_name(&start.name)?;
                    if received.iter().any(|(n, _)| *n == start.name) {
                        return Err(RpcStatus::invalid_argument(format!(
                            "file {} is sent twice in one stream",
                            start.name
                        )));
                    }
                    let free = airlock_state::free_space(&drop_dir).map_err(internal)?;
                    if start.size > free {
                        return Err(RpcStatus::resource_exhausted(format!(
                            "file {} is {} bytes, but the drop directory {} has {} free; nothing was kept",
                            start.name,
                            start.size,
                            drop_dir.display(),
                            free
                        )));
                    }
                    let path = staging.0.join(&start.name);
                    let file = tokio::fs::File::create(&path)
                        .await
                        .map_err(|e| internal(format!("{}: {e}", path.display())))?;
                    current = Some(Receiving {
                        name: start.name,
                        path,
                        file,
                        size: start.size,
                        written: 0,
                    });
                }
                Some(v1::ingest_request::Item::Data(data)) => {
                    let Some(f) = current.as_mut() else {
                        return Err(RpcStatus::invalid_argument(
                            "data before any file start; send a FileStart first",
                        ));
                    };
                    if f.written + data.len() as u64 > f.size {
                        return Err(RpcStatus::invalid_argument(format!(
                            "file {}: more than the {} bytes announced arrived",
                            f.name, f.size
                        )));
                    }
                    f.file
                        .write_all(&data)
                        .await
                        .map_err(|e| internal(format!("file {}: {e}", f.name)))?;
                    f.written += data.len() as u64;
                }
                None => {
                    return Err(RpcStatus::invalid_argument(
                        "an empty message; expected a file start or data",
                    ));
                }
            }
        }
        if let Some(done) = current.take() {
            received.push(done.finish().await?);
        }
        if received.is_empty() {
            return Err(RpcStatus::invalid_argument("no files were sent"));
        }
        // Every file arrived whole: only now do they enter the drop directory.
        tracing::info!(files = received.len(), peer = %who, "files received over the control plane");
        let staged: Vec<PathBuf> = received.iter().map(|(_, p)| p.clone()).collect();
        let (files, round) = self
            .ask(|reply| Command::Ingest { staged, reply })
            .await?
            .map_err(RpcStatus::internal)?;
        let placed: Vec<(String, PathBuf)> = received
            .into_iter()
            .map(|(name, _)| name)
            .zip(files.iter().cloned())
            .collect();
        let sent_as = |p: &Path| {
            placed
                .iter()
                .find(|(_, to)| to == p)
                .map(|(name, _)| name.clone())
        };
        let imagesets = round
            .outcomes
            .iter()
            .filter(|(_, _, fs)| fs.iter().any(|f| files.contains(f)))
            .map(|((uuid, sequence), outcome, _)| {
                let (outcome, message) = match outcome {
                    Outcome::Accepted => (v1::Outcome::Accepted, String::new()),
                    Outcome::Duplicate => (v1::Outcome::Duplicate, String::new()),
                    Outcome::Waiting(why) => (v1::Outcome::Waiting, why.clone()),
                    Outcome::Refused(why) => (v1::Outcome::Refused, why.clone()),
                    Outcome::Damaged { reason, .. } => (v1::Outcome::Damaged, reason.clone()),
                };
                v1::IngestOutcome {
                    uuid: uuid.to_string(),
                    sequence: *sequence,
                    outcome: outcome.into(),
                    message,
                }
            })
            .collect();
        let quarantined = round
            .quarantined
            .iter()
            .filter_map(|(p, reason)| {
                sent_as(p).map(|file| v1::Quarantined {
                    file,
                    reason: reason.clone(),
                })
            })
            .collect();
        Ok(Response::new(v1::IngestResponse {
            imagesets,
            quarantined,
            published: published(&round),
        }))
    }

    async fn publish(
        &self,
        request: Request<v1::PublishRequest>,
    ) -> Result<Response<v1::PublishResponse>, RpcStatus> {
        let request = request.into_inner();
        let name = request.cluster;
        self.known(&self.status.clusters(), &name)?;
        let cluster = (!name.is_empty()).then_some(name.clone());
        if request.dry_run {
            let plans = self.ask(|reply| Command::Plan { cluster, reply }).await?;
            return Ok(Response::new(v1::PublishResponse {
                clusters: Vec::new(),
                published: Vec::new(),
                plans: plans.into_iter().map(plan).collect(),
            }));
        }
        let round = self
            .ask(|reply| Command::Publish { cluster, reply })
            .await?;
        let clusters = self
            .status
            .clusters()
            .iter()
            .filter(|v| name.is_empty() || v.name == name)
            .map(|v| self.cluster(v))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(v1::PublishResponse {
            clusters,
            published: published(&round),
            plans: Vec::new(),
        }))
    }

    async fn reconcile(
        &self,
        request: Request<v1::ReconcileRequest>,
    ) -> Result<Response<v1::ReconcileResponse>, RpcStatus> {
        let name = request.into_inner().cluster;
        let views = self.status.clusters();
        self.known(&views, &name)?;
        if !views
            .iter()
            .any(|v| v.api.is_some() && (name.is_empty() || v.name == name))
        {
            return Err(RpcStatus::failed_precondition(
                "no cluster to reconcile has API access; give it kubeconfig or api in the agent's configuration",
            ));
        }
        let cluster = (!name.is_empty()).then_some(name.clone());
        self.ask(|reply| Command::Reconcile { cluster, reply })
            .await?;
        let clusters = self
            .status
            .clusters()
            .iter()
            .filter(|v| v.api.is_some() && (name.is_empty() || v.name == name))
            .map(|v| self.cluster(v))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(v1::ReconcileResponse { clusters }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<v1::WatchEventsRequest>,
    ) -> Result<Response<EventStream>, RpcStatus> {
        let mut events = self.status.subscribe();
        tracing::info!(peer = %peer(&request), "events watcher subscribed");
        let mut stop = self.stop.clone();
        let stream = async_stream(
            move |tx: mpsc::Sender<Result<v1::Event, RpcStatus>>| async move {
                loop {
                    let next = tokio::select! {
                        _ = stop.wait_for(|s| *s) => break,
                        e = events.recv() => e,
                    };
                    let item = match next {
                        Ok(e) => event(e),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                            v1::Event {
                                time: chrono::Utc::now()
                                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                                kind: v1::EventKind::Lagged.into(),
                                missed,
                                message: format!(
                                    "this watcher fell behind and missed {missed} events"
                                ),
                                ..Default::default()
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    };
                    if tx.send(Ok(item)).await.is_err() {
                        break;
                    }
                }
            },
        );
        Ok(Response::new(stream))
    }
}

/// A stream fed by a task: the task ends when the client goes away (its sends
/// fail) or the agent stops.
fn async_stream<F, Fut>(f: F) -> EventStream
where
    F: FnOnce(mpsc::Sender<Result<v1::Event, RpcStatus>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_file_names_enter_the_drop_directory() {
        for bad in [
            "",
            "..",
            "../etc/passwd",
            "a/b",
            "/abs",
            ".hidden",
            "x.part",
            "x.tmp",
            "nul\0byte",
            "back\\slash",
            &"n".repeat(256),
        ] {
            let err = check_name(bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
        check_name("site-a-000003-0001.airlock").unwrap();
    }
}
