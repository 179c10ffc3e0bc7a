//! The fleet's long-running commands: `ftsurvey serve` (a coordinator) and `ftsurvey worker`
//! (a worker pulling jobs from one). Both run until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use clap::parser::ValueSource;
use domain::WorkerId;
use tokio_util::sync::CancellationToken;

use crate::places;
use crate::remote::CaCertArg;

/// Flags of `ftsurvey serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The store: `postgres://USER[:PASSWORD]@HOST[:PORT]/DB` or `sqlite://PATH`; migrations
    /// are applied at start.
    // Its value stays out of --help: the URL may carry the password.
    #[arg(long, env = "FTSURVEY_DATABASE_URL", hide_env_values = true, value_name = "URL")]
    database_url: String,
    /// Address to serve gRPC on.
    #[arg(
        long,
        default_value = "127.0.0.1:50051",
        env = "FTSURVEY_LISTEN",
        value_name = "ADDR"
    )]
    listen: SocketAddr,
    /// Require this bearer token of workers.
    #[arg(long, env = "FTSURVEY_WORKER_TOKEN", hide_env_values = true)]
    worker_token: Option<String>,
    /// A file of tokens each bound to one worker, `WORKER_ID TOKEN` per line: a worker
    /// connecting with one may only be that worker, that worker may only connect with it, and
    /// it alone may take over a live session of its name. With --worker-token too, other ids
    /// connect with the shared token.
    #[arg(long, env = "FTSURVEY_WORKER_TOKENS_FILE", value_name = "FILE")]
    worker_tokens: Option<PathBuf>,
    /// Require this bearer token of clients (run, status, runs).
    #[arg(long, env = "FTSURVEY_CLIENT_TOKEN", hide_env_values = true)]
    client_token: Option<String>,
    /// Serve TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "FTSURVEY_TLS_CERT", requires = "tls_key", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The TLS certificate's private key (PEM).
    #[arg(long, env = "FTSURVEY_TLS_KEY", requires = "tls_cert", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Seconds a lease lasts without a heartbeat: how long a worker cut off from the network
    /// keeps its jobs before they go to others. Workers heartbeat every 2 s.
    #[arg(long, default_value_t = 15, env = "FTSURVEY_LEASE_DURATION", value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(5..=3600))]
    lease_duration: u64,
    /// Leases a job may get before it is recorded as lost (an infrastructure result).
    #[arg(long, default_value_t = 3, env = "FTSURVEY_MAX_ATTEMPTS", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100))]
    max_attempts: u32,
    /// Days a finished or cancelled run's jobs stay in the table the coordinator dispatches
    /// from before they move to the archive (0: as soon as the run finishes), keeping that
    /// table as small as the runs going; archived runs' results read the same. `ftsurvey runs
    /// archive` does it at once, `ftsurvey runs purge` deletes a run.
    #[arg(long, default_value_t = 1, env = "FTSURVEY_KEEP_FINISHED_JOBS", value_name = "DAYS",
          value_parser = clap::value_parser!(u32).range(0..=36_500))]
    keep_finished_jobs: u32,
    /// Serve on an address other than loopback without worker and client tokens or without
    /// TLS. Anyone who reaches such a coordinator can submit runs, and a run's commands are
    /// shell commands every worker executes.
    #[arg(long, env = "FTSURVEY_INSECURE")]
    insecure: bool,
}

/// Flags of `ftsurvey worker`.
#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    /// The coordinator, e.g. `http://coordinator:50051`.
    #[arg(long, env = "FTSURVEY_COORDINATOR", value_name = "URL")]
    coordinator: String,
    /// The free-threaded interpreter this worker tests with: a path or a name on PATH, or a
    /// request such as `3.13t` found or built as `run` does.
    #[arg(long, env = "FTSURVEY_TARGET_PYTHON", value_name = "PATH_OR_REQUEST")]
    target_python: String,
    /// Iterations run at once.
    #[arg(long, default_value_t = 1, env = "FTSURVEY_SLOTS", value_parser = clap::value_parser!(u32).range(1..=256))]
    slots: u32,
    /// Sources, venvs, logs and the outcome spool (default: `~/.cache/ftsurvey/work`).
    #[arg(long, env = "FTSURVEY_WORK_DIR", value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// This worker's name, unique in the fleet (default: `<hostname>-<pid>`). Keep it across
    /// restarts so the spool's outcomes are delivered.
    #[arg(long, env = "FTSURVEY_WORKER_ID")]
    worker_id: Option<String>,
    #[command(flatten)]
    setup: crate::setup_args::SetupArgs,
    /// Accept a target that is not free-threaded.
    #[arg(long, env = "FTSURVEY_ALLOW_GIL_BUILD")]
    allow_gil_build: bool,
    /// A file holding the bearer token the coordinator requires of workers (readable by this
    /// worker's user alone); the sandbox hides it from what the worker runs.
    #[arg(long, env = "FTSURVEY_WORKER_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The bearer token on the command line, or in the environment. Prefer --token-file: a
    /// command line is readable by every local user.
    #[arg(long = "token", env = "FTSURVEY_WORKER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(flatten)]
    ca: CaCertArg,
    #[command(flatten)]
    sandbox: crate::sandbox_args::SandboxArgs,
    #[command(flatten)]
    cache: crate::disk_args::CacheArgs,
    /// Take no new jobs while the work dir's filesystem has less than this many GiB free
    /// (fractions allowed; 0 disables): the oldest iteration logs are deleted first, and the
    /// reason shows in `ftsurvey status` until space comes back.
    #[arg(long, default_value = "2", env = "FTSURVEY_MIN_FREE_GB", value_name = "GIB", value_parser = crate::disk_args::parse_amount)]
    min_free_gb: f64,
}

pub(crate) async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    check_exposure(&args)?;
    let worker_tokens = match &args.worker_tokens {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --worker-tokens {}", path.display()))?;
            coordinator::parse_worker_tokens(&text)
                .map_err(|error| anyhow::anyhow!("--worker-tokens {}: {error}", path.display()))?
        }
        None => Vec::new(),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let shutdown = CancellationToken::new();
    spawn_stop_on_signal(shutdown.clone());
    eprintln!(
        "coordinator on {} with store {}",
        listener.local_addr()?,
        coordinator::store::redact_url(&args.database_url)
    );
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(coordinator::TlsFiles {
            cert_pem: std::fs::read(cert).with_context(|| format!("cannot read --tls-cert {}", cert.display()))?,
            key_pem: std::fs::read(key).with_context(|| format!("cannot read --tls-key {}", key.display()))?,
        }),
        _ => None,
    };
    let config = coordinator::Config {
        worker_token: args.worker_token,
        worker_tokens,
        client_token: args.client_token,
        tls,
        settings: coordinator::Settings {
            lease_duration: std::time::Duration::from_secs(args.lease_duration),
            max_attempts: args.max_attempts,
            keep_finished_jobs: Some(std::time::Duration::from_secs(
                u64::from(args.keep_finished_jobs) * 24 * 3600,
            )),
            ..coordinator::Settings::default()
        },
        ..coordinator::Config::new(args.database_url)
    };
    coordinator::run(config, listener, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// Runs a worker; `token_source` says where clap found `--token`, typed or from the
/// environment.
pub(crate) async fn worker(args: WorkerArgs, token_source: Option<ValueSource>) -> anyhow::Result<ExitCode> {
    let token = worker_token(&args, token_source)?;
    let work_dir = places::work_dir(args.work_dir.as_deref())?;
    places::create_work_dir(&work_dir)?;
    let worker_id = match &args.worker_id {
        Some(id) => id.clone(),
        None => format!(
            "{}-{}",
            places::hostname().unwrap_or_else(|| "worker".to_string()),
            std::process::id()
        ),
    };
    proto::auth::check_transport(&args.coordinator, args.ca.ca_cert.is_some()).map_err(anyhow::Error::msg)?;
    let token_flag = if args.token_file.is_some() {
        "--token-file"
    } else {
        "--token"
    };
    proto::auth::BearerToken::new(token.as_deref()).map_err(|e| anyhow::anyhow!("invalid {token_flag}: {e}"))?;
    let sandbox = args.sandbox.config(hidden_files(&args)?);
    sandbox.check()?;
    let target_python = worker_target(&args.target_python).await?;
    let places = args.setup.resolve(&work_dir, std::env::var_os("PATH").as_deref())?;
    let config = worker::WorkerConfig {
        worker_id: WorkerId::parse(&worker_id).with_context(|| format!("invalid --worker-id {worker_id:?}"))?,
        coordinator_url: args.coordinator.clone(),
        target_python: target_python.clone(),
        slots: args.slots,
        venvs_dir: places.venvs_dir,
        repos_dir: places.repos_dir,
        pip_cache_dir: places.pip_cache_dir,
        installer: places.installer,
        work_dir,
        base_path: places::base_path(),
        allow_gil_build: args.allow_gil_build,
        token,
        ca_cert: args.ca.read_pem()?,
        sandbox,
        disk: args.cache.policy(args.min_free_gb),
    };
    let shutdown = CancellationToken::new();
    spawn_stop_on_signal(shutdown.clone());
    eprintln!(
        "worker {worker_id}: {} slots, {} -> {}",
        args.slots,
        target_python.display(),
        args.coordinator
    );
    worker::run(config, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// The worker's token: read from `--token-file`, or `--token` as given (with a warning when
/// typed, as every local user can read a command line). The two are one too many.
fn worker_token(args: &WorkerArgs, token_source: Option<ValueSource>) -> anyhow::Result<Option<String>> {
    let typed = token_source == Some(ValueSource::CommandLine);
    match (&args.token_file, &args.token) {
        (Some(_), Some(_)) if typed => anyhow::bail!("--token and --token-file both give the token: give one"),
        (Some(_), Some(_)) => {
            anyhow::bail!("--token-file and FTSURVEY_WORKER_TOKEN both give the token: unset FTSURVEY_WORKER_TOKEN")
        }
        (Some(path), None) => Ok(Some(crate::secrets::read_token_file("--token-file", path)?)),
        (None, token) => {
            if typed {
                eprintln!(
                    "warning: --token is readable by every local user in /proc/{}/cmdline; give the token with --token-file instead",
                    std::process::id()
                );
            }
            Ok(token.clone())
        }
    }
}

/// The worker's secrets for the sandbox to hide: its token file and CA certificate, as the
/// files they are (a symlink's target).
fn hidden_files(args: &WorkerArgs) -> anyhow::Result<Vec<PathBuf>> {
    [("--token-file", &args.token_file), ("--ca-cert", &args.ca.ca_cert)]
        .into_iter()
        .filter_map(|(flag, path)| Some((flag, path.as_ref()?)))
        .map(|(flag, path)| {
            std::fs::canonicalize(path).with_context(|| format!("cannot read {flag} {}", path.display()))
        })
        .collect()
}

/// Refuses empty tokens, and a coordinator reachable beyond this machine without both tokens
/// and TLS unless `--insecure` says so (then it warns).
fn check_exposure(args: &ServeArgs) -> anyhow::Result<()> {
    for (flag, token) in [
        ("--worker-token", &args.worker_token),
        ("--client-token", &args.client_token),
    ] {
        if token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            anyhow::bail!("{flag} is empty: give a token, or leave the flag out");
        }
    }
    if args.listen.ip().is_loopback() {
        return Ok(());
    }
    let mut missing = Vec::new();
    if args.worker_token.is_none() && args.worker_tokens.is_none() {
        missing.push("--worker-token/--worker-tokens");
    }
    if args.client_token.is_none() {
        missing.push("--client-token");
    }
    if args.tls_cert.is_none() {
        missing.push("--tls-cert/--tls-key");
    }
    if missing.is_empty() {
        return Ok(());
    }
    let missing = missing.join(", ");
    if !args.insecure {
        anyhow::bail!(
            "--listen {} is reachable beyond this machine, and without {missing} anyone who reaches it can run commands on every worker; give them, or pass --insecure",
            args.listen
        );
    }
    eprintln!(
        "warning: serving on {} without {missing} (--insecure): anyone who reaches it can submit runs, whose commands every worker executes",
        args.listen
    );
    Ok(())
}

/// Cancels `shutdown` on Ctrl-C or SIGTERM.
fn spawn_stop_on_signal(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGTERM");
                let _ = tokio::signal::ctrl_c().await;
                shutdown.cancel();
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        shutdown.cancel();
    });
}

/// The worker's interpreter: `--target-python` as a path, or a request met as `run` meets it.
async fn worker_target(text: &str) -> anyhow::Result<PathBuf> {
    let provisioning = crate::interpreters::provisioning_from_env()?;
    match crate::interpreters::parse_target(text, &provisioning.path_var)? {
        crate::interpreters::TargetArg::Path(path) => places::absolute(&path),
        crate::interpreters::TargetArg::Request(requirement) => {
            let (profile, origin) = crate::interpreters::resolve_request(&requirement, &provisioning)
                .await
                .with_context(|| format!("--target-python {text}"))?;
            eprintln!("--target-python {text}: {} ({})", profile.executable, origin.as_str());
            Ok(PathBuf::from(profile.executable))
        }
    }
}
