//! A deterministic music-platform generator writing the canonical tables.
//!
//! This first version models what the demo and the cluster tests need:
//! users with a favourite genre and an activity level, a catalogue with
//! Zipf-distributed popularity, and plays that follow taste (favourite-genre
//! songs are played more and skipped less). The same spec and seed always
//! give the same bytes. The richer simulator (latent churn hazard,
//! subscriptions, ground truth) grows from here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::SchemaRef;
use chrono::{Days, NaiveDate};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::error::{Error, Result};
use crate::schema;

/// Genres of the generated catalogue.
pub const GENRES: [&str; 8] = [
    "pop",
    "rock",
    "hiphop",
    "electronic",
    "jazz",
    "classical",
    "kpop",
    "latin",
];
const DEVICES: [&str; 4] = ["mobile", "desktop", "web", "speaker"];
const REGIONS: [&str; 5] = ["north", "south", "east", "west", "central"];
const CITIES: [&str; 6] = [
    "taipei",
    "kaohsiung",
    "taichung",
    "tainan",
    "hsinchu",
    "keelung",
];
const MS_PER_DAY: i64 = 86_400_000;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSpec {
    /// Number of users.
    pub users: u32,
    /// Number of songs.
    pub items: u32,
    /// Number of days of plays.
    pub days: u32,
    /// First day of plays.
    pub start: NaiveDate,
    /// Random seed; the output is a pure function of the spec.
    pub seed: u64,
}

impl Default for DataSpec {
    fn default() -> Self {
        Self {
            users: 2_000,
            items: 5_000,
            days: 30,
            start: NaiveDate::from_ymd_opt(2026, 1, 1).unwrap_or_default(),
            seed: 42,
        }
    }
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataSummary {
    /// Rows in `users`.
    pub users: u64,
    /// Rows in `items`.
    pub items: u64,
    /// Rows in `plays`, all days.
    pub plays: u64,
    /// Parquet files written.
    pub files: u64,
}

/// SplitMix64: tiny, fast and stable across platforms and crate versions.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64) -> Self {
        let mut r = Self(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        r.next_u64();
        r
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.f64() * n as f64) as usize % n.max(1)
    }
}

/// Samples indexes with probability proportional to 1 / rank.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize) -> Self {
        let mut acc = 0.0;
        let cdf = (1..=n)
            .map(|rank| {
                acc += 1.0 / rank as f64;
                acc
            })
            .collect();
        Self { cdf }
    }
    fn sample(&self, rng: &mut Rng) -> usize {
        let total = self.cdf.last().copied().unwrap_or(0.0);
        let x = rng.f64() * total;
        self.cdf.partition_point(|&c| c < x).min(self.cdf.len() - 1)
    }
}

struct User {
    id: i64,
    genre: usize,
    activity: f64,
    device: usize,
    region: usize,
}

struct Item {
    id: i64,
    genre: usize,
    secs: i32,
}

/// Writes `users/`, `items/` and `plays/day=YYYY-MM-DD/` under `out`,
/// calling `progress(done_days, total_days)` after each day.
pub fn generate(
    spec: &DataSpec,
    out: &Path,
    mut progress: impl FnMut(u32, u32),
) -> Result<DataSummary> {
    if spec.users == 0 || spec.items < GENRES.len() as u32 || spec.days == 0 {
        return Err(Error::InvalidSpec(format!(
            "need users >= 1, items >= {}, days >= 1 (got users={}, items={}, days={})",
            GENRES.len(),
            spec.users,
            spec.items,
            spec.days
        )));
    }
    let mut summary = DataSummary::default();
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    let start_ms = (spec.start - epoch).num_days() * MS_PER_DAY;

    // Catalogue: item ids are popularity ranks; genres interleave so every
    // genre has popular and niche songs.
    let mut rng = Rng::new(spec.seed, 1);
    let items: Vec<Item> = (0..spec.items as i64)
        .map(|i| Item {
            id: i + 1,
            genre: (i as usize * 7 + rng.below(3)) % GENRES.len(),
            secs: 120 + rng.below(240) as i32,
        })
        .collect();
    let mut by_genre: Vec<Vec<usize>> = vec![Vec::new(); GENRES.len()];
    for (idx, item) in items.iter().enumerate() {
        by_genre[item.genre].push(idx);
    }
    let global = Zipf::new(items.len());
    let per_genre: Vec<Zipf> = by_genre.iter().map(|v| Zipf::new(v.len().max(1))).collect();

    let mut rng = Rng::new(spec.seed, 2);
    let users: Vec<User> = (0..spec.users as i64)
        .map(|u| User {
            id: u + 1,
            genre: rng.below(GENRES.len()),
            // A few heavy listeners, many light ones.
            activity: 0.15 + 0.8 * rng.f64().powi(2),
            device: rng.below(DEVICES.len()),
            region: rng.below(REGIONS.len()),
        })
        .collect();

    let mut rng = Rng::new(spec.seed, 3);
    summary.users = users.len() as u64;
    write_parquet(
        &out.join("users"),
        "users.parquet",
        users_batch(&users, start_ms, &mut rng)?,
    )?;
    summary.items = items.len() as u64;
    write_parquet(
        &out.join("items"),
        "items.parquet",
        items_batch(&items, spec, &mut rng)?,
    )?;
    summary.files += 2;

    for day in 0..spec.days {
        // One stream per day keeps days independent of each other's volume.
        let mut rng = Rng::new(spec.seed, 1_000 + day as u64);
        let mut cols = PlayColumns::default();
        let day_ms = start_ms + day as i64 * MS_PER_DAY;
        for user in &users {
            if rng.f64() > user.activity {
                continue;
            }
            let sessions = 1 + rng.below(3);
            for _ in 0..sessions {
                let mut ts = day_ms + rng.below(MS_PER_DAY as usize - 3_600_000) as i64;
                let len = 1 + rng.below(12);
                for _ in 0..len {
                    let loyal = rng.f64() < 0.7;
                    let idx = if loyal {
                        by_genre[user.genre][per_genre[user.genre].sample(&mut rng)]
                    } else {
                        global.sample(&mut rng)
                    };
                    let item = &items[idx];
                    let liked = item.genre == user.genre;
                    let completes = rng.f64() < if liked { 0.8 } else { 0.45 };
                    let played = if completes {
                        item.secs
                    } else {
                        5 + rng.below(item.secs as usize / 2) as i32
                    };
                    let source = match rng.below(10) {
                        0..=2 => 1, // playlist
                        3..=5 => 2, // recommendation
                        6 => 0,     // search
                        7..=8 => 3, // radio
                        _ => 4,     // other
                    };
                    let device = if rng.f64() < 0.85 {
                        user.device
                    } else {
                        rng.below(DEVICES.len())
                    };
                    cols.push(user, item, ts, played, source, device);
                    ts += played as i64 * 1_000 + rng.below(5_000) as i64;
                }
            }
        }
        let date = spec.start + Days::new(day as u64);
        summary.plays += cols.user_id.len() as u64;
        write_parquet(
            &out.join("plays")
                .join(format!("day={}", date.format("%Y-%m-%d"))),
            "part-00000.parquet",
            cols.finish()?,
        )?;
        summary.files += 1;
        progress(day + 1, spec.days);
    }
    Ok(summary)
}

#[derive(Default)]
struct PlayColumns {
    user_id: Vec<i64>,
    item_id: Vec<i64>,
    ts: Vec<i64>,
    played_secs: Vec<i32>,
    item_secs: Vec<i32>,
    source: Vec<&'static str>,
    device: Vec<&'static str>,
    region: Vec<&'static str>,
}

impl PlayColumns {
    fn push(
        &mut self,
        user: &User,
        item: &Item,
        ts: i64,
        played: i32,
        source: usize,
        device: usize,
    ) {
        self.user_id.push(user.id);
        self.item_id.push(item.id);
        self.ts.push(ts);
        self.played_secs.push(played);
        self.item_secs.push(item.secs);
        self.source.push(schema::PLAY_SOURCES[source]);
        self.device.push(DEVICES[device]);
        self.region.push(REGIONS[user.region]);
    }

    fn finish(self) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(self.user_id)),
            Arc::new(Int64Array::from(self.item_id)),
            Arc::new(TimestampMillisecondArray::from(self.ts).with_timezone("UTC")),
            Arc::new(Int32Array::from(self.played_secs)),
            Arc::new(Int32Array::from(self.item_secs)),
            Arc::new(StringArray::from(self.source)),
            Arc::new(StringArray::from(self.device)),
            Arc::new(StringArray::from(self.region)),
        ];
        batch(schema::plays(), columns)
    }
}

fn users_batch(users: &[User], start_ms: i64, rng: &mut Rng) -> Result<RecordBatch> {
    let registered: Vec<i64> = users
        .iter()
        .map(|_| start_ms - (1 + rng.below(3 * 365)) as i64 * MS_PER_DAY)
        .collect();
    let city: Vec<&str> = users
        .iter()
        .map(|_| CITIES[rng.below(CITIES.len())])
        .collect();
    let birth: Vec<i32> = users.iter().map(|_| 1960 + rng.below(50) as i32).collect();
    let gender: Vec<Option<&str>> = users
        .iter()
        .map(|_| match rng.below(3) {
            0 => Some("female"),
            1 => Some("male"),
            _ => None,
        })
        .collect();
    let via: Vec<&str> = users
        .iter()
        .map(|_| ["app", "web", "partner"][rng.below(3)])
        .collect();
    let consent: Vec<bool> = users.iter().map(|_| rng.f64() < 0.95).collect();
    batch(
        schema::users(),
        vec![
            Arc::new(Int64Array::from_iter_values(users.iter().map(|u| u.id))),
            Arc::new(TimestampMillisecondArray::from(registered).with_timezone("UTC")),
            Arc::new(StringArray::from(city)),
            Arc::new(Int32Array::from(birth)),
            Arc::new(StringArray::from(gender)),
            Arc::new(StringArray::from(via)),
            Arc::new(BooleanArray::from(consent)),
        ],
    )
}

fn items_batch(items: &[Item], spec: &DataSpec, rng: &mut Rng) -> Result<RecordBatch> {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    let start_days = (spec.start - epoch).num_days() as i32;
    batch(
        schema::items(),
        vec![
            Arc::new(Int64Array::from_iter_values(items.iter().map(|i| i.id))),
            Arc::new(Int64Array::from_iter_values(
                items.iter().map(|i| 1 + (i.id - 1) / 12),
            )),
            Arc::new(StringArray::from_iter_values(
                items.iter().map(|i| GENRES[i.genre]),
            )),
            Arc::new(StringArray::from_iter_values(
                items
                    .iter()
                    .map(|i| ["zh", "en", "ko", "es", "ja"][i.genre % 5]),
            )),
            Arc::new(Int32Array::from_iter_values(items.iter().map(|i| i.secs))),
            Arc::new(Date32Array::from_iter_values(
                items.iter().map(|_| start_days - rng.below(3_650) as i32),
            )),
        ],
    )
}

fn batch(schema: SchemaRef, columns: Vec<ArrayRef>) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// Writes one Parquet file atomically: to a hidden temporary name, then renamed.
pub fn write_parquet(dir: &Path, file_name: &str, batch: RecordBatch) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let path = dir.join(file_name);
    let tmp = dir.join(format!(".{file_name}.tmp"));
    let file = std::fs::File::create(&tmp).map_err(Error::io(&tmp))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props))?;
    writer.write(&batch)?;
    writer.close()?;
    std::fs::rename(&tmp, &path).map_err(Error::io(&path))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> DataSpec {
        DataSpec {
            users: 50,
            items: 200,
            days: 3,
            ..Default::default()
        }
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let (a, b, c) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let sa = generate(&small(), a.path(), |_, _| {}).unwrap();
        let sb = generate(&small(), b.path(), |_, _| {}).unwrap();
        let other = DataSpec { seed: 7, ..small() };
        generate(&other, c.path(), |_, _| {}).unwrap();
        assert_eq!(sa, sb);
        assert!(sa.plays > 0);
        let day = "plays/day=2026-01-02/part-00000.parquet";
        let read = |d: &tempfile::TempDir| std::fs::read(d.path().join(day)).unwrap();
        assert_eq!(read(&a), read(&b));
        assert_ne!(read(&a), read(&c));
    }

    #[test]
    fn rejects_empty_specs_and_reports_progress() {
        let dir = tempfile::tempdir().unwrap();
        let bad = DataSpec {
            users: 0,
            ..small()
        };
        assert!(matches!(
            generate(&bad, dir.path(), |_, _| {}),
            Err(Error::InvalidSpec(_))
        ));
        let mut seen = Vec::new();
        generate(&small(), dir.path(), |d, t| seen.push((d, t))).unwrap();
        assert_eq!(seen, vec![(1, 3), (2, 3), (3, 3)]);
    }

    #[test]
    fn zipf_prefers_low_ranks() {
        let z = Zipf::new(100);
        let mut rng = Rng::new(1, 1);
        let hits = (0..10_000).filter(|_| z.sample(&mut rng) < 10).count();
        // Ranks 1..10 hold H(10)/H(100) ≈ 56% of the mass.
        assert!((5_000..6_200).contains(&hits), "{hits}");
    }
}
