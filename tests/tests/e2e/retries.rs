//! Publishing survives what registries do in passing: a 500 on a blob upload, a 429
//! with `Retry-After` on opening an upload or pushing a manifest, a connection reset
//! in the middle of a blob; creating, a 429 on reading a manifest or a blob, and a
//! blob's download broken halfway;
//! mirroring, a 429 on a blob read (catalogs and lookups: in their suites). Each
//! fault is served by a proxy in front of a real registry, at a known request; the
//! result is checked byte for byte with skopeo.
//! A registry that keeps failing fails the publish in bounded time, naming the
//! attempts.
use airlock_tests::bins::{Output, run};
use airlock_tests::faults::{Fault, FaultProxy};
use airlock_tests::images::{Format, ImageBuilder, PushClient};

use crate::util::*;

/// The retries the summary line reports.
fn retries(out: &Output) -> u64 {
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("published sequence"))
        .unwrap_or_else(|| panic!("no summary line:\n{out}"));
    let (before, _) = line
        .split_once(" retries")
        .unwrap_or_else(|| panic!("no retry count in {line:?}"));
    before
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no retry count in {line:?}"))
}

/// Publishes the seeded imageset through a proxy armed by `arm`, and checks that
/// the publish succeeded after retrying and that the content is byte-exact.
fn survives(arm: impl FnOnce(&FaultProxy)) {
    let s = Setup::plain();
    let (_, out) = s.create("1GiB");
    let proxy = FaultProxy::start(&s.dest.addr()).unwrap();
    arm(&proxy);
    let published = run(&mut publish_via(&proxy, &out, "mirror", &s.path("ws-d")));
    assert_eq!(published.code, 0, "{published}");
    assert!(proxy.served() >= 1, "the fault was served:\n{published}");
    assert!(retries(&published) >= 1, "{published}");
    s.assert_byte_exact("mirror");
}

#[test]
fn a_server_error_on_a_blob_upload_is_retried() {
    survives(|p| p.fail_nth("PUT", "/blobs/uploads/", 1, Fault::ServerError));
}

#[test]
fn too_many_requests_on_an_upload_and_a_manifest_push_are_retried() {
    survives(|p| {
        p.fail_nth("POST", "/blobs/uploads/", 1, Fault::TooManyRequests);
        p.fail_nth("PUT", "/manifests/", 1, Fault::TooManyRequests);
    });
}

#[test]
fn a_connection_reset_mid_upload_restarts_the_upload() {
    survives(|p| p.fail_nth("PUT", "/blobs/uploads/", 2, Fault::Reset));
}

#[test]
fn a_registry_failing_every_upload_fails_the_publish_naming_the_attempts() {
    let s = Setup::plain();
    let (_, out) = s.create("1GiB");
    let proxy = FaultProxy::start(&s.dest.addr()).unwrap();
    proxy.fail_always("PUT", "/blobs/uploads/", Fault::ServerError);
    let published = run(&mut publish_via(&proxy, &out, "mirror", &s.path("ws-d")));
    assert_eq!(published.code, EX_UNAVAILABLE, "{published}");
    assert!(published.stderr.contains("HTTP 500"), "{published}");
    // Which bound ends the publish is a race: an image's blobs retry at once, so
    // their shared budget (20) may run out before any one request has used its
    // 6 attempts. Either way the message names the attempts and the bound.
    let attempts: u32 = published
        .stderr
        .split_once("gave up after ")
        .and_then(|(_, rest)| rest.split_once(" attempts"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no attempt count:\n{published}"));
    let budget = published.stderr.contains(&format!(
        "gave up after {attempts} attempts; the image's retry budget is spent"
    ));
    assert!(
        attempts == 6 || (1..6).contains(&attempts) && budget,
        "{attempts} attempts, budget spent: {budget}\n{published}"
    );
}

#[test]
fn a_push_into_a_project_that_does_not_exist_says_so() {
    let s = Setup::plain();
    let (_, out) = s.create("1GiB");
    let proxy = FaultProxy::start(&s.dest.addr()).unwrap();
    // As Harbor answers the first push into a project nobody created.
    proxy.fail_always("POST", "/blobs/uploads/", Fault::NoSuchProject);
    let published = run(&mut publish_via(&proxy, &out, "mirror", &s.path("ws-d")));
    assert_ne!(published.code, 0, "{published}");
    assert!(
        published
            .stderr
            .contains("the registry has no project or organisation \"mirror\" that this credential may push to; create it (a Harbor project"),
        "{published}"
    );
}

/// Creates from the seeded source through a proxy armed by `arm` with
/// `faults` faults, and checks that create succeeded after logging each of
/// `retried`, and that its imageset publishes byte for byte.
fn create_survives(arm: impl FnOnce(&FaultProxy), faults: u32, retried: &[&str]) {
    let s = Setup::plain();
    let proxy = FaultProxy::start(&s.source.addr()).unwrap();
    arm(&proxy);
    let config = s.config_at("isc-proxy.yaml", &proxy.addr());
    let out = s.path("out");
    let created = run(&mut create_cmd(
        &config,
        &out,
        &s.path("ws-c"),
        "1GiB",
        &s.source,
    ));
    assert_eq!(created.code, 0, "{created}");
    assert_eq!(proxy.served(), faults, "every fault was served\n{created}");
    for retried in retried {
        assert!(created.stderr.contains(retried), "{retried}\n{created}");
    }
    let published = s.publish(&out, "m", "ws-d");
    assert_eq!(published.code, 0, "{published}");
    s.assert_byte_exact("m");
}

/// A registry that throttles a catalog's burst of reads answers 429 with
/// `Retry-After`: `create` waits and reads again, a manifest and a blob alike,
/// instead of failing a run that waiting completes.
#[test]
fn create_waits_out_a_429_on_a_manifest_and_on_a_blob() {
    create_survives(
        |proxy| {
            proxy.fail_nth("GET", "/manifests/", 1, Fault::TooManyRequests);
            proxy.fail_nth("GET", "/blobs/sha256:", 1, Fault::TooManyRequests);
        },
        2,
        &[
            "manifest read failed; retrying",
            "blob transfer failed; retrying",
        ],
    );
}

/// A download broken halfway (a load balancer that drops the connection)
/// leaves half a blob written into its chunk: `create` downloads it again from
/// its start into the same place, and the imageset holds it whole.
#[test]
fn create_downloads_a_blob_cut_off_halfway_again_from_its_start() {
    create_survives(
        |proxy| proxy.fail_nth("GET", "/blobs/sha256:", 1, Fault::CutAnswer),
        1,
        &["blob transfer failed; retrying"],
    );
}

/// `mirror` streams each blob from the source straight into the mirror
/// registry: a 429 on opening one waits and reads again.
#[test]
fn mirror_waits_out_a_429_on_a_blob_read() {
    let s = Setup::plain();
    let proxy = FaultProxy::start(&s.source.addr()).unwrap();
    proxy.fail_nth("GET", "/blobs/sha256:", 1, Fault::TooManyRequests);
    let config = s.config_at("isc-proxy.yaml", &proxy.addr());
    let mirrored = run(&mut s.mirror_cmd(&config, "ws"));
    assert_eq!(mirrored.code, 0, "{mirrored}");
    assert_eq!(proxy.served(), 1, "the 429 was served\n{mirrored}");
    assert!(
        mirrored.stderr.contains("blob read failed; retrying"),
        "{mirrored}"
    );
    s.assert_byte_exact("m");
}

/// A registry that fails every referrers lookup fails `create` at the first
/// manifest whose lookup gave up, without searching the others: each lookup
/// waits out its retries, and searching all of a catalog's thousands of
/// manifests first would make a failing registry take hours to fail.
#[test]
fn a_registry_failing_every_referrers_lookup_fails_create_without_searching_the_rest() {
    let src = airlock_tests::registry::Registry::plain().unwrap();
    let client = PushClient::new(&src).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let placed: Vec<Placed> = (0..24)
        .map(|i| {
            let image = ImageBuilder::new(Format::Oci).layer(100 + i, 1_000).build();
            push_as_1(&client, image, &format!("many/app-{i}"))
        })
        .collect();
    let proxy = FaultProxy::start(&src.addr()).unwrap();
    proxy.fail_always("GET", "/referrers/", Fault::ServerError);
    let config = config_naming(&tmp.path().join("isc.yaml"), &proxy.addr(), &placed, "");
    let out = tmp.path().join("out");
    let created = create(&config, &out, &tmp.path().join("ws"), "1MiB", &src);
    assert_eq!(created.code, EX_UNAVAILABLE, "{created}");
    assert!(
        created.stderr.contains("HTTP 500") && created.stderr.contains("gave up after 4 attempts"),
        "{created}"
    );
    // Four attempts for each manifest searched: 96 had all been searched.
    let asked = proxy.served() as usize;
    assert!(
        asked <= 2 * placed.len(),
        "{asked} referrers lookups for {} manifests\n{created}",
        placed.len()
    );
}

/// A source that keeps failing fails `mirror` as an unavailable registry
/// (69), naming the attempts, not as damaged data (65).
#[test]
fn mirror_from_a_source_that_keeps_failing_exits_unavailable() {
    let s = Setup::plain();
    let proxy = FaultProxy::start(&s.source.addr()).unwrap();
    proxy.fail_always("GET", "/blobs/sha256:", Fault::ServerError);
    let config = s.config_at("isc-proxy.yaml", &proxy.addr());
    let mirrored = run(&mut s.mirror_cmd(&config, "ws"));
    assert_eq!(mirrored.code, EX_UNAVAILABLE, "{mirrored}");
    assert!(
        mirrored.stderr.contains("HTTP 500")
            && mirrored.stderr.contains("gave up after 4 attempts"),
        "{mirrored}"
    );
}
