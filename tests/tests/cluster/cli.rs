//! The `encore` CLI against a real cluster, and its answers to bad input.

use encore_tests::{Executor, Scheduler, encore};

use crate::{data_dir, temp_path};

fn table(name: &str) -> String {
    format!("{name}={}", data_dir().join(name).display())
}

#[test]
fn sql_on_a_remote_cluster_prints_and_writes_results() {
    let scheduler = Scheduler::start(&[]).unwrap();
    let _executor = Executor::start(&scheduler, &[]).unwrap();
    scheduler.wait_for_executors(1).unwrap();
    let url = scheduler.url();

    let sql = "SELECT source, count(*) AS plays FROM plays GROUP BY source ORDER BY source";
    let plays = table("plays");
    let (code, out, err) = encore(&["sql", "--scheduler", &url, "--table", &plays, sql]).unwrap();
    assert_eq!(code, 0, "stderr: {err}");
    for source in ["playlist", "radio", "recommendation", "search", "other"] {
        assert!(out.contains(source), "{out}");
    }
    assert!(out.contains("5 rows"), "{out}");

    // --out writes a file another query can read back.
    let (_dir, csv) = temp_path("by_source.csv");
    let csv_arg = csv.display().to_string();
    let (code, out, err) = encore(&[
        "sql",
        "--scheduler",
        &url,
        "--table",
        &plays,
        sql,
        "--out",
        &csv_arg,
    ])
    .unwrap();
    assert_eq!(code, 0, "stderr: {err}");
    assert!(out.contains("wrote 5 rows"), "{out}");
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(text.lines().next(), Some("source,plays"));
    assert_eq!(text.lines().count(), 6, "{text}");
    // No temporary file is left beside the result.
    let leftovers: Vec<_> = std::fs::read_dir(csv.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");

    let (_dir, parquet) = temp_path("by_source.parquet");
    let parquet_arg = parquet.display().to_string();
    let (code, _, err) = encore(&[
        "sql",
        "--scheduler",
        &url,
        "--table",
        &plays,
        sql,
        "--out",
        &parquet_arg,
    ])
    .unwrap();
    assert_eq!(code, 0, "stderr: {err}");
    let back = format!("t={parquet_arg}");
    let (code, out, err) = encore(&[
        "sql",
        "--scheduler",
        &url,
        "--table",
        &back,
        "SELECT sum(plays) AS total FROM t",
    ])
    .unwrap();
    assert_eq!(code, 0, "stderr: {err}");
    let (_, direct, _) = encore(&[
        "sql",
        "--scheduler",
        &url,
        "--table",
        &plays,
        "SELECT count(*) AS total FROM plays",
    ])
    .unwrap();
    let total = |s: &str| s.lines().nth(3).map(str::to_owned);
    assert_eq!(total(&out), total(&direct), "{out} vs {direct}");
}

#[test]
fn sql_standalone_runs_without_a_cluster() {
    let plays = table("plays");
    let (code, out, err) = encore(&[
        "sql",
        "--standalone",
        "--table",
        &plays,
        "SELECT count(DISTINCT day) AS days FROM plays",
    ])
    .unwrap();
    assert_eq!(code, 0, "stderr: {err}");
    assert!(out.contains("| 6    |"), "{out}");

    // --conf sets session options, as SQL's SET does: with identifier
    // normalisation off, the column keeps its capital.
    let (code, out, err) = encore(&[
        "sql",
        "--standalone",
        "--table",
        &plays,
        "--conf",
        "datafusion.sql_parser.enable_ident_normalization=false",
        "--conf",
        "datafusion.execution.target_partitions=3",
        "SELECT count(DISTINCT day) AS Days FROM plays",
    ])
    .unwrap();
    assert_eq!(code, 0, "stderr: {err}");
    assert!(
        out.contains("| Days |") && out.contains("| 6    |"),
        "{out}"
    );
}

/// Each bad input: non-zero exit, one `error:` line naming the problem.
#[test]
fn bad_input_gives_one_clear_error_line() {
    let plays = table("plays");
    let missing = format!("t={}", data_dir().join("nope.parquet").display());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["sql", "--scheduler", "df://127.0.0.1:1", "SELECT 1"],
            "cannot reach scheduler at df://127.0.0.1:1",
        ),
        (
            vec!["sql", "--scheduler", "not a url", "SELECT 1"],
            "invalid scheduler URL",
        ),
        (
            vec![
                "sql",
                "--standalone",
                "--table",
                &plays,
                "SELEC count(*) FROM plays",
            ],
            "SELEC",
        ),
        (
            vec![
                "sql",
                "--standalone",
                "--table",
                &missing,
                "SELECT * FROM t",
            ],
            "nope.parquet does not exist",
        ),
        (
            vec!["sql", "--standalone", "SELECT * FROM no_such_table"],
            "no_such_table",
        ),
        (
            vec!["sql", "--standalone", "--table", "plays", "SELECT 1"],
            "expected NAME=PATH",
        ),
        (
            vec!["sql", "--standalone", "SELECT 1", "--out", "result.xlsx"],
            "unknown format",
        ),
        (
            vec![
                "sql",
                "--standalone",
                "--conf",
                "target_partitions",
                "SELECT 1",
            ],
            "expected KEY=VALUE",
        ),
        (
            vec![
                "sql",
                "--standalone",
                "--conf",
                "datafusion.execution.no_such_option=1",
                "SELECT 1",
            ],
            "--conf datafusion.execution.no_such_option=1",
        ),
        (
            vec![
                "standalone",
                "--bind-port",
                "0",
                "--model-server-device",
                "gpu",
            ],
            "--model-server-device: device 'gpu': expected auto, cpu, cuda or cuda:N",
        ),
    ];
    for (args, needle) in cases {
        let (code, out, err) = encore(&args).unwrap();
        assert_ne!(code, 0, "{args:?} succeeded: {out}");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        let errors: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(
            errors.len(),
            1,
            "{args:?}: expected one error line, got:\n{err}"
        );
        assert!(
            errors[0].contains(needle),
            "{args:?}: '{needle}' not in:\n{err}"
        );
    }
}

#[test]
fn every_command_has_help_with_an_example() {
    for cmd in [
        "sql",
        "standalone",
        "demo",
        "datagen",
        "features",
        "train",
        "jobs",
        "models",
        "eval",
    ] {
        let (code, out, err) = encore(&[cmd, "--help"]).unwrap();
        assert_eq!(code, 0, "{cmd}: {err}");
        assert!(
            out.contains("Example"),
            "{cmd} --help has no example:\n{out}"
        );
    }
    for bin in ["encore-scheduler", "encore-executor"] {
        let out = std::process::Command::new(encore_tests::bin(bin))
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Example"),
            "{bin}"
        );
    }
}

#[test]
fn standalone_serves_sql_and_stops_on_sigterm() {
    let (_state, state) = temp_path("state");
    let (mut process, line) = encore_tests::Process::spawn(
        "standalone",
        &encore_tests::bin("encore"),
        &[
            "standalone".into(),
            "--bind-port".into(),
            "0".into(),
            "--state-dir".into(),
            state.display().to_string(),
        ],
    )
    .unwrap();
    let url = line
        .split_whitespace()
        .last()
        .filter(|u| u.starts_with("df://"))
        .unwrap_or_else(|| panic!("no scheduler URL in '{line}'"))
        .to_owned();
    let plays = table("plays");
    let (code, out, err) = encore(&[
        "sql",
        "--scheduler",
        &url,
        "--table",
        &plays,
        "SELECT count(DISTINCT user_id) > 0 AS some_users FROM plays",
    ])
    .unwrap();
    assert_eq!(code, 0, "stderr: {err}");
    assert!(out.contains("true"), "{out}");
    let status = process
        .terminate(std::time::Duration::from_secs(20))
        .unwrap();
    assert!(status.success(), "standalone exited with {status}");
}

#[test]
fn demo_generates_data_and_queries_it() {
    let (_dir, data) = temp_path("demo");
    let data_arg = data.display().to_string();
    let args = ["demo", "--users", "300", "--days", "3", "--data", &data_arg];
    let (code, out, err) = encore(&args).unwrap();
    assert_eq!(code, 0, "stderr: {err}");
    assert!(out.contains("generated 300 users"), "{out}");
    assert!(
        out.contains("Listening by genre") && out.contains("8 rows"),
        "{out}"
    );
    // The second run reuses the data.
    let (code, out, err) = encore(&args).unwrap();
    assert_eq!(code, 0, "stderr: {err}");
    assert!(out.contains("using data in"), "{out}");
}

/// The server binaries refuse bad settings with one clear line and exit non-zero.
#[test]
fn servers_reject_bad_settings_and_unreachable_schedulers() {
    let run_with_env = |bin: &str, args: &[&str], env: &[(&str, &str)]| {
        let out = std::process::Command::new(encore_tests::bin(bin))
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let run = |bin: &str, args: &[&str]| run_with_env(bin, args, &[]);
    let (code, err) = run(
        "encore-scheduler",
        &["--bind-host", "not-a-host", "--bind-port", "0"],
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("bind_host 'not-a-host'"), "{err}");
    let (code, err) = run(
        "encore-scheduler",
        &[
            "--bind-port",
            "0",
            "--executor-timeout-seconds",
            "5",
            "--expire-dead-executor-interval-seconds",
            "10",
        ],
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("executor_timeout_seconds (5)"), "{err}");
    // The same settings reach the scheduler through ENCORE_* variables and
    // the [scheduler] section of a TOML file.
    let (code, err) = run_with_env(
        "encore-scheduler",
        &["--bind-port", "0"],
        &[("ENCORE_SCHEDULER_BIND_HOST", "env-host")],
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("bind_host 'env-host'"), "{err}");
    let (_dir, toml) = temp_path("encore.toml");
    std::fs::write(
        &toml,
        "[scheduler]\nbind_port = 0\nexecutor_timeout_seconds = 3\nexpire_dead_executor_interval_seconds = 4\n",
    )
    .unwrap();
    let toml_arg = toml.display().to_string();
    let (code, err) = run("encore-scheduler", &["--config", &toml_arg]);
    assert_eq!(code, Some(1));
    assert!(err.contains("executor_timeout_seconds (3)"), "{err}");
    // A flag wins over the file.
    let (code, err) = run(
        "encore-scheduler",
        &["--config", &toml_arg, "--executor-timeout-seconds", "2"],
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("executor_timeout_seconds (2)"), "{err}");
    std::fs::write(&toml, "[scheduler]\nbind_prot = 0\n").unwrap();
    let (code, err) = run("encore-scheduler", &["--config", &toml_arg]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("bind_prot") && err.contains("encore.toml"),
        "{err}"
    );

    let (code, err) = run(
        "encore-executor",
        &[
            "--scheduler-port",
            "1",
            "--scheduler-connect-timeout-seconds",
            "1",
            "--bind-port",
            "0",
            "--bind-grpc-port",
            "0",
            "--bind-health-port",
            "0",
        ],
    );
    assert_eq!(code, Some(1));
    assert!(
        err.contains("127.0.0.1:1"),
        "executor error does not name the scheduler: {err}"
    );
}

#[test]
fn import_cdnow_from_its_original_file_and_refuse_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("CDNOW_master.txt");
    std::fs::write(
        &src,
        " 00001 19970101  1   11.77\r\n 00002 19970112  5   77.00\r\n",
    )
    .unwrap();
    let (src_s, out) = (src.display().to_string(), dir.path().join("tables"));
    let out_s = out.display().to_string();
    let (code, stdout, stderr) =
        encore_tests::encore(&["import", "cdnow", "--src", &src_s, "--out", &out_s]).unwrap();
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("payments") && stdout.contains("2 rows"),
        "{stdout}"
    );
    assert!(out.join("payments/part-00000.parquet").exists());

    std::fs::write(
        &src,
        " 00001 19970101  1   11.77\n 00002 19970112  five   77.00\n",
    )
    .unwrap();
    let other = dir.path().join("other");
    let other_s = other.display().to_string();
    let (code, _, stderr) =
        encore_tests::encore(&["import", "cdnow", "--src", &src_s, "--out", &other_s]).unwrap();
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("CDNOW_master.txt:2: column quantity: 'five' is not a whole quantity"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one error line: {stderr}");
    assert!(!other.join("payments").exists());
}

#[test]
fn features_writes_tables_and_a_manifest_and_refuses_bad_windows() {
    let out = tempfile::tempdir().unwrap();
    let data = crate::data_dir().display().to_string();
    let out_s = out.path().display().to_string();
    let (code, stdout, stderr) = encore_tests::encore(&[
        "features",
        "--data",
        &data,
        "--cutoff",
        "2026-01-04",
        "--out",
        &out_s,
    ])
    .unwrap();
    assert_eq!(code, 0, "{stdout}{stderr}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["cutoff"], "2026-01-04");
    let features = &manifest["tables"]["user_features"];
    assert!(features["rows"].as_u64().unwrap() > 200, "{manifest}");
    assert_eq!(manifest["unconsented_users"], "excluded");
    for column in features["columns"].as_array().unwrap() {
        assert!(
            !column["description"].as_str().unwrap().is_empty(),
            "{column} has no description"
        );
    }
    assert!(
        manifest["tables"]["churn_labels"]["columns"]
            .as_array()
            .unwrap()
            .len()
            == 4
    );
    assert!(out.path().join("user_features.parquet").exists());
    // The generated data has users and payments: profiles too, every user registered before T.
    let profile = &manifest["tables"]["user_profile"];
    assert!(profile["rows"].as_u64().unwrap() > 300, "{manifest}");
    assert!(
        manifest["tables"]["segments"]["rows"].as_u64().unwrap() > 300,
        "{manifest}"
    );
    let (code, stdout, stderr) =
        encore_tests::encore(&["segments", "--data", &data, "--cutoff", "2026-01-04"]).unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("lifecycle") && stdout.contains("value_tier"),
        "{stdout}"
    );
    assert!(stdout.contains("| core"), "{stdout}");
    let engagement = &manifest["tables"]["user_engagement"];
    assert!(engagement["rows"].as_u64().unwrap() > 200, "{manifest}");
    for column in engagement["columns"].as_array().unwrap() {
        assert!(
            !column["description"].as_str().unwrap().is_empty(),
            "{column}"
        );
    }

    let (code, _, stderr) = encore_tests::encore(&[
        "features",
        "--data",
        &data,
        "--cutoff",
        "2026-01-04",
        "--out",
        &out_s,
        "--windows",
        "7,0",
    ])
    .unwrap();
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("feature windows must be 1 day or more"),
        "{stderr}"
    );
}
