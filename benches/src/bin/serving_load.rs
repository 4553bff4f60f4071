//! `serving-load`: a KServe v2 gRPC load generator (in the manner of
//! Triton's perf_analyzer) for the Encore model server and its Python peer.
//!
//! - `--concurrency 1,2,4,...`: closed loop: that many requests in flight,
//!   each sent when the previous one returns; one JSON line per level.
//! - `--rate R`: open loop: R requests/s on a fixed schedule, sent whether
//!   or not earlier ones have returned, so a slow server is not hidden by a
//!   waiting client.
//!
//! It runs on one thread, so the server under test keeps the other core,
//! and spends as little of it as it can: requests go straight onto HTTP/2
//! connections (`--connections`, 4; through tonic and hyper, or with
//! `--client h2` through h2 alone, one write per request), and open-loop
//! sends are paced by a timerfd in the reactor, so responses are read the
//! moment they arrive.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use clap::Parser;
use encore_benches::{Rng, Summary, churn_request, recommend_request};
use encore_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use encore_proto::inference::{ModelInferRequest, ModelInferResponse};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

// The generator's own allocations cost the server under test CPU too.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "serving-load",
    after_help = "Examples:\n  serving-load --addr 127.0.0.1:8001 --model churn --concurrency 1,4,16\n  serving-load --addr 127.0.0.1:8001 --model recommend --rate 500 --seconds 10"
)]
struct Args {
    /// Server address host:port (KServe v2 gRPC).
    #[arg(long)]
    addr: String,
    /// `churn` (one user per request) or `recommend` (top-k for one user).
    #[arg(long, default_value = "churn")]
    model: String,
    /// Users are drawn uniformly from 1..=users.
    #[arg(long, default_value_t = 100_000)]
    users: i64,
    /// Items per recommendation.
    #[arg(long, default_value_t = 10)]
    k: i32,
    /// Closed-loop concurrency levels, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32")]
    concurrency: Vec<usize>,
    /// Open-loop request rate per second (instead of the concurrency sweep).
    #[arg(long)]
    rate: Option<f64>,
    /// Measured seconds per level.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Unmeasured warm-up seconds per level.
    #[arg(long, default_value_t = 1.0)]
    warmup_seconds: f64,
    /// HTTP/2 connections to spread requests over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// The server's process id (same machine): each line then reports the
    /// server's CPU and preemptions (involuntary context switches) per
    /// request over the measured window, beside the generator's own.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Open loop: also write one line per measured request to this file:
    /// when it was due (ms after the measured window opened), how late it
    /// was sent (ms), and its latency (ms; `error` for a failed request).
    /// Shows when a tail happened and whether the generator was behind.
    #[arg(long)]
    trace: Option<std::path::PathBuf>,
    /// Open loop: wake the sender on a grid of this many microseconds and
    /// send every request due by then (0: a wake-up per request). Linux
    /// lets a sleeping thread's timer fire up to 50 µs late (timer slack)
    /// to batch wake-ups, which is how perf_analyzer's sleep-based pacing
    /// behaves; fewer wake-ups cost this one thread less (at 33,000 req/s
    /// a 100 µs grid cut its CPU per request from ~30 to ~21 µs, 50 µs
    /// hardly at all). The lateness is in the send-lag figure.
    #[arg(long, default_value_t = 0)]
    tick_us: u64,
    /// `tonic` (tonic's client over hyper's HTTP/2 connection: each
    /// request leaves in two writes, HEADERS then DATA, as a tonic
    /// application's do) or `h2` (the frames queued together and sent in
    /// one write, as gRPC's C++, Go and Python clients send them).
    #[arg(long, default_value = "tonic", value_parser = ["tonic", "h2"])]
    client: String,
    /// Label written into each JSON line (e.g. encore, python).
    #[arg(long, default_value = "server")]
    label: String,
}

const DEVICES: [&str; 6] = ["mobile", "desktop", "tablet", "tv", "car", "speaker"];

/// What each request asks for.
#[derive(Debug, Clone, Copy)]
struct Workload {
    recommend: bool,
    users: i64,
    k: i32,
}

impl Workload {
    fn of(args: &Args) -> Self {
        Self {
            recommend: args.model == "recommend",
            users: args.users,
            k: args.k,
        }
    }

    fn request(&self, rng: &mut Rng) -> ModelInferRequest {
        let user = 1 + rng.below(self.users as u64) as i64;
        if self.recommend {
            let hour = rng.below(24) as i32;
            let device = DEVICES[rng.below(DEVICES.len() as u64) as usize];
            recommend_request(user, self.k, hour, device)
        } else {
            churn_request(user)
        }
    }
}

/// One HTTP/2 connection as a gRPC transport, without tonic's `Channel`:
/// its buffer hands every request to a worker task and back, which cost
/// this one-thread generator CPU that the server under test then lacks.
#[derive(Clone)]
struct Connection(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

type Responding = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = hyper::Result<http::Response<hyper::body::Incoming>>>
            + Send,
    >,
>;

impl tower_service::Service<http::Request<tonic::body::Body>> for Connection {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = Responding;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<hyper::Result<()>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Responding {
        Box::pin(self.0.send_request(request))
    }
}

/// One HTTP/2 connection speaking unary gRPC through `h2` itself.
///
/// Each request's HEADERS and DATA frames are queued together and leave in
/// one write, as gRPC's C++, Go and Python clients send them. Through
/// hyper's client (and so tonic's) the body is piped by a separate task
/// after the connection has flushed the headers: two writes per request,
/// and two loopback deliveries the server under test is woken for.
#[derive(Clone)]
struct H2Channel {
    send: h2::client::SendRequest<Bytes>,
    path: http::Uri,
}

impl H2Channel {
    async fn handshake(tcp: tokio::net::TcpStream, addr: &str) -> anyhow::Result<Self> {
        let path = format!("http://{addr}/inference.GRPCInferenceService/ModelInfer")
            .parse()
            .with_context(|| format!("--addr {addr}"))?;
        // Windows as hyper's client opens them: responses never wait for a
        // WINDOW_UPDATE, and the generator seldom writes one.
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(2 << 20)
            .initial_connection_window_size(5 << 20)
            .handshake(tcp)
            .await
            .with_context(|| format!("HTTP/2 handshake with {addr}"))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("serving-load: connection closed: {e}");
            }
        });
        Ok(Self { send, path })
    }

    /// Sends one gRPC message (`framed`: with its 5-byte prefix) and reads
    /// the answer: HTTP 200, a whole `ModelInferResponse`, `grpc-status` 0.
    async fn infer(&self, framed: Bytes) -> anyhow::Result<ModelInferResponse> {
        let mut send = self.send.clone().ready().await?;
        let request = http::Request::post(self.path.clone())
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .body(())?;
        let (response, mut body) = send.send_request(request, false)?;
        body.send_data(framed, true)?;
        let response = response.await?;
        anyhow::ensure!(
            response.status() == http::StatusCode::OK,
            "HTTP status {}",
            response.status()
        );
        // A failed call answers with trailers only: grpc-status in the headers.
        grpc_ok(response.headers())?;
        let mut body = response.into_body();
        let mut message = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            body.flow_control().release_capacity(chunk.len())?;
            message.extend_from_slice(&chunk);
        }
        match body.trailers().await? {
            Some(trailers) => grpc_ok(&trailers)?,
            None => anyhow::bail!("the answer has no trailers (no grpc-status)"),
        }
        anyhow::ensure!(
            message.len() >= 5 && message[0] == 0,
            "the answer is not one uncompressed gRPC message"
        );
        let length = u32::from_be_bytes([message[1], message[2], message[3], message[4]]);
        anyhow::ensure!(
            message.len() == 5 + length as usize,
            "the answer's gRPC message is {} bytes, its prefix says {length}",
            message.len() - 5
        );
        Ok(ModelInferResponse::decode(&message[5..])?)
    }
}

/// Fails unless `headers` carry no `grpc-status` or `grpc-status: 0`.
fn grpc_ok(headers: &http::HeaderMap) -> anyhow::Result<()> {
    match headers.get("grpc-status") {
        None => Ok(()),
        Some(status) if status == "0" => Ok(()),
        Some(status) => anyhow::bail!("grpc-status {status:?}: {:?}", headers.get("grpc-message")),
    }
}

/// `message` as one gRPC frame: uncompressed flag, length, bytes.
fn grpc_frame(message: &ModelInferRequest) -> Bytes {
    let length = message.encoded_len();
    let mut out = BytesMut::with_capacity(5 + length);
    out.put_u8(0);
    out.put_u32(length as u32);
    message
        .encode(&mut out)
        .expect("BytesMut grows to any length");
    out.freeze()
}

/// One HTTP/2 connection to the server under test, through the client
/// `--client` names.
#[derive(Clone)]
enum Client {
    Tonic(GrpcInferenceServiceClient<Connection>),
    H2(H2Channel),
}

impl Client {
    /// Sends one request; fails unless a whole `ModelInferResponse` came back.
    async fn infer(&mut self, request: ModelInferRequest) -> anyhow::Result<()> {
        match self {
            Client::Tonic(client) => {
                client.model_infer(request).await?;
            }
            Client::H2(channel) => {
                channel.infer(grpc_frame(&request)).await?;
            }
        }
        Ok(())
    }
}

async fn clients(args: &Args) -> anyhow::Result<Vec<Client>> {
    let origin: http::Uri = format!("http://{}", args.addr)
        .parse()
        .with_context(|| format!("--addr {}", args.addr))?;
    let mut out = Vec::new();
    for _ in 0..args.connections.max(1) {
        let tcp = tokio::net::TcpStream::connect(&args.addr)
            .await
            .with_context(|| format!("cannot connect to {}", args.addr))?;
        tcp.set_nodelay(true)?;
        if args.client == "h2" {
            out.push(Client::H2(H2Channel::handshake(tcp, &args.addr).await?));
            continue;
        }
        let (send, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .with_context(|| format!("HTTP/2 handshake with {}", args.addr))?;
        tokio::spawn(connection);
        out.push(Client::Tonic(
            GrpcInferenceServiceClient::with_origin(Connection(send), origin.clone())
                .max_decoding_message_size(64 << 20),
        ));
    }
    Ok(out)
}

/// CPU time of this process and, when given, the server's, read at the
/// start and end of a measured window.
#[derive(Debug, Clone, Copy)]
struct CpuMeter {
    server_pid: Option<u32>,
}

/// CPU used so far by this process and, when measured, the server.
#[derive(Debug, Clone, Copy)]
struct CpuReading {
    own: Usage,
    server: Option<Usage>,
}

/// A process's CPU seconds and how often the kernel took a core from one
/// of its threads while it could still run (involuntary context switches:
/// more runnable threads than cores).
#[derive(Debug, Clone, Copy)]
struct Usage {
    cpu_seconds: f64,
    preempted: u64,
}

impl CpuMeter {
    fn read(&self) -> anyhow::Result<CpuReading> {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage writes one rusage into the pointer it is given,
        // which points at a zeroed value of that type that outlives the call.
        #[allow(unsafe_code)]
        let usage = unsafe {
            anyhow::ensure!(
                libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) == 0,
                "getrusage: {}",
                std::io::Error::last_os_error()
            );
            usage.assume_init()
        };
        let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
        let own = Usage {
            cpu_seconds: seconds(usage.ru_utime) + seconds(usage.ru_stime),
            preempted: usage.ru_nivcsw as u64,
        };
        let server = match self.server_pid {
            Some(pid) => Some(Usage {
                cpu_seconds: process_cpu_seconds(pid)?,
                preempted: process_preemptions(pid),
            }),
            None => None,
        };
        Ok(CpuReading { own, server })
    }
}

/// The fields of a /proc/PID/stat line after the parenthesised command
/// name (which may hold spaces): index 0 is field 3, the state.
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default()
}

/// utime + stime of a process from /proc/PID/stat (fields 14 and 15).
fn process_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("--server-pid {pid}: cannot read /proc/{pid}/stat"))?;
    let fields = stat_fields(&stat);
    let ticks = |i: usize| -> anyhow::Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .with_context(|| format!("/proc/{pid}/stat: no field {}", i + 3))
    };
    // SAFETY: sysconf only reads a configuration value.
    #[allow(unsafe_code)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11)? + ticks(12)?) / hz)
}

/// This process's nice value (field 19 of /proc/self/stat), reported with
/// every result: benches/serving.sh runs the generator above the server's
/// priority so the instrument is not the one starved of a core.
fn own_nice() -> Option<i64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    stat_fields(&stat).get(16)?.parse().ok()
}

/// Involuntary context switches of all of a process's threads now alive,
/// from /proc/PID/task/*/status (0 for threads that cannot be read).
fn process_preemptions(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
        .sum()
}

/// Adds CPU microseconds and preemptions per request over a window to a
/// result line.
fn add_cpu(line: &mut serde_json::Value, from: CpuReading, to: CpuReading, requests: usize) {
    let n = requests.max(1) as f64;
    let mut add = |side: &str, a: Usage, b: Usage| {
        line[format!("{side}_cpu_us_per_request")] =
            ((b.cpu_seconds - a.cpu_seconds) * 1e6 / n).into();
        line[format!("{side}_preempted_per_request")] =
            (b.preempted.saturating_sub(a.preempted) as f64 / n).into();
    };
    add("client", from.own, to.own);
    if let (Some(a), Some(b)) = (from.server, to.server) {
        add("server", a, b);
    }
}

/// Closed loop at `concurrency` for `seconds` (after the warm-up).
async fn closed_loop(
    args: &Args,
    concurrency: usize,
    meter: CpuMeter,
) -> anyhow::Result<(Summary, CpuReading, CpuReading)> {
    let clients = clients(args).await?;
    let warmup = Duration::from_secs_f64(args.warmup_seconds);
    let measure = Duration::from_secs_f64(args.seconds);
    let start = Instant::now();
    let (from, until) = (start + warmup, start + warmup + measure);
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let mut client = clients[i % clients.len()].clone();
        let mut rng = Rng::new(i as u64 + 1);
        let workload = Workload::of(args);
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut errors) = (Vec::new(), 0usize);
            loop {
                let sent = Instant::now();
                if sent >= until {
                    break;
                }
                let result = client.infer(workload.request(&mut rng)).await;
                if sent >= from {
                    match result {
                        Ok(_) => latencies.push(sent.elapsed()),
                        Err(_) => errors += 1,
                    }
                }
            }
            (latencies, errors)
        }));
    }
    tokio::time::sleep_until(from.into()).await;
    let cpu_from = meter.read()?;
    tokio::time::sleep_until(until.into()).await;
    let cpu_until = meter.read()?;
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for task in tasks {
        let (l, e) = task.await?;
        latencies.extend(l);
        errors += e;
    }
    Ok((Summary::of(latencies, errors, measure), cpu_from, cpu_until))
}

/// Sleeps to the microsecond while the runtime keeps serving sockets: a
/// monotonic `timerfd` that tokio's reactor waits on beside the
/// connections. tokio's own timer has 1 ms granularity, and a blocking
/// thread sleep would leave responses unread until it ends (at 1,000 req/s
/// that showed up as ~2 ms of "latency" on a server answering in 0.3 ms).
struct Pacer {
    timer: AsyncFd<File>,
    /// The instant the timer is set for (a wait interrupted by a response
    /// resumes without setting it again).
    armed: Option<Instant>,
}

impl Pacer {
    fn new() -> anyhow::Result<Self> {
        // SAFETY: timerfd_create takes no pointers; a non-negative result is
        // a new descriptor that nothing else owns. The File then owns it, so
        // it stays open, and the same, for as long as the AsyncFd holds it.
        #[allow(unsafe_code)]
        let timer = unsafe {
            let fd = libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            );
            anyhow::ensure!(
                fd >= 0,
                "timerfd_create: {}",
                std::io::Error::last_os_error()
            );
            AsyncFd::register_with_interest(
                File::from(OwnedFd::from_raw_fd(fd)),
                Interest::READABLE,
            )
            .map_err(|e| anyhow::anyhow!("registering the timerfd: {e}"))?
        };
        Ok(Self { timer, armed: None })
    }

    /// Waits until `due`; when it has passed already, still lets every
    /// ready task (responses) run first.
    async fn until(&mut self, due: Instant) -> anyhow::Result<()> {
        let now = Instant::now();
        if due <= now {
            tokio::task::yield_now().await;
            return Ok(());
        }
        if self.armed != Some(due) {
            self.arm(due - now)?;
            self.armed = Some(due);
        }
        let mut expirations = [0u8; 8];
        loop {
            let mut ready = self.timer.readable().await?;
            match ready.try_io(|timer| timer.get_ref().read(&mut expirations)) {
                Ok(result) => {
                    result?;
                    return Ok(());
                }
                Err(_would_block) => continue,
            }
        }
    }

    /// Sets the timer to expire once, `wait` from now.
    fn arm(&self, wait: Duration) -> anyhow::Result<()> {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: wait.as_secs() as libc::time_t,
                // Never zero: an all-zero value disarms the timer.
                tv_nsec: wait.subsec_nanos().max(1) as libc::c_long,
            },
        };
        // SAFETY: the descriptor is ours and open; `spec` outlives the call,
        // and a null old value is allowed.
        #[allow(unsafe_code)]
        let set = unsafe {
            libc::timerfd_settime(
                self.timer.get_ref().as_raw_fd(),
                0,
                &spec,
                std::ptr::null_mut(),
            )
        };
        anyhow::ensure!(
            set == 0,
            "timerfd_settime: {}",
            std::io::Error::last_os_error()
        );
        Ok(())
    }
}

/// Open loop at `rate` requests/s. Sends follow a fixed schedule whatever
/// the responses do (no coordinated omission); latency is measured from the
/// actual send, and how late sends left is reported beside it. Requests in
/// flight are polled by this one task (no task per request), and each is
/// dropped, memory and all, the moment it is answered.
async fn open_loop(
    args: &Args,
    rate: f64,
    meter: CpuMeter,
) -> anyhow::Result<(Summary, f64, CpuReading, CpuReading)> {
    let clients = clients(args).await?;
    let warmup = Duration::from_secs_f64(args.warmup_seconds);
    let measure = Duration::from_secs_f64(args.seconds);
    let interval = Duration::from_secs_f64(1.0 / rate);
    let tick = Duration::from_micros(args.tick_us);
    let start = Instant::now() + Duration::from_millis(10);
    // The first grid point at or after `due`.
    let wake_at = |due: Instant| {
        if tick.is_zero() {
            return due;
        }
        let ticks = (due - start).as_nanos().div_ceil(tick.as_nanos());
        start + tick * ticks as u32
    };
    let (from, until) = (start + warmup, start + warmup + measure);
    let mut rng = Rng::new(7);
    let mut pacer = Pacer::new()?;
    let workload = Workload::of(args);
    let (mut latencies, mut lags, mut errors) = (Vec::new(), Vec::new(), 0);
    let mut trace = args.trace.as_ref().map(|_| Vec::new());
    let mut record = |(due, lag, latency, ok): (Instant, Duration, Duration, bool)| {
        if due >= from {
            if let Some(trace) = &mut trace {
                trace.push((due - from, lag, ok.then_some(latency)));
            }
            lags.push(lag);
            if ok {
                latencies.push(latency);
            } else {
                errors += 1;
            }
        }
    };
    let mut in_flight = FuturesUnordered::new();
    let mut cpu_from = None;
    let mut i = 0u64;
    loop {
        let due = start + interval.mul_f64(i as f64);
        if due >= until {
            break;
        }
        if cpu_from.is_none() && due >= from {
            cpu_from = Some(meter.read()?);
        }
        tokio::select! {
            biased;
            Some(answered) = in_flight.next() => {
                record(answered);
                continue;
            }
            waited = pacer.until(wake_at(due)) => waited?,
        }
        let mut client = clients[i as usize % clients.len()].clone();
        let request = workload.request(&mut rng);
        in_flight.push(async move {
            let sent = Instant::now();
            let result = client.infer(request).await;
            (due, sent - due, sent.elapsed(), result.is_ok())
        });
        i += 1;
    }
    let cpu_until = meter.read()?;
    let cpu_from = cpu_from.unwrap_or(cpu_until);
    while let Some(answered) = in_flight.next().await {
        record(answered);
    }
    if let (Some(path), Some(trace)) = (&args.trace, &mut trace) {
        write_trace(path, trace)?;
    }
    lags.sort_unstable();
    let lag_p99 = lags
        .get(lags.len().saturating_sub(1) * 99 / 100)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3);
    Ok((
        Summary::of(latencies, errors, measure),
        lag_p99,
        cpu_from,
        cpu_until,
    ))
}

/// Writes an open loop's per-request trace (see `--trace`), in order of
/// the schedule, whole or not at all.
fn write_trace(
    path: &std::path::Path,
    trace: &mut [(Duration, Duration, Option<Duration>)],
) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    trace.sort_unstable_by_key(|(due, _, _)| *due);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut out = String::from("due_ms send_lag_ms latency_ms\n");
    for (due, lag, latency) in trace.iter() {
        let _ = match latency {
            Some(l) => writeln!(out, "{:.3} {:.3} {:.3}", ms(*due), ms(*lag), ms(*l)),
            None => writeln!(out, "{:.3} {:.3} error", ms(*due), ms(*lag)),
        };
    }
    encore_common::fs::write_atomic(path, out)
        .with_context(|| format!("--trace {}: cannot write", path.display()))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.model == "churn" || args.model == "recommend",
        "--model must be churn or recommend"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let meter = CpuMeter {
        server_pid: args.server_pid,
    };
    if let Some(pid) = args.server_pid {
        process_cpu_seconds(pid)?;
    }
    // What every line says of the run beside its figures.
    let stamp = |mut line: serde_json::Value| {
        line["label"] = args.label.clone().into();
        line["model"] = args.model.clone().into();
        line["generator_nice"] = own_nice().into();
        line["grpc_client"] = args.client.clone().into();
        line
    };
    runtime.block_on(async {
        if let Some(rate) = args.rate {
            anyhow::ensure!(rate > 0.0, "--rate must be positive");
            let (s, lag_p99, from, to) = open_loop(&args, rate, meter).await?;
            let mut line = s.to_json();
            add_cpu(&mut line, from, to, s.ok + s.errors);
            line["send_lag_p99_ms"] = lag_p99.into();
            line["rate"] = rate.into();
            println!("{}", stamp(line));
        } else {
            for &c in &args.concurrency {
                let (s, from, to) = closed_loop(&args, c, meter).await?;
                let mut line = s.to_json();
                add_cpu(&mut line, from, to, s.ok + s.errors);
                line["concurrency"] = c.into();
                println!("{}", stamp(line));
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grpc_frame_is_a_flag_a_big_endian_length_and_the_message() {
        let request = churn_request(42);
        let framed = grpc_frame(&request);
        assert_eq!(framed[0], 0, "uncompressed");
        let length = u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]) as usize;
        assert_eq!(length, framed.len() - 5);
        assert_eq!(ModelInferRequest::decode(&framed[5..]).unwrap(), request);
    }

    #[test]
    fn only_grpc_status_zero_or_none_is_success() {
        let mut headers = http::HeaderMap::new();
        assert!(grpc_ok(&headers).is_ok());
        headers.insert("grpc-status", "0".parse().unwrap());
        assert!(grpc_ok(&headers).is_ok());
        headers.insert("grpc-status", "3".parse().unwrap());
        headers.insert("grpc-message", "no inputs".parse().unwrap());
        let error = grpc_ok(&headers).unwrap_err().to_string();
        assert!(
            error.contains("\"3\"") && error.contains("no inputs"),
            "{error}"
        );
    }
}
