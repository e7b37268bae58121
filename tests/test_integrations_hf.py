"""Hugging Face ``Trainer`` drives AdaLo, AdamL and AdaLoss through ``LossDrivenTrainer``.

``Trainer`` calls ``optimizer.step()`` with no arguments (through accelerate's
``AcceleratedOptimizer``). ``LossDrivenTrainer`` records the loss each
``training_step`` backpropagates (already divided for gradient accumulation)
and hands their sum, a detached tensor on the device, to ``step(loss=...)``.

Each test trains a tiny model built in code (no download; the hub is set
offline and nothing is reported anywhere) on an in-memory dataset, and compares
it with the same training written by hand (docs/training.md shows both). The
dataset records the order in which ``Trainer`` reads it, and the hand-written
loop replays that order, so ``Trainer``'s sampler and seed need not be copied.

Why bit-exact (``torch.equal``): both sides run the same float64 operations in
the same order: the same micro-batches, ``loss / k`` (or the token sum divided
by the token count of the accumulated batch) before ``backward``, the same
``torch.nn.utils.clip_grad_norm_`` over ``model.parameters()``, the same
left-to-right sum of the detached losses, the same learning-rate schedule.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

# Before transformers / huggingface_hub are imported: never touch the network.
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ.setdefault(_var, "1")

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import lossopt_cuda  # noqa: E402
from lossopt_cuda import MissingLossError  # noqa: E402
from lossopt_cuda.integrations import AccumulatedLossOptimizer  # noqa: E402
from lossopt_cuda.integrations.huggingface import LossDrivenTrainer  # noqa: E402

STEPS = 4  # optimizer steps
BATCH = 4  # rows per micro-batch
IN_FEATURES, HIDDEN, CLASSES, TOKENS = 5, 7, 3, 3
CLIP = 0.05  # small enough that every step is clipped
OPT_KWARGS = {
    "AdaLo": {"betas": (0.9, 0.9), "kappa": 3.0},
    "AdamL": {"lr": 1e-2},
    "AdaLoss": {"lr": 0.5},
}

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")


def make_net(bias: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(IN_FEATURES, HIDDEN, bias=bias), nn.Tanh(), nn.Linear(HIDDEN, CLASSES, bias=bias)
    ).double()


class TinyClassifier(nn.Module):
    """Any ``nn.Module`` whose forward returns a dict with ``loss`` works with Trainer."""

    def __init__(self, bias: bool = True):
        super().__init__()
        self.net = make_net(bias)

    def forward(self, x, labels=None):
        logits = self.net(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels)
        return out


class TinyTokenModel(nn.Module):
    """A token-level loss normalised by ``num_items_in_batch`` (as HF causal LMs
    do): ``**kwargs`` in forward makes Trainer pass the number of labelled
    tokens in the whole accumulated batch and not divide by the accumulation."""

    def __init__(self):
        super().__init__()
        self.net = make_net()

    def forward(self, x, labels=None, num_items_in_batch=None, **kwargs):
        logits = self.net(x)
        out = {"logits": logits}
        if labels is not None:
            total = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum")
            n = num_items_in_batch if num_items_in_batch is not None else (labels != -100).sum()
            out["loss"] = total / n
        return out


class RecordingDataset(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows
        self.order = []

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        self.order.append(i)
        return self.rows[i]


def make_rows(n, tokens: bool = False):
    g = torch.Generator().manual_seed(3)
    if not tokens:
        x = torch.randn(n, IN_FEATURES, generator=g, dtype=torch.float64)
        y = torch.randint(0, CLASSES, (n,), generator=g)
        return [{"x": x[i], "labels": y[i]} for i in range(n)]
    x = torch.randn(n, TOKENS, IN_FEATURES, generator=g, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (n, TOKENS), generator=g)
    y[torch.rand(n, TOKENS, generator=g) < 0.4] = -100  # unequal token counts per micro-batch
    return [{"x": x[i], "labels": y[i]} for i in range(n)]


def make_opt(name, params, seen=None):
    """The optimizer; with ``seen``, a subclass that records what step() received."""
    cls = getattr(lossopt_cuda, name)
    if seen is not None:

        class Spy(cls):
            def step(self, closure=None, *, loss=None):
                seen.append(loss)
                return super().step(closure, loss=loss)

        cls = Spy
    return cls(params, **OPT_KWARGS[name])


def training_args(tmp_path, accumulate, clip, schedule="constant"):
    return transformers.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=accumulate,
        max_steps=STEPS,
        max_grad_norm=clip or 0.0,
        lr_scheduler_type=schedule,
        warmup_steps=0,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        seed=11,
    )


def train(tmp_path, model, dataset, accumulate, clip, schedule="constant", **trainer_kwargs):
    trainer = LossDrivenTrainer(
        model=model,
        args=training_args(tmp_path, accumulate, clip, schedule),
        train_dataset=dataset,
        **trainer_kwargs,
    )
    trainer.train()
    assert trainer.state.global_step == STEPS
    assert len(dataset.order) == STEPS * accumulate * BATCH
    return trainer


def by_hand(model, opt, dataset, order, accumulate, clip, tokens=False, schedule=None):
    """The hand-written equivalent (docs/training.md), in Trainer's data order."""
    collate = transformers.default_data_collator
    rows = [dataset.rows[i] for i in order]
    micro = [collate(rows[j : j + BATCH]) for j in range(0, len(rows), BATCH)]
    for step in range(STEPS):
        window = micro[step * accumulate : (step + 1) * accumulate]
        n_tokens = sum(int((b["labels"] != -100).sum()) for b in window)
        total = None
        for batch in window:
            logits = model.net(batch["x"])
            if tokens:  # the token-sum / tokens of the whole accumulated batch
                loss = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), reduction="sum")
                loss = loss / n_tokens
            else:  # the micro-batch mean / number of micro-batches
                loss = F.cross_entropy(logits, batch["labels"]) / accumulate
            loss.backward()
            total = loss.detach() if total is None else total + loss.detach()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step(loss=total)  # the mean loss of the accumulated batch
        if schedule is not None:
            schedule.step()
        opt.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


def assert_same(actual, expected, what):
    for i, (a, e) in enumerate(zip(actual, expected)):
        if not torch.equal(a, e):
            raise AssertionError(
                f"{what}: parameter {i} differs, max |diff| = {(a - e).abs().max().item():.3e}"
            )


@pytest.mark.parametrize("accumulate, clip", [(1, None), (3, CLIP)], ids=["plain", "accumulate3-clip"])
@pytest.mark.parametrize("name", list(OPT_KWARGS))
def test_trainer_matches_hand_written(tmp_path, name, accumulate, clip):
    model, seen = TinyClassifier(), []
    opt = make_opt(name, model.parameters(), seen)
    dataset = RecordingDataset(make_rows(STEPS * accumulate * BATCH))
    trainer = train(tmp_path, model, dataset, accumulate, clip, optimizers=(opt, None))
    got = [p.detach().clone() for p in model.parameters()]

    # One step() per optimizer step, each with a detached 0-d tensor on the
    # parameters' device: no .item(), no Python float, no host sync.
    assert len(seen) == STEPS
    for loss in seen:
        assert isinstance(loss, torch.Tensor) and loss.dim() == 0
        assert not loss.requires_grad and loss.device == got[0].device
    assert isinstance(trainer.optimizer.optimizer, AccumulatedLossOptimizer)
    assert trainer.optimizer.optimizer.optimizer is opt

    ref = TinyClassifier()
    expected = by_hand(ref, make_opt(name, ref.parameters()), dataset, dataset.order, accumulate, clip)
    assert_same(got, expected, f"{name} Trainer vs plain PyTorch")
    assert max((a - b).abs().max().item() for a, b in zip(got, TinyClassifier().parameters())) > 1e-4


def test_trainer_builds_the_optimizer_and_schedules_lr(tmp_path):
    """optimizer_cls_and_kwargs (Trainer makes a decay and a no-decay group) and
    Trainer's default linear learning-rate decay, which AdamL follows."""
    model = TinyClassifier()
    dataset = RecordingDataset(make_rows(STEPS * 2 * BATCH))
    trainer = train(
        tmp_path, model, dataset, accumulate=2, clip=CLIP, schedule="linear",
        optimizer_cls_and_kwargs=(lossopt_cuda.AdamL, OPT_KWARGS["AdamL"]),
    )
    got = [p.detach().clone() for p in model.parameters()]
    assert len(trainer.optimizer.param_groups) == 2

    ref = TinyClassifier()
    decay = [p for n, p in ref.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in ref.named_parameters() if not n.endswith("weight")]
    opt = lossopt_cuda.AdamL(
        [{"params": decay, "weight_decay": 0.0}, {"params": no_decay, "weight_decay": 0.0}],
        **OPT_KWARGS["AdamL"],
    )
    schedule = transformers.get_scheduler("linear", opt, num_warmup_steps=0, num_training_steps=STEPS)
    expected = by_hand(ref, opt, dataset, dataset.order, 2, CLIP, schedule=schedule)
    assert_same(got, expected, "AdamL (optimizer_cls_and_kwargs, linear schedule) vs plain PyTorch")


def test_token_weighted_loss_under_accumulation(tmp_path):
    """With num_items_in_batch the step's loss is the token mean over the whole
    accumulated batch, not the mean of per-micro-batch means."""
    model = TinyTokenModel()
    opt = make_opt("AdaLoss", model.parameters())
    dataset = RecordingDataset(make_rows(STEPS * 3 * BATCH, tokens=True))
    train(tmp_path, model, dataset, accumulate=3, clip=None, optimizers=(opt, None))
    got = [p.detach().clone() for p in model.parameters()]
    ref = TinyTokenModel()
    expected = by_hand(ref, make_opt("AdaLoss", ref.parameters()), dataset, dataset.order, 3, None, tokens=True)
    assert_same(got, expected, "AdaLoss (token-weighted loss, accumulate 3) vs plain PyTorch")


def test_checkpoint_and_resume(tmp_path):
    """Trainer's checkpoints hold the loss-driven optimizer's state (through both
    wrappers): stopping after 2 steps and resuming equals training straight through."""

    def run(out, max_steps, resume=None):
        model = TinyClassifier()
        args = training_args(out, 2, CLIP)
        args = transformers.TrainingArguments(
            **{**args.to_dict(), "max_steps": max_steps, "save_strategy": "steps", "save_steps": 2}
        )
        trainer = LossDrivenTrainer(
            model=model, args=args, train_dataset=RecordingDataset(make_rows(STEPS * 2 * BATCH)),
            optimizers=(make_opt("AdamL", model.parameters()), None),
        )
        trainer.train(resume_from_checkpoint=resume)
        return [p.detach().clone() for p in model.parameters()]

    straight = run(tmp_path / "straight", STEPS)
    run(tmp_path / "stopped", 2)
    resumed = run(tmp_path / "stopped", STEPS, resume=str(tmp_path / "stopped" / "checkpoint-2"))
    assert_same(resumed, straight, "AdamL resumed from a checkpoint vs trained straight through")


def test_other_optimizers_are_left_alone(tmp_path):
    model = TinyClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = train(tmp_path, model, RecordingDataset(make_rows(STEPS * BATCH)), 1, None, optimizers=(opt, None))
    assert trainer.optimizer.optimizer is opt


def test_trainer_with_an_empty_parameter_group(tmp_path):
    """A model without biases or norms: Trainer's no-decay group is empty.

    torch.optim accepts empty parameter groups; Trainer's create_optimizer makes
    one whenever every parameter is decayed.
    """
    model = TinyClassifier(bias=False)
    trainer = train(
        tmp_path, model, RecordingDataset(make_rows(STEPS * BATCH)), 1, None,
        optimizer_cls_and_kwargs=(lossopt_cuda.AdamL, OPT_KWARGS["AdamL"]),
    )
    assert [len(g["params"]) for g in trainer.optimizer.param_groups] == [2, 0]


def test_accumulated_loss_optimizer_needs_a_loss():
    p = nn.Parameter(torch.ones(2, dtype=torch.float64))
    opt = AccumulatedLossOptimizer(lossopt_cuda.AdamL([p]))
    p.grad = torch.ones_like(p)
    with pytest.raises(MissingLossError, match="add_loss"):
        opt.step()
