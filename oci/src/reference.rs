//! Image references (`registry/repository[:tag][@digest]`) and the rule that names
//! an image at its mirror.
//!
//! The parsing follows the grammar of the distribution project's `reference`
//! package, which every container tool shares, including its defaults: a first path
//! component without a dot, colon or `localhost` is not a registry, so `ubi8/ubi` is
//! `docker.io/ubi8/ubi`, and a single name on Docker Hub lives under `library/`.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;
use crate::quote::clipped;

/// Docker Hub, the registry of references that name none.
pub const DOCKER_HUB: &str = "docker.io";

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

/// Why a string is not an image reference.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    /// Empty input.
    #[error("empty image reference")]
    Empty,
    /// A repository path component breaks the distribution naming rules.
    #[error(
        "invalid image reference {reference}: repository {repository} must be lowercase \
         letters and digits separated by '.', '_', '__', '-' or '/'"
    )]
    Repository {
        /// The reference as given (clipped).
        reference: String,
        /// The offending repository path.
        repository: String,
    },
    /// The registry part is not a host name or address with an optional port.
    #[error(
        "invalid image reference {reference}: registry {registry} must be a host name or [IPv6] address with an optional :PORT"
    )]
    Registry {
        /// The reference as given (clipped).
        reference: String,
        /// The offending registry (clipped).
        registry: String,
    },
    /// The tag is not `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
    #[error(
        "invalid image reference {reference}: tag {tag} must be 1 to 128 characters of letters, digits, '_', '.' or '-', not starting with '.' or '-'"
    )]
    Tag {
        /// The reference as given (clipped).
        reference: String,
        /// The offending tag.
        tag: String,
    },
    /// The digest part did not parse.
    #[error("invalid image reference {reference}: {source}")]
    Digest {
        /// The reference as given (clipped).
        reference: String,
        /// What is wrong with the digest.
        source: crate::digest::DigestError,
    },
    /// A transport other than `docker://` was named.
    #[error("invalid image reference {0}: only docker:// references are supported here")]
    Transport(String),
}

impl ImageRef {
    /// A reference from its parts; the parts must already be valid.
    pub fn from_parts(
        registry: impl Into<String>,
        repository: impl Into<String>,
        tag: Option<String>,
        digest: Option<Digest>,
    ) -> Self {
        ImageRef {
            registry: registry.into(),
            repository: repository.into(),
            tag,
            digest,
        }
    }

    /// Registry host, with port when one was given (`quay.io`, `localhost:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// Repository path inside the registry (`openshift-release-dev/ocp-release`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// Tag, when the reference has one.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// Digest, when the reference has one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository`, the name without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same reference with `latest` as tag when it names neither tag nor digest,
    /// which is what every container tool pulls for a bare name.
    pub fn with_default_tag(mut self) -> Self {
        if self.tag.is_none() && self.digest.is_none() {
            self.tag = Some("latest".to_string());
        }
        self
    }

    /// What to ask the registry's manifest endpoint for: the digest when there is
    /// one (it pins the content), else the tag, else `latest`.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// The same repository at `digest`, without a tag.
    pub fn at_digest(&self, digest: Digest) -> Self {
        ImageRef {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }

    /// The same repository with `tag` (and no digest).
    pub fn at_tag(&self, tag: &str) -> Self {
        ImageRef {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: Some(tag.to_string()),
            digest: None,
        }
    }
}

fn valid_path_component(c: &str) -> bool {
    // [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// Whether `host` is a registry as the distribution grammar writes one: DNS labels
/// of letters, digits and inner `-` joined by `.`, or a bracketed IPv6 address,
/// optionally followed by `:PORT`.
pub fn valid_registry(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) if !n.starts_with('[') || n.ends_with(']') => (n, Some(p)),
        _ => (host, None),
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let name_ok = if let Some(v6) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        !v6.is_empty() && v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':')
    } else {
        !name.is_empty()
            && name.split('.').all(|label| {
                let b = label.as_bytes();
                !b.is_empty()
                    && b[0].is_ascii_alphanumeric()
                    && b[b.len() - 1].is_ascii_alphanumeric()
                    && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            })
    };
    host.len() <= 255 && port_ok && name_ok
}

/// Whether `repository` is a valid repository path (components joined by `/`).
pub fn valid_repository(repository: &str) -> bool {
    !repository.is_empty() && repository.split('/').all(valid_path_component)
}

/// Whether `tag` is a valid tag.
pub fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

impl FromStr for ImageRef {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, ReferenceError> {
        let s = input.trim();
        let s = s.strip_prefix("docker://").unwrap_or(s);
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if let Some((transport, _)) = s.split_once("://")
            && !transport.contains('/')
        {
            return Err(ReferenceError::Transport(clipped(input)));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => {
                let digest = d
                    .parse::<Digest>()
                    .map_err(|source| ReferenceError::Digest {
                        reference: clipped(input),
                        source,
                    })?;
                (rest, Some(digest))
            }
            None => (s, None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag
            && !valid_tag(tag)
        {
            return Err(ReferenceError::Tag {
                reference: clipped(input),
                tag: clipped(tag),
            });
        }
        let (registry, repository) = match name.split_once('/') {
            // Docker Hub's legacy host is Docker Hub, as the docker reference
            // grammar normalises it: one registry, one name (policy scopes,
            // mirror rules and records all compare names).
            Some(("index.docker.io", rest)) => (DOCKER_HUB.to_string(), rest.to_string()),
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        if !valid_registry(&registry) {
            return Err(ReferenceError::Registry {
                reference: clipped(input),
                registry: clipped(&registry),
            });
        }
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if !valid_repository(&repository) {
            return Err(ReferenceError::Repository {
                reference: clipped(input),
                repository: clipped(&repository),
            });
        }
        Ok(ImageRef {
            registry,
            repository,
            tag: tag.map(str::to_string),
            digest,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// A mirror registry and the path prefix under which Airlock places images:
/// `docker://HOST[:PORT][/PREFIX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    registry: String,
    prefix: Option<String>,
    /// The most path components a repository name may have there
    /// (`--max-nested-paths`); `None`: no limit.
    max_nested_paths: Option<usize>,
}

/// Why a destination did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DestinationError {
    /// Missing `docker://`.
    #[error("invalid destination {0:?}: expected docker://HOST[:PORT][/PREFIX]")]
    Scheme(String),
    /// The host part is empty or malformed.
    #[error("invalid destination {0:?}: the registry host is missing or malformed")]
    Host(String),
    /// The prefix breaks the repository naming rules.
    #[error(
        "invalid destination {input:?}: prefix {prefix:?} must be lowercase path components \
         (letters, digits, '.', '_', '-') separated by '/'"
    )]
    Prefix {
        /// The destination as given.
        input: String,
        /// The offending prefix.
        prefix: String,
    },
}

impl FromStr for Destination {
    type Err = DestinationError;

    fn from_str(input: &str) -> Result<Self, DestinationError> {
        let rest = input
            .strip_prefix("docker://")
            .ok_or_else(|| DestinationError::Scheme(input.to_string()))?;
        let rest = rest.trim_end_matches('/');
        let (host, prefix) = match rest.split_once('/') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        };
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
            && !host.starts_with(['-', '.', ':']);
        if !host_ok {
            return Err(DestinationError::Host(input.to_string()));
        }
        if let Some(p) = prefix
            && !valid_repository(p)
        {
            return Err(DestinationError::Prefix {
                input: input.to_string(),
                prefix: p.to_string(),
            });
        }
        Ok(Destination {
            registry: host.to_string(),
            prefix: prefix.map(str::to_string),
            max_nested_paths: None,
        })
    }
}

impl Destination {
    /// The mirror registry host (with port).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The path prefix, if any.
    pub fn prefix(&self) -> Option<&str> {
        self.prefix.as_deref()
    }

    /// This destination for a registry that allows at most `n` path components in
    /// a repository name (oc-mirror's `--max-nested-paths`; 0 means no limit, as
    /// there). Quay, GitLab and GHCR refuse deeper names, and a mirror set cannot
    /// map a source namespace onto names that had to be flattened.
    pub fn with_max_nested_paths(mut self, n: usize) -> Self {
        self.max_nested_paths = (n > 0).then_some(n);
        self
    }

    /// The limit on path components, if any.
    pub fn max_nested_paths(&self) -> Option<usize> {
        self.max_nested_paths
    }

    /// What a site records this destination under: its URL, and the path limit
    /// when there is one, since images placed with flattened names are elsewhere
    /// than those placed without. Never shown as the destination (that is the
    /// URL, `Display`).
    pub fn key(&self) -> String {
        match self.max_nested_paths {
            Some(n) => format!("{self} max-nested-paths={n}"),
            None => self.to_string(),
        }
    }

    /// The repository at the mirror for a source repository path: oc-mirror's rule,
    /// `PREFIX/<source repository path>`, so that `quay.io/ns/app` lands at
    /// `HOST/PREFIX/ns/app` and the namespace-scoped mirror sets of a cluster match.
    /// Under a path limit of N, the first N-1 components stay and the rest are
    /// joined with `-` into the last, as oc-mirror flattens them
    /// (`mirror/ns/team/app` with 2 becomes `mirror/ns-team-app`).
    pub fn repository_for(&self, source_repository: &str) -> String {
        let full = match &self.prefix {
            Some(p) => format!("{p}/{source_repository}"),
            None => source_repository.to_string(),
        };
        match self.max_nested_paths {
            Some(n) if full.split('/').count() > n => {
                let components: Vec<&str> = full.split('/').collect();
                let (kept, joined) = components.split_at(n - 1);
                let last = joined.join("-");
                kept.iter()
                    .copied()
                    .chain([last.as_str()])
                    .collect::<Vec<_>>()
                    .join("/")
            }
            _ => full,
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "docker://{}", self.registry)?;
        if let Some(p) = &self.prefix {
            write!(f, "/{p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:d31c6ea5c50be93d6eb94d2b508f0208e84a308c011c6454ebf291d48b37df19";

    fn parts(s: &str) -> (String, String, Option<String>, Option<String>) {
        let r: ImageRef = s.parse().unwrap();
        (
            r.registry().to_string(),
            r.repository().to_string(),
            r.tag().map(str::to_string),
            r.digest().map(|d| d.to_string()),
        )
    }

    #[test]
    fn parses_tag_digest_and_both() {
        assert_eq!(
            parts("quay.io/openshift-release-dev/ocp-release:4.12.0-x86_64"),
            (
                "quay.io".into(),
                "openshift-release-dev/ocp-release".into(),
                Some("4.12.0-x86_64".into()),
                None
            )
        );
        assert_eq!(
            parts(&format!("localhost:5000/a/b@{D}")),
            ("localhost:5000".into(), "a/b".into(), None, Some(D.into()))
        );
        assert_eq!(
            parts(&format!("docker://registry.redhat.io/ubi9/ubi:9.4@{D}")),
            (
                "registry.redhat.io".into(),
                "ubi9/ubi".into(),
                Some("9.4".into()),
                Some(D.into())
            )
        );
    }

    #[test]
    fn applies_docker_hub_defaults() {
        assert_eq!(
            parts("alpine"),
            ("docker.io".into(), "library/alpine".into(), None, None)
        );
        assert_eq!(
            parts("ubi8/ubi:8.9"),
            (
                "docker.io".into(),
                "ubi8/ubi".into(),
                Some("8.9".into()),
                None
            )
        );
        assert_eq!(
            parts("localhost/app"),
            ("localhost".into(), "app".into(), None, None)
        );
        assert_eq!(
            parts("index.docker.io/busybox:1"),
            (
                "docker.io".into(),
                "library/busybox".into(),
                Some("1".into()),
                None
            )
        );
        let r: ImageRef = "alpine".parse().unwrap();
        assert_eq!(
            r.with_default_tag().to_string(),
            "docker.io/library/alpine:latest"
        );
    }

    #[test]
    fn refuses_malformed_references() {
        assert!(matches!("".parse::<ImageRef>(), Err(ReferenceError::Empty)));
        assert!(matches!(
            "quay.io/UPPER/case".parse::<ImageRef>(),
            Err(ReferenceError::Repository { .. })
        ));
        assert!(matches!(
            "quay.io/a/b:-bad".parse::<ImageRef>(),
            Err(ReferenceError::Tag { .. })
        ));
        assert!(matches!(
            "quay.io/a/b@sha256:123".parse::<ImageRef>(),
            Err(ReferenceError::Digest { .. })
        ));
        assert!(matches!(
            "oci:///tmp/layout".parse::<ImageRef>(),
            Err(ReferenceError::Transport(_))
        ));
        assert!(matches!(
            "quay.io/a/../b".parse::<ImageRef>(),
            Err(ReferenceError::Repository { .. })
        ));
    }

    #[test]
    fn destination_follows_oc_mirror_naming() {
        let d: Destination = "docker://mirror.example:5000/mirror".parse().unwrap();
        assert_eq!(d.registry(), "mirror.example:5000");
        assert_eq!(d.repository_for("ubi8/ubi"), "mirror/ubi8/ubi");
        let d: Destination = "docker://127.0.0.1:5000".parse().unwrap();
        assert_eq!(d.repository_for("ubi8/ubi"), "ubi8/ubi");
        assert!(matches!(
            "mirror.example:5000".parse::<Destination>(),
            Err(DestinationError::Scheme(_))
        ));
        assert!(matches!(
            "docker:///x".parse::<Destination>(),
            Err(DestinationError::Host(_))
        ));
        assert!(matches!(
            "docker://host/Bad".parse::<Destination>(),
            Err(DestinationError::Prefix { .. })
        ));
    }

    /// oc-mirror's own cases for `WithMaxNestedPaths`: the prefix counts, the first
    /// N-1 components stay, the rest are joined with '-'.
    #[test]
    fn max_nested_paths_flattens_as_oc_mirror_does() {
        let source =
            "mirror-release/gitlab-org/ci-cd/gitlab-runner-ubi-images/gitlab-runner-helper-ocp";
        let d: Destination = "docker://myregistry.mydomain/ocpbugs-11922"
            .parse()
            .unwrap();
        let cases = [
            (
                2,
                "ocpbugs-11922/mirror-release-gitlab-org-ci-cd-gitlab-runner-ubi-images-gitlab-runner-helper-ocp",
            ),
            (
                3,
                "ocpbugs-11922/mirror-release/gitlab-org-ci-cd-gitlab-runner-ubi-images-gitlab-runner-helper-ocp",
            ),
            (
                4,
                "ocpbugs-11922/mirror-release/gitlab-org/ci-cd-gitlab-runner-ubi-images-gitlab-runner-helper-ocp",
            ),
            (
                5,
                "ocpbugs-11922/mirror-release/gitlab-org/ci-cd/gitlab-runner-ubi-images-gitlab-runner-helper-ocp",
            ),
            (
                6,
                "ocpbugs-11922/mirror-release/gitlab-org/ci-cd/gitlab-runner-ubi-images/gitlab-runner-helper-ocp",
            ),
            (
                0,
                "ocpbugs-11922/mirror-release/gitlab-org/ci-cd/gitlab-runner-ubi-images/gitlab-runner-helper-ocp",
            ),
        ];
        for (n, want) in cases {
            assert_eq!(
                d.clone().with_max_nested_paths(n).repository_for(source),
                want,
                "{n}"
            );
        }
        // One component: everything joined (oc-mirror would start the name with '/').
        let d: Destination = "docker://quay.example/mirror".parse().unwrap();
        assert_eq!(
            d.with_max_nested_paths(1).repository_for("ns/app"),
            "mirror-ns-app"
        );
        let d: Destination = "docker://quay.example/mirror".parse().unwrap();
        assert_eq!(d.key(), "docker://quay.example/mirror");
        let limited = d.with_max_nested_paths(2);
        assert_eq!(limited.to_string(), "docker://quay.example/mirror");
        assert_eq!(
            limited.key(),
            "docker://quay.example/mirror max-nested-paths=2"
        );
    }
}
