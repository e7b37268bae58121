"""Stochastic rounding to bfloat16 in torch integer ops: the twin of csrc/rounding.h.

The random bits are a counter-based hash of (seed, step, tensor, stream,
element), computed with the same 32-bit arithmetic as the kernels, so that the
for-loop and foreach paths write the very bits the CPU and CUDA kernels write.
The arithmetic runs on int64 tensors holding unsigned 32-bit values; every
product is split so that it stays below 2^63 (torch's int64 overflow is
undefined behaviour in C++, whatever it does in practice).

Everything here takes and returns tensors on the caller's device (``step``
may be a device tensor, so that CUDA graphs and torch.compile see no host
read), and nothing reads a value back to the host.
"""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor

MASK32 = 0xFFFFFFFF
KEY_INIT = 0x243F6A88
MUL1 = 0x21F0AAAD
MUL2 = 0xD35A2D97
BF16_NAN = 0x7FC0

IntLike = Union[int, Tensor]


def _mul32(x: Tensor, c: int) -> Tensor:
    """``x * c mod 2^32`` for 0 <= x < 2^32, in two products below 2^48."""
    low = x * (c & 0xFFFF)
    high = ((x * (c >> 16)) & 0xFFFF) << 16
    return (low + high) & MASK32


def mix32(x: Tensor) -> Tensor:
    """csrc/rounding.h's mix32 on int64 tensors holding values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, MUL1)
    x = x ^ (x >> 15)
    x = _mul32(x, MUL2)
    return x ^ (x >> 15)


def _as_int64(value: IntLike, device: torch.device) -> Tensor:
    if isinstance(value, Tensor):
        return value.to(device=device, dtype=torch.int64)
    return torch.tensor(value, dtype=torch.int64, device=device)


def _low32(x: Tensor) -> Tensor:
    return x & MASK32


def _high32(x: Tensor) -> Tensor:
    # An arithmetic shift of a negative int64 fills with ones: masked, it is
    # the high half of the two's complement pattern, as uint64 >> 32 gives.
    return (x >> 32) & MASK32


def tensor_key(seed: IntLike, step: IntLike, tensor: int, stream: int,
               device: Union[str, torch.device] = "cpu") -> Tensor:
    """The 0-d int64 key of one tensor written at one step (csrc/rounding.h).

    ``seed`` and ``step`` are read as unsigned 64-bit (an int64 tensor's bit
    pattern); ``tensor`` and ``stream`` as unsigned 32-bit."""
    device = torch.device(device)
    seed_t, step_t = _as_int64(seed, device), _as_int64(step, device)
    h = torch.tensor(KEY_INIT, dtype=torch.int64, device=device)
    for word in (_low32(seed_t), _high32(seed_t), _low32(step_t), _high32(step_t)):
        h = mix32(h ^ word)
    h = mix32(h ^ (tensor & MASK32))
    return mix32(h ^ (stream & MASK32))


def element_offsets(t: Tensor) -> Tensor:
    """Each element's offset, in elements, from the tensor's first element in
    memory (sum of index * stride): the flat position of a dense tensor in its
    own memory order, and what the kernels' walk over memory counts."""
    offsets = torch.zeros(t.shape, dtype=torch.int64, device=t.device)
    for dim, (size, stride) in enumerate(zip(t.shape, t.stride())):
        shape = [1] * t.dim()
        shape[dim] = size
        offsets = offsets + torch.arange(size, dtype=torch.int64, device=t.device).view(shape) * stride
    return offsets


def element_bits(key: Tensor, offsets: Tensor) -> Tensor:
    """The 32 random bits of each element (int64 in [0, 2^32))."""
    block = mix32(key ^ _high32(offsets))
    return mix32(block ^ _low32(offsets))


def bf16_stochastic(x: Tensor, bits: Tensor) -> Tensor:
    """float32 ``x`` rounded to bfloat16 with the random ``bits``: add the top 16
    bits to the float's pattern and truncate. NaN becomes 0x7FC0 (torch's NaN)."""
    if x.dtype != torch.float32:
        raise TypeError(f"bf16_stochastic rounds float32, got {x.dtype}")
    pattern = x.view(torch.int32).to(torch.int64) & MASK32
    rounded = (pattern + (bits >> 16)) >> 16
    rounded = torch.where(torch.isnan(x), torch.full_like(rounded, BF16_NAN), rounded)
    # [0, 2^16) as the int16 with the same bits, then reinterpreted.
    return ((rounded ^ 0x8000) - 0x8000).to(torch.int16).view(torch.bfloat16)


def round_bf16(x: Tensor, seed: IntLike, step: IntLike, tensor: int, stream: int) -> Tensor:
    """``x`` (float32, any layout) stochastically rounded to bfloat16 with the
    bits of (seed, step, tensor, stream): what the kernels write for it. The
    result has ``x``'s shape; its elements are numbered by ``x``'s strides."""
    bits = element_bits(tensor_key(seed, step, tensor, stream, x.device), element_offsets(x))
    return bf16_stochastic(x.contiguous(), bits.contiguous()).view(x.shape)
