// A dropout mask filled in parallel from a counter-based generator.
//
// ATen's CPU dropout draws its mask with `bernoulli_`, which on non-Intel
// CPUs runs serially, one mt19937 draw per element under the generator's
// lock: about a tenth of a churn training step, while the other intra-op
// threads wait. Here one 64-bit seed is drawn from the default CPU generator
// (so `manual_seed` still makes training reproducible), and element pair i
// takes the splitmix64 output for state seed + i·γ: any element can be
// computed on its own, so the fill splits across threads and the mask does
// not depend on how it was split. Called from Rust through
// `encore_models::dropout` (src/dropout.rs).

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <mutex>

#include "shim.h"

namespace {
constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ULL;

inline uint64_t splitmix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}
}  // namespace

// Fills `mask` (a contiguous float CPU tensor) with 0 where an element is
// dropped (probability p) and 1 / (1 - p) where it is kept.
extern "C" int encore_dropout_mask(void *mask, double p, char *error, size_t error_len) {
  return encore::guarded(error, error_len, [&] {
    auto &m = *static_cast<at::Tensor *>(mask);
    TORCH_CHECK(m.device().is_cpu() && m.scalar_type() == at::kFloat && m.is_contiguous(),
                "dropout mask: wants a contiguous float CPU tensor");
    TORCH_CHECK(p >= 0.0 && p < 1.0, "dropout probability ", p, " is not in [0, 1)");
    uint64_t seed;
    {
      auto generator = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(generator.mutex());
      seed = generator.get<at::CPUGeneratorImpl>()->random64();
    }
    // Kept when a 32-bit draw is at least p · 2³².
    const auto threshold = static_cast<uint32_t>(std::min(p * 4294967296.0, 4294967295.0));
    const float keep = static_cast<float>(1.0 / (1.0 - p));
    float *out = m.data_ptr<float>();
    const int64_t n = m.numel();
    at::parallel_for(0, (n + 1) / 2, 8192, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const uint64_t r = splitmix64(seed + static_cast<uint64_t>(i + 1) * kGamma);
        out[2 * i] = static_cast<uint32_t>(r) >= threshold ? keep : 0.0f;
        if (2 * i + 1 < n) {
          out[2 * i + 1] = static_cast<uint32_t>(r >> 32) >= threshold ? keep : 0.0f;
        }
      }
    });
  });
}
