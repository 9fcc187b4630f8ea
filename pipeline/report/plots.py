"""The report's plots, one point per configuration (its NanoBEIR mean over seeds, seed + query CI): NDCG@10 against
LoRA rank, against a cost (trainable parameters, training time, memory) with the frontier, per dataset, and what each
configuration learned in domain (the held-out test set) against what it kept in general (NanoBEIR)."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

from pipeline.report.applied import Configuration, Protocol
from pipeline.report.load import Arm
from pipeline.report.stats import MeanCI, bootstrap_ci

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


def plot_ndcg_vs_r(
    path: Path, protocol: Protocol, baseline: Arm | None, level: float, benchmark: str = "NanoBEIR"
) -> None:
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
    ax.set_ylabel(f"Δ {benchmark} mean NDCG@10 vs full")
    ax.set_title(f"Δ vs full fine-tune by rank ({1 - 2 * alpha:.0%} CI, as the verdict reads it)")
    _finish(fig, ax, path)


def plot_ndcg_vs_cost(
    path: Path, protocol: Protocol, baseline: Arm | None, cost: str, level: float, benchmark: str = "NanoBEIR"
) -> None:
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
    ax.set_ylabel(f"{benchmark} mean NDCG@10")
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
    benchmark: str = "NanoBEIR",
) -> None:
    """Base model, selected adapter and selected full fine-tune per dataset (their first seed's run: the seed the
    grid shares), with stratified bootstrap CIs over queries."""
    mean = f"{benchmark} mean"
    groups = [*datasets, mean]
    series = [(baseline, "base model")] if baseline is not None else []
    for config, label in ((protocol.adapter, "selected adapter"), (protocol.full, "selected full fine-tune")):
        if config is not None and config.finished:
            series.append((config.finished[0], f"{label} ({config.finished[0].name})"))
    fig, ax = _figure(max(9, 0.7 * len(groups) + 4))
    width = 0.8 / max(1, len(series))
    for i, (arm, label) in enumerate(series):
        values, errors = [], [[], []]
        for group in groups:
            if group == mean:
                estimate = arm.ndcg
            elif arm.per_query is not None and group in arm.per_query:
                estimate = bootstrap_ci({group: arm.per_query[group]}, n=n_resamples, seed=seed, level=level)
            else:
                estimate = MeanCI(arm.per_dataset[group], math.nan, math.nan) if group in arm.per_dataset else None
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


def plot_learn_forget(
    path: Path, protocol: Protocol, datasets: list[str], level: float = 0.95, benchmark: str = "NanoBEIR"
) -> None:
    """The trade-off (Biderman et al. 2024, "LoRA Learns Less and Forgets Less"): what each configuration learned in
    domain (Δ on the held-out test set vs the base model; dev where the runs have no test set, which selection read)
    against what it kept in general (Δ NanoBEIR vs the base model, and per dataset). Each seed a point, each
    configuration its mean over seeds with a t interval on both axes (`level`), the selected ones ringed in black."""
    panels = [f"{benchmark} mean", *datasets]
    fig = Figure(figsize=(4.2 * len(panels) + 3.5, 4.4))
    FigureCanvasAgg(fig)
    configs = [c for c in protocol.configurations if c.finished]
    test_set = any(math.isfinite(a.test_delta) for c in configs for a in c.finished)
    learned = (lambda a: a.test_delta) if test_set else (lambda a: a.dev_delta)
    configs.sort(key=lambda c: (c.method == "full", c.method, c.name))
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for n, config in enumerate(configs):
            kept = [a.nanobeir_delta if i == 0 else a.dataset_deltas.get(panel, math.nan) for a in config.finished]
            points = [(x, y) for x, y in zip(map(learned, config.finished), kept, strict=True) if
                      math.isfinite(x) and math.isfinite(y)]  # fmt: skip
            if not points:
                continue
            color = "tab:red" if config.method == "full" else f"C{n % 10}" if n % 10 != 3 else "C9"
            xs, ys = zip(*points, strict=True)
            ax.scatter(xs, ys, color=color, alpha=0.35, s=12, linewidths=0)
            shown = config.selected or len(configs) <= 12  # a large grid: only the selected ones named
            ax.errorbar(
                sum(xs) / len(xs), sum(ys) / len(ys), xerr=_t_half(xs, level), yerr=_t_half(ys, level), fmt="o",
                color=color, markersize=7 if config.selected else 4, capsize=2,
                markeredgecolor="black" if config.selected else color, markeredgewidth=1.5 if config.selected else 1,
                label=f"{config.name}{' (selected)' if config.selected else ''}" if shown and i == 0 else None,
            )  # fmt: skip
        ax.axhline(0, color="gray", linewidth=0.8)
        ax.axvline(0, color="gray", linewidth=0.8)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel(f"Δ {'in-domain test' if test_set else 'dev (selected on)'} NDCG@10 vs base (learned)")
        if i == 0:
            ax.set_ylabel("Δ NDCG@10 vs base (kept in general)")
        ax.grid(True, alpha=0.3)
    if not configs:
        fig.text(0.5, 0.5, "no finished runs", ha="center")
    else:
        fig.axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.18), ncols=2, borderaxespad=0)
    fig.suptitle(
        f"Learn vs forget: seeds (points), configurations (mean, {level:.0%} t interval over seeds), selected ringed",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")


def _t_half(values, level: float) -> float:
    """Half the width of the t interval of the mean of `values` over seeds (0 for one seed: no spread to show)."""
    from scipy import stats

    n = len(values)
    return float(stats.t.ppf(0.5 + level / 2, n - 1) * stats.sem(values)) if n > 1 else 0.0


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
