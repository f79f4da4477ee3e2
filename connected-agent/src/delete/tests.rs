use std::collections::HashSet;

use airlock_imageset::{BlobRecord, ImageKind, ImageRecord, ReleaseRecord};
use airlock_oci::digest::Digest;

use super::*;

fn d(s: &str) -> Digest {
    Digest::of(s.as_bytes())
}

fn image(source: &str, tag: Option<&str>, kind: ImageKind) -> ImageRecord {
    let r: ImageRef = source.parse().unwrap();
    ImageRecord {
        source: source.into(),
        repository: r.name(),
        tag: tag.map(str::to_string),
        by_digest: false,
        digest: d(source),
        target_repository: None,
        kind,
        subject: None,
        catalog_source: None,
        platforms: Vec::new(),
    }
}

fn release(version: &str) -> ReleaseRecord {
    ReleaseRecord {
        version: version.into(),
        arch: "amd64".into(),
        channels: vec!["stable-4.20".into()],
        image: format!("quay.io/ocp/release@{}", d(version)),
        digest: d(version),
        tag: format!("{version}-x86_64"),
        signature: None,
    }
}

fn bundle(package: &str, version: &str) -> Owner {
    Owner::Bundle {
        catalog: "registry.example.com/redhat/index:v4.20".into(),
        package: package.into(),
        bundle: format!("{package}.v{version}"),
        version: version.into(),
        channels: vec!["stable".into()],
    }
}

/// Two releases sharing a component, two bundles of one package sharing a related
/// image, an additional image with a signature, and the catalog.
fn held() -> Contents {
    let mut shared_a = image(
        "quay.io/ocp/art@sha256:0000000000000000000000000000000000000000000000000000000000000001",
        Some("4.20.0-x86_64-etcd"),
        ImageKind::ReleaseComponent,
    );
    shared_a.digest = d("etcd");
    let mut shared_b = shared_a.clone();
    shared_b.tag = Some("4.20.1-x86_64-etcd".into());
    let mut own = image(
        "quay.io/ocp/art@sha256:0000000000000000000000000000000000000000000000000000000000000002",
        Some("4.20.0-x86_64-cli"),
        ImageKind::ReleaseComponent,
    );
    own.digest = d("cli-0");
    let mut sig = image(
        "registry.example.com/team/c:sha256-1.sig",
        Some("sha256-1.sig"),
        ImageKind::Referrer,
    );
    sig.subject = Some(d("registry.example.com/team/c:1"));
    let images = vec![
        image(
            "quay.io/ocp/release:4.20.0",
            Some("4.20.0-x86_64"),
            ImageKind::Release,
        ),
        shared_a,
        own,
        image(
            "quay.io/ocp/release:4.20.1",
            Some("4.20.1-x86_64"),
            ImageKind::Release,
        ),
        shared_b,
        image(
            "registry.example.com/op/bundle:1",
            None,
            ImageKind::Operator,
        ),
        image(
            "registry.example.com/op/bundle:2",
            None,
            ImageKind::Operator,
        ),
        image(
            "registry.example.com/op/related:x",
            None,
            ImageKind::Operator,
        ),
        image(
            "registry.example.com/team/c:1",
            Some("1"),
            ImageKind::Generic,
        ),
        sig,
        image(
            "registry.example.com/redhat/index:v4.20",
            Some("v4.20"),
            ImageKind::Catalog,
        ),
    ];
    let mut images = images;
    images[0].digest = d("4.20.0");
    images[3].digest = d("4.20.1");
    let names = [
        "r0", "etcd", "cli-0", "r1", "etcd", "b1", "b2", "rel", "c", "sig", "index",
    ];
    let mut blobs: Vec<BlobRecord> = Vec::new();
    let mut trees = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let mut tree = Vec::new();
        for part in [format!("{n}-manifest"), format!("{n}-layer")] {
            let digest = d(&part);
            let at = match blobs.iter().position(|b| b.digest == digest) {
                Some(at) => at,
                None => {
                    blobs.push(BlobRecord {
                        digest,
                        size: 1,
                        media_type: None,
                        repository: images[i].repository.clone(),
                        parts: Vec::new(),
                    });
                    blobs.len() - 1
                }
            };
            tree.push(at as u32);
        }
        trees.push(tree);
    }
    let r0 = Owner::Release {
        version: "4.20.0".into(),
        arch: "amd64".into(),
    };
    let r1 = Owner::Release {
        version: "4.20.1".into(),
        arch: "amd64".into(),
    };
    let c = Owner::Image {
        name: "registry.example.com/team/c:1".into(),
        target: None,
        tag: Some("1".into()),
    };
    let owners = vec![
        vec![r0.clone()],
        vec![r0.clone()],
        vec![r0],
        vec![r1.clone()],
        vec![r1],
        vec![bundle("foo", "1.0.0")],
        vec![bundle("foo", "2.0.0")],
        vec![bundle("foo", "1.0.0"), bundle("foo", "2.0.0")],
        vec![c.clone()],
        vec![c],
        vec![Owner::Catalog {
            catalog: "registry.example.com/redhat/index:v4.20".into(),
            target: None,
            tag: Some("v4.20".into()),
        }],
    ];
    Contents {
        sequence: 3,
        images,
        releases: vec![release("4.20.0"), release("4.20.1")],
        blobs,
        owners,
        trees,
    }
}

fn config(delete: &str) -> LoadedConfig {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("delete.yaml");
    std::fs::write(
        &path,
        format!(
            "apiVersion: mirror.openshift.io/v2alpha1\nkind: DeleteImageSetConfiguration\ndelete:\n{delete}"
        ),
    )
    .unwrap();
    let loaded = config::load(&path).unwrap();
    loaded.validate().unwrap();
    loaded.check_delete().unwrap();
    loaded
}

fn sources(images: &[ImageRecord]) -> Vec<String> {
    images
        .iter()
        .map(|i| format!("{}:{}", i.source, i.tag.as_deref().unwrap_or("-")))
        .collect()
}

#[test]
fn a_release_is_deleted_without_the_components_a_kept_release_tags() {
    let held = held();
    let loaded = config(
        "  platform:\n    channels:\n    - name: stable-4.20\n      minVersion: 4.20.0\n      maxVersion: 4.20.0\n",
    );
    let selected = select(&loaded, &held).unwrap();
    assert_eq!(
        selected,
        vec![Owner::Release {
            version: "4.20.0".into(),
            arch: "amd64".into()
        }]
    );
    let deleted: HashSet<&Owner> = selected.iter().collect();
    let rest = held.without(&deleted, 4);
    assert_eq!(
        sources(&rest.removed),
        vec![
            "quay.io/ocp/release:4.20.0:4.20.0-x86_64",
            "quay.io/ocp/art@sha256:0000000000000000000000000000000000000000000000000000000000000001:4.20.0-x86_64-etcd",
            "quay.io/ocp/art@sha256:0000000000000000000000000000000000000000000000000000000000000002:4.20.0-x86_64-cli",
        ],
        "the old release's own tag of the shared component goes; the digest stays listed under 4.20.1's tag"
    );
    assert!(rest.contents.images.iter().any(|i| i.digest == d("etcd")));
    assert_eq!(rest.contents.releases.len(), 1);
    assert_eq!(rest.contents.releases[0].version, "4.20.1");
    // The shared component's blobs stay shipped; the old release's own are freed.
    assert!(rest.freed.contains(&d("cli-0-layer")));
    assert!(rest.freed.contains(&d("r0-manifest")));
    assert!(!rest.freed.contains(&d("etcd-layer")));
    // The remaining trees point at the remaining blobs.
    for (image, tree) in rest.contents.images.iter().zip(&rest.contents.trees) {
        let layer = rest.contents.blobs[tree[1] as usize].digest.clone();
        assert!(
            held.images
                .iter()
                .zip(&held.trees)
                .any(|(i, t)| i == image && held.blobs[t[1] as usize].digest == layer),
            "{} lost its tree",
            image.source
        );
    }
}

#[test]
fn a_bundle_is_deleted_without_the_related_image_a_kept_bundle_names() {
    let held = held();
    let loaded = config(
        "  operators:\n  - catalog: registry.example.com/redhat/index:v4.20\n    packages:\n    - name: foo\n      maxVersion: 1.0.0\n",
    );
    let selected = select(&loaded, &held).unwrap();
    assert_eq!(selected, vec![bundle("foo", "1.0.0")]);
    let rest = held.without(&selected.iter().collect(), 4);
    assert_eq!(
        sources(&rest.removed),
        vec!["registry.example.com/op/bundle:1:-"]
    );
    assert!(
        rest.contents
            .images
            .iter()
            .any(|i| i.source == "registry.example.com/op/related:x"),
        "bundle 2 still names it"
    );
}

#[test]
fn a_whole_catalog_takes_its_bundles_and_an_image_takes_its_signature() {
    let held = held();
    let loaded = config(
        "  operators:\n  - catalog: docker://registry.example.com/redhat/index:v4.20\n  additionalImages:\n  - name: registry.example.com/team/c:1\n",
    );
    let selected = select(&loaded, &held).unwrap();
    let rest = held.without(&selected.iter().collect(), 4);
    let removed = sources(&rest.removed);
    for gone in [
        "registry.example.com/op/bundle:1:-",
        "registry.example.com/op/bundle:2:-",
        "registry.example.com/op/related:x:-",
        "registry.example.com/team/c:1:1",
        "registry.example.com/team/c:sha256-1.sig:sha256-1.sig",
        "registry.example.com/redhat/index:v4.20:v4.20",
    ] {
        assert!(removed.contains(&gone.to_string()), "{gone} in {removed:?}");
    }
    assert_eq!(rest.contents.images.len(), 5, "both releases stay whole");
}

#[test]
fn an_entry_that_selects_nothing_is_an_error_at_its_line() {
    let held = held();
    let loaded = config(
        "  additionalImages:\n  - name: registry.example.com/team/c:1\n  - name: registry.example.com/team/never:1\n  platform:\n    channels:\n    - name: stable-4.20\n      minVersion: 4.21.0\n",
    );
    let e = select(&loaded, &held).unwrap_err().to_string();
    assert!(e.contains("delete.additionalImages[1].name"), "{e}");
    assert!(
        e.contains("registry.example.com/team/never:1 is not in sequence 3"),
        "{e}"
    );
    assert!(e.contains("delete.platform.channels[0]"), "{e}");
    assert!(e.contains("between 4.21.0 and the last"), "{e}");
    assert!(!e.contains("additionalImages[0]"), "{e}");
}

#[test]
fn fields_that_choose_how_to_mirror_are_refused_in_a_delete() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.yaml");
    std::fs::write(
        &path,
        "apiVersion: mirror.openshift.io/v2alpha1\nkind: DeleteImageSetConfiguration\ndelete:\n  platform:\n    channels:\n    - name: stable-4.20\n      shortestPath: true\n  blockedImages:\n  - name: x\n",
    )
    .unwrap();
    let loaded = config::load(&path).unwrap();
    let e = loaded.check_delete().unwrap_err().to_string();
    assert!(
        e.contains("delete.platform.channels[0].shortestPath"),
        "{e}"
    );
    assert!(e.contains("delete.blockedImages"), "{e}");
    std::fs::write(
        &path,
        "apiVersion: mirror.openshift.io/v2alpha1\nkind: ImageSetConfiguration\nmirror:\n  additionalImages:\n  - name: x:1\n",
    )
    .unwrap();
    let e = config::load(&path)
        .unwrap()
        .check_delete()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("delete takes a DeleteImageSetConfiguration"),
        "{e}"
    );
}

#[test]
fn versions_compare_as_semantic_versions() {
    assert!(within("4.20.10", Some("4.20.9"), None));
    assert!(!within("4.20.10", None, Some("4.20.9")));
    assert!(within("1.0.0", Some("v1.0.0"), Some("1.0.0")));
    assert!(!within("not-semver", Some("1.0.0"), None));
    assert!(within("not-semver", Some("not-semver"), None));
}

#[test]
fn a_catalog_mirrored_under_two_targets_is_deleted_only_where_the_entry_says() {
    let source = "registry.example.com/redhat/index:v4.20";
    let copy = |target: &str| {
        let mut i = image(source, Some("v4.20"), ImageKind::Catalog);
        i.target_repository = Some(target.into());
        i.digest = d(target);
        i
    };
    let images = vec![copy("mirror/a"), copy("mirror/b")];
    let owners: Vec<Vec<Owner>> = images
        .iter()
        .map(|i| {
            vec![Owner::Catalog {
                catalog: source.into(),
                target: i.target_repository.clone(),
                tag: i.tag.clone(),
            }]
        })
        .collect();
    let held = Contents {
        sequence: 2,
        images,
        releases: Vec::new(),
        blobs: Vec::new(),
        owners,
        trees: vec![Vec::new(), Vec::new()],
    };
    let loaded = config(&format!(
        "  operators:\n  - catalog: {source}\n    targetCatalog: mirror/b\n"
    ));
    let selected = select(&loaded, &held).unwrap();
    let rest = held.without(&selected.iter().collect(), 3);
    assert_eq!(rest.removed.len(), 1);
    assert_eq!(
        rest.removed[0].target_repository.as_deref(),
        Some("mirror/b")
    );
    let everywhere = config(&format!("  operators:\n  - catalog: {source}\n"));
    let selected = select(&everywhere, &held).unwrap();
    assert_eq!(held.without(&selected.iter().collect(), 3).removed.len(), 2);
}
