//! The SQLite backend of the store: the embedded default, one file in the work dir.
//!
//! SQLite serialises writers, so the pool holds one connection and every method runs in one
//! transaction on it. A claim reads the jobs to lease (warm packages' first, then each run's
//! share), then leases them all with one `UPDATE ... FROM json_each(...)`; outcomes are
//! recorded the same way. SQLite keeps no statistics, so these statements fix their own access
//! paths (see `claim_batch` and `complete_batch`).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use domain::{
    Assignment, JobId, LeaseToken, OutcomeAck, PackageResult, RunId, RunSpec, RunState, RunSummary, WorkerId,
};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Row, SqliteConnection, SqlitePool};

use super::common::{
    self, ARCHIVED_JOB_COLUMNS, ATTEMPT_END_SQL, JobRow, LIVE_JOB_STATES, PickedJob, RunRow, RunSpecRow, SpecCache,
    from_json, package_result, parse_run_id, revoked, to_json, to_u32,
};
use super::{
    ClaimBatch, Completion, IterationJob, IterationOutput, PackageQuery, Packages, ReapReport, Report, RetryPolicy,
    RevokedLease, Store, StoreError,
};

/// A store in one SQLite database.
#[derive(Debug, Clone)]
pub(crate) struct SqliteStore {
    pool: SqlitePool,
    specs: Arc<SpecCache>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` and applies the migrations.
    pub(crate) async fn open(url: &str) -> Result<Self, StoreError> {
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
        Ok(SqliteStore {
            pool,
            specs: Arc::default(),
        })
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert_run(
        &self,
        run_id: RunId,
        spec: &RunSpec,
        client_token: Option<&str>,
        now_ms: i64,
    ) -> Result<RunSummary, StoreError> {
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
                               req_free_threaded, req_tsan, client_token, created_at_ms, rerun_of, req_debug, req_build)
             VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
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
        .bind(spec.rerun_of.map(|id| id.to_string()))
        .bind(spec.requirement.debug)
        .bind(&spec.requirement.build)
        .execute(&mut *tx)
        .await?;
        // Every package starts with the same empty verdict; only its name differs.
        let empty = PackageResult::build("", spec.iterations, None, Vec::new(), false);
        // One JSON array of [name, spec, verdict] rows, read in one pass.
        let rows = spec
            .packages
            .iter()
            .map(|package| {
                let result = PackageResult {
                    package: package.name.clone(),
                    ..empty.clone()
                };
                Ok((package.name.as_str(), to_json(package)?, to_json(&result)?))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        sqlx::query(
            "INSERT INTO packages (run_id, package_idx, name, spec_json, category, finished, result_json)
             SELECT ?1, row.key, row.value ->> 0, row.value ->> 1, ?3, 0, row.value ->> 2
             FROM json_each(?2) AS row
             ORDER BY row.key",
        )
        .bind(run_id.to_string())
        .bind(to_json(&rows)?)
        .bind(empty.category.as_str())
        .execute(&mut *tx)
        .await?;
        // Job ids are never given twice: left to itself, SQLite numbers a new row after the
        // largest id in the table, which an archived run's jobs may have held, and a late
        // report of one of those would then name a job of this run.
        let last_id: i64 = sqlx::query_scalar(
            "SELECT MAX(COALESCE((SELECT MAX(id) FROM jobs), 0), COALESCE((SELECT MAX(id) FROM archived_jobs), 0))",
        )
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "WITH RECURSIVE
                 package (idx) AS (SELECT 0 UNION ALL SELECT idx + 1 FROM package WHERE idx + 1 < ?2),
                 iteration (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM iteration WHERE i < ?4)
             INSERT INTO jobs (id, run_id, package_idx, mode, iteration, state)
             SELECT ?5 + ROW_NUMBER() OVER (ORDER BY iteration.i, package.idx, mode.key),
                    ?1, package.idx, mode.value, iteration.i, 'pending'
             FROM iteration, package, json_each(?3) AS mode
             ORDER BY iteration.i, package.idx, mode.key",
        )
        .bind(run_id.to_string())
        .bind(spec.packages.len() as i64)
        .bind(to_json(&modes)?)
        .bind(i64::from(spec.iterations))
        .bind(last_id)
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
            "SELECT label, iterations, modes_json, options_json, registry, req_python_version,
                    req_free_threaded, req_tsan, rerun_of, req_debug, req_build
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

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
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
            let packages: Vec<(RunId, i64)> = (0..n_packages).map(|idx| (run_id, idx)).collect();
            refresh_packages(&mut tx, &packages).await?;
        }
        let summary = run_summary(&mut tx, run_id).await?;
        tx.commit().await?;
        Ok((summary, revoked))
    }

    async fn archive_run(&self, run_id: RunId, now_ms: i64) -> Result<RunSummary, StoreError> {
        let mut tx = self.pool.begin().await?;
        let archived = finished_run(&mut tx, run_id).await?;
        if archived.is_none() {
            // Every package of a finished or cancelled run has its verdict stored; one that
            // had not would be read from jobs no longer there.
            let unfinished: Vec<i64> =
                sqlx::query_scalar("SELECT package_idx FROM packages WHERE run_id = ?1 AND finished = 0")
                    .bind(run_id.to_string())
                    .fetch_all(&mut *tx)
                    .await?;
            if !unfinished.is_empty() {
                tracing::warn!(run.id = %run_id, packages = unfinished.len(),
                               "a finished run's packages had no stored verdict; writing them before archiving");
                write_verdicts(&mut tx, run_id, &unfinished).await?;
            }
            sqlx::query(&format!(
                "INSERT INTO archived_jobs ({ARCHIVED_JOB_COLUMNS})
                 SELECT {ARCHIVED_JOB_COLUMNS} FROM jobs WHERE run_id = ?1"
            ))
            .bind(run_id.to_string())
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM jobs WHERE run_id = ?1")
                .bind(run_id.to_string())
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE runs SET archived_at_ms = ?2 WHERE id = ?1")
                .bind(run_id.to_string())
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
        }
        let summary = run_summary(&mut tx, run_id).await?;
        tx.commit().await?;
        Ok(summary)
    }

    async fn purge_run(&self, run_id: RunId) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        finished_run(&mut tx, run_id).await?;
        let mut jobs = 0;
        for table in ["jobs", "archived_jobs"] {
            jobs += sqlx::query(&format!("DELETE FROM {table} WHERE run_id = ?1"))
                .bind(run_id.to_string())
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        sqlx::query("DELETE FROM packages WHERE run_id = ?1")
            .bind(run_id.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM runs WHERE id = ?1")
            .bind(run_id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(jobs)
    }

    async fn runs_to_archive(&self, finished_before_ms: i64, limit: u32) -> Result<Vec<RunId>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM runs
             WHERE archived_at_ms IS NULL AND finished_at_ms IS NOT NULL AND finished_at_ms <= ?1
               AND state IN ('finished', 'cancelled')
             ORDER BY finished_at_ms, id LIMIT ?2",
        )
        .bind(finished_before_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        ids.iter().map(|id| parse_run_id(id)).collect()
    }

    async fn claim_batch(&self, batch: ClaimBatch<'_>, now_ms: i64) -> Result<Vec<Vec<Assignment>>, StoreError> {
        let wants = batch.wants;
        let (total, warm_total) = common::batch_totals(wants);
        if total == 0 {
            return Ok(vec![Vec::new(); wants.len()]);
        }
        let mut tx = self.pool.begin().await?;
        // The runs this interpreter can serve, those with the fewest running jobs first.
        let runs: Vec<(String, String)> = sqlx::query_as(
            "SELECT r.id, r.state FROM runs r
             WHERE r.state IN ('queued', 'running')
               AND (r.req_python_version IS NULL OR r.req_python_version = ?1)
               AND (r.req_free_threaded = 0 OR ?2)
               AND r.req_tsan = ?3
               AND (r.req_debug IS NULL OR r.req_debug = ?4)
               -- InterpreterProfile::is_build: the build id, or the commit with either a
               -- prefix of the other.
               AND (r.req_build IS NULL OR r.req_build = ?5
                    OR (length(?6) >= 7 AND length(r.req_build) >= 7
                        AND (substr(?6, 1, length(r.req_build)) = r.req_build
                             OR substr(r.req_build, 1, length(?6)) = ?6)))
             ORDER BY (SELECT COUNT(*) FROM jobs j WHERE j.run_id = r.id AND j.state = 'leased'), r.id",
        )
        .bind(&batch.profile.major_minor)
        .bind(batch.profile.free_threaded)
        .bind(batch.profile.tsan)
        .bind(batch.profile.debug)
        .bind(batch.profile.build_id())
        .bind(batch.profile.commit().unwrap_or_default().to_ascii_lowercase())
        .fetch_all(&mut *tx)
        .await?;
        if runs.is_empty() {
            tx.commit().await?;
            return Ok(vec![Vec::new(); wants.len()]);
        }
        let run_ids: Vec<String> = runs.iter().map(|(id, _)| id.clone()).collect();
        let mut picked: Vec<PickedJob> = Vec::new();
        let warm = common::warm_names(wants);
        if !warm.is_empty() && warm_total > 0 {
            // Packages first, then each one's pending jobs (`CROSS JOIN` fixes that order):
            // the other way round reads the run's whole queue.
            picked = sqlx::query_as(
                "SELECT j.id, j.run_id, j.package_idx, j.mode, j.iteration, j.avoid_workers, j.avoid_until_ms
                 FROM packages p CROSS JOIN jobs j
                 WHERE p.run_id IN (SELECT value FROM json_each(?1))
                   AND p.name IN (SELECT value FROM json_each(?2))
                   AND j.run_id = p.run_id AND j.package_idx = p.package_idx AND j.state = 'pending'
                 ORDER BY j.iteration, j.run_id, j.package_idx, j.mode
                 LIMIT ?3",
            )
            .bind(to_json(&run_ids)?)
            .bind(to_json(&warm)?)
            .bind(i64::from(warm_total))
            .fetch_all(&mut *tx)
            .await?;
        }
        // The rest: an equal share from each run, then whatever runs still have.
        let mut fill = common::FairFill::new(total, run_ids.len());
        while let Some((run, want)) = fill.next(picked.len()) {
            let taken: Vec<i64> = picked.iter().map(|j| j.id).collect();
            let more: Vec<PickedJob> = sqlx::query_as(
                "SELECT id, run_id, package_idx, mode, iteration, avoid_workers, avoid_until_ms FROM jobs
                 WHERE run_id = ?1 AND state = 'pending' AND id NOT IN (SELECT value FROM json_each(?2))
                 ORDER BY iteration, package_idx, mode
                 LIMIT ?3",
            )
            .bind(&run_ids[run])
            .bind(to_json(&taken)?)
            .bind(i64::from(want))
            .fetch_all(&mut *tx)
            .await?;
            fill.took(run, want, more.len());
            picked.extend(more);
        }
        if picked.is_empty() {
            tx.commit().await?;
            return Ok(vec![Vec::new(); wants.len()]);
        }
        let mut names = Vec::with_capacity(picked.len());
        for job in &picked {
            let run_id = parse_run_id(&job.run_id)?;
            load_spec(&mut tx, &self.specs, run_id, job.package_idx).await?;
            let spec = self
                .specs
                .package(run_id, job.package_idx)
                .ok_or_else(|| StoreError::Corrupt(format!("no package {} in run {run_id}", job.package_idx)))?;
            names.push(spec.name.clone());
        }
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let avoided = picked
            .iter()
            .map(|job| job.avoided(now_ms))
            .collect::<Result<Vec<_>, _>>()?;
        let owners = common::distribute(wants, &names, &avoided);
        let tokens: Vec<LeaseToken> = picked.iter().map(|_| LeaseToken::random()).collect();
        // One statement leases them all: [id, worker, token] for each job that has an owner.
        let mut leases: Vec<(i64, &str, String, i64)> = Vec::with_capacity(picked.len());
        for ((job, owner), token) in picked.iter().zip(&owners).zip(&tokens) {
            if let Some(owner) = owner {
                let deadline = now_ms.saturating_add(self.specs.lease_deadline_ms(job)?);
                leases.push((job.id, wants[*owner].worker_id.as_str(), token.to_string(), deadline));
            }
        }
        let attempts: HashMap<i64, i64> = sqlx::query_as::<_, (i64, i64)>(
            "UPDATE jobs
             SET state = 'leased', worker_id = x.worker, lease_token = x.token, lease_expires_at_ms = ?2,
                 deadline_at_ms = x.deadline, attempt = attempt + 1
             FROM (SELECT value ->> 0 AS id, value ->> 1 AS worker, value ->> 2 AS token, value ->> 3 AS deadline
                   FROM json_each(?1)) AS x
             WHERE jobs.id = x.id
             RETURNING jobs.id, jobs.attempt",
        )
        .bind(to_json(&leases)?)
        .bind(now_ms + batch.lease_duration_ms)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        for (id, state) in &runs {
            if state == "queued" && picked.iter().any(|j| &j.run_id == id) {
                sqlx::query("UPDATE runs SET state = 'running' WHERE id = ?1 AND state = 'queued'")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        common::assignments(wants, &picked, &owners, &tokens, &attempts, &self.specs)
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
                "UPDATE jobs SET lease_expires_at_ms = MIN(?4, COALESCE(deadline_at_ms, ?4))
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

    async fn complete_batch(
        &self,
        reports: &[Report<'_>],
        retry: RetryPolicy,
        now_ms: i64,
    ) -> Result<Vec<Completion>, StoreError> {
        if reports.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        let mut completions: Vec<Option<Completion>> = vec![None; reports.len()];
        // Setups that failed for the infrastructure before the job's last attempt: back to the
        // queue, the worker kept from it for a while ([id, token, reason] for each). The lease
        // token stays, inert on a pending job, to tell which report ended the lease.
        let failed: Vec<(i64, String, String)> = reports
            .iter()
            .filter_map(|r| {
                common::infrastructure_failure(r.result).map(|why| (r.job_id.0, r.lease_token.to_string(), why))
            })
            .collect();
        let mut retried: HashMap<(i64, String), String> = HashMap::new();
        if !failed.is_empty() {
            let attempt_end = common::INFRA_ATTEMPT_END_SQL.replace("?REASON", "x.reason");
            retried = sqlx::query_as::<_, (i64, String, String)>(&format!(
                "UPDATE jobs
                 SET state = 'pending', worker_id = NULL, lease_expires_at_ms = NULL,
                     attempt_ends = {attempt_end}, ended_by = NULL,
                     avoid_workers = json_insert(COALESCE(jobs.avoid_workers, '[]'), '$[#]', jobs.worker_id),
                     avoid_until_ms = ?2
                 FROM (SELECT value ->> 0 AS id, value ->> 1 AS token, value ->> 2 AS reason FROM json_each(?1)) AS x
                 WHERE jobs.id = x.id AND jobs.lease_token = x.token AND +jobs.state = 'leased' AND jobs.attempt < ?3
                 RETURNING jobs.id, jobs.lease_token, jobs.run_id"
            ))
            .bind(to_json(&failed)?)
            .bind(now_ms.saturating_add(retry.elsewhere_ms))
            .bind(i64::from(retry.max_attempts))
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|(id, token, run_id)| ((id, token), run_id))
            .collect();
        }
        // A job reported twice in one batch under one lease is recorded by its first report;
        // the second is then a duplicate.
        let mut first_report: HashMap<(i64, String), usize> = HashMap::new();
        let mut outcomes = Vec::with_capacity(reports.len());
        for (i, report) in reports.iter().enumerate() {
            let key = (report.job_id.0, report.lease_token.to_string());
            if let Some(run_id) = retried.remove(&key) {
                completions[i] = Some(Completion {
                    ack: OutcomeAck::Recorded,
                    run_id: Some(parse_run_id(&run_id)?),
                    revoked: Vec::new(),
                    requeued: true,
                });
                continue;
            }
            if let std::collections::hash_map::Entry::Vacant(entry) = first_report.entry(key) {
                let (id, token) = entry.key().clone();
                let (result, stdout, stderr) = common::stored_result(report.result)?;
                outcomes.push((id, token, result, stdout, stderr));
                entry.insert(i);
            }
        }
        // One statement records them all: [id, token, result] for each. Each job is found by
        // its id; the unary `+` keeps the planner off the state index, through which it would
        // read every leased job once per report.
        let recorded: Vec<(i64, String, String, i64)> = sqlx::query_as(
            "UPDATE jobs SET state = 'done', result_json = x.result, settled_at_ms = ?2,
                             stdout_tail = x.stdout, stderr_tail = x.stderr
             FROM (SELECT value ->> 0 AS id, value ->> 1 AS token, value ->> 2 AS result,
                          value ->> 3 AS stdout, value ->> 4 AS stderr
                   FROM json_each(?1)) AS x
             WHERE jobs.id = x.id AND jobs.lease_token = x.token AND +jobs.state = 'leased'
             RETURNING jobs.id, jobs.lease_token, jobs.run_id, jobs.package_idx",
        )
        .bind(to_json(&outcomes)?)
        .bind(now_ms)
        .fetch_all(&mut *tx)
        .await?;
        // Recorded jobs' packages, each with the report that settles it, if one does.
        let mut packages: Vec<((RunId, i64), Option<usize>)> = Vec::new();
        for (id, token, run_id, package_idx) in recorded {
            let i = first_report
                .get(&(id, token))
                .copied()
                .ok_or_else(|| StoreError::Corrupt(format!("job {id} recorded under a lease nobody reported")))?;
            let run_id = parse_run_id(&run_id)?;
            load_spec(&mut tx, &self.specs, run_id, package_idx).await?;
            let options = self
                .specs
                .options(run_id)
                .ok_or_else(|| StoreError::Corrupt(format!("no options for run {run_id}")))?;
            let settles = common::settles_package(reports[i].result, &options).then_some(i);
            match packages.iter_mut().find(|(key, _)| *key == (run_id, package_idx)) {
                Some((_, settler)) => *settler = settler.or(settles),
                None => packages.push(((run_id, package_idx), settles)),
            }
            completions[i] = Some(Completion {
                ack: OutcomeAck::Recorded,
                run_id: Some(run_id),
                revoked: Vec::new(),
                requeued: false,
            });
        }
        for (i, report) in reports.iter().enumerate() {
            if completions[i].is_none() {
                completions[i] = Some(unrecorded(&mut tx, report).await?);
            }
        }
        let mut completions: Vec<Completion> = completions.into_iter().flatten().collect();
        for ((run_id, package_idx), settler) in &packages {
            if let Some(i) = *settler {
                let filter = "run_id = ?1 AND package_idx = ?2";
                completions[i].revoked = leased_jobs(&mut tx, filter, &run_id.to_string(), Some(*package_idx)).await?;
                sqlx::query(&format!(
                    "UPDATE jobs SET state = 'cancelled', settled_at_ms = ?3 WHERE {filter} AND state IN {LIVE_JOB_STATES}"
                ))
                .bind(run_id.to_string())
                .bind(package_idx)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
            }
        }
        let keys: Vec<(RunId, i64)> = packages.iter().map(|(key, _)| *key).collect();
        for run_id in refresh_packages(&mut tx, &keys).await? {
            refresh_run_state(&mut tx, run_id, now_ms).await?;
        }
        tx.commit().await?;
        Ok(completions)
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

    async fn expire_leases(&self, leases: &[(JobId, LeaseToken)], reason: &str, now_ms: i64) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for (job_id, token) in leases {
            sqlx::query(
                "UPDATE jobs SET lease_expires_at_ms = ?3, ended_by = ?4
                 WHERE id = ?1 AND lease_token = ?2 AND state = 'leased'",
            )
            .bind(job_id.0)
            .bind(token.to_string())
            .bind(now_ms - 1)
            .bind(reason)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
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
        let attempt_end = ATTEMPT_END_SQL.replace("?NOW", "?2");
        for row in expired {
            let job_id: i64 = row.try_get("id")?;
            let run_id = parse_run_id(row.try_get("run_id")?)?;
            let package_idx: i64 = row.try_get("package_idx")?;
            if u32_column(&row, "attempt")? >= max_attempts {
                sqlx::query(&format!(
                    "UPDATE jobs SET state = 'lost', settled_at_ms = ?2, attempt_ends = {attempt_end}, ended_by = NULL
                     WHERE id = ?1"
                ))
                .bind(job_id)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
                report.lost += 1;
            } else {
                sqlx::query(&format!(
                    "UPDATE jobs SET state = 'pending', worker_id = NULL, lease_token = NULL, lease_expires_at_ms = NULL,
                                     attempt_ends = {attempt_end}, ended_by = NULL
                     WHERE id = ?1"
                ))
                .bind(job_id)
                .bind(now_ms)
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
        refresh_packages(&mut tx, &packages).await?;
        for run_id in &report.runs_touched {
            refresh_run_state(&mut tx, *run_id, now_ms).await?;
        }
        tx.commit().await?;
        Ok(report)
    }

    async fn package_page(
        &self,
        run_id: RunId,
        query: PackageQuery<'_>,
    ) -> Result<Vec<(u32, PackageResult)>, StoreError> {
        let (names, indexes) = selected(query.packages)?;
        let mut tx = self.pool.begin().await?;
        run_state(&mut tx, run_id).await?;
        let rows: Vec<(i64, bool, String)> = sqlx::query_as(
            "SELECT package_idx, finished, result_json FROM packages
             WHERE run_id = ?1 AND (finished = 1 OR ?2 = 0)
               AND (?3 IS NULL OR name IN (SELECT value FROM json_each(?3)))
               AND (?4 IS NULL OR package_idx IN (SELECT value FROM json_each(?4)))
               AND package_idx > ?5
             ORDER BY package_idx LIMIT ?6",
        )
        .bind(run_id.to_string())
        .bind(query.finished_only)
        .bind(names)
        .bind(indexes)
        .bind(query.after.map_or(-1, i64::from))
        .bind(i64::from(query.limit))
        .fetch_all(&mut *tx)
        .await?;
        // Verdicts are stored once final; packages still going get their verdicts so far.
        let going: Vec<i64> = rows
            .iter()
            .filter(|(_, finished, _)| !finished)
            .map(|(idx, _, _)| *idx)
            .collect();
        let mut so_far = verdicts(&mut tx, run_id, &going).await?;
        tx.commit().await?;
        rows.into_iter()
            .map(|(package_idx, _, json)| {
                let result = match so_far.remove(&package_idx) {
                    Some(result) => result,
                    None => from_json(&json)?,
                };
                Ok((to_u32("package_idx", package_idx)?, result))
            })
            .collect()
    }

    async fn finished_packages(&self, run_id: RunId) -> Result<Vec<u32>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let indexes: Vec<i64> = sqlx::query_scalar(
            "SELECT package_idx FROM packages WHERE run_id = ?1 AND finished = 1 ORDER BY package_idx",
        )
        .bind(run_id.to_string())
        .fetch_all(&mut *conn)
        .await?;
        if indexes.is_empty() {
            // An unknown run has no packages either; say which it is.
            run_state(&mut conn, run_id).await?;
        }
        indexes.into_iter().map(|i| to_u32("package_idx", i)).collect()
    }

    async fn iteration_outputs(
        &self,
        run_id: RunId,
        packages: Packages<'_>,
    ) -> Result<Vec<IterationOutput>, StoreError> {
        let (names, indexes) = selected(packages)?;
        let rows: Vec<OutputRow> = sqlx::query_as(
            "SELECT j.package_idx, j.mode, j.iteration, j.stdout_tail, j.stderr_tail,
                    CASE WHEN j.stdout_tail IS NULL THEN j.result_json END AS result_json
             FROM (SELECT run_id, package_idx, mode, iteration, stdout_tail, stderr_tail, result_json
                   FROM jobs WHERE run_id = ?1
                   UNION ALL
                   SELECT run_id, package_idx, mode, iteration, stdout_tail, stderr_tail, result_json
                   FROM archived_jobs WHERE run_id = ?1) AS j
             JOIN packages p ON p.run_id = j.run_id AND p.package_idx = j.package_idx
             WHERE j.result_json IS NOT NULL
               AND (?2 IS NULL OR p.name IN (SELECT value FROM json_each(?2)))
               AND (?3 IS NULL OR j.package_idx IN (SELECT value FROM json_each(?3)))
             ORDER BY j.package_idx, j.mode, j.iteration",
        )
        .bind(run_id.to_string())
        .bind(names)
        .bind(indexes)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .filter_map(|row| {
                common::iteration_output(
                    (row.package_idx, &row.mode, row.iteration),
                    (row.stdout_tail, row.stderr_tail),
                    row.result_json.as_deref(),
                )
                .transpose()
            })
            .collect()
    }

    async fn iteration_job(
        &self,
        run_id: RunId,
        package: &str,
        mode: domain::Mode,
        iteration: u32,
    ) -> Result<Option<IterationJob>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let row: Option<IterationJobRow> = sqlx::query_as(
            // An archived run's jobs have moved, and its logs may still be on its workers.
            "SELECT j.id, j.state, j.worker_id, j.attempt
             FROM packages p JOIN (
                 SELECT id, run_id, package_idx, mode, iteration, state, worker_id, attempt FROM jobs
                 UNION ALL
                 SELECT id, run_id, package_idx, mode, iteration, state, worker_id, attempt FROM archived_jobs
             ) j ON j.run_id = p.run_id AND j.package_idx = p.package_idx
             WHERE p.run_id = ?1 AND p.name = ?2 AND j.mode = ?3 AND j.iteration = ?4",
        )
        .bind(run_id.to_string())
        .bind(package)
        .bind(mode.as_str())
        .bind(i64::from(iteration))
        .fetch_optional(&mut *conn)
        .await?;
        if row.is_none() {
            // An unknown run has no jobs either; say which it is.
            run_state(&mut conn, run_id).await?;
        }
        row.map(common::iteration_job).transpose()
    }
}

/// A job's id, state, worker and attempt, as `iteration_job` reads them.
type IterationJobRow = (i64, String, Option<String>, i64);

/// A job's output as `iteration_outputs` reads it.
#[derive(sqlx::FromRow)]
struct OutputRow {
    package_idx: i64,
    mode: String,
    iteration: i64,
    stdout_tail: Option<String>,
    stderr_tail: Option<String>,
    result_json: Option<String>,
}

/// A package selection as the queries' two optional JSON arrays: names, indexes.
fn selected(packages: Packages<'_>) -> Result<(Option<String>, Option<String>), StoreError> {
    Ok(match packages {
        Packages::All => (None, None),
        Packages::Named(names) => (Some(to_json(names)?), None),
        Packages::At(indexes) => (None, Some(to_json(indexes)?)),
    })
}

/// What a report that recorded nothing is: a duplicate of the job's recorded outcome, or stale.
async fn unrecorded(conn: &mut SqliteConnection, report: &Report<'_>) -> Result<Completion, StoreError> {
    let current: Option<(String, String, Option<String>)> =
        sqlx::query_as("SELECT run_id, state, lease_token FROM jobs WHERE id = ?1")
            .bind(report.job_id.0)
            .fetch_optional(&mut *conn)
            .await?;
    let Some((run_id, state, token)) = current else {
        return Ok(Completion {
            ack: OutcomeAck::Stale,
            run_id: None,
            revoked: Vec::new(),
            requeued: false,
        });
    };
    let same_lease = token.as_deref() == Some(report.lease_token.to_string().as_str());
    Ok(Completion {
        ack: if state == "done" && same_lease {
            OutcomeAck::Duplicate
        } else {
            OutcomeAck::Stale
        },
        run_id: Some(parse_run_id(&run_id)?),
        revoked: Vec::new(),
        requeued: false,
    })
}

/// Puts a package's spec and its run's options in the cache unless they are there.
async fn load_spec(
    conn: &mut SqliteConnection,
    cache: &SpecCache,
    run_id: RunId,
    package_idx: i64,
) -> Result<(), StoreError> {
    if cache.package(run_id, package_idx).is_some() && cache.options(run_id).is_some() {
        return Ok(());
    }
    let (spec, options): (String, String) = sqlx::query_as(
        "SELECT p.spec_json, r.options_json FROM packages p JOIN runs r ON r.id = p.run_id
         WHERE p.run_id = ?1 AND p.package_idx = ?2",
    )
    .bind(run_id.to_string())
    .bind(package_idx)
    .fetch_one(&mut *conn)
    .await?;
    cache.insert(run_id, package_idx, from_json(&spec)?, from_json(&options)?);
    Ok(())
}

/// Writes the verdicts of those of `packages` none of whose jobs is live, with one query for
/// which they are. Returns the runs that have one of them finished, each once.
///
/// A verdict is written once, when the package's last job settles; until then readers build
/// it from the jobs (`package_results`).
async fn refresh_packages(conn: &mut SqliteConnection, packages: &[(RunId, i64)]) -> Result<Vec<RunId>, StoreError> {
    if packages.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<(String, i64)> = packages.iter().map(|(run, idx)| (run.to_string(), *idx)).collect();
    let settled: Vec<(String, i64)> = sqlx::query_as(&format!(
        "SELECT k.value ->> 0, k.value ->> 1 FROM json_each(?1) AS k
         WHERE NOT EXISTS (SELECT 1 FROM jobs
                           WHERE run_id = k.value ->> 0 AND package_idx = k.value ->> 1
                             AND state IN {LIVE_JOB_STATES})"
    ))
    .bind(to_json(&keys)?)
    .fetch_all(&mut *conn)
    .await?;
    // Each run's settled packages, read and written together.
    let mut by_run: Vec<(RunId, Vec<i64>)> = Vec::new();
    for (run_id, package_idx) in settled {
        let run_id = parse_run_id(&run_id)?;
        match by_run.iter_mut().find(|(run, _)| *run == run_id) {
            Some((_, indexes)) => indexes.push(package_idx),
            None => by_run.push((run_id, vec![package_idx])),
        }
    }
    let mut finished_runs = Vec::new();
    for (run_id, indexes) in by_run {
        if write_verdicts(conn, run_id, &indexes).await? {
            finished_runs.push(run_id);
        }
    }
    Ok(finished_runs)
}

/// Writes the verdicts of a run's packages as their jobs stand. Returns whether any of them
/// is finished.
async fn write_verdicts(
    conn: &mut SqliteConnection,
    run_id: RunId,
    package_indexes: &[i64],
) -> Result<bool, StoreError> {
    let mut results = verdicts(conn, run_id, package_indexes).await?;
    // One statement writes them all: [index, category, finished, verdict] for each.
    let mut rows = Vec::with_capacity(package_indexes.len());
    for package_idx in package_indexes {
        let result = results
            .remove(package_idx)
            .ok_or_else(|| StoreError::Corrupt(format!("no package {package_idx} in run {run_id}")))?;
        let (category, finished) = (result.category.as_str(), result.finished);
        rows.push((package_idx, category, finished, common::stored_verdict(result)?));
    }
    sqlx::query(
        // Materialised, the rows are read first and each package found by its key; as a plain
        // subquery, the planner reads the run's every package once per row.
        "WITH x AS MATERIALIZED (
             SELECT value ->> 0 AS idx, value ->> 1 AS category, value ->> 2 AS finished, value ->> 3 AS result
             FROM json_each(?2)
         )
         UPDATE packages SET category = x.category, finished = x.finished, result_json = x.result
         FROM x
         WHERE packages.run_id = ?1 AND packages.package_idx = x.idx",
    )
    .bind(run_id.to_string())
    .bind(to_json(&rows)?)
    .execute(&mut *conn)
    .await?;
    Ok(rows.iter().any(|(_, _, finished, _)| *finished))
}

/// The verdicts of a run's packages as their jobs stand, by package index: two queries
/// however many packages.
async fn verdicts(
    conn: &mut SqliteConnection,
    run_id: RunId,
    package_indexes: &[i64],
) -> Result<HashMap<i64, PackageResult>, StoreError> {
    if package_indexes.is_empty() {
        return Ok(HashMap::new());
    }
    let indexes = to_json(package_indexes)?;
    // From the indexes to the rows, in that order (SQLite keeps CROSS JOIN order).
    let heads = sqlx::query(
        "SELECT p.package_idx, p.name, r.iterations
         FROM json_each(?2) AS k CROSS JOIN packages p JOIN runs r ON r.id = p.run_id
         WHERE p.run_id = ?1 AND p.package_idx = k.value",
    )
    .bind(run_id.to_string())
    .bind(&indexes)
    .fetch_all(&mut *conn)
    .await?;
    let rows: Vec<PackageJobRow> = sqlx::query_as(
        "SELECT j.package_idx, j.state, j.result_json, j.mode, j.iteration, j.attempt, j.worker_id, j.attempt_ends
         FROM json_each(?2) AS k CROSS JOIN jobs j
         WHERE j.run_id = ?1 AND j.package_idx = k.value",
    )
    .bind(run_id.to_string())
    .bind(&indexes)
    .fetch_all(&mut *conn)
    .await?;
    let mut jobs: HashMap<i64, Vec<JobRow>> = HashMap::new();
    for row in rows {
        jobs.entry(row.package_idx).or_default().push(row.job);
    }
    let mut out = HashMap::with_capacity(heads.len());
    for head in heads {
        let package_idx: i64 = head.try_get("package_idx")?;
        let name: String = head.try_get("name")?;
        let iterations = u32_column(&head, "iterations")?;
        let package_jobs = jobs.remove(&package_idx).unwrap_or_default();
        out.insert(package_idx, package_result(&name, iterations, package_jobs)?);
    }
    Ok(out)
}

/// One of a package's jobs, as its verdict reads it.
#[derive(Debug, sqlx::FromRow)]
struct PackageJobRow {
    package_idx: i64,
    #[sqlx(flatten)]
    job: JobRow,
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

/// When a run that may be archived or purged was archived: `RunNotFound`, or
/// `RunNotFinished` while it is queued or running.
async fn finished_run(conn: &mut SqliteConnection, run_id: RunId) -> Result<Option<i64>, StoreError> {
    let row: Option<(String, Option<i64>)> = sqlx::query_as("SELECT state, archived_at_ms FROM runs WHERE id = ?1")
        .bind(run_id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    let (state, archived) = row.ok_or(StoreError::RunNotFound(run_id))?;
    let state = RunState::from_str(&state).map_err(StoreError::Corrupt)?;
    if !state.is_terminal() {
        return Err(StoreError::RunNotFinished(run_id, state));
    }
    Ok(archived)
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
    let run: (String, String, i64, Option<i64>, Option<i64>) =
        sqlx::query_as("SELECT label, state, created_at_ms, finished_at_ms, archived_at_ms FROM runs WHERE id = ?1")
            .bind(run_id.to_string())
            .fetch_optional(&mut *conn)
            .await?
            .ok_or(StoreError::RunNotFound(run_id))?;
    // Both tables in one statement, which sees the jobs on one side or the other however an
    // archive at the same time goes.
    let job_counts = sqlx::query_as(
        "SELECT state, COUNT(*) FROM jobs WHERE run_id = ?1 GROUP BY state
         UNION ALL
         SELECT state, COUNT(*) FROM archived_jobs WHERE run_id = ?1 GROUP BY state",
    )
    .bind(run_id.to_string())
    .fetch_all(&mut *conn)
    .await?;
    let package_counts =
        sqlx::query_as("SELECT category, finished, COUNT(*) FROM packages WHERE run_id = ?1 GROUP BY 1, 2")
            .bind(run_id.to_string())
            .fetch_all(&mut *conn)
            .await?;
    let (label, state, created_at_ms, finished_at_ms, archived_at_ms) = run;
    common::run_summary(
        run_id,
        RunRow {
            label,
            state,
            created_at_ms,
            finished_at_ms,
            archived_at_ms,
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

fn u32_column(row: &sqlx::sqlite::SqliteRow, column: &str) -> Result<u32, StoreError> {
    to_u32(column, row.try_get(column)?)
}
