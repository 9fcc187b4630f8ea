"""The report as text: the comparison table and the markdown report."""

from __future__ import annotations

import math

from pipeline.report.load import Arm
from pipeline.report.stats import Estimate, PairedTest


def table_rows(rows: list[Arm], datasets: list[str], level: float) -> tuple[list[str], list[list[str]]]:
    percent = f"{level:.0%}"
    header = ["run", "method", "r", "alpha", "trainable params", "weights MB", f"NDCG@10 [{percent} CI]"]
    header += datasets + [f"Δ vs full [{percent} CI]", "p", "status"]
    body = []
    for arm in rows:
        line = [
            arm.name,
            arm.method,
            _text(arm.r),
            _text(arm.alpha),
            f"{arm.trainable_params:,}" if arm.trainable_params is not None else "",
            f"{arm.weights_mb:.1f}" if arm.weights_mb is not None else "",
            _estimate(arm.ndcg),
        ]
        line += [f"{arm.per_dataset[d]:.4f}" if d in arm.per_dataset else "" for d in datasets]
        line += [_delta(arm.delta), _p(arm.delta.p_value) if arm.delta else "", arm.status]
        body.append(line)
    return header, body


def render_markdown(
    result: dict, rows: list[Arm], baseline: Arm | None, best: Arm | None, full: Arm | None, level: float
) -> str:
    header, body = table_rows(rows, result["datasets"], level)
    stats = result["statistics"]
    lines = [f"# Sweep {result['sweep_id']}: LoRA vs full fine-tune on NanoBEIR", ""]
    lines += _answer(rows, baseline, best, full) + [""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" if i < 2 or i == len(header) - 1 else "---:" for i in range(len(header))) + "|")
    lines += ["| " + " | ".join(_cell(c) for c in line) + " |" for line in body]
    failed = [a for a in rows if a.status not in ("FINISHED", "")]
    if failed:
        lines += ["", "## Failed jobs", ""]
        lines += [f"- **{a.name}** ({a.run_id}): {a.status}: {_cell(a.error or 'no error recorded')}" for a in failed]
    if result["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in result["warnings"]]
    lines += [
        "",
        "## How to read this",
        "",
        "- NDCG@10 is the NanoBEIR mean: the unweighted mean over datasets of the per-dataset mean over queries.",
        f"- CIs: {stats['ci']} ({stats['resamples']:,} resamples, seed {stats['seed']}).",
        f"- Δ vs full: mean(run) − mean(full) on the same queries, paired bootstrap CI; p: {stats['p_value']}. "
        "p-values are per comparison, not adjusted for the number of runs compared.",
        f"- Parent run `{result['parent_run_id']}` in `{result['tracking_uri']}`.",
        "",
    ]
    return "\n".join(lines)


def _answer(rows: list[Arm], baseline: Arm | None, best: Arm | None, full: Arm | None) -> list[str]:
    lines = []
    if best is None:
        lines.append("- No LoRA run finished.")
    else:
        line = f"- Best LoRA: **{best.name}** (r={best.r}, alpha={best.alpha}), NDCG@10 {_estimate(best.ndcg)}"
        if best.delta is not None:
            line += f"; Δ vs full {_delta(best.delta)}, p = {_p(best.delta.p_value)}"
        if full is not None and best.trainable_params and full.trainable_params:
            line += f"; {best.trainable_params / full.trainable_params:.2%} of full's trainable parameters"
        if full is not None and best.weights_mb is not None and full.weights_mb is not None:
            line += f", {best.weights_mb:.1f} MB of weights vs {full.weights_mb:.1f} MB"
        lines.append(line + ".")
    lines.append(f"- Full fine-tune: **{full.name}**, NDCG@10 {_estimate(full.ndcg)}." if full else "- No full arm.")
    if baseline is not None and baseline.ndcg is not None:
        lines.append(f"- Base model: NDCG@10 {_estimate(baseline.ndcg)}.")
    failed = sum(a.status not in ("FINISHED", "") for a in rows)
    if failed:
        lines.append(f"- {failed} job(s) did not finish; see Failed jobs.")
    return lines


def _text(value) -> str:
    return "" if value is None else str(value)


def _estimate(e: Estimate | None) -> str:
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
