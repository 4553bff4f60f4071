//! `encore standalone`: scheduler and executor in one process.

use std::path::PathBuf;

use encore_executor::ExecutorConfig;
use encore_scheduler::SchedulerConfig;

use crate::cluster::LocalCluster;

/// Run a whole Encore cluster in this process: scheduler and executor.
///
/// Prints the addresses it serves, then runs until Ctrl-C or SIGTERM.
/// Point `encore sql --scheduler` or any Ballista client at the scheduler URL.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    encore standalone                       # scheduler on 127.0.0.1:50050\n  \
    encore standalone --bind-port 0 --concurrent-tasks 2\n  \
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
}

pub async fn run(args: Args) -> anyhow::Result<()> {
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
    // Only the scheduler's port is public; the executor's are internal.
    let cluster = LocalCluster::start(scheduler, executor.with_free_ports()).await?;
    print_addresses(&cluster);
    encore_common::process::shutdown_signal().await;
    eprintln!("shutting down");
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
        "  executor    {}   flight {}  metrics {}/metrics",
        e.executor_id(),
        e.flight_addr(),
        e.http_url()
    );
}
