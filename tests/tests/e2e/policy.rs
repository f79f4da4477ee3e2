//! Image policy: `mirror.blockedImages`.

use airlock_tests::bins::{self, run};
use airlock_tests::images::{Format, Image, ImageBuilder, PushClient, index};
use airlock_tests::registry::Registry;

use crate::util::*;

const HEAD: &str = "apiVersion: mirror.openshift.io/v2alpha1\nkind: ImageSetConfiguration\n";

#[test]
fn blocked_images_by_name_and_by_regex_are_left_out_reported_and_never_pulled() {
    let src = Registry::plain().unwrap();
    let client = PushClient::new(&src).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let app = ImageBuilder::new(Format::Oci).layer(90, 20_000).build();
    let blocked = ImageBuilder::new(Format::Docker).layer(91, 20_000).build();
    let tool = ImageBuilder::new(Format::Oci).layer(92, 20_000).build();
    app.push(&client, "team/app", Some("1.0")).unwrap();
    blocked.push(&client, "team/blocked", Some("1.0")).unwrap();
    tool.push(&client, "other/tool", Some("2.0")).unwrap();
    let a = src.addr();
    let config = tmp.path().join("isc.yaml");
    std::fs::write(
        &config,
        format!(
            "{HEAD}mirror:\n  additionalImages:\n  - name: {a}/team/app:1.0\n  - name: {a}/team/blocked:1.0\n  - name: docker://{a}/other/tool:2.0\n  blockedImages:\n  - name: {a}/team/blocked:1.0\n  - name: ^.*/other/[a-z]+:2\\.0$\n"
        ),
    )
    .unwrap();
    let log_before = src.log().len();

    // Dry run: left out of mapping.txt, listed with the rule that matched.
    let dry = tmp.path().join("dry");
    let out = run(create_cmd(&config, &dry, &tmp.path().join("ws"), "1MiB", &src).arg("--dry-run"));
    assert_eq!(out.code, 0, "{out}");
    let mapping = std::fs::read_to_string(dry.join("mapping.txt")).unwrap();
    assert_eq!(mapping.lines().count(), 1, "{mapping}");
    assert!(mapping.contains("team/app:1.0"), "{mapping}");
    let listed = std::fs::read_to_string(dry.join("blocked.txt")).unwrap();
    assert_eq!(
        listed,
        format!(
            "{a}/team/blocked:1.0 mirror.blockedImages[0] {a}/team/blocked:1.0\ndocker://{a}/other/tool:2.0 mirror.blockedImages[1] ^.*/other/[a-z]+:2\\.0$\n"
        )
    );
    assert!(
        out.stdout.contains(&format!(
            "blocked: {a}/team/blocked:1.0 (mirror.blockedImages[0]"
        )),
        "{out}"
    );

    // A real run: only the allowed image is in the imageset, and the source registry
    // served nothing of the blocked ones (not even a manifest).
    let real = tmp.path().join("out");
    let created = create(&config, &real, &tmp.path().join("ws"), "1MiB", &src);
    assert_eq!(created.code, 0, "{created}");
    assert!(created.stdout.contains("blocked: docker://"), "{created}");
    let f = chunk_files(&real).into_iter().next().unwrap();
    let head = airlock_imageset::read::read_head(&f).unwrap();
    let images: Vec<&str> = head
        .manifest
        .images
        .iter()
        .map(|i| i.repository.as_str())
        .collect();
    assert_eq!(images, [format!("{a}/team/app")]);
    let log = &src.log()[log_before..];
    assert!(
        log.contains("/v2/team/app/manifests/1.0"),
        "the allowed image was pulled"
    );
    assert!(
        !log.contains("/v2/team/blocked/") && !log.contains("/v2/other/tool/"),
        "{log}"
    );

    // A pattern that is not a regular expression: refused with its position.
    std::fs::write(
        &config,
        format!("{HEAD}mirror:\n  additionalImages:\n  - name: {a}/team/app:1.0\n  blockedImages:\n  - name: \"team/(app\"\n"),
    )
    .unwrap();
    let mut cmd = bins::connected();
    cmd.args(["list", "releases", "--config"]).arg(&config);
    let bad = run(&mut cmd);
    assert_eq!(bad.code, EX_CONFIG, "{bad}");
    assert!(bad.stderr.contains("isc.yaml:7:5: mirror.blockedImages[0].name: blocked image \"team/(app\": invalid regular expression"), "{bad}");
}

#[test]
fn images_built_on_a_blocked_base_are_classified_per_platform_and_never_pulled() {
    let src = Registry::plain().unwrap();
    let client = PushClient::new(&src).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let a = src.addr();
    let amd = |seed| {
        ImageBuilder::new(Format::Oci)
            .arch("amd64")
            .layer(seed, 4_000)
    };
    let arm = |seed| {
        ImageBuilder::new(Format::Oci)
            .arch("arm64")
            .layer(seed, 4_000)
    };
    // The base: two platforms of two layers each.
    let base_amd = amd(100).layer(101, 4_000).build();
    let base_arm = arm(102).layer(103, 4_000).build();
    let on = |base: &Image, arch: &str, seed| {
        let mut b = ImageBuilder::new(Format::Oci).arch(arch);
        for l in base.layer_blobs() {
            b = b.with_layer(l);
        }
        b.layer(seed, 4_000).build()
    };
    let base = index(Format::Oci, vec![base_amd.clone(), base_arm.clone()], false);
    base.push(&client, "base/os", Some("1")).unwrap();

    // Built on the base, both platforms: blocked twice.
    let both = index(
        Format::Oci,
        vec![on(&base_amd, "amd64", 110), on(&base_arm, "arm64", 111)],
        false,
    );
    both.push(&client, "apps/both", Some("1")).unwrap();
    // Only its arm64 manifest is built on the base: blocked once, for arm64.
    let arm_only = index(
        Format::Oci,
        vec![amd(120).build(), on(&base_arm, "arm64", 121)],
        false,
    );
    arm_only.push(&client, "apps/arm-only", Some("1")).unwrap();
    // A single-platform image on the base's amd64: the base's platform is reported.
    on(&base_amd, "amd64", 130)
        .push(&client, "apps/single", Some("1"))
        .unwrap();
    // Shares the base's first layer only: not built on it.
    ImageBuilder::new(Format::Oci)
        .with_layer(&base_amd.layer_blobs()[0])
        .layer(140, 4_000)
        .build()
        .push(&client, "apps/partial", Some("1"))
        .unwrap();
    // Rewritten layers, but the builder recorded the base: by name, and by digest.
    amd(150)
        .annotations(
            serde_json::json!({"org.opencontainers.image.base.name": format!("{a}/base/os:1")}),
        )
        .build()
        .push(&client, "apps/annotated", Some("1"))
        .unwrap();
    amd(160)
        .annotations(serde_json::json!({"org.opencontainers.image.base.digest": base_arm.digest}))
        .build()
        .push(&client, "apps/annotated-digest", Some("1"))
        .unwrap();
    // Annotations naming another base are not a match.
    amd(170)
        .annotations(
            serde_json::json!({"org.opencontainers.image.base.name": format!("{a}/base/os:2")}),
        )
        .build()
        .push(&client, "apps/other-base", Some("1"))
        .unwrap();

    let repos = [
        "both",
        "arm-only",
        "single",
        "partial",
        "annotated",
        "annotated-digest",
        "other-base",
    ];
    let images: String = repos
        .iter()
        .map(|r| format!("  - name: {a}/apps/{r}:1\n"))
        .collect();
    let config = tmp.path().join("isc.yaml");
    std::fs::write(
        &config,
        format!("{HEAD}mirror:\n  additionalImages:\n{images}  blockedBaseImages:\n  - name: {a}/base/os:1\n"),
    )
    .unwrap();

    let rule = format!("mirror.blockedBaseImages[0] {a}/base/os:1");
    let expected = [
        format!("{a}/apps/both:1 {rule} linux/amd64 layers"),
        format!("{a}/apps/both:1 {rule} linux/arm64 layers"),
        format!("{a}/apps/arm-only:1 {rule} linux/arm64 layers"),
        format!("{a}/apps/single:1 {rule} linux/amd64 layers"),
        format!(
            "{a}/apps/annotated:1 {rule} single-platform annotation:org.opencontainers.image.base.name"
        ),
        format!(
            "{a}/apps/annotated-digest:1 {rule} single-platform annotation:org.opencontainers.image.base.digest"
        ),
    ];
    let dry = tmp.path().join("dry");
    let out = run(create_cmd(&config, &dry, &tmp.path().join("ws"), "1MiB", &src).arg("--dry-run"));
    assert_eq!(out.code, 0, "{out}");
    let listed = std::fs::read_to_string(dry.join("blocked.txt")).unwrap();
    assert_eq!(listed.lines().collect::<Vec<_>>(), expected, "{listed}");
    let mapping = std::fs::read_to_string(dry.join("mapping.txt")).unwrap();
    let mapped: Vec<&str> = mapping
        .lines()
        .map(|l| l.split('=').next().unwrap())
        .collect();
    assert_eq!(
        mapped,
        [
            format!("docker://{a}/apps/partial:1"),
            format!("docker://{a}/apps/other-base:1")
        ]
    );
    assert!(
        out.stdout.contains(&format!(
            "blocked: {a}/apps/arm-only:1 linux/arm64: built on base {a}/base/os:1 (mirror.blockedBaseImages[0]; its layers begin with the base's)"
        )),
        "{out}"
    );

    // A real run ships the two allowed images, and the source registry served no
    // blob of a blocked image (their manifests are what classified them).
    let log_before = src.log().len();
    let real = tmp.path().join("out");
    let created = create(&config, &real, &tmp.path().join("ws"), "1MiB", &src);
    assert_eq!(created.code, 0, "{created}");
    let f = chunk_files(&real).into_iter().next().unwrap();
    let head = airlock_imageset::read::read_head(&f).unwrap();
    let shipped: Vec<&str> = head
        .manifest
        .images
        .iter()
        .map(|i| i.repository.as_str())
        .collect();
    assert_eq!(
        shipped,
        [format!("{a}/apps/partial"), format!("{a}/apps/other-base")]
    );
    let log = &src.log()[log_before..];
    for r in [
        "both",
        "arm-only",
        "single",
        "annotated",
        "annotated-digest",
    ] {
        assert!(
            log.contains(&format!("/v2/apps/{r}/manifests/")),
            "{r} was classified by its manifests"
        );
        assert!(
            !log.contains(&format!("/v2/apps/{r}/blobs/")),
            "a blob of blocked {r} was pulled:\n{log}"
        );
    }
    assert!(log.contains("/v2/apps/partial/blobs/"), "{log}");
}

#[test]
fn a_single_platform_base_named_by_digest_and_an_index_annotation_are_found() {
    let src = Registry::plain().unwrap();
    let client = PushClient::new(&src).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let a = src.addr();
    // A single-platform arm64 base, named in the rule by digest only.
    let base = ImageBuilder::new(Format::Docker)
        .arch("arm64")
        .layer(600, 4_000)
        .build();
    base.push(&client, "base/single", Some("1")).unwrap();
    let mut on_base = ImageBuilder::new(Format::Docker).arch("arm64");
    for l in base.layer_blobs() {
        on_base = on_base.with_layer(l);
    }
    on_base
        .layer(601, 4_000)
        .build()
        .push(&client, "apps/on-single", Some("1"))
        .unwrap();
    // An index whose own annotation names the base by digest.
    let mut annotated = index(
        Format::Oci,
        vec![ImageBuilder::new(Format::Oci).layer(602, 4_000).build()],
        false,
    );
    let mut doc: serde_json::Value = serde_json::from_slice(&annotated.manifest).unwrap();
    doc["annotations"] = serde_json::json!({"org.opencontainers.image.base.digest": base.digest});
    annotated.manifest = serde_json::to_vec(&doc).unwrap();
    annotated.digest = airlock_tests::images::digest_of(&annotated.manifest);
    annotated
        .push(&client, "apps/index-annotated", Some("1"))
        .unwrap();
    let config = tmp.path().join("isc.yaml");
    std::fs::write(
        &config,
        format!(
            "{HEAD}mirror:\n  additionalImages:\n  - name: {a}/apps/on-single:1\n  - name: {a}/apps/index-annotated:1\n  blockedBaseImages:\n  - name: {a}/base/single@{}\n",
            base.digest
        ),
    )
    .unwrap();
    let log_before = src.log().len();
    let dry = tmp.path().join("dry");
    let out = run(create_cmd(&config, &dry, &tmp.path().join("ws"), "1MiB", &src).arg("--dry-run"));
    assert_eq!(out.code, 0, "{out}");
    let rule = format!(
        "mirror.blockedBaseImages[0] {a}/base/single@{}",
        base.digest
    );
    assert_eq!(
        std::fs::read_to_string(dry.join("blocked.txt")).unwrap(),
        format!(
            "{a}/apps/on-single:1 {rule} linux/arm64 layers\n{a}/apps/index-annotated:1 {rule} index annotation:org.opencontainers.image.base.digest\n"
        )
    );
    // The base's platform came from its config: the one blob read, and the
    // base's own, not a blocked image's.
    let log = src.log()[log_before..].to_string();
    assert!(log.contains("/v2/base/single/blobs/"), "{log}");
    assert!(!log.contains("/v2/apps/on-single/blobs/"), "{log}");
}
