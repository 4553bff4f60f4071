//! Where a training job's checkpoints live.
//!
//! The scheduler names `<registry>/_checkpoints/<job>`. With a registry in a
//! local folder that every executor shares, that folder is used as is. With a
//! registry in an object store, the trainer writes to a local folder (under
//! the registry's cache) that is filled from the store before the attempt
//! starts and whose newest epoch is uploaded after every epoch, so an attempt
//! on another executor resumes where this one stopped.

use std::path::{Path, PathBuf};

use encore_models::checkpoint;
use encore_models::registry::{self, ObjectRegistry, Registry};
use tracing::warn;

/// A job's checkpoint folder, and its copy in the object store if any.
#[derive(Debug, Clone, Default)]
pub struct Checkpoints {
    local: Option<PathBuf>,
    remote: Option<(ObjectRegistry, String)>,
}

impl Checkpoints {
    /// The checkpoints at `uri` (as the scheduler named them) of a job whose
    /// registry is `registry_uri`. Checkpoints are off (with a warning) when
    /// the store cannot be opened: the job still trains, without resume.
    pub fn new(uri: &str, registry_uri: &str) -> Self {
        if uri.is_empty() {
            return Self::default();
        }
        if !registry::is_remote(uri) {
            return Self {
                local: Some(PathBuf::from(uri.trim_start_matches("file://"))),
                remote: None,
            };
        }
        let rel = uri
            .strip_prefix(registry_uri.trim_end_matches('/'))
            .map(|rel| rel.trim_matches('/').to_owned());
        match (Registry::open(registry_uri), rel) {
            (Ok(registry), Some(rel)) if registry.as_object().is_some() && !rel.is_empty() => {
                let store = registry.as_object().cloned().expect("checked above");
                Self::in_store(store, &rel)
            }
            (opened, _) => {
                let why = opened.err().map(|e| e.to_string()).unwrap_or_default();
                warn!("checkpoints off: cannot place {uri} in registry {registry_uri} {why}");
                Self::default()
            }
        }
    }

    /// Checkpoints at `rel` in an object-store registry, written locally
    /// under its cache folder.
    pub fn in_store(store: ObjectRegistry, rel: &str) -> Self {
        Self {
            local: Some(store.cache_root().join(rel)),
            remote: Some((store, rel.to_owned())),
        }
    }

    /// The local folder the trainer writes checkpoints to.
    pub fn dir(&self) -> Option<&Path> {
        self.local.as_deref()
    }

    /// Copies the store's checkpoints into the local folder (blocking).
    pub fn pull(&self) {
        let (Some(local), Some((store, rel))) = (&self.local, &self.remote) else {
            return;
        };
        let _ = std::fs::remove_dir_all(local);
        if let Err(e) = store.download(rel, local) {
            warn!("cannot fetch checkpoints from {}/{rel}: {e}", store.url());
        }
    }

    /// Uploads the newest local checkpoint to the store and drops older ones
    /// there (blocking). The epoch's `state.json` goes last: a checkpoint
    /// without it is ignored, so a half-uploaded one is never resumed from.
    pub fn push(&self) {
        let (Some(local), Some((store, rel))) = (&self.local, &self.remote) else {
            return;
        };
        let Some(epoch) = checkpoint::latest_epoch(local) else {
            return;
        };
        let dir = checkpoint::epoch_dir(local, epoch);
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let pushed = store
            .upload_dir(&dir, &format!("{rel}/{name}"), "state.json")
            .and_then(|()| store.remove_except(rel, &format!("{name}/")));
        if let Err(e) = pushed {
            warn!(
                "cannot upload the checkpoint after epoch {epoch} to {}/{rel}: {e}",
                store.url()
            );
        }
    }

    /// Removes the checkpoints, here and in the store (the model is registered).
    pub fn clear(&self) {
        if let Some(local) = &self.local {
            let _ = std::fs::remove_dir_all(local);
        }
        if let Some((store, rel)) = &self.remote
            && let Err(e) = store.remove(rel)
        {
            warn!("cannot remove checkpoints {}/{rel}: {e}", store.url());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::memory::InMemory;

    use super::*;

    fn write_epoch(dir: &Path, epoch: u32) {
        let folder = checkpoint::epoch_dir(dir, epoch);
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("weights.ot"), format!("weights {epoch}")).unwrap();
        std::fs::write(folder.join("state.json"), "{}").unwrap();
    }

    #[test]
    fn checkpoints_in_a_store_follow_the_job_to_another_executor() {
        let memory = Arc::new(InMemory::new());
        let store =
            |cache: &Path| ObjectRegistry::new("memory://test/reg", memory.clone(), "reg", cache);
        let (first_cache, second_cache) =
            (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = Checkpoints::in_store(store(first_cache.path()), "_checkpoints/job-1");
        let dir = first.dir().unwrap().to_path_buf();
        assert!(dir.starts_with(first_cache.path()));
        write_epoch(&dir, 1);
        first.push();
        write_epoch(&dir, 2);
        first.push();

        // Another executor (empty cache) finds only the newest epoch.
        let second = Checkpoints::in_store(store(second_cache.path()), "_checkpoints/job-1");
        second.pull();
        let there = second.dir().unwrap();
        assert_eq!(checkpoint::latest_epoch(there), Some(2));
        assert!(
            !checkpoint::epoch_dir(there, 1).exists(),
            "older epochs are dropped"
        );
        assert_eq!(
            std::fs::read_to_string(checkpoint::epoch_dir(there, 2).join("weights.ot")).unwrap(),
            "weights 2"
        );

        // Cleared after the model is registered: a later pull finds nothing.
        second.clear();
        assert!(!there.exists());
        first.pull();
        assert_eq!(checkpoint::latest_epoch(&dir), None);
    }

    #[test]
    fn local_uris_are_used_as_they_are_and_empty_ones_turn_checkpoints_off() {
        let local = Checkpoints::new("/srv/registry/_checkpoints/job-1", "/srv/registry");
        assert_eq!(
            local.dir(),
            Some(Path::new("/srv/registry/_checkpoints/job-1"))
        );
        assert_eq!(Checkpoints::new("", "/srv/registry").dir(), None);
    }
}
