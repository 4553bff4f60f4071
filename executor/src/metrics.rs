//! The executor's Prometheus metrics (`encore_executor_*`).

use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::error::Result;

/// Task counters and gauges the executor exposes on `/metrics`.
pub struct ExecutorMetrics {
    registry: Registry,
    tasks: IntCounterVec,
    tasks_running: IntGauge,
    task_duration: Histogram,
    /// Task slots this executor offers.
    pub task_slots: IntGauge,
}

/// Decrements the running-task gauge when dropped (also on panic or cancel).
pub(crate) struct RunningTask(IntGauge);

impl Drop for RunningTask {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl ExecutorMetrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self> {
        let registry = Registry::new();
        let info = IntGaugeVec::new(
            Opts::new("encore_executor_info", "Build information; always 1"),
            &["version", "ballista_version"],
        )?;
        info.with_label_values(&[env!("CARGO_PKG_VERSION"), ballista_core::BALLISTA_VERSION])
            .set(1);
        let tasks = IntCounterVec::new(
            Opts::new(
                "encore_executor_tasks_total",
                "Query stage tasks finished by this executor, by outcome (succeeded|failed)",
            ),
            &["outcome"],
        )?;
        let tasks_running = IntGauge::new(
            "encore_executor_tasks_running",
            "Query stage tasks running now",
        )?;
        let task_duration = Histogram::with_opts(
            HistogramOpts::new(
                "encore_executor_task_duration_seconds",
                "Wall time of query stage tasks",
            )
            .buckets(prometheus::exponential_buckets(0.001, 4.0, 10)?),
        )?;
        let task_slots = IntGauge::new(
            "encore_executor_task_slots",
            "Task slots (concurrent tasks) this executor offers",
        )?;
        registry.register(Box::new(info))?;
        registry.register(Box::new(tasks.clone()))?;
        registry.register(Box::new(tasks_running.clone()))?;
        registry.register(Box::new(task_duration.clone()))?;
        registry.register(Box::new(task_slots.clone()))?;
        // Both outcomes exist from the start, so rates work before the first failure.
        tasks.with_label_values(&["succeeded"]);
        tasks.with_label_values(&["failed"]);
        Ok(Self {
            registry,
            tasks,
            tasks_running,
            task_duration,
            task_slots,
        })
    }

    pub(crate) fn task_started(&self) -> RunningTask {
        self.tasks_running.inc();
        RunningTask(self.tasks_running.clone())
    }

    pub(crate) fn task_finished(&self, ok: bool, elapsed: Duration) {
        let outcome = if ok { "succeeded" } else { "failed" };
        self.tasks.with_label_values(&[outcome]).inc();
        self.task_duration.observe(elapsed.as_secs_f64());
    }

    /// Prometheus text format: Encore's metrics, then the process collector's.
    pub fn encode(&self) -> std::result::Result<String, prometheus::Error> {
        encore_common::metrics::encode(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_encore_executor_names() {
        let m = ExecutorMetrics::new().unwrap();
        m.task_slots.set(2);
        {
            let _t = m.task_started();
            m.task_finished(true, Duration::from_millis(5));
        }
        m.task_finished(false, Duration::from_millis(1));
        let text = m.encode().unwrap();
        for name in [
            "encore_executor_info",
            "encore_executor_tasks_total{outcome=\"succeeded\"} 1",
            "encore_executor_tasks_total{outcome=\"failed\"} 1",
            "encore_executor_tasks_running 0",
            "encore_executor_task_duration_seconds_count 2",
            "encore_executor_task_slots 2",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
