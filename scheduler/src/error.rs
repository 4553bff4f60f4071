//! Errors of the scheduler crate.

/// Result with the scheduler's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong starting or running the scheduler.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is out of range or inconsistent.
    #[error("invalid scheduler configuration: {0}")]
    InvalidConfig(String),
    /// The TOML configuration file is unreadable or malformed.
    #[error(transparent)]
    ConfigFile(#[from] encore_common::config::ConfigFileError),
    /// The listen address could not be bound.
    #[error(transparent)]
    Bind(#[from] encore_common::process::BindError),
    /// Ballista refused to start.
    #[error("ballista scheduler: {0}")]
    Ballista(#[from] Box<ballista_core::error::BallistaError>),
    /// The job store could not be opened.
    #[error(transparent)]
    JobStore(#[from] crate::jobs::StoreError),
    /// Registering or encoding metrics failed.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The server stopped with an I/O error.
    #[error("scheduler server: {0}")]
    Serve(std::io::Error),
}

impl From<ballista_core::error::BallistaError> for Error {
    fn from(e: ballista_core::error::BallistaError) -> Self {
        Error::Ballista(Box::new(e))
    }
}
