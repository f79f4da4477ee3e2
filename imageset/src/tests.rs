//! Round trips through the writer and reader, and the reader's refusals.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::layout::LayoutError;
use super::read::{ChunkError, ChunkHead, DigestCheck, Discard, PartSink, read_head, verify};
use super::write::{Options, WriteError, entry_header, mtime_of, prepare};
use super::*;
use crate::signing::{self, Signer, TrustStore};

/// Deterministic pseudo-random bytes (xorshift), so tests need no RNG crate.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Written {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    manifest: ImagesetManifest,
    paths: Vec<PathBuf>,
    contents: Vec<Vec<u8>>,
}

async fn write_imageset(sizes: &[usize], limit: u64) -> Written {
    write_imageset_with(sizes, limit, None, 0, Version::default()).await
}

async fn write_imageset_with(
    sizes: &[usize],
    limit: u64,
    signer: Option<&Signer>,
    parity: u32,
    version: Version,
) -> Written {
    let dir = tempfile::tempdir().unwrap();
    let contents: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| bytes(i as u64 + 1, n))
        .collect();
    let blobs = contents
        .iter()
        .map(|c| BlobRecord {
            digest: Digest::of(c),
            size: c.len() as u64,
            media_type: None,
            repository: "example.com/ns/app".into(),
            parts: Vec::new(),
        })
        .collect();
    let skeleton = ImagesetManifest {
        format: FORMAT.into(),
        uuid: Uuid::from_u128(0x3f2a9c1e_0000_4000_8000_000000000001),
        sequence: 7,
        full: false,
        created: "2026-11-24T10:00:00Z".into(),
        limit,
        chunks: Vec::new(),
        parity: Vec::new(),
        images: Vec::new(),
        blobs,
        releases: Vec::new(),
        deletes: Vec::new(),
    };
    let carry: Vec<usize> = (0..sizes.len()).collect();
    let options = Options {
        signer,
        parity,
        version,
    };
    let prepared = prepare(dir.path(), skeleton, &carry, &options).unwrap();
    // Write the blobs in reverse order and in odd-sized pieces: the writer must not
    // depend on either.
    for (i, c) in contents.iter().enumerate().rev() {
        let mut w = prepared.blob_writer(i);
        for piece in c.chunks(7919) {
            w.write(piece.to_vec().into()).await.unwrap();
        }
        w.finish().await.unwrap();
    }
    let (manifest, paths) = prepared.finish(signer).await.unwrap();
    Written {
        dir: dir.path().to_path_buf(),
        _dir: dir,
        manifest,
        paths,
        contents,
    }
}

#[derive(Default)]
struct Collect {
    blobs: HashMap<usize, Vec<u8>>,
}

impl PartSink for Collect {
    fn part(
        &mut self,
        b: usize,
        _: &BlobRecord,
        _: usize,
        record: &PartRecord,
        data: &mut dyn Read,
    ) -> std::io::Result<()> {
        let buf = self.blobs.entry(b).or_default();
        assert_eq!(buf.len() as u64, record.offset, "parts arrive in order");
        data.read_to_end(buf)?;
        Ok(())
    }
}

fn reassemble(w: &Written) -> Collect {
    let mut sink = Collect::default();
    let mut heads: Vec<ChunkHead> = w.paths.iter().map(|p| read_head(p).unwrap()).collect();
    heads.sort_by_key(|h| h.identity.chunk);
    for h in &heads {
        verify(h, &mut sink).unwrap();
    }
    sink
}

#[tokio::test]
async fn round_trip_with_split_blobs_stays_within_limit() {
    let limit = 256 << 10;
    let w = write_imageset(&[0, 10, 100_000, 700_000, 3000, 512], limit).await;
    assert!(w.paths.len() >= 4, "{} chunks", w.paths.len());
    for (p, record) in w.paths.iter().zip(&w.manifest.chunks) {
        let len = std::fs::metadata(p).unwrap().len();
        assert!(len <= limit, "{} is {len} bytes", p.display());
        assert_eq!(len, record.size);
        assert_eq!(p.file_name().unwrap().to_str().unwrap(), record.name);
    }
    let sink = reassemble(&w);
    for (i, c) in w.contents.iter().enumerate() {
        assert_eq!(
            sink.blobs.get(&i).map(Vec::as_slice).unwrap_or(&[]),
            c.as_slice(),
            "blob {i}"
        );
    }
    // No temporary files remain.
    let names: Vec<String> = std::fs::read_dir(&w.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".part")), "{names:?}");
}

#[tokio::test]
async fn chunks_are_standard_tar_archives() {
    let w = write_imageset(&[5000, 200_000], 128 << 10).await;
    let mut entries = Vec::new();
    for p in &w.paths {
        let mut a = tar::Archive::new(std::fs::File::open(p).unwrap());
        for e in a.entries().unwrap() {
            let e = e.unwrap();
            entries.push(e.path().unwrap().to_string_lossy().into_owned());
        }
    }
    assert_eq!(
        entries.iter().filter(|e| *e == MANIFEST_ENTRY).count(),
        w.paths.len()
    );
    assert_eq!(
        entries.iter().filter(|e| *e == CHUNK_ENTRY).count(),
        w.paths.len()
    );
    let d = Digest::of(&w.contents[1]);
    assert!(
        entries.contains(&format!("blobs/sha256/{}.2", d.hex())),
        "{entries:?}"
    );
    // Every chunk carries the same manifest bytes.
    let heads: Vec<ChunkHead> = w.paths.iter().map(|p| read_head(p).unwrap()).collect();
    assert!(
        heads
            .iter()
            .all(|h| h.manifest_digest == heads[0].manifest_digest)
    );
    assert_eq!(*heads[0].manifest, w.manifest);
}

/// Content that needs more chunk files than an imageset may have is refused
/// when it is laid out, with a limit that fits it, before any file is made:
/// the disconnected side would refuse it only after the whole transfer.
#[test]
fn an_imageset_needing_more_chunks_than_the_format_allows_is_refused_at_create() {
    let dir = tempfile::tempdir().unwrap();
    let limit = 1u64 << 20;
    let skeleton = ImagesetManifest {
        format: FORMAT.into(),
        uuid: Uuid::from_u128(1),
        sequence: 1,
        full: true,
        created: "2026-12-07T10:00:00Z".into(),
        limit,
        chunks: Vec::new(),
        parity: Vec::new(),
        images: Vec::new(),
        // Declared only: nothing is downloaded before the layout.
        blobs: vec![BlobRecord {
            digest: Digest::of(b"large"),
            size: 110 << 30,
            media_type: None,
            repository: "r/x".into(),
            parts: Vec::new(),
        }],
        releases: Vec::new(),
        deletes: Vec::new(),
    };
    let err = prepare(dir.path(), skeleton.clone(), &[0], &Options::default()).unwrap_err();
    let text = err.to_string();
    let WriteError::Layout(LayoutError::TooManyChunks {
        chunks, minimum, ..
    }) = err
    else {
        panic!("expected too many chunks, got {text}");
    };
    assert!(chunks > crate::validate::MAX_CHUNKS, "{chunks}");
    assert!(
        text.contains(&format!("{chunks} chunk files"))
            && text.contains(&format!("a limit of at least {minimum} bytes")),
        "{text}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no file made"
    );
    let mut fits = skeleton;
    fits.limit = minimum;
    let prepared = prepare(dir.path(), fits, &[0], &Options::default())
        .expect("the limit the error names fits the content");
    assert!(prepared.manifest().chunks.len() <= crate::validate::MAX_CHUNKS);
}

#[tokio::test]
async fn writer_refuses_content_that_does_not_match_its_digest() {
    let dir = tempfile::tempdir().unwrap();
    let good = bytes(1, 1000);
    let skeleton = ImagesetManifest {
        format: FORMAT.into(),
        uuid: Uuid::from_u128(1),
        sequence: 1,
        full: true,
        created: "2026-11-24T10:00:00Z".into(),
        limit: 1 << 20,
        chunks: Vec::new(),
        parity: Vec::new(),
        images: Vec::new(),
        blobs: vec![BlobRecord {
            digest: Digest::of(&good),
            size: 1000,
            media_type: None,
            repository: "r/x".into(),
            parts: Vec::new(),
        }],
        releases: Vec::new(),
        deletes: Vec::new(),
    };
    let prepared = prepare(dir.path(), skeleton, &[0], &Options::default()).unwrap();
    let mut w = prepared.blob_writer(0);
    w.write(bytes(2, 1000).into()).await.unwrap();
    let err = w.finish().await.unwrap_err().to_string();
    assert!(err.contains("content hashes to"), "{err}");
    let mut w = prepared.blob_writer(0);
    assert!(
        w.write(bytes(1, 1001).into()).await.is_err(),
        "more bytes than declared"
    );
    // A writer whose source checks the digest still checks the size.
    let mut w = prepared.blob_writer(0).checked_by_source();
    assert!(
        w.write(bytes(1, 1001).into()).await.is_err(),
        "more bytes than declared, digest checked by the source"
    );
    let mut w = prepared.blob_writer(0).checked_by_source();
    w.write(bytes(1, 999).into()).await.unwrap();
    let err = w.finish().await.unwrap_err().to_string();
    assert!(err.contains("999 bytes"), "{err}");
    drop(prepared);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "aborted files are removed"
    );
}

fn corrupt_message(path: &Path) -> String {
    match read_head(path) {
        Err(e) => e.to_string(),
        Ok(h) => verify(&h, &mut Discard)
            .expect_err("chunk must be refused")
            .to_string(),
    }
}

fn flip(path: &Path, offset: u64) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&[b[0] ^ 0x40]).unwrap();
}

#[tokio::test]
async fn any_flipped_payload_byte_is_detected() {
    let w = write_imageset(&[3000, 40_000], 1 << 20).await;
    let p = &w.paths[0];
    let head = read_head(p).unwrap();
    let len = std::fs::metadata(p).unwrap().len();
    // Part header, part data, padding, trailer: every region of the payload.
    for off in [
        head.payload_offset + 600,
        head.payload_offset + 1024 + 100,
        head.payload_offset + 1024 + 512 + 2999 + 1,
        len - 1,
    ] {
        let copy = w.dir.join("copy.tar");
        std::fs::copy(p, &copy).unwrap();
        flip(&copy, off);
        let msg = corrupt_message(&copy);
        assert!(msg.contains("copy.tar"), "{msg}");
        assert!(
            msg.contains("damaged in transfer")
                || msg.contains("is not zeros")
                || msg.contains("expected entry")
                || msg.contains("declares")
                || msg.contains("identity entry is not valid"),
            "offset {off}: {msg}"
        );
    }
}

#[tokio::test]
async fn truncated_and_extended_files_are_refused() {
    let w = write_imageset(&[3000], 1 << 20).await;
    let p = &w.paths[0];
    let data = std::fs::read(p).unwrap();
    let cut = w.dir.join("cut.tar");
    for n in [0usize, 100, 512, 4000, data.len() - 1] {
        std::fs::write(&cut, &data[..n]).unwrap();
        let msg = corrupt_message(&cut);
        assert!(
            msg.contains("truncated")
                || msg.contains("shorter than")
                || msg.contains("not an Airlock"),
            "{n}: {msg}"
        );
    }
    let mut long = data.clone();
    long.extend_from_slice(&[0u8; 512]);
    std::fs::write(&cut, &long).unwrap();
    assert!(corrupt_message(&cut).contains("too long"));
}

/// Builds a chunk whose first part entry is replaced by `header` (and the payload
/// hash fixed up, as a forger would), to check that the reader looks at headers.
fn forge_part_header(w: &Written, make: impl Fn(&mut tar::Header)) -> PathBuf {
    let p = &w.paths[0];
    let mut data = std::fs::read(p).unwrap();
    let head = read_head(p).unwrap();
    let at = (head.payload_offset + CHUNK_ENTRY_LEN) as usize;
    let mut h = tar::Header::new_gnu();
    h.as_mut_bytes().copy_from_slice(&data[at..at + 512]);
    make(&mut h);
    h.set_cksum();
    data[at..at + 512].copy_from_slice(h.as_bytes());
    let forged = w.dir.join("forged.tar");
    std::fs::write(&forged, &data).unwrap();
    forged
}

#[tokio::test]
async fn hostile_entries_are_refused_by_name() {
    let w = write_imageset(&[3000], 1 << 20).await;
    // The tar crate refuses to write such names, so they go into the raw name field.
    fn raw_name(h: &mut tar::Header, name: &str) {
        let field = &mut h.as_mut_bytes()[..100];
        field.fill(0);
        field[..name.len()].copy_from_slice(name.as_bytes());
    }
    type Forge = Box<dyn Fn(&mut tar::Header)>;
    let cases: Vec<(Forge, &str)> = vec![
        (
            Box::new(|h| raw_name(h, "../../etc/passwd")),
            "found regular file \"../../etc/passwd\"",
        ),
        (
            Box::new(|h| raw_name(h, "/etc/passwd")),
            "found regular file \"/etc/passwd\"",
        ),
        (
            Box::new(|h| h.set_entry_type(tar::EntryType::Symlink)),
            "is a symbolic link",
        ),
        (
            Box::new(|h| h.set_entry_type(tar::EntryType::Link)),
            "is a hard link",
        ),
        (
            Box::new(|h| h.set_entry_type(tar::EntryType::Char)),
            "is a device file",
        ),
        (
            Box::new(|h| h.set_size(1 << 40)),
            "declares 1099511627776 bytes",
        ),
        (Box::new(|h| h.set_uid(1000)), "differs from the format's"),
    ];
    for (make, want) in cases {
        let forged = forge_part_header(&w, make);
        let msg = corrupt_message(&forged);
        assert!(msg.contains(want), "want {want:?} in {msg:?}");
    }
}

#[tokio::test]
async fn duplicate_entry_is_refused() {
    let w = write_imageset(&[600, 600], 1 << 20).await;
    let p = &w.paths[0];
    let mut data = std::fs::read(p).unwrap();
    let head = read_head(p).unwrap();
    // Copy the first part entry (header and one... two data blocks) over the second.
    let first = (head.payload_offset + CHUNK_ENTRY_LEN) as usize;
    let entry_len = 512 + 1024;
    let copy = data[first..first + entry_len].to_vec();
    data[first + entry_len..first + 2 * entry_len].copy_from_slice(&copy);
    let dup = w.dir.join("dup.tar");
    std::fs::write(&dup, &data).unwrap();
    let msg = corrupt_message(&dup);
    assert!(msg.contains("expected entry"), "{msg}");
}

#[tokio::test]
async fn huge_or_foreign_first_entries_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let huge = dir.path().join("huge.tar");
    let mut data = entry_header(MANIFEST_ENTRY, MAX_MANIFEST_BYTES + 1, 0).to_vec();
    data.resize(4096, 0);
    std::fs::write(&huge, &data).unwrap();
    assert!(
        corrupt_message(&huge).contains("more than the"),
        "bounded manifest size"
    );

    let other = dir.path().join("photo.tar");
    let mut data = entry_header("holiday.jpg", 3, 0).to_vec();
    data.resize(2048, 0);
    std::fs::write(&other, &data).unwrap();
    let msg = corrupt_message(&other);
    assert!(
        msg.contains("not an Airlock imageset chunk") && msg.contains("holiday.jpg"),
        "{msg}"
    );

    let text = dir.path().join("notes.txt");
    std::fs::write(&text, vec![b'a'; 2048]).unwrap();
    assert!(corrupt_message(&text).contains("not an Airlock imageset chunk"));

    let bad_json = dir.path().join("bad.tar");
    let mut data = entry_header(MANIFEST_ENTRY, 5, 0).to_vec();
    data.extend_from_slice(b"{nope");
    data.resize(4096, 0);
    std::fs::write(&bad_json, &data).unwrap();
    let msg = corrupt_message(&bad_json);
    assert!(msg.contains("does not match its sha256 entry"), "{msg}");
}

#[tokio::test]
async fn chunk_from_another_imageset_cannot_pose_as_this_one() {
    let w = write_imageset(&[3000], 1 << 20).await;
    let p = &w.paths[0];
    let mut data = std::fs::read(p).unwrap();
    let head = read_head(p).unwrap();
    let at = (head.payload_offset + 512) as usize;
    let text = String::from_utf8(
        data[at..at + 512]
            .iter()
            .copied()
            .filter(|&b| b != 0)
            .collect(),
    )
    .unwrap();
    let forged = text.replace("\"sequence\":7", "\"sequence\":8");
    data[at..at + forged.len()].copy_from_slice(forged.as_bytes());
    let f = w.dir.join("other.tar");
    std::fs::write(&f, &data).unwrap();
    assert!(
        corrupt_message(&f).contains("belongs to imageset"),
        "{}",
        corrupt_message(&f)
    );
    let _ = mtime_of("x");
    assert!(matches!(read_head(&f), Err(ChunkError::Corrupt { .. })));
}

#[tokio::test]
async fn a_later_format_version_is_refused_as_such_not_by_its_new_fields() {
    let w = write_imageset(&[3000], 1 << 20).await;
    let p = &w.paths[0];
    let head = read_head(p).unwrap();
    let mut later: serde_json::Value = serde_json::from_slice(&head.manifest_bytes).unwrap();
    later["format"] = "airlock.imageset/v3".into();
    later["chunkTree"] = serde_json::json!({ "root": "x" });
    let json = serde_json::to_vec_pretty(&later).unwrap();
    let mut data = std::fs::read(p).unwrap();
    rewrite_manifest_json(&mut data, &head, json);
    std::fs::write(p, &data).unwrap();
    let msg = corrupt_message(p);
    assert!(
        msg.contains("format: \"airlock.imageset/v3\" is not supported; this build reads")
            && !msg.contains("chunkTree"),
        "{msg}"
    );
}

#[tokio::test]
async fn forged_manifest_that_disagrees_with_itself_is_refused() {
    let w = write_imageset(&[3000, 5000], 1 << 20).await;
    let p = &w.paths[0];
    let original = std::fs::read(p).unwrap();
    let head = read_head(p).unwrap();
    type Forge = Box<dyn Fn(&mut ImagesetManifest)>;
    let forgeries: Vec<(Forge, &str)> = vec![
        (
            Box::new(|m| m.blobs[0].parts[0].length = u64::MAX - 10),
            "blobs[0].parts: the parts of",
        ),
        (
            Box::new(|m| m.blobs[1].parts[0].offset = 7),
            "blobs[1].parts[0]: chunk 1 offset 7; expected offset 0",
        ),
        (Box::new(|m| m.blobs[1].size += 1), "add up to"),
        (Box::new(|m| m.chunks[0].size += 512), "chunks[0].size: "),
        (
            Box::new(|m| m.limit = 10),
            "more than the imageset's limit of 10",
        ),
        (
            Box::new(|m| m.blobs[0].parts[0].chunk = 9),
            "blobs[0].parts[0]: chunk 9 offset 0; expected offset 0 in a chunk from 1 to 1",
        ),
        (
            Box::new(|m| m.chunks[0].name = "../../x.tar".into()),
            "chunks[0].name: \"../../x.tar\"; expected \"airlock-",
        ),
        (
            Box::new(|m| m.blobs[1].repository = "Example.com/UPPER".into()),
            "blobs[1].repository: invalid image reference \"Example.com/UPPER\"",
        ),
    ];
    for (forge, want) in forgeries {
        let mut m = (*head.manifest).clone();
        forge(&mut m);
        let mut json = serde_json::to_vec_pretty(&m).unwrap();
        assert!(json.len() <= head.manifest_bytes.len());
        json.resize(head.manifest_bytes.len(), b' ');
        let mut data = original.clone();
        data[512..512 + json.len()].copy_from_slice(&json);
        // A forger also rewrites the manifest's checksum entry.
        let sum_at = 512 + json.len().div_ceil(512) * 512 + 512;
        data[sum_at..sum_at + 64].copy_from_slice(Digest::of(&json).hex().as_bytes());
        let forged = w.dir.join("forged-manifest.tar");
        std::fs::write(&forged, &data).unwrap();
        let msg = corrupt_message(&forged);
        assert!(
            msg.contains("the imageset manifest is not valid: ") && msg.contains(want),
            "want {want:?}: {msg}"
        );
    }
}

#[tokio::test]
async fn signed_imageset_carries_a_verifiable_signature_in_every_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let (sk, pk, id) = signing::generate(&dir.path().join("k"), None).unwrap();
    let signer = Signer::load(&sk, None).unwrap();
    let w = write_imageset_with(
        &[3000, 200_000],
        64 << 10,
        Some(&signer),
        0,
        Version::default(),
    )
    .await;
    let trust = TrustStore::load(&[pk]).unwrap();
    for p in &w.paths {
        let head = read_head(p).unwrap();
        assert_eq!(
            trust.verify(&head.manifest_bytes, head.signature.as_deref()),
            Ok(id)
        );
        verify(&head, &mut Discard).unwrap();
    }
    // Standard tar still lists it, right after the manifest.
    let mut a = tar::Archive::new(std::fs::File::open(&w.paths[0]).unwrap());
    let names: Vec<String> = a
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        &names[..4],
        [
            MANIFEST_ENTRY,
            MANIFEST_SUM_ENTRY,
            SIGNATURE_ENTRY,
            CHUNK_ENTRY
        ]
    );
}

/// Payload bytes of every chunk file, to compare rebuilt files with.
fn originals(w: &Written) -> Vec<Vec<u8>> {
    w.paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// Repair writes only under the names Airlock derives, inside its directory,
/// and replaces nothing there. Handed a manifest whose chunk names are paths
/// (validation refuses those before repair runs; this is the second line), it
/// writes nothing: what it rebuilds is not a chunk of that manifest.
#[tokio::test]
async fn parity_repair_writes_only_derived_names_and_replaces_nothing() {
    let w = write_imageset_with(&[100_000, 300_000], 64 << 10, None, 1, Version::V2).await;
    let k = w.manifest.chunks.len();
    let original = originals(&w);
    let head = read_head(&w.paths[0]).unwrap();
    let metadata = original[0][..head.payload_offset as usize].to_vec();
    let mut hostile = w.manifest.clone();
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("drop");
    std::fs::create_dir_all(&out).unwrap();
    hostile.chunks[0].name = "../escaped.tar".into();
    hostile.chunks[1].name = root.path().join("absolute.tar").display().to_string();
    // A file already under the derived name of chunk 1 (a chunk a file manager renamed).
    let derived = super::parity::rebuilt_name(&hostile, 1);
    std::fs::write(out.join(&derived), b"someone else's").unwrap();
    for lost in [0, 1] {
        let data: Vec<Option<PathBuf>> = (0..k)
            .map(|i| (i != lost).then(|| w.paths[i].clone()))
            .collect();
        let parity = vec![Some(w.paths[k].clone())];
        let repair =
            |m| super::parity::repair(m, head.payload_offset, &metadata, &data, &parity, &out);
        let refused = repair(&hostile).unwrap_err();
        assert!(refused.contains("of another imageset"), "{refused}");
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1 + lost);
        let rebuilt = repair(&w.manifest).unwrap();
        assert_eq!(rebuilt.len(), 1);
        assert_eq!(rebuilt[0].parent(), Some(out.as_path()));
        assert_eq!(std::fs::read(&rebuilt[0]).unwrap(), original[lost]);
    }
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let stem = derived.strip_suffix(".tar").unwrap();
    let mut want = vec![
        super::parity::rebuilt_name(&hostile, 0),
        derived.clone(),
        format!("{stem}-rebuilt1.tar"),
    ];
    want.sort();
    assert_eq!(names, want);
    assert_eq!(
        std::fs::read(out.join(&derived)).unwrap(),
        b"someone else's"
    );
    let beside: Vec<_> = std::fs::read_dir(root.path()).unwrap().collect();
    assert_eq!(beside.len(), 1, "only the drop folder in its parent");
}

#[tokio::test]
async fn parity_rebuilds_any_two_lost_chunks_byte_for_byte() {
    for version in [Version::V1, Version::V2] {
        parity_rebuilds_any_two_lost_chunks(version).await;
    }
}

async fn parity_rebuilds_any_two_lost_chunks(version: Version) {
    let w = write_imageset_with(
        &[100_000, 300_000, 5000, 250_000, 1, 512],
        64 << 10,
        None,
        2,
        version,
    )
    .await;
    assert_eq!(w.manifest.version(), version);
    let k = w.manifest.chunks.len();
    assert!(k >= 8, "{k} chunks");
    assert_eq!(w.manifest.parity.len(), 2);
    assert_eq!(w.paths.len(), k + 2);
    for p in &w.paths {
        assert!(
            std::fs::metadata(p).unwrap().len() <= w.manifest.limit,
            "parity files fit the limit too"
        );
        verify(&read_head(p).unwrap(), &mut Discard).unwrap();
    }
    let original = originals(&w);
    let head = read_head(&w.paths[0]).unwrap();
    let metadata = original[0][..head.payload_offset as usize].to_vec();
    let repair = |data: &[Option<PathBuf>], parity: &[Option<PathBuf>], out: &Path| {
        super::parity::repair(
            &w.manifest,
            head.payload_offset,
            &metadata,
            data,
            parity,
            out,
        )
    };
    let total = k + 2;
    for a in 0..total {
        for b in a..total {
            let lost = |i: usize| i == a || i == b;
            let data: Vec<Option<PathBuf>> = (0..k)
                .map(|i| (!lost(i)).then(|| w.paths[i].clone()))
                .collect();
            let parity: Vec<Option<PathBuf>> = (0..2)
                .map(|j| (!lost(k + j)).then(|| w.paths[k + j].clone()))
                .collect();
            let out = tempfile::tempdir().unwrap();
            let rebuilt = repair(&data, &parity, out.path()).unwrap();
            for r in rebuilt {
                let name = r.file_name().unwrap().to_str().unwrap().to_string();
                let i = w
                    .manifest
                    .chunks
                    .iter()
                    .position(|c| c.name == name)
                    .unwrap();
                assert_eq!(
                    std::fs::read(&r).unwrap(),
                    original[i],
                    "chunk {i} rebuilt without {a},{b}"
                );
            }
        }
    }
    // A file handed over as intact but damaged makes a wrong rebuild, which
    // is proved as any chunk is and refused, leaving nothing behind.
    let damaged = w.dir.join("damaged.tar");
    std::fs::copy(&w.paths[1], &damaged).unwrap();
    let regions = data_regions(&read_head(&damaged).unwrap());
    let (_, at, _) = regions.into_iter().find(|r| r.2 > 0).unwrap();
    flip(&damaged, at);
    let mut data: Vec<Option<PathBuf>> = w.paths[..k].iter().cloned().map(Some).collect();
    data[0] = None;
    data[1] = Some(damaged);
    let parity: Vec<Option<PathBuf>> = (0..2).map(|j| Some(w.paths[k + j].clone())).collect();
    let out = tempfile::tempdir().unwrap();
    let err = repair(&data, &parity, out.path()).unwrap_err();
    assert!(
        err.contains(&format!(
            "rebuilt {} is not intact",
            w.manifest.chunks[0].name
        )) && err.contains("a file used for the repair is damaged"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
    // Three lost is one too many, and the error says so.
    let data: Vec<Option<PathBuf>> = (0..k)
        .map(|i| (i > 2).then(|| w.paths[i].clone()))
        .collect();
    let parity = vec![Some(w.paths[k].clone()), Some(w.paths[k + 1].clone())];
    let err = repair(&data, &parity, w.dir.as_path()).unwrap_err();
    assert!(err.contains("parity rebuilds at most 2"), "{err}");
}

#[tokio::test]
async fn parity_overhead_is_about_n_over_k() {
    let w = write_imageset_with(
        &[900_000, 700_000, 400_000],
        128 << 10,
        None,
        3,
        Version::default(),
    )
    .await;
    let k = w.manifest.chunks.len() as f64;
    let chunks: u64 = w.manifest.chunks.iter().map(|c| c.size).sum();
    let parity: u64 = w.manifest.parity.iter().map(|c| c.size).sum();
    let ratio = parity as f64 / chunks as f64;
    // Each parity file is the largest chunk plus a few tar blocks; only the last
    // chunk is shorter than the others, so the ratio lies a little above N/K.
    let largest = w.manifest.chunks.iter().map(|c| c.size).max().unwrap();
    assert_eq!(parity, 3 * (largest + PARITY_EXTRA));
    assert!(
        ratio >= 3.0 / k && ratio <= 3.0 / (k - 1.0) * 1.05,
        "ratio {ratio} for {k} chunks"
    );
}

mod fuzz {
    //! Property-based fuzzing of the chunk reader and the manifest parser: whatever
    //! the bytes, reading never panics, never allocates without bound, and never
    //! accepts content that differs from what was written. (`cargo fuzz` needs a
    //! nightly toolchain, which the build machines do not have; proptest runs on
    //! stable, in the normal test run, for a bounded number of cases.)

    use super::*;
    use proptest::prelude::*;

    fn sample() -> &'static (Vec<u8>, ImagesetManifest, PathBuf) {
        static SAMPLE: std::sync::OnceLock<(Vec<u8>, ImagesetManifest, PathBuf)> =
            std::sync::OnceLock::new();
        SAMPLE.get_or_init(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            // The first chunk holds a part of a split blob, proved by its
            // own sha256, besides whole blobs proved by their digests.
            let w = rt.block_on(write_imageset(&[700, 3000, 1, 200_000], 128 << 10));
            let split = &w.manifest.blobs[3].parts;
            assert!(split.len() > 1 && split[0].chunk == 1 && split[0].sha256.is_some());
            let bytes = std::fs::read(&w.paths[0]).unwrap();
            let dir = w._dir.keep();
            (bytes, w.manifest, dir)
        })
    }

    /// Reads `bytes` as a chunk: never panics; if accepted, it is the original.
    fn check(bytes: &[u8], name: &str) {
        let (original, manifest, dir) = sample();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let Ok(head) = read_head(&path) else { return };
        if verify(&head, &mut Discard).is_ok() {
            assert_eq!(&*head.manifest, manifest, "accepted a different manifest");
            let off = head.payload_offset as usize;
            assert_eq!(
                &bytes[off..],
                &original[off..],
                "accepted a different payload"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn flipped_bytes(flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..8)) {
            let mut bytes = sample().0.clone();
            for (at, x) in &flips {
                let i = at.index(bytes.len());
                bytes[i] ^= x;
            }
            check(&bytes, "flipped.tar");
        }

        #[test]
        fn truncated_or_extended(cut in any::<prop::sample::Index>(), tail in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let original = &sample().0;
            let mut bytes = original[..cut.index(original.len())].to_vec();
            bytes.extend_from_slice(&tail);
            check(&bytes, "cut.tar");
        }

        #[test]
        fn random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            check(&bytes, "random.tar");
        }

        #[test]
        fn manifest_with_random_numbers(
            sizes in proptest::collection::vec(any::<u64>(), 1..6),
            parts in proptest::collection::vec((any::<u32>(), any::<u64>(), any::<u64>()), 0..6),
            offset in any::<u64>(),
        ) {
            // The consistency check must reject nonsense without overflowing.
            let mut m = sample().1.clone();
            for (c, s) in m.chunks.iter_mut().zip(&sizes) {
                c.size = *s;
            }
            if let Some(b) = m.blobs.first_mut() {
                b.parts = parts.iter().map(|&(chunk, offset, length)| PartRecord { chunk, offset, length, sha256: None }).collect();
            }
            let _ = super::validate::check(&m, offset);
        }

        #[test]
        fn manifest_json_mutations(at in any::<prop::sample::Index>(), with in any::<u8>()) {
            let json = serde_json::to_vec(&sample().1).unwrap();
            let mut bytes = json.clone();
            let i = at.index(bytes.len());
            bytes[i] = with;
            if let Ok(m) = serde_json::from_slice::<ImagesetManifest>(&bytes) {
                let _ = super::validate::check(&m, 4096);
            }
        }
    }
}

/// Rewrites the manifest in chunk file bytes `data` (same length) and its
/// checksum entry, as a forger who fixes every hash would.
fn rewrite_manifest(data: &mut [u8], head: &ChunkHead, m: &ImagesetManifest) {
    rewrite_manifest_json(data, head, serde_json::to_vec_pretty(m).unwrap());
}

/// [`rewrite_manifest`] with the manifest's JSON as it is to be written.
fn rewrite_manifest_json(data: &mut [u8], head: &ChunkHead, mut json: Vec<u8>) {
    assert!(json.len() <= head.manifest_bytes.len());
    json.resize(head.manifest_bytes.len(), b' ');
    data[512..512 + json.len()].copy_from_slice(&json);
    let sum_at = 512 + json.len().div_ceil(512) * 512 + 512;
    data[sum_at..sum_at + 64].copy_from_slice(Digest::of(&json).hex().as_bytes());
}

/// A forger who rewrites a blob's bytes and fixes every hash the format carries
/// (in version 1 the chunk's payload sha256, in version 2 the part's sha256 of
/// a split blob, and the manifest's checksum entry) still cannot get the blob
/// past its digest: each forged chunk proves alone, the imageset does not.
#[tokio::test]
async fn blob_that_does_not_match_its_digest_is_refused_even_with_fixed_hashes() {
    for version in [Version::V1, Version::V2] {
        let w = write_imageset_with(&[3000, 100_000], 64 << 10, None, 0, version).await;
        let split = w.manifest.blobs.iter().position(|b| b.parts.len() > 1);
        let split = split.expect("the 100 kB blob is split");
        let first = w.manifest.blobs[split].parts[0].chunk as usize;
        let p = &w.paths[first - 1];
        let head = read_head(p).unwrap();
        let mut data = std::fs::read(p).unwrap();
        let (_, at, len) = data_regions(&head)
            .into_iter()
            .find(|(b, _, _)| *b == split)
            .unwrap();
        data[at as usize + 7] ^= 0xff;
        let mut m = (*head.manifest).clone();
        match version {
            Version::V1 => {
                let payload = Digest::of(&data[head.payload_offset as usize..]);
                m.chunks[first - 1].sha256 = Some(payload.hex().to_string());
            }
            Version::V2 => {
                let part = Digest::of(&data[at as usize..(at + len) as usize]);
                m.blobs[split].parts[0].sha256 = Some(part.hex().to_string());
            }
        }
        std::fs::write(p, &data).unwrap();
        // The manifest is the same in every chunk: the forger rewrites them all.
        for q in &w.paths {
            let mut bytes = std::fs::read(q).unwrap();
            rewrite_manifest(&mut bytes, &head, &m);
            std::fs::write(q, &bytes).unwrap();
        }
        for q in &w.paths {
            let h = read_head(q).expect("every hash of the format checks out");
            verify(&h, &mut Discard).expect("each chunk proves alone");
        }
        let err = verify_by_digests(&w.paths).unwrap_err();
        assert!(
            err.contains(&format!(
                "blob {} hashes to",
                w.manifest.blobs[split].digest
            )) && err.contains("content was altered"),
            "{version:?}: {err}"
        );
    }
}

/// Version 2 lists no chunk hash: a chunk read alone is proved part by part,
/// and damage to a part of a split blob names the file that holds it, while
/// the file holding the blob's other part still proves intact.
#[tokio::test]
async fn a_version_2_chunk_is_proved_part_by_part_and_names_the_damaged_part() {
    let w = write_imageset(&[3000, 100_000, 700], 64 << 10).await;
    assert_eq!(w.manifest.format, FORMAT_V2);
    assert!(w.manifest.chunks.iter().all(|c| c.sha256.is_none()));
    let split = w.manifest.blobs.iter().position(|b| b.parts.len() > 1);
    let split = split.expect("the 100 kB blob is split");
    let blob = &w.manifest.blobs[split];
    let mut offset = 0;
    for part in &blob.parts {
        let bytes = &w.contents[split][offset..offset + part.length as usize];
        assert_eq!(
            part.sha256.as_deref(),
            Some(Digest::of(bytes).hex()),
            "each part's sha256 is that of its bytes"
        );
        offset += part.length as usize;
    }
    for (b, other) in w.manifest.blobs.iter().enumerate() {
        if b != split {
            assert!(other.parts.iter().all(|p| p.sha256.is_none()));
        }
    }
    for (i, part) in blob.parts.iter().enumerate() {
        let p = &w.paths[part.chunk as usize - 1];
        let original = std::fs::read(p).unwrap();
        let (_, at, _) = data_regions(&read_head(p).unwrap())
            .into_iter()
            .find(|(b, _, _)| *b == split)
            .unwrap();
        flip(p, at + part.length / 2);
        let msg = corrupt_message(p);
        assert!(
            msg.contains(&format!(
                "{}: {} hashes to",
                p.display(),
                blob.entry_name(i)
            )) && msg.contains("damaged in transfer"),
            "{msg}"
        );
        for (j, other) in blob.parts.iter().enumerate() {
            if other.chunk != part.chunk {
                let q = &w.paths[other.chunk as usize - 1];
                verify(&read_head(q).unwrap(), &mut Discard)
                    .unwrap_or_else(|e| panic!("part {j}'s file is intact: {e}"));
            }
        }
        std::fs::write(p, &original).unwrap();
    }
}

/// Each version lists exactly its own hashes on a split blob's parts: one
/// missing, or one where the version has none, is refused by field.
#[tokio::test]
async fn part_hashes_are_required_in_version_2_and_refused_in_version_1() {
    let w = write_imageset(&[3000, 100_000], 64 << 10).await;
    let head = read_head(&w.paths[0]).unwrap();
    let split = w.manifest.blobs.iter().position(|b| b.parts.len() > 1);
    let split = split.expect("the 100 kB blob is split");
    let check = |m: &ImagesetManifest| {
        validate::check(m, head.payload_offset)
            .unwrap_err()
            .to_string()
    };
    let mut m = w.manifest.clone();
    m.blobs[split].parts[1].sha256 = None;
    let e = check(&m);
    assert!(
        e.starts_with(&format!("blobs[{split}].parts[1].sha256: missing")),
        "{e}"
    );
    let mut m = w.manifest.clone();
    m.format = FORMAT_V1.into();
    for c in &mut m.chunks {
        c.sha256 = Some("0".repeat(64));
    }
    let e = check(&m);
    assert!(
        e.starts_with(&format!("blobs[{split}].parts[0].sha256: present")),
        "{e}"
    );
}

/// Imagesets of version 1 may still be in transit when a site upgrades: they
/// are read, reassembled, and proved by their payload hashes.
#[tokio::test]
async fn version_1_imagesets_are_still_read_and_proved_by_their_payload_hashes() {
    let w = write_imageset_with(&[0, 3000, 100_000, 700], 64 << 10, None, 0, Version::V1).await;
    assert_eq!(w.manifest.format, FORMAT_V1);
    assert!(w.manifest.chunks.iter().all(|c| c.sha256.is_some()));
    assert!(
        w.manifest
            .blobs
            .iter()
            .flat_map(|b| &b.parts)
            .all(|p| p.sha256.is_none())
    );
    let sink = reassemble(&w);
    for (i, c) in w.contents.iter().enumerate() {
        assert_eq!(sink.blobs.get(&i).map(Vec::as_slice).unwrap_or(&[]), &c[..]);
    }
    verify_by_digests(&w.paths).unwrap();
    let p = &w.paths[0];
    let regions = data_regions(&read_head(p).unwrap());
    let (_, at, _) = regions.into_iter().find(|r| r.2 > 0).unwrap();
    flip(p, at);
    let msg = corrupt_message(p);
    assert!(
        msg.contains("payload sha256 is") && msg.contains("damaged in transfer"),
        "{msg}"
    );
}

/// Where each part's data lies in chunk `head`: (blob index, start, length).
fn data_regions(head: &ChunkHead) -> Vec<(usize, u64, u64)> {
    let mut at = head.payload_offset + CHUNK_ENTRY_LEN;
    head.manifest
        .parts_in_chunk(head.identity.chunk)
        .map(|(b, _, part)| {
            let region = (b, at + BLOCK, part.length);
            at += BLOCK + padded(part.length);
            region
        })
        .collect()
}

/// Verifies every chunk of `paths` in order with one [`DigestCheck`], as the
/// `verify` command and the store do: no payload hash, one hash per byte.
fn verify_by_digests(paths: &[PathBuf]) -> Result<(), String> {
    let mut sink = DigestCheck::default();
    for p in paths {
        let head = read_head(p).map_err(|e| e.to_string())?;
        verify(&head, &mut sink).map_err(|e| e.to_string())?;
    }
    match sink.pending() {
        0 => Ok(()),
        n => Err(format!("{n} blobs pending")),
    }
}

/// A sink that checks digests is spared the chunk's payload hash, so the blob
/// digests and the reader's comparison of every other byte with the format's
/// must catch a change anywhere: each byte of the framing (identity, headers,
/// padding, end marker), and bytes all through the data, split blobs included.
#[tokio::test]
async fn hashing_each_byte_once_still_detects_any_flipped_payload_byte() {
    let w = write_imageset(&[3000, 100_000, 700, 1], 48 << 10).await;
    let split = w
        .manifest
        .blobs
        .iter()
        .position(|b| b.parts.len() > 1)
        .expect("a blob split across chunks");
    verify_by_digests(&w.paths).expect("intact chunks verify");
    for p in &w.paths {
        let head = read_head(p).unwrap();
        let original = std::fs::read(p).unwrap();
        let regions = data_regions(&head);
        let in_data = |off: u64| {
            regions
                .iter()
                .find(|(_, at, n)| (*at..at + n).contains(&off))
        };
        let mut tried = 0;
        for off in head.payload_offset..original.len() as u64 {
            let region = in_data(off);
            // Every fifth byte of the framing, every 499th of the data.
            if off % if region.is_some() { 499 } else { 5 } != 0 {
                continue;
            }
            flip(p, off);
            let err = verify_by_digests(&w.paths)
                .expect_err(&format!("{} offset {off} flipped", p.display()));
            std::fs::write(p, &original).unwrap();
            if region.is_some_and(|(b, _, _)| *b == split) {
                let names: Vec<&str> = w.manifest.blobs[split]
                    .parts
                    .iter()
                    .map(|part| w.manifest.chunks[part.chunk as usize - 1].name.as_str())
                    .collect();
                assert!(
                    names.iter().all(|n| err.contains(n))
                        && err.contains("one of them was damaged"),
                    "damage to a split blob names every chunk holding a part: {err}"
                );
            }
            tried += 1;
        }
        assert!(tried > 500, "{tried} offsets of {}", p.display());
    }
}
