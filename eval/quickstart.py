"""`python -m eval.quickstart` (installed as `comet-quickstart`): see comet_jax/demo/quickstart.py."""

import sys

from comet_jax.demo.quickstart import main

if __name__ == "__main__":
    sys.exit(main())
