// See reference.h. Every formula is ALGORITHMS.md's, in float64.
#include "reference.h"

#include <cmath>
#include <cstring>
#include <limits>

namespace host_test::ref {
namespace {

uint32_t bits_of(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}

// Spacing of a binary format with `mantissa` stored bits and minimum normal
// exponent `min_exp` at |x|.
double spacing(double x, int mantissa, int min_exp) {
  x = std::fabs(x);
  int e = x > 0 ? std::ilogb(x) : min_exp;
  if (e < min_exp) e = min_exp;
  return std::ldexp(1.0, e - mantissa);
}

// AdaLo's, AdamL's and AdaLoss's shared part of the scalar step
// (ALGORITHMS.md, "Bad input"): a loss outside the rule's domain is counted
// as a skipped step; overflowed gradients skip the step without being counted.
bool common_advance(const AdvanceIn& in, bool loss_ok, int64_t& skips, double* out) {
  const bool valid = loss_ok && !in.overflow;
  if (!loss_ok) skips += 1;
  out[0] = valid ? 1.0 : 0.0;
  out[1] = in.has_grad_scale ? 1.0 / static_cast<double>(in.grad_scale) : 1.0;
  return valid;
}

double floor_at(double x, double low) { return x < low ? low : x; }  // NaN stays NaN

}  // namespace

uint16_t float_to_half_bits(float x) {
  const uint32_t u = bits_of(x);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // rounds to inf (>= 65520)
  // Scale into float16's fixed point at its exponent and round to nearest
  // even with the FPU (exact: float -> double, then one rounding by rint).
  const double a = std::fabs(static_cast<double>(x));
  if (a < std::ldexp(1.0, -14)) {  // subnormal (or zero): units of 2^-24
    const double q = std::nearbyint(std::ldexp(a, 24));
    return sign | static_cast<uint16_t>(q);  // q == 1024 gives the smallest normal
  }
  const int e = std::ilogb(a);
  const double q = std::nearbyint(std::ldexp(a, 10 - e));  // in [1024, 2048]
  const uint32_t mant = static_cast<uint32_t>(q);
  const uint32_t bits = (static_cast<uint32_t>(e + 15) << 10) + (mant - 1024);  // carries into e
  return sign | static_cast<uint16_t>(bits);
}

uint16_t float_to_bfloat16_bits(float x) {
  const uint32_t u = bits_of(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // NaN
  const uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

double half_bits_to_double(uint16_t bits) {
  const double sign = (bits & 0x8000u) ? -1.0 : 1.0;
  const int e = (bits >> 10) & 0x1f;
  const int m = bits & 0x3ff;
  if (e == 0x1f) return m ? std::numeric_limits<double>::quiet_NaN() : sign * INFINITY;
  if (e == 0) return sign * std::ldexp(m, -24);
  return sign * std::ldexp(1024 + m, e - 25);
}

double bfloat16_bits_to_double(uint16_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

double half_ulp(double x) { return spacing(x, 10, -14); }
double bfloat16_ulp(double x) { return spacing(x, 7, -126); }
double float_ulp(double x) { return spacing(x, 23, -126); }

Element adalo(double p, double g, double m, double lr_t, double beta1, double weight_decay) {
  Element e;
  e.state[0] = m + (1 - beta1) * (g - m);
  e.state_mag[0] = std::fabs(m) + (1 - beta1) * (std::fabs(g) + std::fabs(m));
  const double decay = 1 - lr_t * weight_decay;
  e.p = p * decay - lr_t * e.state[0];
  e.p_mag = std::fabs(p) * (1 + std::fabs(lr_t * weight_decay)) + std::fabs(lr_t) * e.state_mag[0];
  return e;
}

Element adaml(double p, double g, double m, double w, double lr, double grad_sq_scale,
              double eps_l, double bc1, double bc2, double beta1, double beta2,
              double weight_decay) {
  Element e;
  e.state[0] = beta1 * m + (1 - beta1) * g;
  e.state_mag[0] = std::fabs(beta1 * m) + std::fabs((1 - beta1) * g);
  e.state[1] = beta2 * w + grad_sq_scale * g * g + eps_l;
  e.state_mag[1] = std::fabs(beta2 * w) + std::fabs(grad_sq_scale * g * g) + std::fabs(eps_l);
  const double m_hat = e.state[0] / bc1;
  const double w_hat = e.state[1] / bc2;
  const double step = lr * m_hat / std::sqrt(w_hat);
  e.p = p * (1 - lr * weight_decay) - step;
  // The step's error: m's (relative to its magnitude), and a few roundings of
  // the quotient; w has no cancellation (all its terms are >= 0).
  e.p_mag = std::fabs(p) * (1 + std::fabs(lr * weight_decay)) +
            std::fabs(lr / bc1) * e.state_mag[0] / std::sqrt(w_hat);
  return e;
}

Element adaloss(double p, double g, double buf, bool with_momentum, double lr, double b,
                double momentum, double weight_decay) {
  Element e;
  double d = g / b + weight_decay * p;
  double d_mag = std::fabs(g / b) + std::fabs(weight_decay * p);
  if (with_momentum) {
    e.state[0] = momentum * buf + d;
    e.state_mag[0] = std::fabs(momentum * buf) + d_mag;
    d = e.state[0];
    d_mag = e.state_mag[0];
  }
  e.p = p - lr * d;
  e.p_mag = std::fabs(p) + std::fabs(lr) * d_mag;
  return e;
}

// AdaLo: sigma = 1/(2+L); loss_ema += (1-beta2)(sigma - loss_ema) (float32
// state; the scalar uses the updated value before it is stored);
// lr_t = max(loss_ema / kappa, eps), or max((1 - loss_ema) / kappa, eps)
// when compliant. Valid loss: finite and > -1.
void adalo_advance(const AdvanceIn& in, const AdaLoHyper& h, AdaLoState& state, int64_t& skips,
                   double* out) {
  const bool loss_ok = std::isfinite(in.loss) && in.loss > -1.0;
  const bool valid = common_advance(in, loss_ok, skips, out);
  double ema = state.loss_ema;
  if (valid) {
    const double sigma = 1.0 / (2.0 + in.loss);
    ema = ema + (1.0 - h.beta2) * (sigma - ema);
    state.loss_ema = static_cast<float>(ema);
  }
  const double scale = h.compliant ? 1.0 - ema : ema;
  out[2] = floor_at(scale / h.kappa, h.eps);
}

// AdamL: k += 1 (float32, as torch.optim's step); l = L - min_loss, divided
// by l0 (the first step's gap, floored at 1e-12) when normalising, floored
// at 1e-12; s = 1 / (gamma l^phi). Scalars: lr, (1 - beta2) s, eps l,
// 1 - beta1^k, 1 - beta2^k. Valid loss: finite.
void adaml_advance(const AdvanceIn& in, const AdamLHyper& h, AdamLState& state, int64_t& skips,
                   double* out) {
  const bool valid = common_advance(in, std::isfinite(in.loss), skips, out);
  const double gap = in.loss - h.min_loss;
  if (valid) {
    if (state.step == 0.0f) state.loss0 = floor_at(gap, 1e-12);
    state.step = state.step + 1.0f;
  }
  const double l = floor_at(h.normalize ? gap / state.loss0 : gap, 1e-12);
  const double s = 1.0 / (h.gamma * std::pow(l, h.phi));
  const double k = state.step;
  out[2] = in.lr;
  out[3] = (1.0 - h.beta2) * s;
  out[4] = h.eps * l;
  out[5] = 1.0 - std::pow(h.beta1, k);
  out[6] = 1.0 - std::pow(h.beta2, k);
}

// AdaLoss: b^2 += alpha |L - c| (float64 state); scalars: lr, b = sqrt(b^2).
// Valid loss: finite.
void adaloss_advance(const AdvanceIn& in, const AdaLossHyper& h, AdaLossState& state,
                     int64_t& skips, double* out) {
  const bool valid = common_advance(in, std::isfinite(in.loss), skips, out);
  if (valid) state.b_sq = state.b_sq + h.alpha * std::fabs(in.loss - h.c);
  out[2] = in.lr;
  out[3] = std::sqrt(state.b_sq);
}

}  // namespace host_test::ref
