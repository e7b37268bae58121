// CPU implementations of the <rule>_advance ops: the scalar step (advance.h)
// run on the host, straight on the tensors' memory. Part of lossopt_cuda._C,
// so the schemas and this code are always built together.

#include <torch/library.h>

#include "../advance_op.h"
#include "../rules/adalo.h"
#include "../rules/adaloss.h"
#include "../rules/adaml.h"

namespace lossopt::cpu {
namespace {

template <typename Group>
at::Tensor advance_cpu(const at::Tensor& loss, at::TensorList state,
                       const std::optional<at::Tensor>& found_inf,
                       const std::optional<at::Tensor>& grad_scale,
                       const std::optional<at::Tensor>& lr_tensor,
                       const std::optional<at::Tensor>& skips, at::ArrayRef<double> hyper,
                       double lr) {
  AdvanceArgs args;
  at::Tensor out = prepare_advance<Group>(loss, state, found_inf, grad_scale, lr_tensor, skips,
                                          hyper, lr, args);
  advance<Group>(args);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lossopt, CPU, m) {
  m.impl("adalo_advance", &advance_cpu<rules::AdaLoGroup>);
  m.impl("adaml_advance", &advance_cpu<rules::AdamLGroup>);
  m.impl("adaloss_advance", &advance_cpu<rules::AdaLossGroup>);
}

}  // namespace lossopt::cpu
