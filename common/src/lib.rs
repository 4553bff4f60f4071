//! Plumbing shared by Encore's server processes (scheduler, executor, model
//! server) and the `encore` binary, so each concept has one home:
//!
//! - [`config`]: reading one section of an Encore TOML file;
//! - [`fs`]: atomic file writes (temporary file, then rename);
//! - [`SchedulingPolicy`]: push or pull task scheduling, which scheduler and
//!   executors must agree on;
//! - [`metrics`]: Prometheus text for `/metrics`;
//! - [`names`]: the rule for user-chosen model names;
//! - [`process`]: logging set-up and the shutdown signal for binaries.
//!
//! Nothing here knows about jobs, features, models or wire protocols.

pub mod config;
pub mod fs;
pub mod metrics;
pub mod names;
pub mod process;

use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How tasks reach executors; the scheduler and its executors must agree.
///
/// Encore defaults to pull: with Ballista 55's push scheduling, a query that
/// loses an executor can hang forever (the survivors' task slots are not
/// given back when the lost stage is rolled back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SchedulingPolicy {
    /// The scheduler pushes tasks to executors' gRPC port (Ballista's default, lower latency).
    PushStaged,
    /// Executors poll the scheduler for work (Spark-like).
    #[default]
    PullStaged,
}

impl FromStr for SchedulingPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "push-staged" => Ok(Self::PushStaged),
            "pull-staged" => Ok(Self::PullStaged),
            other => Err(format!(
                "unknown scheduling policy '{other}' (expected pull-staged or push-staged)"
            )),
        }
    }
}
