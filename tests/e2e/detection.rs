//! The free-threaded and ThreadSanitizer tier: every detection case as a fixture package, run
//! through the CLI on real builds, each checked for its category and its evidence.

use std::path::{Path, PathBuf};
use std::process::Command;

use domain::evidence::SandboxKind;
use domain::results::PackageRecord;

use crate::cli::{Survey, assert_success, category_of, free_threaded_python, ftsurvey};

/// The ThreadSanitizer build `tests/run.sh` makes; its absence fails the test.
fn tsan_python() -> PathBuf {
    let path = std::env::var_os("FTSURVEY_TEST_TSAN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_default();
    assert!(
        path.is_file(),
        "FTSURVEY_TEST_TSAN_PYTHON must name a ThreadSanitizer CPython (got {path:?}); run the tests with \
         tests/run.sh, which builds one with deploy/build-cpython.sh --tsan"
    );
    path
}

/// Processes whose command line matches `pattern`, as pgrep prints them.
pub(crate) fn running(pattern: &str) -> String {
    let found = Command::new("pgrep").args(["-af", pattern]).output().expect("pgrep");
    String::from_utf8_lossy(&found.stdout).into_owned()
}

fn survey(python: &Path, packages: &[&str], args: &[&str]) -> (Survey, Vec<PackageRecord>) {
    let survey = Survey::new();
    let output = survey
        .command(python)
        .arg("--packages")
        .arg(packages.join(","))
        .args(args)
        .output()
        .expect("run ftsurvey");
    assert_success(&output);
    let records = survey.records();
    assert_eq!(records.len(), packages.len(), "one line per package");
    // The detection cases hold with every iteration sealed: the default sandbox is bubblewrap
    // wherever it is on PATH, as tests/run.sh makes sure it is.
    for record in &records {
        for iteration in &record.iterations {
            let kind = iteration.sandbox.as_ref().map(|s| s.kind);
            assert_eq!(kind, Some(SandboxKind::Bwrap), "{}: {iteration:?}", record.package);
        }
    }
    (survey, records)
}

fn verdicts(records: &[PackageRecord]) -> String {
    records
        .iter()
        .map(|r| format!("{}: {} {:?}", r.package, r.category, r.evidence))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn one_iteration_cases_get_their_categories_and_evidence() {
    let packages = [
        "ftfix-deadlock",
        "ftfix-silent-cpu",
        "ftfix-chatty-forever",
        "ftfix-abort-thread",
        "ftfix-segfault",
        "ftfix-ext-fallback",
        "ftfix-ext-nogil",
        "ftfix-flood",
        "ftfix-grandchild",
        "ftfix-unittest",
        "ftfix-no-tests",
        "ftfix-hostile-evidence",
        "ftfix-hostile-text",
    ];
    let (survey_dir, records) = survey(
        &free_threaded_python(),
        &packages,
        &[
            "--iterations",
            "1",
            "--timeout",
            "60",
            "--stall-threshold",
            "10",
            "--workers",
            "2",
        ],
    );
    let all = verdicts(&records);
    let expected = [
        ("ftfix-deadlock", "deadlock"),
        ("ftfix-silent-cpu", "compatible"),
        ("ftfix-chatty-forever", "incompatible"),
        ("ftfix-abort-thread", "crash"),
        ("ftfix-segfault", "crash"),
        ("ftfix-ext-fallback", "compatible_gil_fallback"),
        ("ftfix-ext-nogil", "compatible"),
        ("ftfix-flood", "compatible"),
        ("ftfix-grandchild", "compatible"),
        ("ftfix-unittest", "compatible"),
        ("ftfix-no-tests", "harness_error"),
        ("ftfix-hostile-evidence", "compatible"),
        ("ftfix-hostile-text", "incompatible"),
    ];
    for (package, category) in expected {
        assert_eq!(category_of(&records, package).category, category, "{package}\n{all}");
    }

    // A lock-order deadlock: killed at the stall, with both threads' stacks.
    let deadlock = &category_of(&records, "ftfix-deadlock").iterations[0];
    assert_eq!((deadlock.status.as_str(), deadlock.stalled), ("deadlock", true));
    let stacks = deadlock.stacks.as_deref().expect("stacks dumped at the stall");
    assert!(
        stacks.contains("in first_a_then_b") && stacks.contains("in first_b_then_a"),
        "{stacks}"
    );
    // Judged at the stall, not at the 60 s timeout (that would be `timeout`, not stalled), and
    // not before the silence and idle CPU had lasted the ten-second threshold.
    let onset_to_verdict = deadlock.stall_detected_after_ms.expect("stall onset recorded");
    assert!(
        onset_to_verdict >= 10_000,
        "judged {onset_to_verdict} ms after the onset"
    );

    // Fifteen CPU seconds of silent work with a ten-second threshold is not a stall, and
    // the supervisor's CPU time counts them all. The fixture counts CPU, not wall time, so
    // a loaded machine stretches it without making it look idle.
    let silent = &category_of(&records, "ftfix-silent-cpu").iterations[0];
    assert!(silent.duration_ms >= 15_000 && !silent.stalled, "{silent:?}");
    assert!(silent.cpu_time_ms.unwrap_or(0) >= 15_000, "{silent:?}");

    // A line a second forever is a timeout, not a deadlock.
    let chatty = &category_of(&records, "ftfix-chatty-forever").iterations[0];
    assert_eq!(chatty.status, "timeout", "{chatty:?}");

    let abort = &category_of(&records, "ftfix-abort-thread").iterations[0];
    assert_eq!(abort.crash_signal.as_deref(), Some("SIGABRT"));
    let abort_signature = abort.crash_signature.as_deref().expect("signature");
    assert!(abort_signature.contains("_abort"), "{abort_signature}");
    let segv = &category_of(&records, "ftfix-segfault").iterations[0];
    let segv_signature = segv.crash_signature.as_deref().expect("signature");
    assert!(segv_signature.starts_with("Segmentation fault"), "{segv_signature}");
    assert_ne!(abort_signature, segv_signature);

    // It prints a forged probe report at import and at exit; the probe's own report wins.
    let fallback = category_of(&records, "ftfix-ext-fallback");
    assert_eq!(fallback.gil_fallback_modules, ["ftfix_ext_fallback._speedups"]);
    let nogil = category_of(&records, "ftfix-ext-nogil");
    let extensions = nogil.extensions.as_ref().expect("probed");
    assert_eq!(extensions.modules, ["ftfix_ext_nogil._speedups"]);
    assert!(extensions.gil_enabled_by.is_empty(), "{extensions:?}");
    assert_eq!(extensions.gil_enabled_after_import, Some(false));
    assert!(
        extensions
            .declarations
            .iter()
            .any(|d| d.kind == "Py_mod_gil" && d.gil_not_used == Some(true)),
        "{extensions:?}"
    );
    let tests = nogil.iterations[0].tests.as_ref().expect("JUnit results");
    assert!(tests.total >= 1 && tests.failed == 0, "{tests:?}");

    let flood = &category_of(&records, "ftfix-flood").iterations[0];
    assert!(flood.output_bytes >= 200_000_000, "{}", flood.output_bytes);
    assert!(flood.stdout_tail.len() <= 16 * 1024);

    let grandchild = &category_of(&records, "ftfix-grandchild").iterations[0];
    // The grandchild holds the pipes open: had the iteration waited for them it would have
    // timed out instead of passing.
    assert_eq!(grandchild.status, "pass", "{grandchild:?}");
    assert!(grandchild.leftover_processes >= 1, "{grandchild:?}");
    assert_eq!(running("sleep 3001"), "", "the grandchild outlived its iteration");

    // Its tests pass, then turn junit.xml into a symlink to /dev/zero and stderr.log into a
    // FIFO: neither is read (a worker that followed or opened them would never report), and
    // the iteration is judged on its exit alone.
    let hostile = &category_of(&records, "ftfix-hostile-evidence").iterations[0];
    assert_eq!(
        (hostile.status.as_str(), hostile.tests.as_ref()),
        ("pass", None),
        "{hostile:?}"
    );

    // 200 failing tests named with 100 KB each, then a last line of terminal escapes: the
    // outcome keeps 200 names of at most 512 bytes, and no verb prints a control character.
    let text = &category_of(&records, "ftfix-hostile-text").iterations[0];
    let tests = text.tests.as_ref().expect("the 20 MB JUnit report was read");
    assert_eq!(
        (tests.failed, tests.passed, tests.failing.len()),
        (200, 1, 200),
        "{tests:?}"
    );
    assert!(tests.failing.iter().all(|id| id.len() <= 512), "test ids are bounded");
    assert!(text.last_output_line.contains("owned"), "{text:?}");
    let folder = survey_dir.folder();
    let folder = folder.to_str().expect("utf-8 path");
    for args in [
        vec!["show", folder],
        vec!["flaky", folder],
        vec!["report", folder, "--format", "markdown"],
        vec!["report", folder, "--format", "text"],
        vec!["export", folder, "--format", "csv"],
    ] {
        let output = ftsurvey().args(&args).output().expect("verb");
        assert_success(&output);
        let printed = String::from_utf8_lossy(&output.stdout);
        assert!(
            !printed.chars().any(|c| c.is_control() && c != '\n' && c != '\t'),
            "{args:?} printed a control character"
        );
    }

    let unittest = &category_of(&records, "ftfix-unittest").iterations[0];
    let tests = unittest.tests.as_ref().expect("unittest summary");
    assert_eq!((tests.total, tests.passed), (2, 2), "{tests:?}");

    let no_tests = category_of(&records, "ftfix-no-tests");
    assert!(
        no_tests.evidence.iter().any(|e| e.contains("collected no tests")),
        "{:?}",
        no_tests.evidence
    );
}

#[test]
fn races_and_the_gil_comparison_over_many_iterations() {
    let packages = [
        "ftfix-race",
        "ftfix-gil-only",
        "ftfix-fail",
        "ftfix-crash-sometimes",
        "ftfix-pass",
    ];
    let (_survey, records) = survey(
        &free_threaded_python(),
        &packages,
        &[
            "--iterations",
            "12",
            "--compare-with-gil",
            "--timeout",
            "60",
            "--workers",
            "2",
        ],
    );
    let all = verdicts(&records);
    let expected = [
        ("ftfix-race", "intermittent", Some("ft_specific")),
        ("ftfix-gil-only", "incompatible", Some("ft_specific")),
        ("ftfix-fail", "incompatible", Some("pre_existing")),
        ("ftfix-crash-sometimes", "crash", None),
        ("ftfix-pass", "compatible", Some("none")),
    ];
    for (package, category, verdict) in expected {
        let record = category_of(&records, package);
        assert_eq!(record.category, category, "{package}\n{all}");
        if let Some(verdict) = verdict {
            let comparison = record.gil_comparison.as_ref().expect("compared with the GIL");
            assert_eq!(comparison.verdict.as_str(), verdict, "{package}: {comparison:?}");
        }
        assert_eq!(
            record.gil_enabled_iterations.as_ref().map(Vec::len),
            Some(12),
            "{package}"
        );
    }
    let race = category_of(&records, "ftfix-race");
    assert!(race.pass_count > 0 && race.fail_count > 0, "{race:?}");
    let comparison = race.gil_comparison.as_ref().expect("comparison");
    assert!(
        comparison
            .ft_only_failing_tests
            .iter()
            .any(|t| t.contains("test_unlocked_counter_keeps_every_increment")),
        "{comparison:?}"
    );
    let crashy = category_of(&records, "ftfix-crash-sometimes");
    assert!(crashy.pass_count > 0 && crashy.crash_count > 0, "{crashy:?}");
    assert_eq!(
        crashy.failure_signatures.len(),
        1,
        "the same crash, one signature: {crashy:?}"
    );
}

#[test]
fn a_data_race_in_an_extension_is_a_tsan_warning_attributed_to_it() {
    let (_survey, records) = survey(
        &tsan_python(),
        &["ftfix-tsan-race", "ftfix-pass"],
        &["--tsan", "--iterations", "2", "--timeout", "300", "--workers", "2"],
    );
    let all = verdicts(&records);
    let race = category_of(&records, "ftfix-tsan-race");
    assert_eq!(race.category, "tsan_warnings", "{all}");
    let warning = race
        .tsan_warnings
        .iter()
        .find(|w| w.kind == "data race")
        .unwrap_or_else(|| panic!("a data race: {:?}", race.tsan_warnings));
    assert_eq!(warning.attribution.as_str(), "package", "{warning:?}");
    assert!(warning.frames.iter().any(|f| f.binary.contains("_race")), "{warning:?}");
    assert_eq!(category_of(&records, "ftfix-pass").category, "compatible", "{all}");
}

#[test]
fn an_iteration_records_its_build_the_installed_version_the_freeze_hash_and_its_times() {
    let now_ms = || {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970");
        since.as_millis() as i64
    };
    let before_ms = now_ms();
    let (survey, records) = survey(
        &free_threaded_python(),
        &["ftfix-pass"],
        &["--iterations", "1", "--timeout", "120"],
    );
    let after_ms = now_ms();
    let meta: domain::results::RunMeta =
        serde_json::from_slice(&std::fs::read(survey.folder().join("ft_meta.json")).expect("ft_meta.json"))
            .expect("valid ft_meta.json");
    let profile = meta.interpreter.expect("the run's interpreter");
    let record = category_of(&records, "ftfix-pass");
    assert_eq!(record.category, "compatible", "{record:?}");
    let iteration = &record.iterations[0];
    assert_eq!(iteration.interpreter_build, profile.build_label(), "{iteration:?}");
    assert!(
        iteration
            .interpreter_build
            .starts_with(&format!("{}t@", profile.version_short))
    );
    assert_eq!(
        iteration.package_version.as_deref(),
        Some("0.1.0"),
        "the fixture's own version"
    );
    let hash = iteration.freeze_hash.as_deref().expect("a freeze hash");
    assert!(
        hash.len() == "sha256:".len() + 64 && hash.starts_with("sha256:"),
        "{hash}"
    );
    let (started, ended) = (
        iteration.started_at_ms.expect("started"),
        iteration.ended_at_ms.expect("ended"),
    );
    assert!(
        before_ms <= started && started <= ended && ended <= after_ms,
        "{started}..{ended} outside {before_ms}..{after_ms}"
    );
    assert!(
        (ended - started).abs_diff(iteration.duration_ms as i64) <= 1,
        "{started}..{ended} is not {} ms",
        iteration.duration_ms
    );
    let show = crate::cli::ftsurvey()
        .arg("show")
        .arg(survey.folder())
        .output()
        .expect("show");
    assert_success(&show);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(!text.contains("mixed"), "one build, one version: {text}");
}
