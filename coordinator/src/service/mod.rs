//! The gRPC services and the one mapping from errors to `tonic::Status`.

pub(crate) mod survey;
pub(crate) mod worker;

use proto::WireError;
use tonic::Status;

use crate::store::StoreError;

/// Every error a service returns goes through here. By value, to serve as a `map_err` callback.
#[allow(clippy::needless_pass_by_value)]
pub(crate) fn status_from_store(error: StoreError) -> Status {
    match error {
        StoreError::RunNotFound(_) => Status::not_found(error.to_string()),
        StoreError::InvalidRun(_) => Status::invalid_argument(error.to_string()),
        StoreError::Database(_) | StoreError::Migrate(_) | StoreError::Corrupt(_) => {
            tracing::error!(error = %error, "store error");
            Status::internal(error.to_string())
        }
    }
}

#[allow(clippy::needless_pass_by_value)]
pub(crate) fn status_from_wire(error: WireError) -> Status {
    Status::invalid_argument(error.to_string())
}
