//! One module per `encore` subcommand.

pub mod clean;
pub mod datagen;
pub mod demo;
pub mod eval;
pub mod features;
pub mod import;
pub mod ingest;
pub mod jobs;
pub mod models;
pub mod segments;
pub mod sql;
pub mod standalone;
pub mod train;
