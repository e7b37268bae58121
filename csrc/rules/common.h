// What the rule headers share: the host/device qualifier and the few math
// functions a rule may call, so that one rule body serves the CUDA kernel
// (V = float) and the CPU kernel (V = float, double or at::vec::Vectorized).
#pragma once

#if defined(__CUDACC_RTC__)
// NVRTC (the build on first use of the CUDA kernels) has no C++ standard
// library: the fixed-width integers the device code uses. Its math functions
// (sqrt, isfinite, ...) are built in.
using int64_t = long long;
using uint64_t = unsigned long long;
using uint32_t = unsigned int;
using uint16_t = unsigned short;
using uintptr_t = unsigned long long;
#else
#include <cmath>
#include <cstdint>
#endif

// LOSSOPT_HD marks what the GPU and the host both run: the rules, and the
// kernels' per-thread bodies, which the host test of the kernels
// (tests/cpp/) runs on the CPU. LOSSOPT_UNROLL is nvcc's `#pragma unroll`
// (host compilers would warn about it).
#if defined(__CUDACC__)
#define LOSSOPT_HD __host__ __device__ __forceinline__
#define LOSSOPT_UNROLL _Pragma("unroll")
#else
#define LOSSOPT_HD inline
#define LOSSOPT_UNROLL
#endif

namespace lossopt {

// The device scalar vector every op reads: these first, then the rule's own
// (each rule header lists its layout from kRuleScalars on). The drivers apply
// both, so no rule knows about them:
//   kValid        0 when the loss was bad or the gradients overflowed: skip;
//   kInvGradScale 1 / torch.amp.GradScaler's scale (1 without a scaler): the
//                 drivers multiply each gradient by it before the rule sees it.
enum CommonScalar { kValid = 0, kInvGradScale = 1, kRuleScalars = 2 };
// The most scalars any rule's vector holds (the drivers size arrays by it).
constexpr int kMaxScalars = 8;

// Each rule also says how the loss advances its per-group scalar state (a few
// 0-d tensors: AdaLo's loss EMA, AdamL's step count and first gap, AdaLoss's
// b^2) and fills the scalar vector from it, in double precision, mirroring the
// Python in lossopt_cuda/<rule>.py operation for operation (equal to the bit
// but where torch's pow or nvcc's fused multiply-adds round otherwise). The
// host calls it on the CPU, a one-thread kernel on the GPU (csrc/advance.h
// drives both).
constexpr int kMaxGroupState = 2;
constexpr int kMaxHyper = 8;

LOSSOPT_HD bool is_finite(double x) {
#if defined(__CUDA_ARCH__)
  return isfinite(x);
#else
  return std::isfinite(x);
#endif
}

// torch.clamp_min: NaN stays NaN.
LOSSOPT_HD double clamp_min(double x, double low) { return x < low ? low : x; }

LOSSOPT_HD float vsqrt(float x) { return sqrtf(x); }
LOSSOPT_HD double vsqrt(double x) { return sqrt(x); }
#if !defined(__CUDACC_RTC__)
// SIMD vector types (at::vec::Vectorized, CPU only) bring their own sqrt().
template <typename V>
inline V vsqrt(const V& x) {
  return x.sqrt();
}
#endif

}  // namespace lossopt
