//! One module per `encore` subcommand.

pub mod datagen;
pub mod demo;
pub mod import;
pub mod sql;
pub mod standalone;
