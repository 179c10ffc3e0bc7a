//! Identifier newtypes, so a run id is never mistaken for a job id or a worker name.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Identifies a run. UUIDv7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(Uuid);

impl RunId {
    /// A new id whose time part is `unix_ms`.
    pub fn new_at(unix_ms: u64) -> Self {
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, unix_ms / 1000, ((unix_ms % 1000) * 1_000_000) as u32);
        RunId(Uuid::new_v7(ts))
    }

    pub fn from_uuid(uuid: Uuid) -> Self {
        RunId(uuid)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for RunId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s.trim())
            .map(RunId)
            .map_err(|_| IdError::Run(s.to_string()))
    }
}

/// Identifies one job: a (run, package, mode, iteration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub i64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The fencing token of one lease on a job: a write carrying an older token is rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseToken(Uuid);

impl LeaseToken {
    pub fn random() -> Self {
        LeaseToken(Uuid::new_v4())
    }

    pub fn from_uuid(uuid: Uuid) -> Self {
        LeaseToken(uuid)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for LeaseToken {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s.trim())
            .map(LeaseToken)
            .map_err(|_| IdError::LeaseToken(s.to_string()))
    }
}

/// Names a worker; chosen by the worker (host name and process id by default).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkerId(String);

impl WorkerId {
    /// A worker id is 1 to 128 printable characters without spaces.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let ok = !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_graphic());
        if ok {
            Ok(WorkerId(s.to_string()))
        } else {
            Err(IdError::Worker(s.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An identifier that did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("invalid run id {0:?}: expected a UUID")]
    Run(String),
    #[error("invalid lease token {0:?}: expected a UUID")]
    LeaseToken(String),
    #[error("invalid worker id {0:?}: expected 1 to 128 printable characters without spaces")]
    Worker(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_sort_by_creation_time() {
        let earlier = RunId::new_at(1_700_000_000_000);
        let later = RunId::new_at(1_700_000_000_001);
        assert!(earlier < later);
    }

    #[test]
    fn run_id_round_trips_through_text() {
        let id = RunId::new_at(1_700_000_000_000);
        assert_eq!(id.to_string().parse::<RunId>().unwrap(), id);
        assert!("not-a-uuid".parse::<RunId>().is_err());
    }

    #[test]
    fn worker_id_rejects_empty_and_spaces() {
        assert!(WorkerId::parse("").is_err());
        assert!(WorkerId::parse("a b").is_err());
        assert_eq!(WorkerId::parse("host-1.42").unwrap().as_str(), "host-1.42");
    }
}
