//! Scheduler configuration: defaults, TOML file (`[scheduler]` section) and
//! validation. The binary layers flags and `ENCORE_SCHEDULER_*` environment
//! variables over this.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ballista_scheduler::config::TaskDistributionPolicy;
pub use encore_common::SchedulingPolicy;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How the scheduler spreads a stage's tasks over executors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskDistribution {
    /// Fill the executor with the most free slots first (Ballista's default; fewer, larger tasks).
    #[default]
    Bias,
    /// One task per executor in turn (spreads small queries over the cluster).
    RoundRobin,
}

impl FromStr for TaskDistribution {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "bias" => Ok(Self::Bias),
            "round-robin" => Ok(Self::RoundRobin),
            other => Err(format!(
                "unknown task distribution '{other}' (expected bias or round-robin)"
            )),
        }
    }
}

/// Everything the scheduler process needs to start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Address to listen on (gRPC and HTTP share the port).
    pub bind_host: String,
    /// Port to listen on; 0 picks a free port (the bound one is logged).
    pub bind_port: u16,
    /// Host name executors and clients use to reach this scheduler; defaults to `bind_host`.
    pub external_host: Option<String>,
    /// Push or pull task scheduling.
    pub scheduler_policy: SchedulingPolicy,
    /// How tasks are spread over executors.
    pub task_distribution: TaskDistribution,
    /// An executor without a heartbeat for this long is declared dead and its tasks rescheduled.
    pub executor_timeout_seconds: u64,
    /// How often the scheduler looks for dead executors.
    pub expire_dead_executor_interval_seconds: u64,
    /// Attempts per task before its job fails.
    pub task_max_failures: usize,
    /// Attempts per stage (re-runs after lost shuffle data) before its job fails.
    /// Encore's default, 1, fails the query with a clear error on lost shuffle
    /// data: Ballista 55's partial stage re-run can count rows twice.
    pub stage_max_failures: usize,
    /// `/readyz` answers 200 once this many executors are registered.
    pub min_ready_executors: usize,
    /// Largest gRPC message accepted or sent.
    pub grpc_max_message_bytes: u32,
    /// Folder of the job store (`jobs.sqlite`); None keeps jobs in memory,
    /// so they are lost when the scheduler stops.
    pub state_dir: Option<PathBuf>,
    /// Registry for jobs that name none.
    pub registry: Option<String>,
    /// A training attempt without a progress report for this long is
    /// declared lost and re-queued.
    pub job_lease_seconds: f64,
    /// Attempts per job when the job does not say.
    pub job_max_attempts: u32,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            bind_host: "127.0.0.1".into(),
            bind_port: 50050,
            external_host: None,
            scheduler_policy: SchedulingPolicy::default(),
            task_distribution: TaskDistribution::default(),
            executor_timeout_seconds: 180,
            expire_dead_executor_interval_seconds: 15,
            task_max_failures: 4,
            stage_max_failures: 1,
            min_ready_executors: 1,
            grpc_max_message_bytes: 16 * 1024 * 1024,
            state_dir: None,
            registry: None,
            job_lease_seconds: 30.0,
            job_max_attempts: 3,
        }
    }
}

impl SchedulerConfig {
    /// Reads the `[scheduler]` section of an Encore TOML file (defaults for missing keys).
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        Ok(encore_common::config::load_section(path, "scheduler")?)
    }

    /// Sets the port (0 for any free port).
    pub fn with_bind_port(mut self, port: u16) -> Self {
        self.bind_port = port;
        self
    }

    /// Sets the executor heartbeat timeout and how often it is checked.
    pub fn with_executor_timeout_seconds(mut self, timeout: u64, check_interval: u64) -> Self {
        self.executor_timeout_seconds = timeout;
        self.expire_dead_executor_interval_seconds = check_interval;
        self
    }

    /// The host advertised to executors and clients.
    pub fn advertised_host(&self) -> &str {
        self.external_host.as_deref().unwrap_or(&self.bind_host)
    }

    /// Checks ranges and consistency; the message names the offending key.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidConfig(msg));
        if self.bind_host.parse::<IpAddr>().is_err() && self.bind_host != "localhost" {
            return bad(format!(
                "bind_host '{}' is not an IP address or 'localhost'",
                self.bind_host
            ));
        }
        if self.executor_timeout_seconds == 0 {
            return bad("executor_timeout_seconds must be at least 1".into());
        }
        if self.expire_dead_executor_interval_seconds == 0 {
            return bad("expire_dead_executor_interval_seconds must be at least 1".into());
        }
        if self.executor_timeout_seconds <= self.expire_dead_executor_interval_seconds {
            return bad(format!(
                "executor_timeout_seconds ({}) must be greater than expire_dead_executor_interval_seconds ({})",
                self.executor_timeout_seconds, self.expire_dead_executor_interval_seconds
            ));
        }
        if self.task_max_failures == 0 || self.stage_max_failures == 0 {
            return bad("task_max_failures and stage_max_failures must be at least 1".into());
        }
        if !(self.job_lease_seconds >= 0.5 && self.job_lease_seconds <= 86_400.0) {
            return bad(format!(
                "job_lease_seconds ({}) must be between 0.5 and 86400",
                self.job_lease_seconds
            ));
        }
        if !(1..=crate::jobs::spec::MAX_ATTEMPTS).contains(&self.job_max_attempts) {
            return bad(format!(
                "job_max_attempts ({}) must be between 1 and {}",
                self.job_max_attempts,
                crate::jobs::spec::MAX_ATTEMPTS
            ));
        }
        if self.grpc_max_message_bytes < 1024 * 1024 {
            return bad(format!(
                "grpc_max_message_bytes ({}) must be at least 1 MiB",
                self.grpc_max_message_bytes
            ));
        }
        Ok(())
    }

    /// Ballista's own configuration for the port actually bound.
    pub(crate) fn to_ballista(
        &self,
        bound_port: u16,
    ) -> ballista_scheduler::config::SchedulerConfig {
        let mut c = ballista_scheduler::config::SchedulerConfig::default()
            .with_hostname(self.advertised_host())
            .with_port(bound_port)
            .with_scheduler_policy(match self.scheduler_policy {
                SchedulingPolicy::PushStaged => {
                    ballista_core::config::TaskSchedulingPolicy::PushStaged
                }
                SchedulingPolicy::PullStaged => {
                    ballista_core::config::TaskSchedulingPolicy::PullStaged
                }
            })
            .with_grpc_server_max_decoding_message_size(self.grpc_max_message_bytes)
            .with_grpc_server_max_encoding_message_size(self.grpc_max_message_bytes)
            .with_grpc_client_max_message_size(self.grpc_max_message_bytes);
        c.bind_host = self.bind_host.clone();
        c.task_distribution = match self.task_distribution {
            TaskDistribution::Bias => TaskDistributionPolicy::Bias,
            TaskDistribution::RoundRobin => TaskDistributionPolicy::RoundRobin,
        };
        c.executor_timeout_seconds = self.executor_timeout_seconds;
        c.expire_dead_executor_interval_seconds = self.expire_dead_executor_interval_seconds;
        c.task_max_failures = self.task_max_failures;
        c.stage_max_failures = self.stage_max_failures;
        c.min_ready_executors = self.min_ready_executors;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_section_overrides_defaults_and_ignores_other_sections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("encore.toml");
        std::fs::write(
            &path,
            "[scheduler]\nbind_port = 0\nscheduler_policy = \"pull-staged\"\n[executor]\nconcurrent_tasks = 3\n",
        )
        .unwrap();
        let c = SchedulerConfig::from_toml_file(&path).unwrap();
        assert_eq!(c.bind_port, 0);
        assert_eq!(c.scheduler_policy, SchedulingPolicy::PullStaged);
        assert_eq!(c.bind_host, "127.0.0.1");
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[scheduler]\nbind_prot = 1\n").unwrap();
        let err = SchedulerConfig::from_toml_file(&path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bind_prot"), "{err}");
    }

    #[test]
    fn validate_names_the_bad_key() {
        let c = SchedulerConfig::default().with_executor_timeout_seconds(5, 10);
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("executor_timeout_seconds"), "{err}");
        let c = SchedulerConfig {
            bind_host: "not a host".into(),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("bind_host"));
        assert!(SchedulerConfig::default().validate().is_ok());
    }
}
