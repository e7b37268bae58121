// AdaLo, per element (ALGORITHMS.md):
//   m = m + (1 - beta1) * (g - m)
//   p = p * (1 - lr_t * weight_decay) - lr_t * m
// lr_t comes from the loss EMA (AdaLoGroup below), computed on the device
// before the kernel runs.
#pragma once

#include "common.h"

namespace lossopt::rules {

struct AdaLoArgs {
  double beta1;
  double weight_decay;
};

// Layout of the device scalar tensor the kernel reads.
enum AdaLoScalar { kAdaLoLr = kRuleScalars, kAdaLoNumScalars };

// Per group, from the loss L (lossopt_cuda/adalo.py, AdaLo._advance):
//   sigma    = 1 / (2 + L)
//   loss_ema = loss_ema + (1 - beta2) * (sigma - loss_ema)
//   lr_t     = max(loss_ema / kappa, eps)        (adversarial)
//   lr_t     = max((1 - loss_ema) / kappa, eps)  (compliant)
struct AdaLoGroup {
  static constexpr const char* kOp = "lossopt::adalo_advance";
  enum Hyper { kBeta2, kKappa, kEps, kCompliant, kNumHyper };
  static constexpr int kNumState = 1;
  static constexpr bool kDoubleState[kNumState] = {false};  // loss_ema: float32
  static constexpr int kNumScalars = kAdaLoNumScalars;

  // sigma is defined for L > -1.
  LOSSOPT_HD static bool loss_valid(double loss) { return is_finite(loss) && loss > -1.0; }

  LOSSOPT_HD static void advance(double loss, bool valid, double /*lr: unused*/, const double* h,
                                 void* const* state, double* out) {
    float* ema_state = static_cast<float*>(state[0]);
    const double ema = *ema_state;
    const double sigma = 1.0 / (2.0 + loss);
    const double updated = valid ? ema + (1.0 - h[kBeta2]) * (sigma - ema) : ema;
    if (valid) *ema_state = static_cast<float>(updated);
    const double scale = h[kCompliant] != 0.0 ? 1.0 - updated : updated;
    out[kAdaLoLr] = clamp_min(scale / h[kKappa], h[kEps]);
  }
};

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
