//! `kserve-echo`: the floor under any KServe v2 gRPC server on this
//! machine. It decodes `ModelInfer` requests and answers each with a fixed
//! churn-shaped response (three FP32 probabilities, a BYTES tier, a BOOL
//! fallback) without any model, queue or metrics: tonic, hyper, h2, prost
//! and the kernel, nothing else. `benches/serving.sh` can run it beside the
//! real servers so their latencies can be read against what the transport
//! alone costs on the same cores.
//!
//!   kserve-echo --port 0     (prints "kserve-echo listening on ADDR")

use clap::Parser;
use encore_proto::inference::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use encore_proto::inference::model_infer_response::InferOutputTensor;
use encore_proto::inference::*;
use tonic::{Request, Response, Status};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "kserve-echo")]
struct Args {
    /// Port on 127.0.0.1; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Serve as the model server does: the gRPC service as an axum router
    /// under `axum::serve` (gRPC and HTTP on one port), not tonic's `Server`.
    #[arg(long)]
    axum: bool,
}

struct Echo {
    response: ModelInferResponse,
}

fn output(name: &str, datatype: &str) -> InferOutputTensor {
    InferOutputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape: vec![1],
        ..Default::default()
    }
}

impl Echo {
    fn new() -> Self {
        let mut tier = 4u32.to_le_bytes().to_vec();
        tier.extend_from_slice(b"high");
        let response = ModelInferResponse {
            model_name: "churn".into(),
            model_version: "1".into(),
            outputs: vec![
                output("churn_7d", "FP32"),
                output("churn_15d", "FP32"),
                output("churn_30d", "FP32"),
                output("risk_tier", "BYTES"),
                output("fallback", "BOOL"),
            ],
            raw_output_contents: vec![
                0.1f32.to_le_bytes().to_vec(),
                0.2f32.to_le_bytes().to_vec(),
                0.3f32.to_le_bytes().to_vec(),
                tier,
                vec![0],
            ],
            ..Default::default()
        };
        Self { response }
    }
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("kserve-echo answers ModelInfer only"))
}

#[tonic::async_trait]
impl GrpcInferenceService for Echo {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }
    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse { ready: true }))
    }
    async fn model_ready(
        &self,
        _: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        Ok(Response::new(ModelReadyResponse { ready: true }))
    }
    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        unimplemented()
    }
    async fn model_metadata(
        &self,
        _: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        unimplemented()
    }
    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let request = request.into_inner();
        if request.inputs.is_empty() {
            return Err(Status::invalid_argument("no inputs"));
        }
        let mut response = self.response.clone();
        response.id = request.id;
        Ok(Response::new(response))
    }
    async fn repository_index(
        &self,
        _: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        unimplemented()
    }
    async fn repository_model_load(
        &self,
        _: Request<RepositoryModelLoadRequest>,
    ) -> Result<Response<RepositoryModelLoadResponse>, Status> {
        unimplemented()
    }
    async fn repository_model_unload(
        &self,
        _: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        unimplemented()
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
            println!("kserve-echo listening on {}", listener.local_addr()?);
            if args.axum {
                use axum::serve::ListenerExt;
                let listener = listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                let router =
                    tonic::service::Routes::new(GrpcInferenceServiceServer::new(Echo::new()))
                        .into_axum_router();
                axum::serve(listener, router).await?;
                return Ok(());
            }
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            tonic::transport::Server::builder()
                .add_service(GrpcInferenceServiceServer::new(Echo::new()))
                .serve_with_incoming(incoming)
                .await?;
            Ok(())
        })
}
