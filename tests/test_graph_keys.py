"""Stage keys change exactly when a stage's output can: each config key perturbed alone, every stage's key compared.

A key that misses a value serves a stale output (a silently wrong number); a key that holds a value the output does not
depend on retrains for nothing. The keys are computed as the runner does (upstream keys chained), without running.
"""

from __future__ import annotations

import pytest

from pipeline import graph
from pipeline.dag import stage_key
from pipeline.fingerprint import sources
from pipeline.graph import forced_stages, inputs_of, stages_until

TRAINED = {"finetune", "evaluate", "dev_evaluate", "test_evaluate", "model_card"}
# the dev set and the in-domain test set are cut from prepare_data's held-out rows (the test set disjoint from the dev
# set's texts: downstream of it too)
DEV = {"prepare_dev", "dev_baseline", "prepare_test", "test_baseline"}
BASELINES = {"baseline", "dev_baseline", "test_baseline"}
ALL = {"prepare_data", *DEV, "baseline", *TRAINED}
EVALUATED = {"baseline", "evaluate", "model_card"}  # NanoBEIR

# override -> the stages whose output it can change (from the tiny base config, LoRA arm)
PERTURBATIONS = {
    # data: the pairs, hence the training
    "data.train_size=24": {"prepare_data", *DEV, *TRAINED},
    "data.eval_size=6": {"prepare_data", *DEV, *TRAINED},
    "data.seed=3": {"prepare_data", *DEV, *TRAINED},
    "data.question_column=answer": {"prepare_data", *DEV, *TRAINED},
    "data.split=other": {"prepare_data", *DEV, *TRAINED},
    # the dev set's size: the dev numbers and the card, never the training
    "data.dev_queries=2": {*DEV, "dev_evaluate", "test_evaluate", "model_card"},
    "data.dev_corpus=3": {*DEV, "dev_evaluate", "test_evaluate", "model_card"},
    "data.dev_distractors=4": {*DEV, "dev_evaluate", "test_evaluate", "model_card"},
    # which held-out rows are the test set's: both held-out sets, never the training
    "data.test_size=3": {*DEV, "dev_evaluate", "test_evaluate", "model_card"},
    # hard negatives: the dataset's own are training data; mining keys do nothing while mining is off
    "data.negative_columns=[negative]": {"prepare_data", *DEV, *TRAINED},
    "data.mine.num_negatives=2": set(),
    "data.mine.relative_margin=0.1": set(),
    # the model: everything; its card text only the card
    "model.max_seq_length=16": {*BASELINES, *TRAINED},
    "model.trust_remote_code=true": {*BASELINES, *TRAINED},
    "model.card_language=de": {"model_card"},
    "model.card_license=mit": {"model_card"},
    "model.card_model_name=mine": {"model_card"},
    # the adapter
    "finetune.r=8": TRAINED,
    "finetune.alpha=4": TRAINED,
    "finetune.dropout=0.2": TRAINED,
    "finetune.target_modules=[query]": TRAINED,
    "finetune=full": TRAINED,
    # training: what changes the weights
    "train.max_steps=3": TRAINED,
    "train.epochs=2": set(),  # max_steps=2 decides the length
    "train.batch_size=4": TRAINED,
    "train.lr=2e-3": TRAINED,
    "train.warmup_ratio=0.2": TRAINED,
    "train.loss=mnrl": TRAINED,
    "train.seed=1": TRAINED,
    "train.eval_steps=2": TRAINED,  # what the replayed log history holds
    "train.precision=fp32": set(),  # auto resolves to fp32 on this CPU: the same model
    # training: what does not change the weights
    "train.logging_steps=2": set(),
    "train.save_steps=5": set(),
    "train.save_total_limit=1": set(),
    "train.eval_batch_size=4": set(),
    "train.mini_batch_size=2": set(),
    # evaluation: the numbers, never the trained weights
    "eval.datasets=[scifact]": EVALUATED,
    "eval.batch_size=8": {*EVALUATED, "dev_baseline", "dev_evaluate", "test_baseline", "test_evaluate"},
    "eval.backend=mteb": EVALUATED,
    "eval.during_training=false": set(),
    "eval.precision=autocast": {"evaluate", "model_card"},  # the fine-tuned model's scoring, not the base model's
    # how to run and where to log: no stage output
    "tracking.experiment=other": set(),
    "tracking.run_name=x": set(),
    "run.skip_finished=false": set(),
    "run.force=finetune": set(),
}


def keys(cfg, found=None) -> dict[str, str]:
    found = found if found is not None else sources(cfg)
    out: dict[str, str] = {}
    for stage in stages_until(None, cfg):  # as the runner: an optional stage that does not run has no key
        out[stage.name] = stage_key(stage, cfg, {name: out[name] for name in inputs_of(stage, cfg)}, found)
    return out


@pytest.mark.parametrize("override", list(PERTURBATIONS))
def test_a_key_changes_exactly_when_the_output_can(override, tiny_cfg):
    base = keys(tiny_cfg())
    changed = keys(tiny_cfg([override]))
    assert {name for name in base if base[name] != changed[name]} == PERTURBATIONS[override]


def test_a_stage_declares_its_own_key_slice(tiny_cfg):
    """A stage added to the DAG needs no edit elsewhere: its declared `keys` alone decide which values move its key."""
    from pipeline.graph import Stage

    extra = Stage("extra", keys={"train": lambda v: {"lr": v["lr"]}}, inputs=(), code=(), reads=())
    base, lr, batch = (stage_key(extra, tiny_cfg(o), {}, {}) for o in ([], ["train.lr=2e-3"], ["train.batch_size=4"]))
    assert base != lr
    assert base == batch


def test_the_content_of_each_input_is_in_the_keys(tiny_cfg):
    cfg = tiny_cfg()
    found = sources(cfg)
    base = keys(cfg, found)
    expected = {
        "data": {"prepare_data", *DEV, *TRAINED},
        "eval": EVALUATED,
        "model": ALL - {"prepare_data", "prepare_dev", "prepare_test"},
    }
    for group, stages in expected.items():
        other = keys(cfg, {**found, group: "local:0123456789abcdef"})
        assert {n for n in base if base[n] != other[n]} == stages, group


def test_the_resolved_device_and_precision_are_in_the_finetune_key(tiny_cfg, monkeypatch):
    import pipeline.graph as graph

    cfg = tiny_cfg()
    cpu = keys(cfg)
    monkeypatch.setattr(graph, "device_and_precision", lambda precision="auto": ("cuda", "bf16"))
    gpu = keys(cfg)
    assert {n for n in cpu if cpu[n] != gpu[n]} == {*BASELINES, *TRAINED}


def test_the_code_of_a_stage_is_in_its_key(tiny_cfg, monkeypatch):
    import pipeline.dag as dag

    cfg = tiny_cfg()
    base = keys(cfg)
    real = dag.code_version
    monkeypatch.setattr(dag, "code_version", lambda *m: real(*m) + ("x" if "pipeline.stages.finetune" in m else ""))
    assert {n for n, k in keys(cfg).items() if k != base[n]} == TRAINED


def test_code_version_follows_the_source_of_every_module_a_stage_imports(tmp_path, monkeypatch):
    import shutil

    import pipeline.fingerprint as fp

    copy = tmp_path / "pipeline"
    shutil.copytree(fp.PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(fp, "PACKAGE_ROOT", copy)
    fp.code_version.cache_clear()
    before = {m: fp.code_version(m) for m in graph.STAGE_CODE}
    # the sentence-transformers evaluation backend is imported by the finetune and evaluate stages, not by model_card
    backend = copy / "evaluation" / "st_backend.py"
    backend.write_text(backend.read_text() + "\n# changed\n")
    fp.code_version.cache_clear()
    after = {m: fp.code_version(m) for m in graph.STAGE_CODE}
    fp.code_version.cache_clear()
    assert before["pipeline.stages.finetune"] != after["pipeline.stages.finetune"]
    assert before["pipeline.stages.evaluate"] != after["pipeline.stages.evaluate"]
    assert before["pipeline.stages.model_card"] == after["pipeline.stages.model_card"]


def test_force_recomputes_a_stage_and_what_depends_on_it():
    assert forced_stages(None) == set()
    assert forced_stages("finetune") == TRAINED
    assert forced_stages(["baseline"]) == {"baseline", "model_card"}
    # mine_negatives, downstream of prepare_data, is forced too: it recomputes where it runs (data.mine.enabled)
    assert forced_stages("prepare_data") == {"prepare_data", *DEV, "mine_negatives", *TRAINED}
    assert forced_stages("prepare_dev") == {*DEV, "dev_evaluate", "test_evaluate", "model_card"}
    assert forced_stages("prepare_test") == {"prepare_test", "test_baseline", "test_evaluate"}
    assert forced_stages("mine_negatives") == {"mine_negatives", *TRAINED}
    assert forced_stages("all") == {*ALL, "mine_negatives"}
    with pytest.raises(ValueError, match="nosuch"):
        forced_stages("nosuch")


MINED = ["data.mine.enabled=true"]
MINING = {"mine_negatives", *TRAINED}
# override -> the stages whose output it can change, with mining on
MINING_PERTURBATIONS = {
    **{
        f"data.mine.{kv}": MINING
        for kv in (
            "num_negatives=2",
            "range_min=1",
            "range_max=20",
            "absolute_margin=0.1",
            "relative_margin=0.1",
            "max_score=0.9",
            "sampling_strategy=random",
            "batch_size=8",
        )
    },
    "data.seed=3": {"prepare_data", *DEV, *MINING},
    "data.train_size=24": {"prepare_data", *DEV, *MINING},
    "data.dev_queries=2": {*DEV, "dev_evaluate", "test_evaluate", "model_card"},
    "model.max_seq_length=16": {*BASELINES, *MINING},
    "model.card_language=de": {"model_card"},
    "train.lr=2e-3": TRAINED,
    "finetune=full": TRAINED,
    "eval.batch_size=8": {*EVALUATED, "dev_baseline", "dev_evaluate", "test_baseline", "test_evaluate"},
}


@pytest.mark.parametrize("override", list(MINING_PERTURBATIONS))
def test_with_mining_a_key_changes_exactly_when_the_output_can(override, tiny_cfg):
    base = keys(tiny_cfg(MINED))
    changed = keys(tiny_cfg([*MINED, override]))
    assert {name for name in base if base[name] != changed[name]} == MINING_PERTURBATIONS[override]


def test_mining_off_keys_every_stage_as_before_negatives_existed(tiny_cfg):
    """Mining is a stage of its own: on, it moves the training and what follows (the data, the dev set and the baselines
    are reused); off, every key equals that of a config without `data.mine` and `data.negative_columns`."""
    from omegaconf import OmegaConf

    off, on = tiny_cfg(), tiny_cfg(MINED)
    found = sources(off)
    off_keys, on_keys = keys(off, found), keys(on, found)
    assert "mine_negatives" not in off_keys and "mine_negatives" in on_keys
    assert {n for n in off_keys if off_keys[n] != on_keys[n]} == TRAINED
    before = OmegaConf.to_container(off, resolve=True, enum_to_str=True)
    del before["data"]["mine"], before["data"]["negative_columns"]
    assert keys(OmegaConf.create(before), found) == off_keys


def test_another_model_revision_gets_another_finetune_key(tiny_cfg, tiny_model, tmp_path, monkeypatch):
    """model.revision picks other weights of a Hub model: the model's content fingerprint is the revision's commit
    SHA (the weights the stages load, `pinned_config`), so every stage that reads the model gets another key (a run at
    v2 must not reuse main's fine-tune). Offline, from a Hugging Face cache holding both revisions."""
    import shutil

    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--org--tiny"
    for ref, sha in (("main", "a" * 40), ("v2", "b" * 40)):
        shutil.copytree(tiny_model, repo / "snapshots" / sha)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(sha)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    main, v2 = (tiny_cfg(["model.name=org/tiny", f"model.revision={rev}"]) for rev in ("main", "v2"))
    assert sources(main)["model"] == f"hub:org/tiny@{'a' * 40}" and sources(v2)["model"] == f"hub:org/tiny@{'b' * 40}"
    main_keys, v2_keys = keys(main), keys(v2)
    assert {n for n in main_keys if main_keys[n] != v2_keys[n]} >= {"baseline", "finetune", "evaluate"}
