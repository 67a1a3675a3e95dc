"""`python -m eval.lower` (installed as `comet-lower`): see comet_jax/compile/lower.py."""

import sys

from comet_jax.compile.lower import main

if __name__ == "__main__":
    sys.exit(main())
