//! A query that needs a shuffle runs on a scheduler and two executor
//! processes, gives the same rows as DataFusion in this process, and both
//! executors run tasks.

use encore_tests::{Executor, Scheduler};

use crate::{run, session};

/// Group-bys and a join: the aggregation needs a hash repartition (shuffle)
/// between stages. Integer aggregates only, so results compare exactly.
const QUERY: &str = "SELECT p.user_id % 7 AS bucket, i.genre, count(*) AS plays, \
    sum(p.played_secs) AS secs, count(DISTINCT p.item_id) AS songs, \
    sum(CASE WHEN p.played_secs < p.item_secs THEN 1 ELSE 0 END) AS skips, \
    min(p.ts) AS first_play, max(p.day) AS last_day \
    FROM plays p JOIN items i ON p.item_id = i.item_id \
    GROUP BY 1, 2 ORDER BY 1, 2";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuffle_aggregation_matches_local_datafusion_and_uses_both_executors() {
    shuffle_on_two_executors("pull-staged").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuffle_aggregation_also_works_with_push_scheduling() {
    shuffle_on_two_executors("push-staged").await;
}

async fn shuffle_on_two_executors(policy: &str) {
    let scheduler = Scheduler::start(&["--scheduler-policy", policy]).unwrap();
    // One task slot each: a stage with several tasks must use both.
    let executor_args = [
        "--concurrent-tasks",
        "1",
        "--task-scheduling-policy",
        policy,
    ];
    let a = Executor::start(&scheduler, &executor_args).unwrap();
    let b = Executor::start(&scheduler, &executor_args).unwrap();
    scheduler.wait_for_executors(2).unwrap();

    let remote = session(Some(&scheduler.url())).await;
    run(&remote, "SET datafusion.execution.target_partitions = 4").await;
    let expected = run(&session(None).await, QUERY).await;
    let actual = run(&remote, QUERY).await;
    assert_eq!(actual, expected);
    // 7 buckets x 8 genres, all present in the generated data.
    assert_eq!(actual.lines().count(), 7 * 8 + 4, "{actual}");

    // The plan had more than one stage: Ballista's REST API lists the job
    // (the SET statement runs client-side, so this query is the only job).
    let (_, jobs) = scheduler.get("/api/jobs").unwrap();
    let jobs: serde_json::Value = serde_json::from_str(&jobs).unwrap();
    let [job] = jobs.as_array().expect("a list of jobs").as_slice() else {
        panic!("expected exactly one job: {jobs}");
    };
    assert_eq!(job["status"], "Completed", "{job}");
    let stages = job["num_stages"].as_u64().unwrap_or(0);
    assert!(stages >= 2, "expected a shuffle (2+ stages): {job}");

    for executor in [&a, &b] {
        let ran = executor
            .metric("encore_executor_tasks_total{outcome=\"succeeded\"}")
            .unwrap();
        assert!(ran >= 1.0, "executor {} ran no tasks", executor.id);
        let failed = executor
            .metric("encore_executor_tasks_total{outcome=\"failed\"}")
            .unwrap();
        assert_eq!(failed, 0.0, "executor {} had failed tasks", executor.id);
    }
}
