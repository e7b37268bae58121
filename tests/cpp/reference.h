// An independent float64 reference of the three rules, written from
// ../shared/ALGORITHMS.md (the project's specification), not from
// csrc/rules/: the per-element updates, the per-group scalar step (the
// "advance"), and the rounding of float to float16 and bfloat16.
// Compiled in its own translation unit with -ffp-contract=off, so that it
// stays exact whatever the kernels' build does.
#pragma once

#include <cstdint>

namespace host_test::ref {

// ---------------------------------------------------------------- rounding
// float -> float16 / bfloat16 bits, round to nearest even; and back (exact).
uint16_t float_to_half_bits(float x);
uint16_t float_to_bfloat16_bits(float x);
double half_bits_to_double(uint16_t bits);
double bfloat16_bits_to_double(uint16_t bits);
// The spacing of float16 / bfloat16 / float32 numbers at |x|.
double half_ulp(double x);
double bfloat16_ulp(double x);
double float_ulp(double x);

// ---------------------------------------------------------------- updates
// One element. g is the gradient already multiplied by 1 / grad_scale. The
// scalars are those of the rule's scalar vector, rounded to float32 as the
// kernels read them. Each result comes with a magnitude (the sum of the
// absolute values of what went into it) that scales the rounding error a
// float32 computation may make.
struct Element {
  double p = 0, p_mag = 0;
  double state[2] = {0, 0}, state_mag[2] = {0, 0};
};

// m = m + (1 - beta1)(g - m);  p = p (1 - lr_t wd) - lr_t m
Element adalo(double p, double g, double m, double lr_t, double beta1, double weight_decay);
// m = beta1 m + (1 - beta1) g;  w = beta2 w + grad_sq_scale g^2 + eps_l;
// p = p (1 - lr wd) - lr (m / bc1) / sqrt(w / bc2)
Element adaml(double p, double g, double m, double w, double lr, double grad_sq_scale,
              double eps_l, double bc1, double bc2, double beta1, double beta2,
              double weight_decay);
// d = g / b + wd p;  with momentum: buf = momentum buf + d, d = buf;  p = p - lr d
Element adaloss(double p, double g, double buf, bool with_momentum, double lr, double b,
                double momentum, double weight_decay);

// ---------------------------------------------------------------- advance
// What every rule's scalar step shares: whether the step is taken, the skip
// count, 1 / grad_scale and the learning rate.
struct AdvanceIn {
  double loss;          // as stored (a float loss already widened)
  bool overflow;        // GradScaler's found_inf != 0
  bool has_grad_scale;
  float grad_scale;
  double lr;            // the tensor lr as stored, or the number
};

struct AdaLoState { float loss_ema; };
struct AdamLState { float step; double loss0; };
struct AdaLossState { double b_sq; };

struct AdaLoHyper { double beta2, kappa, eps; bool compliant; };
struct AdamLHyper { double beta1, beta2, eps, gamma, phi, min_loss; bool normalize; };
struct AdaLossHyper { double alpha, c; };

// Each advances `state` (only when the step is taken), adds a bad loss to
// `skips`, and writes the scalar vector `out`: [valid, 1/grad_scale, rule...].
void adalo_advance(const AdvanceIn& in, const AdaLoHyper& h, AdaLoState& state, int64_t& skips,
                   double* out);
void adaml_advance(const AdvanceIn& in, const AdamLHyper& h, AdamLState& state, int64_t& skips,
                   double* out);
void adaloss_advance(const AdvanceIn& in, const AdaLossHyper& h, AdaLossState& state,
                     int64_t& skips, double* out);

}  // namespace host_test::ref
