// The fused updates (csrc/cuda/updates.h and rule_functor.h, the code the GPU
// runs) executed on the host by HostLaunch, against the float64 reference.
// With stochastic rounding (bfloat16 states, rounded bfloat16 parameters)
// every rounded value must also be one of the two bfloat16 neighbours of the
// reference, and, without contraction, equal to the bit what a plain loop
// over tensors and elements writes with the rounding header's bits of
// (seed, step, tensor id, stream, element): the driver's bookkeeping (keys,
// streams, offsets, ids carried across launches) checked element by element.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "check.h"
#include "cuda/updates.h"
#include "guarded.h"
#include "host_launch.h"
#include "reference.h"
#include "tests.h"

namespace host_test {
namespace {

namespace mta = lossopt::cuda::mta;
using lossopt::cuda::ParamType;
using lossopt::cuda::TensorLists;

// ---------------------------------------------------------------- types

double decode(float x) { return x; }
double decode(__half x) {
  uint16_t b;
  std::memcpy(&b, &x, 2);
  return ref::half_bits_to_double(b);
}
double decode(__nv_bfloat16 x) {
  uint16_t b;
  std::memcpy(&b, &x, 2);
  return ref::bfloat16_bits_to_double(b);
}

// A 16-bit type from its bits.
template <typename T>
T of_bits(uint16_t bits) {
  T t;
  std::memcpy(static_cast<void*>(&t), &bits, 2);
  return t;
}

template <typename T>
T encode(float x) {
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else {
    return of_bits<T>(std::is_same_v<T, __half> ? ref::float_to_half_bits(x)
                                                : ref::float_to_bfloat16_bits(x));
  }
}

template <typename T>
double ulp_of(double x) {
  if constexpr (std::is_same_v<T, float>) return ref::float_ulp(x);
  if constexpr (std::is_same_v<T, __half>) return ref::half_ulp(x);
  return ref::bfloat16_ulp(x);
}

template <typename T>
ParamType param_type() {
  if constexpr (std::is_same_v<T, float>) return ParamType::kFloat32;
  if constexpr (std::is_same_v<T, __half>) return ParamType::kFloat16;
  return ParamType::kBFloat16;
}

template <typename T>
const char* type_name() {
  if constexpr (std::is_same_v<T, float>) return "float32";
  if constexpr (std::is_same_v<T, __half>) return "float16";
  return "bfloat16";
}

const char* rule_name(Rule r) {
  switch (r) {
    case Rule::kAdaLo: return "adalo";
    case Rule::kAdamL: return "adaml";
    case Rule::kAdaLoss: return "adaloss";
    case Rule::kAdaLossMomentum: return "adaloss+momentum";
  }
  return "?";
}

int n_states(Rule r) {
  return r == Rule::kAdamL ? 2 : r == Rule::kAdaLoss ? 0 : 1;
}

// ---------------------------------------------------------------- one run

// Hyper-parameters and the scalar vector of one update.
struct Scalars {
  std::vector<double> vec;  // [valid, 1/grad_scale, rule...]
  double beta1 = 0.9, beta2 = 0.999, momentum = 0.9, weight_decay = 0.0;
};

Scalars draw_scalars(Rule rule, const UpdateCase& c, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  Scalars s;
  s.beta1 = 0.5 + 0.49 * u(rng);
  s.beta2 = 0.9 + 0.0999 * u(rng);
  s.momentum = 0.5 + 0.45 * u(rng);
  s.weight_decay = c.decay ? 0.01 + 0.2 * u(rng) : 0.0;
  s.vec = {1.0, c.inv_scale};
  switch (rule) {
    case Rule::kAdaLo: s.vec.push_back(1e-3 + 0.3 * u(rng)); break;  // lr_t
    case Rule::kAdamL: {
      const double k = 1 + std::floor(20 * u(rng));
      s.vec.push_back(1e-3 + 0.1 * u(rng));                 // lr
      s.vec.push_back((1 - s.beta2) / (0.05 + 3 * u(rng)));  // (1 - beta2) s
      s.vec.push_back(1e-8 * (0.01 + 3 * u(rng)));           // eps l
      s.vec.push_back(1 - std::pow(s.beta1, k));
      s.vec.push_back(1 - std::pow(s.beta2, k));
      break;
    }
    case Rule::kAdaLoss:
    case Rule::kAdaLossMomentum:
      s.vec.push_back(1e-3 + 0.5 * u(rng));  // lr
      s.vec.push_back(0.5 + 10 * u(rng));    // b
      break;
  }
  if (!c.valid) {  // a skipped step: every scalar but the flag is garbage
    for (size_t k = 1; k < s.vec.size(); ++k) s.vec[k] = NAN;
    s.vec[0] = 0.0;
  }
  return s;
}

// What a float32 scalar of the vector is, as the kernel reads it.
double f32(double x) { return static_cast<float>(x); }

ref::Element reference(Rule rule, const Scalars& s, double p, double g, const double* st) {
  const std::vector<double>& v = s.vec;
  switch (rule) {
    case Rule::kAdaLo: return ref::adalo(p, g, st[0], f32(v[2]), s.beta1, s.weight_decay);
    case Rule::kAdamL:
      return ref::adaml(p, g, st[0], st[1], f32(v[2]), f32(v[3]), f32(v[4]), f32(v[5]),
                        f32(v[6]), s.beta1, s.beta2, s.weight_decay);
    case Rule::kAdaLoss:
      return ref::adaloss(p, g, 0.0, false, f32(v[2]), f32(v[3]), s.momentum, s.weight_decay);
    case Rule::kAdaLossMomentum:
      return ref::adaloss(p, g, st[0], true, f32(v[2]), f32(v[3]), s.momentum, s.weight_decay);
  }
  return {};
}

void call_update(Rule rule, const TensorLists& lists, const Scalars& s, const HostLaunch& launch) {
  namespace rules = lossopt::rules;
  namespace updates = lossopt::cuda::updates;
  switch (rule) {
    case Rule::kAdaLo:
      return updates::adalo(lists, rules::AdaLoArgs{s.beta1, s.weight_decay}, launch);
    case Rule::kAdamL:
      return updates::adaml(lists, rules::AdamLArgs{s.beta1, s.beta2, s.weight_decay}, launch);
    case Rule::kAdaLoss:
      return updates::adaloss(lists, rules::AdaLossArgs{0.0, s.weight_decay}, false, launch);
    case Rule::kAdaLossMomentum:
      return updates::adaloss(lists, rules::AdaLossArgs{s.momentum, s.weight_decay}, true, launch);
  }
}

// The tensors of one parameter: param and grad (T), states (S: float, or
// bfloat16 bits) and master (float).
template <typename T, typename S>
struct Group {
  std::unique_ptr<Guarded<T>> p, g;
  std::vector<std::unique_ptr<Guarded<S>>> st;
  std::unique_ptr<Guarded<float>> mw;
  std::vector<T> p0, g0;
  std::vector<std::vector<S>> st0;
  std::vector<float> mw0;
};

double state_value(float x) { return x; }
double state_value(uint16_t bits) { return ref::bfloat16_bits_to_double(bits); }
template <typename S>
S state_of(float x) {
  if constexpr (std::is_same_v<S, float>) return x;
  else return ref::float_to_bfloat16_bits(x);
}

#if !defined(HOST_TEST_FAST_CONTRACT)  // the bit-for-bit check (below) needs no contraction
// The rule's float32 step of one element (csrc/rules/, the kernels' own
// arithmetic): what a plain loop computes before it stores anything.
void rule_step(Rule rule, const Scalars& s, float& p, float g, float* st) {
  namespace rules = lossopt::rules;
  float sc[lossopt::kMaxScalars] = {};
  for (size_t k = 0; k < s.vec.size(); ++k) sc[k] = static_cast<float>(s.vec[k]);
  switch (rule) {
    case Rule::kAdaLo: return rules::AdaLo<float>(sc, rules::AdaLoArgs{s.beta1, s.weight_decay})(p, g, st);
    case Rule::kAdamL:
      return rules::AdamL<float>(sc, rules::AdamLArgs{s.beta1, s.beta2, s.weight_decay})(p, g, st);
    case Rule::kAdaLoss:
      return rules::AdaLossPlain<float>(sc, rules::AdaLossArgs{0.0, s.weight_decay})(p, g, st);
    case Rule::kAdaLossMomentum:
      return rules::AdaLossMomentum<float>(sc, rules::AdaLossArgs{s.momentum, s.weight_decay})(p, g, st);
  }
}

// The random bits of one write (csrc/rounding.h), from the element's index in
// its tensor alone: stream k is state k, stream n_states the parameter.
uint32_t write_bits(const lossopt::cuda::RoundingLists& r, uint64_t step, size_t tensor,
                    int stream, uint64_t index) {
  namespace rd = lossopt::rounding;
  const uint32_t key = rd::tensor_key(r.seed, step, r.tensor_ids[tensor],
                                      rd::stream_pair(static_cast<uint32_t>(stream)));
  return rd::stream_bits(rd::element_bits(rd::block_key(key, index), index),
                         static_cast<uint32_t>(stream));
}

#endif

template <typename T, typename S>
void run_typed(Rule rule, bool master, const UpdateCase& c, std::mt19937_64& rng) {
  const int ns = n_states(rule);
  const bool rounds_states = std::is_same_v<S, uint16_t> && ns > 0;
  const bool rounds = rounds_states || c.round_params;
  const std::string where = std::string(rule_name(rule)) + " " + type_name<T>() +
                            (master ? "+master" : "") + (c.round_params ? "+rounded" : "") +
                            (std::is_same_v<S, uint16_t> ? " bf16 state" : "") + " " + c.label +
                            " order=" + order_name(c.order);
  const Scalars s = draw_scalars(rule, c, rng);
  std::uniform_real_distribution<float> value(-2.0f, 2.0f);  // cheap; sign and scale matter  // cheap; the sign and scale matter
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);

  // slot: 0 param, 1 grad, 2.. states, then master
  auto offset = [&](int slot) { return slot == c.misaligned_slot ? c.misalign_by : 0; };
  std::vector<Group<T, S>> groups(c.sizes.size());
  TensorLists lists;
  lists.param_type = param_type<T>();
  lists.master = master;
  lists.stream = nullptr;
  for (size_t t = 0; t < c.sizes.size(); ++t) {
    const size_t n = static_cast<size_t>(c.sizes[t]);
    Group<T, S>& gr = groups[t];
    gr.p = std::make_unique<Guarded<T>>(n, offset(0));
    gr.g = std::make_unique<Guarded<T>>(n, offset(1));
    for (int k = 0; k < ns; ++k) gr.st.push_back(std::make_unique<Guarded<S>>(n, offset(2 + k)));
    if (master) gr.mw = std::make_unique<Guarded<float>>(n, offset(2 + ns));
    const float g_scale = 1.0f / static_cast<float>(c.inv_scale);  // as a scaled gradient
    for (size_t i = 0; i < n; ++i) {
      const float pv = value(rng);
      (*gr.p)[i] = encode<T>(pv);
      // A few larger gradients; scaled ones stay finite in float16.
      (*gr.g)[i] = encode<T>(value(rng) * (uniform(rng) < 0.1f ? 8.0f : 1.0f) * g_scale);
      if (master) (*gr.mw)[i] = pv;
      for (int k = 0; k < ns; ++k) {
        // AdamL's second moment is >= 0; the other states are signed.
        const float v = value(rng) * 0.3f;
        (*gr.st[k])[i] = state_of<S>((rule == Rule::kAdamL && k == 1) ? v * v : v);
      }
    }
    gr.p0 = gr.p->copy();
    gr.g0 = gr.g->copy();
    for (int k = 0; k < ns; ++k) gr.st0.push_back(gr.st[k]->copy());
    if (master) gr.mw0 = gr.mw->copy();
    std::vector<void*> row{gr.p->data(), gr.g->data()};
    for (int k = 0; k < ns; ++k) row.push_back(gr.st[k]->data());
    if (master) row.push_back(gr.mw->data());
    lists.tensors.push_back(row);
    lists.numel.push_back(c.sizes[t]);
  }
  // The scalar vector, guarded too: the kernel must not read past it.
  Guarded<double> scalars(s.vec.size(), 0);
  for (size_t k = 0; k < s.vec.size(); ++k) scalars[k] = s.vec[k];
  lists.scalars = scalars.data();
  // Rounding: the step counter in (guarded) memory the kernel reads, a full
  // 64-bit seed and step, and tensor ids anywhere in 32 bits.
  Guarded<int64_t> step(1, 0);
  step[0] = static_cast<int64_t>(rng() >> (rng() % 2 == 0 ? 0 : 40));
  if (rounds) {
    lists.rounding.step = step.data();
    lists.rounding.seed = rng();
    lists.rounding.bf16_states = rounds_states;
    lists.rounding.params = c.round_params;
    for (size_t t = 0; t < c.sizes.size(); ++t) {
      lists.rounding.tensor_ids.push_back(static_cast<uint32_t>(rng()));
    }
  }

  int launches = 0;
  call_update(rule, lists, s, HostLaunch{c.order, rng(), &launches});

  HOST_CHECK(scalars.intact() && step.intact(), where, "the guards of the scalars or the step changed");
  // Bound on a float32 computation's error relative to the magnitude of what
  // went into it: a handful of roundings (contracted or not).
  const double tol = 16 * std::ldexp(1.0, -24);
  long bad = 0;
  for (size_t t = 0; t < groups.size(); ++t) {
    Group<T, S>& gr = groups[t];
    const std::string at = where + " tensor " + std::to_string(t) + " (n=" +
                           std::to_string(c.sizes[t]) + ")";
    bool guards = gr.p->intact() && gr.g->intact() && (!master || gr.mw->intact());
    for (int k = 0; k < ns; ++k) guards = guards && gr.st[k]->intact();
    HOST_CHECK(guards, at, "a guard byte around an allocation changed");
    HOST_CHECK(gr.g->same_bytes(gr.g0), at, "the gradient changed");
    if (!c.valid) {
      bool same = gr.p->same_bytes(gr.p0) && (!master || gr.mw->same_bytes(gr.mw0));
      for (int k = 0; k < ns; ++k) same = same && gr.st[k]->same_bytes(gr.st0[k]);
      HOST_CHECK(same, at, "a skipped step (valid = 0) changed memory");
      continue;
    }
    for (size_t i = 0; i < static_cast<size_t>(c.sizes[t]) && bad < 5; ++i) {
      const double p_in = master ? gr.mw0[i] : decode(gr.p0[i]);
      // The kernel multiplies the gradient by the float32 1/scale.
      const double g_in = decode(gr.g0[i]) * f32(c.inv_scale);
      double st_in[2] = {0, 0};
      for (int k = 0; k < ns; ++k) st_in[k] = state_value(gr.st0[k][i]);
      const ref::Element e = reference(rule, s, p_in, g_in, st_in);
      auto close = [&](double got, double want, double mag) {
        return std::fabs(got - want) <= tol * mag + 1e-38;
      };
      // A stochastically rounded value: a bfloat16 neighbour of the float32
      // result, so at most one bfloat16 ulp from it.
      auto near = [&](double got, double want, double mag) {
        const double err = tol * mag;
        return std::fabs(got - want) <= err + ref::bfloat16_ulp(std::fabs(want) + err) + 1e-38;
      };
      std::string what;
      for (int k = 0; k < ns; ++k) {
        const double got = state_value((*gr.st[k])[i]);
        const double mag = e.state_mag[k] + std::fabs(e.state[k]);
        if (!(rounds_states ? near(got, e.state[k], mag) : close(got, e.state[k], mag))) {
          what += " state" + std::to_string(k) + " " + std::to_string(got) + " vs " +
                  std::to_string(e.state[k]);
        }
      }
      const double p_out = decode((*gr.p)[i]);
      if (master) {
        const double mw_out = (*gr.mw)[i];
        if (!close(mw_out, e.p, e.p_mag + std::fabs(e.p))) {
          what += " master " + std::to_string(mw_out) + " vs " + std::to_string(e.p);
        }
        // The parameter is the master rounded to T, to the bit.
        const T want = encode<T>((*gr.mw)[i]);
        if (std::memcmp(&want, &(*gr.p)[i], sizeof(T)) != 0) what += " param != rounded master";
      } else if (c.round_params) {
        if (!near(p_out, e.p, e.p_mag + std::fabs(e.p))) {
          what += " rounded param " + std::to_string(p_out) + " vs " + std::to_string(e.p);
        }
      } else {
        // The float32 result (within tol of the reference) rounded to nearest
        // in T: at most half an ulp of T more.
        const double err = tol * (e.p_mag + std::fabs(e.p));
        const double slack = std::is_same_v<T, float> ? 0.0 : 0.5 * ulp_of<T>(std::fabs(e.p) + err);
        if (std::fabs(p_out - e.p) > err + slack + 1e-38) {
          what += " param " + std::to_string(p_out) + " vs " + std::to_string(e.p);
        }
      }
#if !defined(HOST_TEST_FAST_CONTRACT)
      // Without contraction, the very bits of a plain loop (see the top).
      if (rounds && what.empty()) {
        float pf = master ? gr.mw0[i] : static_cast<float>(decode(gr.p0[i]));
        const float gf = static_cast<float>(decode(gr.g0[i])) * static_cast<float>(s.vec[1]);
        float sf[2] = {0, 0};
        for (int k = 0; k < ns; ++k) sf[k] = static_cast<float>(state_value(gr.st0[k][i]));
        rule_step(rule, s, pf, gf, sf);
        const uint64_t step_u = static_cast<uint64_t>(step[0]);
        for (int k = 0; k < ns; ++k) {
          const S want = rounds_states
                             ? S(lossopt::rounding::bf16_stochastic(
                                   sf[k], write_bits(lists.rounding, step_u, t, k, i)))
                             : S(sf[k]);
          if (std::memcmp(&want, &(*gr.st[k])[i], sizeof(S)) != 0) {
            what += " state" + std::to_string(k) + " bits differ from the plain loop's";
          }
        }
        const T want_p = c.round_params
                             ? of_bits<T>(lossopt::rounding::bf16_stochastic(
                                   pf, write_bits(lists.rounding, step_u, t, ns, i)))
                             : encode<T>(pf);
        if (std::memcmp(&want_p, &(*gr.p)[i], sizeof(T)) != 0) {
          what += " param bits differ from the plain loop's";
        }
        if (master && std::memcmp(&pf, &(*gr.mw)[i], sizeof(float)) != 0) {
          what += " master bits differ from the plain loop's";
        }
      }
#endif
      if (!what.empty()) {
        ++bad;
        fail(at, "element " + std::to_string(i) + ":" + what);
      }
    }
  }
}

template <typename T>
void run_one(Rule rule, bool master, const UpdateCase& c, std::mt19937_64& rng) {
  if (c.bf16_states) return run_typed<T, uint16_t>(rule, master, c, rng);
  run_typed<T, float>(rule, master, c, rng);
}

}  // namespace

void run_update_case(Rule rule, ParamType type, bool master, const UpdateCase& c,
                     std::mt19937_64& rng) {
  switch (type) {
    case ParamType::kFloat32: return run_one<float>(rule, master, c, rng);
    case ParamType::kFloat16: return run_one<__half>(rule, master, c, rng);
    case ParamType::kBFloat16: return run_one<__nv_bfloat16>(rule, master, c, rng);
  }
}

int update_states(Rule rule) { return n_states(rule); }

}  // namespace host_test
