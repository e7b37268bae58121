// AdaLo, per element (ALGORITHMS.md):
//   m = m + (1 - beta1) * (g - m)
//   p = p * (1 - lr_t * weight_decay) - lr_t * m
// lr_t comes from the loss EMA, computed on the device before the kernel runs.
#pragma once

#include "common.h"

namespace lossopt::rules {

struct AdaLoArgs {
  double beta1;
  double weight_decay;
};

// Layout of the device scalar tensor the kernel reads.
enum AdaLoScalar { kAdaLoLr = kRuleScalars, kAdaLoNumScalars };

template <typename V>
struct AdaLo {
  static constexpr int kStates = 1;  // exp_avg
  V one_minus_beta1, decay, lr_t;

  template <typename S>
  LOSSOPT_HD AdaLo(const S* scalars, const AdaLoArgs& a)
      : one_minus_beta1(V(S(1.0 - a.beta1))),
        decay(V(S(1) - scalars[kAdaLoLr] * S(a.weight_decay))),
        lr_t(V(scalars[kAdaLoLr])) {}

  LOSSOPT_HD void operator()(V& p, const V& g, V* state) const {
    V& m = state[0];
    m = m + one_minus_beta1 * (g - m);
    p = p * decay - lr_t * m;
  }
};

}  // namespace lossopt::rules
