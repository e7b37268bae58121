// Every kernel of the fused CUDA path, for the build that gives each a name of
// its own: the kernels NVRTC compiles on first use (nvrtc_kernels.cu) and the
// host code that launches them by name (nvrtc_launch.cpp). A launch that
// updates.h asks for and this list lacks does not compile.
//
// UPDATE(name, T, Rule, Args, kMaster): RuleFunctor<T, Rule, Args, kMaster>
// (rule_functor.h) over the metadata of its depth; ADVANCE(name, Group):
// advance<Group> (../advance.h) in one thread.
#pragma once

#define LOSSOPT_RULE_KERNELS(UPDATE, name, Rule, Args)                        \
  UPDATE(name##_f32, float, Rule, Args, false)                                \
  UPDATE(name##_f16, Half, Rule, Args, false)                               \
  UPDATE(name##_f16_master, Half, Rule, Args, true)                         \
  UPDATE(name##_bf16, BFloat16, Rule, Args, false)                       \
  UPDATE(name##_bf16_master, BFloat16, Rule, Args, true)

#define LOSSOPT_UPDATE_KERNELS(UPDATE)                                                   \
  LOSSOPT_RULE_KERNELS(UPDATE, adalo, rules::AdaLo<float>, rules::AdaLoArgs)             \
  LOSSOPT_RULE_KERNELS(UPDATE, adaml, rules::AdamL<float>, rules::AdamLArgs)             \
  LOSSOPT_RULE_KERNELS(UPDATE, adaloss, rules::AdaLossPlain<float>, rules::AdaLossArgs)  \
  LOSSOPT_RULE_KERNELS(UPDATE, adaloss_momentum, rules::AdaLossMomentum<float>, rules::AdaLossArgs)

#define LOSSOPT_ADVANCE_KERNELS(ADVANCE)      \
  ADVANCE(advance_adalo, rules::AdaLoGroup)   \
  ADVANCE(advance_adaml, rules::AdamLGroup)   \
  ADVANCE(advance_adaloss, rules::AdaLossGroup)
