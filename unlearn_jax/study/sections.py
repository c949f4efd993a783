"""The sections of the study's configuration: one frozen dataclass per stage of the pipeline, each
checking its own values with the library's checks (``_checks``) and naming the config key in its errors.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Mapping
from typing import Any

from unlearn_jax import _checks
from unlearn_jax import data as data_lib
from unlearn_jax import models as models_lib
from unlearn_jax.algorithms import MODES, UNLEARNING_METHODS
from unlearn_jax.evaluate import METRICS

__all__ = [
  "SECTIONS",
  "SELECTION_KINDS",
  "ConfigError",
  "DataConfig",
  "EvaluationConfig",
  "ForgetSetsConfig",
  "MetricsConfig",
  "ModelConfig",
  "PrivacyConfig",
  "TrainingConfig",
  "UnlearningConfig",
  "config_key",
  "selection_scores",
]

SELECTION_KINDS = ("top", "bottom")


class ConfigError(ValueError):
  """A config key is unknown, of the wrong type or out of range; the message names the key."""


def selection_scores() -> tuple[str, ...]:
  """The scores a forget set can be selected by: the privacy loss and every registered metric."""
  return ("privacy_loss",) + tuple(METRICS)


def config_key(section: str, name: str) -> str:
  return f"{section}.{name}" if section else name


class _Section:
  """Mixin: validation of field values after the dataclass is built, with the library's checks."""

  _section: typing.ClassVar[str] = ""

  def _name(self, name: str) -> str:
    return f"config key {config_key(self._section, name)!r}"

  def _fail(self, name: str, value: Any, allowed: str) -> typing.NoReturn:
    raise ConfigError(f"{self._name(name)} must be {allowed}, got {value!r}")

  def _check(self, check, name: str, *args, **kwargs) -> None:
    """Runs a library check on the field ``name``; its error becomes a ConfigError naming the key."""
    value = getattr(self, name)
    try:
      check(self._name(name), value, *args, **kwargs)
    except (ValueError, TypeError) as e:
      raise ConfigError(str(e)) from e

  def _positive(self, name: str, *, allow_inf: bool = False, optional: bool = False) -> None:
    if getattr(self, name) is None and optional:
      return
    self._check(_checks.check_positive, name, allow_inf=allow_inf)

  def _nonnegative(self, name: str) -> None:
    self._check(_checks.check_nonnegative, name)

  def _at_least(self, name: str, minimum: int, what: str = "") -> None:
    value = getattr(self, name)
    if value is not None and value < minimum:
      self._fail(name, value, f"an integer >= {minimum}{what}")

  def _choice(self, name: str, allowed: tuple[str, ...], value: Any = None) -> None:
    value = getattr(self, name) if value is None else value
    if value not in allowed:
      close = difflib.get_close_matches(str(value), allowed, n=1)
      hint = f" (did you mean {close[0]!r}?)" if close else ""
      raise ConfigError(f"{self._name(name)} must be one of {list(allowed)}, got {value!r}{hint}")

  def _distinct(self, name: str) -> None:
    values = list(getattr(self, name))
    if len(set(values)) != len(values):
      self._fail(name, values, "a list without repeats")


@dataclasses.dataclass(frozen=True)
class DataConfig(_Section):
  """The data set.

  Attributes:
    name: a name of ``data.DATASETS`` ("digits", "mnist1d", "gaussian_mixture", "cifar10", "svhn", or one
      added with ``data.register_dataset``).
    data_dir: directory of a file-based data set (the CLI's ``--data-dir`` overrides it).
    num_train: fixed-seed subsample of the training set (all when absent).
    num_test: fixed-seed subsample of the test set (all when absent).
    kwargs: further keyword arguments of the loader.
  """

  _section: typing.ClassVar[str] = "data"
  name: str = "digits"
  data_dir: str | None = None
  num_train: int | None = None
  num_test: int | None = None
  kwargs: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    self._choice("name", tuple(data_lib.DATASETS))
    self._at_least("num_train", 2, " (or absent for all examples)")
    self._at_least("num_test", 2, " (or absent for all examples)")


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Section):
  """The model: ``name`` a name of ``models.MODELS`` (the built-in ones, or one added from Python with
  ``models.register_model``) or a reference ``"package.module:builder"`` to a builder
  ``builder(num_classes=..., **kwargs) -> models.Model``, importable from the installed packages or the
  current directory; ``kwargs`` the builder's keyword arguments (e.g. ``hidden_sizes`` of the MLP)."""

  _section: typing.ClassVar[str] = "model"
  name: str = "mlp"
  kwargs: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    try:
      models_lib.resolve_builder(self.name)
    except (ValueError, TypeError) as e:
      raise ConfigError(f"{self._name('name')}: {e}") from e


@dataclasses.dataclass(frozen=True)
class TrainingConfig(_Section):
  """Training with the ledger (theory §0-§3).

  Attributes:
    mode: gradient estimate, one of ``algorithms.MODES`` (theory §1).
    num_steps: noisy steps T.
    step_size: η > 0.
    temperature: τ ≥ 0; 0 is plain (clipped) SGD, which needs ``accounting_temperature``.
    accounting_temperature: the temperature τ_acc > 0 the ledger *assumes* when training is noise-free
      (τ = 0): the costs are those of the noisy chain at τ_acc, an assumption stated in the report, not a
      bound for the run that took place. Absent (the default) when τ > 0.
    clip_norm: per-example clip C > 0 (``inf``: no clipping).
    weight_decay: L2 strength m >= 0 (the regulariser m/2 ||θ||²; with logistic regression it makes the
      objective m-strongly convex).
    sampling_rate: Poisson rate q in (0, 1] (mode ``poisson`` only).
    batch_size: minibatch size (mode ``shuffled`` only).
    projection_radius: radius R of the projection ball (``inf``: none).
    num_seeds: independent training chains. The ledger is averaged over them (theory §3).
    num_checkpoints: parameter checkpoints kept along training for the metrics.
    baseline: also train one plain (non-private) model — no noise, no clipping, otherwise the same
      steps — and report the private models' test accuracy next to it.
  """

  _section: typing.ClassVar[str] = "training"
  mode: str = "full_batch"
  num_steps: int = 1500
  step_size: float = 0.5
  temperature: float = 1e-5
  accounting_temperature: float | None = None
  clip_norm: float = 5.0
  weight_decay: float = 1e-3
  sampling_rate: float | None = None
  batch_size: int | None = None
  projection_radius: float = math.inf
  num_seeds: int = 8
  num_checkpoints: int = 10
  baseline: bool = True

  def __post_init__(self):
    self._choice("mode", MODES)
    self._at_least("num_steps", 1)
    self._positive("step_size")
    self._nonnegative("temperature")
    self._positive("accounting_temperature", optional=True)
    if self.temperature == 0 and self.accounting_temperature is None:
      self._fail(
        "accounting_temperature", None, "a number > 0 when temperature = 0 (the temperature the ledger assumes)"
      )
    if self.temperature > 0 and self.accounting_temperature is not None:
      self._fail("accounting_temperature", self.accounting_temperature, "absent when temperature > 0")
    self._positive("clip_norm", allow_inf=True)
    self._nonnegative("weight_decay")
    self._positive("projection_radius", allow_inf=True)
    if self.mode == "poisson":
      if self.sampling_rate is None:
        self._fail("sampling_rate", None, "a number in (0, 1] when mode = 'poisson'")
      self._check(_checks.check_probability, "sampling_rate", open_low=True, open_high=False)
    elif self.sampling_rate is not None:
      self._fail("sampling_rate", self.sampling_rate, f"absent unless mode = 'poisson' (mode is {self.mode!r})")
    if self.mode == "shuffled":
      if self.batch_size is None or self.batch_size < 1:
        self._fail("batch_size", self.batch_size, "an integer >= 1 when mode = 'shuffled'")
    elif self.batch_size is not None:
      self._fail("batch_size", self.batch_size, f"absent unless mode = 'shuffled' (mode is {self.mode!r})")
    self._at_least("num_seeds", 1)
    self._at_least("num_checkpoints", 2)

  @property
  def ledger_temperature(self) -> float:
    """The temperature of the ledger's costs: τ, or the assumed τ_acc of noise-free training."""
    return self.temperature if self.accounting_temperature is None else self.accounting_temperature


@dataclasses.dataclass(frozen=True)
class PrivacyConfig(_Section):
  """The ledger and the certificate (theory §3, §4).

  Attributes:
    orders: Rényi orders of the ledger; must contain 4 * alpha (the certificate reads P(x, 4α)).
    alpha: order α > 1 of the unlearning certificate.
    epsilon: target Rényi ε of the certificate at order α (must exceed e2).
    lsi_constant: C_LSI of the retain-set chain's stationary law. Absent: derived as 2τ/m for
      ``logistic_regression`` with weight decay m > 0 (certified); required for every other model, where
      it is an assumption and labelled so in the report.
    e1: E₁ of theory §4 (0: the "trained to stationarity" assumption).
    e2: E₂ of theory §4 (0: the same assumption).
    stride: evaluate per-step costs every ``stride`` steps and count them ``stride`` times (estimate).
    filter_budget: individual Rényi filter budget B (absent: no filter; the realized P is an estimate).
    filter_order: the order α* of the filter (required with ``filter_budget``).
    second_clip_norm: also train ``training.num_seeds`` chains with the ledger at this clip norm (all else
      equal), report how saturated its P is and how it ranks the examples, and unlearn its top set
      (``privacy_loss@clip2:top``) from the main models, so that the effect of clip saturation on claim
      (c) is measured. Absent: not run.
  """

  _section: typing.ClassVar[str] = "privacy"
  orders: tuple[float, ...] = (2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
  alpha: float = 2.0
  epsilon: float = 1.0
  lsi_constant: float | None = None
  e1: float = 0.0
  e2: float = 0.0
  stride: int = 1
  filter_budget: float | None = None
  filter_order: float | None = None
  second_clip_norm: float | None = None

  def __post_init__(self):
    self._positive("second_clip_norm", optional=True)
    try:
      _checks.check_orders(self.orders, name=self._name("orders"))
    except (ValueError, TypeError) as e:
      raise ConfigError(str(e)) from e
    if not (math.isfinite(self.alpha) and self.alpha > 1):
      self._fail("alpha", self.alpha, "a finite order > 1")
    if not any(math.isclose(a, 4 * self.alpha) for a in self.orders):
      raise ConfigError(
        f"config key 'privacy.orders' must contain 4 * alpha = {4 * self.alpha!r} (the "
        f"certificate of theory §4 reads P(x, 4α)), got {list(self.orders)!r}"
      )
    self._positive("epsilon")
    self._positive("lsi_constant", optional=True)
    self._nonnegative("e1")
    self._nonnegative("e2")
    if self.epsilon <= self.e2:
      self._fail("epsilon", self.epsilon, f"larger than e2 = {self.e2!r} (else no k certifies)")
    self._at_least("stride", 1)
    if (self.filter_budget is None) != (self.filter_order is None):
      raise ConfigError(
        "config keys 'privacy.filter_budget' and 'privacy.filter_order' must be given "
        f"together, got filter_budget={self.filter_budget!r}, filter_order={self.filter_order!r}"
      )
    if self.filter_budget is not None:
      self._positive("filter_budget")
      if not any(math.isclose(a, self.filter_order) for a in self.orders):
        self._fail("filter_order", self.filter_order, f"one of privacy.orders {list(self.orders)}")


@dataclasses.dataclass(frozen=True)
class ForgetSetsConfig(_Section):
  """Forget-set selection (theory §6, harder groups).

  Attributes:
    size: examples per forget set.
    selections: ``"<score>:top"`` (the ``size`` hardest examples by the score), ``"<score>:bottom"``
      (the easiest) or ``"random"``; scores are ``privacy_loss`` or a metric of ``metrics.names``.
      "Hardest" follows each score's direction (high loss, low confidence, ...).
    privacy_loss_bins: additionally, this many quantile bins of privacy loss, ``sets_per_bin`` random
      forget sets of ``size`` examples from each (0: none).
    sets_per_bin: forget sets drawn from each privacy-loss bin (their spread of steps is reported).
    privacy_loss_quantiles: additionally, for each q, the ``size`` examples nearest in rank to the
      q-quantile of privacy loss (label ``privacy_loss:q<q>``; q = 1 is the top set): the forget sets of the
      trade-off between certificates and empirical unlearning.
    metric_bins: difficulty metrics (of ``metrics.names``) whose quantile bins get forget sets too (the
      same number of bins and sets per bin as the privacy loss; bin 0 = the easiest by the metric's
      direction), so that steps can be read as a curve against each metric as well.
    ties_within: privacy losses within this relative distance of each other (one cell of a geometric grid
      of ratio 1 + ``ties_within``) count as tied when selecting ``privacy_loss:top`` / ``:bottom``; ties
      are broken by the unclipped per-example gradient norm at the end of training (mean over chains),
      which the clip does not saturate, then by index.
  """

  _section: typing.ClassVar[str] = "forget_sets"
  size: int = 20
  selections: tuple[str, ...] = (
    "privacy_loss:top",
    "privacy_loss:bottom",
    "random",
    "el2n:top",
    "loss:top",
    "memorization:top",
  )
  privacy_loss_bins: int = 0
  sets_per_bin: int = 1
  privacy_loss_quantiles: tuple[float, ...] = ()
  metric_bins: tuple[str, ...] = ()
  ties_within: float = 0.01

  def __post_init__(self):
    self._at_least("size", 1)
    self._at_least("sets_per_bin", 1)
    for name in self.metric_bins:
      self._choice("metric_bins", tuple(METRICS), name)
    self._distinct("metric_bins")
    if self.metric_bins and self.privacy_loss_bins < 1:
      self._fail("metric_bins", list(self.metric_bins), "empty unless privacy_loss_bins >= 1 (it sets the bins)")
    if isinstance(self.ties_within, bool) or not isinstance(self.ties_within, (int, float)):
      self._fail("ties_within", self.ties_within, "a number in [0, 1)")
    if not 0.0 <= self.ties_within < 1.0:
      self._fail("ties_within", self.ties_within, "a number in [0, 1)")
    for q in self.privacy_loss_quantiles:
      if not 0.0 <= q <= 1.0:
        self._fail("privacy_loss_quantiles", list(self.privacy_loss_quantiles), "quantiles in [0, 1]")
    self._distinct("privacy_loss_quantiles")
    if not self.selections:
      self._fail("selections", [], "a non-empty list")
    allowed = ("random",) + tuple(f"{s}:{k}" for s in selection_scores() for k in SELECTION_KINDS)
    for sel in self.selections:
      self._choice("selections", allowed, sel)
    self._distinct("selections")
    self._at_least("privacy_loss_bins", 0)


_METHOD_DEFAULTS = {"l1_sparse": {"l1_strength": 5e-4}}


@dataclasses.dataclass(frozen=True)
class UnlearningConfig(_Section):
  """Unlearning by fine-tuning on the retain set, and the retrained oracles (theory §4, §6).

  Attributes:
    methods: names of ``algorithms.UNLEARNING_METHODS`` (noisy SGLD fine-tuning, noise-free SGD,
      L1-sparse, or one added with ``algorithms.register_unlearning_method``).
    method_options: per method, its keyword arguments, over the study's defaults
      (``l1_sparse``: ``l1_strength`` = 5e-4, the initial γ, decaying linearly to 0).
    step_grid: increasing step counts at which the unlearning parameters are recorded (0 allowed).
    num_seeds: R, the oracle seeds (and unlearned chains compared with them); >= 4 (the noise floor
      splits the oracle seeds in two halves).
    step_size: fine-tuning η (absent: training's).
    temperature: SGLD fine-tuning τ (absent: training's); ``sgd`` and ``l1_sparse`` use τ = 0.
    retrain_steps: oracle training steps (absent: training's ``num_steps``).
  """

  _section: typing.ClassVar[str] = "unlearning"
  methods: tuple[str, ...] = ("sgld", "sgd", "l1_sparse")
  method_options: dict = dataclasses.field(default_factory=dict)
  step_grid: tuple[int, ...] = (0, 50, 100, 200, 400, 800)
  num_seeds: int = 16
  step_size: float | None = None
  temperature: float | None = None
  retrain_steps: int | None = None

  def __post_init__(self):
    if not self.methods:
      self._fail("methods", [], f"a non-empty subset of {sorted(UNLEARNING_METHODS)}")
    for m in self.methods:
      self._choice("methods", tuple(UNLEARNING_METHODS), m)
    self._distinct("methods")
    for name, options in self.method_options.items():
      if name not in UNLEARNING_METHODS:
        self._choice("method_options", tuple(UNLEARNING_METHODS), name)
      if not isinstance(options, Mapping):
        self._fail("method_options", options, f"a table of keyword arguments of method {name!r}")
    grid = list(self.step_grid)
    if not grid or grid[0] < 0 or any(b <= a for a, b in zip(grid, grid[1:])):
      self._fail("step_grid", grid, "a non-empty strictly increasing list of integers >= 0")
    self._at_least("num_seeds", 4, " (the noise floor splits the oracle seeds)")
    self._positive("step_size", optional=True)
    self._positive("temperature", optional=True)
    self._at_least("retrain_steps", 1)

  def options(self, method: str) -> dict:
    """The keyword arguments of ``method``: the study's defaults updated by ``method_options``."""
    return {**_METHOD_DEFAULTS.get(method, {}), **self.method_options.get(method, {})}


@dataclasses.dataclass(frozen=True)
class EvaluationConfig(_Section):
  """Empirical evaluation (theory §6).

  Attributes:
    barrier_points: points of the λ grid of the loss barrier (>= 3).
    membership: compute the per-example membership ε lower bound of the forget sets.
    delta: δ of the membership ε and of the (ε, δ) form of the certificate, in (0, 1).
    floor_quantile: quantile of the oracle-vs-oracle noise floor the "unlearned" criterion uses.
    min_power: the least power the "unlearned" test must have, at the configured number of seeds and
      forget-set size, to detect a 2-standard-deviation shift (simulated when the run starts; a run
      whose test falls short is refused before any training). 0 runs an underpowered test anyway; the
      report states the power either way.
  """

  _section: typing.ClassVar[str] = "evaluation"
  barrier_points: int = 11
  membership: bool = True
  delta: float = 1e-5
  floor_quantile: float = 0.95
  min_power: float = 0.5

  def __post_init__(self):
    self._at_least("barrier_points", 3)
    self._check(_checks.check_probability, "delta")
    self._check(_checks.check_probability, "floor_quantile", open_high=False)
    if not (isinstance(self.min_power, (int, float)) and not isinstance(self.min_power, bool)):
      self._fail("min_power", self.min_power, "a number in [0, 1]")
    if not 0.0 <= self.min_power <= 1.0:
      self._fail("min_power", self.min_power, "a number in [0, 1]")


@dataclasses.dataclass(frozen=True)
class MetricsConfig(_Section):
  """Difficulty metrics (theory §6).

  Attributes:
    names: names of ``evaluate.METRICS`` computed for every training example.
    early_fraction: fraction of training at which EL2N and GraNd are taken, in (0, 1].
    memorization_models: R models on random halves for Feldman-Zhang memorization (>= 2).
    memorization_steps: their training steps (absent: training's ``num_steps``).
  """

  _section: typing.ClassVar[str] = "metrics"
  names: tuple[str, ...] = ("loss", "confidence", "margin", "el2n", "grand", "forgetting", "cproxy", "memorization")
  early_fraction: float = 0.1
  memorization_models: int = 8
  memorization_steps: int | None = None

  def __post_init__(self):
    for m in self.names:
      self._choice("names", tuple(METRICS), m)
    self._distinct("names")
    self._check(_checks.check_probability, "early_fraction", open_high=False)
    self._at_least("memorization_models", 2)
    self._at_least("memorization_steps", 1)


SECTIONS = {
  "data": DataConfig,
  "model": ModelConfig,
  "training": TrainingConfig,
  "privacy": PrivacyConfig,
  "forget_sets": ForgetSetsConfig,
  "unlearning": UnlearningConfig,
  "evaluation": EvaluationConfig,
  "metrics": MetricsConfig,
}
