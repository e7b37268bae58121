"""Study 3: AdaLo (both modes, several kappa) against Adam on digits.

Seed 000 claims: no scheduler needed; "the effective learning rate decreases
automatically as training converges"; and a kappa rule of thumb:
``kappa = 0.2 ~ 0.3 x initial_loss`` (ImageNet / CIFAR), and for smaller data
sets "start with kappa = 3.0 and increase if the loss curve is noisy, decrease
if convergence is too slow". AdaLo keeps the seed's defaults (betas
(0.9, 0.999), weight_decay 1e-2, eps 1e-8); only ``mode`` and ``kappa`` vary.

This module owns the study: its runs, its numbers in ``results.json``, its
verdicts, table and report section, and its figure.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim import Optimizer
from tqdm import tqdm

from lossopt_cuda import AdaLo

from .budget import Budget
from .common import finite_or_none, fmt_pm, mean_std, optimizer_step, quiet_skip_warnings, seed_all
from .figures import save_figure, plt
from .problems import DIGITS_BATCH, DIGITS_HIDDEN, Digits, evaluate, load_digits_split, make_mlp
from .verdict import HELD, NOT_HELD, PARTLY, UNDECIDED, Verdict, table, within_noise

MODES = ("adversarial", "compliant")
#: The seed's defaults, passed explicitly because the report's lr analysis uses beta2.
ADALO_BETAS = (0.9, 0.999)
#: Accuracy above which a digits run counts as trained (for "epochs to reach").
ACC_TARGET = 95.0
KappaSpec = Union[float, str]


# =========================================================================== runs


def kappa_value(spec: KappaSpec, initial_loss: float) -> float:
    """A number is used as it is; ``"0.25L0"`` means 0.25 x the initial loss."""
    if isinstance(spec, str):
        return float(spec.removesuffix("L0")) * initial_loss
    return float(spec)


def kappa_label(spec: KappaSpec) -> str:
    return f"{spec.removesuffix('L0')}·L0" if isinstance(spec, str) else f"{float(spec):g}"


def implementations(adam_lrs: Sequence[float]) -> Dict[str, str]:
    lrs = ", ".join(f"{lr:g}" for lr in adam_lrs)
    return {
        "AdaLo": "`lossopt_cuda.AdaLo` (this package; default foreach/fused choice), seed defaults "
                 "betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8; `mode` and `kappa` as listed",
        "Adam": f"`torch.optim.Adam`, lr in {{{lrs}}} (1e-3 is its default), other defaults",
    }


@dataclass
class DigitsRun:
    label: str  # e.g. "AdaLo adversarial kappa=3" or "Adam lr=0.001"
    family: str  # "adversarial", "compliant" or "Adam"
    kappa_spec: Optional[KappaSpec]
    seed: int
    kappa: Optional[float]  # the value used (differs per seed for the L0 rule)
    initial_loss: float
    test_acc: np.ndarray  # per epoch, after the epoch (%)
    train_loss: np.ndarray  # full training-split cross-entropy per epoch
    lr: np.ndarray  # AdaLo's lr_t (or Adam's lr) at the end of each epoch
    batch_losses: np.ndarray  # every mini-batch loss, in order
    diverged: bool


def adalo_lr(opt: AdaLo) -> float:
    """AdaLo's current ``lr_t``, from its per-group ``loss_ema`` (documented state)."""
    group = opt.param_groups[0]
    ema = float(opt.state[group["params"][0]]["loss_ema"])
    scale = ema if group["mode"] == "adversarial" else 1.0 - ema
    return max(scale / group["kappa"], group["eps"])


def train_one(
    data: Digits, seed: int, epochs: int, family: str, kappa_spec: Optional[KappaSpec],
    adam_lr: Optional[float] = None,
) -> DigitsRun:
    """Train the MLP with AdaLo (family = mode, kappa from ``kappa_spec``) or Adam
    (family = "Adam", lr ``adam_lr``); evaluate after every epoch."""
    gen = seed_all(seed)
    model = make_mlp()
    initial_loss, _ = evaluate(model, data.x_train, data.y_train)
    kappa: Optional[float] = None
    opt: Optimizer
    if family == "Adam":
        assert adam_lr is not None, "Adam needs adam_lr"
        opt = torch.optim.Adam(model.parameters(), lr=adam_lr)
        label = f"Adam lr={adam_lr:g}"
    else:
        kappa = kappa_value(kappa_spec, initial_loss)  # type: ignore[arg-type]
        opt = AdaLo(model.parameters(), betas=ADALO_BETAS, kappa=kappa, mode=family)
        label = f"AdaLo {family} κ={kappa_label(kappa_spec)}"  # type: ignore[arg-type]
    n = data.x_train.shape[0]
    accs, losses, lrs, batch_losses = [], [], [], []
    diverged = False
    with quiet_skip_warnings():
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, DIGITS_BATCH):
                idx = perm[i : i + DIGITS_BATCH]
                loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
                batch_losses.append(loss.item())
                if not math.isfinite(batch_losses[-1]):
                    diverged = True
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                optimizer_step(opt, loss)
            train_loss, _ = evaluate(model, data.x_train, data.y_train)
            _, acc = evaluate(model, data.x_test, data.y_test)
            losses.append(train_loss)
            accs.append(100 * acc)
            lrs.append(adalo_lr(opt) if isinstance(opt, AdaLo) else opt.param_groups[0]["lr"])
            if diverged:
                break
    pad = epochs - len(accs)  # a diverged run keeps its arrays' length, as NaN
    as_array = lambda xs: np.array(xs + [float("nan")] * pad, dtype=np.float64)  # noqa: E731
    return DigitsRun(
        label=label, family=family, kappa_spec=kappa_spec, seed=seed, kappa=kappa,
        initial_loss=initial_loss, test_acc=as_array(accs), train_loss=as_array(losses),
        lr=as_array(lrs), batch_losses=np.array(batch_losses), diverged=diverged,
    )


@dataclass
class AdaLoStudy:
    runs: List[DigitsRun] = field(default_factory=list)
    epochs: int = 0
    seeds: Tuple[int, ...] = ()
    kappas: Tuple[KappaSpec, ...] = ()
    adam_lrs: Tuple[float, ...] = ()
    steps_per_epoch: int = 0

    def labels(self) -> List[str]:
        seen: List[str] = []
        for r in self.runs:
            if r.label not in seen:
                seen.append(r.label)
        return seen

    def of(self, label: str) -> List[DigitsRun]:
        return [r for r in self.runs if r.label == label]


def run_adalo_study(budget: Budget, progress: bool = True) -> AdaLoStudy:
    data = load_digits_split()
    study = AdaLoStudy(
        epochs=budget.adalo_epochs, seeds=budget.adalo_seeds, kappas=budget.adalo_kappas,
        adam_lrs=budget.adam_lrs, steps_per_epoch=math.ceil(data.x_train.shape[0] / DIGITS_BATCH),
    )
    jobs: List[Tuple[str, Optional[KappaSpec], Optional[float]]] = [
        (mode, k, None) for mode in MODES for k in budget.adalo_kappas
    ] + [("Adam", None, lr) for lr in budget.adam_lrs]
    work = [(family, k, lr, s) for family, k, lr in jobs for s in budget.adalo_seeds]
    for family, k, lr, seed in tqdm(work, desc="3/3 AdaLo on digits", disable=not progress):
        study.runs.append(train_one(data, seed, budget.adalo_epochs, family, k, adam_lr=lr))
    return study


def jitter(batch_losses: np.ndarray, window: int) -> float:
    """How noisy the loss curve is: the standard deviation of the mini-batch loss
    relative to its one-epoch moving average, over the last third of training."""
    if batch_losses.size < 3 * window or not np.isfinite(batch_losses).all():
        return float("nan")
    kernel = np.ones(window) / window
    smooth = np.convolve(batch_losses, kernel, mode="valid")  # smooth[i] = mean(x[i:i+window])
    tail = slice(2 * smooth.size // 3, smooth.size)
    centre = batch_losses[window // 2 : window // 2 + smooth.size]
    return float(np.std(centre[tail] / smooth[tail] - 1.0))


def lr_against_constant_loss(run: DigitsRun) -> float:
    """lr_t after the last step divided by the lr_t that a loss frozen at its initial
    value L0 would give after as many steps: (1 - beta2^t) / (2 + L0) for the EMA.
    This isolates what the falling loss did to lr_t from the EMA's warm-up
    (> 1: the falling loss raised lr_t; < 1: it lowered it)."""
    steps = run.batch_losses.size
    ema = (1 - ADALO_BETAS[1] ** steps) / (2 + run.initial_loss)
    scale = ema if run.family == "adversarial" else 1 - ema
    return float(run.lr[-1] / (scale / run.kappa))


def first_epoch_reaching(acc: np.ndarray, threshold: float) -> Optional[int]:
    """1-based epoch after which the test accuracy first reached ``threshold`` (%)."""
    hits = np.flatnonzero(np.nan_to_num(acc, nan=-1.0) >= threshold)
    return int(hits[0]) + 1 if hits.size else None


# =========================================================================== numbers (results.json)


def numbers(study: AdaLoStudy) -> List[Dict[str, Any]]:
    """The measured values behind the study's table, JSON-ready."""
    return [
        {"label": r.label, "seed": r.seed, "kappa": r.kappa, "initial_loss": r.initial_loss,
         "test_acc": [finite_or_none(x) for x in r.test_acc], "train_loss": [finite_or_none(x) for x in r.train_loss],
         "lr": [finite_or_none(x) for x in r.lr], "diverged": r.diverged}
        for r in study.runs
    ]


# =========================================================================== report section


@dataclass
class ConfigSummary:
    label: str
    family: str
    kappa_spec: Any
    kappa: Tuple[float, float]
    acc: Tuple[float, float]
    loss: Tuple[float, float]
    jitter: Tuple[float, float]
    epochs_to_target: str
    lr_first: float
    lr_last: float
    lr_peak_epoch: int
    diverged: int
    n: int


def summarise(runs: Sequence[DigitsRun], steps_per_epoch: int) -> ConfigSummary:
    ok = [r for r in runs if not r.diverged]
    hits = [first_epoch_reaching(r.test_acc, ACC_TARGET) for r in runs]
    reached = [h for h in hits if h is not None]
    lr = np.nanmean(np.array([r.lr for r in ok]), axis=0) if ok else np.full(1, np.nan)
    return ConfigSummary(
        label=runs[0].label, family=runs[0].family, kappa_spec=runs[0].kappa_spec,
        kappa=mean_std([r.kappa for r in runs]) if runs[0].kappa is not None else (math.nan, math.nan),
        acc=mean_std([r.test_acc[-1] for r in ok]),
        loss=mean_std([r.train_loss[-1] for r in ok]),
        jitter=mean_std([jitter(r.batch_losses, steps_per_epoch) for r in ok]),
        epochs_to_target=(f"{np.mean(reached):.1f} ({len(reached)}/{len(runs)})" if reached else f"never (0/{len(runs)})"),
        lr_first=float(lr[0]), lr_last=float(lr[-1]),
        lr_peak_epoch=int(np.nanargmax(lr)) + 1 if np.isfinite(lr).any() else 0,
        diverged=len(runs) - len(ok), n=len(runs),
    )


def _adalo_table(summaries: Sequence[ConfigSummary]) -> str:
    rows = []
    for s in summaries:
        kappa = "" if math.isnan(s.kappa[0]) else (
            f"{s.kappa[0]:.3g}" + (f"±{s.kappa[1]:.2g}" if s.kappa[1] > 0 else "")
        )
        rows.append([
            s.label, kappa, fmt_pm(s.acc[0], s.acc[1]), fmt_pm(s.loss[0], s.loss[1], 3),
            s.epochs_to_target, fmt_pm(s.jitter[0], s.jitter[1], 3),
            f"{s.lr_first:.3g} → {s.lr_last:.3g}", f"{s.diverged}/{s.n}",
        ])
    return table(
        ["configuration", "kappa used", "final test acc (%)", "final train loss", f"epochs to {ACC_TARGET:g} % test",
         "loss jitter", "lr: epoch 1 → last", "diverged"],
        rows,
    )


def _mode_summaries(summaries: Sequence[ConfigSummary], mode: str) -> List[ConfigSummary]:
    """The mode's configurations sorted by the kappa actually used."""
    return sorted([s for s in summaries if s.family == mode], key=lambda s: s.kappa[0])


def adalo_vs_adam_verdict(summaries: Sequence[ConfigSummary]) -> Verdict:
    adalo = [s for s in summaries if s.family != "Adam" and not math.isnan(s.acc[0])]
    adam = [s for s in summaries if s.family == "Adam" and not math.isnan(s.acc[0])]
    best_adalo = max(adalo, key=lambda s: s.acc[0])
    best_adam = max(adam, key=lambda s: s.acc[0])
    default = [s for s in adalo if s.family == "adversarial" and s.kappa_spec == 3.0]
    if within_noise(best_adalo.acc, best_adam.acc):
        outcome, word = HELD, "within a seed std of"
    elif best_adalo.acc[0] > best_adam.acc[0]:
        outcome, word = HELD, "above"
    else:
        outcome, word = NOT_HELD, "below"
    evidence = (
        f"Best AdaLo ({best_adalo.label}) {fmt_pm(*best_adalo.acc)} % is {word} the best Adam "
        f"({best_adam.label}) {fmt_pm(*best_adam.acc)} % (best of {len(adalo)} AdaLo configurations against "
        f"best of {len(adam)} Adam learning rate(s), which favours AdaLo)."
    )
    if default:
        d = default[0]
        rel = "within a seed std of" if within_noise(d.acc, best_adam.acc) else (
            "above" if d.acc[0] > best_adam.acc[0] else "below")
        evidence += f" The seed's default (adversarial, kappa=3) reached {fmt_pm(*d.acc)} %, {rel} Adam."
    return Verdict("AdaLo, with no learning-rate schedule, trains as well as Adam (digits test accuracy)",
                   outcome, evidence)


def _is_best(s: ConfigSummary, group: Sequence[ConfigSummary]) -> str:
    """'best', 'within noise of the best' or 'worse than the best' by final test accuracy."""
    best = max(group, key=lambda x: x.acc[0] if not math.isnan(x.acc[0]) else -1)
    if s is best:
        return "best"
    if not math.isnan(s.acc[0]) and within_noise(s.acc, best.acc):
        return "within noise of the best"
    return "worse than the best"


def kappa_rule_verdict(summaries: Sequence[ConfigSummary]) -> Verdict:
    """kappa = 0.2-0.3 x initial loss (the seed's rule for ImageNet/CIFAR)."""
    parts, ok = [], []
    for mode in MODES:
        group = _mode_summaries(summaries, mode)
        rules = [s for s in group if isinstance(s.kappa_spec, str)]
        if not rules:
            continue
        best = max(group, key=lambda x: x.acc[0] if not math.isnan(x.acc[0]) else -1)
        for s in rules:
            rank = _is_best(s, group)
            ok.append(rank != "worse than the best")
            parts.append(f"{mode}: {kappa_label(s.kappa_spec)} (kappa≈{s.kappa[0]:.2f}) {fmt_pm(*s.acc)} % is {rank}"
                         + ("" if rank == "best" else f" ({best.label}: {fmt_pm(*best.acc)} %)"))
    outcome = HELD if ok and all(ok) else NOT_HELD if ok and not any(ok) else PARTLY if ok else UNDECIDED
    return Verdict("The kappa rule of thumb kappa = 0.2-0.3 x initial loss gives the best kappa",
                   outcome, "; ".join(parts) + ".")


def kappa_default_verdict(summaries: Sequence[ConfigSummary]) -> Verdict:
    """kappa = 3 as the starting point for small data sets."""
    parts, ok = [], []
    for mode in MODES:
        group = _mode_summaries(summaries, mode)
        three = [s for s in group if s.kappa_spec == 3.0]
        if not three:
            continue
        rank = _is_best(three[0], group)
        ok.append(rank != "worse than the best")
        best = max(group, key=lambda x: x.acc[0] if not math.isnan(x.acc[0]) else -1)
        parts.append(f"{mode}: kappa=3 {fmt_pm(*three[0].acc)} % is {rank}"
                     + ("" if rank == "best" else f" ({best.label}: {fmt_pm(*best.acc)} %)"))
    outcome = HELD if ok and all(ok) else NOT_HELD if ok and not any(ok) else PARTLY if ok else UNDECIDED
    return Verdict("For a small data set, kappa = 3 (the default) is a good starting point",
                   outcome, "; ".join(parts) + ".")


def _trend(values: Sequence[float]) -> str:
    """'decreasing', 'increasing', 'overall down', 'overall up' or 'flat' along the sequence."""
    v = [x for x in values if not math.isnan(x)]
    if len(v) < 2:
        return "undetermined"
    diffs = np.diff(v)
    if (diffs < 0).all():
        return "decreasing"
    if (diffs > 0).all():
        return "increasing"
    return "overall down" if v[-1] < v[0] else "overall up" if v[-1] > v[0] else "flat"


def kappa_noise_verdict(summaries: Sequence[ConfigSummary]) -> Verdict:
    """'Increase kappa if the loss curve is noisy': the jitter must fall as kappa grows."""
    parts, trends = [], []
    for mode in MODES:
        group = _mode_summaries(summaries, mode)
        trend = _trend([s.jitter[0] for s in group])
        trends.append(trend)
        parts.append(f"{mode}: jitter " + ", ".join(f"{s.jitter[0]:.3f} (kappa≈{s.kappa[0]:.2g})" for s in group)
                     + f" — {trend} as kappa grows")
    outcome = HELD if all(t == "decreasing" for t in trends) else (
        PARTLY if any(t in ("decreasing", "overall down") for t in trends) else
        UNDECIDED if all(t == "undetermined" for t in trends) else NOT_HELD)
    return Verdict("A larger kappa makes the loss curve less noisy (\"increase kappa if the loss curve is noisy\")",
                   outcome, "; ".join(parts) + ".")


def kappa_speed_verdict(summaries: Sequence[ConfigSummary]) -> Verdict:
    """'Decrease kappa if convergence is too slow': the final training loss must
    grow with kappa (a smaller kappa converges further in the same epochs)."""
    parts, trends = [], []
    for mode in MODES:
        group = _mode_summaries(summaries, mode)
        trend = _trend([s.loss[0] for s in group])
        trends.append(trend)
        parts.append(f"{mode}: final train loss " + ", ".join(f"{s.loss[0]:.3f} (kappa≈{s.kappa[0]:.2g})" for s in group)
                     + f" — {trend} as kappa grows")
    outcome = HELD if all(t == "increasing" for t in trends) else (
        PARTLY if any(t in ("increasing", "overall up") for t in trends) else NOT_HELD)
    return Verdict("A smaller kappa converges faster (\"decrease kappa if convergence is too slow\")",
                   outcome, "; ".join(parts) + ".")


def lr_decay_verdict(study: AdaLoStudy) -> Verdict:
    """'The effective learning rate decreases automatically as training converges':
    lr_t at the last epoch below its value after the first epoch, per run."""
    if study.epochs < 2:
        return Verdict("AdaLo's effective learning rate decreases automatically as training converges",
                       UNDECIDED, "One epoch only: no trend to measure.")
    parts, fractions = [], []
    for mode in MODES:
        runs = [r for r in study.runs if r.family == mode and not r.diverged]
        down = sum(r.lr[-1] < r.lr[0] for r in runs)
        fractions.append(down / len(runs) if runs else math.nan)
        ratio = np.nanmedian([r.lr[-1] / r.lr[0] for r in runs]) if runs else math.nan
        own = np.nanmedian([lr_against_constant_loss(r) for r in runs]) if runs else math.nan
        effect = "raised" if own > 1 else "lowered" if own < 1 else "did not change"
        parts.append(
            f"{mode}: lr_t fell from epoch 1 to the last in {down}/{len(runs)} runs (median last/first ratio "
            f"{ratio:.2f}); against a loss frozen at L0 (same steps, same EMA warm-up) the falling loss "
            f"{effect} the final lr_t by a median factor {own:.2f}"
        )
    outcome = HELD if all(f == 1 for f in fractions) else NOT_HELD if all(f == 0 for f in fractions) else PARTLY
    return Verdict("AdaLo's effective learning rate decreases automatically as training converges",
                   outcome, "; ".join(parts) + ". (By construction adversarial lr_t = EMA(1/(2+L))/kappa rises as "
                   "L falls, and it also rises while the zero-initialised EMA warms up; compliant lr_t = "
                   "(1 - EMA)/kappa falls on both counts.)")


def section_adalo(study: AdaLoStudy) -> Tuple[str, List[Verdict]]:
    summaries = [summarise(study.of(label), study.steps_per_epoch) for label in study.labels()]
    verdicts = [
        adalo_vs_adam_verdict(summaries), kappa_rule_verdict(summaries), kappa_default_verdict(summaries),
        kappa_noise_verdict(summaries), kappa_speed_verdict(summaries), lr_decay_verdict(study),
    ]
    l0 = mean_std([r.initial_loss for r in study.runs])
    parts = [
        "## 3. AdaLo on digits: modes, kappa and the rule of thumb",
        "",
        "**Seed claims** (000): no scheduler needed; \"the effective learning rate decreases automatically as "
        "training converges\"; kappa rule of thumb: \"kappa = 0.2 ~ 0.3 × initial_loss\" for ImageNet / "
        "CIFAR-10 / CIFAR-100, and for a smaller data set \"start with kappa = 3.0 (default) and increase if "
        "loss curve is noisy, decrease if convergence is too slow\"; two modes, adversarial (loss up, lr down) "
        "and compliant (loss up, lr up).",
        "",
        f"Setup: the digits MLP 64-{DIGITS_HIDDEN}-10 (ReLU), mini-batches of {DIGITS_BATCH} "
        f"({study.steps_per_epoch} steps per epoch), {study.epochs} epochs, seeds {list(study.seeds)}; AdaLo with "
        "the seed's defaults (betas (0.9, 0.999), weight_decay 1e-2, eps 1e-8), kappa in "
        f"{{{', '.join(kappa_label(k) for k in study.kappas)}}}, where L0 is each run's initial training loss "
        f"(measured: {fmt_pm(*l0, 3)}); Adam at lr {{{', '.join(f'{x:g}' for x in study.adam_lrs)}}}. "
        "Loss jitter = std of the mini-batch loss relative to its one-epoch moving average over the last third of "
        "training (NaN when the run is shorter than three epochs). Values are mean±std over seeds; \"within "
        "noise\" = closer than the larger std.",
        "",
        _adalo_table(summaries),
        "",
    ]
    for v in verdicts:
        parts.append(f"* **{v.outcome}** — {v.claim}. {v.evidence}")
    parts += ["", "![AdaLo on digits](adalo_digits.png)", ""]
    return "\n".join(parts), verdicts


# =========================================================================== figures


def plot_adalo(study: AdaLoStudy, out: Path) -> str:
    """Test accuracy, training loss and learning rate per epoch (mean over seeds)."""
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    epochs = np.arange(1, study.epochs + 1)
    styles = {"adversarial": "-", "compliant": "--", "Adam": "-"}
    for label in study.labels():
        runs = study.of(label)
        style = styles[runs[0].family]
        color = "black" if runs[0].family == "Adam" else None
        for ax, attr in zip(axes, ("test_acc", "train_loss", "lr")):
            data = np.array([getattr(r, attr) for r in runs])
            with warnings.catch_warnings():  # epochs after every seed diverged plot as gaps
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(data, axis=0)
            ax.plot(epochs, mean, style, color=color, label=label, lw=1.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].set_ylim(max(0.0, axes[0].get_ylim()[0]), 100)
    axes[1].set_ylabel("training cross-entropy")
    axes[1].set_yscale("log")
    axes[2].set_ylabel("learning rate (AdaLo: lr_t)")
    axes[2].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("epoch")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"digits MLP, mean over seeds {list(study.seeds)}")
    return save_figure(fig, out, "adalo_digits.png")
