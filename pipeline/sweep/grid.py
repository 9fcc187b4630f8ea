"""A sweep's jobs: Hydra's cartesian product turned into the jobs a comparison needs.

A job per adapter configuration and ONE full fine-tune job (r / alpha mean nothing to it), with alpha given
absolutely (`32`) or relative to r (`r`, `2r`). Methods mix (`finetune=lora,ia3,full finetune.r=8,16`): each job
keeps the `finetune.*` keys its method has (ia3 has no r), so the grid is method-specific. Light on purpose: config
validation imports it.
"""

from __future__ import annotations

import re

from pipeline.adapter_configs import Method, keys_of

RELATIVE_ALPHA = re.compile(r"^(\d*\.?\d*)r$")  # "r", "2r", "0.5r"


def lora_vs_full_jobs(jobs: list[list[str]]) -> list[list[str]]:
    """Resolve relative alphas and collapse the jobs that differ only in keys their method lacks into one."""
    result, seen = [], set()
    for job in jobs:
        job = for_method(job)
        values = dict(override.split("=", 1) for override in job)
        if (match := RELATIVE_ALPHA.match(values.get("finetune.alpha", ""))) is not None:
            if "finetune.r" not in values:
                raise ValueError(f"finetune.alpha={values['finetune.alpha']} is relative to r: give finetune.r too")
            alpha = float(match.group(1) or 1) * int(values["finetune.r"])
            job = [f"finetune.alpha={int(alpha)}" if o.startswith("finetune.alpha=") else o for o in job]
        if tuple(job) not in seen:
            seen.add(tuple(job))
            result.append(job)
    return result


def for_method(job: list[str]) -> list[str]:
    """The job without the `finetune.<key>` overrides that its method (`finetune=<method>`) has no key for."""
    method = dict(override.split("=", 1) for override in job).get("finetune")
    if method not in {m.value for m in Method}:
        return job  # the default method, or an unknown one that validation reports
    keys = keys_of(method)
    return [
        o for o in job if not (o.startswith("finetune.") and o.split("=", 1)[0].removeprefix("finetune.") not in keys)
    ]


def is_relative_alpha(override: str) -> bool:
    key, _, value = override.partition("=")
    return key == "finetune.alpha" and any(RELATIVE_ALPHA.match(v) for v in value.split(","))


def job_values(job: list[str]) -> dict[str, str]:
    return dict(override.split("=", 1) for override in job)


def method_of(job: list[str], default: str) -> str:
    """The job's `finetune=<method>` override, or the config's default method."""
    return job_values(job).get("finetune", default)


def configuration(job: list[str]) -> tuple[str, ...]:
    """What identifies a job's configuration across seeds: its overrides without the seed."""
    return tuple(o for o in job if o.split("=", 1)[0] != "train.seed")


def with_learning_rates(jobs: list[list[str]], lr: dict[str, list[float]], default_method: str) -> list[list[str]]:
    """Each job once per learning rate of its method (`lr`: {method: [rates]}): LoRA's best rate is typically ~10x
    full fine-tuning's, so one shared rate favours one arm. An adapter method without rates of its own takes LoRA's.
    Jobs that set `train.lr` themselves, and methods without rates, are left as they are."""
    result = []
    for job in jobs:
        method = method_of(job, default_method)
        rates = lr.get(method) or (lr.get("lora") if method != "full" else None)
        if not rates or "train.lr" in job_values(job):
            result.append(job)
        else:
            result.extend([*job, f"train.lr={rate:g}"] for rate in rates)
    return result


def with_seed(jobs: list[list[str]], seed: int) -> list[list[str]]:
    return [job if "train.seed" in job_values(job) else [*job, f"train.seed={seed}"] for job in jobs]


def replicates(selected: list[list[str]], seeds: list[int]) -> list[list[str]]:
    """The selected configurations again, once per further seed."""
    return [[*configuration(job), f"train.seed={seed}"] for job in selected for seed in seeds]
