"""`python -m eval.passkey` (installed as `comet-passkey`): see comet_jax/evals/passkey.py."""

import sys

from comet_jax.evals.passkey import main

if __name__ == "__main__":
    sys.exit(main())
