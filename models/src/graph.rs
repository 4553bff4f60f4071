//! A TorchScript module's frozen `forward` graph, read into plain Rust
//! values: what a server needs to compile a small model into native code
//! (the model server's `native` module) instead of calling libtorch.
//!
//! The C++ shim (`cpp/frozen_graph.cpp`) loads the module, freezes it as
//! `torch.jit.freeze` does (weights become constants, submodule calls are
//! inlined) and writes the graph as lines of text:
//!
//! ```text
//! in <value>                                   a graph input (after self)
//! const <value> int 3 | float 0.5 | bool 1 | none | ints 1,2 | other <tag>
//! const <value> tensor Float <dims|->         data follows in the float buffer
//! const <value> tensor Long <dims|-> <values|-> small integer tensors, in the text
//! op <kind> <outputs|-> <inputs|-> [blocks]    e.g. op aten::linear 7 1,5,6
//! ret <values>
//! ```
//!
//! with the data of every Float tensor constant, in order, in one float
//! buffer. Values are numbered by libtorch (`Value::unique`).

use std::ffi::{CString, c_char, c_int};
use std::path::Path;

use crate::error::{Error, Result};

unsafe extern "C" {
    fn encore_frozen_graph(
        path: *const c_char,
        text: *mut *mut c_char,
        data: *mut *mut f32,
        data_len: *mut usize,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
    fn encore_frozen_graph_free(text: *mut c_char, data: *mut f32);
}

/// A constant of the graph.
#[derive(Debug, Clone, PartialEq)]
pub enum Constant {
    /// `None`.
    None,
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A list of integers.
    Ints(Vec<i64>),
    /// A float32 tensor: its shape and row-major values.
    Floats {
        /// Its shape.
        shape: Vec<usize>,
        /// Its values, row-major.
        values: Vec<f32>,
    },
    /// A small int64 (or int32) tensor: its shape and row-major values.
    Longs {
        /// Its shape.
        shape: Vec<usize>,
        /// Its values, row-major.
        values: Vec<i64>,
    },
    /// A tensor of another dtype (its values are not read).
    OtherTensor(String),
    /// Any other constant (a string, a device, ...), by libtorch's tag.
    Other(String),
}

/// One node of the graph (not a constant).
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The operator, as libtorch names it: `aten::linear`, `prim::TupleConstruct`.
    pub kind: String,
    /// Values it defines.
    pub outputs: Vec<usize>,
    /// Values it reads.
    pub inputs: Vec<usize>,
    /// Whether it holds nested blocks (`prim::If`, `prim::Loop`).
    pub has_blocks: bool,
}

/// A frozen `forward` graph.
#[derive(Debug, Clone, PartialEq)]
pub struct FrozenGraph {
    /// The inputs, after the module itself.
    pub inputs: Vec<usize>,
    /// The constants, by value.
    pub constants: Vec<(usize, Constant)>,
    /// The other nodes, in execution order.
    pub nodes: Vec<Node>,
    /// What `forward` returns.
    pub outputs: Vec<usize>,
}

impl FrozenGraph {
    /// Loads `path` (a TorchScript file), freezes it and reads its `forward` graph.
    pub fn load(path: &Path) -> Result<Self> {
        let path_c = CString::new(path.to_string_lossy().as_bytes())
            .map_err(|_| Error::InvalidConfig("model path holds a NUL byte".into()))?;
        let mut text: *mut c_char = std::ptr::null_mut();
        let mut data: *mut f32 = std::ptr::null_mut();
        let mut len = 0usize;
        let called = crate::shim::call(|error, error_len| {
            // SAFETY: the path is a valid C string for the call; the shim
            // writes the three out-pointers (null/0 on failure) and at most
            // `error_len` bytes of message.
            unsafe {
                encore_frozen_graph(
                    path_c.as_ptr(),
                    &mut text,
                    &mut data,
                    &mut len,
                    error,
                    error_len,
                )
            }
        });
        let read = called.map(|()| {
            // SAFETY: on success the shim returned a NUL-terminated string
            // and `len` floats, both malloc'ed and ours until freed below.
            unsafe {
                (
                    std::ffi::CStr::from_ptr(text)
                        .to_string_lossy()
                        .into_owned(),
                    std::slice::from_raw_parts(data, len).to_vec(),
                )
            }
        });
        // SAFETY: both are null or the shim's own allocations, freed once.
        unsafe { encore_frozen_graph_free(text, data) };
        let (text, floats) = read.map_err(|e| Error::Script(format!("{}: {e}", path.display())))?;
        Self::parse(&text, floats)
            .map_err(|e| Error::Script(format!("{}: frozen graph: {e}", path.display())))
    }

    /// Reads the shim's text (see the module docs) and float buffer.
    pub fn parse(text: &str, floats: Vec<f32>) -> std::result::Result<Self, String> {
        let mut graph = FrozenGraph {
            inputs: Vec::new(),
            constants: Vec::new(),
            nodes: Vec::new(),
            outputs: Vec::new(),
        };
        let mut floats = floats.into_iter();
        for (n, line) in text.lines().enumerate() {
            let bad = |what: &str| format!("line {}: {what}: {line:?}", n + 1);
            let fields: Vec<&str> = line.split(' ').collect();
            match fields.as_slice() {
                ["in", id] => graph.inputs.push(number(id).map_err(|e| bad(&e))?),
                ["const", id, rest @ ..] => {
                    let id = number(id).map_err(|e| bad(&e))?;
                    let constant = match rest {
                        ["none"] => Constant::None,
                        ["int", v] => Constant::Int(v.parse().map_err(|_| bad("int"))?),
                        ["float", v] => Constant::Float(v.parse().map_err(|_| bad("float"))?),
                        ["bool", v] => Constant::Bool(*v == "1"),
                        ["ints", v] => Constant::Ints(list(v).map_err(|e| bad(&e))?),
                        ["tensor", "Float", shape] => {
                            let shape: Vec<usize> = list(shape).map_err(|e| bad(&e))?;
                            let count = shape.iter().product();
                            let values: Vec<f32> = floats.by_ref().take(count).collect();
                            if values.len() != count {
                                return Err(bad("tensor data missing"));
                            }
                            Constant::Floats { shape, values }
                        }
                        ["tensor", "Long" | "Int", shape, values] => {
                            let shape: Vec<usize> = list(shape).map_err(|e| bad(&e))?;
                            let values: Vec<i64> = list(values).map_err(|e| bad(&e))?;
                            if values.len() != shape.iter().product::<usize>() {
                                return Err(bad("tensor values do not fill its shape"));
                            }
                            Constant::Longs { shape, values }
                        }
                        ["tensor", dtype, _] => Constant::OtherTensor((*dtype).to_string()),
                        ["other", tag] => Constant::Other((*tag).to_string()),
                        _ => return Err(bad("unknown constant")),
                    };
                    graph.constants.push((id, constant));
                }
                ["op", kind, outputs, inputs, more @ ..] => graph.nodes.push(Node {
                    kind: (*kind).to_string(),
                    outputs: list(outputs).map_err(|e| bad(&e))?,
                    inputs: list(inputs).map_err(|e| bad(&e))?,
                    has_blocks: more == ["blocks"],
                }),
                ["ret", outputs] => graph.outputs = list(outputs).map_err(|e| bad(&e))?,
                [""] => {}
                _ => return Err(bad("unknown line")),
            }
        }
        Ok(graph)
    }
}

fn number<T: std::str::FromStr>(s: &str) -> std::result::Result<T, String> {
    s.parse().map_err(|_| format!("{s:?} is not a number"))
}

/// `a,b,c` or `-` (empty).
fn list<T: std::str::FromStr>(s: &str) -> std::result::Result<Vec<T>, String> {
    if s == "-" {
        return Ok(Vec::new());
    }
    s.split(',').map(number).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Tensor;

    #[test]
    fn a_scripted_module_freezes_into_its_operators_and_weights() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.pt");
        let w = Tensor::from_slice(&[1f32, 2., 3., 4., 5., 6.]).view([3, 2]);
        let b = Tensor::from_slice(&[0.5f32, -0.5, 0.0]);
        crate::script::save(
            "M",
            "def forward(self, x):\n    h = torch.relu(torch.linear(x, self.w, self.b))\n    return h[:, 0], torch.sigmoid(h[:, 1])\n",
            &[("w", &w), ("b", &b)],
            &path,
        )
        .unwrap();
        let graph = FrozenGraph::load(&path).unwrap();
        assert_eq!(graph.inputs.len(), 1);
        let kinds: Vec<&str> = graph.nodes.iter().map(|n| n.kind.as_str()).collect();
        for kind in [
            "aten::linear",
            "aten::relu",
            "aten::select",
            "aten::sigmoid",
        ] {
            assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
        }
        assert_eq!(kinds.last(), Some(&"prim::TupleConstruct"));
        let weights: Vec<&Constant> = graph
            .constants
            .iter()
            .map(|(_, c)| c)
            .filter(|c| matches!(c, Constant::Floats { .. }))
            .collect();
        assert!(weights.contains(&&Constant::Floats {
            shape: vec![3, 2],
            values: vec![1., 2., 3., 4., 5., 6.]
        }));
        assert_eq!(graph.outputs.len(), 1);
    }

    #[test]
    fn a_file_that_is_not_torchscript_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.pt");
        std::fs::write(&path, b"not a zip").unwrap();
        let err = FrozenGraph::load(&path).unwrap_err().to_string();
        assert!(err.contains("broken.pt"), "{err}");
    }

    #[test]
    fn malformed_text_names_the_line() {
        let err = FrozenGraph::parse("in 1\nwhat 2\n", vec![]).unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        let err = FrozenGraph::parse("const 3 tensor Float 2,2\n", vec![1.0]).unwrap_err();
        assert!(err.contains("data missing"), "{err}");
    }
}
