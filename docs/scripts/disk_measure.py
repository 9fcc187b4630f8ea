"""The disk estimate against what a 2-step fine-tune of the tests' tiny BERT wrote, method by method.

HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python docs/scripts/disk_measure.py /tmp/measure
"""

import sys
from pathlib import Path

from pipeline.dag import run_dag
from pipeline.disk import estimate, human
from tests.conftest import build_tiny_model, compose_config, tiny_overrides, write_nanobeir_dir, write_qa_dir

base = Path(sys.argv[1])
model = build_tiny_model(base / "tiny_bert")
qa, nanobeir = write_qa_dir(base / "qa"), write_nanobeir_dir(base / "nanobeir")
rank = ["finetune.r=4", "finetune.alpha=8"]
for method, extra in [("full", []), ("lora", rank), ("dora", rank), ("ia3", []), ("loha", rank), ("lokr", rank)]:
    overrides = tiny_overrides(base / method, model, qa, nanobeir) + [f"finetune={method}", *extra]
    cfg = compose_config(overrides + ["run.until=finetune", "train.eval_steps=null"])
    out = run_dag(cfg)["finetune"]
    written = sum(p.stat().st_size for p in (out.dir / "model").rglob("*") if p.is_file())
    e = estimate(cfg, model)
    trainable = (e.checkpoint - e.model) // 8  # AdamW: 2 fp32 states per trainable parameter
    print(
        f"{method}: model estimated {human(e.model)}, written {human(written)}; "
        f"trainable estimated {trainable}, run {out.result['trainable_params']}"
    )
