//! The coordinator's one reading of the wall clock, passed as `now_ms` to the store and the hub.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, the store's clock.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
