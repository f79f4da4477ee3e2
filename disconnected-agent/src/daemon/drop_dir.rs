//! The drop directory's files outside the imageset format: noticing them
//! (file-system events, taken as one change per copy), moving them aside
//! (quarantine, with the reason beside them), and disposing of them once what
//! they carry is published everywhere. When a file is complete is
//! [`crate::settle`]'s; what a file holds is [`crate::scan`]'s.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;
// Tokio's clock, the one `timeout` runs on (the same as std's unless a test pauses it).
use tokio::time::Instant;
use uuid::Uuid;

use super::{Daemon, Event};
use crate::agent_config::AfterPublish;
use crate::error::Error;
use crate::messages::Round;
use crate::metrics::Quarantine;
use crate::scan;
use crate::status::{AgentEvent, EventKind};

/// Watches `dir` and sends a [`Event::Changed`] for every change; `None` when
/// the file system gives no events (a network share), and rescans must do.
pub(super) fn watch(
    dir: &Path,
    events: mpsc::UnboundedSender<Event>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Some(event) = res.ok().and_then(|ev| change(&ev)) {
            let _ = events.send(event);
        }
    })
    .ok()?;
    watcher
        .watch(dir, notify::RecursiveMode::NonRecursive)
        .ok()?;
    Some(watcher)
}

/// What a file-system event means to the loop: a change, with the paths renamed
/// into the directory (those are complete); nothing for a read.
fn change(ev: &notify::Event) -> Option<Event> {
    use notify::EventKind::{Access, Modify};
    use notify::event::{ModifyKind, RenameMode};
    // Reading a file (every round reads chunk heads) is no change; waking for it
    // would spin while an incomplete imageset waits.
    let renamed = match ev.kind {
        Access(_) => return None,
        Modify(ModifyKind::Name(RenameMode::To)) => ev.paths.clone(),
        Modify(ModifyKind::Name(RenameMode::Both)) => {
            ev.paths.last().cloned().into_iter().collect()
        }
        _ => Vec::new(),
    };
    Some(Event::Changed(renamed))
}

/// A copy raises many events; takes them as one change: waits until events stop
/// for a moment (at most two seconds in all). Returns the paths renamed in
/// meanwhile, and an event of another kind that arrived, to be handled next.
pub(super) async fn debounce(
    rx: &mut mpsc::UnboundedReceiver<Event>,
) -> (Vec<PathBuf>, Option<Event>) {
    const QUIET: Duration = Duration::from_millis(200);
    let until = Instant::now() + Duration::from_secs(2);
    let mut renamed = Vec::new();
    loop {
        let wait = QUIET.min(until.saturating_duration_since(Instant::now()));
        if wait.is_zero() {
            return (renamed, None);
        }
        match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some(Event::Changed(more))) => renamed.extend(more),
            Ok(Some(other)) => return (renamed, Some(other)),
            Ok(None) | Err(_) => return (renamed, None),
        }
    }
}

/// Moves `file` into `dir` (a suffix keeps names unique); across file systems, copies.
pub(super) fn move_into(file: &Path, dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let name = file
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let mut target = dir.join(&name);
    let mut n = 1;
    while target.exists() {
        target = dir.join(format!("{name}.{n}"));
        n += 1;
    }
    if std::fs::rename(file, &target).is_err() {
        std::fs::copy(file, &target)?;
        std::fs::remove_file(file)?;
    }
    Ok(target)
}

/// Moves `file` into the quarantine directory `dir` with a `.reason` file beside
/// it: "<time>: <reason>". Returns where the file went.
fn quarantine_file(file: &Path, dir: &Path, reason: &str) -> std::io::Result<PathBuf> {
    let moved = move_into(file, dir)?;
    let note = format!(
        "{}: {reason}\n",
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    // The file is out of the way either way; a reason that cannot be written is
    // not worth keeping it in the drop directory for.
    let _ = std::fs::write(reason_file(&moved), note);
    Ok(moved)
}

fn reason_file(quarantined: &Path) -> PathBuf {
    PathBuf::from(format!("{}.reason", quarantined.display()))
}

/// Removes from the quarantine directory `dir` the truncated copies of `files`
/// (a writer that stalled too long, then a complete resend under the same name):
/// the complete file was just taken, so the partial one is of no use to anyone.
fn replace_partials(dir: &Path, files: &[PathBuf]) {
    for f in files {
        let Some(name) = f.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        let copies = std::iter::once(name.clone()).chain((1..).map(|n| format!("{name}.{n}")));
        for copy in copies {
            let partial = dir.join(&copy);
            let reason = reason_file(&partial);
            let Ok(why) = std::fs::read_to_string(&reason) else {
                break;
            };
            // Only a file quarantined as this very file, truncated: the
            // reason is "<time>: <path>: truncated ...", and text quoted from
            // a forged manifest cannot begin with the path.
            let truncated = format!("{}: truncated", f.display());
            if why
                .split_once(": ")
                .is_some_and(|(_, rest)| rest.starts_with(&truncated))
            {
                let _ = std::fs::remove_file(&partial);
                let _ = std::fs::remove_file(&reason);
                tracing::info!(file = %partial.display(), "removed a truncated copy of a file now taken whole");
            }
        }
    }
}

/// The files, by sequence, of the imagesets of `uuid` up to sequence
/// `everywhere` (the last published to every cluster): done with.
fn published_everywhere<'a>(
    imagesets: impl Iterator<Item = (&'a (Uuid, u64), Vec<&'a PathBuf>)>,
    uuid: Uuid,
    everywhere: u64,
) -> Vec<(u64, &'a PathBuf)> {
    imagesets
        .filter(|((u, seq), _)| *u == uuid && *seq <= everywhere)
        .flat_map(|((_, seq), files)| files.into_iter().map(move |f| (*seq, f)))
        .collect()
}

impl Daemon {
    pub(super) fn quarantine(&self, file: &Path, why: Quarantine, reason: &str, round: &mut Round) {
        match quarantine_file(file, &self.config.quarantine_dir, reason) {
            Ok(moved) => {
                self.metrics.quarantined(why);
                tracing::warn!(file = %file.display(), quarantined = %moved.display(), %reason, "file quarantined");
                let mut event = AgentEvent::now(EventKind::Quarantined, reason);
                event.file = Some(file.to_path_buf());
                self.status.emit(event);
                round
                    .quarantined
                    .push((file.to_path_buf(), reason.to_string()));
            }
            Err(e) => tracing::error!(file = %file.display(), error = %e, "cannot quarantine"),
        }
    }

    /// See [`replace_partials`].
    pub(super) fn replace_partials(&self, files: &[PathBuf]) {
        replace_partials(&self.config.quarantine_dir, files);
    }

    /// Deletes or archives the files of imagesets published to every cluster, and
    /// empties the store when asked and everything is everywhere.
    pub(super) fn dispose(&self, found: &scan::Found) -> Result<(), Error> {
        // A publish under way may have recorded a sequence and not yet written
        // its cluster's resources; and two clusters may share a destination, one
        // still reading blobs the other has published. Its end starts a round.
        if !self.publishing.is_empty() {
            return Ok(());
        }
        let Some((uuid, last)) = self.site.ws.accepted()? else {
            return Ok(());
        };
        let mut everywhere = u64::MAX;
        for d in &self.destinations {
            everywhere = everywhere.min(self.site.ws.published(&d.key())?.unwrap_or(0));
        }
        let held = found.imagesets.iter().map(|(key, c)| {
            let files: Vec<&PathBuf> = c
                .chunks
                .values()
                .chain(c.parity.values())
                .chain(&c.spares)
                .map(|h| &h.path)
                .collect();
            (key, files)
        });
        let skipped = found
            .skipped
            .iter()
            .map(|(key, files)| (key, files.iter().collect()));
        let archive = match (self.config.after_publish, &self.config.archive_dir) {
            (AfterPublish::Archive, Some(dir)) => Some(dir),
            _ => None,
        };
        for (seq, f) in published_everywhere(held.chain(skipped), uuid, everywhere) {
            let (result, done) = match archive {
                Some(dir) => (move_into(f, dir).map(|_| ()), "file moved to the archive"),
                None => (
                    std::fs::remove_file(f),
                    "file removed from the drop directory",
                ),
            };
            match result {
                Ok(()) => {
                    tracing::info!(file = %f.display(), sequence = seq, "published everywhere; {done}")
                }
                Err(e) => {
                    tracing::warn!(file = %f.display(), error = %e, "cannot remove a published file")
                }
            }
        }
        if self.config.empty_store && everywhere == last {
            let freed = self.site.empty_store()?;
            if freed > 0 {
                tracing::info!(freed, "content store emptied");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, CreateKind, ModifyKind, RenameMode};

    fn event(kind: notify::EventKind, paths: &[&str]) -> notify::Event {
        let mut ev = notify::Event::new(kind);
        ev.paths = paths.iter().map(PathBuf::from).collect();
        ev
    }

    fn renamed(e: Option<Event>) -> Option<Vec<PathBuf>> {
        match e {
            Some(Event::Changed(paths)) => Some(paths),
            Some(_) => panic!("not a change"),
            None => None,
        }
    }

    #[test]
    fn a_read_is_no_change_and_only_a_rename_into_the_directory_names_its_file() {
        use notify::EventKind::{Access, Create, Modify};
        assert_eq!(
            renamed(change(&event(Access(AccessKind::Any), &["/d/a"]))),
            None
        );
        assert_eq!(
            renamed(change(&event(Create(CreateKind::File), &["/d/a.part"]))),
            Some(vec![])
        );
        assert_eq!(
            renamed(change(&event(
                Modify(ModifyKind::Name(RenameMode::To)),
                &["/d/a"]
            ))),
            Some(vec![PathBuf::from("/d/a")])
        );
        assert_eq!(
            renamed(change(&event(
                Modify(ModifyKind::Name(RenameMode::Both)),
                &["/d/a.part", "/d/a"]
            ))),
            Some(vec![PathBuf::from("/d/a")]),
            "the name it was given, not the one it had"
        );
        assert_eq!(
            renamed(change(&event(
                Modify(ModifyKind::Name(RenameMode::From)),
                &["/d/a"]
            ))),
            Some(vec![]),
            "a file renamed away is a change, not a complete file"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_changes_is_one_and_another_event_ends_it() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        tx.send(Event::Changed(vec![PathBuf::from("/d/a")]))
            .unwrap();
        tx.send(Event::Changed(vec![])).unwrap();
        tx.send(Event::Changed(vec![PathBuf::from("/d/b")]))
            .unwrap();
        tx.send(Event::Reload).unwrap();
        tx.send(Event::Changed(vec![PathBuf::from("/d/c")]))
            .unwrap();
        let (paths, next) = debounce(&mut rx).await;
        assert_eq!(paths, [PathBuf::from("/d/a"), PathBuf::from("/d/b")]);
        assert!(matches!(next, Some(Event::Reload)));
        // What follows the other event is left for the loop.
        let started = Instant::now();
        let (paths, next) = debounce(&mut rx).await;
        assert_eq!(paths, [PathBuf::from("/d/c")]);
        assert!(next.is_none());
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "waited for quiet"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_copy_that_never_goes_quiet_is_taken_after_two_seconds() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(async move {
            loop {
                if tx.send(Event::Changed(vec![])).is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let started = Instant::now();
        let (_, next) = debounce(&mut rx).await;
        assert!(next.is_none());
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_millis(2100),
            "{took:?}"
        );
        writer.abort();
    }

    #[test]
    fn a_moved_file_keeps_its_name_and_never_overwrites_one_there() {
        let dir = tempfile::tempdir().unwrap();
        let into = dir.path().join("q");
        for (i, expected) in ["f", "f.1", "f.2"].into_iter().enumerate() {
            let f = dir.path().join("f");
            std::fs::write(&f, format!("copy {i}")).unwrap();
            let moved = move_into(&f, &into).unwrap();
            assert_eq!(moved, into.join(expected));
            assert!(!f.exists());
        }
        for (i, name) in ["f", "f.1", "f.2"].into_iter().enumerate() {
            assert_eq!(
                std::fs::read_to_string(into.join(name)).unwrap(),
                format!("copy {i}")
            );
        }
    }

    #[test]
    fn only_truncated_copies_of_the_same_file_leave_the_quarantine() {
        let dir = tempfile::tempdir().unwrap();
        let (drop, q) = (dir.path().join("drop"), dir.path().join("q"));
        std::fs::create_dir_all(&drop).unwrap();
        let f = drop.join("a.tar");
        let quarantine = |reason: &str| {
            std::fs::write(&f, "x").unwrap();
            quarantine_file(&f, &q, reason).unwrap()
        };
        let truncated = quarantine(&format!("{}: truncated at byte 9", f.display()));
        let forged = quarantine("bad signature");
        let other = quarantine(&format!("{}: truncated", drop.join("b.tar").display()));
        assert_eq!(truncated, q.join("a.tar"));
        assert!(
            std::fs::read_to_string(reason_file(&forged))
                .unwrap()
                .ends_with(": bad signature\n")
        );
        replace_partials(&q, std::slice::from_ref(&f));
        assert!(!truncated.exists() && !reason_file(&truncated).exists());
        assert!(forged.exists() && reason_file(&forged).exists());
        assert!(other.exists(), "another file's truncated copy stays");
    }

    #[test]
    fn files_are_done_with_up_to_the_sequence_published_everywhere_of_this_workspace() {
        let (ours, theirs) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let paths: Vec<PathBuf> = (0..5).map(|i| PathBuf::from(format!("/d/{i}"))).collect();
        let keys = [(ours, 1), (ours, 2), (ours, 3), (theirs, 1)];
        let sets = vec![
            (&keys[0], vec![&paths[0], &paths[1]]),
            (&keys[1], vec![&paths[2]]),
            (&keys[2], vec![&paths[3]]),
            (&keys[3], vec![&paths[4]]),
        ];
        let done = published_everywhere(sets.into_iter(), ours, 2);
        assert_eq!(done, [(1, &paths[0]), (1, &paths[1]), (2, &paths[2])]);
    }
}
