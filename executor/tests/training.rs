//! The churn pipeline end to end on generated data: features and labels
//! from the plans, training, held-out metrics, TorchScript + manifest +
//! snapshot in the registry, promotion, and the model server scoring the
//! registered version; plus the ways a job must fail.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use chrono::NaiveDate;
use datafusion::prelude::SessionContext;
use encore_executor::training::{
    ChurnJob, JobTarget, Progress, Promotion, RecommendJob, TrainError, train_churn,
    train_recommend,
};
use encore_features::datagen::{DataSpec, generate};
use encore_models::churn::ChurnConfig;
use encore_models::recommend::RecommendConfig;
use encore_models::registry::Registry;
use encore_proto::encore::v1::scoring_client::ScoringClient;
use encore_proto::encore::v1::{Context, RecommendMode, RecommendRequest, ScoreChurnRequest};

/// 3,000 users over 75 days, generated once for every test here.
fn data() -> &'static Path {
    static DATA: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DATA
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let spec = DataSpec {
                users: 3_000,
                items: 2_000,
                days: 75,
                seed: 5,
                ..Default::default()
            };
            generate(&spec, dir.path(), |_, _| {}).unwrap();
            let path = dir.path().to_path_buf();
            (dir, path)
        })
        .1
}

const CUTOFF: (i32, u32, u32) = (2026, 2, 15);

/// A CPU job on the shared generated data at `CUTOFF`.
fn target(id: &str, registry: &Path, model: &str) -> JobTarget {
    JobTarget {
        job_id: id.into(),
        data: data().to_path_buf(),
        cutoff: NaiveDate::from_ymd_opt(CUTOFF.0, CUTOFF.1, CUTOFF.2).unwrap(),
        registry: registry.display().to_string(),
        model_name: model.into(),
        promotion: Promotion::IfBetter,
        device: tch::Device::Cpu,
        control: Default::default(),
    }
}

fn job(registry: &Path) -> ChurnJob {
    ChurnJob {
        target: target("test-job", registry, "churn"),
        horizons: vec![7, 15, 30],
        config: ChurnConfig {
            epochs: 12,
            ..Default::default()
        },
    }
}

use encore_tests::python;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_job_trains_registers_and_serves() {
    let registry = tempfile::tempdir().unwrap();
    let mut stages = Vec::new();
    let mut epochs = Vec::new();
    let trained = train_churn(&SessionContext::new(), &job(registry.path()), &mut |p| {
        match p {
            Progress::Stage(s) => stages.push(s),
            Progress::Epoch(r) => epochs.push(r),
            Progress::RecEpoch(r) => panic!("a churn job reported {r:?}"),
        }
        true
    })
    .await
    .unwrap();
    assert_eq!((trained.version, trained.promoted), (1, true));
    assert!(trained.rows > 1_000, "{} labelled users", trained.rows);
    assert_eq!(
        stages,
        [
            "computing features and labels",
            "training",
            "evaluating",
            "exporting"
        ]
    );
    assert!(!epochs.is_empty() && epochs.len() <= 12);
    assert!(
        epochs
            .iter()
            .all(|r| r.loss.is_finite() && r.samples_per_second > 0.0)
    );
    assert!(
        epochs.last().unwrap().loss < epochs[0].loss,
        "training loss falls: {epochs:?}"
    );
    // Held-out metrics: the 30-day label is predictable from behaviour.
    let m = &trained.metrics;
    println!("metrics: {m:?}");
    for h in [7, 15, 30] {
        let auc = m[&format!("auc_{h}d")];
        assert!(auc > 0.6 && auc <= 1.0, "auc_{h}d = {auc}");
        assert!(m[&format!("ece_{h}d")] < 0.15, "ece_{h}d");
        assert!(m[&format!("log_loss_{h}d")] < 0.7);
    }

    // The registry: manifest with features, standardisation, prior, metrics.
    let reg = Registry::new(registry.path());
    assert_eq!(reg.resolve("churn", "production").unwrap(), 1);
    let manifest = reg.manifest("churn", 1).unwrap();
    assert_eq!(manifest.kind, "churn");
    let outputs: Vec<&str> = manifest.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(outputs, ["churn_7d", "churn_15d", "churn_30d"]);
    assert_eq!(manifest.inputs[0].shape[1], manifest.features.len() as i64);
    let names: Vec<&str> = manifest.features.iter().map(|f| f.name()).collect();
    assert!(
        names.contains(&"plays_30d") && names.contains(&"lifecycle_code"),
        "{names:?}"
    );
    let plays = serde_json::to_value(
        &manifest.features[names.iter().position(|n| *n == "plays_30d").unwrap()],
    )
    .unwrap();
    assert!(plays["std"].as_f64().unwrap() > 0.0, "{plays}");
    assert_eq!(plays["transform"], "signed_log1p", "{plays}");
    assert!(manifest.prior["churn_7d"] <= manifest.prior["churn_30d"]);
    assert_eq!(manifest.extra["training_job_id"], "test-job");
    assert!(manifest.extra["metrics"]["auc_30d"].as_f64().is_some());

    // Python opens the TorchScript with torch.jit.load and gets monotone heads.
    let model = reg.version_dir("churn", 1).join("model.pt");
    let out = std::process::Command::new(python())
        .args([
            "-c",
            "import sys, torch; m = torch.jit.load(sys.argv[1]); x = torch.randn(64, int(sys.argv[2])); p7, p15, p30 = m(x).unbind(1); \
             assert bool((p7 <= p15 + 1e-6).all() and (p15 <= p30 + 1e-6).all()); print(p30.shape[0])",
            model.to_str().unwrap(),
            &names.len().to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "64");

    // The model server loads the version with its snapshot and scores users.
    let snapshot = reg.version_dir("churn", 1).join("online/users.parquet");
    let user = first_user(&snapshot);
    let server = encore_model_server::start_model_server(encore_model_server::ModelServerConfig {
        registry: registry.path().display().to_string(),
        bind_port: 0,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut client = ScoringClient::connect(format!("http://{}", server.addr()))
        .await
        .unwrap();
    let response = client
        .score_churn(ScoreChurnRequest {
            user_ids: vec![user, -5],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.model_version, 1);
    let (known, unknown) = (&response.scores[0], &response.scores[1]);
    assert!(!known.fallback && unknown.fallback);
    assert!(known.p7 <= known.p15 && known.p15 <= known.p30);
    let segment = known.segment.as_ref().expect("a segment from the snapshot");
    assert!(
        ["new", "growing", "core"].contains(&segment.lifecycle.as_str()),
        "{known:?}"
    );
    // The trained module compiles to native code and matched libtorch at
    // load: the known user was scored by the native plan.
    let addr = server.addr().to_string();
    let (_, text) = tokio::task::spawn_blocking(move || encore_tests::http_get(&addr, "/metrics"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        encore_tests::metric_value(
            &text,
            "encore_model_server_native_inferences_total{model=\"churn\"}"
        ),
        Some(1.0),
        "the trained churn model did not run natively"
    );

    // A second version that is not promoted leaves production alone.
    let mut second = job(registry.path());
    second.target.promotion = Promotion::Never;
    second.config.epochs = 2;
    let t2 = train_churn(&SessionContext::new(), &second, &mut |_| true)
        .await
        .unwrap();
    assert_eq!((t2.version, t2.promoted), (2, false));
    assert_eq!(reg.resolve("churn", "production").unwrap(), 1);
}

/// Every batch of the Parquet file at `path`.
fn read_batches(path: &Path) -> Vec<datafusion::arrow::array::RecordBatch> {
    let file = std::fs::File::open(path).unwrap();
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn first_user(snapshot: &Path) -> i64 {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Int64Type;
    read_batches(snapshot)[0]
        .column_by_name("user_id")
        .unwrap()
        .as_primitive::<Int64Type>()
        .value(0)
}

#[tokio::test]
async fn bad_jobs_fail_with_a_reason() {
    let registry = tempfile::tempdir().unwrap();
    let ctx = SessionContext::new();
    let fail = |j: ChurnJob| {
        let ctx = ctx.clone();
        async move {
            train_churn(&ctx, &j, &mut |_| true)
                .await
                .map(|t| t.version)
                .unwrap_err()
        }
    };
    // A cutoff whose 30-day labels run past the end of the data.
    let mut late = job(registry.path());
    late.target.cutoff = NaiveDate::from_ymd_opt(2026, 3, 10).unwrap();
    let e = fail(late).await;
    assert!(e.to_string().contains("up to 2026-04-09"), "{e}");
    // A cutoff before any play: nothing to learn from.
    let mut early = job(registry.path());
    early.target.cutoff = NaiveDate::from_ymd_opt(2025, 6, 1).unwrap();
    let e = fail(early).await;
    assert!(e.to_string().contains("plays run from"), "{e}");
    // Invalid settings.
    let mut horizons = job(registry.path());
    horizons.horizons = vec![30, 7];
    assert!(fail(horizons).await.to_string().contains("ascending"));
    let mut lr = job(registry.path());
    lr.config.lr = -1.0;
    assert!(fail(lr).await.to_string().contains("lr = -1"));
    let mut name = job(registry.path());
    name.target.model_name = "../etc".into();
    assert!(fail(name).await.to_string().contains("invalid model name"));
    // A missing table.
    let mut nowhere = job(registry.path());
    nowhere.target.data = registry.path().join("nothing");
    assert!(fail(nowhere).await.to_string().contains("no plays/ table"));
    // Cancelling at the first epoch stops the job, and nothing is published.
    let e = train_churn(&ctx, &job(registry.path()), &mut |p| {
        !matches!(p, Progress::Epoch(_))
    })
    .await
    .unwrap_err();
    assert!(matches!(e, TrainError::Cancelled), "{e}");
    assert!(
        Registry::new(registry.path())
            .versions("churn")
            .unwrap_or_default()
            .is_empty()
    );
    // Unknown hyperparameters are rejected by name.
    let e = ChurnConfig::default()
        .set("learning_rate", "0.1")
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("unknown churn hyperparameter 'learning_rate'")
    );
    assert!(ChurnConfig::default().set("epochs", "ten").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recommend_job_trains_beats_popularity_registers_and_serves() {
    let registry = tempfile::tempdir().unwrap();
    let job = RecommendJob {
        target: target("rec-job", registry.path(), "recommend"),
        config: RecommendConfig {
            epochs: 6,
            ..Default::default()
        },
    };
    let mut stages = Vec::new();
    let mut epochs = Vec::new();
    let trained = train_recommend(&SessionContext::new(), &job, &mut |p| {
        match p {
            Progress::Stage(s) => stages.push(s),
            Progress::RecEpoch(r) => epochs.push(r),
            Progress::Epoch(r) => panic!("a recommend job reported {r:?}"),
        }
        true
    })
    .await
    .unwrap();
    assert_eq!((trained.version, trained.promoted), (1, true));
    assert_eq!(
        stages,
        [
            "computing pairs and features",
            "training",
            "evaluating",
            "exporting"
        ]
    );
    assert!(!epochs.is_empty() && epochs.iter().all(|r| r.loss.is_finite()));
    let m = &trained.metrics;
    println!("metrics: {m:?}");
    assert!(m["test_users"] > 100.0, "{m:?}");
    // The generator gives users genre tastes: the towers must rank the
    // week's discoveries better than the most popular items do.
    assert!(
        m["recall_at_10"] > m["popular_recall_at_10"],
        "model {} vs popular {}",
        m["recall_at_10"],
        m["popular_recall_at_10"]
    );
    assert!(m["ndcg_at_10"] > 0.0 && m["hit_at_10"] <= 1.0);

    let reg = Registry::new(registry.path());
    let manifest = reg.manifest("recommend", 1).unwrap();
    assert_eq!(manifest.kind, "recommend");
    let inputs: Vec<&str> = manifest.inputs.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(inputs, ["user_features", "hour", "device", "k"]);
    assert_eq!(manifest.inputs[0].shape[1], manifest.features.len() as i64);
    assert!(!manifest.devices.is_empty(), "device vocabulary");
    assert!(manifest.catalogue_size.unwrap() >= 1_000);

    // Python opens the module and asks for a k it picks at run time.
    let model = reg.version_dir("recommend", 1).join("model.pt");
    let out = std::process::Command::new(python())
        .args([
            "-c",
            "import sys, torch; m = torch.jit.load(sys.argv[1]); n = int(sys.argv[2]); \
             ids, scores = m(torch.randn(3, n), torch.tensor([8, -1, 30]), torch.tensor([1, 0, 99]), torch.tensor([7])); \
             assert ids.shape == (3, 7) and scores.shape == (3, 7), ids.shape; \
             assert bool((scores[:, :-1] >= scores[:, 1:]).all()); print(int(ids.min() >= 0))",
            model.to_str().unwrap(),
            &manifest.features.len().to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");

    // The model server serves it: personalised for a known user, popular
    // items for an unknown one.
    let user = first_user(&reg.version_dir("recommend", 1).join("online/users.parquet"));
    let server = encore_model_server::start_model_server(encore_model_server::ModelServerConfig {
        registry: registry.path().display().to_string(),
        bind_port: 0,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut client = ScoringClient::connect(format!("http://{}", server.addr()))
        .await
        .unwrap();
    let ask = |user_id: i64, hour: i32, device: &str| RecommendRequest {
        user_id,
        k: 15,
        context: Some(Context {
            hour,
            device: device.into(),
        }),
        ..Default::default()
    };
    let known = client
        .recommend(ask(user, 20, &manifest.devices[0]))
        .await
        .unwrap()
        .into_inner();
    assert!(!known.fallback);
    assert_eq!(known.items.len(), 15);
    assert_eq!(known.model_version, 1);
    let ids: std::collections::HashSet<i64> = known.items.iter().map(|i| i.item_id).collect();
    assert_eq!(ids.len(), 15, "no duplicates");
    assert!(known.items.windows(2).all(|w| w[0].score >= w[1].score));
    let cold = client
        .recommend(ask(-42, -1, ""))
        .await
        .unwrap()
        .into_inner();
    assert!(cold.fallback);
    assert_eq!(cold.items.len(), 15);
    assert!(cold.items.iter().all(|i| i.reason == "popular"));

    // Return playlist: replays interleaved with songs new to the user from
    // their favourite genres.
    let online = reg.version_dir("recommend", 1).join("online");
    let returning = read_returning(&online);
    let genre_of = read_genres(&online);
    let (user, (replayed, played, favourite)) = returning
        .iter()
        .find(|(_, (r, _, g))| r.len() >= 5 && !g.is_empty())
        .expect("a user with replays");
    let playlist = client
        .recommend(RecommendRequest {
            mode: RecommendMode::ReturnPlaylist as i32,
            ..ask(*user, 20, &manifest.devices[0])
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!playlist.fallback);
    assert_eq!(playlist.items.len(), 15, "{playlist:?}");
    assert_eq!(playlist.items[0].reason, "replay");
    assert_eq!(playlist.items[1].reason, "new_in_genre", "{playlist:?}");
    let replays: Vec<i64> = playlist
        .items
        .iter()
        .filter(|i| i.reason == "replay")
        .map(|i| i.item_id)
        .collect();
    assert_eq!(replays.len(), 8.min(replayed.len()), "half of 15, rounded");
    assert_eq!(
        replays[..],
        replayed[..replays.len()],
        "most replayed first"
    );
    for item in playlist.items.iter().filter(|i| i.reason != "replay") {
        assert!(!played.contains(&item.item_id), "{item:?} is not new");
        if item.reason == "new_in_genre" {
            let genre = genre_of.get(&item.item_id).expect("a genre");
            assert!(favourite.contains(genre), "{item:?} in {genre}");
        }
    }
    assert!(playlist.items.windows(2).all(|w| w[0].score > w[1].score));
    let status = client
        .recommend(RecommendRequest {
            mode: RecommendMode::ReturnPlaylist as i32,
            replay_share: 2.0,
            ..ask(*user, 20, "")
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("replay_share"), "{status}");
    server.shutdown().await.unwrap();
}

type Returning = (Vec<i64>, std::collections::HashSet<i64>, Vec<String>);

/// `online/return.parquet`: user → (replayed, played, favourite genres).
fn read_returning(online: &Path) -> std::collections::BTreeMap<i64, Returning> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Int64Type;
    let mut out = std::collections::BTreeMap::new();
    for b in read_batches(&online.join("return.parquet")) {
        let ids = b.column(0).as_primitive::<Int64Type>();
        let (replayed, played, genres) = (
            b.column(1).as_list::<i32>(),
            b.column(2).as_list::<i32>(),
            b.column(3).as_list::<i32>(),
        );
        for r in 0..b.num_rows() {
            let ints = |a: datafusion::arrow::array::ArrayRef| -> Vec<i64> {
                a.as_primitive::<Int64Type>().iter().flatten().collect()
            };
            out.insert(
                ids.value(r),
                (
                    ints(replayed.value(r)),
                    ints(played.value(r)).into_iter().collect(),
                    genres
                        .value(r)
                        .as_string::<i32>()
                        .iter()
                        .flatten()
                        .map(str::to_owned)
                        .collect(),
                ),
            );
        }
    }
    out
}

/// `online/items.parquet`: item → genre.
fn read_genres(online: &Path) -> std::collections::HashMap<i64, String> {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::Int64Type;
    let mut out = std::collections::HashMap::new();
    for b in read_batches(&online.join("items.parquet")) {
        let ids = b.column(0).as_primitive::<Int64Type>();
        let genres = b.column(1).as_string::<i32>();
        for r in 0..b.num_rows() {
            if !genres.is_null(r) {
                out.insert(ids.value(r), genres.value(r).to_owned());
            }
        }
    }
    out
}
