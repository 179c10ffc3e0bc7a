//! The ftsurvey wire protocol, `ftsurvey.v1`, and its conversions to and from domain types.
//!
//! [`convert`] is the one place that converts between wire and domain types: the coordinator,
//! the worker and the CLI convert at their gRPC edges through it and work with domain types
//! inside.

#[allow(clippy::all, unreachable_pub, missing_debug_implementations)]
pub mod v1 {
    tonic::include_proto!("ftsurvey.v1");
}

pub mod auth;
pub mod convert;

pub use convert::WireError;

/// Largest message any peer of the protocol sends or accepts: the coordinator's services, the
/// worker's session and the CLI's client all set it on both directions.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Largest `JobOutcome` a worker sends and the coordinator accepts, encoded, well under
/// [`MAX_MESSAGE_BYTES`]. The bounds of `domain::bound` keep an outcome far below it; a worker
/// whose outcome is still larger reports a harness error in its place, and the coordinator
/// rejects one over it.
pub const MAX_OUTCOME_BYTES: usize = 1024 * 1024;

/// Largest message the coordinator reads from a worker's session: an outcome at its limit with
/// room to spare. A larger one ends the session.
pub const MAX_WORKER_MESSAGE_BYTES: usize = 4 * MAX_OUTCOME_BYTES;

/// Largest result page or run event the coordinator builds, encoded: a page of package results
/// is cut before it would pass this, so every reply stays far below [`MAX_MESSAGE_BYTES`]
/// however large the run. A package larger on its own is sent without its output tails.
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;
