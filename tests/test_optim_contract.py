"""The generic ``torch.optim`` contract, held the way PyTorch holds its own optimizers.

Every rule (AdaLo, AdamL, AdaLoss) on every path (for-loop, foreach, and the
compiled CPU kernels where they are built), float32 and float64 (bfloat16 for
copies, bfloat16 and float16 for one step where the paths are compared), with
fresh random inputs and odd shapes (a 0-d parameter included):

 1. named parameters and named param groups (``param_names`` as torch >= 2.6),
    and checkpoints moving between named and unnamed optimizers as with Adam;
 2. ``copy.deepcopy`` and whole-object ``torch.save``: the copy steps bitwise
    like the original and keeps every attribute;
 3. ``lr`` as a float or a one-element tensor of any shape;
 4. group scalars saved as Python numbers (older checkpoints);
 5. ``foreach=`` / ``fused=`` pick the path as in torch.optim;
 6. step and state-dict hooks;
 7. zero vs missing (None) gradients;
 8. path parity with two param groups;
 9. ``repr`` and ``zero_grad``;
10. parameters created on the ``meta`` device;
11. error inputs not covered by test_bad_input.py.

Where the loss-driven nature bends the generic contract: every ``step()`` needs
the loss (``step(loss=L)`` or a closure returning it), and AdaLo accepts ``lr``
but ignores it (its step size comes from the loss), so for AdaLo an lr change
must change nothing.

A failed call is checked to change nothing with conftest's snapshot /
assert_unchanged; other comparisons are bitwise on the same path and within
CROSS_TOL (or the float64 reference) across paths.
"""

import copy
import io
import math
import warnings
from collections import Counter

import pytest
import torch

from lossopt_cuda import AdaLo, AdaLoss, AdamL, MissingLossError

from conftest import (CROSS_TOL, HAS_CPU_KERNELS, OPTS, PATHS, REF, assert_lowp_step_close,
                      assert_params_match_ref, assert_state_matches_ref, assert_unchanged,
                      clone_params, make_grads, make_opt, make_params, param_state_keys,
                      random_losses, set_grads, snapshot)

# Hyper-parameters with every kind of state and updates large enough to compare.
# The lrs are powers of two so that a float32 tensor lr holds the same value.
HP = {
    "AdaLo": dict(mode="compliant", betas=(0.7, 0.6), kappa=2.5, weight_decay=0.05),
    "AdamL": dict(lr=2.0**-6, normalize_loss=True, phi=2.0, gamma=0.7, min_loss=0.01,
                  weight_decay=0.02),
    "AdaLoss": dict(lr=2.0**-3, momentum=0.9, alpha=0.5, c=0.5, weight_decay=0.01),
}
# A second set for the first of two param groups.
GROUP_HP = {
    "AdaLo": dict(mode="adversarial", betas=(0.5, 0.3), kappa=0.5, weight_decay=0.2),
    "AdamL": dict(lr=2.0**-5, phi=0.0, gamma=3.0, betas=(0.5, 0.9), normalize_loss=False),
    "AdaLoss": dict(lr=2.0**-2, b0=0.5, alpha=2.0, c=0.0, momentum=0.5, weight_decay=0.0),
}
NAMES = list(HP)
# The per-group scalar each rule keeps in its first parameter's state.
GROUP_SCALAR = {"AdaLo": "loss_ema", "AdamL": "step", "AdaLoss": "b_sq"}

F32, F64 = torch.float32, torch.float64
DTYPES = [F32, F64]
DTYPE_IDS = ["f32", "f64"]
NAN = math.nan


# ----------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------
def _schedule(gen, params, n):
    """``n`` steps of (gradients, loss), fresh for every test."""
    return [(make_grads(params, gen), L) for L in random_losses(gen, n, 0.1, 4.0)]


def _run(opt, params, sched):
    for grads, L in sched:
        set_grads(params, grads)
        if isinstance(opt, torch.optim.Adam):  # the comparison: it takes no loss
            opt.step()
        else:
            opt.step(loss=L)


def _two_groups(params, name):
    return [dict(params=params[:3], **GROUP_HP[name]), dict(params=params[3:])]


def _close(a, b, tol, msg):
    """Bitwise with ``tol=None``, else within ``tol`` (compared in float64)."""
    a, b = a.detach(), b.detach()
    assert a.dtype == b.dtype and a.shape == b.shape, (
        f"{msg}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}")
    if tol is None:
        assert torch.equal(a, b), (
            f"{msg}: not bitwise equal, max diff {(a.double() - b.double()).abs().max().item():.3g}")
    else:
        torch.testing.assert_close(b.double(), a.double(), **tol, msg=lambda m: f"{msg}: {m}")


def _assert_same_run(pa, oa, pb, ob, tol=None, msg=""):
    """Parameters and all their optimizer state agree between two runs."""
    assert len(pa) == len(pb)
    for i, (a, b) in enumerate(zip(pa, pb)):
        _close(a, b, tol, f"{msg} param {i}")
        sa, sb = oa.state.get(a, {}), ob.state.get(b, {})
        assert set(sa) == set(sb), f"{msg} param {i}: state keys {sorted(sa)} vs {sorted(sb)}"
        for k in sa:
            if torch.is_tensor(sa[k]):
                _close(sa[k], sb[k], tol, f"{msg} state[{i}][{k!r}]")
            else:
                assert sa[k] == sb[k], f"{msg} state[{i}][{k!r}]"


def _net(dtype, seed):
    """A module with odd shapes, a 0-d parameter and nested names."""
    net = torch.nn.Module()
    net.lin = torch.nn.Linear(5, 3, dtype=dtype)
    net.scale = torch.nn.Parameter(torch.zeros((), dtype=dtype))
    net.cube = torch.nn.Parameter(torch.zeros(2, 3, 1, dtype=dtype))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=F64))
    return net


def _mlp():
    return torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))


def _first_state_index(sd, group):
    """The state-dict id of a group's first parameter (holds the group scalars)."""
    return sd["param_groups"][group]["params"][0]


# ============================================================================
# 1. Named parameters
# ============================================================================
@pytest.mark.parametrize("grouping", ["flat", "groups"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", NAMES)
def test_named_parameters(name, path, dtype, grouping, gen):
    """``cls(model.named_parameters())`` and named groups work on every path,
    record ``param_names`` (in param_groups and state_dict, as torch >= 2.6) and
    step bitwise like the same optimizer over plain parameters."""
    cls = OPTS[name]
    net = _net(dtype, 11)
    twin = copy.deepcopy(net)
    names = [n for n, _ in net.named_parameters()]
    params, plain = list(net.parameters()), list(twin.parameters())
    if grouping == "flat":
        named_spec, plain_spec, want = net.named_parameters(), plain, [names]
    else:
        named = list(net.named_parameters())
        named_spec = [dict(params=named[:2], **GROUP_HP[name]), dict(params=named[2:])]
        plain_spec = [dict(params=plain[:2], **GROUP_HP[name]), dict(params=plain[2:])]
        want = [names[:2], names[2:]]
    opt = make_opt(cls, named_spec, path, **HP[name])
    ref = make_opt(cls, plain_spec, path, **HP[name])

    assert [g["param_names"] for g in opt.param_groups] == want
    assert all(p is q for p, q in zip((p for g in opt.param_groups for p in g["params"]), params))
    assert all("param_names" not in g for g in ref.param_groups)
    sched = _schedule(gen, params, 3)
    _run(opt, params, sched)
    _run(ref, plain, sched)
    _assert_same_run(plain, ref, params, opt, msg="named vs plain")
    sd = opt.state_dict()
    assert [g["param_names"] for g in sd["param_groups"]] == want


@pytest.mark.parametrize("direction", ["named->unnamed", "unnamed->named"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", NAMES)
def test_named_and_unnamed_checkpoints_load_as_with_adam(name, path, direction, gen):
    """A checkpoint of a named optimizer loads into an unnamed one and vice
    versa; the resulting ``param_names`` are what torch.optim.Adam gives in the
    same situation, and the loaded optimizer then steps bitwise like one that
    never went through the checkpoint."""
    src_named = direction == "named->unnamed"

    def spec(net, named):
        return list(net.named_parameters()) if named else list(net.parameters())

    def scenario(factory, steps_before):
        src_net = _net(F32, 12)
        src = factory(spec(src_net, src_named))
        _run(src, list(src_net.parameters()), steps_before)
        sd = src.state_dict()
        dst_net = copy.deepcopy(src_net)
        dst = factory(spec(dst_net, not src_named))
        dst.load_state_dict(sd)
        return src_net, src, dst_net, dst

    params = list(_net(F32, 12).parameters())
    sched = _schedule(gen, params, 4)
    cls = OPTS[name]
    src_net, src, dst_net, dst = scenario(lambda s: make_opt(cls, s, path, **HP[name]), sched[:2])
    _, _, _, adam = scenario(lambda s: torch.optim.Adam(s, lr=1e-3), sched[:2])

    names_of = lambda o: [g.get("param_names") for g in o.param_groups]  # noqa: E731
    assert names_of(dst) == names_of(adam)
    assert ([g.get("param_names") for g in dst.state_dict()["param_groups"]]
            == [g.get("param_names") for g in adam.state_dict()["param_groups"]])
    pa, pb = list(src_net.parameters()), list(dst_net.parameters())
    _assert_same_run(pa, src, pb, dst, msg="after load")
    _run(src, pa, sched[2:])
    _run(dst, pb, sched[2:])
    _assert_same_run(pa, src, pb, dst, msg="steps after load")


# ============================================================================
# 2. deepcopy and whole-object torch.save
# ============================================================================
def _copy(obj, how):
    if how == "deepcopy":
        return copy.deepcopy(obj)
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.parametrize("how", ["deepcopy", "torch.save"])
@pytest.mark.parametrize("dtype", [F32, F64, torch.bfloat16], ids=["f32", "f64", "bf16"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", NAMES)
def test_copy_steps_like_the_original(name, path, dtype, how, gen):
    """A copy of (params, optimizer) taken after a step maps its state to the
    copied params, keeps every attribute (bf16 with master_weights=True shows
    that the copy still steps the float32 masters) and then steps bitwise like
    the original, independently of it."""
    cls = OPTS[name]
    params = make_params(dtype, 21)
    opt = make_opt(cls, params, path, average_loss=False, master_weights=True, **HP[name])
    _run(opt, params, _schedule(gen, params, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        set_grads(params, make_grads(params, gen))
        opt.step(loss=NAN)  # counted on the host
        opt.step(loss=torch.tensor(NAN))  # counted on the device
    assert opt.skipped_steps == 2

    params2, opt2 = _copy((params, opt), how)
    assert type(opt2) is cls
    for attr in ("foreach", "fused", "average_loss", "master_weights", "skipped_steps"):
        assert getattr(opt2, attr) == getattr(opt, attr), attr
    assert all(q is p2 for q, p2 in zip(opt2.param_groups[0]["params"], params2))
    assert {id(p) for p in opt2.state} <= {id(p) for p in params2}
    assert not {id(p) for p in opt2.state} & {id(p) for p in params}

    sched = _schedule(gen, params, 2)
    _run(opt, params, sched)
    _run(opt2, params2, sched)
    _assert_same_run(params, opt, params2, opt2, msg=f"{how} copy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        opt2.step(loss=torch.tensor(NAN))
    assert (opt.skipped_steps, opt2.skipped_steps) == (2, 3), "the copy shares the skip count"


# ============================================================================
# 3. lr as a float or a one-element tensor
# ============================================================================
LR_FORMS = {
    "0d": lambda lr: torch.tensor(lr, dtype=F64),
    "shape1": lambda lr: torch.tensor([lr], dtype=F64),
    "shape1x1": lambda lr: torch.tensor([[lr]], dtype=F64),
    "0d-f32": lambda lr: torch.tensor(lr),  # torch's default dtype
}


@pytest.mark.parametrize("form", list(LR_FORMS))
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", NAMES)
def test_tensor_lr_gives_the_float_lr_trajectory(name, path, dtype, form, gen):
    """A tensor lr given at construction, then replaced between steps (as a
    scheduler may), follows the float-lr trajectory. AdaLo ignores lr, so there
    the runs must be bitwise equal."""
    cls = OPTS[name]
    lr0 = HP[name].get("lr", 2.0**-4)
    base = make_params(dtype, 31)
    pf, pt = clone_params(base), clone_params(base)
    of = make_opt(cls, pf, path, **dict(HP[name], lr=lr0))
    ot = make_opt(cls, pt, path, **dict(HP[name], lr=LR_FORMS[form](lr0)))
    sched = _schedule(gen, base, 4)
    _run(of, pf, sched[:2])
    _run(ot, pt, sched[:2])
    of.param_groups[0]["lr"] = lr0 / 4
    ot.param_groups[0]["lr"] = LR_FORMS[form](lr0 / 4)
    _run(of, pf, sched[2:])
    _run(ot, pt, sched[2:])
    if name == "AdaLo":
        tol = None
    elif form == "0d-f32":  # e.g. 1 - lr * weight_decay is then a float32 product
        tol = CROSS_TOL[F32]
    else:
        tol = CROSS_TOL[dtype]
    _assert_same_run(pf, of, pt, ot, tol=tol, msg=f"lr {form} vs float")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", NAMES)
def test_tensor_lr_with_several_elements_is_refused(name, path, gen):
    """At construction (also inside a group) and in add_param_group a tensor lr
    of several elements raises ValueError before anything exists or changes;
    put into a group behind the optimizer's back, it makes step() raise with
    nothing changed. (AdaLo ignores lr but checks it like the others.)"""
    cls = OPTS[name]
    params = make_params(F32, 32)
    bad = torch.tensor([0.1, 0.2])
    with pytest.raises(ValueError, match="lr"):
        make_opt(cls, params, path, **dict(HP[name], lr=bad))
    with pytest.raises(ValueError, match="lr"):
        make_opt(cls, [dict(params=params[:2]), dict(params=params[2:], lr=bad)], path, **HP[name])

    opt = make_opt(cls, params[:4], path, **HP[name])
    _run(opt, params[:4], _schedule(gen, params[:4], 1))
    snap = snapshot(opt, params[:4])
    with pytest.raises(ValueError, match="lr"):
        opt.add_param_group(dict(params=params[4:], lr=bad))
    assert len(opt.param_groups) == 1
    assert_unchanged(opt, params[:4], snap, msg="refused add_param_group")

    opt.param_groups[0]["lr"] = bad
    set_grads(params[:4], make_grads(params[:4], gen))
    with pytest.raises((ValueError, RuntimeError)):
        opt.step(loss=1.5)
    opt.param_groups[0]["lr"] = snap[2][0]["lr"]
    assert_unchanged(opt, params[:4], snap, msg="step refused for its lr")


# ============================================================================
# 4. Group scalars saved as Python numbers
# ============================================================================
NUMBER_CASES = [("AdaLo", float), ("AdamL", float), ("AdamL", int), ("AdaLoss", float)]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name,as_number", NUMBER_CASES,
                         ids=[f"{n}-{t.__name__}" for n, t in NUMBER_CASES])
def test_group_scalars_saved_as_numbers_load_like_tensors(name, as_number, path, gen):
    """Older torch checkpoints hold ``step`` as a Python number; AdamL's step,
    AdaLo's loss_ema and AdaLoss's b_sq in that form load and then step
    bitwise like the tensor form (the values are exact in both)."""
    cls = OPTS[name]
    key = GROUP_SCALAR[name]
    base = make_params(F32, 41)
    src_params = clone_params(base)
    src = make_opt(cls, _two_groups(src_params, name), path, **HP[name])
    sched = _schedule(gen, base, 4)
    _run(src, src_params, sched[:2])
    sd = src.state_dict()
    sd_num = copy.deepcopy(sd)
    for g in range(2):
        st = sd_num["state"][_first_state_index(sd, g)]
        st[key] = as_number(st[key].item())
        assert not torch.is_tensor(st[key])

    pt, pn = clone_params(src_params), clone_params(src_params)
    ot = make_opt(cls, _two_groups(pt, name), path, **HP[name])
    on = make_opt(cls, _two_groups(pn, name), path, **HP[name])
    ot.load_state_dict(sd)
    on.load_state_dict(sd_num)
    _assert_same_run(pt, ot, pn, on, msg="loaded as numbers")
    _run(ot, pt, sched[2:])
    _run(on, pn, sched[2:])
    _assert_same_run(pt, ot, pn, on, msg="steps after loading numbers")


@pytest.mark.parametrize("garbage", ["a string", None, [1.0, 2.0]], ids=["str", "None", "list"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", NAMES)
def test_a_group_scalar_that_is_not_a_number_is_refused(name, path, garbage, gen):
    """Garbage in a group scalar raises from load_state_dict before anything
    changes. It sits in the second group, after a group whose state and
    hyper-parameters also differ, so a half-done load would show."""
    cls = OPTS[name]
    params = make_params(F32, 42)
    opt = make_opt(cls, _two_groups(params, name), path, **HP[name])
    sched = _schedule(gen, params, 3)
    _run(opt, params, sched[:1])
    bad = copy.deepcopy(opt.state_dict())
    bad["param_groups"][0]["weight_decay"] = 0.5
    for st in bad["state"].values():
        for k, v in st.items():
            if torch.is_tensor(v) and k != GROUP_SCALAR[name]:
                st[k] = v + 1.0
    bad["state"][_first_state_index(bad, 1)][GROUP_SCALAR[name]] = garbage
    twin_params = clone_params(params)
    twin = make_opt(cls, _two_groups(twin_params, name), path, **HP[name])
    twin.load_state_dict(opt.state_dict())
    snap = snapshot(opt, params)
    with pytest.raises((ValueError, TypeError)):
        opt.load_state_dict(bad)
    assert_unchanged(opt, params, snap, msg="refused load_state_dict")
    _run(opt, params, sched[1:])
    _run(twin, twin_params, sched[1:])
    _assert_same_run(twin_params, twin, params, opt, msg="after the refused load")


@pytest.mark.parametrize("name", ["AdamL"])  # the rule with two group scalars
def test_a_partial_set_of_group_scalars_is_refused(name, gen):
    """AdamL keeps `step` and `loss0` per group; a checkpoint with one and not
    the other (another optimizer's) is refused before anything changes,
    rather than having both silently re-initialised at the next step."""
    cls = OPTS[name]
    params = make_params(F32, 43)
    opt = make_opt(cls, params, "foreach", **HP[name])
    _run(opt, params, _schedule(gen, params, 1))
    bad = copy.deepcopy(opt.state_dict())
    del bad["state"][_first_state_index(bad, 0)]["loss0"]
    snap = snapshot(opt, params)
    with pytest.raises(ValueError, match="loss0"):
        opt.load_state_dict(bad)
    assert_unchanged(opt, params, snap, msg="refused load_state_dict")


def test_a_loaded_skip_counter_reads_from_where_its_count_is():
    """A skip counter pickled on a GPU and loaded onto the CPU (map_location)
    reads its count on the CPU; one kept on a GPU gets a fresh pinned buffer
    (a copied one is not pinned, and its copy would block)."""
    from lossopt_cuda._skips import _DeviceCount

    count = _DeviceCount(torch.device("cpu"))
    state = {**count.__dict__, "on_cpu": False, "snapshot": torch.zeros((), dtype=torch.int64)}
    loaded = _DeviceCount.__new__(_DeviceCount)
    loaded.__setstate__(state)
    assert loaded.on_cpu and loaded.snapshot is None and loaded.event is None
    loaded.count.add_(3)
    assert loaded.read_without_waiting() == 3


@pytest.mark.parametrize("dtype", [F32, torch.bfloat16], ids=["float32", "bfloat16-master"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", NAMES)
def test_distributed_checkpoint_resumes_into_a_fresh_optimizer(name, path, dtype, gen):
    """torch.distributed.checkpoint's get/set_optimizer_state_dict (how FSDP2
    training resumes) first make a fresh optimizer create its state by giving
    it zero gradients and calling step() with no loss. That creates the state
    without a step (no parameter moves, not even AdaLo's, which ignores the
    lr = 0 it is given), and the resumed optimizer steps as the original."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    cls, master = OPTS[name], dtype != F32
    net = _net(dtype, 7)
    opt = make_opt(cls, net.parameters(), path, master_weights=master, **HP[name])
    params = list(net.parameters())
    sched = _schedule(gen, params, 4)
    _run(opt, params, sched[:2])
    saved = get_optimizer_state_dict(net, opt)

    twin = copy.deepcopy(net)
    twin_params = list(twin.parameters())
    fresh = make_opt(cls, twin.parameters(), path, master_weights=master, **HP[name])
    before = [p.detach().clone() for p in twin_params]
    template = get_optimizer_state_dict(twin, fresh)  # the fresh optimizer creates its state
    assert all(torch.equal(p, b) for p, b in zip(twin_params, before)) and all(p.grad is None for p in twin_params)
    assert {k: sorted(v) for k, v in template["state"].items()} == {k: sorted(v) for k, v in saved["state"].items()}
    set_optimizer_state_dict(twin, fresh, saved)
    _run(opt, params, sched[2:])
    _run(fresh, twin_params, sched[2:])
    _assert_same_run(params, opt, twin_params, fresh, msg="resumed through get/set_optimizer_state_dict")


def test_step_without_a_loss_still_raises_outside_checkpoint_init():
    """Only torch.distributed.checkpoint's state initialisation may call step()
    with no loss; anywhere else it is still the clear error."""
    p = torch.nn.Parameter(torch.randn(3))
    p.grad = torch.zeros(3)
    opt = AdamL([p])
    with pytest.raises(MissingLossError):
        opt.step()
    assert not opt.state


# ============================================================================
# 5. foreach= / fused= pick the path as in torch.optim
# ============================================================================
KERNELS = {"_fused"} if HAS_CPU_KERNELS else {"_foreach", "_forloop"}
FLAG_CASES = [
    (dict(foreach=True), {"_foreach"}),
    (dict(foreach=False), {"_forloop"}),
    (dict(foreach=True, fused=False), {"_foreach"}),
    (dict(foreach=False, fused=False), {"_forloop"}),
    (dict(fused=False), {"_foreach", "_forloop"}),  # either, never the kernels
    (dict(), KERNELS),
    (dict(foreach=None, fused=None), KERNELS),
] + ([(dict(fused=True), {"_fused"}), (dict(foreach=False, fused=True), {"_fused"})]
     if HAS_CPU_KERNELS else [])


def _spy_paths(monkeypatch, cls):
    """Record which of the class's update functions run."""
    calls = []
    for kind in ("_forloop", "_foreach", "_fused"):
        def spy(*args, _orig=getattr(cls, kind), _kind=kind, **kwargs):
            calls.append(_kind)
            return _orig(*args, **kwargs)
        monkeypatch.setattr(cls, kind, staticmethod(spy))
    return calls


@pytest.mark.parametrize("flags,expected", FLAG_CASES,
                         ids=[",".join(f"{k}={v}" for k, v in f.items()) or "defaults"
                              for f, _ in FLAG_CASES])
@pytest.mark.parametrize("name", NAMES)
def test_flags_pick_the_path(name, flags, expected, monkeypatch, gen):
    """An explicit foreach= runs that path; the kernels run only with
    fused=True or when both flags are None (torch.optim's convention)."""
    cls = OPTS[name]
    calls = _spy_paths(monkeypatch, cls)
    params = make_params(F32, 51, [(4, 3), (5,)]) + make_params(F64, 52, [(2, 1, 3)])
    opt = cls(params, **flags, **HP[name])
    chosen = {k for k in ("_forloop", "_foreach", "_fused")
              if opt._choose_impl(torch.device("cpu"), F32) is getattr(cls, k)}
    assert len(chosen) == 1 and chosen <= expected, f"_choose_impl picked {chosen}"
    _run(opt, params, _schedule(gen, params, 1))
    assert len(calls) == 2 and set(calls) == chosen, f"ran {calls} (float32 and float64 buckets)"


@pytest.mark.parametrize("name", NAMES)
def test_foreach_and_fused_together_is_refused(name):
    with pytest.raises(ValueError, match="foreach"):
        OPTS[name](make_params(F32, 53), foreach=True, fused=True)


# ============================================================================
# 6. Hooks
# ============================================================================
@pytest.mark.parametrize("how", ["closure", "loss="])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", NAMES)
def test_step_hooks_fire_once_per_step(name, path, how, gen):
    """Pre hook, then the closure, then the post hook, once per step; step()
    returns the loss it was given; removed hooks stay silent."""
    cls = OPTS[name]
    params = make_params(F32, 61)
    opt = make_opt(cls, params, path, **HP[name])
    events = []
    pre = opt.register_step_pre_hook(lambda o, args, kwargs: events.append(("pre", o)))
    post = opt.register_step_post_hook(lambda o, args, kwargs: events.append(("post", o)))
    sched = _schedule(gen, params, 3)
    for grads, L in sched:
        loss = torch.tensor(L)
        if how == "closure":
            def closure(grads=grads, loss=loss):
                events.append(("closure", None))
                set_grads(params, grads)
                return loss
            assert opt.step(closure) is loss
        else:
            set_grads(params, grads)
            assert opt.step(loss=loss) is loss
    per_step = [("pre", opt)] + ([("closure", None)] if how == "closure" else []) + [("post", opt)]
    assert events == per_step * 3
    pre.remove()
    post.remove()
    _run(opt, params, sched[:1])
    assert len(events) == len(per_step) * 3


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", NAMES)
def test_a_step_pre_hook_can_supply_the_loss(name, path, gen):
    """torch.optim lets a step pre-hook return new (args, kwargs): a bare
    ``step()`` (no loss, which these optimizers otherwise refuse) then steps as
    ``step(loss=L)``."""
    cls = OPTS[name]
    base = make_params(F32, 62)
    pa, pb = clone_params(base), clone_params(base)
    oa, ob = (make_opt(cls, ps, path, **HP[name]) for ps in (pa, pb))
    sched = _schedule(gen, base, 2)
    supplied = iter(L for _, L in sched)
    oa.register_step_pre_hook(lambda o, args, kwargs: (args, {**kwargs, "loss": next(supplied)}))
    for grads, _ in sched:
        set_grads(pa, grads)
        oa.step()
    _run(ob, pb, sched)
    _assert_same_run(pb, ob, pa, oa, msg="loss from a pre-hook")
    with pytest.raises(MissingLossError):
        ob.step()  # without the hook, a bare step() still needs the loss


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", NAMES)
def test_state_dict_hooks_fire_once_per_call(name, path, gen):
    cls = OPTS[name]
    params = make_params(F32, 63)
    opt = make_opt(cls, params, path, **HP[name])
    _run(opt, params, _schedule(gen, params, 1))
    counts = Counter()
    opt.register_state_dict_pre_hook(lambda o: counts.update(["sd_pre"]))
    opt.register_state_dict_post_hook(lambda o, sd: counts.update(["sd_post"]))
    opt.register_load_state_dict_pre_hook(lambda o, sd: counts.update(["load_pre"]))
    opt.register_load_state_dict_post_hook(lambda o: counts.update(["load_post"]))
    for n in (1, 2):
        sd = opt.state_dict()
        assert counts == Counter(sd_pre=n, sd_post=n, load_pre=n - 1, load_post=n - 1)
        opt.load_state_dict(sd)
        assert counts == Counter(sd_pre=n, sd_post=n, load_pre=n, load_post=n)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", NAMES)
def test_state_dict_hook_changes_take_effect_as_with_adam(name, path, gen):
    """What the hooks return or change is what state_dict() returns and what
    load_state_dict() leaves, as with torch.optim.Adam run side by side: a
    post hook's extra key, a load pre-hook's edited hyper-parameter and state
    tensor, a load post-hook's in-place edit of the state."""
    cls = OPTS[name]
    key = param_state_keys(cls, HP[name])[0]
    params = make_params(F32, 64)
    results = {}
    for label, opt, skey in (("ours", make_opt(cls, params, path, **HP[name]), key),
                             ("adam", torch.optim.Adam(clone_params(params), weight_decay=0.01), "exp_avg")):
        ps = opt.param_groups[0]["params"]
        _run(opt, ps, _schedule(gen, ps, 1))

        def load_pre(o, sd, skey=skey):
            sd = copy.deepcopy(sd)
            sd["param_groups"][0]["weight_decay"] = 0.125
            sd["state"][1][skey] = torch.full_like(sd["state"][1][skey], 2.0)
            return sd

        def load_post(o, skey=skey):
            o.state[o.param_groups[0]["params"][2]][skey].fill_(3.0)

        opt.register_state_dict_post_hook(lambda o, sd: {**sd, "extra": 1})
        opt.register_load_state_dict_pre_hook(load_pre)
        opt.register_load_state_dict_post_hook(load_post)
        sd = opt.state_dict()
        opt.load_state_dict(sd)
        results[label] = dict(
            extra=sd.get("extra"),
            weight_decay=opt.param_groups[0]["weight_decay"],
            state1=bool((opt.state[ps[1]][skey] == 2.0).all()),
            state2=bool((opt.state[ps[2]][skey] == 3.0).all()),
        )
    assert results["adam"] == dict(extra=1, weight_decay=0.125, state1=True, state2=True)
    assert results["ours"] == results["adam"]


# ============================================================================
# 7. Zero vs missing gradients
# ============================================================================
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", NAMES)
def test_zero_gradient_and_no_gradient(name, dtype, gen):
    """A zero gradient is a gradient: the parameter gets state (and moves by
    weight decay). A parameter with grad None keeps no state and is unchanged.
    Every path agrees with the float64 reference."""
    cls = OPTS[name]
    hp = HP[name]
    zero, none = 1, 3  # not the first parameter, which holds the group scalars
    base = make_params(dtype, 71)
    sched = _schedule(gen, base, 3)
    for grads, _ in sched:
        grads[zero] = torch.zeros_like(grads[zero])
        grads[none] = None
    ref = REF[cls](base, **hp)
    for grads, L in sched:
        ref.step(grads, L)
    keys = param_state_keys(cls, hp)
    runs = {}
    for path in PATHS:
        params = clone_params(base)
        opt = make_opt(cls, params, path, **hp)
        _run(opt, params, sched)
        runs[path] = (params, opt)
        assert params[none].grad is None
        assert torch.equal(params[none].detach(), base[none].detach()), path
        assert not opt.state.get(params[none]), f"{path}: state for a parameter without grad"
        assert set(keys) <= set(opt.state[params[zero]]), path
        assert not torch.equal(params[zero].detach(), base[zero].detach()), "weight decay moves it"
        assert_params_match_ref(params, ref, msg=path)
        assert_state_matches_ref(opt, params, ref, keys, msg=path)
    pa, oa = runs["forloop"]
    for path, (pb, ob) in runs.items():
        _assert_same_run(pa, oa, pb, ob, tol=CROSS_TOL[dtype], msg=f"forloop vs {path}")


# ============================================================================
# 8. Path parity with two param groups
# ============================================================================
PARITY_DTYPES = [F32, F64, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", PARITY_DTYPES, ids=["f32", "f64", "bf16", "f16"])
@pytest.mark.parametrize("name", NAMES)
def test_paths_agree_with_two_param_groups(name, dtype, gen):
    """Ten steps (one for bf16/fp16, whose rounding compounds) with two groups
    of different hyper-parameters: the paths agree with each other (float32
    tolerance, float64 tight) and with the float64 reference."""
    cls = OPTS[name]
    lowp = dtype not in CROSS_TOL
    base = make_params(dtype, 81)
    sched = _schedule(gen, base, 1 if lowp else 10)
    refs = [REF[cls](base[:3], **dict(HP[name], **GROUP_HP[name])), REF[cls](base[3:], **HP[name])]
    for grads, L in sched:
        refs[0].step(grads[:3], L)
        refs[1].step(grads[3:], L)
    expected = refs[0].params + refs[1].params
    runs = {}
    for path in PATHS:
        params = clone_params(base)
        opt = make_opt(cls, _two_groups(params, name), path, **HP[name])
        _run(opt, params, sched)
        runs[path] = (params, opt)
        if lowp:
            for i, (p, e, b) in enumerate(zip(params, expected, base)):
                assert p.dtype == dtype
                assert_lowp_step_close(p, e, b.detach(), msg=f"{path} param {i}")
        else:
            assert_params_match_ref(params[:3], refs[0], msg=f"{path} group 0")
            assert_params_match_ref(params[3:], refs[1], msg=f"{path} group 1")
    if not lowp:
        pa, oa = runs["forloop"]
        for path, (pb, ob) in runs.items():
            _assert_same_run(pa, oa, pb, ob, tol=CROSS_TOL[dtype], msg=f"forloop vs {path}")


# ============================================================================
# 9. repr and zero_grad
# ============================================================================
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", NAMES)
def test_repr_names_the_class_and_hyperparameters(name, path):
    cls = OPTS[name]
    opt = make_opt(cls, _two_groups(make_params(F32, 91), name), path, **HP[name])
    text = repr(opt)
    assert text.startswith(f"{name} (")
    for i, group in enumerate(opt.param_groups):
        assert f"Parameter Group {i}\n" in text
        for k, v in group.items():
            if k != "params":
                assert f"    {k}: {v}\n" in text, k


@pytest.mark.parametrize("set_to_none", [True, False, "default"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", NAMES)
def test_zero_grad_as_torch(name, path, set_to_none, gen):
    """zero_grad() does to the gradients what Adam's does: None by default or
    with set_to_none=True, else zeroed in place (the same tensor)."""
    cls = OPTS[name]
    params = make_params(F32, 92)
    twins = clone_params(params)
    opt, adam = make_opt(cls, params, path, **HP[name]), torch.optim.Adam(twins)
    grads = make_grads(params, gen)
    grads[2] = None
    set_grads(params, grads)
    set_grads(twins, grads)
    held = [p.grad for p in params]
    kwargs = {} if set_to_none == "default" else dict(set_to_none=set_to_none)
    opt.zero_grad(**kwargs)
    adam.zero_grad(**kwargs)
    for i, (p, q, h) in enumerate(zip(params, twins, held)):
        assert (p.grad is None) == (q.grad is None), i
        if p.grad is not None:
            assert p.grad is h and torch.equal(p.grad, torch.zeros_like(p)), i
            assert torch.equal(p.grad, q.grad)


# ============================================================================
# 10. Parameters created on the meta device
# ============================================================================
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", NAMES)
def test_model_built_on_meta_then_materialised(name, path, gen):
    """Build on meta, ``to_empty(device="cpu")``, initialise, THEN construct the
    optimizer: it steps bitwise like one over a model built on the CPU."""
    cls = OPTS[name]
    with torch.device("meta"):
        net = _mlp()
    assert all(p.is_meta for p in net.parameters())
    net.to_empty(device="cpu")
    twin = _mlp()
    init = [torch.randn(p.shape, generator=gen) for p in twin.parameters()]
    with torch.no_grad():
        for m in (net, twin):
            for p, v in zip(m.parameters(), init):
                p.copy_(v)
    x, y = torch.randn(6, 5, generator=gen), torch.randn(6, 1, generator=gen)
    opts = [make_opt(cls, m.parameters(), path, **HP[name]) for m in (net, twin)]
    for _ in range(3):
        for m, opt in zip((net, twin), opts):
            def closure(m=m, opt=opt):
                opt.zero_grad()
                loss = ((m(x) - y) ** 2).mean()
                loss.backward()
                return loss
            opt.step(closure)
    pa, pb = list(twin.parameters()), list(net.parameters())
    _assert_same_run(pa, opts[1], pb, opts[0], msg="materialised vs cpu-built")
    assert not torch.equal(pb[0].detach(), init[0]), "the model was not stepped"


@pytest.mark.parametrize("path", ["forloop", "foreach", "default"])
@pytest.mark.parametrize("name", NAMES)
def test_optimizer_over_meta_parameters_constructs(name, path):
    """Constructing over meta parameters does not crash (fused=True refuses
    meta at construction; test_bad_input covers that)."""
    with torch.device("meta"):
        net = _mlp()
    opt = make_opt(OPTS[name], net.parameters(), path, **HP[name])
    assert name in repr(opt)
    assert opt.state_dict()["state"] == {}


# ============================================================================
# 11. Error inputs (what test_bad_input.py does not cover)
# ============================================================================
def _bad(cls, arg, value, argname=None):
    return pytest.param(cls, {arg: value}, argname or arg, id=f"{cls.__name__}-{arg}={value!r}")


MORE_BAD_HPS = [
    _bad(AdaLo, "betas", 0.9),
    _bad(AdaLo, "betas", (0.9,)),
    _bad(AdaLo, "betas", (0.9, NAN)),
    _bad(AdaLo, "weight_decay", NAN),
    _bad(AdaLo, "eps", NAN),
    _bad(AdaLo, "mode", None),
    _bad(AdamL, "lr", "0.01"),
    _bad(AdamL, "lr", True),
    _bad(AdamL, "betas", [0.9]),
    _bad(AdamL, "eps", NAN),
    _bad(AdamL, "gamma", NAN),
    _bad(AdamL, "phi", NAN),
    _bad(AdamL, "min_loss", NAN),
    _bad(AdamL, "weight_decay", NAN),
    _bad(AdamL, "normalize_loss", "yes"),
    _bad(AdamL, "normalize_loss", 1),
    _bad(AdaLoss, "lr", None),
    _bad(AdaLoss, "b0", "1.0"),
    _bad(AdaLoss, "momentum", 1.0),
    _bad(AdaLoss, "momentum", NAN),
    _bad(AdaLoss, "alpha", NAN),
    _bad(AdaLoss, "c", NAN),
    _bad(AdaLoss, "weight_decay", NAN),
]


@pytest.mark.parametrize("cls,kwargs,argname", MORE_BAD_HPS)
def test_bad_hyperparameter_is_refused_before_anything_changes(cls, kwargs, argname, gen):
    """ValueError naming the argument, at construction and from add_param_group
    on an optimizer in use (which then keeps its groups and state)."""
    params = make_params(F32, 101, [(3, 2), (4,), ()])
    with pytest.raises(ValueError, match=argname):
        cls(params[:2], **kwargs)
    opt = cls(params[:2])
    _run(opt, params[:2], _schedule(gen, params[:2], 1))
    snap = snapshot(opt, params[:2])
    with pytest.raises(ValueError, match=argname):
        opt.add_param_group(dict(params=params[2:], **kwargs))
    assert len(opt.param_groups) == 1
    assert_unchanged(opt, params[:2], snap, msg="refused add_param_group")


BAD_PARAM_SPECS = {
    "empty": lambda p, q: [],
    "bare-tensor": lambda p, q: p,
    "set-in-group": lambda p, q: [dict(params={p, q})],
    "non-tensor": lambda p, q: [p, 1.0],
    "named-and-unnamed": lambda p, q: [("p", p), q],
    "in-two-groups": lambda p, q: [dict(params=[p, q]), dict(params=[q])],
}


@pytest.mark.parametrize("spec", list(BAD_PARAM_SPECS))
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", NAMES)
def test_torch_construction_checks_hold_on_every_path(name, path, spec):
    """Parameter specs torch.optim refuses are refused with Adam's exception
    type on every path (the fused path inspects the parameters first)."""
    p, q = make_params(F32, 102, [(3,), (2, 2)])
    with pytest.raises((TypeError, ValueError)) as adam:
        torch.optim.Adam(BAD_PARAM_SPECS[spec](p, q))
    with pytest.raises(adam.type):
        make_opt(OPTS[name], BAD_PARAM_SPECS[spec](p, q), path)


def _closure_and_loss(opt, params):
    return opt.step(lambda: torch.tensor(1.0), loss=1.0)


BAD_LOSS_CALLS = {
    "empty-tensor": (lambda opt, ps: opt.step(loss=torch.tensor([])), ValueError),
    "complex-tensor": (lambda opt, ps: opt.step(loss=torch.tensor(1 + 1j)), ValueError),
    "complex-number": (lambda opt, ps: opt.step(loss=1 + 0j), TypeError),
    "string": (lambda opt, ps: opt.step(loss="1.0"), TypeError),
    "bool": (lambda opt, ps: opt.step(loss=True), TypeError),
    "list": (lambda opt, ps: opt.step(loss=[1.0]), TypeError),
    "closure-and-loss": (_closure_and_loss, ValueError),
    "closure-returns-string": (lambda opt, ps: opt.step(lambda: "1.0"), TypeError),
}


@pytest.mark.parametrize("case", list(BAD_LOSS_CALLS))
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", NAMES)
def test_malformed_loss_raises_before_anything_changes(name, path, case, gen):
    """A loss that is not one real number raises, changes nothing, and the
    optimizer then steps exactly like a twin that never saw the bad call."""
    cls = OPTS[name]
    call, exc = BAD_LOSS_CALLS[case]
    params = make_params(F32, 103)
    twin_params = clone_params(params)
    opt = make_opt(cls, params, path, **HP[name])
    twin = make_opt(cls, twin_params, path, **HP[name])
    sched = _schedule(gen, params, 3)
    _run(opt, params, sched[:1])
    _run(twin, twin_params, sched[:1])
    snap = snapshot(opt, params)
    set_grads(params, make_grads(params, gen))
    with pytest.raises(exc):
        call(opt, params)
    assert_unchanged(opt, params, snap, msg=case)
    assert opt.skipped_steps == 0
    _run(opt, params, sched[1:])
    _run(twin, twin_params, sched[1:])
    _assert_same_run(twin_params, twin, params, opt, msg=f"after {case}")
