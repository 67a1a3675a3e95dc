"""Training: the typed config, the loop, the jitted step, the optimizer, checkpoints of the train state, the run-dir lock, metrics and FLOP counts. `comet-train` / `python -m train` is `cli.main`."""
