//! Probes a target interpreter: version, ABI tag, free-threading, TSAN and debug builds.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use domain::InterpreterProfile;
use serde::Deserialize;

/// A target interpreter that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0} does not exist")]
    NotFound(String),
    #[error("{0} is not an executable file")]
    NotExecutable(String),
    #[error("{path} could not be run: {reason}")]
    Failed { path: String, reason: String },
}

/// The script the interpreter runs; it prints one JSON object.
const PROBE_SCRIPT: &str = r#"
import json, sys, sysconfig
cfg = sysconfig.get_config_var
args = cfg("CONFIG_ARGS") or ""
ft = bool(cfg("Py_GIL_DISABLED"))
gil = sys._is_gil_enabled() if hasattr(sys, "_is_gil_enabled") else None
print(json.dumps({
    "executable": sys.executable,
    "version": sys.version.replace("\n", " "),
    "version_short": "%d.%d.%d" % sys.version_info[:3],
    "major_minor": "%d.%d" % sys.version_info[:2],
    "abi_tag": "cp%d%d%s" % (sys.version_info[0], sys.version_info[1], "t" if ft else ""),
    "free_threaded": ft,
    "gil_enabled_by_default": gil,
    "tsan": "--with-thread-sanitizer" in args,
    "debug": bool(cfg("Py_DEBUG")),
    "platform": sysconfig.get_platform(),
    "configure_args": args,
}))
"#;

#[derive(Deserialize)]
struct ProbeOutput {
    version: String,
    version_short: String,
    major_minor: String,
    abi_tag: String,
    free_threaded: bool,
    gil_enabled_by_default: Option<bool>,
    tsan: bool,
    debug: bool,
    platform: String,
    configure_args: String,
}

/// Runs `python` once with `PYTHON_GIL` unset and reports what it is.
pub async fn probe(python: &Path) -> Result<InterpreterProfile, ProbeError> {
    let shown = python.display().to_string();
    let metadata = std::fs::metadata(python).map_err(|_| ProbeError::NotFound(shown.clone()))?;
    if !metadata.is_file() || metadata.permissions().mode() & 0o111 == 0 {
        return Err(ProbeError::NotExecutable(shown));
    }
    let failed = |reason: String| ProbeError::Failed {
        path: shown.clone(),
        reason,
    };
    let run = tokio::process::Command::new(python)
        .args(["-I", "-c", PROBE_SCRIPT])
        .env_remove("PYTHON_GIL")
        .env_remove("PYTHONPATH")
        .env_remove("PYTHONHOME")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .map_err(|_| failed("no answer within 60 seconds".into()))?
        .map_err(|e| failed(e.to_string()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no output");
        return Err(failed(format!("exited with {}: {}", output.status, last.trim())));
    }
    let parsed: ProbeOutput = serde_json::from_slice(&output.stdout).map_err(|e| {
        failed(format!(
            "is it a CPython 3 interpreter? its probe output did not parse: {e}"
        ))
    })?;
    Ok(InterpreterProfile {
        executable: shown,
        version: parsed.version,
        version_short: parsed.version_short,
        major_minor: parsed.major_minor,
        abi_tag: parsed.abi_tag,
        free_threaded: parsed.free_threaded,
        gil_enabled_by_default: parsed.gil_enabled_by_default,
        tsan: parsed.tsan,
        debug: parsed.debug,
        platform: parsed.platform,
        configure_args: parsed.configure_args,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_machines_python_is_probed_as_a_gil_build() {
        let profile = probe(Path::new("/usr/bin/python3")).await.expect("probe");
        assert!(profile.major_minor.starts_with("3."));
        assert!(!profile.free_threaded);
        assert_eq!(profile.abi_tag, format!("cp{}", profile.major_minor.replace('.', "")));
    }

    #[tokio::test]
    async fn unusable_paths_are_one_line_errors() {
        let missing = probe(Path::new("/nonexistent/python3"))
            .await
            .expect_err("missing")
            .to_string();
        assert_eq!(missing, "/nonexistent/python3 does not exist");
        let dir = tempfile::tempdir().expect("tempdir");
        let plain = dir.path().join("python");
        std::fs::write(&plain, "not a program").expect("write");
        assert!(
            probe(&plain)
                .await
                .expect_err("not executable")
                .to_string()
                .ends_with("is not an executable file")
        );
        let fake = dir.path().join("fake");
        std::fs::write(&fake, "#!/bin/sh\necho hello\n").expect("write");
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let error = probe(&fake).await.expect_err("not python").to_string();
        assert!(error.contains("did not parse") && !error.contains('\n'), "{error}");
    }
}
