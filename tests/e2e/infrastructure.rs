//! A setup that fails for the infrastructure, not the package, as an operator meets it: a
//! coordinator and two worker processes, a package whose install asks an index nobody serves.
//! The job is tried again on the other worker, and recorded as `infra_error` with each
//! attempt's worker and reason once it has failed on every attempt, never `install_failure`.

use std::path::Path;

use tests::fixture_registry;

use crate::cli::{Survey, assert_success, category_of, free_threaded_python, ftsurvey, one_package_registry};
use crate::fleet::{Process, serve_on_sqlite, spawn};

#[test]
fn an_install_the_index_fails_is_retried_on_the_other_worker_and_recorded_as_infra_error() {
    let survey = Survey::new();
    let dir = survey.dir.path();
    let source = fixture_registry()
        .join("../packages/ftfix-pass")
        .canonicalize()
        .expect("the ftfix-pass fixture");
    // Port 9 (discard) refuses connections: pip retries once, says why, and gives up.
    let registry = one_package_registry(
        dir,
        "ftfix-index-down",
        &format!(
            "package: ftfix-index-down\nsource: path\npath: {}\nenriched: true\nimport_name: ftfix_pass\n\
             install_command: pip install --retries 1 --timeout 2 --index-url http://127.0.0.1:9/simple \
             ftfix-unreachable-dependency\ntest_command: python -m pytest -q tests\ntest_framework: pytest\n",
            source.display()
        ),
    );
    let (_coordinator, url) = serve_on_sqlite(dir, &["--max-attempts", "2"]);
    let python = free_threaded_python();
    let _workers: Vec<Process> = ["w1", "w2"].iter().map(|id| worker(&url, id, &python, dir)).collect();

    let output = ftsurvey()
        .arg("run")
        .args(["--coordinator", &url, "--target-python", "3.13t"])
        .arg("--registry-dir")
        .arg(&registry)
        .arg("--results-dir")
        .arg(survey.results_root())
        .args(["--iterations", "2", "--timeout", "120"])
        .output()
        .expect("run ftsurvey");
    assert_success(&output);
    let records = survey.records();
    let record = category_of(&records, "ftfix-index-down");
    assert_eq!(record.category, "infra_error", "never install_failure: {record:?}");
    let evidence = record.evidence.join("\n");
    assert!(
        evidence.contains("install failed for the infrastructure, not the package, on every attempt"),
        "{evidence}"
    );
    assert!(
        evidence.contains("Connection refused"),
        "pip's own words name the cause: {evidence}"
    );
    // The job that settled the package names both attempts, each on a different worker.
    let attempts = record
        .evidence
        .iter()
        .find(|line| line.contains("on all 2 attempts"))
        .unwrap_or_else(|| panic!("no attempt listed: {evidence}"));
    let on_w1 = attempts.find("attempt 1 on w1").or(attempts.find("attempt 2 on w1"));
    let on_w2 = attempts.find("attempt 1 on w2").or(attempts.find("attempt 2 on w2"));
    assert!(
        on_w1.is_some() && on_w2.is_some(),
        "retried on the other worker: {attempts}"
    );

    // `show` says it in its words.
    let show = ftsurvey().arg("show").arg(survey.folder()).output().expect("show");
    assert_success(&show);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains("ftfix-index-down") && l.contains("infra_error")),
        "{text}"
    );
}

fn worker(url: &str, id: &str, python: &Path, dir: &Path) -> Process {
    spawn(
        ftsurvey()
            .arg("worker")
            .args(["--coordinator", url, "--worker-id", id])
            .arg("--target-python")
            .arg(python)
            .arg("--work-dir")
            .arg(dir.join(id)),
        &dir.join(format!("{id}.log")),
    )
}
