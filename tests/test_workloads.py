"""benchmarks/workloads.py runs end to end: every task, every optimizer, the
report with its verdicts, the curves and the JSON.

The smoke preset (about a minute on 2 cores) trains a few steps of each
task: the numbers mean nothing at that size, so this checks the plumbing and
the verdict rules, which are also tested on made-up records below.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPT = BENCH / "workloads.py"


def _load():
    spec = importlib.util.spec_from_file_location("workloads_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    module = _load()
    out = tmp_path_factory.mktemp("workloads")
    module.main(["--smoke", "--out", str(out), "--threads", "1"])
    return module, out


def test_every_task_has_a_section_a_table_row_per_optimizer_and_curves(smoke):
    module, out = smoke
    text = (out / "report.md").read_text()
    for name, cls in module.TASKS.items():
        assert f"## {cls.title}" in text
        assert (out / f"{name}.png").stat().st_size > 10_000
        for optimizer in module.OPTIMIZERS[name]:
            assert f"| {optimizer} |" in text
    assert "sha256" in text and "Python standard library docstrings" in text
    assert "Written part-way" not in text  # rewritten after the last task


def test_verdicts_are_stated_with_their_rule(smoke):
    _, out = smoke
    lines = [l for l in (out / "report.md").read_text().splitlines() if l.startswith("- **")]
    assert len(lines) >= 8
    for line in lines:
        assert line.split("**")[1] in ("holds", "does not hold", "a draw", "not decided")
        assert "Rule:" in line
    # The table at the top has one row per verdict, with the same verdict.
    text = (out / "report.md").read_text()
    glance = text.split("## Verdicts at a glance", 1)[1].split("\n## ", 1)[0]
    rows = [r for r in glance.splitlines() if r.startswith("| ") and "**" in r]
    assert sorted(r.split("**")[1] for r in rows) == sorted(l.split("**")[1] for l in lines)


def test_timing_is_side_by_side_for_every_optimizer(smoke):
    module, out = smoke
    data = json.loads((out / "results.json").read_text())
    for name in module.TASKS:
        timing = data["timing"][name]
        assert set(timing) == set(module.OPTIMIZERS[name])
        for t in timing.values():
            assert t["iteration"] > 0 and 0 < t["step"] < t["iteration"] and 0 <= t["share"] <= 1


def test_results_json_holds_every_run(smoke):
    module, out = smoke
    data = json.loads((out / "results.json").read_text())
    assert data["preset"] == "smoke" and data["pending"] == []
    for name in module.TASKS:
        runs = data["runs"][name]
        assert {r["optimizer"] for r in runs} == set(module.OPTIMIZERS[name])
        assert all(r["curve"] and r["state_bytes"] >= 0 for r in runs)


# ---------------------------------------------------------------- the rules on made-up numbers


def _records(verdicts_module, loop, optimizers, finals, hits=None, epoch=None):
    from _workloads.optimizers import Candidate

    runs = {}
    for name, values in zip(optimizers, finals):
        runs[name] = []
        for seed, value in enumerate(values):
            r = loop.Record("cnn-digits", Candidate(name, "x"), seed, steps_per_epoch=10)
            r.evals = [(0, 0.0, 0.0)] + ([(hits[name], 1.0, 0.99)] if hits and name in hits else []) + \
                      [(100, 10.0, value)]
            r.step_seconds = [epoch[name]] * 20 if epoch else [0.1] * 20
            runs[name].append(r)
    return runs


@pytest.fixture(scope="module")
def rules():
    sys.path.insert(0, str(BENCH))
    from types import SimpleNamespace

    from _workloads import loop, verdicts

    task = SimpleNamespace(name="cnn-digits", metric="test accuracy", higher_better=True, steps_per_epoch=10)
    return verdicts, loop, task


def test_quality_rules(rules):
    verdicts, loop, task = rules
    runs = _records(verdicts, loop, ["AdamL", "Adam", "AdamW"], [[0.95, 0.97], [0.955, 0.955], [0.90, 0.90]])
    as_good = verdicts.Claim("AdamL", "as-good", ("cnn-digits",), "")
    better = verdicts.Claim("AdamL", "better", ("cnn-digits",), "")
    assert verdicts.decide(as_good, task, runs)["verdict"] == "holds"      # 0.96 vs 0.955
    assert verdicts.decide(better, task, runs)["verdict"] == "a draw"      # within 0.01
    runs["AdamL"][0].evals[-1] = (100, 10.0, 0.99)                         # mean 0.98: ahead by 0.025
    assert verdicts.decide(better, task, runs)["verdict"] == "holds"
    runs["AdamL"][0].evals[-1] = (100, 10.0, 0.90)                         # mean 0.935: behind by 0.02
    assert verdicts.decide(as_good, task, runs)["verdict"] == "does not hold"


def test_speed_and_epoch_time_rules(rules):
    verdicts, loop, task = rules
    runs = _records(verdicts, loop, ["AdamL", "Adam"], [[0.99], [0.99]], hits={"AdamL": 40, "Adam": 100},
                    epoch={"AdamL": 0.05, "Adam": 0.102})
    # evals: 0.0 at step 0, 0.99 at the hit, 0.99 at the end: the target is 0.891
    assert math.isclose(verdicts.target(runs, True), 0.9 * 0.99)
    twice = verdicts.Claim("AdamL", "speed", ("cnn-digits",), "", factor=0.5)
    assert verdicts.decide(twice, task, runs)["verdict"] == "holds"         # 40 vs 100 steps
    runs["AdamL"][0].evals[1] = (60, 1.0, 0.99)
    assert verdicts.decide(twice, task, runs)["verdict"] == "does not hold"  # 0.6 > 0.5
    epoch = verdicts.Claim("AdamL", "epoch-time", ("cnn-digits",), "")
    assert verdicts.decide(epoch, task, runs) is None                        # not timed
    # (iteration, step) seconds: only the steps decide; the iterations are a check.
    timed = lambda a, b: verdicts.decide(epoch, task, runs, {"AdamL": loop.Timing(a[0], a[1], a[1] / a[0]),
                                                             "Adam": loop.Timing(b[0], b[1], b[1] / b[0])})
    assert timed((1.0, 0.098), (1.0, 0.1))["verdict"] == "a draw"           # step ratio 0.98
    assert timed((0.95, 0.05), (1.0, 0.1))["verdict"] == "holds"            # half the step time
    assert timed((1.3, 0.05), (1.0, 0.1))["verdict"] == "holds"             # noisy iterations do not decide
    assert timed((1.0, 0.11), (1.0, 0.1))["verdict"] == "does not hold"
    # Half Adam's step at a 10 % share: the epoch is 0.95 of Adam's.
    assert "0.950x" in timed((0.95, 0.05), (1.0, 0.1))["numbers"]
    assert math.isclose(runs["AdamL"][0].epoch_seconds, 0.5)
