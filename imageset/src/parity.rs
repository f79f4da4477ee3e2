//! Reed–Solomon parity across an imageset's chunks (`create --parity N`).
//!
//! A data diode never answers: a chunk lost, truncated or flipped by a scanner in
//! transit costs days to resend. With N parity files, any N of the imageset's
//! chunk and parity files can be rebuilt from the others, with no message back.
//!
//! Each chunk's **payload** (its bytes after the metadata, which every file carries
//! identically) is one original shard, zero-padded to the largest payload, `S`
//! bytes. Parity file `j` carries recovery shard `j` (`reed-solomon-simd`, a
//! maintained SIMD implementation over GF(2^16)). Encoding and decoding run stripe
//! by stripe — the same byte range of every shard at a time — so memory is bounded by
//! (chunks + parity) × stripe, never by the size of the imageset.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

use super::{BLOCK, CHUNK_ENTRY_LEN, ImagesetManifest};
use airlock_oci::digest::Hasher;

/// Offset of the shard data in a parity file, after the metadata.
pub const SHARD_DATA: u64 = CHUNK_ENTRY_LEN + BLOCK;

/// Tar entry name of the shard in a parity file.
pub const SHARD_ENTRY: &str = "airlock/parity";

/// Bytes of each shard processed at a time: whole tar blocks (so every stripe is
/// even, as the codec needs), and at most 64 MiB across all shards.
pub fn stripe_len(shards: usize, shard_size: u64) -> u64 {
    let budget = (64u64 << 20) / shards.max(1) as u64;
    let stripe = (budget / BLOCK * BLOCK).clamp(BLOCK, 1 << 20);
    stripe.min(shard_size.max(BLOCK))
}

fn read_at(f: &mut File, offset: u64, buf: &mut [u8], available: u64) -> std::io::Result<()> {
    // Bytes past the shard's own payload are the zero padding up to S.
    let n = (available as usize).min(buf.len());
    buf[n..].fill(0);
    if n > 0 {
        f.seek(SeekFrom::Start(offset))?;
        f.read_exact(&mut buf[..n])?;
    }
    Ok(())
}

fn codec(e: reed_solomon_simd::Error) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Computes the recovery shards of `chunks` (paths and payload lengths) into the
/// shard data of `parity` files; with `hash` (version 1), returns the sha256
/// (hex) of each chunk's payload, read once for both.
pub fn encode(
    chunks: &[(PathBuf, u64)],
    payload_offset: u64,
    shard_size: u64,
    parity: &[PathBuf],
    hash: bool,
) -> std::io::Result<Option<Vec<String>>> {
    let stripe = stripe_len(chunks.len() + parity.len(), shard_size);
    let mut inputs: Vec<File> = chunks
        .iter()
        .map(|(p, _)| File::open(p))
        .collect::<Result<_, _>>()?;
    let mut outputs: Vec<File> = parity
        .iter()
        .map(|p| std::fs::OpenOptions::new().write(true).open(p))
        .collect::<Result<_, _>>()?;
    let mut hashers = vec![Hasher::new(); if hash { chunks.len() } else { 0 }];
    let mut buf = vec![0u8; stripe as usize];
    let mut offset = 0u64;
    while offset < shard_size {
        let len = stripe.min(shard_size - offset) as usize;
        let mut encoder =
            ReedSolomonEncoder::new(chunks.len(), parity.len(), len).map_err(codec)?;
        for (i, (f, (_, payload))) in inputs.iter_mut().zip(chunks).enumerate() {
            let available = payload.saturating_sub(offset);
            read_at(f, payload_offset + offset, &mut buf[..len], available)?;
            if let Some(h) = hashers.get_mut(i) {
                h.update(&buf[..(available as usize).min(len)]);
            }
            encoder.add_original_shard(&buf[..len]).map_err(codec)?;
        }
        let result = encoder.encode().map_err(codec)?;
        for (out, shard) in outputs.iter_mut().zip(result.recovery_iter()) {
            out.seek(SeekFrom::Start(payload_offset + SHARD_DATA + offset))?;
            out.write_all(shard)?;
        }
        offset += len as u64;
    }
    Ok(hash.then(|| {
        hashers
            .into_iter()
            .map(|h| h.finish().hex().to_string())
            .collect()
    }))
}

/// The name a rebuilt chunk `i` (from 0) is written under: derived by Airlock from
/// the UUID, sequence and index, whatever the manifest lists.
pub fn rebuilt_name(m: &ImagesetManifest, i: usize) -> String {
    super::chunk_file_name(&m.uuid, m.sequence, i as u32 + 1, m.chunks.len() as u32)
}

/// Rebuilds the chunks that are `None` in `data` from the others and the parity
/// files, writing each under its derived name ([`rebuilt_name`]) in `out_dir`
/// once it is proved intact as that chunk of `m` (by its payload sha256 in
/// version 1, part by part in version 2). `metadata` is the first
/// `payload_offset` bytes any file of the imageset carries. Every `Some` file
/// must be intact (verified) — the codec cannot tell a damaged shard from a
/// good one. Returns the rebuilt files.
pub fn repair(
    m: &ImagesetManifest,
    payload_offset: u64,
    metadata: &[u8],
    data: &[Option<PathBuf>],
    parity: &[Option<PathBuf>],
    out_dir: &Path,
) -> Result<Vec<PathBuf>, String> {
    let k = m.chunks.len();
    let n = m.parity.len();
    let missing: Vec<usize> = (0..k).filter(|&i| data[i].is_none()).collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let present = data.iter().flatten().count() + parity.iter().flatten().count();
    if present < k {
        return Err(format!(
            "{} of {} files are missing or damaged; parity rebuilds at most {n}",
            k + n - present,
            k + n
        ));
    }
    let shard_size = m
        .parity
        .first()
        .map(|p| p.size - payload_offset - super::PARITY_EXTRA)
        .ok_or("no parity files")?;
    let io = |e: std::io::Error| e.to_string();
    let stripe = stripe_len(k + n, shard_size);
    let mut originals: Vec<(usize, File, u64)> = Vec::new();
    for (i, p) in data.iter().enumerate() {
        if let Some(p) = p {
            originals.push((
                i,
                File::open(p).map_err(io)?,
                m.chunks[i].size - payload_offset,
            ));
        }
    }
    let mut recoveries: Vec<(usize, File)> = Vec::new();
    for (j, p) in parity.iter().enumerate() {
        if let Some(p) = p {
            recoveries.push((j, File::open(p).map_err(io)?));
        }
    }
    let mut rebuilt: Vec<(usize, PathBuf, File)> = Vec::new();
    for &i in &missing {
        // Never the manifest's `name`: it crossed the gap, and a forged one
        // (`../x`, `/etc/...`) would choose where these bytes land.
        let path = out_dir.join(format!("{}.repair", rebuilt_name(m, i)));
        let mut f = File::create(&path).map_err(io)?;
        f.set_len(m.chunks[i].size).map_err(io)?;
        f.write_all(&metadata[..payload_offset as usize])
            .map_err(io)?;
        rebuilt.push((i, path, f));
    }
    let mut buf = vec![0u8; stripe as usize];
    let mut offset = 0u64;
    while offset < shard_size {
        let len = stripe.min(shard_size - offset) as usize;
        let mut decoder = ReedSolomonDecoder::new(k, n, len).map_err(|e| e.to_string())?;
        for (i, f, payload) in originals.iter_mut() {
            read_at(
                f,
                payload_offset + offset,
                &mut buf[..len],
                payload.saturating_sub(offset),
            )
            .map_err(io)?;
            decoder
                .add_original_shard(*i, &buf[..len])
                .map_err(|e| e.to_string())?;
        }
        for (j, f) in recoveries.iter_mut() {
            read_at(
                f,
                payload_offset + SHARD_DATA + offset,
                &mut buf[..len],
                len as u64,
            )
            .map_err(io)?;
            decoder
                .add_recovery_shard(*j, &buf[..len])
                .map_err(|e| e.to_string())?;
        }
        let result = decoder.decode().map_err(|e| e.to_string())?;
        for (i, shard) in result.restored_original_iter() {
            let Some((_, _, f)) = rebuilt.iter_mut().find(|(r, _, _)| *r == i) else {
                continue;
            };
            let payload = m.chunks[i].size - payload_offset;
            let keep = (payload.saturating_sub(offset) as usize).min(len);
            if keep > 0 {
                f.seek(SeekFrom::Start(payload_offset + offset))
                    .map_err(io)?;
                f.write_all(&shard[..keep]).map_err(io)?;
            }
        }
        offset += len as u64;
    }
    let mut done = Vec::new();
    for (i, path, f) in rebuilt {
        f.sync_all().map_err(io)?;
        drop(f);
        // Proved as any chunk read alone is (by its payload sha256 in
        // version 1, part by part in version 2), and as chunk `i` of `m`:
        // chunks filled to the limit are of one size, so a copy of another
        // chunk, or one under a manifest swapped in since `m` was read, would
        // prove too.
        let proved = crate::read::read_head(&path).and_then(|head| {
            crate::read::verify(&head, &mut crate::read::Discard)?;
            Ok(head.identity.chunk as usize == i + 1
                && head.identity.parity.is_none()
                && *head.manifest == *m)
        });
        let problem = match proved {
            Ok(true) => None,
            Ok(false) => Some("it is another chunk, or of another imageset".to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(problem) = problem {
            let _ = std::fs::remove_file(&path);
            return Err(format!(
                "rebuilt {} is not intact ({problem}); a file used for the repair is damaged",
                rebuilt_name(m, i)
            ));
        }
        done.push(place(&path, out_dir, &rebuilt_name(m, i)).map_err(io)?);
    }
    Ok(done)
}

/// Moves `from` to `name` in `dir` without replacing anything there: a file of that
/// name may be another chunk a file manager renamed. Tries `name`, then
/// `<stem>-rebuilt<n>.tar`.
fn place(from: &Path, dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    let stem = name.strip_suffix(".tar").unwrap_or(name);
    for n in 0..100u32 {
        let target = match n {
            0 => dir.join(name),
            n => dir.join(format!("{stem}-rebuilt{n}.tar")),
        };
        // A hard link fails when the target exists, where a rename would replace it.
        match std::fs::hard_link(from, &target) {
            Ok(()) => {
                std::fs::remove_file(from)?;
                return Ok(target);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            // FAT and exFAT (USB sticks) have no hard links: look, then rename.
            Err(_) if !target.exists() => {
                std::fs::rename(from, &target)?;
                return Ok(target);
            }
            Err(_) => continue,
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        format!(
            "{}: 100 files of this name already exist",
            dir.join(name).display()
        ),
    ))
}
