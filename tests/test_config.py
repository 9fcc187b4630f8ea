"""The experiment configs encode their recipes exactly, and the launcher / search configs compose."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from tests.conftest import ROOT, compose_config

PAPER = {
    "model.name": "google-bert/bert-base-uncased",
    "model.card_language": "en",
    "model.card_license": "apache-2.0",
    "data.path": "sentence-transformers/gooaq",
    "data.eval_size": 10_000,
    "data.seed": 12,
    "data.train_size": 1_000_000,
    "train.loss": "cached_mnrl",
    "train.mini_batch_size": "auto",  # the recipe's 32 is a memory setting: auto gives the same gradients
    "train.epochs": 1.0,
    "train.max_steps": None,
    "train.batch_size": 1024,
    "train.eval_batch_size": 1024,
    "train.lr": 2e-5,
    "train.warmup_ratio": 0.1,
    "train.precision": "bf16",
    "train.eval_steps": 100,
    "train.save_steps": 100,
    "train.save_total_limit": 2,
    "train.logging_steps": 25,
    "train.seed": 42,  # the reference sets none: the Trainer's default
    "eval.dataset_id": "sentence-transformers/NanoBEIR-en",
    "eval.datasets": None,  # all 13
    "eval.during_training": True,
}
LORA = {
    "finetune.method": "lora",
    "finetune.r": 64,
    "finetune.alpha": 128,
    "finetune.dropout": 0.1,
    "finetune.target_modules": ["query", "value"],  # the recipe's: peft's BERT default, not the protocol's all-linear
}


def _values(cfg, keys):
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    out = {}
    for key in keys:
        node = container
        for part in key.split("."):
            node = node[part]
        out[key] = node
    return out


@pytest.mark.parametrize(
    "experiment, expected",
    [
        (
            "paper_lora",  # named by method: one experiment serves both arms; a sweep's command line gives the targets
            {**PAPER, **LORA, "finetune.target_modules": "all-linear", "model.card_model_name": None},
        ),
        (
            "paper_full",
            {**PAPER, "finetune.method": "full", "model.card_model_name": None},
        ),
        ("paper_lora_mnrl", {**PAPER, **LORA, "train.loss": "mnrl"}),
        ("paper_full_mnrl", {**PAPER, "finetune.method": "full", "train.loss": "mnrl"}),
    ],
)
def test_paper_experiments_encode_the_recipe(experiment, expected):
    cfg = compose_config([f"experiment={experiment}"])
    assert _values(cfg, expected) == expected


def test_the_paper_seed_is_the_trainers_default():
    """The reference script sets no seed, so transformers' default decides: the paper configs must use that one."""
    import dataclasses

    from transformers import TrainingArguments

    default = next(f.default for f in dataclasses.fields(TrainingArguments) if f.name == "seed")
    assert compose_config(["experiment=paper_lora"]).train.seed == default


def test_lora_with_default_targets_adapts_query_and_value(tiny_model):
    """`finetune.target_modules=null` (the paper's) puts the adapter on BERT's query and value layers, as peft's
    default does in the reference script; checked on the adapter our finetune code builds, not on a peft constant."""
    from peft import LoraConfig, TaskType
    from sentence_transformers import SentenceTransformer

    cfg = compose_config(["experiment=paper_lora_mnrl"])
    model = SentenceTransformer(str(tiny_model))
    target = list(cfg.finetune.target_modules) if cfg.finetune.target_modules else None
    model.add_adapter(LoraConfig(task_type=TaskType.FEATURE_EXTRACTION, r=4, lora_alpha=8, target_modules=target))
    adapted = {
        name.rsplit(".", 1)[-1]
        for name, _ in model.named_modules()
        if name.endswith(("query", "value", "key", "dense")) and any("lora_A" in n for n, _ in _.named_children())
    }
    assert adapted == {"query", "value"}


def test_the_reproductions_train_the_recipes_lora_targets():
    """paper_lora and mini_paper_lora serve both arms of a sweep (a full job cannot take finetune.* keys from them):
    make reproduce and make reproduce-mini give the recipe's targets on their command lines, where full jobs drop them."""
    makefile = (ROOT / "Makefile").read_text()
    for target in ("reproduce:", "reproduce-mini:"):
        recipe = makefile.split("\n" + target, 1)[1].split("\n\n", 1)[0]
        assert "finetune.target_modules=[query,value]" in recipe, target


@pytest.mark.parametrize("experiment", ["mini_paper_lora", "mini_paper_full", "demo"])
def test_scaled_experiments_keep_the_recipe_but_the_size(experiment):
    cfg = compose_config([f"experiment={experiment}"])
    assert cfg.model.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert cfg.train.loss == "cached_mnrl" and cfg.train.warmup_ratio == 0.1
    assert cfg.train.precision == "auto"  # the hardware decides: fp32 on these CPUs


def hydra_config(*overrides: str):
    """The `hydra` node the CLI composes for these overrides (`--cfg all`: launchers and sweepers included, and the
    job's config beside it, which the launcher's interpolations such as `${launch.processes_per_job}` read)."""
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", *overrides, "--cfg", "all"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return OmegaConf.create(out.stdout)["hydra"]


@pytest.mark.parametrize(
    "launcher, key, value",
    [
        ("submitit_slurm", "_target_", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
        ("slurm", "gpus_per_node", "1"),
        ("slurm launch.processes_per_job=2", "gpus_per_node", "2"),  # one task, N GPUs for torchrun's N processes
        ("joblib", "_target_", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
    ],
)
@pytest.mark.integration
def test_launcher_configs_compose(launcher, key, value):
    launcher, *overrides = launcher.split()
    hydra = hydra_config("sweep=lora_grid", f"hydra/launcher={launcher}", *overrides)
    assert str(hydra["launcher"][key]) == value
    assert hydra["sweeper"]["_target_"].endswith("LoraVsFullSweeper")


@pytest.mark.integration
def test_optuna_search_maximises_ndcg():
    hydra = hydra_config("hparams_search=optuna")
    sweeper = hydra["sweeper"]
    assert sweeper["direction"] == "maximize"
    assert set(sweeper["params"]) == {"finetune.r", "finetune.alpha", "train.lr"}
