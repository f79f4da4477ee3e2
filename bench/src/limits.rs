//! The ceilings Airlock is measured against: the fastest any client can move
//! these blobs out of the source registry to disk (`egress`) and into a fresh
//! registry (`ingest`), on the same machine, registries and data, in the same
//! run. Both are minimal clients with nothing but the transfer: no manifests, no
//! state, `INFLIGHT` blobs at once, so their time over a tool's is the share of
//! the limit the tool reaches. Each runs twice: hashing nothing, and checking
//! every blob's sha256 as it passes ([`Check`]), the least a client that trusts
//! no registry must add; the two apart show how much of a tool's distance from
//! the first is that check, on this machine, and how much is the tool's own.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use airlock_oci::digest::Hasher;
use airlock_tests::registry::Registry;
use anyhow::{Context, Result, bail};
use bytes::Bytes;

/// Whether a limit client checks what it moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Moves the bytes and nothing else.
    Nothing,
    /// Hashes every blob (with Airlock's own hasher) and fails on a mismatch:
    /// downloads as they stream in, uploads before they are sent.
    Sha256,
}

impl Check {
    fn hasher(self) -> Option<Hasher> {
        (self == Check::Sha256).then(Hasher::new)
    }
}

/// Fails unless `hasher` (if any) saw the bytes of `digest`.
fn checked(hasher: Option<Hasher>, digest: &str) -> Result<()> {
    let Some(h) = hasher else {
        return Ok(());
    };
    let got = h.finish();
    if got.as_str() != digest {
        bail!("blob {digest}: its bytes hash to {got}");
    }
    Ok(())
}

/// The time and the CPU time a limit client took.
#[derive(Debug, Clone, Copy)]
pub struct Spent {
    pub seconds: f64,
    /// User and system seconds of the whole process, which does nothing else
    /// at the time.
    pub cpu_seconds: f64,
}

/// `work`'s seconds, with the CPU time spent meanwhile.
fn cpu_timed(work: impl FnOnce() -> Result<f64>) -> Result<Spent> {
    let cpu = || {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
        t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
    };
    let before = cpu();
    let seconds = work()?;
    Ok(Spent {
        seconds,
        cpu_seconds: cpu() - before,
    })
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Option<Hasher>,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Blobs in flight at once.
pub const INFLIGHT: usize = 8;

/// One distinct blob of the data set and a repository that holds it; the bytes
/// are shared, so that an upload costs no copy.
pub struct Held {
    pub repo: String,
    pub digest: String,
    pub bytes: Bytes,
}

/// Runs `work` on every item of `items`, [`INFLIGHT`] at once; the seconds taken.
pub fn parallel<T: Sync>(items: &[T], work: impl Fn(&T) -> Result<()> + Sync) -> Result<f64> {
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..INFLIGHT)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else {
                            return Ok(());
                        };
                        work(item)?;
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("a limit worker panicked"))
    })?;
    Ok(started.elapsed().as_secs_f64())
}

/// GETs every blob from `source` into a file under `dir` (made, then removed).
pub fn egress(source: &Registry, blobs: &[Held], dir: &Path, check: Check) -> Result<Spent> {
    std::fs::create_dir_all(dir)?;
    let client = source.http_client()?;
    let spent = cpu_timed(|| {
        parallel(blobs, |h| {
            let mut resp = client
                .get(format!("{}/v2/{}/blobs/{}", source.url(), h.repo, h.digest))
                .send()?;
            if !resp.status().is_success() {
                bail!("GET {} {}: {}", h.repo, h.digest, resp.status());
            }
            let name = h.digest.trim_start_matches("sha256:");
            let mut f = Hashing {
                inner: std::io::BufWriter::new(std::fs::File::create(dir.join(name))?),
                hasher: check.hasher(),
            };
            resp.copy_to(&mut f)?;
            f.flush()?;
            checked(f.hasher, &h.digest)?;
            // As far as a tool that writes chunk files goes: the bytes reach the disk.
            f.inner.into_inner()?.sync_all()?;
            Ok(())
        })
    })?;
    std::fs::remove_dir_all(dir)?;
    Ok(spent)
}

/// Uploads every blob, from memory, into `dest` (a fresh registry) monolithically:
/// a POST that opens the upload, a PUT with the bytes and the digest.
pub fn ingest(dest: &Registry, blobs: &[Held], check: Check) -> Result<Spent> {
    let client = dest.http_client()?;
    cpu_timed(|| {
        parallel(blobs, |h| {
            let mut hasher = check.hasher();
            if let Some(hasher) = &mut hasher {
                hasher.update(&h.bytes);
            }
            checked(hasher, &h.digest)?;
            let opened = client
                .post(format!("{}/v2/limit/{}/blobs/uploads/", dest.url(), h.repo))
                .send()?;
            if opened.status().as_u16() != 202 {
                bail!("POST upload of {}: {}", h.digest, opened.status());
            }
            let location = opened
                .headers()
                .get("location")
                .context("an upload without Location")?
                .to_str()?
                .to_string();
            let location = match location.starts_with('/') {
                true => format!("{}{location}", dest.url()),
                false => location,
            };
            let sep = if location.contains('?') { '&' } else { '?' };
            let put = client
                .put(format!("{location}{sep}digest={}", h.digest))
                .header("content-type", "application/octet-stream")
                .body(h.bytes.clone())
                .send()?;
            if put.status().as_u16() != 201 {
                bail!("PUT {}: {}", h.digest, put.status());
            }
            Ok(())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checking client refuses bytes that are not the blob's, so what it
    /// times includes a check that could fail; the other checks nothing.
    #[test]
    fn the_checking_limit_client_refuses_bytes_that_are_not_the_blob() {
        // sha256("abc")
        let digest = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let fed = |bytes: &[u8], check: Check| {
            let mut w = Hashing {
                inner: Vec::new(),
                hasher: check.hasher(),
            };
            w.write_all(bytes).unwrap();
            assert_eq!(w.inner, bytes, "passed through unchanged");
            checked(w.hasher, digest)
        };
        assert!(fed(b"abc", Check::Sha256).is_ok());
        let refused = fed(b"abd", Check::Sha256).unwrap_err().to_string();
        assert!(refused.contains(digest), "{refused}");
        assert!(fed(b"abd", Check::Nothing).is_ok());
    }
}
