// AdaLoss, per element (ALGORITHMS.md):
//   d = g / b + weight_decay * p      (weight decay is not divided by b)
//   buf = momentum * buf + d; d = buf (only with momentum; buf starts at 0)
//   p = p - lr * d
// b = sqrt(b_sq) comes from the loss (AdaLossGroup below), computed on the
// device before the kernel.
#pragma once

#include "common.h"

namespace lossopt::rules {

struct AdaLossArgs {
  double momentum;
  double weight_decay;
};

enum AdaLossScalar { kAdaLossLr = kRuleScalars, kAdaLossB, kAdaLossNumScalars };

// Per group, from the loss L (lossopt_cuda/adaloss.py, AdaLoss._advance):
//   b^2 = b^2 + alpha * |L - c|;  scalars: lr, b = sqrt(b^2)
struct AdaLossGroup {
  static constexpr const char* kOp = "lossopt::adaloss_advance";
  enum Hyper { kAlpha, kC, kNumHyper };
  static constexpr int kNumState = 1;
  static constexpr bool kDoubleState[kNumState] = {true};  // b_sq: float64
  static constexpr int kNumScalars = kAdaLossNumScalars;

  LOSSOPT_HD static bool loss_valid(double loss) { return is_finite(loss); }

  LOSSOPT_HD static void advance(double loss, bool valid, double lr, const double* h,
                                 void* const* state, double* out) {
    double* b_sq_state = static_cast<double*>(state[0]);
    const double b_sq = valid ? *b_sq_state + h[kAlpha] * fabs(loss - h[kC]) : *b_sq_state;
    if (valid) *b_sq_state = b_sq;
    out[kAdaLossLr] = lr;
    out[kAdaLossB] = sqrt(b_sq);
  }
};

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
