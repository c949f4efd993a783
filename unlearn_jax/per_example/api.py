"""Per-example gradients, norms, inner products and clipping (theory §0, §2a).

Every function takes a ``loss_fn(params, example) -> scalar`` written for ONE example and a batch: the
same pytree with a leading axis of size n on every leaf. Two ways to get the per-example gradient norms:

- ``method="vmap"``: ``jax.vmap(jax.grad(loss_fn))`` materialises every per-example gradient (optionally
  ``chunk_size`` examples at a time to bound memory) and takes its norm.
- ``method="ghost"``: the "ghost norm" identity, without materialising per-example gradients. The batched
  loss is traced to a jaxpr; every parameter leaf used once as one operand of a ``dot_general`` (Dense,
  Embedding one-hots, attention projections), of a ``conv_general_dilated`` (Conv) or added as a bias is
  found; one backward pass to zero "taps" added to those outputs gives each example's output gradient
  δ_i, and each leaf's per-example squared norm is computed from δ_i and the recorded input activations
  a_i: ``‖a_i‖²‖δ_i‖²`` for a weight applied once per example, the Gram form
  ``Σ_{p,q} ⟨a_ip, a_iq⟩⟨δ_ip, δ_iq⟩`` (or the materialised per-example weight gradient, whichever is
  cheaper) for a weight applied at several positions, ``‖Σ_p δ_ip‖²`` for a bias. Any leaf used in another
  way falls back to vmap for that leaf alone. Exact, not approximate. Convolutions are handled per kernel
  offset (input slices, small batched matmuls; no identity-kernel patch convolution), and max-pooling
  with tiling windows is differentiated without XLA's slow-on-CPU ``select_and_scatter_add`` (same
  cotangent: each window's first maximum).
- ``method="auto"`` (default): ghost where the trace succeeds, vmap otherwise; exact either way.

Clipped gradient sums come from the same ghost pass as the norms ("book-keeping",
:mod:`~unlearn_jax.per_example.bookkeeping`): the recorded activations and output gradients give
``Σ_i w_i min(1, C/‖∇ℓ_i‖) ∇ℓ_i`` as one contraction per parameter site, without a second backward pass.
With ``method="vmap"``, a chunked pass or a loss the ghost tracer cannot follow, the two-pass method:
norms first, then one backward pass of the reweighted loss. Either way the result is differentiable as
the clipped sum it is: ``jax.grad`` through it includes the derivative of the clip factors (and of any
weights that depend on what is differentiated).

Called eagerly (outside any ``jax.jit``), each function runs one compiled program per loss function,
settings and shapes (``jax.jit`` with the loss function static); inside a user's ``jit``, ``vmap`` or
``grad`` it is traced inline like any ``jax.numpy`` function. With ``chunk_size`` the batch is padded
(repeating its first example) to whole chunks first, so two batch sizes that pad to the same shape share
one compiled program.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from unlearn_jax import _checks, _loops
from unlearn_jax._compile import call, is_traced
from unlearn_jax.per_example import bookkeeping, chunking, ghost

__all__ = [
  "NORM_METHODS",
  "clip_factors",
  "clip_per_example",
  "clipped_grad_sum",
  "per_example_grad_norms",
  "per_example_grads",
  "per_example_inner",
  "per_example_losses",
  "weighted_grad_sum",
]

PyTree = Any
LossFn = Callable[[PyTree, PyTree], ArrayLike]

NORM_METHODS = ("auto", "vmap", "ghost")


def _check_loss_fn(loss_fn: Any, params: PyTree, batch: PyTree) -> int:
  """Checks the batch and that ``loss_fn(params, one example)`` is a scalar; returns n."""
  if not callable(loss_fn):
    raise TypeError(f"loss_fn must be callable as loss_fn(params, example), got {loss_fn!r}")
  n = _checks.check_batch(batch)
  example = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x)[1:], jnp.result_type(x)), batch)
  try:
    out = jax.eval_shape(loss_fn, params, example)
  except (TypeError, ValueError) as e:
    raise TypeError(
      "loss_fn(params, example) failed on one example of the batch (an example is the batch pytree "
      f"without its leading axis): {type(e).__name__}: {e}"
    ) from e
  leaves = jax.tree.leaves(out)
  if len(leaves) != 1 or not hasattr(leaves[0], "shape") or leaves[0].shape != ():
    shapes = [getattr(leaf, "shape", type(leaf).__name__) for leaf in leaves]
    raise TypeError(
      "loss_fn must return a scalar loss for ONE example (shape ()), got output shape(s) "
      f"{shapes}; write loss_fn for a single example, it is vmapped over the batch"
    )
  if not jnp.issubdtype(leaves[0].dtype, jnp.floating):
    raise TypeError(f"loss_fn must return a floating-point scalar, got dtype {leaves[0].dtype}")
  return n


def _check_chunk_size(chunk_size: Any) -> int | None:
  if chunk_size is None:
    return None
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
    raise ValueError(f"chunk_size must be None or a positive integer, got {chunk_size!r}")
  return int(chunk_size)


def _check_method(method: Any) -> None:
  _checks.check_choice("method", method, NORM_METHODS)


def _check_clip_norm(clip_norm: Any) -> None:
  if clip_norm is None:
    return
  _checks.check_positive("clip_norm", clip_norm, allow_inf=True)


def _check_weights(weights: Any, n: int, name: str = "weights") -> None:
  shape = np.shape(weights)
  if shape != (n,):
    raise ValueError(f"{name} must have shape (n,) = ({n},) (one weight per example), got shape {shape}")


def _check_like_params(name: str, tree: PyTree, params: PyTree) -> None:
  s1, s2 = jax.tree.structure(tree), jax.tree.structure(params)
  if s1 != s2:
    raise ValueError(f"{name} must have the pytree structure of params ({s2}), got {s1}")
  for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(params)):
    if np.shape(a) != np.shape(b):
      raise ValueError(f"{name} leaf shapes must equal params' leaf shapes: {np.shape(a)} vs {np.shape(b)}")


def _safe_sqrt(sq: jax.Array) -> jax.Array:
  """sqrt with a finite (zero) gradient at 0."""
  pos = sq > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def _per_example_sq_norms_of(grads: PyTree) -> jax.Array:
  leaves = jax.tree.leaves(grads)
  return sum(jnp.sum(jnp.reshape(jnp.square(g), (g.shape[0], -1)), axis=1) for g in leaves)


def _vmapped_losses(loss_fn: LossFn, params: PyTree, batch: PyTree) -> jax.Array:
  return jax.vmap(loss_fn, in_axes=(None, 0))(params, batch)


def _chunked_per_example(core: Callable, loss_fn: LossFn, chunk_size: int, params: PyTree, padded: PyTree) -> PyTree:
  """``core(loss_fn, params, chunk)`` for each chunk of a padded batch, outputs concatenated."""
  out = _loops.map(lambda c: core(loss_fn, params, c), chunking.to_chunks(padded, chunk_size))
  return jax.tree.map(lambda x: jnp.reshape(x, (-1,) + x.shape[2:]), out)


def _per_example(
  core: Callable, loss_fn: LossFn, params: PyTree, batch: PyTree, n: int, chunk_size: int | None
) -> PyTree:
  """Per-example outputs of ``core(loss_fn, params, batch)``, ``chunk_size`` examples at a time (called
  eagerly: one compiled call per chunk from the host, see :mod:`~unlearn_jax.per_example.chunking`)."""
  if chunk_size is None or chunk_size >= n:
    return call(core, (loss_fn,), params, batch)
  if not is_traced((params, batch)):
    params = jax.tree.map(jnp.asarray, params)  # on the device once for all chunks
    return chunking.host_rows(lambda chunk: call(core, (loss_fn,), params, chunk), batch, n, chunk_size)
  padded, _, _ = chunking.pad_batch(batch, n, chunk_size)
  out = call(_chunked_per_example, (core, loss_fn, chunk_size), params, padded)
  return jax.tree.map(lambda x: x[:n], out)


def _grads_core(loss_fn, params, batch):
  return jax.vmap(jax.grad(loss_fn), in_axes=(None, 0))(params, batch)


def _vmap_sq_norms_core(loss_fn, params, batch):
  return _per_example_sq_norms_of(_grads_core(loss_fn, params, batch))


def usable_plan(loss_fn, params, batch):
  """The ghost plan of ``loss_fn``, or None when the tracer cannot follow it or covers no leaf."""
  try:
    plan = ghost.ghost_plan(loss_fn, params, batch)
  except ghost.GhostUnsupported:
    return None
  return plan if plan.covered else None


def _ghost_sq_norms_core(loss_fn, params, batch):
  """The ghost identity for covered leaves, vmap for the rest; plain vmap when nothing is covered."""
  plan = usable_plan(loss_fn, params, batch)
  if plan is None:
    return _vmap_sq_norms_core(loss_fn, params, batch)
  return ghost.ghost_apply(plan, loss_fn, params, batch)


PASS_BUDGET_BYTES = 2**31
"""Memory a chunk of an all-n norm pass may take (2 GiB): see :func:`norm_pass_rows`."""


def norm_pass_rows(loss_fn: LossFn, params: PyTree, batch: PyTree, budget_bytes: int = PASS_BUDGET_BYTES) -> int:
  """Rows per chunk of an all-n ghost-norm pass that keep one chunk within ``budget_bytes``.

  The estimate per example is what the ghost pass holds: every site's input activations and output
  gradients, and for a convolution its input once more per kernel offset (the per-offset slices); the
  chunk is the largest power of two ≤ ``chunking.ROWS_PER_PASS`` (and ≥ 16) within the budget. Measured:
  a ResNet-18 with stages 16-32-64-128 needs ~5 MB per example (XLA:CPU temp 1.3 GB for 256 rows), the
  full ResNet-18 about 16 times that; an MLP a few kB.
  """
  plan = usable_plan(loss_fn, params, batch)
  if plan is None:
    return chunking.ROWS_PER_PASS
  itemsize = jnp.dtype(jnp.result_type(*jax.tree.leaves(params))).itemsize
  per_example = 0
  for site in plan.sites:
    act, out = math.prod(site.act_shape), math.prod(site.out_shape)
    offsets = 0
    if site.kind == "conv":
      offsets = math.prod(site.param_shape[j] for j in site.eqn_params["dimension_numbers"].rhs_spec[2:])
    per_example += (act * (1 + offsets) + out) * itemsize
  rows = chunking.ROWS_PER_PASS
  while rows > 16 and rows * per_example > budget_bytes:
    rows //= 2
  return rows


def _strict_ghost_check(loss_fn, params, batch) -> None:
  try:
    ghost.ghost_plan(loss_fn, params, batch)
  except ghost.GhostUnsupported as e:
    raise ValueError(f'method="ghost" cannot trace loss_fn: {e}; use method="auto" or "vmap"') from e


def _sq_norms(loss_fn, params, batch, n, chunk_size, method) -> jax.Array:
  if method == "vmap":
    return _per_example(_vmap_sq_norms_core, loss_fn, params, batch, n, chunk_size)
  if method == "ghost":
    _strict_ghost_check(loss_fn, params, batch)
  return _per_example(_ghost_sq_norms_core, loss_fn, params, batch, n, chunk_size)


def _inner_core(loss_fn, params, batch, direction):
  return jax.jvp(lambda p: _vmapped_losses(loss_fn, p, batch), (params,), (direction,))[1]


def _weighted_sum_core(loss_fn, params, batch, weights):
  return jax.grad(lambda p: jnp.sum(weights * _vmapped_losses(loss_fn, p, batch)))(params)


def _valid_weighted_sum_core(loss_fn, params, batch, weights, valid):
  return _weighted_sum_core(loss_fn, params, batch, jnp.where(valid, weights, 0))


def _chunked_weighted_sum(loss_fn, chunk_size, params, padded, weights):
  def body(acc, chunk):
    b, w = chunk
    return jax.tree.map(jnp.add, acc, _weighted_sum_core(loss_fn, params, b, w)), None

  zero = jax.tree.map(jnp.zeros_like, params)
  return _loops.scan(body, zero, chunking.to_chunks((padded, weights), chunk_size))[0]


def _bookkeeping_clipped_core(loss_fn, params, batch, clip_norm, weights):
  """Norms and the clipped sum from one ghost pass; the two-pass method where the tracer cannot follow."""
  plan = usable_plan(loss_fn, params, batch)
  if plan is None:
    norms = _safe_sqrt(_vmap_sq_norms_core(loss_fn, params, batch))
    w = clip_factors(norms, clip_norm) * weights
    return _weighted_sum_core(loss_fn, params, batch, w), norms
  record = ghost.ghost_record(plan, loss_fn, params, batch, keep_grads=True)
  norms = _safe_sqrt(record.sq_norms)
  w = clip_factors(norms, clip_norm) * weights.astype(norms.dtype)
  return bookkeeping.weighted_sum(plan, params, record, w), norms


def _weighted_sum(loss_fn, params, batch, weights, n, chunk_size):
  if chunk_size is None or chunk_size >= n:
    return call(_weighted_sum_core, (loss_fn,), params, batch, weights)
  if not is_traced((params, batch, weights)):
    params = jax.tree.map(jnp.asarray, params)  # on the device once for all chunks
    part = lambda chunk, valid: call(_valid_weighted_sum_core, (loss_fn,), params, *chunk, valid)
    return chunking.host_sum(part, (batch, weights), n, chunk_size)
  padded, mask, n_pad = chunking.pad_batch(batch, n, chunk_size)
  w = jnp.where(mask, jnp.concatenate([weights, jnp.zeros(n_pad - n, weights.dtype)]), 0)
  return call(_chunked_weighted_sum, (loss_fn, chunk_size), params, padded, w)


def per_example_losses(loss_fn: LossFn, params: PyTree, batch: PyTree) -> jax.Array:
  """Losses of every example of a batch.

  Args:
    loss_fn: ``loss_fn(params, example) -> scalar`` for one example.
    params: parameter pytree.
    batch: pytree of arrays with a leading axis of size n.

  Returns:
    Array of shape (n,): ``loss_fn(params, batch[i])``.

  Raises:
    TypeError: if ``loss_fn`` does not return a scalar.
    ValueError: if the batch leaves disagree on n.

  Examples:
    >>> import jax.numpy as jnp
    >>> loss_fn = lambda w, ex: 0.5 * jnp.sum((ex[0] @ w - ex[1]) ** 2)
    >>> x, y = jnp.array([[1.0, 0.0], [0.0, 2.0]]), jnp.array([1.0, 0.0])
    >>> per_example_losses(loss_fn, jnp.array([1.0, 1.0]), (x, y)).tolist()
    [0.0, 2.0]
  """
  _check_loss_fn(loss_fn, params, batch)
  return call(_vmapped_losses, (loss_fn,), params, batch)


def per_example_grads(loss_fn: LossFn, params: PyTree, batch: PyTree, *, chunk_size: int | None = None) -> PyTree:
  """Gradient of every example's loss, stacked along a leading axis.

  Args:
    loss_fn: ``loss_fn(params, example) -> scalar`` for one example.
    params: parameter pytree.
    batch: pytree of arrays with a leading axis of size n.
    chunk_size: if given, at most this many examples are differentiated at once (``lax.map`` over chunks;
      the last chunk is padded and its padding dropped). Two batch sizes that pad to the same number of
      chunks share one compiled executable.

  Returns:
    Pytree like ``params`` whose leaves have a leading axis of size n.

  Raises:
    TypeError: if ``loss_fn`` does not return a scalar.
    ValueError: if the batch leaves disagree on n or ``chunk_size`` is not a positive integer.

  Examples:
    >>> import jax.numpy as jnp
    >>> loss_fn = lambda w, ex: 0.5 * jnp.sum((ex[0] @ w - ex[1]) ** 2)
    >>> x, y = jnp.array([[1.0, 0.0], [0.0, 2.0]]), jnp.array([0.0, 0.0])
    >>> per_example_grads(loss_fn, jnp.array([1.0, 1.0]), (x, y)).tolist()
    [[1.0, 0.0], [0.0, 4.0]]
  """
  n = _check_loss_fn(loss_fn, params, batch)
  chunk_size = _check_chunk_size(chunk_size)
  return _per_example(_grads_core, loss_fn, params, batch, n, chunk_size)


def per_example_grad_norms(
  loss_fn: LossFn,
  params: PyTree,
  batch: PyTree,
  *,
  chunk_size: int | None = None,
  method: str = "auto",
) -> jax.Array:
  """Euclidean norm ‖∇ℓ(θ; z_i)‖ of every example's gradient (over all parameter leaves).

  Args:
    loss_fn: ``loss_fn(params, example) -> scalar`` for one example.
    params: parameter pytree.
    batch: pytree of arrays with a leading axis of size n.
    chunk_size: examples processed at once (None: all).
    method: ``"vmap"`` (materialise per-example gradients), ``"ghost"`` (norms from activations and
      output gradients, without per-example gradients; leaves it cannot cover fall back to vmap) or
      ``"auto"`` (ghost when the model can be traced, else vmap). All are exact.

  Returns:
    Array of shape (n,).

  Raises:
    TypeError: if ``loss_fn`` does not return a scalar.
    ValueError: on a bad ``method``, ``chunk_size`` or batch.

  Examples:
    >>> import jax.numpy as jnp
    >>> loss_fn = lambda w, ex: 0.5 * jnp.sum((ex[0] @ w - ex[1]) ** 2)
    >>> x, y = jnp.array([[3.0, 0.0], [0.0, 2.0]]), jnp.array([0.0, 0.0])
    >>> per_example_grad_norms(loss_fn, jnp.array([1.0, 1.0]), (x, y)).round(4).tolist()
    [9.0, 4.0]
  """
  n = _check_loss_fn(loss_fn, params, batch)
  chunk_size = _check_chunk_size(chunk_size)
  _check_method(method)
  return _safe_sqrt(_sq_norms(loss_fn, params, batch, n, chunk_size, method))


def clip_factors(norms: ArrayLike, clip_norm: ArrayLike | None) -> jax.Array:
  """Clipping factors ``min(1, C / ‖v_i‖)`` (theory §0), 1 where the norm is 0 or C is None/inf.

  Differentiable everywhere without NaN (the division only happens where ``norm > C``).

  Args:
    norms: per-example norms, shape (n,) (any shape works elementwise).
    clip_norm: C > 0, or None / inf for no clipping. May be a traced array.

  Returns:
    Array like ``norms`` with values in (0, 1].

  Raises:
    ValueError: if ``clip_norm`` is not positive.

  Examples:
    >>> import jax.numpy as jnp
    >>> clip_factors(jnp.array([0.0, 0.5, 4.0]), 2.0).tolist()
    [1.0, 1.0, 0.5]
    >>> clip_factors(jnp.array([0.0, 4.0]), None).tolist()
    [1.0, 1.0]
  """
  _check_clip_norm(clip_norm)
  norms = jnp.asarray(norms)
  if clip_norm is None:
    return jnp.ones_like(norms)
  c = jnp.asarray(clip_norm, dtype=norms.dtype)
  over = norms > c
  return jnp.where(over, c / jnp.where(over, norms, 1.0), 1.0)


def clip_per_example(grads: PyTree, clip_norm: ArrayLike | None) -> tuple[PyTree, jax.Array]:
  """Clips every per-example gradient to norm at most C: ``v · min(1, C/‖v‖)``.

  Args:
    grads: pytree whose leaves have a leading axis n (as from :func:`per_example_grads`).
    clip_norm: C > 0, or None / inf for no clipping.

  Returns:
    ``(clipped_grads, norms)``: clipped pytree like ``grads`` and the (n,) unclipped norms.

  Raises:
    ValueError: if ``clip_norm`` is not positive or the leaves disagree on n.

  Examples:
    >>> import jax.numpy as jnp
    >>> clipped, norms = clip_per_example({"w": jnp.array([[3.0, 4.0], [0.3, 0.4]])}, 1.0)
    >>> clipped["w"].round(4).tolist(), norms.round(4).tolist()
    ([[0.6, 0.8], [0.3, 0.4]], [5.0, 0.5])
  """
  _check_clip_norm(clip_norm)
  _checks.check_batch(grads, name="grads")
  norms = _safe_sqrt(_per_example_sq_norms_of(grads))
  factors = clip_factors(norms, clip_norm)
  clipped = jax.tree.map(lambda g: g * jnp.reshape(factors, (-1,) + (1,) * (g.ndim - 1)).astype(g.dtype), grads)
  return clipped, norms


def per_example_inner(loss_fn: LossFn, params: PyTree, batch: PyTree, direction: PyTree) -> jax.Array:
  """``⟨∇ℓ(θ; z_i), direction⟩`` for every example by one jvp of the vector of per-example losses.

  Per-example gradients are never materialised (theory §2a).

  Args:
    loss_fn: ``loss_fn(params, example) -> scalar`` for one example.
    params: parameter pytree.
    batch: pytree of arrays with a leading axis of size n.
    direction: pytree with the structure and leaf shapes of ``params``.

  Returns:
    Array of shape (n,).

  Raises:
    TypeError: if ``loss_fn`` does not return a scalar.
    ValueError: if ``direction`` does not match ``params`` or the batch leaves disagree on n.

  Examples:
    >>> import jax.numpy as jnp
    >>> loss_fn = lambda w, ex: 0.5 * jnp.sum((ex[0] @ w - ex[1]) ** 2)
    >>> x, y = jnp.array([[1.0, 0.0], [0.0, 2.0]]), jnp.array([0.0, 0.0])
    >>> per_example_inner(loss_fn, jnp.array([1.0, 1.0]), (x, y), jnp.array([1.0, 2.0])).tolist()
    [1.0, 8.0]
  """
  _check_loss_fn(loss_fn, params, batch)
  _check_like_params("direction", direction, params)
  direction = jax.tree.map(lambda d, p: jnp.asarray(d, dtype=jnp.result_type(p)), direction, params)
  return call(_inner_core, (loss_fn,), params, batch, direction)


def weighted_grad_sum(loss_fn: LossFn, params: PyTree, batch: PyTree, weights: ArrayLike) -> PyTree:
  """``Σ_i w_i ∇ℓ(θ; z_i)`` by one backward pass of the weighted loss sum (differentiable in θ and w).

  Args:
    loss_fn: ``loss_fn(params, example) -> scalar`` for one example.
    params: parameter pytree.
    batch: pytree of arrays with a leading axis of size n.
    weights: shape (n,); no gradient flows through them.

  Returns:
    Pytree like ``params``.

  Raises:
    TypeError: if ``loss_fn`` does not return a scalar.
    ValueError: if ``weights`` is not of shape (n,).

  Examples:
    >>> import jax.numpy as jnp
    >>> loss_fn = lambda w, ex: 0.5 * jnp.sum((ex[0] @ w - ex[1]) ** 2)
    >>> x, y = jnp.array([[1.0, 0.0], [0.0, 2.0]]), jnp.array([0.0, 0.0])
    >>> weighted_grad_sum(loss_fn, jnp.array([1.0, 1.0]), (x, y), jnp.array([2.0, 0.5])).tolist()
    [2.0, 2.0]
  """
  n = _check_loss_fn(loss_fn, params, batch)
  _check_weights(weights, n)
  dtype = jnp.result_type(*jax.tree.leaves(params)) if jax.tree.leaves(params) else jnp.float32
  return _weighted_sum(loss_fn, params, batch, jnp.asarray(weights, dtype=dtype), n, None)


def clipped_grad_sum(
  loss_fn: LossFn,
  params: PyTree,
  batch: PyTree,
  clip_norm: ArrayLike | None,
  *,
  weights: ArrayLike | None = None,
  chunk_size: int | None = None,
  method: str = "auto",
) -> tuple[PyTree, jax.Array]:
  """``Σ_i w_i clip_C(∇ℓ(θ; z_i))`` and the unclipped norms.

  With ghost norms (``method`` "auto" or "ghost", no chunking) one forward and one backward pass give
  the norms and, per parameter site, the clipped sum as one weighted contraction of the recorded
  activations and output gradients (book-keeping). Otherwise the two-pass method: every per-example
  gradient norm first (``method``), then one backward pass of ``Σ_i w_i min(1, C/‖∇ℓ_i‖) ℓ_i`` with the
  factors as weights. Both equal the clipped sum exactly (up to the order of the additions), and both
  differentiate as it does (the clip factors' own derivative included).

  Args:
    loss_fn: ``loss_fn(params, example) -> scalar`` for one example.
    params: parameter pytree.
    batch: pytree of arrays with a leading axis of size n.
    clip_norm: C > 0, or None / inf for no clipping.
    weights: optional (n,) example weights (e.g. a batch mask); default all ones.
    chunk_size: examples processed at once (None: all).
    method: how to compute the norms, see :func:`per_example_grad_norms`.

  Returns:
    ``(grad_sum, norms)``: pytree like ``params`` and the (n,) unclipped per-example gradient norms.

  Raises:
    TypeError: if ``loss_fn`` does not return a scalar.
    ValueError: on a non-positive ``clip_norm``, bad ``weights`` shape, ``method`` or ``chunk_size``.

  Examples:
    >>> import jax.numpy as jnp
    >>> loss_fn = lambda w, ex: 0.5 * jnp.sum((ex[0] @ w - ex[1]) ** 2)
    >>> x, y = jnp.array([[3.0, 0.0], [0.0, 0.5]]), jnp.array([0.0, 0.0])
    >>> g, norms = clipped_grad_sum(loss_fn, jnp.array([1.0, 1.0]), (x, y), 1.0)
    >>> g.round(4).tolist(), norms.round(4).tolist()
    ([1.0, 0.25], [9.0, 0.25])
  """
  n = _check_loss_fn(loss_fn, params, batch)
  _check_clip_norm(clip_norm)
  chunk_size = _check_chunk_size(chunk_size)
  _check_method(method)
  if weights is not None:
    _check_weights(weights, n)
  if method != "vmap" and (chunk_size is None or chunk_size >= n):
    if method == "ghost":
      _strict_ghost_check(loss_fn, params, batch)
    ones = jnp.ones((n,)) if weights is None else jnp.asarray(weights)
    clip = jnp.inf if clip_norm is None else clip_norm
    return call(_bookkeeping_clipped_core, (loss_fn,), params, batch, clip, ones)
  norms = _safe_sqrt(_sq_norms(loss_fn, params, batch, n, chunk_size, method))
  factors = clip_factors(norms, clip_norm)
  w = factors if weights is None else factors * jnp.asarray(weights, dtype=factors.dtype)
  total = _weighted_sum(loss_fn, params, batch, w, n, chunk_size)
  return total, norms
