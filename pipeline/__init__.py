"""lora-vs-full: is a LoRA adapter as good as a full fine-tune for my embedding model? See README.md, "Where things live"."""
