//! Talking to a coordinator over the network: connecting, and turning gRPC statuses into
//! one-line errors.

use anyhow::Context;
use proto::v1::survey_service_client::SurveyServiceClient;
use tonic::transport::Channel;

/// Connects to the coordinator at `url` (`http://HOST:PORT`).
pub(crate) async fn connect(url: &str) -> anyhow::Result<SurveyServiceClient<Channel>> {
    let channel = Channel::from_shared(url.to_string())
        .with_context(|| format!("bad coordinator url {url:?}"))?
        .connect()
        .await
        .with_context(|| format!("cannot connect to the coordinator at {url}"))?;
    Ok(SurveyServiceClient::new(channel)
        .max_decoding_message_size(coordinator::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(coordinator::MAX_MESSAGE_BYTES))
}

/// A gRPC status as an error whose message is the coordinator's.
pub(crate) fn status_error(status: &tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", status.message(), status.code())
}
