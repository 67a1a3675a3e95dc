"""Inference: generation (constant-memory CoMeT prefill and decoding, the full-attention baseline) and scoring (per-sequence losses)."""
