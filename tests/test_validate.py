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
    "mteb task typo": (
        ["eval.datasets=null", "eval.tasks=[SciFactt]"],
        "'SciFactt' not found",
        "Did you mean: 'SciFact'",
    ),
    "mteb task type": (
        ["eval.datasets=null", "eval.tasks=[Banking77Classification]"],
        "Banking77Classification is an mteb Classification task",
        "allowed: Retrieval tasks",
    ),
    "mteb task offline": (
        ["eval.datasets=null", "eval.tasks=[SciFact]"],
        "eval.tasks: SciFact's dataset=mteb/scifact is not a local dir and not in the Hugging Face cache",
        "+eval.task_dirs.SciFact=DIR",
    ),
    "mteb task copy": (
        ["eval.tasks=[SciFact]", "eval.datasets=null", "+eval.task_dirs.SciFact=/no/such/copy"],
        "eval.task_dirs.SciFact=/no/such/copy",
        "a local copy of the task's Hub dataset",
    ),
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
    # everyday inputs: data files and their content, model dirs, LoRA targets, ranges, run options
    "data null answers": (["data.path={nulls}"], "column 'answer' has 2 null", "non-empty text"),
    "data empty questions": (["data.path={empty}"], "column 'question' has 0 null and 1 empty", "non-empty text"),
    "data not text": (["data.path={ints}"], "column 'answer' holds int64", "must be strings"),
    "data one question": (["data.path={same}"], "1 distinct question(s) in its 16 training rows", "train.batch_size=8"),
    "data few questions": (["data.path={few}"], "5 distinct question(s)", "in-batch negatives cannot be formed"),
    "data file type": (["data.path={txt}"], "data.path=", "allowed .jsonl, .json, .csv, .tsv, .parquet"),
    "data file missing": (["data.path=/no/such/pairs.jsonl"], "data.path=/no/such/pairs.jsonl", "does not exist"),
    "batch over rows": (["train.batch_size=32"], "train.batch_size=32", "16 training rows"),
    "model dir not a model": (["model.name={qa}"], "is a dir but not a model", "modules.json"),
    "lora targets": (["finetune.target_modules=[nosuch]"], "['nosuch']", "its layers: "),
    "lora targets empty": (["finetune.target_modules=[]"], "finetune.target_modules=[]", "null for peft's default"),
    "force unknown": (["run.force=nosuch"], "['nosuch']", "allowed: prepare_data, prepare_dev, prepare_test, baseline"),
    "eval batch zero": (["eval.batch_size=0"], "eval.batch_size=0", ">= 1"),
    "logging steps zero": (["train.logging_steps=0"], "train.logging_steps=0", ">= 1"),
    "max seq length zero": (["model.max_seq_length=0"], "model.max_seq_length=0", ">= 1"),
    "seed negative": (["train.seed=-1"], "train.seed=-1", ">= 0"),
}


def _bad_data(tmp_path):
    """Data dirs with one everyday problem each."""
    import pandas as pd

    def qa(name, question, answer):
        (tmp_path / name / "data").mkdir(parents=True)
        pd.DataFrame({"question": question, "answer": answer}).to_parquet(tmp_path / name / "data" / "train.parquet")
        return tmp_path / name

    n = 40
    questions = [f"question {i}?" for i in range(n)]
    answers = [f"answer {i}." for i in range(n)]
    (tmp_path / "pairs.txt").write_text("q\ta\n")
    return {
        "nulls": qa("nulls", questions, answers[:5] + [None] + answers[6:20] + [None] + answers[21:]),
        "empty": qa("empty", questions[:3] + [""] + questions[4:], answers),
        "ints": qa("ints", questions, list(range(n))),
        "same": qa("same", ["what is it?"] * n, answers),
        "few": qa("few", [f"question {i % 5}?" for i in range(n)], answers),
        "txt": tmp_path / "pairs.txt",
    }


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
@pytest.mark.integration
def test_bad_input_fails_in_one_line(case, tmp_path, tiny_model, tiny_qa, tiny_nanobeir):
    overrides, names, allowed = CASES[case]
    bad = _bad_data(tmp_path)
    overrides = [o.format(qa=tiny_qa, **bad) for o in overrides]
    outputs = tmp_path / "outputs"
    base = [
        f"model.name={tiny_model}",
        f"data.path={tiny_qa}",
        "data.eval_size=8",
        "data.test_size=2",
        "data.train_size=16",
        "train.batch_size=8",
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


@pytest.mark.integration
def test_the_allowed_nanobeir_names_are_sentence_transformers_own():
    from pipeline.evaluation.nanobeir import NANOBEIR

    # a fresh process: build_evaluator registers a local dir's extra sets in this table
    code = (
        "import json; from sentence_transformers.sentence_transformer.evaluation import nano_beir; "
        "print(json.dumps(nano_beir.DATASET_NAME_TO_HUMAN_READABLE))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert NANOBEIR == json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.integration
def test_bf16_on_a_cpu_fails_in_one_line_before_any_stage(tmp_path, tiny_model, tiny_qa, tiny_nanobeir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: bf16 may be allowed")
    outputs = tmp_path / "outputs"
    args = [
        f"model.name={tiny_model}",
        f"data.path={tiny_qa}",
        "data.eval_size=8",
        "data.test_size=2",
        "data.train_size=16",
    ]
    args += ["train.batch_size=8", f"eval.dataset_id={tiny_nanobeir}", "eval.datasets=[scifact]"]
    args += [f"paths.outputs={outputs}", "train.precision=bf16"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "train.precision=bf16 needs a CUDA GPU" in lines[0] and "auto or fp32" in lines[0]
    assert not outputs.exists()  # no baseline ran


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_a_data_file_is_a_dataset(suffix, tiny_cfg, tmp_path, capsys):
    """A single .jsonl / .csv / .parquet file of pairs trains as a dataset dir does; a repeated question warns."""
    import pandas as pd

    from pipeline.dag import run_dag
    from pipeline.validate import validate

    frame = pd.DataFrame({"question": [f"q{i % 30}?" for i in range(32)], "answer": [f"a {i}." for i in range(32)]})
    path = tmp_path / f"pairs{suffix}"
    {
        ".jsonl": lambda: frame.to_json(path, orient="records", lines=True),
        ".csv": lambda: frame.to_csv(path, index=False),
        ".parquet": lambda: frame.to_parquet(path),
    }[suffix]()
    cfg = tiny_cfg([f"data.path={path}", "data.train_size=20", "data.eval_size=8", "run.until=prepare_data"])
    validate(cfg)
    assert "repeats 2 question(s)" in capsys.readouterr().err  # a one-line warning: legitimate, but said
    out = run_dag(cfg)["prepare_data"]
    assert out.result["train_rows"] == 20 and out.result["source"].startswith("local:")


@pytest.mark.parametrize("method", ["full", "lora", "ia3", "lokr"])
def test_every_method_with_valid_values_passes_validation(method, tiny_cfg):
    """A valid config of each method validates, its target modules checked against the model: the same config with a
    target the model lacks does not (a full fine-tune has no target modules to check)."""
    from pipeline.validate import ConfigError, validate

    assert validate(tiny_cfg([f"finetune={method}"])) is None
    if method == "full":
        assert "target_modules" not in tiny_cfg(["finetune=full"]).finetune
        return
    assert validate(tiny_cfg([f"finetune={method}", "finetune.target_modules=[query,value]"])) is None
    with pytest.raises(ConfigError, match=r"finetune.target_modules=\['query', 'nowhere'\] has \['nowhere'\]"):
        validate(tiny_cfg([f"finetune={method}", "finetune.target_modules=[query,nowhere]"]))
