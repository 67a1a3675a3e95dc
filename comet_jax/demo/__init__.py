"""Demos that run on a CPU with nothing downloaded: `comet-demo` (passkey_demo.py: three small
models trained from scratch and evaluated on passkey retrieval far beyond their training
length) and `comet-quickstart` (quickstart.py: a random Llama converted and scored)."""
