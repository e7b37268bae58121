"""benchmarks/precision.py runs end to end (smoke preset), and the study's
verdict rules decide made-up records as stated."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

from _workloads import loop, precision  # noqa: E402
from _workloads.optimizers import Candidate  # noqa: E402

# State bytes per parameter of each storage (the README's table): AdaLo, AdamL, AdaLoss.
STATE_BYTES = {
    "float32 parameters and state": (4, 8, 0),
    precision.REFERENCE: (8, 12, 4),            # the float32 master counts
    precision.ROUND_TO_NEAREST: (4, 8, 0),
    precision.STOCHASTIC: (2, 4, 0),
}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("precision_script", BENCH / "precision.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("precision")
    module.main(["--smoke", "--out", str(out), "--threads", "1"])
    return out


def test_every_rule_and_storage_reported_with_its_memory(smoke):
    rows = [l.split(" | ") for l in (smoke / "report.md").read_text().splitlines() if l.startswith("| Ada")]
    got = {(r[0].strip("| "), r[1]): float(r[4]) for r in rows}
    for storage, per_rule in STATE_BYTES.items():
        for rule, want in zip(precision.RULES, per_rule):
            assert got[(rule, storage)] == want, (rule, storage)
    assert (smoke / "precision.png").stat().st_size > 10_000
    verdicts = [l for l in (smoke / "report.md").read_text().splitlines() if l.startswith("- **")]
    assert len(verdicts) == len(precision.RULES)


def _result(losses):
    """Made-up runs: storage -> final training losses per seed (AdamL only)."""
    result = precision.PrecisionResult(task=None, steps=100)
    for rule in precision.RULES:
        for storage, values in losses.items():
            records = []
            for seed, value in enumerate(values):
                r = loop.Record("cnn-digits", Candidate(rule, storage), seed, 10)
                r.curve = [(k, 0.1 * k, value) for k in range(1, 101)]
                records.append(r)
            result.runs[(rule, storage)] = records
    return result


def test_verdict_rules():
    ref, rn, sr = precision.REFERENCE, precision.ROUND_TO_NEAREST, precision.STOCHASTIC
    v = precision.verdicts(_result({ref: [0.10, 0.12], rn: [0.30, 0.32], sr: [0.113, 0.113]}))[0]
    assert (v["reaches"], v["beats"]) == ("holds", "holds")          # 0.113 <= 1.05 * 0.11
    v = precision.verdicts(_result({ref: [0.10, 0.12], rn: [0.12, 0.12], sr: [0.1195, 0.1195]}))[0]
    assert (v["reaches"], v["beats"]) == ("does not hold", "a draw")  # 0.1195 > 0.1155; within 1 % of 0.12
    v = precision.verdicts(_result({ref: [0.1], rn: [0.1], sr: [0.2]}))[0]
    assert v["beats"] == "does not hold"
