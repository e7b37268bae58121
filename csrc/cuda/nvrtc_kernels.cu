// The CUDA kernels as NVRTC compiles them on first use, for machines whose
// torch has no matching nvcc beside it (lossopt_cuda/_nvrtc.py). The same
// device code as the nvcc build (multi_tensor_apply.cuh, advance.cu), each
// kernel under a plain C name from kernel_list.h, so that the host code finds
// it in the compiled module without C++ name mangling. NVRTC has no standard
// library; the headers included here need none under __CUDACC_RTC__.
#include "../advance.h"
#include "../rules/adalo.h"
#include "../rules/adaloss.h"
#include "../rules/adaml.h"
#include "device_position.h"
#include "kernel_list.h"
#include "mta_plan.h"
#include "rule_functor.h"

namespace lossopt::cuda {

#define LOSSOPT_UPDATE_KERNEL(name, T, Rule, Args, kMaster, S, kRoundParams)                     \
  extern "C" __global__ void __launch_bounds__(mta::kBlockSize) lossopt_##name(                 \
      const mta::TensorListMetadata<RuleFunctor<T, Rule, Args, kMaster, S, kRoundParams>::kDepth> \
          meta,                                                                                 \
      const RuleFunctor<T, Rule, Args, kMaster, S, kRoundParams> functor) {                     \
    functor(meta, mta::DevicePosition{});                                                       \
  }
LOSSOPT_UPDATE_KERNELS(LOSSOPT_UPDATE_KERNEL)

#define LOSSOPT_ADVANCE_KERNEL(name, Group) \
  extern "C" __global__ void lossopt_##name(AdvanceArgs args) { advance<Group>(args); }
LOSSOPT_ADVANCE_KERNELS(LOSSOPT_ADVANCE_KERNEL)

}  // namespace lossopt::cuda
