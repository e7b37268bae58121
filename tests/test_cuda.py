"""The fused CUDA kernels (``fused=True`` on CUDA parameters).

Skipped unless a CUDA GPU is present and this install has CUDA kernels
(``lossopt_cuda.build_info()["cuda"]``); ``scripts/gpu_check.sh`` builds the
extension for the GPU at hand and runs this file.

Self-contained on purpose (no helper from conftest): the GPU machine may lack
the test extras (hypothesis ...), and the script can then run this file with
``--noconftest``.

Oracle: the package's own for-loop path on the CPU in float64
(``foreach=False, fused=False``), fed the very inputs the kernels see (the
parameters' values, the gradients rounded to the parameters' dtype, the same
losses). Tolerances:

* float32 parameters: whole trajectories (5 steps, no re-seeding), params
  ``rtol=1e-5, atol=1e-5`` (|p| <~ 5); float32 state ``rtol=1e-5`` plus
  ``atol=1e-6 * max|state|`` (the kernels compute in float32, the oracle in
  float64: a few float32 roundings per step).
* float16 / bfloat16 parameters: one step at a time. Before each step the
  oracle's parameters are set to the kernel's current (rounded) values, so
  rounding does not accumulate; then
  ``|p - ref| <= eps(dtype) * |ref| + 1e-5 * |p_prev| + 1e-6``, i.e. one
  rounding to the parameter dtype (at most half an ulp, bounded by
  ``eps * |ref|``) plus the float32 arithmetic. Their state is float32 and is
  held to the float32 state tolerance above.
* fused vs fused (CUDA graph replay vs eager, fused=None vs fused=True,
  checkpoint resumed on the same path): bit for bit.
"""

from __future__ import annotations

import io
import math
import warnings
from unittest import mock

import pytest
import torch

import lossopt_cuda
from lossopt_cuda import AdaLo, AdaLoss, AdamL
from lossopt_cuda import _fused

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available() or not lossopt_cuda.build_info()["cuda"],
        reason="needs a CUDA GPU and lossopt_cuda built with its CUDA kernels "
        "(build_info()['cuda']); run scripts/gpu_check.sh on a GPU machine",
    ),
]

DEVICE = torch.device("cuda")
CPU = torch.device("cpu")

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
DTYPES = [F32, F16, BF16]
DTYPE_IDS = {F32: "f32", F16: "f16", BF16: "bf16"}

# Hyper-parameters chosen so that every step moves the parameters by >~1e-3
# (so the comparisons are sensitive), with weight decay in most of them.
CONFIGS = {
    "adalo-adversarial": (AdaLo, dict(mode="adversarial", betas=(0.5, 0.0), kappa=1.0,
                                      weight_decay=0.1)),
    "adalo-compliant": (AdaLo, dict(mode="compliant", betas=(0.8, 0.5), kappa=3.0,
                                    weight_decay=0.05)),
    "adaml": (AdamL, dict(lr=1e-2)),
    "adaml-wd": (AdamL, dict(lr=5e-3, betas=(0.5, 0.9), eps=1e-3, gamma=3.0, min_loss=0.03,
                             weight_decay=0.01)),
    "adaml-normalize-wd": (AdamL, dict(lr=1e-2, normalize_loss=True, phi=2.0, gamma=0.5,
                                       min_loss=0.02, weight_decay=0.1)),
    "adaloss": (AdaLoss, dict(lr=0.2, b0=1.0, alpha=0.5, c=1.0)),
    "adaloss-wd": (AdaLoss, dict(lr=0.1, b0=0.5, alpha=0.3, weight_decay=0.05)),
    "adaloss-momentum-wd": (AdaLoss, dict(lr=0.05, momentum=0.9, alpha=1.0, c=0.5,
                                          weight_decay=0.1)),
}
CFG_NAMES = list(CONFIGS)
# One configuration per rule, for the more expensive tests.
ONE_PER_RULE = ["adalo-compliant", "adaml-normalize-wd", "adaloss-momentum-wd"]

# Losses drawn in these ranges: AdaLo takes any L > -1, the others any finite L.
LOSS_RANGE = {AdaLo: (-0.5, 4.0), AdamL: (0.05, 5.0), AdaLoss: (-2.0, 5.0)}
GROUP_KEYS = {AdaLo: ("loss_ema",), AdamL: ("step", "loss0"), AdaLoss: ("b_sq",)}

STEPS = 5
ODD_SIZES = [1, 3, 5, 65537, 65536 * 3 + 1]


# ----------------------------------------------------------------------------- helpers


def _seed(*parts) -> int:
    text = "/".join(str(p) for p in parts)
    return sum(ord(c) * (i + 1) for i, c in enumerate(text)) % (2**31)


def _f32(x: float) -> float:
    """A float32-exact Python float (the same value as a tensor of any float dtype >= 32 bits)."""
    return float(torch.tensor(x, dtype=torch.float32))


def _losses(cls, gen, n):
    lo, hi = LOSS_RANGE[cls]
    return [_f32(lo + (hi - lo) * float(u)) for u in torch.rand(n, generator=gen, dtype=torch.float64)]


def _loss_form(L: float, k: int):
    """Step k's loss in one of the forms step(loss=) accepts (the value is always L)."""
    form = k % 5
    if form == 0:
        return torch.tensor(L, dtype=torch.float32, device=DEVICE)
    if form == 1:
        return L  # Python number
    if form == 2:
        return torch.tensor([L], dtype=torch.float64, device=DEVICE)  # one element, shape (1,)
    if form == 3:
        return torch.tensor(L, dtype=torch.float32)  # on the CPU
    with torch.enable_grad():  # a non-leaf that requires grad, as a real loss does
        return torch.tensor(L, dtype=torch.float32, device=DEVICE, requires_grad=True) * 1.0


def _state_keys(cls, hp):
    if cls is AdaLo:
        return ("exp_avg",)
    if cls is AdamL:
        return ("exp_avg", "exp_avg_sq")
    return ("momentum_buffer",) if hp.get("momentum", 0.0) > 0 else ()


# A tensor spec: (shape, kind, offset). kind "plain": contiguous, its storage
# starting `offset` elements into a fresh buffer (offset > 0 breaks the 16-byte
# alignment of the vectorised kernel path); "t": a transposed (dense,
# non-contiguous) 2-D tensor; "strided": every other element of a buffer (not
# dense: the fused path must hand it to the foreach fallback).
def _alloc(shape, dtype, device, kind="plain", offset=0):
    shape = tuple(shape)
    n = math.prod(shape)
    if kind == "plain":
        return torch.empty(n + offset, dtype=dtype, device=device)[offset:].view(shape)
    if kind == "t":
        assert len(shape) == 2
        return torch.empty((shape[1], shape[0]), dtype=dtype, device=device).t()
    if kind == "strided":
        assert len(shape) == 1
        return torch.empty(2 * n + offset, dtype=dtype, device=device)[offset::2]
    raise AssertionError(kind)


def _fill(values64, dtype, device, kind="plain", offset=0):
    t = _alloc(values64.shape, dtype, device, kind, offset)
    t.copy_(values64)
    return t


class Case:
    """Parameters on DEVICE (laid out per spec), their float64 CPU twins (the
    oracle's parameters), and fresh gradients for both at every step."""

    def __init__(self, specs, dtype, gen, grad_scale=1.0):
        # specs: list of (shape, p_kind, p_off, g_kind, g_off)
        self.specs = specs
        self.dtype = dtype
        self.gen = gen
        self.grad_scale = grad_scale
        init = [torch.randn(s[0], generator=gen, dtype=torch.float64) for s in specs]
        self.params = [
            _fill(v, dtype, DEVICE, pk, po).detach().requires_grad_()
            for v, (_, pk, po, _, _) in zip(init, specs)
        ]
        # the oracle starts from the very values on the device
        self.refs = [t.to(torch.float64).requires_grad_() for t in _cpu_list(self.params)]
        for p, (shape, *_rest) in zip(self.params, specs):
            assert p.shape == torch.Size(shape) and p.is_leaf

    def new_grads(self):
        """Fresh random gradients; the oracle's are the device ones, widened."""
        for p, (shape, _, _, gk, go) in zip(self.params, self.specs):
            v = torch.randn(shape, generator=self.gen, dtype=torch.float64) * self.grad_scale
            p.grad = _fill(v, self.dtype, DEVICE, gk, go)
        for r, g in zip(self.refs, _cpu_list([p.grad for p in self.params])):
            r.grad = g.to(torch.float64)

    def reseed_refs(self):
        """Set the oracle's parameters to the kernel's current values."""
        with torch.no_grad():
            for r, v in zip(self.refs, _cpu_list(self.params)):
                r.copy_(v.to(torch.float64))

    def twin_params(self):
        """Copies of the parameters with the same memory layouts (so that the
        kernels take the same code path on them: bitwise comparisons)."""
        return [_fill(p.detach(), self.dtype, DEVICE, pk, po).detach().requires_grad_()
                for p, (_, pk, po, _, _) in zip(self.params, self.specs)]

    def grads_like(self, grads):
        """Copies of `grads` with the specs' gradient layouts."""
        return [_fill(g.detach(), self.dtype, DEVICE, gk, go)
                for g, (_, _, _, gk, go) in zip(grads, self.specs)]

    def grad_buffers(self):
        return [_alloc(s[0], self.dtype, DEVICE, s[3], s[4]) for s in self.specs]


def _cpu_list(tensors):
    """The tensors on the CPU (one device-to-host copy when they share a device)."""
    ts = [t.detach() for t in tensors]
    if not ts:
        return []
    devices = {t.device for t in ts}
    if len(devices) == 1 and next(iter(devices)).type != "cpu":
        flat = torch.cat([t.reshape(-1) for t in ts]).cpu()
        return [c.view(t.shape) for c, t in zip(flat.split([t.numel() for t in ts]), ts)]
    return [t.cpu() for t in ts]


def _flat(tensors, dtype=torch.float64):
    """One float64 CPU vector of all the tensors' elements (logical order)."""
    ts = [t.reshape(-1).to(dtype) for t in _cpu_list(tensors)]
    return torch.cat(ts) if ts else torch.zeros(0, dtype=dtype)


def _where(flat_index, sizes):
    """(tensor index, element index) of a position in a concatenation."""
    acc = 0
    for i, n in enumerate(sizes):
        if flat_index < acc + n:
            return i, flat_index - acc
        acc += n
    return None


def _check(actual, expected, rtol, atol, msg, sizes=None):
    """|actual - expected| <= atol + rtol * |expected| elementwise (float64 CPU
    vectors; NaN fails); a cheaper torch.testing.assert_close for long vectors."""
    assert actual.shape == expected.shape, f"{msg}: shape {actual.shape} != {expected.shape}"
    bound = atol + rtol * expected.abs()
    bad = ~((actual - expected).abs() <= bound)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        where = _where(i, sizes) if sizes else i
        raise AssertionError(
            f"{msg}: {int(bad.sum())} of {actual.numel()} elements off (rtol={rtol:g}, "
            f"atol={atol:g}); first at {where}: got {actual[i].item()!r}, expected "
            f"{expected[i].item()!r}, max abs error {float((actual - expected).abs().nan_to_num(float('inf')).max()):.3g}")


def _assert_params(params, refs, dtype, prev=None, msg=""):
    a = _flat(params)
    e = _flat(refs)
    assert a.shape == e.shape
    sizes = [p.numel() for p in params]
    if dtype == F32:
        _check(a, e, 1e-5, 1e-5, f"{msg}: float32 params (tensor, element)", sizes)
        return
    p0 = _flat(prev) if prev is not None else torch.zeros_like(e)
    bound = torch.finfo(dtype).eps * e.abs() + 1e-5 * p0.abs() + 1e-6
    err = (a - e).abs()
    bad = ~(err <= bound)  # NaN counts as bad
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        where = _where(i, [p.numel() for p in params])
        raise AssertionError(
            f"{msg}: {int(bad.sum())} of {a.numel()} {dtype} parameter elements off; first at "
            f"(tensor, element) {where}: got {a[i].item()!r}, expected {e[i].item()!r}, "
            f"previous {p0[i].item()!r}, bound {bound[i].item():.3g}")


def _assert_state_close(actual, expected, msg, extra_atol=0.0, sizes=None):
    """float32 kernel state vs the float64 oracle's state (float64 CPU vectors)."""
    actual, expected = actual.double().cpu().reshape(-1), expected.double().cpu().reshape(-1)
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    _check(actual, expected, 1e-5, 1e-6 * scale + 1e-30 + extra_atol, msg, sizes)


def _assert_states(opt, params, ref_opt, refs, keys, msg=""):
    for key in keys:
        for p in params:
            st = opt.state[p][key]
            assert st.dtype == torch.float32, f"{msg}: state {key!r} is {st.dtype}, expected float32"
            assert st.device == p.device and st.shape == p.shape, f"{msg}: state {key!r} misplaced"
        a = _flat([opt.state[p][key] for p in params])
        e = _flat([ref_opt.state[r][key] for r in refs])
        _assert_state_close(a, e, f"{msg}: state {key!r} (tensor, element)", sizes=[p.numel() for p in params])


def _assert_group_state(opt, ref_opt, cls, msg=""):
    a = opt.state[opt.param_groups[0]["params"][0]]
    e = ref_opt.state[ref_opt.param_groups[0]["params"][0]]
    for key in GROUP_KEYS[cls]:
        assert a[key].device.type == DEVICE.type, f"{msg}: group state {key!r} on {a[key].device}"
        torch.testing.assert_close(a[key].double().cpu(), e[key].double().cpu(), rtol=1e-6, atol=1e-12,
                                   msg=lambda m: f"{msg}: group state {key!r}\n{m}")


def _all_state(opt):
    """{(param index, key): clone} of every state tensor, in parameter order."""
    out = {}
    for i, p in enumerate(q for g in opt.param_groups for q in g["params"]):
        for k, v in opt.state.get(p, {}).items():
            if torch.is_tensor(v):
                out[(i, k)] = v.detach().clone()
    return out


def _assert_bitwise(params_a, params_b, opt_a, opt_b, msg=""):
    for i, (a, b) in enumerate(zip(params_a, params_b)):
        assert torch.equal(a.detach(), b.detach()), f"{msg}: parameter {i} differs"
    sa, sb = _all_state(opt_a), _all_state(opt_b)
    assert sa.keys() == sb.keys(), f"{msg}: state keys differ"
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), f"{msg}: state {k} differs"


@pytest.fixture(autouse=True)
def _free_cuda_memory():
    yield
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- layouts

SIZES_2D = [(33, 47), (), (2, 3, 1, 5), (13, 1, 3)]
EMPTY = [(0,), (4, 0, 3)]


def _layout(name, gen):
    """Tensor specs (shape, p_kind, p_offset, g_kind, g_offset) of a layout."""
    if name == "odd-sizes":  # aligned, odd sizes, 0-d, empty tensors in between
        shapes = [(n,) for n in ODD_SIZES] + SIZES_2D
        shapes = shapes[:3] + EMPTY[:1] + shapes[3:] + EMPTY[1:]
        return [(s, "plain", 0, "plain", 0) for s in shapes]
    if name == "misaligned":  # storage offsets of params and/or grads break 16-byte alignment
        offs = [(1, 0), (0, 1), (1, 1), (3, 2), (2, 3), (1, 3), (3, 1), (2, 2), (1, 2)]
        shapes = [(n,) for n in ODD_SIZES] + SIZES_2D
        return [(s, "plain", po, "plain", go) for s, (po, go) in zip(shapes, offs)]
    if name == "many-small":  # 3000 tensors of 1..50 elements (many launches), random offsets
        sizes = torch.randint(1, 51, (3000,), generator=gen).tolist()
        offs = torch.randint(0, 4, (3000, 2), generator=gen).tolist()
        specs = [((n,), "plain", po, "plain", go) for n, (po, go) in zip(sizes, offs)]
        specs[1000:1000] = [((0,), "plain", 0, "plain", 0)]  # an empty one among them
        return specs
    if name == "strides":  # dense non-contiguous (kernel) and not walkable (foreach fallback)
        return [
            ((300, 257), "t", 0, "t", 0),            # transposed param and grad: kernel
            ((129, 65), "t", 0, "plain", 0),         # grad laid out differently: fallback
            ((70001,), "strided", 0, "plain", 0),    # not dense: fallback
            ((1025,), "plain", 1, "plain", 0),       # misaligned: kernel, scalar path
            ((65536 + 7,), "plain", 0, "plain", 0),  # aligned: kernel, vector path
        ]
    if name == "launch-limits":
        small = torch.randint(1, 51, (68,), generator=gen).tolist()
        specs = [((n,), "plain", i % 2, "plain", 0) for i, n in enumerate(small[:63])]
        specs.append(((65536 * 300 + 9,), "plain", 0, "plain", 0))  # 301 chunks
        specs += [((n,), "plain", 0, "plain", 1) for n in small[63:]]
        return specs
    raise AssertionError(name)


LAYOUTS = ["odd-sizes", "misaligned", "many-small", "strides"]


# ----------------------------------------------------------------------------- tests


def test_build_info_matches_this_gpu():
    info = lossopt_cuda.build_info()
    assert info["cuda"] and info["cpu_kernels"], info
    assert info["cuda_version"].split(".")[0] == torch.version.cuda.split(".")[0], info
    major, minor = torch.cuda.get_device_capability()
    archs = [tuple(int(x) for x in a.split(".")) for a in info["cuda_archs"]]
    # either SASS for this GPU, or (PTX of) an older arch of which a newer GPU can JIT
    assert (major, minor) in archs or any(a <= (major, minor) for a in archs), (info, (major, minor))


def _run_vs_oracle(cfg, dtype, layout, steps):
    cls, hp = CONFIGS[cfg]
    gen = torch.Generator().manual_seed(_seed(cfg, dtype, layout))
    case = Case(_layout(layout, gen), dtype, gen)
    opt = cls(case.params, fused=True, **hp)
    ref = cls(case.refs, foreach=False, fused=False, **hp)
    keys = _state_keys(cls, hp)
    for k, L in enumerate(_losses(cls, gen, steps)):
        case.new_grads()
        prev = None
        if dtype != F32:
            case.reseed_refs()
            prev = [p.detach().clone() for p in case.params]
        given = _loss_form(L, k)
        assert opt.step(loss=given) is given
        ref.step(loss=L)
        msg = f"{cfg} {hp} {dtype} {layout} step {k + 1}"
        for p in case.params:
            assert p.dtype == dtype and p.device.type == DEVICE.type
        _assert_params(case.params, case.refs, dtype, prev, msg)
        _assert_states(opt, case.params, ref, case.refs, keys, msg)
        _assert_group_state(opt, ref, cls, msg)
    assert opt.skipped_steps == 0


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: DTYPE_IDS[d])
@pytest.mark.parametrize("cfg", CFG_NAMES)
def test_fused_matches_float64_reference(cfg, dtype, layout):
    _run_vs_oracle(cfg, dtype, layout, STEPS)


@pytest.mark.parametrize("dtype", [F32, BF16], ids=lambda d: DTYPE_IDS[d])
@pytest.mark.parametrize("cfg", ["adalo-adversarial", "adaml-wd", "adaloss", "adaloss-momentum-wd"])
def test_launch_limits(cfg, dtype):
    """A launch is full after 320 chunks or 30..64 tensors (by depth): a big
    tensor straddles launches behind a full tensor list."""
    _run_vs_oracle(cfg, dtype, "launch-limits", 3)


@pytest.mark.parametrize("cfg", ONE_PER_RULE)
def test_only_empty_tensors(cfg):
    cls, hp = CONFIGS[cfg]
    params = [torch.empty(s, device=DEVICE).requires_grad_() for s in [(0,), (3, 0), (0, 0, 2)]]
    for p in params:
        p.grad = torch.empty_like(p)
    opt = cls(params, fused=True, **hp)
    for L in [1.0, 2.0]:
        opt.step(loss=torch.tensor(L, device=DEVICE))
    torch.cuda.synchronize()
    for p in params:
        assert p.numel() == 0
        for key in _state_keys(cls, hp):
            assert opt.state[p][key].shape == p.shape
    if cls is AdamL:
        assert float(opt.state[params[0]]["step"]) == 2.0
    assert opt.skipped_steps == 0


@pytest.mark.parametrize("cfg", CFG_NAMES)
def test_parameter_groups_and_mixed_dtypes(cfg):
    """Two groups with their own hyper-parameters; one group mixes float32,
    bfloat16 and float16 parameters (one kernel call per dtype bucket)."""
    cls, hp = CONFIGS[cfg]
    gen = torch.Generator().manual_seed(_seed("groups", cfg))
    hp2 = dict(hp)
    if cls is AdaLo:
        hp2["kappa"] = hp["kappa"] * 2
    else:
        hp2["lr"] = hp["lr"] / 2
    cases = {d: Case([((1000 + 3 * i,), "plain", i % 2, "plain", 0) for i in range(3)], d, gen)
             for d in DTYPES}
    g1 = cases[F32].params[:2] + cases[BF16].params[:2] + cases[F16].params[:1]
    g2 = cases[F32].params[2:] + cases[BF16].params[2:] + cases[F16].params[1:]
    r1 = cases[F32].refs[:2] + cases[BF16].refs[:2] + cases[F16].refs[:1]
    r2 = cases[F32].refs[2:] + cases[BF16].refs[2:] + cases[F16].refs[1:]
    opt = cls([{"params": g1}, {"params": g2, **hp2}], fused=True, **hp)
    ref = cls([{"params": r1}, {"params": r2, **hp2}], foreach=False, fused=False, **hp)
    for k, L in enumerate(_losses(cls, gen, 3)):
        for c in cases.values():
            c.new_grads()
            if c.dtype != F32:
                c.reseed_refs()
        prevs = {d: [p.detach().clone() for p in c.params] for d, c in cases.items()}
        opt.step(loss=_loss_form(L, k))
        ref.step(loss=L)
        for d, c in cases.items():
            _assert_params(c.params, c.refs, d, prevs[d] if d != F32 else None, f"{cfg} {d} step {k + 1}")
            _assert_states(opt, c.params, ref, c.refs, _state_keys(cls, hp), f"{cfg} {d} step {k + 1}")


@pytest.mark.slow
@pytest.mark.parametrize("cfg,offset", [("adalo-adversarial", 0), ("adaml-normalize-wd", 0),
                                        ("adaloss-momentum-wd", 1)])
def test_tensor_with_more_than_2_31_elements(cfg, offset):
    """One bfloat16 parameter of 2**31 + 5 elements (plus a small one after it
    in the same call): checked on sampled slices, including the elements
    around 2**30 (2**31 bytes), around 2**31 and at the very end."""
    cls, hp = CONFIGS[cfg]
    n = 2**31 + 5
    dtype = BF16
    n_states = len(_state_keys(cls, hp))
    need = n * (2 + 2 + 4 * n_states) + (2 << 30)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    free, _total = torch.cuda.mem_get_info()
    if free < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB of free GPU memory, {free / 2**30:.1f} GiB free")

    cgen = torch.Generator(device=DEVICE).manual_seed(_seed("huge", cfg))
    gen = torch.Generator().manual_seed(_seed("huge-cpu", cfg))

    def fill_random(t):
        step = 1 << 28
        for s in range(0, t.numel(), step):
            t[s:s + step].normal_(generator=cgen)

    big = small = opt = None
    try:
        big = _alloc((n,), dtype, DEVICE, "plain", offset)
        fill_random(big)
        big = big.detach().requires_grad_()
        big.grad = _alloc((n,), dtype, DEVICE, "plain", offset)
        small_vals = torch.randn(1000, generator=gen, dtype=torch.float64)
        small = small_vals.to(dtype).to(DEVICE).requires_grad_()
        small.grad = torch.empty_like(small)

        ranges = [(0, 4096), (65536 * 7 - 100, 65536 * 7 + 100), (2**30 - 300, 2**30 + 300),
                  (2**31 - 3 * 65536 - 50, 2**31 - 3 * 65536 + 50), (n - 70000, n)]

        def sample(t):
            return torch.cat([t.detach()[a:b] for a, b in ranges]).to(torch.float64).cpu()

        ref_p = sample(big).requires_grad_()
        ref_small = small.detach().to(torch.float64).cpu().requires_grad_()
        opt = cls([big, small], fused=True, **hp)
        ref = cls([ref_p, ref_small], foreach=False, fused=False, **hp)
        keys = _state_keys(cls, hp)
        for k, L in enumerate(_losses(cls, gen, 2)):
            fill_random(big.grad)
            small.grad.copy_(torch.randn(1000, generator=gen, dtype=torch.float64))
            with torch.no_grad():
                ref_p.copy_(sample(big))
                ref_small.copy_(small.detach().double().cpu())
            ref_p.grad = sample(big.grad)
            ref_small.grad = small.grad.double().cpu()
            prev = [ref_p.detach().clone(), ref_small.detach().clone()]
            opt.step(loss=torch.tensor(L, device=DEVICE))
            ref.step(loss=L)
            msg = f"{cfg} 2**31+5 elements offset {offset} step {k + 1}"
            _assert_params([sample(big), small.detach().double().cpu()], [ref_p, ref_small], dtype, prev, msg)
            for key in keys:
                assert opt.state[big][key].numel() == n
                _assert_state_close(sample(opt.state[big][key]), ref.state[ref_p][key].detach(), f"{msg} {key}")
                _assert_state_close(opt.state[small][key].double().cpu(), ref.state[ref_small][key].detach(),
                                    f"{msg} small {key}")
    finally:  # drop the big tensors even when a check fails (a kept traceback holds the frame)
        big = small = opt = None
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- bad losses

BAD = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "below-minus-one": -1.5}
BAD_CASES = [(cfg, bad, form)
             for cfg in CFG_NAMES
             for bad in BAD
             if bad != "below-minus-one" or CONFIGS[cfg][0] is AdaLo
             for form in (["cuda-tensor", "python"] if bad in ("nan", "below-minus-one") else ["cuda-tensor"])]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("dtype", [F32, BF16], ids=lambda d: DTYPE_IDS[d])
@pytest.mark.parametrize("cfg,bad,form", BAD_CASES)
def test_bad_loss_changes_nothing(cfg, bad, form, dtype):
    cls, hp = CONFIGS[cfg]
    gen = torch.Generator().manual_seed(_seed("bad", cfg, bad, form, dtype))
    specs = [((65537,), "plain", 0, "plain", 0), ((5,), "plain", 1, "plain", 1),
             ((17, 9), "t", 0, "plain", 0),  # foreach fallback inside the fused call
             ((0,), "plain", 0, "plain", 0)]
    case = Case(specs, dtype, gen)
    twin_params = case.twin_params()
    opt = cls(case.params, fused=True, **hp)
    twin = cls(twin_params, fused=True, **hp)  # never sees the bad step
    losses = _losses(cls, gen, 3)
    for L in losses[:2]:
        case.new_grads()
        for q, g in zip(twin_params, case.grads_like([p.grad for p in case.params])):
            q.grad = g
        opt.step(loss=torch.tensor(L, device=DEVICE))
        twin.step(loss=torch.tensor(L, device=DEVICE))

    before_p = [p.detach().clone() for p in case.params]
    before_s = _all_state(opt)
    for p in case.params:
        p.grad = torch.full_like(p, float("nan"))
    value = BAD[bad]
    opt.step(loss=torch.tensor(value, device=DEVICE) if form == "cuda-tensor" else value)
    torch.cuda.synchronize()
    for i, (p, b) in enumerate(zip(case.params, before_p)):
        assert torch.equal(p.detach(), b), f"parameter {i} changed on a {bad} loss"
    after_s = _all_state(opt)
    assert after_s.keys() == before_s.keys()
    for key in before_s:
        assert torch.equal(after_s[key], before_s[key]), f"state {key} changed on a {bad} loss"
    assert opt.skipped_steps == 1
    assert twin.skipped_steps == 0

    # the next good step is the step the twin takes without the bad one
    case.new_grads()
    for q, g in zip(twin_params, case.grads_like([p.grad for p in case.params])):
        q.grad = g
    opt.step(loss=torch.tensor(losses[2], device=DEVICE))
    twin.step(loss=torch.tensor(losses[2], device=DEVICE))
    _assert_bitwise(case.params, twin_params, opt, twin, f"{cfg} after a {bad} loss")
    assert opt.skipped_steps == 1


# ----------------------------------------------------------------------------- CUDA graphs


def _graph_vs_eager(cfg, dtype, lr_values=None, opts=None):
    """Capture opt.step(loss=static_loss) in a CUDA graph and replay it; an
    eager optimizer takes the same steps. Replay 3 has a NaN loss and NaN grads.
    lr_values: per-step values of a tensor lr (changed in place between replays).
    opts: more constructor arguments of both (then they must agree to the bit)."""
    cls, hp = CONFIGS[cfg]
    hp = dict(hp)
    gen = torch.Generator().manual_seed(_seed("graph", cfg, dtype, lr_values is not None))
    specs = [((65537,), "plain", 0, "plain", 0), ((3, 5), "plain", 1, "plain", 2),
             ((1000,), "plain", 0, "plain", 3), ((17, 9), "t", 0, "plain", 0),
             ((40, 30), "t", 0, "t", 0), ((0,), "plain", 0, "plain", 0)]
    case = Case(specs, dtype, gen)
    eager_params = case.twin_params()
    init = [p.detach().clone() for p in case.params]
    hp_g, hp_e = dict(hp), dict(hp)
    if lr_values is not None:
        hp_g["lr"] = torch.tensor(lr_values[0], device=DEVICE)
        hp_e["lr"] = torch.tensor(lr_values[0], device=DEVICE)
    opts = dict(opts or {})
    if opts.get("state_dtype") is not None or opts.get("stochastic_rounding"):
        opts.setdefault("rounding_seed", _seed("graph seed", cfg))
    opt = cls(case.params, fused=True, **hp_g, **opts)
    eager = cls(eager_params, fused=True, **hp_e, **opts)

    static_grads = case.grad_buffers()
    eager_grads = case.grad_buffers()
    for p, g in zip(case.params, static_grads):
        p.grad = g
    for p, g in zip(eager_params, eager_grads):
        p.grad = g
    static_loss = torch.zeros((), dtype=torch.float32, device=DEVICE)
    eager_loss = torch.zeros((), dtype=torch.float32, device=DEVICE)

    n_warmup, n_replay, nan_at = 3, 6, 3
    losses = _losses(cls, gen, n_warmup + n_replay)
    grads = [[torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype) for p in case.params]
             for _ in losses]
    losses[n_warmup + nan_at] = float("nan")
    grads[n_warmup + nan_at] = [torch.full(p.shape, float("nan"), dtype=dtype) for p in case.params]

    def load(step, gs, loss_t):
        for g, v in zip(gs, grads[step]):
            g.copy_(v)
        loss_t.fill_(losses[step])
        if lr_values is not None:
            for o in (opt, eager):
                o.param_groups[0]["lr"].fill_(lr_values[step])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for step in range(n_warmup):
                load(step, static_grads, static_loss)
                opt.step(loss=static_loss)
        torch.cuda.current_stream().wait_stream(side)

        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            opt.step(loss=static_loss)

        for step in range(n_warmup, n_warmup + n_replay):
            load(step, static_grads, static_loss)
            graph.replay()
        torch.cuda.synchronize()

        for step in range(n_warmup + n_replay):
            load(step, eager_grads, eager_loss)
            eager.step(loss=eager_loss)
        torch.cuda.synchronize()

    msg = f"{cfg} {dtype} graph replay vs eager"
    for i, (a, b) in enumerate(zip(case.params, eager_params)):
        assert bool(torch.isfinite(a).all()), f"{msg}: parameter {i} not finite"
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-7,
                                   msg=lambda m: f"{msg}: parameter {i}\n{m}")
    sa, sb = _all_state(opt), _all_state(eager)
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=1e-6, atol=1e-7,
                                   msg=lambda m: f"{msg}: state {key}\n{m}")
    if opts:
        _assert_bitwise(case.params, eager_params, opt, eager, msg)
    assert opt.skipped_steps == 1
    assert eager.skipped_steps == 1
    if cls is AdamL:  # the step count advanced inside the graph, except on the NaN replay
        assert float(opt.state[case.params[0]]["step"]) == n_warmup + n_replay - 1
    for i, (p, p0) in enumerate(zip(case.params, init)):
        if p.numel():
            assert not torch.equal(p.detach(), p0), f"{msg}: parameter {i} never moved"


@pytest.mark.parametrize("dtype", [F32, BF16], ids=lambda d: DTYPE_IDS[d])
@pytest.mark.parametrize("cfg", CFG_NAMES)
def test_cuda_graph_capture_matches_eager(cfg, dtype):
    _graph_vs_eager(cfg, dtype)


@pytest.mark.parametrize("cfg", ["adaml-wd", "adaloss-momentum-wd"])
def test_cuda_graph_tensor_lr_changes_between_replays(cfg):
    _graph_vs_eager(cfg, F32, lr_values=[1e-2, 2e-2, 5e-3, 1e-2, 3e-2, 1e-3, 2e-2, 1e-2, 4e-3])


@pytest.mark.parametrize("master", [False, True], ids=["plain", "bf16-master"])
@pytest.mark.parametrize("cfg", ONE_PER_RULE)
def test_cuda_graph_of_a_whole_training_step(cfg, master):
    """Forward, loss, backward and opt.step(loss=loss) captured in one CUDA
    graph (torch's whole-network capture recipe) and replayed on new batches
    equal the same training run done eagerly."""
    cls, hp = CONFIGS[cfg]
    dtype = BF16 if master else F32
    torch.manual_seed(_seed("whole-graph", cfg, master))

    def make_model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(37, 64), torch.nn.Tanh(),
                                   torch.nn.Linear(64, 5)).to(DEVICE, dtype)

    batches = [(torch.randn(16, 37, device=DEVICE, dtype=dtype),
                torch.randint(0, 5, (16,), device=DEVICE)) for _ in range(8)]
    loss_fn = torch.nn.CrossEntropyLoss()

    def train_step(model, opt, x, y):
        loss = loss_fn(model(x).float(), y)
        loss.backward()
        opt.step(loss=loss)
        return loss

    eager_model, graph_model = make_model(), make_model()
    eager = cls(eager_model.parameters(), fused=True, master_weights=master, **hp)
    opt = cls(graph_model.parameters(), fused=True, master_weights=master, **hp)
    static_x, static_y = batches[0][0].clone(), batches[0][1].clone()

    n_warmup = 3
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for x, y in batches[:n_warmup]:
            static_x.copy_(x)
            static_y.copy_(y)
            opt.zero_grad(set_to_none=True)
            train_step(graph_model, opt, static_x, static_y)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = train_step(graph_model, opt, static_x, static_y)
    graph_losses = []
    for x, y in batches[n_warmup:]:
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()
        graph_losses.append(static_loss.clone())

    eager_losses = []
    for i, (x, y) in enumerate(batches):
        eager.zero_grad(set_to_none=True)
        loss = train_step(eager_model, eager, x, y)
        if i >= n_warmup:
            eager_losses.append(loss.detach().clone())
    torch.cuda.synchronize()

    torch.testing.assert_close(torch.stack(graph_losses), torch.stack(eager_losses), rtol=1e-5, atol=1e-6)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == F32 else dict(rtol=2**-7, atol=1e-4)
    for a, b in zip(graph_model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(a.detach(), b.detach(), **tol)
    sa, sb = _all_state(opt), _all_state(eager)
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=1e-5, atol=1e-6, msg=lambda m: f"{key}\n{m}")
    if cls is AdamL:
        assert float(opt.state[next(graph_model.parameters())]["step"]) == len(batches)


# ----------------------------------------------------------------------------- path selection


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: DTYPE_IDS[d])
@pytest.mark.parametrize("cfg", ["adalo-adversarial", "adaml", "adaloss", "adaloss-momentum-wd"])
def test_fused_none_uses_the_kernels(cfg, dtype):
    cls, hp = CONFIGS[cfg]
    gen = torch.Generator().manual_seed(_seed("none", cfg, dtype))
    case = Case(_layout("misaligned", gen), dtype, gen)
    twin_params = case.twin_params()
    opt_none = cls(case.params, **hp)  # fused=None, foreach=None
    opt_true = cls(twin_params, fused=True, **hp)
    assert opt_none._choose_impl(DEVICE, dtype) is cls._fused
    for k, L in enumerate(_losses(cls, gen, 3)):
        case.new_grads()
        for q, g in zip(twin_params, case.grads_like([p.grad for p in case.params])):
            q.grad = g
        with mock.patch.object(_fused, "_launch", wraps=_fused._launch) as spy:
            opt_none.step(loss=_loss_form(L, k))
        assert spy.call_count == 1, "fused=None on CUDA did not take the fused path"
        opt_true.step(loss=_loss_form(L, k))
    _assert_bitwise(case.params, twin_params, opt_none, opt_true, f"{cfg} {dtype} fused=None vs True")


@pytest.mark.parametrize("cfg", ONE_PER_RULE)
def test_float64_on_cuda(cfg):
    """No float64 CUDA kernel: fused=True raises before anything changes,
    fused=None falls back to foreach."""
    cls, hp = CONFIGS[cfg]
    p = torch.randn(100, dtype=torch.float64, device=DEVICE).requires_grad_()
    p.grad = torch.randn_like(p)
    before = p.detach().clone()
    opt = cls([p], fused=True, **hp)
    with pytest.raises(RuntimeError, match="float64"):
        opt.step(loss=1.0)
    assert torch.equal(p.detach(), before) and not opt.state[p]
    q = before.clone().requires_grad_()
    q.grad = p.grad.clone()
    r = before.clone().requires_grad_()
    r.grad = p.grad.clone()
    opt_none, opt_foreach = cls([q], **hp), cls([r], foreach=True, **hp)
    assert opt_none._choose_impl(DEVICE, torch.float64) is cls._foreach
    opt_none.step(loss=1.5)
    opt_foreach.step(loss=1.5)
    assert torch.equal(q, r) and not torch.equal(q, before)


@pytest.mark.parametrize("cfg", ONE_PER_RULE)
def test_kernels_run_on_the_current_stream(cfg):
    """The step runs on a side stream whose gradients are written behind a long
    sleep: a kernel launched on any other stream would read stale gradients
    (and scalars not yet computed)."""
    cls, hp = CONFIGS[cfg]
    gen = torch.Generator().manual_seed(_seed("stream", cfg))
    case = Case([((65537,), "plain", 0, "plain", 0), ((1001,), "plain", 1, "plain", 1)], F32, gen)
    opt = cls(case.params, fused=True, **hp)
    ref = cls(case.refs, foreach=False, fused=False, **hp)
    static = case.grad_buffers()
    for buf in static:
        buf.fill_(1.0)
    side = torch.cuda.Stream()
    for k, L in enumerate(_losses(cls, gen, 3)):
        case.new_grads()
        staged = [p.grad for p in case.params]
        for p, buf in zip(case.params, static):
            p.grad = buf  # the step reads these, written on the side stream
        loss = torch.tensor(L, device=DEVICE)
        torch.cuda.synchronize()
        with torch.cuda.stream(side):
            torch.cuda._sleep(50_000_000)
            for buf, new in zip(static, staged):
                buf.copy_(new)
            opt.step(loss=loss)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        ref.step(loss=L)
        _assert_params(case.params, case.refs, F32, msg=f"{cfg} side stream step {k + 1}")


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("dtype", [F32, BF16], ids=lambda d: DTYPE_IDS[d])
@pytest.mark.parametrize("cfg", CFG_NAMES)
def test_checkpoint_from_fused_cuda_resumes_on_foreach_cpu(cfg, dtype):
    cls, hp = CONFIGS[cfg]
    gen = torch.Generator().manual_seed(_seed("ckpt", cfg, dtype))
    specs = [((65537,), "plain", 0, "plain", 0), ((3, 5), "plain", 1, "plain", 0),
             ((1,), "plain", 0, "plain", 0), ((7,), "plain", 3, "plain", 1)]
    case = Case(specs, dtype, gen)
    opt = cls(case.params, fused=True, **hp)
    losses = _losses(cls, gen, 6)
    sched = [[torch.randn(s[0], generator=gen, dtype=torch.float64).to(dtype) for s in specs]
             for _ in losses]

    def step(o, params, k):
        for p, g in zip(params, sched[k]):
            p.grad = g.to(p.device)
        o.step(loss=losses[k])

    for k in range(3):
        step(opt, case.params, k)

    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    sd_cpu = torch.load(buf, map_location="cpu", weights_only=True)
    buf.seek(0)
    sd_cuda = torch.load(buf, weights_only=True)

    cpu_params = [p.detach().cpu().clone().requires_grad_() for p in case.params]
    cpu_opt = cls(cpu_params, foreach=True, **hp)
    cpu_opt.load_state_dict(sd_cpu)
    resumed_params = case.twin_params()
    resumed = cls(resumed_params, fused=True, **hp)
    resumed.load_state_dict(sd_cuda)
    for p in cpu_params:
        for key, v in cpu_opt.state[p].items():
            assert v.device.type == "cpu", f"state {key} on {v.device}"
    for k in range(3, 6):
        step(opt, case.params, k)
        step(resumed, resumed_params, k)
        step(cpu_opt, cpu_params, k)
    torch.cuda.synchronize()

    _assert_bitwise(case.params, resumed_params, opt, resumed, f"{cfg} {dtype} fused resumed")
    msg = f"{cfg} {dtype} fused CUDA vs foreach CPU after resuming"
    eps = torch.finfo(dtype).eps
    for i, (a, b) in enumerate(zip(case.params, cpu_params)):
        a64, b64 = a.detach().double().cpu(), b.detach().double()
        if dtype == F32:
            torch.testing.assert_close(a64, b64, rtol=1e-5, atol=1e-5, msg=lambda m: f"{msg}: param {i}\n{m}")
        else:  # the two paths may round a value differently: a few ulps over 3 steps
            assert bool(((a64 - b64).abs() <= 3 * eps * b64.abs() + 1e-5).all()), f"{msg}: param {i}"
    pmax = max(float(p.detach().abs().max()) for p in cpu_params)
    for (i, key), va in _all_state(opt).items():
        vb = cpu_opt.state[cpu_params[i]][key]
        assert va.dtype == vb.dtype, f"{msg}: state {key} dtype"
        extra = 0.0
        if key == "momentum_buffer" and dtype != F32:  # d holds weight_decay * p
            extra = 9 * eps * hp.get("weight_decay", 0.0) * pmax
        _assert_state_close(va.double().cpu(), vb.double(), f"{msg}: state {i} {key}", extra)


@pytest.mark.parametrize("cfg", ONE_PER_RULE)
def test_cuda_state_dict_loaded_directly_into_cpu_optimizer(cfg):
    """opt_cpu.load_state_dict(opt_cuda.state_dict()) with no torch.save in
    between: the state must be complete when load_state_dict returns (an
    asynchronous device-to-host copy would leave the end of a large state
    tensor unwritten for milliseconds)."""
    cls, hp = CONFIGS[cfg]
    n = 2**24
    gen = torch.Generator().manual_seed(_seed("direct", cfg))
    case = Case([((n,), "plain", 0, "plain", 0)], F32, gen)
    opt = cls(case.params, fused=True, **hp)
    case.new_grads()
    opt.step(loss=1.25)
    expected = {k: v.detach().cpu().clone() for k, v in opt.state[case.params[0]].items()}
    cpu_p = case.params[0].detach().cpu().clone().requires_grad_()
    cpu_opt = cls([cpu_p], foreach=True, **hp)
    sd = opt.state_dict()
    torch.cuda.synchronize()
    cpu_opt.load_state_dict(sd)
    got = cpu_opt.state[cpu_p]
    # read the ends first: they are what an unfinished copy has not written yet
    for key, v in expected.items():
        assert got[key].device.type == "cpu"
        assert torch.equal(got[key].reshape(-1)[-4096:], v.reshape(-1)[-4096:]), (
            f"state {key!r} was not fully loaded when load_state_dict returned")
    for key, v in expected.items():
        assert torch.equal(got[key], v), f"state {key!r} differs after load_state_dict"


@pytest.mark.parametrize("variant", ["cuda-and-cpu-params", "cpu-params-cuda-loss"])
@pytest.mark.parametrize("cfg", ONE_PER_RULE)
def test_cpu_parameters_with_a_busy_gpu(cfg, variant):
    """CPU parameters stepped with values from the GPU (the README: the loss may
    be a tensor on any device; a group may span devices). The GPU is kept
    busy, so a value copied to the host without waiting would not be there."""
    cls, hp = CONFIGS[cfg]
    gen = torch.Generator().manual_seed(_seed("busy", cfg, variant))
    vals = [torch.randn(s, generator=gen, dtype=torch.float64) for s in [(1000,), (5000,), (3,)]]
    if variant == "cuda-and-cpu-params":
        devices = [DEVICE, CPU, DEVICE]  # the group's scalars live on the first parameter's device
    else:
        devices = [CPU, CPU, CPU]
    params = [v.float().to(d).requires_grad_() for v, d in zip(vals, devices)]
    refs = [p.detach().double().cpu().requires_grad_() for p in params]
    opt = cls(params, **hp)
    ref = cls(refs, foreach=False, fused=False, **hp)
    for k, L in enumerate(_losses(cls, gen, 3)):
        for p, r in zip(params, refs):
            g = torch.randn(p.shape, generator=gen, dtype=torch.float64).float()
            p.grad = g.to(p.device)
            r.grad = g.double()
        loss = torch.tensor(L, device=DEVICE)
        torch.cuda.synchronize()
        torch.cuda._sleep(200_000_000)
        opt.step(loss=loss)
        torch.cuda.synchronize()
        ref.step(loss=L)
        _assert_params(params, refs, F32, msg=f"{cfg} {variant} step {k + 1}")


# ----------------------------------------------------------------------------
# torch.amp.GradScaler on the fused CUDA path: unscaled in the kernel, an
# overflow skipped on the device; bit-exact against training without a scaler.
# ----------------------------------------------------------------------------
def _scaler_run(cfg, dtype, use_scaler, poison_step=None, skip_step=None):
    cls, hp = CONFIGS[cfg]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(33, 17), torch.nn.Tanh(), torch.nn.Linear(17, 5))
    model = model.to(DEVICE, dtype)
    opt = cls(model.parameters(), fused=True, **hp)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10, growth_interval=2) if use_scaler else None
    gen = torch.Generator().manual_seed(1)
    for i in range(6):
        x = torch.randn(8, 33, generator=gen).to(DEVICE, dtype)
        y = torch.randn(8, 5, generator=gen).to(DEVICE, dtype)
        if i == skip_step:
            continue
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x).float(), y.float())
        (scaler.scale(loss) if scaler else loss).backward()
        if i == poison_step:
            model[0].weight.grad[0, 0] = float("inf")
            before = [p.detach().clone() for p in model.parameters()]
            state_before = {k: v.clone() for k, v in opt.state[model[0].weight].items()}
        if scaler:
            scaler.step(opt, loss=loss)
            scaler.update()
        else:
            opt.step(loss=loss)
        if i == poison_step:
            for a, b in zip(before, model.parameters()):
                assert torch.equal(a, b)
            for k, v in state_before.items():
                assert torch.equal(v, opt.state[model[0].weight][k]), k
    return model


@pytest.mark.parametrize("dtype", [F32, BF16], ids=lambda d: DTYPE_IDS[d])
@pytest.mark.parametrize("cfg", ONE_PER_RULE)
def test_grad_scaler_fused_equals_unscaled(cfg, dtype):
    plain = _scaler_run(cfg, dtype, use_scaler=False)
    scaled = _scaler_run(cfg, dtype, use_scaler=True)
    for a, b in zip(plain.parameters(), scaled.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cfg", ONE_PER_RULE)
def test_grad_scaler_overflow_skips_on_device(cfg):
    poisoned = _scaler_run(cfg, F32, use_scaler=True, poison_step=2)
    reference = _scaler_run(cfg, F32, use_scaler=False, skip_step=2)
    for a, b in zip(reference.parameters(), poisoned.parameters()):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- the advance ops


@pytest.mark.parametrize("cfg", CFG_NAMES)
def test_cuda_advance_op_matches_the_cpu_one(cfg):
    """The scalar step in a one-thread kernel equals the host one: the same
    validity and skip count; group state and scalars to within a few float64
    roundings (nvcc may fuse a multiply-add, and CUDA's pow is within 2 ulp,
    which 1 - beta**k magnifies)."""
    cls, hp = CONFIGS[cfg]
    gen = torch.Generator().manual_seed(_seed("advance", cfg))
    opt = cls([torch.zeros(3, requires_grad=True)], **hp)
    group = opt.param_groups[0]
    states = {d: opt._init_group_state(group, d) for d in (CPU, DEVICE)}
    skips = {d: torch.zeros((), dtype=torch.int64, device=d) for d in (CPU, DEVICE)}
    lo, hi = LOSS_RANGE[cls]
    losses = [lo + (hi - lo) * float(u) for u in torch.rand(12, generator=gen)]
    losses[3], losses[7], losses[9] = math.nan, math.inf, -5.0
    for i, L in enumerate(losses):
        vectors = {}
        for d in (CPU, DEVICE):
            vectors[d] = _fused.advance(
                opt._advance_op(), torch.tensor(L, dtype=torch.float64, device=d),
                [states[d][k] for k in GROUP_KEYS[cls]],
                found_inf=torch.tensor(float(i == 5), device=d),
                grad_scale=torch.tensor(2.0**10, device=d), lr=group["lr"], skips=skips[d],
                hyper=opt._hyper(group))
        cpu, gpu = vectors[CPU], vectors[DEVICE].cpu()
        assert torch.equal(cpu[:2], gpu[:2]), f"{cfg} step {i}: validity or scale"
        torch.testing.assert_close(gpu, cpu, rtol=1e-12, atol=0, equal_nan=True)
        assert int(skips[CPU]) == int(skips[DEVICE])
        for k in GROUP_KEYS[cls]:
            torch.testing.assert_close(states[DEVICE][k].cpu(), states[CPU][k], rtol=2**-23, atol=0)


# ----------------------------------------------------------------------------- master weights


@pytest.mark.parametrize("dtype", [F16, BF16], ids=lambda d: DTYPE_IDS[d])
@pytest.mark.parametrize("cfg", ONE_PER_RULE)
def test_master_weights_in_the_kernel(cfg, dtype):
    """master_weights=True on CUDA: the kernel steps the float32 masters (the
    float32 trajectory of the same gradients) and writes each parameter as its
    rounded master, on the vector path and, for a parameter 2 bytes off
    16-byte alignment, the scalar path."""
    cls, hp = CONFIGS[cfg]
    gen = torch.Generator().manual_seed(_seed("master", cfg, dtype))
    sizes = [1, 3, 4099, 65537]
    values = [torch.randn(n, generator=gen) for n in sizes]
    backing = torch.empty(sizes[-1] + 1, dtype=dtype, device=DEVICE)
    params = [v.to(dtype).to(DEVICE).requires_grad_() for v in values[:-1]]
    offset = backing[1:]  # 2 bytes past an aligned address
    offset.copy_(values[-1].to(dtype))
    params.append(offset.requires_grad_())
    refs = [p.detach().double().cpu().requires_grad_() for p in params]
    opt = cls(params, fused=True, master_weights=True, **hp)
    ref = cls(refs, foreach=False, fused=False, **hp)
    lo, hi = LOSS_RANGE[cls]
    for _ in range(STEPS):
        loss = lo + (hi - lo) * float(torch.rand((), generator=gen))
        for p, r in zip(params, refs):
            g = torch.randn(p.shape, generator=gen).to(dtype)
            p.grad = g.to(DEVICE)
            r.grad = g.double()
        opt.step(loss=loss)
        ref.step(loss=loss)
    torch.cuda.synchronize()
    for i, (p, r) in enumerate(zip(params, refs)):
        master = opt.state[p]["master_param"]
        assert master.dtype == F32
        torch.testing.assert_close(master.double().cpu(), r.detach(), rtol=1e-5, atol=1e-5,
                                   msg=f"{cfg} {dtype} master {i}")
        assert torch.equal(p.detach(), master.to(dtype)), f"{cfg} {dtype}: param {i} is not its rounded master"


# ----------------------------------------------------------------------------- stochastic rounding

#: (parameter dtype, state_dtype, stochastic_rounding, master_weights)
ROUNDED = {
    "bf16-params-and-state": (BF16, BF16, True, False),
    "bf16-params-f32-state": (BF16, None, True, False),
    "f32-params-bf16-state": (F32, BF16, False, False),
    "f16-master-bf16-state": (F16, BF16, False, True),
    "bf16-bf16-state": (BF16, BF16, False, False),
}
#: A 0-d tensor, odd sizes, and two over the kernels' 2^16-element chunk.
ROUNDED_SHAPES = [(), (7,), (13, 5), (65_536 + 3,), (3, 43_691)]


def _placed(values, device, misaligned):
    """``values`` on ``device``, one element past an aligned address where
    ``misaligned`` (the kernels' scalar path), else at its own allocation."""
    if not misaligned:
        return values.to(device)
    backing = torch.empty(values.numel() + 1, dtype=values.dtype, device=device)
    out = backing[1:].view(values.shape)
    out.copy_(values)
    return out


def _bits(t):
    return t.view(torch.int16) if t.element_size() == 2 else t.view(torch.int32)


def _rounded_trajectory(cfg, config, path, steps=3):
    """Parameters and state after ``steps`` rounded steps on CUDA from fixed
    inputs, on the fused path (kernels) or the foreach path."""
    cls, hp = CONFIGS[cfg]
    pdtype, sdtype, rounded, master = ROUNDED[config]
    gen = torch.Generator().manual_seed(_seed("rounded", cfg, config))
    params = [_placed(torch.randn(s, generator=gen).to(pdtype), DEVICE, i % 2 == 1).requires_grad_()
              for i, s in enumerate(ROUNDED_SHAPES)]
    losses = _losses(cls, gen, steps)
    kw = dict(fused=True) if path == "fused" else dict(foreach=True, fused=False)
    opt = cls(params, **hp, **kw, state_dtype=sdtype, stochastic_rounding=rounded,
              master_weights=master, rounding_seed=_seed("rounding seed", cfg))
    for k in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(pdtype).to(DEVICE)
        opt.step(loss=losses[k])
    torch.cuda.synchronize()
    return [p.detach().clone() for p in params], _all_state(opt)


@pytest.mark.parametrize("config", ROUNDED)
@pytest.mark.parametrize("cfg", CFG_NAMES)
def test_rounded_kernels_write_the_foreach_bits(cfg, config):
    """bfloat16 state and stochastically rounded parameters on CUDA: the
    kernels (compiled with --fmad=false) write the very bits of the foreach
    path, which test_bf16_state.py checks against float64 and
    test_rounding.py's oracle, step after step."""
    fused_p, fused_s = _rounded_trajectory(cfg, config, "fused")
    foreach_p, foreach_s = _rounded_trajectory(cfg, config, "foreach")
    for i, (a, b) in enumerate(zip(fused_p, foreach_p)):
        assert a.dtype == b.dtype and torch.equal(_bits(a), _bits(b)), f"{cfg} {config}: parameter {i}"
    assert fused_s.keys() == foreach_s.keys()
    for key in fused_s:
        a, b = fused_s[key], foreach_s[key]
        same = torch.equal(_bits(a), _bits(b)) if a.dtype in (F32, F16, BF16) else torch.equal(a, b)
        assert a.dtype == b.dtype and same, f"{cfg} {config}: state {key}"
    per_element = [v for (_, k), v in fused_s.items() if k in ("exp_avg", "exp_avg_sq", "momentum_buffer")]
    assert all(v.dtype == (ROUNDED[config][1] or F32) for v in per_element), f"{cfg} {config}: state dtype"


# (op, scalar vector's rule part, state count, arguments)
ROUNDED_OPS = {
    "adalo_": ([0.05], 1, (0.8, 0.05)),
    "adaml_": ([0.02, 0.3, 1e-7, 0.4, 0.05], 2, (0.9, 0.99, 0.01)),
    "adaloss_": ([0.2, 1.5], 1, (0.9, 0.01)),
}


@pytest.mark.skipif(not lossopt_cuda.build_info()["cpu_kernels"], reason="no CPU kernels in this install")
@pytest.mark.parametrize("config", ["bf16-params-and-state", "f32-params-bf16-state", "f16-master-bf16-state"])
@pytest.mark.parametrize("op", ROUNDED_OPS)
def test_rounded_cuda_op_writes_the_cpu_kernels_bits(op, config):
    """The same op with the same scalar vector and rounding arguments on CUDA
    and on the CPU: the same bits (the two kernels share csrc/rounding.h and
    the rules, and neither contracts multiply-adds)."""
    rule, n_states, args = ROUNDED_OPS[op]
    pdtype, sdtype, rounded, master = ROUNDED[config]
    gen = torch.Generator().manual_seed(_seed("rounded op", op, config))
    scalars = torch.tensor([1.0, 0.5] + rule, dtype=torch.float64)
    values = [torch.randn(s, generator=gen) for s in ROUNDED_SHAPES]
    tensors = {
        "params": [v.to(pdtype) for v in values],
        "grads": [torch.randn(s, generator=gen).to(pdtype) for s in ROUNDED_SHAPES],
        "states": [[(torch.randn(s, generator=gen).abs() if k == 1 else torch.randn(s, generator=gen)).to(sdtype)
                    for s in ROUNDED_SHAPES] for k in range(n_states)],
        "master": [v + 1e-3 for v in values] if master else [],
    }
    step = int(torch.randint(0, 2**40, (), generator=gen))
    ids = torch.randperm(1000, generator=gen)[: len(values)].tolist()
    out = {}
    for device in (CPU, DEVICE):
        def put(ts, device=device):
            return [_placed(t, device, i % 2 == 1) for i, t in enumerate(ts)]
        p, g = put(tensors["params"]), put(tensors["grads"])
        st = [put(s) for s in tensors["states"]]
        m = put(tensors["master"])
        getattr(torch.ops.lossopt, op)(p, g, *st, m, scalars.to(device), *args,
                                       torch.tensor(step, device=device), 12345, ids, rounded)
        out[device] = [t.cpu() for t in p + [x for s in st for x in s] + m]
    torch.cuda.synchronize()
    assert len(out[CPU]) == len(out[DEVICE])
    for i, (a, b) in enumerate(zip(out[CPU], out[DEVICE])):
        assert torch.equal(_bits(a), _bits(b)), f"{op} {config}: tensor {i} differs between CPU and CUDA"


@pytest.mark.parametrize("cfg", ONE_PER_RULE)
def test_cuda_graph_replays_the_rounded_step(cfg):
    """The rounding counter lives on the device: a captured rounded step,
    replayed, writes what eager steps write (each replay with its own bits)."""
    _graph_vs_eager(cfg, BF16, opts=dict(state_dtype=BF16, stochastic_rounding=True))
