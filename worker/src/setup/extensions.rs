//! The extension probe: what importing a package does to the GIL (run in its venv with
//! `PYTHON_GIL` unset), and the free-threading declarations its sources make (report only).
//! Also the startup hook every venv gets, so faulthandler can dump stacks on request.

use std::path::Path;
use std::time::Duration;

use domain::evidence::{Declaration, ExtensionReport};
use tokio_util::sync::CancellationToken;

use crate::sandbox::Seal;
use crate::shell::shell_quote;
use crate::supervise::{CommandSpec, Ending, run_command};

const PROBE_SCRIPT: &str = include_str!("python/probe_extensions.py");
const HOOKS_MODULE: &str = include_str!("python/ftsurvey_hooks.py");
const HOOKS_PTH: &str = include_str!("python/ftsurvey_hooks.pth");
const PROBE_TIMEOUT: Duration = domain::budget::PROBE_TIMEOUT;
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
    };
    let result = match run_command(&spec, cancel).await {
        Ok(result) => result,
        Err(error) => return failed(format!("cannot start the probe: {error}")),
    };
    let _ = std::fs::remove_file(&script);
    let last_line = |text: &str| {
        text.lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("no output")
            .to_string()
    };
    if !matches!(result.ending, Ending::Exited { code: Some(0), .. }) {
        return failed(format!(
            "the probe ended with {:?}: {}",
            result.ending,
            last_line(&result.stderr_tail)
        ));
    }
    match serde_json::from_str::<ExtensionReport>(&last_line(&result.stdout_tail)) {
        Ok(report) => report,
        Err(error) => failed(format!("the probe printed no report: {error}")),
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
    use super::*;

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
