//! The model registry (manifests, versions, aliases) lives in
//! `encore_models::registry`, shared with the training side that writes it;
//! the server reads it through these re-exports.

pub use encore_models::registry::*;

impl From<RegistryError> for crate::error::Error {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NotFound(m) => Self::NotFound(m),
            RegistryError::Invalid { path, reason } => Self::Registry { path, reason },
        }
    }
}
