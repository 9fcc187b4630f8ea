"""The report's plots: NDCG@10 against LoRA rank, against trainable parameters (with the frontier), per dataset."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

from pipeline.report.load import Arm
from pipeline.report.stats import Estimate, bootstrap_ci


def plot_ndcg_vs_r(path: Path, arms: list[Arm], baseline: Arm | None, full: Arm | None, level: float) -> None:
    fig, ax = _figure()
    lora = [a for a in arms if a.method == "lora" and a.ndcg is not None and a.r is not None]
    alphas = sorted({a.alpha for a in lora}, key=lambda x: (x is None, x))
    for i, alpha in enumerate(alphas):
        points = sorted((a for a in lora if a.alpha == alpha), key=lambda a: a.r)
        shift = 2 ** (0.04 * (i - (len(alphas) - 1) / 2))  # side by side, so error bars do not overlap
        ax.errorbar(
            [a.r * shift for a in points],
            [a.ndcg.mean for a in points],
            yerr=_yerr(points),
            marker="o",
            capsize=3,
            label=f"LoRA alpha={alpha}",
        )
    _reference(ax, full, "full fine-tune", "tab:red", "-")
    _reference(ax, baseline, "base model", "gray", "--")
    if lora:
        ax.set_xscale("log", base=2)
        ranks = sorted({a.r for a in lora})
        ax.xaxis.set_major_locator(FixedLocator(ranks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(r) for r in ranks])
        ax.set_xlim(min(ranks) / 1.4, max(ranks) * 1.4)
    else:
        ax.text(0.5, 0.5, "no finished LoRA runs", transform=ax.transAxes, ha="center")
    ax.set_xlabel("LoRA rank r")
    ax.set_ylabel("NanoBEIR mean NDCG@10")
    ax.set_title(f"NDCG@10 vs LoRA rank ({level:.0%} bootstrap CI)")
    _finish(fig, ax, path)


def plot_ndcg_vs_params(path: Path, arms: list[Arm], baseline: Arm | None, level: float) -> None:
    fig, ax = _figure()
    points = [a for a in arms if a.ndcg is not None and a.trainable_params]
    methods = sorted({a.method for a in points}, key=lambda m: (m == "full", m != "lora", m))  # every adapter alike
    colors = iter(["tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive"])
    for method in methods:
        group = [a for a in points if a.method == method]
        ax.errorbar(
            [a.trainable_params for a in group],
            [a.ndcg.mean for a in group],
            yerr=_yerr(group),
            fmt="o",
            color="tab:red" if method == "full" else next(colors, "tab:cyan"),
            capsize=3,
            label="full fine-tune" if method == "full" else method,
        )
    frontier = efficiency_frontier(points)
    for a in points:  # only the frontier and the full fine-tune are named: the rest would overlap, the table has them
        if a in frontier or a.method == "full":
            ax.annotate(
                a.name, (a.trainable_params, a.ndcg.mean), textcoords="offset points", xytext=(5, 5), fontsize=7
            )
    if frontier:
        ax.plot(
            [a.trainable_params for a in frontier],
            [a.ndcg.mean for a in frontier],
            drawstyle="steps-post",
            color="black",
            linewidth=1,
            marker="o",
            markerfacecolor="none",
            markersize=11,
            label="efficiency frontier",
        )
    _reference(ax, baseline, "base model", "gray", "--")
    if points:
        ax.set_xscale("log")
    else:
        ax.text(0.5, 0.5, "no finished runs with trainable_params", transform=ax.transAxes, ha="center")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("NanoBEIR mean NDCG@10")
    ax.set_title(f"NDCG@10 vs trainable parameters ({level:.0%} bootstrap CI)")
    _finish(fig, ax, path)


def efficiency_frontier(arms: list[Arm]) -> list[Arm]:
    """The runs that no other run beats with as many or fewer trainable parameters, by parameters ascending."""
    frontier, best = [], -math.inf
    for arm in sorted(arms, key=lambda a: (a.trainable_params, -a.ndcg.mean)):
        if arm.ndcg.mean > best:
            frontier.append(arm)
            best = arm.ndcg.mean
    return frontier


def plot_per_dataset(
    path: Path,
    baseline: Arm | None,
    best: Arm | None,
    full: Arm | None,
    datasets: list[str],
    n_resamples: int,
    seed: int,
    level: float,
) -> None:
    groups = [*datasets, "NanoBEIR mean"]
    series = [(a, label) for a, label in ((baseline, "base model"), (best, "best LoRA"), (full, "full fine-tune")) if a]
    fig, ax = _figure(max(9, 0.7 * len(groups) + 4))
    width = 0.8 / max(1, len(series))
    for i, (arm, label) in enumerate(series):
        values, errors = [], [[], []]
        for group in groups:
            if group == "NanoBEIR mean":
                estimate = arm.ndcg
            elif arm.per_query is not None and group in arm.per_query:
                estimate = bootstrap_ci({group: arm.per_query[group]}, n=n_resamples, seed=seed, level=level)
            else:
                estimate = Estimate(arm.per_dataset[group], math.nan, math.nan) if group in arm.per_dataset else None
            values.append(estimate.mean if estimate else math.nan)
            errors[0].append(_half(estimate, low=True))
            errors[1].append(_half(estimate, low=False))
        name = label if arm is baseline or arm.name == "full" else f"{label} ({arm.name})"
        x = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(x, values, width, yerr=errors, capsize=2, label=name)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=30, ha="right")
    ax.set_ylabel("NDCG@10")
    ax.set_title(f"NDCG@10 per dataset ({level:.0%} bootstrap CI)")
    if not series:
        ax.text(0.5, 0.5, "no finished runs", transform=ax.transAxes, ha="center")
    _finish(fig, ax, path)


def _yerr(arms: list[Arm]) -> list[list[float]]:
    return [[_half(a.ndcg, low=True) for a in arms], [_half(a.ndcg, low=False) for a in arms]]


def _half(e: Estimate | None, low: bool) -> float:
    if e is None or math.isnan(e.low):
        return 0.0
    return max(0.0, e.mean - e.low) if low else max(0.0, e.high - e.mean)


def _reference(ax, arm: Arm | None, label: str, color: str, style: str) -> None:
    """A horizontal line at the arm's NanoBEIR mean, with its CI as a band."""
    if arm is None or arm.ndcg is None:
        return
    ax.axhline(arm.ndcg.mean, color=color, linestyle=style, label=f"{label} {arm.ndcg.mean:.4f}")
    if not math.isnan(arm.ndcg.low):
        ax.axhspan(arm.ndcg.low, arm.ndcg.high, color=color, alpha=0.12, linewidth=0)


def _figure(width: float = 9, height: float = 4.5):
    """A figure on its own Agg canvas: no pyplot, no global backend state."""
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _finish(fig, ax, path: Path) -> None:
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # outside the axes, so it never hides a point or a band
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
