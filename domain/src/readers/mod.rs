//! Readers of what a test run leaves behind: JUnit XML, unittest's summary, faulthandler's
//! crash signatures and stacks, ThreadSanitizer reports, pytest-run-parallel's counts.
//!
//! The worker uses them to turn an iteration's output into [`crate::evidence`]. They take text
//! and return evidence; they read no files.

pub mod faulthandler;
pub mod junit;
pub mod run_parallel;
pub mod tsan;
pub mod unittest;
