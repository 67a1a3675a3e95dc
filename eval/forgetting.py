"""`python -m eval.forgetting` (installed as `comet-forgetting`): see comet_jax/evals/forgetting.py."""

import sys

from comet_jax.evals.forgetting import main

if __name__ == "__main__":
    sys.exit(main())
