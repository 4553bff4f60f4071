//! Serving contracts: how a manifest's TorchScript signature is presented to
//! clients (DESIGN.md, "Wire APIs").
//!
//! - `churn`: the module takes `features` FP32 `[N, F]` and returns one FP32 `[N]`
//!   per horizon (`churn_7d`, `churn_15d`, `churn_30d`, ...), as a tuple or
//!   as one `[N, H]` tensor whose columns are the horizons in manifest order
//!   (what a traced module, such as Encore's trainer exports, returns; any
//!   model with several outputs may do this). Clients send
//!   either `user_id` INT64 `[N]` (features looked up in the online snapshot) or
//!   `features`; they get the horizons plus `risk_tier` BYTES `[N]` (of the
//!   longest horizon) and `fallback` BOOL `[N]` (user not in the snapshot:
//!   population prior).
//! - `recommend`: the module takes `user_features` FP32 `[N, F]`, `hour` INT64
//!   `[N]` (-1 unknown), `device` INT64 `[N]` (index into the manifest's
//!   `devices`, 0 unknown) and `k` INT64 `[1]`, and returns `item_ids` INT64
//!   `[N, k]` and `scores` FP32 `[N, k]` (best first). Clients send `user_id`
//!   INT64 `[N]`, optional `k` INT32 `[1]` (default 10), `hour` INT32 `[N]` and
//!   `device` BYTES `[N]`; they get `item_ids`, `scores` (padded with -1 and NaN
//!   when fewer than k items exist) and `fallback` BOOL `[N]` (cold start:
//!   popular items for the context).
//! - any other kind: the module's own signature, unchanged.

use crate::error::{Error, Result};
use crate::registry::{Manifest, TensorSpec};

/// Default number of recommendations when a request does not say.
pub const DEFAULT_K: usize = 10;
/// Most recommendations one request may ask for.
pub const MAX_K: usize = 500;

/// What kind of model a version is, as far as serving is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contract {
    /// Churn probabilities per horizon.
    Churn {
        /// Features per user.
        width: usize,
        /// Output index of the longest horizon (risk tiers use it).
        longest: usize,
    },
    /// Top-k items per user.
    Recommend {
        /// Features per user.
        width: usize,
    },
    /// The module's own signature.
    Generic,
}

fn spec(name: &str, dtype: &str, shape: &[i64]) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        dtype: dtype.into(),
        shape: shape.to_vec(),
    }
}

fn bad(manifest: &Manifest, reason: String) -> Error {
    Error::InvalidArgument(format!(
        "manifest of {}:{} does not fit the '{}' contract: {reason}",
        manifest.name, manifest.version, manifest.kind
    ))
}

fn horizon_days(name: &str) -> Option<u32> {
    name.strip_prefix("churn_")?.strip_suffix('d')?.parse().ok()
}

impl Contract {
    /// The contract of `manifest`, checked against its signature.
    pub fn of(manifest: &Manifest) -> Result<Self> {
        let shapes = |specs: &[TensorSpec]| -> Vec<(String, Vec<i64>)> {
            specs
                .iter()
                .map(|s| (s.dtype.clone(), s.shape.clone()))
                .collect()
        };
        let features = manifest.features.len();
        let width_ok = |width: i64| features == 0 || width == features as i64;
        match manifest.kind.as_str() {
            "churn" => {
                let inputs = shapes(&manifest.inputs);
                let [(dtype, shape)] = inputs.as_slice() else {
                    return Err(bad(manifest, "the module must take one input".into()));
                };
                let width = match shape.as_slice() {
                    [-1, w] if dtype == "FP32" && *w > 0 && width_ok(*w) => *w as usize,
                    _ => {
                        return Err(bad(
                            manifest,
                            format!(
                                "its input must be FP32 [-1, {features}] (one column per listed feature), not {dtype} {shape:?}"
                            ),
                        ));
                    }
                };
                let mut longest = (0, 0);
                for (i, out) in manifest.outputs.iter().enumerate() {
                    let days = horizon_days(&out.name).ok_or_else(|| {
                        bad(
                            manifest,
                            format!("output '{}' is not named churn_<days>d", out.name),
                        )
                    })?;
                    if out.dtype != "FP32" || out.shape != [-1] {
                        return Err(bad(
                            manifest,
                            format!("output '{}' must be FP32 [-1]", out.name),
                        ));
                    }
                    if days >= longest.1 {
                        longest = (i, days);
                    }
                }
                Ok(Contract::Churn {
                    width,
                    longest: longest.0,
                })
            }
            "recommend" => {
                let inputs = shapes(&manifest.inputs);
                let width = match inputs.as_slice() {
                    [(f, fs), (h, hs), (d, ds), (k, ks)]
                        if f == "FP32"
                            && fs.len() == 2
                            && fs[0] == -1
                            && fs[1] > 0
                            && width_ok(fs[1])
                            && h == "INT64"
                            && hs == &[-1]
                            && d == "INT64"
                            && ds == &[-1]
                            && k == "INT64"
                            && ks == &[1] =>
                    {
                        fs[1] as usize
                    }
                    _ => {
                        return Err(bad(
                            manifest,
                            format!(
                                "the module must take user_features FP32 [-1, {features}], hour INT64 [-1], device INT64 [-1], k INT64 [1]"
                            ),
                        ));
                    }
                };
                let outputs = shapes(&manifest.outputs);
                match outputs.as_slice() {
                    [(i, is), (s, ss)]
                        if i == "INT64" && is == &[-1, -1] && s == "FP32" && ss == &[-1, -1] => {}
                    _ => {
                        return Err(bad(
                            manifest,
                            "the module must return item_ids INT64 [-1, -1] and scores FP32 [-1, -1]"
                                .into(),
                        ));
                    }
                }
                Ok(Contract::Recommend { width })
            }
            _ => Ok(Contract::Generic),
        }
    }

    /// Inputs as clients see them (KServe metadata).
    pub fn inputs(&self, manifest: &Manifest) -> Vec<TensorSpec> {
        match self {
            Contract::Churn { width, .. } => vec![
                spec("user_id", "INT64", &[-1]),
                spec("features", "FP32", &[-1, *width as i64]),
            ],
            Contract::Recommend { .. } => vec![
                spec("user_id", "INT64", &[-1]),
                spec("k", "INT32", &[1]),
                spec("hour", "INT32", &[-1]),
                spec("device", "BYTES", &[-1]),
            ],
            Contract::Generic => manifest.inputs.clone(),
        }
    }

    /// Outputs as clients see them (KServe metadata).
    pub fn outputs(&self, manifest: &Manifest) -> Vec<TensorSpec> {
        match self {
            Contract::Churn { .. } => {
                let mut outputs = manifest.outputs.clone();
                outputs.push(spec("risk_tier", "BYTES", &[-1]));
                outputs.push(spec("fallback", "BOOL", &[-1]));
                outputs
            }
            Contract::Recommend { .. } => vec![
                spec("item_ids", "INT64", &[-1, -1]),
                spec("scores", "FP32", &[-1, -1]),
                spec("fallback", "BOOL", &[-1]),
            ],
            Contract::Generic => manifest.outputs.clone(),
        }
    }
}
