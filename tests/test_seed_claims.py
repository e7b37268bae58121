"""benchmarks/seed_claims.py runs end to end and writes its report and figures.

Runs the script's smoke preset (a few seconds on 2 CPU cores): the numbers are
meaningless at that size, so this checks the plumbing only — that every study
runs, that report.md and the PNGs are written, and that the report covers each
study with a verdict for every check. The script is imported by path, because
``benchmarks/`` is not a package.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "seed_claims.py"
VERDICTS = ("held", "partly held", "did not hold", "inconclusive")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("seed_claims_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("seed_claims")
    summary = module.run(module.SMOKE, out, progress=False)
    return out, summary


def test_writes_report_and_at_least_three_pngs(smoke_run):
    out, summary = smoke_run
    assert (out / "report.md").stat().st_size > 0
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) >= 3
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(summary["figures"]) == [p.name for p in pngs]
    json.loads((out / "results.json").read_text())  # valid JSON


def test_report_covers_every_study(smoke_run):
    out, _ = smoke_run
    text = (out / "report.md").read_text()
    for heading in ("## 1. AdamL", "## 2. AdaLoss", "## 3. AdaLo", "## Implementations", "## Summary"):
        assert heading in text
    for name in ("Three-Hump Camel", "Rosenbrock", "EAdam", "AdaBelief", "AdaGrad-Norm",
                 "SGD_Constant", "SGD_DecaySqrt", "compliant", "adversarial", "Adam lr="):
        assert name in text
    # The b0 table has the seed's rows.
    for b0 in ("0.01", "0.1", "1", "10", "100"):
        assert re.search(rf"^\| {re.escape(b0)} \|", text, flags=re.MULTILINE)
    # Every figure the report links exists.
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (out / link).exists(), link


def test_every_summary_row_has_a_verdict(smoke_run):
    out, _ = smoke_run
    text = (out / "report.md").read_text()
    summary = text.split("## Summary", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in summary.splitlines() if line.startswith("| ") and not line.startswith("| claim")]
    assert len(rows) >= 10
    for row in rows:
        assert any(f"**{v}**" in row for v in VERDICTS), row
