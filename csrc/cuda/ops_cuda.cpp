// CUDA implementations of the ops: argument checks, then the tensors'
// addresses handed to the kernels (kernels.cu) on the current stream.
// Compiled by the host compiler: the torch headers stay out of nvcc.

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <initializer_list>
#include <optional>
#include <stdexcept>

#include "../advance_op.h"
#include "../checks.h"
#include "launch.h"

namespace lossopt::cuda {
namespace {

TensorLists make_lists(const char* op, at::TensorList params, at::TensorList grads,
                       std::initializer_list<at::TensorList> states, at::TensorList master,
                       const at::Tensor& scalars, int64_t n_scalars, const Rounding& rounding) {
  check_lists(op, params, grads, states, master, scalars, n_scalars, &rounding);
  TensorLists lists;
  if (rounding.step.has_value()) {
    // Stochastic rounding (csrc/rounding.h): the kernel reads the counter on
    // the device, so no value crosses to the host.
    lists.rounding.step = rounding.step->data_ptr<int64_t>();
    lists.rounding.seed = static_cast<uint64_t>(rounding.seed);
    lists.rounding.params = rounding.params;
    lists.rounding.bf16_states = bf16_states(states);
    for (const int64_t id : rounding.tensor_ids) {
      lists.rounding.tensor_ids.push_back(static_cast<uint32_t>(id));
    }
  }
  lists.param_type = ParamType::kFloat32;
  lists.master = !master.empty();
  if (!params.empty()) {
    switch (params[0].scalar_type()) {
      case at::kFloat: lists.param_type = ParamType::kFloat32; break;
      case at::kHalf: lists.param_type = ParamType::kFloat16; break;
      case at::kBFloat16: lists.param_type = ParamType::kBFloat16; break;
      default: TORCH_CHECK(false, op, ": CUDA kernels take float32, float16 or bfloat16 parameters, got ",
                           params[0].scalar_type());
    }
  }
  lists.scalars = scalars.data_ptr<double>();
  lists.stream = c10::cuda::getCurrentCUDAStream(scalars.device().index()).stream();
  for (size_t i = 0; i < params.size(); ++i) {
    std::vector<void*> row{params[i].data_ptr(), grads[i].data_ptr()};
    for (const auto& list : states) row.push_back(list[i].data_ptr());
    if (!master.empty()) row.push_back(master[i].data_ptr());
    lists.tensors.push_back(std::move(row));
    lists.numel.push_back(params[i].numel());
  }
  return lists;
}

void adalo_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avg,
                at::TensorList master, const at::Tensor& scalars, double beta1,
                double weight_decay, const std::optional<at::Tensor>& rounding_step,
                int64_t rounding_seed, at::IntArrayRef tensor_ids, bool round_params) {
  const c10::cuda::CUDAGuard guard(scalars.device());
  const auto lists = make_lists("lossopt::adalo_", params, grads, {exp_avg}, master, scalars,
                                rules::kAdaLoNumScalars,
                                Rounding{rounding_step, rounding_seed, tensor_ids, round_params});
  adalo(lists, rules::AdaLoArgs{beta1, weight_decay});
}

void adaml_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avg,
                at::TensorList exp_avg_sq, at::TensorList master, const at::Tensor& scalars,
                double beta1, double beta2, double weight_decay,
                const std::optional<at::Tensor>& rounding_step, int64_t rounding_seed,
                at::IntArrayRef tensor_ids, bool round_params) {
  const c10::cuda::CUDAGuard guard(scalars.device());
  const auto lists = make_lists("lossopt::adaml_", params, grads, {exp_avg, exp_avg_sq}, master,
                                scalars, rules::kAdamLNumScalars,
                                Rounding{rounding_step, rounding_seed, tensor_ids, round_params});
  adaml(lists, rules::AdamLArgs{beta1, beta2, weight_decay});
}

void adaloss_cuda(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffer,
                  at::TensorList master, const at::Tensor& scalars, double momentum,
                  double weight_decay, const std::optional<at::Tensor>& rounding_step,
                  int64_t rounding_seed, at::IntArrayRef tensor_ids, bool round_params) {
  const c10::cuda::CUDAGuard guard(scalars.device());
  const bool with_momentum = !momentum_buffer.empty();
  const Rounding rounding{rounding_step, rounding_seed, tensor_ids, round_params};
  const auto lists =
      with_momentum ? make_lists("lossopt::adaloss_", params, grads, {momentum_buffer}, master,
                                 scalars, rules::kAdaLossNumScalars, rounding)
                    : make_lists("lossopt::adaloss_", params, grads, {}, master, scalars,
                                 rules::kAdaLossNumScalars, rounding);
  adaloss(lists, rules::AdaLossArgs{momentum, weight_decay}, with_momentum);
}

template <typename Group>
at::Tensor advance_cuda(const at::Tensor& loss, at::TensorList state,
                        const std::optional<at::Tensor>& found_inf,
                        const std::optional<at::Tensor>& grad_scale,
                        const std::optional<at::Tensor>& lr_tensor,
                        const std::optional<at::Tensor>& skips, at::ArrayRef<double> hyper,
                        double lr) {
  TORCH_CHECK(!state.empty(), Group::kOp, ": no group state");
  const c10::cuda::CUDAGuard guard(state[0].device());
  AdvanceArgs args;
  at::Tensor out = prepare_advance<Group>(loss, state, found_inf, grad_scale, lr_tensor, skips,
                                          hyper, lr, args);
  launch_advance<Group>(args, c10::cuda::getCurrentCUDAStream(state[0].device().index()).stream());
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lossopt, CUDA, m) {
  m.impl("adalo_", &adalo_cuda);
  m.impl("adaml_", &adaml_cuda);
  m.impl("adaloss_", &adaloss_cuda);
  m.impl("adalo_advance", &advance_cuda<rules::AdaLoGroup>);
  m.impl("adaml_advance", &advance_cuda<rules::AdamLGroup>);
  m.impl("adaloss_advance", &advance_cuda<rules::AdaLossGroup>);
}

#if defined(LOSSOPT_NVRTC_HOST)
// nvrtc_add_cubin(arch, path): the kernels NVRTC compiled for GPUs of compute
// capability arch / 10 . arch % 10 (lossopt_cuda/_kernels.py calls it once
// per architecture before the first step).
// (Its std::runtime_error reaches Python as a RuntimeError, as the launches' do.)
void add_cubin(int64_t arch, const std::string& path) { nvrtc_add_cubin(static_cast<int>(arch), path); }

TORCH_LIBRARY_FRAGMENT(lossopt, m) {
  m.def("nvrtc_add_cubin(int arch, str path) -> ()", &add_cubin);
}
#endif

}  // namespace lossopt::cuda
