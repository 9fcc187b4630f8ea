"""lora-vs-full: is a LoRA adapter as good as a full fine-tune for my embedding model? See README.md; the code map is in
docs/pipeline.md."""
