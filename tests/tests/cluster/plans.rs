//! Every feature, label and segment plan gives the same rows on a scheduler
//! with two executor processes as in this process.

use chrono::NaiveDate;
use encore_features::plans::{self, PlanParams};
use encore_tests::{Executor, Scheduler};

use crate::{run, session};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_plan_matches_between_cluster_and_standalone() {
    let scheduler = Scheduler::start(&[]).unwrap();
    let _a = Executor::start(&scheduler, &["--concurrent-tasks", "1"]).unwrap();
    let _b = Executor::start(&scheduler, &["--concurrent-tasks", "1"]).unwrap();
    scheduler.wait_for_executors(2).unwrap();
    let remote = session(Some(&scheduler.url())).await;
    run(&remote, "SET datafusion.execution.target_partitions = 4").await;
    let local = session(None).await;

    let p = PlanParams::at(NaiveDate::from_ymd_opt(2026, 1, 4).unwrap());
    // (plan, its SQL, a total order of its rows, fewest rows expected)
    let cases = [
        (
            "user_activity",
            plans::user_activity_sql(&p),
            "user_id",
            200,
        ),
        ("churn_labels", plans::churn_labels_sql(&p), "user_id", 200),
        (
            "user_engagement",
            plans::user_engagement_sql(&p),
            "user_id",
            200,
        ),
        ("segments", plans::segments_sql(&p), "user_id", 200),
        ("user_profile", plans::user_profile_sql(&p), "user_id", 200),
        ("user_habits", plans::user_habits_sql(&p), "user_id", 200),
        (
            "item_features",
            plans::item_features_sql(&p),
            "item_id",
            100,
        ),
        (
            "recommendation_pairs",
            plans::recommendation_pairs_sql(&p),
            "split, user_id, item_id",
            1000,
        ),
        (
            "subscription_churn",
            plans::subscription_churn_sql(&p),
            "user_id",
            5,
        ),
    ];
    for (name, sql, order, fewest) in cases {
        let sql = format!("SELECT * FROM ({}) ORDER BY {order}", sql.unwrap());
        let expected = run(&local, &sql).await;
        let actual = run(&remote, &sql).await;
        // 4 lines of table borders and header around the rows
        let rows = expected.lines().count().saturating_sub(4);
        assert!(rows >= fewest, "{name}: only {rows} rows\n{expected}");
        assert_same_table(name, &expected, &actual);
    }
}

/// Equal cell by cell, where float cells may differ in the last bits (sums
/// in a different order on a different partitioning).
fn assert_same_table(plan: &str, expected: &str, actual: &str) {
    let (e, a): (Vec<_>, Vec<_>) = (expected.lines().collect(), actual.lines().collect());
    assert_eq!(e.len(), a.len(), "{plan}: row counts differ");
    for (line, (e, a)) in e.iter().zip(&a).enumerate() {
        if e == a {
            continue;
        }
        let (ec, ac): (Vec<_>, Vec<_>) = (e.split('|').collect(), a.split('|').collect());
        assert_eq!(ec.len(), ac.len(), "{plan} line {line}:\n{e}\n{a}");
        for (x, y) in ec.iter().zip(&ac) {
            let (x, y) = (x.trim(), y.trim());
            if x == y {
                continue;
            }
            match (x.parse::<f64>(), y.parse::<f64>()) {
                (Ok(x), Ok(y)) if (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0) => {}
                _ => panic!("{plan} line {line}: cluster and standalone differ\n{e}\n{a}"),
            }
        }
    }
}
