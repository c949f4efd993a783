"""The noisy update rule and the projection (theory §0), once, and its optax form.

One step of every algorithm of this package (SGLD training, SGLD / SGD / L1-sparse fine-tuning) is

    θ ← Π_R( θ − η (ĝ + wd·θ + γ·sign θ) + sqrt(2 η τ) ξ ),   ξ ~ N(0, I),

with ĝ the gradient estimate of the batch selection (§1), wd the weight decay (the gradient of
wd/2 ‖θ‖²), γ ≥ 0 an L1 weight (0 except for L1-sparse fine-tuning) and Π_R the projection on the ball
of radius R (R = inf: none). τ = 0 is noise-free (clipped) gradient descent.

Keys: the noise of a step uses ``fold_in(step_key, 0)`` (:func:`noise_key`), so that
:func:`langevin_noise` reproduces the noise of a step draw for draw; Poisson sampling uses
``fold_in(step_key, 1)`` (:func:`sample_key`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from unlearn_jax import _checks

__all__ = ["langevin_noise", "noise_key", "noisy_update", "project", "sample_key", "tree_norm"]

PyTree = Any


def noise_key(step_key: jax.Array) -> jax.Array:
  """The key of a step's Langevin noise."""
  return jax.random.fold_in(step_key, 0)


def sample_key(step_key: jax.Array) -> jax.Array:
  """The key of a step's Poisson sampling."""
  return jax.random.fold_in(step_key, 1)


def gaussian_like(tree: PyTree, key: jax.Array) -> PyTree:
  """Standard normal noise shaped like ``tree``: one draw per dtype, cut into the leaves in order.

  One random program per dtype rather than one per leaf: XLA compiles every draw on its own (on CPU
  ~0.2 s apiece for the bit generator and inverse-erf kernels): a six-leaf MLP's SGLD step took 2.0 s to
  compile with a draw per leaf, 1.1 s with one. With one dtype (the usual case) the draw uses ``key``
  itself; dtype group g (in order of first appearance) uses ``fold_in(key, g)``.
  """
  leaves, treedef = jax.tree.flatten(tree)
  groups: dict[Any, list[int]] = {}
  for i, x in enumerate(leaves):
    groups.setdefault(jnp.dtype(jnp.result_type(x)), []).append(i)
  out: list[Any] = [None] * len(leaves)
  for g, (dtype, members) in enumerate(groups.items()):
    sizes = [math.prod(jnp.shape(leaves[i])) for i in members]
    z = jax.random.normal(key if len(groups) == 1 else jax.random.fold_in(key, g), (sum(sizes),), dtype)
    start = 0
    for i, size in zip(members, sizes):
      out[i] = jnp.reshape(jax.lax.slice_in_dim(z, start, start + size), jnp.shape(leaves[i]))
      start += size
  return jax.tree.unflatten(treedef, out)


def noise_scale(step_size: ArrayLike, temperature: ArrayLike) -> jax.Array:
  """The standard deviation sqrt(2 η τ) of the step's noise, as sqrt(2η)·sqrt(τ): at τ = 0 its derivative
  in η is 0 (the noise is 0 for every η), where sqrt(2ητ)'s is 0 · ∞ = NaN."""
  return jnp.sqrt(2.0 * step_size) * jnp.sqrt(temperature)


def tree_norm(tree: PyTree) -> jax.Array:
  """Euclidean norm over every leaf, with a zero (not NaN) gradient at 0."""
  sq = sum(jnp.vdot(x, x) for x in jax.tree.leaves(tree))
  pos = sq > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def project(params: PyTree, radius: ArrayLike) -> PyTree:
  """Π_R: ``params`` scaled onto the ball of radius R when outside it (R = inf: unchanged).

  Both operands of the ``where`` are finite with finite derivatives (R/‖θ‖ is only formed where ‖θ‖ > R),
  so ``jax.grad`` through a step is not NaN: with R = inf the untaken inf/‖θ‖ made it 0 · inf.
  """
  norm = tree_norm(params)
  outside = norm > radius
  shrink = jnp.where(outside, jnp.where(outside, radius, 1.0) / jnp.where(outside, norm, 1.0), 1.0)
  return jax.tree.map(lambda p: (p * shrink).astype(p.dtype), params)


def noisy_update(
  params: PyTree,
  ghat: PyTree,
  key: jax.Array,
  *,
  step_size: ArrayLike,
  temperature: ArrayLike,
  weight_decay: ArrayLike = 0.0,
  l1_strength: ArrayLike = 0.0,
  projection_radius: ArrayLike = jnp.inf,
) -> tuple[PyTree, jax.Array]:
  """One update of the rule in the module docstring; returns ``(new_params, ‖noise‖)``.

  Args:
    params: θ_t.
    ghat: the gradient estimate ĝ (like ``params``).
    key: the step's key (the noise uses :func:`noise_key` of it).
    step_size: η > 0.
    temperature: τ ≥ 0.
    weight_decay: wd ≥ 0.
    l1_strength: γ ≥ 0.
    projection_radius: R > 0 (inf: no projection).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> new, noise = noisy_update(jnp.array([1.0, -2.0]), jnp.array([0.5, 0.5]), jax.random.key(0),
    ...                           step_size=0.1, temperature=0.0, l1_strength=1.0)
    >>> new.round(3).tolist(), float(noise)   # 1 - 0.1 (0.5 + 1), -2 - 0.1 (0.5 - 1)
    ([0.85, -1.95], 0.0)
  """
  dtype = jnp.result_type(*[jnp.result_type(x) for x in jax.tree.leaves(params)], float)
  eta = jnp.asarray(step_size, dtype)
  scale = noise_scale(eta, jnp.asarray(temperature, dtype))
  wd = jnp.asarray(weight_decay, dtype)
  gamma = jnp.asarray(l1_strength, dtype)
  noise = jax.lax.cond(  # noise-free steps (SGD fine-tuning, τ = 0 training) draw nothing
    scale != 0,  # NaN (an invalid traced setting) draws, so the NaN reaches the parameters
    lambda: jax.tree.map(lambda z: (scale * z).astype(z.dtype), gaussian_like(params, noise_key(key))),
    lambda: jax.tree.map(jnp.zeros_like, params),
  )

  def one(p, g, z):
    return (p - eta * (g + wd * p + gamma * jnp.sign(p)) + z).astype(jnp.result_type(p))

  new_params = jax.tree.map(one, params, ghat, noise)
  return project(new_params, jnp.asarray(projection_radius, dtype)), tree_norm(noise)


class LangevinNoiseState(NamedTuple):
  count: jax.Array
  key: jax.Array | None


def langevin_noise(
  temperature: ArrayLike | Callable, step_size: ArrayLike | Callable, key: jax.Array | None = None
) -> optax.GradientTransformationExtraArgs:
  """An optax transformation adding Langevin noise ``sqrt(2 η τ) ξ`` to the updates.

  Place it AFTER the optimizer's scaling, so that updates are parameter increments:
  ``optax.chain(optax.add_decayed_weights(wd), optax.sgd(η), langevin_noise(τ, η))`` takes the
  unclipped full-batch SGLD step. The noise key comes with each update: ``tx.update(g, s, p, key=k)``
  (``optax.chain`` forwards it; the training drivers pass the run's per-step, per-seed key), and the
  draw is the one an SGLD step with key ``k`` makes. Without one, update number t uses
  ``fold_in(key, t)`` of the key given here.

  Args:
    temperature: τ ≥ 0, or a schedule ``count -> τ``.
    step_size: η > 0, or a schedule ``count -> η``.
    key: fallback base key, for updates called without ``key=`` (None: then a key is required).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> tx = optax.chain(optax.sgd(0.1), langevin_noise(0.0, 0.1))
    >>> params = jnp.ones(2)
    >>> updates, _ = tx.update(jnp.ones(2), tx.init(params), params, key=jax.random.key(0))
    >>> updates.tolist()   # tau = 0: plain SGD
    [-0.1, -0.1]
  """
  if not callable(temperature):
    _checks.check_nonnegative("temperature", temperature)
  if not callable(step_size):
    _checks.check_positive("step_size", step_size)

  def init_fn(params):
    del params
    return LangevinNoiseState(count=jnp.zeros((), jnp.int32), key=key)

  def update_fn(updates, state, params=None, *, key=None, **extra):
    del params, extra
    if key is None:
      if state.key is None:
        raise ValueError("langevin_noise needs a key: pass tx.update(..., key=step_key) or langevin_noise(..., key=k)")
      key = jax.random.fold_in(state.key, state.count)
    tau = temperature(state.count) if callable(temperature) else temperature
    eta = step_size(state.count) if callable(step_size) else step_size
    scale = noise_scale(jnp.asarray(eta), jnp.asarray(tau))
    noise = gaussian_like(updates, noise_key(key))
    new_updates = jax.tree.map(lambda u, z: (u + scale * z).astype(jnp.result_type(u)), updates, noise)
    return new_updates, LangevinNoiseState(count=state.count + 1, key=state.key)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
