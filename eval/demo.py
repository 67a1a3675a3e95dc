"""`python -m eval.demo` (installed as `comet-demo`): see comet_jax/demo/cli.py."""

import sys

from comet_jax.demo.cli import main

if __name__ == "__main__":
    sys.exit(main())
