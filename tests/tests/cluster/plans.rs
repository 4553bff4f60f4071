//! The feature and label plans give the same rows on a scheduler with two
//! executor processes as in this process.

use chrono::NaiveDate;
use encore_features::plans::{
    PlanParams, churn_labels_sql, segments_sql, user_activity_sql, user_engagement_sql,
};
use encore_tests::{Executor, Scheduler};

use crate::{run, session};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feature_and_label_plans_match_between_cluster_and_standalone() {
    let scheduler = Scheduler::start(&[]).unwrap();
    let _a = Executor::start(&scheduler, &["--concurrent-tasks", "1"]).unwrap();
    let _b = Executor::start(&scheduler, &["--concurrent-tasks", "1"]).unwrap();
    scheduler.wait_for_executors(2).unwrap();
    let remote = session(Some(&scheduler.url())).await;
    run(&remote, "SET datafusion.execution.target_partitions = 4").await;
    let local = session(None).await;

    let params = PlanParams::at(NaiveDate::from_ymd_opt(2026, 1, 4).unwrap());
    // Plans whose values are exact whatever the partitioning (counts, ranks,
    // averages of 0/1 flags); float sums such as payments' monetary value
    // may differ in the last bit and are compared elsewhere.
    for sql in [
        user_activity_sql(&params).unwrap(),
        churn_labels_sql(&params).unwrap(),
        user_engagement_sql(&params).unwrap(),
        segments_sql(&params).unwrap(),
    ] {
        let sql = format!("SELECT * FROM ({sql}) ORDER BY user_id");
        let expected = run(&local, &sql).await;
        let actual = run(&remote, &sql).await;
        assert!(expected.lines().count() > 200, "{expected}");
        assert_eq!(actual, expected, "cluster and standalone differ for\n{sql}");
    }
}
