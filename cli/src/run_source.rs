//! Where the result verbs (`show`, `flaky`, `compat`, `compare`, `report`, `export`) read a
//! run from: a results folder, or a run id on a coordinator.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use domain::results::{PackageRecord, RunMeta};
use domain::{RunSpec, RunSummary};
use proto::v1;

use crate::remote::{ClientCredentials, CoordinatorArgs};
use crate::results_dir::{read_results_dir, results_files};

/// How to reach the coordinator when RUN is a run id.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct RemoteArgs {
    /// Read RUN as a run id on this coordinator (e.g. `http://coordinator:50051`); a RUN that
    /// is an existing path is still read as a folder.
    #[arg(long, env = "FTSURVEY_COORDINATOR", value_name = "URL")]
    pub(crate) coordinator: Option<String>,
    #[command(flatten)]
    pub(crate) credentials: ClientCredentials,
}

/// A run as the verbs see it, wherever it came from.
#[derive(Debug)]
pub(crate) struct LoadedRun {
    /// The folder path or `run ID on URL`, for messages.
    pub(crate) name: String,
    pub(crate) meta: Option<RunMeta>,
    pub(crate) records: Vec<PackageRecord>,
    /// The files the run was read from (none for a run fetched from a coordinator), which an
    /// output must never replace.
    pub(crate) read_from: Vec<PathBuf>,
}

/// Which iterations' output tails a view needs of a run read from a coordinator, which leaves
/// them out unless asked (a results folder always has them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outputs {
    None,
    /// Those of stalled iterations: where the tests were when they stopped.
    Stalled,
    All,
}

/// Reads `run`, printing what could not be read as warnings on stderr.
pub(crate) fn load(run: &str, remote: &RemoteArgs, outputs: Outputs) -> anyhow::Result<LoadedRun> {
    let path = Path::new(run);
    if path.exists() {
        let (meta, records, warnings) = read_results_dir(path)?;
        for warning in &warnings {
            eprintln!("warning: {warning}");
        }
        let (results_path, meta_path) = results_files(path)?;
        let read_from = [results_path, meta_path]
            .into_iter()
            .filter_map(|file| file.canonicalize().ok())
            .collect();
        return Ok(LoadedRun {
            name: path.display().to_string(),
            meta,
            records,
            read_from,
        });
    }
    let looks_like_id = uuid::Uuid::parse_str(run).is_ok();
    match (&remote.coordinator, looks_like_id) {
        (Some(url), true) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(load_remote(run, &remote.credentials.at(url), outputs))
        }
        (Some(_), false) => anyhow::bail!(
            "{run} is neither a results folder nor a run id: pass a folder path or the UUID `ftsurvey runs list` shows"
        ),
        (None, true) => {
            anyhow::bail!("{run} looks like a run id: pass --coordinator URL to read it from a coordinator")
        }
        (None, false) => anyhow::bail!(
            "results folder {run} not found: pass a folder made by `ftsurvey run` (results/ft_YYYYMMDD_HHMMSS), \
             or a run id with --coordinator URL"
        ),
    }
}

/// Fetches a run and its package results from a coordinator.
async fn load_remote(run: &str, coordinator: &CoordinatorArgs, outputs: Outputs) -> anyhow::Result<LoadedRun> {
    let url = &coordinator.coordinator;
    let mut client = coordinator.connect().await?;
    let got = client
        .get_run(v1::GetRunRequest {
            run_id: run.to_string(),
        })
        .await
        .map_err(|s| crate::remote::status_error(&s))
        .with_context(|| format!("reading run {run} from {url}"))?
        .into_inner();
    let summary = RunSummary::try_from(got.run.context("the coordinator sent no run summary")?)?;
    let spec = RunSpec::try_from(got.spec.context("the coordinator sent no run spec")?)?;
    let request = v1::QueryPackageResultsRequest {
        run_id: run.to_string(),
        with_output: outputs == Outputs::All,
        ..Default::default()
    };
    let results = crate::remote::all_results(&mut client, request)
        .await
        .with_context(|| format!("reading the results of run {run} from {url}"))?;
    let mut records = Vec::new();
    for mut result in results {
        // Packages with nothing recorded yet say nothing; a results folder leaves them out too.
        if result.iterations.is_empty() && result.setup_failure.is_none() && !result.finished {
            continue;
        }
        if outputs == Outputs::Stalled {
            for outcome in result.iterations.iter_mut().filter(|o| o.stalled) {
                let output = client
                    .get_iteration_output(v1::GetIterationOutputRequest {
                        run_id: run.to_string(),
                        package: result.package.clone(),
                        mode: v1::Mode::from(outcome.mode).into(),
                        iteration: outcome.iteration,
                    })
                    .await
                    .map_err(|s| crate::remote::status_error(&s))
                    .with_context(|| format!("reading the output of a stalled iteration of {}", result.package))?
                    .into_inner();
                outcome.stdout_tail = output.stdout_tail;
                outcome.stderr_tail = output.stderr_tail;
            }
        }
        records.push(PackageRecord::of_run(&result, &spec));
    }
    Ok(LoadedRun {
        name: format!("run {run} on {url}"),
        meta: Some(RunMeta::of_run(&summary, &spec)),
        records,
        read_from: Vec::new(),
    })
}

/// Prints a view on stdout with the control characters packages wrote neutralised.
pub(crate) fn print_text(text: &str) {
    print!("{}", domain::views::text::neutralise_controls(text));
}

/// Writes `text` to `output`, or to stdout when there is none. A file is written whole or not
/// at all (a temporary file beside it, renamed over it), and never over what `run` was read
/// from.
pub(crate) fn write_output(output: Option<&Path>, text: &str, run: &LoadedRun) -> anyhow::Result<()> {
    let Some(path) = output else {
        print_text(text);
        return Ok(());
    };
    // The text quotes what packages wrote; a terminal (now, or a `cat` later) must not obey it.
    let text = domain::views::text::neutralise_controls(text);
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .with_context(|| format!("-o {}: not a file name", path.display()))?;
    let target = parent
        .canonicalize()
        .with_context(|| format!("cannot write {}: no folder {}", path.display(), parent.display()))?
        .join(file_name);
    let resolved = target.canonicalize().unwrap_or(target);
    if run.read_from.contains(&resolved) {
        anyhow::bail!(
            "-o {} is a file of the run being read ({}): write the output elsewhere",
            path.display(),
            run.name
        );
    }
    let mut temporary =
        tempfile::NamedTempFile::new_in(parent).with_context(|| format!("cannot write in {}", parent.display()))?;
    std::io::Write::write_all(&mut temporary, text.as_bytes())
        .and_then(|()| temporary.as_file().sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    temporary
        .persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
