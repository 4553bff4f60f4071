//! `encore-executor`: parses flags, environment and the optional TOML file,
//! installs logging and runs [`encore_executor::start_executor`] until
//! SIGTERM or Ctrl-C.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use encore_common::process;
use encore_executor::{ExecutorConfig, SchedulingPolicy, start_executor};

/// mimalloc, as in the `encore` binary (see cli/src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Encore executor: an Apache Ballista executor with task metrics and health probes.
///
/// Registers with the scheduler, runs query stage tasks in its task slots
/// and serves shuffle data over Arrow Flight. /metrics, /healthz and /readyz
/// are on --bind-health-port. Settings come from flags, then
/// ENCORE_EXECUTOR_* variables, then the [executor] section of --config,
/// then defaults.
#[derive(Parser, Debug)]
#[command(
    name = "encore-executor",
    version,
    after_help = "Examples:\n  encore-executor --scheduler-host 127.0.0.1 --scheduler-port 50050 --concurrent-tasks 2\n  encore-executor --bind-port 0 --bind-grpc-port 0 --bind-health-port 0 --memory-pool-size 4294967296"
)]
struct Args {
    /// TOML file with an [executor] section (keys as in the flags, with underscores).
    #[arg(long, env = "ENCORE_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long, env = "ENCORE_EXECUTOR_BIND_HOST")]
    bind_host: Option<String>,
    /// Host name advertised to the scheduler [default: the bind host].
    #[arg(long, env = "ENCORE_EXECUTOR_EXTERNAL_HOST")]
    external_host: Option<String>,
    /// Arrow Flight port; 0 picks a free one [default: 50051].
    #[arg(long, env = "ENCORE_EXECUTOR_BIND_PORT")]
    bind_port: Option<u16>,
    /// gRPC port for pushed tasks; 0 picks a free one [default: 50052].
    #[arg(long, env = "ENCORE_EXECUTOR_BIND_GRPC_PORT")]
    bind_grpc_port: Option<u16>,
    /// HTTP port for /metrics, /healthz, /readyz; 0 picks a free one [default: 50053].
    #[arg(long, env = "ENCORE_EXECUTOR_BIND_HEALTH_PORT")]
    bind_health_port: Option<u16>,
    /// Scheduler host [default: 127.0.0.1].
    #[arg(long, env = "ENCORE_SCHEDULER_HOST")]
    scheduler_host: Option<String>,
    /// Scheduler port [default: 50050].
    #[arg(long, env = "ENCORE_SCHEDULER_PORT")]
    scheduler_port: Option<u16>,
    /// Keep trying to reach the scheduler this long at start-up [default: 10].
    #[arg(long, env = "ENCORE_EXECUTOR_SCHEDULER_CONNECT_TIMEOUT_SECONDS")]
    scheduler_connect_timeout_seconds: Option<u16>,
    /// Task slots; 0 uses every core [default: 0].
    #[arg(long, env = "ENCORE_EXECUTOR_CONCURRENT_TASKS")]
    concurrent_tasks: Option<usize>,
    /// Memory pool in bytes shared by the task slots (spills beyond it); 0 = unbounded [default: 70% of RAM].
    #[arg(long = "memory-pool-size", env = "ENCORE_EXECUTOR_MEMORY_POOL_SIZE")]
    memory_pool_size_bytes: Option<u64>,
    /// Directory for shuffle files and spills [default: a temporary directory].
    #[arg(long, env = "ENCORE_EXECUTOR_WORK_DIR")]
    work_dir: Option<PathBuf>,
    /// pull-staged or push-staged; must match the scheduler [default: pull-staged].
    #[arg(long, env = "ENCORE_EXECUTOR_TASK_SCHEDULING_POLICY")]
    task_scheduling_policy: Option<SchedulingPolicy>,
    /// Seconds between heartbeats to the scheduler [default: 15].
    #[arg(long, env = "ENCORE_EXECUTOR_HEARTBEAT_INTERVAL_SECONDS")]
    executor_heartbeat_interval_seconds: Option<u64>,
    /// Do not take training jobs (SQL tasks only).
    #[arg(long, env = "ENCORE_EXECUTOR_NO_TRAINING")]
    no_training: bool,
    /// libtorch threads for training jobs; 0 lets libtorch choose [default: 0].
    #[arg(long, env = "ENCORE_EXECUTOR_TRAINING_THREADS")]
    training_threads: Option<usize>,
    /// Train on the CPU even when CUDA is available.
    #[arg(long, env = "ENCORE_EXECUTOR_TRAINING_CPU_ONLY")]
    training_cpu_only: bool,
    /// How often an idle executor asks for a training job, in ms [default: 1000].
    #[arg(long, env = "ENCORE_EXECUTOR_JOB_POLL_INTERVAL_MS")]
    job_poll_interval_ms: Option<u64>,
}

impl Args {
    fn into_config(self) -> anyhow::Result<ExecutorConfig> {
        let mut c = match &self.config {
            Some(path) => ExecutorConfig::from_toml_file(path)?,
            None => ExecutorConfig::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => {$(
                if let Some(v) = self.$field { c.$field = v; }
            )*};
        }
        set!(
            bind_host,
            bind_port,
            bind_grpc_port,
            bind_health_port,
            scheduler_host,
            scheduler_port,
            scheduler_connect_timeout_seconds,
            concurrent_tasks,
            task_scheduling_policy,
            executor_heartbeat_interval_seconds,
            training_threads,
            job_poll_interval_ms
        );
        if self.no_training {
            c.training = false;
        }
        if self.training_cpu_only {
            c.training_cpu_only = true;
        }
        if self.external_host.is_some() {
            c.external_host = self.external_host;
        }
        if self.memory_pool_size_bytes.is_some() {
            c.memory_pool_size_bytes = self.memory_pool_size_bytes;
        }
        if self.work_dir.is_some() {
            c.work_dir = self.work_dir;
        }
        c.validate()?;
        Ok(c)
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("encore-executor: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let config = Args::parse().into_config()?;
    process::init_logging("info");
    process::runtime()
        .context("cannot start the tokio runtime")?
        .block_on(async {
            let mut handle = start_executor(config).await?;
            // One stable line on stdout for scripts and tests.
            println!(
                "encore-executor {} flight {} metrics {}",
                handle.executor_id(),
                handle.flight_addr(),
                handle.http_url()
            );
            // Ballista's loop handles SIGTERM/Ctrl-C itself: it tells the
            // scheduler it is terminating, then returns.
            handle.wait().await?;
            Ok(())
        })
}
