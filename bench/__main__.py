"""`make bench` / `python -m bench`: every benchmark, one after the other, then docs/benchmarks.md.

    python -m bench [--only training,evaluation,overhead,sweep_reuse] [--out docs/benchmarks.md]

Sized to finish in about 10 minutes on 2 quiet CPU cores (each benchmark's size is a flag of its own module:
`python -m bench.overhead --help`). Run it on a quiet machine: the ratios are robust to steady load, not to load
that comes and goes between arms.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench import evaluation, overhead, sweep_reuse, training
from bench.common import DOC, machine_info, markdown_table, quiet, write_doc

BENCHES = {
    "training": training.run,
    "evaluation": evaluation.run,
    "overhead": overhead.run,
    "sweep_reuse": sweep_reuse.run,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(BENCHES), help="comma-separated: " + ", ".join(BENCHES))
    parser.add_argument("--out", type=Path, default=DOC, help="the results table (markdown)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHES)}")

    quiet()
    machine = machine_info()
    print(f"[bench] {machine}", file=sys.stderr, flush=True)
    results, started = [], time.perf_counter()
    for name in names:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        result = BENCHES[name]()
        result.save()
        results.append(result)
        print(f"[bench] {name} took {result.seconds:.0f}s\n{markdown_table(result.rows)}", file=sys.stderr, flush=True)
        write_doc(results, machine, args.out)  # after each benchmark: a crash later keeps what was measured
    print(f"[bench] all took {(time.perf_counter() - started) / 60:.1f} min; wrote {args.out}", file=sys.stderr)
    print(markdown_table([row for result in results for row in result.rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
