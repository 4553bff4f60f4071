//! What happens when an executor dies mid-query.
//!
//! Left to itself, Ballista 55 re-runs the lost executor's tasks and the
//! query "succeeds" with rows counted twice (the outputs of tasks that had
//! already finished elsewhere are kept beside the re-run ones); with push
//! scheduling it can instead hang, the survivors' task slots never given
//! back. Encore's scheduler therefore
//! - cancels the queries running when an executor is removed (heartbeats
//!   stopped for `--executor-timeout-seconds`): they fail with
//!   "Job ... failed: Cancelled";
//! - fails a query at once when a task cannot fetch shuffle data from a dead
//!   executor (`--stage-max-failures 1`): "Stage ... has failed ... FetchPartition...";
//! - uses pull scheduling by default.
//!
//! So the answer is never wrong and the query never hangs; the dead executor
//! leaves the cluster and re-running the query gives the right answer.

use std::time::Duration;

use datafusion::prelude::SessionContext;
use encore_tests::{Executor, Scheduler, wait_for};

use crate::{run, session};

/// Heavy enough (a many-to-many join) to still be running when an executor is killed.
const QUERY: &str = "SELECT a.source, b.device, count(*) AS pairs, sum(b.played_secs) AS secs \
    FROM plays a JOIN plays b ON a.user_id % 5 = b.user_id % 5 AND a.day = b.day \
    GROUP BY 1, 2 ORDER BY 1, 2";

async fn try_run(ctx: &SessionContext, sql: &str) -> Result<String, String> {
    let batches = ctx
        .sql(sql)
        .await
        .map_err(|e| e.to_string())?
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(
        datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .map_err(|e| e.to_string())?
            .to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_killed_mid_query_fails_clearly_and_the_rerun_is_right() {
    // Fast failure detection: heartbeats every second, dead after 8 s
    // (a busy pull-staged executor polls every 5 s).
    let scheduler = Scheduler::start(&[
        "--executor-timeout-seconds",
        "8",
        "--expire-dead-executor-interval-seconds",
        "1",
        "--task-distribution",
        "round-robin",
    ])
    .unwrap();
    let fast = [
        "--concurrent-tasks",
        "1",
        "--executor-heartbeat-interval-seconds",
        "1",
    ];
    let survivor = Executor::start(&scheduler, &fast).unwrap();
    let mut victim = Executor::start(&scheduler, &fast).unwrap();
    scheduler.wait_for_executors(2).unwrap();

    let expected = run(&session(None).await, QUERY).await;
    let remote = session(Some(&scheduler.url())).await;
    run(&remote, "SET datafusion.execution.target_partitions = 4").await;
    let query = {
        let remote = remote.clone();
        tokio::spawn(async move { try_run(&remote, QUERY).await })
    };

    // Kill the victim while it is running a task of the query.
    wait_for("the victim to run a task", Duration::from_secs(60), || {
        let running = victim.metric("encore_executor_tasks_running").ok()?;
        (running >= 1.0).then_some(())
    })
    .unwrap();
    victim.process.kill();

    let outcome = tokio::time::timeout(Duration::from_secs(90), query)
        .await
        .expect("the query hung: neither an answer nor an error within 90 s")
        .expect("the query task panicked");
    match &outcome {
        // Finishing before the loss is noticed is fine, if the answer is right.
        Ok(actual) => assert_eq!(actual, &expected, "a wrong answer after the executor died"),
        Err(e) => assert!(
            e.contains("Cancelled") || (e.contains("has failed") && e.contains("FetchPartition")),
            "unclear error after the executor died: {e}"
        ),
    }
    eprintln!("executor loss outcome: {outcome:?}");

    // The dead executor leaves the cluster; the survivor answers a re-run.
    wait_for("the victim to be removed", Duration::from_secs(30), || {
        let (_, body) = scheduler.get("/api/executors").ok()?;
        let listed: serde_json::Value = serde_json::from_str(&body).ok()?;
        let ids: Vec<String> = listed
            .as_array()?
            .iter()
            .filter_map(|e| e["id"].as_str().map(str::to_owned))
            .collect();
        (ids == [survivor.id.clone()]).then_some(())
    })
    .unwrap();
    let rerun = tokio::time::timeout(Duration::from_secs(90), try_run(&remote, QUERY))
        .await
        .expect("the re-run hung");
    assert_eq!(rerun.as_deref(), Ok(expected.as_str()));
    assert!(
        survivor
            .metric("encore_executor_tasks_total{outcome=\"succeeded\"}")
            .unwrap()
            >= 1.0
    );
    if outcome.as_ref().is_err_and(|e| e.contains("Cancelled")) {
        let (_, text) = scheduler.get("/metrics").unwrap();
        let cancelled = encore_tests::metric_value(
            &text,
            "encore_scheduler_queries_cancelled_executor_lost_total",
        );
        assert_eq!(cancelled, Some(1.0), "{text}");
    }
}
