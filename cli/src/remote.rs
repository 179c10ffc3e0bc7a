//! Talking to a coordinator over the network: connecting (with a client token and TLS when
//! asked), and turning gRPC statuses into one-line errors.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use proto::auth::BearerToken;
use proto::v1::survey_service_client::SurveyServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A client of a coordinator's survey service.
pub(crate) type Client = SurveyServiceClient<InterceptedService<Channel, BearerToken>>;

/// How to reach a coordinator.
#[derive(Debug, Clone, Args)]
pub(crate) struct CoordinatorArgs {
    /// The coordinator, e.g. `http://coordinator:50051` (`https://` with TLS).
    #[arg(long, env = "FTSURVEY_COORDINATOR", value_name = "URL")]
    pub(crate) coordinator: String,
    /// The bearer token the coordinator requires of clients.
    #[arg(long = "token", env = "FTSURVEY_CLIENT_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// Trust this CA certificate (PEM) for an `https://` coordinator.
    #[arg(long, env = "FTSURVEY_CA_CERT", value_name = "FILE")]
    pub(crate) ca_cert: Option<PathBuf>,
}

/// Connects to the coordinator at `url` (`http://HOST:PORT`, or `https://` with `ca_cert`).
pub(crate) async fn connect(url: &str, token: Option<&str>, ca_cert: Option<&PathBuf>) -> anyhow::Result<Client> {
    let mut endpoint = Channel::from_shared(url.to_string())
        .with_context(|| format!("bad coordinator url {url:?}"))?
        .connect_timeout(std::time::Duration::from_secs(10));
    if let Some(path) = ca_cert {
        let pem = std::fs::read(path).with_context(|| format!("cannot read --ca-cert {}", path.display()))?;
        endpoint = endpoint
            .tls_config(
                tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(pem)),
            )
            .context("invalid TLS settings")?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to the coordinator at {url}"))?;
    let token = BearerToken::new(token).map_err(|e| anyhow::anyhow!("invalid --token: {e}"))?;
    Ok(SurveyServiceClient::with_interceptor(channel, token)
        .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(proto::MAX_MESSAGE_BYTES))
}

impl CoordinatorArgs {
    pub(crate) async fn connect(&self) -> anyhow::Result<Client> {
        connect(&self.coordinator, self.token.as_deref(), self.ca_cert.as_ref()).await
    }
}

/// A gRPC status as an error whose message is the coordinator's.
pub(crate) fn status_error(status: &tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", status.message(), status.code())
}
