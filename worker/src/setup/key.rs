//! The keys of what a worker keeps on disk: a fetched source ([`SourceKey`]) and a set-up venv
//! ([`VenvKey`]). A key is serialised as JSON; its SHA-256 names the kept directory, and the
//! JSON itself is stored there as `key.json`, so whoever reads a key back reads its fields.
//!
//! Kept directories from before keys were stored this way (their names hashed a `Debug`
//! string) are not recognised: the setup is made afresh beside them. They are caches, safe to
//! delete.

use std::path::Path;

use domain::{PackageSpec, Source};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::shell::sanitize;

/// The file in a kept directory that holds its key.
const KEY_FILE: &str = "key.json";

/// Bytes of the key's SHA-256 in a directory name.
const DIGEST_BYTES: usize = 8;

/// What decides a package's fetched source tree.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct SourceKey {
    pub(crate) name: String,
    pub(crate) version: Option<String>,
    pub(crate) source: Source,
}

/// What decides a package's venv: its source, the interpreter and what is installed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct VenvKey {
    pub(crate) package: SourceKey,
    /// The target interpreter's fingerprint: a venv is only valid for the build it was made
    /// with.
    pub(crate) interpreter: String,
    pub(crate) install_command: String,
    /// What the tool installs after the package, in order.
    pub(crate) setup_deps: Vec<String>,
}

/// A key stored beside what it names.
pub(crate) trait CacheKey: Serialize + DeserializeOwned + PartialEq {
    /// The package the kept directory belongs to, shown first in its name.
    fn package_name(&self) -> &str;

    /// The key as stored: the same key always gives the same bytes, as fields serialise in
    /// declaration order.
    fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a cache key serialises")
    }

    /// `<package>-<digest of the key>`, the name of the kept directory.
    fn dir_name(&self) -> String {
        let digest = hex::encode(&Sha256::digest(self.to_json())[..DIGEST_BYTES]);
        format!("{}-{digest}", sanitize(self.package_name()))
    }

    /// Stores the key in `dir`, which must exist.
    fn write_to(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::write(dir.join(KEY_FILE), self.to_json())
    }

    /// The key stored in `dir`; `None` when there is none or it cannot be read.
    fn read_from(dir: &Path) -> Option<Self> {
        let bytes = std::fs::read(dir.join(KEY_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Whether `dir` holds this key.
    fn is_stored_in(&self, dir: &Path) -> bool {
        Self::read_from(dir).is_some_and(|stored| stored == *self)
    }
}

impl SourceKey {
    /// The key of the package's source.
    pub(crate) fn of(package: &PackageSpec) -> Self {
        SourceKey {
            name: package.name.clone(),
            version: package.version.clone(),
            source: package.source.clone(),
        }
    }
}

impl CacheKey for SourceKey {
    fn package_name(&self) -> &str {
        &self.name
    }
}

impl CacheKey for VenvKey {
    fn package_name(&self) -> &str {
        &self.package.name
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use domain::package_kind::TestFramework;

    use super::*;

    fn package() -> PackageSpec {
        PackageSpec {
            name: "zope.interface".to_string(),
            version: Some("7.2".to_string()),
            source: Source::Sdist,
            install_command: "python -m pip install . pytest".to_string(),
            test_command: "python -m pytest".to_string(),
            test_framework: TestFramework::Pytest,
            import_name: "zope.interface".to_string(),
            timeout_secs: None,
            env: BTreeMap::new(),
            download_count: None,
            extension_type: None,
            network: false,
        }
    }

    fn venv_key(package: &PackageSpec) -> VenvKey {
        VenvKey {
            package: SourceKey::of(package),
            interpreter: "/py/bin/python3|3.13.5|cp313t|--disable-gil".to_string(),
            install_command: package.install_command.clone(),
            setup_deps: vec!["pytest-run-parallel".to_string()],
        }
    }

    #[test]
    fn a_package_specs_keys_round_trip_through_their_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source_key = SourceKey::of(&package());
        let venv_key = venv_key(&package());
        assert!(!source_key.is_stored_in(dir.path()), "no key file yet");
        source_key.write_to(dir.path()).expect("write the key");
        assert_eq!(SourceKey::read_from(dir.path()), Some(source_key.clone()));
        assert!(source_key.is_stored_in(dir.path()));
        venv_key.write_to(dir.path()).expect("write the key");
        assert_eq!(VenvKey::read_from(dir.path()), Some(venv_key.clone()));
        assert_eq!(
            VenvKey::read_from(dir.path()).map(|key| key.package.name),
            Some("zope.interface".to_string()),
            "the package's name is read back by field"
        );
    }

    #[test]
    fn a_key_file_of_another_shape_is_not_recognised() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join(KEY_FILE),
            "\"zope.interface\\nSome(\\\"7.2\\\")\\nSdist\"",
        )
        .expect("write");
        assert_eq!(SourceKey::read_from(dir.path()), None);
        assert!(!SourceKey::of(&package()).is_stored_in(dir.path()));
    }

    #[test]
    fn specs_differing_in_one_field_get_different_keys() {
        let base = package();
        let mut variants: Vec<(&str, PackageSpec)> = Vec::new();
        let mut other = base.clone();
        other.name = "zope.interfaces".to_string();
        variants.push(("name", other));
        let mut other = base.clone();
        other.version = Some("7.1".to_string());
        variants.push(("version", other));
        let mut other = base.clone();
        other.version = None;
        variants.push(("no version", other));
        let mut other = base.clone();
        other.source = Source::Git {
            url: "https://github.com/zopefoundation/zope.interface".to_string(),
            rev: None,
            depth: Some(1),
        };
        variants.push(("source", other));
        let mut other = base.clone();
        other.install_command = "python -m pip install -e .".to_string();
        variants.push(("install command", other));

        let base_source = SourceKey::of(&base).dir_name();
        let base_venv = venv_key(&base).dir_name();
        assert!(base_source.starts_with("zope.interface-"), "{base_source}");
        for (field, spec) in &variants {
            assert_ne!(venv_key(spec).dir_name(), base_venv, "{field}");
            if *field != "install command" {
                assert_ne!(SourceKey::of(spec).dir_name(), base_source, "{field}");
            }
        }
        assert_eq!(
            SourceKey::of(&variants[4].1).dir_name(),
            base_source,
            "the install command does not change the fetched source"
        );

        let mut other = venv_key(&base);
        other.interpreter.push_str(" --with-thread-sanitizer");
        assert_ne!(other.dir_name(), base_venv, "interpreter");
        let mut other = venv_key(&base);
        other.setup_deps.clear();
        assert_ne!(other.dir_name(), base_venv, "setup deps");
        assert_eq!(venv_key(&base).dir_name(), base_venv, "the same spec, the same key");
    }
}
