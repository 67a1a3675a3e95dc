"""Input data: JSONL token sequences (and later grain sources, synthetic passkeys)."""
