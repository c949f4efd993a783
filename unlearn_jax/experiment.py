"""The whole per-instance unlearning study in one call: typed config, pipeline and report (issue 7).

A :class:`Config` holds every knob of the study; its keys are the library's own keyword names
(``step_size``, ``temperature``, ``clip_norm``, ``sampling_rate``, ``mode``, ``num_steps``, ``orders``,
``alpha``, ...), grouped in sections that mirror the pipeline. :func:`run` then

1. trains ``training.num_seeds`` chains with the per-instance ledger (THEORY §2, §3) and keeps the
   parameter checkpoints the difficulty metrics need;
2. turns each example's privacy loss P(x, 4α) into certified steps to unlearn (THEORY §4) and computes
   the worst-case baseline of Chien et al. — certified when the constants are known (logistic regression
   with L2 weight decay m: C_LSI = 2τ/m), otherwise labelled as resting on an assumed C_LSI; E₁ = E₂ = 0
   is labelled as the "trained to stationarity" assumption;
3. picks forget sets: top / bottom / random by privacy loss and top by each difficulty metric (THEORY §6);
4. for each forget set and unlearning method: fine-tunes on the retain set recording parameters on the
   step grid, retrains the oracles (vmapped seeds), measures loss barriers, the empirical steps to unlearn
   and, where configured, the membership ε lower bound;
5. correlates privacy loss with every metric and certified with empirical steps, and writes
   ``report.json``, ``report.md``, ``per_example.csv``, the figures and the parameters needed to re-check
   the numbers (``params/*.npz``).

Configs are read from TOML or JSON with :meth:`Config.from_file`; unknown keys, wrong types and values
out of range are refused with an error that names the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import pathlib
import types
import typing
from typing import Any, Mapping

__all__ = [
    "ConfigError",
    "OutputDirError",
    "DataMissingError",
    "DataConfig",
    "ModelConfig",
    "TrainingConfig",
    "PrivacyConfig",
    "ForgetSetsConfig",
    "UnlearningConfig",
    "EvaluationConfig",
    "MetricsConfig",
    "Config",
    "demo_config",
    "run",
    "write_per_example_csv",
    "write_report_json",
    "write_report_md",
    "DATASETS",
    "MODELS",
    "MODES",
    "UNLEARNING_METHODS",
    "METRICS",
    "SELECTION_SCORES",
]

DATASETS = ("digits", "mnist1d", "gaussian_mixture", "cifar10", "svhn")
MODELS = ("logistic_regression", "mlp", "small_cnn", "resnet18")
MODES = ("full_batch", "poisson", "shuffled")
UNLEARNING_METHODS = ("sgld", "sgd", "l1_sparse")
METRICS = ("loss", "confidence", "margin", "el2n", "grand", "forgetting", "cproxy", "memorization")
SELECTION_SCORES = ("privacy_loss",) + METRICS
# Direction of difficulty per score: +1 when a larger value means a harder example, -1 when smaller.
DIFFICULTY_SIGN = {
    "privacy_loss": 1, "loss": 1, "confidence": -1, "margin": -1, "el2n": 1, "grand": 1,
    "forgetting": 1, "cproxy": -1, "memorization": 1,
}
SELECTION_KINDS = ("top", "bottom")


class ConfigError(ValueError):
  """A config key is unknown, of the wrong type or out of range; the message names the key."""


# ----------------------------------------------------------------------------------------------------
# Typed config
# ----------------------------------------------------------------------------------------------------


def _key(section: str, name: str) -> str:
  return f"{section}.{name}" if section else name


class _Section:
  """Mixin: validation of field values (ranges, choices) after the dataclass is built."""

  _section: typing.ClassVar[str] = ""

  def _fail(self, name: str, value: Any, allowed: str) -> typing.NoReturn:
    raise ConfigError(f"config key {_key(self._section, name)!r} must be {allowed}, got {value!r}")

  def _positive(self, name: str, *, allow_inf: bool = False, optional: bool = False) -> None:
    value = getattr(self, name)
    if value is None and optional:
      return
    ok = value is not None and value > 0 and not math.isnan(value) and (allow_inf or math.isfinite(value))
    if not ok:
      self._fail(name, value, "a positive number" + (" (inf allowed)" if allow_inf else ""))

  def _nonnegative(self, name: str) -> None:
    value = getattr(self, name)
    if not (value >= 0 and math.isfinite(value)):
      self._fail(name, value, "a finite non-negative number")

  def _choice(self, name: str, allowed: tuple[str, ...], value: Any = None) -> None:
    value = getattr(self, name) if value is None else value
    if value not in allowed:
      close = difflib.get_close_matches(str(value), allowed, n=1)
      hint = f" (did you mean {close[0]!r}?)" if close else ""
      raise ConfigError(f"config key {_key(self._section, name)!r} must be one of {list(allowed)}, "
                        f"got {value!r}{hint}")


@dataclasses.dataclass(frozen=True)
class DataConfig(_Section):
  """The data set.

  Attributes:
    name: one of ``DATASETS``. ``digits`` (scikit-learn's bundled digits), ``mnist1d`` and
      ``gaussian_mixture`` are generated locally; ``cifar10`` and ``svhn`` are read from ``data_dir``.
    data_dir: directory holding the CIFAR-10 binary batches or the SVHN ``.mat`` files
      (the CLI's ``--data-dir`` overrides it).
    num_train: fixed-seed subsample of the training set (all when absent).
    num_test: fixed-seed subsample of the test set (all when absent).
  """

  _section: typing.ClassVar[str] = "data"
  name: str = "digits"
  data_dir: str | None = None
  num_train: int | None = None
  num_test: int | None = None

  def __post_init__(self):
    self._choice("name", DATASETS)
    for name in ("num_train", "num_test"):
      value = getattr(self, name)
      if value is not None and value < 2:
        self._fail(name, value, "an integer >= 2 (or absent for all examples)")


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Section):
  """The model: ``name`` in ``MODELS``; ``hidden`` the MLP's hidden widths."""

  _section: typing.ClassVar[str] = "model"
  name: str = "mlp"
  hidden: tuple[int, ...] = (128,)

  def __post_init__(self):
    self._choice("name", MODELS)
    if not self.hidden or any(h < 1 for h in self.hidden):
      self._fail("hidden", list(self.hidden), "a non-empty list of positive integers")


@dataclasses.dataclass(frozen=True)
class TrainingConfig(_Section):
  """Training with the ledger (THEORY §0-§3).

  Attributes:
    mode: gradient estimate, one of ``MODES`` (THEORY §1).
    num_steps: noisy steps T.
    step_size: η > 0.
    temperature: τ > 0.
    clip_norm: per-example clip C > 0 (``inf``: no clipping).
    weight_decay: L2 strength m >= 0 (the regulariser m/2 ||θ||²; with logistic regression it makes the
      objective m-strongly convex).
    sampling_rate: Poisson rate q in (0, 1] (mode ``poisson`` only).
    batch_size: minibatch size (mode ``shuffled`` only).
    projection_radius: radius R of the projection ball (``inf``: none).
    num_seeds: independent training chains (vmapped). The ledger is averaged over them (THEORY §3) and
      each one starts an unlearning chain.
    num_checkpoints: parameter checkpoints kept along training for the metrics.
  """

  _section: typing.ClassVar[str] = "training"
  mode: str = "full_batch"
  num_steps: int = 1500
  step_size: float = 0.5
  temperature: float = 1e-5
  clip_norm: float = 5.0
  weight_decay: float = 1e-3
  sampling_rate: float | None = None
  batch_size: int | None = None
  projection_radius: float = math.inf
  num_seeds: int = 8
  num_checkpoints: int = 10

  def __post_init__(self):
    self._choice("mode", MODES)
    if self.num_steps < 1:
      self._fail("num_steps", self.num_steps, "an integer >= 1")
    self._positive("step_size")
    self._positive("temperature")
    self._positive("clip_norm", allow_inf=True)
    self._nonnegative("weight_decay")
    self._positive("projection_radius", allow_inf=True)
    if self.mode == "poisson":
      q = self.sampling_rate
      if q is None or not 0 < q <= 1:
        self._fail("sampling_rate", q, "a number in (0, 1] when mode = 'poisson'")
    elif self.sampling_rate is not None:
      self._fail("sampling_rate", self.sampling_rate, f"absent unless mode = 'poisson' (mode is {self.mode!r})")
    if self.mode == "shuffled":
      if self.batch_size is None or self.batch_size < 1:
        self._fail("batch_size", self.batch_size, "an integer >= 1 when mode = 'shuffled'")
    elif self.batch_size is not None:
      self._fail("batch_size", self.batch_size, f"absent unless mode = 'shuffled' (mode is {self.mode!r})")
    if self.num_seeds < 1:
      self._fail("num_seeds", self.num_seeds, "an integer >= 1")
    if self.num_checkpoints < 2:
      self._fail("num_checkpoints", self.num_checkpoints, "an integer >= 2")


@dataclasses.dataclass(frozen=True)
class PrivacyConfig(_Section):
  """The ledger and the certificate (THEORY §3, §4).

  Attributes:
    orders: Rényi orders of the ledger; must contain 4 * alpha (the certificate reads P(x, 4α)).
    alpha: order α > 1 of the unlearning certificate.
    epsilon: target Rényi ε of the certificate at order α (must exceed e2).
    lsi_constant: C_LSI of the retain-set chain's stationary law. Absent: derived as 2τ/m for
      ``logistic_regression`` with weight decay m > 0 (certified); required for every other model, where
      it is an assumption and labelled so in the report.
    e1: E₁ of THEORY §4 (0: the "trained to stationarity" assumption).
    e2: E₂ of THEORY §4 (0: the same assumption).
    stride: evaluate per-step costs every ``stride`` steps and count them ``stride`` times (estimate).
    filter_budget: individual Rényi filter budget B (absent: no filter; the realized P is an estimate).
    filter_order: the order α* of the filter (required with ``filter_budget``).
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

  def __post_init__(self):
    if not self.orders or any(not (math.isfinite(a) and a > 1) for a in self.orders):
      self._fail("orders", list(self.orders), "a non-empty list of finite Rényi orders > 1")
    if not (math.isfinite(self.alpha) and self.alpha > 1):
      self._fail("alpha", self.alpha, "a finite order > 1")
    if not any(math.isclose(a, 4 * self.alpha) for a in self.orders):
      raise ConfigError(f"config key 'privacy.orders' must contain 4 * alpha = {4 * self.alpha!r} (the "
                        f"certificate of THEORY §4 reads P(x, 4α)), got {list(self.orders)!r}")
    self._positive("epsilon")
    self._positive("lsi_constant", optional=True)
    self._nonnegative("e1")
    self._nonnegative("e2")
    if self.epsilon <= self.e2:
      self._fail("epsilon", self.epsilon, f"larger than e2 = {self.e2!r} (else no k certifies)")
    if self.stride < 1:
      self._fail("stride", self.stride, "an integer >= 1")
    if (self.filter_budget is None) != (self.filter_order is None):
      raise ConfigError("config keys 'privacy.filter_budget' and 'privacy.filter_order' must be given "
                        f"together, got filter_budget={self.filter_budget!r}, filter_order={self.filter_order!r}")
    if self.filter_budget is not None:
      self._positive("filter_budget")
      if not any(math.isclose(a, self.filter_order) for a in self.orders):
        self._fail("filter_order", self.filter_order, f"one of privacy.orders {list(self.orders)}")


@dataclasses.dataclass(frozen=True)
class ForgetSetsConfig(_Section):
  """Forget-set selection (THEORY §6, harder groups).

  Attributes:
    size: examples per forget set.
    selections: ``"<score>:top"`` (the ``size`` hardest examples by the score), ``"<score>:bottom"``
      (the easiest) or ``"random"``; scores are ``privacy_loss`` or a metric of ``metrics.names``.
      "Hardest" follows each score's direction (high loss, low confidence, ...).
    privacy_loss_bins: additionally, this many quantile bins of privacy loss, one random forget set of
      ``size`` examples from each (0: none).
  """

  _section: typing.ClassVar[str] = "forget_sets"
  size: int = 20
  selections: tuple[str, ...] = ("privacy_loss:top", "privacy_loss:bottom", "random", "el2n:top",
                                 "loss:top", "memorization:top")
  privacy_loss_bins: int = 0

  def __post_init__(self):
    if self.size < 1:
      self._fail("size", self.size, "an integer >= 1")
    if not self.selections:
      self._fail("selections", [], "a non-empty list")
    allowed = ("random",) + tuple(f"{s}:{k}" for s in SELECTION_SCORES for k in SELECTION_KINDS)
    for sel in self.selections:
      self._choice("selections", allowed, sel)
    if len(set(self.selections)) != len(self.selections):
      self._fail("selections", list(self.selections), "a list without repeats")
    if self.privacy_loss_bins < 0:
      self._fail("privacy_loss_bins", self.privacy_loss_bins, "an integer >= 0")


@dataclasses.dataclass(frozen=True)
class UnlearningConfig(_Section):
  """Unlearning by fine-tuning on the retain set, and the retrained oracles (THEORY §4, §6).

  Attributes:
    methods: subset of ``UNLEARNING_METHODS`` (noisy SGLD fine-tuning, noise-free SGD, L1-sparse).
    step_grid: increasing step counts at which the unlearning parameters are recorded (0 allowed).
    num_seeds: R, the oracle seeds (and unlearned chains compared with them); >= 4 (the noise floor
      splits the oracle seeds in two halves).
    step_size: fine-tuning η (absent: training's).
    temperature: SGLD fine-tuning τ (absent: training's); ``sgd`` and ``l1_sparse`` use τ = 0.
    l1_strength: initial γ of the L1-sparse method (decays linearly to 0).
    retrain_steps: oracle training steps (absent: training's ``num_steps``).
  """

  _section: typing.ClassVar[str] = "unlearning"
  methods: tuple[str, ...] = ("sgld", "sgd", "l1_sparse")
  step_grid: tuple[int, ...] = (0, 50, 100, 200, 400, 800)
  num_seeds: int = 16
  step_size: float | None = None
  temperature: float | None = None
  l1_strength: float = 5e-4
  retrain_steps: int | None = None

  def __post_init__(self):
    if not self.methods:
      self._fail("methods", [], f"a non-empty subset of {list(UNLEARNING_METHODS)}")
    for m in self.methods:
      self._choice("methods", UNLEARNING_METHODS, m)
    if len(set(self.methods)) != len(self.methods):
      self._fail("methods", list(self.methods), "a list without repeats")
    grid = list(self.step_grid)
    if not grid or grid[0] < 0 or any(b <= a for a, b in zip(grid, grid[1:])):
      self._fail("step_grid", grid, "a non-empty strictly increasing list of integers >= 0")
    if self.num_seeds < 4:
      self._fail("num_seeds", self.num_seeds, "an integer >= 4 (the noise floor splits the oracle seeds)")
    self._positive("step_size", optional=True)
    self._positive("temperature", optional=True)
    self._nonnegative("l1_strength")
    if self.retrain_steps is not None and self.retrain_steps < 1:
      self._fail("retrain_steps", self.retrain_steps, "an integer >= 1")


@dataclasses.dataclass(frozen=True)
class EvaluationConfig(_Section):
  """Empirical evaluation (THEORY §6).

  Attributes:
    barrier_points: points of the λ grid of the loss barrier (>= 3).
    membership: compute the per-example membership ε lower bound of the forget sets.
    delta: δ of the membership ε and of the (ε, δ) form of the certificate, in (0, 1).
    floor_quantile: quantile of the oracle-vs-oracle noise floor the "unlearned" criterion uses.
  """

  _section: typing.ClassVar[str] = "evaluation"
  barrier_points: int = 11
  membership: bool = True
  delta: float = 1e-5
  floor_quantile: float = 0.95

  def __post_init__(self):
    if self.barrier_points < 3:
      self._fail("barrier_points", self.barrier_points, "an integer >= 3")
    if not 0 < self.delta < 1:
      self._fail("delta", self.delta, "a number in (0, 1)")
    if not 0 < self.floor_quantile <= 1:
      self._fail("floor_quantile", self.floor_quantile, "a number in (0, 1]")


@dataclasses.dataclass(frozen=True)
class MetricsConfig(_Section):
  """Difficulty metrics (THEORY §6).

  Attributes:
    names: subset of ``METRICS`` computed for every training example.
    early_fraction: fraction of training at which EL2N and GraNd are taken, in (0, 1].
    memorization_models: R models on random halves for Feldman-Zhang memorization (>= 2).
    memorization_steps: their training steps (absent: training's ``num_steps``).
  """

  _section: typing.ClassVar[str] = "metrics"
  names: tuple[str, ...] = METRICS
  early_fraction: float = 0.1
  memorization_models: int = 8
  memorization_steps: int | None = None

  def __post_init__(self):
    for m in self.names:
      self._choice("names", METRICS, m)
    if len(set(self.names)) != len(self.names):
      self._fail("names", list(self.names), "a list without repeats")
    if not 0 < self.early_fraction <= 1:
      self._fail("early_fraction", self.early_fraction, "a number in (0, 1]")
    if self.memorization_models < 2:
      self._fail("memorization_models", self.memorization_models, "an integer >= 2")
    if self.memorization_steps is not None and self.memorization_steps < 1:
      self._fail("memorization_steps", self.memorization_steps, "an integer >= 1")


_SECTIONS = {
    "data": DataConfig, "model": ModelConfig, "training": TrainingConfig, "privacy": PrivacyConfig,
    "forget_sets": ForgetSetsConfig, "unlearning": UnlearningConfig, "evaluation": EvaluationConfig,
    "metrics": MetricsConfig,
}


def _type_name(tp: Any) -> str:
  origin = typing.get_origin(tp)
  if origin in (typing.Union, types.UnionType):
    return " or ".join(_type_name(a) for a in typing.get_args(tp))
  if origin is tuple:
    return f"list of {_type_name(typing.get_args(tp)[0])}"
  if tp is type(None):
    return "absent"
  return {float: "number", int: "integer", str: "string", bool: "boolean (true/false)"}.get(tp, str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
  """Returns ``value`` converted to the annotated type ``tp`` or raises ConfigError naming ``key``."""
  origin = typing.get_origin(tp)
  if origin in (typing.Union, types.UnionType):
    args = typing.get_args(tp)
    if value is None and type(None) in args:
      return None
    for arg in args:
      if arg is type(None):
        continue
      try:
        return _coerce(key, value, arg)
      except ConfigError:
        pass
  elif origin is tuple:
    (item_tp, _) = typing.get_args(tp)
    if isinstance(value, (list, tuple)):
      return tuple(_coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value))
  elif tp is float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
    if isinstance(value, str) and value.strip().lower() in ("inf", "+inf", "infinity"):
      return math.inf
  elif tp is int:
    if isinstance(value, int) and not isinstance(value, bool):
      return value
    if isinstance(value, float) and value.is_integer():
      return int(value)
  elif tp is bool:
    if isinstance(value, bool):
      return value
  elif tp is str:
    if isinstance(value, str):
      return value
  name = _type_name(tp)
  article = "an" if name[0] in "aeiou" else "a"
  raise ConfigError(f"config key {key!r} must be {article} {name}, got {value!r} "
                    f"of type {type(value).__name__}")


def _unknown_key(key: str, section: str, allowed: list[str]) -> ConfigError:
  close = difflib.get_close_matches(key, allowed, n=1)
  hint = f" (did you mean {close[0]!r}?)" if close else ""
  where = f"in section [{section}]" if section else "at the top level"
  return ConfigError(f"unknown config key {_key(section, key)!r} {where}{hint}. Allowed keys: {allowed}")


def _section_from_dict(cls: type, section: str, raw: Any) -> Any:
  if not isinstance(raw, Mapping):
    raise ConfigError(f"config key {section!r} must be a table/object of settings, got {raw!r}")
  hints = typing.get_type_hints(cls)
  fields = [f.name for f in dataclasses.fields(cls)]
  kwargs = {}
  for k, v in raw.items():
    if k not in fields:
      raise _unknown_key(str(k), section, fields)
    kwargs[k] = _coerce(_key(section, k), v, hints[k])
  return cls(**kwargs)


def _to_plain(value: Any) -> Any:
  if isinstance(value, tuple):
    return [_to_plain(v) for v in value]
  if isinstance(value, float) and not math.isfinite(value):
    return "inf" if value > 0 else "-inf"
  return value


@dataclasses.dataclass(frozen=True)
class Config:
  """Every knob of the study; see the section classes for each key.

  Attributes:
    seed: the master seed (every key is derived from it with ``fold_in``).
    out_dir: output directory of the report.
    devices: number of devices to shard the per-example work over (absent: one device; issue 9).
    vmap_seeds: run the seeds of each driver in one vmapped call (best on accelerators) instead of one
      call per seed (best on CPUs, where batched matrix products are slow); the results are the same.
    data, model, training, privacy, forget_sets, unlearning, evaluation, metrics: the sections.

  Examples:
    >>> cfg = Config.from_dict({"training": {"step_size": 0.2}, "seed": 3})
    >>> cfg.training.step_size, cfg.seed, cfg.model.name
    (0.2, 3, 'mlp')
    >>> try:
    ...   Config.from_dict({"training": {"stepsize": 0.2}})
    ... except ConfigError as e:
    ...   print(str(e).split(" Allowed")[0])
    unknown config key 'training.stepsize' in section [training] (did you mean 'step_size'?).
  """

  seed: int = 0
  out_dir: str = "runs/experiment"
  devices: int | None = None
  vmap_seeds: bool = False
  data: DataConfig = DataConfig()
  model: ModelConfig = ModelConfig()
  training: TrainingConfig = TrainingConfig()
  privacy: PrivacyConfig = PrivacyConfig()
  forget_sets: ForgetSetsConfig = ForgetSetsConfig()
  unlearning: UnlearningConfig = UnlearningConfig()
  evaluation: EvaluationConfig = EvaluationConfig()
  metrics: MetricsConfig = MetricsConfig()

  def __post_init__(self):
    if self.seed < 0:
      raise ConfigError(f"config key 'seed' must be an integer >= 0, got {self.seed!r}")
    if self.devices is not None and self.devices < 1:
      raise ConfigError(f"config key 'devices' must be an integer >= 1, got {self.devices!r}")
    for sel in self.forget_sets.selections:
      score = sel.split(":")[0]
      if score in METRICS and score not in self.metrics.names:
        raise ConfigError(f"config key 'forget_sets.selections' has {sel!r}, but metric {score!r} is not "
                          f"computed: add it to 'metrics.names' (now {list(self.metrics.names)})")

  # -- construction --------------------------------------------------------------------------------

  @classmethod
  def from_dict(cls, raw: Mapping[str, Any]) -> "Config":
    """Builds a config from nested mappings; unknown keys / wrong types raise :class:`ConfigError`."""
    if not isinstance(raw, Mapping):
      raise ConfigError(f"a config must be a table/object of settings, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in raw.items():
      if k not in fields:
        raise _unknown_key(str(k), "", fields)
      if k in _SECTIONS:
        kwargs[k] = _section_from_dict(_SECTIONS[k], k, v)
      else:
        kwargs[k] = _coerce(k, v, hints[k])
    return cls(**kwargs)

  @classmethod
  def from_file(cls, path: str | os.PathLike) -> "Config":
    """Reads a TOML (``.toml``) or JSON (``.json``) config file.

    Raises:
      ConfigError: the file is missing, cannot be parsed, or holds a bad key or value.
    """
    path = pathlib.Path(path)
    if not path.is_file():
      raise ConfigError(f"config file {str(path)!r} does not exist or is not a file")
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
      raise ConfigError(f"config file {str(path)!r} must end in .toml or .json, got {suffix!r}")
    try:
      text = path.read_text(encoding="utf-8")
      if suffix == ".toml":
        import tomllib  # pylint: disable=import-outside-toplevel
        raw = tomllib.loads(text)
      else:
        raw = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
      raise ConfigError(f"config file {str(path)!r} is not valid {suffix[1:].upper()}: {e}") from e
    return cls.from_dict(raw)

  def to_dict(self) -> dict[str, Any]:
    """The config as plain nested dicts (lists for tuples, ``"inf"`` for infinities); JSON-ready."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      if f.name in _SECTIONS:
        out[f.name] = {g.name: _to_plain(getattr(value, g.name)) for g in dataclasses.fields(value)
                       if getattr(value, g.name) is not None}
      elif value is not None:
        out[f.name] = _to_plain(value)
    return out

  def replace(self, **overrides: Any) -> "Config":
    """A copy with top-level keys or ``section__key`` entries replaced (validated again).

    Examples:
      >>> Config().replace(seed=5, training__num_steps=10).training.num_steps
      10
    """
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for k, v in overrides.items():
      if "__" in k:
        sec, name = k.split("__", 1)
        sections.setdefault(sec, {})[name] = v
      else:
        top[k] = v
    raw = self.to_dict()
    for k, v in top.items():
      raw[k] = v
    for sec, items in sections.items():
      if sec not in _SECTIONS:
        raise _unknown_key(sec, "", [f.name for f in dataclasses.fields(self)])
      raw[sec].update(items)
    for k in [k for k, v in raw.items() if v is None]:
      del raw[k]
    for sec in _SECTIONS:
      if isinstance(raw.get(sec), dict):
        raw[sec] = {k: v for k, v in raw[sec].items() if v is not None}
    return Config.from_dict(raw)


def demo_config() -> Config:
  """The ``unlearn-jax demo`` configuration (digits, MLP); ``configs/demo.toml`` mirrors it.

  Examples:
    >>> demo_config().data.name
    'digits'
  """
  return Config.from_dict(_DEMO)


_DEMO: dict[str, Any] = {
    "seed": 0,
    "out_dir": "runs/demo",
    "vmap_seeds": False,
    "data": {"name": "digits"},
    "model": {"name": "mlp", "hidden": [64]},
    "training": {"mode": "full_batch", "num_steps": 600, "step_size": 0.5, "temperature": 1e-5,
                 "clip_norm": 5.0, "weight_decay": 1e-3, "num_seeds": 4, "num_checkpoints": 10},
    "privacy": {"orders": [2.0, 4.0, 8.0, 16.0, 32.0, 64.0], "alpha": 2.0, "epsilon": 1.0,
                "lsi_constant": 0.02, "e1": 0.0, "e2": 0.0},
    "forget_sets": {"size": 20, "selections": ["privacy_loss:top", "privacy_loss:bottom", "random",
                                               "el2n:top", "memorization:top"]},
    "unlearning": {"methods": ["sgld", "sgd", "l1_sparse"], "step_grid": [0, 25, 50, 100, 200, 400],
                   "num_seeds": 8},
    "evaluation": {"barrier_points": 11, "membership": True, "delta": 1e-5},
    "metrics": {"early_fraction": 0.1, "memorization_models": 8},
}


# ----------------------------------------------------------------------------------------------------
# Errors of the pipeline
# ----------------------------------------------------------------------------------------------------


class OutputDirError(OSError):
  """The output directory cannot be created or written, or another run holds its lock."""


class DataMissingError(FileNotFoundError):
  """A data set that is read from files has no (existing) data directory."""


# ----------------------------------------------------------------------------------------------------
# Report writers
# ----------------------------------------------------------------------------------------------------


def _fmt_float(value: Any) -> str:
  """Shortest round-trip text of a float; ``inf`` / ``-inf`` / ``nan`` spelled out."""
  v = float(value)
  if math.isnan(v):
    return "nan"
  if math.isinf(v):
    return "inf" if v > 0 else "-inf"
  if v.is_integer() and abs(v) < 1e15:
    return str(int(v))
  return repr(v)


def write_per_example_csv(path: str | os.PathLike, labels: Any, privacy_loss: Any, certified_steps: Any,
                          metrics: Mapping[str, Any] | None = None) -> pathlib.Path:
  """Writes ``per_example.csv``: ``index,label,privacy_loss,certified_steps,`` then one column per metric.

  Floats are written in their shortest round-trip form (``inf``/``nan`` spelled out), so equal inputs
  give byte-identical files.

  Args:
    path: output file.
    labels: (n,) integer labels.
    privacy_loss: (n,) P(x, 4α).
    certified_steps: (n,) certified k*(x) (inf allowed).
    metrics: name -> (n,) values, in column order.

  Returns:
    The path written.

  Examples:
    >>> import tempfile, pathlib
    >>> p = write_per_example_csv(pathlib.Path(tempfile.mkdtemp()) / "e.csv", [0, 1], [0.5, 2.0],
    ...                           [10, float("inf")], {"el2n": [0.1, 0.25]})
    >>> print(p.read_text().strip())
    index,label,privacy_loss,certified_steps,el2n
    0,0,0.5,10,0.1
    1,1,2,inf,0.25
  """
  import numpy as np  # pylint: disable=import-outside-toplevel

  metrics = dict(metrics or {})
  labels = np.asarray(labels)
  columns = [np.asarray(privacy_loss, dtype=np.float64), np.asarray(certified_steps, dtype=np.float64)]
  columns += [np.asarray(v, dtype=np.float64) for v in metrics.values()]
  n = labels.shape[0]
  for name, col in zip(["privacy_loss", "certified_steps", *metrics], columns):
    if col.shape != (n,):
      raise ValueError(f"{name} must have shape ({n},) like labels, got {col.shape}")
  lines = [",".join(["index", "label", "privacy_loss", "certified_steps", *metrics])]
  for i in range(n):
    lines.append(",".join([str(i), str(int(labels[i]))] + [_fmt_float(c[i]) for c in columns]))
  path = pathlib.Path(path)
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return path


def _jsonable(value: Any) -> Any:
  """Converts arrays / NumPy scalars / non-finite floats to JSON-ready Python values."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if hasattr(value, "shape") and hasattr(value, "dtype"):
    arr = np.asarray(value)
    if arr.ndim == 0:
      return _jsonable(arr.item())
    return [_jsonable(v) for v in arr.tolist()]
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    v = float(value)
    if math.isnan(v):
      return "nan"
    if math.isinf(v):
      return "inf" if v > 0 else "-inf"
    return v
  return value


def write_report_json(path: str | os.PathLike, report: Mapping[str, Any]) -> pathlib.Path:
  """Writes ``report.json`` (indented, keys in insertion order, ``"inf"``/``"nan"`` as strings).

  Examples:
    >>> import tempfile, pathlib, json
    >>> p = write_report_json(pathlib.Path(tempfile.mkdtemp()) / "r.json", {"k": float("inf"), "a": [1.5]})
    >>> json.loads(p.read_text())
    {'k': 'inf', 'a': [1.5]}
  """
  path = pathlib.Path(path)
  path.write_text(json.dumps(_jsonable(report), indent=2, allow_nan=False) + "\n", encoding="utf-8")
  return path


def _md_num(value: Any, digits: int = 3) -> str:
  if value is None:
    return "—"
  if isinstance(value, str):
    return value
  v = float(value)
  if math.isnan(v):
    return "nan"
  if math.isinf(v):
    return "∞" if v > 0 else "−∞"
  if v.is_integer() and abs(v) < 1e9:
    return str(int(v))
  return f"{v:.{digits}g}"


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  for row in rows:
    lines.append("| " + " | ".join(_md_num(c) if not isinstance(c, str) else c for c in row) + " |")
  return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# Pipeline
# ----------------------------------------------------------------------------------------------------


def _prepare_out_dir(out_dir: str | os.PathLike) -> pathlib.Path:
  out = pathlib.Path(out_dir)
  try:
    out.mkdir(parents=True, exist_ok=True)
    probe = out / ".write_test"
    probe.write_text("ok", encoding="utf-8")
    probe.unlink()
  except OSError as e:
    raise OutputDirError(f"output directory {str(out)!r} cannot be created or written: {e}") from e
  return out


def _stage(progress: bool, msg: str) -> None:
  if progress:
    import sys  # pylint: disable=import-outside-toplevel
    import tqdm  # pylint: disable=import-outside-toplevel
    tqdm.tqdm.write(f"[unlearn-jax] {msg}", file=sys.stderr)


def _load_dataset(cfg: DataConfig, seed: int):
  """Loads the configured data set; file-based sets raise DataMissingError without a directory."""
  from unlearn_jax import data  # pylint: disable=import-outside-toplevel

  sizes = {"n_train": cfg.num_train, "n_test": cfg.num_test}
  if cfg.name == "digits":
    return data.load_digits(seed=seed, **sizes)
  if cfg.name == "mnist1d":
    return data.make_mnist1d(seed=42 + seed, **sizes)
  if cfg.name == "gaussian_mixture":
    n = (cfg.num_train or 800) + (cfg.num_test or 200)
    ds = data.make_gaussian_mixture(n, 16, 4, seed=seed, test_fraction=(cfg.num_test or 200) / n)
    return ds
  what = {"cifar10": "the CIFAR-10 binary batches (data_batch_1.bin .. data_batch_5.bin, test_batch.bin)",
          "svhn": "the SVHN cropped-digits files train_32x32.mat and test_32x32.mat"}[cfg.name]
  if cfg.data_dir is None:
    raise DataMissingError(f"data set {cfg.name!r} is read from local files and config key 'data.data_dir' "
                           f"is not set: pass --data-dir DIR (or set data.data_dir) to a directory holding "
                           f"{what}; nothing is downloaded")
  directory = pathlib.Path(cfg.data_dir).expanduser()
  if not directory.is_dir():
    raise DataMissingError(f"data directory {str(directory)!r} (config key 'data.data_dir') does not exist; "
                           f"it must hold {what}")
  loader = data.load_cifar10 if cfg.name == "cifar10" else data.load_svhn
  try:
    return loader(directory, seed=seed, **sizes)
  except FileNotFoundError as e:
    raise DataMissingError(f"{e} (data.data_dir = {str(directory)!r} must hold {what})") from e


def _build_model(cfg: ModelConfig, num_classes: int):
  from unlearn_jax import models  # pylint: disable=import-outside-toplevel

  if cfg.name == "mlp":
    return models.mlp(hidden_sizes=tuple(cfg.hidden), num_classes=num_classes)
  if cfg.name == "logistic_regression":
    return models.logistic_regression(num_classes)
  if cfg.name == "small_cnn":
    return models.small_cnn(num_classes)
  return models.resnet18(num_classes)


_MODEL_CACHE: dict[Any, Any] = {}


def _model_and_loss(cfg: ModelConfig, num_classes: int):
  """The model and its one-example loss, cached per process so that the drivers' compiled programs
  (cached per ``loss_fn`` object) are reused by later runs of the same model."""
  from unlearn_jax import models  # pylint: disable=import-outside-toplevel

  key = (cfg.name, tuple(cfg.hidden), num_classes)
  if key not in _MODEL_CACHE:
    model = _build_model(cfg, num_classes)
    _MODEL_CACHE[key] = (model, models.cross_entropy_loss_fn(model.apply_fn))
  return _MODEL_CACHE[key]


def _init_fn(cfg: ModelConfig, num_classes: int, example_shape: tuple[int, ...], dtype: Any):
  """``init_key -> params``, cached per process like :func:`_model_and_loss` (flax only needs the shape)."""
  key = ("init", cfg.name, tuple(cfg.hidden), num_classes, example_shape, str(dtype))
  if key not in _MODEL_CACHE:
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    model, _ = _model_and_loss(cfg, num_classes)
    _MODEL_CACHE[key] = lambda k: model.init_fn(k, jnp.zeros(example_shape, dtype))
  return _MODEL_CACHE[key]


def _final_metrics(apply_fn, params, x, y):
  """loss / confidence / margin of each example, averaged over the seeds of ``params`` (S, ...)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from unlearn_jax.evaluate import metrics  # pylint: disable=import-outside-toplevel

  def one(p):
    return {"loss": metrics.per_example_loss(apply_fn, p, x, y), "confidence": metrics.confidence(apply_fn, p, x, y),
            "margin": metrics.margin(apply_fn, p, x, y)}
  return jax.tree.map(lambda v: jnp.mean(v, axis=0), jax.lax.map(one, params))


def _along_metrics(apply_fn, ckpts, x, y):
  """Forgetting events and C-proxy over the checkpoints ``ckpts`` (G, S, ...), averaged over seeds."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from unlearn_jax.evaluate import metrics  # pylint: disable=import-outside-toplevel

  num_ckpts = jax.tree.leaves(ckpts)[0].shape[0]

  def one(seq):
    correct = metrics.correctness_along(apply_fn, seq, x, y)
    return {"forgetting": metrics.forgetting_events(correct, never_learned=float(num_ckpts)).astype(jnp.float32),
            "cproxy": metrics.c_proxy(metrics.confidence_along(apply_fn, seq, x, y))}
  per_seed = jax.lax.map(one, jax.tree.map(lambda leaf: jnp.swapaxes(leaf, 0, 1), ckpts))
  return jax.tree.map(lambda v: jnp.mean(v, axis=0), per_seed)


def _evaluate_oracle(apply_fn, loss_fn, num_points, oracle, xf, yf, key):
  """Oracle scores (R, m), the noise floor, the oracle-vs-oracle barrier and the forget accuracy."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from unlearn_jax import evaluate as evaluation  # pylint: disable=import-outside-toplevel

  oracle_scores = evaluation.logit_confidence(apply_fn, oracle, xf, yf)
  floor = evaluation.noise_floor(oracle_scores, key, num_splits=8)
  pair = jax.tree.map(lambda leaf: jnp.roll(leaf, 1, axis=0), oracle)
  oo_barrier, _ = evaluation.barriers_along(loss_fn, jax.tree.map(lambda leaf: leaf[None], oracle), pair, (xf, yf),
                                            num_points=num_points, paired_seeds=True)
  acc_o = evaluation.accuracy_and_loss(apply_fn, oracle, xf, yf, seed_axis=True)[0]
  return oracle_scores, floor, jnp.mean(oo_barrier), jnp.mean(acc_o)


def _evaluate_method(apply_fn, loss_fn, num_points, grid, percentile, membership, delta,
                     recorded, oracle, oracle_scores, floor, xf, yf):
  """Empirical steps, distances, barriers along the grid, forget accuracy and membership ε of one run."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from unlearn_jax import evaluate as evaluation  # pylint: disable=import-outside-toplevel

  scores_g = evaluation.scores_along(apply_fn, recorded, xf, yf)                     # (G, R, m)
  steps_res = evaluation.empirical_steps_to_unlearn(np.asarray(grid), scores_g, oracle_scores, floor=floor,
                                                    percentile=percentile)
  barriers, _ = evaluation.barriers_along(loss_fn, recorded, oracle, (xf, yf), num_points=num_points,
                                          paired_seeds=True)
  last = jax.tree.map(lambda leaf: leaf[-1], recorded)
  acc_f = evaluation.accuracy_and_loss(apply_fn, last, xf, yf, seed_axis=True)[0]
  out = {"steps": steps_res.steps, "median": steps_res.median_distances, "threshold": steps_res.threshold,
         "barriers": jnp.mean(barriers, axis=1), "acc_f": jnp.mean(acc_f)}
  if membership:
    out["membership_lower_bound"] = evaluation.membership_lower_bound(scores_g[-1], oracle_scores, delta=delta)
    out["membership_point_estimate"] = evaluation.membership_epsilon(scores_g[-1], oracle_scores, delta=delta)
  return out


def _el2n(apply_fn, params, x, y):
  from unlearn_jax.evaluate import metrics  # pylint: disable=import-outside-toplevel
  return metrics.el2n(apply_fn, params, x, y)


def _grand(loss_fn, params, data):
  from unlearn_jax.evaluate import metrics  # pylint: disable=import-outside-toplevel
  return metrics.grand(loss_fn, params, data)


def _correctness(apply_fn, params, x, y):
  from unlearn_jax.evaluate import metrics  # pylint: disable=import-outside-toplevel
  return metrics.correctness(apply_fn, params, x, y)


_JITTED_SPECS = {
    "final_metrics": (_final_metrics, (0,)),
    "along_metrics": (_along_metrics, (0,)),
    "evaluate_oracle": (_evaluate_oracle, (0, 1, 2)),
    "evaluate_method": (_evaluate_method, (0, 1, 2, 3, 4, 5, 6)),
    "el2n": (_el2n, (0,)),
    "grand": (_grand, (0,)),
    "correctness": (_correctness, (0,)),
}


def _jitted(name: str):
  """Module-level jitted helpers (static: the functions and settings), compiled once per process."""
  if name not in _JIT_CACHE:
    import jax  # pylint: disable=import-outside-toplevel
    fn, static = _JITTED_SPECS[name]
    _JIT_CACHE[name] = jax.jit(fn, static_argnums=static)
  return _JIT_CACHE[name]


def _save_params_npz(path: pathlib.Path, params: Any) -> None:
  """Saves a params pytree's leaves (in ``jax.tree.leaves`` order) as ``leaf_0``, ``leaf_1``, ..."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  leaves = jax.tree.leaves(params)
  np.savez(path, **{f"leaf_{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)})


def _index_of(orders: tuple[float, ...], value: float) -> int:
  for i, a in enumerate(orders):
    if math.isclose(a, value):
      return i
  raise ValueError(f"order {value} not in {orders}")


def _oriented(name: str, values: Any) -> Any:
  return DIFFICULTY_SIGN[name] * values


def _finite_for_ranking(values: Any) -> Any:
  """inf -> a finite number above every finite value (ranks are unchanged); for Spearman."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  v = np.asarray(values, dtype=np.float64)
  finite = v[np.isfinite(v)]
  top = (np.max(np.abs(finite)) if finite.size else 1.0) * 10 + 1
  return np.where(np.isposinf(v), top, np.where(np.isneginf(v), -top, v))


def _spearman(a: Any, b: Any) -> float:
  """Spearman of two vectors over the entries where both are not NaN (metrics.spearman)."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  from unlearn_jax.evaluate import metrics  # pylint: disable=import-outside-toplevel

  a = _finite_for_ranking(a)
  b = _finite_for_ranking(b)
  ok = ~(np.isnan(a) | np.isnan(b))
  if ok.sum() < 3 or np.all(a[ok] == a[ok][0]) or np.all(b[ok] == b[ok][0]):
    return float("nan")
  return float(_jit_spearman()(a[ok], b[ok]))


_JIT_CACHE: dict[str, Any] = {}


def _jit_spearman():
  if "spearman" not in _JIT_CACHE:
    import jax  # pylint: disable=import-outside-toplevel

    from unlearn_jax.evaluate import statistics  # pylint: disable=import-outside-toplevel
    _JIT_CACHE["spearman"] = jax.jit(statistics.spearman)
  return _JIT_CACHE["spearman"]


def run(config: Config, *, progress: bool = False) -> dict[str, Any]:
  """Runs the whole study of ``config`` and writes the report to ``config.out_dir``.

  Stages (module docstring): train with the ledger, certify every example, select forget sets, unlearn
  each with every method against retrained oracles, correlate, write ``report.json``, ``report.md``,
  ``per_example.csv``, the figures (when matplotlib is installed) and ``params/*.npz``.

  The same config and seed give byte-identical ``per_example.csv`` and ``report.json`` except the
  ``created`` timestamp (wall times go to ``timings.json``).

  Args:
    config: a :class:`Config`.
    progress: show progress bars and stage messages on stderr.

  Returns:
    The report (the content of ``report.json``).

  Raises:
    ConfigError: a setting that only the run can check (e.g. a missing ``privacy.lsi_constant`` for a
      non-convex model).
    OutputDirError: the output directory cannot be written or another run holds it.
    DataMissingError: a file-based data set has no data directory.
    KeyboardInterrupt: SIGINT (``loops.Interrupted``); training saved a checkpoint first.

  Examples:
    >>> import tempfile
    >>> cfg = Config.from_dict({"out_dir": tempfile.mkdtemp(), "data": {"num_train": 60, "num_test": 30},
    ...     "model": {"hidden": [8]}, "training": {"num_steps": 20, "num_seeds": 2, "num_checkpoints": 2},
    ...     "privacy": {"lsi_constant": 0.02},
    ...     "forget_sets": {"size": 4, "selections": ["privacy_loss:top", "random"]},
    ...     "unlearning": {"methods": ["sgld"], "step_grid": [0, 5], "num_seeds": 4, "retrain_steps": 20},
    ...     "metrics": {"names": ["loss", "el2n"]}})
    >>> report = run(cfg)  # doctest: +SKIP
    >>> [fs["selection"] for fs in report["forget_sets"]]  # doctest: +SKIP
    ['privacy_loss:top', 'random']
  """
  import time  # pylint: disable=import-outside-toplevel

  from unlearn_jax.runtime import checkpoint  # pylint: disable=import-outside-toplevel

  if not isinstance(config, Config):
    raise TypeError(f"config must be an unlearn_jax.experiment.Config, got {type(config).__name__}")
  out = _prepare_out_dir(config.out_dir)
  try:
    lock = checkpoint.RunLock(out)
    lock.acquire()
  except checkpoint.LockError as e:
    raise OutputDirError(str(e)) from e
  try:
    timings: dict[str, float] = {}
    start = time.perf_counter()
    report = _run_locked(config, out, progress, timings)
    timings["total"] = time.perf_counter() - start
    (out / "timings.json").write_text(json.dumps({k: round(v, 3) for k, v in timings.items()}, indent=2) + "\n",
                                      encoding="utf-8")
    write_report_md(out / "report.md", report, timings)
    return report
  finally:
    lock.release()


def _stack_trees(trees: list[Any]) -> Any:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _seeded(driver: Any, *, num_seeds: int, key: Any, vmap_seeds: bool, per_seed_params: Any = None,
            params_arg: str | None = None, pick: Any, desc: str = "", **kwargs: Any) -> Any:
  """Runs ``driver`` for ``num_seeds`` chains: one vmapped call, or one call per seed (same results).

  ``loops`` documents that seed r of a ``num_seeds=R`` call equals a single-chain call with
  ``key=fold_in(key, r)``; on CPUs the per-seed loop is faster (batched matmuls are slow there).
  ``pick(result)`` extracts the arrays to keep; they are stacked along a new leading seed axis.
  """
  import jax  # pylint: disable=import-outside-toplevel

  if vmap_seeds:
    if per_seed_params is not None:
      kwargs[params_arg] = per_seed_params
      kwargs["params_per_seed"] = True
    return pick(driver(key=key, num_seeds=num_seeds, **kwargs), True)
  outs = []
  base_dir = kwargs.pop("checkpoint_dir", None)
  seeds = range(num_seeds)
  if kwargs.get("progress") and num_seeds > 1:
    import tqdm  # pylint: disable=import-outside-toplevel
    seeds = tqdm.tqdm(seeds, desc=f"{desc} ({num_seeds} seeds)", leave=False, unit="seed")
    kwargs["progress"] = False
  for r in seeds:
    if base_dir is not None:
      kwargs["checkpoint_dir"] = os.path.join(base_dir, f"seed_{r}")
    if per_seed_params is not None:
      kwargs[params_arg] = jax.tree.map(lambda leaf, r=r: leaf[r], per_seed_params)
    outs.append(pick(driver(key=jax.random.fold_in(key, r), num_seeds=None, **kwargs), False))
  return _stack_trees(outs)


def _run_locked(config: Config, out: pathlib.Path, progress: bool, timings: dict[str, float]) -> dict[str, Any]:
  import datetime  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from unlearn_jax import accounting, models  # pylint: disable=import-outside-toplevel
  from unlearn_jax import evaluate as evaluation  # pylint: disable=import-outside-toplevel
  from unlearn_jax.evaluate import metrics, selection  # pylint: disable=import-outside-toplevel
  from unlearn_jax.certify import bounds  # pylint: disable=import-outside-toplevel
  from unlearn_jax import runtime as loops  # pylint: disable=import-outside-toplevel

  tr, pv, fc, uc, ec, mc = (config.training, config.privacy, config.forget_sets, config.unlearning,
                            config.evaluation, config.metrics)
  vmap_seeds = config.vmap_seeds
  clock = time.perf_counter()

  def tick(name: str) -> None:
    nonlocal clock
    now = time.perf_counter()
    timings[name] = timings.get(name, 0.0) + now - clock
    clock = now

  convex = config.model.name == "logistic_regression" and tr.weight_decay > 0
  if pv.lsi_constant is None and not convex:
    tau = uc.temperature if uc.temperature is not None else tr.temperature
    raise ConfigError(
        f"config key 'privacy.lsi_constant' is required for model {config.model.name!r}: its objective is not "
        f"strongly convex, so C_LSI is not known and the certificate must rest on an assumed value (e.g. "
        f"2*temperature/weight_decay = {2 * tau / max(tr.weight_decay, 1e-300):.3g}, what an m-strongly "
        f"convex objective would give)")
  root = jax.random.key(config.seed)
  keys = {name: jax.random.fold_in(root, i) for i, name in enumerate(
      ["train", "oracle", "unlearn", "select", "floor", "memorization"])}

  # ---- data and model --------------------------------------------------------------------------------
  _stage(progress, f"loading {config.data.name}")
  ds = _load_dataset(config.data, config.seed)
  x_train, y_train = np.asarray(ds.x_train), np.asarray(ds.y_train)
  x_test, y_test = np.asarray(ds.x_test), np.asarray(ds.y_test)
  if config.model.name in ("mlp", "logistic_regression") and x_train.ndim > 2:
    x_train = x_train.reshape(x_train.shape[0], -1)
    x_test = x_test.reshape(x_test.shape[0], -1)
  n = x_train.shape[0]
  if fc.size >= n // 2:
    raise ConfigError(f"config key 'forget_sets.size' must be below half the training set ({n // 2}), "
                      f"got {fc.size}")
  model, loss_fn = _model_and_loss(config.model, int(ds.num_classes))
  x, y = jnp.asarray(x_train), jnp.asarray(y_train, dtype=jnp.int32)
  xt, yt = jnp.asarray(x_test), jnp.asarray(y_test, dtype=jnp.int32)
  data = (x, y)
  train_data, pad_mask = data, None
  if config.devices is not None and config.devices > 1:
    from unlearn_jax.runtime import distributed  # pylint: disable=import-outside-toplevel
    if jax.device_count() < config.devices:
      raise ConfigError(f"config key 'devices' (--devices) asks for {config.devices} devices, but only "
                        f"{jax.device_count()} {jax.default_backend()} device(s) are visible (on CPU, force N with "
                        f"XLA_FLAGS=--xla_force_host_platform_device_count=N)")
    mesh = distributed.make_mesh(config.devices)
    padded, pad_mask = distributed.pad_to_multiple(data, distributed.data_axis_size(mesh))
    train_data = distributed.shard_data(padded, mesh)
  n_pad = int(jax.tree.leaves(train_data)[0].shape[0])

  def as_mask(keep: Any) -> Any:
    """(n,) 0/1 over the real examples -> (n_pad,) mask with the padding rows off."""
    keep = jnp.asarray(keep, jnp.float32)
    return keep if n_pad == n else jnp.concatenate([keep, jnp.zeros((n_pad - n,), jnp.float32)])

  init_fn = _init_fn(config.model, int(ds.num_classes), tuple(x.shape[1:]), x.dtype)
  apply_fn = model.apply_fn
  radius = None if math.isinf(tr.projection_radius) else tr.projection_radius
  clip = None if math.isinf(tr.clip_norm) else tr.clip_norm
  sgld_kwargs: dict[str, Any] = {"mode": tr.mode, "weight_decay": tr.weight_decay, "projection_radius": radius}
  if tr.mode == "poisson":
    sgld_kwargs["sampling_rate"] = tr.sampling_rate
  if tr.mode == "shuffled":
    sgld_kwargs["batch_size"] = tr.batch_size
  tick("setup")

  # ---- 1. training with the ledger -----------------------------------------------------------------
  T = tr.num_steps
  early = max(1, int(round(mc.early_fraction * T)))
  ckpt_steps = sorted({early, *[int(round(T * (c + 1) / tr.num_checkpoints)) for c in range(tr.num_checkpoints)]})
  acc_cfg = accounting.accountant(pv.orders, stride=pv.stride, filter_budget=pv.filter_budget,
                                  filter_order=pv.filter_order)
  steps_per_chunk = max(1, min(100, T))
  _stage(progress, f"training {tr.num_seeds} chain(s) x {T} steps with the per-instance ledger")

  def pick_train(res, seeded):
    return {"params": res.state.params, "ledger": res.ledger, "recorded": res.recorded}

  trained = _seeded(
      loops.train, num_seeds=tr.num_seeds, key=keys["train"], vmap_seeds=vmap_seeds, pick=pick_train, desc="train",
      loss_fn=loss_fn, params=init_fn, data=train_data, data_mask=pad_mask, num_steps=T, step_size=tr.step_size,
      temperature=tr.temperature, accounting=acc_cfg, clip_norm=clip, record_steps=ckpt_steps,
      checkpoint_dir=str(out / "checkpoints" / "train"),
      checkpoint_every=max(steps_per_chunk, T // 10), steps_per_chunk=steps_per_chunk,
      history_stride=max(1, T // 100), progress=progress, **sgld_kwargs)
  params_T = trained["params"]                          # (S, ...)
  ledger = trained["ledger"]
  ckpts = trained["recorded"]                           # (G, S, ...) vmapped / (S, G, ...) looped
  if not vmap_seeds:
    ckpts = jax.tree.map(lambda leaf: jnp.swapaxes(leaf, 0, 1), ckpts)
  accounting.check_ledger(jax.tree.map(lambda leaf: leaf[0], ledger))
  realized_mean, realized_std = accounting.average_ledgers(jnp.asarray(ledger.realized)[:, :n])
  realized_mean = np.asarray(realized_mean, dtype=np.float64)
  realized_std = np.asarray(realized_std, dtype=np.float64)
  ledger_certified = bool(np.all(np.asarray(ledger.certified)))
  ledger_exact = bool(np.all(np.asarray(ledger.exact)))
  worst_case_loss = np.asarray(ledger.worst_case)[0]
  train_acc, _ = evaluation.accuracy_and_loss(apply_fn, params_T, x, y, seed_axis=True)
  test_acc, test_loss = evaluation.accuracy_and_loss(apply_fn, params_T, xt, yt, seed_axis=True)
  tick("train")

  # ---- 2. certified steps and the worst-case baseline ---------------------------------------------
  alpha = pv.alpha
  i4 = _index_of(pv.orders, 4 * alpha)
  p4 = realized_mean[:, i4]
  eta_u = uc.step_size if uc.step_size is not None else tr.step_size
  tau_u = uc.temperature if uc.temperature is not None else tr.temperature
  if pv.lsi_constant is None:
    lsi = float(bounds.lsi_constant_strongly_convex(tau_u, tr.weight_decay))
    lsi_label = f"certified: L2-regularised logistic regression is m-strongly convex, C_LSI = 2τ/m = {lsi:.4g}"
    lsi_status = "certified"
  else:
    lsi = pv.lsi_constant
    if convex:
      lsi_label = f"given in the config: C_LSI = {lsi:.4g} (2τ/m would be {2 * tau_u / tr.weight_decay:.4g})"
      lsi_status = "given"
    else:
      lsi_label = (f"assumed C_LSI = {lsi:.4g} (config value; model {config.model.name!r} is not convex, "
                   "so the certificate rests on this assumption)")
      lsi_status = "assumed"
  stationarity = bounds.certificate_assumptions(pv.e1, pv.e2)
  constants = dict(alpha=alpha, step_size=eta_u, temperature=tau_u, lsi_constant=lsi, e1=pv.e1, e2=pv.e2)
  certified_steps = np.asarray(bounds.steps_to_unlearn(jnp.asarray(p4), pv.epsilon, **constants), dtype=np.float64)
  m_eff = 2 * tau_u / lsi  # equals the weight decay m when C_LSI = 2τ/m

  def worst_steps(num_removed: int) -> float:
    if clip is None:
      return math.inf
    return float(bounds.worst_case_steps(pv.epsilon, orders=[alpha], m=m_eff, step_size=eta_u, temperature=tau_u,
                                         num_removed=num_removed, clip_norm=clip, num_examples=n))

  worst_single = worst_steps(1)
  frac_below = float(np.mean(certified_steps < worst_single))
  tick("certify")

  # ---- metrics ---------------------------------------------------------------------------------------
  _stage(progress, f"difficulty metrics: {', '.join(mc.names)}")
  metric_values: dict[str, np.ndarray] = {}
  early_idx = ckpt_steps.index(early)
  early_params = jax.tree.map(lambda leaf: leaf[early_idx], ckpts)     # (S, ...)

  finals = along = None
  for name in mc.names:
    if name in ("loss", "confidence", "margin"):
      finals = finals if finals is not None else jax.device_get(_jitted("final_metrics")(apply_fn, params_T, x, y))
      metric_values[name] = np.asarray(finals[name], dtype=np.float64)
    elif name == "el2n":
      metric_values[name] = np.asarray(_jitted("el2n")(apply_fn, early_params, x, y))
    elif name == "grand":
      metric_values[name] = np.asarray(_jitted("grand")(loss_fn, early_params, data))
    elif name in ("forgetting", "cproxy"):
      along = along if along is not None else jax.device_get(_jitted("along_metrics")(apply_fn, ckpts, x, y))
      metric_values[name] = np.asarray(along[name], dtype=np.float64)
    elif name == "memorization":
      masks = np.asarray(metrics.random_half_masks(keys["memorization"], mc.memorization_models, n))
      mem_steps = mc.memorization_steps or T
      _stage(progress, f"memorization: {mc.memorization_models} models on random halves x {mem_steps} steps")
      correct = []
      for r in range(mc.memorization_models):
        res = loops.train(loss_fn, init_fn, train_data, num_steps=mem_steps,
                          key=jax.random.fold_in(keys["memorization"], r), step_size=tr.step_size,
                          temperature=tr.temperature, clip_norm=clip, data_mask=as_mask(masks[r]),
                          steps_per_chunk=max(1, min(100, mem_steps)), history_stride=max(1, mem_steps // 10),
                          progress=False, **sgld_kwargs)
        correct.append(np.asarray(_jitted("correctness")(apply_fn, res.state.params, x, y)))
      metric_values[name] = np.asarray(metrics.memorization(np.stack(correct), masks), dtype=np.float64)
  tick("metrics")

  # ---- 3. forget sets ------------------------------------------------------------------------------
  scores = {"privacy_loss": p4, **metric_values}
  selections: list[tuple[str, np.ndarray]] = []
  for j, sel in enumerate(fc.selections):
    if sel == "random":
      idx = selection.select_forget_set(p4, "random", size=fc.size, key=jax.random.fold_in(keys["select"], j))
    else:
      score_name, kind = sel.split(":")
      oriented = np.nan_to_num(_oriented(score_name, scores[score_name]), nan=0.0)
      idx = selection.select_forget_set(oriented, kind, size=fc.size)
    selections.append((sel, np.asarray(idx)))
  for b in range(fc.privacy_loss_bins):
    idx = selection.select_forget_set(p4, f"bin:{b}/{fc.privacy_loss_bins}", size=fc.size,
                                      key=jax.random.fold_in(keys["select"], 1000 + b))
    selections.append((f"privacy_loss:bin{b}/{fc.privacy_loss_bins}", np.asarray(idx)))
  tick("select")

  # ---- 4. unlearning, oracles, evaluation ----------------------------------------------------------
  grid = list(uc.step_grid)
  R = uc.num_seeds
  retrain_steps = uc.retrain_steps or T
  start_params = jax.tree.map(lambda leaf: leaf[np.arange(R) % tr.num_seeds], params_T)   # (R, ...)
  params_dir = out / "params"
  params_dir.mkdir(exist_ok=True)
  _save_params_npz(params_dir / "trained.npz", start_params)
  half_orders = [a / 4 for a in pv.orders if any(math.isclose(a / 4, b) for b in pv.orders) and a / 4 > 1]
  group_bound_ok = tr.mode == "full_batch"
  fixed_b = pv.filter_budget is not None  # the certified full-batch filter divides by a fixed b = n
  membership_cap = evaluation.membership_resolvable_cap(R, delta=ec.delta) if ec.membership else None
  forget_reports = []
  membership_points = []
  pct = 100 * ec.floor_quantile

  top_set = dict(selections).get("privacy_loss:top")
  for f_idx, (label, idx) in enumerate(selections):
    _stage(progress, f"forget set {f_idx + 1}/{len(selections)} ({label}, {idx.size} examples): "
                     f"{R} oracle(s) x {retrain_steps} steps, methods {', '.join(uc.methods)} x {grid[-1]} steps")
    mask = as_mask(jnp.ones((n,), jnp.float32).at[jnp.asarray(idx)].set(0.0))
    xf, yf = x[idx], y[idx]
    oracle = _seeded(
        loops.retrain, num_seeds=R, key=keys["oracle"], vmap_seeds=vmap_seeds, desc="oracles",
        pick=lambda res, seeded: res.state.params,
        loss_fn=loss_fn, init_fn=init_fn, retain_data=train_data, num_steps=retrain_steps, step_size=tr.step_size,
        temperature=tr.temperature, clip_norm=clip, data_mask=mask, steps_per_chunk=max(1, min(100, retrain_steps)),
        history_stride=max(1, retrain_steps // 10), progress=progress, **sgld_kwargs)
    tick("oracles")
    _save_params_npz(params_dir / f"oracle_{f_idx}.npz", oracle)
    oracle_scores, floor, oo_barrier, acc_o = _jitted("evaluate_oracle")(
        apply_fn, loss_fn, ec.barrier_points, oracle, xf, yf, jax.random.fold_in(keys["floor"], f_idx))
    if group_bound_ok:  # THEORY §3's group bound is a full-batch result
      group_all = np.asarray(accounting.group_privacy_loss(realized_mean, idx, fixed_denominator=fixed_b))
      group_p4 = float(group_all[i4])
      cert_set = float(bounds.steps_to_unlearn(jnp.asarray(group_p4), pv.epsilon, **constants))
    else:
      group_all, group_p4, cert_set = None, None, None
    entry_common = {
        "selection": label, "size": int(idx.size), "indices": idx,
        "mean_privacy_loss": float(np.mean(p4[idx])), "group_privacy_loss_bound": group_p4,
        "group_factor": (accounting.group_factor(n, int(idx.size), fixed_denominator=fixed_b)
                         if group_bound_ok else None),
        "certified_steps": cert_set,
        "certified_steps_per_example_median": float(np.median(certified_steps[idx])),
        "worst_case_steps": worst_steps(int(idx.size)),
        "oracle_barrier": float(oo_barrier),
    }
    if top_set is not None:
      entry_common["overlap_with_privacy_loss_top"] = int(np.intersect1d(idx, top_set).size)
    for m_idx, method in enumerate(uc.methods):
      kwargs = dict(loss_fn=loss_fn, retain_data=train_data, method=method, step_size=eta_u, record_steps=grid,
                    clip_norm=clip, weight_decay=tr.weight_decay, projection_radius=radius,
                    data_mask=mask, steps_per_chunk=max(1, min(100, grid[-1] or 1)),
                    history_stride=max(1, (grid[-1] or 1) // 10), progress=progress)
      if method == "sgld":
        kwargs["temperature"] = tau_u
      if method == "l1_sparse":
        kwargs["l1_strength"] = uc.l1_strength
      recorded = _seeded(
          loops.unlearn, num_seeds=R, key=jax.random.fold_in(keys["unlearn"], m_idx), vmap_seeds=vmap_seeds,
          desc=f"unlearn {method}",
          per_seed_params=start_params, params_arg="params", pick=lambda res, seeded: res.recorded, **kwargs)
      if not vmap_seeds:                                                              # (R, G, ...) -> (G, R, ...)
        recorded = jax.tree.map(lambda leaf: jnp.swapaxes(leaf, 0, 1), recorded)
      tick("unlearn")
      ev = jax.device_get(_jitted("evaluate_method")(
          apply_fn, loss_fn, ec.barrier_points, tuple(grid), pct, ec.membership, ec.delta,
          recorded, oracle, oracle_scores, floor, xf, yf))
      barriers = np.asarray(ev["barriers"], dtype=np.float64)                          # (G,)
      entry = dict(entry_common)
      entry.update({
          "method": method,
          "empirical_steps": float(ev["steps"]),
          "unlearned_within_grid": bool(np.isfinite(float(ev["steps"]))),
          "grid_end": int(grid[-1]),
          "step_grid": grid,
          "median_distance": np.asarray(ev["median"], dtype=np.float64),
          "floor_threshold": float(ev["threshold"]),
          "loss_barrier": float(barriers[0]) if grid[0] == 0 else None,
          "loss_barrier_along": barriers,
          "forget_accuracy_unlearned": float(ev["acc_f"]),
          "forget_accuracy_oracle": float(acc_o),
      })
      if grid[0] != 0:
        orig_b, _ = evaluation.barriers_along(loss_fn, jax.tree.map(lambda leaf: leaf[None], start_params), oracle,
                                              (xf, yf), num_points=ec.barrier_points, paired_seeds=True)
        entry["loss_barrier"] = float(np.mean(np.asarray(orig_b)))
      if ec.membership:
        mem = np.asarray(ev["membership_lower_bound"], dtype=np.float64)
        point = np.asarray(ev["membership_point_estimate"], dtype=np.float64)
        entry["membership_epsilon"] = {
            "lower_bound": {"median": float(np.median(mem)), "max": float(np.max(mem)), "per_example": mem},
            "point_estimate": {"median": float(np.median(point)), "max": float(np.max(point)),
                               "per_example": point},
            "num_models": R, "resolvable_cap": membership_cap, "confidence": 0.95,
            "note": (f"lower bound: one-sided Clopper-Pearson, simultaneous over thresholds (95%); {R} vs {R} "
                     f"models resolve at most {membership_cap:.3g}. The point estimate is not a bound.")}
        if method == "sgld" and half_orders and group_all is not None:
          rdp = np.array([float(bounds.unlearning_bound(
              group_all[_index_of(pv.orders, 4 * a)], grid[-1], alpha=a, step_size=eta_u, temperature=tau_u,
              lsi_constant=lsi, e1=pv.e1, e2=pv.e2)) for a in half_orders])
          cert_eps, _ = accounting.rdp_to_dp(jnp.asarray(rdp), half_orders, ec.delta)
          entry["certified_epsilon"] = float(cert_eps)
          membership_points.append((label, float(cert_eps), mem, point))
      forget_reports.append(entry)
      tick("evaluate")

  # ---- 5. correlations -----------------------------------------------------------------------------
  correlations = {name: _spearman(p4, v) for name, v in metric_values.items()}
  oriented_corr = {name: (c * DIFFICULTY_SIGN[name] if math.isfinite(c) else c) for name, c in correlations.items()}
  names = ["privacy_loss", *metric_values]
  matrix = np.array([[_spearman(scores[a], scores[b]) for b in names] for a in names])
  cert_vs_emp = {}
  for method in uc.methods:
    rows = [e for e in forget_reports if e["method"] == method]
    certified = [math.nan if e["certified_steps"] is None else e["certified_steps"] for e in rows]
    cert_vs_emp[method] = _spearman(certified, [e["empirical_steps"] for e in rows])
  tick("correlations")

  # ---- outputs -------------------------------------------------------------------------------------
  report: dict[str, Any] = {
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "config": {k: v for k, v in config.to_dict().items() if k != "out_dir"},
      "dataset": {"name": ds.name, "n_train": int(n), "n_test": int(x_test.shape[0]),
                  "num_classes": int(ds.num_classes)},
      "training": {"steps": T, "num_seeds": tr.num_seeds, "train_accuracy": float(np.mean(np.asarray(train_acc))),
                   "test_accuracy": float(np.mean(np.asarray(test_acc))),
                   "test_loss": float(np.mean(np.asarray(test_loss))),
                   "checkpoint_steps": ckpt_steps},
      "privacy": {
          "orders": list(pv.orders), "alpha": alpha, "privacy_loss_order": 4 * alpha,
          "epsilon": pv.epsilon,
          "worst_case_loss": worst_case_loss,
          "certified": ledger_certified, "exact": ledger_exact,
          "ledger_note": ("realized P is a certified individual RDP bound (individual Rényi filter)"
                          if ledger_certified else "realized P is an estimate (no individual filter)"),
          "privacy_loss_summary": _summary(p4),
          "privacy_loss_seed_std_median": float(np.median(realized_std[:, i4])),
          "lsi_constant": lsi, "lsi_status": lsi_status, "lsi_note": lsi_label,
          "stationarity": stationarity,
          "certified_steps_summary": _summary(certified_steps),
          "worst_case_steps": worst_single,
          "worst_case_note": (f"Chien et al. baseline for one removed point at order α = {alpha} with "
                              f"m = 2τ/C_LSI = {m_eff:.4g}, clip C = {clip}"),
          "fraction_certified_below_worst_case": frac_below,
      },
      "forget_sets": forget_reports,
      "correlations": correlations,
      "correlations_oriented": oriented_corr,
      "correlation_matrix": {"labels": names, "values": matrix},
      "certified_vs_empirical_spearman": cert_vs_emp,
  }
  report["findings"] = _findings(report, uc.methods)
  report["harder_groups"] = _harder_groups(report, uc.methods)
  metrics_csv = {k: metric_values[k] for k in mc.names}
  write_per_example_csv(out / "per_example.csv", y_train, p4, certified_steps, metrics_csv)
  report["figures"] = _figures(out, report, p4, certified_steps, worst_single, membership_points, grid, lsi_label,
                               progress)
  report = _jsonable(report)
  write_report_json(out / "report.json", report)
  tick("outputs")
  return report


def _summary(values: Any) -> dict[str, float]:
  import numpy as np  # pylint: disable=import-outside-toplevel

  v = np.asarray(values, dtype=np.float64)
  finite = v[np.isfinite(v)]
  if finite.size == 0:
    return {"min": math.inf, "median": math.inf, "p99": math.inf, "max": math.inf, "num_infinite": int(v.size)}
  return {"min": float(finite.min()), "median": float(np.median(v)), "p99": float(np.percentile(v, 99)),
          "max": float(v.max()), "num_infinite": int(np.sum(~np.isfinite(v)))}


# ----------------------------------------------------------------------------------------------------
# Findings, harder groups, figures, report.md
# ----------------------------------------------------------------------------------------------------


def _hardness(entry: Mapping[str, Any]) -> tuple[float, float]:
  """Sort key of a forget set's difficulty: empirical steps, then the mean median distance on the grid."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  return (float(entry["empirical_steps"]), float(np.mean(np.asarray(entry["median_distance"], dtype=float))))


def _steps_text(entry: Mapping[str, Any]) -> str:
  s = float(entry["empirical_steps"])
  return f"{s:.0f}" if math.isfinite(s) else f"> {entry['grid_end']}"


def _findings(report: Mapping[str, Any], methods: tuple[str, ...]) -> dict[str, Any]:
  """The four claims of issue 7, each with its measured values and a verdict (holds / does not)."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  out: dict[str, Any] = {}
  corr = report["correlations_oriented"]
  strong = [k for k, v in corr.items() if math.isfinite(v) and v >= 0.3]
  weak = [k for k, v in corr.items() if math.isfinite(v) and 0 < v < 0.3]
  against = [k for k, v in corr.items() if not (math.isfinite(v) and v > 0)]
  verdict = ("holds" if corr and len(strong) == len(corr) else
             "holds for some metrics" if strong else "does not hold")
  out["a_privacy_loss_correlates_with_difficulty"] = {
      "verdict": verdict if corr else "not measured (no metrics)",
      "spearman_oriented": corr, "strong": strong, "weak": weak, "not_positive": against,
      "note": "Spearman(privacy loss, metric), sign flipped for metrics where low means hard "
              "(confidence, margin, cproxy); >= 0.3 counted as 'strong'."}

  sets = {(e["selection"], e["method"]): e for e in report["forget_sets"]}
  b_rows, c_rows = {}, {}
  for method in methods:
    top = sets.get(("privacy_loss:top", method))
    others = {name: sets.get((name, method)) for name in ("random", "privacy_loss:bottom")}
    if top is not None and all(v is not None for v in others.values()):
      harder = {name: _hardness(top) > _hardness(o) for name, o in others.items()}
      strictly_more_steps = {name: float(top["empirical_steps"]) > float(o["empirical_steps"])
                             for name, o in others.items()}
      b_rows[method] = {
          "steps": {"privacy_loss:top": _steps_text(top), **{k: _steps_text(v) for k, v in others.items()}},
          "mean_median_distance": {"privacy_loss:top": _hardness(top)[1],
                                   **{k: _hardness(v)[1] for k, v in others.items()}},
          "more_steps_than": strictly_more_steps, "harder_than": harder,
          "verdict": ("holds" if all(strictly_more_steps.values()) else
                      "holds only on the distance (steps tied)" if all(harder.values()) else "does not hold")}
    if top is not None:
      comp = {}
      for (sel, meth), e in sets.items():
        if meth != method or sel.startswith("privacy_loss") or sel == "random" or not sel.endswith(":top"):
          continue
        comp[sel] = {"steps": _steps_text(e), "at_least_as_hard": _hardness(top) >= _hardness(e),
                     "at_least_as_many_steps": float(top["empirical_steps"]) >= float(e["empirical_steps"])}
      if comp:
        fewer = [k for k, v in comp.items() if not v["at_least_as_many_steps"]]
        closer = [k for k, v in comp.items() if v["at_least_as_many_steps"] and not v["at_least_as_hard"]]
        if fewer:
          verdict = "does not hold: fewer steps than " + ", ".join(fewer)
        elif closer:
          verdict = ("holds on steps (tied), but by the mean distance to the oracle " + ", ".join(closer) +
                     " is harder")
        else:
          verdict = "holds"
        comp_dist = {k: _hardness(sets[(k, method)])[1] for k in comp}
        c_rows[method] = {"privacy_loss:top_steps": _steps_text(top), "privacy_loss:top_distance": _hardness(top)[1],
                          "vs": comp, "vs_distance": comp_dist, "verdict": verdict}
  out["b_high_privacy_loss_needs_more_steps"] = b_rows or {"verdict": "not measured (needs privacy_loss:top, "
                                                                      "privacy_loss:bottom and random)"}
  out["c_privacy_loss_sets_at_least_as_hard_as_metric_sets"] = c_rows or {
      "verdict": "not measured (needs privacy_loss:top and <metric>:top selections)"}
  frac = report["privacy"]["fraction_certified_below_worst_case"]
  out["d_certified_below_worst_case"] = {
      "fraction_below": frac, "worst_case_steps": report["privacy"]["worst_case_steps"],
      "certified_median": report["privacy"]["certified_steps_summary"]["median"],
      "verdict": "holds" if frac > 0.5 else "does not hold",
      "assumptions": [report["privacy"]["lsi_note"], report["privacy"]["stationarity"]]}
  del np
  return out


def _harder_groups(report: Mapping[str, Any], methods: tuple[str, ...]) -> list[dict[str, Any]]:
  """Forget sets ranked from hardest to easiest, per method (the harder-groups table of THEORY §6)."""
  rows = []
  for method in methods:
    entries = sorted((e for e in report["forget_sets"] if e["method"] == method), key=_hardness, reverse=True)
    for rank, e in enumerate(entries, 1):
      rows.append({"method": method, "rank": rank, "selection": e["selection"],
                   "mean_privacy_loss": e["mean_privacy_loss"], "empirical_steps": e["empirical_steps"],
                   "mean_median_distance": _hardness(e)[1], "loss_barrier": e["loss_barrier"],
                   "certified_steps": e["certified_steps"]})
  return rows


def _figures(out: pathlib.Path, report: Mapping[str, Any], p4: Any, certified_steps: Any, worst_single: float,
             membership_points: list, grid: list[int], lsi_label: str, progress: bool) -> dict[str, str]:
  """Draws every figure into ``out``; returns name -> file name (empty when matplotlib is missing)."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  try:
    from unlearn_jax import plots  # pylint: disable=import-outside-toplevel
    plots._pyplot()  # pylint: disable=protected-access
  except ImportError as e:
    _stage(progress, f"figures skipped: {e}")
    return {}
  figs: dict[str, str] = {}
  alpha = report["privacy"]["alpha"]
  plots.privacy_loss_histogram(p4, out / "privacy_loss_histogram.png", order=4 * alpha)
  figs["privacy_loss_histogram"] = "privacy_loss_histogram.png"
  pv = report["privacy"]
  short = (f"{pv['lsi_status']} C_LSI = {pv['lsi_constant']:.3g}, target ε = {pv['epsilon']:g} at α = {alpha:g}"
           + (", E1 = E2 = 0 assumed" if "stationarity" in pv["stationarity"] else ""))
  plots.certified_vs_worst_case(p4, certified_steps, worst_single, out / "certified_vs_worst_case.png", label=short)
  figs["certified_vs_worst_case"] = "certified_vs_worst_case.png"
  entries = report["forget_sets"]
  methods = list(dict.fromkeys(e["method"] for e in entries))
  labels = list(dict.fromkeys(e["selection"] for e in entries))
  by = {(e["selection"], e["method"]): e for e in entries}
  group_p = [by[(lab, methods[0])]["mean_privacy_loss"] for lab in labels]
  steps = {m: [by[(lab, m)]["empirical_steps"] for lab in labels] for m in methods}
  plots.empirical_steps_by_privacy_loss(group_p, steps, out / "empirical_steps_vs_privacy_loss.png",
                                        group_labels=labels, grid_end=grid[-1])
  figs["empirical_steps_vs_privacy_loss"] = "empirical_steps_vs_privacy_loss.png"
  for m in methods:
    curves = {lab: by[(lab, m)]["loss_barrier_along"] for lab in labels}
    ref = {lab: by[(lab, m)]["oracle_barrier"] for lab in labels}
    name = f"loss_barrier_{m}"
    plots.loss_barrier_curves(grid, curves, out / f"{name}.png", reference=ref,
                              title=f"Loss barrier on the forget set, unlearned ({m}) vs oracle")
    figs[name] = f"{name}.png"
    dist = {lab: by[(lab, m)]["median_distance"] for lab in labels}
    thr = {lab: by[(lab, m)]["floor_threshold"] for lab in labels}
    name = f"unlearning_distance_{m}"
    plots.loss_barrier_curves(grid, dist, out / f"{name}.png", reference=thr, log_y=True,
                              ylabel="median symmetric KL, unlearned vs oracle",
                              title=f"Output-distribution distance along unlearning ({m})\n"
                                    "dashed: the oracle-vs-oracle floor threshold")
    figs[name] = f"{name}.png"
  cm = report["correlation_matrix"]
  plots.correlation_heatmap(np.asarray(cm["values"], dtype=float), cm["labels"], out / "correlation_heatmap.png",
                            title="Spearman correlation between per-example scores")
  figs["correlation_heatmap"] = "correlation_heatmap.png"
  if membership_points:
    cert = np.concatenate([np.full(len(mem), c) for _, c, mem, _ in membership_points])
    emp = np.concatenate([np.asarray(mem, dtype=float) for _, _, mem, _ in membership_points])
    point = np.concatenate([np.asarray(p, dtype=float) for _, _, _, p in membership_points])
    labs = [lab for lab, _, mem, _ in membership_points for _ in range(len(mem))]
    first = next(e for e in entries if "membership_epsilon" in e)["membership_epsilon"]
    plots.membership_vs_certified(cert, emp, out / "membership_vs_certified.png", labels=labs,
                                  point_estimates=point, cap=first["resolvable_cap"],
                                  num_models=first["num_models"])
    figs["membership_vs_certified"] = "membership_vs_certified.png"
  return figs


_FIGURE_CAPTIONS = {
    "privacy_loss_histogram": "Distribution of the per-example privacy loss P(x, 4α) (log x axis).",
    "certified_vs_worst_case": "Certified per-instance steps to unlearn each example (points) against the "
                               "worst-case baseline of Chien et al. (line).",
    "empirical_steps_vs_privacy_loss": "Empirical steps to unlearn each forget set against its mean privacy "
                                       "loss, one line per method (above the dotted line: not unlearned "
                                       "within the grid).",
    "correlation_heatmap": "Spearman rank correlations between privacy loss and the difficulty metrics.",
    "membership_vs_certified": "Per-example membership ε lower bounds (one-sided simultaneous Clopper–Pearson, "
                               "SGLD unlearning, grid end) against the certified ε of the whole forget set "
                               "(group bound); sound when on or below the diagonal. Grey: the uncorrected "
                               "point estimates (not bounds); dotted: the most the models can resolve.",
}


def write_report_md(path: str | os.PathLike, report: Mapping[str, Any],
                    timings: Mapping[str, float] | None = None) -> pathlib.Path:
  """Writes the human summary ``report.md`` (tables, the four findings, figures embedded) of a report.

  Args:
    path: output file.
    report: the report returned by :func:`run` (or read back from ``report.json``).
    timings: stage -> seconds (``timings.json``), for the wall time line.

  Returns:
    The path written.
  """
  path = pathlib.Path(path)
  timings = timings or {}
  pv, tr, ds = report["privacy"], report["training"], report["dataset"]
  cfg = report["config"]
  lines = [f"# Per-instance unlearning study: {ds['name']} / {cfg['model']['name']}", ""]
  lines += [f"Created {report['created']}; wall time {timings.get('total', float('nan')):.0f} s "
            "(stages in timings.json). The full configuration is in report.json.", ""]
  lines += ["## Data and training", "",
            _md_table(["data set", "n_train", "n_test", "mode", "steps", "η", "τ", "clip C", "weight decay",
                       "seeds", "train acc", "test acc"],
                      [[ds["name"], ds["n_train"], ds["n_test"], cfg["training"]["mode"], tr["steps"],
                        cfg["training"]["step_size"], cfg["training"]["temperature"],
                        str(cfg["training"]["clip_norm"]), cfg["training"]["weight_decay"], tr["num_seeds"],
                        f"{100 * tr['train_accuracy']:.1f}%", f"{100 * tr['test_accuracy']:.1f}%"]]), ""]
  s = pv["privacy_loss_summary"]
  c = pv["certified_steps_summary"]
  lines += ["## Privacy losses and certificates", "",
            f"- Ledger: {pv['ledger_note']}; orders {pv['orders']}; the certificate reads P(x, 4α) at "
            f"4α = {pv['privacy_loss_order']:g} (mean over the training seeds).",
            f"- Certificate target: Rényi ε = {pv['epsilon']:g} at α = {pv['alpha']:g}.",
            f"- C_LSI: {pv['lsi_note']}.",
            f"- E₁, E₂: {pv['stationarity']}.",
            f"- Worst-case baseline: {pv['worst_case_note']}.", "",
            _md_table(["quantity", "min", "median", "99th pct", "max"],
                      [["P(x, 4α)", s["min"], s["median"], s["p99"], s["max"]],
                       ["certified steps k*(x)", c["min"], c["median"], c["p99"], c["max"]]]), "",
            f"Worst-case steps for one example: {_md_num(pv['worst_case_steps'])}; certified per-instance steps are "
            f"below it for {100 * pv['fraction_certified_below_worst_case']:.1f}% of the examples.", ""]
  lines += ["## Correlations (Spearman with privacy loss)", "",
            _md_table(["metric", "Spearman", "oriented (+ = harder ↔ higher P)"],
                      [[k, v, report["correlations_oriented"][k]] for k, v in report["correlations"].items()]), ""]
  cve = report["certified_vs_empirical_spearman"]
  lines += ["Certified (group) vs empirical steps across forget sets: " +
            ", ".join(f"{m}: {_md_num(v)}" for m, v in cve.items()), ""]
  lines += ["## Forget sets", "",
            "Empirical steps: first step of the grid where the median (over the set) symmetric KL between "
            "unlearned and oracle seeds falls to the oracle-vs-oracle floor (THEORY §6); `> N` = not within "
            "the grid. Barrier: original vs oracle on the forget set (mean over paired seeds).", "",
            _md_table(["selection", "method", "mean P", "overlap with P-top", "certified (group)", "worst case",
                       "empirical",
                       "barrier", "oracle barrier", "forget acc (unl. / oracle)",
                       "membership ε lower bound (median / max)"],
                      [[e["selection"], e["method"], e["mean_privacy_loss"],
                        e.get("overlap_with_privacy_loss_top", "—"), e["certified_steps"],
                        e["worst_case_steps"], _steps_text(e), e["loss_barrier"], e["oracle_barrier"],
                        f"{100 * e['forget_accuracy_unlearned']:.0f}% / {100 * e['forget_accuracy_oracle']:.0f}%",
                        (f"{_md_num(e['membership_epsilon']['lower_bound']['median'])} / "
                         f"{_md_num(e['membership_epsilon']['lower_bound']['max'])} (cap "
                         f"{_md_num(e['membership_epsilon']['resolvable_cap'])})"
                         if "membership_epsilon" in e else "—")]
                       for e in report["forget_sets"]]), ""]
  lines += ["## Harder groups (hardest first)", "",
            _md_table(["method", "rank", "selection", "mean P", "empirical steps", "mean median distance",
                       "barrier"],
                      [[r["method"], r["rank"], r["selection"], r["mean_privacy_loss"],
                        _md_num(r["empirical_steps"]), r["mean_median_distance"], r["loss_barrier"]]
                       for r in report["harder_groups"]]), ""]
  f = report["findings"]
  lines += ["## Findings", ""]
  a = f["a_privacy_loss_correlates_with_difficulty"]
  lines += [f"- **(a) Privacy loss correlates with the difficulty metrics: {a['verdict']}.** Oriented Spearman: " +
            ", ".join(f"{k} {_md_num(v)}" for k, v in a["spearman_oriented"].items()) + "."]
  b = f["b_high_privacy_loss_needs_more_steps"]
  if "verdict" in b:
    lines += [f"- **(b)** {b['verdict']}."]
  else:
    for m, row in b.items():
      lines += [f"- **(b) [{m}] High-privacy-loss sets need more steps than random and low ones: {row['verdict']}.** "
                "Steps " + ", ".join(f"{k} {v}" for k, v in row["steps"].items()) + "; mean median distance " +
                ", ".join(f"{k} {_md_num(v)}" for k, v in row["mean_median_distance"].items()) + "."]
  cc = f["c_privacy_loss_sets_at_least_as_hard_as_metric_sets"]
  if "verdict" in cc:
    lines += [f"- **(c)** {cc['verdict']}."]
  else:
    for m, row in cc.items():
      lines += [f"- **(c) [{m}] Privacy-loss-selected sets at least as hard as metric-selected ones: "
                f"{row['verdict']}.** privacy_loss:top {row['privacy_loss:top_steps']} steps (mean median distance "
                f"{_md_num(row['privacy_loss:top_distance'])}) vs " +
                ", ".join(f"{k} {v['steps']} ({_md_num(row['vs_distance'][k])})" for k, v in row["vs"].items()) +
                "."]
  d = f["d_certified_below_worst_case"]
  lines += [f"- **(d) Certified steps below the worst case for most examples: {d['verdict']}** "
            f"({100 * d['fraction_below']:.1f}% below K = {_md_num(d['worst_case_steps'])}; median certified "
            f"{_md_num(d['certified_median'])}; {'; '.join(d['assumptions'])}).", ""]
  if report.get("figures"):
    lines += ["## Figures", ""]
    for name, file in report["figures"].items():
      caption = _FIGURE_CAPTIONS.get(name)
      if caption is None and name.startswith("loss_barrier_"):
        caption = (f"Loss barrier between unlearned ({name[13:]}) and oracle models on each forget set along "
                   "the unlearning steps; dashed: oracle vs oracle.")
      if caption is None and name.startswith("unlearning_distance_"):
        caption = (f"Median symmetric KL between unlearned ({name[20:]}) and oracle output distributions along "
                   "the unlearning steps; dashed: the noise-floor threshold of each set.")
      lines += [f"![{name}]({file})", "", f"*{caption or name}*", ""]
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return path
