//! The job store: one SQLite table, so jobs survive a scheduler restart.
//!
//! Each row keeps the whole `Job` message (protobuf bytes) plus the columns
//! that queries filter or sort on, and the two pieces of scheduling state
//! that clients never see: the lease deadline of the running attempt and
//! whether cancellation was requested. Every change is one statement (or
//! one transaction), so a crash never leaves a half-written job.

use std::path::Path;

use encore_proto::encore::v1::{Job, JobKind, JobState};
use prost::Message;
use rusqlite::{Connection, OptionalExtension, params};

/// Schema version kept in SQLite's `user_version`.
const SCHEMA_VERSION: i64 = 1;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed (I/O, corruption, a locked file).
    #[error("job store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored job could not be decoded.
    #[error("job store: job {id} is corrupt: {reason}")]
    Corrupt {
        /// The job.
        id: String,
        /// Why.
        reason: String,
    },
    /// The database was written by a newer Encore.
    #[error(
        "job store {path}: schema version {found} is newer than this scheduler's ({SCHEMA_VERSION})"
    )]
    NewerSchema {
        /// The database file.
        path: String,
        /// Its version.
        found: i64,
    },
}

/// A job with its scheduling state.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// What clients see.
    pub job: Job,
    /// When the running attempt's lease runs out (Unix ms); 0 when not running.
    pub lease_expires_ms: i64,
    /// CancelJob was called while the job ran.
    pub cancel_requested: bool,
}

impl Record {
    /// A record for a job that has never run.
    pub fn new(job: Job) -> Self {
        Self {
            job,
            lease_expires_ms: 0,
            cancel_requested: false,
        }
    }
}

/// Filters and position of a ListJobs page.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only this state.
    pub state: Option<JobState>,
    /// Only this kind.
    pub kind: Option<JobKind>,
    /// Rows to return.
    pub limit: usize,
    /// Continue after this (created_at, id), newest first.
    pub after: Option<(i64, String)>,
}

/// SQLite-backed job table.
pub struct JobStore {
    conn: Connection,
}

impl JobStore {
    /// Opens (creating if needed) `dir/jobs.sqlite`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                Some(format!("cannot create {}: {e}", dir.display())),
            )
        })?;
        let path = dir.join("jobs.sqlite");
        let conn = Connection::open(&path)?;
        // WAL: readers never block the writer; NORMAL is durable across a
        // process crash (only an OS crash can lose the last commit).
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Self::init(conn, &path.display().to_string())
    }

    /// A store that lives only as long as the process (one-shot clusters).
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?, ":memory:")
    }

    fn init(conn: Connection, path: &str) -> Result<Self, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path: path.into(),
                found,
            });
        }
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS jobs (
                 id TEXT PRIMARY KEY,
                 kind INTEGER NOT NULL,
                 state INTEGER NOT NULL,
                 created_ms INTEGER NOT NULL,
                 lease_expires_ms INTEGER NOT NULL DEFAULT 0,
                 cancel_requested INTEGER NOT NULL DEFAULT 0,
                 job BLOB NOT NULL
             );
             CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created_ms);
             CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created_ms, id);",
        )?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        Ok(Self { conn })
    }

    /// Adds a new job.
    pub fn insert(&self, record: &Record) -> Result<(), StoreError> {
        let job = &record.job;
        self.conn.execute(
            "INSERT INTO jobs (id, kind, state, created_ms, lease_expires_ms, cancel_requested, job)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                job.id,
                job.kind,
                job.state,
                job.created_at_unix_ms,
                record.lease_expires_ms,
                record.cancel_requested,
                job.encode_to_vec()
            ],
        )?;
        Ok(())
    }

    /// Replaces a job's row.
    pub fn update(&self, record: &Record) -> Result<(), StoreError> {
        let job = &record.job;
        self.conn.execute(
            "UPDATE jobs SET state = ?2, lease_expires_ms = ?3, cancel_requested = ?4, job = ?5
             WHERE id = ?1",
            params![
                job.id,
                job.state,
                record.lease_expires_ms,
                record.cancel_requested,
                job.encode_to_vec()
            ],
        )?;
        Ok(())
    }

    /// One job, if it exists.
    pub fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        self.conn
            .query_row(
                "SELECT id, lease_expires_ms, cancel_requested, job FROM jobs WHERE id = ?1",
                [id],
                row,
            )
            .optional()?
            .map(decode)
            .transpose()
    }

    /// A page of jobs, newest first.
    pub fn list(&self, q: &ListQuery) -> Result<Vec<Record>, StoreError> {
        let (after_ms, after_id) = q.after.clone().unwrap_or((i64::MAX, String::new()));
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, lease_expires_ms, cancel_requested, job FROM jobs
             WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR kind = ?2)
               AND (created_ms < ?3 OR (created_ms = ?3 AND id < ?4) OR ?5)
             ORDER BY created_ms DESC, id DESC LIMIT ?6",
        )?;
        let rows = stmt.query_map(
            params![
                q.state.map(|s| s as i32),
                q.kind.map(|k| k as i32),
                after_ms,
                after_id,
                q.after.is_none(),
                q.limit as i64
            ],
            row,
        )?;
        rows.map(|r| decode(r?)).collect()
    }

    /// The oldest queued job of one of `kinds` (any kind when empty).
    pub fn oldest_queued(&self, kinds: &[JobKind]) -> Result<Option<Record>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, lease_expires_ms, cancel_requested, job FROM jobs
             WHERE state = ?1 ORDER BY created_ms, id",
        )?;
        let rows = stmt.query_map([JobState::Queued as i32], row)?;
        for r in rows {
            let record = decode(r?)?;
            if kinds.is_empty() || kinds.contains(&record.job.kind()) {
                return Ok(Some(record));
            }
        }
        Ok(None)
    }

    /// Running jobs whose lease ran out before `now_ms`.
    pub fn expired(&self, now_ms: i64) -> Result<Vec<Record>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, lease_expires_ms, cancel_requested, job FROM jobs
             WHERE state = ?1 AND lease_expires_ms < ?2",
        )?;
        let rows = stmt.query_map(params![JobState::Running as i32, now_ms], row)?;
        rows.map(|r| decode(r?)).collect()
    }

    /// Number of jobs in each state.
    pub fn count_by_state(&self) -> Result<Vec<(JobState, i64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT state, count(*) FROM jobs GROUP BY state")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i32>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = Vec::new();
        for r in rows {
            let (state, n) = r?;
            if let Ok(state) = JobState::try_from(state) {
                out.push((state, n));
            }
        }
        Ok(out)
    }
}

type Row = (String, i64, bool, Vec<u8>);

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn decode((id, lease_expires_ms, cancel_requested, bytes): Row) -> Result<Record, StoreError> {
    let job = Job::decode(bytes.as_slice()).map_err(|e| StoreError::Corrupt {
        id,
        reason: e.to_string(),
    })?;
    Ok(Record {
        job,
        lease_expires_ms,
        cancel_requested,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, created: i64, kind: JobKind, state: JobState) -> Record {
        Record::new(Job {
            id: id.into(),
            kind: kind as i32,
            state: state as i32,
            created_at_unix_ms: created,
            ..Default::default()
        })
    }

    #[test]
    fn jobs_survive_reopening_the_database() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = JobStore::open(dir.path()).unwrap();
            store
                .insert(&job("a", 1, JobKind::Churn, JobState::Queued))
                .unwrap();
            let mut r = job("b", 2, JobKind::Churn, JobState::Running);
            r.lease_expires_ms = 99;
            store.insert(&r).unwrap();
            r.cancel_requested = true;
            r.job.error = "stop".into();
            store.update(&r).unwrap();
        }
        let store = JobStore::open(dir.path()).unwrap();
        let b = store.get("b").unwrap().unwrap();
        assert!(b.cancel_requested);
        assert_eq!(b.lease_expires_ms, 99);
        assert_eq!(b.job.error, "stop");
        assert_eq!(b.job.state(), JobState::Running);
        assert_eq!(
            store.get("a").unwrap().unwrap().job.state(),
            JobState::Queued
        );
        assert!(store.get("zzz").unwrap().is_none());
    }

    #[test]
    fn list_pages_newest_first_with_filters() {
        let store = JobStore::in_memory().unwrap();
        for i in 0..5 {
            let state = if i % 2 == 0 {
                JobState::Queued
            } else {
                JobState::Failed
            };
            store
                .insert(&job(&format!("j{i}"), i, JobKind::Churn, state))
                .unwrap();
        }
        store
            .insert(&job("r", 10, JobKind::Recommend, JobState::Queued))
            .unwrap();
        let ids = |q: &ListQuery| -> Vec<String> {
            store
                .list(q)
                .unwrap()
                .into_iter()
                .map(|r| r.job.id)
                .collect()
        };
        let first = ListQuery {
            limit: 2,
            ..Default::default()
        };
        assert_eq!(ids(&first), ["r", "j4"]);
        let second = ListQuery {
            limit: 10,
            after: Some((4, "j4".into())),
            ..Default::default()
        };
        assert_eq!(ids(&second), ["j3", "j2", "j1", "j0"]);
        let queued_churn = ListQuery {
            state: Some(JobState::Queued),
            kind: Some(JobKind::Churn),
            limit: 10,
            after: None,
        };
        assert_eq!(ids(&queued_churn), ["j4", "j2", "j0"]);
        let counts = store.count_by_state().unwrap();
        assert!(counts.contains(&(JobState::Queued, 4)), "{counts:?}");
    }

    #[test]
    fn claims_take_the_oldest_job_of_a_wanted_kind() {
        let store = JobStore::in_memory().unwrap();
        store
            .insert(&job("rec", 1, JobKind::Recommend, JobState::Queued))
            .unwrap();
        store
            .insert(&job("old", 2, JobKind::Churn, JobState::Queued))
            .unwrap();
        store
            .insert(&job("new", 3, JobKind::Churn, JobState::Queued))
            .unwrap();
        let got = store.oldest_queued(&[JobKind::Churn]).unwrap().unwrap();
        assert_eq!(got.job.id, "old");
        assert_eq!(store.oldest_queued(&[]).unwrap().unwrap().job.id, "rec");
    }

    #[test]
    fn expired_lists_running_jobs_past_their_lease() {
        let store = JobStore::in_memory().unwrap();
        let mut a = job("a", 1, JobKind::Churn, JobState::Running);
        a.lease_expires_ms = 100;
        let mut b = job("b", 2, JobKind::Churn, JobState::Running);
        b.lease_expires_ms = 300;
        store.insert(&a).unwrap();
        store.insert(&b).unwrap();
        let ids: Vec<_> = store
            .expired(200)
            .unwrap()
            .into_iter()
            .map(|r| r.job.id)
            .collect();
        assert_eq!(ids, ["a"]);
    }
}
