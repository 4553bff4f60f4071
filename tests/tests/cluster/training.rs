//! `encore train` and `encore models` as users run them: train two churn
//! versions and a recommendation model on generated data, list them, promote, roll back, show, and
//! refuse bad input with one clear line.

use encore_tests::{encore, encore_env};

/// `encore datagen`: `users` users over 60 days into `data`.
pub fn generate(data: &str, users: &str, seed: &str) {
    let (code, _, err) = encore(&[
        "datagen", "--users", users, "--days", "60", "--seed", seed, "--out", data,
    ])
    .unwrap();
    assert_eq!(code, 0, "{err}");
}

/// `encore train churn` on generated `data` at 2026-01-25 into `registry`,
/// on the CPU, with `extra` arguments and environment `env`.
pub fn train_churn(
    data: &str,
    registry: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let mut args = vec![
        "train",
        "churn",
        "--data",
        data,
        "--cutoff",
        "2026-01-25",
        "--registry",
        registry,
        "--cpu",
    ];
    args.extend_from_slice(extra);
    encore_env(&args, env).unwrap()
}

#[test]
fn train_registers_versions_and_models_promote_and_roll_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let registry = dir.path().join("registry").display().to_string();
    generate(&data, "1500", "3");
    let train = |extra: &[&str]| train_churn(&data, &registry, extra, &[]);
    let (code, out, err) = train(&["--set", "epochs=4"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("registered churn:1") && out.contains("(now production)"),
        "{out}"
    );
    assert!(out.contains("auc_30d"), "{out}");
    let (code, out, err) = train(&["--set", "epochs=2", "--promote", "never"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("registered churn:2") && !out.contains("production"),
        "{out}"
    );

    let models = |args: &[&str]| {
        let mut all = vec!["models"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--registry", &registry]);
        encore(&all).unwrap()
    };
    // A recommendation model beside it, and a bad setting refused up front.
    let (code, out, err) = encore(&[
        "train",
        "recommend",
        "--data",
        &data,
        "--cutoff",
        "2026-01-25",
        "--registry",
        &registry,
        "--cpu",
        "--set",
        "epochs=2",
    ])
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("registered recommend:1"), "{out}");
    assert!(
        out.contains("recall_at_10") && out.contains("popular_recall_at_10"),
        "{out}"
    );
    let (code, _, err) = encore(&[
        "train",
        "recommend",
        "--data",
        &data,
        "--cutoff",
        "2026-01-25",
        "--registry",
        &registry,
        "--set",
        "horizon=7",
    ])
    .unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("unknown recommend setting 'horizon'"), "{err}");

    let (code, out, _) = models(&["list"]);
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.starts_with("recommend") && l.contains("recall_at_10=")),
        "{out}"
    );
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("churn")).collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].contains("production") && lines[0].contains("auc_30d="),
        "{out}"
    );
    let (code, out, _) = models(&["promote", "churn:2"]);
    assert_eq!((code, out.trim()), (0, "churn: production 1 -> 2"));
    let (code, out, _) = models(&["rollback", "churn"]);
    assert_eq!((code, out.trim()), (0, "churn: production 2 -> 1"));
    let (code, out, _) = models(&["show", "churn"]);
    assert_eq!(code, 0);
    let manifest: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(manifest["version"], 1, "production is 1 again");
    assert_eq!(manifest["kind"], "churn");

    // Bad input: one error line naming the problem, exit 1.
    for (args, needle) in [
        (
            vec!["--set", "learning_rate=0.1"],
            "unknown churn hyperparameter 'learning_rate'",
        ),
        (vec!["--set", "epochs"], "expected KEY=VALUE"),
        (vec!["--set", "batch_size=0"], "batch_size = 0"),
        (vec!["--horizons", "7,400"], "400 is outside 1..=365"),
    ] {
        let (code, _, err) = train(&args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(needle),
            "{args:?}: {err}"
        );
    }
    for (args, needle) in [
        (vec!["promote", "churn:9"], "no version 9"),
        (vec!["promote", "churn"], "MODEL:VERSION"),
        (vec!["show", "nope"], "model 'nope' is not in the registry"),
        (
            vec!["rollback", "churn", "--alias", "staging"],
            "no alias 'staging'",
        ),
    ] {
        let (code, _, err) = models(&args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// `encore standalone` runs training jobs: `encore train --scheduler
/// --detach` submits one, `encore jobs watch` follows it to the end.
#[test]
fn train_submits_to_a_standalone_cluster_and_jobs_follow_it() {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry").display().to_string();
    let state = dir.path().join("state").display().to_string();
    let (_standalone, line) = encore_tests::Process::spawn(
        "standalone",
        &encore_tests::bin("encore"),
        &[
            "standalone".into(),
            "--bind-port".into(),
            "0".into(),
            "--state-dir".into(),
            state,
            "--registry".into(),
            registry.clone(),
            "--model-server-port".into(),
            "0".into(),
        ],
    )
    .unwrap();
    let url = line.split_whitespace().last().unwrap().to_owned();
    assert!(url.starts_with("df://"), "{line}");
    let data = crate::jobs::data_uri();
    let (code, out, err) = encore(&[
        "train",
        "churn",
        "--data",
        &data,
        "--cutoff",
        crate::jobs::CUTOFF,
        "--scheduler",
        &url,
        "--set",
        "epochs=2",
        "--detach",
    ])
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_owned();
    assert!(id.starts_with("job-"), "{out}");
    let (code, out, err) = encore(&["jobs", "watch", &id, "--scheduler", &url]).unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("{id}: registered churn:1 (now production)")),
        "{out}"
    );
    assert!(out.contains("auc_30d"), "{out}");
    assert!(
        std::path::Path::new(&registry)
            .join("churn/1/model.pt")
            .is_file()
    );
    let (code, out, _) =
        encore(&["jobs", "list", "--state", "succeeded", "--scheduler", &url]).unwrap();
    assert_eq!(code, 0);
    assert!(out.contains(&id), "{out}");
    let (code, _, err) = encore(&["jobs", "list", "--state", "done", "--scheduler", &url]).unwrap();
    assert_eq!(code, 2, "clap rejects an unknown state");
    assert!(err.contains("expected queued, running"), "{err}");
}
