"""`python -m eval.tasks` (installed as `comet-tasks`): see comet_jax/evals/tasks.py."""

import sys

from comet_jax.evals.tasks import main

if __name__ == "__main__":
    sys.exit(main())
