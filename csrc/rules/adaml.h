// AdamL, per element (ALGORITHMS.md):
//   m = beta1 * m + (1 - beta1) * g
//   w = beta2 * w + (1 - beta2) * s * g^2 + eps * l
//   p = p * (1 - lr * weight_decay)
//   p = p - lr * (m / bc1) / sqrt(w / bc2)
// (1 - beta2) * s, eps * l and the bias corrections bc1, bc2 come from the
// loss and the step count, computed on the device before the kernel runs.
#pragma once

#include "common.h"

namespace lossopt::rules {

struct AdamLArgs {
  double beta1;
  double beta2;
  double weight_decay;
};

enum AdamLScalar {
  kAdamLValid = 0,
  kAdamLLr = 1,
  kAdamLGradSqScale = 2,  // (1 - beta2) * s
  kAdamLEpsL = 3,         // eps * l
  kAdamLBiasCorrection1 = 4,
  kAdamLBiasCorrection2 = 5,
  kAdamLNumScalars = 6,
};

template <typename V>
struct AdamL {
  static constexpr int kStates = 2;  // exp_avg, exp_avg_sq
  V beta1, one_minus_beta1, beta2, grad_sq_scale, eps_l, bc1, bc2, lr, decay;

  template <typename S>
  LOSSOPT_HD AdamL(const S* scalars, const AdamLArgs& a)
      : beta1(V(S(a.beta1))),
        one_minus_beta1(V(S(1.0 - a.beta1))),
        beta2(V(S(a.beta2))),
        grad_sq_scale(V(scalars[kAdamLGradSqScale])),
        eps_l(V(scalars[kAdamLEpsL])),
        bc1(V(scalars[kAdamLBiasCorrection1])),
        bc2(V(scalars[kAdamLBiasCorrection2])),
        lr(V(scalars[kAdamLLr])),
        decay(V(S(1) - scalars[kAdamLLr] * S(a.weight_decay))) {}

  LOSSOPT_HD void operator()(V& p, const V& g, V* state) const {
    V& m = state[0];
    V& w = state[1];
    m = beta1 * m + one_minus_beta1 * g;
    w = beta2 * w + grad_sq_scale * g * g + eps_l;
    const V m_hat = m / bc1;
    const V w_hat = w / bc2;
    p = p * decay;
    p = p - lr * m_hat / vsqrt(w_hat);
  }
};

}  // namespace lossopt::rules
