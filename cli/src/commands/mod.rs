//! One module per `encore` subcommand.

pub mod datagen;
pub mod demo;
pub mod sql;
pub mod standalone;
