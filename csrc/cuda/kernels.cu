// The fused CUDA kernels: one multi-tensor launch applies a per-element rule
// (csrc/rules/*.h, V = float) to every (param, grad, states...) group. What
// the kernel does is in rule_functor.h and updates.h, shared with the host
// test of the kernels; this file only binds them to the GPU launch.
// Compiled by nvcc with CUDA headers only (no torch): see launch.h.
#include "launch.h"
#include "multi_tensor_apply.cuh"
#include "updates.h"

namespace lossopt::cuda {

void adalo(const TensorLists& lists, const rules::AdaLoArgs& args) {
  updates::adalo(lists, args, mta::DeviceLaunch{lists.stream, "lossopt adalo"});
}

void adaml(const TensorLists& lists, const rules::AdamLArgs& args) {
  updates::adaml(lists, args, mta::DeviceLaunch{lists.stream, "lossopt adaml"});
}

void adaloss(const TensorLists& lists, const rules::AdaLossArgs& args, bool momentum) {
  updates::adaloss(lists, args, momentum, mta::DeviceLaunch{lists.stream, "lossopt adaloss"});
}

}  // namespace lossopt::cuda
