//! The package categories, with the names the results files and users know them by.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a survey concludes about one package.
///
/// The names are a compatibility surface shared with existing results files: never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Segfault, abort or other fatal signal in some iteration.
    Crash,
    /// Some iteration stalled: no output and no CPU progress.
    Deadlock,
    /// Some iterations passed, some failed.
    Intermittent,
    /// Every completed iteration failed.
    Incompatible,
    /// Passed, but ThreadSanitizer reported unsuppressed races.
    TsanWarnings,
    /// The package could not be installed.
    InstallFailure,
    /// The package installed but does not import.
    ImportFailure,
    /// Every iteration was a harness error (pytest usage or internal error, no tests
    /// collected): nothing is known about free-threading.
    HarnessError,
    /// The package could not be set up because of the workers, not the package: a network or
    /// index time-out, a full disk, a setup command killed from outside, on every attempt the
    /// run allowed. Nothing is known about the package.
    InfraError,
    /// No completed iteration to judge by.
    Unknown,
    /// Passed, but an extension module re-enabled the GIL at import.
    CompatibleGilFallback,
    /// Every iteration passed with the GIL disabled.
    Compatible,
    /// Trusted because PyPI has a free-threaded wheel for the target; not tested.
    CompatibleByWheel,
}

impl Category {
    /// Every category, in severity order (most severe first): the order of summaries.
    pub const ALL: [Category; 13] = [
        Category::Crash,
        Category::Deadlock,
        Category::Intermittent,
        Category::Incompatible,
        Category::TsanWarnings,
        Category::InstallFailure,
        Category::ImportFailure,
        Category::HarnessError,
        Category::InfraError,
        Category::Unknown,
        Category::CompatibleGilFallback,
        Category::Compatible,
        Category::CompatibleByWheel,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Compatible => "compatible",
            Category::CompatibleGilFallback => "compatible_gil_fallback",
            Category::Intermittent => "intermittent",
            Category::Incompatible => "incompatible",
            Category::Crash => "crash",
            Category::Deadlock => "deadlock",
            Category::TsanWarnings => "tsan_warnings",
            Category::InstallFailure => "install_failure",
            Category::ImportFailure => "import_failure",
            Category::HarnessError => "harness_error",
            Category::InfraError => "infra_error",
            Category::Unknown => "unknown",
            Category::CompatibleByWheel => "compatible_by_wheel",
        }
    }

    /// A one-character mark for summaries, as the old tool drew them (`!` for harness errors
    /// and a plug for infrastructure errors, which it did not have).
    pub fn glyph(self) -> &'static str {
        match self {
            Category::Compatible => "\u{2713}",
            Category::CompatibleByWheel => "\u{2295}",
            Category::CompatibleGilFallback => "\u{26a0}",
            Category::Intermittent => "~",
            Category::Incompatible => "\u{2717}",
            Category::Crash => "\u{1f4a5}",
            Category::Deadlock => "\u{1f512}",
            Category::TsanWarnings => "\u{26a1}",
            Category::InstallFailure => "\u{2699}",
            Category::ImportFailure => "\u{1f4e6}",
            Category::HarnessError => "!",
            Category::InfraError => "\u{1f50c}",
            Category::Unknown => "?",
        }
    }

    /// Whether the category says the package works without the GIL (tested or trusted).
    pub fn is_compatible(self) -> bool {
        matches!(
            self,
            Category::Compatible | Category::CompatibleGilFallback | Category::CompatibleByWheel
        )
    }

    /// Position in [`Category::ALL`]: lower is more severe.
    pub fn severity_rank(self) -> usize {
        Category::ALL
            .iter()
            .position(|c| *c == self)
            .unwrap_or(Category::ALL.len())
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Category {
    type Err = UnknownCategory;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Category::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownCategory(s.to_string()))
    }
}

/// A category name that is not one of [`Category::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown category {0:?}")]
pub struct UnknownCategory(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_results_files() {
        let names: Vec<&str> = Category::ALL.iter().map(|c| c.as_str()).collect();
        for expected in [
            "compatible",
            "compatible_gil_fallback",
            "intermittent",
            "incompatible",
            "crash",
            "deadlock",
            "tsan_warnings",
            "install_failure",
            "import_failure",
            "harness_error",
            "infra_error",
            "unknown",
            "compatible_by_wheel",
        ] {
            assert!(names.contains(&expected), "{expected} missing");
        }
    }

    #[test]
    fn serde_and_display_agree() {
        for category in Category::ALL {
            let json = serde_json::to_string(&category).unwrap();
            assert_eq!(json, format!("\"{category}\""));
            assert_eq!(category.as_str().parse::<Category>().unwrap(), category);
        }
    }
}
