//! Starting and stopping the scheduler process.

use std::net::SocketAddr;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use ballista_core::flight_proxy_service::BallistaFlightProxyService;
use ballista_core::serde::protobuf::scheduler_grpc_server::SchedulerGrpcServer;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::scheduler_process::create_scheduler;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use encore_common::process::ServerTask;
use encore_proto::encore::v1::job_worker_server::JobWorkerServer;
use encore_proto::encore::v1::jobs_server::JobsServer;
use tonic::service::RoutesBuilder;
use tracing::info;

use crate::config::SchedulerConfig;
use crate::error::{Error, Result};
use crate::http::{self, AppState};
use crate::jobs::{JobService, JobSettings, JobStore, spec::Defaults};
use crate::metrics::SchedulerMetrics;

/// A running scheduler. Dropping it stops the server.
pub struct SchedulerHandle {
    addr: SocketAddr,
    advertised: String,
    server: ServerTask<Error>,
}

impl SchedulerHandle {
    /// The address the server is bound to (gRPC and HTTP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL clients pass to `SessionContext::remote` and `encore sql --scheduler`.
    pub fn url(&self) -> String {
        format!("df://{}", self.advertised)
    }

    /// Base URL of the HTTP endpoints (`/metrics`, `/healthz`, `/readyz`, `/api`).
    pub fn http_url(&self) -> String {
        format!("http://{}", self.advertised)
    }

    /// Stops accepting connections, lets in-flight requests finish, and waits.
    pub async fn shutdown(mut self) -> Result<()> {
        self.server.shutdown().await
    }

    /// Serves until Ctrl-C / SIGTERM (then stops gracefully) or an I/O error.
    pub async fn run_until_signal(&mut self) -> Result<()> {
        self.server.run_until_signal().await
    }
}

/// Binds, starts the embedded Ballista scheduler and serves gRPC + HTTP on one port.
pub async fn start_scheduler(config: SchedulerConfig) -> Result<SchedulerHandle> {
    config.validate()?;
    let (listener, addr) =
        encore_common::process::bind(&config.bind_host, config.bind_port).await?;
    // Ballista advertises `external_host:bind_port`; give it the real port.
    let ballista_config = Arc::new(config.to_ballista(addr.port()));
    ballista_config.validate()?;
    let cluster = BallistaCluster::new_from_config(&ballista_config).await?;
    let scheduler =
        create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, ballista_config.clone())
            .await?;
    let metrics = Arc::new(SchedulerMetrics::new()?);
    let store = match &config.state_dir {
        Some(dir) => JobStore::open(dir)?,
        None => JobStore::in_memory()?,
    };
    let jobs = JobService::new(
        store,
        JobSettings {
            lease: std::time::Duration::from_secs_f64(config.job_lease_seconds),
            defaults: Defaults {
                registry: config.registry.clone(),
                max_attempts: config.job_max_attempts,
            },
        },
        metrics.jobs_total.clone(),
    );
    let reaper = jobs.spawn_lease_reaper();

    let max_message = config.grpc_max_message_bytes as usize;
    let mut grpc = RoutesBuilder::default();
    grpc.add_service(
        SchedulerGrpcServer::new(scheduler.clone())
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message),
    );
    // Lets clients that cannot reach executors fetch results through the scheduler.
    grpc.add_service(
        FlightServiceServer::new(BallistaFlightProxyService::new(
            max_message,
            max_message,
            false,
            None,
        ))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message),
    );
    grpc.add_service(JobsServer::new(jobs.clone()));
    grpc.add_service(JobWorkerServer::new(jobs.clone()));
    let grpc = grpc
        .routes()
        .into_axum_router()
        .layer(axum::middleware::from_fn_with_state(
            metrics.grpc.clone(),
            encore_common::metrics::record_grpc,
        ));

    let scheduler = Arc::new(scheduler);
    tokio::spawn(crate::guard::cancel_queries_on_executor_loss(
        scheduler.clone(),
        metrics.clone(),
    ));
    let app = ballista_scheduler::api::get_routes(scheduler.clone())
        .merge(grpc)
        .merge(http::routes(AppState {
            scheduler,
            metrics,
            jobs,
        }));

    let advertised = format!("{}:{}", config.advertised_host(), addr.port());
    info!(%addr, url = %format!("df://{advertised}"), "encore scheduler listening");

    let server = ServerTask::spawn(|stop| async move {
        // The reaper lives as long as the server.
        let _reaper = AbortOnDrop(reaper);
        // Small gRPC responses (an executor's poll_work, job status) must
        // not wait ~40 ms for Nagle's algorithm and the peer's delayed ACK:
        // with it, every task handed to a pull-based executor arrived 40 ms
        // late and short stages ran at a fraction of their slots.
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stop)
        .await
        .map_err(Error::Serve)
    });
    Ok(SchedulerHandle {
        addr,
        advertised,
        server,
    })
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
