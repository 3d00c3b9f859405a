// Host-side helpers shared by the CUDA kernel files (no torch headers: compile-checked by nvcc on CI).
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace mkd_fast {
namespace cuda_host {

// A CUDA runtime error as a C++ exception (the torch binding turns it into a Python RuntimeError).
[[noreturn]] inline void throw_cuda(const std::string& what, cudaError_t err) {
  throw std::runtime_error(what + ": " + cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
}

// Makes `device` current for the scope of a launch and restores the caller's device afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    cudaError_t err = cudaGetDevice(&prev_);
    if (err != cudaSuccess) throw_cuda("cudaGetDevice", err);
    if (prev_ != device) {
      err = cudaSetDevice(device);
      if (err != cudaSuccess) throw_cuda("cudaSetDevice", err);
      changed_ = true;
    }
  }
  ~DeviceGuard() {
    if (changed_) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
  bool changed_ = false;
};

}  // namespace cuda_host
}  // namespace mkd_fast
