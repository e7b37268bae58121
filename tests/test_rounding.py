"""Stochastic rounding to bfloat16 (csrc/rounding.h and its torch twin,
lossopt_cuda/_rounding.py): the same bits on both sides, checked against a
plain-Python oracle of the hash; the rounding unbiased and picking only the two
bfloat16 neighbours; small updates accumulating where round-to-nearest loses
them. Fresh random inputs each run; LOSSOPT_TEST_SEED repeats one.
"""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from lossopt_cuda import _rounding as R

REPO = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("LOSSOPT_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
M32 = 0xFFFFFFFF


def _rng(salt: int) -> np.random.Generator:
    return np.random.default_rng([SEED, salt])


# ------------------------------------------------------------------ a plain-Python oracle


def mix32_py(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x21F0AAAD) & M32
    x ^= x >> 15
    x = (x * 0xD35A2D97) & M32
    return x ^ (x >> 15)


def key_py(seed: int, step: int, tensor: int, stream: int) -> int:
    """The key of the stream's pair: streams 2j and 2j + 1 share pair j's hash."""
    h = 0x243F6A88
    for w in (seed & M32, seed >> 32, step & M32, step >> 32, tensor, stream // 2):
        h = mix32_py(h ^ w)
    return h


def bits_py(key: int, index: int, stream: int) -> int:
    """The stream's 16 bits, as a word's high half: the pair's hash's high half
    for the even stream, its low half for the odd one."""
    h = mix32_py(mix32_py(key ^ (index >> 32)) ^ (index & M32))
    return (h << 16) & M32 if stream % 2 else h & 0xFFFF0000


def bf16_py(x_bits: int, r: int) -> int:
    if (x_bits & 0x7F800000) == 0x7F800000 and (x_bits & 0x7FFFFF):
        return 0x7FC0
    return ((x_bits + (r >> 16)) >> 16) & 0xFFFF


def _signed64(u: int) -> int:
    return u - (1 << 64) if u >= 1 << 63 else u


# ------------------------------------------------------------------ the C++ side


def _compiler():
    import importlib.util

    spec = importlib.util.spec_from_file_location("host_build", REPO / "tests" / "cpp" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.find_compiler()


@pytest.fixture(scope="module")
def cpp_vectors(tmp_path_factory):
    cxx = _compiler()
    if cxx is None:
        pytest.skip("no C++ compiler")
    exe = tmp_path_factory.mktemp("rounding") / "rounding_vectors"
    subprocess.run([cxx, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", "-fsanitize=undefined",
                    "-fno-sanitize-recover=all", "-I", str(REPO / "csrc"),
                    str(REPO / "tests" / "cpp" / "standalone" / "rounding_vectors.cpp"), "-o", str(exe)],
                   check=True, capture_output=True, text=True)

    def run(rows):
        text = "\n".join(" ".join(str(v) for v in row) for row in rows) + "\n"
        out = subprocess.run([str(exe)], input=text, capture_output=True, text=True, check=True).stdout
        return [tuple(int(v) for v in line.split()) for line in out.splitlines()]
    return run


def _special_floats():
    specials = [0.0, -0.0, 1.0, -1.0, float("inf"), float("-inf"), 3.4028234663852886e38, -3.4028234663852886e38,
                1e-45, -1e-45, 1.1754943508222875e-38, 2.0 ** -133, 1.00390625, 1.0 + 2 ** -23]
    bits = [struct.unpack("<I", struct.pack("<f", v))[0] for v in specials]
    return bits + [0x7FC00000, 0x7FFFFFFF, 0xFFFFFFFF, 0x7F800001, 0xFF812345, 0x7F7FFFFF, 0x3F80FFFF]


def test_cpp_and_torch_and_oracle_agree_bit_for_bit(cpp_vectors):
    rng = _rng(1)
    cases = []
    for _ in range(6):  # a few tensors, each with many elements
        seed = int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2))  # the full 64 bits
        step = [0, 1, int(rng.integers(2, 2**40)), 2**64 - 1][int(rng.integers(0, 4))]
        tensor, stream = int(rng.integers(0, 2**32)), int(rng.integers(0, 5))
        index = np.concatenate([np.arange(40), rng.integers(0, 2**40, 60), [2**32 - 1, 2**32, 2**33 + 7]])
        xbits = np.concatenate([_special_floats(), rng.integers(0, 2**32, len(index) - len(_special_floats()))])
        cases.append((seed, step, tensor, stream, index.astype(np.uint64), xbits.astype(np.uint64)))
    rows = [(s, t, n, m, int(i), int(x)) for s, t, n, m, idx, xs in cases for i, x in zip(idx, xs)]
    cpp = cpp_vectors(rows)
    assert len(cpp) == len(rows)
    at = 0
    for seed, step, tensor, stream, index, xbits in cases:
        key = R.tensor_key(_signed64(seed), _signed64(step), tensor, R.stream_pair(stream))
        assert int(key) == key_py(seed, step, tensor, stream)
        offsets = torch.tensor(index.astype(np.int64))
        bits = R.stream_bits(R.element_bits(key, offsets), stream)
        x = torch.tensor(xbits.astype(np.uint32).view(np.int32)).view(torch.float32)
        out = R.bf16_stochastic(x, bits).view(torch.int16).to(torch.int64) & 0xFFFF
        for j in range(len(index)):
            key_j = key_py(seed, step, tensor, stream)
            bits_j = bits_py(key_j, int(index[j]), stream)
            want = (key_j, bits_j, bf16_py(int(xbits[j]), bits_j))
            got_torch = (int(key), int(bits[j]), int(out[j]))
            assert cpp[at + j] == want == got_torch, (seed, step, tensor, stream, int(index[j]), hex(int(xbits[j])))
        at += len(index)


def test_the_two_neighbours_only_and_exact_values_unchanged():
    rng = _rng(2)
    x = torch.tensor(rng.standard_normal(20000) * np.exp2(rng.integers(-60, 60, 20000)), dtype=torch.float32)
    # The two bfloat16 neighbours: the float's bits truncated (toward zero), and
    # one bfloat16 ulp further from zero (the magnitude's bits plus 1).
    down_bits = x.view(torch.int32) & ~0xFFFF
    down, up = down_bits.view(torch.float32), (down_bits + 0x10000).view(torch.float32)
    for step in range(3):
        got = R.round_bf16(x, SEED, step, 0, 0).float()
        assert bool(((got == down) | (got == up)).all())
    exact = x.to(torch.bfloat16).float()
    assert torch.equal(R.round_bf16(exact, SEED, 5, 1, 1).float(), exact)


def test_unbiased():
    """The mean of n stochastic roundings of x is x: each rounding errs by less
    than one bfloat16 ulp, so the mean's standard deviation is below ulp / (2 sqrt(n));
    the bound is 6 of those (a false alarm about once in 10^8 runs per value)."""
    rng = _rng(3)
    values = torch.tensor(rng.uniform(1, 2, 64) * np.exp2(rng.integers(-20, 20, 64)) *
                          rng.choice([-1, 1], 64), dtype=torch.float32)
    n = 1 << 15
    for v in values:
        x = torch.full((n,), float(v), dtype=torch.float32)
        mean = R.round_bf16(x, int(rng.integers(0, 2**62)), 3, 7, 0).double().mean()
        ulp = 2.0 ** (np.floor(np.log2(abs(float(v)))) - 7)
        assert abs(float(mean) - float(v)) <= 6 * ulp / (2 * np.sqrt(n)), (float(v), float(mean))


def test_small_updates_accumulate_where_round_to_nearest_loses_them():
    n, steps, delta = 8192, 400, 1e-4  # delta: 1/78 of bfloat16's ulp at 1
    sr = torch.ones(n, dtype=torch.bfloat16)
    rn = torch.ones(n, dtype=torch.bfloat16)
    for step in range(steps):
        sr = R.round_bf16(sr.float() + delta, SEED, step, 0, 0)
        rn = (rn.float() + delta).to(torch.bfloat16)
    assert torch.equal(rn, torch.ones_like(rn))
    # Each step errs by under an ulp (2^-7), independently: the mean over n
    # elements of the sum of `steps` errors has a std below 2^-7 sqrt(steps / n) / 2.
    bound = 6 * 2.0 ** -7 * np.sqrt(steps / n) / 2
    assert abs(float(sr.double().mean()) - (1 + steps * delta)) <= bound


def test_offsets_follow_memory_order():
    t = torch.empty(5, 7, 3)
    assert torch.equal(R.element_offsets(t).flatten(), torch.arange(105))
    tt = t.transpose(0, 2)  # dense, not contiguous: offsets are the memory positions
    want = torch.arange(105).view(5, 7, 3).transpose(0, 2)
    assert torch.equal(R.element_offsets(tt), want)
    cl = torch.empty(2, 3, 4, 5).to(memory_format=torch.channels_last)
    offsets = R.element_offsets(cl)
    assert sorted(offsets.flatten().tolist()) == list(range(120))
    assert torch.equal(offsets, torch.arange(120).as_strided(cl.shape, cl.stride()))


def test_bits_differ_across_steps_tensors_and_streams():
    x = torch.full((4096,), 1.0 + 2 ** -9, dtype=torch.float32)  # rounds up with probability 1/4
    outs = [R.round_bf16(x, SEED, step, tensor, stream)
            for step, tensor, stream in ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 0, 2), (0, 0, 3))]
    for i in range(len(outs)):
        for j in range(i):
            assert not torch.equal(outs[i], outs[j])
    assert torch.equal(outs[0], R.round_bf16(x, SEED, 0, 0, 0))  # and the same bits again


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_same_bits_on_cuda():
    x = torch.randn(10007, dtype=torch.float32)
    step = torch.tensor(12, device="cuda")
    assert torch.equal(R.round_bf16(x.cuda(), SEED, step, 3, 1).cpu(), R.round_bf16(x, SEED, 12, 3, 1))


def test_the_streams_of_a_pair_are_uncorrelated():
    """Streams 2j and 2j + 1 take the two halves of one hash: their 16-bit
    values must look independent. The sample correlation of n independent
    uniform pairs has a standard deviation of 1/sqrt(n); the bound is 6 of
    those. Also for the streams of neighbouring elements and pairs."""
    n = 1 << 16
    offsets = torch.arange(n, dtype=torch.int64) + int(_rng(5).integers(0, 2**40))
    streams = []
    for stream in range(4):
        key = R.tensor_key(SEED, 9, 11, R.stream_pair(stream))
        streams.append((R.stream_bits(R.element_bits(key, offsets), stream) >> 16).double())
    pairs = [(streams[0], streams[1]), (streams[2], streams[3]), (streams[1], streams[2]),
             (streams[0][1:], streams[0][:-1]), (streams[1][1:], streams[0][:-1])]
    for a, b in pairs:
        r = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
        assert abs(r) <= 6 / np.sqrt(a.numel()), r
    for u in streams:  # and each stream uniform over 16 bits: mean (2^16 - 1) / 2
        assert abs(float(u.mean()) / (2**16 - 1) - 0.5) <= 6 * np.sqrt(1 / 12 / n)
