//! Encore TOML files: one file configures a whole cluster, one section per
//! process (`[scheduler]`, `[executor]`, ...). Each process reads its own
//! section and ignores the others; unknown keys inside it are errors.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Why a configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or the section has a bad key or value.
    #[error("cannot parse config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why (boxed: toml errors are large).
        source: Box<toml::de::Error>,
    },
}

/// Reads `[section]` of the TOML file at `path`; a missing section gives `T::default()`.
pub fn load_section<T: DeserializeOwned + Default>(
    path: &Path,
    section: &str,
) -> Result<T, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let parse_error = |e| ConfigFileError::Parse {
        path: path.to_path_buf(),
        source: Box::new(e),
    };
    let mut table: toml::Table = toml::from_str(&text).map_err(parse_error)?;
    match table.remove(section) {
        Some(value) => value.try_into().map_err(parse_error),
        None => Ok(T::default()),
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Section {
        port: u16,
        name: String,
    }

    #[test]
    fn reads_its_section_and_ignores_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("encore.toml");
        std::fs::write(&path, "[a]\nport = 7\n[b]\nwhatever = true\n").unwrap();
        let a: Section = load_section(&path, "a").unwrap();
        assert_eq!(
            a,
            Section {
                port: 7,
                name: String::new()
            }
        );
        let c: Section = load_section(&path, "c").unwrap();
        assert_eq!(c, Section::default());
    }

    #[test]
    fn errors_name_the_file_and_the_bad_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[a]\nprot = 7\n").unwrap();
        let err = load_section::<Section>(&path, "a").unwrap_err().to_string();
        assert!(err.contains("bad.toml") && err.contains("prot"), "{err}");
        let err = load_section::<Section>(&dir.path().join("none.toml"), "a")
            .unwrap_err()
            .to_string();
        assert!(err.contains("none.toml"), "{err}");
    }
}
