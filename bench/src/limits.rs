//! The ceilings Airlock is measured against: the fastest any client can move
//! these blobs out of the source registry to disk (`egress`) and into a fresh
//! registry (`ingest`), on the same machine, registries and data, in the same
//! run. Both are minimal clients with nothing but the transfer: no hashing, no
//! manifests, no state, `INFLIGHT` blobs at once, so their time over a tool's
//! is the share of the limit the tool reaches.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use airlock_tests::registry::Registry;
use anyhow::{Context, Result, bail};
use bytes::Bytes;

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
pub fn egress(source: &Registry, blobs: &[Held], dir: &Path) -> Result<f64> {
    std::fs::create_dir_all(dir)?;
    let client = source.http_client()?;
    let seconds = parallel(blobs, |h| {
        let mut resp = client
            .get(format!("{}/v2/{}/blobs/{}", source.url(), h.repo, h.digest))
            .send()?;
        if !resp.status().is_success() {
            bail!("GET {} {}: {}", h.repo, h.digest, resp.status());
        }
        let name = h.digest.trim_start_matches("sha256:");
        let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join(name))?);
        resp.copy_to(&mut f)?;
        f.flush()?;
        // As far as a tool that writes chunk files goes: the bytes reach the disk.
        f.into_inner()?.sync_all()?;
        Ok(())
    })?;
    std::fs::remove_dir_all(dir)?;
    Ok(seconds)
}

/// Uploads every blob, from memory, into `dest` (a fresh registry) monolithically:
/// a POST that opens the upload, a PUT with the bytes and the digest.
pub fn ingest(dest: &Registry, blobs: &[Held]) -> Result<f64> {
    let client = dest.http_client()?;
    parallel(blobs, |h| {
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
}
