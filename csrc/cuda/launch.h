// The plain-C++ boundary between the torch-facing op code (ops_cuda.cpp,
// compiled by the host compiler with torch headers) and the kernels
// (kernels.cu, compiled by nvcc with no torch headers, which keeps nvcc fast).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "../advance.h"
#include "../rules/adalo.h"
#include "../rules/adaloss.h"
#include "../rules/adaml.h"

namespace lossopt::cuda {

enum class ParamType { kFloat32, kFloat16, kBFloat16 };

// Stochastic rounding of one update (../rounding.h): off unless `step` is
// set. bf16_states: the states are bfloat16, written rounded; params: the
// bfloat16 parameters are written rounded (never with master weights). step:
// device memory, the group's int64 count of valid steps, read by the kernel
// (so a CUDA graph replays with the count of its replay); tensor_ids: one per
// tensor group, its number in the optimizer's order (the hash's tensor).
struct RoundingLists {
  const int64_t* step = nullptr;
  uint64_t seed = 0;
  bool bf16_states = false;
  bool params = false;
  std::vector<uint32_t> tensor_ids;  // [n_tensors] when step is set
};

// One multi-tensor update. tensors[i] holds the addresses of the parameter,
// its gradient, its state tensors (float32, or bfloat16 with
// rounding.bf16_states) and, with master weights, its float32 master copy, in
// that order; all numel[i] elements of each are contiguous. scalars: float64
// device memory with the rule's loss-derived scalars; element 0 is the
// validity flag (0: skip).
struct TensorLists {
  ParamType param_type;
  bool master;  // each row ends with the parameter's float32 master weight
  std::vector<std::vector<void*>> tensors;  // [n_tensors][2 + kStates (+ 1)]
  std::vector<int64_t> numel;               // [n_tensors]
  const double* scalars;
  cudaStream_t stream;
  RoundingLists rounding;
};

// Each throws std::runtime_error on a launch failure.
void adalo(const TensorLists& lists, const rules::AdaLoArgs& args);
void adaml(const TensorLists& lists, const rules::AdamLArgs& args);
void adaloss(const TensorLists& lists, const rules::AdaLossArgs& args, bool momentum);

// advance<Group>(args) in a one-thread kernel on `stream` (advance.cu); args
// holds device addresses.
template <typename Group>
void launch_advance(const AdvanceArgs& args, cudaStream_t stream);

// Only in the build whose kernels NVRTC compiled (nvrtc_launch.cpp): the cubin
// at `path` serves the GPUs of compute capability arch / 10 . arch % 10 from
// now on. Throws std::runtime_error if it cannot be read or loaded.
void nvrtc_add_cubin(int arch, const std::string& path);

}  // namespace lossopt::cuda
