//! Registries as sites run them: bearer-token auth (`auth: token`, as Quay,
//! Harbor and registry.redhat.io run it) with grants per user and namespace, on
//! the real `docker-registry` with the harness's token issuer; and the connected
//! side behind an HTTP proxy (a real `tinyproxy`).

use std::path::Path;

use airlock_tests::bins::run;
use airlock_tests::faults::{Fault, FaultProxy};
use airlock_tests::images::{Format, ImageBuilder, PushClient, layer};
use airlock_tests::proxy::{Direction, Gate, SlowProxy};
use airlock_tests::registry::{NOTHING_LISTENS, Registry, RegistryOptions};
use airlock_tests::skopeo::{SkopeoOpts, copy_all, inspect_raw_at};
use airlock_tests::tinyproxy::Tinyproxy;
use airlock_tests::token::{Grant, TokenAuth};
use base64::Engine as _;

use crate::util::*;

fn token_registry(grants: Vec<Grant>) -> Registry {
    Registry::with_tokens(grants).unwrap()
}

/// `create` of `s`'s configuration into `out-NAME`, workspace `ws-NAME`.
fn create_in(s: &Setup, name: &str) -> std::process::Command {
    create_cmd(
        &s.config,
        &s.path(&format!("out-{name}")),
        &s.path(&format!("ws-{name}")),
        "1MiB",
        &s.source,
    )
}

/// Images of `size` bytes, one per `(seed, repository)`, tagged `1` in the
/// token registry `src` by its `pusher` (password `p-pass`), as skopeo copies
/// them there.
fn fill(src: &Registry, tmp: &Path, images: &[(u64, &str)], size: usize) -> Vec<Placed> {
    let plain = Registry::plain().unwrap();
    let client = PushClient::new(&plain).unwrap();
    let pusher = SkopeoOpts {
        authfile: Some(src.auth_file_for(tmp, "pusher", "p-pass").unwrap()),
        ..SkopeoOpts::for_registry(src)
    };
    images
        .iter()
        .map(|&(seed, repo)| {
            let image = ImageBuilder::new(Format::Oci).layer(seed, size).build();
            image.push(&client, repo, Some("1")).unwrap();
            copy_all(
                &format!("docker://{}/{repo}:1", plain.addr()),
                &SkopeoOpts::for_registry(&plain),
                &format!("docker://{}/{repo}:1", src.addr()),
                &pusher,
            )
            .unwrap();
            Placed {
                image,
                repo: repo.into(),
                config_ref: format!("{repo}:1"),
                dest_ref: format!("{repo}:1"),
            }
        })
        .collect()
}

/// An auth.json at `path` with a `user:password` for each key.
fn write_auths(path: &Path, entries: &[(String, &str)]) {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let auths: serde_json::Map<String, serde_json::Value> = entries
        .iter()
        .map(|(key, user)| (key.clone(), serde_json::json!({"auth": b64(user)})))
        .collect();
    std::fs::write(path, serde_json::json!({"auths": auths}).to_string()).unwrap();
}

/// Two imagesets of `placed` from `src`, made by `create` (for a configuration
/// and an output directory): all of it, then the first image alone, whose
/// publish prunes the rest.
fn all_then_first(
    tmp: &Path,
    src: &Registry,
    placed: &[Placed],
    create: impl Fn(&Path, &Path) -> airlock_tests::bins::Output,
) -> Vec<std::path::PathBuf> {
    [placed, &placed[..1]]
        .into_iter()
        .enumerate()
        .map(|(i, list)| {
            let dir = tmp.join(format!("c{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            let config = write_config(&dir, src, list, "");
            let out = tmp.join(format!("out{i}"));
            let created = create(&config, &out);
            assert_eq!(created.code, 0, "{created}");
            out
        })
        .collect()
}

#[test]
fn create_and_publish_through_token_registries_and_prune_with_a_delete_scope() {
    // The source lets `reader` pull under team/ only (the first grant: the
    // credential the suite's flags pass); `pusher` fills it.
    let src = token_registry(vec![
        Grant::new("reader", "r-pass", "team/", &["pull"]),
        Grant::new("pusher", "p-pass", "", &["pull", "push"]),
    ]);
    let dest = token_registry(vec![Grant::new(
        "writer",
        "w-pass",
        "",
        &["pull", "push", "delete"],
    )]);
    let tmp = tempfile::tempdir().unwrap();
    let placed = fill(
        &src,
        tmp.path(),
        &[(601, "team/a"), (602, "team/b")],
        30_000,
    );
    let ws_c = tmp.path().join("ws-c");
    let ws_d = tmp.path().join("ws-d");
    let outs = all_then_first(tmp.path(), &src, &placed, |config, out| {
        create(config, out, &ws_c, "1MiB", &src)
    });

    let first = publish(&outs[0], &dest, "m", &ws_d);
    assert_eq!(first.code, 0, "{first}");
    assert_byte_exact(&src, &dest, "m", &placed);

    // Pruning deletes under token auth: the token must grant `delete`.
    let second = publish(&outs[1], &dest, "m", &ws_d);
    assert_eq!(second.code, 0, "{second}");
    assert!(
        second.stdout.contains("1 manifests deleted, 0 kept in use"),
        "{second}"
    );
    assert!(inspect_raw_at(&dest, "m/team/b:1").is_err(), "B is gone");
    assert_byte_exact(&src, &dest, "m", &placed[..1]);
    let issuer = dest.issuer().unwrap();
    assert!(
        issuer.asked("writer", "m/team/b", "delete"),
        "{:?}",
        issuer.requests()
    );
}

#[test]
fn create_goes_through_the_proxy_the_environment_names_and_a_dead_proxy_is_named() {
    let s = Setup::plain();
    let proxy = Tinyproxy::start().unwrap();
    let out = s.path("out");
    let created = run(
        create_cmd(&s.config, &out, &s.path("ws-c"), "1MiB", &s.source)
            .env("HTTP_PROXY", proxy.url()),
    );
    assert_eq!(created.code, 0, "{created}");
    let log = proxy.log();
    let through: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&format!("http://{}/v2/", s.source.addr())))
        .collect();
    assert!(
        through.iter().any(|l| l.contains("/manifests/"))
            && through.iter().any(|l| l.contains("/blobs/")),
        "manifests and blobs were fetched through the proxy:\n{log}"
    );
    let published = s.publish(&out, "m", "ws-d");
    assert_eq!(published.code, 0, "{published}");
    s.assert_byte_exact("m");

    // A proxy that is not there is named, with what to check.
    let dead = format!("http://{NOTHING_LISTENS}");
    let failed = run(create_in(&s, "dead").env("HTTP_PROXY", &dead));
    assert_eq!(failed.code, EX_UNAVAILABLE, "{failed}");
    assert!(
        failed
            .stderr
            .contains(&format!("through the proxy {dead} (HTTP_PROXY)")),
        "{failed}"
    );
    // NO_PROXY exempts the registry from it.
    let exempt = run(create_in(&s, "exempt")
        .env("HTTP_PROXY", &dead)
        .env("NO_PROXY", "127.0.0.1"));
    assert_eq!(exempt.code, 0, "{exempt}");
}

/// Images `team/x:1` and `ops/y:1` in `src`, sharing a layer (returned), and an
/// imageset of them created in `tmp/out`.
fn sharing_a_layer(
    src: &Registry,
    tmp: &Path,
) -> (airlock_tests::images::Blob, Vec<Placed>, std::path::PathBuf) {
    let client = PushClient::new(src).unwrap();
    let shared = layer(611, 200_000);
    let mut placed = Vec::new();
    for (seed, repo) in [(612, "team/x"), (613, "ops/y")] {
        let image = ImageBuilder::new(Format::Oci)
            .with_layer(&shared)
            .layer(seed, 10_000)
            .build();
        placed.push(push_as_1(&client, image, repo));
    }
    let out = create_of(src, tmp, &placed, "1MiB");
    (shared, placed, out)
}

#[test]
fn a_layer_shared_by_two_repositories_crosses_into_a_token_registry_once() {
    let src = Registry::plain().unwrap();
    let dest = token_registry(vec![Grant::new("writer", "w-pass", "", &["pull", "push"])]);
    let tmp = tempfile::tempdir().unwrap();
    let (shared, placed, out) = sharing_a_layer(&src, tmp.path());
    let published = publish(&out, &dest, "m", &tmp.path().join("ws-d"));
    assert_eq!(published.code, 0, "{published}");
    assert!(published.stdout.contains(", 1 mounted,"), "{published}");
    // Access log lines of uploads closing with the shared layer's digest.
    let hex = shared.digest.trim_start_matches("sha256:");
    let uploads = dest
        .log()
        .lines()
        .filter(|l| l.contains("\"PUT /v2/") && l.contains(&format!("digest=sha256%3A{hex}")))
        .count();
    assert_eq!(uploads, 1, "{}", dest.log());
    assert_byte_exact(&src, &dest, "m", &placed);
}

#[test]
fn tokens_that_expire_in_the_middle_of_a_publish_are_asked_again() {
    let s = Setup::new(
        Registry::plain().unwrap(),
        Registry::start(RegistryOptions {
            token: Some(TokenAuth {
                stale_first: true,
                ..TokenAuth::new(vec![Grant::new("writer", "w-pass", "", &["pull", "push"])])
            }),
            ..RegistryOptions::default()
        })
        .unwrap(),
    );
    let (created, out) = s.create("1MiB");
    assert_eq!(created.code, 0, "{created}");
    let published = s.publish(&out, "m", "ws-d");
    assert_eq!(published.code, 0, "{published}");
    // The first token of every scope was refused by the registry and asked again.
    let issuer = s.dest.issuer().unwrap();
    issuer.issue_good_tokens();
    s.assert_byte_exact("m");
    assert!(issuer.requests().len() >= 4, "{:?}", issuer.requests());
    assert!(s.dest.log().contains("\"POST /v2/m/") && s.dest.log().contains(" 401 "));
}

#[test]
fn one_auth_file_with_a_credential_per_namespace_reaches_both() {
    // As on registry.redhat.io or Quay with a robot account per organisation:
    // team/ and ops/ each need their own user, both in one auth file.
    let src = token_registry(vec![
        Grant::new("team-robot", "t-pass", "team/", &["pull"]),
        Grant::new("ops-robot", "o-pass", "ops/", &["pull"]),
        Grant::new("pusher", "p-pass", "", &["pull", "push"]),
    ]);
    let dest = Registry::plain().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let placed = fill(&src, tmp.path(), &[(621, "team/a"), (622, "ops/b")], 20_000);
    let auth = tmp.path().join("auth.json");
    write_auths(
        &auth,
        &[
            (format!("{}/team", src.addr()), "team-robot:t-pass"),
            (format!("{}/ops", src.addr()), "ops-robot:o-pass"),
        ],
    );
    let config = write_config(tmp.path(), &src, &placed, "");
    let out = tmp.path().join("out");
    let created = run(
        imageset_cmd("create", &config, &out, &tmp.path().join("ws-c"))
            .args(["--limit", "1MiB", "--src-tls-verify=false", "--authfile"])
            .arg(&auth),
    );
    assert_eq!(created.code, 0, "{created}");
    let published = publish(&out, &dest, "m", &tmp.path().join("ws-d"));
    assert_eq!(published.code, 0, "{published}");
    for p in &placed {
        assert_eq!(
            inspect_raw_at(&dest, &format!("m/{}", p.dest_ref)).unwrap(),
            p.image.manifest
        );
    }
    let issuer = src.issuer().unwrap();
    assert!(
        issuer.asked("team-robot", "team/a", "pull") && issuer.asked("ops-robot", "ops/b", "pull"),
        "{:?}",
        issuer.requests()
    );
}

#[test]
fn the_proxy_flag_takes_every_request_through_the_proxy_it_names() {
    let s = Setup::plain();
    let proxy = Tinyproxy::start().unwrap();
    let created = run(create_in(&s, "out").args(["--proxy", &proxy.url()]));
    assert_eq!(created.code, 0, "{created}");
    assert!(
        proxy
            .log()
            .contains(&format!("http://{}/v2/", s.source.addr())),
        "{}",
        proxy.log()
    );
    let dead = format!("http://{NOTHING_LISTENS}");
    let failed = run(create_in(&s, "dead").args(["--proxy", &dead]));
    assert_eq!(failed.code, EX_UNAVAILABLE, "{failed}");
    assert!(
        failed
            .stderr
            .contains(&format!("through the proxy {dead} (--proxy)")),
        "{failed}"
    );
    let bad = run(create_in(&s, "bad").args(["--proxy", "ftp://proxy.example.com"]));
    assert_eq!(bad.code, EX_CONFIG, "{bad}");
    assert!(
        bad.stderr
            .contains("--proxy \"ftp://proxy.example.com\": expected http://HOST:PORT"),
        "{bad}"
    );
}

#[test]
fn max_nested_paths_flattens_names_for_a_registry_that_refuses_deeper_ones() {
    let s = Setup::plain();
    let (_, out) = s.create("1GiB");
    // As quay.io answers a name deeper than two components: 401, nothing
    // about depth.
    let proxy = FaultProxy::start(&s.dest.addr()).unwrap();
    proxy.refuse_names_deeper_than(2);
    let refused = run(&mut publish_via(&proxy, &out, "mirror", &s.path("ws-d")));
    assert_ne!(refused.code, 0, "{refused}");
    assert!(
        refused.stderr.contains("has 3 path components")
            && refused.stderr.contains("publish with --max-nested-paths N"),
        "{refused}"
    );
    assert!(proxy.served() > 0);

    let published =
        run(publish_via(&proxy, &out, "mirror", &s.path("ws-d")).args(["--max-nested-paths", "2"]));
    assert_eq!(published.code, 0, "{published}");
    let flat = |repo: &str| format!("mirror/{}", repo.replace('/', "-"));
    assert_byte_exact_at(&s.source, &s.dest, &s.placed, flat);
    let deep: Vec<String> = catalog(&s.dest)
        .into_iter()
        .filter(|r| r.split('/').count() > 2)
        .collect();
    assert!(deep.is_empty(), "{deep:?}");

    // The mirror sets name each flattened repository: a source namespace no
    // longer maps onto one mirror namespace.
    let resources = s.path("ws-d/cluster-resources");
    let idms = std::fs::read_to_string(resources.join("idms-oc-mirror.yaml")).unwrap();
    let itms = std::fs::read_to_string(resources.join("itms-oc-mirror.yaml")).unwrap();
    for p in &s.placed {
        let source = format!("source: {}/{}", s.source.addr(), p.repo);
        let mirror = format!("- {}/{}", proxy.addr(), flat(&p.repo));
        let in_idms = idms.contains(&source) && idms.contains(&mirror);
        let in_itms = itms.contains(&source) && itms.contains(&mirror);
        assert!(in_idms || in_itms, "{}:\n{idms}\n{itms}", p.repo);
    }
    assert!(
        !idms.contains(&format!("source: {}/team\n", s.source.addr())),
        "{idms}"
    );

    // Published again: nothing to do, the same names.
    let again =
        run(publish_via(&proxy, &out, "mirror", &s.path("ws-d")).args(["--max-nested-paths", "2"]));
    assert_eq!(again.code, 0, "{again}");
    assert!(!again.stdout.contains("published sequence"), "{again}");
}

#[test]
fn identity_tokens_are_exchanged_for_access_tokens_and_never_sent_as_passwords() {
    // As `az acr login` leaves an auth file: "user:" with no password, and an
    // OAuth2 refresh token beside it. Every token is asked by POST with it.
    let src = token_registry(vec![
        Grant::new("reader", "r-pass", "", &["pull"]),
        Grant::new("pusher", "p-pass", "", &["pull", "push"]),
        Grant::new("acr-src", "unknown", "team/", &["pull"]).with_identity_token("refresh-src"),
    ]);
    let dest = token_registry(vec![
        Grant::new("writer", "w-pass", "", &["pull", "push", "delete"]),
        Grant::new("acr-dest", "unknown", "m/", &["pull", "push", "delete"])
            .with_identity_token("refresh-dest"),
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let placed = fill(
        &src,
        tmp.path(),
        &[(631, "team/a"), (632, "team/b")],
        20_000,
    );
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let user = b64("00000000-0000-0000-0000-000000000000:");
    let auth = tmp.path().join("auth.json");
    std::fs::write(
        &auth,
        serde_json::json!({"auths": {
            src.addr(): {"auth": user, "identitytoken": "refresh-src"},
            dest.addr(): {"auth": user, "identitytoken": "refresh-dest"},
        }})
        .to_string(),
    )
    .unwrap();
    let (ws_c, ws_d) = (tmp.path().join("ws-c"), tmp.path().join("ws-d"));
    let outs = all_then_first(tmp.path(), &src, &placed, |config, out| {
        run(imageset_cmd("create", config, out, &ws_c)
            .args(["--limit", "1MiB", "--src-tls-verify=false", "--authfile"])
            .arg(&auth))
    });
    let publish_with = |out: &Path| run(&mut publish_cmd_with(out, &dest, "m", &ws_d, Some(&auth)));
    let first = publish_with(&outs[0]);
    assert_eq!(first.code, 0, "{first}");
    assert_byte_exact(&src, &dest, "m", &placed);
    // The delete of pruning needs a token for `delete`, exchanged the same way.
    let second = publish_with(&outs[1]);
    assert_eq!(second.code, 0, "{second}");
    assert!(inspect_raw_at(&dest, "m/team/b:1").is_err(), "B is gone");

    // Every token was asked with the identity token by POST, none with the
    // empty password beside it (the issuer would have refused it: user None).
    for (registry, user) in [(&src, "acr-src"), (&dest, "acr-dest")] {
        let requests = registry.issuer().unwrap().requests();
        assert!(requests.iter().all(|r| r.user.is_some()), "{requests:?}");
        let refreshed: Vec<_> = requests.iter().filter(|r| r.refreshed).collect();
        assert!(
            !refreshed.is_empty() && refreshed.iter().all(|r| r.user.as_deref() == Some(user)),
            "{requests:?}"
        );
    }
    let issuer = dest.issuer().unwrap();
    assert!(
        issuer.asked("acr-dest", "m/team/b", "delete"),
        "{:?}",
        issuer.requests()
    );
    assert!(
        issuer.asked("acr-dest", "m/team/a", "push"),
        "{:?}",
        issuer.requests()
    );
    assert!(src.issuer().unwrap().asked("acr-src", "team/a", "pull"));
}

#[test]
fn create_reaches_a_tls_registry_through_the_proxy_alone_by_connect() {
    // The source lets through only connections from 127.0.0.3, the address
    // tinyproxy leaves from: as on a site where only the proxy may go out.
    let s = Setup::new(Registry::tls().unwrap(), Registry::plain().unwrap());
    let leave: std::net::IpAddr = "127.0.0.3".parse().unwrap();
    let gate = Gate::start(&s.source.addr(), leave).unwrap();
    let proxy = Tinyproxy::start_binding(Some(leave)).unwrap();
    let config = s.path("gated.yaml");
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(&config, text.replace(&s.source.addr(), &gate.addr())).unwrap();
    let create = |name: &str| {
        let mut cmd = imageset_cmd(
            "create",
            &config,
            &s.path(&format!("out-{name}")),
            &s.path(&format!("ws-{name}")),
        );
        cmd.args(["--limit", "1MiB", "--src-cert-dir"])
            .arg(s.source.ca_cert_dir().unwrap());
        cmd
    };
    let direct = run(&mut create("direct"));
    assert_eq!(direct.code, EX_UNAVAILABLE, "{direct}");
    assert!(
        gate.refused() > 0 && gate.passed() == 0,
        "direct access is blocked"
    );

    let through = run(create("through").env("HTTPS_PROXY", proxy.url()));
    assert_eq!(through.code, 0, "{through}");
    assert!(gate.passed() > 0);
    assert!(
        proxy.log().contains(&format!("CONNECT {}", gate.addr())),
        "TLS went through a CONNECT tunnel:\n{}",
        proxy.log()
    );
    let published = s.publish(&s.path("out-through"), "m", "ws-d");
    assert_eq!(published.code, 0, "{published}");
    s.assert_byte_exact("m");
}

#[test]
fn a_mount_the_credential_may_not_make_is_uploaded_instead() {
    // A robot account per namespace at the mirror: neither may read the
    // other's repositories, so the registry refuses the mount of the shared
    // layer (distribution: 401, insufficient scope), and it is uploaded.
    let src = Registry::plain().unwrap();
    let dest = token_registry(vec![
        Grant::new("writer", "w-pass", "", &["pull"]),
        Grant::new("team-robot", "t-pass", "m/team/", &["pull", "push"]),
        Grant::new("ops-robot", "o-pass", "m/ops/", &["pull", "push"]),
        Grant::new(
            "state-robot",
            "s-pass",
            "m/airlock-state",
            &["pull", "push"],
        ),
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let (_, placed, out) = sharing_a_layer(&src, tmp.path());
    let auth = tmp.path().join("auth.json");
    let mut robots = vec![
        (format!("{}/m/team", dest.addr()), "team-robot:t-pass"),
        (format!("{}/m/ops", dest.addr()), "ops-robot:o-pass"),
    ];
    write_auths(&auth, &robots);
    // The site state's repository is easily forgotten: the error names it.
    let forgotten = run(&mut publish_cmd_with(
        &out,
        &dest,
        "m",
        &tmp.path().join("ws-forgotten"),
        Some(&auth),
    ));
    assert_eq!(forgotten.code, EX_UNAVAILABLE, "{forgotten}");
    assert!(
        forgotten.stderr.contains(&format!(
            "Airlock keeps the site's state in {}/m/airlock-state",
            dest.addr()
        )),
        "{forgotten}"
    );
    robots.push((
        format!("{}/m/airlock-state", dest.addr()),
        "state-robot:s-pass",
    ));
    write_auths(&auth, &robots);
    let published = run(&mut publish_cmd_with(
        &out,
        &dest,
        "m",
        &tmp.path().join("ws-d"),
        Some(&auth),
    ));
    assert_eq!(published.code, 0, "{published}");
    assert!(published.stdout.contains(", 0 mounted,"), "{published}");
    assert!(
        dest.log().contains("mount="),
        "a mount was asked for:\n{}",
        dest.log()
    );
    assert_byte_exact(&src, &dest, "m", &placed);
}

#[test]
fn the_upload_session_a_declined_mount_opens_is_cancelled() {
    // A registry that declines a mount opens an upload session instead (202),
    // which the upload that follows does not use: it is cancelled.
    let s = Setup::plain();
    let (_, out) = s.create("1GiB");
    let proxy = FaultProxy::start(&s.dest.addr()).unwrap();
    proxy.decline_mounts();
    let published = run(&mut publish_via(&proxy, &out, "m", &s.path("ws-d")));
    assert_eq!(published.code, 0, "{published}");
    assert!(proxy.served() > 0, "mounts were asked for and declined");
    assert!(published.stdout.contains(", 0 mounted,"), "{published}");
    s.assert_byte_exact("m");
    // Each session a declined mount opened was cancelled (this registry
    // answers 204 but keeps an empty session directory: distribution's own
    // bug, so its access log is what is checked).
    let cancelled = s
        .dest
        .log()
        .lines()
        .filter(|l| {
            l.contains("\"DELETE /v2/m/")
                && l.contains("/blobs/uploads/")
                && l.contains("HTTP/1.1\" 204")
        })
        .count();
    assert_eq!(cancelled as u32, proxy.served(), "{}", s.dest.log());
}

#[test]
fn tokens_good_for_five_seconds_expire_during_a_publish_of_100_mb_and_are_asked_again() {
    let src = Registry::plain().unwrap();
    let dest = Registry::start(RegistryOptions {
        token: Some(TokenAuth {
            lifetime: std::time::Duration::from_secs(5),
            ..TokenAuth::new(vec![Grant::new("writer", "w-pass", "", &["pull", "push"])])
        }),
        ..RegistryOptions::default()
    })
    .unwrap();
    let client = PushClient::new(&src).unwrap();
    let placed: Vec<Placed> = (0..4u64)
        .map(|i| {
            let repo = format!("big/i{i}");
            let image = ImageBuilder::new(Format::Oci)
                .layer(640 + i, 25 << 20)
                .build();
            image.push(&client, &repo, Some("1")).unwrap();
            Placed {
                image,
                config_ref: format!("{repo}:1"),
                dest_ref: format!("{repo}:1"),
                repo,
            }
        })
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), &src, &placed, "");
    let out = tmp.path().join("out");
    let created = create(&config, &out, &tmp.path().join("ws-c"), "1GiB", &src);
    assert_eq!(created.code, 0, "{created}");

    // Half way through, the uploads stall until every token issued so far has
    // expired; the uploads under way were authorised when they began.
    let proxy = SlowProxy::start(&dest.addr(), Direction::Upload, 50 << 20).unwrap();
    let auth = tmp.path().join("auth.json");
    write_auths(&auth, &[(proxy.addr(), "writer:w-pass")]);
    let mut cmd = airlock_tests::bins::disconnected();
    cmd.arg("publish")
        .arg("--from")
        .arg(&out)
        .arg("--to")
        .arg(format!("docker://{}/m", proxy.addr()))
        .arg("--workspace")
        .arg(tmp.path().join("ws-d"))
        .args(["--dest-tls-verify=false", "--authfile"])
        .arg(&auth)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    proxy
        .wait_stalled(std::time::Duration::from_secs(120))
        .unwrap();
    let issuer = dest.issuer().unwrap();
    let before = issuer.requests().len();
    // Not synchronisation: the scenario is time passing beyond the lifetime.
    std::thread::sleep(std::time::Duration::from_secs(6));
    proxy.release();
    let done = child.wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&done.stdout),
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(
        issuer.requests().len() > before,
        "tokens were asked again after they expired: {:?}",
        issuer.requests()
    );
    assert_byte_exact(&src, &dest, "m", &placed);
}

#[test]
fn a_token_expired_between_opening_an_upload_and_sending_it_restarts_the_upload() {
    let s = Setup::new(
        Registry::plain().unwrap(),
        token_registry(vec![Grant::new("writer", "w-pass", "", &["pull", "push"])]),
    );
    let (_, out) = s.create("1GiB");
    let proxy = FaultProxy::start(&s.dest.addr()).unwrap();
    proxy.fail_nth("PUT", "/blobs/uploads/", 1, Fault::Expired);
    let auth = s.path("auth.json");
    write_auths(&auth, &[(proxy.addr(), "writer:w-pass")]);
    let published = run(publish_via(&proxy, &out, "m", &s.path("ws-d"))
        .arg("--authfile")
        .arg(&auth));
    assert_eq!(published.code, 0, "{published}");
    assert_eq!(proxy.served(), 1);
    assert!(
        published
            .stderr
            .contains("the token expired between opening the upload and sending it"),
        "{published}"
    );
    s.dest.issuer().unwrap().issue_good_tokens();
    s.assert_byte_exact("m");
    // The push token of one repository was asked again after the refusal.
    let requests = s.dest.issuer().unwrap().requests();
    let mut asked: std::collections::HashMap<&str, usize> = Default::default();
    for r in &requests {
        if let [scope] = &r.scopes[..]
            && scope.ends_with(":pull,push")
        {
            *asked.entry(scope.as_str()).or_default() += 1;
        }
    }
    assert!(asked.values().any(|&n| n >= 2), "{requests:?}");
}

/// Access-log lines of `registry` for requests whose method and path start with
/// `prefix` (`"GET /v2/ "` is the version check).
fn requests(registry: &Registry, prefix: &str) -> usize {
    registry
        .log()
        .lines()
        .filter(|l| l.contains(&format!("\"{prefix}")))
        .count()
}

/// A registry that asks for no credential is read with one request per
/// manifest, tag check, referrers list and blob: oci-client would ask `/v2/`
/// again before each (it caches an authorisation only when there is one), which
/// doubled the round trips of catalog-sized work.
#[test]
fn an_anonymous_registry_is_not_asked_for_v2_before_every_read() {
    let s = Setup::plain();
    let (_, out) = s.create("1MiB");
    let reads = requests(&s.source, "GET /v2/") + requests(&s.source, "HEAD /v2/");
    let pings = requests(&s.source, "GET /v2/ ");
    assert!(reads > 20, "too few reads to tell: {reads}");
    // One per client that asks whether the registry wants a token, not one
    // per read (which made them about half before).
    assert!(
        pings * 10 <= reads,
        "{pings} version checks for {reads} reads"
    );
    let published = s.publish(&out, "m", "ws-d");
    assert_eq!(published.code, 0, "{published}");
    s.assert_byte_exact("m");
}

/// Publishing asks the destination only what it must: a tagged manifest is put
/// once, by its tag (the registry reports the digest it stored, so a second put
/// by digest would only make it write the manifest again), and a registry that
/// asks for no credential is asked `/v2/` once, not once per repository before
/// its first push (oci-client's token check).
#[test]
fn a_tagged_manifest_is_put_once_and_v2_is_not_asked_per_repository() {
    let s = Setup::plain();
    let (_, out) = s.create("1MiB");
    let published = s.publish(&out, "m", "ws-d");
    assert_eq!(published.code, 0, "{published}");
    s.assert_byte_exact("m");
    let log = s.dest.log();
    let mut tagged = 0;
    for p in &s.placed {
        let by_digest = format!("PUT /v2/m/{}/manifests/{} ", p.repo, p.image.digest);
        match p
            .dest_ref
            .split_once('@')
            .map_or(p.dest_ref.rsplit_once(':'), |_| None)
        {
            Some((_, tag)) => {
                tagged += 1;
                let by_tag = format!("PUT /v2/m/{}/manifests/{tag} ", p.repo);
                assert_eq!(log.matches(&by_tag).count(), 1, "{by_tag}\n{log}");
                assert!(!log.contains(&by_digest), "{by_digest} as well\n{log}");
            }
            None => assert_eq!(log.matches(&by_digest).count(), 1, "{by_digest}\n{log}"),
        }
    }
    assert!(tagged >= 2, "the seed tags most images");
    let repositories = s.placed.len() + 1; // and the workspace state's
    let pings = log
        .lines()
        .filter(|l| l.contains("\"GET /v2/ ") && l.contains("airlock/"))
        .count();
    assert!(
        pings < repositories,
        "{pings} version checks for {repositories} repositories\n{log}"
    );
}

/// A source registry that serves other bytes under a blob's digest (its
/// storage altered, same length) stops `create` with the digest named and no
/// chunk file written, read anonymously (the registry client's own stream)
/// and with credentials (oci-client's). Both check the digest as the blob
/// streams in, and `create` does not hash the bytes again (stop 52): without
/// either check the altered blob would be shipped.
#[test]
fn a_blob_served_with_other_bytes_than_its_digest_stops_create() {
    let anonymous = Setup::plain();
    let credentialed = Setup::new(
        Registry::tls_with_auth("reader", "s3cret").unwrap(),
        Registry::plain().unwrap(),
    );
    for (s, says) in [
        (anonymous, "digest mismatch: the bytes hash to"),
        (credentialed, "Invalid digest"),
    ] {
        let layer = s.placed[0].image.blobs.last().unwrap().digest.clone();
        let hex = layer.strip_prefix("sha256:").unwrap();
        let data = s.source.storage_dir().join(format!(
            "docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        ));
        let mut bytes = std::fs::read(&data).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&data, bytes).unwrap();
        let out = s.path("out");
        let created = run(&mut create_cmd(
            &s.config,
            &out,
            &s.path("ws-c"),
            "1MiB",
            &s.source,
        ));
        assert_ne!(created.code, 0, "{created}");
        assert!(
            created.stderr.contains(hex) && created.stderr.contains(says),
            "{created}"
        );
        let shipped = chunk_files(&out);
        assert!(shipped.is_empty(), "{shipped:?}");
    }
}
