// The position of the running GPU thread (see mta::Position in mta_plan.h),
// read from CUDA's built-in indices where the functor asks for it. Shared by
// the kernels nvcc compiles (multi_tensor_apply.cuh) and those NVRTC compiles
// on first use (nvrtc_kernels.cu).
#pragma once

namespace lossopt::cuda::mta {

struct DevicePosition {
  __device__ __forceinline__ unsigned block() const { return blockIdx.x; }
  __device__ __forceinline__ unsigned thread() const { return threadIdx.x; }
  __device__ __forceinline__ unsigned block_dim() const { return blockDim.x; }
};

}  // namespace lossopt::cuda::mta
