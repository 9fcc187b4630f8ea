"""The memory a fine-tune needs, estimated before any model loads (as the disk estimate is), against what the device
has: a run that cannot fit is refused in one line instead of ending in an out-of-memory traceback minutes in.

- weights: every parameter in the training dtype (`model.dtype`); an adapter's own parameters in fp32 beside them;
- gradients: one per trainable parameter, in its dtype;
- AdamW: two fp32 states per trainable parameter (exp_avg, exp_avg_sq);
- activations: what the loss keeps for backward, `pipeline.losses.activation_bytes_per_token` per token (Korthikanti
  et al. 2022, eq. 2, with a gated MLP's extra projection; attention's s x s probabilities only where they are kept)
  times the tokens embedded with gradients at once: plain MNRL, the whole batch (batch_size x columns x
  max_seq_length); CachedMNRL, one mini-batch; `mini_batch_size=auto`, at least one of its token-packed chunks (it
  caches whatever else does not fit); an adapter's own layers add what peft's LoRA keeps (its dropout's copy and
  mask). With gradient checkpointing, each layer's input is kept, and backward holds a few layers' activations.

With several processes per job (`launch.processes_per_job` = N), each process embeds batch_size / N rows; under FSDP
(`launch.fsdp`) it keeps 1/N of the weights, gradients and AdamW states, plus two layers' weights gathered at once
(not yet measured on GPUs: bench/scaling.py does). The check is per process, against one device.

Token counts use `max_seq_length` (the longest a text is padded or cut to): an upper bound for short texts.
Parameter counts come from the safetensors headers (`pipeline.disk`), without torch.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from pipeline.config import LossName, ModelDtype, RunError, mini_batch_size, sharded
from pipeline.disk import FP32, adapted_weights, human, trainable_count, weight_shapes

DTYPE_BYTES = {ModelDtype.float32: 4, ModelDtype.bfloat16: 2, ModelDtype.float16: 2}
ADAMW_BYTES = 2 * FP32  # exp_avg and exp_avg_sq
# A checkpointed backward recomputes one layer at a time, but its peak holds about three layers' activations beyond
# the layer inputs it keeps (the recomputed layer, the gradients flowing through it, the other text column's branch):
# measured as peak RSS on CPU, 2.6-3.1 layers for MiniLM and for a Qwen3 decoder (python -m bench --only memory)
CHECKPOINTED_LIVE_LAYERS = 3
LAYER = re.compile(r"\.(?:layers?|h|blocks?)\.(\d+)\.")  # a transformer layer's weights, by index


class MemoryLimitError(RunError):
    """A fine-tune that does not fit the device's memory: its message is the one line to show."""


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    gradients: int
    optimizer: int
    activations: int
    tokens: int  # embedded with gradients at once

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations


def architecture(model_dir: Path, attn_implementation: str | None, device: str) -> dict:
    """`pipeline.losses.architecture_of` the model's config.json."""
    from pipeline.losses import architecture_of

    configs = [json.loads(p.read_text()) for p in sorted(model_dir.rglob("config.json"))]
    config = next((c for c in configs if "hidden_size" in c or "d_model" in c), {})
    return architecture_of(config, attn_implementation, device)


def columns(cfg: DictConfig) -> int:
    """Texts per training row: the question, the answer and any negatives."""
    data = cfg.data
    negatives = len(data.get("negative_columns") or [])
    mine = data.get("mine")
    if mine is not None and mine.get("enabled"):
        negatives = mine.get("num_negatives", 1)
    return 2 + negatives


def tokens_with_gradients(cfg: DictConfig, seq_len: int, device: str) -> int:
    """How many tokens the loss embeds with their graphs at once (see the module)."""
    from pipeline.losses import CHUNK_TOKENS

    train = cfg.train
    texts = train.batch_size // cfg.launch.processes_per_job * columns(cfg)  # each process embeds its share
    if train.loss == LossName.mnrl:
        return texts * seq_len
    chunk = mini_batch_size(train.mini_batch_size)
    if chunk is None:  # auto: one token-packed chunk at least, never more than the batch
        return min(texts * seq_len, max(CHUNK_TOKENS.get(device, CHUNK_TOKENS["cpu"]), seq_len))
    return min(texts, chunk) * seq_len


def estimate(cfg: DictConfig, model_dir: Path, device: str, precision: str) -> MemoryEstimate | None:
    """The fine-tune's peak memory on `device`; None when the model dir holds no safetensors."""
    from pipeline.losses import activation_bytes

    shapes = weight_shapes(model_dir)
    if not shapes:
        return None
    total = sum(math.prod(shape) for shape in shapes.values())
    trainable = trainable_count(shapes, cfg.finetune, model_dir)
    dtype_bytes = DTYPE_BYTES[ModelDtype(cfg.model.dtype)]
    adapter = cfg.finetune.method != "full"
    weights = total * dtype_bytes + (trainable * FP32 if adapter else 0)  # peft keeps an adapter in fp32
    trained_bytes = FP32 if adapter else dtype_bytes
    seq_len = cfg.model.max_seq_length or _model_max_length(model_dir)
    tokens = tokens_with_gradients(cfg, seq_len, device)
    act_bytes = 2 if precision in ("bf16", "fp16") else dtype_bytes  # autocast keeps activations in 16 bits
    arch = architecture(model_dir, cfg.model.attn_implementation, device)
    gated = any("gate_proj" in name for name in shapes)
    per_token = activation_bytes(arch, seq_len, act_bytes, gated)
    if adapter:
        adapted = adapted_weights(shapes, cfg.finetune, model_dir)
        per_token += adapter_activation_bytes(
            cfg.finetune, adapted, act_bytes, mask_bytes=1 if device == "cuda" else act_bytes
        )
    if cfg.train.gradient_checkpointing:  # each layer's input kept, a few layers' activations live in backward
        layers = arch["num_hidden_layers"]
        live = layers * arch["hidden_size"] * act_bytes + min(layers, CHECKPOINTED_LIVE_LAYERS) * per_token / layers
        per_token = min(per_token, live)  # a model of a few layers saves nothing by it
    activations = int(tokens * per_token)
    gradients, optimizer = trainable * trained_bytes, trainable * ADAMW_BYTES
    if sharded(cfg):  # FSDP: each process keeps 1/N of the weights, gradients and AdamW states (plus a layer gathered)
        shards = cfg.launch.processes_per_job
        # two layers gathered at once (the one computing, the next prefetched), never more than the whole model
        weights = min(weights, weights // shards + 2 * largest_layer(shapes) * dtype_bytes)
        gradients, optimizer = gradients // shards, optimizer // shards
    return MemoryEstimate(weights, gradients, optimizer, activations, tokens)


def largest_layer(shapes: dict[str, list[int]]) -> int:
    """Parameters of the largest transformer layer (`...layer.3.` / `...layers.3.` in the weight names)."""
    sizes: dict[str, int] = {}
    for name, shape in shapes.items():
        found = LAYER.search(name)
        if found:
            sizes[found.group(1)] = sizes.get(found.group(1), 0) + math.prod(shape)
    return max(sizes.values(), default=0)


def adapter_activation_bytes(
    finetune: DictConfig, adapted: dict[str, list[int]], act_bytes: int, mask_bytes: int
) -> float:
    """What the adapter's own layers keep for backward per token, beyond the base model's activations: each adapted
    weight's rank-r intermediate (A's output, B's input) and, with LoRA dropout, the dropped copy of its input and the
    dropout mask (`mask_bytes` per element: a bool on CUDA's fused dropout, a tensor of the input's dtype on CPU):
    peft's `lora_B(lora_A(dropout(x)))`. Measured on MiniLM with all-linear LoRA
    at dropout 0.1 that is as much again as the base model's activations (bench/memory.py)."""
    from pipeline.losses import ESTIMATE_MARGIN

    rank = finetune.get("r", 8)
    dropout = finetune.get("dropout") or 0.0
    return ESTIMATE_MARGIN * sum(
        rank * act_bytes + (inp * (act_bytes + mask_bytes) if dropout else 0) for _, inp in adapted.values()
    )


def _model_max_length(model_dir: Path) -> int:
    """sentence-transformers' max_seq_length from the model dir (its sentence_bert_config.json), else 512."""
    for path in sorted(model_dir.rglob("sentence_bert_config.json")):
        value = json.loads(path.read_text()).get("max_seq_length")
        if value:
            return int(value)
    return 512


def check_memory(cfg: DictConfig, model_dir: Path | None) -> MemoryEstimate | None:
    """Raise a one-line `MemoryLimitError` when the fine-tune's estimate exceeds the memory free on its device (the GPU's,
    or the host's available RAM); say nothing when the model's weights cannot be read without loading it."""
    from pipeline.losses import free_memory_bytes
    from pipeline.models import device_and_precision

    device, precision = device_and_precision(cfg.train.precision.value)
    need = estimate(cfg, model_dir, device, precision) if model_dir is not None else None
    if need is None:
        return None
    free = free_memory_bytes(device)
    if need.total <= free:
        return need
    train = cfg.train
    raise MemoryLimitError(
        f"finetune={cfg.finetune.method} needs about {human(need.total)} on {device} and {human(free)} is free: "
        f"weights {human(need.weights)}, gradients {human(need.gradients)}, AdamW {human(need.optimizer)}, "
        f"activations {human(need.activations)} for {need.tokens:,} tokens at once; lower train.mini_batch_size "
        f"(now {train.mini_batch_size}), set train.gradient_checkpointing=true (now {train.gradient_checkpointing}), "
        f"lower train.batch_size (now {train.batch_size}), or use a device with more memory"
    )
