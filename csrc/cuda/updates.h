// The three fused updates on a TensorLists (launch.h): validate the lists,
// pick the parameter type and the rule, and run the plan of
// mta::multi_tensor_apply with a `launch` the caller chooses: the CUDA kernel
// launch (kernels.cu) or the host loop of the host test of the kernels
// (tests/cpp/), so both run this same code.
#pragma once

#include <stdexcept>
#include <string>

#include "launch.h"
#include "mta_plan.h"
#include "rule_functor.h"

namespace lossopt::cuda::updates {

template <typename T, typename Rule, bool kMaster, typename S, bool kRoundParams, typename Args,
          typename Launch>
void launch_rule(const TensorLists& lists, const Args& args, int n_scalars, const char* name,
                 Launch&& launch) {
  using Functor = RuleFunctor<T, Rule, Args, kMaster, S, kRoundParams>;
  constexpr int kDepth = Functor::kDepth;
  const RoundingLists& r = lists.rounding;
  // Validate before the empty check, so that malformed lists always throw.
  mta::check_tensor_lists<kDepth>(lists.tensors, lists.numel, name, r.tensor_ids);
  if (Functor::kRounds && (r.step == nullptr || r.tensor_ids.size() != lists.tensors.size())) {
    throw std::invalid_argument(std::string(name) +
                                ": rounding needs a step counter and one tensor id per group");
  }
  bool any = false;
  for (const int64_t n : lists.numel) any = any || n > 0;
  if (!any) return;
  if (lists.scalars == nullptr) {
    throw std::invalid_argument(std::string(name) + ": scalars is null");
  }
  mta::multi_tensor_apply<kDepth>(lists.tensors, lists.numel,
                                  Functor{lists.scalars, n_scalars, args, r.step, r.seed}, name,
                                  launch, r.tensor_ids);
}

// The state storage: float32, or bfloat16 bits (rounded) where asked. A rule
// without state has one storage only.
template <typename T, typename Rule, bool kMaster, bool kRoundParams, typename Args,
          typename Launch>
void launch_states(const TensorLists& lists, const Args& args, int n_scalars, const char* name,
                   Launch&& launch) {
  if constexpr (Rule::kStates > 0) {
    if (lists.rounding.bf16_states) {
      return launch_rule<T, Rule, kMaster, uint16_t, kRoundParams>(lists, args, n_scalars, name,
                                                                  launch);
    }
  }
  launch_rule<T, Rule, kMaster, float, kRoundParams>(lists, args, n_scalars, name, launch);
}

// ParamType -> T; master weights; rounded parameters.
template <template <typename> class Rule, typename Args, typename Launch>
void dispatch(const TensorLists& lists, const Args& args, int n_scalars, const char* name,
              Launch&& launch) {
  using R = Rule<float>;
  // Master weights only come with float16 and bfloat16 parameters, rounded
  // parameters only with bfloat16 ones without master weights (checks.h).
  const bool round_params = lists.rounding.params;
  if (round_params && (lists.param_type != ParamType::kBFloat16 || lists.master)) {
    throw std::invalid_argument(std::string(name) +
                                ": only bfloat16 parameters without master weights are rounded");
  }
  switch (lists.param_type) {
    case ParamType::kFloat32:
      return launch_states<float, R, false, false>(lists, args, n_scalars, name, launch);
    case ParamType::kFloat16:
      return lists.master
                 ? launch_states<Half, R, true, false>(lists, args, n_scalars, name, launch)
                 : launch_states<Half, R, false, false>(lists, args, n_scalars, name, launch);
    case ParamType::kBFloat16:
      if (lists.master) {
        return launch_states<BFloat16, R, true, false>(lists, args, n_scalars, name, launch);
      }
      return round_params
                 ? launch_states<BFloat16, R, false, true>(lists, args, n_scalars, name, launch)
                 : launch_states<BFloat16, R, false, false>(lists, args, n_scalars, name, launch);
  }
  throw std::invalid_argument(std::string(name) + ": unknown parameter type");
}

// `launch` is called as launch(meta, n_blocks, functor); see mta_plan.h.
template <typename Launch>
void adalo(const TensorLists& lists, const rules::AdaLoArgs& args, Launch&& launch) {
  dispatch<rules::AdaLo>(lists, args, rules::kAdaLoNumScalars, "lossopt adalo", launch);
}

template <typename Launch>
void adaml(const TensorLists& lists, const rules::AdamLArgs& args, Launch&& launch) {
  dispatch<rules::AdamL>(lists, args, rules::kAdamLNumScalars, "lossopt adaml", launch);
}

template <typename Launch>
void adaloss(const TensorLists& lists, const rules::AdaLossArgs& args, bool momentum,
             Launch&& launch) {
  if (momentum) {
    dispatch<rules::AdaLossMomentum>(lists, args, rules::kAdaLossNumScalars, "lossopt adaloss",
                                     launch);
  } else {
    dispatch<rules::AdaLossPlain>(lists, args, rules::kAdaLossNumScalars, "lossopt adaloss",
                                  launch);
  }
}

}  // namespace lossopt::cuda::updates
