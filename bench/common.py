"""The benchmarks' one harness: the data, paired alternation and medians, a subprocess's wall time and peak RSS, the
pipeline run every process-level arm does, the machine's description and fp32 GEMM peak, and the results table
(docs/benchmarks.md).

Every benchmark reports ratios of arms measured side by side in the same run: absolute times on a shared machine are
noise, their ratios much less so.
"""

from __future__ import annotations

import atexit
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SHARED_DATA", ROOT.parent / "shared" / "data"))
if not SHARED_DATA.is_dir() and (ROOT.parents[1] / "shared" / "data").is_dir():  # a git worktree one level down
    SHARED_DATA = ROOT.parents[1] / "shared" / "data"
MEDQUAD = SHARED_DATA / "medquad-qa"
NANOBEIR_MINI = SHARED_DATA / "nanobeir-mini"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
PYTHON = sys.executable
RESULTS = ROOT / "outputs" / "bench"  # raw numbers of each benchmark, as JSON (git-ignored)
DOC = ROOT / "docs" / "benchmarks.md"
COLUMNS = ("benchmark", "measurement", "value", "ratio", "goal", "result", "what changed / why")
EXPERIMENT = "bench"
PASS, MISS, REPORT = "PASS", "MISS", "report"


@dataclass
class Row:
    """One line of the results table."""

    bench: str
    measurement: str
    value: str  # the measured numbers behind the ratio, readable
    ratio: float | None
    goal: str  # e.g. "≤ 1.03×"; "report" where there is no goal
    result: str  # PASS, MISS or report
    changed: str = ""  # what changed in the code because of this number, or why a goal is missed

    def cells(self) -> list[str]:
        ratio = "" if self.ratio is None else f"{self.ratio:.3f}×"
        return [self.bench, self.measurement, self.value, ratio, self.goal, f"**{self.result}**", self.changed]


def verdict(ratio: float, at_most: float | None = None, at_least: float | None = None) -> str:
    if (at_most is not None and ratio > at_most) or (at_least is not None and ratio < at_least):
        return MISS
    return PASS


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def how(doc: str) -> str:
    """A module docstring's second paragraph, on one line: how its benchmark measures (the table's last section)."""
    return " ".join(doc.split("\n\n")[1].split())


def alternate(arms: dict[str, Callable[[], float]], reps: int, warmup: int = 0) -> dict[str, list[float]]:
    """Run the arms in turn, A B A B ... (the order reversed every other round: A B, B A), `warmup` rounds first.

    Each arm returns its own measurement (seconds, or a rate); warm-up rounds are run and thrown away.
    """
    names = list(arms)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(warmup + reps):
        for name in names if round_ % 2 == 0 else names[::-1]:
            value = arms[name]()
            if round_ >= warmup:
                samples[name].append(value)
    return samples


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@dataclass
class Measured:
    """One subprocess: its wall time, its peak resident memory (its own, from wait4) and its output."""

    cmd: list[str]
    returncode: int
    wall_s: float
    max_rss_mb: float
    stdout: str
    stderr: str

    def check(self) -> Measured:
        if self.returncode != 0:
            raise RuntimeError(f"{' '.join(self.cmd)} exited {self.returncode}:\n{self.stderr[-3000:]}")
        return self

    def last_json(self) -> dict:
        """The last line of stdout that is a JSON object: how the workers report."""
        for line in reversed(self.stdout.splitlines()):
            if line.startswith("{"):
                return json.loads(line)
        raise ValueError(f"no JSON line in the output of {' '.join(self.cmd)}")


# A small launcher between the benchmark and each measured process. A child forked from a big process (this one,
# with torch loaded) starts with that process's resident pages, and Linux carries that high-water mark over its exec
# into the child's ru_maxrss; forked from this ~10 MB launcher instead, the child's peak is its own.
LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss, file=open(sys.argv[1], "w"))
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""


def run_measured(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 1800) -> Measured:
    """Run `cmd`: wall time around the whole process, peak RSS of that process alone (`os.wait4`'s rusage, taken by
    LAUNCHER; `getrusage(RUSAGE_CHILDREN)` would give the largest child so far, not this one)."""
    with tempfile.TemporaryDirectory() as tmp:
        rss = Path(tmp) / "maxrss"
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-S", "-c", LAUNCHER, str(rss), *cmd],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        wall = time.perf_counter() - start
        max_rss_kb = int(rss.read_text()) if rss.is_file() else 0
    return Measured(cmd, proc.returncode, wall, max_rss_kb / 1024, proc.stdout, proc.stderr)


def proc_status_mb(field_name: str) -> float:
    """VmRSS (now) or VmHWM (peak so far) of this process, in MB, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field_name)


def bench_env(scratch: Path | None = None) -> dict[str, str]:
    """The environment every arm runs in: offline, quiet, and (given `scratch`) a datasets cache of its own."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.update(HYDRA_FULL_ERROR="1", HF_HUB_DISABLE_TELEMETRY="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if scratch is not None:
        env["HF_DATASETS_CACHE"] = str(scratch / "hf_datasets")
    return env


def quiet() -> None:
    """Library chatter off in this process (loading bars, INFO logs, warnings): the tables are what it prints."""
    import warnings

    import datasets
    import transformers

    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def scratch_dir(prefix: str) -> Path:
    """A temporary dir for one benchmark's arms, removed when this process exits (kept with BENCH_KEEP=1)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if not os.environ.get("BENCH_KEEP"):
        atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def machine_info() -> dict:
    import torch

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    return {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": names[0] if names else platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def gemm_peak(n: int = 2048, reps: int = 5) -> dict:
    """This machine's fp32 GEMM peak: the best of `reps` timed n×n @ n×n torch.matmul on all torch threads."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)  # warm-up: allocation, thread pool
    times = [timed(lambda: torch.matmul(a, b)) for _ in range(reps)]
    return {"n": n, "flops_per_s": 2 * n**3 / min(times), "median_flops_per_s": 2 * n**3 / median(times)}


def msmarco_subset(dst: Path, docs: int | None, queries: int | None = 12, split: str = "NanoMSMARCO") -> Path:
    """A NanoBEIR-layout dir holding `split` alone: its first `queries` queries with their judgements, and a corpus
    of `docs` passages: every passage judged for those queries, then the others in corpus order. None keeps all."""
    import pandas as pd

    corpus, query_rows, qrels = (pd.read_parquet(NANOBEIR_MINI / c / f"{split}.parquet") for c in CONFIGS)
    if queries is not None and queries < len(query_rows):
        query_rows = query_rows.head(queries)
        qrels = qrels[qrels["query-id"].astype(str).isin(set(query_rows["_id"].astype(str)))]
    if docs is not None and docs < len(corpus):
        is_judged = corpus["_id"].astype(str).isin(set(qrels["corpus-id"].astype(str)))
        keep = pd.concat([corpus[is_judged], corpus[~is_judged]]).head(max(docs, int(is_judged.sum())))
        corpus = corpus[corpus["_id"].isin(keep["_id"])]
    for name, frame in zip(CONFIGS, (corpus, query_rows, qrels), strict=True):
        (dst / name).mkdir(parents=True, exist_ok=True)
        frame.reset_index(drop=True).to_parquet(dst / name / f"{split}.parquet", index=False)
    configs = "".join(
        f"- config_name: {c}\n  data_files:\n  - split: {split}\n    path: {c}/{split}.parquet\n" for c in CONFIGS
    )
    (dst / "README.md").write_text(f"---\nconfigs:\n{configs}---\n")
    return dst


CONFIGS = ("corpus", "queries", "qrels")


def pipeline_overrides(eval_dir: Path, outputs: Path, uri: str, steps: int, batch: int, model: str = MINILM) -> list:
    """The run the process-level benchmarks do: MiniLM + LoRA on `steps × batch` MedQuAD pairs, NanoMSMARCO."""
    return [
        "finetune=lora",
        f"model.name={model}",
        f"data.path={MEDQUAD}",
        f"data.train_size={steps * batch}",
        "data.eval_size=64",
        "data.test_size=0",  # no in-domain test set: the same work as the bare script it is measured against
        f"eval.dataset_id={eval_dir}",
        "eval.datasets=[msmarco]",
        f"train.max_steps={steps}",
        f"train.batch_size={batch}",
        f"tracking.experiment={EXPERIMENT}",
        f"tracking.uri={uri}",
        f"paths.outputs={outputs}",
    ]


def warm_up(env: dict, uri: str) -> float:
    """Excluded from the timings: imports (page cache, .pyc files) and the one-off creation of the MLflow DB."""
    code = "import sys, mlflow, pipeline.app; mlflow.set_tracking_uri(sys.argv[1]); mlflow.set_experiment(sys.argv[2])"
    return run_measured([PYTHON, "-c", code, uri, EXPERIMENT], env=env).check().wall_s


def stage_statuses(stderr: str) -> list[tuple[str, str, float]]:
    """(stage, ran|cached, seconds) of every stage a pipeline process finished, from its `[pipeline]` lines."""
    found = []
    for line in stderr.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "[pipeline]" and parts[2] in ("ran", "cached") and parts[3].endswith("s"):
            found.append((parts[1], parts[2], float(parts[3][:-1])))
    return found


@dataclass
class BenchResult:
    name: str
    rows: list[Row]
    details: dict = field(default_factory=dict)
    seconds: float = 0.0
    date_utc: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))

    def save(self, directory: Path = RESULTS) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.name}.json"
        path.write_text(json.dumps(asdict(self), indent=2, default=str))
        return path

    @classmethod
    def load(cls, name: str, directory: Path = RESULTS) -> BenchResult | None:
        path = directory / f"{name}.json"
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        data["rows"] = [Row(**row) for row in data["rows"]]
        return cls(**data)


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in row.cells()) + " |")
    return "\n".join(lines)


def write_doc(results: list[BenchResult], machine: dict, path: Path = DOC, command: str = "make bench") -> str:
    """docs/benchmarks.md: the machine, the date, one table of every measurement, and how each bench measured."""
    total = sum(r.seconds for r in results)
    text = [
        "# Benchmarks",
        "",
        f"Produced by `{command}` (`python -m bench`); do not edit by hand. Every ratio compares arms measured side",
        "by side in the same run (alternated, warm-ups excluded, medians): absolute times on a shared machine are",
        "noise, their ratios much less so. Raw numbers: `outputs/bench/*.json`.",
        "",
        f"**Machine:** {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable), "
        f"torch {machine['torch']} with {machine['torch_threads']} threads, {machine['memory_gb']} GB RAM, "
        f"Python {machine['python']}. **Measured** (finished at, took): "
        f"{'; '.join(f'{r.name} {r.date_utc}, {r.seconds:.0f}s' for r in results)}; {total / 60:.1f} min in all.",
        "",
        markdown_table([row for result in results for row in result.rows]),
        "",
        "**Result**: PASS / MISS against the goal; `report` where the issue asks for the number without a goal.",
        "",
        "## How each number is measured",
        "",
    ]
    text += [f"- **{r.name}** — {r.details['how']}\n" for r in results if r.details.get("how")]
    content = "\n".join(text).rstrip() + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return content
