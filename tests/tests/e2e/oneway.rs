//! One-way transfer: signed imagesets, parity repair.

use std::path::{Path, PathBuf};
use std::process::Command;

use airlock_disconnected::ingest;
use airlock_disconnected::scan;
use airlock_disconnected::store::Store;
use airlock_imageset::read::read_head;
use airlock_imageset::signing::Signer;
use airlock_tests::bins::{self, Output, run};

use crate::util::*;

fn create_with(s: &Setup, out: &Path, ws: &str, extra: &[&str]) -> Output {
    let mut cmd = bins::connected();
    cmd.arg("create")
        .arg("--config")
        .arg(&s.config)
        .arg("--out")
        .arg(out);
    cmd.arg("--workspace").arg(s.path(ws)).args(extra);
    source_flags(&mut cmd, &s.source);
    run(&mut cmd)
}

/// A successful `create` into `out` in format version 1; the directory.
fn create_v1(s: &Setup, limit: &str) -> PathBuf {
    let out = s.path("out");
    let created = create_with(
        s,
        &out,
        "ws-c",
        &["--limit", limit, "--imageset-format", "v1"],
    );
    assert_eq!(created.code, 0, "{created}");
    out
}

fn publish_with(s: &Setup, from: &Path, ws: &str, extra: &[&str]) -> Output {
    run(publish_cmd(from, &s.dest, "m", &s.path(ws)).args(extra))
}

/// Rewrites the manifest entry of every chunk in `dir` with `edit`, keeping its size.
fn edit_manifests(dir: &Path, edit: impl Fn(&str) -> String) {
    for f in chunk_files(dir) {
        let mut data = std::fs::read(&f).unwrap();
        let head = read_head(&f).unwrap();
        let text = String::from_utf8(head.manifest_bytes.to_vec()).unwrap();
        let edited = edit(&text);
        assert_eq!(edited.len(), text.len());
        assert_ne!(edited, text, "the edit must change the manifest");
        data[512..512 + edited.len()].copy_from_slice(edited.as_bytes());
        // A forger also rewrites the manifest's checksum entry; only the signature
        // can tell.
        let sum_at = 512 + edited.len().div_ceil(512) * 512 + 512;
        let sum = airlock_oci::digest::Digest::of(edited.as_bytes());
        data[sum_at..sum_at + 64].copy_from_slice(sum.hex().as_bytes());
        std::fs::write(&f, data).unwrap();
    }
}

/// Replaces the signature entry of every chunk in `dir` with one by `signer` over
/// the (possibly edited) manifest, as a forger holding another key would.
fn resign(dir: &Path, signer: &Signer) {
    for f in chunk_files(dir) {
        let mut data = std::fs::read(&f).unwrap();
        let head = read_head(&f).unwrap();
        let m = &head.manifest;
        let comment = format!("airlock imageset {} sequence {}", m.uuid, m.sequence);
        let sig = signer.sign(&head.manifest_bytes, &comment).unwrap();
        let old = head.signature.as_ref().unwrap();
        assert_eq!(sig.len(), old.len());
        // After the manifest entry and its checksum entry, the signature's data.
        let at = 512 + head.manifest_bytes.len().div_ceil(512) * 512 + 1024 + 512;
        data[at..at + sig.len()].copy_from_slice(&sig);
        std::fs::write(&f, data).unwrap();
    }
}

#[test]
fn only_imagesets_signed_by_a_trusted_key_are_published() {
    let s = Setup::plain();
    let keys = s.path("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (a_key, a_pub, a_id) = keygen(&keys, "site-a");
    let (b_key, _, b_id) = keygen(&keys, "other");
    let trust = ["--trust", a_pub.to_str().unwrap()];

    // Signed by the trusted key: published, and minisign itself agrees.
    let signed = s.path("signed");
    let created = create_with(
        &s,
        &signed,
        "ws-a",
        &["--sign-key", a_key.to_str().unwrap()],
    );
    assert_eq!(created.code, 0, "{created}");
    let chunk = &chunk_files(&signed)[0];
    let m = s.path("m.json");
    std::fs::write(&m, &*read_head(chunk).unwrap().manifest_bytes).unwrap();
    std::fs::write(
        s.path("m.json.minisig"),
        read_head(chunk).unwrap().signature.unwrap(),
    )
    .unwrap();
    let out = Command::new("minisign")
        .arg("-V")
        .arg("-p")
        .arg(&a_pub)
        .arg("-m")
        .arg(&m)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "minisign -V: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Each forgery is refused with what signed it and what is trusted; nothing published.
    let unsigned = s.path("unsigned");
    assert_eq!(create_with(&s, &unsigned, "ws-u", &[]).code, 0);
    let other = s.path("other");
    assert_eq!(
        create_with(&s, &other, "ws-b", &["--sign-key", b_key.to_str().unwrap()]).code,
        0
    );
    let altered = s.path("altered");
    copy_dir(&signed, &altered);
    // Publishing an image under another tag than the one signed for.
    edit_manifests(&altered, |t| {
        t.replacen("\"tag\": \"1.0\"", "\"tag\": \"6.6\"", 1)
    });
    let forged = s.path("forged");
    copy_dir(&altered, &forged);
    resign(&forged, &Signer::load(&b_key, None).unwrap());
    let by_b = format!("signed by key {b_id}, which is not trusted");
    let mismatch = format!("the signature by key {a_id} does not match the manifest");
    let cases: [(&Path, Vec<&str>); 4] = [
        (&unsigned, vec!["is not signed", &a_id]),
        (&other, vec![&by_b, &a_id]),
        (&altered, vec![&mismatch]),
        (&forged, vec![&by_b]),
    ];
    for (i, (dir, wants)) in cases.iter().enumerate() {
        let refused = publish_with(&s, dir, &format!("ws-d{i}"), &trust);
        assert_eq!(refused.code, EX_DATA, "{refused}");
        for w in wants {
            assert!(refused.stderr.contains(w), "want {w:?}: {refused}");
        }
        assert!(
            catalog(&s.dest).is_empty(),
            "nothing published: {:?}",
            catalog(&s.dest)
        );
    }

    let published = publish_with(&s, &signed, "ws-ok", &trust);
    assert_eq!(published.code, 0, "{published}");
    s.assert_byte_exact("m");
}

/// Library-level ingest of the files in `dir` into a fresh store, as `publish` does.
fn ingest_dir(dir: &Path) -> Result<ingest::Ingested, String> {
    let found = scan::scan(dir).unwrap();
    let c = found.imagesets.values().next().ok_or("no imageset found")?;
    let ws = tempfile::tempdir().unwrap();
    let store = Store::open(ws.path()).unwrap();
    let counted = std::sync::atomic::AtomicU64::new(0);
    let ingested = ingest::ingest(c, &store, dir, &counted, None).map_err(|e| e.to_string())?;
    // Progress counts every byte of every chunk file, as the disk has them once
    // taken in (rebuilt ones too), each once: a failed pass is taken back.
    let on_disk: u64 = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            !name.contains("-parity") && !name.ends_with(".damaged")
        })
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(
        counted.into_inner(),
        on_disk,
        "progress counts each chunk file once"
    );
    assert_eq!(on_disk, ingest::chunk_bytes(c));
    Ok(ingested)
}

#[test]
fn parity_two_survives_every_loss_of_two_files_and_waits_at_three() {
    let s = Setup::plain();
    let out = s.path("out");
    let created = create_with(&s, &out, "ws-c", &["--limit", "150KiB", "--parity", "2"]);
    assert_eq!(created.code, 0, "{created}");
    let files = chunk_files(&out);
    let originals: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    assert!(
        files.len() >= 10,
        "K >= 8 chunks plus 2 parity files: {}",
        files.len()
    );
    assert_eq!(
        files
            .iter()
            .filter(|f| f.to_str().unwrap().contains("-parity"))
            .count(),
        2
    );

    // Every way of losing one or two files, and of one flipped byte in two files.
    let n = files.len();
    let mut cases = 0;
    for a in 0..n {
        for b in a..n {
            for corrupt in [false, true] {
                if corrupt && a == b {
                    continue;
                }
                let dir = tempfile::tempdir().unwrap();
                for (i, f) in files.iter().enumerate() {
                    let target = dir.path().join(f.file_name().unwrap());
                    if i == a || i == b {
                        if corrupt {
                            let mut bytes = originals[i].clone();
                            let at = bytes.len() - 2000;
                            bytes[at] ^= 0x20;
                            std::fs::write(&target, bytes).unwrap();
                        }
                        continue;
                    }
                    std::fs::copy(f, &target).unwrap();
                }
                let ingested = ingest_dir(dir.path())
                    .unwrap_or_else(|e| panic!("losing {a},{b} (corrupt {corrupt}): {e}"));
                assert!(ingested.stored > 0);
                for (i, f) in files.iter().enumerate() {
                    if f.to_str().unwrap().contains("-parity") {
                        continue;
                    }
                    let now = std::fs::read(dir.path().join(f.file_name().unwrap())).unwrap();
                    assert!(
                        now == originals[i],
                        "chunk {i} not rebuilt byte for byte ({a},{b},{corrupt})"
                    );
                }
                cases += 1;
            }
        }
    }
    assert_eq!(cases, n * (n + 1) / 2 + n * (n - 1) / 2);

    // Through the real command: two chunks corrupted, then a chunk and a parity file lost.
    let damaged = s.path("damaged");
    copy_dir(&out, &damaged);
    for f in &chunk_files(&damaged)[1..3] {
        let mut bytes = std::fs::read(f).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 1;
        std::fs::write(f, bytes).unwrap();
    }
    let published = publish_with(&s, &damaged, "ws-d", &[]);
    assert_eq!(published.code, 0, "{published}");
    assert!(
        published.stdout.contains("rebuilt") && published.stdout.contains("set aside"),
        "{published}"
    );
    s.assert_byte_exact("m");

    // Three files lost: the imageset waits and names what would complete it; one
    // arrives, and it completes.
    let three = s.path("three");
    copy_dir(&out, &three);
    let gone: Vec<PathBuf> = chunk_files(&three).into_iter().step_by(3).take(3).collect();
    let held = s.path("held");
    std::fs::create_dir_all(&held).unwrap();
    for g in &gone {
        std::fs::rename(g, held.join(g.file_name().unwrap())).unwrap();
    }
    let dest2 = airlock_tests::registry::Registry::plain().unwrap();
    let mut cmd = publish_cmd(&three, &dest2, "m", &s.path("ws-3"));
    let waiting = run(&mut cmd);
    assert_eq!(waiting.code, EX_INCOMPLETE, "{waiting}");
    assert!(waiting.stderr.contains("copy any 1 of"), "{waiting}");
    for g in &gone {
        assert!(
            waiting
                .stderr
                .contains(g.file_name().unwrap().to_str().unwrap()),
            "names {}: {waiting}",
            g.display()
        );
    }
    assert!(catalog(&dest2).is_empty());
    let back = &gone[1];
    std::fs::rename(held.join(back.file_name().unwrap()), back).unwrap();
    let mut cmd = publish_cmd(&three, &dest2, "m", &s.path("ws-3"));
    let completed = run(&mut cmd);
    assert_eq!(completed.code, 0, "{completed}");
    assert_byte_exact(&s.source, &dest2, "m", &s.placed);
}

#[test]
fn an_imageset_that_does_not_fit_the_disk_is_refused_before_ingest() {
    let s = Setup::plain();
    let (_, out) = s.create("1MiB");
    let mut cmd = publish_cmd(&out, &s.dest, "m", &s.path("ws-d"));
    cmd.env("AIRLOCK_TEST_FREE_SPACE", "4096");
    let refused = run(&mut cmd);
    assert_eq!(refused.code, 74, "{refused}");
    assert!(
        refused.stderr.contains("but only 4.0 KiB is free"),
        "{refused}"
    );
    assert!(catalog(&s.dest).is_empty());
    assert!(
        std::fs::read_dir(s.path("ws-d/blobs/sha256"))
            .unwrap()
            .next()
            .is_none(),
        "nothing was stored"
    );
    let published = publish_with(&s, &out, "ws-d", &[]);
    assert_eq!(published.code, 0, "{published}");
    s.assert_byte_exact("m");
}

/// Hostile input: a chunk whose blob bytes were replaced and whose every format
/// hash was recomputed to match (version 1: the chunk's payload sha256 too) is
/// still refused, by the blob's digest, and nothing is published.
#[test]
fn a_blob_forged_with_recomputed_hashes_is_refused_by_its_digest() {
    let s = Setup::plain();
    let out = create_v1(&s, "100MiB");
    let chunk = &chunk_files(&out)[0];
    let head = read_head(chunk).unwrap();
    let mut data = std::fs::read(chunk).unwrap();
    // The first blob's data: after the identity entry (1024) and the blob's header.
    let at = head.payload_offset as usize + 1024 + 512;
    data[at] ^= 0xff;
    let payload = airlock_oci::digest::Digest::of(&data[head.payload_offset as usize..]);
    let mut m = (*head.manifest).clone();
    assert_eq!(m.format, airlock_imageset::FORMAT_V1);
    m.chunks[0].sha256 = Some(payload.hex().to_string());
    let mut json = serde_json::to_vec_pretty(&m).unwrap();
    json.resize(head.manifest_bytes.len(), b' ');
    data[512..512 + json.len()].copy_from_slice(&json);
    let sum_at = 512 + json.len().div_ceil(512) * 512 + 512;
    data[sum_at..sum_at + 64]
        .copy_from_slice(airlock_oci::digest::Digest::of(&json).hex().as_bytes());
    std::fs::write(chunk, &data).unwrap();
    let refused = publish_with(&s, &out, "ws-d", &[]);
    assert_eq!(refused.code, EX_DATA, "{refused}");
    assert!(refused.stderr.contains("content was altered"), "{refused}");
    assert!(catalog(&s.dest).is_empty());
}

#[test]
fn a_run_that_rebuilt_everything_exits_zero_and_sets_the_damaged_parity_file_aside() {
    // As in acceptance: one chunk lost and a parity file damaged where its own
    // header is: in the tar header (it no longer reads as a chunk), or in the
    // manifest (it reads as a damaged one).
    let s = Setup::plain();
    let out = s.path("out");
    let created = create_with(&s, &out, "ws-c", &["--limit", "150KiB", "--parity", "2"]);
    assert_eq!(created.code, 0, "{created}");
    for (i, at) in [200, 700].into_iter().enumerate() {
        let carried = s.path(&format!("carried{i}"));
        copy_dir(&out, &carried);
        let files = chunk_files(&carried);
        let parity = files
            .iter()
            .find(|f| f.to_str().unwrap().contains("-parity"))
            .unwrap()
            .clone();
        let mut bytes = std::fs::read(&parity).unwrap();
        bytes[at] ^= 0x20;
        std::fs::write(&parity, bytes).unwrap();
        let lost = files
            .iter()
            .find(|f| !f.to_str().unwrap().contains("-parity"))
            .unwrap();
        std::fs::remove_file(lost).unwrap();

        let prefix = format!("m{i}");
        let published = run(&mut publish_cmd(
            &carried,
            &s.dest,
            &prefix,
            &s.path(&format!("ws-d{i}")),
        ));
        assert_eq!(published.code, 0, "damaged at {at}: {published}");
        assert!(
            published
                .stdout
                .contains(&format!("rebuilt {}", lost.display())),
            "{published}"
        );
        let aside = PathBuf::from(format!("{}.damaged", parity.display()));
        assert!(aside.exists() && !parity.exists(), "{published}");
        assert!(
            published
                .stdout
                .contains(&format!("set aside damaged file {}", aside.display())),
            "{published}"
        );
        assert!(!published.stdout.contains("ignored"), "{published}");
        s.assert_byte_exact(&prefix);
    }
}

/// Imagesets written as version 1 (for a site whose disconnected agent is
/// older, or in transit while it upgrades) are verified and published byte
/// for byte, split blobs included.
#[test]
fn an_imageset_of_version_1_publishes_byte_for_byte() {
    let s = Setup::plain();
    let out = create_v1(&s, "150KiB");
    let head = read_head(&chunk_files(&out)[0]).unwrap();
    assert_eq!(head.manifest.format, airlock_imageset::FORMAT_V1);
    assert!(head.manifest.blobs.iter().any(|b| b.parts.len() > 1));
    let verified = run(bins::disconnected().arg("verify").arg("--from").arg(&out));
    assert_eq!(verified.code, 0, "{verified}");
    let published = publish_with(&s, &out, "ws-d", &[]);
    assert_eq!(published.code, 0, "{published}");
    s.assert_byte_exact("m");
}

/// Verify and ingest hash each byte once: a blob split across chunks is proved
/// by its digest when its last part is read. Damage to its first part must
/// still name the file that holds that part (the one a site sets aside and asks
/// for again), not the intact file read after it, by the command and by ingest.
#[test]
fn damage_to_the_first_part_of_a_split_blob_names_the_file_that_holds_it() {
    use airlock_imageset::{BLOCK, CHUNK_ENTRY_LEN, padded};
    let s = Setup::plain();
    let out = s.path("out");
    let created = create_with(&s, &out, "ws-c", &["--limit", "150KiB"]);
    assert_eq!(created.code, 0, "{created}");
    let heads: Vec<_> = chunk_files(&out)
        .iter()
        .map(|f| read_head(f).unwrap())
        .collect();
    let m = heads[0].manifest.clone();
    let (b, blob) = m
        .blobs
        .iter()
        .enumerate()
        .find(|(_, b)| b.parts.len() > 1)
        .expect("the 300 kB base layer is split at 150 KiB");
    let (first, last) = (blob.parts[0].chunk, blob.parts.last().unwrap().chunk);
    let held = heads.iter().find(|h| h.identity.chunk == first).unwrap();
    let read_last = heads.iter().find(|h| h.identity.chunk == last).unwrap();
    // The first part's data: after the identity entry and the parts before it.
    let mut at = held.payload_offset + CHUNK_ENTRY_LEN;
    for (pb, _, part) in m.parts_in_chunk(first) {
        if pb == b {
            break;
        }
        at += BLOCK + padded(part.length);
    }
    let mut bytes = std::fs::read(&held.path).unwrap();
    bytes[(at + BLOCK + 10) as usize] ^= 0x40;
    std::fs::write(&held.path, &bytes).unwrap();
    let name = |p: &Path| p.file_name().unwrap().to_str().unwrap().to_string();
    let (damaged, intact) = (name(&held.path), name(&read_last.path));

    let verified = run(bins::disconnected().arg("verify").arg("--from").arg(&out));
    assert_eq!(verified.code, EX_DATA, "{verified}");
    let ingested = ingest_dir(&out).map(|_| ()).unwrap_err();
    let entry = blob.entry_name(0);
    for message in [&verified.stderr, &ingested] {
        assert!(
            message.contains(&format!("{damaged}: {entry} hashes to"))
                && !message.contains(&format!("{intact}:")),
            "the damaged file {damaged} is named, not {intact}: {message}"
        );
    }
}
