//! Harness for the end-to-end tests: a coordinator on loopback, raw worker sessions, the CLI.

pub mod cpu;
pub mod postgres;
pub mod scale;

use std::path::{Path, PathBuf};
use std::time::Duration;

use domain::InterpreterProfile;
use proto::v1;
use proto::v1::survey_service_client::SurveyServiceClient;
use proto::v1::worker_service_client::WorkerServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// A coordinator on `127.0.0.1:0` with a SQLite store in a temp dir (or another database);
/// stopped on drop.
#[derive(Debug)]
pub struct TestCluster {
    pub url: String,
    pub dir: tempfile::TempDir,
    shutdown: CancellationToken,
    coordinator: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestCluster {
    /// Starts a coordinator with short leases, so expiry tests finish quickly.
    pub async fn start() -> Self {
        let settings = coordinator::Settings {
            heartbeat_interval: Duration::from_millis(200),
            lease_duration: Duration::from_millis(1_000),
            max_attempts: 3,
            reap_interval: Duration::from_millis(100),
            ..coordinator::Settings::default()
        };
        Self::start_with(settings).await
    }

    pub async fn start_with(settings: coordinator::Settings) -> Self {
        Self::start_on(None, settings).await
    }

    /// Starts a coordinator on the database at `database_url`, or on SQLite in its temp dir.
    pub async fn start_on(database_url: Option<String>, settings: coordinator::Settings) -> Self {
        Self::start_configured(database_url, settings, |_| {}).await
    }

    /// Starts a coordinator as [`TestCluster::start_on`] does, with `configure` having the
    /// last word on its config (tokens, TLS).
    pub async fn start_configured(
        database_url: Option<String>,
        settings: coordinator::Settings,
        configure: impl FnOnce(&mut coordinator::Config),
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let shutdown = CancellationToken::new();
        let database_url =
            database_url.unwrap_or_else(|| format!("sqlite://{}", dir.path().join("coordinator.db").display()));
        let mut config = coordinator::Config {
            settings,
            ..coordinator::Config::new(database_url)
        };
        configure(&mut config);
        let coordinator = tokio::spawn(coordinator::run(config, listener, shutdown.clone()));
        TestCluster {
            url,
            dir,
            shutdown,
            coordinator: Some(coordinator),
        }
    }

    pub async fn survey(&self) -> SurveyServiceClient<Channel> {
        SurveyServiceClient::connect(self.url.clone())
            .await
            .expect("connect survey client")
    }

    /// Opens a raw worker session and returns its two ends.
    pub async fn session(&self) -> RawSession {
        self.session_with_token(None).await.expect("open session")
    }

    /// Opens a raw worker session sending `token` as its bearer token, or says why the
    /// coordinator refused to open it.
    pub async fn session_with_token(&self, token: Option<&str>) -> Result<RawSession, tonic::Status> {
        RawSession::open(connect(&self.url).await, token).await
    }

    /// Stops the coordinator and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.coordinator.take() {
            handle
                .await
                .expect("coordinator task")
                .expect("coordinator ended cleanly");
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A worker session driven message by message by a test.
#[derive(Debug)]
pub struct RawSession {
    pub sender: mpsc::Sender<v1::WorkerMessage>,
    pub inbound: tonic::Streaming<v1::CoordinatorMessage>,
}

impl RawSession {
    /// Opens a session on `channel` sending `token` as its bearer token, or says why the
    /// coordinator refused to open it.
    pub async fn open(channel: Channel, token: Option<&str>) -> Result<RawSession, tonic::Status> {
        let bearer = proto::auth::BearerToken::new(token).expect("token");
        let mut client =
            WorkerServiceClient::with_interceptor(channel, bearer).max_encoding_message_size(proto::MAX_MESSAGE_BYTES);
        let (sender, receiver) = mpsc::channel(64);
        let inbound = client.session(ReceiverStream::new(receiver)).await?.into_inner();
        Ok(RawSession { sender, inbound })
    }

    pub async fn send(&self, msg: v1::worker_message::Msg) {
        self.sender
            .send(v1::WorkerMessage { msg: Some(msg) })
            .await
            .expect("send to coordinator");
    }

    /// The next message, within 10 seconds.
    pub async fn next(&mut self) -> Result<v1::coordinator_message::Msg, tonic::Status> {
        let message = tokio::time::timeout(Duration::from_secs(10), self.inbound.message())
            .await
            .expect("a coordinator message within 10 s")?;
        Ok(message.expect("stream still open").msg.expect("message has a body"))
    }

    /// The next message if one comes within `limit`; `None` if none does.
    pub async fn next_within(&mut self, limit: Duration) -> Option<v1::coordinator_message::Msg> {
        let message = tokio::time::timeout(limit, self.inbound.message()).await.ok()?;
        Some(
            message
                .expect("stream healthy")
                .expect("stream still open")
                .msg
                .expect("message has a body"),
        )
    }

    /// Says hello and waits for the welcome.
    pub async fn hello(&mut self, worker_id: &str, profile: &InterpreterProfile, slots: u32) -> v1::Welcome {
        self.try_hello(worker_id, profile, slots).await.expect("welcome")
    }

    /// Says hello; the welcome, or the status the coordinator ended the session with.
    pub async fn try_hello(
        &mut self,
        worker_id: &str,
        profile: &InterpreterProfile,
        slots: u32,
    ) -> Result<v1::Welcome, tonic::Status> {
        let hello = v1::Hello {
            worker_id: worker_id.to_string(),
            interpreter: Some(profile.into()),
            slots,
            warm_packages: Vec::new(),
            agent_version: "test".to_string(),
        };
        self.send(v1::worker_message::Msg::Hello(hello)).await;
        match self.next().await? {
            v1::coordinator_message::Msg::Welcome(welcome) => Ok(welcome),
            other => panic!("expected Welcome, got {other:?}"),
        }
    }
}

/// A connection to the gRPC server at `url`, for clients and sessions to share.
pub async fn connect(url: &str) -> Channel {
    Channel::from_shared(url.to_string())
        .expect("url")
        .connect()
        .await
        .expect("connect to the coordinator")
}

/// A free-threaded 3.13 profile, as a worker would report it.
pub fn ft_profile() -> InterpreterProfile {
    InterpreterProfile {
        executable: "/opt/python3.13t/bin/python3".to_string(),
        version: "3.13.5 experimental free-threading build".to_string(),
        version_short: "3.13.5".to_string(),
        major_minor: "3.13".to_string(),
        abi_tag: "cp313t".to_string(),
        free_threaded: true,
        gil_enabled_by_default: Some(false),
        tsan: false,
        debug: false,
        platform: "linux-x86_64".to_string(),
        configure_args: "'--disable-gil'".to_string(),
    }
}

/// The fixture registry of this repository.
pub fn fixture_registry() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join("registry")
}
