//! Registry fixtures: TorchScript models exported with the project venv's
//! Python torch (as a data scientist would), manifests, and online snapshots
//! written as Parquet.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, Int32Array, Int64Array, RecordBatch, StringArray};
use encore_model_server::{ModelServerConfig, ModelServerHandle, start_model_server};

pub use encore_tests::python;

/// Runs a Python `script` with `args`; panics with its output on failure.
pub fn run_python(dir: &Path, file: &str, script: &str, args: &[&str]) -> String {
    // torch.jit.script reads the module's source, so it must live in a file.
    let path = dir.join(file);
    std::fs::write(&path, script).unwrap();
    let out = Command::new(python())
        .arg(&path)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{file} failed:\n{text}");
    text
}

/// Churn: p30 = sigmoid(scale * sum(features)), p15 = 0.8 p30, p7 = 0.5 p30.
const EXPORT_CHURN: &str = r#"
import sys, torch
class Churn(torch.nn.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale
    def forward(self, features):
        s = torch.sigmoid(self.scale * features.sum(dim=1))
        return s * 0.5, s * 0.8, s
torch.jit.script(Churn(float(sys.argv[2]))).save(sys.argv[1])
"#;

/// Recommend: item i (id 1000 + i) has embedding e_(i % 4) * (i + 1) / n;
/// a user's embedding is its 4 features; hour and device add nothing.
/// So a user with features e_j is recommended j + 4m items, highest first.
/// Mode `indexed` also exports `items()`, so the server's item index scores
/// the items; `wrong` exports an `items()` that disagrees with `forward`
/// (the server must notice and keep `forward`); `plain` exports neither.
const EXPORT_RECOMMEND: &str = r#"
import sys, torch
from typing import Tuple
class Recommend(torch.nn.Module):
    def __init__(self, n: int):
        super().__init__()
        i = torch.arange(n)
        emb = torch.nn.functional.one_hot(i % 4, 4).float() * ((i + 1).float() / n).unsqueeze(1)
        self.register_buffer("item_vectors", emb)
        self.register_buffer("ids", i + 1000)
    def user_vectors(self, user_features, hour, device):
        return user_features + 0.0 * (hour + device).float().unsqueeze(1)
    def forward(self, user_features, hour, device, k):
        scores = self.user_vectors(user_features, hour, device) @ self.item_vectors.t()
        top, idx = torch.topk(scores, int(k[0]), dim=1)
        return self.ids[idx], top
class Indexed(Recommend):
    @torch.jit.export
    def items(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.item_vectors, self.ids
class Wrong(Recommend):
    @torch.jit.export
    def items(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.item_vectors.flip(0), self.ids
class Failing(Recommend):
    def forward(self, user_features, hour, device, k):
        raise RuntimeError("Expected all tensors to be on the same device")
kind = {"plain": Recommend, "indexed": Indexed, "wrong": Wrong, "failing": Failing}[sys.argv[3]]
torch.jit.script(kind(int(sys.argv[2]))).save(sys.argv[1])
"#;

/// How the recommend fixture's module scores its items (see `EXPORT_RECOMMEND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecommendModule {
    /// `forward` only.
    Plain,
    /// `user_vectors` and `items` too: the server's item index is used.
    Indexed,
    /// An `items()` that disagrees with `forward`.
    Wrong,
    /// A `forward` that always fails (as an export for another device).
    Failing,
}

pub fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

fn version_dir(registry: &Path, model: &str, version: u64) -> PathBuf {
    let dir = registry.join(model).join(version.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Churn features of snapshot user `u` (users 1..=100).
pub fn churn_features(u: i64) -> [f32; 3] {
    [u as f32 * 0.05 - 2.5, 0.5, -0.25]
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `churn` version `version`: scale = version; snapshot users 1..=100
/// (lifecycle "core" for even ids, else "new"; value tier "high" above 50).
pub fn export_churn(registry: &Path, version: u64) {
    let dir = version_dir(registry, "churn", version);
    run_python(
        registry,
        "export_churn.py",
        EXPORT_CHURN,
        &[dir.join("model.pt").to_str().unwrap(), &version.to_string()],
    );
    let users: Vec<i64> = (1..=100).collect();
    let feature = |j: usize| -> ArrayRef {
        Arc::new(Float32Array::from_iter_values(
            users.iter().map(|u| churn_features(*u)[j]),
        ))
    };
    write_parquet(
        &dir.join("online/users.parquet"),
        vec![
            (
                "user_id",
                Arc::new(Int64Array::from(users.clone())) as ArrayRef,
            ),
            ("recency", feature(0)),
            ("frequency", feature(1)),
            ("monetary", feature(2)),
            (
                "lifecycle",
                Arc::new(StringArray::from_iter_values(
                    users
                        .iter()
                        .map(|u| if u % 2 == 0 { "core" } else { "new" }),
                )),
            ),
            (
                "value_tier",
                Arc::new(StringArray::from_iter_values(
                    users.iter().map(|u| if *u > 50 { "high" } else { "low" }),
                )),
            ),
        ],
    );
    let manifest = serde_json::json!({
        "name": "churn", "version": version, "kind": "churn",
        "inputs": [{"name": "features", "dtype": "FP32", "shape": [-1, 3]}],
        "outputs": [
            {"name": "churn_7d", "dtype": "FP32", "shape": [-1]},
            {"name": "churn_15d", "dtype": "FP32", "shape": [-1]},
            {"name": "churn_30d", "dtype": "FP32", "shape": [-1]}
        ],
        "features": ["recency", {"name": "frequency", "mean": 0.5, "std": 1.0}, "monetary"],
        "prior": {"churn_7d": 0.05, "churn_15d": 0.1, "churn_30d": 0.2},
        "horizons": [7, 15, 30],
    });
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
}

/// A churn module that loads but cannot score (as an export traced for
/// another device): its `forward` raises.
const EXPORT_CHURN_FAILING: &str = r#"
import sys, torch
from typing import Tuple
class Churn(torch.nn.Module):
    def forward(self, features) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise RuntimeError("Expected all tensors to be on the same device")
torch.jit.script(Churn()).save(sys.argv[1])
"#;

/// `churn` `version` as [`export_churn`] writes it, but with a module whose
/// `forward` always fails.
pub fn export_churn_failing(registry: &Path, version: u64) {
    export_churn(registry, version);
    let dir = version_dir(registry, "churn", version);
    run_python(
        registry,
        "export_churn_failing.py",
        EXPORT_CHURN_FAILING,
        &[dir.join("model.pt").to_str().unwrap()],
    );
}

/// Number of items of the recommend fixture.
pub const ITEMS: i64 = 100;

/// `recommend` version 1 over [`ITEMS`] items: user u (1..=8) has the
/// one-hot feature e_(u % 4); popular items: 1001..=1005 overall, 1050..=1052
/// for "car" at any hour.
pub fn export_recommend(registry: &Path, version: u64) {
    export_recommend_as(registry, version, RecommendModule::Indexed);
}

/// [`export_recommend`] with the given kind of module.
pub fn export_recommend_as(registry: &Path, version: u64, module: RecommendModule) {
    let dir = version_dir(registry, "recommend", version);
    let mode = match module {
        RecommendModule::Plain => "plain",
        RecommendModule::Indexed => "indexed",
        RecommendModule::Wrong => "wrong",
        RecommendModule::Failing => "failing",
    };
    run_python(
        registry,
        "export_recommend.py",
        EXPORT_RECOMMEND,
        &[
            dir.join("model.pt").to_str().unwrap(),
            &ITEMS.to_string(),
            mode,
        ],
    );
    let users: Vec<i64> = (1..=8).collect();
    let onehot = |j: i64| -> ArrayRef {
        Arc::new(Float32Array::from_iter_values(
            users.iter().map(|u| if u % 4 == j { 1.0 } else { 0.0 }),
        ))
    };
    write_parquet(
        &dir.join("online/users.parquet"),
        vec![
            (
                "user_id",
                Arc::new(Int64Array::from(users.clone())) as ArrayRef,
            ),
            ("g0", onehot(0)),
            ("g1", onehot(1)),
            ("g2", onehot(2)),
            ("g3", onehot(3)),
        ],
    );
    let mut items = vec![1001, 1002, 1003, 1004, 1005, 1050, 1051, 1052];
    let scores = vec![9.0f32, 8.0, 7.0, 6.0, 5.0, 3.0, 2.0, 1.0];
    let devices = vec![
        None,
        None,
        None,
        None,
        None,
        Some("car"),
        Some("car"),
        Some("car"),
    ];
    let hours: Vec<Option<i32>> = vec![None; 8];
    write_parquet(
        &dir.join("online/popular.parquet"),
        vec![
            (
                "item_id",
                Arc::new(Int64Array::from(std::mem::take(&mut items))) as ArrayRef,
            ),
            ("score", Arc::new(Float32Array::from(scores))),
            ("hour", Arc::new(Int32Array::from(hours))),
            ("device", Arc::new(StringArray::from(devices))),
        ],
    );
    let manifest = serde_json::json!({
        "name": "recommend", "version": version, "kind": "recommend",
        "inputs": [
            {"name": "user_features", "dtype": "FP32", "shape": [-1, 4]},
            {"name": "hour", "dtype": "INT64", "shape": [-1]},
            {"name": "device", "dtype": "INT64", "shape": [-1]},
            {"name": "k", "dtype": "INT64", "shape": [1]}
        ],
        "outputs": [
            {"name": "item_ids", "dtype": "INT64", "shape": [-1, -1]},
            {"name": "scores", "dtype": "FP32", "shape": [-1, -1]}
        ],
        "features": ["g0", "g1", "g2", "g3"],
        "devices": ["mobile", "desktop", "car"],
        "catalogue_size": ITEMS,
    });
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
}

/// The items the recommend fixture ranks first for user `u`, best first.
pub fn expected_items(u: i64, k: usize) -> Vec<i64> {
    let j = u % 4;
    (0..ITEMS)
        .rev()
        .filter(|i| i % 4 == j)
        .map(|i| 1000 + i)
        .take(k)
        .collect()
}

/// A generic model that takes long enough to queue behind: `x` FP32 [N, 1]
/// → `y` FP32 [N, 1] = x, after `loops` 256×256 matrix products.
const EXPORT_SLOW: &str = r#"
import sys, torch
class Slow(torch.nn.Module):
    def __init__(self, loops: int):
        super().__init__()
        self.loops = loops
        self.register_buffer("w", torch.eye(256))
    def forward(self, x):
        m = torch.ones(256, 256)
        for _ in range(self.loops):
            m = (m @ self.w) * 1.0
        return x + 0.0 * m[0, 0]
torch.jit.script(Slow(int(sys.argv[2]))).save(sys.argv[1])
"#;

/// `slow` version 1 (a generic model).
pub fn export_slow(registry: &Path, loops: u32) {
    let dir = version_dir(registry, "slow", 1);
    run_python(
        registry,
        "export_slow.py",
        EXPORT_SLOW,
        &[dir.join("model.pt").to_str().unwrap(), &loops.to_string()],
    );
    let manifest = serde_json::json!({
        "name": "slow", "version": 1, "kind": "test",
        "inputs": [{"name": "x", "dtype": "FP32", "shape": [-1, 1]}],
        "outputs": [{"name": "y", "dtype": "FP32", "shape": [-1, 1]}],
    });
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
}

/// The server's `/metrics` page.
pub async fn metrics(addr: std::net::SocketAddr) -> String {
    let addr = addr.to_string();
    tokio::task::spawn_blocking(move || encore_tests::http_get(&addr, "/metrics").unwrap().1)
        .await
        .unwrap()
}

/// The versions of `model` with an `item_index_items` gauge in the
/// server's `/metrics`, ascending.
pub async fn gauged_versions(server: &ModelServerHandle, model: &str) -> Vec<String> {
    let text = metrics(server.addr()).await;
    let mut versions: Vec<String> = text
        .lines()
        .filter(|l| {
            l.starts_with("encore_model_server_item_index_items{")
                && l.contains(&format!("model=\"{model}\""))
        })
        .filter_map(|l| {
            let rest = &l[l.find("version=\"")? + 9..];
            Some(rest[..rest.find('"')?].to_owned())
        })
        .collect();
    versions.sort();
    versions
}

/// Starts a model server on port 0 over `registry` with `config` changes.
pub async fn serve_with(
    registry: &Path,
    change: impl FnOnce(&mut ModelServerConfig),
) -> ModelServerHandle {
    let mut config = ModelServerConfig {
        registry: registry.display().to_string(),
        bind_port: 0,
        ..Default::default()
    };
    change(&mut config);
    start_model_server(config).await.unwrap()
}

/// A registry with churn v1 and recommend v1, and a server over it.
pub async fn churn_and_recommend() -> (tempfile::TempDir, ModelServerHandle) {
    let registry = tempfile::tempdir().unwrap();
    export_churn(registry.path(), 1);
    export_recommend(registry.path(), 1);
    let server = serve_with(registry.path(), |_| {}).await;
    (registry, server)
}
