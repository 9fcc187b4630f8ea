"""`make bench` / `python -m bench`: every benchmark, one after the other, then docs/benchmarks.md.

    python -m bench [--only training,evaluation,overhead,sweep_reuse,speed,profile] [--set KEY=VALUE ...] [--merge]
    python -m bench --quick [--model DIR]     (every code path at the smallest sizes; table in outputs/bench/quick.md)

About 17 minutes on 2 quiet CPU cores before the speed comparison grew to four arms at batch 256 (plain MNRL does not
fit there on CPU): expect about 20 (an estimate, not measured). `--set` changes a size of the benchmarks run (the
keyword arguments of their `run`: `--only speed --set batch=64`). Run it on a quiet machine: the ratios are robust to
steady load, not to load that comes and goes between arms.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench import evaluation, memory, overhead, profiling, speed, sweep_reuse, training
from bench.common import DOC, MINILM, RESULTS, ROOT, BenchResult, machine_info, markdown_table, quiet, write_doc

BENCHES = {
    "training": training.run,
    "evaluation": evaluation.run,
    "overhead": overhead.run,
    "sweep_reuse": sweep_reuse.run,
    "speed": speed.run,
    "profile": profiling.run,
    "memory": memory.run,
}
# --quick: every code path at the smallest sizes (a couple of minutes; the numbers mean little)
QUICK = {
    "training": {"steps": 3, "batch": 8, "mini_batch": 8},
    "evaluation": {"docs": 16, "reps": 1, "adapters": 2, "docs_per_adapter": 8},
    "overhead": {"reps": 1, "steps": 2, "batch": 8, "docs": 40, "queries": 4},
    "sweep_reuse": {"jobs": 2, "steps": 2, "batch": 8, "docs": 40, "queries": 4, "reruns": 1},  # 1 step: lr 0
    "speed": {"batch": 16, "mini_batch": 4, "max_seq_length": 64, "steps": 2, "arms": "auto,tokens256,reference"},
    "profile": {"batch": 16, "mini_batch": 4, "max_seq_length": 64, "doc": RESULTS / "quick" / "profile_cpu.md"},
    "memory": {"batch": 4, "seq": 32, "steps": 1, "decoder_hidden": 64, "decoder_layers": 2},
}


def size(text: str) -> tuple[str, object]:
    """KEY=VALUE of --set, the value an int or float where it reads as one."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--set {text}: use KEY=VALUE, e.g. batch=64")
    for kind in (int, float):
        try:
            return key.replace("-", "_"), kind(value)
        except ValueError:
            pass
    return key.replace("-", "_"), value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(BENCHES), help="comma-separated: " + ", ".join(BENCHES))
    parser.add_argument("--set", type=size, action="append", default=[], help="KEY=VALUE: a size of the benchmarks")
    parser.add_argument("--out", type=Path, default=None, help=f"the results table (default {DOC.relative_to(ROOT)})")
    parser.add_argument("--model", default=MINILM, help="the base model of every benchmark")
    parser.add_argument("--quick", action="store_true", help="smallest sizes, table to outputs/bench/quick.md")
    parser.add_argument("--merge", action="store_true", help="keep the other benchmarks' last results in the table")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHES)}")
    missing = [n for n in BENCHES if n not in names and BenchResult.load(n, RESULTS) is None]
    if args.merge and missing:  # the table would lose their rows: refuse before measuring anything
        parser.error(
            f"--merge keeps the other benchmarks' saved results, but {RESULTS} has none for {', '.join(missing)}: "
            f"run them too (--only {','.join([*names, *missing])}), or run without --merge"
        )

    out = args.out or (RESULTS / "quick.md" if args.quick else DOC)
    quiet()
    machine = machine_info()
    print(f"[bench] {machine}", file=sys.stderr, flush=True)
    results, started = [], time.perf_counter()
    for name in names:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        sizes = {**(QUICK[name] if args.quick else {}), **dict(args.set)}
        result = BENCHES[name](model=args.model, **sizes)
        result.save(RESULTS / "quick" if args.quick else RESULTS)
        results.append(result)
        print(f"[bench] {name} took {result.seconds:.0f}s\n{markdown_table(result.rows)}", file=sys.stderr, flush=True)
        if args.merge:  # the last saved results of the benchmarks not run now, in BENCHES order
            fresh = {r.name: r for r in results}
            merged = [fresh.get(n) or BenchResult.load(n, RESULTS) for n in BENCHES]
            write_doc([r for r in merged if r is not None], machine, out)
        else:
            write_doc(results, machine, out)  # a crash later keeps what was measured
    print(f"[bench] all took {(time.perf_counter() - started) / 60:.1f} min; wrote {out}", file=sys.stderr)
    print(markdown_table([row for result in results for row in result.rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
