//! Trusting free-threaded wheels (`--trust-ft-wheels`): a release on PyPI with a wheel built
//! for the target's free-threaded ABI (`cp313t`) and this platform counts as the maintainers'
//! claim that the package works there, so it is `compatible_by_wheel` without running tests.
//!
//! Reads the JSON of PyPI's API as text; the caller fetches it.

use serde::Deserialize;

/// Which releases may carry the wheel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WheelTrust<'a> {
    /// The version being tested: this pinned one, else (`None`) the latest.
    TestedVersion(Option<&'a str>),
    /// Any release of the package.
    AnyVersion,
}

/// The wheel that makes a package trusted: its file name and release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedWheel {
    pub version: String,
    pub filename: String,
}

/// A PyPI answer that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable PyPI JSON: {0}")]
pub struct PypiJsonError(String);

#[derive(Deserialize)]
struct ProjectJson {
    info: InfoJson,
    #[serde(default)]
    urls: Vec<FileJson>,
    #[serde(default)]
    releases: std::collections::BTreeMap<String, Vec<FileJson>>,
}

#[derive(Deserialize)]
struct InfoJson {
    version: String,
}

#[derive(Deserialize)]
struct FileJson {
    filename: String,
    #[serde(default)]
    yanked: bool,
}

/// Finds a wheel for `abi_tag` (`cp313t`) and `platform` (`sysconfig.get_platform()`, e.g.
/// `linux-x86_64`) in PyPI's JSON for a project (`/pypi/<name>/json`): in the tested release
/// or, with [`WheelTrust::AnyVersion`], in any. Yanked files never count.
pub fn find_trusted_wheel(
    json: &str,
    abi_tag: &str,
    platform: &str,
    trust: WheelTrust<'_>,
) -> Result<Option<TrustedWheel>, PypiJsonError> {
    let project: ProjectJson = serde_json::from_str(json).map_err(|e| PypiJsonError(e.to_string()))?;
    let matching = |version: &str, files: &[FileJson]| {
        files
            .iter()
            .filter(|f| !f.yanked && wheel_fits(&f.filename, abi_tag, platform))
            .map(|f| TrustedWheel {
                version: version.to_string(),
                filename: f.filename.clone(),
            })
            .next()
    };
    match trust {
        WheelTrust::TestedVersion(None) => Ok(matching(&project.info.version, &project.urls)),
        WheelTrust::TestedVersion(Some(version)) if version == project.info.version => {
            Ok(matching(version, &project.urls))
        }
        WheelTrust::TestedVersion(Some(version)) => {
            Ok(project.releases.get(version).and_then(|files| matching(version, files)))
        }
        WheelTrust::AnyVersion => {
            if let Some(found) = matching(&project.info.version, &project.urls) {
                return Ok(Some(found));
            }
            // Newest first, by the order of numeric parts.
            let mut releases: Vec<(&String, &Vec<FileJson>)> = project.releases.iter().collect();
            releases.sort_by_key(|(version, _)| std::cmp::Reverse(version_key(version)));
            Ok(releases
                .into_iter()
                .find_map(|(version, files)| matching(version, files)))
        }
    }
}

/// Whether a wheel file name carries `abi_tag` and a platform tag this machine installs.
pub fn wheel_fits(filename: &str, abi_tag: &str, platform: &str) -> bool {
    let Some(stem) = filename.strip_suffix(".whl") else {
        return false;
    };
    let parts: Vec<&str> = stem.split('-').collect();
    // name-version[-build]-python-abi-platform
    if parts.len() < 5 {
        return false;
    }
    let (abis, platforms) = (parts[parts.len() - 2], parts[parts.len() - 1]);
    abis.split('.').any(|abi| abi == abi_tag) && platforms.split('.').any(|tag| platform_fits(tag, platform))
}

/// Whether a wheel's platform tag installs on `platform` (`linux-x86_64`, `macosx-14.0-arm64`).
fn platform_fits(tag: &str, platform: &str) -> bool {
    if let Some(arch) = platform.strip_prefix("linux-") {
        let arch = arch.replace('-', "_");
        return tag == format!("linux_{arch}") || (tag.starts_with("manylinux") && tag.ends_with(&format!("_{arch}")));
    }
    if let Some(rest) = platform.strip_prefix("macosx-") {
        let arch = rest.rsplit('-').next().unwrap_or_default();
        return tag.starts_with("macosx_") && (tag.ends_with(&format!("_{arch}")) || tag.ends_with("_universal2"));
    }
    false
}

/// `1.10.2` sorts after `1.9`: numeric parts compared as numbers.
fn version_key(version: &str) -> Vec<u64> {
    version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().unwrap_or(0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wheel_names_are_matched_on_abi_and_platform() {
        let cases = [
            (
                "pkg-1.0-cp313-cp313t-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
                true,
            ),
            ("pkg-1.0-cp313-cp313t-linux_x86_64.whl", true),
            ("pkg-1.0-1-cp313-cp313t-manylinux_2_28_x86_64.whl", true),
            ("pkg-1.0-cp313-cp313-manylinux_2_17_x86_64.whl", false),
            ("pkg-1.0-cp313-cp313t-manylinux_2_17_aarch64.whl", false),
            ("pkg-1.0-cp313-cp313t-musllinux_1_2_x86_64.whl", false),
            ("pkg-1.0-cp314-cp314t-manylinux_2_17_x86_64.whl", false),
            ("pkg-1.0-py3-none-any.whl", false),
            ("pkg-1.0.tar.gz", false),
        ];
        for (name, fits) in cases {
            assert_eq!(wheel_fits(name, "cp313t", "linux-x86_64"), fits, "{name}");
        }
        assert!(wheel_fits(
            "p-1-cp313-cp313t-macosx_11_0_arm64.whl",
            "cp313t",
            "macosx-14.0-arm64"
        ));
        assert!(wheel_fits(
            "p-1-cp313-cp313t-macosx_10_13_universal2.whl",
            "cp313t",
            "macosx-14.0-arm64"
        ));
    }

    const PROJECT: &str = r#"{
      "info": {"version": "2.0"},
      "urls": [{"filename": "p-2.0.tar.gz"}, {"filename": "p-2.0-cp313-cp313-manylinux_2_17_x86_64.whl"}],
      "releases": {
        "1.9": [{"filename": "p-1.9-cp313-cp313t-manylinux_2_17_x86_64.whl"}],
        "1.10": [{"filename": "p-1.10-cp313-cp313t-manylinux_2_17_x86_64.whl", "yanked": true}],
        "2.0": [{"filename": "p-2.0.tar.gz"}]
      }
    }"#;

    #[test]
    fn only_the_tested_release_counts_unless_any_version_is_trusted() {
        let tested = |version| {
            find_trusted_wheel(PROJECT, "cp313t", "linux-x86_64", WheelTrust::TestedVersion(version))
                .expect("json")
                .map(|w| w.version)
        };
        assert_eq!(tested(None), None, "the latest, 2.0, has no free-threaded wheel");
        assert_eq!(tested(Some("2.0")), None);
        assert_eq!(tested(Some("1.9")).as_deref(), Some("1.9"));
        assert_eq!(tested(Some("1.10")), None, "yanked");
        assert_eq!(tested(Some("0.1")), None, "no such release");
        let any = find_trusted_wheel(PROJECT, "cp313t", "linux-x86_64", WheelTrust::AnyVersion).expect("json");
        assert_eq!(
            any,
            Some(TrustedWheel {
                version: "1.9".into(),
                filename: "p-1.9-cp313-cp313t-manylinux_2_17_x86_64.whl".into()
            }),
            "the yanked 1.10 wheel does not count"
        );
        let release =
            r#"{"info": {"version": "1.9"}, "urls": [{"filename": "p-1.9-cp313-cp313t-manylinux_2_17_x86_64.whl"}]}"#;
        let found =
            find_trusted_wheel(release, "cp313t", "linux-x86_64", WheelTrust::TestedVersion(None)).expect("json");
        assert_eq!(
            found.map(|w| w.version),
            Some("1.9".to_string()),
            "the latest release's files"
        );
        assert!(find_trusted_wheel("<html>", "cp313t", "linux-x86_64", WheelTrust::AnyVersion).is_err());
    }
}
