//! Executor configuration: defaults, TOML file (`[executor]` section) and
//! validation. The binary layers flags and `ENCORE_EXECUTOR_*` environment
//! variables over this.

use std::path::{Path, PathBuf};

pub use encore_common::SchedulingPolicy;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Everything the executor process needs to start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutorConfig {
    /// Address to listen on.
    pub bind_host: String,
    /// Host name the scheduler and other executors use to reach this one; defaults to `bind_host`.
    pub external_host: Option<String>,
    /// Arrow Flight port serving shuffle and result partitions; 0 picks a free port.
    pub bind_port: u16,
    /// gRPC port the scheduler pushes tasks to (push-staged only); 0 picks a free port.
    pub bind_grpc_port: u16,
    /// HTTP port for `/metrics`, `/healthz`, `/readyz`; 0 picks a free port.
    pub bind_health_port: u16,
    /// Scheduler host.
    pub scheduler_host: String,
    /// Scheduler port.
    pub scheduler_port: u16,
    /// Keep retrying to reach the scheduler for this long at start-up (0: one attempt).
    pub scheduler_connect_timeout_seconds: u16,
    /// Task slots; 0 uses every core.
    pub concurrent_tasks: usize,
    /// Memory pool shared by the task slots, in bytes; spilling starts when it is full.
    /// `None` sizes it to 70% of the machine's (or cgroup's) memory, 0 means unbounded.
    pub memory_pool_size_bytes: Option<u64>,
    /// Directory for shuffle files and spills; a temporary one by default.
    pub work_dir: Option<PathBuf>,
    /// Push or pull task scheduling.
    pub task_scheduling_policy: SchedulingPolicy,
    /// Seconds between heartbeats to the scheduler.
    pub executor_heartbeat_interval_seconds: u64,
    /// Largest gRPC message accepted or sent.
    pub grpc_max_message_bytes: u32,
    /// Take training jobs from the scheduler's job service.
    pub training: bool,
    /// libtorch threads for training; 0 lets libtorch choose (every core).
    pub training_threads: usize,
    /// Train on the CPU even when CUDA is available.
    pub training_cpu_only: bool,
    /// How often an idle worker asks for a job, in milliseconds.
    pub job_poll_interval_ms: u64,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            bind_host: "127.0.0.1".into(),
            external_host: None,
            bind_port: 50051,
            bind_grpc_port: 50052,
            bind_health_port: 50053,
            scheduler_host: "127.0.0.1".into(),
            scheduler_port: 50050,
            scheduler_connect_timeout_seconds: 10,
            concurrent_tasks: 0,
            memory_pool_size_bytes: None,
            work_dir: None,
            task_scheduling_policy: SchedulingPolicy::default(),
            executor_heartbeat_interval_seconds: 15,
            grpc_max_message_bytes: 16 * 1024 * 1024,
            training: true,
            training_threads: 0,
            training_cpu_only: false,
            job_poll_interval_ms: 1000,
        }
    }
}

impl ExecutorConfig {
    /// Reads the `[executor]` section of an Encore TOML file (defaults for missing keys).
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        Ok(encore_common::config::load_section(path, "executor")?)
    }

    /// Points the executor at a scheduler.
    pub fn with_scheduler(mut self, host: impl Into<String>, port: u16) -> Self {
        self.scheduler_host = host.into();
        self.scheduler_port = port;
        self
    }

    /// Binds every port to a free one (tests, `encore standalone`).
    pub fn with_free_ports(mut self) -> Self {
        self.bind_port = 0;
        self.bind_grpc_port = 0;
        self.bind_health_port = 0;
        self
    }

    /// Sets the number of task slots.
    pub fn with_concurrent_tasks(mut self, slots: usize) -> Self {
        self.concurrent_tasks = slots;
        self
    }

    /// Task slots after resolving 0 to the number of cores.
    pub fn task_slots(&self) -> usize {
        if self.concurrent_tasks == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.concurrent_tasks
        }
    }

    /// The host advertised to the scheduler.
    pub fn advertised_host(&self) -> &str {
        self.external_host.as_deref().unwrap_or(&self.bind_host)
    }

    /// Checks ranges and consistency; the message names the offending key.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidConfig(msg));
        if self.scheduler_host.trim().is_empty() {
            return bad("scheduler_host must not be empty".into());
        }
        if self.scheduler_port == 0 {
            return bad("scheduler_port must not be 0".into());
        }
        if self.executor_heartbeat_interval_seconds == 0 {
            return bad("executor_heartbeat_interval_seconds must be at least 1".into());
        }
        if let Some(bytes) = self.memory_pool_size_bytes {
            let slots = self.task_slots() as u64;
            if bytes != 0 && bytes < slots * 1024 * 1024 {
                return bad(format!(
                    "memory_pool_size_bytes ({bytes}) must be at least 1 MiB per task slot ({slots} slots), or 0 for unbounded"
                ));
            }
        }
        if self.grpc_max_message_bytes < 1024 * 1024 {
            return bad(format!(
                "grpc_max_message_bytes ({}) must be at least 1 MiB",
                self.grpc_max_message_bytes
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_section_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("encore.toml");
        std::fs::write(
            &path,
            "[scheduler]\nbind_port = 1\n[executor]\nconcurrent_tasks = 3\nmemory_pool_size_bytes = 1073741824\n",
        )
        .unwrap();
        let c = ExecutorConfig::from_toml_file(&path).unwrap();
        assert_eq!(c.concurrent_tasks, 3);
        assert_eq!(c.memory_pool_size_bytes, Some(1 << 30));
        assert_eq!(c.scheduler_port, 50050);
    }

    #[test]
    fn validate_names_the_bad_key() {
        let c = ExecutorConfig {
            memory_pool_size_bytes: Some(10),
            concurrent_tasks: 2,
            ..Default::default()
        };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("memory_pool_size_bytes"), "{err}");
        let c = ExecutorConfig::default().with_scheduler("", 1);
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("scheduler_host")
        );
        assert!(ExecutorConfig::default().validate().is_ok());
    }
}
