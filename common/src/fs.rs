//! File writes that readers never see half done.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A hidden temporary path beside `path` for a file that will be renamed
/// over it: `.<name>.<pid>.<n>.tmp`, unique to this call, so concurrent
/// writers never write into each other's file.
fn temporary_beside(path: &Path) -> PathBuf {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    path.with_file_name(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        CALLS.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Replaces `path` so that readers see either the old file or the whole
/// new one: `write` creates the new file at a temporary path beside it
/// (unique to this call), which is then renamed over `path`
/// (`rename_error` turns a failed rename into the caller's error). On any
/// error the temporary file is removed. The folder must exist.
pub fn replace_atomic<E>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
    rename_error: impl FnOnce(std::io::Error) -> E,
) -> Result<(), E> {
    let tmp = temporary_beside(path);
    let written = write(&tmp).and_then(|()| std::fs::rename(&tmp, path).map_err(rename_error));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Writes `contents` to `path` with [`replace_atomic`], creating the
/// folder if it is missing.
pub fn write_atomic(path: &Path, contents: impl AsRef<[u8]>) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    replace_atomic(path, |tmp| std::fs::write(tmp, contents), |e| e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_files_and_leaves_no_temporary_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/manifest.json");
        write_atomic(&path, "one").unwrap();
        write_atomic(&path, "two").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("new"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["manifest.json"]);
    }

    #[test]
    fn concurrent_writers_each_land_a_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aliases.json");
        let texts: Vec<String> = (0..8).map(|i| format!("{i}").repeat(100_000)).collect();
        std::thread::scope(|s| {
            for text in &texts {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..20 {
                        write_atomic(path, text).unwrap();
                    }
                });
            }
        });
        let last = std::fs::read_to_string(&path).unwrap();
        assert!(
            texts.contains(&last),
            "a mixed file of {} bytes",
            last.len()
        );
    }

    #[test]
    fn a_failed_rename_leaves_what_was_there_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        // A folder where the file should be: the rename fails.
        let path = dir.path().join("taken");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("inside"), "x").unwrap();
        assert!(write_atomic(&path, "new").is_err());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["taken"]);
    }
}
