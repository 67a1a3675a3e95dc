"""Reading and writing what lives on disk: tokenizers (and model checkpoints, comet_jax.checkpoint)."""
