//! Whose fault a failed setup is: the package's (a build error, a missing dependency, an
//! import error, a bad source) or the infrastructure's (the network or the index, a full
//! disk, a kill from outside the package's limits, the worker's own I/O). An infrastructure
//! failure is tried again, on another worker if one can take it, instead of becoming the
//! package's verdict.
//!
//! What pip, uv and git print is read line by line for the messages they print when the
//! network, the index or the disk failed them (the tables below, each with the tool that prints
//! it). A missing dependency reads as such (`No matching distribution found`, uv's
//! `was not found in the package registry`) unless the same output shows pip's retries or a
//! connection error: an unreachable index makes pip say both. A package whose own build prints
//! one of these messages is taken for a network failure too; it costs retries, and the
//! verdict, after the last, still names the line.

use domain::SetupStage;
use domain::evidence::LimitHit;

use crate::supervise::{Ending, Supervised};

/// Lines of a full disk or quota, lowercased: Python's `OSError` (`[Errno 28] No space left
/// on device`, which pip prints as `ERROR: Could not install packages due to an OSError`),
/// Rust's (`No space left on device (os error 28)`, uv), the C library's, and quotas (`122`).
const DISK_FULL: [&str; 6] = [
    "no space left on device",
    "[errno 28]",
    "os error 28",
    "disk quota exceeded",
    "[errno 122]",
    "os error 122",
];

/// Lines of a network or index failure, lowercased.
const NETWORK: [&str; 27] = [
    // pip (urllib3 and requests underneath): its retries, then the error it gave up on.
    "after connection broken by",
    "read timed out",
    "readtimeouterror",
    "connecttimeouterror",
    "newconnectionerror",
    "failed to establish a new connection",
    "max retries exceeded with url",
    "connection aborted",
    "remote end closed connection",
    "incompleteread",
    "sslerror",
    "http error 5",
    // The system's resolver and sockets, whoever reports them (pip, uv, git).
    "temporary failure in name resolution",
    "name or service not known",
    "nodename nor servname provided",
    "connection refused",
    "connection reset by peer",
    "connection timed out",
    "network is unreachable",
    "no route to host",
    // uv (reqwest underneath): its `Caused by:` chain.
    "error sending request for url",
    "request failed after",
    "network timeout",
    "operation timed out",
    "dns error",
    "tcp connect error",
    "http status server error",
];

/// Lines of git's own transport failures, lowercased.
const GIT_TRANSPORT: [&str; 4] = [
    "could not resolve host",
    "the remote end hung up unexpectedly",
    "rpc failed",
    "early eof",
];

/// Characters of a matched line kept in the message.
const LINE_CHARS: usize = 300;

/// Why a setup command's failure is the infrastructure's, as a line for the message, or
/// `None` when it is the package's. `stage` says what ran: an import check that fails is the
/// package's whatever it printed (a package may well try the network at import), unless the
/// disk was full.
pub(crate) fn infrastructure_cause(stage: SetupStage, result: &Supervised) -> Option<String> {
    if let Some(cause) = cause_in_output(stage, &result.stdout_tail, &result.stderr_tail) {
        return Some(cause);
    }
    if result.limits_hit.contains(&LimitHit::Memory) {
        return None;
    }
    match result.ending {
        // The shell itself killed: by an operator, the machine's own out-of-memory killer or
        // the worker's shutdown, never by a limit of the package's.
        Ending::Exited {
            signal: Some(signal), ..
        } => Some(format!(
            "killed from outside by {}, not at the package's memory limit",
            domain::outcome::signal_name(signal)
        )),
        // The shell saw its command die of SIGKILL, which no build sends itself.
        Ending::Exited { code: Some(137), .. } => {
            Some("its command was killed from outside by SIGKILL, not at the package's memory limit".to_string())
        }
        _ => None,
    }
}

/// The infrastructure's failure a command printed, as `kind: line`: a full disk first (it
/// makes the network fail too), then the network or the index.
pub(crate) fn cause_in_output(stage: SetupStage, stdout: &str, stderr: &str) -> Option<String> {
    let lines = || stderr.lines().rev().chain(stdout.lines().rev()).map(str::trim);
    let found = |needles: &[&str]| {
        lines().find(|line| {
            let lower = line.to_lowercase();
            needles.iter().any(|needle| lower.contains(needle))
        })
    };
    if let Some(line) = found(&DISK_FULL) {
        return Some(format!("disk full: {}", shortened(line)));
    }
    if stage == SetupStage::Import {
        return None;
    }
    let network = found(&NETWORK).or_else(|| found(&GIT_TRANSPORT))?;
    Some(format!("network: {}", shortened(network)))
}

/// Whether a message (an I/O error's, say) tells of a full disk.
pub(crate) fn is_disk_full(message: &str) -> bool {
    let lower = message.to_lowercase();
    DISK_FULL.iter().any(|needle| lower.contains(needle))
}

fn shortened(line: &str) -> String {
    line.chars().take(LINE_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// pip 24 on an index that does not answer: its retries, then the missing distribution.
    const PIP_READ_TIMEOUT: &str = "\
Looking in indexes: https://pypi.org/simple
Processing /var/lib/ftsurvey/src
  Installing build dependencies: started
WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) after connection broken by 'ReadTimeoutError(\"HTTPSConnectionPool(host='pypi.org', port=443): Read timed out. (read timeout=15)\")': /simple/setuptools/
WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) after connection broken by 'ReadTimeoutError(\"HTTPSConnectionPool(host='pypi.org', port=443): Read timed out. (read timeout=15)\")': /simple/setuptools/
ERROR: Could not find a version that satisfies the requirement setuptools>=61 (from versions: none)
ERROR: No matching distribution found for setuptools>=61
";

    /// pip with no route to its index: a refused connection.
    const PIP_REFUSED: &str = "\
WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) after connection broken by 'NewConnectionError('<pip._vendor.urllib3.connection.HTTPSConnection object at 0x7f2a>: Failed to establish a new connection: [Errno 111] Connection refused')': /simple/numpy/
ERROR: Could not find a version that satisfies the requirement numpy (from versions: none)
ERROR: No matching distribution found for numpy
";

    /// pip downloading a wheel when the connection drops.
    const PIP_READ_TIMEOUT_DOWNLOAD: &str = "\
Collecting numpy
  Downloading numpy-2.1.0.tar.gz (18.9 MB)
ERROR: Exception:
Traceback (most recent call last):
  File \"/venv/lib/python3.13t/site-packages/pip/_vendor/urllib3/response.py\", line 438, in _error_catcher
    yield
pip._vendor.urllib3.exceptions.ReadTimeoutError: HTTPSConnectionPool(host='files.pythonhosted.org', port=443): Read timed out.
";

    /// pip out of disk while unpacking.
    const PIP_DISK_FULL: &str = "\
Collecting torch
  Downloading torch-2.4.0-cp313-cp313t-manylinux1_x86_64.whl (797.2 MB)
ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device
";

    /// pip on a dependency nobody published: the package's fault.
    const PIP_MISSING_DEPENDENCY: &str = "\
Processing /var/lib/ftsurvey/src
ERROR: Could not find a version that satisfies the requirement no-such-dependency-ftsurvey (from versions: none)
ERROR: No matching distribution found for no-such-dependency-ftsurvey
";

    /// A C extension that does not build: the package's fault.
    const PIP_BUILD_ERROR: &str = "\
  building 'pkg._speedups' extension
  gcc -pthread -fPIC -I/usr/include/python3.13t -c src/speedups.c -o build/speedups.o
  src/speedups.c:12:10: fatal error: Python.h: No such file or directory
  error: command '/usr/bin/gcc' failed with exit code 1
  error: subprocess-exited-with-error
ERROR: Failed building wheel for pkg
";

    /// uv when its requests time out.
    const UV_TIMEOUT: &str = "\
  × Failed to download `numpy==2.1.0`
  ├─▶ Failed to fetch: `https://files.pythonhosted.org/packages/numpy-2.1.0.tar.gz`
  ├─▶ Request failed after 3 retries
  ├─▶ error sending request for url (https://files.pythonhosted.org/packages/numpy-2.1.0.tar.gz)
  ╰─▶ operation timed out
";

    /// uv when the index's name does not resolve.
    const UV_DNS: &str = "\
error: Failed to fetch: `https://pypi.org/simple/attrs/`
  Caused by: Request failed after 3 retries
  Caused by: error sending request for url (https://pypi.org/simple/attrs/)
  Caused by: client error (Connect)
  Caused by: dns error: failed to lookup address information: Temporary failure in name resolution
";

    /// uv out of disk.
    const UV_DISK_FULL: &str = "\
error: Failed to install: numpy-2.1.0-cp313-cp313t-manylinux_2_17_x86_64.whl (numpy==2.1.0)
  Caused by: failed to write to file `/venv/lib/python3.13t/site-packages/numpy/core/_multiarray_umath.so`: No space left on device (os error 28)
";

    /// uv on a dependency nobody published: the package's fault.
    const UV_MISSING_DEPENDENCY: &str = "\
  × No solution found when resolving dependencies:
  ╰─▶ Because no-such-dependency-ftsurvey was not found in the package registry and pkg==1.0 depends on no-such-dependency-ftsurvey, we can conclude that pkg==1.0 cannot be used.
";

    /// uv given a URL that is not there: the package's fault.
    const UV_NOT_FOUND: &str = "\
error: Failed to fetch: `https://example.org/pkg-1.0.tar.gz`
  Caused by: HTTP status client error (404 Not Found) for url (https://example.org/pkg-1.0.tar.gz)
";

    /// git when the host does not answer.
    const GIT_UNREACHABLE: &str = "\
Cloning into '/var/lib/ftsurvey/src'...
fatal: unable to access 'https://github.com/org/pkg/': Could not resolve host: github.com
";

    /// git on a repository that is not there: the package's fault.
    const GIT_NO_REPOSITORY: &str = "\
Cloning into '/var/lib/ftsurvey/src'...
remote: Repository not found.
fatal: repository 'https://github.com/org/no-such-pkg/' not found
";

    /// An import that fails: the package's fault, whatever the traceback mentions.
    const IMPORT_CONNECTS: &str = "\
Traceback (most recent call last):
  File \"<string>\", line 1, in <module>
  File \"/venv/lib/python3.13t/site-packages/pkg/__init__.py\", line 3, in <module>
    urllib.request.urlopen('http://localhost:1')
ConnectionRefusedError: [Errno 111] Connection refused
";

    #[test]
    fn pip_uv_and_git_messages_of_the_network_and_the_disk_are_the_infrastructures() {
        let cases: &[(&str, SetupStage, &str)] = &[
            (PIP_READ_TIMEOUT, SetupStage::Install, "network: WARNING: Retrying"),
            (PIP_REFUSED, SetupStage::Install, "network: WARNING: Retrying"),
            (
                PIP_READ_TIMEOUT_DOWNLOAD,
                SetupStage::Install,
                "network: pip._vendor.urllib3",
            ),
            (
                PIP_DISK_FULL,
                SetupStage::Install,
                "disk full: ERROR: Could not install",
            ),
            (UV_TIMEOUT, SetupStage::Install, "network: ╰─▶ operation timed out"),
            (UV_DNS, SetupStage::Install, "network: Caused by: dns error"),
            (
                UV_DISK_FULL,
                SetupStage::Install,
                "disk full: Caused by: failed to write",
            ),
            (GIT_UNREACHABLE, SetupStage::Source, "network: fatal: unable to access"),
            (PIP_READ_TIMEOUT, SetupStage::Source, "network: WARNING: Retrying"),
            (UV_DISK_FULL, SetupStage::Import, "disk full: "),
        ];
        for (output, stage, expected) in cases {
            let cause = cause_in_output(*stage, "", output);
            assert!(
                cause.as_deref().is_some_and(|c| c.starts_with(expected)),
                "{stage:?} {expected:?}: {cause:?}"
            );
        }
        // Whichever stream the tool wrote to.
        assert!(cause_in_output(SetupStage::Install, UV_DNS, "").is_some());
    }

    #[test]
    fn a_missing_dependency_a_build_error_a_bad_source_and_an_import_error_are_the_packages() {
        let cases: &[(&str, SetupStage)] = &[
            (PIP_MISSING_DEPENDENCY, SetupStage::Install),
            (PIP_BUILD_ERROR, SetupStage::Install),
            (UV_MISSING_DEPENDENCY, SetupStage::Install),
            (UV_NOT_FOUND, SetupStage::Source),
            (GIT_NO_REPOSITORY, SetupStage::Source),
            (IMPORT_CONNECTS, SetupStage::Import),
            (PIP_REFUSED, SetupStage::Import),
            ("", SetupStage::Install),
        ];
        for (output, stage) in cases {
            assert_eq!(cause_in_output(*stage, "", output), None, "{stage:?}: {output}");
        }
    }

    #[test]
    fn a_matched_line_is_kept_short() {
        let long = format!("WARNING: Retrying after connection broken by {}", "x".repeat(5000));
        let cause = cause_in_output(SetupStage::Install, "", &long).expect("a network failure");
        assert_eq!(cause.chars().count(), "network: ".len() + LINE_CHARS);
    }

    #[test]
    fn io_errors_of_a_full_disk_are_recognised() {
        let error = std::io::Error::from_raw_os_error(28);
        assert!(is_disk_full(&format!("/var/lib/ftsurvey/venvs/x: {error}")), "{error}");
        assert!(!is_disk_full(
            "/var/lib/ftsurvey/src/pkg: No such file or directory (os error 2)"
        ));
    }
}
