"""benchmarks/step_time.py runs end to end at a tiny size: every (optimizer,
path) pair that can run here is timed on the path it is labelled with, the
records carry the rules' costs, part 2 trains the digits MLP, and the JSON and
the PNG are written. The costs are checked against the table in the README
(bytes a single pass must move), spelled out here independently.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")
pytest.importorskip("sklearn")

import lossopt_cuda  # noqa: E402

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

from _step_time import cases, costs  # noqa: E402

# Bytes per element of one ideal pass (read p, g and the state; write p and the state),
# fp32 and bf16 parameters; this package's state is fp32, Adam's has the parameter's dtype.
IDEAL_BYTES = {"AdaLo": (20, 14), "AdamL": (28, 22), "AdaLoss": (12, 6), "Adam": (28, 14), "AdamW": (28, 14)}
STATE_BYTES = {"AdaLo": (4, 4), "AdamL": (8, 8), "AdaLoss": (0, 0), "Adam": (8, 4), "AdamW": (8, 4)}
# With state_dtype=bfloat16 (the "+bf16" variants): the state elements are 2 bytes.
IDEAL_BYTES_BF16_STATE = {"AdaLo": (16, 10), "AdamL": (20, 14), "AdaLoss": (12, 6)}
STATE_BYTES_BF16_STATE = {"AdaLo": 2, "AdamL": 4, "AdaLoss": 0}


@pytest.mark.parametrize("optimizer", sorted(IDEAL_BYTES))
def test_costs_per_element(optimizer):
    for dtype, want, state in zip((torch.float32, torch.bfloat16), IDEAL_BYTES[optimizer], STATE_BYTES[optimizer]):
        assert costs.bytes_per_element(optimizer, dtype, {}) == want
        assert costs.state_bytes_per_element(optimizer, dtype, {}) == state
        if optimizer in IDEAL_BYTES_BF16_STATE:
            low = cases.bf16_storage(dtype)
            assert costs.bytes_per_element(optimizer, dtype, low) == IDEAL_BYTES_BF16_STATE[optimizer][dtype == torch.bfloat16]
            assert costs.state_bytes_per_element(optimizer, dtype, low) == STATE_BYTES_BF16_STATE[optimizer]
    # AdaLoss with momentum keeps (and moves) one fp32 buffer more.
    if optimizer == "AdaLoss":
        assert costs.bytes_per_element(optimizer, torch.float32, {"momentum": 0.9}) == 20
        assert costs.state_bytes_per_element(optimizer, torch.float32, {"momentum": 0.9}) == 4


def test_sizes_parse():
    assert cases.parse_size("1M") == 2**20
    assert cases.parse_size("1.5k") == 1536
    assert cases.parse_size("12599296") == 12599296
    with pytest.raises(Exception):
        cases.parse_size("lots")


def test_paths_are_dropped_to_fit_in_memory(monkeypatch):
    cfg = cases.Config(torch.device("cpu"), "fp32", "single", [(2**20,)])
    cands = [cases.Candidate(o, i, {}) for o in ("Adam", "AdaLo") for i in cases.IMPLS]
    # Room for params, grads and every fused state but not the foreach temporaries:
    # the for-loop and foreach paths go, the fused ones stay.
    need_fused = 2**20 * (2 * 4 + 8 + 4)
    monkeypatch.setattr(cases, "free_bytes", lambda device: int(need_fused / 0.8) + 1)
    kept = cases.fit_to_memory(cfg, cands)
    assert {c.impl for c in kept} == {"fused"} and "dropped forloop/foreach" in cfg.note
    monkeypatch.setattr(cases, "free_bytes", lambda device: 1024)
    assert cases.fit_to_memory(cfg, cands) == [] and cfg.note.startswith("skipped")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("step_time")
    cmd = [sys.executable, str(BENCH / "step_time.py"), "--device", "cpu", "--sizes", "3K", "--no-target",
           "--layouts", "single", "transformer", "--repeats", "3", "--warmup", "1", "--epochs", "1",
           "--threads", "1", "--bf16-state", "--out", str(out / "r.json"), "--plot", str(out / "r.png")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "r.json").read_text()), proc.stdout, out


def test_every_runnable_pair_is_timed(run):
    data, stdout, _ = run
    fused_here = bool(lossopt_cuda.build_info()["cpu_kernels"])
    for dtype in ("fp32", "bf16"):
        for layout in ("single", "transformer"):
            got = {(r["optimizer"], r["impl"]) for r in data["results"]
                   if r["dtype"] == dtype and r["layout"] == layout}
            for opt in cases.OPTIMIZERS:
                assert {(opt, "forloop"), (opt, "foreach")} <= got
                if opt in cases.LOSS_DRIVEN:
                    assert ((opt, "fused") in got) == fused_here
            variants = {(r["optimizer"], r["impl"]) for r in data["results"] if r["storage"] == "bf16 state"
                        and r["dtype"] == dtype and r["layout"] == layout}
            assert {(o, i) for o in cases.LOSS_DRIVEN for i in ("forloop", "foreach")} <= variants
    for r in data["results"]:
        assert len(r["times_ms"]) == 3 and r["median_ms"] > 0
        if r["storage"] == "default":
            assert r["bytes_per_element"] == IDEAL_BYTES[r["optimizer"]][r["dtype"] == "bf16"]
            assert r["state_bytes_per_element"] == STATE_BYTES[r["optimizer"]][r["dtype"] == "bf16"]
        else:
            assert r["bytes_per_element"] == IDEAL_BYTES_BF16_STATE[r["optimizer"]][r["dtype"] == "bf16"]
            assert r["state_bytes_per_element"] == STATE_BYTES_BF16_STATE[r["optimizer"]]
            assert r["hparams"]["state_dtype"] == "torch.bfloat16"
        assert r["gb_per_s"] * r["median_ms"] / 1e3 * 1e9 == pytest.approx(r["bytes_per_element"] * r["numel"])
        assert r["fraction_of_copy"] == pytest.approx(r["gb_per_s"] / data["copy_gb_per_s"])
    assert "x best Adam" in stdout


def test_epochs_and_outputs(run):
    data, stdout, out = run
    assert {r["optimizer"] for r in data["epochs"]} == set(cases.OPTIMIZERS) - {"AdamW"}
    assert all(0 < r["step_share"] < 1 and 0 <= r["test_accuracy"] <= 1 for r in data["epochs"])
    assert "Epochs of the digits MLP" in stdout
    assert (out / "r.png").stat().st_size > 10_000
    assert data["git_commit"] is None or len(data["git_commit"]) == 40
