//! The scale benchmark: a survey of the ecosystem's size through a real coordinator.
//!
//! ```sh
//! cargo run --release -p tests --bin bench-scale -- [--packages 5000] [--iterations 10]
//!     [--workers 64] [--watchers 20] [--output-watchers 1] [--whole-results] [--tail-bytes 16384]
//! ```
//!
//! A throwaway PostgreSQL, `ftsurvey serve` on it, then the survey twice (without watchers,
//! then with them: `--output-watchers` of them ask for the output tails, as `run` does, the
//! others for verdicts only, as progress displays do, or with `--whole-results` for every
//! package's whole result) by simulated workers reporting realistic outcomes (full output tails, 200
//! failing tests named in failing iterations, crash and ThreadSanitizer evidence on some), and
//! `show`, `export --format csv` and `report --format html` reading the second run back from
//! the coordinator. It prints each survey's dispatch time and the coordinator's CPU time, the
//! coordinator's peak RSS, the store's size, and each verb's time and peak RSS. This program
//! is also the `ftsurvey` it measures: run with `BENCH_SCALE_AS_FTSURVEY=1`, it is the CLI.

/// The allocator of the `ftsurvey` binary, whose coordinator and verbs this measures.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use tests::scale::{Ftsurvey, ScaleOptions, scale_survey};

const AS_FTSURVEY: &str = "BENCH_SCALE_AS_FTSURVEY";

fn options() -> Result<ScaleOptions, String> {
    let program = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let mut options = ScaleOptions {
        packages: 5_000,
        iterations: 10,
        workers: 64,
        watchers: 20,
        output_watchers: 1,
        progress_watchers: true,
        tail_bytes: domain::bound::MAX_TAIL_BYTES,
        ftsurvey: Ftsurvey {
            program,
            env: Some((AS_FTSURVEY.into(), "1".into())),
        },
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut number = || -> Result<usize, String> {
            args.next()
                .ok_or_else(|| format!("{flag} needs a value"))?
                .parse()
                .map_err(|e| format!("{flag}: {e}"))
        };
        match flag.as_str() {
            "--packages" => options.packages = number()?,
            "--iterations" => options.iterations = number()? as u32,
            "--workers" => options.workers = number()?,
            "--watchers" => options.watchers = number()?,
            "--output-watchers" => options.output_watchers = number()?,
            "--whole-results" => options.progress_watchers = false,
            "--tail-bytes" => options.tail_bytes = number()?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(options)
}

fn main() -> ExitCode {
    if std::env::var_os(AS_FTSURVEY).is_some() {
        return cli::main();
    }
    let options = match options() {
        Ok(options) => options,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let work = match tempfile::tempdir() {
        Ok(work) => work,
        Err(error) => {
            eprintln!("error: cannot make a work folder: {error}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    println!(
        "scale survey: {} packages x {} iterations, {} simulated workers, {} watchers ({} with output), {} B tails",
        options.packages,
        options.iterations,
        options.workers,
        options.watchers,
        options.output_watchers,
        options.tail_bytes
    );
    match runtime.block_on(scale_survey(&options, work.path())) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
