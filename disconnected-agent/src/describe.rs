//! `describe`: what an imageset holds, read from the heads of its chunk files
//! alone (oc-mirror v1's `describe`). No workspace, no registry, and no payload
//! is hashed (that is `verify`): it answers "what is on this disk" in a second,
//! for a file that just came off a diode or a USB drive.

use std::path::{Path, PathBuf};

use airlock_imageset::read::{ChunkError, read_head};
use airlock_imageset::{ImageKind, ImagesetManifest};
use serde::Serialize;

use crate::error::Error;
use crate::scan;

/// One imageset as its chunk files describe it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Description {
    /// The connected workspace that made it.
    pub uuid: String,
    /// Its place in that workspace's sequence.
    pub sequence: u64,
    /// The imageset format it is written in (`airlock.imageset/v2`): what a
    /// site upgrading its agents checks before it switches the connected side.
    pub format: String,
    /// Whether it carries everything (sequence 1, `--full`) or only what earlier
    /// imagesets did not.
    pub full: bool,
    /// When it was made (RFC 3339).
    pub created: String,
    /// The largest chunk file allowed, in bytes.
    pub limit: u64,
    /// The minisign key id its signature names, unchecked (`verify --trust`
    /// checks it); none when unsigned.
    pub signer: Option<String>,
    /// Chunk files the manifest lists, and how many of them were found.
    pub chunks: Count,
    /// Parity files the manifest lists, and how many of them were found.
    pub parity: Count,
    /// The files found, in order.
    pub files: Vec<PathBuf>,
    /// The images, as configured at the source, with their digests.
    pub images: Vec<Image>,
    /// The releases (`VERSION ARCH`).
    pub releases: Vec<String>,
    /// Images a delete imageset removes.
    pub deletes: usize,
    /// Manifests and blobs listed, those whose bytes this imageset carries, and
    /// their size.
    pub blobs: Blobs,
}

/// Listed and found.
#[derive(Debug, Serialize)]
pub struct Count {
    /// Listed in the manifest.
    pub listed: usize,
    /// Found on disk.
    pub found: usize,
}

/// One image.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    /// As configured at the source.
    pub source: String,
    /// Its manifest digest.
    pub digest: String,
    /// What brought it.
    pub kind: ImageKind,
    /// The platforms carried of its index when the configuration filtered it
    /// (absent: every platform).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<String>,
}

/// Blob counts.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Blobs {
    /// Listed (every manifest and blob the images reference).
    pub listed: usize,
    /// Whose bytes this imageset carries.
    pub carried: usize,
    /// Their size.
    pub carried_bytes: u64,
}

/// Describes the imagesets of `path`: a directory of chunk files (every
/// imageset in it), or one chunk file (its imageset, with that file found).
pub fn describe(path: &Path) -> Result<Vec<Description>, Error> {
    if path.is_file() {
        let head = read_head(path).map_err(Error::Chunk)?;
        let parity = usize::from(head.identity.parity.is_some());
        return Ok(vec![of(
            &head.manifest,
            head.signature.as_deref(),
            vec![path.to_path_buf()],
            1 - parity,
            parity,
        )]);
    }
    let found = scan::scan(path).map_err(|e| Error::io(path, e))?;
    if found.imagesets.is_empty() {
        let damaged: Vec<String> = found.damaged.iter().map(ChunkError::to_string).collect();
        return Err(Error::Usage(format!(
            "{}: no imageset chunk files{}",
            path.display(),
            match damaged.is_empty() {
                true => String::new(),
                false => format!(" that can be read ({})", damaged.join("; ")),
            }
        )));
    }
    Ok(found
        .imagesets
        .values()
        .map(|c| {
            let files = c
                .chunks
                .values()
                .chain(c.parity.values())
                .map(|h| h.path.clone())
                .collect();
            of(
                &c.manifest,
                c.signature.as_deref(),
                files,
                c.chunks.len(),
                c.parity.len(),
            )
        })
        .collect())
}

fn of(
    m: &ImagesetManifest,
    signature: Option<&[u8]>,
    files: Vec<PathBuf>,
    chunks: usize,
    parity: usize,
) -> Description {
    let carried: Vec<_> = m.blobs.iter().filter(|b| !b.parts.is_empty()).collect();
    Description {
        uuid: m.uuid.to_string(),
        sequence: m.sequence,
        format: m.format.clone(),
        full: m.full,
        created: m.created.clone(),
        limit: m.limit,
        signer: signature
            .and_then(airlock_imageset::signing::claimed_signer)
            .map(|k| k.to_string()),
        chunks: Count {
            listed: m.chunks.len(),
            found: chunks,
        },
        parity: Count {
            listed: m.parity.len(),
            found: parity,
        },
        files,
        images: m
            .images
            .iter()
            .map(|i| Image {
                source: i.source.clone(),
                digest: i.digest.to_string(),
                kind: i.kind,
                platforms: i.platforms.clone(),
            })
            .collect(),
        releases: m
            .releases
            .iter()
            .map(|r| format!("{} {}", r.version, r.arch))
            .collect(),
        deletes: m.deletes.len(),
        blobs: Blobs {
            listed: m.blobs.len(),
            carried: carried.len(),
            carried_bytes: carried.iter().map(|b| b.size).sum(),
        },
    }
}
