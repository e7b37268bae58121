"""The digits example (examples/train_digits.py) trains to good accuracy with every optimizer.

The example is imported by path, so ``examples/`` needs no ``__init__.py``.
The whole module takes a few seconds on 2 CPU cores.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("tqdm")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_digits.py"

# 20 epochs of 22 mini-batches (440 steps) with the example's default
# hyperparameters. Measured test accuracy at seed 0 (seeds 0-5 in brackets):
#   AdaLo 0.971 (0.962-0.973), AdamL 0.973 (0.973-0.980),
#   AdaLoss 0.969 (0.964-0.978), Adam 0.976 (0.976-0.982).
# AdaLo is the slowest starter (its lr warms up over ~1/(1-beta2) = 100 steps).
# The threshold 0.94 leaves a margin of >= 2 points below the worst measurement;
# chance level is 0.10 and a linear model reaches ~0.95-0.97, so 0.94 still
# catches an optimizer that is broken (diverges, never warms up, wrong sign).
EPOCHS = 20
MIN_TEST_ACCURACY = 0.94
# Cross-entropy on the whole training split after training; measured 0.003-0.11.
MAX_FINAL_TRAIN_LOSS = 0.3
OPTIMIZERS = ["adalo", "adaml", "adaloss", "adam"]


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("train_digits_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclass/pickle-friendly, harmless otherwise
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_reaches_accuracy(example, name):
    res = example.train(name, epochs=EPOCHS, seed=0, progress=False)
    assert len(res["epoch_seconds"]) == EPOCHS
    assert all(t > 0 for t in res["epoch_seconds"])
    assert math.isfinite(res["final_train_loss"])
    # The loss went down: the last epoch's mean mini-batch loss is well below the first's.
    assert res["train_losses"][-1] < 0.5 * res["train_losses"][0]
    assert res["final_train_loss"] < MAX_FINAL_TRAIN_LOSS, res
    assert res["test_accuracy"] >= MIN_TEST_ACCURACY, (
        f"{name}: test accuracy {res['test_accuracy']:.4f} < {MIN_TEST_ACCURACY}"
    )


@pytest.mark.parametrize("name", ["adalo", "adaml", "adaloss"])
def test_deterministic_on_cpu(example, name):
    # Same seed, same everything: the loss-driven optimizers add no randomness.
    a = example.train(name, epochs=2, seed=3, progress=False)
    b = example.train(name, epochs=2, seed=3, progress=False)
    assert a["final_train_loss"] == b["final_train_loss"]
    assert a["train_losses"] == b["train_losses"]
    assert a["test_accuracy"] == b["test_accuracy"]


def test_hyperparameter_override(example):
    # opt_kwargs reach the optimizer: AdaLoss with a tiny lr barely learns in one epoch.
    slow = example.train("adaloss", epochs=1, seed=0, progress=False, lr=1e-4)
    fast = example.train("adaloss", epochs=1, seed=0, progress=False)
    assert slow["final_train_loss"] > fast["final_train_loss"] + 0.5


def test_unknown_optimizer(example):
    with pytest.raises(ValueError, match="unknown optimizer"):
        example.train("sgd", epochs=1, progress=False)


def test_cli(example, capsys):
    assert example.main(["--epochs", "2", "--optimizers", "AdaLo", "adam", "--no-progress"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "test accuracy" in line]
    assert len(lines) == 2
    assert "AdaLo" in lines[0] and "Adam" in lines[1]
    assert "median epoch" in lines[0]
