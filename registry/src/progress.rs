//! How long transfers report their progress. A library counts bytes through this
//! trait; a binary decides how to show them (a terminal bar: `airlock-cli`), so
//! that no library draws on a terminal or depends on a progress-bar crate.

/// Bytes done in a transfer whose total the caller gave when it made the value.
pub trait Progress: Send + Sync {
    /// `n` more bytes done.
    fn add(&self, n: u64);
    /// `n` bytes taken back: a transfer that failed part way and starts again.
    fn sub(&self, n: u64) {
        let _ = n;
    }
    /// The transfer is over (done or given up).
    fn finish(&self) {}
}

/// A count of the bytes and nothing else: for callers that want only the total
/// (and for tests, which check it).
impl Progress for std::sync::atomic::AtomicU64 {
    fn add(&self, n: u64) {
        self.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    fn sub(&self, n: u64) {
        self.fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
    }
}
