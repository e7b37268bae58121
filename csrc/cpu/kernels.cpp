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

template <template <typename> class Rule, typename Args>
void apply(const char* op, at::TensorList params, at::TensorList grads,
           std::initializer_list<at::TensorList> state_lists, at::TensorList master,
           const at::Tensor& scalars, int64_t n_scalars, const Args& args) {
  check_lists(op, params, grads, state_lists, master, scalars, n_scalars);
  constexpr int K = Rule<float>::kStates;
  const std::vector<at::TensorList> states(state_lists);
  TORCH_CHECK(static_cast<int>(states.size()) == K, op, ": expected ", K, " state lists");
  const double* scalars64 = scalars.data_ptr<double>();
  // Nothing to step, or a bad loss or overflowed gradients: change nothing.
  if (params.empty() || scalars64[kValid] == 0.0) return;

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
           at::TensorList master, const at::Tensor& scalars, double beta1, double weight_decay) {
  apply<rules::AdaLo>("lossopt::adalo_", params, grads, {exp_avg}, master, scalars,
                      rules::kAdaLoNumScalars, rules::AdaLoArgs{beta1, weight_decay});
}

void adaml(at::TensorList params, at::TensorList grads, at::TensorList exp_avg,
           at::TensorList exp_avg_sq, at::TensorList master, const at::Tensor& scalars,
           double beta1, double beta2, double weight_decay) {
  apply<rules::AdamL>("lossopt::adaml_", params, grads, {exp_avg, exp_avg_sq}, master, scalars,
                      rules::kAdamLNumScalars, rules::AdamLArgs{beta1, beta2, weight_decay});
}

void adaloss(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffer,
             at::TensorList master, const at::Tensor& scalars, double momentum,
             double weight_decay) {
  const rules::AdaLossArgs args{momentum, weight_decay};
  if (momentum_buffer.empty()) {
    apply<rules::AdaLossPlain>("lossopt::adaloss_", params, grads, {}, master, scalars,
                               rules::kAdaLossNumScalars, args);
  } else {
    apply<rules::AdaLossMomentum>("lossopt::adaloss_", params, grads, {momentum_buffer}, master,
                                  scalars, rules::kAdaLossNumScalars, args);
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
