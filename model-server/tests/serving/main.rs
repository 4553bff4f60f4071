//! The model server over its real wire protocols, with TorchScript models
//! exported from Python (the project's torch wheel) into a registry folder:
//! KServe v2 (our client and the real tritonclient), the typed
//! encore.v1.Scoring API, dynamic batching, hot reload and A/B splits.

mod batching;
mod fixtures;
mod flight;
mod kserve;
mod reload;
mod scoring;
mod triton;
