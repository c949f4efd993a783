"""What the drivers return, and the divergence error."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

__all__ = ["BatchOverflowError", "DivergenceError", "RunResult"]


class RunResult(NamedTuple):
  """What :func:`~unlearn_jax.runtime.train`, ``retrain`` and ``unlearn`` return.

  Attributes:
    state: final algorithm state; leaves carry a leading seed axis R with ``num_seeds``.
    ledger: the per-instance privacy ledger (``state.ledger`` without padding rows), or None.
    history: dict of NumPy arrays at the history stride: ``"step"`` (S,) the number of steps done when
      the row was recorded, ``"loss"`` (mean per-example loss of that step, at the parameters before it)
      and the step's diagnostics (``"grad_norm"``: mean unclipped per-example gradient norm over the
      examples used; ``"noise_norm"``; ``"update_norm"``), every key of ``eval_fn(params)`` evaluated
      after the step, and with the ledger ``"privacy_loss_mean"`` (S, K), the mean over examples of the
      realized P(x, α) after the step. Shapes (S, ...) or (S, R, ...) with seeds.
    recorded: parameters after each of ``recorded_steps``, leaves stacked (G, [R,] ...); None if none.
    recorded_steps: (G,) int array of the recorded step counts (sorted, unique).
    num_steps: steps done.
    resumed_from: the step of the checkpoint this call resumed from (0: started afresh).
  """

  state: Any
  ledger: Any
  history: dict
  recorded: Any
  recorded_steps: np.ndarray
  num_steps: int
  resumed_from: int = 0

  @property
  def params(self) -> Any:
    """The final parameters (``state.params``)."""
    return self.state.params


class DivergenceError(RuntimeError):
  """The loss or the parameters turned non-finite.

  Attributes:
    step: the 1-based step whose loss was non-finite or whose update produced non-finite parameters.
    checkpoint: path of the last good checkpoint (None without ``checkpoint_dir`` or before the first).
  """

  def __init__(self, step: int, what: str, checkpoint: str | None):
    self.step = int(step)
    self.checkpoint = checkpoint
    kept = f"; the last good checkpoint {checkpoint} was kept" if checkpoint else ""
    super().__init__(
      f"the run diverged at step {self.step}: {what} turned non-finite (NaN/Inf){kept}. Try a smaller "
      "step_size, per-example clipping (clip_norm), or a different weight_decay / temperature; check that "
      "the data and labels are valid"
    )


class BatchOverflowError(RuntimeError):
  """A Poisson draw had more examples than the gathered batch holds; the step is not taken.

  Attributes:
    step: the 1-based step whose draw did not fit.
    dropped: 1 (at least one sampled example did not fit; counting them would take a pass over all n
      rows).
    checkpoint: path of the last good checkpoint (None without ``checkpoint_dir``).
  """

  def __init__(self, step: int, dropped: int, checkpoint: str | None):
    self.step, self.dropped, self.checkpoint = int(step), int(dropped), checkpoint
    kept = f"; the last good checkpoint {checkpoint} was kept" if checkpoint else ""
    super().__init__(
      f"the Poisson draw of step {self.step} selected more examples than the gathered batch holds; "
      "dropping them would change the mechanism the ledger accounts for, so the run stopped"
      f"{kept}. Build the step with a larger batch_capacity (sgld(..., batch_capacity=...))"
    )
