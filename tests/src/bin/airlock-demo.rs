//! The README's first command: create → carry → publish on this machine, end to end.
//!
//! Starts a source registry seeded with generated sample images and an empty mirror
//! registry (both real `docker-registry` processes on free loopback ports), writes
//! an ImageSetConfiguration, runs `airlock-connected create` with a 1 MiB limit,
//! copies the chunks to a "USB stick" directory in reverse order, runs
//! `airlock-disconnected publish`, and shows with skopeo that every image at the
//! mirror has its source digest. Then the same as the services a site runs (see
//! [`services`]), ending with what `airlockctl` shows and every digest checked
//! at both clusters' registries.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use airlock_tests::bins;
use airlock_tests::images::digest_of;
use airlock_tests::images::{Format, ImageBuilder, PushClient, index, layer};
use airlock_tests::registry::Registry;
use airlock_tests::skopeo::inspect_raw_at;
use anyhow::{Result, bail};

#[allow(clippy::print_stdout, reason = "the demo's narration is its output")]
fn main() -> Result<()> {
    let work = tempfile::tempdir()?;
    let source = Registry::plain()?;
    let mirror = Registry::plain()?;
    println!(
        "source registry: {}   mirror registry: {}",
        source.addr(),
        mirror.addr()
    );

    let client = PushClient::new(&source)?;
    let base = layer(100, 4 << 20);
    let images = [
        (
            "demo/web",
            "1.0",
            ImageBuilder::new(Format::Docker)
                .with_layer(&base)
                .layer(101, 1 << 20)
                .pretty()
                .build(),
        ),
        (
            "demo/api",
            "2.3",
            ImageBuilder::new(Format::Oci)
                .with_layer(&base)
                .layer(102, 2 << 20)
                .build(),
        ),
        (
            "demo/agent",
            "latest",
            index(
                Format::Oci,
                vec![
                    ImageBuilder::new(Format::Oci)
                        .arch("amd64")
                        .layer(103, 1 << 20)
                        .build(),
                    ImageBuilder::new(Format::Oci)
                        .arch("arm64")
                        .layer(104, 1 << 20)
                        .build(),
                ],
                true,
            ),
        ),
    ];
    let mut config = String::from(
        "apiVersion: mirror.openshift.io/v2alpha1\nkind: ImageSetConfiguration\nmirror:\n  additionalImages:\n",
    );
    for (repo, tag, image) in &images {
        image.push(&client, repo, Some(tag))?;
        config.push_str(&format!("  - name: {}/{repo}:{tag}\n", source.addr()));
        println!("seeded {}/{repo}:{tag}  {}", source.addr(), image.digest);
    }
    let isc = work.path().join("isc.yaml");
    std::fs::write(&isc, &config)?;
    println!("\n{}:\n{config}", isc.display());

    let out = work.path().join("outbox");
    let started = Instant::now();
    let mut create = bins::connected();
    create
        .args([
            "create",
            "--src-tls-verify=false",
            "--limit",
            "1MiB",
            "--config",
        ])
        .arg(&isc);
    create
        .arg("--out")
        .arg(&out)
        .arg("--workspace")
        .arg(work.path().join("connected"));
    step(&mut create)?;
    let create_time = started.elapsed();

    let usb = work.path().join("usb");
    std::fs::create_dir_all(&usb)?;
    let mut chunks: Vec<_> = std::fs::read_dir(&out)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    chunks.sort();
    for c in chunks.iter().rev() {
        std::fs::copy(c, usb.join(c.file_name().expect("file name")))?;
    }
    println!(
        "carried {} chunk files to {}\n",
        chunks.len(),
        usb.display()
    );

    let started = Instant::now();
    let mut publish = bins::disconnected();
    publish
        .args(["publish", "--dest-tls-verify=false", "--from"])
        .arg(&usb);
    publish
        .arg("--to")
        .arg(format!("docker://{}/mirror", mirror.addr()));
    publish.arg("--workspace").arg(work.path().join("site"));
    step(&mut publish)?;
    let publish_time = started.elapsed();

    println!("what the mirror serves (checked with skopeo inspect --raw):");
    for (repo, tag, image) in &images {
        let bytes = inspect_raw_at(&mirror, &format!("mirror/{repo}:{tag}"))?;
        let same = digest_of(&bytes) == image.digest;
        println!(
            "  {}/mirror/{repo}:{tag}  {}  {}",
            mirror.addr(),
            digest_of(&bytes),
            if same { "= source" } else { "DIFFERS" }
        );
        if !same {
            bail!("{repo}:{tag} differs at the mirror");
        }
    }
    let resources = work
        .path()
        .join("site/cluster-resources/itms-oc-mirror.yaml");
    println!(
        "\n{}:\n{}",
        resources.display(),
        std::fs::read_to_string(&resources)?
    );
    println!(
        "create {:.2}s, publish {:.2}s",
        create_time.as_secs_f64(),
        publish_time.as_secs_f64()
    );
    services(work.path(), &source, &client, &isc, &config, &images)
}

/// The same work as the two services a site runs: the connected agent creating
/// on a short schedule into its outbox, a copy loop standing in for the diode
/// (whole files appear in the drop folder by rename), and the disconnected agent
/// publishing to two clusters' registries, with its control plane on mutual TLS
/// (certificates from deploy/make-certs.sh) and `airlockctl` asking it.
#[allow(clippy::print_stdout, reason = "the demo's narration is its output")]
fn services(
    work: &Path,
    source: &Registry,
    client: &PushClient,
    isc: &Path,
    config: &str,
    images: &[(&str, &str, airlock_tests::images::Image)],
) -> Result<()> {
    println!(
        "\n--- the same as services: connected agent → diode → disconnected agent → 2 clusters ---\n"
    );
    let clusters = [
        ("site-a", Registry::plain()?),
        ("site-b", Registry::plain()?),
    ];
    let pki = work.join("pki");
    let made = Command::new(airlock_tests::repo_dir().join("deploy/make-certs.sh"))
        .arg(&pki)
        .arg("127.0.0.1,localhost")
        .arg("admin")
        .output()?;
    if !made.status.success() {
        bail!(
            "deploy/make-certs.sh: {}",
            String::from_utf8_lossy(&made.stderr)
        );
    }
    let (outbox, drop) = (work.join("svc-outbox"), work.join("svc-drop"));
    for d in [
        &outbox,
        &drop,
        &work.join("svc-quarantine"),
        &work.join("svc-archive"),
    ] {
        std::fs::create_dir_all(d)?;
    }
    let connected_yaml = work.join("connected-agent.yaml");
    std::fs::write(
        &connected_yaml,
        format!(
            "imageSetConfig: {}\nworkspace: {}\noutbox: {}\nkeep: 2\nschedule:\n  interval: 2s\nlimit: 1MiB\nsource:\n  tlsVerify: false\n",
            isc.display(),
            work.join("svc-connected").display(),
            outbox.display()
        ),
    )?;
    let port = airlock_tests::registry::free_port()?;
    let mut disconnected = format!(
        "workspace: {w}/svc-site\ndropDir: {d}\nquarantineDir: {w}/svc-quarantine\nafterPublish: archive\narchiveDir: {w}/svc-archive\nsettle: 1s\nrescanInterval: 1s\nstopGrace: 2s\nallowUnsigned: true\ngrpc:\n  listen: 127.0.0.1:{port}\n  tls:\n    cert: {p}/agent.crt\n    key: {p}/agent.key\n    clientCA: {p}/ca.crt\nclusters:\n",
        w = work.display(),
        d = drop.display(),
        p = pki.display(),
    );
    for (name, registry) in &clusters {
        disconnected.push_str(&format!(
            "- name: {name}\n  registry: docker://{}/mirror\n  tlsVerify: false\n",
            registry.addr()
        ));
    }
    let disconnected_yaml = work.join("disconnected-agent.yaml");
    std::fs::write(&disconnected_yaml, &disconnected)?;
    println!("{}:\n{disconnected}", disconnected_yaml.display());

    let log = |name: &str| std::fs::File::create(work.join(name));
    let connected = Service::start(
        bins::connected()
            .args(["run", "--config"])
            .arg(&connected_yaml)
            .stderr(log("connected.log")?),
    )?;
    let disconnected = Service::start(
        bins::disconnected()
            .args(["run", "--config"])
            .arg(&disconnected_yaml)
            .stderr(log("disconnected.log")?),
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let diode = {
        let (outbox, drop, stop) = (outbox.clone(), drop.clone(), stop.clone());
        std::thread::spawn(move || carry(&outbox, &drop, &stop))
    };
    let ctl = |args: &[&str]| -> Result<String> {
        let out = bins::airlockctl()
            .arg("--server")
            .arg(format!("https://127.0.0.1:{port}"))
            .arg("--ca")
            .arg(pki.join("ca.crt"))
            .arg("--cert")
            .arg(pki.join("clients/admin.crt"))
            .arg("--key")
            .arg(pki.join("clients/admin.key"))
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "airlockctl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let at_sequence = |n: u64| -> bool {
        ctl(&["clusters", "-o", "json"])
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.as_array().cloned())
            .is_some_and(|cs| {
                cs.len() == clusters.len() && cs.iter().all(|c| c["publishedSequence"] == n)
            })
    };
    wait(
        Duration::from_secs(60),
        "sequence 1 on both clusters",
        || at_sequence(1),
        work,
    )?;
    println!(
        "sequence 1 reached both clusters; a new image appears upstream and is added to the configuration"
    );
    let extra = ImageBuilder::new(Format::Oci).layer(105, 1 << 20).build();
    extra.push(client, "demo/worker", Some("0.9"))?;
    std::fs::write(
        isc,
        format!("{config}  - name: {}/demo/worker:0.9\n", source.addr()),
    )?;
    wait(
        Duration::from_secs(60),
        "sequence 2 on both clusters",
        || at_sequence(2),
        work,
    )?;
    println!("$ airlockctl clusters\n{}", ctl(&["clusters"])?);
    println!("$ airlockctl imagesets\n{}", ctl(&["imagesets"])?);
    stop.store(true, Ordering::Relaxed);
    let _ = diode.join();

    println!("what each cluster's registry serves (checked with skopeo inspect --raw):");
    let all = images
        .iter()
        .map(|(repo, tag, image)| (*repo, *tag, image))
        .chain([("demo/worker", "0.9", &extra)]);
    for (repo, tag, image) in all {
        for (name, registry) in &clusters {
            let bytes = inspect_raw_at(registry, &format!("mirror/{repo}:{tag}"))?;
            if digest_of(&bytes) != image.digest {
                bail!("{repo}:{tag} differs at {name}");
            }
        }
        println!(
            "  mirror/{repo}:{tag}  {}  = source on {}",
            image.digest,
            clusters
                .iter()
                .map(|c| c.0)
                .collect::<Vec<_>>()
                .join(" and ")
        );
    }
    std::mem::drop((connected, disconnected));
    println!("\nservices stopped");
    Ok(())
}

/// A service process, stopped (SIGTERM, then waited for) however the demo ends.
struct Service(std::process::Child);

impl Service {
    fn start(cmd: &mut Command) -> Result<Self> {
        Ok(Service(cmd.stdout(std::process::Stdio::null()).spawn()?))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        // Uploads under way get the grace the configuration gives; then it goes.
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The diode: every file of each complete imageset in the outbox, copied to the
/// drop folder under a hidden name and renamed into place, once.
fn carry(outbox: &Path, drop: &Path, stop: &AtomicBool) {
    let mut carried = std::collections::BTreeSet::new();
    while !stop.load(Ordering::Relaxed) {
        let sets = std::fs::read_dir(outbox).into_iter().flatten().flatten();
        for set in sets.filter(|e| !e.file_name().to_string_lossy().starts_with('.')) {
            for file in std::fs::read_dir(set.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = file.file_name();
                if carried.contains(&name) {
                    continue;
                }
                // Carried once, when whole; a copy that failed is tried again.
                let partial = drop.join(format!(".{}.part", name.to_string_lossy()));
                if std::fs::copy(file.path(), &partial).is_ok()
                    && std::fs::rename(&partial, drop.join(&name)).is_ok()
                {
                    carried.insert(name);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Polls `done` until it holds, or fails after `limit` naming what was awaited
/// and where the services' logs are.
fn wait(limit: Duration, what: &str, done: impl Fn() -> bool, work: &Path) -> Result<()> {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > limit {
            // The work directory goes with the demo: the logs' ends go with the error.
            let tail = |name: &str| {
                let text = std::fs::read_to_string(work.join(name)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(20)..].join("\n")
            };
            bail!(
                "{what}: not after {} s\n--- connected agent\n{}\n--- disconnected agent\n{}",
                limit.as_secs(),
                tail("connected.log"),
                tail("disconnected.log")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

#[allow(clippy::print_stdout, reason = "the demo's narration is its output")]
fn step(cmd: &mut Command) -> Result<()> {
    let program = std::path::Path::new(cmd.get_program())
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    println!("$ {program} {}", args.join(" "));
    let out = cmd.env("RUST_LOG", "warn").output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr));
    }
    println!();
    Ok(())
}
