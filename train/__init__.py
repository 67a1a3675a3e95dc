"""Training entry point: `python -m train --config configs/X.yaml [key=value ...]`."""
