//! Sets a package up on this worker: source, venv, install, import check. Once per package per
//! worker; every iteration the worker runs for the package reuses it, and a failure is
//! remembered so later jobs of the package report it at once.
//!
//! A setup that succeeded is kept on disk, keyed by a [`VenvKey`] (package, version, source,
//! interpreter build, install command, extra deps): a later run of the same worker finds it,
//! checks that the package still imports, and goes straight to the tests. A file lock per setup
//! keeps two processes from building the same one at once.

mod error;
pub(crate) mod evict;
mod extensions;
mod fault;
mod installed;
pub(crate) mod installer;
mod kept;
mod key;
mod source;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use domain::evidence::ExtensionReport;
use domain::spec::RunOptions;
use domain::{InterpreterProfile, PackageSpec, SetupFailure, SetupStage};
use nix::fcntl::Flock;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use crate::iteration_dirs::IterationDirs;
use crate::sandbox::{Sandbox, Seal};
use crate::setup::error::{SetupError, command_failure, output_tail};
use crate::setup::installed::Installed;
use crate::setup::installer::Installer;
use crate::setup::kept::lock;
use crate::setup::key::{CacheKey, SourceKey, VenvKey};
use crate::shell::shell_quote;
use crate::supervise::{CommandSpec, Ending, Supervised, run_command};

/// Installs get this long.
const INSTALL_TIMEOUT: Duration = domain::budget::INSTALL_TIMEOUT;

/// The file in a setup directory that says it is complete.
const READY_FILE: &str = "ftsurvey-ready.json";

/// ThreadSanitizer suppressions for CPython-internal reports, shipped with the tool.
const TSAN_SUPPRESSIONS: &str = include_str!("../../../deploy/tsan-suppressions.txt");

/// A package ready to test.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// The setup's directory: its venv, its pristine source tree.
    pub(crate) setup_dir: PathBuf,
    /// The pristine source tree; each iteration runs in a fresh copy of it.
    pub(crate) source_dir: PathBuf,
    /// Environment every command of the package gets (PATH, VIRTUAL_ENV, pip settings).
    pub(crate) env: Vec<(String, String)>,
    /// What importing the package did to the GIL; `None` when not probed.
    pub(crate) extensions: Option<ExtensionReport>,
    /// The package's version and the hash of the venv's freeze, read once per setup; empty
    /// when they could not be read (which the worker's log says).
    pub(crate) installed: Installed,
    /// The shared lock that keeps an eviction from removing the setup while it is prepared.
    _in_use: Option<Flock<std::fs::File>>,
}

type SetupCell = Arc<OnceCell<Result<Arc<Prepared>, SetupFailure>>>;

/// Where a worker's setups live. Every path is absolute.
#[derive(Debug, Clone)]
pub(crate) struct SetupDirs {
    /// This worker's venvs with their source trees, one directory per setup key, kept across
    /// runs.
    pub(crate) venvs_dir: PathBuf,
    /// Fetched sources (pinned sdists, git clones) by package, version and source, shared by
    /// the workers of a machine and copied into each setup.
    pub(crate) repos_dir: PathBuf,
    /// The pip and uv caches, shared by every venv.
    pub(crate) cache_dir: PathBuf,
    /// This worker's own directory: iteration logs, the TSAN suppression file, and the marker
    /// its processes carry.
    pub(crate) worker_dir: PathBuf,
}

/// What a kept setup records about itself.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ReadyRecord {
    /// The source tree the tests run in.
    source_dir: PathBuf,
}

/// The packages this worker has set up or failed to set up.
#[derive(Debug)]
pub(crate) struct Setups {
    python: PathBuf,
    profile_fingerprint: String,
    /// The target's [`InterpreterProfile::build_label`], recorded with every iteration.
    interpreter_build: String,
    /// Extension probes only mean something on a free-threaded build.
    free_threaded: bool,
    /// A ThreadSanitizer build: iterations get TSAN_OPTIONS and their reports are parsed.
    tsan_build: bool,
    /// The shipped suppression file, written next to the setups on first use.
    tsan_suppressions: std::sync::OnceLock<Option<PathBuf>>,
    dirs: SetupDirs,
    installer: Installer,
    base_path: String,
    /// Each setup asked for so far, by its key.
    cells: Mutex<HashMap<VenvKey, SetupCell>>,
    /// Kills setup commands when the worker stops.
    shutdown: CancellationToken,
    /// What seals every command run for a package.
    sandbox: Arc<Sandbox>,
    /// Where iterations run, with the copies of pristine trees kept between them.
    iteration_dirs: Arc<IterationDirs>,
}

impl Setups {
    /// Setups for the target `python` (described by `profile`) under `dirs`; none is made
    /// before a job asks for it.
    pub(crate) fn new(
        python: PathBuf,
        profile: &InterpreterProfile,
        dirs: SetupDirs,
        installer: Installer,
        base_path: String,
        sandbox: Arc<Sandbox>,
        shutdown: CancellationToken,
    ) -> Self {
        for shared in [&dirs.cache_dir, &dirs.repos_dir] {
            // Every setup command's seal binds them, and bubblewrap binds only what exists; a
            // command that cannot use one says so itself.
            if let Err(error) = std::fs::create_dir_all(shared) {
                tracing::warn!(dir = %shared.display(), %error, "cannot create a directory setups share");
            }
        }
        Setups {
            shutdown,
            sandbox,
            iteration_dirs: Arc::new(IterationDirs::new(dirs.worker_dir.join("iterations"))),
            python,
            profile_fingerprint: profile.fingerprint_source(),
            interpreter_build: profile.build_label(),
            free_threaded: profile.free_threaded,
            tsan_build: profile.tsan,
            tsan_suppressions: std::sync::OnceLock::new(),
            dirs,
            installer,
            base_path,
            cells: Mutex::new(HashMap::new()),
        }
    }

    /// The target interpreter's build, as each iteration records it.
    pub(crate) fn interpreter_build(&self) -> &str {
        &self.interpreter_build
    }

    /// Whether the target is a ThreadSanitizer build.
    pub(crate) fn tsan_build(&self) -> bool {
        self.tsan_build
    }

    /// What seals every command run for a package.
    pub(crate) fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// Where each iteration's fresh tree, HOME and TMPDIR go.
    pub(crate) fn iteration_dirs(&self) -> Arc<IterationDirs> {
        self.iteration_dirs.clone()
    }

    /// The TSAN suppression file, which commands must read under the hidden worker directory.
    pub(crate) fn tsan_suppressions_file(&self) -> Option<PathBuf> {
        self.tsan_build.then(|| self.tsan_suppressions()).flatten()
    }

    /// The seal of the setup commands for the setup in `dir`: they write the setup, the shared
    /// caches and the fetched sources, with HOME and TMPDIR inside the setup; `network` for
    /// fetches and installs, not for the import check and probe, which run package code only.
    fn seal(&self, dir: &Path, network: bool) -> Seal<'_> {
        let mut seal = Seal::new(&self.sandbox, dir.join("home"), dir.join("tmp"));
        seal.writable = vec![
            dir.to_path_buf(),
            self.dirs.cache_dir.clone(),
            self.dirs.repos_dir.clone(),
        ];
        seal.readable.extend(self.tsan_suppressions_file());
        seal.network = network;
        seal
    }

    /// Where the iterations' logs go: the worker's `logs/`.
    pub(crate) fn logs_dir(&self) -> PathBuf {
        self.dirs.worker_dir.join("logs")
    }

    /// `TSAN_OPTIONS` for every command on a TSAN build: the suppressions, reports that do
    /// not stop the process or change its exit status (TSAN's default is 66).
    pub(crate) fn tsan_options(&self) -> String {
        let mut value = "halt_on_error=0 exitcode=0".to_string();
        if let Some(path) = self.tsan_suppressions() {
            value = format!("suppressions={} {value}", path.display());
        }
        value
    }

    /// The shipped TSAN suppression file, written beside the setups; `None` if it cannot be.
    fn tsan_suppressions(&self) -> Option<PathBuf> {
        self.tsan_suppressions
            .get_or_init(|| {
                let path = self.dirs.worker_dir.join("tsan-suppressions.txt");
                let written = std::fs::create_dir_all(&self.dirs.worker_dir)
                    .and_then(|()| std::fs::write(&path, TSAN_SUPPRESSIONS));
                match written {
                    Ok(()) => Some(path),
                    Err(error) => {
                        tracing::warn!(path = %path.display(), %error, "cannot write the TSAN suppression file");
                        None
                    }
                }
            })
            .clone()
    }

    /// Names of the packages set up successfully so far.
    pub(crate) fn warm_packages(&self) -> Vec<String> {
        let cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<String> = cells
            .iter()
            .filter(|(_, cell)| matches!(cell.get(), Some(Ok(_))))
            .map(|(key, _)| key.package.name.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Sets the package up, or waits for the setup another slot started, or returns the
    /// earlier result.
    pub(crate) async fn prepare(
        &self,
        package: &PackageSpec,
        options: &RunOptions,
    ) -> Result<Arc<Prepared>, SetupFailure> {
        let key = VenvKey {
            package: SourceKey::of(package),
            interpreter: self.profile_fingerprint.clone(),
            install_command: package.install_command.clone(),
            setup_deps: setup_deps(options),
        };
        let cell = {
            let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
            cells.entry(key.clone()).or_default().clone()
        };
        let result = cell
            .get_or_init(|| async {
                let started = Instant::now();
                let dir = self.dirs.venvs_dir.join(key.dir_name());
                let result = self.set_up(package, options, &key, &dir).await;
                let duration_ms = started.elapsed().as_millis() as u64;
                match result {
                    Ok(prepared) => {
                        tracing::info!(package.name = %package.name, duration_ms, "package set up");
                        Ok(Arc::new(prepared))
                    }
                    Err(error) => {
                        tracing::info!(
                            package.name = %package.name, stage = error.stage.as_str(), message = %error.message,
                            infrastructure = error.infrastructure, "setup failed"
                        );
                        Err(SetupFailure {
                            stage: error.stage,
                            message: error.message,
                            log_tail: error.log_tail,
                            duration_ms,
                            infrastructure: error.infrastructure,
                        })
                    }
                }
            })
            .await
            .clone();
        // The infrastructure's failure is not kept: the package's next job here sets it up
        // again, once the network or the disk may be back.
        if let Err(failure) = &result
            && failure.infrastructure
        {
            let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
            if cells.get(&key).is_some_and(|kept| Arc::ptr_eq(kept, &cell)) {
                cells.remove(&key);
            }
        }
        result.inspect(|prepared| kept::mark_used(&prepared.setup_dir))
    }

    /// Reuses the setup kept in `dir` for `key` if the package still imports there, else makes
    /// it afresh; holds the setup's lock throughout.
    async fn set_up(
        &self,
        package: &PackageSpec,
        options: &RunOptions,
        key: &VenvKey,
        dir: &Path,
    ) -> Result<Prepared, SetupError> {
        let _lock = lock(kept::lock_path(dir)).await?;
        // Held by the setup as long as a job may use it; taken under the setup's lock, which
        // an eviction takes first too.
        let in_use = kept::lock_shared(kept::in_use_path(dir)).await?;
        let venv_dir = dir.join("venv");
        let env = self.setup_env(package, options, &venv_dir);
        let ready_path = dir.join(READY_FILE);
        let kept = std::fs::read(&ready_path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<ReadyRecord>(&bytes).ok())
            .filter(|record| record.source_dir.is_dir() && key.is_stored_in(dir));
        if let Some(record) = kept {
            match self.check(package, options, dir, record.source_dir, &env).await {
                Ok(prepared) => {
                    tracing::info!(package.name = %package.name, dir = %dir.display(), "reusing the kept setup");
                    return Ok(Prepared {
                        _in_use: Some(in_use),
                        ..prepared
                    });
                }
                Err(error) => tracing::warn!(
                    package.name = %package.name, message = %error.message,
                    "the kept setup no longer imports; setting the package up again"
                ),
            }
        }
        let io = |stage: SetupStage, e: std::io::Error| SetupError::worker(stage, format!("{}: {e}", dir.display()));
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| io(SetupStage::Source, e))?;
        }
        std::fs::create_dir_all(dir).map_err(|e| io(SetupStage::Source, e))?;
        key.write_to(dir).map_err(|e| io(SetupStage::Source, e))?;

        for private in ["home", "tmp"] {
            std::fs::create_dir_all(dir.join(private)).map_err(|e| io(SetupStage::Source, e))?;
        }
        let cancel = &self.shutdown;
        let seal = self.seal(dir, true);
        let source_dir = self.source(package, dir, &self.tool_env(&venv_dir), &seal).await?;

        let venv = self.installer.venv_command(&self.python, &venv_dir);
        step(
            SetupStage::Install,
            "creating the venv",
            &venv,
            dir,
            &env,
            &seal,
            cancel,
        )
        .await?;
        self.installer
            .finish_venv(&venv_dir)
            .map_err(|e| io(SetupStage::Install, e))?;
        if let Err(error) = extensions::install_hooks(&venv_dir) {
            tracing::warn!(venv = %venv_dir.display(), %error, "cannot install the stack-dump hook; stalls will have no stacks");
        }
        step(
            SetupStage::Install,
            "install command",
            &package.install_command,
            &source_dir,
            &env,
            &seal,
            cancel,
        )
        .await?;
        let deps = setup_deps(options);
        if !deps.is_empty() {
            let deps: Vec<String> = deps.iter().map(|d| shell_quote(d)).collect();
            let install = format!("pip install {}", deps.join(" "));
            step(
                SetupStage::Install,
                "installing --extra-deps",
                &install,
                &source_dir,
                &env,
                &seal,
                cancel,
            )
            .await?;
        }
        let prepared = Prepared {
            _in_use: Some(in_use),
            ..self.check(package, options, dir, source_dir, &env).await?
        };
        // What the build left in its temporary directory is of no use to the tests.
        crate::fresh_tree::remove(&dir.join("tmp"));
        let record = ReadyRecord {
            source_dir: prepared.source_dir.clone(),
        };
        let json = serde_json::to_vec(&record).expect("a ready record serialises");
        if let Err(error) = std::fs::write(&ready_path, json) {
            tracing::warn!(path = %ready_path.display(), %error, "cannot mark the setup as kept; the next run sets it up again");
        }
        Ok(prepared)
    }

    /// Environment of every setup command after the fetch: the tool's own, then the package's
    /// and the user's variables.
    fn setup_env(&self, package: &PackageSpec, options: &RunOptions, venv_dir: &Path) -> Vec<(String, String)> {
        let mut env = self.tool_env(venv_dir);
        env.extend(package.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.extend(options.env.iter().cloned());
        env
    }

    /// The tool's own environment: the venv first on PATH, the shared caches, the worker's
    /// marker. The fetch of a package's source gets this alone: what it fetches is kept and
    /// shared by a key (name, version, source) that holds no environment, and neither the
    /// registry's nor the user's variables are to steer pip download or git clone.
    fn tool_env(&self, venv_dir: &Path) -> Vec<(String, String)> {
        let bin_dir = venv_dir.join("bin");
        let mut env = vec![
            ("PATH".to_string(), format!("{}:{}", bin_dir.display(), self.base_path)),
            ("VIRTUAL_ENV".to_string(), venv_dir.display().to_string()),
            // Lets a restarted worker find what this one leaves running if it is killed.
            (
                crate::proctree::WORKER_VAR.to_string(),
                self.dirs.worker_dir.display().to_string(),
            ),
        ];
        env.extend(self.installer.env(&self.dirs.cache_dir));
        if self.tsan_build {
            // Interpreter-internal reports would fail pip's build subprocesses otherwise.
            env.push(("TSAN_OPTIONS".to_string(), self.tsan_options()));
        }
        env
    }

    /// The source tree under `dir/src`, fetched through the repos dir when it can be kept.
    async fn source(
        &self,
        package: &PackageSpec,
        dir: &Path,
        env: &[(String, String)],
        seal: &Seal<'_>,
    ) -> Result<PathBuf, SetupError> {
        kept::source_tree(
            package,
            &self.python,
            &self.dirs.repos_dir,
            &dir.join("src"),
            env,
            seal,
            &self.shutdown,
        )
        .await
    }

    /// Imports the package from an empty directory, so the source tree cannot shadow the
    /// installed package, then probes its extensions.
    async fn check(
        &self,
        package: &PackageSpec,
        options: &RunOptions,
        dir: &Path,
        source_dir: PathBuf,
        env: &[(String, String)],
    ) -> Result<Prepared, SetupError> {
        let cancel = &self.shutdown;
        let neutral = dir.join("import-check");
        std::fs::create_dir_all(&neutral)
            .map_err(|e| SetupError::worker(SetupStage::Import, format!("{}: {e}", neutral.display())))?;
        let import = format!("python -c {}", shell_quote(&format!("import {}", package.import_name)));
        let seal = self.seal(dir, false);
        for private in ["home", "tmp"] {
            std::fs::create_dir_all(dir.join(private))
                .map_err(|e| SetupError::worker(SetupStage::Import, format!("{}: {e}", dir.display())))?;
        }
        let result = run(&import, &neutral, env, &seal, cancel).await?;
        if !matches!(result.ending, Ending::Exited { code: Some(0), .. }) {
            let last = result
                .stderr_tail
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("no output");
            // An import that fails is the package's, unless the disk was full or the check
            // was killed from outside.
            let cause = fault::infrastructure_cause(SetupStage::Import, &result);
            let message = match &cause {
                Some(cause) => format!("import {} failed: {cause}", package.import_name),
                None => format!("import {} failed: {last}", package.import_name),
            };
            return Err(SetupError {
                stage: SetupStage::Import,
                message,
                log_tail: output_tail(&result),
                infrastructure: cause.is_some(),
            });
        }
        let extensions = if options.detect_extensions && self.free_threaded {
            let mut report = extensions::probe(&package.import_name, &neutral, env, &seal, cancel).await;
            report.declarations = extensions::scan_declarations(&source_dir);
            Some(report)
        } else {
            None
        };
        let venv_dir = dir.join("venv");
        let installed = installed::read(
            &venv_dir,
            &package.name,
            &package.import_name,
            &neutral,
            env,
            &seal,
            cancel,
        )
        .await
        .unwrap_or_else(|reason| {
            tracing::warn!(package.name = %package.name, %reason, "cannot read what the setup installed");
            Installed::default()
        });
        Ok(Prepared {
            setup_dir: dir.to_path_buf(),
            source_dir,
            env: env.to_vec(),
            extensions,
            installed,
            _in_use: None,
        })
    }
}

/// What the tool installs after the package: `--extra-deps`, and pytest-run-parallel for
/// `--parallel-threads`.
fn setup_deps(options: &RunOptions) -> Vec<String> {
    let mut deps = options.extra_deps.clone();
    if options.parallel_threads.is_some() {
        deps.push(RUN_PARALLEL_PLUGIN.to_string());
    }
    deps
}

/// The pytest plugin behind `--parallel-threads`.
const RUN_PARALLEL_PLUGIN: &str = "pytest-run-parallel";

async fn step(
    stage: SetupStage,
    what: &str,
    command: &str,
    cwd: &Path,
    env: &[(String, String)],
    seal: &Seal<'_>,
    cancel: &CancellationToken,
) -> Result<(), SetupError> {
    let result = run(command, cwd, env, seal, cancel).await.map_err(|mut e| {
        e.stage = stage;
        e
    })?;
    match command_failure(&result, stage, what) {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

async fn run(
    command: &str,
    cwd: &Path,
    env: &[(String, String)],
    seal: &Seal<'_>,
    cancel: &CancellationToken,
) -> Result<Supervised, SetupError> {
    let spec = CommandSpec {
        shell_command: command,
        cwd,
        env,
        seal,
        timeout: INSTALL_TIMEOUT,
        log_dir: None,
        stall_threshold: None,
        stdin: None,
    };
    run_command(&spec, cancel)
        .await
        .map_err(|e| SetupError::worker(SetupStage::Install, format!("cannot start `{command}`: {e}")))
}
