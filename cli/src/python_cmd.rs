//! `ftsurvey python build|list`: builds a free-threaded (or TSAN) CPython from a source tarball
//! or directory with the project's builder script, cached by (source hash, variant), and lists
//! the builds in that cache.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Subcommand};

use crate::interpreters;
use crate::places;

#[derive(Debug, Subcommand)]
pub(crate) enum PythonCommand {
    /// Build CPython with the GIL disabled (and ThreadSanitizer with --tsan); prints the
    /// interpreter's path. A build already in the cache is reused.
    Build(BuildArgs),
    /// The managed builds (`$FTSURVEY_CACHE_DIR/pythons`) that `--target-python 3.13t` can
    /// use without building.
    List,
}

#[derive(Debug, Args)]
pub(crate) struct BuildArgs {
    /// Build with ThreadSanitizer (`--with-thread-sanitizer`).
    #[arg(long)]
    tsan: bool,
    /// A CPython source tarball or directory.
    #[arg(long, env = "FTSURVEY_CPYTHON_SOURCE", value_name = "TARBALL_OR_DIR")]
    source: Option<PathBuf>,
    /// Install here instead of the cache (`$FTSURVEY_CACHE_DIR/pythons/<variant>-<hash>`).
    #[arg(long, value_name = "DIR")]
    prefix: Option<PathBuf>,
}

pub(crate) fn run(command: PythonCommand) -> anyhow::Result<ExitCode> {
    match command {
        PythonCommand::Build(args) => {
            let Some(source) = &args.source else {
                bail!("no CPython source: pass --source or set FTSURVEY_CPYTHON_SOURCE to a tarball or directory");
            };
            let python = interpreters::build_python(source, args.tsan, args.prefix.as_deref())?;
            println!("{}", python.display());
            Ok(ExitCode::SUCCESS)
        }
        PythonCommand::List => crate::run_async(list()),
    }
}

async fn list() -> anyhow::Result<ExitCode> {
    let cache_dir = places::cache_dir()?;
    let builds = interpreters::managed_builds(&cache_dir).await;
    if builds.is_empty() {
        println!(
            "no managed builds in {}; `ftsurvey python build` or `run --target-python 3.13t` makes one",
            cache_dir.join("pythons").display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::ASCII_BORDERS_ONLY_CONDENSED);
    table.set_header(vec!["request", "build", "interpreter", "path"]);
    for build in builds {
        let (request, id, summary) = match &build.profile {
            Ok(profile) => (request_of(profile), profile.build_id(), profile.summary()),
            Err(error) => (String::new(), String::new(), format!("unusable: {error}")),
        };
        table.add_row(vec![request, id, summary, build.python.display().to_string()]);
    }
    println!("{table}");
    Ok(ExitCode::SUCCESS)
}

/// The request a build meets: `3.13t`, `3.13t-tsan`, `3.13t-debug`.
fn request_of(profile: &domain::InterpreterProfile) -> String {
    domain::InterpreterRequirement {
        python_version: Some(profile.major_minor.clone()),
        free_threaded: profile.free_threaded,
        tsan: profile.tsan,
        debug: profile.debug.then_some(true),
        build: None,
    }
    .describe()
}
