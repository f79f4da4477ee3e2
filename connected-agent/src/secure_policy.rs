//! `--secure-policy`: a containers-policy.json(5) decides which source images
//! may be mirrored, as oc-mirror's `--secure-policy` (with `--policy FILE`) has
//! containers/image decide.
//!
//! For each image the requirements of the most specific `transports.docker`
//! scope apply (`HOST/NS/REPO:TAG` or `@DIGEST`, then the repository, each
//! parent namespace, the host, `*.DOMAIN` wildcards from the closest), else the
//! transport's `""` scope, else `default`; every requirement of the list must
//! hold. `insecureAcceptAnything` holds; `reject` does not; `sigstoreSigned`
//! with public keys (`keyPath`, `keyPaths`, `keyData`, `keyDatas`) holds when a
//! cosign signature (`sha256-<hex>.sig`) of the image's manifest verifies with
//! one of them and its signed identity satisfies `signedIdentity` (default
//! `matchRepoDigestOrExact`). `signedBy` with OpenPGP keys holds when an atomic
//! container signature in the image's lookaside store (named by registries.d)
//! verifies, through the release-signature code, and its identity satisfies
//! `signedIdentity`. What this build cannot verify — Fulcio or PKI
//! certificates, Rekor, keys other than ECDSA P-256 — is a requirement that
//! does not hold, named as such, never one that is skipped: a site that asked
//! for verification gets it or a refusal.
//!
//! Every image is judged before anything is written, and all refusals are
//! reported at once, as with `--require-signatures` (see `cosign.rs` for what a
//! signature check verifies).

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use airlock_config::ImageSpec;
use airlock_oci::digest::Digest;
use airlock_oci::reference::ImageRef;
use airlock_registry::Pool;
use base64::Engine;
use serde::Deserialize;
use serde::de::{Deserializer, Error as _, MapAccess, Visitor};

use crate::collect::Resolved;
use crate::cosign::{self, Keys};
use crate::error::Error;
use crate::release_signature::Keyring;

/// How a signature's identity must relate to the image (`signedIdentity`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Identity {
    MatchExact,
    MatchRepoDigestOrExact,
    MatchRepository,
    ExactReference(ImageRef),
    ExactRepository(String),
    Remap {
        prefix: String,
        signed_prefix: String,
    },
}

/// One requirement of a scope.
#[derive(Debug)]
enum Requirement {
    Accept,
    Reject,
    Sigstore {
        keys: Keys,
        identity: Identity,
    },
    /// `signedBy`: atomic container signatures from a lookaside store.
    Gpg {
        keyring: Keyring,
        identity: Identity,
    },
    /// A requirement this build cannot verify, and why.
    Unsupported(String),
}

/// A policy read from a file.
#[derive(Debug)]
pub struct SecurePolicy {
    file: PathBuf,
    /// Where `signedBy` signatures are read from (registries.d).
    lookaside: Lookaside,
    default: Vec<Requirement>,
    /// `transports.docker`, by scope.
    docker: BTreeMap<String, Vec<Requirement>>,
}

/// The policy file `--secure-policy` reads without `--policy`, as
/// containers/image chooses it.
pub fn default_path(home: Option<&Path>) -> PathBuf {
    home.map(|h| h.join(".config/containers/policy.json"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("/etc/containers/policy.json"))
}

/// policy.json as containers/image reads it: an unknown field, a repeated key
/// or a missing `default` is an error, so that a typo never weakens a policy.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    default: Vec<Req>,
    #[serde(default)]
    transports: Unique<Unique<Vec<Req>>>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
enum Req {
    InsecureAcceptAnything,
    Reject,
    #[serde(rename_all = "camelCase")]
    SignedBy {
        key_type: String,
        #[serde(default)]
        key_path: Option<String>,
        #[serde(default)]
        key_paths: Option<Vec<String>>,
        #[serde(default)]
        key_data: Option<String>,
        #[serde(default)]
        signed_identity: Option<IdentityDef>,
    },
    #[serde(rename_all = "camelCase")]
    SigstoreSigned {
        #[serde(default)]
        key_path: Option<String>,
        #[serde(default)]
        key_paths: Option<Vec<String>>,
        #[serde(default)]
        key_data: Option<String>,
        #[serde(default)]
        key_datas: Option<Vec<String>>,
        #[serde(default)]
        fulcio: Option<serde_json::Value>,
        #[serde(default)]
        pki: Option<serde_json::Value>,
        #[serde(default)]
        rekor_public_key_path: Option<String>,
        #[serde(default)]
        rekor_public_key_paths: Option<Vec<String>>,
        #[serde(default)]
        rekor_public_key_data: Option<String>,
        #[serde(default)]
        rekor_public_key_datas: Option<Vec<String>>,
        #[serde(default)]
        signed_identity: Option<IdentityDef>,
    },
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
enum IdentityDef {
    MatchExact,
    MatchRepoDigestOrExact,
    MatchRepository,
    #[serde(rename_all = "camelCase")]
    ExactReference {
        docker_reference: String,
    },
    #[serde(rename_all = "camelCase")]
    ExactRepository {
        docker_repository: String,
    },
    #[serde(rename_all = "camelCase")]
    RemapIdentity {
        prefix: String,
        signed_prefix: String,
    },
}

/// A JSON object whose keys may appear once (serde's maps keep the last).
struct Unique<T>(BTreeMap<String, T>);

impl<T> Default for Unique<T> {
    fn default() -> Self {
        Unique(BTreeMap::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Unique<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Keys<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Keys<T> {
            type Value = Unique<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Unique<T>, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, v)) = m.next_entry::<String, T>()? {
                    if out.contains_key(&k) {
                        return Err(A::Error::custom(format!("{k:?} appears twice")));
                    }
                    out.insert(k, v);
                }
                Ok(Unique(out))
            }
        }
        d.deserialize_map(Keys(PhantomData))
    }
}

/// Where atomic container signatures are kept, by scope (containers-registries.d(5):
/// `docker.<scope>.lookaside`, and `default-docker.lookaside`; `sigstore` is the
/// older name of the same key).
#[derive(Debug, Default)]
struct Lookaside {
    default: Option<String>,
    scopes: BTreeMap<String, String>,
    /// Made on the first read, once for every image.
    client: std::sync::OnceLock<reqwest::Client>,
}

#[derive(Deserialize)]
struct RegistriesD {
    #[serde(rename = "default-docker")]
    default_docker: Option<LookasideEntry>,
    #[serde(default)]
    docker: BTreeMap<String, LookasideEntry>,
}

#[derive(Deserialize)]
struct LookasideEntry {
    lookaside: Option<String>,
    sigstore: Option<String>,
}

/// Signatures read per image at most: the store numbers them from 1.
const MAX_SIGNATURES: usize = 16;
/// A signature larger than this is refused (real ones are under 1 KiB).
const MAX_SIGNATURE_BYTES: usize = 64 << 10;

impl Lookaside {
    /// The `*.yaml` files of `dir` (`--registries.d`), else of
    /// `~/.config/containers/registries.d` if it exists, else of
    /// `/etc/containers/registries.d`, as containers/image chooses them. A scope
    /// set in two files is an error, as there.
    fn load(dir: Option<&Path>) -> Result<Self, Error> {
        let dir = match dir {
            Some(d) => d.to_path_buf(),
            None => std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".config/containers/registries.d"))
                .filter(|d| d.is_dir())
                .unwrap_or_else(|| PathBuf::from("/etc/containers/registries.d")),
        };
        let mut out = Lookaside::default();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(out);
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        for f in files {
            let fail = |e: String| Error::Usage(format!("--registries.d: {}: {e}", f.display()));
            let text = std::fs::read_to_string(&f).map_err(|e| fail(e.to_string()))?;
            let d: RegistriesD = serde_yaml_ng::from_str(&text).map_err(|e| fail(e.to_string()))?;
            let url = |e: LookasideEntry| e.lookaside.or(e.sigstore);
            if let Some(u) = d.default_docker.and_then(url)
                && out.default.replace(u).is_some()
            {
                return Err(fail("default-docker is set in another file too".into()));
            }
            for (scope, e) in d.docker {
                if let Some(u) = url(e)
                    && out.scopes.insert(scope.clone(), u).is_some()
                {
                    return Err(fail(format!("docker.{scope} is set in another file too")));
                }
            }
        }
        Ok(out)
    }

    /// The store for `image`: its most specific scope's, else the default.
    fn base(&self, image: &ImageRef) -> Option<&str> {
        scopes(image)
            .iter()
            .find_map(|c| self.scopes.get(c))
            .or(self.default.as_ref())
            .map(|u| u.trim_end_matches('/'))
    }

    /// The signatures of `digest` for `image` in the store: signature-1, -2, ...
    /// until one is missing.
    async fn signatures(&self, image: &ImageRef, digest: &Digest) -> Result<Vec<Vec<u8>>, String> {
        let Some(base) = self.base(image) else {
            return Err(format!(
                "signedBy needs the signatures' lookaside store, and no registries.d file names one for {} (docker.<scope>.lookaside, or default-docker.lookaside)",
                image.name()
            ));
        };
        let client = match self.client.get() {
            Some(c) => c,
            None => {
                let c = airlock_registry::http_client(base, std::time::Duration::from_secs(60))
                    .map_err(|e| e.to_string())?;
                self.client.get_or_init(|| c)
            }
        };
        let mut out = Vec::new();
        for n in 1..=MAX_SIGNATURES {
            let url = format!(
                "{base}/{}@sha256={}/signature-{n}",
                image.repository(),
                digest.hex()
            );
            let bytes = if let Some(path) = url.strip_prefix("file://") {
                match std::fs::read(path) {
                    Ok(b) => b,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) => return Err(format!("{url}: {e}")),
                }
            } else {
                let (status, body) =
                    crate::http::send("signature read", &url, MAX_SIGNATURE_BYTES, || {
                        client.get(&url)
                    })
                    .await
                    .map_err(|e| format!("{url}: {e}"))?;
                if status == reqwest::StatusCode::NOT_FOUND {
                    break;
                }
                if !status.is_success() {
                    return Err(format!("{url}: HTTP {status}"));
                }
                body
            };
            if bytes.len() > MAX_SIGNATURE_BYTES {
                return Err(format!("{url}: more than {MAX_SIGNATURE_BYTES} bytes"));
            }
            out.push(bytes);
        }
        Ok(out)
    }

    /// The key of an atomic container signature of `digest` in the store that
    /// one of `keyring` verifies and whose identity `identity` accepts for
    /// `image`; else why each signature read does not count (empty: the store
    /// has none).
    async fn signed_by(
        &self,
        keyring: &Keyring,
        identity: &Identity,
        image: &ImageSpec,
        digest: &Digest,
    ) -> Result<String, Vec<String>> {
        let signatures = self
            .signatures(&image.source, digest)
            .await
            .map_err(|e| vec![e])?;
        let mut problems = Vec::new();
        for sig in &signatures {
            match crate::release_signature::verify(keyring, sig, digest, &image.name) {
                Ok(v) => match satisfies(identity, &image.source, &v.docker_reference) {
                    Ok(()) => return Ok(v.key),
                    Err(e) => problems.push(format!("signed by {}, but {e}", v.key)),
                },
                Err(crate::release_signature::SignatureError::Invalid { message, .. }) => {
                    problems.push(message)
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        Err(problems)
    }
}

/// Whether a reference has neither tag nor digest.
fn name_only(r: &ImageRef) -> bool {
    r.tag().is_none() && r.digest().is_none()
}

/// A `remapIdentity` prefix: a host\[:port\], a namespace or a repository,
/// without tag or digest.
fn remap_prefix(p: &str, field: &str, at: &str) -> Result<String, String> {
    let last = p.rsplit('/').next().unwrap_or_default();
    if p.is_empty()
        || p.contains(['@', ' '])
        || p.ends_with('/')
        || (p.contains('/') && last.contains(':'))
    {
        return Err(format!(
            "{at}.signedIdentity.{field} {p:?}: expected HOST[:PORT][/NAMESPACE...], without tag or digest"
        ));
    }
    Ok(p.to_string())
}

fn identity(def: Option<IdentityDef>, at: &str) -> Result<Identity, String> {
    let parse = |field: &str, r: &str| -> Result<ImageRef, String> {
        r.parse()
            .map_err(|e| format!("{at}.signedIdentity.{field} {r:?}: {e}"))
    };
    Ok(match def {
        None | Some(IdentityDef::MatchRepoDigestOrExact) => Identity::MatchRepoDigestOrExact,
        Some(IdentityDef::MatchExact) => Identity::MatchExact,
        Some(IdentityDef::MatchRepository) => Identity::MatchRepository,
        Some(IdentityDef::ExactReference { docker_reference }) => {
            let r = parse("dockerReference", &docker_reference)?;
            if name_only(&r) {
                return Err(format!(
                    "{at}.signedIdentity.dockerReference {docker_reference:?}: names no tag or digest"
                ));
            }
            Identity::ExactReference(r)
        }
        Some(IdentityDef::ExactRepository { docker_repository }) => {
            let r = parse("dockerRepository", &docker_repository)?;
            if !name_only(&r) {
                return Err(format!(
                    "{at}.signedIdentity.dockerRepository {docker_repository:?}: a repository, without tag or digest"
                ));
            }
            Identity::ExactRepository(r.name())
        }
        Some(IdentityDef::RemapIdentity {
            prefix,
            signed_prefix,
        }) => Identity::Remap {
            prefix: remap_prefix(&prefix, "prefix", at)?,
            signed_prefix: remap_prefix(&signed_prefix, "signedPrefix", at)?,
        },
    })
}

fn requirement(r: Req, at: &str) -> Result<Requirement, String> {
    let unsupported = |what: &str| Ok(Requirement::Unsupported(what.to_string()));
    match r {
        Req::InsecureAcceptAnything => Ok(Requirement::Accept),
        Req::Reject => Ok(Requirement::Reject),
        Req::SignedBy {
            key_type,
            key_path,
            key_paths,
            key_data,
            signed_identity,
        } => {
            let identity = identity(signed_identity, at)?;
            if key_type != "GPGKeys" {
                return Err(format!(
                    "{at}.keyType {key_type:?}: GPGKeys is the one key type signedBy has"
                ));
            }
            let given = [key_path.is_some(), key_paths.is_some(), key_data.is_some()];
            if given.iter().filter(|g| **g).count() != 1 {
                return Err(format!(
                    "{at}: signedBy takes exactly one of keyPath, keyPaths, keyData"
                ));
            }
            let mut keyring: Option<Keyring> = None;
            let mut add = |k: Keyring| {
                keyring = Some(match keyring.take() {
                    Some(all) => all.merge(k),
                    None => k,
                })
            };
            for p in key_path.into_iter().chain(key_paths.into_iter().flatten()) {
                let bytes = std::fs::read(&p).map_err(|e| format!("{at}.keyPath {p}: {e}"))?;
                add(Keyring::parse(&bytes, &p).map_err(|e| format!("{at}.keyPath: {e}"))?);
            }
            if let Some(d) = key_data {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(d.trim())
                    .map_err(|e| format!("{at}.keyData: not base64: {e}"))?;
                add(Keyring::parse(&bytes, &format!("{at}.keyData"))
                    .map_err(|e| format!("{at}.keyData: {e}"))?);
            }
            Ok(Requirement::Gpg {
                keyring: keyring.expect("one key source, checked above"),
                identity,
            })
        }
        Req::SigstoreSigned {
            key_path,
            key_paths,
            key_data,
            key_datas,
            fulcio,
            pki,
            rekor_public_key_path,
            rekor_public_key_paths,
            rekor_public_key_data,
            rekor_public_key_datas,
            signed_identity,
        } => {
            let identity = identity(signed_identity, at)?;
            let given = [
                key_path.is_some(),
                key_paths.is_some(),
                key_data.is_some(),
                key_datas.is_some(),
                fulcio.is_some(),
                pki.is_some(),
            ];
            if given.iter().filter(|g| **g).count() != 1 {
                return Err(format!(
                    "{at}: sigstoreSigned takes exactly one of keyPath, keyPaths, keyData, keyDatas, fulcio, pki"
                ));
            }
            if fulcio.is_some() || pki.is_some() {
                return unsupported(
                    "sigstoreSigned with fulcio or pki (keyless or certificate signatures) is not verified by this build; only public keys are",
                );
            }
            if rekor_public_key_path.is_some()
                || rekor_public_key_paths.is_some()
                || rekor_public_key_data.is_some()
                || rekor_public_key_datas.is_some()
            {
                return unsupported(
                    "sigstoreSigned with a Rekor public key is not verified by this build (no transparency-log checks)",
                );
            }
            let mut pems = Vec::new();
            for p in key_path.into_iter().chain(key_paths.into_iter().flatten()) {
                let text =
                    std::fs::read_to_string(&p).map_err(|e| format!("{at}.keyPath {p}: {e}"))?;
                pems.push((PathBuf::from(p), text));
            }
            let datas = key_data.into_iter().chain(key_datas.into_iter().flatten());
            for (i, d) in datas.enumerate() {
                let text = base64::engine::general_purpose::STANDARD
                    .decode(d.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| format!("{at}.keyData[{i}]: not base64 of a PEM key"))?;
                pems.push((PathBuf::from(format!("{at}.keyData[{i}]")), text));
            }
            if pems.is_empty() {
                return Err(format!("{at}: sigstoreSigned names no key"));
            }
            match Keys::from_pems(pems) {
                Ok(keys) => Ok(Requirement::Sigstore { keys, identity }),
                Err(e) => Ok(Requirement::Unsupported(format!(
                    "its key cannot be used by this build: {e}"
                ))),
            }
        }
    }
}

fn requirements(list: Vec<Req>, at: &str) -> Result<Vec<Requirement>, String> {
    if list.is_empty() {
        return Err(format!("{at}: an empty list of requirements"));
    }
    list.into_iter()
        .enumerate()
        .map(|(i, r)| requirement(r, &format!("{at}[{i}]")))
        .collect()
}

impl SecurePolicy {
    /// Reads and checks `file`; every key it names is read now, so a bad one
    /// stops the run before any registry is contacted.
    pub fn load(file: &Path, registries_d: Option<&Path>) -> Result<Self, Error> {
        let lookaside = Lookaside::load(registries_d)?;
        let fail = |e: String| Error::Usage(format!("--secure-policy: {}: {e}", file.display()));
        let text = std::fs::read_to_string(file).map_err(|e| fail(e.to_string()))?;
        let parsed: File = serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
        let default = requirements(parsed.default, "default").map_err(fail)?;
        let mut docker = BTreeMap::new();
        for (transport, scopes) in parsed.transports.0 {
            // Other transports (docker-daemon, oci, ...) are never read from here.
            if transport != "docker" {
                continue;
            }
            for (scope, reqs) in scopes.0 {
                let at = format!("transports.docker[{scope:?}]");
                docker.insert(scope, requirements(reqs, &at).map_err(fail)?);
            }
        }
        Ok(SecurePolicy {
            file: file.to_path_buf(),
            lookaside,
            default,
            docker,
        })
    }

    /// The scope that decides for `image`, and its requirements.
    fn scope(&self, image: &ImageRef) -> (String, &[Requirement]) {
        for c in scopes(image) {
            if let Some(r) = self.docker.get(&c) {
                let shown = if c.is_empty() {
                    "transports.docker[\"\"]".to_string()
                } else {
                    format!("transports.docker[{c:?}]")
                };
                return (shown, r);
            }
        }
        ("default".into(), &self.default)
    }
}

/// The scopes that may decide for `image`, most specific first: the reference,
/// the repository, each parent namespace, the host, `*.DOMAIN` wildcards from
/// the closest, then `""`.
fn scopes(image: &ImageRef) -> Vec<String> {
    {
        let name = image.name();
        let mut candidates = Vec::new();
        if let Some(d) = image.digest() {
            candidates.push(format!("{name}@{d}"));
        }
        if let Some(t) = image.tag() {
            candidates.push(format!("{name}:{t}"));
        }
        let mut path = name.as_str();
        loop {
            candidates.push(path.to_string());
            match path.rsplit_once('/') {
                Some((parent, _)) => path = parent,
                None => break,
            }
        }
        let host = image.registry().split(':').next().unwrap_or_default();
        let mut domain = host;
        while let Some((_, rest)) = domain.split_once('.') {
            candidates.push(format!("*.{rest}"));
            domain = rest;
        }
        candidates.push(String::new());
        candidates
    }
}

impl SecurePolicy {
    /// Refuses unless every image satisfies its scope's requirements, given its
    /// cosign signatures among the `found` referrers. All refusals at once.
    pub async fn check(
        &self,
        pool: &Pool,
        images: &[ImageSpec],
        resolved: &[Arc<Resolved>],
        found: &[ImageSpec],
        found_resolved: &[Arc<Resolved>],
    ) -> Result<(), Error> {
        let mut refused = Vec::new();
        for (image, r) in images.iter().zip(resolved) {
            let (scope, reqs) = self.scope(&image.source);
            let mut unmet = Vec::new();
            for req in reqs {
                let (verified, none) = match req {
                    Requirement::Accept => continue,
                    Requirement::Reject => {
                        unmet.push("rejected".to_string());
                        continue;
                    }
                    Requirement::Unsupported(why) => {
                        unmet.push(why.clone());
                        continue;
                    }
                    Requirement::Gpg { keyring, identity } => (
                        self.lookaside
                            .signed_by(keyring, identity, image, &r.top)
                            .await,
                        format!(
                            "no signature in the lookaside store ({})",
                            self.lookaside.base(&image.source).unwrap_or_default()
                        ),
                    ),
                    Requirement::Sigstore { keys, identity } => {
                        let check = |signed: &str| satisfies(identity, &image.source, signed);
                        (
                            cosign::signature_of(keys, pool, &r.top, found, found_resolved, &check)
                                .await
                                .map(|key| key.display().to_string()),
                            format!("no cosign signature ({}.sig)", r.top.tag_form()),
                        )
                    }
                };
                let why = match verified {
                    Ok(key) => {
                        tracing::info!(image = %image.name, digest = %r.top, key = %key, scope = %scope, "signature verified by the policy");
                        continue;
                    }
                    Err(p) if p.is_empty() => none,
                    Err(p) => p.join("; "),
                };
                unmet.push(why);
            }
            if !unmet.is_empty() {
                refused.push(format!(
                    "{} ({}): {scope}: {}",
                    image.name,
                    r.top,
                    unmet.join("; ")
                ));
            }
        }
        if refused.is_empty() {
            return Ok(());
        }
        Err(Error::Refused {
            policy: self.file.clone(),
            images: refused,
        })
    }
}

/// Whether a signature whose identity is `signed` may stand for `image`, as
/// containers/image decides it (policy_reference_match.go).
fn satisfies(identity: &Identity, image: &ImageRef, signed: &str) -> Result<(), String> {
    let parsed: ImageRef = signed
        .parse()
        .map_err(|e| format!("its signed identity {signed:?} is not an image reference ({e})"))?;
    let exact = |a: &ImageRef, b: &ImageRef| {
        !name_only(a) && !name_only(b) && a.to_string() == b.to_string()
    };
    // The default rule: the exact reference for an image named by tag, its
    // repository for one named by digest only; a signature naming no tag or
    // digest never satisfies it.
    let repo_digest_or_exact = |image: &ImageRef| -> Result<(), String> {
        if name_only(&parsed) {
            return Err(format!(
                "its signed identity {signed:?} names no tag or digest, which matchRepoDigestOrExact (the default signedIdentity) does not accept; cosign signs the repository, so a policy for cosign signatures sets signedIdentity matchRepository"
            ));
        }
        let ok = if image.tag().is_some() {
            exact(&parsed, image)
        } else {
            image.digest().is_some() && parsed.name() == image.name()
        };
        ok.then_some(()).ok_or_else(|| {
            format!("its signed identity {signed:?} is not {image} (signedIdentity matchRepoDigestOrExact)")
        })
    };
    let verdict = |ok: bool, wanted: String| {
        ok.then_some(()).ok_or_else(|| {
            format!("its signed identity {signed:?} is not {wanted} (signedIdentity)")
        })
    };
    match identity {
        Identity::MatchRepoDigestOrExact => repo_digest_or_exact(image),
        Identity::MatchExact => verdict(exact(&parsed, image), format!("exactly {image}")),
        Identity::MatchRepository => verdict(
            parsed.name() == image.name(),
            format!("repository {}", image.name()),
        ),
        Identity::ExactReference(r) => verdict(exact(&parsed, r), format!("exactly {r}")),
        Identity::ExactRepository(r) => verdict(parsed.name() == *r, format!("repository {r}")),
        Identity::Remap {
            prefix,
            signed_prefix,
        } => {
            // The prefix is matched against the name only, whole or up to a '/'.
            let name = image.name();
            let matches = name == *prefix
                || name
                    .strip_prefix(prefix.as_str())
                    .is_some_and(|rest| rest.starts_with('/'));
            if !matches {
                return repo_digest_or_exact(image);
            }
            let text = image.to_string();
            let remapped: ImageRef = format!("{signed_prefix}{}", &text[prefix.len()..])
                .parse()
                .map_err(|e| format!("remapIdentity makes {image} an invalid reference ({e})"))?;
            repo_digest_or_exact(&remapped)
                .map_err(|e| format!("{e} (remapped from {image} by remapIdentity)"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(json: &str) -> Result<SecurePolicy, Error> {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("policy.json");
        std::fs::write(&f, json).unwrap();
        SecurePolicy::load(&f, Some(dir.path()))
    }

    fn r(s: &str) -> ImageRef {
        s.parse().unwrap()
    }

    #[test]
    fn the_most_specific_scope_decides() {
        let p = policy(
            r#"{"default":[{"type":"reject"}],
                "transports":{"docker":{
                  "":[{"type":"insecureAcceptAnything"}],
                  "*.example.com":[{"type":"reject"}],
                  "quay.io":[{"type":"insecureAcceptAnything"}],
                  "quay.io/team":[{"type":"reject"}],
                  "quay.io/team/app:1.0":[{"type":"insecureAcceptAnything"}],
                  "docker.io/library":[{"type":"reject"}]
                },
                "docker-daemon":{"":[{"type":"insecureAcceptAnything"}]}}}"#,
        )
        .unwrap();
        let scope = |s: &str| p.scope(&r(s)).0;
        assert_eq!(
            scope("quay.io/team/app:1.0"),
            r#"transports.docker["quay.io/team/app:1.0"]"#
        );
        assert_eq!(
            scope("quay.io/team/app:2.0"),
            r#"transports.docker["quay.io/team"]"#
        );
        assert_eq!(
            scope("quay.io/other/app:1"),
            r#"transports.docker["quay.io"]"#
        );
        assert_eq!(
            scope("reg.a.example.com/x/y:1"),
            r#"transports.docker["*.example.com"]"#
        );
        // Docker Hub's names, legacy host included, are fully expanded.
        for name in ["busybox:1", "index.docker.io/library/busybox:1"] {
            assert_eq!(scope(name), r#"transports.docker["docker.io/library"]"#);
        }
        assert_eq!(scope("docker.io/team/x:1"), r#"transports.docker[""]"#);
    }

    #[test]
    fn identities_are_matched_as_containers_image_matches_them() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let by_tag = r("quay.io/team/app:1.0");
        let by_digest = r(&format!("quay.io/team/app@{digest}"));
        // cosign signs the repository, without a tag: only matchRepository and
        // exactRepository take that.
        let cosign = "quay.io/team/app";
        for image in [&by_tag, &by_digest] {
            let e = satisfies(&Identity::MatchRepoDigestOrExact, image, cosign).unwrap_err();
            assert!(
                e.contains("names no tag or digest") && e.contains("matchRepository"),
                "{e}"
            );
            assert!(satisfies(&Identity::MatchRepository, image, cosign).is_ok());
            assert!(satisfies(&Identity::MatchExact, image, cosign).is_err());
        }
        assert!(
            satisfies(
                &Identity::MatchRepoDigestOrExact,
                &by_digest,
                "quay.io/team/app:9"
            )
            .is_ok()
        );
        assert!(
            satisfies(
                &Identity::MatchRepoDigestOrExact,
                &by_tag,
                "quay.io/team/app:1.0"
            )
            .is_ok()
        );
        assert!(
            satisfies(
                &Identity::MatchRepoDigestOrExact,
                &by_tag,
                "quay.io/team/app:2.0"
            )
            .is_err()
        );
        assert!(satisfies(&Identity::MatchRepository, &by_tag, "quay.io/team/other").is_err());
        assert!(satisfies(&Identity::MatchExact, &by_tag, "quay.io/team/app:1.0").is_ok());
        assert!(
            satisfies(
                &Identity::ExactRepository("quay.io/upstream/app".into()),
                &by_tag,
                "quay.io/upstream/app"
            )
            .is_ok()
        );
        let remap = Identity::Remap {
            prefix: "mirror.corp/quay".into(),
            signed_prefix: "quay.io".into(),
        };
        let mirrored = r(&format!("mirror.corp/quay/team/app@{digest}"));
        assert!(satisfies(&remap, &mirrored, "quay.io/team/app:1.0").is_ok());
        // The prefix is matched on the name, whole or up to a '/'.
        let host = Identity::Remap {
            prefix: "mirror.corp".into(),
            signed_prefix: "quay.io".into(),
        };
        let other_port = r(&format!("mirror.corp:5000/team/app@{digest}"));
        assert!(satisfies(&host, &other_port, "quay.io/team/app:1.0").is_err());
        assert!(satisfies(&Identity::MatchRepository, &by_tag, "not a reference!").is_err());
    }

    #[test]
    fn what_cannot_be_verified_is_a_requirement_that_fails() {
        let p = policy(
            r#"{"default":[{"type":"reject"}],
                "transports":{"docker":{
                  "quay.io":[{"type":"sigstoreSigned","fulcio":{"caPath":"/ca.pem","oidcIssuer":"https://o","subjectEmail":"a@b"},"rekorPublicKeyPath":"/rekor.pub"}],
                  "ghcr.io":[{"type":"sigstoreSigned","keyData":"LS0tLS1CRUdJTiBQVUJMSUMgS0VZLS0tLS0KQUFBQQotLS0tLUVORCBQVUJMSUMgS0VZLS0tLS0K"}]
                }}}"#,
        )
        .unwrap();
        let why = |reqs: &[Requirement]| match &reqs[0] {
            Requirement::Unsupported(w) => w.clone(),
            other => panic!("{other:?}"),
        };
        assert!(why(&p.docker["quay.io"]).contains("fulcio"));
        assert!(why(&p.docker["ghcr.io"]).contains("not an ECDSA P-256 public key"));
    }

    #[test]
    fn a_policy_with_a_typo_or_a_repeated_key_is_refused() {
        for (json, wants) in [
            (r#"{"transports":{}}"#, "missing field `default`"),
            (r#"{"default":[]}"#, "default: an empty list"),
            (
                r#"{"default":[{"type":"reject"}],"transport":{}}"#,
                "unknown field `transport`",
            ),
            (
                r#"{"default":[{"type":"trustEveryone"}]}"#,
                "unknown variant `trustEveryone`",
            ),
            (
                r#"{"default":[{"type":"sigstoreSigned","keyPath":"/k","rekorPublicKeyPat":"/r"}]}"#,
                "unknown field `rekorPublicKeyPat`",
            ),
            (
                r#"{"default":[{"type":"reject"}],"transports":{"docker":{"quay.io":[{"type":"reject"}],"quay.io":[{"type":"insecureAcceptAnything"}]}}}"#,
                "\"quay.io\" appears twice",
            ),
            (
                r#"{"default":[{"type":"sigstoreSigned"}]}"#,
                "exactly one of keyPath",
            ),
            (
                r#"{"default":[{"type":"sigstoreSigned","keyPath":"/a","keyData":"QQ=="}]}"#,
                "exactly one of keyPath",
            ),
            (
                r#"{"default":[{"type":"sigstoreSigned","keyPath":"/nonexistent/cosign.pub"}]}"#,
                "default[0].keyPath /nonexistent/cosign.pub",
            ),
            (
                r#"{"default":[{"type":"sigstoreSigned","keyData":"QQ==","signedIdentity":{"type":"matchAnything"}}]}"#,
                "unknown variant `matchAnything`",
            ),
            (
                r#"{"default":[{"type":"sigstoreSigned","keyData":"QQ==","signedIdentity":{"type":"exactReference","dockerReference":"quay.io/a/b"}}]}"#,
                "names no tag or digest",
            ),
            (
                r#"{"default":[{"type":"sigstoreSigned","keyData":"QQ==","signedIdentity":{"type":"remapIdentity","prefix":"quay.io/a:1","signedPrefix":"q.io"}}]}"#,
                "signedIdentity.prefix",
            ),
            ("{not json", "policy.json"),
            (
                r#"{"default":[{"type":"signedBy","keyType":"X509Certificates","keyPath":"/k"}]}"#,
                "GPGKeys is the one key type",
            ),
            (
                r#"{"default":[{"type":"signedBy","keyType":"GPGKeys"}]}"#,
                "exactly one of keyPath, keyPaths, keyData",
            ),
            (
                r#"{"default":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"/nonexistent/key.gpg"}]}"#,
                "default[0].keyPath /nonexistent/key.gpg",
            ),
        ] {
            let e = policy(json).unwrap_err().to_string();
            assert!(e.contains(wants), "{json}: {e}");
        }
    }
}
