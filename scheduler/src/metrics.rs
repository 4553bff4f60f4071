//! The scheduler's Prometheus metrics (`encore_scheduler_*`).
//!
//! Encore's metrics live in a registry this process owns. Ballista registers
//! its job metrics (`job_exec_time_seconds`, `planning_time_ms`, `failed`,
//! `cancelled`, `completed`, `job_submitted_total`, `pending_task_queue_size`)
//! and the process collector in Prometheus' default registry; `/metrics`
//! serves both.

use std::sync::Arc;
use std::time::Instant;

use encore_common::metrics::GrpcMetrics;

use prometheus::{IntGauge, IntGaugeVec, Opts, Registry};

use crate::error::Result;

/// Gauges and counters the scheduler exposes on `/metrics`.
pub struct SchedulerMetrics {
    registry: Registry,
    started: Instant,
    /// Executors registered with the scheduler.
    pub executors: IntGauge,
    /// Ballista jobs queued but not yet running.
    pub jobs_pending: IntGauge,
    /// Ballista jobs running.
    pub jobs_running: IntGauge,
    /// Queries cancelled because an executor was lost while they ran.
    pub queries_cancelled_executor_lost: prometheus::IntCounter,
    /// Training jobs entering each state.
    pub jobs_total: prometheus::IntCounterVec,
    /// Training jobs in each state now (refreshed on scrape).
    pub jobs: IntGaugeVec,
    uptime: prometheus::Gauge,
    /// gRPC calls by method and code (recorded by the layer on the gRPC routes).
    pub grpc: Arc<GrpcMetrics>,
}

impl SchedulerMetrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self> {
        let registry = Registry::new();
        let info = IntGaugeVec::new(
            Opts::new("encore_scheduler_info", "Build information; always 1"),
            &["version", "ballista_version"],
        )?;
        info.with_label_values(&[env!("CARGO_PKG_VERSION"), ballista_core::BALLISTA_VERSION])
            .set(1);
        let executors = IntGauge::new(
            "encore_scheduler_executors",
            "Executors registered with the scheduler",
        )?;
        let jobs_pending = IntGauge::new(
            "encore_scheduler_queries_pending",
            "Ballista queries (SQL jobs) queued and not yet running",
        )?;
        let jobs_running = IntGauge::new(
            "encore_scheduler_queries_running",
            "Ballista queries (SQL jobs) running",
        )?;
        let queries_cancelled_executor_lost = prometheus::IntCounter::new(
            "encore_scheduler_queries_cancelled_executor_lost_total",
            "Queries cancelled because an executor was lost while they ran",
        )?;
        let jobs_total = prometheus::IntCounterVec::new(
            Opts::new(
                "encore_scheduler_jobs_total",
                "Training jobs entering each state (queued counts submissions and retries)",
            ),
            &["state"],
        )?;
        let jobs = IntGaugeVec::new(
            Opts::new("encore_scheduler_jobs", "Training jobs in each state"),
            &["state"],
        )?;
        let uptime = prometheus::Gauge::new(
            "encore_scheduler_uptime_seconds",
            "Seconds since the scheduler started",
        )?;
        registry.register(Box::new(info))?;
        registry.register(Box::new(executors.clone()))?;
        registry.register(Box::new(jobs_pending.clone()))?;
        registry.register(Box::new(jobs_running.clone()))?;
        registry.register(Box::new(queries_cancelled_executor_lost.clone()))?;
        registry.register(Box::new(jobs_total.clone()))?;
        registry.register(Box::new(jobs.clone()))?;
        registry.register(Box::new(uptime.clone()))?;
        let grpc = Arc::new(GrpcMetrics::new(&registry, "encore_scheduler")?);
        Ok(Self {
            registry,
            started: Instant::now(),
            executors,
            jobs_pending,
            jobs_running,
            queries_cancelled_executor_lost,
            jobs_total,
            jobs,
            uptime,
            grpc,
        })
    }

    /// Prometheus text format: Encore's metrics, then Ballista's and the process'.
    pub fn encode(&self) -> std::result::Result<String, prometheus::Error> {
        self.uptime.set(self.started.elapsed().as_secs_f64());
        encore_common::metrics::encode(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn exposes_encore_scheduler_names() {
        let m = SchedulerMetrics::new().unwrap();
        m.executors.set(2);
        m.grpc.observe("PollWork", "0", Duration::from_millis(3));
        let text = m.encode().unwrap();
        for name in [
            "encore_scheduler_info",
            "encore_scheduler_executors 2",
            "encore_scheduler_queries_pending",
            "encore_scheduler_queries_running",
            "encore_scheduler_uptime_seconds",
            "encore_scheduler_queries_cancelled_executor_lost_total 0",
            "encore_scheduler_grpc_requests_total{code=\"0\",method=\"PollWork\"} 1",
            "encore_scheduler_grpc_request_duration_seconds_bucket",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
