//! Airlock against skopeo, on the same generated data, in the same run.
//!
//! The data set is release-like: about 60 images of 1–3 layers over a few shared
//! base layers, Docker v2s2 and OCI manifests, two multi-platform indexes, random
//! (incompressible) layer bytes; about 1.8 GB of unique blobs at `--scale 1`. Every
//! figure is a wall time and a peak RSS measured with GNU time around the child
//! process, and every comparison is a ratio taken in this run, on this machine.
//! The results are printed as a table and written as JSON (`--results`).
//!
//! Two more runs make their own data after it: create and publish again at the
//! `--growth` scale (memory against the quarter-scale run, throughput against
//! `--scale`), and the catalog-sized run of `--many` small images ([`many`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use airlock_tests::bins;
use airlock_tests::images::{Blob, Format, Image, ImageBuilder, PushClient, digest_of, index};
use airlock_tests::registry::Registry;
use anyhow::{Context, Result, bail};
use clap::Parser;
use limits::{Check, Held};
use rand::{RngCore, SeedableRng};
use serde_json::{Value, json};

mod lag;
mod limits;
mod many;

/// Benchmark options.
#[derive(Debug, Parser)]
#[command(name = "airlock-bench")]
struct Args {
    /// Data-set size: 1 is about 1.8 GB of unique blobs.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench/results/latest.json")]
    results: PathBuf,
    /// Keep the work directory (the chunk files in `out/` and the catalog-sized
    /// run's in `many-out/`, the OCI layout) under DIR
    /// instead of removing it, to profile a command on the same data afterwards.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
    /// Images in the catalog-sized run (many small images over shared bases,
    /// against `skopeo sync`); 0 skips it.
    #[arg(long, default_value_t = 2000, value_name = "N")]
    many: usize,
    /// The larger scale create and publish run at for the growth figures
    /// (memory against the quarter-scale run, throughput against `--scale`); 0 skips it.
    /// Needs about four times its blob bytes free on the temporary directory's disk
    /// (22 GB at 3); the run at `--scale` about eleven times its own (20 GB at 1).
    #[arg(long, default_value_t = 3.0, value_name = "S")]
    growth: f64,
}

/// Wall time, CPU time (user and system) and peak memory of one child process
/// (or the sum, and the largest peak, of several).
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    seconds: f64,
    cpu_seconds: f64,
    /// The kernel's part of `cpu_seconds`: on a VM whose cost of copying into
    /// the page cache and socket buffers moves from minute to minute, the part
    /// that moves (docs/benchmarks.md, stop 45).
    system_seconds: f64,
    rss_mib: f64,
    /// The CPU time of the registry the run read from or wrote to, over the
    /// run, where measured (`None` where not, which is not zero). The
    /// registry shares the tool's cores here, so no run takes less wall time
    /// than the two CPU times together over the cores, and one that keeps
    /// every core busy takes that (docs/benchmarks.md, stop 53).
    registry_cpu_seconds: Option<f64>,
    /// Free memory when the run started (the most of several). On this VM
    /// memory free for a while has been handed back to the host, and a
    /// process that writes into it pays system time for the host to back it
    /// again: the figures that move from run to run move with this
    /// (docs/benchmarks.md, stop 46).
    free_mib: f64,
}

impl Run {
    fn add(self, other: Run) -> Run {
        Run {
            seconds: self.seconds + other.seconds,
            cpu_seconds: self.cpu_seconds + other.cpu_seconds,
            system_seconds: self.system_seconds + other.system_seconds,
            rss_mib: self.rss_mib.max(other.rss_mib),
            registry_cpu_seconds: self
                .registry_cpu_seconds
                .zip(other.registry_cpu_seconds)
                .map(|(a, b)| a + b),
            free_mib: self.free_mib.max(other.free_mib),
        }
    }

    /// A time measured here, of work with no process of its own.
    fn timed(seconds: f64) -> Run {
        Run {
            seconds,
            ..Run::default()
        }
    }
}

/// `run`, with the CPU time `registry` spent meanwhile: the registry's side
/// of a transfer, on cores it shares with the tool.
fn serving(registry: &Registry, run: impl FnOnce() -> Result<Run>) -> Result<Run> {
    let before = registry.cpu_seconds()?;
    let r = run()?;
    Ok(Run {
        registry_cpu_seconds: Some(registry.cpu_seconds()? - before),
        ..r
    })
}

/// `cmd` under GNU time, which writes its wall time, peak RSS and CPU times to
/// `times` (read back with [`read_times`]).
fn under_time(cmd: &Command, times: &Path) -> Command {
    let mut timed = Command::new("/usr/bin/time");
    timed
        .args(["-f", "%e %M %U %S", "-o"])
        .arg(times)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => timed.env(k, v),
            None => timed.env_remove(k),
        };
    }
    timed
}

/// What GNU time wrote for [`under_time`].
fn read_times(times: &Path) -> Result<Run> {
    let text = std::fs::read_to_string(times)?;
    let fields: Vec<f64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("time output")?;
    let [seconds, kib, user, system] = fields[..] else {
        bail!("time output: {text:?}");
    };
    Ok(Run {
        seconds,
        cpu_seconds: user + system,
        system_seconds: system,
        rss_mib: kib / 1024.0,
        ..Run::default()
    })
}

/// `MemFree` of /proc/meminfo, in MiB.
fn free_mib() -> Result<f64> {
    let info = std::fs::read_to_string("/proc/meminfo")?;
    let kib = info
        .lines()
        .find_map(|l| l.strip_prefix("MemFree:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .context("no MemFree in /proc/meminfo")?;
    Ok(kib / 1024.0)
}

/// Runs `cmd` under GNU time; fails with its output if it fails.
fn measure(cmd: &mut Command) -> Result<Run> {
    let tmp = tempfile::NamedTempFile::new()?;
    let free_mib = free_mib()?;
    let out = under_time(cmd, tmp.path())
        .output()
        .context("GNU time (/usr/bin/time) is needed; scripts/install-deps installs it")?;
    if !out.status.success() {
        bail!(
            "{:?} failed: {}\n{}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(Run {
        free_mib,
        ..read_times(tmp.path())?
    })
}

fn random_blob(rng: &mut rand::rngs::StdRng, size: usize) -> Blob {
    let mut bytes = vec![0u8; size];
    rng.fill_bytes(&mut bytes);
    Blob {
        digest: digest_of(&bytes),
        bytes,
        diff_id: None,
    }
}

/// An image pushed to the source.
pub(crate) struct Placed {
    repo: String,
    tag: String,
}

/// Generates the data set into `registry`. Returns the images and the distinct
/// blobs, each with a repository that holds it.
fn generate(registry: &Registry, scale: f64, seed: u64) -> Result<(Vec<Placed>, Vec<Held>)> {
    let client = PushClient::new(registry)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mib = |n: f64| ((n * scale * 1048576.0) as usize).max(4096);
    let bases: Vec<Blob> = (0..6).map(|_| random_blob(&mut rng, mib(96.0))).collect();
    let mut placed = Vec::new();
    let mut distinct = std::collections::BTreeMap::<String, Held>::new();
    for i in 0..60usize {
        let format = if i % 2 == 0 {
            Format::Docker
        } else {
            Format::Oci
        };
        let base = &bases[i % bases.len()];
        let build = |rng: &mut rand::rngs::StdRng, arch: &str, layers: usize| {
            let mut b = ImageBuilder::new(format).arch(arch).with_layer(base);
            for l in 0..layers {
                b = b.with_layer(&random_blob(rng, mib(if l == 0 { 22.0 } else { 11.0 })));
            }
            b.build()
        };
        let image: Image = if i < 2 {
            let amd = build(&mut rng, "amd64", 1);
            let arm = build(&mut rng, "arm64", 1);
            index(format, vec![amd, arm], i == 0)
        } else {
            build(&mut rng, "amd64", i % 3)
        };
        let repo = format!("release/component-{i:02}");
        image.push(&client, &repo, Some("4.20.0"))?;
        for b in image.all_blobs() {
            distinct.entry(b.digest.clone()).or_insert_with(|| Held {
                repo: repo.clone(),
                digest: b.digest.clone(),
                bytes: bytes::Bytes::from(b.bytes.clone()),
            });
        }
        placed.push(Placed {
            repo,
            tag: "4.20.0".into(),
        });
    }
    Ok((placed, distinct.into_values().collect()))
}

fn bytes_of(blobs: &[Held]) -> u64 {
    blobs.iter().map(|h| h.bytes.len() as u64).sum()
}

/// Writes `dir/name`, an ImageSetConfiguration of `placed` at registry `addr`.
fn config(dir: &Path, name: &str, addr: &str, placed: &[Placed]) -> Result<PathBuf> {
    let mut text = String::from(
        "apiVersion: mirror.openshift.io/v2alpha1\nkind: ImageSetConfiguration\nmirror:\n  additionalImages:\n",
    );
    for p in placed {
        text.push_str(&format!("  - name: {}/{}:{}\n", addr, p.repo, p.tag));
    }
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path)
}

fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_file() && e.file_name().to_string_lossy().ends_with(".tar") {
            total += e.metadata()?.len();
        }
    }
    Ok(total)
}

fn airlock_create(config: &Path, out: &Path, ws: &Path) -> Result<Run> {
    measure(
        bins::connected()
            .args([
                "--log-level",
                "warn",
                "create",
                "--limit",
                "700MiB",
                "--src-tls-verify=false",
                "--config",
            ])
            .arg(config)
            .arg("--out")
            .arg(out)
            .arg("--workspace")
            .arg(ws),
    )
}

fn airlock_publish(from: &Path, dest: &Registry, ws: &Path) -> Result<Run> {
    measure(
        bins::disconnected()
            .args([
                "--log-level",
                "warn",
                "publish",
                "--dest-tls-verify=false",
                "--from",
            ])
            .arg(from)
            .arg("--to")
            .arg(format!("docker://{}/m", dest.addr()))
            .arg("--workspace")
            .arg(ws),
    )
}

/// The disconnected agent as a service with `clusters` clusters (a fresh registry
/// each): the imageset's chunk files are renamed into its drop directory, and the
/// time runs until it has verified them, published them to every registry and
/// removed them (which it does only once every cluster has them). Peak memory is
/// the agent process's, over its whole run.
fn agent_fanout(from: &Path, clusters: usize, work: &Path) -> Result<(Run, u64)> {
    let registries: Vec<Registry> = (0..clusters)
        .map(|_| Registry::plain())
        .collect::<Result<_>>()?;
    let site = work.join(format!("agent-{clusters}"));
    let drop = site.join("drop");
    let stage = drop.join(".stage");
    std::fs::create_dir_all(&stage)?;
    let mut config = format!(
        "workspace: {0}/ws\ndropDir: {0}/drop\nquarantineDir: {0}/quarantine\nsettle: 1s\nrescanInterval: 1s\nallowUnsigned: true\nclusters:\n",
        site.display()
    );
    for (i, r) in registries.iter().enumerate() {
        config.push_str(&format!(
            "- name: c{i}\n  registry: docker://{}/m\n  tlsVerify: false\n",
            r.addr()
        ));
    }
    let config_path = site.join("agent.yaml");
    std::fs::write(&config_path, config)?;
    let mut files = Vec::new();
    for e in std::fs::read_dir(from)? {
        let p = e?.path();
        if p.is_file() {
            let staged = stage.join(p.file_name().context("a file name")?);
            std::fs::copy(&p, &staged)?;
            files.push(staged);
        }
    }
    let times = tempfile::NamedTempFile::new()?;
    let mut agent = bins::disconnected();
    agent
        .args(["--log-level", "info", "run", "--config"])
        .arg(&config_path);
    let free_mib = free_mib()?;
    let mut timed = under_time(&agent, times.path());
    timed.stderr(std::fs::File::create(site.join("agent.log"))?);
    let mut child = timed.spawn()?;
    let started = Instant::now();
    for f in &files {
        std::fs::rename(f, drop.join(f.file_name().context("a file name")?))?;
    }
    let pending = || -> Result<usize> {
        Ok(std::fs::read_dir(&drop)?
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .count())
    };
    while pending()? > 0 {
        if started.elapsed().as_secs() > 3600 || child.try_wait()?.is_some() {
            let _ = child.kill();
            bail!(
                "the agent did not publish within an hour (or exited); see its workspace {}",
                site.display()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let seconds = started.elapsed().as_secs_f64();
    // GNU time does not pass signals on: stop the agent itself.
    Command::new("pkill")
        .args(["-TERM", "-P", &child.id().to_string()])
        .status()?;
    child.wait()?;
    // The time runs from the drop, not from the agent's start.
    let run = Run {
        seconds,
        free_mib,
        ..read_times(times.path())?
    };
    // What the agent read from its store to publish, as it logs each fan-out.
    let log = std::fs::read_to_string(site.join("agent.log"))?;
    let store_reads: u64 = log
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("store_read_bytes="))
        .map(str::parse::<u64>)
        .sum::<Result<_, _>>()
        .context("the agent's store_read_bytes")?;
    if store_reads == 0 {
        bail!(
            "the agent logged no store reads; see {}",
            site.join("agent.log").display()
        );
    }
    Ok((run, store_reads))
}

fn skopeo(args: &[String]) -> Result<Run> {
    let policy = std::env::temp_dir().join("airlock-bench-policy.json");
    std::fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )?;
    let mut cmd = Command::new("skopeo");
    bins::isolate_env(&mut cmd);
    cmd.arg("--policy").arg(&policy).args(args);
    measure(&mut cmd)
}

/// One `skopeo copy --all` per image, one after the other (skopeo's own unit of work).
/// Without `--preserve-digests`: an OCI layout cannot hold a Docker manifest list, so
/// skopeo converts it (changing digests, which Airlock never does).
fn skopeo_copy_each(
    placed: &[Placed],
    src: impl Fn(&Placed) -> String,
    dst: impl Fn(&Placed) -> String,
    flags: &[&str],
) -> Result<Run> {
    let mut total = Run::default();
    for p in placed {
        let mut args: Vec<String> = vec!["copy".into(), "--all".into()];
        args.extend(flags.iter().map(|s| s.to_string()));
        args.push(src(p));
        args.push(dst(p));
        total = total.add(skopeo(&args)?);
    }
    Ok(total)
}

struct Scale {
    create: Run,
    publish: Run,
    blob_bytes: u64,
    chunk_bytes: u64,
}

/// Create and publish at one scale, for the memory-growth figure.
fn airlock_at(scale: f64, seed: u64) -> Result<Scale> {
    let source = Registry::plain()?;
    let dest = Registry::plain()?;
    let (placed, blobs) = generate(&source, scale, seed)?;
    let blob_bytes = bytes_of(&blobs);
    drop(blobs);
    let work = tempfile::tempdir()?;
    let isc = config(work.path(), "isc.yaml", &source.addr(), &placed)?;
    let out = work.path().join("out");
    let create = serving(&source, || {
        airlock_create(&isc, &out, &work.path().join("ws-c"))
    })?;
    let chunk_bytes = dir_bytes(&out)?;
    let publish = serving(&dest, || {
        airlock_publish(&out, &dest, &work.path().join("ws-d"))
    })?;
    Ok(Scale {
        create,
        publish,
        blob_bytes,
        chunk_bytes,
    })
}

/// Blob bytes of the data set at scale 1 (1.83 GB in stop 53's run), for the
/// disk check made before the data set exists.
const BLOB_BYTES_AT_SCALE_1: f64 = 1.83e9;

/// The most disk the run at `--scale` holds at once, in its blob bytes: the
/// source registry, the chunk files, skopeo's OCI layout and `dir:` copies,
/// and while the agent runs, its drop directory, store and registries (19.6 GB
/// at scale 1, stop 54).
const DISK_PER_BLOB_BYTE: f64 = 11.0;

/// The same for the growth run, which holds less of the data set at once
/// (20.5 GB at scale 3, stop 54); the run at `--scale` is gone by then.
const GROWTH_DISK_PER_BLOB_BYTE: f64 = 4.0;

/// Bytes of disk the whole run needs at its peak, estimated before the data
/// set exists.
fn disk_needed(args: &Args) -> f64 {
    (DISK_PER_BLOB_BYTE * args.scale).max(GROWTH_DISK_PER_BLOB_BYTE * args.growth)
        * BLOB_BYTES_AT_SCALE_1
}

/// Fails when `free` bytes cannot hold `what` at its peak: a disk that fills up
/// ends a run of many minutes part-way, with nothing written. Checked before
/// the data set is generated, and again before the growth run, when what
/// `--keep` keeps is still on disk.
fn check_disk(what: &str, needs: f64, dir: &Path, free: u64) -> Result<()> {
    if (free as f64) < needs {
        bail!(
            "{what} needs about {:.0} GB free in {} at its peak ({:.0} GB are): free space, or lower --scale, or pass --growth 0 to skip the growth run",
            needs / 1e9,
            dir.display(),
            free as f64 / 1e9
        );
    }
    Ok(())
}

#[allow(clippy::print_stdout, reason = "the table is the benchmark's output")]
fn main() -> Result<()> {
    let args = Args::parse();
    let tmp = std::env::temp_dir();
    check_disk(
        "this run",
        disk_needed(&args),
        &tmp,
        airlock_state::free_space(&tmp)?,
    )?;
    let started = Instant::now();
    let s = args.scale;
    // Before the data set is generated: a --keep that cannot be written to
    // would otherwise fail only after minutes of it.
    let work = match &args.keep {
        Some(dir) => std::fs::create_dir_all(dir)
            .and_then(|()| {
                tempfile::Builder::new()
                    .prefix("airlock-bench-")
                    .tempdir_in(dir)
            })
            .with_context(|| format!("--keep {}", dir.display()))?,
        None => tempfile::tempdir()?,
    };
    println!("generating the data set (scale {s}) …");
    let source = Registry::plain()?;
    let (placed, blobs) = generate(&source, s, 1)?;
    let blob_bytes = bytes_of(&blobs);
    let isc = config(work.path(), "isc.yaml", &source.addr(), &placed)?;
    let src_ref = |p: &Placed| format!("docker://{}/{}:{}", source.addr(), p.repo, p.tag);

    println!("create: Airlock, then skopeo to an OCI layout and to dir: …");
    let out = work.path().join("out");
    let create = serving(&source, || {
        airlock_create(&isc, &out, &work.path().join("ws-c"))
    })?;
    let chunk_bytes = dir_bytes(&out)?;
    let layout = work.path().join("layout");
    let skopeo_oci = serving(&source, || {
        skopeo_copy_each(
            &placed,
            src_ref,
            |p| format!("oci:{}:{}", layout.display(), p.repo.replace('/', "-")),
            &["--src-tls-verify=false"],
        )
    })?;
    let dirs = work.path().join("dirs");
    std::fs::create_dir_all(&dirs)?;
    let skopeo_dir = skopeo_copy_each(
        &placed,
        src_ref,
        |p| format!("dir:{}/{}", dirs.display(), p.repo.replace('/', "-")),
        &["--src-tls-verify=false"],
    )?;
    std::fs::remove_dir_all(&dirs)?;
    println!(
        "the egress limit: every blob from the source registry to disk, {} at once, then hashing each …",
        limits::INFLIGHT
    );
    let egress_dir = work.path().join("egress");
    let egress = serving(&source, || {
        limits::egress(&source, &blobs, &egress_dir, Check::Nothing).map(limit_run)
    })?;
    let egress_sha256 = serving(&source, || {
        limits::egress(&source, &blobs, &egress_dir, Check::Sha256).map(limit_run)
    })?;

    println!("verify: every chunk and blob, against sha256sum of a file of the same size …");
    let verify = measure(
        bins::disconnected()
            .args(["--log-level", "warn", "verify", "--from"])
            .arg(&out),
    )?;
    let same_size = work.path().join("same-size.bin");
    {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut f = std::io::BufWriter::new(std::fs::File::create(&same_size)?);
        let mut left = chunk_bytes;
        let mut buf = vec![0u8; 1 << 20];
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            rng.fill_bytes(&mut buf[..n]);
            std::io::Write::write_all(&mut f, &buf[..n])?;
            left -= n as u64;
        }
    }
    let sha = measure(Command::new("sha256sum").arg(&same_size))?;
    // The sha2 crate on one core, the same code Airlock hashes with (it uses the CPU's
    // SHA extensions where present, which Debian's sha256sum does not).
    let sha2_started = Instant::now();
    {
        use sha2::Digest as _;
        let mut f = std::fs::File::open(&same_size)?;
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = std::io::Read::read(&mut f, &mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let _ = h.finalize();
    }
    let sha2 = Run::timed(sha2_started.elapsed().as_secs_f64());
    std::fs::remove_file(&same_size)?;

    println!("publish: Airlock to an empty registry, then skopeo from the OCI layout to another …");
    let dest = Registry::plain()?;
    let publish = serving(&dest, || {
        airlock_publish(&out, &dest, &work.path().join("ws-d"))
    })?;
    let dest_skopeo = Registry::plain()?;
    let skopeo_publish = serving(&dest_skopeo, || {
        skopeo_copy_each(
            &placed,
            |p| format!("oci:{}:{}", layout.display(), p.repo.replace('/', "-")),
            |p| format!("docker://{}/m/{}:{}", dest_skopeo.addr(), p.repo, p.tag),
            &["--dest-tls-verify=false"],
        )
    })?;

    // Each registry is stopped (its storage removed) once measured: the disk
    // holds a few copies of the data set at a time, not a dozen.
    drop((dest, dest_skopeo));

    println!(
        "the ingest limit: every blob from memory into an empty registry, then hashing each …"
    );
    let ingest_into = |check: Check| -> Result<Run> {
        let fresh = Registry::plain()?;
        serving(&fresh, || {
            limits::ingest(&fresh, &blobs, check).map(limit_run)
        })
    };
    let ingest = ingest_into(Check::Nothing)?;
    let ingest_sha256 = ingest_into(Check::Sha256)?;
    drop(blobs);

    println!("publish to 3 registries against 1 …");
    let (r1, r2, r3) = (Registry::plain()?, Registry::plain()?, Registry::plain()?);
    let ws3 = work.path().join("ws-3");
    let three = airlock_publish(&out, &r1, &ws3)?
        .add(airlock_publish(&out, &r2, &ws3)?)
        .add(airlock_publish(&out, &r3, &ws3)?);
    drop((r1, r2, r3));

    println!("the agent: drop directory → 1 cluster, then → 3 clusters …");
    let (agent_one, _) = agent_fanout(&out, 1, work.path())?;
    let (agent_three, three_store_reads) = agent_fanout(&out, 3, work.path())?;

    println!("differential: one of the 60 images changes …");
    let client = PushClient::new(&source)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(77);
    let new_layer = random_blob(&mut rng, ((20.0 * s * 1048576.0) as usize).max(4096));
    let changed = ImageBuilder::new(Format::Oci)
        .with_layer(&new_layer)
        .build();
    changed.push(&client, &placed[10].repo, Some(&placed[10].tag))?;
    let new_blobs: u64 = changed
        .all_blobs()
        .iter()
        .map(|b| b.bytes.len() as u64)
        .sum();
    let before = dir_bytes(&out)?;
    airlock_create(&isc, &out, &work.path().join("ws-c"))?;
    let shipped = dir_bytes(&out)? - before;

    // What follows makes its own data: the disk holds one data set at a time.
    drop((source, client));
    let kept = args.keep.is_some().then(|| work.keep());
    let work = match &kept {
        Some(dir) => tempfile::Builder::new()
            .prefix("airlock-bench-rest-")
            .tempdir_in(dir)?,
        None => tempfile::tempdir()?,
    };

    let many = match args.many {
        0 => None,
        n => {
            println!("catalog-sized: {n} small images over shared bases, against skopeo sync …");
            Some(many::run(n, work.path(), kept.is_some())?)
        }
    };

    println!("memory at a quarter of the scale …");
    let small = airlock_at(s / 4.0, 2)?;
    let large = match args.growth {
        g if g <= 0.0 => None,
        g => {
            check_disk(
                "the growth run",
                GROWTH_DISK_PER_BLOB_BYTE * g * blob_bytes as f64 / s,
                &tmp,
                airlock_state::free_space(&tmp)?,
            )?;
            println!("growth: create and publish at scale {g} …");
            Some(airlock_at(g, 3)?)
        }
    };

    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let peak = [
        create,
        verify,
        publish,
        three,
        agent_one,
        agent_three,
        small.create,
        small.publish,
    ]
    .iter()
    .map(|r| r.rss_mib)
    .fold(0.0, f64::max);
    // Memory from a quarter of the scale to the growth scale (else scale 1).
    let large_peak = match &large {
        Some(l) => l.create.rss_mib.max(l.publish.rss_mib),
        None => create.rss_mib.max(publish.rss_mib),
    };
    let small_peak = small.create.rss_mib.max(small.publish.rss_mib);
    let rate = |bytes: u64, r: Run| ratio(bytes as f64, r.seconds);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut figures = json!({
        "cores": cores,
        "images": placed.len(),
        "blob_bytes": blob_bytes,
        "chunk_bytes": chunk_bytes,
        "create": run_json(create),
        "skopeo_to_oci_layout": run_json(skopeo_oci),
        "skopeo_to_dir": run_json(skopeo_dir),
        // Measured in this process: its time and CPU, no split, no peak.
        "egress_limit": limit_json(egress),
        "egress_limit_sha256": limit_json(egress_sha256),
        "ingest_limit": limit_json(ingest),
        "ingest_limit_sha256": limit_json(ingest_sha256),
        "verify": run_json(verify),
        "sha256sum_same_size": run_json(sha),
        "sha2_crate_same_size": run_json(sha2),
        "publish": run_json(publish),
        "skopeo_publish_from_oci_layout": run_json(skopeo_publish),
        "publish_to_3_registries": run_json(three),
        "agent_drop_to_1_cluster": run_json(agent_one),
        "agent_drop_to_3_clusters": run_json(agent_three),
        "agent_3_clusters_store_read_bytes": three_store_reads,
        "differential_bytes_shipped": shipped,
        "differential_new_blob_bytes": new_blobs,
        "quarter_scale": {
            "blob_bytes": small.blob_bytes,
            "chunk_bytes": small.chunk_bytes,
            "create": run_json(small.create),
            "publish": run_json(small.publish),
        },
        "wall_seconds": started.elapsed().as_secs_f64(),
    });
    if let Some(l) = &large {
        figures["growth_scale"] = json!({
            "scale": args.growth,
            "blob_bytes": l.blob_bytes,
            "chunk_bytes": l.chunk_bytes,
            "create": run_json(l.create),
            "publish": run_json(l.publish),
        });
    }
    if let Some(m) = &many {
        figures["many"] = m.json.clone();
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let on_every_core = |r: Run| {
        r.registry_cpu_seconds
            .map(|registry| (r.cpu_seconds + registry) / cores as f64)
    };
    let per_gib = |r: Run| ratio(r.cpu_seconds, gib(blob_bytes));
    let mut results = json!({
        "scale": s,
        "create_fraction_of_limit": ratio(egress.seconds, create.seconds),
        "skopeo_create_fraction_of_limit": ratio(egress.seconds, skopeo_oci.seconds),
        "publish_fraction_of_limit": ratio(ingest.seconds, publish.seconds),
        "skopeo_publish_fraction_of_limit": ratio(ingest.seconds, skopeo_publish.seconds),
        "create_fraction_of_sha256_limit": ratio(egress_sha256.seconds, create.seconds),
        "publish_fraction_of_sha256_limit": ratio(ingest_sha256.seconds, publish.seconds),
        "create_cpu_per_gib": per_gib(create),
        "skopeo_create_cpu_per_gib": per_gib(skopeo_oci),
        "publish_cpu_per_gib": per_gib(publish),
        // The most each fraction of its limit could be with the CPU the tool
        // and its registry spent, on these cores: the limit's time over the
        // time that CPU takes with every core busy.
        "create_fraction_of_limit_cpu_bound": on_every_core(create).map(|t| ratio(egress.seconds, t)),
        "publish_fraction_of_limit_cpu_bound": on_every_core(publish).map(|t| ratio(ingest.seconds, t)),
        "skopeo_publish_cpu_per_gib": per_gib(skopeo_publish),
        "agent_cpu_3_clusters_over_1": ratio(agent_three.cpu_seconds, agent_one.cpu_seconds),
        "agent_store_reads_per_cluster": ratio(three_store_reads as f64, 3.0 * blob_bytes as f64),
        "create_speedup_vs_skopeo": ratio(skopeo_oci.seconds, create.seconds),
        "publish_speedup_vs_skopeo": ratio(skopeo_publish.seconds, publish.seconds),
        "publish_3_over_1": ratio(three.seconds, publish.seconds),
        "agent_3_clusters_over_1": ratio(agent_three.seconds, agent_one.seconds),
        "verify_over_sha256_rate": ratio(sha2.seconds, verify.seconds),
        "peak_rss_mib": peak,
        "rss_growth": ratio(large_peak, small_peak),
        "differential_overhead": ratio(shipped as f64, new_blobs as f64) - 1.0,
        "chunk_overhead": ratio(chunk_bytes as f64, blob_bytes as f64) - 1.0,
    });
    if let Some(l) = &large {
        results["create_throughput_growth_over_1"] = json!(ratio(
            rate(l.blob_bytes, l.create),
            rate(blob_bytes, create)
        ));
        results["publish_throughput_growth_over_1"] = json!(ratio(
            rate(l.blob_bytes, l.publish),
            rate(blob_bytes, publish)
        ));
    }
    for (key, value) in many.iter().flat_map(|m| &m.ratios) {
        results[*key] = json!(value);
    }
    results["figures"] = figures;
    println!();
    println!(
        "{:<44} {:>9} {:>9} {:>10} {:>9}",
        "", "seconds", "CPU s", "peak MiB", "ratio"
    );
    println!("(CPU s: the tool's, + its registry's where measured; {cores} cores)");
    let row = |name: &str, r: Run, ratio: Option<f64>| {
        // Times measured in the bench itself have no process to take memory
        // from, and some no CPU time either.
        let shown = |x: f64, digits: usize| match x == 0.0 {
            true => "–".to_string(),
            false => format!("{x:.digits$}"),
        };
        let cpu = match r.registry_cpu_seconds {
            None => shown(r.cpu_seconds, 1),
            Some(registry) => format!("{}+{registry:.1}", shown(r.cpu_seconds, 1)),
        };
        let rss = shown(r.rss_mib, 0);
        println!(
            "{name:<44} {:>9.1} {cpu:>9} {rss:>10} {:>9}",
            r.seconds,
            ratio.map_or(String::new(), |x| format!("{x:.2}"))
        );
    };
    row(
        &format!(
            "create ({:.2} GiB of blobs, 700 MiB limit)",
            gib(blob_bytes)
        ),
        create,
        None,
    );
    row(
        "  skopeo copy --all → OCI layout",
        skopeo_oci,
        Some(ratio(skopeo_oci.seconds, create.seconds)),
    );
    row(
        "  skopeo copy --all → dir:",
        skopeo_dir,
        Some(ratio(skopeo_dir.seconds, create.seconds)),
    );
    row(
        "  egress limit: blobs to disk, no hashing",
        egress,
        Some(ratio(egress.seconds, create.seconds)),
    );
    row(
        "  the same, checking each blob's sha256",
        egress_sha256,
        Some(ratio(egress_sha256.seconds, create.seconds)),
    );
    row(
        "verify every chunk and blob",
        verify,
        Some(ratio(sha2.seconds, verify.seconds)),
    );
    row(
        "  sha2 crate, one core, a file of the same size",
        sha2,
        None,
    );
    row(
        "  sha256sum, a file of the same size",
        sha,
        Some(ratio(sha.seconds, verify.seconds)),
    );
    row("publish to an empty registry", publish, None);
    row(
        "  skopeo copy --all OCI layout → registry",
        skopeo_publish,
        Some(ratio(skopeo_publish.seconds, publish.seconds)),
    );
    row(
        "  ingest limit: blobs from memory, no hashing",
        ingest,
        Some(ratio(ingest.seconds, publish.seconds)),
    );
    row(
        "  the same, checking each blob's sha256",
        ingest_sha256,
        Some(ratio(ingest_sha256.seconds, publish.seconds)),
    );
    row(
        "publish to 3 registries",
        three,
        Some(ratio(three.seconds, publish.seconds)),
    );
    row("agent: drop directory → 1 cluster", agent_one, None);
    row(
        "agent: drop directory → 3 clusters at once",
        agent_three,
        Some(ratio(agent_three.seconds, agent_one.seconds)),
    );
    row("create at 1/4 scale", small.create, None);
    row("publish at 1/4 scale", small.publish, None);
    if let Some(l) = &large {
        row(&format!("create at scale {}", args.growth), l.create, None);
        row(
            &format!("publish at scale {}", args.growth),
            l.publish,
            None,
        );
    }
    for (name, r, x) in many.iter().flat_map(|m| &m.rows) {
        row(name, *r, *x);
    }
    println!();
    for (key, value) in results.as_object().into_iter().flatten() {
        if let Some(v) = value.as_f64().filter(|_| key != "scale") {
            println!("{key:<34} {v:.4}");
        }
    }
    if let Some(dir) = args.results.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &args.results,
        serde_json::to_string_pretty(&results)? + "\n",
    )?;
    println!(
        "\nwrote {} ({:.0} s)",
        args.results.display(),
        started.elapsed().as_secs_f64()
    );
    if let Some(dir) = kept {
        println!(
            "kept the work directories: {} (and {} in it)",
            dir.display(),
            work.keep().display()
        );
    }
    Ok(())
}

/// A limit client's run, timed in this process (limits.rs).
fn limit_run(spent: limits::Spent) -> Run {
    Run {
        seconds: spent.seconds,
        cpu_seconds: spent.cpu_seconds,
        ..Run::default()
    }
}

fn limit_json(r: Run) -> Value {
    with_registry_cpu(
        json!({"seconds": r.seconds, "cpu_seconds": r.cpu_seconds}),
        r,
    )
}

fn run_json(r: Run) -> Value {
    let json = json!({
        "seconds": r.seconds,
        "cpu_seconds": r.cpu_seconds,
        "system_seconds": r.system_seconds,
        "peak_rss_mib": r.rss_mib,
        "free_mib_at_start": r.free_mib,
    });
    with_registry_cpu(json, r)
}

/// `json` with the registry's CPU where it was measured; absent, not zero,
/// where it was not, so that no reader takes a registry for idle.
fn with_registry_cpu(mut json: Value, r: Run) -> Value {
    if let Some(cpu) = r.registry_cpu_seconds {
        json["registry_cpu_seconds"] = json!(cpu);
    }
    json
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_too_small_for_the_run_is_refused_before_it_starts_saying_what_it_needs() {
        let dir = Path::new("/tmp");
        let at = |argv: &[&str], free| {
            let args = Args::parse_from([&["airlock-bench"], argv].concat());
            check_disk("this run", disk_needed(&args), dir, free)
        };
        // Scale 1 peaks at about 20 GB, the growth run at 3 at about 22.
        let refused = at(&[], 21_000_000_000).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "this run needs about 22 GB free in /tmp at its peak (21 GB are): free space, or lower --scale, or pass --growth 0 to skip the growth run"
        );
        at(&[], 23_000_000_000).unwrap();
        at(&["--growth", "0"], 19_000_000_000).unwrap_err();
        at(&["--growth", "0"], 21_000_000_000).unwrap();
        // At a quarter of the scale, the growth run needs the most.
        at(&["--scale", "0.25"], 15_000_000_000).unwrap_err();
        at(&["--scale", "0.25", "--growth", "0"], 15_000_000_000).unwrap();
    }
}
