"""`python -m eval.loss` (installed as `comet-loss`): see comet_jax/evals/loss.py."""

import sys

from comet_jax.evals.loss import main

if __name__ == "__main__":
    sys.exit(main())
