//! Image policy: `mirror.blockedImages`.

use airlock_tests::bins::{self, run};
use airlock_tests::images::{Format, ImageBuilder, PushClient};
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
    let head = airlock_common::imageset::read::read_head(&f).unwrap();
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
