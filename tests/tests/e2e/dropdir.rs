//! The disconnected agent as a service, fed by a drop directory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use airlock_tests::bins::{self, run, run_ok};
use airlock_tests::registry::Registry;
use airlock_tests::skopeo::inspect_raw_at;

use crate::agent::{Agent, Site, deliver, deliver_one, eventually};
use crate::util::*;

/// Writes `src` to `dst` in pieces, flushed one by one, as a slow transfer does.
fn write_slowly(src: &Path, dst: &Path) {
    let bytes = std::fs::read(src).unwrap();
    let mut f = std::fs::File::create(dst).unwrap();
    for piece in bytes.chunks(bytes.len().div_ceil(3).max(1)) {
        f.write_all(piece).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(60));
    }
}

fn published_everything(dest: &Registry, placed: &[&Placed]) -> bool {
    placed.iter().all(|p| {
        inspect_raw_at(dest, &format!("m/{}", p.dest_ref)).is_ok_and(|b| b == p.image.manifest)
    })
}

/// Waits until `agent` has published `placed` and emptied its drop directory.
fn published_and_drained(agent: &Agent, site: &Site, dest: &Registry, placed: &[&Placed]) {
    eventually(
        Duration::from_secs(90),
        "the imagesets published",
        || published_everything(dest, placed),
        || agent.log(),
    );
    eventually(
        Duration::from_secs(30),
        "the drop directory emptied",
        || site.files("drop").is_empty(),
        || agent.log(),
    );
}

#[test]
fn drop_folder_takes_slow_shuffled_interleaved_files_in_sequence() {
    let s = Setup::plain();
    // Sequence 1 and 2 of one workspace: 2 adds an image.
    let out1 = s.path("out1");
    assert_eq!(
        create(&s.config, &out1, &s.path("ws-c"), "300KiB", &s.source).code,
        0
    );
    let (extra, config2) = s.with_late_image(77);
    let out2 = s.path("out2");
    assert_eq!(
        create(&config2, &out2, &s.path("ws-c"), "300KiB", &s.source).code,
        0
    );

    let site = Site::new();
    let mut agent = Agent::start(&site.config(&s.dest, ""), &[]);
    let f1 = chunk_files(&out1);
    let f2 = chunk_files(&out2);
    // Interleaved, newest first, written slowly; one through a temporary name; one twice.
    let mut order: Vec<&PathBuf> = Vec::new();
    for i in 0..f1.len().max(f2.len()) {
        order.extend(f2.get(i));
        order.extend(f1.get(i));
    }
    let drop = site.path("drop");
    for (i, f) in order.iter().enumerate() {
        let name = f.file_name().unwrap().to_str().unwrap();
        if i == 1 {
            let part = drop.join(format!("{name}.part"));
            write_slowly(f, &part);
            std::fs::rename(&part, drop.join(name)).unwrap();
        } else {
            write_slowly(f, &drop.join(format!("in-{i:02}-{name}")));
        }
    }
    write_slowly(&f1[0], &drop.join("resent-copy.tar"));

    let mut all: Vec<&Placed> = s.placed.iter().collect();
    all.push(&extra);
    published_and_drained(&agent, &site, &s.dest, &all);
    assert!(
        site.files("quarantine").is_empty(),
        "nothing quarantined: {:?}\n{}",
        site.files("quarantine"),
        agent.log()
    );
    assert_eq!(
        site.files("archive").len(),
        f1.len() + f2.len() + 1,
        "every file archived once: {:?}",
        site.files("archive")
    );
    let log = agent.log();
    let (a1, a2) = (
        log.find("sequence=1 ").unwrap(),
        log.find("sequence=2 ").unwrap(),
    );
    assert!(a1 < a2, "accepted in sequence order");
    assert!(
        site.path("ws/cluster-resources/site-a/itms-oc-mirror.yaml")
            .is_file()
    );
    agent.stop();
    assert_byte_exact(&s.source, &s.dest, "m", &s.placed);
}

#[test]
fn bad_files_go_to_quarantine_with_a_reason_and_the_agent_carries_on() {
    let s = Setup::plain();
    let keys = s.path("keys");
    std::fs::create_dir_all(&keys).unwrap();
    run_ok(
        bins::connected()
            .arg("keygen")
            .arg("--out")
            .arg(keys.join("good")),
    );
    run_ok(
        bins::connected()
            .arg("keygen")
            .arg("--out")
            .arg(keys.join("bad")),
    );
    let signed = |key: &str, out: &str, ws: &str| {
        let mut cmd = bins::connected();
        cmd.arg("create")
            .arg("--config")
            .arg(&s.config)
            .arg("--out")
            .arg(s.path(out));
        cmd.arg("--workspace")
            .arg(s.path(ws))
            .arg("--sign-key")
            .arg(keys.join(format!("{key}.key")));
        source_flags(&mut cmd, &s.source);
        run_ok(&mut cmd);
        chunk_files(&s.path(out))
    };
    let bad = signed("bad", "out-bad", "ws-bad");
    let good = signed("good", "out-good", "ws-good");

    let site = Site::new();
    // A truncated file is waited for stallSeconds (its writer may have paused).
    let trust = format!(
        "trust: [{}]\nstallSeconds: 2\n",
        keys.join("good.pub").display()
    );
    let mut agent = Agent::start(&site.config(&s.dest, &trust), &[]);
    let drop = site.path("drop");
    std::fs::write(drop.join("notes.txt"), "not an imageset").unwrap();
    for f in &bad {
        std::fs::copy(f, drop.join(f.file_name().unwrap())).unwrap();
    }
    let truncated = std::fs::read(&good[0]).unwrap();
    std::fs::write(drop.join("cut.tar"), &truncated[..truncated.len() / 2]).unwrap();
    eventually(
        Duration::from_secs(60),
        "the bad files quarantined",
        || site.files("quarantine").len() == 2 * (bad.len() + 2),
        || agent.log(),
    );
    let reason = |name: &str| {
        std::fs::read_to_string(site.path("quarantine").join(format!("{name}.reason"))).unwrap()
    };
    assert!(reason("notes.txt").contains("not an Airlock imageset chunk"));
    assert!(reason("cut.tar").contains("truncated"));
    let bad_name = bad[0].file_name().unwrap().to_str().unwrap();
    assert!(
        reason(bad_name).contains("which is not trusted here"),
        "{}",
        reason(bad_name)
    );
    assert!(catalog(&s.dest).is_empty());

    // The agent is still there, and takes the good imageset.
    for f in &good {
        std::fs::copy(f, drop.join(f.file_name().unwrap())).unwrap();
    }
    eventually(
        Duration::from_secs(60),
        "the good imageset published",
        || published_everything(&s.dest, &s.placed.iter().collect::<Vec<_>>()),
        || agent.log(),
    );
    agent.stop();
}

#[test]
fn sigkill_during_ingest_loses_nothing_and_takes_nothing_twice() {
    let s = Setup::plain();
    let (_, out) = s.create("300KiB");
    let site = Site::new();
    let config = site.config(&s.dest, "");
    for f in chunk_files(&out) {
        std::fs::copy(&f, site.path("drop").join(f.file_name().unwrap())).unwrap();
    }
    for point in ["ingested", "accepted", "published-images"] {
        let mut crashing = Agent::start(&config, &[("AIRLOCK_CRASH_AT", point)]);
        let code = crashing.wait_exit(Duration::from_secs(60));
        assert_ne!(code, Some(0), "the agent must have died at {point}");
        assert!(crashing.log().contains(point), "{}", crashing.log());
        assert_eq!(
            site.files("drop").len(),
            chunk_files(&out).len(),
            "nothing lost from the drop directory"
        );
    }
    let mut agent = Agent::start(&config, &[]);
    eventually(
        Duration::from_secs(60),
        "the imageset archived",
        || site.files("drop").is_empty(),
        || agent.log(),
    );
    agent.stop();
    assert_eq!(
        site.files("archive").len(),
        chunk_files(&out).len(),
        "each file archived once"
    );
    s.assert_byte_exact("m");
}

#[test]
fn a_bad_agent_configuration_stops_it_before_it_touches_anything() {
    let site = Site::new();
    let dest = Registry::plain().unwrap();
    let config = site.config(&dest, "");
    // `run --check` accepts the good file and opens nothing.
    let out = run(bins::disconnected()
        .args(["run", "--check", "--config"])
        .arg(&config));
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(
        out.stdout.trim(),
        format!("configuration OK: {}", config.display())
    );
    assert!(!site.path("ws").exists(), "no workspace created");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("tlsVerify: false", "tlsVerify: maybe");
    std::fs::write(&config, text).unwrap();
    for check in [&["--check"][..], &[]] {
        let out = run(bins::disconnected()
            .arg("run")
            .args(check)
            .arg("--config")
            .arg(&config));
        assert_eq!(out.code, EX_CONFIG, "{check:?}: {out}");
        assert!(
            out.stderr
                .contains("agent.yaml:12:14: clusters[0].tlsVerify: invalid type"),
            "{out}"
        );
        assert!(!site.path("ws").exists(), "no workspace created");
    }
}

#[test]
fn the_agent_tells_systemd_it_is_ready_feeds_the_watchdog_and_says_when_it_stops() {
    use std::os::unix::net::UnixDatagram;
    let dest = Registry::plain().unwrap();
    let site = Site::new();
    let config = site.config(&dest, "");
    // systemd's side of Type=notify: a datagram socket named by NOTIFY_SOCKET.
    let socket_path = site.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let agent = bins::disconnected();
    // WATCHDOG_PID must be the agent's own pid, as systemd sets it: the shell
    // exports its pid and execs the agent into it.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"WATCHDOG_PID=$$ exec "$0" "$@""#)
        .arg(agent.get_program())
        .args(["run", "--config"])
        .arg(&config)
        .env_clear()
        .envs(agent.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let mut next = || {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a notification within 30 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = next();
    assert!(first.starts_with("READY=1\n"), "{first}");
    assert!(
        first.contains("STATUS=watching the drop directory"),
        "{first}"
    );
    // Pings at half of WATCHDOG_USEC: two in a row prove they repeat.
    assert_eq!(next(), "WATCHDOG=1\n");
    assert_eq!(next(), "WATCHDOG=1\n");
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let stopping = std::iter::repeat_with(&mut next)
        .find(|m| m != "WATCHDOG=1\n")
        .unwrap();
    assert_eq!(stopping, "STOPPING=1\n");
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn the_systemd_units_pass_systemd_analyze_verify() {
    for (name, binary) in [
        ("airlock-disconnected", bins::disconnected()),
        ("airlock-connected", bins::connected()),
    ] {
        let unit = std::fs::read_to_string(
            airlock_tests::repo_dir().join(format!("deploy/systemd/{name}.service")),
        )
        .unwrap();
        assert!(unit.contains("Type=notify") && unit.contains("NoNewPrivileges=yes"));
        systemd_analyze_verify(name, &unit, Path::new(binary.get_program()));
    }
}

/// Upload sessions a registry holds open: started, neither finished nor cancelled.
fn open_uploads(registry: &Registry) -> Vec<PathBuf> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.file_name().is_some_and(|n| n == "_uploads") {
                found.extend(std::fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
            } else if p.is_dir() {
                walk(&p, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(&registry.storage_dir(), &mut found);
    found
}

/// Blobs a registry holds.
fn blobs(registry: &Registry) -> usize {
    let dir = registry
        .storage_dir()
        .join("docker/registry/v2/blobs/sha256");
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|d| std::fs::read_dir(d.path()).map_or(0, |e| e.count()))
        .sum()
}

#[test]
fn sigterm_mid_upload_finishes_the_blobs_under_way_and_exits_cleanly() {
    use airlock_tests::proxy::{Direction, SlowProxy};
    let s = Setup::plain();
    let (_, out) = s.create("1GiB");
    // The cluster's registry is reached through a proxy that holds uploads mid-layer.
    let proxy = SlowProxy::start(&s.dest.addr(), Direction::Upload, 400_000).unwrap();
    let site = Site::new();
    // One upload at a time: at the stall one blob is under way and others wait.
    let config = site.config(&s.dest, "stopGraceSeconds: 60\nparallel: 1\n");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace(&s.dest.addr(), &proxy.addr())).unwrap();
    let mut agent = Agent::start(&config, &[]);
    deliver(&out, &site.path("drop"));
    proxy.wait_stalled(Duration::from_secs(60)).unwrap();
    assert!(
        !open_uploads(&s.dest).is_empty(),
        "uploads are under way at the stall"
    );
    let blobs_at_stall = blobs(&s.dest);

    agent.signal("TERM");
    eventually(
        Duration::from_secs(30),
        "the agent stopping",
        || agent.log().contains("finishing the uploads under way"),
        || agent.log(),
    );
    proxy.release();
    assert_eq!(
        agent.wait_exit(Duration::from_secs(60)),
        Some(0),
        "{}",
        agent.log()
    );
    let log = agent.log();
    assert!(log.contains("uploads under way finished"), "{log}");
    assert_eq!(
        open_uploads(&s.dest),
        Vec::<PathBuf>::new(),
        "every upload under way was finished, none left half-done\n{log}"
    );
    assert!(
        blobs(&s.dest) > blobs_at_stall,
        "the blobs under way are in the registry\n{log}"
    );
    // The waiting ones were not started: the imageset is not published yet.
    assert!(log.contains("publishing stopped"), "{log}");
    assert!(!log.contains("publishing to this cluster failed"), "{log}");
    assert_eq!(
        site.files("drop").len(),
        chunk_files(&out).len(),
        "the imageset stays until it is published\n{log}"
    );

    // The next start publishes the rest.
    let mut again = Agent::start(&config, &[]);
    eventually(
        Duration::from_secs(60),
        "the rest published after the restart",
        || site.files("drop").is_empty(),
        || again.log(),
    );
    again.stop();
    s.assert_byte_exact("m");
}

/// Log lines and CPU the agent spends over `window` while nothing changes.
fn idle_cost(agent: &Agent, window: Duration) -> (usize, Duration, String) {
    let (lines, cpu) = (agent.log().lines().count(), agent.cpu_time());
    // A measurement window, not a synchronisation: the test asserts what the
    // agent does while it has nothing to do.
    std::thread::sleep(window);
    let log = agent.log();
    let added: Vec<&str> = log.lines().skip(lines).collect();
    (added.len(), agent.cpu_time() - cpu, added.join("\n"))
}

/// An imageset still arriving (1 of several chunks) and then a cluster whose
/// registry is down are normal states that last hours; the agent says each once and
/// waits without spinning (it once wrote hundreds of lines a second at 30-60% CPU).
#[test]
fn the_agent_waits_quietly_for_chunks_and_for_a_registry_that_is_down() {
    let s = Setup::plain();
    let out = s.path("out");
    assert_eq!(
        create(&s.config, &out, &s.path("ws-c"), "300KiB", &s.source).code,
        0
    );
    let files = chunk_files(&out);
    assert!(files.len() >= 3, "{files:?}");
    let mut dest = Registry::plain().unwrap();
    let site = Site::new();
    let agent = Agent::start(&site.config(&dest, ""), &[]);
    let drop = site.path("drop");
    eventually(
        Duration::from_secs(30),
        "the agent to watch its drop folder",
        || agent.log().contains("watching the drop directory"),
        || agent.log(),
    );

    // One chunk of several, written in place (no rename: the agent judges it by
    // time): the imageset waits for the others.
    std::fs::copy(&files[0], drop.join(files[0].file_name().unwrap())).unwrap();
    eventually(
        Duration::from_secs(30),
        "the agent to say what it waits for",
        || agent.log().contains("chunk files missing"),
        || agent.log(),
    );
    let (lines, cpu, log) = idle_cost(&agent, Duration::from_secs(12));
    // The state was said when it began; nothing changed since.
    assert!(
        lines <= 2,
        "{lines} log lines in 12 s while waiting for chunks:\n{log}"
    );
    assert!(
        cpu <= Duration::from_secs(1),
        "{cpu:?} of CPU in 12 s while waiting for chunks"
    );

    // The rest arrive while the cluster's registry is down.
    dest.stop();
    for f in &files[1..] {
        std::fs::copy(f, drop.join(f.file_name().unwrap())).unwrap();
    }
    eventually(
        Duration::from_secs(60),
        "the agent to report the registry down",
        || agent.log().contains("retrying with backoff"),
        || agent.log(),
    );
    let (lines, cpu, log) = idle_cost(&agent, Duration::from_secs(12));
    // A failure per retry, the pause doubling from a second: a handful.
    assert!(
        lines <= 8,
        "{lines} log lines in 12 s with the registry down:\n{log}"
    );
    assert!(
        cpu <= Duration::from_secs(1),
        "{cpu:?} of CPU in 12 s with the registry down"
    );
    // An empty workspace takes nothing in before a registry says whether an
    // earlier machine recorded a later state there.
    assert!(
        agent
            .log()
            .contains("imagesets wait: the workspace is empty"),
        "{}",
        agent.log()
    );
    assert!(!agent.log().contains("imageset verified and accepted"));

    // The registry returns: the backoff ends, and everything is published.
    dest.start_again().unwrap();
    let placed: Vec<&Placed> = s.placed.iter().collect();
    eventually(
        Duration::from_secs(90),
        "the imageset published once the registry is back",
        || published_everything(&dest, &placed),
        || agent.log(),
    );
}

/// A writer that pauses longer than settleSeconds does not lose its file: a file
/// shorter than its own manifest says is waited for; once it stops changing for
/// stallSeconds it is quarantined as truncated, and a complete file sent again under
/// the same name replaces the partial one there.
#[test]
fn a_stalled_writer_is_waited_for_and_a_complete_resend_replaces_its_partial_file() {
    let s = Setup::plain();
    let (_, out) = s.create("100MiB");
    let files = chunk_files(&out);
    assert_eq!(files.len(), 1, "{files:?}");
    let bytes = std::fs::read(&files[0]).unwrap();
    let name = files[0].file_name().unwrap().to_owned();
    let placed: Vec<&Placed> = s.placed.iter().collect();

    // The writer stops half-way for longer than settleSeconds, then finishes.
    let dest = Registry::plain().unwrap();
    let site = Site::new();
    let agent = Agent::start(&site.config(&dest, "stallSeconds: 600\n"), &[]);
    let target = site.path("drop").join(&name);
    std::fs::write(&target, &bytes[..bytes.len() / 2]).unwrap();
    eventually(
        Duration::from_secs(30),
        "the agent to wait for the rest of the file",
        || agent.log().contains("waiting for the rest"),
        || agent.log(),
    );
    std::fs::OpenOptions::new()
        .append(true)
        .open(&target)
        .unwrap()
        .write_all(&bytes[bytes.len() / 2..])
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "the imageset published once its file is whole",
        || published_everything(&dest, &placed),
        || agent.log(),
    );
    assert!(site.files("quarantine").is_empty(), "{}", agent.log());
    drop(agent);

    // A writer that never comes back: quarantined after stallSeconds; the complete
    // file sent again takes its place.
    let dest = Registry::plain().unwrap();
    let site = Site::new();
    let agent = Agent::start(&site.config(&dest, "stallSeconds: 2\n"), &[]);
    std::fs::write(site.path("drop").join(&name), &bytes[..bytes.len() / 3]).unwrap();
    let partial = name.to_string_lossy().into_owned();
    eventually(
        Duration::from_secs(30),
        "the stalled file quarantined",
        || site.files("quarantine").contains(&partial),
        || agent.log(),
    );
    deliver_one(&files[0], &site.path("drop"));
    eventually(
        Duration::from_secs(60),
        "the resent imageset published",
        || published_everything(&dest, &placed),
        || agent.log(),
    );
    eventually(
        Duration::from_secs(30),
        "the partial copy gone from quarantine",
        || site.files("quarantine").is_empty(),
        || agent.log(),
    );
}

/// Regression (issue 29): an imageset sent again after it was taken in once filled
/// the log with a line per rescan. A copy is reported once, is not published again,
/// and its files leave the drop directory as published ones do, also when the
/// agent was restarted in between and no longer remembers it.
#[test]
fn a_resent_imageset_is_reported_once_and_not_published_again() {
    let s = Setup::plain();
    let out = s.path("out");
    assert_eq!(
        create(&s.config, &out, &s.path("ws-c"), "300KiB", &s.source).code,
        0
    );
    let files = chunk_files(&out);
    assert!(files.len() > 2, "several chunks: {files:?}");
    let site = Site::new();
    let config = site.config(&s.dest, "");
    let drop = site.path("drop");
    let placed: Vec<&Placed> = s.placed.iter().collect();
    let resend_one_by_one = |agent: &Agent| {
        for f in &files {
            let name = f.file_name().unwrap();
            std::fs::copy(f, drop.join(name)).unwrap();
            eventually(
                Duration::from_secs(30),
                "the copy leaves the drop directory",
                || !drop.join(name).exists(),
                || agent.log(),
            );
        }
    };

    let mut agent = Agent::start(&config, &[]);
    for f in &files {
        std::fs::copy(f, drop.join(f.file_name().unwrap())).unwrap();
    }
    published_and_drained(&agent, &site, &s.dest, &placed);
    let published = |log: &str| log.matches("image published").count();
    let before = agent.log();
    resend_one_by_one(&agent);
    agent.stop();
    let mut again = Agent::start(&config, &[]);
    resend_one_by_one(&again);
    again.stop();

    let log = again.log();
    let added = &log[before.len()..];
    assert_eq!(
        added.matches("a copy and are not taken in again").count(),
        1,
        "one line for the copy sent after the restart, none for the one the agent remembered:\n{added}"
    );
    assert_eq!(published(added), 0, "nothing published again:\n{added}");
    assert_eq!(
        added
            .matches("published everywhere; file moved to the archive")
            .count(),
        2 * files.len(),
        "every copied file archived:\n{added}"
    );
    assert!(site.files("quarantine").is_empty(), "{added}");
    assert!(published(&before) >= placed.len());
}
