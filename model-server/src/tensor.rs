//! KServe v2 tensors ↔ libtorch tensors, with errors that name the tensor.
//!
//! Inputs come either as `raw_input_contents` (little-endian bytes, one
//! buffer per input, what tritonclient sends) or as typed `contents`.

use encore_proto::inference::model_infer_request::InferInputTensor;
use encore_proto::inference::model_infer_response::InferOutputTensor;
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::registry::TensorSpec;

fn invalid(msg: String) -> Error {
    Error::InvalidArgument(msg)
}

/// The element count of `shape`, checked against the model's spec.
fn element_count(spec: &TensorSpec, shape: &[i64]) -> Result<usize> {
    if shape.len() != spec.shape.len() {
        return Err(invalid(format!(
            "input '{}': shape {shape:?} has {} dimensions, the model expects {} ({:?})",
            spec.name,
            shape.len(),
            spec.shape.len(),
            spec.shape
        )));
    }
    let mut count: usize = 1;
    for (got, want) in shape.iter().zip(&spec.shape) {
        if *got < 0 || (*want >= 0 && got != want) {
            return Err(invalid(format!(
                "input '{}': shape {shape:?} does not fit the model's {:?}",
                spec.name, spec.shape
            )));
        }
        count = count.checked_mul(*got as usize).ok_or_else(|| {
            invalid(format!(
                "input '{}': shape {shape:?} is too large",
                spec.name
            ))
        })?;
    }
    Ok(count)
}

fn from_le<const N: usize, T>(
    name: &str,
    raw: &[u8],
    count: usize,
    f: impl Fn([u8; N]) -> T,
) -> Result<Vec<T>> {
    if raw.len() != count * N {
        return Err(invalid(format!(
            "input '{name}': {} raw bytes, expected {} ({count} elements of {N} bytes)",
            raw.len(),
            count * N
        )));
    }
    Ok(raw
        .chunks_exact(N)
        .map(|c| {
            let mut b = [0u8; N];
            b.copy_from_slice(c);
            f(b)
        })
        .collect())
}

fn check_len(name: &str, len: usize, count: usize) -> Result<()> {
    if len == count {
        Ok(())
    } else {
        Err(invalid(format!(
            "input '{name}': {len} values for a shape of {count} elements"
        )))
    }
}

fn check_finite(name: &str, values: impl IntoIterator<Item = f64>) -> Result<()> {
    if values.into_iter().all(f64::is_finite) {
        Ok(())
    } else {
        Err(invalid(format!("input '{name}' holds NaN or infinity")))
    }
}

/// Decoded values of one input tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// FP32.
    F32(Vec<f32>),
    /// FP64.
    F64(Vec<f64>),
    /// INT64.
    I64(Vec<i64>),
    /// INT32.
    I32(Vec<i32>),
    /// BOOL.
    Bool(Vec<bool>),
    /// BYTES: one byte string per element.
    Bytes(Vec<Vec<u8>>),
}

fn split_bytes(name: &str, raw: &[u8], count: usize) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::with_capacity(count);
    let mut rest = raw;
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err(invalid(format!(
                "input '{name}': BYTES element {} has a truncated 4-byte length prefix",
                out.len()
            )));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return Err(invalid(format!(
                "input '{name}': BYTES element {} claims {len} bytes, {} remain",
                out.len(),
                tail.len()
            )));
        }
        out.push(tail[..len].to_vec());
        rest = &tail[len..];
    }
    check_len(name, out.len(), count)?;
    Ok(out)
}

/// Decodes `input` as the model's `spec` describes it: datatype, shape
/// (`-1` dimensions free), element count, and no NaN or infinity.
pub fn decode_values(
    spec: &TensorSpec,
    input: &InferInputTensor,
    raw: Option<&[u8]>,
) -> Result<Values> {
    let name = &spec.name;
    if input.datatype != spec.dtype {
        return Err(invalid(format!(
            "input '{name}': datatype {}, the model expects {}",
            input.datatype, spec.dtype
        )));
    }
    let count = element_count(spec, &input.shape)?;
    let contents = input.contents.as_ref();
    let values = match spec.dtype.as_str() {
        "FP32" => {
            let values = match raw {
                Some(raw) => from_le(name, raw, count, f32::from_le_bytes)?,
                None => contents
                    .map(|c| c.fp32_contents.clone())
                    .unwrap_or_default(),
            };
            check_len(name, values.len(), count)?;
            check_finite(name, values.iter().map(|v| f64::from(*v)))?;
            Values::F32(values)
        }
        "FP64" => {
            let values = match raw {
                Some(raw) => from_le(name, raw, count, f64::from_le_bytes)?,
                None => contents
                    .map(|c| c.fp64_contents.clone())
                    .unwrap_or_default(),
            };
            check_len(name, values.len(), count)?;
            check_finite(name, values.iter().copied())?;
            Values::F64(values)
        }
        "INT64" => {
            let values = match raw {
                Some(raw) => from_le(name, raw, count, i64::from_le_bytes)?,
                None => contents
                    .map(|c| c.int64_contents.clone())
                    .unwrap_or_default(),
            };
            check_len(name, values.len(), count)?;
            Values::I64(values)
        }
        "INT32" => {
            let values = match raw {
                Some(raw) => from_le(name, raw, count, i32::from_le_bytes)?,
                None => contents.map(|c| c.int_contents.clone()).unwrap_or_default(),
            };
            check_len(name, values.len(), count)?;
            Values::I32(values)
        }
        "BOOL" => {
            let values = match raw {
                Some(raw) => from_le(name, raw, count, |[b]: [u8; 1]| b != 0)?,
                None => contents
                    .map(|c| c.bool_contents.clone())
                    .unwrap_or_default(),
            };
            check_len(name, values.len(), count)?;
            Values::Bool(values)
        }
        "BYTES" => {
            let values = match raw {
                Some(raw) => split_bytes(name, raw, count)?,
                None => contents
                    .map(|c| c.bytes_contents.clone())
                    .unwrap_or_default(),
            };
            check_len(name, values.len(), count)?;
            Values::Bytes(values)
        }
        other => {
            return Err(invalid(format!(
                "input '{name}': datatype {other} is not supported"
            )));
        }
    };
    Ok(values)
}

/// Builds the libtorch tensor for a numeric `input` as the model's `spec` describes it.
pub fn decode_input(
    spec: &TensorSpec,
    input: &InferInputTensor,
    raw: Option<&[u8]>,
) -> Result<Tensor> {
    let tensor = match decode_values(spec, input, raw)? {
        Values::F32(v) => Tensor::from_slice(&v),
        Values::F64(v) => Tensor::from_slice(&v),
        Values::I64(v) => Tensor::from_slice(&v),
        Values::I32(v) => Tensor::from_slice(&v),
        Values::Bool(v) => Tensor::from_slice(&v),
        Values::Bytes(_) => {
            return Err(invalid(format!(
                "input '{}': BYTES tensors cannot be passed to a TorchScript model",
                spec.name
            )));
        }
    };
    Ok(tensor.reshape(input.shape.as_slice()))
}

/// Describes and encodes one output tensor from decoded values (BYTES as
/// 4-byte little-endian length + bytes per element, BOOL as one byte).
pub fn encode_values(name: &str, shape: Vec<i64>, values: &Values) -> (InferOutputTensor, Vec<u8>) {
    let (datatype, raw): (&str, Vec<u8>) = match values {
        Values::F32(v) => ("FP32", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Values::F64(v) => ("FP64", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Values::I64(v) => ("INT64", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Values::I32(v) => ("INT32", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Values::Bool(v) => ("BOOL", v.iter().map(|b| u8::from(*b)).collect()),
        Values::Bytes(v) => {
            let mut raw = Vec::with_capacity(v.iter().map(|b| b.len() + 4).sum());
            for b in v {
                raw.extend_from_slice(&(b.len() as u32).to_le_bytes());
                raw.extend_from_slice(b);
            }
            ("BYTES", raw)
        }
    };
    let output = InferOutputTensor {
        name: name.to_owned(),
        datatype: datatype.to_owned(),
        shape,
        ..Default::default()
    };
    (output, raw)
}

/// Describes and encodes (little-endian raw bytes) one output tensor.
pub fn encode_output(spec: &TensorSpec, tensor: &Tensor) -> Result<(InferOutputTensor, Vec<u8>)> {
    let tensor = tensor.to_device(tch::Device::Cpu).contiguous();
    let shape = tensor.size();
    let flat = tensor.flatten(0, -1);
    let torch = |source| Error::Torch {
        model: format!("output '{}'", spec.name),
        source,
    };
    let raw: Vec<u8> = match spec.dtype.as_str() {
        "FP32" => Vec::<f32>::try_from(flat.to_kind(Kind::Float))
            .map_err(torch)?
            .into_iter()
            .flat_map(f32::to_le_bytes)
            .collect(),
        "FP64" => Vec::<f64>::try_from(flat.to_kind(Kind::Double))
            .map_err(torch)?
            .into_iter()
            .flat_map(f64::to_le_bytes)
            .collect(),
        "INT64" => Vec::<i64>::try_from(flat.to_kind(Kind::Int64))
            .map_err(torch)?
            .into_iter()
            .flat_map(i64::to_le_bytes)
            .collect(),
        "INT32" => Vec::<i32>::try_from(flat.to_kind(Kind::Int))
            .map_err(torch)?
            .into_iter()
            .flat_map(i32::to_le_bytes)
            .collect(),
        other => {
            return Err(Error::Internal(format!(
                "output '{}': datatype {other} is not supported yet",
                spec.name
            )));
        }
    };
    let output = InferOutputTensor {
        name: spec.name.clone(),
        datatype: spec.dtype.clone(),
        shape,
        ..Default::default()
    };
    Ok((output, raw))
}
