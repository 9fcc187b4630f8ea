"""Training: LoRA vs full fine-tuning at the same batch, seconds per step and peak RSS, and the training FLOP/s each
achieves as a fraction of this machine's measured fp32 GEMM peak.

Goals: LoRA peak RSS ≤ 0.7× full; training FLOP/s ≥ 60% of the GEMM peak. Each arm is its own subprocess (so its
peak RSS is its own) running the pipeline's finetune stage (`pipeline.stages.finetune.finetune`: the recipe's
CachedMNRL, NO_DUPLICATES, AdamW) with a callback that times every optimizer step (step end to step end: data
collation included), skips the first (warm-up) and FLOP-counts the last (`torch.utils.flop_counter.FlopCounterMode`,
not timed). FLOPs are also derived analytically from the token counts of every forward call of that step.

    python -m bench.training [--steps 7] [--batch 32] [--mini-batch 16] [--reps 1]
    python -m bench.training --worker lora|full ...   (one arm; prints one JSON line)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench.common import (
    MEDQUAD,
    MINILM,
    PYTHON,
    REPORT,
    BenchResult,
    Row,
    alternate,
    bench_env,
    gemm_peak,
    markdown_table,
    median,
    proc_status_mb,
    quiet,
    run_measured,
    scratch_dir,
    verdict,
)

RSS_GOAL = 0.7
FLOPS_GOAL = 0.6
ATTENTION_OPS = ("bmm", "baddbmm", "_scaled_dot_product", "_flash_attention", "_efficient_attention")


def linear_params(model) -> dict[str, int]:
    """Weights that matmul every token: the transformer's linear layers (pooler excluded), base and LoRA apart."""
    import torch

    base = lora = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "pooler" not in name:
            if "lora_" in name:
                lora += module.weight.numel()
            else:
                base += module.weight.numel()
    return {"base": base, "lora": lora}


def forward_flops(params: dict[str, int], layers: int, hidden: int, batch: int, seq: int) -> dict[str, float]:
    """One forward pass of `batch` sequences of `seq` tokens: 2 FLOPs per weight per token (base and LoRA weights
    apart), and attention's QK^T and AV (2 × 2·s·d per token per layer)."""
    tokens = batch * seq
    return {
        "base": 2.0 * params["base"] * tokens,
        "lora": 2.0 * params["lora"] * tokens,
        "attention": 4.0 * layers * hidden * batch * seq * seq,
    }


def analytic_step_flops(calls: list[tuple[int, int, bool]], params: dict, layers: int, hidden: int, lora: bool) -> dict:
    """FLOPs of one training step from its forward calls (batch, seq, with grad?).

    A backward costs 2× the forward of what it differentiates for inputs and weights, 1× for inputs alone. Full:
    every weight trains, ≈ 6 × params × tokens. LoRA: the frozen base needs input gradients only (1×), the adapter
    and attention both (2×): ≈ 4 × params × tokens + the adapter. CachedMNRL's first, no-grad pass over the batch
    costs one forward more.
    """
    total = {"no_grad": 0.0, "forward": 0.0, "backward": 0.0}
    for b, s, grad in calls:
        f = forward_flops(params, layers, hidden, b, s)
        if not grad:
            total["no_grad"] += sum(f.values())
            continue
        total["forward"] += sum(f.values())
        total["backward"] += f["base"] * (1.0 if lora else 2.0) + 2.0 * (f["lora"] + f["attention"])
    tokens = sum(b * s for b, s, grad in calls if grad)
    useful = total["forward"] + total["backward"]
    return {
        "total": useful + total["no_grad"],
        "useful": useful,  # without the cache's recomputation
        "attention": sum(
            forward_flops(params, layers, hidden, b, s)["attention"] * (3.0 if g else 1.0) for b, s, g in calls
        ),
        "rule_of_thumb": (4.0 if lora else 6.0) * params["base"] * tokens,
        "tokens": tokens,
        **total,
    }


class StepProbe:
    """Trainer callback: step times, RSS, and the FLOPs (counted and analytic) of step `count_step` (1-based)."""

    def __init__(self, count_step: int):
        from transformers import TrainerCallback

        self.count_step = count_step
        self.times: list[float] = []
        self.calls: list[tuple[int, int, bool]] = []
        self.counted: dict = {}
        self.rss: dict[str, float] = {}
        self.shapes: dict[str, int] = {}
        self.params: dict[str, int] = {}
        self._last = 0.0
        self._mode = None
        self._hook = None
        probe = self

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kwargs):
                probe.rss["train_begin"] = proc_status_mb("VmRSS")
                # the trained model's shapes and linear weights (LoRA's included), for the analytic FLOPs
                config = model.transformers_model.config
                probe.shapes = {
                    "layers": config.num_hidden_layers,
                    "hidden": config.hidden_size,
                    "heads": config.num_attention_heads,
                }
                probe.params = linear_params(model)
                probe._last = time.perf_counter()

            def on_step_begin(self, args, state, control, model=None, **kwargs):
                if state.global_step + 1 == probe.count_step:
                    probe._start_count(model)

            def on_step_end(self, args, state, control, **kwargs):
                if probe._mode is not None:
                    probe._stop_count()
                    probe._last = time.perf_counter()  # the counted step runs slower: not timed
                    return
                now = time.perf_counter()
                probe.times.append(now - probe._last)
                probe._last = now

            def on_train_end(self, args, state, control, **kwargs):
                probe.rss["train_peak"] = proc_status_mb("VmHWM")

        self.callback = _Callback()

    def _start_count(self, model) -> None:
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        def record(module, args):
            ids = args[0]["input_ids"]
            self.calls.append((int(ids.shape[0]), int(ids.shape[1]), torch.is_grad_enabled()))

        self._hook = model[0].register_forward_pre_hook(record)
        self._mode = FlopCounterMode(display=False)
        self._mode.__enter__()

    def _stop_count(self) -> None:
        self._mode.__exit__(None, None, None)
        self._hook.remove()
        counts = self._mode.get_flop_counts().get("Global", {})
        self.counted = {"total": self._mode.get_total_flops(), "by_op": {str(k): v for k, v in counts.items()}}
        self._mode = None


def measure_training(
    method: str,
    work: Path,
    model: str = MINILM,
    data_path: str | Path = MEDQUAD,
    steps: int = 4,
    batch: int = 32,
    mini_batch: int = 16,
    max_seq_length: int | None = 128,
    gemm_n: int = 2048,
    r: int = 64,
    alpha: int = 128,
) -> dict:
    """One arm, in this process: train `steps` steps with the pipeline's finetune stage and report what it cost.

    Step 1 is a warm-up, steps 2..steps-1 are timed, step `steps` is FLOP-counted (so steps ≥ 3).
    """
    if steps < 3:
        raise ValueError("steps must be ≥ 3: one warm-up, at least one timed, one FLOP-counted")
    rss_start = proc_status_mb("VmRSS")
    import torch
    from omegaconf import OmegaConf

    from pipeline.adapter_configs import SCHEMAS
    from pipeline.config import DataConfig, EvalConfig, Method, ModelConfig, TrainConfig
    from pipeline.stages.finetune import finetune
    from pipeline.stages.prepare_data import prepare_data

    rss_imported = proc_status_mb("VmRSS")
    peak = gemm_peak(gemm_n)
    model_cfg = OmegaConf.structured(ModelConfig(name=str(model), max_seq_length=max_seq_length))
    data_cfg = OmegaConf.structured(DataConfig(path=str(data_path), eval_size=16, train_size=steps * batch))
    schema = SCHEMAS[Method(method)]  # as finetune=lora (r 64, alpha 128, dropout 0.1); full has no such keys
    ft_cfg = OmegaConf.structured(schema(r=r, alpha=alpha, dropout=0.1) if method != "full" else schema())
    train_cfg = OmegaConf.structured(
        TrainConfig(
            max_steps=steps,
            batch_size=batch,
            mini_batch_size=mini_batch,
            eval_steps=None,
            save_steps=None,
            logging_steps=10_000,
        )
    )
    eval_cfg = OmegaConf.structured(EvalConfig(during_training=False))
    prepare_data(data_cfg, work / "data", work / "hf_datasets")
    probe = StepProbe(count_step=steps)
    start = time.perf_counter()
    summary = finetune(
        model_cfg,
        data_cfg,
        ft_cfg,
        train_cfg,
        eval_cfg,
        work / "data",
        work / method,
        [probe.callback],
        work / "hf_datasets",
    )
    stage_s = time.perf_counter() - start

    params, shapes = probe.params, probe.shapes
    analytic = analytic_step_flops(probe.calls, params, shapes["layers"], shapes["hidden"], method == "lora")
    counted = probe.counted["total"]
    attention_counted = any(op in k for k in probe.counted["by_op"] for op in ATTENTION_OPS)
    executed = counted if attention_counted else counted + analytic["attention"]
    step_s = median(probe.times[1:]) if len(probe.times) > 1 else probe.times[0]
    return {
        "method": method,
        "steps": steps,
        "batch": batch,
        "mini_batch": mini_batch,
        "threads": torch.get_num_threads(),
        "step_times_s": probe.times,
        "step_s": step_s,
        "stage_s": stage_s,
        "rss_mb": {"start": rss_start, "imported": rss_imported, **probe.rss},
        "trainable_params": summary["trainable_params"],
        "linear_params": params,
        "shapes": shapes,
        "calls": probe.calls,
        "flops_counted": counted,
        "flops_counted_by_op": probe.counted["by_op"],
        "attention_in_count": attention_counted,
        "flops_executed": executed,
        "flops_analytic": analytic,
        "achieved_flops_per_s": executed / step_s,
        "gemm_peak": peak,
        "fraction_of_peak": executed / step_s / peak["flops_per_s"],
    }


def run(steps: int = 7, batch: int = 32, mini_batch: int = 16, reps: int = 1, model: str = MINILM) -> BenchResult:
    started = time.perf_counter()
    work = scratch_dir("bench-training-")
    results: dict[str, list[dict]] = {"lora": [], "full": []}
    rss: dict[str, list[float]] = {"lora": [], "full": []}
    counter = iter(range(1000))

    def arm(method: str):
        def go() -> float:
            scratch = work / f"{method}-{next(counter)}"
            cmd = [
                PYTHON,
                "-m",
                "bench.training",
                "--worker",
                method,
                "--work",
                str(scratch),
                "--steps",
                str(steps),
                "--batch",
                str(batch),
                "--mini-batch",
                str(mini_batch),
                "--model",
                model,
            ]
            measured = run_measured(cmd, env=bench_env(scratch)).check()
            results[method].append(measured.last_json())
            rss[method].append(measured.max_rss_mb)
            return results[method][-1]["step_s"]

        return go

    samples = alternate({"lora": arm("lora"), "full": arm("full")}, reps=reps)
    step = {m: median(v) for m, v in samples.items()}
    peak_rss = {m: median(v) for m, v in rss.items()}
    train_peak = {m: median([r["rss_mb"]["train_peak"] for r in results[m]]) for m in results}
    loaded = {m: median([r["rss_mb"]["train_begin"] for r in results[m]]) for m in results}
    imported = {m: median([r["rss_mb"]["imported"] for r in results[m]]) for m in results}
    fraction = {m: median([r["fraction_of_peak"] for r in results[m]]) for m in results}
    achieved = {m: median([r["achieved_flops_per_s"] for r in results[m]]) for m in results}
    gemm = {m: median([r["gemm_peak"]["flops_per_s"] for r in results[m]]) for m in results}
    last = {m: results[m][-1] for m in results}
    step_ratio, rss_ratio = step["lora"] / step["full"], train_peak["lora"] / train_peak["full"]
    growth = {m: train_peak[m] - imported[m] for m in results}
    growth_ratio = growth["lora"] / growth["full"]
    setup = f"batch {batch} (CachedMNRL mini-batch {mini_batch}), max_seq_length 128, {steps - 2} timed steps"

    rows = [
        Row(
            "training",
            "LoRA vs full, seconds per step",
            f"LoRA {step['lora']:.2f}s vs full {step['full']:.2f}s ({setup})",
            step_ratio,
            "report",
            REPORT,
            "LoRA skips the frozen weights' gradients and their AdamW update, but still runs the forward and the "
            "input-gradient backward through every layer (the cache's no-grad pass too).",
        ),
        Row(
            "training",
            "LoRA vs full, peak RSS while training",
            f"LoRA {train_peak['lora']:.0f} MB vs full {train_peak['full']:.0f} MB (VmHWM at the end of training); "
            f"above the imported libraries ({imported['lora']:.0f} MB): LoRA +{growth['lora']:.0f} vs full "
            f"+{growth['full']:.0f} MB ({growth_ratio:.2f}×); model loaded, before step 1: {loaded['lora']:.0f} vs "
            f"{loaded['full']:.0f} MB; whole finetune-stage process (ru_maxrss, with its save and reload check): "
            f"{peak_rss['lora']:.0f} vs {peak_rss['full']:.0f} MB ({peak_rss['lora'] / peak_rss['full']:.2f}×)",
            rss_ratio,
            f"≤ {RSS_GOAL}×",
            verdict(rss_ratio, at_most=RSS_GOAL),
            "Within goal."
            if rss_ratio <= RSS_GOAL
            else f"Above goal: both arms carry the same fixed footprint (torch, transformers, sentence-transformers, "
            f"datasets: {imported['full']:.0f} MB before any model) and the same activations at this batch; LoRA "
            f"saves only full's gradients + AdamW states of {last['full']['trainable_params'] / 1e6:.1f}M weights "
            f"(≈ {3 * 4 * last['full']['trainable_params'] / 1e6:.0f} MB). The training-only growth ratio "
            f"{growth_ratio:.2f}× is the part LoRA can change.",
        ),
    ]
    for m in ("lora", "full"):
        r = last[m]
        rows.append(
            Row(
                "training",
                f"{'LoRA' if m == 'lora' else 'full'}: training FLOP/s vs fp32 GEMM peak",
                f"{achieved[m] / 1e9:.1f} vs {gemm[m] / 1e9:.1f} GFLOP/s (GEMM {r['gemm_peak']['n']}² fp32, "
                f"{r['threads']} threads); {r['flops_executed'] / 1e9:.3g} GFLOP/step executed (FlopCounterMode "
                f"{r['flops_counted'] / 1e9:.3g}{'' if r['attention_in_count'] else ' + attention'}; analytic "
                f"{r['flops_analytic']['total'] / 1e9:.3g}, of which the cache's recomputation "
                f"{(r['flops_analytic']['total'] - r['flops_analytic']['useful']) / 1e9:.3g})",
                fraction[m],
                f"≥ {FLOPS_GOAL}",
                verdict(fraction[m], at_least=FLOPS_GOAL),
                "Within goal."
                if fraction[m] >= FLOPS_GOAL
                else f"Below goal: a {r['shapes']['hidden']}-wide, {r['shapes']['layers']}-layer model makes small "
                f"matmuls (per-head attention is {r['shapes']['hidden'] // r['shapes']['heads']} wide, seq ≤ 128) "
                "that reach a fraction of a large GEMM's rate, and layer norm, GELU, softmax, dropout, the loss and "
                "AdamW are memory-bound work with no FLOPs counted; tokenization is in the step too.",
            ),
        )
    details = {
        "how": (
            "Each arm a subprocess running the pipeline's finetune stage on MedQuAD pairs (MiniLM, r 64 / alpha 128 "
            "for LoRA, fp32), alternated LoRA/full; seconds/step = median of the step-end-to-step-end times after "
            "a warm-up step; peak RSS while training = the subprocess's VmHWM read when training ends (before the "
            "stage saves and reloads the model), its ru_maxrss (os.wait4) reported beside it; FLOPs of the last "
            "step counted "
            "with FlopCounterMode (attention added analytically where the CPU attention kernel is not counted) "
            "and checked against 2·weights·tokens per forward (+ backward 2× for full, 1× for LoRA, + the "
            "cache's no-grad pass); GEMM peak = best of 5 timed 2048² fp32 torch.matmul on all threads, in the "
            "same process before training."
        ),
        "step_s": samples,
        "peak_rss_mb": rss,
        "workers": results,
        "config": {"steps": steps, "batch": batch, "mini_batch": mini_batch, "reps": reps, "model": model},
    }
    return BenchResult("training", rows, details, time.perf_counter() - started)


def main(argv: list[str] | None = None) -> BenchResult | dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--mini-batch", type=int, default=16)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--model", default=MINILM)
    parser.add_argument("--worker", choices=("lora", "full"), help="run one arm in this process")
    parser.add_argument("--work", type=Path, help="the worker's scratch dir")
    args = parser.parse_args(argv)
    if args.worker:
        import json

        quiet()
        report = measure_training(args.worker, args.work, args.model, MEDQUAD, args.steps, args.batch, args.mini_batch)
        print(json.dumps(report), flush=True)
        return report
    result = run(args.steps, args.batch, args.mini_batch, args.reps, args.model)
    result.save()
    print(markdown_table(result.rows))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
