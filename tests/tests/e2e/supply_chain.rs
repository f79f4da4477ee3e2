//! Signatures and referrers travel with their images.

use airlock_tests::faults::{Fault, FaultProxy};
use airlock_tests::images::{Format, Image, ImageBuilder, PushClient, two_platform};
use airlock_tests::registry::Registry;
use airlock_tests::skopeo::{SkopeoOpts, copy_all, inspect_raw_at};
use airlock_tests::supply_chain::{
    Attached, CosignKey, attach, cosign_tag, referrer, referrers_index,
};
use airlock_tests::token::Grant;

use airlock_tests::bins::run;
use base64::Engine;

use crate::util::*;

const HEAD: &str = "apiVersion: mirror.openshift.io/v2alpha1\nkind: ImageSetConfiguration\n";

/// Every blob of `image` at `reference`, copied out of `registry` by skopeo, is
/// the bytes the test made.
fn assert_blobs_byte_exact(registry: &Registry, reference: &str, image: &Image) {
    let dir = tempfile::tempdir().unwrap();
    let opts = SkopeoOpts::for_registry(registry);
    copy_all(
        &format!("docker://{}/{reference}", registry.addr()),
        &opts,
        &format!("dir:{}", dir.path().display()),
        &SkopeoOpts::default(),
    )
    .unwrap();
    for b in &image.blobs {
        let hex = b.digest.trim_start_matches("sha256:");
        let got = std::fs::read(dir.path().join(hex)).unwrap();
        assert_eq!(got, b.bytes, "blob {} of {reference}", b.digest);
    }
}

#[test]
fn cosign_signatures_and_oci_referrers_travel_subjects_first_byte_exact() {
    let src = Registry::plain().unwrap();
    let dest = Registry::plain().unwrap();
    let client = PushClient::new(&src).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let a = src.addr();

    // A two-platform image, signed cosign-style on its index and on its amd64
    // manifest (`cosign sign --recursive`), with an SBOM as an OCI referrer whose
    // own signature is a cosign tag too.
    let signed = two_platform(Format::Oci, 300, 8_000, false);
    signed.push(&client, "team/signed", Some("1")).unwrap();
    let key = CosignKey::from_seed(1);
    let repo = format!("{a}/team/signed");
    let tag = |d: &str| d.replace(':', "-");
    let Attached {
        sig,
        child_sig,
        sbom,
        ..
    } = attach(&client, &a, "team/signed", &signed, &key);
    let sbom_sig = key.signature_image(&repo, &sbom.digest);
    sbom_sig
        .push(
            &client,
            "team/signed",
            Some(&format!("{}.sig", tag(&sbom.digest))),
        )
        .unwrap();
    // An image with nothing attached gains nothing.
    let plain = ImageBuilder::new(Format::Docker).layer(310, 8_000).build();
    plain.push(&client, "team/plain", Some("1")).unwrap();

    let config = tmp.path().join("isc.yaml");
    std::fs::write(
        &config,
        format!("{HEAD}mirror:\n  additionalImages:\n  - name: {a}/team/signed:1\n  - name: {a}/team/plain:1\n"),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let created = create(&config, &out, &tmp.path().join("ws"), "1MiB", &src);
    assert_eq!(created.code, 0, "{created}");
    let head = airlock_imageset::read::read_head(&chunk_files(&out)[0]).unwrap();
    let referrers: Vec<(String, Option<String>)> = head
        .manifest
        .images
        .iter()
        .filter(|i| i.kind == airlock_imageset::ImageKind::Referrer)
        .map(|i| {
            (
                i.digest.to_string(),
                i.subject.as_ref().map(|s| s.to_string()),
            )
        })
        .collect();
    let expected: Vec<(String, Option<String>)> = [
        (&sig, &signed.digest),
        (&sbom, &signed.digest),
        (&child_sig, &signed.children[0].digest),
        (&sbom_sig, &sbom.digest),
    ]
    .iter()
    .map(|(r, s)| (r.digest.clone(), Some(s.to_string())))
    .collect();
    let mut sorted = referrers.clone();
    sorted.sort();
    let mut want = expected.clone();
    want.sort();
    assert_eq!(sorted, want, "every signature and referrer, each once");
    assert_eq!(head.manifest.images.len(), 2 + expected.len());

    let published = publish(&out, &dest, "mirror", &tmp.path().join("ws-d"));
    assert_eq!(published.code, 0, "{published}");

    // Subjects before referrers: the destination's access log shows every
    // signature and referrer manifest pushed after the manifest it is about.
    let log = dest.log();
    // A tagged manifest is pushed once, by its tag; any other by its digest.
    let tags: std::collections::HashMap<String, String> = head
        .manifest
        .images
        .iter()
        .filter_map(|i| Some((i.digest.to_string(), i.tag.clone()?)))
        .collect();
    let put_at = |digest: &str| {
        let reference = tags.get(digest).map_or(digest, String::as_str);
        log.find(&format!(
            "PUT /v2/mirror/team/signed/manifests/{reference} HTTP"
        ))
        .unwrap_or_else(|| panic!("{digest} ({reference}) was not pushed:\n{log}"))
    };
    for (r, s) in &expected {
        assert!(
            put_at(s.as_deref().unwrap()) < put_at(r),
            "{r} before its subject"
        );
    }

    // Byte-exact: the cosign tags, the referrer by digest, and all their blobs.
    for (image, reference) in [
        (
            &sig,
            format!("mirror/team/signed:{}.sig", tag(&signed.digest)),
        ),
        (
            &child_sig,
            format!("mirror/team/signed:{}.sig", tag(&signed.children[0].digest)),
        ),
        (
            &sbom_sig,
            format!("mirror/team/signed:{}.sig", tag(&sbom.digest)),
        ),
        (&sbom, format!("mirror/team/signed@{}", sbom.digest)),
    ] {
        assert_eq!(
            inspect_raw_at(&dest, &reference).unwrap(),
            image.manifest,
            "{reference}"
        );
        assert_blobs_byte_exact(&dest, &reference, image);
    }
    assert_eq!(
        inspect_raw_at(&dest, "mirror/team/signed:1").unwrap(),
        signed.manifest
    );
    // The destination has no referrers API either: Airlock wrote the referrers tag,
    // and it lists the SBOM with its artifact type.
    let listed: serde_json::Value = serde_json::from_slice(
        &inspect_raw_at(
            &dest,
            &format!("mirror/team/signed:{}", tag(&signed.digest)),
        )
        .unwrap(),
    )
    .unwrap();
    let entries = listed["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{listed}");
    assert_eq!(entries[0]["digest"], sbom.digest.as_str());
    assert_eq!(entries[0]["artifactType"], "application/spdx+json");
    assert_eq!(entries[0]["size"], sbom.manifest.len());

    // Publishing again changes nothing (the referrers tag is not rewritten).
    let again = publish(&out, &dest, "mirror", &tmp.path().join("ws-d2"));
    assert_eq!(again.code, 0, "{again}");
    let after = dest.log();
    assert!(
        !after[log.len()..].contains(&format!(
            "PUT /v2/mirror/team/signed/manifests/{}",
            tag(&signed.digest)
        )),
        "the referrers tag was rewritten"
    );

    // --remove-signatures leaves them all behind.
    let bare = tmp.path().join("bare");
    let created = run(
        create_cmd(&config, &bare, &tmp.path().join("ws-bare"), "1MiB", &src)
            .arg("--remove-signatures"),
    );
    assert_eq!(created.code, 0, "{created}");
    let head = airlock_imageset::read::read_head(&chunk_files(&bare)[0]).unwrap();
    assert_eq!(head.manifest.images.len(), 2);
}

#[test]
fn require_signatures_accepts_only_valid_cosign_signatures_by_the_given_keys() {
    let src = Registry::plain().unwrap();
    let client = PushClient::new(&src).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let a = src.addr();
    let ours = CosignKey::from_seed(11);
    let theirs = CosignKey::from_seed(12);
    let tag = |d: &str| format!("{}.sig", d.replace(':', "-"));
    let push = |repo: &str, seed: u64| {
        let image = ImageBuilder::new(Format::Oci).layer(seed, 2_000).build();
        image.push(&client, repo, Some("1")).unwrap();
        image
    };
    let signed = push("team/signed", 400);
    ours.signature_image(&format!("{a}/team/signed"), &signed.digest)
        .push(&client, "team/signed", Some(&tag(&signed.digest)))
        .unwrap();
    let other = push("team/other", 401);
    theirs
        .signature_image(&format!("{a}/team/other"), &other.digest)
        .push(&client, "team/other", Some(&tag(&other.digest)))
        .unwrap();
    let _unsigned = push("team/unsigned", 402);
    // A valid signature, but for another image, placed on this one.
    let replayed = push("team/replayed", 403);
    ours.signature_image(&format!("{a}/team/signed"), &signed.digest)
        .push(&client, "team/replayed", Some(&tag(&replayed.digest)))
        .unwrap();
    // Someone else's signature bytes over a payload naming this image.
    let forged = push("team/forged", 404);
    let genuine = ours.signature_image(&format!("{a}/team/signed"), &signed.digest);
    let genuine_sig: serde_json::Value = serde_json::from_slice(&genuine.manifest).unwrap();
    let payload = serde_json::to_vec(&serde_json::json!({
        "critical": {"identity": {"docker-reference": format!("{a}/team/forged")}, "image": {"docker-manifest-digest": forged.digest}, "type": "cosign container image signature"},
        "optional": null,
    }))
    .unwrap();
    airlock_tests::supply_chain::signature_image_with(
        payload,
        genuine_sig["layers"][0]["annotations"][airlock_tests::supply_chain::SIGNATURE_ANNOTATION]
            .as_str()
            .unwrap(),
    )
    .push(&client, "team/forged", Some(&tag(&forged.digest)))
    .unwrap();

    let key_file = |name: &str, key: &CosignKey| {
        let p = tmp.path().join(name);
        std::fs::write(&p, key.public_pem()).unwrap();
        p
    };
    let ours_pub = key_file("ours.pub", &ours);
    let theirs_pub = key_file("theirs.pub", &theirs);
    let config = |repos: &[&str]| {
        let p = tmp.path().join("isc.yaml");
        let images: String = repos
            .iter()
            .map(|r| format!("  - name: {a}/team/{r}:1\n"))
            .collect();
        std::fs::write(&p, format!("{HEAD}mirror:\n  additionalImages:\n{images}")).unwrap();
        p
    };
    let create_with = |config: &std::path::Path, out: &str, keys: &[&std::path::Path]| {
        let mut cmd = create_cmd(
            config,
            &tmp.path().join(out),
            &tmp.path().join("ws"),
            "1MiB",
            &src,
        );
        cmd.arg("--require-signatures").args(keys);
        run(&mut cmd)
    };

    let all = config(&["signed", "other", "unsigned", "replayed", "forged"]);
    let refused = create_with(&all, "out1", &[&ours_pub]);
    assert_eq!(refused.code, EX_DATA, "{refused}");
    assert!(
        refused
            .stderr
            .contains("4 image(s) without a valid cosign signature"),
        "{refused}"
    );
    for (repo, why) in [
        ("other", "the signature is not valid for any of the keys"),
        ("unsigned", "no cosign signature"),
        (
            "replayed",
            &format!("but for {}, not this image", signed.digest),
        ),
        ("forged", "the signature is not valid for any of the keys"),
    ] {
        let line = refused
            .stderr
            .lines()
            .find(|l| l.starts_with(&format!("  - {a}/team/{repo}:1 (")))
            .unwrap_or_else(|| panic!("{repo} not named: {refused}"));
        assert!(line.contains(why), "{repo}: {line}");
    }
    assert!(
        !refused.stderr.contains(&format!("  - {a}/team/signed:1 (")),
        "{refused}"
    );
    let out1 = tmp.path().join("out1");
    assert!(
        !out1.exists() || chunk_files(&out1).is_empty(),
        "nothing written"
    );

    // Both keys: the image signed with the other key passes now.
    let two = create_with(&all, "out2", &[&ours_pub, &theirs_pub]);
    assert_eq!(two.code, EX_DATA, "{two}");
    assert!(two.stderr.contains("3 image(s)"), "{two}");
    assert!(
        !two.stderr.contains(&format!("  - {a}/team/other:1 (")),
        "{two}"
    );

    let good = config(&["signed", "other"]);
    let ok = create_with(&good, "out3", &[&ours_pub, &theirs_pub]);
    assert_eq!(ok.code, 0, "{ok}");
    let head =
        airlock_imageset::read::read_head(&chunk_files(&tmp.path().join("out3"))[0]).unwrap();
    assert_eq!(
        head.manifest.images.len(),
        4,
        "both images and their signatures"
    );

    // A key file that is not a P-256 public key: refused before any request.
    let bad = tmp.path().join("bad.pub");
    std::fs::write(
        &bad,
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let log_before = src.log().len();
    let refused = create_with(&good, "out4", &[&bad]);
    assert_eq!(refused.code, EX_CONFIG, "{refused}");
    assert!(
        refused
            .stderr
            .contains("bad.pub: not an ECDSA P-256 public key"),
        "{refused}"
    );
    assert_eq!(src.log().len(), log_before, "no registry was contacted");
}

#[test]
fn a_flood_of_referrers_is_refused_not_truncated() {
    let src = Registry::plain().unwrap();
    let client = PushClient::new(&src).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let a = src.addr();
    let image = ImageBuilder::new(Format::Oci).layer(500, 1_000).build();
    image.push(&client, "team/flooded", Some("1")).unwrap();
    let flood: Vec<Image> = (0..257)
        .map(|i| {
            referrer(
                &image,
                "application/vnd.example+json",
                format!("{i}").as_bytes(),
            )
        })
        .collect();
    for r in &flood {
        r.push(&client, "team/flooded", None).unwrap();
    }
    let index = referrers_index(&flood.iter().collect::<Vec<_>>());
    client
        .push_manifest(
            "team/flooded",
            &image.digest.replace(':', "-"),
            &index.manifest,
            &index.media_type,
        )
        .unwrap();
    let config = tmp.path().join("isc.yaml");
    std::fs::write(
        &config,
        format!("{HEAD}mirror:\n  additionalImages:\n  - name: {a}/team/flooded:1\n"),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let refused = create(&config, &out, &tmp.path().join("ws"), "1MiB", &src);
    assert_eq!(refused.code, EX_DATA, "{refused}");
    assert!(
        refused.stderr.contains(&format!(
            "manifest {} has 257 referrers; more than 256 are refused",
            image.digest
        )),
        "{refused}"
    );
    assert!(!out.exists() || chunk_files(&out).is_empty());
    let bare = run(
        create_cmd(&config, &out, &tmp.path().join("ws"), "1MiB", &src).arg("--remove-signatures"),
    );
    assert_eq!(bare.code, 0, "{bare}");
}

/// oc-mirror's `--secure-policy` with a containers policy.json: each image meets
/// the requirements of its most specific scope or the run stops, naming every
/// image refused, its scope and why; what cannot be verified is refused too.
#[test]
fn secure_policy_enforces_a_containers_policy_json_per_scope() {
    let src = Registry::plain().unwrap();
    let client = PushClient::new(&src).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let a = src.addr();
    let ours = CosignKey::from_seed(21);
    let vendor = CosignKey::from_seed(22);
    let tag = |d: &str| format!("{}.sig", d.replace(':', "-"));
    let push = |repo: &str, seed: u64, signer: Option<(&CosignKey, &str)>| {
        let image = ImageBuilder::new(Format::Oci).layer(seed, 2_000).build();
        image.push(&client, repo, Some("1")).unwrap();
        if let Some((key, identity)) = signer {
            key.signature_image(&format!("{a}/{identity}"), &image.digest)
                .push(&client, repo, Some(&tag(&image.digest)))
                .unwrap();
        }
        image
    };
    push("team/signed", 410, Some((&ours, "team/signed")));
    let vendor_app = push("vendor/app", 411, Some((&vendor, "vendor/app")));
    push("open/tool", 412, None);
    push("team/unsigned", 413, None);
    // Signed with the right key, for this digest, but as another repository.
    push("team/relabelled", 414, Some((&ours, "team/signed")));
    // GPG simple signing, the signature in a lookaside store (as Red Hat keeps
    // registry.redhat.io's): one signed image and one whose store has nothing.
    let gpg = push("legacy/gpg", 415, None);
    push("legacy/nosig", 419, None);
    let forged = push("legacy/forged", 420, None);
    let gpg_signer = airlock_tests::release::ReleaseSigner::new();
    let gpg_pub = tmp.path().join("gpg.pub");
    std::fs::write(&gpg_pub, gpg_signer.public_key()).unwrap();
    let store = airlock_tests::update_service::UpdateService::start().unwrap();
    store.set_file(
        &format!(
            "/sigstore/legacy/gpg@sha256={}/signature-1",
            gpg.digest.trim_start_matches("sha256:")
        ),
        gpg_signer.sign(&gpg.digest, &format!("{a}/legacy/gpg:1")),
    );
    // Signed, for this digest and name, by a key the policy does not name.
    store.set_file(
        &format!(
            "/sigstore/legacy/forged@sha256={}/signature-1",
            forged.digest.trim_start_matches("sha256:")
        ),
        airlock_tests::release::ReleaseSigner::new()
            .sign(&forged.digest, &format!("{a}/legacy/forged:1")),
    );
    let registries_d = tmp.path().join("registries.d");
    std::fs::create_dir_all(&registries_d).unwrap();
    std::fs::write(
        registries_d.join("lab.yaml"),
        format!(
            "docker:\n  {a}/legacy:\n    lookaside: {}/sigstore\n",
            store.url()
        ),
    )
    .unwrap();
    push("elsewhere/thing", 416, None);
    // Signed, but with the key of another scope.
    push("team/crosskey", 417, Some((&vendor, "team/crosskey")));
    // Signed with the scope's key, but the scope keeps the default identity
    // rule, which a cosign signature (it names no tag) never meets.
    let strict = push("vendor/strict", 418, Some((&vendor, "vendor/strict")));

    let ours_pub = tmp.path().join("ours.pub");
    std::fs::write(&ours_pub, ours.public_pem()).unwrap();
    let vendor_data = base64::engine::general_purpose::STANDARD.encode(vendor.public_pem());
    let policy = tmp.path().join("policy.json");
    std::fs::write(
        &policy,
        serde_json::to_vec_pretty(&serde_json::json!({
            "default": [{"type": "reject"}],
            "transports": {"docker": {
                format!("{a}/team"): [{"type": "sigstoreSigned", "keyPath": ours_pub, "signedIdentity": {"type": "matchRepository"}}],
                format!("{a}/vendor"): [{"type": "sigstoreSigned", "keyData": vendor_data, "signedIdentity": {"type": "matchRepository"}}],
                format!("{a}/vendor/strict"): [{"type": "sigstoreSigned", "keyData": vendor_data}],
                format!("{a}/open"): [{"type": "insecureAcceptAnything"}],
                format!("{a}/legacy"): [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": gpg_pub}],
            }},
        }))
        .unwrap(),
    )
    .unwrap();
    let config = |name: &str, images: &[String]| {
        let p = tmp.path().join(name);
        let list: String = images.iter().map(|i| format!("  - name: {i}\n")).collect();
        std::fs::write(&p, format!("{HEAD}mirror:\n  additionalImages:\n{list}")).unwrap();
        p
    };
    let good = config(
        "good.yaml",
        &[
            format!("{a}/team/signed:1"),
            format!("{a}/vendor/app@{}", vendor_app.digest),
            format!("{a}/open/tool:1"),
            format!("{a}/legacy/gpg:1"),
        ],
    );
    let create_with = |config: &std::path::Path, out: &str, extra: &[&str]| {
        let mut cmd = create_cmd(
            config,
            &tmp.path().join(out),
            &tmp.path().join(out).with_extension("ws"),
            "1MiB",
            &src,
        );
        cmd.args(extra);
        run(&mut cmd)
    };
    let policy_arg = policy.to_str().unwrap();
    let registries_d_arg = registries_d.to_str().unwrap();

    let ok = create_with(
        &good,
        "out1",
        &[
            "--secure-policy",
            "--policy",
            policy_arg,
            "--registries.d",
            registries_d_arg,
        ],
    );
    assert_eq!(ok.code, 0, "{ok}");
    let head =
        airlock_imageset::read::read_head(&chunk_files(&tmp.path().join("out1"))[0]).unwrap();
    assert_eq!(
        head.manifest.images.len(),
        6,
        "four images, two cosign signatures (GPG signatures stay in their store)"
    );

    let mut all: Vec<String> = [
        "team/signed:1",
        "team/unsigned:1",
        "team/relabelled:1",
        "legacy/nosig:1",
        "legacy/forged:1",
        "elsewhere/thing:1",
    ]
    .iter()
    .map(|i| format!("{a}/{i}"))
    .collect();
    all.push(format!("{a}/open/tool:1"));
    all.push(format!("{a}/team/crosskey:1"));
    all.push(format!("{a}/vendor/strict@{}", strict.digest));
    let bad = config("bad.yaml", &all);
    let refused = create_with(
        &bad,
        "out2",
        &[
            "--secure-policy",
            "--policy",
            policy_arg,
            "--registries.d",
            registries_d_arg,
        ],
    );
    assert_eq!(refused.code, EX_DATA, "{refused}");
    assert!(
        refused
            .stderr
            .contains(&format!("7 image(s) refused by {}", policy.display())),
        "{refused}"
    );
    for (repo, why) in [
        (
            "team/unsigned",
            format!("transports.docker[\"{a}/team\"]: no cosign signature"),
        ),
        (
            "team/relabelled",
            format!(
                "its signed identity \"{a}/team/signed\" is not repository {a}/team/relabelled"
            ),
        ),
        ("legacy/nosig", "no signature in the lookaside store".into()),
        ("legacy/forged", "is not valid for any key of".into()),
        ("elsewhere/thing", "default: rejected".into()),
        (
            "team/crosskey",
            "the signature is not valid for any of the keys".into(),
        ),
        (
            "vendor/strict",
            "names no tag or digest, which matchRepoDigestOrExact".into(),
        ),
    ] {
        let line = refused
            .stderr
            .lines()
            .find(|l| {
                l.starts_with(&format!("  - {a}/{repo}:1 ("))
                    || l.starts_with(&format!("  - {a}/{repo}@"))
            })
            .unwrap_or_else(|| panic!("{repo} not named: {refused}"));
        assert!(line.contains(&why), "{repo}: {line}");
    }
    let out2 = tmp.path().join("out2");
    assert!(
        !out2.exists() || chunk_files(&out2).is_empty(),
        "nothing written"
    );

    // --policy alone would be ignored by oc-mirror; here it is refused.
    let alone = create_with(&good, "out3", &["--policy", policy_arg]);
    assert_eq!(alone.code, 2, "{alone}");
    assert!(alone.stderr.contains("--secure-policy"), "{alone}");

    // oc-mirror's own command line, unchanged: the policy applies there too.
    let m2d = |config: &std::path::Path, dir: &str| {
        let mut cmd = airlock_tests::bins::connected();
        cmd.args(["-c", config.to_str().unwrap()])
            .arg(format!("file://{}", tmp.path().join(dir).display()))
            .args([
                "--v2",
                "--secure-policy",
                "--policy",
                policy_arg,
                "--registries.d",
                registries_d_arg,
                "--src-tls-verify=false",
            ]);
        run(&mut cmd)
    };
    let passed = m2d(&good, "m2d-good");
    assert_eq!(passed.code, 0, "{passed}");
    let stopped = m2d(&bad, "m2d-bad");
    assert_eq!(stopped.code, EX_DATA, "{stopped}");
    assert!(stopped.stderr.contains("7 image(s) refused"), "{stopped}");
}

/// What the lookup tests mirror: a signed two-platform image with an SBOM (as
/// in the first test) in `team/signed`, and unsigned images in `team/plain`
/// and `team/other`: three repositories, as a registry is taken to lack the
/// referrers API once three answered so.
struct SignedSet {
    signed: Image,
    attached: Attached,
    unsigned: [Image; 2],
}

const SET_REPOSITORIES: [&str; 3] = ["team/signed", "team/plain", "team/other"];

impl SignedSet {
    /// Pushed to the registry at `addr` (plain, or with `client`'s password).
    fn push(client: &PushClient, addr: &str) -> Self {
        let signed = two_platform(Format::Oci, 320, 4_000, false);
        signed.push(client, "team/signed", Some("1")).unwrap();
        let attached = attach(
            client,
            addr,
            "team/signed",
            &signed,
            &CosignKey::from_seed(3),
        );
        let unsigned =
            [321, 322].map(|seed| ImageBuilder::new(Format::Docker).layer(seed, 4_000).build());
        for (image, repo) in unsigned.iter().zip(&SET_REPOSITORIES[1..]) {
            image.push(client, repo, Some("1")).unwrap();
        }
        SignedSet {
            signed,
            attached,
            unsigned,
        }
    }

    /// A configuration of the images of `repositories` (of
    /// [`SET_REPOSITORIES`]) under `prefix` (`HOST[/PATH]`).
    fn config_of(
        &self,
        path: &std::path::Path,
        prefix: &str,
        repositories: &[&str],
    ) -> std::path::PathBuf {
        let mut text = format!("{HEAD}mirror:\n  additionalImages:\n");
        for repo in repositories {
            text.push_str(&format!("  - name: {prefix}/{repo}:1\n"));
        }
        std::fs::write(path, text).unwrap();
        path.to_path_buf()
    }

    /// A configuration of the three images under `prefix`.
    fn config(&self, path: &std::path::Path, prefix: &str) -> std::path::PathBuf {
        self.config_of(path, prefix, &SET_REPOSITORIES)
    }

    /// Every signature and referrer with its subject, sorted.
    fn referrers(&self) -> Vec<(String, String)> {
        let a = &self.attached;
        let mut want = vec![
            (a.sig.digest.clone(), self.signed.digest.clone()),
            (a.sbom.digest.clone(), self.signed.digest.clone()),
            (
                a.child_sig.digest.clone(),
                self.signed.children[0].digest.clone(),
            ),
        ];
        want.sort();
        want
    }

    /// `create` into `out` succeeded and found every signature and
    /// referrer, each once.
    fn assert_found(&self, created: &airlock_tests::bins::Output, out: &std::path::Path) {
        assert_eq!(created.code, 0, "{created}");
        let head = airlock_imageset::read::read_head(&chunk_files(out)[0]).unwrap();
        let mut found: Vec<(String, String)> = head
            .manifest
            .images
            .iter()
            .filter(|i| i.kind == airlock_imageset::ImageKind::Referrer)
            .map(|i| {
                let subject = i.subject.as_ref().map(|s| s.to_string());
                (i.digest.to_string(), subject.unwrap_or_default())
            })
            .collect();
        found.sort();
        assert_eq!(
            found,
            self.referrers(),
            "every signature and referrer, each once"
        );
    }
}

/// The set published by Airlock into `src` under `m/`, then mirrored from
/// there. Returns the log of `src` for that second `create` alone.
///
/// The second `create` finds every signature and referrer with one tag list
/// per repository instead of four lookups per manifest, and asks the referrers
/// API of a registry without one (docker-registry 2.8) only until its answers
/// show it has none. These reads carry their own authorisation, so each kind
/// of source auth has its test.
fn signatures_found_by_one_tag_list_per_repository(src: &Registry) -> String {
    let stage = Registry::plain().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let set = SignedSet::push(&PushClient::new(&stage).unwrap(), &stage.addr());
    let staged = set.config(&tmp.path().join("staged.yaml"), &stage.addr());
    let first = tmp.path().join("first");
    let created = create(&staged, &first, &tmp.path().join("ws-1"), "1MiB", &stage);
    assert_eq!(created.code, 0, "{created}");
    let published = publish(&first, src, "m", &tmp.path().join("ws-d"));
    assert_eq!(published.code, 0, "{published}");

    let a = src.addr();
    let config = set.config(&tmp.path().join("isc.yaml"), &format!("{a}/m"));
    // `create` into `out-NAME`, with `extra` arguments; the log of `src` for
    // that run alone.
    let mirror = |name: &str, extra: &[&std::ffi::OsStr]| {
        let before = src.log().len();
        let out = tmp.path().join(format!("out-{name}"));
        let ws = tmp.path().join(format!("ws-{name}"));
        let created = run(create_cmd(&config, &out, &ws, "1MiB", src).args(extra));
        set.assert_found(&created, &out);
        src.log()[before..].to_string()
    };

    // Where registries.conf routes the registry (here to an empty mirror, then
    // to itself), its tags are asked for one by one where the rules send them,
    // and found so: the mirror's "none" does not decide for the source.
    let conf = tmp.path().join("registries.conf");
    let empty = Registry::plain().unwrap();
    std::fs::write(
        &conf,
        format!(
            "[[registry]]\nlocation = '{a}'\n[[registry.mirror]]\nlocation = '{}'\ninsecure = true\n[[registry.mirror]]\nlocation = '{a}'\ninsecure = true\n",
            empty.addr()
        ),
    )
    .unwrap();
    let routed = mirror("routed", &["--registries-conf".as_ref(), conf.as_os_str()]);
    assert!(!routed.contains("/tags/list"), "{routed}");
    assert!(
        routed.contains(&format!(
            "\"HEAD /v2/m/team/signed/manifests/{} ",
            cosign_tag(&set.signed.digest, "sig")
        )),
        "{routed}"
    );

    let log = mirror("listed", &[]);
    let count = |what: &str| log.matches(what).count();
    for repo in SET_REPOSITORIES {
        assert_eq!(count(&format!("\"GET /v2/m/{repo}/tags/list ")), 1, "{log}");
        assert_eq!(
            count(&format!("\"HEAD /v2/m/{repo}/manifests/sha256-")),
            0,
            "a tag was asked for by itself\n{log}"
        );
    }
    // The referrers tag is read where the list names it (the signed index's),
    // and nowhere else.
    let referrers_tag = |d: &str| format!("/manifests/{} HTTP/1.1\"", d.replace(':', "-"));
    assert_eq!(count(&referrers_tag(&set.signed.digest)), 1, "{log}");
    let others = [
        &set.signed.children[0].digest,
        &set.unsigned[0].digest,
        &set.unsigned[1].digest,
        &set.attached.sig.digest,
    ];
    for d in others {
        assert_eq!(count(&referrers_tag(d)), 0, "{d}\n{log}");
    }
    // Searched: the index, its two children and the two unsigned images, then
    // the three referrers found. The API is asked at most once for each of the
    // first five, which are searched at once, and after their three
    // repositories answered with the router's 404, never again.
    let api = log
        .lines()
        .filter(|l| l.contains("/referrers/sha256:") && l.contains(" HTTP/1.1\""))
        .count();
    assert!(
        (3..=5).contains(&api),
        "{api} referrers API requests\n{log}"
    );
    log
}

/// A registry that throttles a catalog's lookups answers some of them 429:
/// `create` waits and asks again, a tag list, a signature's tag and the
/// referrers API alike, and finds what it finds unthrottled. A tag list that
/// failed would fall back to four lookups per manifest, so the first run also
/// checks that none was made.
#[test]
fn create_waits_out_a_429_on_a_tag_list_a_signature_lookup_and_the_referrers_api() {
    let src = Registry::plain().unwrap();
    let set = SignedSet::push(&PushClient::new(&src).unwrap(), &src.addr());
    let tmp = tempfile::tempdir().unwrap();
    // Each run: its name, whether tag lists come paged (so signatures are
    // looked up one by one), and the requests throttled once each.
    let runs = [
        (
            "listed",
            false,
            &[("GET", "/tags/list"), ("GET", "/referrers/")][..],
        ),
        ("looked-up", true, &[("HEAD", "/manifests/sha256-")][..]),
    ];
    for (name, paged, throttled) in runs {
        let proxy = FaultProxy::start(&src.addr()).unwrap();
        if paged {
            proxy.fail_always("GET", "/tags/list", Fault::PagedTags);
        }
        for &(method, path) in throttled {
            proxy.fail_nth(method, path, 1, Fault::TooManyRequests);
        }
        let path = tmp.path().join(format!("{name}.yaml"));
        let config = set.config(&path, &proxy.addr());
        let before = src.log().len();
        let out = tmp.path().join(format!("out-{name}"));
        let ws = tmp.path().join(format!("ws-{name}"));
        let created = create(&config, &out, &ws, "1MiB", &src);
        set.assert_found(&created, &out);
        assert!(
            created.stderr.matches("failed; retrying").count() >= throttled.len(),
            "{name}: each 429 was waited out\n{created}"
        );
        let looked_up = src.log()[before..]
            .lines()
            .any(|l| l.contains("\"HEAD /v2/") && l.contains(".sig "));
        assert_eq!(
            looked_up,
            name == "looked-up",
            "{name}: signatures looked up one by one\n{created}"
        );
        assert!(
            proxy.served() as usize >= throttled.len() + usize::from(paged),
            "{name}: {created}"
        );
    }
}

/// What cannot be trusted is not: a tag list with a next page, one that lacks
/// the tag an image was resolved by, one exactly as long as a page, or one of
/// another repository is not used (every signature is still found, by a
/// lookup of each tag). A 404 with a registry's error document (a registry
/// with the referrers API, about one subject) does not stop the API from being
/// asked for the other manifests; a 405 does, at once.
#[test]
fn tag_lists_not_whole_and_404s_about_a_subject_are_not_trusted() {
    let src = Registry::plain().unwrap();
    let set = SignedSet::push(&PushClient::new(&src).unwrap(), &src.addr());
    let tmp = tempfile::tempdir().unwrap();
    // With the three repositories the API is asked for all eight manifests
    // searched (five, then the three referrers found); with the signed one
    // alone and a 405, only for some of the first three, searched at once.
    let all = &SET_REPOSITORIES[..];
    let signed = &SET_REPOSITORIES[..1];
    let cases = [
        (
            "paged",
            Fault::PagedTags,
            Fault::ReferrersUnknown,
            all,
            8..=8,
        ),
        (
            "cut",
            Fault::TagsCutShort,
            Fault::ReferrersUnknown,
            all,
            8..=8,
        ),
        (
            "page-long",
            Fault::TagsPageLong,
            Fault::NotAllowed,
            signed,
            1..=3,
        ),
        (
            "another",
            Fault::TagsOfAnother,
            Fault::NotAllowed,
            signed,
            1..=3,
        ),
    ];
    for (name, tags, referrers, repositories, api) in cases {
        let proxy = FaultProxy::start(&src.addr()).unwrap();
        proxy.fail_always("GET", "/tags/list", tags);
        proxy.fail_always("GET", "/referrers/", referrers);
        let path = tmp.path().join(format!("{name}.yaml"));
        let config = set.config_of(&path, &proxy.addr(), repositories);
        let before = src.log().len();
        let out = tmp.path().join(format!("out-{name}"));
        let ws = tmp.path().join(format!("ws-{name}"));
        let created = create(&config, &out, &ws, "1MiB", &src);
        set.assert_found(&created, &out);
        let log = &src.log()[before..];
        assert!(
            log.contains(&format!(
                "\"HEAD /v2/team/signed/manifests/{} ",
                cosign_tag(&set.signed.digest, "sig")
            )),
            "{name}: the tags were not asked for one by one\n{log}"
        );
        // Each repository listed once.
        let asked = proxy.served() - repositories.len() as u32;
        assert!(
            api.contains(&asked),
            "{name}: {asked} referrers API requests"
        );
    }
}

#[test]
fn signatures_are_found_by_one_tag_list_per_repository_anonymously() {
    let src = Registry::plain().unwrap();
    signatures_found_by_one_tag_list_per_repository(&src);
}

#[test]
fn signatures_are_found_by_one_tag_list_per_repository_with_htpasswd() {
    let src = Registry::tls_with_auth("lister", "l-pass").unwrap();
    let log = signatures_found_by_one_tag_list_per_repository(&src);
    assert!(
        log.contains("\"GET /v2/m/team/signed/tags/list HTTP/1.1\" 200"),
        "{log}"
    );
}

#[test]
fn signatures_are_found_by_one_tag_list_per_repository_with_bearer_tokens() {
    let src =
        Registry::with_tokens(vec![Grant::new("lister", "l-pass", "", &["pull", "push"])]).unwrap();
    let log = signatures_found_by_one_tag_list_per_repository(&src);
    assert!(
        log.contains("\"GET /v2/m/team/signed/tags/list HTTP/1.1\" 200"),
        "{log}"
    );
    let issuer = src.issuer().unwrap();
    assert!(
        issuer.asked("lister", "m/team/signed", "pull"),
        "{:?}",
        issuer.requests()
    );
}
