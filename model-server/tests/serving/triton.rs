//! The real Triton Python client (tritonclient[grpc]), as recommendation
//! services would use it.

use crate::fixtures::*;

const TRITON_CLIENT: &str = r#"
import sys
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

c = grpcclient.InferenceServerClient(sys.argv[1])
assert c.is_server_live() and c.is_server_ready()
assert c.is_model_ready("churn") and c.is_model_ready("recommend", "1")
meta = c.get_model_metadata("churn", as_json=True)
assert [o["name"] for o in meta["outputs"]] == ["churn_7d", "churn_15d", "churn_30d", "risk_tier", "fallback"], meta
assert c.get_server_metadata(as_json=True)["extensions"] == ["model_repository"]

# churn by features
x = np.array([[0.5, -1.0, 2.0], [0.0, 0.0, -3.0]], dtype=np.float32)
inp = grpcclient.InferInput("features", list(x.shape), "FP32")
inp.set_data_from_numpy(x)
r = c.infer("churn", [inp])
p30 = r.as_numpy("churn_30d")
assert np.allclose(p30, 1 / (1 + np.exp(-x.sum(axis=1))), atol=1e-6), p30
assert np.all(r.as_numpy("churn_7d") <= r.as_numpy("churn_15d"))
assert list(r.as_numpy("risk_tier")) == [b"high", b"low"], r.as_numpy("risk_tier")

# churn by user id, with an unknown user
ids = np.array([100, 999], dtype=np.int64)
inp = grpcclient.InferInput("user_id", [2], "INT64")
inp.set_data_from_numpy(ids)
r = c.infer("churn", [inp], outputs=[grpcclient.InferRequestedOutput("churn_30d"), grpcclient.InferRequestedOutput("fallback")])
assert list(r.as_numpy("fallback")) == [False, True], r.as_numpy("fallback")
assert abs(r.as_numpy("churn_30d")[1] - 0.2) < 1e-6

# recommend with k and a BYTES device
u = grpcclient.InferInput("user_id", [2], "INT64"); u.set_data_from_numpy(np.array([3, 4242], dtype=np.int64))
k = grpcclient.InferInput("k", [1], "INT32"); k.set_data_from_numpy(np.array([4], dtype=np.int32))
d = grpcclient.InferInput("device", [2], "BYTES"); d.set_data_from_numpy(np.array([b"mobile", b"car"], dtype=np.object_))
h = grpcclient.InferInput("hour", [1], "INT32"); h.set_data_from_numpy(np.array([21], dtype=np.int32))
r = c.infer("recommend", [u, k, d, h])
items = r.as_numpy("item_ids")
assert items.shape == (2, 4), items.shape
assert list(items[0]) == [1099, 1095, 1091, 1087], items
assert list(items[1][:3]) == [1050, 1051, 1052] and items[1][3] == -1, items
assert list(r.as_numpy("fallback")) == [False, True]

bad = grpcclient.InferInput("features", [1, 4], "FP32")
bad.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
try:
    c.infer("churn", [bad])
    raise SystemExit("a wrong shape was accepted")
except InferenceServerException as e:
    assert "INVALID_ARGUMENT" in str(e.status()) and "shape [1, 4]" in e.message(), e
index = c.get_model_repository_index(as_json=True)
assert [m["state"] for m in index["models"]] == ["READY", "READY"], index
print("tritonclient ok")
"#;

#[tokio::test]
async fn tritonclient_grpc_drives_churn_and_recommend() {
    let (registry, server) = churn_and_recommend().await;
    let addr = server.addr().to_string();
    let dir = registry.path().to_path_buf();
    let text = tokio::task::spawn_blocking(move || {
        run_python(&dir, "triton_client.py", TRITON_CLIENT, &[&addr])
    })
    .await
    .unwrap();
    assert!(text.contains("tritonclient ok"), "{text}");
}

const TLS_CLIENT: &str = r#"
import sys
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

addr, cert = sys.argv[1], sys.argv[2]
c = grpcclient.InferenceServerClient(addr, ssl=True, root_certificates=cert)
auth = {"authorization": "Bearer s3cret"}
assert c.is_server_live(headers=auth)
ids = grpcclient.InferInput("user_id", [1], "INT64")
ids.set_data_from_numpy(np.array([100], dtype=np.int64))
assert c.infer("churn", [ids], headers=auth).as_numpy("risk_tier")[0] == b"high"
try:
    c.infer("churn", [ids])
    raise SystemExit("a call without the token was served")
except InferenceServerException as e:
    assert "UNAUTHENTICATED" in str(e.status()), e
plain = grpcclient.InferenceServerClient(addr)
try:
    plain.is_server_live(headers=auth)
    raise SystemExit("plaintext was served on a TLS port")
except InferenceServerException:
    pass
print("tls ok")
"#;

#[tokio::test]
async fn tritonclient_over_tls_with_a_bearer_token() {
    let registry = tempfile::tempdir().unwrap();
    export_churn(registry.path(), 1);
    let certs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serving/tls");
    let server = serve_with(registry.path(), |c| {
        c.auth_token = Some(encore_model_server::BearerToken::new("s3cret"));
        c.tls = Some(encore_model_server::TlsFiles {
            cert: certs.join("cert.pem"),
            key: certs.join("key.pem"),
        });
    })
    .await;
    let addr = server.addr().to_string();
    let dir = registry.path().to_path_buf();
    let cert = certs.join("cert.pem").display().to_string();
    let text = tokio::task::spawn_blocking(move || {
        run_python(&dir, "tls_client.py", TLS_CLIENT, &[&addr, &cert])
    })
    .await
    .unwrap();
    assert!(text.contains("tls ok"), "{text}");

    // A missing key file is a start-up error naming the file.
    let bad = encore_model_server::ModelServerConfig {
        registry: registry.path().display().to_string(),
        bind_port: 0,
        tls: Some(encore_model_server::TlsFiles {
            cert: certs.join("cert.pem"),
            key: certs.join("missing.pem"),
        }),
        ..Default::default()
    };
    let err = encore_model_server::start_model_server(bad)
        .await
        .err()
        .expect("a missing key must fail the start")
        .to_string();
    assert!(err.contains("missing.pem"), "{err}");
}
