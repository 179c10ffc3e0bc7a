//! The PostgreSQL backend of the store: the fleet's, shared by many workers at once.
//!
//! Every method is one transaction. A claim is one statement: the pending jobs are picked
//! `FOR UPDATE SKIP LOCKED`, so concurrent claims never wait on each other or take the same
//! job, and leased in the same statement.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use domain::spec::RunOptions;
use domain::{
    Assignment, JobId, JobResult, LeaseToken, Mode, OutcomeAck, PackageResult, PackageSpec, RunId, RunSpec, RunState,
    RunSummary, WorkerId,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Row};

use super::common::{
    self, LIVE_JOB_STATES, RunRow, RunSpecRow, from_json, package_result, parse_run_id, revoked, to_json, to_u32,
};
use super::{ClaimRequest, Completion, ReapReport, RevokedLease, Store, StoreError};

/// Connections in the pool: claims and outcomes from many workers run side by side.
const POOL_SIZE: u32 = 16;

/// A store in one PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to the database at `url` and applies the migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        sqlx::migrate!("../migrations/postgres").run(&pool).await?;
        Ok(PostgresStore { pool })
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn submit_run(
        &self,
        run_id: RunId,
        spec: &RunSpec,
        client_token: Option<&str>,
        now_ms: i64,
    ) -> Result<RunSummary, StoreError> {
        spec.validate().map_err(|e| StoreError::InvalidRun(e.to_string()))?;
        let mut tx = self.pool.begin().await?;
        if let Some(token) = client_token {
            // Two submits with one token: the second waits for the first's row, then finds it.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                .bind(token)
                .execute(&mut *tx)
                .await?;
            let existing: Option<String> = sqlx::query_scalar("SELECT id FROM runs WHERE client_token = $1")
                .bind(token)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(existing) = existing {
                let summary = run_summary(&mut tx, parse_run_id(&existing)?).await?;
                tx.commit().await?;
                return Ok(summary);
            }
        }
        let modes: Vec<&str> = spec.modes.iter().map(|m| m.as_str()).collect();
        sqlx::query(
            "INSERT INTO runs (id, label, state, iterations, modes_json, options_json, registry, req_python_version,
                               req_free_threaded, req_tsan, client_token, created_at_ms)
             VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(run_id.to_string())
        .bind(&spec.label)
        .bind(i32::try_from(spec.iterations).map_err(|_| StoreError::InvalidRun("too many iterations".into()))?)
        .bind(to_json(&modes)?)
        .bind(to_json(&spec.options)?)
        .bind(&spec.registry)
        .bind(&spec.requirement.python_version)
        .bind(spec.requirement.free_threaded)
        .bind(spec.requirement.tsan)
        .bind(client_token)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        // Every package starts with the same empty verdict; only its name differs.
        let empty = PackageResult::build("", spec.iterations, None, Vec::new(), false);
        let category = empty.category;
        let indexes: Vec<i32> = (0..spec.packages.len() as i32).collect();
        let names: Vec<String> = spec.packages.iter().map(|p| p.name.clone()).collect();
        let specs = spec.packages.iter().map(to_json).collect::<Result<Vec<_>, _>>()?;
        let results = spec
            .packages
            .iter()
            .map(|package| {
                to_json(&PackageResult {
                    package: package.name.clone(),
                    ..empty.clone()
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        sqlx::query(
            "INSERT INTO packages (run_id, package_idx, name, spec_json, category, finished, result_json)
             SELECT $1, idx, name, spec, $5, FALSE, result
             FROM UNNEST($2::int[], $3::text[], $4::text[], $6::text[]) AS p (idx, name, spec, result)",
        )
        .bind(run_id.to_string())
        .bind(&indexes)
        .bind(&names)
        .bind(&specs)
        .bind(category.as_str())
        .bind(&results)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO jobs (run_id, package_idx, mode, iteration, state)
             SELECT $1, p, m, i, 'pending'
             FROM generate_series(0, $2 - 1) AS p, UNNEST($3::text[]) AS m, generate_series(1, $4) AS i
             ORDER BY i, p, m",
        )
        .bind(run_id.to_string())
        .bind(spec.packages.len() as i32)
        .bind(&modes)
        .bind(spec.iterations as i32)
        .execute(&mut *tx)
        .await?;
        let summary = run_summary(&mut tx, run_id).await?;
        tx.commit().await?;
        Ok(summary)
    }

    async fn get_run(&self, run_id: RunId) -> Result<(RunSummary, RunSpec), StoreError> {
        let mut tx = self.pool.begin().await?;
        let summary = run_summary(&mut tx, run_id).await?;
        let row: RunSpecRow = sqlx::query_as(
            "SELECT label, iterations::bigint AS iterations, modes_json, options_json, registry, req_python_version,
                    req_free_threaded, req_tsan
             FROM runs WHERE id = $1",
        )
        .bind(run_id.to_string())
        .fetch_one(&mut *tx)
        .await?;
        let specs: Vec<String> =
            sqlx::query_scalar("SELECT spec_json FROM packages WHERE run_id = $1 ORDER BY package_idx")
                .bind(run_id.to_string())
                .fetch_all(&mut *tx)
                .await?;
        let spec = row.into_spec(&specs)?;
        tx.commit().await?;
        Ok((summary, spec))
    }

    async fn list_runs(&self, limit: u32) -> Result<Vec<RunSummary>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM runs ORDER BY created_at_ms DESC, id DESC LIMIT $1")
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
        let mut runs = Vec::with_capacity(ids.len());
        for id in ids {
            runs.push(run_summary(&mut tx, parse_run_id(&id)?).await?);
        }
        tx.commit().await?;
        Ok(runs)
    }

    async fn cancel_run(&self, run_id: RunId, now_ms: i64) -> Result<(RunSummary, Vec<RevokedLease>), StoreError> {
        let mut tx = self.pool.begin().await?;
        let state: Option<String> = sqlx::query_scalar("SELECT state FROM runs WHERE id = $1 FOR UPDATE")
            .bind(run_id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        let state = RunState::from_str(&state.ok_or(StoreError::RunNotFound(run_id))?).map_err(StoreError::Corrupt)?;
        let mut revoked_leases = Vec::new();
        if !state.is_terminal() {
            // A job with a worker is a leased one: release and requeue clear the worker.
            let rows: Vec<(i64, Option<String>)> = sqlx::query_as(&format!(
                "UPDATE jobs SET state = 'cancelled', settled_at_ms = $2
                 WHERE run_id = $1 AND state IN {LIVE_JOB_STATES}
                 RETURNING id, worker_id"
            ))
            .bind(run_id.to_string())
            .bind(now_ms)
            .fetch_all(&mut *tx)
            .await?;
            let rows = rows.into_iter().filter_map(|(id, w)| w.map(|w| (id, w))).collect();
            revoked_leases = revoked(rows)?;
            sqlx::query("UPDATE runs SET state = 'cancelled', finished_at_ms = $2 WHERE id = $1")
                .bind(run_id.to_string())
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
            let indexes: Vec<i32> =
                sqlx::query_scalar("SELECT package_idx FROM packages WHERE run_id = $1 ORDER BY package_idx")
                    .bind(run_id.to_string())
                    .fetch_all(&mut *tx)
                    .await?;
            for package_idx in indexes {
                refresh_package(&mut tx, run_id, package_idx).await?;
            }
        }
        let summary = run_summary(&mut tx, run_id).await?;
        tx.commit().await?;
        Ok((summary, revoked_leases))
    }

    async fn claim_jobs(&self, request: ClaimRequest<'_>, now_ms: i64) -> Result<Vec<Assignment>, StoreError> {
        let tokens: Vec<String> = request
            .lease_tokens
            .iter()
            .take(request.max_jobs as usize)
            .map(ToString::to_string)
            .collect();
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "WITH picked AS (
                 SELECT j.id, (p.name = ANY($7)) AS warm, j.iteration, r.created_at_ms, j.package_idx, j.mode
                 FROM jobs j
                 JOIN runs r ON r.id = j.run_id
                 JOIN packages p ON p.run_id = j.run_id AND p.package_idx = j.package_idx
                 WHERE j.state = 'pending' AND r.state IN ('queued', 'running')
                   AND (r.req_python_version IS NULL OR r.req_python_version = $4)
                   AND (NOT r.req_free_threaded OR $5)
                   AND (NOT r.req_tsan OR $6)
                 ORDER BY (p.name = ANY($7)) DESC, j.iteration, r.created_at_ms, j.package_idx, j.mode
                 LIMIT $8
                 FOR UPDATE OF j SKIP LOCKED
             ), numbered AS (
                 SELECT id, row_number() OVER (ORDER BY warm DESC, iteration, created_at_ms, package_idx, mode) AS n
                 FROM picked
             )
             UPDATE jobs
             SET state = 'leased', worker_id = $1, lease_token = ($2::text[])[numbered.n],
                 lease_expires_at_ms = $3, attempt = jobs.attempt + 1
             FROM numbered
             WHERE jobs.id = numbered.id
             RETURNING jobs.id, jobs.run_id, jobs.package_idx, jobs.mode, jobs.iteration, jobs.attempt,
                       numbered.n",
        )
        .bind(request.worker_id.as_str())
        .bind(&tokens)
        .bind(now_ms + request.lease_duration_ms)
        .bind(&request.profile.major_minor)
        .bind(request.profile.free_threaded)
        .bind(request.profile.tsan)
        .bind(request.warm_packages)
        .bind(tokens.len() as i64)
        .fetch_all(&mut *tx)
        .await?;
        let mut specs: HashMap<(RunId, i32), (PackageSpec, RunOptions)> = HashMap::new();
        let mut claimed = Vec::with_capacity(rows.len());
        for row in rows {
            let run_id = parse_run_id(row.try_get("run_id")?)?;
            let package_idx: i32 = row.try_get("package_idx")?;
            let (package, options) = match specs.entry((run_id, package_idx)) {
                std::collections::hash_map::Entry::Occupied(known) => known.get().clone(),
                std::collections::hash_map::Entry::Vacant(slot) => slot
                    .insert(package_and_options(&mut tx, run_id, package_idx).await?)
                    .clone(),
            };
            let n: i64 = row.try_get("n")?;
            claimed.push((
                n,
                Assignment {
                    job_id: JobId(row.try_get("id")?),
                    lease_token: request.lease_tokens[(n - 1) as usize],
                    attempt: to_u32("attempt", i64::from(row.try_get::<i32, _>("attempt")?))?,
                    run_id,
                    package,
                    mode: Mode::from_str(row.try_get("mode")?).map_err(StoreError::Corrupt)?,
                    iteration: to_u32("iteration", i64::from(row.try_get::<i32, _>("iteration")?))?,
                    options,
                },
            ));
        }
        let mut runs: Vec<String> = claimed.iter().map(|(_, a)| a.run_id.to_string()).collect();
        runs.sort();
        runs.dedup();
        if !runs.is_empty() {
            sqlx::query("UPDATE runs SET state = 'running' WHERE id = ANY($1) AND state = 'queued'")
                .bind(&runs)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        claimed.sort_by_key(|(n, _)| *n);
        Ok(claimed.into_iter().map(|(_, a)| a).collect())
    }

    async fn heartbeat(
        &self,
        worker_id: &WorkerId,
        running: &[(JobId, LeaseToken)],
        lease_duration_ms: i64,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        if running.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = running.iter().map(|(id, _)| id.0).collect();
        let tokens: Vec<String> = running.iter().map(|(_, t)| t.to_string()).collect();
        let extended = sqlx::query(
            "UPDATE jobs SET lease_expires_at_ms = $4
             FROM UNNEST($1::bigint[], $2::text[]) AS held (id, token)
             WHERE jobs.id = held.id AND jobs.lease_token = held.token AND jobs.worker_id = $3
               AND jobs.state = 'leased'",
        )
        .bind(&ids)
        .bind(&tokens)
        .bind(worker_id.as_str())
        .bind(now_ms + lease_duration_ms)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(extended)
    }

    async fn complete_job(
        &self,
        job_id: JobId,
        lease_token: LeaseToken,
        result: &JobResult,
        now_ms: i64,
    ) -> Result<Completion, StoreError> {
        let mut tx = self.pool.begin().await?;
        let recorded: Option<(String, i32)> = sqlx::query_as(
            "UPDATE jobs SET state = 'done', result_json = $3, settled_at_ms = $4
             WHERE id = $1 AND lease_token = $2 AND state = 'leased'
             RETURNING run_id, package_idx",
        )
        .bind(job_id.0)
        .bind(lease_token.to_string())
        .bind(to_json(result)?)
        .bind(now_ms)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((run_id, package_idx)) = recorded else {
            let current: Option<(String, String, Option<String>)> =
                sqlx::query_as("SELECT run_id, state, lease_token FROM jobs WHERE id = $1")
                    .bind(job_id.0)
                    .fetch_optional(&mut *tx)
                    .await?;
            tx.commit().await?;
            let Some((run_id, state, token)) = current else {
                return Ok(Completion {
                    ack: OutcomeAck::Stale,
                    run_id: None,
                    revoked: Vec::new(),
                });
            };
            let same_lease = token.as_deref() == Some(lease_token.to_string().as_str());
            let ack = if state == "done" && same_lease {
                OutcomeAck::Duplicate
            } else {
                OutcomeAck::Stale
            };
            return Ok(Completion {
                ack,
                run_id: Some(parse_run_id(&run_id)?),
                revoked: Vec::new(),
            });
        };
        let run_id = parse_run_id(&run_id)?;
        // Outcomes of one package settle one at a time, so each verdict sees all before it.
        sqlx::query("SELECT 1 FROM packages WHERE run_id = $1 AND package_idx = $2 FOR UPDATE")
            .bind(run_id.to_string())
            .bind(package_idx)
            .execute(&mut *tx)
            .await?;
        let settles_package = match result {
            JobResult::SetupFailed(_) => true,
            JobResult::Iteration(outcome) => {
                outcome.status == domain::IterationStatus::Pass && {
                    let (_, options) = package_and_options(&mut tx, run_id, package_idx).await?;
                    options.stop_on_first_pass
                }
            }
        };
        let mut revoked_leases = Vec::new();
        if settles_package {
            let rows: Vec<(i64, Option<String>)> = sqlx::query_as(&format!(
                "UPDATE jobs SET state = 'cancelled', settled_at_ms = $3
                 WHERE run_id = $1 AND package_idx = $2 AND state IN {LIVE_JOB_STATES}
                 RETURNING id, worker_id"
            ))
            .bind(run_id.to_string())
            .bind(package_idx)
            .bind(now_ms)
            .fetch_all(&mut *tx)
            .await?;
            revoked_leases = revoked(rows.into_iter().filter_map(|(id, w)| w.map(|w| (id, w))).collect())?;
        }
        refresh_package(&mut tx, run_id, package_idx).await?;
        refresh_run_state(&mut tx, run_id, now_ms).await?;
        tx.commit().await?;
        Ok(Completion {
            ack: OutcomeAck::Recorded,
            run_id: Some(run_id),
            revoked: revoked_leases,
        })
    }

    async fn release_jobs(&self, leases: &[(JobId, LeaseToken)], _now_ms: i64) -> Result<Vec<RunId>, StoreError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = leases.iter().map(|(id, _)| id.0).collect();
        let tokens: Vec<String> = leases.iter().map(|(_, t)| t.to_string()).collect();
        let runs: Vec<String> = sqlx::query_scalar(
            "UPDATE jobs SET state = 'pending', worker_id = NULL, lease_token = NULL, lease_expires_at_ms = NULL
             FROM UNNEST($1::bigint[], $2::text[]) AS held (id, token)
             WHERE jobs.id = held.id AND jobs.lease_token = held.token AND jobs.state = 'leased'
             RETURNING jobs.run_id",
        )
        .bind(&ids)
        .bind(&tokens)
        .fetch_all(&self.pool)
        .await?;
        let mut touched: Vec<RunId> = Vec::new();
        for run in runs {
            let run = parse_run_id(&run)?;
            if !touched.contains(&run) {
                touched.push(run);
            }
        }
        Ok(touched)
    }

    async fn reap_expired(&self, max_attempts: u32, now_ms: i64) -> Result<ReapReport, StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<(String, i32, String)> = sqlx::query_as(
            "WITH expired AS (
                 SELECT id FROM jobs WHERE state = 'leased' AND lease_expires_at_ms < $1
                 FOR UPDATE SKIP LOCKED
             )
             UPDATE jobs
             SET state = CASE WHEN jobs.attempt >= $2 THEN 'lost' ELSE 'pending' END,
                 settled_at_ms = CASE WHEN jobs.attempt >= $2 THEN $1 END,
                 worker_id = CASE WHEN jobs.attempt >= $2 THEN jobs.worker_id END,
                 lease_token = CASE WHEN jobs.attempt >= $2 THEN jobs.lease_token END,
                 lease_expires_at_ms = NULL
             FROM expired WHERE jobs.id = expired.id
             RETURNING jobs.run_id, jobs.package_idx, jobs.state",
        )
        .bind(now_ms)
        .bind(max_attempts as i32)
        .fetch_all(&mut *tx)
        .await?;
        let mut report = ReapReport::default();
        let mut packages = Vec::new();
        for (run_id, package_idx, state) in rows {
            let run_id = parse_run_id(&run_id)?;
            if state == "lost" {
                report.lost += 1;
            } else {
                report.requeued += 1;
            }
            if !packages.contains(&(run_id, package_idx)) {
                packages.push((run_id, package_idx));
            }
            if !report.runs_touched.contains(&run_id) {
                report.runs_touched.push(run_id);
            }
        }
        for (run_id, package_idx) in packages {
            refresh_package(&mut tx, run_id, package_idx).await?;
        }
        for run_id in &report.runs_touched {
            refresh_run_state(&mut tx, *run_id, now_ms).await?;
        }
        tx.commit().await?;
        Ok(report)
    }

    async fn package_results(
        &self,
        run_id: RunId,
        packages: &[String],
        finished_only: bool,
    ) -> Result<Vec<PackageResult>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let exists: Option<String> = sqlx::query_scalar("SELECT state FROM runs WHERE id = $1")
            .bind(run_id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(StoreError::RunNotFound(run_id));
        }
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT result_json FROM packages
             WHERE run_id = $1 AND (finished OR NOT $2) AND (cardinality($3::text[]) = 0 OR name = ANY($3))
             ORDER BY package_idx",
        )
        .bind(run_id.to_string())
        .bind(finished_only)
        .bind(packages)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(|json| from_json(json)).collect()
    }
}

/// Recomputes one package's verdict from its jobs.
async fn refresh_package(conn: &mut PgConnection, run_id: RunId, package_idx: i32) -> Result<(), StoreError> {
    let (name, iterations): (String, i32) = sqlx::query_as(
        "SELECT p.name, r.iterations FROM packages p JOIN runs r ON r.id = p.run_id
         WHERE p.run_id = $1 AND p.package_idx = $2",
    )
    .bind(run_id.to_string())
    .bind(package_idx)
    .fetch_one(&mut *conn)
    .await?;
    let jobs: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT state, result_json FROM jobs WHERE run_id = $1 AND package_idx = $2")
            .bind(run_id.to_string())
            .bind(package_idx)
            .fetch_all(&mut *conn)
            .await?;
    let result = package_result(&name, to_u32("iterations", i64::from(iterations))?, jobs)?;
    sqlx::query(
        "UPDATE packages SET category = $3, finished = $4, result_json = $5 WHERE run_id = $1 AND package_idx = $2",
    )
    .bind(run_id.to_string())
    .bind(package_idx)
    .bind(result.category.as_str())
    .bind(result.finished)
    .bind(to_json(&result)?)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Marks a run finished once none of its jobs is pending or leased.
async fn refresh_run_state(conn: &mut PgConnection, run_id: RunId, now_ms: i64) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "UPDATE runs SET state = 'finished', finished_at_ms = $2
         WHERE id = $1 AND state IN ('queued', 'running')
           AND NOT EXISTS (SELECT 1 FROM jobs WHERE run_id = $1 AND state IN {LIVE_JOB_STATES})"
    ))
    .bind(run_id.to_string())
    .bind(now_ms)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn run_summary(conn: &mut PgConnection, run_id: RunId) -> Result<RunSummary, StoreError> {
    let run: (String, String, i64, Option<i64>) =
        sqlx::query_as("SELECT label, state, created_at_ms, finished_at_ms FROM runs WHERE id = $1")
            .bind(run_id.to_string())
            .fetch_optional(&mut *conn)
            .await?
            .ok_or(StoreError::RunNotFound(run_id))?;
    let job_counts = sqlx::query_as("SELECT state, COUNT(*) FROM jobs WHERE run_id = $1 GROUP BY state")
        .bind(run_id.to_string())
        .fetch_all(&mut *conn)
        .await?;
    let package_counts =
        sqlx::query_as("SELECT category, finished, COUNT(*) FROM packages WHERE run_id = $1 GROUP BY 1, 2")
            .bind(run_id.to_string())
            .fetch_all(&mut *conn)
            .await?;
    let (label, state, created_at_ms, finished_at_ms) = run;
    common::run_summary(
        run_id,
        RunRow {
            label,
            state,
            created_at_ms,
            finished_at_ms,
        },
        job_counts,
        package_counts,
    )
}

async fn package_and_options(
    conn: &mut PgConnection,
    run_id: RunId,
    package_idx: i32,
) -> Result<(PackageSpec, RunOptions), StoreError> {
    let (spec, options): (String, String) = sqlx::query_as(
        "SELECT p.spec_json, r.options_json FROM packages p JOIN runs r ON r.id = p.run_id
         WHERE p.run_id = $1 AND p.package_idx = $2",
    )
    .bind(run_id.to_string())
    .bind(package_idx)
    .fetch_one(&mut *conn)
    .await?;
    Ok((from_json(&spec)?, from_json(&options)?))
}
