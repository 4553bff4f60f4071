//! Hot reload (alias polling) without failed requests, and A/B splits with a shadow.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use encore_model_server::Split;
use encore_proto::encore::v1::ScoreChurnResponse;
use encore_proto::encore::v1::scoring_client::ScoringClient;
use tonic::transport::Channel;

use crate::fixtures::*;
use crate::scoring::{churn_request, client};

/// Exports churn version 1, points `production` at it and serves with the
/// alias polled every 100 ms.
async fn polling_on_version_1(
    registry: &std::path::Path,
) -> encore_model_server::ModelServerHandle {
    export_churn(registry, 1);
    std::fs::write(registry.join("churn/aliases.json"), r#"{"production": 1}"#).unwrap();
    serve_with(registry, |c| {
        c.poll_interval = Duration::from_millis(100);
    })
    .await
}

/// Points `production` at `version`, atomically as the registry does.
fn move_production_to(registry: &std::path::Path, version: u64) {
    encore_common::fs::write_atomic(
        &registry.join("churn/aliases.json"),
        format!(r#"{{"production": {version}}}"#),
    )
    .unwrap();
}

/// Scores user 60 until `version` answers (within `within`); its answer.
async fn served_version(
    client: &mut ScoringClient<Channel>,
    version: u64,
    within: Duration,
) -> ScoreChurnResponse {
    let started = Instant::now();
    loop {
        let r = client
            .score_churn(churn_request(&[60]))
            .await
            .unwrap()
            .into_inner();
        if r.model_version == version {
            return r;
        }
        assert!(
            started.elapsed() < within,
            "version {version} was not swapped in within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn moving_the_production_alias_swaps_versions_without_a_failed_request() {
    let registry = tempfile::tempdir().unwrap();
    export_churn(registry.path(), 2);
    let server = polling_on_version_1(registry.path()).await;

    // Clients hammer the server while the alias moves.
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..4 {
        let mut client = client(server.addr()).await;
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match client.score_churn(churn_request(&[t + 1, 60])).await {
                    Ok(r) => versions.push(r.into_inner().model_version),
                    Err(status) => failures.push(status),
                }
            }
            (versions, failures)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    move_production_to(registry.path(), 2);
    let mut client = client(server.addr()).await;
    let r = served_version(&mut client, 2, Duration::from_secs(20)).await;
    let p = sigmoid(2.0 * churn_features(60).iter().sum::<f32>());
    assert!(
        (r.scores[0].p30 - p).abs() < 1e-6,
        "version 2 computes with scale 2"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for task in tasks {
        let (versions, failures) = task.await.unwrap();
        assert!(
            failures.is_empty(),
            "requests failed during the swap: {failures:?}"
        );
        seen.extend(versions);
    }
    assert!(
        seen.contains(&1) && seen.contains(&2),
        "both versions served"
    );
    // Once swapped, never back.
    let first_two = seen.iter().position(|v| *v == 2).unwrap();
    assert!(seen.len() > first_two);
    // The swapped-out version's gauge is gone, the serving one's is there.
    assert_eq!(gauged_versions(&server, "churn").await, ["2"]);

    let text = metrics(server.addr()).await;
    assert_eq!(
        encore_tests::metric_value(
            &text,
            "encore_model_server_version_swaps_total{model=\"churn\"}"
        ),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test]
async fn an_alias_moved_to_a_module_that_cannot_score_keeps_the_current_version() {
    let registry = tempfile::tempdir().unwrap();
    export_churn_failing(registry.path(), 2);
    export_churn(registry.path(), 3);
    let server = polling_on_version_1(registry.path()).await;
    move_production_to(registry.path(), 2);
    // The poller tries version 2: its one-row probe fails, so the load does.
    let load_failures = || async {
        let text = metrics(server.addr()).await;
        let failures = encore_tests::metric_value(
            &text,
            "encore_model_server_model_load_failures_total{model=\"churn\"}",
        );
        (failures.unwrap_or(0.0), text)
    };
    let started = Instant::now();
    loop {
        let (failures, text) = load_failures().await;
        if failures >= 1.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "version 2 was never tried:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first_failure = Instant::now();
    let mut client = client(server.addr()).await;
    for _ in 0..10 {
        let r = client
            .score_churn(churn_request(&[60]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.model_version, 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gauged_versions(&server, "churn").await, ["1"]);
    // Ten polls or more went by: the failed version was tried again after
    // 1 and then 3 skipped polls (at most 3 loads), not on every poll.
    let (failures, text) = load_failures().await;
    assert!(
        first_failure.elapsed() >= Duration::from_secs(1) && (1.0..=3.0).contains(&failures),
        "{failures} failed loads of version 2 in {:?}:\n{text}",
        first_failure.elapsed()
    );
    // A new version the alias moves to is tried on the next poll.
    move_production_to(registry.path(), 3);
    served_version(&mut client, 3, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_module_that_cannot_score_fails_its_load_naming_it() {
    for model in ["churn", "recommend"] {
        let registry = tempfile::tempdir().unwrap();
        match model {
            "churn" => export_churn_failing(registry.path(), 1),
            _ => export_recommend_as(registry.path(), 1, RecommendModule::Failing),
        }
        let config = encore_model_server::ModelServerConfig {
            registry: registry.path().to_str().unwrap().into(),
            bind_port: 0,
            ..Default::default()
        };
        let message = match encore_model_server::start_model_server(config).await {
            Ok(_) => panic!("{model}: a module whose forward fails was served"),
            Err(e) => e.to_string(),
        };
        assert!(
            message.contains(&format!("{model}/1/model.pt"))
                && message.contains("one-row probe on Cpu failed"),
            "{model}: {message}"
        );
    }
}

#[tokio::test]
async fn a_b_split_is_stable_per_user_and_the_shadow_sees_traffic() {
    let registry = tempfile::tempdir().unwrap();
    export_churn(registry.path(), 1);
    export_churn(registry.path(), 2);
    export_churn(registry.path(), 3);
    std::fs::write(
        registry.path().join("churn/aliases.json"),
        r#"{"production": 1, "staging": 2, "candidate": 3}"#,
    )
    .unwrap();
    let split = Split::parse("production:50,staging:50", Some("candidate".into())).unwrap();
    let server = serve_with(registry.path(), |c| {
        c.splits.insert("churn".into(), split);
    })
    .await;
    let mut client = client(server.addr()).await;

    let mut by_user: HashMap<i64, (String, u64)> = HashMap::new();
    for round in 0..2 {
        for user in 1..=200 {
            let r = client
                .score_churn(churn_request(&[user]))
                .await
                .unwrap()
                .into_inner();
            let served = (r.variant.clone(), r.model_version);
            let expected = match r.variant.as_str() {
                "production" => 1,
                "staging" => 2,
                other => panic!("unexpected variant '{other}'"),
            };
            assert_eq!(r.model_version, expected);
            if round == 0 {
                by_user.insert(user, served);
            } else {
                assert_eq!(by_user[&user], served, "user {user} changed variant");
            }
        }
    }
    let staging = by_user.values().filter(|v| v.0 == "staging").count();
    assert!(
        (60..=140).contains(&staging),
        "50/50 split gave {staging}/200 to staging"
    );

    // An explicit version or alias bypasses the split.
    let mut pinned = churn_request(&[1]);
    pinned.model_version = "staging".into();
    let r = client.score_churn(pinned).await.unwrap().into_inner();
    assert_eq!((r.model_version, r.variant.as_str()), (2, ""));
    let mut pinned = churn_request(&[1]);
    pinned.model_version = "3".into();
    assert_eq!(
        client
            .score_churn(pinned)
            .await
            .unwrap()
            .into_inner()
            .model_version,
        3
    );

    let text = metrics(server.addr()).await;
    let value = |s: &str| encore_tests::metric_value(&text, s).unwrap_or(0.0);
    let requests = |variant: &str, version: &str| {
        value(&format!(
            "encore_model_server_requests_total{{code=\"OK\",method=\"ScoreChurn\",model=\"churn\",variant=\"{variant}\",version=\"{version}\"}}"
        ))
    };
    assert_eq!(requests("staging", "2"), 2.0 * staging as f64, "{text}");
    assert_eq!(
        requests("production", "1"),
        2.0 * (200 - staging) as f64,
        "{text}"
    );
    // Shadow copies are fire-and-forget: give the last ones a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics(server.addr()).await;
        let shadow = encore_tests::metric_value(
            &text,
            "encore_model_server_shadow_requests_total{model=\"churn\",outcome=\"ok\"}",
        )
        .unwrap_or(0.0);
        if shadow == 400.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "shadow saw {shadow} of 400 requests"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    assert!(Split::parse("production:x", None).is_err());
    assert!(Split::parse("production:0", None).is_err());
}
