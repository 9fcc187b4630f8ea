"""Every adapter method `finetune=<method>` offers, on the tiny BERT: trained two steps by the finetune stage,
saved adapter-only, loaded back three ways with identical embeddings, merged where peft can; the refused methods."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, TaskType, VeraConfig
from sentence_transformers import SentenceTransformer

from pipeline.adapter_configs import REFUSED, SCHEMAS, Method, run_name
from pipeline.dag import run_dag
from pipeline.models import load_model
from pipeline.peft_methods import MERGEABLE, linear_modules, peft_config, save_adapter_fixes
from pipeline.sweep.grid import lora_vs_full_jobs
from pipeline.tools.export import SENTENCES, main, merge_adapter
from tests.conftest import compose_config, tiny_method, tiny_overrides

ADAPTERS = [m.value for m in Method if m != Method.full]
PEFT_TYPE = {"lora": "LORA", "dora": "LORA", "rslora": "LORA", "ia3": "IA3", "loha": "LOHA", "lokr": "LOKR"}


def method_cfg(root, tiny_model, tiny_qa, tiny_nanobeir, method: str, *extra: str):
    overrides = tiny_overrides(root, tiny_model, tiny_qa, tiny_nanobeir) + [f"finetune={method}"]
    return compose_config(overrides + tiny_method(overrides) + ["train.eval_steps=null", *extra])


@pytest.fixture(scope="module")
def trained(tiny_model, tiny_qa, tiny_nanobeir, tmp_path_factory) -> dict:
    """Each method trained for two steps by the pipeline's own finetune stage; its output dir and summary."""
    root = tmp_path_factory.mktemp("methods")
    out = {}
    for method in ADAPTERS:
        cfg = method_cfg(root, tiny_model, tiny_qa, tiny_nanobeir, method, "run.until=finetune")
        stage = run_dag(cfg)["finetune"]
        out[method] = (cfg, stage.dir / "model", stage.result)
    return out


def embed(model: SentenceTransformer) -> torch.Tensor:
    return model.encode(SENTENCES, convert_to_tensor=True)


def peft_attached(base_dir, adapter_dir) -> torch.Tensor:
    """Embeddings with the adapter loaded by peft's own PeftModel.from_pretrained (not transformers' load_adapter)."""
    model = SentenceTransformer(str(base_dir))
    model[0].model = PeftModel.from_pretrained(model.transformers_model, str(adapter_dir))
    return embed(model)


@pytest.mark.integration  # its module-scoped fixture trains / starts a process
@pytest.mark.parametrize("method", ADAPTERS)
def test_two_steps_save_the_adapter_only(method, trained):
    cfg, model_dir, summary = trained[method]
    files = {p.name for p in model_dir.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= files and "model.safetensors" not in files
    config = json.loads((model_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == summary["peft_type"] == PEFT_TYPE[method]
    assert config.get("use_dora", False) == (method == "dora") and config.get("use_rslora", False) == (
        method == "rslora"
    )
    assert summary["global_step"] == 2 and summary["method"] == method
    assert 0 < summary["trainable_params"] < summary["total_params"]
    assert summary["hyperparameters"] == {
        k: v for k, v in json.loads(json.dumps(dict(cfg.finetune), default=str)).items() if k != "method"
    }
    assert summary["reload_max_abs_diff"] <= 1e-4  # the stage's own check: the save reproduces the trained model


@pytest.mark.integration  # its module-scoped fixture trains / starts a process
@pytest.mark.parametrize("method", ADAPTERS)
def test_reload_three_ways_gives_identical_embeddings(method, trained, tiny_model):
    _, model_dir, _ = trained[method]
    direct = embed(SentenceTransformer(str(model_dir)))  # the recorded base is the local tiny model
    base = SentenceTransformer(str(tiny_model))
    untrained = embed(base)
    base.load_adapter(str(model_dir))
    assert (embed(base) - direct).abs().max().item() == 0.0
    # peft's own loader agrees: transformers' load_adapter did not drop a tensor (DoRA's magnitudes did, unfixed)
    assert (peft_attached(tiny_model, model_dir) - direct).abs().max().item() <= 1e-6
    assert (direct - untrained).abs().max().item() > 1e-5  # two steps moved it: the equalities compared a change


@pytest.mark.integration  # its module-scoped fixture trains / starts a process
@pytest.mark.parametrize("method", ADAPTERS)
def test_merge_equals_the_attached_adapter(method, trained, tiny_model, tmp_path):
    cfg, model_dir, _ = trained[method]
    assert PEFT_TYPE[method] in MERGEABLE
    attached = embed(SentenceTransformer(str(model_dir)))
    result = merge_adapter(model_dir, tmp_path / "merged")
    merged = SentenceTransformer(str(tmp_path / "merged"))
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    assert result["max_abs_diff"] <= 1e-5 and (embed(merged) - attached).abs().max().item() <= 1e-5
    # what the evaluate stage scores: base + adapter merged in memory
    assert (embed(load_model(cfg.model, str(model_dir), merge=True)) - attached).abs().max().item() <= 1e-5


@pytest.mark.integration  # its module-scoped fixture trains / starts a process
def test_dora_needs_its_save_fix(trained, tiny_model, tmp_path):
    """Without the key fix, transformers' load_adapter leaves DoRA's magnitudes untrained: a different model."""
    _, model_dir, _ = trained["dora"]
    reference = peft_attached(tiny_model, model_dir)
    model = SentenceTransformer(str(tiny_model))
    model.load_adapter(str(model_dir))  # the trained adapter, saved again as sentence-transformers saves it
    model.save_pretrained(str(tmp_path / "raw"))
    assert (embed(SentenceTransformer(str(tmp_path / "raw"))) - reference).abs().max().item() > 1e-5
    save_adapter_fixes(tmp_path / "raw")
    assert (embed(SentenceTransformer(str(tmp_path / "raw"))) - reference).abs().max().item() <= 1e-6


@pytest.mark.parametrize("method", ADAPTERS)
def test_all_linear_targets_every_linear_layer(method, tiny_model, tiny_qa, tiny_nanobeir, tmp_path):
    cfg = method_cfg(tmp_path, tiny_model, tiny_qa, tiny_nanobeir, method, "finetune.target_modules=all-linear")
    model = SentenceTransformer(str(tiny_model))
    linear = set(linear_modules(model.transformers_model))
    model.add_adapter(peft_config(cfg.finetune, model.transformers_model))
    modules = dict(model.transformers_model.named_modules())
    adapted = {name for name in linear if f"{name}.base_layer" in modules}
    assert adapted == linear and len(linear) == 13  # 6 per layer x 2 layers + the pooler
    config = model.transformers_model.peft_config["default"]
    if method == "ia3":  # peft's BERT default for feedforward (output.dense), among every linear layer
        assert config.feedforward_modules == {n for n in linear if n.endswith("output.dense")}
    expected = method if method == "ia3" else f"{method}-r4-a8"  # all-linear: the LoRA family's default, unnamed
    assert run_name(cfg.finetune) == (f"{expected}-all-linear" if method == "ia3" else expected)


def test_run_names_and_schemas(tiny_model, tiny_qa, tiny_nanobeir, tmp_path):
    names = {m: run_name(method_cfg(tmp_path, tiny_model, tiny_qa, tiny_nanobeir, m.value).finetune) for m in SCHEMAS}
    assert names == {
        Method.lora: "lora-r4-a8",
        Method.dora: "dora-r4-a8",
        Method.rslora: "rslora-r4-a8",
        Method.ia3: "ia3",
        Method.loha: "loha-r4-a8",
        Method.lokr: "lokr-r4-a8",
        Method.full: "full",
    }
    # peft's documented defaults, where the yaml does not set the recipe's values
    peft_defaults = compose_config(["finetune=lokr"]).finetune
    assert (peft_defaults.r, peft_defaults.alpha, peft_defaults.rank_dropout, peft_defaults.decompose_factor) == (
        8,
        8,
        0.0,
        -1,
    )


def test_a_sweep_mixes_methods_each_with_its_own_keys():
    grid = [
        [f"finetune={m}", f"finetune.r={r}", "finetune.alpha=2r"]
        for m in ("lora", "ia3", "dora", "full")
        for r in (4, 8)
    ]
    assert lora_vs_full_jobs(grid) == [
        ["finetune=lora", "finetune.r=4", "finetune.alpha=8"],
        ["finetune=lora", "finetune.r=8", "finetune.alpha=16"],
        ["finetune=ia3"],
        ["finetune=dora", "finetune.r=4", "finetune.alpha=8"],
        ["finetune=dora", "finetune.r=8", "finetune.alpha=16"],
        ["finetune=full"],
    ]


def test_vera_is_refused_because_add_adapter_cannot_inject_it(tiny_model):
    model = SentenceTransformer(str(tiny_model))
    with pytest.raises(ValueError, match="shared state"):  # what REFUSED["vera"] says: still true of this peft?
        model.add_adapter(VeraConfig(task_type=TaskType.FEATURE_EXTRACTION, r=8))
    assert "inject_adapter_in_model" in REFUSED["vera"]


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_pissa_and_olora_change_the_base_weights(init, tiny_model):
    """Why they are refused: after add_adapter the base weights differ, so an adapter-only save is not the model."""
    model = SentenceTransformer(str(tiny_model))
    before = {n: p.detach().clone() for n, p in model.transformers_model.named_parameters()}
    model.add_adapter(LoraConfig(task_type=TaskType.FEATURE_EXTRACTION, r=4, init_lora_weights=init))
    after = dict(model.transformers_model.named_parameters())
    changed = [n for n, w in before.items() if n.replace(".weight", ".base_layer.weight") in after]
    changed = [n for n in changed if not torch.equal(after[n.replace(".weight", ".base_layer.weight")], before[n])]
    assert changed, "the base weights did not change: the refusal's reason would be wrong"
    assert "changes the base weights" in REFUSED[init]


def test_export_refuses_an_adapter_peft_cannot_merge(tiny_model, tmp_path, capsys):
    foreign = tmp_path / "vera"  # a VeRA adapter saved elsewhere (peft's own get_peft_model can train one)
    foreign.mkdir()
    config = {"peft_type": "VERA", "r": 256, "base_model_name_or_path": str(tiny_model), "target_modules": ["query"]}
    (foreign / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit) as exit_info:
        main([str(foreign), str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "VERA adapter, which peft cannot merge" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.integration
def test_a_mixed_sweep_compares_in_one_report(tmp_path, tiny_model, tiny_qa, tiny_nanobeir):
    from pipeline.report.compare import compare
    from tests.sweep.test_sweeper import _sweep

    args = ("finetune=lora,ia3,dora,full", "finetune.r=4", "finetune.alpha=8", "train.eval_steps=null")
    proc, client, parent, children = _sweep(tmp_path, tiny_model, tiny_qa, tiny_nanobeir, *args)
    names = sorted(r.info.run_name for r in children)
    suffix = "-lr1e-3-s12"  # the tiny config's learning rate and seed: the grid only, no replicates
    assert names == [f"{n}{suffix}" for n in ("dora-r4-a8", "full", "ia3", "lora-r4-a8")]
    assert all(r.info.status == "FINISHED" for r in children)
    dora = next(r for r in children if r.info.run_name == f"dora-r4-a8{suffix}")
    assert dora.data.tags["method"] == "dora" and dora.data.tags["method.alpha"] == "8"
    card = Path(client.download_artifacts(dora.info.run_id, "model/README.md", str(tmp_path))).read_text()
    assert "DoRA adapter (peft LoraConfig, use_dora=True)" in card and "| `finetune.r` | 4 |" in card
    report = compare(f"sqlite:///{tmp_path}/mlflow.db", parent.data.tags["sweep_id"], out_dir=tmp_path / "report")
    rows = {row["name"]: row for row in report["rows"]}
    assert {rows[n]["method"] for n in names} == {"lora", "ia3", "dora", "full"}
    ia3 = rows[f"ia3{suffix}"]
    assert ia3["params"]["target_modules"] == "None" and ia3["r"] is None
    adapters = [rows[f"{n}{suffix}"] for n in ("dora-r4-a8", "ia3", "lora-r4-a8")]
    assert all(r["delta_vs_full"] is not None for r in adapters)  # each vs full
    # the adapter facing the full fine-tune: the best on dev across methods (a tie: fewer params), not among LoRA only
    best = max(adapters, key=lambda r: (r["dev_ndcg_at_10"], -r["trainable_params"]))
    assert report["verdict"]["adapter"] == best["name"].removesuffix("-s12")


def method_tables(root: Path) -> list[str]:
    """`path:line` of each collection literal (dict, set, list, tuple) naming two or more PEFT methods, and of each
    comparison with a PEFT method's name (but lora's, the default), in the modules under `root` but the registry
    (pipeline/adapter_configs.py): a second list of methods, or a branch on one, that adding a method would edit."""
    import ast

    names = {m.value for m in Method} - {Method.full.value}

    def method_name(node) -> str | None:
        if isinstance(node, ast.Constant) and node.value in names:
            return node.value
        if isinstance(node, ast.Attribute) and node.attr in names and getattr(node.value, "id", "") == "Method":
            return node.attr
        return None

    found = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "adapter_configs.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            items = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", None)
            if (
                isinstance(node, (ast.Dict, ast.Set, ast.List, ast.Tuple))
                and len({method_name(i) for i in items} - {None}) >= 2
            ):
                found.append(f"{path.relative_to(root.parent).as_posix()}:{node.lineno}")
            compared = {method_name(c) for c in [node.left, *node.comparators]} if isinstance(node, ast.Compare) else ()
            if set(compared) - {None, Method.lora.value}:  # lora: the default, which the report orders first
                found.append(f"{path.relative_to(root.parent).as_posix()}:{node.lineno}")
    return found


def test_adding_a_method_is_one_registry_entry_and_one_yaml(tmp_path):
    from pipeline.adapter_configs import METHODS

    yamls = {p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "finetune").glob("*.yaml")}
    assert set(METHODS) == set(Method) and {m.value for m in Method} == yamls
    assert MERGEABLE == {"LORA", "IA3", "LOHA", "LOKR"} and all(METHODS[Method(m)].trains for m in yamls)
    root = Path(__file__).resolve().parents[1]
    assert method_tables(root / "pipeline") == [] and method_tables(root / "hydra_plugins") == []
    # the scan finds the shapes it forbids: a table keyed by methods, a tuple of names, a branch on one
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "card.py").write_text(
        "NAMES = {Method.lora: 'LoRA', Method.dora: 'DoRA'}\nRANKED = ('lora', 'loha')\nFULL = {'full': 1, 'lora': 2}\n"
        "def count(m):\n    return 2 if m == 'loha' else 1\n"
    )
    assert method_tables(tmp_path / "pkg") == ["pkg/card.py:1", "pkg/card.py:2", "pkg/card.py:5"]
