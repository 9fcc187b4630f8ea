"""In-batch-negatives loss with `train.mini_batch_size=auto`: gradient caching only where memory needs it.

CachedMultipleNegativesRankingLoss computes the same gradients as MultipleNegativesRankingLoss in bounded memory, at
the price of a second forward pass (an embedding pass without gradients, then each mini-batch again with them).
`AutoCachedMNRL` keeps sentence-transformers' loss and its machinery and adds two things:

- each column of a batch is sorted by length before it is cut into mini-batches (the embeddings are put back in the
  batch's order before the loss), so that the trailing padding sentence-transformers trims per mini-batch is mostly
  gone: the loss is the same, as it sees the same pairs;
- per batch, from its real token counts and the memory free when training started (`memory_budget`): where the whole
  batch's activations fit, it embeds the mini-batches once, with gradients, and back-propagates as plain MNRL does (no
  cache, no second pass); where they do not, it caches gradients with the largest mini-batch that fits.

Dropout draws differ between the two ways (as between two mini-batch sizes), so losses are equal to rounding only
without dropout (tests/test_losses.py); with dropout they are equal in distribution.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss
from torch import Tensor

# Tokens (padding included) per mini-batch of the uncached pass: enough for fast matmuls, few enough that sorted rows
# share a length
CHUNK_TOKENS = {"cpu": 4_096, "cuda": 65_536}
CPU_FRACTION = 0.5  # of the memory free when training starts (a CPU host is shared with the data, the OS, others)
GPU_FRACTION = 0.8


@dataclass
class Plan:
    """What the loss did with each batch, for the run's summary."""

    budget_bytes: float
    bytes_per_token: float
    uncached_steps: int = 0
    cached_steps: int = 0
    mini_batch_tokens: set[int] = field(default_factory=set)  # token budget per cached mini-batch (or rows)


def free_memory_bytes(device: torch.device | str) -> int:
    """Free memory where the activations will live: the GPU's (mem_get_info), else the host's MemAvailable, capped by
    the cgroup's memory limit when there is one."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    available = _meminfo_bytes("MemAvailable")
    try:  # cgroup v2: what this container may still take
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        if limit != "max":
            used = int(open("/sys/fs/cgroup/memory.current").read())
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(0, available)


def _meminfo_bytes(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def activation_bytes_per_token(model, seq_len: int, dtype_bytes: int) -> float:
    """Activation memory a transformer keeps for backward, per token of a sequence of `seq_len`: Korthikanti et al.
    (2022, eq. 2) per layer, sbh(34 + 5as/h) bytes at 2-byte activations, scaled to `dtype_bytes`."""
    config = model[0].auto_model.config
    hidden = getattr(config, "hidden_size", 768)
    layers = getattr(config, "num_hidden_layers", 12)
    heads = getattr(config, "num_attention_heads", max(1, hidden // 64))
    return layers * hidden * (34 + 5 * heads * seq_len / hidden) * dtype_bytes / 2


class AutoCachedMNRL(CachedMultipleNegativesRankingLoss):
    """CachedMultipleNegativesRankingLoss whose mini-batch size and caching follow from free memory (see the module).

    `mini_batch_size` given (an int): always cache, with that size, as the parent does (after sorting by length).
    `mini_batch_size=None`: auto, within `budget_bytes` (default: a fraction of the memory free now, less the
    optimizer's states of the trainable weights).
    """

    def __init__(
        self, model, mini_batch_size: int | None = None, budget_bytes: float | None = None, dtype_bytes: int = 4
    ) -> None:
        super().__init__(model, mini_batch_size=mini_batch_size or 32)
        self.auto = mini_batch_size is None
        self.dtype_bytes = dtype_bytes
        self.chunk_tokens = CHUNK_TOKENS.get(model.device.type, CHUNK_TOKENS["cpu"])
        if budget_bytes is None:
            budget_bytes = memory_budget(model)
        self.plan = Plan(budget_bytes, activation_bytes_per_token(model, model.max_seq_length or 512, dtype_bytes))
        self._inverse: list[Tensor] | None = None

    def forward(self, sentence_features, labels: Tensor) -> Tensor:
        sorted_columns = [_sorted_by_length(feature) for feature in sentence_features]
        features = [feature for feature, _ in sorted_columns]
        self._inverse = [inverse for _, inverse in sorted_columns]
        if self.auto and torch.is_grad_enabled():
            if self._fits_uncached(features):
                self.plan.uncached_steps += 1
                return self._forward_uncached(features, labels)
            self._cache_by_tokens(features)
        self.plan.cached_steps += torch.is_grad_enabled()
        self.plan.mini_batch_tokens.add(self.mini_batch_num_tokens or self.mini_batch_size)
        return self.forward_cached(features, labels)

    def calculate_loss(self, reps, labels=None, *, with_backward: bool = False) -> Tensor:
        """The parent's loss, on the embeddings put back in the batch's order (the mini-batches' tensors stay the
        leaves the gradient cache reads)."""
        unsorted = [torch.cat(column)[inverse] for column, inverse in zip(reps, self._inverse, strict=True)]
        if not with_backward:
            return super().calculate_loss([[u] for u in unsorted], labels)
        # The parent back-propagates chunk by chunk: give it leaves, then carry their gradients to the mini-batches'
        leaves = [u.detach().requires_grad_() for u in unsorted]
        loss = super().calculate_loss([[leaf] for leaf in leaves], labels, with_backward=True)
        torch.autograd.backward(unsorted, [leaf.grad for leaf in leaves])
        return loss

    def _forward_uncached(self, features: list[dict], labels: Tensor) -> Tensor:
        """MultipleNegativesRankingLoss's pass: every mini-batch embedded once, with gradients; autograd does the rest."""
        reps = [
            [
                self.embed_minibatch(feature, begin, end, with_grad=True, copy_random_state=False)[0]
                for begin, end in self._chunks(feature)
            ]
            for feature in features
        ]
        return self.calculate_loss(reps, labels)

    def _chunks(self, feature: dict) -> list[tuple[int, int]]:
        """(begin, end) of the mini-batches of a column sorted longest first: each holds at most `chunk_tokens`
        tokens counted with its padding (its rows times its first, longest row)."""
        lengths = feature["attention_mask"].sum(dim=1).tolist()
        ranges, begin = [], 0
        while begin < len(lengths):
            rows = max(1, self.chunk_tokens // max(1, int(lengths[begin])))
            ranges.append((begin, min(len(lengths), begin + rows)))
            begin += rows
        return ranges

    def _fits_uncached(self, features: list[dict]) -> bool:
        need = 0.0
        for feature in features:
            lengths = feature["attention_mask"].sum(dim=1).tolist()
            for begin, end in self._chunks(feature):
                width = int(lengths[begin])
                need += (end - begin) * width * activation_bytes_per_token(self.model, width, self.dtype_bytes)
        return need <= self.plan.budget_bytes

    def _cache_by_tokens(self, features: list[dict]) -> None:
        """Cached mini-batches packed by tokens (sentence-transformers' mini_batch_num_tokens), as many as fit."""
        width = max(feature["attention_mask"].shape[1] for feature in features)
        tokens = int(self.plan.budget_bytes // activation_bytes_per_token(self.model, width, self.dtype_bytes))
        self.mini_batch_num_tokens = max(1, tokens)
        self.mini_batch_size = max(1, tokens // width)  # what sentence-transformers' loss chunking uses


def _sorted_by_length(feature: dict) -> tuple[dict, Tensor]:
    """The column's rows sorted by token count (longest first), and the permutation that puts them back."""
    lengths = feature["attention_mask"].sum(dim=1)
    order = torch.argsort(lengths, descending=True, stable=True)
    batch = len(lengths)
    sorted_feature = {
        key: value[order] if isinstance(value, Tensor) and value.ndim >= 1 and len(value) == batch else value
        for key, value in feature.items()
    }
    return sorted_feature, torch.argsort(order)


def memory_budget(model) -> float:
    """The activation budget: a fraction of the free memory on the model's device, less what AdamW will add for the
    trainable weights (their gradients and two moments, fp32)."""
    device = model.device
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    fraction = GPU_FRACTION if device.type == "cuda" else CPU_FRACTION
    return max(0.0, fraction * free_memory_bytes(device) - 3 * 4 * trainable)
