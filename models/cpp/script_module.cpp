// Builds a TorchScript module from TorchScript source and named tensors, and
// saves it: what `torch.jit.script` does in Python, without Python.
//
// tch exposes tracing only, which bakes integers such as top-k's k into the
// graph and cannot return tuples; a scripted `forward` can do both. Called
// from Rust through `encore_models::script` (see script.rs).

#include <torch/script.h>

#include <string>

#include "shim.h"

extern "C" int encore_script_module_save(const char *type_name, const char *source,
                                         const char *const *names, void *const *tensors,
                                         int count, const char *path, char *error,
                                         size_t error_len) {
  return encore::guarded(error, error_len, [&] {
    torch::jit::Module module(type_name);
    for (int i = 0; i < count; ++i) {
      const auto &tensor = *static_cast<const torch::Tensor *>(tensors[i]);
      module.register_buffer(names[i], tensor.detach().clone());
    }
    module.define(source);
    module.eval();
    module.save(path);
  });
}
