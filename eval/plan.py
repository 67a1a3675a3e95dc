"""`python -m eval.plan` (installed as `comet-plan`): see comet_jax/compile/plan.py."""

import sys

from comet_jax.compile.plan import main

if __name__ == "__main__":
    sys.exit(main())
