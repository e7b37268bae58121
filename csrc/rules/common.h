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

LOSSOPT_HD float vsqrt(float x) { return sqrtf(x); }
LOSSOPT_HD double vsqrt(double x) { return sqrt(x); }
// SIMD vector types (at::vec::Vectorized) bring their own sqrt().
template <typename V>
inline V vsqrt(const V& x) {
  return x.sqrt();
}

}  // namespace lossopt
