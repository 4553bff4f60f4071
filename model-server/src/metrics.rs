//! The model server's Prometheus metrics (`encore_model_server_*`).

use std::sync::Arc;

use encore_common::metrics::GrpcMetrics;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

/// Everything `/metrics` reports about serving.
pub struct ServerMetrics {
    registry: Registry,
    /// gRPC calls by method and code (recorded by the layer on the gRPC routes).
    pub grpc: Arc<GrpcMetrics>,
    /// Inferences by model, version and outcome (ok|error).
    pub inferences: IntCounterVec,
    /// Model execution time by model.
    pub inference_duration: HistogramVec,
    /// Rows per inference call by model.
    pub batch_size: HistogramVec,
    /// Models loaded now.
    pub loaded_models: IntGauge,
    /// Model load time by model.
    pub load_duration: HistogramVec,
    /// Failed model loads by model.
    pub load_failures: IntCounterVec,
}

impl ServerMetrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let grpc = Arc::new(GrpcMetrics::new(&registry, "encore_model_server")?);
        let inferences = IntCounterVec::new(
            Opts::new(
                "encore_model_server_inferences_total",
                "Inference calls by model, version and outcome (ok|error)",
            ),
            &["model", "version", "outcome"],
        )?;
        let inference_duration = HistogramVec::new(
            HistogramOpts::new(
                "encore_model_server_inference_duration_seconds",
                "Time spent running the model, by model",
            )
            .buckets(prometheus::exponential_buckets(0.00005, 2.5, 12)?),
            &["model"],
        )?;
        let batch_size = HistogramVec::new(
            HistogramOpts::new(
                "encore_model_server_batch_size",
                "Rows per inference call, by model",
            )
            .buckets(prometheus::exponential_buckets(1.0, 2.0, 14)?),
            &["model"],
        )?;
        let loaded_models = IntGauge::new(
            "encore_model_server_loaded_models",
            "Models loaded and ready",
        )?;
        let load_duration = HistogramVec::new(
            HistogramOpts::new(
                "encore_model_server_model_load_duration_seconds",
                "Time to load a model version, by model",
            )
            .buckets(prometheus::exponential_buckets(0.01, 3.0, 8)?),
            &["model"],
        )?;
        let load_failures = IntCounterVec::new(
            Opts::new(
                "encore_model_server_model_load_failures_total",
                "Model loads that failed, by model",
            ),
            &["model"],
        )?;
        registry.register(Box::new(inferences.clone()))?;
        registry.register(Box::new(inference_duration.clone()))?;
        registry.register(Box::new(batch_size.clone()))?;
        registry.register(Box::new(loaded_models.clone()))?;
        registry.register(Box::new(load_duration.clone()))?;
        registry.register(Box::new(load_failures.clone()))?;
        Ok(Self {
            registry,
            grpc,
            inferences,
            inference_duration,
            batch_size,
            loaded_models,
            load_duration,
            load_failures,
        })
    }

    /// Prometheus text format: the server's metrics, then the process collector's.
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        encore_common::metrics::encode(&self.registry)
    }
}
