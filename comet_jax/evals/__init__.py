"""The evaluation commands a user installs (comet-loss, comet-passkey) and what the evaluations and benchmarks share. `python -m eval.loss` / `python -m eval.passkey` run the same code."""
