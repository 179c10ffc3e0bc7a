//! Reading and steering a coordinator from anywhere: `ftsurvey status` (workers and queues),
//! `ftsurvey runs list|rerun|cancel|archive|purge` and `ftsurvey drain` (retire a worker).

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use comfy_table::Table;
use domain::RunSummary;
use proto::v1;

use crate::remote::{CoordinatorArgs, status_error};

#[derive(Debug, Subcommand)]
pub(crate) enum RunsCommand {
    /// Runs, newest first, with their progress.
    List {
        #[command(flatten)]
        coordinator: CoordinatorArgs,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Submits a new run of some of RUN's packages, with RUN's settings, linked to it (`compare
    /// RUN NEW` compares only what was re-run), and prints its id: `ftsurvey run --resume NEW`
    /// follows it and writes its results folder.
    Rerun {
        #[command(flatten)]
        coordinator: CoordinatorArgs,
        /// The run's id.
        run_id: String,
        /// Which packages (comma-separated or repeated): `failed` (a verdict that is not a
        /// compatible one, nor infra_error or unknown), `lost` (an iteration no worker
        /// finished), `infra` (infra_error), `unknown`, or package names.
        #[arg(long, value_delimiter = ',', required = true, value_name = "WHICH")]
        only: Vec<String>,
    },
    /// Cancels a run: pending jobs at once, running ones are stopped on their workers.
    Cancel {
        #[command(flatten)]
        coordinator: CoordinatorArgs,
        /// The run's id.
        run_id: String,
    },
    /// Moves a finished or cancelled run's jobs out of the table the coordinator dispatches
    /// from; its results read the same. `serve --keep-finished-jobs` does it after a while.
    Archive {
        #[command(flatten)]
        coordinator: CoordinatorArgs,
        /// The run's id.
        run_id: String,
    },
    /// Deletes a finished or cancelled run from the coordinator, with its results: its
    /// packages and jobs, archived or not. There is no undo.
    Purge {
        #[command(flatten)]
        coordinator: CoordinatorArgs,
        /// The run's id.
        run_id: String,
    },
}

pub(crate) async fn runs(command: RunsCommand) -> anyhow::Result<ExitCode> {
    match command {
        RunsCommand::List { coordinator, limit } => {
            let mut client = coordinator.connect().await?;
            let listed = client
                .list_runs(v1::ListRunsRequest { limit })
                .await
                .map_err(|s| status_error(&s))
                .context("listing runs")?
                .into_inner();
            let runs = listed
                .runs
                .into_iter()
                .map(RunSummary::try_from)
                .collect::<Result<Vec<_>, _>>()?;
            println!("{}", runs_table(&runs));
        }
        RunsCommand::Rerun {
            coordinator,
            run_id,
            only,
        } => rerun(&coordinator, &run_id, &only).await?,
        RunsCommand::Cancel { coordinator, run_id } => {
            let mut client = coordinator.connect().await?;
            let cancelled = client
                .cancel_run(v1::CancelRunRequest { run_id: run_id.clone() })
                .await
                .map_err(|s| status_error(&s))
                .with_context(|| format!("cancelling run {run_id}"))?
                .into_inner();
            let run = RunSummary::try_from(cancelled.run.context("coordinator sent no run")?)?;
            println!(
                "run {}: {} ({} of {} jobs settled)",
                run.run_id, run.state, run.jobs_settled, run.jobs_total
            );
        }
        RunsCommand::Archive { coordinator, run_id } => {
            let mut client = coordinator.connect().await?;
            let archived = client
                .archive_run(v1::ArchiveRunRequest { run_id: run_id.clone() })
                .await
                .map_err(|s| status_error(&s))
                .with_context(|| format!("archiving run {run_id}"))?
                .into_inner();
            let run = RunSummary::try_from(archived.run.context("coordinator sent no run")?)?;
            println!(
                "run {}: {}, archived ({} jobs out of the dispatch table; its results read the same)",
                run.run_id, run.state, run.jobs_total
            );
        }
        RunsCommand::Purge { coordinator, run_id } => {
            let mut client = coordinator.connect().await?;
            let purged = client
                .purge_run(v1::PurgeRunRequest { run_id: run_id.clone() })
                .await
                .map_err(|s| status_error(&s))
                .with_context(|| format!("purging run {run_id}"))?
                .into_inner();
            println!("run {run_id}: purged with its {} jobs", purged.jobs_deleted);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `runs rerun`: the packages of `run_id` that `only` selects, submitted as a new run.
async fn rerun(coordinator: &CoordinatorArgs, run_id: &str, only: &[String]) -> anyhow::Result<()> {
    let mut client = coordinator.connect().await?;
    let got = client
        .get_run(v1::GetRunRequest {
            run_id: run_id.to_string(),
        })
        .await
        .map_err(|s| status_error(&s))
        .with_context(|| format!("reading run {run_id}"))?
        .into_inner();
    let first = RunSummary::try_from(got.run.context("the coordinator sent no run")?)?;
    let spec = domain::RunSpec::try_from(got.spec.context("the coordinator sent no run spec")?)?;
    let request = v1::QueryPackageResultsRequest {
        run_id: run_id.to_string(),
        ..Default::default()
    };
    let results = crate::remote::all_results(&mut client, request)
        .await
        .with_context(|| format!("reading the results of run {run_id}"))?;
    let names: Vec<&str> = spec.packages.iter().map(|p| p.name.as_str()).collect();
    for which in only {
        if !RERUN_KINDS.contains(&which.as_str()) && !names.contains(&which.as_str()) {
            anyhow::bail!(
                "--only {which}: neither a kind ({}) nor a package of run {run_id}",
                RERUN_KINDS.join(", ")
            );
        }
    }
    let chosen: std::collections::HashSet<&str> = results
        .iter()
        .filter(|result| only.iter().any(|which| rerun_selects(which, result)))
        .map(|result| result.package.as_str())
        .collect();
    let packages: Vec<domain::PackageSpec> = spec
        .packages
        .iter()
        .filter(|p| chosen.contains(p.name.as_str()))
        .cloned()
        .collect();
    if packages.is_empty() {
        anyhow::bail!(
            "run {run_id} has no package that --only {} selects: nothing to re-run",
            only.join(",")
        );
    }
    let again = domain::RunSpec {
        label: format!(
            "re-run of {} packages of {} (--only {})",
            packages.len(),
            first.label,
            only.join(",")
        ),
        packages,
        rerun_of: Some(first.run_id),
        ..spec
    };
    let submitted = crate::follow::submit(&mut client, &again).await?;
    println!("{}", submitted.run_id);
    eprintln!(
        "run {} re-runs {} of the {} packages of run {run_id}; `ftsurvey run --resume {} --coordinator {}` follows it",
        submitted.run_id,
        again.packages.len(),
        first.packages_total,
        submitted.run_id,
        coordinator.coordinator
    );
    Ok(())
}

/// The kinds `runs rerun --only` takes besides package names.
const RERUN_KINDS: [&str; 4] = ["failed", "lost", "infra", "unknown"];

/// Whether `--only which` selects `result`.
fn rerun_selects(which: &str, result: &domain::PackageResult) -> bool {
    use domain::Category;
    match which {
        "failed" => !matches!(
            result.category,
            Category::Compatible
                | Category::CompatibleGilFallback
                | Category::CompatibleByWheel
                | Category::InfraError
                | Category::Unknown
        ),
        "lost" => result.lost_iterations(),
        "infra" => result.category == Category::InfraError,
        "unknown" => result.category == Category::Unknown,
        name => result.package == name,
    }
}

/// Flags of `ftsurvey drain`.
#[derive(Debug, Args)]
pub(crate) struct DrainArgs {
    #[command(flatten)]
    coordinator: CoordinatorArgs,
    /// The worker's id, as `ftsurvey status` lists it.
    worker_id: String,
    /// Why, for the worker's log.
    #[arg(long, default_value = "")]
    reason: String,
}

pub(crate) async fn drain(args: DrainArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.coordinator.connect().await?;
    let drained = client
        .drain_worker(v1::DrainWorkerRequest {
            worker_id: args.worker_id.clone(),
            reason: args.reason,
        })
        .await
        .map_err(|s| status_error(&s))
        .with_context(|| format!("draining worker {}", args.worker_id))?
        .into_inner();
    println!(
        "worker {}: draining; it finishes its {} running jobs, takes no new ones, then exits",
        args.worker_id, drained.running_jobs
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn status(coordinator: CoordinatorArgs) -> anyhow::Result<ExitCode> {
    let mut client = coordinator.connect().await?;
    let status = client
        .get_status(v1::GetStatusRequest {})
        .await
        .map_err(|s| status_error(&s))
        .context("reading the coordinator's status")?
        .into_inner();
    let mut workers = table(&[
        "Worker",
        "Interpreter",
        "Slots",
        "Busy",
        "Last heartbeat",
        "Connected",
        "Takes jobs",
    ]);
    for worker in &status.workers {
        workers.add_row(vec![
            worker.worker_id.clone(),
            worker.interpreter.clone(),
            worker.slots.to_string(),
            worker.running_jobs.to_string(),
            ago(status.now_ms, worker.last_heartbeat_ms),
            ago(status.now_ms, worker.connected_at_ms),
            if worker.refusing.is_empty() {
                "yes"
            } else {
                "no (see below)"
            }
            .to_string(),
        ]);
    }
    println!("{} workers connected", status.workers.len());
    if !status.workers.is_empty() {
        println!("{workers}");
    }
    for worker in status.workers.iter().filter(|worker| !worker.refusing.is_empty()) {
        println!(
            "{} takes no new jobs: {}",
            worker.worker_id,
            domain::views::text::one_line(&worker.refusing)
        );
    }
    let runs = status
        .active_runs
        .into_iter()
        .map(RunSummary::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    println!("{} runs queued or running", runs.len());
    if !runs.is_empty() {
        println!("{}", runs_table(&runs));
    }
    if let Some(dispatch) = status.dispatch {
        let mean = |items: u64, batches: u64| {
            if batches == 0 {
                0.0
            } else {
                items as f64 / batches as f64
            }
        };
        println!(
            "dispatch since start: {} jobs claimed in {} transactions ({:.1} each, {:.2} ms each), \
             {} outcomes recorded in {} ({:.1} each, {:.2} ms each)",
            dispatch.jobs_claimed,
            dispatch.claim_batches,
            mean(dispatch.jobs_claimed, dispatch.claim_batches),
            mean(dispatch.claim_micros, dispatch.claim_batches) / 1000.0,
            dispatch.outcomes,
            dispatch.outcome_batches,
            mean(dispatch.outcomes, dispatch.outcome_batches),
            mean(dispatch.outcome_micros, dispatch.outcome_batches) / 1000.0,
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn runs_table(runs: &[RunSummary]) -> Table {
    let mut table = table(&[
        "Run",
        "State",
        "Label",
        "Packages done",
        "Jobs done",
        "Running",
        "Pending",
    ]);
    for run in runs {
        let pending = run.jobs_total.saturating_sub(run.jobs_settled + run.jobs_running);
        table.add_row(vec![
            run.run_id.to_string(),
            match run.archived_at_ms {
                Some(_) => format!("{} (archived)", run.state),
                None => run.state.to_string(),
            },
            run.label.clone(),
            format!("{}/{}", run.packages_finished, run.packages_total),
            format!("{}/{}", run.jobs_settled, run.jobs_total),
            run.jobs_running.to_string(),
            pending.to_string(),
        ]);
    }
    table
}

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_style(comfy_table::presets::ASCII_BORDERS_ONLY_CONDENSED);
    table.set_header(header.to_vec());
    table
}

/// `3s ago`, from two epoch-millisecond times.
fn ago(now_ms: i64, then_ms: i64) -> String {
    let seconds = (now_ms - then_ms).max(0) / 1000;
    match seconds {
        0..=119 => format!("{seconds}s ago"),
        120..=7199 => format!("{}m ago", seconds / 60),
        _ => format!("{}h ago", seconds / 3600),
    }
}
