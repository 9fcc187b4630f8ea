"""Evaluation: NanoBEIR names, the sentence-transformers and mteb backends, and the cross-check between them."""
