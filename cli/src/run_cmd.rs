//! `ftsurvey run`: select packages, run them embedded, write the results folder as they finish.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use domain::results::PackageRecord;
use domain::spec::RunOptions;
use domain::{InterpreterRequirement, Mode, RunSpec};

use crate::embedded::{Embedded, EmbeddedConfig};
use crate::follow::{FollowOptions, run_meta, submit, survey};
use crate::interpreters::{Origin, Target, TargetArg};
use crate::places;
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
    #[arg(long, env = "FTSURVEY_TARGET_PYTHON", value_name = "PATH_OR_REQUEST")]
    pub(crate) target_python: String,
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
async fn resolve_target(args: &RunArgs) -> anyhow::Result<Target> {
    let text = args.target_python.trim();
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
    let target = resolve_target(&args).await?;
    let requirement = match &target {
        Target::Local(profile) => InterpreterRequirement {
            python_version: Some(profile.major_minor.clone()),
            free_threaded: profile.free_threaded,
            tsan: args.tsan,
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
            // Before the results folder: a run refused for a busy work dir leaves nothing behind.
            let work_dir_lock = crate::embedded::lock_work_dir(&work_dir)?;
            let results = ResultsDir::create(&results_root, started_at)?;
            let embedded = Embedded::start(EmbeddedConfig {
                work_dir: work_dir.clone(),
                work_dir_lock,
                target_python: profile.executable.clone().into(),
                n_workers: args.workers,
                allow_gil_build: args.allow_gil_build,
                places: args.setup.resolve(&work_dir, std::env::var_os("PATH").as_deref())?,
                sandbox: args.sandbox.config(Vec::new()),
                // A local worker short of disk would stall the run without a word: it never
                // refuses jobs, and a full disk fails the iteration that meets it.
                disk: args.cache.policy(0.0),
            })
            .await?;
            (embedded.client.clone(), Some(embedded), results)
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
    // The local workers and coordinator stop even when following failed.
    let stopped = match embedded {
        Some(embedded) => embedded.stop().await,
        None => Ok(()),
    };
    let code = outcome?;
    stopped?;
    Ok(code)
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
