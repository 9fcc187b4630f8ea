"""A sweep's jobs: Hydra's cartesian product turned into the jobs a comparison needs.

A LoRA job per (r, alpha) and ONE full fine-tune job (r / alpha mean nothing to it), with alpha given absolutely
(`32`) or relative to r (`r`, `2r`). Light on purpose: config validation imports it.
"""

from __future__ import annotations

import re

RELATIVE_ALPHA = re.compile(r"^(\d*\.?\d*)r$")  # "r", "2r", "0.5r"
LORA_ONLY = ("finetune.r", "finetune.alpha", "finetune.dropout", "finetune.target_modules")


def lora_vs_full_jobs(jobs: list[list[str]]) -> list[list[str]]:
    """Resolve relative alphas and collapse the full fine-tune jobs that differ only in LoRA keys into one."""
    result, seen = [], set()
    for job in jobs:
        values = dict(override.split("=", 1) for override in job)
        if values.get("finetune") == "full":
            job = [o for o in job if o.split("=", 1)[0] not in LORA_ONLY]
        elif (match := RELATIVE_ALPHA.match(values.get("finetune.alpha", ""))) is not None:
            if "finetune.r" not in values:
                raise ValueError(f"finetune.alpha={values['finetune.alpha']} is relative to r: give finetune.r too")
            alpha = float(match.group(1) or 1) * int(values["finetune.r"])
            job = [f"finetune.alpha={int(alpha)}" if o.startswith("finetune.alpha=") else o for o in job]
        if tuple(job) not in seen:
            seen.add(tuple(job))
            result.append(job)
    return result


def is_relative_alpha(override: str) -> bool:
    key, _, value = override.partition("=")
    return key == "finetune.alpha" and any(RELATIVE_ALPHA.match(v) for v in value.split(","))
