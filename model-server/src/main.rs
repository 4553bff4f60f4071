//! `encore-model-server`: parses flags and environment, installs logging and
//! runs [`encore_model_server::start_model_server`] until SIGTERM or Ctrl-C.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use encore_common::process;
use encore_model_server::{ModelServerConfig, start_model_server};

/// Encore model server: TorchScript models from the registry over KServe v2 gRPC.
///
/// Triton clients (tritonclient.grpc) work unchanged: live, ready,
/// metadata, infer, and the model-repository extension.
#[derive(Parser, Debug)]
#[command(
    name = "encore-model-server",
    version,
    after_help = "Examples:\n  encore-model-server --registry /data/registry\n  encore-model-server --registry registry --model churn --bind-port 0   # any free port, printed on stdout"
)]
struct Args {
    /// Model registry folder (<registry>/<model>/<version>/manifest.json + model.pt).
    #[arg(long, env = "ENCORE_REGISTRY")]
    registry: PathBuf,
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
    /// gRPC port (KServe v2); 0 picks a free one.
    #[arg(long, env = "ENCORE_MODEL_SERVER_BIND_PORT", default_value_t = 8001)]
    bind_port: u16,
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
    let config = ModelServerConfig {
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
