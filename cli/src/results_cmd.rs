//! The verbs that read a run: `show`, `flaky`, `compat`, `compare`, `report`, `export`. Each
//! takes a results folder, or a run id with `--coordinator URL`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::Args;
use domain::views::compare::{DEFAULT_THRESHOLD, compare, compare_rerun, render_compare};
use domain::views::compat::{compat_rows, render_compat};
use domain::views::export::{ExportFormat, export};
use domain::views::flaky::{analyse, is_flaky, render_flaky};
use domain::views::render::{ReportFormat, render_report};
use domain::views::report::{ReportInput, build_report};
use domain::views::show::{ShowFormat, ShowOptions, SortKey, render_show, show_json};

use crate::run_source::{LoadedRun, Outputs, RemoteArgs, load, print_text, write_output};

/// Flags of `ftsurvey show`; names follow the tool ftsurvey replaces.
#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// A results folder (`results/ft_YYYYMMDD_HHMMSS`), its `ft_results.jsonl`, or a run id
    /// with --coordinator.
    #[arg(value_name = "RUN")]
    pub(crate) run: String,
    /// Order of the package table: category (most severe first), pass_rate (lowest first) or name.
    #[arg(long, default_value = "category", env = "FTSURVEY_SHOW_SORT")]
    pub(crate) sort: SortKey,
    /// Show at most N packages in the table (the summary counts them all).
    #[arg(long, value_name = "N", env = "FTSURVEY_SHOW_LIMIT")]
    pub(crate) limit: Option<usize>,
    /// text, or json for scripts.
    #[arg(long, default_value = "text", env = "FTSURVEY_SHOW_FORMAT")]
    pub(crate) format: ShowFormat,
    #[command(flatten)]
    pub(crate) remote: RemoteArgs,
}

/// Flags of `ftsurvey flaky`.
#[derive(Debug, Args)]
pub(crate) struct FlakyArgs {
    /// A results folder, or a run id with --coordinator.
    #[arg(value_name = "RUN")]
    pub(crate) run: String,
    /// Deep dive on one package (any category).
    #[arg(long, value_name = "NAME")]
    pub(crate) package: Option<String>,
    /// text, or json for scripts.
    #[arg(long, default_value = "text")]
    pub(crate) format: ShowFormat,
    #[command(flatten)]
    pub(crate) remote: RemoteArgs,
}

/// Flags of `ftsurvey compat`.
#[derive(Debug, Args)]
pub(crate) struct CompatArgs {
    /// A results folder, or a run id with --coordinator.
    #[arg(value_name = "RUN")]
    pub(crate) run: String,
    /// Only packages with extension modules.
    #[arg(long)]
    pub(crate) extensions_only: bool,
    /// text, or json for scripts.
    #[arg(long, default_value = "text")]
    pub(crate) format: ShowFormat,
    #[command(flatten)]
    pub(crate) remote: RemoteArgs,
}

/// Flags of `ftsurvey compare`.
#[derive(Debug, Args)]
pub(crate) struct CompareArgs {
    /// The earlier run: a results folder, or a run id with --coordinator.
    #[arg(value_name = "RUN_A")]
    pub(crate) run_a: String,
    /// The later run.
    #[arg(value_name = "RUN_B")]
    pub(crate) run_b: String,
    /// Pass-rate changes smaller than this (0 to 1) are noise.
    #[arg(long, default_value_t = DEFAULT_THRESHOLD, value_parser = parse_fraction)]
    pub(crate) threshold: f64,
    /// text, or json for scripts.
    #[arg(long, default_value = "text")]
    pub(crate) format: ShowFormat,
    #[command(flatten)]
    pub(crate) remote: RemoteArgs,
}

/// Flags of `ftsurvey export`.
#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// A results folder, or a run id with --coordinator.
    #[arg(value_name = "RUN")]
    pub(crate) run: String,
    /// csv (one row per package, columns as the README lists), json or jsonl (every field).
    #[arg(long, default_value = "csv")]
    pub(crate) format: ExportFormat,
    /// Write to FILE instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) remote: RemoteArgs,
}

/// Flags of `ftsurvey report`.
#[derive(Debug, Args)]
pub(crate) struct ReportArgs {
    /// A results folder, or a run id with --coordinator.
    #[arg(value_name = "RUN")]
    pub(crate) run: String,
    /// markdown, text, or html (one self-contained page with a chart).
    #[arg(long, default_value = "markdown")]
    pub(crate) format: ReportFormat,
    /// Write to FILE instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,
    /// Registry to read download counts from, for the triage order (default: the counts the
    /// run recorded, else the run's registry if it is still there).
    #[arg(long, env = "FTSURVEY_REGISTRY_DIR", value_name = "DIR")]
    pub(crate) registry_dir: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) remote: RemoteArgs,
}

/// `ftsurvey show`.
pub(crate) fn run_show(args: &ShowArgs) -> anyhow::Result<()> {
    let run = load(&args.run, &args.remote, Outputs::None)?;
    let options = ShowOptions {
        sort: args.sort,
        limit: args.limit,
    };
    match args.format {
        ShowFormat::Text => print_text(&render_show(run.meta.as_ref(), &run.records, &options)),
        ShowFormat::Json => print_json(&show_json(run.meta.as_ref(), &run.records, &options))?,
    }
    Ok(())
}

/// `ftsurvey flaky`.
pub(crate) fn run_flaky(args: &FlakyArgs) -> anyhow::Result<()> {
    let run = load(&args.run, &args.remote, Outputs::None)?;
    let analyses: Vec<_> = match &args.package {
        Some(name) => {
            let record = find(&run, name)?;
            vec![analyse(record)]
        }
        None => run.records.iter().filter(|r| is_flaky(r)).map(analyse).collect(),
    };
    match args.format {
        ShowFormat::Text => print_text(&render_flaky(&analyses, args.package.is_some())),
        ShowFormat::Json => print_json(&analyses)?,
    }
    Ok(())
}

/// `ftsurvey compat`.
pub(crate) fn run_compat(args: &CompatArgs) -> anyhow::Result<()> {
    let run = load(&args.run, &args.remote, Outputs::None)?;
    let rows = compat_rows(&run.records, args.extensions_only);
    match args.format {
        ShowFormat::Text => print_text(&render_compat(&rows)),
        ShowFormat::Json => print_json(&rows)?,
    }
    Ok(())
}

/// `ftsurvey compare`.
pub(crate) fn run_compare(args: &CompareArgs) -> anyhow::Result<()> {
    let a = load(&args.run_a, &args.remote, Outputs::None)?;
    let b = load(&args.run_b, &args.remote, Outputs::None)?;
    let rerun_of = |later: &LoadedRun, earlier: &LoadedRun| {
        let of = later.meta.as_ref().and_then(|m| m.config.rerun_of.as_deref());
        of.is_some() && of == earlier.meta.as_ref().map(|m| m.run_id.as_str())
    };
    let comparison = if rerun_of(&b, &a) {
        compare_rerun(&a.name, &a.records, &b.name, &b.records, args.threshold)
    } else {
        compare(&a.name, &a.records, &b.name, &b.records, args.threshold)
    };
    match args.format {
        ShowFormat::Text => print_text(&render_compare(&comparison)),
        ShowFormat::Json => print_json(&comparison)?,
    }
    Ok(())
}

/// `ftsurvey report`.
pub(crate) fn run_report(args: &ReportArgs) -> anyhow::Result<()> {
    let run = load(&args.run, &args.remote, Outputs::Stalled)?;
    let downloads = download_counts(&run, args.registry_dir.as_deref())?;
    let blocks = build_report(&ReportInput {
        meta: run.meta.as_ref(),
        records: &run.records,
        download_counts: &downloads,
    });
    write_output(args.output.as_deref(), &render_report(&blocks, args.format), &run)
}

/// Download counts: from `--registry-dir` when given, else those the run recorded, else from
/// the run's registry if it is still readable.
fn download_counts(run: &LoadedRun, registry_dir: Option<&Path>) -> anyhow::Result<BTreeMap<String, u64>> {
    let from_registry = |dir: &Path| -> anyhow::Result<BTreeMap<String, u64>> {
        // Only the index's counts are read: which env keys packages may set does not matter.
        let registry = crate::registry_dir::load_registry(dir, &domain::registry::env::AllowedEnv::default())?;
        Ok(registry
            .index
            .packages
            .iter()
            .filter_map(|p| Some((p.name.clone(), p.download_count?)))
            .collect())
    };
    if let Some(dir) = registry_dir {
        return from_registry(dir);
    }
    let Some(meta) = &run.meta else {
        return Ok(BTreeMap::new());
    };
    if !meta.config.download_counts.is_empty() {
        return Ok(meta.config.download_counts.clone());
    }
    Ok(meta
        .config
        .registry_dir
        .as_deref()
        .and_then(|dir| from_registry(Path::new(dir)).ok())
        .unwrap_or_default())
}

/// `ftsurvey export`.
pub(crate) fn run_export(args: &ExportArgs) -> anyhow::Result<()> {
    // JSON carries every field of the results line, output tails included; CSV none of them.
    let outputs = match args.format {
        ExportFormat::Csv => Outputs::None,
        ExportFormat::Json | ExportFormat::Jsonl => Outputs::All,
    };
    let run = load(&args.run, &args.remote, outputs)?;
    let downloads = run
        .meta
        .as_ref()
        .map(|m| m.config.download_counts.clone())
        .unwrap_or_default();
    write_output(
        args.output.as_deref(),
        &export(&run.records, args.format, &downloads),
        &run,
    )
}

/// The record of `name`, or an error listing what the run has.
pub(crate) fn find<'a>(run: &'a LoadedRun, name: &str) -> anyhow::Result<&'a domain::results::PackageRecord> {
    if let Some(record) = run.records.iter().find(|r| r.package == name) {
        return Ok(record);
    }
    let mut names: Vec<&str> = run.records.iter().map(|r| r.package.as_str()).collect();
    names.sort_unstable();
    let shown = names.iter().take(10).copied().collect::<Vec<_>>().join(", ");
    let more = if names.len() > 10 { ", ..." } else { "" };
    bail!("package {name} is not in {}: it has {shown}{more}", run.name)
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn parse_fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err(format!("expected a fraction from 0 to 1, got {text:?}")),
    }
}
