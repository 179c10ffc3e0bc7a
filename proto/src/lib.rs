//! The ftsurvey wire protocol, `ftsurvey.v1`, and its conversions to and from domain types.
//!
//! This is the only crate that names both wire and domain types: the coordinator and the
//! worker convert at their gRPC edges through [`convert`] and work with domain types inside.

#[allow(clippy::all, unreachable_pub, missing_debug_implementations)]
pub mod v1 {
    tonic::include_proto!("ftsurvey.v1");
}

pub mod auth;
pub mod convert;

pub use convert::WireError;
