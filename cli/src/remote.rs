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

/// `--ca-cert`: the CA certificate that vouches for an `https://` coordinator, taken alike by
/// workers and clients.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct CaCertArg {
    /// Trust this CA certificate (PEM) for an `https://` coordinator.
    #[arg(long, env = "FTSURVEY_CA_CERT", value_name = "FILE")]
    pub(crate) ca_cert: Option<PathBuf>,
}

/// What a client brings to a coordinator: `--token` and `--ca-cert`. Workers have a token of
/// their own (`worker --token`), so they take only [`CaCertArg`].
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct ClientCredentials {
    /// The bearer token the coordinator requires of clients.
    #[arg(long = "token", env = "FTSURVEY_CLIENT_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    #[command(flatten)]
    pub(crate) ca: CaCertArg,
}

/// A coordinator to reach as a client: `--coordinator` and the client's credentials. `run`
/// and the result verbs, where `--coordinator` is optional and says what the command does,
/// make one with [`ClientCredentials::at`].
#[derive(Debug, Clone, Args)]
pub(crate) struct CoordinatorArgs {
    /// The coordinator, e.g. `http://coordinator:50051` (`https://` with TLS).
    #[arg(long, env = "FTSURVEY_COORDINATOR", value_name = "URL")]
    pub(crate) coordinator: String,
    #[command(flatten)]
    pub(crate) credentials: ClientCredentials,
}

impl CaCertArg {
    /// The certificate's PEM, when one is given.
    pub(crate) fn read_pem(&self) -> anyhow::Result<Option<Vec<u8>>> {
        self.ca_cert
            .as_ref()
            .map(|path| std::fs::read(path).with_context(|| format!("cannot read --ca-cert {}", path.display())))
            .transpose()
    }
}

impl ClientCredentials {
    /// These credentials for the coordinator at `url`.
    pub(crate) fn at(&self, url: &str) -> CoordinatorArgs {
        CoordinatorArgs {
            coordinator: url.to_string(),
            credentials: self.clone(),
        }
    }
}

impl CoordinatorArgs {
    /// Connects to the coordinator with the client's credentials.
    pub(crate) async fn connect(&self) -> anyhow::Result<Client> {
        connect(&self.coordinator, &self.credentials).await
    }
}

/// Connects to the coordinator at `url` (`http://HOST:PORT`, or `https://` with a CA
/// certificate).
pub(crate) async fn connect(url: &str, credentials: &ClientCredentials) -> anyhow::Result<Client> {
    proto::auth::check_transport(url, credentials.ca.ca_cert.is_some()).map_err(anyhow::Error::msg)?;
    let token = BearerToken::new(credentials.token.as_deref()).map_err(|e| anyhow::anyhow!("invalid --token: {e}"))?;
    let mut endpoint = Channel::from_shared(url.to_string())
        .with_context(|| format!("bad coordinator url {url:?}"))?
        .connect_timeout(std::time::Duration::from_secs(10));
    if let Some(pem) = credentials.ca.read_pem()? {
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
    Ok(SurveyServiceClient::with_interceptor(channel, token)
        .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(proto::MAX_MESSAGE_BYTES))
}

/// A gRPC status as an error whose message is the coordinator's.
pub(crate) fn status_error(status: &tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", status.message(), status.code())
}

/// Every package result of a run that `request` selects, read a page at a time (the request's
/// page token is the first page's), as domain results.
pub(crate) async fn all_results(
    client: &mut Client,
    mut request: proto::v1::QueryPackageResultsRequest,
) -> anyhow::Result<Vec<domain::PackageResult>> {
    let mut results = Vec::new();
    loop {
        let page = client
            .query_package_results(request.clone())
            .await
            .map_err(|s| status_error(&s))?
            .into_inner();
        for result in page.results {
            results.push(domain::PackageResult::try_from(result)?);
        }
        if page.next_page_token.is_empty() {
            return Ok(results);
        }
        request.page_token = page.next_page_token;
    }
}
