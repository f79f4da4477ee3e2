//! The connected agent as a service: imagesets on a schedule and on demand, into
//! an outbox that keeps the last few.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use airlock_tests::bins;

use crate::agent::eventually;
use crate::util::*;

fn sets(outbox: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(outbox)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn kill(child: &std::process::Child, signal: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(ok.success());
}

pub(crate) fn agent_config(s: &Setup, isc: &Path, schedule: &str) -> PathBuf {
    let text = format!(
        "imageSetConfig: {}\nworkspace: {}\noutbox: {}\nkeep: 1\nschedule:\n  {schedule}\nlimit: 300KiB\nsource:\n  tlsVerify: false\n",
        isc.display(),
        s.path("ws-c").display(),
        s.path("outbox").display()
    );
    let p = s.path("connected.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn the_connected_agent_creates_on_schedule_and_on_demand_and_keeps_the_last_sets() {
    let s = Setup::plain();
    // The agent reads the configuration at every run: start with the seeded one.
    let isc = s.path("live-isc.yaml");
    std::fs::copy(&s.config, &isc).unwrap();
    let config = agent_config(&s, &isc, "interval: 1h");
    let log = s.path("connected.log");
    let mut cmd = bins::connected();
    cmd.args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut child = cmd.spawn().unwrap();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let outbox = s.path("outbox");

    // An interval schedule runs at start.
    eventually(
        Duration::from_secs(60),
        "the first imageset in the outbox",
        || sets(&outbox).len() == 1,
        read_log,
    );
    let first = sets(&outbox)[0].clone();
    assert!(first.starts_with("000001-"), "{first}");
    let published = s.publish(&outbox.join(&first), "m", "ws-d");
    assert_eq!(published.code, 0, "{published}");
    s.assert_byte_exact("m");

    // On demand with nothing new: no set.
    kill(&child, "USR1");
    eventually(
        Duration::from_secs(60),
        "the unchanged run",
        || read_log().contains("no imageset made"),
        read_log,
    );
    assert_eq!(sets(&outbox), vec![first]);

    // A new image, on demand: sequence 2, and with keep: 1 the first set goes.
    let (extra, isc2) = s.with_late_image(55);
    std::fs::copy(&isc2, &isc).unwrap();
    kill(&child, "USR1");
    eventually(
        Duration::from_secs(60),
        "the second imageset replacing the first",
        || sets(&outbox).len() == 1 && sets(&outbox)[0].starts_with("000002-"),
        read_log,
    );
    let second = sets(&outbox)[0].clone();
    let published = s.publish(&outbox.join(&second), "m", "ws-d");
    assert_eq!(published.code, 0, "{published}");
    assert_byte_exact(&s.source, &s.dest, "m", &[extra]);

    kill(&child, "TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}\n{}", read_log());
    assert!(read_log().contains("connected agent stopped"));
}

#[test]
fn a_bad_schedule_stops_the_connected_agent_naming_the_field() {
    let s = Setup::plain();
    for (schedule, want) in [
        ("interval: soon", "schedule.interval: \"soon\""),
        ("cron: \"61 * * * *\"", "schedule.cron: \"61 * * * *\""),
    ] {
        let config = agent_config(&s, &s.config, schedule);
        for check in [&["--check"][..], &[]] {
            let out = bins::run(
                bins::connected()
                    .arg("run")
                    .args(check)
                    .arg("--config")
                    .arg(&config),
            );
            assert_eq!(out.code, 64, "{check:?}: {out}");
            assert!(out.stderr.contains(want), "{want}: {out}");
        }
    }
    let text = std::fs::read_to_string(s.path("connected.yaml"))
        .unwrap()
        .replace("schedule:\n  cron: \"61 * * * *\"\n", "schedule: {}\n");
    std::fs::write(s.path("connected.yaml"), text).unwrap();
    let out = bins::run(
        bins::connected()
            .args(["run", "--config"])
            .arg(s.path("connected.yaml")),
    );
    assert_eq!(out.code, 64, "{out}");
    assert!(out.stderr.contains("set interval or cron"), "{out}");
    // `run --check` accepts a good schedule and runs nothing (in
    // place of the file above).
    let config = agent_config(&s, &s.config, "interval: 1m");
    let out = bins::run(
        bins::connected()
            .args(["run", "--check", "--config"])
            .arg(&config),
    );
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(
        out.stdout.trim(),
        format!("configuration OK: {}", config.display())
    );
    assert!(!s.path("ws-c").exists() && !s.path("outbox").exists());
}
