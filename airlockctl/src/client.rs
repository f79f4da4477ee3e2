//! A connection to the agent's control plane, mutual TLS only.

use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_proto::tls::ClientFiles;
use airlock_proto::v1;
use airlock_proto::v1::control_client::ControlClient;
use tokio::io::AsyncReadExt;
use tonic::transport::{Channel, Endpoint};

use crate::error::Error;

/// How long to wait for the agent to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Bytes per `data` message of an ingest stream (gRPC's default message limit is
/// 4 MiB; smaller messages keep memory flat on both ends).
pub const INGEST_FRAME: usize = 1 << 20;

/// Why a handshake may fail, in the words of someone who has to fix it.
const TLS_HINT: &str = "if the agent refused the handshake, check that --cert is signed by the CA in the agent's grpc.tls.clientCA and that --ca is the CA of the agent's certificate";

/// A connected client.
pub struct Client {
    server: String,
    inner: ControlClient<Channel>,
}

/// Every cause of an error, outermost first.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

impl Client {
    /// Connects to `server` (`https://HOST:PORT`) with the given files.
    pub async fn connect(server: &str, files: &ClientFiles) -> Result<Self, Error> {
        if !server.starts_with("https://") {
            return Err(Error::Usage(format!(
                "--server {server}: expected https://HOST:PORT; the control plane has no plaintext mode"
            )));
        }
        let tls = files.load()?;
        let endpoint = Endpoint::from_shared(server.to_string())
            .map_err(|e| Error::Usage(format!("--server {server}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tls_config(tls)
            .map_err(|e| Error::Usage(format!("--server {server}: {}", chain(&e))))?;
        let channel = endpoint.connect().await.map_err(|e| Error::Connect {
            server: server.to_string(),
            message: format!("cannot connect: {}; {TLS_HINT}", chain(&e)),
        })?;
        Ok(Client {
            server: server.to_string(),
            inner: ControlClient::new(channel),
        })
    }

    /// A failed call: a transport failure (with TLS 1.3 a refused client
    /// certificate shows up only here, on the first request; a request still
    /// streaming when the agent closes the connection is `Cancelled`) or the
    /// agent's answer.
    fn failed(&self, status: tonic::Status) -> Error {
        use std::error::Error as _;
        if status.source().is_some()
            && matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
            )
        {
            return Error::Connect {
                server: self.server.clone(),
                message: format!("the connection failed: {}; {TLS_HINT}", chain(&status)),
            };
        }
        Error::Rpc {
            server: self.server.clone(),
            code: status.code(),
            message: status.message().to_string(),
        }
    }

    /// `GetStatus`.
    pub async fn status(&mut self) -> Result<v1::AgentStatus, Error> {
        let r = self.inner.get_status(v1::GetStatusRequest {}).await;
        r.map(|r| r.into_inner()).map_err(|s| self.failed(s))
    }

    /// `ListImagesets`.
    pub async fn imagesets(&mut self) -> Result<Vec<v1::Imageset>, Error> {
        let r = self.inner.list_imagesets(v1::ListImagesetsRequest {}).await;
        r.map(|r| r.into_inner().imagesets)
            .map_err(|s| self.failed(s))
    }

    /// `ListClusters`.
    pub async fn clusters(&mut self) -> Result<Vec<v1::Cluster>, Error> {
        let r = self.inner.list_clusters(v1::ListClustersRequest {}).await;
        r.map(|r| r.into_inner().clusters)
            .map_err(|s| self.failed(s))
    }

    /// `Publish`, to one cluster or all.
    pub async fn publish(
        &mut self,
        cluster: Option<&str>,
        dry_run: bool,
    ) -> Result<v1::PublishResponse, Error> {
        let request = v1::PublishRequest {
            cluster: cluster.unwrap_or_default().to_string(),
            dry_run,
        };
        let r = self.inner.publish(request).await;
        r.map(|r| r.into_inner()).map_err(|s| self.failed(s))
    }

    /// `Reconcile`, one cluster or all with API access.
    pub async fn reconcile(&mut self, cluster: Option<&str>) -> Result<Vec<v1::Cluster>, Error> {
        let request = v1::ReconcileRequest {
            cluster: cluster.unwrap_or_default().to_string(),
        };
        let r = self.inner.reconcile(request).await;
        r.map(|r| r.into_inner().clusters)
            .map_err(|s| self.failed(s))
    }

    /// `Ingest`: streams `files`, each read as it is sent, so memory does not grow
    /// with their size.
    pub async fn ingest(&mut self, files: &[PathBuf]) -> Result<v1::IngestResponse, Error> {
        let mut announced = Vec::new();
        for f in files {
            let name = f
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| Error::Usage(format!("{}: not a file name", f.display())))?;
            let meta = std::fs::metadata(f).map_err(|source| Error::Read {
                path: f.clone(),
                source,
            })?;
            if !meta.is_file() {
                return Err(Error::Usage(format!("{}: not a regular file", f.display())));
            }
            announced.push((f.clone(), name.to_string(), meta.len()));
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<v1::IngestRequest>(4);
        let reader = tokio::spawn(async move {
            for (path, name, size) in announced {
                send_file(&tx, &path, name, size).await?;
            }
            Ok::<(), Error>(())
        });
        let answer = self
            .inner
            .ingest(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await;
        // A read failure ends the stream early; report it rather than the agent's
        // complaint about a short file.
        match reader.await {
            Ok(Err(e)) => return Err(e),
            Ok(Ok(())) => {}
            Err(e) => return Err(Error::Usage(format!("reading the files failed: {e}"))),
        }
        answer.map(|r| r.into_inner()).map_err(|s| self.failed(s))
    }

    /// `WatchEvents`: calls `each` for every event until the agent ends the stream.
    pub async fn watch(&mut self, mut each: impl FnMut(v1::Event)) -> Result<(), Error> {
        let r = self.inner.watch_events(v1::WatchEventsRequest {}).await;
        let mut stream = r.map_err(|s| self.failed(s))?.into_inner();
        loop {
            match stream.message().await {
                Ok(Some(e)) => each(e),
                Ok(None) => return Ok(()),
                Err(s) => return Err(self.failed(s)),
            }
        }
    }
}

async fn send_file(
    tx: &tokio::sync::mpsc::Sender<v1::IngestRequest>,
    path: &Path,
    name: String,
    size: u64,
) -> Result<(), Error> {
    use v1::ingest_request::Item;
    let read_error = |source| Error::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = tokio::fs::File::open(path).await.map_err(read_error)?;
    let start = Item::Start(v1::FileStart { name, size });
    if tx
        .send(v1::IngestRequest { item: Some(start) })
        .await
        .is_err()
    {
        return Ok(());
    }
    let mut sent = 0u64;
    loop {
        let mut buf = Vec::with_capacity(INGEST_FRAME);
        let n = (&mut file)
            .take(INGEST_FRAME as u64)
            .read_to_end(&mut buf)
            .await
            .map_err(read_error)?;
        if n == 0 {
            break;
        }
        sent += n as u64;
        let data = v1::IngestRequest {
            item: Some(Item::Data(buf)),
        };
        // The agent stopped reading (it refused the stream): its answer says why.
        if tx.send(data).await.is_err() {
            return Ok(());
        }
    }
    if sent != size {
        return Err(Error::Read {
            path: path.to_path_buf(),
            source: std::io::Error::other(format!(
                "changed while being sent ({size} bytes announced, {sent} read)"
            )),
        });
    }
    Ok(())
}
