//! `encore-scheduler`: parses flags, environment and the optional TOML file,
//! installs logging and runs [`encore_scheduler::start_scheduler`] until
//! SIGTERM or Ctrl-C.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use encore_common::process;
use encore_scheduler::{SchedulerConfig, SchedulingPolicy, TaskDistribution, start_scheduler};

/// mimalloc, as in the `encore` binary (see cli/src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Encore scheduler: an Apache Ballista scheduler with Prometheus metrics and health probes.
///
/// gRPC (Ballista SchedulerGrpc, Arrow Flight proxy) and HTTP (/metrics,
/// /healthz, /readyz, /api/...) share one port. Settings come from flags,
/// then ENCORE_SCHEDULER_* variables, then the [scheduler] section of
/// --config, then defaults.
#[derive(Parser, Debug)]
#[command(
    name = "encore-scheduler",
    version,
    after_help = "Examples:\n  encore-scheduler --bind-port 50050\n  encore-scheduler --bind-port 0 --config encore.toml   # any free port, logged on stdout"
)]
struct Args {
    /// TOML file with a [scheduler] section (keys as in the flags, with underscores).
    #[arg(long, env = "ENCORE_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long, env = "ENCORE_SCHEDULER_BIND_HOST")]
    bind_host: Option<String>,
    /// Port to listen on; 0 picks a free one [default: 50050].
    #[arg(long, env = "ENCORE_SCHEDULER_BIND_PORT")]
    bind_port: Option<u16>,
    /// Host name advertised to executors and clients [default: the bind host].
    #[arg(long, env = "ENCORE_SCHEDULER_EXTERNAL_HOST")]
    external_host: Option<String>,
    /// pull-staged or push-staged; must match the executors [default: pull-staged].
    #[arg(long, env = "ENCORE_SCHEDULER_POLICY")]
    scheduler_policy: Option<SchedulingPolicy>,
    /// bias (fill one executor first) or round-robin [default: bias].
    #[arg(long, env = "ENCORE_SCHEDULER_TASK_DISTRIBUTION")]
    task_distribution: Option<TaskDistribution>,
    /// Declare an executor dead after this long without a heartbeat [default: 180].
    #[arg(long, env = "ENCORE_SCHEDULER_EXECUTOR_TIMEOUT_SECONDS")]
    executor_timeout_seconds: Option<u64>,
    /// How often to look for dead executors [default: 15].
    #[arg(long, env = "ENCORE_SCHEDULER_EXPIRE_DEAD_EXECUTOR_INTERVAL_SECONDS")]
    expire_dead_executor_interval_seconds: Option<u64>,
    /// Attempts per task before the query fails [default: 4].
    #[arg(long, env = "ENCORE_SCHEDULER_TASK_MAX_FAILURES")]
    task_max_failures: Option<usize>,
    /// Runs of a stage after lost shuffle data before the query fails [default: 1].
    #[arg(long, env = "ENCORE_SCHEDULER_STAGE_MAX_FAILURES")]
    stage_max_failures: Option<usize>,
    /// /readyz is 200 once this many executors registered [default: 1].
    #[arg(long, env = "ENCORE_SCHEDULER_MIN_READY_EXECUTORS")]
    min_ready_executors: Option<usize>,
    /// Folder of the training-job store (jobs.sqlite), kept across restarts
    /// [default: ./encore-state].
    #[arg(long, env = "ENCORE_SCHEDULER_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Keep training jobs in memory only (lost when the scheduler stops).
    #[arg(long, conflicts_with = "state_dir")]
    in_memory_jobs: bool,
    /// Model registry for training jobs that name none.
    #[arg(long, env = "ENCORE_REGISTRY")]
    registry: Option<String>,
    /// Re-queue a training attempt after this long without a progress
    /// report from its executor [default: 30].
    #[arg(long, env = "ENCORE_SCHEDULER_JOB_LEASE_SECONDS")]
    job_lease_seconds: Option<f64>,
    /// Attempts per training job when the job does not say [default: 3].
    #[arg(long, env = "ENCORE_SCHEDULER_JOB_MAX_ATTEMPTS")]
    job_max_attempts: Option<u32>,
}

impl Args {
    fn into_config(self) -> anyhow::Result<SchedulerConfig> {
        let mut c = match &self.config {
            Some(path) => SchedulerConfig::from_toml_file(path)?,
            None => SchedulerConfig::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => {$(
                if let Some(v) = self.$field { c.$field = v; }
            )*};
        }
        set!(
            bind_host,
            bind_port,
            scheduler_policy,
            task_distribution,
            executor_timeout_seconds,
            expire_dead_executor_interval_seconds,
            task_max_failures,
            stage_max_failures,
            min_ready_executors,
            job_lease_seconds,
            job_max_attempts
        );
        if self.registry.is_some() {
            c.registry = self.registry;
        }
        // Jobs persist by default (like MLflow's ./mlruns), unless asked not to.
        if self.in_memory_jobs {
            c.state_dir = None;
        } else if self.state_dir.is_some() {
            c.state_dir = self.state_dir;
        } else if c.state_dir.is_none() {
            c.state_dir = Some(PathBuf::from("encore-state"));
        }
        if self.external_host.is_some() {
            c.external_host = self.external_host;
        }
        c.validate()?;
        Ok(c)
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("encore-scheduler: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let config = Args::parse().into_config()?;
    process::init_logging("info");
    process::runtime()
        .context("cannot start the tokio runtime")?
        .block_on(async {
            let mut handle = start_scheduler(config).await?;
            // One stable line on stdout for scripts and tests.
            println!("encore-scheduler listening on {}", handle.url());
            handle.run_until_signal().await?;
            Ok(())
        })
}
