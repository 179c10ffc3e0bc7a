//! The ftsurvey coordinator: keeps runs and jobs in a store, hands jobs to workers under
//! leases, and serves the client and worker gRPC services.
//!
//! [`run`] is the whole server: it takes an open listener and a shutdown token, so the
//! embedded CLI, the `serve` command and the tests all start it the same way.

mod hub;
mod reaper;
mod service;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use proto::v1::survey_service_server::SurveyServiceServer;
use proto::v1::worker_service_server::WorkerServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::service::survey::Survey;
use crate::service::worker::Workers;

/// Largest message either service accepts or sends.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// What the coordinator needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// `sqlite://PATH` (created if missing).
    pub database_url: String,
    pub settings: Settings,
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
    let workers = WorkerServiceServer::new(Workers {
        hub: hub.clone(),
        shutdown: shutdown.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);

    let address = listener.local_addr().context("listener has no address")?;
    tracing::info!(%address, "coordinator listening");
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(survey)
        .add_service(workers)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown.cancelled())
        .await
        .context("grpc server failed")?;
    reaper.await.context("reaper task panicked")?;
    Ok(())
}
