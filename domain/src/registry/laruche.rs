//! Reading the laruche registry format: `index.yaml` and `packages/<name>.yaml`, and choosing
//! which packages a run tests.
//!
//! Parsing takes file contents; the caller reads the files. Unknown fields are ignored so a
//! newer registry still loads; a malformed file is an error naming that file only.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::package_defaults::{DEFAULT_INSTALL_COMMAND, DEFAULT_TEST_COMMAND};
use crate::package_kind::{ExtensionType, TestFramework};
use crate::registry::env::{AllowedEnv, check_registry_env_key};
use crate::spec::{PackageSpec, Source};

/// Commits fetched of a git source whose file sets no `clone_depth`: the tested tree only.
pub const DEFAULT_CLONE_DEPTH: u32 = 1;

/// `index.yaml`: every package in popularity order.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RegistryIndex {
    #[serde(default)]
    pub last_updated: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub packages: Vec<IndexEntry>,
}

/// One package in the index.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct IndexEntry {
    pub name: String,
    #[serde(default)]
    pub download_count: Option<u64>,
    #[serde(default)]
    pub extension_type: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub enriched: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub skip: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub skip_versions_keys: Vec<String>,
    /// This tool's extension: the package's rank among PyPI's most downloaded, when the
    /// index is a selection of them (without it, the position in the index is the rank).
    #[serde(default)]
    pub download_rank: Option<u32>,
}

/// `packages/<name>.yaml`: how to get, install and test one package.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PackageEntry {
    pub package: String,
    #[serde(default)]
    pub repo: Option<String>,
    #[serde(default)]
    pub pypi_url: Option<String>,
    #[serde(default)]
    pub extension_type: Option<ExtensionType>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub python_versions: Vec<String>,
    #[serde(default)]
    pub install_method: Option<String>,
    #[serde(default)]
    pub install_command: Option<String>,
    #[serde(default)]
    pub test_command: Option<String>,
    #[serde(default)]
    pub test_framework: Option<TestFramework>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub uses_xdist: bool,
    /// Seconds per iteration, overriding the run's `--timeout`.
    #[serde(default)]
    pub timeout: Option<u64>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub skip: bool,
    #[serde(default)]
    pub skip_reason: Option<String>,
    /// `major.minor` -> why the package is skipped on that version.
    #[serde(default, deserialize_with = "null_as_default")]
    pub skip_versions: BTreeMap<String, String>,
    #[serde(default)]
    pub notes: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub enriched: bool,
    /// Commits to fetch of a git source ([`DEFAULT_CLONE_DEPTH`] when unset, everything when 0).
    #[serde(default)]
    pub clone_depth: Option<u32>,
    #[serde(default)]
    pub import_name: Option<String>,
    /// This tool's extension: `sdist`, `git` or `path`. Absent: `repo` means git.
    #[serde(default)]
    pub source: Option<String>,
    /// This tool's extension: the version to test (sdist).
    #[serde(default)]
    pub version: Option<String>,
    /// This tool's extension: the source directory for `source: path`, absolute or relative
    /// to the registry directory.
    #[serde(default)]
    pub path: Option<String>,
    /// This tool's extension: environment for the package's commands.
    #[serde(default, deserialize_with = "null_as_default")]
    pub env: BTreeMap<String, String>,
    /// This tool's extension: the package's tests need the host's network (false when unset).
    #[serde(default, deserialize_with = "null_as_default")]
    pub network: bool,
}

/// A registry file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("{file}: {reason}")]
    Malformed { file: String, reason: String },
    /// The file sets an environment variable that changes what runs instead of what is
    /// tested (see [`crate::registry::env`]).
    #[error("{file}: env key {key:?} is refused: {why}")]
    RefusedEnv {
        file: String,
        key: String,
        why: &'static str,
        /// Whether the operator may allow it by name.
        allowable: bool,
    },
}

fn malformed(file: &str, reason: impl Into<String>) -> RegistryError {
    RegistryError::Malformed {
        file: file.to_string(),
        reason: reason.into(),
    }
}

/// Parses `index.yaml`; `file` names it in errors.
pub fn parse_index(file: &str, text: &str) -> Result<RegistryIndex, RegistryError> {
    let index: RegistryIndex = serde_saphyr::from_str(text).map_err(|e| malformed(file, one_line(&e.to_string())))?;
    if let Some(entry) = index.packages.iter().find(|e| e.name.trim().is_empty()) {
        return Err(malformed(
            file,
            format!(
                "an index entry has an empty name (download_count {:?})",
                entry.download_count
            ),
        ));
    }
    Ok(index)
}

/// Parses one package file; `file` names it in errors. An `env` key that hijacks what runs is
/// refused unless `allowed_env` names it.
pub fn parse_package(file: &str, text: &str, allowed_env: &AllowedEnv) -> Result<PackageEntry, RegistryError> {
    let entry: PackageEntry = serde_saphyr::from_str(text).map_err(|e| malformed(file, one_line(&e.to_string())))?;
    if entry.package.trim().is_empty() {
        return Err(malformed(file, "field package is empty"));
    }
    PackageSpec::check_name(&entry.package).map_err(|reason| malformed(file, reason))?;
    if let Some(import_name) = entry.import_name.as_deref().filter(|n| !n.trim().is_empty()) {
        PackageSpec::check_import_name(import_name.trim()).map_err(|reason| malformed(file, reason))?;
    }
    for key in entry.env.keys() {
        PackageSpec::check_env_key(key).map_err(|reason| malformed(file, reason))?;
        if let Some(refusal) = check_registry_env_key(key, allowed_env) {
            return Err(RegistryError::RefusedEnv {
                file: file.to_string(),
                key: key.clone(),
                why: refusal.why,
                allowable: refusal.allowable,
            });
        }
    }
    Ok(entry)
}

impl PackageEntry {
    /// The spec a worker needs, with defaults filled in. `registry_dir` anchors relative paths;
    /// `index` contributes popularity and extension type.
    pub fn to_spec(&self, registry_dir: &Path, index: Option<&IndexEntry>) -> Result<PackageSpec, RegistryError> {
        let file = format!("packages/{}.yaml", self.package);
        let source = match self.source.as_deref().map(str::trim) {
            Some("path") => {
                let path = self.path.as_deref().filter(|p| !p.trim().is_empty());
                let path = path.ok_or_else(|| malformed(&file, "source: path needs a path field"))?;
                Source::Path {
                    path: registry_dir.join(path).display().to_string(),
                }
            }
            Some("sdist") => Source::Sdist,
            Some("git") | None => {
                let url = self.repo.as_deref().filter(|r| !r.trim().is_empty());
                let url = url.ok_or_else(|| malformed(&file, "no source: set repo, or source: sdist or path"))?;
                PackageSpec::check_git_url(url).map_err(|reason| malformed(&file, reason))?;
                Source::Git {
                    url: url.to_string(),
                    rev: None,
                    depth: match self.clone_depth {
                        None => Some(DEFAULT_CLONE_DEPTH),
                        Some(0) => None,
                        Some(depth) => Some(depth),
                    },
                }
            }
            Some(other) => {
                return Err(malformed(
                    &file,
                    format!("unknown source {other:?}: expected sdist, git or path"),
                ));
            }
        };
        let non_empty = |value: &Option<String>| {
            value
                .as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(String::from)
        };
        Ok(PackageSpec {
            name: self.package.clone(),
            version: non_empty(&self.version),
            source,
            install_command: non_empty(&self.install_command).unwrap_or_else(|| DEFAULT_INSTALL_COMMAND.to_string()),
            test_command: non_empty(&self.test_command).unwrap_or_else(|| DEFAULT_TEST_COMMAND.to_string()),
            test_framework: self.test_framework.unwrap_or(TestFramework::Pytest),
            import_name: non_empty(&self.import_name)
                .unwrap_or_else(|| PackageSpec::default_import_name(&self.package)),
            timeout_secs: self.timeout.filter(|t| *t > 0),
            env: self.env.clone(),
            download_count: index.and_then(|i| i.download_count),
            extension_type: self.extension_type.or_else(|| {
                index
                    .and_then(|i| i.extension_type.as_deref())
                    .and_then(|t| t.parse().ok())
            }),
            network: self.network,
        })
    }

    /// Why this package is not tested on `python_version`, if it is not.
    pub fn exclusion(&self, python_version: Option<&str>) -> Option<String> {
        if !self.enriched {
            return Some("not enriched (no verified install and test commands)".to_string());
        }
        if self.skip {
            return Some(match self.skip_reason.as_deref() {
                Some(reason) if !reason.trim().is_empty() => format!("skipped: {}", reason.trim()),
                _ => "skipped".to_string(),
            });
        }
        let version = python_version?;
        self.skip_versions
            .get(version)
            .map(|reason| format!("skipped on {version}: {}", reason.trim()))
    }
}

/// Which packages a run asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Exact names (`--packages`); `None` means every selectable package.
    pub packages: Option<Vec<String>>,
    /// The first N selectable packages in index order (`--top`).
    pub top: Option<usize>,
    /// The target's `major.minor`, for `skip_versions`.
    pub python_version: Option<String>,
}

/// The packages chosen, and those asked for by name but not testable.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selected {
    pub specs: Vec<PackageSpec>,
    /// (name, reason) for named packages left out.
    pub excluded: Vec<(String, String)>,
}

/// A selection that cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectionError {
    #[error("unknown package{}: {}", if .0.len() == 1 { "" } else { "s" }, .0.join(", "))]
    UnknownPackages(Vec<String>),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Chooses packages in index (popularity) order. `entries` holds the package files that
/// parsed; a package listed in the index without a usable file is not selectable.
pub fn select(
    index: &RegistryIndex,
    entries: &BTreeMap<String, PackageEntry>,
    registry_dir: &Path,
    selection: &Selection,
) -> Result<Selected, SelectionError> {
    let python_version = selection.python_version.as_deref();
    let mut selected = Selected::default();
    let index_by_name: BTreeMap<&str, &IndexEntry> = index.packages.iter().map(|e| (e.name.as_str(), e)).collect();
    match &selection.packages {
        Some(names) => {
            let unknown: Vec<String> = names
                .iter()
                .filter(|n| !entries.contains_key(n.as_str()))
                .cloned()
                .collect();
            if !unknown.is_empty() {
                return Err(SelectionError::UnknownPackages(unknown));
            }
            // Named packages keep index order, then the order given for any not in the index.
            let mut ordered: Vec<&String> = names.iter().collect();
            ordered.sort_by_key(|n| index.packages.iter().position(|e| &e.name == *n).unwrap_or(usize::MAX));
            ordered.dedup();
            for name in ordered {
                let entry = &entries[name.as_str()];
                match entry.exclusion(python_version) {
                    Some(reason) => selected.excluded.push((name.clone(), reason)),
                    None => selected
                        .specs
                        .push(entry.to_spec(registry_dir, index_by_name.get(name.as_str()).copied())?),
                }
            }
        }
        None => {
            for listed in list_packages(index, entries, registry_dir, python_version) {
                if let Ok(spec) = listed.status {
                    selected.specs.push(spec);
                }
            }
        }
    }
    if let Some(top) = selection.top {
        selected.specs.truncate(top);
    }
    Ok(selected)
}

/// One package of the index as a listing shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed<'a> {
    /// The package's download rank: the index's `download_rank`, else its position (from 1).
    pub rank: u32,
    pub index_entry: &'a IndexEntry,
    /// The spec a run would use, or why the package is not selectable.
    pub status: Result<PackageSpec, String>,
}

/// Every package of the index in popularity order, each with its spec or the reason it is not
/// selectable on `python_version` (`major.minor`, for `skip_versions`).
pub fn list_packages<'a>(
    index: &'a RegistryIndex,
    entries: &BTreeMap<String, PackageEntry>,
    registry_dir: &Path,
    python_version: Option<&str>,
) -> Vec<Listed<'a>> {
    index
        .packages
        .iter()
        .enumerate()
        .map(|(position, index_entry)| {
            let status = if index_entry.skip {
                Err("skipped in the index".to_string())
            } else if !index_entry.enriched {
                Err("not enriched in the index".to_string())
            } else {
                match entries.get(&index_entry.name) {
                    None => Err("no usable package file".to_string()),
                    Some(entry) => match entry.exclusion(python_version) {
                        Some(reason) => Err(reason),
                        None => entry
                            .to_spec(registry_dir, Some(index_entry))
                            .map_err(|e| e.to_string()),
                    },
                }
            };
            Listed {
                rank: index_entry.download_rank.unwrap_or(position as u32 + 1),
                index_entry,
                status,
            }
        })
        .collect()
}

/// Reads `null` as the type's default, as the registry writes empty lists and maps either way.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// The first line of a parser's message, without its source excerpt.
fn one_line(message: &str) -> String {
    let first = message
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("invalid yaml");
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = "last_updated: '2026-03-07T00:03:32'
packages:
- name: alpha
  download_count: 300
  extension_type: pure
  enriched: true
  skip: false
  skip_versions_keys: []
- name: beta
  download_count: 200
  extension_type: c_extension
  enriched: true
  skip: true
  skip_versions_keys: []
- name: gamma
  download_count: 100
  enriched: false
  skip: false
- name: delta
  download_count: 50
  enriched: true
  skip: false
  skip_versions_keys: ['3.13']
- name: epsilon
  download_count: 10
  enriched: true
";

    fn package(name: &str, extra: &str) -> PackageEntry {
        let base = [
            format!("package: {name}"),
            format!("repo: https://example.org/{name}"),
            "extension_type: pure".into(),
            "install_command: ''".into(),
            "test_command: ''".into(),
            "test_framework: pytest".into(),
            "timeout: null".into(),
            "skip: false".into(),
            "enriched: true".into(),
            "clone_depth: null".into(),
            "import_name: null".into(),
        ];
        let overridden = |line: &String| extra.lines().any(|e| e.split(':').next() == line.split(':').next());
        let mut text: String = base
            .iter()
            .filter(|l| !overridden(l))
            .map(|l| format!("{l}\n"))
            .collect();
        text.push_str(extra);
        parse_package(&format!("packages/{name}.yaml"), &text, &AllowedEnv::default()).expect("package parses")
    }

    #[test]
    fn a_repo_that_is_no_git_url_is_refused_naming_the_file() {
        let dir = Path::new("/registry");
        for repo in ["-uecho", "'ext::sh -c touch% /tmp/x'", "/etc/passwd"] {
            let mut entry = package("evil", "");
            entry.repo = Some(repo.trim_matches('\'').to_string());
            let error = entry.to_spec(dir, None).expect_err(repo).to_string();
            assert!(
                error.contains("packages/evil.yaml") && error.contains("git URL"),
                "{error}"
            );
        }
        assert!(package("fine", "").to_spec(dir, None).is_ok());
    }

    fn registry() -> (RegistryIndex, BTreeMap<String, PackageEntry>) {
        let index = parse_index("index.yaml", INDEX).expect("index parses");
        let mut entries = BTreeMap::new();
        entries.insert("alpha".into(), package("alpha", ""));
        entries.insert("beta".into(), package("beta", "skip: true\nskip_reason: needs a GPU\n"));
        entries.insert("gamma".into(), package("gamma", "enriched: false\n"));
        entries.insert(
            "delta".into(),
            package("delta", "skip_versions:\n  '3.13': broken on 3.13\n"),
        );
        entries.insert("epsilon".into(), package("epsilon", "source: sdist\nversion: '1.2'\n"));
        (index, entries)
    }

    fn names(selected: &Selected) -> Vec<&str> {
        selected.specs.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn index_and_package_files_parse_with_nulls_and_unknown_fields() {
        let index = parse_index("index.yaml", INDEX).expect("index");
        assert_eq!(index.packages.len(), 5);
        assert_eq!(index.packages[3].skip_versions_keys, vec!["3.13".to_string()]);
        let entry = package(
            "x",
            "some_future_field: 3\npython_versions:\n- '3.15'\nskip_versions: null\n",
        );
        assert_eq!(entry.timeout, None);
        assert_eq!(entry.python_versions, vec!["3.15".to_string()]);
    }

    #[test]
    fn malformed_files_are_errors_naming_the_file() {
        let cases = [
            ("packages/a.yaml", "package: [unclosed", "packages/a.yaml: "),
            ("packages/b.yaml", "package: b\ntimeout: soon\n", "packages/b.yaml: "),
            ("packages/c.yaml", "repo: x\n", "packages/c.yaml: "),
            (
                "packages/d.yaml",
                "package: ''\n",
                "packages/d.yaml: field package is empty",
            ),
            (
                "packages/e.yaml",
                "package: e\ntest_framework: pytets\n",
                "packages/e.yaml: ",
            ),
            (
                "packages/f.yaml",
                "package: f\nextension_type: fortran\n",
                "packages/f.yaml: ",
            ),
            (
                "packages/g.yaml",
                "package: g\nimport_name: \"os; os.system('id')\"\n",
                "packages/g.yaml: import_name \"os; os.system('id')\" is not a dotted Python name",
            ),
            (
                "packages/h.yaml",
                "package: ../../h\n",
                "packages/h.yaml: package name \"../../h\" is not a PyPI name",
            ),
            (
                "packages/i.yaml",
                "package: i\nenv:\n  \"LD PRELOAD\": x\n",
                "packages/i.yaml: env key \"LD PRELOAD\" is not a variable name",
            ),
        ];
        for (file, text, expected) in cases {
            let error = parse_package(file, text, &AllowedEnv::default())
                .expect_err(file)
                .to_string();
            assert!(error.starts_with(expected), "{file}: {error}");
            assert!(!error.contains('\n'), "one line: {error}");
        }
        assert!(parse_index("index.yaml", "packages: 7").is_err());
    }

    #[test]
    fn an_env_key_that_hijacks_what_runs_is_refused_unless_the_operator_allows_it() {
        let text = "package: evil\nsource: sdist\nenv:\n  PYTHONHASHSEED: '0'\n  LD_PRELOAD: /tmp/x.so\n";
        let error = parse_package("packages/evil.yaml", text, &AllowedEnv::default()).expect_err("refused");
        assert!(
            matches!(&error, RegistryError::RefusedEnv { key, allowable: true, .. } if key == "LD_PRELOAD"),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "packages/evil.yaml: env key \"LD_PRELOAD\" is refused: it makes the dynamic loader load other code into every process, the tool's own included"
        );
        let allowed = AllowedEnv::new(["LD_PRELOAD".to_string()]).expect("allowable");
        let entry = parse_package("packages/evil.yaml", text, &allowed).expect("allowed by name");
        assert_eq!(entry.env["LD_PRELOAD"], "/tmp/x.so");
        let harness = "package: h\nsource: sdist\nenv:\n  FTSURVEY_WORKER_DIR: /\n";
        let error = parse_package("packages/h.yaml", harness, &allowed).expect_err("refused");
        assert!(
            matches!(error, RegistryError::RefusedEnv { allowable: false, .. }),
            "{error:?}"
        );
    }

    #[test]
    fn specs_get_defaults_and_resolve_paths_against_the_registry() {
        let dir = Path::new("/reg");
        let git = package("zope.interface", "timeout: 120\nclone_depth: 50\n")
            .to_spec(dir, None)
            .expect("spec");
        assert_eq!(git.install_command, DEFAULT_INSTALL_COMMAND);
        assert_eq!(git.test_command, DEFAULT_TEST_COMMAND);
        assert_eq!(git.import_name, "zope_interface");
        assert_eq!(git.timeout_secs, Some(120));
        assert_eq!(
            git.source,
            Source::Git {
                url: "https://example.org/zope.interface".into(),
                rev: None,
                depth: Some(50)
            }
        );
        let relative = package("p", "source: path\npath: ../packages/p\n")
            .to_spec(dir, None)
            .expect("spec");
        assert_eq!(
            relative.source,
            Source::Path {
                path: "/reg/../packages/p".into()
            }
        );
        let absolute = package("p", "source: path\npath: /src/p\n")
            .to_spec(dir, None)
            .expect("spec");
        assert_eq!(absolute.source, Source::Path { path: "/src/p".into() });
        let sdist = package("s", "source: sdist\nversion: '2.0'\nimport_name: sss\n")
            .to_spec(dir, None)
            .expect("spec");
        assert_eq!(
            (sdist.source, sdist.version.as_deref(), sdist.import_name.as_str()),
            (Source::Sdist, Some("2.0"), "sss")
        );
        assert!(package("p", "source: path\n").to_spec(dir, None).is_err());
        let depth = |extra: &str| match package("g", extra).to_spec(dir, None).expect("spec").source {
            Source::Git { depth, .. } => depth,
            other => panic!("git expected, got {other:?}"),
        };
        assert_eq!(depth("clone_depth: null\n"), Some(DEFAULT_CLONE_DEPTH));
        assert_eq!(depth("clone_depth: 0\n"), None, "0 asks for the whole history");
        assert_eq!(depth("clone_depth: 50\n"), Some(50));
        let unittest = package("u", "test_framework: unittest\nextension_type: cpp_extension\n")
            .to_spec(dir, None)
            .expect("spec");
        assert_eq!(
            (unittest.test_framework, unittest.extension_type),
            (TestFramework::Unittest, Some(ExtensionType::CppExtension))
        );
        assert!(package("p", "source: ftp\n").to_spec(dir, None).is_err());
        let network = |extra: &str| package("n", extra).to_spec(dir, None).expect("spec").network;
        assert!(!network(""), "no network unless asked for");
        assert!(!network("network: null\n"));
        assert!(network("network: true\n"));
        assert!(
            parse_package(
                "packages/n.yaml",
                "package: n\nnetwork: maybe\n",
                &AllowedEnv::default()
            )
            .is_err()
        );
    }

    #[test]
    fn selection_follows_index_order_and_skips() {
        let (index, entries) = registry();
        let dir = Path::new("/reg");
        let cases: [(Selection, Vec<&str>); 4] = [
            (Selection::default(), vec!["alpha", "delta", "epsilon"]),
            (
                Selection {
                    python_version: Some("3.13".into()),
                    ..Selection::default()
                },
                vec!["alpha", "epsilon"],
            ),
            (
                Selection {
                    top: Some(2),
                    ..Selection::default()
                },
                vec!["alpha", "delta"],
            ),
            (
                Selection {
                    packages: Some(vec!["epsilon".into(), "alpha".into()]),
                    top: Some(1),
                    python_version: None,
                },
                vec!["alpha"],
            ),
        ];
        for (selection, expected) in cases {
            let selected = select(&index, &entries, dir, &selection).expect("select");
            assert_eq!(names(&selected), expected, "{selection:?}");
        }
        let alpha = &select(&index, &entries, dir, &Selection::default())
            .expect("select")
            .specs[0];
        assert_eq!(alpha.download_count, Some(300));
    }

    #[test]
    fn a_listing_gives_every_package_its_rank_and_why_it_is_not_selectable() {
        let (index, mut entries) = registry();
        entries.remove("epsilon");
        let listed = list_packages(&index, &entries, Path::new("/reg"), Some("3.13"));
        let rows: Vec<(u32, &str, Result<&str, &str>)> = listed
            .iter()
            .map(|l| {
                let status = l.status.as_ref().map(|s| s.name.as_str()).map_err(String::as_str);
                (l.rank, l.index_entry.name.as_str(), status)
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                (1, "alpha", Ok("alpha")),
                (2, "beta", Err("skipped in the index")),
                (3, "gamma", Err("not enriched in the index")),
                (4, "delta", Err("skipped on 3.13: broken on 3.13")),
                (5, "epsilon", Err("no usable package file")),
            ]
        );
        let ranked = parse_index("index.yaml", "packages:\n- name: a\n  download_rank: 17\n").expect("index");
        assert_eq!(list_packages(&ranked, &entries, Path::new("/"), None)[0].rank, 17);
    }

    #[test]
    fn named_packages_that_are_skipped_are_reported_and_unknown_ones_all_listed() {
        let (index, entries) = registry();
        let dir = Path::new("/reg");
        let named = Selection {
            packages: Some(vec!["beta".into(), "delta".into()]),
            ..Selection::default()
        };
        let selected = select(
            &index,
            &entries,
            dir,
            &Selection {
                python_version: Some("3.13".into()),
                ..named
            },
        )
        .expect("select");
        assert!(selected.specs.is_empty());
        assert_eq!(
            selected.excluded[0],
            ("beta".to_string(), "skipped: needs a GPU".to_string())
        );
        assert_eq!(selected.excluded[1].1, "skipped on 3.13: broken on 3.13");
        let unknown = Selection {
            packages: Some(vec!["nope".into(), "alpha".into(), "nada".into()]),
            ..Selection::default()
        };
        let error = select(&index, &entries, dir, &unknown).expect_err("unknown");
        assert_eq!(error.to_string(), "unknown packages: nope, nada");
    }
}
