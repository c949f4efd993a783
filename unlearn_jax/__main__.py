"""``python -m unlearn_jax`` runs the ``unlearn-jax`` command line."""

import sys

from unlearn_jax.study.cli import main

if __name__ == "__main__":
  sys.exit(main())
