"""Compiling for a machine we do not have: `comet-lower` (lower.py: does the train step, and
the prefill and decode steps, compile for the target?) and `comet-plan` (plan.py: the memory
plan and step time of a training run on a TPU topology or N devices). Both build abstract
inputs with `comet_jax.aot`; nothing is allocated."""
