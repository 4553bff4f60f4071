//! `/metrics`: Prometheus text for a process' own registry plus the default
//! registry (the process collector, and Ballista's scheduler metrics).

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus::{Encoder, Registry, TextEncoder};

/// Prometheus text of `registry` followed by the default registry.
pub fn encode(registry: &Registry) -> Result<String, prometheus::Error> {
    let mut families = registry.gather();
    families.extend(prometheus::gather());
    let mut out = Vec::new();
    TextEncoder::new().encode(&families, &mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The HTTP answer for `/metrics`: the text, or a 500 naming the failure.
pub fn response(text: Result<String, prometheus::Error>) -> Response {
    match text {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// Calls and latency of a gRPC server by method and status code:
/// `<prefix>_grpc_requests_total{method,code}` and
/// `<prefix>_grpc_request_duration_seconds{method}`, recorded by one layer
/// ([`record_grpc`]) rather than in each handler.
pub struct GrpcMetrics {
    requests: prometheus::IntCounterVec,
    duration: prometheus::HistogramVec,
}

impl GrpcMetrics {
    /// Registers both metrics in `registry` under `prefix` (e.g. `encore_scheduler`).
    pub fn new(registry: &Registry, prefix: &str) -> Result<Self, prometheus::Error> {
        let requests = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                format!("{prefix}_grpc_requests_total"),
                "gRPC requests served, by method and status code",
            ),
            &["method", "code"],
        )?;
        let duration = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new(
                format!("{prefix}_grpc_request_duration_seconds"),
                "Time to the response headers of gRPC requests, by method",
            )
            .buckets(prometheus::exponential_buckets(0.0001, 4.0, 10)?),
            &["method"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Self { requests, duration })
    }

    /// Records one call; `method` is the RPC name (a bounded set).
    pub fn observe(&self, method: &str, code: &str, elapsed: std::time::Duration) {
        self.requests.with_label_values(&[method, code]).inc();
        self.duration
            .with_label_values(&[method])
            .observe(elapsed.as_secs_f64());
    }
}

/// Axum middleware for gRPC routes: counts calls by method and status code
/// and times them to the response headers.
pub async fn record_grpc(
    axum::extract::State(metrics): axum::extract::State<std::sync::Arc<GrpcMetrics>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    // "/inference.GRPCInferenceService/ModelInfer" -> "ModelInfer".
    let method = request
        .uri()
        .path()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let response = next.run(request).await;
    // Errors are sent as trailers-only responses with grpc-status in the
    // headers; a success carries it in the trailers, after the body.
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("0")
        .to_owned();
    metrics.observe(&method, &code, started.elapsed());
    response
}
