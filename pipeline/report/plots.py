"""The report's plots, one point per configuration (its NanoBEIR mean over seeds, seed + query CI): NDCG@10 against
LoRA rank, against a cost (trainable parameters, training time, memory) with the frontier, per dataset, and what each
run learned in domain (dev) against what it forgot out of domain (NanoBEIR)."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

from pipeline.report.load import Arm
from pipeline.report.protocol import Configuration, Protocol
from pipeline.report.stats import Estimate, bootstrap_ci

COST_LABELS = {
    "trainable_params": "trainable parameters",
    "train_seconds": "training time (s)",
    "train_samples_per_second": "training samples / s",
    "peak_memory_mb": "peak memory (MB)",
    "weights_mb": "saved weights (MB)",
}


def _estimated(protocol: Protocol) -> list[Configuration]:
    return [c for c in protocol.configurations if c.estimate is not None]


def _base(baseline: Arm | None):
    return baseline.ndcg if baseline is not None else None


def plot_ndcg_vs_r(path: Path, protocol: Protocol, baseline: Arm | None, level: float) -> None:
    """Δ vs the selected full fine-tune per rank (each rank at its best learning rate on dev), with the verdict's
    interval and the ±margin band: what the rank verdicts decided. Hollow: the grid run alone (queries only)."""
    fig, ax = _figure()
    rows = sorted(protocol.ranks, key=lambda row: row.rank)
    margin = protocol.verdict.margin if protocol.verdict is not None else None
    if margin is not None:
        ax.axhspan(-margin, margin, color="tab:green", alpha=0.12, linewidth=0, label=f"±{margin:g} margin")
    ax.axhline(0, color="tab:red", linewidth=1, label="full fine-tune (selected)")
    for seeds_known in (True, False):
        group = [row for row in rows if (not row.note) == seeds_known]
        if not group:
            continue
        ax.errorbar(
            [row.rank for row in group],
            [row.delta for row in group],
            yerr=[[max(0.0, row.delta - row.low) for row in group], [max(0.0, row.high - row.delta) for row in group]],
            fmt="o",
            markerfacecolor=None if seeds_known else "none",
            color="tab:blue",
            capsize=3,
            label="fresh seeds" if seeds_known else "grid run only (queries only)",
        )
    for row in rows:
        ax.annotate(row.label if not row.note else "", (row.rank, row.high), textcoords="offset points",
                    xytext=(0, 4), ha="center", fontsize=7)  # fmt: skip
        if row.rank == protocol.rank:
            ax.plot(row.rank, row.delta, marker="*", markersize=14, color="black", zorder=5)
    if rows:
        ranks = [row.rank for row in rows]
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(ranks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(r) for r in ranks])
        ax.set_xlim(min(ranks) / 1.4, max(ranks) * 1.4)
    else:
        ax.text(0.5, 0.5, "no finished adapter ranks to compare", transform=ax.transAxes, ha="center")
    alpha = protocol.verdict.alpha if protocol.verdict is not None else (1 - level) / 2
    ax.set_xlabel("adapter rank r, at its best learning rate on dev (★: smallest rank that suffices)")
    ax.set_ylabel("Δ NanoBEIR mean NDCG@10 vs full")
    ax.set_title(f"Δ vs full fine-tune by rank ({1 - 2 * alpha:.0%} CI, as the verdict reads it)")
    _finish(fig, ax, path)


def plot_ndcg_vs_cost(path: Path, protocol: Protocol, baseline: Arm | None, cost: str, level: float) -> None:
    fig, ax = _figure()
    points = [(c, _cost(c, cost)) for c in _estimated(protocol)]
    points = [(c, x) for c, x in points if x is not None and x > 0]
    colors = iter(["tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive"])
    for method in sorted({c.method for c, _ in points}, key=lambda m: (m == "full", m != "lora", m)):
        group = [(c, x) for c, x in points if c.method == method]
        ax.errorbar(
            [x for _, x in group],
            [c.estimate.mean for c, _ in group],
            yerr=_yerr([c.estimate for c, _ in group]),
            fmt="o",
            color="tab:red" if method == "full" else next(colors, "tab:cyan"),
            capsize=3,
            label="full fine-tune" if method == "full" else method,
        )
    frontier = efficiency_frontier(points)
    for c, x in points:  # only the frontier and the selected ones are named: the rest would overlap
        if c in [f for f, _ in frontier] or c.selected:
            ax.annotate(c.name, (x, c.estimate.mean), textcoords="offset points", xytext=(5, 5), fontsize=7)
    if frontier:
        ax.plot(
            [x for _, x in frontier],
            [c.estimate.mean for c, _ in frontier],
            drawstyle="steps-post",
            color="black",
            linewidth=1,
            marker="o",
            markerfacecolor="none",
            markersize=11,
            label="efficiency frontier",
        )
    _reference(ax, _base(baseline), "base model", "gray", "--")
    if points:
        ax.set_xscale("log")
    else:
        ax.text(0.5, 0.5, f"no finished runs with {cost}", transform=ax.transAxes, ha="center")
    ax.set_xlabel(f"{COST_LABELS[cost]} (log scale)")
    ax.set_ylabel("NanoBEIR mean NDCG@10")
    ax.set_title(f"NDCG@10 vs {COST_LABELS[cost]} ({level:.0%} CI over seeds and queries)")
    _finish(fig, ax, path)


def _cost(config: Configuration, cost: str) -> float | None:
    if cost == "trainable_params":
        return None if math.isinf(config.trainable_params) else config.trainable_params
    values = [a.cost[cost] for a in config.finished if cost in a.cost]
    return sum(values) / len(values) if values else None


def efficiency_frontier(points: list[tuple]) -> list[tuple]:
    """The (configuration, cost) points no other point beats at an equal or lower cost, by cost ascending."""
    frontier, best = [], -math.inf
    for c, x in sorted(points, key=lambda p: (p[1], -p[0].estimate.mean)):
        if c.estimate.mean > best:
            frontier.append((c, x))
            best = c.estimate.mean
    return frontier


def plot_per_dataset(
    path: Path,
    baseline: Arm | None,
    protocol: Protocol,
    datasets: list[str],
    n_resamples: int,
    seed: int,
    level: float,
) -> None:
    """Base model, selected adapter and selected full fine-tune per dataset (their first seed's run: the seed the
    grid shares), with stratified bootstrap CIs over queries."""
    groups = [*datasets, "NanoBEIR mean"]
    series = [(baseline, "base model")] if baseline is not None else []
    for config, label in ((protocol.adapter, "selected adapter"), (protocol.full, "selected full fine-tune")):
        if config is not None and config.finished:
            series.append((config.finished[0], f"{label} ({config.finished[0].name})"))
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
        x = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(x, values, width, yerr=errors, capsize=2, label=label)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=30, ha="right")
    ax.set_ylabel("NDCG@10")
    ax.set_title(f"NDCG@10 per dataset ({level:.0%} bootstrap CI over queries)")
    if not series:
        ax.text(0.5, 0.5, "no finished runs", transform=ax.transAxes, ha="center")
    _finish(fig, ax, path)


def plot_learn_forget(path: Path, arms: list[Arm], datasets: list[str]) -> None:
    """Δ dev (learned in domain) against Δ NanoBEIR (kept out of domain) per run, and per NanoBEIR dataset."""
    panels = ["NanoBEIR mean", *datasets]
    fig = Figure(figsize=(4.2 * len(panels) + 2, 4.2))
    FigureCanvasAgg(fig)
    done = [a for a in arms if a.status == "FINISHED" and not math.isnan(a.dev_delta)]
    methods = sorted({a.method for a in done}, key=lambda m: (m == "full", m))
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for method in methods:
            group = [a for a in done if a.method == method]
            y = [a.nanobeir_delta if panel == "NanoBEIR mean" else a.dataset_deltas.get(panel, math.nan) for a in group]
            ax.scatter([a.dev_delta for a in group], y, label=method, color="tab:red" if method == "full" else None)
        ax.axhline(0, color="gray", linewidth=0.8)
        ax.axvline(0, color="gray", linewidth=0.8)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("Δ dev NDCG@10 vs base (learned)")
        if i == 0:
            ax.set_ylabel("Δ NDCG@10 vs base (out of domain)")
        ax.grid(True, alpha=0.3)
    if not done:
        fig.text(0.5, 0.5, "no finished runs with dev scores", ha="center")
    elif methods:
        fig.axes[-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.suptitle("Learn vs forget: each run's change from the base model", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _yerr(estimates: list) -> list[list[float]]:
    return [[_half(e, low=True) for e in estimates], [_half(e, low=False) for e in estimates]]


def _half(e, low: bool) -> float:
    if e is None or math.isnan(e.low):
        return 0.0
    return max(0.0, e.mean - e.low) if low else max(0.0, e.high - e.mean)


def _reference(ax, estimate, label: str, color: str, style: str) -> None:
    """A horizontal line at a NanoBEIR mean, with its CI as a band."""
    if estimate is None:
        return
    ax.axhline(estimate.mean, color=color, linestyle=style, label=f"{label} {estimate.mean:.4f}")
    if not math.isnan(estimate.low):
        ax.axhspan(estimate.low, estimate.high, color=color, alpha=0.12, linewidth=0)


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
