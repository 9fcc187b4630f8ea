"""What the benchmarks share: the data, the arms' runner (wall time and peak RSS per subprocess), alternation and
medians, the machine's description and fp32 GEMM peak, and the writer of the results table (docs/benchmarks.md).

Every benchmark reports ratios of arms measured side by side in the same run: absolute times on a shared machine are
noise, their ratios much less so.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
MEDQUAD = SHARED_DATA / "medquad-qa"
NANOBEIR_MINI = SHARED_DATA / "nanobeir-mini"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
PYTHON = sys.executable
RESULTS = ROOT / "outputs" / "bench"  # raw numbers of each benchmark, as JSON (git-ignored)
DOC = ROOT / "docs" / "benchmarks.md"
COLUMNS = ("benchmark", "measurement", "value", "ratio", "goal", "result", "what changed / why")

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
    if at_most is not None and ratio > at_most:
        return MISS
    if at_least is not None and ratio < at_least:
        return MISS
    return PASS


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def alternate(arms: dict[str, Callable[[], float]], reps: int, warmup: int = 0) -> dict[str, list[float]]:
    """Run the arms in turn, A B A B ... (the order reversed every other round: A B, B A), `warmup` rounds first.

    Each arm returns its own measurement (seconds, or a rate); warm-up rounds are run and thrown away.
    """
    names = list(arms)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(warmup + reps):
        order = names if round_ % 2 == 0 else names[::-1]
        for name in order:
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
    stamps: list[tuple[float, str]] = field(default_factory=list)  # (seconds since start, stderr line)

    def check(self) -> Measured:
        if self.returncode != 0:
            raise RuntimeError(
                f"{' '.join(self.cmd)} exited {self.returncode}:\n{self.stderr[-3000:]}\n{self.stdout[-2000:]}"
            )
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
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""


def run_measured(
    cmd: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: float = 1800
) -> Measured:
    """Run `cmd`; wall time around the whole process, peak RSS of that process alone (`os.wait4`'s rusage, taken by
    a small launcher process: see LAUNCHER), and each stderr line with the second it arrived at (`stamps`).

    (`getrusage(RUSAGE_CHILDREN)` would give the largest child so far, not this one.)
    """
    stamps: list[tuple[float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        rss_file = Path(tmp) / "maxrss"
        with open(Path(tmp) / "out", "w+") as out:
            start = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "-S", "-c", LAUNCHER, str(rss_file), *cmd],
                cwd=str(cwd),
                env=env,
                stdout=out,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )

            def read_stderr() -> None:
                for line in proc.stderr:
                    stamps.append((time.perf_counter() - start, line))

            reader = threading.Thread(target=read_stderr, daemon=True)
            reader.start()
            try:
                returncode = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the process it runs: a group of their own
                returncode = proc.wait()
            wall = time.perf_counter() - start
            reader.join(timeout=10)
            out.seek(0)
            stdout = out.read()
        max_rss_kb = int(rss_file.read_text()) if rss_file.is_file() else 0
    stderr = "".join(line for _, line in stamps)
    return Measured(
        cmd, returncode, wall, max_rss_kb / 1024, stdout, stderr, [(t, line.rstrip("\n")) for t, line in stamps]
    )


def proc_status_mb(field_name: str) -> float:
    """VmRSS (now) or VmHWM (peak so far) of this process, in MB, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field_name)


def bench_env(scratch: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment every arm runs in: offline, quiet, and (given `scratch`) a datasets cache of its own."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", HYDRA_FULL_ERROR="1")
    env.update(HF_HUB_DISABLE_TELEMETRY="1", PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    if scratch is not None:
        env["HF_DATASETS_CACHE"] = str(scratch / "hf_datasets")
    env.update(extra)
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


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    import torch

    return {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
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
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - start)
    best = min(times)
    return {"n": n, "flops_per_s": 2 * n**3 / best, "median_flops_per_s": 2 * n**3 / median(times), "reps": reps}


def msmarco_subset(
    dst: Path, docs: int | None, queries: int | None = 12, source: Path = NANOBEIR_MINI, split: str = "NanoMSMARCO"
) -> Path:
    """A NanoBEIR-layout dir holding `split` alone: its first `queries` queries with their judgements, and a corpus
    of `docs` passages: every passage judged for those queries, then the others in corpus order (the rest of
    NanoBEIR's hard negatives and random fill). None keeps everything. MSMARCO has the shortest passages.

    (NanoMSMARCO judges 697 passages for its 36 queries: a smaller corpus needs fewer queries.)
    """
    import pandas as pd

    corpus = pd.read_parquet(source / "corpus" / f"{split}.parquet")
    query_rows = pd.read_parquet(source / "queries" / f"{split}.parquet")
    qrels = pd.read_parquet(source / "qrels" / f"{split}.parquet")
    if queries is not None and queries < len(query_rows):
        query_rows = query_rows.head(queries)
        qrels = qrels[qrels["query-id"].astype(str).isin(set(query_rows["_id"].astype(str)))]
    if docs is not None and docs < len(corpus):
        is_judged = corpus["_id"].astype(str).isin(set(qrels["corpus-id"].astype(str)))
        keep = pd.concat([corpus[is_judged], corpus[~is_judged]]).head(max(docs, int(is_judged.sum())))
        corpus = corpus[corpus["_id"].isin(keep["_id"])]
    for name, frame in (("corpus", corpus), ("queries", query_rows), ("qrels", qrels)):
        (dst / name).mkdir(parents=True, exist_ok=True)
        frame.reset_index(drop=True).to_parquet(dst / name / f"{split}.parquet", index=False)
    configs = "\n".join(
        f"- config_name: {c}\n  data_files:\n  - split: {split}\n    path: {c}/{split}.parquet"
        for c in ("corpus", "queries", "qrels")
    )
    (dst / "README.md").write_text(f"---\nconfigs:\n{configs}\n---\n")
    return dst


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
    rows = [row for result in results for row in result.rows]
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
        markdown_table(rows),
        "",
        "**Result**: PASS / MISS against the goal; `report` where the issue asks for the number without a goal.",
        "",
        "## How each number is measured",
        "",
    ]
    for result in results:
        how = result.details.get("how")
        if how:
            text += [f"- **{result.name}** — {how}", ""]
    content = "\n".join(text).rstrip() + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return content


def pipeline_run_parser(doc: str, steps: int) -> argparse.ArgumentParser:
    """The size flags of the benchmarks that run the pipeline: training steps, batch, the NanoMSMARCO subset, model."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--docs", type=int, default=160, help="NanoMSMARCO passages kept (0: all 2000)")
    parser.add_argument("--queries", type=int, default=8, help="NanoMSMARCO queries kept (0: all 36)")
    parser.add_argument("--model", default=MINILM)
    return parser
