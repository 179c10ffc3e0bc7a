//! The extension probe: what importing a package does to the GIL (run in its venv with
//! `PYTHON_GIL` unset), and the free-threading declarations its sources make (report only).
//! Also the startup hook every venv gets, so faulthandler can dump stacks on request.

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::time::Duration;

use domain::evidence::{Declaration, ExtensionReport};
use tokio_util::sync::CancellationToken;

use crate::evidence_file::read_capped;
use crate::sandbox::Seal;
use crate::shell::shell_quote;
use crate::supervise::{CommandSpec, Ending, run_command};

const PROBE_SCRIPT: &str = include_str!("python/probe_extensions.py");
const HOOKS_MODULE: &str = include_str!("python/ftsurvey_hooks.py");
const HOOKS_PTH: &str = include_str!("python/ftsurvey_hooks.pth");
const PROBE_TIMEOUT: Duration = domain::budget::PROBE_TIMEOUT;
/// The largest report read back: a package of thousands of extension modules is far under it.
const MAX_REPORT_BYTES: u64 = 16 * 1024 * 1024;
/// Files and declarations the source scan looks at, at most.
const MAX_SCANNED_FILES: usize = 20_000;
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
const MAX_DECLARATIONS: usize = 100;

/// Installs the faulthandler hook into the venv's site-packages.
pub(crate) fn install_hooks(venv_dir: &Path) -> std::io::Result<()> {
    let lib = venv_dir.join("lib");
    for entry in std::fs::read_dir(&lib)? {
        let site = entry?.path().join("site-packages");
        if site.is_dir() {
            std::fs::write(site.join("ftsurvey_hooks.py"), HOOKS_MODULE)?;
            std::fs::write(site.join("ftsurvey_hooks.pth"), HOOKS_PTH)?;
            return Ok(());
        }
    }
    Err(std::io::Error::other(format!(
        "no site-packages under {}",
        lib.display()
    )))
}

/// Imports `import_name` and its extension modules from `cwd` with the environment `env`
/// (whose PATH finds the venv's python). Whatever goes wrong is in `probe_error`.
///
/// The report comes back in a file of a directory made for this probe, on the line after a
/// nonce the probe reads from its standard input before it imports anything of the package.
/// What the package prints is only output, and a report without the nonce is not the probe's.
pub(crate) async fn probe(
    import_name: &str,
    cwd: &Path,
    env: &[(String, String)],
    seal: &Seal<'_>,
    cancel: &CancellationToken,
) -> ExtensionReport {
    let script = cwd.join("ftsurvey_probe_extensions.py");
    if let Err(error) = std::fs::write(&script, PROBE_SCRIPT) {
        return failed(format!("cannot write the probe script: {error}"));
    }
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let report_dir = cwd.join(format!(".ftsurvey-probe-{}", uuid::Uuid::new_v4().simple()));
    if let Err(error) = std::fs::DirBuilder::new().mode(0o700).create(&report_dir) {
        return failed(format!("cannot make the probe's report directory: {error}"));
    }
    let report_path = report_dir.join("report.json");
    let stdin = format!("{nonce}\n{}\n", report_path.display());
    let command = format!(
        "python {} {}",
        shell_quote(&script.display().to_string()),
        shell_quote(import_name)
    );
    let spec = CommandSpec {
        shell_command: &command,
        cwd,
        env,
        seal,
        timeout: PROBE_TIMEOUT,
        log_dir: None,
        stall_threshold: None,
        stdin: Some(stdin.as_bytes()),
    };
    let result = run_command(&spec, cancel).await;
    let _ = std::fs::remove_file(&script);
    let report = read_report(&report_path, &nonce);
    let _ = std::fs::remove_dir_all(&report_dir);
    let result = match result {
        Ok(result) => result,
        Err(error) => return failed(format!("cannot start the probe: {error}")),
    };
    if !matches!(result.ending, Ending::Exited { code: Some(0), .. }) {
        let last_line = result
            .stderr_tail
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("no output")
            .to_string();
        return failed(format!("the probe ended with {:?}: {last_line}", result.ending));
    }
    report.unwrap_or_else(failed)
}

/// The report the probe wrote at `path`, if it carries `nonce`.
fn read_report(path: &Path, nonce: &str) -> Result<ExtensionReport, String> {
    let bytes = read_capped(path, MAX_REPORT_BYTES).map_err(|error| format!("the probe wrote no report: {error}"))?;
    let text = String::from_utf8_lossy(&bytes);
    match text.split_once('\n') {
        Some((tag, json)) if tag == nonce => {
            serde_json::from_str(json).map_err(|error| format!("the probe's report is not readable: {error}"))
        }
        _ => Err("the probe's report does not carry its nonce".to_string()),
    }
}

fn failed(reason: String) -> ExtensionReport {
    ExtensionReport {
        probe_error: Some(reason),
        ..ExtensionReport::default()
    }
}

/// Finds free-threading declarations in the C, C++, Cython and Rust sources under `root` and
/// in its `setup.py`.
pub(crate) fn scan_declarations(root: &Path) -> Vec<Declaration> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    let mut scanned = 0;
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() {
                if !name.starts_with('.') && !matches!(name.as_str(), "node_modules" | "venv" | "target") {
                    pending.push(path);
                }
                continue;
            }
            if !kind.is_file() || !is_scanned(&name) {
                continue;
            }
            scanned += 1;
            if scanned > MAX_SCANNED_FILES || found.len() >= MAX_DECLARATIONS {
                return found;
            }
            if entry.metadata().map(|m| m.len() > MAX_FILE_BYTES).unwrap_or(true) {
                continue;
            }
            let Ok(bytes) = std::fs::read(&path) else { continue };
            let text = String::from_utf8_lossy(&bytes);
            let relative = path.strip_prefix(root).unwrap_or(&path).display().to_string();
            found.extend(declarations_in(&relative, &text));
        }
    }
    found.truncate(MAX_DECLARATIONS);
    found
}

fn is_scanned(name: &str) -> bool {
    const SUFFIXES: [&str; 11] = [
        ".c", ".h", ".cc", ".cpp", ".cxx", ".hpp", ".pyx", ".pxd", ".pxi", ".rs", "setup.py",
    ];
    SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// The declarations one file makes, line by line.
fn declarations_in(file: &str, text: &str) -> Vec<Declaration> {
    const KINDS: [&str; 4] = [
        "PyUnstable_Module_SetGIL",
        "Py_mod_gil",
        "freethreading_compatible",
        "gil_used",
    ];
    let mut found = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let Some(kind) = KINDS.iter().find(|k| line.contains(*k)) else {
            continue;
        };
        let compact: String = line
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_lowercase();
        let gil_not_used = if line.contains("Py_MOD_GIL_NOT_USED") {
            Some(true)
        } else if line.contains("Py_MOD_GIL_USED") {
            Some(false)
        } else if compact.contains("freethreading_compatible=true")
            || compact.contains("freethreading_compatible\":true")
            || compact.contains("freethreading_compatible':true")
        {
            Some(true)
        } else if compact.contains("freethreading_compatible=false") {
            Some(false)
        } else if compact.contains("gil_used=false") {
            Some(true)
        } else if compact.contains("gil_used=true") {
            Some(false)
        } else {
            None
        };
        found.push(Declaration {
            file: file.to_string(),
            line: index as u32 + 1,
            kind: kind.to_string(),
            text: line.trim().chars().take(200).collect(),
            gil_not_used,
        });
    }
    found
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::sandbox::Sandbox;

    /// A verdict a package could print to pass for the probe's.
    const FORGED: &str =
        r#"{"modules": ["forger._forged"], "gil_enabled_by": ["forger._forged"], "gil_enabled_after_import": false}"#;

    /// Probes a package `forger` whose import runs `body`, in a directory under `root` that
    /// holds it and a `python` found on PATH; unsealed or sealed by `sandbox`.
    async fn probe_forger(sandbox: &Sandbox, root: &Path, body: &str) -> ExtensionReport {
        let site = root.join("site");
        let bin = root.join("bin");
        let neutral = root.join("import-check");
        for dir in [&site, &bin, &neutral, &root.join("home"), &root.join("tmp")] {
            std::fs::create_dir_all(dir).expect("mkdir");
        }
        std::fs::write(site.join("forger.py"), body).expect("write the package");
        std::os::unix::fs::symlink("/usr/bin/python3", bin.join("python")).expect("python on PATH");
        let env = vec![
            ("PATH".to_string(), format!("{}:/usr/bin:/bin", bin.display())),
            ("PYTHONPATH".to_string(), site.display().to_string()),
        ];
        let mut seal = Seal::new(sandbox, root.join("home"), root.join("tmp"));
        seal.writable.push(root.to_path_buf());
        probe("forger", &neutral, &env, &seal, &CancellationToken::new()).await
    }

    /// The verdicts a package's import tries to pass off as the probe's, each with what the
    /// probe must say instead: the real report, or that it has none.
    fn forgeries() -> [(String, Option<&'static str>); 3] {
        [
            // Printed on stdout, where the verdict used to be read, as the process exits: after
            // anything the probe could print.
            (format!("import atexit\natexit.register(print, {FORGED:?})\n"), None),
            // Printed, then the process ends before the probe can write its report.
            (
                format!("import os\nprint({FORGED:?}, flush=True)\nos._exit(0)\n"),
                Some("the probe wrote no report: "),
            ),
            // Written where the report goes, guessed from the working directory, without the
            // nonce the probe read before the import (stdin is already at its end).
            (
                format!(
                    "import glob, os, sys\nguess = sys.stdin.read() or 'guess'\n\
                     for d in glob.glob('.ftsurvey-probe-*'):\n    \
                     open(os.path.join(d, 'report.json'), 'w').write(guess + '\\n' + {FORGED:?})\n\
                     os._exit(0)\n"
                ),
                Some("the probe's report does not carry its nonce"),
            ),
        ]
    }

    async fn the_probes_verdict_cannot_be_forged_by_the_package_in(sandbox: &Sandbox) {
        for (body, error) in forgeries() {
            let root = tempfile::tempdir().expect("tempdir");
            let report = probe_forger(sandbox, root.path(), &body).await;
            assert!(report.modules.is_empty(), "{body}: {report:?}");
            assert!(report.gil_enabled_by.is_empty(), "{body}: {report:?}");
            match error {
                None => {
                    assert_eq!(report.probe_error, None, "{body}");
                    // /usr/bin/python3 holds the GIL; the forged verdict says it does not.
                    assert_eq!(report.gil_enabled_after_import, Some(true), "{body}");
                }
                Some(error) => {
                    let probe_error = report.probe_error.as_deref().unwrap_or_default();
                    assert!(probe_error.starts_with(error), "{body}: {probe_error}");
                    assert_eq!(report.gil_enabled_after_import, None, "{body}");
                }
            }
        }
    }

    #[tokio::test]
    async fn the_probes_verdict_cannot_be_forged_by_the_package_unsealed() {
        the_probes_verdict_cannot_be_forged_by_the_package_in(&Sandbox::unsealed()).await;
    }

    #[tokio::test]
    async fn the_probes_verdict_cannot_be_forged_by_the_package_in_bubblewrap() {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let bwrap: Option<PathBuf> = crate::sandbox::find_on_path("bwrap", &path);
        let sandbox = Sandbox {
            bwrap: Some(bwrap.expect("bwrap on PATH: the sandbox tests need bubblewrap")),
            ..Sandbox::unsealed()
        };
        the_probes_verdict_cannot_be_forged_by_the_package_in(&sandbox).await;
    }

    #[test]
    fn declarations_of_each_kind_are_found_with_what_they_say() {
        let c = "static PyModuleDef_Slot slots[] = {\n    {Py_mod_gil, Py_MOD_GIL_NOT_USED},\n    {0, NULL}};\n";
        let found = declarations_in("src/_speedups.c", c);
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].line, found[0].kind.as_str(), found[0].gil_not_used),
            (2, "Py_mod_gil", Some(true))
        );

        let cases = [
            (
                "PyUnstable_Module_SetGIL(m, Py_MOD_GIL_USED);",
                "PyUnstable_Module_SetGIL",
                Some(false),
            ),
            (
                "# cython: freethreading_compatible = True",
                "freethreading_compatible",
                Some(true),
            ),
            ("#[pymodule(gil_used = false)]", "gil_used", Some(true)),
            ("#[pymodule(gil_used = true)]", "gil_used", Some(false)),
            ("#ifdef Py_mod_gil", "Py_mod_gil", None),
        ];
        for (line, kind, says) in cases {
            let found = declarations_in("x", line);
            assert_eq!(found.len(), 1, "{line}");
            assert_eq!((found[0].kind.as_str(), found[0].gil_not_used), (kind, says), "{line}");
        }
        assert!(declarations_in("x", "int main(void) { return 0; }").is_empty());
    }

    #[test]
    fn the_scan_walks_sources_and_skips_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("src/pkg")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join(".git")).expect("mkdir");
        std::fs::write(
            dir.path().join("src/pkg/_ext.c"),
            "{Py_mod_gil, Py_MOD_GIL_NOT_USED},\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("src/pkg/notes.txt"), "Py_mod_gil\n").expect("write");
        std::fs::write(dir.path().join(".git/x.c"), "Py_mod_gil\n").expect("write");
        let found = scan_declarations(dir.path());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].file, "src/pkg/_ext.c");
    }
}
