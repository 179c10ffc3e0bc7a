//! Live progress of `ftsurvey run` on stderr, driven by the coordinator's watch stream: a bar
//! redrawn in place on a terminal, plain lines otherwise, nothing but errors with `--quiet`.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use domain::{Category, RunSummary};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProgressStyle {
    /// One status line redrawn in place.
    Bar,
    /// A line per finished package and a status line now and then.
    Plain,
    /// Nothing.
    Quiet,
}

impl ProgressStyle {
    /// A bar when stderr is a terminal, plain lines when it is not.
    pub(crate) fn detect(quiet: bool) -> ProgressStyle {
        if quiet {
            ProgressStyle::Quiet
        } else if std::io::stderr().is_terminal() {
            ProgressStyle::Bar
        } else {
            ProgressStyle::Plain
        }
    }
}

/// Plain status lines come at most this often.
const PLAIN_EVERY: Duration = Duration::from_secs(10);

/// Width of the bar, in characters.
const BAR_WIDTH: usize = 30;

/// The progress display of one run.
#[derive(Debug)]
pub(crate) struct Progress {
    style: ProgressStyle,
    started: Instant,
    summary: Option<RunSummary>,
    /// A status line is on screen (bar style) and must be cleared before other output.
    drawn: bool,
    last_plain: Option<Instant>,
    last_plain_settled: u64,
    /// The longest-running job's package and when it started, by the local clock.
    slowest: Option<(String, Instant)>,
}

impl Progress {
    pub(crate) fn new(style: ProgressStyle) -> Progress {
        Progress {
            style,
            started: Instant::now(),
            summary: None,
            drawn: false,
            last_plain: None,
            last_plain_settled: u64::MAX,
            slowest: None,
        }
    }

    /// Takes a new summary from the watch stream, with the package of its longest-running job
    /// and how long that job has run, and redraws.
    pub(crate) fn update(&mut self, summary: RunSummary, slowest: Option<(String, Duration)>) {
        self.summary = Some(summary);
        let now = Instant::now();
        self.slowest = slowest.map(|(package, running)| (package, now.checked_sub(running).unwrap_or(now)));
        match self.style {
            ProgressStyle::Bar => self.draw(),
            ProgressStyle::Plain => {
                let settled = self.summary.as_ref().map_or(0, |s| s.jobs_settled);
                let due = self.last_plain.is_none_or(|at| at.elapsed() >= PLAIN_EVERY);
                if due && settled != self.last_plain_settled {
                    eprintln!("{}", self.status_line());
                    self.last_plain = Some(Instant::now());
                    self.last_plain_settled = settled;
                }
            }
            ProgressStyle::Quiet => {}
        }
    }

    /// Redraws the bar so the elapsed time and estimate move between events.
    pub(crate) fn tick(&mut self) {
        if self.style == ProgressStyle::Bar && self.summary.is_some() {
            self.draw();
        }
    }

    /// Prints a line above the bar (a finished package, a warning).
    pub(crate) fn println(&mut self, line: &str) {
        if self.style == ProgressStyle::Quiet {
            return;
        }
        self.clear();
        eprintln!("{}", domain::views::text::neutralise_controls(line));
        if self.style == ProgressStyle::Bar {
            self.draw();
        }
    }

    /// Removes the bar before the final output.
    pub(crate) fn finish(&mut self) {
        self.clear();
    }

    fn clear(&mut self) {
        if self.drawn {
            eprint!("\r\x1b[2K");
            let _ = std::io::stderr().flush();
            self.drawn = false;
        }
    }

    fn draw(&mut self) {
        let line = self.status_line();
        eprint!("\r\x1b[2K{line}");
        let _ = std::io::stderr().flush();
        self.drawn = true;
    }

    /// `[#####.....] 12/40 iterations, 3/6 packages, 1m20s left | crash 1, compatible 2`
    /// The status line, with whatever control characters a package's name carried replaced:
    /// the bar's own escapes are the only ones written.
    fn status_line(&self) -> String {
        let slowest = self
            .slowest
            .as_ref()
            .filter(|_| self.summary.as_ref().is_some_and(|s| s.jobs_running > 0))
            .map(|(package, since)| (package.as_str(), since.elapsed()));
        let line = status_line(
            self.summary.as_ref(),
            slowest,
            self.started.elapsed(),
            self.style == ProgressStyle::Bar,
        );
        domain::views::text::neutralise_controls(&line).into_owned()
    }
}

impl Drop for Progress {
    /// Whatever ends the run (an error too), the bar does not stay under the next output.
    fn drop(&mut self) {
        self.clear();
    }
}

/// The status line for `summary` after `elapsed`, naming the package of the longest-running
/// job; `with_bar` adds the bar.
pub(crate) fn status_line(
    summary: Option<&RunSummary>,
    slowest: Option<(&str, Duration)>,
    elapsed: Duration,
    with_bar: bool,
) -> String {
    let Some(summary) = summary else {
        return "waiting for the coordinator".to_string();
    };
    let total = summary.jobs_total.max(1);
    let done = summary.jobs_settled.min(total);
    let mut line = String::new();
    if with_bar {
        let filled = (BAR_WIDTH as u64 * done / total) as usize;
        let _ = write!(line, "[{}{}] ", "#".repeat(filled), ".".repeat(BAR_WIDTH - filled));
    }
    let _ = write!(
        line,
        "{done}/{} iterations, {}/{} packages",
        summary.jobs_total, summary.packages_finished, summary.packages_total
    );
    if summary.jobs_running > 0 {
        let _ = write!(line, ", {} running", summary.jobs_running);
    }
    let _ = write!(line, ", {} elapsed", duration(elapsed));
    if done > 0 && done < total {
        let left = elapsed.mul_f64((total - done) as f64 / done as f64);
        let _ = write!(line, ", about {} left", duration(left));
    }
    if let Some((package, running)) = slowest {
        let _ = write!(line, " | slowest: {package} ({})", duration(running));
    }
    let counts: Vec<String> = Category::ALL
        .iter()
        .filter_map(|c| summary.categories.get(c).map(|n| format!("{} {n}", c.as_str())))
        .collect();
    if !counts.is_empty() {
        let _ = write!(line, " | {}", counts.join(", "));
    }
    line
}

/// `1h02m`, `3m05s`, `42s`.
fn duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use domain::{RunId, RunState};

    use super::*;

    fn summary(settled: u64, running: u64) -> RunSummary {
        RunSummary {
            run_id: RunId::new_at(1),
            label: "l".into(),
            state: RunState::Running,
            created_at_ms: 0,
            finished_at_ms: None,
            archived_at_ms: None,
            packages_total: 6,
            packages_finished: 3,
            jobs_total: 40,
            jobs_settled: settled,
            jobs_running: running,
            categories: BTreeMap::from([(Category::Compatible, 2), (Category::Crash, 1)]),
        }
    }

    #[test]
    fn the_status_line_has_the_bar_counts_eta_and_categories() {
        let slowest = Some(("ftfix-deadlock", Duration::from_secs(75)));
        let line = status_line(Some(&summary(10, 2)), slowest, Duration::from_secs(30), true);
        assert_eq!(
            line,
            "[#######.......................] 10/40 iterations, 3/6 packages, 2 running, 30s elapsed, \
             about 1m30s left | slowest: ftfix-deadlock (1m15s) | crash 1, compatible 2"
        );
        let plain = status_line(Some(&summary(0, 0)), None, Duration::from_secs(5), false);
        assert_eq!(
            plain,
            "0/40 iterations, 3/6 packages, 5s elapsed | crash 1, compatible 2"
        );
        assert_eq!(
            status_line(None, None, Duration::ZERO, true),
            "waiting for the coordinator"
        );
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(Duration::from_secs(42)), "42s");
        assert_eq!(duration(Duration::from_secs(185)), "3m05s");
        assert_eq!(duration(Duration::from_secs(3720)), "1h02m");
    }
}
