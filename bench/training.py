"""Training: LoRA vs full fine-tuning at the same batch, seconds per step and peak RSS, and the training FLOP/s each
achieves as a fraction of this machine's measured fp32 GEMM peak. Goals: LoRA peak RSS ≤ 0.7× full; FLOP/s ≥ 60%.

Each arm a subprocess (so its peak RSS is its own) running the pipeline's finetune stage on MedQuAD pairs (MiniLM,
r 64 / alpha 128 for LoRA, CachedMNRL, fp32), alternated LoRA/full; seconds/step = median of the step-end-to-step-end
times after a warm-up step; peak RSS while training = the subprocess's VmHWM read when training ends (before the stage
saves and reloads the model), its ru_maxrss (os.wait4) reported beside it; the last step's FLOPs counted with
FlopCounterMode (attention added analytically where the CPU attention kernel is not counted); GEMM peak = best of 5
timed 2048² fp32 torch.matmul on all threads, in the same process before training.
"""

from __future__ import annotations

import json
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
    how,
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


def step_probe(count_step: int):
    """A Trainer callback that times every step, reads RSS, and FLOP-counts step `count_step` (1-based, not timed)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import TrainerCallback

    class StepProbe(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self.calls: list[tuple] = []  # (rows, width, with grad) of each forward of the counted step
            self.rss: dict[str, float] = {}
            self.counted: dict = {}

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.rss["train_begin"] = proc_status_mb("VmRSS")
            config = model.transformers_model.config
            self.shape = {"layers": config.num_hidden_layers, "hidden": config.hidden_size}
            self.last, self.mode = time.perf_counter(), None

        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step + 1 == count_step:
                record = lambda module, a: self.calls.append((*a[0]["input_ids"].shape, torch.is_grad_enabled()))  # noqa: E731
                self.hook = model[0].register_forward_pre_hook(record)
                self.mode = FlopCounterMode(display=False)
                self.mode.__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            if self.mode is not None:
                self.mode.__exit__(None, None, None)
                self.hook.remove()
                by_op = self.mode.get_flop_counts().get("Global", {})
                self.counted = {"total": self.mode.get_total_flops(), "ops": [str(k) for k in by_op]}
            else:
                self.times.append(time.perf_counter() - self.last)
            self.last, self.mode = time.perf_counter(), None

        def on_train_end(self, args, state, control, **kwargs):
            self.rss["train_peak"] = proc_status_mb("VmHWM")

    return StepProbe()


def measure_training(method, work, model=MINILM, data_path=MEDQUAD, steps=4, batch=32, mini_batch=16,
                     max_seq_length=128, gemm_n=2048, r=64, alpha=128) -> dict:  # fmt: skip
    """One arm, in this process: `steps` steps of the pipeline's finetune stage; step 1 a warm-up, the last counted."""
    if steps < 3:
        raise ValueError(f"steps={steps}: must be ≥ 3 (one warm-up, at least one timed, one FLOP-counted)")
    work = Path(work)
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
    schema = SCHEMAS[Method(method)]  # as finetune=lora (dropout 0.1); full has no such keys
    ft_cfg = OmegaConf.structured(schema(r=r, alpha=alpha, dropout=0.1) if method != "full" else schema())
    train_cfg = TrainConfig(max_steps=steps, batch_size=batch, mini_batch_size=mini_batch, logging_steps=10_000)
    train_cfg.eval_steps = train_cfg.save_steps = None
    eval_cfg = OmegaConf.structured(EvalConfig(during_training=False))
    prepare_data(data_cfg, work / "data", work / "hf_datasets")
    probe = step_probe(count_step=steps)
    cfgs = (model_cfg, data_cfg, ft_cfg, OmegaConf.structured(train_cfg), eval_cfg)
    summary = finetune(*cfgs, work / "data", work / method, [probe], work / "hf_datasets")

    attention_counted = any(op in name for name in probe.counted["ops"] for op in ATTENTION_OPS)
    layers, hidden = probe.shape["layers"], probe.shape["hidden"]
    attention = sum(4 * layers * hidden * b * s * s * (3 if grad else 1) for b, s, grad in probe.calls)
    executed = probe.counted["total"] + (0 if attention_counted else attention)
    step_s = median(probe.times[1:]) if len(probe.times) > 1 else probe.times[0]
    return {
        "method": method,
        "threads": torch.get_num_threads(),
        "step_times_s": probe.times,
        "step_s": step_s,
        "rss_mb": {"start": rss_start, "imported": rss_imported, **probe.rss},
        "trainable_params": summary["trainable_params"],
        "shape": probe.shape,
        "calls": probe.calls,
        "flops_counted": probe.counted["total"],
        "attention_in_count": attention_counted,
        "flops_executed": executed,
        "achieved_flops_per_s": executed / step_s,
        "gemm_peak": peak,
        "fraction_of_peak": executed / step_s / peak["flops_per_s"],
    }


def run(steps=7, batch=32, mini_batch=16, reps=1, model=MINILM) -> BenchResult:
    started = time.perf_counter()
    work = scratch_dir("bench-training-")
    workers: dict[str, list] = {"lora": [], "full": []}

    def arm(method: str):
        def go() -> float:
            sizes = {"method": method, "work": str(work / f"{method}-{len(workers[method])}"), "model": model}
            sizes.update(steps=steps, batch=batch, mini_batch=mini_batch)
            cmd = [PYTHON, "-m", "bench.training", json.dumps(sizes)]
            measured = run_measured(cmd, env=bench_env(Path(sizes["work"]))).check()
            workers[method].append({**measured.last_json(), "max_rss_mb": measured.max_rss_mb})
            return workers[method][-1]["step_s"]

        return go

    samples = alternate({"lora": arm("lora"), "full": arm("full")}, reps=reps)

    def med(key, *path):
        def get(w):
            for k in (key, *path):
                w = w[k]
            return w

        return {m: median([get(w) for w in ws]) for m, ws in workers.items()}

    step = {m: median(v) for m, v in samples.items()}
    peak, imported, loaded = med("rss_mb", "train_peak"), med("rss_mb", "imported"), med("rss_mb", "train_begin")
    whole, fraction = med("max_rss_mb"), med("fraction_of_peak")
    achieved, gemm = med("achieved_flops_per_s"), med("gemm_peak", "flops_per_s")
    growth = {m: peak[m] - imported[m] for m in workers}
    rss_ratio, growth_ratio = peak["lora"] / peak["full"], growth["lora"] / growth["full"]
    trainable = workers["full"][-1]["trainable_params"]
    rows = [
        Row(
            "training",
            "LoRA vs full, seconds per step",
            f"LoRA {step['lora']:.2f}s vs full {step['full']:.2f}s (batch {batch} (CachedMNRL mini-batch "
            f"{mini_batch}), max_seq_length 128, {steps - 2} timed steps)",
            step["lora"] / step["full"],
            REPORT,
            REPORT,
            "LoRA skips the frozen weights' gradients and their AdamW update, but still runs the forward and the "
            "input-gradient backward through every layer (the cache's no-grad pass too).",
        ),
        Row(
            "training",
            "LoRA vs full, peak RSS while training",
            f"LoRA {peak['lora']:.0f} MB vs full {peak['full']:.0f} MB (VmHWM at the end of training); above the "
            f"imported libraries ({imported['lora']:.0f} MB): LoRA +{growth['lora']:.0f} vs full "
            f"+{growth['full']:.0f} MB ({growth_ratio:.2f}×); model loaded, before step 1: {loaded['lora']:.0f} vs "
            f"{loaded['full']:.0f} MB; whole finetune-stage process (ru_maxrss, with its save and reload check): "
            f"{whole['lora']:.0f} vs {whole['full']:.0f} MB ({whole['lora'] / whole['full']:.2f}×)",
            rss_ratio,
            f"≤ {RSS_GOAL}×",
            verdict(rss_ratio, at_most=RSS_GOAL),
            "Within goal."
            if rss_ratio <= RSS_GOAL
            else f"Above goal: both arms carry the same fixed footprint (torch, transformers, sentence-transformers, "
            f"datasets: {imported['full']:.0f} MB before any model) and the same activations at this batch; LoRA "
            f"saves only full's gradients + AdamW states of {trainable / 1e6:.1f}M weights (≈ "
            f"{12 * trainable / 1e6:.0f} MB). The training-only growth ratio {growth_ratio:.2f}× is the part LoRA "
            "can change.",
        ),
    ]
    for m, label in (("lora", "LoRA"), ("full", "full")):
        w = workers[m][-1]
        rows.append(
            Row(
                "training",
                f"{label}: training FLOP/s vs fp32 GEMM peak",
                f"{achieved[m] / 1e9:.1f} vs {gemm[m] / 1e9:.1f} GFLOP/s (GEMM 2048² fp32, {w['threads']} threads); "
                f"{w['flops_executed'] / 1e9:.3g} GFLOP/step executed (FlopCounterMode {w['flops_counted'] / 1e9:.3g}"
                f"{'' if w['attention_in_count'] else ' + attention'})",
                fraction[m],
                f"≥ {FLOPS_GOAL}",
                verdict(fraction[m], at_least=FLOPS_GOAL),
                "Within goal."
                if fraction[m] >= FLOPS_GOAL
                else f"Below goal: a {w['shape']['hidden']}-wide, {w['shape']['layers']}-layer model makes small "
                "matmuls that reach a fraction of a large GEMM's rate, and layer norm, GELU, softmax, dropout, the "
                "loss and AdamW are memory-bound work with no FLOPs counted; tokenization is in the step too.",
            )
        )
    details = {"how": how(__doc__), "step_s": samples, "workers": workers}
    return BenchResult("training", rows, details, time.perf_counter() - started)


if __name__ == "__main__":  # one arm: python -m bench.training '{"method": "lora", "work": DIR, ...}'
    quiet()
    print(json.dumps(measure_training(**json.loads(sys.argv[1]))), flush=True)
