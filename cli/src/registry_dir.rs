//! Reads a registry directory: `index.yaml` plus one `packages/<name>.yaml` per package.
//!
//! A missing directory or unreadable index stops the run; a bad package file is a warning and
//! that package is left out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use domain::registry::{PackageEntry, RegistryIndex, parse_index, parse_package};

/// A registry as read from disk.
#[derive(Debug)]
pub struct LoadedRegistry {
    /// Absolute, canonical path of the registry directory.
    pub dir: PathBuf,
    pub index: RegistryIndex,
    /// Package files that parsed, by package name.
    pub entries: BTreeMap<String, PackageEntry>,
    /// One line per file that could not be used.
    pub warnings: Vec<String>,
}

/// Loads the registry in `dir`.
pub fn load_registry(dir: &Path) -> anyhow::Result<LoadedRegistry> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("registry dir {} not found", dir.display()))?;
    anyhow::ensure!(dir.is_dir(), "registry dir {} is not a directory", dir.display());
    let index_path = dir.join("index.yaml");
    let index_text = std::fs::read_to_string(&index_path)
        .with_context(|| format!("cannot read the registry index {}", index_path.display()))?;
    let index = parse_index(&index_path.display().to_string(), &index_text)?;
    let mut entries = BTreeMap::new();
    let mut warnings = Vec::new();
    for index_entry in &index.packages {
        let path = dir.join("packages").join(format!("{}.yaml", index_entry.name));
        let label = format!("packages/{}.yaml", index_entry.name);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) => {
                warnings.push(format!("{label}: cannot read: {error}"));
                continue;
            }
        };
        match parse_package(&label, &text) {
            Ok(entry) if entry.package != index_entry.name => warnings.push(format!(
                "{label}: names package {:?}, but the index lists it as {:?}",
                entry.package, index_entry.name
            )),
            Ok(entry) => {
                entries.insert(entry.package.clone(), entry);
            }
            Err(error) => warnings.push(error.to_string()),
        }
    }
    Ok(LoadedRegistry {
        dir,
        index,
        entries,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    #[test]
    fn a_malformed_package_file_is_a_warning_and_the_rest_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "index.yaml",
            "packages:\n- name: good\n  enriched: true\n- name: bad\n  enriched: true\n- name: missing\n  enriched: true\n",
        );
        write(
            dir.path(),
            "packages/good.yaml",
            "package: good\nrepo: https://example.org/good\nenriched: true\n",
        );
        write(dir.path(), "packages/bad.yaml", "package: bad\ntimeout: [1, 2\n");
        let registry = load_registry(dir.path()).expect("loads");
        assert_eq!(registry.entries.keys().collect::<Vec<_>>(), vec!["good"]);
        assert_eq!(registry.warnings.len(), 2, "{:?}", registry.warnings);
        assert!(
            registry.warnings[0].starts_with("packages/bad.yaml: "),
            "{}",
            registry.warnings[0]
        );
        assert!(
            registry.warnings[1].starts_with("packages/missing.yaml: cannot read"),
            "{}",
            registry.warnings[1]
        );
    }

    #[test]
    fn a_missing_directory_or_index_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope");
        let error = format!("{:#}", load_registry(&missing).expect_err("missing dir"));
        assert!(error.contains("registry dir") && error.contains("nope"), "{error}");
        let error = format!("{:#}", load_registry(dir.path()).expect_err("no index"));
        assert!(error.contains("index.yaml"), "{error}");
    }
}
