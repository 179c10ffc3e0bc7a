//! The closed vocabularies a registry uses to describe a package: how its tests are run
//! (`test_framework`) and what it builds (`extension_type`).
//!
//! Every value the laruche registry uses is accepted; anything else is a malformed file, so a
//! typo is reported by `registry validate` instead of silently changing how results are read.
//! Both travel in each [`crate::PackageSpec`]: the worker reads [`TestFramework`] to decide
//! how an exit code is read and whether pytest is asked for JUnit XML; [`ExtensionType`] is
//! the registry's word only, shown by `registry list`, and decides nothing.

/// How a package's test command reports its results; decides how exit codes are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TestFramework {
    /// Exit codes 2-5 are the harness's own errors; JUnit XML gives per-test results.
    Pytest,
    /// `python -m unittest`: exit 5 means no tests ran; the summary gives the counts.
    Unittest,
    Stestr,
    Django,
    Nose,
    Nose2,
    /// A project-specific runner: only the exit status is read.
    Custom,
    Other,
    Unknown,
    /// The registry says the package has no test suite.
    None,
}

impl TestFramework {
    /// Every value, in the order error messages list them.
    pub const ALL: [TestFramework; 10] = [
        TestFramework::Pytest,
        TestFramework::Unittest,
        TestFramework::Stestr,
        TestFramework::Django,
        TestFramework::Nose,
        TestFramework::Nose2,
        TestFramework::Custom,
        TestFramework::Other,
        TestFramework::Unknown,
        TestFramework::None,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TestFramework::Pytest => "pytest",
            TestFramework::Unittest => "unittest",
            TestFramework::Stestr => "stestr",
            TestFramework::Django => "django",
            TestFramework::Nose => "nose",
            TestFramework::Nose2 => "nose2",
            TestFramework::Custom => "custom",
            TestFramework::Other => "other",
            TestFramework::Unknown => "unknown",
            TestFramework::None => "none",
        }
    }
}

/// What a package builds, as the registry records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExtensionType {
    Pure,
    /// Extension modules of an unrecorded language.
    Extensions,
    CExtension,
    CppExtension,
    Rust,
    Unknown,
}

impl ExtensionType {
    /// Every value, in the order error messages list them.
    pub const ALL: [ExtensionType; 6] = [
        ExtensionType::Pure,
        ExtensionType::Extensions,
        ExtensionType::CExtension,
        ExtensionType::CppExtension,
        ExtensionType::Rust,
        ExtensionType::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExtensionType::Pure => "pure",
            ExtensionType::Extensions => "extensions",
            ExtensionType::CExtension => "c_extension",
            ExtensionType::CppExtension => "cpp_extension",
            ExtensionType::Rust => "rust",
            ExtensionType::Unknown => "unknown",
        }
    }
}

/// Display, parsing and serde for a closed vocabulary: a type with `as_str` and `ALL`, written
/// and read by its names. `$what` names the field in the error of an unknown value.
macro_rules! string_enum {
    ($type:ident, $what:literal) => {
        impl std::fmt::Display for $type {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $type {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let s = s.trim();
                $type::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| {
                    let expected: Vec<&str> = $type::ALL.iter().map(|v| v.as_str()).collect();
                    format!(
                        concat!("unknown ", $what, " {:?}: expected one of {}"),
                        s,
                        expected.join(", ")
                    )
                })
            }
        }

        impl serde::Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

pub(crate) use string_enum;

string_enum!(TestFramework, "test_framework");
string_enum!(ExtensionType, "extension_type");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_of_the_laruche_data_parses_and_prints_back() {
        for text in [
            "pytest", "unittest", "custom", "unknown", "stestr", "django", "other", "nose2", "nose", "none",
        ] {
            assert_eq!(text.parse::<TestFramework>().expect(text).as_str(), text);
        }
        for text in ["pure", "extensions", "unknown", "c_extension", "rust", "cpp_extension"] {
            assert_eq!(text.parse::<ExtensionType>().expect(text).to_string(), text);
        }
    }

    #[test]
    fn other_values_are_errors_listing_the_accepted_ones() {
        let error = "pytets".parse::<TestFramework>().expect_err("typo");
        assert!(
            error.starts_with("unknown test_framework \"pytets\": expected one of pytest, unittest"),
            "{error}"
        );
        let error = "fortran".parse::<ExtensionType>().expect_err("unknown");
        assert!(error.ends_with("rust, unknown"), "{error}");
    }
}
