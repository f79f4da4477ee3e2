//! Large blobs travel while their imageset is verified, into upload sessions
//! left open, and become blobs only once the imageset is accepted (DESIGN.md,
//! invariant 7): closed by the publish then, cancelled if it is refused, and
//! uploaded again when the registry no longer knows a session.

use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_tests::bins::run;
use airlock_tests::faults::{FaultProxy, Hold};
use airlock_tests::forge;
use airlock_tests::images::{Blob, Format, ImageBuilder, PushClient, layer};
use airlock_tests::registry::Registry;
use airlock_tests::token::Grant;
use serde_json::json;

use crate::agent::{Agent, Served, Site, deliver, eventually};
use crate::util::*;

/// Two images in two repositories sharing a layer, each with a layer of its
/// own: those three are above the staging bound (1 MiB); the configs and a
/// small layer each are below it. Created in chunks of 2 MiB, so that the
/// large blobs span chunks. Returns the large blobs, the images and the
/// chunk files' directory.
fn large_images(src: &Registry, tmp: &Path) -> (Vec<Blob>, Vec<Placed>, PathBuf) {
    let client = PushClient::new(src).unwrap();
    let shared = layer(701, 1_600_000);
    let mut large = vec![shared.clone()];
    let mut placed = Vec::new();
    for (seed, repo) in [(702, "team/big-x"), (703, "ops/big-y")] {
        let own = layer(seed, 1_200_000);
        large.push(own.clone());
        let image = ImageBuilder::new(Format::Oci)
            .with_layer(&shared)
            .with_layer(&own)
            .layer(seed + 100, 10_000)
            .build();
        placed.push(push_as_1(&client, image, repo));
    }
    let out = create_of(src, tmp, &placed, "2MiB");
    assert!(chunk_files(&out).len() >= 3);
    (large, placed, out)
}

/// The upload session a request line of the access log is about.
fn session(line: &str) -> Option<&str> {
    let (_, rest) = line.split_once("/blobs/uploads/")?;
    rest.split(['?', ' ']).next().filter(|s| !s.is_empty())
}

/// Access log request lines (`"METHOD /v2/… HTTP/1.1" STATUS`) of `method`.
fn requests<'a>(log: &'a str, method: &str) -> Vec<&'a str> {
    log.lines()
        .filter(|l| l.contains(&format!("\"{method} /v2/")))
        .collect()
}

/// Sessions that received bytes by `PATCH`.
fn patched(log: &str) -> Vec<String> {
    requests(log, "PATCH")
        .into_iter()
        .filter(|l| l.contains("\" 202 "))
        .filter_map(session)
        .map(str::to_string)
        .collect()
}

#[test]
fn large_blobs_travel_while_verifying_and_their_sessions_close_at_publish() {
    let src = Registry::plain().unwrap();
    // As Quay, Harbor and registry.redhat.io run: a token per scope.
    let dest =
        Registry::with_tokens(vec![Grant::new("writer", "w-pass", "", &["pull", "push"])]).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (large, placed, out) = large_images(&src, tmp.path());
    let published = publish(&out, &dest, "m", &tmp.path().join("ws-d"));
    assert_eq!(published.code, 0, "{published}");
    // Every distinct blob counts once as uploaded, staged or not; the shared
    // layer is mounted into the second repository.
    assert!(
        published.stdout.contains("7 blobs uploaded") && published.stdout.contains(", 1 mounted,"),
        "{published}"
    );
    assert_staged(&dest.log(), &large);
    assert_byte_exact(&src, &dest, "m", &placed);
}

/// Each of `large` was sent into a session of its own by `PATCH`, and that
/// session, and no other upload, was closed with its digest.
fn assert_staged(log: &str, large: &[Blob]) {
    let sent = patched(log);
    assert_eq!(
        sent.len(),
        large.len(),
        "one session per large blob:\n{log}"
    );
    for blob in large {
        let hex = blob.digest.trim_start_matches("sha256:");
        let closing: Vec<&str> = requests(log, "PUT")
            .into_iter()
            .filter(|l| l.contains(&format!("digest=sha256%3A{hex}")))
            .collect();
        assert_eq!(
            closing.len(),
            1,
            "{}: one upload closed:\n{log}",
            blob.digest
        );
        let closed = session(closing[0]).unwrap();
        assert!(
            sent.iter().any(|s| s == closed) && closing[0].contains("\" 201 "),
            "{}: the session its bytes were sent into while verifying is the one closed:\n{log}",
            blob.digest
        );
    }
}

/// The agent with one cluster stages as the CLI's publish does; with several,
/// each would read every blob from the store again beside the fan-out, which
/// reads it once for all, so nothing is staged.
#[test]
fn the_agent_stages_large_blobs_for_its_one_cluster_and_not_beside_a_fanout() {
    let src = Registry::plain().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (large, placed, out) = large_images(&src, tmp.path());
    let files = chunk_files(&out).len();

    let one = Registry::plain().unwrap();
    let verified = tmp.path().join("verified");
    let mut served = Served::start_with_env(
        |site, grpc| site.config(&one, grpc),
        &[("AIRLOCK_TEST_VERIFIED_WHEN", verified.to_str().unwrap())],
    );
    deliver(&out, &served.site.path("drop"));
    // The verification ends once every large blob is sent: all are staged
    // (staging starts no upload after it).
    eventually(
        Duration::from_secs(60),
        "every large blob sent while the imageset is verified",
        || patched(&one.log()).len() == large.len(),
        || served.agent.log(),
    );
    std::fs::write(&verified, "").unwrap();
    archived(&served.agent, &served.site, files);
    // Every blob uploaded was read from the store once, staged or not.
    let status = served.json(&["status"]);
    assert_eq!(
        status["storeReadBytes"], status["uploadedBytes"],
        "{status}"
    );
    served.agent.stop();
    assert_staged(&one.log(), &large);
    assert_byte_exact(&src, &one, "m", &placed);

    let (a, b) = (Registry::plain().unwrap(), Registry::plain().unwrap());
    let site = Site::new();
    let mut agent = Agent::start(
        &site.config_fleet(&[("a", &a, None), ("b", &b, None)], ""),
        &[],
    );
    deliver(&out, &site.path("drop"));
    archived(&agent, &site, files);
    agent.stop();
    for r in [&a, &b] {
        let log = r.log();
        assert!(patched(&log).is_empty(), "nothing staged:\n{log}");
        assert_byte_exact(&src, r, "m", &placed);
    }
}

/// How many of the large blobs were sent before the refusal stopped the
/// staging is a race (the refusal comes right after the last chunk); whatever
/// was sent, no session is left open and no blob was made.
#[test]
fn a_refused_imageset_leaves_no_blob_and_no_open_session() {
    let src = Registry::plain().unwrap();
    let dest = Registry::plain().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (large, placed, genuine) = large_images(&src, tmp.path());
    // Every byte matches its digest, but an image's "manifest" is its small
    // layer: found only once every chunk is verified and the large blobs are
    // in the store, being sent.
    let forged = tmp.path().join("forged");
    copy_dir(&genuine, &forged);
    let small = placed[0].image.layer_blobs()[2].digest.clone();
    forge::rewrite(&forged, |m| {
        let blobs = m["blobs"].as_array_mut().unwrap();
        let b = blobs.iter_mut().find(|b| b["digest"] == small).unwrap();
        b["mediaType"] = json!("application/vnd.oci.image.manifest.v1+json");
        m["images"][0]["digest"] = json!(small);
    })
    .unwrap();
    let ws = tmp.path().join("ws-d");
    let refused = run(&mut publish_cmd(&forged, &dest, "m", &ws));
    assert_eq!(refused.code, EX_DATA, "{refused}");
    let log = dest.log();
    let sent = patched(&log);
    assert!(
        sent.len() <= large.len(),
        "only large blobs are sent:\n{log}"
    );
    let cancelled: Vec<&str> = requests(&log, "DELETE")
        .into_iter()
        .filter_map(session)
        .collect();
    // Every session opened, sent into or not, was cancelled.
    let opened = requests(&log, "POST")
        .iter()
        .filter(|l| l.contains("/blobs/uploads/ ") && l.contains("\" 202 "))
        .count();
    assert_eq!(opened, cancelled.len(), "{log}");
    for s in &sent {
        assert!(
            cancelled.contains(&s.as_str()),
            "session {s} cancelled:\n{log}"
        );
    }
    assert!(
        requests(&log, "PUT").is_empty(),
        "no upload closed, no manifest pushed:\n{log}"
    );
    let http = dest.http_client().unwrap();
    for blob in &large {
        for p in &placed {
            let url = format!("{}/v2/m/{}/blobs/{}", dest.url(), p.repo, blob.digest);
            let status = http.head(&url).send().unwrap().status();
            assert_eq!(status, 404, "{url}");
        }
    }
    assert!(catalog(&dest).is_empty(), "{:?}", catalog(&dest));
    // The genuine imageset is taken and published in full.
    let published = run(&mut publish_cmd(&genuine, &dest, "m", &ws));
    assert_eq!(published.code, 0, "{published}");
    assert_byte_exact(&src, &dest, "m", &placed);
}

#[test]
fn a_session_the_registry_forgot_is_uploaded_again() {
    let s = Setup::plain();
    std::fs::create_dir_all(s.path("big")).unwrap();
    let (large, placed, out) = large_images(&s.source, &s.path("big"));
    let proxy = FaultProxy::start(&s.dest.addr()).unwrap();
    proxy.forget_upload_sessions();
    let published = run(&mut publish_via(&proxy, &out, "m", &s.path("ws-d")));
    assert_eq!(published.code, 0, "{published}");
    assert_eq!(
        proxy.served() as usize,
        large.len(),
        "each staged session's closing was refused"
    );
    assert!(published.stdout.contains("7 blobs uploaded"), "{published}");
    // The registry holds each large blob, uploaded whole a second time.
    for blob in &large {
        let hex = blob.digest.trim_start_matches("sha256:");
        assert!(
            requests(&s.dest.log(), "PUT")
                .iter()
                .any(|l| l.contains(&format!("digest=sha256%3A{hex}")) && l.contains("\" 201 ")),
            "{}",
            blob.digest
        );
    }
    assert_byte_exact(&s.source, &s.dest, "m", &placed);
}

/// Waits until the agent has archived the imageset's `files`, which it does once
/// every cluster has the imageset.
fn archived(agent: &Agent, site: &Site, files: usize) {
    eventually(
        Duration::from_secs(60),
        "the imageset published and its files archived",
        || site.files("archive").len() == files,
        || agent.log(),
    );
}

/// An agent publishing to one cluster through a fault proxy that holds every
/// `PATCH` back, with an imageset of large blobs accepted while at least one
/// staged upload is held.
struct Held {
    src: Registry,
    dest: Registry,
    _proxy: FaultProxy,
    held: Hold,
    site: Site,
    agent: Agent,
    large: Vec<Blob>,
    placed: Vec<Placed>,
    files: usize,
    _tmp: tempfile::TempDir,
}

fn accepted_while_held() -> Held {
    let src = Registry::plain().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (large, placed, out) = large_images(&src, tmp.path());
    let dest = Registry::plain().unwrap();
    let proxy = FaultProxy::start(&dest.addr()).unwrap();
    let held = proxy.hold_until_at_once("PATCH", "/blobs/uploads/", usize::MAX);
    let site = Site::new();
    let config = site.config(&dest, "");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace(&dest.addr(), &proxy.addr())).unwrap();
    let verified = tmp.path().join("verified");
    let agent = Agent::start(
        &config,
        &[("AIRLOCK_TEST_VERIFIED_WHEN", verified.to_str().unwrap())],
    );
    deliver(&out, &site.path("drop"));
    eventually(
        Duration::from_secs(60),
        "a staged upload under way",
        || held.most_held() >= 1,
        || agent.log(),
    );
    std::fs::write(&verified, "").unwrap();
    // Within the hold's patience (60 s): an acceptance that waited for the
    // held uploads would come only once it gave up.
    eventually(
        Duration::from_secs(30),
        "the imageset accepted while its staged uploads are held",
        || agent.log().contains("imageset verified and accepted"),
        || agent.log(),
    );
    assert!(held.released().is_none(), "{}", agent.log());
    Held {
        src,
        dest,
        _proxy: proxy,
        held,
        site,
        agent,
        large,
        placed,
        files: chunk_files(&out).len(),
        _tmp: tmp,
    }
}

/// The agent's round does not wait on a registry: an imageset is accepted while
/// the uploads staged beside its verification are still under way, and the
/// publish waits for them, closes their sessions, and uploads the rest.
#[test]
fn the_agent_accepts_while_staged_uploads_are_under_way_and_its_publish_closes_them() {
    let mut h = accepted_while_held();
    h.held.release();
    archived(&h.agent, &h.site, h.files);
    h.agent.stop();
    let log = h.dest.log();
    let sent = patched(&log);
    assert!(
        !sent.is_empty() && sent.len() <= h.large.len(),
        "only large blobs are staged:\n{log}"
    );
    for s in &sent {
        assert!(
            requests(&log, "PUT")
                .iter()
                .any(|l| session(l) == Some(s.as_str()) && l.contains("\" 201 ")),
            "session {s}, held when the imageset was accepted, closed by its publish:\n{log}"
        );
    }
    assert_byte_exact(&h.src, &h.dest, "m", &h.placed);
}

/// A stopping agent's drain does not wait for staged uploads under way: its
/// publish would only cancel their sessions.
#[test]
fn a_stopping_agent_does_not_wait_for_staged_uploads_under_way() {
    let mut h = accepted_while_held();
    // Whether its publish already waits for them or starts once asked to stop.
    h.agent.signal("TERM");
    // Well within the hold's patience and the default stopGrace (90 s).
    assert_eq!(
        h.agent.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        h.agent.log()
    );
    assert!(h.held.released().is_none(), "{}", h.agent.log());
    h.held.release();
}
