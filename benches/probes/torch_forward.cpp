// How long libtorch itself takes to run a TorchScript module's `forward`
// on a few rows, one intra-op thread, no server around it: the floor under
// the model server's CPU per request. Compares the interpreter as the model
// server calls it (no_grad) with what libtorch offers for the same call:
// a frozen module, optimize_for_inference, InferenceMode and the Static
// Runtime (torch/csrc/jit/runtime/static), and checks every variant returns
// the same values.
//
//   benches/probes/torch_forward.sh MODEL.pt [WIDTH]
#include <ATen/Parallel.h>
#include <torch/csrc/jit/passes/frozen_graph_optimizations.h>
#include <torch/csrc/jit/runtime/static/impl.h>
#include <torch/script.h>

#include <chrono>
#include <cstdlib>
#include <functional>
#include <iostream>

using Args = std::vector<c10::IValue>;
using Forward = std::function<c10::IValue(Args&)>;

// Mean microseconds per call over `n` calls, after a warm-up.
static double time_us(const Forward& forward, Args& args, int n = 20000) {
  for (int i = 0; i < 2000; i++) forward(args);
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < n; i++) forward(args);
  std::chrono::duration<double, std::micro> took = std::chrono::steady_clock::now() - start;
  return took.count() / n;
}

// Largest absolute difference between two outputs (a tensor or a tuple).
static double max_diff(const c10::IValue& a, const c10::IValue& b) {
  if (a.isTensor()) return (a.toTensor() - b.toTensor()).abs().max().item<double>();
  double worst = 0;
  auto x = a.toTuple()->elements(), y = b.toTuple()->elements();
  for (size_t i = 0; i < x.size(); i++) worst = std::max(worst, max_diff(x[i], y[i]));
  return worst;
}

static int probe(const char* path, int64_t width);

int main(int argc, char** argv) {
  const int64_t width = argc > 2 ? std::atoll(argv[2]) : 32;
  if (argc < 2 || width <= 0) {
    std::cerr << "usage: torch_forward MODEL.pt [WIDTH > 0]\n";
    return 2;
  }
  try {
    return probe(argv[1], width);
  } catch (const c10::Error& e) {
    // libtorch reports a missing file, a non-TorchScript file or inputs of
    // the wrong width by throwing; say which instead of aborting.
    std::cerr << "torch_forward " << argv[1] << " (width " << width << "): " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "torch_forward " << argv[1] << " (width " << width << "): " << e.what() << "\n";
    return 1;
  }
}

static int probe(const char* path, int64_t width) {
  at::set_num_threads(1);
  torch::NoGradGuard no_grad;
  auto module = torch::jit::load(path);
  module.eval();
  auto frozen = torch::jit::freeze(module);
  auto optimized = torch::jit::optimize_for_inference(frozen);
  torch::jit::StaticModule static_module(module);
  torch::jit::StaticRuntime static_runtime(static_module);

  std::vector<std::pair<const char*, Forward>> variants = {
      {"interpreter (as served)", [&](Args& a) { return module.forward(a); }},
      {"frozen", [&](Args& a) { return frozen.forward(a); }},
      {"optimize_for_inference", [&](Args& a) { return optimized.forward(a); }},
      {"interpreter + InferenceMode",
       [&](Args& a) {
         c10::InferenceMode inference;
         return module.forward(a);
       }},
      {"static runtime", [&](Args& a) { return static_runtime(a, {}); }},
  };
  for (int64_t rows : {1, 4, 64}) {
    Args args{torch::randn({rows, width})};
    auto expected = module.forward(args);
    for (auto& [name, forward] : variants) {
      double diff = max_diff(expected, forward(args));
      if (diff > 1e-5) {
        std::cerr << name << ": outputs differ by " << diff << "\n";
        return 1;
      }
      std::cout << "{\"rows\": " << rows << ", \"variant\": \"" << name
                << "\", \"us_per_forward\": " << time_us(forward, args) << "}\n";
    }
  }
  return 0;
}
