"""HF safetensors -> comet-jax checkpoint conversion (`comet-convert`, or `python -m comet_jax.convert`)."""
