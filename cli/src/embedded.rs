//! Embedded mode: a coordinator on SQLite and local workers in this process, talking the same
//! gRPC over loopback as a fleet would.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use domain::WorkerId;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::places;
use crate::remote::ClientCredentials;

/// A running coordinator and its local workers.
#[derive(Debug)]
pub(crate) struct Embedded {
    pub(crate) client: crate::remote::Client,
    coordinator: JoinHandle<anyhow::Result<()>>,
    workers: Vec<JoinHandle<anyhow::Result<()>>>,
    coordinator_shutdown: CancellationToken,
    workers_shutdown: CancellationToken,
    /// Held as long as the cluster runs: see [`lock_work_dir`].
    _work_dir_lock: WorkDirLock,
}

/// What the embedded cluster is made of.
#[derive(Debug)]
pub(crate) struct EmbeddedConfig {
    pub(crate) work_dir: PathBuf,
    /// From [`lock_work_dir`]; held as long as the cluster runs.
    pub(crate) work_dir_lock: WorkDirLock,
    pub(crate) target_python: PathBuf,
    pub(crate) n_workers: u32,
    pub(crate) allow_gil_build: bool,
    /// Venvs, sources, the wheel cache and the installer.
    pub(crate) places: crate::setup_args::SetupPlaces,
    /// The sandbox and limits of every local worker.
    pub(crate) sandbox: worker::SandboxConfig,
    /// What the local workers keep of their disk.
    pub(crate) disk: worker::DiskPolicy,
}

impl Embedded {
    pub(crate) async fn start(config: EmbeddedConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot bind a loopback port")?;
        let address: SocketAddr = listener.local_addr()?;
        let coordinator_shutdown = CancellationToken::new();
        // The loopback port is open to every local process, the packages under test included:
        // the client and each local worker get a random token of their own, held in memory
        // only, so none of them can submit runs or pose as a worker.
        let worker_ids = (1..=config.n_workers)
            .map(|n| WorkerId::parse(&format!("local-{n}")).context("worker id"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let worker_tokens: Vec<(WorkerId, String)> = worker_ids.into_iter().map(|id| (id, random_token())).collect();
        let client_token = random_token();
        let coordinator_config = coordinator::Config {
            client_token: Some(client_token.clone()),
            worker_tokens: worker_tokens.clone(),
            ..coordinator::Config::new(format!("sqlite://{}", database_path(&config.work_dir).display()))
        };
        let coordinator = tokio::spawn(coordinator::run(
            coordinator_config,
            listener,
            coordinator_shutdown.clone(),
        ));
        let url = format!("http://{address}");
        let credentials = ClientCredentials {
            token: Some(client_token),
            ..ClientCredentials::default()
        };
        let client = crate::remote::connect(&url, &credentials).await?;

        let workers_shutdown = CancellationToken::new();
        let mut workers = Vec::new();
        for (worker_id, token) in worker_tokens {
            let worker_config = worker::WorkerConfig {
                worker_id,
                coordinator_url: url.clone(),
                target_python: config.target_python.clone(),
                slots: 1,
                work_dir: config.work_dir.clone(),
                venvs_dir: config.places.venvs_dir.clone(),
                repos_dir: config.places.repos_dir.clone(),
                pip_cache_dir: config.places.pip_cache_dir.clone(),
                installer: config.places.installer.clone(),
                base_path: places::base_path(),
                allow_gil_build: config.allow_gil_build,
                token: Some(token),
                ca_cert: None,
                sandbox: config.sandbox.clone(),
                disk: config.disk.clone(),
            };
            workers.push(tokio::spawn(worker::run(worker_config, workers_shutdown.clone())));
        }
        Ok(Embedded {
            client,
            coordinator,
            workers,
            coordinator_shutdown,
            workers_shutdown,
            _work_dir_lock: config.work_dir_lock,
        })
    }

    /// Stops the workers (killing what they run), then the coordinator.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.workers_shutdown.cancel();
        for worker in self.workers {
            match tokio::time::timeout(Duration::from_secs(30), worker).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => tracing::warn!(error = %format!("{error:#}"), "worker ended with an error"),
                Ok(Err(join)) => tracing::warn!(error = %join, "worker task failed"),
                Err(_) => tracing::warn!("worker did not stop within 30 seconds"),
            }
        }
        self.coordinator_shutdown.cancel();
        match tokio::time::timeout(Duration::from_secs(10), self.coordinator).await {
            Ok(joined) => joined.context("coordinator task failed")?,
            Err(_) => anyhow::bail!("coordinator did not stop within 10 seconds"),
        }
    }

    /// Whether a worker has already stopped, and with what.
    pub(crate) fn first_finished_worker(&mut self) -> Option<JoinHandle<anyhow::Result<()>>> {
        let index = self.workers.iter().position(|w| w.is_finished())?;
        Some(self.workers.swap_remove(index))
    }
}

/// Two random UUIDs' worth of randomness (244 bits), as hex.
fn random_token() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// An exclusive `flock` on the work dir's lock file, released when dropped.
pub(crate) type WorkDirLock = Flock<std::fs::File>;

/// Takes the work dir for this run alone. Two embedded runs in one work dir would share its
/// database, and their local workers would share ids: each worker kills what an earlier run of
/// "its" id left behind, so the second run would kill the first one's processes. The lock is
/// the OS's (`flock`), so it goes with the process however that ends; the file names the pid
/// that holds it.
pub(crate) fn lock_work_dir(work_dir: &Path) -> anyhow::Result<WorkDirLock> {
    crate::places::create_work_dir(work_dir)?;
    let path = work_dir.join("ftsurvey.lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((_, Errno::EWOULDBLOCK)) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = match holder.trim() {
                "" => String::new(),
                pid => format!(" (pid {pid})"),
            };
            anyhow::bail!(
                "the work dir {} is in use by another ftsurvey run{holder}: wait for it to end, or give this run its own --work-dir",
                work_dir.display()
            );
        }
        Err((_, errno)) => return Err(errno).with_context(|| format!("cannot lock {}", path.display())),
    };
    lock.set_len(0)
        .and_then(|()| writeln!(lock, "{}", std::process::id()))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(lock)
}

/// The embedded store lives in the work dir.
pub(crate) fn database_path(work_dir: &Path) -> PathBuf {
    work_dir.join("ftsurvey.db")
}
