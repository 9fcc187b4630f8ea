"""How close the memory check's estimate (pipeline.memory) comes to what training takes: on CPU, the peak RSS a fine-tune
adds to its process, against the estimate, for MiniLM and a small decoder, each arm, with and without checkpointing.

Each case runs in a fresh process: the RSS before the finetune stage (imports, data) is its baseline, the peak RSS at
the end of training (a trainer callback reads ru_maxrss) its peak; measured = peak - baseline. The texts are long
enough to fill `max_seq_length`, as the estimate assumes (an upper bound for shorter texts). Aim: the estimate within
±30% of the measured (ratio measured / estimated in 0.7-1.3).

    python -m bench --only memory            (or python -m bench.memory for the table alone)
"""

from __future__ import annotations

import json
import random
import resource
import sys
import time
from pathlib import Path

from bench.common import MINILM, MISS, PASS, PYTHON, ROOT, BenchResult, Row, bench_env, proc_status_mb, scratch_dir

CASES = (  # (model, method, extra overrides)
    ("minilm", "lora", ()),
    ("minilm", "full", ()),
    ("minilm", "full", ("train.gradient_checkpointing=true",)),
    ("decoder", "lora", ()),
    ("decoder", "full", ()),
    ("decoder", "full", ("train.gradient_checkpointing=true",)),
)
LOW, HIGH = 0.7, 1.3


def _long_qa(path: Path, rows: int, words: int) -> Path:
    import pandas as pd

    rng = random.Random(0)
    vocab = "heart lung kidney liver brain blood bone skin muscle nerve cell gene protein virus dose fever pain".split()
    text = lambda: " ".join(rng.choice(vocab) for _ in range(words))  # noqa: E731
    (path / "data").mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({"question": [f"{i} {text()}" for i in range(rows)], "answer": [text() for _ in range(rows)]})
    frame.to_parquet(path / "data" / "train.parquet")
    return path


def overrides(model: str, data: Path, work: Path, batch: int, seq: int, steps: int) -> list[str]:
    return [
        f"model.name={model}",
        f"model.max_seq_length={seq}",
        f"data.path={data}",
        "data.eval_size=8",
        "data.test_size=0",  # training only: no in-domain test set
        f"data.train_size={batch * steps}",
        "train.loss=mnrl",  # every text's graph kept: the estimate's activations are the whole batch
        f"train.batch_size={batch}",
        f"train.max_steps={steps}",
        "train.save_steps=null",
        "train.eval_steps=null",
        "train.warmup_ratio=0",
        f"paths.outputs={work}",
    ]


def child(spec: str) -> None:
    """In a fresh process: prepare the data, then the finetune stage; print baseline and peak RSS (MB) as JSON."""
    from hydra import compose, initialize_config_dir
    from transformers import TrainerCallback

    from pipeline.config import register_configs
    from pipeline.stages.finetune import finetune
    from pipeline.stages.prepare_data import prepare_data

    args = json.loads(spec)
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=args["overrides"])
    data_dir = Path(args["work"]) / "prepared"
    prepare_data(cfg.data, data_dir)
    peak = {}

    class Peak(TrainerCallback):
        def on_train_end(self, *a, **k):
            peak["mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    baseline = proc_status_mb("VmRSS")
    finetune(cfg.model, cfg.data, cfg.finetune, cfg.train, cfg.eval, data_dir, Path(args["work"]) / "out", [Peak()])
    print(json.dumps({"baseline_mb": baseline, "peak_mb": peak["mb"]}))


def run(batch=32, seq=128, steps=2, decoder_hidden=512, decoder_layers=4, model=MINILM) -> BenchResult:
    import subprocess

    from hydra import compose, initialize_config_dir

    from pipeline.config import register_configs
    from pipeline.memory import estimate
    from pipeline.models import model_source
    from pipeline.tools.tiny_models import build_decoder

    started = time.perf_counter()
    work = scratch_dir("bench-memory-")
    data = _long_qa(work / "qa", batch * steps + 8, words=2 * seq)
    decoder = build_decoder(work / "decoder", decoder_hidden, decoder_layers, "bfloat16", max_seq_length=seq)
    models = {"minilm": model, "decoder": str(decoder)}
    register_configs()
    rows, raw = [], []
    for name, method, extra in CASES:
        case = work / f"{name}-{method}-{len(raw)}"
        cfg_overrides = [f"finetune={method}", *overrides(models[name], data, case, batch, seq, steps), *extra]
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name="config", overrides=cfg_overrides)
        est = estimate(cfg, Path(model_source(cfg.model.name)), "cpu", "fp32")
        spec = json.dumps({"overrides": cfg_overrides, "work": str(case)})
        out = subprocess.run(
            [PYTHON, "-m", "bench.memory", "--child", spec], env=bench_env(case), capture_output=True, text=True
        )
        if out.returncode:
            raise RuntimeError(f"bench.memory case {name} {method} failed: {out.stderr[-2000:]}")
        measured = json.loads(out.stdout.strip().splitlines()[-1])
        added = measured["peak_mb"] - measured["baseline_mb"]
        ratio = added / (est.total / 1e6)
        label = f"{name} {method}" + (" checkpointing" if extra else "")
        raw.append({"case": label, **measured, "estimate_mb": est.total / 1e6, "parts_mb": _parts(est)})
        rows.append(
            Row(
                "memory",
                f"estimate vs peak RSS added, {label}",
                f"measured {added:.0f} MB, estimated {est.total / 1e6:.0f} MB ({_parts(est)})",
                ratio,
                f"{LOW}-{HIGH}×",
                PASS if LOW <= ratio <= HIGH else MISS,
            )
        )
        print(f"[bench] memory {label}: measured {added:.0f} MB, estimated {est.total / 1e6:.0f} MB", file=sys.stderr)
    how = (
        f"`python -m bench --only memory`: MiniLM and a Qwen3 decoder ({decoder_hidden} wide, {decoder_layers} "
        f"layers, saved in bf16, trained in fp32), plain MNRL, batch {batch}, max_seq_length {seq} filled by the "
        f"texts, {steps} steps, each case in a fresh process: peak RSS at the end of training minus the RSS before the "
        "finetune stage, against pipeline.memory's estimate (weights, gradients, AdamW, activations)."
    )
    return BenchResult("memory", rows, {"how": how, "raw": raw}, time.perf_counter() - started)


def _parts(est) -> str:
    return (
        f"weights {est.weights / 1e6:.0f}, grads {est.gradients / 1e6:.0f}, AdamW {est.optimizer / 1e6:.0f}, "
        f"activations {est.activations / 1e6:.0f}"
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
    else:
        from bench.common import markdown_table

        result = run()
        print(markdown_table(result.rows))
