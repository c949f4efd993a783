"""``python -m unlearn_jax`` runs the ``unlearn-jax`` command line."""

import sys

from unlearn_jax.cli import main

if __name__ == "__main__":
  sys.exit(main())
