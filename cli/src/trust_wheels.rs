//! `--trust-ft-wheels` / `--trust-ft-wheels-any-version`: asks PyPI's JSON API which selected
//! packages publish a free-threaded wheel for the target and this platform; those are
//! `compatible_by_wheel` and are not run. Answers are cached on disk for a day; a PyPI error
//! is a warning and the package is tested as usual.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use domain::PackageSpec;
use domain::registry::wheels::{TrustedWheel, WheelTrust, find_trusted_wheel};
use domain::results::PackageRecord;

/// How long a PyPI answer is reused.
const CACHE_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// PyPI's JSON API.
const PYPI_JSON: &str = "https://pypi.org/pypi";

/// Where to look and what to look for.
#[derive(Debug)]
pub(crate) struct WheelQuery<'a> {
    /// e.g. `cp313t`.
    pub(crate) abi_tag: &'a str,
    /// `sysconfig.get_platform()` of the target, e.g. `linux-x86_64`.
    pub(crate) platform: &'a str,
    /// Any release, or only the tested one.
    pub(crate) any_version: bool,
    /// PyPI answers are kept here.
    pub(crate) cache_dir: &'a Path,
}

/// The packages of `specs` that a wheel makes trusted, with the wheel; warnings for the
/// packages PyPI could not answer about.
pub(crate) fn trusted_packages(
    specs: &[PackageSpec],
    query: &WheelQuery<'_>,
    fetch: &dyn Fn(&str) -> anyhow::Result<String>,
) -> (Vec<(String, TrustedWheel)>, Vec<String>) {
    let mut trusted = Vec::new();
    let mut warnings = Vec::new();
    for spec in specs {
        // The project's JSON lists every release; the per-release endpoint is not served by
        // every PyPI mirror.
        let url = format!("{PYPI_JSON}/{}/json", spec.name);
        let cache_file = query.cache_dir.join(format!("{}.json", spec.name));
        let trust = if query.any_version {
            WheelTrust::AnyVersion
        } else {
            WheelTrust::TestedVersion(spec.version.as_deref())
        };
        let answer: anyhow::Result<String> = cached(&cache_file).map_or_else(
            || {
                let text = fetch(&url)?;
                if let Err(error) =
                    std::fs::create_dir_all(query.cache_dir).and_then(|()| std::fs::write(&cache_file, &text))
                {
                    tracing::warn!(path = %cache_file.display(), %error, "cannot cache the PyPI answer");
                }
                Ok(text)
            },
            Ok,
        );
        let found = answer.and_then(|json| Ok(find_trusted_wheel(&json, query.abi_tag, query.platform, trust)?));
        match found {
            Ok(Some(wheel)) => trusted.push((spec.name.clone(), wheel)),
            Ok(None) => {}
            Err(error) => warnings.push(format!(
                "cannot ask PyPI about {} ({error:#}); testing it as usual",
                spec.name
            )),
        }
    }
    (trusted, warnings)
}

/// The record of a package trusted by its wheel.
pub(crate) fn trusted_record(package: &str, wheel: &TrustedWheel, abi_tag: &str) -> PackageRecord {
    PackageRecord {
        package: package.to_string(),
        category: domain::Category::CompatibleByWheel.as_str().to_string(),
        evidence: vec![format!(
            "PyPI has a free-threaded {abi_tag} wheel of {package} {} for this platform ({}); tests not run",
            wheel.version, wheel.filename
        )],
        ..PackageRecord::default()
    }
}

/// The cached answer in `file`, if younger than a day.
fn cached(file: &Path) -> Option<String> {
    let modified = std::fs::metadata(file).and_then(|m| m.modified()).ok()?;
    let age = SystemTime::now().duration_since(modified).unwrap_or_default();
    (age < CACHE_TTL).then(|| std::fs::read_to_string(file).ok()).flatten()
}

/// Fetches `url` with curl.
pub(crate) fn fetch_with_curl(url: &str) -> anyhow::Result<String> {
    let output = Command::new("curl")
        .args([
            "--fail",
            "--silent",
            "--show-error",
            "--location",
            "--max-time",
            "30",
            url,
        ])
        .output()
        .context("cannot run curl")?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!("{}", stderr.lines().last().unwrap_or("curl failed").trim());
    }
    String::from_utf8(output.stdout).context("PyPI answered with bytes that are not UTF-8")
}

/// `<work-dir>/pypi-json`.
pub(crate) fn cache_dir(work_dir: &Path) -> PathBuf {
    work_dir.join("pypi-json")
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::*;

    fn spec(name: &str, version: Option<&str>) -> PackageSpec {
        PackageSpec {
            name: name.into(),
            version: version.map(str::to_string),
            source: domain::Source::Sdist,
            install_command: String::new(),
            test_command: String::new(),
            test_framework: domain::package_kind::TestFramework::Pytest,
            import_name: name.into(),
            timeout_secs: None,
            env: BTreeMap::new(),
            download_count: None,
            extension_type: None,
            network: false,
        }
    }

    #[test]
    fn wheels_are_looked_up_per_version_cached_and_errors_are_warnings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let asked = RefCell::new(Vec::new());
        let fetch = |url: &str| -> anyhow::Result<String> {
            asked.borrow_mut().push(url.to_string());
            if url.contains("/broken/") {
                bail!("curl: (22) The requested URL returned error: 503");
            }
            let wheel = if url.contains("/ftpkg/") { "cp313t" } else { "cp313" };
            Ok(format!(
                r#"{{"info": {{"version": "2.0"}}, "urls": [],
                    "releases": {{"1.0": [{{"filename": "x-1.0-cp313-{wheel}-manylinux_2_17_x86_64.whl"}}]}}}}"#
            ))
        };
        let query = WheelQuery {
            abi_tag: "cp313t",
            platform: "linux-x86_64",
            any_version: false,
            cache_dir: dir.path(),
        };
        let specs = [
            spec("ftpkg", Some("1.0")),
            spec("gilpkg", Some("1.0")),
            spec("broken", Some("2")),
        ];
        let (trusted, warnings) = trusted_packages(&specs, &query, &fetch);
        assert_eq!(
            trusted.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            vec!["ftpkg"]
        );
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("cannot ask PyPI about broken (curl: (22)"),
            "{warnings:?}"
        );
        assert_eq!(
            asked.borrow().as_slice(),
            [
                "https://pypi.org/pypi/ftpkg/json",
                "https://pypi.org/pypi/gilpkg/json",
                "https://pypi.org/pypi/broken/json"
            ]
        );
        let (again, _) = trusted_packages(&specs[..2], &query, &fetch);
        assert_eq!(again.len(), 1);
        assert_eq!(asked.borrow().len(), 3, "the second look-up is answered from the cache");
        let record = trusted_record("ftpkg", &again[0].1, "cp313t");
        assert_eq!(record.category, "compatible_by_wheel");
        assert!(
            record.evidence[0].contains("free-threaded cp313t wheel of ftpkg 1.0"),
            "{record:?}"
        );
    }
}
