//! Encore's models: moving Arrow record batches into tch (libtorch) tensors,
//! the churn network and its training loop, evaluation metrics, TorchScript
//! export, and the model registry they are published to.
//!
//! This crate knows Arrow and tch only: no DataFusion, no cluster, no gRPC.

pub mod baseline;
pub mod checkpoint;
pub mod churn;
#[allow(unsafe_code)] // the FFI call into cpp/dropout.cpp
pub mod dropout;
pub mod error;
#[allow(unsafe_code)] // the FFI calls into cpp/frozen_graph.cpp
pub mod graph;
pub mod metrics;
#[allow(unsafe_code)] // the FFI calls into cpp/fused_adamw.cpp
pub mod optim;
pub mod recommend;
pub mod registry;
#[allow(unsafe_code)] // the one FFI call into cpp/script_module.cpp
pub mod script;
mod shim;
pub mod tensor;

pub use error::{Error, Result};

/// The device training and inference use: CUDA when libtorch sees a GPU, else CPU.
pub fn default_device() -> tch::Device {
    tch::Device::cuda_if_available()
}

/// libtorch's random generator is global to the process: tests that seed it
/// (every training test) take turns, so runs compared within a test see
/// only their own draws.
#[cfg(test)]
pub(crate) fn serial_rng() -> std::sync::MutexGuard<'static, ()> {
    static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    RNG.lock().unwrap_or_else(|p| p.into_inner())
}
