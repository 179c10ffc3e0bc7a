//! A throwaway PostgreSQL cluster for one test: `initdb` into a temp dir, `pg_ctl start` on a
//! free loopback port, `pg_ctl stop` when dropped. The server binaries come from PATH.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root the cluster belongs to the
//! `postgres` system user and every server command goes through `runuser`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// A running cluster; stopped and deleted on drop.
#[derive(Debug)]
pub struct TestPostgres {
    dir: tempfile::TempDir,
    port: u16,
    /// Run server commands as this user (through `runuser`), when running as root.
    run_as: Option<String>,
    running: bool,
    /// More `-c NAME=VALUE` server settings, after the defaults.
    settings: Vec<String>,
}

impl TestPostgres {
    /// Creates and starts a cluster. Fails (never skips) when the binaries are missing.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(&[])
    }

    /// Creates and starts a cluster with more server settings (`NAME=VALUE`), such as
    /// `shared_preload_libraries=pg_stat_statements`.
    pub fn start_with(settings: &[&str]) -> anyhow::Result<Self> {
        for binary in ["initdb", "pg_ctl", "postgres"] {
            if find_on_path(binary).is_none() {
                bail!(
                    "the PostgreSQL server binary `{binary}` is not on PATH; the store tests need initdb, pg_ctl and \
                     postgres (Debian: apt-get install postgresql, then add /usr/lib/postgresql/<version>/bin to PATH)"
                );
            }
        }
        let dir = tempfile::Builder::new().prefix("ftsurvey-pg").tempdir()?;
        let run_as = nix::unistd::geteuid().is_root().then(|| "postgres".to_string());
        if let Some(user) = &run_as {
            let user = nix::unistd::User::from_name(user)?
                .with_context(|| format!("running as root needs the `{user}` system user to own the cluster"))?;
            nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid))?;
        }
        let port = free_port()?;
        let mut cluster = TestPostgres {
            dir,
            port,
            run_as,
            running: false,
            settings: settings.iter().map(|s| s.to_string()).collect(),
        };
        let data = cluster.data_dir();
        cluster.server_command(
            "initdb",
            &[
                "-D",
                &data.display().to_string(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        )?;
        cluster.start_server()?;
        Ok(cluster)
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (fast shutdown), keeping its data.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if self.running {
            let data = self.data_dir().display().to_string();
            self.server_command("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"])?;
            self.running = false;
        }
        Ok(())
    }

    /// Starts the server again on the same port and data.
    pub fn start_server(&mut self) -> anyhow::Result<()> {
        let data = self.data_dir().display().to_string();
        let log = self.dir.path().join("server.log").display().to_string();
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300",
            self.port,
            self.dir.path().display()
        );
        for setting in &self.settings {
            options.push_str(" -c ");
            options.push_str(setting);
        }
        self.server_command(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-o", &options, "-w", "-t", "60", "start"],
        )?;
        self.running = true;
        Ok(())
    }

    /// The CPU time the server has used so far: the postmaster, its live processes (the
    /// connections, the background workers) and those that have ended.
    pub fn cpu_time(&self) -> anyhow::Result<std::time::Duration> {
        let pid_file = self.data_dir().join("postmaster.pid");
        let pid = std::fs::read_to_string(&pid_file)
            .with_context(|| format!("reading {}", pid_file.display()))?
            .lines()
            .next()
            .and_then(|line| line.trim().parse::<u32>().ok())
            .with_context(|| format!("no pid in {}", pid_file.display()))?;
        crate::cpu::tree(pid)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs a server binary to completion (as the cluster's owner), failing with its output.
    fn server_command(&self, binary: &str, args: &[&str]) -> anyhow::Result<()> {
        let mut command = match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--", binary]);
                command
            }
            None => Command::new(binary),
        };
        let output = command
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {binary}"))?;
        if !output.status.success() {
            let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
            bail!(
                "{binary} {} failed ({}):\n{}{}\n{log}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            eprintln!("stopping the test PostgreSQL failed: {error:#}");
        }
    }
}

fn find_on_path(binary: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(binary))
        .find(|path| path.is_file())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
