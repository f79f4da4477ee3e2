//! What a site's monitoring sees of the disconnected agent: `/metrics`, read
//! with the Prometheus project's own Python client parser (Debian's
//! python3-prometheus-client), and `/healthz` and `/readyz`.

use std::collections::BTreeMap;
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

#[test]
fn metrics_show_each_cluster_s_sequence_a_registry_down_and_quarantined_files() {
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

    // West's registry down: east takes sequence 2, west stays at 1 and is down.
    west.stop();
    let (_, config2) = s.with_late_image(95);
    let out2 = s.path("out2");
    let created = create(&config2, &out2, &s.path("ws-c"), "1GiB", &s.source);
    assert_eq!(created.code, 0, "{created}");
    deliver(&out2, &drop);
    eventually(
        Duration::from_secs(60),
        "sequence 2 on east, west down",
        || {
            metric("airlock_published_sequence{cluster=east}") == Some(2.0)
                && metric("airlock_cluster_up{cluster=west}") == Some(0.0)
        },
        || served.agent.log(),
    );
    assert_eq!(
        metric("airlock_published_sequence{cluster=west}"),
        Some(1.0)
    );
    assert_eq!(metric("airlock_imagesets_accepted_total{}"), Some(2.0));

    // A file that is no imageset is quarantined, and counted with its reason.
    std::fs::write(drop.join("notes.txt"), b"not a chunk").unwrap();
    eventually(
        Duration::from_secs(60),
        "the file counted as quarantined",
        || metric("airlock_files_quarantined_total{reason=not_imageset}") == Some(1.0),
        || served.agent.log(),
    );
}

/// The connected agent's run at start is counted: one imageset, its bytes,
/// its duration, and when it ended.
#[test]
fn the_connected_agent_counts_what_its_runs_made() {
    let s = Setup::plain();
    let config = crate::scheduled::agent_config(&s, &s.config, "interval: 1h");
    let port = free_port().unwrap();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("metrics:\n  listen: 127.0.0.1:{port}\n"));
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
    assert_eq!(get(port, "/readyz"), (200, "ready\n".into()));
    assert_eq!(get(port, "/healthz"), (200, "ok\n".into()));
}
