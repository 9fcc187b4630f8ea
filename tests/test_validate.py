"""Bad input: a one-line error naming the bad value and what is allowed, exit 2, no traceback, nothing left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

HEAVY = {"torch", "transformers", "sentence_transformers", "peft"}  # no model can load before the error
CASES = {
    "r zero": (["finetune.r=0"], "finetune.r=0", ">= 1"),
    "r negative": (["finetune.r=-4"], "finetune.r=-4", ">= 1"),
    "alpha zero": (["finetune.alpha=0"], "finetune.alpha=0", "> 0"),
    "dropout one": (["finetune.dropout=1.0"], "finetune.dropout=1.0", "[0, 1)"),
    "dropout negative": (["finetune.dropout=-0.1"], "finetune.dropout=-0.1", "[0, 1)"),
    "unknown method": (["finetune=qlora"], "finetune=qlora", "allowed: dora, full, ia3, loha, lokr, lora, rslora"),
    "method key": (["finetune.method=qlora"], "qlora", "expected one of [lora, dora, rslora, ia3, loha, lokr, full]"),
    "method over another's config": (["finetune=ia3", "finetune.method=lora"], "finetune.method=lora", "IA3Finetune"),
    "vera refused": (["finetune=vera"], "finetune=vera is not supported", "shared random projections"),
    "adalora refused": (["finetune=lora,adalora"], "finetune=adalora", "update_and_allocate"),
    "pissa refused": (["finetune=pissa"], "finetune=pissa", "changes the base weights"),
    "key of another method": (["finetune=ia3", "finetune.r=8"], "finetune.r", "not in 'IA3Finetune'"),
    "full has no rank": (["finetune=full", "finetune.alpha=8"], "finetune.alpha", "not in 'FullFinetune'"),
    "lokr rank zero": (["finetune=lokr", "finetune.r=0"], "finetune.r=0", "finetune=lokr"),
    "loha dropout": (["finetune=loha", "finetune.module_dropout=1.0"], "finetune.module_dropout=1.0", "[0, 1)"),
    "target string": (["finetune.target_modules=every-linear"], "finetune.target_modules=every-linear", "all-linear"),
    "ia3 feedforward": (
        ["finetune=ia3", "finetune.target_modules=[key]", "finetune.feedforward_modules=[output.dense]"],
        "['output.dense']",
        "among finetune.target_modules=['key']",
    ),
    "r not int": (["finetune.r=abc"], "finetune.r=abc", "Integer"),
    "model missing dir": (["model.name=/no/such/model"], "model.name=/no/such/model", "not a local dir"),
    "model not on hub": (["model.name=nobody/no-such-model"], "model.name=nobody/no-such-model", "HF_HUB_OFFLINE"),
    "data path missing": (["data.path=/no/such/data"], "data.path=/no/such/data", "does not exist"),
    "data columns": (["data.question_column=query"], "['query']", "columns found: ['question', 'answer']"),
    "train size too big": (["data.train_size=1000000"], "data.train_size=1000000", "larger than the data"),
    "train size zero": (["data.train_size=0"], "data.train_size=0", ">= 1"),
    "eval name": (["eval.datasets=[scifact,nosuchset]"], "['nosuchset']", "allowed: "),
    "eval layout": (["eval.dataset_id={qa}"], "not in the NanoBEIR layout", "corpus"),
    "batch size one": (["train.batch_size=1"], "train.batch_size=1", "in-batch negatives need a batch size >= 2"),
    "max steps negative": (["train.max_steps=-5"], "train.max_steps=-5", ">= 1"),
    "tracking uri": (["tracking.uri=nosuchscheme://x"], "tracking.uri=nosuchscheme://x", "use one of sqlite://"),
    "tracking dir": (
        ["tracking.uri=sqlite:////proc/nope/m.db"],
        "tracking.uri=sqlite:////proc/nope/m.db",
        "cannot be opened",
    ),
    "unknown experiment": (["experiment=nope"], "experiment=nope", "allowed: "),
    "unknown key": (["train.nosuchkey=1"], "nosuchkey", "TrainConfig"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_fails_in_one_line(case, tmp_path, tiny_model, tiny_qa, tiny_nanobeir):
    overrides, names, allowed = CASES[case]
    overrides = [o.format(qa=tiny_qa) for o in overrides]
    outputs = tmp_path / "outputs"
    base = [
        f"model.name={tiny_model}",
        f"data.path={tiny_qa}",
        "data.eval_size=8",
        "data.train_size=16",
        f"eval.dataset_id={tiny_nanobeir}",
        "eval.datasets=[scifact]",
        f"paths.outputs={outputs}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pipeline", *base, *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "hydra" in imported and not imported & HEAVY, sorted(imported & HEAVY)  # failed before any heavy work
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("import time:")]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    assert names in lines[0] and allowed in lines[0], lines[0]
    # nothing left behind: no outputs dir (no run dir, no cache, no MLflow DB)
    assert not outputs.exists(), sorted(p.name for p in outputs.rglob("*"))


def test_the_allowed_nanobeir_names_are_sentence_transformers_own():
    from pipeline.evaluation.nanobeir import NANOBEIR

    # a fresh process: build_evaluator registers a local dir's extra sets in this table
    code = (
        "import json; from sentence_transformers.sentence_transformer.evaluation import nano_beir; "
        "print(json.dumps(nano_beir.DATASET_NAME_TO_HUMAN_READABLE))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert NANOBEIR == json.loads(proc.stdout.splitlines()[-1])
