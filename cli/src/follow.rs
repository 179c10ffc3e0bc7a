//! Following a submitted run: its progress stream, the results folder written as packages
//! finish, Ctrl-C, and what `ft_meta.json` says about the run.

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use domain::results::{PackageRecord, RunConfig, RunMeta, SystemInfo};
use domain::{InterpreterProfile, PackageResult, RunId, RunSpec, RunSummary};
use proto::v1;

use crate::embedded::Embedded;
use crate::interpreters::Target;
use crate::places;
use crate::progress::{Progress, ProgressStyle};
use crate::remote::{Client, CoordinatorArgs};
use crate::results_dir::ResultsDir;

/// What following a run needs of the command's flags.
#[derive(Debug)]
pub(crate) struct FollowOptions {
    /// The fleet's coordinator, connected to afresh when it goes away; `None` for the embedded
    /// one, which does not.
    pub(crate) coordinator: Option<CoordinatorArgs>,
    /// No progress on stderr.
    pub(crate) quiet: bool,
    /// The local workers, for `ft_meta.json`.
    pub(crate) n_workers: u32,
}

/// Submits the run; returns its summary.
pub(crate) async fn submit(client: &mut Client, spec: &RunSpec) -> anyhow::Result<RunSummary> {
    let request = v1::SubmitRunRequest {
        spec: Some(spec.into()),
        client_token: uuid::Uuid::new_v4().to_string(),
    };
    let submitted = client
        .submit_run(request)
        .await
        .map_err(|s| crate::remote::status_error(&s))
        .context("submitting the run")?
        .into_inner();
    Ok(RunSummary::try_from(submitted.run.context("coordinator sent no run")?)?)
}

/// Submits the run, writes the packages trusted by their wheels, then follows it
/// ([`follow`]).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn survey(
    client: &mut Client,
    embedded: Option<&mut Embedded>,
    spec: &RunSpec,
    options: &FollowOptions,
    target: &Target,
    results: &ResultsDir,
    trusted: &[PackageRecord],
    started_at: jiff::Timestamp,
) -> anyhow::Result<ExitCode> {
    let summary = submit(client, spec).await?;
    let run_id = summary.run_id;
    let meta = run_meta(run_id, spec, options.n_workers, target.profile(), started_at);
    results.write_meta(&meta)?;
    let mut progress = Progress::new(ProgressStyle::detect(options.quiet));
    progress.println(&format!(
        "run {run_id}: {} packages x {} iterations on {} -> {}",
        spec.packages.len(),
        spec.iterations,
        target.describe(),
        results.path().display()
    ));
    let total = spec.packages.len() + trusted.len();
    for (n, record) in trusted.iter().enumerate() {
        results.append_package(record)?;
        progress.println(&format!("[{}/{total}] {}: {}", n + 1, record.package, record.category));
    }
    let run = Followed {
        run_id,
        spec,
        meta,
        records: trusted.to_vec(),
    };
    follow(client, embedded, run, options, results, progress).await
}

/// A run being followed, and what its results folder already holds.
#[derive(Debug)]
pub(crate) struct Followed<'a> {
    pub(crate) run_id: RunId,
    pub(crate) spec: &'a RunSpec,
    pub(crate) meta: RunMeta,
    /// The packages the folder holds: they are not written again.
    pub(crate) records: Vec<PackageRecord>,
}

/// Follows a submitted run and writes each package to the results folder as it finishes.
/// Ctrl-C on a fleet detaches: the run goes on, and `run --resume` follows it again; an
/// embedded run (whose workers stop with this process) is cancelled and what finished written.
/// `embedded` is watched for workers that stop.
pub(crate) async fn follow(
    client: &mut Client,
    mut embedded: Option<&mut Embedded>,
    run: Followed<'_>,
    options: &FollowOptions,
    results: &ResultsDir,
    mut progress: Progress,
) -> anyhow::Result<ExitCode> {
    let Followed {
        run_id,
        spec,
        mut meta,
        mut records,
    } = run;
    let mut written: HashSet<String> = records.iter().map(|r| r.package.clone()).collect();
    let total = spec.packages.iter().filter(|p| !written.contains(&p.name)).count() + written.len();
    let mut check_workers = tokio::time::interval(Duration::from_secs(1));
    // The watch stream, reopened when the coordinator goes away: each new stream starts with a
    // snapshot, and packages already written are skipped.
    let mut events: Option<tonic::Streaming<v1::RunEvent>> = None;
    let mut first_watch = true;
    let mut run_over = false;
    let mut retry_at = tokio::time::Instant::now();
    let interrupted = loop {
        if run_over {
            break false;
        }
        if events.is_none() {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break true,
                _ = tokio::time::sleep_until(retry_at) => {}
            }
            // A coordinator that went away is connected to afresh (a remote one; the embedded
            // one does not go away).
            if let Some(fleet) = &options.coordinator
                && !first_watch
            {
                match fleet.connect().await {
                    Ok(fresh) => *client = fresh,
                    Err(error) => {
                        progress.println(&format!("cannot reach the coordinator ({error:#}); retrying in 2 s"));
                        retry_at = tokio::time::Instant::now() + Duration::from_secs(2);
                        continue;
                    }
                }
            }
            first_watch = false;
            let watch = client.watch_run(v1::WatchRunRequest {
                run_id: run_id.to_string(),
                with_output: true,
                verdicts_only: false,
            });
            let watched = match tokio::time::timeout(Duration::from_secs(30), watch).await {
                Ok(watched) => watched,
                Err(_) => Err(tonic::Status::deadline_exceeded("no answer within 30 s")),
            };
            match watched {
                Ok(response) => events = Some(response.into_inner()),
                Err(status)
                    if matches!(
                        status.code(),
                        tonic::Code::NotFound | tonic::Code::InvalidArgument | tonic::Code::Unauthenticated
                    ) =>
                {
                    return Err(crate::remote::status_error(&status).context("watching the run"));
                }
                Err(status) => {
                    progress.println(&format!("cannot watch the run ({}); retrying in 2 s", status.message()));
                    retry_at = tokio::time::Instant::now() + Duration::from_secs(2);
                }
            }
            continue;
        }
        let Some(stream) = events.as_mut() else { continue };
        tokio::select! {
            event = stream.message() => {
                let event = match event {
                    Ok(Some(event)) => event,
                    Ok(None) | Err(_) => {
                        if !run_over {
                            progress.println("lost the coordinator's progress stream; reconnecting");
                        }
                        events = None;
                        retry_at = tokio::time::Instant::now() + Duration::from_secs(1);
                        continue;
                    }
                };
                if let Some(summary) = event.run.clone().and_then(|r| RunSummary::try_from(r).ok()) {
                    run_over = summary.state.is_terminal();
                    let slowest = event
                        .running
                        .first()
                        .map(|job| (job.package.clone(), Duration::from_millis(job.running_ms.max(0) as u64)));
                    progress.update(summary, slowest);
                }
                for package in event.finished_packages {
                    let result = PackageResult::try_from(package)?;
                    if written.insert(result.package.clone()) {
                        let record = PackageRecord::of_run(&result, spec);
                        results.append_package(&record)?;
                        progress.println(&format!("[{}/{total}] {}", written.len(), progress_line(&result)));
                        records.push(record);
                    }
                }
            }
            _ = tokio::signal::ctrl_c() => break true,
            _ = check_workers.tick() => {
                progress.tick();
                if let Some(stopped) = embedded.as_deref_mut().and_then(Embedded::first_finished_worker) {
                    let error = match stopped.await {
                        Ok(Ok(())) => anyhow::anyhow!("a local worker stopped"),
                        Ok(Err(error)) => error,
                        Err(join) => anyhow::anyhow!("a local worker panicked: {join}"),
                    };
                    let _ = client.cancel_run(v1::CancelRunRequest { run_id: run_id.to_string() }).await;
                    return Err(error.context("the survey cannot go on"));
                }
            }
        }
    };
    progress.finish();
    let detached = interrupted && options.coordinator.is_some();
    if detached {
        eprintln!(
            "detached from run {run_id}, which goes on: `ftsurvey run --resume {run_id}` with the same \
             --coordinator follows it again and completes {}; `ftsurvey runs cancel {run_id}` cancels it",
            results.path().display()
        );
    } else if interrupted {
        eprintln!("interrupted: cancelling run {run_id} and writing what has finished");
        client
            .cancel_run(v1::CancelRunRequest {
                run_id: run_id.to_string(),
            })
            .await
            .context("cancelling")?;
    }
    if interrupted {
        // A detached run's unfinished packages are written when it is resumed; a cancelled
        // run's are written as they stand.
        let request = v1::QueryPackageResultsRequest {
            run_id: run_id.to_string(),
            with_output: true,
            finished_only: detached,
            ..Default::default()
        };
        let partial = crate::remote::all_results(client, request)
            .await
            .context("reading partial results")?;
        for result in partial {
            let has_data = !result.iterations.is_empty() || result.setup_failure.is_some();
            if has_data && written.insert(result.package.clone()) {
                let record = PackageRecord::of_run(&result, spec);
                results.append_package(&record)?;
                records.push(record);
            }
        }
    }
    meta.interrupted = interrupted && !detached;
    if !detached {
        meta.finished_at = Some(jiff::Timestamp::now().to_string());
    }
    results.write_meta(&meta)?;
    let show = domain::views::show::render_show(Some(&meta), &records, &domain::views::show::ShowOptions::default());
    println!("{}", domain::views::text::neutralise_controls(&show));
    println!("results: {}", results.path().display());
    Ok(if interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

/// What `ft_meta.json` says about this run.
pub(crate) fn run_meta(
    run_id: domain::RunId,
    spec: &RunSpec,
    n_workers: u32,
    profile: Option<&InterpreterProfile>,
    started_at: jiff::Timestamp,
) -> RunMeta {
    RunMeta {
        run_id: run_id.to_string(),
        label: spec.label.clone(),
        timestamp: started_at.to_string(),
        finished_at: None,
        interrupted: false,
        target_python: profile.map_or_else(|| spec.requirement.describe(), |p| p.executable.clone()),
        python_version: profile.map(|p| p.version.clone()).unwrap_or_default(),
        interpreter: profile.cloned(),
        system: SystemInfo {
            hostname: places::hostname().unwrap_or_default(),
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            cpu_count: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
        },
        config: RunConfig {
            workers: n_workers,
            ..RunConfig::of_spec(spec)
        },
    }
}

/// `ftfix-segfault: crash (0/3 passed; ...)`
fn progress_line(result: &PackageResult) -> String {
    let detail = result.evidence.first().cloned().unwrap_or_default();
    format!("{}: {} ({detail})", result.package, result.category)
}
