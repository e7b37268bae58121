// The torch-facing half of the <rule>_advance ops, shared by the CPU and CUDA
// implementations: check the tensors, allocate the scalar vector and gather
// the addresses into an AdvanceArgs (advance.h). The caller then runs
// advance<Group> on the host or in a kernel. The checks run before anything is
// written, so a failed call changes nothing.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <optional>

#include "advance.h"

namespace lossopt {

inline void check_one_element(const char* op, const char* what, const at::Tensor& t,
                              const at::Tensor& like) {
  TORCH_CHECK(t.numel() == 1, op, ": ", what, " must have one element, got shape ", t.sizes());
  TORCH_CHECK(t.device() == like.device(), op, ": ", what, " is on ", t.device(),
              ", the optimizer state on ", like.device());
}

inline bool is_float_or_double(const char* op, const char* what, const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", what,
              " must be float32 or float64, got ", t.scalar_type());
  return t.scalar_type() == at::kDouble;
}

// Returns the (uninitialised) float64 scalar vector; `args` points into it.
template <typename Group>
at::Tensor prepare_advance(const at::Tensor& loss, at::TensorList state,
                           const std::optional<at::Tensor>& found_inf,
                           const std::optional<at::Tensor>& grad_scale,
                           const std::optional<at::Tensor>& lr_tensor,
                           const std::optional<at::Tensor>& skips, at::ArrayRef<double> hyper,
                           double lr, AdvanceArgs& args) {
  const char* op = Group::kOp;
  static_assert(Group::kNumState <= kMaxGroupState && Group::kNumHyper <= kMaxHyper &&
                Group::kNumScalars <= kMaxScalars);
  TORCH_CHECK(static_cast<int>(state.size()) == Group::kNumState, op, ": expected ",
              Group::kNumState, " group state tensors, got ", state.size());
  TORCH_CHECK(static_cast<int>(hyper.size()) == Group::kNumHyper, op, ": expected ",
              Group::kNumHyper, " hyper-parameters, got ", hyper.size());
  const at::Tensor& home = state[0];
  args = AdvanceArgs{};
  for (int i = 0; i < Group::kNumState; ++i) {
    check_one_element(op, "a group state tensor", state[i], home);
    const auto want = Group::kDoubleState[i] ? at::kDouble : at::kFloat;
    TORCH_CHECK(state[i].scalar_type() == want, op, ": group state ", i, " must be ", want,
                ", got ", state[i].scalar_type());
    args.state[i] = state[i].data_ptr();
  }
  check_one_element(op, "the loss", loss, home);
  args.loss_is_double = is_float_or_double(op, "the loss", loss);
  args.loss = loss.data_ptr();
  if (found_inf.has_value()) {
    check_one_element(op, "found_inf", *found_inf, home);
    TORCH_CHECK(found_inf->scalar_type() == at::kFloat, op, ": found_inf must be float32");
    args.found_inf = found_inf->data_ptr<float>();
  }
  if (grad_scale.has_value()) {
    check_one_element(op, "grad_scale", *grad_scale, home);
    TORCH_CHECK(grad_scale->scalar_type() == at::kFloat, op, ": grad_scale must be float32");
    args.grad_scale = grad_scale->data_ptr<float>();
  }
  if (lr_tensor.has_value()) {
    check_one_element(op, "a tensor lr", *lr_tensor, home);
    args.lr_is_double = is_float_or_double(op, "a tensor lr", *lr_tensor);
    args.lr_tensor = lr_tensor->data_ptr();
  }
  args.lr = lr;
  if (skips.has_value()) {
    check_one_element(op, "the skip count", *skips, home);
    TORCH_CHECK(skips->scalar_type() == at::kLong, op, ": the skip count must be int64");
    args.skips = skips->data_ptr<int64_t>();
  }
  for (int i = 0; i < Group::kNumHyper; ++i) args.hyper[i] = hyper[i];
  at::Tensor out = at::empty({Group::kNumScalars}, home.options().dtype(at::kDouble));
  args.out = out.data_ptr<double>();
  return out;
}

}  // namespace lossopt
