//! Registering files and folders as tables: `NAME=PATH` where PATH is a
//! Parquet, CSV (with header) or NDJSON file, or a folder of them (Hive-style
//! `key=value` sub-folders become partition columns).
//!
//! Paths are made absolute so executors on the same file system resolve them
//! the same way as the client.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::SessionContext;

use crate::error::{Error, Result};

/// A table to register: `NAME=PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSource {
    /// SQL name of the table.
    pub name: String,
    /// File or folder.
    pub path: PathBuf,
}

impl FromStr for TableSource {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (name, path) = s
            .split_once('=')
            .ok_or_else(|| Error::InvalidTableArg(s.to_owned()))?;
        let name = name.trim();
        if path.trim().is_empty() {
            return Err(Error::InvalidTableArg(s.to_owned()));
        }
        if !is_identifier(name) {
            return Err(Error::InvalidTableName(name.to_owned()));
        }
        Ok(Self {
            name: name.to_owned(),
            path: PathBuf::from(path.trim()),
        })
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// File formats a table can be read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Apache Parquet.
    Parquet,
    /// CSV with a header row.
    Csv,
    /// Newline-delimited JSON.
    NdJson,
}

impl Format {
    /// The format a file name's extension names, if any.
    pub fn from_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "parquet" => Some(Self::Parquet),
            "csv" => Some(Self::Csv),
            "json" | "ndjson" | "jsonl" => Some(Self::NdJson),
            _ => None,
        }
    }

    fn file_format(self) -> Arc<dyn FileFormat> {
        match self {
            Self::Parquet => Arc::new(ParquetFormat::default()),
            Self::Csv => Arc::new(CsvFormat::default().with_has_header(true)),
            Self::NdJson => Arc::new(JsonFormat::default()),
        }
    }
}

/// The first data file under `dir` (depth-first, names sorted; hidden and
/// `_`-prefixed entries skipped, as Spark and DataFusion do).
fn first_data_file(dir: &Path) -> std::io::Result<Option<PathBuf>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.') && !n.starts_with('_'))
        })
        .collect();
    entries.sort();
    for path in &entries {
        if path.is_file() && Format::from_path(path).is_some() {
            return Ok(Some(path.clone()));
        }
    }
    for path in entries.iter().filter(|p| p.is_dir()) {
        if let Some(found) = first_data_file(path)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// Registers `source` in `ctx`, inferring format, schema and partitions.
pub async fn register(ctx: &SessionContext, source: &TableSource) -> Result<()> {
    let TableSource { name, path } = source;
    if !path.exists() {
        return Err(Error::MissingPath {
            table: name.clone(),
            path: path.clone(),
        });
    }
    let abs = std::fs::canonicalize(path).map_err(Error::io(path))?;
    let (format, sample, url) = if abs.is_dir() {
        let sample = first_data_file(&abs)
            .map_err(Error::io(&abs))?
            .ok_or_else(|| Error::NoDataFiles {
                table: name.clone(),
                path: path.clone(),
            })?;
        // A trailing slash makes DataFusion list the folder.
        let url = format!("{}/", abs.display());
        (Format::from_path(&sample), sample, url)
    } else {
        (
            Format::from_path(&abs),
            abs.clone(),
            abs.display().to_string(),
        )
    };
    let format = format.ok_or_else(|| Error::UnknownFormat {
        table: name.clone(),
        path: path.clone(),
    })?;
    let extension = sample
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| format!(".{e}"))
        .unwrap_or_default();

    let state = ctx.state();
    let options = ListingOptions::new(format.file_format()).with_file_extension(extension);
    let config = ListingTableConfig::new(ListingTableUrl::parse(&url)?)
        .with_listing_options(options)
        .infer_partitions_from_path(&state)
        .await?
        .infer_schema(&state)
        .await?;
    ctx.register_table(name.as_str(), Arc::new(ListingTable::try_new(config)?))?;
    tracing::debug!(table = %name, path = %abs.display(), ?format, "registered table");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_name_equals_path() {
        let t: TableSource = "plays=/data/plays".parse().unwrap();
        assert_eq!(t.name, "plays");
        assert_eq!(t.path, PathBuf::from("/data/plays"));
        assert!(matches!(
            "plays".parse::<TableSource>(),
            Err(Error::InvalidTableArg(_))
        ));
        assert!(matches!(
            "1x=/a".parse::<TableSource>(),
            Err(Error::InvalidTableName(_))
        ));
    }

    #[tokio::test]
    async fn registers_csv_ndjson_and_partitioned_folders() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("a.csv");
        std::fs::write(&csv, "user_id,plays\n1,10\n2,20\n").unwrap();
        let json = dir.path().join("b.ndjson");
        std::fs::write(
            &json,
            "{\"user_id\":1,\"x\":1.5}\n{\"user_id\":3,\"x\":2.5}\n",
        )
        .unwrap();
        let part = dir.path().join("events/day=2026-01-02");
        std::fs::create_dir_all(&part).unwrap();
        std::fs::write(part.join("p.csv"), "user_id\n7\n8\n").unwrap();

        let ctx = SessionContext::new();
        for (name, path) in [("a", &csv), ("b", &json)] {
            register(
                &ctx,
                &TableSource {
                    name: name.into(),
                    path: path.clone(),
                },
            )
            .await
            .unwrap();
        }
        register(
            &ctx,
            &TableSource {
                name: "events".into(),
                path: dir.path().join("events"),
            },
        )
        .await
        .unwrap();
        let sql = "SELECT (SELECT sum(plays) FROM a) AS s, \
                   (SELECT sum(x) FROM b) AS x, \
                   (SELECT count(*) FROM events WHERE day = '2026-01-02') AS n";
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        assert!(text.contains("| 30 | 4.0 | 2 |"), "{text}");
    }

    #[tokio::test]
    async fn errors_name_the_table_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = SessionContext::new();
        let missing = TableSource {
            name: "t".into(),
            path: dir.path().join("nope.parquet"),
        };
        let err = register(&ctx, &missing).await.unwrap_err().to_string();
        assert!(
            err.contains("table 't'") && err.contains("nope.parquet"),
            "{err}"
        );

        let txt = dir.path().join("x.txt");
        std::fs::write(&txt, "hi").unwrap();
        let err = register(
            &ctx,
            &TableSource {
                name: "t".into(),
                path: txt,
            },
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::UnknownFormat { .. }), "{err}");

        let err = register(
            &ctx,
            &TableSource {
                name: "t".into(),
                path: dir.path().into(),
            },
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::NoDataFiles { .. }), "{err}");
    }
}
