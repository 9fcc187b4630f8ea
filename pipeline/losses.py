"""In-batch-negatives loss with `train.mini_batch_size=auto`: gradient caching only where memory needs it.

CachedMultipleNegativesRankingLoss computes the same gradients as MultipleNegativesRankingLoss in bounded memory, at
the price of a second forward pass (GradCache: embed every mini-batch without gradients, back-propagate the loss to
the embeddings, then embed each mini-batch again with gradients). `AutoCachedMNRL` is sentence-transformers' loss,
its token packing (`mini_batch_num_tokens=CHUNK_TOKENS`) and its machinery, with one change: in the first pass, the
mini-batches whose activations fit in `memory_budget` (estimated from their token counts) are embedded with
gradients and keep their graph, so only the others are embedded twice. Where the whole batch fits, that is plain
MNRL's single pass; where nothing fits, it is the library's CachedMNRL.

What that adds, measured (docs/benchmarks.md, `python -m bench --only speed`, MiniLM, batch 64, max_seq_length 256,
2 CPU cores): 1.64× the samples/s of the same mini-batches all embedded twice (1.87× in a second run); the
library's token packing alone ran at 0.77× the reference mini-batch 32, and sorting rows by length before packing
(this loss did, until then) added nothing measurable (0.95×), so it went.

Dropout draws differ between the two ways (as between two mini-batch sizes), so losses are equal to rounding only
without dropout (tests/test_losses.py); with dropout they are equal in distribution.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial

import torch
from sentence_transformers.base.losses.gradcache import _ddp_replay_context, _minibatch_ranges  # the library's
from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss
from torch import Tensor

# Real tokens per mini-batch (the library's `mini_batch_num_tokens`): few on CPU, where small mini-batches ran fastest
# per token (measured once by hand, 2 cores, MiniLM at max_seq_length 256: 1,616 tokens/s forward and backward in
# mini-batches of 8 rows, 1,354 in 32, 818 in 128); on a GPU, enough for its matmuls
CHUNK_TOKENS = {"cpu": 2_048, "cuda": 65_536}
CPU_FRACTION = 0.5  # of the memory free when training starts (a CPU host is shared with the data, the OS, others)
GPU_FRACTION = 0.8
# Eager PyTorch kept 384-433 KB per token of MiniLM's graph in fp32 where eq. 2 of Korthikanti et al. gives 341
# (tests/test_losses.py::test_activation_estimate_covers_what_autograd_keeps measures it)
ESTIMATE_MARGIN = 1.3


@dataclass
class Plan:
    """What the loss did with each batch, for the run's summary."""

    budget_bytes: float
    uncached_steps: int = 0  # every mini-batch embedded once
    cached_steps: int = 0  # some (or all) mini-batches embedded twice
    tokens: int = 0  # real tokens embedded with gradients, over all steps
    recomputed_tokens: int = 0  # of which embedded twice

    @property
    def recomputed_fraction(self) -> float:
        return self.recomputed_tokens / self.tokens if self.tokens else 0.0


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
    """Activation memory a transformer keeps for backward, per token of a sequence of `seq_len` (`activation_bytes`
    for the loaded model's config)."""
    model = getattr(model, "module", model)  # under DDP the trainer hands the loss its wrapper
    config = model[0].auto_model.config
    arch = architecture_of(config.to_dict(), getattr(config, "_attn_implementation", None), model.device.type)
    gated = any(name.endswith("gate_proj") for name, _ in model[0].auto_model.named_modules())
    return activation_bytes(arch, seq_len, dtype_bytes, gated)


def architecture_of(config: dict, attn_implementation: str | None, device: str) -> dict:
    """What the activation estimate reads of a transformers config (a config.json's dict): widths, layers, heads, and
    whether attention keeps its s x s probabilities for backward. Eager attention does; SDPA's fused kernels keep a
    log-sum-exp instead, except on CPU with attention dropout, where SDPA falls back to its math path."""
    hidden = config.get("hidden_size", config.get("d_model", 768))
    dropout = config.get("attention_probs_dropout_prob", config.get("attention_dropout", 0.0)) or 0.0
    return {
        "hidden_size": hidden,
        "num_hidden_layers": config.get("num_hidden_layers", 12),
        "num_attention_heads": config.get("num_attention_heads", max(1, hidden // 64)),
        "intermediate_size": config.get("intermediate_size", 4 * hidden),
        "scores_kept": attn_implementation == "eager" or (device == "cpu" and dropout > 0),
    }


def activation_bytes(arch: dict, seq_len: int, dtype_bytes: int, gated: bool = False) -> float:
    """Korthikanti et al. (2022, eq. 2) per layer and token, sbh(34 + 5as/h) bytes at 2-byte activations, written for
    any MLP width I: attention and layer norms 15h + 5as (5as only where attention keeps its probabilities:
    `architecture_of`), the MLP 3h + 4I (8I when gated, as SwiGLU: gate, up, their activation and product), which is
    34h at I = 4h; scaled to `dtype_bytes`, times `ESTIMATE_MARGIN`."""
    hidden, heads = arch["hidden_size"], arch["num_attention_heads"]
    mlp = 3 * hidden + (8 if gated else 4) * arch["intermediate_size"]
    per_layer = 15 * hidden + mlp + (5 * heads * seq_len if arch.get("scores_kept", True) else 0)
    return ESTIMATE_MARGIN * arch["num_hidden_layers"] * per_layer * dtype_bytes / 2


class AutoCachedMNRL(CachedMultipleNegativesRankingLoss):
    """CachedMultipleNegativesRankingLoss that embeds twice only what does not fit in memory (see the module).

    `mini_batch_size` given (an int): always cache, with that size, as the parent does.
    `mini_batch_size=None`: auto, within `budget_bytes` (default: a fraction of the memory free now, less the
    optimizer's states of the trainable weights).
    """

    def __init__(
        self,
        model,
        mini_batch_size: int | None = None,
        budget_bytes: float | None = None,
        dtype_bytes: int = 4,
        gather_across_devices: bool = False,
    ) -> None:
        auto = mini_batch_size is None
        tokens = CHUNK_TOKENS.get(model.device.type, CHUNK_TOKENS["cpu"]) if auto else None
        super().__init__(
            model,
            mini_batch_size=mini_batch_size or 32,
            mini_batch_num_tokens=tokens,
            gather_across_devices=gather_across_devices,  # in-batch negatives from every process of the job
        )
        self.auto = auto
        self.dtype_bytes = dtype_bytes
        self.plan = Plan(memory_budget(model) if budget_bytes is None else budget_bytes)

    def forward(self, sentence_features, labels: Tensor) -> Tensor:
        features = list(sentence_features)
        if self.auto and torch.is_grad_enabled():
            return self._forward_partly_cached(features, labels)
        self.plan.cached_steps += torch.is_grad_enabled()
        return self.forward_cached(features, labels)

    def _forward_partly_cached(self, features: list[dict], labels: Tensor) -> Tensor:
        """GradCache (the parent's `forward_cached`) in which the first pass embeds the mini-batches that fit in the
        budget with gradients and keeps their graphs: the backward hook re-embeds only the others."""
        lengths = [feature["attention_mask"].sum(dim=1).tolist() for feature in features]
        ranges = [_minibatch_ranges(feature, self.mini_batch_size, self.mini_batch_num_tokens) for feature in features]
        budget = self.plan.budget_bytes
        graphs, reps, random_states = [], [], []
        for feature, column_lengths, column_ranges in zip(features, lengths, ranges, strict=True):
            column_graphs, column_reps, column_states = [], [], []
            for begin, end in column_ranges:
                width = int(max(column_lengths[begin:end]))  # the mini-batch's width once its padding is trimmed
                need = (end - begin) * width * activation_bytes_per_token(self.model, width, self.dtype_bytes)
                keep = need <= budget
                budget -= need if keep else 0
                rep, random_state = self.embed_minibatch(
                    feature, begin, end, with_grad=keep, copy_random_state=not keep
                )
                column_graphs.append(rep if keep else None)
                column_reps.append(rep.detach().requires_grad_())
                column_states.append(random_state)
                tokens = int(sum(column_lengths[begin:end]))
                self.plan.tokens += tokens
                self.plan.recomputed_tokens += 0 if keep else tokens
            graphs.append(column_graphs)
            reps.append(column_reps)
            random_states.append(column_states)
        recomputed = any(graph is None for column in graphs for graph in column)
        self.plan.cached_steps += recomputed
        self.plan.uncached_steps += not recomputed

        # The loss back-propagated to the embeddings; the rest of the backward pass runs from a hook on the loss, as
        # the parent's does, so the Trainer's scaling (grad_output) reaches every mini-batch
        loss = self.calculate_loss(reps, labels, with_backward=True).detach().requires_grad_()
        cache = [[rep.grad for rep in column] for column in reps]
        loss.register_hook(
            partial(
                self._backward_hook, features=features, ranges=ranges, graphs=graphs, cache=cache, states=random_states
            )
        )
        return loss

    def _backward_hook(self, grad_output: Tensor, features, ranges, graphs, cache, states) -> None:
        """Back-propagates each mini-batch's cached embedding gradient (times `grad_output`): first through every kept
        graph at once, then through each mini-batch not kept, embedded again with the first pass's dropout draws.

        Under DDP (several processes per job), gradients synchronise once per backward pass: the kept graphs' pass
        averages their part across processes, the re-embedded mini-batches accumulate locally (`no_sync`) and the
        last one's pass averages the sum again, which leaves the kept part as it was (it is already equal on every
        process) and averages the rest: the same gradients as one process, as the library's `_backward_hook`."""
        model = getattr(self.model, "_orig_mod", self.model)
        kept, again = [], []
        for feature, column_ranges, column_graphs, column_cache, column_states in zip(
            features, ranges, graphs, cache, states, strict=True
        ):
            for index, (begin, end) in enumerate(column_ranges):
                graph, column_graphs[index] = column_graphs[index], None  # freed once back-propagated
                if graph is None:
                    again.append((feature, begin, end, column_cache[index], column_states[index]))
                elif graph.requires_grad:
                    kept.append((graph, column_cache[index]))
        with torch.enable_grad():
            if kept:
                sum(_surrogate(graph, grad) for graph, grad in kept).mul(grad_output).backward()
            for position, (feature, begin, end, grad, random_state) in enumerate(again):
                with _ddp_replay_context(model, synchronize=position == len(again) - 1):
                    graph, _ = self.embed_minibatch(
                        feature, begin, end, with_grad=True, copy_random_state=False, random_state=random_state
                    )
                    if graph.requires_grad:
                        (_surrogate(graph, grad) * grad_output).backward()


def _surrogate(graph: Tensor, grad: Tensor) -> Tensor:
    """<embeddings, their cached gradient>: back-propagating it sends that gradient through the graph (in fp32 at
    least: a bf16 dot product would round the gradient)."""
    dtype = torch.promote_types(torch.promote_types(graph.dtype, grad.dtype), torch.float32)
    return torch.dot(graph.flatten().to(dtype), grad.flatten().to(dtype))


def memory_budget(model) -> float:
    """The activation budget: a fraction of the free memory on the model's device, less what AdamW will add for the
    trainable weights (their gradients and two moments, fp32)."""
    device = model.device
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    fraction = GPU_FRACTION if device.type == "cuda" else CPU_FRACTION
    return max(0.0, fraction * free_memory_bytes(device) - 3 * 4 * trainable)
