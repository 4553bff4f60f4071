//! AdamW with one fused kernel per step.
//!
//! tch's `nn::AdamW` is libtorch's C++-frontend optimiser: about ten ATen
//! calls per parameter per step (decay, two moment updates, a square root,
//! a division...), each a separate pass over memory, plus a zero-fill of
//! every gradient before the next backward pass. [`AdamW`] does the same
//! arithmetic — decoupled weight decay, bias-corrected moments, the
//! defaults of `torch.optim.AdamW` — in `at::_fused_adamw_`, the kernel
//! behind `torch.optim.AdamW(fused=True)`: one pass over each parameter,
//! its gradient and its two moments, for every parameter at once (CPU and
//! CUDA). Gradients are reset to none rather than zero-filled, as
//! `zero_grad()` does in Python. The C++ side is `cpp/fused_adamw.cpp`.
//!
//! As in Python, a parameter that got no gradient in a step (not used by
//! that batch's graph) is left alone: no decay, and its step count stays.

use std::ffi::{c_char, c_int, c_void};

use tch::{Kind, Tensor, nn};

use crate::error::{Error, Result};
use crate::shim::{self, c_count};

unsafe extern "C" {
    fn encore_fused_adamw_step(
        params: *const *mut c_void,
        grads: *const *mut c_void,
        exp_avgs: *const *mut c_void,
        exp_avg_sqs: *const *mut c_void,
        steps: *const *mut c_void,
        count: c_int,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
    fn encore_grads_to_none(params: *const *mut c_void, count: c_int);
}

/// One parameter and its optimiser state.
struct Slot {
    param: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// Steps taken (a float scalar on the parameter's device, as the
    /// fused kernel wants it).
    step: Tensor,
}

/// AdamW over the trainable variables of a [`nn::VarStore`], fused.
pub struct AdamW {
    slots: Vec<Slot>,
    lr: f64,
    beta1: f64,
    beta2: f64,
    weight_decay: f64,
    eps: f64,
}

fn pointers<'a>(tensors: impl Iterator<Item = &'a Tensor>) -> Vec<*mut c_void> {
    tensors.map(|t| t.as_ptr() as *mut c_void).collect()
}

impl AdamW {
    /// AdamW with `torch.optim.AdamW`'s betas (0.9, 0.999) and eps (1e-8)
    /// over `vs`'s trainable variables as they are now.
    pub fn new(vs: &nn::VarStore, lr: f64, weight_decay: f64) -> Result<Self> {
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        if !(ok(lr) && ok(weight_decay)) {
            return Err(Error::InvalidConfig(format!(
                "AdamW: lr {lr} and weight decay {weight_decay} must be finite and >= 0"
            )));
        }
        let slots = tch::no_grad(|| {
            vs.trainable_variables()
                .into_iter()
                .map(|param| Slot {
                    exp_avg: param.zeros_like(),
                    exp_avg_sq: param.zeros_like(),
                    step: Tensor::zeros([], (Kind::Float, param.device())),
                    param,
                })
                .collect()
        });
        Ok(AdamW {
            slots,
            lr,
            beta1: 0.9,
            beta2: 0.999,
            weight_decay,
            eps: 1e-8,
        })
    }

    /// The learning rate.
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// Resets the gradients, back-propagates `loss` and takes one step.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        let params = pointers(self.slots.iter().map(|s| &s.param));
        let count = c_count(params.len(), "parameters")?;
        // SAFETY: the pointers are the slots' tensors (tch's C_tensor is an
        // at::Tensor*), alive for the call; the shim resets their gradients.
        unsafe { encore_grads_to_none(params.as_ptr(), count) };
        loss.f_backward()?;
        self.step()
    }

    /// One step with the gradients as they are.
    pub fn step(&mut self) -> Result<()> {
        let mut grads = Vec::with_capacity(self.slots.len());
        let mut live = Vec::with_capacity(self.slots.len());
        for slot in &self.slots {
            let grad = slot.param.grad();
            if grad.defined() {
                grads.push(grad);
                live.push(slot);
            }
        }
        if live.is_empty() {
            return Ok(());
        }
        let params = pointers(live.iter().map(|s| &s.param));
        let grads = pointers(grads.iter());
        let exp_avgs = pointers(live.iter().map(|s| &s.exp_avg));
        let exp_avg_sqs = pointers(live.iter().map(|s| &s.exp_avg_sq));
        let steps = pointers(live.iter().map(|s| &s.step));
        let count = c_count(params.len(), "parameters")?;
        shim::call(|error, error_len| {
            // SAFETY: five arrays of `count` valid at::Tensor pointers that
            // outlive the call (the slots and `grads` above); the shim
            // updates the tensors in place and writes at most `error_len`
            // bytes, NUL-terminated, into `error`.
            unsafe {
                encore_fused_adamw_step(
                    params.as_ptr(),
                    grads.as_ptr(),
                    exp_avgs.as_ptr(),
                    exp_avg_sqs.as_ptr(),
                    steps.as_ptr(),
                    count,
                    self.lr,
                    self.beta1,
                    self.beta2,
                    self.weight_decay,
                    self.eps,
                    error,
                    error_len,
                )
            }
        })
        .map_err(|message| {
            Error::Torch(tch::TchError::Torch(format!("fused AdamW step: {message}")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, nn::Module, nn::OptimizerConfig};

    /// A small network with an embedding (sparse use: some rows get no
    /// gradient in a step, but the table does) and two layers.
    fn net(vs: &nn::VarStore) -> impl Fn(&Tensor, &Tensor) -> Tensor + use<> {
        let root = vs.root();
        let emb = nn::embedding(&root / "emb", 50, 8, Default::default());
        let l1 = nn::linear(&root / "l1", 16, 32, Default::default());
        let l2 = nn::linear(&root / "l2", 32, 1, Default::default());
        move |x: &Tensor, ids: &Tensor| {
            let h = Tensor::cat(&[x.shallow_clone(), emb.forward(ids)], 1);
            l2.forward(&l1.forward(&h).relu())
        }
    }

    fn batch(seed: i64) -> (Tensor, Tensor, Tensor) {
        tch::manual_seed(seed);
        let x = Tensor::randn([64, 8], (Kind::Float, Device::Cpu));
        let ids = Tensor::randint(50, [64], (Kind::Int64, Device::Cpu));
        let y = x
            .sum_dim_intlist(1, true, Kind::Float)
            .gt(0.0)
            .to_kind(Kind::Float);
        (x, ids, y)
    }

    #[test]
    fn fused_steps_match_libtorchs_adamw() {
        let _rng = crate::serial_rng();
        let (lr, wd) = (1e-2, 1e-2);
        tch::manual_seed(3);
        let vs_a = nn::VarStore::new(Device::Cpu);
        let fa = net(&vs_a);
        let mut vs_b = nn::VarStore::new(Device::Cpu);
        let fb = net(&vs_b);
        vs_b.copy(&vs_a).unwrap();
        let mut reference = nn::AdamW {
            wd,
            ..Default::default()
        }
        .build(&vs_a, lr)
        .unwrap();
        let mut fused = AdamW::new(&vs_b, lr, wd).unwrap();
        for step in 0..20 {
            let (x, ids, y) = batch(100 + step);
            let loss = |f: &dyn Fn(&Tensor, &Tensor) -> Tensor| {
                f(&x, &ids).binary_cross_entropy_with_logits::<Tensor>(
                    &y,
                    None,
                    None,
                    tch::Reduction::Mean,
                )
            };
            reference.backward_step(&loss(&fa));
            fused.backward_step(&loss(&fb)).unwrap();
        }
        let a = vs_a.variables();
        let b = vs_b.variables();
        assert_eq!(a.len(), 5);
        for (name, va) in &a {
            let diff = (va - &b[name]).abs().max().double_value(&[]);
            let moved = (va - &Tensor::zeros_like(va)).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "{name}: differs by {diff}");
            assert!(moved > 0.0, "{name} never moved");
        }
    }

    #[test]
    fn parameters_without_a_gradient_are_left_alone() {
        let _rng = crate::serial_rng();
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let used = root.var("used", &[4], nn::Init::Const(1.0));
        let unused = root.var("unused", &[4], nn::Init::Const(1.0));
        let mut opt = AdamW::new(&vs, 0.1, 0.5).unwrap();
        opt.backward_step(&(&used * 2.0).sum(Kind::Float)).unwrap();
        assert!(used.double_value(&[0]) < 1.0);
        assert_eq!(unused.double_value(&[0]), 1.0);
        assert!(AdamW::new(&vs, f64::NAN, 0.0).is_err());
        assert!(AdamW::new(&vs, 0.1, -1.0).is_err());
    }
}
