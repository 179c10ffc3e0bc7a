//! `ftsurvey run`: select packages, run them embedded, write the results folder as they finish.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::{Context, bail};
use clap::Args;
use domain::results::PackageRecord;
use domain::spec::RunOptions;
use domain::{InterpreterRequirement, Mode, RunId, RunSpec};

use crate::embedded::{Embedded, EmbeddedConfig};
use crate::follow::{FollowOptions, Followed, follow, run_meta, submit, survey};
use crate::interpreters::{Origin, Target, TargetArg};
use crate::places;
use crate::progress::{Progress, ProgressStyle};
use crate::registry_dir;
use crate::remote::ClientCredentials;
use crate::results_dir::ResultsDir;

/// Flags of `ftsurvey run`; names follow the tool ftsurvey replaces.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The interpreter to test with: a path or a name on PATH, or a request such as `3.13t` or
    /// `3.13t-tsan`, met by an interpreter on PATH (`python3.13t`), a managed build
    /// (`ftsurvey python list`) or a build from the source in FTSURVEY_CPYTHON_SOURCE (else
    /// downloaded from python.org). With --coordinator a request is what the fleet's workers
    /// must meet.
    #[arg(
        long,
        env = "FTSURVEY_TARGET_PYTHON",
        value_name = "PATH_OR_REQUEST",
        required_unless_present = "resume"
    )]
    pub(crate) target_python: Option<String>,
    /// Follow run RUN again instead of submitting one, and complete its results folder (found
    /// in --results-dir by its run id, else made anew): a fleet's run after a Ctrl-C or a lost
    /// connection, with --coordinator; an embedded run killed before it finished, from its
    /// --work-dir, on --target-python or the interpreter its folder names. Selection flags are
    /// ignored: the run's packages are the ones it was submitted with.
    #[arg(long, value_name = "RUN", conflicts_with_all = ["detach", "dry_run"])]
    pub(crate) resume: Option<String>,
    /// An embedded run starts only when its work dir holds no run left unfinished (by a run
    /// killed before it ended): with this flag such runs are cancelled first, and their jobs
    /// lost; without it the run refuses and names them.
    #[arg(long, env = "FTSURVEY_DISCARD_UNFINISHED")]
    pub(crate) discard_unfinished: bool,
    /// Submit to this coordinator (a fleet) instead of running embedded, then follow the run.
    #[arg(long, env = "FTSURVEY_COORDINATOR", value_name = "URL")]
    pub(crate) coordinator: Option<String>,
    /// With --coordinator: the client token and CA certificate it asks for.
    #[command(flatten)]
    pub(crate) credentials: ClientCredentials,
    /// With --coordinator: print the run id once submitted and return.
    #[arg(long, requires = "coordinator")]
    pub(crate) detach: bool,
    /// Accept a target that is not free-threaded (the GIL stays on; for testing the tool).
    #[arg(long, env = "FTSURVEY_ALLOW_GIL_BUILD")]
    pub(crate) allow_gil_build: bool,
    /// Times to run each package's test suite (at most 10,000).
    #[arg(long, default_value_t = 10, env = "FTSURVEY_ITERATIONS",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(domain::RunSpec::MAX_ITERATIONS)))]
    pub(crate) iterations: u32,
    /// Seconds before one iteration is killed.
    #[arg(long, default_value_t = 600, env = "FTSURVEY_TIMEOUT",
          value_parser = clap::value_parser!(u64).range(1..=domain::RunSpec::MAX_TIMEOUT_SECS))]
    pub(crate) timeout: u64,
    /// Seconds without output and CPU progress before an iteration counts as stalled.
    #[arg(long, default_value_t = 60, env = "FTSURVEY_STALL_THRESHOLD",
          value_parser = clap::value_parser!(u64).range(1..=domain::RunSpec::MAX_STALL_THRESHOLD_SECS))]
    pub(crate) stall_threshold: u64,
    /// Only these packages (exact names; comma-separated or repeated).
    #[arg(long, value_delimiter = ',', env = "FTSURVEY_PACKAGES")]
    pub(crate) packages: Vec<String>,
    /// The N most popular selectable packages of the registry.
    #[arg(long, env = "FTSURVEY_TOP")]
    pub(crate) top: Option<usize>,
    /// Registry directory (index.yaml + packages/); without it, the registry built into
    /// ftsurvey (popular PyPI packages, tested from their sdists).
    #[arg(long, env = "FTSURVEY_REGISTRY_DIR")]
    pub(crate) registry_dir: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) allow_env: registry_dir::AllowEnvArg,
    /// Print the selected packages with their source, install and test commands, then what
    /// the registry sets beyond the defaults, and run nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Where sources, venvs, the pip cache and the embedded database live.
    #[arg(long, env = "FTSURVEY_WORK_DIR")]
    pub(crate) work_dir: Option<PathBuf>,
    /// Where the results folder `ft_YYYYMMDD_HHMMSS` is created.
    #[arg(long, default_value = "results", env = "FTSURVEY_RESULTS_DIR")]
    pub(crate) results_dir: PathBuf,
    /// Extra environment for the tests, KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env_pair)]
    pub(crate) env: Vec<(String, String)>,
    /// Extra packages to install into every venv (comma-separated or repeated).
    #[arg(long, value_delimiter = ',', env = "FTSURVEY_EXTRA_DEPS")]
    pub(crate) extra_deps: Vec<String>,
    /// Appended to every test command.
    #[arg(long, allow_hyphen_values = true, env = "FTSURVEY_TEST_COMMAND_SUFFIX")]
    pub(crate) test_command_suffix: Option<String>,
    /// Replaces every package's test command.
    #[arg(long, allow_hyphen_values = true, env = "FTSURVEY_TEST_COMMAND_OVERRIDE")]
    pub(crate) test_command_override: Option<String>,
    /// Stop testing a package once one iteration passes.
    #[arg(long, env = "FTSURVEY_STOP_ON_FIRST_PASS")]
    pub(crate) stop_on_first_pass: bool,
    /// Also run every iteration with the GIL enabled (PYTHON_GIL=1) and tell free-threading
    /// failures (`ft_specific`) from failures the package has anyway (`pre_existing`).
    #[arg(long, env = "FTSURVEY_COMPARE_WITH_GIL")]
    pub(crate) compare_with_gil: bool,
    /// Import each package and its extension modules with PYTHON_GIL unset to see which
    /// re-enable the GIL (default: on).
    #[arg(long, overrides_with = "no_detect_extensions")]
    pub(crate) detect_extensions: bool,
    /// Skip the extension probe.
    #[arg(long, env = "FTSURVEY_NO_DETECT_EXTENSIONS")]
    pub(crate) no_detect_extensions: bool,
    /// Parse ThreadSanitizer reports; the target must be a TSAN build.
    #[arg(long, env = "FTSURVEY_TSAN")]
    pub(crate) tsan: bool,
    /// Check load and free memory before starting and refuse to start on a busy machine.
    #[arg(long, env = "FTSURVEY_CHECK_STABILITY")]
    pub(crate) check_stability: bool,
    /// No progress on stderr: only errors, then the summary on stdout.
    #[arg(short, long, env = "FTSURVEY_QUIET")]
    pub(crate) quiet: bool,
    #[command(flatten)]
    pub(crate) setup: crate::setup_args::SetupArgs,
    /// How much disk the local workers keep (not a fleet's).
    #[command(flatten)]
    pub(crate) cache: crate::disk_args::CacheArgs,
    /// The sandbox and limits of the local workers (not of a fleet's).
    #[command(flatten)]
    pub(crate) sandbox: crate::sandbox_args::SandboxArgs,
    /// Thread stress: run every pytest test in N threads at once (installs pytest-run-parallel
    /// into each venv); the results say how many tests ran in parallel and how many were
    /// run alone as thread-unsafe.
    #[arg(long, value_name = "N", env = "FTSURVEY_PARALLEL_THREADS", value_parser = clap::value_parser!(u32).range(2..=1024))]
    pub(crate) parallel_threads: Option<u32>,
    /// Let every package's tests use the host network (without it, only the packages whose
    /// registry file says `network: true` do).
    #[arg(long, env = "FTSURVEY_TEST_NETWORK")]
    pub(crate) test_network: bool,
    /// A package with a free-threaded wheel on PyPI for the version tested (the pinned one,
    /// else the latest), the target's ABI and this platform is `compatible_by_wheel` and is
    /// not run.
    #[arg(long, env = "FTSURVEY_TRUST_FT_WHEELS")]
    pub(crate) trust_ft_wheels: bool,
    /// Like --trust-ft-wheels, with a free-threaded wheel of any release.
    #[arg(long, env = "FTSURVEY_TRUST_FT_WHEELS_ANY_VERSION")]
    pub(crate) trust_ft_wheels_any_version: bool,
    /// Local workers, each running one iteration at a time.
    #[arg(long, default_value_t = 1, env = "FTSURVEY_WORKERS", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub(crate) workers: u32,
}

fn parse_env_pair(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((key, val)) if !key.is_empty() => Ok((key.to_string(), val.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {value:?}")),
    }
}

/// Probes `--target-python`, or finds or builds the interpreter a request asks for; with a
/// coordinator (or for a dry run) a request is kept as such. Refuses what the flags do not
/// allow.
async fn resolve_target(args: &RunArgs, text: &str) -> anyhow::Result<Target> {
    let text = text.trim();
    let provisioning = crate::interpreters::provisioning_from_env()?;
    let target = crate::interpreters::parse_target(text, &provisioning.path_var)?;
    let (target_python, origin) = match target {
        TargetArg::Request(mut requirement) => {
            requirement.tsan |= args.tsan;
            if !requirement.free_threaded && !args.allow_gil_build {
                bail!("--target-python {text} requests a GIL build; add `t` (e.g. 3.13t) or pass --allow-gil-build");
            }
            if args.coordinator.is_some() {
                return Ok(Target::Requested(requirement));
            }
            // A dry run names the interpreter a run would use, but builds none.
            let found = if args.dry_run {
                match crate::interpreters::find_existing(&requirement, &provisioning).await {
                    Some(found) => found,
                    None => {
                        eprintln!(
                            "--target-python {text}: no interpreter on PATH or among the managed builds; a run would build one"
                        );
                        return Ok(Target::Requested(requirement));
                    }
                }
            } else {
                crate::interpreters::resolve_request(&requirement, &provisioning)
                    .await
                    .with_context(|| format!("--target-python {text}"))?
            };
            let (profile, origin) = found;
            (PathBuf::from(&profile.executable), origin)
        }
        TargetArg::Path(path) => (places::absolute(&path)?, Origin::Given),
    };
    let profile = worker::probe::probe(&target_python)
        .await
        .with_context(|| format!("cannot use --target-python {text}"))?;
    if !profile.free_threaded && !args.allow_gil_build {
        bail!(
            "--target-python {text} is not a free-threaded build ({}); build one with `ftsurvey python build`, \
             or pass --allow-gil-build to use it anyway",
            profile.summary()
        );
    }
    if args.tsan && !profile.tsan {
        bail!(
            "--tsan needs a ThreadSanitizer build, and --target-python {text} is not one ({}); build one with `ftsurvey python build --tsan`",
            profile.summary()
        );
    }
    if origin != Origin::Given {
        eprintln!(
            "--target-python {text}: {} ({}), {}",
            target_python.display(),
            profile.summary(),
            origin.as_str()
        );
    }
    Ok(Target::Local(profile))
}

/// Runs a survey, embedded or on a fleet; returns the exit code (130 when interrupted).
pub(crate) async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let started_at = jiff::Timestamp::now();
    let allowed_env = args.allow_env.allowed()?;
    if args.coordinator.is_none() && !args.dry_run {
        // The local workers' sandbox, before anything is built, fetched or written.
        args.sandbox.config(Vec::new()).check()?;
    }
    if let Some(run) = &args.resume {
        return resume(&args, run, started_at).await;
    }
    let target_python = args.target_python.as_deref().unwrap_or_default();
    let target = resolve_target(&args, target_python).await?;
    let requirement = match &target {
        // The interpreter given, as exactly as its workers can meet it: a debug build or not,
        // and, run by local workers on this very interpreter, its build.
        Target::Local(profile) => InterpreterRequirement {
            python_version: Some(profile.major_minor.clone()),
            free_threaded: profile.free_threaded,
            tsan: args.tsan,
            debug: Some(profile.debug),
            build: args.coordinator.is_none().then(|| profile.build_id()),
        },
        Target::Requested(requirement) => requirement.clone(),
    };
    if args.check_stability {
        eprintln!("{}", crate::stability::Figures::read()?.judge()?);
    }
    let registry = registry_dir::load_registry_or_builtin(args.registry_dir.as_deref(), &allowed_env)?;
    for warning in &registry.warnings {
        eprintln!("warning: {}", domain::views::text::neutralise_controls(warning));
    }
    let selection = domain::registry::laruche::Selection {
        packages: (!args.packages.is_empty()).then(|| args.packages.clone()),
        top: args.top,
        python_version: requirement.python_version.clone(),
    };
    let selected = domain::registry::laruche::select(&registry.index, &registry.entries, &registry.dir, &selection)?;
    for (name, reason) in &selected.excluded {
        eprintln!("warning: skipping {name}: {reason}");
    }
    if selected.specs.is_empty() {
        bail!(
            "no packages selected from the {} registry: check --packages and --top",
            registry.label
        );
    }
    let results_root = places::absolute(&args.results_dir)?;
    let work_dir = places::work_dir(args.work_dir.as_deref())?;
    let mut specs = selected.specs;
    let trusted = if args.dry_run {
        Vec::new()
    } else {
        trust_wheels(&args, &target, &requirement, &mut specs, &work_dir)
    };
    if specs.is_empty() {
        // Every package is trusted by its wheel: nothing to run.
        let results = ResultsDir::create(&results_root, started_at)?;
        let run_id = domain::RunId::new_at(started_at.as_millisecond() as u64);
        let spec = RunSpec {
            label: format!("{} packages trusted by their wheels", trusted.len()),
            packages: Vec::new(),
            iterations: args.iterations,
            modes: vec![Mode::Ft],
            options: RunOptions::default(),
            requirement,
            registry: Some(registry.label.clone()),
            rerun_of: None,
        };
        let mut meta = run_meta(run_id, &spec, args.workers, target.profile(), started_at);
        meta.config.packages = trusted.iter().map(|r| r.package.clone()).collect();
        meta.finished_at = Some(jiff::Timestamp::now().to_string());
        results.write_meta(&meta)?;
        for record in &trusted {
            results.append_package(record)?;
        }
        let show =
            domain::views::show::render_show(Some(&meta), &trusted, &domain::views::show::ShowOptions::default());
        println!("{show}");
        println!("results: {}", results.path().display());
        return Ok(ExitCode::SUCCESS);
    }

    let spec = RunSpec {
        label: format!(
            "{} packages x {} on {}",
            specs.len(),
            args.iterations,
            requirement.describe()
        ),
        packages: specs,
        iterations: args.iterations,
        modes: if args.compare_with_gil {
            vec![Mode::Ft, Mode::Gil]
        } else {
            vec![Mode::Ft]
        },
        options: RunOptions {
            timeout_secs: args.timeout,
            stall_threshold_secs: args.stall_threshold,
            env: args.env.clone(),
            extra_deps: args.extra_deps.clone(),
            test_command_suffix: args.test_command_suffix.clone(),
            test_command_override: args.test_command_override.clone(),
            stop_on_first_pass: args.stop_on_first_pass,
            detect_extensions: args.detect_extensions || !args.no_detect_extensions,
            tsan: args.tsan,
            parallel_threads: args.parallel_threads,
            test_network: args.test_network,
        },
        requirement,
        registry: Some(registry.label.clone()),
        rerun_of: None,
    };
    if args.dry_run {
        print!(
            "{}",
            domain::views::text::neutralise_controls(&domain::views::plan::render_dry_run(&spec))
        );
        return Ok(ExitCode::SUCCESS);
    }

    let follow = FollowOptions {
        coordinator: args.coordinator.as_deref().map(|url| args.credentials.at(url)),
        quiet: args.quiet,
        n_workers: args.workers,
    };
    let (mut client, mut embedded, results) = match &follow.coordinator {
        Some(fleet) => {
            let mut client = fleet.connect().await?;
            if args.detach {
                let summary = submit(&mut client, &spec).await?;
                println!("{}", summary.run_id);
                return Ok(ExitCode::SUCCESS);
            }
            (client, None, ResultsDir::create(&results_root, started_at)?)
        }
        None => {
            let Target::Local(profile) = &target else {
                bail!("an embedded run needs --target-python to be an interpreter on this machine");
            };
            // Before the results folder: a run refused for a busy work dir, or one holding
            // unfinished runs, leaves nothing behind.
            let embedded = start_embedded(&args, &work_dir, profile, None).await?;
            match ResultsDir::create(&results_root, started_at) {
                Ok(results) => (embedded.client.clone(), Some(embedded), results),
                Err(error) => {
                    embedded.stop().await?;
                    return Err(error);
                }
            }
        }
    };
    let outcome = survey(
        &mut client,
        embedded.as_mut(),
        &spec,
        &follow,
        &target,
        &results,
        &trusted,
        started_at,
    )
    .await;
    stop_after(outcome, embedded).await
}

/// Locks the work dir and starts the coordinator and local workers on it; refuses, stopping
/// them, when the work dir holds an unfinished run other than `resumed`
/// ([`unfinished_runs`]).
async fn start_embedded(
    args: &RunArgs,
    work_dir: &Path,
    profile: &domain::InterpreterProfile,
    resumed: Option<RunId>,
) -> anyhow::Result<Embedded> {
    let work_dir_lock = crate::embedded::lock_work_dir(work_dir)?;
    let mut embedded = Embedded::start(EmbeddedConfig {
        work_dir: work_dir.to_path_buf(),
        work_dir_lock,
        target_python: profile.executable.clone().into(),
        n_workers: args.workers,
        allow_gil_build: args.allow_gil_build,
        places: args.setup.resolve(work_dir, std::env::var_os("PATH").as_deref())?,
        sandbox: args.sandbox.config(Vec::new()),
        // A local worker short of disk would stall the run without a word: it never
        // refuses jobs, and a full disk fails the iteration that meets it.
        disk: args.cache.policy(0.0),
    })
    .await?;
    if let Err(error) = unfinished_runs(&mut embedded.client, resumed, args.discard_unfinished, work_dir).await {
        embedded.stop().await?;
        return Err(error);
    }
    Ok(embedded)
}

/// Refuses, or with `discard` cancels, the runs other than `except` the embedded store holds
/// unfinished: local workers would take their jobs along with this run's.
async fn unfinished_runs(
    client: &mut crate::remote::Client,
    except: Option<RunId>,
    discard: bool,
    work_dir: &Path,
) -> anyhow::Result<()> {
    let listed = client
        .list_runs(proto::v1::ListRunsRequest { limit: 1000 })
        .await
        .map_err(|s| crate::remote::status_error(&s))
        .context("listing the work dir's runs")?
        .into_inner();
    let mut unfinished = Vec::new();
    for run in listed.runs {
        let run = domain::RunSummary::try_from(run)?;
        if !run.state.is_terminal() && Some(run.run_id) != except {
            unfinished.push(run);
        }
    }
    let Some(first) = unfinished.first() else {
        return Ok(());
    };
    if !discard {
        bail!(
            "the work dir {} holds run {} ({} of {} packages finished), left unfinished by a run that was killed: \
             resume it with `ftsurvey run --resume {}`, or pass --discard-unfinished to cancel it{}",
            work_dir.display(),
            first.run_id,
            first.packages_finished,
            first.packages_total,
            first.run_id,
            match unfinished.len() {
                1 => String::new(),
                n => format!(" and the {} other unfinished runs", n - 1),
            }
        );
    }
    for run in unfinished {
        client
            .cancel_run(proto::v1::CancelRunRequest {
                run_id: run.run_id.to_string(),
            })
            .await
            .map_err(|s| crate::remote::status_error(&s))
            .with_context(|| format!("cancelling run {}", run.run_id))?;
        eprintln!(
            "cancelled run {} ({} of {} packages finished), left unfinished in the work dir (--discard-unfinished)",
            run.run_id, run.packages_finished, run.packages_total
        );
    }
    Ok(())
}

/// `run --resume RUN`: follows a run already submitted and completes its results folder.
async fn resume(args: &RunArgs, run: &str, started_at: jiff::Timestamp) -> anyhow::Result<ExitCode> {
    let run_id = RunId::from_str(run.trim())
        .map_err(|_| anyhow::anyhow!("--resume {run}: not a run id (the UUID `ftsurvey runs list` shows)"))?;
    let results_root = places::absolute(&args.results_dir)?;
    let folder = crate::results_dir::find_run_folder(&results_root, &run_id.to_string());
    let before = match &folder {
        Some(path) => Some(ResultsDir::reopen(path)?),
        None => None,
    };
    let follow_options = FollowOptions {
        coordinator: args.coordinator.as_deref().map(|url| args.credentials.at(url)),
        quiet: args.quiet,
        n_workers: args.workers,
    };
    let (mut client, mut embedded, target) = match &follow_options.coordinator {
        Some(fleet) => (fleet.connect().await?, None, None),
        None => {
            let work_dir = places::work_dir(args.work_dir.as_deref())?;
            let named = before
                .as_ref()
                .and_then(|(_, meta, _)| meta.as_ref())
                .map(|m| m.target_python.clone());
            let Some(text) = args.target_python.clone().or(named) else {
                bail!(
                    "--resume {run_id}: no results folder in {} names its interpreter: pass --target-python",
                    results_root.display()
                );
            };
            let target = resolve_target(args, &text).await?;
            let Target::Local(profile) = &target else {
                bail!("an embedded run needs --target-python to be an interpreter on this machine");
            };
            let embedded = start_embedded(args, &work_dir, profile, Some(run_id)).await?;
            let client = embedded.client.clone();
            (client, Some(embedded), Some(target))
        }
    };
    let outcome = resume_following(
        &mut client,
        embedded.as_mut(),
        run_id,
        args,
        target.as_ref(),
        before,
        &follow_options,
        started_at,
    )
    .await;
    stop_after(outcome, embedded).await
}

/// Stops the local workers and coordinator, if any, even when following failed; then the
/// following's outcome, or the stop's failure.
async fn stop_after(outcome: anyhow::Result<ExitCode>, embedded: Option<Embedded>) -> anyhow::Result<ExitCode> {
    let stopped = match embedded {
        Some(embedded) => embedded.stop().await,
        None => Ok(()),
    };
    let code = outcome?;
    stopped?;
    Ok(code)
}

/// The part of [`resume`] once the coordinator is reachable: the run, its folder, following.
#[allow(clippy::too_many_arguments)]
async fn resume_following(
    client: &mut crate::remote::Client,
    embedded: Option<&mut Embedded>,
    run_id: RunId,
    args: &RunArgs,
    target: Option<&Target>,
    before: Option<(ResultsDir, Option<domain::results::RunMeta>, Vec<PackageRecord>)>,
    options: &FollowOptions,
    started_at: jiff::Timestamp,
) -> anyhow::Result<ExitCode> {
    let where_from = match &options.coordinator {
        Some(fleet) => format!("on {}", fleet.coordinator),
        None => "in the work dir: pass the --work-dir it ran in, or --coordinator URL for a fleet's run".to_string(),
    };
    let got = client
        .get_run(proto::v1::GetRunRequest {
            run_id: run_id.to_string(),
        })
        .await
        .map_err(|s| crate::remote::status_error(&s))
        .with_context(|| format!("--resume {run_id}: reading the run {where_from}"))?
        .into_inner();
    let summary = domain::RunSummary::try_from(got.run.context("the coordinator sent no run")?)?;
    let spec = RunSpec::try_from(got.spec.context("the coordinator sent no run spec")?)?;
    if let Some(Target::Local(profile)) = target
        && !spec.requirement.is_met_by(profile)
    {
        bail!(
            "--resume {run_id}: the run asks for {}, and {} is {}",
            spec.requirement.describe(),
            profile.executable,
            profile.summary()
        );
    }
    let (results, meta, records) = match before {
        Some((results, meta, records)) => (results, meta, records),
        None => (
            ResultsDir::create(&places::absolute(&args.results_dir)?, started_at)?,
            None,
            Vec::new(),
        ),
    };
    let meta = meta.unwrap_or_else(|| {
        let created = jiff::Timestamp::from_millisecond(summary.created_at_ms).unwrap_or(started_at);
        run_meta(run_id, &spec, args.workers, target.and_then(Target::profile), created)
    });
    results.write_meta(&meta)?;
    let mut progress = Progress::new(ProgressStyle::detect(args.quiet));
    progress.println(&format!(
        "resuming run {run_id} ({}, {} of {} packages finished): {} packages already in {}",
        summary.state,
        summary.packages_finished,
        summary.packages_total,
        records.len(),
        results.path().display()
    ));
    let run = Followed {
        run_id,
        spec: &spec,
        meta,
        records,
    };
    follow(client, embedded, run, options, &results, progress).await
}

/// With `--trust-ft-wheels`: takes the packages PyPI has a free-threaded wheel for out of
/// `specs` and returns their records.
fn trust_wheels(
    args: &RunArgs,
    target: &Target,
    requirement: &InterpreterRequirement,
    specs: &mut Vec<domain::PackageSpec>,
    work_dir: &Path,
) -> Vec<PackageRecord> {
    if !args.trust_ft_wheels && !args.trust_ft_wheels_any_version {
        return Vec::new();
    }
    let abi_tag = target.profile().map_or_else(
        || {
            format!(
                "cp{}t",
                requirement.python_version.clone().unwrap_or_default().replace('.', "")
            )
        },
        |p| p.abi_tag.clone(),
    );
    let platform = target.profile().map_or_else(
        || format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH),
        |p| p.platform.clone(),
    );
    let cache_dir = crate::trust_wheels::cache_dir(work_dir);
    let query = crate::trust_wheels::WheelQuery {
        abi_tag: &abi_tag,
        platform: &platform,
        any_version: args.trust_ft_wheels_any_version,
        cache_dir: &cache_dir,
    };
    let (trusted, warnings) =
        crate::trust_wheels::trusted_packages(specs, &query, &crate::trust_wheels::fetch_with_curl);
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
    specs.retain(|spec| !trusted.iter().any(|(name, _)| *name == spec.name));
    trusted
        .iter()
        .map(|(name, wheel)| crate::trust_wheels::trusted_record(name, wheel, &abi_tag))
        .collect()
}
