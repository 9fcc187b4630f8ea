#!/usr/bin/env bash
# The GPU speed rows, LoRA and full: the paper recipe's shapes (bert-base-uncased's architecture, batch 1024, bf16,
# max_seq_length 256) through bench/speed.py's arms: the pipeline's loss (mini_batch_size=auto), the library's token
# packing (CachedMNRL mini_batch_num_tokens), auto's mini-batches always embedded twice, the reference (CachedMNRL
# mini-batch 32) and plain MNRL (where the batch fits), alternated step by step on the same card and batches, then
# NanoBEIR-mini NDCG@10 of each. Without the Hub the weights are random (same shapes: same compute and memory, not
# the paper's scores). Writes docs/speed_gpu_{lora,full}.json and prints the rows for docs/benchmarks.md.
#   bash bench/gpu_speed.sh [STEPS] [ARMS]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
STEPS=${1:-6}
ARMS=${2:-auto,cached,tokens16384,tokens65536,reference,mnrl}
DATA=${SHARED_DATA:-../shared/data}
OUT=outputs/bench/gpu_speed
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv || true
"$PY" - "$OUT/model" <<'PY'  # bert-base-uncased's architecture (BertConfig's defaults), random weights, MiniLM's vocab
import sys
from pathlib import Path
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
from transformers import BertConfig, BertModel, BertTokenizerFast
from pipeline.models import model_source
out = Path(sys.argv[1])
if not (out / "st").is_dir():
    torch.manual_seed(0)
    tokenizer = BertTokenizerFast.from_pretrained(model_source("sentence-transformers/all-MiniLM-L6-v2"))
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size)).save_pretrained(out / "hf")
    tokenizer.save_pretrained(out / "hf")
    transformer = Transformer(str(out / "hf"))
    SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean")]).save(str(out / "st"))
PY
for LORA in 64 0; do
  NAME=$([ "$LORA" = 0 ] && echo full || echo lora)
  "$PY" -m bench.speed --model "$OUT/model/st" --data "$DATA/medquad-qa" --batch 1024 --max-seq-length 256 \
    --steps "$STEPS" --arms "$ARMS" --lora "$LORA" --precision auto --eval "$DATA/nanobeir-mini" \
    --datasets msmarco,scifact,dbpedia --work "$OUT/work-$NAME" --out "docs/speed_gpu_$NAME.json"
done
