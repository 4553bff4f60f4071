//! Encore's executor: the Apache Ballista executor, embedded through
//! `ExecutorProcessConfig`, plus an HTTP port with `/metrics` (task counts and
//! durations as `encore_executor_*`), `/healthz` and `/readyz`.
//!
//! [`training`] holds the pipelines a training job runs (features through
//! the cluster, tch training, evaluation, export, registration); [`worker`]
//! takes jobs from the scheduler's job service and runs them.
//! This crate knows nothing of the scheduler's internals or of serving.
//!
//! Start it with [`start_executor`]; the returned [`ExecutorHandle`] carries
//! the bound addresses.

pub mod checkpoints;
pub mod config;
mod engine;
pub mod error;
mod http;
pub mod metrics;
mod server;
pub mod training;
mod work_dir;
pub mod worker;

pub use config::{ExecutorConfig, SchedulingPolicy};
pub use error::{Error, Result};
pub use server::{ExecutorHandle, start_executor};
