//! Logging and progress display shared by the binaries.
//!
//! Logs go to stderr through `tracing`, as structured key/value events: journald
//! and log shippers read them, and `--log-format json` gives one JSON object per
//! line. A progress bar is drawn only when stderr is a terminal; under systemd or in
//! a pipe the periodic log events carry the same information. Log lines written
//! while bars are drawn go above them, whole ([`BelowBars`]): a line never
//! lands inside a bar, and a bar never overwrites a line.

use std::io::{IsTerminal, Write};
use std::sync::LazyLock;

use airlock_registry::progress::Progress;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Every bar this process draws, so that log lines can be written between them.
static BARS: LazyLock<MultiProgress> = LazyLock::new(MultiProgress::new);

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// How much is logged: `--log-level`. A closed set, so that a typo is an error at
/// the command line rather than a filter that silently matches nothing; finer
/// filters (per module) go in `RUST_LOG`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogLevel {
    /// Failures only.
    Error,
    /// Failures and what an operator should look at.
    Warn,
    /// What the command does, step by step.
    #[default]
    Info,
    /// Requests and decisions, for a bug report.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    fn directive(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// Installs the global subscriber. `RUST_LOG` overrides `level` when set.
pub fn init(level: LogLevel, format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level.directive()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(BelowBars::new(BARS.clone(), |line: &[u8]| {
            let _ = std::io::stderr().write_all(line);
        }))
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// A byte-progress bar that exists only on a terminal: how the binaries show the
/// [`Progress`] libraries report.
#[derive(Debug, Clone)]
pub struct Bar {
    bar: Option<ProgressBar>,
}

impl Bar {
    /// A bar for `total` bytes labelled `what`, or a silent stand-in off a terminal.
    pub fn bytes(what: &str, total: u64) -> Self {
        if !std::io::stderr().is_terminal() {
            return Bar { bar: None };
        }
        let bar = BARS.add(ProgressBar::new(total));
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("template is valid")
            .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        Bar { bar: Some(bar) }
    }
}

impl Progress for Bar {
    fn add(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    fn sub(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.set_position(b.position().saturating_sub(n));
        }
    }

    /// Removes the bar.
    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Where log lines go: each line, whole, to `out`, with the bars cleared while
/// it is written and drawn again below it.
#[derive(Clone)]
pub struct BelowBars<O> {
    bars: MultiProgress,
    out: O,
}

impl<O: Fn(&[u8]) + Clone> BelowBars<O> {
    /// Lines for `out`, kept clear of `bars`.
    pub fn new(bars: MultiProgress, out: O) -> Self {
        BelowBars { bars, out }
    }
}

impl<'a, O: Fn(&[u8]) + Clone + 'a> MakeWriter<'a> for BelowBars<O> {
    type Writer = Line<O>;

    fn make_writer(&'a self) -> Line<O> {
        Line {
            bars: self.bars.clone(),
            out: self.out.clone(),
            buf: Vec::new(),
        }
    }
}

/// One log event, gathered and written at once when dropped (`tracing` writes an
/// event in several calls).
pub struct Line<O: Fn(&[u8])> {
    bars: MultiProgress,
    out: O,
    buf: Vec<u8>,
}

impl<O: Fn(&[u8])> Write for Line<O> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<O: Fn(&[u8])> Drop for Line<O> {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        // Off a terminal (a service, a pipe) there is nothing to keep clear:
        // the line is written as it is, with no lock and no redraw.
        if self.bars.is_hidden() {
            (self.out)(&self.buf);
        } else {
            self.bars.suspend(|| (self.out)(&self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use indicatif::{InMemoryTerm, ProgressDrawTarget, TermLike};

    /// A terminal of 8 rows; log lines and bars both drawn on it.
    fn screen() -> (InMemoryTerm, MultiProgress) {
        let term = InMemoryTerm::new(8, 60);
        let bars =
            MultiProgress::with_draw_target(ProgressDrawTarget::term_like(Box::new(term.clone())));
        (term, bars)
    }

    /// What a terminal's line discipline makes of `\n` (onlcr).
    fn tty(line: &[u8]) -> String {
        std::str::from_utf8(line).unwrap().replace('\n', "\r\n")
    }

    fn bar(bars: &MultiProgress) -> ProgressBar {
        let bar = bars.add(ProgressBar::new(100));
        bar.set_style(ProgressStyle::with_template("{msg} {pos}/{len}").unwrap());
        bar.set_message("publish");
        bar.set_position(40);
        bar
    }

    #[test]
    fn log_lines_go_above_the_bars_whole_and_the_bars_stay_below() {
        let (term, bars) = screen();
        let bar = bar(&bars);
        let out = term.clone();
        let logs = BelowBars::new(bars.clone(), move |line: &[u8]| {
            out.write_str(&tty(line)).unwrap();
        });
        for text in ["first line\n", "second line\n"] {
            // tracing writes an event in pieces.
            let mut w = logs.make_writer();
            let (a, b) = text.split_at(3);
            w.write_all(a.as_bytes()).unwrap();
            w.write_all(b.as_bytes()).unwrap();
        }
        bar.set_position(41);
        assert_eq!(
            term.contents(),
            "first line\nsecond line\npublish 41/100",
            "{:?}",
            term.contents()
        );
    }

    #[test]
    fn without_the_writer_a_log_line_leaves_a_stale_bar_behind() {
        // What BelowBars prevents: a line written while a bar is on screen.
        let (term, bars) = screen();
        let bar = bar(&bars);
        term.write_str(&tty(b"a log line\n")).unwrap();
        bar.set_position(41);
        let contents = term.contents();
        assert_eq!(
            contents, "publish 40/100\na log line\npublish 41/100",
            "a stale copy of the bar stays in the scrollback above the line"
        );
    }
}
