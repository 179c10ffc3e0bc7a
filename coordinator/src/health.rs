//! The gRPC health service's word on the coordinator: `SERVING` while the store answers,
//! `NOT_SERVING` while it does not, so a load balancer or an orchestrator's probe stops
//! sending work to a coordinator that cannot record it.

use std::sync::Arc;
use std::time::Duration;

use proto::v1::survey_service_server::SurveyServiceServer;
use proto::v1::worker_service_server::WorkerServiceServer;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::hub::Hub;
use crate::service::survey::Survey;
use crate::service::worker::Workers;

/// How often the store is asked.
const PING_EVERY: Duration = Duration::from_secs(2);
/// A ping not answered within this is a store that does not answer.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Pings the store until `shutdown`, and tells the health service, for the whole server and
/// each service, whether it answers.
pub(crate) async fn run(hub: Arc<Hub>, reporter: HealthReporter, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut serving = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let answer = match tokio::time::timeout(PING_TIMEOUT, hub.store.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {} s", PING_TIMEOUT.as_secs())),
        };
        if answer.is_ok() == serving {
            continue;
        }
        serving = answer.is_ok();
        let status = match &answer {
            Ok(()) => {
                tracing::info!("the store answers again: serving");
                ServingStatus::Serving
            }
            Err(error) => {
                tracing::error!(%error, "the store does not answer: not serving");
                ServingStatus::NotServing
            }
        };
        reporter.set_service_status("", status).await;
        reporter
            .set_service_status(service_name::<SurveyServiceServer<Survey>>(), status)
            .await;
        reporter
            .set_service_status(service_name::<WorkerServiceServer<Workers>>(), status)
            .await;
    }
}

fn service_name<S: tonic::server::NamedService>() -> &'static str {
    S::NAME
}
