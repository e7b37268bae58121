// Every kernel of the fused CUDA path, for the build that gives each a name of
// its own: the kernels NVRTC compiles on first use (nvrtc_kernels.cu) and the
// host code that launches them by name (nvrtc_launch.cpp). A launch that
// updates.h asks for and this list lacks does not compile.
//
// UPDATE(name, T, Rule, Args, kMaster, S, kRoundParams):
// RuleFunctor<T, Rule, Args, kMaster, S, kRoundParams> (rule_functor.h) over
// the metadata of its depth. Names: parameter type, _master with float32
// master weights, _sr with stochastically rounded bfloat16 parameters, _s16
// with bfloat16 states (stochastically rounded). ADVANCE(name, Group):
// advance<Group> (../advance.h) in one thread.
#pragma once

// Every storage of a rule without state.
#define LOSSOPT_STATELESS_KERNELS(UPDATE, name, Rule, Args)                        \
  UPDATE(name##_f32, float, Rule, Args, false, float, false)                       \
  UPDATE(name##_f16, Half, Rule, Args, false, float, false)                        \
  UPDATE(name##_f16_master, Half, Rule, Args, true, float, false)                  \
  UPDATE(name##_bf16, BFloat16, Rule, Args, false, float, false)                   \
  UPDATE(name##_bf16_master, BFloat16, Rule, Args, true, float, false)             \
  UPDATE(name##_bf16_sr, BFloat16, Rule, Args, false, float, true)

// ... and of a rule with state: the same with bfloat16 states.
#define LOSSOPT_RULE_KERNELS(UPDATE, name, Rule, Args)                             \
  LOSSOPT_STATELESS_KERNELS(UPDATE, name, Rule, Args)                              \
  UPDATE(name##_f32_s16, float, Rule, Args, false, uint16_t, false)                \
  UPDATE(name##_f16_s16, Half, Rule, Args, false, uint16_t, false)                 \
  UPDATE(name##_f16_master_s16, Half, Rule, Args, true, uint16_t, false)           \
  UPDATE(name##_bf16_s16, BFloat16, Rule, Args, false, uint16_t, false)            \
  UPDATE(name##_bf16_master_s16, BFloat16, Rule, Args, true, uint16_t, false)      \
  UPDATE(name##_bf16_sr_s16, BFloat16, Rule, Args, false, uint16_t, true)

#define LOSSOPT_UPDATE_KERNELS(UPDATE)                                                        \
  LOSSOPT_RULE_KERNELS(UPDATE, adalo, rules::AdaLo<float>, rules::AdaLoArgs)                  \
  LOSSOPT_RULE_KERNELS(UPDATE, adaml, rules::AdamL<float>, rules::AdamLArgs)                  \
  LOSSOPT_STATELESS_KERNELS(UPDATE, adaloss, rules::AdaLossPlain<float>, rules::AdaLossArgs)  \
  LOSSOPT_RULE_KERNELS(UPDATE, adaloss_momentum, rules::AdaLossMomentum<float>, rules::AdaLossArgs)

#define LOSSOPT_ADVANCE_KERNELS(ADVANCE)      \
  ADVANCE(advance_adalo, rules::AdaLoGroup)   \
  ADVANCE(advance_adaml, rules::AdamLGroup)   \
  ADVANCE(advance_adaloss, rules::AdaLossGroup)
