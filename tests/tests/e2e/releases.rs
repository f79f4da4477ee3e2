//! OpenShift releases: selection on real update graphs served by a local update
//! service, and synthetic release payloads in the real layout mirrored end to end.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::Path;

use airlock_tests::bins::{self, Output, run};
use airlock_tests::images::{Format, Image, ImageBuilder, PushClient, layer};
use airlock_tests::registry::Registry;
use airlock_tests::release::{graph, release_image};
use airlock_tests::skopeo::inspect_raw_at;
use airlock_tests::update_service::UpdateService;
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

#[test]
fn releases_are_mirrored_with_their_components_and_a_new_release_ships_only_new_blobs() {
    let src = Registry::plain().unwrap();
    let dest = Registry::plain().unwrap();
    let client = PushClient::new(&src).unwrap();
    let service = UpdateService::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
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
        &client,
        &src,
        &[("cli", &cli1), ("installer", &installer), ("etcd", &etcd)],
    );
    let comps2 = push_components(
        &client,
        &src,
        &[("cli", &cli2), ("installer", &installer), ("etcd", &etcd)],
    );
    let r1 = release_image("4.20.0", "amd64", &cvo_base, &refs(&comps1));
    let r2 = release_image("4.20.1", "amd64", &cvo_base, &refs(&comps2));
    r1.push(
        &client,
        "openshift-release-dev/ocp-release",
        Some("4.20.0-x86_64"),
    )
    .unwrap();
    r2.push(
        &client,
        "openshift-release-dev/ocp-release",
        Some("4.20.1-x86_64"),
    )
    .unwrap();
    let payload = |r: &Image| {
        format!(
            "{}/openshift-release-dev/ocp-release@{}",
            src.addr(),
            r.digest
        )
    };
    service.set_graph(
        "stable-4.20",
        "amd64",
        graph("stable-4.20", &[("4.20.0", payload(&r1))], &[]),
    );

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
        format!("{HEAD}mirror:\n  platform:\n    channels:\n    - name: stable-4.20\n"),
    )
    .unwrap();
    let create = |out: &Path, extra: &[&str]| {
        let mut cmd = create_cmd(&config, out, &tmp.path().join("ws-c"), "1MiB", &src);
        cmd.arg("--update-url").arg(service.graph_url()).args(extra);
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
    let published = publish(&out2, &dest, "mirror", &tmp.path().join("ws-d"));
    assert_eq!(published.code, 0, "{published}");
    assert_eq!(at("openshift/release-images:4.20.1-x86_64"), r2.manifest);
    assert_eq!(at("openshift/release:4.20.1-x86_64-cli"), cli2.manifest);
    assert_eq!(at("openshift/release:4.20.1-x86_64-etcd"), etcd.manifest);
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

fn read_manifest(dir: &Path) -> airlock_common::imageset::ImagesetManifest {
    let f = chunk_files(dir).into_iter().next().expect("a chunk");
    (*airlock_common::imageset::read::read_head(&f)
        .unwrap()
        .manifest)
        .clone()
}
