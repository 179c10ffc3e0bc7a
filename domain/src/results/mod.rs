//! The records a run leaves: `ft_meta.json` and `ft_results.jsonl`, what builds them from
//! outcomes, and how the old tool's shapes read into them.
//!
//! The views read these records; nothing here reads a view.

pub(crate) mod labeille;
mod records;
mod test_failures;

pub use records::{IterationRecord, PackageRecord, RunConfig, RunMeta, SystemInfo};
pub use test_failures::{TestFailures, flaky_test_counts, test_failures};
