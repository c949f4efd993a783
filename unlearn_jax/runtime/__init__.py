"""Running the steps: the drivers and what they stand on (compiled engine, host loop, resume, devices).

- :mod:`~unlearn_jax.runtime.drivers`: :func:`train`, :func:`retrain`, :func:`unlearn`;
- :mod:`~unlearn_jax.runtime.engine`: the jitted initialisation and chunk of scanned steps;
- :mod:`~unlearn_jax.runtime.loop`: the host loop (chunks, progress, divergence, checkpoints, signals);
- :mod:`~unlearn_jax.runtime.resume` and :mod:`~unlearn_jax.runtime.checkpoint`: fingerprints and
  atomic, validated checkpoint files, the run lock;
- :mod:`~unlearn_jax.runtime.signals`, :mod:`~unlearn_jax.runtime.progress`: interrupts and progress;
- :mod:`~unlearn_jax.runtime.distributed`: device meshes and shardings;
- :mod:`~unlearn_jax.runtime.inputs`: validation of the drivers' inputs.
"""

from unlearn_jax.runtime.drivers import retrain, train, unlearn
from unlearn_jax.runtime.progress import Progress
from unlearn_jax.runtime.results import BatchOverflowError, DivergenceError, RunResult
from unlearn_jax.runtime.signals import Interrupted

__all__ = [
  "BatchOverflowError",
  "DivergenceError",
  "Interrupted",
  "Progress",
  "RunResult",
  "retrain",
  "train",
  "unlearn",
]
