//! Commands sealed for real: bubblewrap and this machine's cgroups. Both are required: the
//! tests fail, never skip, where they are missing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use domain::evidence::{LimitHeld, LimitHit};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::supervise::{CommandSpec, Ending, Supervised, run_command};

/// A sealed place to run commands: a hidden "worker directory" holding a secret, a writable
/// tree, and the sandbox itself.
struct Place {
    root: tempfile::TempDir,
    sandbox: Sandbox,
}

impl Place {
    fn new(mode: SandboxMode, limits: Limits) -> Place {
        let root = tempfile::tempdir().expect("temp dir");
        for dir in ["work", "it/home", "it/tmp", "it/tree"] {
            std::fs::create_dir_all(root.path().join(dir)).expect("mkdir");
        }
        std::fs::write(root.path().join("work/token"), "ftsurvey-canary-token").expect("secret");
        let config = SandboxConfig {
            mode,
            limits,
            hidden: Vec::new(),
        };
        let paths = SandboxPaths {
            hidden: vec![root.path().join("work")],
            readable: Vec::new(),
            cgroup_name: format!("ftsurvey-test-{}", std::process::id()),
            tsan_build: false,
        };
        let sandbox = Sandbox::resolve(&config, paths).expect("bwrap on PATH: the tests need bubblewrap");
        assert!(
            sandbox.cgroups.can_contain(),
            "the sandbox tests need cgroups this process can make (run them as root)"
        );
        Place { root, sandbox }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.root.path().join(relative)
    }

    async fn run(&self, command: &str, network: bool, disk_watch: bool) -> Supervised {
        let mut seal = Seal::new(&self.sandbox, self.path("it/home"), self.path("it/tmp"));
        seal.writable.push(self.path("it/tree"));
        seal.network = network;
        seal.count_leftovers = true;
        if disk_watch {
            seal.disk_watch.push(self.path("it"));
        }
        let tree = self.path("it/tree");
        let spec = CommandSpec {
            shell_command: command,
            cwd: &tree,
            env: &[("FROM_THE_REGISTRY".to_string(), "kept".to_string())],
            seal: &seal,
            timeout: Duration::from_secs(60),
            log_dir: None,
            stall_threshold: None,
            stdin: None,
        };
        run_command(&spec, &CancellationToken::new()).await.expect("spawn")
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.sandbox.cgroups.remove_bases();
    }
}

fn exited(code: i32) -> Ending {
    Ending::Exited {
        code: Some(code),
        signal: None,
    }
}

#[tokio::test]
async fn a_sealed_command_sees_none_of_the_worker_and_writes_only_its_own_directories() {
    let place = Place::new(SandboxMode::Bwrap, Limits::default());
    let script = format!(
        "set -u; \
         env; \
         ls {work} 2>&1 | head -3; cat {work}/token 2>&1; \
         (echo x > /usr/ftsurvey-escaped) 2>/dev/null || echo 'system: refused'; \
         echo x > {work}/escaped; \
         echo y > ./inside && echo 'tree: written'; \
         echo z > $HOME/h && echo 'home: written'; echo t > /tmp/t && echo 'tmp: written'; \
         ls /proc | grep -c '^[0-9]'; \
         python3 -c 'import socket; socket.create_connection((\"1.1.1.1\", 53), timeout=2)' 2>&1 | tail -1",
        work = place.path("work").display(),
    );
    let result = place.run(&script, false, false).await;
    assert_eq!(result.ending, exited(0), "{result:?}");
    let out = &result.stdout_tail;
    assert!(!out.contains("ftsurvey-canary"), "the secret was read:\n{out}");
    assert!(out.contains("FROM_THE_REGISTRY=kept"), "{out}");
    assert!(!out.contains("CARGO"), "the worker's environment leaked:\n{out}");
    assert!(out.contains("system: refused"), "{out}");
    // What it wrote over the hidden directory went to an empty stand-in, not to the worker's.
    assert!(!place.path("work/escaped").exists());
    for written in ["tree: written", "home: written", "tmp: written"] {
        assert!(out.contains(written), "{written}:\n{out}");
    }
    assert!(place.path("it/tree/inside").is_file() && place.path("it/home/h").is_file());
    assert!(place.path("it/tmp/t").is_file(), "/tmp is the iteration's own");
    // bubblewrap's init, the shell, ls and grep: nothing of the worker's.
    let processes: u32 = out
        .lines()
        .rev()
        .find_map(|l| l.trim().parse().ok())
        .expect("a process count");
    assert!(processes <= 5, "{processes} processes visible:\n{out}");
    assert!(
        out.contains("Network is unreachable") || out.contains("OSError"),
        "{out}"
    );
}

#[tokio::test]
async fn the_memory_and_process_limits_hold_and_say_so() {
    let limits = Limits {
        memory_bytes: 64 << 20,
        pids: 32,
        disk_bytes: 1 << 30,
    };
    let place = Place::new(SandboxMode::Bwrap, limits);
    assert_ne!(place.sandbox.memory_held(), LimitHeld::None);
    let hog = place
        .run("python3 -c 'x = bytearray(512 << 20); print(len(x))'", false, false)
        .await;
    assert!(hog.limits_hit.contains(&LimitHit::Memory), "{hog:?}");
    assert_ne!(hog.ending, exited(0), "{hog:?}");

    let forks = place
        .run("for i in $(seq 100); do sleep 30 & done; wait", false, false)
        .await;
    assert!(forks.limits_hit.contains(&LimitHit::Pids), "{forks:?}");
    assert!(
        forks.stderr_tail.contains("fork") || forks.stderr_tail.contains("Resource"),
        "{forks:?}"
    );
}

#[tokio::test]
async fn an_escape_by_setsid_and_a_cleared_environment_is_killed_with_the_command() {
    for mode in [SandboxMode::Bwrap, SandboxMode::None] {
        let place = Place::new(mode, Limits::default());
        let marker = format!("sleep 97{}", std::process::id() % 1000);
        let result = place
            .run(
                &format!("setsid env -i sh -c '{marker}' > /dev/null 2>&1 & echo started"),
                false,
                false,
            )
            .await;
        assert_eq!(result.ending, exited(0), "{mode}: {result:?}");
        assert!(result.leftover_processes >= 1, "{mode}: {result:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let left = std::process::Command::new("pgrep")
            .args(["-f", &format!("^{marker}$")])
            .output()
            .expect("pgrep");
        assert!(
            left.stdout.is_empty(),
            "{mode}: {} outlived its command",
            String::from_utf8_lossy(&left.stdout)
        );
    }
}

#[tokio::test]
async fn files_past_the_disk_limit_end_the_command() {
    let limits = Limits {
        disk_bytes: 32 << 20,
        ..Limits::default()
    };
    let place = Place::new(SandboxMode::Bwrap, limits);
    // One file stops at the file-size limit.
    let one = place
        .run("head -c 100000000 /dev/urandom > big; ls -l big", false, true)
        .await;
    assert!(one.limits_hit.contains(&LimitHit::FileSize), "{one:?}");
    std::fs::remove_file(place.path("it/tree/big")).expect("remove");
    // Many files under it each are killed on the total.
    let many = place
        .run(
            "for i in $(seq 100); do head -c 8000000 /dev/urandom > f$i; done; sleep 5",
            false,
            true,
        )
        .await;
    assert_eq!(many.ending, Ending::OverDisk, "{many:?}");
    assert!(many.limits_hit.contains(&LimitHit::Disk), "{many:?}");
}

#[test]
fn bwrap_is_required_when_asked_for_and_optional_otherwise() {
    let config = SandboxConfig {
        mode: SandboxMode::Bwrap,
        ..SandboxConfig::default()
    };
    let resolve_with_path = |config: &SandboxConfig, dir: &Path| {
        Sandbox::resolve_in(config, SandboxPaths::default(), Some(dir.as_os_str()))
    };
    let error = resolve_with_path(&config, Path::new("/nonexistent")).expect_err("no bwrap");
    let line = error.to_string();
    assert!(line.contains("bwrap") && !line.contains('\n'), "{line}");
    let auto = resolve_with_path(&SandboxConfig::default(), Path::new("/nonexistent")).expect("auto");
    assert_eq!(auto.kind(), SandboxKind::None);
}

#[tokio::test]
async fn cpu_time_and_memory_are_measured_through_the_sandbox() {
    // bubblewrap's init exits without waiting for its child, so `wait4` alone sees ~nothing.
    let place = Place::new(SandboxMode::Bwrap, Limits::default());
    let result = place
        .run(
            "python3 -c 'import time; x = bytearray(200 << 20); end = time.process_time() + 1.5\nwhile time.process_time() < end: pass\ntime.sleep(1)'",
            false,
            false,
        )
        .await;
    assert_eq!(result.ending, exited(0), "{result:?}");
    let cpu = result.cpu_time_ms.expect("cpu time");
    assert!(cpu >= 1_400, "cpu {cpu} ms");
    let rss = result.max_rss_kb.expect("max rss");
    assert!(rss >= 200 * 1024, "max rss {rss} KiB");
}
