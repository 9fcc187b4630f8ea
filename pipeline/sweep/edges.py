"""Grid edges (`make decide`): a selected learning rate (or rank) at the edge of what its method's grid tried may be
under-tuned, so the axis is extended one geometric step past that edge (the ratio of the two outermost values; x2 and
x0.5 for a single learning rate), the selected configuration run there at the grid seed, and selection repeated, while
the edge keeps winning, at most a limit of times per axis and side (`pipeline.sweep.decide` runs the loop).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from pipeline.sweep.grid import configuration, job_values

Job = list[str]
AXES = ("train.lr", "finetune.r")


def axis_values(jobs: Iterable[Job], method_jobs: Callable[[Job], bool], key: str) -> list[float]:
    """The values of `key` among the jobs that `method_jobs` picks, sorted."""
    return sorted({float(job_values(job)[key]) for job in jobs if method_jobs(job) and key in job_values(job)})


def beyond_edge(values: Sequence[float], chosen: float, key: str, full_rank: int | None = None) -> list[float]:
    """The next value(s) past the edge of `values` that `chosen` sits on: one geometric step (the ratio of the two
    outermost values on that side); a single learning rate is at both edges (x2 and x0.5); a single rank is the user's
    choice, not a grid axis, and a rank step stops at `full_rank` (the model's hidden size: a LoRA update of a
    hidden x hidden matrix has no more than that rank). [] when `chosen` is inside the grid."""
    if len(values) == 1:
        return [chosen * 2, chosen / 2] if key == "train.lr" else []
    steps = []
    if chosen == values[-1]:
        steps.append(values[-1] * values[-1] / values[-2])
    if chosen == values[0]:
        steps.append(values[0] * values[0] / values[1])
    if key == "finetune.r":
        steps = [min(round(s), full_rank or round(s)) for s in steps if round(s) >= 1]
        steps = [s for s in steps if s != chosen]  # already at the full rank: nothing past it
    return steps


def with_value(job: Job, key: str, value: float) -> Job:
    """The job with `key` set to `value`; a new rank keeps alpha's ratio to r."""
    values = job_values(configuration(job))
    text = f"{int(value)}" if key == "finetune.r" else f"{value:g}"
    new = {**values, key: text}
    if key == "finetune.r" and "finetune.alpha" in values and "finetune.r" in values:
        new["finetune.alpha"] = f"{round(float(values['finetune.alpha']) * value / float(values['finetune.r']))}"
    return [f"{k}={v}" for k, v in new.items()]


def edge_jobs(
    grid: list[Job],
    chosen: dict[str, tuple[str, ...]],
    method_of: Callable[[Job], str],
    extended: dict,
    limit: int,
    full_rank: int | None = None,
) -> list[Job]:
    """The configurations one step past each grid edge that a selected configuration sits on, for the axes not yet
    extended `limit` times on that side (`extended`: {(method, key, side): times}, updated here); ranks up to
    `full_rank`."""
    jobs = []
    for method, config in chosen.items():
        values = job_values(list(config))
        for key in AXES:
            if key not in values:
                continue
            axis = axis_values(grid, lambda job, m=method: method_of(job) == m, key)
            for value in beyond_edge(axis, float(values[key]), key, full_rank):
                side = (method, key, "up" if value > float(values[key]) else "down")
                if extended.get(side, 0) < limit:
                    extended[side] = extended.get(side, 0) + 1
                    jobs.append(with_value(list(config), key, value))
    return jobs


def extended_axes(extended: dict) -> str:
    """The `sweep.extended` tag: e.g. `lora train.lr up x2, full train.lr down x1`, or `none`."""
    return ", ".join(f"{m} {k} {side} x{n}" for (m, k, side), n in sorted(extended.items())) or "none"


def full_rank(model_name: str) -> int | None:
    """The largest rank a LoRA update of the model's attention matrices (hidden x hidden) can have: its hidden size,
    from its config (the grid's jobs loaded the model, so it is local or in the Hub cache); None when unknown."""
    from transformers import AutoConfig

    from pipeline.models import model_source

    try:
        return int(AutoConfig.from_pretrained(model_source(model_name)).hidden_size)
    except (OSError, ValueError, AttributeError, TypeError):
        return None
