//! The gRPC services and the one mapping from errors to `tonic::Status`.

mod feed;
mod results;
mod session;
pub(crate) mod survey;
pub(crate) mod worker;

use std::future::Future;

use proto::WireError;
use tonic::Status;

use crate::batch::BatchError;
use crate::hub::Hub;
use crate::store::StoreError;

/// Maps the error of a service's own store call, and logs it when it is the store's fault
/// (a missing or invalid run is the caller's: the status says so, nothing is logged). By
/// value, to serve as a `map_err` callback.
#[allow(clippy::needless_pass_by_value)]
pub(crate) fn status_from_store(error: StoreError) -> Status {
    match internal_error_id(&error) {
        Some(id) => {
            tracing::error!(error.id = %id, error = %error, "store error");
            internal_status(&id)
        }
        None => caller_status(&error),
    }
}

/// Maps an error of the batcher. Not logged: the batcher logged the store's error where its
/// batch failed, once for all the requests it served.
#[allow(clippy::needless_pass_by_value)]
pub(crate) fn status_from_batch(error: BatchError) -> Status {
    match &error {
        BatchError::Store(store_error) => match internal_error_id(store_error) {
            Some(id) => {
                tracing::warn!(error.id = %id, error = %store_error, "store error answered to a peer");
                internal_status(&id)
            }
            None => caller_status(store_error),
        },
        BatchError::ShuttingDown => Status::unavailable(error.to_string()),
    }
}

#[allow(clippy::needless_pass_by_value)]
pub(crate) fn status_from_wire(error: WireError) -> Status {
    Status::invalid_argument(error.to_string())
}

/// A fresh id for a store error that is the coordinator's fault (the ones worth retrying),
/// `None` for the caller's own mistakes.
fn internal_error_id(error: &StoreError) -> Option<String> {
    error
        .is_retryable()
        .then(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_string())
}

/// An internal error as peers see it: its id, never its details (SQL, table names, paths),
/// which the coordinator's log keeps under that id.
fn internal_status(id: &str) -> Status {
    Status::internal(format!("internal error {id}; the coordinator's log has the details"))
}

/// The status of a store error that is the caller's: a run that does not exist or is invalid.
fn caller_status(error: &StoreError) -> Status {
    match error {
        StoreError::RunNotFound(_) => Status::not_found(error.to_string()),
        _ => Status::invalid_argument(error.to_string()),
    }
}

/// A unary call's store request, answered within the coordinator's `store_answer_timeout`: a
/// database that hangs answers the caller with `DeadlineExceeded` instead of holding the call
/// open for ever.
pub(crate) async fn answer<T>(request: impl Future<Output = Result<T, StoreError>>, hub: &Hub) -> Result<T, Status> {
    let timeout = hub.settings.store_answer_timeout;
    match tokio::time::timeout(timeout, request).await {
        Ok(answered) => answered.map_err(status_from_store),
        Err(_) => {
            tracing::error!(?timeout, "the store did not answer a call in time");
            Err(Status::deadline_exceeded(format!(
                "the store did not answer within {} s",
                timeout.as_secs_f64()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use domain::RunId;
    use tonic::Code;

    use super::{status_from_batch, status_from_store};
    use crate::batch::BatchError;
    use crate::store::StoreError;

    const KINDS: usize = 5;

    /// One store error of each kind; the same errors at every call.
    fn store_error(kind: usize) -> StoreError {
        match kind {
            0 => StoreError::RunNotFound(RunId::from_uuid(uuid::Uuid::nil())),
            1 => StoreError::InvalidRun("no packages".into()),
            2 => StoreError::Database(sqlx::Error::PoolTimedOut),
            3 => StoreError::Migrate(sqlx::migrate::MigrateError::VersionMissing(1)),
            _ => StoreError::Corrupt("bad state".into()),
        }
    }

    #[test]
    fn store_errors_worth_retrying_are_exactly_the_internal_ones() {
        for kind in 0..KINDS {
            let error = store_error(kind);
            let retryable = error.is_retryable();
            let code = status_from_store(error).code();
            assert_eq!(retryable, code == Code::Internal, "{code:?}");
        }
    }

    #[test]
    fn internal_errors_reach_peers_as_an_id_without_their_details() {
        for kind in [2, 3, 4] {
            let details = store_error(kind).to_string();
            for status in [
                status_from_store(store_error(kind)),
                status_from_batch(BatchError::Store(Arc::new(store_error(kind)))),
            ] {
                assert_eq!(status.code(), Code::Internal);
                assert!(status.message().starts_with("internal error "), "{}", status.message());
                assert!(
                    !status.message().contains(&details),
                    "{} leaks {details}",
                    status.message()
                );
            }
        }
        let not_found = status_from_store(store_error(0));
        assert!(not_found.message().contains("not found") || not_found.code() == Code::NotFound);
    }

    #[test]
    fn a_batch_error_has_the_status_of_its_store_error_or_unavailable_when_shutting_down() {
        for kind in 0..KINDS {
            let expected = status_from_store(store_error(kind));
            let status = status_from_batch(BatchError::Store(Arc::new(store_error(kind))));
            assert_eq!(status.code(), expected.code());
            if status.code() != Code::Internal {
                assert_eq!(status.message(), expected.message());
            }
        }
        assert_eq!(status_from_batch(BatchError::ShuttingDown).code(), Code::Unavailable);
    }
}
