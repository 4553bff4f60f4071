//! KServe v2 / Open Inference Protocol with our generated client.

use encore_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use encore_proto::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use encore_proto::inference::*;
use tonic::transport::Channel;

use crate::fixtures::*;

pub async fn client(addr: std::net::SocketAddr) -> GrpcInferenceServiceClient<Channel> {
    GrpcInferenceServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

fn features(rows: &[[f32; 3]]) -> (InferInputTensor, Vec<u8>) {
    let input = InferInputTensor {
        name: "features".into(),
        datatype: "FP32".into(),
        shape: vec![rows.len() as i64, 3],
        ..Default::default()
    };
    let raw = rows
        .iter()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    (input, raw)
}

fn user_ids(ids: &[i64]) -> (InferInputTensor, Vec<u8>) {
    let input = InferInputTensor {
        name: "user_id".into(),
        datatype: "INT64".into(),
        shape: vec![ids.len() as i64],
        ..Default::default()
    };
    (input, ids.iter().flat_map(|v| v.to_le_bytes()).collect())
}

pub fn request(model: &str, inputs: Vec<(InferInputTensor, Vec<u8>)>) -> ModelInferRequest {
    let (inputs, raw) = inputs.into_iter().unzip();
    ModelInferRequest {
        model_name: model.into(),
        inputs,
        raw_input_contents: raw,
        ..Default::default()
    }
}

pub fn floats(raw: &[u8]) -> Vec<f32> {
    raw.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn longs(raw: &[u8]) -> Vec<i64> {
    raw.chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Splits a raw BYTES tensor (4-byte little-endian length + bytes each).
fn strings(mut raw: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        let len = u32::from_le_bytes(raw[..4].try_into().unwrap()) as usize;
        out.push(String::from_utf8(raw[4..4 + len].to_vec()).unwrap());
        raw = &raw[4 + len..];
    }
    out
}

fn output<'a>(response: &'a ModelInferResponse, name: &str) -> &'a [u8] {
    let i = response
        .outputs
        .iter()
        .position(|o| o.name == name)
        .unwrap_or_else(|| panic!("no output {name} in {:?}", response.outputs));
    &response.raw_output_contents[i]
}

#[tokio::test]
async fn churn_contract_by_features_and_by_user_id() {
    let (_registry, server) = churn_and_recommend().await;
    let mut client = client(server.addr()).await;
    assert!(
        client
            .server_live(ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        client
            .server_ready(ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let ready = client
        .model_ready(ModelReadyRequest {
            name: "churn".into(),
            version: "1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ready.ready);
    let meta = client
        .model_metadata(ModelMetadataRequest {
            name: "churn".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.versions, vec!["1"]);
    let names = |t: &[model_metadata_response::TensorMetadata]| {
        t.iter()
            .map(|t| format!("{}:{}", t.name, t.datatype))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&meta.inputs), ["user_id:INT64", "features:FP32"]);
    assert_eq!(
        names(&meta.outputs),
        [
            "churn_7d:FP32",
            "churn_15d:FP32",
            "churn_30d:FP32",
            "risk_tier:BYTES",
            "fallback:BOOL"
        ]
    );

    // Raw features.
    let rows = [[0.5, -1.0, 2.0], [0.0, 0.0, -3.0]];
    let response = client
        .model_infer(request("churn", vec![features(&rows)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.model_version, "1");
    let p30 = floats(output(&response, "churn_30d"));
    let p7 = floats(output(&response, "churn_7d"));
    for (i, row) in rows.iter().enumerate() {
        let expected = sigmoid(row.iter().sum());
        assert!((p30[i] - expected).abs() < 1e-6, "{p30:?}");
        assert!((p7[i] - expected * 0.5).abs() < 1e-6, "{p7:?}");
    }
    assert_eq!(strings(output(&response, "risk_tier")), ["high", "low"]);
    assert_eq!(output(&response, "fallback"), [0, 0]);

    // User ids: features from the snapshot; 999 is unknown → prior.
    let response = client
        .model_infer(request("churn", vec![user_ids(&[100, 999, 1])]))
        .await
        .unwrap()
        .into_inner();
    let p30 = floats(output(&response, "churn_30d"));
    let p15 = floats(output(&response, "churn_15d"));
    assert!((p30[0] - sigmoid(churn_features(100).iter().sum())).abs() < 1e-6);
    assert!((p30[2] - sigmoid(churn_features(1).iter().sum())).abs() < 1e-6);
    assert_eq!(
        (p30[1], p15[1]),
        (0.2, 0.1),
        "the prior for an unknown user"
    );
    assert_eq!(output(&response, "fallback"), [0, 1, 0]);
    assert_eq!(
        strings(output(&response, "risk_tier")),
        ["high", "low", "low"]
    );

    // Typed contents work as well as raw bytes, and outputs can be chosen.
    let (mut input, _) = features(&rows);
    input.contents = Some(InferTensorContents {
        fp32_contents: rows.iter().flatten().copied().collect(),
        ..Default::default()
    });
    let mut typed = request("churn", vec![]);
    typed.inputs = vec![input];
    typed.outputs = vec![InferRequestedOutputTensor {
        name: "churn_30d".into(),
        ..Default::default()
    }];
    let response = client.model_infer(typed).await.unwrap().into_inner();
    assert_eq!(response.outputs.len(), 1);
    assert!((floats(&response.raw_output_contents[0])[0] - sigmoid(1.5)).abs() < 1e-6);
}

/// The churn module compiles to native code: small requests run it (the
/// native counter moves) and answer exactly as libtorch does on a server
/// with native execution off; a request over `native_max_rows` rows goes
/// to libtorch through the batcher.
#[tokio::test]
async fn small_churn_requests_run_natively_and_answer_as_libtorch() {
    let registry = tempfile::tempdir().unwrap();
    export_churn(registry.path(), 1);
    let native = serve_with(registry.path(), |c| c.batch.native_max_rows = 4).await;
    let torch = serve_with(registry.path(), |c| c.batch.native_max_rows = 0).await;
    let counter = "encore_model_server_native_inferences_total{model=\"churn\"}";
    let native_runs = |text: &str| encore_tests::metric_value(text, counter).unwrap_or(0.0);
    let ids = [3, 999, 57, 100];
    let mut answers = Vec::new();
    for server in [&native, &torch] {
        let response = client(server.addr())
            .await
            .model_infer(request("churn", vec![user_ids(&ids)]))
            .await
            .unwrap()
            .into_inner();
        answers.push(["churn_7d", "churn_15d", "churn_30d"].map(|o| floats(output(&response, o))));
    }
    for (ours, theirs) in answers[0].iter().zip(&answers[1]) {
        assert_eq!(ours.len(), ids.len());
        for (a, b) in ours.iter().zip(theirs) {
            assert!(
                (a - b).abs() < 1e-6,
                "native {ours:?} against libtorch {theirs:?}"
            );
        }
    }
    assert!((answers[0][2][0] - sigmoid(churn_features(3).iter().sum())).abs() < 1e-6);
    assert_eq!(native_runs(&metrics(native.addr()).await), 1.0);
    assert_eq!(native_runs(&metrics(torch.addr()).await), 0.0);

    // Five rows is over the limit: libtorch runs them.
    let rows: Vec<[f32; 3]> = (0..5).map(|i| [i as f32, 0.5, -1.0]).collect();
    let response = client(native.addr())
        .await
        .model_infer(request("churn", vec![features(&rows)]))
        .await
        .unwrap()
        .into_inner();
    let p30 = floats(output(&response, "churn_30d"));
    for (row, p) in rows.iter().zip(&p30) {
        assert!((p - sigmoid(row.iter().sum())).abs() < 1e-6, "{p30:?}");
    }
    let text = metrics(native.addr()).await;
    assert_eq!(native_runs(&text), 1.0, "the 5-row request ran on libtorch");
    assert_eq!(
        encore_tests::metric_value(
            &text,
            "encore_model_server_inferences_total{model=\"churn\",outcome=\"ok\",version=\"1\"}"
        ),
        Some(2.0),
        "both requests counted as inferences\n{text}"
    );
}

#[tokio::test]
async fn recommend_contract_over_kserve() {
    let (_registry, server) = churn_and_recommend().await;
    let mut client = client(server.addr()).await;
    let k = InferInputTensor {
        name: "k".into(),
        datatype: "INT32".into(),
        shape: vec![1],
        ..Default::default()
    };
    let device = InferInputTensor {
        name: "device".into(),
        datatype: "BYTES".into(),
        shape: vec![1],
        ..Default::default()
    };
    let car: Vec<u8> = [3u32.to_le_bytes().as_slice(), b"car"].concat();
    let response = client
        .model_infer(request(
            "recommend",
            vec![
                user_ids(&[3, 42]),
                (k, 3i32.to_le_bytes().to_vec()),
                (device, car),
            ],
        ))
        .await
        .unwrap()
        .into_inner();
    let items = longs(output(&response, "item_ids"));
    let item_shape = &response.outputs[0].shape;
    assert_eq!(item_shape, &[2, 3]);
    assert_eq!(&items[..3], expected_items(3, 3).as_slice());
    assert_eq!(
        &items[3..],
        [1050, 1051, 1052],
        "cold start: popular on car"
    );
    assert_eq!(output(&response, "fallback"), [0, 1]);
    let scores = floats(output(&response, "scores"));
    assert!(scores[0] > scores[1] && scores[1] > scores[2], "{scores:?}");
}

#[tokio::test]
async fn bad_requests_get_invalid_argument_or_not_found_naming_the_problem() {
    let (_registry, server) = churn_and_recommend().await;
    let mut client = client(server.addr()).await;
    let good = || features(&[[1.0, 2.0, 3.0]]);
    let mut cases: Vec<(ModelInferRequest, tonic::Code, &str)> = Vec::new();

    let (mut input, raw) = good();
    input.name = "feats".into();
    cases.push((
        request("churn", vec![(input, raw)]),
        tonic::Code::InvalidArgument,
        "unknown input 'feats'",
    ));
    let (mut input, raw) = good();
    input.datatype = "INT64".into();
    cases.push((
        request("churn", vec![(input, raw)]),
        tonic::Code::InvalidArgument,
        "datatype INT64",
    ));
    let (mut input, raw) = good();
    input.shape = vec![1, 4];
    cases.push((
        request("churn", vec![(input, raw)]),
        tonic::Code::InvalidArgument,
        "shape [1, 4]",
    ));
    let (input, mut raw) = good();
    raw.pop();
    cases.push((
        request("churn", vec![(input, raw)]),
        tonic::Code::InvalidArgument,
        "11 raw bytes",
    ));
    let (input, _) = good();
    let nan: Vec<u8> = [f32::NAN, 1.0, 2.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    cases.push((
        request("churn", vec![(input, nan)]),
        tonic::Code::InvalidArgument,
        "NaN",
    ));
    let (input, _) = good();
    let inf: Vec<u8> = [f32::INFINITY, 1.0, 2.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    cases.push((
        request("churn", vec![(input, inf)]),
        tonic::Code::InvalidArgument,
        "infinity",
    ));
    cases.push((
        request("churn", vec![good(), user_ids(&[1])]),
        tonic::Code::InvalidArgument,
        "either 'user_id' or 'features'",
    ));
    cases.push((
        request("churn", vec![]),
        tonic::Code::InvalidArgument,
        "missing input",
    ));
    let mut output = request("churn", vec![good()]);
    output.outputs = vec![InferRequestedOutputTensor {
        name: "churn_90d".into(),
        ..Default::default()
    }];
    cases.push((
        output,
        tonic::Code::InvalidArgument,
        "unknown output 'churn_90d'",
    ));
    cases.push((
        request("nope", vec![good()]),
        tonic::Code::NotFound,
        "model 'nope'",
    ));
    let mut version = request("churn", vec![good()]);
    version.model_version = "7".into();
    cases.push((version, tonic::Code::NotFound, "version 7"));
    let mut alias = request("churn", vec![good()]);
    alias.model_version = "staging".into();
    cases.push((alias, tonic::Code::NotFound, "no alias 'staging'"));
    let k = InferInputTensor {
        name: "k".into(),
        datatype: "INT32".into(),
        shape: vec![1],
        ..Default::default()
    };
    cases.push((
        request(
            "recommend",
            vec![user_ids(&[1]), (k, 0i32.to_le_bytes().to_vec())],
        ),
        tonic::Code::InvalidArgument,
        "input 'k' must be 1 to 500",
    ));
    let hour = InferInputTensor {
        name: "hour".into(),
        datatype: "INT32".into(),
        shape: vec![3],
        ..Default::default()
    };
    let hours: Vec<u8> = [1i32, 2, 3].iter().flat_map(|h| h.to_le_bytes()).collect();
    cases.push((
        request("recommend", vec![user_ids(&[1, 2]), (hour, hours)]),
        tonic::Code::InvalidArgument,
        "'hour' has 3 values for 2 users",
    ));
    let device = InferInputTensor {
        name: "device".into(),
        datatype: "BYTES".into(),
        shape: vec![1],
        ..Default::default()
    };
    cases.push((
        request(
            "recommend",
            vec![user_ids(&[1]), (device, vec![9, 0, 0, 0, b'x'])],
        ),
        tonic::Code::InvalidArgument,
        "claims 9 bytes",
    ));

    for (req, code, needle) in cases {
        let status = client.model_infer(req).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(
            status.message().contains(needle),
            "'{needle}' not in {status:?}"
        );
    }
    // The server is still serving.
    assert!(
        client
            .model_infer(request("churn", vec![good()]))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn repository_extension_lists_unloads_and_loads() {
    let (registry, server) = churn_and_recommend().await;
    let mut client = client(server.addr()).await;
    export_churn(registry.path(), 2);
    std::fs::write(
        registry.path().join("churn/aliases.json"),
        r#"{"production": 2}"#,
    )
    .unwrap();

    let index = client
        .repository_index(RepositoryIndexRequest::default())
        .await
        .unwrap()
        .into_inner();
    let entries: Vec<(&str, &str, &str)> = index
        .models
        .iter()
        .map(|m| (m.name.as_str(), m.state.as_str(), m.version.as_str()))
        .collect();
    assert_eq!(
        entries,
        [("churn", "READY", "1"), ("recommend", "READY", "1")]
    );

    client
        .repository_model_unload(RepositoryModelUnloadRequest {
            model_name: "churn".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let ready = client
        .model_ready(ModelReadyRequest {
            name: "churn".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!ready.ready);
    // An unloaded model leaves no per-version gauge behind.
    assert!(gauged_versions(&server, "churn").await.is_empty());
    assert_eq!(gauged_versions(&server, "recommend").await, ["1"]);

    // Loading again follows the production alias.
    client
        .repository_model_load(RepositoryModelLoadRequest {
            model_name: "churn".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let meta = client
        .model_metadata(ModelMetadataRequest {
            name: "churn".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.versions, vec!["2"]);
    assert_eq!(gauged_versions(&server, "churn").await, ["2"]);
    let status = client
        .repository_model_load(RepositoryModelLoadRequest {
            model_name: "missing".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn metrics_and_health_share_the_grpc_port() {
    let (_registry, server) = churn_and_recommend().await;
    let mut client = client(server.addr()).await;
    let addr = server.addr().to_string();
    client
        .model_infer(request(
            "churn",
            vec![features(&[[1.0, 2.0, 3.0], [0.0, 1.0, 0.0]])],
        ))
        .await
        .unwrap();
    client
        .model_infer(request("churn", vec![user_ids(&[5, 555])]))
        .await
        .unwrap();
    let (mut bad, raw) = features(&[[1.0, 2.0, 3.0]]);
    bad.name = "x".into();
    client
        .model_infer(request("churn", vec![(bad, raw)]))
        .await
        .unwrap_err();

    let get = |path: &'static str| {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || encore_tests::http_get(&addr, path).unwrap())
    };
    assert_eq!(get("/healthz").await.unwrap().0, 200);
    assert_eq!(get("/readyz").await.unwrap().0, 200);
    let (code, text) = get("/metrics").await.unwrap();
    assert_eq!(code, 200);
    let value = |sample: &str| encore_tests::metric_value(&text, sample);
    let requests = |code: &str| {
        value(&format!(
            "encore_model_server_requests_total{{code=\"{code}\",method=\"ModelInfer\",model=\"churn\",variant=\"\",version=\"1\"}}"
        ))
    };
    assert_eq!(requests("OK"), Some(2.0), "{text}");
    assert_eq!(requests("INVALID_ARGUMENT"), Some(1.0), "{text}");
    assert_eq!(
        value("encore_model_server_inferences_total{model=\"churn\",outcome=\"ok\",version=\"1\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value("encore_model_server_grpc_requests_total{code=\"3\",method=\"ModelInfer\"}"),
        Some(1.0),
        "INVALID_ARGUMENT is code 3:\n{text}"
    );
    assert_eq!(
        value("encore_model_server_loaded_models"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value("encore_model_server_batch_size_sum{model=\"churn\"}"),
        Some(3.0),
        "2 feature rows + 1 known user:\n{text}"
    );
    assert_eq!(
        value("encore_model_server_feature_snapshot_misses_total{model=\"churn\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value("encore_model_server_in_flight_requests{model=\"churn\"}"),
        Some(0.0),
        "{text}"
    );
    for name in [
        "encore_model_server_inference_duration_seconds_bucket",
        "encore_model_server_queue_duration_seconds_bucket{model=\"churn\"",
        "encore_model_server_request_duration_seconds_bucket{method=\"ModelInfer\",model=\"churn\"",
        "encore_model_server_grpc_request_duration_seconds_bucket",
        "encore_model_server_model_load_duration_seconds_count{model=\"churn\"} 1",
        "encore_model_server_model_load_failures_total",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(name), "missing {name}:\n{text}");
    }
}

#[tokio::test]
async fn a_bearer_token_guards_grpc_but_not_health_or_metrics() {
    let registry = tempfile::tempdir().unwrap();
    export_churn(registry.path(), 1);
    let server = serve_with(registry.path(), |c| {
        c.auth_token = Some(encore_model_server::BearerToken::new("s3cret"));
    })
    .await;
    let mut client = client(server.addr()).await;
    let status = client.server_live(ServerLiveRequest {}).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let mut wrong = tonic::Request::new(ServerLiveRequest {});
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer nope".parse().unwrap());
    let status = client.server_live(wrong).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(status.message().contains("not valid"), "{status:?}");
    let mut right = tonic::Request::new(request("churn", vec![user_ids(&[3])]));
    right
        .metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    client.model_infer(right).await.unwrap();
    let addr = server.addr().to_string();
    let (code, _) =
        tokio::task::spawn_blocking(move || encore_tests::http_get(&addr, "/readyz").unwrap())
            .await
            .unwrap();
    assert_eq!(code, 200);
}

#[tokio::test]
async fn oversized_messages_are_refused_and_the_server_keeps_serving() {
    let registry = tempfile::tempdir().unwrap();
    export_churn(registry.path(), 1);
    let server = serve_with(registry.path(), |c| c.grpc_max_message_bytes = 4096).await;
    let mut client = client(server.addr()).await;
    let rows = vec![[0.1f32, 0.2, 0.3]; 2000];
    let status = client
        .model_infer(request("churn", vec![features(&rows)]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            status.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{status:?}"
    );
    assert!(status.message().contains("too large"), "{status:?}");
    client
        .model_infer(request("churn", vec![features(&rows[..10])]))
        .await
        .unwrap();
}

#[test]
fn bad_server_flags_exit_1_naming_the_flag() {
    let registry = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&["--split", "churn=production:x"], "weight 'x'"),
        (&["--shadow", "churn=staging"], "needs a --split"),
        (&["--max-batch-size", "0"], "--max-batch-size"),
        (
            &["--auth-token-file", "/nonexistent/token"],
            "--auth-token-file",
        ),
    ];
    for (flags, needle) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_encore-model-server"))
            .arg("--registry")
            .arg(registry.path())
            .args(["--bind-port", "0"])
            .args(flags)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flags:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{flags:?}: '{needle}' not in {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
