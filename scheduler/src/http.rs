//! Encore's HTTP endpoints on the scheduler port and the gRPC metrics layer.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ballista_scheduler::scheduler_server::SchedulerServer;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};

use crate::metrics::SchedulerMetrics;

/// The embedded Ballista scheduler, with Ballista's default plan codecs.
pub(crate) type Ballista = SchedulerServer<LogicalPlanNode, PhysicalPlanNode>;

/// Shared by the HTTP handlers and the gRPC layer.
#[derive(Clone)]
pub(crate) struct AppState {
    pub scheduler: Arc<Ballista>,
    pub metrics: Arc<SchedulerMetrics>,
    pub jobs: crate::jobs::JobService,
}

/// `/metrics`, `/healthz` and `/readyz`.
pub(crate) fn routes(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(state): State<AppState>) -> Response {
    refresh_gauges(&state).await;
    encore_common::metrics::response(state.metrics.encode())
}

async fn refresh_gauges(state: &AppState) {
    let s = &state.scheduler;
    if let Ok(executors) = s.state.executor_manager.get_executors_state().await {
        state.metrics.executors.set(executors.len() as i64);
    }
    state
        .metrics
        .jobs_pending
        .set(s.pending_job_number() as i64);
    state
        .metrics
        .jobs_running
        .set(s.running_job_number() as i64);
    if let Ok(counts) = state.jobs.count_by_state() {
        state.metrics.jobs.reset();
        for (job_state, n) in counts {
            let name = job_state
                .as_str_name()
                .trim_start_matches("JOB_STATE_")
                .to_lowercase();
            state
                .metrics
                .jobs
                .with_label_values(&[name.as_str()])
                .set(n);
        }
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    let required = state.scheduler.state.config.min_ready_executors;
    let registered = state
        .scheduler
        .state
        .executor_manager
        .get_executors_state()
        .await
        .map(|e| e.len())
        .unwrap_or(0);
    if state.scheduler.is_ready() {
        (
            StatusCode::OK,
            format!("ready: {registered} executors registered\n"),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {registered}/{required} executors registered\n"),
        )
            .into_response()
    }
}
