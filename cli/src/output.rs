//! Query results: printed as a table, or written to a Parquet / CSV file
//! atomically (a temporary file in the same folder, renamed when complete).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use datafusion::arrow::csv;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::dataframe::DataFrame;
use futures::StreamExt;
use parquet::arrow::ArrowWriter;

/// A spinner on stderr (hidden when stderr is not a terminal), cleared when
/// dropped, so an error line never lands after a half-drawn spinner.
pub struct Spinner(indicatif::ProgressBar);

impl Spinner {
    /// Starts spinning with `message`.
    pub fn start(message: &'static str) -> Self {
        let bar = indicatif::ProgressBar::new_spinner().with_message(message);
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        Self(bar)
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// File formats `--out` can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutFormat {
    /// `.parquet`
    Parquet,
    /// `.csv` with a header row.
    Csv,
}

impl OutFormat {
    /// The format named by `path`'s extension.
    pub fn from_path(path: &Path) -> anyhow::Result<Self> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
        {
            Some(e) if e == "parquet" => Ok(Self::Parquet),
            Some(e) if e == "csv" => Ok(Self::Csv),
            _ => bail!(
                "--out {}: unknown format (use a .parquet or .csv file name)",
                path.display()
            ),
        }
    }
}

/// Runs `df`, calls `before_print` (to clear a spinner), then prints its
/// rows as a table followed by the row count.
pub async fn print_after(df: DataFrame, before_print: impl FnOnce()) -> anyhow::Result<usize> {
    let batches = df.collect().await?;
    before_print();
    let rows = batches.iter().map(|b| b.num_rows()).sum();
    if !batches.is_empty() {
        println!("{}", pretty_format_batches(&batches)?);
    }
    println!("{rows} row{}", if rows == 1 { "" } else { "s" });
    Ok(rows)
}

/// Runs `df`, streaming its rows into `path`; returns the row count.
pub async fn write(df: DataFrame, path: &Path) -> anyhow::Result<usize> {
    let format = OutFormat::from_path(path)?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        bail!(
            "--out {}: folder {} does not exist",
            path.display(),
            dir.display()
        );
    }
    let tmp = tempfile::Builder::new()
        .prefix(".encore-out-")
        .tempfile_in(&dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    let file = tmp.reopen()?;
    let mut stream = df.execute_stream().await?;
    let schema = stream.schema();
    let mut rows = 0;
    match format {
        OutFormat::Parquet => {
            let mut writer = ArrowWriter::try_new(file, schema, None)?;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows();
                writer.write(&batch)?;
            }
            writer.close()?;
        }
        OutFormat::Csv => {
            let mut writer = csv::WriterBuilder::new().with_header(true).build(file);
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows();
                writer.write(&batch)?;
            }
        }
    }
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(rows)
}
