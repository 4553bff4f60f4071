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
    /// The listen address could not be bound.
    #[error(transparent)]
    Bind(#[from] encore_common::process::BindError),
    /// An inference worker stopped unexpectedly.
    #[error("internal: {0}")]
    Internal(String),
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        match e {
            Error::NotFound(_) => tonic::Status::not_found(message),
            Error::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            Error::Registry { .. } => tonic::Status::failed_precondition(message),
            Error::Torch { .. } | Error::Internal(_) => tonic::Status::internal(message),
            Error::Bind(_) => tonic::Status::unavailable(message),
        }
    }
}
