// What the rule headers share: the host/device qualifier and the few math
// functions a rule may call, so that one rule body serves the CUDA kernel
// (V = float) and the CPU kernel (V = float, double or at::vec::Vectorized).
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define LOSSOPT_HD __host__ __device__ __forceinline__
#else
#define LOSSOPT_HD inline
#endif

namespace lossopt {

// The device scalar vector every op reads: these first, then the rule's own
// (each rule header lists its layout from kRuleScalars on). The drivers apply
// both, so no rule knows about them:
//   kValid        0 when the loss was bad or the gradients overflowed: skip;
//   kInvGradScale 1 / torch.amp.GradScaler's scale (1 without a scaler): the
//                 drivers multiply each gradient by it before the rule sees it.
enum CommonScalar { kValid = 0, kInvGradScale = 1, kRuleScalars = 2 };

LOSSOPT_HD float vsqrt(float x) { return sqrtf(x); }
LOSSOPT_HD double vsqrt(double x) { return sqrt(x); }
// SIMD vector types (at::vec::Vectorized) bring their own sqrt().
template <typename V>
inline V vsqrt(const V& x) {
  return x.sqrt();
}

}  // namespace lossopt
