//! The plan is a difference of lists; these pin down what it keeps.

use super::*;
use airlock_imageset::ImageKind;

fn image(repo: &str, tag: Option<&str>, seed: &[u8]) -> ImageRecord {
    ImageRecord {
        source: format!("{repo}:{}", tag.unwrap_or("latest")),
        repository: repo.into(),
        tag: tag.map(String::from),
        by_digest: false,
        digest: Digest::of(seed),
        target_repository: None,
        kind: ImageKind::Generic,
        subject: None,
        catalog_source: None,
        platforms: Vec::new(),
    }
}

fn dest() -> Destination {
    "docker://mirror.example:5000/site".parse().unwrap()
}

#[test]
fn what_the_latest_no_longer_lists_is_deleted_by_digest() {
    let a = image("quay.io/ns/a", Some("1"), b"a");
    let b = image("quay.io/ns/b", Some("1"), b"b");
    let c = image("quay.io/ns/c", Some("1"), b"c");
    let plan = plan(
        &[&a, &b, &c],
        &[a.clone(), b.clone()],
        &dest(),
        &InUse::new(),
    );
    assert_eq!(
        plan.doomed,
        vec![Doomed {
            at: At {
                repository: "site/ns/c".into(),
                digest: c.digest.clone()
            },
            image: c.source.clone(),
            subject: None,
        }]
    );
    assert!(plan.untag.is_empty() && plan.kept.is_empty());
}

#[test]
fn a_manifest_still_listed_under_another_tag_stays_and_loses_only_the_dropped_tag() {
    let old = image("quay.io/ns/a", Some("1.0"), b"same");
    let new = image("quay.io/ns/a", Some("1.1"), b"same");
    let plan = plan(&[&old], std::slice::from_ref(&new), &dest(), &InUse::new());
    assert!(plan.doomed.is_empty(), "{plan:?}");
    assert_eq!(
        plan.untag,
        vec![("site/ns/a".to_string(), "1.0".to_string())]
    );
}

#[test]
fn a_moved_tag_deletes_the_old_manifest_only() {
    let old = image("quay.io/ns/a", Some("stable"), b"v1");
    let new = image("quay.io/ns/a", Some("stable"), b"v2");
    let plan = plan(&[&old], std::slice::from_ref(&new), &dest(), &InUse::new());
    assert_eq!(plan.doomed.len(), 1);
    assert_eq!(plan.doomed[0].at.digest, old.digest);
    assert!(plan.untag.is_empty(), "the tag now names the new manifest");
}

#[test]
fn the_same_digest_in_another_repository_does_not_save_it_here() {
    let old = image("quay.io/ns/a", Some("1"), b"x");
    let moved = image("quay.io/other/a", Some("1"), b"x");
    let plan = plan(
        &[&old],
        std::slice::from_ref(&moved),
        &dest(),
        &InUse::new(),
    );
    assert_eq!(plan.doomed.len(), 1);
    assert_eq!(plan.doomed[0].at.repository, "site/ns/a");
}

#[test]
fn target_repository_is_where_it_was_placed() {
    let mut old = image("quay.io/ns/a", Some("1"), b"x");
    old.target_repository = Some("apps/a".into());
    let plan = plan(&[&old], &[], &dest(), &InUse::new());
    assert_eq!(plan.doomed[0].at.repository, "site/apps/a");
}

#[test]
fn in_use_is_kept_with_its_reason() {
    let c = image("quay.io/ns/c", Some("1"), b"c");
    let in_use = InUse::from([(c.digest.clone(), "in use by cluster east".to_string())]);
    let plan = plan(&[&c], &[], &dest(), &in_use);
    assert!(plan.doomed.is_empty());
    assert_eq!(plan.kept.len(), 1);
    assert_eq!(plan.kept[0].1, "in use by cluster east");
}

#[test]
fn referrers_come_before_their_subjects_and_duplicates_once() {
    let c = image("quay.io/ns/c", Some("1"), b"c");
    let mut sig = image("quay.io/ns/c", Some("sha256-x.sig"), b"sig");
    sig.kind = ImageKind::Referrer;
    sig.subject = Some(c.digest.clone());
    let c_again = image("quay.io/ns/c", Some("2"), b"c");
    let plan = plan(&[&c, &sig, &c_again], &[], &dest(), &InUse::new());
    let order: Vec<&Digest> = plan.doomed.iter().map(|d| &d.at.digest).collect();
    assert_eq!(order, vec![&sig.digest, &c.digest]);
}

#[test]
fn nothing_placed_nothing_to_do() {
    let a = image("quay.io/ns/a", Some("1"), b"a");
    assert_eq!(plan(&[], &[a], &dest(), &InUse::new()), Plan::default());
}

#[test]
fn in_use_by_digest_by_source_tag_and_by_mirror_tag() {
    let a = image("quay.io/ns/a", Some("1"), b"a");
    let b = image("quay.io/ns/b", Some("2"), b"b");
    let c = image("quay.io/ns/c", Some("3"), b"c");
    let d = image("quay.io/ns/d", Some("4"), b"d");
    let running = vec![
        Runs::image(&format!("quay.io/ns/a@{}", a.digest), "pod x/y"),
        Runs::image("quay.io/ns/b:2", "operator o in ns"),
        Runs::image("mirror.example:5000/site/ns/c:3", "pod x/z"),
        Runs::image("quay.io/ns/d:other", "pod x/w"),
    ];
    let used = in_use("east", &running, &[&a, &b, &c, &d], &dest());
    assert_eq!(used[&a.digest], "in use by cluster east (pod x/y)");
    assert_eq!(used[&b.digest], "in use by cluster east (operator o in ns)");
    assert!(used.contains_key(&c.digest));
    assert!(
        !used.contains_key(&d.digest),
        "another tag is another image"
    );
}

#[test]
fn a_release_in_use_keeps_the_release_components_placed_with_it() {
    let mut release = image(
        "quay.io/openshift-release-dev/ocp-release",
        Some("4.15.3-x86_64"),
        b"r",
    );
    release.kind = ImageKind::Release;
    let mut component = image("quay.io/openshift-release-dev/ocp-v4.0-art-dev", None, b"k");
    component.kind = ImageKind::ReleaseComponent;
    let other = image("quay.io/ns/a", Some("1"), b"a");
    let running = vec![Runs {
        image: format!(
            "quay.io/openshift-release-dev/ocp-release@{}",
            release.digest
        ),
        why: "release 4.15.3 (desired)".into(),
        release: true,
    }];
    let used = in_use("east", &running, &[&release, &component, &other], &dest());
    assert!(
        used[&component.digest].contains("release 4.15.3"),
        "{used:?}"
    );
    assert!(!used.contains_key(&other.digest));
    let plan = plan(&[&release, &component, &other], &[], &dest(), &used);
    assert_eq!(plan.doomed.len(), 1);
    assert_eq!(plan.kept.len(), 2);
}

#[test]
fn the_signatures_of_what_is_in_use_stay_with_it() {
    let c = image("quay.io/ns/c", Some("1"), b"c");
    let mut sbom = image("quay.io/ns/c", None, b"sbom");
    sbom.kind = ImageKind::Referrer;
    sbom.subject = Some(c.digest.clone());
    let mut sbom_sig = image("quay.io/ns/c", Some("sha256-sbom.sig"), b"sbom-sig");
    sbom_sig.kind = ImageKind::Referrer;
    sbom_sig.subject = Some(sbom.digest.clone());
    let in_use = InUse::from([(
        c.digest.clone(),
        "in use by cluster east (pod p/q)".to_string(),
    )]);
    let plan = plan(&[&c, &sbom, &sbom_sig], &[], &dest(), &in_use);
    assert!(plan.doomed.is_empty(), "{plan:?}");
    assert_eq!(plan.kept.len(), 3);
    assert!(
        plan.kept
            .iter()
            .all(|(_, why)| why.contains("cluster east"))
    );
}

#[test]
fn a_running_release_keeps_components_even_when_it_is_not_among_what_is_pruned() {
    // The cluster stayed on a release published two imagesets ago: the
    // imagesets pruned now list other releases, some sharing its components.
    let mut component = image(
        "quay.io/openshift-release-dev/ocp-v4.0-art-dev",
        None,
        b"shared",
    );
    component.kind = ImageKind::ReleaseComponent;
    let running = vec![Runs {
        image: format!(
            "quay.io/openshift-release-dev/ocp-release@{}",
            Digest::of(b"old")
        ),
        why: "release 4.15.3 (last completed)".into(),
        release: true,
    }];
    let used = in_use("east", &running, &[&component], &dest());
    assert!(used.contains_key(&component.digest), "{used:?}");
}

#[test]
fn a_tag_of_a_manifest_in_use_is_not_removed() {
    let old = image("quay.io/ns/a", Some("1"), b"same");
    let mut new = image("quay.io/ns/a", None, b"same");
    new.by_digest = true;
    let in_use = InUse::from([(
        old.digest.clone(),
        "in use by cluster west (pod p/q)".to_string(),
    )]);
    let kept = plan(&[&old], std::slice::from_ref(&new), &dest(), &in_use);
    assert!(kept.untag.is_empty() && kept.doomed.is_empty(), "{kept:?}");
    let untagged = plan(&[&old], std::slice::from_ref(&new), &dest(), &InUse::new());
    assert_eq!(untagged.untag.len(), 1);
}

#[test]
fn a_short_name_a_cluster_runs_is_read_as_the_runtime_reads_it() {
    let nginx = image("docker.io/library/nginx", Some("1.27"), b"nginx");
    let latest = image("docker.io/library/busybox", Some("latest"), b"busybox");
    let running = vec![
        Runs::image("nginx:1.27", "pod web/nginx-0"),
        Runs::image("busybox", "pod web/init"),
        Runs::image("not a reference!", "pod web/odd"),
    ];
    let used = in_use("east", &running, &[&nginx, &latest], &dest());
    assert!(used.contains_key(&nginx.digest), "{used:?}");
    assert!(used.contains_key(&latest.digest), "{used:?}");
}
