//! Registry credentials from the files every container tool reads.
//!
//! The lookup order is the one of containers-auth.json(5), so a machine set up for
//! podman, skopeo or oc-mirror works unchanged: an explicit file (`--authfile` or
//! `REGISTRY_AUTH_FILE`) is the only file read; otherwise
//! `${XDG_RUNTIME_DIR}/containers/auth.json`, `${XDG_CONFIG_HOME:-~/.config}/containers/auth.json`,
//! `~/.docker/config.json` and `~/.dockercfg` are searched in that order, and the
//! first file with an entry for the registry wins. An OpenShift pull secret is such
//! a file. Within a file the most specific key wins (`quay.io/ns/repo` over
//! `quay.io/ns` over `quay.io`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

/// A user name and password (or token used as password), or an identity token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
    /// An OAuth2 refresh token (`identitytoken` in the file, or a credential
    /// helper's `<token>` answer), as `az acr login` and Docker Desktop leave: it
    /// is exchanged at the registry's token service for access tokens and never
    /// sent to the registry itself; user name and password are then unused.
    pub identity_token: Option<String>,
}

impl Credentials {
    /// A user name and password.
    pub fn basic(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            username: username.into(),
            password: password.into(),
            identity_token: None,
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.identity_token {
            Some(_) => write!(f, "Credentials({}, identity token ****)", self.username),
            None => write!(f, "Credentials({}, ****)", self.username),
        }
    }
}

/// Why a credentials file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("credentials file {}: {message}", path.display())]
pub struct AuthFileError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub message: String,
}

#[derive(Deserialize)]
struct FileWithAuths {
    #[serde(default)]
    auths: Option<BTreeMap<String, Entry>>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// Where credentials come from.
#[derive(Debug, Clone, Default)]
pub struct AuthSource {
    /// An explicit file; when set, no other file is read.
    pub explicit: Option<PathBuf>,
    /// The environment values the search depends on, captured once so that tests
    /// never depend on the developer's own files.
    pub env: AuthEnv,
}

/// Environment variables of the credentials lookup.
#[derive(Debug, Clone, Default)]
pub struct AuthEnv {
    /// `REGISTRY_AUTH_FILE`.
    pub registry_auth_file: Option<PathBuf>,
    /// `XDG_RUNTIME_DIR`.
    pub xdg_runtime_dir: Option<PathBuf>,
    /// `XDG_CONFIG_HOME`.
    pub xdg_config_home: Option<PathBuf>,
    /// `HOME`.
    pub home: Option<PathBuf>,
    /// `PATH`, where credential helpers (`docker-credential-NAME`) are found.
    pub path: Option<std::ffi::OsString>,
}

impl AuthEnv {
    /// Reads the process environment.
    pub fn from_process() -> Self {
        let get = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        AuthEnv {
            registry_auth_file: get("REGISTRY_AUTH_FILE"),
            xdg_runtime_dir: get("XDG_RUNTIME_DIR"),
            xdg_config_home: get("XDG_CONFIG_HOME"),
            home: get("HOME"),
            path: std::env::var_os("PATH"),
        }
    }
}

impl AuthSource {
    /// Credentials lookup from `--authfile` (if given) and the process environment.
    pub fn new(explicit: Option<PathBuf>) -> Self {
        AuthSource {
            explicit,
            env: AuthEnv::from_process(),
        }
    }

    /// The files to read, in order; an explicit file stands alone.
    pub fn files(&self) -> Vec<PathBuf> {
        if let Some(f) = self
            .explicit
            .as_ref()
            .or(self.env.registry_auth_file.as_ref())
        {
            return vec![f.clone()];
        }
        let mut files = Vec::new();
        if let Some(d) = &self.env.xdg_runtime_dir {
            files.push(d.join("containers/auth.json"));
        }
        let config_home = self
            .env
            .xdg_config_home
            .clone()
            .or_else(|| self.env.home.as_ref().map(|h| h.join(".config")));
        if let Some(c) = config_home {
            files.push(c.join("containers/auth.json"));
        }
        if let Some(h) = &self.env.home {
            files.push(h.join(".docker/config.json"));
            files.push(h.join(".dockercfg"));
        }
        files
    }

    /// Credentials for `registry` (host with port) and `repository`, or `None` for
    /// anonymous access. A missing file is skipped; a malformed one is an error, since
    /// silently going anonymous would surface later as a confusing 401.
    pub fn lookup(
        &self,
        registry: &str,
        repository: &str,
    ) -> Result<Option<Credentials>, AuthFileError> {
        for file in self.files() {
            let text = match std::fs::read(&file) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(AuthFileError {
                        path: file,
                        message: e.to_string(),
                    });
                }
            };
            let legacy = file.file_name().is_some_and(|n| n == ".dockercfg");
            let found = match lookup_in(&file, &text, legacy, registry, repository)? {
                Found::Inline(c) => Some(c),
                Found::Helper(helper) => self.ask_helper(&file, &helper, registry)?,
                Found::Nothing => None,
            };
            if let Some(c) = found {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }
}

impl AuthSource {
    /// Runs `docker-credential-HELPER get` for `registry`, as Docker, podman and
    /// skopeo do: the registry on stdin, `{"Username", "Secret"}` on stdout. A
    /// helper that has nothing for the registry (it exits non-zero and says so)
    /// is no credential; one that cannot be run is an error naming it.
    fn ask_helper(
        &self,
        file: &Path,
        helper: &str,
        registry: &str,
    ) -> Result<Option<Credentials>, AuthFileError> {
        use std::io::Write as _;
        let program = format!("docker-credential-{helper}");
        let bad = |message: String| AuthFileError {
            path: file.to_path_buf(),
            message,
        };
        let mut cmd = std::process::Command::new(&program);
        if let Some(path) = &self.env.path {
            cmd.env("PATH", path);
        }
        let mut child = cmd
            .arg("get")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| {
                bad(format!(
                    "credential helper {program} for {registry} cannot be run: {e}; install it, or store the credentials inline in \"auths\""
                ))
            })?;
        // `docker login` stores Docker Hub under its legacy address.
        let server = if registry == "docker.io" {
            "https://index.docker.io/v1/"
        } else {
            registry
        };
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(server.as_bytes());
        }
        // A helper waiting for a keyring to be unlocked would hold the command
        // forever: it gets a deadline.
        let deadline = std::time::Instant::now() + HELPER_TIMEOUT;
        while child
            .try_wait()
            .map_err(|e| bad(format!("credential helper {program}: {e}")))?
            .is_none()
        {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(bad(format!(
                    "credential helper {program} did not answer for {registry} within {}s (a keyring waiting to be unlocked?)",
                    HELPER_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let out = child
            .wait_with_output()
            .map_err(|e| bad(format!("credential helper {program}: {e}")))?;
        if !out.status.success() {
            let said = format!(
                "{} {}",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            // The protocol's answer for "nothing stored"; anything else (a locked
            // keychain, a crash) is an error, not a quiet anonymous pull.
            if said.contains("credentials not found") {
                tracing::info!(file = %file.display(), registry, helper = %program, "the credential helper has no credentials for this registry");
                return Ok(None);
            }
            return Err(bad(format!(
                "credential helper {program} failed for {registry} ({}): {}",
                out.status,
                said.trim()
            )));
        }
        #[derive(Deserialize)]
        struct Answer {
            #[serde(rename = "Username")]
            username: String,
            #[serde(rename = "Secret")]
            secret: String,
        }
        let answer: Answer = serde_json::from_slice(&out.stdout).map_err(|e| {
            bad(format!(
                "credential helper {program} answered something other than {{\"Username\", \"Secret\"}}: {e}"
            ))
        })?;
        // The protocol's way of handing out an identity token.
        if answer.username == "<token>" {
            return Ok(Some(Credentials {
                identity_token: Some(answer.secret),
                ..Credentials::basic("", "")
            }));
        }
        Ok(Some(Credentials::basic(answer.username, answer.secret)))
    }
}

/// How long a credential helper may take to answer.
const HELPER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What a file has for a registry and repository.
enum Found {
    /// Credentials in `auths`.
    Inline(Credentials),
    /// The credential helper to ask (`credHelpers` for the registry, or
    /// `credsStore`).
    Helper(String),
    Nothing,
}

/// The registry-and-path a key names, without scheme and Docker Hub's API path.
fn normalize_key(key: &str) -> String {
    let k = key
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let k = k
        .strip_suffix("/v1")
        .or_else(|| k.strip_suffix("/v2"))
        .unwrap_or(k);
    match k {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        _ => k.to_string(),
    }
}

fn lookup_in(
    path: &Path,
    text: &[u8],
    legacy: bool,
    registry: &str,
    repository: &str,
) -> Result<Found, AuthFileError> {
    let bad = |message: String| AuthFileError {
        path: path.to_path_buf(),
        message,
    };
    let (auths, helpers) = if legacy {
        let auths: BTreeMap<String, Entry> = serde_json::from_slice(text)
            .map_err(|e| bad(format!("not a valid .dockercfg: {e}")))?;
        (auths, None)
    } else {
        let f: FileWithAuths = serde_json::from_slice(text).map_err(|e| {
            bad(format!(
                "not valid JSON of the auth.json form {{\"auths\": {{...}}}}: {e}"
            ))
        })?;
        // A helper named for the registry comes first, as in containers-auth.json(5).
        if let Some(helper) = f
            .cred_helpers
            .as_ref()
            .and_then(|h| h.iter().find(|(k, _)| normalize_key(k) == registry))
            .map(|(_, v)| v.clone())
        {
            return Ok(Found::Helper(helper));
        }
        (f.auths.unwrap_or_default(), f.creds_store)
    };
    let full = format!("{registry}/{repository}");
    let keys: Vec<(String, &Entry)> = auths.iter().map(|(k, e)| (normalize_key(k), e)).collect();
    let mut best = keys
        .iter()
        .filter(|(k, _)| full == *k || full.starts_with(&format!("{k}/")))
        .max_by_key(|(k, _)| k.len())
        .map(|(k, e)| (k.clone(), *e));
    if best.is_none() && repository.is_empty() {
        // Asked for the whole registry (the credential of repositories no key
        // names) but the file only has repository-scoped keys for it: use the
        // first rather than going anonymous, and say so when they differ.
        let scoped: Vec<&(String, &Entry)> = keys
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{registry}/")))
            .collect();
        if let Some((k, e)) = scoped.first() {
            if scoped
                .iter()
                .any(|(_, other)| other.auth != e.auth || other.username != e.username)
            {
                tracing::info!(
                    file = %path.display(),
                    registry,
                    used = %k,
                    "several repository-scoped credentials for this registry: each repository uses the most specific, and one no key names uses the first"
                );
            }
            best = Some((k.clone(), *e));
        }
    }
    let Some((key, entry)) = best else {
        return Ok(helpers.map_or(Found::Nothing, Found::Helper));
    };
    let key = key.as_str();
    // An identity token wins over the user name (`auth` then encodes "user:").
    let identity = entry.identitytoken.clone().filter(|t| !t.is_empty());
    let inline = |username: &str, password: &str| {
        Ok(Found::Inline(Credentials {
            identity_token: identity.clone(),
            ..Credentials::basic(username, password)
        }))
    };
    if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
        return inline(u, p);
    }
    // `docker login` with a credsStore leaves an empty entry: the secret is in
    // the store.
    let Some(auth) = entry.auth.as_ref().filter(|a| !a.trim().is_empty()) else {
        if identity.is_some() {
            return inline("", "");
        }
        return Ok(helpers.map_or(Found::Nothing, Found::Helper));
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|e| bad(format!("entry {key:?}: \"auth\" is not base64: {e}")))?;
    let decoded = String::from_utf8(decoded)
        .map_err(|_| bad(format!("entry {key:?}: \"auth\" does not decode to text")))?;
    let (u, p) = decoded
        .split_once(':')
        .ok_or_else(|| bad(format!("entry {key:?}: \"auth\" must encode user:password")))?;
    inline(u, p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn source(dir: &Path) -> AuthSource {
        AuthSource {
            explicit: None,
            env: AuthEnv {
                registry_auth_file: None,
                xdg_runtime_dir: Some(dir.join("run")),
                xdg_config_home: None,
                home: Some(dir.join("home")),
                path: Some(dir.join("bin").into_os_string()),
            },
        }
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// A credential helper script at `path`.
    fn executable(path: &Path, script: &str) {
        use std::os::unix::fs::PermissionsExt as _;
        write(path, script);
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn credential_helpers_are_asked_for_what_the_file_does_not_hold_inline() {
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("bin/docker-credential-airlocktest");
        executable(
            &helper,
            "#!/bin/sh\nread host\ncase \"$host\" in\n  registry.example.com) echo '{\"ServerURL\":\"registry.example.com\",\"Username\":\"robot\",\"Secret\":\"s3cret\"}';;\n  *) echo 'credentials not found in native keychain'; exit 1;;\nesac\n",
        );
        let src = source(dir.path());
        let file = dir.path().join("run/containers/auth.json");
        let creds = |r: &str| {
            src.lookup(r, "team/app")
                .unwrap()
                .map(|c| (c.username, c.password))
        };
        write(
            &file,
            &format!(
                r#"{{"credHelpers":{{"registry.example.com":"airlocktest"}},"auths":{{"quay.io":{{"auth":"{}"}}}}}}"#,
                b64("q:1")
            ),
        );
        assert_eq!(
            creds("registry.example.com"),
            Some(("robot".into(), "s3cret".into()))
        );
        assert_eq!(creds("quay.io"), Some(("q".into(), "1".into())));
        // A credsStore for the rest, with the empty entry `docker login` leaves.
        write(
            &file,
            r#"{"credsStore":"airlocktest","auths":{"registry.example.com":{}}}"#,
        );
        assert_eq!(
            creds("registry.example.com"),
            Some(("robot".into(), "s3cret".into()))
        );
        assert_eq!(
            creds("other.example.com"),
            None,
            "the helper has nothing for it"
        );
        // Docker Hub is asked for under the address `docker login` stores it at.
        write(&file, r#"{"credHelpers":{"docker.io":"airlocktest"}}"#);
        assert_eq!(
            creds("docker.io"),
            None,
            "asked for https://index.docker.io/v1/"
        );
        write(
            &helper,
            "#!/bin/sh\nread host\n[ \"$host\" = https://index.docker.io/v1/ ] && echo '{\"Username\":\"hub\",\"Secret\":\"h\"}' && exit 0\necho 'credentials not found in native keychain'; exit 1\n",
        );
        assert_eq!(creds("docker.io"), Some(("hub".into(), "h".into())));
        // A helper that fails otherwise (a locked keychain) is an error, not a
        // quiet anonymous pull.
        let locked = dir.path().join("bin/docker-credential-locked");
        executable(
            &locked,
            "#!/bin/sh\necho 'keychain is locked' >&2\nexit 1\n",
        );
        write(
            &file,
            r#"{"credHelpers":{"registry.example.com":"locked"}}"#,
        );
        let e = src
            .lookup("registry.example.com", "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("keychain is locked"), "{e}");
        // A helper that is not installed is named.
        write(
            &file,
            r#"{"credHelpers":{"registry.example.com":"missing"}}"#,
        );
        let e = src
            .lookup("registry.example.com", "x")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("docker-credential-missing") && e.contains("cannot be run"),
            "{e}"
        );
    }

    #[test]
    fn most_specific_key_wins_and_scheme_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path());
        write(
            &dir.path().join("run/containers/auth.json"),
            &format!(
                r#"{{"auths":{{"https://quay.io":{{"auth":"{}"}},"quay.io/team":{{"auth":"{}"}},"https://index.docker.io/v1/":{{"auth":"{}"}}}}}}"#,
                b64("all:1"),
                b64("team:2"),
                b64("hub:3")
            ),
        );
        let user = |r, repo| src.lookup(r, repo).unwrap().map(|c| c.username);
        assert_eq!(user("quay.io", "team/app"), Some("team".into()));
        assert_eq!(user("quay.io", "teamster/app"), Some("all".into()));
        assert_eq!(user("docker.io", "library/alpine"), Some("hub".into()));
        assert_eq!(user("registry.redhat.io", "ubi9/ubi"), None);
    }

    #[test]
    fn repository_scoped_keys_serve_a_registry_wide_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path());
        write(
            &dir.path().join("run/containers/auth.json"),
            &format!(
                r#"{{"auths":{{"registry.example.com/team":{{"auth":"{}"}}}}}}"#,
                b64("team:1")
            ),
        );
        assert_eq!(
            src.lookup("registry.example.com", "")
                .unwrap()
                .unwrap()
                .username,
            "team"
        );
        assert_eq!(
            src.lookup("registry.example.com", "other/app").unwrap(),
            None
        );
    }

    #[test]
    fn search_order_and_explicit_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut src = source(dir.path());
        write(
            &dir.path().join("home/.docker/config.json"),
            &format!(
                r#"{{"auths":{{"r.example":{{"auth":"{}"}}}}}}"#,
                b64("docker:x")
            ),
        );
        write(
            &dir.path().join("home/.config/containers/auth.json"),
            &format!(
                r#"{{"auths":{{"other.example":{{"auth":"{}"}}}}}}"#,
                b64("podman:x")
            ),
        );
        // The first file lacks r.example, so the search goes on to docker's file.
        assert_eq!(
            src.lookup("r.example", "a").unwrap().unwrap().username,
            "docker"
        );
        let explicit = dir.path().join("explicit.json");
        write(&explicit, r#"{"auths":{}}"#);
        src.explicit = Some(explicit);
        assert_eq!(
            src.lookup("r.example", "a").unwrap(),
            None,
            "an explicit file stands alone"
        );
    }

    #[test]
    fn malformed_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut src = source(dir.path());
        let f = dir.path().join("auth.json");
        write(&f, r#"{"auths":{"r.example":{"auth":"!!!"}}}"#);
        src.explicit = Some(f.clone());
        let err = src.lookup("r.example", "a").unwrap_err();
        assert!(err.to_string().contains("auth.json"), "{err}");
        assert!(err.to_string().contains("not base64"), "{err}");
        write(&f, "{not json");
        assert!(src.lookup("r.example", "a").is_err());
    }

    #[test]
    fn legacy_dockercfg_and_plain_fields() {
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path());
        write(
            &dir.path().join("home/.dockercfg"),
            r#"{"r.example":{"username":"u","password":"p"}}"#,
        );
        let c = src.lookup("r.example", "a/b").unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "p"));
    }

    #[test]
    fn identity_tokens_come_from_the_file_and_from_helpers() {
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path());
        let file = dir.path().join("run/containers/auth.json");
        // As `az acr login` leaves it: "user:" in `auth`, the refresh token beside.
        write(
            &file,
            &format!(
                r#"{{"auths":{{"acr.example":{{"auth":"{}","identitytoken":"refresh-1"}},"bare.example":{{"identitytoken":"refresh-2"}},"empty.example":{{"auth":"","identitytoken":"refresh-4"}},"plain.example":{{"auth":"{}","identitytoken":""}}}}}}"#,
                b64("00000000-0000-0000-0000-000000000000:"),
                b64("u:p")
            ),
        );
        let token = |r: &str| src.lookup(r, "a").unwrap().unwrap().identity_token;
        assert_eq!(token("acr.example").as_deref(), Some("refresh-1"));
        assert_eq!(token("bare.example").as_deref(), Some("refresh-2"));
        assert_eq!(token("empty.example").as_deref(), Some("refresh-4"));
        assert_eq!(token("plain.example"), None, "an empty one is none");
        // A helper answers `<token>` for the user to hand one out.
        let helper = dir.path().join("bin/docker-credential-tok");
        executable(
            &helper,
            "#!/bin/sh\nread host\necho '{\"Username\":\"<token>\",\"Secret\":\"refresh-3\"}'\n",
        );
        write(&file, r#"{"credsStore":"tok"}"#);
        let c = src.lookup("acr.example", "a").unwrap().unwrap();
        assert_eq!(c.identity_token.as_deref(), Some("refresh-3"));
        assert!(!format!("{c:?}").contains("refresh"), "{c:?}");
    }
}
