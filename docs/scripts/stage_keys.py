"""Write every stage key of every experiment x finetune method (x max_steps=null, x bf16), with fixed content
fingerprints, to a JSON file: run before and after a change to compare (`cmp`).

    .venv/bin/python docs/scripts/stage_keys.py /tmp/keys_before.json
"""

import json
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from pipeline.config import register_configs
from pipeline.dag import inputs_of, stage_key, stages_until

register_configs()
CONF = Path("conf").resolve()
FOUND = {"data": "local:aaaa", "eval": "hub:bbbb", "model": "hub:cccc"}  # the keys' config part is what is compared

out = {}
with initialize_config_dir(str(CONF), version_base=None):
    experiments = [None] + sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
    methods = [None] + sorted(p.stem for p in (CONF / "finetune").glob("*.yaml"))
    for experiment in experiments:
        for method in methods:
            base = ([f"experiment={experiment}"] if experiment else []) + ([f"finetune={method}"] if method else [])
            for extra in ([], ["train.max_steps=null"], ["train.precision=bf16"]):
                try:
                    cfg = compose("config", overrides=base + extra)
                except ConfigCompositionException as error:  # a LoRA recipe's targets on another method: no config
                    print(f"skipped {' '.join(base + extra)}: {str(error).splitlines()[0]}")
                    continue
                keys: dict[str, str] = {}
                for stage in stages_until(None, cfg):
                    keys[stage.name] = stage_key(stage, cfg, {n: keys[n] for n in inputs_of(stage, cfg)}, FOUND)
                out[" ".join(base + extra)] = keys
Path(sys.argv[1]).write_text(json.dumps(out, indent=1, sort_keys=True))
print(f"{len(out)} configs")
