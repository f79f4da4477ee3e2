//! A cluster's Kubernetes API: applying the cluster resources Airlock writes, and
//! reading back what the cluster runs.
//!
//! Objects are applied with server-side apply under the field manager `airlock`,
//! so Airlock owns exactly the fields it sets and an administrator's other edits
//! survive. An apply that would overwrite a field someone else changed is a
//! conflict: it is reported as drift, not forced, until `reconcile` is asked for.
//!
//! Clusters older than OpenShift 4.13 have no `ImageDigestMirrorSet` or
//! `ImageTagMirrorSet`; they get an `ImageContentSourcePolicy` with the digest
//! mirrors instead, and tag mirrors cannot be expressed there at all (noted).

use std::path::{Path, PathBuf};

use airlock_registry::prune::Runs;
use airlock_registry::resources;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};

/// The field manager of everything Airlock applies.
pub const FIELD_MANAGER: &str = "airlock";

/// How to reach a cluster's API.
#[derive(Debug, Clone)]
pub enum Access {
    /// A kubeconfig file (its current context).
    Kubeconfig(PathBuf),
    /// An API URL with a bearer token file and the API server's CA.
    Direct {
        /// `https://api.cluster.example:6443`.
        url: String,
        /// A file holding the token (a service account's).
        token_file: PathBuf,
        /// PEM CA of the API server; none: the system's roots.
        ca: Option<PathBuf>,
    },
}

/// Something the API refused or a request that failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The access configuration cannot be used.
    #[error("{0}")]
    Config(String),
    /// A request failed.
    #[error("{what}: {source}")]
    Request {
        /// What was asked, with the object.
        what: String,
        /// Why.
        source: Box<kube::Error>,
    },
}

fn request(what: impl Into<String>) -> impl FnOnce(kube::Error) -> ApiError {
    let what = what.into();
    move |source| ApiError::Request {
        what,
        source: Box::new(source),
    }
}

/// What the cluster reports of its version (`ClusterVersion/version`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Versions {
    /// The last version whose update completed.
    pub current: Option<String>,
    /// The version the cluster is going to (equal to `current` when settled).
    pub desired: Option<String>,
    /// What the cluster's update service offers (`status.availableUpdates`).
    pub available: Vec<String>,
}

/// A kind Airlock applies or reads: its REST name and scope.
#[derive(Debug)]
struct Kind {
    api_version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    /// What the agent does with it, as RBAC verbs: the rules its service account
    /// needs (`deploy/cluster-role.yaml` grants them, checked by a test). A kind
    /// it may `delete` is one it applies and withdraws when no longer published.
    verbs: &'static [&'static str],
}

/// Applied with server-side apply (which creates), read back, listed for drift
/// and withdrawal, deleted once no longer published.
const APPLIES: &[&str] = &["get", "list", "create", "patch", "delete"];

const KINDS: [Kind; 10] = [
    Kind {
        api_version: "config.openshift.io/v1",
        kind: "ImageDigestMirrorSet",
        plural: "imagedigestmirrorsets",
        namespaced: false,
        verbs: APPLIES,
    },
    Kind {
        api_version: "config.openshift.io/v1",
        kind: "ImageTagMirrorSet",
        plural: "imagetagmirrorsets",
        namespaced: false,
        verbs: APPLIES,
    },
    Kind {
        api_version: "operator.openshift.io/v1alpha1",
        kind: "ImageContentSourcePolicy",
        plural: "imagecontentsourcepolicies",
        namespaced: false,
        verbs: APPLIES,
    },
    Kind {
        api_version: "operators.coreos.com/v1alpha1",
        kind: "CatalogSource",
        plural: "catalogsources",
        namespaced: true,
        verbs: APPLIES,
    },
    Kind {
        api_version: "olm.operatorframework.io/v1",
        kind: "ClusterCatalog",
        plural: "clustercatalogs",
        namespaced: false,
        verbs: APPLIES,
    },
    Kind {
        api_version: "updateservice.operator.openshift.io/v1",
        kind: "UpdateService",
        plural: "updateservices",
        namespaced: true,
        verbs: APPLIES,
    },
    Kind {
        api_version: "v1",
        kind: "ConfigMap",
        plural: "configmaps",
        namespaced: true,
        verbs: &["get", "create", "patch"],
    },
    Kind {
        api_version: "config.openshift.io/v1",
        kind: "ClusterVersion",
        plural: "clusterversions",
        namespaced: false,
        verbs: &["get"],
    },
    Kind {
        api_version: "operators.coreos.com/v1alpha1",
        kind: "ClusterServiceVersion",
        plural: "clusterserviceversions",
        namespaced: true,
        verbs: &["list"],
    },
    Kind {
        api_version: "v1",
        kind: "Pod",
        plural: "pods",
        namespaced: true,
        verbs: &["list"],
    },
];

fn kind_of(api_version: &str, kind: &str) -> Option<&'static Kind> {
    KINDS
        .iter()
        .find(|k| k.api_version == api_version && k.kind == kind)
}

/// `Kind namespace/name` (or `Kind name`), as reports name an object.
fn object_label(kind: &Kind, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{} {ns}/{name}", kind.kind),
        None => format!("{} {name}", kind.kind),
    }
}

/// An object to apply, with what identifies it.
#[derive(Debug, Clone)]
pub struct Desired {
    /// The object as Airlock writes it.
    pub object: Value,
    kind: &'static Kind,
    name: String,
    namespace: Option<String>,
}

impl Desired {
    /// `Kind namespace/name`, as reports name it.
    pub fn label(&self) -> String {
        object_label(self.kind, self.namespace.as_deref(), &self.name)
    }

    /// Whether this is a `CatalogSource`.
    pub fn is_catalog_source(&self) -> bool {
        self.kind.kind == "CatalogSource"
    }
}

/// What Airlock wants on a cluster of OpenShift minor `minor`, read from the
/// cluster-resources files written for it. Returns the objects and notes on what
/// this cluster cannot take.
pub fn desired(dir: &Path, minor: Option<u64>) -> Result<(Vec<Desired>, Vec<String>), ApiError> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|e| e == "yaml")
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(ApiError::Config(format!("{}: {e}", dir.display()))),
    };
    files.sort();
    let legacy = minor.is_some_and(|m| m < 13);
    // Written apart for clusters before 4.13; a directory written before it
    // existed has the IDMS alone, turned into ICSPs here.
    let legacy_file = dir.join(resources::LEGACY_DIR).join(resources::ICSP_FILE);
    let icsp_file = legacy_file.is_file();
    if legacy && icsp_file {
        files.push(legacy_file);
    }
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f)
            .map_err(|e| ApiError::Config(format!("{}: {e}", f.display())))?;
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let object: Value = serde::Deserialize::deserialize(doc)
                .map_err(|e| ApiError::Config(format!("{}: {e}", f.display())))?;
            if object.is_null() {
                continue;
            }
            let object = match object["kind"].as_str() {
                Some("ImageContentSourcePolicy") if !legacy => continue,
                Some("ImageDigestMirrorSet") if legacy && icsp_file => continue,
                Some("ImageDigestMirrorSet") if legacy => icsp(&object),
                Some("ImageTagMirrorSet") if legacy => {
                    notes.push(format!(
                        "{} not applied: ImageTagMirrorSet needs OpenShift 4.13; on this cluster images pulled by tag are not redirected to the mirror",
                        object["metadata"]["name"].as_str().unwrap_or_default()
                    ));
                    continue;
                }
                _ => object,
            };
            let (api_version, kind) = (
                object["apiVersion"].as_str().unwrap_or_default(),
                object["kind"].as_str().unwrap_or_default(),
            );
            let k = kind_of(api_version, kind).ok_or_else(|| {
                ApiError::Config(format!(
                    "{}: {api_version} {kind} is not a kind Airlock applies",
                    f.display()
                ))
            })?;
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let namespace = object["metadata"]["namespace"].as_str().map(String::from);
            out.push(Desired {
                object,
                kind: k,
                name,
                namespace,
            });
        }
    }
    Ok((out, notes))
}

/// The `ImageContentSourcePolicy` equivalent of a digest mirror set.
fn icsp(idms: &Value) -> Value {
    let name = idms["metadata"]["name"].as_str().unwrap_or_default();
    let name = match name.strip_prefix("idms-") {
        Some(rest) => format!("icsp-{rest}"),
        None => format!("icsp-{name}"),
    };
    json!({
        "apiVersion": "operator.openshift.io/v1alpha1",
        "kind": "ImageContentSourcePolicy",
        "metadata": {"name": name, "annotations": idms["metadata"]["annotations"]},
        "spec": {"repositoryDigestMirrors": idms["spec"]["imageDigestMirrors"]},
    })
}

/// The minor version of `4.12.7` (and of `4.13.0-rc.1`).
pub fn minor(version: &str) -> Option<u64> {
    version.split('.').nth(1)?.parse().ok()
}

/// Where `live` differs from `want`: every field Airlock sets must hold Airlock's
/// value; fields others add are theirs. Paths are `.spec.image` style.
fn differences(want: &Value, live: &Value, path: &str, out: &mut Vec<String>) {
    match (want, live) {
        (Value::Object(w), Value::Object(l)) => {
            for (k, v) in w {
                let p = format!("{path}.{k}");
                match l.get(k) {
                    Some(lv) => differences(v, lv, &p, out),
                    None => out.push(p),
                }
            }
        }
        (w, l) if w == l => {}
        _ => out.push(path.to_string()),
    }
}

/// The images of the containers and init containers of a pod spec.
fn pod_images(spec: &Value, who: &str, out: &mut Vec<Runs>) {
    for field in ["containers", "initContainers"] {
        for c in spec[field].as_array().into_iter().flatten() {
            if let Some(image) = c["image"].as_str() {
                out.push(Runs::image(image, who));
            }
        }
    }
}

/// A connection to one cluster's API.
#[derive(Clone)]
pub struct ClusterApi {
    client: kube::Client,
}

impl std::fmt::Debug for ClusterApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterApi")
    }
}

impl ClusterApi {
    /// Builds a client; contacts nothing yet.
    pub async fn connect(access: &Access) -> Result<Self, ApiError> {
        let config = match access {
            Access::Kubeconfig(path) => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .map_err(|e| ApiError::Config(format!("{}: {e}", path.display())))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| ApiError::Config(format!("{}: {e}", path.display())))?
            }
            Access::Direct {
                url,
                token_file,
                ca,
            } => {
                let uri: http::Uri = url
                    .parse()
                    .map_err(|e| ApiError::Config(format!("{url}: {e}")))?;
                let mut config = kube::Config::new(uri);
                let token = std::fs::read_to_string(token_file)
                    .map_err(|e| ApiError::Config(format!("{}: {e}", token_file.display())))?;
                config.auth_info.token = Some(token.trim().to_string().into());
                if let Some(ca) = ca {
                    let pem = std::fs::read(ca)
                        .map_err(|e| ApiError::Config(format!("{}: {e}", ca.display())))?;
                    config.root_cert = Some(
                        pem_certs(&pem)
                            .map_err(|e| ApiError::Config(format!("{}: {e}", ca.display())))?,
                    );
                }
                config
            }
        };
        let client = kube::Client::try_from(config)
            .map_err(|e| ApiError::Config(format!("cannot build a client: {e}")))?;
        Ok(ClusterApi { client })
    }

    fn api(&self, kind: &Kind, namespace: Option<&str>) -> Api<DynamicObject> {
        let (group, version) = kind
            .api_version
            .split_once('/')
            .unwrap_or(("", kind.api_version));
        let resource = ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: kind.api_version.into(),
            kind: kind.kind.into(),
            plural: kind.plural.into(),
        };
        match namespace {
            Some(ns) if kind.namespaced => Api::namespaced_with(self.client.clone(), ns, &resource),
            _ => Api::all_with(self.client.clone(), &resource),
        }
    }

    /// `ClusterVersion/version`'s status, as the cluster-version operator keeps it.
    async fn cluster_version_status(&self) -> Result<Value, ApiError> {
        let kind = kind_of("config.openshift.io/v1", "ClusterVersion").expect("listed");
        let mut cv = self
            .api(kind, None)
            .get("version")
            .await
            .map_err(request("reading ClusterVersion version"))?;
        Ok(cv.data["status"].take())
    }

    /// The cluster's versions.
    pub async fn versions(&self) -> Result<Versions, ApiError> {
        let status = &self.cluster_version_status().await?;
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|u| u["version"].as_str().map(String::from))
                .collect()
        };
        let current = status["history"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|h| h["state"] == "Completed")
            .and_then(|h| h["version"].as_str().map(String::from));
        Ok(Versions {
            current,
            desired: status["desired"]["version"].as_str().map(String::from),
            available: strings(&status["availableUpdates"]),
        })
    }

    /// The images the cluster runs or may return to, as it names them, each with
    /// what needs it: the release it is going to and the last it completed (and
    /// any partial update in between), from `ClusterVersion`; the images of
    /// installed operators, from their ClusterServiceVersions' `relatedImages` and
    /// deployments; and the images of running pods. Pods are read only where the
    /// agent may list them: a cluster that forbids it still has its releases and
    /// operators protected.
    pub async fn running(&self) -> Result<Vec<Runs>, ApiError> {
        let mut out = Vec::new();
        let status = &self.cluster_version_status().await?;
        let mut release = |entry: &Value, what: &str| {
            if let Some(image) = entry["image"].as_str() {
                let version = entry["version"].as_str().unwrap_or("?");
                out.push(Runs {
                    image: image.to_string(),
                    why: format!("release {version} ({what})"),
                    release: true,
                });
            }
        };
        release(&status["desired"], "desired");
        let history = status["history"].as_array().cloned().unwrap_or_default();
        for h in &history {
            if h["state"] != "Completed" {
                release(h, "update in progress");
            }
        }
        if let Some(h) = history.iter().find(|h| h["state"] == "Completed") {
            release(h, "last completed");
        }
        let kind =
            kind_of("operators.coreos.com/v1alpha1", "ClusterServiceVersion").expect("listed");
        let csvs = self
            .api(kind, None)
            .list(&Default::default())
            .await
            .map_err(request("listing ClusterServiceVersions"))?;
        for csv in csvs {
            let name = format!(
                "operator {} in {}",
                csv.metadata.name.as_deref().unwrap_or("?"),
                csv.metadata.namespace.as_deref().unwrap_or("?")
            );
            let spec = &csv.data["spec"];
            for r in spec["relatedImages"].as_array().into_iter().flatten() {
                if let Some(image) = r["image"].as_str() {
                    out.push(Runs::image(image, &name));
                }
            }
            for d in spec["install"]["spec"]["deployments"]
                .as_array()
                .into_iter()
                .flatten()
            {
                pod_images(&d["spec"]["template"]["spec"], &name, &mut out);
            }
        }
        // A catalog's pod is restarted from the image its CatalogSource names,
        // which may still be an older catalog than the one just published.
        let kind = kind_of("operators.coreos.com/v1alpha1", "CatalogSource").expect("listed");
        match self.api(kind, None).list(&Default::default()).await {
            Ok(sources) => {
                for cs in sources {
                    if let Some(image) = cs.data["spec"]["image"].as_str() {
                        let name = format!(
                            "CatalogSource {}/{}",
                            cs.metadata.namespace.as_deref().unwrap_or("?"),
                            cs.metadata.name.as_deref().unwrap_or("?")
                        );
                        out.push(Runs::image(image, &name));
                    }
                }
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(request("listing CatalogSources")(e)),
        }
        let kind = kind_of("v1", "Pod").expect("listed");
        match self.api(kind, None).list(&Default::default()).await {
            Ok(pods) => {
                for pod in pods {
                    let name = format!(
                        "pod {}/{}",
                        pod.metadata.namespace.as_deref().unwrap_or("?"),
                        pod.metadata.name.as_deref().unwrap_or("?")
                    );
                    pod_images(&pod.data["spec"], &name, &mut out);
                    for field in ["containerStatuses", "initContainerStatuses"] {
                        for c in pod.data["status"][field].as_array().into_iter().flatten() {
                            if let Some(id) = c["imageID"].as_str() {
                                out.push(Runs::image(id, &name));
                            }
                        }
                    }
                }
            }
            Err(kube::Error::Api(e)) if e.code == 403 => {
                tracing::info!(reason = %e.message, "pods cannot be listed; what runs is read from ClusterVersion and ClusterServiceVersions only");
            }
            Err(e) => return Err(request("listing pods")(e)),
        }
        Ok(out)
    }

    /// Applies `d`; `force` takes fields back from whoever changed them.
    pub async fn apply(&self, d: &Desired, force: bool) -> Result<Applied, ApiError> {
        let mut params = PatchParams::apply(FIELD_MANAGER);
        if force {
            params = params.force();
        }
        let result = self
            .api(d.kind, d.namespace.as_deref())
            .patch(&d.name, &params, &Patch::Apply(&d.object))
            .await;
        match result {
            Ok(_) => Ok(Applied::Done),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Applied::Conflict(format!(
                "{}: changed on the cluster ({}); `airlockctl reconcile` restores it",
                d.label(),
                e.message
            ))),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(Applied::Unserved(format!(
                "{}: not applied: this cluster does not serve {} (is its operator installed?)",
                d.label(),
                d.kind.api_version
            ))),
            Err(kube::Error::Api(e)) if [400, 403, 422].contains(&e.code) => {
                Ok(Applied::Refused(format!(
                    "{}: not applied: the cluster refused it ({} {}: {}); the other objects are applied, and this one is tried again at every check",
                    d.label(),
                    e.code,
                    e.reason,
                    e.message
                )))
            }
            Err(e) => Err(request(format!("applying {}", d.label()))(e)),
        }
    }

    /// Deletes the objects Airlock applied earlier that `desired` no longer holds
    /// (a catalog, a mirror set or an update service for content that was pruned),
    /// of the kinds Airlock applies. Only an object whose every manager is
    /// [`FIELD_MANAGER`] is deleted: one someone else also manages is left, and
    /// said. Status writers (operators reporting on the object) do not count.
    pub async fn withdraw(&self, desired: &[Desired]) -> Result<Vec<Withdrawn>, ApiError> {
        let mut out = Vec::new();
        // The release signature ConfigMaps are not withdrawn: a signature of a
        // release no longer mirrored is harmless, and ConfigMaps are everyone's.
        for kind in KINDS.iter().filter(|k| k.verbs.contains(&"delete")) {
            let api = self.api(kind, None);
            let list = match api.list(&Default::default()).await {
                Ok(list) => list,
                // A kind whose CRD the cluster lacks holds nothing of Airlock's.
                Err(kube::Error::Api(e)) if e.code == 404 => continue,
                Err(e) => return Err(request(format!("listing {}", kind.plural))(e)),
            };
            for object in list {
                let name = object.metadata.name.clone().unwrap_or_default();
                let namespace = object.metadata.namespace.clone();
                let wanted = desired.iter().any(|d| {
                    d.kind.kind == kind.kind && d.name == name && d.namespace == namespace
                });
                let managers: Vec<&str> = object
                    .metadata
                    .managed_fields
                    .iter()
                    .flatten()
                    .filter(|m| m.subresource.as_deref() != Some("status"))
                    .filter_map(|m| m.manager.as_deref())
                    .collect();
                if wanted || !managers.contains(&FIELD_MANAGER) {
                    continue;
                }
                let label = object_label(kind, namespace.as_deref(), &name);
                let mut others: Vec<&str> = managers
                    .into_iter()
                    .filter(|m| *m != FIELD_MANAGER)
                    .collect();
                others.sort_unstable();
                others.dedup();
                if !others.is_empty() {
                    out.push(Withdrawn::Left(format!(
                        "{label} is no longer published, but is also managed by {}; left on the cluster",
                        others.join(", ")
                    )));
                    continue;
                }
                match self
                    .api(kind, namespace.as_deref())
                    .delete(&name, &Default::default())
                    .await
                {
                    Ok(_) => out.push(Withdrawn::Deleted(label)),
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(request(format!("deleting {label}"))(e)),
                }
            }
        }
        Ok(out)
    }

    /// The live object of `d`, if it exists.
    pub async fn live(&self, d: &Desired) -> Result<Option<Value>, ApiError> {
        let object = self
            .api(d.kind, d.namespace.as_deref())
            .get_opt(&d.name)
            .await
            .map_err(request(format!("reading {}", d.label())))?;
        Ok(object.map(|o| serde_json::to_value(o).expect("objects serialise")))
    }
}

/// What became of an object Airlock applied that is no longer published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Withdrawn {
    /// Deleted from the cluster: `Kind namespace/name`.
    Deleted(String),
    /// Left, because someone else manages it too: why.
    Left(String),
}

/// What an apply did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The cluster holds Airlock's fields.
    Done,
    /// Someone else changed fields Airlock set; nothing was applied.
    Conflict(String),
    /// The cluster does not serve the kind.
    Unserved(String),
    /// The API refused this object (invalid, denied by an admission webhook,
    /// or not allowed to the agent): the others are still applied.
    Refused(String),
}

impl Desired {
    /// How `live` differs from this object: `None` when it holds every field
    /// Airlock sets.
    pub fn drift(&self, live: Option<&Value>) -> Option<String> {
        let Some(live) = live else {
            return Some(format!("{}: deleted", self.label()));
        };
        let mut diffs = Vec::new();
        let mut want = self.object.clone();
        // Identity fields are the URL's; what matters is what Airlock sets.
        for k in ["apiVersion", "kind"] {
            if let Some(m) = want.as_object_mut() {
                m.remove(k);
            }
        }
        differences(&want, live, "", &mut diffs);
        (!diffs.is_empty()).then(|| format!("{}: {} changed", self.label(), diffs.join(", ")))
    }

    /// For a `CatalogSource`, what its live object says beyond drift: a note when
    /// OLM reports its pod does not serve (anything but `READY` means the cluster
    /// cannot install from it), and a line when it runs another image than the
    /// latest published (a catalog pinned by someone, or not yet rolled).
    pub fn catalog_state(&self, live: Option<&Value>) -> CatalogState {
        let mut out = CatalogState::default();
        if !self.is_catalog_source() {
            return out;
        }
        let state = live.and_then(|l| l["status"]["connectionState"]["lastObservedState"].as_str());
        if let Some(state) = state.filter(|s| *s != "READY") {
            out.note = Some(format!("{}: catalog connection {state}", self.label()));
        }
        let want = &self.object["spec"]["image"];
        let runs = live.map(|l| &l["spec"]["image"]);
        if runs.is_some_and(|r| r != want) {
            out.behind = Some(format!(
                "{} runs {}, the latest published is {}",
                self.label(),
                runs.and_then(|r| r.as_str()).unwrap_or("nothing"),
                want.as_str().unwrap_or_default()
            ));
        }
        out
    }
}

/// See [`Desired::catalog_state`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CatalogState {
    /// The catalog's pod does not serve.
    pub note: Option<String>,
    /// The catalog runs another image than the latest published.
    pub behind: Option<String>,
}

fn pem_certs(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(pem)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err("holds no certificate".into());
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example role grants every verb the agent uses on every kind, so that a
    /// site that installs it never meets a 403 from Airlock's own requests.
    #[test]
    fn the_deployed_cluster_role_grants_what_the_agent_does() {
        let text = include_str!("../../deploy/cluster-role.yaml");
        let role = serde_yaml_ng::Deserializer::from_str(text)
            .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
            .find(|d| d["kind"] == "ClusterRole")
            .expect("a ClusterRole");
        let rules = role["rules"].as_array().unwrap();
        for kind in &KINDS {
            let group = kind.api_version.rsplit_once('/').map_or("", |(g, _)| g);
            for verb in kind.verbs {
                let granted = rules.iter().any(|r| {
                    let has = |field: &str, want: &str| {
                        r[field]
                            .as_array()
                            .is_some_and(|v| v.iter().any(|x| x == want))
                    };
                    has("apiGroups", group) && has("resources", kind.plural) && has("verbs", verb)
                });
                assert!(granted, "{verb} {}.{group} is not granted", kind.plural);
            }
        }
    }

    #[test]
    fn a_4_12_cluster_gets_an_icsp_and_a_note_for_tag_mirrors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("idms-oc-mirror.yaml"),
            "---\napiVersion: config.openshift.io/v1\nkind: ImageDigestMirrorSet\nmetadata:\n  name: idms-release-0\n  annotations:\n    createdBy: airlock\nspec:\n  imageDigestMirrors:\n  - mirrors: [m:5000/ocp]\n    source: quay.io/ocp\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("itms-oc-mirror.yaml"),
            "---\napiVersion: config.openshift.io/v1\nkind: ImageTagMirrorSet\nmetadata:\n  name: itms-generic-0\nspec:\n  imageTagMirrors: []\n",
        )
        .unwrap();
        let (objects, notes) = desired(dir.path(), Some(12)).unwrap();
        assert_eq!(objects.len(), 1);
        assert_eq!(
            objects[0].label(),
            "ImageContentSourcePolicy icsp-release-0"
        );
        assert_eq!(
            objects[0].object["spec"]["repositoryDigestMirrors"][0]["source"],
            "quay.io/ocp"
        );
        assert!(
            notes[0].starts_with("itms-generic-0 not applied"),
            "{notes:?}"
        );
        let (objects, notes) = desired(dir.path(), Some(13)).unwrap();
        assert_eq!(objects.len(), 2);
        assert!(notes.is_empty());
    }

    /// The ICSP file written for clusters before 4.13 is what such a cluster
    /// gets (the same objects the IDMS would have become), and nothing newer
    /// takes it.
    #[test]
    fn the_icsp_file_serves_clusters_before_4_13_only() {
        let dir = tempfile::tempdir().unwrap();
        let write = || {
            let mirrored = resources::Mirrored {
                source: "quay.io/ocp/release".into(),
                mirror: "m:5000/p/ocp/release".into(),
                by_digest: true,
                by_tag: false,
                category: resources::Category::Release,
                exact: false,
            };
            let all = resources::ClusterResources {
                mirrored: vec![mirrored],
                ..Default::default()
            };
            resources::write(dir.path(), &all).unwrap();
        };
        write();
        let labels = |minor| -> Vec<String> {
            let (objects, _) = desired(dir.path(), Some(minor)).unwrap();
            objects.iter().map(Desired::label).collect()
        };
        assert_eq!(labels(12), ["ImageContentSourcePolicy icsp-release-0"]);
        assert_eq!(labels(14), ["ImageDigestMirrorSet idms-release-0"]);
        let (from_file, _) = desired(dir.path(), Some(12)).unwrap();
        std::fs::remove_file(
            dir.path()
                .join(resources::LEGACY_DIR)
                .join(resources::ICSP_FILE),
        )
        .unwrap();
        let (converted, _) = desired(dir.path(), Some(12)).unwrap();
        assert_eq!(
            converted[0].object, from_file[0].object,
            "the file and the conversion of an older directory agree"
        );
    }

    fn catalog(image: &str) -> Desired {
        Desired {
            object: serde_json::json!({
                "apiVersion": "operators.coreos.com/v1alpha1",
                "kind": "CatalogSource",
                "metadata": {"name": "cs-redhat", "namespace": "openshift-marketplace"},
                "spec": {"image": image, "sourceType": "grpc"},
            }),
            kind: kind_of("operators.coreos.com/v1alpha1", "CatalogSource").unwrap(),
            name: "cs-redhat".into(),
            namespace: Some("openshift-marketplace".into()),
        }
    }

    #[test]
    fn a_catalog_that_does_not_serve_or_runs_an_older_image_is_said() {
        let d = catalog("mirror/redhat-operator-index:v4.16");
        let live = |image: &str, state: &str| {
            serde_json::json!({
                "spec": {"image": image},
                "status": {"connectionState": {"lastObservedState": state}},
            })
        };
        let serving = live("mirror/redhat-operator-index:v4.16", "READY");
        assert_eq!(d.catalog_state(Some(&serving)), CatalogState::default());
        let failing = live("mirror/redhat-operator-index:v4.15", "TRANSIENT_FAILURE");
        let state = d.catalog_state(Some(&failing));
        assert_eq!(
            state.note.as_deref(),
            Some(
                "CatalogSource openshift-marketplace/cs-redhat: catalog connection TRANSIENT_FAILURE"
            )
        );
        assert_eq!(
            state.behind.as_deref(),
            Some(
                "CatalogSource openshift-marketplace/cs-redhat runs mirror/redhat-operator-index:v4.15, the latest published is mirror/redhat-operator-index:v4.16"
            )
        );
        assert_eq!(
            d.catalog_state(None),
            CatalogState::default(),
            "a deleted catalog is drift, said once"
        );
        let mut idms = catalog("x");
        idms.kind = kind_of("config.openshift.io/v1", "ImageDigestMirrorSet").unwrap();
        assert_eq!(idms.catalog_state(Some(&failing)), CatalogState::default());
    }

    #[test]
    fn differences_name_the_fields_airlock_sets_that_changed() {
        let want = json!({"spec": {"image": "a", "list": [1, 2]}, "metadata": {"name": "x"}});
        let live = json!({"spec": {"image": "b", "list": [1, 2], "extra": 1}, "metadata": {"name": "x", "uid": "u"}});
        let mut out = Vec::new();
        differences(&want, &live, "", &mut out);
        assert_eq!(out, vec![".spec.image"]);
        let mut out = Vec::new();
        differences(&want, &json!({"metadata": {"name": "x"}}), "", &mut out);
        assert_eq!(out, vec![".spec"]);
    }

    #[test]
    fn minor_versions() {
        assert_eq!(minor("4.12.7"), Some(12));
        assert_eq!(minor("4.13.0-rc.1"), Some(13));
        assert_eq!(minor("garbage"), None);
    }
}
