//! Per-epoch training checkpoints, so a job that loses its executor resumes
//! where it stopped instead of starting over.
//!
//! A checkpoint folder holds one sub-folder per saved epoch,
//! `epoch-000042/`, with
//! - `weights.ot`: the model's current weights (`VarStore::save`),
//! - `best.ot`: the weights of the best epoch so far (early stopping keeps
//!   them),
//! - `state.json`: epoch, step, the best epoch and loss, the history, and a
//!   fingerprint of the model's shape and settings.
//!
//! Each epoch is written into a hidden folder and renamed into place, so a
//! crash mid-write leaves the previous checkpoint intact. Only the newest
//! epoch is kept. A checkpoint whose fingerprint differs (other data shape
//! or settings) is ignored. Optimiser moments are not saved: a resumed run
//! restarts AdamW's running averages from the restored weights.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Tensor, nn};

use crate::error::{Error, Result};

/// What is restored besides the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// The last finished epoch.
    pub epoch: u32,
    /// Optimiser steps so far.
    pub step: u64,
    /// Lowest validation loss so far.
    pub best_loss: f64,
    /// Its epoch.
    pub best_epoch: u32,
    /// Per-epoch reports as JSON values (model-specific).
    pub history: Vec<serde_json::Value>,
    /// Shape and settings of the model the weights belong to.
    pub fingerprint: String,
}

impl CheckpointState {
    /// The state after `epoch`: `best` is (lowest loss, its epoch), `reports`
    /// the per-epoch reports so far.
    pub fn after<R: Serialize>(
        epoch: u32,
        step: u64,
        best: (f64, u32),
        reports: &[R],
        fingerprint: &str,
    ) -> Self {
        Self {
            epoch,
            step,
            best_loss: best.0,
            best_epoch: best.1,
            history: reports
                .iter()
                .map(|r| serde_json::to_value(r).expect("reports serialise"))
                .collect(),
            fingerprint: fingerprint.to_owned(),
        }
    }

    /// The per-epoch reports, read back as `R` (entries that do not parse
    /// are skipped).
    pub fn reports<R: for<'de> Deserialize<'de>>(&self) -> Vec<R> {
        self.history
            .iter()
            .filter_map(|v| serde_json::from_value(v.clone()).ok())
            .collect()
    }
}

/// A restored checkpoint.
pub struct Restored {
    /// Counters and history.
    pub state: CheckpointState,
    /// Best weights by variable name.
    pub best: Vec<(String, Tensor)>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The newest epoch folder in `dir`, if any.
fn newest(dir: &Path) -> Option<(u32, PathBuf)> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            let epoch = name.strip_prefix("epoch-")?.parse().ok()?;
            e.path()
                .join("state.json")
                .is_file()
                .then(|| (epoch, e.path()))
        })
        .max_by_key(|(epoch, _)| *epoch)
}

/// The folder of the checkpoint after `epoch` in `dir`.
pub fn epoch_dir(dir: &Path, epoch: u32) -> PathBuf {
    dir.join(format!("epoch-{epoch:06}"))
}

/// The epoch of the newest checkpoint in `dir`, without loading it.
pub fn latest_epoch(dir: &Path) -> Option<u32> {
    newest(dir).map(|(epoch, _)| epoch)
}

/// Writes a checkpoint of `vs` after `state.epoch`, with `best` as the best
/// weights, and removes older ones.
pub fn save(
    dir: &Path,
    vs: &nn::VarStore,
    best: &[(String, Tensor)],
    state: &CheckpointState,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let staging = dir.join(format!(".staging-{}-{}", state.epoch, std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    vs.save(staging.join("weights.ot"))?;
    let named: Vec<(&str, &Tensor)> = best.iter().map(|(k, t)| (k.as_str(), t)).collect();
    Tensor::save_multi(&named, staging.join("best.ot"))?;
    let json = serde_json::to_vec_pretty(state).expect("checkpoint state serialises");
    let state_path = staging.join("state.json");
    std::fs::write(&state_path, json).map_err(io(&state_path))?;
    let target = epoch_dir(dir, state.epoch);
    let _ = std::fs::remove_dir_all(&target);
    std::fs::rename(&staging, &target).map_err(io(&target))?;
    // Older epochs are no longer needed.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let older = name
                .strip_prefix("epoch-")
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| n < state.epoch);
            if older {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(())
}

/// Loads the newest checkpoint in `dir` into `vs` when its fingerprint is
/// `fingerprint`; None when there is none or it belongs to another model.
pub fn restore(dir: &Path, vs: &mut nn::VarStore, fingerprint: &str) -> Result<Option<Restored>> {
    let Some((_, path)) = newest(dir) else {
        return Ok(None);
    };
    let state_path = path.join("state.json");
    let text = std::fs::read(&state_path).map_err(io(&state_path))?;
    let state: CheckpointState = match serde_json::from_slice(&text) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("ignoring checkpoint {}: {e}", state_path.display());
            return Ok(None);
        }
    };
    if state.fingerprint != fingerprint {
        tracing::warn!(
            "ignoring checkpoint {}: it belongs to a model of another shape or settings",
            path.display()
        );
        return Ok(None);
    }
    vs.load(path.join("weights.ot"))?;
    let device = vs.device();
    let best = Tensor::load_multi(path.join("best.ot"))?
        .into_iter()
        .map(|(k, t)| (k, t.to_device(device)))
        .collect();
    Ok(Some(Restored { state, best }))
}

/// A copy of every variable of `vs` (the best weights so far).
pub fn snapshot(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    vs.variables()
        .into_iter()
        .map(|(k, v)| (k, v.detach().copy()))
        .collect()
}

/// Copies `weights` (from [`snapshot`]) back into `vs`.
pub fn restore_weights(vs: &nn::VarStore, weights: Vec<(String, Tensor)>) {
    let vars = vs.variables();
    tch::no_grad(|| {
        for (name, w) in weights {
            if let Some(v) = vars.get(&name) {
                v.shallow_clone().copy_(&w);
            }
        }
    });
}
