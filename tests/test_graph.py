"""The stage table (`pipeline.graph`) is the one list of stages: cheap to import, read by validation and the run
identity, and every per-stage mapping (the runner's `RUNNERS`, tracking's `STAGE_LOGS`) is checked against it when its
module loads."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import pipeline.graph as graph

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.integration
def test_the_table_validation_and_fingerprints_import_without_torch_or_a_stage():
    code = (
        "import sys; import pipeline.graph, pipeline.fingerprint, pipeline.validate; "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'pipeline.stages.'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_validation_takes_the_tables_stages():
    import pipeline.validate as validate

    assert validate.STAGE_NAMES is graph.STAGE_NAMES == tuple(stage.name for stage in graph.DAG)


def test_the_run_identity_covers_the_code_of_the_tables_stages(tiny_cfg, monkeypatch):
    """A run's identity covers the code of every module a stage of the table runs, read from the table itself: a stage
    added with a module of its own moves the key of every run."""
    from pipeline.tracking import identity

    cfg = tiny_cfg()
    found = {"data": "d", "eval": "e", "model": "m"}
    before = identity.run_key(cfg, found)
    monkeypatch.setattr(identity, "STAGE_CODE", (*identity.STAGE_CODE, "pipeline.report.compare"))  # no stage's
    assert identity.run_key(cfg, found) != before
    assert set(graph.STAGE_CODE) == {module for stage in graph.DAG for module in stage.code}


def test_a_mapping_must_name_every_stage_and_only_stages():
    every = dict.fromkeys(graph.STAGE_NAMES)
    graph.require_every_stage(every, "ok")
    without = {k: v for k, v in every.items() if k != "mine_negatives"}
    with pytest.raises(LookupError, match=r"^m\.LOGS must have .* missing \['mine_negatives'\], not a stage \[\]$"):
        graph.require_every_stage(without, "m.LOGS")
    with pytest.raises(LookupError, match=r"missing \[\], not a stage \['nosuch'\]"):
        graph.require_every_stage({**every, "nosuch": None}, "m.LOGS")


@pytest.mark.parametrize(
    "module, mapping", [("pipeline/tracking/stage_logs.py", "STAGE_LOGS"), ("pipeline/dag.py", "RUNNERS")]
)
def test_a_stage_without_a_logger_or_runner_fails_when_the_module_loads(module, mapping, monkeypatch):
    """A stage added to the table without an entry in tracking's STAGE_LOGS (or the runner's RUNNERS) stops the import
    of that module, naming the stage: not the run, after the stage ran. A fresh copy is loaded, the real one untouched."""
    extra = graph.Stage("extra", keys={}, inputs=(), code=())
    monkeypatch.setattr(graph, "STAGES", {**graph.STAGES, "extra": extra})
    monkeypatch.setattr(graph, "STAGE_NAMES", (*graph.STAGE_NAMES, "extra"))
    spec = importlib.util.spec_from_file_location(f"_copy_of_{mapping}", ROOT / module)
    copy = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, copy)  # its dataclasses look their module up there
    with pytest.raises(LookupError, match=rf"{mapping} must have .* missing \['extra'\]"):
        spec.loader.exec_module(copy)
