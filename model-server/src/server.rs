//! Starting and stopping the model server.

use std::net::SocketAddr;
use std::sync::Arc;

use encore_common::process::ServerTask;
use encore_proto::encore::v1::scoring_server::ScoringServer;
use encore_proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use tonic::service::RoutesBuilder;
use tracing::info;

use arrow_flight::flight_service_server::FlightServiceServer;

use crate::auth::{BearerToken, require_bearer};
use crate::batcher::BatchConfig;
use crate::error::{Error, Result};
use crate::flight::FlightScoring;
use crate::kserve::KserveService;
use crate::metrics::ServerMetrics;
use crate::registry::Registry;
use crate::scoring::ScoringService;
use crate::store::{ModelStore, Split, StoreConfig};
use crate::tls::{TlsFiles, TlsListener};

/// Everything the model server needs to start.
#[derive(Debug, Clone)]
pub struct ModelServerConfig {
    /// Registry location: a folder, or `s3://bucket/prefix` (versions are
    /// cached locally; see `encore_models::registry::object`).
    pub registry: String,
    /// Models to load at start (their `production` alias, else newest
    /// version); empty loads every model in the registry.
    pub models: Vec<String>,
    /// Address to listen on.
    pub bind_host: String,
    /// Port to listen on; 0 picks a free one.
    pub bind_port: u16,
    /// Largest gRPC message accepted or sent.
    pub grpc_max_message_bytes: usize,
    /// Dynamic batching and model instances per loaded version.
    pub batch: BatchConfig,
    /// A/B splits by model name.
    pub splits: std::collections::HashMap<String, Split>,
    /// How often aliases are re-read to swap versions; zero turns polling off.
    pub poll_interval: std::time::Duration,
    /// libtorch intra-op threads per model instance (0 keeps libtorch's default).
    pub torch_threads: usize,
    /// Where models run: `None` for CUDA when libtorch sees a GPU, else the
    /// CPU. Small models answer single requests faster on the CPU (a GPU
    /// pays kernel launches and copies per call), large ones on a GPU.
    pub device: Option<tch::Device>,
    /// When set, gRPC calls need `authorization: Bearer <token>`.
    pub auth_token: Option<BearerToken>,
    /// When set, the port speaks TLS (gRPC over h2, HTTPS for /metrics...).
    pub tls: Option<TlsFiles>,
    /// Score recommend modules that export `user_vectors` and `items` with
    /// the server's exact item index instead of their `forward` (on CPU).
    pub item_index: bool,
}

impl Default for ModelServerConfig {
    fn default() -> Self {
        Self {
            registry: "registry".into(),
            models: Vec::new(),
            bind_host: "127.0.0.1".into(),
            bind_port: 8001,
            grpc_max_message_bytes: 64 * 1024 * 1024,
            batch: BatchConfig::default(),
            splits: Default::default(),
            poll_interval: std::time::Duration::from_secs(5),
            torch_threads: 1,
            device: None,
            auth_token: None,
            tls: None,
            item_index: true,
        }
    }
}

/// A running model server; dropping it stops the server.
pub struct ModelServerHandle {
    addr: SocketAddr,
    server: ServerTask<Error>,
}

impl ModelServerHandle {
    /// The bound gRPC address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting requests, lets in-flight ones finish, and waits.
    pub async fn shutdown(mut self) -> Result<()> {
        self.server.shutdown().await
    }

    /// Serves until Ctrl-C / SIGTERM (then stops gracefully) or a server error.
    pub async fn run_until_signal(&mut self) -> Result<()> {
        self.server.run_until_signal().await
    }
}

/// `/metrics`, `/healthz`, and `/readyz` (200 once a model is loaded).
fn http_routes(store: Arc<ModelStore>, metrics: Arc<ServerMetrics>) -> axum::Router {
    use axum::http::StatusCode;
    use axum::routing::get;
    axum::Router::new()
        .route(
            "/metrics",
            get(move || async move { encore_common::metrics::response(metrics.encode()) }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || async move {
                if store.is_ready() {
                    (StatusCode::OK, "ready: models loaded\n")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: no model loaded\n",
                    )
                }
            }),
        )
}

/// A `--device` value: `auto` (`None`: CUDA when libtorch sees a GPU, else
/// the CPU), `cpu`, `cuda` (the first GPU) or `cuda:N`.
pub fn parse_device(text: &str) -> Result<Option<tch::Device>> {
    let bad = || {
        Error::InvalidArgument(format!(
            "device '{text}': expected auto, cpu, cuda or cuda:N"
        ))
    };
    Ok(match text.trim().to_ascii_lowercase().as_str() {
        "auto" => None,
        "cpu" => Some(tch::Device::Cpu),
        "cuda" => Some(tch::Device::Cuda(0)),
        other => {
            let index = other.strip_prefix("cuda:").ok_or_else(bad)?;
            Some(tch::Device::Cuda(index.parse().map_err(|_| bad())?))
        }
    })
}

/// Loads the configured models, binds, and serves KServe v2 gRPC and HTTP on one port.
pub async fn start_model_server(config: ModelServerConfig) -> Result<ModelServerHandle> {
    // A device that is not there fails before anything loads.
    let device = match config.device {
        None => encore_models::default_device(),
        Some(tch::Device::Cuda(i)) if i >= tch::Cuda::device_count() as usize => {
            return Err(Error::InvalidArgument(format!(
                "device cuda:{i}: libtorch sees {} CUDA device(s)",
                tch::Cuda::device_count()
            )));
        }
        Some(device) => device,
    };
    let registry = Registry::open(&config.registry)?;
    let metrics =
        Arc::new(ServerMetrics::new().map_err(|e| Error::Internal(format!("metrics: {e}")))?);
    // Certificate problems surface before anything loads or binds.
    let tls = config.tls.as_ref().map(TlsFiles::acceptor).transpose()?;
    if config.torch_threads > 0 {
        tch::set_num_threads(config.torch_threads as i32);
    }
    let store = Arc::new(ModelStore::new(
        registry.clone(),
        StoreConfig {
            batch: config.batch,
            splits: config.splits.clone(),
            device,
            item_index: config.item_index,
        },
        metrics.clone(),
    ));
    let models = if config.models.is_empty() {
        registry.models()?
    } else {
        config.models.clone()
    };
    for name in &models {
        let store = store.clone();
        let name = name.clone();
        tokio::task::spawn_blocking(move || store.load(&name))
            .await
            .map_err(|e| Error::Internal(format!("model loader: {e}")))??;
    }

    let (listener, addr) =
        encore_common::process::bind(&config.bind_host, config.bind_port).await?;
    let limit = config.grpc_max_message_bytes;
    let mut grpc = RoutesBuilder::default();
    grpc.add_service(
        GrpcInferenceServiceServer::new(KserveService::new(store.clone()))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit),
    );
    grpc.add_service(
        ScoringServer::new(ScoringService::new(store.clone()))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit),
    );
    grpc.add_service(
        FlightServiceServer::new(FlightScoring::new(store.clone()))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit),
    );
    let poller =
        (!config.poll_interval.is_zero()).then(|| store.spawn_poller(config.poll_interval));
    let mut grpc = grpc.routes().into_axum_router();
    if let Some(token) = config.auth_token.clone() {
        grpc = grpc.layer(axum::middleware::from_fn_with_state(token, require_bearer));
    }
    let app = grpc
        .layer(axum::middleware::from_fn_with_state(
            metrics.grpc.clone(),
            encore_common::metrics::record_grpc,
        ))
        .merge(http_routes(store, metrics));
    info!(%addr, models = ?models, device = ?device, "encore model server listening");

    let server = match tls {
        Some(acceptor) => {
            let listener = TlsListener::new(listener, acceptor)
                .map_err(|e| Error::Internal(format!("TLS listener: {e}")))?;
            ServerTask::spawn(|stop| serve(listener, app, stop, poller))
        }
        None => {
            // Small gRPC responses must not wait for Nagle's algorithm.
            use axum::serve::ListenerExt;
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            ServerTask::spawn(|stop| serve(listener, app, stop, poller))
        }
    };
    Ok(ModelServerHandle { addr, server })
}

/// Serves `app` on `listener` until `stop`, then stops the alias poller.
async fn serve<L>(
    listener: L,
    app: axum::Router,
    stop: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    poller: Option<tokio::task::JoinHandle<()>>,
) -> Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
        .map_err(|e| Error::Internal(format!("server: {e}")));
    if let Some(poller) = poller {
        poller.abort();
    }
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_values() {
        assert_eq!(parse_device("auto").unwrap(), None);
        assert_eq!(parse_device("CPU").unwrap(), Some(tch::Device::Cpu));
        assert_eq!(parse_device("cuda").unwrap(), Some(tch::Device::Cuda(0)));
        assert_eq!(parse_device("cuda:3").unwrap(), Some(tch::Device::Cuda(3)));
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", ""] {
            let message = parse_device(bad).unwrap_err().to_string();
            assert!(
                message.contains(&format!("'{bad}'")) && message.contains("cuda:N"),
                "{bad}: {message}"
            );
        }
    }

    #[tokio::test]
    async fn a_missing_gpu_fails_the_start_naming_it() {
        let config = ModelServerConfig {
            device: Some(tch::Device::Cuda(64)),
            registry: "/nonexistent/registry".into(),
            ..Default::default()
        };
        let message = start_model_server(config).await.err().unwrap().to_string();
        assert!(
            message.contains("cuda:64") && message.contains("CUDA device"),
            "{message}"
        );
    }
}
