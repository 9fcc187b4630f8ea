"""The report as text: the comparison table and the markdown report."""

from __future__ import annotations

import math

from pipeline.protocol import sentence
from pipeline.report.applied import Protocol
from pipeline.report.load import Arm
from pipeline.report.stats import MeanCI, PairedTest
from pipeline.statistics.seeds import nanobeir_means


def verdict_sentence(protocol: Protocol) -> str:
    """The report's first sentence: the verdict, with its CI; or why there is none."""
    if protocol.verdict is None:
        why = "; ".join(n for n in protocol.notes if n.startswith("no verdict")) or "no verdict"
        return f"**No verdict**: {why.removeprefix('no verdict: ')}."
    return sentence(protocol.verdict, protocol.adapter.name, f"the full fine-tune {protocol.full.name}")


def table_rows(rows: list[Arm], datasets: list[str], level: float) -> tuple[list[str], list[list[str]]]:
    percent = f"{level:.0%}"
    in_domain = any(arm.in_domain for arm in rows)  # the in-domain test set's column, where the runs have one
    header = ["run", "method", "r", "alpha", "lr", "seed", "trainable params", "weights MB", "dev NDCG@10"]
    header += ["in-domain test NDCG@10"] if in_domain else []
    header += [f"NDCG@10 [{percent} CI]", *datasets, f"Δ vs full run [{percent} CI]", "p (run vs run)", "status"]
    body = []
    for arm in rows:
        line = [
            arm.name,
            arm.method,
            _text(arm.r),
            _text(arm.alpha),
            f"{arm.lr:g}" if arm.lr is not None else "",
            _text(arm.seed),
            f"{arm.trainable_params:,}" if arm.trainable_params is not None else "",
            f"{arm.weights_mb:.1f}" if arm.weights_mb is not None else "",
            "" if math.isnan(arm.dev) else f"{arm.dev:.4f}",
            *([f"{nanobeir_means([arm.in_domain])[0]:.4f}" if arm.in_domain else ""] if in_domain else []),
            _estimate(arm.ndcg),
        ]
        line += [f"{arm.per_dataset[d]:.4f}" if d in arm.per_dataset else "" for d in datasets]
        line += [
            _delta(arm.delta),
            _p(arm.delta.p_value) if arm.delta else "",
        ]
        body.append([*line, arm.status])
    return header, body


def configuration_rows(
    protocol: Protocol, level: float, benchmark: str = "NanoBEIR"
) -> tuple[list[str], list[list[str]]]:
    header = ["configuration", "method", "selected", "seeds", "dev NDCG@10", f"{benchmark} mean ± sd over seeds"]
    header += [f"[{level:.0%} CI: seeds + queries]", "Δ vs full (configuration)", "p (seeds)", "p (Holm)"]
    header += ["trainable params"]
    body = []
    for c in sorted(protocol.configurations, key=lambda c: (c.method == "full", c.method, -_or(c.dev, -1))):
        e = c.estimate
        spread = "" if e is None else f"{e.mean:.4f}" + ("" if math.isnan(e.seed_sd) else f" ± {e.seed_sd:.4f}")
        body.append(
            [
                c.name,
                c.method,
                "**yes**" if c.selected else "",
                str(len(c.finished)),
                "" if math.isnan(c.dev) else f"{c.dev:.4f}",
                spread,
                "" if e is None else f"[{e.low:.4f}, {e.high:.4f}]" + (" queries only" if e.seeds == 1 else ""),
                "" if c.test is None else f"{c.test.delta:+.4f}" + (" (pooled seed sd)" if c.test.borrowed else ""),
                "" if c.test is None or math.isnan(c.test.p_value) else _p(c.test.p_value),
                "" if c.p_holm is None else _p(c.p_holm),
                "" if math.isinf(c.trainable_params) else f"{int(c.trainable_params):,}",
            ]
        )
    return header, body


def _or(value: float, default: float) -> float:
    return default if math.isnan(value) else value


def _table(header: list[str], body: list[list[str]], left: int = 2) -> list[str]:
    lines = ["| " + " | ".join(header) + " |"]
    lines.append(
        "|" + "|".join("---" if i < left or i == len(header) - 1 else "---:" for i in range(len(header))) + "|"
    )
    return lines + ["| " + " | ".join(_cell(c) for c in line) + " |" for line in body]


def render_markdown(
    result: dict, rows: list[Arm], protocol: Protocol, level: float, in_domain: Protocol | None = None
) -> str:
    """The report; `in_domain`: the protocol on the in-domain test set's scores (its verdict beside the general one)."""
    stats, bench = result["statistics"], result["benchmark"]
    lines = [f"# Sweep {result['sweep_id']}: adapter vs full fine-tune", ""]
    lines += (
        [verdict_sentence(protocol)]
        if in_domain is None
        else _two_verdicts(result["verdicts"], protocol, in_domain, bench)
    )
    lines += [""] + _answer(rows, protocol, bench)
    lines += ["", f"## Selected configurations (chosen on dev, reported on {bench})", ""]
    lines += _table(*configuration_rows(protocol, level, bench), left=3)
    lines += _verdict_detail(protocol, scored_on=bench) + _rank_section(protocol)
    if in_domain is not None:
        lines += _verdict_detail(in_domain, "in domain", "in-domain test") + _rank_section(in_domain, "in domain")
    lines += ["", "## Every run", ""] + _table(*table_rows(rows, result["datasets"], level))
    failed = [a for a in rows if a.status not in ("FINISHED", "")]
    if failed:
        lines += ["", "## Failed jobs", ""]
        lines += [f"- **{a.name}** ({a.run_id}): {a.status}: {_cell(a.error or 'no error recorded')}" for a in failed]
    if result["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in result["warnings"]]
    grid = f" (seeds {sorted(protocol.grid_seeds)})" if protocol.grid_seeds else ""
    lines += [
        "",
        "## How to read this",
        "",
        f"- Selection: {stats['selection']}. Test: {bench} (the unweighted mean over datasets of the per-dataset "
        "mean over queries).",
        f"- Verdict: {stats['verdict']}, margin ±{stats['margin']:g} NDCG@10 (`--margin`). Intervals of a "
        f"configuration: {stats['ci'].split('per configuration: ')[1]}.",
        f"- Every run: CI by {stats['ci'].split(';')[0].removeprefix('per run: ')} ({stats['resamples']:,} resamples, "
        f"seed {stats['seed']}); Δ vs full run and p (run vs run): against the selected full fine-tune's run at the "
        "same seed, queries the only randomness (these two runs differ, not necessarily the configurations).",
        f"- Configurations: p (seeds) is Welch's t over per-seed means against the selected full fine-tune (a one-seed "
        f"configuration borrows its method's pooled seed sd); p (Holm): adjusted over the grid's adapter "
        f"configurations{grid}.",
        _inputs_line(rows),
        "- Learn vs forget (`learn_vs_forget.png`): each configuration's change from the base model in domain (the "
        f"held-out test set; dev where the runs have none) against in general ({bench}), seeds as points.",
        f"- Parent run `{result['parent_run_id']}` in `{result['tracking_uri']}`.",
        "",
    ]
    return "\n".join(lines)


def _inputs_line(rows: list[Arm]) -> str:
    """Which prompts training and every evaluation used, and the dtype the weights trained in, over the runs."""
    prompts = sorted({"; ".join(f"{side} {text!r}" for side, text in a.prompts.items()) for a in rows if a.prompts})
    dtypes = sorted({a.trainable_dtype for a in rows if a.trainable_dtype})
    return (
        f"- Prompts, the same in training and every evaluation (`train.prompts`): {' | '.join(prompts) or 'not recorded'}"
        f". Trained parameters' dtype (`model.dtype`): {', '.join(dtypes) or 'not recorded'}."
    )


def _answer(rows: list[Arm], protocol: Protocol, benchmark: str) -> list[str]:
    lines = []
    for config, what in ((protocol.adapter, "Selected adapter"), (protocol.full, "Selected full fine-tune")):
        if config is None:
            lines.append(f"- {what}: none finished.")
            continue
        e = config.estimate
        est = "" if e is None else f", {benchmark} {e.mean:.4f} [{e.low:.4f}, {e.high:.4f}] over {e.seeds} seed(s)"
        lines.append(f"- {what}: **{config.name}** (dev NDCG@10 {config.dev:.4f}{est}).")
    adapter, full = protocol.adapter, protocol.full
    if adapter is not None and full is not None and not math.isinf(adapter.trainable_params * full.trainable_params):
        lines.append(
            f"- The adapter trains {adapter.trainable_params / full.trainable_params:.2%} of full's parameters."
        )
    base = rows[0] if rows and rows[0].name == "baseline" else None
    if base is not None and base.ndcg is not None:
        dev = "" if math.isnan(base.dev) else f", dev NDCG@10 {base.dev:.4f}"
        lines.append(f"- Base model: {benchmark} {_estimate(base.ndcg)}{dev}.")
    failed = sum(a.status not in ("FINISHED", "") for a in rows)
    if failed:
        lines.append(f"- {failed} job(s) did not finish; see Failed jobs.")
    return lines


def _text(value) -> str:
    return "" if value is None else str(value)


def _estimate(e: MeanCI | None) -> str:
    if e is None:
        return ""
    if math.isnan(e.low):
        return f"{e.mean:.4f}"
    return f"{e.mean:.4f} [{e.low:.4f}, {e.high:.4f}]"


def _delta(t: PairedTest | None) -> str:
    return "" if t is None else f"{t.delta:+.4f} [{t.low:+.4f}, {t.high:+.4f}]"


def _p(p: float) -> str:
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def _cell(text: str) -> str:
    text = " ".join(str(text).split())
    return (text[:300] + "…" if len(text) > 300 else text).replace("|", "\\|")


def _two_verdicts(halves: dict[str, str], general: Protocol, in_domain: Protocol, benchmark: str) -> list[str]:
    """The first lines: the answer for both halves, then each half's verdict."""
    both = {
        "equivalent": "the adapter is as good as the full fine-tune on both halves (equivalent on each)",
        "superior": "the adapter is better than the full fine-tune on both halves",
        "non-inferior": "the adapter is not worse than the full fine-tune on either half (non-inferior on both)",
        "inferior": "the adapter is worse than the full fine-tune on at least one half",
        "inconclusive": "the adapter is not shown as good as the full fine-tune on both halves (see each)",
        "no verdict": "no answer for both halves yet (see each)",
    }[halves["combined"]]
    return [
        f"**Both halves: {halves['combined']}**: {both}.",
        "",
        f"- **In domain** (the held-out test set of your pairs, never selected on): {verdict_sentence(in_domain)}",
        f"- **General** ({benchmark}): {verdict_sentence(general)}",
    ]


def _verdict_detail(protocol: Protocol, half: str = "", scored_on: str = "NanoBEIR") -> list[str]:
    """What the verdict rests on: fresh seeds, the selection runs beside, looks, worst seeds, per-dataset Δ."""
    if protocol.verdict is None:
        return []
    lines = ["", f"## The verdict's evidence{f' ({half})' if half else ''}", ""]
    for arm, config in (("adapter", protocol.adapter), ("full", protocol.full)):
        seeds = ", ".join(str(a.seed) for a in protocol.in_delta[arm])
        lines.append(f"- {config.name}: Δ from fresh seeds {seeds}.")
        for run in config.selection_runs(protocol.grid_seeds):
            lines.append(f"  - selection run (won on dev, not in Δ): {run.name}, {scored_on} {_mean(run)}")
        if arm in protocol.worst:
            name, value = protocol.worst[arm]
            lines.append(f"  - worst fresh seed: {name}, {scored_on} {value:.4f}")
    for x in protocol.looks if len(protocol.looks) > 1 else []:
        lines.append(
            f"- look {x.index}: {x.seeds_adapter} + {x.seeds_full} seeds, Δ {x.delta:+.4f}, repeated CI "
            f"[{x.low:+.4f}, {x.high:+.4f}]: {x.label}; {x.reason}"
        )
    h = protocol.heterogeneity
    if h is not None:
        lines += [
            "",
            "| dataset | Δ (fresh seeds) | se | share of Δ | verdict without it |",
            "|---|---:|---:|---:|---|",
        ]
        lines += [f"| {d.name} | {d.delta:+.4f} | {d.se:.4f} | {d.share:.0%} | {d.label_without} |" for d in h.datasets]
        lines += ["", f"Heterogeneity across datasets: Cochran's Q {h.q:.2f}, I² {h.i2:.0%}, tau² {h.tau2:.2g}."]
        lines += [f"- **One dataset drives the result**: {d}." for d in h.drivers]
    return lines


def _rank_section(protocol: Protocol, half: str = "") -> list[str]:
    if not protocol.ranks:
        return []
    answer = "none" if protocol.rank is None else str(protocol.rank)
    lines = ["", f"## The rank that suffices{f' ({half})' if half else ''}", ""]
    lines.append(
        f"Smallest rank not worse than the full fine-tune by more than the margin (non-inferior, equivalent or "
        f"superior; fixed-sequence testing from the selected rank down): **{answer}**."
    )
    lines += [
        "",
        "| rank | configuration (best dev) | Δ vs full | CI | verdict | seeds |",
        "|---:|---|---:|---|---|---:|",
    ]
    for row in protocol.ranks:
        label = row.note or row.label
        lines.append(
            f"| {row.rank} | {row.configuration} | {row.delta:+.4f} | [{row.low:+.4f}, {row.high:+.4f}] | {label} "
            f"| {row.seeds} |"
        )
    return lines


def _mean(run: Arm) -> str:
    """A run's mean over its sets' means (NanoBEIR's, or the in-domain test set's), from its per-query scores."""
    return "" if run.per_query is None else f"{nanobeir_means([run.per_query])[0]:.4f}"
