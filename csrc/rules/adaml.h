// AdamL, per element (ALGORITHMS.md):
//   m = beta1 * m + (1 - beta1) * g
//   w = beta2 * w + (1 - beta2) * s * g^2 + eps * l
//   p = p * (1 - lr * weight_decay)
//   p = p - lr * (m / bc1) / sqrt(w / bc2)
// (1 - beta2) * s, eps * l and the bias corrections bc1, bc2 come from the
// loss and the step count (AdamLGroup below), computed on the device before
// the kernel runs.
// Per element it computes (lr / bc1) * m / sqrt(w * (1 / bc2)): the same
// value to within rounding, with one division instead of three. The for-loop
// and foreach paths (lossopt_cuda/_reference.py) do the same float32
// operations in the same order, so that all paths agree to the bit (what
// stochastic rounding needs: the same value before it is rounded).
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

// Floor of the loss gap l and of l0: keeps l^phi and 1/l finite
// (lossopt_cuda/adaml.py, MIN_GAP).
constexpr double kAdamLMinGap = 1e-12;

// Per group, from the loss L (lossopt_cuda/adaml.py, AdamL._advance):
//   k = k + 1                         (float32, like torch.optim's step)
//   l0 = max(L - min_loss, 1e-12)     (at the first step taken)
//   l = L - min_loss; l = l / l0 if normalize_loss; l = max(l, 1e-12)
//   s = 1 / (gamma * l^phi)
//   scalars: lr, (1 - beta2) * s, eps * l, 1 - beta1^k, 1 - beta2^k
struct AdamLGroup {
  static constexpr const char* kOp = "lossopt::adaml_advance";
  enum Hyper { kBeta1, kBeta2, kEps, kGamma, kPhi, kMinLoss, kNormalize, kNumHyper };
  static constexpr int kNumState = 2;
  static constexpr bool kDoubleState[kNumState] = {false, true};  // step: float32, loss0: float64
  static constexpr int kNumScalars = kAdamLNumScalars;

  LOSSOPT_HD static bool loss_valid(double loss) { return is_finite(loss); }

  // x ** e as torch computes it for a tensor and a Python float, in its
  // special cases (a product is correctly rounded, pow need not be). Other
  // exponents may differ from torch in the last bit.
  LOSSOPT_HD static double torch_pow(double x, double e) {
    if (e == 0.0) return 1.0;
    if (e == 1.0) return x;
    if (e == 2.0) return x * x;
    if (e == 3.0) return x * x * x;
    return pow(x, e);
  }

  LOSSOPT_HD static void advance(double loss, bool valid, double lr, const double* h,
                                 void* const* state, double* out) {
    float* step_state = static_cast<float*>(state[0]);
    double* loss0_state = static_cast<double*>(state[1]);
    const float step = *step_state;
    const double gap = loss - h[kMinLoss];
    const double first_gap = step == 0.0f ? clamp_min(gap, kAdamLMinGap) : *loss0_state;
    const float new_step = valid ? step + 1.0f : step;
    const double loss0 = valid ? first_gap : *loss0_state;
    if (valid) {
      *step_state = new_step;
      *loss0_state = loss0;
    }
    const double l = clamp_min(h[kNormalize] != 0.0 ? gap / loss0 : gap, kAdamLMinGap);
    const double s = 1.0 / (h[kGamma] * torch_pow(l, h[kPhi]));
    const double k = new_step;
    out[kAdamLLr] = lr;
    out[kAdamLGradSqScale] = (1.0 - h[kBeta2]) * s;
    out[kAdamLEpsL] = h[kEps] * l;
    out[kAdamLBiasCorrection1] = 1.0 - pow(h[kBeta1], k);
    out[kAdamLBiasCorrection2] = 1.0 - pow(h[kBeta2], k);
  }
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
    w = beta2 * w + grad_sq_scale * (g * g) + eps_l;
    p = p * decay - step_size * m / vsqrt(w * inv_bc2);
  }
};

}  // namespace lossopt::rules
