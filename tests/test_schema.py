"""The MLflow schema is one module: names round-trip through it, and no other module spells them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from pipeline import schema

ROOT = Path(__file__).resolve().parent.parent
# what only pipeline/schema.py may write: a string without spaces (a name, not a sentence that mentions one) holding
# the names (or the start of the names) runs are logged under; `ndcg_at_10` / `per_dataset_ndcg_at_10` are the keys of
# a stage's result, and hydra.sweep.dir, sweep.json and hydra.sweeper.decide.* are Hydra's or the sweep dir's
SPELLED = re.compile(
    r"(?<![\w.])(verdict[._]|decide\.|sweep\.(?!json|pid|dir)|nanobeir_|pipeline\.(config_hash|role)|evaluation/"
    r"|mlflow\.parentRunId)|per_query\.json|looks\.json|(?<!per_dataset)_ndcg_at_10|_delta_vs_base"
)


@pytest.mark.parametrize("name", ["NanoSciFact", "NanoFiQA2018", "Touche_2020", "mean", "a_ndcg_at_10_b"])
@pytest.mark.parametrize("prefix", ["", schema.BASELINE])
def test_a_dataset_metric_names_its_set_back(name, prefix):
    assert schema.dataset_of(schema.dataset_metric(name, prefix), prefix) == name
    assert schema.dataset_of_delta(schema.dataset_delta(name)) == name


def test_the_benchmarks_metrics_are_named_after_it():
    mteb = "MTEB (SciFact, FiQA2018)"
    assert schema.benchmark_mean(schema.NANOBEIR) == schema.BENCHMARK_MEAN == "nanobeir_mean_ndcg_at_10"
    assert (
        schema.benchmark_mean(mteb) == "mteb_mean_ndcg_at_10" and schema.benchmark_delta(mteb) == "mteb_delta_vs_base"
    )
    assert schema.dataset_of(schema.dataset_metric("SciFact", "", mteb), "", mteb) == "SciFact"
    assert schema.dataset_of(schema.dataset_metric("SciFact", "", mteb)) is None  # not a NanoBEIR name
    assert schema.dataset_of_delta(schema.dataset_delta("SciFact", mteb), mteb) == "SciFact"


def test_names_of_other_things_name_no_set():
    not_sets = [schema.DEV, schema.IN_DOMAIN, schema.benchmark_delta(), "nanobeir__ndcg_at_10", "nanobeir/ndcg_at_10"]
    assert [schema.dataset_of(name) for name in not_sets] == [None] * len(not_sets)
    assert schema.dataset_of(schema.dataset_metric("NanoSciFact", schema.BASELINE)) is None  # another prefix
    assert schema.dataset_of_delta(schema.benchmark_delta()) is None and schema.dataset_of_delta(schema.DEV) is None


def _strings(path: Path):
    """The string constants of a module, f-string parts included, docstrings and comments not."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_no_module_but_the_schema_spells_an_mlflow_name():
    found = []
    for path in sorted([*(ROOT / "pipeline").rglob("*.py"), *(ROOT / "hydra_plugins").rglob("*.py")]):
        if path == ROOT / "pipeline" / "schema.py":
            continue
        for line, text in _strings(path):
            if not any(c.isspace() for c in text) and SPELLED.search(text):
                found.append(f"{path.relative_to(ROOT)}:{line}: {text!r}")
    assert not found, "\n".join(found)


def test_each_name_is_bound_once_and_means_one_thing():
    """A name the schema binds twice, or two names for one string, would log one thing under another's name."""
    tree = ast.parse((ROOT / "pipeline" / "schema.py").read_text())
    bound: list[str] = []
    values: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets = node.targets[0].elts if isinstance(node.targets[0], ast.Tuple) else node.targets
            bound += [t.id for t in targets]
            strings = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
            for target, value in zip(targets, strings, strict=False):
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    values.setdefault(value.value, target.id)
                    assert values[value.value] == target.id, (
                        f"{target.id} and {values[value.value]} are both {value.value!r}"
                    )
    assert len(bound) == len(set(bound)), sorted(n for n in bound if bound.count(n) > 1)
    assert schema.LOOK_METRIC.format("delta") == "verdict.look.delta"
    assert schema.IN_DOMAIN_LOOK_METRIC.format("delta") == "verdict.in_domain.look.delta"
