//! The ftsurvey coordinator: keeps runs and jobs in a store, hands jobs to workers under
//! leases, and serves the client and worker gRPC services.
//!
//! [`run`] is the whole server: it takes an open listener and a shutdown token, so the
//! embedded CLI, the `serve` command and the tests all start it the same way.

mod batch;
mod clock;
mod config;
mod health;
mod hub;
mod reaper;
mod retention;
mod service;
pub mod store;

pub use config::{Config, Settings, TlsFiles, parse_worker_tokens};

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

/// Requests a connection may have open at once: a worker needs one session, a client a few
/// calls and watches.
const MAX_STREAMS_PER_CONNECTION: u32 = 32;

/// Runs the coordinator on `listener` until `shutdown` is cancelled.
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let store = store::open(&config.database_url)
        .await
        .with_context(|| format!("cannot open the store at {}", store::redact_url(&config.database_url)))?;
    let hub = Arc::new(Hub::new(store, config.settings));
    let reaper = tokio::spawn(reaper::run(hub.clone(), shutdown.clone()));
    let retention = tokio::spawn(retention::run(hub.clone(), shutdown.clone()));

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<SurveyServiceServer<Survey>>().await;
    health_reporter.set_serving::<WorkerServiceServer<Workers>>().await;
    let health = tokio::spawn(health::run(hub.clone(), health_reporter, shutdown.clone()));
    let survey = SurveyServiceServer::new(Survey {
        hub: hub.clone(),
        shutdown: shutdown.clone(),
        feeds: Default::default(),
    })
    .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
    .max_encoding_message_size(proto::MAX_MESSAGE_BYTES);
    let survey = InterceptedService::new(survey, RequireToken::new(config.client_token.as_deref(), "client"));
    let workers = WorkerServiceServer::new(Workers {
        hub: hub.clone(),
        shutdown: shutdown.clone(),
        bound_ids: Arc::new(config.worker_tokens.iter().map(|(id, _)| id.clone()).collect()),
    })
    .max_decoding_message_size(proto::MAX_WORKER_MESSAGE_BYTES)
    .max_encoding_message_size(proto::MAX_MESSAGE_BYTES);
    let require_worker = RequireToken::new(config.worker_token.as_deref(), "worker").with_bound_tokens(
        config
            .worker_tokens
            .iter()
            .map(|(id, token)| (id.as_str(), token.as_str())),
    );
    let workers = InterceptedService::new(workers, require_worker);

    let address = listener.local_addr().context("listener has no address")?;
    tracing::info!(%address, tls = config.tls.is_some(), "coordinator listening");
    // Small messages both ways (credits, assignments, acks): send each at once rather than
    // waiting for the peer's delayed ACK; keepalive finds peers that vanished from the network.
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(30)));
    // Each connection is held to a few streams and small headers, and one that stops answering
    // HTTP/2 pings is closed (its session ends and its leases go back to the queue).
    let mut server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .concurrency_limit_per_connection(MAX_STREAMS_PER_CONNECTION as usize)
        .http2_max_header_list_size(Some(16 * 1024));
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
    retention.await.context("retention task panicked")?;
    health.await.context("health task panicked")?;
    Ok(())
}
