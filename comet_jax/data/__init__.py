"""Input data: JSONL/ArrayRecord parsing, grain sources and the training pipeline, synthetic passkeys, tokenizers."""
