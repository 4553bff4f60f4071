//! The model server's Prometheus metrics (`encore_model_server_*`).

use std::sync::Arc;
use std::time::Instant;

use encore_common::metrics::GrpcMetrics;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Everything `/metrics` reports about serving.
pub struct ServerMetrics {
    registry: Registry,
    /// gRPC calls by method and code (recorded by the layer on the gRPC routes).
    pub grpc: Arc<GrpcMetrics>,
    /// Requests by model, version, variant, method and code.
    pub requests: IntCounterVec,
    /// Request latency (decode to response) by model and method.
    pub request_duration: HistogramVec,
    /// Requests being served now, by model.
    pub in_flight: IntGaugeVec,
    /// Time queued before the batch started, by model.
    pub queue_duration: HistogramVec,
    /// Model `forward` calls by model, version and outcome (ok|error).
    pub inferences: IntCounterVec,
    /// Model execution time by model.
    pub inference_duration: HistogramVec,
    /// `forward` calls run on the request's own thread (idle model), by model.
    pub inline_inferences: IntCounterVec,
    /// Requests run by a model's native plan on their own thread, by model.
    pub native_inferences: IntCounterVec,
    /// Rows per `forward` call by model.
    pub batch_size: HistogramVec,
    /// Users not found in the online snapshot, by model.
    pub snapshot_misses: IntCounterVec,
    /// Models loaded now.
    pub loaded_models: IntGauge,
    /// Model load time by model.
    pub load_duration: HistogramVec,
    /// Failed model loads by model.
    pub load_failures: IntCounterVec,
    /// Items in the exact item index of a recommend version (0: its
    /// `forward` scores the items), by model and version.
    pub item_index_items: IntGaugeVec,
    /// Versions swapped in by the alias poller, by model.
    pub version_swaps: IntCounterVec,
    /// Shadow requests by model and outcome (ok|error|dropped).
    pub shadow_requests: IntCounterVec,
}

/// Latency bucket bounds in seconds, 25 µs to 1 s: a 1-1.5-2-3-4-5-7.5
/// ladder through the sub-millisecond to 20 ms range where serving SLOs
/// sit, so that a dashboard reads "share under 1 / 2 / 5 ms" straight from
/// a bucket (doubling buckets put bounds at 1.6 and 3.2 ms instead).
const LATENCY_BUCKETS: [f64; 26] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_15, 0.000_2, 0.000_3, 0.000_4, 0.000_5, 0.000_75, 0.001,
    0.001_5, 0.002, 0.003, 0.004, 0.005, 0.007_5, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25,
    0.5, 1.0,
];

fn latency_buckets() -> Vec<f64> {
    LATENCY_BUCKETS.to_vec()
}

impl ServerMetrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let grpc = Arc::new(GrpcMetrics::new(&registry, "encore_model_server")?);
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)?;
            registry.register(Box::new(h.clone()))?;
            Ok::<_, prometheus::Error>(h)
        };
        let requests = counter(
            "encore_model_server_requests_total",
            "Scoring requests by model, version, A/B variant, method and gRPC code",
            &["model", "version", "variant", "method", "code"],
        )?;
        let request_duration = histogram(
            "encore_model_server_request_duration_seconds",
            "Scoring request latency (queue + inference + encoding), by model and method",
            &["model", "method"],
            latency_buckets(),
        )?;
        let queue_duration = histogram(
            "encore_model_server_queue_duration_seconds",
            "Time a request waited in the batching queue, by model",
            &["model"],
            latency_buckets(),
        )?;
        let inference_duration = histogram(
            "encore_model_server_inference_duration_seconds",
            "Time spent running the model per batch, by model",
            &["model"],
            latency_buckets(),
        )?;
        let batch_size = histogram(
            "encore_model_server_batch_size",
            "Rows per model forward call, by model",
            &["model"],
            prometheus::exponential_buckets(1.0, 2.0, 14)?,
        )?;
        let load_duration = histogram(
            "encore_model_server_model_load_duration_seconds",
            "Time to load a model version, by model",
            &["model"],
            prometheus::exponential_buckets(0.01, 3.0, 8)?,
        )?;
        let inferences = counter(
            "encore_model_server_inferences_total",
            "Model forward calls by model, version and outcome (ok|error)",
            &["model", "version", "outcome"],
        )?;
        let inline_inferences = counter(
            "encore_model_server_inline_inferences_total",
            "Model forward calls run on the request's own thread because the model was idle \
             (no hand-off to a model instance), by model",
            &["model"],
        )?;
        let native_inferences = counter(
            "encore_model_server_native_inferences_total",
            "Requests run by the model compiled to native code on the request's own thread \
             (small requests of models that compile and match libtorch), by model",
            &["model"],
        )?;
        let snapshot_misses = counter(
            "encore_model_server_feature_snapshot_misses_total",
            "Users not in the model's online feature snapshot (served a fallback), by model",
            &["model"],
        )?;
        let item_index_items = IntGaugeVec::new(
            Opts::new(
                "encore_model_server_item_index_items",
                "Items scored by the server's exact item index for a recommend model version \
                 (0 when the module's forward scores them)",
            ),
            &["model", "version"],
        )?;
        registry.register(Box::new(item_index_items.clone()))?;
        let load_failures = counter(
            "encore_model_server_model_load_failures_total",
            "Model loads that failed, by model",
            &["model"],
        )?;
        let version_swaps = counter(
            "encore_model_server_version_swaps_total",
            "Versions swapped in because an alias moved, by model",
            &["model"],
        )?;
        let shadow_requests = counter(
            "encore_model_server_shadow_requests_total",
            "Copies of requests sent to the shadow version, by model and outcome (ok|error|dropped)",
            &["model", "outcome"],
        )?;
        let in_flight = IntGaugeVec::new(
            Opts::new(
                "encore_model_server_in_flight_requests",
                "Scoring requests being served now, by model",
            ),
            &["model"],
        )?;
        registry.register(Box::new(in_flight.clone()))?;
        let loaded_models = IntGauge::new(
            "encore_model_server_loaded_models",
            "Models loaded and ready",
        )?;
        registry.register(Box::new(loaded_models.clone()))?;
        Ok(Self {
            registry,
            grpc,
            requests,
            request_duration,
            in_flight,
            queue_duration,
            inferences,
            inference_duration,
            inline_inferences,
            native_inferences,
            batch_size,
            snapshot_misses,
            item_index_items,
            loaded_models,
            load_duration,
            load_failures,
            version_swaps,
            shadow_requests,
        })
    }

    /// Starts measuring one request of `method` to `model`.
    pub fn request(&self, model: &str, method: &'static str) -> RequestTimer<'_> {
        let gauge = self.in_flight.with_label_values(&[model]);
        gauge.inc();
        RequestTimer {
            metrics: self,
            model: model.to_owned(),
            method,
            started: Instant::now(),
            gauge,
        }
    }

    /// Prometheus text format: the server's metrics, then the process collector's.
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        encore_common::metrics::encode(&self.registry)
    }
}

/// One request in flight; [`RequestTimer::finish`] records it.
pub struct RequestTimer<'a> {
    metrics: &'a ServerMetrics,
    model: String,
    method: &'static str,
    started: Instant,
    gauge: prometheus::IntGauge,
}

impl RequestTimer<'_> {
    /// Records the outcome: the version and variant that served it (empty
    /// if none was chosen) and the gRPC code.
    pub fn finish(self, version: &str, variant: &str, code: tonic::Code) {
        let m = self.metrics;
        m.requests
            .with_label_values(&[
                self.model.as_str(),
                version,
                variant,
                self.method,
                code_name(code),
            ])
            .inc();
        m.request_duration
            .with_label_values(&[self.model.as_str(), self.method])
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl RequestTimer<'_> {
    /// Records a handler's result: OK, or the code its error maps to.
    pub fn finish_result<T>(
        self,
        served: &(String, String),
        result: &std::result::Result<T, crate::error::Error>,
    ) {
        let code = result
            .as_ref()
            .map_or_else(crate::error::Error::code, |_| tonic::Code::Ok);
        self.finish(&served.0, &served.1, code);
    }
}

impl Drop for RequestTimer<'_> {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// The canonical upper-case name of a gRPC code (`OK`, `INVALID_ARGUMENT`, ...).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_latency_is_counted_against_1_2_and_5_ms_bounds() {
        let metrics = ServerMetrics::new().unwrap();
        let h = metrics
            .request_duration
            .with_label_values(&["churn", "ModelInfer"]);
        for ms in [0.9, 1.1, 1.9, 2.1, 4.9, 5.1] {
            h.observe(ms / 1e3);
        }
        let text = metrics.encode().unwrap();
        let under = |le: &str| {
            let key = format!(
                "encore_model_server_request_duration_seconds_bucket{{method=\"ModelInfer\",model=\"churn\",le=\"{le}\"}} "
            );
            text.lines()
                .find_map(|l| l.strip_prefix(key.as_str()))
                .unwrap_or_else(|| panic!("no bucket le={le}:\n{text}"))
                .to_owned()
        };
        assert_eq!(under("0.001"), "1");
        assert_eq!(under("0.002"), "3");
        assert_eq!(under("0.005"), "5");
        assert!(LATENCY_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }
}
