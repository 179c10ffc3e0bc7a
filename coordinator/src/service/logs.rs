//! `GetIterationLog`: an iteration's full log, which only the worker that ran it keeps, asked
//! of that worker over its session one chunk at a time and streamed to the client as each
//! arrives. A client request holds at most one chunk (1 MiB) in the coordinator; a worker
//! serves at most `MAX_LOG_REQUESTS_PER_WORKER` of them at once.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use domain::iteration_log::MAX_LOG_CHUNK_BYTES;
use domain::{IterationLogKey, LogRequest, LogStream, WorkerId};
use futures::Stream;
use proto::convert::{log_stream_from_wire, mode_from_wire, parse_run_id};
use proto::v1;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::hub::{Hub, LogAskRefused, LogRequestSlot, MAX_LOG_REQUESTS_PER_WORKER};
use crate::service::{answer, status_from_wire};

/// How long a worker has to answer each chunk.
pub(crate) const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);

/// The chunks of a log, as the client receives them.
pub(crate) type LogChunkStream = Pin<Box<dyn Stream<Item = Result<v1::IterationLogChunk, Status>> + Send>>;

/// Answers `GetIterationLog`: finds who ran the iteration, asks it for the first chunk (so
/// that a log no longer kept, or a worker gone, is the call's error), then streams the rest.
pub(crate) async fn iteration_log(
    hub: &Arc<Hub>,
    request: v1::GetIterationLogRequest,
    shutdown: &CancellationToken,
) -> Result<LogChunkStream, Status> {
    let run_id = parse_run_id("run_id", &request.run_id).map_err(status_from_wire)?;
    let mode = mode_from_wire("mode", request.mode).map_err(status_from_wire)?;
    let stream = log_stream_from_wire("stream", request.stream).map_err(status_from_wire)?;
    if request.package.is_empty() {
        return Err(Status::invalid_argument("missing field package"));
    }
    let what = format!("{mode} iteration {} of {}", request.iteration, request.package);
    let job = answer(
        hub.store
            .iteration_job(run_id, &request.package, mode, request.iteration),
        hub,
    )
    .await?
    .ok_or_else(|| Status::not_found(format!("run {run_id} has no {what}")))?;
    let worker_id = job
        .worker_id
        .ok_or_else(|| Status::failed_precondition(format!("{what} has not run on any worker ({})", job.state)))?;
    if !hub.is_connected(&worker_id) {
        return Err(not_connected(&worker_id, &what));
    }
    let slot = hub.log_request_slot(&worker_id).ok_or_else(|| {
        Status::resource_exhausted(format!(
            "worker {worker_id} already serves {MAX_LOG_REQUESTS_PER_WORKER} log requests; try again shortly"
        ))
    })?;
    let relay = Relay {
        hub: hub.clone(),
        worker_id,
        key: IterationLogKey {
            run_id,
            package: request.package,
            mode,
            iteration: request.iteration,
            attempt: job.attempt,
        },
        stream,
        what,
        _slot: slot,
    };
    let first = relay.chunk(0).await?;
    // One chunk waiting while one is written: a slow client holds two chunks at most.
    let (sender, receiver) = mpsc::channel(1);
    tokio::spawn(relay.run(first, sender, shutdown.clone()));
    Ok(Box::pin(ReceiverStream::new(receiver)))
}

/// One client's log request, served from its worker.
#[derive(Debug)]
struct Relay {
    hub: Arc<Hub>,
    worker_id: WorkerId,
    key: IterationLogKey,
    stream: LogStream,
    /// The iteration, as messages name it.
    what: String,
    /// Counts toward the worker's log requests until the relay ends.
    _slot: LogRequestSlot,
}

impl Relay {
    /// Sends `first`, then asks for each next chunk once the last was handed on, until the
    /// end of the log, an error, the client leaving or shutdown.
    async fn run(
        self,
        first: v1::IterationLogChunk,
        sender: mpsc::Sender<Result<v1::IterationLogChunk, Status>>,
        shutdown: CancellationToken,
    ) {
        let mut chunk = first;
        loop {
            let (eof, next) = (chunk.eof, chunk.offset + chunk.data.len() as u64);
            if sender.send(Ok(chunk)).await.is_err() || eof {
                return;
            }
            chunk = tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = sender.send(Err(Status::unavailable("coordinator shutting down"))).await;
                    return;
                }
                _ = sender.closed() => return,
                chunk = self.chunk(next) => match chunk {
                    Ok(chunk) => chunk,
                    Err(status) => {
                        let _ = sender.send(Err(status)).await;
                        return;
                    }
                },
            };
        }
    }

    /// Asks the worker for the chunk at `offset` and waits for it, [`CHUNK_TIMEOUT`] at most.
    async fn chunk(&self, offset: u64) -> Result<v1::IterationLogChunk, Status> {
        let request = LogRequest {
            request_id: 0,
            key: self.key.clone(),
            stream: self.stream,
            offset,
            max_bytes: MAX_LOG_CHUNK_BYTES,
        };
        let (request_id, answered) = self
            .hub
            .ask_log(&self.worker_id, (&request).into())
            .map_err(|refused| match refused {
                LogAskRefused::NotConnected => not_connected(&self.worker_id, &self.what),
                LogAskRefused::Busy => Status::unavailable(format!(
                    "worker {} is too far behind on its session to send logs now",
                    self.worker_id
                )),
            })?;
        let answer = match tokio::time::timeout(CHUNK_TIMEOUT, answered).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => {
                return Err(Status::unavailable(format!(
                    "worker {} disconnected while sending the {} log of {}",
                    self.worker_id, self.stream, self.what
                )));
            }
            Err(_) => {
                self.hub.forget_log_ask(request_id);
                return Err(Status::deadline_exceeded(format!(
                    "worker {} sent no part of the {} log of {} within {} s",
                    self.worker_id,
                    self.stream,
                    self.what,
                    CHUNK_TIMEOUT.as_secs()
                )));
            }
        };
        self.checked(answer, offset)
    }

    /// The client's chunk of a worker's answer, or the error it says or is.
    fn checked(&self, answer: v1::LogChunk, offset: u64) -> Result<v1::IterationLogChunk, Status> {
        let worker_id = &self.worker_id;
        if answer.gone {
            return Err(Status::not_found(format!(
                "the {} log of {} is no longer kept on worker {worker_id}: {}",
                self.stream, self.what, answer.error
            )));
        }
        if !answer.error.is_empty() {
            return Err(Status::failed_precondition(format!(
                "worker {worker_id} cannot send the {} log of {}: {}",
                self.stream, self.what, answer.error
            )));
        }
        let fault = if answer.offset != offset {
            Some(format!("bytes at {} when asked for {offset}", answer.offset))
        } else if answer.data.len() > MAX_LOG_CHUNK_BYTES as usize {
            Some(format!("{} bytes, over the chunk's bound", answer.data.len()))
        } else if answer.data.is_empty() && !answer.eof {
            Some("no bytes before the end of the log".to_string())
        } else {
            None
        };
        if let Some(fault) = fault {
            return Err(Status::internal(format!(
                "worker {worker_id} answered a log request with {fault}"
            )));
        }
        Ok(v1::IterationLogChunk {
            data: answer.data,
            offset,
            eof: answer.eof,
            worker_id: worker_id.to_string(),
            attempt: self.key.attempt,
        })
    }
}

fn not_connected(worker_id: &WorkerId, what: &str) -> Status {
    Status::failed_precondition(format!(
        "worker {worker_id} that ran {what} is not connected; its logs can be fetched while it is"
    ))
}
