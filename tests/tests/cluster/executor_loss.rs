//! What Ballista does when an executor dies mid-query: the scheduler notices
//! the missing heartbeats, marks the dead executor's tasks (running, and
//! finished ones whose shuffle output died with it) for re-execution, and
//! the query completes on the surviving executor with the right answer.

use std::time::Duration;

use encore_tests::{Executor, Scheduler, wait_for};

use crate::{run, session};

/// Heavy enough (a many-to-many join) to still be running when an executor is killed.
const QUERY: &str = "SELECT a.source, b.device, count(*) AS pairs, sum(b.played_secs) AS secs \
    FROM plays a JOIN plays b ON a.user_id % 5 = b.user_id % 5 AND a.day = b.day \
    GROUP BY 1, 2 ORDER BY 1, 2";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_survives_an_executor_killed_mid_query() {
    // Fast failure detection: heartbeats every second, dead after 5 s.
    let scheduler = Scheduler::start(&[
        "--executor-timeout-seconds",
        "5",
        "--expire-dead-executor-interval-seconds",
        "1",
        "--task-distribution",
        "round-robin",
    ])
    .unwrap();
    let fast = ["--concurrent-tasks", "1", "--executor-heartbeat-interval-seconds", "1"];
    let survivor = Executor::start(&scheduler, &fast).unwrap();
    let mut victim = Executor::start(&scheduler, &fast).unwrap();
    scheduler.wait_for_executors(2).unwrap();

    let expected = run(&session(None).await, QUERY).await;
    let remote = session(Some(&scheduler.url())).await;
    run(&remote, "SET datafusion.execution.target_partitions = 4").await;
    let query = tokio::spawn(async move { run(&remote, QUERY).await });

    // Kill the victim while it is running a task of the query.
    wait_for("the victim to run a task", Duration::from_secs(60), || {
        let running = victim.metric("encore_executor_tasks_running").ok()?;
        (running >= 1.0).then_some(())
    })
    .unwrap();
    victim.process.kill();

    let actual = tokio::time::timeout(Duration::from_secs(120), query)
        .await
        .expect("the query neither finished nor failed within 120 s")
        .expect("the query task panicked");
    assert_eq!(actual, expected);

    // The dead executor is gone from the cluster; the survivor did the work.
    let (_, executors) = scheduler.get("/api/executors").unwrap();
    let executors: serde_json::Value = serde_json::from_str(&executors).unwrap();
    let ids: Vec<&str> = executors
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["id"].as_str())
        .collect();
    assert_eq!(ids, vec![survivor.id.as_str()]);
    let ran = survivor
        .metric("encore_executor_tasks_total{outcome=\"succeeded\"}")
        .unwrap();
    assert!(ran >= 1.0);
}
