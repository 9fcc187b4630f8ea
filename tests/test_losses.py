"""train.mini_batch_size=auto (pipeline.losses.AutoCachedMNRL): the same losses and gradients as a fixed mini-batch.

Gradient caching is a memory knob: auto (the library's token-packed mini-batches, embedded twice only where their
activations do not fit) must train exactly as CachedMNRL with mini-batch 32 does. Equal to rounding needs
no dropout (the two ways draw dropout masks differently), so the tiny BERT here has none.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
from omegaconf import OmegaConf

from pipeline.config import DataConfig, EvalConfig, FinetuneConfig, Method, ModelConfig, TrainConfig
from tests.conftest import WORDS, build_tiny_model, compose_config


def _texts(rng: random.Random, n: int, low: int, high: int) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))) + f" {i}" for i in range(n)]


def _features(model, n: int = 24):
    rng = random.Random(0)
    return [model.tokenize(_texts(rng, n, 2, 6)), model.tokenize(_texts(rng, n, 3, 28))]


def _loss_and_grad(model, loss):
    model.zero_grad()
    value = loss(_features(model), None)
    value.backward()
    return float(value.detach()), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_auto_gives_mnrl_gradients_cached_partly_or_not(tiny_no_dropout_model):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from pipeline.losses import AutoCachedMNRL

    model = SentenceTransformer(str(tiny_no_dropout_model), device="cpu")
    model.train()
    ref_loss, ref_grad = _loss_and_grad(model, MultipleNegativesRankingLoss(model))
    losses = {
        "uncached": AutoCachedMNRL(model, budget_bytes=1e12),
        "partly": AutoCachedMNRL(model, budget_bytes=6e5),  # some mini-batches' activations fit, not all
        "cached": AutoCachedMNRL(model, budget_bytes=0),  # none fit: every mini-batch embedded twice
        "fixed": AutoCachedMNRL(model, mini_batch_size=5),
    }
    for name, loss in losses.items():
        loss.mini_batch_num_tokens = 64  # several mini-batches per column
        value, grad = _loss_and_grad(model, loss)
        assert value == pytest.approx(ref_loss, abs=1e-5), name
        assert torch.allclose(grad, ref_grad, atol=1e-5), (name, float((grad - ref_grad).abs().max()))
    plans = {name: loss.plan for name, loss in losses.items()}
    assert (plans["uncached"].uncached_steps, plans["uncached"].cached_steps) == (1, 0)
    assert plans["uncached"].recomputed_fraction == 0
    assert 0 < plans["partly"].recomputed_fraction < 1 and plans["partly"].cached_steps == 1
    assert plans["cached"].recomputed_fraction == 1 and plans["cached"].cached_steps == 1
    assert plans["fixed"].cached_steps == 1


def test_backward_scales_by_the_outer_gradient(tiny_no_dropout_model):
    """The Trainer divides the loss for gradient accumulation (and fp16 scales it): the hook's grad_output must reach
    the kept and the re-embedded mini-batches alike."""
    from sentence_transformers import SentenceTransformer

    from pipeline.losses import AutoCachedMNRL

    model = SentenceTransformer(str(tiny_no_dropout_model), device="cpu")
    model.train()
    loss = AutoCachedMNRL(model, budget_bytes=6e5)
    loss.mini_batch_num_tokens = 64
    _, grad = _loss_and_grad(model, loss)
    model.zero_grad()
    (loss(_features(model), None) * 0.25).backward()
    scaled = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert torch.allclose(scaled, grad * 0.25, atol=1e-6)


@pytest.mark.parametrize("width", [16, 64, 128])
def test_activation_estimate_covers_what_autograd_keeps(tmp_path, width):
    """The memory budget is spent by `activation_bytes_per_token`: it must not be below the bytes autograd saves for
    backward (parameters excluded), nor far above (the budget would be wasted on recomputation). A BERT of the
    usual proportions (intermediate 4× hidden, 64-wide heads, dropout), which the estimate assumes."""
    from sentence_transformers import SentenceTransformer

    from pipeline.losses import activation_bytes_per_token

    shape = dict(hidden_size=128, num_attention_heads=2, intermediate_size=512, max_position_embeddings=256)
    model = SentenceTransformer(str(build_tiny_model(tmp_path, max_seq_length=256, **shape)), device="cpu")
    model.train()
    feature = {
        key: value[:, :width]
        for key, value in model.tokenize([" ".join(WORDS * 20)] * 4).items()
        if isinstance(value, torch.Tensor)
    }
    assert int(feature["attention_mask"].sum()) == 4 * width
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        if tensor.untyped_storage().data_ptr() not in params:
            saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(feature)
    kept = sum(saved.values()) / (4 * width)
    estimate = activation_bytes_per_token(model, width, dtype_bytes=4)
    assert kept <= estimate <= 2 * kept, (kept, estimate)


def test_auto_embeds_the_library_token_packing(tiny_no_dropout_model):
    """Auto's mini-batches are the library's (`mini_batch_num_tokens`), in both passes: each column's first pass embeds
    exactly the ranges CachedMNRL's token packing gives it; an integer mini_batch_size is the parent's own way."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.losses.gradcache import _minibatch_ranges

    from pipeline.losses import CHUNK_TOKENS, AutoCachedMNRL

    model = SentenceTransformer(str(tiny_no_dropout_model), device="cpu")
    model.train()
    assert AutoCachedMNRL(model, mini_batch_size=8).mini_batch_num_tokens is None
    loss = AutoCachedMNRL(model, budget_bytes=6e5)  # some mini-batches kept, the others embedded twice
    assert loss.mini_batch_num_tokens == CHUNK_TOKENS["cpu"]
    loss.mini_batch_num_tokens = 64
    embedded, embed = [], loss.embed_minibatch
    loss.embed_minibatch = lambda feature, begin, end, *a, **k: (
        embedded.append((begin, end)) or embed(feature, begin, end, *a, **k)
    )
    features = _features(model)
    loss(features, None).backward()
    first_pass = [r for f in features for r in _minibatch_ranges(f, 32, 64)]
    assert len(first_pass) > 2 and embedded[: len(first_pass)] == first_pass
    assert 0 < loss.plan.recomputed_fraction < 1 and set(embedded[len(first_pass) :]) < set(first_pass)


def _finetune(model_dir, data_dir, out, mini_batch_size: str) -> list[float]:
    from pipeline.stages.finetune import finetune
    from pipeline.stages.prepare_data import prepare_data

    model_cfg = OmegaConf.structured(ModelConfig(name=str(model_dir), max_seq_length=32))
    data_cfg = OmegaConf.structured(DataConfig(path=str(data_dir), eval_size=8, train_size=128))
    train_cfg = OmegaConf.structured(
        TrainConfig(
            max_steps=3,
            batch_size=64,
            mini_batch_size=mini_batch_size,
            lr=1e-3,
            precision="fp32",
            save_steps=None,
            logging_steps=1,
        )
    )
    ft_cfg = OmegaConf.structured(FinetuneConfig(method=Method.full))
    eval_cfg = OmegaConf.structured(EvalConfig(during_training=False))
    if not (out.parent / "data").exists():
        prepare_data(data_cfg, out.parent / "data")
    summary = finetune(model_cfg, data_cfg, ft_cfg, train_cfg, eval_cfg, out.parent / "data", out)
    history = json.loads((out / "log_history.json").read_text())
    return summary, [entry["loss"] for entry in history if "loss" in entry]


@pytest.mark.integration
def test_auto_mini_batch_trains_as_mini_batch_32(tiny_no_dropout_model, tmp_path, monkeypatch):
    """The finetune stage's loss curve in fp32: auto (no cache here), auto forced to cache, and mini-batch 32."""
    from tests.conftest import write_qa_dir

    data = write_qa_dir(tmp_path / "qa", rows=160)
    _, fixed = _finetune(tiny_no_dropout_model, data, tmp_path / "fixed", "32")
    auto_summary, auto = _finetune(tiny_no_dropout_model, data, tmp_path / "auto", "auto")
    monkeypatch.setattr("pipeline.losses.memory_budget", lambda model: 0)  # nothing fits: all embedded twice
    cached_summary, cached = _finetune(tiny_no_dropout_model, data, tmp_path / "cached", "auto")

    assert len(fixed) == 3 and fixed[0] != fixed[-1]
    assert auto == pytest.approx(fixed, abs=1e-5)
    assert cached == pytest.approx(fixed, abs=1e-5)
    assert (auto_summary["uncached_steps"], auto_summary["cached_steps"]) == (3, 0)
    assert (cached_summary["uncached_steps"], cached_summary["cached_steps"]) == (0, 3)


@pytest.mark.parametrize("value", ["0", "-4", "abc", "3.5"])
def test_bad_mini_batch_size_is_one_line(value, tiny_cfg):
    from pipeline.validate import ConfigError, validate

    with pytest.raises(ConfigError, match=rf"^train.mini_batch_size={value} is not allowed: use auto .*integer >= 1$"):
        validate(tiny_cfg([f"train.mini_batch_size={value}"]))


def test_mini_batch_size_default_is_auto_and_integers_stay_integers():
    from pipeline.config import mini_batch_size

    assert compose_config().train.mini_batch_size == "auto"
    assert mini_batch_size("auto") is None
    assert mini_batch_size(compose_config(["train.mini_batch_size=16"]).train.mini_batch_size) == 16


def test_speed_bench_arms_train_alike(tiny_no_dropout_model, tmp_path):
    """bench/speed.py: every arm (auto, its always-cached twin, the library's token packing, the reference, plain
    MNRL) sees the same batches from the same weights, so without dropout their losses agree step by step; auto ran
    uncached (the batch fits), cached recomputed every token, and each arm has a row."""
    from bench.speed import measure, parser, rows_from
    from tests.conftest import write_qa_dir

    data = write_qa_dir(tmp_path / "qa", rows=64)
    args = parser().parse_args(
        ["--model", str(tiny_no_dropout_model), "--data", str(data), "--batch", "16", "--mini-batch", "4"]
        + ["--max-seq-length", "32", "--steps", "3", "--work", str(tmp_path / "work")]
        + ["--arms", "auto,cached,tokens64,reference,mnrl"]
    )
    report = measure(args)
    arms = report["arms"]
    ref = arms["reference"]
    assert list(arms) == ["auto", "cached", "tokens64", "reference", "mnrl"]
    assert len(ref["losses"]) == 3 and ref["losses"][0] != ref["losses"][-1]
    for name, arm in arms.items():
        assert arm["losses"] == pytest.approx(ref["losses"], abs=1e-5), name
        assert arm["samples_per_s"] > 0 and len(arm["step_s"]) == 3
    assert arms["auto"]["recomputed_token_fraction"] == 0 and arms["cached"]["recomputed_token_fraction"] == 1
    rows = rows_from(report)
    assert [row.bench for row in rows] == ["speed"] * 5  # one per arm but the reference, and the loss curves
    assert rows[0].ratio == pytest.approx(arms["auto"]["samples_per_s"] / ref["samples_per_s"])
    assert "tokens64" in rows[0].changed and "keeping graphs" in rows[0].changed
