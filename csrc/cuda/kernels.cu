// The fused CUDA kernels: one multi-tensor launch applies a per-element rule
// (csrc/rules/*.h, V = float) to every (param, grad, states...) group.
// Compiled by nvcc with CUDA headers only (no torch): see launch.h.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>

#include "launch.h"
#include "multi_tensor_apply.cuh"

namespace lossopt::cuda {
namespace {

using mta::AlignedVec;
using mta::kILP;

// Conversions between the parameter type and the float the rule computes in.
template <typename T>
__device__ __forceinline__ float to_float(T x);
template <>
__device__ __forceinline__ float to_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// The per-chunk work of one rule on parameters of type T: a functor for
// mta::multi_tensor_apply. Holds the device scalars and the host arguments;
// each thread builds the rule from them once. With kMaster the rule steps the
// float32 master weight (the last tensor of each group) and the parameter is
// written as its rounded copy.
template <typename T, typename Rule, typename Args, bool kMaster>
struct RuleFunctor {
  static constexpr int kStates = Rule::kStates;
  static constexpr int kMasterSlot = 2 + kStates;
  static constexpr int kDepth = 2 + kStates + (kMaster ? 1 : 0);
  // The rule takes a state pointer even when it has no state.
  static constexpr int kStateSlots = kStates > 0 ? kStates : 1;

  const double* scalars;  // device, float64; layout in rules/common.h
  int n_scalars;
  Args args;

  __device__ __forceinline__ void operator()(const mta::TensorListMetadata<kDepth>& meta) const {
    // A bad loss (flag 0) changes nothing.
    if (scalars[kValid] == 0.0) return;
    // Rounded to float first, as the foreach path rounds them.
    float sc[kMaxScalars];
#pragma unroll
    for (int k = 0; k < kMaxScalars; ++k) sc[k] = k < n_scalars ? static_cast<float>(scalars[k]) : 0.0f;
    const Rule rule(sc, args);
    const float inv_scale = sc[kInvGradScale];

    const mta::ChunkInfo c = mta::chunk_info(meta, blockIdx.x);
    T* __restrict__ p = mta::chunk_ptr<T>(meta, 0, c);
    const T* __restrict__ g = mta::chunk_ptr<T>(meta, 1, c);
    float* __restrict__ mw = kMaster ? mta::chunk_ptr<float>(meta, kMasterSlot, c) : nullptr;
    float* st[kStateSlots] = {};
    bool aligned = mta::is_vec_aligned<T>(p) && mta::is_vec_aligned<T>(g) &&
                   (!kMaster || mta::is_vec_aligned<float>(mw));
#pragma unroll
    for (int s = 0; s < kStates; ++s) {
      st[s] = mta::chunk_ptr<float>(meta, 2 + s, c);
      aligned = aligned && mta::is_vec_aligned<float>(st[s]);
    }
    const int n = c.n;

    if (aligned) {
      // Vector path: kILP consecutive elements per aligned load/store, then
      // the (< kILP) tail elements one per thread.
      const int n_vec = n / kILP;
      for (int v = threadIdx.x; v < n_vec; v += blockDim.x) {
        AlignedVec<T> pv;
        AlignedVec<float> mv;
        if constexpr (kMaster) {
          mv = reinterpret_cast<const AlignedVec<float>*>(mw)[v];
        } else {
          pv = reinterpret_cast<const AlignedVec<T>*>(p)[v];
        }
        const AlignedVec<T> gv = reinterpret_cast<const AlignedVec<T>*>(g)[v];
        AlignedVec<float> sv[kStateSlots];
#pragma unroll
        for (int s = 0; s < kStates; ++s) sv[s] = reinterpret_cast<const AlignedVec<float>*>(st[s])[v];
#pragma unroll
        for (int ii = 0; ii < kILP; ++ii) {
          float pf = kMaster ? mv.v[ii] : to_float(pv.v[ii]);
          const float gf = to_float(gv.v[ii]) * inv_scale;
          float sf[kStateSlots];
#pragma unroll
          for (int s = 0; s < kStates; ++s) sf[s] = sv[s].v[ii];
          rule(pf, gf, sf);
          pv.v[ii] = from_float<T>(pf);
          if constexpr (kMaster) mv.v[ii] = pf;
#pragma unroll
          for (int s = 0; s < kStates; ++s) sv[s].v[ii] = sf[s];
        }
        reinterpret_cast<AlignedVec<T>*>(p)[v] = pv;
        if constexpr (kMaster) reinterpret_cast<AlignedVec<float>*>(mw)[v] = mv;
#pragma unroll
        for (int s = 0; s < kStates; ++s) reinterpret_cast<AlignedVec<float>*>(st[s])[v] = sv[s];
      }
      const int i = n_vec * kILP + static_cast<int>(threadIdx.x);
      if (i < n) apply_one(rule, inv_scale, p, g, st, mw, i);
    } else {
      // Scalar path: kILP strided elements per thread per iteration (each
      // access coalesced across the warp), bounds-checked.
      for (int base = 0; base < n; base += blockDim.x * kILP) {
        float pr[kILP], gr[kILP], sr[kILP][kStateSlots];
#pragma unroll
        for (int ii = 0; ii < kILP; ++ii) {
          const int i = base + threadIdx.x + ii * blockDim.x;
          if (i < n) {
            pr[ii] = kMaster ? mw[i] : to_float(p[i]);
            gr[ii] = to_float(g[i]) * inv_scale;
#pragma unroll
            for (int s = 0; s < kStates; ++s) sr[ii][s] = st[s][i];
          }
        }
#pragma unroll
        for (int ii = 0; ii < kILP; ++ii) {
          const int i = base + threadIdx.x + ii * blockDim.x;
          if (i < n) {
            rule(pr[ii], gr[ii], sr[ii]);
            p[i] = from_float<T>(pr[ii]);
            if constexpr (kMaster) mw[i] = pr[ii];
#pragma unroll
            for (int s = 0; s < kStates; ++s) st[s][i] = sr[ii][s];
          }
        }
      }
    }
  }

  static __device__ __forceinline__ void apply_one(const Rule& rule, float inv_scale, T* p,
                                                   const T* g, float* const* st, float* mw, int i) {
    float pf = kMaster ? mw[i] : to_float(p[i]);
    const float gf = to_float(g[i]) * inv_scale;
    float sf[kStateSlots];
#pragma unroll
    for (int s = 0; s < kStates; ++s) sf[s] = st[s][i];
    rule(pf, gf, sf);
    p[i] = from_float<T>(pf);
    if constexpr (kMaster) mw[i] = pf;
#pragma unroll
    for (int s = 0; s < kStates; ++s) st[s][i] = sf[s];
  }
};

template <typename T, typename Rule, bool kMaster, typename Args>
void launch_rule(const TensorLists& lists, const Args& args, int n_scalars, const char* name) {
  using Functor = RuleFunctor<T, Rule, Args, kMaster>;
  constexpr int kDepth = Functor::kDepth;
  // Validate before the empty check, so that malformed lists always throw.
  mta::check_tensor_lists<kDepth>(lists.tensors, lists.numel, name);
  bool any = false;
  for (const int64_t n : lists.numel) any = any || n > 0;
  if (!any) return;
  if (lists.scalars == nullptr) {
    throw std::invalid_argument(std::string(name) + ": scalars is null");
  }
  mta::multi_tensor_apply<kDepth>(lists.tensors, lists.numel, lists.stream,
                                  Functor{lists.scalars, n_scalars, args}, name);
}

// ParamType -> T.
template <template <typename> class Rule, typename Args>
void dispatch(const TensorLists& lists, const Args& args, int n_scalars, const char* name) {
  // Master weights only come with float16 and bfloat16 parameters (checks.h).
  switch (lists.param_type) {
    case ParamType::kFloat32:
      return launch_rule<float, Rule<float>, false>(lists, args, n_scalars, name);
    case ParamType::kFloat16:
      return lists.master ? launch_rule<__half, Rule<float>, true>(lists, args, n_scalars, name)
                          : launch_rule<__half, Rule<float>, false>(lists, args, n_scalars, name);
    case ParamType::kBFloat16:
      return lists.master
                 ? launch_rule<__nv_bfloat16, Rule<float>, true>(lists, args, n_scalars, name)
                 : launch_rule<__nv_bfloat16, Rule<float>, false>(lists, args, n_scalars, name);
  }
  throw std::invalid_argument(std::string(name) + ": unknown parameter type");
}

}  // namespace

void adalo(const TensorLists& lists, const rules::AdaLoArgs& args) {
  dispatch<rules::AdaLo>(lists, args, rules::kAdaLoNumScalars, "lossopt adalo");
}

void adaml(const TensorLists& lists, const rules::AdamLArgs& args) {
  dispatch<rules::AdamL>(lists, args, rules::kAdamLNumScalars, "lossopt adaml");
}

void adaloss(const TensorLists& lists, const rules::AdaLossArgs& args, bool momentum) {
  if (momentum) {
    dispatch<rules::AdaLossMomentum>(lists, args, rules::kAdaLossNumScalars, "lossopt adaloss");
  } else {
    dispatch<rules::AdaLossPlain>(lists, args, rules::kAdaLossNumScalars, "lossopt adaloss");
  }
}

}  // namespace lossopt::cuda
