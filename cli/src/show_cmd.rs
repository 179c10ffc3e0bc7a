//! `ftsurvey show`: summarise a results folder.

use std::path::PathBuf;

use clap::Args;
use domain::show::{ShowOptions, SortKey, render_show};

use crate::results_dir::read_results_dir;

/// Flags of `ftsurvey show`.
#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// A results folder (`results/ft_YYYYMMDD_HHMMSS`).
    #[arg(value_name = "RESULTS_DIR")]
    pub(crate) results_dir: PathBuf,
    /// Order of the package table: category, pass_rate or name.
    #[arg(long, default_value = "category")]
    pub(crate) sort: SortKey,
    /// Show at most N packages.
    #[arg(long)]
    pub(crate) limit: Option<usize>,
}

pub(crate) fn run_show(args: &ShowArgs) -> anyhow::Result<()> {
    let read = read_results_dir(&args.results_dir)?;
    for warning in &read.warnings {
        eprintln!("warning: {warning}");
    }
    let options = ShowOptions {
        sort: args.sort,
        limit: args.limit,
    };
    print!("{}", render_show(read.meta.as_ref(), &read.records, &options));
    Ok(())
}
