"""Checks that survive ``jax.jit``: an invalid traced input turns the result into NaN (optionally an error).

Eagerly the public functions raise a ``ValueError`` naming the argument (``_checks``). Under a trace the
values are unknown, so the functions that decide soundness (costs, conversions, certificates) pass their
result through :func:`guard`: where a traced input is invalid the result is NaN — never a plausible
number, and a ledger that receives it sets its ``finite`` flag to False. Inside :func:`raise_under_jit`
the same conditions are also emitted as ``jax.experimental.checkify`` checks, so a function wrapped in
``checkify.checkify`` returns an error naming the argument (and plain ``jax.jit`` refuses to stage an
unchecked call, so the opt-in cannot be forgotten silently).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import checkify

__all__ = [
  "RULES",
  "Condition",
  "guard",
  "guarded",
  "nonnegative",
  "orders_valid",
  "positive",
  "probability",
  "raise_under_jit",
]

_RAISE = contextvars.ContextVar("unlearn_jax_raise_under_jit", default=False)


@contextlib.contextmanager
def raise_under_jit(enabled: bool = True) -> Iterator[None]:
  """Within this context, functions traced by jit also emit checkify checks for invalid inputs.

  Wrap the jitted function in ``jax.experimental.checkify.checkify`` and call ``err.throw()`` on the
  returned error (see README, "Composing under jit"). Outside the context (the default) an invalid
  traced input gives NaN. Entering and leaving the context clears JAX's compilation caches (a trace
  holds the checks or not), so keep it around a debugging session, not inside a hot loop.

  Examples:
    >>> import jax
    >>> from jax.experimental import checkify
    >>> from unlearn_jax import certify
    >>> def k(tau):
    ...   return certify.steps_to_unlearn(5.0, 1.0, alpha=2.0, step_size=0.1, temperature=tau, lsi_constant=1.0)
    >>> float(jax.jit(k)(-1e-5))  # invalid temperature under jit: NaN, not a number of steps
    nan
    >>> with raise_under_jit():
    ...   err, _ = checkify.checkify(jax.jit(k))(-1e-5)
    >>> err.get()
    'temperature must be a finite positive number (checked under jit) (`check` failed)'
  """
  token = _RAISE.set(bool(enabled))
  jax.clear_caches()  # traces made outside the context hold no checks: trace again
  try:
    yield
  finally:
    _RAISE.reset(token)
    jax.clear_caches()  # and traces made inside hold checks that plain jit cannot stage


def _traced(value: Any) -> bool:
  return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(value))


Condition = tuple[Any, Callable[[jax.Array], jax.Array], str]  # (input, where it is valid, what is allowed)


def _finite_if(ok: jax.Array, v: jax.Array, allow_inf: bool) -> jax.Array:
  return ok if allow_inf else ok & jnp.isfinite(v)


def positive(value: Any, *, allow_inf: bool = False) -> Condition:
  allowed = "a positive number (inf allowed)" if allow_inf else "a finite positive number"
  return value, lambda v: _finite_if(v > 0, v, allow_inf), allowed


def nonnegative(value: Any, *, allow_inf: bool = False) -> Condition:
  allowed = "a non-negative number (inf allowed)" if allow_inf else "a finite non-negative number"
  return value, lambda v: _finite_if(v >= 0, v, allow_inf), allowed


def probability(value: Any, *, open_low: bool = True, open_high: bool = True) -> Condition:
  allowed = "in " + ("(" if open_low else "[") + "0, 1" + (")" if open_high else "]")
  return value, lambda v: (v > 0 if open_low else v >= 0) & (v < 1 if open_high else v <= 1), allowed


def orders_valid(orders: Any) -> Condition:
  return orders, lambda v: (v > 1) & jnp.isfinite(v), "finite and > 1"


def guard(result: Any, **conditions: tuple[Any, Any]) -> Any:
  """``result`` unchanged when every condition input is concrete (eager checks already ran); otherwise
  its float leaves are NaN wherever a condition fails anywhere.

  Args:
    result: an array or a pytree of arrays.
    **conditions: ``name=condition`` with a :data:`Condition` from :func:`positive`, :func:`nonnegative`,
      :func:`probability` or :func:`orders_valid` (the input, where it is valid, what is allowed).

  Returns:
    ``result``, poisoned with NaN under a trace where an input is invalid.
  """
  traced = {name: cond for name, cond in conditions.items() if _traced(cond[0])}
  if not traced:
    return result
  oks = []
  for name, (value, valid, allowed) in traced.items():
    ok = jnp.all(valid(jnp.asarray(value)))
    if _RAISE.get():
      checkify.check(ok, f"{name} must be {allowed} (checked under jit)")
    oks.append(ok)
  ok = jnp.all(jnp.stack(oks))

  def poison(leaf):
    leaf = jnp.asarray(leaf)
    if not jnp.issubdtype(leaf.dtype, jnp.inexact):
      return leaf
    return jnp.where(ok, leaf, jnp.nan)

  return jax.tree.map(poison, result)


_INF_OK = {"allow_inf": True}
RULES: dict[str, Callable[[Any], Condition]] = {
  "step_size": positive,
  "temperature": positive,
  "lsi_constant": positive,
  "m": positive,
  "denominator": positive,
  "batch_size": positive,
  "num_examples": positive,
  "noise_std": functools.partial(positive, **_INF_OK),
  "noise_multiplier": functools.partial(positive, **_INF_OK),
  "clip_norm": functools.partial(positive, **_INF_OK),
  "epsilon": functools.partial(positive, **_INF_OK),
  "alpha": orders_valid,
  "orders": orders_valid,
  "q": functools.partial(probability, open_high=False),
  "delta": probability,
  "num_steps": nonnegative,
  "num_removed": nonnegative,
  "sensitivity": nonnegative,
  "e1": functools.partial(nonnegative, **_INF_OK),
  "e2": functools.partial(nonnegative, **_INF_OK),
}
"""Argument name -> its validity condition; one table, so an argument means the same everywhere.

Only settings are listed (rates, orders, step sizes, temperatures, constants, δ, targets): an invalid
one makes every entry of the result meaningless. Per-example data (privacy losses, norms, distances)
are handled entry by entry by the functions themselves (a NaN privacy loss certifies nothing: +inf
steps), so that one bad example does not poison the others."""


def guarded(fn: Callable) -> Callable:
  """Decorates a public function: under a trace, its result is NaN where an argument named in
  :data:`RULES` is invalid (see :func:`guard`); eager calls are unchanged."""
  signature = inspect.signature(fn)
  names = [name for name in signature.parameters if name in RULES]

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    result = fn(*args, **kwargs)
    if not _traced((args, kwargs)):
      return result
    bound = signature.bind(*args, **kwargs).arguments
    conditions = {name: RULES[name](bound[name]) for name in names if bound.get(name) is not None}
    return guard(result, **conditions)

  return wrapper
