//! What a target interpreter is, and what a run requires of one.

use serde::{Deserialize, Serialize};

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
}

impl InterpreterRequirement {
    /// Any interpreter that is not a ThreadSanitizer build will do.
    pub fn any() -> Self {
        InterpreterRequirement::default()
    }

    pub fn is_met_by(&self, profile: &InterpreterProfile) -> bool {
        let version_ok = self.python_version.as_deref().is_none_or(|v| v == profile.major_minor);
        version_ok && (!self.free_threaded || profile.free_threaded) && self.tsan == profile.tsan
    }

    /// Human form, e.g. `3.13t` or `3.13t-tsan`, `any` when nothing is required.
    pub fn describe(&self) -> String {
        let mut s = self.python_version.clone().unwrap_or_default();
        if self.free_threaded {
            s.push('t');
        }
        if self.tsan {
            s.push_str("-tsan");
        }
        if s.is_empty() { "any".to_string() } else { s }
    }
}

impl std::str::FromStr for InterpreterRequirement {
    type Err = String;

    /// Parses the human form: `3.13t`, `3.13t-tsan`, `3.13`, `any`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "any" {
            return Ok(InterpreterRequirement::any());
        }
        let (version, tsan) = match s.strip_suffix("-tsan") {
            Some(version) => (version, true),
            None => (s, false),
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
                "expected MAJOR.MINOR with an optional t and -tsan, such as 3.13t or 3.13t-tsan, got {s:?}"
            ));
        }
        Ok(InterpreterRequirement {
            python_version: Some(version.to_string()),
            free_threaded: free_threaded || tsan,
            tsan,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_print_back() {
        for text in ["3.13t", "3.13t-tsan", "3.14", "any"] {
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
            tsan: false,
        };
        assert!(ft_313.is_met_by(&profile("3.13", true, false)));
        assert!(
            !ft_313.is_met_by(&profile("3.13", true, true)),
            "a TSAN build is not asked for"
        );
        assert!(!ft_313.is_met_by(&profile("3.13", false, false)));
        assert!(!ft_313.is_met_by(&profile("3.14", true, false)));
        let tsan = InterpreterRequirement {
            python_version: None,
            free_threaded: true,
            tsan: true,
        };
        assert!(!tsan.is_met_by(&profile("3.13", true, false)));
        assert!(tsan.is_met_by(&profile("3.13", true, true)));
        assert!(InterpreterRequirement::any().is_met_by(&profile("3.11", false, false)));
        assert_eq!(ft_313.describe(), "3.13t");
        assert_eq!(tsan.describe(), "t-tsan");
        assert_eq!(InterpreterRequirement::any().describe(), "any");
    }
}
