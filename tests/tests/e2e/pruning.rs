//! Pruning on publish: what the next imageset no longer lists leaves the
//! registry, with its children and signatures; what it lists stays byte-exact.

use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_tests::bins::run;
use airlock_tests::images::{Format, Image, ImageBuilder, PushClient, two_platform};
use airlock_tests::kube_api::{KubeApi, Res};
use airlock_tests::registry::{Registry, RegistryOptions};
use airlock_tests::skopeo::inspect_raw_at;
use airlock_tests::supply_chain::{CosignKey, attach, cosign_tag};

use serde_json::json;

use crate::agent::{Agent, Served, Site, deliver, eventually};
use crate::util::*;

const HEAD: &str = "apiVersion: mirror.openshift.io/v2alpha1\nkind: ImageSetConfiguration\n";

/// A, B (single images) and C (a two-platform index, cosign-signed, with an SBOM
/// referrer listed in the referrers tag) in a source registry, and imagesets made
/// from it by one connected workspace (`ws-c`): by default, the first selects A, B
/// and C; the second A and B.
pub(crate) struct Lifecycle {
    pub(crate) src: Registry,
    pub(crate) tmp: tempfile::TempDir,
    pub(crate) a: Image,
    pub(crate) b: Image,
    pub(crate) c: Image,
    /// Manifests attached to C: its signature, the signature of its first child,
    /// and the SBOM.
    attached: Vec<String>,
    /// The imagesets' directories, in sequence order.
    pub(crate) made: Vec<PathBuf>,
}

/// Imagesets created in turn by one connected workspace under `tmp`, one per list
/// of images (`REPO:TAG` or `REPO@DIGEST` in `src`), as `additionalImages`.
pub(crate) fn imagesets(src: &Registry, tmp: &Path, lists: &[Vec<String>]) -> Vec<PathBuf> {
    let ws = tmp.join("ws-c");
    lists
        .iter()
        .enumerate()
        .map(|(i, names)| {
            let mut text = format!("{HEAD}mirror:\n  additionalImages:\n");
            for n in names {
                text.push_str(&format!("  - name: {}/{n}\n", src.addr()));
            }
            let config = tmp.join(format!("isc{i}.yaml"));
            std::fs::write(&config, text).unwrap();
            let out = tmp.join(format!("out{i}"));
            let created = create(&config, &out, &ws, "1MiB", src);
            assert_eq!(created.code, 0, "{created}");
            out
        })
        .collect()
}

/// Delivers each imageset in turn to the agent's drop folder and waits until it is
/// published to every cluster (its files archived); `between(k)` runs after the
/// k-th.
fn deliver_in_turn(site: &Site, agent: &Agent, outs: &[PathBuf], mut between: impl FnMut(usize)) {
    let mut files = 0;
    for (k, out) in outs.iter().enumerate() {
        deliver(out, &site.path("drop"));
        files += chunk_files(out).len();
        eventually(
            Duration::from_secs(60),
            "the imageset published to every cluster and archived",
            || site.files("archive").len() == files,
            || agent.log(),
        );
        between(k);
    }
}

pub(crate) fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|n| n.to_string()).collect()
}

impl Lifecycle {
    fn new() -> Self {
        Self::making(&[
            names(&["team/a:1", "team/b:1", "team/c:1"]),
            names(&["team/a:1", "team/b:1"]),
        ])
    }

    /// The sources, and one imageset per list of images.
    pub(crate) fn making(lists: &[Vec<String>]) -> Self {
        let src = Registry::plain().unwrap();
        let client = PushClient::new(&src).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let addr = src.addr();
        let a = ImageBuilder::new(Format::Oci).layer(501, 20_000).build();
        a.push(&client, "team/a", Some("1")).unwrap();
        let b = ImageBuilder::new(Format::Docker).layer(502, 20_000).build();
        b.push(&client, "team/b", Some("1")).unwrap();
        let c = two_platform(Format::Oci, 503, 20_000, false);
        c.push(&client, "team/c", Some("1")).unwrap();
        let attached = attach(&client, &addr, "team/c", &c, &CosignKey::from_seed(5));
        let made = imagesets(&src, tmp.path(), lists);
        Lifecycle {
            src,
            tmp,
            attached: vec![
                attached.sig.digest,
                attached.child_sig.digest,
                attached.sbom.digest,
            ],
            a,
            b,
            c,
            made,
        }
    }

    pub(crate) fn ws(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// What of C is at `dest` under `prefix`: C, its children and what is attached,
    /// by digest, and its tag, referrers tag and cosign tags.
    pub(crate) fn c_present(&self, dest: &Registry, prefix: &str) -> Vec<String> {
        let mut refs = vec![format!("@{}", self.c.digest)];
        refs.extend(self.c.children.iter().map(|c| format!("@{}", c.digest)));
        refs.extend(self.attached.iter().map(|d| format!("@{d}")));
        refs.push(":1".into());
        // The referrers tag, `sha256-<hex>`.
        refs.push(format!(":{}", self.c.digest.replace(':', "-")));
        refs.push(format!(":{}", cosign_tag(&self.c.digest, "sig")));
        refs.push(format!(
            ":{}",
            cosign_tag(&self.c.children[0].digest, "sig")
        ));
        refs.into_iter()
            .filter(|r| inspect_raw_at(dest, &format!("{prefix}/team/c{r}")).is_ok())
            .collect()
    }

    /// Everything of C that publishing places: C, its children, the signatures,
    /// the SBOM, the referrers tag index Airlock writes, and the four tags.
    pub(crate) fn everything_of_c(&self) -> usize {
        1 + self.c.children.len() + self.attached.len() + 4
    }

    /// Manifests deleted with C: the same less the tags, plus the referrers index.
    pub(crate) fn deleted_with_c(&self) -> usize {
        1 + self.c.children.len() + self.attached.len() + 1
    }

    /// Delivers the first imageset, then the second, to the agent, running
    /// `between` when the first is published everywhere.
    fn deliver_both(&self, site: &Site, agent: &Agent, mut between: impl FnMut()) {
        let outs = [self.made[0].clone(), self.made[1].clone()];
        deliver_in_turn(site, agent, &outs, |k| {
            if k == 0 {
                between()
            }
        });
    }

    /// A and B are byte-exact at `dest`, by tag.
    pub(crate) fn assert_kept(&self, dest: &Registry, prefix: &str) {
        let placed = [("team/a", &self.a), ("team/b", &self.b)].map(|(repo, image)| Placed {
            image: image.clone(),
            repo: repo.into(),
            config_ref: format!("{repo}:1"),
            dest_ref: format!("{repo}:1"),
        });
        assert_byte_exact(&self.src, dest, prefix, &placed);
    }
}

fn publish_skipping(from: &Path, dest: &Registry, ws: &Path) -> airlock_tests::bins::Output {
    run(publish_cmd(from, dest, "mirror", ws).arg("--skip-pruning"))
}

#[test]
fn pruning_removes_what_the_next_imageset_dropped_with_its_children_and_signatures() {
    let l = Lifecycle::new();
    let dest = Registry::plain().unwrap();
    let ws = l.ws("ws-d");
    let first = publish(&l.made[0], &dest, "mirror", &ws);
    assert_eq!(first.code, 0, "{first}");
    assert_eq!(
        l.c_present(&dest, "mirror").len(),
        l.everything_of_c(),
        "C, its children and everything attached were published"
    );

    // A dry run says what would go, and changes nothing.
    let before = dest.log();
    let dry = run(publish_cmd(&l.made[1], &dest, "mirror", &ws).arg("--dry-run"));
    assert_eq!(dry.code, 0, "{dry}");
    assert!(
        dry.stdout.contains("would publish sequence 2")
            && dry.stdout.contains(&format!(
                "{} manifests to delete, 0 kept in use",
                l.deleted_with_c()
            )),
        "{dry}"
    );
    let during = &dest.log()[before.len()..];
    assert!(
        !during.contains("\"DELETE ") && !during.contains("\"PUT ") && !during.contains("\"POST "),
        "the dry run wrote to the registry:\n{during}"
    );
    assert_eq!(l.c_present(&dest, "mirror").len(), l.everything_of_c());

    let second = publish(&l.made[1], &dest, "mirror", &ws);
    assert_eq!(second.code, 0, "{second}");
    assert_eq!(l.c_present(&dest, "mirror"), Vec::<String>::new());
    assert!(
        inspect_raw_at(&dest, "mirror/team/c:1").is_err(),
        "C's tag is gone"
    );
    l.assert_kept(&dest, "mirror");
    let deleted = l.deleted_with_c();
    assert!(
        second
            .stdout
            .contains(&format!("{deleted} manifests deleted, 0 kept in use")),
        "{second}"
    );
    let log = dest.log();
    assert!(
        !log.contains("DELETE /v2/mirror/team/a/") && !log.contains("DELETE /v2/mirror/team/b/"),
        "nothing of what the imageset lists was deleted:\n{log}"
    );
}

#[test]
fn skip_pruning_keeps_what_the_next_imageset_dropped() {
    let l = Lifecycle::new();
    let dest = Registry::plain().unwrap();
    let ws = l.ws("ws-d");
    let first = publish(&l.made[0], &dest, "mirror", &ws);
    assert_eq!(first.code, 0, "{first}");
    let second = publish_skipping(&l.made[1], &dest, &ws);
    assert_eq!(second.code, 0, "{second}");
    assert!(second.stdout.contains("not pruned"), "{second}");
    assert_eq!(l.c_present(&dest, "mirror").len(), l.everything_of_c());
    assert!(!dest.log().contains("DELETE "));
    l.assert_kept(&dest, "mirror");
}

#[test]
fn a_registry_that_refuses_deletes_is_reported_and_the_publish_succeeds() {
    let l = Lifecycle::new();
    let dest = Registry::start(RegistryOptions {
        refuse_deletes: true,
        ..RegistryOptions::default()
    })
    .unwrap();
    let ws = l.ws("ws-d");
    let first = publish(&l.made[0], &dest, "mirror", &ws);
    assert_eq!(first.code, 0, "{first}");
    let second = publish(&l.made[1], &dest, "mirror", &ws);
    assert_eq!(second.code, 0, "{second}");
    assert!(
        second.stdout.contains("the registry refuses deletes")
            && second.stdout.contains("storage.delete.enabled"),
        "{second}"
    );
    assert!(inspect_raw_at(&dest, "mirror/team/c:1").is_ok());
    assert_eq!(
        dest.log().matches("\"DELETE /v2/").count(),
        1,
        "asked once, then nothing more was tried"
    );
    l.assert_kept(&dest, "mirror");
}

#[test]
fn a_prune_killed_half_way_is_finished_by_the_next_run() {
    let l = Lifecycle::new();
    let dest = Registry::plain().unwrap();
    let ws = l.ws("ws-d");
    let first = publish(&l.made[0], &dest, "mirror", &ws);
    assert_eq!(first.code, 0, "{first}");
    let crashed =
        run(publish_cmd(&l.made[1], &dest, "mirror", &ws)
            .env("AIRLOCK_CRASH_AT", "pruned-manifest"));
    assert_ne!(crashed.code, 0, "{crashed}");
    let left = l.c_present(&dest, "mirror");
    assert!(
        left.contains(&format!("@{}", l.c.digest)) && left.len() < l.everything_of_c(),
        "killed after one delete, C itself last: {left:?}"
    );
    l.assert_kept(&dest, "mirror");
    let rerun = publish(&l.made[1], &dest, "mirror", &ws);
    assert_eq!(rerun.code, 0, "{rerun}");
    assert_eq!(l.c_present(&dest, "mirror"), Vec::<String>::new());
    l.assert_kept(&dest, "mirror");
}

#[test]
fn what_a_cluster_runs_stays_in_its_registry_and_is_pruned_where_no_cluster_runs_it() {
    let l = Lifecycle::new();
    let east = Registry::plain().unwrap();
    let west = Registry::plain().unwrap();
    let api = KubeApi::start(&l.ws("api"), "4.15.2").unwrap();
    let kubeconfig = api.kubeconfig_file().unwrap();
    // East runs C, by digest under its source name, as a pod whose image the
    // mirror sets redirect to east's registry.
    api.run_pod(
        "apps",
        "c-0",
        &format!("{}/team/c@{}", l.src.addr(), l.c.digest),
    )
    .unwrap();
    let served = Served::start_with(|site, grpc| {
        site.config_fleet(
            &[
                ("east", &east, Some(kubeconfig.as_path())),
                ("west", &west, None),
            ],
            grpc,
        )
    });
    l.deliver_both(&served.site, &served.agent, || {
        assert_eq!(l.c_present(&east, "m").len(), l.everything_of_c());
        assert_eq!(l.c_present(&west, "m").len(), l.everything_of_c());
    });

    assert_eq!(
        l.c_present(&east, "m").len(),
        l.everything_of_c(),
        "C, its children and everything attached stay where it runs"
    );
    assert_eq!(
        l.c_present(&west, "m"),
        Vec::<String>::new(),
        "pruned where nothing runs it"
    );
    for r in [&east, &west] {
        l.assert_kept(r, "m");
    }
    assert!(
        api.requests()
            .iter()
            .any(|r| r.starts_with("GET /api/v1/pods"))
    );

    // The report names the cluster and what runs it, per cluster.
    let clusters = served.json(&["clusters"]);
    let pruning = |name: &str| {
        clusters
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()["pruning"]
            .clone()
    };
    let east_pruning = pruning("east");
    assert_eq!(east_pruning["sequence"], 2, "{clusters}");
    assert_eq!(east_pruning["deleted"], 0, "{clusters}");
    let kept = east_pruning["kept"].as_array().unwrap();
    assert!(
        kept.iter()
            .any(|k| k["manifest"] == format!("m/team/c@{}", l.c.digest)
                && k["reason"] == "in use by cluster east (pod apps/c-0)"),
        "{clusters}"
    );
    let west_pruning = pruning("west");
    assert_eq!(west_pruning["deleted"], l.deleted_with_c(), "{clusters}");
    assert_eq!(west_pruning["kept"], json!([]));
    let table = served.ctl(&["clusters"]);
    assert!(
        table.stdout.contains("east: kept: m/team/c@")
            && table.stdout.contains("west: pruned to sequence 2"),
        "{table}"
    );

    // Once east no longer runs C, the next prune lets it go there too.
    assert!(api.delete(&Res::POD, Some("apps"), "c-0"));
    let config = l.ws("isc-a.yaml");
    std::fs::write(
        &config,
        format!(
            "{HEAD}mirror:\n  additionalImages:\n  - name: {}/team/a:1\n",
            l.src.addr()
        ),
    )
    .unwrap();
    let third = l.ws("out-a");
    let created = create(&config, &third, &l.ws("ws-c"), "1MiB", &l.src);
    assert_eq!(created.code, 0, "{created}");
    let files = served.site.files("archive").len();
    deliver(&third, &served.site.path("drop"));
    eventually(
        Duration::from_secs(60),
        "sequence 3 published to both clusters and archived",
        || served.site.files("archive").len() == files + chunk_files(&third).len(),
        || served.agent.log(),
    );
    assert_eq!(
        l.c_present(&east, "m"),
        Vec::<String>::new(),
        "what was kept for a cluster that stopped running it is pruned\n{}",
        served.agent.log()
    );
    assert!(
        inspect_raw_at(&east, "m/team/b:1").is_err(),
        "B left the list too"
    );
    assert!(inspect_raw_at(&east, "m/team/a:1").is_ok());
}

#[test]
fn a_cluster_whose_pods_cannot_be_read_still_keeps_its_operators_and_release() {
    let l = Lifecycle::new();
    let east = Registry::plain().unwrap();
    let api = KubeApi::start(&l.ws("api"), "4.15.2").unwrap();
    api.forbid(&Res::POD);
    let kubeconfig = api.kubeconfig_file().unwrap();
    // C is an image of an installed operator, named by tag as a CSV may name it.
    api.create(
        &Res::CLUSTER_SERVICE_VERSION,
        json!({
            "apiVersion": "operators.coreos.com/v1alpha1", "kind": "ClusterServiceVersion",
            "metadata": {"name": "c-operator.v1.0.0", "namespace": "operators"},
            "spec": {"relatedImages": [{"name": "c", "image": format!("{}/team/c:1", l.src.addr())}]},
        }),
    )
    .unwrap();
    let site = Site::new();
    let config = site.config_fleet(&[("east", &east, Some(kubeconfig.as_path()))], "");
    let agent = Agent::start(&config, &[]);
    l.deliver_both(&site, &agent, || {});
    assert_eq!(l.c_present(&east, "m").len(), l.everything_of_c());
    l.assert_kept(&east, "m");
    let log = agent.log();
    assert!(
        log.contains("operator c-operator.v1.0.0 in operators")
            && log.contains("pods cannot be listed"),
        "{log}"
    );
}

#[test]
fn a_release_range_moving_forward_prunes_the_release_that_fell_out_and_keeps_shared_components() {
    use crate::releases::TwoReleases;
    use airlock_tests::release::graph;
    use airlock_tests::update_service::UpdateService;

    let src = Registry::plain().unwrap();
    let dest = Registry::plain().unwrap();
    let client = PushClient::new(&src).unwrap();
    let service = UpdateService::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let TwoReleases {
        r1,
        r2,
        cli1,
        cli2,
        installer,
        etcd,
        ..
    } = TwoReleases::push(&client, &src);
    let payload = |r: &Image| TwoReleases::payload(&src, r);
    service.set_graph(
        "stable-4.20",
        "amd64",
        graph(
            "stable-4.20",
            &[("4.20.0", payload(&r1)), ("4.20.1", payload(&r2))],
            &[(0, 1)],
        ),
    );
    let ws_c = tmp.path().join("ws-c");
    let ws_d = tmp.path().join("ws-d");
    let publish_range = |version: &str| {
        let config = tmp.path().join(format!("isc-{version}.yaml"));
        std::fs::write(
            &config,
            format!(
                "{HEAD}mirror:\n  platform:\n    channels:\n    - name: stable-4.20\n      minVersion: {version}\n      maxVersion: {version}\n"
            ),
        )
        .unwrap();
        let out = tmp.path().join(format!("out-{version}"));
        let mut cmd = create_cmd(&config, &out, &ws_c, "1MiB", &src);
        cmd.arg("--update-url")
            .arg(service.graph_url())
            .arg("--ignore-release-signature");
        let created = run(&mut cmd);
        assert_eq!(created.code, 0, "{created}");
        let published = publish(&out, &dest, "mirror", &ws_d);
        assert_eq!(published.code, 0, "{published}");
        published
    };
    let at = |reference: &str| inspect_raw_at(&dest, &format!("mirror/{reference}"));
    publish_range("4.20.0");
    assert_eq!(
        at("openshift/release-images:4.20.0-x86_64").unwrap(),
        r1.manifest
    );

    let second = publish_range("4.20.1");
    // The release that fell out of the range, and its component no other release has.
    assert!(
        at(&format!("openshift/release-images@{}", r1.digest)).is_err(),
        "{second}"
    );
    assert!(at("openshift/release-images:4.20.0-x86_64").is_err());
    assert!(
        at(&format!("openshift/release@{}", cli1.digest)).is_err(),
        "{second}"
    );
    // The release in range, and the components it shares with the old one,
    // byte-exact with every child of the index.
    assert_eq!(
        at("openshift/release-images:4.20.1-x86_64").unwrap(),
        r2.manifest
    );
    for (name, image) in [("cli", &cli2), ("installer", &installer), ("etcd", &etcd)] {
        assert_eq!(
            at(&format!("openshift/release:4.20.1-x86_64-{name}")).unwrap(),
            image.manifest,
            "{name}"
        );
    }
    for child in &etcd.children {
        assert_eq!(
            at(&format!("openshift/release@{}", child.digest)).unwrap(),
            child.manifest
        );
    }
    assert!(
        second.stdout.contains("2 manifests deleted, 0 kept in use"),
        "the old release and its cli only:\n{second}"
    );
}

#[test]
fn cluster_objects_for_what_is_no_longer_published_are_deleted_unless_someone_else_manages_them() {
    let src = Registry::plain().unwrap();
    let client = PushClient::new(&src).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let a = ImageBuilder::new(Format::Oci).layer(601, 10_000).build();
    a.push(&client, "team/a", Some("1")).unwrap();
    // Named by tag, A needs a tag mirror set; named by digest, a digest mirror set.
    let made = imagesets(
        &src,
        tmp.path(),
        &[names(&["team/a:1"]), vec![format!("team/a@{}", a.digest)]],
    );
    let registries = [Registry::plain().unwrap(), Registry::plain().unwrap()];
    let apis: Vec<KubeApi> = (0..2)
        .map(|i| KubeApi::start(&tmp.path().join(format!("api{i}")), "4.16.1").unwrap())
        .collect();
    let kubeconfigs: Vec<PathBuf> = apis.iter().map(|a| a.kubeconfig_file().unwrap()).collect();
    let served = Served::fleet(&[
        ("east", &registries[0], Some(kubeconfigs[0].as_path())),
        ("west", &registries[1], Some(kubeconfigs[1].as_path())),
    ]);
    let (site, agent) = (&served.site, &served.agent);
    let itms = |i: usize| apis[i].get(&Res::IMAGE_TAG_MIRROR_SET, None, "itms-generic-0");
    let idms = |i: usize| apis[i].get(&Res::IMAGE_DIGEST_MIRROR_SET, None, "idms-generic-0");
    deliver(&made[0], &site.path("drop"));
    eventually(
        Duration::from_secs(60),
        "the tag mirror set applied on both clusters",
        || itms(0).is_some() && itms(1).is_some(),
        || agent.log(),
    );
    // An administrator labels west's mirror set: it is theirs too now.
    apis[1]
        .edit(
            &Res::IMAGE_TAG_MIRROR_SET,
            None,
            "itms-generic-0",
            "kubectl-label",
            json!({"metadata": {"labels": {"team": "platform"}}}),
        )
        .unwrap();
    deliver(&made[1], &site.path("drop"));
    // Each cluster is reconciled on its own: east's withdrawal is waited
    // for, not taken to precede west's log line.
    eventually(
        Duration::from_secs(60),
        "the digest mirror set applied on both clusters, east's tag mirror set withdrawn",
        || {
            idms(0).is_some()
                && idms(1).is_some()
                && itms(0).is_none()
                && agent.log().contains("left on the cluster")
        },
        || agent.log(),
    );
    assert!(itms(0).is_none(), "east: Airlock's own object withdrawn");
    assert!(itms(1).is_some(), "west: the administrator's too, so left");
    let log = agent.log();
    assert!(
        log.contains("ImageTagMirrorSet itms-generic-0 is no longer published, but is also managed by kubectl-label"),
        "{log}"
    );
    assert!(
        apis[0].requests().iter().any(|r| r
            .starts_with("DELETE /apis/config.openshift.io/v1/imagetagmirrorsets/itms-generic-0")),
        "{:?}",
        apis[0].requests()
    );
    assert!(
        !apis[1].requests().iter().any(|r| r.starts_with("DELETE ")),
        "nothing deleted on west"
    );
    // The note stays on west through later checks, not only the one that applied.
    let west = |clusters: &serde_json::Value| {
        clusters
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "west")
            .unwrap()
            .clone()
    };
    let applied_at = west(&served.json(&["clusters"]))["checked"].clone();
    eventually(
        Duration::from_secs(30),
        "a later check of west",
        || west(&served.json(&["clusters"]))["checked"] != applied_at,
        || agent.log(),
    );
    let later = west(&served.json(&["clusters"]));
    assert!(
        later["notes"].as_array().unwrap().iter().any(|n| n
            .as_str()
            .unwrap()
            .contains("also managed by kubectl-label")),
        "{later}"
    );
}

#[test]
fn a_child_shared_with_an_index_in_use_stays_when_the_other_index_is_pruned() {
    use airlock_tests::images::index;
    let src = Registry::plain().unwrap();
    let client = PushClient::new(&src).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // app:1.0 and app:1.1 share their amd64 manifest; only arm64 differs.
    let amd = ImageBuilder::new(Format::Oci)
        .arch("amd64")
        .layer(701, 10_000)
        .build();
    let arm1 = ImageBuilder::new(Format::Oci)
        .arch("arm64")
        .layer(702, 10_000)
        .build();
    let arm2 = ImageBuilder::new(Format::Oci)
        .arch("arm64")
        .layer(703, 10_000)
        .build();
    let v10 = index(Format::Oci, vec![amd.clone(), arm1.clone()], false);
    let v11 = index(Format::Oci, vec![amd.clone(), arm2.clone()], false);
    v10.push(&client, "team/app", Some("1.0")).unwrap();
    v11.push(&client, "team/app", Some("1.1")).unwrap();
    let other = ImageBuilder::new(Format::Oci).layer(704, 10_000).build();
    other.push(&client, "team/other", Some("1")).unwrap();
    let made = imagesets(
        &src,
        tmp.path(),
        &[
            names(&["team/app:1.0", "team/app:1.1", "team/other:1"]),
            names(&["team/other:1"]),
        ],
    );
    let dest = Registry::plain().unwrap();
    let api = KubeApi::start(&tmp.path().join("api"), "4.16.1").unwrap();
    let kubeconfig = api.kubeconfig_file().unwrap();
    // An operator still names 1.0 by digest.
    api.create(
        &Res::CLUSTER_SERVICE_VERSION,
        json!({
            "apiVersion": "operators.coreos.com/v1alpha1", "kind": "ClusterServiceVersion",
            "metadata": {"name": "app.v1.0.0", "namespace": "apps"},
            "spec": {"install": {"spec": {"deployments": [{"name": "app", "spec": {"template": {"spec": {
                "containers": [{"name": "app", "image": format!("{}/team/app@{}", src.addr(), v10.digest)}]
            }}}}]}}},
        }),
    )
    .unwrap();
    let site = Site::new();
    let config = site.config_fleet(&[("east", &dest, Some(kubeconfig.as_path()))], "");
    let agent = Agent::start(&config, &[]);
    deliver_in_turn(&site, &agent, &made, |_| {});
    let at = |d: &str| inspect_raw_at(&dest, &format!("m/team/app@{d}"));
    for (what, image) in [
        ("1.0", &v10),
        ("amd64 shared", &amd),
        ("arm64 of 1.0", &arm1),
    ] {
        assert_eq!(
            at(&image.digest).unwrap(),
            image.manifest,
            "{what}\n{}",
            agent.log()
        );
    }
    assert!(at(&v11.digest).is_err(), "1.1 pruned");
    assert!(at(&arm2.digest).is_err(), "1.1's own child pruned");
    assert!(
        inspect_raw_at(&dest, "m/team/app:1.0").is_ok(),
        "the tag of what runs stays"
    );
}
