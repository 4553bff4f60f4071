//! Test harness for Encore's multi-process tests: starts the real
//! `encore-scheduler`, `encore-executor` and `encore` binaries on 127.0.0.1
//! with free ports, reads the addresses they print, and stops them on drop.
//! Each process' stderr goes to a log file that is printed if a test fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long a process may take to print its address.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The folder holding the workspace's binaries: `ENCORE_BIN_DIR`, or the
/// cargo profile folder this test binary was built into.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ENCORE_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/<test-binary>
    let exe = std::env::current_exe().expect("the test binary has a path");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps")
        .to_path_buf()
}

/// Path of a workspace binary; panics with the fix if it was not built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first with `cargo build --workspace --bins` \
         (scripts/test.sh does this)",
        path.display()
    );
    path
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Process {
    /// Spawns `program args`, waits for its first stdout line and returns it.
    pub fn spawn(name: &str, program: &Path, args: &[String]) -> anyhow::Result<(Self, String)> {
        Self::spawn_env(name, program, args, &[])
    }

    /// [`Process::spawn`] with extra environment variables.
    pub fn spawn_env(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
    ) -> anyhow::Result<(Self, String)> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log)?;
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawning {}", program.display()))?;
        let stdout = child.stdout.take().context("stdout is piped")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let mut process = Self {
            name: name.to_owned(),
            child,
            log,
            _dir: dir,
        };
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => Ok((process, line)),
            Err(_) => {
                let status = process.child.try_wait().ok().flatten();
                bail!(
                    "{name} printed no address within {}s (exit: {status:?}); log:\n{}",
                    START_TIMEOUT.as_secs(),
                    process.log_text()
                )
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote to stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: the process dies without saying goodbye to anyone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to `timeout` for a clean exit; returns the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{} did not exit within {timeout:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}", self.name, self.log_text());
        }
        self.kill();
    }
}

/// `GET http://{addr}{path}` over HTTP/1.0: (status code, body).
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    Ok((status, body.to_owned()))
}

/// Polls `check` every 50 ms until it returns `Some`, or fails after `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running `encore-scheduler`.
pub struct Scheduler {
    /// The process.
    pub process: Process,
    /// `host:port` it serves gRPC and HTTP on.
    pub addr: String,
}

impl Scheduler {
    /// Starts the scheduler on a free port with extra `args`; jobs are kept
    /// in memory unless `args` name a `--state-dir`.
    pub fn start(args: &[&str]) -> anyhow::Result<Self> {
        let mut all = vec!["--bind-port".to_owned(), "0".to_owned()];
        if !args.contains(&"--state-dir") {
            all.push("--in-memory-jobs".to_owned());
        }
        all.extend(args.iter().map(|s| s.to_string()));
        let (process, line) = Process::spawn("scheduler", &bin("encore-scheduler"), &all)?;
        // "encore-scheduler listening on df://127.0.0.1:PORT"
        let addr = line
            .rsplit("df://")
            .next()
            .filter(|a| a.contains(':'))
            .with_context(|| format!("unexpected first line from the scheduler: {line}"))?
            .trim()
            .to_owned();
        Ok(Self { process, addr })
    }

    /// `df://host:port`.
    pub fn url(&self) -> String {
        format!("df://{}", self.addr)
    }

    /// The scheduler's port.
    pub fn port(&self) -> String {
        self.addr.rsplit(':').next().unwrap_or_default().to_owned()
    }

    /// `GET` on the scheduler's HTTP endpoints.
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_get(&self.addr, path)
    }

    /// Waits until `/api/executors` lists `n` executors.
    pub fn wait_for_executors(&self, n: usize) -> anyhow::Result<()> {
        wait_for(&format!("{n} executors to register"), START_TIMEOUT, || {
            let (_, body) = self.get("/api/executors").ok()?;
            let listed: serde_json::Value = serde_json::from_str(&body).ok()?;
            (listed.as_array()?.len() >= n).then_some(())
        })
    }
}

/// A running `encore-executor`.
pub struct Executor {
    /// The process.
    pub process: Process,
    /// The id it registered with.
    pub id: String,
    /// `host:port` of its HTTP endpoints.
    pub http_addr: String,
}

impl Executor {
    /// Starts an executor with free ports against `scheduler`, with extra `args`.
    pub fn start(scheduler: &Scheduler, args: &[&str]) -> anyhow::Result<Self> {
        let mut all: Vec<String> = [
            "--scheduler-host",
            "127.0.0.1",
            "--scheduler-port",
            &scheduler.port(),
            "--bind-port",
            "0",
            "--bind-grpc-port",
            "0",
            "--bind-health-port",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        all.extend(args.iter().map(|s| s.to_string()));
        let (process, line) = Process::spawn("executor", &bin("encore-executor"), &all)?;
        // "encore-executor ID flight HOST:PORT metrics http://HOST:PORT"
        let words: Vec<&str> = line.split_whitespace().collect();
        let (Some(id), Some(metrics)) = (words.get(1), words.last()) else {
            bail!("unexpected first line from the executor: {line}");
        };
        Ok(Self {
            process,
            id: (*id).to_owned(),
            http_addr: metrics.trim_start_matches("http://").to_owned(),
        })
    }

    /// `GET` on the executor's HTTP endpoints.
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_get(&self.http_addr, path)
    }

    /// The value of an unlabelled or fully labelled sample in `/metrics`, e.g.
    /// `encore_executor_tasks_total{outcome="succeeded"}`.
    pub fn metric(&self, sample: &str) -> anyhow::Result<f64> {
        let (_, body) = self.get("/metrics")?;
        metric_value(&body, sample).with_context(|| format!("{sample} not in /metrics"))
    }
}

/// The value of `sample` (name plus labels exactly as exposed) in Prometheus text.
pub fn metric_value(text: &str, sample: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(sample)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Runs the `encore` CLI to completion: (exit code, stdout, stderr).
pub fn encore(args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    encore_env(args, &[])
}

/// [`encore`] with extra environment variables.
pub fn encore_env(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<(i32, String, String)> {
    let out = Command::new(bin("encore"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .context("running encore")?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The project virtualenv's Python (`ENCORE_VENV`, default `.venv`), which
/// scripts/setup.sh fills with the test clients (tritonclient, pyarrow, moto).
pub fn python() -> PathBuf {
    let venv = std::env::var_os("ENCORE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv"));
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh (scripts/test.sh does this)",
        python.display()
    );
    python
}
