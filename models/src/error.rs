//! Errors of the models crate.

/// Result with the models crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong turning data into tensors or training.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A requested column is not in the batch.
    #[error("column '{0}' not found")]
    MissingColumn(String),
    /// A column's type cannot become a float feature.
    #[error("column '{column}' has type {data_type}, expected a number or boolean")]
    UnsupportedType {
        /// Column name.
        column: String,
        /// Its Arrow type.
        data_type: String,
    },
    /// A feature value is null (features must be imputed before training).
    #[error("column '{column}' is null at row {row}")]
    Null {
        /// Column name.
        column: String,
        /// Row within the batch.
        row: usize,
    },
    /// A training setting is out of range or unknown.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// There is nothing to train or evaluate on.
    #[error("empty data: {0}")]
    EmptyData(String),
    /// The loss became NaN or infinite.
    #[error(
        "training diverged: the loss is NaN or infinite at epoch {epoch}, step {step} (lower lr?)"
    )]
    Diverged {
        /// 1-based epoch.
        epoch: u32,
        /// Optimiser steps so far.
        step: u64,
    },
    /// The caller asked training to stop.
    #[error("cancelled")]
    Cancelled,
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// TorchScript source did not compile or the module could not be saved.
    #[error("TorchScript: {0}")]
    Script(String),
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}
