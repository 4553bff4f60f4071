// What every C++ shim of this crate shares: exceptions stop at the C
// boundary and come back to Rust as a message (see src/shim.rs).

#pragma once

#include <cstddef>
#include <cstdio>
#include <exception>

namespace encore {

// Runs `body`: 0 if it returns, 1 with the exception's message written
// (NUL-terminated, at most `error_len` bytes) into `error` if it throws.
template <class F>
int guarded(char *error, size_t error_len, F &&body) {
  try {
    body();
    return 0;
  } catch (const std::exception &e) {
    std::snprintf(error, error_len, "%s", e.what());
  } catch (...) {
    std::snprintf(error, error_len, "unknown C++ exception");
  }
  return 1;
}

}  // namespace encore
