//! Pruning on publish: what the next imageset no longer lists leaves the
//! registry, with its children and signatures; what it lists stays byte-exact.

use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_tests::bins::run;
use airlock_tests::images::{Format, Image, ImageBuilder, PushClient, two_platform};
use airlock_tests::kube_api::{KubeApi, Res};
use airlock_tests::registry::{Registry, RegistryOptions};
use airlock_tests::skopeo::inspect_raw_at;
use airlock_tests::supply_chain::{CosignKey, referrer, referrers_index};

use serde_json::json;

use crate::agent::{Agent, Served, Site, deliver, eventually};
use crate::util::*;

const HEAD: &str = "apiVersion: mirror.openshift.io/v2alpha1\nkind: ImageSetConfiguration\n";

/// A, B (single images) and C (a two-platform index, cosign-signed, with an SBOM
/// referrer listed in the referrers tag) in a source registry, and two imagesets
/// made from it: the first selects A, B and C; the second A and B.
struct Lifecycle {
    src: Registry,
    tmp: tempfile::TempDir,
    a: Image,
    b: Image,
    c: Image,
    /// Manifests attached to C: its signature, the signature of its first child,
    /// and the SBOM.
    attached: Vec<String>,
    first: PathBuf,
    second: PathBuf,
}

fn tag_of(digest: &str) -> String {
    digest.replace(':', "-")
}

impl Lifecycle {
    fn new() -> Self {
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
        let key = CosignKey::from_seed(5);
        let repo = format!("{addr}/team/c");
        let sig = key.signature_image(&repo, &c.digest);
        sig.push(
            &client,
            "team/c",
            Some(&format!("{}.sig", tag_of(&c.digest))),
        )
        .unwrap();
        let child_sig = key.signature_image(&repo, &c.children[0].digest);
        child_sig
            .push(
                &client,
                "team/c",
                Some(&format!("{}.sig", tag_of(&c.children[0].digest))),
            )
            .unwrap();
        let sbom = referrer(
            &c,
            "application/spdx+json",
            br#"{"spdxVersion":"SPDX-2.3"}"#,
        );
        sbom.push(&client, "team/c", None).unwrap();
        let index = referrers_index(&[&sbom]);
        client
            .push_manifest(
                "team/c",
                &tag_of(&c.digest),
                &index.manifest,
                &index.media_type,
            )
            .unwrap();
        let config = |name: &str, images: &[&str]| {
            let mut text = format!("{HEAD}mirror:\n  additionalImages:\n");
            for i in images {
                text.push_str(&format!("  - name: {addr}/{i}\n"));
            }
            let path = tmp.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let ws = tmp.path().join("ws-c");
        let first = tmp.path().join("out1");
        let config1 = config("isc1.yaml", &["team/a:1", "team/b:1", "team/c:1"]);
        let created = create(&config1, &first, &ws, "1MiB", &src);
        assert_eq!(created.code, 0, "{created}");
        let second = tmp.path().join("out2");
        let config2 = config("isc2.yaml", &["team/a:1", "team/b:1"]);
        let created = create(&config2, &second, &ws, "1MiB", &src);
        assert_eq!(created.code, 0, "{created}");
        Lifecycle {
            src,
            tmp,
            attached: vec![
                sig.digest.clone(),
                child_sig.digest.clone(),
                sbom.digest.clone(),
            ],
            a,
            b,
            c,
            first,
            second,
        }
    }

    fn ws(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// What of C is at `dest` under `prefix`: C, its children and what is attached,
    /// by digest, and its tag, referrers tag and cosign tags.
    fn c_present(&self, dest: &Registry, prefix: &str) -> Vec<String> {
        let mut refs = vec![format!("@{}", self.c.digest)];
        refs.extend(self.c.children.iter().map(|c| format!("@{}", c.digest)));
        refs.extend(self.attached.iter().map(|d| format!("@{d}")));
        refs.push(":1".into());
        refs.push(format!(":{}", tag_of(&self.c.digest)));
        refs.push(format!(":{}.sig", tag_of(&self.c.digest)));
        refs.push(format!(":{}.sig", tag_of(&self.c.children[0].digest)));
        refs.into_iter()
            .filter(|r| inspect_raw_at(dest, &format!("{prefix}/team/c{r}")).is_ok())
            .collect()
    }

    /// Everything of C that publishing places: C, its children, the signatures,
    /// the SBOM, the referrers tag index Airlock writes, and the four tags.
    fn everything_of_c(&self) -> usize {
        1 + self.c.children.len() + self.attached.len() + 4
    }

    /// Manifests deleted with C: the same less the tags, plus the referrers index.
    fn deleted_with_c(&self) -> usize {
        1 + self.c.children.len() + self.attached.len() + 1
    }

    /// Delivers the first imageset to the agent's drop folder, waits until it is
    /// published everywhere (its files archived), runs `between`, then does the
    /// same with the second.
    fn deliver_both(&self, site: &Site, agent: &Agent, between: impl FnOnce()) {
        let archived = |n: usize| {
            eventually(
                Duration::from_secs(60),
                "the imageset published to every cluster and archived",
                || site.files("archive").len() == n,
                || agent.log(),
            )
        };
        deliver(&self.first, &site.path("drop"));
        archived(chunk_files(&self.first).len());
        between();
        deliver(&self.second, &site.path("drop"));
        archived(chunk_files(&self.first).len() + chunk_files(&self.second).len());
    }

    /// A and B are byte-exact at `dest`, by tag.
    fn assert_kept(&self, dest: &Registry, prefix: &str) {
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
    let first = publish(&l.first, &dest, "mirror", &ws);
    assert_eq!(first.code, 0, "{first}");
    assert_eq!(
        l.c_present(&dest, "mirror").len(),
        l.everything_of_c(),
        "C, its children and everything attached were published"
    );

    let second = publish(&l.second, &dest, "mirror", &ws);
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

    // Publishing the same again deletes nothing more.
    let again = publish(&l.second, &dest, "mirror", &ws);
    assert_eq!(again.code, 0, "{again}");
    assert_eq!(
        dest.log().matches("DELETE ").count(),
        log.matches("DELETE ").count()
    );
}

#[test]
fn skip_pruning_keeps_what_the_next_imageset_dropped() {
    let l = Lifecycle::new();
    let dest = Registry::plain().unwrap();
    let ws = l.ws("ws-d");
    let first = publish(&l.first, &dest, "mirror", &ws);
    assert_eq!(first.code, 0, "{first}");
    let second = publish_skipping(&l.second, &dest, &ws);
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
    let first = publish(&l.first, &dest, "mirror", &ws);
    assert_eq!(first.code, 0, "{first}");
    let second = publish(&l.second, &dest, "mirror", &ws);
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
    let first = publish(&l.first, &dest, "mirror", &ws);
    assert_eq!(first.code, 0, "{first}");
    let crashed = run(
        publish_cmd(&l.second, &dest, "mirror", &ws).env("AIRLOCK_CRASH_AT", "pruned-manifest")
    );
    assert_ne!(crashed.code, 0, "{crashed}");
    let left = l.c_present(&dest, "mirror");
    assert!(
        left.contains(&format!("@{}", l.c.digest)) && left.len() < l.everything_of_c(),
        "killed after one delete, C itself last: {left:?}"
    );
    l.assert_kept(&dest, "mirror");
    let rerun = publish(&l.second, &dest, "mirror", &ws);
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
    let kubeconfig = l.ws("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    // East runs C, by digest under its source name, as a pod whose image the
    // mirror sets redirect to east's registry.
    api.create(
        &Res::POD,
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "c-0", "namespace": "apps"},
            "spec": {"containers": [{"name": "c", "image": format!("{}/team/c@{}", l.src.addr(), l.c.digest)}]},
        }),
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
}

#[test]
fn a_cluster_whose_pods_cannot_be_read_still_keeps_its_operators_and_release() {
    let l = Lifecycle::new();
    let east = Registry::plain().unwrap();
    let api = KubeApi::start(&l.ws("api"), "4.15.2").unwrap();
    api.forbid(&Res::POD);
    let kubeconfig = l.ws("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
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
