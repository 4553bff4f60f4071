//! Arrow Flight batch scoring on the model server's port.
//!
//! - `DoExchange`: the first message's descriptor names the model — path
//!   `[model]` or `[model, version-selector]`, or a JSON command
//!   `{"model": "recommend", "version": "", "k": 10}`. The client then
//!   streams record batches with the model's input columns and receives one
//!   output batch per input batch, rows in the same order:
//!   - churn: in `user_id` Int64, or the manifest's feature columns (any
//!     numeric type); out `user_id` (when given), `churn_<h>d` Float32 per
//!     horizon, `risk_tier` Utf8, `fallback` Boolean;
//!   - recommend: in `user_id` Int64, optional `hour` Int32 and `device`
//!     Utf8; out `user_id`, `item_ids` `List<Int64>`, `scores` `List<Float32>`,
//!     `fallback` Boolean.
//!
//!   The whole exchange is served by one version (A/B split by the first
//!   user id).
//! - `ListFlights` / `GetFlightInfo`: one flight per loaded model; its schema
//!   is the output schema, `app_metadata` is JSON with the version, kind and
//!   input columns.
//! - `GetSchema`: the output schema of a model.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float32Array, Int64Array, ListArray, RecordBatch,
    StringArray,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Float32Type, Int32Type, Int64Type, Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use futures::{Stream, StreamExt, TryStreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::instrument;

use crate::contract::{Contract, DEFAULT_K, MAX_K};
use crate::error::{Error, Result};
use crate::model::{RecommendQuery, ServedModel};
use crate::store::ModelStore;

/// Rows per model call when a client sends a large batch: big batches are
/// cut so that every model instance works on a part.
const CHUNK_ROWS: usize = 16 * 1024;

type BoxStream<T> = Pin<Box<dyn Stream<Item = std::result::Result<T, Status>> + Send + 'static>>;

/// The Flight service.
pub struct FlightScoring {
    store: Arc<ModelStore>,
}

impl FlightScoring {
    /// Serves the models of `store`.
    pub fn new(store: Arc<ModelStore>) -> Self {
        Self { store }
    }

    /// The version a descriptor names (its default route when it names none).
    fn model(&self, descriptor: &FlightDescriptor) -> Result<Arc<ServedModel>> {
        let target = target(descriptor)?;
        Ok(self
            .store
            .deployment(&target.model)?
            .select(&target.version, 0, &self.store.registry)?
            .model)
    }
}

/// What a descriptor asks for.
#[derive(Debug, Default, serde::Deserialize)]
struct Target {
    model: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    k: Option<usize>,
}

fn target(descriptor: &FlightDescriptor) -> Result<Target> {
    let invalid = |m: String| Error::InvalidArgument(m);
    match DescriptorType::try_from(descriptor.r#type) {
        Ok(DescriptorType::Path) => match descriptor.path.as_slice() {
            [model] => Ok(Target {
                model: model.clone(),
                ..Default::default()
            }),
            [model, version] => Ok(Target {
                model: model.clone(),
                version: version.clone(),
                ..Default::default()
            }),
            other => Err(invalid(format!(
                "descriptor path {other:?}: expected [model] or [model, version]"
            ))),
        },
        Ok(DescriptorType::Cmd) => serde_json::from_slice(&descriptor.cmd).map_err(|e| {
            invalid(format!(
                "descriptor command is not JSON like {{\"model\": \"churn\"}}: {e}"
            ))
        }),
        _ => Err(invalid(
            "the first message needs a flight descriptor naming the model".into(),
        )),
    }
}

fn list(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", item, true)))
}

/// Output schema of `model`'s exchange (`by_id`: the client sends user ids).
fn output_schema(model: &ServedModel, by_id: bool) -> SchemaRef {
    let mut fields = Vec::new();
    if by_id {
        fields.push(Field::new("user_id", DataType::Int64, false));
    }
    match model.contract {
        Contract::Churn { .. } => {
            for output in &model.manifest.outputs {
                fields.push(Field::new(&output.name, DataType::Float32, false));
            }
            fields.push(Field::new("risk_tier", DataType::Utf8, false));
            fields.push(Field::new("fallback", DataType::Boolean, false));
        }
        Contract::Recommend { .. } => {
            fields.push(Field::new("item_ids", list(DataType::Int64), false));
            fields.push(Field::new("scores", list(DataType::Float32), false));
            fields.push(Field::new("fallback", DataType::Boolean, false));
        }
        Contract::Generic => {}
    }
    Arc::new(Schema::new(fields))
}

/// Input columns of `model` for clients, as JSON.
fn input_columns(model: &ServedModel) -> serde_json::Value {
    match model.contract {
        Contract::Churn { .. } => serde_json::json!({
            "either": [
                [{"name": "user_id", "type": "int64"}],
                model.manifest.features.iter().map(|f| serde_json::json!({"name": f.name(), "type": "float32"})).collect::<Vec<_>>(),
            ]
        }),
        Contract::Recommend { .. } => serde_json::json!([
            {"name": "user_id", "type": "int64"},
            {"name": "hour", "type": "int32", "optional": true},
            {"name": "device", "type": "utf8", "optional": true},
        ]),
        Contract::Generic => serde_json::json!([]),
    }
}

fn flight_info(model: &ServedModel) -> Result<FlightInfo> {
    let metadata = serde_json::json!({
        "version": model.manifest.version,
        "kind": model.manifest.kind,
        "inputs": input_columns(model),
    });
    let schema = output_schema(model, true);
    FlightInfo::new()
        .try_with_schema(&schema)
        .map_err(|e| Error::Internal(format!("schema: {e}")))
        .map(|info| {
            info.with_descriptor(FlightDescriptor::new_path(vec![
                model.manifest.name.clone(),
            ]))
            .with_app_metadata(metadata.to_string().into_bytes())
        })
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Option<&'a ArrayRef> {
    batch.column_by_name(name)
}

fn typed(batch: &RecordBatch, name: &str, to: &DataType) -> Result<Option<ArrayRef>> {
    let Some(array) = column(batch, name) else {
        return Ok(None);
    };
    if array.null_count() > 0 {
        return Err(Error::InvalidArgument(format!(
            "column '{name}' has {} nulls",
            array.null_count()
        )));
    }
    crate::snapshot::strict_cast(array, to)
        .map(Some)
        .map_err(|e| Error::InvalidArgument(format!("column '{name}' as {to}: {e}")))
}

fn user_ids(batch: &RecordBatch) -> Result<Option<Vec<i64>>> {
    Ok(typed(batch, "user_id", &DataType::Int64)?
        .map(|a| a.as_primitive::<Int64Type>().values().to_vec()))
}

/// Scores one input batch, in chunks spread over the model's instances.
async fn score(model: &Arc<ServedModel>, batch: RecordBatch, k: usize) -> Result<RecordBatch> {
    match model.contract {
        Contract::Churn { .. } => score_churn(model, batch).await,
        Contract::Recommend { .. } => score_recommend(model, batch, k).await,
        Contract::Generic => Err(Error::InvalidArgument(format!(
            "model {} is a '{}' model; Flight scoring serves churn and recommend models",
            model.label(),
            model.manifest.kind
        ))),
    }
}

async fn score_churn(model: &Arc<ServedModel>, batch: RecordBatch) -> Result<RecordBatch> {
    let n = batch.num_rows();
    let ids = user_ids(&batch)?;
    let chunks: Vec<std::ops::Range<usize>> = (0..n)
        .step_by(CHUNK_ROWS)
        .map(|s| s..(s + CHUNK_ROWS).min(n))
        .collect();
    let (horizons, fallback) = match &ids {
        Some(ids) => {
            let parts = futures::future::try_join_all(
                chunks.iter().map(|r| model.churn(&ids[r.clone()], None)),
            )
            .await?;
            let mut horizons = vec![Vec::with_capacity(n); model.manifest.outputs.len()];
            let mut fallback = Vec::with_capacity(n);
            for part in parts {
                for (h, values) in horizons.iter_mut().zip(part.horizons) {
                    h.extend(values);
                }
                fallback.extend(part.fallback);
            }
            (horizons, fallback)
        }
        None => {
            let names: Vec<&str> = model.manifest.features.iter().map(|f| f.name()).collect();
            if names.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "model {} lists no feature columns: send user_id",
                    model.label()
                )));
            }
            let mut columns = Vec::with_capacity(names.len());
            for name in &names {
                let array = typed(&batch, name, &DataType::Float32)?.ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "missing column: send 'user_id' or the feature columns {names:?} ('{name}' is missing)"
                    ))
                })?;
                let values = array.as_primitive::<Float32Type>();
                if values.values().iter().any(|v| !v.is_finite()) {
                    return Err(Error::InvalidArgument(format!(
                        "column '{name}' holds NaN or infinity"
                    )));
                }
                columns.push(array);
            }
            let width = columns.len();
            let parts = futures::future::try_join_all(chunks.iter().map(|r| {
                let mut rows = Vec::with_capacity(r.len() * width);
                for row in r.clone() {
                    for c in &columns {
                        rows.push(c.as_primitive::<Float32Type>().value(row));
                    }
                }
                model.churn_features(rows, r.len(), None)
            }))
            .await?;
            let mut horizons = vec![Vec::with_capacity(n); model.manifest.outputs.len()];
            for part in parts {
                for (h, values) in horizons.iter_mut().zip(part) {
                    h.extend(values);
                }
            }
            (horizons, vec![false; n])
        }
    };
    let tiers = StringArray::from_iter_values(model.risk_tiers(&horizons));
    let mut columns: Vec<ArrayRef> = Vec::new();
    if let Some(ids) = ids {
        columns.push(Arc::new(Int64Array::from(ids)));
    }
    for h in horizons {
        columns.push(Arc::new(Float32Array::from(h)));
    }
    columns.push(Arc::new(tiers));
    columns.push(Arc::new(BooleanArray::from(fallback)));
    let schema = output_schema(model, column(&batch, "user_id").is_some());
    RecordBatch::try_new(schema, columns).map_err(|e| Error::Internal(format!("output batch: {e}")))
}

async fn score_recommend(
    model: &Arc<ServedModel>,
    batch: RecordBatch,
    k: usize,
) -> Result<RecordBatch> {
    let n = batch.num_rows();
    let ids = user_ids(&batch)?
        .ok_or_else(|| Error::InvalidArgument("missing column 'user_id'".into()))?;
    let hours: Vec<i32> = match typed(&batch, "hour", &DataType::Int32)? {
        Some(h) => h.as_primitive::<Int32Type>().values().to_vec(),
        None => vec![-1; n],
    };
    let devices: Vec<String> = match typed(&batch, "device", &DataType::Utf8)? {
        Some(d) => d
            .as_string::<i32>()
            .iter()
            .map(|v| v.unwrap_or_default().to_lowercase())
            .collect(),
        None => vec![String::new(); n],
    };
    let none = HashSet::new();
    let queries = RecommendQuery::rows(&ids, &hours, &devices, &none);
    let chunk = (CHUNK_ROWS / k.max(1)).max(64);
    let parts =
        futures::future::try_join_all(queries.chunks(chunk).map(|q| model.recommend(q, k, None)))
            .await?;
    let recs: Vec<_> = parts.into_iter().flatten().collect();
    let lengths = recs.iter().map(|r| r.items.len());
    let offsets = OffsetBuffer::from_lengths(lengths);
    let items = Int64Array::from_iter_values(recs.iter().flat_map(|r| r.items.iter().map(|i| i.0)));
    let scores =
        Float32Array::from_iter_values(recs.iter().flat_map(|r| r.items.iter().map(|i| i.1)));
    let item_field = Arc::new(Field::new("item", DataType::Int64, true));
    let score_field = Arc::new(Field::new("item", DataType::Float32, true));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(ids)),
        Arc::new(ListArray::new(
            item_field,
            offsets.clone(),
            Arc::new(items),
            None,
        )),
        Arc::new(ListArray::new(score_field, offsets, Arc::new(scores), None)),
        Arc::new(BooleanArray::from(
            recs.iter().map(|r| r.fallback).collect::<Vec<_>>(),
        )),
    ];
    RecordBatch::try_new(output_schema(model, true), columns)
        .map_err(|e| Error::Internal(format!("output batch: {e}")))
}

fn unimplemented<T>(what: &str) -> std::result::Result<T, Status> {
    Err(Status::unimplemented(format!(
        "{what} is not offered: the model server scores with DoExchange"
    )))
}

#[tonic::async_trait]
impl FlightService for FlightScoring {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoExchangeStream = BoxStream<FlightData>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;

    async fn handshake(
        &self,
        _: Request<Streaming<HandshakeRequest>>,
    ) -> std::result::Result<Response<Self::HandshakeStream>, Status> {
        unimplemented("Handshake")
    }

    async fn list_flights(
        &self,
        _: Request<Criteria>,
    ) -> std::result::Result<Response<Self::ListFlightsStream>, Status> {
        let mut infos = Vec::new();
        for name in self.store.names() {
            let deployment = self.store.deployment(&name)?;
            let model = deployment.select("", 0, &self.store.registry)?.model;
            if model.contract != Contract::Generic {
                infos.push(Ok(flight_info(&model)?));
            }
        }
        Ok(Response::new(Box::pin(futures::stream::iter(infos))))
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let model = self.model(request.get_ref())?;
        Ok(Response::new(flight_info(&model)?))
    }

    async fn poll_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<PollInfo>, Status> {
        unimplemented("PollFlightInfo")
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<SchemaResult>, Status> {
        let model = self.model(request.get_ref())?;
        let schema = output_schema(&model, true);
        let result = SchemaAsIpc::new(&schema, &IpcWriteOptions::default())
            .try_into()
            .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
        Ok(Response::new(result))
    }

    async fn do_get(
        &self,
        _: Request<Ticket>,
    ) -> std::result::Result<Response<Self::DoGetStream>, Status> {
        unimplemented("DoGet")
    }

    async fn do_put(
        &self,
        _: Request<Streaming<FlightData>>,
    ) -> std::result::Result<Response<Self::DoPutStream>, Status> {
        unimplemented("DoPut")
    }

    #[instrument(skip_all)]
    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> std::result::Result<Response<Self::DoExchangeStream>, Status> {
        let mut input = request.into_inner();
        let first = input
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty exchange: no descriptor, no data"))?;
        let descriptor = first.flight_descriptor.clone().ok_or_else(|| {
            Status::invalid_argument("the first message needs a flight descriptor naming the model")
        })?;
        let target = target(&descriptor)?;
        let k = target.k.unwrap_or(DEFAULT_K);
        if k == 0 || k > MAX_K {
            return Err(Status::invalid_argument(format!(
                "k must be 1 to {MAX_K}, got {k}"
            )));
        }
        let deployment = self.store.deployment(&target.model)?;
        let metrics = self.store.metrics().clone();
        let registry = self.store.registry.clone();
        // pyarrow sends the descriptor alone first; messages without an IPC
        // header (descriptor- or metadata-only) carry no data.
        let flight_data = futures::stream::once(async move { Ok(first) })
            .chain(input)
            .try_filter(|m| futures::future::ready(!m.data_header.is_empty()))
            .map_err(FlightError::from);
        let mut batches = FlightRecordBatchStream::new_from_flight_data(flight_data);
        let (tx, rx) =
            tokio::sync::mpsc::channel::<std::result::Result<RecordBatch, FlightError>>(2);
        tokio::spawn(async move {
            let mut chosen: Option<(Arc<ServedModel>, String)> = None;
            let timer = metrics.request(&target.model, "DoExchange");
            let mut code = tonic::Code::Ok;
            while let Some(batch) = batches.next().await {
                let result = match batch {
                    Err(e) => Err(Error::InvalidArgument(format!(
                        "reading the input stream: {e}"
                    ))),
                    Ok(batch) => {
                        if chosen.is_none() {
                            let key = user_ids(&batch)
                                .ok()
                                .flatten()
                                .and_then(|ids| ids.first().copied())
                                .unwrap_or(0) as u64;
                            match deployment.select(&target.version, key, &registry) {
                                Ok(s) => chosen = Some((s.model, s.variant)),
                                Err(e) => {
                                    code = e.code();
                                    let _ =
                                        tx.send(Err(FlightError::Tonic(Box::new(e.into())))).await;
                                    break;
                                }
                            }
                        }
                        let (model, _) = chosen.as_ref().expect("chosen above");
                        score(model, batch, k).await
                    }
                };
                match result {
                    Ok(out) => {
                        if tx.send(Ok(out)).await.is_err() {
                            code = tonic::Code::Cancelled;
                            break;
                        }
                    }
                    Err(e) => {
                        code = e.code();
                        let _ = tx.send(Err(FlightError::Tonic(Box::new(e.into())))).await;
                        break;
                    }
                }
            }
            let (version, variant) = chosen
                .map(|(m, v)| (m.manifest.version.to_string(), v))
                .unwrap_or_default();
            timer.finish(&version, &variant, code);
        });
        let output = FlightDataEncoderBuilder::new()
            .build(tokio_stream::wrappers::ReceiverStream::new(rx))
            .map_err(|e| match e {
                FlightError::Tonic(status) => *status,
                other => Status::internal(other.to_string()),
            });
        Ok(Response::new(Box::pin(output)))
    }

    async fn do_action(
        &self,
        _: Request<Action>,
    ) -> std::result::Result<Response<Self::DoActionStream>, Status> {
        unimplemented("DoAction")
    }

    async fn list_actions(
        &self,
        _: Request<Empty>,
    ) -> std::result::Result<Response<Self::ListActionsStream>, Status> {
        Ok(Response::new(Box::pin(futures::stream::empty())))
    }
}
