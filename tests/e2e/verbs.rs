//! The verbs that read a run (`show`, `flaky`, `compat`, `compare`, `report`, `export`) as a
//! user types them: on folders written here record by record, on the old tool's folder, on a
//! fixture run, and (HTML) in headless Chromium.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use domain::evidence::{ExtensionReport, TestReport};
use domain::results::{IterationRecord, PackageRecord, RunConfig, RunMeta};

use crate::cli::{Survey, assert_success, category_of, free_threaded_python, ftsurvey};
use crate::fleet::{serve_on_sqlite, spawn};

/// The folder the old tool wrote, kept as a fixture.
pub(crate) fn seed_folder() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/seed-results/ft_20260303_140000")
}

/// Runs `ftsurvey ARGS`, expects success, returns stdout.
pub(crate) fn verb(args: &[&str]) -> String {
    let output = ftsurvey().args(args).output().expect("run ftsurvey");
    assert_success(&output);
    String::from_utf8(output.stdout).expect("utf-8 stdout")
}

/// Runs `ftsurvey ARGS`, expects failure with one line on stderr, returns that line.
fn failing_verb(args: &[&str]) -> String {
    let output: Output = ftsurvey().args(args).output().expect("run ftsurvey");
    assert!(!output.status.success(), "{args:?} succeeded: {output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    assert_eq!(stderr.lines().count(), 1, "{args:?}: one line, got:\n{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

/// A results folder written record by record, as `ftsurvey run` writes them.
pub(crate) fn write_folder(root: &Path, name: &str, records: &[PackageRecord]) -> PathBuf {
    let folder = root.join(name);
    std::fs::create_dir_all(&folder).expect("mkdir");
    let meta = RunMeta {
        run_id: name.to_string(),
        label: format!("{} packages", records.len()),
        timestamp: "2026-11-01T10:00:00Z".to_string(),
        finished_at: Some("2026-11-01T11:00:00Z".to_string()),
        target_python: "/opt/python3.13t/bin/python3".to_string(),
        python_version: "3.13.5 experimental free-threading build".to_string(),
        config: RunConfig {
            iterations: 10,
            download_counts: records
                .iter()
                .enumerate()
                .map(|(idx, r)| (r.package.clone(), 1000 - idx as u64 * 100))
                .collect(),
            ..RunConfig::default()
        },
        ..RunMeta::default()
    };
    std::fs::write(
        folder.join("ft_meta.json"),
        serde_json::to_string_pretty(&meta).expect("meta"),
    )
    .expect("write meta");
    let lines: String = records
        .iter()
        .map(|r| format!("{}\n", serde_json::to_string(r).expect("record")))
        .collect();
    std::fs::write(folder.join("ft_results.jsonl"), lines).expect("write results");
    folder
}

/// A package record with one iteration per status, failing tests named per iteration.
pub(crate) fn record(package: &str, category: &str, iterations: &[(&str, &[&str])]) -> PackageRecord {
    let iterations: Vec<IterationRecord> = iterations
        .iter()
        .enumerate()
        .map(|(idx, (status, failing))| IterationRecord {
            index: idx as u32 + 1,
            status: status.to_string(),
            exit_code: Some(i32::from(*status != "pass")),
            duration_ms: 1200,
            duration_s: 1.2,
            crash_signal: (*status == "crash").then(|| "SIGSEGV".to_string()),
            crash_signature: (*status == "crash").then(|| format!("Segmentation fault: {package}/core.py:7 f")),
            tests: Some(TestReport {
                total: 4,
                passed: 4 - failing.len() as u32,
                failed: failing.len() as u32,
                failing: failing.iter().map(|s| s.to_string()).collect(),
                ..TestReport::default()
            }),
            ..IterationRecord::default()
        })
        .collect();
    let count = |status: &str| iterations.iter().filter(|i| i.status == status).count() as u32;
    let completed = iterations.iter().filter(|i| i.status != "harness_error").count() as u32;
    let mut record = PackageRecord {
        package: package.to_string(),
        category: category.to_string(),
        evidence: vec![format!("{} of {completed} iterations passed", count("pass"))],
        iterations_planned: iterations.len() as u32,
        iterations_completed: completed,
        pass_count: count("pass"),
        fail_count: count("fail"),
        crash_count: count("crash"),
        deadlock_count: count("deadlock"),
        pass_rate: (completed > 0).then(|| f64::from(count("pass")) / f64::from(completed)),
        failure_signatures: iterations
            .iter()
            .filter_map(|i| i.crash_signature.clone())
            .take(1)
            .collect(),
        iterations,
        ..PackageRecord::default()
    };
    record.normalize();
    record
}

const PASS: (&str, &[&str]) = ("pass", &[]);

/// Run A of the comparison: five packages.
fn run_a() -> Vec<PackageRecord> {
    let mut wheel = record("wheelpkg", "compatible_by_wheel", &[]);
    wheel.evidence = vec!["a free-threaded wheel is on PyPI".to_string()];
    vec![
        record("steady", "compatible", &[PASS; 10]),
        record("regressed", "compatible", &[PASS; 10]),
        record("fixed", "crash", &[("crash", &[]), PASS, ("crash", &[]), PASS]),
        wheel,
        record("dropped", "compatible", &[PASS; 3]),
    ]
}

/// Run B: `regressed` now fails sometimes, `fixed` passes, `wheelpkg` was tested and
/// crashed, `dropped` is gone and `added` is new.
fn run_b() -> Vec<PackageRecord> {
    let racy: [(&str, &[&str]); 10] = [
        PASS,
        ("fail", &["tests/test_x.py::test_race"]),
        PASS,
        ("fail", &["tests/test_x.py::test_race", "tests/test_x.py::test_other"]),
        PASS,
        ("fail", &["tests/test_x.py::test_race"]),
        PASS,
        ("fail", &["tests/test_x.py::test_race"]),
        ("fail", &["tests/test_x.py::test_race"]),
        ("fail", &["tests/test_x.py::test_race"]),
    ];
    let mut with_extension = record("added", "compatible_gil_fallback", &[PASS; 5]);
    with_extension.extensions = Some(ExtensionReport {
        modules: vec!["added._speedups".to_string()],
        gil_enabled_by: vec!["added._speedups".to_string()],
        gil_enabled_after_import: Some(true),
        ..ExtensionReport::default()
    });
    with_extension.gil_fallback_modules = vec!["added._speedups".to_string()];
    vec![
        record("steady", "compatible", &[PASS; 10]),
        record("regressed", "intermittent", &racy),
        record("fixed", "compatible", &[PASS; 4]),
        record("wheelpkg", "crash", &[("crash", &[]), ("crash", &[])]),
        with_extension,
    ]
}

#[test]
fn show_reads_the_old_tools_folder_with_glyphs_details_and_intervals() {
    let folder = seed_folder();
    let text = verb(&["show", folder.to_str().expect("utf-8 path")]);
    for expected in [
        "Run ft_20260303_140000",
        "Python:     Python 3.14.0b2 at /opt/cpython-ft/bin/python3",
        "Compatibility summary: 7 packages",
        "\u{1f4a5} crash",
        "\u{2713} compatible",
        "95% CI",
        "SIGSEGV: Segmentation fault: _dict.c:120 insertdict",
        "1 flaky test",
        "TSAN: data race",
        "GIL re-enabled by seedpkg_ext._speedups",
        "install failed: pip install exited with 1",
        "rules out a race failing >= 64% of runs",
    ] {
        assert!(text.contains(expected), "{expected:?} missing:\n{text}");
    }
    let summary: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("Compatibility summary"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    let order: Vec<&str> = summary
        .iter()
        .map(|l| l.split_whitespace().nth(1).unwrap_or_default())
        .collect();
    assert_eq!(
        order,
        [
            "crash",
            "deadlock",
            "intermittent",
            "tsan_warnings",
            "install_failure",
            "compatible_gil_fallback",
            "compatible"
        ],
        "severity order:\n{text}"
    );
}

#[test]
fn compat_compare_and_export_read_the_old_tools_folder_too() {
    let seed = seed_folder();
    let seed = seed.to_str().expect("utf-8 path");
    let compat = verb(&["compat", seed, "--extensions-only"]);
    assert!(
        compat.contains("seedpkg_ext._speedups") && compat.contains("re-enables the GIL"),
        "{compat}"
    );
    let csv = verb(&["export", seed, "--format", "csv"]);
    assert_eq!(csv.lines().count(), 8, "a header and seven packages:\n{csv}");
    let racy = csv.lines().find(|l| l.starts_with("seedpkg-racy,")).expect("row");
    assert!(racy.contains("tests/test_race.py::test_counter=2"), "{racy}");
    let compared = verb(&["compare", seed, seed]);
    assert!(
        compared.contains("7 packages in both: 7 unchanged, 0 regressions"),
        "{compared}"
    );
}

#[test]
fn show_sorts_limits_and_speaks_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = write_folder(dir.path(), "ft_b", &run_b());
    let folder = folder.to_str().expect("utf-8 path");
    let text = verb(&["show", folder, "--sort", "pass_rate", "--limit", "2"]);
    let regressed = text.find("regressed").expect("listed");
    let wheelpkg = text.find("wheelpkg").expect("listed");
    assert!(wheelpkg < regressed, "lowest pass rate first:\n{text}");
    assert!(text.contains("(3 more not shown: 2 of 5 packages listed)"), "{text}");

    let json: serde_json::Value =
        serde_json::from_str(&verb(&["show", folder, "--format", "json", "--sort", "name"])).expect("valid JSON");
    assert_eq!(json["packages_total"], 5);
    assert_eq!(json["run"]["run_id"], "ft_b");
    let regressed = &json["packages"][2];
    assert_eq!(regressed["package"], "regressed");
    assert_eq!(regressed["pass_rate"]["passes"], 4);
    assert_eq!(regressed["pass_rate"]["completed"], 10);
    assert!(regressed["pass_rate"]["low"].as_f64().expect("low") > 0.16);
    assert_eq!(regressed["flaky_tests"], 2);
    let steady = &json["packages"][3];
    assert!((steady["ruled_out_failure_rate"].as_f64().expect("rate") - 0.2589).abs() < 0.001);
}

#[test]
fn flaky_finds_the_racy_test_and_dives_into_one_package() {
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = write_folder(dir.path(), "ft_b", &run_b());
    let folder = folder.to_str().expect("utf-8 path");
    let overview = verb(&["flaky", folder]);
    assert!(overview.starts_with("1 flaky package"), "{overview}");
    assert!(
        overview.contains("regressed") && overview.contains("consistent_test"),
        "{overview}"
    );
    assert!(!overview.contains("steady"), "{overview}");

    let deep = verb(&["flaky", folder, "--package", "regressed"]);
    for expected in [
        "regressed: intermittent, pass rate 4/10 (17-69%)",
        "Pattern:       consistent_test",
        "Iterations:    .F.F.F.FFF",
        "longest run of passes 1, of failures 3",
        "Failure modes: fail x6",
        "   6/10  60%  tests/test_x.py::test_race",
        "   1/10  10%  tests/test_x.py::test_other",
    ] {
        assert!(deep.contains(expected), "{expected:?} missing:\n{deep}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&verb(&["flaky", folder, "--format", "json"])).expect("valid JSON");
    assert_eq!(json[0]["pattern"], "consistent_test");
    assert_eq!(json[0]["longest_fail_streak"], 3);

    let seed = seed_folder();
    let seed_overview = verb(&["flaky", seed.to_str().expect("utf-8 path")]);
    assert!(
        seed_overview.contains("seedpkg-racy") && seed_overview.contains("seedpkg-crash"),
        "an intermittent package and a crash with passes:\n{seed_overview}"
    );
    assert!(seed_overview.contains("consistent_crash"), "{seed_overview}");
}

#[test]
fn compat_names_the_module_that_re_enables_the_gil() {
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = write_folder(dir.path(), "ft_b", &run_b());
    let folder = folder.to_str().expect("utf-8 path");
    let all = verb(&["compat", folder]);
    assert!(all.starts_with("5 packages: 1 probed"), "{all}");
    assert!(all.contains("re-enables the GIL: added._speedups"), "{all}");
    let only = verb(&["compat", folder, "--extensions-only"]);
    assert!(only.contains("added") && !only.contains("steady"), "{only}");
    let json: serde_json::Value =
        serde_json::from_str(&verb(&["compat", folder, "--extensions-only", "--format", "json"])).expect("JSON");
    assert_eq!(json[0]["gil_enabled_by"][0], "added._speedups");
}

#[test]
fn compare_of_two_runs_whose_categories_differ() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = write_folder(dir.path(), "ft_a", &run_a());
    let b = write_folder(dir.path(), "ft_b", &run_b());
    let (a, b) = (a.to_str().expect("utf-8"), b.to_str().expect("utf-8"));
    let text = verb(&["compare", a, b]);
    for expected in [
        "4 packages in both: 1 unchanged, 1 regression, 1 improvement, 1 other change; 1 only in A, 1 only in B",
        "compatible -> intermittent",
        "crash -> compatible",
        "compatible_by_wheel -> crash",
        "not comparable (wheel vs tested)",
        "Resolved crashes (1): fixed",
        "Only in A (1): dropped",
        "Only in B (1): added",
        "-60 pts *",
    ] {
        assert!(text.contains(expected), "{expected:?} missing:\n{text}");
    }
    assert!(!text.contains("New crashes"), "wheelpkg was not tested in A:\n{text}");

    let json: serde_json::Value =
        serde_json::from_str(&verb(&["compare", a, b, "--format", "json"])).expect("valid JSON");
    assert_eq!(json["regressions"], 1);
    let wheel = json["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .find(|t| t["package"] == "wheelpkg")
        .expect("wheelpkg transition");
    assert_eq!(wheel["kind"], "not_comparable");

    let quiet = verb(&["compare", a, b, "--threshold", "0.7"]);
    assert!(
        quiet.contains("Pass-rate changes of 70 points or more: none"),
        "{quiet}"
    );
}

#[test]
fn export_writes_csv_json_and_jsonl_with_the_documented_columns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = write_folder(dir.path(), "ft_b", &run_b());
    let folder = folder.to_str().expect("utf-8 path");
    let csv_path = dir.path().join("out.csv");
    let stdout = verb(&[
        "export",
        folder,
        "--format",
        "csv",
        "-o",
        csv_path.to_str().expect("utf-8"),
    ]);
    assert!(stdout.is_empty(), "written to the file: {stdout}");
    let csv = std::fs::read_to_string(&csv_path).expect("csv written");
    let header = csv.lines().next().expect("header");
    assert_eq!(header, domain::views::export::CSV_COLUMNS.join(","));
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).expect("README");
    assert!(
        readme.contains(&format!("`{}`", domain::views::export::CSV_COLUMNS.join("`, `"))),
        "the README documents the column order"
    );
    assert_eq!(csv.lines().count(), 6, "{csv}");
    let regressed = csv.lines().find(|l| l.starts_with("regressed,")).expect("row");
    assert!(
        regressed.starts_with("regressed,intermittent,10,10,4,6,0,0,0,0,0.4000,"),
        "{regressed}"
    );
    assert!(regressed.contains("tests/test_x.py::test_race=6"), "{regressed}");
    assert!(
        regressed.ends_with(",900,0,false"),
        "download count, oom count, network: {regressed}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&verb(&["export", folder, "--format", "json"])).expect("valid JSON");
    assert_eq!(json.as_array().map(Vec::len), Some(5));
    assert_eq!(json[1]["iterations"].as_array().map(Vec::len), Some(10), "every field");
    let jsonl = verb(&["export", folder, "--format", "jsonl"]);
    let back: Vec<PackageRecord> = jsonl
        .lines()
        .map(|l| PackageRecord::parse_line(l).expect("each line reads as a results line"))
        .collect();
    assert_eq!(back.len(), 5);
    assert_eq!(back[1].iterations, run_b()[1].iterations);
}

#[test]
fn report_in_markdown_text_and_html() {
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = write_folder(dir.path(), "ft_b", &run_b());
    let folder = folder.to_str().expect("utf-8 path");
    let markdown = verb(&["report", folder]);
    for expected in [
        "# Free-threading compatibility report",
        "- **Run:** ft_b",
        "## Triage",
        "1. wheelpkg (crash, 700 downloads)",
        "## Crashes",
        "## Intermittent",
        "| regressed | 4/10 (17-69%) | consistent_test | tests/test_x.py::test_race 6/10;",
        "## C extensions",
        "## Compatible",
    ] {
        assert!(markdown.contains(expected), "{expected:?} missing:\n{markdown}");
    }
    let text = verb(&["report", folder, "--format", "text"]);
    assert!(text.contains("Triage\n------"), "{text}");
    let html_path = dir.path().join("report.html");
    verb(&[
        "report",
        folder,
        "--format",
        "html",
        "-o",
        html_path.to_str().expect("utf-8"),
    ]);
    let html = std::fs::read_to_string(&html_path).expect("html written");
    assert!(html.starts_with("<!DOCTYPE html>") && html.contains("<svg"), "{html}");
    let seed = seed_folder();
    let seed_report = verb(&["report", seed.to_str().expect("utf-8 path")]);
    assert!(
        seed_report.contains(
            "| seedpkg-crash | SIGSEGV | Segmentation fault: _dict.c:120 insertdict < app.py:40 worker | 2 |"
        ),
        "{seed_report}"
    );
}

#[test]
fn bad_input_to_the_verbs_is_one_line_naming_the_cause() {
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = write_folder(dir.path(), "ft_b", &run_b());
    let folder = folder.to_str().expect("utf-8 path");
    let missing = failing_verb(&["show", "/nonexistent/ft_x"]);
    assert!(
        missing.contains("results folder /nonexistent/ft_x not found"),
        "{missing}"
    );
    let id = failing_verb(&["flaky", "0190f1c2-0000-7000-8000-000000000000"]);
    assert!(id.contains("looks like a run id: pass --coordinator URL"), "{id}");
    let unknown = failing_verb(&["flaky", folder, "--package", "nope"]);
    assert!(
        unknown.contains("package nope is not in") && unknown.contains("regressed"),
        "{unknown}"
    );
    let format = failing_verb(&["report", folder, "--format", "pdf"]);
    assert!(format.contains("expected markdown, text or html"), "{format}");
    let threshold = failing_verb(&["compare", folder, folder, "--threshold", "5"]);
    assert!(threshold.contains("expected a fraction from 0 to 1"), "{threshold}");
    let unwritable = failing_verb(&["export", folder, "-o", "/nonexistent/dir/out.csv"]);
    assert!(
        unwritable.contains("cannot write /nonexistent/dir/out.csv"),
        "{unwritable}"
    );
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let not_results = failing_verb(&["compat", empty.to_str().expect("utf-8")]);
    assert!(not_results.contains("is not a results folder"), "{not_results}");
    let unreachable = failing_verb(&[
        "show",
        "0190f1c2-0000-7000-8000-000000000000",
        "--coordinator",
        "http://127.0.0.1:9",
    ]);
    assert!(
        unreachable.contains("cannot connect to the coordinator"),
        "{unreachable}"
    );
}

/// Headless Chromium from the machine; its absence fails the test.
pub(crate) fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .expect("sh");
        let path = String::from_utf8_lossy(&found.stdout).trim().to_string();
        if !path.is_empty() {
            return PathBuf::from(path);
        }
    }
    panic!(
        "chromium is not installed, and the HTML report test needs it: install it with `apt-get install -y chromium` \
         (tests/run.sh does this when it is missing)"
    );
}

/// Loads `page` in headless Chromium, asserts no console message and no other file or network
/// load, and saves a screenshot to `screenshot`.
pub(crate) fn assert_loads_cleanly_in_chromium(page: &Path, screenshot: &Path) {
    let url = format!("file://{}", page.display());
    let profile = tempfile::tempdir().expect("profile dir");
    let output = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=1",
            "--window-size=1280,2400",
            "--host-resolver-rules=MAP * ~NOTFOUND",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg(&url)
        .output()
        .expect("run chromium");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "chromium failed: {}\n{log}", output.status);
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:#?}");
    let loads: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("FileURLLoader::Start") && !l.trim_end().ends_with(&url))
        .collect();
    assert!(loads.is_empty(), "the page loaded other files: {loads:#?}");
    let requests: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("http://") || l.contains("https://"))
        .filter(|l| !l.contains("www.w3.org/2000/svg"))
        .filter(|l| l.contains("URLLoader") || l.contains("url_request"))
        .collect();
    assert!(requests.is_empty(), "network requests: {requests:#?}");
    let png = std::fs::read(screenshot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} bytes", png.len());
}

#[test]
fn the_html_report_loads_in_headless_chromium_without_console_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = write_folder(dir.path(), "ft_b", &run_b());
    let page = dir.path().join("report.html");
    verb(&[
        "report",
        folder.to_str().expect("utf-8"),
        "--format",
        "html",
        "-o",
        page.to_str().expect("utf-8"),
    ]);
    assert_loads_cleanly_in_chromium(&page, &dir.path().join("report.png"));
}

/// Lines of `show` from the summary on: the part that does not depend on where the run was read.
fn show_body(text: &str) -> String {
    text.lines()
        .skip_while(|l| !l.starts_with("Compatibility summary"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_verb_reads_a_run_from_a_coordinator_as_from_its_folder() {
    let survey = Survey::new();
    let logs = survey.dir.path();
    let (_coordinator, url) = serve_on_sqlite(logs, &[]);
    let python = free_threaded_python();
    let _worker = spawn(
        ftsurvey()
            .arg("worker")
            .args(["--coordinator", &url, "--worker-id", "w1"])
            .arg("--target-python")
            .arg(&python)
            .arg("--work-dir")
            .arg(logs.join("w1")),
        &logs.join("w1.log"),
    );
    let output = survey
        .command(&python)
        .args(["--coordinator", &url])
        .args([
            "--packages",
            "ftfix-pass,ftfix-fail",
            "--iterations",
            "2",
            "--timeout",
            "120",
        ])
        .output()
        .expect("run ftsurvey");
    assert_success(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains('\x1b'),
        "no terminal codes when stderr is not a terminal:\n{stderr}"
    );
    assert!(
        stderr.contains("[1/2] ") && stderr.contains("[2/2] "),
        "a plain line per finished package:\n{stderr}"
    );
    let run_id = stderr
        .lines()
        .find_map(|l| l.strip_prefix("run ")?.split(':').next())
        .expect("the run id is announced")
        .to_string();
    let folder = survey.folder();
    let folder = folder.to_str().expect("utf-8 path");
    let remote = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--coordinator", &url]);
        verb(&all)
    };

    let from_folder = verb(&["show", folder]);
    let from_coordinator = remote(&["show", &run_id]);
    assert!(
        from_coordinator.starts_with(&format!("Run {run_id}")),
        "{from_coordinator}"
    );
    assert_eq!(show_body(&from_coordinator), show_body(&from_folder));
    for args in [
        vec!["export", "--format", "csv"],
        vec!["export", "--format", "jsonl"],
        vec!["flaky"],
        vec!["compat"],
    ] {
        let mut local = vec![args[0], folder];
        local.extend(&args[1..]);
        let mut over_grpc = vec![args[0], run_id.as_str()];
        over_grpc.extend(&args[1..]);
        assert_eq!(remote(&over_grpc), verb(&local), "{args:?}");
    }
    let report = remote(&["report", &run_id]);
    assert!(report.contains(&format!("- **Run:** {run_id}")), "{report}");
    assert!(
        report.contains("1. ftfix-fail (incompatible, 500 downloads)"),
        "{report}"
    );
    let compared = remote(&["compare", folder, &run_id]);
    assert!(
        compared.contains("2 packages in both: 2 unchanged, 0 regressions"),
        "a folder against the same run by id:\n{compared}"
    );
    let unknown = ftsurvey()
        .args(["show", "0190f1c2-0000-7000-8000-000000000000", "--coordinator", &url])
        .output()
        .expect("show");
    let unknown_stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        !unknown.status.success() && unknown_stderr.trim().lines().count() == 1,
        "{unknown_stderr}"
    );
    assert!(unknown_stderr.contains("NotFound"), "{unknown_stderr}");
}

#[test]
fn the_verbs_on_a_fixture_run_with_races_crashes_a_deadlock_and_the_gil_comparison() {
    let survey = Survey::new();
    let packages =
        "ftfix-pass,ftfix-fail,ftfix-crash-sometimes,ftfix-race,ftfix-ext-fallback,ftfix-deadlock,ftfix-gil-only";
    let output = survey
        .command(&free_threaded_python())
        .args(["--packages", packages])
        .args([
            "--iterations",
            "3",
            "--timeout",
            "60",
            "--stall-threshold",
            "5",
            "--workers",
            "2",
        ])
        .arg("--compare-with-gil")
        .output()
        .expect("run ftsurvey");
    assert_success(&output);
    let records = survey.records();
    let folder = survey.folder();
    let folder = folder.to_str().expect("utf-8 path");

    let show = verb(&["show", folder]);
    for record in &records {
        assert!(
            show.lines()
                .any(|l| l.contains(&record.package) && l.contains(&record.category)),
            "{} {} in:\n{show}",
            record.package,
            record.category
        );
    }
    assert!(show.contains("stalled"), "the deadlock is named:\n{show}");
    assert!(
        show.contains("GIL re-enabled by"),
        "the fallback module is named:\n{show}"
    );

    // Racy fixtures pass or fail at random: flaky must list exactly the packages whose
    // verdict says they pass only sometimes.
    let flaky: serde_json::Value =
        serde_json::from_str(&verb(&["flaky", folder, "--format", "json"])).expect("valid JSON");
    let mut listed: Vec<String> = flaky
        .as_array()
        .expect("a list")
        .iter()
        .map(|a| a["package"].as_str().unwrap_or_default().to_string())
        .collect();
    listed.sort();
    let mut expected: Vec<String> = records
        .iter()
        .filter(|r| domain::views::flaky::is_flaky(r))
        .map(|r| r.package.clone())
        .collect();
    expected.sort();
    assert_eq!(listed, expected);
    let race = verb(&["flaky", folder, "--package", "ftfix-race"]);
    assert!(race.starts_with("ftfix-race: "), "{race}");

    let compat = verb(&["compat", folder, "--extensions-only"]);
    assert!(
        compat.contains("ftfix-ext-fallback") && compat.contains("re-enables the GIL"),
        "{compat}"
    );

    let gil_only = category_of(&records, "ftfix-gil-only");
    let verdict = gil_only.gil_comparison.as_ref().expect("compared with the GIL").verdict;
    assert_eq!(verdict.as_str(), "ft_specific", "{gil_only:?}");
    let markdown = verb(&["report", folder]);
    for expected in [
        "## Triage",
        "## Deadlocks",
        "### ftfix-deadlock",
        "## GIL comparison",
        "| ftfix-gil-only | ft_specific |",
        "| ftfix-fail | pre_existing |",
        "## C extensions",
    ] {
        assert!(markdown.contains(expected), "{expected:?} missing:\n{markdown}");
    }
    assert!(
        markdown.contains("Thread 0x") || markdown.contains("thread 0x"),
        "stuck stacks:\n{markdown}"
    );

    let csv = verb(&["export", folder, "--format", "csv"]);
    assert_eq!(csv.lines().count(), records.len() + 1);

    let page = survey.dir.path().join("report.html");
    verb(&[
        "report",
        folder,
        "--format",
        "html",
        "-o",
        page.to_str().expect("utf-8"),
    ]);
    assert_loads_cleanly_in_chromium(&page, &survey.dir.path().join("report.png"));
}

#[test]
fn text_a_package_wrote_reaches_terminals_markdown_and_spreadsheets_inert() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A crash signature with a backtick and terminal escapes (clear screen, retitle, bell), and
    // a flaky test whose name is a spreadsheet formula.
    let hostile_test = "=HYPERLINK(\"http://x\")";
    let mut hostile = record(
        "hostile",
        "crash",
        &[("crash", &[hostile_test]), ("pass", &[]), ("fail", &[hostile_test])],
    );
    hostile.failure_signatures = vec!["Segmentation fault: a`b.py:7 \u{1b}[2J\u{1b}]0;owned\u{7}f".to_string()];
    hostile.iterations[0].crash_signature = Some(hostile.failure_signatures[0].clone());
    let folder = write_folder(dir.path(), "ft_20261101_100000", &[hostile]);
    let folder = folder.to_str().expect("utf-8 path");

    for args in [
        vec!["show", folder],
        vec!["flaky", folder],
        vec!["report", folder, "--format", "text"],
        vec!["report", folder, "--format", "markdown"],
        vec!["export", folder, "--format", "csv"],
    ] {
        let out = verb(&args);
        assert!(
            !out.chars().any(|c| c.is_control() && c != '\n' && c != '\t'),
            "{args:?} printed a control character:\n{out:?}"
        );
    }
    let markdown = verb(&["report", folder, "--format", "markdown"]);
    assert!(
        markdown.contains("start from the top frame of ``Segmentation fault: a`b.py:7"),
        "the signature's backtick must not end its code span:\n{markdown}"
    );
    let csv = verb(&["export", folder, "--format", "csv"]);
    assert!(csv.contains("'=HYPERLINK"), "{csv}");
    assert!(!csv.contains(",=HYPERLINK") && !csv.contains("\"=HYPERLINK"), "{csv}");
}

#[test]
fn an_output_never_replaces_the_run_it_reads_and_is_written_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = write_folder(dir.path(), "ft_20261101_100000", &run_a());
    let results = folder.join("ft_results.jsonl");
    let before = std::fs::read(&results).expect("results");
    for (verb_name, target) in [
        ("report", results.clone()),
        ("export", folder.join("ft_meta.json")),
        ("export", folder.join(".").join("ft_results.jsonl")),
    ] {
        let error = failing_verb(&[
            verb_name,
            folder.to_str().expect("utf-8"),
            "-o",
            target.to_str().expect("utf-8"),
        ]);
        assert!(error.contains("is a file of the run being read"), "{error}");
    }
    assert_eq!(
        std::fs::read(&results).expect("results"),
        before,
        "the input is untouched"
    );

    let out = dir.path().join("out.csv");
    std::fs::write(&out, "an older export").expect("write");
    verb(&[
        "export",
        folder.to_str().expect("utf-8"),
        "-o",
        out.to_str().expect("utf-8"),
    ]);
    assert!(
        std::fs::read_to_string(&out)
            .expect("csv")
            .starts_with("package,category,")
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 2, "no temporary file is left beside the output: {left:?}");
}
