//! A deterministic music-platform generator writing the canonical tables.
//!
//! A simulator, not noise: each user has a latent state — genre taste,
//! activity and its drift, a preferred time slot and device, price
//! sensitivity, satisfaction, complaints — that drives their plays (songs by
//! taste and Zipf popularity, new releases over time, skips when a song fits
//! the taste badly), interactions (favourites, playlist actions, comments,
//! complaints), subscription payments (renewals, auto-renew, a list-price
//! rise half-way, cancellations) and churn (a daily hazard rising with
//! falling engagement, complaints, price and dissatisfaction; some churned
//! users return). At the cutoff the ground truth is written: each user's
//! probability, from that state, of no activity within 7, 15 and 30 days.
//!
//! The same spec and seed always give the same bytes. Days are generated one
//! after another, so memory holds the users' state and at most
//! [`PART_ROWS`] plays.

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
/// Plays per Parquet part file.
pub const PART_ROWS: usize = 1 << 20;

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
    /// Day the ground truth is taken at (default: 30 days before the end,
    /// or the middle for shorter spans).
    pub cutoff: Option<NaiveDate>,
}

impl DataSpec {
    /// The ground-truth cutoff date.
    pub fn cutoff(&self) -> NaiveDate {
        self.cutoff.unwrap_or_else(|| {
            let back = if self.days > 45 {
                self.days - 30
            } else {
                self.days / 2
            };
            self.start + Days::new(u64::from(back))
        })
    }
}

impl Default for DataSpec {
    fn default() -> Self {
        Self {
            users: 2_000,
            items: 5_000,
            days: 30,
            start: NaiveDate::from_ymd_opt(2026, 1, 1).unwrap_or_default(),
            seed: 42,
            cutoff: None,
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
    /// Rows in `interactions`.
    pub interactions: u64,
    /// Rows in `payments`.
    pub payments: u64,
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

/// A user's latent state: what drives their plays and their churn. None of
/// it is written to the canonical tables; the ground truth is derived from it.
struct User {
    id: i64,
    /// Genre preference, summing to 1.
    taste: [f64; GENRES.len()],
    /// The genre with the most taste.
    favourite: usize,
    /// Expected sessions per day now.
    activity: f64,
    /// Daily log-drift of `activity` (most users slowly lose interest).
    drift: f64,
    /// 0 commute, 1 workout, 2 night, 3 daytime.
    slot: usize,
    device: usize,
    region: usize,
    /// 0..1: how much a price rise raises the churn hazard.
    price_sensitivity: f64,
    /// 0..1, moved by how well plays match taste (completions).
    satisfaction: f64,
    /// Exponentially decayed count of complaints.
    complaints: f64,
    /// Alive (subscribed and listening) or churned.
    alive: bool,
    /// Subscription expiry, ms.
    expires_ms: i64,
    auto_renew: bool,
    /// `activity` when the user joined (engagement = activity / initial).
    initial_activity: f64,
}

/// Hour windows of each time slot (start hour, length in hours).
const SLOTS: [&[(i64, i64)]; 4] = [
    &[(7, 2), (17, 2)],
    &[(6, 1), (18, 2)],
    &[(21, 3)],
    &[(10, 6)],
];
/// Monthly list price of the subscription before and after the price rise.
const PRICES: (f64, f64) = (149.0, 169.0);
const PLAN_DAYS: i64 = 30;
/// Base daily churn hazard; state multiplies it (about 5–25 % a month overall).
const BASE_HAZARD: f64 = 0.002;

impl User {
    /// Today's churn hazard from the latent state.
    fn hazard(&self, price_rise: bool) -> f64 {
        let engagement = (self.activity / self.initial_activity).min(1.5);
        let x = 2.5 * (1.0 - engagement)
            + 0.8 * self.complaints
            + if price_rise {
                1.5 * self.price_sensitivity
            } else {
                0.0
            }
            + 3.0 * (0.65 - self.satisfaction);
        (BASE_HAZARD * x.exp()).clamp(0.0002, 0.25)
    }

    /// Probability of no play on a day while alive (Poisson sessions).
    fn quiet_day(&self) -> f64 {
        (-self.activity).exp()
    }

    /// Probability of churning (leaving) within `h` days.
    fn p_churn(&self, h: u32, price_rise: bool) -> f64 {
        1.0 - (1.0 - self.hazard(price_rise)).powi(h as i32)
    }

    /// Probability of no activity in the next `h` days: churning at some day
    /// (then silent), or staying alive but quiet every day. The state is
    /// taken as constant over the horizon.
    fn p_no_activity(&self, h: u32, price_rise: bool) -> f64 {
        let hz = self.hazard(price_rise);
        let r = (1.0 - hz) * self.quiet_day();
        let stay = r.powi(h as i32);
        hz * (1.0 - stay) / (1.0 - r).max(1e-12) + stay
    }

    /// Probability of a lapse within `h` days — a run of `lapse` days
    /// (at most `h`) without a play, the churn label of `plans::churn_labels_sql` —
    /// by dynamic programming over the days: alive or gone, and the length
    /// of the current quiet run. The state is taken as constant.
    fn p_lapse(&self, h: u32, lapse: u32, price_rise: bool) -> f64 {
        let need = h.min(lapse) as usize;
        let (hz, q) = (self.hazard(price_rise), self.quiet_day());
        // alive[r], gone[r]: probability of a quiet run of r days, no lapse yet.
        let mut alive = vec![0.0; need];
        let mut gone = vec![0.0; need];
        alive[0] = 1.0;
        let mut lapsed = 0.0;
        for _ in 0..h {
            let mut next_alive = vec![0.0; need];
            let mut next_gone = vec![0.0; need];
            for r in 0..need {
                let quiet_alive = alive[r] * (1.0 - hz) * q;
                next_alive[0] += alive[r] * (1.0 - hz) * (1.0 - q);
                let to_gone = alive[r] * hz + gone[r];
                if r + 1 == need {
                    lapsed += quiet_alive + to_gone;
                } else {
                    next_alive[r + 1] += quiet_alive;
                    next_gone[r + 1] += to_gone;
                }
            }
            alive = next_alive;
            gone = next_gone;
        }
        lapsed
    }
}

/// A Poisson draw (Knuth; small means only).
fn poisson(rng: &mut Rng, mean: f64) -> usize {
    let limit = (-mean).exp();
    let (mut k, mut p) = (0, rng.f64());
    while p > limit && k < 50 {
        k += 1;
        p *= rng.f64();
    }
    k
}

struct Item {
    id: i64,
    genre: usize,
    secs: i32,
    /// Days after the start when the song is released (<= 0: before).
    release_day: i64,
}

/// Where one day's rows collect before they are written.
struct DayOut<'a> {
    out: &'a Path,
    date: NaiveDate,
    plays: PlayColumns,
    plays_parts: usize,
    interactions: EventColumns,
    payments: PaymentColumns,
    summary: &'a mut DataSummary,
}

impl DayOut<'_> {
    fn flush_plays(&mut self) -> Result<()> {
        if self.plays.user_id.is_empty() {
            return Ok(());
        }
        let cols = std::mem::take(&mut self.plays);
        self.summary.plays += cols.user_id.len() as u64;
        write_parquet(
            &self
                .out
                .join("plays")
                .join(format!("day={}", self.date.format("%Y-%m-%d"))),
            &format!("part-{:05}.parquet", self.plays_parts),
            cols.finish()?,
        )?;
        self.plays_parts += 1;
        self.summary.files += 1;
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        self.flush_plays()?;
        let name = format!("part-{}.parquet", self.date.format("%Y-%m-%d"));
        if !self.interactions.user_id.is_empty() {
            self.summary.interactions += self.interactions.user_id.len() as u64;
            write_parquet(
                &self.out.join("interactions"),
                &name,
                self.interactions.finish()?,
            )?;
            self.summary.files += 1;
        }
        if !self.payments.user_id.is_empty() {
            self.summary.payments += self.payments.user_id.len() as u64;
            write_parquet(&self.out.join("payments"), &name, self.payments.finish()?)?;
            self.summary.files += 1;
        }
        Ok(())
    }
}

/// Writes `users/`, `items/`, `plays/day=YYYY-MM-DD/`, `interactions/`,
/// `payments/` and `ground_truth/cutoff=YYYY-MM-DD/` under `out`, calling
/// `progress(done_days, total_days)` after each day. Memory stays bounded:
/// the users' state, one day's rows at most [`PART_ROWS`] plays at a time.
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
    let cutoff = spec.cutoff();
    let cutoff_day = (cutoff - spec.start).num_days();
    if !(0..spec.days as i64).contains(&cutoff_day) {
        return Err(Error::InvalidSpec(format!(
            "the cutoff {cutoff} must fall within the generated days ({} + {} days)",
            spec.start, spec.days
        )));
    }
    let mut summary = DataSummary::default();
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    let start_ms = (spec.start - epoch).num_days() * MS_PER_DAY;
    let price_rise_day = spec.days as i64 / 2;

    // Catalogue: item ids are popularity ranks; genres interleave so every
    // genre has popular and niche songs; a few songs are released during
    // the generated period and are hot for a while.
    let mut rng = Rng::new(spec.seed, 1);
    let items: Vec<Item> = (0..spec.items as i64)
        .map(|i| Item {
            id: i + 1,
            genre: (i as usize * 7 + rng.below(3)) % GENRES.len(),
            secs: 120 + rng.below(240) as i32,
            release_day: if rng.f64() < 0.03 {
                rng.below(spec.days as usize) as i64
            } else {
                -(rng.below(3_650) as i64) - 1
            },
        })
        .collect();
    let mut by_genre: Vec<Vec<usize>> = vec![Vec::new(); GENRES.len()];
    for (idx, item) in items.iter().enumerate() {
        by_genre[item.genre].push(idx);
    }
    let global = Zipf::new(items.len());
    let per_genre: Vec<Zipf> = by_genre.iter().map(|v| Zipf::new(v.len().max(1))).collect();

    let mut rng = Rng::new(spec.seed, 2);
    let mut users: Vec<User> = (0..spec.users as i64)
        .map(|u| {
            // Taste: one strong genre, one secondary, a little of the rest.
            let mut taste = [0.02; GENRES.len()];
            let favourite = rng.below(GENRES.len());
            taste[favourite] += 0.6 + 0.3 * rng.f64();
            taste[rng.below(GENRES.len())] += 0.25 * rng.f64();
            let sum: f64 = taste.iter().sum();
            taste.iter_mut().for_each(|t| *t /= sum);
            let activity = 0.2 + 2.3 * rng.f64().powi(2);
            User {
                id: u + 1,
                taste,
                favourite,
                activity,
                initial_activity: activity,
                drift: -0.012 * rng.f64().powi(2) + 0.004 * (rng.f64() - 0.5),
                slot: rng.below(SLOTS.len()),
                device: rng.below(DEVICES.len()),
                region: rng.below(REGIONS.len()),
                price_sensitivity: rng.f64(),
                satisfaction: 0.55 + 0.3 * rng.f64(),
                complaints: 0.0,
                alive: true,
                expires_ms: start_ms + (1 + rng.below(PLAN_DAYS as usize)) as i64 * MS_PER_DAY,
                auto_renew: rng.f64() < 0.7,
            }
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

    for day in 0..spec.days as i64 {
        let price_rise = day >= price_rise_day;
        if day == cutoff_day {
            write_truth(out, cutoff, &users, price_rise)?;
            summary.files += 1;
        }
        // One stream per day keeps days independent of each other's volume.
        let mut rng = Rng::new(spec.seed, 1_000 + day as u64);
        let date = spec.start + Days::new(day as u64);
        let day_ms = start_ms + day * MS_PER_DAY;
        let mut today = DayOut {
            out,
            date,
            plays: PlayColumns::default(),
            plays_parts: 0,
            interactions: EventColumns::default(),
            payments: PaymentColumns::default(),
            summary: &mut summary,
        };
        let list_price = if price_rise { PRICES.1 } else { PRICES.0 };
        for user in &mut users {
            if !user.alive {
                // Some churned users come back and subscribe again.
                if rng.f64() < 0.002 {
                    user.alive = true;
                    user.satisfaction = 0.6;
                    user.complaints = 0.0;
                    user.activity = user.initial_activity * 0.6;
                    user.expires_ms = day_ms + PLAN_DAYS * MS_PER_DAY;
                    today.payments.push(
                        user.id,
                        day_ms + 3_600_000,
                        list_price,
                        list_price,
                        user.expires_ms,
                        user.auto_renew,
                        false,
                    );
                }
                continue;
            }
            if rng.f64() < user.hazard(price_rise) {
                user.alive = false;
                today.payments.push(
                    user.id,
                    day_ms + rng.below(MS_PER_DAY as usize) as i64,
                    0.0,
                    list_price,
                    user.expires_ms,
                    false,
                    true,
                );
                continue;
            }
            // Renewal at expiry.
            if user.expires_ms <= day_ms + MS_PER_DAY {
                let pays = user.auto_renew || rng.f64() < 0.8;
                if pays {
                    let discount = if user.price_sensitivity > 0.8 && rng.f64() < 0.3 {
                        0.8
                    } else {
                        1.0
                    };
                    user.expires_ms += PLAN_DAYS * MS_PER_DAY;
                    today.payments.push(
                        user.id,
                        day_ms + rng.below(MS_PER_DAY as usize) as i64,
                        list_price * discount,
                        list_price,
                        user.expires_ms,
                        user.auto_renew,
                        false,
                    );
                } else {
                    user.alive = false;
                    continue;
                }
            }
            let (mut played, mut completed) = (0usize, 0usize);
            for _ in 0..poisson(&mut rng, user.activity).min(8) {
                let windows = SLOTS[user.slot];
                let in_slot = rng.f64() < 0.75;
                let hour = if in_slot {
                    let (h0, len) = windows[rng.below(windows.len())];
                    h0 + rng.below(len as usize) as i64
                } else {
                    rng.below(24) as i64
                };
                let mut ts = day_ms + hour * 3_600_000 + rng.below(3_600_000) as i64;
                let device = if rng.f64() < 0.85 {
                    user.device
                } else {
                    rng.below(DEVICES.len())
                };
                for _ in 0..1 + poisson(&mut rng, 6.0) {
                    // A session ends at midnight: every play lies in its day partition.
                    if ts >= day_ms + MS_PER_DAY {
                        break;
                    }
                    // Genre by taste (or a popular pick); song by popularity, new releases boosted.
                    let idx = if rng.f64() < 0.8 {
                        let mut x = rng.f64();
                        let genre = user
                            .taste
                            .iter()
                            .position(|t| {
                                x -= t;
                                x < 0.0
                            })
                            .unwrap_or(user.favourite);
                        by_genre[genre][per_genre[genre].sample(&mut rng)]
                    } else {
                        global.sample(&mut rng)
                    };
                    let mut item = &items[idx];
                    if item.release_day > day {
                        item = &items[global.sample(&mut rng)];
                        if item.release_day > day {
                            continue;
                        }
                    }
                    let fit = user.taste[item.genre] / user.taste[user.favourite];
                    let completes = rng.f64() < 0.25 + 0.65 * fit;
                    let secs = if completes {
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
                    today
                        .plays
                        .push(user.id, item, ts, secs, source, device, user.region);
                    played += 1;
                    completed += usize::from(completes);
                    if completes && fit > 0.5 && rng.f64() < 0.03 {
                        today
                            .interactions
                            .push(user.id, Some(item.id), ts + 1_000, "favorite");
                    }
                    if rng.f64() < 0.01 {
                        today
                            .interactions
                            .push(user.id, Some(item.id), ts + 2_000, "playlist_add");
                    }
                    if rng.f64() < 0.003 {
                        today
                            .interactions
                            .push(user.id, Some(item.id), ts + 3_000, "comment");
                    }
                    ts += secs as i64 * 1_000 + rng.below(5_000) as i64;
                    if today.plays.user_id.len() >= PART_ROWS {
                        today.flush_plays()?;
                    }
                }
                if rng.f64() < 0.01 {
                    today
                        .interactions
                        .push(user.id, None, ts, "playlist_create");
                }
            }
            // Satisfaction follows how well today's songs fitted; poor fits
            // bring complaints; engagement drifts.
            if played > 0 {
                let rate = completed as f64 / played as f64;
                user.satisfaction = 0.9 * user.satisfaction + 0.1 * rate;
            }
            user.complaints *= 0.93;
            if rng.f64() < 0.01 * (1.0 - user.satisfaction) {
                user.complaints += 1.0;
                today.interactions.push(
                    user.id,
                    None,
                    day_ms + rng.below(MS_PER_DAY as usize) as i64,
                    "complaint",
                );
            }
            user.activity =
                (user.activity * (user.drift + 0.03 * (rng.f64() - 0.5)).exp()).clamp(0.02, 4.0);
        }
        today.finish()?;
        progress(day as u32 + 1, spec.days);
    }
    Ok(summary)
}

/// Quiet days that make a lapse: `PlanParams::lapse_days`' default.
pub const LAPSE_DAYS: u32 = 7;

/// The ground truth at the cutoff, from each user's latent state (taken as
/// constant over the horizon): `p_churn_<h>d`, the probability of leaving
/// within h days (rises with h), and `p_quiet_<h>d`, the probability of no
/// activity at all in the h days after the cutoff — the probability of the
/// DESIGN.md "no play in (T, T + h]" label — and `p_lapse_<h>d`, the
/// probability of the plans' churn label (a run of 7 days without a
/// play inside h days), so oracle AUCs against either label are computable.
/// Users already gone at the cutoff have `alive = false` and probability 1.
fn write_truth(out: &Path, cutoff: NaiveDate, users: &[User], price_rise: bool) -> Result<()> {
    use arrow::array::Float64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    let column = |f: &dyn Fn(&User) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(
            users.iter().map(|u| if u.alive { f(u) } else { 1.0 }),
        ))
    };
    let mut fields = vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("alive", DataType::Boolean, false),
        Field::new("hazard", DataType::Float64, false),
    ];
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(users.iter().map(|u| u.id))),
        Arc::new(BooleanArray::from(
            users.iter().map(|u| u.alive).collect::<Vec<_>>(),
        )),
        column(&|u| u.hazard(price_rise)),
    ];
    for h in [7u32, 15, 30] {
        fields.push(Field::new(
            format!("p_churn_{h}d"),
            DataType::Float64,
            false,
        ));
        columns.push(column(&|u| u.p_churn(h, price_rise)));
    }
    for h in [7u32, 15, 30] {
        fields.push(Field::new(
            format!("p_quiet_{h}d"),
            DataType::Float64,
            false,
        ));
        columns.push(column(&|u| u.p_no_activity(h, price_rise)));
    }
    for h in [7u32, 15, 30] {
        fields.push(Field::new(
            format!("p_lapse_{h}d"),
            DataType::Float64,
            false,
        ));
        columns.push(column(&|u| u.p_lapse(h, LAPSE_DAYS, price_rise)));
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    write_parquet(
        &out.join("ground_truth")
            .join(format!("cutoff={}", cutoff.format("%Y-%m-%d"))),
        "truth.parquet",
        batch,
    )?;
    Ok(())
}

#[derive(Default)]
struct EventColumns {
    user_id: Vec<i64>,
    item_id: Vec<Option<i64>>,
    ts: Vec<i64>,
    kind: Vec<&'static str>,
}

impl EventColumns {
    fn push(&mut self, user: i64, item: Option<i64>, ts: i64, kind: &'static str) {
        self.user_id.push(user);
        self.item_id.push(item);
        self.ts.push(ts);
        self.kind.push(kind);
    }

    fn finish(&mut self) -> Result<RecordBatch> {
        let n = self.user_id.len();
        batch(
            schema::interactions(),
            vec![
                Arc::new(Int64Array::from(std::mem::take(&mut self.user_id))),
                Arc::new(Int64Array::from(std::mem::take(&mut self.item_id))),
                Arc::new(
                    TimestampMillisecondArray::from(std::mem::take(&mut self.ts))
                        .with_timezone("UTC"),
                ),
                Arc::new(StringArray::from(std::mem::take(&mut self.kind))),
                Arc::new(arrow::array::Float32Array::from(vec![None; n])),
            ],
        )
    }
}

#[derive(Default)]
struct PaymentColumns {
    user_id: Vec<i64>,
    ts: Vec<i64>,
    amount: Vec<f64>,
    list_price: Vec<f64>,
    expires: Vec<i64>,
    auto_renew: Vec<bool>,
    cancel: Vec<bool>,
}

impl PaymentColumns {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        user: i64,
        ts: i64,
        amount: f64,
        list: f64,
        expires: i64,
        auto_renew: bool,
        cancel: bool,
    ) {
        self.user_id.push(user);
        self.ts.push(ts);
        self.amount.push(amount);
        self.list_price.push(list);
        self.expires.push(expires);
        self.auto_renew.push(auto_renew);
        self.cancel.push(cancel);
    }

    fn finish(&mut self) -> Result<RecordBatch> {
        let n = self.user_id.len();
        batch(
            schema::payments(),
            vec![
                Arc::new(Int64Array::from(std::mem::take(&mut self.user_id))),
                Arc::new(
                    TimestampMillisecondArray::from(std::mem::take(&mut self.ts))
                        .with_timezone("UTC"),
                ),
                Arc::new(arrow::array::Float64Array::from(std::mem::take(
                    &mut self.amount,
                ))),
                Arc::new(Int32Array::from(vec![None; n])),
                Arc::new(StringArray::from(vec!["subscription"; n])),
                Arc::new(Int32Array::from(vec![Some(PLAN_DAYS as i32); n])),
                Arc::new(arrow::array::Float64Array::from(std::mem::take(
                    &mut self.list_price,
                ))),
                Arc::new(
                    TimestampMillisecondArray::from(std::mem::take(&mut self.expires))
                        .with_timezone("UTC"),
                ),
                Arc::new(BooleanArray::from(std::mem::take(&mut self.auto_renew))),
                Arc::new(BooleanArray::from(std::mem::take(&mut self.cancel))),
            ],
        )
    }
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
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        user: i64,
        item: &Item,
        ts: i64,
        played: i32,
        source: usize,
        device: usize,
        region: usize,
    ) {
        self.user_id.push(user);
        self.item_id.push(item.id);
        self.ts.push(ts);
        self.played_secs.push(played);
        self.item_secs.push(item.secs);
        self.source.push(schema::PLAY_SOURCES[source]);
        self.device.push(DEVICES[device]);
        self.region.push(REGIONS[region]);
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

/// Writes `contents` to `path` atomically ([`encore_common::fs::write_atomic`]).
pub fn write_atomic(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    encore_common::fs::write_atomic(path, contents).map_err(Error::io(path))
}

/// Writes one Parquet file atomically
/// ([`encore_common::fs::replace_atomic`]: two writers of the same file
/// never interleave, and a failed write leaves no temporary file).
pub fn write_parquet(dir: &Path, file_name: &str, batch: RecordBatch) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let path = dir.join(file_name);
    let write = |tmp: &Path| -> Result<()> {
        let file = std::fs::File::create(tmp).map_err(Error::io(tmp))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .build();
        let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props))?;
        writer.write(&batch)?;
        writer.close()?;
        Ok(())
    };
    encore_common::fs::replace_atomic(&path, write, Error::io(&path))?;
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

    /// Writers racing on one file each write their own temporary file: the
    /// file left is one writer's whole batch, and no temporary remains.
    #[test]
    fn concurrent_parquet_writers_each_land_a_whole_file() {
        use arrow::datatypes::{DataType, Field, Schema};
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        std::thread::scope(|s| {
            for writer in 0..6i64 {
                let (dir, schema) = (dir.path(), schema.clone());
                s.spawn(move || {
                    let values: Vec<i64> = vec![writer; 50_000];
                    let column: ArrayRef = Arc::new(Int64Array::from(values));
                    for _ in 0..5 {
                        let batch = RecordBatch::try_new(schema.clone(), vec![column.clone()]);
                        write_parquet(dir, "part.parquet", batch.unwrap()).unwrap();
                    }
                });
            }
        });
        let file = std::fs::File::open(dir.path().join("part.parquet")).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        let mut values = Vec::new();
        for batch in reader {
            let batch = batch.unwrap();
            let column = batch
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            values.extend(column.values().iter().copied());
        }
        assert_eq!(values.len(), 50_000);
        assert!(
            values.iter().all(|&v| v == values[0]),
            "rows of several writers"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["part.parquet"]);
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
