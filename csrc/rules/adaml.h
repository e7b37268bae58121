// AdamL, per element (ALGORITHMS.md):
//   m = beta1 * m + (1 - beta1) * g
//   w = beta2 * w + (1 - beta2) * s * g^2 + eps * l
//   p = p * (1 - lr * weight_decay)
//   p = p - lr * (m / bc1) / sqrt(w / bc2)
// (1 - beta2) * s, eps * l and the bias corrections bc1, bc2 come from the
// loss and the step count, computed on the device before the kernel runs.
// Per element it computes (lr / bc1) * m / sqrt(w * (1 / bc2)): the same
// value to within rounding, with one division instead of three.
#pragma once

#include "common.h"

namespace lossopt::rules {

struct AdamLArgs {
  double beta1;
  double beta2;
  double weight_decay;
};

enum AdamLScalar {
  kAdamLLr = kRuleScalars,
  kAdamLGradSqScale,  // (1 - beta2) * s
  kAdamLEpsL,         // eps * l
  kAdamLBiasCorrection1,
  kAdamLBiasCorrection2,
  kAdamLNumScalars,
};

template <typename V>
struct AdamL {
  static constexpr int kStates = 2;  // exp_avg, exp_avg_sq
  V beta1, one_minus_beta1, beta2, grad_sq_scale, eps_l, step_size, inv_bc2, decay;

  template <typename S>
  LOSSOPT_HD AdamL(const S* scalars, const AdamLArgs& a)
      : beta1(V(S(a.beta1))),
        one_minus_beta1(V(S(1.0 - a.beta1))),
        beta2(V(S(a.beta2))),
        grad_sq_scale(V(scalars[kAdamLGradSqScale])),
        eps_l(V(scalars[kAdamLEpsL])),
        step_size(V(scalars[kAdamLLr] / scalars[kAdamLBiasCorrection1])),
        inv_bc2(V(S(1) / scalars[kAdamLBiasCorrection2])),
        decay(V(S(1) - scalars[kAdamLLr] * S(a.weight_decay))) {}

  LOSSOPT_HD void operator()(V& p, const V& g, V* state) const {
    V& m = state[0];
    V& w = state[1];
    m = beta1 * m + one_minus_beta1 * g;
    w = beta2 * w + grad_sq_scale * g * g + eps_l;
    p = p * decay - step_size * m / vsqrt(w * inv_bc2);
  }
};

}  // namespace lossopt::rules
