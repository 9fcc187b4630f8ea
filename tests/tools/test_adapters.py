"""Adapters on the tiny BERT, nothing trained: lora_B is perturbed so every adapter changes the embeddings.

The eight adapter methods of SentenceTransformer, many adapters evaluated on one base, merging, and loading an
adapter whose recorded base (a Hub id) cannot be reached.
"""

from __future__ import annotations

import json
import math

import huggingface_hub
import pytest
import torch
from peft import LoraConfig, TaskType
from sentence_transformers import SentenceTransformer

from pipeline.config import EvalConfig, ModelConfig
from pipeline.evaluation.st_backend import evaluate
from pipeline.models import adapter_facts
from pipeline.tools.adapters import evaluate_adapters, load_with_local_base
from pipeline.tools.export import SENTENCES, main, merge_adapter

TARGETS = ["query", "value"]
R = 4
PREDICTIONS = "Information-Retrieval_evaluation_NanoSciFact_predictions_cosine.jsonl"


def lora_config(targets=TARGETS) -> LoraConfig:
    return LoraConfig(task_type=TaskType.FEATURE_EXTRACTION, r=R, lora_alpha=8, target_modules=list(targets))


def perturb(model: SentenceTransformer, adapter_name: str, seed: int) -> None:
    """Give the adapter's lora_B (zeros at init) random values, so that the adapter does something."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.transformers_model.named_parameters():
            if f"lora_B.{adapter_name}." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


def embed(model: SentenceTransformer) -> torch.Tensor:
    return model.encode(SENTENCES, convert_to_tensor=True)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def adapter_dirs(tiny_model, tmp_path_factory) -> dict:
    """Two saved adapters of the tiny model: `qv` on query/value, `all_linear` on every linear layer.

    (A name inside the base's weight names, like `a`, makes transformers print a spurious MISSING-keys report.)
    """
    root = tmp_path_factory.mktemp("adapters")
    dirs = {}
    for seed, (name, targets) in enumerate({"qv": TARGETS, "all_linear": ["query", "key", "value", "dense"]}.items()):
        model = SentenceTransformer(str(tiny_model))
        model.add_adapter(lora_config(targets))
        perturb(model, "default", seed)
        model.save_pretrained(str(root / name))
        dirs[name] = root / name
    return dirs


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`:UserWarning")  # a second adapter, on purpose
def test_eight_adapter_methods(tiny_model, tmp_path):
    model = SentenceTransformer(str(tiny_model))
    base = embed(model)

    # add_adapter: two named adapters; the last one added is the active one
    model.add_adapter(lora_config(), adapter_name="first")
    model.add_adapter(lora_config(), adapter_name="second")
    assert set(model.transformers_model.peft_config) == {"first", "second"}
    assert max_diff(embed(model), base) == 0.0  # lora_B starts at zero: a fresh adapter changes nothing
    perturb(model, "first", seed=1)
    perturb(model, "second", seed=2)

    # set_adapter / active_adapters
    model.set_adapter("first")
    assert model.active_adapters() == ["first"]
    first = embed(model)
    model.set_adapter("second")
    assert model.active_adapters() == ["second"]
    second = embed(model)
    assert max_diff(first, base) > 1e-3 and max_diff(second, base) > 1e-3 and max_diff(first, second) > 1e-3

    # disable_adapters: the base model's embeddings; enable_adapters: the active adapter's again
    model.disable_adapters()
    assert max_diff(embed(model), base) == 0.0
    model.enable_adapters()
    assert max_diff(embed(model), second) == 0.0

    # get_adapter_state_dict: only lora_A / lora_B of the targeted modules, r x in and out x r
    state = model.get_adapter_state_dict("first")
    assert len(state) == 2 * len(TARGETS) * 2  # (A, B) x targets x 2 layers
    for key, tensor in state.items():
        module, matrix, _ = key.rsplit(".", 2)
        assert module.rsplit(".", 1)[1] in TARGETS and matrix in ("lora_A", "lora_B"), key
        assert tuple(tensor.shape) == ((R, 32) if matrix == "lora_A" else (32, R))
    facts = adapter_facts(model, "first")
    assert facts["adapter_params"] == sum(t.numel() for t in state.values()) == 2 * len(TARGETS) * 2 * R * 32
    assert math.isclose(facts["adapter_mb"], facts["adapter_params"] * 4 / 1e6)  # fp32

    # save + load_adapter into a fresh base: the same embeddings
    model.set_adapter("first")
    model.save_pretrained(str(tmp_path / "first"))
    fresh = SentenceTransformer(str(tiny_model))
    fresh.load_adapter(str(tmp_path / "first"), adapter_name="first")
    assert fresh.active_adapters() == ["first"]
    assert max_diff(embed(fresh), first) == 0.0

    # delete_adapter: gone from the model's adapters; the other one still works
    model.delete_adapter("second")
    assert list(model.transformers_model.peft_config) == ["first"]
    assert model.active_adapters() == ["first"]
    assert max_diff(embed(model), first) == 0.0
    with pytest.raises(ValueError):
        model.set_adapter("second")


def test_evaluate_adapters_on_one_base_equals_separate_models(tiny_model, tiny_nanobeir, adapter_dirs, tmp_path):
    model_cfg = ModelConfig(name=str(tiny_model), max_seq_length=32)
    eval_cfg = EvalConfig(dataset_id=str(tiny_nanobeir), datasets=["scifact", "msmarco"], batch_size=16)
    shared = evaluate_adapters(model_cfg, eval_cfg, adapter_dirs, tmp_path / "shared")
    separate = {"baseline": evaluate(SentenceTransformer(str(tiny_model)), eval_cfg, tmp_path / "sep" / "baseline")}
    for name, adapter_dir in adapter_dirs.items():
        separate[name] = evaluate(SentenceTransformer(str(adapter_dir)), eval_cfg, tmp_path / "sep" / name)

    assert list(shared) == ["baseline", "qv", "all_linear"]
    for name in shared:
        metrics = json.loads((tmp_path / "shared" / name / "metrics.json").read_text())
        reference = json.loads((tmp_path / "sep" / name / "metrics.json").read_text())
        assert metrics.keys() == reference.keys()
        worst = max(abs(metrics[k] - reference[k]) for k in metrics)
        print(f"{name}: NDCG@10 {shared[name]['ndcg_at_10']:.4f}, max metric diff vs separate model {worst:.2g}")
        assert worst <= 1e-6, name
        assert (tmp_path / "shared" / name / "per_query.json").is_file()
    # the adapters did change the rankings, so the equality above compared three different models
    rankings = {n: (tmp_path / "shared" / n / PREDICTIONS).read_text() for n in shared}
    assert rankings["qv"] != rankings["baseline"] and rankings["all_linear"] != rankings["baseline"]


def test_merge_adapter(adapter_dirs, tmp_path, capsys):
    adapter_model = SentenceTransformer(str(adapter_dirs["all_linear"]))
    result = main([str(adapter_dirs["all_linear"]), str(tmp_path / "merged")])
    assert "wrote merged model to" in capsys.readouterr().out
    assert result["max_abs_diff"] <= 1e-5

    files = {p.name for p in (tmp_path / "merged").iterdir()}
    assert "model.safetensors" in files
    assert not files & {"adapter_config.json", "adapter_model.safetensors", "pytorch_model.bin", "model.bin"}
    merged = SentenceTransformer(str(tmp_path / "merged"))
    assert not merged.has_peft_compatible_model() or not getattr(merged.transformers_model, "peft_config", None)
    assert merged.max_seq_length == adapter_model.max_seq_length
    assert max_diff(embed(merged), embed(adapter_model)) <= 1e-5
    with pytest.raises(FileExistsError):
        merge_adapter(adapter_dirs["all_linear"], adapter_dirs["all_linear"])


def test_load_with_local_base_when_recorded_base_is_unreachable(tiny_model, adapter_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once, at import
    portable = tmp_path / "portable"
    portable.mkdir()
    for path in adapter_dirs["qv"].rglob("*"):
        if path.is_file():
            (portable / path.relative_to(adapter_dirs["qv"])).parent.mkdir(parents=True, exist_ok=True)
            (portable / path.relative_to(adapter_dirs["qv"])).write_bytes(path.read_bytes())
    config_path = portable / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = "sentence-transformers/tiny-bert-that-is-not-on-the-hub"
    config_path.write_text(json.dumps(config))

    with pytest.raises((OSError, ValueError)):
        SentenceTransformer(str(portable))  # looks for the recorded base
    model = load_with_local_base(portable, tiny_model)
    reference = SentenceTransformer(str(adapter_dirs["qv"]))
    assert model.max_seq_length == reference.max_seq_length == 32
    assert max_diff(embed(model), embed(reference)) == 0.0
    merged = merge_adapter(portable, tmp_path / "merged", base_path=tiny_model)
    assert merged["max_abs_diff"] <= 1e-5
