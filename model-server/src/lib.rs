//! Encore's model server: TorchScript models from the model registry
//! (DESIGN.md layout: `<registry>/<model>/<version>/{manifest.json,model.pt}`,
//! `<registry>/<model>/aliases.json`) served over KServe v2 / Open Inference
//! Protocol gRPC, so Triton clients work unchanged.
//!
//! It needs no Rust model code: any TorchScript module with an Encore
//! manifest is served, whether exported by Encore's trainer or by Python.
//! gRPC and HTTP (`/metrics`, `/healthz`, `/readyz`) share one port.
//!
//! A request flows: front end (`kserve`, `scoring`, `flight`) → `store` (deployment,
//! A/B route, shadow) → `model` (contract: snapshot lookup, fallbacks) →
//! `batcher` (dynamic batching on model instances) → TorchScript, with
//! `retrieval` scoring a recommend module's items in its place, and `native`
//! running small requests of a small model (churn) compiled to Rust kernels.

pub mod auth;
pub mod batcher;
pub mod contract;
pub mod error;
pub mod flight;
pub mod kserve;
pub mod metrics;
pub mod model;
pub mod native;
pub mod registry;
pub mod request;
pub mod retrieval;
pub mod scoring;
mod server;
pub mod snapshot;
pub mod store;
pub mod tensor;
pub mod tls;

pub use auth::BearerToken;
pub use batcher::BatchConfig;
pub use error::{Error, Result};
pub use server::{ModelServerConfig, ModelServerHandle, parse_device, start_model_server};
pub use store::Split;
pub use tls::TlsFiles;
