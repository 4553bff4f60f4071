//! Errors of the model server, and their one mapping to gRPC status codes.

use std::path::PathBuf;

/// Result with the model server's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong loading models or serving a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such model (or version) in the registry or among the loaded ones.
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed; the message names the tensor or field.
    #[error("{0}")]
    InvalidArgument(String),
    /// A registry file is missing or malformed.
    #[error("{}: {reason}", path.display())]
    Registry {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// libtorch failed to load or run a model.
    #[error("model {model}: {source}")]
    Torch {
        /// `name:version`.
        model: String,
        /// Why.
        source: tch::TchError,
    },
    /// The model's request queue is full.
    #[error("{0}")]
    Overloaded(String),
    /// The request's deadline passed before it was served.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// No version of the model can serve now (e.g. it is being unloaded or the server stops).
    #[error("{0}")]
    Unavailable(String),
    /// A parquet file of the online snapshot could not be read.
    #[error("{}: {reason}", path.display())]
    Snapshot {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The listen address could not be bound.
    #[error(transparent)]
    Bind(#[from] encore_common::process::BindError),
    /// An inference worker stopped unexpectedly.
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    /// The gRPC status code this error is answered with.
    pub fn code(&self) -> tonic::Code {
        match self {
            Error::NotFound(_) => tonic::Code::NotFound,
            Error::InvalidArgument(_) => tonic::Code::InvalidArgument,
            Error::Registry { .. } | Error::Snapshot { .. } => tonic::Code::FailedPrecondition,
            Error::Overloaded(_) => tonic::Code::ResourceExhausted,
            Error::DeadlineExceeded(_) => tonic::Code::DeadlineExceeded,
            Error::Unavailable(_) | Error::Bind(_) => tonic::Code::Unavailable,
            Error::Torch { .. } | Error::Internal(_) => tonic::Code::Internal,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        tonic::Status::new(e.code(), e.to_string())
    }
}
