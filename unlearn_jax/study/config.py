"""The study's typed configuration: one frozen dataclass per section, read from TOML or JSON.

Keys are the library's keyword names (``step_size``, ``temperature``, ``clip_norm``, ``sampling_rate``,
``mode``, ``num_steps``, ``orders``, ``alpha``, ...), grouped in sections that follow the pipeline. The
data set, the model, the unlearning methods and the difficulty metrics are names from the library's
registries (``data.DATASETS``, ``models.MODELS``, ``algorithms.UNLEARNING_METHODS``,
``evaluate.METRICS``); ``[data.kwargs]``, ``[model.kwargs]`` and ``[unlearning.method_options.<name>]``
pass keyword arguments through, so a newly registered model, data set or method needs no new config
field. Unknown keys, wrong types and values out of range are refused with a :class:`ConfigError` that
names the key, the value and what is allowed; range checks are the library's own (``_checks``).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import pathlib
import tomllib
import types
import typing
from typing import Any, Mapping

from unlearn_jax import _checks
from unlearn_jax import data as data_lib
from unlearn_jax import models as models_lib
from unlearn_jax.algorithms import MODES, UNLEARNING_METHODS
from unlearn_jax.evaluate import METRICS

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "EvaluationConfig",
    "ForgetSetsConfig",
    "MetricsConfig",
    "ModelConfig",
    "PrivacyConfig",
    "SELECTION_KINDS",
    "TrainingConfig",
    "UnlearningConfig",
    "demo_config",
    "selection_scores",
]

SELECTION_KINDS = ("top", "bottom")


class ConfigError(ValueError):
  """A config key is unknown, of the wrong type or out of range; the message names the key."""


def selection_scores() -> tuple[str, ...]:
  """The scores a forget set can be selected by: the privacy loss and every registered metric."""
  return ("privacy_loss",) + tuple(METRICS)


def _key(section: str, name: str) -> str:
  return f"{section}.{name}" if section else name


class _Section:
  """Mixin: validation of field values after the dataclass is built, with the library's checks."""

  _section: typing.ClassVar[str] = ""

  def _name(self, name: str) -> str:
    return f"config key {_key(self._section, name)!r}"

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
  """The model: ``name`` in ``models.MODELS``; ``kwargs`` the builder's keyword arguments (e.g.
  ``hidden_sizes`` of the MLP)."""

  _section: typing.ClassVar[str] = "model"
  name: str = "mlp"
  kwargs: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    self._choice("name", tuple(models_lib.MODELS))


@dataclasses.dataclass(frozen=True)
class TrainingConfig(_Section):
  """Training with the ledger (THEORY §0-§3).

  Attributes:
    mode: gradient estimate, one of ``algorithms.MODES`` (THEORY §1).
    num_steps: noisy steps T.
    step_size: η > 0.
    temperature: τ > 0.
    clip_norm: per-example clip C > 0 (``inf``: no clipping).
    weight_decay: L2 strength m >= 0 (the regulariser m/2 ||θ||²; with logistic regression it makes the
      objective m-strongly convex).
    sampling_rate: Poisson rate q in (0, 1] (mode ``poisson`` only).
    batch_size: minibatch size (mode ``shuffled`` only).
    projection_radius: radius R of the projection ball (``inf``: none).
    num_seeds: independent training chains. The ledger is averaged over them (THEORY §3).
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
    self._at_least("num_steps", 1)
    self._positive("step_size")
    self._positive("temperature")
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
    try:
      _checks.check_orders(self.orders, name=self._name("orders"))
    except (ValueError, TypeError) as e:
      raise ConfigError(str(e)) from e
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
    self._at_least("stride", 1)
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
    self._at_least("size", 1)
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
  """Unlearning by fine-tuning on the retain set, and the retrained oracles (THEORY §4, §6).

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
    self._at_least("barrier_points", 3)
    self._check(_checks.check_probability, "delta")
    self._check(_checks.check_probability, "floor_quantile", open_high=False)


@dataclasses.dataclass(frozen=True)
class MetricsConfig(_Section):
  """Difficulty metrics (THEORY §6).

  Attributes:
    names: names of ``evaluate.METRICS`` computed for every training example.
    early_fraction: fraction of training at which EL2N and GraNd are taken, in (0, 1].
    memorization_models: R models on random halves for Feldman-Zhang memorization (>= 2).
    memorization_steps: their training steps (absent: training's ``num_steps``).
  """

  _section: typing.ClassVar[str] = "metrics"
  names: tuple[str, ...] = ("loss", "confidence", "margin", "el2n", "grand", "forgetting", "cproxy",
                            "memorization")
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
  return {float: "number", int: "integer", str: "string", bool: "boolean (true/false)",
          dict: "table of keyword arguments"}.get(tp, str(tp))


def _coerce_scalar(value: Any, tp: Any) -> Any:
  """``value`` as ``tp`` (float, int, bool, str, dict), or raises TypeError."""
  if tp is float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
    if isinstance(value, str) and value.strip().lower() in ("inf", "+inf", "infinity"):
      return math.inf
  elif tp is int:
    if isinstance(value, int) and not isinstance(value, bool):
      return value
    if isinstance(value, float) and value.is_integer():
      return int(value)
  elif tp is bool and isinstance(value, bool):
    return value
  elif tp is str and isinstance(value, str):
    return value
  elif tp is dict and isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
    return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in value.items()}
  raise TypeError


def _coerce(key: str, value: Any, tp: Any) -> Any:
  """Returns ``value`` converted to the annotated type ``tp`` or raises ConfigError naming ``key``."""
  origin = typing.get_origin(tp)
  if origin in (typing.Union, types.UnionType):
    args = typing.get_args(tp)
    if value is None and type(None) in args:
      return None
    for arg in args:
      if arg is not type(None):
        try:
          return _coerce(key, value, arg)
        except ConfigError:
          pass
  elif origin is tuple:
    if isinstance(value, (list, tuple)):
      return tuple(_coerce(f"{key}[{i}]", v, typing.get_args(tp)[0]) for i, v in enumerate(value))
  else:
    try:
      return _coerce_scalar(value, tp)
    except TypeError:
      pass
  name = _type_name(tp)
  article = "an" if name[0] in "aeiou" else "a"
  raise ConfigError(f"config key {key!r} must be {article} {name}, got {value!r} of type {type(value).__name__}")


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
  if isinstance(value, dict):
    return {k: _to_plain(v) for k, v in value.items()}
  if isinstance(value, float) and not math.isfinite(value):
    return "inf" if value > 0 else "-inf"
  return value


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
  """``json.loads`` hook: a key given twice in one object is an error (TOML refuses it too)."""
  out = {}
  for k, v in pairs:
    if k in out:
      raise ConfigError(f"config key {k!r} is given twice in one JSON object (the first value would be "
                        "silently replaced); keep one")
    out[k] = v
  return out


def _parse(path: pathlib.Path, suffix: str) -> Any:
  raw = path.read_bytes()
  if raw.startswith(b"\xef\xbb\xbf"):
    raise ConfigError(f"config file {str(path)!r} starts with a UTF-8 byte-order mark (BOM), which "
                      f"{suffix[1:].upper()} does not allow; save it as UTF-8 without BOM")
  try:
    text = raw.decode("utf-8")
    if suffix == ".toml":
      return tomllib.loads(text)
    return json.loads(text, object_pairs_hook=_no_duplicate_keys)
  except RecursionError as e:
    raise ConfigError(f"config file {str(path)!r} is nested too deeply to be a config") from e
  except (ValueError, UnicodeDecodeError) as e:
    if isinstance(e, ConfigError):
      raise
    raise ConfigError(f"config file {str(path)!r} is not valid {suffix[1:].upper()}: {e}") from e


@dataclasses.dataclass(frozen=True)
class Config:
  """Every knob of the study; see the section classes for each key.

  Attributes:
    seed: the master seed (every key is derived from it with ``fold_in``).
    out_dir: output directory of the report.
    devices: number of devices to shard the per-example work over (absent: one device).
    vmap_seeds: run the seeds of each driver in one vmapped call (best on accelerators) instead of one
      call per seed (best on CPUs, where batched matrix products are slow); the results agree to
      float rounding.
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
    if self.seed < 0 or self.seed >= 2**63:
      raise ConfigError(f"config key 'seed' must be an integer in [0, 2**63), got {self.seed!r}")
    if self.devices is not None and self.devices < 1:
      raise ConfigError(f"config key 'devices' must be an integer >= 1, got {self.devices!r}")
    if not self.out_dir:
      raise ConfigError("config key 'out_dir' must be a directory path, got an empty string")
    for sel in self.forget_sets.selections:
      score = sel.split(":")[0]
      if score in METRICS and score not in self.metrics.names:
        raise ConfigError(f"config key 'forget_sets.selections' has {sel!r}, but metric {score!r} is not "
                          f"computed: add it to 'metrics.names' (now {list(self.metrics.names)})")

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
      kwargs[k] = _section_from_dict(_SECTIONS[k], k, v) if k in _SECTIONS else _coerce(k, v, hints[k])
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
    return cls.from_dict(_parse(path, suffix))

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
    raw = self.to_dict()
    for k, v in overrides.items():
      if "__" not in k:
        raw[k] = v
        continue
      sec, name = k.split("__", 1)
      if sec not in _SECTIONS:
        raise _unknown_key(sec, "", [f.name for f in dataclasses.fields(self)])
      raw[sec][name] = v
    raw = {k: ({kk: vv for kk, vv in v.items() if vv is not None} if isinstance(v, dict) and k in _SECTIONS else v)
           for k, v in raw.items() if v is not None}
    return Config.from_dict(raw)


_DEMO: dict[str, Any] = {
    "seed": 0,
    "out_dir": "runs/demo",
    "vmap_seeds": False,
    "data": {"name": "digits"},
    "model": {"name": "mlp", "kwargs": {"hidden_sizes": [64]}},
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


def demo_config() -> Config:
  """The ``unlearn-jax demo`` configuration (digits, MLP); ``configs/demo.toml`` mirrors it.

  Examples:
    >>> demo_config().data.name
    'digits'
  """
  return Config.from_dict(_DEMO)
