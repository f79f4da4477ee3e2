//! Delete imagesets (`airlock-connected delete`, oc-mirror v2's
//! DeleteImageSetConfiguration): an ordinary next sequence that removes what it
//! selects from every registry, even where pruning is off, and keeps what a
//! cluster runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use airlock_tests::bins::{self, run};
use airlock_tests::forge;
use airlock_tests::kube_api::KubeApi;
use airlock_tests::registry::Registry;
use airlock_tests::skopeo::inspect_raw_at;
use serde_json::Value;

use crate::agent::Served;
use crate::pruning::{Lifecycle, names};
use crate::util::*;

/// `delete` of workspace `ws` into `out`.
fn delete_cmd(config: &Path, out: &Path, ws: &Path) -> Command {
    imageset_cmd("delete", config, out, ws)
}

/// A DeleteImageSetConfiguration deleting `images` (`REPO:TAG` in `src`).
fn delete_config(l: &Lifecycle, images: &[&str]) -> PathBuf {
    let mut text = String::from(
        "apiVersion: mirror.openshift.io/v2alpha1\nkind: DeleteImageSetConfiguration\ndelete:\n  additionalImages:\n",
    );
    for i in images {
        text.push_str(&format!("  - name: {}/{i}\n", l.src.addr()));
    }
    let path = l.ws("delete.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn publish_skipping(from: &Path, dest: &Registry, ws: &Path) -> bins::Output {
    run(publish_cmd(from, dest, "m", ws).arg("--skip-pruning"))
}

/// A is byte-exact at `dest`.
fn assert_a_exact(l: &Lifecycle, dest: &Registry) {
    let a = Placed {
        image: l.a.clone(),
        repo: "team/a".into(),
        config_ref: "team/a:1".into(),
        dest_ref: "team/a:1".into(),
    };
    assert_byte_exact(&l.src, dest, "m", &[a]);
}

/// Nothing of B or C (children, signatures, SBOM, tags) is left at `dest`.
fn assert_b_and_c_gone(l: &Lifecycle, dest: &Registry) {
    assert_eq!(l.c_present(dest, "m"), Vec::<String>::new());
    for r in ["m/team/b:1".to_string(), format!("m/team/b@{}", l.b.digest)] {
        assert!(inspect_raw_at(dest, &r).is_err(), "{r} is still there");
    }
}

#[test]
fn a_delete_imageset_removes_what_it_selects_from_every_registry_even_with_pruning_off() {
    let l = Lifecycle::making(&[names(&["team/a:1", "team/b:1", "team/c:1"])]);
    let ws_c = l.ws("ws-c");
    let config = delete_config(&l, &["team/b:1", "team/c:1"]);
    let out = l.ws("out-delete");

    // The dry run says what would go and writes and records nothing.
    let dry = run(delete_cmd(&config, &out, &ws_c).args(["--dry-run", "-o", "json"]));
    assert_eq!(dry.code, 0, "{dry}");
    let report: Value = serde_json::from_str(&dry.stdout).unwrap();
    assert_eq!(report["sequence"], 2, "{report:#}");
    assert_eq!(report["dryRun"], true);
    let deletes: Vec<&str> = report["deletes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["source"].as_str().unwrap())
        .collect();
    let b = format!("{}/team/b:1", l.src.addr());
    let c = format!("{}/team/c:1", l.src.addr());
    assert!(
        deletes.contains(&b.as_str()) && deletes.contains(&c.as_str()),
        "{deletes:?}"
    );
    // C's signatures and SBOM go with it.
    let referrers = report["deletes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["kind"] == "referrer")
        .count();
    assert_eq!(referrers, 3, "{report:#}");
    assert!(!deletes.iter().any(|d| d.contains("team/a")), "{deletes:?}");
    assert!(!out.exists() || chunk_files(&out).is_empty());

    // Written in format version 1, as for a site whose disconnected agent
    // reads only that; it is read and applied as any.
    let made = run(delete_cmd(&config, &out, &ws_c).args(["--imageset-format", "v1"]));
    assert_eq!(made.code, 0, "{made}");
    assert!(
        made.stdout
            .contains("sequence 2: 5 images deleted, 1 still listed"),
        "{made}"
    );
    let chunks = chunk_files(&out);
    assert_eq!(chunks.len(), 1, "{made}");
    let head = airlock_imageset::read::read_head(&chunks[0]).unwrap();
    assert_eq!(head.manifest.format, airlock_imageset::FORMAT_V1);

    // Three registries behind one site, pruning off everywhere; the third is
    // down when the delete arrives.
    let mut dests = [(); 3].map(|_| Registry::plain().unwrap());
    let ws_d = l.ws("ws-d");
    for d in &dests {
        let first = publish_skipping(&l.made[0], d, &ws_d);
        assert_eq!(first.code, 0, "{first}");
        assert_eq!(l.c_present(d, "m").len(), l.everything_of_c());
    }
    dests[2].stop();
    // Publish's dry run, for scripts: the delete imageset's deletes even with
    // pruning off, and nothing changed.
    let dry = run(publish_cmd(&out, &dests[0], "m", &ws_d).args([
        "--skip-pruning",
        "--dry-run",
        "-o",
        "json",
    ]));
    assert_eq!(dry.code, 0, "{dry}");
    let planned: Value = serde_json::from_str(&dry.stdout).unwrap();
    assert_eq!(
        planned["wouldPublish"],
        serde_json::json!([2]),
        "{planned:#}"
    );
    assert_eq!(
        planned["pruned"][0]["deletes"].as_array().unwrap().len(),
        l.deleted_with_c() + 1,
        "{planned:#}"
    );
    assert_eq!(planned["problems"], serde_json::json!([]), "{planned:#}");
    assert!(!dests[0].log().contains("\"DELETE "));
    for d in &dests[..2] {
        let deleted = publish_skipping(&out, d, &ws_d);
        assert_eq!(deleted.code, 0, "{deleted}");
        assert!(
            deleted.stdout.contains(&format!(
                "{} manifests deleted, 0 kept in use",
                l.deleted_with_c() + 1
            )),
            "{deleted}"
        );
        assert_b_and_c_gone(&l, d);
        assert_a_exact(&l, d);
    }
    let down = publish_skipping(&out, &dests[2], &ws_d);
    assert_ne!(down.code, 0, "{down}");
    dests[2].start_again().unwrap();
    assert_eq!(
        l.c_present(&dests[2], "m").len(),
        l.everything_of_c(),
        "nothing was deleted while it was down"
    );
    let caught_up = publish_skipping(&out, &dests[2], &ws_d);
    assert_eq!(caught_up.code, 0, "{caught_up}");
    assert_b_and_c_gone(&l, &dests[2]);
    assert_a_exact(&l, &dests[2]);
    for d in &dests {
        assert!(
            !d.log().contains("DELETE /v2/m/team/a/"),
            "nothing of what the delete imageset lists was deleted"
        );
    }
}

#[test]
fn a_delete_imageset_waits_for_its_turn_and_only_a_config_selecting_it_again_brings_it_back() {
    let l = Lifecycle::making(&[names(&["team/a:1", "team/b:1"])]);
    let ws_c = l.ws("ws-c");
    let out_delete = l.ws("out-delete");
    let made = run(&mut delete_cmd(
        &delete_config(&l, &["team/b:1"]),
        &out_delete,
        &ws_c,
    ));
    assert_eq!(made.code, 0, "{made}");

    // The configuration without B: nothing new since the delete.
    let only_a = l.ws("isc-a.yaml");
    std::fs::write(
        &only_a,
        format!(
            "apiVersion: mirror.openshift.io/v2alpha1\nkind: ImageSetConfiguration\nmirror:\n  additionalImages:\n  - name: {}/team/a:1\n",
            l.src.addr()
        ),
    )
    .unwrap();
    let same = create(&only_a, &l.ws("out-a"), &ws_c, "1MiB", &l.src);
    assert_eq!(same.code, 0, "{same}");
    assert!(
        same.stdout.contains("sequence 2: nothing to ship"),
        "{same}"
    );

    // The configuration with B again: B comes back, and its layer travels again
    // (the site's registry may have collected it as garbage).
    let with_b = l.ws("isc0.yaml");
    let out_again = l.ws("out-again");
    let again = create(&with_b, &out_again, &ws_c, "1MiB", &l.src);
    assert_eq!(again.code, 0, "{again}");
    let manifest = imageset_json(&out_again);
    assert_eq!(manifest["sequence"], 3);
    // B's layer (its blobs are the config, then the layer).
    let layer = &l.b.blobs.last().unwrap().digest;
    let carried = manifest["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["digest"] == *layer)
        .unwrap();
    assert!(
        !carried["parts"].as_array().unwrap().is_empty(),
        "B's layer is carried again: {carried}"
    );

    // At the site, 3 waits for 2 like any imageset; then both are taken in order.
    let dest = Registry::plain().unwrap();
    let ws_d = l.ws("ws-d");
    let first = publish(&l.made[0], &dest, "m", &ws_d);
    assert_eq!(first.code, 0, "{first}");
    let early = publish(&out_again, &dest, "m", &ws_d);
    assert_eq!(early.code, EX_INCOMPLETE, "{early}");
    assert!(
        early
            .stderr
            .contains("sequence 3 is waiting for sequence 2"),
        "{early}"
    );
    assert!(inspect_raw_at(&dest, "m/team/b:1").is_ok());
    let drop = l.ws("drop");
    copy_dir(&out_delete, &drop);
    copy_dir(&out_again, &drop);
    let both = publish(&drop, &dest, "m", &ws_d);
    assert_eq!(both.code, 0, "{both}");
    let (i2, i3) = (
        both.stdout.find("sequence 2 (").unwrap(),
        both.stdout.find("sequence 3 (").unwrap(),
    );
    assert!(i2 < i3, "{both}");
    // Sequence 3 lists B again, so nothing is deleted.
    assert!(
        !dest.log().contains("\"DELETE "),
        "B was deleted although the newest imageset lists it"
    );
    let placed = [("team/a", &l.a), ("team/b", &l.b)].map(|(repo, image)| Placed {
        image: image.clone(),
        repo: repo.into(),
        config_ref: format!("{repo}:1"),
        dest_ref: format!("{repo}:1"),
    });
    assert_byte_exact(&l.src, &dest, "m", &placed);
}

#[test]
fn the_agent_plans_then_applies_a_delete_imageset_with_pruning_off_keeping_what_a_cluster_runs() {
    let l = Lifecycle::making(&[names(&["team/a:1", "team/b:1", "team/c:1"])]);
    let east = Registry::plain().unwrap();
    let west = Registry::plain().unwrap();
    let api = KubeApi::start(&l.ws("api"), "4.15.2").unwrap();
    let kubeconfig = api.kubeconfig_file().unwrap();
    api.run_pod("apps", "c-0", &format!("{}/team/c:1", l.src.addr()))
        .unwrap();
    // Files copied into the drop directory (not renamed in) settle for an hour:
    // what is planned can be looked at before the agent takes it.
    let served = Served::start_with(|site, grpc| {
        let path = site.config_fleet(
            &[
                ("east", &east, Some(kubeconfig.as_path())),
                ("west", &west, None),
            ],
            &format!("pruning: false\n{grpc}"),
        );
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("settleSeconds: 1\n", "settleSeconds: 3600\n");
        std::fs::write(&path, text).unwrap();
        path
    });
    let ingest = |dir: &Path| {
        let files: Vec<String> = chunk_files(dir)
            .iter()
            .map(|f| f.display().to_string())
            .collect();
        let mut args = vec!["ingest"];
        args.extend(files.iter().map(String::as_str));
        let out = served.ctl(&args);
        assert_eq!(out.code, 0, "{out}\n{}", served.agent.log());
    };
    ingest(&l.made[0]);
    assert_eq!(l.c_present(&west, "m").len(), l.everything_of_c());

    let out = l.ws("out-delete");
    let made = run(&mut delete_cmd(
        &delete_config(&l, &["team/b:1", "team/c:1"]),
        &out,
        &l.ws("ws-c"),
    ));
    assert_eq!(made.code, 0, "{made}");
    copy_dir(&out, &served.site.path("drop"));

    // The dry run: per cluster, what publishing what waits would do.
    let before = [east.log(), west.log()];
    let plans = served.json(&["publish", "--dry-run"]);
    let plan = |name: &str| {
        plans
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["cluster"] == name)
            .unwrap_or_else(|| panic!("{plans:#}"))
            .clone()
    };
    let (east_plan, west_plan) = (plan("east"), plan("west"));
    for p in [&east_plan, &west_plan] {
        assert_eq!(p["wouldPublish"], serde_json::json!([2]), "{plans:#}");
        assert_eq!(p["problems"], serde_json::json!([]), "{plans:#}");
    }
    let deletes = |p: &Value| -> Vec<String> {
        p["deletes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["manifest"].as_str().unwrap().to_string())
            .collect()
    };
    let b_at = format!("m/team/b@{}", l.b.digest);
    let c_at = format!("m/team/c@{}", l.c.digest);
    assert_eq!(
        deletes(&west_plan).len(),
        l.deleted_with_c() + 1,
        "{plans:#}"
    );
    assert!(deletes(&west_plan).contains(&c_at), "{plans:#}");
    assert_eq!(deletes(&east_plan), vec![b_at.clone()], "{plans:#}");
    assert!(
        east_plan["kept"].as_array().unwrap().iter().any(
            |k| k["manifest"] == c_at && k["reason"] == "in use by cluster east (pod apps/c-0)"
        ),
        "{plans:#}"
    );
    let table = served.ctl(&["publish", "--dry-run", "--cluster", "west"]);
    assert_eq!(table.code, 0, "{table}");
    assert!(
        table
            .stdout
            .contains("west: would publish sequence 2 to docker://")
            && table.stdout.contains(&format!(
                "west: would prune: {} manifests to delete, 0 kept in use",
                l.deleted_with_c() + 1
            ))
            && table
                .stdout
                .contains(&format!("  delete {b_at} (image of "))
            && !table.stdout.contains("east"),
        "{table}"
    );
    for (r, log) in [&east, &west].iter().zip(before) {
        let during = &r.log()[log.len()..];
        assert!(
            !during.contains("\"DELETE ") && !during.contains("\"PUT "),
            "the dry run changed a registry:\n{during}"
        );
    }
    assert_eq!(l.c_present(&west, "m").len(), l.everything_of_c());

    // Taken in, it does what was planned.
    ingest(&out);
    assert_b_and_c_gone(&l, &west);
    assert_eq!(
        l.c_present(&east, "m").len(),
        l.everything_of_c(),
        "C runs on east: it stays there"
    );
    assert!(inspect_raw_at(&east, &b_at).is_err(), "B goes");
    for r in [&east, &west] {
        assert_a_exact(&l, r);
    }
    let clusters = served.json(&["clusters"]);
    let west_view = clusters
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "west")
        .unwrap();
    assert_eq!(
        west_view["pruning"]["deleted"],
        l.deleted_with_c() + 1,
        "{clusters}"
    );
    // The imagesets list says which one deletes, and what it did per cluster.
    let imagesets = served.json(&["imagesets"]);
    let second = imagesets
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["sequence"] == 2)
        .unwrap();
    assert_eq!(second["deletes"], 5, "{imagesets:#}");
    let at = |name: &str| {
        second["pruned"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["cluster"] == name)
            .unwrap_or_else(|| panic!("{imagesets:#}"))
            .clone()
    };
    assert_eq!(at("west")["deleted"], l.deleted_with_c() + 1);
    assert_eq!(at("east")["deleted"], 1, "B only");
    assert!(
        at("east")["kept"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["manifest"] == c_at),
        "{imagesets:#}"
    );
    let table = served.ctl(&["imagesets"]);
    assert!(
        table.stdout.contains("1 (deletes 5)")
            && table.stdout.contains(&format!(
                "sequence 2 at west: {} manifests pruned, 0 kept in use",
                l.deleted_with_c() + 1
            )),
        "{table}"
    );
    // Every delete is logged with the cluster it was made for.
    let log = served.agent.log();
    assert!(
        log.lines()
            .any(|line| line.contains("cluster{cluster=west}")
                && line.contains("pruned: no longer listed")
                && line.contains("repository=m/team/b")
                && line.contains(&format!("digest={}", l.b.digest))),
        "{log}"
    );
}

/// The imageset manifest of the (single-chunk) imageset in `dir`.
fn imageset_json(dir: &Path) -> Value {
    let chunk = &chunk_files(dir)[0];
    let out = Command::new("tar")
        .arg("xOf")
        .arg(chunk)
        .arg("airlock/imageset.json")
        .output()
        .unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_forged_delete_imageset_reaching_beyond_the_sequence_before_is_refused() {
    let l = Lifecycle::making(&[names(&["team/a:1", "team/b:1"])]);
    let out = l.ws("out-delete");
    let made = run(&mut delete_cmd(
        &delete_config(&l, &["team/b:1"]),
        &out,
        &l.ws("ws-c"),
    ));
    assert_eq!(made.code, 0, "{made}");
    // Someone who can place files at the site (unsigned imagesets) names a
    // repository no imageset placed: other content under the same prefix.
    let forged = l.ws("forged");
    copy_dir(&out, &forged);
    forge::rewrite(&forged, |m| {
        m["deletes"][0]["repository"] = serde_json::json!(format!("{}/team/other", l.src.addr()));
    })
    .unwrap();
    let dest = Registry::plain().unwrap();
    let ws = l.ws("ws-d");
    let first = publish(&l.made[0], &dest, "m", &ws);
    assert_eq!(first.code, 0, "{first}");
    let refused = publish(&forged, &dest, "m", &ws);
    assert_eq!(refused.code, EX_DATA, "{refused}");
    assert!(
        refused.stderr.contains("deletes[0] (")
            && refused.stderr.contains("is not an image of sequence 1"),
        "{refused}"
    );
    assert!(!dest.log().contains("\"DELETE "));
    assert!(inspect_raw_at(&dest, "m/team/b:1").is_ok());
    // The genuine one is still taken.
    let genuine = publish(&out, &dest, "m", &ws);
    assert_eq!(genuine.code, 0, "{genuine}");
    assert!(inspect_raw_at(&dest, "m/team/b:1").is_err());
    assert_a_exact(&l, &dest);
}
