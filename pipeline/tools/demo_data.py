"""Offline demo data, generated from the docstrings of the Python standard library installed on this machine.

`python -m pipeline.tools.demo_data [--out DIR] [--force]` writes, under DIR (default `$PIPELINE_OUTPUTS/demo_data`):

- `pydocs-qa/`: question / answer pairs laid out like the Hub's sentence-transformers/gooaq (`data/train.parquet`),
  for `conf/data/demo.yaml`. The question is the summary sentence of the docstring of a module or of a public
  function, class or method; the answer is its qualified name and signature followed by the rest of the docstring.
- `nanobeir-pydocs/`: a retrieval set in the NanoBEIR-en layout (corpus / queries / qrels, split `NanoPyDocs`), for
  `conf/eval/demo.yaml`: 50 summary sentences as queries, each with its own answer as the one relevant document,
  among distractors (other answers) for a corpus of 500. It comes from modules disjoint from the training modules.

Why: the demo must run on a fresh machine with no network and no `../shared` copies of the Hub datasets, yet train
and evaluate on real text where fine-tuning can help. Docstrings are real, varied English with a natural
"short query -> long passage" structure, and they are on every machine that runs Python. The lists of modules are
fixed, pure-Python and free of side effects on import; members are walked in sorted order and the eval sample uses a
fixed seed, so the same Python version gives the same files. Outputs are built in a temp dir and moved in place
with `os.replace`; an existing output is kept unless `--force`.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import os
import random
import re
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# Fixed lists of pure-Python modules with no side effects on import and the same members on every OS. A module
# missing from this Python version is skipped. The eval modules (the asyncio, email and xml packages and a dozen
# modules from other areas) are held out: training never sees their docstrings.
EVAL_MODULES = tuple(
    """
    asyncio.base_events asyncio.base_futures asyncio.events asyncio.exceptions asyncio.locks asyncio.protocols
    asyncio.queues asyncio.runners asyncio.selector_events asyncio.staggered asyncio.streams asyncio.taskgroups
    asyncio.tasks asyncio.threads asyncio.timeouts asyncio.transports asyncio.trsock difflib doctest email
    email.base64mime email.charset email.feedparser email.generator email.header email.headerregistry
    email.iterators email.message email.parser email.policy email.quoprimime email.utils http.cookiejar imaplib
    inspect json json.decoder json.encoder random statistics tarfile textwrap threading typing xml xml.dom
    xml.etree.ElementTree xml.sax xml.sax.expatreader xml.sax.handler xml.sax.saxutils xml.sax.xmlreader
    """.split()
)
TRAIN_MODULES = tuple(
    """
    abc argparse ast base64 bdb bz2 cProfile calendar cmd code codecs codeop collections collections.abc colorsys
    compileall concurrent.futures.thread configparser contextlib copy copyreg csv dataclasses dis enum filecmp
    fileinput fnmatch fractions ftplib functools getopt gettext glob graphlib gzip hashlib heapq hmac html
    html.parser http http.client http.cookies http.server importlib importlib.abc importlib.metadata
    importlib.readers importlib.resources.abc importlib.resources.readers importlib.resources.simple importlib.util
    ipaddress keyword linecache locale logging logging.config logging.handlers lzma mailbox mimetypes modulefinder
    numbers operator optparse pathlib pdb pickle pickletools pkgutil plistlib poplib pprint profile pstats
    py_compile pyclbr queue quopri re runpy sched secrets shelve shutil smtplib socketserver sqlite3 string
    stringprep symtable tabnanny tempfile timeit tokenize trace traceback types unittest unittest.async_case
    unittest.case unittest.loader unittest.mock unittest.result unittest.runner unittest.suite unittest.util
    urllib.error urllib.parse urllib.request urllib.response urllib.robotparser uuid warnings wave weakref wsgiref
    wsgiref.handlers wsgiref.headers wsgiref.simple_server wsgiref.util wsgiref.validate xmlrpc.client xmlrpc.server
    zipapp zipfile
    """.split()
)
MIN_BODY, MAX_ANSWER = 60, 1500  # chars: an answer needs a real body; very long docstrings are cut
EVAL_QUERIES, EVAL_CORPUS, SEED = 50, 500, 12
SPLIT = "NanoPyDocs"
PY = f"{sys.version_info.major}.{sys.version_info.minor}"
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`'\"(])")


class _Default:
    """Stands for a default value whose repr is not portable text (objects, sets): rendered as `...`."""

    def __repr__(self) -> str:
        return "..."


def _signature(obj) -> str:
    """`(a, b=1, *args, key=...)`: no annotations, and only defaults whose repr is stable across runs."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):  # e.g. a class whose __init__ is written in C
        return ""
    simple = (type(None), bool, int, float, str, bytes)
    params = [
        p.replace(
            annotation=p.empty,
            default=p.default if p.default is p.empty or isinstance(p.default, simple) else _Default(),
        )
        for p in sig.parameters.values()
    ]
    return str(sig.replace(parameters=params, return_annotation=sig.empty))


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[: limit - 4]
    return cut[: cut.rfind(" ")].rstrip() + " ..." if " " in cut else cut + " ..."


def _split_docstring(doc: str) -> tuple[str, str]:
    """(first sentence of the summary paragraph, the rest of the docstring)."""
    first, _, rest = inspect.cleandoc(doc).partition("\n\n")
    parts = SENTENCE_END.split(" ".join(first.split()), maxsplit=1)
    body = "\n\n".join(p for p in (parts[1] if len(parts) > 1 else "", rest.strip()) if p)
    return parts[0], body


def _members(module) -> list[tuple[str, object]]:
    """Public classes and functions defined in `module` and the public methods of those classes, sorted by name."""
    out = [("", module)]  # the module's own docstring
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj):
            out.append((name, obj))
        elif inspect.isclass(obj):
            out.append((name, obj))
            for attr, member in sorted(vars(obj).items()):
                member = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
                if not attr.startswith("_") and inspect.isfunction(member):
                    out.append((f"{name}.{attr}", member))
    return out


def docstring_pairs(module_name: str) -> list[dict[str, str]]:
    """{name, question, body, answer} for each documented public member of a module with a non-trivial body."""
    with warnings.catch_warnings():  # e.g. typing's deprecated aliases warn when touched
        warnings.simplefilter("ignore")
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # not in this Python version (or build)
            return []
        members = [(name, obj, obj.__doc__ if isinstance(obj.__doc__, str) else "") for name, obj in _members(module)]
    pairs = []
    for name, obj, doc in members:
        question, body = _split_docstring(doc)
        if len(body) < MIN_BODY or not 12 <= len(question) <= 200 or not question[0].isalpha():
            continue
        qualified = f"{module_name}.{name}" if name else module_name
        signature = _signature(obj) if callable(obj) else ""
        answer = _truncate(f"{qualified}{signature}\n\n{body}", MAX_ANSWER)
        pairs.append({"name": qualified, "question": question, "body": body, "answer": answer})
    return pairs


def collect(modules, seen: set[str] | None = None) -> list[dict[str, str]]:
    """The pairs of `modules` in order, dropping any whose question or body was seen before (also in `seen`)."""
    seen = set() if seen is None else seen
    out = []
    for module_name in modules:
        for pair in docstring_pairs(module_name):
            if pair["question"] in seen or pair["body"] in seen:
                continue
            seen.update((pair["question"], pair["body"]))
            out.append(pair)
    return out


def _front_matter(configs: dict[str, dict[str, str]]) -> str:
    """A Hub dataset card header: config name -> {split: parquet path}, which `datasets.load_dataset` reads."""
    lines = ["---", "configs:"]
    for config, splits in configs.items():
        lines += [f"- config_name: {config}", "  data_files:"]
        lines += [f"  - split: {split}\n    path: {path}" for split, path in splits.items()]
    return "\n".join(lines + ["---", ""])


def _write_parquet(path: Path, columns: dict[str, list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


@functools.cache
def pairs() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(train pairs, eval pairs); eval is collected after train, so anything it shares with train is dropped."""
    seen: set[str] = set()
    train = collect(TRAIN_MODULES, seen)
    return train, collect(EVAL_MODULES, seen)


def write_qa(dest: Path) -> None:
    train = pairs()[0]
    _write_parquet(
        dest / "data" / "train.parquet",
        {"question": [p["question"] for p in train], "answer": [p["answer"] for p in train]},
    )
    (dest / "README.md").write_text(
        _front_matter({"default": {"train": "data/train.parquet"}})
        + f"\n# pydocs-qa\n\n{len(train)} question / answer pairs from the docstrings of Python {PY}'s standard "
        f"library (pipeline/tools/demo_data.py).\nModules: {', '.join(TRAIN_MODULES)}.\n"
    )


def write_nanobeir(dest: Path) -> None:
    """50 queries with their own answer as the relevant document, plus sampled distractors; ids are qualified names."""
    held_out = pairs()[1]
    rng = random.Random(SEED)
    queries = sorted(rng.sample(held_out, EVAL_QUERIES), key=lambda p: p["name"])
    ids = [p["name"] for p in queries]
    others = [p for p in held_out if p not in queries]
    corpus = sorted(queries + rng.sample(others, min(len(others), EVAL_CORPUS - EVAL_QUERIES)), key=lambda p: p["name"])
    tables = {
        "corpus": {"_id": [p["name"] for p in corpus], "text": [p["answer"] for p in corpus]},
        "queries": {"_id": ids, "text": [p["question"] for p in queries]},
        "qrels": {"query-id": ids, "corpus-id": ids},
    }
    for config, columns in tables.items():
        _write_parquet(dest / config / f"{SPLIT}.parquet", columns)
    (dest / "README.md").write_text(
        _front_matter({c: {SPLIT: f"{c}/{SPLIT}.parquet"} for c in tables})
        + f"\n# nanobeir-pydocs\n\nA NanoBEIR-style retrieval set from the docstrings of Python {PY}'s standard "
        f"library (pipeline/tools/demo_data.py), disjoint from pydocs-qa.\nModules: {', '.join(EVAL_MODULES)}.\n"
    )


# Dataset dir -> (writer, {parquet file: what its rows are}); the files and README.md make an output complete
DATASETS = {
    "pydocs-qa": (write_qa, {"data/train.parquet": "pairs"}),
    "nanobeir-pydocs": (
        write_nanobeir,
        {f"queries/{SPLIT}.parquet": "queries", f"corpus/{SPLIT}.parquet": "docs", f"qrels/{SPLIT}.parquet": "qrels"},
    ),
}


def _complete(target: Path, files) -> bool:
    return all((target / f).is_file() for f in (*files, "README.md"))


def _build_atomically(target: Path, write, files, force: bool) -> bool:
    """Run `write(tmp_dir)` in a temp dir next to `target`, then move it in place. False: kept a complete one."""
    if _complete(target, files) and not force:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0o700 would stay on the final dir
        write(tmp)
        if target.exists():  # --force or incomplete: move it aside first, as os.replace cannot replace a full dir
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
            os.replace(target, old / target.name)
            shutil.rmtree(old)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if force or not _complete(target, files):
            raise
        return False  # another process moved its (identical) output in first
    return True


def generate(out: Path, force: bool = False) -> dict[str, Path]:
    """Write (or keep) both datasets under `out`; print one line each with its row counts; return name -> dir."""
    out = Path(out)
    for name, (write, files) in DATASETS.items():
        built = _build_atomically(out / name, write, files, force)
        rows = ", ".join(f"{pq.read_metadata(out / name / f).num_rows} {what}" for f, what in files.items())
        print(f"{name}: {rows} -> {out / name} ({'built' if built else 'existing, kept; --force rebuilds'})")
    return {name: out / name for name in DATASETS}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.tools.demo_data", description=__doc__.split("\n\n")[0])
    default = Path(os.environ.get("PIPELINE_OUTPUTS", "outputs")) / "demo_data"
    parser.add_argument("--out", type=Path, default=default, help=f"output dir (default: {default})")
    parser.add_argument("--force", action="store_true", help="rebuild even if the datasets exist")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    generate(args.out, force=args.force)
    print(f"done in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
