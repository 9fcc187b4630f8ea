"""The models people fine-tune now (issue 31): a bf16 checkpoint trains with fp32 master weights in both arms, the same
prompts reach training and every evaluation, LoRA targets all linear layers (ModernBERT too), gradient checkpointing
changes memory and not gradients, and a fine-tune that changed nothing ends FAILED."""

from __future__ import annotations

import inspect
import math
import os

import pytest
import torch
from omegaconf import OmegaConf

from pipeline.config import ConfigError, RunError
from pipeline.dag import run_dag
from pipeline.models import prompts_of, training_prompts
from pipeline.tools.tiny_models import QWEN3_QUERY_PROMPT as QUERY_PROMPT
from pipeline.validate import _check_prompts
from tests.conftest import (
    build_tiny_decoder,
    build_tiny_model,
    build_tiny_modernbert,
    compose_config,
    tiny_overrides,
)


@pytest.fixture(scope="module")
def tiny_decoder(tmp_path_factory):
    return build_tiny_decoder(tmp_path_factory.mktemp("tiny_qwen3"))


@pytest.fixture(scope="module")
def tiny_bf16_bert(tmp_path_factory):
    """The tiny BERT saved in bf16, as most current embedders are stored."""
    from sentence_transformers import SentenceTransformer

    path = build_tiny_model(tmp_path_factory.mktemp("tiny_bert_bf16"))
    model = SentenceTransformer(str(path))
    model.to(torch.bfloat16)
    model.save(str(path.parent / "st_bf16"))
    return path.parent / "st_bf16"


def _cfg(tmp_path, model, tiny_qa, tiny_nanobeir, extra=()):
    overrides = tiny_overrides(tmp_path, model, tiny_qa, tiny_nanobeir)
    method = [o for o in extra if o.startswith("finetune=")]
    rest = [o for o in extra if not o.startswith("finetune=")]
    small = ["finetune.r=4", "finetune.alpha=8"] if not method or method[-1] != "finetune=full" else []
    return compose_config(overrides + method + small + ["train.eval_steps=null", *rest])


@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.integration
def test_bf16_checkpoint_trains_fp32_master_weights(tmp_path, tiny_bf16_bert, tiny_qa, tiny_nanobeir, method):
    """transformers 5 loads a bf16 checkpoint in bf16 and add_adapter makes LoRA bf16 too: model.dtype=float32 (the
    default) trains every trainable parameter in fp32, in both arms."""
    cfg = _cfg(tmp_path, tiny_bf16_bert, tiny_qa, tiny_nanobeir, [f"finetune={method}", "run.until=finetune"])
    assert {str(v.dtype) for v in _saved_dtypes(tiny_bf16_bert)} == {"torch.bfloat16"}  # the checkpoint is bf16
    result = run_dag(cfg)["finetune"].result
    assert result["trainable_dtype"] == "float32"
    assert result["dtype"] == "float32"


def _saved_dtypes(model_dir):
    from safetensors.torch import load_file

    return list(load_file(next(model_dir.rglob("model.safetensors"))).values())


@pytest.mark.integration
def test_model_dtype_bfloat16_is_what_trains_when_asked(tmp_path, tiny_bf16_bert, tiny_qa, tiny_nanobeir):
    cfg = _cfg(tmp_path, tiny_bf16_bert, tiny_qa, tiny_nanobeir, ["model.dtype=bfloat16", "run.until=finetune"])
    assert run_dag(cfg)["finetune"].result["trainable_dtype"] == "bfloat16"


def test_prompts_resolve_from_the_model_or_the_config(tiny_decoder):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_decoder))
    assert prompts_of("auto", model) == {"query": QUERY_PROMPT, "document": ""}
    assert prompts_of("none", model) == {"query": "", "document": ""}
    assert prompts_of({"query": "q: ", "document": "d: "}, model) == {"query": "q: ", "document": "d: "}
    # the question column gets the query prompt; answer and negatives the document prompt; empty ones are left out
    assert training_prompts({"query": "q: ", "document": "d: "}, ["question", "answer", "negative"]) == {
        "question": "q: ",
        "answer": "d: ",
        "negative": "d: ",
    }
    assert training_prompts({"query": "", "document": ""}, ["question", "answer"]) is None


@pytest.mark.parametrize("bad", ["query", OmegaConf.create({"query": "q", "passage": "p"}), OmegaConf.create([1])])
def test_bad_prompts_are_refused_in_one_line(bad):
    with pytest.raises(ConfigError, match=r"train\.prompts=.* is not allowed: use auto"):
        _check_prompts(bad)


@pytest.fixture
def encoded(monkeypatch) -> list[tuple[str, str | None]]:
    """(text, prompt) of every text that a training batch or an evaluator tokenizes (not the card's widget examples)."""
    from sentence_transformers import SentenceTransformer

    seen: list[tuple[str, str | None]] = []
    preprocess = SentenceTransformer.preprocess

    def recording(self, inputs, prompt=None, **kwargs):
        callers = [frame.filename for frame in inspect.stack()[1:15]]
        if any("data_collator" in f or f"evaluation{os.sep}" in f for f in callers):
            seen.extend((text, prompt) for text in inputs if isinstance(text, str))
        return preprocess(self, inputs, prompt=prompt, **kwargs)

    monkeypatch.setattr(SentenceTransformer, "preprocess", recording)
    return seen


@pytest.mark.integration
def test_training_and_every_evaluation_encode_with_the_same_prompts(
    tmp_path, tiny_decoder, tiny_qa, tiny_nanobeir, encoded
):
    """Every question a training batch or the dev evaluator tokenizes, and every NanoBEIR query, carries the model's
    own query prompt; no answer or corpus text carries it."""
    outputs = run_dag(_cfg(tmp_path, tiny_decoder, tiny_qa, tiny_nanobeir))  # every stage
    questions = set(_rows(outputs["prepare_data"].dir, "question"))
    nanobeir_queries = _nanobeir_queries(tiny_nanobeir)
    assert {prompt for text, prompt in encoded if text in questions} == {QUERY_PROMPT}
    assert {prompt for text, prompt in encoded if text in nanobeir_queries} == {QUERY_PROMPT}
    documents = {prompt for text, prompt in encoded if text not in questions | nanobeir_queries}
    assert documents and QUERY_PROMPT not in documents
    assert outputs["finetune"].result["prompts"] == {"query": QUERY_PROMPT, "document": ""}


@pytest.mark.integration
def test_prompts_none_reaches_training_and_evaluation(tmp_path, tiny_decoder, tiny_qa, tiny_nanobeir, encoded):
    run_dag(_cfg(tmp_path, tiny_decoder, tiny_qa, tiny_nanobeir, ["train.prompts=none"]))
    assert encoded and all(not prompt for _, prompt in encoded)


def test_prompts_are_in_every_evaluation_key(tiny_cfg):
    from pipeline.dag import STAGES, stage_key

    base, other = tiny_cfg(), tiny_cfg(["train.prompts=none"])
    for name in ("baseline", "dev_baseline", "evaluate", "dev_evaluate", "finetune"):
        stage = STAGES[name]
        upstream = {i: "k" for i in stage.inputs}
        assert stage_key(stage, base, upstream, {}) != stage_key(stage, other, upstream, {}), name


def _rows(prepared_dir, column):
    from datasets import load_from_disk

    dataset = load_from_disk(str(prepared_dir / "dataset"))
    return list(dataset["train"][column]) + list(dataset["eval"][column])


def _nanobeir_queries(root):
    import pandas as pd

    return {text for file in (root / "queries").glob("*.parquet") for text in pd.read_parquet(file)["text"]}


@pytest.mark.parametrize("builder", ["bert", "qwen3", "modernbert"])
def test_lora_targets_every_linear_layer_by_default(tmp_path, tiny_model, builder):
    """The LoRA family's YAML default is all-linear; null is peft's default (attention only for BERT and Qwen3), or
    all-linear where peft has none (ModernBERT), not an error."""
    from sentence_transformers import SentenceTransformer

    from pipeline.peft_methods import linear_modules, peft_config

    builders = {"bert": lambda: tiny_model, "qwen3": lambda: build_tiny_decoder(tmp_path)}
    path = builders.get(builder, lambda: build_tiny_modernbert(tmp_path))()
    cfg = compose_config(["finetune=lora", f"model.name={path}"])
    assert cfg.finetune.target_modules == "all-linear"
    for targets in ("all-linear", None):
        model = SentenceTransformer(str(path))
        linear = set(linear_modules(model.transformers_model))
        model.add_adapter(
            peft_config(OmegaConf.merge(cfg.finetune, {"target_modules": targets}), model.transformers_model)
        )
        names = (name for name, _ in model.transformers_model.named_modules())
        adapted = {name.removesuffix(".lora_A") for name in names if name.endswith(".lora_A")}
        if targets is None and builder != "modernbert":
            assert adapted < linear, builder  # attention only: fewer layers
        else:
            assert adapted == linear, (builder, targets)


def test_gradient_checkpointing_keeps_the_loss_and_gradients(tiny_no_dropout_model):
    """Non-reentrant checkpointing recomputes activations: the same loss and gradients, and LoRA's B gets them."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from pipeline.peft_methods import peft_config

    ft = OmegaConf.merge(compose_config(["finetune=lora"]).finetune, {"r": 4, "alpha": 8})
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = SentenceTransformer(str(tiny_no_dropout_model))
        model.add_adapter(peft_config(ft, model.transformers_model))
        with torch.no_grad():  # B starts at zero: give it values so that A gets gradients too
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn_like(param) * 0.1)
        if checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": False})
        model.train()
        loss_fn = MultipleNegativesRankingLoss(model)
        features = [
            model.tokenize(["a question about the heart", "what is a kidney"]),
            model.tokenize(["heart", "kidney"]),
        ]
        loss = loss_fn(features, torch.tensor([]))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}  # not the pooler
        results.append((loss.detach(), grads))
    (loss0, grads0), (loss1, grads1) = results
    assert torch.allclose(loss0, loss1, atol=1e-6)
    assert grads0.keys() == grads1.keys()
    for name in grads0:
        assert torch.allclose(grads0[name], grads1[name], atol=1e-6), name
    assert all(grads1[n].abs().sum() > 0 for n in grads1 if "lora_B" in n)


@pytest.mark.integration
def test_gradient_checkpointing_in_the_finetune_stage_trains_the_adapter(tmp_path, tiny_model, tiny_qa, tiny_nanobeir):
    cfg = _cfg(
        tmp_path, tiny_model, tiny_qa, tiny_nanobeir, ["train.gradient_checkpointing=true", "run.until=finetune"]
    )
    assert run_dag(cfg)["finetune"].result["gradient_checkpointing"] is True


@pytest.mark.integration
def test_an_adapter_that_did_not_move_fails(tmp_path, tiny_model, tiny_qa, tiny_nanobeir):
    """One step inside the warmup runs at learning rate 0: nothing moves, and the run says so instead of finishing."""
    cfg = _cfg(tmp_path, tiny_model, tiny_qa, tiny_nanobeir, ["train.max_steps=1", "run.until=finetune"])
    with pytest.raises(RunError, match="the adapter did not train: all .* weight tensors still equal"):
        run_dag(cfg)


@pytest.mark.integration
def test_a_full_finetune_that_did_not_move_fails(tmp_path, tiny_model, tiny_qa, tiny_nanobeir):
    cfg = _cfg(
        tmp_path, tiny_model, tiny_qa, tiny_nanobeir, ["finetune=full", "train.max_steps=1", "run.until=finetune"]
    )
    with pytest.raises(RunError, match="the fine-tune did not train: its embeddings"):
        run_dag(cfg)


def test_attn_implementation_is_checked(tiny_cfg):
    from pipeline.validate import _check_attn_implementation

    _check_attn_implementation("sdpa")
    with pytest.raises(ConfigError, match="model.attn_implementation=fast is not allowed"):
        _check_attn_implementation("fast")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="flash_attention_2 is not available here"):
            _check_attn_implementation("flash_attention_2")


def test_gradient_checkpointing_leaves_the_finetune_key(tiny_cfg):
    """Memory, not results: a run with checkpointing reuses the fine-tune of one without."""
    from pipeline.dag import STAGES, stage_key

    stage = STAGES["finetune"]
    plain, checkpointed = tiny_cfg(), tiny_cfg(["train.gradient_checkpointing=true"])
    assert stage_key(stage, plain, {"prepare_data": "k"}, {}) == stage_key(
        stage, checkpointed, {"prepare_data": "k"}, {}
    )


def test_run_names_say_targets_other_than_the_default():
    from pipeline.adapter_configs import run_name

    names = {
        targets: run_name(compose_config(["finetune=lora", "finetune.r=4", "finetune.alpha=8", targets]).finetune)
        for targets in (
            "finetune.target_modules=all-linear",
            "finetune.target_modules=[query,value]",
            "finetune.target_modules=null",
        )
    }
    assert list(names.values()) == ["lora-r4-a8", "lora-r4-a8-query+value", "lora-r4-a8-peft-default"]


def test_the_memory_check_refuses_a_batch_that_cannot_fit(tmp_path, tiny_model, tiny_qa, tiny_nanobeir):
    """Plain MNRL keeps every text's graph: a million-row batch needs far more than this machine has, and the run
    stops in one line, with the numbers and the keys to change, before any stage runs."""
    from pipeline.memory import MemoryLimitError

    cfg = _cfg(tmp_path, tiny_model, tiny_qa, tiny_nanobeir, ["train.loss=mnrl", "train.batch_size=1000000"])
    with pytest.raises(MemoryLimitError, match=r"needs about .* and .* is free: .*train\.gradient_checkpointing"):
        run_dag(cfg)
    assert not (tmp_path / "outputs" / "cache" / "prepare_data").exists()


def test_the_memory_estimate_counts_what_trains(tmp_path, tiny_model, tiny_qa, tiny_nanobeir):
    """Weights in model.dtype; gradients and AdamW's two fp32 states for what trains; activations for the tokens the
    loss embeds with gradients at once, fewer with checkpointing."""
    from pipeline.disk import trainable_count, weight_shapes
    from pipeline.memory import estimate

    def of(*extra):
        return estimate(_cfg(tmp_path, tiny_model, tiny_qa, tiny_nanobeir, list(extra)), tiny_model, "cpu", "fp32")

    params = sum(math.prod(s) for s in weight_shapes(tiny_model).values())
    full = of("finetune=full", "train.loss=mnrl")
    assert (full.weights, full.gradients, full.optimizer) == (4 * params, 4 * params, 8 * params)
    assert of("finetune=full", "train.loss=mnrl", "model.dtype=bfloat16").weights == 2 * params
    lora_cfg = _cfg(tmp_path, tiny_model, tiny_qa, tiny_nanobeir, ["train.loss=mnrl"])
    adapter = trainable_count(weight_shapes(tiny_model), lora_cfg.finetune, tiny_model)
    lora = of("train.loss=mnrl")
    assert (lora.gradients, lora.optimizer) == (4 * adapter, 8 * adapter) and 0 < adapter < params
    assert lora.weights == 4 * params + 4 * adapter  # the frozen base and the adapter beside it
    assert lora.activations > full.activations  # LoRA's dropout keeps a copy of each adapted layer's input
    assert full.tokens == 8 * 2 * 32  # batch 8 x (question, answer) x max_seq_length
    assert of("finetune=full", "train.loss=mnrl", "train.gradient_checkpointing=true").activations <= full.activations
    deep = build_tiny_model(tmp_path / "deep", num_hidden_layers=12)  # checkpointing pays off past a few layers
    plain, checkpointed = (
        estimate(
            _cfg(tmp_path, deep, tiny_qa, tiny_nanobeir, ["finetune=full", "train.loss=mnrl", *extra]),
            deep,
            "cpu",
            "fp32",
        )
        for extra in ([], ["train.gradient_checkpointing=true"])
    )
    assert checkpointed.activations < plain.activations / 2
    assert of("finetune=full", "train.mini_batch_size=2").tokens == 2 * 32


@pytest.mark.slow
@pytest.mark.integration
def test_make_decide_on_a_bf16_decoder_with_prompts_and_mined_negatives(tmp_path, tiny_decoder, tiny_qa, tiny_nanobeir):
    """The issue's end to end: make decide (shrunk) on a Qwen3-style model saved in bf16, with its query prompt and
    negatives mined with the base model: every run trained fp32 parameters with the prompt the evaluators used,
    LoRA on every linear layer, and the memory check let it through."""
    from tests.sweep.test_decide import _decide

    proc, client, parent, runs = _decide(
        tmp_path, (tiny_decoder, tiny_qa, tiny_nanobeir), "hydra.sweeper.decide.extend=0", "data.mine.enabled=true"
    )
    assert "[pipeline] mine_negatives ran" in " ".join(proc.stderr.split())
    assert parent.data.tags.get("verdict") and runs
    for run in runs:
        tags, params = run.data.tags, run.data.params
        assert tags["trainable_dtype"] == "float32" and tags["prompt.query"] == QUERY_PROMPT, run.info.run_name
        if params["finetune.method"] == "lora":
            assert params["finetune.target_modules"] == "all-linear"
    # the report says which prompts and dtype every run trained and was evaluated with
    from pipeline.report.compare import main as report

    sweep = parent.data.tags["sweep_id"]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert report(["--sweep-id", sweep, "--tracking-uri", uri, "--out", str(tmp_path / "report"), "--no-log"]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert f"(`train.prompts`): query {QUERY_PROMPT!r}; document '(none)'." in text
    assert "Trained parameters' dtype (`model.dtype`): float32." in text


def test_the_report_says_which_prompts_and_dtype_the_runs_had():
    from pipeline.report.load import Arm
    from pipeline.report.render import _inputs_line

    prompts = {"query": QUERY_PROMPT, "document": "(none)"}
    rows = [Arm(m, m, "FINISHED", prompts=prompts, trainable_dtype="float32") for m in ("lora", "full")]
    line = _inputs_line([*rows, Arm("baseline", "none", "")])
    assert f"(`train.prompts`): query {QUERY_PROMPT!r}; document '(none)'. Trained" in line and "float32." in line
    rows[1].prompts = {"query": "(none)", "document": "(none)"}
    assert " | " in _inputs_line(rows)  # runs that differ are all named
