//! `verify`: check every imageset in a directory completely, without a workspace or
//! a registry — the files a courier carries can be checked before the walk to the
//! air-gapped room, and again on arrival.

use std::path::Path;
use std::time::{Duration, Instant};

use airlock_cli::telemetry::Bar;
use airlock_common::exit_codes;
use airlock_imageset::read::{DigestCheck, PartSink as _};
use airlock_imageset::signing::TrustStore;
use airlock_registry::progress::Progress as _;

use crate::error::Error;
use crate::ingest::{blame, file_size, missing_message, verify_counted};
use crate::scan;
use crate::site::{Problem, Report};

/// What `verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Imagesets fully verified.
    pub verified: Vec<Verified>,
    /// What is wrong.
    pub problems: Report,
    /// Wall time.
    pub elapsed: Duration,
}

/// One imageset that verified.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Its UUID.
    pub uuid: uuid::Uuid,
    /// Its sequence.
    pub sequence: u64,
    /// How people name it (`imageset UUID sequence N`).
    pub label: String,
    /// Chunk and parity files read.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// Verifies every imageset found in `dir`: signature (when keys are given), every
/// byte of every chunk (blobs by digest, the rest against the format), every
/// parity file's payload sha256.
pub fn verify(dir: &Path, trust: &TrustStore) -> Result<VerifyReport, Error> {
    let started = Instant::now();
    let mut report = VerifyReport::default();
    let found = scan::scan(dir).map_err(|e| Error::io(dir, e))?;
    for e in &found.damaged {
        report.problems.problem(exit_codes::DATA, e.to_string());
    }
    if found.imagesets.is_empty() {
        report.problems.problem(
            exit_codes::INCOMPLETE,
            format!("no imageset chunk files found in {}", dir.display()),
        );
    }
    for c in found.imagesets.values() {
        let label = c.manifest.label();
        if !trust.is_empty()
            && let Err(why) = trust.verify(&c.manifest_bytes, c.signature.as_deref())
        {
            report
                .problems
                .problem(exit_codes::DATA, format!("{label}: {why}"));
            continue;
        }
        if !c.missing().is_empty() {
            report
                .problems
                .problem(exit_codes::INCOMPLETE, missing_message(c, &[]));
            continue;
        }
        let mut sink = DigestCheck::default();
        let files: Vec<_> = c.chunks.values().chain(c.parity.values()).collect();
        let bytes: u64 = files.iter().map(|h| file_size(h)).sum();
        let bar = Bar::bytes(&format!("verify {label}"), bytes);
        let result = files
            .iter()
            .try_for_each(|head| verify_counted(head, &mut sink, &bar).map(|_| ()))
            .map_err(|e| blame(&c.chunks, e).to_string())
            .and_then(|()| match sink.pending() {
                0 => Ok(()),
                n => Err(format!(
                    "{n} split blobs end in no chunk: the manifest's parts do not add up"
                )),
            });
        bar.finish();
        match result {
            Ok(()) => report.verified.push(Verified {
                uuid: c.manifest.uuid,
                sequence: c.manifest.sequence,
                label,
                files: c.chunks.len() + c.parity.len(),
                bytes,
            }),
            Err(e) => report
                .problems
                .problem(exit_codes::DATA, format!("{label}: {e}")),
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

impl VerifyReport {
    /// The problems.
    pub fn problems(&self) -> &[Problem] {
        &self.problems.problems
    }
}
