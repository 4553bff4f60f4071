// Loads a TorchScript module, freezes it (parameters and attributes folded
// into constants, submodule calls inlined: what `torch.jit.freeze` does in
// Python) and writes its `forward` graph out as plain text plus the float
// data of its tensor constants, so that Rust can compile a small graph into
// native code (see src/graph.rs for the format and the reader).

#include <torch/script.h>

#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "shim.h"

namespace {

// A token without spaces for a type or a name.
std::string token(std::string s) {
  for (auto &c : s) {
    if (c == ' ' || c == '\n' || c == '\t') c = '_';
  }
  return s.empty() ? "-" : s;
}

std::string ids(at::ArrayRef<torch::jit::Value *> values) {
  if (values.empty()) return "-";
  std::string out;
  for (size_t i = 0; i < values.size(); ++i) {
    if (i > 0) out += ',';
    out += std::to_string(values[i]->unique());
  }
  return out;
}

std::string dims(at::IntArrayRef sizes) {
  if (sizes.empty()) return "-";
  std::string out;
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (i > 0) out += ',';
    out += std::to_string(sizes[i]);
  }
  return out;
}

}  // namespace

extern "C" int encore_frozen_graph(const char *path, char **text_out, float **data_out,
                                   size_t *data_len, char *error, size_t error_len) {
  *text_out = nullptr;
  *data_out = nullptr;
  *data_len = 0;
  return encore::guarded(error, error_len, [&] {
    auto module = torch::jit::load(path, torch::kCPU);
    module.eval();
    auto frozen = torch::jit::freeze(module);
    auto graph = frozen.get_method("forward").graph();
    std::ostringstream text;
    text.precision(17);
    std::vector<float> data;
    auto inputs = graph->inputs();
    // The first input is the module itself.
    for (size_t i = 1; i < inputs.size(); ++i) {
      text << "in " << inputs[i]->unique() << '\n';
    }
    for (auto *node : graph->nodes()) {
      if (node->kind() == c10::prim::Constant) {
        auto id = node->output()->unique();
        auto value = torch::jit::toIValue(node->output());
        text << "const " << id << ' ';
        if (!value || value->isNone()) {
          text << "none";
        } else if (value->isInt()) {
          text << "int " << value->toInt();
        } else if (value->isDouble()) {
          text << "float " << value->toDouble();
        } else if (value->isBool()) {
          text << "bool " << (value->toBool() ? 1 : 0);
        } else if (value->isIntList()) {
          text << "ints " << dims(value->toIntVector());
        } else if (value->isTensor()) {
          auto tensor = value->toTensor();
          text << "tensor " << token(std::string(c10::toString(tensor.scalar_type()))) << ' '
               << dims(tensor.sizes());
          if (tensor.scalar_type() == at::kFloat) {
            auto flat = tensor.contiguous();
            auto *p = flat.data_ptr<float>();
            data.insert(data.end(), p, p + flat.numel());
          } else if ((tensor.scalar_type() == at::kLong || tensor.scalar_type() == at::kInt) &&
                     tensor.numel() <= 65536) {
            // Small integer tensors (offsets, bounds) go in the text.
            auto flat = tensor.to(at::kLong).contiguous();
            auto *p = flat.data_ptr<int64_t>();
            text << ' ' << dims(at::IntArrayRef(p, flat.numel()));
          }
        } else {
          text << "other " << token(value->tagKind());
        }
        text << '\n';
        continue;
      }
      text << "op " << node->kind().toQualString() << ' ' << ids(node->outputs()) << ' '
           << ids(node->inputs());
      if (!node->blocks().empty()) text << " blocks";
      text << '\n';
    }
    text << "ret " << ids(graph->outputs()) << '\n';
    auto s = text.str();
    auto *t = static_cast<char *>(std::malloc(s.size() + 1));
    auto *d = static_cast<float *>(std::malloc(std::max<size_t>(data.size(), 1) * sizeof(float)));
    if (t == nullptr || d == nullptr) {
      std::free(t);
      std::free(d);
      throw std::runtime_error("out of memory for the frozen graph");
    }
    std::memcpy(t, s.c_str(), s.size() + 1);
    std::memcpy(d, data.data(), data.size() * sizeof(float));
    *text_out = t;
    *data_out = d;
    *data_len = data.size();
  });
}

extern "C" void encore_frozen_graph_free(char *text, float *data) {
  std::free(text);
  std::free(data);
}
