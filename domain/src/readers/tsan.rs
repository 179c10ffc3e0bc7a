//! Reading ThreadSanitizer reports out of a test run's captured output.
//!
//! TSAN writes each report to stderr as a block that opens with
//! `WARNING: ThreadSanitizer: <kind> (pid=N)` and closes with a `SUMMARY: ThreadSanitizer:`
//! line; everything else the tests print may be interleaved around and inside it. This
//! module finds those blocks, keeps the first stack of each, decides whose code it is in,
//! and folds reports with the same kind and top frames into one [`TsanWarning`].

use crate::evidence::{TsanAttribution, TsanFrame, TsanWarning};

/// The most frames kept per warning, top frame first.
pub const MAX_FRAMES: usize = 10;

/// How many top frames of the first stack identify a warning.
///
/// Deeper frames are mostly the eval loop and the test runner, which vary with the
/// Python call path rather than with the racing code, so they would split one race into
/// many signatures.
pub const SIGNATURE_FRAMES: usize = 5;

const WARNING_MARKER: &str = "WARNING: ThreadSanitizer: ";
const SUMMARY_MARKER: &str = "SUMMARY: ThreadSanitizer: ";

/// Finds every ThreadSanitizer report in `text` and folds them into distinct warnings.
///
/// Reports with the same kind and the same normalised top frames (function names and
/// binary basenames; no addresses, offsets or pids) become one warning whose `count` says
/// how many there were. A report cut off before its `SUMMARY:` line is kept with an empty
/// summary. Warnings come out in the order their first report appeared.
///
/// `package_markers` say which frames are the package's own: a marker containing `/` (an
/// install or build directory) matches a frame whose binary or source location contains
/// it; any other marker (an import name, or an extension file name such as
/// `_race.cpython-313t-x86_64-linux-gnu.so`) matches a frame whose binary basename is the
/// marker or starts with `marker.`, or whose source location has the marker as a whole
/// path component. TSAN prints only binary basenames, so a directory marker alone rarely
/// matches a binary; pass the import name and the extension file names as well.
pub fn parse_reports(text: &str, package_markers: &[&str]) -> Vec<TsanWarning> {
    let mut warnings: Vec<TsanWarning> = Vec::new();
    let mut current: Option<RawReport> = None;
    for line in text.lines() {
        if let Some(start) = line.find(WARNING_MARKER) {
            if let Some(report) = current.take() {
                add_report(&mut warnings, report, package_markers);
            }
            current = Some(RawReport::new(parse_kind(&line[start + WARNING_MARKER.len()..])));
            continue;
        }
        let Some(report) = current.as_mut() else {
            continue;
        };
        if let Some(start) = line.find(SUMMARY_MARKER) {
            report.summary = line[start..].trim_end().to_string();
            if let Some(report) = current.take() {
                add_report(&mut warnings, report, package_markers);
            }
        } else if let Some((frame_idx, frame)) = parse_frame(line) {
            report.push_frame(frame_idx, frame);
        }
    }
    if let Some(report) = current.take() {
        add_report(&mut warnings, report, package_markers);
    }
    warnings
}

/// One report as read, before it is folded into the warnings.
struct RawReport {
    kind: String,
    summary: String,
    /// The first stack (the racing access), top frame first.
    first_stack: Vec<TsanFrame>,
    /// Whether a later stack has started, so frames no longer belong to the first.
    first_stack_done: bool,
    /// Every frame of every stack in the report, for attribution.
    all_frames: Vec<TsanFrame>,
}

impl RawReport {
    fn new(kind: String) -> Self {
        RawReport {
            kind,
            summary: String::new(),
            first_stack: Vec::new(),
            first_stack_done: false,
            all_frames: Vec::new(),
        }
    }

    /// Stacks are told apart by their numbering restarting at `#0`, not by the header
    /// lines between them, so output interleaved into a stack does not end it early.
    fn push_frame(&mut self, frame_idx: u32, frame: TsanFrame) {
        if frame_idx == 0 && !self.first_stack.is_empty() {
            self.first_stack_done = true;
        }
        if !self.first_stack_done {
            self.first_stack.push(frame.clone());
        }
        self.all_frames.push(frame);
    }
}

fn add_report(warnings: &mut Vec<TsanWarning>, report: RawReport, package_markers: &[&str]) {
    let signature = signature(&report.kind, &report.first_stack);
    if let Some(existing) = warnings.iter_mut().find(|w| w.signature == signature) {
        existing.count = existing.count.saturating_add(1);
        if existing.summary.is_empty() {
            existing.summary = report.summary;
        }
        return;
    }
    let attribution = attribute(&report.all_frames, package_markers);
    let mut frames = report.first_stack;
    frames.truncate(MAX_FRAMES);
    warnings.push(TsanWarning {
        kind: report.kind,
        signature,
        summary: report.summary,
        frames,
        attribution,
        count: 1,
    });
}

/// `data race (pid=123)` → `data race`; kinds with their own parentheses keep them.
fn parse_kind(rest: &str) -> String {
    let rest = rest.trim();
    let without_pid = match rest.rfind(" (pid=") {
        Some(idx) if rest.ends_with(')') => &rest[..idx],
        _ => rest,
    };
    without_pid.trim().to_string()
}

/// Parses a stack line such as
/// `    #0 func /path/file.c:123:45 (binary.so+0x1234) (BuildId: ab12)`,
/// `    #1 <null> <null> (libpython3.13t.so.1.0+0xabc)` or `    #2 func (python3.13t+0x10)`.
fn parse_frame(line: &str) -> Option<(u32, TsanFrame)> {
    let trimmed = line.trim();
    let after_hash = trimmed.strip_prefix('#')?;
    let digits_len = after_hash.find(|c: char| !c.is_ascii_digit())?;
    if digits_len == 0 {
        return None;
    }
    let frame_idx: u32 = after_hash[..digits_len].parse().ok()?;
    let mut rest = after_hash[digits_len..].trim();
    if rest.is_empty() {
        return None;
    }

    if let Some(idx) = rest.rfind(" (BuildId: ")
        && rest.ends_with(')')
    {
        rest = rest[..idx].trim_end();
    }

    let mut binary = String::new();
    if rest.ends_with(')')
        && let Some(open) = rest.rfind('(')
        && (open == 0 || rest[..open].ends_with(' '))
    {
        let module = &rest[open + 1..rest.len() - 1];
        binary = match module.rfind("+0x") {
            Some(plus) => module[..plus].to_string(),
            None if module.starts_with("0x") => String::new(),
            None => module.to_string(),
        };
        rest = rest[..open].trim_end();
    }

    let (function, location) = match rest.rsplit_once(' ') {
        Some((function, "<null>")) => (function.trim_end(), None),
        Some((function, last)) if looks_like_location(last) => (function.trim_end(), Some(last.to_string())),
        _ => (rest, None),
    };
    let function = if function.is_empty() { "<null>" } else { function };
    Some((
        frame_idx,
        TsanFrame {
            function: function.to_string(),
            location,
            binary,
        },
    ))
}

/// `file.c:12`, `/a/b.c:12:3`: a path followed by a line number and maybe a column.
fn looks_like_location(token: &str) -> bool {
    let mut parts = token.rsplitn(3, ':');
    let last = parts.next().unwrap_or_default();
    let middle = parts.next();
    let is_number = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    match (middle, parts.next()) {
        (Some(line), Some(path)) if is_number(line) => is_number(last) && !path.is_empty(),
        (Some(path), _) => is_number(last) && !path.is_empty(),
        _ => false,
    }
}

/// A stable id for a warning: FNV-1a over the kind and the top frames' function names
/// and binary basenames, so it survives rebuilds (addresses) and reruns (pids).
fn signature(kind: &str, first_stack: &[TsanFrame]) -> String {
    let mut normalised = String::from(kind);
    for frame in first_stack.iter().take(SIGNATURE_FRAMES) {
        normalised.push('\n');
        normalised.push_str(&frame.function);
        normalised.push('|');
        normalised.push_str(basename(&frame.binary));
    }
    format!("{:016x}", fnv1a_64(normalised.as_bytes()))
}

fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET_BASIS, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(PRIME))
}

/// Package if any frame is the package's; CPython if every frame outside the sanitizer
/// runtime and the C library is the interpreter's; otherwise some other library.
///
/// The runtime and libc are left out because they sit under almost every report (the
/// `pthread_create` of a thread-creation stack, a `memcpy` interceptor) whoever called them.
fn attribute(frames: &[TsanFrame], package_markers: &[&str]) -> TsanAttribution {
    let is_package = frames
        .iter()
        .any(|frame| package_markers.iter().any(|marker| frame_matches_marker(frame, marker)));
    if is_package {
        return TsanAttribution::Package;
    }
    let mut own_frames = frames.iter().filter(|frame| !is_system_runtime(frame)).peekable();
    if own_frames.peek().is_some() && own_frames.all(is_interpreter) {
        TsanAttribution::Cpython
    } else {
        TsanAttribution::Other
    }
}

fn frame_matches_marker(frame: &TsanFrame, marker: &str) -> bool {
    let marker = marker.trim_end_matches('/');
    if marker.is_empty() {
        return false;
    }
    let location = frame.location.as_deref().unwrap_or_default();
    if marker.contains('/') {
        return frame.binary.contains(marker) || location.contains(marker);
    }
    let binary = basename(&frame.binary);
    binary == marker
        || binary.strip_prefix(marker).is_some_and(|after| after.starts_with('.'))
        || location.split('/').any(|component| component == marker)
}

fn is_interpreter(frame: &TsanFrame) -> bool {
    let binary = basename(&frame.binary);
    binary.starts_with("python3")
        || binary.starts_with("libpython3")
        || frame.binary.contains("/lib-dynload/")
        || frame.binary.contains("/lib/python3")
}

/// The sanitizer runtime, the C library and the dynamic loader.
fn is_system_runtime(frame: &TsanFrame) -> bool {
    const PREFIXES: [&str; 6] = [
        "libtsan",
        "libclang_rt.tsan",
        "libc.",
        "libc-",
        "libpthread",
        "ld-linux",
    ];
    let binary = basename(&frame.binary);
    PREFIXES.iter().any(|prefix| binary.starts_with(prefix))
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real report from the ftfix-tsan-race suite (stacks trimmed), with pytest's
    /// progress dots and a stray line interleaved as they are when stderr and stdout mix.
    const PACKAGE_RACE: &str = "\
============================= test session starts ==============================
tests/test_race.py ==================
WARNING: ThreadSanitizer: data race (pid=17954)
  Read of size 8 at 0x7f2f1cf071a0 by thread T1:
    #0 ftfix_racy_increment src/ftfix_tsan_race/_race.c:15 (_race.cpython-313t-x86_64-linux-gnu.so+0x11ba)
    #1 bump src/ftfix_tsan_race/_race.c:26 (_race.cpython-313t-x86_64-linux-gnu.so+0x1247)
    #2 cfunction_vectorcall_O Objects/methodobject.c:512 (python3.13t+0x1d6c5a)
    #3 _PyObject_VectorcallTstate Include/internal/pycore_call.h:168 (python3.13t+0x133d5d)
..
    #4 PyObject_Vectorcall Objects/call.c:327 (python3.13t+0x133d5d)
    #5 _PyEval_EvalFrameDefault Python/generated_cases.c.h:813 (python3.13t+0x85ec4)
    #6 _PyEval_EvalFrame Include/internal/pycore_ceval.h:119 (python3.13t+0x3417c5)
    #7 _PyEval_Vector Python/ceval.c:1816 (python3.13t+0x3417c5)
    #8 _PyFunction_Vectorcall Objects/call.c:413 (python3.13t+0x134137)
    #9 _PyObject_VectorcallTstate Include/internal/pycore_call.h:168 (python3.13t+0x138d48)
    #10 method_vectorcall Objects/classobject.c:70 (python3.13t+0x138d48)
    #11 _PyVectorcall_Call Objects/call.c:273 (python3.13t+0x13629a)
    #12 _PyObject_Call Objects/call.c:348 (python3.13t+0x136740)
    #13 PyObject_Call Objects/call.c:373 (python3.13t+0x136740)
    #14 thread_run Modules/_threadmodule.c:343 (python3.13t+0x4de9e1)
    #15 pythread_wrapper Python/thread_pthread.h:243 (python3.13t+0x41ac15)

  Previous write of size 8 at 0x7f2f1cf071a0 by thread T4:
    #0 ftfix_racy_increment src/ftfix_tsan_race/_race.c:15 (_race.cpython-313t-x86_64-linux-gnu.so+0x11d4)
    #1 bump src/ftfix_tsan_race/_race.c:26 (_race.cpython-313t-x86_64-linux-gnu.so+0x1247)
    #2 cfunction_vectorcall_O Objects/methodobject.c:512 (python3.13t+0x1d6c5a)

  Location is global 'ftfix_counter' of size 8 at 0x7f2f1cf071a0 (_race.cpython-313t-x86_64-linux-gnu.so+0x41a0)

  Thread T1 (tid=17957, running) created by main thread at:
    #0 pthread_create ../../../../src/libsanitizer/tsan/tsan_interceptors_posix.cpp:1001 (libtsan.so.2+0x5e686)
    #1 do_start_joinable_thread Python/thread_pthread.h:290 (python3.13t+0x41b03a)
    #2 PyThread_start_joinable_thread Python/thread_pthread.h:332 (python3.13t+0x41b03a)

SUMMARY: ThreadSanitizer: data race src/ftfix_tsan_race/_race.c:15 in ftfix_racy_increment
==================
..                                                                       [100%]
2 passed in 0.53s
ThreadSanitizer: reported 1 warnings
";

    /// A real interpreter-internal report, from pip's build-dependency subprocess run
    /// without the suppression file (stacks trimmed).
    const CPYTHON_RACE: &str = "\
==================
WARNING: ThreadSanitizer: data race (pid=15133)
  Write of size 8 at 0x557d3d040740 by main thread:
    #0 set_allocator_unlocked Objects/obmalloc.c:862 (python3.13t+0x209d1c)
    #1 set_allocator_unlocked Objects/obmalloc.c:858 (python3.13t+0x209d1c)
    #2 set_default_allocator_unlocked Objects/obmalloc.c:481 (python3.13t+0x209d1c)
    #3 _PyMem_SetDefaultAllocator Objects/obmalloc.c:500 (python3.13t+0x209d1c)
    #4 _PyImport_Fini Python/import.c:4032 (python3.13t+0x3b4103)
    #5 _Py_Finalize Python/pylifecycle.c:2171 (python3.13t+0x3e9e9c)

  Previous read of size 8 at 0x557d3d040740 by thread T2:
    #0 PyMem_RawFree Objects/obmalloc.c:971 (python3.13t+0x20b6b1)
    #1 ThreadHandle_decref Modules/_threadmodule.c:246 (python3.13t+0x4dc3f6)
    #2 ThreadHandle_decref Modules/_threadmodule.c:225 (python3.13t+0x4dec9c)
    #3 thread_run Modules/_threadmodule.c:368 (python3.13t+0x4dec9c)
    #4 pythread_wrapper Python/thread_pthread.h:243 (python3.13t+0x41ac15)

  Location is global '_PyRuntime' of size 328320 at 0x557d3d040480 (python3.13t+0x713740)

  Thread T2 (tid=15871, finished) created by main thread at:
    #0 pthread_create ../../../../src/libsanitizer/tsan/tsan_interceptors_posix.cpp:1001 (libtsan.so.2+0x5e686)
    #1 do_start_joinable_thread Python/thread_pthread.h:290 (python3.13t+0x41b03a)

SUMMARY: ThreadSanitizer: data race Objects/obmalloc.c:862 in set_allocator_unlocked
==================
";

    const RACE_MARKERS: [&str; 2] = ["/venv/lib/python3.13t/site-packages/ftfix_tsan_race", "ftfix_tsan_race"];

    fn frame(function: &str, location: Option<&str>, binary: &str) -> TsanFrame {
        TsanFrame {
            function: function.to_string(),
            location: location.map(str::to_string),
            binary: binary.to_string(),
        }
    }

    /// The same report as another process would print it: other pid, addresses, offsets.
    fn as_another_process(report: &str) -> String {
        report
            .replace("pid=17954", "pid=20001")
            .replace("0x7f2f1cf071a0", "0x7f11aa0071a0")
            .replace("+0x11ba)", "+0x11d4)")
    }

    #[test]
    fn a_package_race_amid_pytest_output_is_parsed_and_attributed_to_the_package() {
        let warnings = parse_reports(PACKAGE_RACE, &RACE_MARKERS);
        assert_eq!(warnings.len(), 1);
        let warning = &warnings[0];
        assert_eq!(warning.kind, "data race");
        assert_eq!(
            warning.summary,
            "SUMMARY: ThreadSanitizer: data race src/ftfix_tsan_race/_race.c:15 in ftfix_racy_increment"
        );
        assert_eq!(warning.attribution, TsanAttribution::Package);
        assert_eq!(warning.count, 1);
        assert_eq!(warning.signature.len(), 16);
        assert_eq!(warning.frames.len(), MAX_FRAMES);
        assert_eq!(
            warning.frames[..3],
            [
                frame(
                    "ftfix_racy_increment",
                    Some("src/ftfix_tsan_race/_race.c:15"),
                    "_race.cpython-313t-x86_64-linux-gnu.so"
                ),
                frame(
                    "bump",
                    Some("src/ftfix_tsan_race/_race.c:26"),
                    "_race.cpython-313t-x86_64-linux-gnu.so"
                ),
                frame(
                    "cfunction_vectorcall_O",
                    Some("Objects/methodobject.c:512"),
                    "python3.13t"
                ),
            ]
        );
    }

    #[test]
    fn an_interpreter_internal_race_is_attributed_to_cpython() {
        let warnings = parse_reports(CPYTHON_RACE, &RACE_MARKERS);
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].attribution, TsanAttribution::Cpython);
        assert_eq!(warnings[0].frames[0].function, "set_allocator_unlocked");
        assert_eq!(warnings[0].frames.len(), 6);
    }

    #[test]
    fn a_race_in_an_extension_that_is_not_the_package_is_attributed_to_other() {
        let warnings = parse_reports(PACKAGE_RACE, &["/venv/lib/python3.13t/site-packages/numpy", "numpy"]);
        assert_eq!(warnings[0].attribution, TsanAttribution::Other);
    }

    #[test]
    fn the_same_race_from_two_processes_is_one_warning_counted_twice() {
        let text = format!("{PACKAGE_RACE}{CPYTHON_RACE}{}", as_another_process(PACKAGE_RACE));
        let warnings = parse_reports(&text, &RACE_MARKERS);
        let counts: Vec<(&str, u32)> = warnings
            .iter()
            .map(|w| (w.frames[0].function.as_str(), w.count))
            .collect();
        assert_eq!(counts, [("ftfix_racy_increment", 2), ("set_allocator_unlocked", 1)]);
        assert_ne!(warnings[0].signature, warnings[1].signature);
        let alone = parse_reports(PACKAGE_RACE, &RACE_MARKERS);
        assert_eq!(warnings[0].signature, alone[0].signature);
    }

    #[test]
    fn a_report_cut_off_before_its_summary_keeps_what_was_printed() {
        let cut = PACKAGE_RACE
            .find("    #4 PyObject_Vectorcall")
            .expect("the fixture has frame #4");
        let text = format!("{CPYTHON_RACE}{}", &PACKAGE_RACE[..cut]);
        let warnings = parse_reports(&text, &RACE_MARKERS);
        assert_eq!(warnings.len(), 2);
        let truncated = &warnings[1];
        assert_eq!(truncated.kind, "data race");
        assert_eq!(truncated.summary, "");
        assert_eq!(truncated.frames.len(), 4);
        assert_eq!(truncated.attribution, TsanAttribution::Package);
    }

    #[test]
    fn a_report_interrupted_by_the_next_warning_is_closed_at_it() {
        let cut = PACKAGE_RACE
            .find("  Previous write")
            .expect("the fixture has a second stack");
        let text = format!("{}{CPYTHON_RACE}", &PACKAGE_RACE[..cut]);
        let warnings = parse_reports(&text, &RACE_MARKERS);
        assert_eq!(warnings.len(), 2);
        assert_eq!(warnings[0].summary, "");
        assert_eq!(warnings[0].frames.len(), MAX_FRAMES);
        assert_eq!(warnings[1].frames[0].function, "set_allocator_unlocked");
    }

    #[test]
    fn text_without_reports_yields_no_warnings() {
        let text = "2 passed in 0.39s\nThreadSanitizer: reported 0 warnings\n#0 not a frame\n";
        assert!(parse_reports(text, &RACE_MARKERS).is_empty());
    }

    #[test]
    fn kinds_lose_only_their_pid() {
        let cases = [
            ("data race (pid=12)", "data race"),
            ("heap-use-after-free (pid=3)", "heap-use-after-free"),
            (
                "lock-order-inversion (potential deadlock) (pid=99)",
                "lock-order-inversion (potential deadlock)",
            ),
            ("thread leak (pid=1)", "thread leak"),
            (
                "signal-unsafe call inside of a signal (pid=7)",
                "signal-unsafe call inside of a signal",
            ),
            ("data race", "data race"),
        ];
        for (rest, kind) in cases {
            assert_eq!(parse_kind(rest), kind, "{rest}");
        }
    }

    #[test]
    fn frame_lines_in_every_shape_are_parsed() {
        let cases = [
            (
                "    #0 set_allocator_unlocked Objects/obmalloc.c:862 (python3.13t+0x209d1c)",
                0,
                frame("set_allocator_unlocked", Some("Objects/obmalloc.c:862"), "python3.13t"),
            ),
            (
                "    #3 foo /src/foo.c:123:45 (libfoo.so.1+0x1234) (BuildId: 4e1a9b)",
                3,
                frame("foo", Some("/src/foo.c:123:45"), "libfoo.so.1"),
            ),
            (
                "    #1 <null> <null> (libpython3.13t.so.1.0+0xabc)",
                1,
                frame("<null>", None, "libpython3.13t.so.1.0"),
            ),
            (
                "    #2 PyObject_Call <null> (python3.13t+0x10)",
                2,
                frame("PyObject_Call", None, "python3.13t"),
            ),
            (
                "    #4 operator new(unsigned long) ../src/new_op.cc:12 (libstdc++.so.6+0x99)",
                4,
                frame(
                    "operator new(unsigned long)",
                    Some("../src/new_op.cc:12"),
                    "libstdc++.so.6",
                ),
            ),
            ("    #5 <null> <null> (0x7f1234567890)", 5, frame("<null>", None, "")),
        ];
        for (line, frame_idx, expected) in cases {
            assert_eq!(parse_frame(line), Some((frame_idx, expected)), "{line}");
        }
        for not_a_frame in ["#", "#x foo", "  Location is global 'x' (a.so+0x1)", "#0"] {
            assert_eq!(parse_frame(not_a_frame), None, "{not_a_frame}");
        }
    }

    #[test]
    fn a_short_import_name_does_not_claim_a_stdlib_module_that_contains_it() {
        let stdlib_json = frame(
            "encoder_listencode_obj",
            Some("./Modules/_json.c:1421"),
            "_json.cpython-313t-x86_64-linux-gnu.so",
        );
        assert!(!frame_matches_marker(&stdlib_json, "json"));
        let package_json = frame("x", None, "json.cpython-313t-x86_64-linux-gnu.so");
        assert!(frame_matches_marker(&package_json, "json"));
        let by_file_name = frame("x", None, "_race.cpython-313t-x86_64-linux-gnu.so");
        assert!(frame_matches_marker(
            &by_file_name,
            "_race.cpython-313t-x86_64-linux-gnu.so"
        ));
        assert!(!frame_matches_marker(&by_file_name, ""));
    }
}
