//! Which bytes go into which chunk.
//!
//! A chunk file is laid out as:
//!
//! ```text
//! [manifest header][manifest, padded]          } metadata: `metadata_len` bytes,
//! [signature header][signature, padded]        } the same in every chunk
//! [chunk.json header][chunk.json, one block]   } payload: hashed into ChunkRecord::sha256
//! [part header][part bytes, padded] ...        }
//! [two zero blocks]                            }
//! ```
//!
//! so a chunk's size is known exactly before any byte is written, and the planner
//! can fill every chunk up to the limit. Blobs are taken in order; a blob that does
//! not fit in the room left is split, the first part filling the chunk, so that every
//! chunk but the last is within a block of the limit and a blob larger than the
//! limit simply spans several chunks.

use super::{BLOCK, BlobRecord, CHUNK_ENTRY_LEN, PartRecord, TRAILER_LEN, padded};

/// A part smaller than this is not worth its header: when less room than this is
/// left, the blob starts in the next chunk instead (unless the chunk is empty).
pub const MIN_SPLIT: u64 = 64 << 10;

/// Why no layout exists.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    /// The limit cannot hold the metadata plus a single block of data.
    #[error(
        "the transfer limit of {limit} bytes is too small: every chunk carries the imageset manifest \
         ({metadata} bytes with its tar headers) plus {overhead} bytes of tar structure; use a limit of at least {minimum} bytes"
    )]
    LimitTooSmall {
        /// The limit.
        limit: u64,
        /// Bytes of metadata entries.
        metadata: u64,
        /// Fixed tar overhead per chunk.
        overhead: u64,
        /// The smallest workable limit.
        minimum: u64,
    },
    /// The content needs more chunk files than an imageset may have: the
    /// disconnected side would refuse it after the whole transfer.
    #[error(
        "at a transfer limit of {limit} bytes this imageset needs {chunks} chunk files, and an imageset \
         has at most {max}; use a limit of at least {minimum} bytes, or fewer images per imageset"
    )]
    TooManyChunks {
        /// The limit.
        limit: u64,
        /// Chunk files the content needs at that limit.
        chunks: usize,
        /// [`crate::validate::MAX_CHUNKS`].
        max: usize,
        /// A limit at which it fits, in whole MiB.
        minimum: u64,
    },
}

/// Fixed bytes of every chunk besides metadata and parts.
pub const CHUNK_OVERHEAD: u64 = CHUNK_ENTRY_LEN + TRAILER_LEN;

/// Assigns [`PartRecord`]s to the blobs listed in `carry` (indices into `blobs`, in
/// the order they should travel) and returns the size of every chunk file.
/// Blobs not listed keep no parts. There is always at least one chunk.
pub fn plan(
    blobs: &mut [BlobRecord],
    carry: &[usize],
    limit: u64,
    metadata_len: u64,
) -> Result<Vec<u64>, LayoutError> {
    let base = metadata_len + CHUNK_OVERHEAD;
    let minimum = base + 2 * BLOCK;
    if limit < minimum {
        return Err(LayoutError::LimitTooSmall {
            limit,
            metadata: metadata_len,
            overhead: CHUNK_OVERHEAD,
            minimum,
        });
    }
    for b in blobs.iter_mut() {
        b.parts.clear();
    }
    let mut sizes = vec![base];
    let mut entries_in_chunk = 0usize;
    for &i in carry {
        let blob = &mut blobs[i];
        let mut offset = 0u64;
        loop {
            let chunk = sizes.len() as u32;
            let used = *sizes.last().expect("at least one chunk");
            let remaining = blob.size - offset;
            let room = limit - used;
            if BLOCK + padded(remaining) <= room {
                blob.parts.push(PartRecord {
                    chunk,
                    offset,
                    length: remaining,
                    sha256: None,
                });
                *sizes.last_mut().expect("at least one chunk") += BLOCK + padded(remaining);
                entries_in_chunk += 1;
                break;
            }
            // Room for a header and whole blocks of data; a non-final part is always
            // a multiple of the block size, so it wastes no padding.
            let capacity = room.saturating_sub(BLOCK) / BLOCK * BLOCK;
            if capacity > 0 && (capacity >= MIN_SPLIT || entries_in_chunk == 0) {
                blob.parts.push(PartRecord {
                    chunk,
                    offset,
                    length: capacity,
                    sha256: None,
                });
                *sizes.last_mut().expect("at least one chunk") += BLOCK + capacity;
                offset += capacity;
            }
            sizes.push(base);
            entries_in_chunk = 0;
        }
    }
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_oci::digest::Digest;

    fn blobs(sizes: &[u64]) -> Vec<BlobRecord> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| BlobRecord {
                digest: Digest::of(&i.to_le_bytes()),
                size,
                media_type: None,
                repository: "r/x".into(),
                parts: Vec::new(),
            })
            .collect()
    }

    /// Every byte of every carried blob is placed exactly once, in order, and no
    /// chunk exceeds the limit.
    fn check(blobs: &[BlobRecord], carry: &[usize], sizes: &[u64], limit: u64, meta: u64) {
        let mut recomputed = vec![meta + CHUNK_OVERHEAD; sizes.len()];
        for (i, b) in blobs.iter().enumerate() {
            if !carry.contains(&i) {
                assert!(b.parts.is_empty());
                continue;
            }
            let mut next = 0;
            for p in &b.parts {
                assert_eq!(p.offset, next, "parts are contiguous");
                next += p.length;
                recomputed[p.chunk as usize - 1] += BLOCK + padded(p.length);
            }
            assert_eq!(next, b.size, "every byte placed");
        }
        assert_eq!(recomputed, sizes);
        for s in sizes {
            assert!(*s <= limit, "chunk of {s} bytes over limit {limit}");
        }
    }

    #[test]
    fn small_blobs_share_one_chunk() {
        let mut b = blobs(&[10, 2000, 0]);
        let sizes = plan(&mut b, &[0, 1, 2], 1 << 20, 4096).unwrap();
        assert_eq!(sizes.len(), 1);
        check(&b, &[0, 1, 2], &sizes, 1 << 20, 4096);
        assert_eq!(
            b[2].parts,
            vec![PartRecord {
                chunk: 1,
                offset: 0,
                length: 0,
                sha256: None,
            }]
        );
    }

    #[test]
    fn blob_larger_than_limit_spans_chunks() {
        let limit = 1 << 20;
        let mut b = blobs(&[5 << 20, 300_000, 1]);
        let sizes = plan(&mut b, &[0, 1, 2], limit, 8192).unwrap();
        check(&b, &[0, 1, 2], &sizes, limit, 8192);
        assert!(b[0].parts.len() >= 5);
        // Every chunk but the last is filled to within a header and a block of the limit.
        for s in &sizes[..sizes.len() - 1] {
            assert!(
                limit - s < MIN_SPLIT + 2 * BLOCK,
                "chunk of {s} under-filled"
            );
        }
    }

    #[test]
    fn blobs_not_carried_get_no_parts() {
        let mut b = blobs(&[100, 200, 300]);
        b[1].parts.push(PartRecord {
            chunk: 9,
            offset: 0,
            length: 1,
            sha256: None,
        });
        let sizes = plan(&mut b, &[2, 0], 1 << 20, 1024).unwrap();
        check(&b, &[0, 2], &sizes, 1 << 20, 1024);
        assert!(b[1].parts.is_empty(), "stale parts are cleared");
    }

    #[test]
    fn exact_fit_fills_a_chunk_to_the_limit() {
        let meta = 1024;
        let limit = meta + CHUNK_OVERHEAD + BLOCK + 10 * BLOCK;
        let mut b = blobs(&[10 * BLOCK, 1]);
        let sizes = plan(&mut b, &[0, 1], limit, meta).unwrap();
        assert_eq!(sizes[0], limit);
        assert_eq!(sizes.len(), 2);
        check(&b, &[0, 1], &sizes, limit, meta);
    }

    #[test]
    fn limit_below_metadata_is_refused_with_the_minimum() {
        let mut b = blobs(&[1]);
        let err = plan(&mut b, &[0], 4000, 4096).unwrap_err();
        let LayoutError::LimitTooSmall { minimum, .. } = err else {
            panic!("expected the limit refused, got {err}");
        };
        assert_eq!(minimum, 4096 + CHUNK_OVERHEAD + 2 * BLOCK);
        assert!(plan(&mut b, &[0], minimum, 4096).is_ok());
    }

    #[test]
    fn tiny_limits_still_place_every_byte() {
        for limit in [4096 + CHUNK_OVERHEAD + 2 * BLOCK, 10_000, 70_000, 200_001] {
            let mut b = blobs(&[0, 1, 511, 512, 513, 150_000, 64 << 10]);
            let carry: Vec<usize> = (0..b.len()).collect();
            let sizes = plan(&mut b, &carry, limit, 4096).unwrap();
            check(&b, &carry, &sizes, limit, 4096);
        }
    }
}
