"""The disk a fine-tune writes under `paths.outputs`, estimated before any model loads; a disk that fills anyway.

What the finetune stage writes: the trained model (every weight for a full fine-tune, the adapter alone otherwise) and,
every `train.save_steps`, a checkpoint to resume from: the trainable weights again and AdamW's two fp32 states per
trainable parameter. The Trainer writes a checkpoint before it deletes the oldest beyond `train.save_total_limit`, so
up to limit + 1 exist at once, and the last of them are still there when the model is saved. Parameter counts come
from the model's safetensors headers (no torch); the evaluation outputs (JSON of a few kB per query set) are left out.
"""

from __future__ import annotations

import errno
import json
import math
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from pipeline.adapter_configs import METHODS, Method, peft_default_targets
from pipeline.config import RunError

FP32 = 4  # bytes: the Trainer keeps trainable weights and AdamW's states in fp32
ADAMW_STATES = 2  # exp_avg and exp_avg_sq per trainable parameter
NEARLY_FULL = 1 << 20  # bytes: a write that failed on a disk with less left than this failed for want of space


class DiskSpaceError(RunError):
    """A run that does not fit, or whose disk filled: its message is the one line to show."""


@dataclass(frozen=True)
class DiskEstimate:
    model: int  # bytes of the saved model (or adapter), with its tokenizer and config files
    checkpoint: int  # bytes of one checkpoint
    checkpoints: int  # how many exist at once, at most

    @property
    def total(self) -> int:
        return self.model + self.checkpoint * self.checkpoints


def human(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(size) < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def free_bytes(path: str | Path) -> tuple[int, Path]:
    """Free space on the filesystem that holds `path` (its nearest existing parent), and that parent."""
    existing = Path(path).resolve()
    while not existing.exists():
        existing = existing.parent
    return shutil.disk_usage(existing).free, existing


def weight_shapes(model_dir: Path) -> dict[str, list[int]]:
    """Every tensor's shape, from the safetensors headers of a model dir (no torch)."""
    from safetensors import safe_open

    shapes = {}
    for file in sorted(model_dir.rglob("*.safetensors")):
        if "adapter" not in file.name:
            with safe_open(str(file), framework="numpy") as f:
                shapes.update({name: f.get_slice(name).get_shape() for name in f.keys()})  # noqa: SIM118
    return shapes


def default_targets(method: str, model_dir: Path) -> list[str]:
    """peft's default target modules of `method` for the model's architecture (config.json's model_type)."""
    configs = [json.loads(p.read_text()) for p in sorted(model_dir.rglob("config.json"))]
    model_type = next((c["model_type"] for c in configs if "model_type" in c), None)
    return peft_default_targets(method, model_type)


def trainable_count(shapes: dict[str, list[int]], finetune: DictConfig, model_dir: Path) -> int:
    """Every parameter for a full fine-tune; for an adapter, its parameters on the targeted 2-D weights, each
    method's count per weight (`METHODS[...].per_weight`: r * (in + out) for LoRA, ...). Targets null: peft's default
    for the architecture; all-linear: every Linear layer."""
    per_weight = METHODS[Method(finetune.method)].per_weight
    if per_weight is None:  # the full fine-tune
        return sum(math.prod(shape) for shape in shapes.values())
    chosen = adapted_weights(shapes, finetune, model_dir)
    feedforward = []  # IA3's: a scale per input, not per output
    if "feedforward_modules" in finetune:
        feedforward = finetune.feedforward_modules or default_targets("ia3_feedforward", model_dir)
    rank = finetune.get("r", 8)
    return sum(per_weight(out, inp, rank, _matches(n, feedforward)) for n, (out, inp) in chosen.items())


def adapted_weights(shapes: dict[str, list[int]], finetune: DictConfig, model_dir: Path) -> dict[str, list[int]]:
    """The 2-D weights an adapter method targets, by module name: (out, in). Targets null: peft's default for the
    architecture, all-linear where it has none; all-linear: every Linear layer but the embeddings."""
    targets = finetune.get("target_modules") or default_targets(finetune.method, model_dir) or "all-linear"
    linear = {n[: -len(".weight")]: s for n, s in shapes.items() if n.endswith(".weight") and len(s) == 2}
    linear = {n: s for n, s in linear.items() if "embeddings" not in n}
    return {n: s for n, s in linear.items() if isinstance(targets, str) or _matches(n, targets)}  # str: all-linear


def _matches(module: str, targets) -> bool:
    """peft matches a target name against the end of a module's dotted name."""
    return any(module == t or module.endswith("." + t) for t in targets)


def estimate(cfg: DictConfig, model_dir: Path) -> DiskEstimate | None:
    """What the finetune stage writes at its peak; None when the model dir holds no safetensors."""
    shapes = weight_shapes(model_dir)
    if not shapes:
        return None
    trainable = trainable_count(shapes, cfg.finetune, model_dir)
    other = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file() and p.suffix != ".safetensors")
    weights = trainable * FP32 + other  # full: every weight; an adapter: its own
    train = cfg.train
    if train.max_steps is not None:
        steps = train.max_steps
    elif cfg.data.train_size is not None:
        steps = math.ceil(train.epochs * math.ceil(cfg.data.train_size / train.batch_size))
    else:
        steps = None  # the data's size is not known yet: as many checkpoints as can be kept
    saves = 0 if not train.save_steps else math.inf if steps is None else steps // train.save_steps
    at_once = min(saves, train.save_total_limit + 1) if train.save_total_limit else saves
    checkpoints = 1 if at_once == math.inf else int(at_once)  # no limit and no known length: at least one
    return DiskEstimate(weights, weights + ADAMW_STATES * FP32 * trainable, checkpoints)


def local_model_dir(cfg: DictConfig) -> Path | None:
    """The base model's files on this machine: a local dir, the packaged copy, or the Hub cache's snapshot (None)."""
    from pipeline.fingerprint import cached_snapshot
    from pipeline.models import model_source

    source = Path(model_source(cfg.model.name))
    return source if source.is_dir() else cached_snapshot(cfg.model.name, "model", cfg.model.revision)


def check_disk(cfg: DictConfig, model_dir: Path | None) -> None:
    """Raise a one-line `DiskSpaceError` when the fine-tune's estimate does not fit the free space under
    paths.outputs; say nothing when the model's weights cannot be read without loading it (`model_dir` None)."""
    need = estimate(cfg, model_dir) if model_dir is not None else None
    if need is None:
        return
    free, where = free_bytes(cfg.paths.outputs)
    if need.total <= free:
        return
    train = cfg.train
    raise DiskSpaceError(
        f"paths.outputs={cfg.paths.outputs} has {human(free)} free on {where}, and this run writes about "
        f"{human(need.total)}: the model {human(need.model)} and up to {need.checkpoints} checkpoint(s) of "
        f"{human(need.checkpoint)} (weights and AdamW's 2 fp32 states per trainable parameter); keep fewer with "
        f"train.save_total_limit (now {train.save_total_limit}) or train.save_steps (now {train.save_steps}), "
        "or set paths.outputs to a larger disk"
    )


def disk_full(error: BaseException, work: Path) -> bool:
    """The error, or one it was raised from, is an OSError ENOSPC or says so (safetensors: `StorageFull`); or the
    disk under `work` has under `NEARLY_FULL` left (torch.save's writer says only `unexpected pos` or `iostream
    error`)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if any(s in str(error) for s in ("No space left on device", "StorageFull")):
            return True
        error = error.__cause__ or error.__context__
    return free_bytes(work)[0] < NEARLY_FULL


def last_written(work: Path) -> Path | None:
    """The file most recently written under `work`: what was being written when the disk filled."""
    files = [p for p in work.rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_mtime_ns) if files else None


@contextmanager
def disk_full_fails_the_stage(stage: str, work: Path):
    """A stage's disk that fills: a one-line `DiskSpaceError`, and its partial dir removed (no cache entry)."""
    try:
        yield
    except Exception as error:
        if not disk_full(error, work):
            raise
        full = disk_full_error(stage, work, error)
        shutil.rmtree(work, ignore_errors=True)
        raise full from error


def disk_full_error(stage: str, work: Path, error: BaseException) -> DiskSpaceError:
    """The one line for a stage whose disk filled: the file being written, the space left, what to change."""
    filename = getattr(error, "filename", None)
    path = Path(filename) if filename else last_written(work)
    what = path.relative_to(work).as_posix() if path is not None and path.is_relative_to(work) else path
    free, where = free_bytes(work)
    return DiskSpaceError(
        f"stage {stage} ran out of disk writing {what or 'its output'} under {work} ({human(free)} free on {where}); "
        "the run FAILED and left no cache entry: free space, keep fewer checkpoints (train.save_total_limit, "
        "train.save_steps) or set paths.outputs to a larger disk"
    )
