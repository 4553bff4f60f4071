//! The data layer end to end on real files: importers, ingest, cleaning,
//! the simulator's properties, and the point-in-time feature and label plans.

mod clean;
mod generator;
mod import;
mod ingest;
mod plans;
