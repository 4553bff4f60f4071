//! `encore-model-server`: parses flags and environment, installs logging and
//! runs [`encore_model_server::start_model_server`] until SIGTERM or Ctrl-C.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use encore_common::process;
use encore_model_server::{
    BatchConfig, BearerToken, ModelServerConfig, Split, TlsFiles, parse_device, start_model_server,
};

/// mimalloc instead of glibc malloc: every request allocates and frees
/// protobuf messages, HTTP/2 frames and 8 KB encode buffers on the tokio
/// threads, where glibc's free lists and their consolidation showed as ~8%
/// of all CPU under load (see benches/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Encore model server: TorchScript models from the registry over KServe v2
/// gRPC, the typed encore.v1.Scoring API and Arrow Flight, on one port.
///
/// Triton clients (tritonclient.grpc) work unchanged: live, ready,
/// metadata, infer, and the model-repository extension. Requests are
/// batched dynamically; aliases are polled and new versions swapped in
/// without failing requests.
#[derive(Parser, Debug)]
#[command(
    name = "encore-model-server",
    version,
    after_help = "Examples:\n  encore-model-server --registry /data/registry\n  encore-model-server --registry registry --model churn --bind-port 0   # any free port, printed on stdout\n  encore-model-server --registry registry --split churn=production:90,staging:10 --shadow churn=candidate"
)]
struct Args {
    /// Model registry: a folder (<registry>/<model>/<version>/manifest.json + model.pt)
    /// or s3://bucket/prefix (credentials and endpoint from AWS_* variables;
    /// versions cached in ENCORE_REGISTRY_CACHE or ~/.cache/encore/registry).
    #[arg(long, env = "ENCORE_REGISTRY")]
    registry: String,
    /// A model to load at start; repeat for more. Default: every model in the registry.
    #[arg(
        long = "model",
        env = "ENCORE_MODEL_SERVER_MODELS",
        value_delimiter = ','
    )]
    models: Vec<String>,
    /// Address to listen on.
    #[arg(
        long,
        env = "ENCORE_MODEL_SERVER_BIND_HOST",
        default_value = "127.0.0.1"
    )]
    bind_host: String,
    /// gRPC port (KServe v2, encore.v1.Scoring, Arrow Flight, /metrics); 0 picks a free one.
    #[arg(long, env = "ENCORE_MODEL_SERVER_BIND_PORT", default_value_t = 8001)]
    bind_port: u16,
    /// Most rows per model forward call (dynamic batching).
    #[arg(long, env = "ENCORE_MODEL_SERVER_MAX_BATCH_SIZE", default_value_t = BatchConfig::default().max_batch_size)]
    max_batch_size: usize,
    /// Longest a request waits for others to join its batch, in microseconds.
    #[arg(long, env = "ENCORE_MODEL_SERVER_MAX_QUEUE_DELAY_US", default_value_t = BatchConfig::default().max_queue_delay.as_micros() as u64)]
    max_queue_delay_us: u64,
    /// Most requests queued per model version; more get RESOURCE_EXHAUSTED.
    #[arg(long, env = "ENCORE_MODEL_SERVER_MAX_QUEUE_SIZE", default_value_t = BatchConfig::default().max_queue_size)]
    max_queue_size: usize,
    /// Model instances (threads with their own module) per loaded version.
    #[arg(long, env = "ENCORE_MODEL_SERVER_INSTANCES", default_value_t = BatchConfig::default().instances)]
    instances: usize,
    /// Run a request that finds its model idle and fast at once on the
    /// thread that decoded it (no hand-off to a model instance): lower
    /// latency and CPU at low load, worse tails at moderate load.
    #[arg(long, env = "ENCORE_MODEL_SERVER_INLINE_WHEN_IDLE")]
    inline_when_idle: bool,
    /// Run requests of at most this many rows of a small model (dense
    /// layers and element-wise functions, e.g. churn) with the model
    /// compiled to native code, on the thread that decoded them; the
    /// model is compiled and checked against libtorch at load, and runs on
    /// libtorch if either fails. 0: always libtorch.
    #[arg(long, env = "ENCORE_MODEL_SERVER_NATIVE_MAX_ROWS", default_value_t = BatchConfig::default().native_max_rows)]
    native_max_rows: usize,
    /// Let recommend modules' `forward` score every item, even when they
    /// export `user_vectors` and `items` for the server's exact item index.
    #[arg(long, env = "ENCORE_MODEL_SERVER_NO_ITEM_INDEX")]
    no_item_index: bool,
    /// libtorch intra-op threads (0: libtorch's default, all cores).
    #[arg(long, env = "ENCORE_MODEL_SERVER_TORCH_THREADS", default_value_t = 1)]
    torch_threads: usize,
    /// Where models run: auto (CUDA when libtorch sees a GPU, else CPU), cpu,
    /// cuda or cuda:N. Small models such as churn answer single requests
    /// faster on the CPU.
    #[arg(long, env = "ENCORE_MODEL_SERVER_DEVICE", default_value = "auto")]
    device: String,
    /// Seconds between re-reads of aliases.json (hot reload); 0 turns it off.
    #[arg(
        long,
        env = "ENCORE_MODEL_SERVER_POLL_INTERVAL_SECONDS",
        default_value_t = 5.0
    )]
    poll_interval_seconds: f64,
    /// A/B split, MODEL=SELECTOR:WEIGHT,... (selectors are aliases or versions); repeat per model.
    #[arg(long = "split", value_name = "MODEL=SPLIT")]
    splits: Vec<String>,
    /// File holding a bearer token; gRPC calls must then send
    /// `authorization: Bearer <token>` (health and metrics stay open).
    #[arg(long, env = "ENCORE_MODEL_SERVER_AUTH_TOKEN_FILE")]
    auth_token_file: Option<PathBuf>,
    /// PEM certificate chain: serve TLS (needs --tls-key).
    #[arg(long, env = "ENCORE_MODEL_SERVER_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "ENCORE_MODEL_SERVER_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Shadow version for a split model, MODEL=SELECTOR: gets a copy of its traffic, answers dropped.
    #[arg(long = "shadow", value_name = "MODEL=SELECTOR")]
    shadows: Vec<String>,
}

fn model_and_value<'a>(flag: &str, text: &'a str) -> anyhow::Result<(&'a str, &'a str)> {
    text.split_once('=')
        .filter(|(m, v)| !m.is_empty() && !v.is_empty())
        .ok_or_else(|| anyhow::anyhow!("--{flag} '{text}': expected MODEL=..."))
}

fn splits(args: &Args) -> anyhow::Result<HashMap<String, Split>> {
    let mut shadows = HashMap::new();
    for text in &args.shadows {
        let (model, selector) = model_and_value("shadow", text)?;
        shadows.insert(model.to_owned(), selector.to_owned());
    }
    let mut splits = HashMap::new();
    for text in &args.splits {
        let (model, split) = model_and_value("split", text)?;
        let split = Split::parse(split, shadows.remove(model))?;
        splits.insert(model.to_owned(), split);
    }
    if let Some(model) = shadows.keys().next() {
        anyhow::bail!("--shadow {model}=...: a shadow needs a --split for the same model");
    }
    Ok(splits)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("encore-model-server: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    process::init_logging("info");
    if !(args.poll_interval_seconds >= 0.0 && args.poll_interval_seconds.is_finite()) {
        anyhow::bail!("--poll-interval-seconds must be 0 or more");
    }
    if args.max_batch_size == 0 || args.max_queue_size == 0 || args.instances == 0 {
        anyhow::bail!("--max-batch-size, --max-queue-size and --instances must be at least 1");
    }
    let splits = splits(&args)?;
    let auth_token = match &args.auth_token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --auth-token-file {}", path.display()))?;
            let token = text.trim();
            anyhow::ensure!(
                !token.is_empty(),
                "--auth-token-file {} is empty",
                path.display()
            );
            Some(BearerToken::new(token))
        }
        None => None,
    };
    let config = ModelServerConfig {
        batch: BatchConfig {
            max_batch_size: args.max_batch_size,
            max_queue_delay: Duration::from_micros(args.max_queue_delay_us),
            max_queue_size: args.max_queue_size,
            instances: args.instances,
            inline: args.inline_when_idle,
            native_max_rows: args.native_max_rows,
        },
        splits,
        poll_interval: Duration::from_secs_f64(args.poll_interval_seconds),
        torch_threads: args.torch_threads,
        device: parse_device(&args.device).context("--device")?,
        item_index: !args.no_item_index,
        auth_token,
        tls: args
            .tls_cert
            .clone()
            .zip(args.tls_key.clone())
            .map(|(cert, key)| TlsFiles { cert, key }),
        registry: args.registry,
        models: args.models,
        bind_host: args.bind_host,
        bind_port: args.bind_port,
        ..Default::default()
    };
    process::runtime()
        .context("cannot start the tokio runtime")?
        .block_on(async {
            let mut handle = start_model_server(config).await?;
            // One stable line on stdout for scripts and tests.
            println!("encore-model-server listening on {}", handle.addr());
            handle.run_until_signal().await?;
            Ok(())
        })
}
