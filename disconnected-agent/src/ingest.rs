//! Verifying an imageset's chunks and taking its content into the store.

use airlock_common::imageset::read::{self, ChunkError};

use crate::scan::Candidate;
use crate::store::Store;

/// Verifies every chunk of a complete imageset, in chunk order, storing each blob
/// once its bytes are all in and match their digest. On error nothing is accepted;
/// blobs already committed to the store are verified content and stay.
pub fn ingest(candidate: &Candidate, store: &Store) -> Result<u64, ChunkError> {
    let mut sink = store.sink();
    for head in candidate.chunks.values() {
        read::verify(head, &mut sink)?;
        tracing::debug!(chunk = %head.path.display(), index = head.identity.chunk, "chunk verified");
    }
    if sink.pending() != 0 {
        let last = candidate
            .chunks
            .values()
            .last()
            .expect("a complete imageset has chunks");
        return Err(ChunkError::Corrupt {
            path: last.path.clone(),
            reason: format!(
                "{} blobs are incomplete after the last chunk",
                sink.pending()
            ),
        });
    }
    Ok(sink.stored())
}
