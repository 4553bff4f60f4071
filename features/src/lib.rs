//! Encore's data layer: the canonical tables of DESIGN.md as Arrow schemas
//! (`schema`) and their validator (`validate`), importers for public datasets
//! (`import`), a deterministic data generator, and registration of Parquet / CSV /
//! NDJSON files or folders as DataFusion tables (locally or on a Ballista
//! cluster). Feature, label and segment plans land here too.
//!
//! This crate knows nothing of training, serving or the cluster processes:
//! it only needs a DataFusion `SessionContext`, wherever that executes.

pub mod clean;
pub mod datagen;
pub mod derive;
pub mod error;
pub mod import;
pub mod ingest;
pub mod plans;
pub mod schema;
pub mod tables;
pub mod validate;

pub use error::{Error, Result};
