//! What a setup installed: the package's version as its metadata says, and a hash of the
//! venv's freeze, read once per setup by `python/installed.py` and carried by each iteration's
//! outcome, so a run that mixed versions or environments can say so.

use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use crate::sandbox::Seal;
use crate::shell::shell_quote;
use crate::supervise::{CommandSpec, Ending, run_command};

const SCRIPT: &str = include_str!("python/installed.py");

/// What the venv holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Installed {
    /// The package's version; `None` when no distribution in the venv is the package.
    pub(crate) package_version: Option<String>,
    /// `sha256:` and the hex digest of the freeze.
    pub(crate) freeze_hash: Option<String>,
}

#[derive(serde::Deserialize)]
struct Report {
    package_version: Option<String>,
    freeze_sha256: String,
}

/// Reads what the venv at `venv_dir` has installed, with `env` (whose PATH finds the venv's
/// python) under `seal`; `Err` says why it could not.
pub(crate) async fn read(
    venv_dir: &Path,
    name: &str,
    import_name: &str,
    cwd: &Path,
    env: &[(String, String)],
    seal: &Seal<'_>,
    cancel: &CancellationToken,
) -> Result<Installed, String> {
    let site = site_packages(venv_dir).ok_or_else(|| format!("no site-packages under {}", venv_dir.display()))?;
    let command = format!(
        "python -I -S -c {} {} {} {}",
        shell_quote(SCRIPT),
        shell_quote(&site.display().to_string()),
        shell_quote(name),
        shell_quote(import_name)
    );
    let spec = CommandSpec {
        shell_command: &command,
        cwd,
        env,
        seal,
        timeout: domain::budget::PROBE_TIMEOUT,
        log_dir: None,
        stall_threshold: None,
        stdin: None,
    };
    let result = run_command(&spec, cancel)
        .await
        .map_err(|error| format!("cannot start python: {error}"))?;
    if !matches!(result.ending, Ending::Exited { code: Some(0), .. }) {
        let last = result.stderr_tail.lines().rev().map(str::trim).find(|l| !l.is_empty());
        return Err(format!(
            "it ended with {:?}: {}",
            result.ending,
            last.unwrap_or("no output")
        ));
    }
    parse(&result.stdout_tail)
}

/// The venv's `lib/pythonX.Y[t]/site-packages`.
pub(crate) fn site_packages(venv_dir: &Path) -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(venv_dir.join("lib"))
        .ok()?
        .flatten()
        .map(|entry| entry.path().join("site-packages"))
        .filter(|site| site.is_dir())
        .collect();
    candidates.sort();
    candidates.into_iter().next()
}

/// The script's one line of JSON.
fn parse(stdout: &str) -> Result<Installed, String> {
    let line = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    let report: Report = serde_json::from_str(line).map_err(|error| format!("its report did not parse: {error}"))?;
    if report.freeze_sha256.len() != 64 || !report.freeze_sha256.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("its freeze hash is not a SHA-256: {:?}", report.freeze_sha256));
    }
    Ok(Installed {
        package_version: report.package_version.filter(|v| !v.is_empty()),
        freeze_hash: Some(format!("sha256:{}", report.freeze_sha256)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_reads_into_a_version_and_a_prefixed_hash() {
        let hash = "ab".repeat(32);
        let installed = parse(&format!(
            "{{\"package_version\": \"1.2.3\", \"freeze_sha256\": \"{hash}\", \"distributions\": 4}}\n"
        ))
        .expect("report");
        assert_eq!(installed.package_version.as_deref(), Some("1.2.3"));
        assert_eq!(installed.freeze_hash, Some(format!("sha256:{hash}")));
        let unknown = parse(&format!("{{\"package_version\": null, \"freeze_sha256\": \"{hash}\"}}")).expect("report");
        assert_eq!(unknown.package_version, None);
        assert!(parse("not json").expect_err("garbage").contains("did not parse"));
        assert!(
            parse("{\"package_version\": \"1\", \"freeze_sha256\": \"xyz\"}")
                .expect_err("short hash")
                .contains("not a SHA-256")
        );
    }

    #[test]
    fn the_script_reads_a_site_packages_without_running_what_is_in_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let site = dir.path().join("lib").join("python3.13t").join("site-packages");
        let dist = site.join("Demo_Pkg-2.0.1.dist-info");
        std::fs::create_dir_all(&dist).expect("mkdir");
        std::fs::write(
            dist.join("METADATA"),
            "Metadata-Version: 2.1\nName: Demo_Pkg\nVersion: 2.0.1\n",
        )
        .expect("write");
        std::fs::write(dist.join("top_level.txt"), "demo\n").expect("write");
        let other = site.join("zlib_thing-0.1.dist-info");
        std::fs::create_dir_all(&other).expect("mkdir");
        std::fs::write(
            other.join("METADATA"),
            "Metadata-Version: 2.1\nName: zlib-thing\nVersion: 0.1\n",
        )
        .expect("write");
        // A .pth file that would print if site read it.
        std::fs::write(site.join("noisy.pth"), "import sys; print('noise')\n").expect("write");
        assert_eq!(site_packages(dir.path()), Some(site.clone()));
        let run = |name: &str, import_name: &str| {
            let output = std::process::Command::new("python3")
                .args(["-I", "-S", "-c", SCRIPT])
                .arg(&site)
                .args([name, import_name])
                .output()
                .expect("python3");
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            assert_eq!(stdout.lines().count(), 1, "the .pth file was not run: {stdout}");
            parse(&stdout).expect("report")
        };
        let by_name = run("demo-pkg", "demo");
        assert_eq!(by_name.package_version.as_deref(), Some("2.0.1"));
        assert_eq!(
            run("unrelated", "demo.sub").package_version.as_deref(),
            Some("2.0.1"),
            "found by its module"
        );
        assert_eq!(run("unrelated", "nothing").package_version, None);
        let expected = sha2_hex("demo-pkg==2.0.1\nzlib-thing==0.1");
        assert_eq!(by_name.freeze_hash, Some(format!("sha256:{expected}")));
    }

    fn sha2_hex(text: &str) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(text.as_bytes()))
    }
}
