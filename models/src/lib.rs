//! Encore's models: moving Arrow record batches into tch (libtorch) tensors,
//! and (in later work) the churn and recommendation networks, their
//! training loops, metrics and TorchScript export.
//!
//! This crate knows Arrow and tch only: no DataFusion, no cluster, no gRPC.

pub mod error;
pub mod tensor;

pub use error::{Error, Result};

/// The device training and inference use: CUDA when libtorch sees a GPU, else CPU.
pub fn default_device() -> tch::Device {
    tch::Device::cuda_if_available()
}
