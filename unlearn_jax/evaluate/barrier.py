"""Loss barriers along the straight line between two parameter vectors (theory §6).

``B_S = max_λ [ L_S((1−λ)θ_a + λθ_b) − ((1−λ) L_S(θ_a) + λ L_S(θ_b)) ]`` over a λ grid, every grid point
evaluated in one call vmapped over λ. Pure functions: inside ``jit`` they are traced inline; called
eagerly, each runs one compiled program per loss function, grid and shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import _checks, _loops
from unlearn_jax._compile import call

__all__ = ["barriers_along", "loss_barrier"]


def _check_same_structure(name_a: str, a: Any, name_b: str, b: Any) -> None:
  sa, sb = jax.tree.structure(a), jax.tree.structure(b)
  if sa != sb:
    raise ValueError(f"{name_a} and {name_b} must have the same pytree structure, got {sa} and {sb}")
  for la, lb in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    if np.shape(la) != np.shape(lb):
      raise ValueError(f"{name_a} and {name_b} leaves must have equal shapes, got {np.shape(la)} and {np.shape(lb)}")


def _check_num_points(num_points: Any) -> int:
  if isinstance(num_points, bool) or not isinstance(num_points, (int, np.integer)) or num_points < 2:
    raise ValueError(f"num_points must be an int >= 2 (the grid includes both endpoints), got {num_points!r}")
  return int(num_points)


def _barrier_core(loss_fn, params_a, params_b, data, lambdas):
  """Barrier and curve on a fixed lambda grid; pure and traceable."""

  def set_loss(params):
    return jnp.mean(jax.vmap(loss_fn, in_axes=(None, 0))(params, data))

  def interpolate(lam):
    return jax.tree.map(lambda a, b: (1.0 - lam) * a + lam * b, params_a, params_b)

  curve = jax.vmap(lambda lam: set_loss(interpolate(lam)))(lambdas)
  linear = (1.0 - lambdas) * curve[0] + lambdas * curve[-1]
  return jnp.max(curve - linear), curve


def loss_barrier(
  loss_fn: Callable[[Any, Any], jax.Array],
  params_a: Any,
  params_b: Any,
  data: Any,
  *,
  num_points: int = 11,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  """Linear-path loss barrier between two models on a data set (theory §6).

  ``B_S = max_λ [ L_S((1-λ) θ_a + λ θ_b) - ((1-λ) L_S(θ_a) + λ L_S(θ_b)) ]`` over the grid
  ``λ = linspace(0, 1, num_points)``, with ``L_S`` the mean of ``loss_fn`` over ``data``. All grid points
  are evaluated in one call vmapped over λ. ``B_S >= 0`` always (λ = 0 is on the grid).

  Args:
    loss_fn: ``loss_fn(params, example) -> scalar`` for one example.
    params_a: first endpoint (pytree).
    params_b: second endpoint, same structure and shapes.
    data: pytree of arrays with a leading example axis ``n`` (e.g. ``(x, y)``).
    num_points: number of grid points including both endpoints (>= 2).

  Returns:
    ``(barrier, (lambdas, curve))``: the scalar barrier, the grid ``(num_points,)`` and the losses
    ``L_S`` along it ``(num_points,)``.

  Raises:
    ValueError: if the endpoints differ in structure/shapes, ``data`` is empty or ``num_points < 2``.

  Examples:
    >>> import jax.numpy as jnp
    >>> loss_fn = lambda w, x: (w ** 2 - 1.0) ** 2  # double well, minima at w = -1 and w = +1
    >>> barrier, (lams, curve) = loss_barrier(loss_fn, jnp.array(-1.0), jnp.array(1.0), jnp.zeros(3),
    ...                                       num_points=5)
    >>> round(float(barrier), 4)
    1.0
  """
  num_points = _check_num_points(num_points)
  _check_same_structure("params_a", params_a, "params_b", params_b)
  _checks.check_batch(data, "data")
  lambdas = jnp.linspace(0.0, 1.0, num_points)
  barrier, curve = call(_barrier_core, (loss_fn,), params_a, params_b, data, lambdas)
  return barrier, (lambdas, curve)


def barriers_along(
  loss_fn: Callable[[Any, Any], jax.Array],
  checkpoints: Any,
  reference: Any,
  data: Any,
  *,
  num_points: int = 11,
  paired_seeds: bool = False,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  """Loss barriers between each of a sequence of checkpoints and a reference (theory §6).

  Used for "original vs oracle" (``checkpoints`` = the R oracle seeds stacked, ``reference`` = the
  original model: R barriers) and "unlearned vs oracle along the unlearning steps" (``checkpoints`` =
  the recorded ``(G, R, ...)`` parameters, ``reference`` = the R oracle seeds, ``paired_seeds=True``).
  Checkpoints are processed one after another (``lax.map``), each with all λ points
  vmapped, so memory is that of one :func:`loss_barrier` call.

  Args:
    loss_fn: ``loss_fn(params, example) -> scalar`` for one example.
    checkpoints: params pytree whose leaves have a leading axis ``G`` (checkpoints); with
      ``paired_seeds=True`` leading axes ``(G, R)``.
    reference: params pytree without the ``G`` axis; with ``paired_seeds=True`` leading axis ``R``
      (checkpoint seed r is paired with reference seed r).
    data: pytree with a leading example axis.
    num_points: λ grid size (>= 2).
    paired_seeds: whether both sides carry a seed axis to pair.

  Returns:
    ``(barriers, (lambdas, curves))`` with barriers ``(G,)`` (``(G, R)`` paired) and curves
    ``(G, num_points)`` (``(G, R, num_points)`` paired).

  Raises:
    ValueError: on mismatched structures/shapes, an empty ``data`` or ``num_points < 2``.

  Examples:
    >>> import jax.numpy as jnp
    >>> loss_fn = lambda w, x: (w ** 2 - 1.0) ** 2
    >>> b, _ = barriers_along(loss_fn, jnp.array([-1.0, 0.0, 1.0]), jnp.array(1.0), jnp.zeros(2),
    ...                       num_points=5)
    >>> [round(v, 3) for v in b.tolist()]
    [1.0, 0.129, 0.0]
  """
  num_points = _check_num_points(num_points)
  _checks.check_batch(data, "data")
  _checks.leading_size("checkpoints", checkpoints)
  one = jax.tree.map(lambda leaf: leaf[0], checkpoints)
  _check_same_structure("checkpoints[0]", one, "reference", reference)
  if paired_seeds:
    _checks.leading_size("reference", reference)
  lambdas = jnp.linspace(0.0, 1.0, num_points)
  barriers, curves = call(_barriers_core, (loss_fn, bool(paired_seeds)), checkpoints, reference, data, lambdas)
  return barriers, (lambdas, curves)


def _barriers_core(loss_fn, paired_seeds, checkpoints, reference, data, lambdas):
  def single(pair):
    params, ref = pair
    return _barrier_core(loss_fn, params, ref, data, lambdas)

  if paired_seeds:
    return _loops.map(lambda p: _loops.map(single, (p, reference)), checkpoints)
  return _loops.map(lambda p: single((p, reference)), checkpoints)
