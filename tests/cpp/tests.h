// The sections of the host test of the CUDA kernels (main.cpp runs them).
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "cuda/launch.h"
#include "host_launch.h"

namespace host_test {

enum class Rule { kAdaLo, kAdamL, kAdaLoss, kAdaLossMomentum };

// One call of a fused update: the tensors' sizes and layout, and the step.
struct UpdateCase {
  std::string label;
  std::vector<int64_t> sizes;
  Order order = Order::kForward;
  double inv_scale = 1.0;  // 1 / GradScaler's scale
  bool decay = false;      // weight decay on
  bool valid = true;       // false: a skipped step, every other scalar NaN
  int misaligned_slot = -1;  // 0 param, 1 grad, 2.. states, then master
  int misalign_by = 0;       // elements into the allocation
  // Stochastic rounding (csrc/rounding.h): bfloat16 states, and bfloat16
  // parameters written rounded (no master weights).
  bool bf16_states = false;
  bool round_params = false;
};

// test_updates.cpp: the update against the float64 reference.
void run_update_case(Rule rule, lossopt::cuda::ParamType type, bool master, const UpdateCase& c,
                     std::mt19937_64& rng);
int update_states(Rule rule);

// test_coverage.cpp: a counting rule through the real functor and launcher.
void run_coverage(const std::vector<int64_t>& sizes, Order order, bool half_master,
                  std::mt19937_64& rng);

// test_plan.cpp: the plan alone (fake addresses), and refused lists.
void run_plan_tests(std::mt19937_64& rng);
void run_refusal_tests();

// test_advance.cpp: the scalar step against the float64 reference.
void run_advance_tests(std::mt19937_64& rng);

// test_nvrtc_launch.cpp: the NVRTC build's launcher (csrc/cuda/nvrtc_launch.cpp)
// against a fake CUDA runtime, each launch compared with the plan run directly.
void run_nvrtc_launch_tests(std::mt19937_64& rng);

}  // namespace host_test
