//! The executor's HTTP port: `/metrics`, `/healthz`, `/readyz`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ballista_executor::health::ExecutorHealth;

use crate::metrics::ExecutorMetrics;

#[derive(Clone)]
pub(crate) struct AppState {
    pub metrics: Arc<ExecutorMetrics>,
    pub health: ExecutorHealth,
}

pub(crate) fn routes(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(state): State<AppState>) -> Response {
    encore_common::metrics::response(state.metrics.encode())
}

/// Ready once the last heartbeat to the scheduler succeeded.
async fn readyz(State(state): State<AppState>) -> Response {
    if state.health.is_ready() {
        (StatusCode::OK, "ready: registered with the scheduler\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no successful heartbeat to the scheduler yet\n",
        )
            .into_response()
    }
}
