//! Importers: public music/retail datasets in their original file formats →
//! the canonical tables (`schema`), validated, with PII dropped and string
//! ids turned into INT64 through a keyed hash.
//!
//! - [`cdnow`]: `CDNOW_master.txt` (purchases → `payments`, `users`);
//! - [`movielens`]: MovieLens-100K `u.data`/`u.item`/`u.user`, or RecBole's
//!   `ml-100k.inter`/`.item`/`.user` (ratings → `interactions`, `items`, `users`);
//! - [`kkbox`]: the KKBox churn challenge (`members`, `transactions`,
//!   `user_logs`, `train` → `users`, `payments`, `daily_activity`,
//!   `subscription_labels`).
//!
//! Every importer reads line by line: a malformed line (wrong field count,
//! unparsable value, value outside its domain) is an error naming file, line
//! and column; with a quarantine folder the rejected lines are written there
//! instead and the import goes on. Tables are written to a staging folder and
//! moved into place only when everything succeeded, so an interrupted or
//! failed import leaves no partial table visible.

pub mod cdnow;
pub mod kkbox;
pub mod movielens;

use std::fmt::Write as _;
use std::hash::Hasher;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use chrono::NaiveDate;

use crate::datagen::write_parquet;
use crate::error::{Error, Result};
use crate::validate::validate;

/// Rows per Parquet part file.
const PART_ROWS: usize = 1 << 20;

/// The secret that maps string ids (e.g. KKBox's `msno`) to INT64 ids:
/// SipHash-2-4 keyed with 128 bits derived from the configured key text.
/// The same key gives the same ids across imports; without it the mapping
/// cannot be recomputed from the data.
#[derive(Clone)]
pub struct IdKey {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for IdKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdKey(<secret>)")
    }
}

impl IdKey {
    /// Derives the key from secret text (at least 16 characters).
    pub fn from_secret(secret: &str) -> Result<Self> {
        let secret = secret.trim();
        if secret.chars().count() < 16 {
            return Err(Error::InvalidSpec(
                "the id key must be at least 16 characters of secret text".into(),
            ));
        }
        let derive = |k1: u64| {
            let mut h = siphasher::sip::SipHasher24::new_with_keys(0x656e_636f_7265, k1);
            h.write(secret.as_bytes());
            h.finish()
        };
        Ok(Self {
            k0: derive(1),
            k1: derive(2),
        })
    }

    /// The INT64 id of a string id (non-negative).
    pub fn id(&self, raw: &str) -> i64 {
        let mut h = siphasher::sip::SipHasher24::new_with_keys(self.k0, self.k1);
        h.write(raw.as_bytes());
        (h.finish() >> 1) as i64
    }
}

/// A line that could not be imported.
#[derive(Debug, Clone, PartialEq)]
pub struct LineError {
    /// Source file.
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// Column (source field name).
    pub column: String,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: column {}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.reason
        )
    }
}

/// How an import treats bad lines.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Folder for rejected lines; None fails the import on the first bad
    /// lines (all are counted and the first ones named).
    pub quarantine: Option<PathBuf>,
    /// Key for string ids (required by sources with string ids).
    pub id_key: Option<IdKey>,
}

/// What an import wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportReport {
    /// Source name.
    pub source: String,
    /// (table, rows written).
    pub tables: Vec<(String, usize)>,
    /// Lines rejected (quarantined).
    pub rejected: usize,
    /// Values dropped or nulled with a reason, by reason (e.g. an age outside 1..=100).
    pub notes: Vec<(String, usize)>,
}

/// Collects bad lines while a file is read.
pub(crate) struct Rejects {
    errors: Vec<(LineError, String)>,
}

impl Rejects {
    pub(crate) fn new() -> Self {
        Self { errors: Vec::new() }
    }

    pub(crate) fn push(
        &mut self,
        file: &Path,
        line: usize,
        column: &str,
        reason: String,
        raw: &str,
    ) {
        self.errors.push((
            LineError {
                file: file.to_path_buf(),
                line,
                column: column.to_owned(),
                reason,
            },
            raw.to_owned(),
        ));
    }

    /// Fails naming the first errors, or writes the rejects to quarantine.
    pub(crate) fn settle(self, options: &ImportOptions) -> Result<usize> {
        if self.errors.is_empty() {
            return Ok(0);
        }
        let count = self.errors.len();
        let Some(dir) = &options.quarantine else {
            let mut message = format!("{count} bad line(s); the first:");
            for (e, _) in self.errors.iter().take(5) {
                let _ = write!(message, "\n  {e}");
            }
            message.push_str("\n(use --quarantine DIR to set them aside and import the rest)");
            return Err(Error::BadInput(message));
        };
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let mut text = String::from("file\tline\tcolumn\treason\traw\n");
        for (e, raw) in &self.errors {
            let _ = writeln!(
                text,
                "{}\t{}\t{}\t{}\t{}",
                e.file.display(),
                e.line,
                e.column,
                e.reason,
                raw
            );
        }
        crate::datagen::write_atomic(&dir.join("rejected.tsv"), text)?;
        Ok(count)
    }
}

/// Reads `path` line by line (bytes, decoded lossily: MovieLens' u.item is Latin-1).
pub(crate) fn lines(path: &Path) -> Result<impl Iterator<Item = Result<(usize, String)>>> {
    use std::io::BufRead;
    let file = std::fs::File::open(path).map_err(Error::io(path))?;
    let reader = std::io::BufReader::with_capacity(1 << 20, file);
    let path = path.to_path_buf();
    Ok(reader.split(b'\n').enumerate().map(move |(i, line)| {
        let line = line.map_err(Error::io(&path))?;
        let text = String::from_utf8_lossy(&line);
        Ok((i + 1, text.trim_end_matches('\r').to_owned()))
    }))
}

/// `YYYYMMDD` → date.
pub(crate) fn yyyymmdd(text: &str) -> std::result::Result<NaiveDate, String> {
    NaiveDate::parse_from_str(text.trim(), "%Y%m%d")
        .map_err(|_| format!("'{text}' is not a YYYYMMDD date"))
}

/// Midnight UTC of `date` in milliseconds.
pub(crate) fn date_ms(date: NaiveDate) -> i64 {
    date.and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc().timestamp_millis())
        .unwrap_or_default()
}

/// Days since 1970-01-01 (Arrow Date32).
pub(crate) fn date32(date: NaiveDate) -> i32 {
    (date - NaiveDate::default()).num_days() as i32
}

pub(crate) fn parse<T: std::str::FromStr>(
    text: &str,
    what: &str,
) -> std::result::Result<T, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("'{text}' is not {what}"))
}

/// Tables written into a staging folder, then moved into the output folder
/// together.
pub(crate) struct Staging {
    out: PathBuf,
    dir: PathBuf,
    tables: Vec<(String, usize, usize)>,
}

impl Staging {
    pub(crate) fn new(out: &Path) -> Result<Self> {
        std::fs::create_dir_all(out).map_err(Error::io(out))?;
        let dir = out.join(format!(".staging-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(Error::io(&dir))?;
        }
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        Ok(Self {
            out: out.to_path_buf(),
            dir,
            tables: Vec::new(),
        })
    }

    /// Validates and writes one batch of `table` as its next part file.
    pub(crate) fn write(&mut self, table: &str, batch: RecordBatch) -> Result<()> {
        let position = match self.tables.iter().position(|t| t.0 == table) {
            Some(p) => p,
            None => {
                self.tables.push((table.to_owned(), 0, 0));
                self.tables.len() - 1
            }
        };
        let (_, rows, parts) = &mut self.tables[position];
        let violations = validate(table, &batch, *rows)?;
        if let Some(first) = violations.first() {
            return Err(Error::BadInput(format!(
                "{} violation(s) of the canonical schema, the first: {first}",
                violations.len()
            )));
        }
        *rows += batch.num_rows();
        let name = format!("part-{parts:05}.parquet");
        *parts += 1;
        write_parquet(&self.dir.join(table), &name, batch)?;
        Ok(())
    }

    /// Moves every table into the output folder (replacing an earlier
    /// import's), then removes the staging folder.
    pub(crate) fn publish(
        mut self,
        source: &str,
        rejected: usize,
        notes: Vec<(String, usize)>,
    ) -> Result<ImportReport> {
        for (table, _, _) in &self.tables {
            let staged = self.dir.join(table);
            let target = self.out.join(table);
            if target.exists() {
                let old = self.dir.join(format!("{table}.old"));
                std::fs::rename(&target, &old).map_err(Error::io(&target))?;
            }
            std::fs::rename(&staged, &target).map_err(Error::io(&target))?;
        }
        std::fs::remove_dir_all(&self.dir).map_err(Error::io(&self.dir))?;
        Ok(ImportReport {
            source: source.to_owned(),
            tables: std::mem::take(&mut self.tables)
                .into_iter()
                .map(|(t, rows, _)| (t, rows))
                .collect(),
            rejected,
            notes: notes.into_iter().filter(|n| n.1 > 0).collect(),
        })
    }

    pub(crate) fn part_rows() -> usize {
        PART_ROWS
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // A failed import leaves nothing behind (publish removed it on success).
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_ids_are_stable_per_key_and_differ_across_keys() {
        let a = IdKey::from_secret("a secret of sixteen+ chars").unwrap();
        let b = IdKey::from_secret("another secret, also long").unwrap();
        assert_eq!(a.id("msno-1"), a.id("msno-1"));
        assert_ne!(a.id("msno-1"), a.id("msno-2"));
        assert_ne!(a.id("msno-1"), b.id("msno-1"));
        assert!(a.id("x") >= 0);
        assert!(IdKey::from_secret("short").is_err());
        assert_eq!(format!("{a:?}"), "IdKey(<secret>)");
    }
}
