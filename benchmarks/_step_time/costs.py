"""The ideal cost of one step per parameter element: bytes moved, arithmetic
operations, and the optimizer state kept. These are derived from the rules
(the table below), not measured; the measured counterparts are the step times
here and the instruction counts of ``benchmarks/instruction_counts.py``."""

from __future__ import annotations

from typing import Any, Dict

import torch

#
# Bytes: what one ideal pass over an element must read and write. P = bytes of a
# parameter element (4 fp32, 2 bf16); the gradient has the parameter's dtype, so
# G = P. State: this package keeps its state in fp32 (4 B) for fp32 and bf16
# parameters alike; torch.optim.Adam/AdamW keep exp_avg/exp_avg_sq in the
# parameter's dtype (S = P).
#
#   AdaLo             read p, g, m        write p, m         2P + G + 2*4      fp32 20, bf16 14
#   AdamL             read p, g, m, w     write p, m, w      2P + G + 4*4      fp32 28, bf16 22
#   AdaLoss           read p, g           write p            2P + G            fp32 12, bf16  6
#   AdaLoss momentum  read p, g, buf      write p, buf       2P + G + 2*4      fp32 20, bf16 14
#   Adam / AdamW      read p, g, m, v     write p, m, v      2P + G + 4*P      fp32 28, bf16 14
#
# (Weight decay reads p, which is read anyway: no extra bytes.)
#
# FLOPs: arithmetic operations in the per-element update as the fused kernels
# (csrc/rules/*.h) and torch's Adam write it; +, -, *, /, sqrt count 1 each.
# The loss-derived scalars (lr_t, b, bias corrections...) are per group, not per
# element, and are not counted. The kernels also multiply each gradient by the
# inverse GradScaler scale (1 without a scaler): one more multiply per element
# for every rule, not counted here (torch's fused Adam has the same).
#
#   AdaLo    m = m + c1*(g - m)                        3  (sub, mul, add)
#            p = p*decay - lr_t*m                      3  (mul, mul, sub)          -> 6
#   AdamL    m = b1*m + c1*g                           3
#            w = b2*w + s*g*g + eps_l                  5  (3 mul, 2 add)
#            p = p*decay - step*m/sqrt(w*inv_bc2)      6  (3 mul, sqrt, div, sub;
#                                                          step = lr/bc1 and
#                                                          inv_bc2 = 1/bc2 per group) -> 14
#   AdaLoss  d = g/b                                   1
#            [weight_decay: d = d + wd*p               2]
#            [momentum: buf = mom*buf + d; d = buf     2]
#            p = p - lr*d                              2                          -> 3 (+2, +2)
#   Adam     m.lerp_(g, 1-b1)                          3
#            v = v*b2 + (1-b2)*g*g                     4
#            denom = sqrt(v)/sqrt(bc2) + eps           3
#            p = p - step_size * m/denom               3                          -> 13
#            [weight_decay (L2, Adam): g = g + wd*p    2]
#   AdamW    Adam + p = p*(1 - lr*wd)                  1                          -> 14


def _state_element(hp: Dict[str, Any]) -> int:
    """Bytes of one element of this package's per-element state: 4 (float32),
    2 with ``state_dtype=torch.bfloat16``."""
    return 2 if hp.get("state_dtype") == torch.bfloat16 else 4


def bytes_per_element(optimizer: str, dtype: torch.dtype, hp: Dict[str, Any]) -> int:
    """The ideal bytes one step reads and writes per parameter element (table
    above; with ``state_dtype=torch.bfloat16`` each state element is 2 bytes)."""
    p = torch.tensor([], dtype=dtype).element_size()
    s = _state_element(hp)
    touch_pg = 2 * p + p  # read p, write p, read g
    if optimizer == "AdaLo":
        return touch_pg + 2 * s
    if optimizer == "AdamL":
        return touch_pg + 4 * s
    if optimizer == "AdaLoss":
        return touch_pg + (2 * s if hp.get("momentum", 0.0) > 0 else 0)
    if optimizer in ("Adam", "AdamW"):
        return touch_pg + 4 * p
    raise ValueError(optimizer)


def flops_per_element(optimizer: str, hp: Dict[str, Any]) -> int:
    """Arithmetic operations per element of one step (table above)."""
    if optimizer == "AdaLo":
        return 6
    if optimizer == "AdamL":
        return 14
    if optimizer == "AdaLoss":
        return 3 + (2 if hp.get("weight_decay", 0.0) else 0) + (2 if hp.get("momentum", 0.0) else 0)
    if optimizer == "Adam":
        return 13 + (2 if hp.get("weight_decay", 0.0) else 0)
    if optimizer == "AdamW":
        return 14
    raise ValueError(optimizer)



def state_bytes_per_element(optimizer: str, dtype: torch.dtype, hp: Dict[str, Any]) -> int:
    """Optimizer state kept per element (for the memory estimate)."""
    p, s = torch.tensor([], dtype=dtype).element_size(), _state_element(hp)
    return {"Adam": 2 * p, "AdamW": 2 * p, "AdaLo": s, "AdamL": 2 * s,
            "AdaLoss": s if hp.get("momentum", 0.0) > 0 else 0}[optimizer]
