//! The registry-access flags, spelled as skopeo spells them and declared once
//! for every command that has them, so that `publish` and `mirror` (and any
//! command to come) read and document them the same way.

use std::path::PathBuf;

use airlock_registry::RegistryOptions;
use airlock_registry::auth::AuthSource;
use clap::ArgAction;

/// How to reach the destination registry: `--dest-tls-verify`, `--dest-cert-dir`.
#[derive(Debug, Clone, clap::Args)]
pub struct DestTlsArgs {
    /// Require HTTPS and verify certificates of the destination registry
    /// (`--dest-tls-verify=false` allows plain HTTP and untrusted certificates).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_value_t = true, default_missing_value = "true", action = ArgAction::Set)]
    pub dest_tls_verify: bool,
    /// Directory of CA certificates (*.crt) to trust for the destination registry,
    /// instead of /etc/containers/certs.d/HOST[:PORT]/.
    #[arg(long, value_name = "DIR")]
    pub dest_cert_dir: Option<PathBuf>,
}

impl DestTlsArgs {
    /// The options for the destination, with the credentials `auth`. Never
    /// `registries.conf`: it says where sources are read from, not where a
    /// mirror is written.
    pub fn options(self, auth: AuthSource) -> RegistryOptions {
        RegistryOptions {
            tls_verify: self.dest_tls_verify,
            cert_dir: self.dest_cert_dir,
            auth,
            mirrors: None,
        }
    }
}

/// `--authfile`: one credentials file for every registry a command talks to.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthFileArgs {
    /// Credentials file (containers auth.json); default: REGISTRY_AUTH_FILE, then the
    /// containers-auth.json search order.
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
}

impl AuthFileArgs {
    /// Where credentials are looked up.
    pub fn source(&self) -> AuthSource {
        AuthSource::new(self.authfile.clone())
    }
}
