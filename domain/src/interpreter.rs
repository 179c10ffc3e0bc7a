//! What a target interpreter is, and what a run requires of one.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Facts about a target interpreter, as probed by a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterpreterProfile {
    /// The path it was probed at.
    pub executable: String,
    /// `sys.version`, in full.
    pub version: String,
    /// `major.minor.micro`.
    pub version_short: String,
    /// `major.minor`, what requirements match against.
    pub major_minor: String,
    /// e.g. `cp313t`.
    pub abi_tag: String,
    /// Built with `Py_GIL_DISABLED` (a free-threaded build).
    pub free_threaded: bool,
    /// `sys._is_gil_enabled()` at start-up with `PYTHON_GIL` unset; `None` before 3.13.
    pub gil_enabled_by_default: Option<bool>,
    /// Built with `--with-thread-sanitizer`.
    pub tsan: bool,
    /// Built with `--with-pydebug`.
    pub debug: bool,
    /// `sysconfig.get_platform()`.
    pub platform: String,
    /// The interpreter's own `CONFIG_ARGS`.
    pub configure_args: String,
}

impl InterpreterProfile {
    /// A short fingerprint that changes when the build changes; used to key venvs.
    pub fn fingerprint_source(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.executable, self.version, self.abi_tag, self.configure_args
        )
    }

    /// The build's id: 12 hex digits of a hash of what tells one build from another (the full
    /// `sys.version`, which holds the commit and the build's date and compiler, the ABI tag, the
    /// configure arguments, the platform), and not of where it is installed: the same build on
    /// two workers has one id, and a rebuild of the same version another.
    pub fn build_id(&self) -> String {
        let digest = Sha256::digest(
            format!(
                "{}|{}|{}|{}",
                self.version, self.abi_tag, self.configure_args, self.platform
            )
            .as_bytes(),
        );
        let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
        hex[..BUILD_ID_LEN].to_string()
    }

    /// The commit the interpreter was built from, as `sys.version` names it
    /// (`3.13.5 (tags/v3.13.5:6cb20a2, Jun 11 2025, ...)`); `None` for a build from a tarball,
    /// which names only a branch.
    pub fn commit(&self) -> Option<&str> {
        let (_, inside) = self.version.split_once('(')?;
        let (id, _) = inside.split_once(',')?;
        let (_, commit) = id.split_once(':')?;
        let commit = commit.trim();
        (commit.len() >= MIN_BUILD_LEN && commit.chars().all(|c| c.is_ascii_hexdigit())).then_some(commit)
    }

    /// Whether `build` names this build: its [`InterpreterProfile::build_id`], or its commit
    /// (either a prefix of the other, each [`MIN_BUILD_LEN`] characters at least).
    pub fn is_build(&self, build: &str) -> bool {
        let build = build.to_ascii_lowercase();
        build == self.build_id()
            || self.commit().is_some_and(|commit| {
                let commit = commit.to_ascii_lowercase();
                build.len() >= MIN_BUILD_LEN && (commit.starts_with(&build) || build.starts_with(&commit))
            })
    }

    /// The build in one word, for records and for `show`: its version and traits as a request
    /// writes them, and its id, e.g. `3.13.5t-debug@1a2b3c4d5e6f`.
    pub fn build_label(&self) -> String {
        let mut label = self.version_short.clone();
        if self.free_threaded {
            label.push('t');
        }
        if self.tsan {
            label.push_str("-tsan");
        }
        if self.debug {
            label.push_str("-debug");
        }
        format!("{label}@{}", self.build_id())
    }

    /// One line for humans: `CPython 3.13.5 (cp313t, free-threaded, tsan)`.
    pub fn summary(&self) -> String {
        let mut traits = vec![self.abi_tag.clone()];
        traits.push(if self.free_threaded {
            "free-threaded".into()
        } else {
            "with GIL".into()
        });
        if self.tsan {
            traits.push("tsan".into());
        }
        if self.debug {
            traits.push("debug".into());
        }
        format!("CPython {} ({})", self.version_short, traits.join(", "))
    }
}

/// Hex digits in [`InterpreterProfile::build_id`].
pub const BUILD_ID_LEN: usize = 12;
/// The shortest build a requirement may name: a commit's short form.
pub const MIN_BUILD_LEN: usize = 7;
/// The longest: a full SHA-256 commit.
pub const MAX_BUILD_LEN: usize = 64;

/// What a run needs of the interpreter a worker runs its jobs on.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct InterpreterRequirement {
    /// `major.minor` the worker's interpreter must have, if any.
    pub python_version: Option<String>,
    /// The interpreter must be a free-threaded build.
    pub free_threaded: bool,
    /// The interpreter must be a ThreadSanitizer build when set, and must not be one when
    /// not: a TSAN build runs several times slower, reports races a plain build cannot, and
    /// its timings mean something else, so a run gets the one it asked for.
    pub tsan: bool,
    /// `Some(true)`: a debug build (`--with-pydebug`) only; `Some(false)`: no debug build;
    /// `None`: either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug: Option<bool>,
    /// The one build the interpreter must be, by its [`InterpreterProfile::build_id`] or its
    /// commit ([`InterpreterProfile::is_build`]); `None`: any build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
}

impl InterpreterRequirement {
    /// Any interpreter that is not a ThreadSanitizer build will do.
    pub fn any() -> Self {
        InterpreterRequirement::default()
    }

    /// Whether a worker with `profile` may run the jobs; the stores' claims ask the same.
    pub fn is_met_by(&self, profile: &InterpreterProfile) -> bool {
        let version_ok = self.python_version.as_deref().is_none_or(|v| v == profile.major_minor);
        version_ok
            && (!self.free_threaded || profile.free_threaded)
            && self.tsan == profile.tsan
            && self.debug.is_none_or(|debug| debug == profile.debug)
            && self.build.as_deref().is_none_or(|build| profile.is_build(build))
    }

    /// Human form, e.g. `3.13t`, `3.13t-tsan-debug` or `3.13t@1a2b3c4d5e6f`, `any` when nothing
    /// is required.
    pub fn describe(&self) -> String {
        let mut s = self.python_version.clone().unwrap_or_default();
        if self.free_threaded {
            s.push('t');
        }
        if self.tsan {
            s.push_str("-tsan");
        }
        match self.debug {
            Some(true) => s.push_str("-debug"),
            Some(false) => s.push_str("-release"),
            None => {}
        }
        if s.is_empty() {
            s.push_str("any");
        }
        if let Some(build) = &self.build {
            s.push('@');
            s.push_str(build);
        }
        s
    }

    /// Checks a build a requirement names: 7 to 64 hex digits, a build id or a commit.
    pub fn check_build(build: &str) -> Result<(), String> {
        if !(MIN_BUILD_LEN..=MAX_BUILD_LEN).contains(&build.len()) || !build.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!(
                "a build is a build id or a commit, {MIN_BUILD_LEN} to {MAX_BUILD_LEN} hex digits, got {build:?}"
            ));
        }
        Ok(())
    }
}

impl std::str::FromStr for InterpreterRequirement {
    type Err = String;

    /// Parses the human form, `VERSION[t][-tsan][-debug|-release][@BUILD]` or `any[@BUILD]`:
    /// `3.13t`, `3.13t-tsan`, `3.13`, `3.13t-debug`, `3.13t@1a2b3c4d5e6f`, `any`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (rest, build) = match s.split_once('@') {
            Some((rest, build)) => {
                let build = build.to_ascii_lowercase();
                InterpreterRequirement::check_build(&build)?;
                (rest, Some(build))
            }
            None => (s, None),
        };
        if rest == "any" {
            return Ok(InterpreterRequirement {
                build,
                ..InterpreterRequirement::any()
            });
        }
        let (rest, debug) = if let Some(rest) = rest.strip_suffix("-debug") {
            (rest, Some(true))
        } else if let Some(rest) = rest.strip_suffix("-release") {
            (rest, Some(false))
        } else {
            (rest, None)
        };
        let (version, tsan) = match rest.strip_suffix("-tsan") {
            Some(version) => (version, true),
            None => (rest, false),
        };
        let (version, free_threaded) = match version.strip_suffix('t') {
            Some(version) => (version, true),
            None => (version, false),
        };
        let valid = version
            .split_once('.')
            .is_some_and(|(major, minor)| major.parse::<u32>().is_ok() && minor.parse::<u32>().is_ok());
        if !valid {
            return Err(format!(
                "expected MAJOR.MINOR with an optional t, -tsan, -debug or -release and @BUILD, such as 3.13t, \
                 3.13t-tsan or 3.13t-debug@1a2b3c4d5e6f, got {s:?}"
            ));
        }
        Ok(InterpreterRequirement {
            python_version: Some(version.to_string()),
            free_threaded: free_threaded || tsan,
            tsan,
            debug,
            build,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_print_back() {
        for text in [
            "3.13t",
            "3.13t-tsan",
            "3.14",
            "any",
            "3.13t-debug",
            "3.13t-tsan-release",
            "3.13t@1a2b3c4d5e6f",
            "3.13-debug@6cb20a2",
            "any@6cb20a2",
        ] {
            let requirement: InterpreterRequirement = text.parse().expect(text);
            assert_eq!(requirement.describe(), text);
        }
        assert!("python3".parse::<InterpreterRequirement>().is_err());
        assert!("/usr/bin/python3".parse::<InterpreterRequirement>().is_err());
    }

    fn profile(major_minor: &str, free_threaded: bool, tsan: bool) -> InterpreterProfile {
        InterpreterProfile {
            executable: "/x/python".into(),
            version: format!("{major_minor}.0"),
            version_short: format!("{major_minor}.0"),
            major_minor: major_minor.into(),
            abi_tag: "cp313t".into(),
            free_threaded,
            gil_enabled_by_default: Some(!free_threaded),
            tsan,
            debug: false,
            platform: "linux-x86_64".into(),
            configure_args: String::new(),
        }
    }

    #[test]
    fn requirement_matches_version_free_threading_and_tsan() {
        let ft_313 = InterpreterRequirement {
            python_version: Some("3.13".into()),
            free_threaded: true,
            ..InterpreterRequirement::any()
        };
        assert!(ft_313.is_met_by(&profile("3.13", true, false)));
        assert!(
            !ft_313.is_met_by(&profile("3.13", true, true)),
            "a TSAN build is not asked for"
        );
        assert!(!ft_313.is_met_by(&profile("3.13", false, false)));
        assert!(!ft_313.is_met_by(&profile("3.14", true, false)));
        let tsan = InterpreterRequirement {
            free_threaded: true,
            tsan: true,
            ..InterpreterRequirement::any()
        };
        assert!(!tsan.is_met_by(&profile("3.13", true, false)));
        assert!(tsan.is_met_by(&profile("3.13", true, true)));
        assert!(InterpreterRequirement::any().is_met_by(&profile("3.11", false, false)));
        assert_eq!(ft_313.describe(), "3.13t");
        assert_eq!(tsan.describe(), "t-tsan");
        assert_eq!(InterpreterRequirement::any().describe(), "any");
    }

    #[test]
    fn requests_name_debug_builds_and_builds_and_refuse_what_is_not_one() {
        let debug: InterpreterRequirement = "3.13t-tsan-debug".parse().expect("debug");
        assert_eq!((debug.tsan, debug.debug, debug.free_threaded), (true, Some(true), true));
        let release: InterpreterRequirement = "3.13t-release".parse().expect("release");
        assert_eq!(release.debug, Some(false));
        assert_eq!("3.13t".parse::<InterpreterRequirement>().expect("plain").debug, None);
        let pinned: InterpreterRequirement = "3.13t@6CB20A2".parse().expect("pinned");
        assert_eq!(
            pinned.build.as_deref(),
            Some("6cb20a2"),
            "builds are kept in lower case"
        );
        for bad in ["3.13t@", "3.13t@abc", "3.13t@not-hex!", "3.13t-debug-tsan", "@6cb20a2"] {
            let error = bad.parse::<InterpreterRequirement>().expect_err(bad);
            assert!(!error.contains('\n') && error.contains("got"), "{bad}: {error}");
        }
        let long = format!("3.13t@{}", "a".repeat(65));
        assert!(long.parse::<InterpreterRequirement>().is_err());
    }

    #[test]
    fn requirement_matches_debug_builds_and_build_ids_and_commits() {
        let plain = profile("3.13", true, false);
        let debug_build = InterpreterProfile {
            debug: true,
            ..plain.clone()
        };
        let debug: InterpreterRequirement = "3.13t-debug".parse().expect("debug");
        assert!(debug.is_met_by(&debug_build));
        assert!(!debug.is_met_by(&plain), "a debug build is asked for");
        let release: InterpreterRequirement = "3.13t-release".parse().expect("release");
        assert!(release.is_met_by(&plain) && !release.is_met_by(&debug_build));
        let either: InterpreterRequirement = "3.13t".parse().expect("either");
        assert!(either.is_met_by(&plain) && either.is_met_by(&debug_build));

        let pinned: InterpreterRequirement = format!("3.13t@{}", plain.build_id()).parse().expect("pinned");
        assert!(pinned.is_met_by(&plain));
        let rebuilt = InterpreterProfile {
            version: "3.13.0 (main, Jan  2 2026, 10:00:00) [GCC 12.2.0]".into(),
            ..plain.clone()
        };
        assert_ne!(rebuilt.build_id(), plain.build_id(), "a rebuild is another build");
        assert!(!pinned.is_met_by(&rebuilt));
        let elsewhere = InterpreterProfile {
            executable: "/elsewhere/bin/python3".into(),
            ..plain.clone()
        };
        assert_eq!(
            elsewhere.build_id(),
            plain.build_id(),
            "where a build lies is not what it is"
        );

        let from_git = InterpreterProfile {
            version: "3.13.5 (tags/v3.13.5:6cb20a2e1f, Jun 11 2025, 16:15:46) [GCC 13.3.0]".into(),
            ..plain.clone()
        };
        assert_eq!(from_git.commit(), Some("6cb20a2e1f"));
        assert_eq!(plain.commit(), None, "a tarball's build names no commit");
        for build in ["6cb20a2", "6cb20a2e1f", "6cb20a2e1f0123456789abcdef0123456789abcd"] {
            let by_commit: InterpreterRequirement = format!("3.13t@{build}").parse().expect(build);
            assert!(by_commit.is_met_by(&from_git), "{build}");
        }
        let other: InterpreterRequirement = "3.13t@6cb20a3".parse().expect("other");
        assert!(!other.is_met_by(&from_git));
        assert_eq!(from_git.build_label(), format!("3.13.0t@{}", from_git.build_id()));
        assert_eq!(
            debug_build.build_label(),
            format!("3.13.0t-debug@{}", debug_build.build_id())
        );
    }
}
