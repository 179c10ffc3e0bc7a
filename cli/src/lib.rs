//! The `ftsurvey` command line as a library, so the binary and the end-to-end tests run the same code.
//!
//! The binary parses flags and calls the libraries; every error ends as one line on stderr
//! and a non-zero exit.

mod disk_args;
mod embedded;
mod fleet_cmd;
mod follow;
mod interpreters;
mod logs_cmd;
mod places;
mod progress;
mod python_cmd;
mod registry_cmd;
pub mod registry_dir;
mod remote;
mod results_cmd;
mod results_dir;
mod run_cmd;
mod run_source;
mod runs_cmd;
mod sandbox_args;
mod secrets;
mod setup_args;
mod stability;
mod trust_wheels;

use std::process::ExitCode;

use clap::{ArgAction, CommandFactory, FromArgMatches, Parser, Subcommand};

/// Tells which packages work on free-threaded CPython.
#[derive(Debug, Parser)]
#[command(name = "ftsurvey", version, about, propagate_version = true)]
struct Cli {
    /// More logging: -v for info, -vv for debug.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run packages' test suites many times on a free-threaded interpreter and classify them.
    Run(Box<run_cmd::RunArgs>),
    /// Summarise a run: counts per category and a table of packages.
    Show(results_cmd::ShowArgs),
    /// Packages that pass only sometimes: patterns, streaks, flaky tests.
    Flaky(results_cmd::FlakyArgs),
    /// Extension modules: which re-enable the GIL, what the sources declare.
    Compat(results_cmd::CompatArgs),
    /// What changed between two runs.
    Compare(results_cmd::CompareArgs),
    /// A report to share: markdown, text or a self-contained HTML page.
    Report(results_cmd::ReportArgs),
    /// One row or object per package: csv, json or jsonl.
    Export(results_cmd::ExportArgs),
    /// Serve a coordinator for a fleet of workers (gRPC), on PostgreSQL or SQLite.
    Serve(fleet_cmd::ServeArgs),
    /// Run a worker: pull jobs from a coordinator, run them under supervision, report back.
    Worker(Box<fleet_cmd::WorkerArgs>),
    /// A coordinator's connected workers and the runs it is working through.
    Status(remote::CoordinatorArgs),
    /// Runs on a coordinator: list them, cancel one.
    #[command(subcommand)]
    Runs(runs_cmd::RunsCommand),
    /// Retire a worker: it finishes the jobs it runs, takes no new ones, and exits.
    Drain(runs_cmd::DrainArgs),
    /// An iteration's full log, fetched from the worker that ran it while that worker keeps it.
    Logs(logs_cmd::LogsArgs),
    /// Free-threaded interpreters: build one from source, list the builds.
    #[command(subcommand)]
    Python(python_cmd::PythonCommand),
    /// Package registries: list one's packages, validate its files.
    #[command(subcommand)]
    Registry(registry_cmd::RegistryCommand),
}

/// Parses the command line, runs the command, and turns any error into one line on stderr.
///
/// A binary's `main` calls it first thing: it takes the secrets out of the environment, which
/// is sound only while the process has one thread.
pub fn main() -> ExitCode {
    let command = Cli::command();
    let secret_env_vars = secrets::secret_env_vars(&command);
    let matches = match command.try_get_matches() {
        Ok(matches) => matches,
        Err(error) => return flag_error(&error),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => return flag_error(&error),
    };
    // SAFETY: this process has one thread: a binary's `main` calls this first thing, nothing
    // above starts a thread, and the tokio runtime, the first thing that does, is built below
    // in `run_async`.
    #[allow(unsafe_code)]
    unsafe {
        secrets::remove_from_env(&secret_env_vars);
    }
    let worker_token_source = matches
        .subcommand_matches("worker")
        .and_then(|worker| worker.value_source("token"));
    init_tracing(cli.verbose);
    let result = match cli.command {
        Command::Run(args) => run_async(run_cmd::run(*args)),
        Command::Show(args) => results_cmd::run_show(&args).map(|()| ExitCode::SUCCESS),
        Command::Flaky(args) => results_cmd::run_flaky(&args).map(|()| ExitCode::SUCCESS),
        Command::Compat(args) => results_cmd::run_compat(&args).map(|()| ExitCode::SUCCESS),
        Command::Compare(args) => results_cmd::run_compare(&args).map(|()| ExitCode::SUCCESS),
        Command::Report(args) => results_cmd::run_report(&args).map(|()| ExitCode::SUCCESS),
        Command::Export(args) => results_cmd::run_export(&args).map(|()| ExitCode::SUCCESS),
        Command::Python(command) => python_cmd::run(command),
        Command::Registry(command) => registry_cmd::run(command),
        Command::Serve(args) => run_async(fleet_cmd::serve(args)),
        Command::Status(args) => run_async(runs_cmd::status(args)),
        Command::Runs(command) => run_async(runs_cmd::runs(command)),
        Command::Drain(args) => run_async(runs_cmd::drain(args)),
        Command::Logs(args) => run_async(logs_cmd::logs(args)),
        Command::Worker(args) => run_async(fleet_cmd::worker(*args, worker_token_source)),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Help and version go out as clap prints them; a usage error becomes one line (clap's message
/// without its usage block) and exit status 2.
fn flag_error(error: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = error.print();
        return ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2));
    }
    let text = error.to_string();
    let message: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|line| !line.is_empty() && !line.starts_with("Usage:"))
        .collect();
    eprintln!("{} (see --help)", message.join(" "));
    ExitCode::from(2)
}

fn run_async(future: impl Future<Output = anyhow::Result<ExitCode>>) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(future)
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FTSURVEY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: logs piped to a file stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
