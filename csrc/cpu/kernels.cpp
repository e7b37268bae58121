// The CPU driver: every rule's per-element update (csrc/rules/) applied over
// many tensors in one parallel pass. It knows nothing about any rule.
//
// The tensors are cut into chunks; at::parallel_for spreads the chunks over the
// intra-op threads. float and double run through at::vec::Vectorized with a
// scalar tail; float16 and bfloat16 are widened to float element by element.
//
// setup.py compiles this file once per instruction set (DEFAULT, AVX2, AVX512)
// into its own module, named by LOSSOPT_CPU_MODULE; CPU_CAPABILITY puts each
// copy of at::vec in its own namespace, as in ATen. lossopt_cuda/_build.py
// imports the one module that matches torch's CPU capability, and importing it
// registers its CPU implementations.

#include <Python.h>  // first, as Python asks

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "../rounding.h"
#include "../rules/adalo.h"
#include "../rules/adaloss.h"
#include "../rules/adaml.h"

namespace lossopt::cpu {
namespace {

constexpr int64_t kChunk = 1 << 16;

struct Chunk {
  size_t tensor;
  int64_t begin, end;
};

template <typename T, typename S, template <typename> class Rule, typename Args>
void run_chunk(T* p, const T* g, S* const* states, S* master, int64_t begin, int64_t end,
               const S* scalars, const Args& args) {
  constexpr int K = Rule<S>::kStates;
  const Rule<S> rule(scalars, args);
  const S inv_scale = scalars[kInvGradScale];
  int64_t i = begin;
  if constexpr (std::is_same_v<T, S>) {  // no master weights (checks.h)
    using Vec = at::vec::Vectorized<S>;
    const Rule<Vec> vrule(scalars, args);
    const Vec vinv_scale(inv_scale);
    for (; i + Vec::size() <= end; i += Vec::size()) {
      Vec vp = Vec::loadu(p + i);
      const Vec vg = Vec::loadu(g + i) * vinv_scale;
      Vec vs[K > 0 ? K : 1];
      for (int k = 0; k < K; ++k) vs[k] = Vec::loadu(states[k] + i);
      vrule(vp, vg, vs);
      vp.store(p + i);
      for (int k = 0; k < K; ++k) vs[k].store(states[k] + i);
    }
  }
  for (; i < end; ++i) {
    // With master weights the rule steps the float32 master and the
    // parameter becomes its rounded copy.
    S sp = master != nullptr ? master[i] : static_cast<S>(p[i]);
    const S sg = static_cast<S>(g[i]) * inv_scale;
    S ss[K > 0 ? K : 1];
    for (int k = 0; k < K; ++k) ss[k] = states[k][i];
    rule(sp, sg, ss);
    if (master != nullptr) master[i] = sp;
    p[i] = static_cast<T>(sp);
    for (int k = 0; k < K; ++k) states[k][i] = ss[k];
  }
}

// Stochastic rounding (csrc/rounding.h): which storage a call writes rounded,
// and the hash's inputs. ids[t] numbers tensor t in the optimizer's order.
struct RoundingArgs {
  bool params = false;  // bfloat16 parameters written stochastically
  bool states = false;  // bfloat16 states
  uint64_t seed = 0, step = 0;
  const int64_t* ids = nullptr;
};

// A chunk's update with bfloat16 storage rounded stochastically: the states
// (kStates) and/or the bfloat16 parameters (kParams) are read as bit patterns,
// widened to float, stepped by the rule in float and written back with the
// bits of (seed, step, tensor, stream, element) from the chunk's keys
// (csrc/rounding.h: stream k the k-th state, K the parameter; a pair shares
// one hash per element, which the compiler computes once); kMaster: the rule steps the
// float32 master weights and the parameter is their copy rounded to nearest.
// A plain loop over 16-bit patterns and 32-bit integers with no branch left
// in it, which the compiler vectorises. The arithmetic is the for-loop and
// foreach paths' own, operation for operation (no contraction into fused
// multiply-adds: _compile_flags.py), so every path rounds the same floats.
template <typename T, template <typename> class Rule, typename Args, bool kStates, bool kParams,
          bool kMaster>
void run_chunk_rounded(T* p, const T* g, void* const* states, float* master, int64_t begin,
                       int64_t end, const float* scalars, const Args& args,
                       const rounding::ChunkKeys<Rule<float>::kStates / 2 + 1>& keys) {
  using rounding::bf16_stochastic;
  using rounding::bf16_to_float;
  constexpr int K = Rule<float>::kStates;
  constexpr bool kBF16 = std::is_same_v<T, at::BFloat16>;
  const Rule<float> rule(scalars, args);
  const float inv_scale = scalars[kInvGradScale];
  uint16_t* p16 = reinterpret_cast<uint16_t*>(p);
  const uint16_t* g16 = reinterpret_cast<const uint16_t*>(g);
  uint16_t* s16[K > 0 ? K : 1];
  float* s32[K > 0 ? K : 1];
  for (int k = 0; k < K; ++k) {
    s16[k] = static_cast<uint16_t*>(states[k]);
    s32[k] = static_cast<float*>(states[k]);
  }
  for (int64_t i = begin; i < end; ++i) {
    const auto at = static_cast<uint64_t>(i);
    float sp, sg;
    if constexpr (kBF16) {  // as bit patterns, which the compiler vectorises
      sp = kMaster ? master[i] : bf16_to_float(p16[i]);
      sg = bf16_to_float(g16[i]) * inv_scale;
    } else {
      sp = kMaster ? master[i] : static_cast<float>(p[i]);
      sg = static_cast<float>(g[i]) * inv_scale;
    }
    float ss[K > 0 ? K : 1];
    for (int k = 0; k < K; ++k) ss[k] = kStates ? bf16_to_float(s16[k][i]) : s32[k][i];
    rule(sp, sg, ss);
    if constexpr (kMaster) master[i] = sp;
    if constexpr (kParams) {
      p16[i] = bf16_stochastic(sp, keys.bits(K, at));
    } else {
      p[i] = static_cast<T>(sp);
    }
    for (int k = 0; k < K; ++k) {
      if constexpr (kStates) {
        s16[k][i] = bf16_stochastic(ss[k], keys.bits(k, at));
      } else {
        s32[k][i] = ss[k];
      }
    }
  }
}

// run_chunk_rounded with what `how` rounds made compile-time, after the
// hash's keys of the chunk (one per stream pair of the K + 1 streams).
template <typename T, template <typename> class Rule, typename Args>
void round_chunk(T* p, const T* g, void* const* states, float* master, int64_t begin,
                 int64_t end, const float* scalars, const Args& args, const RoundingArgs& how,
                 size_t tensor) {
  constexpr int K = Rule<float>::kStates;
  const rounding::ChunkKeys<K / 2 + 1> keys(how.seed, how.step,
                                            static_cast<uint32_t>(how.ids[tensor]),
                                            static_cast<uint64_t>(begin));
  const auto run = [&](auto states_rounded, auto params_rounded, auto with_master) {
    run_chunk_rounded<T, Rule, Args, decltype(states_rounded)::value,
                      decltype(params_rounded)::value, decltype(with_master)::value>(
        p, g, states, master, begin, end, scalars, args, keys);
  };
  using Yes = std::true_type;
  using No = std::false_type;
  // check_lists: only bfloat16 parameters are rounded, never with master weights.
  if constexpr (std::is_same_v<T, at::BFloat16>) {
    if (how.params) {
      if (how.states) return run(Yes{}, Yes{}, No{});
      return run(No{}, Yes{}, No{});
    }
  }
  if constexpr (!std::is_same_v<T, float>) {
    if (master != nullptr) return run(Yes{}, No{}, Yes{});
  }
  run(Yes{}, No{}, No{});
}

template <template <typename> class Rule, typename Args>
void apply(const char* op, at::TensorList params, at::TensorList grads,
           std::initializer_list<at::TensorList> state_lists, at::TensorList master,
           const at::Tensor& scalars, int64_t n_scalars, const Args& args,
           const Rounding& rounding_in) {
  check_lists(op, params, grads, state_lists, master, scalars, n_scalars, &rounding_in);
  constexpr int K = Rule<float>::kStates;
  const std::vector<at::TensorList> states(state_lists);
  TORCH_CHECK(static_cast<int>(states.size()) == K, op, ": expected ", K, " state lists");
  const double* scalars64 = scalars.data_ptr<double>();
  // Nothing to step, or a bad loss or overflowed gradients: change nothing.
  if (params.empty() || scalars64[kValid] == 0.0) return;
  RoundingArgs rounding;
  if (rounding_in.step.has_value()) {
    rounding.params = rounding_in.params;
    rounding.states = bf16_states(state_lists);
    rounding.seed = static_cast<uint64_t>(rounding_in.seed);
    rounding.step = static_cast<uint64_t>(*rounding_in.step->data_ptr<int64_t>());
    rounding.ids = rounding_in.tensor_ids.data();
  }
  const bool rounds = rounding.params || rounding.states;

  std::vector<Chunk> chunks;
  for (size_t t = 0; t < params.size(); ++t) {
    const int64_t n = params[t].numel();
    for (int64_t b = 0; b < n; b += kChunk) chunks.push_back({t, b, std::min(n, b + kChunk)});
  }

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "lossopt_cpu", [&] {
    using S = at::opmath_type<scalar_t>;
    // Rounded to the math type first, as the foreach path rounds them.
    S sc[kMaxScalars];
    for (int64_t k = 0; k < n_scalars; ++k) sc[k] = static_cast<S>(scalars64[k]);
    at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t lo, int64_t hi) {
      for (int64_t c = lo; c < hi; ++c) {
        const Chunk& ch = chunks[c];
        if constexpr (std::is_same_v<S, float>) {
          if (rounds) {
            void* st[K > 0 ? K : 1];
            for (int k = 0; k < K; ++k) st[k] = states[k][ch.tensor].data_ptr();
            float* m = master.empty() ? nullptr : master[ch.tensor].data_ptr<float>();
            round_chunk<scalar_t, Rule>(params[ch.tensor].data_ptr<scalar_t>(),
                                        grads[ch.tensor].data_ptr<scalar_t>(), st, m, ch.begin,
                                        ch.end, sc, args, rounding, ch.tensor);
            continue;
          }
        }
        S* st[K > 0 ? K : 1];
        for (int k = 0; k < K; ++k) st[k] = states[k][ch.tensor].data_ptr<S>();
        S* m = master.empty() ? nullptr : master[ch.tensor].data_ptr<S>();
        run_chunk<scalar_t, S, Rule>(params[ch.tensor].data_ptr<scalar_t>(),
                                     grads[ch.tensor].data_ptr<scalar_t>(), st, m, ch.begin,
                                     ch.end, sc, args);
      }
    });
  });
}

void adalo(at::TensorList params, at::TensorList grads, at::TensorList exp_avg,
           at::TensorList master, const at::Tensor& scalars, double beta1, double weight_decay,
           const std::optional<at::Tensor>& rounding_step, int64_t rounding_seed,
           at::IntArrayRef tensor_ids, bool round_params) {
  apply<rules::AdaLo>("lossopt::adalo_", params, grads, {exp_avg}, master, scalars,
                      rules::kAdaLoNumScalars, rules::AdaLoArgs{beta1, weight_decay},
                      Rounding{rounding_step, rounding_seed, tensor_ids, round_params});
}

void adaml(at::TensorList params, at::TensorList grads, at::TensorList exp_avg,
           at::TensorList exp_avg_sq, at::TensorList master, const at::Tensor& scalars,
           double beta1, double beta2, double weight_decay,
           const std::optional<at::Tensor>& rounding_step, int64_t rounding_seed,
           at::IntArrayRef tensor_ids, bool round_params) {
  apply<rules::AdamL>("lossopt::adaml_", params, grads, {exp_avg, exp_avg_sq}, master, scalars,
                      rules::kAdamLNumScalars, rules::AdamLArgs{beta1, beta2, weight_decay},
                      Rounding{rounding_step, rounding_seed, tensor_ids, round_params});
}

void adaloss(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffer,
             at::TensorList master, const at::Tensor& scalars, double momentum,
             double weight_decay, const std::optional<at::Tensor>& rounding_step,
             int64_t rounding_seed, at::IntArrayRef tensor_ids, bool round_params) {
  const rules::AdaLossArgs args{momentum, weight_decay};
  const Rounding rounding{rounding_step, rounding_seed, tensor_ids, round_params};
  if (momentum_buffer.empty()) {
    apply<rules::AdaLossPlain>("lossopt::adaloss_", params, grads, {}, master, scalars,
                               rules::kAdaLossNumScalars, args, rounding);
  } else {
    apply<rules::AdaLossMomentum>("lossopt::adaloss_", params, grads, {momentum_buffer}, master,
                                  scalars, rules::kAdaLossNumScalars, args, rounding);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(lossopt, CPU, m) {
  m.impl("adalo_", &adalo);
  m.impl("adaml_", &adaml);
  m.impl("adaloss_", &adaloss);
}

}  // namespace lossopt::cpu

#ifndef LOSSOPT_CPU_MODULE
#define LOSSOPT_CPU_MODULE _cpu_default
#endif
#define LOSSOPT_STR2(x) #x
#define LOSSOPT_STR(x) LOSSOPT_STR2(x)
#define LOSSOPT_CAT2(a, b) a##b
#define LOSSOPT_CAT(a, b) LOSSOPT_CAT2(a, b)

// The Python module shell: importing it runs the registration above.
extern "C" PyObject* LOSSOPT_CAT(PyInit_, LOSSOPT_CPU_MODULE)(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, LOSSOPT_STR(LOSSOPT_CPU_MODULE),
                                      nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
