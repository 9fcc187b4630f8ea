"""The memory check's estimate (pipeline/memory.py) per GPU for a 4B decoder embedder (Qwen3-Embedding-4B's shapes),
LoRA and the full fine-tune, on 1 GPU and on 8 GPUs under DDP and FSDP: what docs/scaling-out.md's 4B example quotes.

.venv/bin/python docs/scripts/memory_4b.py /tmp/qwen3-4b-shapes

The model dir holds the real config.json and a safetensors file whose header lists every weight of the model
(shapes from the model built on the meta device) and whose data is a sparse hole: the estimate reads headers only.
"""

import json
import struct
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from pipeline.config import register_configs
from pipeline.disk import human
from pipeline.memory import estimate

QWEN3_EMBEDDING_4B = {  # Qwen/Qwen3-Embedding-4B's config.json, the keys that set shapes
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "hidden_size": 2560,
    "intermediate_size": 9728,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151665,
    "max_position_embeddings": 40960,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
}


def shapes_only_checkpoint(model_dir: Path) -> None:
    """config.json and model.safetensors with the model's real header and no data written (a sparse file)."""
    import torch
    from transformers import Qwen3Config, Qwen3Model

    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(QWEN3_EMBEDDING_4B))
    with torch.device("meta"):
        model = Qwen3Model(Qwen3Config(**QWEN3_EMBEDDING_4B))
    header, offset = {}, 0
    for name, tensor in model.state_dict().items():
        size = tensor.numel() * 2  # bf16, as the checkpoint is stored
        header[name] = {"dtype": "BF16", "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(model_dir / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded)
        f.truncate(8 + len(encoded) + offset)


model_dir = Path(sys.argv[1])
if not (model_dir / "model.safetensors").exists():
    shapes_only_checkpoint(model_dir)
recipe = [  # a 4B comparison's training settings (docs/scaling-out.md)
    "model=qwen3_embedding_0_6b",
    f"model.name={model_dir}",
    "model.max_seq_length=512",
    "train.batch_size=256",
    "train.gradient_checkpointing=true",
]
register_configs()
with initialize_config_dir(str(Path("conf").resolve()), version_base=None):
    print("per GPU (bf16 autocast, fp32 master weights, auto-cached MNRL, checkpointing, global batch 256, 512 tokens)")
    for label, overrides in [
        ("lora r=64, 1 GPU", ["finetune=lora", "finetune.r=64", "finetune.alpha=128"]),
        (
            "lora r=64, 8 GPUs DDP",
            ["finetune=lora", "finetune.r=64", "finetune.alpha=128", "launch.processes_per_job=8"],
        ),
        ("full, 1 GPU", ["finetune=full"]),
        ("full, 8 GPUs DDP", ["finetune=full", "launch.processes_per_job=8"]),
        ("full, 8 GPUs FSDP", ["finetune=full", "launch.processes_per_job=8", "launch.fsdp=full"]),
    ]:
        cfg = compose("config", overrides=recipe + overrides)
        e = estimate(cfg, model_dir, "cuda", "bf16")
        print(
            f"{label:24} {human(e.total):>9}: weights {human(e.weights)}, gradients {human(e.gradients)}, "
            f"AdamW {human(e.optimizer)}, activations {human(e.activations)} ({e.tokens:,} tokens at once)"
        )
