//! Shared pieces of Encore's benchmark binaries: latency statistics and
//! KServe request builders. The binaries are in `src/bin/`; how to run them
//! and the results are in `benches/RESULTS.md`.

use std::time::Duration;

use encore_proto::inference::ModelInferRequest;
use encore_proto::inference::model_infer_request::InferInputTensor;

/// Latency summary of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Successful requests.
    pub ok: usize,
    /// Failed requests.
    pub errors: usize,
    /// Requests per second (successful).
    pub qps: f64,
    /// Median latency, milliseconds.
    pub p50_ms: f64,
    /// 90th percentile, milliseconds.
    pub p90_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// Slowest, milliseconds.
    pub max_ms: f64,
}

impl Summary {
    /// Summarises `latencies` (one per successful request) over `elapsed`.
    pub fn of(mut latencies: Vec<Duration>, errors: usize, elapsed: Duration) -> Self {
        latencies.sort_unstable();
        let q = |p: f64| -> f64 {
            if latencies.is_empty() {
                return f64::NAN;
            }
            let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
            latencies[i].as_secs_f64() * 1e3
        };
        Self {
            ok: latencies.len(),
            errors,
            qps: latencies.len() as f64 / elapsed.as_secs_f64(),
            p50_ms: q(0.50),
            p90_ms: q(0.90),
            p99_ms: q(0.99),
            max_ms: q(1.0),
        }
    }

    /// As a JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "ok": self.ok, "errors": self.errors, "qps": self.qps,
            "p50_ms": self.p50_ms, "p90_ms": self.p90_ms, "p99_ms": self.p99_ms, "max_ms": self.max_ms,
        })
    }
}

fn tensor(name: &str, datatype: &str, shape: Vec<i64>) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape,
        ..Default::default()
    }
}

/// A KServe request scoring churn for one user.
pub fn churn_request(user_id: i64) -> ModelInferRequest {
    ModelInferRequest {
        model_name: "churn".into(),
        inputs: vec![tensor("user_id", "INT64", vec![1])],
        raw_input_contents: vec![user_id.to_le_bytes().to_vec()],
        ..Default::default()
    }
}

/// A KServe request for the top `k` items of one user in a context.
pub fn recommend_request(user_id: i64, k: i32, hour: i32, device: &str) -> ModelInferRequest {
    let mut device_raw = (device.len() as u32).to_le_bytes().to_vec();
    device_raw.extend_from_slice(device.as_bytes());
    ModelInferRequest {
        model_name: "recommend".into(),
        inputs: vec![
            tensor("user_id", "INT64", vec![1]),
            tensor("k", "INT32", vec![1]),
            tensor("hour", "INT32", vec![1]),
            tensor("device", "BYTES", vec![1]),
        ],
        raw_input_contents: vec![
            user_id.to_le_bytes().to_vec(),
            k.to_le_bytes().to_vec(),
            hour.to_le_bytes().to_vec(),
            device_raw,
        ],
        ..Default::default()
    }
}

/// A small deterministic generator (SplitMix64) so runs are repeatable.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_right_ranks() {
        let latencies: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = Summary::of(latencies, 2, Duration::from_secs(2));
        assert_eq!((s.ok, s.errors), (100, 2));
        assert_eq!((s.p50_ms, s.p99_ms, s.max_ms), (50.0, 99.0, 100.0));
        assert_eq!(s.qps, 50.0);
    }
}
