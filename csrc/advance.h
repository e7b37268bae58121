// The per-step scalar work of every rule, done in one call: read the loss,
// decide whether the step is taken, advance the group's scalar state and fill
// the scalar vector the update kernels read (layout: rules/common.h, then the
// rule's header). Runs on the host for CPU tensors and in a one-thread kernel
// for CUDA tensors (cuda/advance.cu), so the loss is never copied to the host.
// It knows nothing about any rule beyond its <Rule>Group interface.
#pragma once

#include "rules/common.h"  // and the fixed-width integers

namespace lossopt {

// Addresses on one device; null where an input is absent.
struct AdvanceArgs {
  const void* loss;           // one float or double element
  bool loss_is_double;
  const float* found_inf;     // torch.amp.GradScaler: nonzero when the gradients overflowed
  const float* grad_scale;    // torch.amp.GradScaler's scale
  const void* lr_tensor;      // a tensor learning rate (one float or double), else lr
  bool lr_is_double;
  double lr;
  int64_t* skips;             // the optimizer's count of steps skipped for a bad loss
  void* state[kMaxGroupState];
  double hyper[kMaxHyper];
  double* out;                // the scalar vector, float64
};

LOSSOPT_HD double read_one(const void* p, bool is_double) {
  return is_double ? *static_cast<const double*>(p) : static_cast<double>(*static_cast<const float*>(p));
}

// Mirrors LossDrivenOptimizer.step() in lossopt_cuda/_base.py: a loss outside
// the rule's domain is counted as a skip; overflowed gradients skip the step
// too but are the scaler's to count. A skipped step leaves the state as it was.
template <typename Group>
LOSSOPT_HD void advance(const AdvanceArgs& a) {
  const double loss = read_one(a.loss, a.loss_is_double);
  const bool loss_ok = Group::loss_valid(loss);
  const bool overflow = a.found_inf != nullptr && *a.found_inf != 0.0f;
  const bool valid = loss_ok && !overflow;
  if (a.skips != nullptr && !loss_ok) *a.skips += 1;
  a.out[kValid] = valid ? 1.0 : 0.0;
  a.out[kInvGradScale] = a.grad_scale != nullptr ? 1.0 / static_cast<double>(*a.grad_scale) : 1.0;
  const double lr = a.lr_tensor != nullptr ? read_one(a.lr_tensor, a.lr_is_double) : a.lr;
  Group::advance(loss, valid, lr, a.hyper, a.state, a.out);
}

}  // namespace lossopt
