//! Reading what Python's `faulthandler` writes: crash signatures and thread stacks.
//!
//! On a fatal signal faulthandler writes `Fatal Python error: <what>`, a blank line, then
//! one block per Python thread (`Current thread 0x… (most recent call first):` for the
//! thread that crashed, `Thread 0x… (most recent call first):` for the others, most recent
//! frame first), blocks separated by a blank line, and on newer versions an
//! `Extension modules: …` line. A dump on request (`faulthandler.register(SIGUSR1,
//! all_threads=True)`, `dump_traceback`, `dump_traceback_later`) writes the thread blocks
//! alone; `Current thread` is then whichever thread ran the handler, not a culprit.
//!
//! Things real output does that a parser must expect, all seen on CPython 3.13t:
//! - The error line is often not at the start of a line: pytest's progress (`tests/x.py .`)
//!   is flushed without a newline, so stderr reads `tests/x.py .Fatal Python error: …`.
//! - Two dumps in a row are not separated at all: the second dump's first `Thread` line
//!   directly follows the first dump's last frame.
//! - Threads other than the crashing one are wherever a race left them, so only the
//!   crashing thread's stack can make a stable signature.
//! - A thread blocked acquiring a lock shows no `acquire` frame: the lock is C code, so its
//!   top frame is the Python line that acquires (a `with lock:` or `lock.acquire()`).

use std::collections::BTreeSet;

use crate::evidence::thread_header_start;

/// The most [`thread_stacks`] keeps, in bytes; the start of the dump is kept. The evidence's
/// bound on the stacks, so what this reader keeps is never cut again.
pub const MAX_STACKS_BYTES: usize = crate::bound::MAX_STACKS_BYTES;

/// Frames a crash signature names at most.
const MAX_SIGNATURE_FRAMES: usize = 5;

/// Packages under `site-packages/` that are test machinery, not code under test.
const MACHINERY_PACKAGES: [&str; 8] = [
    "_pytest",
    "pytest",
    "pluggy",
    "xdist",
    "execnet",
    "pytest_run_parallel",
    "pytest_timeout",
    "pytest_rerunfailures",
];

/// What marks the end of a dump that was cut short.
const TRUNCATION_MARKER: &str = "<stacks truncated>\n";

/// A stable one-line signature of the last fatal error in `stderr`, or `None` when there is
/// no `Fatal Python error` in it.
///
/// The signature is the error (`Segmentation fault`, `Aborted`, …) followed by up to five
/// frames of the crashing thread, top first: `Segmentation fault: ctypes/__init__.py:538
/// string_at < crashy/core.py:5 deref_null < test_x.py:5 test_crash`. The same crash gives
/// the same signature from run to run and machine to machine:
/// - only the crashing thread counts (the `Current thread` block, or the only block);
/// - paths are cut to what follows `site-packages/`, to what follows the standard
///   library's `lib/pythonX.Y/` directory, or else to the file name, so temp dirs, venvs
///   and interpreter locations drop out; line numbers and function names stay;
/// - thread ids are dropped and hexadecimal addresses in the error message masked;
/// - below the top frame, frames in the standard library and in pytest/pluggy machinery
///   are skipped, as they say how the code was reached, not what crashed.
///
/// When the crashing thread cannot be told (several blocks, none current: the fault was in
/// a thread Python does not know) the signature says `<no current Python thread>`; when
/// there is no dump at all, it is the error alone.
pub fn crash_signature(stderr: &str) -> Option<String> {
    let parsed = parse(stderr);
    let fatal = parsed.fatal_errors.last()?;
    let message = mask_addresses(fatal.message);
    let Some(dump) = parsed.dumps.get(fatal.next_dump_idx) else {
        return Some(message);
    };
    let crashing_block = match dump.blocks.iter().find(|block| block.is_current) {
        Some(block) => block,
        None if dump.blocks.len() == 1 => &dump.blocks[0],
        None => return Some(format!("{message}: <no current Python thread>")),
    };
    let frames = signature_frames(&crashing_block.lines);
    if frames.is_empty() {
        return Some(message);
    }
    Some(format!("{message}: {}", frames.join(" < ")))
}

/// The thread blocks of the last faulthandler dump in `text`, as faulthandler wrote them
/// (thread ids included), or `None` when `text` holds no dump.
///
/// Meant for storing the stuck stacks of a hung test run after sending it the dump signal.
/// Kept to [`MAX_STACKS_BYTES`]: a longer dump is cut at a line end and marked
/// `<stacks truncated>`.
pub fn thread_stacks(text: &str) -> Option<String> {
    let parsed = parse(text);
    let dump = parsed.dumps.last()?;
    let mut rendered = String::new();
    for (block_idx, block) in dump.blocks.iter().enumerate() {
        if block_idx > 0 {
            rendered.push('\n');
        }
        rendered.push_str(block.header);
        rendered.push('\n');
        for line in &block.lines {
            rendered.push_str(line);
            rendered.push('\n');
        }
    }
    if dump.more_threads {
        rendered.push_str("\n...\n");
    }
    Some(truncate_at_line(rendered, MAX_STACKS_BYTES))
}

/// A `Fatal Python error` line and where its dump would be.
#[derive(Debug)]
struct FatalError<'a> {
    message: &'a str,
    /// Index in [`Parsed::dumps`] of the first dump after the error line.
    next_dump_idx: usize,
}

/// One faulthandler dump: the blocks of all threads written by one call.
#[derive(Debug, Default)]
struct Dump<'a> {
    blocks: Vec<Block<'a>>,
    /// Whether faulthandler stopped listing threads (`...` after the 100th).
    more_threads: bool,
}

/// One thread's block: its header and its frame lines, top frame first.
#[derive(Debug)]
struct Block<'a> {
    /// The header from `Thread`, `Current thread` or `Stack` on, without leading junk.
    header: &'a str,
    is_current: bool,
    thread_id: Option<&'a str>,
    /// Frame lines as written, with their two-space indent.
    lines: Vec<&'a str>,
}

#[derive(Debug, Default)]
struct Parsed<'a> {
    fatal_errors: Vec<FatalError<'a>>,
    dumps: Vec<Dump<'a>>,
}

/// Where the parser is relative to the thread blocks it has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not in a dump: a header here starts a new one.
    Outside,
    /// After a header or a frame line of the last block.
    InBlock,
    /// After one blank line following a block: a header here continues the dump.
    AfterBlank,
}

/// Splits text into fatal error lines and dumps, tolerating other output around them.
fn parse(text: &str) -> Parsed<'_> {
    let mut parsed = Parsed::default();
    let mut state = State::Outside;
    for line in text.lines() {
        if let Some(message) = fatal_message(line) {
            parsed.fatal_errors.push(FatalError {
                message,
                next_dump_idx: parsed.dumps.len(),
            });
            state = State::Outside;
        } else if let Some(start) = thread_header_start(line) {
            let block = new_block(line[start..].trim_end());
            let continues = state == State::AfterBlank && parsed.dumps.last().is_some_and(|dump| dump.accepts(&block));
            if !continues {
                parsed.dumps.push(Dump::default());
            }
            if let Some(dump) = parsed.dumps.last_mut() {
                dump.blocks.push(block);
            }
            state = State::InBlock;
        } else if state == State::InBlock && is_block_line(line) {
            let block = parsed.dumps.last_mut().and_then(|dump| dump.blocks.last_mut());
            if let Some(block) = block {
                block.lines.push(line.trim_end());
            }
        } else if line.trim().is_empty() {
            state = match state {
                State::InBlock => State::AfterBlank,
                State::AfterBlank | State::Outside => State::Outside,
            };
        } else {
            if state == State::AfterBlank
                && line.trim_end() == "..."
                && let Some(dump) = parsed.dumps.last_mut()
            {
                dump.more_threads = true;
            }
            state = State::Outside;
        }
    }
    parsed
}

impl Dump<'_> {
    /// Whether `block` can belong to this dump: one dump names each thread once and has at
    /// most one current thread, so a repeat means a new dump began.
    fn accepts(&self, block: &Block<'_>) -> bool {
        let seen_ids: BTreeSet<&str> = self.blocks.iter().filter_map(|b| b.thread_id).collect();
        let repeats_id = block.thread_id.is_some_and(|id| seen_ids.contains(id));
        let second_current = block.is_current && self.blocks.iter().any(|b| b.is_current);
        !repeats_id && !second_current
    }
}

/// The message of a `Fatal Python error: …` line, wherever on the line it starts.
fn fatal_message(line: &str) -> Option<&str> {
    const PREFIX: &str = "Fatal Python error: ";
    let start = line.find(PREFIX)?;
    Some(line[start + PREFIX.len()..].trim())
}

/// Builds a block from its header, without the leading junk.
fn new_block(header: &str) -> Block<'_> {
    let is_current = header.starts_with("Current thread ") || header.starts_with("Stack ");
    let thread_id = header.find("0x").map(|start| {
        let digits = &header[start + 2..];
        let end = digits.find(|c: char| !c.is_ascii_hexdigit()).unwrap_or(digits.len());
        &header[start..start + 2 + end]
    });
    Block {
        header,
        is_current,
        thread_id,
        lines: Vec::new(),
    }
}

/// Whether `line` is one faulthandler writes inside a block: a frame, or a two-space
/// indented note like `<no Python frame>`, `<truncated rest of calls>`, `...` or
/// `Garbage-collecting`.
fn is_block_line(line: &str) -> bool {
    let Some(rest) = line.strip_prefix("  ") else {
        return false;
    };
    let rest = rest.trim_end();
    parse_frame(line).is_some()
        || (rest.starts_with('<') && rest.ends_with('>'))
        || rest == "..."
        || rest == "Garbage-collecting"
}

/// One frame line: `  File "path", line 12 in name` (any part may be `???`).
#[derive(Debug, PartialEq, Eq)]
struct Frame<'a> {
    path: &'a str,
    line: &'a str,
    function: &'a str,
}

fn parse_frame(line: &str) -> Option<Frame<'_>> {
    let rest = line.strip_prefix("  File ")?.trim_end();
    let (path, rest) = match rest.strip_prefix('"') {
        // A path may itself hold `"`, so split at the last `", line `.
        Some(quoted) => {
            let end = quoted.rfind("\", line ")?;
            (&quoted[..end], &quoted[end + 1..])
        }
        None => rest.split_at(rest.find(", line ")?),
    };
    let rest = rest.strip_prefix(", line ")?;
    let (line_number, function) = rest.split_once(" in ")?;
    // Python's own tracebacks write `line 12, in name`; faulthandler has no comma.
    let is_line_number =
        line_number == "???" || (!line_number.is_empty() && line_number.bytes().all(|b| b.is_ascii_digit()));
    if !is_line_number {
        return None;
    }
    Some(Frame {
        path,
        line: line_number,
        function,
    })
}

/// The signature's frames from a block's lines: the top frame always, then frames outside
/// the standard library and test machinery, at most [`MAX_SIGNATURE_FRAMES`].
fn signature_frames(lines: &[&str]) -> Vec<String> {
    let mut frames = Vec::new();
    for line in lines {
        if frames.len() == MAX_SIGNATURE_FRAMES {
            break;
        }
        let is_top = frames.is_empty();
        match parse_frame(line) {
            Some(frame) => {
                let (path, is_machinery) = normalise_path(frame.path);
                if is_top || !is_machinery {
                    frames.push(format!("{path}:{} {}", frame.line, frame.function));
                }
            }
            // `<no Python frame>`, `<truncated rest of calls>` and the like say something.
            None => {
                let note = line.trim();
                if note.starts_with('<') {
                    frames.push(note.to_owned());
                }
            }
        }
    }
    frames
}

/// A path cut to its stable part, and whether it is standard library or test machinery.
fn normalise_path(path: &str) -> (String, bool) {
    if path.starts_with('<') {
        // `<frozen runpy>`, `<string>`, `<stdin>`: not files, already stable.
        return (path.to_owned(), path.starts_with("<frozen "));
    }
    let path = path.replace('\\', "/");
    for marker in ["/site-packages/", "/dist-packages/"] {
        if let Some(start) = path.rfind(marker) {
            let relative = &path[start + marker.len()..];
            let top_level = relative.split('/').next().unwrap_or(relative);
            let top_level = top_level.strip_suffix(".py").unwrap_or(top_level);
            return (relative.to_owned(), MACHINERY_PACKAGES.contains(&top_level));
        }
    }
    if let Some(relative) = stdlib_relative(&path) {
        return (relative.to_owned(), true);
    }
    let mut components = path.rsplit('/');
    let file_name = components.next().unwrap_or(&path);
    // A package's `__init__.py` is only told apart by its directory.
    match (file_name, components.next()) {
        ("__init__.py" | "__main__.py", Some(parent)) if !parent.is_empty() => (format!("{parent}/{file_name}"), false),
        _ => (file_name.to_owned(), false),
    }
}

/// The part of a standard library path after `lib/pythonX.Y[t]/`, if it is one.
fn stdlib_relative(path: &str) -> Option<&str> {
    let mut search_from = 0;
    while let Some(found) = path[search_from..].find("/lib/python") {
        let start = search_from + found + "/lib/".len();
        let rest = &path[start..];
        let (directory, relative) = rest.split_once('/')?;
        let version = directory.strip_prefix("python").unwrap_or_default();
        let looks_like_version = version.starts_with(|c: char| c.is_ascii_digit())
            && version.contains('.')
            && version
                .chars()
                .all(|c| c.is_ascii_digit() || c == '.' || c.is_ascii_lowercase());
        if looks_like_version {
            return Some(relative);
        }
        search_from = start;
    }
    None
}

/// Masks hexadecimal numbers (addresses, thread ids) so the message is stable.
fn mask_addresses(message: &str) -> String {
    let mut masked = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find("0x") {
        masked.push_str(&rest[..start]);
        let digits = &rest[start + 2..];
        let end = digits.find(|c: char| !c.is_ascii_hexdigit()).unwrap_or(digits.len());
        masked.push_str(if end == 0 { "0x" } else { "0x?" });
        rest = &digits[end..];
    }
    masked.push_str(rest);
    masked
}

/// Cuts `text` to at most `max_bytes`, at a line end, marking the cut.
fn truncate_at_line(mut text: String, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text;
    }
    let budget = max_bytes.saturating_sub(TRUNCATION_MARKER.len());
    // `\n` is one byte in UTF-8, so the byte after it is a char boundary.
    let cut = text.as_bytes()[..budget]
        .iter()
        .rposition(|byte| *byte == b'\n')
        .map_or(0, |newline_idx| newline_idx + 1);
    text.truncate(cut);
    text.push_str(TRUNCATION_MARKER);
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::count_threads;

    // Samples are stderr of CPython 3.13.5t (free-threaded) run with `-X faulthandler`,
    // trimmed only where noted.

    /// `python3 -X faulthandler -c 'import ctypes; ctypes.string_at(0)'`.
    const SEGFAULT_IN_MAIN: &str = r#"Fatal Python error: Segmentation fault

Current thread 0x00007faaf76e5740 (most recent call first):
  File "/opt/python3.13t/lib/python3.13t/ctypes/__init__.py", line 538 in string_at
  File "<string>", line 1 in <module>
"#;

    /// `os.abort()` in a `threading.Thread` while the main thread starts it.
    const ABORT_IN_THREAD: &str = r#"Fatal Python error: Aborted

Current thread 0x00007f65fb70b6c0 (most recent call first):
  File "/tmp/h1fh/abort_thread.py", line 4 in work
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 994 in run
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 1043 in _bootstrap_inner
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 1014 in _bootstrap

Thread 0x00007f65fb767740 (most recent call first):
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 359 in wait
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 659 in wait
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 981 in start
  File "/tmp/h1fh/abort_thread.py", line 7 in <module>
"#;

    /// `ctypes.string_at(0)` in a thread, with another thread sleeping.
    const SEGFAULT_IN_THREAD: &str = r#"Fatal Python error: Segmentation fault

Current thread 0x00007f3fc7f126c0 (most recent call first):
  File "/opt/python3.13t/lib/python3.13t/ctypes/__init__.py", line 538 in string_at
  File "/tmp/h1fh/segv_thread.py", line 4 in work
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 994 in run
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 1043 in _bootstrap_inner
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 1014 in _bootstrap

Thread 0x00007f3fc87136c0 (most recent call first):
  File "/tmp/h1fh/segv_thread.py", line 7 in idle
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 994 in run
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 1043 in _bootstrap_inner
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 1014 in _bootstrap

Thread 0x00007f3fc87b8740 (most recent call first):
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 359 in wait
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 659 in wait
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 981 in start
  File "/tmp/h1fh/segv_thread.py", line 11 in <module>
"#;

    /// pytest (stdout and stderr together) running a test that calls a site-packages
    /// package that segfaults, from `/tmp/ftsurvey-aaa111` with its venv inside; pytest
    /// frames in the middle of the stack were cut.
    const PYTEST_SEGFAULT_IN_MAIN_A: &str = r#"============================= test session starts ==============================
platform linux -- Python 3.13.5, pytest-9.2.0, pluggy-1.7.0
rootdir: /tmp/ftsurvey-aaa111/src
collected 1 item

tests/test_main.py Fatal Python error: Segmentation fault

Current thread 0x00007fa10fce9740 (most recent call first):
  File "/opt/python3.13t/lib/python3.13t/ctypes/__init__.py", line 538 in string_at
  File "/tmp/ftsurvey-aaa111/venv/lib/python3.13t/site-packages/crashy/core.py", line 5 in deref_null
  File "/tmp/ftsurvey-aaa111/venv/lib/python3.13t/site-packages/crashy/core.py", line 10 in work
  File "/tmp/ftsurvey-aaa111/src/tests/test_main.py", line 5 in test_crash_in_main
  File "/tmp/ftsurvey-aaa111/venv/lib/python3.13t/site-packages/_pytest/python.py", line 187 in pytest_pyfunc_call
  File "/tmp/ftsurvey-aaa111/venv/lib/python3.13t/site-packages/pluggy/_execution.py", line 147 in _multicall
  File "/tmp/ftsurvey-aaa111/venv/lib/python3.13t/site-packages/pluggy/_manager.py", line 183 in _hookexec
  File "/tmp/ftsurvey-aaa111/venv/lib/python3.13t/site-packages/pluggy/_caller.py", line 197 in __call__
  File "<frozen runpy>", line 88 in _run_code
  File "<frozen runpy>", line 198 in _run_module_as_main
"#;

    /// The same test run from `/tmp/ftsurvey-bbb222`.
    const PYTEST_SEGFAULT_IN_MAIN_B: &str = r#"============================= test session starts ==============================
platform linux -- Python 3.13.5, pytest-9.2.0, pluggy-1.7.0
rootdir: /tmp/ftsurvey-bbb222/src
collected 1 item

tests/test_main.py Fatal Python error: Segmentation fault

Current thread 0x00007f2203905740 (most recent call first):
  File "/opt/python3.13t/lib/python3.13t/ctypes/__init__.py", line 538 in string_at
  File "/tmp/ftsurvey-bbb222/venv/lib/python3.13t/site-packages/crashy/core.py", line 5 in deref_null
  File "/tmp/ftsurvey-bbb222/venv/lib/python3.13t/site-packages/crashy/core.py", line 10 in work
  File "/tmp/ftsurvey-bbb222/src/tests/test_main.py", line 5 in test_crash_in_main
  File "/tmp/ftsurvey-bbb222/venv/lib/python3.13t/site-packages/_pytest/python.py", line 187 in pytest_pyfunc_call
  File "/tmp/ftsurvey-bbb222/venv/lib/python3.13t/site-packages/pluggy/_execution.py", line 147 in _multicall
  File "/tmp/ftsurvey-bbb222/venv/lib/python3.13t/site-packages/pluggy/_manager.py", line 183 in _hookexec
  File "/tmp/ftsurvey-bbb222/venv/lib/python3.13t/site-packages/pluggy/_caller.py", line 197 in __call__
  File "<frozen runpy>", line 88 in _run_code
  File "<frozen runpy>", line 198 in _run_module_as_main
"#;

    /// pytest running a test whose thread segfaults in a package, with an extension module
    /// loaded; pytest frames in the middle of the main thread's stack were cut.
    const PYTEST_SEGFAULT_IN_THREAD: &str = r#"============================= test session starts ==============================
platform linux -- Python 3.13.5, pytest-9.2.0, pluggy-1.7.0
rootdir: /tmp/ftsurvey-aaa111/src
collected 2 items

tests/test_crash.py .Fatal Python error: Segmentation fault

Current thread 0x00007fdd773d86c0 (most recent call first):
  File "/opt/python3.13t/lib/python3.13t/ctypes/__init__.py", line 538 in string_at
  File "/tmp/h1ftvenv/lib/python3.13t/site-packages/crashy/core.py", line 5 in deref_null
  File "/tmp/h1ftvenv/lib/python3.13t/site-packages/crashy/core.py", line 10 in work
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 994 in run
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 1043 in _bootstrap_inner
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 1014 in _bootstrap

Thread 0x00007fdd77c3b740 (most recent call first):
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 1094 in join
  File "/tmp/ftsurvey-aaa111/src/tests/test_crash.py", line 14 in test_crash_in_thread
  File "/tmp/h1ftvenv/lib/python3.13t/site-packages/_pytest/python.py", line 187 in pytest_pyfunc_call
  File "/tmp/h1ftvenv/lib/python3.13t/site-packages/pluggy/_execution.py", line 147 in _multicall
  File "/tmp/h1ftvenv/lib/python3.13t/site-packages/pluggy/_manager.py", line 183 in _hookexec
  File "/tmp/h1ftvenv/lib/python3.13t/site-packages/pluggy/_caller.py", line 197 in __call__
  File "/tmp/h1ftvenv/lib/python3.13t/site-packages/_pytest/python.py", line 1798 in runtest
  File "/tmp/h1ftvenv/lib/python3.13t/site-packages/_pytest/runner.py", line 184 in pytest_runtest_call
  File "<frozen runpy>", line 88 in _run_code
  File "<frozen runpy>", line 198 in _run_module_as_main

Extension modules: markupsafe._speedups (total: 1)
"#;

    /// Two threads deadlocked by lock order (`with lock_a: … with lock_b:` against
    /// `with lock_b: … with lock_a:`), dumped by the process itself sending SIGUSR1 after
    /// `faulthandler.register(signal.SIGUSR1, all_threads=True)`.
    const DEADLOCK_DUMP: &str = r#"Thread 0x00007f82b7fff6c0 (most recent call first):
  File "/tmp/h1fh/deadlock.py", line 17 in second
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 994 in run
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 1043 in _bootstrap_inner
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 1014 in _bootstrap

Thread 0x00007f82bcad56c0 (most recent call first):
  File "/tmp/h1fh/deadlock.py", line 11 in first
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 994 in run
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 1043 in _bootstrap_inner
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 1014 in _bootstrap

Current thread 0x00007f82bcb31740 (most recent call first):
  File "/tmp/h1fh/deadlock.py", line 24 in <module>
"#;

    /// The same deadlock with the main thread joining, sent SIGUSR1 twice from outside:
    /// the second dump follows the first with no line between them.
    const DEADLOCK_TWO_DUMPS: &str = r#"Thread 0x00007f508725b6c0 (most recent call first):
  File "/tmp/h1fh/deadlock_ext.py", line 17 in second
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 994 in run
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 1043 in _bootstrap_inner
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 1014 in _bootstrap

Thread 0x00007f5087a606c0 (most recent call first):
  File "/tmp/h1fh/deadlock_ext.py", line 11 in first
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 994 in run
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 1043 in _bootstrap_inner
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 1014 in _bootstrap

Current thread 0x00007f5087abc740 (most recent call first):
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 1094 in join
  File "/tmp/h1fh/deadlock_ext.py", line 23 in <module>
Thread 0x00007f508725b6c0 (most recent call first):
  File "/tmp/h1fh/deadlock_ext.py", line 17 in second
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 994 in run
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 1043 in _bootstrap_inner
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 1014 in _bootstrap

Thread 0x00007f5087a606c0 (most recent call first):
  File "/tmp/h1fh/deadlock_ext.py", line 11 in first
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 994 in run
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 1043 in _bootstrap_inner
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 1014 in _bootstrap

Current thread 0x00007f5087abc740 (most recent call first):
  File "/opt/python3.13t/lib/python3.13t/threading.py", line 1094 in join
  File "/tmp/h1fh/deadlock_ext.py", line 23 in <module>
"#;

    #[test]
    fn segfault_in_main_thread_keeps_the_stdlib_top_frame() {
        assert_eq!(
            crash_signature(SEGFAULT_IN_MAIN).as_deref(),
            Some("Segmentation fault: ctypes/__init__.py:538 string_at < <string>:1 <module>")
        );
    }

    #[test]
    fn abort_in_thread_names_the_thread_that_aborted() {
        assert_eq!(
            crash_signature(ABORT_IN_THREAD).as_deref(),
            Some("Aborted: abort_thread.py:4 work")
        );
    }

    #[test]
    fn segfault_in_thread_ignores_the_other_threads() {
        assert_eq!(
            crash_signature(SEGFAULT_IN_THREAD).as_deref(),
            Some("Segmentation fault: ctypes/__init__.py:538 string_at < segv_thread.py:4 work")
        );
    }

    #[test]
    fn same_input_gives_same_signature() {
        for sample in [SEGFAULT_IN_MAIN, ABORT_IN_THREAD, PYTEST_SEGFAULT_IN_THREAD] {
            assert_eq!(crash_signature(sample), crash_signature(sample));
        }
    }

    #[test]
    fn different_crashes_give_different_signatures() {
        let signatures: BTreeSet<String> = [
            SEGFAULT_IN_MAIN,
            ABORT_IN_THREAD,
            SEGFAULT_IN_THREAD,
            PYTEST_SEGFAULT_IN_MAIN_A,
            PYTEST_SEGFAULT_IN_THREAD,
        ]
        .iter()
        .map(|sample| crash_signature(sample).expect("sample has a fatal error"))
        .collect();
        assert_eq!(signatures.len(), 5, "{signatures:#?}");
    }

    #[test]
    fn paths_differing_only_by_temp_dir_give_the_same_signature() {
        let signature_a = crash_signature(PYTEST_SEGFAULT_IN_MAIN_A);
        assert_eq!(signature_a, crash_signature(PYTEST_SEGFAULT_IN_MAIN_B));
        assert_eq!(
            signature_a.as_deref(),
            Some(
                "Segmentation fault: ctypes/__init__.py:538 string_at < crashy/core.py:5 deref_null \
                 < crashy/core.py:10 work < test_main.py:5 test_crash_in_main"
            )
        );
    }

    #[test]
    fn fatal_error_after_pytest_progress_on_the_same_line_is_found() {
        assert_eq!(
            crash_signature(PYTEST_SEGFAULT_IN_THREAD).as_deref(),
            Some(
                "Segmentation fault: ctypes/__init__.py:538 string_at < crashy/core.py:5 deref_null \
                 < crashy/core.py:10 work"
            )
        );
    }

    #[test]
    fn signature_keeps_at_most_five_frames() {
        let frames: String = (1..=8)
            .map(|depth| format!("  File \"/src/pkg/mod.py\", line {depth} in f{depth}\n"))
            .collect();
        let stderr = format!(
            "Fatal Python error: Segmentation fault\n\nCurrent thread 0x01 (most recent call first):\n{frames}"
        );
        assert_eq!(
            crash_signature(&stderr).as_deref(),
            Some("Segmentation fault: mod.py:1 f1 < mod.py:2 f2 < mod.py:3 f3 < mod.py:4 f4 < mod.py:5 f5")
        );
    }

    #[test]
    fn last_fatal_error_wins() {
        let stderr = format!("{SEGFAULT_IN_MAIN}\nsome other output\n{ABORT_IN_THREAD}");
        assert_eq!(crash_signature(&stderr), crash_signature(ABORT_IN_THREAD));
    }

    #[test]
    fn no_fatal_error_gives_no_signature() {
        assert_eq!(crash_signature(""), None);
        assert_eq!(crash_signature("1 passed in 0.01s\n"), None);
        // A dump on request is not a crash.
        assert_eq!(crash_signature(DEADLOCK_DUMP), None);
    }

    #[test]
    fn odd_frames_and_missing_stacks_still_give_a_signature() {
        // Synthetic, in faulthandler's formats for a thread with no Python frame, a thread
        // Python does not know, a cut stack and an address in the message.
        let cases = [
            (
                "Fatal Python error: Segmentation fault\n\nCurrent thread 0x00007f01 (most recent call first):\n  <no Python frame>\n",
                "Segmentation fault: <no Python frame>",
            ),
            (
                "Fatal Python error: Aborted\n\nThread 0x01 (most recent call first):\n  File \"/a/x.py\", line 1 in f\n\nThread 0x02 (most recent call first):\n  File \"/a/y.py\", line 2 in g\n",
                "Aborted: <no current Python thread>",
            ),
            (
                "Fatal Python error: Segmentation fault\n\nCurrent thread 0x01 (most recent call first):\n  File \"/a/x.py\", line 1 in f\n  <truncated rest of calls>\n",
                "Segmentation fault: x.py:1 f < <truncated rest of calls>",
            ),
            (
                "Fatal Python error: _PyObject_AssertFailed: object at 0x7f3b2c9ff6c0 freed\nPython runtime state: initialized\n\nStack (most recent call first):\n  File ???, line ??? in ???\n",
                "_PyObject_AssertFailed: object at 0x? freed: ???:??? ???",
            ),
            ("Fatal Python error: Segmentation fault\n\n", "Segmentation fault"),
        ];
        for (stderr, expected) in cases {
            assert_eq!(crash_signature(stderr).as_deref(), Some(expected), "{stderr}");
        }
    }

    #[test]
    fn paths_are_cut_to_their_stable_part() {
        let cases = [
            (
                "/tmp/ftsurvey-x/venv/lib/python3.13t/site-packages/foo/bar.py",
                "foo/bar.py",
                false,
            ),
            (
                "/tmp/v/lib/python3.13t/site-packages/_pytest/python.py",
                "_pytest/python.py",
                true,
            ),
            (
                "/usr/lib/python3/dist-packages/pluggy/_hooks.py",
                "pluggy/_hooks.py",
                true,
            ),
            ("/usr/lib/python3.13/threading.py", "threading.py", true),
            (
                "/opt/py/lib/python3.13t/concurrent/futures/thread.py",
                "concurrent/futures/thread.py",
                true,
            ),
            ("/tmp/ftsurvey-abc/src/tests/test_x.py", "test_x.py", false),
            ("/tmp/ftsurvey-abc/src/pkg/__init__.py", "pkg/__init__.py", false),
            ("<frozen runpy>", "<frozen runpy>", true),
            ("<string>", "<string>", false),
        ];
        for (path, normalised, is_machinery) in cases {
            assert_eq!(normalise_path(path), (normalised.to_owned(), is_machinery), "{path}");
        }
    }

    #[test]
    fn deadlock_dump_shows_both_threads_at_their_lock_acquire() {
        let stacks = thread_stacks(DEADLOCK_DUMP).expect("dump has stacks");
        assert_eq!(count_threads(&stacks), 3);
        // The acquire is C code: each thread's top frame is its `with lock:` line.
        assert!(stacks.contains(
            "Thread 0x00007f82b7fff6c0 (most recent call first):\n  File \"/tmp/h1fh/deadlock.py\", line 17 in second\n"
        ));
        assert!(stacks.contains(
            "Thread 0x00007f82bcad56c0 (most recent call first):\n  File \"/tmp/h1fh/deadlock.py\", line 11 in first\n"
        ));
        assert!(stacks.starts_with("Thread 0x"));
        assert!(stacks.ends_with("line 24 in <module>\n"));
    }

    #[test]
    fn back_to_back_dumps_keep_only_the_last() {
        let stacks = thread_stacks(DEADLOCK_TWO_DUMPS).expect("dump has stacks");
        assert_eq!(count_threads(DEADLOCK_TWO_DUMPS), 6);
        assert_eq!(count_threads(&stacks), 3);
        assert_eq!(stacks.matches("line 17 in second").count(), 1);
        assert_eq!(stacks.matches("line 11 in first").count(), 1);
        assert_eq!(stacks.matches("line 1094 in join").count(), 1);
    }

    #[test]
    fn stacks_of_a_crash_leave_out_the_surrounding_output() {
        let stacks = thread_stacks(PYTEST_SEGFAULT_IN_THREAD).expect("dump has stacks");
        assert!(stacks.starts_with("Current thread 0x00007fdd773d86c0 (most recent call first):\n"));
        assert!(!stacks.contains("Fatal Python error"));
        assert!(!stacks.contains("Extension modules"));
        assert_eq!(count_threads(&stacks), 2);
    }

    #[test]
    fn text_without_a_dump_has_no_stacks() {
        assert_eq!(thread_stacks(""), None);
        assert_eq!(
            thread_stacks("Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"),
            None
        );
        assert_eq!(count_threads(""), 0);
    }

    #[test]
    fn notes_inside_blocks_and_the_too_many_threads_marker_are_kept() {
        // Synthetic, in faulthandler's formats: a thread collecting garbage, and the `...`
        // written after the 100th thread.
        let text = "Current thread 0x01 (most recent call first):\n  Garbage-collecting\n  File \"/a/x.py\", line 3 in f\n\nThread 0x02 (most recent call first):\n  <no Python frame>\n\n...\n";
        let stacks = thread_stacks(text).expect("dump has stacks");
        assert_eq!(stacks, text);
        assert_eq!(count_threads(&stacks), 2);
    }

    #[test]
    fn python_traceback_lines_are_not_frames() {
        assert_eq!(parse_frame("  File \"/a/x.py\", line 1, in <module>"), None);
        assert_eq!(
            parse_frame("  File \"/a/x.py\", line 1 in <module>"),
            Some(Frame {
                path: "/a/x.py",
                line: "1",
                function: "<module>"
            })
        );
    }

    #[test]
    fn long_dumps_are_cut_at_a_line_and_keep_their_start() {
        let frames: String = (0..400)
            .map(|depth| format!("  File \"/src/pkg/deep_module_name.py\", line {depth} in recurse\n"))
            .collect();
        let blocks: Vec<String> = (0..20)
            .map(|thread_idx| format!("Thread 0x{thread_idx:016x} (most recent call first):\n{frames}"))
            .collect();
        let text = blocks.join("\n");
        assert!(text.len() > MAX_STACKS_BYTES);
        let stacks = thread_stacks(&text).expect("dump has stacks");
        assert!(stacks.len() <= MAX_STACKS_BYTES);
        assert!(stacks.starts_with("Thread 0x0000000000000000 (most recent call first):\n"));
        assert!(stacks.ends_with(&format!("in recurse\n{TRUNCATION_MARKER}")));
    }
}
