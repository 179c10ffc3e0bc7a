//! The SQLite backend of the store: the embedded default, one file in the work dir.
//!
//! SQLite serialises writers, so the pool holds one connection and every method runs in one
//! transaction on it; a claim is a single `UPDATE ... WHERE id = (SELECT ...) RETURNING`.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use domain::spec::RunOptions;
use domain::{
    Assignment, JobId, JobResult, LeaseToken, Mode, OutcomeAck, PackageResult, PackageSpec, RunId, RunSpec, RunState,
    RunSummary, WorkerId,
};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Row, SqliteConnection, SqlitePool};

use super::common::{
    self, LIVE_JOB_STATES, RunRow, RunSpecRow, from_json, package_result, parse_run_id, revoked, to_json, to_u32,
};
use super::{ClaimRequest, Completion, ReapReport, RevokedLease, Store, StoreError};

/// A store in one SQLite database.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` and applies the migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        sqlx::migrate!("../migrations/sqlite").run(&pool).await?;
        Ok(SqliteStore { pool })
    }
}

#[async_trait]
impl Store for SqliteStore {
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
            let existing: Option<String> = sqlx::query_scalar("SELECT id FROM runs WHERE client_token = ?1")
                .bind(token)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(existing) = existing {
                let existing = parse_run_id(&existing)?;
                let summary = run_summary(&mut tx, existing).await?;
                tx.commit().await?;
                return Ok(summary);
            }
        }
        let modes: Vec<&str> = spec.modes.iter().map(|m| m.as_str()).collect();
        sqlx::query(
            "INSERT INTO runs (id, label, state, iterations, modes_json, options_json, registry, req_python_version,
                               req_free_threaded, req_tsan, client_token, created_at_ms)
             VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )
        .bind(run_id.to_string())
        .bind(&spec.label)
        .bind(i64::from(spec.iterations))
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
        for (package_idx, package) in spec.packages.iter().enumerate() {
            let initial = PackageResult::build(&package.name, spec.iterations, None, Vec::new(), false);
            sqlx::query(
                "INSERT INTO packages (run_id, package_idx, name, spec_json, category, finished, result_json)
                 VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6)",
            )
            .bind(run_id.to_string())
            .bind(package_idx as i64)
            .bind(&package.name)
            .bind(to_json(package)?)
            .bind(initial.category.as_str())
            .bind(to_json(&initial)?)
            .execute(&mut *tx)
            .await?;
            for mode in &spec.modes {
                for iteration in 1..=spec.iterations {
                    sqlx::query(
                        "INSERT INTO jobs (run_id, package_idx, mode, iteration, state)
                         VALUES (?1, ?2, ?3, ?4, 'pending')",
                    )
                    .bind(run_id.to_string())
                    .bind(package_idx as i64)
                    .bind(mode.as_str())
                    .bind(i64::from(iteration))
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        let summary = run_summary(&mut tx, run_id).await?;
        tx.commit().await?;
        Ok(summary)
    }

    async fn get_run(&self, run_id: RunId) -> Result<(RunSummary, RunSpec), StoreError> {
        let mut tx = self.pool.begin().await?;
        let summary = run_summary(&mut tx, run_id).await?;
        let row: RunSpecRow = sqlx::query_as(
            "SELECT label, iterations, modes_json, options_json, registry, req_python_version,
                    req_free_threaded, req_tsan
             FROM runs WHERE id = ?1",
        )
        .bind(run_id.to_string())
        .fetch_one(&mut *tx)
        .await?;
        let specs: Vec<String> =
            sqlx::query_scalar("SELECT spec_json FROM packages WHERE run_id = ?1 ORDER BY package_idx")
                .bind(run_id.to_string())
                .fetch_all(&mut *tx)
                .await?;
        let spec = row.into_spec(&specs)?;
        tx.commit().await?;
        Ok((summary, spec))
    }

    async fn list_runs(&self, limit: u32) -> Result<Vec<RunSummary>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM runs ORDER BY created_at_ms DESC, id DESC LIMIT ?1")
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
        let state = run_state(&mut tx, run_id).await?;
        let mut revoked = Vec::new();
        if !state.is_terminal() {
            revoked = leased_jobs(&mut tx, "run_id = ?1", &run_id.to_string(), None).await?;
            sqlx::query(&format!(
                "UPDATE jobs SET state = 'cancelled', settled_at_ms = ?2 WHERE run_id = ?1 AND state IN {LIVE_JOB_STATES}"
            ))
            .bind(run_id.to_string())
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE runs SET state = 'cancelled', finished_at_ms = ?2 WHERE id = ?1")
                .bind(run_id.to_string())
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
            let n_packages: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM packages WHERE run_id = ?1")
                .bind(run_id.to_string())
                .fetch_one(&mut *tx)
                .await?;
            for package_idx in 0..n_packages {
                refresh_package(&mut tx, run_id, package_idx).await?;
            }
        }
        let summary = run_summary(&mut tx, run_id).await?;
        tx.commit().await?;
        Ok((summary, revoked))
    }

    async fn claim_jobs(&self, request: ClaimRequest<'_>, now_ms: i64) -> Result<Vec<Assignment>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let warm = to_json(&request.warm_packages)?;
        let mut assignments = Vec::new();
        for token in request.lease_tokens.iter().take(request.max_jobs as usize) {
            let claimed = sqlx::query(
                "UPDATE jobs
                 SET state = 'leased', worker_id = ?1, lease_token = ?2, lease_expires_at_ms = ?3, attempt = attempt + 1
                 WHERE id = (
                     SELECT j.id FROM jobs j
                     JOIN runs r ON r.id = j.run_id
                     JOIN packages p ON p.run_id = j.run_id AND p.package_idx = j.package_idx
                     WHERE j.state = 'pending' AND r.state IN ('queued', 'running')
                       AND (r.req_python_version IS NULL OR r.req_python_version = ?4)
                       AND (r.req_free_threaded = 0 OR ?5)
                       AND (r.req_tsan = 0 OR ?6)
                     ORDER BY EXISTS (SELECT 1 FROM json_each(?7) w WHERE w.value = p.name) DESC,
                              j.iteration, r.created_at_ms, j.package_idx, j.mode
                     LIMIT 1)
                 RETURNING id, run_id, package_idx, mode, iteration, attempt",
            )
            .bind(request.worker_id.as_str())
            .bind(token.to_string())
            .bind(now_ms + request.lease_duration_ms)
            .bind(&request.profile.major_minor)
            .bind(request.profile.free_threaded)
            .bind(request.profile.tsan)
            .bind(&warm)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = claimed else { break };
            let run_id = parse_run_id(row.try_get("run_id")?)?;
            let package_idx: i64 = row.try_get("package_idx")?;
            let (package, options) = package_and_options(&mut tx, run_id, package_idx).await?;
            sqlx::query("UPDATE runs SET state = 'running' WHERE id = ?1 AND state = 'queued'")
                .bind(run_id.to_string())
                .execute(&mut *tx)
                .await?;
            assignments.push(Assignment {
                job_id: JobId(row.try_get("id")?),
                lease_token: *token,
                attempt: u32_column(&row, "attempt")?,
                run_id,
                package,
                mode: Mode::from_str(row.try_get("mode")?).map_err(StoreError::Corrupt)?,
                iteration: u32_column(&row, "iteration")?,
                options,
            });
        }
        tx.commit().await?;
        Ok(assignments)
    }

    async fn heartbeat(
        &self,
        worker_id: &WorkerId,
        running: &[(JobId, LeaseToken)],
        lease_duration_ms: i64,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut extended = 0;
        for (job_id, token) in running {
            extended += sqlx::query(
                "UPDATE jobs SET lease_expires_at_ms = ?4
                 WHERE id = ?1 AND lease_token = ?2 AND worker_id = ?3 AND state = 'leased'",
            )
            .bind(job_id.0)
            .bind(token.to_string())
            .bind(worker_id.as_str())
            .bind(now_ms + lease_duration_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
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
        let recorded = sqlx::query(
            "UPDATE jobs SET state = 'done', result_json = ?3, settled_at_ms = ?4
             WHERE id = ?1 AND lease_token = ?2 AND state = 'leased'
             RETURNING run_id, package_idx",
        )
        .bind(job_id.0)
        .bind(lease_token.to_string())
        .bind(to_json(result)?)
        .bind(now_ms)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = recorded else {
            let current = sqlx::query("SELECT run_id, state, lease_token FROM jobs WHERE id = ?1")
                .bind(job_id.0)
                .fetch_optional(&mut *tx)
                .await?;
            tx.commit().await?;
            let Some(current) = current else {
                return Ok(Completion {
                    ack: OutcomeAck::Stale,
                    run_id: None,
                    revoked: Vec::new(),
                });
            };
            let same_lease = current.try_get::<Option<String>, _>("lease_token")?.as_deref()
                == Some(lease_token.to_string().as_str());
            let done = current.try_get::<String, _>("state")? == "done";
            let ack = if done && same_lease {
                OutcomeAck::Duplicate
            } else {
                OutcomeAck::Stale
            };
            let run_id = parse_run_id(current.try_get("run_id")?)?;
            return Ok(Completion {
                ack,
                run_id: Some(run_id),
                revoked: Vec::new(),
            });
        };
        let run_id = parse_run_id(row.try_get("run_id")?)?;
        let package_idx: i64 = row.try_get("package_idx")?;
        let settles_package = match result {
            JobResult::SetupFailed(_) => true,
            JobResult::Iteration(outcome) => {
                outcome.status == domain::IterationStatus::Pass && {
                    let (_, options) = package_and_options(&mut tx, run_id, package_idx).await?;
                    options.stop_on_first_pass
                }
            }
        };
        let mut revoked = Vec::new();
        if settles_package {
            let filter = "run_id = ?1 AND package_idx = ?2";
            revoked = leased_jobs(&mut tx, filter, &run_id.to_string(), Some(package_idx)).await?;
            sqlx::query(&format!(
                "UPDATE jobs SET state = 'cancelled', settled_at_ms = ?3 WHERE {filter} AND state IN {LIVE_JOB_STATES}"
            ))
            .bind(run_id.to_string())
            .bind(package_idx)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        refresh_package(&mut tx, run_id, package_idx).await?;
        refresh_run_state(&mut tx, run_id, now_ms).await?;
        tx.commit().await?;
        Ok(Completion {
            ack: OutcomeAck::Recorded,
            run_id: Some(run_id),
            revoked,
        })
    }

    async fn release_jobs(&self, leases: &[(JobId, LeaseToken)], _now_ms: i64) -> Result<Vec<RunId>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut runs = Vec::new();
        for (job_id, token) in leases {
            let run: Option<String> = sqlx::query_scalar(
                "UPDATE jobs SET state = 'pending', worker_id = NULL, lease_token = NULL, lease_expires_at_ms = NULL
                 WHERE id = ?1 AND lease_token = ?2 AND state = 'leased'
                 RETURNING run_id",
            )
            .bind(job_id.0)
            .bind(token.to_string())
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(run) = run {
                let run = parse_run_id(&run)?;
                if !runs.contains(&run) {
                    runs.push(run);
                }
            }
        }
        tx.commit().await?;
        Ok(runs)
    }

    async fn reap_expired(&self, max_attempts: u32, now_ms: i64) -> Result<ReapReport, StoreError> {
        let mut tx = self.pool.begin().await?;
        let expired = sqlx::query(
            "SELECT id, run_id, package_idx, attempt FROM jobs
             WHERE state = 'leased' AND lease_expires_at_ms < ?1",
        )
        .bind(now_ms)
        .fetch_all(&mut *tx)
        .await?;
        let mut report = ReapReport::default();
        let mut packages = Vec::new();
        for row in expired {
            let job_id: i64 = row.try_get("id")?;
            let run_id = parse_run_id(row.try_get("run_id")?)?;
            let package_idx: i64 = row.try_get("package_idx")?;
            if u32_column(&row, "attempt")? >= max_attempts {
                sqlx::query("UPDATE jobs SET state = 'lost', settled_at_ms = ?2 WHERE id = ?1")
                    .bind(job_id)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?;
                report.lost += 1;
            } else {
                sqlx::query(
                    "UPDATE jobs SET state = 'pending', worker_id = NULL, lease_token = NULL, lease_expires_at_ms = NULL
                     WHERE id = ?1",
                )
                .bind(job_id)
                .execute(&mut *tx)
                .await?;
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
        run_state(&mut tx, run_id).await?;
        let rows = sqlx::query(
            "SELECT name, result_json FROM packages
             WHERE run_id = ?1 AND (finished = 1 OR ?2 = 0)
             ORDER BY package_idx",
        )
        .bind(run_id.to_string())
        .bind(finished_only)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut results = Vec::with_capacity(rows.len());
        for row in rows {
            let name: String = row.try_get("name")?;
            if packages.is_empty() || packages.contains(&name) {
                results.push(from_json(row.try_get("result_json")?)?);
            }
        }
        Ok(results)
    }
}

/// Recomputes one package's verdict from its jobs.
async fn refresh_package(conn: &mut SqliteConnection, run_id: RunId, package_idx: i64) -> Result<(), StoreError> {
    let row = sqlx::query(
        "SELECT p.name, r.iterations FROM packages p JOIN runs r ON r.id = p.run_id
         WHERE p.run_id = ?1 AND p.package_idx = ?2",
    )
    .bind(run_id.to_string())
    .bind(package_idx)
    .fetch_one(&mut *conn)
    .await?;
    let name: String = row.try_get("name")?;
    let iterations = u32_column(&row, "iterations")?;
    let jobs: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT state, result_json FROM jobs WHERE run_id = ?1 AND package_idx = ?2")
            .bind(run_id.to_string())
            .bind(package_idx)
            .fetch_all(&mut *conn)
            .await?;
    let result = package_result(&name, iterations, jobs)?;
    sqlx::query(
        "UPDATE packages SET category = ?3, finished = ?4, result_json = ?5 WHERE run_id = ?1 AND package_idx = ?2",
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
async fn refresh_run_state(conn: &mut SqliteConnection, run_id: RunId, now_ms: i64) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "UPDATE runs SET state = 'finished', finished_at_ms = ?2
         WHERE id = ?1 AND state IN ('queued', 'running')
           AND NOT EXISTS (SELECT 1 FROM jobs WHERE run_id = ?1 AND state IN {LIVE_JOB_STATES})"
    ))
    .bind(run_id.to_string())
    .bind(now_ms)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn run_state(conn: &mut SqliteConnection, run_id: RunId) -> Result<RunState, StoreError> {
    let state: Option<String> = sqlx::query_scalar("SELECT state FROM runs WHERE id = ?1")
        .bind(run_id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    let state = state.ok_or(StoreError::RunNotFound(run_id))?;
    RunState::from_str(&state).map_err(StoreError::Corrupt)
}

async fn run_summary(conn: &mut SqliteConnection, run_id: RunId) -> Result<RunSummary, StoreError> {
    let run: (String, String, i64, Option<i64>) =
        sqlx::query_as("SELECT label, state, created_at_ms, finished_at_ms FROM runs WHERE id = ?1")
            .bind(run_id.to_string())
            .fetch_optional(&mut *conn)
            .await?
            .ok_or(StoreError::RunNotFound(run_id))?;
    let job_counts = sqlx::query_as("SELECT state, COUNT(*) FROM jobs WHERE run_id = ?1 GROUP BY state")
        .bind(run_id.to_string())
        .fetch_all(&mut *conn)
        .await?;
    let package_counts =
        sqlx::query_as("SELECT category, finished, COUNT(*) FROM packages WHERE run_id = ?1 GROUP BY 1, 2")
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

/// The leased jobs matching `filter` (bound to the run id and optionally a package index).
async fn leased_jobs(
    conn: &mut SqliteConnection,
    filter: &str,
    run_id: &str,
    package_idx: Option<i64>,
) -> Result<Vec<RevokedLease>, StoreError> {
    let sql = format!("SELECT id, worker_id FROM jobs WHERE {filter} AND state = 'leased' AND worker_id IS NOT NULL");
    let mut query = sqlx::query_as::<_, (i64, String)>(&sql).bind(run_id);
    if let Some(package_idx) = package_idx {
        query = query.bind(package_idx);
    }
    revoked(query.fetch_all(&mut *conn).await?)
}

async fn package_and_options(
    conn: &mut SqliteConnection,
    run_id: RunId,
    package_idx: i64,
) -> Result<(PackageSpec, RunOptions), StoreError> {
    let row = sqlx::query(
        "SELECT p.spec_json, r.options_json FROM packages p JOIN runs r ON r.id = p.run_id
         WHERE p.run_id = ?1 AND p.package_idx = ?2",
    )
    .bind(run_id.to_string())
    .bind(package_idx)
    .fetch_one(&mut *conn)
    .await?;
    Ok((
        from_json(row.try_get("spec_json")?)?,
        from_json(row.try_get("options_json")?)?,
    ))
}

fn u32_column(row: &sqlx::sqlite::SqliteRow, column: &str) -> Result<u32, StoreError> {
    to_u32(column, row.try_get(column)?)
}
