//! `/metrics`, `/healthz` and `/readyz` of the real processes, and a
//! graceful stop on SIGTERM.

use std::time::Duration;

use encore_tests::{Executor, Scheduler, metric_value, wait_for};

use crate::{run, session};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_and_executor_expose_health_and_metric_names() {
    let mut scheduler = Scheduler::start(&[]).unwrap();
    assert_eq!(scheduler.get("/healthz").unwrap().0, 200);
    let (code, body) = scheduler.get("/readyz").unwrap();
    assert_eq!(code, 503, "ready without executors: {body}");

    let executor = Executor::start(&scheduler, &["--concurrent-tasks", "2"]).unwrap();
    wait_for("scheduler /readyz", Duration::from_secs(60), || {
        (scheduler.get("/readyz").ok()?.0 == 200).then_some(())
    })
    .unwrap();
    wait_for("executor /readyz", Duration::from_secs(60), || {
        (executor.get("/readyz").ok()?.0 == 200).then_some(())
    })
    .unwrap();
    assert_eq!(executor.get("/healthz").unwrap().0, 200);

    let ctx = session(Some(&scheduler.url())).await;
    let out = run(&ctx, "SELECT count(*) AS n FROM plays").await;
    assert!(out.contains("| n "), "{out}");

    let (code, text) = scheduler.get("/metrics").unwrap();
    assert_eq!(code, 200);
    for name in [
        "encore_scheduler_info",
        "encore_scheduler_uptime_seconds",
        "encore_scheduler_queries_pending",
        "encore_scheduler_queries_running",
        "encore_scheduler_grpc_requests_total",
        "encore_scheduler_grpc_request_duration_seconds_bucket",
        // Ballista's own job metrics, served on the same endpoint.
        "job_exec_time_seconds",
        "pending_task_queue_size",
        // The process collector.
        "process_resident_memory_bytes",
    ] {
        assert!(
            text.contains(name),
            "scheduler /metrics lacks {name}:\n{text}"
        );
    }
    assert_eq!(metric_value(&text, "encore_scheduler_executors"), Some(1.0));
    let completed = text
        .lines()
        .find(|l| l.starts_with("job_exec_time_seconds_count"))
        .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok());
    assert_eq!(completed, Some(1.0), "one query completed:\n{text}");

    let (code, text) = executor.get("/metrics").unwrap();
    assert_eq!(code, 200);
    for name in [
        "encore_executor_info",
        "encore_executor_tasks_total{outcome=\"succeeded\"}",
        "encore_executor_tasks_running",
        "encore_executor_task_duration_seconds_bucket",
        "process_resident_memory_bytes",
    ] {
        assert!(
            text.contains(name),
            "executor /metrics lacks {name}:\n{text}"
        );
    }
    assert_eq!(metric_value(&text, "encore_executor_task_slots"), Some(2.0));

    // SIGTERM stops the executor (it tells the scheduler first) and the
    // scheduler cleanly: exit code 0, promptly.
    let mut executor = executor;
    let status = executor.process.terminate(Duration::from_secs(30)).unwrap();
    assert!(status.success(), "executor exited with {status}");
    let status = scheduler
        .process
        .terminate(Duration::from_secs(20))
        .unwrap();
    assert!(status.success(), "scheduler exited with {status}");
}
