// What one thread of the fused update does: apply a per-element rule
// (csrc/rules/*.h, V = float) to its share of one block's chunk. A
// __host__ __device__ function that is given its position (block, thread,
// block size; mta::Position): the CUDA kernel (multi_tensor_apply.cuh) gives
// blockIdx.x, threadIdx.x and blockDim.x, and the host test of the kernels
// (tests/cpp/) runs the very same body for every block and thread on the CPU.
// CUDA's half and bfloat16 headers only; their conversions run on both sides.
#pragma once

#include "../rounding.h"
#include "../rules/common.h"
#include "mta_plan.h"

#if defined(LOSSOPT_NVRTC_HOST)
// The host side of the NVRTC build (nvrtc_launch.cpp) launches the kernels but
// runs no element code, and torch's CUDA wheels lack the headers cuda_fp16.h
// needs on the host (CCCL's nv/target): there the 16-bit types are stand-ins
// of the same size, which only name the kernels.
namespace lossopt::cuda {
struct Half { unsigned short bits; };
struct BFloat16 { unsigned short bits; };
inline BFloat16 bfloat16_from_bits(uint16_t bits) { return BFloat16{bits}; }
}  // namespace lossopt::cuda
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
namespace lossopt::cuda {
using Half = __half;
using BFloat16 = __nv_bfloat16;
}  // namespace lossopt::cuda
#endif

namespace lossopt::cuda {

// Conversions between the parameter type and the float the rule computes in
// (the 16-bit ones only where the types are CUDA's).
template <typename T>
LOSSOPT_HD float to_float(T x);
template <typename T>
LOSSOPT_HD T from_float(float x);
template <>
LOSSOPT_HD float to_float<float>(float x) { return x; }
template <>
LOSSOPT_HD float from_float<float>(float x) { return x; }
#if !defined(LOSSOPT_NVRTC_HOST)
template <>
LOSSOPT_HD float to_float<__half>(__half x) { return __half2float(x); }
template <>
LOSSOPT_HD float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }
template <>
LOSSOPT_HD __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
LOSSOPT_HD __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
// A bfloat16 from its bits (a stochastically rounded parameter).
LOSSOPT_HD __nv_bfloat16 bfloat16_from_bits(uint16_t bits) {
  __nv_bfloat16_raw raw;
  raw.x = bits;
  return __nv_bfloat16(raw);
}
#endif

// State storage: float32, or bfloat16 held as its bits (uint16_t), widened
// exactly and written stochastically rounded (../rounding.h).
LOSSOPT_HD float state_to_float(float x) { return x; }
LOSSOPT_HD float state_to_float(uint16_t bits) { return rounding::bf16_to_float(bits); }

// The per-chunk work of one rule on parameters of type T: the functor of
// mta::multi_tensor_apply. Holds the device scalars and the host arguments;
// each thread builds the rule from them once. With kMaster the rule steps the
// float32 master weight (the last tensor of each group) and the parameter is
// written as its rounded copy.
//
// Stochastic rounding (../rounding.h): S is the states' storage, float or
// bfloat16 bits (uint16_t), and kRoundParams writes bfloat16 parameters
// rounded stochastically (T = BFloat16, no master). Then each thread reads
// the group's step counter from device memory, hashes the keys of its chunk
// (one per pair of streams: state k is stream k, the parameter stream kStates)
// and gives each element the bits of its offset in the tensor.
template <typename T, typename Rule, typename Args, bool kMaster, typename S = float,
          bool kRoundParams = false>
struct RuleFunctor {
  static constexpr int kStates = Rule::kStates;
  static constexpr int kMasterSlot = 2 + kStates;
  static constexpr int kDepth = 2 + kStates + (kMaster ? 1 : 0);
  // The rule takes a state pointer even when it has no state.
  static constexpr int kStateSlots = kStates > 0 ? kStates : 1;
  static constexpr bool kStatesRounded = sizeof(S) == 2 && kStates > 0;
  static constexpr bool kRounds = kStatesRounded || kRoundParams;
  using Keys = rounding::ChunkKeys<kStates / 2 + 1>;  // streams 0..kStates
  static_assert(!(kRoundParams && kMaster), "rounded parameters have no master weights");

  const double* scalars;  // device, float64; layout in rules/common.h
  int n_scalars;
  Args args;
  const int64_t* rounding_step;  // device, with kRounds: the group's count of valid steps
  uint64_t rounding_seed;


  // The thread at `pos` (see mta::Position) does its share of the chunk.
  template <typename Pos>
  LOSSOPT_HD void operator()(const mta::TensorListMetadata<kDepth>& meta, const Pos& pos) const {
    // A bad loss (flag 0) changes nothing.
    if (scalars[kValid] == 0.0) return;
    // Rounded to float first, as the foreach path rounds them.
    float sc[kMaxScalars];
    LOSSOPT_UNROLL
    for (int k = 0; k < kMaxScalars; ++k) sc[k] = k < n_scalars ? static_cast<float>(scalars[k]) : 0.0f;
    const Rule rule(sc, args);
    const float inv_scale = sc[kInvGradScale];

    const mta::ChunkInfo c = mta::chunk_info(meta, pos.block());
    Keys keys;
    if constexpr (kRounds) {
      // A chunk lies within one block of 2^32 elements (kChunkSize divides 2^32).
      keys = Keys(rounding_seed, static_cast<uint64_t>(*rounding_step), meta.tensor_id[c.tensor],
                  static_cast<uint64_t>(c.offset));
    }
    T* __restrict__ p = mta::chunk_ptr<T>(meta, 0, c);
    const T* __restrict__ g = mta::chunk_ptr<T>(meta, 1, c);
    float* __restrict__ mw = kMaster ? mta::chunk_ptr<float>(meta, kMasterSlot, c) : nullptr;
    S* st[kStateSlots] = {};
    bool aligned = mta::is_vec_aligned<T>(p) && mta::is_vec_aligned<T>(g) &&
                   (!kMaster || mta::is_vec_aligned<float>(mw));
    LOSSOPT_UNROLL
    for (int s = 0; s < kStates; ++s) {
      st[s] = mta::chunk_ptr<S>(meta, 2 + s, c);
      aligned = aligned && mta::is_vec_aligned<S>(st[s]);
    }
    const int n = c.n;
    // Element i of the chunk is element c.offset + i of its tensor.
    const uint64_t base_index = static_cast<uint64_t>(c.offset);

    if (aligned) {
      // Vector path: kILP consecutive elements per aligned load/store, then
      // the (< kILP) tail elements one per thread.
      const int n_vec = n / mta::kILP;
      for (int v = pos.thread(); v < n_vec; v += pos.block_dim()) {
        mta::AlignedVec<T> pv;
        mta::AlignedVec<float> mv;
        if constexpr (kMaster) {
          mv = reinterpret_cast<const mta::AlignedVec<float>*>(mw)[v];
        } else {
          pv = reinterpret_cast<const mta::AlignedVec<T>*>(p)[v];
        }
        const mta::AlignedVec<T> gv = reinterpret_cast<const mta::AlignedVec<T>*>(g)[v];
        mta::AlignedVec<S> sv[kStateSlots];
        LOSSOPT_UNROLL
        for (int s = 0; s < kStates; ++s) sv[s] = reinterpret_cast<const mta::AlignedVec<S>*>(st[s])[v];
        LOSSOPT_UNROLL
        for (int ii = 0; ii < mta::kILP; ++ii) {
          float pf = kMaster ? mv.v[ii] : to_float(pv.v[ii]);
          const float gf = to_float(gv.v[ii]) * inv_scale;
          float sf[kStateSlots];
          LOSSOPT_UNROLL
          for (int s = 0; s < kStates; ++s) sf[s] = state_to_float(sv[s].v[ii]);
          rule(pf, gf, sf);
          const uint64_t index = base_index + static_cast<uint64_t>(v * mta::kILP + ii);
          pv.v[ii] = param_out(pf, keys, index);
          if constexpr (kMaster) mv.v[ii] = pf;
          LOSSOPT_UNROLL
          for (int s = 0; s < kStates; ++s) sv[s].v[ii] = state_out(sf[s], s, keys, index);
        }
        reinterpret_cast<mta::AlignedVec<T>*>(p)[v] = pv;
        if constexpr (kMaster) reinterpret_cast<mta::AlignedVec<float>*>(mw)[v] = mv;
        LOSSOPT_UNROLL
        for (int s = 0; s < kStates; ++s) reinterpret_cast<mta::AlignedVec<S>*>(st[s])[v] = sv[s];
      }
      const int i = n_vec * mta::kILP + static_cast<int>(pos.thread());
      if (i < n) apply_one(rule, inv_scale, keys, base_index, p, g, st, mw, i);
    } else {
      // Scalar path: kILP strided elements per thread per iteration (each
      // access coalesced across the warp), bounds-checked.
      for (int base = 0; base < n; base += pos.block_dim() * mta::kILP) {
        float pr[mta::kILP], gr[mta::kILP], sr[mta::kILP][kStateSlots];
        LOSSOPT_UNROLL
        for (int ii = 0; ii < mta::kILP; ++ii) {
          const int i = base + pos.thread() + ii * pos.block_dim();
          if (i < n) {
            pr[ii] = kMaster ? mw[i] : to_float(p[i]);
            gr[ii] = to_float(g[i]) * inv_scale;
            LOSSOPT_UNROLL
            for (int s = 0; s < kStates; ++s) sr[ii][s] = state_to_float(st[s][i]);
          }
        }
        LOSSOPT_UNROLL
        for (int ii = 0; ii < mta::kILP; ++ii) {
          const int i = base + pos.thread() + ii * pos.block_dim();
          if (i < n) {
            rule(pr[ii], gr[ii], sr[ii]);
            const uint64_t index = base_index + static_cast<uint64_t>(i);
            p[i] = param_out(pr[ii], keys, index);
            if constexpr (kMaster) mw[i] = pr[ii];
            LOSSOPT_UNROLL
            for (int s = 0; s < kStates; ++s) st[s][i] = state_out(sr[ii][s], s, keys, index);
          }
        }
      }
    }
  }

  // The parameter as stored: rounded to nearest in T, or stochastically with
  // the parameter's stream (kRoundParams).
  static LOSSOPT_HD T param_out(float x, const Keys& keys, uint64_t index) {
    if constexpr (kRoundParams) {
      return bfloat16_from_bits(rounding::bf16_stochastic(x, keys.bits(kStates, index)));
    } else {
      (void)keys;
      (void)index;
      return from_float<T>(x);
    }
  }

  // State s as stored: float, or bfloat16 bits rounded with stream s.
  static LOSSOPT_HD S state_out(float x, int s, const Keys& keys, uint64_t index) {
    if constexpr (kStatesRounded) {
      return rounding::bf16_stochastic(x, keys.bits(s, index));
    } else {
      (void)s;
      (void)keys;
      (void)index;
      return x;
    }
  }

  static LOSSOPT_HD void apply_one(const Rule& rule, float inv_scale, const Keys& keys,
                                   uint64_t base_index, T* p, const T* g, S* const* st, float* mw,
                                   int i) {
    float pf = kMaster ? mw[i] : to_float(p[i]);
    const float gf = to_float(g[i]) * inv_scale;
    float sf[kStateSlots];
    LOSSOPT_UNROLL
    for (int s = 0; s < kStates; ++s) sf[s] = state_to_float(st[s][i]);
    rule(pf, gf, sf);
    const uint64_t index = base_index + static_cast<uint64_t>(i);
    p[i] = param_out(pf, keys, index);
    if constexpr (kMaster) mw[i] = pf;
    LOSSOPT_UNROLL
    for (int s = 0; s < kStates; ++s) st[s][i] = state_out(sf[s], s, keys, index);
  }
};

}  // namespace lossopt::cuda
