//! The scale survey at a reduced size: 500 packages x 10 iterations with realistic outcomes
//! (16 KiB output tails, 200 failing tests named, crash and TSAN evidence) through a real
//! coordinator on PostgreSQL, 20 watchers, then `show`, `export --format csv` and `report
//! --format html` read back from the coordinator. The full size is `bench-scale`'s.

use tests::scale::{Ftsurvey, ScaleOptions, scale_survey};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_survey_of_500_packages_streams_to_20_watchers_and_every_verb_reads_it_back() {
    let work = tempfile::tempdir().expect("tempdir");
    let options = ScaleOptions {
        packages: 500,
        iterations: 10,
        workers: 16,
        watchers: 20,
        output_watchers: 1,
        progress_watchers: true,
        tail_bytes: domain::bound::MAX_TAIL_BYTES,
        ftsurvey: Ftsurvey {
            program: env!("CARGO_BIN_EXE_ftsurvey-under-test").into(),
            env: None,
        },
    };
    let report = scale_survey(&options, work.path()).await.expect("the scale survey");
    println!("{report}");
    // 5,000 iterations with two full tails each are 160 MiB of output: a single message of
    // them (16 MiB at most) could not hold a run a twentieth of this size.
    assert_eq!(report.jobs, 5_000);
    assert_eq!(report.watcher_events.len(), 20);
    assert_eq!(report.verbs.len(), 3);
    assert!(
        report.verbs.iter().all(|verb| verb.output_bytes > 0),
        "every verb wrote something: {report}"
    );
}
