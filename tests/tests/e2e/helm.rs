//! `mirror.helm`: charts from a classic repository served over HTTP, from an
//! OCI registry and from a local directory; their enabled images mirrored
//! byte-exact and the disabled ones not; the charts published as OCI artifacts
//! `helm pull` reads; a template that cannot render stopping `create` with its
//! chart, file and line; and a new chart version shipping only new blobs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use airlock_tests::bins::{self, run_ok};
use airlock_tests::http::{Reply, Server};
use airlock_tests::images::{Blob, Format, Image, ImageBuilder, PushClient, digest_of, layer};
use airlock_tests::registry::Registry;
use airlock_tests::skopeo::inspect_raw_at;
use serde_json::{Value, json};

use crate::util::{EX_DATA, catalog, chunk_files, create, publish, read_manifest, source_flags};

const CHART_LAYER: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";
const CHART_CONFIG: &str = "application/vnd.cncf.helm.config.v1+json";

/// The test chart (`tests/fixtures/helm/demo`) copied to `dir/demo` with
/// `REGISTRY` replaced by `registry` and its version set to `version`, and
/// `edit` applied to its values.yaml text.
fn demo_chart(
    dir: &Path,
    registry: &str,
    version: &str,
    edit: impl Fn(String) -> String,
) -> PathBuf {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/helm/demo");
    let to = dir.join("demo");
    copy_tree(&from, &to);
    for f in [
        "values.yaml",
        "charts/cache/values.yaml",
        "charts/metrics/values.yaml",
    ] {
        let p = to.join(f);
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("REGISTRY", registry);
        std::fs::write(&p, text).unwrap();
    }
    let values = to.join("values.yaml");
    std::fs::write(&values, edit(std::fs::read_to_string(&values).unwrap())).unwrap();
    let chart = to.join("Chart.yaml");
    let text = std::fs::read_to_string(&chart)
        .unwrap()
        .replace("version: 1.0.0", &format!("version: {version}"));
    std::fs::write(&chart, text).unwrap();
    to
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// `helm package`'s layout made with GNU tar: `demo/...` gzipped.
fn package(chart_dir: &Path) -> Vec<u8> {
    let out = chart_dir.with_extension("tgz");
    run_ok(
        std::process::Command::new("tar")
            .arg("czf")
            .arg(&out)
            .arg("-C")
            .arg(chart_dir.parent().unwrap())
            .arg(chart_dir.file_name().unwrap()),
    );
    std::fs::read(out).unwrap()
}

/// A classic chart repository: `index.yaml` at `/repo/index.yaml` listing
/// `charts` (version, archive), each served at a relative URL, its digest in the
/// index, and a prerelease that "newest" must not pick.
fn repository(charts: Vec<(String, Vec<u8>)>) -> Server {
    repository_with(charts, None, |_| {})
}

/// [`repository`] that asks for Basic `credentials` (user, password) and serves
/// each archive as `tamper` leaves it (the index keeps the true digest).
fn repository_with(
    charts: Vec<(String, Vec<u8>)>,
    credentials: Option<(&str, &str)>,
    tamper: impl Fn(&mut Vec<u8>),
) -> Server {
    use base64::Engine as _;
    let expected = credentials.map(|(u, p)| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    });
    let mut entries = Vec::new();
    for (version, bytes) in &charts {
        entries.push(json!({
            "apiVersion": "v2",
            "name": "demo",
            "version": version,
            "urls": [format!("charts/demo-{version}.tgz")],
            "digest": digest_of(bytes).trim_start_matches("sha256:"),
        }));
    }
    entries.push(json!({"name": "demo", "version": "9.0.0-rc.1", "urls": ["charts/missing.tgz"]}));
    let index =
        serde_yaml_ng::to_string(&json!({"apiVersion": "v1", "entries": {"demo": entries}}))
            .unwrap();
    let charts: Vec<(String, Vec<u8>)> = charts
        .into_iter()
        .map(|(v, mut b)| {
            tamper(&mut b);
            (v, b)
        })
        .collect();
    let charts = Arc::new(charts);
    Server::start(move |req| {
        if expected.is_some() && req.header("authorization") != expected.as_deref() {
            return Reply::new(401, None, Vec::new());
        }
        if req.target == "/repo/index.yaml" {
            return Reply::new(200, Some("application/x-yaml"), index.clone().into_bytes());
        }
        for (version, bytes) in charts.iter() {
            if req.target == format!("/repo/charts/demo-{version}.tgz") {
                return Reply::new(200, Some("application/gzip"), bytes.clone());
            }
        }
        Reply::new(404, None, Vec::new())
    })
    .unwrap()
}

/// The images the demo chart's values name, pushed to `source`; `app` has the
/// tag the chart's appVersion gives.
struct Pushed {
    app: Image,
    init: Image,
    cache: Image,
}

fn push_images(source: &Registry, base: &Blob) -> Pushed {
    let client = PushClient::new(source).unwrap();
    let image = |seed: u64| {
        ImageBuilder::new(Format::Oci)
            .with_layer(base)
            .layer(seed, 40_000)
            .build()
    };
    let pushed = Pushed {
        app: image(11),
        init: image(12),
        cache: image(13),
    };
    pushed.app.push(&client, "demo/app", Some("2.1.0")).unwrap();
    pushed.init.push(&client, "demo/init", Some("1.0")).unwrap();
    pushed
        .cache
        .push(&client, "demo/cache", Some("3.0"))
        .unwrap();
    // Named only by the disabled sidecar and the disabled subchart.
    image(14)
        .push(&client, "demo/sidecar", Some("1.0"))
        .unwrap();
    image(15)
        .push(&client, "demo/metrics", Some("1.0"))
        .unwrap();
    pushed
}

fn config(dir: &Path, helm: &str) -> PathBuf {
    let path = dir.join("isc.yaml");
    std::fs::write(
        &path,
        format!("apiVersion: mirror.openshift.io/v2alpha1\nkind: ImageSetConfiguration\nmirror:\n  helm:\n{helm}"),
    )
    .unwrap();
    path
}

fn blob_at(registry: &Registry, repo: &str, digest: &str) -> Vec<u8> {
    let resp = registry
        .http_client()
        .unwrap()
        .get(format!("{}/v2/{repo}/blobs/{digest}", registry.url()))
        .send()
        .unwrap();
    assert!(
        resp.status().is_success(),
        "{repo}@{digest}: {}",
        resp.status()
    );
    resp.bytes().unwrap().to_vec()
}

/// The chart artifact at `repo:tag` of `registry`: its layer is `tgz` byte for
/// byte, its config the chart's metadata; returns the manifest.
fn assert_chart_artifact(registry: &Registry, repo: &str, tag: &str, tgz: &[u8]) -> Value {
    let raw = inspect_raw_at(registry, &format!("{repo}:{tag}")).unwrap();
    let m: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(m["config"]["mediaType"], CHART_CONFIG, "{m}");
    assert_eq!(m["layers"][0]["mediaType"], CHART_LAYER, "{m}");
    let layer = m["layers"][0]["digest"].as_str().unwrap();
    assert_eq!(
        blob_at(registry, repo, layer),
        tgz,
        "the chart archive at {repo}:{tag}"
    );
    let config: Value = serde_json::from_slice(&blob_at(
        registry,
        repo,
        m["config"]["digest"].as_str().unwrap(),
    ))
    .unwrap();
    assert_eq!(config["name"], "demo");
    assert_eq!(config["version"], tag);
    m
}

#[test]
fn a_classic_repository_chart_mirrors_its_enabled_images_and_is_published_as_an_oci_artifact() {
    let tmp = tempfile::tempdir().unwrap();
    let source = Registry::plain().unwrap();
    let dest = Registry::plain().unwrap();
    let pushed = push_images(&source, &layer(1, 100_000));
    let tgz = package(&demo_chart(tmp.path(), &source.addr(), "1.0.0", |v| v));
    let older = package(&demo_chart(
        &tmp.path().join("old"),
        &source.addr(),
        "0.9.0",
        |v| v,
    ));
    let repo = repository(vec![("0.9.0".into(), older), ("1.0.0".into(), tgz.clone())]);
    let isc = config(
        tmp.path(),
        &format!(
            "    repositories:\n    - name: demo\n      url: http://127.0.0.1:{}/repo\n      charts:\n      - name: demo\n",
            repo.port()
        ),
    );

    // `list charts` shows what `create` will carry.
    let mut list = bins::connected();
    list.args(["list", "charts", "-o", "json", "--config"])
        .arg(&isc);
    source_flags(&mut list, &source);
    let listed: Value = serde_json::from_str(&run_ok(&mut list).stdout).unwrap();
    let a = source.addr();
    assert_eq!(
        listed,
        json!([{
            "entry": "mirror.helm.repositories[0].charts[0]",
            "name": "demo",
            "version": "1.0.0",
            "origin": format!("http://127.0.0.1:{}/repo/charts/demo-1.0.0.tgz", repo.port()),
            "publishedAs": "charts/demo:1.0.0",
            "images": [format!("{a}/demo/app:2.1.0"), format!("{a}/demo/cache:3.0"), format!("{a}/demo/init:1.0")],
            "notImages": [],
        }])
    );

    let out = tmp.path().join("out");
    let created = create(&isc, &out, &tmp.path().join("ws"), "1GiB", &source);
    assert!(created.success(), "{created}");
    let published = publish(&out, &dest, "mirror", &tmp.path().join("dws"));
    assert!(published.success(), "{published}");

    for (repo, tag, image) in [
        ("demo/app", "2.1.0", &pushed.app),
        ("demo/init", "1.0", &pushed.init),
        ("demo/cache", "3.0", &pushed.cache),
    ] {
        let got = inspect_raw_at(&dest, &format!("mirror/{repo}:{tag}")).unwrap();
        assert_eq!(got, image.manifest, "{repo}:{tag} byte-exact");
    }
    let repos = catalog(&dest);
    assert!(
        !repos
            .iter()
            .any(|r| r.contains("sidecar") || r.contains("metrics")),
        "disabled images were mirrored: {repos:?}"
    );
    assert_chart_artifact(&dest, "mirror/charts/demo", "1.0.0", &tgz);
    // The chart is in no mirror set: clusters pull it with helm, not by redirect.
    let m = read_manifest(&out);
    assert!(
        m.images
            .iter()
            .any(|i| i.kind == airlock_imageset::ImageKind::Chart)
    );
}

#[test]
fn an_oci_chart_and_a_local_chart_directory_are_mirrored() {
    let tmp = tempfile::tempdir().unwrap();
    let source = Registry::plain().unwrap();
    let dest = Registry::plain().unwrap();
    push_images(&source, &layer(2, 100_000));
    // The OCI chart: version 1.0.0 pushed as `helm push` lays it out.
    let tgz = package(&demo_chart(tmp.path(), &source.addr(), "1.0.0", |v| v));
    let client = PushClient::new(&source).unwrap();
    let config_blob = Blob::new(
        br#"{"apiVersion":"v2","name":"demo","version":"1.0.0"}"#.to_vec(),
        None,
    );
    let chart_blob = Blob::new(tgz.clone(), None);
    client.push_blob("helm/demo", &config_blob).unwrap();
    client.push_blob("helm/demo", &chart_blob).unwrap();
    let manifest = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": CHART_CONFIG, "digest": config_blob.digest, "size": config_blob.bytes.len()},
        "layers": [{"mediaType": CHART_LAYER, "digest": chart_blob.digest, "size": tgz.len()}],
        "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"},
    }))
    .unwrap();
    client
        .push_manifest(
            "helm/demo",
            "1.0.0",
            &manifest,
            "application/vnd.oci.image.manifest.v1+json",
        )
        .unwrap();
    // The local chart: version 1.1.0 with the sidecar turned on.
    let local = demo_chart(&tmp.path().join("local"), &source.addr(), "1.1.0", |v| {
        v.replacen("enabled: false", "enabled: true", 1)
    });
    let isc = config(
        tmp.path(),
        &format!(
            "    local:\n    - name: demo\n      path: {}\n    repositories:\n    - name: oci\n      url: oci://{}/helm\n      charts:\n      - name: demo\n        version: 1.0.0\n",
            local.display(),
            source.addr()
        ),
    );
    let out = tmp.path().join("out");
    let created = create(&isc, &out, &tmp.path().join("ws"), "1GiB", &source);
    assert!(created.success(), "{created}");
    let published = publish(&out, &dest, "mirror", &tmp.path().join("dws"));
    assert!(published.success(), "{published}");
    // The OCI chart is copied as it is: same manifest bytes.
    assert_eq!(
        inspect_raw_at(&dest, "mirror/charts/demo:1.0.0").unwrap(),
        manifest
    );
    assert_chart_artifact(&dest, "mirror/charts/demo", "1.0.0", &tgz);
    // The local directory is packaged; the archive reads back as the chart.
    let m = assert_chart_artifact_layer(&dest, "mirror/charts/demo", "1.1.0");
    assert!(m.contains("demo/templates/deployment.yaml"), "{m}");
    // Its sidecar is enabled, so its image came too.
    assert!(catalog(&dest).contains(&"mirror/demo/sidecar".to_string()));
}

/// The file names in the chart archive at `repo:tag`, via `tar tz`.
fn assert_chart_artifact_layer(registry: &Registry, repo: &str, tag: &str) -> String {
    let raw = inspect_raw_at(registry, &format!("{repo}:{tag}")).unwrap();
    let m: Value = serde_json::from_slice(&raw).unwrap();
    let tgz = blob_at(registry, repo, m["layers"][0]["digest"].as_str().unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("c.tgz");
    std::fs::write(&f, tgz).unwrap();
    run_ok(std::process::Command::new("tar").arg("tzf").arg(&f)).stdout
}

#[test]
fn a_template_that_cannot_render_stops_create_naming_chart_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let source = Registry::plain().unwrap();
    let chart = demo_chart(tmp.path(), &source.addr(), "1.0.0", |v| v);
    std::fs::write(
        chart.join("templates/job.yaml"),
        "apiVersion: batch/v1\nkind: Job\nspec:\n  template:\n    spec:\n      containers:\n      - image: {{ genSignedCert \"x\" nil nil 365 .ca }}\n",
    )
    .unwrap();
    let isc = config(
        tmp.path(),
        &format!(
            "    local:\n    - name: demo\n      path: {}\n",
            chart.display()
        ),
    );
    let out = tmp.path().join("out");
    let created = create(&isc, &out, &tmp.path().join("ws"), "1GiB", &source);
    assert_eq!(created.code, EX_DATA, "{created}");
    assert!(
        created
            .stderr
            .contains("mirror.helm.local[0]: chart demo 1.0.0: demo/templates/job.yaml:7: function \"genSignedCert\""),
        "{created}"
    );
    assert!(
        !out.exists() || chunk_files(&out).is_empty(),
        "nothing is written"
    );
}

#[test]
fn a_new_chart_version_whose_images_share_layers_ships_only_new_blobs() {
    let tmp = tempfile::tempdir().unwrap();
    let source = Registry::plain().unwrap();
    let base = layer(3, 200_000);
    let pushed = push_images(&source, &base);
    // Version 1.1.0 deploys app 2.2.0: the same base layer, one new layer.
    let next = ImageBuilder::new(Format::Oci)
        .with_layer(&base)
        .layer(21, 40_000)
        .build();
    next.push(
        &PushClient::new(&source).unwrap(),
        "demo/app",
        Some("2.2.0"),
    )
    .unwrap();
    let ws = tmp.path().join("ws");
    let run_version = |version: &str, tag: &str, out: &str| {
        let chart = demo_chart(&tmp.path().join(version), &source.addr(), version, |v| {
            v.replace("tag: \"\"", &format!("tag: \"{tag}\""))
        });
        let isc = config(
            &tmp.path().join(version),
            &format!(
                "    local:\n    - name: demo\n      path: {}\n",
                chart.display()
            ),
        );
        let out = tmp.path().join(out);
        let created = create(&isc, &out, &ws, "1GiB", &source);
        assert!(created.success(), "{created}");
        read_manifest(&out)
    };
    let first = run_version("1.0.0", "2.1.0", "one");
    let second = run_version("1.1.0", "2.2.0", "two");
    assert_eq!(second.sequence, first.sequence + 1);
    let carried = |m: &airlock_imageset::ImagesetManifest| -> Vec<String> {
        m.blobs
            .iter()
            .filter(|b| !b.parts.is_empty())
            .map(|b| b.digest.to_string())
            .collect()
    };
    let (one, two) = (carried(&first), carried(&second));
    assert!(
        one.contains(&base.digest),
        "the first imageset carries the base layer"
    );
    assert!(
        !two.contains(&base.digest),
        "the shared base layer travels once"
    );
    for b in next.layer_blobs() {
        if b.digest != base.digest {
            assert!(
                two.contains(&b.digest),
                "the new layer {} travels",
                b.digest
            );
        }
    }
    for image in [&pushed.init, &pushed.cache] {
        for b in image.all_blobs() {
            assert!(
                !two.contains(&b.digest),
                "an unchanged image's blob {} travelled again",
                b.digest
            );
        }
    }
}

#[test]
fn a_repository_behind_basic_auth_and_an_archive_that_does_not_match_its_index() {
    let tmp = tempfile::tempdir().unwrap();
    let source = Registry::plain().unwrap();
    push_images(&source, &layer(4, 50_000));
    let tgz = package(&demo_chart(tmp.path(), &source.addr(), "1.0.0", |v| v));
    let list = |repo: &Server, authfile: Option<&Path>| {
        let isc = config(
            tmp.path(),
            &format!(
                "    repositories:\n    - name: demo\n      url: http://127.0.0.1:{}/repo/\n      charts:\n      - name: demo\n        version: 1.0.0\n",
                repo.port()
            ),
        );
        let mut cmd = bins::connected();
        cmd.args(["list", "charts", "--config"]).arg(&isc);
        cmd.arg("--src-tls-verify=false");
        if let Some(a) = authfile {
            cmd.arg("--authfile").arg(a);
        }
        airlock_tests::bins::run(&mut cmd)
    };
    let guarded = repository_with(
        vec![("1.0.0".into(), tgz.clone())],
        Some(("helm", "s3cret")),
        |_| {},
    );
    let denied = list(&guarded, None);
    assert_eq!(denied.code, crate::util::EX_UNAVAILABLE, "{denied}");
    assert!(denied.stderr.contains("HTTP 401"), "{denied}");
    assert!(
        denied.stderr.contains("auth file"),
        "the error says where credentials go: {denied}"
    );
    let authfile = tmp.path().join("auth.json");
    std::fs::write(
        &authfile,
        json!({"auths": {format!("127.0.0.1:{}", guarded.port()): {"auth": "aGVsbTpzM2NyZXQ="}}})
            .to_string(),
    )
    .unwrap();
    let allowed = list(&guarded, Some(&authfile));
    assert!(allowed.success(), "{allowed}");
    assert!(allowed.stdout.contains("charts/demo:1.0.0"), "{allowed}");

    // An index that lists its archive on another origin (another port of the
    // same host): the archive is fetched without the repository's credentials.
    let leaked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let archive_bytes = tgz.clone();
    let seen = leaked.clone();
    let elsewhere = Server::start(move |req| {
        if req.header("authorization").is_some() {
            seen.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        Reply::new(200, Some("application/gzip"), archive_bytes.clone())
    })
    .unwrap();
    let index = serde_yaml_ng::to_string(&json!({"apiVersion": "v1", "entries": {"demo": [{
        "name": "demo", "version": "1.0.0",
        "urls": [format!("http://127.0.0.1:{}/demo-1.0.0.tgz", elsewhere.port())],
        "digest": digest_of(&tgz).trim_start_matches("sha256:"),
    }]}}))
    .unwrap();
    let expected = "Basic aGVsbTpzM2NyZXQ=";
    let indexed = Server::start(move |req| match req.header("authorization") {
        Some(a) if a == expected => Reply::new(200, None, index.clone().into_bytes()),
        _ => Reply::new(401, None, Vec::new()),
    })
    .unwrap();
    std::fs::write(
        &authfile,
        json!({"auths": {format!("127.0.0.1:{}", indexed.port()): {"auth": "aGVsbTpzM2NyZXQ="}}})
            .to_string(),
    )
    .unwrap();
    let split = list(&indexed, Some(&authfile));
    assert!(split.success(), "{split}");
    assert!(
        !leaked.load(std::sync::atomic::Ordering::SeqCst),
        "the repository's credentials went to another origin"
    );

    // One byte changed on the way: the index's digest catches it.
    let tampered = repository_with(vec![("1.0.0".into(), tgz)], None, |b| {
        let last = b.len() - 1;
        b[last] ^= 0xff;
    });
    let refused = list(&tampered, None);
    assert_eq!(refused.code, EX_DATA, "{refused}");
    assert!(
        refused
            .stderr
            .contains("mirror.helm.repositories[0].charts[0]")
            && refused.stderr.contains("demo-1.0.0.tgz")
            && refused.stderr.contains("the index says"),
        "{refused}"
    );
}
