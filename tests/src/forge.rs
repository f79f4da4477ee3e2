//! Forging imagesets at the byte level, as an attacker with no signing key would:
//! the manifest is rewritten as JSON, and every checksum the format carries is made
//! consistent again (the manifest's sha256 entry, each chunk's size for the new
//! metadata length), so that only Airlock's own checks of the fields stand between
//! the forgery and the registry. The signature entry is dropped: forged imagesets
//! are unsigned, as the default configuration accepts them.

use std::path::Path;

use airlock_imageset::read::read_head;
use airlock_imageset::write::{entry_header, mtime_of};
use airlock_imageset::{BLOCK, MANIFEST_ENTRY, MANIFEST_SUM_ENTRY, MANIFEST_SUM_LEN};
use airlock_oci::digest::Digest;
use serde_json::Value;

fn padded(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

/// Rewrites every chunk and parity file in `dir` with the manifest `edit` makes of
/// the genuine one (any JSON: wrong types, huge strings). Payloads are kept, so
/// their sha256 in the manifest still match; chunk and parity sizes are moved by
/// the change of metadata length after `edit` ran.
pub fn rewrite(dir: &Path, edit: impl Fn(&mut Value)) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "tar") {
            continue;
        }
        let head = read_head(&path)?;
        let data = std::fs::read(&path)?;
        let payload = &data[head.payload_offset as usize..];
        let mut manifest: Value = serde_json::from_slice(&head.manifest_bytes)?;
        edit(&mut manifest);
        let (json, offset) = fit(&mut manifest, head.payload_offset)?;
        let mtime = mtime_of(manifest["created"].as_str().unwrap_or(""));
        let mut out = Vec::with_capacity(offset as usize + payload.len());
        out.extend_from_slice(&entry_header(MANIFEST_ENTRY, json.len() as u64, mtime));
        out.extend_from_slice(&json);
        out.resize(padded(out.len() as u64) as usize, 0);
        out.extend_from_slice(&entry_header(MANIFEST_SUM_ENTRY, MANIFEST_SUM_LEN, mtime));
        out.extend_from_slice(format!("{}\n", Digest::of(&json).hex()).as_bytes());
        out.resize(padded(out.len() as u64) as usize, 0);
        assert_eq!(out.len() as u64, offset);
        out.extend_from_slice(payload);
        std::fs::write(&path, out)?;
    }
    Ok(())
}

/// Serialises `manifest` with the chunk and parity sizes moved to the metadata
/// length it makes; returns the bytes (padded with spaces, as writers do) and that
/// length.
fn fit(manifest: &mut Value, old_offset: u64) -> anyhow::Result<(Vec<u8>, u64)> {
    let mut reserved = serde_json::to_vec_pretty(manifest)?.len() as u64 + 256;
    loop {
        let offset = BLOCK + padded(reserved) + BLOCK + padded(MANIFEST_SUM_LEN);
        let mut moved = manifest.clone();
        for list in ["chunks", "parity"] {
            if let Some(Value::Array(files)) = moved.get_mut(list) {
                for f in files {
                    if let Some(size) = f.get("size").and_then(Value::as_u64) {
                        f["size"] = (size + offset).saturating_sub(old_offset).into();
                    }
                }
            }
        }
        let mut json = serde_json::to_vec_pretty(&moved)?;
        if json.len() as u64 <= reserved {
            json.resize(reserved as usize, b' ');
            *manifest = moved;
            return Ok((json, offset));
        }
        reserved = json.len() as u64 + 256;
    }
}
