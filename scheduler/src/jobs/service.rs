//! The job service: `encore.v1.Jobs` for users and `encore.v1.JobWorker`
//! for executors, over one [`JobStore`] and one event channel.
//!
//! Every state change goes through `JobService::save`, which writes
//! the store first and then publishes the event, so a watcher never sees a
//! state the store does not hold.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use encore_proto::encore::v1::job_worker_server::JobWorker;
use encore_proto::encore::v1::jobs_server::Jobs;
use encore_proto::encore::v1::{
    CancelJobRequest, CancelJobResponse, ClaimJobRequest, ClaimJobResponse, CompleteJobRequest,
    CompleteJobResponse, GetJobRequest, GetJobResponse, Job, JobEvent, JobKind, JobOutcome,
    JobState, ListJobsRequest, ListJobsResponse, ReportProgressRequest, ReportProgressResponse,
    SubmitJobRequest, SubmitJobResponse, WatchJobRequest,
};
use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::spec::{self, Defaults};
use super::store::{JobStore, ListQuery, Record, StoreError};

/// Default and largest ListJobs page.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 1000;
/// Events buffered per watcher before it is resynchronised from the store.
const EVENT_BUFFER: usize = 1024;

/// How the service treats jobs.
#[derive(Debug, Clone)]
pub struct JobSettings {
    /// A running attempt without a report for this long is declared lost.
    pub lease: Duration,
    /// Defaults for submitted specs.
    pub defaults: Defaults,
}

/// Counts transitions into each state, for `encore_scheduler_jobs_total`.
pub type TransitionCounter = prometheus::IntCounterVec;

/// The job service; cheap to clone.
#[derive(Clone)]
pub struct JobService {
    inner: Arc<Inner>,
}

struct Inner {
    store: Mutex<JobStore>,
    events: broadcast::Sender<JobEvent>,
    settings: JobSettings,
    transitions: TransitionCounter,
}

/// A fresh job id: `job-` and 16 random hex digits.
fn new_job_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS per instance: random enough for ids
    // (and no extra dependency).
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(now_ms());
    format!("job-{:016x}", h.finish())
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn is_terminal(state: JobState) -> bool {
    matches!(
        state,
        JobState::Succeeded | JobState::Failed | JobState::Cancelled
    )
}

fn state_name(state: JobState) -> &'static str {
    match state {
        JobState::Unspecified => "unspecified",
        JobState::Queued => "queued",
        JobState::Running => "running",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
    }
}

fn internal(e: StoreError) -> Status {
    Status::internal(e.to_string())
}

/// The event describing `job` now.
fn event_of(job: &Job, state_changed: bool, message: String) -> JobEvent {
    let progress = job.progress.unwrap_or_default();
    JobEvent {
        job_id: job.id.clone(),
        state: job.state,
        state_changed,
        attempt: job.attempt,
        epoch: progress.epoch,
        total_epochs: progress.total_epochs,
        step: progress.step,
        loss: progress.loss,
        metrics: HashMap::new(),
        samples_per_second: progress.samples_per_second,
        message,
        timestamp_unix_ms: now_ms(),
    }
}

/// What the event of a finished job's last transition says: the error of a
/// failed or cancelled job, the registered model of a successful one.
fn outcome_message(job: &Job) -> String {
    match job.state() {
        JobState::Failed | JobState::Cancelled => job.error.clone(),
        JobState::Succeeded => match &job.registered_model {
            Some(m) => format!("registered {} v{}", m.name, m.version),
            None => "succeeded".into(),
        },
        _ => String::new(),
    }
}

/// A watch's first event: the job as stored. For a job that has already
/// finished (a bad job can fail before its submitter starts watching) it
/// says what the live event of that ending said, metrics included.
fn snapshot_event(job: &Job) -> JobEvent {
    let mut event = event_of(job, true, outcome_message(job));
    if job.state() == JobState::Succeeded {
        event.metrics = job.metrics.clone();
    }
    event
}

impl JobService {
    /// A service over `store`; `transitions` counts state changes.
    pub fn new(store: JobStore, settings: JobSettings, transitions: TransitionCounter) -> Self {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Self {
            inner: Arc::new(Inner {
                store: Mutex::new(store),
                events,
                settings,
                transitions,
            }),
        }
    }

    fn store(&self) -> std::sync::MutexGuard<'_, JobStore> {
        // A panic while holding the lock cannot leave SQLite half-written.
        self.inner
            .store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn load(&self, store: &JobStore, id: &str) -> Result<Record, Status> {
        if id.is_empty() {
            return Err(Status::invalid_argument("job_id is required"));
        }
        store
            .get(id)
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("job '{id}' does not exist")))
    }

    /// Saves `record` and publishes an event for it.
    fn save(
        &self,
        store: &JobStore,
        record: &Record,
        state_changed: bool,
        message: String,
        metrics: HashMap<String, f64>,
    ) -> Result<(), Status> {
        store.update(record).map_err(internal)?;
        if state_changed {
            self.inner
                .transitions
                .with_label_values(&[state_name(record.job.state())])
                .inc();
        }
        let mut event = event_of(&record.job, state_changed, message);
        event.metrics = metrics;
        // No receivers is fine: nobody is watching.
        let _ = self.inner.events.send(event);
        Ok(())
    }

    /// Number of jobs in each state (for the `/metrics` gauge).
    pub fn count_by_state(&self) -> Result<Vec<(JobState, i64)>, StoreError> {
        self.store().count_by_state()
    }

    /// Re-queues or fails running jobs whose lease ran out. Returns how many
    /// it changed.
    pub fn expire_leases(&self) -> Result<usize, Status> {
        let store = self.store();
        let now = now_ms();
        let expired = store.expired(now).map_err(internal)?;
        for mut r in expired.iter().cloned() {
            let lost = format!(
                "attempt {} lost executor '{}': no progress report for {} s",
                r.job.attempt,
                r.job.executor_id,
                self.inner.settings.lease.as_secs_f64()
            );
            let max_attempts = r.job.spec.as_ref().map_or(1, |s| s.max_attempts);
            let state = if r.cancel_requested {
                JobState::Cancelled
            } else if r.job.attempt < max_attempts {
                JobState::Queued
            } else {
                JobState::Failed
            };
            warn!(job = %r.job.id, state = state_name(state), "{lost}");
            r.job.set_state(state);
            r.lease_expires_ms = 0;
            if is_terminal(state) {
                r.job.finished_at_unix_ms = now;
            }
            if state != JobState::Cancelled {
                r.job.error = lost.clone();
            }
            self.save(&store, &r, true, lost, HashMap::new())?;
        }
        Ok(expired.len())
    }

    /// Runs [`expire_leases`](Self::expire_leases) every quarter lease
    /// until the process ends.
    pub fn spawn_lease_reaper(&self) -> tokio::task::JoinHandle<()> {
        let service = self.clone();
        let period = (self.inner.settings.lease / 4).max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = service.expire_leases() {
                    warn!("expiring job leases: {}", e.message());
                }
            }
        })
    }

    /// The running record for a worker's call, or why the call is stale.
    fn current_attempt(
        &self,
        store: &JobStore,
        job_id: &str,
        attempt: u32,
        executor_id: &str,
    ) -> Result<Option<Record>, Status> {
        let r = self.load(store, job_id)?;
        let current = r.job.state() == JobState::Running
            && r.job.attempt == attempt
            && r.job.executor_id == executor_id;
        Ok(current.then_some(r))
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<JobEvent, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Jobs for JobService {
    async fn submit_job(
        &self,
        request: Request<SubmitJobRequest>,
    ) -> Result<Response<SubmitJobResponse>, Status> {
        let req = request.into_inner();
        let spec = spec::check(req.kind, req.spec, &self.inner.settings.defaults)
            .map_err(Status::invalid_argument)?;
        let id = new_job_id();
        let job = Job {
            id: id.clone(),
            kind: req.kind,
            state: JobState::Queued as i32,
            spec: Some(spec),
            created_at_unix_ms: now_ms(),
            ..Default::default()
        };
        let record = Record::new(job);
        let store = self.store();
        store.insert(&record).map_err(internal)?;
        drop(store);
        self.inner.transitions.with_label_values(&["queued"]).inc();
        let _ = self
            .inner
            .events
            .send(event_of(&record.job, true, "submitted".into()));
        info!(job = %id, kind = ?record.job.kind(), "job submitted");
        Ok(Response::new(SubmitJobResponse { job_id: id }))
    }

    async fn get_job(
        &self,
        request: Request<GetJobRequest>,
    ) -> Result<Response<GetJobResponse>, Status> {
        let record = self.load(&self.store(), &request.into_inner().job_id)?;
        Ok(Response::new(GetJobResponse {
            job: Some(record.job),
        }))
    }

    async fn list_jobs(
        &self,
        request: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        let req = request.into_inner();
        let state = match JobState::try_from(req.state) {
            Ok(JobState::Unspecified) => None,
            Ok(s) => Some(s),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "state {} is unknown",
                    req.state
                )));
            }
        };
        let kind = match JobKind::try_from(req.kind) {
            Ok(JobKind::Unspecified) => None,
            Ok(k) => Some(k),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "kind {} is unknown",
                    req.kind
                )));
            }
        };
        let limit = match req.page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let filters = format!("{}:{}", req.state, req.kind);
        let after = if req.page_token.is_empty() {
            None
        } else {
            let bad = || Status::invalid_argument("page_token is malformed or from other filters");
            let rest = req
                .page_token
                .strip_prefix(&format!("v1:{filters}:"))
                .ok_or_else(bad)?;
            let (ms, id) = rest.split_once(':').ok_or_else(bad)?;
            Some((ms.parse::<i64>().map_err(|_| bad())?, id.to_owned()))
        };
        // One extra row tells whether another page follows.
        let mut rows = self
            .store()
            .list(&ListQuery {
                state,
                kind,
                limit: limit + 1,
                after,
            })
            .map_err(internal)?;
        let next_page_token = if rows.len() > limit {
            rows.truncate(limit);
            let last = &rows[limit - 1].job;
            format!("v1:{filters}:{}:{}", last.created_at_unix_ms, last.id)
        } else {
            String::new()
        };
        Ok(Response::new(ListJobsResponse {
            jobs: rows.into_iter().map(|r| r.job).collect(),
            next_page_token,
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<CancelJobRequest>,
    ) -> Result<Response<CancelJobResponse>, Status> {
        let req = request.into_inner();
        let store = self.store();
        let mut r = self.load(&store, &req.job_id)?;
        let reason = if req.reason.is_empty() {
            "cancelled by request".to_owned()
        } else {
            req.reason
        };
        match r.job.state() {
            JobState::Cancelled => {}
            JobState::Succeeded | JobState::Failed => {
                return Err(Status::failed_precondition(format!(
                    "job '{}' already {}; only queued or running jobs can be cancelled",
                    r.job.id,
                    state_name(r.job.state())
                )));
            }
            JobState::Queued | JobState::Unspecified => {
                r.job.set_state(JobState::Cancelled);
                r.job.error = reason.clone();
                r.job.finished_at_unix_ms = now_ms();
                self.save(&store, &r, true, reason, HashMap::new())?;
            }
            JobState::Running => {
                if !r.cancel_requested {
                    r.cancel_requested = true;
                    r.job.error = reason.clone();
                    self.save(
                        &store,
                        &r,
                        false,
                        format!("cancellation requested: {reason}"),
                        HashMap::new(),
                    )?;
                }
            }
        }
        info!(job = %r.job.id, "cancel requested");
        Ok(Response::new(CancelJobResponse { job: Some(r.job) }))
    }

    type WatchJobStream = EventStream;

    async fn watch_job(
        &self,
        request: Request<WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let id = request.into_inner().job_id;
        // Subscribe before reading the snapshot, so nothing falls between.
        let mut events = self.inner.events.subscribe();
        let record = self.load(&self.store(), &id)?;
        let (tx, rx) = mpsc::channel::<Result<JobEvent, Status>>(64);
        let service = self.clone();
        tokio::spawn(async move {
            let mut next = snapshot_event(&record.job);
            loop {
                let done = is_terminal(next.state()) && next.state_changed;
                if tx.send(Ok(next)).await.is_err() || done {
                    return;
                }
                next = loop {
                    let received = tokio::select! {
                        r = events.recv() => r,
                        () = tx.closed() => return,
                    };
                    match received {
                        Ok(e) if e.job_id == id => break e,
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            // Fell behind: start again from the stored state.
                            let reloaded = {
                                let store = service.store();
                                service.load(&store, &id)
                            };
                            match reloaded {
                                Ok(r) => break event_of(&r.job, true, "resynchronised".into()),
                                Err(e) => {
                                    let _ = tx.send(Err(e)).await;
                                    return;
                                }
                            }
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                };
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

#[tonic::async_trait]
impl JobWorker for JobService {
    async fn claim_job(
        &self,
        request: Request<ClaimJobRequest>,
    ) -> Result<Response<ClaimJobResponse>, Status> {
        let req = request.into_inner();
        if req.executor_id.is_empty() {
            return Err(Status::invalid_argument("executor_id is required"));
        }
        let kinds: Vec<JobKind> = req
            .kinds
            .iter()
            .filter_map(|k| JobKind::try_from(*k).ok())
            .collect();
        let store = self.store();
        let Some(mut r) = store.oldest_queued(&kinds).map_err(internal)? else {
            return Ok(Response::new(ClaimJobResponse::default()));
        };
        let now = now_ms();
        r.job.set_state(JobState::Running);
        r.job.attempt += 1;
        r.job.executor_id = req.executor_id.clone();
        r.job.started_at_unix_ms = now;
        r.lease_expires_ms = now + self.inner.settings.lease.as_millis() as i64;
        let message = format!(
            "attempt {} started on executor {}",
            r.job.attempt, req.executor_id
        );
        self.save(&store, &r, true, message, HashMap::new())?;
        info!(job = %r.job.id, attempt = r.job.attempt, executor = %req.executor_id, "job claimed");
        let checkpoint_uri = r
            .job
            .spec
            .as_ref()
            .map(|s| {
                format!(
                    "{}/_checkpoints/{}",
                    s.registry_uri.trim_end_matches('/'),
                    r.job.id
                )
            })
            .unwrap_or_default();
        Ok(Response::new(ClaimJobResponse {
            job: Some(r.job),
            lease_ms: self.inner.settings.lease.as_millis() as u64,
            checkpoint_uri,
        }))
    }

    async fn report_progress(
        &self,
        request: Request<ReportProgressRequest>,
    ) -> Result<Response<ReportProgressResponse>, Status> {
        let req = request.into_inner();
        let store = self.store();
        let Some(mut r) =
            self.current_attempt(&store, &req.job_id, req.attempt, &req.executor_id)?
        else {
            return Ok(Response::new(ReportProgressResponse {
                cancel_requested: false,
                lease_lost: true,
            }));
        };
        r.lease_expires_ms = now_ms() + self.inner.settings.lease.as_millis() as i64;
        let news = req.progress.is_some() || !req.message.is_empty() || !req.metrics.is_empty();
        if let Some(p) = req.progress {
            r.job.progress = Some(p);
        }
        if news {
            self.save(&store, &r, false, req.message, req.metrics)?;
        } else {
            // A bare heartbeat: renew the lease without an event.
            store.update(&r).map_err(internal)?;
        }
        Ok(Response::new(ReportProgressResponse {
            cancel_requested: r.cancel_requested,
            lease_lost: false,
        }))
    }

    async fn complete_job(
        &self,
        request: Request<CompleteJobRequest>,
    ) -> Result<Response<CompleteJobResponse>, Status> {
        let req = request.into_inner();
        let store = self.store();
        let Some(mut r) =
            self.current_attempt(&store, &req.job_id, req.attempt, &req.executor_id)?
        else {
            return Err(Status::failed_precondition(format!(
                "job '{}' attempt {} is no longer held by executor '{}'",
                req.job_id, req.attempt, req.executor_id
            )));
        };
        let now = now_ms();
        r.lease_expires_ms = 0;
        let outcome = JobOutcome::try_from(req.outcome).unwrap_or(JobOutcome::Unspecified);
        let (message, metrics) = match outcome {
            JobOutcome::Unspecified => {
                return Err(Status::invalid_argument("outcome is required"));
            }
            JobOutcome::Succeeded => {
                r.job.set_state(JobState::Succeeded);
                r.job.metrics = req.metrics.clone();
                r.job.registered_model = req.registered_model.clone();
                r.job.error.clear();
                (outcome_message(&r.job), req.metrics)
            }
            JobOutcome::Cancelled => {
                r.job.set_state(JobState::Cancelled);
                if r.job.error.is_empty() {
                    r.job.error = "cancelled".into();
                }
                (r.job.error.clone(), HashMap::new())
            }
            JobOutcome::Failed => {
                let max_attempts = r.job.spec.as_ref().map_or(1, |s| s.max_attempts);
                let error = format!("attempt {}: {}", r.job.attempt, req.error);
                let retry = req.retryable && !r.cancel_requested && r.job.attempt < max_attempts;
                r.job.set_state(if retry {
                    JobState::Queued
                } else if r.cancel_requested {
                    JobState::Cancelled
                } else {
                    JobState::Failed
                });
                r.job.error = error.clone();
                (error, HashMap::new())
            }
        };
        if is_terminal(r.job.state()) {
            r.job.finished_at_unix_ms = now;
        }
        info!(job = %r.job.id, state = state_name(r.job.state()), "{message}");
        self.save(&store, &r, true, message, metrics)?;
        Ok(Response::new(CompleteJobResponse { job: Some(r.job) }))
    }
}

#[cfg(test)]
mod tests {
    use encore_proto::encore::v1::{
        ClaimJobRequest, CompleteJobRequest, JobKind, JobOutcome, JobSpec, RegisteredModel,
        SubmitJobRequest, WatchJobRequest,
    };
    use futures::StreamExt;

    use super::*;

    fn service() -> JobService {
        let transitions =
            prometheus::IntCounterVec::new(prometheus::Opts::new("t", "t"), &["state"]).unwrap();
        let settings = JobSettings {
            lease: Duration::from_secs(30),
            defaults: Defaults {
                registry: Some("/tmp/registry".into()),
                max_attempts: 1,
            },
        };
        JobService::new(JobStore::in_memory().unwrap(), settings, transitions)
    }

    /// Submits a churn job, claims it and ends it with `outcome`.
    async fn finished(jobs: &JobService, outcome: JobOutcome, error: &str) -> String {
        let spec = JobSpec {
            data_uri: "/tmp/data".into(),
            cutoff: "2026-02-15".into(),
            ..Default::default()
        };
        let id = Jobs::submit_job(
            jobs,
            Request::new(SubmitJobRequest {
                kind: JobKind::Churn as i32,
                spec: Some(spec),
            }),
        )
        .await
        .unwrap()
        .into_inner()
        .job_id;
        let claim = ClaimJobRequest {
            executor_id: "e1".into(),
            kinds: vec![],
        };
        jobs.claim_job(Request::new(claim)).await.unwrap();
        let done = CompleteJobRequest {
            job_id: id.clone(),
            attempt: 1,
            executor_id: "e1".into(),
            outcome: outcome as i32,
            error: error.into(),
            metrics: HashMap::from([("auc_30d".to_string(), 0.8)]),
            registered_model: (outcome == JobOutcome::Succeeded).then(|| RegisteredModel {
                name: "churn".into(),
                version: 3,
                ..Default::default()
            }),
            ..Default::default()
        };
        jobs.complete_job(Request::new(done)).await.unwrap();
        id
    }

    async fn watched(jobs: &JobService, id: &str) -> Vec<JobEvent> {
        let request = Request::new(WatchJobRequest { job_id: id.into() });
        let stream = jobs.watch_job(request).await.unwrap().into_inner();
        tokio::time::timeout(
            Duration::from_secs(10),
            stream.map(Result::unwrap).collect(),
        )
        .await
        .expect("the watch of a finished job ends")
    }

    #[tokio::test]
    async fn watching_a_finished_job_says_how_it_ended() {
        let jobs = service();
        let failed = finished(
            &jobs,
            JobOutcome::Failed,
            "unknown churn hyperparameter 'x'",
        )
        .await;
        let events = watched(&jobs, &failed).await;
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].state(), JobState::Failed);
        assert!(
            events[0]
                .message
                .contains("unknown churn hyperparameter 'x'"),
            "{:?}",
            events[0].message
        );

        let ok = finished(&jobs, JobOutcome::Succeeded, "").await;
        let events = watched(&jobs, &ok).await;
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].state(), JobState::Succeeded);
        assert_eq!(events[0].message, "registered churn v3");
        assert_eq!(events[0].metrics.get("auc_30d"), Some(&0.8));
    }
}
