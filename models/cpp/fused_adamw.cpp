// One AdamW step over every parameter in a single fused ATen kernel
// (`at::_fused_adamw_`, what `torch.optim.AdamW(fused=True)` calls), and
// gradients reset to none before a backward pass. tch binds neither: its
// AdamW is the C++ frontend's, a loop of about ten ATen calls per parameter,
// and its zero_grad fills every gradient with zeros. Called from Rust
// through `encore_models::optim` (see optim.rs).

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <vector>

#include "shim.h"

namespace {
std::vector<at::Tensor> tensors(void *const *ptrs, int count) {
  std::vector<at::Tensor> out;
  out.reserve(count);
  for (int i = 0; i < count; ++i) {
    out.push_back(*static_cast<const at::Tensor *>(ptrs[i]));
  }
  return out;
}
}  // namespace

extern "C" int encore_fused_adamw_step(void *const *params, void *const *grads,
                                       void *const *exp_avgs, void *const *exp_avg_sqs,
                                       void *const *steps, int count, double lr,
                                       double beta1, double beta2, double weight_decay,
                                       double eps, char *error, size_t error_len) {
  return encore::guarded(error, error_len, [&] {
    at::NoGradGuard no_grad;
    auto p = tensors(params, count);
    auto g = tensors(grads, count);
    auto m = tensors(exp_avgs, count);
    auto v = tensors(exp_avg_sqs, count);
    auto s = tensors(steps, count);
    at::_foreach_add_(s, 1);
    at::_fused_adamw_(p, g, m, v, /*max_exp_avg_sqs=*/{}, s, lr, beta1, beta2, weight_decay,
                      eps, /*amsgrad=*/false, /*maximize=*/false);
  });
}

extern "C" void encore_grads_to_none(void *const *params, int count) {
  for (int i = 0; i < count; ++i) {
    static_cast<at::Tensor *>(params[i])->mutable_grad().reset();
  }
}
