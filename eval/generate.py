"""`python -m eval.generate` (installed as `comet-generate`): see comet_jax/evals/generate.py."""

import sys

from comet_jax.evals.generate import main

if __name__ == "__main__":
    sys.exit(main())
