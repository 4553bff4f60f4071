//! Native execution of small TorchScript models: a model's frozen `forward`
//! graph ([`FrozenGraph`]) compiled into a plan of Rust kernels over f32
//! rows, for models built from dense layers and element-wise functions
//! (churn's MLP heads).
//!
//! For such a model libtorch spends far more on dispatching each operator
//! (~1 µs apiece) than on the arithmetic: a one-row churn `forward` is ~14 µs
//! of CPU, of which the multiply-adds are ~1. The plan runs the same graph
//! in a couple of microseconds per row, cheaply enough to run small requests
//! on the thread that decoded them, with no hand-off to an instance thread
//! and back (`ServedModel::run_floats`).
//!
//! A plan is used only when it is safe to: every operator of the graph must
//! be one this module implements (else [`Plan::compile`] says which is not,
//! and the model runs on libtorch as before), and at load the plan must
//! answer random batches as libtorch's `forward` does, within float
//! rounding ([`Plan::check`]). Large requests (Flight batches) still go to
//! the batcher, where libtorch's matrix kernels are faster.

use std::collections::HashMap;

use encore_models::graph::{Constant, FrozenGraph, Node};
use tch::{CModule, IValue, Tensor};

/// A tensor: shape and row-major f32 values.
#[derive(Debug, Clone, PartialEq)]
struct Array {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Array {
    fn scalar(v: f32) -> Self {
        Self {
            shape: Vec::new(),
            data: vec![v],
        }
    }

    fn map(&self, f: impl Fn(f32) -> f32) -> Self {
        Self {
            shape: self.shape.clone(),
            data: self.data.iter().map(|&x| f(x)).collect(),
        }
    }
}

/// A value of the graph at run time.
#[derive(Debug, Clone)]
enum Val {
    Tensor(Array),
    Int(i64),
    Float(f64),
    Bool(bool),
    None,
    Ints(Vec<i64>),
    /// A list or tuple of other values.
    Seq(Vec<Ref>),
}

/// Where an operator finds a value: a constant of the plan or a register
/// written by an earlier operator (or the input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ref {
    Const(usize),
    Reg(usize),
}

#[derive(Debug, Clone, Copy)]
enum Unary {
    Relu,
    Sigmoid,
    Tanh,
    Exp,
    Log,
    Neg,
    Abs,
    Sqrt,
    Log1p,
    Sign,
    /// A cast to an integer type: toward zero.
    Trunc,
}

#[derive(Debug, Clone, Copy)]
enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Min,
    Max,
}

#[derive(Debug, Clone)]
enum Op {
    /// `x @ w.T + b` with `w.T` stored `[k, m]` (constant weights only).
    Linear {
        x: Ref,
        wt: Vec<f32>,
        k: usize,
        m: usize,
        bias: Option<Vec<f32>>,
    },
    /// `a @ b` for `a` `[.., k]` and `b` `[k, m]`, times `alpha`, plus
    /// `beta * c` broadcast (addmm) when given.
    MatMul {
        a: Ref,
        b: Ref,
        add: Option<(Ref, f32, f32)>,
    },
    Transpose(Ref),
    Unary(Unary, Ref),
    Softplus {
        x: Ref,
        beta: f32,
        threshold: f32,
    },
    LeakyRelu {
        x: Ref,
        slope: f32,
    },
    Clamp {
        x: Ref,
        min: Option<f32>,
        max: Option<f32>,
    },
    Binary {
        op: Binary,
        a: Ref,
        b: Ref,
        alpha: f32,
    },
    Select {
        x: Ref,
        dim: i64,
        index: i64,
    },
    Slice {
        x: Ref,
        dim: i64,
        start: Option<i64>,
        end: Option<i64>,
        step: i64,
    },
    Cat {
        list: Ref,
        dim: i64,
        stack: bool,
    },
    Unsqueeze {
        x: Ref,
        dim: i64,
    },
    Squeeze {
        x: Ref,
        dim: i64,
    },
    Narrow {
        x: Ref,
        dim: i64,
        start: i64,
        length: i64,
    },
    /// Rows of `weight` (`[n, d]`) picked by integer-valued `indices`.
    Embedding {
        weight: Ref,
        indices: Ref,
    },
    Flatten {
        x: Ref,
        start: i64,
        end: i64,
    },
    /// Sum (or mean) over `dims` (every dimension when None).
    Reduce {
        x: Ref,
        dims: Option<Vec<i64>>,
        keepdim: bool,
        mean: bool,
    },
    Identity(Ref),
    Seq(Vec<Ref>),
}

/// A compiled `forward`: one f32 matrix in, tensors out.
#[derive(Debug)]
pub struct Plan {
    consts: Vec<Val>,
    ops: Vec<(Op, usize)>,
    registers: usize,
    output: Ref,
    outputs: usize,
}

/// A compile-time or run-time failure, as a sentence.
type Fallible<T> = std::result::Result<T, String>;

impl Plan {
    /// Compiles `graph` for a module with one f32 matrix input `[n, width]`
    /// and `outputs` outputs; an error names what the plan cannot run.
    pub fn compile(graph: &FrozenGraph, outputs: usize) -> Fallible<Self> {
        let [input] = graph.inputs.as_slice() else {
            return Err(format!(
                "forward takes {} inputs, the plan one",
                graph.inputs.len()
            ));
        };
        let mut refs: HashMap<usize, Ref> = HashMap::new();
        let mut consts = Vec::new();
        refs.insert(*input, Ref::Reg(0));
        let mut registers = 1;
        for (id, constant) in &graph.constants {
            let val = match constant {
                Constant::None => Val::None,
                Constant::Int(v) => Val::Int(*v),
                Constant::Ints(v) => Val::Ints(v.clone()),
                Constant::Float(v) => Val::Float(*v),
                Constant::Bool(v) => Val::Bool(*v),
                Constant::Floats { shape, values } => {
                    if values.iter().any(|v| !v.is_finite()) {
                        return Err("a weight is not finite".into());
                    }
                    Val::Tensor(Array {
                        shape: shape.clone(),
                        data: values.clone(),
                    })
                }
                // Integer tensors (category offsets and bounds) are held as
                // floats, exact below 2^24: the plan has one element type.
                Constant::Longs { shape, values } if values.iter().all(|v| v.abs() < 1 << 24) => {
                    Val::Tensor(Array {
                        shape: shape.clone(),
                        data: values.iter().map(|&v| v as f32).collect(),
                    })
                }
                // Constants the plan cannot hold are harmless unless read:
                // an operator reading one fails to compile below.
                Constant::Longs { .. } | Constant::OtherTensor(_) | Constant::Other(_) => continue,
            };
            refs.insert(*id, Ref::Const(consts.len()));
            consts.push(val);
        }
        let mut ops = Vec::with_capacity(graph.nodes.len());
        for node in &graph.nodes {
            let op = compile_node(node, &refs, &consts)?;
            let [out] = node.outputs.as_slice() else {
                return Err(format!(
                    "{} defines {} values",
                    node.kind,
                    node.outputs.len()
                ));
            };
            refs.insert(*out, Ref::Reg(registers));
            ops.push((op, registers));
            registers += 1;
        }
        let [output] = graph.outputs.as_slice() else {
            return Err(format!("forward returns {} values", graph.outputs.len()));
        };
        let output = *refs
            .get(output)
            .ok_or_else(|| format!("forward returns an unknown value %{output}"))?;
        Ok(Self {
            consts,
            ops,
            registers,
            output,
            outputs,
        })
    }

    /// Operators in the plan.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the plan has no operators (`forward` returns its input).
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Runs `forward` on `values`, rows of `width` features (row-major):
    /// per output, its values (one per row for a churn model).
    pub fn run(&self, values: Vec<f32>, width: usize) -> Fallible<Vec<Vec<f32>>> {
        let rows = values.len().checked_div(width).unwrap_or(0);
        let mut regs: Vec<Option<Val>> = vec![None; self.registers];
        regs[0] = Some(Val::Tensor(Array {
            shape: vec![rows, width],
            data: values,
        }));
        for (op, out) in &self.ops {
            let val = self.exec(op, &regs)?;
            regs[*out] = Some(val);
        }
        let output = self.get(&regs, self.output)?;
        let tensors: Vec<&Array> = match output {
            Val::Tensor(t) => vec![t],
            Val::Seq(items) => items
                .iter()
                .map(|r| self.tensor(&regs, *r))
                .collect::<Fallible<_>>()?,
            other => return Err(format!("forward returned {other:?}")),
        };
        Ok(match tensors.as_slice() {
            // One [N, outputs] tensor stands for that many [N] outputs, as
            // the batcher reads a traced module's result.
            [t] if self.outputs > 1 && t.shape.len() == 2 && t.shape[1] == self.outputs => {
                let n = t.shape[0];
                (0..self.outputs)
                    .map(|c| (0..n).map(|r| t.data[r * self.outputs + c]).collect())
                    .collect()
            }
            _ => tensors.iter().map(|t| t.data.clone()).collect(),
        })
    }

    /// Whether the plan answers as `module` does: random batches of 1, 3 and
    /// 17 rows of `width` features (and `samples`, real rows, when given)
    /// through both; an error gives the first difference beyond rounding.
    pub fn check(&self, module: &CModule, width: usize, samples: &[f32]) -> Fallible<()> {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut random = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    // Uniform in [-3, 3).
                    (seed >> 40) as f32 / (1u64 << 24) as f32 * 6.0 - 3.0
                })
                .collect()
        };
        let mut batches: Vec<Vec<f32>> = [1, 3, 17].iter().map(|&n| random(n * width)).collect();
        if width > 0 && samples.len() >= width {
            batches.push(samples[..samples.len() / width * width].to_vec());
        }
        for batch in batches {
            let rows = batch.len() / width.max(1);
            let input = Tensor::from_slice(&batch).view([rows as i64, width as i64]);
            let ours = self.run(batch, width)?;
            let output = tch::no_grad(|| module.forward_is(&[IValue::Tensor(input)]))
                .map_err(|e| format!("libtorch forward: {e}"))?;
            let theirs = crate::batcher::output_tensors(output, self.outputs)
                .map_err(|e| format!("libtorch forward: {e}"))?;
            if theirs.len() != ours.len() {
                return Err(format!(
                    "{} outputs where libtorch gives {}",
                    ours.len(),
                    theirs.len()
                ));
            }
            for (i, (ours, theirs)) in ours.iter().zip(&theirs).enumerate() {
                let theirs = Vec::<f32>::try_from(theirs.to_kind(tch::Kind::Float).flatten(0, -1))
                    .map_err(|e| format!("libtorch output {i}: {e}"))?;
                if theirs.len() != ours.len() {
                    return Err(format!(
                        "output {i} has {} values where libtorch gives {} ({rows} rows)",
                        ours.len(),
                        theirs.len()
                    ));
                }
                for (j, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                    let close = (a - b).abs() <= 1e-4 * (1.0 + b.abs());
                    if !close {
                        return Err(format!(
                            "output {i} value {j} is {a} where libtorch gives {b} ({rows} rows)"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn get<'a>(&'a self, regs: &'a [Option<Val>], r: Ref) -> Fallible<&'a Val> {
        match r {
            Ref::Const(i) => Ok(&self.consts[i]),
            Ref::Reg(i) => regs[i]
                .as_ref()
                .ok_or_else(|| format!("register {i} read before it is written")),
        }
    }

    fn tensor<'a>(&'a self, regs: &'a [Option<Val>], r: Ref) -> Fallible<&'a Array> {
        match self.get(regs, r)? {
            Val::Tensor(t) => Ok(t),
            other => Err(format!("expected a tensor, got {other:?}")),
        }
    }

    /// A tensor operand, a number standing for a 0-dim tensor.
    fn operand<'a>(
        &'a self,
        regs: &'a [Option<Val>],
        r: Ref,
    ) -> Fallible<std::borrow::Cow<'a, Array>> {
        use std::borrow::Cow;
        match self.get(regs, r)? {
            Val::Tensor(t) => Ok(Cow::Borrowed(t)),
            Val::Float(v) => Ok(Cow::Owned(Array::scalar(*v as f32))),
            Val::Int(v) => Ok(Cow::Owned(Array::scalar(*v as f32))),
            other => Err(format!("expected a tensor or a number, got {other:?}")),
        }
    }

    fn exec(&self, op: &Op, regs: &[Option<Val>]) -> Fallible<Val> {
        let t = |r: Ref| self.tensor(regs, r);
        Ok(Val::Tensor(match op {
            Op::Linear { x, wt, k, m, bias } => linear(t(*x)?, wt, *k, *m, bias.as_deref())?,
            Op::MatMul { a, b, add } => {
                let b = t(*b)?;
                let [k, m] = b.shape[..] else {
                    return Err(format!("matmul by a {:?} tensor", b.shape));
                };
                let mut out = linear(t(*a)?, &b.data, k, m, None)?;
                if let Some((c, beta, alpha)) = add {
                    let c = self.operand(regs, *c)?;
                    out = broadcast(&c, &out, |c, p| beta * c + alpha * p)?;
                }
                out
            }
            Op::Transpose(x) => transpose(t(*x)?)?,
            Op::Unary(f, x) => {
                let x = t(*x)?;
                match f {
                    // NaN stays NaN, as in libtorch.
                    Unary::Relu => x.map(|v| if v > 0.0 || v.is_nan() { v } else { 0.0 }),
                    Unary::Sigmoid => x.map(sigmoid),
                    Unary::Tanh => x.map(f32::tanh),
                    Unary::Exp => x.map(f32::exp),
                    Unary::Log => x.map(f32::ln),
                    Unary::Neg => x.map(|v| -v),
                    Unary::Abs => x.map(f32::abs),
                    Unary::Sqrt => x.map(f32::sqrt),
                    Unary::Log1p => x.map(f32::ln_1p),
                    Unary::Sign => x.map(|v| {
                        if v > 0.0 {
                            1.0
                        } else if v < 0.0 {
                            -1.0
                        } else {
                            v
                        }
                    }),
                    Unary::Trunc => x.map(f32::trunc),
                }
            }
            Op::Softplus { x, beta, threshold } => t(*x)?.map(|v| {
                if v * beta > *threshold {
                    v
                } else {
                    (v * beta).exp().ln_1p() / beta
                }
            }),
            Op::LeakyRelu { x, slope } => t(*x)?.map(|v| if v > 0.0 { v } else { v * slope }),
            Op::Clamp { x, min, max } => t(*x)?.map(|mut v| {
                if let Some(lo) = min {
                    v = if v < *lo { *lo } else { v };
                }
                if let Some(hi) = max {
                    v = if v > *hi { *hi } else { v };
                }
                v
            }),
            Op::Binary { op, a, b, alpha } => {
                let (a, b) = (self.operand(regs, *a)?, self.operand(regs, *b)?);
                let alpha = *alpha;
                match op {
                    Binary::Add => broadcast(&a, &b, |x, y| x + alpha * y)?,
                    Binary::Sub => broadcast(&a, &b, |x, y| x - alpha * y)?,
                    Binary::Mul => broadcast(&a, &b, |x, y| x * y)?,
                    Binary::Div => broadcast(&a, &b, |x, y| x / y)?,
                    // NaN wins, as in libtorch.
                    Binary::Min => {
                        broadcast(&a, &b, |x, y| if x.is_nan() || x < y { x } else { y })?
                    }
                    Binary::Max => {
                        broadcast(&a, &b, |x, y| if x.is_nan() || x > y { x } else { y })?
                    }
                }
            }
            Op::Select { x, dim, index } => {
                let x = t(*x)?;
                let d = axis(*dim, x.shape.len())?;
                let len = x.shape[d] as i64;
                let i = if *index < 0 { index + len } else { *index };
                if !(0..len).contains(&i) {
                    return Err(format!("select index {index} out of {len}"));
                }
                let mut out = take(x, d, i as usize, 1, 1);
                out.shape.remove(d);
                out
            }
            Op::Slice {
                x,
                dim,
                start,
                end,
                step,
            } => {
                let x = t(*x)?;
                let d = axis(*dim, x.shape.len())?;
                let len = x.shape[d] as i64;
                let clip = |v: i64| (if v < 0 { v + len } else { v }).clamp(0, len);
                let s = start.map_or(0, clip);
                let e = end.map_or(len, clip).max(s);
                let count = ((e - s) as usize).div_ceil(*step as usize);
                take(x, d, s as usize, count, *step as usize)
            }
            Op::Cat { list, dim, stack } => {
                let Val::Seq(items) = self.get(regs, *list)? else {
                    return Err("cat of something other than a list".into());
                };
                let parts: Vec<&Array> = items.iter().map(|r| t(*r)).collect::<Fallible<_>>()?;
                cat(&parts, *dim, *stack)?
            }
            Op::Unsqueeze { x, dim } => {
                let x = t(*x)?;
                let d = axis(*dim, x.shape.len() + 1)?;
                let mut out = x.clone();
                out.shape.insert(d, 1);
                out
            }
            Op::Squeeze { x, dim } => {
                let x = t(*x)?;
                let mut out = x.clone();
                if !x.shape.is_empty() {
                    let d = axis(*dim, x.shape.len())?;
                    if x.shape[d] == 1 {
                        out.shape.remove(d);
                    }
                }
                out
            }
            Op::Reduce {
                x,
                dims,
                keepdim,
                mean,
            } => reduce(t(*x)?, dims.as_deref(), *keepdim, *mean)?,
            Op::Narrow {
                x,
                dim,
                start,
                length,
            } => {
                let x = t(*x)?;
                let d = axis(*dim, x.shape.len())?;
                let len = x.shape[d] as i64;
                let s = if *start < 0 { start + len } else { *start };
                if s < 0 || *length < 0 || s + length > len {
                    return Err(format!("narrow({start}, {length}) of {len}"));
                }
                take(x, d, s as usize, *length as usize, 1)
            }
            Op::Embedding { weight, indices } => {
                let (w, ix) = (t(*weight)?, t(*indices)?);
                let [n, width] = w.shape[..] else {
                    return Err(format!("embedding table of shape {:?}", w.shape));
                };
                let mut data = Vec::with_capacity(ix.data.len() * width);
                for &i in &ix.data {
                    if !(i >= 0.0 && i < n as f32 && i.fract() == 0.0) {
                        return Err(format!("embedding index {i} outside a table of {n}"));
                    }
                    let row = i as usize * width;
                    data.extend_from_slice(&w.data[row..row + width]);
                }
                let mut shape = ix.shape.clone();
                shape.push(width);
                Array { shape, data }
            }
            Op::Flatten { x, start, end } => {
                let x = t(*x)?;
                let mut out = x.clone();
                if !x.shape.is_empty() {
                    let (s, e) = (axis(*start, x.shape.len())?, axis(*end, x.shape.len())?);
                    if s < e {
                        let merged: usize = x.shape[s..=e].iter().product();
                        out.shape.splice(s..=e, [merged]);
                    }
                } else {
                    out.shape = vec![1];
                }
                out
            }
            Op::Identity(x) => return Ok(self.get(regs, *x)?.clone()),
            Op::Seq(items) => return Ok(Val::Seq(items.clone())),
        }))
    }
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// `dim` (negative from the end) as an index into `rank` dimensions.
fn axis(dim: i64, rank: usize) -> Fallible<usize> {
    let d = if dim < 0 { dim + rank as i64 } else { dim };
    if (0..rank as i64).contains(&d) {
        Ok(d as usize)
    } else {
        Err(format!("dimension {dim} of a rank-{rank} tensor"))
    }
}

/// `count` slices of `x` along `d` from `start`, `step` apart.
fn take(x: &Array, d: usize, start: usize, count: usize, step: usize) -> Array {
    let outer: usize = x.shape[..d].iter().product();
    let inner: usize = x.shape[d + 1..].iter().product();
    let len = x.shape[d];
    let mut data = Vec::with_capacity(outer * count * inner);
    for o in 0..outer {
        for c in 0..count {
            let at = (o * len + start + c * step) * inner;
            data.extend_from_slice(&x.data[at..at + inner]);
        }
    }
    let mut shape = x.shape.clone();
    shape[d] = count;
    Array { shape, data }
}

fn cat(parts: &[&Array], dim: i64, stack: bool) -> Fallible<Array> {
    let first = parts.first().ok_or("cat of an empty list")?;
    let rank = first.shape.len() + usize::from(stack);
    let d = axis(dim, rank)?;
    let shape_of = |a: &Array| {
        let mut s = a.shape.clone();
        if stack {
            s.insert(d, 1);
        }
        s
    };
    let base = shape_of(first);
    // Each part's length along `d`.
    let mut lengths = Vec::with_capacity(parts.len());
    for p in parts {
        let s = shape_of(p);
        if s.len() != base.len()
            || s.iter()
                .zip(&base)
                .enumerate()
                .any(|(i, (a, b))| i != d && a != b)
        {
            return Err(format!("cat of {:?} and {:?}", first.shape, p.shape));
        }
        lengths.push(s[d]);
    }
    let total: usize = lengths.iter().sum();
    let outer: usize = base[..d].iter().product();
    let inner: usize = base[d + 1..].iter().product();
    let mut data = Vec::with_capacity(outer * total * inner);
    for o in 0..outer {
        for (p, length) in parts.iter().zip(&lengths) {
            let n = length * inner;
            data.extend_from_slice(&p.data[o * n..(o + 1) * n]);
        }
    }
    let mut shape = base;
    shape[d] = total;
    Ok(Array { shape, data })
}

/// Sums (or means) of `x` over `dims` (all when None, or empty as
/// libtorch reads an empty list), keeping them as size 1 when `keepdim`.
fn reduce(x: &Array, dims: Option<&[i64]>, keepdim: bool, mean: bool) -> Fallible<Array> {
    let rank = x.shape.len();
    let mut axes: Vec<usize> = match dims {
        Some(dims) if !dims.is_empty() => dims
            .iter()
            .map(|&d| axis(d, rank))
            .collect::<Fallible<_>>()?,
        _ => (0..rank).collect(),
    };
    axes.sort_unstable();
    axes.dedup();
    let mut out = x.clone();
    let mut count = 1usize;
    for &d in &axes {
        let outer: usize = out.shape[..d].iter().product();
        let len = out.shape[d];
        let inner: usize = out.shape[d + 1..].iter().product();
        let mut data = vec![0.0f32; outer * inner];
        for o in 0..outer {
            let acc = &mut data[o * inner..(o + 1) * inner];
            for l in 0..len {
                let at = (o * len + l) * inner;
                for (a, &v) in acc.iter_mut().zip(&out.data[at..at + inner]) {
                    *a += v;
                }
            }
        }
        count *= len;
        out.shape[d] = 1;
        out.data = data;
    }
    if mean {
        let n = count as f32;
        out.data.iter_mut().for_each(|v| *v /= n);
    }
    if !keepdim {
        for &d in axes.iter().rev() {
            out.shape.remove(d);
        }
    }
    Ok(out)
}

fn transpose(x: &Array) -> Fallible<Array> {
    match x.shape[..] {
        [] | [_] => Ok(x.clone()),
        [r, c] => {
            let mut data = vec![0.0; r * c];
            for i in 0..r {
                for j in 0..c {
                    data[j * r + i] = x.data[i * c + j];
                }
            }
            Ok(Array {
                shape: vec![c, r],
                data,
            })
        }
        _ => Err(format!("t() of a {:?} tensor", x.shape)),
    }
}

/// `x @ wt + bias` for `x` `[.., k]`, `wt` `[k, m]`: each row accumulates
/// rows of `wt`, a loop over `m` contiguous floats that the compiler
/// vectorises (no reductions to reorder); with AVX2 and FMA where the CPU
/// has them.
fn linear(x: &Array, wt: &[f32], k: usize, m: usize, bias: Option<&[f32]>) -> Fallible<Array> {
    if x.shape.last() != Some(&k) || k == 0 || m == 0 {
        return Err(format!(
            "a {:?} input to a layer of {k} inputs and {m} outputs",
            x.shape
        ));
    }
    let rows = x.data.len() / k;
    let mut data = vec![0.0f32; rows * m];
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA, checked just above.
        #[allow(unsafe_code)]
        unsafe {
            accumulate_avx2(&mut data, &x.data, wt, k, m, bias)
        };
    } else {
        accumulate::<false>(&mut data, &x.data, wt, k, m, bias);
    }
    #[cfg(not(target_arch = "x86_64"))]
    accumulate::<false>(&mut data, &x.data, wt, k, m, bias);
    let mut shape = x.shape.clone();
    *shape.last_mut().expect("checked above") = m;
    Ok(Array { shape, data })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn accumulate_avx2(
    out: &mut [f32],
    x: &[f32],
    wt: &[f32],
    k: usize,
    m: usize,
    bias: Option<&[f32]>,
) {
    accumulate::<true>(out, x, wt, k, m, bias);
}

/// Outputs accumulated per pass over a row's inputs: a block that stays
/// in registers (4 AVX registers) while the inputs stream past.
const BLOCK: usize = 32;

/// The body of [`linear`]; `FUSED` uses fused multiply-adds (only where
/// the CPU has them: elsewhere `mul_add` is a library call).
#[inline(always)]
fn accumulate<const FUSED: bool>(
    out: &mut [f32],
    x: &[f32],
    wt: &[f32],
    k: usize,
    m: usize,
    bias: Option<&[f32]>,
) {
    let madd = |acc: f32, xv: f32, w: f32| {
        if FUSED {
            xv.mul_add(w, acc)
        } else {
            acc + xv * w
        }
    };
    for (out, xr) in out.chunks_exact_mut(m).zip(x.chunks_exact(k)) {
        let mut start = 0;
        while start < m {
            let width = BLOCK.min(m - start);
            let mut acc = [0.0f32; BLOCK];
            if let Some(b) = bias {
                acc[..width].copy_from_slice(&b[start..start + width]);
            }
            for (&xv, w) in xr.iter().zip(wt.chunks_exact(m)) {
                // Exact: adding 0 * w (finite weights) changes nothing, and
                // after a ReLU about half the inputs are 0.
                if xv == 0.0 {
                    continue;
                }
                let w = &w[start..start + width];
                if width == BLOCK {
                    let w: &[f32; BLOCK] = w.try_into().expect("a full block");
                    for j in 0..BLOCK {
                        acc[j] = madd(acc[j], xv, w[j]);
                    }
                } else {
                    for (a, &w) in acc.iter_mut().zip(w) {
                        *a = madd(*a, xv, w);
                    }
                }
            }
            out[start..start + width].copy_from_slice(&acc[..width]);
            start += width;
        }
    }
}

/// `f(a, b)` element-wise with NumPy broadcasting.
fn broadcast(a: &Array, b: &Array, f: impl Fn(f32, f32) -> f32) -> Fallible<Array> {
    if a.shape == b.shape {
        let data = a.data.iter().zip(&b.data).map(|(&x, &y)| f(x, y)).collect();
        return Ok(Array {
            shape: a.shape.clone(),
            data,
        });
    }
    if b.data.len() == 1 && b.shape.len() <= a.shape.len() {
        let y = b.data[0];
        return Ok(a.map(|x| f(x, y)));
    }
    if a.data.len() == 1 && a.shape.len() <= b.shape.len() {
        let x = a.data[0];
        return Ok(b.map(|y| f(x, y)));
    }
    let rank = a.shape.len().max(b.shape.len());
    let pad = |s: &[usize]| {
        let mut v = vec![1; rank - s.len()];
        v.extend_from_slice(s);
        v
    };
    let (sa, sb) = (pad(&a.shape), pad(&b.shape));
    let mut shape = Vec::with_capacity(rank);
    for (&x, &y) in sa.iter().zip(&sb) {
        shape.push(match (x, y) {
            _ if x == y => x,
            (1, _) => y,
            (_, 1) => x,
            _ => return Err(format!("cannot broadcast {:?} with {:?}", a.shape, b.shape)),
        });
    }
    // Strides, zero along broadcast dimensions.
    let strides = |s: &[usize]| {
        let mut st = vec![0; rank];
        let mut acc = 1;
        for d in (0..rank).rev() {
            st[d] = if s[d] == 1 { 0 } else { acc };
            acc *= s[d];
        }
        st
    };
    let (ta, tb) = (strides(&sa), strides(&sb));
    let total: usize = shape.iter().product();
    let mut data = Vec::with_capacity(total);
    let mut index = vec![0usize; rank];
    for _ in 0..total {
        let (mut ia, mut ib) = (0, 0);
        for d in 0..rank {
            ia += index[d] * ta[d];
            ib += index[d] * tb[d];
        }
        data.push(f(a.data[ia], b.data[ib]));
        for d in (0..rank).rev() {
            index[d] += 1;
            if index[d] < shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Ok(Array { shape, data })
}

/// One graph node as an operator of the plan.
fn compile_node(node: &Node, refs: &HashMap<usize, Ref>, consts: &[Val]) -> Fallible<Op> {
    let kind = node.kind.as_str();
    if node.has_blocks {
        return Err(format!("{kind} has nested blocks (control flow)"));
    }
    let arg = |i: usize| -> Fallible<Ref> {
        let id = node
            .inputs
            .get(i)
            .ok_or_else(|| format!("{kind} lacks argument {i}"))?;
        refs.get(id)
            .copied()
            .ok_or_else(|| format!("{kind} reads %{id}, a value the plan cannot hold"))
    };
    let constant = |i: usize| -> Fallible<&Val> {
        match arg(i)? {
            Ref::Const(c) => Ok(&consts[c]),
            Ref::Reg(_) => Err(format!("{kind}: argument {i} is not a constant")),
        }
    };
    let int = |i: usize| -> Fallible<i64> {
        match constant(i)? {
            Val::Int(v) => Ok(*v),
            other => Err(format!("{kind}: argument {i} is {other:?}, not an integer")),
        }
    };
    let opt_int = |i: usize| -> Fallible<Option<i64>> {
        match constant(i)? {
            Val::None => Ok(None),
            _ => int(i).map(Some),
        }
    };
    let number = |i: usize| -> Fallible<Option<f32>> {
        match constant(i)? {
            Val::None => Ok(None),
            Val::Int(v) => Ok(Some(*v as f32)),
            Val::Float(v) => Ok(Some(*v as f32)),
            other => Err(format!("{kind}: argument {i} is {other:?}, not a number")),
        }
    };
    let arity = |n: usize| -> Fallible<()> {
        if node.inputs.len() == n {
            Ok(())
        } else {
            Err(format!("{kind} with {} arguments", node.inputs.len()))
        }
    };
    let unary = |f: Unary| -> Fallible<Op> {
        arity(1)?;
        Ok(Op::Unary(f, arg(0)?))
    };
    let binary = |op: Binary| -> Fallible<Op> {
        let alpha = match node.inputs.len() {
            2 => 1.0,
            3 if matches!(op, Binary::Add | Binary::Sub) => number(2)?.unwrap_or(1.0),
            n => return Err(format!("{kind} with {n} arguments")),
        };
        Ok(Op::Binary {
            op,
            a: arg(0)?,
            b: arg(1)?,
            alpha,
        })
    };
    match kind {
        "aten::linear" => {
            arity(3)?;
            let Val::Tensor(w) = constant(1)? else {
                return Err("aten::linear with a weight that is not a tensor".into());
            };
            let [m, k] = w.shape[..] else {
                return Err(format!("aten::linear weight of shape {:?}", w.shape));
            };
            let bias = match constant(2)? {
                Val::None => None,
                Val::Tensor(b) if b.data.len() == m => Some(b.data.clone()),
                other => return Err(format!("aten::linear bias {other:?}")),
            };
            Ok(Op::Linear {
                x: arg(0)?,
                wt: transpose(w)?.data,
                k,
                m,
                bias,
            })
        }
        "aten::matmul" | "aten::mm" => {
            arity(2)?;
            Ok(Op::MatMul {
                a: arg(0)?,
                b: arg(1)?,
                add: None,
            })
        }
        "aten::addmm" => {
            arity(5)?;
            let beta = number(3)?.unwrap_or(1.0);
            let alpha = number(4)?.unwrap_or(1.0);
            Ok(Op::MatMul {
                a: arg(1)?,
                b: arg(2)?,
                add: Some((arg(0)?, beta, alpha)),
            })
        }
        "aten::t" => {
            arity(1)?;
            Ok(Op::Transpose(arg(0)?))
        }
        "aten::relu" => unary(Unary::Relu),
        "aten::sigmoid" => unary(Unary::Sigmoid),
        "aten::tanh" => unary(Unary::Tanh),
        "aten::exp" => unary(Unary::Exp),
        "aten::log" => unary(Unary::Log),
        "aten::neg" => unary(Unary::Neg),
        "aten::abs" => unary(Unary::Abs),
        "aten::sqrt" => unary(Unary::Sqrt),
        "aten::log1p" => unary(Unary::Log1p),
        "aten::sign" => unary(Unary::Sign),
        "aten::minimum" => binary(Binary::Min),
        "aten::maximum" => binary(Binary::Max),
        "aten::clamp_min" | "aten::clamp_max" => {
            arity(2)?;
            let bound = number(1)?;
            let (min, max) = if kind == "aten::clamp_min" {
                (bound, None)
            } else {
                (None, bound)
            };
            Ok(Op::Clamp {
                x: arg(0)?,
                min,
                max,
            })
        }
        "aten::to" => {
            // to(x, dtype, non_blocking, copy, memory_format): casts between
            // float32 and the integer types (values held as floats).
            arity(5)?;
            match constant(1)? {
                // ScalarType Float.
                Val::Int(6) => Ok(Op::Identity(arg(0)?)),
                // Int, Long: toward zero, as libtorch casts.
                Val::Int(3 | 4) => Ok(Op::Unary(Unary::Trunc, arg(0)?)),
                other => Err(format!("aten::to {other:?}")),
            }
        }
        "aten::narrow" => {
            arity(4)?;
            Ok(Op::Narrow {
                x: arg(0)?,
                dim: int(1)?,
                start: int(2)?,
                length: int(3)?,
            })
        }
        "aten::embedding" => {
            arity(5)?;
            if !matches!(arg(0)?, Ref::Const(_)) {
                return Err("aten::embedding of a table that is not a constant".into());
            }
            Ok(Op::Embedding {
                weight: arg(0)?,
                indices: arg(1)?,
            })
        }
        "aten::flatten" => {
            arity(3)?;
            Ok(Op::Flatten {
                x: arg(0)?,
                start: int(1)?,
                end: int(2)?,
            })
        }
        "aten::softplus" => {
            arity(3)?;
            Ok(Op::Softplus {
                x: arg(0)?,
                beta: number(1)?.unwrap_or(1.0),
                threshold: number(2)?.unwrap_or(20.0),
            })
        }
        "aten::leaky_relu" => {
            arity(2)?;
            Ok(Op::LeakyRelu {
                x: arg(0)?,
                slope: number(1)?.unwrap_or(0.01),
            })
        }
        "aten::clamp" => {
            arity(3)?;
            Ok(Op::Clamp {
                x: arg(0)?,
                min: number(1)?,
                max: number(2)?,
            })
        }
        "aten::add" => binary(Binary::Add),
        "aten::sub" => binary(Binary::Sub),
        "aten::mul" => binary(Binary::Mul),
        "aten::div" => binary(Binary::Div),
        "aten::select" => {
            arity(3)?;
            Ok(Op::Select {
                x: arg(0)?,
                dim: int(1)?,
                index: int(2)?,
            })
        }
        "aten::slice" => {
            arity(5)?;
            let step = int(4)?;
            if step < 1 {
                return Err(format!("aten::slice with step {step}"));
            }
            Ok(Op::Slice {
                x: arg(0)?,
                dim: int(1)?,
                start: opt_int(2)?,
                end: opt_int(3)?,
                step,
            })
        }
        "aten::cat" | "aten::stack" => {
            arity(2)?;
            Ok(Op::Cat {
                list: arg(0)?,
                dim: int(1)?,
                stack: kind == "aten::stack",
            })
        }
        "aten::unsqueeze" => {
            arity(2)?;
            Ok(Op::Unsqueeze {
                x: arg(0)?,
                dim: int(1)?,
            })
        }
        "aten::squeeze" => {
            arity(2)?;
            Ok(Op::Squeeze {
                x: arg(0)?,
                dim: int(1)?,
            })
        }
        "aten::dropout" => {
            arity(3)?;
            match constant(2)? {
                Val::Bool(false) => Ok(Op::Identity(arg(0)?)),
                _ => Err("aten::dropout in training mode".into()),
            }
        }
        "aten::sum" | "aten::mean" => {
            // sum(x, dtype) or sum(x, dims, keepdim, dtype); no dtype change.
            let (dims, keepdim) = match node.inputs.len() {
                2 => (None, false),
                4 => {
                    let dims = match constant(1)? {
                        Val::Ints(d) => Some(d.clone()),
                        Val::None => None,
                        other => return Err(format!("{kind} over {other:?}")),
                    };
                    let keepdim = match constant(2)? {
                        Val::Bool(b) => *b,
                        other => return Err(format!("{kind} with keepdim {other:?}")),
                    };
                    (dims, keepdim)
                }
                n => return Err(format!("{kind} with {n} arguments")),
            };
            // dtype: None or Float (6).
            if !matches!(constant(node.inputs.len() - 1)?, Val::None | Val::Int(6)) {
                return Err(format!("{kind} to another dtype"));
            }
            Ok(Op::Reduce {
                x: arg(0)?,
                dims,
                keepdim,
                mean: kind == "aten::mean",
            })
        }
        "aten::contiguous" | "aten::detach" => Ok(Op::Identity(arg(0)?)),
        "prim::TupleConstruct" | "prim::ListConstruct" => Ok(Op::Seq(
            (0..node.inputs.len()).map(arg).collect::<Fallible<_>>()?,
        )),
        _ => Err(format!("operator {kind} is not supported")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn module(dir: &Path, source: &str, buffers: &[(&str, &Tensor)]) -> (CModule, FrozenGraph) {
        let path = dir.join("m.pt");
        encore_models::script::save("M", source, buffers, &path).unwrap();
        (
            CModule::load(&path).unwrap(),
            FrozenGraph::load(&path).unwrap(),
        )
    }

    fn weights(shape: &[i64], seed: i64) -> Tensor {
        tch::manual_seed(seed);
        Tensor::randn(shape, (tch::Kind::Float, tch::Device::Cpu))
    }

    /// The benchmark's churn network (wide & deep, monotone heads) runs
    /// natively and agrees with libtorch.
    #[test]
    fn a_wide_and_deep_churn_network_matches_libtorch() {
        let dir = tempfile::tempdir().unwrap();
        let (w0, b0) = (weights(&[16, 8], 1), weights(&[16], 2));
        let (w1, b1) = (weights(&[3, 16], 3), weights(&[3], 4));
        let (ww, bw) = (weights(&[1, 8], 5), weights(&[1], 6));
        let source = "def forward(self, x):
    h = torch.relu(torch.linear(x, self.w0, self.b0))
    z = torch.linear(h, self.w1, self.b1) + torch.linear(x, self.ww, self.bw)
    h7 = z[:, 0]
    h15 = h7 + torch.softplus(z[:, 1])
    h30 = h15 + torch.softplus(z[:, 2])
    return torch.sigmoid(h7), torch.sigmoid(h15), torch.sigmoid(h30)
";
        let (m, graph) = module(
            dir.path(),
            source,
            &[
                ("w0", &w0),
                ("b0", &b0),
                ("w1", &w1),
                ("b1", &b1),
                ("ww", &ww),
                ("bw", &bw),
            ],
        );
        let plan = Plan::compile(&graph, 3).unwrap();
        plan.check(&m, 8, &[]).unwrap();
        let out = plan.run(vec![0.5; 16], 8).unwrap();
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|o| o.len() == 2));
        // Monotone heads: p7 <= p15 <= p30.
        assert!(out[0][0] <= out[1][0] && out[1][0] <= out[2][0]);
    }

    /// Broadcasting, scalars, slices with steps, cat / stack, clamp, a
    /// matrix product by a constant and one [N, outputs] tensor returned.
    #[test]
    fn element_wise_and_shape_operators_match_libtorch() {
        let dir = tempfile::tempdir().unwrap();
        let (w, s) = (weights(&[6, 4], 7), weights(&[4], 8));
        let source = "def forward(self, x):
    y = torch.matmul(x, self.w) * self.s - 0.5
    y = torch.clamp(y, -1.0, 2.0) / 3 + torch.tanh(x[:, 0:6:2]).sum(1, keepdim=True) * 0.25 - x.mean()
    y = y + torch.cumsum(y, 1) * 0
    a = torch.cat([y[:, 1:2], torch.exp(-torch.abs(y[:, 0:1]))], 1)
    b = torch.stack([y[:, 3], torch.leaky_relu(y[:, 2], 0.1)], 1)
    return a + b.unsqueeze(2).squeeze(2)
";
        let (m, graph) = module(dir.path(), source, &[("w", &w), ("s", &s)]);
        // `cumsum` is not supported: the plan says so.
        let err = Plan::compile(&graph, 2).unwrap_err();
        assert!(err.contains("aten::cumsum"), "{err}");
        let source = source.replace("    y = y + torch.cumsum(y, 1) * 0\n", "");
        let (m2, graph) = module(dir.path(), &source, &[("w", &w), ("s", &s)]);
        drop(m);
        let plan = Plan::compile(&graph, 2).unwrap();
        plan.check(&m2, 6, &[]).unwrap();
        let out = plan.run(vec![1.0; 12], 6).unwrap();
        assert_eq!(
            (out.len(), out[0].len()),
            (2, 2),
            "columns of one [N, 2] tensor"
        );
    }

    /// What Encore's own churn export does (`encore_models::churn`):
    /// numeric columns squashed, categorical columns cast to integers,
    /// bounded, offset into one embedding table and flattened beside them.
    #[test]
    fn categorical_embeddings_match_libtorch() {
        let dir = tempfile::tempdir().unwrap();
        let top = Tensor::from_slice(&[2i64, 3]);
        let offsets = Tensor::from_slice(&[0i64, 3]);
        let (table, w, b) = (
            weights(&[7, 4], 11),
            weights(&[2, 11], 12),
            weights(&[2], 13),
        );
        let source = "def forward(self, x):
    num = torch.narrow(x, 1, 0, 3)
    cat = torch.narrow(x, 1, 3, 2).to(4)
    z = torch.sign(num) * torch.log1p(torch.abs(num))
    idx = torch.minimum(torch.clamp_min(cat, 0), self.top) + self.offsets
    e = torch.flatten(torch.embedding(self.table, idx), 1, 2)
    h = torch.cat([z, e], 1)
    return torch.sigmoid(torch.linear(h, self.w, self.b))
";
        let (m, graph) = module(
            dir.path(),
            source,
            &[
                ("top", &top),
                ("offsets", &offsets),
                ("table", &table),
                ("w", &w),
                ("b", &b),
            ],
        );
        let plan = Plan::compile(&graph, 2).unwrap();
        // Random rows put the categorical columns in -3..3: clamped, cast,
        // bounded; plus rows with the largest categories.
        plan.check(&m, 5, &[0.5, -1.0, 2.0, 9.0, 9.7, 0.0, 0.0, 0.0, 1.9, 2.2])
            .unwrap();
        let out = plan.run(vec![0.5, -1.0, 2.0, 9.0, 9.7], 5).unwrap();
        assert_eq!((out.len(), out[0].len()), (2, 1));
    }

    /// A plan that answers differently from libtorch is caught by the check.
    #[test]
    fn the_check_catches_a_plan_that_disagrees() {
        let dir = tempfile::tempdir().unwrap();
        let w = weights(&[2, 4], 9);
        let (m, graph) = module(
            dir.path(),
            "def forward(self, x):\n    return torch.sigmoid(torch.linear(x, self.w, None))\n",
            &[("w", &w)],
        );
        let mut plan = Plan::compile(&graph, 2).unwrap();
        plan.check(&m, 4, &[]).unwrap();
        // Swap the kernel for another function.
        for (op, _) in &mut plan.ops {
            if let Op::Unary(f, _) = op {
                *f = Unary::Tanh;
            }
        }
        let err = plan.check(&m, 4, &[]).unwrap_err();
        assert!(err.contains("libtorch gives"), "{err}");
    }

    #[test]
    fn control_flow_and_extra_inputs_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let w = weights(&[2, 4], 10);
        let (_, graph) = module(
            dir.path(),
            "def forward(self, x):\n    if bool(x.sum() > 0):\n        return torch.linear(x, self.w, None)\n    return -torch.linear(x, self.w, None)\n",
            &[("w", &w)],
        );
        let err = Plan::compile(&graph, 2).unwrap_err();
        assert!(
            err.contains("not supported") || err.contains("blocks"),
            "{err}"
        );
        let (_, graph) = module(
            dir.path(),
            "def forward(self, x, y):\n    return x + y\n",
            &[("w", &w)],
        );
        let err = Plan::compile(&graph, 1).unwrap_err();
        assert!(err.contains("2 inputs"), "{err}");
    }

    #[test]
    fn broadcasting_follows_numpy() {
        let a = Array {
            shape: vec![2, 3],
            data: vec![1., 2., 3., 4., 5., 6.],
        };
        let col = Array {
            shape: vec![2, 1],
            data: vec![10., 20.],
        };
        let row = Array {
            shape: vec![3],
            data: vec![1., 0., -1.],
        };
        assert_eq!(
            broadcast(&a, &col, |x, y| x + y).unwrap().data,
            vec![11., 12., 13., 24., 25., 26.]
        );
        assert_eq!(
            broadcast(&a, &row, |x, y| x * y).unwrap().data,
            vec![1., 0., -3., 4., 0., -6.]
        );
        let bad = Array {
            shape: vec![4],
            data: vec![0.; 4],
        };
        assert!(broadcast(&a, &bad, |x, y| x + y).is_err());
    }
}
