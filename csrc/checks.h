// Argument checks shared by the CPU and CUDA implementations of every op.
// They run before any memory is written, so a failed call changes nothing.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <initializer_list>
#include <optional>

namespace lossopt {

// The stochastic rounding arguments of an update op (csrc/rounding.h). Without
// a step counter nothing is rounded. With it, bfloat16 states are written
// rounded, and so are bfloat16 parameters when `params` (never with master
// weights); tensor_ids number the parameters in the optimizer's order.
struct Rounding {
  std::optional<at::Tensor> step;  // int64, one element: the group's count of valid steps
  int64_t seed = 0;
  at::IntArrayRef tensor_ids;
  bool params = false;
};

// Whether a call's states are bfloat16: then rounded stochastically, which
// check_lists allows only with a rounding counter.
inline bool bf16_states(std::initializer_list<at::TensorList> states) {
  return states.size() > 0 && states.begin()->size() > 0 &&
         (*states.begin())[0].scalar_type() == at::kBFloat16;
}

// Element i of `t` and of `like` (same sizes) sit at the same flat offset:
// equal strides wherever a dimension has more than one element (autograd
// leaves the strides of size-1 dimensions as they fall).
inline bool same_layout(const at::Tensor& t, const at::Tensor& like) {
  if (t.is_contiguous() && like.is_contiguous()) return true;
  for (int64_t d = 0; d < like.dim(); ++d) {
    if (like.size(d) > 1 && t.stride(d) != like.stride(d)) return false;
  }
  return true;
}

// params, grads and each state list: same length; per index, tensors on the
// scalars' device, dense and laid out like the parameter (so the kernels can
// walk them as flat memory); grads in the parameter's dtype; states in the
// math dtype (float32, or float64 for float64 parameters) or, with a rounding
// counter, all in bfloat16 (float32 math); scalars float64.
// All checks run before anything is written, so a refused call changes nothing.
// master: empty, or the float32 master weights of float16/bfloat16 parameters,
// one per parameter and laid out like it. rounding: null where the op's
// implementation does not round (it refuses the arguments itself).
inline void check_lists(const char* op, at::TensorList params, at::TensorList grads,
                        std::initializer_list<at::TensorList> states, at::TensorList master,
                        const at::Tensor& scalars, int64_t n_scalars,
                        const Rounding* rounding = nullptr) {
  const bool rounds = rounding != nullptr && rounding->step.has_value();
  if (rounding != nullptr && !rounds) {
    TORCH_CHECK(!rounding->params && rounding->tensor_ids.empty(), op,
                ": round_params and tensor_ids need a rounding_step");
  }
  if (rounds) {
    const at::Tensor& step = *rounding->step;
    TORCH_CHECK(step.scalar_type() == at::kLong && step.numel() == 1 &&
                    step.device() == scalars.device(),
                op, ": rounding_step must be one int64 element on ", scalars.device());
    TORCH_CHECK(rounding->tensor_ids.size() == params.size(), op, ": ", params.size(),
                " parameters but ", rounding->tensor_ids.size(), " tensor ids");
    TORCH_CHECK(!rounding->params || master.empty(), op,
                ": round_params writes the parameters themselves; not with master weights");
    TORCH_CHECK(!rounding->params || params.empty() || params[0].scalar_type() == at::kBFloat16,
                op, ": round_params is for bfloat16 parameters");
  }
  TORCH_CHECK(params.size() == grads.size(), op, ": ", params.size(), " parameters but ",
              grads.size(), " gradients");
  TORCH_CHECK(master.empty() || master.size() == params.size(), op, ": ", params.size(),
              " parameters but ", master.size(), " master weights");
  for (const auto& list : states) {
    TORCH_CHECK(list.size() == params.size(), op, ": ", params.size(),
                " parameters but a state list of ", list.size());
  }
  TORCH_CHECK(scalars.dim() == 1 && scalars.numel() == n_scalars && scalars.is_contiguous(), op,
              ": scalars must be a contiguous vector of ", n_scalars, " elements");
  TORCH_CHECK(scalars.scalar_type() == at::kDouble, op, ": scalars must be float64, got ",
              scalars.scalar_type());
  if (params.empty()) return;
  const auto dtype = params[0].scalar_type();
  const auto math = dtype == at::kDouble ? at::kDouble : at::kFloat;
  // bfloat16 states are rounded: only with a counter, over float32 math.
  const auto state_type = rounds && math == at::kFloat && bf16_states(states) ? at::kBFloat16 : math;
  TORCH_CHECK(master.empty() || dtype == at::kHalf || dtype == at::kBFloat16, op,
              ": master weights are for float16 and bfloat16 parameters, not ", dtype);
  int64_t first_unwalkable = -1;
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    TORCH_CHECK(p.device() == scalars.device(), op, ": all tensors of one call must be on ",
                scalars.device(), "; parameter ", i, " is on ", p.device());
    TORCH_CHECK(p.scalar_type() == dtype, op, ": one call takes one parameter dtype, got ", dtype,
                " and ", p.scalar_type());
    const at::Tensor& g = grads[i];
    TORCH_CHECK(g.device() == p.device() && g.sizes() == p.sizes(), op, ": gradient ", i,
                " must match its parameter in device and shape");
    for (const auto& list : states) {
      const at::Tensor& s = list[i];
      TORCH_CHECK(s.device() == p.device() && s.scalar_type() == state_type &&
                      s.sizes() == p.sizes(),
                  op, ": state of parameter ", i, " must be ", state_type,
                  " on its device with its shape");
    }
    if (!master.empty()) {
      const at::Tensor& m = master[i];
      TORCH_CHECK(m.device() == p.device() && m.scalar_type() == at::kFloat &&
                      m.sizes() == p.sizes(),
                  op, ": master weight of parameter ", i,
                  " must be float32 on its device with its shape");
    }
    bool walkable = p.is_non_overlapping_and_dense() && g.scalar_type() == dtype && same_layout(g, p);
    for (const auto& list : states) walkable = walkable && same_layout(list[i], p);
    if (!master.empty()) walkable = walkable && same_layout(master[i], p);
    if (!walkable && first_unwalkable < 0) first_unwalkable = static_cast<int64_t>(i);
  }
  // Last, so that any other error is reported first: what the kernels cannot
  // walk raises NotImplementedError, and the caller steps those parameters
  // another way (lossopt_cuda/_fused.py).
  TORCH_CHECK_NOT_IMPLEMENTED(first_unwalkable < 0, op, ": parameter ", first_unwalkable,
                              " is not dense, or its gradient, state or master weight is laid ",
                              "out otherwise, or its gradient has another dtype (use the foreach ",
                              "path for such tensors)");
}

}  // namespace lossopt
