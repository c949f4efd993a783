"""Unlearning by fine-tuning on the retain set (theory §4 "Unlearning variants"): a registry of methods.

A method is one function ``method(loss_fn, spec) -> (Algorithm, hyperparameters)``: from the loss and a
:class:`MethodSpec` (what ``runtime.unlearn`` was given) it builds the step and the per-call
hyperparameters the runtime passes to it at every step. Register a new one with
:func:`register_unlearning_method`; ``runtime.unlearn(method=name)`` and the study's
``unlearning.methods`` then accept it.

Built in:

- ``"sgld"``: noisy fine-tuning, the SGLD step of training at the same η, τ, clip C, weight decay and
  radius R — the unlearning of the per-instance theorem;
- ``"sgd"``: the same step at τ = 0;
- ``"l1_sparse"``: the same step at τ = 0 on L_{D'}(θ) + γ_t‖θ‖₁ with γ_t = γ·(1 − t/T) decaying
  linearly to 0 over the T fine-tuning steps (Jia et al. 2023, *Model sparsity can simplify machine
  unlearning*); its schedule depends on T, so its recorded parameters equal a rerun with the same T.

All three are one compiled program: they differ only in hyperparameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

from unlearn_jax import _checks
from unlearn_jax.algorithms.base import Algorithm
from unlearn_jax.algorithms.sgld import sgld

__all__ = ["UNLEARNING_METHODS", "MethodSpec", "register_unlearning_method", "unlearning_method"]


class MethodSpec(NamedTuple):
  """What an unlearning method is built from (the arguments of ``runtime.unlearn``).

  Attributes:
    num_steps: T, the fine-tuning steps of the run.
    step_size: η.
    temperature: τ (None when not given).
    clip_norm: C (None: no clipping).
    weight_decay: wd.
    projection_radius: R (None: none).
    norm_method, chunk_size, reduction_blocks: per-example settings of the step.
    options: the method's own keyword arguments (e.g. ``l1_strength``).
    batch_size: B of shuffled-minibatch fine-tuning, or None for full-batch fine-tuning.
  """

  num_steps: int
  step_size: float
  temperature: float | None = None
  clip_norm: float | None = None
  weight_decay: float = 0.0
  projection_radius: float | None = None
  norm_method: str = "auto"
  chunk_size: int | None = None
  reduction_blocks: int | None = None
  options: dict = {}
  batch_size: int | None = None


MethodFn = Callable[[Callable, MethodSpec], "tuple[Algorithm, dict[str, Any]]"]


def _fine_tuning_step(loss_fn: Callable, spec: MethodSpec) -> Algorithm:
  return sgld(
    loss_fn,
    mode="full_batch" if spec.batch_size is None else "shuffled",
    batch_size=spec.batch_size,
    norm_method=spec.norm_method,
    chunk_size=spec.chunk_size,
    reduction_blocks=spec.reduction_blocks,
  )


def _common_hyper(spec: MethodSpec, temperature: float) -> dict[str, Any]:
  return {
    "step_size": spec.step_size,
    "temperature": temperature,
    "clip_norm": math.inf if spec.clip_norm is None else spec.clip_norm,
    "weight_decay": spec.weight_decay,
    "projection_radius": math.inf if spec.projection_radius is None else spec.projection_radius,
  }


def _no_options(name: str, spec: MethodSpec, allowed: tuple[str, ...] = ()) -> None:
  unknown = sorted(set(spec.options) - set(allowed))
  if unknown:
    raise TypeError(f"method {name!r} takes no option(s) {unknown}; allowed: {list(allowed)}")


def _sgld_method(loss_fn: Callable, spec: MethodSpec) -> tuple[Algorithm, dict[str, Any]]:
  _no_options("sgld", spec)
  if spec.temperature is None:
    raise ValueError("method='sgld' needs a temperature τ > 0 (the training temperature)")
  _checks.check_positive("temperature", spec.temperature)
  return _fine_tuning_step(loss_fn, spec), _common_hyper(spec, spec.temperature)


def _sgd_method(loss_fn: Callable, spec: MethodSpec) -> tuple[Algorithm, dict[str, Any]]:
  _no_options("sgd", spec)
  return _fine_tuning_step(loss_fn, spec), _common_hyper(spec, 0.0)


def _l1_sparse_method(loss_fn: Callable, spec: MethodSpec) -> tuple[Algorithm, dict[str, Any]]:
  _no_options("l1_sparse", spec, ("l1_strength",))
  gamma = spec.options.get("l1_strength", 0.0)
  _checks.check_nonnegative("l1_strength", gamma)
  hyper = dict(_common_hyper(spec, 0.0), l1_strength=gamma, l1_horizon=float(max(spec.num_steps, 1)))
  return _fine_tuning_step(loss_fn, spec), hyper


UNLEARNING_METHODS: dict[str, MethodFn] = {"sgld": _sgld_method, "sgd": _sgd_method, "l1_sparse": _l1_sparse_method}
"""Method name -> ``method(loss_fn, spec) -> (Algorithm, hyperparameters)``."""


def register_unlearning_method(name: str, method: MethodFn) -> None:
  """Adds (or replaces) an unlearning method under ``name``.

  Args:
    name: the name ``runtime.unlearn(method=...)`` and the study config use.
    method: ``method(loss_fn, spec: MethodSpec) -> (Algorithm, dict of per-call hyperparameters)``; the
      hyperparameters are passed to the Algorithm's ``step`` as keyword arguments at every step.

  Examples:
    >>> def twice_the_step(loss_fn, spec):
    ...   alg, hyper = UNLEARNING_METHODS["sgd"](loss_fn, spec._replace(options={}))
    ...   return alg, dict(hyper, step_size=2 * spec.step_size)
    >>> register_unlearning_method("sgd_2x", twice_the_step)
    >>> "sgd_2x" in UNLEARNING_METHODS
    True
    >>> del UNLEARNING_METHODS["sgd_2x"]
  """
  if not isinstance(name, str) or not name:
    raise TypeError(f"name must be a non-empty string, got {name!r}")
  if not callable(method):
    raise TypeError(f"method must be callable as method(loss_fn, spec), got {method!r}")
  UNLEARNING_METHODS[name] = method


def unlearning_method(name: str) -> MethodFn:
  """The registered method ``name`` (ValueError listing the registered names otherwise)."""
  _checks.check_choice("method", name, tuple(UNLEARNING_METHODS))
  return UNLEARNING_METHODS[name]
