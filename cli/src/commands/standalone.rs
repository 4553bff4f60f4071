//! `encore standalone`: scheduler and executor in one process.

use std::path::PathBuf;

use anyhow::Context;
use encore_executor::ExecutorConfig;
use encore_model_server::{ModelServerConfig, parse_device, start_model_server};
use encore_models::registry;
use encore_scheduler::SchedulerConfig;

use crate::cluster::LocalCluster;

/// Run a whole Encore cluster in this process: scheduler (with the training
/// job service), an executor that also trains, and, with --registry, the
/// model server.
///
/// Training jobs (`encore train --scheduler`, `encore jobs`) are kept in
/// --state-dir and survive a restart; --registry is also where jobs
/// register models unless they name another registry.
///
/// Prints the addresses it serves, then runs until Ctrl-C or SIGTERM.
/// Point `encore sql --scheduler` or any Ballista client at the scheduler URL,
/// and Triton / KServe v2 clients at the model server.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    encore standalone                       # scheduler on 127.0.0.1:50050\n  \
    encore standalone --bind-port 0 --concurrent-tasks 2\n  \
    encore standalone --registry registry   # also serve the registry's models on 127.0.0.1:8001\n  \
    encore standalone --registry registry --model-server-device cpu\n  \
    # in another terminal:\n  \
    encore sql --scheduler df://127.0.0.1:50050 --table plays=demo-data/plays \"SELECT count(*) FROM plays\"")]
pub struct Args {
    /// TOML file with [scheduler] and [executor] sections.
    #[arg(long, env = "ENCORE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address the scheduler listens on.
    #[arg(long, env = "ENCORE_SCHEDULER_BIND_HOST")]
    pub bind_host: Option<String>,
    /// Scheduler port (gRPC + HTTP); 0 picks a free one.
    #[arg(long, env = "ENCORE_SCHEDULER_BIND_PORT")]
    pub bind_port: Option<u16>,
    /// Task slots of the executor (0: every core).
    #[arg(long, env = "ENCORE_EXECUTOR_CONCURRENT_TASKS")]
    pub concurrent_tasks: Option<usize>,
    /// Executor memory pool in bytes (spills beyond it); 0 = unbounded.
    #[arg(long = "memory-pool-size", env = "ENCORE_EXECUTOR_MEMORY_POOL_SIZE")]
    pub memory_pool_size_bytes: Option<u64>,
    /// Model registry to serve (KServe v2 gRPC); no model server without it.
    #[arg(long, env = "ENCORE_REGISTRY")]
    pub registry: Option<String>,
    /// Folder of the training-job store (jobs.sqlite).
    #[arg(
        long,
        env = "ENCORE_SCHEDULER_STATE_DIR",
        default_value = "encore-state"
    )]
    pub state_dir: PathBuf,
    /// Model server port (KServe v2 gRPC); 0 picks a free one.
    #[arg(long, env = "ENCORE_MODEL_SERVER_BIND_PORT", default_value_t = 8001)]
    pub model_server_port: u16,
    /// Where the model server runs models: auto (CUDA when libtorch sees a
    /// GPU, else CPU), cpu, cuda or cuda:N.
    #[arg(long, env = "ENCORE_MODEL_SERVER_DEVICE", default_value = "auto")]
    pub model_server_device: String,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    // Bad flags fail before anything starts.
    let model_device = parse_device(&args.model_server_device).context("--model-server-device")?;
    let (mut scheduler, mut executor) = match &args.config {
        Some(path) => (
            SchedulerConfig::from_toml_file(path)?,
            ExecutorConfig::from_toml_file(path)?,
        ),
        None => (SchedulerConfig::default(), ExecutorConfig::default()),
    };
    if let Some(host) = args.bind_host {
        executor.bind_host = host.clone();
        scheduler.bind_host = host;
    }
    if let Some(port) = args.bind_port {
        scheduler.bind_port = port;
    }
    if let Some(slots) = args.concurrent_tasks {
        executor.concurrent_tasks = slots;
    }
    if args.memory_pool_size_bytes.is_some() {
        executor.memory_pool_size_bytes = args.memory_pool_size_bytes;
    }
    scheduler.state_dir = Some(args.state_dir.clone());
    if let Some(registry) = &args.registry {
        // A new cluster starts with an empty registry that jobs fill.
        if !registry::is_remote(registry) {
            std::fs::create_dir_all(registry.trim_start_matches("file://"))
                .with_context(|| format!("--registry {registry}"))?;
        }
        scheduler.registry = Some(
            registry::absolute_location(registry)
                .with_context(|| format!("--registry {registry}"))?,
        );
    }
    // Only the scheduler's port is public; the executor's are internal.
    let bind_host = scheduler.bind_host.clone();
    let cluster = LocalCluster::start(scheduler, executor.with_free_ports()).await?;
    let model_server = match args.registry {
        Some(registry) => Some(
            start_model_server(ModelServerConfig {
                registry,
                bind_host,
                bind_port: args.model_server_port,
                device: model_device,
                ..Default::default()
            })
            .await
            .context("starting the model server")?,
        ),
        None => None,
    };
    print_addresses(&cluster);
    match &model_server {
        Some(server) => println!(
            "  models      {}   (KServe v2 gRPC; tritonclient connects here)",
            server.addr()
        ),
        None => println!("  models      not served (start with --registry DIR)"),
    }
    encore_common::process::shutdown_signal().await;
    eprintln!("shutting down");
    if let Some(server) = model_server {
        server.shutdown().await?;
    }
    cluster.shutdown().await
}

/// The addresses a standalone cluster serves, one per line.
pub fn print_addresses(cluster: &LocalCluster) {
    let s = &cluster.scheduler;
    let e = &cluster.executor;
    // The first line carries the URL, for scripts and tests.
    println!("encore standalone running, scheduler at {}", s.url());
    println!(
        "  scheduler   {}   (Ballista gRPC; SQL clients connect here)",
        s.url()
    );
    println!(
        "  http        {}/metrics  /healthz  /readyz  /api/jobs",
        s.http_url()
    );
    println!(
        "  jobs        {}   (encore.v1.Jobs; encore train --scheduler, encore jobs)",
        s.url()
    );
    println!(
        "  executor    {}   flight {}  metrics {}/metrics",
        e.executor_id(),
        e.flight_addr(),
        e.http_url()
    );
}
