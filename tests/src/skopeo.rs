//! `skopeo`, the independent client that checks what Airlock did.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Result, bail};

use crate::registry::Registry;

/// How skopeo reaches a registry.
#[derive(Debug, Clone, Default)]
pub struct SkopeoOpts {
    /// `--tls-verify`.
    pub tls_verify: bool,
    /// `--cert-dir`.
    pub cert_dir: Option<PathBuf>,
    /// `--authfile`.
    pub authfile: Option<PathBuf>,
}

impl SkopeoOpts {
    /// The flags that reach `registry` as it is set up.
    pub fn for_registry(registry: &Registry) -> Self {
        SkopeoOpts {
            tls_verify: registry.is_tls(),
            cert_dir: registry.ca_cert_dir(),
            authfile: registry.auth_file(),
        }
    }

    fn apply(&self, cmd: &mut Command, prefix: &str) {
        cmd.arg(format!("--{prefix}tls-verify={}", self.tls_verify));
        if let Some(d) = &self.cert_dir {
            cmd.arg(format!("--{prefix}cert-dir")).arg(d);
        }
        if let Some(a) = &self.authfile {
            cmd.arg(format!("--{prefix}authfile")).arg(a);
        }
    }
}

pub use crate::images::digest_of;

fn run(mut cmd: Command) -> Result<Vec<u8>> {
    // Keep the developer's own credentials out of tests: only `--authfile` counts.
    crate::bins::isolate_env(&mut cmd);
    let out = cmd.output().map_err(|e| {
        anyhow::anyhow!("cannot run skopeo (install the Debian package skopeo): {e}")
    })?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// skopeo refuses to run without a signature policy, and the machine's
/// `/etc/containers/policy.json` may be missing or strict; tests accept anything.
/// Written once per process, into its own scratch directory, so that no test ever
/// reads a policy file another process is still writing.
fn policy() -> &'static Path {
    static POLICY: OnceLock<PathBuf> = OnceLock::new();
    // `get_or_init` runs the write once, with other threads waiting for it.
    POLICY.get_or_init(|| {
        let path = crate::bins::scratch_dir().join("policy.json");
        std::fs::write(&path, r#"{"default":[{"type":"insecureAcceptAnything"}]}"#)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    })
}

/// `skopeo inspect --raw docker://REFERENCE`: the manifest bytes as the registry serves them.
pub fn inspect_raw(reference: &str, opts: &SkopeoOpts) -> Result<Vec<u8>> {
    let mut cmd = Command::new("skopeo");
    cmd.arg("--policy")
        .arg(policy())
        .arg("inspect")
        .arg("--raw");
    opts.apply(&mut cmd, "");
    cmd.arg(format!("docker://{reference}"));
    run(cmd)
}

/// `skopeo inspect --raw` of `repo_ref` (`repo:tag` or `repo@digest`) at `registry`.
pub fn inspect_raw_at(registry: &Registry, repo_ref: &str) -> Result<Vec<u8>> {
    inspect_raw(
        &format!("{}/{repo_ref}", registry.addr()),
        &SkopeoOpts::for_registry(registry),
    )
}

/// `skopeo copy --all --preserve-digests` from one registry image to another location.
pub fn copy_all(src: &str, src_opts: &SkopeoOpts, dst: &str, dst_opts: &SkopeoOpts) -> Result<()> {
    let mut cmd = Command::new("skopeo");
    cmd.arg("--policy")
        .arg(policy())
        .arg("copy")
        .arg("--all")
        .arg("--preserve-digests");
    src_opts.apply(&mut cmd, "src-");
    dst_opts.apply(&mut cmd, "dest-");
    cmd.arg(src).arg(dst);
    run(cmd).map(|_| ())
}

/// The tags of `repo` at `registry`.
pub fn list_tags(registry: &Registry, repo: &str) -> Result<Vec<String>> {
    let mut cmd = Command::new("skopeo");
    cmd.arg("--policy").arg(policy()).arg("list-tags");
    SkopeoOpts::for_registry(registry).apply(&mut cmd, "");
    cmd.arg(format!("docker://{}/{repo}", registry.addr()));
    let out = run(cmd)?;
    let v: serde_json::Value = serde_json::from_slice(&out)?;
    Ok(v["Tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}
