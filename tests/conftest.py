"""Shared helpers for the lossopt_cuda test suite.

The reference implementations below are written directly from the SPEC, in
float64, and do not import anything from the package under test.  They are the
test oracle.

Import helpers from test modules with ``from conftest import ...`` (pytest puts
this directory on ``sys.path``).
"""

import copy
import math
import os
import warnings

import pytest
import torch
from hypothesis import settings

import lossopt_cuda
from lossopt_cuda import AdaLo, AdaLoss, AdamL

# No example database, and hypothesis' other cache (parsed source constants)
# goes to tests/.hypothesis (git-ignored): the suite writes nothing outside tests/.
try:
    from hypothesis.configuration import set_hypothesis_home_dir

    set_hypothesis_home_dir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".hypothesis"))
except ImportError:  # pragma: no cover - older/newer hypothesis
    pass
settings.register_profile("lossopt", database=None, deadline=None, max_examples=15)
settings.load_profile("lossopt")

# Odd shapes, including a 0-d parameter.
SHAPES = [(7,), (3, 5), (2, 3, 4), (1,), (13, 1, 3), ()]

# ----------------------------------------------------------------------------
# Tolerances (params and state compared against the float64 reference).
#
# |actual - ref| <= rtol*|ref| + atol + TRAVEL_RTOL*travel, elementwise, where
# travel = sum over steps of |p_{k+1} - p_k| in the reference.  The travel term
# admits a relative error of ~1e-7 per step in the step size, which the spec
# allows even for float64 parameters (AdaLo's loss_ema is float32 state; other
# loss-derived scalars may be float32 too).
# float64: rtol 1e-9, atol 1e-9 on top of that.
# float32: rtol 1e-5, atol 1e-5 (a few float32 ulps per step, <= 10 steps).
# bfloat16 / float16 params: checked one step at a time (the reference is
#   re-seeded with the package's current parameter before each step, so rounding
#   does not accumulate); |p_new - ref| <= LOWP_RTOL * (|ref| + |p_prev|) + 1e-6,
#   i.e. up to two roundings to the parameter dtype.  Their optimizer state is
#   float32 and is compared with the float32 tolerance.
# ----------------------------------------------------------------------------
TOL = {
    torch.float64: dict(rtol=1e-9, atol=1e-9),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
}
# state (exp_avg, ...) of float64 params: loss-derived float32 scalars enter
# exp_avg_sq / momentum_buffer directly, so allow float32-level relative error.
STATE_TOL = {
    torch.float64: dict(rtol=1e-6, atol=1e-9),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
}
TRAVEL_RTOL = 2e-6
LOWP_RTOL = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-9}

# Tolerance for comparing two code paths of the package against each other.
CROSS_TOL = {
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float32: dict(rtol=1e-6, atol=1e-6),
}


def f32(x):
    """Round a Python float to the nearest float32 value (returned as float).

    Losses used in the tests are float32-exact so that a loss passed as a
    float32 tensor and as a Python float have the same value."""
    return float(torch.tensor(x, dtype=torch.float32).item())


# ----------------------------------------------------------------------------
# float64 reference implementations (from the spec)
# ----------------------------------------------------------------------------
class _RefBase:
    """Reference for ONE param group.  ``params`` is a list of float64 tensors
    (copied).  ``step(grads, loss, lr=None)``: ``grads`` list aligned with
    params, entries may be None (param skipped, no state created)."""

    def __init__(self, params):
        self.params = [p.detach().to(torch.float64).clone() for p in params]
        self.state = [dict() for _ in self.params]
        # elementwise sum of |p_{k+1} - p_k| (see TRAVEL_RTOL)
        self.travel = [torch.zeros_like(p) for p in self.params]

    def _set(self, i, new):
        self.travel[i] = self.travel[i] + (new - self.params[i]).abs()
        self.params[i] = new

    def set_params(self, params):
        """Overwrite the reference parameter values (used for low-precision
        per-step checks); state is kept."""
        self.params = [p.detach().to(torch.float64).clone() for p in params]


class RefAdaLo(_RefBase):
    def __init__(self, params, lr=1e-8, betas=(0.9, 0.999), weight_decay=1e-2,
                 kappa=3.0, eps=1e-8, mode="adversarial"):
        super().__init__(params)
        self.beta1, self.beta2 = betas
        self.weight_decay = weight_decay
        self.kappa = kappa
        self.eps = eps
        self.mode = mode
        self.loss_ema = 0.0

    def step(self, grads, loss, lr=None):  # lr is not used by AdaLo
        L = float(loss)
        sigma = 1.0 / (2.0 + L)
        self.loss_ema = self.loss_ema + (1.0 - self.beta2) * (sigma - self.loss_ema)
        if self.mode == "adversarial":
            lr_t = max(self.loss_ema / self.kappa, self.eps)
        elif self.mode == "compliant":
            lr_t = max((1.0 - self.loss_ema) / self.kappa, self.eps)
        else:
            raise AssertionError(self.mode)
        self.last_lr_t = lr_t
        for i, g in enumerate(grads):
            if g is None:
                continue
            g = g.to(torch.float64)
            st = self.state[i]
            if "exp_avg" not in st:
                st["exp_avg"] = torch.zeros_like(self.params[i])
            m = st["exp_avg"]
            m = m + (1.0 - self.beta1) * (g - m)
            st["exp_avg"] = m
            self._set(i, self.params[i] * (1.0 - lr_t * self.weight_decay) - lr_t * m)

    def group_scalars(self):
        return {"loss_ema": self.loss_ema}


class RefAdamL(_RefBase):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, gamma=1.0,
                 phi=1.0, min_loss=0.0, normalize_loss=False, weight_decay=0.0):
        super().__init__(params)
        self.lr = lr
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.gamma = gamma
        self.phi = phi
        self.min_loss = min_loss
        self.normalize_loss = normalize_loss
        self.weight_decay = weight_decay
        self.k = 0
        self.l0 = None

    def step(self, grads, loss, lr=None):
        lr = self.lr if lr is None else lr
        self.k += 1
        k = self.k
        l = float(loss) - self.min_loss
        if self.normalize_loss:
            if self.l0 is None:
                self.l0 = max(l, 1e-12)
            l = l / self.l0
        l = max(l, 1e-12)
        s = 1.0 / (self.gamma * l ** self.phi)
        b1, b2 = self.beta1, self.beta2
        for i, g in enumerate(grads):
            if g is None:
                continue
            g = g.to(torch.float64)
            st = self.state[i]
            if "exp_avg" not in st:
                st["exp_avg"] = torch.zeros_like(self.params[i])
                st["exp_avg_sq"] = torch.zeros_like(self.params[i])
            m = b1 * st["exp_avg"] + (1.0 - b1) * g
            w = b2 * st["exp_avg_sq"] + (1.0 - b2) * s * g * g + self.eps * l
            st["exp_avg"], st["exp_avg_sq"] = m, w
            m_hat = m / (1.0 - b1 ** k)
            w_hat = w / (1.0 - b2 ** k)
            p = self.params[i] * (1.0 - lr * self.weight_decay)
            self._set(i, p - lr * m_hat / torch.sqrt(w_hat))

    def group_scalars(self):
        return {"step": float(self.k)}


class RefAdaLoss(_RefBase):
    def __init__(self, params, lr=0.1, b0=1.0, alpha=1.0, c=0.0, momentum=0.0,
                 weight_decay=0.0):
        super().__init__(params)
        self.lr = lr
        self.alpha = alpha
        self.c = c
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.b_sq = b0 ** 2

    def step(self, grads, loss, lr=None):
        lr = self.lr if lr is None else lr
        self.b_sq = self.b_sq + self.alpha * abs(float(loss) - self.c)
        b = math.sqrt(self.b_sq)
        for i, g in enumerate(grads):
            if g is None:
                continue
            g = g.to(torch.float64)
            d = g / b + self.weight_decay * self.params[i]
            if self.momentum > 0:
                st = self.state[i]
                if "momentum_buffer" not in st:
                    buf = d.clone()
                else:
                    buf = self.momentum * st["momentum_buffer"] + d
                st["momentum_buffer"] = buf
                d = buf
            self._set(i, self.params[i] - lr * d)

    def group_scalars(self):
        return {"b_sq": self.b_sq}


REF = {AdaLo: RefAdaLo, AdamL: RefAdamL, AdaLoss: RefAdaLoss}
OPTS = {"AdaLo": AdaLo, "AdamL": AdamL, "AdaLoss": AdaLoss}

# Per-parameter state keys of each rule (momentum_buffer only with momentum>0).
def param_state_keys(cls, hp):
    if cls is AdaLo:
        return ("exp_avg",)
    if cls is AdamL:
        return ("exp_avg", "exp_avg_sq")
    return ("momentum_buffer",) if hp.get("momentum", 0.0) > 0 else ()


# ----------------------------------------------------------------------------
# Package construction helpers
# ----------------------------------------------------------------------------
def _cpu_kernels():
    try:
        return bool(lossopt_cuda.build_info()["cpu_kernels"])
    except Exception:  # pragma: no cover - reported by a dedicated test
        return False


HAS_CPU_KERNELS = _cpu_kernels()
PATHS = ["forloop", "foreach"] + (["fused"] if HAS_CPU_KERNELS else [])

PATH_KWARGS = {
    "forloop": dict(foreach=False, fused=False),
    "foreach": dict(foreach=True, fused=False),
    "fused": dict(foreach=False, fused=True),
    "default": dict(),
}


def make_opt(cls, params, path, **hp):
    """Fresh optimizer of class ``cls`` on code path ``path``."""
    return cls(params, **hp, **PATH_KWARGS[path])


def make_params(dtype, seed, shapes=SHAPES, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(s, generator=gen, dtype=torch.float64) * scale).to(dtype).requires_grad_()
        for s in shapes
    ]


def clone_params(params):
    return [p.detach().clone().requires_grad_() for p in params]


def make_grads(params, gen, scale=1.0):
    return [
        (torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale).to(p.dtype)
        for p in params
    ]


def set_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.clone()


def random_losses(gen, n, lo=0.05, hi=5.0):
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    return [f32(lo + (hi - lo) * float(x)) for x in u]


# ----------------------------------------------------------------------------
# Comparison helpers
# ----------------------------------------------------------------------------
def assert_close_dtype(actual, expected, dtype, msg="", travel=None, tol=None):
    """actual: package tensor (any dtype); expected: float64 reference.
    ``travel``: the reference's accumulated |step| for this tensor (optional)."""
    tol = tol or TOL[dtype]
    a = actual.detach().to(torch.float64)
    e = expected.to(torch.float64)
    assert a.shape == e.shape, f"{msg}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    bound = tol["rtol"] * e.abs() + tol["atol"]
    if travel is not None:
        bound = bound + TRAVEL_RTOL * travel
    err = (a - e).abs()
    ok = err <= bound
    if not bool(ok.all()):
        j = int(torch.argmax((err - bound).flatten()))
        raise AssertionError(
            f"{msg}: {int((~ok).sum())}/{ok.numel()} elements out of tolerance; worst at "
            f"flat index {j}: actual={a.flatten()[j].item()!r} expected={e.flatten()[j].item()!r} "
            f"err={err.flatten()[j].item():.3g} bound={bound.flatten()[j].item():.3g} "
            f"({dtype}, {tol}, travel={'-' if travel is None else travel.flatten()[j].item()})")


def assert_params_match_ref(params, ref, msg="", travel=None):
    """``ref``: a reference object (uses its params and travel) or a list of
    float64 tensors (then ``travel`` may be given as a list)."""
    if hasattr(ref, "params"):
        ref_params, travel = ref.params, ref.travel
    else:
        ref_params = ref
    assert len(params) == len(ref_params)
    for i, (p, r) in enumerate(zip(params, ref_params)):
        assert p.shape == r.shape
        assert_close_dtype(p, r, p.dtype, msg=f"{msg} param {i} shape {tuple(p.shape)}",
                           travel=None if travel is None else travel[i])


def assert_lowp_step_close(p_new, expected, p_prev, msg=""):
    """Low-precision (bf16/fp16) one-step check, see tolerance notes above."""
    rtol = LOWP_RTOL[p_new.dtype]
    a = p_new.detach().to(torch.float64)
    e = expected.to(torch.float64)
    prev = p_prev.to(torch.float64)
    bound = rtol * (e.abs() + prev.abs()) + 1e-6
    err = (a - e).abs()
    assert bool((err <= bound).all()), (
        f"{msg}: max excess {(err - bound).max().item():.3g}, max err {err.max().item():.3g}\n"
        f"actual={a.flatten()[:8]}\nexpected={e.flatten()[:8]}")


def assert_state_matches_ref(opt, params, ref, keys, dtype_for_tol=None, msg=""):
    """Per-parameter state tensors vs the reference's state."""
    for i, p in enumerate(params):
        rst = ref.state[i]
        st = opt.state.get(p, {})
        for k in keys:
            if k not in rst:
                continue
            assert k in st, f"{msg}: param {i} missing state key {k!r}; has {list(st)}"
            v = st[k]
            assert v.shape == p.shape, f"{msg}: state {k} shape {tuple(v.shape)} != {tuple(p.shape)}"
            d = dtype_for_tol or (torch.float64 if p.dtype == torch.float64 else torch.float32)
            assert_close_dtype(v, rst[k], d, msg=f"{msg} state[{i}][{k!r}]", tol=STATE_TOL[d])


def first_param_state(opt, group_index=0):
    return opt.state[opt.param_groups[group_index]["params"][0]]


def snapshot(opt, params):
    """Deep copy of parameters and optimizer state (keyed by param index)."""
    pcopy = [p.detach().clone() for p in params]
    scopy = []
    for p in params:
        st = opt.state.get(p, {})
        scopy.append({k: (v.detach().clone() if torch.is_tensor(v) else copy.deepcopy(v))
                      for k, v in st.items()})
    groups = [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"}
              for g in opt.param_groups]
    return pcopy, scopy, groups


def assert_unchanged(opt, params, snap, msg=""):
    pcopy, scopy, groups = snap
    for i, (p, c) in enumerate(zip(params, pcopy)):
        assert p.dtype == c.dtype
        assert torch.equal(p.detach(), c), f"{msg}: parameter {i} changed"
    for i, (p, sc) in enumerate(zip(params, scopy)):
        st = opt.state.get(p, {})
        # Strict: callers snapshot after at least one good step (the spec lets
        # a bad FIRST step zero-initialise state; that case is tested apart).
        assert set(st) == set(sc), (
            f"{msg}: state keys of param {i} changed: {sorted(sc)} -> {sorted(st)}")
        for k, v in sc.items():
            if torch.is_tensor(v):
                assert torch.is_tensor(st[k]) and st[k].dtype == v.dtype, (
                    f"{msg}: state[{i}][{k}] dtype changed")
                assert torch.equal(st[k], v), f"{msg}: state[{i}][{k}] changed"
            else:
                assert st[k] == v, f"{msg}: state[{i}][{k}] changed"
    now = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    assert len(now) == len(groups)
    for g_now, g_old in zip(now, groups):
        assert set(g_now) == set(g_old)
        for k in g_old:
            assert g_now[k] == g_old[k], f"{msg}: param_group[{k!r}] changed"


def no_runtime_warnings(fn, *args, **kwargs):
    """Call fn and assert that it emits no RuntimeWarning; return its result."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    bad = [w for w in rec if issubclass(w.category, RuntimeWarning)]
    assert not bad, f"unexpected RuntimeWarning(s): {[str(w.message) for w in bad]}"
    return out


# ----------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------
@pytest.fixture
def gen(request):
    """torch.Generator seeded from the test id (reproducible, differs per test)."""
    seed = sum(ord(c) * (i + 1) for i, c in enumerate(request.node.nodeid)) % (2**31)
    return torch.Generator().manual_seed(seed)
