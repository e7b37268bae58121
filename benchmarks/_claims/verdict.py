"""What the studies' report sections share: a check's ``Verdict`` and its four
outcomes, the "within noise" rule, and the markdown table.

Nothing in the report states a conclusion that is not computed: each study's
``*_verdict`` functions compare measured values and pick their wording from the
comparison. The rules of those comparisons (what "faster", "within noise" and
"robust" mean) are written into the report next to the tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

HELD, NOT_HELD, PARTLY, UNDECIDED = "held", "did not hold", "partly held", "inconclusive"


@dataclass
class Verdict:
    claim: str
    outcome: str
    evidence: str


def within_noise(a: Tuple[float, float], b: Tuple[float, float]) -> bool:
    """Two (mean, std) pairs differ by no more than the larger std."""
    return abs(a[0] - b[0]) <= max(a[1], b[1])


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
