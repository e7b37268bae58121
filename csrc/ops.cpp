// Operator schemas (two ops per rule) and the Python module shell.
// The CPU implementations of the update ops register in cpu/kernels.cpp (a
// module of their own per instruction set), those of the advance ops in
// cpu/advance.cpp, the CUDA ones in cuda/ops_cuda.cpp (both built into this
// module); the fake (meta) implementations for torch.compile are registered
// from Python (lossopt_cuda/_fused.py).

#include <Python.h>
#include <torch/library.h>

#include <string>

#ifdef LOSSOPT_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#ifndef LOSSOPT_CUDA_ARCHS
#define LOSSOPT_CUDA_ARCHS ""
#endif

namespace {

// "key=value;..." read by lossopt_cuda.build_info() (which finds the CPU
// kernel modules itself).
std::string build_info() {
  std::string info;
#ifdef LOSSOPT_WITH_CUDA
  info += "cuda=1;cuda_version=" + std::to_string(CUDART_VERSION / 1000) + "." +
          std::to_string((CUDART_VERSION % 1000) / 10);
  info += std::string(";cuda_archs=") + LOSSOPT_CUDA_ARCHS;
#else
  info += "cuda=0";
#endif
  return info;
}

}  // namespace

TORCH_LIBRARY(lossopt, m) {
  // <rule>_advance: one step of the group's scalar state from the loss (and
  // torch.amp.GradScaler's found_inf and scale, a tensor lr, the skip count),
  // all on one device; returns the float64 scalar vector the update reads
  // (csrc/advance.h; csrc/rules/<rule>.h lists the state and hyper-parameters).
  for (const char* rule : {"adalo", "adaml", "adaloss"}) {
    const std::string schema =
        std::string(rule) +
        "_advance(Tensor loss, Tensor(a!)[] state, Tensor? found_inf, Tensor? grad_scale, "
        "Tensor? lr_tensor, Tensor(b!)? skips, float[] hyper, float lr) -> Tensor";
    m.def(schema.c_str());  // parsed here: the string need not outlive the call
  }
  // <rule>_: the update of every parameter, in place. scalars: the vector
  // from <rule>_advance on the parameters' device; element 0 is 0 when the
  // step is skipped.
  // master: the float32 master weights of float16/bfloat16 parameters, or an
  // empty list; with them the rule steps the master and the parameter gets its
  // rounded copy, in the same pass.
  // rounding_step (int64, one element), rounding_seed, tensor_ids (one per
  // parameter, in the optimizer's order), round_params: stochastic rounding
  // (csrc/rounding.h, checks.h's Rounding): bfloat16 states, and bfloat16
  // parameters with round_params. Without rounding_step nothing is rounded.
  const std::string rounding =
      ", Tensor? rounding_step=None, int rounding_seed=0, int[] tensor_ids=[], "
      "bool round_params=False) -> ()";
  m.def((
      "adalo_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avg, Tensor(d!)[] master, "
      "Tensor scalars, float beta1, float weight_decay" + rounding).c_str());
  m.def((
      "adaml_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avg, "
      "Tensor(c!)[] exp_avg_sq, Tensor(d!)[] master, Tensor scalars, float beta1, float beta2, "
      "float weight_decay" + rounding).c_str());
  m.def((
      "adaloss_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffer, "
      "Tensor(d!)[] master, Tensor scalars, float momentum, float weight_decay" + rounding).c_str());
  m.def("build_info() -> str", &build_info);
}

// Importing lossopt_cuda._C runs the registrations above; the module itself is empty.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
