// The GPU half of a multi-tensor launch: the __global__ kernel, which only
// hands its block and thread to the functor, and the launch that mta_plan.h's
// plan calls for each full metadata. Everything a thread does lives in the
// functor (rule_functor.h), which the host test of the kernels runs on the
// CPU with the same plan; this file is the only part it cannot run.
// CUDA headers only (no torch), so nvcc stays fast.
#pragma once

#include <stdexcept>
#include <string>

#include <cuda_runtime.h>

#include "device_position.h"
#include "mta_plan.h"

namespace lossopt::cuda::mta {

// The metadata is passed by value as the kernel argument; the functor reads it
// by const reference (no copy, indexed reads from the parameter space).
template <int Depth, typename Functor>
__global__ void __launch_bounds__(kBlockSize)
    multi_tensor_apply_kernel(const TensorListMetadata<Depth> meta, const Functor functor) {
  functor(meta, DevicePosition{});
}

inline void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": CUDA kernel launch failed: " +
                             cudaGetErrorString(err));
  }
}

// The `launch` of multi_tensor_apply (mta_plan.h) on a CUDA stream: one block
// of kBlockSize threads per chunk. Throws std::runtime_error if a launch fails.
struct DeviceLaunch {
  cudaStream_t stream;
  const char* name;

  template <int Depth, typename Functor>
  void operator()(const TensorListMetadata<Depth>& meta, int n_blocks,
                  const Functor& functor) const {
    multi_tensor_apply_kernel<Depth, Functor><<<n_blocks, kBlockSize, 0, stream>>>(meta, functor);
    check_launch(name);
  }
};

}  // namespace lossopt::cuda::mta
