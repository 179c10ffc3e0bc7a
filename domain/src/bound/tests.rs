//! The bounds cut what is over them, visibly, and nothing else; the check agrees.

use super::*;
use crate::evidence::{Declaration, ExtensionReport, TsanAttribution, TsanFrame, TsanWarning};
use crate::outcome::{IterationStatus, Provenance, SetupStage};
use crate::spec::Mode;

fn outcome(evidence: IterationEvidence) -> IterationOutcome {
    IterationOutcome {
        iteration: 3,
        mode: Mode::Ft,
        status: IterationStatus::Crash,
        exit_code: None,
        signal: Some(11),
        duration_ms: 1200,
        cpu_time_ms: Some(900),
        max_rss_kb: Some(40_000),
        stalled: false,
        last_output_line: "tests/test_x.py::test_y".into(),
        stdout_tail: "collected 3 items\n".into(),
        stderr_tail: "Fatal Python error: Segmentation fault\n".into(),
        crash_signature: Some("Segmentation fault: x.py:1 f".into()),
        harness_error: None,
        worker_id: "w1".into(),
        attempt: 1,
        start_latency_ms: Some(4),
        evidence,
        provenance: Provenance {
            interpreter_build: "3.13.5t@1a2b3c4d5e6f".into(),
            package_version: Some("1.0".into()),
            freeze_hash: Some(format!("sha256:{}", "0".repeat(64))),
            started_at_ms: Some(1_700_000_000_000),
            ended_at_ms: Some(1_700_000_001_200),
        },
    }
}

fn warning(text: &str, n_frames: usize) -> TsanWarning {
    TsanWarning {
        kind: "data race".into(),
        signature: "0123456789abcdef".into(),
        summary: format!("SUMMARY: ThreadSanitizer: data race {text}"),
        frames: (0..n_frames)
            .map(|i| TsanFrame {
                function: format!("f{i}{text}"),
                location: Some(format!("{text}.c:{i}")),
                binary: format!("/venv/{text}.so"),
            })
            .collect(),
        attribution: TsanAttribution::Package,
        count: 1,
    }
}

fn typical_evidence() -> IterationEvidence {
    IterationEvidence {
        tests: Some(TestReport {
            total: 10,
            passed: 8,
            failed: 2,
            failing: vec!["t::a".into(), "t::b".into()],
            ..TestReport::default()
        }),
        stacks: Some("Thread 0x1 (most recent call first):\n  File \"a.py\", line 3 in f\n".into()),
        tsan: vec![warning("x", 4)],
        extensions: Some(ExtensionReport {
            modules: vec!["pkg._ext".into()],
            gil_enabled_by: vec!["pkg._ext".into()],
            gil_enabled_after_import: Some(true),
            ..ExtensionReport::default()
        }),
        log_dir: Some("/logs/run/pkg/ft-3-a1".into()),
        ..IterationEvidence::default()
    }
}

#[test]
fn a_result_within_the_bounds_comes_back_unchanged_and_passes_the_check() {
    let results = [
        JobResult::Iteration(outcome(typical_evidence())),
        JobResult::Iteration(outcome(IterationEvidence::default())),
        JobResult::SetupFailed(SetupFailure {
            stage: SetupStage::Install,
            message: "install command exited with 1".into(),
            log_tail: "error: no matching distribution".into(),
            duration_ms: 5,
            infrastructure: false,
        }),
    ];
    for result in results {
        assert_eq!(check(&result), Ok(()));
        assert_eq!(result.clone().bounded(), result);
    }
}

#[test]
fn a_cut_keeps_a_marked_start_or_end_on_a_character_boundary() {
    // 3-byte characters, so most cut points fall inside one.
    let text = "€".repeat(10_000);
    for max in [64, 100, 4096, 4097, 4098] {
        let head = cut_end(&text, max);
        assert!(head.len() <= max, "{max}: {}", head.len());
        let (kept, marker) = head.split_once("… [truncated ").expect("marker at the end");
        assert!(text.starts_with(kept));
        assert_eq!(marker, format!("{} bytes]", text.len() - kept.len()));

        let tail = cut_start(&text, max);
        assert!(tail.len() <= max, "{max}: {}", tail.len());
        let (marker, kept) = tail.split_once("] …").expect("marker at the start");
        assert!(text.ends_with(kept));
        assert_eq!(marker, format!("[truncated {} bytes", text.len() - kept.len()));
    }
    assert_eq!(cut_end("short", 5), "short");
    assert_eq!(cut_start("short", 5), "short");
}

#[test]
fn an_outcome_of_oversized_text_is_bounded_and_then_passes_the_check() {
    let long = "x".repeat(100_000);
    let mut evidence = typical_evidence();
    evidence.tests.as_mut().expect("tests").failing = (0..1_000).map(|i| format!("t::{i}{}", &long[..1_000])).collect();
    evidence.stacks = Some(format!("Thread 0x1 (most recent call first):\n{long}\n"));
    evidence.tsan = (0..1_100)
        .map(|i| warning(&format!("{i}{}", &long[..100]), 3))
        .collect();
    let extensions = evidence.extensions.as_mut().expect("extensions");
    extensions.modules = (0..5_000).map(|i| format!("pkg.m{i}")).collect();
    extensions.import_errors = vec![("pkg.m1".into(), long[..5_000].to_string()); 1_000];
    extensions.declarations = vec![
        Declaration {
            file: long.clone(),
            line: 1,
            kind: "Py_mod_gil".into(),
            text: long.clone(),
            gil_not_used: None,
        };
        50
    ];
    let mut oversized = outcome(evidence);
    oversized.stdout_tail = format!("start{long}end of stdout");
    oversized.stderr_tail = format!("{long}end of stderr");
    oversized.crash_signature = Some(long.clone());
    oversized.last_output_line = long.clone();
    oversized.provenance.package_version = Some(long.clone());
    let oversized = JobResult::Iteration(oversized);
    assert!(check(&oversized).is_err());

    let bounded = oversized.bounded();
    assert_eq!(check(&bounded), Ok(()));
    assert_eq!(
        bounded.clone().bounded(),
        bounded,
        "bounding twice changes nothing more"
    );
    let JobResult::Iteration(bounded) = bounded else {
        panic!("still an iteration")
    };
    assert!(bounded.stdout_tail.starts_with("[truncated ") && bounded.stdout_tail.ends_with("end of stdout"));
    assert!(bounded.stderr_tail.ends_with("end of stderr"));
    let signature = bounded.crash_signature.as_deref().expect("signature");
    assert!(
        signature.len() <= MAX_SHORT_BYTES && signature.contains("… [truncated "),
        "{signature}"
    );
    let version = bounded.provenance.package_version.as_deref().expect("version");
    assert!(
        version.len() <= MAX_SHORT_BYTES && version.ends_with(" bytes]"),
        "a version the package chose is bounded"
    );
    let evidence = &bounded.evidence;
    assert!(evidence_bytes(evidence) <= MAX_EVIDENCE_BYTES);
    let failing = &evidence.tests.as_ref().expect("tests").failing;
    assert!(failing.iter().all(|id| id.len() <= TestReport::MAX_ID_BYTES));
    // The lists least telling went first, and the notes say which.
    assert!(evidence.tsan.len() < 1_000);
    let notes = evidence.truncated.join("\n");
    let expected = [
        "evidence.tsan: kept 1000 of 1100 items",
        "evidence.tsan: kept ",
        "evidence.extensions.import_errors: kept ",
        "evidence.tests.failing: kept 200 of 1000 items",
    ];
    for field in expected {
        assert!(notes.contains(field), "{field} missing from {notes}");
    }
    assert_eq!(
        evidence.extensions.as_ref().expect("extensions").gil_enabled_by,
        vec!["pkg._ext".to_string()],
        "the verdict's own list is the last to go"
    );
}

#[test]
fn evidence_whose_json_escapes_swell_it_still_fits() {
    // Control characters take six bytes each in JSON: strings each within their cap can
    // still make evidence over the limit, and the last resorts must bring it back.
    let control = "\u{1}".repeat(MAX_SHORT_BYTES);
    let mut evidence = typical_evidence();
    evidence.stacks = Some("\u{1}".repeat(MAX_STACKS_BYTES));
    evidence.log_dir = Some(control.clone());
    evidence.tsan = (0..200).map(|_| warning(&control[..100], 2)).collect();
    evidence.truncated = vec![control.clone(); 20];
    let bounded = JobResult::Iteration(outcome(evidence)).bounded();
    assert_eq!(check(&bounded), Ok(()));
    assert_eq!(
        bounded.clone().bounded(),
        bounded,
        "bounding twice changes nothing more"
    );
    let JobResult::Iteration(bounded) = bounded else {
        panic!("still an iteration")
    };
    let notes = &bounded.evidence.truncated;
    assert!(
        notes.iter().any(|note| note.starts_with("evidence.stacks: cut")),
        "{notes:?}"
    );
    assert!(
        notes
            .last()
            .is_some_and(|note| note.starts_with("evidence.truncated: dropped")),
        "{notes:?}"
    );
}

#[test]
fn the_check_names_the_field_and_the_bound_it_breaks() {
    let over = |change: fn(&mut IterationOutcome)| {
        let mut result = outcome(typical_evidence());
        change(&mut result);
        check(&JobResult::Iteration(result)).expect_err("over a bound")
    };
    type Change = fn(&mut IterationOutcome);
    let cases: [(Change, String); 5] = [
        (
            |o| o.provenance.freeze_hash = Some("h".repeat(MAX_SHORT_BYTES + 1)),
            format!(
                "outcome.provenance.freeze_hash is {} bytes, over the {MAX_SHORT_BYTES}-byte limit",
                MAX_SHORT_BYTES + 1
            ),
        ),
        (
            |o| o.stderr_tail = "e".repeat(MAX_TAIL_BYTES + 1),
            format!(
                "outcome.stderr_tail is {} bytes, over the {MAX_TAIL_BYTES}-byte limit",
                MAX_TAIL_BYTES + 1
            ),
        ),
        (
            |o| o.evidence.tests.as_mut().expect("tests").failing[1] = "t".repeat(600),
            format!(
                "evidence.tests.failing is 600 bytes, over the {}-byte limit",
                TestReport::MAX_ID_BYTES
            ),
        ),
        (
            |o| o.evidence.tsan[0].frames = vec![TsanFrame::default(); MAX_ITEMS + 1],
            format!(
                "evidence.tsan.frames has {} items, over the limit of {MAX_ITEMS}",
                MAX_ITEMS + 1
            ),
        ),
        (
            |o| o.evidence.tsan = vec![warning(&"y".repeat(1_000), 5); 100],
            "the evidence is".to_string(),
        ),
    ];
    for (change, reason) in cases {
        let error = over(change);
        assert!(error.starts_with(&reason), "{error}");
        assert!(!error.contains('\n'), "{error}");
    }
    let failure = JobResult::SetupFailed(SetupFailure {
        stage: SetupStage::Import,
        message: "m".repeat(MAX_SHORT_BYTES + 2),
        log_tail: String::new(),
        duration_ms: 1,
        infrastructure: false,
    });
    assert_eq!(
        check(&failure),
        Err(format!(
            "setup_failure.message is {} bytes, over the {MAX_SHORT_BYTES}-byte limit",
            MAX_SHORT_BYTES + 2
        ))
    );
}

#[test]
fn a_setup_failure_keeps_the_end_of_its_log_and_the_start_of_its_message() {
    let failure = SetupFailure {
        stage: SetupStage::Install,
        message: format!("install command exited with 1: {}", "m".repeat(10_000)),
        log_tail: format!("{}the last line", "l".repeat(100_000)),
        duration_ms: 5,
        infrastructure: false,
    };
    let JobResult::SetupFailed(bounded) = JobResult::SetupFailed(failure).bounded() else {
        panic!("still a setup failure")
    };
    assert!(bounded.message.starts_with("install command exited with 1: "));
    assert!(bounded.message.len() <= MAX_SHORT_BYTES);
    assert!(bounded.log_tail.ends_with("the last line"));
    assert!(bounded.log_tail.len() <= MAX_TAIL_BYTES);
}
