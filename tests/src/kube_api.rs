//! A Kubernetes API server double for the kinds the disconnected agent applies to
//! OpenShift clusters and reads back — the project's one sanctioned test double,
//! since no real API server can be installed here. Tests point the real `kube`
//! client at it, and what it does is what the apiserver does for these kinds. What
//! it leaves out is listed in `docs/testing.md`; watch, the one verb a client could
//! mistake for working, is refused rather than faked.
//!
//! It serves HTTPS only, with a certificate from a [`TestCa`], and requires one
//! bearer token on every request, as a cluster would. The HTTP side is hyper 1 with
//! tokio-rustls on a current-thread runtime in a thread of its own: tiny_http's TLS
//! (`ssl-rustls`) is built on rustls 0.20 and ring 0.16, a second and unmaintained
//! TLS stack beside the tree's rustls 0.23, while hyper, hyper-util and tokio-rustls
//! are the very crates the `kube` client already brings.
//!
//! Writes follow the server's rules: a global `resourceVersion` that every write
//! bumps (and a no-op write does not), optimistic concurrency, `uid`,
//! `creationTimestamp`, `generation` bumped by changes outside metadata and
//! status, the status subresource's split, and field ownership in
//! `metadata.managedFields` (`FieldsV1`) with server-side apply's merge,
//! conflicts, `force` and pruning. Lists in these kinds are atomic, as a structural
//! schema makes lists without `x-kubernetes-list-type`: applying a list owns it whole.

mod fields;
mod store;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{Value, json};
use tokio_rustls::rustls;

use crate::tls::TestCa;
use store::{ApiError, Op, Selector, Store, Target};

/// A served resource: where it lives in the API and how it behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Res {
    /// API group; empty for the core group (`/api/v1`).
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Whether `/status` is a subresource (main-resource writes then leave status
    /// alone, and status writes change nothing else).
    pub status_subresource: bool,
}

impl Res {
    pub const CLUSTER_VERSION: Res = Res::crd(
        "config.openshift.io",
        "v1",
        "clusterversions",
        "ClusterVersion",
        false,
        true,
    );
    pub const IMAGE_DIGEST_MIRROR_SET: Res = Res::crd(
        "config.openshift.io",
        "v1",
        "imagedigestmirrorsets",
        "ImageDigestMirrorSet",
        false,
        true,
    );
    pub const IMAGE_TAG_MIRROR_SET: Res = Res::crd(
        "config.openshift.io",
        "v1",
        "imagetagmirrorsets",
        "ImageTagMirrorSet",
        false,
        true,
    );
    pub const IMAGE_CONTENT_SOURCE_POLICY: Res = Res::crd(
        "operator.openshift.io",
        "v1alpha1",
        "imagecontentsourcepolicies",
        "ImageContentSourcePolicy",
        false,
        false,
    );
    pub const CATALOG_SOURCE: Res = Res::crd(
        "operators.coreos.com",
        "v1alpha1",
        "catalogsources",
        "CatalogSource",
        true,
        true,
    );
    pub const CLUSTER_CATALOG: Res = Res::crd(
        "olm.operatorframework.io",
        "v1",
        "clustercatalogs",
        "ClusterCatalog",
        false,
        true,
    );
    pub const UPDATE_SERVICE: Res = Res::crd(
        "updateservice.operator.openshift.io",
        "v1",
        "updateservices",
        "UpdateService",
        true,
        true,
    );
    pub const CONFIG_MAP: Res = Res {
        group: "",
        version: "v1",
        plural: "configmaps",
        kind: "ConfigMap",
        namespaced: true,
        status_subresource: false,
    };

    pub const CLUSTER_SERVICE_VERSION: Res = Res::crd(
        "operators.coreos.com",
        "v1alpha1",
        "clusterserviceversions",
        "ClusterServiceVersion",
        true,
        true,
    );
    pub const POD: Res = Res {
        group: "",
        version: "v1",
        plural: "pods",
        kind: "Pod",
        namespaced: true,
        status_subresource: true,
    };

    /// Every kind the double can serve.
    pub const ALL: [Res; 10] = [
        Res::CLUSTER_VERSION,
        Res::IMAGE_DIGEST_MIRROR_SET,
        Res::IMAGE_TAG_MIRROR_SET,
        Res::IMAGE_CONTENT_SOURCE_POLICY,
        Res::CATALOG_SOURCE,
        Res::CLUSTER_CATALOG,
        Res::UPDATE_SERVICE,
        Res::CONFIG_MAP,
        Res::CLUSTER_SERVICE_VERSION,
        Res::POD,
    ];

    const fn crd(
        group: &'static str,
        version: &'static str,
        plural: &'static str,
        kind: &'static str,
        namespaced: bool,
        status_subresource: bool,
    ) -> Res {
        Res {
            group,
            version,
            plural,
            kind,
            namespaced,
            status_subresource,
        }
    }

    /// `group/version`, or `v1` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The resource as error messages name it: `clusterversions.config.openshift.io`.
    pub(crate) fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Custom resources (every kind outside the core group here) differ from
    /// built-in ones: no unconditional updates, no strategic merge, a generation.
    fn is_custom(&self) -> bool {
        !self.group.is_empty()
    }

    /// The top-level fields a built-in kind keeps besides `apiVersion`, `kind` and
    /// `metadata` (and `status`, which its subresource handles): the typed decoder
    /// drops any other.
    fn core_fields(&self) -> &'static [&'static str] {
        match self.kind {
            "ConfigMap" => &["data", "binaryData", "immutable"],
            "Pod" => &["spec"],
            _ => &[],
        }
    }

    /// Every kind here, ConfigMap included, has the lowercased kind as singular.
    fn singular_name(&self) -> String {
        self.kind.to_lowercase()
    }
}

/// The field manager [`KubeApi::set_status`] writes as.
pub const STATUS_MANAGER: &str = "cluster-operator";

struct Shared {
    store: Mutex<Store>,
    token: String,
    minor: u32,
    addr: String,
}

/// A running API server on a free loopback port; stops when dropped.
pub struct KubeApi {
    shared: Arc<Shared>,
    url: String,
    ca_file: PathBuf,
    ca_pem: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KubeApi {
    /// Starts a server for an OpenShift `cluster_version` (`4.16.3`), writing its
    /// certificates to `dir`. ClusterVersion `version` is there already, as the
    /// cluster-version operator keeps it; a cluster older than 4.13 serves no
    /// ImageDigestMirrorSet or ImageTagMirrorSet (their CRDs came with 4.13).
    pub fn start(dir: &Path, cluster_version: &str) -> Result<Self> {
        let (major, minor) = parse_version(cluster_version)?;
        let served = Res::ALL
            .into_iter()
            .filter(|r| {
                (major, minor) >= (4, 13)
                    || (*r != Res::IMAGE_DIGEST_MIRROR_SET && *r != Res::IMAGE_TAG_MIRROR_SET)
            })
            .collect();

        let ca = TestCa::new("kube-apiserver test CA")?;
        let issued = ca.issue_server(dir, &["127.0.0.1", "localhost"])?;
        let ca_file = ca.write_ca(dir)?;
        let tls = server_config(&issued.cert, &issued.key)?;

        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?.to_string();
        let token = hex::encode(rand::random::<[u8; 24]>());
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(served)),
            token,
            minor,
            addr: addr.clone(),
        });
        seed_cluster_version(
            &mut shared.store.lock().expect("not poisoned"),
            major,
            minor,
            cluster_version,
        )?;

        let (stop, stopped) = tokio::sync::oneshot::channel();
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("kube-api".into())
            .spawn(move || serve(listener, tls, s, stopped))?;
        Ok(KubeApi {
            shared,
            url: format!("https://{addr}"),
            ca_file,
            ca_pem: ca.ca_pem(),
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The bearer token every request must carry.
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// The CA certificate (PEM) that signed the server's certificate.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// Writes [`Self::write_kubeconfig`] beside the server's certificates and
    /// returns its path, for the agent configuration.
    pub fn kubeconfig_file(&self) -> Result<PathBuf> {
        let path = self.ca_file.with_file_name("kubeconfig");
        self.write_kubeconfig(&path)?;
        Ok(path)
    }

    /// Writes a kubeconfig for this server: one cluster with the CA inline, one
    /// user with the token, one current context.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test-cluster", "cluster": {
                "server": self.url, "certificate-authority-data": ca}}],
            "users": [{"name": "test-admin", "user": {"token": self.shared.token}}],
            "contexts": [{"name": "test-admin@test-cluster", "context": {
                "cluster": "test-cluster", "user": "test-admin", "namespace": "default"}}],
            "current-context": "test-admin@test-cluster",
            "preferences": {},
        });
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_yaml_ng::to_string(&config)?)?;
        Ok(())
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.shared.store.lock().expect("not poisoned")
    }

    /// The stored object, as a GET would return it.
    pub fn get(&self, r: &Res, namespace: Option<&str>, name: &str) -> Option<Value> {
        self.store().get(r, namespace, name).cloned()
    }

    /// Every stored object of a kind, in all namespaces, in the server's order.
    pub fn list(&self, r: &Res) -> Vec<Value> {
        let list = self.store().list(r, None, &Selector::default());
        match list["items"].clone() {
            Value::Array(items) => items,
            _ => Vec::new(),
        }
    }

    /// A pod `namespace/name` running one container of `image`, as the kubelet
    /// reports it (no `imageID`: the image is named as the cluster pulls it).
    pub fn run_pod(&self, namespace: &str, name: &str, image: &str) -> Result<Value> {
        self.create(
            &Res::POD,
            serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"containers": [{"name": "main", "image": image}]},
            }),
        )
    }

    /// Creates an object as `kubectl create` would (field manager `kubectl-create`).
    pub fn create(&self, r: &Res, object: Value) -> Result<Value> {
        let namespace = object["metadata"]["namespace"].as_str().map(str::to_string);
        if r.namespaced && namespace.is_none() {
            bail!("a {} needs metadata.namespace", r.kind);
        }
        let target = Target {
            res: r,
            namespace: namespace.as_deref().filter(|_| r.namespaced),
            name: None,
            status: false,
            manager: "kubectl-create".into(),
            dry_run: false,
        };
        self.write(target, Op::Create(object))
    }

    /// Takes every verb on `r` away from the agent's service account, as a role
    /// without that rule would.
    pub fn forbid(&self, r: &Res) {
        self.store().forbidden.push(*r);
    }

    /// Has a validating admission webhook deny every create and patch of `r`
    /// with `message`, as a policy engine (Gatekeeper, Kyverno) does.
    pub fn deny_writes(&self, r: &Res, message: &str) {
        self.store().denied.push((*r, message.to_string()));
    }

    /// Lifts [`KubeApi::deny_writes`].
    pub fn allow_writes(&self) {
        self.store().denied.clear();
    }

    /// Deletes an object as an admin would; false if there was none.
    pub fn delete(&self, r: &Res, namespace: Option<&str>, name: &str) -> bool {
        self.store()
            .delete(r, namespace, name, &Value::Null, false)
            .is_ok()
    }

    /// An admin's `kubectl edit`: a merge patch by `manager`, an Update that takes
    /// ownership of what it changes.
    pub fn edit(
        &self,
        r: &Res,
        namespace: Option<&str>,
        name: &str,
        manager: &str,
        merge_patch: Value,
    ) -> Result<Value> {
        let target = Target {
            res: r,
            namespace,
            name: Some(name),
            status: false,
            manager: manager.into(),
            dry_run: false,
        };
        self.write(target, Op::MergePatch(merge_patch))
    }

    /// Replaces the status as the cluster's operators do: an Update of `/status`
    /// by [`STATUS_MANAGER`]. Kinds without the subresource (ICSP, ConfigMap) have
    /// no status to set.
    pub fn set_status(
        &self,
        r: &Res,
        namespace: Option<&str>,
        name: &str,
        status: Value,
    ) -> Result<Value> {
        if !r.status_subresource {
            bail!("{} has no status subresource", r.kind);
        }
        let Some(mut object) = self.get(r, namespace, name) else {
            bail!("{} {name:?} not found", r.qualified());
        };
        object["status"] = status;
        let target = Target {
            res: r,
            namespace,
            name: Some(name),
            status: true,
            manager: STATUS_MANAGER.into(),
            dry_run: false,
        };
        self.write(target, Op::Update(object))
    }

    fn write(&self, target: Target<'_>, op: Op) -> Result<Value> {
        match self.store().write(target, op) {
            Ok((_, v)) => Ok(v),
            Err(e) => bail!("{} {}: {}", e.code, e.reason, e.message),
        }
    }

    /// Every request so far, authorised or not: `VERB path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.store().requests.clone()
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn parse_version(v: &str) -> Result<(u32, u32)> {
    let mut parts = v.split(['.', '-', '+']);
    let major = parts.next().and_then(|p| p.parse().ok());
    let minor = parts.next().and_then(|p| p.parse().ok());
    match (major, minor) {
        (Some(major), Some(minor)) => Ok((major, minor)),
        _ => bail!("not an OpenShift version: {v:?}"),
    }
}

/// ClusterVersion `version` as an installed cluster has it: spec from the
/// installer, status from the cluster-version operator, both as Updates.
fn seed_cluster_version(store: &mut Store, major: u32, minor: u32, version: &str) -> Result<()> {
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let res = Res::CLUSTER_VERSION;
    let target = |status: bool, name: Option<&'static str>| Target {
        res: &Res::CLUSTER_VERSION,
        namespace: None,
        name,
        status,
        manager: "cluster-version-operator".into(),
        dry_run: false,
    };
    let spec = json!({
        "apiVersion": res.api_version(),
        "kind": res.kind,
        "metadata": {"name": "version"},
        "spec": {"channel": format!("stable-{major}.{minor}"),
                 "clusterID": uuid::Uuid::new_v4().to_string()},
    });
    let (_, mut created) = store
        .write(target(false, None), Op::Create(spec))
        .map_err(|e| anyhow::anyhow!("seeding ClusterVersion: {}", e.message))?;
    created["status"] = json!({
        "desired": {"version": version},
        "history": [{"state": "Completed", "version": version, "verified": false,
                     "startedTime": now, "completionTime": now}],
        "availableUpdates": [],
        "observedGeneration": 1,
        "conditions": [
            {"type": "Available", "status": "True", "lastTransitionTime": now,
             "message": format!("Done applying {version}")},
            {"type": "Failing", "status": "False", "lastTransitionTime": now},
            {"type": "Progressing", "status": "False", "lastTransitionTime": now,
             "message": format!("Cluster version is {version}")},
        ],
    });
    store
        .write(target(true, Some("version")), Op::Update(created))
        .map_err(|e| anyhow::anyhow!("seeding ClusterVersion status: {}", e.message))?;
    Ok(())
}

fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .context("reading the server certificate")?
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key).context("reading the server key")?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn serve(
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                accepted = listener.accept() => {
                    let Ok((tcp, _)) = accepted else { continue };
                    let (acceptor, shared) = (acceptor.clone(), shared.clone());
                    tokio::spawn(async move {
                        let Ok(stream) = acceptor.accept(tcp).await else { return };
                        let service = hyper::service::service_fn(move |req| {
                            let shared = shared.clone();
                            async move { Ok::<_, Infallible>(handle(&shared, req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        }
    });
}

/// A request as the router needs it.
struct Request {
    method: String,
    path: String,
    query: String,
    content_type: String,
    authorization: String,
    user_agent: String,
    body: Bytes,
}

impl Request {
    fn param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (crate::percent_decode(k) == name).then(|| crate::percent_decode(v))
        })
    }
}

async fn handle(
    shared: &Shared,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let request = Request {
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or_default().to_string(),
        content_type: header("content-type"),
        authorization: header("authorization"),
        user_agent: header("user-agent"),
        body,
    };
    let (code, value) = route(shared, &request);
    hyper::Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(&value).expect("JSON serialises"),
        )))
        .expect("a valid response")
}

fn route(shared: &Shared, req: &Request) -> (u16, Value) {
    let mut store = shared.store.lock().expect("not poisoned");
    let line = if req.query.is_empty() {
        format!("{} {}", req.method, req.path)
    } else {
        format!("{} {}?{}", req.method, req.path, req.query)
    };
    store.requests.push(line);
    if req.authorization != format!("Bearer {}", shared.token) {
        let e = ApiError::unauthorized();
        return (e.code, e.to_status());
    }
    match dispatch(shared, &mut store, req) {
        Ok(r) => r,
        Err(e) => (e.code, e.to_status()),
    }
}

fn dispatch(shared: &Shared, store: &mut Store, req: &Request) -> Result<(u16, Value), ApiError> {
    let segments: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
    let discovery = |v: Value| {
        if req.method == "GET" {
            Ok((200, v))
        } else {
            Err(ApiError::method_not_allowed())
        }
    };
    match segments.as_slice() {
        ["version"] => discovery(version_info(shared.minor)),
        ["api"] => discovery(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": shared.addr}],
        })),
        ["apis"] => discovery(group_list(&store.served)),
        ["api", "v1"] => discovery(resource_list(&store.served, "", "v1")?),
        ["apis", group, version] => discovery(resource_list(&store.served, group, version)?),
        ["api", "v1", rest @ ..] => resource(store, req, "", "v1", rest),
        ["apis", group, version, rest @ ..] => resource(store, req, group, version, rest),
        _ => Err(ApiError::no_route()),
    }
}

/// OpenShift 4.N runs Kubernetes 1.(N+13).
fn version_info(minor: u32) -> Value {
    let kube_minor = minor + 13;
    json!({
        "major": "1",
        "minor": kube_minor.to_string(),
        "gitVersion": format!("v1.{kube_minor}.0"),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "go1.22.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn group_list(served: &[Res]) -> Value {
    let mut groups: Vec<(&str, &str)> = served
        .iter()
        .filter(|r| r.is_custom())
        .map(|r| (r.group, r.version))
        .collect();
    groups.sort();
    groups.dedup();
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(g, v)| {
            let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(served: &[Res], group: &str, version: &str) -> Result<Value, ApiError> {
    let mut resources = Vec::new();
    for r in served
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        resources.push(json!({
            "name": r.plural,
            "singularName": r.singular_name(),
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": ["delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"],
        }));
        if r.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if resources.is_empty() {
        return Err(ApiError::no_route());
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Ok(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

fn resource(
    store: &mut Store,
    req: &Request,
    group: &str,
    version: &str,
    rest: &[&str],
) -> Result<(u16, Value), ApiError> {
    let (namespace, plural, name, sub) = match rest {
        ["namespaces", ns, plural] => (Some(*ns), *plural, None, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name), None),
        ["namespaces", ns, plural, name, sub] => (Some(*ns), *plural, Some(*name), Some(*sub)),
        [plural] => (None, *plural, None, None),
        [plural, name] => (None, *plural, Some(*name), None),
        [plural, name, sub] => (None, *plural, Some(*name), Some(*sub)),
        _ => return Err(ApiError::no_route()),
    };
    let res = *store
        .served
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
        .ok_or_else(ApiError::no_route)?;
    if namespace.is_some() != res.namespaced && (name.is_some() || namespace.is_some()) {
        return Err(ApiError::no_route());
    }
    if store.forbidden.contains(&res) {
        let verb = match (req.method.as_str(), name) {
            ("GET", None) => "list",
            ("GET", Some(_)) => "get",
            ("POST", _) => "create",
            ("DELETE", _) => "delete",
            ("PATCH", _) => "patch",
            _ => "update",
        };
        return Err(ApiError::forbidden(&res, verb, namespace));
    }
    if matches!(req.method.as_str(), "POST" | "PATCH" | "PUT")
        && let Some((_, message)) = store.denied.iter().find(|(r, _)| *r == res)
    {
        return Err(ApiError::denied(&res, name.unwrap_or_default(), message));
    }
    let status = match sub {
        None => false,
        Some("status") if res.status_subresource => true,
        Some(_) => return Err(ApiError::no_route()),
    };
    let dry_run = match req.param("dryRun").as_deref() {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "dryRun: Unsupported value: {other:?}: supported values: \"All\""
            )));
        }
    };
    let selector = || {
        Selector::parse(
            req.param("labelSelector").as_deref(),
            req.param("fieldSelector").as_deref(),
        )
    };
    let manager = req.param("fieldManager").filter(|m| !m.is_empty());
    let updater = || {
        manager.clone().unwrap_or_else(|| {
            req.user_agent
                .split('/')
                .next()
                .unwrap_or_default()
                .to_string()
        })
    };

    let Some(name) = name else {
        return match req.method.as_str() {
            "GET" => {
                if req.param("watch").is_some_and(|w| w == "true" || w == "1") {
                    return Err(ApiError::bad_request(
                        "watch is not modelled by this test double",
                    ));
                }
                Ok((200, store.list(&res, namespace, &selector()?)))
            }
            "POST" if namespace.is_some() || !res.namespaced => {
                let body = decode_body(req)?;
                let target = Target {
                    res: &res,
                    namespace,
                    name: None,
                    status: false,
                    manager: updater(),
                    dry_run,
                };
                store.write(target, Op::Create(body))
            }
            "DELETE" if namespace.is_some() || !res.namespaced => Ok((
                200,
                store.delete_collection(&res, namespace, &selector()?, dry_run),
            )),
            _ => Err(ApiError::method_not_allowed()),
        };
    };

    let target = |manager: String| Target {
        res: &res,
        namespace,
        name: Some(name),
        status,
        manager,
        dry_run,
    };
    match req.method.as_str() {
        "GET" => store
            .get(&res, namespace, name)
            .cloned()
            .map(|v| (200, v))
            .ok_or_else(|| ApiError::not_found(&res, name)),
        "PUT" => {
            let body = decode_body(req)?;
            store.write(target(updater()), Op::Update(body))
        }
        "PATCH" => {
            let media = req
                .content_type
                .split(';')
                .next()
                .unwrap_or_default()
                .trim();
            let force = req.param("force");
            if media != "application/apply-patch+yaml" && force.is_some() {
                return Err(ApiError::invalid(
                    "meta.k8s.io",
                    "PatchOptions",
                    "",
                    "force",
                    "FieldValueForbidden",
                    "Forbidden: may not be specified for non-apply patch",
                ));
            }
            let json = || {
                serde_json::from_slice::<Value>(&req.body)
                    .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))
            };
            match media {
                "application/apply-patch+yaml" => {
                    let Some(manager) = manager.clone() else {
                        return Err(ApiError::invalid(
                            "meta.k8s.io",
                            "PatchOptions",
                            "",
                            "fieldManager",
                            "FieldValueRequired",
                            "Required value: is required for apply patch",
                        ));
                    };
                    let config = serde_json::from_slice::<Value>(&req.body)
                        .or_else(|_| serde_yaml_ng::from_slice::<Value>(&req.body))
                        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
                    let force = force.is_some_and(|f| f == "true" || f == "1");
                    store.write(target(manager), Op::Apply { config, force })
                }
                "application/merge-patch+json" => {
                    store.write(target(updater()), Op::MergePatch(json()?))
                }
                "application/strategic-merge-patch+json" if !res.is_custom() => {
                    // A ConfigMap has no list with a patch strategy: a strategic
                    // merge patch of one is a merge patch.
                    store.write(target(updater()), Op::MergePatch(json()?))
                }
                "application/json-patch+json" => {
                    store.write(target(updater()), Op::JsonPatch(json()?))
                }
                _ => Err(ApiError::unsupported_media_type(format!(
                    "the body of the request was in an unknown format - accepted media types include: {}",
                    if res.is_custom() {
                        "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
                    } else {
                        "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml"
                    }
                ))),
            }
        }
        "DELETE" if !status => {
            let options = if req.body.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&req.body).map_err(|e| {
                    ApiError::bad_request(format!("error decoding DeleteOptions: {e}"))
                })?
            };
            let dry_run = dry_run
                || options["dryRun"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|v| v == "All"));
            store
                .delete(&res, namespace, name, &options, dry_run)
                .map(|v| (200, v))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// A POST or PUT body: JSON, or YAML when the client says so.
fn decode_body(req: &Request) -> Result<Value, ApiError> {
    let media = req
        .content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    match media {
        "application/json" | "" => serde_json::from_slice(&req.body).map_err(|e| {
            ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
        }),
        "application/yaml" => serde_yaml_ng::from_slice(&req.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}"))),
        _ => Err(ApiError::unsupported_media_type(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml",
        )),
    }
}

#[cfg(test)]
mod tests;
