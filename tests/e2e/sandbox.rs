//! The sandbox under attack: eight fixture packages try to read the worker's secrets, write
//! into its files, reach the network, exhaust processes, memory and disk, poison the next
//! iteration and outlive their own. Each must be contained, the limits they hit must show in
//! the evidence, and the workers must stay healthy enough to give every package its verdict.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use domain::evidence::{LimitHit, SandboxKind, SandboxReport};
use domain::results::{IterationRecord, PackageRecord};

use crate::cli::{Survey, assert_success, category_of, free_threaded_python, machine_python};
use crate::detection::running;

/// The attacks whose tests pass when contained: their verdict is `compatible`.
const CONTAINED_ATTACKS: [&str; 6] = ["token", "home", "network", "forkbomb", "leftover", "escape"];
/// Every attack, as `ftfix-attack-<name>`.
const ATTACKS: [&str; 8] = [
    "token", "home", "network", "forkbomb", "memory", "disk", "leftover", "escape",
];
const BASHRC: &str = "# the worker user's .bashrc: no attack may change it\n";

#[test]
fn attacks_on_the_sandbox_are_contained_and_the_workers_stay_healthy() {
    let survey = Survey::new();
    let home = survey.dir.path().join("home");
    std::fs::create_dir_all(&home).expect("mkdir home");
    std::fs::write(home.join(".bashrc"), BASHRC).expect("write .bashrc");
    let work_dir = survey.dir.path().join("work");
    std::fs::create_dir_all(&work_dir).expect("mkdir work");
    // The home attack writes only on the work dir's own filesystem: a tmpfs the sandbox mounts
    // over the work dir to hide it is not the worker's.
    let work_device = std::fs::metadata(&work_dir).expect("stat work").dev();
    // Any connection a test makes to this machine queues here; nobody accepts it.
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let mut hosts: Vec<String> = machine_ipv4_addresses().iter().map(ToString::to_string).collect();
    hosts.push(Ipv4Addr::LOCALHOST.to_string());
    let canary = format!("ftsurvey-canary-{}", uuid::Uuid::new_v4().simple());
    let marker = format!("ftsurvey-escape-{}", uuid::Uuid::new_v4().simple());
    let tmp_poison = Path::new("/tmp/ftsurvey-poison");
    let tmp_poisoned_before = tmp_poison.exists();

    let packages: Vec<String> = ATTACKS.iter().map(|name| format!("ftfix-attack-{name}")).collect();
    let env = [
        "ATTACK_ARMED=1".to_string(),
        format!("ATTACK_WORKER_HOME={}", home.display()),
        format!("ATTACK_WORK_DIR={}", work_dir.display()),
        format!("ATTACK_WORK_DEV={work_device}"),
        format!("ATTACK_HOSTS={}", hosts.join(",")),
        format!("ATTACK_PORT={port}"),
        format!("ATTACK_MARKER={marker}"),
        "ATTACK_ESCAPE_SECONDS=900".to_string(),
    ];
    let mut command = survey.command(&free_threaded_python());
    command
        .env("HOME", &home)
        .env("FTSURVEY_WORKER_TOKEN", format!("{canary}-worker"))
        .env("FTSURVEY_CLIENT_TOKEN", format!("{canary}-client"))
        .arg("--packages")
        .arg(packages.join(","))
        .args(["--sandbox", "bwrap", "--memory-limit", "1G", "--pids-limit", "256"])
        .args(["--disk-limit", "256M", "--iterations", "2", "--workers", "2"])
        .args(["--timeout", "120", "--stall-threshold", "30"]);
    for pair in &env {
        command.arg("--env").arg(pair);
    }
    let output = command.output().expect("run ftsurvey");

    // What outlived the run is killed before anything is asserted, so a failure leaves none.
    let escaped = running(&marker);
    for pid in escaped
        .lines()
        .filter_map(|line| line.split_whitespace().next()?.parse().ok())
    {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    assert_success(&output);
    assert_eq!(escaped, "", "a process outlived its iteration and the run");

    let records = survey.records();
    let reports = sandbox_reports(&survey);
    let all = records
        .iter()
        .map(|r| format!("{}: {} {:?}", r.package, r.category, r.evidence))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(records.len(), ATTACKS.len(), "every package got its verdict:\n{all}");
    for record in &records {
        assert_workers_kept_up(record);
        for (iteration, report) in record.iterations.iter().zip(&reports[&record.package]) {
            assert_eq!(report.kind, SandboxKind::Bwrap, "{}: {report:?}", record.package);
            assert!(!report.network, "{}: {report:?}", record.package);
            assert_eq!(report.pids_limit, 256, "{}: {report:?}", record.package);
            assert!(
                !iteration.stdout_tail.contains("ESCAPED"),
                "{}:\n{}",
                record.package,
                iteration.stdout_tail
            );
        }
    }

    for name in CONTAINED_ATTACKS {
        let package = format!("ftfix-attack-{name}");
        let record = category_of(&records, &package);
        assert_eq!(record.category, "compatible", "{package}\n{all}");
        let said = if name == "escape" { "launched" } else { "contained" };
        for iteration in &record.iterations {
            assert_eq!(iteration.status, "pass", "{package}: {iteration:?}");
            let line = format!("ATTACK {name}: {said}");
            assert!(
                iteration.stdout_tail.contains(&line),
                "{package}:\n{}",
                iteration.stdout_tail
            );
        }
    }
    let forkbomb = &reports["ftfix-attack-forkbomb"];
    assert!(
        forkbomb.iter().all(|r| r.limits_hit.contains(&LimitHit::Pids)),
        "{forkbomb:?}"
    );

    // Killed by the kernel at the memory limit, part way: never a crash, never the end.
    let memory = category_of(&records, "ftfix-attack-memory");
    for (iteration, report) in memory.iterations.iter().zip(&reports["ftfix-attack-memory"]) {
        assert_eq!(iteration.status, "oom", "{iteration:?}");
        assert!(report.limits_hit.contains(&LimitHit::Memory), "{report:?}");
        assert!(
            iteration.stdout_tail.contains("ATTACK memory: touched"),
            "{}",
            iteration.stdout_tail
        );
    }

    // A write refused at the file-size limit (the test lives to say so and passes), or the
    // iteration killed at the disk limit.
    let disk = category_of(&records, "ftfix-attack-disk");
    for (iteration, report) in disk.iterations.iter().zip(&reports["ftfix-attack-disk"]) {
        let refused = iteration.status == "pass" && iteration.stdout_tail.contains("ATTACK disk: contained");
        let killed = report.limits_hit.contains(&LimitHit::Disk);
        assert!(report.limits_hit.contains(&LimitHit::FileSize) || killed, "{report:?}");
        assert!(refused || killed, "{iteration:?}\n{report:?}");
    }

    assert_eq!(
        std::fs::read_to_string(home.join(".bashrc")).expect("read .bashrc"),
        BASHRC,
        "the worker user's .bashrc changed"
    );
    for name in ["ftsurvey-pwned", "ftsurvey-attack-disk.bin"] {
        let found = files_named(survey.dir.path(), name);
        assert!(found.is_empty(), "{name} left behind: {found:?}");
    }
    assert!(
        !home.join("ftsurvey-poison").exists(),
        "an iteration wrote the worker user's home"
    );
    assert!(
        tmp_poisoned_before || !tmp_poison.exists(),
        "an iteration wrote the machine's /tmp"
    );
    match listener.accept() {
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("a test reached the harness's listener on port {port}: {other:?}"),
    }
    let results = std::fs::read_to_string(survey.folder().join("ft_results.jsonl")).expect("ft_results.jsonl");
    assert!(!results.contains(&canary), "the canary reached the results");
}

#[test]
fn a_bwrap_sandbox_without_bwrap_on_path_is_one_line_and_no_work() {
    let survey = Survey::new();
    let path = path_without(survey.dir.path(), "bwrap");
    let started = Instant::now();
    let output = survey
        .command(&machine_python())
        .env("PATH", path)
        .args(["--allow-gil-build", "--sandbox", "bwrap", "--packages", "ftfix-pass"])
        .args(["--iterations", "1"])
        .output()
        .expect("run ftsurvey");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?} to refuse",
        started.elapsed()
    );
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("bwrap"), "{stderr}");
    let results = survey.results_root();
    assert!(
        !results.exists() || std::fs::read_dir(&results).expect("dir").next().is_none(),
        "a results folder for a run that never started"
    );
}

/// Every iteration of every package's sandbox report, from the results lines read as JSON: a
/// missing or malformed report fails the test.
fn sandbox_reports(survey: &Survey) -> BTreeMap<String, Vec<SandboxReport>> {
    let text = std::fs::read_to_string(survey.folder().join("ft_results.jsonl")).expect("ft_results.jsonl");
    text.lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            let package = value["package"].as_str().expect("package").to_string();
            let reports = value["iterations"]
                .as_array()
                .expect("iterations")
                .iter()
                .map(|iteration| {
                    serde_json::from_value(iteration["sandbox"].clone())
                        .unwrap_or_else(|error| panic!("{package}: no sandbox report ({error}): {iteration}"))
                })
                .collect();
            (package, reports)
        })
        .collect()
}

/// The package was set up, both iterations ran, and none was a harness error: an attack that
/// took a worker down would show here.
fn assert_workers_kept_up(record: &PackageRecord) {
    let package = &record.package;
    assert!(record.finished && record.install_ok && record.import_ok, "{record:?}");
    assert_eq!(record.iterations.len(), 2, "{package}: {:?}", record.iterations);
    let harness_errors: Vec<&IterationRecord> = record
        .iterations
        .iter()
        .filter(|i| i.status == "harness_error")
        .collect();
    assert!(harness_errors.is_empty(), "{package}: {harness_errors:?}");
}

/// The machine's IPv4 addresses besides loopback, from the kernel's routing tables.
fn machine_ipv4_addresses() -> Vec<Ipv4Addr> {
    // Each local address is a `|-- ADDRESS` line followed by a `/32 host LOCAL` line.
    let table = std::fs::read_to_string("/proc/net/fib_trie").unwrap_or_default();
    let mut addresses = Vec::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in table.lines() {
        let line = line.trim();
        if let Some(address) = line.strip_prefix("|-- ") {
            last = address.parse().ok();
        } else if line == "/32 host LOCAL"
            && let Some(address) = last
            && !address.is_loopback()
            && !addresses.contains(&address)
        {
            addresses.push(address);
        }
    }
    addresses
}

/// A PATH of one directory under `dir` linking every program of the current PATH but `name`.
fn path_without(dir: &Path, name: &str) -> PathBuf {
    let bin = dir.join(format!("bin-without-{name}"));
    std::fs::create_dir_all(&bin).expect("mkdir");
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    for directory in std::env::split_paths(&path) {
        let Ok(entries) = std::fs::read_dir(&directory) else {
            continue;
        };
        // The first of a name on PATH wins, as a lookup would find it; later ones fail to link.
        for entry in entries.flatten().filter(|entry| entry.file_name() != name) {
            let _ = std::os::unix::fs::symlink(entry.path(), bin.join(entry.file_name()));
        }
    }
    bin
}

/// Files named `name` anywhere under `dir`, symlinks not followed.
fn files_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(directory) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&directory) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_name() == name {
                found.push(entry.path());
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(entry.path());
            }
        }
    }
    found
}
