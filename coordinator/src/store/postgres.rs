//! The PostgreSQL backend of the store: the fleet's, shared by many workers at once.
//!
//! Every method is one transaction, but a claim: it is a read-only pick, then one statement
//! that leases the picked jobs still pending, taken `FOR UPDATE SKIP LOCKED`, so no job is
//! leased twice. Picks in one coordinator go one at a time, passing by the jobs of picks whose
//! lease has not returned; the leases overlap the next pick (see `claim_batch`).

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use domain::{
    Assignment, JobId, LeaseToken, OutcomeAck, PackageResult, RunId, RunSpec, RunState, RunSummary, WorkerId,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use super::common::{
    self, ARCHIVED_JOB_COLUMNS, ATTEMPT_END_SQL, JobRow, LIVE_JOB_STATES, PickedJob, RunRow, RunSpecRow, SpecCache,
    from_json, package_result, parse_run_id, revoked, to_json, to_u32,
};
use super::{
    ClaimBatch, Completion, IterationJob, IterationOutput, PackageQuery, Packages, ReapReport, Report, RetryPolicy,
    RevokedLease, Store, StoreError,
};

/// Connections in the pool: claims and outcomes from many workers run side by side.
const POOL_SIZE: u32 = 16;

/// A pooled connection idle longer than this is pinged before it is used.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(1);

/// A store in one PostgreSQL database.
#[derive(Debug)]
pub struct PostgresStore {
    pool: PgPool,
    specs: Arc<SpecCache>,
    /// Taken for a claim's pick: picks in this process go one at a time, each seeing what the
    /// ones before it picked, while their leases overlap the next pick.
    picking: tokio::sync::Mutex<()>,
    /// Jobs picked by a claim whose lease has not returned yet; the next picks pass them by.
    reserved: std::sync::Mutex<HashSet<i64>>,
}

impl PostgresStore {
    /// The settings of the coordinator's connections to the database at `url`.
    ///
    /// Every statement here reaches its rows by key. The planner's statistics lag a queue that
    /// changes thousands of rows a second (a run's jobs go from all pending to all done
    /// between two autovacuum passes), and with them it would sometimes read a whole table
    /// instead; on these connections a sequential scan is the last resort. Nor do statements
    /// this small gain from JIT compilation, which such a cost would set off. And each
    /// prepared statement keeps one generic plan: planning the claim's statements afresh for
    /// their parameters took longer than running them (0.3 ms against 0.07 for the pick, at
    /// one job a claim), and a plan by key does not depend on the keys.
    pub fn connect_options(url: &str) -> Result<PgConnectOptions, StoreError> {
        Ok(PgConnectOptions::from_str(url)?.options([
            ("enable_seqscan", "off"),
            ("enable_memoize", "off"),
            ("jit", "off"),
            ("plan_cache_mode", "force_generic_plan"),
        ]))
    }

    /// Connects to the database at `url` and applies the migrations.
    pub(crate) async fn open(url: &str) -> Result<Self, StoreError> {
        let options = Self::connect_options(url)?;
        // A connection is checked with a round trip before use only after it has been idle a
        // while (across a database restart, say): checking every one would add a round trip
        // to every claim and outcome transaction. One that broke while busy fails its
        // statement and is dropped.
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(Duration::from_secs(10))
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for > IDLE_BEFORE_PING {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(options)
            .await?;
        sqlx::migrate!("../migrations/postgres").run(&pool).await?;
        Ok(PostgresStore {
            pool,
            specs: Arc::default(),
            picking: tokio::sync::Mutex::new(()),
            reserved: std::sync::Mutex::default(),
        })
    }
}

#[async_trait]
impl Store for PostgresStore {
    /// Two: one claim's lease overlaps the next one's pick, and outcomes go through two
    /// queues, one package always through the same one (see `Batcher`).
    fn parallel_transactions(&self) -> usize {
        2
    }

    async fn insert_run(
        &self,
        run_id: RunId,
        spec: &RunSpec,
        client_token: Option<&str>,
        now_ms: i64,
    ) -> Result<RunSummary, StoreError> {
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
                               req_free_threaded, req_tsan, client_token, created_at_ms, rerun_of, req_debug, req_build)
             VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
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
        .bind(spec.rerun_of.map(|id| id.to_string()))
        .bind(spec.requirement.debug)
        .bind(&spec.requirement.build)
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
        let n_jobs = spec.packages.len() as u64 * spec.modes.len() as u64 * u64::from(spec.iterations);
        if let Err(error) = refresh_statistics(&self.pool, n_jobs, spec.packages.len() as u64).await {
            tracing::warn!(error = %error, "could not refresh the planner's statistics after a submit");
        }
        Ok(summary)
    }

    async fn get_run(&self, run_id: RunId) -> Result<(RunSummary, RunSpec), StoreError> {
        let mut tx = self.pool.begin().await?;
        let summary = run_summary(&mut tx, run_id).await?;
        let row: RunSpecRow = sqlx::query_as(
            "SELECT label, iterations::bigint AS iterations, modes_json, options_json, registry, req_python_version,
                    req_free_threaded, req_tsan, rerun_of, req_debug, req_build
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

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
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
        // Locks in the order every settling transaction takes them: the run's packages, the
        // run's finish, then its row.
        let indexes: Vec<i32> =
            sqlx::query_scalar("SELECT package_idx FROM packages WHERE run_id = $1 ORDER BY package_idx")
                .bind(run_id.to_string())
                .fetch_all(&mut *tx)
                .await?;
        let packages: Vec<(RunId, i64)> = indexes.into_iter().map(|idx| (run_id, i64::from(idx))).collect();
        lock_packages(&mut tx, &packages).await?;
        lock_run(&mut tx, run_id).await?;
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
            refresh_packages(&mut tx, &packages, now_ms).await?;
        }
        let summary = run_summary(&mut tx, run_id).await?;
        tx.commit().await?;
        Ok((summary, revoked_leases))
    }

    async fn archive_run(&self, run_id: RunId, now_ms: i64) -> Result<RunSummary, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The run's finish lock, then its row, in the order cancel_run takes them.
        lock_run(&mut tx, run_id).await?;
        let (state, archived) = finished_run_for_update(&mut tx, run_id).await?;
        if archived.is_none() {
            // Every package of a finished or cancelled run has its verdict stored; one that
            // had not would be read from jobs no longer there.
            let unfinished: Vec<i32> =
                sqlx::query_scalar("SELECT package_idx FROM packages WHERE run_id = $1 AND NOT finished")
                    .bind(run_id.to_string())
                    .fetch_all(&mut *tx)
                    .await?;
            if !unfinished.is_empty() {
                tracing::warn!(run.id = %run_id, run.state = %state, packages = unfinished.len(),
                               "a finished run's packages had no stored verdict; writing them before archiving");
                let packages: Vec<(RunId, i64)> = unfinished.into_iter().map(|idx| (run_id, i64::from(idx))).collect();
                write_verdicts(&mut tx, &packages, now_ms).await?;
            }
            sqlx::query(&format!(
                "WITH moved AS (DELETE FROM jobs WHERE run_id = $1 RETURNING {ARCHIVED_JOB_COLUMNS})
                 INSERT INTO archived_jobs ({ARCHIVED_JOB_COLUMNS}) SELECT {ARCHIVED_JOB_COLUMNS} FROM moved"
            ))
            .bind(run_id.to_string())
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE runs SET archived_at_ms = $2 WHERE id = $1")
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
        lock_run(&mut tx, run_id).await?;
        finished_run_for_update(&mut tx, run_id).await?;
        let mut jobs = 0;
        for table in ["jobs", "archived_jobs"] {
            jobs += sqlx::query(&format!("DELETE FROM {table} WHERE run_id = $1"))
                .bind(run_id.to_string())
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        sqlx::query("DELETE FROM packages WHERE run_id = $1")
            .bind(run_id.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM runs WHERE id = $1")
            .bind(run_id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(jobs)
    }

    async fn runs_to_archive(&self, finished_before_ms: i64, limit: u32) -> Result<Vec<RunId>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM runs
             WHERE archived_at_ms IS NULL AND finished_at_ms IS NOT NULL AND finished_at_ms <= $1
               AND state IN ('finished', 'cancelled')
             ORDER BY finished_at_ms, id LIMIT $2",
        )
        .bind(finished_before_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        ids.iter().map(|id| parse_run_id(id)).collect()
    }

    async fn claim_batch(&self, batch: ClaimBatch<'_>, now_ms: i64) -> Result<Vec<Vec<Assignment>>, StoreError> {
        let wants = batch.wants;
        let (total, _) = common::batch_totals(wants);
        if total == 0 {
            return Ok(vec![Vec::new(); wants.len()]);
        }
        let mut conn = self.pool.acquire().await?;
        // A claim is two statements and no transaction: one picks the jobs to lease, reading
        // only; the other leases them, taking only those still pending, `FOR UPDATE SKIP
        // LOCKED`. A job another claim took in between is left out, never leased twice.
        //
        // Picks go one at a time and pass by the jobs of picks whose leases are still on their
        // way, so two claims in flight do not pick the same jobs, and one's lease overlaps the
        // next one's pick.
        let picking = self.picking.lock().await;
        let reserved: Vec<i64> = self
            .reserved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect();
        // The pick finds the runs this interpreter can serve (those with the fewest running
        // jobs first), each want's warm jobs (up to its room from the packages it set up,
        // most recent first, stopping once it has enough; each package probed through the
        // (run, state, package) key, a few index lookups however long the queue), and the
        // first jobs of the first run's queue: most claims need nothing more.
        let (mut names, mut firsts, mut lasts, mut rooms) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for want in wants {
            firsts.push(names.len() as i32 + 1);
            names.extend(want.warm_packages.iter().rev().map(String::as_str));
            lasts.push(names.len() as i32);
            rooms.push(want.max_jobs as i32);
        }
        let rows: Vec<ClaimRow> = sqlx::query_as(
            "WITH runnable AS MATERIALIZED (
                 SELECT r.id FROM runs r
                 WHERE r.state IN ('queued', 'running')
                   AND (r.req_python_version IS NULL OR r.req_python_version = $1)
                   AND (NOT r.req_free_threaded OR $2)
                   AND r.req_tsan = $3
                   AND (r.req_debug IS NULL OR r.req_debug = $10::boolean)
                   -- InterpreterProfile::is_build: the build id, or the commit with either a
                   -- prefix of the other.
                   AND (r.req_build IS NULL OR r.req_build = $11::text
                        OR (length($12::text) >= 7 AND length(r.req_build) >= 7
                            AND (left($12::text, length(r.req_build)) = r.req_build
                                 OR left(r.req_build, length($12::text)) = $12::text)))
             ),
             -- Running jobs are counted only when there are runs to share between.
             eligible AS MATERIALIZED (
                 SELECT r.id,
                        CASE WHEN (SELECT COUNT(*) FROM runnable) > 1
                             THEN (SELECT COUNT(*) FROM jobs j WHERE j.run_id = r.id AND j.state = 'leased')
                             ELSE 0 END AS running
                 FROM runnable r
             ),
             warm AS MATERIALIZED (
                 SELECT j.id, j.run_id, j.package_idx, j.mode, j.iteration, j.avoid_workers, j.avoid_until_ms
                 FROM UNNEST($5::int[], $6::int[], $7::int[]) AS w (first, last, room)
                 CROSS JOIN LATERAL (
                     SELECT j.id, j.run_id, j.package_idx, j.mode, j.iteration, j.avoid_workers, j.avoid_until_ms
                     FROM UNNEST(($4::text[])[w.first:w.last]) AS n (name)
                     CROSS JOIN eligible r
                     CROSS JOIN LATERAL (
                         SELECT package_idx FROM packages p WHERE p.run_id = r.id AND p.name = n.name LIMIT 1
                     ) AS p
                     CROSS JOIN LATERAL (
                         SELECT id, run_id, package_idx, mode, iteration, avoid_workers, avoid_until_ms FROM jobs
                         WHERE jobs.run_id = r.id AND jobs.state = 'pending' AND jobs.package_idx = p.package_idx
                           AND NOT (jobs.id = ANY($9))
                         ORDER BY jobs.iteration
                         LIMIT w.room
                     ) AS j
                     LIMIT w.room
                 ) AS j
             ),
             fill AS MATERIALIZED (
                 SELECT id, run_id, package_idx, mode, iteration, avoid_workers, avoid_until_ms FROM jobs
                 WHERE run_id = (SELECT id FROM eligible ORDER BY running, id LIMIT 1)
                   AND state = 'pending' AND id NOT IN (SELECT id FROM warm) AND NOT (id = ANY($9))
                 ORDER BY jobs.iteration, jobs.package_idx, jobs.mode
                 -- The fair share's first ask, as common::FairFill makes it.
                 LIMIT GREATEST(0, LEAST($8 - (SELECT COUNT(*) FROM warm),
                                         CEIL($8::numeric / GREATEST(1, (SELECT COUNT(*) FROM eligible)))))
             )
             SELECT (SELECT array_agg(id ORDER BY running, id) FROM eligible) AS run_ids,
                    picked.part, picked.id, picked.run_id, picked.package_idx::bigint AS package_idx, picked.mode,
                    picked.iteration::bigint AS iteration, picked.avoid_workers, picked.avoid_until_ms
             FROM (SELECT 1) AS base
             LEFT JOIN (SELECT 0 AS part, * FROM warm UNION ALL SELECT 1 AS part, * FROM fill) AS picked ON TRUE
             ORDER BY picked.part, picked.iteration, picked.run_id, picked.package_idx, picked.mode",
        )
        .bind(&batch.profile.major_minor)
        .bind(batch.profile.free_threaded)
        .bind(batch.profile.tsan)
        .bind(&names)
        .bind(&firsts)
        .bind(&lasts)
        .bind(&rooms)
        .bind(i64::from(total))
        .bind(&reserved)
        .bind(batch.profile.debug)
        .bind(batch.profile.build_id())
        .bind(batch.profile.commit().unwrap_or_default().to_ascii_lowercase())
        .fetch_all(&mut *conn)
        .await?;
        let run_ids = rows.first().and_then(|row| row.run_ids.clone()).unwrap_or_default();
        if run_ids.is_empty() {
            return Ok(vec![Vec::new(); wants.len()]);
        }
        let (mut picked, mut first_run): (Vec<PickedJob>, Vec<PickedJob>) = (Vec::new(), Vec::new());
        // Two wants with one package set up may have picked the same job: it counts once.
        let mut seen = std::collections::HashSet::new();
        for row in rows {
            if let Some(job) = row.job()?
                && seen.insert(job.id)
            {
                if row.part == Some(0) {
                    picked.push(job);
                } else {
                    first_run.push(job);
                }
            }
        }
        let mut first_run = Some(first_run);
        // The rest: an equal share from each run, then whatever runs still have.
        let mut fill = common::FairFill::new(total, run_ids.len());
        while let Some((run, want)) = fill.next(picked.len()) {
            if run == 0
                && let Some(mut more) = first_run.take()
            {
                // Fetched above, asked as here; any rows left out stay pending.
                let got = more.len();
                more.truncate(want as usize);
                fill.took(run, want, got);
                picked.extend(more);
                continue;
            }
            let taken: Vec<i64> = picked.iter().map(|j| j.id).chain(reserved.iter().copied()).collect();
            let more: Vec<PickedJob> = sqlx::query_as(
                "SELECT id, run_id, package_idx::bigint AS package_idx, mode, iteration::bigint AS iteration,
                        avoid_workers, avoid_until_ms
                 FROM jobs
                 WHERE run_id = $1 AND state = 'pending' AND NOT (id = ANY($2))
                 ORDER BY jobs.iteration, jobs.package_idx, jobs.mode
                 LIMIT $3",
            )
            .bind(&run_ids[run])
            .bind(&taken)
            .bind(i64::from(want))
            .fetch_all(&mut *conn)
            .await?;
            fill.took(run, want, more.len());
            picked.extend(more);
        }
        if picked.is_empty() {
            return Ok(vec![Vec::new(); wants.len()]);
        }
        let _reservation = Reservation::new(&self.reserved, picked.iter().map(|job| job.id).collect());
        drop(picking);
        load_specs(&mut conn, &self.specs, &picked).await?;
        let names: Vec<String> = picked
            .iter()
            .map(|job| {
                let run_id = parse_run_id(&job.run_id)?;
                self.specs
                    .package(run_id, job.package_idx)
                    .map(|spec| spec.name.clone())
                    .ok_or_else(|| StoreError::Corrupt(format!("no package {} in run {run_id}", job.package_idx)))
            })
            .collect::<Result<_, _>>()?;
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let avoided = picked
            .iter()
            .map(|job| job.avoided(now_ms))
            .collect::<Result<Vec<_>, _>>()?;
        let owners = common::distribute(wants, &names, &avoided);
        let tokens: Vec<LeaseToken> = picked.iter().map(|_| LeaseToken::random()).collect();
        let (mut ids, mut workers, mut lease_tokens, mut deadlines) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((job, owner), token) in picked.iter().zip(&owners).zip(&tokens) {
            if let Some(owner) = owner {
                ids.push(job.id);
                workers.push(wants[*owner].worker_id.as_str());
                lease_tokens.push(token.to_string());
                deadlines.push(now_ms.saturating_add(self.specs.lease_deadline_ms(job)?));
            }
        }
        let attempts: HashMap<i64, i64> = sqlx::query_as::<_, (i64, i32)>(
            // The picked jobs are locked by id, each looked up from its row of the arrays; the
            // update then finds each locked job by id. Joining the arrays to the update instead
            // let the planner, once the table's statistics showed few jobs pending, scan all of
            // them again for every job leased.
            "WITH locked AS (
                 SELECT jobs.id, x.worker, x.token, x.deadline
                 FROM UNNEST($1::bigint[], $2::text[], $3::text[], $5::bigint[]) AS x (id, worker, token, deadline)
                 JOIN jobs ON jobs.id = x.id
                 WHERE jobs.state = 'pending'
                 FOR UPDATE OF jobs SKIP LOCKED
             ),
             leased AS (
                 UPDATE jobs
                 SET state = 'leased', worker_id = locked.worker, lease_token = locked.token,
                     lease_expires_at_ms = $4, deadline_at_ms = locked.deadline, attempt = jobs.attempt + 1
                 FROM locked
                 WHERE jobs.id = locked.id
                 RETURNING jobs.id, jobs.attempt, jobs.run_id
             ),
             started AS (
                 UPDATE runs SET state = 'running' WHERE id IN (SELECT run_id FROM leased) AND state = 'queued'
             )
             SELECT id, attempt FROM leased",
        )
        .bind(&ids)
        .bind(&workers)
        .bind(&lease_tokens)
        .bind(now_ms + batch.lease_duration_ms)
        .bind(&deadlines)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|(id, attempt)| (id, i64::from(attempt)))
        .collect();
        common::assignments(wants, &picked, &owners, &tokens, &attempts, &self.specs)
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
            // LEAST ignores a NULL deadline (a lease from before deadlines were kept).
            "UPDATE jobs SET lease_expires_at_ms = LEAST($4, jobs.deadline_at_ms)
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
        let all_ids: Vec<i64> = reports.iter().map(|r| r.job_id.0).collect();
        lock_packages_of_jobs(&mut tx, &all_ids).await?;
        let mut outcome: Vec<Option<Completion>> = vec![None; reports.len()];
        // Setups that failed for the infrastructure before the job's last attempt: back to the
        // queue, the worker kept from it for a while. The lease token stays, inert on a
        // pending job, to tell which report ended the lease.
        let (mut failed_ids, mut failed_tokens, mut reasons) = (Vec::new(), Vec::new(), Vec::new());
        for report in reports {
            if let Some(reason) = common::infrastructure_failure(report.result) {
                failed_ids.push(report.job_id.0);
                failed_tokens.push(report.lease_token.to_string());
                reasons.push(reason);
            }
        }
        let mut retried: HashMap<(i64, String), String> = HashMap::new();
        if !failed_ids.is_empty() {
            retried = sqlx::query_as::<_, (i64, String, String)>(&format!(
                "UPDATE jobs
                 SET state = 'pending', worker_id = NULL, lease_expires_at_ms = NULL,
                     attempt_ends = {}, ended_by = NULL,
                     avoid_workers = (COALESCE(jobs.avoid_workers, '[]')::jsonb || to_jsonb(jobs.worker_id))::text,
                     avoid_until_ms = $4
                 FROM UNNEST($1::bigint[], $2::text[], $3::text[]) AS x (id, token, reason)
                 WHERE jobs.id = x.id AND jobs.lease_token = x.token AND jobs.state = 'leased' AND jobs.attempt < $5
                 RETURNING jobs.id, jobs.lease_token, jobs.run_id",
                common::INFRA_ATTEMPT_END_SQL.replace("?REASON", "x.reason")
            ))
            .bind(&failed_ids)
            .bind(&failed_tokens)
            .bind(&reasons)
            .bind(now_ms.saturating_add(retry.elsewhere_ms))
            .bind(retry.max_attempts as i32)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|(id, token, run_id)| ((id, token), run_id))
            .collect();
        }
        // A job reported twice in one batch under one lease is recorded by its first report;
        // the second is then a duplicate. Reports under different leases all go in: at most
        // one of them names the current lease.
        let mut seen = std::collections::HashSet::new();
        let (mut numbers, mut ids, mut tokens, mut results) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut stdouts, mut stderrs) = (Vec::new(), Vec::new());
        for (n, report) in reports.iter().enumerate() {
            let token = report.lease_token.to_string();
            if let Some(run_id) = retried.remove(&(report.job_id.0, token.clone())) {
                outcome[n] = Some(Completion {
                    ack: OutcomeAck::Recorded,
                    run_id: Some(parse_run_id(&run_id)?),
                    revoked: Vec::new(),
                    requeued: true,
                });
                continue;
            }
            if seen.insert((report.job_id.0, token.clone())) {
                numbers.push(n as i64 + 1);
                ids.push(report.job_id.0);
                tokens.push(token);
                let (result, stdout, stderr) = common::stored_result(report.result)?;
                results.push(result);
                stdouts.push(stdout);
                stderrs.push(stderr);
            }
        }
        // Each recorded job comes back with whether its package has another job still to run,
        // as of this statement: the package locks make that the last word, since every other
        // transaction that settles jobs of these packages has committed or waits.
        let recorded: Vec<(i64, i64, String, i32, bool)> = sqlx::query_as(
            "WITH done AS (
                 UPDATE jobs SET state = 'done', result_json = x.result, settled_at_ms = $5,
                                 stdout_tail = x.stdout, stderr_tail = x.stderr
                 FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $6::text[], $7::text[])
                      AS x (n, id, token, result, stdout, stderr)
                 WHERE jobs.id = x.id AND jobs.lease_token = x.token AND jobs.state = 'leased'
                 RETURNING x.n, jobs.id, jobs.run_id, jobs.package_idx
             )
             SELECT d.n, d.id, d.run_id, d.package_idx,
                    EXISTS (SELECT 1 FROM jobs j
                            WHERE j.run_id = d.run_id AND j.state = 'pending' AND j.package_idx = d.package_idx)
                    OR EXISTS (SELECT 1 FROM jobs j
                               WHERE j.run_id = d.run_id AND j.state = 'leased' AND j.package_idx = d.package_idx
                                 AND j.id NOT IN (SELECT id FROM done)) AS live
             FROM done d",
        )
        .bind(&numbers)
        .bind(&ids)
        .bind(&tokens)
        .bind(&results)
        .bind(now_ms)
        .bind(&stdouts)
        .bind(&stderrs)
        .fetch_all(&mut *tx)
        .await?;
        // Recorded jobs: their package, and the report that recorded them.
        let mut recorded_jobs: Vec<(RunId, i64, usize)> = Vec::with_capacity(recorded.len());
        // Packages with a job still to run; the others are settled now.
        let mut live: HashSet<(RunId, i64)> = HashSet::new();
        for (n, _, run, idx, still_live) in recorded {
            let run_id = parse_run_id(&run)?;
            if still_live {
                live.insert((run_id, i64::from(idx)));
            }
            let i = usize::try_from(n - 1).map_err(|_| StoreError::Corrupt(format!("report number {n}")))?;
            outcome[i] = Some(Completion {
                ack: OutcomeAck::Recorded,
                run_id: Some(run_id),
                revoked: Vec::new(),
                requeued: false,
            });
            recorded_jobs.push((run_id, i64::from(idx), i));
        }
        let others: Vec<i64> = reports
            .iter()
            .zip(&outcome)
            .filter(|(_, c)| c.is_none())
            .map(|(r, _)| r.job_id.0)
            .collect();
        if !others.is_empty() {
            let current: HashMap<i64, (String, String, Option<String>)> =
                sqlx::query_as::<_, (i64, String, String, Option<String>)>(
                    "SELECT id, run_id, state, lease_token FROM jobs WHERE id = ANY($1)",
                )
                .bind(&others)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .map(|(id, run, state, token)| (id, (run, state, token)))
                .collect();
            for (i, report) in reports.iter().enumerate() {
                if outcome[i].is_some() {
                    continue;
                }
                outcome[i] = Some(match current.get(&report.job_id.0) {
                    None => Completion {
                        ack: OutcomeAck::Stale,
                        run_id: None,
                        revoked: Vec::new(),
                        requeued: false,
                    },
                    Some((run, state, token)) => {
                        let same_lease = token.as_deref() == Some(report.lease_token.to_string().as_str());
                        Completion {
                            ack: if state == "done" && same_lease {
                                OutcomeAck::Duplicate
                            } else {
                                OutcomeAck::Stale
                            },
                            run_id: Some(parse_run_id(run)?),
                            revoked: Vec::new(),
                            requeued: false,
                        }
                    }
                });
            }
        }
        if !recorded_jobs.is_empty() {
            let mut packages: Vec<(RunId, i64)> = recorded_jobs.iter().map(|(r, p, _)| (*r, *p)).collect();
            packages.sort();
            packages.dedup();
            load_package_specs(&mut tx, &self.specs, &packages).await?;
            let mut settled: Vec<(RunId, i64, usize)> = Vec::new();
            for &(run_id, package_idx, i) in &recorded_jobs {
                let options = self
                    .specs
                    .options(run_id)
                    .ok_or_else(|| StoreError::Corrupt(format!("no options for run {run_id}")))?;
                if common::settles_package(reports[i].result, &options)
                    && !settled.iter().any(|(r, p, _)| (*r, *p) == (run_id, package_idx))
                {
                    settled.push((run_id, package_idx, i));
                }
            }
            if !settled.is_empty() {
                let (runs, indexes) = package_keys(&settled.iter().map(|(r, p, _)| (*r, *p)).collect::<Vec<_>>());
                let rows: Vec<(i64, String, i32, Option<String>)> = sqlx::query_as(&format!(
                    "UPDATE jobs SET state = 'cancelled', settled_at_ms = $3
                     WHERE (run_id, package_idx) IN (SELECT * FROM UNNEST($1::text[], $2::int[]))
                       AND state IN {LIVE_JOB_STATES}
                     RETURNING id, run_id, package_idx, worker_id"
                ))
                .bind(&runs)
                .bind(&indexes)
                .bind(now_ms)
                .fetch_all(&mut *tx)
                .await?;
                for (id, run, idx, worker) in rows {
                    let Some(worker) = worker else { continue };
                    let run_id = parse_run_id(&run)?;
                    let Some((_, _, i)) = settled.iter().find(|(r, p, _)| (*r, *p) == (run_id, i64::from(idx))) else {
                        continue;
                    };
                    if let Some(completion) = outcome[*i].as_mut() {
                        completion.revoked.extend(revoked(vec![(id, worker)])?);
                    }
                }
            }
            // A package settled by a result has no live job left either.
            let done: Vec<(RunId, i64)> = packages
                .iter()
                .filter(|key| !live.contains(key) || settled.iter().any(|(r, p, _)| (*r, *p) == **key))
                .copied()
                .collect();
            if !done.is_empty() {
                write_verdicts(&mut tx, &done, now_ms).await?;
            }
        }
        tx.commit().await?;
        outcome
            .into_iter()
            .map(|c| c.ok_or_else(|| StoreError::Corrupt("a report without a completion".into())))
            .collect()
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

    async fn expire_leases(&self, leases: &[(JobId, LeaseToken)], reason: &str, now_ms: i64) -> Result<(), StoreError> {
        let ids: Vec<i64> = leases.iter().map(|(id, _)| id.0).collect();
        let tokens: Vec<String> = leases.iter().map(|(_, t)| t.to_string()).collect();
        sqlx::query(
            "UPDATE jobs SET lease_expires_at_ms = $3, ended_by = $4
             FROM UNNEST($1::bigint[], $2::text[]) AS held (id, token)
             WHERE jobs.id = held.id AND jobs.lease_token = held.token AND jobs.state = 'leased'",
        )
        .bind(&ids)
        .bind(&tokens)
        .bind(now_ms - 1)
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn reap_expired(&self, max_attempts: u32, now_ms: i64) -> Result<ReapReport, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The expired leases' packages are locked before any job changes (see lock_packages);
        // only the jobs found here are reaped, so none of an unlocked package.
        let expired: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM jobs
             WHERE run_id IN (SELECT id FROM runs WHERE state IN ('queued', 'running'))
               AND state = 'leased' AND lease_expires_at_ms < $1",
        )
        .bind(now_ms)
        .fetch_all(&mut *tx)
        .await?;
        if expired.is_empty() {
            tx.commit().await?;
            return Ok(ReapReport::default());
        }
        lock_packages_of_jobs(&mut tx, &expired).await?;
        let rows: Vec<(String, i32, String)> = sqlx::query_as(&format!(
            "WITH expired AS (
                 SELECT id FROM jobs
                 WHERE id = ANY($3) AND state = 'leased' AND lease_expires_at_ms < $1
                 FOR UPDATE SKIP LOCKED
             )
             UPDATE jobs
             SET state = CASE WHEN jobs.attempt >= $2 THEN 'lost' ELSE 'pending' END,
                 settled_at_ms = CASE WHEN jobs.attempt >= $2 THEN $1 END,
                 worker_id = CASE WHEN jobs.attempt >= $2 THEN jobs.worker_id END,
                 lease_token = CASE WHEN jobs.attempt >= $2 THEN jobs.lease_token END,
                 lease_expires_at_ms = NULL,
                 attempt_ends = {},
                 ended_by = NULL
             FROM expired WHERE jobs.id = expired.id
             RETURNING jobs.run_id, jobs.package_idx, jobs.state",
            ATTEMPT_END_SQL.replace("?NOW", "$1")
        ))
        .bind(now_ms)
        .bind(max_attempts as i32)
        .bind(&expired)
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
            if !packages.contains(&(run_id, i64::from(package_idx))) {
                packages.push((run_id, i64::from(package_idx)));
            }
            if !report.runs_touched.contains(&run_id) {
                report.runs_touched.push(run_id);
            }
        }
        if !packages.is_empty() {
            refresh_packages(&mut tx, &packages, now_ms).await?;
        }
        tx.commit().await?;
        Ok(report)
    }

    async fn package_page(
        &self,
        run_id: RunId,
        query: PackageQuery<'_>,
    ) -> Result<Vec<(u32, PackageResult)>, StoreError> {
        let (names, indexes) = selected(query.packages);
        let mut tx = self.pool.begin().await?;
        require_run(&mut tx, run_id).await?;
        let rows: Vec<(i32, bool, String)> = sqlx::query_as(
            "SELECT package_idx, finished, result_json FROM packages
             WHERE run_id = $1 AND (finished OR NOT $2) AND ($3::text[] IS NULL OR name = ANY($3))
               AND ($4::int[] IS NULL OR package_idx = ANY($4)) AND package_idx > $5
             ORDER BY package_idx LIMIT $6",
        )
        .bind(run_id.to_string())
        .bind(query.finished_only)
        .bind(names)
        .bind(indexes)
        .bind(query.after.map_or(-1, i64::from))
        .bind(i64::from(query.limit))
        .fetch_all(&mut *tx)
        .await?;
        // Verdicts are stored once final; a package still going gets its verdict so far.
        let going: Vec<(RunId, i64)> = rows
            .iter()
            .filter(|(_, finished, _)| !finished)
            .map(|(idx, _, _)| (run_id, i64::from(*idx)))
            .collect();
        let mut so_far: HashMap<i64, PackageResult> = HashMap::new();
        for chunk in going.chunks(1000) {
            so_far.extend(
                verdicts(&mut tx, chunk)
                    .await?
                    .into_iter()
                    .map(|((_, idx), r)| (idx, r)),
            );
        }
        tx.commit().await?;
        rows.into_iter()
            .map(|(idx, finished, json)| {
                let result = match so_far.remove(&i64::from(idx)) {
                    Some(result) if !finished => result,
                    _ => from_json(&json)?,
                };
                Ok((to_u32("package_idx", i64::from(idx))?, result))
            })
            .collect()
    }

    async fn finished_packages(&self, run_id: RunId) -> Result<Vec<u32>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let indexes: Vec<i32> =
            sqlx::query_scalar("SELECT package_idx FROM packages WHERE run_id = $1 AND finished ORDER BY package_idx")
                .bind(run_id.to_string())
                .fetch_all(&mut *conn)
                .await?;
        if indexes.is_empty() {
            // An unknown run has no packages either; say which it is.
            require_run(&mut conn, run_id).await?;
        }
        indexes
            .into_iter()
            .map(|i| to_u32("package_idx", i64::from(i)))
            .collect()
    }

    async fn iteration_outputs(
        &self,
        run_id: RunId,
        packages: Packages<'_>,
    ) -> Result<Vec<IterationOutput>, StoreError> {
        let (names, indexes) = selected(packages);
        let rows: Vec<OutputRow> = sqlx::query_as(
            "SELECT j.package_idx, j.mode, j.iteration, j.stdout_tail, j.stderr_tail,
                    CASE WHEN j.stdout_tail IS NULL THEN j.result_json END AS result_json
             FROM (SELECT run_id, package_idx, mode, iteration, stdout_tail, stderr_tail, result_json
                   FROM jobs WHERE run_id = $1
                   UNION ALL
                   SELECT run_id, package_idx, mode, iteration, stdout_tail, stderr_tail, result_json
                   FROM archived_jobs WHERE run_id = $1) AS j
             JOIN packages p ON p.run_id = j.run_id AND p.package_idx = j.package_idx
             WHERE j.result_json IS NOT NULL
               AND ($2::text[] IS NULL OR p.name = ANY($2)) AND ($3::int[] IS NULL OR j.package_idx = ANY($3))
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
                    (i64::from(row.package_idx), &row.mode, i64::from(row.iteration)),
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
        let iteration = i32::try_from(iteration).unwrap_or(i32::MAX);
        let row: Option<IterationJobRow> = sqlx::query_as(
            // An archived run's jobs have moved, and its logs may still be on its workers.
            "SELECT j.id, j.state, j.worker_id, j.attempt
             FROM packages p JOIN (
                 SELECT id, run_id, package_idx, mode, iteration, state, worker_id, attempt FROM jobs
                 UNION ALL
                 SELECT id, run_id, package_idx, mode, iteration, state, worker_id, attempt FROM archived_jobs
             ) j ON j.run_id = p.run_id AND j.package_idx = p.package_idx
             WHERE p.run_id = $1 AND p.name = $2 AND j.mode = $3 AND j.iteration = $4",
        )
        .bind(run_id.to_string())
        .bind(package)
        .bind(mode.as_str())
        .bind(iteration)
        .fetch_optional(&mut *conn)
        .await?;
        if row.is_none() {
            // An unknown run has no jobs either; say which it is.
            require_run(&mut conn, run_id).await?;
        }
        row.map(|(id, state, worker, attempt)| common::iteration_job((id, state, worker, i64::from(attempt))))
            .transpose()
    }
}

/// A job's id, state, worker and attempt, as `iteration_job` reads them.
type IterationJobRow = (i64, String, Option<String>, i32);

/// Statistics are refreshed for a table whose rows changed by this share since its last
/// `ANALYZE`, counting the rows just added.
const STALE_STATISTICS: f64 = 0.1;

/// Refreshes the planner's statistics of `jobs` and `packages` after a submit that added
/// `new_jobs` and `new_packages` rows, each only if its rows changed by [`STALE_STATISTICS`]
/// since it was last analysed (or it never was).
///
/// A run that is a good part of the queue is one the statistics must know at once, as
/// autovacuum would only tell them a while into the run: without it the first claims sort the
/// whole run and the first leases scan the table. A small run beside a big queue changes
/// nothing the plans depend on, and an `ANALYZE` reads a sample from all of a table's pages:
/// run at every submit it cost more the more the store held.
async fn refresh_statistics(pool: &PgPool, new_jobs: u64, new_packages: u64) -> Result<(), StoreError> {
    // `reltuples` is the row count the last ANALYZE or VACUUM saw, -1 before any;
    // `n_mod_since_analyze` counts the rows changed since, as reported so far.
    let tables: Vec<(String, f32, i64)> = sqlx::query_as(
        "SELECT c.relname::text, c.reltuples, COALESCE(s.n_mod_since_analyze, 0)
         FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
         WHERE c.oid IN ('jobs'::regclass, 'packages'::regclass)",
    )
    .fetch_all(pool)
    .await?;
    let stale: Vec<&str> = tables
        .iter()
        .filter(|(table, rows, changed)| {
            let added = if table == "jobs" { new_jobs } else { new_packages };
            statistics_stale(f64::from(*rows), added as f64 + *changed as f64)
        })
        .map(|(table, _, _)| table.as_str())
        .collect();
    if !stale.is_empty() {
        sqlx::query(&format!("ANALYZE {}", stale.join(", ")))
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// Whether a table that had `rows` rows at its last analysis (negative: never analysed) and
/// has had `changed` rows inserted, updated or deleted since needs its statistics refreshed.
fn statistics_stale(rows: f64, changed: f64) -> bool {
    rows < 0.0 || changed > STALE_STATISTICS * rows.max(1.0)
}

/// A job's output as `iteration_outputs` reads it.
#[derive(sqlx::FromRow)]
struct OutputRow {
    package_idx: i32,
    mode: String,
    iteration: i32,
    stdout_tail: Option<String>,
    stderr_tail: Option<String>,
    result_json: Option<String>,
}

/// `RunNotFound` unless the run exists.
async fn require_run(conn: &mut PgConnection, run_id: RunId) -> Result<(), StoreError> {
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM runs WHERE id = $1")
        .bind(run_id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    exists.map(drop).ok_or(StoreError::RunNotFound(run_id))
}

/// The state of a run that may be archived or purged, and when it was archived, its row
/// locked till the transaction ends: `RunNotFound`, or `RunNotFinished` while it is queued or
/// running.
async fn finished_run_for_update(
    conn: &mut PgConnection,
    run_id: RunId,
) -> Result<(RunState, Option<i64>), StoreError> {
    let row: Option<(String, Option<i64>)> =
        sqlx::query_as("SELECT state, archived_at_ms FROM runs WHERE id = $1 FOR UPDATE")
            .bind(run_id.to_string())
            .fetch_optional(&mut *conn)
            .await?;
    let (state, archived) = row.ok_or(StoreError::RunNotFound(run_id))?;
    let state = RunState::from_str(&state).map_err(StoreError::Corrupt)?;
    if !state.is_terminal() {
        return Err(StoreError::RunNotFinished(run_id, state));
    }
    Ok((state, archived))
}

/// A package selection as the queries' two optional arrays: names, indexes.
fn selected(packages: Packages<'_>) -> (Option<Vec<String>>, Option<Vec<i32>>) {
    match packages {
        Packages::All => (None, None),
        Packages::Named(names) => (Some(names.to_vec()), None),
        Packages::At(indexes) => (None, Some(indexes.iter().map(|&i| i as i32).collect())),
    }
}

/// Takes the transaction-long locks of packages, in key order. Every transaction that
/// settles jobs takes those of the jobs' packages before it changes any job, so of two that
/// settle a package's last two jobs, the second sees the first's and writes the verdict; and
/// as all take them first and in one order, none waits on another in a cycle. Advisory locks:
/// unlike row locks they write nothing.
async fn lock_packages(conn: &mut PgConnection, packages: &[(RunId, i64)]) -> Result<(), StoreError> {
    let mut keys = packages.to_vec();
    keys.sort();
    keys.dedup();
    let (runs, indexes) = package_keys(&keys);
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended(k.run_id, k.package_idx))
         FROM UNNEST($1::text[], $2::int[]) WITH ORDINALITY AS k (run_id, package_idx, n)
         ORDER BY k.n",
    )
    .bind(&runs)
    .bind(&indexes)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// [`lock_packages`] for the packages of jobs, by job id.
async fn lock_packages_of_jobs(conn: &mut PgConnection, ids: &[i64]) -> Result<(), StoreError> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended(k.run_id, k.package_idx))
         FROM (SELECT DISTINCT run_id, package_idx FROM jobs WHERE id = ANY($1)
               ORDER BY run_id, package_idx) AS k",
    )
    .bind(ids)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Brings the verdicts of packages whose jobs changed up to date, under their locks
/// ([`lock_packages`], taken before the jobs changed), and finishes the runs that have no
/// package left without one ([`write_verdicts`]).
///
/// A verdict is written once, when the package's last job settles; until then readers build it
/// from the jobs ([`verdicts`]).
async fn refresh_packages(conn: &mut PgConnection, packages: &[(RunId, i64)], now_ms: i64) -> Result<(), StoreError> {
    let mut keys = packages.to_vec();
    keys.sort();
    keys.dedup();
    let (runs, indexes) = package_keys(&keys);
    let settled: Vec<(String, i32)> = sqlx::query_as(
        "SELECT k.run_id, k.package_idx FROM UNNEST($1::text[], $2::int[]) AS k (run_id, package_idx)
         WHERE NOT EXISTS (SELECT 1 FROM jobs j
                           WHERE j.run_id = k.run_id AND j.state = 'pending' AND j.package_idx = k.package_idx)
           AND NOT EXISTS (SELECT 1 FROM jobs j
                           WHERE j.run_id = k.run_id AND j.state = 'leased' AND j.package_idx = k.package_idx)",
    )
    .bind(&runs)
    .bind(&indexes)
    .fetch_all(&mut *conn)
    .await?;
    if settled.is_empty() {
        return Ok(());
    }
    let settled = settled
        .into_iter()
        .map(|(run, idx)| Ok((parse_run_id(&run)?, i64::from(idx))))
        .collect::<Result<Vec<_>, StoreError>>()?;
    write_verdicts(conn, &settled, now_ms).await
}

/// Writes the final verdicts of packages none of whose jobs is live, and marks their runs
/// finished once every package of the run has one.
async fn write_verdicts(conn: &mut PgConnection, settled: &[(RunId, i64)], now_ms: i64) -> Result<(), StoreError> {
    let results = verdicts(conn, settled).await?;
    let (mut out_runs, mut out_indexes, mut categories, mut finished, mut jsons) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((run_id, idx), result) in results {
        categories.push(result.category.as_str());
        finished.push(result.finished);
        jsons.push(common::stored_verdict(result)?);
        out_runs.push(run_id.to_string());
        out_indexes.push(idx as i32);
    }
    // The verdicts, then the locks of the runs they finish, in run order: of two transactions
    // finishing a run's last two packages, the second to get its run's lock sees the first's
    // verdict and finishes the run. Package locks come before run locks everywhere.
    let finishing: Vec<String> = sqlx::query_scalar(
        "WITH written AS (
             UPDATE packages SET category = x.category, finished = x.finished, result_json = x.result
             FROM UNNEST($1::text[], $2::int[], $3::text[], $4::bool[], $5::text[])
                  AS x (run_id, package_idx, category, finished, result)
             WHERE packages.run_id = x.run_id AND packages.package_idx = x.package_idx
             RETURNING packages.run_id, packages.finished
         )
         SELECT r.run_id FROM (SELECT DISTINCT run_id FROM written WHERE finished ORDER BY run_id) AS r
         WHERE pg_advisory_xact_lock(hashtextextended(r.run_id, -1)) IS NOT NULL",
    )
    .bind(&out_runs)
    .bind(&out_indexes)
    .bind(&categories)
    .bind(&finished)
    .bind(&jsons)
    .fetch_all(&mut *conn)
    .await?;
    if !finishing.is_empty() {
        sqlx::query(
            "UPDATE runs SET state = 'finished', finished_at_ms = $2
             WHERE id = ANY($1) AND state IN ('queued', 'running')
               AND NOT EXISTS (SELECT 1 FROM packages p WHERE p.run_id = runs.id AND NOT p.finished)",
        )
        .bind(&finishing)
        .bind(now_ms)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Jobs a claim picked, kept out of other picks until the claim's lease has returned.
struct Reservation<'a> {
    reserved: &'a std::sync::Mutex<HashSet<i64>>,
    ids: Vec<i64>,
}

impl<'a> Reservation<'a> {
    fn new(reserved: &'a std::sync::Mutex<HashSet<i64>>, ids: Vec<i64>) -> Self {
        reserved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(ids.iter().copied());
        Reservation { reserved, ids }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut reserved = self.reserved.lock().unwrap_or_else(|e| e.into_inner());
        for id in &self.ids {
            reserved.remove(id);
        }
    }
}

/// Takes the transaction-long lock of a run's finish (see [`write_verdicts`]), after any
/// package locks.
async fn lock_run(conn: &mut PgConnection, run_id: RunId) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, -1))")
        .bind(run_id.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The verdicts of packages as their jobs stand, built from those jobs.
async fn verdicts(
    conn: &mut PgConnection,
    packages: &[(RunId, i64)],
) -> Result<Vec<((RunId, i64), PackageResult)>, StoreError> {
    let (runs, indexes) = package_keys(packages);
    let rows: Vec<VerdictRow> = sqlx::query_as(
        "SELECT p.run_id, p.package_idx, p.name, r.iterations,
                j.state, j.result_json, j.mode, j.iteration, j.attempt, j.worker_id, j.attempt_ends
         FROM UNNEST($1::text[], $2::int[]) AS k (run_id, package_idx)
         JOIN packages p ON p.run_id = k.run_id AND p.package_idx = k.package_idx
         JOIN runs r ON r.id = p.run_id
         LEFT JOIN jobs j ON j.run_id = p.run_id AND j.package_idx = p.package_idx",
    )
    .bind(&runs)
    .bind(&indexes)
    .fetch_all(&mut *conn)
    .await?;
    // Package heads in the order they came, each with its jobs.
    let mut heads: Vec<(String, i32, String, i32)> = Vec::new();
    let mut jobs: HashMap<(String, i32), Vec<JobRow>> = HashMap::new();
    for row in rows {
        let package_jobs = jobs.entry((row.run_id.clone(), row.package_idx)).or_insert_with(|| {
            heads.push((row.run_id.clone(), row.package_idx, row.name, row.iterations));
            Vec::new()
        });
        // A package without jobs comes once, with no job columns.
        if let (Some(state), Some(mode), Some(iteration), Some(attempt)) =
            (row.state, row.mode, row.iteration, row.attempt)
        {
            package_jobs.push(JobRow {
                state,
                result_json: row.result_json,
                mode,
                iteration: i64::from(iteration),
                attempt: i64::from(attempt),
                worker_id: row.worker_id,
                attempt_ends: row.attempt_ends,
            });
        }
    }
    let mut out = Vec::with_capacity(heads.len());
    for (run, idx, name, iterations) in heads {
        let package_jobs = jobs.remove(&(run.clone(), idx)).unwrap_or_default();
        let result = package_result(&name, to_u32("iterations", i64::from(iterations))?, package_jobs)?;
        out.push(((parse_run_id(&run)?, i64::from(idx)), result));
    }
    Ok(out)
}

/// A row of the claim's first statement: the eligible runs (on every row), and a picked job
/// (none when nothing was picked): part 0 a warm one, part 1 one of the first run's.
#[derive(Debug, sqlx::FromRow)]
struct ClaimRow {
    run_ids: Option<Vec<String>>,
    part: Option<i32>,
    id: Option<i64>,
    run_id: Option<String>,
    package_idx: Option<i64>,
    mode: Option<String>,
    iteration: Option<i64>,
    avoid_workers: Option<String>,
    avoid_until_ms: Option<i64>,
}

impl ClaimRow {
    fn job(&self) -> Result<Option<PickedJob>, StoreError> {
        let Some(id) = self.id else { return Ok(None) };
        match (&self.run_id, self.package_idx, &self.mode, self.iteration) {
            (Some(run_id), Some(package_idx), Some(mode), Some(iteration)) => Ok(Some(PickedJob {
                id,
                run_id: run_id.clone(),
                package_idx,
                mode: mode.clone(),
                iteration,
                avoid_workers: self.avoid_workers.clone(),
                avoid_until_ms: self.avoid_until_ms,
            })),
            _ => Err(StoreError::Corrupt(format!("job {id} picked without its key"))),
        }
    }
}

/// A package's run, index, name and iterations with one of its jobs, if it has any.
#[derive(Debug, sqlx::FromRow)]
struct VerdictRow {
    run_id: String,
    package_idx: i32,
    name: String,
    iterations: i32,
    state: Option<String>,
    result_json: Option<String>,
    mode: Option<String>,
    iteration: Option<i32>,
    attempt: Option<i32>,
    worker_id: Option<String>,
    attempt_ends: Option<String>,
}

/// `(run, package)` keys as the two arrays `UNNEST` takes.
fn package_keys(packages: &[(RunId, i64)]) -> (Vec<String>, Vec<i32>) {
    packages.iter().map(|(run, idx)| (run.to_string(), *idx as i32)).unzip()
}

/// Puts the specs of the picked jobs' packages, and their runs' options, in the cache.
async fn load_specs(conn: &mut PgConnection, cache: &SpecCache, picked: &[PickedJob]) -> Result<(), StoreError> {
    let keys = picked
        .iter()
        .map(|job| Ok((parse_run_id(&job.run_id)?, job.package_idx)))
        .collect::<Result<Vec<_>, StoreError>>()?;
    load_package_specs(conn, cache, &keys).await
}

/// Puts the specs of packages missing from the cache there, with their runs' options.
async fn load_package_specs(
    conn: &mut PgConnection,
    cache: &SpecCache,
    packages: &[(RunId, i64)],
) -> Result<(), StoreError> {
    let mut missing: Vec<(RunId, i64)> = packages
        .iter()
        .filter(|(run, idx)| cache.package(*run, *idx).is_none() || cache.options(*run).is_none())
        .copied()
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    missing.sort();
    missing.dedup();
    let (runs, indexes) = package_keys(&missing);
    let rows: Vec<(String, i32, String, String)> = sqlx::query_as(
        "SELECT p.run_id, p.package_idx, p.spec_json, r.options_json
         FROM UNNEST($1::text[], $2::int[]) AS k (run_id, package_idx)
         JOIN packages p ON p.run_id = k.run_id AND p.package_idx = k.package_idx
         JOIN runs r ON r.id = p.run_id",
    )
    .bind(&runs)
    .bind(&indexes)
    .fetch_all(&mut *conn)
    .await?;
    for (run, idx, spec, options) in rows {
        cache.insert(
            parse_run_id(&run)?,
            i64::from(idx),
            from_json(&spec)?,
            from_json(&options)?,
        );
    }
    Ok(())
}

async fn run_summary(conn: &mut PgConnection, run_id: RunId) -> Result<RunSummary, StoreError> {
    let run: (String, String, i64, Option<i64>, Option<i64>) =
        sqlx::query_as("SELECT label, state, created_at_ms, finished_at_ms, archived_at_ms FROM runs WHERE id = $1")
            .bind(run_id.to_string())
            .fetch_optional(&mut *conn)
            .await?
            .ok_or(StoreError::RunNotFound(run_id))?;
    // Both tables in one statement, which sees the jobs on one side or the other however an
    // archive at the same time goes.
    let job_counts = sqlx::query_as(
        "SELECT state, COUNT(*) FROM jobs WHERE run_id = $1 GROUP BY state
         UNION ALL
         SELECT state, COUNT(*) FROM archived_jobs WHERE run_id = $1 GROUP BY state",
    )
    .bind(run_id.to_string())
    .fetch_all(&mut *conn)
    .await?;
    let package_counts =
        sqlx::query_as("SELECT category, finished, COUNT(*) FROM packages WHERE run_id = $1 GROUP BY 1, 2")
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

#[cfg(test)]
mod tests {
    use super::statistics_stale;

    #[test]
    fn statistics_are_refreshed_only_when_a_tenth_of_the_table_changed() {
        for (rows, changed, stale) in [
            (-1.0, 0.0, true),
            (0.0, 1.0, true),
            (0.0, 0.0, false),
            (1_000_000.0, 100_000.0, false),
            (1_000_000.0, 100_001.0, true),
            (4_500_000.0, 10_000.0, false),
            (100_000.0, 100_000.0, true),
        ] {
            assert_eq!(statistics_stale(rows, changed), stale, "{rows} rows, {changed} changed");
        }
    }
}
