//! One agent, three clusters: each with its own registry and its own Kubernetes
//! API (the double; see docs/testing.md), fed by the drop directory.

use std::path::PathBuf;
use std::time::Duration;

use airlock_tests::kube_api::{KubeApi, Res};
use airlock_tests::registry::Registry;
use airlock_tests::skopeo::inspect_raw_at;
use serde_json::{Value, json};

use crate::agent::{Agent, Served, Site, deliver, eventually};
use crate::util::*;

fn managers(object: &Value) -> Vec<String> {
    object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["manager"].as_str().map(String::from))
        .collect()
}

fn cluster<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no cluster {name} in {list}"))
}

#[test]
fn three_clusters_get_every_imageset_a_stopped_registry_catches_up_and_reconcile_restores_drift() {
    let s = Setup::plain();
    let mut west = Registry::plain().unwrap();
    let legacy = Registry::plain().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let apis: Vec<KubeApi> = ["4.14.8", "4.15.2", "4.12.30"]
        .iter()
        .enumerate()
        .map(|(i, v)| KubeApi::start(&dir.path().join(format!("api{i}")), v).unwrap())
        .collect();
    let kubeconfigs: Vec<PathBuf> = apis.iter().map(|a| a.kubeconfig_file().unwrap()).collect();
    let names = ["east", "west", "legacy"];
    let regs = [&s.dest, &west, &legacy];
    let clusters: Vec<_> = (0..3)
        .map(|i| (names[i], regs[i], Some(kubeconfigs[i].as_path())))
        .collect();
    let served = Served::fleet(&clusters);
    let drop = served.site.path("drop");

    // Sequence 1 → every registry, every cluster's API.
    let (_, out1) = s.create("1GiB");
    deliver(&out1, &drop);
    eventually(
        Duration::from_secs(60),
        "sequence 1 published and applied everywhere",
        || {
            let clusters = served.json(&["clusters"]);
            names.iter().all(|n| {
                let c = cluster(&clusters, n);
                c["publishedSequence"] == 1 && c["checked"].is_string()
            }) && apis[0]
                .get(&Res::IMAGE_DIGEST_MIRROR_SET, None, "idms-generic-0")
                .is_some()
                && apis[2]
                    .get(&Res::IMAGE_CONTENT_SOURCE_POLICY, None, "icsp-generic-0")
                    .is_some()
        },
        || served.agent.log(),
    );
    for r in [&s.dest, &west, &legacy] {
        assert_byte_exact(&s.source, r, "m", &s.placed);
    }
    // One pass to all three: each blob was read from the store once. Exactly
    // once, because the imageset (a few MiB) is far under what the pass keeps
    // for a lagging cluster, and the registries mount rather than upload twice.
    let status = served.json(&["status"]);
    let (uploaded, read) = (
        status["uploadedBytes"].as_u64().unwrap(),
        status["storeReadBytes"].as_u64().unwrap(),
    );
    assert!(read > 0 && uploaded == 3 * read, "{status}");
    for (i, api) in apis.iter().enumerate().take(2) {
        for (res, name) in [
            (&Res::IMAGE_DIGEST_MIRROR_SET, "idms-generic-0"),
            (&Res::IMAGE_TAG_MIRROR_SET, "itms-generic-0"),
        ] {
            let object = api
                .get(res, None, name)
                .unwrap_or_else(|| panic!("{} has no {name}", names[i]));
            assert_eq!(managers(&object), ["airlock"], "{object}");
        }
    }
    // 4.12 has no mirror sets: an ICSP with the digest mirrors, and a note.
    let icsp = apis[2]
        .get(&Res::IMAGE_CONTENT_SOURCE_POLICY, None, "icsp-generic-0")
        .unwrap();
    let idms = apis[0]
        .get(&Res::IMAGE_DIGEST_MIRROR_SET, None, "idms-generic-0")
        .unwrap();
    let entries = |v: &Value, addr: &str| -> Vec<(String, String)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let mirror = e["mirrors"][0].as_str().unwrap();
                (
                    e["source"].as_str().unwrap().to_string(),
                    mirror.replace(addr, "MIRROR"),
                )
            })
            .collect()
    };
    assert_eq!(
        entries(&icsp["spec"]["repositoryDigestMirrors"], &legacy.addr()),
        entries(&idms["spec"]["imageDigestMirrors"], &s.dest.addr()),
        "the ICSP holds the digest mirror set's entries, to legacy's own registry"
    );
    let clusters = served.json(&["clusters"]);
    let old = cluster(&clusters, "legacy");
    assert_eq!(old["version"], "4.12.30");
    assert!(
        old["notes"][0]
            .as_str()
            .unwrap()
            .starts_with("itms-generic-0 not applied"),
        "{old}"
    );
    assert_eq!(cluster(&clusters, "east")["version"], "4.14.8");
    assert_eq!(cluster(&clusters, "east")["drift"], json!([]));

    // Sequence 2 while west's registry is down: east and legacy get it at once.
    west.stop();
    let (extra, config2) = s.with_late_image(91);
    let out2 = s.path("out2");
    let created = create(&config2, &out2, &s.path("ws-c"), "1GiB", &s.source);
    assert_eq!(created.code, 0, "{created}");
    deliver(&out2, &drop);
    let has_extra =
        |r: &Registry| inspect_raw_at(r, "m/extra/late:1").is_ok_and(|b| b == extra.image.manifest);
    eventually(
        Duration::from_secs(60),
        "sequence 2 on east and legacy while west is down",
        || has_extra(&s.dest) && has_extra(&legacy),
        || served.agent.log(),
    );
    // The round ends once west's attempt has failed too; it then waits to retry.
    eventually(
        Duration::from_secs(60),
        "west retrying",
        || cluster(&served.json(&["clusters"]), "west")["state"] == "retrying",
        || served.agent.log(),
    );
    let clusters = served.json(&["clusters"]);
    assert_eq!(cluster(&clusters, "west")["publishedSequence"], 1);
    assert!(cluster(&clusters, "west")["lastError"].is_string());

    // West returns and catches up on everything it missed, by itself.
    west.start_again().unwrap();
    eventually(
        Duration::from_secs(90),
        "west caught up",
        || has_extra(&west),
        || served.agent.log(),
    );
    assert_byte_exact(&s.source, &west, "m", &s.placed);

    // Drift: an administrator deletes east's digest mirror set and edits west's
    // tag mirror set; the next check shows both, and nothing is overwritten.
    assert!(apis[0].delete(&Res::IMAGE_DIGEST_MIRROR_SET, None, "idms-generic-0"));
    apis[1]
        .edit(
            &Res::IMAGE_TAG_MIRROR_SET,
            None,
            "itms-generic-0",
            "kubectl-edit",
            json!({"spec": {"imageTagMirrors": [{"source": "x.io/a", "mirrors": ["y.io/a"]}]}}),
        )
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the drift reported",
        || {
            let clusters = served.json(&["clusters"]);
            cluster(&clusters, "east")["drift"]
                == json!(["ImageDigestMirrorSet idms-generic-0: deleted"])
                && cluster(&clusters, "west")["drift"]
                    == json!(["ImageTagMirrorSet itms-generic-0: .spec.imageTagMirrors changed"])
        },
        || served.agent.log(),
    );
    assert!(
        apis[0]
            .get(&Res::IMAGE_DIGEST_MIRROR_SET, None, "idms-generic-0")
            .is_none(),
        "a deleted object is reported, not silently recreated"
    );

    // Reconcile restores both and takes the edited field back.
    let reconciled = served.ctl(&["reconcile", "-o", "json"]);
    assert_eq!(reconciled.code, 0, "{reconciled}\n{}", served.agent.log());
    let after: Value = serde_json::from_str(&reconciled.stdout).unwrap();
    for n in names {
        assert_eq!(cluster(&after, n)["drift"], json!([]), "{after}");
    }
    assert!(
        apis[0]
            .get(&Res::IMAGE_DIGEST_MIRROR_SET, None, "idms-generic-0")
            .is_some()
    );
    let itms = apis[1]
        .get(&Res::IMAGE_TAG_MIRROR_SET, None, "itms-generic-0")
        .unwrap();
    let spec = itms["spec"].to_string();
    assert!(
        !spec.contains("x.io/a") && spec.contains(&west.addr()),
        "west's edit was taken back: {spec}"
    );
    assert!(managers(&itms).contains(&"airlock".to_string()));
}

#[test]
fn a_cluster_added_on_sighup_is_brought_up_to_date_and_a_bad_reload_changes_nothing() {
    let s = Setup::plain();
    let west = Registry::plain().unwrap();
    let site = Site::new();
    let config = site.config_fleet(&[("east", &s.dest, None)], "");
    let mut agent = Agent::start(&config, &[]);
    let (_, out) = s.create("1GiB");
    deliver(&out, &site.path("drop"));
    eventually(
        Duration::from_secs(60),
        "published to east",
        || site.files("drop").is_empty(),
        || agent.log(),
    );
    s.assert_byte_exact("m");

    // A configuration that does not check out is refused; the agent carries on.
    std::fs::write(&config, "workspace: nowhere\n").unwrap();
    agent.signal("HUP");
    eventually(
        Duration::from_secs(30),
        "the bad reload refused",
        || agent.log().contains("configuration not reloaded"),
        || agent.log(),
    );
    assert!(agent.running(), "{}", agent.log());

    // West added: it gets everything accepted so far, without a new imageset.
    site.config_fleet(&[("east", &s.dest, None), ("west", &west, None)], "");
    agent.signal("HUP");
    eventually(
        Duration::from_secs(60),
        "west brought up to date",
        || {
            s.placed.iter().all(|p| {
                inspect_raw_at(&west, &format!("m/{}", p.dest_ref))
                    .is_ok_and(|b| b == p.image.manifest)
            })
        },
        || agent.log(),
    );
    assert_byte_exact(&s.source, &west, "m", &s.placed);
    let log = agent.log();
    assert!(log.contains("configuration reloaded"), "{log}");
    assert!(log.contains("added=[\"west\"]"), "{log}");
    agent.stop();
}

#[test]
fn a_registry_that_hangs_holds_back_neither_the_other_clusters_nor_the_next_imageset() {
    use airlock_tests::proxy::{Direction, SlowProxy};
    let s = Setup::plain();
    let hung = Registry::plain().unwrap();
    // The registry accepts connections and then takes no more bytes: no error,
    // no refusal, just silence, as a registry whose storage has stalled.
    let proxy = SlowProxy::start(&hung.addr(), Direction::Upload, 200_000).unwrap();
    let site = Site::new();
    let config = site.config_fleet(&[("east", &s.dest, None), ("stuck", &hung, None)], "");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace(&hung.addr(), &proxy.addr())).unwrap();
    let mut agent = Agent::start(&config, &[]);
    let (_, out) = s.create("1GiB");
    deliver(&out, &site.path("drop"));
    proxy.wait_stalled(Duration::from_secs(60)).unwrap();
    eventually(
        Duration::from_secs(60),
        "sequence 1 on east while stuck hangs",
        || {
            agent
                .log()
                .contains("published to cluster cluster=east sequence=1")
        },
        || agent.log(),
    );
    s.assert_byte_exact("m");

    // The next imageset reaches east too, long before any timeout gives up on stuck.
    let (extra, config2) = s.with_late_image(92);
    let out2 = s.path("out2");
    let created = create(&config2, &out2, &s.path("ws-c"), "1GiB", &s.source);
    assert_eq!(created.code, 0, "{created}");
    deliver(&out2, &site.path("drop"));
    let has_extra =
        |r: &Registry| inspect_raw_at(r, "m/extra/late:1").is_ok_and(|b| b == extra.image.manifest);
    eventually(
        Duration::from_secs(60),
        "sequence 2 on east while stuck hangs",
        || has_extra(&s.dest),
        || agent.log(),
    );
    let log = agent.log();
    assert!(
        !log.contains("cluster=stuck sequence=1"),
        "stuck was never answered, so it published nothing\n{log}"
    );
    assert_eq!(
        site.files("drop").len(),
        chunk_files(&out).len() + chunk_files(&out2).len(),
        "nothing is disposed of before every cluster has it\n{log}"
    );

    // Once its registry answers again, stuck finishes and catches up on both.
    proxy.release();
    eventually(
        Duration::from_secs(120),
        "stuck caught up",
        || site.files("drop").is_empty(),
        || agent.log(),
    );
    agent.stop();
    assert_byte_exact(&s.source, &hung, "m", &s.placed);
    assert!(has_extra(&hung));
}
