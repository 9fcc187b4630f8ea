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
