//! Errors of the executor crate.

use std::path::PathBuf;

/// Result with the executor's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong starting or running the executor.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is out of range or inconsistent.
    #[error("invalid executor configuration: {0}")]
    InvalidConfig(String),
    /// The TOML configuration file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML configuration file is malformed.
    #[error("cannot parse config file {path}: {source}")]
    ParseConfig {
        /// The file.
        path: PathBuf,
        /// Why (boxed: toml errors are large).
        source: Box<toml::de::Error>,
    },
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// `host:port` that was asked for.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// Ballista stopped with an error (e.g. the scheduler is unreachable).
    #[error("ballista executor: {0}")]
    Ballista(#[from] Box<ballista_core::error::BallistaError>),
    /// Registering or encoding metrics failed.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A server task stopped unexpectedly.
    #[error("executor server: {0}")]
    Serve(std::io::Error),
}

impl From<ballista_core::error::BallistaError> for Error {
    fn from(e: ballista_core::error::BallistaError) -> Self {
        Error::Ballista(Box::new(e))
    }
}
