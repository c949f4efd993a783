"""The study's typed configuration: :class:`Config` of the sections in :mod:`~unlearn_jax.study.sections`,
read from TOML or JSON.

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
from collections.abc import Mapping
from typing import Any

from unlearn_jax.evaluate import METRICS
from unlearn_jax.study.sections import (
  SECTIONS,
  SELECTION_KINDS,
  ConfigError,
  DataConfig,
  EvaluationConfig,
  ForgetSetsConfig,
  MetricsConfig,
  ModelConfig,
  PrivacyConfig,
  TrainingConfig,
  UnlearningConfig,
  config_key,
  selection_scores,
)

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


def _type_name(tp: Any) -> str:
  origin = typing.get_origin(tp)
  if origin in (typing.Union, types.UnionType):
    return " or ".join(_type_name(a) for a in typing.get_args(tp))
  if origin is tuple:
    return f"list of {_type_name(typing.get_args(tp)[0])}"
  if tp is type(None):
    return "absent"
  return {
    float: "number",
    int: "integer",
    str: "string",
    bool: "boolean (true/false)",
    dict: "table of keyword arguments",
  }.get(tp, str(tp))


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
  return ConfigError(f"unknown config key {config_key(section, key)!r} {where}{hint}. Allowed keys: {allowed}")


_FLOAT32_MAX = 3.4028234663852886e38
_FLOAT32_TINY = 1.1754943508222875e-38
_INT32_MAX = 2**31 - 1


def _check_representable(key: str, value: Any) -> None:
  """The study computes in float32 with int32 step counters: a setting beyond their range would become
  inf or 0 (a temperature of 1e-50 is 0 in float32) or overflow, so it is refused here, naming the key."""
  if isinstance(value, tuple):
    for i, v in enumerate(value):
      _check_representable(f"{key}[{i}]", v)
  elif isinstance(value, float) and math.isfinite(value) and value != 0:
    if not _FLOAT32_TINY <= abs(value) <= _FLOAT32_MAX:
      raise ConfigError(
        f"config key {key!r} must have a magnitude in [{_FLOAT32_TINY:.3g}, {_FLOAT32_MAX:.3g}] (the study "
        f"computes in float32, where {value!r} is {'inf' if abs(value) > 1 else '0'}), got {value!r}"
      )
  elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > _INT32_MAX:
    raise ConfigError(f"config key {key!r} must be at most 2**31 - 1 = {_INT32_MAX} (int32 counters), got {value!r}")


def _section_from_dict(cls: type, section: str, raw: Any) -> Any:
  if not isinstance(raw, Mapping):
    raise ConfigError(f"config key {section!r} must be a table/object of settings, got {raw!r}")
  hints = typing.get_type_hints(cls)
  fields = [f.name for f in dataclasses.fields(cls)]
  kwargs = {}
  for k, v in raw.items():
    if k not in fields:
      raise _unknown_key(str(k), section, fields)
    kwargs[k] = _coerce(config_key(section, k), v, hints[k])
    _check_representable(config_key(section, k), kwargs[k])
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
      raise ConfigError(
        f"config key {k!r} is given twice in one JSON object (the first value would be silently replaced); keep one"
      )
    out[k] = v
  return out


def _parse(path: pathlib.Path, suffix: str) -> Any:
  raw = path.read_bytes()
  if raw.startswith(b"\xef\xbb\xbf"):
    raise ConfigError(
      f"config file {str(path)!r} starts with a UTF-8 byte-order mark (BOM), which "
      f"{suffix[1:].upper()} does not allow; save it as UTF-8 without BOM"
    )
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
        raise ConfigError(
          f"config key 'forget_sets.selections' has {sel!r}, but metric {score!r} is not "
          f"computed: add it to 'metrics.names' (now {list(self.metrics.names)})"
        )
    for name in self.forget_sets.metric_bins:
      if name not in self.metrics.names:
        raise ConfigError(
          f"config key 'forget_sets.metric_bins' has {name!r}, which is not computed: add it to "
          f"'metrics.names' (now {list(self.metrics.names)})"
        )

  @classmethod
  def from_dict(cls, raw: Mapping[str, Any]) -> Config:
    """Builds a config from nested mappings; unknown keys / wrong types raise :class:`ConfigError`."""
    if not isinstance(raw, Mapping):
      raise ConfigError(f"a config must be a table/object of settings, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in raw.items():
      if k not in fields:
        raise _unknown_key(str(k), "", fields)
      kwargs[k] = _section_from_dict(SECTIONS[k], k, v) if k in SECTIONS else _coerce(k, v, hints[k])
    return cls(**kwargs)

  @classmethod
  def from_file(cls, path: str | os.PathLike) -> Config:
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
      if f.name in SECTIONS:
        out[f.name] = {
          g.name: _to_plain(getattr(value, g.name))
          for g in dataclasses.fields(value)
          if getattr(value, g.name) is not None
        }
      elif value is not None:
        out[f.name] = _to_plain(value)
    return out

  def replace(self, **overrides: Any) -> Config:
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
      if sec not in SECTIONS:
        raise _unknown_key(sec, "", [f.name for f in dataclasses.fields(self)])
      raw[sec][name] = v
    raw = {
      k: ({kk: vv for kk, vv in v.items() if vv is not None} if isinstance(v, dict) and k in SECTIONS else v)
      for k, v in raw.items()
      if v is not None
    }
    return Config.from_dict(raw)


_DEMO: dict[str, Any] = {
  "seed": 0,
  "out_dir": "runs/demo",
  "vmap_seeds": False,
  "data": {"name": "digits"},
  "model": {"name": "mlp", "kwargs": {"hidden_sizes": [64]}},
  "training": {
    "mode": "full_batch",
    "num_steps": 600,
    "step_size": 0.5,
    "temperature": 1e-5,
    "clip_norm": 5.0,
    "weight_decay": 1e-3,
    "num_seeds": 4,
    "num_checkpoints": 10,
  },
  "privacy": {
    "orders": [2.0, 4.0, 8.0, 16.0, 32.0, 64.0],
    "alpha": 2.0,
    "epsilon": 1.0,
    "lsi_constant": 0.02,
    "e1": 0.0,
    "e2": 0.0,
  },
  "forget_sets": {
    "size": 20,
    "selections": ["privacy_loss:top", "privacy_loss:bottom", "random", "el2n:top", "memorization:top"],
  },
  "unlearning": {"methods": ["sgld", "sgd", "l1_sparse"], "step_grid": [0, 25, 50, 100, 200, 400], "num_seeds": 16},
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
