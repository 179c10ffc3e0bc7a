//! What a package gets when its registry file says nothing, and what a spec sets beyond that:
//! the commands, source, import name, environment and network a registry makes workers use,
//! for an operator to read before running it.

use crate::spec::{PackageSpec, Source};

/// Install command used when a package file leaves it empty.
pub const DEFAULT_INSTALL_COMMAND: &str = "pip install . pytest";
/// Test command used when a package file leaves it empty.
pub const DEFAULT_TEST_COMMAND: &str = "python -m pytest";

/// One field of a package that differs from what it would be by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// `source`, `install`, `test`, `import`, `env` or `network`.
    pub field: &'static str,
    /// The value as the registry set it, verbatim (callers neutralise it for display).
    pub value: String,
}

/// What `package` sets beyond the defaults, in the order a worker uses it: a git URL or a
/// local path (an sdist of the package's own name on PyPI is the default), the install and
/// test commands, the import name, each env entry, and the host's network for its tests.
pub fn differences(package: &PackageSpec) -> Vec<Difference> {
    let mut found = Vec::new();
    let mut add = |field, value: String| found.push(Difference { field, value });
    match &package.source {
        Source::Sdist => {}
        Source::Git { url, rev, .. } => add(
            "source",
            match rev {
                Some(rev) => format!("git {url} at {rev}"),
                None => format!("git {url}"),
            },
        ),
        Source::Path { path } => add("source", format!("path {path}")),
    }
    if package.install_command != DEFAULT_INSTALL_COMMAND {
        add("install", package.install_command.clone());
    }
    if package.test_command != DEFAULT_TEST_COMMAND {
        add("test", package.test_command.clone());
    }
    if package.import_name != PackageSpec::default_import_name(&package.name) {
        add("import", package.import_name.clone());
    }
    for (key, value) in &package.env {
        add("env", format!("{key}={value}"));
    }
    if package.network {
        add("network", "the tests reach the host's network".to_string());
    }
    found
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::package_kind::TestFramework;

    fn defaults(name: &str) -> PackageSpec {
        PackageSpec {
            name: name.into(),
            version: Some("1.0".into()),
            source: Source::Sdist,
            install_command: DEFAULT_INSTALL_COMMAND.into(),
            test_command: DEFAULT_TEST_COMMAND.into(),
            test_framework: TestFramework::Pytest,
            import_name: PackageSpec::default_import_name(name),
            timeout_secs: Some(30),
            env: BTreeMap::new(),
            download_count: Some(7),
            extension_type: None,
            network: false,
        }
    }

    #[test]
    fn a_package_with_the_defaults_differs_in_nothing() {
        assert_eq!(differences(&defaults("zope.interface")), Vec::new());
    }

    #[test]
    fn every_command_source_import_name_env_entry_and_the_network_a_registry_sets_is_a_difference() {
        let package = PackageSpec {
            source: Source::Git {
                url: "https://example.org/x".into(),
                rev: Some("v1".into()),
                depth: Some(1),
            },
            install_command: "pip install -e .[test]".into(),
            test_command: "python -m pytest tests".into(),
            import_name: "xx".into(),
            env: BTreeMap::from([("A".into(), "1".into()), ("B".into(), "two words".into())]),
            network: true,
            ..defaults("x")
        };
        let found = differences(&package);
        let found: Vec<(&str, &str)> = found.iter().map(|d| (d.field, d.value.as_str())).collect();
        assert_eq!(
            found,
            vec![
                ("source", "git https://example.org/x at v1"),
                ("install", "pip install -e .[test]"),
                ("test", "python -m pytest tests"),
                ("import", "xx"),
                ("env", "A=1"),
                ("env", "B=two words"),
                ("network", "the tests reach the host's network"),
            ]
        );
        let path = PackageSpec {
            source: Source::Path { path: "/src/p".into() },
            ..defaults("p")
        };
        assert_eq!(
            differences(&path),
            vec![Difference {
                field: "source",
                value: "path /src/p".into()
            }]
        );
    }
}
