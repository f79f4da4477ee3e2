//! Helpers shared by the end-to-end suites: seeded registries, the two commands
//! with the flags each registry needs, and byte-for-byte checks with skopeo.

use std::path::{Path, PathBuf};
use std::process::Command;

use airlock_tests::bins::{self, Output, run, run_ok};
use airlock_tests::faults::FaultProxy;
use airlock_tests::images::{Format, Image, ImageBuilder, PushClient, index, layer};
use airlock_tests::registry::Registry;
use airlock_tests::skopeo::inspect_raw_at;

pub const EX_PARTIAL: i32 = 3;
pub const EX_CONFIG: i32 = 64;
pub const EX_DATA: i32 = 65;
pub const EX_UNAVAILABLE: i32 = 69;
pub const EX_INCOMPLETE: i32 = 75;
pub const EX_STATE: i32 = 76;

/// An image placed in the source registry, and how the configuration names it.
pub struct Placed {
    pub image: Image,
    pub repo: String,
    /// How the configuration names it, relative to the registry.
    pub config_ref: String,
    /// How to find it at the destination (relative to the prefix).
    pub dest_ref: String,
}

/// The content every test mirrors: all four manifest types, pretty-printed manifests,
/// references by tag, by digest and by tag@digest, and layers shared across images.
pub fn seed(source: &Registry) -> Vec<Placed> {
    let client = PushClient::new(source).unwrap();
    let base = layer(1, 300_000);
    let mut placed = Vec::new();
    let mut put = |image: Image, repo: &str, tag: Option<&str>, how: &str| {
        image.push(&client, repo, tag).unwrap();
        let (config_ref, dest_ref) = match how {
            "tag" => (
                format!("{repo}:{}", tag.unwrap()),
                format!("{repo}:{}", tag.unwrap()),
            ),
            "digest" => (
                format!("{repo}@{}", image.digest),
                format!("{repo}@{}", image.digest),
            ),
            _ => (
                format!("{repo}:{}@{}", tag.unwrap(), image.digest),
                format!("{repo}:{}", tag.unwrap()),
            ),
        };
        placed.push(Placed {
            image,
            repo: repo.to_string(),
            config_ref,
            dest_ref,
        });
    };
    put(
        ImageBuilder::new(Format::Docker)
            .with_layer(&base)
            .layer(2, 200_000)
            .pretty()
            .build(),
        "team/docker-app",
        Some("1.0"),
        "tag",
    );
    put(
        ImageBuilder::new(Format::Oci)
            .with_layer(&base)
            .layer(3, 150_000)
            .build(),
        "team/oci-app",
        None,
        "digest",
    );
    let amd = ImageBuilder::new(Format::Oci)
        .arch("amd64")
        .with_layer(&base)
        .layer(4, 100_000)
        .build();
    let arm = ImageBuilder::new(Format::Oci)
        .arch("arm64")
        .layer(5, 120_000)
        .build();
    put(
        index(Format::Oci, vec![amd, arm], true),
        "platform/multi-oci",
        Some("v2"),
        "tag",
    );
    let amd = ImageBuilder::new(Format::Docker)
        .arch("amd64")
        .layer(6, 90_000)
        .pretty()
        .build();
    let arm = ImageBuilder::new(Format::Docker)
        .arch("arm64")
        .layer(7, 80_000)
        .pretty()
        .build();
    put(
        index(Format::Docker, vec![amd, arm], true),
        "platform/multi-docker",
        Some("3.1"),
        "both",
    );
    placed
}

/// Pushes `image` to `repo:1` of the source, named so by the configuration.
pub fn push_as_1(client: &PushClient, image: Image, repo: &str) -> Placed {
    image.push(client, repo, Some("1")).unwrap();
    Placed {
        image,
        repo: repo.into(),
        config_ref: format!("{repo}:1"),
        dest_ref: format!("{repo}:1"),
    }
}

/// An imageset of `placed`, created in chunks of `limit` into `tmp/out`
/// (configuration and workspace in `tmp` too); returns `tmp/out`.
pub fn create_of(src: &Registry, tmp: &Path, placed: &[Placed], limit: &str) -> PathBuf {
    let config = write_config(tmp, src, placed, "");
    let out = tmp.join("out");
    let created = create(&config, &out, &tmp.join("ws-c"), limit, src);
    assert_eq!(created.code, 0, "{created}");
    out
}

pub fn write_config(dir: &Path, source: &Registry, placed: &[Placed], extra: &str) -> PathBuf {
    config_naming(&dir.join("isc.yaml"), &source.addr(), placed, extra)
}

/// Writes to `path` an ImageSetConfiguration (`extra` before its `mirror`) of
/// `placed`, named at registry `addr`: the source's, a proxy's in front of it,
/// or one that registries.conf sends elsewhere.
pub fn config_naming(path: &Path, addr: &str, placed: &[Placed], extra: &str) -> PathBuf {
    let mut text =
        String::from("apiVersion: mirror.openshift.io/v2alpha1\nkind: ImageSetConfiguration\n");
    text.push_str(extra);
    text.push_str("mirror:\n  additionalImages:\n");
    for p in placed {
        text.push_str(&format!("  - name: docker://{addr}/{}\n", p.config_ref));
    }
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

/// Source and destination registries, the seeded images and their configuration.
pub struct Setup {
    pub source: Registry,
    pub dest: Registry,
    pub placed: Vec<Placed>,
    pub tmp: tempfile::TempDir,
    pub config: PathBuf,
}

impl Setup {
    pub fn new(source: Registry, dest: Registry) -> Self {
        let placed = seed(&source);
        let tmp = tempfile::tempdir().unwrap();
        let config = write_config(tmp.path(), &source, &placed, "");
        Setup {
            source,
            dest,
            placed,
            tmp,
            config,
        }
    }

    pub fn plain() -> Self {
        Self::new(Registry::plain().unwrap(), Registry::plain().unwrap())
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// `mirror` of `config` straight into the destination under `m/`, with
    /// the workspace `ws`.
    pub fn mirror_cmd(&self, config: &Path, ws: &str) -> Command {
        let mut cmd = bins::connected();
        cmd.arg("mirror")
            .arg("--config")
            .arg(config)
            .arg("--workspace")
            .arg(self.path(ws))
            .arg("--to")
            .arg(format!("docker://{}/m", self.dest.addr()))
            .arg("--dest-tls-verify=false");
        source_flags(&mut cmd, &self.source);
        cmd
    }

    /// The configuration of the seeded images, named at registry `addr`
    /// instead of the source's, written to `name`.
    pub fn config_at(&self, name: &str, addr: &str) -> PathBuf {
        config_naming(&self.path(name), addr, &self.placed, "")
    }

    /// Runs a successful `create` into `out` with the workspace `ws-c`.
    pub fn create(&self, limit: &str) -> (Output, PathBuf) {
        let out = self.path("out");
        let created = create(&self.config, &out, &self.path("ws-c"), limit, &self.source);
        assert_eq!(created.code, 0, "{created}");
        (created, out)
    }

    /// Pushes a new image `extra/late:1` (layer from `seed`) to the source and
    /// returns it with a configuration `isc2.yaml` that adds it to the seeded ones.
    pub fn with_late_image(&self, seed: u64) -> (Placed, PathBuf) {
        let client = PushClient::new(&self.source).unwrap();
        let image = ImageBuilder::new(Format::Oci).layer(seed, 150_000).build();
        image.push(&client, "extra/late", Some("1")).unwrap();
        let mut text = std::fs::read_to_string(&self.config).unwrap();
        text.push_str(&format!(
            "  - name: docker://{}/extra/late:1\n",
            self.source.addr()
        ));
        let config = self.path("isc2.yaml");
        std::fs::write(&config, text).unwrap();
        let placed = Placed {
            image,
            repo: "extra/late".into(),
            config_ref: "extra/late:1".into(),
            dest_ref: "extra/late:1".into(),
        };
        (placed, config)
    }

    pub fn publish(&self, from: &Path, prefix: &str, ws: &str) -> Output {
        publish(from, &self.dest, prefix, &self.path(ws))
    }

    pub fn assert_byte_exact(&self, prefix: &str) {
        assert_byte_exact(&self.source, &self.dest, prefix, &self.placed);
    }
}

pub fn source_flags(cmd: &mut std::process::Command, r: &Registry) {
    if let Some(d) = r.ca_cert_dir() {
        cmd.arg("--src-cert-dir").arg(d);
    } else {
        cmd.arg("--src-tls-verify=false");
    }
    if let Some(a) = r.auth_file() {
        cmd.arg("--authfile").arg(a);
    }
}

pub fn dest_flags(cmd: &mut std::process::Command, r: &Registry) {
    dest_flags_with(cmd, r, r.auth_file().as_deref());
}

/// [`dest_flags`] with the credentials of `auth` instead of the registry's own.
pub fn dest_flags_with(cmd: &mut std::process::Command, r: &Registry, auth: Option<&Path>) {
    if let Some(d) = r.ca_cert_dir() {
        cmd.arg("--dest-cert-dir").arg(d);
    } else {
        cmd.arg("--dest-tls-verify=false");
    }
    if let Some(a) = auth {
        cmd.arg("--authfile").arg(a);
    }
}

/// A connected-side command that writes an imageset (`create`, `delete`) of
/// workspace `ws` into `out`.
pub fn imageset_cmd(verb: &str, config: &Path, out: &Path, ws: &Path) -> Command {
    let mut cmd = bins::connected();
    cmd.arg(verb)
        .arg("--config")
        .arg(config)
        .arg("--out")
        .arg(out)
        .arg("--workspace")
        .arg(ws);
    cmd
}

/// `create` with the flags `source` needs.
pub fn create_cmd(config: &Path, out: &Path, ws: &Path, limit: &str, source: &Registry) -> Command {
    let mut cmd = imageset_cmd("create", config, out, ws);
    cmd.arg("--limit").arg(limit);
    source_flags(&mut cmd, source);
    cmd
}

pub fn create(config: &Path, out: &Path, ws: &Path, limit: &str, source: &Registry) -> Output {
    run(&mut create_cmd(config, out, ws, limit, source))
}

/// `publish` to `dest` under `prefix`, with the flags `dest` needs.
pub fn publish_cmd(from: &Path, dest: &Registry, prefix: &str, ws: &Path) -> Command {
    publish_cmd_with(from, dest, prefix, ws, dest.auth_file().as_deref())
}

/// [`publish_cmd`] with the credentials of `auth` instead of the registry's own.
pub fn publish_cmd_with(
    from: &Path,
    dest: &Registry,
    prefix: &str,
    ws: &Path,
    auth: Option<&Path>,
) -> Command {
    let mut cmd = bins::disconnected();
    cmd.arg("publish")
        .arg("--from")
        .arg(from)
        .arg("--to")
        .arg(format!("docker://{}/{prefix}", dest.addr()));
    cmd.arg("--workspace").arg(ws);
    dest_flags_with(&mut cmd, dest, auth);
    cmd
}

pub fn publish(from: &Path, dest: &Registry, prefix: &str, ws: &Path) -> Output {
    run(&mut publish_cmd(from, dest, prefix, ws))
}

/// `publish` of `from` through `proxy` (plain HTTP) under `prefix`.
pub fn publish_via(proxy: &FaultProxy, from: &Path, prefix: &str, ws: &Path) -> Command {
    let mut cmd = bins::disconnected();
    cmd.arg("publish")
        .arg("--from")
        .arg(from)
        .arg("--to")
        .arg(format!("docker://{}/{prefix}", proxy.addr()))
        .arg("--workspace")
        .arg(ws)
        .arg("--dest-tls-verify=false");
    cmd
}

/// The imageset manifest of the chunk files in `dir`.
pub fn read_manifest(dir: &Path) -> airlock_imageset::ImagesetManifest {
    let f = chunk_files(dir).into_iter().next().expect("a chunk");
    (*airlock_imageset::read::read_head(&f).unwrap().manifest).clone()
}

/// Copies the chunk files of `from` into `to` (made if missing).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in chunk_files(from) {
        std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
    }
}

pub fn chunk_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tar"))
        .collect();
    v.sort();
    v
}

/// Copies chunks into a new directory in a shuffled order under new names, as a
/// file manager or a diode might deliver them.
pub fn carry_shuffled(chunks: &[PathBuf], to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    // Reversed, so that name order is the opposite of chunk order.
    for (i, src) in chunks.iter().rev().enumerate() {
        std::fs::copy(src, to.join(format!("received-{i:03}.bin"))).unwrap();
    }
}

/// Every image, and every child of every index, is byte-identical at the destination.
pub fn assert_byte_exact(source: &Registry, dest: &Registry, prefix: &str, placed: &[Placed]) {
    assert_byte_exact_at(source, dest, placed, |repo| format!("{prefix}/{repo}"));
}

/// [`assert_byte_exact`], each source repository found at the destination
/// repository `at` names.
pub fn assert_byte_exact_at(
    source: &Registry,
    dest: &Registry,
    placed: &[Placed],
    at: impl Fn(&str) -> String,
) {
    for p in placed {
        let src = inspect_raw_at(source, &format!("{}@{}", p.repo, p.image.digest)).unwrap();
        assert_eq!(src, p.image.manifest, "source serves what was pushed");
        let repo = at(&p.repo);
        let tag_or_digest = &p.dest_ref[p.repo.len()..];
        let by_ref = inspect_raw_at(dest, &format!("{repo}{tag_or_digest}")).unwrap();
        assert_eq!(
            by_ref, p.image.manifest,
            "{} at the destination differs",
            p.dest_ref
        );
        let by_digest = inspect_raw_at(dest, &format!("{repo}@{}", p.image.digest)).unwrap();
        assert_eq!(by_digest, p.image.manifest);
        for child in &p.image.children {
            let c = inspect_raw_at(dest, &format!("{repo}@{}", child.digest)).unwrap();
            assert_eq!(c, child.manifest, "child {} of {}", child.digest, p.repo);
        }
    }
}

pub fn catalog(r: &Registry) -> Vec<String> {
    let resp = r
        .http_client()
        .unwrap()
        .get(format!("{}/v2/_catalog", r.url()));
    let resp = match r.credentials() {
        Some((u, p)) => resp.basic_auth(u, Some(p)),
        None => resp,
    };
    let v: serde_json::Value = resp.send().unwrap().json().unwrap();
    v["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// A new minisign key pair `DIR/NAME.key`, `DIR/NAME.pub`, made by `keygen`, and
/// its key id.
pub fn keygen(dir: &Path, name: &str) -> (PathBuf, PathBuf, String) {
    let out = run_ok(
        bins::connected()
            .arg("keygen")
            .arg("--out")
            .arg(dir.join(name)),
    );
    let id = out
        .stdout
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("key id ")
        .to_string();
    (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pub")),
        id,
    )
}

/// `systemd-analyze verify` of the unit `name` (text `unit`), its `ExecStart=`
/// pointed at `binary` (systemd-analyze checks that the program exists). Only
/// complaints about this unit count: the host's own units may be odd.
pub fn systemd_analyze_verify(name: &str, unit: &str, binary: &Path) {
    let analyze = Path::new("/usr/bin/systemd-analyze");
    assert!(
        analyze.exists(),
        "systemd-analyze is missing: install Debian's systemd package (scripts/install-deps does)"
    );
    let installed = format!("ExecStart=/usr/bin/{name} ");
    assert!(
        unit.contains(&installed),
        "{name}: no {installed:?} in\n{unit}"
    );
    let unit = unit.replace(&installed, &format!("ExecStart={} ", binary.display()));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{name}.service"));
    std::fs::write(&path, unit).unwrap();
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(&format!("{name}.service")))
        .collect();
    assert!(out.status.success() && ours.is_empty(), "{name}: {stderr}");
}
