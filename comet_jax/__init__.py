"""comet-jax: CoMeT (Collaborative Memory Transformer) in JAX."""

__version__ = "0.1.0"
