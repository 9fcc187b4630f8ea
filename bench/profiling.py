"""Profile: one training step of two arms of bench/speed.py (`reference`: CachedMNRL mini-batch 32; `auto`: the
pipeline's `train.mini_batch_size=auto`) under torch.profiler; the traces' summary goes to docs/profile_cpu.md.

Both arms start from the same weights, take one warm-up step, then one profiled step on the same batch. The summary
per arm: the step's wall time; the time inside the first pass's embedding without gradients (what GradCache adds)
and inside embeddings with gradients; the tokens computed (padding included) against the real tokens, per pass; and
the profiler's operator table (top operators by self CPU time), whose matmul rows show where the time goes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench import speed
from bench.common import MINILM, REPORT, ROOT, BenchResult, Row, how, scratch_dir

DOC = ROOT / "docs" / "profile_cpu.md"
MATMUL_OPS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm")


def _labelled(loss) -> dict[str, int]:
    """Wraps `loss.embed_minibatch` in profiler labels (with / without gradients) and counts the tokens it computes:
    padded (what the matmuls see, after the per-mini-batch trim) and real."""
    from torch.profiler import record_function

    counts = {"padded_with_grad": 0, "real_with_grad": 0, "padded_no_grad": 0, "real_no_grad": 0}
    embed = loss.embed_minibatch

    def labelled(sentence_feature, begin, end, with_grad, *args, **kwargs):
        mask = sentence_feature["attention_mask"][begin:end]
        kind = "with_grad" if with_grad else "no_grad"
        counts[f"padded_{kind}"] += (end - begin) * int(mask.sum(dim=1).max())  # trimmed to its longest row
        counts[f"real_{kind}"] += int(mask.sum())
        with record_function(f"embed {kind.replace('_', ' ')}"):
            return embed(sentence_feature, begin, end, with_grad, *args, **kwargs)

    loss.embed_minibatch = labelled
    return counts


def profile_arm(arm: tuple, texts) -> dict:
    from torch.profiler import ProfilerActivity, profile

    counts = _labelled(arm[1])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        loss, _ = speed.train_step(arm, texts, "cpu", None)
        wall = time.perf_counter() - start
    averages = prof.key_averages()
    by_name = {event.key: event for event in averages}
    return {
        "step_s": wall,
        "loss": loss,
        "tokens": dict(counts),
        "embed_no_grad_s": by_name["embed no grad"].cpu_time_total / 1e6 if "embed no grad" in by_name else 0.0,
        "embed_with_grad_s": by_name["embed with grad"].cpu_time_total / 1e6 if "embed with grad" in by_name else 0.0,
        "self_cpu_s": sum(event.self_cpu_time_total for event in averages) / 1e6,
        "matmul_self_s": sum(by_name[op].self_cpu_time_total for op in MATMUL_OPS if op in by_name) / 1e6,
        "table": averages.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=48),
    }


def measure(args: argparse.Namespace) -> dict:
    import torch

    texts = speed.batches(args.data, args.work, args.batch, 2)
    arms = speed.build_arms(args, "cpu", 4)
    for arm in arms.values():
        speed.train_step(arm, texts[0], "cpu", None)  # warm-up
    report = {"config": {k: str(v) for k, v in vars(args).items()}, "torch_threads": torch.get_num_threads()}
    report["arms"] = {name: profile_arm(arm, texts[1]) for name, arm in arms.items()}
    return report


def write(report: dict, out: Path) -> None:
    cfg = report["config"]
    text = [
        "# Profile of one training step: reference settings vs `train.mini_batch_size=auto`\n",
        f"Produced by `python -m bench --only profile` (in `make bench`) on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; do not edit by hand. {Path(cfg['model']).name}, batch "
        f"{cfg['batch']} MedQuAD pairs, max_seq_length {cfg['max_seq_length']}, fp32, {report['torch_threads']} torch "
        f"threads; the reference is CachedMNRL with mini-batch {cfg['mini_batch']}. One warm-up step, then one "
        "profiled step per arm on the same batch.\n",
    ]
    for name, arm in report["arms"].items():
        tokens = arm["tokens"]
        text.append(
            f"### {name}\n\n"
            f"- step {arm['step_s']:.1f} s under the profiler (loss {arm['loss']:.4f}); operators' self CPU time "
            f"{arm['self_cpu_s']:.1f} s, of which matmuls ({', '.join(MATMUL_OPS)}) {arm['matmul_self_s']:.1f} s "
            f"({arm['matmul_self_s'] / arm['self_cpu_s']:.0%})\n"
            f"- embedding without gradients (GradCache's first pass): {arm['embed_no_grad_s']:.1f} s for "
            f"{tokens['padded_no_grad']:,} tokens computed ({tokens['real_no_grad']:,} real)\n"
            f"- embedding with gradients (forward only; its backward runs in autograd's nodes): "
            f"{arm['embed_with_grad_s']:.1f} s for {tokens['padded_with_grad']:,} tokens computed "
            f"({tokens['real_with_grad']:,} real)\n\n```\n{arm['table']}\n```\n"
        )
    out.write_text("\n".join(text))


def rows_from(report: dict) -> list[Row]:
    ref, ours = report["arms"]["reference"], report["arms"]["auto"]
    tokens_ref = ref["tokens"]["padded_no_grad"] + ref["tokens"]["padded_with_grad"]
    tokens_ours = ours["tokens"]["padded_no_grad"] + ours["tokens"]["padded_with_grad"]
    share = {name: arm["matmul_self_s"] / arm["self_cpu_s"] for name, arm in report["arms"].items()}
    return [
        Row(
            "profile",
            "one profiled step, pipeline vs reference: tokens computed (padding and second pass included), step time",
            f"{tokens_ours:,} vs {tokens_ref:,} tokens ({ours['tokens']['real_with_grad']:,} real); step "
            f"{ours['step_s']:.1f} vs {ref['step_s']:.1f} s; first pass without gradients {ours['embed_no_grad_s']:.1f}"
            f" vs {ref['embed_no_grad_s']:.1f} s; matmuls {share['auto']:.0%} vs {share['reference']:.0%} of operator "
            f"time (batch {report['config']['batch']})",
            ours["step_s"] / ref["step_s"],
            REPORT,
            REPORT,
            "where the speed row's gain comes from: fewer tokens computed (the kept mini-batches skip the second "
            "pass). Operator tables: docs/profile_cpu.md.",
        )
    ]


def run(model=MINILM, batch=64, mini_batch=32, max_seq_length=256, doc=DOC, data=None, work=None) -> BenchResult:
    started = time.perf_counter()
    args = speed.parser().parse_args(["--model", str(model), "--arms", "reference,auto", "--batch", str(batch)])
    args.mini_batch, args.max_seq_length = mini_batch, max_seq_length
    args.data, args.work = str(data or args.data), Path(work) if work else scratch_dir("bench-profile-")
    report = measure(args)
    write(report, Path(doc))
    report["arms"] = {name: {k: v for k, v in arm.items() if k != "table"} for name, arm in report["arms"].items()}
    report["how"] = how(__doc__)
    return BenchResult("profile", rows_from(report), report, time.perf_counter() - started)
