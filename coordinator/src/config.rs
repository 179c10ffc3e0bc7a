//! What the coordinator is started with: the database, the lease timing, the tokens and TLS.

use std::time::Duration;

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

/// Timing of leases and the reaper.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How often workers must heartbeat.
    pub heartbeat_interval: Duration,
    /// How long a lease lasts without a heartbeat.
    pub lease_duration: Duration,
    /// Leases a job may get before it is recorded as lost.
    pub max_attempts: u32,
    /// How often expired leases are looked for.
    pub reap_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            heartbeat_interval: Duration::from_secs(2),
            lease_duration: Duration::from_secs(15),
            max_attempts: 3,
            reap_interval: Duration::from_secs(1),
        }
    }
}

/// Whether a token is set, without the token.
fn redact_token(token: Option<&str>) -> Option<&'static str> {
    token.map(|_| "<redacted>")
}

#[cfg(test)]
mod tests {
    use super::Config;

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

        let printed = format!("{:?}", Config::new("sqlite:///tmp/ftsurvey.db".to_string()));
        assert!(printed.contains("worker_token: None, client_token: None"), "{printed}");
    }
}
