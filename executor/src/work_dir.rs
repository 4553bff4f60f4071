//! The executor's default work folder (shuffle files and spills):
//! `<temp>/encore-executor-XXXXXX`, deleted when the executor stops.
//!
//! An executor that is killed (SIGKILL, the OOM killer, a crash) cannot
//! delete its folder, and its shuffle files can be gigabytes. So each folder
//! holds an `owner` file with the process id and start time of the executor
//! that made it, and every executor, as it starts, deletes the sibling
//! folders whose owner is no longer running. Folders without an owner file
//! (made by something else, or still being set up) are left alone; the
//! start time guards against a recycled process id.

use std::path::Path;

/// Prefix of the default work folders in the temporary folder.
const PREFIX: &str = "encore-executor-";
/// The file naming a work folder's process.
const OWNER: &str = "owner";

/// A new work folder in the system's temporary folder, owned by this
/// process, after deleting the orphaned ones beside it.
pub(crate) fn create() -> std::io::Result<tempfile::TempDir> {
    let parent = std::env::temp_dir();
    let swept = sweep_orphans(&parent);
    if swept > 0 {
        tracing::info!(
            folders = swept,
            "deleted the work folders of executors that are no longer running"
        );
    }
    create_in(&parent)
}

fn create_in(parent: &Path) -> std::io::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new().prefix(PREFIX).tempdir_in(parent)?;
    // Written whole or not at all: a sweeping executor never reads half an
    // owner file.
    encore_common::fs::write_atomic(&dir.path().join(OWNER), Owner::current().to_line())?;
    Ok(dir)
}

/// Deletes the work folders in `parent` whose owner has stopped; returns
/// how many.
pub(crate) fn sweep_orphans(parent: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return 0;
    };
    let mut swept = 0;
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(PREFIX) {
            continue;
        }
        let path = entry.path();
        let owner = std::fs::read_to_string(path.join(OWNER))
            .ok()
            .and_then(|text| Owner::parse(&text));
        let Some(owner) = owner else { continue };
        if owner.is_running() {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => swept += 1,
            // Another executor starting at the same time got there first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(folder = %path.display(), error = %e, "cannot delete an orphaned work folder");
            }
        }
    }
    swept
}

/// A process: its id and its start time (clock ticks after boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owner {
    pid: u32,
    started: u64,
}

impl Owner {
    fn current() -> Self {
        let pid = std::process::id();
        Self {
            pid,
            started: start_time(pid).unwrap_or(0),
        }
    }

    fn to_line(self) -> String {
        format!("{} {}\n", self.pid, self.started)
    }

    fn parse(text: &str) -> Option<Self> {
        let mut words = text.split_whitespace();
        let pid = words.next()?.parse().ok()?;
        let started = words.next()?.parse().ok()?;
        Some(Self { pid, started })
    }

    /// Whether this process still runs. Where that cannot be told (no
    /// `/proc`), it is taken as running: nothing is deleted.
    fn is_running(self) -> bool {
        if !Path::new("/proc/self/stat").exists() {
            return true;
        }
        start_time(self.pid).is_some_and(|started| started == self.started)
    }
}

/// Field 22 of `/proc/<pid>/stat`: when the process started.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The owner record of a process that has exited.
    fn exited() -> Owner {
        let mut child = std::process::Command::new("sleep")
            .arg("0")
            .spawn()
            .unwrap();
        let pid = child.id();
        let started = start_time(pid).unwrap_or(1);
        child.wait().unwrap();
        Owner { pid, started }
    }

    #[test]
    fn folders_of_stopped_executors_are_deleted_and_the_rest_kept() {
        let parent = tempfile::tempdir().unwrap();
        let ours = create_in(parent.path()).unwrap();
        assert_eq!(
            Owner::parse(&std::fs::read_to_string(ours.path().join(OWNER)).unwrap()),
            Some(Owner::current())
        );

        let orphan = create_in(parent.path()).unwrap().keep();
        std::fs::write(orphan.join(OWNER), exited().to_line()).unwrap();
        std::fs::create_dir_all(orphan.join("job-1/stage-2")).unwrap();
        std::fs::write(orphan.join("job-1/stage-2/data.arrow"), vec![0u8; 4096]).unwrap();

        // Same pid as a running process but another start time: a recycled id.
        let recycled = create_in(parent.path()).unwrap().keep();
        let mut owner = Owner::current();
        owner.started += 1;
        std::fs::write(recycled.join(OWNER), owner.to_line()).unwrap();

        let ownerless = parent.path().join(format!("{PREFIX}manual"));
        std::fs::create_dir(&ownerless).unwrap();
        let unrelated = parent.path().join("something-else");
        std::fs::create_dir(&unrelated).unwrap();
        std::fs::write(unrelated.join(OWNER), exited().to_line()).unwrap();

        assert_eq!(sweep_orphans(parent.path()), 2);
        assert!(!orphan.exists() && !recycled.exists());
        assert!(
            ours.path().join(OWNER).is_file(),
            "a running owner's folder is kept"
        );
        assert!(ownerless.is_dir() && unrelated.is_dir());
        assert_eq!(sweep_orphans(parent.path()), 0);
    }

    #[test]
    fn owner_lines_round_trip_and_garbage_is_no_owner() {
        let owner = Owner {
            pid: 42,
            started: 123_456,
        };
        assert_eq!(Owner::parse(&owner.to_line()), Some(owner));
        for text in ["", "42", "x 1", "42 y"] {
            assert_eq!(Owner::parse(text), None, "{text:?}");
        }
        assert!(Owner::current().is_running());
        assert!(!exited().is_running());
    }
}
