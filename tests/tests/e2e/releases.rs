//! OpenShift releases: selection on real update graphs served by a local update
//! service, and synthetic release payloads in the real layout mirrored end to end.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::Path;

use airlock_tests::bins::{self, Output, run};
use airlock_tests::images::{Format, Image, ImageBuilder, PushClient, layer, two_platform};
use airlock_tests::registry::Registry;
use airlock_tests::release::{ReleaseSigner, coreos_bootimages, graph, release_image};
use airlock_tests::skopeo::inspect_raw_at;
use airlock_tests::update_service::UpdateService;
use base64::Engine;
use semver::Version;
use serde_json::Value;

use crate::util::*;

const HEAD: &str = "apiVersion: mirror.openshift.io/v2alpha1\nkind: ImageSetConfiguration\n";

/// A real graph document, read the way the test computes expectations: versions,
/// payloads and every edge (index edges and version-named conditional edges).
struct RealGraph {
    nodes: Vec<(Version, String)>,
    next: HashMap<usize, Vec<usize>>,
    bytes: Vec<u8>,
}

impl RealGraph {
    fn load(path: &str) -> Self {
        let bytes = std::fs::read(airlock_tests::fixtures_dir().join(path)).unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        let nodes: Vec<(Version, String)> = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    Version::parse(n["version"].as_str().unwrap()).unwrap(),
                    n["payload"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let mut next: HashMap<usize, Vec<usize>> = HashMap::new();
        for e in v["edges"].as_array().unwrap() {
            next.entry(e[0].as_u64().unwrap() as usize)
                .or_default()
                .push(e[1].as_u64().unwrap() as usize);
        }
        let at = |s: &str| nodes.iter().position(|(v, _)| v.to_string() == s);
        for group in v["conditionalEdges"].as_array().unwrap() {
            for e in group["edges"].as_array().unwrap() {
                if let (Some(a), Some(b)) = (
                    at(e["from"].as_str().unwrap()),
                    at(e["to"].as_str().unwrap()),
                ) {
                    next.entry(a).or_default().push(b);
                }
            }
        }
        RealGraph { nodes, next, bytes }
    }

    fn versions(&self) -> BTreeSet<Version> {
        self.nodes.iter().map(|(v, _)| v.clone()).collect()
    }

    fn latest(&self) -> Version {
        self.versions().last().unwrap().clone()
    }

    fn first(&self) -> Version {
        self.versions().first().unwrap().clone()
    }

    fn index(&self, v: &Version) -> usize {
        self.nodes.iter().position(|(n, _)| n == v).unwrap()
    }

    /// Hops on a shortest path.
    fn distance(&self, from: &Version, to: &Version) -> usize {
        let (start, end) = (self.index(from), self.index(to));
        let mut dist = HashMap::from([(start, 0)]);
        let mut queue = VecDeque::from([start]);
        while let Some(n) = queue.pop_front() {
            for &m in self.next.get(&n).into_iter().flatten() {
                if !dist.contains_key(&m) {
                    dist.insert(m, dist[&n] + 1);
                    queue.push_back(m);
                }
            }
        }
        dist[&end]
    }

    fn is_edge(&self, a: &Version, b: &Version) -> bool {
        self.next
            .get(&self.index(a))
            .is_some_and(|n| n.contains(&self.index(b)))
    }
}

fn list(dir: &Path, service: &UpdateService, config: &str) -> Output {
    let path = dir.join("isc.yaml");
    std::fs::write(&path, format!("{HEAD}{config}")).unwrap();
    let mut cmd = bins::connected();
    cmd.args(["list", "releases", "-o", "json", "--config"])
        .arg(&path)
        .env("UPDATE_URL_OVERRIDE", service.graph_url());
    run(&mut cmd)
}

fn listed(out: &Output) -> Vec<Value> {
    assert_eq!(out.code, 0, "{out}");
    serde_json::from_str::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn versions_of(entries: &[Value]) -> BTreeSet<Version> {
    entries
        .iter()
        .map(|e| Version::parse(e["version"].as_str().unwrap()).unwrap())
        .collect()
}

#[test]
fn list_releases_selects_from_real_graphs_as_oc_mirror_does() {
    let service = UpdateService::start().unwrap();
    let g413 = RealGraph::load("oc-mirror/graphs/amd64-stable-4.13.json");
    let g49 = RealGraph::load("cincinnati/graphs/stable-4.9_amd64_v1.json");
    let multi = RealGraph::load("cincinnati/graphs/candidate-4.12_multi_v1.json");
    service.set_graph("stable-4.13", "amd64", g413.bytes.clone());
    service.set_graph("fast-4.13", "amd64", g413.bytes.clone());
    service.set_graph("stable-4.9", "amd64", g49.bytes.clone());
    service.set_graph("candidate-4.12", "multi", multi.bytes.clone());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut counts = Vec::new();

    // Heads only: the latest release, with exactly the documented keys.
    let heads = listed(&list(
        dir,
        &service,
        "mirror:\n  platform:\n    channels:\n    - name: stable-4.13\n",
    ));
    assert_eq!(versions_of(&heads), BTreeSet::from([g413.latest()]));
    let keys: BTreeSet<&str> = heads[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["arch", "channel", "image", "version"])
    );
    let latest_payload = &g413.nodes[g413.index(&g413.latest())].1;
    assert_eq!(heads[0]["image"].as_str().unwrap(), latest_payload);
    assert_eq!(heads[0]["channel"], "stable-4.13");
    assert_eq!(heads[0]["arch"], "amd64");
    counts.push(("stable-4.13 heads", heads.len()));

    // min..max: every release of the graph in the closed range.
    let (lo, hi) = (Version::new(4, 13, 3), Version::new(4, 13, 10));
    let range = listed(&list(
        dir,
        &service,
        "mirror:\n  platform:\n    channels:\n    - name: stable-4.13\n      minVersion: 4.13.3\n      maxVersion: 4.13.10\n",
    ));
    let want: BTreeSet<Version> = g413
        .versions()
        .into_iter()
        .filter(|v| *v >= lo && *v <= hi)
        .collect();
    assert_eq!(versions_of(&range), want);
    counts.push(("stable-4.13 4.13.3..4.13.10", range.len()));

    // shortestPath from the first to the latest: a chain of edges of minimal length.
    let sp = listed(&list(
        dir,
        &service,
        &format!(
            "mirror:\n  platform:\n    channels:\n    - name: stable-4.13\n      minVersion: {}\n      shortestPath: true\n",
            g413.first()
        ),
    ));
    let path: Vec<Version> = versions_of(&sp).into_iter().collect();
    assert_eq!(path.first(), Some(&g413.first()));
    assert_eq!(path.last(), Some(&g413.latest()));
    assert_eq!(path.len(), g413.distance(&g413.first(), &g413.latest()) + 1);
    for w in path.windows(2) {
        assert!(
            g413.is_edge(&w[0], &w[1]),
            "{} -> {} is not an update",
            w[0],
            w[1]
        );
    }
    counts.push(("stable-4.13 shortestPath first..latest", sp.len()));

    // full: every release of the channel.
    let full = listed(&list(
        dir,
        &service,
        "mirror:\n  platform:\n    channels:\n    - name: stable-4.9\n      full: true\n",
    ));
    assert_eq!(versions_of(&full), g49.versions());
    assert_eq!(full.len(), g49.nodes.len());
    counts.push(("stable-4.9 full", full.len()));

    // Two channels of one minor: both selections, plus the update path between the
    // lowest min and the highest max, each release once.
    let first = Version::new(4, 13, 0);
    let two = listed(&list(
        dir,
        &service,
        &format!(
            "mirror:\n  platform:\n    channels:\n    - name: stable-4.13\n      minVersion: {first}\n      maxVersion: {first}\n    - name: fast-4.13\n"
        ),
    ));
    let got = versions_of(&two);
    assert_eq!(got.len(), two.len(), "each release once");
    assert!(got.contains(&first) && got.contains(&g413.latest()));
    assert_eq!(got.len(), g413.distance(&first, &g413.latest()) + 1);
    counts.push(("stable-4.13 4.13.0 + fast-4.13 heads", two.len()));

    // architectures: multi.
    let m = listed(&list(
        dir,
        &service,
        "mirror:\n  platform:\n    architectures: [multi]\n    channels:\n    - name: candidate-4.12\n",
    ));
    assert_eq!(versions_of(&m), BTreeSet::from([multi.latest()]));
    assert_eq!(m[0]["arch"], "multi");

    // Every request asked for JSON, with the channel and architecture.
    let requests = service.requests();
    assert!(
        requests.iter().all(|r| r.contains("channel=")
            && r.contains("arch=")
            && r.ends_with("accept=application/json")),
        "{requests:?}"
    );

    // An unknown channel, and a version that is not in the channel: clear errors
    // naming the file, line and field.
    let unknown = list(
        dir,
        &service,
        "mirror:\n  platform:\n    channels:\n    - name: stable-9.99\n",
    );
    assert_eq!(unknown.code, EX_CONFIG, "{unknown}");
    assert!(unknown.stderr.contains("isc.yaml:6:7: mirror.platform.channels[0].name: channel stable-9.99 has no releases for amd64"), "{unknown}");
    let missing = list(
        dir,
        &service,
        "mirror:\n  platform:\n    channels:\n    - name: stable-4.13\n      minVersion: 4.13.99\n",
    );
    assert_eq!(missing.code, EX_CONFIG, "{missing}");
    assert!(missing.stderr.contains(&format!(
        "isc.yaml:7:7: mirror.platform.channels[0].minVersion: 4.13.99 is not a release of channel stable-4.13 for amd64; its releases run from {} to {}",
        g413.first(),
        g413.latest()
    )), "{missing}");
    // The figures for the closing note and docs/releases.md, shown with --no-capture.
    #[allow(clippy::print_stderr, reason = "a report for people, not a check")]
    {
        eprintln!("selected per mode: {counts:?}");
    }
}

/// Component images, pushed by digest to the art-dev repository, and their pull specs.
fn push_components(
    client: &PushClient,
    src: &Registry,
    images: &[(&str, &Image)],
) -> Vec<(String, String)> {
    images
        .iter()
        .map(|(name, image)| {
            image
                .push(client, "openshift-release-dev/ocp-v4.0-art-dev", None)
                .unwrap();
            (
                name.to_string(),
                format!(
                    "{}/openshift-release-dev/ocp-v4.0-art-dev@{}",
                    src.addr(),
                    image.digest
                ),
            )
        })
        .collect()
}

/// Releases 4.20.0 and 4.20.1 pushed to a source registry as Red Hat lays them
/// out: the same installer and etcd (a two-platform index) in both, and a cli of
/// their own each.
pub(crate) struct TwoReleases {
    pub r1: Image,
    pub r2: Image,
    pub cli1: Image,
    pub cli2: Image,
    pub installer: Image,
    pub etcd: Image,
    /// The components of 4.20.0, as `(name, pull spec)`.
    pub comps1: Vec<(String, String)>,
}

impl TwoReleases {
    pub(crate) fn push(client: &PushClient, src: &Registry) -> Self {
        let base = layer(70, 200_000);
        let cli1 = ImageBuilder::new(Format::Oci)
            .with_layer(&base)
            .layer(71, 60_000)
            .build();
        let installer = ImageBuilder::new(Format::Docker)
            .with_layer(&base)
            .layer(72, 50_000)
            .build();
        let etcd_amd = ImageBuilder::new(Format::Oci)
            .arch("amd64")
            .layer(73, 40_000)
            .build();
        let etcd_arm = ImageBuilder::new(Format::Oci)
            .arch("arm64")
            .layer(74, 40_000)
            .build();
        let etcd = airlock_tests::images::index(Format::Oci, vec![etcd_amd, etcd_arm], false);
        let cli2 = ImageBuilder::new(Format::Oci)
            .with_layer(&base)
            .layer(75, 60_000)
            .build();
        let cvo_base = layer(76, 100_000);

        let comps1 = push_components(
            client,
            src,
            &[("cli", &cli1), ("installer", &installer), ("etcd", &etcd)],
        );
        let comps2 = push_components(
            client,
            src,
            &[("cli", &cli2), ("installer", &installer), ("etcd", &etcd)],
        );
        let r1 = release_image("4.20.0", "amd64", &cvo_base, &refs(&comps1), &[]);
        let r2 = release_image("4.20.1", "amd64", &cvo_base, &refs(&comps2), &[]);
        r1.push(
            client,
            "openshift-release-dev/ocp-release",
            Some("4.20.0-x86_64"),
        )
        .unwrap();
        r2.push(
            client,
            "openshift-release-dev/ocp-release",
            Some("4.20.1-x86_64"),
        )
        .unwrap();
        TwoReleases {
            r1,
            r2,
            cli1,
            cli2,
            installer,
            etcd,
            comps1,
        }
    }

    /// The pull spec of release `r` by digest.
    pub(crate) fn payload(src: &Registry, r: &Image) -> String {
        format!(
            "{}/openshift-release-dev/ocp-release@{}",
            src.addr(),
            r.digest
        )
    }
}

#[test]
fn releases_are_mirrored_with_their_components_and_a_new_release_ships_only_new_blobs() {
    let src = Registry::plain().unwrap();
    let dest = Registry::plain().unwrap();
    let client = PushClient::new(&src).unwrap();
    let service = UpdateService::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let TwoReleases {
        cli1,
        installer,
        etcd,
        cli2,
        comps1,
        r1,
        r2,
        ..
    } = TwoReleases::push(&client, &src);
    let payload = |r: &Image| TwoReleases::payload(&src, r);
    service.set_graph(
        "stable-4.20",
        "amd64",
        graph("stable-4.20", &[("4.20.0", payload(&r1))], &[]),
    );
    // The release signing key and the signature store, as Red Hat serves them.
    let signer = ReleaseSigner::new();
    let keyring = tmp.path().join("release-key.asc");
    std::fs::write(&keyring, signer.public_key()).unwrap();
    let signatures: Vec<Vec<u8>> = [(&r1, "4.20.0-x86_64"), (&r2, "4.20.1-x86_64")]
        .iter()
        .map(|(r, tag)| {
            let sig = signer.sign(
                &r.digest,
                &format!("quay.io/openshift-release-dev/ocp-release:{tag}"),
            );
            service.set_file(&signature_path(&r.digest), sig.clone());
            sig
        })
        .collect();
    // Graph data, and a two-platform base image to build the graph image on.
    let graph_files: &[(&str, &[u8])] = &[
        (
            "channels/stable-4.20.yaml",
            b"name: stable-4.20\nversions:\n- 4.20.0\n- 4.20.1\n",
        ),
        (
            "blocked-edges/4.20.1-example.yaml",
            b"to: 4.20.1\nfrom: .*\n",
        ),
        ("version", b"1.2.0\n"),
    ];
    service.set_file("/graph-data", graph_data(graph_files));
    let ubi = airlock_tests::images::two_platform(Format::Docker, 77, 30_000, false);
    ubi.push(&client, "ubi9/ubi", Some("latest")).unwrap();

    // platform.release: one release by tag, no graph; version and architecture
    // come from the payload, the image is given by digest.
    let direct = tmp.path().join("direct.yaml");
    std::fs::write(
        &direct,
        format!(
            "{HEAD}mirror:\n  platform:\n    release: {}/openshift-release-dev/ocp-release:4.20.0-x86_64\n",
            src.addr()
        ),
    )
    .unwrap();
    let mut cmd = bins::connected();
    cmd.args(["list", "releases", "-o", "json", "--config"])
        .arg(&direct);
    source_flags(&mut cmd, &src);
    let got = listed(&run(&mut cmd));
    assert_eq!(got.len(), 1);
    assert_eq!(
        (
            got[0]["version"].as_str(),
            got[0]["arch"].as_str(),
            got[0]["image"].as_str()
        ),
        (Some("4.20.0"), Some("amd64"), Some(payload(&r1).as_str()))
    );

    let config = tmp.path().join("isc.yaml");
    std::fs::write(
        &config,
        format!(
            "{HEAD}mirror:\n  platform:\n    graph: true\n    channels:\n    - name: stable-4.20\n"
        ),
    )
    .unwrap();
    let create = |out: &Path, extra: &[&str]| {
        let mut cmd = create_cmd(&config, out, &tmp.path().join("ws-c"), "1MiB", &src);
        cmd.arg("--update-url")
            .arg(service.graph_url())
            .arg("--release-keyring")
            .arg(&keyring)
            .arg(format!("--signature-url={}/signatures/", service.url()))
            .arg(format!("--graph-data-url={}/graph-data", service.url()))
            .arg(format!("--graph-base-image={}/ubi9/ubi:latest", src.addr()))
            .args(extra);
        run(&mut cmd)
    };

    // Dry run: the mapping names the release and every component at oc-mirror's places.
    let dry = create(&tmp.path().join("dry"), &["--dry-run"]);
    assert_eq!(dry.code, 0, "{dry}");
    let mapping = std::fs::read_to_string(tmp.path().join("dry/mapping.txt")).unwrap();
    assert!(
        mapping.contains(&format!(
            "docker://{}=file://openshift/release-images:4.20.0-x86_64\n",
            payload(&r1)
        )),
        "{mapping}"
    );
    for (name, image) in &comps1 {
        assert!(
            mapping.contains(&format!(
                "docker://{image}=file://openshift/release:4.20.0-x86_64-{name}\n"
            )),
            "{mapping}"
        );
    }
    assert_eq!(mapping.lines().count(), 4, "{mapping}");

    let out1 = tmp.path().join("out1");
    let c1 = create(&out1, &[]);
    assert_eq!(c1.code, 0, "{c1}");
    let published = publish(&out1, &dest, "mirror", &tmp.path().join("ws-d"));
    assert_eq!(published.code, 0, "{published}");

    // Byte-exact at oc-mirror's destinations, checked with skopeo.
    let at = |repo_tag: &str| inspect_raw_at(&dest, &format!("mirror/{repo_tag}")).unwrap();
    assert_eq!(at("openshift/release-images:4.20.0-x86_64"), r1.manifest);
    for (name, image) in [("cli", &cli1), ("installer", &installer), ("etcd", &etcd)] {
        assert_eq!(
            at(&format!("openshift/release:4.20.0-x86_64-{name}")),
            image.manifest,
            "{name}"
        );
    }

    // The release mirror set: both source repositories to oc-mirror's repositories.
    let idms = std::fs::read_to_string(
        tmp.path()
            .join("ws-d/cluster-resources/idms-oc-mirror.yaml"),
    )
    .unwrap();
    let doc: Value = serde_yaml_ng::from_str(&idms).unwrap();
    assert_eq!(doc["kind"], "ImageDigestMirrorSet");
    assert_eq!(doc["metadata"]["name"], "idms-release-0");
    let mirrors = doc["spec"]["imageDigestMirrors"].as_array().unwrap();
    let pairs: BTreeSet<(String, String)> = mirrors
        .iter()
        .map(|m| {
            (
                m["source"].as_str().unwrap().to_string(),
                m["mirrors"][0].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        pairs,
        BTreeSet::from([
            (
                format!("{}/openshift-release-dev/ocp-release", src.addr()),
                format!("{}/mirror/openshift/release-images", dest.addr())
            ),
            (
                format!("{}/openshift-release-dev/ocp-v4.0-art-dev", src.addr()),
                format!("{}/mirror/openshift/release", dest.addr())
            ),
        ])
    );

    // The signature ConfigMap holds the signature the store served, under the key
    // the cluster-version operator looks for.
    let resources = tmp.path().join("ws-d/cluster-resources");
    let cm: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(resources.join("signature-configmap.yaml")).unwrap(),
    )
    .unwrap();
    let cm_json: Value = serde_json::from_str(
        &std::fs::read_to_string(resources.join("signature-configmap.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cm, cm_json);
    assert_eq!(
        (cm["apiVersion"].as_str(), cm["kind"].as_str()),
        (Some("v1"), Some("ConfigMap"))
    );
    assert_eq!(cm["metadata"]["namespace"], "openshift-config-managed");
    assert_eq!(
        cm["metadata"]["labels"]["release.openshift.io/verification-signatures"],
        ""
    );
    let data = cm["binaryData"].as_object().unwrap();
    let key = format!("sha256-{}-1", r1.digest.trim_start_matches("sha256:"));
    assert_eq!(data.keys().collect::<Vec<_>>(), [&key]);
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(data[&key].as_str().unwrap())
            .unwrap(),
        signatures[0]
    );

    // The graph image: the base's two platforms with the graph data on top, at
    // oc-mirror's place, and the UpdateService pointing at it by digest.
    let graph_index = at("openshift/graph-image:latest");
    let graph_digest = airlock_tests::images::digest_of(&graph_index);
    let us: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(resources.join("updateService.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(us["apiVersion"], "updateservice.operator.openshift.io/v1");
    assert_eq!(us["kind"], "UpdateService");
    assert_eq!(us["metadata"]["namespace"], "openshift-update-service");
    assert_eq!(
        us["spec"]["graphDataImage"].as_str().unwrap(),
        format!(
            "{}/mirror/openshift/graph-image@{graph_digest}",
            dest.addr()
        )
    );
    assert_eq!(
        us["spec"]["releases"].as_str().unwrap(),
        format!("{}/mirror/openshift/release-images", dest.addr())
    );
    check_graph_image(&dest, &ubi, graph_files, tmp.path());

    // A new release appears in the graph: the next imageset carries only what the
    // first did not (the new cli layer, the new release's manifests and config).
    service.set_graph(
        "stable-4.20",
        "amd64",
        graph(
            "stable-4.20",
            &[("4.20.0", payload(&r1)), ("4.20.1", payload(&r2))],
            &[(0, 1)],
        ),
    );
    let out2 = tmp.path().join("out2");
    let c2 = create(&out2, &[]);
    assert_eq!(c2.code, 0, "{c2}");
    let m2 = read_manifest(&out2);
    let first_blobs: BTreeSet<String> = [&r1, &cli1, &installer, &etcd]
        .iter()
        .flat_map(|i| all_digests(i))
        .collect();
    let new_blobs: BTreeSet<String> = [&r2, &cli2]
        .iter()
        .flat_map(|i| all_digests(i))
        .filter(|d| !first_blobs.contains(d))
        .collect();
    let carried: BTreeSet<String> = m2
        .blobs
        .iter()
        .filter(|b| !b.parts.is_empty() && b.media_type.is_none())
        .map(|b| b.digest.to_string())
        .collect();
    let new_layers: BTreeSet<String> = new_blobs
        .iter()
        .filter(|d| ![&r2.digest, &cli2.digest].contains(d))
        .cloned()
        .collect();
    assert_eq!(
        carried, new_layers,
        "only the new release's new blobs travel"
    );
    assert_eq!(m2.releases.len(), 1);
    assert_eq!(m2.releases[0].version, "4.20.1");
    // The graph data did not change: its image is the same, and none of it travels
    // again (the carried set above is exactly the new release's blobs).
    let graph2 = m2
        .images
        .iter()
        .find(|i| i.kind == airlock_imageset::ImageKind::GraphData)
        .unwrap();
    assert_eq!(graph2.digest.to_string(), graph_digest);
    let published = publish(&out2, &dest, "mirror", &tmp.path().join("ws-d"));
    assert_eq!(published.code, 0, "{published}");
    assert_eq!(at("openshift/release-images:4.20.1-x86_64"), r2.manifest);
    assert_eq!(at("openshift/release:4.20.1-x86_64-cli"), cli2.manifest);
    assert_eq!(at("openshift/release:4.20.1-x86_64-etcd"), etcd.manifest);
}

/// Where the signature store serves the signature of `digest`.
fn signature_path(digest: &str) -> String {
    format!(
        "/signatures/sha256={}/signature-1",
        digest.trim_start_matches("sha256:")
    )
}

/// A graph-data tarball (gzip) of `files`, as the upstream service serves it.
fn graph_data(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o664);
        h.set_uid(1000);
        b.append_data(&mut h, name, *data).unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &b.into_inner().unwrap()).unwrap();
    gz.finish().unwrap()
}

/// Copies the graph image out of `dest` with skopeo and checks each platform: the
/// base's layers, then one layer with the graph data under
/// /var/lib/cincinnati-graph-data (owned by root), and the command that copies it
/// into the update service's volume.
fn check_graph_image(dest: &Registry, base: &Image, files: &[(&str, &[u8])], tmp: &Path) {
    let opts = airlock_tests::skopeo::SkopeoOpts::for_registry(dest);
    let out = tmp.join("graph-image");
    airlock_tests::skopeo::copy_all(
        &format!(
            "docker://{}/mirror/openshift/graph-image:latest",
            dest.addr()
        ),
        &opts,
        &format!("dir:{}", out.display()),
        &airlock_tests::skopeo::SkopeoOpts::default(),
    )
    .unwrap();
    let index: Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let children = index["manifests"].as_array().unwrap();
    let platforms: BTreeSet<&str> = children
        .iter()
        .map(|c| c["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(platforms, BTreeSet::from(["amd64", "arm64"]));
    let blob =
        |digest: &str| std::fs::read(out.join(digest.trim_start_matches("sha256:"))).unwrap();
    for (child, base_child) in children.iter().zip(&base.children) {
        let digest = child["digest"].as_str().unwrap();
        let m: Value = serde_json::from_slice(
            &std::fs::read(out.join(format!(
                "{}.manifest.json",
                digest.trim_start_matches("sha256:")
            )))
            .unwrap(),
        )
        .unwrap();
        let layers = m["layers"].as_array().unwrap();
        let base_layers: Vec<&str> = base_child
            .layer_blobs()
            .iter()
            .map(|b| b.digest.as_str())
            .collect();
        let got: Vec<&str> = layers
            .iter()
            .map(|l| l["digest"].as_str().unwrap())
            .collect();
        assert_eq!(
            &got[..base_layers.len()],
            &base_layers[..],
            "base layers first"
        );
        assert_eq!(got.len(), base_layers.len() + 1);
        let config: Value =
            serde_json::from_slice(&blob(m["config"]["digest"].as_str().unwrap())).unwrap();
        assert_eq!(
            config["config"]["Cmd"],
            serde_json::json!([
                "/bin/bash",
                "-c",
                "exec cp -rp /var/lib/cincinnati-graph-data/* /var/lib/cincinnati/graph-data"
            ])
        );
        let layer = blob(got.last().unwrap());
        let mut tar_bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(&layer[..]),
            &mut tar_bytes,
        )
        .unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"]
                .as_array()
                .unwrap()
                .last()
                .unwrap(),
            &Value::from(airlock_tests::images::digest_of(&tar_bytes))
        );
        let mut found = Vec::new();
        for e in tar::Archive::new(&tar_bytes[..]).entries().unwrap() {
            let mut e = e.unwrap();
            assert_eq!(e.header().uid().unwrap(), 0);
            if e.header().entry_type().is_file() {
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut data).unwrap();
                found.push((e.path().unwrap().display().to_string(), data));
            }
        }
        found.sort();
        let mut want: Vec<(String, Vec<u8>)> = files
            .iter()
            .map(|(n, d)| (format!("var/lib/cincinnati-graph-data/{n}"), d.to_vec()))
            .collect();
        want.sort();
        assert_eq!(found, want);
    }
}

fn refs(c: &[(String, String)]) -> Vec<(&str, String)> {
    c.iter().map(|(n, i)| (n.as_str(), i.clone())).collect()
}

/// Every manifest and blob digest of an image (and its children).
fn all_digests(image: &Image) -> Vec<String> {
    let mut v = vec![image.digest.clone()];
    v.extend(image.blobs.iter().map(|b| b.digest.clone()));
    for c in &image.children {
        v.extend(all_digests(c));
    }
    v
}

/// Release 4.21.0 of `comps` (its own layer from `seed`, and `files` in its
/// payload) pushed to `src`, alone in channel stable-4.21 of `service`, and a
/// configuration in `dir` selecting that channel; with the release image.
fn release_4_21(
    client: &PushClient,
    src: &Registry,
    service: &UpdateService,
    dir: &Path,
    comps: &[(String, String)],
    seed: u64,
    files: &[(&str, &[u8])],
) -> (std::path::PathBuf, Image) {
    let r = release_image("4.21.0", "amd64", &layer(seed, 10_000), &refs(comps), files);
    r.push(
        client,
        "openshift-release-dev/ocp-release",
        Some("4.21.0-x86_64"),
    )
    .unwrap();
    let payload = format!(
        "{}/openshift-release-dev/ocp-release@{}",
        src.addr(),
        r.digest
    );
    service.set_graph(
        "stable-4.21",
        "amd64",
        graph("stable-4.21", &[("4.21.0", payload)], &[]),
    );
    let config = dir.join("isc.yaml");
    std::fs::write(
        &config,
        format!("{HEAD}mirror:\n  platform:\n    channels:\n    - name: stable-4.21\n"),
    )
    .unwrap();
    (config, r)
}

/// Release 4.21.0 with one component (layer seeds `seed` and `seed + 1`) in
/// its source registry, its graph served, and a signer whose public key is
/// `tmp/release-key.asc`; the signature store holds nothing yet.
struct SignedRelease {
    src: Registry,
    service: UpdateService,
    tmp: tempfile::TempDir,
    config: std::path::PathBuf,
    release: Image,
    signer: ReleaseSigner,
    keyring: std::path::PathBuf,
}

/// The reference release signatures name.
const SIGNED_AS: &str = "quay.io/openshift-release-dev/ocp-release:4.21.0-x86_64";

impl SignedRelease {
    fn new(seed: u64) -> Self {
        let src = Registry::plain().unwrap();
        let client = PushClient::new(&src).unwrap();
        let service = UpdateService::start().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let cli = ImageBuilder::new(Format::Oci).layer(seed, 20_000).build();
        let comps = push_components(&client, &src, &[("cli", &cli)]);
        let (config, release) =
            release_4_21(&client, &src, &service, tmp.path(), &comps, seed + 1, &[]);
        let signer = ReleaseSigner::new();
        let keyring = tmp.path().join("release-key.asc");
        std::fs::write(&keyring, signer.public_key()).unwrap();
        SignedRelease {
            src,
            service,
            tmp,
            config,
            release,
            signer,
            keyring,
        }
    }

    /// Serves `signature` as the release's in the store.
    fn store(&self, signature: Vec<u8>) {
        self.service
            .set_file(&signature_path(&self.release.digest), signature);
    }

    /// `create` into `tmp/out-NAME` checking signatures with the keys of
    /// `keys`, with the service for its graph and signatures.
    fn create(&self, name: &str, keys: &Path) -> (std::process::Command, std::path::PathBuf) {
        let out = self.tmp.path().join(format!("out-{name}"));
        let ws = self.tmp.path().join(format!("ws-{name}"));
        let mut cmd = create_cmd(&self.config, &out, &ws, "1MiB", &self.src);
        cmd.arg("--update-url")
            .arg(self.service.graph_url())
            .arg("--release-keyring")
            .arg(keys)
            .env(
                "OCP_SIGNATURE_URL",
                format!("{}/signatures", self.service.url()),
            );
        (cmd, out)
    }
}

/// The update service and the signature store answer 503 and 429 in passing
/// (a redeploy, a rate limit), and a connection to the store breaks off
/// mid-answer: `create` asks again and ships the release with its signature,
/// rather than failing a run that asking again completes.
#[test]
fn a_503_from_the_update_service_and_a_429_from_the_signature_store_are_waited_out() {
    let r = SignedRelease::new(90);
    r.store(r.signer.sign(&r.release.digest, SIGNED_AS));
    r.service.fail_next("/graph", 503, 1);
    r.service.fail_next("/signatures/", 429, 1);
    r.service.break_next("/signatures/", 1);
    let (mut cmd, out) = r.create("throttled", &r.keyring);
    let created = run(&mut cmd);
    assert_eq!(created.code, 0, "{created}");
    assert_eq!(r.service.failed(), 3, "every fault was served\n{created}");
    for (retried, times) in [("update graph read", 1), ("release signature read", 2)] {
        let line = format!("{retried} failed; retrying");
        assert_eq!(
            created.stderr.matches(&line).count(),
            times,
            "{line}\n{created}"
        );
    }
    assert!(read_manifest(&out).releases[0].signature.is_some());
}

#[test]
fn release_signatures_missing_forged_or_by_another_key_stop_create_unless_ignored() {
    let fixture = SignedRelease::new(80);
    let SignedRelease {
        src,
        service,
        tmp,
        config,
        release: r,
        signer,
        keyring,
    } = &fixture;
    let dest = Registry::plain().unwrap();
    let reference = SIGNED_AS;
    let mut n = 0;
    let mut create = |keys: &Path, extra: &[&str]| {
        n += 1;
        let (mut cmd, out) = fixture.create(&n.to_string(), keys);
        cmd.args(extra);
        (run(&mut cmd), out)
    };
    let no_chunks = |out: &Path| !out.exists() || chunk_files(out).is_empty();

    // No signature in the store: refused, with the way out named.
    let (missing, out) = create(keyring, &[]);
    assert_eq!(missing.code, EX_DATA, "{missing}");
    assert!(
        missing.stderr.contains("release 4.21.0 amd64")
            && missing
                .stderr
                .contains("the signature store has no signature for it"),
        "{missing}"
    );
    assert!(
        missing.stderr.contains("--ignore-release-signature"),
        "{missing}"
    );
    assert!(no_chunks(&out));

    // Signed by a key that is not trusted.
    let stranger = ReleaseSigner::new();
    service.set_file(
        &signature_path(&r.digest),
        stranger.sign(&r.digest, reference),
    );
    let (other_key, out) = create(keyring, &[]);
    assert_eq!(other_key.code, EX_DATA, "{other_key}");
    assert!(
        other_key.stderr.contains(&format!(
            "is not valid for any key of {}",
            keyring.display()
        )),
        "{other_key}"
    );
    assert!(no_chunks(&out));

    // Signed by the right key, but for another image.
    let other = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    service.set_file(&signature_path(&r.digest), signer.sign(other, reference));
    let (wrong_image, out) = create(keyring, &[]);
    assert_eq!(wrong_image.code, EX_DATA, "{wrong_image}");
    assert!(
        wrong_image.stderr.contains(&format!(
            "the signature is for image {other}, not this release"
        )),
        "{wrong_image}"
    );
    assert!(no_chunks(&out));

    // A key file that holds no key: refused before anything is fetched.
    let bad_keys = tmp.path().join("not-a-key.asc");
    std::fs::write(
        &bad_keys,
        "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnonsense\n",
    )
    .unwrap();
    let before = service.requests().len();
    let (bad, _) = create(&bad_keys, &[]);
    assert_eq!(bad.code, EX_CONFIG, "{bad}");
    assert!(
        bad.stderr
            .contains(&format!("release signature keys {}", bad_keys.display())),
        "{bad}"
    );
    assert_eq!(service.requests().len(), before, "nothing fetched");

    // Opting out: the imageset carries no signature, and no ConfigMap is written.
    let (ignored, out) = create(keyring, &["--ignore-release-signature"]);
    assert_eq!(ignored.code, 0, "{ignored}");
    assert_eq!(read_manifest(&out).releases[0].signature, None);
    let ws = tmp.path().join("ws-d");
    let published = publish(&out, &dest, "mirror", &ws);
    assert_eq!(published.code, 0, "{published}");
    assert!(ws.join("cluster-resources/idms-oc-mirror.yaml").exists());
    assert!(
        !ws.join("cluster-resources/signature-configmap.yaml")
            .exists()
    );

    // mirror (straight to a reachable registry) checks signatures the same way and
    // writes the same ConfigMap.
    let good = signer.sign(&r.digest, reference);
    service.set_file(&signature_path(&r.digest), good.clone());
    let ws_m = tmp.path().join("ws-m");
    let mut cmd = bins::connected();
    cmd.arg("mirror")
        .arg("--config")
        .arg(config)
        .arg("--to")
        .arg(format!("docker://{}/m", dest.addr()))
        .arg("--workspace")
        .arg(&ws_m)
        .arg("--update-url")
        .arg(service.graph_url())
        .arg("--release-keyring")
        .arg(keyring)
        .env("OCP_SIGNATURE_URL", format!("{}/signatures", service.url()));
    source_flags(&mut cmd, src);
    dest_flags(&mut cmd, &dest);
    let mirrored = run(&mut cmd);
    assert_eq!(mirrored.code, 0, "{mirrored}");
    let cm: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(ws_m.join("cluster-resources/signature-configmap.yaml")).unwrap(),
    )
    .unwrap();
    let key = format!("sha256-{}-1", r.digest.trim_start_matches("sha256:"));
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(cm["binaryData"][&key].as_str().unwrap())
            .unwrap(),
        good
    );
    assert_eq!(
        inspect_raw_at(&dest, "m/openshift/release-images:4.21.0-x86_64").unwrap(),
        r.manifest
    );
}

#[test]
fn continue_on_error_never_leaves_out_a_release_component() {
    // A release whose component cannot be pulled would fail every upgrade to
    // it at the mirror: the run stops, flag or not.
    let src = Registry::plain().unwrap();
    let client = PushClient::new(&src).unwrap();
    let service = UpdateService::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cli = ImageBuilder::new(Format::Oci).layer(82, 20_000).build();
    let mut comps = push_components(&client, &src, &[("cli", &cli)]);
    let ghost = ImageBuilder::new(Format::Oci).layer(83, 20_000).build();
    comps.push((
        "ghost".into(),
        format!(
            "{}/openshift-release-dev/ocp-v4.0-art-dev@{}",
            src.addr(),
            ghost.digest
        ),
    ));
    let (config, _) = release_4_21(&client, &src, &service, tmp.path(), &comps, 84, &[]);
    let out = tmp.path().join("out");
    let mut cmd = create_cmd(&config, &out, &tmp.path().join("ws"), "1MiB", &src);
    cmd.arg("--update-url")
        .arg(service.graph_url())
        .args(["--ignore-release-signature", "--continue-on-error"]);
    let stopped = run(&mut cmd);
    assert_eq!(stopped.code, EX_UNAVAILABLE, "{stopped}");
    assert!(stopped.stderr.contains(&ghost.digest), "{stopped}");
    assert!(!out.exists() || chunk_files(&out).is_empty(), "{stopped}");
}

#[test]
fn kube_virt_container_mirrors_the_kubevirt_image_the_release_names_with_it() {
    let src = Registry::plain().unwrap();
    let dest = Registry::plain().unwrap();
    let client = PushClient::new(&src).unwrap();
    let service = UpdateService::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cli = ImageBuilder::new(Format::Oci).layer(85, 20_000).build();
    let comps = push_components(&client, &src, &[("cli", &cli)]);
    let disk = ImageBuilder::new(Format::Docker).layer(86, 30_000).build();
    let s390x_disk = ImageBuilder::new(Format::Docker).layer(87, 30_000).build();
    let disks = push_components(&client, &src, &[("x86_64", &disk), ("s390x", &s390x_disk)]);
    let create = |config: &Path, n: &str| {
        let out = tmp.path().join(format!("out-{n}"));
        let ws = tmp.path().join(format!("ws-{n}"));
        let mut cmd = create_cmd(config, &out, &ws, "1MiB", &src);
        cmd.arg("--update-url")
            .arg(service.graph_url())
            .arg("--ignore-release-signature");
        (run(&mut cmd), out, ws)
    };
    let with_kubevirt = |config: &Path| {
        let text = std::fs::read_to_string(config).unwrap();
        std::fs::write(
            config,
            text.replace(
                "  platform:\n",
                "  platform:\n    kubeVirtContainer: true\n",
            ),
        )
        .unwrap();
    };

    // A payload without the boot-image stream: the field cannot be honoured.
    let (config, _) = release_4_21(&client, &src, &service, tmp.path(), &comps, 88, &[]);
    with_kubevirt(&config);
    let (refused, out, _) = create(&config, "without");
    assert_eq!(refused.code, EX_DATA, "{refused}");
    assert!(
        refused
            .stderr
            .contains("0000_50_installer_coreos-bootimages.yaml")
            && refused
                .stderr
                .contains("remove mirror.platform.kubeVirtContainer"),
        "{refused}"
    );
    assert!(!out.exists() || chunk_files(&out).is_empty());

    // The stream names a disk for x86_64 and one for s390x: an amd64 release
    // carries its own architecture's.
    let stream = coreos_bootimages(&[
        ("x86_64", disks[0].1.clone()),
        ("s390x", disks[1].1.clone()),
    ]);
    let (config, _) = release_4_21(
        &client,
        &src,
        &service,
        tmp.path(),
        &comps,
        89,
        &[("0000_50_installer_coreos-bootimages.yaml", &stream)],
    );
    with_kubevirt(&config);
    let (made, out, ws) = create(&config, "with");
    assert_eq!(made.code, 0, "{made}");
    let listed = read_manifest(&out);
    let tags: Vec<&str> = listed
        .images
        .iter()
        .filter_map(|i| i.tag.as_deref())
        .collect();
    assert!(
        tags.contains(&"4.21.0-x86_64-kube-virt-container"),
        "{tags:?}"
    );
    assert!(
        !listed
            .images
            .iter()
            .any(|i| i.digest.to_string() == s390x_disk.digest)
    );
    let published = publish(&out, &dest, "m", &ws.with_extension("d"));
    assert_eq!(published.code, 0, "{published}");
    let at = inspect_raw_at(
        &dest,
        "m/openshift/release:4.21.0-x86_64-kube-virt-container",
    )
    .unwrap();
    assert_eq!(at, disk.manifest, "the disk image byte for byte");
    assert!(
        inspect_raw_at(&dest, &format!("m/openshift/release@{}", s390x_disk.digest)).is_err(),
        "another architecture's disk is not mirrored"
    );
    // Without the field the same release carries no disk image.
    let plain = tmp.path().join("plain.yaml");
    std::fs::write(
        &plain,
        format!("{HEAD}mirror:\n  platform:\n    channels:\n    - name: stable-4.21\n"),
    )
    .unwrap();
    let (made, out, _) = create(&plain, "plain");
    assert_eq!(made.code, 0, "{made}");
    assert!(
        !read_manifest(&out)
            .images
            .iter()
            .any(|i| i.digest.to_string() == disk.digest)
    );
}

/// `platform.platforms` (oc-mirror v2): the multi-architecture payload is
/// selected and only the platforms asked for travel, of the release image and
/// of every component, each index byte for byte; the KubeVirt disk of another
/// architecture stays behind too.
#[test]
fn platform_platforms_carry_the_multi_payload_for_those_platforms_only() {
    let src = Registry::plain().unwrap();
    let client = PushClient::new(&src).unwrap();
    let service = UpdateService::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let etcd = two_platform(Format::Oci, 90, 20_000, false);
    let comps = push_components(&client, &src, &[("etcd", &etcd)]);
    let disks: Vec<Image> = [91, 92]
        .map(|seed| {
            ImageBuilder::new(Format::Docker)
                .layer(seed, 10_000)
                .build()
        })
        .into();
    let disk_refs = push_components(
        &client,
        &src,
        &[("x86_64", &disks[0]), ("aarch64", &disks[1])],
    );
    let stream = coreos_bootimages(&[
        ("x86_64", disk_refs[0].1.clone()),
        ("aarch64", disk_refs[1].1.clone()),
    ]);
    let files: &[(&str, &[u8])] = &[("0000_50_installer_coreos-bootimages.yaml", &stream)];
    let base = layer(93, 10_000);
    let per_arch: Vec<Image> = ["amd64", "arm64"]
        .map(|arch| release_image("4.21.0", arch, &base, &refs(&comps), files))
        .into();
    let multi = airlock_tests::images::index(Format::Docker, per_arch, false);
    multi
        .push(
            &client,
            "openshift-release-dev/ocp-release",
            Some("4.21.0-multi"),
        )
        .unwrap();
    let payload = format!(
        "{}/openshift-release-dev/ocp-release@{}",
        src.addr(),
        multi.digest
    );
    service.set_graph(
        "stable-4.21",
        "multi",
        graph("stable-4.21", &[("4.21.0", payload)], &[]),
    );
    let config = tmp.path().join("isc.yaml");
    std::fs::write(
        &config,
        format!(
            "{HEAD}mirror:\n  platform:\n    kubeVirtContainer: true\n    platforms:\n    - os: linux\n      architecture: arm64\n    channels:\n    - name: stable-4.21\n"
        ),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let mut cmd = create_cmd(&config, &out, &tmp.path().join("ws"), "1MiB", &src);
    cmd.arg("--update-url")
        .arg(service.graph_url())
        .arg("--ignore-release-signature");
    let made = run(&mut cmd);
    assert_eq!(made.code, 0, "{made}");
    let m = read_manifest(&out);
    assert_eq!(m.releases.len(), 1);
    assert_eq!(
        (m.releases[0].arch.as_str(), m.releases[0].tag.as_str()),
        ("multi", "4.21.0-multi")
    );
    assert_eq!(m.releases[0].digest.to_string(), multi.digest);
    let by_digest = |d: &str| m.images.iter().find(|i| i.digest.to_string() == d);
    for image in [&multi, &etcd] {
        let record = by_digest(&image.digest).expect("the index is an image of the imageset");
        assert_eq!(record.platforms, ["linux/arm64"], "{}", record.source);
    }
    let listed: BTreeSet<String> = m.blobs.iter().map(|b| b.digest.to_string()).collect();
    let (amd64, arm64) = (&multi.children[0], &multi.children[1]);
    assert!(listed.contains(&arm64.digest) && !listed.contains(&amd64.digest));
    assert!(listed.contains(&etcd.children[1].digest));
    assert!(!listed.contains(&etcd.children[0].digest));
    assert!(
        !listed.contains(&etcd.children[0].blobs[1].digest),
        "the amd64 layer of a component stays behind"
    );
    let tags: BTreeSet<&str> = m.images.iter().filter_map(|i| i.tag.as_deref()).collect();
    assert!(
        tags.contains("4.21.0-multi-kube-virt-container-aarch64"),
        "{tags:?}"
    );
    assert!(
        by_digest(&disks[0].digest).is_none(),
        "the x86_64 disk stays behind"
    );
}

/// `platform.release` naming a single-architecture release of another
/// architecture than `platforms` asks for: refused, not mirrored as it is.
#[test]
fn platform_platforms_refuse_a_single_architecture_release_of_another_architecture() {
    let src = Registry::plain().unwrap();
    let client = PushClient::new(&src).unwrap();
    let service = UpdateService::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cli = ImageBuilder::new(Format::Oci).layer(94, 10_000).build();
    let comps = push_components(&client, &src, &[("cli", &cli)]);
    let (config, r) = release_4_21(&client, &src, &service, tmp.path(), &comps, 95, &[]);
    let release = format!(
        "{}/openshift-release-dev/ocp-release@{}",
        src.addr(),
        r.digest
    );
    for (arch, ok) in [("arm64", false), ("amd64", true)] {
        std::fs::write(
            &config,
            format!("{HEAD}mirror:\n  platform:\n    release: {release}\n    platforms:\n    - os: linux\n      architecture: {arch}\n"),
        )
        .unwrap();
        let out = tmp.path().join(format!("out-{arch}"));
        let mut cmd = create_cmd(
            &config,
            &out,
            &tmp.path().join(format!("ws-{arch}")),
            "1MiB",
            &src,
        );
        cmd.arg("--ignore-release-signature");
        let made = run(&mut cmd);
        if ok {
            assert_eq!(made.code, 0, "{made}");
            assert!(
                read_manifest(&out)
                    .images
                    .iter()
                    .all(|i| i.platforms.is_empty())
            );
        } else {
            assert_ne!(made.code, 0, "{made}");
            assert!(
                made.stderr.contains("it is a release for amd64 only")
                    && made.stderr.contains("linux/arm64"),
                "{made}"
            );
        }
    }
}
