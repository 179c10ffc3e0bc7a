//! The vocabulary of ftsurvey and its pure logic.
//!
//! Everything here is data and functions over data: no I/O, no async, no clocks.
//! Callers pass `now` and file contents in; the crates around this one do the reading,
//! writing and talking.

pub mod category;
pub mod classify;
pub mod compare;
pub mod compat;
pub mod evidence;
pub mod export;
pub mod faulthandler;
pub mod flaky;
pub mod ids;
pub mod interpreter;
pub mod junit;
pub mod outcome;
pub mod package_kind;
pub mod plan;
pub mod registry;
pub mod report;
pub mod report_render;
pub mod results;
pub mod run;
pub mod run_parallel;
mod seed;
pub mod show;
pub mod spec;
pub mod stats;
pub mod text;
pub mod tsan;
pub mod unittest;
pub mod wheels;

pub use category::Category;
pub use classify::{PackageResult, StatusCounts, classify};
pub use ids::{JobId, LeaseToken, RunId, WorkerId};
pub use interpreter::{InterpreterProfile, InterpreterRequirement};
pub use outcome::{IterationOutcome, IterationStatus, JobResult, SetupFailure, SetupStage};
pub use run::{Assignment, OutcomeAck, RunState, RunSummary};
pub use spec::{Mode, PackageSpec, RunSpec, Source};
