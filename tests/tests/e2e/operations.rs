//! What a site's monitoring sees of the disconnected agent: `/metrics`, read
//! with the Prometheus project's own Python client parser (Debian's
//! python3-prometheus-client), and `/healthz` and `/readyz`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use airlock_tests::registry::{Registry, free_port};
use serde_json::Value;

use crate::agent::{Served, deliver, eventually};
use crate::util::*;

/// `GET path` of the agent's metrics address: the status and the body.
fn get(port: u16, path: &str) -> (u16, String) {
    let r = reqwest::blocking::get(format!("http://127.0.0.1:{port}{path}")).unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

/// Every sample of an OpenMetrics text, by name and labels (`name{k=v,...}`),
/// as the Prometheus client's strict OpenMetrics parser reads it: a text it
/// refuses fails the test.
fn samples(text: &str) -> BTreeMap<String, f64> {
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    out[f"family:{family.name}"] = 0
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps(out))
"#;
    let mut child = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with prometheus_client (scripts/install-deps installs it)");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the parser refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: BTreeMap<String, Value> = serde_json::from_slice(&out.stdout).unwrap();
    parsed
        .into_iter()
        .map(|(k, v)| (k, v.as_f64().unwrap()))
        .collect()
}

/// The metrics docs/operations.md lists under `heading`, as it names them
/// (`airlock_x_total`, `airlock_y_seconds`).
fn documented(heading: &str) -> BTreeSet<String> {
    let doc =
        std::fs::read_to_string(airlock_tests::repo_dir().join("docs/operations.md")).unwrap();
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with(heading))
        .unwrap_or_else(|| panic!("docs/operations.md has no section {heading:?}"));
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .map(|l| l.split(['`', '{']).next().unwrap().to_string())
        .collect()
}

/// Every metric `heading` documents is served (as a family, with or without
/// samples yet) in the scraped `text`.
fn assert_all_served(heading: &str, text: &str) {
    let served = samples(text);
    for name in documented(heading) {
        let family = name.strip_suffix("_total").unwrap_or(&name);
        assert!(
            served.contains_key(&format!("family:{family}")),
            "{name} is documented but not served:\n{text}"
        );
    }
}

/// The dashboard in deploy/ shows every documented metric and no other.
#[test]
fn the_dashboard_shows_every_documented_metric_and_no_other() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(airlock_tests::repo_dir().join("deploy/grafana-airlock.json"))
            .unwrap(),
    )
    .unwrap();
    let mut shown = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("airlock_") {
                    let family = ["_bucket", "_count", "_sum"]
                        .iter()
                        .find_map(|s| word.strip_suffix(s))
                        .unwrap_or(word);
                    shown.insert(family.to_string());
                }
            }
        }
    }
    let mut listed = documented("Metrics of the disconnected agent");
    listed.extend(documented("Metrics of the connected agent"));
    assert_eq!(shown, listed);
}

#[test]
fn metrics_show_each_cluster_s_sequence_a_registry_down_a_waiting_imageset_and_quarantined_files() {
    let s = Setup::plain();
    let mut west = Registry::plain().unwrap();
    let port = free_port().unwrap();
    let served = Served::start_with(|site, grpc| {
        site.config_fleet(
            &[("east", &s.dest, None), ("west", &west, None)],
            &format!("metrics:\n  listen: 127.0.0.1:{port}\n{grpc}"),
        )
    });
    // Bound after the control plane, before readiness is reported.
    eventually(
        Duration::from_secs(30),
        "the metrics address to answer",
        || served.agent.log().contains("serving /metrics"),
        || served.agent.log(),
    );
    assert_eq!(get(port, "/readyz"), (200, "ready\n".into()));
    assert_eq!(get(port, "/healthz"), (200, "ok\n".into()));
    assert_eq!(get(port, "/nothing").0, 404);
    let metric = |name: &str| {
        let (status, text) = get(port, "/metrics");
        assert_eq!(status, 200, "{text}");
        samples(&text).get(name).copied()
    };
    let drop = served.site.path("drop");

    let (_, out1) = s.create("1GiB");
    deliver(&out1, &drop);
    eventually(
        Duration::from_secs(60),
        "sequence 1 published to both clusters",
        || {
            metric("airlock_published_sequence{cluster=east}") == Some(1.0)
                && metric("airlock_published_sequence{cluster=west}") == Some(1.0)
        },
        || served.agent.log(),
    );
    assert_eq!(metric("airlock_imagesets_accepted_total{}"), Some(1.0));
    assert_eq!(metric("airlock_cluster_up{cluster=west}"), Some(1.0));
    assert_eq!(metric("airlock_drift{cluster=east}"), Some(0.0));

    assert!(metric("airlock_bytes_uploaded_total{cluster=east}").unwrap() > 0.0);
    assert_eq!(
        metric("airlock_publish_duration_seconds_count{cluster=west}"),
        Some(1.0)
    );
    assert_eq!(metric("airlock_imagesets_waiting{}"), Some(0.0));

    // West's registry down. Sequence 3 arrives before 2: it waits; then both
    // reach east, while west stays at 1 and is down.
    west.stop();
    let mut outs = Vec::new();
    for (seed, n) in [(95, 2), (96, 3)] {
        let (_, config) = s.with_late_image(seed);
        let out = s.path(&format!("out{n}"));
        let created = create(&config, &out, &s.path("ws-c"), "1GiB", &s.source);
        assert_eq!(created.code, 0, "{created}");
        outs.push(out);
    }
    deliver(&outs[1], &drop);
    eventually(
        Duration::from_secs(60),
        "sequence 3 held for 2",
        || metric("airlock_imagesets_waiting{}") == Some(1.0),
        || served.agent.log(),
    );
    deliver(&outs[0], &drop);
    eventually(
        Duration::from_secs(60),
        "sequence 3 on east, west down",
        || {
            metric("airlock_published_sequence{cluster=east}") == Some(3.0)
                && metric("airlock_cluster_up{cluster=west}") == Some(0.0)
        },
        || served.agent.log(),
    );
    assert_eq!(
        metric("airlock_published_sequence{cluster=west}"),
        Some(1.0)
    );
    assert_eq!(metric("airlock_imagesets_accepted_total{}"), Some(3.0));
    assert_eq!(metric("airlock_imagesets_waiting{}"), Some(0.0));
    // Sequence 3 replaced sequence 2's extra/late:1: its manifest was pruned.
    assert!(
        metric("airlock_manifests_pruned_total{cluster=east}").unwrap() >= 1.0,
        "{}",
        get(port, "/metrics").1
    );
    assert_eq!(
        metric("airlock_publish_duration_seconds_count{cluster=west}"),
        Some(1.0),
        "a failed publish has no duration"
    );

    // A file that is no imageset is quarantined, and counted with its reason.
    std::fs::write(drop.join("notes.txt"), b"not a chunk").unwrap();
    eventually(
        Duration::from_secs(60),
        "the file counted as quarantined",
        || metric("airlock_files_quarantined_total{reason=not_imageset}") == Some(1.0),
        || served.agent.log(),
    );
    assert_all_served(
        "Metrics of the disconnected agent",
        &get(port, "/metrics").1,
    );
}

/// The connected agent's run at start is counted: one imageset, its bytes,
/// its duration, when it ended, and the image it left out.
#[test]
fn the_connected_agent_counts_what_its_runs_made() {
    let s = Setup::plain();
    // One image the source does not have: left out, and counted by registry.
    let isc = s.path("isc-missing.yaml");
    let mut text = std::fs::read_to_string(&s.config).unwrap();
    text.push_str(&format!("  - name: {}/gone/away:1\n", s.source.addr()));
    std::fs::write(&isc, text).unwrap();
    let config = crate::scheduled::agent_config(&s, &isc, "interval: 1h");
    let port = free_port().unwrap();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "continueOnError: true\nmetrics:\n  listen: 127.0.0.1:{port}\n"
    ));
    std::fs::write(&config, text).unwrap();
    let log = s.path("connected.log");
    /// Stops the agent however the test ends.
    struct Running(std::process::Child);
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _agent = Running(
        airlock_tests::bins::connected()
            .args(["run", "--config"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let metric = |name: &str| {
        let text = reqwest::blocking::get(format!("http://127.0.0.1:{port}/metrics"))
            .and_then(|r| r.text())
            .ok()?;
        samples(&text).get(name).copied()
    };
    eventually(
        Duration::from_secs(60),
        "the first run counted",
        || metric("airlock_imagesets_created_total{}") == Some(1.0),
        || std::fs::read_to_string(&log).unwrap_or_default(),
    );
    assert!(metric("airlock_bytes_shipped_total{}").unwrap() > 0.0);
    assert_eq!(metric("airlock_create_duration_seconds_count{}"), Some(1.0));
    assert!(metric("airlock_last_success_timestamp_seconds{}").unwrap() > 1.7e9);
    assert_eq!(metric("airlock_create_failures_total{}"), Some(0.0));
    assert_eq!(
        metric(&format!(
            "airlock_source_errors_total{{registry={}}}",
            s.source.addr()
        )),
        Some(1.0)
    );
    assert_eq!(get(port, "/readyz"), (200, "ready\n".into()));
    assert_eq!(get(port, "/healthz"), (200, "ok\n".into()));
    assert_all_served("Metrics of the connected agent", &get(port, "/metrics").1);
}

/// A loop that no longer comes round (held by a test hook, as by a hung call)
/// is what /healthz reports, while /metrics and /readyz still answer.
#[test]
fn healthz_reports_a_stalled_loop() {
    let dest = Registry::plain().unwrap();
    let site = crate::agent::Site::new();
    let port = free_port().unwrap();
    let config = site.config(
        &dest,
        &format!("healthzStallSeconds: 2\nmetrics:\n  listen: 127.0.0.1:{port}\n"),
    );
    let trigger = site.path("stall-now");
    let agent = crate::agent::Agent::start(
        &config,
        &[("AIRLOCK_TEST_STALL_WHEN", trigger.to_str().unwrap())],
    );
    eventually(
        Duration::from_secs(30),
        "the agent healthy",
        || agent.log().contains("serving /metrics") && get(port, "/healthz").0 == 200,
        || agent.log(),
    );
    std::fs::write(&trigger, b"").unwrap();
    eventually(
        Duration::from_secs(30),
        "the stalled loop reported",
        || get(port, "/healthz").0 == 503,
        || agent.log(),
    );
    assert!(get(port, "/healthz").1.starts_with("stuck"));
    assert_eq!(get(port, "/readyz").0, 200);
    assert_eq!(get(port, "/metrics").0, 200);
}

/// The README's first command, service half included: both agents as
/// services, the diode, two clusters, airlockctl; it checks every digest at
/// both clusters itself, and fails when one differs.
#[test]
fn the_demo_runs_the_services_end_to_end() {
    let out = airlock_tests::bins::run(&mut airlock_tests::bins::demo());
    assert_eq!(out.code, 0, "{out}");
    for line in [
        "$ airlockctl clusters",
        "$ airlockctl imagesets",
        "services stopped",
    ] {
        assert!(out.stdout.contains(line), "{line:?} missing:\n{out}");
    }
    assert_eq!(
        out.stdout.matches("= source on site-a and site-b").count(),
        4,
        "{out}"
    );
    let clusters = out.stdout.split("$ airlockctl clusters").nth(1).unwrap();
    for site in ["site-a", "site-b"] {
        assert!(
            clusters
                .lines()
                .any(|l| l.starts_with(site) && l.contains(" 2 ")),
            "{site} not at sequence 2:\n{out}"
        );
    }
}

/// What `COMMAND completion bash` gives bash: the subcommands, and each
/// subcommand's own flags (which clap_complete's script alone gets wrong for a
/// hyphenated name), tried in a real bash as its completion machinery calls it.
#[test]
fn completions_offer_each_binary_s_subcommands_and_their_flags() {
    let complete = |bin: &str, words: &[&str]| -> Vec<String> {
        let script = bins_output(bin, &["completion", "bash"]);
        let function = format!("_{}", bin.replace('-', "__"));
        let cur = words.last().unwrap();
        let prev = words[words.len() - 2];
        let driver = format!(
            "{script}\nCOMP_WORDS=({}); COMP_CWORD={}; {function} {bin} {cur:?} {prev:?}; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            words.join(" "),
            words.len() - 1
        );
        let out = Command::new("bash").arg("-c").arg(driver).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect()
    };
    for (bin, sub, flag) in [
        ("airlock-connected", "create", "--limit"),
        ("airlock-disconnected", "publish", "--from"),
        ("airlockctl", "ingest", "--server"),
    ] {
        let subs = complete(bin, &[bin, &sub[..2]]);
        assert!(
            subs.iter().any(|s| s == sub),
            "{bin} {}: {subs:?}",
            &sub[..2]
        );
        let flags = complete(bin, &[bin, sub, &flag[..4]]);
        assert!(
            flags.iter().any(|f| f == flag),
            "{bin} {sub} {}: {flags:?}",
            &flag[..4]
        );
        let zsh = bins_output(bin, &["completion", "zsh"]);
        assert!(zsh.starts_with(&format!("#compdef {bin}")), "{zsh}");
        let fish = bins_output(bin, &["completion", "fish"]);
        assert!(
            fish.contains(&format!("complete -c {bin} ")) && fish.contains(sub),
            "{fish}"
        );
    }
}

/// `COMMAND man --out DIR` writes a page per command and subcommand, which
/// man(1) renders with the subcommand's flags.
#[test]
fn man_pages_are_written_for_every_subcommand_and_render() {
    let dir = tempfile::tempdir().unwrap();
    for (bin, sub, flag) in [
        ("airlock-connected", "create", "--limit"),
        ("airlock-disconnected", "publish", "--from"),
        ("airlockctl", "ingest", "--server"),
    ] {
        let listed = bins_output(bin, &["man", "--out", dir.path().to_str().unwrap()]);
        let page = dir.path().join(format!("{bin}-{sub}.1"));
        assert!(
            listed.lines().any(|l| l == page.to_str().unwrap()),
            "{listed}"
        );
        assert!(dir.path().join(format!("{bin}.1")).is_file());
        let rendered = Command::new("man")
            .arg("-l")
            .arg(&page)
            .env("MANWIDTH", "100")
            .env("MANPAGER", "cat")
            .output()
            .unwrap();
        assert!(
            rendered.status.success(),
            "{}",
            String::from_utf8_lossy(&rendered.stderr)
        );
        let text = String::from_utf8_lossy(&rendered.stdout);
        assert!(text.contains("NAME") && text.contains(flag), "{text}");
    }
}

/// `bin args`'s standard output; the command must succeed.
fn bins_output(bin: &str, args: &[&str]) -> String {
    let out = airlock_tests::bins::run(airlock_tests::bins::named(bin).args(args));
    assert_eq!(out.code, 0, "{out}");
    out.stdout
}
