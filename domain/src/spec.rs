//! What to test and how: package specs and run specs.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::interpreter::InterpreterRequirement;
use crate::package_kind::{ExtensionType, TestFramework};

/// Where a package's source tree comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// The sdist of `PackageSpec::version` (or the latest) from PyPI.
    Sdist,
    /// A git repository at a revision, cloned shallowly.
    Git {
        url: String,
        rev: Option<String>,
        depth: Option<u32>,
    },
    /// A directory on the worker's machine, copied before building.
    Path { path: String },
}

impl Source {
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Sdist => "sdist",
            Source::Git { .. } => "git",
            Source::Path { .. } => "path",
        }
    }
}

/// Everything a worker needs to set up and test one package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageSpec {
    /// The distribution name, as in the registry.
    pub name: String,
    /// A pinned version to test; `None` means the latest.
    pub version: Option<String>,
    pub source: Source,
    /// Shell command run in the source tree with the venv's `bin` first on PATH.
    pub install_command: String,
    /// Shell command run in the source tree for each iteration.
    pub test_command: String,
    /// How the test command reports its results: decides how its exit code is read.
    pub test_framework: TestFramework,
    /// The module to import to check the install.
    pub import_name: String,
    /// Overrides the run's per-iteration timeout.
    pub timeout_secs: Option<u64>,
    /// Environment for this package's commands, on top of the run's.
    pub env: BTreeMap<String, String>,
    /// PyPI downloads, used for ordering and triage.
    pub download_count: Option<u64>,
    /// What the package builds, as the registry says.
    pub extension_type: Option<ExtensionType>,
    /// The package's tests need the host's network (the registry's `network: true`); without
    /// it they get loopback only, where the worker's sandbox can cut them off.
    #[serde(default)]
    pub network: bool,
}

impl PackageSpec {
    /// The import name used when the registry gives none: always a Python name, so a package
    /// whose name starts with a digit fails its import check instead of its whole run.
    pub fn default_import_name(name: &str) -> String {
        let import_name = name.replace(['-', '.'], "_").to_lowercase();
        if import_name.starts_with(|c: char| c.is_ascii_digit()) {
            format!("_{import_name}")
        } else {
            import_name
        }
    }

    /// A distribution name as PyPI allows it: ASCII letters, digits, `.`, `_` and `-`, starting
    /// and ending with a letter or digit. Names reach paths and command lines, so nothing else
    /// (`../x`, `-flag`, a space, a quote) is let through.
    pub fn check_name(name: &str) -> Result<(), String> {
        let ok = !name.is_empty()
            && name.len() <= MAX_NAME_BYTES
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.ends_with(|c: char| c.is_ascii_alphanumeric());
        if ok {
            Ok(())
        } else {
            Err(format!(
                "package name {name:?} is not a PyPI name (letters, digits, `.`, `_`, `-`)"
            ))
        }
    }

    /// An import name as dotted Python identifiers (ASCII): it becomes Python source in the
    /// import check (`import NAME`), so anything else could run code of the registry's choosing.
    pub fn check_import_name(import_name: &str) -> Result<(), String> {
        if import_name.len() <= MAX_NAME_BYTES && import_name.split('.').all(is_ascii_identifier) {
            Ok(())
        } else {
            Err(format!("import_name {import_name:?} is not a dotted Python name"))
        }
    }

    /// A git URL to clone: `https://`, `http://`, `ssh://` or `git://`, with no space or
    /// control character. The URL reaches `git clone`, where another form could be an option
    /// (`-u...`), a local path, or a transport that runs a command (`ext::`).
    pub fn check_git_url(url: &str) -> Result<(), String> {
        let scheme_ok = ["https://", "http://", "ssh://", "git://"]
            .iter()
            .any(|scheme| url.starts_with(scheme) && url.len() > scheme.len());
        if scheme_ok && url.len() <= MAX_URL_BYTES && !url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            Ok(())
        } else {
            Err(format!(
                "git URL {url:?} is not an https://, http://, ssh:// or git:// URL without spaces"
            ))
        }
    }

    /// A git revision to check out: no leading `-` (an option), no space or control character.
    pub fn check_git_rev(rev: &str) -> Result<(), String> {
        let ok = !rev.is_empty()
            && rev.len() <= MAX_NAME_BYTES
            && !rev.starts_with('-')
            && !rev.chars().any(|c| c.is_whitespace() || c.is_control());
        if ok {
            Ok(())
        } else {
            Err(format!("git revision {rev:?} is not a revision name"))
        }
    }

    /// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
    pub fn check_env_key(key: &str) -> Result<(), String> {
        if is_ascii_identifier(key) {
            Ok(())
        } else {
            Err(format!("env key {key:?} is not a variable name"))
        }
    }
}

/// The longest package or import name accepted.
const MAX_NAME_BYTES: usize = 200;
/// The longest git URL accepted.
const MAX_URL_BYTES: usize = 2048;

/// `[A-Za-z_][A-Za-z0-9_]*`: a Python identifier or an environment variable name.
fn is_ascii_identifier(text: &str) -> bool {
    text.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Whether a job runs with the GIL disabled (`ft`) or enabled (`gil`, for comparison).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Ft,
    Gil,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Ft => "ft",
            Mode::Gil => "gil",
        }
    }

    /// The value of `PYTHON_GIL` for this mode.
    pub fn python_gil_value(self) -> &'static str {
        match self {
            Mode::Ft => "0",
            Mode::Gil => "1",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ft" => Ok(Mode::Ft),
            "gil" => Ok(Mode::Gil),
            other => Err(format!("unknown mode {other:?}: expected ft or gil")),
        }
    }
}

/// How each iteration of a run is executed; shared by all its packages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOptions {
    /// Per-iteration timeout unless a package sets its own.
    pub timeout_secs: u64,
    /// Seconds without output and CPU progress before an iteration counts as stalled.
    pub stall_threshold_secs: u64,
    /// Extra environment for every command, after the tool's own variables.
    pub env: Vec<(String, String)>,
    /// Installed into every venv after the package.
    pub extra_deps: Vec<String>,
    pub test_command_suffix: Option<String>,
    pub test_command_override: Option<String>,
    pub stop_on_first_pass: bool,
    pub detect_extensions: bool,
    pub tsan: bool,
    /// Run each pytest test in this many threads at once (pytest-run-parallel).
    #[serde(default)]
    pub parallel_threads: Option<u32>,
    /// Let every package's tests use the host's network (`--test-network`), whatever the
    /// registry says.
    #[serde(default)]
    pub test_network: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            timeout_secs: 600,
            stall_threshold_secs: 60,
            env: Vec::new(),
            extra_deps: Vec::new(),
            test_command_suffix: None,
            test_command_override: None,
            stop_on_first_pass: false,
            detect_extensions: true,
            tsan: false,
            parallel_threads: None,
            test_network: false,
        }
    }
}

impl RunOptions {
    /// The test command to run for `package`, after override and suffix.
    pub fn effective_test_command(&self, package: &PackageSpec) -> String {
        let base = self.test_command_override.as_deref().unwrap_or(&package.test_command);
        match self.test_command_suffix.as_deref().map(str::trim) {
            Some(suffix) if !suffix.is_empty() => format!("{base} {suffix}"),
            _ => base.to_string(),
        }
    }

    /// The timeout for one iteration of `package`.
    pub fn effective_timeout_secs(&self, package: &PackageSpec) -> u64 {
        package.timeout_secs.unwrap_or(self.timeout_secs)
    }

    /// Whether `package`'s tests may reach the host's network: the run lets every package's
    /// do so, or the registry says this one needs it.
    pub fn tests_get_network(&self, package: &PackageSpec) -> bool {
        self.test_network || package.network
    }
}

/// A submitted survey: which packages, how many times, on what interpreter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    /// A short human label, shown in listings.
    pub label: String,
    /// Packages in the order they were selected (popularity order for `--top`).
    pub packages: Vec<PackageSpec>,
    pub iterations: u32,
    pub modes: Vec<Mode>,
    pub options: RunOptions,
    pub requirement: InterpreterRequirement,
    /// Which registry the packages came from, for the record.
    pub registry: Option<String>,
    /// The run whose packages this one runs again (`ftsurvey runs rerun`): `compare` reads
    /// the two as one survey and its second look.
    #[serde(default)]
    pub rerun_of: Option<crate::RunId>,
}

impl RunSpec {
    /// The most iterations of one package a run may ask for.
    pub const MAX_ITERATIONS: u32 = 10_000;
    /// The most jobs (packages x modes x iterations) one run may hold: a survey of PyPI's top
    /// 5,000 packages at 100 iterations in both modes is a million.
    pub const MAX_JOBS: u64 = 2_000_000;
    /// The longest per-iteration timeout a run may set: a week.
    pub const MAX_TIMEOUT_SECS: u64 = 7 * 24 * 3600;
    /// The longest stall threshold a run may set: a day.
    pub const MAX_STALL_THRESHOLD_SECS: u64 = 24 * 3600;

    /// Checks what the types cannot: at least one package, iteration and mode; unique names;
    /// a size the coordinator can hold.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.packages.is_empty() {
            return Err(SpecError::NoPackages);
        }
        if self.iterations == 0 {
            return Err(SpecError::ZeroIterations);
        }
        if self.iterations > Self::MAX_ITERATIONS {
            return Err(SpecError::TooManyIterations(self.iterations));
        }
        if self.total_jobs() > Self::MAX_JOBS {
            return Err(SpecError::TooManyJobs(self.total_jobs()));
        }
        if self.modes.is_empty() {
            return Err(SpecError::NoModes);
        }
        if self.options.timeout_secs > Self::MAX_TIMEOUT_SECS
            || self
                .packages
                .iter()
                .any(|p| p.timeout_secs.unwrap_or(0) > Self::MAX_TIMEOUT_SECS)
        {
            return Err(SpecError::TimeoutTooLong);
        }
        if self.options.stall_threshold_secs > Self::MAX_STALL_THRESHOLD_SECS {
            return Err(SpecError::StallThresholdTooLong(self.options.stall_threshold_secs));
        }
        if self.options.timeout_secs == 0 {
            return Err(SpecError::ZeroTimeout);
        }
        if let Some(build) = &self.requirement.build {
            InterpreterRequirement::check_build(build).map_err(SpecError::InvalidRequirement)?;
        }
        let mut seen = std::collections::BTreeSet::new();
        for package in &self.packages {
            if package.name.trim().is_empty() {
                return Err(SpecError::EmptyPackageName);
            }
            if !seen.insert(package.name.as_str()) {
                return Err(SpecError::DuplicatePackage(package.name.clone()));
            }
        }
        Ok(())
    }

    /// Jobs this run expands to: packages x modes x iterations.
    pub fn total_jobs(&self) -> u64 {
        self.packages.len() as u64 * self.modes.len() as u64 * u64::from(self.iterations)
    }
}

/// A run spec that cannot be run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("the run selects no packages")]
    NoPackages,
    #[error("iterations must be at least 1")]
    ZeroIterations,
    #[error("the run has no modes")]
    NoModes,
    #[error("timeout must be at least 1 second")]
    ZeroTimeout,
    #[error("a package has an empty name")]
    EmptyPackageName,
    #[error("package {0:?} is selected twice")]
    DuplicatePackage(String),
    #[error("a timeout is longer than {max} seconds", max = RunSpec::MAX_TIMEOUT_SECS)]
    TimeoutTooLong,
    #[error("stall threshold of {0} seconds, at most {max} allowed", max = RunSpec::MAX_STALL_THRESHOLD_SECS)]
    StallThresholdTooLong(u64),
    #[error("{0} iterations asked for, at most {max} allowed", max = RunSpec::MAX_ITERATIONS)]
    TooManyIterations(u32),
    #[error("the run would hold {0} jobs, at most {max} allowed: split it", max = RunSpec::MAX_JOBS)]
    TooManyJobs(u64),
    #[error("the interpreter requirement: {0}")]
    InvalidRequirement(String),
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn package(name: &str) -> PackageSpec {
        PackageSpec {
            name: name.to_string(),
            version: None,
            source: Source::Sdist,
            install_command: "python -m pip install . pytest".to_string(),
            test_command: "python -m pytest".to_string(),
            test_framework: TestFramework::Pytest,
            import_name: PackageSpec::default_import_name(name),
            timeout_secs: None,
            env: BTreeMap::new(),
            download_count: None,
            extension_type: None,
            network: false,
        }
    }

    #[test]
    fn override_replaces_and_suffix_appends() {
        let pkg = package("a");
        let mut options = RunOptions::default();
        assert_eq!(options.effective_test_command(&pkg), "python -m pytest");
        options.test_command_suffix = Some("--tb=short".into());
        assert_eq!(options.effective_test_command(&pkg), "python -m pytest --tb=short");
        options.test_command_override = Some("python -m pytest tests/".into());
        assert_eq!(
            options.effective_test_command(&pkg),
            "python -m pytest tests/ --tb=short"
        );
    }

    #[test]
    fn package_timeout_wins_over_run_timeout() {
        let mut pkg = package("a");
        let options = RunOptions {
            timeout_secs: 600,
            ..RunOptions::default()
        };
        assert_eq!(options.effective_timeout_secs(&pkg), 600);
        pkg.timeout_secs = Some(30);
        assert_eq!(options.effective_timeout_secs(&pkg), 30);
    }

    #[test]
    fn tests_get_the_network_when_the_package_or_the_run_says_so() {
        let mut pkg = package("a");
        let mut options = RunOptions::default();
        assert!(!options.tests_get_network(&pkg));
        pkg.network = true;
        assert!(options.tests_get_network(&pkg));
        pkg.network = false;
        options.test_network = true;
        assert!(options.tests_get_network(&pkg));
    }

    #[test]
    fn specs_stored_before_the_network_fields_still_read() {
        let mut stored = serde_json::to_value(package("a")).expect("serialize");
        stored.as_object_mut().expect("object").remove("network");
        let read: PackageSpec = serde_json::from_value(stored).expect("old spec");
        assert!(!read.network);
        let mut stored = serde_json::to_value(RunOptions::default()).expect("serialize");
        stored.as_object_mut().expect("object").remove("test_network");
        let read: RunOptions = serde_json::from_value(stored).expect("old options");
        assert!(!read.test_network);
    }

    #[test]
    fn validate_rejects_zero_iterations_and_duplicates() {
        let mut spec = RunSpec {
            label: "x".into(),
            packages: vec![package("a"), package("b")],
            iterations: 3,
            modes: vec![Mode::Ft],
            options: RunOptions::default(),
            requirement: InterpreterRequirement::any(),
            registry: None,
            rerun_of: None,
        };
        assert_eq!(spec.validate(), Ok(()));
        assert_eq!(spec.total_jobs(), 6);
        spec.requirement.build = Some("not a build".into());
        assert!(
            matches!(spec.validate(), Err(SpecError::InvalidRequirement(e)) if e.contains("hex digits")),
            "a build from the wire is checked as a request's is"
        );
        spec.requirement.build = Some("6cb20a2".into());
        assert_eq!(spec.validate(), Ok(()));
        spec.iterations = 0;
        assert_eq!(spec.validate(), Err(SpecError::ZeroIterations));
        spec.iterations = 1;
        spec.packages.push(package("a"));
        assert_eq!(spec.validate(), Err(SpecError::DuplicatePackage("a".into())));
        spec.packages.pop();
        spec.iterations = 4_000_000_000;
        assert_eq!(spec.validate(), Err(SpecError::TooManyIterations(4_000_000_000)));
        spec.iterations = RunSpec::MAX_ITERATIONS;
        spec.packages = (0..201).map(|idx| package(&format!("p{idx}"))).collect();
        spec.modes = vec![Mode::Ft, Mode::Gil];
        assert_eq!(spec.validate(), Err(SpecError::TooManyJobs(4_020_000)));
        assert!(
            spec.validate()
                .unwrap_err()
                .to_string()
                .contains("at most 2000000 allowed")
        );
        spec.packages.truncate(2);
        spec.options.stall_threshold_secs = u64::MAX;
        assert_eq!(spec.validate(), Err(SpecError::StallThresholdTooLong(u64::MAX)));
        spec.options.stall_threshold_secs = 60;
        spec.packages[0].timeout_secs = Some(u64::MAX / 1000);
        assert_eq!(spec.validate(), Err(SpecError::TimeoutTooLong));
    }

    #[test]
    fn git_urls_and_revisions_that_would_be_options_paths_or_commands_are_refused() {
        for good in [
            "https://github.com/zopefoundation/zope.interface",
            "http://github.com/a/b.git",
            "ssh://git@example.org/a.git",
            "git://example.org/a",
        ] {
            assert_eq!(PackageSpec::check_git_url(good), Ok(()), "{good}");
        }
        for bad in [
            "-uecho",
            "--upload-pack=touch /tmp/x",
            "ext::sh -c touch% /tmp/x",
            "/etc",
            "file:///etc",
            "https://",
            "https://example.org/a b",
            "https://example.org/a\nb",
        ] {
            assert!(PackageSpec::check_git_url(bad).is_err(), "{bad:?}");
        }
        for good in ["v1.2.3", "main", "0123abcd", "release/2.x"] {
            assert_eq!(PackageSpec::check_git_rev(good), Ok(()), "{good}");
        }
        for bad in ["", "--orphan", "-b", "a b", "a\tb"] {
            assert!(PackageSpec::check_git_rev(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_that_reach_paths_commands_and_python_source_are_checked() {
        for good in ["requests", "zope.interface", "ftfix-pass", "A1", "x_y"] {
            assert_eq!(PackageSpec::check_name(good), Ok(()), "{good}");
        }
        for bad in ["", "../etc", "-rf", "a b", "a'b", "name.", "é"] {
            assert!(PackageSpec::check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["yaml", "google.protobuf", "_cffi_backend"] {
            assert_eq!(PackageSpec::check_import_name(good), Ok(()), "{good}");
        }
        for bad in ["os; os.system('id')", "a..b", "1abc", "", "a.", "__import__('os')"] {
            assert!(PackageSpec::check_import_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(PackageSpec::default_import_name("2captcha-python"), "_2captcha_python");
        for name in ["2captcha-python", "zope.interface", "A-B"] {
            assert_eq!(
                PackageSpec::check_import_name(&PackageSpec::default_import_name(name)),
                Ok(())
            );
        }
        assert_eq!(PackageSpec::check_env_key("PYTHONHASHSEED"), Ok(()));
        assert!(PackageSpec::check_env_key("A=B").is_err());
        assert!(PackageSpec::check_env_key("1X").is_err());
    }

    #[test]
    fn default_import_name_replaces_dashes() {
        assert_eq!(
            PackageSpec::default_import_name("typing-extensions"),
            "typing_extensions"
        );
        assert_eq!(PackageSpec::default_import_name("zope.interface"), "zope_interface");
    }
}
