//! `inference.GRPCInferenceService`: KServe v2 / Open Inference Protocol
//! core RPCs and Triton's model-repository extension over the registry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use encore_proto::inference::grpc_inference_service_server::GrpcInferenceService;
use encore_proto::inference::model_metadata_response::TensorMetadata;
use encore_proto::inference::repository_index_response::ModelIndex;
use encore_proto::inference::*;
use tch::{CModule, IValue, Tensor};
use tonic::{Request, Response, Status};
use tracing::{info, instrument};

use crate::error::{Error, Result};
use crate::metrics::ServerMetrics;
use crate::registry::{Manifest, Registry};
use crate::tensor::{decode_input, encode_output};

/// One model version in memory.
pub struct LoadedModel {
    /// Its manifest.
    pub manifest: Manifest,
    // libtorch modules are not safe to run from several threads at once.
    module: Mutex<CModule>,
}

impl LoadedModel {
    /// Loads `model.pt` and the manifest of one registry version (on CPU, or CUDA when present).
    pub fn load(registry: &Registry, name: &str, version: u64) -> Result<Self> {
        let manifest = registry.manifest(name, version)?;
        let path = registry.version_dir(name, version).join("model.pt");
        let module =
            CModule::load_on_device(&path, encore_models::default_device()).map_err(|source| {
                Error::Torch {
                    model: format!("{name}:{version}"),
                    source,
                }
            })?;
        Ok(Self {
            manifest,
            module: Mutex::new(module),
        })
    }

    /// Runs `forward` on `inputs` (in manifest order); one tensor per manifest output.
    pub fn forward(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let device = encore_models::default_device();
        let args: Vec<IValue> = inputs
            .into_iter()
            .map(|t| IValue::Tensor(t.to_device(device)))
            .collect();
        let module = self
            .module
            .lock()
            .map_err(|_| Error::Internal("a previous inference panicked".into()))?;
        let torch = |source| Error::Torch {
            model: format!("{}:{}", self.manifest.name, self.manifest.version),
            source,
        };
        let output = tch::no_grad(|| module.forward_is(&args)).map_err(torch)?;
        let tensors = match output {
            IValue::Tensor(t) => vec![t],
            IValue::Tuple(values) | IValue::GenericList(values) => values
                .into_iter()
                .map(|v| match v {
                    IValue::Tensor(t) => Ok(t),
                    other => Err(Error::Internal(format!(
                        "model returned a {other:?} where a tensor was expected"
                    ))),
                })
                .collect::<Result<_>>()?,
            IValue::TensorList(values) => values,
            other => {
                return Err(Error::Internal(format!(
                    "model returned {other:?}, expected tensors"
                )));
            }
        };
        if tensors.len() != self.manifest.outputs.len() {
            return Err(Error::Internal(format!(
                "model returned {} tensors, its manifest lists {} outputs",
                tensors.len(),
                self.manifest.outputs.len()
            )));
        }
        Ok(tensors)
    }
}

/// The models being served, by name.
pub struct ModelStore {
    registry: Registry,
    loaded: RwLock<HashMap<String, Arc<LoadedModel>>>,
    metrics: Arc<ServerMetrics>,
}

impl ModelStore {
    /// An empty store over `registry`.
    pub fn new(registry: Registry, metrics: Arc<ServerMetrics>) -> Self {
        Self {
            registry,
            loaded: RwLock::default(),
            metrics,
        }
    }

    /// True once at least one model is loaded.
    pub fn is_ready(&self) -> bool {
        !self.read().is_empty()
    }

    /// Loads (or reloads) `name` at the version `selector` resolves to.
    pub fn load(&self, name: &str, selector: &str) -> Result<Arc<LoadedModel>> {
        let started = Instant::now();
        let loaded = self
            .registry
            .resolve(name, selector)
            .and_then(|version| Ok((version, LoadedModel::load(&self.registry, name, version)?)));
        let (version, model) = match loaded {
            Ok(loaded) => loaded,
            Err(e) => {
                // Only models that exist get a label: the set stays bounded.
                if !matches!(e, Error::NotFound(_)) {
                    self.metrics.load_failures.with_label_values(&[name]).inc();
                }
                return Err(e);
            }
        };
        self.metrics
            .load_duration
            .with_label_values(&[name])
            .observe(started.elapsed().as_secs_f64());
        // The failure series exists from the first load, so rates work at 0.
        self.metrics.load_failures.with_label_values(&[name]);
        let model = Arc::new(model);
        info!(model = name, version, "model loaded");
        let mut loaded = self.write();
        loaded.insert(name.to_owned(), model.clone());
        self.metrics.loaded_models.set(loaded.len() as i64);
        Ok(model)
    }

    /// Stops serving `name`; false if it was not loaded.
    pub fn unload(&self, name: &str) -> bool {
        let mut loaded = self.write();
        let removed = loaded.remove(name).is_some();
        self.metrics.loaded_models.set(loaded.len() as i64);
        removed
    }

    /// The loaded model `name`, checked against a requested version ("" = any).
    pub fn get(&self, name: &str, version: &str) -> Result<Arc<LoadedModel>> {
        let model = self
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("model '{name}' is not loaded")))?;
        if !version.is_empty() && version != model.manifest.version.to_string() {
            return Err(Error::NotFound(format!(
                "version {version} of model '{name}' is not loaded (serving version {})",
                model.manifest.version
            )));
        }
        Ok(model)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<LoadedModel>>> {
        self.loaded.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<LoadedModel>>> {
        self.loaded.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// The KServe v2 gRPC service.
pub struct KserveService {
    store: Arc<ModelStore>,
}

impl KserveService {
    /// Serves the models of `store`.
    pub fn new(store: Arc<ModelStore>) -> Self {
        Self { store }
    }
}

fn tensor_metadata(specs: &[crate::registry::TensorSpec]) -> Vec<TensorMetadata> {
    specs
        .iter()
        .map(|s| TensorMetadata {
            name: s.name.clone(),
            datatype: s.dtype.clone(),
            shape: s.shape.clone(),
        })
        .collect()
}

fn infer(store: &ModelStore, request: ModelInferRequest) -> Result<ModelInferResponse> {
    let model = store.get(&request.model_name, &request.model_version)?;
    let manifest = &model.manifest;
    if !request.raw_input_contents.is_empty()
        && request.raw_input_contents.len() != request.inputs.len()
    {
        return Err(Error::InvalidArgument(format!(
            "{} raw_input_contents for {} inputs",
            request.raw_input_contents.len(),
            request.inputs.len()
        )));
    }
    for input in &request.inputs {
        if !manifest.inputs.iter().any(|s| s.name == input.name) {
            let expected: Vec<&str> = manifest.inputs.iter().map(|s| s.name.as_str()).collect();
            return Err(Error::InvalidArgument(format!(
                "unknown input '{}' for model '{}' (inputs: {expected:?})",
                input.name, manifest.name
            )));
        }
    }
    let mut tensors = Vec::with_capacity(manifest.inputs.len());
    for spec in &manifest.inputs {
        let position = request
            .inputs
            .iter()
            .position(|i| i.name == spec.name)
            .ok_or_else(|| Error::InvalidArgument(format!("missing input '{}'", spec.name)))?;
        let raw = request.raw_input_contents.get(position).map(Vec::as_slice);
        tensors.push(decode_input(spec, &request.inputs[position], raw)?);
    }
    let batch = tensors
        .iter()
        .map(|t| t.size().first().copied())
        .collect::<Vec<_>>();
    if batch.windows(2).any(|w| w[0] != w[1]) {
        return Err(Error::InvalidArgument(format!(
            "inputs disagree on the batch size (first dimensions {batch:?})"
        )));
    }
    let wanted: Vec<&str> = request.outputs.iter().map(|o| o.name.as_str()).collect();
    for name in &wanted {
        if !manifest.outputs.iter().any(|s| s.name == *name) {
            return Err(Error::InvalidArgument(format!(
                "unknown output '{name}' for model '{}'",
                manifest.name
            )));
        }
    }
    let rows = batch.first().copied().flatten().unwrap_or(1).max(0);
    let labels = [manifest.name.as_str()];
    store
        .metrics
        .batch_size
        .with_label_values(&labels)
        .observe(rows as f64);
    let started = Instant::now();
    let outputs = model.forward(tensors);
    store
        .metrics
        .inference_duration
        .with_label_values(&labels)
        .observe(started.elapsed().as_secs_f64());
    let version = manifest.version.to_string();
    let outcome = if outputs.is_ok() { "ok" } else { "error" };
    store
        .metrics
        .inferences
        .with_label_values(&[manifest.name.as_str(), version.as_str(), outcome])
        .inc();
    let outputs = outputs?;
    let mut response = ModelInferResponse {
        model_name: manifest.name.clone(),
        model_version: manifest.version.to_string(),
        id: request.id,
        ..Default::default()
    };
    for (spec, tensor) in manifest.outputs.iter().zip(&outputs) {
        if wanted.is_empty() || wanted.contains(&spec.name.as_str()) {
            let (output, raw) = encode_output(spec, tensor)?;
            response.outputs.push(output);
            response.raw_output_contents.push(raw);
        }
    }
    Ok(response)
}

#[tonic::async_trait]
impl GrpcInferenceService for KserveService {
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
        let ready = self.store.is_ready();
        Ok(Response::new(ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let ready = self.store.get(&r.name, &r.version).is_ok();
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "encore-model-server".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: vec!["model_repository".into()],
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let model = self.store.get(&r.name, &r.version)?;
        let m = &model.manifest;
        Ok(Response::new(ModelMetadataResponse {
            name: m.name.clone(),
            versions: vec![m.version.to_string()],
            platform: "pytorch_libtorch".into(),
            inputs: tensor_metadata(&m.inputs),
            outputs: tensor_metadata(&m.outputs),
        }))
    }

    #[instrument(skip_all, fields(model = %request.get_ref().model_name))]
    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let store = self.store.clone();
        let request = request.into_inner();
        let response = tokio::task::spawn_blocking(move || infer(&store, request))
            .await
            .map_err(|e| Status::internal(format!("inference worker: {e}")))??;
        Ok(Response::new(response))
    }

    async fn repository_index(
        &self,
        _: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        let mut models = Vec::new();
        for name in self.store.registry.models()? {
            let loaded = self.store.get(&name, "").ok();
            models.push(ModelIndex {
                version: loaded
                    .as_ref()
                    .map(|m| m.manifest.version.to_string())
                    .unwrap_or_default(),
                state: if loaded.is_some() {
                    "READY"
                } else {
                    "UNAVAILABLE"
                }
                .into(),
                reason: String::new(),
                name,
            });
        }
        Ok(Response::new(RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        request: Request<RepositoryModelLoadRequest>,
    ) -> Result<Response<RepositoryModelLoadResponse>, Status> {
        let name = request.into_inner().model_name;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.load(&name, ""))
            .await
            .map_err(|e| Status::internal(format!("model loader: {e}")))??;
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        let name = request.into_inner().model_name;
        if !self.store.unload(&name) {
            return Err(Error::NotFound(format!("model '{name}' is not loaded")).into());
        }
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }
}
