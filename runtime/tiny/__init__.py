"""Deterministic tiny checkpoints in the exact upstream layout: model, tokenizer, VQGAN, bundle."""
