"""The static settings of :func:`~unlearn_jax.algorithms.sgld.sgld` and the eager checks of a step's inputs.

Everything here runs at build or trace time on Python values and shapes: a bad argument is reported by
name, with its value and what is allowed, before anything is compiled.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from unlearn_jax import _checks
from unlearn_jax import accounting as acc
from unlearn_jax.algorithms import batches
from unlearn_jax.algorithms.base import check_static_positive
from unlearn_jax.per_example import api as pe
from unlearn_jax.per_example import blocks

__all__ = ["Settings", "check_step_inputs", "settings"]


class Settings(NamedTuple):
  """The static settings of :func:`sgld`, validated."""

  mode: str
  sampling_rate: float | None
  batch_size: int | None
  denominator: float | None
  accounting: acc.AccountingConfig | None
  norm_method: str
  chunk_size: int | None
  reduction_blocks: int | None
  clip_norm: float | None
  weight_decay: float
  projection_radius: float | None
  batch_capacity: int | None = None


def _check_int_or_none(name: str, value: Any) -> int | None:
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be None or a positive integer, got {value!r}")
  return int(value)


def settings(
  *,
  loss_fn,
  mode,
  clip_norm,
  weight_decay,
  projection_radius,
  sampling_rate,
  batch_size,
  accounting,
  norm_method,
  chunk_size,
  denominator,
  reduction_blocks,
  batch_capacity=None,
) -> Settings:
  """The arguments of :func:`~unlearn_jax.algorithms.sgld.sgld`, validated (each error names the argument)."""
  _checks.check_choice("mode", mode, batches.MODES)
  if not callable(loss_fn):
    raise TypeError(f"loss_fn must be callable as loss_fn(params, example), got {loss_fn!r}")
  _checks.check_nonnegative("weight_decay", weight_decay)
  _checks.check_choice("norm_method", norm_method, pe.NORM_METHODS)
  if mode == "poisson":
    if sampling_rate is None:
      raise ValueError("sampling_rate q is required for mode='poisson'")
    _checks.check_probability("sampling_rate", sampling_rate, open_low=True, open_high=False)
  elif sampling_rate is not None:
    raise ValueError(f"sampling_rate is only used with mode='poisson', got {sampling_rate!r} with mode={mode!r}")
  if mode == "shuffled":
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
      raise ValueError(f"batch_size must be a positive int for mode='shuffled', got {batch_size!r}")
  elif batch_size is not None:
    raise ValueError(f"batch_size is only used with mode='shuffled', got {batch_size!r} with mode={mode!r}")
  if accounting is not None and not isinstance(accounting, acc.AccountingConfig):
    raise TypeError(
      f"accounting must be an AccountingConfig from accountant(...) or None, got {type(accounting).__name__}"
    )
  if denominator is not None:
    if mode == "shuffled":
      raise ValueError(
        f"denominator is used with mode='poisson' or 'full_batch', got {denominator!r} with mode='shuffled'"
      )
    _checks.check_positive("denominator", denominator)
  if mode == "shuffled" and accounting is not None and accounting.uses_filter:
    raise ValueError(
      "the individual Renyi filter (filter_budget) certifies full-batch and Poisson runs only; "
      "shuffled-minibatch costs are estimates (theory §2a), so there is nothing to certify"
    )
  return Settings(
    mode,
    None if sampling_rate is None else float(sampling_rate),
    None if batch_size is None else int(batch_size),
    None if denominator is None else float(denominator),
    accounting,
    norm_method,
    _check_int_or_none("chunk_size", chunk_size),
    None if reduction_blocks is None else blocks.check_blocks(reduction_blocks),
    check_static_positive("clip_norm", clip_norm),
    float(weight_decay),
    check_static_positive("projection_radius", projection_radius),
    _check_capacity(batch_capacity, mode, reduction_blocks),
  )


def _check_capacity(batch_capacity, mode, reduction_blocks) -> int | None:
  capacity = _check_int_or_none("batch_capacity", batch_capacity)
  if capacity is not None and mode != "poisson":
    raise ValueError(f"batch_capacity is only used with mode='poisson', got {batch_capacity!r} with mode={mode!r}")
  if capacity is not None and reduction_blocks is not None and capacity % reduction_blocks:
    raise ValueError(f"batch_capacity = {capacity} must be a multiple of reduction_blocks = {reduction_blocks}")
  return capacity


def check_step_inputs(s: Settings, state, data, step_size, temperature, accounting_temperature, data_mask):
  """Eager checks of one step's inputs (values under a trace are not checkable: they pass)."""
  n = _checks.check_batch(data, name="data")
  _checks.check_positive("step_size", step_size)
  _checks.check_nonnegative("temperature", temperature)
  if accounting_temperature is not None:
    _checks.check_positive("accounting_temperature", accounting_temperature)
  elif s.accounting is not None and not _checks._is_traced(temperature) and np.any(np.asarray(temperature) == 0):
    raise ValueError(
      "temperature is 0 (noise-free training) with accounting on: pass accounting_temperature > 0, "
      "the temperature assumed for the privacy costs"
    )
  if s.accounting is not None:
    if state.ledger is None:
      raise ValueError("accounting is on but state.ledger is None; build the state with this algorithm's init")
    if state.ledger.realized.shape[0] != n:
      raise ValueError(
        f"the ledger was created for {state.ledger.realized.shape[0]} examples but data has n = {n}; "
        "a ledger must be used with the data set it was created for"
      )
  if s.mode == "shuffled" and s.batch_size > n:
    raise ValueError(f"batch_size = {s.batch_size} exceeds the number of examples n = {n}")
  if s.reduction_blocks is not None and n % s.reduction_blocks:
    raise ValueError(
      f"data has n = {n} examples, which must be a multiple of reduction_blocks = {s.reduction_blocks}; "
      f"pad it with distributed.pad_to_multiple(data, {s.reduction_blocks}) and pass the returned "
      "mask as data_mask"
    )
  if data_mask is not None and np.shape(data_mask) != (n,):
    raise ValueError(f"data_mask must have shape (n,) = ({n},), got {np.shape(data_mask)}")
  return n
