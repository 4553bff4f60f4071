//! `inference.GRPCInferenceService`: KServe v2 / Open Inference Protocol
//! core RPCs and Triton's model-repository extension, over the store's
//! deployments and the serving contracts of [`crate::contract`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use encore_proto::inference::grpc_inference_service_server::GrpcInferenceService;
use encore_proto::inference::model_infer_request::InferInputTensor;
use encore_proto::inference::model_metadata_response::TensorMetadata;
use encore_proto::inference::repository_index_response::ModelIndex;
use encore_proto::inference::*;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::contract::{Contract, DEFAULT_K, MAX_K};
use crate::error::{Error, Result};
use crate::model::{RecommendQuery, ServedModel};
use crate::registry::TensorSpec;
use crate::request::{anonymous_routing_key, deadline, shadow, unique_batch_key};
use crate::store::ModelStore;
use crate::tensor::{Values, decode_input, decode_values, encode_output, encode_values};

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

fn tensor_metadata(specs: &[TensorSpec]) -> Vec<TensorMetadata> {
    specs
        .iter()
        .map(|s| TensorMetadata {
            name: s.name.clone(),
            datatype: s.dtype.clone(),
            shape: s.shape.clone(),
        })
        .collect()
}

fn invalid(message: String) -> Error {
    Error::InvalidArgument(message)
}

/// The request's inputs by name, checked against the served contract.
struct Inputs<'a> {
    request: &'a ModelInferRequest,
    specs: Vec<TensorSpec>,
}

impl<'a> Inputs<'a> {
    fn new(request: &'a ModelInferRequest, specs: Vec<TensorSpec>, model: &str) -> Result<Self> {
        if !request.raw_input_contents.is_empty()
            && request.raw_input_contents.len() != request.inputs.len()
        {
            return Err(invalid(format!(
                "{} raw_input_contents for {} inputs",
                request.raw_input_contents.len(),
                request.inputs.len()
            )));
        }
        let mut seen = HashSet::new();
        for input in &request.inputs {
            if !specs.iter().any(|s| s.name == input.name) {
                let expected: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
                return Err(invalid(format!(
                    "unknown input '{}' for model '{model}' (inputs: {expected:?})",
                    input.name
                )));
            }
            if !seen.insert(input.name.as_str()) {
                return Err(invalid(format!("input '{}' is given twice", input.name)));
            }
        }
        Ok(Self { request, specs })
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.request.inputs.iter().position(|i| i.name == name)
    }

    fn spec(&self, name: &str) -> Result<&TensorSpec> {
        self.specs
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| Error::Internal(format!("contract lacks input '{name}'")))
    }

    fn raw(&self, position: usize) -> Option<&[u8]> {
        self.request
            .raw_input_contents
            .get(position)
            .map(Vec::as_slice)
    }

    /// The decoded values of `name`, or None if the request lacks it.
    fn values(&self, name: &str) -> Result<Option<Values>> {
        let Some(position) = self.position(name) else {
            return Ok(None);
        };
        let spec = self.spec(name)?;
        decode_values(spec, &self.request.inputs[position], self.raw(position)).map(Some)
    }

    fn input(&self, name: &str) -> Result<&InferInputTensor> {
        self.position(name)
            .map(|p| &self.request.inputs[p])
            .ok_or_else(|| invalid(format!("missing input '{name}'")))
    }
}

fn user_ids(values: Option<Values>) -> Result<Option<Vec<i64>>> {
    match values {
        Some(Values::I64(ids)) => Ok(Some(ids)),
        None => Ok(None),
        Some(_) => Err(Error::Internal(
            "user_id decoded with the wrong type".into(),
        )),
    }
}

/// The routing key of a request: its first user id, when it has one.
fn routing_key(request: &ModelInferRequest) -> u64 {
    let spec = TensorSpec {
        name: "user_id".into(),
        dtype: "INT64".into(),
        shape: vec![-1],
    };
    request
        .inputs
        .iter()
        .position(|i| i.name == "user_id")
        .and_then(|p| {
            let raw = request.raw_input_contents.get(p).map(Vec::as_slice);
            match decode_values(&spec, &request.inputs[p], raw) {
                Ok(Values::I64(ids)) => ids.first().map(|id| *id as u64),
                _ => None,
            }
        })
        .unwrap_or_else(anonymous_routing_key)
}

/// Per-row values of an optional `[N]` input, or one value broadcast to N rows.
fn per_row<T: Clone>(name: &str, values: Vec<T>, n: usize, default: T) -> Result<Vec<T>> {
    match values.len() {
        0 => Ok(vec![default; n]),
        1 => Ok(vec![values[0].clone(); n]),
        len if len == n => Ok(values),
        len => Err(invalid(format!(
            "input '{name}' has {len} values for {n} users (give 1 or {n})"
        ))),
    }
}

/// Output tensors of a response, before selection.
type Outputs = Vec<(TensorSpec, Vec<i64>, Values)>;

async fn infer_churn(
    model: &Arc<ServedModel>,
    inputs: &Inputs<'_>,
    deadline: Option<Instant>,
    shadow_model: Option<(Arc<ServedModel>, Arc<crate::metrics::ServerMetrics>)>,
) -> Result<Outputs> {
    let ids = user_ids(inputs.values("user_id")?)?;
    let features = inputs.values("features")?;
    let (probabilities, fallback) = match (ids, features) {
        (Some(ids), None) => {
            if let Some((s, metrics)) = shadow_model {
                let ids = ids.clone();
                shadow(metrics, s.manifest.name.clone(), async move {
                    s.churn(&ids, None).await
                });
            }
            let scores = model.churn(&ids, deadline).await?;
            (scores.horizons, scores.fallback)
        }
        (None, Some(Values::F32(features))) => {
            let n = inputs.input("features")?.shape[0] as usize;
            if let Some((s, metrics)) = shadow_model {
                let f = features.clone();
                shadow(metrics, s.manifest.name.clone(), async move {
                    s.churn_features(f, n, None).await
                });
            }
            (
                model.churn_features(features, n, deadline).await?,
                vec![false; n],
            )
        }
        (Some(_), Some(_)) => {
            return Err(invalid(
                "give either 'user_id' or 'features', not both".into(),
            ));
        }
        _ => return Err(invalid("missing input: 'user_id' or 'features'".into())),
    };
    let n = fallback.len() as i64;
    let tiers: Vec<Vec<u8>> = model
        .risk_tiers(&probabilities)
        .into_iter()
        .map(|t| t.as_bytes().to_vec())
        .collect();
    let specs = model.contract.outputs(&model.manifest);
    let mut values: Vec<Values> = probabilities.into_iter().map(Values::F32).collect();
    values.push(Values::Bytes(tiers));
    values.push(Values::Bool(fallback));
    Ok(specs
        .into_iter()
        .zip(values)
        .map(|(spec, v)| (spec, vec![n], v))
        .collect())
}

async fn infer_recommend(
    model: &Arc<ServedModel>,
    inputs: &Inputs<'_>,
    deadline: Option<Instant>,
    shadow_model: Option<(Arc<ServedModel>, Arc<crate::metrics::ServerMetrics>)>,
) -> Result<Outputs> {
    let ids = user_ids(inputs.values("user_id")?)?
        .ok_or_else(|| invalid("missing input 'user_id'".into()))?;
    let n = ids.len();
    let k = match inputs.values("k")? {
        Some(Values::I32(k)) => k[0],
        _ => DEFAULT_K as i32,
    };
    if k < 1 || k as usize > MAX_K {
        return Err(invalid(format!("input 'k' must be 1 to {MAX_K}, got {k}")));
    }
    let k = k as usize;
    let hours = match inputs.values("hour")? {
        Some(Values::I32(h)) => per_row("hour", h, n, -1)?,
        _ => vec![-1; n],
    };
    let devices: Vec<String> = match inputs.values("device")? {
        Some(Values::Bytes(d)) => per_row("device", d, n, Vec::new())?
            .into_iter()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .collect(),
        _ => vec![String::new(); n],
    };
    let none = HashSet::new();
    let queries = RecommendQuery::rows(&ids, &hours, &devices, &none);
    if let Some((s, metrics)) = shadow_model {
        let (ids, hours, devices) = (ids.clone(), hours.clone(), devices.clone());
        shadow(metrics, s.manifest.name.clone(), async move {
            let none = HashSet::new();
            let queries = RecommendQuery::rows(&ids, &hours, &devices, &none);
            s.recommend(&queries, k, None).await
        });
    }
    let recs = model.recommend(&queries, k, deadline).await?;
    let mut items = Vec::with_capacity(n * k);
    let mut scores = Vec::with_capacity(n * k);
    for r in &recs {
        for j in 0..k {
            let (item, score) = r.items.get(j).copied().unwrap_or((-1, f32::NAN));
            items.push(item);
            scores.push(score);
        }
    }
    let specs = model.contract.outputs(&model.manifest);
    let shape = vec![n as i64, k as i64];
    let values = vec![
        (shape.clone(), Values::I64(items)),
        (shape, Values::F32(scores)),
        (
            vec![n as i64],
            Values::Bool(recs.iter().map(|r| r.fallback).collect()),
        ),
    ];
    Ok(specs
        .into_iter()
        .zip(values)
        .map(|(spec, (shape, v))| (spec, shape, v))
        .collect())
}

/// Encodes the wanted outputs of a contract response.
fn respond(outputs: Outputs, wanted: &[&str], response: &mut ModelInferResponse) {
    for (spec, shape, values) in outputs {
        if wanted.is_empty() || wanted.contains(&spec.name.as_str()) {
            let (output, raw) = encode_values(&spec.name, shape, &values);
            response.outputs.push(output);
            response.raw_output_contents.push(raw);
        }
    }
}

async fn infer(
    store: &ModelStore,
    request: ModelInferRequest,
    deadline: Option<Instant>,
    served: &mut (String, String),
) -> Result<ModelInferResponse> {
    let deployment = store.deployment(&request.model_name)?;
    let selection = deployment.select(
        &request.model_version,
        routing_key(&request),
        &store.registry,
    )?;
    let model = selection.model;
    *served = (model.manifest.version.to_string(), selection.variant);
    let manifest = &model.manifest;
    let inputs = Inputs::new(&request, model.contract.inputs(manifest), &manifest.name)?;
    let outputs = model.contract.outputs(manifest);
    let wanted: Vec<&str> = request.outputs.iter().map(|o| o.name.as_str()).collect();
    for name in &wanted {
        if !outputs.iter().any(|s| s.name == *name) {
            let names: Vec<&str> = outputs.iter().map(|s| s.name.as_str()).collect();
            return Err(invalid(format!(
                "unknown output '{name}' for model '{}' (outputs: {names:?})",
                manifest.name
            )));
        }
    }
    let shadow_model = selection.shadow.map(|s| (s, store.metrics().clone()));
    let mut response = ModelInferResponse {
        model_name: manifest.name.clone(),
        model_version: manifest.version.to_string(),
        id: request.id.clone(),
        ..Default::default()
    };
    match model.contract {
        Contract::Churn { .. } => {
            let outputs = infer_churn(&model, &inputs, deadline, shadow_model).await?;
            respond(outputs, &wanted, &mut response);
        }
        Contract::Recommend { .. } => {
            let outputs = infer_recommend(&model, &inputs, deadline, shadow_model).await?;
            respond(outputs, &wanted, &mut response);
        }
        Contract::Generic => {
            let mut tensors = Vec::with_capacity(manifest.inputs.len());
            let mut batch = None;
            let mut shared = false;
            for spec in &manifest.inputs {
                let position = inputs
                    .position(&spec.name)
                    .ok_or_else(|| invalid(format!("missing input '{}'", spec.name)))?;
                let input = &request.inputs[position];
                let tensor = decode_input(spec, input, inputs.raw(position))?;
                if spec.shape.first() == Some(&-1) {
                    let rows = input.shape[0];
                    if batch.is_some_and(|b| b != rows) {
                        return Err(invalid(format!(
                            "inputs disagree on the batch size: '{}' has {rows} rows, an earlier input {}",
                            spec.name,
                            batch.unwrap_or_default()
                        )));
                    }
                    batch = Some(rows);
                } else {
                    shared = true;
                }
                tensors.push(tensor);
            }
            let key = if shared { unique_batch_key() } else { 0 };
            if let Some((s, metrics)) = shadow_model {
                let copy: Vec<tch::Tensor> = tensors.iter().map(|t| t.copy()).collect();
                shadow(metrics, s.manifest.name.clone(), async move {
                    s.run(copy, key, None).await
                });
            }
            let results = model.run(tensors, key, deadline).await?;
            for (spec, tensor) in manifest.outputs.iter().zip(&results) {
                if wanted.is_empty() || wanted.contains(&spec.name.as_str()) {
                    let (output, raw) = encode_output(spec, tensor)?;
                    response.outputs.push(output);
                    response.raw_output_contents.push(raw);
                }
            }
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
        let ready = self
            .store
            .deployment(&r.name)
            .and_then(|d| d.select(&r.version, 0, &self.store.registry))
            .is_ok();
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
        let deployment = self.store.deployment(&r.name)?;
        let model = deployment
            .select(&r.version, 0, &self.store.registry)?
            .model;
        let m = &model.manifest;
        let mut versions: Vec<String> = deployment
            .versions()
            .iter()
            .map(|v| v.manifest.version.to_string())
            .collect();
        versions.dedup();
        Ok(Response::new(ModelMetadataResponse {
            name: m.name.clone(),
            versions,
            platform: "pytorch_libtorch".into(),
            inputs: tensor_metadata(&model.contract.inputs(m)),
            outputs: tensor_metadata(&model.contract.outputs(m)),
        }))
    }

    // A span per request at DEBUG, as tower-http's TraceLayer makes them:
    // `RUST_LOG=encore_model_server=debug` shows them; at the default INFO
    // they cost nothing, where an enabled one costs ~5 µs of CPU per request
    // under the fmt subscriber (15% of churn's QPS at concurrency 2;
    // benches/RESULTS.md). The typed Scoring API does the same.
    #[instrument(level = "debug", skip_all, fields(model = %request.get_ref().model_name, version = %request.get_ref().model_version))]
    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let deadline = deadline(request.metadata())?;
        let request = request.into_inner();
        // Per-model metrics only for loaded models: the label set stays bounded.
        let timer = self.store.deployment(&request.model_name).ok().map(|_| {
            self.store
                .metrics()
                .request(&request.model_name, "ModelInfer")
        });
        let mut served = (String::new(), String::new());
        let result = infer(&self.store, request, deadline, &mut served).await;
        if let Some(timer) = timer {
            timer.finish_result(&served, &result);
        }
        Ok(Response::new(result?))
    }

    async fn repository_index(
        &self,
        _: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        let mut models = Vec::new();
        let loaded: HashMap<String, String> = self
            .store
            .names()
            .into_iter()
            .filter_map(|name| {
                let d = self.store.deployment(&name).ok()?;
                let v = d.select("", 0, &self.store.registry).ok()?;
                Some((name, v.model.manifest.version.to_string()))
            })
            .collect();
        for name in self.store.registry.models().map_err(Error::from)? {
            let version = loaded.get(&name).cloned();
            models.push(ModelIndex {
                state: if version.is_some() {
                    "READY"
                } else {
                    "UNAVAILABLE"
                }
                .into(),
                version: version.unwrap_or_default(),
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
        tokio::task::spawn_blocking(move || store.load(&name))
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
