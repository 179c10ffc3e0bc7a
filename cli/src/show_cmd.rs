//! `ftsurvey show`: summarise a results folder.

use std::path::PathBuf;

use clap::Args;
use domain::show::{ShowOptions, SortKey, render_show};

use crate::results_dir::read_results_dir;

/// Flags of `ftsurvey show`; names follow the tool ftsurvey replaces.
#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// A results folder (`results/ft_YYYYMMDD_HHMMSS`) or its `ft_results.jsonl`.
    #[arg(value_name = "RESULTS_DIR")]
    pub(crate) results_dir: PathBuf,
    /// Order of the package table: category (most severe first), pass_rate (lowest first) or name.
    #[arg(long, default_value = "category", env = "FTSURVEY_SHOW_SORT")]
    pub(crate) sort: SortKey,
    /// Show at most N packages in the table (the summary counts them all).
    #[arg(long, value_name = "N", env = "FTSURVEY_SHOW_LIMIT")]
    pub(crate) limit: Option<usize>,
}

/// Prints the view of the folder to stdout, and what could not be read to stderr.
pub(crate) fn run_show(args: &ShowArgs) -> anyhow::Result<()> {
    let (meta, records, warnings) = read_results_dir(&args.results_dir)?;
    for warning in &warnings {
        eprintln!("warning: {warning}");
    }
    let options = ShowOptions {
        sort: args.sort,
        limit: args.limit,
    };
    print!("{}", render_show(meta.as_ref(), &records, &options));
    Ok(())
}
