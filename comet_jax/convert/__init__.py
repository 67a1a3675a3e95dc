"""HF safetensors -> comet-jax checkpoint conversion (`python -m comet_jax.convert`)."""
