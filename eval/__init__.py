"""Evaluations: loss, passkey, benchmarks (`python -m eval.<name> --help`)."""
