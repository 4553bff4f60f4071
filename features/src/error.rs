//! Errors of the features crate.

use std::path::PathBuf;

/// Result with the features crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong registering, generating or reading tables.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `--table` argument is not `NAME=PATH`.
    #[error("invalid table '{0}': expected NAME=PATH")]
    InvalidTableArg(String),
    /// A table name is not a plain SQL identifier.
    #[error("invalid table name '{0}': use letters, digits and '_', starting with a letter or '_'")]
    InvalidTableName(String),
    /// The file or folder does not exist.
    #[error("table '{table}': {} does not exist", path.display())]
    MissingPath {
        /// Table name.
        table: String,
        /// The path given.
        path: PathBuf,
    },
    /// A folder holds no file of a known format.
    #[error("table '{table}': no .parquet, .csv, .json or .ndjson files under {}", path.display())]
    NoDataFiles {
        /// Table name.
        table: String,
        /// The folder.
        path: PathBuf,
    },
    /// A file's extension is not a known format.
    #[error("table '{table}': cannot tell the format of {} (expected .parquet, .csv, .json, .ndjson or .jsonl)", path.display())]
    UnknownFormat {
        /// Table name.
        table: String,
        /// The file.
        path: PathBuf,
    },
    /// A setting (generator parameter, id key, table name) is invalid.
    #[error("invalid setting: {0}")]
    InvalidSpec(String),
    /// Input data is malformed; the message names file, line and column.
    #[error("{0}")]
    BadInput(String),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Building Arrow data failed.
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    /// Writing Parquet failed.
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
    /// DataFusion refused a table or a query.
    #[error(transparent)]
    DataFusion(#[from] Box<datafusion::error::DataFusionError>),
}

impl From<datafusion::error::DataFusionError> for Error {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        Error::DataFusion(Box::new(e))
    }
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
