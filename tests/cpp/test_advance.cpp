// The scalar step (csrc/advance.h with each rule's <Rule>Group, the function
// the one-thread advance kernel runs) against the float64 reference, over
// random hyper-parameters and loss sequences with NaN, +-inf and
// out-of-domain losses, GradScaler's found_inf and scale, a tensor lr, a
// float or double loss: group state, skip count and scalar vector.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>

#include "advance.h"
#include "check.h"
#include "guarded.h"
#include "reference.h"
#include "rules/adalo.h"
#include "rules/adaloss.h"
#include "rules/adaml.h"
#include "tests.h"

namespace host_test {
namespace {

namespace rules = lossopt::rules;

// Under -ffp-contract=fast the compiler may fuse the advance's multiply-adds
// (as nvcc does); the reference never does. Then values may differ in their
// last bits, and the reference continues from the kernel's state.
#if defined(HOST_TEST_FAST_CONTRACT)
constexpr double kUlps = 8;
#else
constexpr double kUlps = 0;
#endif

bool same(double got, double want, double ulps) {
  if (std::isnan(got) || std::isnan(want)) return std::isnan(got) && std::isnan(want);
  if (got == want) return true;
  if (std::isinf(got) || std::isinf(want)) return false;
  const double ulp = std::nextafter(std::fabs(want), INFINITY) - std::fabs(want);
  return std::fabs(got - want) <= ulps * ulp;
}

bool same_f(float got, float want, double ulps) {
  if (std::isnan(got) || std::isnan(want)) return std::isnan(got) && std::isnan(want);
  if (got == want) return true;
  return std::fabs(static_cast<double>(got) - want) <= ulps * ref::float_ulp(want);
}

// Inputs of one sequence: how the loss, lr and scaler arrive.
struct Feed {
  bool loss_is_double, lr_tensor, lr_is_double, scaler, count_skips;
  double lr;
};

struct Memory {  // what the kernel's arguments point to, guarded
  Guarded<double> loss_d{1, 0}, lr_d{1, 0}, out{lossopt::kMaxScalars, 0};
  Guarded<float> loss_f{1, 0}, lr_f{1, 0}, found_inf{1, 0}, grad_scale{1, 0};
  Guarded<int64_t> skips{1, 0};
};

Feed draw_feed(std::mt19937_64& rng) {
  std::bernoulli_distribution coin(0.5);
  std::uniform_real_distribution<double> u(0, 1);
  return Feed{coin(rng), coin(rng), coin(rng), coin(rng), coin(rng), 1e-4 + u(rng)};
}

double draw_loss(std::mt19937_64& rng, double domain_low) {
  std::uniform_int_distribution<int> kind(0, 19);
  std::uniform_real_distribution<double> u(0, 1);
  switch (kind(rng)) {
    case 0: return std::numeric_limits<double>::quiet_NaN();
    case 1: return INFINITY;
    case 2: return -INFINITY;
    case 3: return domain_low - 1 - 5 * u(rng);  // outside AdaLo's domain
    case 4: return domain_low;                   // its boundary
    case 5: return 1e30 * u(rng);
    case 6: return 0.0;
    case 7: return -3 * u(rng);                  // below AdamL's min_loss
    default: return 10 * u(rng) * u(rng);
  }
}

// Fills the kernel's arguments for one step; returns the reference's input.
ref::AdvanceIn feed_step(const Feed& f, double loss, std::mt19937_64& rng, Memory& mem,
                         lossopt::AdvanceArgs& a) {
  std::bernoulli_distribution rare(0.15);
  std::uniform_real_distribution<double> u(0, 1);
  ref::AdvanceIn in{};
  a = lossopt::AdvanceArgs{};
  a.loss_is_double = f.loss_is_double;
  if (f.loss_is_double) {
    mem.loss_d[0] = loss;
    a.loss = mem.loss_d.data();
    in.loss = loss;
  } else {
    mem.loss_f[0] = static_cast<float>(loss);
    a.loss = mem.loss_f.data();
    in.loss = static_cast<float>(loss);
  }
  a.lr = f.lr;
  in.lr = f.lr;
  if (f.lr_tensor) {
    a.lr_is_double = f.lr_is_double;
    if (f.lr_is_double) {
      mem.lr_d[0] = f.lr * 0.5;
      a.lr_tensor = mem.lr_d.data();
      in.lr = f.lr * 0.5;
    } else {
      mem.lr_f[0] = static_cast<float>(f.lr * 0.25);
      a.lr_tensor = mem.lr_f.data();
      in.lr = static_cast<float>(f.lr * 0.25);
    }
  }
  if (f.scaler) {
    const bool overflow = rare(rng);
    mem.found_inf[0] = overflow ? 1.0f : 0.0f;
    mem.grad_scale[0] = std::ldexp(1.0f, static_cast<int>(16 * u(rng))) * (rare(rng) ? 0.75f : 1.0f);
    a.found_inf = mem.found_inf.data();
    a.grad_scale = mem.grad_scale.data();
    in.overflow = overflow;
    in.has_grad_scale = true;
    in.grad_scale = mem.grad_scale[0];
  }
  a.skips = f.count_skips ? mem.skips.data() : nullptr;
  for (int k = 0; k < lossopt::kMaxScalars; ++k) mem.out[k] = -12345.0;
  a.out = mem.out.data();
  return in;
}

// Compares the step's outputs; `pow_ulps` for the entries that depend on a
// power the two compute differently (torch's x*x against std::pow).
void compare_out(const std::string& where, int n_scalars, const Memory& mem, const double* want,
                 int pow_entry, double pow_ulps) {
  for (int k = 0; k < n_scalars; ++k) {
    const double ulps = k == pow_entry ? std::max(pow_ulps, kUlps) : (k < 2 ? 0 : kUlps);
    if (!same(mem.out[k], want[k], ulps)) {
      char values[96];
      std::snprintf(values, sizeof values, ": %.17g vs %.17g", mem.out[k], want[k]);
      fail(where, "scalar " + std::to_string(k) + values);
    }
  }
}

void check_memory(const std::string& where, Memory& mem) {
  const bool ok = mem.loss_d.intact() && mem.loss_f.intact() && mem.lr_d.intact() &&
                  mem.lr_f.intact() && mem.found_inf.intact() && mem.grad_scale.intact() &&
                  mem.skips.intact() && mem.out.intact();
  HOST_CHECK(ok, where, "a guard byte changed");
}

void check_skips(const std::string& where, const Feed& f, const Memory& mem, int64_t want) {
  if (f.count_skips) {
    HOST_CHECK(mem.skips[0] == want, where,
               "skips " + std::to_string(mem.skips[0]) + " vs " + std::to_string(want));
  }
}

void adalo_sequence(std::mt19937_64& rng, int seq) {
  std::uniform_real_distribution<double> u(0, 1);
  const ref::AdaLoHyper h{0.5 + 0.4999 * u(rng), 0.5 + 5 * u(rng), std::pow(10.0, -8 - 4 * u(rng)),
                          u(rng) < 0.5};
  const Feed f = draw_feed(rng);
  Memory mem;
  Guarded<float> ema(1, 0);
  ema[0] = 0.0f;
  ref::AdaLoState rs{0.0f};
  int64_t want_skips = 0;
  mem.skips[0] = 0;
  for (int step = 0; step < 150; ++step) {
    const std::string where = "advance adalo seq " + std::to_string(seq) + " step " + std::to_string(step);
    lossopt::AdvanceArgs a;
    const ref::AdvanceIn in = feed_step(f, draw_loss(rng, -1.0), rng, mem, a);
    a.state[0] = ema.data();
    a.hyper[rules::AdaLoGroup::kBeta2] = h.beta2;
    a.hyper[rules::AdaLoGroup::kKappa] = h.kappa;
    a.hyper[rules::AdaLoGroup::kEps] = h.eps;
    a.hyper[rules::AdaLoGroup::kCompliant] = h.compliant ? 1.0 : 0.0;
    lossopt::advance<rules::AdaLoGroup>(a);
    double want[lossopt::kMaxScalars];
    ref::adalo_advance(in, h, rs, want_skips, want);
    HOST_CHECK(same_f(ema[0], rs.loss_ema, kUlps), where,
               "loss_ema " + std::to_string(ema[0]) + " vs " + std::to_string(rs.loss_ema));
    check_skips(where, f, mem, want_skips);
    compare_out(where, rules::kAdaLoNumScalars, mem, want, -1, 0);
    check_memory(where, mem);
    HOST_CHECK(ema.intact(), where, "state guard");
    rs.loss_ema = ema[0];  // continue from the kernel's state (differs only when contracted)
  }
}

void adaml_sequence(std::mt19937_64& rng, int seq) {
  std::uniform_real_distribution<double> u(0, 1);
  const double phis[] = {0.0, 1.0, 2.0, 3.0, 0.5, 0.1 + 2 * u(rng)};
  const double phi = phis[std::uniform_int_distribution<int>(0, 5)(rng)];
  const ref::AdamLHyper h{0.5 + 0.49 * u(rng), 0.9 + 0.0999 * u(rng), std::pow(10.0, -9 - 3 * u(rng)),
                          0.1 + 3 * u(rng), phi, u(rng) < 0.3 ? 0.0 : -u(rng), u(rng) < 0.5};
  const Feed f = draw_feed(rng);
  Memory mem;
  Guarded<float> step_t(1, 0);
  Guarded<double> loss0_t(1, 0);
  step_t[0] = 0.0f;
  loss0_t[0] = 0.0;
  ref::AdamLState rs{0.0f, 0.0};
  int64_t want_skips = 0;
  mem.skips[0] = 0;
  const double pow_ulps = (phi == 2.0 || phi == 3.0) ? 4 : 0;
  for (int step = 0; step < 150; ++step) {
    const std::string where = "advance adaml seq " + std::to_string(seq) + " step " +
                              std::to_string(step) + " phi " + std::to_string(phi);
    lossopt::AdvanceArgs a;
    const ref::AdvanceIn in = feed_step(f, draw_loss(rng, -1.0), rng, mem, a);
    a.state[0] = step_t.data();
    a.state[1] = loss0_t.data();
    a.hyper[rules::AdamLGroup::kBeta1] = h.beta1;
    a.hyper[rules::AdamLGroup::kBeta2] = h.beta2;
    a.hyper[rules::AdamLGroup::kEps] = h.eps;
    a.hyper[rules::AdamLGroup::kGamma] = h.gamma;
    a.hyper[rules::AdamLGroup::kPhi] = h.phi;
    a.hyper[rules::AdamLGroup::kMinLoss] = h.min_loss;
    a.hyper[rules::AdamLGroup::kNormalize] = h.normalize ? 1.0 : 0.0;
    lossopt::advance<rules::AdamLGroup>(a);
    double want[lossopt::kMaxScalars];
    ref::adaml_advance(in, h, rs, want_skips, want);
    HOST_CHECK(step_t[0] == rs.step, where, "step " + std::to_string(step_t[0]));
    HOST_CHECK(same(loss0_t[0], rs.loss0, kUlps), where, "loss0 " + std::to_string(loss0_t[0]));
    check_skips(where, f, mem, want_skips);
    compare_out(where, rules::kAdamLNumScalars, mem, want, rules::kAdamLGradSqScale, pow_ulps);
    check_memory(where, mem);
    HOST_CHECK(step_t.intact() && loss0_t.intact(), where, "state guard");
    rs.loss0 = loss0_t[0];
  }
}

void adaloss_sequence(std::mt19937_64& rng, int seq) {
  std::uniform_real_distribution<double> u(0, 1);
  const ref::AdaLossHyper h{u(rng) < 0.1 ? 0.0 : 3 * u(rng), u(rng) < 0.5 ? 0.0 : u(rng) - 0.5};
  const Feed f = draw_feed(rng);
  Memory mem;
  Guarded<double> b_sq(1, 0);
  const double b0 = 0.01 + 10 * u(rng);
  b_sq[0] = b0 * b0;
  ref::AdaLossState rs{b0 * b0};
  int64_t want_skips = 0;
  mem.skips[0] = 0;
  for (int step = 0; step < 150; ++step) {
    const std::string where = "advance adaloss seq " + std::to_string(seq) + " step " + std::to_string(step);
    lossopt::AdvanceArgs a;
    const ref::AdvanceIn in = feed_step(f, draw_loss(rng, -1.0), rng, mem, a);
    a.state[0] = b_sq.data();
    a.hyper[rules::AdaLossGroup::kAlpha] = h.alpha;
    a.hyper[rules::AdaLossGroup::kC] = h.c;
    lossopt::advance<rules::AdaLossGroup>(a);
    double want[lossopt::kMaxScalars];
    ref::adaloss_advance(in, h, rs, want_skips, want);
    HOST_CHECK(same(b_sq[0], rs.b_sq, kUlps), where, "b_sq " + std::to_string(b_sq[0]));
    check_skips(where, f, mem, want_skips);
    compare_out(where, rules::kAdaLossNumScalars, mem, want, -1, 0);
    check_memory(where, mem);
    HOST_CHECK(b_sq.intact(), where, "state guard");
    rs.b_sq = b_sq[0];
  }
}

}  // namespace

void run_advance_tests(std::mt19937_64& rng) {
  for (int seq = 0; seq < 40; ++seq) {
    adalo_sequence(rng, seq);
    adaml_sequence(rng, seq);
    adaloss_sequence(rng, seq);
  }
}

}  // namespace host_test
