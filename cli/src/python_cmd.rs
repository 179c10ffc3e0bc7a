//! `ftsurvey python build`: builds a free-threaded (or TSAN) CPython from a source tarball or
//! directory with the project's builder script, cached by (source hash, variant).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

/// The builder script, the same one `deploy/` ships, run with bash.
const BUILDER: &str = include_str!("../../deploy/build-cpython.sh");

#[derive(Debug, Subcommand)]
pub(crate) enum PythonCommand {
    /// Build CPython with the GIL disabled (and ThreadSanitizer with --tsan); prints the
    /// interpreter's path. A build already in the cache is reused.
    Build(BuildArgs),
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
        PythonCommand::Build(args) => build(&args),
    }
}

fn build(args: &BuildArgs) -> anyhow::Result<ExitCode> {
    let Some(source) = &args.source else {
        bail!("no CPython source: pass --source or set FTSURVEY_CPYTHON_SOURCE to a tarball or directory");
    };
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
    if args.tsan {
        command.arg("--tsan");
    }
    if let Some(prefix) = &args.prefix {
        command.arg("--prefix").arg(prefix);
    }
    // The script prints the interpreter's path on stdout and its progress on stderr.
    let status = command.status().context("cannot run bash for the builder script")?;
    if !status.success() {
        bail!("building CPython failed ({status}); the lines above say why");
    }
    Ok(ExitCode::SUCCESS)
}
