//! Encore's scheduler: the Apache Ballista scheduler, embedded through its
//! library API, on one port that serves
//!
//! - Ballista's `SchedulerGrpc` (clients and executors connect here),
//! - Ballista's REST API under `/api` (jobs, stages, executors),
//! - Encore's `encore.v1.Jobs` (training jobs for users) and
//!   `encore.v1.JobWorker` (for executors), backed by a SQLite job store
//!   ([`jobs`]),
//! - Encore's HTTP `/metrics` (Prometheus text), `/healthz` and `/readyz`.
//!
//! This crate knows nothing of executors' internals, models or serving.
//!
//! Start it with [`start_scheduler`]; the returned [`SchedulerHandle`] carries
//! the bound address and shuts the server down gracefully.

pub mod config;
pub mod error;
mod guard;
mod http;
pub mod jobs;
pub mod metrics;
mod server;

pub use config::{SchedulerConfig, SchedulingPolicy, TaskDistribution};
pub use error::{Error, Result};
pub use server::{SchedulerHandle, start_scheduler};
