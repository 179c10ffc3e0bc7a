//! The ftsurvey coordinator: keeps runs and jobs in a store, hands jobs to workers under
//! leases, and serves the client and worker gRPC services.
//!
//! [`run`] is the whole server: it takes an open listener and a shutdown token, so the
//! embedded CLI, the `serve` command and the tests all start it the same way.

mod batch;
mod clock;
mod hub;
mod reaper;
mod service;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use proto::auth::RequireToken;
use proto::v1::survey_service_server::SurveyServiceServer;
use proto::v1::worker_service_server::WorkerServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;

use crate::hub::Hub;
use crate::service::survey::Survey;
use crate::service::worker::Workers;

/// Largest message either service accepts or sends.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

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

/// Runs the coordinator on `listener` until `shutdown` is cancelled.
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let store = store::open(&config.database_url)
        .await
        .with_context(|| format!("cannot open the store at {}", store::redact_url(&config.database_url)))?;
    let hub = Arc::new(Hub::new(store, config.settings));
    let reaper = tokio::spawn(reaper::run(hub.clone(), shutdown.clone()));

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<SurveyServiceServer<Survey>>().await;
    health_reporter.set_serving::<WorkerServiceServer<Workers>>().await;
    let survey = SurveyServiceServer::new(Survey {
        hub: hub.clone(),
        shutdown: shutdown.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let survey = InterceptedService::new(survey, RequireToken::new(config.client_token.as_deref(), "client"));
    let workers = WorkerServiceServer::new(Workers {
        hub: hub.clone(),
        shutdown: shutdown.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let workers = InterceptedService::new(workers, RequireToken::new(config.worker_token.as_deref(), "worker"));

    let address = listener.local_addr().context("listener has no address")?;
    tracing::info!(%address, tls = config.tls.is_some(), "coordinator listening");
    // Small messages both ways (credits, assignments, acks): send each at once rather than
    // waiting for the peer's delayed ACK; keepalive finds peers that vanished from the network.
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(30)));
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        let identity = tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem);
        server = server
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .context("invalid TLS certificate or key")?;
    }
    server
        .add_service(health_service)
        .add_service(survey)
        .add_service(workers)
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled())
        .await
        .context("grpc server failed")?;
    reaper.await.context("reaper task panicked")?;
    Ok(())
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
