//! `fuzz-requests`: feeds the model server's KServe and typed Scoring
//! handlers random and mutated requests for a while, in process, and checks
//! that every answer is OK or a client error (INVALID_ARGUMENT, NOT_FOUND,
//! RESOURCE_EXHAUSTED) — never a panic, an INTERNAL error or a hang.
//!
//! Needs a registry with the `churn` and `recommend` models
//! (benches/peers/export_models.py writes one).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use encore_benches::Rng;
use encore_model_server::BatchConfig;
use encore_model_server::kserve::KserveService;
use encore_model_server::metrics::ServerMetrics;
use encore_model_server::registry::Registry;
use encore_model_server::scoring::ScoringService;
use encore_model_server::store::{ModelStore, StoreConfig};
use encore_proto::encore::v1::scoring_server::Scoring;
use encore_proto::encore::v1::{Context, RecommendRequest, ScoreChurnRequest};
use encore_proto::inference::grpc_inference_service_server::GrpcInferenceService;
use encore_proto::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use encore_proto::inference::{InferTensorContents, ModelInferRequest};
use tonic::Request;

#[derive(Parser, Debug)]
#[command(
    name = "fuzz-requests",
    after_help = "Example:\n  fuzz-requests --registry /tmp/registry --seconds 300"
)]
struct Args {
    /// Registry holding `churn` and `recommend`.
    #[arg(long)]
    registry: std::path::PathBuf,
    /// How long to run.
    #[arg(long, default_value_t = 300)]
    seconds: u64,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

const NAMES: [&str; 9] = [
    "user_id",
    "features",
    "k",
    "hour",
    "device",
    "x",
    "",
    "user_features",
    "churn_30d",
];
const TYPES: [&str; 10] = [
    "FP32", "FP64", "INT64", "INT32", "BYTES", "BOOL", "FP16", "UINT8", "", "fp32",
];
const MODELS: [&str; 5] = ["churn", "recommend", "nope", "", "churn "];

fn pick<'a>(rng: &mut Rng, options: &[&'a str]) -> &'a str {
    options[rng.below(options.len() as u64) as usize]
}

fn dimension(rng: &mut Rng) -> i64 {
    match rng.below(10) {
        0 => -1,
        1 => 0,
        2 => i64::MAX,
        3 => 1 << 40,
        4 => 32,
        _ => rng.below(5) as i64,
    }
}

fn bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.next_u64() as u8).collect()
}

/// A random request: mostly plausible (right names, consistent sizes), with
/// one or more things wrong.
fn infer_request(rng: &mut Rng) -> ModelInferRequest {
    let mut request = ModelInferRequest {
        model_name: pick(rng, &MODELS).into(),
        model_version: pick(rng, &["", "", "1", "2", "production", "x", "-1"]).into(),
        id: "fuzz".into(),
        ..Default::default()
    };
    let inputs = rng.below(5);
    let raw = rng.below(3) != 0;
    for _ in 0..inputs {
        let dtype = pick(rng, &TYPES);
        let rank = rng.below(4) as usize;
        let shape: Vec<i64> = (0..rank).map(|_| dimension(rng)).collect();
        let count = shape
            .iter()
            .try_fold(1u64, |a, d| {
                if *d < 0 {
                    None
                } else {
                    a.checked_mul(*d as u64)
                }
            })
            .unwrap_or(3)
            .min(4096) as usize;
        let width = match dtype {
            "FP64" | "INT64" => 8,
            "BOOL" | "UINT8" => 1,
            "BYTES" => 5,
            _ => 4,
        };
        let mut input = InferInputTensor {
            name: pick(rng, &NAMES).into(),
            datatype: dtype.into(),
            shape,
            ..Default::default()
        };
        if raw {
            let mut len = count * width;
            if rng.below(4) == 0 {
                len = rng.below(64) as usize;
            }
            let mut data = bytes(rng, len);
            if dtype == "BYTES" && rng.below(2) == 0 {
                data = (0..count).flat_map(|_| [1, 0, 0, 0, b'a']).collect();
            }
            if dtype == "INT64" && rng.below(2) == 0 {
                data = (0..count)
                    .flat_map(|_| (1 + rng.below(200_000) as i64).to_le_bytes())
                    .collect();
            }
            request.raw_input_contents.push(data);
        } else {
            let n = if rng.below(4) == 0 {
                rng.below(10) as usize
            } else {
                count
            };
            let mut contents = InferTensorContents::default();
            match dtype {
                "FP32" => {
                    contents.fp32_contents = (0..n)
                        .map(|_| f32::from_bits(rng.next_u64() as u32))
                        .collect()
                }
                "FP64" => {
                    contents.fp64_contents =
                        (0..n).map(|_| f64::from_bits(rng.next_u64())).collect()
                }
                "INT64" => {
                    contents.int64_contents = (0..n).map(|_| rng.next_u64() as i64).collect()
                }
                "INT32" => contents.int_contents = (0..n).map(|_| rng.next_u64() as i32).collect(),
                "BOOL" => contents.bool_contents = (0..n).map(|_| rng.below(2) == 0).collect(),
                _ => contents.bytes_contents = (0..n).map(|_| bytes(rng, 3)).collect(),
            }
            input.contents = Some(contents);
        }
        request.inputs.push(input);
    }
    if rng.below(5) == 0 {
        request.raw_input_contents.push(bytes(rng, 8));
    }
    if rng.below(4) == 0 {
        request.outputs.push(InferRequestedOutputTensor {
            name: pick(rng, &["churn_30d", "risk_tier", "item_ids", "nope"]).into(),
            ..Default::default()
        });
    }
    request
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let metrics = Arc::new(ServerMetrics::new()?);
        let store = Arc::new(ModelStore::new(
            Registry::new(&args.registry),
            StoreConfig {
                batch: BatchConfig::default(),
                splits: Default::default(),
                device: tch::Device::Cpu,
                item_index: true,
            },
            metrics,
        ));
        for model in ["churn", "recommend"] {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.load(model)).await??;
        }
        let kserve = Arc::new(KserveService::new(store.clone()));
        let scoring = Arc::new(ScoringService::new(store));
        let mut rng = Rng::new(args.seed);
        let mut codes: BTreeMap<String, u64> = BTreeMap::new();
        let mut unexpected = Vec::new();
        let started = Instant::now();
        let until = started + Duration::from_secs(args.seconds);
        let mut cases = 0u64;
        while Instant::now() < until {
            let mut batch = Vec::new();
            for _ in 0..64 {
                let kind = rng.below(4);
                let seed = rng.next_u64();
                let (kserve, scoring) = (kserve.clone(), scoring.clone());
                batch.push(tokio::spawn(async move {
                    let mut rng = Rng::new(seed);
                    let result = match kind {
                        0 | 1 => kserve
                            .model_infer(Request::new(infer_request(&mut rng)))
                            .await
                            .map(|_| ()),
                        2 => {
                            let n = rng.below(20) as usize;
                            let request = ScoreChurnRequest {
                                user_ids: (0..n).map(|_| rng.next_u64() as i64 % 300_000).collect(),
                                model_version: pick(&mut rng, &["", "1", "9", "staging"]).into(),
                                model_name: pick(&mut rng, &["", "churn", "recommend", "x"]).into(),
                            };
                            scoring.score_churn(Request::new(request)).await.map(|_| ())
                        }
                        _ => {
                            let request = RecommendRequest {
                                user_id: rng.next_u64() as i64 % 300_000,
                                k: rng.below(600) as u32,
                                context: (rng.below(3) != 0).then(|| Context {
                                    hour: rng.below(30) as i32 - 3,
                                    device: pick(&mut rng, &["", "mobile", "CAR", "\u{0}"]).into(),
                                }),
                                exclude_item_ids: (0..rng.below(50))
                                    .map(|_| rng.below(200_000) as i64)
                                    .collect(),
                                model_version: pick(&mut rng, &["", "1", "x"]).into(),
                                model_name: pick(&mut rng, &["", "recommend", "churn"]).into(),
                                mode: rng.below(3) as i32,
                                replay_share: rng.below(4) as f32 * 0.5 - 0.5,
                            };
                            scoring.recommend(Request::new(request)).await.map(|_| ())
                        }
                    };
                    result.map_err(|status| (status.code(), status.message().to_owned()))
                }));
            }
            for task in batch {
                cases += 1;
                let outcome = tokio::time::timeout(Duration::from_secs(30), task).await;
                let code = match outcome {
                    Err(_) => {
                        unexpected.push("a request hung for 30 s".to_owned());
                        "HANG".to_owned()
                    }
                    Ok(Err(join)) => {
                        unexpected.push(format!("panic: {join}"));
                        "PANIC".to_owned()
                    }
                    Ok(Ok(Ok(()))) => "OK".to_owned(),
                    Ok(Ok(Err((code, message)))) => {
                        if !matches!(
                            code,
                            tonic::Code::InvalidArgument
                                | tonic::Code::NotFound
                                | tonic::Code::ResourceExhausted
                        ) {
                            unexpected.push(format!("{code:?}: {message}"));
                        }
                        format!("{code:?}")
                    }
                };
                *codes.entry(code).or_default() += 1;
            }
        }
        let line = serde_json::json!({
            "cases": cases,
            "seconds": started.elapsed().as_secs_f64(),
            "codes": codes,
            "unexpected": unexpected.len(),
            "first_unexpected": unexpected.iter().take(5).collect::<Vec<_>>(),
        });
        println!("{line}");
        anyhow::ensure!(
            unexpected.is_empty(),
            "{} unexpected outcomes",
            unexpected.len()
        );
        Ok(())
    })
}
