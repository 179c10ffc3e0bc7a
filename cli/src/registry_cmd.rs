//! `ftsurvey registry list|validate`: what a registry offers, whether every file of it can be
//! used, and what it makes workers run beyond the defaults.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Subcommand};
use comfy_table::Table;
use domain::registry::laruche::list_packages;
use domain::views::plan::render_differences;
use domain::views::text::{neutralise_controls, one_line_visible};

use crate::registry_dir::{AllowEnvArg, LoadedRegistry, load_registry_or_builtin};

#[derive(Debug, Subcommand)]
pub(crate) enum RegistryCommand {
    /// The packages of a registry in popularity order: rank, version, source, commands.
    List(ListArgs),
    /// Read every file of a registry and report those that cannot be used (exits 1 if any),
    /// then what each package a run can select sets beyond the defaults: commands, source,
    /// import name, env, network.
    Validate(RegistryArg),
}

#[derive(Debug, Args)]
pub(crate) struct RegistryArg {
    /// Registry directory (index.yaml + packages/); without it, the registry built into
    /// ftsurvey.
    #[arg(long, env = "FTSURVEY_REGISTRY_DIR")]
    pub(crate) registry_dir: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) allow_env: AllowEnvArg,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    pub(crate) registry: RegistryArg,
    /// The N most popular selectable packages.
    #[arg(long, value_name = "N")]
    pub(crate) top: Option<usize>,
    /// Apply the registry's `skip_versions` for this `major.minor`, e.g. 3.13.
    #[arg(long, value_name = "X.Y")]
    pub(crate) python_version: Option<String>,
    /// Also list the packages that are not selectable, with the reason.
    #[arg(long)]
    pub(crate) all: bool,
}

pub(crate) fn run(command: RegistryCommand) -> anyhow::Result<ExitCode> {
    match command {
        RegistryCommand::List(args) => list(&args),
        RegistryCommand::Validate(args) => validate(&args),
    }
}

fn list(args: &ListArgs) -> anyhow::Result<ExitCode> {
    let registry = load_registry_or_builtin(
        args.registry.registry_dir.as_deref(),
        &args.registry.allow_env.allowed()?,
    )?;
    for warning in &registry.warnings {
        eprintln!("warning: {}", neutralise_controls(warning));
    }
    let listed = list_packages(
        &registry.index,
        &registry.entries,
        &registry.dir,
        args.python_version.as_deref(),
    );
    let mut header = vec!["rank", "package", "version", "source", "downloads", "extension"];
    if args.all {
        header.push("status");
    }
    let mut table = Table::new();
    table.load_style(comfy_table::presets::ASCII_BORDERS_ONLY_CONDENSED);
    table.set_header(header);
    let mut n_selectable = 0;
    for package in &listed {
        let selectable = package.status.is_ok();
        if selectable {
            n_selectable += 1;
        }
        if args.top.is_some_and(|top| n_selectable > top && selectable) {
            break;
        }
        if !selectable && !args.all {
            continue;
        }
        let (version, source) = match &package.status {
            Ok(spec) => (
                spec.version.clone().unwrap_or_else(|| "latest".into()),
                domain::views::plan::describe_source(spec),
            ),
            Err(_) => (String::new(), String::new()),
        };
        let mut row = vec![
            package.rank.to_string(),
            package.index_entry.name.clone(),
            version,
            source,
            package
                .index_entry
                .download_count
                .map(|d| d.to_string())
                .unwrap_or_default(),
            package.index_entry.extension_type.clone().unwrap_or_default(),
        ];
        if args.all {
            row.push(match &package.status {
                Ok(_) => "selectable".to_string(),
                Err(reason) => reason.clone(),
            });
        }
        table.add_row(row);
    }
    let summary = format!(
        "{} registry: {} packages listed, {} selectable",
        registry.label,
        registry.index.packages.len(),
        listed.iter().filter(|l| l.status.is_ok()).count()
    );
    // A listing is often piped into `head`: a closed pipe ends it quietly.
    let written = writeln!(
        std::io::stdout(),
        "{}",
        neutralise_controls(&format!("{table}\n{summary}"))
    );
    match written {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(error.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

fn validate(args: &RegistryArg) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let registry = load_registry_or_builtin(args.registry_dir.as_deref(), &args.allow_env.allowed()?)?;
    let elapsed = started.elapsed();
    let mut out = String::new();
    for warning in &registry.warnings {
        out.push_str(&format!("problem: {}\n", one_line_visible(warning)));
    }
    out.push_str(&render_differences(&runnable_specs(&registry)));
    out.push_str(&validation_summary(&registry, elapsed.as_secs_f64()));
    // Thousands of lines are often piped into `less` or `grep -A`: a closed pipe ends them
    // quietly.
    if let Err(error) = writeln!(std::io::stdout(), "{}", neutralise_controls(&out))
        && error.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(error.into());
    }
    Ok(if registry.warnings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The spec of every package a run can select by name (its file neither skips it nor leaves
/// it unenriched), in index order: what the registry can make workers run.
fn runnable_specs(registry: &LoadedRegistry) -> Vec<domain::PackageSpec> {
    registry
        .index
        .packages
        .iter()
        .filter_map(|index_entry| {
            let entry = registry.entries.get(&index_entry.name)?;
            if entry.exclusion(None).is_some() {
                return None;
            }
            entry.to_spec(&registry.dir, Some(index_entry)).ok()
        })
        .collect()
}

/// `laruche: 4999 packages in the index, 5000 files read in 0.84 s: 4999 usable, 0 reported; 1734 selectable`
fn validation_summary(registry: &LoadedRegistry, seconds: f64) -> String {
    let selectable = list_packages(&registry.index, &registry.entries, &registry.dir, None)
        .iter()
        .filter(|l| l.status.is_ok())
        .count();
    format!(
        "{}: {} packages in the index, {} files read in {seconds:.2} s: {} usable, {} reported; {selectable} selectable",
        registry.label,
        registry.index.packages.len(),
        registry.files_read,
        registry.entries.len(),
        registry.warnings.len(),
    )
}
