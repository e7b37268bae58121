// AdaLoss, per element (ALGORITHMS.md):
//   d = g / b + weight_decay * p      (weight decay is not divided by b)
//   buf = momentum * buf + d; d = buf (only with momentum; buf starts at 0)
//   p = p - lr * d
// b = sqrt(b_sq) comes from the loss, computed on the device before the kernel.
#pragma once

#include "common.h"

namespace lossopt::rules {

struct AdaLossArgs {
  double momentum;
  double weight_decay;
};

enum AdaLossScalar { kAdaLossLr = kRuleScalars, kAdaLossB, kAdaLossNumScalars };

template <typename V, bool kMomentum>
struct AdaLoss {
  static constexpr int kStates = kMomentum ? 1 : 0;  // momentum_buffer
  V b, lr, momentum, weight_decay;
  bool decays;

  template <typename S>
  LOSSOPT_HD AdaLoss(const S* scalars, const AdaLossArgs& a)
      : b(V(scalars[kAdaLossB])),
        lr(V(scalars[kAdaLossLr])),
        momentum(V(S(a.momentum))),
        weight_decay(V(S(a.weight_decay))),
        decays(a.weight_decay != 0) {}

  LOSSOPT_HD void operator()(V& p, const V& g, V* state) const {
    V d = g / b;
    if (decays) d = d + weight_decay * p;
    if constexpr (kMomentum) {
      state[0] = momentum * state[0] + d;
      d = state[0];
    }
    p = p - lr * d;
  }
};

template <typename V>
using AdaLossPlain = AdaLoss<V, false>;
template <typename V>
using AdaLossMomentum = AdaLoss<V, true>;

}  // namespace lossopt::rules
