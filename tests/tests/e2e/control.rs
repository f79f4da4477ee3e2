//! The gRPC control plane and `airlockctl`, against a running agent.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use airlock_proto::v1;
use airlock_tests::bins::{self, run};
use airlock_tests::registry::free_port;
use airlock_tests::tls::Issued;
use serde_json::Value;

use crate::agent::{Agent, Pki, Served, Site, eventually};
use crate::util::*;

fn paths(files: &[PathBuf]) -> Vec<&str> {
    files.iter().map(|f| f.to_str().unwrap()).collect()
}

#[test]
fn ingest_over_the_control_plane_publishes_like_the_drop_folder_and_watch_follows_it() {
    let s = Setup::plain();
    let (_, out) = s.create("300KiB");
    let chunks = chunk_files(&out);
    assert!(chunks.len() > 1, "several chunks: {chunks:?}");
    let served = Served::start(&s.dest);

    let status = served.json(&["status"]);
    assert_eq!(status["acceptedSequence"], 0);
    assert_eq!(status["uuid"], Value::Null);
    assert_eq!(status["clusters"], 1);

    // A watcher, started before the ingest, sees it happen.
    let mut watch = bins::airlockctl();
    watch
        .args(["--server", &served.url, "--ca"])
        .arg(&served.pki.ca)
        .arg("--cert")
        .arg(&served.pki.client.cert)
        .arg("--key")
        .arg(&served.pki.client.key)
        .args(["watch", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut watcher = watch.spawn().unwrap();
    let (tx, events) = mpsc::channel::<Value>();
    let stdout = watcher.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                break;
            }
        }
    });
    eventually(
        Duration::from_secs(30),
        "the watcher to subscribe",
        || served.agent.log().contains("events watcher subscribed"),
        || served.agent.log(),
    );

    // Half the chunks: the imageset waits, names what is missing, exit 75.
    let (first, rest) = chunks.split_at(1);
    let mut args = vec!["ingest"];
    args.extend(paths(first));
    let waiting = served.ctl(&args);
    assert_eq!(waiting.code, 75, "{waiting}");
    assert!(waiting.stdout.contains(": waiting: "), "{waiting}");
    assert!(
        waiting.stdout.contains(&format!(
            "{} of {} chunk files missing",
            chunks.len() - 1,
            chunks.len()
        )),
        "{waiting}"
    );

    // The rest: accepted and published in the same call.
    let mut args = vec!["ingest", "-o", "json"];
    args.extend(paths(rest));
    let done = served.ctl(&args);
    assert_eq!(done.code, 0, "{done}\n--- agent\n{}", served.agent.log());
    let done: Value = serde_json::from_str(&done.stdout).unwrap();
    assert_eq!(done["imagesets"][0]["outcome"], "accepted", "{done}");
    assert_eq!(done["imagesets"][0]["sequence"], 1);
    assert_eq!(done["quarantined"], Value::Array(vec![]));
    assert_eq!(done["published"][0]["cluster"], "site-a", "{done}");
    assert_eq!(done["published"][0]["sequence"], 1);
    s.assert_byte_exact("m");

    let clusters = served.json(&["clusters"]);
    assert_eq!(clusters[0]["name"], "site-a");
    assert_eq!(clusters[0]["publishedSequence"], 1);
    assert_eq!(clusters[0]["state"], "current");
    assert_eq!(
        clusters[0]["registry"],
        format!("docker://{}/m", s.dest.addr())
    );
    let imagesets = served.json(&["imagesets"]);
    assert_eq!(imagesets.as_array().unwrap().len(), 1);
    assert_eq!(imagesets[0]["publishedTo"][0], "site-a");
    assert_eq!(imagesets[0]["full"], true);
    assert!(imagesets[0]["carriedBytes"].as_u64().unwrap() > 0);
    let status = served.json(&["status"]);
    assert_eq!(status["acceptedSequence"], 1);
    assert_eq!(status["clustersCurrent"], 1);

    // Files of a published imageset leave the drop directory, as with a diode.
    eventually(
        Duration::from_secs(30),
        "the drop directory emptied",
        || served.site.files("drop").iter().all(|f| f.starts_with('.')),
        || served.agent.log(),
    );

    // Sent again (a diode resends): a duplicate, exit 0.
    let mut args = vec!["ingest"];
    args.extend(paths(&chunks));
    let again = served.ctl(&args);
    assert_eq!(again.code, 0, "{again}");
    assert!(again.stdout.contains(": duplicate"), "{again}");

    // Another manifest under the accepted sequence: refused, quarantined, and
    // listed by `imagesets` with why.
    let forged = s.path("forged");
    copy_dir(&out, &forged);
    airlock_tests::forge::rewrite(&forged, |m| m["images"][0]["tag"] = "6.6".into()).unwrap();
    let forged_files = chunk_files(&forged);
    let mut args = vec!["ingest"];
    args.extend(paths(&forged_files));
    let refused = served.ctl(&args);
    assert_eq!(refused.code, 65, "{refused}");
    assert!(refused.stdout.contains(": refused: "), "{refused}");
    let imagesets = served.json(&["imagesets"]);
    assert_eq!(imagesets.as_array().unwrap().len(), 2, "{imagesets}");
    assert_eq!(imagesets[0]["refused"], Value::Null);
    assert!(
        imagesets[1]["refused"]
            .as_str()
            .unwrap()
            .contains("was accepted earlier with another manifest"),
        "{imagesets}"
    );
    let table = served.ctl(&["imagesets"]);
    assert!(table.stdout.contains("REFUSED"), "{table}");

    // Not a chunk at all: quarantined with its reason, exit 65.
    let junk = s.path("notes.txt");
    std::fs::write(&junk, "not an imageset").unwrap();
    let refused = served.ctl(&["ingest", junk.to_str().unwrap()]);
    assert_eq!(refused.code, 65, "{refused}");
    assert!(
        refused
            .stdout
            .contains("quarantined notes.txt: not an Airlock imageset chunk"),
        "{refused}"
    );
    assert!(
        served
            .site
            .files("quarantine")
            .contains(&"notes.txt".to_string())
    );

    // The watcher saw the acceptance, the publication and the quarantine.
    let mut kinds = Vec::new();
    while !kinds.contains(&"quarantined".to_string()) {
        let e = events
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("events so far: {kinds:?}"));
        kinds.push(e["kind"].as_str().unwrap().to_string());
        if e["kind"] == "published" {
            assert_eq!(e["cluster"], "site-a");
            assert_eq!(e["sequence"], 1);
        }
    }
    let accepted = kinds.iter().position(|k| k == "accepted");
    let published = kinds.iter().position(|k| k == "published");
    assert!(
        accepted.is_some() && accepted < published,
        "accepted, then published: {kinds:?}"
    );

    // Publish with nothing new: the cluster stays current; an unknown one is named.
    let publish = served.ctl(&["publish"]);
    assert_eq!(publish.code, 0, "{publish}");
    assert!(publish.stdout.contains("current"), "{publish}");
    let unknown = served.ctl(&["publish", "--cluster", "nope"]);
    assert_eq!(unknown.code, 64, "{unknown}");
    assert!(
        unknown.stderr.contains("no cluster named \"nope\""),
        "{unknown}"
    );

    // Stopping the agent ends the watch stream cleanly.
    let mut agent = served.agent;
    agent.stop();
    let status = watcher.wait().unwrap();
    assert!(
        status.success(),
        "watch ends when the agent stops: {status}"
    );
    assert!(
        agent.log().contains("control plane stopped"),
        "{}",
        agent.log()
    );
}

/// A raw client of the generated code, to send what airlockctl never would.
async fn raw_client(
    url: &str,
    pki: &Pki,
    identity: Option<&Issued>,
) -> Result<v1::control_client::ControlClient<tonic::transport::Channel>, String> {
    let mut tls = tonic::transport::ClientTlsConfig::new().ca_certificate(
        tonic::transport::Certificate::from_pem(std::fs::read(&pki.ca).unwrap()),
    );
    if let Some(id) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(
            std::fs::read(&id.cert).unwrap(),
            std::fs::read(&id.key).unwrap(),
        ));
    }
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?;
    let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
    Ok(v1::control_client::ControlClient::new(channel))
}

#[test]
fn the_control_plane_refuses_clients_without_a_certificate_of_its_ca() {
    let s = Setup::plain();
    let (_, out) = s.create("1GiB");
    let chunks = chunk_files(&out);
    let served = Served::start(&s.dest);
    let rt = tokio::runtime::Runtime::new().unwrap();

    // No client certificate: refused, whatever the RPC.
    rt.block_on(async {
        if let Ok(mut c) = raw_client(&served.url, &served.pki, None).await {
            let r = c.get_status(v1::GetStatusRequest {}).await;
            assert!(
                r.is_err(),
                "a client without a certificate was served: {r:?}"
            );
        }
    });

    // A certificate from another CA, through airlockctl: exit 69 with the hint.
    let mut args = vec!["ingest"];
    args.extend(paths(&chunks));
    let stranger = served.ctl_as(&served.pki.stranger, &args);
    assert_eq!(stranger.code, 69, "{stranger}");
    assert!(
        stranger.stderr.contains("grpc.tls.clientCA"),
        "the error says what to check: {stranger}"
    );

    // Plain HTTP is not offered.
    let mut plain = bins::airlockctl();
    plain
        .arg("--server")
        .arg(served.url.replace("https", "http"))
        .arg("--ca")
        .arg(&served.pki.ca)
        .arg("--cert")
        .arg(&served.pki.client.cert)
        .arg("--key")
        .arg(&served.pki.client.key)
        .arg("status");
    let plain = run(&mut plain);
    assert_eq!(plain.code, 64, "{plain}");
    assert!(plain.stderr.contains("no plaintext mode"), "{plain}");

    // Nothing a refused client sent reached the agent.
    assert!(served.site.files("drop").is_empty());
    assert!(
        !served
            .agent
            .log()
            .contains("received over the control plane"),
        "{}",
        served.agent.log()
    );

    // The site's own client is served, and hostile streams are refused whole.
    let start = |name: &str, size: u64| v1::IngestRequest {
        item: Some(v1::ingest_request::Item::Start(v1::FileStart {
            name: name.into(),
            size,
        })),
    };
    let data = |b: &[u8]| v1::IngestRequest {
        item: Some(v1::ingest_request::Item::Data(b.to_vec())),
    };
    let cases = [
        (vec![start("../escape", 3), data(b"abc")], "plain file name"),
        (vec![start(".hidden", 3), data(b"abc")], "plain file name"),
        (vec![data(b"abc")], "data before any file start"),
        (
            vec![start("short", 10), data(b"abc")],
            "3 bytes arrived, 10 were announced",
        ),
        (
            vec![start("long", 2), data(b"abc")],
            "more than the 2 bytes announced",
        ),
        (vec![start("huge", u64::MAX / 2)], "free; nothing was kept"),
        (
            vec![start("twice", 1), data(b"a"), start("twice", 1), data(b"a")],
            "sent twice",
        ),
    ];
    rt.block_on(async {
        let mut c = raw_client(&served.url, &served.pki, Some(&served.pki.client))
            .await
            .unwrap();
        for (messages, want) in cases {
            let r = c.ingest(tokio_stream::iter(messages)).await;
            let status = r.expect_err(want);
            let code = if want.contains("free") {
                tonic::Code::ResourceExhausted
            } else {
                tonic::Code::InvalidArgument
            };
            assert_eq!(status.code(), code, "{want}");
            assert!(status.message().contains(want), "{want:?}: {status:?}");
        }
        let status = c
            .get_status(v1::GetStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.accepted_sequence, 0);
    });
    assert_eq!(
        served.site.files("drop"),
        vec![".airlock-ingest".to_string()],
        "no partial or hostile file left in the drop directory"
    );
    assert_eq!(
        served.site.files("drop/.airlock-ingest"),
        Vec::<String>::new(),
        "every stream's staging directory was removed"
    );
    assert!(!served.site.path("escape").exists());
}

#[test]
fn a_bad_control_plane_configuration_stops_the_agent_naming_the_field() {
    let s = Setup::plain();
    let site = Site::new();
    let pki = Pki::new(&site.path("pki"));
    // The key of another certificate: named, exit 64, nothing bound.
    let section = pki.grpc_section(free_port().unwrap()).replace(
        pki.server.key.to_str().unwrap(),
        pki.client.key.to_str().unwrap(),
    );
    let mut agent = Agent::start(&site.config(&s.dest, &section), &[]);
    assert_eq!(agent.wait_exit(Duration::from_secs(30)), Some(64));
    assert!(agent.log().contains("grpc.tls.key: "), "{}", agent.log());
    // A listen address that is not HOST:PORT.
    let section = pki.grpc_section(1).replace("127.0.0.1:1", "localhost");
    let mut agent = Agent::start(&site.config(&s.dest, &section), &[]);
    assert_eq!(agent.wait_exit(Duration::from_secs(30)), Some(64));
    assert!(agent.log().contains("grpc.listen: "), "{}", agent.log());
}
