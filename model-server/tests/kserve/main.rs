//! The model server over gRPC, with a TorchScript model exported from
//! Python (the project's torch wheel) into a registry folder.

use std::path::{Path, PathBuf};
use std::process::Command;

use encore_model_server::{ModelServerConfig, ModelServerHandle, start_model_server};
use encore_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use encore_proto::inference::model_infer_request::InferInputTensor;
use encore_proto::inference::*;
use tonic::transport::Channel;

/// A churn-shaped model: three heads from one score, so p7 <= p15 <= p30.
const EXPORT: &str = r#"
import sys, torch
class Churn(torch.nn.Module):
    def forward(self, features):
        s = torch.sigmoid(features.sum(dim=1))
        return s * 0.5, s * 0.8, s
torch.jit.script(Churn()).save(sys.argv[1])
"#;

fn python() -> PathBuf {
    let venv = std::env::var_os("ENCORE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv"));
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh (scripts/test.sh does)",
        python.display()
    );
    python
}

/// Writes `churn` version `version` into `registry` as the trainer would.
fn export_churn(registry: &Path, version: u64) {
    let dir = registry.join("churn").join(version.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    // torch.jit.script reads the module's source, so it must live in a file.
    let script = registry.join("export_churn.py");
    std::fs::write(&script, EXPORT).unwrap();
    let status = Command::new(python())
        .arg(&script)
        .arg(dir.join("model.pt"))
        .status()
        .unwrap();
    assert!(status.success(), "exporting the TorchScript model failed");
    let manifest = serde_json::json!({
        "name": "churn", "version": version, "kind": "churn",
        "inputs": [{"name": "features", "dtype": "FP32", "shape": [-1, 3]}],
        "outputs": [
            {"name": "churn_7d", "dtype": "FP32", "shape": [-1]},
            {"name": "churn_15d", "dtype": "FP32", "shape": [-1]},
            {"name": "churn_30d", "dtype": "FP32", "shape": [-1]}
        ],
        "horizons": [7, 15, 30],
    });
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
}

async fn serve() -> (
    tempfile::TempDir,
    ModelServerHandle,
    GrpcInferenceServiceClient<Channel>,
) {
    let registry = tempfile::tempdir().unwrap();
    export_churn(registry.path(), 1);
    let server = start_model_server(ModelServerConfig {
        registry: registry.path().to_path_buf(),
        bind_port: 0,
        ..Default::default()
    })
    .await
    .unwrap();
    let client = GrpcInferenceServiceClient::connect(format!("http://{}", server.addr()))
        .await
        .unwrap();
    (registry, server, client)
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

fn request(input: InferInputTensor, raw: Vec<u8>) -> ModelInferRequest {
    ModelInferRequest {
        model_name: "churn".into(),
        inputs: vec![input],
        raw_input_contents: vec![raw],
        ..Default::default()
    }
}

fn floats(raw: &[u8]) -> Vec<f32> {
    raw.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[tokio::test]
async fn serves_a_python_torchscript_model_over_kserve_v2() {
    let (_registry, _server, mut client) = serve().await;
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
    assert_eq!(meta.inputs[0].shape, vec![-1, 3]);
    let outputs: Vec<&str> = meta.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(outputs, vec!["churn_7d", "churn_15d", "churn_30d"]);

    let rows = [[0.5, -1.0, 2.0], [0.0, 0.0, 0.0]];
    let (input, raw) = features(&rows);
    let response = client
        .model_infer(request(input, raw))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.model_version, "1");
    assert_eq!(response.outputs.len(), 3);
    assert_eq!(response.outputs[2].name, "churn_30d");
    assert_eq!(response.outputs[2].shape, vec![2]);
    let p30 = floats(&response.raw_output_contents[2]);
    let p7 = floats(&response.raw_output_contents[0]);
    for (i, row) in rows.iter().enumerate() {
        let expected = 1.0 / (1.0 + (-row.iter().sum::<f32>()).exp());
        assert!((p30[i] - expected).abs() < 1e-6, "{p30:?}");
        assert!((p7[i] - expected * 0.5).abs() < 1e-6, "{p7:?}");
    }

    // Typed contents work as well as raw bytes, and outputs can be chosen.
    let mut typed = request(features(&rows).0, Vec::new());
    typed.raw_input_contents.clear();
    typed.inputs[0].contents = Some(InferTensorContents {
        fp32_contents: rows.iter().flatten().copied().collect(),
        ..Default::default()
    });
    typed.outputs = vec![model_infer_request::InferRequestedOutputTensor {
        name: "churn_30d".into(),
        ..Default::default()
    }];
    let response = client.model_infer(typed).await.unwrap().into_inner();
    assert_eq!(response.outputs.len(), 1);
    assert_eq!(floats(&response.raw_output_contents[0]), p30);
}

#[tokio::test]
async fn bad_requests_get_invalid_argument_or_not_found_naming_the_problem() {
    let (_registry, _server, mut client) = serve().await;
    let good = || features(&[[1.0, 2.0, 3.0]]);
    let mut cases: Vec<(ModelInferRequest, tonic::Code, &str)> = Vec::new();

    let (mut input, raw) = good();
    input.name = "feats".into();
    cases.push((
        request(input, raw),
        tonic::Code::InvalidArgument,
        "unknown input 'feats'",
    ));
    let (mut input, raw) = good();
    input.datatype = "INT64".into();
    cases.push((
        request(input, raw),
        tonic::Code::InvalidArgument,
        "datatype INT64",
    ));
    let (mut input, raw) = good();
    input.shape = vec![1, 4];
    cases.push((
        request(input, raw),
        tonic::Code::InvalidArgument,
        "shape [1, 4]",
    ));
    let (input, mut raw) = good();
    raw.pop();
    cases.push((
        request(input, raw),
        tonic::Code::InvalidArgument,
        "11 raw bytes",
    ));
    let (input, _) = good();
    let nan: Vec<u8> = [f32::NAN, 1.0, 2.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    cases.push((request(input, nan), tonic::Code::InvalidArgument, "NaN"));
    let (input, raw) = good();
    let mut output = request(input, raw);
    output.outputs = vec![model_infer_request::InferRequestedOutputTensor {
        name: "churn_90d".into(),
        ..Default::default()
    }];
    cases.push((
        output,
        tonic::Code::InvalidArgument,
        "unknown output 'churn_90d'",
    ));
    let (input, raw) = good();
    let mut unknown = request(input, raw);
    unknown.model_name = "nope".into();
    cases.push((unknown, tonic::Code::NotFound, "model 'nope'"));
    let (input, raw) = good();
    let mut version = request(input, raw);
    version.model_version = "7".into();
    cases.push((version, tonic::Code::NotFound, "version 7"));

    for (req, code, needle) in cases {
        let status = client.model_infer(req).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(
            status.message().contains(needle),
            "'{needle}' not in {status:?}"
        );
    }
    // The server is still serving.
    let (input, raw) = good();
    assert!(client.model_infer(request(input, raw)).await.is_ok());
}

#[tokio::test]
async fn repository_extension_lists_unloads_and_loads() {
    let (registry, _server, mut client) = serve().await;
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
    assert_eq!(index.models.len(), 1);
    assert_eq!(
        (
            index.models[0].state.as_str(),
            index.models[0].version.as_str()
        ),
        ("READY", "1")
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
    let status = client
        .repository_model_load(RepositoryModelLoadRequest {
            model_name: "missing".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
}

/// The real Triton Python client, as recommendation services would use it.
const TRITON_CLIENT: &str = r#"
import sys
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

c = grpcclient.InferenceServerClient(sys.argv[1])
assert c.is_server_live() and c.is_server_ready()
assert c.is_model_ready("churn")
meta = c.get_model_metadata("churn", as_json=True)
assert [o["name"] for o in meta["outputs"]] == ["churn_7d", "churn_15d", "churn_30d"], meta
assert c.get_server_metadata(as_json=True)["extensions"] == ["model_repository"]

x = np.array([[0.5, -1.0, 2.0], [0.0, 0.0, 0.0]], dtype=np.float32)
inp = grpcclient.InferInput("features", list(x.shape), "FP32")
inp.set_data_from_numpy(x)
r = c.infer("churn", [inp])
p30 = r.as_numpy("churn_30d")
assert np.allclose(p30, 1 / (1 + np.exp(-x.sum(axis=1))), atol=1e-6), p30
assert np.all(r.as_numpy("churn_7d") <= r.as_numpy("churn_15d"))

bad = grpcclient.InferInput("features", [1, 4], "FP32")
bad.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
try:
    c.infer("churn", [bad])
    raise SystemExit("a wrong shape was accepted")
except InferenceServerException as e:
    assert "INVALID_ARGUMENT" in str(e.status()) and "shape [1, 4]" in e.message(), e
index = c.get_model_repository_index(as_json=True)
assert index["models"][0]["state"] == "READY", index
print("tritonclient ok")
"#;

#[tokio::test]
async fn tritonclient_grpc_drives_the_server() {
    let (registry, server, _client) = serve().await;
    let script = registry.path().join("triton_client.py");
    std::fs::write(&script, TRITON_CLIENT).unwrap();
    let addr = server.addr().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(&script)
            .arg(addr)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "tritonclient script failed:\n{text}");
    assert!(text.contains("tritonclient ok"), "{text}");
}

#[tokio::test]
async fn metrics_and_health_share_the_grpc_port() {
    let (_registry, server, mut client) = serve().await;
    let addr = server.addr().to_string();
    let (input, raw) = features(&[[1.0, 2.0, 3.0], [0.0, 1.0, 0.0]]);
    client.model_infer(request(input, raw)).await.unwrap();
    let (mut bad, raw) = features(&[[1.0, 2.0, 3.0]]);
    bad.name = "x".into();
    client.model_infer(request(bad, raw)).await.unwrap_err();

    let get = |path: &'static str| {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || encore_tests::http_get(&addr, path).unwrap())
    };
    assert_eq!(get("/healthz").await.unwrap().0, 200);
    assert_eq!(get("/readyz").await.unwrap().0, 200);
    let (code, text) = get("/metrics").await.unwrap();
    assert_eq!(code, 200);
    let value = |sample: &str| encore_tests::metric_value(&text, sample);
    assert_eq!(
        value("encore_model_server_inferences_total{model=\"churn\",outcome=\"ok\",version=\"1\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value("encore_model_server_grpc_requests_total{code=\"0\",method=\"ModelInfer\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value("encore_model_server_grpc_requests_total{code=\"3\",method=\"ModelInfer\"}"),
        Some(1.0),
        "INVALID_ARGUMENT is code 3:\n{text}"
    );
    assert_eq!(
        value("encore_model_server_loaded_models"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value("encore_model_server_batch_size_sum{model=\"churn\"}"),
        Some(2.0),
        "{text}"
    );
    for name in [
        "encore_model_server_inference_duration_seconds_bucket",
        "encore_model_server_grpc_request_duration_seconds_bucket",
        "encore_model_server_model_load_duration_seconds_count{model=\"churn\"} 1",
        "encore_model_server_model_load_failures_total",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(name), "missing {name}:\n{text}");
    }
}
