//! Errors of the executor crate.

/// Result with the executor's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong starting or running the executor.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is out of range or inconsistent.
    #[error("invalid executor configuration: {0}")]
    InvalidConfig(String),
    /// The TOML configuration file is unreadable or malformed.
    #[error(transparent)]
    ConfigFile(#[from] encore_common::config::ConfigFileError),
    /// A listen address could not be bound.
    #[error(transparent)]
    Bind(#[from] encore_common::process::BindError),
    /// The scheduler did not accept a connection in time.
    #[error("cannot reach the scheduler at {addr} within {seconds}s")]
    SchedulerUnreachable {
        /// `host:port` of the scheduler.
        addr: String,
        /// How long we tried.
        seconds: u16,
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
