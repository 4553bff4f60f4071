//! Feature and label plans over the canonical tables, point-in-time at a
//! cutoff T: features read only rows with `ts < T`, labels only rows with
//! `T < ts <= T + H`. Each plan is SQL written out in full for its
//! parameters, so a data scientist can read exactly what a feature means
//! (`user_activity_sql(&params)` prints it). They run on any DataFusion
//! `SessionContext`: in process or on the Ballista cluster.
//!
//! Users who did not consent (`users.consent = false`) are left out of every
//! plan unless [`PlanParams::include_unconsented`] is set.

use chrono::NaiveDate;
use datafusion::prelude::{DataFrame, SessionContext};

use crate::error::{Error, Result};

mod user_vector;

use user_vector::{Families, user_vector_sql};

/// Session settings the plans are tuned for; every Encore session (the
/// CLI's, the training worker's) starts from them and `--conf` overrides
/// them (measurements: benches/RESULTS.md, "Feature plans"):
/// - 32k-row batches;
/// - a scan of a Hive-partitioned table (`plays/day=...`) keeps each day's
///   files together (days dealt round-robin over the scan's partitions), so
///   an aggregation grouped by `day` (the user vector's per-bucket sums)
///   needs no shuffle. DataFusion does so when that makes at least this
///   many partitions (2): a table of one day is split by byte ranges as
///   usual, one of 3 days is read by 3 partitions, not `target_partitions`.
pub const SESSION_DEFAULTS: [(&str, &str); 2] = [
    ("datafusion.execution.batch_size", "32768"),
    ("datafusion.optimizer.preserve_file_partitions", "2"),
];

/// Parameters shared by the plans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanParams {
    /// The cutoff T (midnight UTC of this day).
    pub cutoff: NaiveDate,
    /// Feature windows in days, each ending at T.
    pub windows: Vec<u32>,
    /// Label horizons in days, each starting at T.
    pub horizons: Vec<u32>,
    /// A user is labelled only if active in this many days before T.
    pub lookback_days: u32,
    /// Days without a play that make a lapse (churn) inside a horizon.
    pub lapse_days: u32,
    /// Keep users whose `users.consent` is false (default: excluded, so
    /// training tables never hold them). Needs a registered `users` table
    /// when false.
    pub include_unconsented: bool,
}

impl PlanParams {
    /// Windows 7/14/30/90, horizons 7/15/30, 30-day lookback, 7-day lapse.
    pub fn at(cutoff: NaiveDate) -> Self {
        Self {
            cutoff,
            windows: vec![7, 14, 30, 90],
            horizons: vec![7, 15, 30],
            lookback_days: 30,
            lapse_days: 7,
            include_unconsented: false,
        }
    }

    fn check(&self) -> Result<()> {
        if self.windows.is_empty() || self.windows.contains(&0) {
            return Err(Error::InvalidSpec(
                "feature windows must be 1 day or more".into(),
            ));
        }
        if self.horizons.is_empty()
            || self.horizons.contains(&0)
            || self.lookback_days == 0
            || self.lapse_days == 0
        {
            return Err(Error::InvalidSpec(
                "label horizons, the lookback and the lapse must be 1 day or more".into(),
            ));
        }
        Ok(())
    }

    /// `AND` clause keeping consenting users only (empty when all are kept).
    fn consent(&self, column: &str) -> String {
        if self.include_unconsented {
            String::new()
        } else {
            format!(" AND {column} IN (SELECT user_id FROM users WHERE consent)")
        }
    }

    fn t(&self) -> String {
        format!("TIMESTAMP '{}T00:00:00Z'", self.cutoff.format("%Y-%m-%d"))
    }

    /// Days without a play that make a lapse at every horizon: `lapse_days`,
    /// or the shortest horizon if shorter.
    pub fn lapse_run(&self) -> u32 {
        self.horizons
            .iter()
            .copied()
            .min()
            .unwrap_or(self.lapse_days)
            .min(self.lapse_days)
    }

    /// T as whole days since 1970-01-01 (the plans' `day_number`).
    fn t_day(&self) -> i64 {
        (self.cutoff - NaiveDate::default()).num_days()
    }
}

/// Plays more than this far apart belong to different listening sessions.
pub const SESSION_GAP_SECS: u32 = 30 * 60;

/// Per-user activity features from `plays` in the longest window before T:
/// for each window w, plays, listening seconds, active days, sessions (runs
/// of plays with gaps of at most [`SESSION_GAP_SECS`]), completion and skip
/// rates; the last-7-days trend against the 21 days before; days since the
/// last play. One row per user with a play in the longest window.
pub fn user_activity_sql(p: &PlanParams) -> Result<String> {
    p.check()?;
    Ok(user_vector_sql(
        p,
        Families {
            activity: true,
            habits: false,
            engagement: false,
        },
        None,
    ))
}

/// Which optional tables the user feature vector may read (plays and
/// users are always needed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inputs {
    /// `interactions` exists: engagement and early warnings.
    pub interactions: bool,
    /// `payments` exists: the payment profile and lifecycle.
    pub payments: bool,
}

impl Inputs {
    /// Every table.
    pub const ALL: Self = Self {
        interactions: true,
        payments: true,
    };

    /// The tables present as folders in a data directory.
    pub fn in_dir(data: &std::path::Path) -> Self {
        Self {
            interactions: data.join("interactions").is_dir(),
            payments: data.join("payments").is_dir(),
        }
    }
}

/// The full user feature vector at T, one row per user who played in the
/// longest window: activity, habits, and (when `inputs` has their tables)
/// engagement with early warnings and the payment profile with lifecycle.
/// Each family's columns are those of its own plan, null for a user the
/// family has no row for (no plays in its days, no payments), as a left
/// join on `user_id` would give; one pass over `plays` computes them all.
pub fn user_features_sql(p: &PlanParams, inputs: Inputs) -> Result<String> {
    p.check()?;
    let profile = if inputs.payments {
        Some(user_profile_sql(p)?)
    } else {
        None
    };
    let families = Families {
        activity: true,
        habits: true,
        engagement: inputs.interactions,
    };
    Ok(user_vector_sql(p, families, profile))
}

/// Churn labels: for users with a play in the `lookback_days` before T,
/// `churn_<h>d` is true when (T, T + h] holds a run of at least L whole
/// days without a play — the user lapsed within h days — where L is
/// `lapse_days` or the shortest horizon if that is shorter. At the shortest
/// horizon (when it is <= `lapse_days`) this is DESIGN.md's "no play in
/// (T, T + h]"; longer horizons also count a lapse that starts after T. One
/// L for every horizon makes the labels grow with h (churn_7d implies
/// churn_15d implies churn_30d), as the churn model's monotone heads
/// assume. Days are UTC days from T.
pub fn churn_labels_sql(p: &PlanParams) -> Result<String> {
    p.check()?;
    let t = p.t();
    let t_day = p.t_day();
    let longest = p.horizons.iter().max().copied().unwrap_or(30);
    let need = p.lapse_run();
    let mut silent = Vec::new();
    let mut labels = Vec::new();
    for h in &p.horizons {
        let inside = format!("day_number < {t_day} + {h}");
        silent.push(format!(
            "           greatest(coalesce(max(CASE WHEN {inside} THEN gap_before END), {h}),
                    {t_day} + {h} - 1 - coalesce(max(CASE WHEN {inside} THEN day_number END), {t_day} - 1)) AS silent_{h}d"
        ));
        labels.push(format!(
            "    coalesce(s.silent_{h}d >= {need}, true) AS churn_{h}d"
        ));
    }
    Ok(format!(
        "-- churn labels at {cutoff}; reads plays in the lookback before T and in (T, T + {longest} days]
WITH active AS (
    SELECT DISTINCT user_id FROM plays
    WHERE ts >= {t} - INTERVAL '{lookback} days' AND ts < {t}{consent}
),
future_days AS (
    SELECT DISTINCT user_id, CAST(floor(to_unixtime(ts) / 86400) AS BIGINT) AS day_number
    FROM plays
    WHERE ts > {t} AND ts <= {t} + INTERVAL '{longest} days'
),
gaps AS (
    -- whole days without a play before each day with one, counted from T
    SELECT user_id, day_number,
           day_number - coalesce(lag(day_number) OVER (PARTITION BY user_id ORDER BY day_number), {t_day} - 1) - 1 AS gap_before
    FROM future_days
),
silences AS (
    -- the longest run of days without a play inside each horizon
    SELECT user_id,
{silent}
    FROM gaps
    GROUP BY user_id
)
SELECT a.user_id,
{labels}
FROM active a LEFT JOIN silences s ON a.user_id = s.user_id",
        cutoff = p.cutoff,
        lookback = p.lookback_days,
        silent = silent.join(",\n"),
        labels = labels.join(",\n"),
        consent = p.consent("user_id"),
    ))
}

/// The lifecycle stage of `users` row `u` at instant `t`: new (< 3 months
/// since registration), growing (3–12) or core (>= 12); months of 30.44 days.
fn lifecycle_sql(t: &str) -> String {
    format!(
        "CASE WHEN to_unixtime({t}) - to_unixtime(u.registered_at) < 3 * 30.44 * 86400 THEN 'new'
            WHEN to_unixtime({t}) - to_unixtime(u.registered_at) < 12 * 30.44 * 86400 THEN 'growing'
            ELSE 'core' END"
    )
}

/// Per-user profile at T from `users` and `payments` (rows with `ts < T`):
/// lifecycle stage (new < 3 months since registration, growing 3–12, core
/// ≥ 12), and payment recency, frequency, monetary value, cancellations,
/// auto-renew and days to expiry of the latest payment, and the average
/// share of the list price paid. Users without payments have null payment
/// columns.
pub fn user_profile_sql(p: &PlanParams) -> Result<String> {
    p.check()?;
    let t = p.t();
    Ok(format!(
        "-- user profile at {cutoff}; reads users registered before T and payments with ts < T
WITH paid AS (
    SELECT user_id,
           sum(CASE WHEN coalesce(is_cancel, false) THEN 0 ELSE 1 END) AS payments,
           sum(amount) AS monetary,
           sum(CASE WHEN coalesce(is_cancel, false) THEN 1 ELSE 0 END) AS cancels,
           CAST(to_unixtime({t}) - to_unixtime(max(ts)) AS DOUBLE) / 86400.0 AS days_since_payment,
           last_value(auto_renew ORDER BY ts) AS auto_renew,
           CAST(to_unixtime(last_value(expires_at ORDER BY ts)) - to_unixtime({t}) AS DOUBLE) / 86400.0 AS days_to_expiry,
           avg(CASE WHEN list_price > 0 THEN amount / list_price END) AS paid_vs_list
    FROM payments
    WHERE ts < {t}
    GROUP BY user_id
)
SELECT u.user_id,
       CAST(to_unixtime({t}) - to_unixtime(u.registered_at) AS DOUBLE) / 86400.0 AS days_registered,
       {lifecycle} AS lifecycle,
       p.payments, p.monetary, p.cancels, p.days_since_payment, p.auto_renew,
       p.days_to_expiry, p.paid_vs_list
FROM users u LEFT JOIN paid p ON u.user_id = p.user_id
WHERE u.registered_at < {t}{consent}",
        cutoff = p.cutoff,
        consent = p.consent("u.user_id"),
        lifecycle = lifecycle_sql(&t),
    ))
}

/// Engagement depth and early warnings at T over the 30 days before it (and
/// the 30 before those for the listening trend): favourites, comments,
/// playlist creations and complaints (from `interactions`); shares of plays
/// from recommendation, search and playlists; the longest run of days
/// without a play; and three warnings — listening time down by half or more
/// against the previous 30 days, 3+ consecutive days without a play, a
/// complaint in the last 30 days. One row per user with a play in the 60
/// days before T.
pub fn user_engagement_sql(p: &PlanParams) -> Result<String> {
    p.check()?;
    Ok(user_vector_sql(
        p,
        Families {
            activity: false,
            habits: false,
            engagement: true,
        },
        None,
    ))
}

/// The engagement features as a DataFrame over `plays` and `interactions` in `ctx`.
pub async fn user_engagement(ctx: &SessionContext, p: &PlanParams) -> Result<DataFrame> {
    Ok(ctx.sql(&user_engagement_sql(p)?).await?)
}

/// The segments table at T: each user registered before T with their
/// lifecycle stage and RFM value tier. The RFM score is the mean of the
/// percent ranks (among those users) of recency of the last play, plays in
/// the 90 days before T and payments in the 365 days before T; `high` from
/// 0.6, `mid` from 0.3, else `low`; `dormant` when the user has not played in
/// the 30 days before T. `risk_tier` stays null until churn scores exist.
pub fn segments_sql(p: &PlanParams) -> Result<String> {
    p.check()?;
    let t = p.t();
    Ok(format!(
        "-- segments at {cutoff}; reads users registered before T, plays and payments with ts < T
WITH activity AS (
    SELECT user_id, count(*) AS plays_90d, max(ts) AS last_play
    FROM plays
    WHERE ts < {t} AND ts >= {t} - INTERVAL '90 days'
    GROUP BY user_id
),
money AS (
    SELECT user_id, sum(amount) AS monetary_365d
    FROM payments
    WHERE ts < {t} AND ts >= {t} - INTERVAL '365 days'
    GROUP BY user_id
),
base AS (
    SELECT u.user_id,
           {lifecycle} AS lifecycle,
           CAST(to_unixtime({t}) - to_unixtime(a.last_play) AS DOUBLE) / 86400.0 AS recency_days,
           coalesce(a.plays_90d, 0) AS plays_90d,
           coalesce(m.monetary_365d, 0.0) AS monetary_365d
    FROM users u
    LEFT JOIN activity a ON u.user_id = a.user_id
    LEFT JOIN money m ON u.user_id = m.user_id
    WHERE u.registered_at < {t}{consent}
),
scored AS (
    SELECT *,
           (percent_rank() OVER (ORDER BY coalesce(recency_days, 1e9) DESC)
            + percent_rank() OVER (ORDER BY plays_90d)
            + percent_rank() OVER (ORDER BY monetary_365d)) / 3.0 AS rfm_score
    FROM base
)
SELECT user_id, lifecycle,
       CASE WHEN recency_days IS NULL OR recency_days > 30 THEN 'dormant'
            WHEN rfm_score >= 0.6 THEN 'high'
            WHEN rfm_score >= 0.3 THEN 'mid'
            ELSE 'low' END AS value_tier,
       rfm_score, recency_days, plays_90d, monetary_365d,
       CAST(NULL AS VARCHAR) AS risk_tier
FROM scored",
        cutoff = p.cutoff,
        consent = p.consent("u.user_id"),
        lifecycle = lifecycle_sql(&t),
    ))
}

/// The segments as a DataFrame over `users`, `plays` and `payments` in `ctx`.
pub async fn segments(ctx: &SessionContext, p: &PlanParams) -> Result<DataFrame> {
    Ok(ctx.sql(&segments_sql(p)?).await?)
}

/// Listening habits and their stability over the 30 days before T: the
/// entropy (bits) of plays over five time slots (night 0–5 h, commute 6–9,
/// day 10–16, evening 17–20, late 21–23 UTC), the share in the user's most
/// used slot, the share on their most used device and in their most
/// frequent region. One row per user with a play in those 30 days.
pub fn user_habits_sql(p: &PlanParams) -> Result<String> {
    p.check()?;
    Ok(user_vector_sql(
        p,
        Families {
            activity: false,
            habits: true,
            engagement: false,
        },
        None,
    ))
}

/// The habits as a DataFrame over `plays` in `ctx`.
pub async fn user_habits(ctx: &SessionContext, p: &PlanParams) -> Result<DataFrame> {
    Ok(ctx.sql(&user_habits_sql(p)?).await?)
}

/// Per-item features from plays and favourites before T: plays per window,
/// hotness (plays in the last 7 days over the average week of the 28 days
/// before T, +1 smoothing), completion and skip rates, distinct listeners
/// and the favourite ratio over 30 days, with each item's genre and artist
/// and their 30-day play totals.
pub fn item_features_sql(p: &PlanParams) -> Result<String> {
    p.check()?;
    let t = p.t();
    let windows: Vec<String> = p
        .windows
        .iter()
        .map(|w| {
            format!(
                "           sum(CASE WHEN pl.ts >= {t} - INTERVAL '{w} days' THEN 1 ELSE 0 END) AS plays_{w}d"
            )
        })
        .collect();
    Ok(format!(
        "-- item features at {cutoff}; reads items, plays and favourites with ts < T
WITH item_plays AS (
    SELECT pl.item_id,
{windows},
           sum(CASE WHEN pl.ts >= {t} - INTERVAL '7 days' THEN 1.0 ELSE 0.0 END) AS plays_last_7d,
           sum(CASE WHEN pl.ts >= {t} - INTERVAL '28 days' THEN 1.0 ELSE 0.0 END) AS plays_last_28d,
           avg(CASE WHEN pl.ts >= {t} - INTERVAL '30 days'
                    THEN CASE WHEN pl.played_secs >= 0.985 * pl.item_secs THEN 1.0 ELSE 0.0 END END) AS completion_rate_30d,
           avg(CASE WHEN pl.ts >= {t} - INTERVAL '30 days'
                    THEN CASE WHEN pl.played_secs < 0.5 * pl.item_secs THEN 1.0 ELSE 0.0 END END) AS skip_rate_30d,
           count(DISTINCT CASE WHEN pl.ts >= {t} - INTERVAL '30 days' THEN pl.user_id END) AS listeners_30d
    FROM plays pl
    WHERE pl.ts < {t}
    GROUP BY pl.item_id
),
favourites AS (
    SELECT item_id, count(*) AS favorites_30d
    FROM interactions
    WHERE kind = 'favorite' AND item_id IS NOT NULL
      AND ts < {t} AND ts >= {t} - INTERVAL '30 days'
    GROUP BY item_id
),
items_now AS (
    SELECT i.item_id, i.genre, i.artist_id,
           coalesce(ip.plays_30d_for_groups, 0) AS plays_30d_for_groups
    FROM items i
    LEFT JOIN (SELECT item_id, sum(CASE WHEN ts >= {t} - INTERVAL '30 days' THEN 1 ELSE 0 END) AS plays_30d_for_groups
               FROM plays WHERE ts < {t} GROUP BY item_id) ip ON i.item_id = ip.item_id
)
SELECT n.item_id, n.genre, n.artist_id,
{window_columns},
       (coalesce(ip.plays_last_7d, 0.0) + 1.0) / ((coalesce(ip.plays_last_28d, 0.0) + 1.0) / 4.0) AS hotness_7d,
       ip.completion_rate_30d, ip.skip_rate_30d,
       coalesce(ip.listeners_30d, 0) AS listeners_30d,
       CAST(coalesce(f.favorites_30d, 0) AS DOUBLE) / greatest(coalesce(ip.listeners_30d, 0), 1) AS favorite_ratio_30d,
       sum(n.plays_30d_for_groups) OVER (PARTITION BY n.genre) AS genre_plays_30d,
       sum(n.plays_30d_for_groups) OVER (PARTITION BY n.artist_id) AS artist_plays_30d
FROM items_now n
LEFT JOIN item_plays ip ON n.item_id = ip.item_id
LEFT JOIN favourites f ON n.item_id = f.item_id",
        cutoff = p.cutoff,
        windows = windows.join(",\n"),
        window_columns = p
            .windows
            .iter()
            .map(|w| format!("       coalesce(ip.plays_{w}d, 0) AS plays_{w}d"))
            .collect::<Vec<_>>()
            .join(",\n"),
    ))
}

/// The item features as a DataFrame over `items`, `plays` and `interactions` in `ctx`.
pub async fn item_features(ctx: &SessionContext, p: &PlanParams) -> Result<DataFrame> {
    Ok(ctx.sql(&item_features_sql(p)?).await?)
}

/// Recommendation pairs around T: `split = 'train'` rows are the (user,
/// item) pairs played in the 90 days before T with their play and
/// completion counts; `split = 'holdout'` rows are the pairs with a
/// completed play in (T, T + h] for the shortest horizon h, flagged
/// `seen_before` when the user had played the item in the training window.
pub fn recommendation_pairs_sql(p: &PlanParams) -> Result<String> {
    p.check()?;
    let t = p.t();
    let h = p.horizons.iter().min().copied().unwrap_or(7);
    Ok(format!(
        "-- recommendation pairs at {cutoff}: training from [T - 90 days, T), held out from (T, T + {h} days]
WITH train AS (
    SELECT user_id, item_id,
           count(*) AS plays,
           sum(CASE WHEN played_secs >= 0.985 * item_secs THEN 1 ELSE 0 END) AS completions
    FROM plays
    WHERE ts < {t} AND ts >= {t} - INTERVAL '90 days'{consent}
    GROUP BY user_id, item_id
),
holdout AS (
    SELECT user_id, item_id,
           count(*) AS plays,
           sum(CASE WHEN played_secs >= 0.985 * item_secs THEN 1 ELSE 0 END) AS completions
    FROM plays
    WHERE ts > {t} AND ts <= {t} + INTERVAL '{h} days'{consent}
    GROUP BY user_id, item_id
    HAVING sum(CASE WHEN played_secs >= 0.985 * item_secs THEN 1 ELSE 0 END) > 0
)
SELECT 'train' AS split, user_id, item_id, plays, completions, true AS seen_before FROM train
UNION ALL
SELECT 'holdout' AS split, h.user_id, h.item_id, h.plays, h.completions, t.user_id IS NOT NULL AS seen_before
FROM holdout h LEFT JOIN train t ON h.user_id = t.user_id AND h.item_id = t.item_id",
        cutoff = p.cutoff,
        consent = p.consent("user_id"),
    ))
}

/// The recommendation pairs as a DataFrame over `plays` in `ctx`.
pub async fn recommendation_pairs(ctx: &SessionContext, p: &PlanParams) -> Result<DataFrame> {
    Ok(ctx.sql(&recommendation_pairs_sql(p)?).await?)
}

/// The listening context of the recommendation training pairs: per (user,
/// item, four-hour slot of the day in UTC, device), the plays in the 90
/// days before T. The trainer gives each (user, item) pair the context it
/// was played in most.
pub fn recommendation_context_sql(p: &PlanParams) -> Result<String> {
    p.check()?;
    let t = p.t();
    Ok(format!(
        "-- recommendation pair contexts at {cutoff}: plays in [T - 90 days, T) by hour slot and device
SELECT user_id, item_id,
       CAST(date_part('hour', ts) AS BIGINT) / 4 AS hour_slot,
       device,
       count(*) AS plays
FROM plays
WHERE ts < {t} AND ts >= {t} - INTERVAL '90 days'{consent}
GROUP BY user_id, item_id, CAST(date_part('hour', ts) AS BIGINT) / 4, device",
        cutoff = p.cutoff,
        consent = p.consent("user_id"),
    ))
}

/// Subscription churn (the KKBox rule): for users whose membership, as of
/// their last payment before T, expires in [T, T + 30 days), `sub_churn` is
/// true when no new (non-cancelling) payment arrives within 30 days after
/// that expiry. Reads payments before T and up to T + 60 days.
pub fn subscription_churn_sql(p: &PlanParams) -> Result<String> {
    p.check()?;
    let t = p.t();
    Ok(format!(
        "-- subscription churn labels at {cutoff} (KKBox rule)
WITH latest AS (
    SELECT user_id, last_value(expires_at ORDER BY ts) AS expires_at
    FROM payments
    WHERE ts < {t} AND NOT coalesce(is_cancel, false){consent}
    GROUP BY user_id
),
expiring AS (
    SELECT user_id, expires_at FROM latest
    WHERE expires_at >= {t} AND expires_at < {t} + INTERVAL '30 days'
),
renewed AS (
    SELECT DISTINCT e.user_id
    FROM expiring e JOIN payments pay ON e.user_id = pay.user_id
    WHERE pay.ts >= {t} AND NOT coalesce(pay.is_cancel, false)
      AND pay.ts <= e.expires_at + INTERVAL '30 days'
)
SELECT e.user_id, e.expires_at, r.user_id IS NULL AS sub_churn
FROM expiring e LEFT JOIN renewed r ON e.user_id = r.user_id",
        cutoff = p.cutoff,
        consent = p.consent("user_id"),
    ))
}

/// The subscription churn labels as a DataFrame over `payments` in `ctx`.
pub async fn subscription_churn(ctx: &SessionContext, p: &PlanParams) -> Result<DataFrame> {
    Ok(ctx.sql(&subscription_churn_sql(p)?).await?)
}

/// The user profile as a DataFrame over `users` and `payments` in `ctx`.
pub async fn user_profile(ctx: &SessionContext, p: &PlanParams) -> Result<DataFrame> {
    Ok(ctx.sql(&user_profile_sql(p)?).await?)
}

/// The user activity features as a DataFrame over the `plays` table in `ctx`.
pub async fn user_activity(ctx: &SessionContext, p: &PlanParams) -> Result<DataFrame> {
    Ok(ctx.sql(&user_activity_sql(p)?).await?)
}

/// The churn labels as a DataFrame over the `plays` table in `ctx`.
pub async fn churn_labels(ctx: &SessionContext, p: &PlanParams) -> Result<DataFrame> {
    Ok(ctx.sql(&churn_labels_sql(p)?).await?)
}

/// Per-customer purchase features from `payments` before T, for retail
/// data without plays (CDNOW): what buy-till-you-die models use (repeat
/// purchase days, recency, age, spend) plus purchase days and spend in each
/// window. Purchases on the same day count once, as BG/NBD counts them.
/// One row per customer with a purchase before T.
pub fn purchase_features_sql(p: &PlanParams) -> Result<String> {
    p.check()?;
    let t = p.t();
    let mut windows = Vec::new();
    for w in &p.windows {
        windows.push(format!(
            "           count(*) FILTER (WHERE day >= {t} - INTERVAL '{w} days') AS purchase_days_{w}d,
           coalesce(sum(amount) FILTER (WHERE day >= {t} - INTERVAL '{w} days'), 0) AS spend_{w}d"
        ));
    }
    Ok(format!(
        "-- purchase features at {cutoff}; reads payments before T
WITH days AS (
    SELECT user_id, date_trunc('day', ts) AS day, sum(amount) AS amount,
           sum(coalesce(quantity, 1)) AS quantity
    FROM payments
    WHERE ts < {t}{consent}
    GROUP BY user_id, date_trunc('day', ts)
)
SELECT user_id,
       count(*) - 1 AS repeat_purchase_days,
       CAST(to_unixtime({t}) - to_unixtime(max(day)) AS DOUBLE) / 86400.0 AS days_since_purchase,
       CAST(to_unixtime({t}) - to_unixtime(min(day)) AS DOUBLE) / 86400.0 AS days_since_first_purchase,
       CAST(to_unixtime(max(day)) - to_unixtime(min(day)) AS DOUBLE) / 86400.0 AS purchase_span_days,
       sum(amount) AS spend_total,
       avg(amount) AS spend_per_purchase_day,
       max(amount) AS spend_max_day,
       sum(quantity) AS quantity_total,
{windows}
FROM days
GROUP BY user_id",
        cutoff = p.cutoff,
        consent = p.consent("user_id"),
        windows = windows.join(",\n"),
    ))
}

/// Per customer with a purchase before T: `no_purchase_{{h}}d` is true when
/// they buy nothing in [T, T + h days) — the retail form of churn (CDNOW's
/// holdout question, "any purchase in the next 39 weeks", is its negation).
pub fn purchase_labels_sql(p: &PlanParams) -> Result<String> {
    p.check()?;
    let t = p.t();
    let longest = p.horizons.iter().max().copied().unwrap_or(30);
    let labels: Vec<String> = p
        .horizons
        .iter()
        .map(|h| {
            format!(
                "       count(f.ts) FILTER (WHERE f.ts < {t} + INTERVAL '{h} days') = 0 AS no_purchase_{h}d,
       count(f.ts) FILTER (WHERE f.ts < {t} + INTERVAL '{h} days') AS purchases_{h}d"
            )
        })
        .collect();
    Ok(format!(
        "-- purchase labels at {cutoff}; reads payments before T (who) and in [T, T + {longest} days)
WITH customers AS (
    SELECT DISTINCT user_id FROM payments WHERE ts < {t}{consent}
),
future AS (
    SELECT user_id, ts FROM payments WHERE ts >= {t} AND ts < {t} + INTERVAL '{longest} days'
)
SELECT c.user_id,
{labels}
FROM customers c LEFT JOIN future f ON f.user_id = c.user_id
GROUP BY c.user_id",
        cutoff = p.cutoff,
        consent = p.consent("user_id"),
        labels = labels.join(",\n"),
    ))
}

/// What a column of the plans means, for manifests and `--help`.
pub fn describe(column: &str) -> Option<String> {
    if column == "user_id" {
        return Some("the user".into());
    }
    if column == "trend_7d_vs_21d" {
        return Some(
            "plays per day in the 7 days before T over plays per day in the 21 days before those (+1 smoothing)"
                .into(),
        );
    }
    let fixed = match column {
        "days_registered" => Some("days from registration to T"),
        "lifecycle" => Some("new (< 3 months registered), growing (3–12) or core (>= 12)"),
        "payments" => Some("payments (not cancellations) before T"),
        "monetary" => Some("amount paid before T"),
        "cancels" => Some("cancellations before T"),
        "days_since_payment" => Some("days from the last payment row before T to T"),
        "auto_renew" => Some("auto-renew flag of the last payment before T"),
        "days_to_expiry" => Some("days from T to the expiry of the last payment before T"),
        "paid_vs_list" => Some("average share of the list price paid"),
        "item_id" => Some("the item (song)"),
        "expires_at" => Some("membership expiry as of the last payment before T"),
        "sub_churn" => Some(
            "label (KKBox rule): no renewal within 30 days after an expiry in [T, T + 30 days)",
        ),
        "split" => Some("train: played before T; holdout: completed in (T, T + shortest horizon]"),
        "completions" => Some("plays that reached 98.5% of the song"),
        "seen_before" => Some("the user played the item in the training window"),
        "genre" => Some("the item's genre"),
        "artist_id" => Some("the item's artist"),
        "hotness_7d" => Some(
            "item plays in the last 7 days over its average week of the last 28 (+1 smoothing)",
        ),
        "listeners_30d" => Some("distinct users who played the item in the 30 days before T"),
        "favorite_ratio_30d" => Some("favourites per listener in the 30 days before T"),
        "genre_plays_30d" => Some("plays of the item's genre in the 30 days before T"),
        "artist_plays_30d" => Some("plays of the item's artist in the 30 days before T"),
        "slot_entropy_30d" => Some("entropy (bits) of plays over 5 time slots, 30 days before T"),
        "top_slot_share_30d" => Some("share of plays in the most used time slot, 30 days before T"),
        "device_consistency_30d" => {
            Some("share of plays on the most used device, 30 days before T")
        }
        "region_stability_30d" => {
            Some("share of plays in the most frequent region, 30 days before T")
        }
        "value_tier" => Some("RFM value tier: high, mid, low, or dormant (no play in 30 days)"),
        "rfm_score" => Some("mean percent rank of recency, frequency and monetary value"),
        "recency_days" => Some("days from the last play (within 90 days) to T"),
        "monetary_365d" => Some("amount paid in the 365 days before T"),
        "risk_tier" => Some("churn risk tier, once churn scores exist (null here)"),
        "favorites_30d" => Some("favourites in the 30 days before T"),
        "comments_30d" => Some("comments in the 30 days before T"),
        "playlist_creates_30d" => Some("playlists created in the 30 days before T"),
        "complaints_30d" => Some("complaints in the 30 days before T"),
        "share_recommendation_30d" => Some("share of plays from recommendations, 30 days before T"),
        "share_search_30d" => Some("share of plays from search, 30 days before T"),
        "share_playlist_30d" => Some("share of plays from playlists, 30 days before T"),
        "longest_inactive_streak_30d" => {
            Some("longest run of days without a play in the 30 days before T")
        }
        "warn_listening_halved" => {
            Some("warning: listening time in the last 30 days at most half of the 30 before")
        }
        "warn_3_days_inactive" => Some("warning: 3 or more consecutive days without a play"),
        "warn_complaint_30d" => Some("warning: a complaint in the 30 days before T"),
        _ => None,
    };
    if let Some(text) = fixed {
        return Some(text.into());
    }
    if column == "days_since_last_play" {
        return Some("days from the last play in the longest window before T to T".into());
    }
    let (stem, days) = column.rsplit_once('_')?;
    let days = days.strip_suffix('d')?;
    let text = match stem {
        "plays" => format!("plays in the {days} days before T"),
        "secs" => format!("seconds listened in the {days} days before T"),
        "active_days" => format!("days with at least one play in the {days} days before T"),
        "sessions" => format!(
            "listening sessions opened in the {days} days before T (a gap over {} minutes opens one)",
            SESSION_GAP_SECS / 60
        ),
        "completion_rate" => {
            format!("share of plays in the {days} days before T that reached 98.5% of the song")
        }
        "skip_rate" => {
            format!("share of plays in the {days} days before T stopped before half of the song")
        }
        "churn" => format!(
            "label: active in the lookback before T, then a lapse (7 days without a play, or the shortest horizon) in (T, T + {days} days]"
        ),
        _ => return None,
    };
    Some(text)
}
