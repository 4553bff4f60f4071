//! Dynamic batching: coalescing, a bounded queue, deadlines, graceful drain.

use std::time::Duration;

use encore_model_server::BatchConfig;
use encore_proto::inference::ModelInferRequest;
use encore_proto::inference::model_infer_request::InferInputTensor;

use crate::fixtures::*;
use crate::kserve::{client, floats, request};

fn x(value: f32) -> ModelInferRequest {
    let input = InferInputTensor {
        name: "x".into(),
        datatype: "FP32".into(),
        shape: vec![1, 1],
        ..Default::default()
    };
    request("slow", vec![(input, value.to_le_bytes().to_vec())])
}

#[tokio::test]
async fn concurrent_requests_are_coalesced_and_each_gets_its_own_rows() {
    let registry = tempfile::tempdir().unwrap();
    export_slow(registry.path(), 20);
    let server = serve_with(registry.path(), |c| {
        c.batch = BatchConfig {
            max_batch_size: 64,
            max_queue_delay: Duration::from_millis(20),
            max_queue_size: 1000,
            instances: 1,
            ..Default::default()
        };
    })
    .await;
    let requests = 48;
    let mut tasks = Vec::new();
    for i in 0..requests {
        let mut client = client(server.addr()).await;
        tasks.push(tokio::spawn(async move {
            let r = client.model_infer(x(i as f32)).await.unwrap().into_inner();
            (i, floats(&r.raw_output_contents[0]))
        }));
    }
    for task in tasks {
        let (i, y) = task.await.unwrap();
        assert_eq!(y, vec![i as f32], "request {i} got another request's rows");
    }
    let text = metrics(server.addr()).await;
    let value = |s: &str| encore_tests::metric_value(&text, s).unwrap_or(0.0);
    let calls = value("encore_model_server_batch_size_count{model=\"slow\"}");
    let rows = value("encore_model_server_batch_size_sum{model=\"slow\"}");
    assert_eq!(rows, requests as f64, "{text}");
    assert!(
        calls < requests as f64 / 2.0,
        "{requests} concurrent requests ran in {calls} forward calls:\n{text}"
    );
}

#[tokio::test]
async fn a_full_queue_refuses_with_resource_exhausted_and_deadlines_are_honoured() {
    let registry = tempfile::tempdir().unwrap();
    export_slow(registry.path(), 400);
    let server = serve_with(registry.path(), |c| {
        c.batch = BatchConfig {
            max_batch_size: 1,
            max_queue_delay: Duration::ZERO,
            max_queue_size: 2,
            instances: 1,
            ..Default::default()
        };
    })
    .await;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let mut client = client(server.addr()).await;
        tasks.push(tokio::spawn(async move {
            client.model_infer(x(i as f32)).await
        }));
    }
    let mut ok = 0;
    let mut exhausted = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => ok += 1,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains("max_queue_size"), "{status:?}");
                exhausted += 1;
            }
        }
    }
    assert!(ok >= 1 && exhausted >= 1, "ok {ok}, refused {exhausted}");

    // A request whose deadline passes while it waits behind a slow one is
    // answered without running. (Clients enforce deadlines too, so the caller
    // may see its own CANCELLED "Timeout expired" first.)
    let mut busy = client(server.addr()).await;
    let first = tokio::spawn(async move { busy.model_infer(x(1.0)).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut late = tonic::Request::new(x(2.0));
    late.set_timeout(Duration::from_millis(30));
    let status = client(server.addr())
        .await
        .model_infer(late)
        .await
        .unwrap_err();
    assert!(
        matches!(
            status.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{status:?}"
    );
    first.await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let text = metrics(server.addr()).await;
    let rows =
        encore_tests::metric_value(&text, "encore_model_server_batch_size_sum{model=\"slow\"}");
    assert_eq!(
        rows,
        Some(ok as f64 + 1.0),
        "the late request must not run:\n{text}"
    );
    let sample = "encore_model_server_requests_total{code=\"RESOURCE_EXHAUSTED\",method=\"ModelInfer\",model=\"slow\",variant=\"\",version=\"1\"}";
    assert_eq!(
        encore_tests::metric_value(&text, sample),
        Some(exhausted as f64),
        "{text}"
    );
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let registry = tempfile::tempdir().unwrap();
    export_slow(registry.path(), 200);
    let server = serve_with(registry.path(), |c| {
        c.batch = BatchConfig {
            max_batch_size: 1,
            max_queue_delay: Duration::ZERO,
            max_queue_size: 100,
            instances: 1,
            ..Default::default()
        };
    })
    .await;
    let mut tasks = Vec::new();
    for i in 0..4 {
        let mut client = client(server.addr()).await;
        tasks.push(tokio::spawn(async move {
            client.model_infer(x(i as f32)).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.shutdown().await.unwrap();
    for task in tasks {
        let response = task.await.unwrap();
        assert!(
            response.is_ok(),
            "in-flight request lost at shutdown: {response:?}"
        );
    }
}

/// One request at a time finds the model idle: after the first (queued; it
/// times the model) they run on the request's own thread, with the same
/// answers; `inline: false` keeps every one on an instance thread.
#[tokio::test]
async fn an_idle_fast_model_runs_requests_inline_unless_turned_off() {
    for inline in [true, false] {
        let registry = tempfile::tempdir().unwrap();
        export_slow(registry.path(), 0);
        let server = serve_with(registry.path(), |c| c.batch.inline = inline).await;
        let mut client = client(server.addr()).await;
        // Rounds of 20 until one request ran inline (at most 10 rounds): a
        // forward that a busy machine (other tests) stretches past the
        // inline limit sends the next request to the queue.
        let (mut requests, mut text, mut inlined) = (0, String::new(), 0.0);
        while requests < 200 && (requests == 0 || (inline && inlined == 0.0)) {
            for i in requests..requests + 20 {
                let r = client.model_infer(x(i as f32)).await.unwrap().into_inner();
                assert_eq!(floats(&r.raw_output_contents[0]), vec![i as f32]);
            }
            requests += 20;
            text = metrics(server.addr()).await;
            inlined = encore_tests::metric_value(
                &text,
                "encore_model_server_inline_inferences_total{model=\"slow\"}",
            )
            .unwrap_or(0.0);
        }
        let calls = encore_tests::metric_value(
            &text,
            "encore_model_server_batch_size_count{model=\"slow\"}",
        )
        .unwrap_or(0.0);
        assert_eq!(calls, requests as f64, "{text}");
        if inline {
            // Not all: the first request has no timing to go by.
            assert!(
                inlined >= 1.0 && inlined < requests as f64,
                "{inlined} of {requests} ran inline:\n{text}"
            );
        } else {
            assert_eq!(inlined, 0.0, "{text}");
        }
    }
}
