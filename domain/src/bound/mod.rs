//! Bounds on what a worker reports for a job. Much of an outcome is text the package under test
//! chose: test ids, crash signatures, ThreadSanitizer reports, stacks, output tails, error
//! messages. Every such string is capped, with a visible marker where it was cut; every list of
//! the evidence is capped in length; and an iteration's evidence as a whole stays under
//! [`MAX_EVIDENCE_BYTES`] of JSON, the lists that had to shrink for that named in
//! `evidence.truncated`. The worker bounds each result before spooling it
//! ([`JobResult::bounded`]); the coordinator refuses a result that breaks the bounds ([`check`]).

use crate::evidence::{IterationEvidence, TestReport};
use crate::outcome::{IterationOutcome, JobResult, SetupFailure};

/// The longest signature, message, name, path or line: anything but a tail or the stacks.
pub const MAX_SHORT_BYTES: usize = 4 * 1024;
/// The longest output tail: an iteration's stdout and stderr, a failed setup's log.
pub const MAX_TAIL_BYTES: usize = 16 * 1024;
/// The longest thread-stack dump kept from a stall.
pub const MAX_STACKS_BYTES: usize = 64 * 1024;
/// The most items of each list in the evidence, but the failing tests' ids, which keep at most
/// [`TestReport::MAX_NAMED`].
pub const MAX_ITEMS: usize = 1_000;
/// The most notes in `evidence.truncated`.
pub const MAX_NOTES: usize = 32;
/// The largest iteration evidence, as JSON.
pub const MAX_EVIDENCE_BYTES: usize = 256 * 1024;

impl JobResult {
    /// This result within the bounds: each string over its cap cut on a character boundary
    /// with an `… [truncated N bytes]` marker (at the start of a tail, which keeps its end), each
    /// test id cut as [`TestReport::bounded_id`] cuts it, each list of the evidence cut to its
    /// count, and lists of the evidence halved, least telling first, until its JSON fits
    /// [`MAX_EVIDENCE_BYTES`]. A result within the bounds comes back unchanged, and what comes
    /// back always passes [`check`].
    pub fn bounded(mut self) -> JobResult {
        let mut cutter = Cutter::default();
        walk(&mut self, &mut cutter);
        if let JobResult::Iteration(outcome) = &mut self {
            let evidence = &mut outcome.evidence;
            evidence.truncated.append(&mut cutter.notes);
            fit_evidence(evidence);
            let excess = evidence.truncated.len().saturating_sub(MAX_NOTES);
            evidence.truncated.drain(..excess);
        }
        self
    }
}

/// Whether `result` is within the bounds that [`JobResult::bounded`] puts it in; when it is
/// not, one line saying which field breaks which bound. See [`checked`], which needs no copy.
pub fn check(result: &JobResult) -> Result<(), String> {
    checked(result.clone()).map(drop)
}

/// `result` back if it is within the bounds that [`JobResult::bounded`] puts it in; when it
/// is not, one line saying which field breaks which bound. It takes the result, as the walk
/// goes by `&mut` to serve the cutter too, so a caller that owns it checks it without a copy.
pub fn checked(mut result: JobResult) -> Result<JobResult, String> {
    let mut checker = Checker::default();
    walk(&mut result, &mut checker);
    if let Some(reason) = checker.first {
        return Err(reason);
    }
    if let JobResult::Iteration(outcome) = &result {
        let bytes = evidence_bytes(&outcome.evidence);
        if bytes > MAX_EVIDENCE_BYTES {
            return Err(format!(
                "the evidence is {bytes} bytes of JSON, over the {MAX_EVIDENCE_BYTES}-byte limit"
            ));
        }
    }
    Ok(result)
}

/// `text` cut to at most `max_bytes` by keeping its start and marking the cut at the end.
pub fn cut_end(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_string();
    }
    let mut end = max_bytes.saturating_sub(marker_room(text.len()));
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{}", &text[..end], end_marker(text.len() - end))
}

/// `text` cut to at most `max_bytes` by keeping its end and marking the cut at the start: for
/// tails, whose last lines say the most.
pub fn cut_start(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_string();
    }
    let mut start = text.len() - max_bytes.saturating_sub(marker_room(text.len()));
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("{}{}", start_marker(start), &text[start..])
}

/// How a string is capped.
#[derive(Debug, Clone, Copy)]
enum Cap {
    /// Keep the start, up to this many bytes.
    Start(usize),
    /// Keep the end, up to this many bytes.
    End(usize),
    /// A test id: [`TestReport::bounded_id`].
    TestId,
}

impl Cap {
    fn max_bytes(self) -> usize {
        match self {
            Cap::Start(max) | Cap::End(max) => max,
            Cap::TestId => TestReport::MAX_ID_BYTES,
        }
    }

    fn apply(self, text: &str) -> String {
        match self {
            Cap::Start(max) => cut_end(text, max),
            Cap::End(max) => cut_start(text, max),
            Cap::TestId => TestReport::bounded_id(text),
        }
    }
}

/// A list whose items the walk can count and drop from the end, whatever they are.
trait Items {
    fn count(&self) -> usize;
    fn keep(&mut self, n: usize);
}

impl<T> Items for Vec<T> {
    fn count(&self) -> usize {
        self.len()
    }

    fn keep(&mut self, n: usize) {
        self.truncate(n);
    }
}

/// What the walk does at each bounded field: cut it, or check it.
trait Visit {
    fn text(&mut self, field: &'static str, text: &mut String, cap: Cap);
    fn list(&mut self, field: &'static str, list: &mut dyn Items, max: usize);

    /// A list of strings: the list, then each of its strings.
    fn texts(&mut self, field: &'static str, texts: &mut Vec<String>, max: usize, cap: Cap) {
        self.list(field, texts, max);
        for text in texts {
            self.text(field, text, cap);
        }
    }
}

/// Visits every bounded field of `result`, each list before its items.
fn walk(result: &mut JobResult, visit: &mut impl Visit) {
    match result {
        JobResult::Iteration(outcome) => walk_outcome(outcome, visit),
        JobResult::SetupFailed(failure) => walk_setup_failure(failure, visit),
    }
}

fn walk_outcome(outcome: &mut IterationOutcome, visit: &mut impl Visit) {
    let short = Cap::Start(MAX_SHORT_BYTES);
    visit.text("outcome.last_output_line", &mut outcome.last_output_line, short);
    visit.text(
        "outcome.stdout_tail",
        &mut outcome.stdout_tail,
        Cap::End(MAX_TAIL_BYTES),
    );
    visit.text(
        "outcome.stderr_tail",
        &mut outcome.stderr_tail,
        Cap::End(MAX_TAIL_BYTES),
    );
    if let Some(signature) = &mut outcome.crash_signature {
        visit.text("outcome.crash_signature", signature, short);
    }
    if let Some(error) = &mut outcome.harness_error {
        visit.text("outcome.harness_error", error, short);
    }
    visit.text("outcome.worker_id", &mut outcome.worker_id, short);
    let provenance = &mut outcome.provenance;
    visit.text(
        "outcome.provenance.interpreter_build",
        &mut provenance.interpreter_build,
        short,
    );
    if let Some(version) = &mut provenance.package_version {
        visit.text("outcome.provenance.package_version", version, short);
    }
    if let Some(hash) = &mut provenance.freeze_hash {
        visit.text("outcome.provenance.freeze_hash", hash, short);
    }
    walk_evidence(&mut outcome.evidence, visit);
}

fn walk_evidence(evidence: &mut IterationEvidence, visit: &mut impl Visit) {
    let short = Cap::Start(MAX_SHORT_BYTES);
    if let Some(tests) = &mut evidence.tests {
        visit.texts(
            "evidence.tests.failing",
            &mut tests.failing,
            TestReport::MAX_NAMED,
            Cap::TestId,
        );
    }
    if let Some(stacks) = &mut evidence.stacks {
        visit.text("evidence.stacks", stacks, Cap::Start(MAX_STACKS_BYTES));
    }
    visit.list("evidence.tsan", &mut evidence.tsan, MAX_ITEMS);
    for warning in &mut evidence.tsan {
        visit.text("evidence.tsan.kind", &mut warning.kind, short);
        visit.text("evidence.tsan.signature", &mut warning.signature, short);
        visit.text("evidence.tsan.summary", &mut warning.summary, short);
        visit.list("evidence.tsan.frames", &mut warning.frames, MAX_ITEMS);
        for frame in &mut warning.frames {
            visit.text("evidence.tsan.frames.function", &mut frame.function, short);
            if let Some(location) = &mut frame.location {
                visit.text("evidence.tsan.frames.location", location, short);
            }
            visit.text("evidence.tsan.frames.binary", &mut frame.binary, short);
        }
    }
    if let Some(extensions) = &mut evidence.extensions {
        visit.texts("evidence.extensions.modules", &mut extensions.modules, MAX_ITEMS, short);
        visit.texts(
            "evidence.extensions.gil_enabled_by",
            &mut extensions.gil_enabled_by,
            MAX_ITEMS,
            short,
        );
        visit.list(
            "evidence.extensions.import_errors",
            &mut extensions.import_errors,
            MAX_ITEMS,
        );
        for (module, error) in &mut extensions.import_errors {
            visit.text("evidence.extensions.import_errors", module, short);
            visit.text("evidence.extensions.import_errors", error, short);
        }
        visit.list(
            "evidence.extensions.declarations",
            &mut extensions.declarations,
            MAX_ITEMS,
        );
        for declaration in &mut extensions.declarations {
            visit.text("evidence.extensions.declarations.file", &mut declaration.file, short);
            visit.text("evidence.extensions.declarations.kind", &mut declaration.kind, short);
            visit.text("evidence.extensions.declarations.text", &mut declaration.text, short);
        }
        if let Some(error) = &mut extensions.probe_error {
            visit.text("evidence.extensions.probe_error", error, short);
        }
    }
    if let Some(log_dir) = &mut evidence.log_dir {
        visit.text("evidence.log_dir", log_dir, short);
    }
    if let Some(sandbox) = &mut evidence.sandbox {
        visit.list("evidence.sandbox.limits_hit", &mut sandbox.limits_hit, MAX_ITEMS);
    }
    visit.texts("evidence.truncated", &mut evidence.truncated, MAX_NOTES, short);
}

fn walk_setup_failure(failure: &mut SetupFailure, visit: &mut impl Visit) {
    visit.text(
        "setup_failure.message",
        &mut failure.message,
        Cap::Start(MAX_SHORT_BYTES),
    );
    visit.text(
        "setup_failure.log_tail",
        &mut failure.log_tail,
        Cap::End(MAX_TAIL_BYTES),
    );
}

/// Cuts what is over its cap, noting each list it shortened.
#[derive(Default)]
struct Cutter {
    notes: Vec<String>,
}

impl Visit for Cutter {
    fn text(&mut self, _field: &'static str, text: &mut String, cap: Cap) {
        if text.len() > cap.max_bytes() {
            *text = cap.apply(text);
        }
    }

    fn list(&mut self, field: &'static str, list: &mut dyn Items, max: usize) {
        let count = list.count();
        if count > max {
            list.keep(max);
            self.notes.push(format!("{field}: kept {max} of {count} items"));
        }
    }
}

/// Finds the first field over its cap.
#[derive(Default)]
struct Checker {
    first: Option<String>,
}

impl Visit for Checker {
    fn text(&mut self, field: &'static str, text: &mut String, cap: Cap) {
        let max = cap.max_bytes();
        if self.first.is_none() && text.len() > max {
            self.first = Some(format!("{field} is {} bytes, over the {max}-byte limit", text.len()));
        }
    }

    fn list(&mut self, field: &'static str, list: &mut dyn Items, max: usize) {
        let count = list.count();
        if self.first.is_none() && count > max {
            self.first = Some(format!("{field} has {count} items, over the limit of {max}"));
        }
    }
}

/// A part of the evidence that can be halved until the whole fits.
type Sheddable = (&'static str, fn(&mut IterationEvidence) -> Option<&mut dyn Items>);

/// Halves the lists of `evidence`, least telling first, until its JSON fits
/// [`MAX_EVIDENCE_BYTES`], then cuts the stacks, then drops the notes; notes each part it
/// shortened. What is left then is a few short strings and numbers, far under the limit.
fn fit_evidence(evidence: &mut IterationEvidence) {
    const ORDER: [Sheddable; 6] = [
        ("evidence.extensions.import_errors", |e| {
            e.extensions.as_mut().map(|x| &mut x.import_errors as &mut dyn Items)
        }),
        ("evidence.extensions.declarations", |e| {
            e.extensions.as_mut().map(|x| &mut x.declarations as &mut dyn Items)
        }),
        ("evidence.tsan", |e| Some(&mut e.tsan as &mut dyn Items)),
        ("evidence.extensions.modules", |e| {
            e.extensions.as_mut().map(|x| &mut x.modules as &mut dyn Items)
        }),
        ("evidence.tests.failing", |e| {
            e.tests.as_mut().map(|x| &mut x.failing as &mut dyn Items)
        }),
        ("evidence.extensions.gil_enabled_by", |e| {
            e.extensions.as_mut().map(|x| &mut x.gil_enabled_by as &mut dyn Items)
        }),
    ];
    for (field, items) in ORDER {
        if evidence_bytes(evidence) <= MAX_EVIDENCE_BYTES {
            return;
        }
        let Some(count) = items(evidence).map(|list| list.count()) else {
            continue;
        };
        let mut kept = count;
        while kept > 0 && evidence_bytes(evidence) > MAX_EVIDENCE_BYTES {
            kept /= 2;
            if let Some(list) = items(evidence) {
                list.keep(kept);
            }
        }
        if kept < count {
            evidence.truncated.push(format!(
                "{field}: kept {kept} of {count} items to fit the evidence in {MAX_EVIDENCE_BYTES} bytes"
            ));
        }
    }
    if evidence_bytes(evidence) > MAX_EVIDENCE_BYTES
        && let Some(stacks) = &mut evidence.stacks
    {
        *stacks = cut_end(stacks, MAX_SHORT_BYTES);
        evidence.truncated.push(format!(
            "evidence.stacks: cut to {MAX_SHORT_BYTES} bytes to fit the evidence in {MAX_EVIDENCE_BYTES} bytes"
        ));
    }
    if evidence_bytes(evidence) <= MAX_EVIDENCE_BYTES {
        return;
    }
    // The oldest notes first: those this bounding added come last and say the most. Room is
    // left for the note that says so.
    const NOTE_ROOM: usize = 128;
    let mut dropped = 0;
    while evidence_bytes(evidence) + NOTE_ROOM > MAX_EVIDENCE_BYTES && !evidence.truncated.is_empty() {
        evidence.truncated.remove(0);
        dropped += 1;
    }
    if dropped > 0 {
        evidence.truncated.push(format!(
            "evidence.truncated: dropped {dropped} notes to fit the evidence in {MAX_EVIDENCE_BYTES} bytes"
        ));
    }
}

/// The size of `evidence` as the JSON it travels as, counted without keeping the JSON.
fn evidence_bytes(evidence: &IterationEvidence) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, evidence) {
        Ok(()) => count.0,
        Err(_) => usize::MAX,
    }
}

/// Bytes a cut's marker takes at most, for a string of `len` bytes: the count of bytes cut has
/// at most as many digits as `len`.
fn marker_room(len: usize) -> usize {
    end_marker(len).len()
}

fn end_marker(cut_bytes: usize) -> String {
    format!("… [truncated {cut_bytes} bytes]")
}

fn start_marker(cut_bytes: usize) -> String {
    format!("[truncated {cut_bytes} bytes] …")
}

#[cfg(test)]
mod tests;
