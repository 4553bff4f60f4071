//! Feature and label plans: hand-computed values on a few plays, and the
//! point-in-time proof on generated data (changing data at or after T leaves
//! the features unchanged; labels read only (T, T + H]).

use std::path::Path;

use chrono::NaiveDate;
use datafusion::prelude::{SessionContext, col};
use encore_features::datagen::{DataSpec, generate};
use encore_features::ingest::ingest;
use encore_features::plans::{PlanParams, churn_labels, user_activity};
use encore_features::tables::{TableSource, register};

async fn table(plays: &Path, p: &PlanParams, labels: bool) -> String {
    let ctx = SessionContext::new();
    register(
        &ctx,
        &TableSource {
            name: "plays".into(),
            path: plays.to_path_buf(),
        },
    )
    .await
    .unwrap();
    // Consent lives in users/: beside plays/, or beside the folder holding it.
    let beside = plays.parent().unwrap().join("users");
    let users = if beside.exists() {
        beside
    } else {
        plays.parent().unwrap().parent().unwrap().join("users")
    };
    register(
        &ctx,
        &TableSource {
            name: "users".into(),
            path: users,
        },
    )
    .await
    .unwrap();
    let df = if labels {
        churn_labels(&ctx, p).await.unwrap()
    } else {
        user_activity(&ctx, p).await.unwrap()
    };
    let batches = df
        .sort_by(vec![col("user_id")])
        .unwrap()
        .collect()
        .await
        .unwrap();
    arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn features_and_labels_on_hand_made_plays() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let csv = dir.path().join("plays.csv");
    // T = 2026-01-31. User 1: 4 plays in the last 7 days (one skipped) in 3
    // sessions (10:00 and 10:20 are one, 11:00 opens another), one 20 days
    // before T, then a play 10 days after T. User 2: one play 3 days
    // before T, nothing after. User 3: only after T (not labelled). Users 5
    // and 6 play the day before T, then at most 6 days apart (T = day 0):
    // user 5 on days 3, 9 and 14, so days 15..29 make a lapse inside 30 days
    // only; user 6 on days 2, 8, 13, 19, 25 and 29 (and at exactly T + 30
    // days, inside the horizon), never 7 days apart.
    std::fs::write(
        &csv,
        "user_id,item_id,ts,played_secs,item_secs,source,device\n\
         1,1,2026-01-28T10:00:00Z,200,200,search,mobile\n\
         1,2,2026-01-30T10:00:00Z,20,200,search,mobile\n\
         1,5,2026-01-30T10:20:00Z,200,200,search,mobile\n\
         1,6,2026-01-30T11:00:00Z,200,200,search,mobile\n\
         1,3,2026-01-11T10:00:00Z,100,200,search,mobile\n\
         1,4,2026-02-10T10:00:00Z,100,200,search,mobile\n\
         2,1,2026-01-28T12:00:00Z,200,200,radio,car\n\
         3,1,2026-02-02T12:00:00Z,200,200,radio,car\n\
         4,1,2026-01-29T12:00:00Z,200,200,radio,car\n\
         5,1,2026-01-30T12:00:00Z,200,200,radio,car\n\
         5,1,2026-02-03T12:00:00Z,200,200,radio,car\n\
         5,1,2026-02-09T12:00:00Z,200,200,radio,car\n\
         5,1,2026-02-14T12:00:00Z,200,200,radio,car\n\
         6,1,2026-01-30T12:00:00Z,200,200,radio,car\n\
         6,1,2026-02-02T12:00:00Z,200,200,radio,car\n\
         6,1,2026-02-08T12:00:00Z,200,200,radio,car\n\
         6,1,2026-02-13T12:00:00Z,200,200,radio,car\n\
         6,1,2026-02-19T12:00:00Z,200,200,radio,car\n\
         6,1,2026-02-25T12:00:00Z,200,200,radio,car\n\
         6,1,2026-03-01T23:00:00Z,200,200,radio,car\n\
         6,1,2026-03-02T00:00:00Z,200,200,radio,car\n",
    )
    .unwrap();
    ingest("plays", &csv, &data).await.unwrap();
    // User 4 did not consent: never in features or labels.
    let users = dir.path().join("users.csv");
    std::fs::write(
        &users,
        "user_id,registered_at,consent\n1,2025-01-01T00:00:00Z,true\n2,2025-01-01T00:00:00Z,true\n3,2025-01-01T00:00:00Z,true\n4,2025-01-01T00:00:00Z,false\n5,2025-01-01T00:00:00Z,true\n6,2025-01-01T00:00:00Z,true\n",
    )
    .unwrap();
    ingest("users", &users, &data).await.unwrap();
    let p = PlanParams::at(NaiveDate::from_ymd_opt(2026, 1, 31).unwrap());
    let features = cells(&table(&data.join("plays"), &p, false).await);
    let num = |user: &str, name: &str| -> f64 { features[user][name].parse().unwrap() };
    assert_eq!(num("1", "plays_7d"), 4.0);
    assert_eq!(num("1", "plays_30d"), 5.0);
    assert_eq!(num("1", "secs_7d"), 620.0);
    assert_eq!(num("1", "active_days_7d"), 2.0);
    assert_eq!(num("1", "active_days_30d"), 3.0);
    assert_eq!(num("1", "sessions_7d"), 3.0);
    assert_eq!(num("1", "sessions_30d"), 4.0);
    assert_eq!(num("1", "completion_rate_7d"), 0.75);
    assert_eq!(num("1", "skip_rate_7d"), 0.25);
    assert_eq!(num("1", "completion_rate_30d"), 0.6);
    assert!((num("1", "days_since_last_play") - 13.0 / 24.0).abs() < 1e-9);
    // (4 plays / 7 days) / ((1 play + 1) / 21 days) = 6
    assert!((num("1", "trend_7d_vs_21d") - 6.0).abs() < 1e-9);
    assert_eq!(num("2", "sessions_90d"), 1.0);
    assert_eq!(num("2", "plays_90d"), 1.0);
    assert!(!features.contains_key("3"), "user 3 has no play before T");
    assert!(!features.contains_key("4"), "user 4 did not consent");
    let everyone = PlanParams {
        include_unconsented: true,
        ..p.clone()
    };
    assert!(cells(&table(&data.join("plays"), &everyone, false).await).contains_key("4"));

    let labels = cells(&table(&data.join("plays"), &p, true).await);
    // A lapse is 7 days without a play inside the horizon (the whole
    // horizon for 7 days). User 1 plays again 10 days after T: the 10 silent
    // days are a lapse at every horizon.
    let flags =
        |user: &str| ["churn_7d", "churn_15d", "churn_30d"].map(|h| labels[user][h].clone());
    assert_eq!(flags("1"), ["true", "true", "true"]);
    assert_eq!(flags("2"), ["true", "true", "true"]);
    assert_eq!(flags("5"), ["false", "false", "true"]);
    assert_eq!(flags("6"), ["false", "false", "false"]);
    assert!(!labels.contains_key("3"));
    assert!(!labels.contains_key("4"), "user 4 did not consent");
}

/// A context with `tables` registered from the folders of the same names in `data`.
async fn context(data: &Path, tables: &[&str]) -> SessionContext {
    context_with(SessionContext::new(), data, tables).await
}

/// [`context`] on a given context.
async fn context_with(ctx: SessionContext, data: &Path, tables: &[&str]) -> SessionContext {
    for table in tables {
        register(
            &ctx,
            &TableSource {
                name: (*table).into(),
                path: data.join(table),
            },
        )
        .await
        .unwrap();
    }
    ctx
}

/// Two printed cells agree: equal text, or numbers within 1e-9 relative
/// (sums of floats may add up in another order).
fn same_cell(a: &str, b: &str) -> bool {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => (x - y).abs() <= 1e-9 * x.abs().max(1.0),
        _ => a == b,
    }
}

/// A plan's rows sorted by `key`, as key → column → cell.
async fn rows_by(
    df: datafusion::prelude::DataFrame,
    key: &str,
) -> std::collections::HashMap<String, std::collections::HashMap<String, String>> {
    let batches = df.sort_by(vec![col(key)]).unwrap().collect().await.unwrap();
    cells(
        &arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string(),
    )
}

/// A pretty-printed table as first column → column → cell.
fn cells(
    text: &str,
) -> std::collections::HashMap<String, std::collections::HashMap<String, String>> {
    // Empty cells are nulls: keep them so columns stay aligned.
    let split = |line: &str| -> Vec<String> {
        line.trim()
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_owned())
            .collect()
    };
    let mut lines = text.lines().filter(|l| l.starts_with('|'));
    let header = split(lines.next().unwrap());
    lines
        .map(|l| {
            let row = split(l);
            (row[0].clone(), header.iter().cloned().zip(row).collect())
        })
        .collect()
}

fn copy_days(from: &Path, to: &Path, keep: impl Fn(&str) -> bool) {
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if keep(name.trim_start_matches("day=")) {
            let target = to.join(&name);
            std::fs::create_dir_all(&target).unwrap();
            for file in std::fs::read_dir(&path).unwrap() {
                let file = file.unwrap().path();
                std::fs::copy(&file, target.join(file.file_name().unwrap())).unwrap();
            }
        }
    }
}

#[tokio::test]
async fn point_in_time_features_ignore_data_from_t_and_labels_read_only_the_horizon() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DataSpec {
        users: 300,
        items: 500,
        days: 80,
        seed: 5,
        ..Default::default()
    };
    generate(&spec, dir.path(), |_, _| {}).unwrap();
    let plays = dir.path().join("plays");
    let t = NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
    let p = PlanParams::at(t);
    let features = table(&plays, &p, false).await;
    let labels = table(&plays, &p, true).await;
    assert!(features.lines().count() > 100, "{features}");

    // Features: drop every day from T on, then add made-up future plays.
    let before = dir.path().join("before_t");
    copy_days(&plays, &before, |day| day < "2026-03-01");
    assert_eq!(table(&before, &p, false).await, features);
    let csv = dir.path().join("future.csv");
    std::fs::write(&csv, "user_id,item_id,ts,played_secs,item_secs,source,device\n1,1,2026-03-01T00:00:00Z,10,200,search,mobile\n2,2,2026-03-05T00:00:00Z,10,200,search,mobile\n").unwrap();
    let data = dir.path().join("edited");
    copy_days(&plays, &data.join("plays"), |day| day < "2026-03-01");
    ingest("plays", &csv, &data).await.unwrap();
    assert_eq!(table(&data.join("plays"), &p, false).await, features);

    // Labels: only the lookback (for who is labelled) and (T, T + 30 days]
    // matter; days before the lookback and after the horizon do not.
    let window = dir.path().join("window");
    copy_days(&plays, &window, |day| {
        ("2026-01-30".."2026-04-01").contains(&day)
    });
    assert_eq!(table(&window, &p, true).await, labels);
    // ...and the horizon does: without its plays everyone churns.
    let no_future = dir.path().join("no_future");
    copy_days(&plays, &no_future, |day| day < "2026-03-01");
    let churned = table(&no_future, &p, true).await;
    assert_ne!(churned, labels);
    assert!(!churned.contains("false"), "{churned}");
}

#[tokio::test]
async fn profile_lifecycle_and_payments_on_hand_made_rows() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let users = dir.path().join("users.csv");
    // T = 2026-03-01: user 1 registered 30 days before (new), user 2 200 days
    // (growing), user 3 two years (core), user 4 after T (left out).
    std::fs::write(
        &users,
        "user_id,registered_at,consent\n\
         1,2026-01-30T00:00:00Z,true\n\
         2,2025-08-13T00:00:00Z,true\n\
         3,2024-03-01T00:00:00Z,true\n\
         4,2026-03-05T00:00:00Z,true\n",
    )
    .unwrap();
    ingest("users", &users, &data).await.unwrap();
    let payments = dir.path().join("payments.csv");
    std::fs::write(
        &payments,
        "user_id,ts,amount,product,list_price,expires_at,auto_renew,is_cancel\n\
         2,2026-01-01T00:00:00Z,149,subscription,149,2026-01-31T00:00:00Z,true,false\n\
         2,2026-01-31T00:00:00Z,119.2,subscription,149,2026-03-02T00:00:00Z,false,false\n\
         2,2026-02-20T00:00:00Z,0,subscription,149,2026-03-02T00:00:00Z,false,true\n\
         2,2026-03-05T00:00:00Z,149,subscription,149,2026-04-04T00:00:00Z,true,false\n\
         3,2026-02-15T00:00:00Z,169,subscription,169,2026-03-17T00:00:00Z,true,false\n",
    )
    .unwrap();
    ingest("payments", &payments, &data).await.unwrap();
    let ctx = context(&data, &["users", "payments"]).await;
    let p = PlanParams::at(NaiveDate::from_ymd_opt(2026, 3, 1).unwrap());
    let rows = rows_by(
        encore_features::plans::user_profile(&ctx, &p)
            .await
            .unwrap(),
        "user_id",
    )
    .await;
    assert_eq!(rows.len(), 3, "user 4 registered after T: {rows:?}");
    let lifecycle = |u: &str| rows[u]["lifecycle"].clone();
    assert_eq!(
        [lifecycle("1"), lifecycle("2"), lifecycle("3")],
        ["new", "growing", "core"]
    );
    let num = |u: &str, c: &str| -> f64 { rows[u][c].parse().unwrap() };
    // User 2 before T: two payments (149 + 119.2), one cancellation; the
    // payment on 03-05 is after T and not counted.
    assert_eq!(num("2", "payments"), 2.0);
    assert!((num("2", "monetary") - 268.2).abs() < 1e-9);
    assert_eq!(num("2", "cancels"), 1.0);
    assert_eq!(num("2", "days_since_payment"), 9.0);
    assert_eq!(rows["2"]["auto_renew"], "false");
    assert_eq!(num("2", "days_to_expiry"), 1.0);
    assert!((num("2", "paid_vs_list") - (1.0 + 0.8 + 0.0) / 3.0).abs() < 1e-9);
    assert_eq!(num("3", "days_to_expiry"), 16.0);
    assert_eq!(rows["1"]["payments"], "", "no payments: null");
}

#[tokio::test]
async fn engagement_and_early_warnings_on_hand_made_rows() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // T = 2026-03-01. User 1: 1000 s in the previous 30 days, 300 s in the
    // last 30 (halved), plays on 02-10 and 02-20 only; a complaint and a
    // favourite. User 2: plays every day of the last 3 days, nothing before.
    let mut csv = String::from("user_id,item_id,ts,played_secs,item_secs,source,device\n");
    csv.push_str("1,1,2026-01-15T10:00:00Z,1000,1000,search,mobile\n");
    csv.push_str("1,2,2026-02-10T10:00:00Z,100,200,recommendation,mobile\n");
    csv.push_str("1,3,2026-02-20T10:00:00Z,200,200,playlist,mobile\n");
    for day in ["2026-02-26", "2026-02-27", "2026-02-28"] {
        csv.push_str(&format!(
            "2,1,{day}T10:00:00Z,200,200,recommendation,mobile\n"
        ));
    }
    std::fs::write(dir.path().join("plays.csv"), csv).unwrap();
    ingest("plays", &dir.path().join("plays.csv"), &data)
        .await
        .unwrap();
    std::fs::write(
        dir.path().join("interactions.csv"),
        "user_id,item_id,ts,kind\n1,,2026-02-15T10:00:00Z,complaint\n1,3,2026-02-20T10:05:00Z,favorite\n1,3,2026-01-01T10:05:00Z,favorite\n",
    )
    .unwrap();
    ingest("interactions", &dir.path().join("interactions.csv"), &data)
        .await
        .unwrap();
    let ctx = context(&data, &["plays", "interactions"]).await;
    let p = PlanParams {
        include_unconsented: true,
        ..PlanParams::at(NaiveDate::from_ymd_opt(2026, 3, 1).unwrap())
    };
    let rows = rows_by(
        encore_features::plans::user_engagement(&ctx, &p)
            .await
            .unwrap(),
        "user_id",
    )
    .await;
    let get = |u: &str, c: &str| rows[u][c].clone();
    assert_eq!(
        get("1", "favorites_30d"),
        "1",
        "the January favourite is outside the window"
    );
    assert_eq!(get("1", "complaints_30d"), "1");
    assert_eq!(get("1", "share_recommendation_30d"), "0.5");
    assert_eq!(get("1", "share_playlist_30d"), "0.5");
    // Window 01-30..02-28: inactive 01-30..02-09 (11 days) before the first play.
    assert_eq!(get("1", "longest_inactive_streak_30d"), "11");
    assert_eq!(
        [
            "warn_listening_halved",
            "warn_3_days_inactive",
            "warn_complaint_30d"
        ]
        .map(|c| get("1", c)),
        ["true", "true", "true"]
    );
    // User 2 played on the last 3 days only: 27 inactive days before, no previous period.
    assert_eq!(get("2", "longest_inactive_streak_30d"), "27");
    assert_eq!(get("2", "share_recommendation_30d"), "1.0");
    assert_eq!(
        ["warn_listening_halved", "warn_complaint_30d"].map(|c| get("2", c)),
        ["false", "false"]
    );
}

#[tokio::test]
async fn segments_give_lifecycle_and_rfm_value_tiers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::write(
        dir.path().join("users.csv"),
        "user_id,registered_at,consent\n1,2025-01-01T00:00:00Z,true\n2,2025-01-01T00:00:00Z,true\n3,2025-01-01T00:00:00Z,true\n4,2025-12-20T00:00:00Z,true\n",
    )
    .unwrap();
    ingest("users", &dir.path().join("users.csv"), &data)
        .await
        .unwrap();
    // T = 2026-03-01. User 1: 10 plays, last 1 day before T, paid 500.
    // User 2: 5 plays, last 5 days before. User 3: 1 play 20 days before.
    // User 4 (registered 71 days before T: new): 1 play 40 days before.
    let mut csv = String::from("user_id,item_id,ts,played_secs,item_secs,source,device\n");
    for i in 0..10 {
        csv.push_str(&format!(
            "1,{i},2026-02-28T{:02}:00:00Z,100,200,search,mobile\n",
            i + 1
        ));
    }
    for i in 0..5 {
        csv.push_str(&format!(
            "2,{i},2026-02-24T{:02}:00:00Z,100,200,search,mobile\n",
            i + 1
        ));
    }
    csv.push_str("3,1,2026-02-09T10:00:00Z,100,200,search,mobile\n");
    csv.push_str("4,1,2026-01-20T10:00:00Z,100,200,search,mobile\n");
    std::fs::write(dir.path().join("plays.csv"), csv).unwrap();
    ingest("plays", &dir.path().join("plays.csv"), &data)
        .await
        .unwrap();
    std::fs::write(
        dir.path().join("payments.csv"),
        "user_id,ts,amount,product\n1,2026-02-01T00:00:00Z,500,subscription\n",
    )
    .unwrap();
    ingest("payments", &dir.path().join("payments.csv"), &data)
        .await
        .unwrap();
    let ctx = context(&data, &["users", "plays", "payments"]).await;
    let p = PlanParams::at(NaiveDate::from_ymd_opt(2026, 3, 1).unwrap());
    let rows = rows_by(
        encore_features::plans::segments(&ctx, &p).await.unwrap(),
        "user_id",
    )
    .await;
    let seg = |u: &str| (rows[u]["lifecycle"].clone(), rows[u]["value_tier"].clone());
    // Percent ranks among the 4 users (recency, frequency, monetary):
    // user 1 (1, 1, 1) → 1.0 high; user 2 (2/3, 2/3, 0) → 0.44 mid;
    // user 3 (1/3, 0, 0) → 0.11 low; user 4: 40 days without a play → dormant.
    assert_eq!(seg("1"), ("core".into(), "high".into()));
    assert_eq!(seg("2"), ("core".into(), "mid".into()));
    assert_eq!(seg("3"), ("core".into(), "low".into()));
    assert_eq!(seg("4"), ("new".into(), "dormant".into()));
    assert_eq!(rows["1"]["risk_tier"], "");
}

#[tokio::test]
async fn habits_entropy_and_consistency_on_hand_made_rows() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // User 1: 4 plays, 2 at commute (08 h), 2 in the evening (18 h): entropy
    // 1 bit, top slot 0.5; 3 on mobile, 1 on car: 0.75; one region: 1.0.
    std::fs::write(
        dir.path().join("plays.csv"),
        "user_id,item_id,ts,played_secs,item_secs,source,device,region\n\
         1,1,2026-02-20T08:00:00Z,100,200,search,mobile,north\n\
         1,2,2026-02-21T08:30:00Z,100,200,search,mobile,north\n\
         1,3,2026-02-21T18:00:00Z,100,200,search,mobile,north\n\
         1,4,2026-02-22T18:30:00Z,100,200,search,car,north\n\
         1,5,2026-01-01T03:00:00Z,100,200,search,tv,south\n",
    )
    .unwrap();
    ingest("plays", &dir.path().join("plays.csv"), &data)
        .await
        .unwrap();
    let ctx = SessionContext::new();
    register(
        &ctx,
        &TableSource {
            name: "plays".into(),
            path: data.join("plays"),
        },
    )
    .await
    .unwrap();
    let p = PlanParams {
        include_unconsented: true,
        ..PlanParams::at(NaiveDate::from_ymd_opt(2026, 3, 1).unwrap())
    };
    let batches = encore_features::plans::user_habits(&ctx, &p)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let rows = cells(
        &arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string(),
    );
    let num = |c: &str| -> f64 { rows["1"][c].parse().unwrap() };
    assert!((num("slot_entropy_30d") - 1.0).abs() < 1e-9, "{rows:?}");
    assert_eq!(num("top_slot_share_30d"), 0.5);
    assert_eq!(num("device_consistency_30d"), 0.75);
    assert_eq!(
        num("region_stability_30d"),
        1.0,
        "the January play in the south is outside the window"
    );
}

#[tokio::test]
async fn item_features_on_hand_made_rows() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::write(
        dir.path().join("items.csv"),
        "item_id,artist_id,genre,duration_secs\n1,10,pop,200\n2,10,pop,200\n3,20,jazz,200\n",
    )
    .unwrap();
    ingest("items", &dir.path().join("items.csv"), &data)
        .await
        .unwrap();
    // T = 2026-03-01. Item 1: 3 plays in the last 7 days by 2 users (one
    // skipped), 1 play 20 days before. Item 2: 1 play 10 days before.
    // Item 3: never played.
    std::fs::write(
        dir.path().join("plays.csv"),
        "user_id,item_id,ts,played_secs,item_secs,source,device\n\
         1,1,2026-02-27T10:00:00Z,200,200,search,mobile\n\
         1,1,2026-02-28T10:00:00Z,200,200,search,mobile\n\
         2,1,2026-02-28T11:00:00Z,20,200,search,mobile\n\
         2,1,2026-02-09T11:00:00Z,200,200,search,mobile\n\
         3,2,2026-02-19T11:00:00Z,200,200,search,mobile\n",
    )
    .unwrap();
    ingest("plays", &dir.path().join("plays.csv"), &data)
        .await
        .unwrap();
    std::fs::write(
        dir.path().join("interactions.csv"),
        "user_id,item_id,ts,kind\n1,1,2026-02-28T10:05:00Z,favorite\n",
    )
    .unwrap();
    ingest("interactions", &dir.path().join("interactions.csv"), &data)
        .await
        .unwrap();
    let ctx = context(&data, &["items", "plays", "interactions"]).await;
    let p = PlanParams::at(NaiveDate::from_ymd_opt(2026, 3, 1).unwrap());
    let rows = rows_by(
        encore_features::plans::item_features(&ctx, &p)
            .await
            .unwrap(),
        "item_id",
    )
    .await;
    let num = |i: &str, c: &str| -> f64 { rows[i][c].parse().unwrap() };
    assert_eq!(num("1", "plays_7d"), 3.0);
    assert_eq!(num("1", "plays_30d"), 4.0);
    // (3 + 1) / ((4 + 1) / 4) = 3.2
    assert!((num("1", "hotness_7d") - 3.2).abs() < 1e-9);
    assert_eq!(num("1", "skip_rate_30d"), 0.25);
    assert_eq!(num("1", "listeners_30d"), 2.0);
    assert_eq!(num("1", "favorite_ratio_30d"), 0.5);
    assert_eq!(num("1", "genre_plays_30d"), 5.0, "pop: items 1 and 2");
    assert_eq!(num("1", "artist_plays_30d"), 5.0);
    assert_eq!(num("3", "plays_30d"), 0.0);
    assert_eq!(num("3", "genre_plays_30d"), 0.0);
    assert_eq!(rows["3"]["completion_rate_30d"], "", "never played: null");
}

#[tokio::test]
async fn recommendation_context_counts_plays_by_hour_slot_and_device() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // T = 2026-03-01: item 1 twice at 21h on mobile (slot 5), once at 22h on
    // desktop; item 2 at 03h (slot 0); one play after T and one more than 90
    // days before it are outside.
    std::fs::write(
        dir.path().join("plays.csv"),
        "user_id,item_id,ts,played_secs,item_secs,source,device\n\
         1,1,2026-02-10T21:00:00Z,200,200,search,mobile\n\
         1,1,2026-02-11T21:30:00Z,20,200,search,mobile\n\
         1,1,2026-02-12T22:00:00Z,20,200,search,desktop\n\
         1,2,2026-02-12T03:00:00Z,20,200,search,mobile\n\
         1,2,2026-03-02T10:00:00Z,200,200,search,mobile\n\
         1,3,2025-11-01T10:00:00Z,200,200,search,mobile\n",
    )
    .unwrap();
    ingest("plays", &dir.path().join("plays.csv"), &data)
        .await
        .unwrap();
    let ctx = SessionContext::new();
    register(
        &ctx,
        &TableSource {
            name: "plays".into(),
            path: data.join("plays"),
        },
    )
    .await
    .unwrap();
    let p = PlanParams {
        include_unconsented: true,
        ..PlanParams::at(NaiveDate::from_ymd_opt(2026, 3, 1).unwrap())
    };
    let sql = encore_features::plans::recommendation_context_sql(&p).unwrap();
    let batches = ctx
        .sql(&format!(
            "SELECT * FROM ({sql}) ORDER BY item_id, hour_slot, device"
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    let rows: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        rows,
        [
            "| 1 | 1 | 5 | desktop | 1 |",
            "| 1 | 1 | 5 | mobile | 2 |",
            "| 1 | 2 | 0 | mobile | 1 |",
        ],
        "{text}"
    );
}

#[tokio::test]
async fn recommendation_pairs_split_at_t() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // T = 2026-03-01. Before: user 1 plays item 1 twice (one complete), item 2
    // once. After: item 1 completed again (seen before), item 3 completed
    // (new), item 4 skipped (not a positive), item 5 completed after the
    // 7-day horizon (outside).
    std::fs::write(
        dir.path().join("plays.csv"),
        "user_id,item_id,ts,played_secs,item_secs,source,device\n\
         1,1,2026-02-10T10:00:00Z,200,200,search,mobile\n\
         1,1,2026-02-11T10:00:00Z,20,200,search,mobile\n\
         1,2,2026-02-12T10:00:00Z,20,200,search,mobile\n\
         1,1,2026-03-02T10:00:00Z,200,200,search,mobile\n\
         1,3,2026-03-03T10:00:00Z,200,200,search,mobile\n\
         1,4,2026-03-03T11:00:00Z,20,200,search,mobile\n\
         1,5,2026-03-10T11:00:00Z,200,200,search,mobile\n",
    )
    .unwrap();
    ingest("plays", &dir.path().join("plays.csv"), &data)
        .await
        .unwrap();
    let ctx = SessionContext::new();
    register(
        &ctx,
        &TableSource {
            name: "plays".into(),
            path: data.join("plays"),
        },
    )
    .await
    .unwrap();
    let p = PlanParams {
        include_unconsented: true,
        ..PlanParams::at(NaiveDate::from_ymd_opt(2026, 3, 1).unwrap())
    };
    let batches = encore_features::plans::recommendation_pairs(&ctx, &p)
        .await
        .unwrap()
        .sort(vec![
            col("split").sort(false, false),
            col("item_id").sort(true, false),
        ])
        .unwrap()
        .collect()
        .await
        .unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    let rows: Vec<Vec<String>> = text
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(1)
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect();
    let expected = [
        ["train", "1", "1", "2", "1", "true"],
        ["train", "1", "2", "1", "0", "true"],
        ["holdout", "1", "1", "1", "1", "true"],
        ["holdout", "1", "3", "1", "1", "false"],
    ];
    assert_eq!(
        rows,
        expected.map(|r| r.map(str::to_owned)).to_vec(),
        "{text}"
    );
}

#[tokio::test]
async fn subscription_churn_follows_the_kkbox_rule() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // T = 2026-03-01. User 1 expires 03-10 and renews 03-25 (within 30
    // days): not churned. User 2 expires 03-05, renews 04-20 (too late):
    // churned. User 3 expires 05-01 (not within 30 days of T): no label.
    // User 4 expires 03-15 and only cancels after: churned.
    std::fs::write(
        dir.path().join("payments.csv"),
        "user_id,ts,amount,product,expires_at,is_cancel\n\
         1,2026-02-08T00:00:00Z,149,subscription,2026-03-10T00:00:00Z,false\n\
         1,2026-03-25T00:00:00Z,149,subscription,2026-04-24T00:00:00Z,false\n\
         2,2026-02-03T00:00:00Z,149,subscription,2026-03-05T00:00:00Z,false\n\
         2,2026-04-20T00:00:00Z,149,subscription,2026-05-20T00:00:00Z,false\n\
         3,2026-02-01T00:00:00Z,447,subscription,2026-05-01T00:00:00Z,false\n\
         4,2026-02-13T00:00:00Z,149,subscription,2026-03-15T00:00:00Z,false\n\
         4,2026-03-02T00:00:00Z,0,subscription,2026-03-15T00:00:00Z,true\n",
    )
    .unwrap();
    ingest("payments", &dir.path().join("payments.csv"), &data)
        .await
        .unwrap();
    let ctx = SessionContext::new();
    register(
        &ctx,
        &TableSource {
            name: "payments".into(),
            path: data.join("payments"),
        },
    )
    .await
    .unwrap();
    let p = PlanParams {
        include_unconsented: true,
        ..PlanParams::at(NaiveDate::from_ymd_opt(2026, 3, 1).unwrap())
    };
    let rows = rows_by(
        encore_features::plans::subscription_churn(&ctx, &p)
            .await
            .unwrap(),
        "user_id",
    )
    .await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(rows["1"]["sub_churn"], "false");
    assert_eq!(rows["2"]["sub_churn"], "true");
    assert_eq!(rows["4"]["sub_churn"], "true");
    assert!(!rows.contains_key("3"));
}

/// A small deterministic generator for the brute-force test.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[tokio::test]
async fn sessions_active_days_and_streaks_match_a_brute_force_count() {
    // Plays whose gaps sit on the session gap (1799, 1800, 1801 s), straddle
    // half-hour buckets and midnight, repeat a timestamp, and reach back past
    // the longest window: the plans sum per half-hour bucket before ordering,
    // and must count exactly what sorting every play would.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let t = NaiveDate::from_ymd_opt(2026, 4, 1).unwrap();
    let t_secs = t.and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp();
    let gaps = [
        0, 1, 600, 1799, 1800, 1801, 3599, 3600, 7200, 20_000, 86_400, 400_000,
    ];
    let mut rng = Lcg(7);
    let mut plays: Vec<(u64, i64)> = Vec::new();
    let mut csv = String::from("user_id,item_id,ts,played_secs,item_secs,source,device\n");
    for user in 1..=40u64 {
        // Start 20..100 days before T, some just before midnight.
        let mut ts = t_secs - (20 + rng.below(80) as i64) * 86_400 - rng.below(4000) as i64;
        while ts < t_secs + 86_400 {
            plays.push((user, ts));
            let at = chrono::DateTime::from_timestamp(ts, 0).unwrap();
            csv.push_str(&format!(
                "{user},1,{},100,200,search,mobile\n",
                at.format("%Y-%m-%dT%H:%M:%SZ")
            ));
            ts += gaps[rng.below(gaps.len() as u64) as usize];
        }
    }
    std::fs::write(dir.path().join("plays.csv"), csv).unwrap();
    ingest("plays", &dir.path().join("plays.csv"), &data)
        .await
        .unwrap();
    // The engagement plan also reads interactions (none in its window here).
    std::fs::write(
        dir.path().join("interactions.csv"),
        "user_id,item_id,ts,kind\n1,1,2020-01-01T00:00:00Z,favorite\n",
    )
    .unwrap();
    ingest("interactions", &dir.path().join("interactions.csv"), &data)
        .await
        .unwrap();
    let ctx = context(&data, &["plays", "interactions"]).await;
    let p = PlanParams {
        include_unconsented: true,
        ..PlanParams::at(t)
    };
    let activity = rows_by(user_activity(&ctx, &p).await.unwrap(), "user_id").await;
    let engagement = rows_by(
        encore_features::plans::user_engagement(&ctx, &p)
            .await
            .unwrap(),
        "user_id",
    )
    .await;

    let t_day = t_secs.div_euclid(86_400);
    let mut checked_sessions = 0;
    for user in 1..=40u64 {
        // Brute force: this user's plays in the 90 days before T, sorted.
        let mut ts: Vec<i64> = plays
            .iter()
            .filter(|(u, s)| *u == user && *s < t_secs && *s >= t_secs - 90 * 86_400)
            .map(|(_, s)| *s)
            .collect();
        ts.sort();
        let key = user.to_string();
        if ts.is_empty() {
            assert!(!activity.contains_key(&key), "user {user}");
            continue;
        }
        for w in [7i64, 14, 30, 90] {
            let inside = |s: i64| s.div_euclid(86_400) >= t_day - w;
            let sessions = (0..ts.len())
                .filter(|&i| inside(ts[i]) && (i == 0 || ts[i - 1] < ts[i] - 1800))
                .count();
            let mut days: Vec<i64> = ts
                .iter()
                .filter(|s| inside(**s))
                .map(|s| s.div_euclid(86_400))
                .collect();
            days.dedup();
            let got = |c: &str| activity[&key][&format!("{c}_{w}d")].clone();
            assert_eq!(
                got("sessions"),
                sessions.to_string(),
                "user {user}, {w} days"
            );
            assert_eq!(
                got("active_days"),
                days.len().to_string(),
                "user {user}, {w} days"
            );
            assert_eq!(
                got("plays"),
                ts.iter().filter(|s| inside(**s)).count().to_string(),
                "user {user}, {w} days"
            );
            checked_sessions += sessions;
        }
        // The longest run of days without a play in the 30 days before T.
        let active: std::collections::BTreeSet<i64> = ts
            .iter()
            .map(|s| s.div_euclid(86_400))
            .filter(|d| *d >= t_day - 30)
            .collect();
        let (mut longest, mut run) = (0, 0);
        for day in t_day - 30..t_day {
            run = if active.contains(&day) { 0 } else { run + 1 };
            longest = longest.max(run);
        }
        if ts.iter().any(|s| *s >= t_secs - 60 * 86_400) {
            assert_eq!(
                engagement[&key]["longest_inactive_streak_30d"],
                longest.to_string(),
                "user {user}"
            );
        } else {
            assert!(!engagement.contains_key(&key), "user {user}");
        }
    }
    assert!(
        checked_sessions > 200,
        "{checked_sessions} sessions checked"
    );
}

#[tokio::test]
async fn the_user_feature_vector_equals_its_families_left_joined() {
    // One pass computes every family; the result must be each family's own
    // plan left-joined on user_id, nulls included (users whose last play is
    // over 60 days before T have activity but no engagement row).
    let dir = tempfile::tempdir().unwrap();
    let spec = DataSpec {
        users: 400,
        items: 300,
        days: 120,
        seed: 11,
        ..Default::default()
    };
    generate(&spec, dir.path(), |_, _| {}).unwrap();
    let ctx = context(dir.path(), &["plays", "users", "interactions", "payments"]).await;
    let p = PlanParams::at(NaiveDate::from_ymd_opt(2026, 4, 30).unwrap());
    use encore_features::plans;
    let joined = format!(
        "SELECT a.*, h.* EXCLUDE (user_id), e.* EXCLUDE (user_id), pr.* EXCLUDE (user_id)
         FROM ({}) a
         LEFT JOIN ({}) h ON a.user_id = h.user_id
         LEFT JOIN ({}) e ON a.user_id = e.user_id
         LEFT JOIN ({}) pr ON a.user_id = pr.user_id",
        plans::user_activity_sql(&p).unwrap(),
        plans::user_habits_sql(&p).unwrap(),
        plans::user_engagement_sql(&p).unwrap(),
        plans::user_profile_sql(&p).unwrap(),
    );
    let expected = rows_by(ctx.sql(&joined).await.unwrap(), "user_id").await;
    let fused = ctx
        .sql(&plans::user_features_sql(&p, plans::Inputs::ALL).unwrap())
        .await
        .unwrap();
    let columns: Vec<String> = fused
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let got = rows_by(fused, "user_id").await;
    assert_eq!(got.len(), expected.len());
    assert!(got.len() > 200, "{} users", got.len());
    let mut without_engagement = 0;
    for (user, row) in &expected {
        assert_eq!(row.len(), columns.len(), "same columns");
        for column in &columns {
            let (a, b) = (&got[user][column], &row[column]);
            assert!(same_cell(a, b), "user {user}, {column}: {a} vs {b}");
        }
        without_engagement += usize::from(row["favorites_30d"].is_empty());
    }
    assert!(
        without_engagement > 0,
        "some users have no plays in the last 60 days"
    );
}

#[tokio::test]
async fn day_grouped_scans_sum_buckets_without_a_shuffle_and_change_no_feature() {
    // With Encore's session defaults a scan of plays keeps each day's files
    // in one partition, so the per-(user, day, bucket) sums run where the
    // files are read (no repartition, no partial/final split); the features
    // must not change.
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::SessionConfig;
    use encore_features::plans::{self, SESSION_DEFAULTS};
    let dir = tempfile::tempdir().unwrap();
    let spec = DataSpec {
        users: 300,
        items: 200,
        days: 40,
        seed: 5,
        ..Default::default()
    };
    generate(&spec, dir.path(), |_, _| {}).unwrap();
    let tables = ["plays", "users", "interactions", "payments"];
    let sql = plans::user_features_sql(
        &PlanParams::at(NaiveDate::from_ymd_opt(2026, 2, 10).unwrap()),
        plans::Inputs::ALL,
    )
    .unwrap();
    let config = |defaults: bool| {
        let config = SessionConfig::new().with_target_partitions(4);
        if defaults {
            SESSION_DEFAULTS
                .iter()
                .fold(config, |c, (key, value)| c.set_str(key, value))
        } else {
            config
        }
    };
    // The aggregation grouped by day, and the operator right below it.
    let bucket_sums = |plan: String| -> (String, String) {
        let lines: Vec<&str> = plan.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.contains("AggregateExec") && l.contains(", day@"))
            .unwrap_or_else(|| panic!("no aggregation by day in\n{plan}"));
        (lines[at].to_owned(), lines[at + 1].to_owned())
    };
    let mut results = Vec::new();
    for defaults in [false, true] {
        let ctx = context_with(
            SessionContext::new_with_config(config(defaults)),
            dir.path(),
            &tables,
        )
        .await;
        let df = ctx.sql(&sql).await.unwrap();
        let physical = df.clone().create_physical_plan().await.unwrap();
        let plan = displayable(physical.as_ref()).indent(true).to_string();
        let (agg, below) = bucket_sums(plan.clone());
        if defaults {
            assert!(agg.contains("mode=SinglePartitioned"), "{plan}");
            assert!(!below.contains("RepartitionExec"), "{plan}");
        } else {
            // Without them the same SQL shuffles partial sums.
            assert!(agg.contains("mode=FinalPartitioned"), "{plan}");
            assert!(below.contains("RepartitionExec"), "{plan}");
        }
        results.push(rows_by(df, "user_id").await);
    }
    let (plain, tuned) = (&results[0], &results[1]);
    assert!(plain.len() > 150, "{} users", plain.len());
    assert_eq!(plain.len(), tuned.len());
    for (user, row) in plain {
        for (column, a) in row {
            let b = &tuned[user][column];
            assert!(same_cell(a, b), "user {user}, {column}: {a} vs {b}");
        }
    }
}
