#!/usr/bin/env bash
# The GPU rows of issue 15, in one go: the paper recipe (bert-base-uncased's architecture, batch 1024, bf16, the
# reference's CachedMNRL mini-batch 32, max_seq_length 256) through the pipeline's loss (mini_batch_size=auto) vs the
# reference settings, alternated step by step on the same card and batches (bench/speed.py), then NanoBEIR-mini
# NDCG@10 of both. Without the Hub the weights are random (same shapes: same compute and memory, not the paper's
# scores). About 5 minutes on one H200. Writes docs/speed_gpu.json and prints the rows for docs/benchmarks.md.
#   bash bench/gpu_speed.sh [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
STEPS=${1:-12}
OUT=outputs/bench/gpu_speed
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv || true
"$PY" - "$OUT" <<'PY'
import sys
from pathlib import Path
from bench.gpu_paper_recipe import build_bert_base
from pipeline.models import model_source
out = Path(sys.argv[1])
if not (out / "model" / "st").is_dir():
    build_bert_base(Path(model_source("sentence-transformers/all-MiniLM-L6-v2")), out / "model", 768, 12)
PY
"$PY" -m bench.speed --model "$OUT/model/st" --data ../shared/data/medquad-qa --batch 1024 --mini-batch 32 \
  --max-seq-length 256 --steps "$STEPS" --precision auto --eval ../shared/data/nanobeir-mini \
  --datasets msmarco,scifact,dbpedia --work "$OUT/work" --out docs/speed_gpu.json
