//! Create → chunk files → publish, against real registries, checked with skopeo.

use airlock_tests::bins::{self, run, run_ok};
use airlock_tests::faults::FaultProxy;
use airlock_tests::images::{Format, ImageBuilder, PushClient, two_platform};
use airlock_tests::registry::Registry;
use airlock_tests::skopeo::{SkopeoOpts, inspect_raw, inspect_raw_at};

use crate::util::*;

#[test]
fn create_then_publish_in_shuffled_order_is_byte_exact() {
    let s = Setup::plain();
    let (created, out) = s.create("400KiB");
    assert!(created.stdout.contains("sequence 1"), "{created}");
    let chunks = chunk_files(&out);
    assert!(
        chunks.len() >= 3,
        "expected several chunks at 400KiB, got {}",
        chunks.len()
    );
    for c in &chunks {
        assert!(
            std::fs::metadata(c).unwrap().len() <= 400 * 1024,
            "{} over the limit",
            c.display()
        );
    }

    let usb = s.path("usb");
    carry_shuffled(&chunks, &usb);
    let published = s.publish(&usb, "mirror", "ws-d");
    assert_eq!(published.code, 0, "{published}");
    s.assert_byte_exact("mirror");
    let (source, dest) = (&s.source, &s.dest);

    // Cluster resources: digest references in the IDMS, tag references in the ITMS,
    // scoped to the source namespace.
    let resources = s.path("ws-d/cluster-resources");
    let idms = std::fs::read_to_string(resources.join("idms-oc-mirror.yaml")).unwrap();
    let itms = std::fs::read_to_string(resources.join("itms-oc-mirror.yaml")).unwrap();
    assert!(idms.contains("kind: ImageDigestMirrorSet"), "{idms}");
    // For clusters before 4.13, the digest mirrors as oc-mirror v1 wrote them.
    let icsp =
        std::fs::read_to_string(resources.join("pre-4.13/imageContentSourcePolicy.yaml")).unwrap();
    assert!(
        icsp.contains("kind: ImageContentSourcePolicy")
            && icsp.contains(&format!("source: {}/team", source.addr())),
        "{icsp}"
    );
    assert!(
        idms.contains(&format!("source: {}/team", source.addr())),
        "{idms}"
    );
    assert!(
        idms.contains(&format!("- {}/mirror/team", dest.addr())),
        "{idms}"
    );
    assert!(
        idms.contains(&format!("source: {}/platform", source.addr())),
        "tag@digest is in the IDMS: {idms}"
    );
    assert!(itms.contains("kind: ImageTagMirrorSet"), "{itms}");
    assert!(
        itms.contains(&format!("source: {}/platform", source.addr())),
        "{itms}"
    );
    for (doc, kind, key) in [
        (&idms, "ImageDigestMirrorSet", "imageDigestMirrors"),
        (&itms, "ImageTagMirrorSet", "imageTagMirrors"),
    ] {
        for d in doc.split("---\n").filter(|d| !d.trim().is_empty()) {
            let v: serde_json::Value = serde_yaml_ng::from_str(d).unwrap();
            assert_eq!(v["apiVersion"], "config.openshift.io/v1");
            assert_eq!(v["kind"], kind);
            for entry in v["spec"][key].as_array().unwrap() {
                assert!(
                    entry["source"].is_string() && entry["mirrors"].is_array(),
                    "{entry}"
                );
            }
        }
    }
}

#[test]
fn limit_below_the_largest_blob_splits_it_and_stays_within_the_limit() {
    let source = Registry::plain().unwrap();
    let dest = Registry::plain().unwrap();
    let big = ImageBuilder::new(Format::Oci)
        .layer(42, 3 << 20)
        .layer(43, 10_000)
        .pretty()
        .build();
    let client = PushClient::new(&source).unwrap();
    big.push(&client, "big/app", Some("latest")).unwrap();
    let placed = vec![Placed {
        repo: "big/app".into(),
        config_ref: "big/app:latest".into(),
        dest_ref: "big/app:latest".into(),
        image: big,
    }];
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), &source, &placed, "");
    let out = tmp.path().join("out");
    let created = create(&config, &out, &tmp.path().join("ws-c"), "1MiB", &source);
    assert_eq!(created.code, 0, "{created}");
    let chunks = chunk_files(&out);
    assert!(
        chunks.len() >= 4,
        "a 3 MiB layer at a 1 MiB limit needs at least 4 chunks"
    );
    for c in &chunks {
        assert!(
            std::fs::metadata(c).unwrap().len() <= 1 << 20,
            "{} over the limit",
            c.display()
        );
    }
    // The layer's entries are parts: blobs/sha256/<hex>.1, .2, ...
    let hex = placed[0].image.blobs[1]
        .digest
        .trim_start_matches("sha256:")
        .to_string();
    let listing = std::process::Command::new("tar")
        .arg("tf")
        .arg(&chunks[1])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&listing.stdout).contains(&format!("blobs/sha256/{hex}.")),
        "GNU tar lists the split part"
    );
    let published = publish(&out, &dest, "m", &tmp.path().join("ws-d"));
    assert_eq!(published.code, 0, "{published}");
    assert_byte_exact(&source, &dest, "m", &placed);
}

#[test]
fn missing_chunk_is_named_and_nothing_is_pushed() {
    let s = Setup::plain();
    let (_, out) = s.create("400KiB");
    let chunks = chunk_files(&out);
    let gone = chunks[1].clone();
    let held = s.path("held.tar");
    std::fs::rename(&gone, &held).unwrap();
    let published = s.publish(&out, "mirror", "ws-d");
    assert_eq!(published.code, EX_INCOMPLETE, "{published}");
    let name = gone.file_name().unwrap().to_str().unwrap();
    assert!(
        published.stderr.contains(name),
        "the message names {name}:\n{published}"
    );
    assert!(
        catalog(&s.dest).is_empty(),
        "nothing pushed: {:?}",
        catalog(&s.dest)
    );
    // The chunk arrives later: the same command now completes.
    std::fs::rename(&held, &gone).unwrap();
    let published = s.publish(&out, "mirror", "ws-d");
    assert_eq!(published.code, 0, "{published}");
    s.assert_byte_exact("mirror");
}

#[test]
fn corrupted_byte_in_any_chunk_is_refused_before_any_push() {
    let s = Setup::plain();
    let (_, out) = s.create("400KiB");
    let chunks = chunk_files(&out);
    for (k, victim) in chunks.iter().enumerate() {
        let dir = s.path(&format!("bad-{k}"));
        std::fs::create_dir_all(&dir).unwrap();
        for c in &chunks {
            std::fs::copy(c, dir.join(c.file_name().unwrap())).unwrap();
        }
        let target = dir.join(victim.file_name().unwrap());
        let mut bytes = std::fs::read(&target).unwrap();
        // A byte in the middle of the payload (past the manifest at the start).
        let at = bytes.len() / 2 + k * 977;
        bytes[at] ^= 0x01;
        std::fs::write(&target, &bytes).unwrap();
        let published = s.publish(&dir, "mirror", &format!("ws-{k}"));
        assert_eq!(published.code, EX_DATA, "chunk {k}: {published}");
        let name = victim.file_name().unwrap().to_str().unwrap();
        assert!(
            published.stderr.contains(name),
            "the message names {name}:\n{published}"
        );
        assert!(
            catalog(&s.dest).is_empty(),
            "chunk {k}: nothing pushed: {:?}",
            catalog(&s.dest)
        );
    }
}

#[test]
fn tls_and_htpasswd_on_both_sides() {
    let s = Setup::new(
        Registry::tls_with_auth("src-user", "src-secret").unwrap(),
        Registry::tls_with_auth("dst-user", "dst-secret").unwrap(),
    );
    let out = s.path("out");
    let create_cmd = || {
        let mut cmd = bins::connected();
        cmd.arg("create")
            .arg("--config")
            .arg(&s.config)
            .arg("--out")
            .arg(&out);
        cmd.arg("--workspace")
            .arg(s.path("ws-c"))
            .args(["--limit", "1MiB"]);
        cmd
    };

    // Without credentials the source refuses, and the message says what to check.
    let mut cmd = create_cmd();
    cmd.arg("--src-cert-dir")
        .arg(s.source.ca_cert_dir().unwrap());
    let refused = run(&mut cmd);
    assert_eq!(refused.code, EX_UNAVAILABLE, "{refused}");
    assert!(refused.stderr.contains("credentials"), "{refused}");
    // Without the CA, the certificate is not trusted.
    let mut cmd = create_cmd();
    cmd.arg("--authfile").arg(s.source.auth_file().unwrap());
    let untrusted = run(&mut cmd);
    assert_eq!(untrusted.code, EX_UNAVAILABLE, "{untrusted}");
    assert!(untrusted.stderr.contains("certificate"), "{untrusted}");
    assert!(
        !out.exists() || chunk_files(&out).is_empty(),
        "failed runs leave no chunk files"
    );

    // With both, through REGISTRY_AUTH_FILE rather than --authfile on this side.
    let mut cmd = create_cmd();
    cmd.arg("--src-cert-dir")
        .arg(s.source.ca_cert_dir().unwrap());
    cmd.env("REGISTRY_AUTH_FILE", s.source.auth_file().unwrap());
    run_ok(&mut cmd);

    let published = s.publish(&out, "secure", "ws-d");
    assert_eq!(published.code, 0, "{published}");
    s.assert_byte_exact("secure");
}

#[test]
fn unchanged_sources_make_no_imageset_and_republishing_uploads_nothing() {
    let s = Setup::plain();
    let (first, out) = s.create("2MiB");
    assert!(first.stdout.contains("sequence 1"), "{first}");
    let before = chunk_files(&out);
    let (second, _) = s.create("2MiB");
    assert!(second.stdout.contains("no updates since"), "{second}");
    assert_eq!(chunk_files(&out), before, "no new chunk files");

    let published = s.publish(&out, "mirror", "ws-d");
    assert_eq!(published.code, 0, "{published}");
    s.assert_byte_exact("mirror");

    let again = s.publish(&out, "mirror", "ws-d");
    assert_eq!(again.code, 0, "{again}");
    assert!(
        !again.stdout.contains("accepted"),
        "duplicates are skipped: {again}"
    );
    assert!(
        !again.stdout.contains("uploaded"),
        "nothing to publish: {again}"
    );

    // A new disconnected workspace (a new machine) continues from the state the
    // first one recorded in the registry: nothing to accept, nothing to upload.
    let fresh = s.publish(&out, "mirror", "ws-d2");
    assert_eq!(fresh.code, 0, "{fresh}");
    assert!(
        fresh
            .stdout
            .contains("continued from the workspace state at"),
        "{fresh}"
    );
    assert!(!fresh.stdout.contains("uploaded"), "{fresh}");
    s.assert_byte_exact("mirror");
}

#[test]
fn dry_run_writes_the_mapping_and_changes_nothing() {
    let s = Setup::plain();
    let (source, placed, config) = (&s.source, &s.placed, &s.config);
    let out = s.path("out");
    let ws = s.path("ws-c");
    let mut cmd = bins::connected();
    cmd.arg("create")
        .arg("--config")
        .arg(config)
        .arg("--out")
        .arg(&out)
        .arg("--workspace")
        .arg(&ws)
        .arg("--dry-run");
    source_flags(&mut cmd, source);
    run_ok(&mut cmd);
    assert!(!ws.exists(), "a dry run creates no workspace");
    assert!(chunk_files(&out).is_empty());
    let mapping = std::fs::read_to_string(out.join("mapping.txt")).unwrap();
    let lines: Vec<&str> = mapping.lines().collect();
    assert_eq!(lines.len(), placed.len());
    assert_eq!(
        lines[0],
        format!(
            "docker://{}/team/docker-app:1.0=file://team/docker-app:1.0",
            source.addr()
        )
    );
    assert_eq!(
        lines[1],
        format!(
            "docker://{0}/team/oci-app@{1}=file://team/oci-app@{1}",
            source.addr(),
            placed[1].image.digest
        )
    );
    let ship = std::fs::read_to_string(out.join("to-ship.txt")).unwrap();
    let distinct: std::collections::HashSet<&str> = placed
        .iter()
        .flat_map(|p| p.image.all_blobs())
        .map(|b| b.digest.as_str())
        .collect();
    for d in &distinct {
        assert!(ship.contains(d), "{d} missing from to-ship.txt");
    }
}

#[test]
fn bad_configurations_fail_with_file_line_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let head = "apiVersion: mirror.openshift.io/v2alpha1\nkind: ImageSetConfiguration\n";
    let cases = [
        (
            format!("{head}mirror:\n  additionalImages:\n  - nme: quay.io/a/b\n"),
            "isc.yaml:5:5: mirror.additionalImages[0]: unknown field `nme`",
        ),
        (
            format!("{head}archiveSize: lots\nmirror: {{}}\n"),
            "isc.yaml:3:14: archiveSize: invalid type",
        ),
        (
            "apiVersion: mirror.openshift.io/v3\nkind: ImageSetConfiguration\nmirror: {}\n"
                .to_string(),
            "isc.yaml:1:1: apiVersion: unknown apiVersion",
        ),
        (
            "apiVersion: mirror.openshift.io/v2alpha1\nkind: ImageSet\nmirror: {}\n".to_string(),
            "isc.yaml:2:1: kind: unknown kind",
        ),
        (
            format!(
                "{head}mirror:\n  additionalImages:\n  - name: quay.io/a/b:1\n  operators:\n  - catalog: oci:///srv/catalog\n"
            ),
            "isc.yaml:7:5: mirror.operators[0].catalog: /srv/catalog/oci-layout: No such file or directory",
        ),
        (
            format!("{head}mirror:\n  additionalImages:\n  - name: quay.io/Bad/b:1\n"),
            "isc.yaml:5:5: mirror.additionalImages[0].name: invalid image reference",
        ),
        (
            format!(
                "{head}storageConfig:\n  local:\n    path: /x\nmirror:\n  additionalImages:\n  - name: quay.io/a/b:1\n"
            ),
            "isc.yaml:3:1: storageConfig: field exists only in mirror.openshift.io/v1alpha2",
        ),
    ];
    for (text, want) in cases {
        let config = tmp.path().join("isc.yaml");
        std::fs::write(&config, &text).unwrap();
        let mut cmd = bins::connected();
        cmd.arg("create")
            .arg("--config")
            .arg(&config)
            .arg("--out")
            .arg(tmp.path().join("out"));
        cmd.arg("--workspace").arg(tmp.path().join("ws"));
        let out = run(&mut cmd);
        assert_eq!(out.code, EX_CONFIG, "{text}\n{out}");
        assert!(out.stderr.contains(want), "want {want:?}:\n{out}");
        assert!(
            !tmp.path().join("ws").exists(),
            "a refused configuration touches no workspace"
        );
    }
}

#[test]
fn source_images_are_checked_with_skopeo_as_pushed() {
    // Guards the harness itself: what the tests push is what skopeo reads back.
    let source = Registry::plain().unwrap();
    let placed = seed(&source);
    for p in &placed {
        let bytes = inspect_raw(
            &format!("{}/{}@{}", source.addr(), p.repo, p.image.digest),
            &SkopeoOpts::for_registry(&source),
        )
        .unwrap();
        assert_eq!(bytes, p.image.manifest);
    }
}

#[test]
fn tls_verify_false_speaks_https_with_an_untrusted_certificate() {
    // Both registries serve HTTPS with a CA nobody was told about.
    let s = Setup::new(Registry::tls().unwrap(), Registry::tls().unwrap());
    let out = s.path("out");
    let mut cmd = bins::connected();
    cmd.arg("create")
        .arg("--config")
        .arg(&s.config)
        .arg("--out")
        .arg(&out);
    cmd.arg("--workspace")
        .arg(s.path("ws-c"))
        .arg("--src-tls-verify=false");
    run_ok(&mut cmd);
    let mut cmd = bins::disconnected();
    cmd.arg("publish")
        .arg("--from")
        .arg(&out)
        .arg("--workspace")
        .arg(s.path("ws-d"));
    cmd.arg("--to")
        .arg(format!("docker://{}/insecure", s.dest.addr()));
    cmd.arg("--dest-tls-verify=false");
    run_ok(&mut cmd);
    s.assert_byte_exact("insecure");
}

#[test]
fn a_registry_restarted_keeps_its_content() {
    // Guards the harness: later suites stop and restart registries.
    let mut r = Registry::plain().unwrap();
    let image = ImageBuilder::new(Format::Oci).layer(9, 1000).build();
    image
        .push(&PushClient::new(&r).unwrap(), "keep/me", Some("1"))
        .unwrap();
    r.stop();
    assert!(
        inspect_raw_at(&r, "keep/me:1").is_err(),
        "a stopped registry answers nothing"
    );
    r.start_again().unwrap();
    assert_eq!(inspect_raw_at(&r, "keep/me:1").unwrap(), image.manifest);
}

/// Regression (found by the reader fuzzer): in an unsigned imageset, a byte flipped
/// in the manifest itself — here a tag — must be refused, not published as another
/// valid-looking imageset.
#[test]
fn flipped_byte_in_an_unsigned_manifest_is_refused() {
    let s = Setup::plain();
    let (_, out) = s.create("100MiB");
    let chunks = chunk_files(&out);
    assert_eq!(
        chunks.len(),
        1,
        "a single chunk: no other copy of the manifest to compare with"
    );
    let mut bytes = std::fs::read(&chunks[0]).unwrap();
    let text = String::from_utf8_lossy(&bytes[512..8192]).into_owned();
    let at = 512 + text.find("\"tag\": \"1.0\"").unwrap() + "\"tag\": \"".len();
    bytes[at] = b'7';
    std::fs::write(&chunks[0], &bytes).unwrap();
    let published = s.publish(&out, "mirror", "ws-d");
    assert_eq!(published.code, EX_DATA, "{published}");
    assert!(
        published
            .stderr
            .contains("manifest in this chunk is damaged"),
        "{published}"
    );
    assert!(catalog(&s.dest).is_empty());
}

#[test]
fn verify_checks_a_directory_without_workspace_or_registry() {
    let s = Setup::plain();
    let (_, out) = s.create("400KiB");
    let verify =
        |dir: &std::path::Path| run(bins::disconnected().arg("verify").arg("--from").arg(dir));
    let good = verify(&out);
    assert_eq!(good.code, 0, "{good}");
    assert!(good.stdout.contains("verified imageset"), "{good}");
    let chunks = chunk_files(&out);
    let mut bytes = std::fs::read(&chunks[1]).unwrap();
    let at = bytes.len() - 3000;
    bytes[at] ^= 4;
    std::fs::write(&chunks[1], &bytes).unwrap();
    let bad = verify(&out);
    assert_eq!(bad.code, EX_DATA, "{bad}");
    assert!(
        bad.stderr
            .contains(chunks[1].file_name().unwrap().to_str().unwrap()),
        "{bad}"
    );
    std::fs::remove_file(&chunks[1]).unwrap();
    let missing = verify(&out);
    assert_eq!(missing.code, EX_INCOMPLETE, "{missing}");
}

/// A catalog is thousands of small images, and across a WAN each request costs
/// a round trip more than its bytes, so `create` sends them together: all ten
/// images' manifests at once, an index's two platforms at once, and more small
/// blobs than `--parallel` (2), which bounds large ones (a unit test of
/// `create` checks those). A proxy holds each kind of request back until that
/// many are under way together.
#[test]
fn a_catalogs_requests_go_out_together() {
    let src = Registry::plain().unwrap();
    let client = PushClient::new(&src).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut placed = vec![push_as_1(
        &client,
        two_platform(Format::Oci, 1, 2_000, false),
        "many/multi",
    )];
    for i in 0..9 {
        let image = ImageBuilder::new(Format::Oci)
            .layer(10 + 2 * i, 2_000)
            .layer(11 + 2 * i, 2_000)
            .build();
        placed.push(push_as_1(&client, image, &format!("many/app-{i}")));
    }
    let proxy = FaultProxy::start(&src.addr()).unwrap();
    let config_path = config_naming(&tmp.path().join("isc.yaml"), &proxy.addr(), &placed, "");
    let holds = [
        (
            "image manifests",
            proxy.hold_until_at_once("GET", "/manifests/1", 10),
        ),
        (
            "platform manifests",
            proxy.hold_until_at_once("GET", "/manifests/sha256:", 2),
        ),
        (
            "blobs",
            proxy.hold_until_at_once("GET", "/blobs/sha256:", 3),
        ),
    ];
    let out = tmp.path().join("out");
    let mut cmd = create_cmd(&config_path, &out, &tmp.path().join("ws"), "1GiB", &src);
    let created = run(cmd.arg("--parallel").arg("2"));
    assert_eq!(created.code, 0, "{created}");
    for (what, hold) in &holds {
        assert!(
            hold.released().is_some(),
            "at most {} requests for {what} were under way at once\n{created}",
            hold.most_held()
        );
    }
    let verified = run(bins::disconnected().arg("verify").arg("--from").arg(&out));
    assert_eq!(verified.code, 0, "{verified}");
}
