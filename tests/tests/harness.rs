//! The harness checked against the real tools it stands on: what it pushes, a real
//! `docker-registry` stores and `skopeo` reads back byte for byte; its TLS and
//! htpasswd setups, and its token issuer's grants, accept the right client and
//! refuse the wrong ones; a restarted
//! registry still has its content; its layers and configs are what they claim.
//! Every other suite trusts these properties, so they are tested here, once.

use std::io::Read;

use airlock_tests::bins;
use airlock_tests::images::{
    Format, Image, ImageBuilder, PushClient, digest_of, distinct_blob_bytes, index, layer,
    two_platform,
};
use airlock_tests::registry::Registry;
use airlock_tests::skopeo::{SkopeoOpts, copy_all, inspect_raw, inspect_raw_at, list_tags};
use airlock_tests::token::Grant;
use anyhow::Result;
use serde_json::Value;

const ALL_MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// What the registry serves for `repo` and `reference`, and the Content-Type it serves it with.
fn get_manifest(r: &Registry, repo: &str, reference: &str) -> Result<(Vec<u8>, String)> {
    let mut req = r
        .http_client()?
        .get(format!("{}/v2/{repo}/manifests/{reference}", r.url()))
        .header("Accept", ALL_MANIFEST_TYPES);
    if let Some((u, p)) = r.credentials() {
        req = req.basic_auth(u, Some(p));
    }
    let resp = req.send()?.error_for_status()?;
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    Ok((resp.bytes()?.to_vec(), content_type))
}

/// Asserts skopeo reads back exactly the pushed bytes, whose sha256 is the digest,
/// and that the registry kept the media type the manifest was pushed with.
fn assert_served(r: &Registry, repo: &str, reference: &str, image: &Image) -> Result<()> {
    let raw = inspect_raw_at(r, &format!("{repo}{reference}"))?;
    assert!(
        raw == image.manifest,
        "{repo}{reference}: skopeo read other bytes than were pushed:\n{}\n---\n{}",
        String::from_utf8_lossy(&raw),
        String::from_utf8_lossy(&image.manifest)
    );
    assert_eq!(digest_of(&raw), image.digest, "{repo}{reference}");
    let (bytes, content_type) = get_manifest(r, repo, &image.digest)?;
    assert_eq!(bytes, image.manifest, "{repo}@{}", image.digest);
    assert_eq!(content_type, image.media_type, "{repo}@{}", image.digest);
    Ok(())
}

#[test]
fn plain_registry_serves_every_manifest_kind_byte_for_byte() -> Result<()> {
    let r = Registry::plain()?;
    let client = PushClient::new(&r)?;
    let base = layer(1, 48 * 1024);

    let oci = ImageBuilder::new(Format::Oci)
        .with_layer(&base)
        .layer(2, 16 * 1024)
        .build();
    oci.push(&client, "harness/oci", Some("1.0"))?;
    assert_served(&r, "harness/oci", ":1.0", &oci)?;

    let docker = ImageBuilder::new(Format::Docker)
        .with_layer(&base)
        .layer(3, 16 * 1024)
        .pretty()
        .build();
    docker.push(&client, "harness/docker", Some("pretty"))?;
    assert_served(&r, "harness/docker", ":pretty", &docker)?;
    // The pretty form is what makes re-serialisation detectable: the same JSON in
    // serde's compact form has another digest.
    let text = String::from_utf8(docker.manifest.clone())?;
    assert!(
        text.contains("\n   \"schemaVersion\""),
        "3-space indentation:\n{text}"
    );
    let compact = serde_json::to_vec(&serde_json::from_slice::<Value>(&docker.manifest)?)?;
    assert_ne!(digest_of(&compact), docker.digest);

    for (format, pretty, repo) in [
        (Format::Oci, false, "harness/oci-index"),
        (Format::Docker, true, "harness/docker-list"),
    ] {
        let idx = two_platform(format, 10, 8 * 1024, pretty);
        idx.push(&client, repo, Some("multi"))?;
        assert_served(&r, repo, ":multi", &idx)?;
        let listed: Value = serde_json::from_slice(&idx.manifest)?;
        let archs: Vec<&str> = listed["manifests"]
            .as_array()
            .expect("manifests")
            .iter()
            .map(|m| m["platform"]["architecture"].as_str().expect("arch"))
            .collect();
        assert_eq!(archs, ["amd64", "arm64"]);
        for child in &idx.children {
            // Children are only reachable by digest: that is how they were pushed.
            assert_served(&r, repo, &format!("@{}", child.digest), child)?;
        }
    }

    // A manifest pushed by digest only, with no tag.
    let untagged = ImageBuilder::new(Format::Oci).layer(20, 4096).build();
    untagged.push(&client, "harness/oci", None)?;
    assert_served(
        &r,
        "harness/oci",
        &format!("@{}", untagged.digest),
        &untagged,
    )?;

    let mut tags = list_tags(&r, "harness/oci")?;
    tags.sort();
    assert_eq!(tags, ["1.0"]);
    Ok(())
}

#[test]
fn shared_layers_are_pushed_and_counted_once() -> Result<()> {
    let r = Registry::plain()?;
    let client = PushClient::new(&r)?;
    let base = layer(30, 64 * 1024);
    let a = ImageBuilder::new(Format::Oci)
        .with_layer(&base)
        .layer(31, 8 * 1024)
        .build();
    let b = ImageBuilder::new(Format::Docker)
        .with_layer(&base)
        .layer(32, 8 * 1024)
        .build();
    a.push(&client, "shared/a", Some("1"))?;
    b.push(&client, "shared/b", Some("1"))?;
    assert_served(&r, "shared/a", ":1", &a)?;
    assert_served(&r, "shared/b", ":1", &b)?;
    assert_eq!(a.layer_blobs()[0], b.layer_blobs()[0]);

    let whole = |i: &Image| -> u64 { i.all_blobs().iter().map(|b| b.bytes.len() as u64).sum() };
    assert_eq!(
        distinct_blob_bytes([&a, &b]),
        whole(&a) + whole(&b) - base.bytes.len() as u64
    );
    // An index counts its children's blobs; the same image twice counts once.
    let idx = index(Format::Oci, vec![a.clone()], false);
    assert_eq!(distinct_blob_bytes([&idx, &a]), whole(&a));
    Ok(())
}

#[test]
fn tls_registry_with_htpasswd_needs_the_ca_and_the_credentials() -> Result<()> {
    let r = Registry::tls_with_auth("alice", "correct horse")?;
    assert!(r.url().starts_with("https://"));
    let cert_dir = r.ca_cert_dir().expect("TLS registry has a CA");
    let names: Vec<_> = std::fs::read_dir(&cert_dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    assert_eq!(names, ["ca.crt"], "the cert dir holds only the CA");
    assert_eq!(
        std::fs::read_to_string(cert_dir.join("ca.crt"))?,
        r.ca_pem().expect("CA PEM")
    );

    // Anonymous requests are refused; the pusher's credentials are accepted.
    let anonymous = r.http_client()?.get(format!("{}/v2/", r.url())).send()?;
    assert_eq!(anonymous.status(), 401);
    let image = ImageBuilder::new(Format::Oci)
        .layer(40, 32 * 1024)
        .pretty()
        .build();
    image.push(&PushClient::new(&r)?, "secure/app", Some("1.0"))?;

    let reference = format!("{}/secure/app:1.0", r.addr());
    let full = SkopeoOpts::for_registry(&r);
    assert!(full.tls_verify && full.cert_dir.is_some() && full.authfile.is_some());
    assert_eq!(inspect_raw(&reference, &full)?, image.manifest);

    let no_credentials = SkopeoOpts {
        authfile: None,
        ..full.clone()
    };
    let err = inspect_raw(&reference, &no_credentials)
        .expect_err("an anonymous read of an htpasswd registry must fail");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("unauthorized") || msg.contains("authentication required"),
        "{msg}"
    );

    let untrusted = SkopeoOpts {
        cert_dir: None,
        ..full.clone()
    };
    let err = inspect_raw(&reference, &untrusted)
        .expect_err("a registry signed by an unknown CA must not be trusted");
    let msg = format!("{err:#}");
    assert!(msg.contains("certificate") || msg.contains("x509"), "{msg}");

    // skopeo copies from it (CA and credentials on the source side) to a plain
    // registry, preserving the digest.
    let plain = Registry::plain()?;
    copy_all(
        &format!("docker://{reference}"),
        &full,
        &format!("docker://{}/copied/app:1.0", plain.addr()),
        &SkopeoOpts::for_registry(&plain),
    )?;
    assert_eq!(inspect_raw_at(&plain, "copied/app:1.0")?, image.manifest);
    Ok(())
}

#[test]
fn plain_tls_registry_needs_only_the_ca() -> Result<()> {
    let r = Registry::tls()?;
    assert!(r.credentials().is_none() && r.auth_file().is_none());
    let image = two_platform(Format::Oci, 50, 4096, true);
    image.push(&PushClient::new(&r)?, "tls/multi", Some("v1"))?;
    assert_served(&r, "tls/multi", ":v1", &image)?;
    // Not verifying the certificate works too (the `--tls-verify=false` case).
    let insecure = SkopeoOpts::default();
    assert_eq!(
        inspect_raw(&format!("{}/tls/multi:v1", r.addr()), &insecure)?,
        image.manifest
    );
    Ok(())
}

#[test]
fn a_restarted_registry_keeps_its_content_and_port() -> Result<()> {
    let mut r = Registry::tls_with_auth("bob", "pw")?;
    let client = PushClient::new(&r)?;
    let before = ImageBuilder::new(Format::Docker)
        .layer(60, 16 * 1024)
        .build();
    before.push(&client, "restart/app", Some("1"))?;
    let addr = r.addr();

    r.stop();
    assert!(!r.is_running());
    assert!(
        r.http_client()?
            .get(format!("{}/v2/", r.url()))
            .send()
            .is_err(),
        "a stopped registry does not answer"
    );
    assert!(inspect_raw_at(&r, "restart/app:1").is_err());

    r.start_again()?;
    assert!(r.is_running());
    assert_eq!(r.addr(), addr);
    assert_served(&r, "restart/app", ":1", &before)?;
    // Still writable, with the same certificate and credentials.
    let after = ImageBuilder::new(Format::Oci).layer(61, 16 * 1024).build();
    after.push(&PushClient::new(&r)?, "restart/app", Some("2"))?;
    let mut tags = list_tags(&r, "restart/app")?;
    tags.sort();
    assert_eq!(tags, ["1", "2"]);
    let log = r.log();
    assert_eq!(
        log.matches("listening on").count(),
        2,
        "one start, one restart:\n{log}"
    );
    Ok(())
}

#[test]
fn registries_started_together_are_separate() -> Result<()> {
    let registries: Vec<Registry> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(Registry::plain)).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect::<Result<_>>()
    })?;
    let mut ports: Vec<u16> = registries.iter().map(Registry::port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), registries.len());
    let image = ImageBuilder::new(Format::Oci).layer(70, 1024).build();
    image.push(&PushClient::new(&registries[0])?, "only/here", Some("x"))?;
    assert_served(&registries[0], "only/here", ":x", &image)?;
    for other in &registries[1..] {
        assert!(inspect_raw_at(other, "only/here:x").is_err());
    }
    Ok(())
}

#[test]
fn layers_are_gzip_tars_and_configs_name_their_diff_ids() -> Result<()> {
    let size = 100 * 1024;
    let l = layer(80, size);
    assert_eq!(l, layer(80, size), "a seed makes the same layer");
    assert_ne!(l.digest, layer(81, size).digest);
    assert_eq!(l.digest, digest_of(&l.bytes));
    // Random content does not compress: the size knob is the size on the wire.
    assert!(l.bytes.len() >= size, "{} < {size}", l.bytes.len());

    let mut tar_bytes = Vec::new();
    flate2::read::GzDecoder::new(l.bytes.as_slice()).read_to_end(&mut tar_bytes)?;
    assert_eq!(Some(digest_of(&tar_bytes)), l.diff_id);
    let mut archive = tar::Archive::new(tar_bytes.as_slice());
    let mut entries = archive.entries()?;
    let mut entry = entries.next().expect("one entry")?;
    assert_eq!(entry.path()?.to_string_lossy(), "data/file-80.bin");
    let mut content = Vec::new();
    entry.read_to_end(&mut content)?;
    assert_eq!(content.len(), size);
    drop(entry);
    assert!(entries.next().is_none());

    for (format, manifest_type, config_type, layer_type) in [
        (
            Format::Oci,
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ),
        (
            Format::Docker,
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.container.image.v1+json",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        ),
    ] {
        let image = ImageBuilder::new(format)
            .arch("arm64")
            .with_layer(&l)
            .layer(82, 2048)
            .build();
        assert_eq!(image.media_type, manifest_type);
        assert_eq!(image.digest, digest_of(&image.manifest));
        let m: Value = serde_json::from_slice(&image.manifest)?;
        assert_eq!(m["schemaVersion"], 2);
        assert_eq!(m["mediaType"], manifest_type);
        let config = image.config_blob().expect("config");
        assert_eq!(m["config"]["mediaType"], config_type);
        assert_eq!(m["config"]["digest"], config.digest.as_str());
        assert_eq!(m["config"]["size"], config.bytes.len());
        let descriptors = m["layers"].as_array().expect("layers");
        assert_eq!(descriptors.len(), image.layer_blobs().len());
        for (d, blob) in descriptors.iter().zip(image.layer_blobs()) {
            assert_eq!(d["mediaType"], layer_type);
            assert_eq!(d["digest"], blob.digest.as_str());
            assert_eq!(d["size"], blob.bytes.len());
        }

        let c: Value = serde_json::from_slice(&config.bytes)?;
        assert_eq!(c["architecture"], "arm64");
        assert_eq!(c["os"], "linux");
        assert_eq!(c["rootfs"]["type"], "layers");
        let diff_ids: Vec<String> = image
            .layer_blobs()
            .iter()
            .map(|b| {
                let mut raw = Vec::new();
                flate2::read::GzDecoder::new(b.bytes.as_slice())
                    .read_to_end(&mut raw)
                    .expect("gzip");
                digest_of(&raw)
            })
            .collect();
        assert_eq!(c["rootfs"]["diff_ids"], serde_json::json!(diff_ids));
    }
    Ok(())
}

#[test]
fn commands_run_with_an_isolated_home_and_no_credentials() -> Result<()> {
    let probe = || -> Result<Vec<String>> {
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c").arg(
            "printf '%s\\n' \"$HOME\" \"$XDG_RUNTIME_DIR\" \"$REGISTRY_AUTH_FILE\" \"${DOCKER_CONFIG-unset}\"",
        );
        bins::isolate_env(&mut cmd);
        let out = bins::run_ok(&mut cmd);
        Ok(out.stdout.lines().map(str::to_string).collect())
    };
    let first = probe()?;
    let second = probe()?;
    let scratch = bins::scratch_dir();
    assert!(
        std::path::Path::new(&first[0]).starts_with(scratch),
        "{first:?}"
    );
    assert_ne!(first[0], second[0], "each command gets its own home");
    assert!(std::path::Path::new(&first[1]).is_dir(), "{first:?}");
    assert!(!std::path::Path::new(&first[2]).exists(), "{first:?}");
    assert_eq!(first[3], "unset");
    Ok(())
}

#[test]
fn token_registry_grants_by_user_and_namespace_as_skopeo_sees_it() -> Result<()> {
    let r = Registry::with_tokens(vec![
        Grant::new("writer", "w-pass", "", &["pull", "push", "delete"]),
        Grant::new("reader", "r-pass", "team/", &["pull"]),
    ])?;
    // Anonymous requests get the challenge that sends clients to the issuer.
    let anonymous = r.http_client()?.get(format!("{}/v2/", r.url())).send()?;
    assert_eq!(anonymous.status(), 401);
    let challenge = anonymous.headers()["www-authenticate"]
        .to_str()?
        .to_string();
    let issuer = r.issuer().expect("a token registry has an issuer");
    assert!(
        challenge.starts_with(&format!("Bearer realm=\"{}\"", issuer.realm())),
        "{challenge}"
    );

    let plain = Registry::plain()?;
    let image = ImageBuilder::new(Format::Oci).layer(41, 16 * 1024).build();
    image.push(&PushClient::new(&plain)?, "app", Some("1"))?;
    let writer = SkopeoOpts::for_registry(&r);
    for repo in ["team/app", "ops/app"] {
        copy_all(
            &format!("docker://{}/app:1", plain.addr()),
            &SkopeoOpts::for_registry(&plain),
            &format!("docker://{}/{repo}:1", r.addr()),
            &writer,
        )?;
        assert_eq!(
            inspect_raw(&format!("{}/{repo}:1", r.addr()), &writer)?,
            image.manifest
        );
    }
    assert!(
        issuer.asked("writer", "team/app", "push"),
        "{:?}",
        issuer.requests()
    );

    // The reader may pull under team/ only; a wrong password gets no token.
    let dir = tempfile::tempdir()?;
    let reader = SkopeoOpts {
        authfile: Some(r.auth_file_for(dir.path(), "reader", "r-pass")?),
        ..writer.clone()
    };
    assert_eq!(
        inspect_raw(&format!("{}/team/app:1", r.addr()), &reader)?,
        image.manifest
    );
    assert!(inspect_raw(&format!("{}/ops/app:1", r.addr()), &reader).is_err());
    let wrong = SkopeoOpts {
        authfile: Some(r.auth_file_for(dir.path(), "reader", "nope")?),
        ..writer
    };
    assert!(inspect_raw(&format!("{}/team/app:1", r.addr()), &wrong).is_err());
    Ok(())
}

#[test]
fn a_registry_reports_the_cpu_its_process_spent_and_none_once_stopped() -> Result<()> {
    let (mut busy, idle) = (Registry::plain()?, Registry::plain()?);
    // Built before the first readings: only the registries' work falls
    // between them.
    let big = ImageBuilder::new(Format::Oci).layer(40, 64 << 20).build();
    let client = PushClient::new(&busy)?;
    let before = (busy.cpu_seconds()?, idle.cpu_seconds()?);
    let started = std::time::Instant::now();
    // 64 MiB the registry must receive, hash and write: a tenth of a second
    // of its CPU or more, against a tick of 10 ms.
    big.push(&client, "cpu/big", Some("1"))?;
    let wall = started.elapsed().as_secs_f64();
    let spent = (
        busy.cpu_seconds()? - before.0,
        idle.cpu_seconds()? - before.1,
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    // Each registry's own figure: the one that took the upload spent far more
    // than the one that did nothing, and no more than its cores allow.
    assert!(
        spent.0 >= spent.1 + 0.05 && spent.0 <= wall * cores + 0.02,
        "CPU over a 64 MiB upload of {wall} s on {cores} cores: {} s by the registry \
         that took it, {} s by an idle one",
        spent.0,
        spent.1
    );
    busy.stop();
    assert!(
        busy.cpu_seconds().is_err(),
        "a stopped registry has no CPU to report"
    );
    Ok(())
}
