//! `serving-load` against `kserve-echo`, both real processes on 127.0.0.1:
//! the closed and open loops count every request, time them, and report the
//! CPU both sides spent; bad arguments fail with a message naming them.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A running `kserve-echo`, stopped when dropped.
struct Echo {
    child: Child,
    addr: String,
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn echo() -> Echo {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kserve-echo"))
        .arg("--port")
        .arg("0")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("kserve-echo listening on "), "{line}");
    let addr = line.trim().rsplit(' ').next().unwrap().to_owned();
    Echo { child, addr }
}

/// Runs `serving-load`: (succeeded, its JSON lines, stderr).
fn load(args: &[&str]) -> (bool, Vec<serde_json::Value>, String) {
    run(Command::new(env!("CARGO_BIN_EXE_serving-load")).args(args))
}

/// Runs `command` (`serving-load`, perhaps under a wrapper) to the end:
/// (succeeded, its JSON lines, stderr).
fn run(command: &mut Command) -> (bool, Vec<serde_json::Value>, String) {
    let out = command.output().unwrap();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (
        out.status.success(),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn f(line: &serde_json::Value, key: &str) -> f64 {
    line[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

#[test]
fn closed_and_open_loops_count_time_and_cost_every_request() {
    let server = echo();
    let pid = server.child.id().to_string();
    let common = ["--addr", &server.addr, "--warmup-seconds", "0.1"];

    let mut args = common.to_vec();
    args.extend([
        "--concurrency",
        "1,4",
        "--seconds",
        "0.5",
        "--server-pid",
        &pid,
    ]);
    let (ok, lines, err) = load(&args);
    assert!(ok, "{err}");
    assert_eq!(lines.len(), 2, "{lines:?}");
    for (line, concurrency) in lines.iter().zip([1, 4]) {
        assert_eq!(line["concurrency"], concurrency, "{line}");
        assert_eq!(line["errors"], 0, "{line}");
        assert!(f(line, "ok") >= 10.0, "{line}");
        assert!(f(line, "p50_ms") > 0.0 && f(line, "p50_ms") <= f(line, "p99_ms"));
        assert!(f(line, "server_cpu_us_per_request") > 0.0, "{line}");
        assert!(f(line, "client_cpu_us_per_request") > 0.0, "{line}");
        for side in ["server", "client"] {
            assert!(
                f(line, &format!("{side}_preempted_per_request")) >= 0.0,
                "{line}"
            );
        }
    }

    // 400 req/s for 0.5 s: exactly 200 measured sends, each answered. A
    // response is read when it arrives, not after the next send's wait, so
    // the median is well under the 2.5 ms between sends (a generator that
    // slept through responses reported about two intervals).
    // `--trace` lists those 200 requests in schedule order, 2.5 ms apart,
    // with the latencies the summary was computed from.
    let dir = std::env::temp_dir().join(format!("serving-load-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("trace.txt");
    let mut args = common.to_vec();
    args.extend(["--rate", "400", "--seconds", "0.5", "--server-pid", &pid]);
    args.extend(["--trace", trace.to_str().unwrap()]);
    let (ok, lines, err) = load(&args);
    assert!(ok, "{err}");
    let line = &lines[0];
    assert_eq!((f(line, "ok"), f(line, "errors")), (200.0, 0.0), "{line}");
    assert_eq!(f(line, "rate"), 400.0);
    assert!(f(line, "p50_ms") < 2.5, "{line}");
    assert!(f(line, "send_lag_p99_ms") >= 0.0, "{line}");
    assert!(f(line, "server_cpu_us_per_request") > 0.0, "{line}");
    let text = std::fs::read_to_string(&trace).unwrap();
    let mut rows = text.lines();
    assert_eq!(rows.next(), Some("due_ms send_lag_ms latency_ms"));
    let rows: Vec<Vec<f64>> = rows
        .map(|r| r.split(' ').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 200);
    for (i, row) in rows.iter().enumerate() {
        assert!((row[0] - 2.5 * i as f64).abs() < 0.01, "row {i}: {row:?}");
        assert!(row[1] >= 0.0 && row[2] > 0.0, "row {i}: {row:?}");
    }
    let mut latencies: Vec<f64> = rows.iter().map(|r| r[2]).collect();
    latencies.sort_by(f64::total_cmp);
    assert!((latencies[99] - f(line, "p50_ms")).abs() < 0.002, "{line}");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "a temporary file was left"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--client h2` (one write per request, through h2 itself) runs the same
/// loops as tonic's client, every answer checked and counted.
#[test]
fn the_h2_client_sends_and_checks_every_request_as_the_tonic_one_does() {
    let server = echo();
    let pid = server.child.id().to_string();
    for client in ["tonic", "h2"] {
        let common = [
            "--addr",
            &server.addr,
            "--warmup-seconds",
            "0.1",
            "--client",
            client,
        ];
        let mut args = common.to_vec();
        args.extend(["--concurrency", "1,4", "--seconds", "0.3"]);
        let (ok, lines, err) = load(&args);
        assert!(ok, "{client}: {err}");
        assert_eq!(lines.len(), 2, "{lines:?}");
        for line in &lines {
            assert_eq!(line["grpc_client"], client, "{line}");
            assert_eq!(line["errors"], 0, "{line}");
            assert!(f(line, "ok") >= 10.0, "{line}");
        }
        // 400 req/s for 0.5 s: exactly 200 sends, all answered.
        let mut args = common.to_vec();
        args.extend(["--rate", "400", "--seconds", "0.5", "--server-pid", &pid]);
        let (ok, lines, err) = load(&args);
        assert!(ok, "{client}: {err}");
        assert_eq!(
            (f(&lines[0], "ok"), f(&lines[0], "errors")),
            (200.0, 0.0),
            "{lines:?}"
        );
    }
    let (ok, _, err) = load(&["--addr", &server.addr, "--client", "grpcio"]);
    assert!(!ok && err.contains("--client"), "{err}");
}

/// `--tick-us`: sends wait for the next point of the grid and leave
/// together; every request is still sent and counted, and the send lag in
/// the trace is the wait for the grid.
#[test]
fn the_open_loop_on_a_send_grid_sends_every_request_late_by_the_wait() {
    let echo = echo();
    let addr = echo.addr.clone();
    let dir = std::env::temp_dir().join(format!("serving-load-tick-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("trace.txt");
    // 2.5 ms apart on a 10 ms grid: four requests per wake-up.
    let (ok, lines, err) = load(&[
        "--addr",
        &addr,
        "--model",
        "churn",
        "--users",
        "100",
        "--warmup-seconds",
        "0.1",
        "--rate",
        "400",
        "--seconds",
        "0.5",
        "--tick-us",
        "10000",
        "--trace",
        trace.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        (f(&lines[0], "ok"), f(&lines[0], "errors")),
        (200.0, 0.0),
        "{}",
        lines[0]
    );
    let text = std::fs::read_to_string(&trace).unwrap();
    let rows: Vec<Vec<f64>> = text
        .lines()
        .skip(1)
        .map(|r| r.split(' ').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 200);
    let mut late = 0;
    for (i, row) in rows.iter().enumerate() {
        // The grid starts with the schedule; the warm-up (0.1 s) is whole ticks.
        let wait = (10.0 - row[0] % 10.0) % 10.0;
        assert!(
            row[1] >= wait - 0.05,
            "row {i} left before its grid point: {row:?}"
        );
        if row[1] > wait + 2.0 {
            late += 1;
        }
    }
    assert!(
        late < 20,
        "{late} of 200 sends over 2 ms after their grid point"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every line says at what priority the generator ran (serving.sh runs it
/// above the server's): here the test's own nice value (as `nice` prints
/// it), then 5 more under `nice -n 5`.
#[test]
fn every_line_reports_the_generators_nice_value() {
    let echo = echo();
    let own: i64 = String::from_utf8(Command::new("nice").output().unwrap().stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let args = [
        "--addr",
        &echo.addr,
        "--concurrency",
        "1",
        "--seconds",
        "0.2",
        "--warmup-seconds",
        "0",
    ];
    let (ok, lines, err) = load(&args);
    assert!(ok, "{err}");
    assert_eq!(lines[0]["generator_nice"], own, "{}", lines[0]);
    let (ok, lines, err) = run(Command::new("nice")
        .args(["-n", "5", env!("CARGO_BIN_EXE_serving-load")])
        .args(args));
    assert!(ok, "{err}");
    assert_eq!(
        lines[0]["generator_nice"],
        (own + 5).min(19),
        "{}",
        lines[0]
    );
}

#[test]
fn an_unreachable_server_or_a_missing_server_process_is_named() {
    let (ok, _, err) = load(&["--addr", "127.0.0.1:1", "--concurrency", "1"]);
    assert!(!ok);
    assert!(err.contains("cannot connect to 127.0.0.1:1"), "{err}");

    let server = echo();
    let (ok, _, err) = load(&["--addr", &server.addr, "--server-pid", "4294967295"]);
    assert!(!ok);
    assert!(err.contains("--server-pid 4294967295"), "{err}");
}
