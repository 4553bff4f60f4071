//! Starting the executor process: Ballista's executor loop, its Flight
//! server on a pre-bound port, and the HTTP port.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_flight::flight_service_server::FlightServiceServer;
use ballista_core::error::BallistaError;
use ballista_core::utils::{GrpcServerConfig, create_grpc_server};
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_executor::flight_service::BallistaFlightService;
use ballista_executor::health::ExecutorHealth;
use ballista_executor::shutdown::Shutdown;
use encore_common::process::bind;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::info;

use crate::config::ExecutorConfig;
use crate::engine::MeteredEngine;
use crate::error::{Error, Result};
use crate::http::{self, AppState};
use crate::metrics::ExecutorMetrics;

/// How long a shuffle connection to another executor stays open unused.
const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A running executor. Dropping it stops the HTTP port; the Ballista loop
/// stops with the process (SIGTERM / Ctrl-C) or the runtime.
pub struct ExecutorHandle {
    flight_addr: SocketAddr,
    grpc_port: u16,
    http_addr: SocketAddr,
    executor_id: String,
    health: ExecutorHealth,
    executor: Option<JoinHandle<Result<()>>>,
    worker: Option<JoinHandle<()>>,
    http_shutdown: Option<oneshot::Sender<()>>,
    /// The default work dir, deleted with the handle.
    _work_dir: Option<tempfile::TempDir>,
}

impl ExecutorHandle {
    /// The Arrow Flight address serving this executor's shuffle partitions.
    pub fn flight_addr(&self) -> SocketAddr {
        self.flight_addr
    }

    /// The gRPC port the scheduler pushes tasks to.
    pub fn grpc_port(&self) -> u16 {
        self.grpc_port
    }

    /// Base URL of `/metrics`, `/healthz`, `/readyz`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// The id this executor registered with.
    pub fn executor_id(&self) -> &str {
        &self.executor_id
    }

    /// True once the executor's last heartbeat to the scheduler succeeded.
    pub fn is_ready(&self) -> bool {
        self.health.is_ready()
    }

    /// Waits until the executor stops: after SIGTERM/Ctrl-C (it first tells the
    /// scheduler it is terminating), or when it loses the scheduler for good.
    pub async fn wait(&mut self) -> Result<()> {
        let result = match self.executor.take() {
            Some(task) => task
                .await
                .map_err(|e| Error::Serve(std::io::Error::other(e.to_string())))?,
            None => Ok(()),
        };
        if let Some(tx) = self.http_shutdown.take() {
            let _ = tx.send(());
        }
        result
    }

    /// Stops the executor's tasks (used in-process by `encore standalone`).
    pub fn abort(&mut self) {
        if let Some(task) = self.executor.take() {
            task.abort();
        }
        if let Some(task) = self.worker.take() {
            task.abort();
        }
        if let Some(tx) = self.http_shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for ExecutorHandle {
    fn drop(&mut self) {
        self.abort();
    }
}

/// Waits until the scheduler accepts TCP connections, for at most `seconds`.
/// (Ballista's own retry loop never ends, so Encore waits here and gives
/// Ballista a single attempt.)
async fn wait_for_scheduler(host: &str, port: u16, seconds: u16) -> Result<()> {
    let addr = format!("{host}:{port}");
    let deadline = Instant::now() + Duration::from_secs(seconds.into());
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(&addr),
        )
        .await;
        if matches!(attempt, Ok(Ok(_))) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::SchedulerUnreachable { addr, seconds });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Starts the executor: binds its ports, registers with the scheduler and
/// runs tasks until the process is told to stop.
pub async fn start_executor(config: ExecutorConfig) -> Result<ExecutorHandle> {
    config.validate()?;
    wait_for_scheduler(
        &config.scheduler_host,
        config.scheduler_port,
        config.scheduler_connect_timeout_seconds,
    )
    .await?;
    let metrics = Arc::new(ExecutorMetrics::new()?);
    let slots = config.task_slots();
    metrics.task_slots.set(slots as i64);

    // Flight is served on a listener bound here, so port 0 is race-free and
    // the scheduler learns the real port.
    let (flight, flight_addr) = bind(&config.bind_host, config.bind_port).await?;
    // With push scheduling Ballista binds the task gRPC port itself: for 0,
    // find a free one. (Pull scheduling does not use it.)
    let push = config.task_scheduling_policy == crate::SchedulingPolicy::PushStaged;
    let grpc_port = if push && config.bind_grpc_port == 0 {
        bind(&config.bind_host, 0).await?.1.port()
    } else {
        config.bind_grpc_port
    };
    let (http_listener, http_addr) = bind(&config.bind_host, config.bind_health_port).await?;

    let max_message = config.grpc_max_message_bytes as usize;
    let flight = Mutex::new(Some(flight));
    let flight_provider = move |work_dir: String,
                                _addr: SocketAddr,
                                mut shutdown: Shutdown,
                                grpc: GrpcServerConfig|
          -> JoinHandle<std::result::Result<(), BallistaError>> {
        let listener = flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        tokio::spawn(async move {
            let listener = listener.ok_or_else(|| {
                BallistaError::General("executor flight server started twice".into())
            })?;
            let service = FlightServiceServer::new(BallistaFlightService::new(work_dir))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message);
            create_grpc_server(&grpc)
                .add_service(service)
                .serve_with_incoming_shutdown(
                    // A pre-bound listener does not get the builder's
                    // tcp_nodelay: without it each small response (a
                    // shuffle or result stream's last frame) waits ~40 ms
                    // for Nagle's algorithm and the peer's delayed ACK.
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    shutdown.recv(),
                )
                .await
                .map_err(BallistaError::TonicError)
        })
    };

    // Shuffle files go to the configured folder, or to a temporary one that
    // lives (and is deleted) with the handle; see `work_dir` for the ones
    // killed executors leave behind.
    let temp_work_dir = match &config.work_dir {
        Some(_) => None,
        None => Some(crate::work_dir::create().map_err(Error::Serve)?),
    };
    let work_dir = config
        .work_dir
        .clone()
        .or_else(|| temp_work_dir.as_ref().map(|d| d.path().to_path_buf()));

    let ballista = ExecutorProcessConfig {
        bind_host: config.bind_host.clone(),
        external_host: Some(config.advertised_host().to_owned()),
        port: flight_addr.port(),
        grpc_port,
        scheduler_host: config.scheduler_host.clone(),
        scheduler_port: config.scheduler_port,
        scheduler_connect_timeout_seconds: 0,
        vcores: slots,
        task_scheduling_policy: match config.task_scheduling_policy {
            crate::SchedulingPolicy::PushStaged => {
                ballista_core::config::TaskSchedulingPolicy::PushStaged
            }
            crate::SchedulingPolicy::PullStaged => {
                ballista_core::config::TaskSchedulingPolicy::PullStaged
            }
        },
        work_dir: work_dir.map(|p| p.to_string_lossy().into_owned()),
        executor_heartbeat_interval_seconds: config.executor_heartbeat_interval_seconds,
        grpc_max_decoding_message_size: config.grpc_max_message_bytes,
        grpc_max_encoding_message_size: config.grpc_max_message_bytes,
        memory_pool_size: config.memory_pool_size_bytes,
        override_execution_engine: Some(Arc::new(MeteredEngine::new(
            metrics.clone(),
            CLIENT_IDLE_TIMEOUT,
        ))),
        override_arrow_flight_service: Some(Arc::new(flight_provider)),
        ..Default::default()
    };
    let executor_id = ballista.executor_id.clone();
    let health = ballista.health.clone();

    let (http_tx, http_rx) = oneshot::channel::<()>();
    let app = http::routes(AppState {
        metrics,
        health: health.clone(),
    });
    tokio::spawn(async move {
        let served = axum::serve(http_listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_rx.await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "executor HTTP server stopped");
        }
    });

    info!(
        executor_id = %executor_id,
        flight = %flight_addr,
        grpc_port,
        http = %http_addr,
        slots,
        "encore executor starting"
    );
    let executor = tokio::spawn(async move {
        start_executor_process(Arc::new(ballista))
            .await
            .map_err(Error::from)
    });
    let worker = config.training.then(|| {
        tokio::spawn(crate::worker::run(crate::worker::WorkerConfig {
            scheduler_host: config.scheduler_host.clone(),
            scheduler_port: config.scheduler_port,
            executor_id: executor_id.clone(),
            poll_interval: Duration::from_millis(config.job_poll_interval_ms.max(10)),
            threads: config.training_threads,
            cpu_only: config.training_cpu_only,
        }))
    });
    Ok(ExecutorHandle {
        flight_addr,
        grpc_port,
        http_addr,
        executor_id,
        health,
        executor: Some(executor),
        worker,
        http_shutdown: Some(http_tx),
        _work_dir: temp_work_dir,
    })
}
