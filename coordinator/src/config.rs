//! What the coordinator is started with: the database, the lease timing, the tokens and TLS.

use std::time::Duration;

use domain::WorkerId;

use crate::store;

/// What the coordinator needs to run. Its `Debug` output hides the database password and
/// the tokens.
#[derive(Clone)]
pub struct Config {
    /// `postgres://...` or `sqlite://PATH` (created if missing).
    pub database_url: String,
    pub settings: Settings,
    /// Bearer tokens required of workers and of clients; `None` requires none.
    pub worker_token: Option<String>,
    pub client_token: Option<String>,
    /// Tokens each bound to one worker id (see [`parse_worker_tokens`]): a session opened
    /// with one may only be that worker, and that worker may only connect with it.
    pub worker_tokens: Vec<(WorkerId, String)>,
    /// Serve TLS with this certificate chain and key (PEM).
    pub tls: Option<TlsFiles>,
}

impl Config {
    /// A coordinator on `database_url` with default timing, no tokens and no TLS.
    pub fn new(database_url: String) -> Self {
        Config {
            database_url,
            settings: Settings::default(),
            worker_token: None,
            client_token: None,
            worker_tokens: Vec::new(),
            tls: None,
        }
    }
}

// By hand, as a config gets logged and printed: the URL's password and the tokens stay out.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &store::redact_url(&self.database_url))
            .field("settings", &self.settings)
            .field("worker_token", &redact_token(self.worker_token.as_deref()))
            .field("client_token", &redact_token(self.client_token.as_deref()))
            .field(
                "worker_tokens",
                &self.worker_tokens.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
            )
            .field("tls", &self.tls)
            .finish()
    }
}

/// A TLS identity, read from PEM files.
#[derive(Clone)]
pub struct TlsFiles {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsFiles { .. }")
    }
}

/// Timing of leases, the reaper and retention.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How often workers must heartbeat.
    pub heartbeat_interval: Duration,
    /// How long a lease lasts without a heartbeat.
    pub lease_duration: Duration,
    /// Leases a job may get before it is recorded as lost, or, when its setup failed for the
    /// infrastructure on each, recorded as `infra_error`.
    pub max_attempts: u32,
    /// How long a job whose setup failed for the infrastructure waits for a worker it has
    /// not failed on before the workers it failed on may take it again.
    pub retry_elsewhere: Duration,
    /// How often expired leases are looked for.
    pub reap_interval: Duration,
    /// The longest a client's call waits for the store before `DeadlineExceeded`. A submit of
    /// the largest run allowed (2,000,000 jobs) takes well under the default.
    pub store_answer_timeout: Duration,
    /// How long a finished or cancelled run's jobs stay in the table dispatch reads before
    /// they are archived (zero: as soon as the run finishes); `None` keeps them there.
    pub keep_finished_jobs: Option<Duration>,
}

/// A day: a finished run's jobs stay where dispatch reads them while a re-run or a look at
/// the queue is likely, then move to the archive, whose reads answer the same.
const DEFAULT_KEEP_FINISHED_JOBS: Duration = Duration::from_secs(24 * 3600);

impl Default for Settings {
    fn default() -> Self {
        Settings {
            heartbeat_interval: Duration::from_secs(2),
            lease_duration: Duration::from_secs(15),
            max_attempts: 3,
            retry_elsewhere: Duration::from_secs(30),
            reap_interval: Duration::from_secs(1),
            store_answer_timeout: Duration::from_secs(120),
            keep_finished_jobs: Some(DEFAULT_KEEP_FINISHED_JOBS),
        }
    }
}

/// Reads a file of per-worker tokens: one `WORKER_ID TOKEN` per line, blank lines and lines
/// starting with `#` left out. Each id and each token once; a token of 16 characters at least.
pub fn parse_worker_tokens(text: &str) -> Result<Vec<(WorkerId, String)>, String> {
    let mut tokens: Vec<(WorkerId, String)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |what: String| format!("line {}: {what}", n + 1);
        let mut fields = line.split_whitespace();
        let (Some(id), Some(token), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(at("expected WORKER_ID TOKEN".into()));
        };
        let id = WorkerId::parse(id).map_err(|e| at(format!("invalid worker id: {e}")))?;
        if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(at(format!(
                "the token of {id} must be 16 printable characters at least"
            )));
        }
        if tokens.iter().any(|(other, _)| *other == id) {
            return Err(at(format!("worker {id} has a token already")));
        }
        if tokens.iter().any(|(_, other)| other == token) {
            return Err(at(format!("the token of {id} is another worker's too")));
        }
        tokens.push((id, token.to_string()));
    }
    Ok(tokens)
}

/// Whether a token is set, without the token.
fn redact_token(token: Option<&str>) -> Option<&'static str> {
    token.map(|_| "<redacted>")
}

#[cfg(test)]
mod tests {
    use super::{Config, parse_worker_tokens};

    #[test]
    fn a_worker_tokens_file_binds_each_id_to_one_token() {
        let tokens = parse_worker_tokens("# fleet\n\nw1 token-of-w1-0123456789\n  w2\ttoken-of-w2-0123456789  \n")
            .expect("valid");
        let ids: Vec<&str> = tokens.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["w1", "w2"]);
        assert_eq!(tokens[1].1, "token-of-w2-0123456789");
        for (text, error) in [
            ("w1", "line 1: expected WORKER_ID TOKEN"),
            ("w1 a b", "line 1: expected WORKER_ID TOKEN"),
            (
                "w1 short",
                "line 1: the token of w1 must be 16 printable characters at least",
            ),
            (
                "w1 token-of-w1-0123456789\nw1 token-of-w1-9876543210",
                "line 2: worker w1 has a token already",
            ),
            (
                "w1 token-of-w1-0123456789\nw2 token-of-w1-0123456789",
                "line 2: the token of w2 is another worker's too",
            ),
        ] {
            assert_eq!(parse_worker_tokens(text).unwrap_err(), error, "{text}");
        }
        assert!(
            parse_worker_tokens("w\u{7} token-0123456789abcdef")
                .unwrap_err()
                .starts_with("line 1: invalid worker id")
        );
    }

    #[test]
    fn a_configs_debug_output_names_the_database_host_but_no_password_or_token() {
        let config = Config {
            worker_token: Some("worker-token-7f3a".to_string()),
            client_token: Some("client-token-91bc".to_string()),
            ..Config::new("postgres://survey:pg-password-c2d4@db.example:5432/ftsurvey".to_string())
        };
        let printed = format!("{config:?}");
        for secret in ["pg-password-c2d4", "worker-token-7f3a", "client-token-91bc"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert!(
            printed.contains("postgres://survey:***@db.example:5432/ftsurvey"),
            "{printed}"
        );
        assert!(printed.contains(r#"worker_token: Some("<redacted>")"#), "{printed}");
        assert!(printed.contains(r#"client_token: Some("<redacted>")"#), "{printed}");

        let config = Config {
            worker_tokens: parse_worker_tokens("w1 bound-token-0123456789").expect("tokens"),
            ..Config::new("sqlite:///tmp/ftsurvey.db".to_string())
        };
        let printed = format!("{config:?}");
        assert!(!printed.contains("bound-token-0123456789"), "{printed}");
        assert!(printed.contains(r#"worker_tokens: ["w1"]"#), "{printed}");

        let printed = format!("{:?}", Config::new("sqlite:///tmp/ftsurvey.db".to_string()));
        assert!(printed.contains("worker_token: None, client_token: None"), "{printed}");
    }
}
