//! Dropout whose CPU mask is filled in parallel.
//!
//! `Tensor::dropout` on the CPU draws its mask with ATen's `bernoulli_`,
//! which (outside Intel CPUs with MKL's generator) runs on one thread, one
//! mt19937 draw per element, while the other intra-op threads spin: about a
//! tenth of a churn training step. [`dropout`] computes the same thing —
//! each element zeroed with probability `p`, the rest scaled by
//! `1 / (1 - p)`, gradients through the same mask — with the mask from a
//! counter-based generator (`cpp/dropout.cpp`) seeded by one draw from
//! libtorch's default generator, so `tch::manual_seed` still fixes the
//! masks. The masks are not the ones ATen would draw. On other devices (and
//! should the shim refuse) it is `Tensor::dropout`.

use std::ffi::{c_char, c_int, c_void};

use tch::{Device, Kind, Tensor};

use crate::shim;

unsafe extern "C" {
    fn encore_dropout_mask(
        mask: *mut c_void,
        p: f64,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
}

/// `x` with each element zeroed with probability `p` and the others scaled
/// by `1 / (1 - p)` when `train`; `x` itself otherwise.
pub fn dropout(x: &Tensor, p: f64, train: bool) -> Tensor {
    if !train || p == 0.0 {
        return x.shallow_clone();
    }
    if x.device() == Device::Cpu
        && x.kind() == Kind::Float
        && let Ok(mask) = mask(&x.size(), p)
    {
        return x * mask;
    }
    x.dropout(p, train)
}

/// A float CPU tensor of `shape` holding 0 (probability `p`) or `1 / (1 - p)`.
fn mask(shape: &[i64], p: f64) -> std::result::Result<Tensor, String> {
    let mask = Tensor::empty(shape, (Kind::Float, Device::Cpu));
    // SAFETY: `mask` is a live, contiguous float CPU tensor that the shim
    // fills in place; the error buffer outlives the call.
    shim::call(|error, len| unsafe {
        encore_dropout_mask(mask.as_ptr() as *mut c_void, p, error, len)
    })?;
    Ok(mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ones(n: i64) -> Tensor {
        Tensor::ones([n], (Kind::Float, Device::Cpu))
    }

    fn values(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
    }

    #[test]
    fn keeps_one_minus_p_scaled_and_drops_the_rest() {
        let _rng = crate::serial_rng();
        // An odd count, so the last element of the last pair is covered.
        let n = 1_000_003;
        for p in [0.1, 0.5, 0.9] {
            let out = values(&dropout(&ones(n), p, true));
            let scale = (1.0 / (1.0 - p)) as f32;
            assert!(
                out.iter().all(|&v| v == 0.0 || v == scale),
                "p = {p}: a value other than 0 or {scale}"
            );
            let kept = out.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
            assert!((kept - (1.0 - p)).abs() < 0.003, "p = {p}: kept {kept}");
            // Neighbours (the two halves of one draw, and across draws) are
            // independent: both kept as often as (1 - p)².
            let both = out
                .windows(2)
                .filter(|w| w[0] != 0.0 && w[1] != 0.0)
                .count() as f64
                / (n - 1) as f64;
            assert!(
                (both - (1.0 - p) * (1.0 - p)).abs() < 0.003,
                "p = {p}: neighbours both kept {both}"
            );
        }
    }

    #[test]
    fn seeded_by_libtorch_and_the_same_on_any_thread_count() {
        let _rng = crate::serial_rng();
        let x = ones(100_001);
        tch::manual_seed(7);
        let first = values(&dropout(&x, 0.3, true));
        let next = values(&dropout(&x, 0.3, true));
        assert_ne!(first, next, "consecutive masks are equal");
        let threads = tch::get_num_threads();
        tch::set_num_threads(1);
        tch::manual_seed(7);
        let serial = values(&dropout(&x, 0.3, true));
        tch::set_num_threads(threads);
        assert_eq!(first, serial, "the mask depends on the thread count");
    }

    #[test]
    fn gradient_goes_through_the_mask_and_eval_is_identity() {
        let _rng = crate::serial_rng();
        let x = Tensor::randn([64, 33], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let y = dropout(&x, 0.25, true);
        y.sum(Kind::Float).backward();
        let kept = y.ne(0.0).to_kind(Kind::Float);
        let expected = kept / 0.75;
        assert!(
            x.grad().allclose(&expected, 1e-6, 1e-6, false),
            "gradient is not the mask"
        );
        assert!(y.allclose(&(&x * &expected), 1e-6, 1e-6, false));
        assert_eq!(values(&dropout(&x, 0.25, false)), values(&x));
        assert_eq!(values(&dropout(&x, 0.0, true)), values(&x));
    }
}
