// The advance ops on the GPU: advance<Group> (../advance.h) in one thread, so
// the loss, the scaler's flags and the group state never leave the device and
// the step can be captured in a CUDA graph. CUDA headers only (see launch.h).
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "launch.h"

namespace lossopt::cuda {
namespace {

template <typename Group>
__global__ void advance_kernel(AdvanceArgs args) {
  advance<Group>(args);
}

}  // namespace

template <typename Group>
void launch_advance(const AdvanceArgs& args, cudaStream_t stream) {
  advance_kernel<Group><<<1, 1, 0, stream>>>(args);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string(Group::kOp) + ": kernel launch failed: " +
                             cudaGetErrorString(err));
  }
}

template void launch_advance<rules::AdaLoGroup>(const AdvanceArgs&, cudaStream_t);
template void launch_advance<rules::AdamLGroup>(const AdvanceArgs&, cudaStream_t);
template void launch_advance<rules::AdaLossGroup>(const AdvanceArgs&, cudaStream_t);

}  // namespace lossopt::cuda
