//! Turns `--target-python` into an interpreter on this machine: a path (or a name on PATH) as
//! given, or a request such as `3.13t` or `3.13t-tsan`, met in this order by an interpreter on
//! PATH, one this tool built before (the managed builds), or a new build from source.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use domain::{InterpreterProfile, InterpreterRequirement};

use crate::places;

/// The builder script, the same one `deploy/` ships, run with bash.
const BUILDER: &str = include_str!("../../deploy/build-cpython.sh");

/// What `--target-python` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TargetArg {
    /// An interpreter: a path, or a name found on PATH.
    Path(PathBuf),
    /// A version and build the interpreter must have.
    Request(InterpreterRequirement),
}

/// The interpreter a run is for: probed here, or (for a fleet) only requested.
#[derive(Debug)]
pub(crate) enum Target {
    /// An interpreter on this machine, probed.
    Local(InterpreterProfile),
    /// What the fleet's workers must have; no interpreter here was looked at.
    Requested(InterpreterRequirement),
}

impl Target {
    /// The probed interpreter, when there is one here.
    pub(crate) fn profile(&self) -> Option<&InterpreterProfile> {
        match self {
            Target::Local(profile) => Some(profile),
            Target::Requested(_) => None,
        }
    }

    /// The interpreter for the user: its summary, or the workers it asks for.
    pub(crate) fn describe(&self) -> String {
        match self {
            Target::Local(profile) => profile.summary(),
            Target::Requested(requirement) => format!("workers with {}", requirement.describe()),
        }
    }
}

/// Where interpreters are looked for and how a missing one is built; read from the
/// environment by the command, passed in here.
#[derive(Debug, Clone)]
pub(crate) struct Provisioning {
    /// `PATH`, for interpreters on it.
    pub(crate) path_var: OsString,
    /// `$FTSURVEY_CACHE_DIR`: managed builds live in its `pythons/`, downloads in `sources/`.
    pub(crate) cache_dir: PathBuf,
    /// `$FTSURVEY_CPYTHON_SOURCE`: a CPython source tarball or directory to build from.
    pub(crate) source: Option<PathBuf>,
}

/// Where a resolved interpreter came from, for the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Given,
    OnPath,
    Managed,
    Built,
}

impl Origin {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Origin::Given => "as given",
            Origin::OnPath => "found on PATH",
            Origin::Managed => "a managed build",
            Origin::Built => "built from source",
        }
    }
}

/// Reads `--target-python`: a path, a request, or an interpreter name on PATH.
pub(crate) fn parse_target(text: &str, path_var: &OsString) -> anyhow::Result<TargetArg> {
    let text = text.trim();
    if text.is_empty() {
        bail!("--target-python is empty: give a path, a name on PATH or a request such as 3.13t");
    }
    if text.contains('/') || Path::new(text).exists() {
        return Ok(TargetArg::Path(PathBuf::from(text)));
    }
    match text.parse::<InterpreterRequirement>() {
        Ok(requirement) => return Ok(TargetArg::Request(requirement)),
        // Only a request names a build: say what is wrong with it rather than look on PATH.
        Err(error) if text.contains('@') => bail!("--target-python {text:?}: {error}"),
        Err(_) => {}
    }
    match worker::find_on_path(text, path_var) {
        Some(path) => Ok(TargetArg::Path(path)),
        None => bail!(
            "--target-python {text:?} is neither a file, nor a name on PATH, nor a request such as 3.13t, 3.13t-tsan or 3.13t-debug"
        ),
    }
}

/// Finds an interpreter meeting `requirement`: on PATH, then among the managed builds, then
/// by building one from source. A TSAN build is taken only when asked for, as it is much
/// slower.
pub(crate) async fn resolve_request(
    requirement: &InterpreterRequirement,
    provisioning: &Provisioning,
) -> anyhow::Result<(InterpreterProfile, Origin)> {
    if let Some(found) = find_existing(requirement, provisioning).await {
        return Ok(found);
    }
    let fits = |profile: &InterpreterProfile| requirement.is_met_by(profile);
    let Some(version) = requirement.python_version.as_deref() else {
        bail!(
            "no interpreter meets {}; name one with a version, such as 3.13t",
            requirement.describe()
        );
    };
    if !requirement.free_threaded {
        bail!(
            "no CPython {version} on PATH; ftsurvey builds free-threaded interpreters only: ask for {version}t, or give a path"
        );
    }
    // A build made now would be another build, and the builder makes no debug builds.
    if let Some(build) = &requirement.build {
        bail!(
            "no interpreter on PATH or among the managed builds is build {build}; a new build would be another one: \
             give the interpreter's path, or drop @{build}"
        );
    }
    if requirement.debug == Some(true) {
        bail!(
            "no debug build of CPython {version} on PATH or among the managed builds, and ftsurvey builds none: give its path"
        );
    }
    let source = match &provisioning.source {
        Some(source) => {
            check_source_version(source, version)?;
            source.clone()
        }
        None => download_source(version, &provisioning.cache_dir)?,
    };
    eprintln!(
        "no interpreter meets {} on PATH or among the managed builds: building one from {} (once; later runs reuse it)",
        requirement.describe(),
        source.display()
    );
    let python = build_python(&source, requirement.tsan, None)?;
    let profile = worker::probe::probe(&python)
        .await
        .with_context(|| format!("the interpreter just built at {} does not run", python.display()))?;
    if !fits(&profile) {
        bail!(
            "the interpreter built from {} is {}, not {}",
            source.display(),
            profile.summary(),
            requirement.describe()
        );
    }
    Ok((profile, Origin::Built))
}

/// An interpreter on PATH or among the managed builds that meets `requirement`, if any.
pub(crate) async fn find_existing(
    requirement: &InterpreterRequirement,
    provisioning: &Provisioning,
) -> Option<(InterpreterProfile, Origin)> {
    let fits = |profile: &InterpreterProfile| requirement.is_met_by(profile);
    for candidate in path_candidates(requirement, &provisioning.path_var) {
        if let Ok(profile) = worker::probe::probe(&candidate).await
            && fits(&profile)
        {
            return Some((profile, Origin::OnPath));
        }
    }
    for build in managed_builds(&provisioning.cache_dir).await {
        if let Ok(profile) = build.profile
            && fits(&profile)
        {
            return Some((profile, Origin::Managed));
        }
    }
    None
}

/// A build under `<cache>/pythons`, probed.
#[derive(Debug)]
pub(crate) struct ManagedBuild {
    pub(crate) python: PathBuf,
    pub(crate) profile: Result<InterpreterProfile, String>,
}

/// The complete builds under `<cache>/pythons`, by directory name.
pub(crate) async fn managed_builds(cache_dir: &Path) -> Vec<ManagedBuild> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(cache_dir.join("pythons"))
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    dirs.retain(|d| d.join(".ftsurvey-build-complete").is_file());
    dirs.sort();
    let mut builds = Vec::new();
    for dir in dirs {
        let python = dir.join("bin").join("python3");
        let profile = worker::probe::probe(&python).await.map_err(|e| e.to_string());
        builds.push(ManagedBuild { python, profile });
    }
    builds
}

/// What the environment says about finding and building interpreters.
pub(crate) fn provisioning_from_env() -> anyhow::Result<Provisioning> {
    let source = match std::env::var_os("FTSURVEY_CPYTHON_SOURCE").filter(|v| !v.is_empty()) {
        Some(source) => Some(places::absolute(Path::new(&source))?),
        None => None,
    };
    Ok(Provisioning {
        path_var: std::env::var_os("PATH").unwrap_or_default(),
        cache_dir: places::cache_dir()?,
        source,
    })
}

/// Builds (or finds in the cache) an interpreter from `source`; returns its path. The
/// builder's progress goes to stderr.
pub(crate) fn build_python(source: &Path, tsan: bool, prefix: Option<&Path>) -> anyhow::Result<PathBuf> {
    if !source.exists() {
        bail!("CPython source not found: {}", source.display());
    }
    let mut script = tempfile::Builder::new()
        .prefix("ftsurvey-build-cpython")
        .suffix(".sh")
        .tempfile()
        .context("cannot write the builder script")?;
    script
        .write_all(BUILDER.as_bytes())
        .context("cannot write the builder script")?;
    let mut command = std::process::Command::new("bash");
    command.arg(script.path()).arg("--source").arg(source);
    if tsan {
        command.arg("--tsan");
    }
    if let Some(prefix) = prefix {
        command.arg("--prefix").arg(prefix);
    }
    // The script prints the interpreter's path on stdout and its progress on stderr.
    let output = command
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run bash for the builder script")?;
    if !output.status.success() {
        bail!("building CPython failed ({}); the lines above say why", output.status);
    }
    let path = String::from_utf8_lossy(&output.stdout).trim().to_string();
    anyhow::ensure!(!path.is_empty(), "the builder script printed no interpreter path");
    Ok(PathBuf::from(path))
}

/// `python3.13t` (and for a GIL build `python3.13`) in each PATH directory, in PATH order.
fn path_candidates(requirement: &InterpreterRequirement, path_var: &OsString) -> Vec<PathBuf> {
    let Some(version) = requirement.python_version.as_deref() else {
        return Vec::new();
    };
    let name = if requirement.free_threaded {
        format!("python{version}t")
    } else {
        format!("python{version}")
    };
    std::env::split_paths(path_var)
        .map(|dir| dir.join(&name))
        .filter(|p| p.is_file())
        .collect()
}

/// Refuses a source whose version is not the requested `major.minor`, read from a tarball's
/// name (`Python-3.13.5.tar.xz`) or a directory's `Include/patchlevel.h`.
fn check_source_version(source: &Path, version: &str) -> anyhow::Result<()> {
    if !source.exists() {
        bail!(
            "FTSURVEY_CPYTHON_SOURCE names {}, which does not exist",
            source.display()
        );
    }
    let found = if source.is_dir() {
        std::fs::read_to_string(source.join("Include").join("patchlevel.h"))
            .ok()
            .and_then(|text| patchlevel_version(&text))
    } else {
        source.file_name().and_then(|n| n.to_str()).and_then(tarball_version)
    };
    match found {
        Some(found) if found == version || found.starts_with(&format!("{version}.")) => Ok(()),
        Some(found) => bail!(
            "FTSURVEY_CPYTHON_SOURCE {} is CPython {found}, not the {version} requested",
            source.display()
        ),
        // A source whose version cannot be read is built and its interpreter checked.
        None => Ok(()),
    }
}

/// `3.13.5` from `Python-3.13.5.tar.xz`.
fn tarball_version(name: &str) -> Option<String> {
    let rest = name.strip_prefix("Python-")?;
    let version: String = rest.split(".tar").next()?.split(".tgz").next()?.to_string();
    version.chars().next()?.is_ascii_digit().then_some(version)
}

/// `3.13.5` from the `#define PY_VERSION "3.13.5"` line of `patchlevel.h`.
fn patchlevel_version(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("#define PY_VERSION"))
        .map(|v| v.trim().trim_matches('"').to_string())
}

/// The base of python.org's source downloads.
const PYTHON_FTP: &str = "https://www.python.org/ftp/python/";

/// Downloads the newest `version.N` source tarball from python.org into `<cache>/sources`.
fn download_source(version: &str, cache_dir: &Path) -> anyhow::Result<PathBuf> {
    let hint = "set FTSURVEY_CPYTHON_SOURCE to a CPython source tarball or directory";
    let listing = curl(&[PYTHON_FTP])
        .with_context(|| format!("no CPython {version} source: cannot list {PYTHON_FTP} to download one; {hint}"))?;
    let Some(full) = newest_release(&String::from_utf8_lossy(&listing), version) else {
        bail!("no CPython {version} release is listed at {PYTHON_FTP}; {hint}");
    };
    let dir = cache_dir.join("sources");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tarball = dir.join(format!("Python-{full}.tar.xz"));
    if tarball.is_file() {
        return Ok(tarball);
    }
    let url = format!("{PYTHON_FTP}{full}/Python-{full}.tar.xz");
    eprintln!("downloading {url}");
    let partial = tarball.with_extension("partial");
    let path = partial.display().to_string();
    curl(&["--output", &path, &url]).with_context(|| format!("cannot download {url}; {hint}"))?;
    std::fs::rename(&partial, &tarball)
        .with_context(|| format!("cannot move the download to {}", tarball.display()))?;
    Ok(tarball)
}

/// The highest `version.N/` directory named in python.org's listing.
fn newest_release(listing: &str, version: &str) -> Option<String> {
    let prefix = format!("href=\"{version}.");
    listing
        .match_indices(&prefix)
        .filter_map(|(at, _)| {
            let rest = &listing[at + prefix.len()..];
            let micro: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if !micro.is_empty() && rest[micro.len()..].starts_with("/\"") {
                micro.parse::<u32>().ok()
            } else {
                None
            }
        })
        .max()
        .map(|micro| format!("{version}.{micro}"))
}

fn curl(args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let output = Command::new("curl")
        .args(["--fail", "--silent", "--show-error", "--location", "--max-time", "600"])
        .args(args)
        .output()
        .context("cannot run curl")?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!("{}", stderr.lines().last().unwrap_or("curl failed").trim());
    }
    Ok(output.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_with(dir: &Path) -> OsString {
        std::env::join_paths([dir]).expect("join")
    }

    #[test]
    fn targets_are_paths_requests_or_names_on_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("python3.13t"), "").expect("write");
        let path_var = path_with(dir.path());
        let cases = [
            ("/opt/py/bin/python3", TargetArg::Path("/opt/py/bin/python3".into())),
            ("./python", TargetArg::Path("./python".into())),
            ("3.13t", TargetArg::Request("3.13t".parse().expect("request"))),
            ("3.13t-tsan", TargetArg::Request("3.13t-tsan".parse().expect("request"))),
            (
                "3.13t-debug",
                TargetArg::Request("3.13t-debug".parse().expect("request")),
            ),
            (
                "3.13t@6cb20a2",
                TargetArg::Request("3.13t@6cb20a2".parse().expect("request")),
            ),
            ("python3.13t", TargetArg::Path(dir.path().join("python3.13t"))),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_target(text, &path_var).expect(text), expected, "{text}");
        }
        let error = parse_target("pyhton", &path_var).expect_err("unknown").to_string();
        assert!(
            error.contains("neither a file, nor a name on PATH, nor a request"),
            "{error}"
        );
        let error = parse_target("3.13t@main", &path_var).expect_err("no build").to_string();
        assert!(error.contains("hex digits") && !error.contains('\n'), "{error}");
    }

    #[test]
    fn source_versions_come_from_tarball_names_and_patchlevel_h() {
        assert_eq!(tarball_version("Python-3.13.5.tar.xz").as_deref(), Some("3.13.5"));
        assert_eq!(tarball_version("Python-3.14.0rc1.tgz").as_deref(), Some("3.14.0rc1"));
        assert_eq!(tarball_version("cpython-main.tar.gz"), None);
        assert_eq!(
            patchlevel_version("#define PY_MINOR_VERSION 13\n#define PY_VERSION      \"3.13.5\"\n").as_deref(),
            Some("3.13.5")
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let tarball = dir.path().join("Python-3.13.5.tar.xz");
        std::fs::write(&tarball, "").expect("write");
        assert!(check_source_version(&tarball, "3.13").is_ok());
        let error = check_source_version(&tarball, "3.14")
            .expect_err("mismatch")
            .to_string();
        assert!(error.ends_with("is CPython 3.13.5, not the 3.14 requested"), "{error}");
        let error = check_source_version(&dir.path().join("nope.tar.xz"), "3.13")
            .expect_err("missing")
            .to_string();
        assert!(error.contains("does not exist"), "{error}");
    }

    #[test]
    fn the_newest_micro_release_is_read_from_the_listing() {
        let listing = r#"<a href="3.13.10/">3.13.10/</a> <a href="3.13.9/">3.13.9/</a>
            <a href="3.13.11rc1/">x</a> <a href="3.131.0/">y</a> <a href="3.14.0/">z</a>"#;
        assert_eq!(newest_release(listing, "3.13").as_deref(), Some("3.13.10"));
        assert_eq!(newest_release(listing, "3.12"), None);
    }

    #[test]
    fn path_candidates_name_the_free_threaded_binary() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["python3.13t", "python3.13"] {
            std::fs::write(dir.path().join(name), "").expect("write");
        }
        let path_var = path_with(dir.path());
        let ft: InterpreterRequirement = "3.13t".parse().expect("request");
        assert_eq!(path_candidates(&ft, &path_var), vec![dir.path().join("python3.13t")]);
        let gil: InterpreterRequirement = "3.13".parse().expect("request");
        assert_eq!(path_candidates(&gil, &path_var), vec![dir.path().join("python3.13")]);
        assert!(path_candidates(&"3.14t".parse().expect("request"), &path_var).is_empty());
    }

    #[tokio::test]
    async fn a_pinned_build_or_a_debug_build_found_nowhere_is_refused_before_building() {
        let dir = tempfile::tempdir().expect("tempdir");
        let provisioning = Provisioning {
            path_var: path_with(dir.path()),
            cache_dir: dir.path().join("cache"),
            source: Some(dir.path().join("Python-3.13.5.tar.xz")),
        };
        for (request, expected) in [
            ("3.13t@6cb20a2", "is build 6cb20a2; a new build would be another one"),
            ("3.13t-debug", "no debug build of CPython 3.13"),
        ] {
            let requirement: InterpreterRequirement = request.parse().expect(request);
            let error = resolve_request(&requirement, &provisioning)
                .await
                .expect_err(request)
                .to_string();
            assert!(error.contains(expected) && !error.contains('\n'), "{request}: {error}");
        }
    }
}
