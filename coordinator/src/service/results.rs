//! Package results on the wire: pages of bounded size, with or without the iterations' output
//! tails, for `QueryPackageResults` and `WatchRun`.

use std::collections::HashMap;

use domain::{PackageResult, RunId};
use prost::Message;
use proto::v1;
use tonic::Status;

use crate::hub::Hub;
use crate::store::{IterationOutput, Packages};

/// Packages in a page when the request names no size.
pub(crate) const DEFAULT_PAGE: u32 = 200;
/// Packages in a page at most.
pub(crate) const MAX_PAGE: u32 = 1000;
/// Packages read from the store at once when their output is wanted: output is the bulk of a
/// result, and most of a large read would not fit in the page.
pub(crate) const OUTPUT_READ: u32 = 50;

/// The cursor a page hands on: the index of its last package, in decimal.
pub(crate) fn parse_page_token(token: &str) -> Result<Option<u32>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    token
        .parse()
        .map(Some)
        .map_err(|_| Status::invalid_argument(format!("invalid field page_token: {token:?} is not a page token")))
}

/// `results` of `run_id` as wire messages, their output tails filled in when `with_output`
/// and left empty otherwise.
pub(crate) async fn to_wire(
    hub: &Hub,
    run_id: RunId,
    results: Vec<(u32, PackageResult)>,
    with_output: bool,
) -> Result<Vec<(u32, v1::PackageResult)>, Status> {
    let mut outputs: HashMap<(u32, domain::Mode, u32), IterationOutput> = HashMap::new();
    if with_output && !results.is_empty() {
        let indexes: Vec<u32> = results.iter().map(|(idx, _)| *idx).collect();
        let read = hub.store.iteration_outputs(run_id, Packages::At(&indexes));
        for output in super::answer(read, hub).await? {
            outputs.insert((output.package, output.mode, output.iteration), output);
        }
    }
    Ok(results
        .into_iter()
        .map(|(idx, mut result)| {
            result.drop_output();
            for outcome in &mut result.iterations {
                if let Some(output) = outputs.remove(&(idx, outcome.mode, outcome.iteration)) {
                    outcome.stdout_tail = output.stdout_tail;
                    outcome.stderr_tail = output.stderr_tail;
                }
            }
            (idx, v1::PackageResult::from(&result))
        })
        .collect())
}

/// The results of the packages at `indexes` of `run_id`, in index order, as wire messages.
pub(crate) async fn read_at(
    hub: &Hub,
    run_id: RunId,
    indexes: &[u32],
    with_output: bool,
) -> Result<Vec<(u32, v1::PackageResult)>, Status> {
    let query = crate::store::PackageQuery {
        packages: Packages::At(indexes),
        finished_only: false,
        after: None,
        limit: indexes.len() as u32,
    };
    let page = super::answer(hub.store.package_page(run_id, query), hub).await?;
    to_wire(hub, run_id, page, with_output).await
}

/// `result` without its iterations: what a watcher that asked for verdicts only is sent.
pub(crate) fn verdict_of(result: &v1::PackageResult) -> v1::PackageResult {
    let v1::PackageResult {
        package,
        category,
        evidence,
        iterations_planned,
        counts,
        setup_failure,
        iterations: _,
        finished,
        gil_comparison,
    } = result;
    v1::PackageResult {
        package: package.clone(),
        category: *category,
        evidence: evidence.clone(),
        iterations_planned: *iterations_planned,
        counts: *counts,
        setup_failure: setup_failure.clone(),
        iterations: Vec::new(),
        finished: *finished,
        gil_comparison: gil_comparison.clone(),
    }
}

/// A result's share of a message's bytes, its output dropped when it alone is larger than
/// `budget` (GetIterationOutput still has it).
fn fit_alone(result: &mut v1::PackageResult, budget: usize) -> usize {
    let size = result.encoded_len() + 8;
    if size <= budget {
        return size;
    }
    for outcome in &mut result.iterations {
        outcome.stdout_tail.clear();
        outcome.stderr_tail.clear();
    }
    result.encoded_len() + 8
}

/// How many of `results` fit in one message of `budget` bytes: at least one.
pub(crate) fn fitting(results: &mut [(u32, v1::PackageResult)], budget: usize) -> usize {
    let mut used = 0;
    for (n, (_, result)) in results.iter_mut().enumerate() {
        let size = fit_alone(result, budget);
        if n > 0 && used + size > budget {
            return n;
        }
        used += size;
    }
    results.len()
}

/// The packages of a watch event, taken one at a time until the next would pass the budget.
#[derive(Debug, Default)]
pub(crate) struct Event {
    packages: Vec<v1::PackageResult>,
    bytes: usize,
}

impl Event {
    /// Adds `result`; returns the packages to send first when it would not fit with them.
    pub(crate) fn add(&mut self, mut result: v1::PackageResult, budget: usize) -> Option<Vec<v1::PackageResult>> {
        let size = fit_alone(&mut result, budget);
        let full = (!self.packages.is_empty() && self.bytes + size > budget).then(|| self.take());
        self.bytes += size;
        self.packages.push(result);
        full
    }

    /// The packages so far, leaving the event empty.
    pub(crate) fn take(&mut self) -> Vec<v1::PackageResult> {
        self.bytes = 0;
        std::mem::take(&mut self.packages)
    }
}

/// The answer to `QueryPackageResults`: a page of the run's results and the token of the next.
pub(crate) async fn query_page(
    hub: &Hub,
    request: v1::QueryPackageResultsRequest,
) -> Result<v1::QueryPackageResultsResponse, Status> {
    let run_id = proto::convert::parse_run_id("run_id", &request.run_id).map_err(super::status_from_wire)?;
    let after = parse_page_token(&request.page_token)?;
    let page_size = match request.page_size {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    };
    let limit = if request.with_output {
        page_size.min(OUTPUT_READ)
    } else {
        page_size
    };
    let packages = if request.packages.is_empty() {
        Packages::All
    } else {
        Packages::Named(&request.packages)
    };
    let query = crate::store::PackageQuery {
        packages,
        finished_only: request.finished_only,
        after,
        limit,
    };
    let page = super::answer(hub.store.package_page(run_id, query), hub).await?;
    let full = page.len() == limit as usize;
    let mut results = to_wire(hub, run_id, page, request.with_output).await?;
    let fit = fitting(&mut results, proto::MAX_EVENT_BYTES);
    let more = full || fit < results.len();
    results.truncate(fit);
    let next_page_token = match results.last() {
        Some((last, _)) if more => last.to_string(),
        _ => String::new(),
    };
    Ok(v1::QueryPackageResultsResponse {
        results: results.into_iter().map(|(_, result)| result).collect(),
        next_page_token,
    })
}

/// The answer to `GetIterationOutput`.
pub(crate) async fn iteration_output(
    hub: &Hub,
    request: v1::GetIterationOutputRequest,
) -> Result<v1::GetIterationOutputResponse, Status> {
    let run_id = proto::convert::parse_run_id("run_id", &request.run_id).map_err(super::status_from_wire)?;
    let mode = proto::convert::mode_from_wire("mode", request.mode).map_err(super::status_from_wire)?;
    let names = [request.package.clone()];
    let outputs = super::answer(hub.store.iteration_outputs(run_id, Packages::Named(&names)), hub).await?;
    let output = outputs
        .into_iter()
        .find(|o| o.mode == mode && o.iteration == request.iteration)
        .ok_or_else(|| {
            Status::not_found(format!(
                "run {run_id} has no recorded {mode} iteration {} of {:?}",
                request.iteration, request.package
            ))
        })?;
    Ok(v1::GetIterationOutputResponse {
        stdout_tail: output.stdout_tail,
        stderr_tail: output.stderr_tail,
    })
}
