"""Device meshes and shardings: the same code on one device, several devices or several hosts.

The per-instance work of this library is embarrassingly parallel over examples (per-example gradients,
norms, inner products, the (n, K) ledger), and many-seed studies are parallel over seeds. This module
places the arrays of a run on a device mesh with JAX's own SPMD engine — ``jax.sharding.Mesh`` and
``NamedSharding`` with ``jax.device_put`` outside ``jit`` and ``jax.lax.with_sharding_constraint``
inside — and leaves the rest to the compiler: a jitted step that receives sharded data and a sharded
ledger runs its per-example work on every device's shard, and the reductions over examples (the mean
gradient ḡ, the number of examples N, the mean loss) become the compiler's collectives (all-reduce).
There is no hand-written parallel layer. The all-reduce adds in another order than one device, so
results agree to rounding; ``sgld.sgld(..., reduction_blocks=R)`` (and the drivers' ``reduction_blocks``)
fixes the order of those sums for results that are bitwise the same on every device count
(``docs/distributed.md``).

The mesh has two axes:

- ``"data"`` (:data:`DATA_AXIS`): the example axis. Data sets, per-example outputs and the ledger's
  per-example arrays (``realized`` (n, K), ``active`` (n,)) are split along it.
- ``"seeds"`` (:data:`SEEDS_AXIS`): independent chains run together with ``jax.vmap`` (a leading seed
  axis S on parameters and ledgers) are split along it. Its size is 1 unless asked for.

Parameters are replicated on every device of the ``"data"`` axis.

Shapes must split evenly: when n is not a multiple of the size of the ``"data"`` axis,
:func:`pad_to_multiple` appends copies of example 0 and returns a ``data_mask`` (n_padded,) that is 0
on the padding rows. The SGLD step takes that mask (``step(..., data_mask=mask)``); padding rows then
never enter the gradient, the count of examples N, the loss, or the ledger (their ledger rows stay 0 and
:func:`unpad` removes them at the end).

The mesh axes are of type ``AxisType.Auto``: sharding is propagated by the compiler, so user loss
functions (and the traced "ghost" norms of ``per_example.py``) need no sharding annotations.

Several hosts: call ``jax.distributed.initialize()`` first on every host, then run the same code;
:func:`make_mesh` then spans the devices of all hosts (``jax.devices()`` is global) and
:func:`shard_data` builds global arrays from the copy of the data set that each host holds (see
``docs/distributed.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from unlearn_jax import _checks

__all__ = [
  "DATA_AXIS",
  "SEEDS_AXIS",
  "TrainingInputs",
  "make_mesh",
  "data_axis_size",
  "pad_to_multiple",
  "unpad",
  "shard_data",
  "shard_ledger",
  "shard_state",
  "replicate",
  "place_training_inputs",
]

PyTree = Any

DATA_AXIS = "data"
SEEDS_AXIS = "seeds"

# Fields of a Ledger (accounting.py) that hold one row per example; every other field is replicated.
_LEDGER_PER_EXAMPLE_FIELDS = ("realized", "active")


# ----------------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, *, minimum: int = 1) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  return int(value)


def _check_mesh(mesh: Any) -> Mesh:
  if not isinstance(mesh, Mesh):
    raise TypeError(f"mesh must be a jax.sharding.Mesh (build one with make_mesh), got {mesh!r}")
  missing = [a for a in (SEEDS_AXIS, DATA_AXIS) if a not in mesh.axis_names]
  if missing:
    raise ValueError(
      f"mesh must have the axes {(SEEDS_AXIS, DATA_AXIS)} (build it with make_mesh), got axes {mesh.axis_names}"
    )
  return mesh


def _is_traced(x: Any) -> bool:
  return isinstance(x, jax.core.Tracer)


def _place(x: Any, sharding: NamedSharding) -> jax.Array:
  """Puts ``x`` on ``sharding``: a sharding constraint inside jit, a transfer outside it."""
  if _is_traced(x):
    return jax.lax.with_sharding_constraint(x, sharding)
  if isinstance(x, jax.Array):
    return jax.device_put(x, sharding)
  # A host array: every device (on every host) copies its own slice, nothing goes through device 0.
  arr = np.asarray(x)
  return jax.make_array_from_callback(arr.shape, sharding, lambda index: arr[index])


def _leading_spec(ndim: int, axis: str, *, seed_axis: bool) -> PartitionSpec:
  """Spec splitting the example axis (axis 0, or axis 1 after a seed axis) along ``axis``."""
  if seed_axis:
    return PartitionSpec(SEEDS_AXIS, axis, *([None] * (ndim - 2)))
  return PartitionSpec(axis, *([None] * (ndim - 1)))


def _replicated_spec(ndim: int, *, seed_axis: bool) -> PartitionSpec:
  if seed_axis and ndim >= 1:
    return PartitionSpec(SEEDS_AXIS, *([None] * (ndim - 1)))
  return PartitionSpec()


def _check_seed_leading(name: str, leaf: Any, mesh: Mesh) -> None:
  shape = np.shape(leaf)
  seeds = mesh.shape[SEEDS_AXIS]
  if len(shape) == 0:
    raise ValueError(f"{name} leaves need a leading seed axis when seed_axis=True, got a scalar leaf")
  if shape[0] % seeds:
    raise ValueError(
      f"{name} has a leading seed axis of size {shape[0]}, which must be a multiple of the mesh's "
      f"'{SEEDS_AXIS}' axis size {seeds}; choose num_seeds divisible by make_mesh(seeds=...)"
    )


# ----------------------------------------------------------------------------------------------------
# Mesh
# ----------------------------------------------------------------------------------------------------


def make_mesh(
  num_devices: int | None = None,
  *,
  seeds: int = 1,
  devices: Sequence[jax.Device] | None = None,
) -> Mesh:
  """Builds a ("seeds", "data") device mesh over the available devices.

  Args:
    num_devices: how many devices to use (the first ``num_devices`` of ``devices``); None uses all of
      them. With several hosts (after ``jax.distributed.initialize()``) ``jax.devices()`` lists the
      devices of every host.
    seeds: size of the ``"seeds"`` axis (vmapped chains are split over it); must divide
      ``num_devices``. The ``"data"`` axis gets ``num_devices // seeds`` devices.
    devices: the devices to choose from; defaults to ``jax.devices()``.

  Returns:
    A ``jax.sharding.Mesh`` of shape (seeds, num_devices // seeds) with axes ("seeds", "data"), both of
    type ``AxisType.Auto`` (the compiler propagates shardings through user code).

  Raises:
    ValueError: ``num_devices`` is not in [1, number of devices] or ``seeds`` does not divide it.

  Examples:
    >>> mesh = make_mesh(1)
    >>> dict(mesh.shape)
    {'seeds': 1, 'data': 1}
  """
  available = list(jax.devices() if devices is None else devices)
  if not available:
    raise ValueError("devices must hold at least one device, got none")
  if num_devices is None:
    num_devices = len(available)
  num_devices = _check_int("num_devices", num_devices)
  if num_devices > len(available):
    raise ValueError(
      f"num_devices must be at most the number of available devices ({len(available)}: "
      f"{[str(d) for d in available]}), got {num_devices}; on CPU, more host devices can be forced "
      "with XLA_FLAGS=--xla_force_host_platform_device_count=N set before JAX starts"
    )
  seeds = _check_int("seeds", seeds)
  if num_devices % seeds:
    raise ValueError(f"seeds must divide num_devices = {num_devices}, got seeds = {seeds}")
  chosen = np.array(available[:num_devices], dtype=object).reshape(seeds, num_devices // seeds)
  return Mesh(chosen, (SEEDS_AXIS, DATA_AXIS), axis_types=(AxisType.Auto, AxisType.Auto))


def data_axis_size(mesh: Mesh) -> int:
  """Number of devices along the mesh's ``"data"`` axis (what n must be a multiple of).

  Examples:
    >>> data_axis_size(make_mesh(1))
    1
  """
  return int(_check_mesh(mesh).shape[DATA_AXIS])


# ----------------------------------------------------------------------------------------------------
# Padding
# ----------------------------------------------------------------------------------------------------


def pad_to_multiple(data: PyTree, multiple: int) -> tuple[PyTree, jax.Array]:
  """Pads a data set to a multiple of ``multiple`` examples with copies of example 0, and masks them.

  Padding rows are copies of a real example so that every computation on them stays finite; the
  returned mask is what makes them never count (pass it as the SGLD step's ``data_mask``).

  Args:
    data: pytree of arrays with a leading example axis of size n (NumPy or JAX arrays).
    multiple: the padded size is the least multiple of it that is >= n (e.g. the number of devices on
      the ``"data"`` axis, :func:`data_axis_size`).

  Returns:
    ``(padded_data, data_mask)``: the pytree with leading size n_padded = ceil(n / multiple) * multiple
    (the input itself when n is already a multiple), and a float32 array (n_padded,) that is 1 on the
    n real rows and 0 on the padding rows. Host (NumPy) leaves stay NumPy arrays.

  Raises:
    ValueError: ``data`` has no leaves, leaves disagree on n, or ``multiple`` is not a positive integer.

  Examples:
    >>> import numpy as np
    >>> x, y = np.arange(5.0), np.arange(5)
    >>> (xp, yp), mask = pad_to_multiple((x, y), 4)
    >>> xp.tolist(), yp.tolist(), mask.tolist()
    ([0.0, 1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0], [0, 1, 2, 3, 4, 0, 0, 0], [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
  """
  multiple = _check_int("multiple", multiple)
  n = _checks.check_batch(data, "data")
  n_padded = -(-n // multiple) * multiple
  mask = jnp.asarray(np.arange(n_padded) < n, dtype=jnp.float32)
  if n_padded == n:
    return data, mask

  def pad(x):
    if isinstance(x, jax.Array) or _is_traced(x):
      fill = jnp.broadcast_to(x[:1], (n_padded - n,) + x.shape[1:])
      return jnp.concatenate([x, fill], axis=0)
    x = np.asarray(x)
    fill = np.broadcast_to(x[:1], (n_padded - n,) + x.shape[1:])
    return np.concatenate([x, fill], axis=0)

  return jax.tree.map(pad, data), mask


def unpad(tree: PyTree, num_examples: int, *, seed_axis: bool = False) -> PyTree:
  """Drops padding rows: keeps the first ``num_examples`` rows of every leaf's example axis.

  Args:
    tree: pytree whose leaves all have the example axis (axis 0, or axis 1 when ``seed_axis``), e.g.
      per-example outputs. For a ``Ledger`` use it on the per-example fields, or pass the ledger itself:
      its ``realized`` and ``active`` are cut and the other fields are kept.
    num_examples: n, the number of real examples.
    seed_axis: True when leaves carry a leading seed axis before the example axis.

  Returns:
    The same pytree with the example axis cut to ``num_examples``.

  Examples:
    >>> import numpy as np
    >>> unpad(np.arange(8.0), 5).tolist()
    [0.0, 1.0, 2.0, 3.0, 4.0]
  """
  num_examples = _check_int("num_examples", num_examples)
  axis = 1 if seed_axis else 0
  if _is_ledger(tree):
    cut = {f: unpad(getattr(tree, f), num_examples, seed_axis=seed_axis) for f in _LEDGER_PER_EXAMPLE_FIELDS}
    return tree._replace(**cut)

  def cut(x):
    shape = np.shape(x)
    if len(shape) <= axis or shape[axis] < num_examples:
      raise ValueError(
        f"tree leaves need an example axis {axis} of size >= num_examples = {num_examples}, got a leaf of shape {shape}"
      )
    return x[:, :num_examples] if seed_axis else x[:num_examples]

  return jax.tree.map(cut, tree)


# ----------------------------------------------------------------------------------------------------
# Placement
# ----------------------------------------------------------------------------------------------------


def shard_data(data: PyTree, mesh: Mesh, *, seed_axis: bool = False) -> PyTree:
  """Splits every leaf's example axis along the mesh's ``"data"`` axis (replicated over ``"seeds"``).

  Works outside ``jit`` (a transfer; host arrays are sliced per device, never gathered on one device)
  and inside it (a sharding constraint). Use it for the data set, the data mask and any per-example
  array (n, ...).

  Args:
    data: pytree of arrays with a leading example axis n (axis 1 when ``seed_axis``), n a multiple of
      :func:`data_axis_size` (pad with :func:`pad_to_multiple` otherwise).
    mesh: a mesh from :func:`make_mesh`.
    seed_axis: True when leaves carry a leading seed axis (split along ``"seeds"``).

  Returns:
    The same pytree as ``jax.Array`` s with ``NamedSharding(mesh, P("data", None, ...))`` (or
    ``P("seeds", "data", ...)``).

  Raises:
    ValueError: n is not a multiple of the ``"data"`` axis size, or the leaves disagree on n.

  Examples:
    >>> import numpy as np
    >>> x = shard_data(np.ones((4, 3)), make_mesh(1))
    >>> tuple(x.sharding.spec)
    ('data', None)
  """
  mesh = _check_mesh(mesh)
  size = data_axis_size(mesh)
  if seed_axis:
    for leaf in jax.tree.leaves(data):
      _check_seed_leading("data", leaf, mesh)
    n = _checks.check_batch(jax.tree.map(lambda x: np.empty(np.shape(x)[1:2]), data), "data")
  else:
    n = _checks.check_batch(data, "data")
  if n % size:
    raise ValueError(
      f"data has n = {n} examples, which must be a multiple of the mesh's '{DATA_AXIS}' axis size "
      f"{size}; pad it first with pad_to_multiple(data, {size}) and pass the returned data_mask to "
      "the step"
    )
  return jax.tree.map(
    lambda x: _place(x, NamedSharding(mesh, _leading_spec(np.ndim(x), DATA_AXIS, seed_axis=seed_axis))),
    data,
  )


def replicate(params: PyTree, mesh: Mesh, *, seed_axis: bool = False) -> PyTree:
  """Copies every leaf to every device of the mesh (split along ``"seeds"`` when ``seed_axis``).

  Args:
    params: any pytree of arrays (parameters, optimizer state, counters).
    mesh: a mesh from :func:`make_mesh`.
    seed_axis: True when leaves carry a leading seed axis (vmapped chains), which is then split along
      ``"seeds"`` and replicated along ``"data"``.

  Returns:
    The same pytree as ``jax.Array`` s with ``NamedSharding(mesh, P())`` (or ``P("seeds")``).

  Examples:
    >>> import numpy as np
    >>> w = replicate({"w": np.ones(3)}, make_mesh(1))
    >>> w["w"].sharding.is_fully_replicated
    True
  """
  mesh = _check_mesh(mesh)
  if seed_axis:
    for leaf in jax.tree.leaves(params):
      _check_seed_leading("params", leaf, mesh)
  return jax.tree.map(
    lambda x: _place(x, NamedSharding(mesh, _replicated_spec(np.ndim(x), seed_axis=seed_axis))), params
  )


def _is_ledger(x: Any) -> bool:
  return hasattr(x, "_fields") and all(f in x._fields for f in _LEDGER_PER_EXAMPLE_FIELDS)


def shard_ledger(ledger: Any, mesh: Mesh, *, seed_axis: bool = False) -> Any:
  """Splits a ledger's per-example arrays along ``"data"`` and replicates the rest.

  ``realized`` (n, K) gets ``P("data", None)`` and ``active`` (n,) gets ``P("data")``; the orders,
  worst case, counters and flags are replicated. With ``seed_axis`` (a ledger of vmapped chains, every
  field with a leading seed axis S) the seed axis is split along ``"seeds"``.

  Args:
    ledger: an ``accounting.Ledger`` (any NamedTuple with ``realized`` and ``active`` fields), or None
      (accounting off), which is returned as is.
    mesh: a mesh from :func:`make_mesh`.
    seed_axis: True for a ledger with a leading seed axis.

  Returns:
    The ledger with its fields placed on the mesh.

  Raises:
    TypeError: ``ledger`` is not a ledger.
    ValueError: n is not a multiple of the ``"data"`` axis size.

  Examples:
    >>> import collections, numpy as np
    >>> L = collections.namedtuple("L", "orders realized active")
    >>> led = shard_ledger(L(np.array([2.0]), np.zeros((4, 1)), np.ones(4, bool)), make_mesh(1))
    >>> tuple(led.realized.sharding.spec), led.orders.sharding.is_fully_replicated
    (('data', None), True)
  """
  if ledger is None:
    return None
  if not _is_ledger(ledger):
    raise TypeError(
      f"ledger must be an accounting.Ledger (a NamedTuple with fields {_LEDGER_PER_EXAMPLE_FIELDS}), "
      f"got {type(ledger).__name__}"
    )
  per_example = {f: getattr(ledger, f) for f in _LEDGER_PER_EXAMPLE_FIELDS}
  others = {f: getattr(ledger, f) for f in ledger._fields if f not in _LEDGER_PER_EXAMPLE_FIELDS}
  return ledger._replace(
    **shard_data(per_example, mesh, seed_axis=seed_axis),
    **replicate(others, mesh, seed_axis=seed_axis),
  )


def shard_state(state: Any, mesh: Mesh, *, seed_axis: bool = False) -> Any:
  """Places a training state: its ``ledger`` field sharded by examples, everything else replicated.

  Works on ``sgld.SGLDState`` (``params``, ``step``, ``ledger``) and on any NamedTuple with an optional
  ``ledger`` field; a pytree without one is replicated as a whole. Inside ``jit`` (e.g. in the body of a
  ``lax.scan`` over steps) it acts as a sharding constraint, which keeps the ledger split along the
  example axis from step to step.

  Args:
    state: the state.
    mesh: a mesh from :func:`make_mesh`.
    seed_axis: True when every leaf carries a leading seed axis (vmapped chains).

  Returns:
    The placed state.

  Examples:
    >>> import collections, numpy as np
    >>> S = collections.namedtuple("S", "params step ledger")
    >>> s = shard_state(S({"w": np.ones(2)}, np.int32(0), None), make_mesh(1))
    >>> s.params["w"].sharding.is_fully_replicated, s.ledger is None
    (True, True)
  """
  if hasattr(state, "_fields") and "ledger" in state._fields:
    rest = {f: getattr(state, f) for f in state._fields if f != "ledger"}
    return state._replace(
      ledger=shard_ledger(state.ledger, mesh, seed_axis=seed_axis),
      **replicate(rest, mesh, seed_axis=seed_axis),
    )
  return replicate(state, mesh, seed_axis=seed_axis)


class TrainingInputs(NamedTuple):
  """The inputs of a run, placed on a mesh by :func:`place_training_inputs`.

  Attributes:
    params: replicated parameters (split along ``"seeds"`` when they carry a seed axis).
    data: the data set, padded to a multiple of the ``"data"`` axis size and split along it.
    data_mask: float32 (n_padded,), 1 on real examples and 0 on padding rows, split along ``"data"``;
      pass it to the step as ``data_mask``.
    num_examples: n, the number of real examples (use :func:`unpad` to drop the padding rows of
      per-example outputs and of the ledger).
  """

  params: PyTree
  data: PyTree
  data_mask: jax.Array
  num_examples: int


def place_training_inputs(params: PyTree, data: PyTree, mesh: Mesh, *, seed_axis: bool = False) -> TrainingInputs:
  """Pads, masks and places parameters and data set on a mesh in one call.

  Args:
    params: parameter pytree (with a leading seed axis when ``seed_axis``).
    data: the whole training set, a pytree with a leading example axis n (no seed axis).
    mesh: a mesh from :func:`make_mesh`.
    seed_axis: True when ``params`` carry a leading seed axis (vmapped chains).

  Returns:
    A :class:`TrainingInputs`. Initialise the algorithm with ``n_padded = len(data_mask)`` examples
    (so the ledger has one row per padded example) and place its state with :func:`shard_state`.

  Examples:
    >>> import numpy as np
    >>> inputs = place_training_inputs({"w": np.zeros(2)}, (np.ones((3, 2)), np.arange(3)), make_mesh(1))
    >>> inputs.num_examples, tuple(inputs.data[0].sharding.spec), inputs.data_mask.tolist()
    (3, ('data', None), [1.0, 1.0, 1.0])
  """
  mesh = _check_mesh(mesh)
  n = _checks.check_batch(data, "data")
  padded, mask = pad_to_multiple(data, data_axis_size(mesh))
  return TrainingInputs(
    params=replicate(params, mesh, seed_axis=seed_axis),
    data=shard_data(padded, mesh),
    data_mask=shard_data(mask, mesh),
    num_examples=n,
  )
