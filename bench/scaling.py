"""Several GPUs per job (`launch.processes_per_job`, pipeline/launch/torchrun.py): samples/s and peak memory of each arm
at 1 and N processes, and FSDP against DDP for the full arm, on the same model, data and global batch, one after the
other on the same machine; each N-process arm's trained weights against the 1-process arm's (the same global batch:
they must agree to rounding, which is how FSDP's path, untestable on CPU, is checked on GPUs).

    python -m bench.scaling --processes 8 [--hidden 1024 --layers 28 --steps 20 --batch 256 --seq 256]
    python -m bench.scaling --processes 2 --cpu    (a smoke run: gloo, a tiny decoder, no FSDP arm)

The model is a Qwen3-shaped decoder built from its config (random weights, the shapes and compute of the real one:
hidden 1024 and 28 layers is Qwen3-Embedding-0.6B; 2560 / 36 is 4B), the data long generated pairs that fill
`--seq` tokens. Prints one row per arm and the ratios; writes outputs/bench/scaling.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import NANOBEIR_MINI, PYTHON, RESULTS, ROOT, bench_env, scratch_dir
from bench.memory import _long_qa


def arms(processes: int, cpu: bool) -> list[tuple[str, int, str]]:
    """(method, processes, launch.fsdp) of each arm: both arms at 1 and N; the full arm sharded too, on GPUs."""
    out = [("lora", 1, "off"), ("lora", processes, "off"), ("full", 1, "off"), ("full", processes, "off")]
    return out if cpu else [*out, ("full", processes, "full")]


def train(model: Path, data: Path, work: Path, method: str, processes: int, fsdp: str, args) -> dict:
    """One arm through the pipeline (`run.until=finetune`): its finetune summary and its saved weights' path."""
    overrides = [
        f"model.name={model}",
        f"model.max_seq_length={args.seq}",
        f"data.path={data}",
        "data.eval_size=8",
        "data.test_size=0",  # training only: no in-domain test set
        f"data.train_size={args.batch * args.steps}",
        f"eval.dataset_id={NANOBEIR_MINI}",  # not evaluated (run.until=finetune), but checked before the run
        "eval.datasets=[msmarco]",
        f"finetune={method}",
        f"train.batch_size={args.batch}",  # the global batch: each process takes batch / N
        f"train.max_steps={args.steps}",
        "train.warmup_ratio=0",
        "train.save_steps=null",
        "train.eval_steps=null",
        f"train.gradient_checkpointing={str(args.checkpointing).lower()}",
        "run.until=finetune",
        f"launch.processes_per_job={processes}",
        f"launch.fsdp={fsdp}",
        f"paths.outputs={work}",
        f"tracking.uri=sqlite:///{work}/mlflow.db",
    ]
    if method == "lora":
        overrides += ["finetune.dropout=0"]  # no dropout: 1 and N processes would draw differently
    started = time.perf_counter()
    done = subprocess.run(
        [PYTHON, "-m", "pipeline", *overrides], cwd=ROOT, env=bench_env(work), capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"{method} x{processes} fsdp={fsdp} failed:\n{done.stderr[-3000:]}")
    (entry,) = [p for p in (work / "cache" / "finetune").iterdir() if p.is_dir()]
    summary = json.loads((entry / "_SUCCESS.json").read_text())["result"]
    return {"summary": summary, "weights": str(next((entry / "model").glob("*.safetensors"))),
            "wall_s": time.perf_counter() - started}  # fmt: skip


def max_difference(a: str, b: str) -> float:
    from safetensors.torch import load_file

    left, right = load_file(a), load_file(b)
    return max(float((left[k].float() - right[k].float()).abs().max()) for k in left)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=8, help="N: GPUs per job in the N-process arms")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--batch", type=int, default=256, help="the global batch (a multiple of --processes)")
    parser.add_argument("--seq", type=int, default=256, help="max_seq_length; the texts fill it")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--checkpointing", action="store_true", help="train.gradient_checkpointing in every arm")
    parser.add_argument("--cpu", action="store_true", help="a smoke run on CPU processes (gloo): no FSDP arm")
    args = parser.parse_args(argv)
    import torch

    gpus = torch.cuda.device_count()
    if not args.cpu and gpus < args.processes:
        raise SystemExit(f"--processes {args.processes} needs that many GPUs and {gpus} are visible (or use --cpu)")
    from pipeline.tools.tiny_models import build_decoder

    scratch = scratch_dir("bench_scaling_")
    model = build_decoder(scratch / "model", hidden=args.hidden, layers=args.layers, max_seq_length=args.seq)
    data = _long_qa(scratch / "qa", rows=args.batch * args.steps + 16, words=args.seq)
    results = {}
    for method, processes, fsdp in arms(args.processes, args.cpu):
        name = f"{method} x{processes}" + (" fsdp" if fsdp != "off" else "")
        results[name] = train(model, data, scratch / name.replace(" ", "_"), method, processes, fsdp, args)
        s = results[name]["summary"]
        print(f"{name:<14} {s['train_samples_per_second']:>9.1f} samples/s  peak {s['peak_memory_mb']:>9.0f} MB "
              f"(process 0)  wall {results[name]['wall_s']:.0f} s", flush=True)  # fmt: skip
    rows = []
    for name, result in results.items():
        method, width = name.split()[0], name.split()[1]
        if width == "x1":
            continue
        single = results[f"{method} x1"]
        speedup = result["summary"]["train_samples_per_second"] / single["summary"]["train_samples_per_second"]
        memory = result["summary"]["peak_memory_mb"] / single["summary"]["peak_memory_mb"]
        diff = max_difference(single["weights"], result["weights"])
        rows.append({"arm": name, "samples_per_s_ratio": speedup, "peak_memory_ratio": memory, "max_weight_diff": diff})
        print(f"{name} vs {method} x1: {speedup:.2f}x samples/s, {memory:.2f}x peak memory, weights differ by "
              f"at most {diff:.1e}")  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "scaling.json"
    out.write_text(json.dumps({"args": vars(args), "gpus": gpus, "rows": rows,
                               "arms": {k: v["summary"] for k, v in results.items()}}, indent=2, default=str))  # fmt: skip
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
