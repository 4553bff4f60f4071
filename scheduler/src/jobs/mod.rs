//! Training jobs on the scheduler: the `encore.v1.Jobs` service users call,
//! the internal `encore.v1.JobWorker` service executors call, and the SQLite
//! store that keeps jobs across restarts.
//!
//! A job moves QUEUED → RUNNING → SUCCEEDED | FAILED | CANCELLED. A running
//! attempt holds a lease that every progress report renews; when it runs
//! out (the executor died), the job goes back to QUEUED while attempts
//! remain, and the next attempt resumes from the job's checkpoint folder.

pub mod service;
pub mod spec;
pub mod store;

pub use service::{JobService, JobSettings};
pub use store::{JobStore, StoreError};
