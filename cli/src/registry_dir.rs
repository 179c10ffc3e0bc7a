//! Reads a registry directory: `index.yaml` plus one `packages/<name>.yaml` per package.
//!
//! A missing directory or unreadable index stops the run; a bad package file is a warning and
//! that package is left out, as is one whose `env` sets a variable that hijacks what runs
//! (unless the operator allowed that key with `--allow-env`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use domain::registry::env::AllowedEnv;
use domain::registry::laruche::{PackageEntry, RegistryError, RegistryIndex, parse_index, parse_package};

/// A registry as read from disk or from the binary.
#[derive(Debug)]
pub struct LoadedRegistry {
    /// Absolute, canonical path of the registry directory; relative `path` sources resolve
    /// against it. The built-in registry has none (it holds no path sources).
    pub dir: PathBuf,
    /// How to name the registry to a user: its directory, or `built-in`.
    pub label: String,
    pub index: RegistryIndex,
    /// Package files that parsed and yield a spec, by package name.
    pub entries: BTreeMap<String, PackageEntry>,
    /// One line per file that could not be used.
    pub warnings: Vec<String>,
    /// Files read, the index included.
    pub files_read: usize,
}

/// `--allow-env KEY`, of every command that reads a registry.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AllowEnvArg {
    /// Let registry files set this environment variable, refused by default as it changes what
    /// runs instead of what is tested (the loader's LD_*, the shell's, the interpreter's
    /// startup, pip's, uv's and git's, proxies and TLS trust); read the registry first
    /// (`ftsurvey registry validate` shows every env entry). Exact names, repeatable or
    /// comma-separated; the harness's own (FTSURVEY_*, PYTHON_GIL) cannot be allowed.
    #[arg(
        long = "allow-env",
        value_name = "KEY",
        value_delimiter = ',',
        env = "FTSURVEY_ALLOW_ENV"
    )]
    pub allow_env: Vec<String>,
}

impl AllowEnvArg {
    /// The keys allowed, checked.
    pub fn allowed(&self) -> anyhow::Result<AllowedEnv> {
        AllowedEnv::new(self.allow_env.iter().cloned()).map_err(|reason| anyhow::anyhow!("--allow-env: {reason}"))
    }
}

/// The label of the registry built into the binary.
pub const BUILTIN_LABEL: &str = "built-in";

/// Loads the registry in `dir`; its files may set the refused env keys `allowed_env` names.
pub fn load_registry(dir: &Path, allowed_env: &AllowedEnv) -> anyhow::Result<LoadedRegistry> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("registry dir {} not found", dir.display()))?;
    anyhow::ensure!(dir.is_dir(), "registry dir {} is not a directory", dir.display());
    let index_path = dir.join("index.yaml");
    let index_text = std::fs::read_to_string(&index_path)
        .with_context(|| format!("cannot read the registry index {}", index_path.display()))?;
    let mut registry = load_with(
        dir.clone(),
        dir.display().to_string(),
        &index_path.display().to_string(),
        &index_text,
        allowed_env,
        |name| std::fs::read_to_string(dir.join("packages").join(format!("{name}.yaml"))),
    )?;
    // Package files the index does not list are never selected: say so, as they are
    // usually a forgotten index entry.
    if let Ok(files) = std::fs::read_dir(dir.join("packages")) {
        let listed: std::collections::HashSet<&str> = registry.index.packages.iter().map(|e| e.name.as_str()).collect();
        let mut orphans: Vec<String> = files
            .flatten()
            .filter_map(|f| {
                f.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".yaml"))
                    .map(str::to_string)
            })
            .filter(|name| !listed.contains(name.as_str()))
            .collect();
        orphans.sort();
        registry.warnings.extend(
            orphans
                .into_iter()
                .map(|name| format!("packages/{name}.yaml: not listed in index.yaml")),
        );
    }
    Ok(registry)
}

/// Loads the registry built into the binary; its files may set the refused env keys
/// `allowed_env` names.
pub fn load_builtin(allowed_env: &AllowedEnv) -> anyhow::Result<LoadedRegistry> {
    let index_text = builtin_file("index.yaml").context("the built-in registry has no index.yaml")?;
    load_with(
        PathBuf::new(),
        BUILTIN_LABEL.to_string(),
        "built-in index.yaml",
        index_text,
        allowed_env,
        |name| {
            builtin_file(&format!("packages/{name}.yaml"))
                .map(str::to_string)
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "not in the built-in registry"))
        },
    )
}

/// `--registry-dir` when given, else the built-in registry.
pub fn load_registry_or_builtin(dir: Option<&Path>, allowed_env: &AllowedEnv) -> anyhow::Result<LoadedRegistry> {
    match dir {
        Some(dir) => load_registry(dir, allowed_env),
        None => load_builtin(allowed_env),
    }
}

/// The files of the built-in registry (`registry/` in the repository), by relative path.
pub fn builtin_files() -> &'static [(&'static str, &'static str)] {
    BUILTIN_FILES
}

fn builtin_file(path: &str) -> Option<&'static str> {
    BUILTIN_FILES.iter().find(|(p, _)| *p == path).map(|(_, text)| *text)
}

include!(concat!(env!("OUT_DIR"), "/builtin_registry.rs"));

/// Parses the index and every package file it lists, read by `read(name)`. A file that
/// cannot be read, parsed or turned into a spec, or that sets an env key neither allowed by
/// default nor in `allowed_env`, is one warning and is left out.
fn load_with(
    dir: PathBuf,
    label: String,
    index_label: &str,
    index_text: &str,
    allowed_env: &AllowedEnv,
    read: impl Fn(&str) -> std::io::Result<String>,
) -> anyhow::Result<LoadedRegistry> {
    let index = parse_index(index_label, index_text)?;
    let mut entries = BTreeMap::new();
    let mut warnings = Vec::new();
    let mut files_read = 1;
    for index_entry in &index.packages {
        let file = format!("packages/{}.yaml", index_entry.name);
        let text = match read(&index_entry.name) {
            Ok(text) => text,
            Err(error) => {
                warnings.push(format!("{file}: cannot read: {error}"));
                continue;
            }
        };
        files_read += 1;
        let entry = match parse_package(&file, &text, allowed_env) {
            Ok(entry) => entry,
            Err(error) => {
                let hint = match &error {
                    RegistryError::RefusedEnv {
                        key, allowable: true, ..
                    } => format!(" (--allow-env {key} allows it)"),
                    _ => String::new(),
                };
                warnings.push(format!("{error}{hint}"));
                continue;
            }
        };
        if entry.package != index_entry.name {
            warnings.push(format!(
                "{file}: names package {:?}, but the index lists it as {:?}",
                entry.package, index_entry.name
            ));
            continue;
        }
        // A selectable package whose fields contradict each other (a path source without a
        // path) is reported now rather than when a run selects it. Entries that are not
        // enriched often have no repository yet, which is no fault.
        let selectable = index_entry.enriched && !index_entry.skip && entry.exclusion(None).is_none();
        if selectable && let Err(error) = entry.to_spec(&dir, Some(index_entry)) {
            warnings.push(error.to_string());
            continue;
        }
        entries.insert(entry.package.clone(), entry);
    }
    Ok(LoadedRegistry {
        dir,
        label,
        index,
        entries,
        warnings,
        files_read,
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
        let registry = load_registry(dir.path(), &AllowedEnv::default()).expect("loads");
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
    fn the_builtin_registry_loads_whole_and_pins_an_sdist_with_a_rank_for_every_package() {
        let registry = load_builtin(&AllowedEnv::default()).expect("the built-in registry loads");
        assert!(registry.warnings.is_empty(), "{:?}", registry.warnings);
        assert_eq!(registry.entries.len(), registry.index.packages.len());
        assert_eq!(
            builtin_files().len(),
            registry.index.packages.len() + 1,
            "no file outside the index"
        );
        let mut last_rank = 0;
        for index_entry in &registry.index.packages {
            let rank = index_entry
                .download_rank
                .unwrap_or_else(|| panic!("{} has no download_rank", index_entry.name));
            assert!(rank > last_rank, "{} is out of popularity order", index_entry.name);
            last_rank = rank;
            let spec = registry.entries[&index_entry.name]
                .to_spec(&registry.dir, Some(index_entry))
                .expect("spec");
            assert_eq!(spec.source, domain::Source::Sdist, "{}", spec.name);
            assert!(spec.version.is_some(), "{} has no pinned version", spec.name);
        }
    }

    #[test]
    fn a_missing_directory_or_index_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope");
        let error = format!(
            "{:#}",
            load_registry(&missing, &AllowedEnv::default()).expect_err("missing dir")
        );
        assert!(error.contains("registry dir") && error.contains("nope"), "{error}");
        let error = format!(
            "{:#}",
            load_registry(dir.path(), &AllowedEnv::default()).expect_err("no index")
        );
        assert!(error.contains("index.yaml"), "{error}");
    }
}
