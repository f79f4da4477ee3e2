//! Where source images are really pulled from: containers-registries.conf(5).
//!
//! Sites that reach registries through a pull-through cache (Nexus, Artifactory,
//! Quay's proxy cache) or an internal copy say so in `registries.conf`, which
//! podman, skopeo and oc-mirror all read. The rules apply to *reads* of source
//! images only: the imageset, the mapping and the mirror sets keep the names
//! the configuration gives, so a cluster's IDMS still maps the real source, while
//! the bytes come from the mirror (checked against the same digests).
//!
//! For an image `HOST/REPO`, the rule with the longest matching `prefix` (at a
//! path-component boundary; `*.example.com` matches any host under the domain)
//! decides: `blocked = true` refuses it; otherwise its mirrors are tried in order
//! (not for a tag with `mirror-by-digest-only`, or as each mirror's
//! `pull-from-mirror` allows), then `location` (the prefix rewritten, or the
//! image's own name). The first that serves the request wins; the last error is
//! reported. Mirrors are not themselves looked up again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::{RegistryClient, RegistryError, RegistryOptions};

/// One place a request can be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Registry host (`mirror.example.com:5000`).
    pub host: String,
    /// Repository at that host.
    pub repository: String,
    /// Plain HTTP or unverified TLS allowed (`insecure = true`).
    pub insecure: bool,
    /// A mirror rather than the primary location.
    pub mirror: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PullFrom {
    All,
    DigestOnly,
    TagOnly,
}

#[derive(Debug, Clone)]
struct Mirror {
    location: String,
    insecure: bool,
    pull: PullFrom,
}

#[derive(Debug, Clone)]
struct Rule {
    prefix: String,
    location: String,
    insecure: bool,
    blocked: bool,
    by_digest_only: bool,
    mirrors: Vec<Mirror>,
    /// The file that set it, for errors.
    file: PathBuf,
}

impl Rule {
    /// How many characters of `name` (`HOST/REPO`) the rule's prefix covers.
    fn matches(&self, host: &str, name: &str) -> Option<usize> {
        if let Some(domain) = self.prefix.strip_prefix("*.") {
            let bare = host.split(':').next().unwrap_or(host);
            return bare
                .strip_suffix(domain)
                .is_some_and(|sub| sub.ends_with('.') && sub.len() > 1)
                .then_some(host.len());
        }
        let rest = name.strip_prefix(&self.prefix)?;
        (rest.is_empty() || rest.starts_with('/')).then_some(self.prefix.len())
    }
}

/// How long a mirror that could not be connected to is passed over.
const DOWN_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// A mirror host's client, or when and why connecting to it failed.
enum Known {
    Up(Arc<RegistryClient>),
    Down(std::time::Instant, RegistryError),
}

/// A copy of a connect failure to hand out again (the error types hold I/O
/// errors, which do not clone).
fn down(host: &str, e: &RegistryError) -> RegistryError {
    RegistryError::Request {
        operation: "connect",
        target: host.to_string(),
        kind: e.kind().unwrap_or(super::ErrorKind::Unreachable),
        message: e.to_string(),
    }
}

/// The rules of a `registries.conf` and its drop-ins, and the clients for the
/// hosts they send requests to.
pub struct Mirrors {
    rules: Vec<Rule>,
    /// How to reach a mirror (the source options, without mirrors).
    base: RegistryOptions,
    /// Clients (or connect failures) by host and `insecure`; never held across
    /// a connect, so one slow mirror does not hold up reads through the others.
    clients: std::sync::Mutex<HashMap<(String, bool), Known>>,
}

impl std::fmt::Debug for Mirrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirrors")
            .field("rules", &self.rules.len())
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct File {
    #[serde(default)]
    registry: Vec<RegistryTable>,
    /// The v1 format: `[registries.block]`, `[registries.insecure]`.
    registries: Option<V1>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RegistryTable {
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    location: String,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    mirror_by_digest_only: bool,
    #[serde(default)]
    mirror: Vec<MirrorTable>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct MirrorTable {
    location: String,
    #[serde(default)]
    insecure: bool,
    pull_from_mirror: Option<String>,
}

#[derive(Deserialize)]
struct V1 {
    block: Option<V1List>,
    insecure: Option<V1List>,
}

#[derive(Deserialize)]
struct V1List {
    #[serde(default)]
    registries: Vec<String>,
}

/// Checks a location: a registry host, optionally with a path, no scheme.
fn location(s: &str, what: &str) -> Result<String, String> {
    let s = s.trim_end_matches('/');
    if s.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if s.contains("://") {
        return Err(format!(
            "{what} {s:?} has a scheme; write HOST[:PORT][/PATH] (insecure = true for plain HTTP)"
        ));
    }
    if s.contains(['@', ' ']) || s.starts_with('/') {
        return Err(format!("{what} {s:?} is not HOST[:PORT][/PATH]"));
    }
    Ok(s.to_string())
}

/// Parses one file's rules.
fn parse(text: &str, file: &Path) -> Result<Vec<Rule>, String> {
    let parsed: File = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut rules = Vec::new();
    for (i, r) in parsed.registry.into_iter().enumerate() {
        let at = format!("registry[{i}]");
        let prefix = if r.prefix.is_empty() {
            location(&r.location, &format!("{at}.location"))?
        } else if let Some(domain) = r.prefix.strip_prefix("*.") {
            if domain.is_empty() || domain.contains(['/', '*']) {
                return Err(format!(
                    "{at}.prefix {:?}: a wildcard prefix is *.DOMAIN",
                    r.prefix
                ));
            }
            if !r.location.is_empty() {
                return Err(format!(
                    "{at}.location: a wildcard prefix ({}) cannot have a location",
                    r.prefix
                ));
            }
            r.prefix.clone()
        } else {
            let p = location(&r.prefix, &format!("{at}.prefix"))?;
            if p.contains('/') && p.rsplit('/').next().is_some_and(|last| last.contains(':')) {
                return Err(format!(
                    "{at}.prefix {p:?}: a prefix naming a tag or digest is not supported; name the repository"
                ));
            }
            p
        };
        let loc = if r.location.is_empty() {
            prefix.clone()
        } else {
            location(&r.location, &format!("{at}.location"))?
        };
        let mut mirrors = Vec::new();
        for (j, m) in r.mirror.into_iter().enumerate() {
            let at = format!("{at}.mirror[{j}]");
            let pull = match m.pull_from_mirror.as_deref() {
                None | Some("") | Some("all") => PullFrom::All,
                Some("digest-only") => PullFrom::DigestOnly,
                Some("tag-only") => PullFrom::TagOnly,
                Some(other) => {
                    return Err(format!(
                        "{at}.pull-from-mirror {other:?}: expected all, digest-only or tag-only"
                    ));
                }
            };
            if r.mirror_by_digest_only && m.pull_from_mirror.is_some() {
                return Err(format!(
                    "{at}.pull-from-mirror cannot be set with the registry's mirror-by-digest-only"
                ));
            }
            mirrors.push(Mirror {
                location: location(&m.location, &format!("{at}.location"))?,
                insecure: m.insecure,
                pull,
            });
        }
        rules.push(Rule {
            prefix,
            location: loc,
            insecure: r.insecure,
            blocked: r.blocked,
            by_digest_only: r.mirror_by_digest_only,
            mirrors,
            file: file.to_path_buf(),
        });
    }
    if let Some(v1) = parsed.registries {
        if !rules.is_empty() {
            return Err(
                "mixes the v1 [registries.*] tables with v2 [[registry]] tables".to_string(),
            );
        }
        let hosts = |l: Option<V1List>| l.map(|l| l.registries).unwrap_or_default();
        let (block, insecure) = (hosts(v1.block), hosts(v1.insecure));
        for h in block.iter().chain(&insecure) {
            let h = location(h, "registries entry")?;
            if rules.iter().any(|r: &Rule| r.prefix == h) {
                continue;
            }
            rules.push(Rule {
                prefix: h.clone(),
                location: h.clone(),
                insecure: insecure.contains(&h),
                blocked: block.contains(&h),
                by_digest_only: false,
                mirrors: Vec::new(),
                file: file.to_path_buf(),
            });
        }
    }
    let mut seen = std::collections::HashSet::new();
    for r in &rules {
        if !seen.insert(r.prefix.as_str()) {
            return Err(format!("prefix {:?} has two [[registry]] tables", r.prefix));
        }
    }
    Ok(rules)
}

/// The files read, as containers/image reads them: `main` (a file named by the
/// flag or `CONTAINERS_REGISTRIES_CONF`) or else the user's `registries.conf`
/// if it exists, else the system's; then the drop-ins (`registries.conf.d/*.conf`,
/// in name order; a later file's rule replaces one with the same prefix): only
/// the user's beside the user's own file, else the system's and the user's.
fn files(main: Option<&Path>, home: Option<&Path>, system: &Path) -> Vec<PathBuf> {
    let user = home.map(|h| h.join(".config/containers"));
    let mut files = Vec::new();
    let mut dirs = vec![system.join("registries.conf.d")];
    match (main, &user) {
        (Some(m), _) => files.push(m.to_path_buf()),
        (None, Some(u)) if u.join("registries.conf").is_file() => {
            files.push(u.join("registries.conf"));
            dirs.clear();
        }
        (None, _) => files.push(system.join("registries.conf")),
    }
    dirs.extend(user.map(|u| u.join("registries.conf.d")));
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut d: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "conf"))
            .collect();
        d.sort();
        files.extend(d);
    }
    files
}

impl Mirrors {
    /// Reads `explicit` (`--registries-conf`, which must exist), else the file
    /// `CONTAINERS_REGISTRIES_CONF` names, else the user's or the system's, each
    /// with the drop-ins (a main file that does not exist has no rules). `None`
    /// when no rule changes where anything is pulled from.
    pub fn load(
        explicit: Option<&Path>,
        base: RegistryOptions,
    ) -> Result<Option<Arc<Mirrors>>, String> {
        if let Some(p) = explicit
            && !p.is_file()
        {
            return Err(format!("{}: no such file", p.display()));
        }
        let env = std::env::var_os("CONTAINERS_REGISTRIES_CONF").map(PathBuf::from);
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let files: Vec<PathBuf> = files(
            explicit.or(env.as_deref()),
            home.as_deref(),
            Path::new("/etc/containers"),
        )
        .into_iter()
        .filter(|f| f.is_file())
        .collect();
        let mut rules: Vec<Rule> = Vec::new();
        for f in &files {
            let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
            for r in parse(&text, f).map_err(|e| format!("{}: {e}", f.display()))? {
                rules.retain(|old| old.prefix != r.prefix);
                rules.push(r);
            }
        }
        // Every rule stays: a rule that changes nothing still wins over a shorter
        // prefix that would (quay.io mirrored, quay.io/openshift-release-dev not).
        if !rules
            .iter()
            .any(|r| r.blocked || r.insecure || !r.mirrors.is_empty() || r.location != r.prefix)
        {
            return Ok(None);
        }
        tracing::info!(
            files = %files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "),
            rules = rules.len(),
            "source registries: registries.conf rules apply"
        );
        Ok(Some(Arc::new(Mirrors {
            rules,
            base: RegistryOptions {
                mirrors: None,
                ..base
            },
            clients: Default::default(),
        })))
    }

    /// Where to send a read of `repository` at `host`, in order; `None` when no
    /// rule applies. `by_digest`: the request names a digest, not a tag. An
    /// error says which file blocks the image.
    pub fn route(
        &self,
        host: &str,
        repository: &str,
        by_digest: bool,
    ) -> Result<Option<Vec<Endpoint>>, String> {
        let name = format!("{host}/{repository}");
        // The longest prefix; of two as long, the first (as containers/image).
        let mut best: Option<(&Rule, usize)> = None;
        for r in &self.rules {
            if let Some(n) = r.matches(host, &name)
                && best.is_none_or(|(b, _)| r.prefix.len() > b.prefix.len())
            {
                best = Some((r, n));
            }
        }
        let Some((rule, covered)) = best else {
            return Ok(None);
        };
        if rule.blocked {
            return Err(format!(
                "{name} is blocked by {} (prefix {:?}, blocked = true)",
                rule.file.display(),
                rule.prefix
            ));
        }
        let rest = &name[covered..];
        let split = |loc: String, insecure: bool, mirror: bool| -> Result<Endpoint, String> {
            match loc.split_once('/') {
                Some((h, r)) if !r.is_empty() => Ok(Endpoint {
                    host: h.to_string(),
                    repository: r.to_string(),
                    insecure,
                    mirror,
                }),
                _ => Err(format!(
                    "{}: the rule for prefix {:?} sends {name} to {loc:?}, which names no repository",
                    rule.file.display(),
                    rule.prefix
                )),
            }
        };
        let mut out = Vec::new();
        if !rule.by_digest_only || by_digest {
            for m in &rule.mirrors {
                let wanted = match m.pull {
                    PullFrom::All => true,
                    PullFrom::DigestOnly => by_digest,
                    PullFrom::TagOnly => !by_digest,
                };
                if wanted {
                    out.push(split(format!("{}{rest}", m.location), m.insecure, true)?);
                }
            }
        }
        let primary = if rule.prefix.starts_with("*.") {
            name.clone()
        } else {
            format!("{}{rest}", rule.location)
        };
        out.push(split(primary, rule.insecure, false)?);
        Ok(Some(out))
    }

    /// The client for an endpoint's host, made on first use. A mirror is reached
    /// with the source options, TLS unverified when `insecure`.
    ///
    /// A host that could not be connected to is not tried again for
    /// [`DOWN_FOR`]: each try may wait for a connect timeout, and every read of
    /// every image would pay it.
    pub(super) async fn client(
        &self,
        host: &str,
        insecure: bool,
    ) -> Result<Arc<RegistryClient>, RegistryError> {
        let key = (host.to_string(), insecure);
        if let Some(known) = self.clients.lock().expect("not poisoned").get(&key) {
            match known {
                Known::Up(c) => return Ok(c.clone()),
                Known::Down(at, e) if at.elapsed() < DOWN_FOR => return Err(down(host, e)),
                Known::Down(..) => {}
            }
        }
        let mut opts = self.base.clone();
        opts.tls_verify &= !insecure;
        let result = RegistryClient::connect(host, &opts).await.map(Arc::new);
        let known = match &result {
            Ok(c) => Known::Up(c.clone()),
            Err(e) => Known::Down(std::time::Instant::now(), down(host, e)),
        };
        self.clients
            .lock()
            .expect("not poisoned")
            .insert(key, known);
        result
    }

    /// Whether some rule may send a read of an image at `host` elsewhere.
    pub fn covers(&self, host: &str) -> bool {
        self.rules.iter().any(|r| {
            r.prefix.starts_with("*.") && r.matches(host, host).is_some()
                || r.prefix == host
                || r.prefix.starts_with(&format!("{host}/"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirrors(text: &str) -> Mirrors {
        Mirrors {
            rules: parse(text, Path::new("registries.conf")).unwrap(),
            base: RegistryOptions::default(),
            clients: Default::default(),
        }
    }

    fn hosts(m: &Mirrors, name: &str, by_digest: bool) -> Vec<String> {
        let (host, repo) = name.split_once('/').unwrap();
        m.route(host, repo, by_digest)
            .unwrap()
            .map(|e| {
                e.iter()
                    .map(|e| format!("{}/{}", e.host, e.repository))
                    .collect()
            })
            .unwrap_or_default()
    }

    const SITE: &str = r#"
unqualified-search-registries = ["registry.access.redhat.com", "docker.io"]
short-name-mode = "enforcing"
credential-helpers = ["containers-auth.json"]

[aliases]
  "skopeo" = "quay.io/skopeo/stable"

[[registry]]
prefix = "quay.io/openshift-release-dev"
location = "quay.io/openshift-release-dev"
mirror-by-digest-only = true
[[registry.mirror]]
location = "nexus.corp:8443/quay-proxy/openshift-release-dev"

[[registry]]
location = "quay.io"
[[registry.mirror]]
location = "nexus.corp:8443/quay-proxy"
pull-from-mirror = "tag-only"
[[registry.mirror]]
location = "artifactory.corp/quay"
insecure = true

# Release images straight from the source, although quay.io is mirrored.
[[registry]]
prefix = "quay.io/openshift-release-dev/ocp-release"

[[registry]]
prefix = "registry.example.com/old"
location = "registry.example.com/new"

[[registry]]
prefix = "*.blocked.example"
blocked = true
"#;

    #[test]
    fn the_longest_prefix_decides_and_mirrors_come_before_the_location() {
        let m = mirrors(SITE);
        assert_eq!(
            hosts(&m, "quay.io/openshift-release-dev/ocp-v4.0-art-dev", true),
            [
                "nexus.corp:8443/quay-proxy/openshift-release-dev/ocp-v4.0-art-dev",
                "quay.io/openshift-release-dev/ocp-v4.0-art-dev"
            ]
        );
        // mirror-by-digest-only: a tag goes to the source.
        assert_eq!(
            hosts(&m, "quay.io/openshift-release-dev/ocp-v4.0-art-dev", false),
            ["quay.io/openshift-release-dev/ocp-v4.0-art-dev"]
        );
        // A longer prefix without mirrors wins over a shorter one with them.
        assert_eq!(
            hosts(&m, "quay.io/openshift-release-dev/ocp-release", true),
            ["quay.io/openshift-release-dev/ocp-release"]
        );
        // pull-from-mirror per mirror.
        assert_eq!(
            hosts(&m, "quay.io/team/app", false),
            [
                "nexus.corp:8443/quay-proxy/team/app",
                "artifactory.corp/quay/team/app",
                "quay.io/team/app"
            ]
        );
        assert_eq!(
            hosts(&m, "quay.io/team/app", true),
            ["artifactory.corp/quay/team/app", "quay.io/team/app"]
        );
        let insecure: Vec<bool> = m
            .route("quay.io", "team/app", true)
            .unwrap()
            .unwrap()
            .iter()
            .map(|e| e.insecure)
            .collect();
        assert_eq!(insecure, [true, false]);
        // A location rewrites the source; a component boundary is required.
        assert_eq!(
            hosts(&m, "registry.example.com/old/app", true),
            ["registry.example.com/new/app"]
        );
        assert!(hosts(&m, "registry.example.com/older/app", true).is_empty());
        assert!(hosts(&m, "quay.io.evil/team/app", true).is_empty());
        assert!(hosts(&m, "docker.io/library/busybox", true).is_empty());
    }

    #[test]
    fn blocked_images_are_refused_naming_the_file() {
        let m = mirrors(SITE);
        let e = m.route("a.blocked.example", "x/y", true).unwrap_err();
        assert!(
            e.contains("a.blocked.example/x/y is blocked by registries.conf"),
            "{e}"
        );
        assert!(m.route("blocked.example", "x/y", true).unwrap().is_none());
        let v1 = mirrors(
            "[registries.search]\nregistries = ['docker.io']\n[registries.block]\nregistries = ['evil.example']\n[registries.insecure]\nregistries = ['lab:5000']\n",
        );
        assert!(v1.route("evil.example", "x", true).is_err());
        let lab = v1.route("lab:5000", "x/y", false).unwrap().unwrap();
        assert!(lab[0].insecure && !lab[0].mirror);
    }

    #[test]
    fn malformed_files_are_refused_with_the_field() {
        let bad = |text: &str| parse(text, Path::new("r.conf")).unwrap_err();
        let e = bad("[[registry]]\nlocation = 'https://quay.io'\n");
        assert!(
            e.contains("registry[0].location") && e.contains("scheme"),
            "{e}"
        );
        let e = bad("[[registry]]\nprefix = '*.example.com'\nlocation = 'x.io'\n");
        assert!(e.contains("cannot have a location"), "{e}");
        let e = bad(
            "[[registry]]\nlocation = 'quay.io'\n[[registry.mirror]]\nlocation = 'm.io'\npull-from-mirror = 'sometimes'\n",
        );
        assert!(e.contains("registry[0].mirror[0].pull-from-mirror"), "{e}");
        let e = bad(
            "[[registry]]\nlocation = 'quay.io'\nmirror-by-digest-only = true\n[[registry.mirror]]\nlocation = 'm.io'\npull-from-mirror = 'all'\n",
        );
        assert!(e.contains("mirror-by-digest-only"), "{e}");
        let e = bad("[[registry]]\nlocation = 'quay.io'\n[[registry]]\nprefix = 'quay.io'\n");
        assert!(e.contains("two [[registry]] tables"), "{e}");
        let e = bad("[[registry]\n");
        assert!(!e.is_empty());
    }

    #[test]
    fn files_are_chosen_as_containers_image_chooses_them() {
        let tmp = tempfile::tempdir().unwrap();
        let (system, home) = (tmp.path().join("etc"), tmp.path().join("home"));
        let user = home.join(".config/containers");
        for d in [
            system.join("registries.conf.d"),
            user.join("registries.conf.d"),
        ] {
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("b.conf"), "").unwrap();
            std::fs::write(d.join("a.conf"), "").unwrap();
            std::fs::write(d.join("notes.txt"), "").unwrap();
        }
        let rel = |f: Vec<PathBuf>| -> Vec<String> {
            f.iter()
                .map(|p| p.strip_prefix(tmp.path()).unwrap().display().to_string())
                .collect()
        };
        let both_dirs = [
            "etc/registries.conf.d/a.conf",
            "etc/registries.conf.d/b.conf",
            "home/.config/containers/registries.conf.d/a.conf",
            "home/.config/containers/registries.conf.d/b.conf",
        ];
        let mut expect = vec!["etc/registries.conf".to_string()];
        expect.extend(both_dirs.iter().map(|s| s.to_string()));
        assert_eq!(rel(files(None, Some(&home), &system)), expect);
        let named = tmp.path().join("named.conf");
        expect[0] = "named.conf".into();
        assert_eq!(rel(files(Some(&named), Some(&home), &system)), expect);
        // The user's own file: only the user's drop-ins.
        std::fs::write(user.join("registries.conf"), "").unwrap();
        assert_eq!(
            rel(files(None, Some(&home), &system)),
            [
                "home/.config/containers/registries.conf",
                "home/.config/containers/registries.conf.d/a.conf",
                "home/.config/containers/registries.conf.d/b.conf"
            ]
        );
    }

    #[test]
    fn a_prefix_naming_a_tag_is_refused_and_a_port_is_not_a_tag() {
        let e = parse(
            "[[registry]]\nprefix = 'quay.io/team/app:1.0'\n",
            Path::new("r"),
        )
        .unwrap_err();
        assert!(e.contains("tag or digest"), "{e}");
        assert!(
            parse(
                "[[registry]]\nprefix = 'lab:5000/team'\nlocation = 'lab:5000/team'\n",
                Path::new("r")
            )
            .is_ok()
        );
        assert!(parse("[[registry]]\nlocation = 'lab:5000'\n", Path::new("r")).is_ok());
    }
}
