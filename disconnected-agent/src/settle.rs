//! Which files in the drop directory are complete: a file is taken once its size
//! and modification time have held for the settle time, or at once when it was
//! renamed into the directory (a writer that writes `x.part` and renames it says
//! so). The clock is passed in, so the rules are tested without waiting.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

struct Seen {
    len: u64,
    mtime: SystemTime,
    since: Instant,
    renamed: bool,
}

/// Which files have stopped changing.
#[derive(Default)]
pub(crate) struct Tracker {
    seen: HashMap<PathBuf, Seen>,
    /// Files renamed into the directory since they were last looked at.
    pub(crate) renamed: HashSet<PathBuf>,
}

impl Tracker {
    /// Updates what is known of `files` and returns those that are complete.
    pub(crate) fn settled(
        &mut self,
        files: &[PathBuf],
        settle: Duration,
        now: Instant,
    ) -> Vec<PathBuf> {
        self.seen.retain(|p, _| files.contains(p));
        let mut out = Vec::new();
        for f in files {
            let Ok(meta) = std::fs::metadata(f) else {
                continue;
            };
            let (len, mtime) = (
                meta.len(),
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            );
            let renamed = self.renamed.remove(f);
            match self.seen.get_mut(f) {
                Some(s) if s.len == len && s.mtime == mtime => {
                    s.renamed |= renamed;
                    if s.renamed || now.duration_since(s.since) >= settle {
                        out.push(f.clone());
                    }
                }
                _ => {
                    self.seen.insert(
                        f.clone(),
                        Seen {
                            len,
                            mtime,
                            since: now,
                            renamed,
                        },
                    );
                    if renamed || settle.is_zero() {
                        out.push(f.clone());
                    }
                }
            }
        }
        out
    }

    /// How long `file` has been unchanged, unless it was renamed in (its writer
    /// then said it is complete).
    pub(crate) fn unchanged_for(&self, file: &Path, now: Instant) -> Option<Duration> {
        self.seen
            .get(file)
            .filter(|s| !s.renamed)
            .map(|s| now.duration_since(s.since))
    }

    /// When the next file that is still settling will have settled, or a file
    /// that settled (it may be a stalled writer's) will have been still for
    /// `stall`. Only deadlines still to come: one passed is no reason to wake, and
    /// counting it would make the loop spin for as long as the file sits there.
    pub(crate) fn next_deadline(
        &self,
        settle: Duration,
        stall: Duration,
        now: Instant,
    ) -> Option<Instant> {
        self.seen
            .values()
            .filter(|s| !s.renamed)
            .filter_map(|s| {
                [s.since + settle, s.since + stall]
                    .into_iter()
                    .find(|&d| d > now)
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTLE: Duration = Duration::from_secs(10);

    fn file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn a_file_is_taken_once_it_has_held_still_for_the_settle_time() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(dir.path(), "a.tar", b"part");
        let files = [f.clone()];
        let mut t = Tracker::default();
        let t0 = Instant::now();
        assert!(t.settled(&files, SETTLE, t0).is_empty(), "just seen");
        assert!(t.settled(&files, SETTLE, t0 + SETTLE / 2).is_empty());
        assert_eq!(t.unchanged_for(&f, t0 + SETTLE / 2), Some(SETTLE / 2));
        assert_eq!(t.settled(&files, SETTLE, t0 + SETTLE), vec![f]);
    }

    #[test]
    fn a_file_that_grows_starts_its_settle_time_again() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(dir.path(), "a.tar", b"part");
        let files = [f.clone()];
        let mut t = Tracker::default();
        let t0 = Instant::now();
        t.settled(&files, SETTLE, t0);
        std::fs::write(&f, b"part and more").unwrap();
        let t1 = t0 + SETTLE;
        assert!(t.settled(&files, SETTLE, t1).is_empty(), "it changed");
        assert!(t.settled(&files, SETTLE, t1 + SETTLE / 2).is_empty());
        assert_eq!(t.settled(&files, SETTLE, t1 + SETTLE), vec![f]);
    }

    #[test]
    fn a_file_renamed_in_is_taken_at_once_and_never_counts_as_stalled() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(dir.path(), "a.tar", b"whole");
        let mut t = Tracker::default();
        t.renamed.insert(f.clone());
        let t0 = Instant::now();
        assert_eq!(
            t.settled(std::slice::from_ref(&f), SETTLE, t0),
            vec![f.clone()]
        );
        assert_eq!(t.unchanged_for(&f, t0 + SETTLE), None);
        assert_eq!(t.next_deadline(SETTLE, SETTLE * 6, t0), None);
    }

    #[test]
    fn the_next_wake_up_is_the_nearest_deadline_still_to_come() {
        let dir = tempfile::tempdir().unwrap();
        let a = file(dir.path(), "a.tar", b"a");
        let mut t = Tracker::default();
        let t0 = Instant::now();
        t.settled(std::slice::from_ref(&a), SETTLE, t0);
        let stall = SETTLE * 6;
        assert_eq!(t.next_deadline(SETTLE, stall, t0), Some(t0 + SETTLE));
        // Settled: the next deadline is when it will have been still for `stall`;
        // one passed is never returned, or the loop would spin.
        assert_eq!(
            t.next_deadline(SETTLE, stall, t0 + SETTLE),
            Some(t0 + stall)
        );
        assert_eq!(t.next_deadline(SETTLE, stall, t0 + stall), None);
    }

    #[test]
    fn a_file_gone_from_the_directory_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(dir.path(), "a.tar", b"a");
        let mut t = Tracker::default();
        let t0 = Instant::now();
        t.settled(std::slice::from_ref(&f), SETTLE, t0);
        assert!(t.settled(&[], SETTLE, t0 + SETTLE).is_empty());
        assert_eq!(t.unchanged_for(&f, t0 + SETTLE), None);
        // Seen again, it starts over.
        assert!(
            t.settled(std::slice::from_ref(&f), SETTLE, t0 + SETTLE)
                .is_empty()
        );
    }
}
