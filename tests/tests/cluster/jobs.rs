//! Training jobs through the scheduler's `encore.v1.Jobs` service, as an ML
//! engineer's client sees them: real scheduler and executor processes, a
//! real SQLite job store, generated Parquet data and a registry folder.
//!
//! - a job runs on an executor, streams its progress and registers a model;
//! - bad jobs are refused (INVALID_ARGUMENT) or fail with the reason,
//!   without retries; cancelling a running job stops it within seconds;
//! - jobs survive a scheduler restart;
//! - a job whose executor dies is re-queued and resumes from its checkpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use encore_proto::encore::v1::jobs_client::JobsClient;
use encore_proto::encore::v1::{
    CancelJobRequest, GetJobRequest, Job, JobEvent, JobKind, JobSpec, JobState, ListJobsRequest,
    SubmitJobRequest, WatchJobRequest,
};
use encore_tests::{Executor, Scheduler, encore, metric_value};
use tonic::transport::Channel;

/// Plays from 2025-12-xx for 60 days: the cutoff leaves room for 30-day labels.
pub const CUTOFF: &str = "2026-01-25";

/// 1,500 generated users over 60 days, shared by the tests here.
pub fn data() -> &'static Path {
    static DATA: OnceLock<tempfile::TempDir> = OnceLock::new();
    DATA.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("data").display().to_string();
        let (code, _, err) = encore(&[
            "datagen", "--users", "1500", "--days", "60", "--seed", "3", "--out", &out,
        ])
        .unwrap();
        assert_eq!(code, 0, "{err}");
        dir
    })
    .path()
}

pub fn data_uri() -> String {
    data().join("data").display().to_string()
}

fn spec(registry: &Path, settings: &[(&str, &str)]) -> JobSpec {
    JobSpec {
        data_uri: data_uri(),
        cutoff: CUTOFF.into(),
        registry_uri: registry.display().to_string(),
        hyperparameters: settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

/// Executors that train on one CPU thread and look for jobs often.
fn trainer(scheduler: &Scheduler) -> Executor {
    Executor::start(
        scheduler,
        &[
            "--concurrent-tasks",
            "2",
            "--training-threads",
            "1",
            "--training-cpu-only",
            "--job-poll-interval-ms",
            "100",
        ],
    )
    .unwrap()
}

async fn client(scheduler: &Scheduler) -> JobsClient<Channel> {
    JobsClient::connect(format!("http://{}", scheduler.addr))
        .await
        .unwrap()
}

async fn submit(client: &mut JobsClient<Channel>, spec: JobSpec) -> Result<String, tonic::Status> {
    Ok(client
        .submit_job(SubmitJobRequest {
            kind: JobKind::Churn as i32,
            spec: Some(spec),
        })
        .await?
        .into_inner()
        .job_id)
}

async fn get(client: &mut JobsClient<Channel>, id: &str) -> Job {
    client
        .get_job(GetJobRequest { job_id: id.into() })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
}

async fn cancel(client: &mut JobsClient<Channel>, id: &str, reason: &str) -> Job {
    client
        .cancel_job(CancelJobRequest {
            job_id: id.into(),
            reason: reason.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
}

/// Every event of a WatchJob stream until it ends (or `timeout`), calling
/// `on_event` on each.
async fn watch(
    client: &mut JobsClient<Channel>,
    id: &str,
    timeout: Duration,
    mut on_event: impl FnMut(&JobEvent),
) -> Vec<JobEvent> {
    let mut stream = client
        .watch_job(WatchJobRequest { job_id: id.into() })
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.message()).await {
            Ok(Ok(Some(e))) => {
                on_event(&e);
                events.push(e);
            }
            Ok(Ok(None)) => return events,
            Ok(Err(e)) => panic!("watch stream failed: {e}"),
            Err(_) => panic!(
                "job {id} did not finish within {timeout:?}; events: {:#?}",
                events
                    .iter()
                    .map(|e| (e.state(), e.epoch, e.message.clone()))
                    .collect::<Vec<_>>()
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_trains_on_an_executor_streams_progress_and_registers_its_model() {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry");
    let state = dir.path().join("state");
    let scheduler = Scheduler::start(&[
        "--state-dir",
        state.to_str().unwrap(),
        "--registry",
        registry.to_str().unwrap(),
    ])
    .unwrap();
    let executor = trainer(&scheduler);
    let mut jobs = client(&scheduler).await;

    // The scheduler's default registry is used when the job names none.
    let mut s = spec(&registry, &[("epochs", "4")]);
    s.registry_uri.clear();
    let id = submit(&mut jobs, s).await.unwrap();
    let events = watch(&mut jobs, &id, Duration::from_secs(240), |_| {}).await;

    let first = &events[0];
    assert!(first.state_changed, "{first:?}");
    let states: Vec<JobState> = events
        .iter()
        .filter(|e| e.state_changed)
        .map(|e| e.state())
        .collect();
    assert_eq!(states.last(), Some(&JobState::Succeeded), "{events:#?}");
    assert!(states.contains(&JobState::Running), "{states:?}");
    let epochs: Vec<&JobEvent> = events
        .iter()
        .filter(|e| e.message.starts_with("epoch "))
        .collect();
    assert!(!epochs.is_empty(), "no epoch progress in {events:#?}");
    for e in &epochs {
        assert!(e.loss > 0.0 && e.loss.is_finite(), "{e:?}");
        assert!(e.samples_per_second > 0.0, "{e:?}");
        assert_eq!(e.total_epochs, 4);
        assert!(e.metrics.contains_key("val_loss"), "{e:?}");
    }
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("computing features")),
        "{events:#?}"
    );

    let job = get(&mut jobs, &id).await;
    let succeeded = id.clone();
    assert_eq!(job.state(), JobState::Succeeded);
    assert_eq!(job.attempt, 1);
    assert_eq!(job.executor_id, executor.id);
    assert!(job.finished_at_unix_ms >= job.started_at_unix_ms);
    let model = job.registered_model.clone().unwrap();
    assert_eq!((model.name.as_str(), model.version), ("churn", 1));
    assert!(model.promoted, "the first version becomes production");
    let auc = job.metrics["auc_30d"];
    assert!(auc > 0.6 && auc <= 1.0, "auc_30d {auc}");
    assert!(registry.join("churn/1/model.pt").is_file());
    assert!(registry.join("churn/1/online/users.parquet").is_file());
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(registry.join("churn/1/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["training_job_id"], id.as_str());
    assert!(
        !registry.join("_checkpoints").join(&id).exists(),
        "checkpoints are removed once the model is registered"
    );
    // A finished job's stream is its final state, once.
    let again = watch(&mut jobs, &id, Duration::from_secs(5), |_| {}).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].state(), JobState::Succeeded);

    // Refused at submission, naming the field.
    let status = jobs
        .submit_job(SubmitJobRequest {
            kind: JobKind::Unspecified as i32,
            spec: Some(spec(&registry, &[])),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("kind is required"), "{status}");
    let mut bad = spec(&registry, &[]);
    bad.cutoff = "2026-02-30".into();
    let status = submit(&mut jobs, bad).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("spec.cutoff"), "{status}");
    let status = jobs
        .get_job(GetJobRequest {
            job_id: "job-missing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);

    // Accepted, then failed by the executor with the reason, not retried.
    let failing = [
        (
            spec(&registry, &[("learning_rate", "0.1")]),
            "unknown churn hyperparameter 'learning_rate'",
        ),
        (spec(&registry, &[("lr", "-1")]), "lr"),
        (
            JobSpec {
                data_uri: dir.path().display().to_string(),
                ..spec(&registry, &[])
            },
            "no plays/ table",
        ),
        (
            JobSpec {
                cutoff: "2027-06-01".into(),
                ..spec(&registry, &[])
            },
            "cutoff 2027-06-01",
        ),
    ];
    for (s, reason) in failing {
        let id = submit(&mut jobs, s).await.unwrap();
        let events = watch(&mut jobs, &id, Duration::from_secs(120), |_| {}).await;
        let job = get(&mut jobs, &id).await;
        assert_eq!(job.state(), JobState::Failed, "{reason}: {job:?}");
        assert!(job.error.contains(reason), "{reason}: {}", job.error);
        assert_eq!(job.attempt, 1, "a bad job is not retried: {}", job.error);
        assert!(events.last().unwrap().message.contains(reason));
    }

    // Cancelling a running job stops it within seconds.
    let id = submit(
        &mut jobs,
        spec(
            &registry,
            &[("epochs", "500"), ("patience", "500"), ("batch_size", "8")],
        ),
    )
    .await
    .unwrap();
    let mut watcher = client(&scheduler).await;
    let watched = {
        let id = id.clone();
        tokio::spawn(
            async move { watch(&mut watcher, &id, Duration::from_secs(240), |_| {}).await },
        )
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    while get(&mut jobs, &id)
        .await
        .progress
        .is_none_or(|p| p.epoch == 0)
    {
        assert!(Instant::now() < deadline, "job {id} never started training");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let asked = Instant::now();
    let job = cancel(&mut jobs, &id, "wrong cutoff").await;
    assert_eq!(
        job.state(),
        JobState::Running,
        "pending until the executor stops"
    );
    let events = watched.await.unwrap();
    let took = asked.elapsed();
    let job = get(&mut jobs, &id).await;
    assert_eq!(job.state(), JobState::Cancelled, "{}", job.error);
    assert!(took < Duration::from_secs(10), "cancel took {took:?}");
    assert!(job.error.contains("wrong cutoff"), "{}", job.error);
    assert_eq!(events.last().unwrap().state(), JobState::Cancelled);
    let status = jobs
        .cancel_job(CancelJobRequest {
            job_id: id.clone(),
            reason: String::new(),
        })
        .await;
    assert!(status.is_ok(), "cancelling a cancelled job is a no-op");

    // Listing and filtering; the CLI shows the same.
    let listed = jobs
        .list_jobs(ListJobsRequest {
            state: JobState::Failed as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.jobs.len(), 4);
    assert!(listed.jobs.iter().all(|j| j.state() == JobState::Failed));
    let page = jobs
        .list_jobs(ListJobsRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.jobs.len(), 2);
    assert!(!page.next_page_token.is_empty());
    let url = scheduler.url();
    let (code, out, err) = encore(&["jobs", "list", "--scheduler", &url]).unwrap();
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1 + 6, "{out}");
    assert!(
        out.contains("succeeded") && out.contains("churn:v1"),
        "{out}"
    );
    let (code, out, _) = encore(&["jobs", "show", &job.id, "--scheduler", &url]).unwrap();
    assert_eq!(code, 0);
    assert!(
        out.contains("cancelled") && out.contains("wrong cutoff"),
        "{out}"
    );
    let (code, _, err) = encore(&["jobs", "watch", &job.id, "--scheduler", &url]).unwrap();
    assert_eq!(code, 1, "watching a cancelled job exits non-zero");
    assert!(err.contains("was cancelled"), "{err}");
    let (code, _, err) = encore(&["jobs", "cancel", &succeeded, "--scheduler", &url]).unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("already succeeded"), "{err}");

    let (_, text) = scheduler.get("/metrics").unwrap();
    assert_eq!(
        metric_value(&text, "encore_scheduler_jobs_total{state=\"succeeded\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "encore_scheduler_jobs{state=\"failed\"}"),
        Some(4.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_jobs_survive_a_scheduler_restart() {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry");
    let state = dir.path().join("state");
    let args = ["--state-dir", state.to_str().unwrap()];
    let mut scheduler = Scheduler::start(&args).unwrap();
    let mut jobs = client(&scheduler).await;
    let mut s = spec(&registry, &[("epochs", "2")]);
    s.max_attempts = 5;
    let id = submit(&mut jobs, s).await.unwrap();
    let before = get(&mut jobs, &id).await;
    // No goodbye: the store must already hold the job.
    scheduler.process.kill();
    drop(scheduler);

    let scheduler = Scheduler::start(&args).unwrap();
    let mut jobs = client(&scheduler).await;
    let after = get(&mut jobs, &id).await;
    assert_eq!(after, before, "the job comes back exactly as it was");
    assert_eq!(after.state(), JobState::Queued);
    let spec = after.spec.unwrap();
    assert_eq!(spec.max_attempts, 5);
    assert_eq!(spec.hyperparameters["epochs"], "2");
    assert_eq!(spec.horizons_days, [7, 15, 30]);
    assert!(state.join("jobs.sqlite").is_file());
    let cancelled = cancel(&mut jobs, &id, "").await;
    assert_eq!(
        cancelled.state(),
        JobState::Cancelled,
        "queued jobs cancel at once"
    );
    let status = jobs
        .cancel_job(CancelJobRequest {
            job_id: "job-nope".into(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_executor_dies_is_requeued_and_resumes_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let registry: PathBuf = dir.path().join("registry");
    // Short lease: the lost attempt is noticed after 5 s without a report.
    let scheduler = Scheduler::start(&[
        "--job-lease-seconds",
        "5",
        "--executor-timeout-seconds",
        "8",
        "--expire-dead-executor-interval-seconds",
        "1",
    ])
    .unwrap();
    let mut first = trainer(&scheduler);
    let mut jobs = client(&scheduler).await;
    let settings = [("epochs", "40"), ("patience", "40"), ("batch_size", "16")];
    let id = submit(&mut jobs, spec(&registry, &settings)).await.unwrap();

    // Kill the executor once a few epochs are checkpointed.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let job = get(&mut jobs, &id).await;
        if job.progress.as_ref().is_some_and(|p| p.epoch >= 3) {
            assert_eq!(job.executor_id, first.id);
            break;
        }
        assert!(Instant::now() < deadline, "no training progress: {job:?}");
        assert_ne!(job.state(), JobState::Failed, "{}", job.error);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.process.kill();
    let killed_at = get(&mut jobs, &id).await.progress.unwrap().epoch;
    // The scheduler cancels queries running when it removes a dead
    // executor, so start the next one once that has happened (otherwise
    // the second attempt's feature query may be cancelled and retried: a
    // third attempt, also correct, but not what this test is about).
    encore_tests::wait_for(
        "the dead executor to be removed",
        Duration::from_secs(60),
        || {
            let (_, body) = scheduler.get("/api/executors").ok()?;
            let listed: serde_json::Value = serde_json::from_str(&body).ok()?;
            listed.as_array()?.is_empty().then_some(())
        },
    )
    .unwrap();
    let requeued = get(&mut jobs, &id).await;
    assert_eq!(requeued.state(), JobState::Queued, "{requeued:?}");
    assert!(
        requeued
            .error
            .contains(&format!("attempt 1 lost executor '{}'", first.id)),
        "{}",
        requeued.error
    );
    // Follow the job from before the next executor exists.
    let mut watcher = client(&scheduler).await;
    let watched = {
        let id = id.clone();
        tokio::spawn(
            async move { watch(&mut watcher, &id, Duration::from_secs(240), |_| {}).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = trainer(&scheduler);
    let events = watched.await.unwrap();
    let job = get(&mut jobs, &id).await;
    let story: Vec<(u32, JobState, &str)> = events
        .iter()
        .filter(|e| !e.message.starts_with("epoch "))
        .map(|e| (e.attempt, e.state(), e.message.as_str()))
        .collect();
    assert_eq!(job.state(), JobState::Succeeded, "{}", job.error);
    assert_eq!(job.attempt, 2, "{story:#?}");
    assert_eq!(job.executor_id, second.id);
    let messages: Vec<&str> = events.iter().map(|e| e.message.as_str()).collect();
    let resumed: Vec<u32> = messages
        .iter()
        .filter_map(|m| {
            m.strip_prefix("resuming from the checkpoint after epoch ")?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(resumed.len(), 1, "{messages:#?}");
    assert!(
        resumed[0] >= 3 && resumed[0] <= killed_at + 1,
        "resumed after epoch {} though the first attempt reached {killed_at}",
        resumed[0]
    );
    // The second attempt only ran the remaining epochs.
    let second_attempt_epochs: Vec<u32> = events
        .iter()
        .filter(|e| e.attempt == 2 && e.message.starts_with("epoch "))
        .map(|e| e.epoch)
        .collect();
    assert!(
        second_attempt_epochs.iter().all(|&e| e > resumed[0]),
        "{second_attempt_epochs:?}"
    );
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(registry.join("churn/1/manifest.json")).unwrap(),
    )
    .unwrap();
    let history = manifest["history"].as_array().unwrap();
    assert_eq!(
        history.len(),
        40,
        "the manifest's history covers both attempts"
    );
    let metrics: HashMap<String, f64> = job.metrics;
    assert!(metrics["auc_30d"] > 0.6, "{metrics:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recommend_job_trains_on_an_executor_and_registers_a_servable_model() {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry");
    let scheduler = Scheduler::start(&[]).unwrap();
    let _executor = trainer(&scheduler);
    let mut jobs = client(&scheduler).await;
    let submit_recommend = |spec: JobSpec| SubmitJobRequest {
        kind: JobKind::Recommend as i32,
        spec: Some(spec),
    };

    // Churn-only fields are refused for a recommend job.
    let mut bad = spec(&registry, &[]);
    bad.horizons_days = vec![7];
    let status = jobs.submit_job(submit_recommend(bad)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("churn jobs only"), "{status}");

    let id = jobs
        .submit_job(submit_recommend(spec(&registry, &[("epochs", "3")])))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let events = watch(&mut jobs, &id, Duration::from_secs(300), |_| {}).await;
    let epochs: Vec<&JobEvent> = events
        .iter()
        .filter(|e| e.message.starts_with("epoch "))
        .collect();
    assert!(!epochs.is_empty(), "no epoch progress in {events:#?}");
    assert!(
        epochs
            .iter()
            .all(|e| e.metrics.contains_key("val_recall_at_10") && e.total_epochs == 3),
        "{epochs:#?}"
    );
    let job = get(&mut jobs, &id).await;
    assert_eq!(job.state(), JobState::Succeeded, "{}", job.error);
    let model = job.registered_model.clone().unwrap();
    assert_eq!((model.name.as_str(), model.version), ("recommend", 1));
    assert!(
        job.metrics["recall_at_10"] > job.metrics["popular_recall_at_10"],
        "{:?}",
        job.metrics
    );
    for file in [
        "model.pt",
        "manifest.json",
        "online/users.parquet",
        "online/popular.parquet",
    ] {
        assert!(registry.join("recommend/1").join(file).is_file(), "{file}");
    }

    // An invalid setting fails the job at once with the reason, no retry.
    let id = jobs
        .submit_job(submit_recommend(spec(&registry, &[("temperature", "-1")])))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    watch(&mut jobs, &id, Duration::from_secs(60), |_| {}).await;
    let job = get(&mut jobs, &id).await;
    assert_eq!(job.state(), JobState::Failed);
    assert_eq!(job.attempt, 1);
    assert!(job.error.contains("temperature"), "{}", job.error);
}
