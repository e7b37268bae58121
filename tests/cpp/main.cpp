// The host test of the CUDA kernels: the kernels' own code (csrc/cuda/
// mta_plan.h, rule_functor.h, updates.h; csrc/advance.h and the rules),
// compiled by the host compiler against the CUDA toolkit's headers only and
// run on the CPU, every block and every thread of every planned launch,
// against an independent float64 reference (reference.cpp). No torch, no
// GPU, no CUDA runtime. Built and run by tests/test_kernels_host.py.
//
// Usage: kernels_host_test [seed] [numerics] [stop]. "numerics" runs only
// the sections whose results depend on floating-point contraction (the plan
// and the coverage do not); "stop" exits at the first failed check. Exit
// status 0 when every check passed.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "cuda/mta_plan.h"
#include "tests.h"

namespace {

using host_test::Order;
using host_test::Rule;
using host_test::UpdateCase;
using lossopt::cuda::ParamType;
namespace mta = lossopt::cuda::mta;

constexpr int64_t C = mta::kChunkSize;
constexpr int64_t B = mta::kBlockSize;
constexpr int64_t I = mta::kILP;

// Parameter storage: type and master weights, and stochastic rounding
// (csrc/rounding.h): bfloat16 states, bfloat16 parameters written rounded.
struct TypeConfig {
  ParamType type;
  bool master;
  bool bf16_states = false, round_params = false;
};
const TypeConfig kTypes[] = {{ParamType::kFloat32, false},
                             {ParamType::kFloat16, false},
                             {ParamType::kFloat16, true},
                             {ParamType::kBFloat16, false},
                             {ParamType::kBFloat16, true},
                             {ParamType::kFloat32, false, true, false},
                             {ParamType::kFloat16, false, true, false},
                             {ParamType::kFloat16, true, true, false},
                             {ParamType::kBFloat16, false, true, false},
                             {ParamType::kBFloat16, true, true, false},
                             {ParamType::kBFloat16, false, false, true},
                             {ParamType::kBFloat16, false, true, true}};

// A case of `label` on this storage.
UpdateCase storage_case(const std::string& label, const TypeConfig& tc) {
  UpdateCase c;
  c.label = (tc.bf16_states || tc.round_params ? "rounded, " : "") + label;
  c.bf16_states = tc.bf16_states;
  c.round_params = tc.round_params;
  return c;
}

const Rule kRules[] = {Rule::kAdaLo, Rule::kAdamL, Rule::kAdaLoss, Rule::kAdaLossMomentum};
const Order kOrders[] = {Order::kForward, Order::kReverse, Order::kShuffled};

std::vector<int64_t> edge_sizes(std::mt19937_64& rng) {
  std::uniform_int_distribution<int64_t> r(1, 3 * C);
  return {0, 1, 3, I - 1, I + 1, B - 1, B, B + 1, B * I - 1, B * I + 1,
          C - 1, C, C + 1, 2 * C + 7, 3 * C, r(rng), r(rng)};
}

// Tensors over the per-launch tensor limit of every depth, some empty.
std::vector<int64_t> many_sizes(std::mt19937_64& rng) {
  std::uniform_int_distribution<int64_t> r(0, 3000);
  std::vector<int64_t> s;
  for (int i = 0; i < 2 * 110 + 7; ++i) s.push_back(i % 17 == 0 ? 0 : r(rng));
  return s;
}

// More chunks than the block limit, the long group starting mid-launch.
std::vector<int64_t> long_sizes() {
  return {7, 3 * C + 5, mta::kDepthToMaxBlocks[0] * C + 1001, 13};
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void section(const char* name, std::chrono::steady_clock::time_point& t0, long& before) {
  const long now = host_test::failures().count;
  std::printf("%-44s %6.1f s  %s\n", name, seconds_since(t0), now == before ? "ok" : "FAILED");
  std::fflush(stdout);
  before = now;
  t0 = std::chrono::steady_clock::now();
}

int finish(std::chrono::steady_clock::time_point start, uint64_t seed) {
  const long failed = host_test::failures().count;
  std::printf("%s: %ld failed checks in %.1f s (seed %llu)\n", failed ? "FAILED" : "PASSED", failed,
              seconds_since(start), static_cast<unsigned long long>(seed));
  return failed ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : std::random_device{}();
  bool numerics_only = false;
  for (int a = 2; a < argc; ++a) {
    numerics_only = numerics_only || std::string(argv[a]) == "numerics";
    if (std::string(argv[a]) == "stop") host_test::failures().stop_at_first = true;
  }
  std::printf("kernels_host_test seed %llu\n", static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  auto t0 = std::chrono::steady_clock::now();
  const auto start = t0;
  long before = 0;

  host_test::run_plan_tests(rng);
  host_test::run_refusal_tests();
  section("plan (fake addresses) and refused lists", t0, before);

  host_test::run_advance_tests(rng);
  section("advance (scalar step)", t0, before);

  if (!numerics_only) {  // equal to the bit with the direct plan in either variant
    host_test::run_nvrtc_launch_tests(rng);
    section("NVRTC launcher (fake CUDA runtime)", t0, before);
  }

  // Every rule, storage and order on the edge sizes, with the gradient scale
  // and weight decay varied; then a skipped step.
  for (const Rule rule : kRules) {
    for (const TypeConfig& tc : kTypes) {
      // A rule without state rounds only its parameters.
      if (tc.bf16_states && !tc.round_params && host_test::update_states(rule) == 0) continue;
      int k = 0;
      for (const Order order : kOrders) {
        UpdateCase c = storage_case("edge sizes", tc);
        c.sizes = edge_sizes(rng);
        c.order = order;
        c.inv_scale = k == 0 ? 1.0 : k == 1 ? 1.0 / 1024 : 1.0 / 3.0;
        c.decay = k != 0;
        host_test::run_update_case(rule, tc.type, tc.master, c, rng);
        ++k;
      }
      UpdateCase skip = storage_case("skipped step", tc);
      skip.sizes = edge_sizes(rng);
      skip.valid = false;
      skip.decay = true;
      host_test::run_update_case(rule, tc.type, tc.master, skip, rng);
    }
  }
  section("updates: edge sizes, 3 orders, skipped step", t0, before);

  // Each tensor of a group 1 or 2 elements into its allocation, in turn: the
  // scalar path.
  for (const Rule rule : kRules) {
    for (const TypeConfig& tc : kTypes) {
      if (tc.bf16_states && !tc.round_params && host_test::update_states(rule) == 0) continue;
      const int slots = 2 + host_test::update_states(rule) + (tc.master ? 1 : 0);
      for (int slot = 0; slot < slots; ++slot) {
        for (int by = 1; by <= 2; ++by) {
          UpdateCase c = storage_case("slot " + std::to_string(slot) + " misaligned by " + std::to_string(by), tc);
          c.sizes = {1, 3, I + 1, B + 1, C + 1, 70001};
          c.order = by == 1 ? Order::kShuffled : Order::kReverse;
          c.misaligned_slot = slot;
          c.misalign_by = by;
          c.decay = true;
          c.inv_scale = 0.5;
          host_test::run_update_case(rule, tc.type, tc.master, c, rng);
        }
      }
    }
  }
  section("updates: misaligned tensors (scalar path)", t0, before);


  if (numerics_only) return finish(start, seed);

  // Groups that straddle launches: over the tensor limit (every rule), over
  // the block limit (the shallowest and the deepest group; the plan does not
  // depend on the rule, and the counting rule below covers every order).
  for (const Rule rule : kRules) {
    UpdateCase c;
    c.label = "over the tensor limit";
    c.sizes = many_sizes(rng);
    c.order = Order::kShuffled;
    c.decay = true;
    host_test::run_update_case(rule, ParamType::kFloat32, false, c, rng);
    host_test::run_update_case(rule, ParamType::kBFloat16, true, c, rng);
    // Each slot's tensor id must follow its group into the next launch.
    c.bf16_states = true;
    c.round_params = true;
    host_test::run_update_case(rule, ParamType::kBFloat16, false, c, rng);
  }
  {
    UpdateCase c{"rounded, over the block limit", long_sizes(), Order::kShuffled, 1.0, true};
    c.bf16_states = true;
    c.round_params = true;
    host_test::run_update_case(Rule::kAdamL, ParamType::kBFloat16, false, c, rng);
  }
  host_test::run_update_case(Rule::kAdaLoss, ParamType::kFloat32, false,
                             UpdateCase{"over the block limit", long_sizes(), Order::kForward,
                                        1.0, true},
                             rng);
  host_test::run_update_case(Rule::kAdamL, ParamType::kFloat16, true,
                             UpdateCase{"over the block limit", long_sizes(), Order::kReverse,
                                        1.0 / 8, true},
                             rng);
  section("updates: groups straddling launches", t0, before);

  for (const Order order : kOrders) {
    host_test::run_coverage(long_sizes(), order, false, rng);
    host_test::run_coverage(many_sizes(rng), order, false, rng);
    host_test::run_coverage(edge_sizes(rng), order, true, rng);
  }
  host_test::run_coverage(long_sizes(), Order::kShuffled, true, rng);
  section("exactly once (counting rule)", t0, before);

  return finish(start, seed);
}
