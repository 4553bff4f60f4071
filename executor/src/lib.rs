//! Encore's executor: the Apache Ballista executor, embedded through
//! `ExecutorProcessConfig`, plus an HTTP port with `/metrics` (task counts and
//! durations as `encore_executor_*`), `/healthz` and `/readyz`.
//!
//! Later issues add the training worker that runs Encore jobs here.
//! This crate knows nothing of the scheduler's internals or of serving.
//!
//! Start it with [`start_executor`]; the returned [`ExecutorHandle`] carries
//! the bound addresses.

pub mod config;
mod engine;
pub mod error;
mod http;
pub mod metrics;
mod server;

pub use config::{ExecutorConfig, SchedulingPolicy};
pub use error::{Error, Result};
pub use server::{ExecutorHandle, start_executor};
