//! The bubblewrap command line of one sealed command.
//!
//! Inside: a PID namespace of its own (the worker and other iterations are neither visible nor
//! signalable, and when bubblewrap dies everything inside dies with it), IPC and UTS namespaces,
//! a network namespace with loopback only unless the seal allows the network, no
//! capabilities, the whole system read-only, the worker's directories, its user's home and its
//! secret files replaced by empty ones, and writable only what the seal names.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::sandbox::Seal;

pub(super) fn argv(bwrap: &Path, seal: &Seal<'_>, command: &str, cwd: &Path) -> Vec<OsString> {
    let mut args = Args(vec![bwrap.as_os_str().to_owned()]);
    args.push([
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
    ]);
    if !seal.network {
        args.push(["--unshare-net"]);
    }
    args.push(["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]);
    // The private /tmp first: the binds below may lie under the host's /tmp.
    args.path_pair("--bind", &seal.tmp, Path::new("/tmp"));
    // Parents before children, so a hidden directory inside another is hidden again.
    let mut hidden: Vec<&PathBuf> = seal.sandbox.hidden.iter().collect();
    hidden.sort_by_key(|path| path.components().count());
    for path in hidden {
        if path.parent().is_none() {
            continue;
        }
        if path.is_dir() {
            args.push(["--tmpfs"]);
            args.path(path);
        } else if path.exists() {
            args.path_pair("--ro-bind", Path::new("/dev/null"), path);
        }
    }
    for path in seal.sandbox.readable.iter().chain(&seal.readable) {
        args.path_pair("--ro-bind", path, path);
    }
    for path in seal.writable.iter().chain(std::iter::once(&seal.home)) {
        args.path_pair("--bind", path, path);
    }
    for (what, at) in &seal.mounts {
        args.path_pair("--bind", what, at);
    }
    args.push(["--chdir"]);
    args.path(cwd);
    if seal.count_leftovers {
        args.push(["--", "sh", "-c", COUNT_LEFTOVERS, "sh"]);
    } else {
        args.push(["--", "sh", "-c"]);
    }
    args.0.push(command.into());
    args.0
}

/// The file in the command's `/tmp` where [`COUNT_LEFTOVERS`] leaves its count.
pub(crate) const LEFTOVERS_FILE: &str = ".ftsurvey-leftovers";

/// Runs the command (`$1`), then counts what is still alive in the sandbox's PID namespace
/// besides bubblewrap's init and this shell, before the namespace ends and the kernel kills
/// them: from outside, the kill races the count. Exits with the command's status.
const COUNT_LEFTOVERS: &str = r#"sh -c "$1"; status=$?; n=0; for p in /proc/[0-9]*; do n=$((n + 1)); done; echo $((n - 2)) > /tmp/.ftsurvey-leftovers; exit $status"#;

struct Args(Vec<OsString>);

impl Args {
    fn push<const N: usize>(&mut self, words: [&str; N]) {
        self.0.extend(words.into_iter().map(OsString::from));
    }

    fn path(&mut self, path: &Path) {
        self.0.push(path.as_os_str().to_owned());
    }

    fn path_pair(&mut self, flag: &str, what: &Path, at: &Path) {
        self.0.push(flag.into());
        self.path(what);
        self.path(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::Sandbox;

    #[test]
    fn the_private_tmp_comes_first_then_what_is_read_then_what_is_written() {
        // Paths under a fresh directory, none of which exists: nothing is hidden but what
        // exists, so only the order of the binds is checked here.
        let base = tempfile::tempdir().expect("temp dir");
        let at_base = |relative: &str| base.path().join("work").join(relative);
        let shown = |relative: &str| at_base(relative).display().to_string();
        let sandbox = Sandbox {
            bwrap: Some(PathBuf::from("bwrap")),
            hidden: vec![PathBuf::from("/"), at_base("venvs"), at_base("")],
            readable: vec![at_base("pythons/ft")],
            ..Sandbox::default()
        };
        let mut seal = Seal::new(&sandbox, at_base("it/home"), at_base("it/tmp"));
        seal.writable.push(at_base("logs/it"));
        seal.mounts.push((at_base("it/tree"), at_base("venvs/p/src")));
        let argv: Vec<String> = argv(Path::new("bwrap"), &seal, "pytest -x", &at_base("venvs/p/src"))
            .into_iter()
            .map(|a| a.into_string().expect("utf-8"))
            .collect();
        let at = |needle: &[&str]| {
            argv.windows(needle.len())
                .position(|w| w == needle)
                .unwrap_or_else(|| panic!("{needle:?} not in {argv:?}"))
        };
        assert!(argv.contains(&"--unshare-net".to_string()));
        let tmp = at(&["--bind", &shown("it/tmp"), "/tmp"]);
        // Nonexistent paths are neither hidden nor an error; the root is never hidden.
        assert!(!argv.windows(2).any(|w| w == ["--tmpfs", "/"]), "{argv:?}");
        let readable = at(&["--ro-bind", &shown("pythons/ft"), &shown("pythons/ft")]);
        let logs = at(&["--bind", &shown("logs/it"), &shown("logs/it")]);
        let tree = at(&["--bind", &shown("it/tree"), &shown("venvs/p/src")]);
        assert!(tmp < readable && readable < logs && logs < tree, "{argv:?}");
        assert_eq!(&argv[argv.len() - 3..], ["sh", "-c", "pytest -x"]);

        seal.network = true;
        let argv = argv_strings(&seal);
        assert!(!argv.contains(&"--unshare-net".to_string()), "{argv:?}");
    }

    fn argv_strings(seal: &Seal<'_>) -> Vec<String> {
        argv(Path::new("bwrap"), seal, "true", Path::new("/"))
            .into_iter()
            .map(|a| a.into_string().expect("utf-8"))
            .collect()
    }
}
