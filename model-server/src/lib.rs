//! Encore's model server: TorchScript models from the model registry
//! (DESIGN.md layout: `<registry>/<model>/<version>/{manifest.json,model.pt}`,
//! `<registry>/<model>/aliases.json`) served over KServe v2 / Open Inference
//! Protocol gRPC, so Triton clients work unchanged.
//!
//! It needs no Rust model code: any TorchScript module with an Encore
//! manifest is served, whether exported by Encore's trainer or by Python.
//! gRPC and HTTP (`/metrics`, `/healthz`, `/readyz`) share one port.
//! Dynamic batching, the typed `encore.v1.Scoring` API, Arrow Flight, A/B
//! splits and hot reload build on this crate.

pub mod error;
pub mod kserve;
pub mod metrics;
pub mod registry;
mod server;
pub mod tensor;

pub use error::{Error, Result};
pub use server::{ModelServerConfig, ModelServerHandle, start_model_server};
