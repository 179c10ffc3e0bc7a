//! The vocabulary of ftsurvey and its pure logic.
//!
//! Everything here is data and functions over data: no I/O, no async, no clocks. Callers pass
//! `now` and file contents in; the crates around this one do the reading, writing and talking.
//!
//! The root holds the vocabulary every crate speaks: ids, specs, outcomes and their evidence,
//! categories, runs, interpreters, the registry's closed vocabularies and its defaults, the
//! classification of a package's outcomes and the statistics of its pass rate, the bounds an
//! outcome must keep within and the time a job may take. Around it, by audience:
//! - [`readers`]: turning a test run's output into evidence (the worker);
//! - [`registry`]: the registry format and the choice of packages (the CLI);
//! - [`results`]: the records of a results folder, built from outcomes or read from files;
//! - [`views`]: what the CLI's verbs print from those records.
//!
//! Arrows go from the groups to the root and from views to results, never back.

pub mod bound;
pub mod budget;
pub mod category;
pub mod classify;
pub mod evidence;
pub mod ids;
pub mod interpreter;
pub mod iteration_log;
pub mod outcome;
pub mod package_defaults;
pub mod package_kind;
pub mod readers;
pub mod registry;
pub mod results;
pub mod run;
pub mod spec;
pub mod stats;
pub mod views;

pub use category::Category;
pub use classify::{PackageResult, StatusCounts, classify};
pub use ids::{JobId, LeaseToken, RunId, WorkerId};
pub use interpreter::{InterpreterProfile, InterpreterRequirement};
pub use iteration_log::{IterationLogKey, LogRequest, LogStream};
pub use outcome::{IterationOutcome, IterationStatus, JobResult, SetupFailure, SetupStage};
pub use run::{Assignment, OutcomeAck, RunState, RunSummary};
pub use spec::{Mode, PackageSpec, RunSpec, Source};
