"""Stochastic rounding to bfloat16 in torch integer ops: the twin of csrc/rounding.h.

The random bits are a counter-based hash of (seed, step, tensor, stream pair,
element), two 16-bit streams to a hash, computed with the same 32-bit arithmetic as the kernels, so that the
for-loop and foreach paths write the very bits the CPU and CUDA kernels write.
The arithmetic runs on int64 tensors holding unsigned 32-bit values; every
product is split so that it stays below 2^63 (torch's int64 overflow is
undefined behaviour in C++, whatever it does in practice).

Everything here takes and returns tensors on the caller's device (``step``
may be a device tensor, so that CUDA graphs and torch.compile see no host
read), and nothing reads a value back to the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Union

import torch
from torch import Tensor

from ._reference import write_

MASK32 = 0xFFFFFFFF
KEY_INIT = 0x243F6A88
MUL1 = 0x21F0AAAD
MUL2 = 0xD35A2D97
BF16_NAN = 0x7FC0

IntLike = Union[int, Tensor]


def _mul32(x: IntLike, c: int) -> IntLike:
    """``x * c mod 2^32`` for 0 <= x < 2^32, in two products below 2^48."""
    low = x * (c & 0xFFFF)
    high = ((x * (c >> 16)) & 0xFFFF) << 16
    return (low + high) & MASK32


def mix32(x: IntLike) -> IntLike:
    """csrc/rounding.h's mix32 on int64 tensors holding values in [0, 2^32), or
    on a Python int (host constants such as the seed's words stay on the host)."""
    x = x ^ (x >> 16)
    x = _mul32(x, MUL1)
    x = x ^ (x >> 15)
    x = _mul32(x, MUL2)
    return x ^ (x >> 15)


def _words(value: IntLike):
    """The low and high 32 bits of a 64-bit value (an int64 tensor's bit pattern)."""
    if isinstance(value, Tensor):
        value = value.to(torch.int64)
        # An arithmetic shift of a negative int64 fills with ones: masked, it
        # is the high half of the two's complement pattern, as uint64 >> 32 gives.
        return value & MASK32, (value >> 32) & MASK32
    value &= 2**64 - 1
    return value & MASK32, value >> 32


def tensor_key(seed: IntLike, step: IntLike, tensor: int, pair: int,
               device: Union[str, torch.device] = "cpu") -> Tensor:
    """The 0-d int64 key of one tensor's stream pair at one step (csrc/rounding.h).

    ``seed`` and ``step`` are read as unsigned 64-bit (an int64's bit pattern);
    ``tensor`` and ``pair`` as unsigned 32-bit. What is a Python int is
    hashed on the host, so that a device ``step`` makes no host-to-device copy
    (none is allowed while a CUDA graph is captured)."""
    h: IntLike = KEY_INIT
    for word in (*_words(seed), *_words(step), tensor & MASK32, pair & MASK32):
        h = mix32(h ^ word)
    if isinstance(h, Tensor):
        return h
    return torch.tensor(h, dtype=torch.int64, device=device)


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
    """The 32 random bits of each element for a stream pair (int64 in [0, 2^32))."""
    block = mix32(key ^ ((offsets >> 32) & MASK32))
    return mix32(block ^ (offsets & MASK32))


def stream_pair(stream: int) -> int:
    """The pair of streams that shares a hash: streams 2j and 2j + 1 form pair j."""
    return stream >> 1


def stream_bits(bits: Tensor, stream: int) -> Tensor:
    """A stream's 16 random bits as the high half of a 32-bit word (what
    ``bf16_stochastic`` reads): the even stream of a pair takes the high half
    of the pair's ``element_bits``, the odd one the low half."""
    return ((bits << 16) & MASK32) if stream & 1 else bits & 0xFFFF0000


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


#: Elements hashed at a time: the hash's int64 temporaries (about 56 bytes an
#: element) stay bounded for tensors of any size.
CHUNK = 1 << 22


def round_bf16(x: Tensor, seed: IntLike, step: IntLike, tensor: int, stream: int) -> Tensor:
    """``x`` (float32, any layout) stochastically rounded to bfloat16 with the
    bits of (seed, step, tensor, stream): what the kernels write for it. The
    result has ``x``'s shape; its elements are numbered by ``x``'s strides.
    Stream k is a parameter's k-th state, stream K (its number of states) the
    parameter itself."""
    key = tensor_key(seed, step, tensor, stream_pair(stream), x.device)
    if not x.is_contiguous():
        bits = stream_bits(element_bits(key, element_offsets(x)), stream)
        return bf16_stochastic(x.contiguous(), bits.contiguous()).view(x.shape)
    flat = x.reshape(-1)
    out = torch.empty(flat.shape, dtype=torch.bfloat16, device=x.device)
    for start in range(0, flat.numel(), CHUNK):
        end = min(start + CHUNK, flat.numel())
        offsets = torch.arange(start, end, dtype=torch.int64, device=x.device)
        out[start:end] = bf16_stochastic(flat[start:end], stream_bits(element_bits(key, offsets), stream))
    return out.view(x.shape)


# --------------------------------------------------------------------------- the drivers' side

#: The state of a group's first parameter that counts the group's rounded steps.
STEP_KEY = "rounding_step"


@dataclass
class Rounding:
    """What a driver rounds in one bucket's update, and with which bits.

    ``step`` is the group's counter of valid steps (a 0-d int64 tensor on the
    bucket's device, see ``LossDrivenOptimizer._rounding``); ``tensor_ids`` number the bucket's
    parameters in the optimizer's order (``state_dict()``'s). Stream k is the
    k-th state, stream K (the number of states) the parameter."""

    seed: int
    step: Tensor
    tensor_ids: List[int]
    params: bool  # bfloat16 parameters written stochastically
    states: bool  # bfloat16 per-element state

    def write(self, dst: Tensor, value: Tensor, index: int, stream: int, valid: Tensor) -> None:
        """``dst`` (bfloat16) <- ``value`` (float32) stochastically rounded,
        where the step was ``valid`` (elsewhere ``dst`` keeps its very bits,
        NaN payloads included)."""
        rounded = round_bf16(value, self.seed, self.step, self.tensor_ids[index], stream)
        write_(dst, torch.where(valid, rounded, dst))


def seed_from(value: Optional[int]) -> int:
    """The rounding seed as a signed 64-bit int: ``value`` (any int in
    [-2^63, 2^64)), or a draw from torch's default generator."""
    if value is None:
        return int(torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64))
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**63) <= value < 2**64:
        raise ValueError(f"invalid rounding_seed: {value!r}; it must be an int in [-2**63, 2**64)")
    return value - 2**64 if value >= 2**63 else value
