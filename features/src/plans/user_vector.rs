//! The per-user feature families computed from `plays` — activity, habits,
//! engagement — in one pass, whichever of them a plan asks for.
//!
//! Plays are first summed per user and half-hour *bucket* (a hash
//! aggregation, no sort). The grouping also names the `day` partition of
//! `plays`: a bucket lies within one UTC day and `day` is the UTC date of
//! `ts` (ingest writes each play there; `encore clean` drops any that is
//! not), so no group changes, but a scan whose files are grouped by day
//! (`datafusion.optimizer.preserve_file_partitions`) then already holds
//! whole groups and the aggregation needs no shuffle of its own. A listening session opens at a play whose previous
//! play is more than [`SESSION_GAP_SECS`] before it; two plays in one bucket
//! are less than that apart, so only the first play of a bucket can open a
//! session, and it does unless the user's previous bucket ended within the
//! gap. So sessions need the buckets in order (`lag` over a few plays per
//! bucket), not every play sorted. Day and time slot follow from the bucket,
//! so every family is then one aggregation per user. Device and region
//! shares need counts per (user, device, region): a second, narrower scan of
//! the last 30 days.

use super::{PlanParams, SESSION_GAP_SECS};

/// Seconds per bucket: at most the session gap, and dividing an hour.
const BUCKET_SECS: u32 = SESSION_GAP_SECS;
const _: () = assert!(BUCKET_SECS <= SESSION_GAP_SECS && 3600 % BUCKET_SECS == 0);
const BUCKETS_PER_HOUR: u32 = 3600 / BUCKET_SECS;
const BUCKETS_PER_DAY: u32 = 24 * BUCKETS_PER_HOUR;

/// Time slots of the habits family (UTC hours): name and first hour after it.
const SLOTS: [(&str, u32); 5] = [
    ("night", 6),
    ("commute", 10),
    ("day", 17),
    ("evening", 21),
    ("late", 24),
];

/// Days before T the habits read.
const HABITS_DAYS: u32 = 30;
/// Days before T the engagement family reads (30 days, and the 30 before
/// them for the listening trend).
const ENGAGEMENT_DAYS: u32 = 60;

/// Which families a plan computes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Families {
    pub activity: bool,
    pub habits: bool,
    pub engagement: bool,
}

/// Days before T the activity family reads: the longest window (at least
/// 28 days, for the 7-vs-21-day trend).
pub(super) fn activity_days(p: &PlanParams) -> u32 {
    p.windows.iter().max().copied().unwrap_or(90).max(28)
}

/// The plan's SQL. Rows: the users with a play in the days the first
/// family asked for (activity, else habits, else engagement) reads; the
/// columns of a later family are null for a user without plays in its days,
/// as if each family were its own table left-joined on `user_id`.
pub(super) fn user_vector_sql(p: &PlanParams, f: Families, profile_sql: Option<String>) -> String {
    let t = p.t();
    let t_day = p.t_day();
    let activity_days = activity_days(p);
    let mut spans = Vec::new();
    if f.activity {
        spans.push(activity_days);
    }
    if f.habits {
        spans.push(HABITS_DAYS);
    }
    if f.engagement {
        spans.push(ENGAGEMENT_DAYS);
    }
    let base = spans.first().copied().unwrap_or(activity_days);
    let span = spans.iter().copied().max().unwrap_or(activity_days);
    // A condition true for users with a play in the last `days` days, when
    // the scan reads further back than that (None: every scanned user).
    let played_within = |days: u32| (days < span).then(|| format!("last_day >= {t_day} - {days}"));
    let in_days = |days: u32| format!("day_number >= {t_day} - {days}");

    // Aggregates per user (`per_user`), and the output columns built on them.
    let mut per_user = Vec::new();
    let mut out = Vec::new();
    if f.activity {
        for w in &p.windows {
            let inside = in_days(*w);
            per_user.push(format!(
                "        sum(CASE WHEN {inside} THEN plays ELSE 0 END) AS plays_{w}d,
        sum(CASE WHEN {inside} THEN secs ELSE 0 END) AS secs_{w}d,
        count(CASE WHEN {inside} AND opens_day = 1 THEN 1 END) AS active_days_{w}d,
        sum(CASE WHEN {inside} THEN opens_session ELSE 0 END) AS sessions_{w}d,
        CAST(sum(CASE WHEN {inside} THEN completed END) AS DOUBLE) / sum(CASE WHEN {inside} THEN plays END) AS completion_rate_{w}d,
        CAST(sum(CASE WHEN {inside} THEN skipped END) AS DOUBLE) / sum(CASE WHEN {inside} THEN plays END) AS skip_rate_{w}d"
            ));
            for stem in [
                "plays",
                "secs",
                "active_days",
                "sessions",
                "completion_rate",
                "skip_rate",
            ] {
                out.push(format!("l.{stem}_{w}d"));
            }
        }
        per_user.push(format!(
            "        -- plays per day in the last 7 days over plays per day in the 21 before
        (sum(CASE WHEN {last7} THEN plays ELSE 0 END) / 7.0)
          / ((sum(CASE WHEN {last28} AND NOT {last7} THEN plays ELSE 0 END) + 1.0) / 21.0) AS trend_7d_vs_21d,
        CAST(to_unixtime({t}) - to_unixtime(max(last_ts)) AS DOUBLE) / 86400.0 AS days_since_last_play",
            last7 = in_days(7),
            last28 = in_days(28),
        ));
        out.push("l.trend_7d_vs_21d".into());
        out.push("l.days_since_last_play".into());
    }
    if f.habits {
        let in30 = in_days(HABITS_DAYS);
        let mut from = 0;
        for (slot, end_hour) in SLOTS {
            let to = end_hour * BUCKETS_PER_HOUR;
            per_user.push(format!(
                "        sum(CASE WHEN {in30} AND bucket_of_day >= {from} AND bucket_of_day < {to} THEN plays ELSE 0 END) AS {slot}_plays"
            ));
            from = to;
        }
        per_user.push(format!(
            "        sum(CASE WHEN {in30} THEN plays ELSE 0 END) AS habit_plays"
        ));
        let share = |slot: &str| format!("CAST(l.{slot}_plays AS DOUBLE) / l.habit_plays");
        let entropy: Vec<String> = SLOTS
            .iter()
            .map(|(slot, _)| {
                format!(
                    "CASE WHEN l.{slot}_plays > 0 THEN {s} * log2({s}) ELSE 0 END",
                    s = share(slot)
                )
            })
            .collect();
        let slots: Vec<String> = SLOTS
            .iter()
            .map(|(slot, _)| format!("l.{slot}_plays"))
            .collect();
        out.push(format!(
            "CASE WHEN l.habit_plays > 0 THEN -({}) END AS slot_entropy_30d",
            entropy.join("\n        + ")
        ));
        out.push(format!(
            "CASE WHEN l.habit_plays > 0 THEN CAST(greatest({}) AS DOUBLE) / l.habit_plays END AS top_slot_share_30d",
            slots.join(", ")
        ));
        out.push("pl.device_consistency_30d".into());
        out.push("pl.region_stability_30d".into());
    }
    let mut joins = Vec::new();
    let mut ctes = Vec::new();
    if f.engagement {
        let in30 = in_days(30);
        let before = t_day - 31;
        per_user.push(format!(
            "        CAST(sum(CASE WHEN {in30} THEN from_recommendation END) AS DOUBLE) / sum(CASE WHEN {in30} THEN plays END) AS share_recommendation_30d,
        CAST(sum(CASE WHEN {in30} THEN from_search END) AS DOUBLE) / sum(CASE WHEN {in30} THEN plays END) AS share_search_30d,
        CAST(sum(CASE WHEN {in30} THEN from_playlist END) AS DOUBLE) / sum(CASE WHEN {in30} THEN plays END) AS share_playlist_30d,
        sum(CASE WHEN {in30} THEN secs ELSE 0 END) AS secs_last_30d,
        sum(CASE WHEN {in60} AND NOT {in30} THEN secs ELSE 0 END) AS secs_previous_30d,
        -- the longest run of days without a play in the 30 days before T:
        -- before each active day (back to the window's start), and since the last one
        CASE WHEN max(CASE WHEN {in30} THEN day_number END) IS NOT NULL
             THEN greatest(
                 coalesce(max(CASE WHEN {in30} AND opens_day = 1
                                   THEN day_number - greatest(coalesce(previous_day, {before}), {before}) - 1 END), 0),
                 {t_day} - 1 - max(CASE WHEN {in30} THEN day_number END))
             ELSE 30 END AS longest_inactive_streak_30d",
            in60 = in_days(ENGAGEMENT_DAYS),
        ));
        // Null for users without plays in its days, as a left join would be.
        let guard = played_within(ENGAGEMENT_DAYS).filter(|_| base != ENGAGEMENT_DAYS);
        let guarded = |expr: String, name: &str| match &guard {
            Some(cond) => format!("CASE WHEN l.{cond} THEN {expr} END AS {name}"),
            None => format!("{expr} AS {name}"),
        };
        for kind in ["favorites", "comments", "playlist_creates", "complaints"] {
            out.push(guarded(
                format!("coalesce(a.{kind}_30d, 0)"),
                &format!("{kind}_30d"),
            ));
        }
        for source in ["recommendation", "search", "playlist"] {
            let name = format!("share_{source}_30d");
            out.push(guarded(format!("l.{name}"), &name));
        }
        out.push(guarded(
            "l.longest_inactive_streak_30d".into(),
            "longest_inactive_streak_30d",
        ));
        out.push(guarded(
            "(l.secs_previous_30d > 0 AND l.secs_last_30d <= 0.5 * l.secs_previous_30d)".into(),
            "warn_listening_halved",
        ));
        out.push(guarded(
            "(l.longest_inactive_streak_30d >= 3)".into(),
            "warn_3_days_inactive",
        ));
        out.push(guarded(
            "(coalesce(a.complaints_30d, 0) > 0)".into(),
            "warn_complaint_30d",
        ));
        ctes.push(format!(
            "actions AS (
    SELECT user_id,
           sum(CASE WHEN kind = 'favorite' THEN 1 ELSE 0 END) AS favorites_30d,
           sum(CASE WHEN kind = 'comment' THEN 1 ELSE 0 END) AS comments_30d,
           sum(CASE WHEN kind = 'playlist_create' THEN 1 ELSE 0 END) AS playlist_creates_30d,
           sum(CASE WHEN kind = 'complaint' THEN 1 ELSE 0 END) AS complaints_30d
    FROM interactions
    WHERE ts < {t} AND ts >= {t} - INTERVAL '30 days'
    GROUP BY user_id
)"
        ));
        joins.push("LEFT JOIN actions a ON l.user_id = a.user_id".to_owned());
    }
    if f.habits {
        ctes.push(format!(
            "places AS (
    -- plays per device and region in the {HABITS_DAYS} days before T
    SELECT user_id, device, coalesce(region, '') AS region, count(*) AS n
    FROM plays
    WHERE ts < {t} AND ts >= {t} - INTERVAL '{HABITS_DAYS} days'{consent}
    GROUP BY user_id, device, coalesce(region, '')
),
place_shares AS (
    -- the share of the most used device and of the most frequent region
    SELECT user_id,
           CAST(max(device_n) AS DOUBLE) / sum(n) AS device_consistency_30d,
           CAST(max(region_n) AS DOUBLE) / sum(n) AS region_stability_30d
    FROM (SELECT user_id, n,
                 sum(n) OVER (PARTITION BY user_id, device) AS device_n,
                 sum(n) OVER (PARTITION BY user_id, region) AS region_n
          FROM places)
    GROUP BY user_id
)",
            consent = p.consent("user_id"),
        ));
        joins.push("LEFT JOIN place_shares pl ON l.user_id = pl.user_id".to_owned());
    }
    if let Some(profile) = profile_sql {
        out.push("profile.* EXCLUDE (user_id)".into());
        joins.push(format!(
            "LEFT JOIN ({profile}) profile ON l.user_id = profile.user_id"
        ));
    }
    // Only the activity family counts sessions, over its own days.
    let opens_session = if activity_days < span {
        format!(
            "first_ts - previous_ts <= INTERVAL '{SESSION_GAP_SECS} seconds' AND previous_ts >= {t} - INTERVAL '{activity_days} days'"
        )
    } else {
        // (`first_ts - previous_ts`, not `previous_ts >= first_ts - ...`:
        // interval arithmetic on a zoned timestamp looks up the zone per row)
        format!("first_ts - previous_ts <= INTERVAL '{SESSION_GAP_SECS} seconds'")
    };
    let having = played_within(base)
        .map(|cond| {
            format!(
                "\n    HAVING max(day_number) >= {}",
                cond.trim_start_matches("last_day >= ")
            )
        })
        .unwrap_or_default();
    let bucket = format!("CAST(floor(to_unixtime(ts) / {BUCKET_SECS}) AS BIGINT)");
    format!(
        "-- user features at {cutoff}; one pass over plays with T - {span} days <= ts < T
WITH buckets AS (
    -- plays summed per user and {BUCKET_SECS}-second bucket (only a bucket's first play can open a
    -- session); counts as INT: narrower rows to shuffle and sort
    SELECT user_id,
           bucket,
           CAST(count(*) AS INT) AS plays,
           sum(played_secs) AS secs,
           CAST(sum(CASE WHEN played_secs >= 0.985 * item_secs THEN 1 ELSE 0 END) AS INT) AS completed,
           CAST(sum(CASE WHEN played_secs < 0.5 * item_secs THEN 1 ELSE 0 END) AS INT) AS skipped,
           CAST(sum(CASE WHEN source = 'recommendation' THEN 1 ELSE 0 END) AS INT) AS from_recommendation,
           CAST(sum(CASE WHEN source = 'search' THEN 1 ELSE 0 END) AS INT) AS from_search,
           CAST(sum(CASE WHEN source = 'playlist' THEN 1 ELSE 0 END) AS INT) AS from_playlist,
           min(ts) AS first_ts,
           max(ts) AS last_ts
    FROM (SELECT user_id, day, ts, played_secs, item_secs, source, {bucket} AS bucket
          FROM plays
          WHERE ts < {t} AND ts >= {t} - INTERVAL '{span} days'{consent})
    GROUP BY user_id, day, bucket
),
ordered AS (
    -- each bucket with the end of the user's previous one
    SELECT *,
           CAST(floor(bucket / {BUCKETS_PER_DAY}.0) AS BIGINT) AS day_number,
           bucket % {BUCKETS_PER_DAY} AS bucket_of_day,
           lag(last_ts) OVER (PARTITION BY user_id ORDER BY bucket) AS previous_ts,
           CAST(floor(lag(bucket) OVER (PARTITION BY user_id ORDER BY bucket) / {BUCKETS_PER_DAY}.0) AS BIGINT) AS previous_day
    FROM buckets
),
flagged AS (
    SELECT *,
           -- a play opens a session when the user's previous play is over {SESSION_GAP_SECS} s before it
           CASE WHEN {opens_session} THEN 0 ELSE 1 END AS opens_session,
           CASE WHEN previous_day = day_number THEN 0 ELSE 1 END AS opens_day
    FROM ordered
),
per_user AS (
    SELECT user_id,
        max(day_number) AS last_day,
{per_user}
    FROM flagged
    GROUP BY user_id{having}
){ctes}
SELECT l.user_id,
       {out}
FROM per_user l
{joins}",
        cutoff = p.cutoff,
        consent = p.consent("user_id"),
        per_user = per_user.join(",\n"),
        ctes = ctes.iter().map(|c| format!(",\n{c}")).collect::<String>(),
        out = out.join(",\n       "),
        joins = joins.join("\n"),
    )
}
