//! The model registry in S3 (a real S3 endpoint: moto's server): `encore
//! train` publishes versions to `s3://`, `encore models` lists and promotes
//! them there, and `encore-model-server` serves from it through its local
//! cache and follows an alias move.

use std::time::Duration;

use encore_proto::encore::v1::ScoreChurnRequest;
use encore_proto::encore::v1::scoring_client::ScoringClient;
use encore_tests::{Process, bin, encore_env, python, wait_for};

use crate::training::{generate, train_churn};

/// moto's S3 server with the bucket `encore`; its endpoint URL.
fn s3_endpoint() -> (Process, String) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/moto_s3.py");
    Process::spawn(
        "moto-s3",
        &python(),
        &[script.display().to_string(), "encore".into()],
    )
    .expect("moto's S3 server starts (moto[server] is in scripts/requirements.txt)")
}

fn score_version(addr: &str) -> u64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut client = ScoringClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let response = client
            .score_churn(ScoreChurnRequest {
                user_ids: vec![1, 2, 3],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.scores.len(), 3);
        assert!(
            response
                .scores
                .iter()
                .all(|s| (0.0..=1.0).contains(&s.p30) && s.p7 <= s.p30),
            "{response:?}"
        );
        response.model_version
    })
}

#[test]
fn an_s3_registry_is_trained_into_listed_promoted_and_served() {
    let (_moto, endpoint) = s3_endpoint();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let train_cache = dir.path().join("train-cache").display().to_string();
    let server_cache = dir.path().join("server-cache");
    let server_cache_str = server_cache.display().to_string();
    let aws = |cache: &str| -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("ENCORE_REGISTRY_CACHE", cache.to_owned()),
        ]
    };
    let train_env = aws(&train_cache);
    let train_env: Vec<(&str, &str)> = train_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let registry = "s3://encore/models";

    generate(&data, "800", "5");
    let train = |extra: &[&str]| {
        let mut args = vec!["--set", "epochs=2"];
        args.extend_from_slice(extra);
        train_churn(&data, registry, &args, &train_env)
    };
    let (code, out, err) = train(&[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("registered churn:1") && out.contains("(now production)"),
        "{out}"
    );
    let (code, out, err) = train(&["--promote", "never"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("registered churn:2"), "{out}");
    // Checkpoints were written under the trainer's cache and are gone now.
    let checkpoints = std::path::Path::new(&train_cache).join("s3/encore/models/_checkpoints");
    assert!(
        checkpoints.is_dir(),
        "checkpoints were kept locally while training"
    );
    assert_eq!(std::fs::read_dir(&checkpoints).unwrap().count(), 0);

    // Listed from S3 (a fresh cache: nothing is read locally).
    let list_cache = dir.path().join("list-cache").display().to_string();
    let list_env = aws(&list_cache);
    let list_env: Vec<(&str, &str)> = list_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let models = |args: &[&str]| {
        let mut all = vec!["models"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--registry", registry]);
        encore_env(&all, &list_env).unwrap()
    };
    let (code, out, err) = models(&["list"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("churn")).collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].contains("production") && lines[0].contains("auc_30d="),
        "{out}"
    );
    let (code, out, _) = models(&["show", "churn:2"]);
    assert_eq!(code, 0);
    let manifest: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (manifest["name"].as_str(), manifest["version"].as_u64()),
        (Some("churn"), Some(2))
    );

    // The server downloads production (1) into its cache and serves it.
    let server_env = aws(&server_cache_str);
    let server_env: Vec<(&str, &str)> = server_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (_server, line) = Process::spawn_env(
        "model-server",
        &bin("encore-model-server"),
        &[
            "--registry".into(),
            registry.into(),
            "--bind-port".into(),
            "0".into(),
            "--poll-interval-seconds".into(),
            "0.2".into(),
        ],
        &server_env,
    )
    .unwrap();
    let addr = line.rsplit(' ').next().unwrap().to_owned();
    assert_eq!(score_version(&addr), 1);
    let cached = server_cache.join("s3/encore/models/churn/1");
    for file in ["manifest.json", "model.pt", "online/users.parquet"] {
        assert!(
            cached.join(file).is_file(),
            "{} is cached",
            cached.join(file).display()
        );
    }

    // Promoting in S3 moves the server to version 2.
    let (code, out, err) = models(&["promote", "churn:2"]);
    assert_eq!((code, out.trim()), (0, "churn: production 1 -> 2"), "{err}");
    wait_for(
        "the server to serve churn:2",
        Duration::from_secs(30),
        || (score_version(&addr) == 2).then_some(()),
    )
    .unwrap();
    let cached_v2 = server_cache.join("s3/encore/models/churn/2");
    assert!(cached_v2.join("model.pt").is_file());
    // Version 1 serves no more: its local copy is evicted.
    wait_for(
        "the server to evict its copy of churn:1",
        Duration::from_secs(10),
        || (!cached.exists()).then_some(()),
    )
    .unwrap();
    let (code, out, _) = models(&["rollback", "churn"]);
    assert_eq!((code, out.trim()), (0, "churn: production 2 -> 1"));
    // Rolled back: version 1 is downloaded again and served, 2 is evicted.
    wait_for(
        "the server to serve churn:1 again",
        Duration::from_secs(30),
        || (score_version(&addr) == 1).then_some(()),
    )
    .unwrap();
    assert!(cached.join("model.pt").is_file());
    wait_for(
        "the server to evict its copy of churn:2",
        Duration::from_secs(10),
        || (!cached_v2.exists()).then_some(()),
    )
    .unwrap();
    let left: Vec<_> = std::fs::read_dir(server_cache.join("s3/encore/models/churn"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left,
        vec!["1".to_owned()],
        "only the served version is cached"
    );

    // Bad locations are one clear error line.
    for (location, needle) in [
        ("gs://encore/models", "gs:// registries are not supported"),
        ("s3:///models", "needs a bucket"),
        ("s3://no-such-bucket/models", "no-such-bucket"),
    ] {
        let (code, _, err) =
            encore_env(&["models", "list", "--registry", location], &list_env).unwrap();
        assert_eq!(code, 1, "{location}: {err}");
        assert!(err.contains(needle), "{location}: {err}");
    }
    // An endpoint nobody listens on: an error naming the registry after a
    // few retries (about 30 s at most), not object_store's 3-minute default.
    let mut unreachable = list_env.clone();
    unreachable.retain(|(k, _)| *k != "AWS_ENDPOINT");
    unreachable.push(("AWS_ENDPOINT", "http://127.0.0.1:1"));
    let (code, _, err) =
        encore_env(&["models", "list", "--registry", registry], &unreachable).unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("s3://encore/models"), "{err}");
}
