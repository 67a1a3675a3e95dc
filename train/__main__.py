"""`python -m train` (installed as `comet-train`): see comet_jax/train/cli.py."""

import os
import sys

from comet_jax.train.cli import main

if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
