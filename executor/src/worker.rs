//! The training worker: takes jobs from the scheduler's `JobWorker`
//! service, runs them with the [`crate::training`] pipelines, reports
//! progress (which also renews the job's lease), and completes them.
//!
//! Each job runs on its own OS thread with its own small tokio runtime, so
//! libtorch's long synchronous steps never stall the executor's Ballista
//! tasks. Features are computed through the cluster (`SessionContext::remote`
//! on the scheduler), so this executor and its peers share the work.
//!
//! Cancellation: a progress report answered with `cancel_requested` (or
//! `lease_lost`) sets the job's cancel flag, which training checks before
//! every mini-batch and the pipeline at every stage.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ballista::prelude::SessionContextExt;
use chrono::NaiveDate;
use datafusion::prelude::SessionContext;
use encore_models::churn::{ChurnConfig, TrainControl};
use encore_models::recommend::RecommendConfig;
use encore_proto::encore::v1::job_worker_client::JobWorkerClient;
use encore_proto::encore::v1::{
    ClaimJobRequest, CompleteJobRequest, Job, JobKind, JobOutcome, JobProgress, RegisteredModel,
    ReportProgressRequest,
};
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;
use tracing::{info, warn};

use crate::checkpoints::Checkpoints;
use crate::training::{
    ChurnJob, JobTarget, Progress, Promotion, RecommendJob, TrainError, train_churn,
    train_recommend,
};

/// How the worker finds and runs jobs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Scheduler host.
    pub scheduler_host: String,
    /// Scheduler port (Ballista gRPC and the job services share it).
    pub scheduler_port: u16,
    /// This executor's id, as registered with Ballista.
    pub executor_id: String,
    /// How often to ask for a job while idle.
    pub poll_interval: Duration,
    /// libtorch threads for training (0: libtorch's default).
    pub threads: usize,
    /// Train on the CPU even when CUDA is available.
    pub cpu_only: bool,
}

/// One message from the training thread to the reporter.
enum Update {
    Stage(String),
    Epoch {
        progress: JobProgress,
        metrics: HashMap<String, f64>,
    },
}

impl Update {
    fn of(p: Progress) -> Self {
        let epoch = |epoch, total_epochs, step, loss, samples_per_second, metric: &str, value| {
            Update::Epoch {
                progress: JobProgress {
                    epoch,
                    total_epochs,
                    step,
                    loss,
                    samples_per_second,
                },
                metrics: HashMap::from([(metric.to_owned(), value)]),
            }
        };
        match p {
            Progress::Stage(s) => Update::Stage(s),
            Progress::Epoch(r) => epoch(
                r.epoch,
                r.total_epochs,
                r.step,
                r.loss,
                r.samples_per_second,
                "val_loss",
                r.validation_loss,
            ),
            Progress::RecEpoch(r) => epoch(
                r.epoch,
                r.total_epochs,
                r.step,
                r.loss,
                r.samples_per_second,
                "val_recall_at_10",
                r.validation_recall,
            ),
        }
    }
}

/// A claimed job, ready to run.
enum Training {
    Churn(ChurnJob),
    Recommend(RecommendJob),
}

impl Training {
    fn target(&self) -> &JobTarget {
        match self {
            Training::Churn(j) => &j.target,
            Training::Recommend(j) => &j.target,
        }
    }
}

/// The result of one attempt, as the scheduler will hear it.
struct Ending {
    outcome: JobOutcome,
    error: String,
    retryable: bool,
    metrics: HashMap<String, f64>,
    registered: Option<RegisteredModel>,
}

/// Runs the worker until the process ends.
pub async fn run(config: WorkerConfig) {
    let endpoint = format!("http://{}:{}", config.scheduler_host, config.scheduler_port);
    let channel = match Channel::from_shared(endpoint.clone()) {
        Ok(c) => c.connect_lazy(),
        Err(e) => {
            warn!("training worker disabled: scheduler address {endpoint}: {e}");
            return;
        }
    };
    let mut client = JobWorkerClient::new(channel);
    info!(executor = %config.executor_id, "training worker polling {endpoint} for jobs");
    loop {
        let claimed = client
            .claim_job(ClaimJobRequest {
                executor_id: config.executor_id.clone(),
                kinds: vec![JobKind::Churn as i32, JobKind::Recommend as i32],
            })
            .await;
        match claimed {
            Ok(r) => {
                let r = r.into_inner();
                if let Some(job) = r.job {
                    let lease = Duration::from_millis(r.lease_ms.max(500));
                    let registry = job.spec.as_ref().map_or("", |s| s.registry_uri.as_str());
                    let checkpoints = Checkpoints::new(&r.checkpoint_uri, registry);
                    run_job(&config, &mut client, job, lease, checkpoints).await;
                    continue;
                }
            }
            // The scheduler is restarting or unreachable: try again later.
            Err(e) => tracing::debug!("claiming a job: {}", e.message()),
        }
        tokio::time::sleep(config.poll_interval).await;
    }
}

/// The job's pipeline settings from its spec; the error is the reason the
/// job fails (without retrying).
fn training_job(
    config: &WorkerConfig,
    job: &Job,
    control: TrainControl,
) -> Result<Training, String> {
    let spec = job.spec.clone().unwrap_or_default();
    let cutoff = NaiveDate::parse_from_str(&spec.cutoff, "%Y-%m-%d")
        .map_err(|e| format!("cutoff '{}': {e}", spec.cutoff))?;
    let mut overrides: Vec<_> = spec.hyperparameters.iter().collect();
    overrides.sort();
    let promotion = match spec.promote.as_str() {
        "" => Promotion::IfBetter,
        p => p.parse()?,
    };
    let device = if config.cpu_only {
        tch::Device::Cpu
    } else {
        encore_models::default_device()
    };
    let target = JobTarget {
        job_id: job.id.clone(),
        data: PathBuf::from(&spec.data_uri),
        cutoff,
        registry: spec.registry_uri.clone(),
        model_name: spec.model_name,
        promotion,
        device,
        control,
    };
    match JobKind::try_from(job.kind) {
        Ok(JobKind::Churn) => Ok(Training::Churn(ChurnJob {
            target,
            horizons: spec.horizons_days,
            config: ChurnConfig::from_toml(&spec.config_toml)
                .map_err(|e| format!("config_toml: {e}"))?
                .apply(&overrides)
                .map_err(|e| e.to_string())?,
        })),
        Ok(JobKind::Recommend) => Ok(Training::Recommend(RecommendJob {
            target,
            config: RecommendConfig::from_toml(&spec.config_toml)
                .map_err(|e| format!("config_toml: {e}"))?
                .apply(&overrides)
                .map_err(|e| e.to_string())?,
        })),
        _ => Err(format!(
            "job kind {} is not one this executor trains",
            job.kind
        )),
    }
}

fn retryable(e: &TrainError) -> bool {
    use encore_models::Error as M;
    match e {
        TrainError::InvalidJob(_)
        | TrainError::EmptyData(_)
        | TrainError::Plan(_)
        | TrainError::Cancelled => false,
        TrainError::Model(m) => matches!(m, M::Io { .. } | M::Torch(_)),
        TrainError::Query(_)
        | TrainError::Arrow(_)
        | TrainError::Registry(_)
        | TrainError::Artifact { .. } => true,
    }
}

/// Trains `job` on a thread of its own; updates go to `updates`.
/// A Ballista session on `scheduler` for a training job's queries, with the
/// static distributed planner: Ballista 55's adaptive planner hangs a query
/// when a stage turns out empty (it cannot cancel the stage and then rejects
/// the executors' task status updates), and a training job's snapshot
/// queries read windows after the end of the data, which are empty.
async fn training_session(scheduler: &str) -> datafusion::error::Result<SessionContext> {
    use ballista::prelude::SessionConfigExt;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::prelude::SessionConfig;
    let config = encore_features::plans::SESSION_DEFAULTS.iter().fold(
        SessionConfig::new_with_ballista().set_bool("ballista.planner.adaptive.enabled", false),
        |config, (key, value)| config.set_str(key, value),
    );
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .build();
    SessionContext::remote_with_state(scheduler, state).await
}

fn spawn_training(
    scheduler: String,
    job: Training,
    threads: usize,
    updates: mpsc::UnboundedSender<Update>,
    cancel: Arc<AtomicBool>,
    checkpoints: Arc<Checkpoints>,
) -> oneshot::Receiver<Ending> {
    let (done_tx, done_rx) = oneshot::channel();
    let name = format!("train-{}", job.target().job_id);
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        if threads > 0 {
            tch::set_num_threads(threads as i32);
        }
        let ending = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(async {
                let ctx = training_session(&scheduler).await.map_err(|e| {
                    TrainError::Query(datafusion::error::DataFusionError::External(
                        format!("cannot open a session on the scheduler {scheduler}: {e}").into(),
                    ))
                })?;
                let mut on_progress = |p: Progress| {
                    // An epoch ends after its checkpoint is written.
                    if matches!(p, Progress::Epoch(_) | Progress::RecEpoch(_)) {
                        checkpoints.push();
                    }
                    let _ = updates.send(Update::of(p));
                    !cancel.load(Ordering::Relaxed)
                };
                match &job {
                    Training::Churn(j) => train_churn(&ctx, j, &mut on_progress).await,
                    Training::Recommend(j) => train_recommend(&ctx, j, &mut on_progress).await,
                }
            }),
            Err(e) => Err(TrainError::Artifact {
                path: "tokio runtime".into(),
                reason: e.to_string(),
            }),
        };
        let ending = match ending {
            Ok(trained) => {
                // The model is registered; its checkpoints are done with.
                checkpoints.clear();
                Ending {
                    outcome: JobOutcome::Succeeded,
                    error: String::new(),
                    retryable: false,
                    metrics: trained.metrics.into_iter().collect(),
                    registered: Some(RegisteredModel {
                        name: job.target().model_name.clone(),
                        version: trained.version,
                        promoted: trained.promoted,
                    }),
                }
            }
            Err(TrainError::Cancelled) => Ending {
                outcome: JobOutcome::Cancelled,
                error: "cancelled".into(),
                retryable: false,
                metrics: HashMap::new(),
                registered: None,
            },
            Err(e) => Ending {
                outcome: JobOutcome::Failed,
                retryable: retryable(&e),
                error: e.to_string(),
                metrics: HashMap::new(),
                registered: None,
            },
        };
        let _ = done_tx.send(ending);
    });
    if let Err(e) = spawned {
        warn!("cannot start a training thread: {e}");
    }
    done_rx
}

async fn run_job(
    config: &WorkerConfig,
    client: &mut JobWorkerClient<Channel>,
    job: Job,
    lease: Duration,
    checkpoints: Checkpoints,
) {
    let (id, attempt) = (job.id.clone(), job.attempt);
    info!(job = %id, attempt, "training job started");
    let report = |progress: Option<JobProgress>, message: String, metrics: HashMap<String, f64>| {
        ReportProgressRequest {
            job_id: id.clone(),
            attempt,
            executor_id: config.executor_id.clone(),
            progress,
            metrics,
            message,
        }
    };
    let cancel = Arc::new(AtomicBool::new(false));
    // Checkpoints of an earlier attempt (in an object store: downloaded first).
    let checkpoints = Arc::new(checkpoints);
    let pulling = checkpoints.clone();
    let _ = tokio::task::spawn_blocking(move || pulling.pull()).await;
    let control = TrainControl {
        checkpoint_dir: checkpoints.dir().map(Path::to_path_buf),
        cancel: Some(cancel.clone()),
    };
    let (tx, mut updates) = mpsc::unbounded_channel();
    let mut done = match training_job(config, &job, control) {
        Ok(training) => {
            if let Some(epoch) = checkpoints
                .dir()
                .and_then(encore_models::checkpoint::latest_epoch)
            {
                let _ = tx.send(Update::Stage(format!(
                    "resuming from the checkpoint after epoch {epoch}"
                )));
            }
            let scheduler = format!("df://{}:{}", config.scheduler_host, config.scheduler_port);
            let threads = config.threads;
            spawn_training(
                scheduler,
                training,
                threads,
                tx,
                cancel.clone(),
                checkpoints,
            )
        }
        Err(reason) => {
            drop(tx);
            let (done_tx, done_rx) = oneshot::channel();
            let _ = done_tx.send(Ending {
                outcome: JobOutcome::Failed,
                error: format!("invalid job: {reason}"),
                retryable: false,
                metrics: HashMap::new(),
                registered: None,
            });
            done_rx
        }
    };
    // Heartbeats well inside the lease, so one lost report does not lose it,
    // and often enough that a cancellation is heard within seconds.
    let mut heartbeat = tokio::time::interval((lease / 4).min(Duration::from_secs(2)));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lease_lost = false;
    let mut updates_open = true;
    let ending = loop {
        let request = tokio::select! {
            ending = &mut done => break ending.ok(),
            update = updates.recv(), if updates_open => match update {
                Some(Update::Stage(stage)) => report(None, stage, HashMap::new()),
                Some(Update::Epoch { progress, metrics }) => {
                    let message = format!("epoch {}/{}", progress.epoch, progress.total_epochs);
                    report(Some(progress), message, metrics)
                }
                None => {
                    updates_open = false;
                    continue;
                }
            },
            _ = heartbeat.tick() => report(None, String::new(), HashMap::new()),
        };
        match client.report_progress(request).await {
            Ok(r) => {
                let r = r.into_inner();
                if r.lease_lost {
                    warn!(job = %id, attempt, "lost the job's lease; stopping this attempt");
                    lease_lost = true;
                }
                if r.cancel_requested || r.lease_lost {
                    cancel.store(true, Ordering::Relaxed);
                }
            }
            Err(e) => warn!(job = %id, "progress report failed: {}", e.message()),
        }
    };
    if lease_lost {
        // Another attempt owns the job now; it must not hear from this one.
        return;
    }
    let ending = ending.unwrap_or(Ending {
        outcome: JobOutcome::Failed,
        error: "the training thread stopped without a result".into(),
        retryable: true,
        metrics: HashMap::new(),
        registered: None,
    });
    info!(job = %id, attempt, outcome = ?ending.outcome, error = %ending.error, "training job ended");
    let request = CompleteJobRequest {
        job_id: id.clone(),
        attempt,
        executor_id: config.executor_id.clone(),
        outcome: ending.outcome as i32,
        error: ending.error,
        retryable: ending.retryable,
        metrics: ending.metrics,
        registered_model: ending.registered,
    };
    // The scheduler may be restarting: keep trying while the lease would
    // still be ours.
    let deadline = tokio::time::Instant::now() + lease;
    loop {
        match client.complete_job(request.clone()).await {
            Ok(_) => return,
            Err(e) if e.code() == tonic::Code::FailedPrecondition => {
                warn!(job = %id, "completion refused: {}", e.message());
                return;
            }
            Err(e) if tokio::time::Instant::now() < deadline => {
                warn!(job = %id, "completing the job failed, retrying: {}", e.message());
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                warn!(job = %id, "giving up completing the job: {}", e.message());
                return;
            }
        }
    }
}
