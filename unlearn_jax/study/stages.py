"""The stages of the study before unlearning: setup, training with the ledger, certificates, difficulty
metrics and forget sets. Each stage is a function of a small :class:`Context` and earlier results, and
returns a typed result (a NamedTuple); nothing here writes files.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from unlearn_jax import _compile, accounting, certify, evaluate, models, per_example, runtime
from unlearn_jax import data as data_lib
from unlearn_jax._compile import call
from unlearn_jax.evaluate import METRICS, MetricInputs, metrics, selection
from unlearn_jax.runtime import distributed
from unlearn_jax.study import saved
from unlearn_jax.study.config import Config, ConfigError

__all__ = [
  "SECOND_CLIP_TOP",
  "Baseline",
  "Certificates",
  "check_test_power",
  "Context",
  "DataMissingError",
  "ForgetSet",
  "Setup",
  "Trained",
  "certify_examples",
  "compute_metrics",
  "context",
  "seeded",
  "quantile_label",
  "select_forget_sets",
  "setup",
  "tie_break_key",
  "train_baseline",
  "train_with_ledger",
]

PyTree = Any
KEY_NAMES = ("train", "oracle", "unlearn", "select", "floor", "memorization")


class DataMissingError(FileNotFoundError):
  """A data set that is read from files has no (existing) data directory, or its files are unreadable
  (truncated, corrupt, of the wrong format): the CLI's exit status 4."""


@dataclasses.dataclass
class Context:
  """What every stage reads: the config, the output directory, progress, the keys, the stage clock."""

  config: Config
  out: pathlib.Path
  progress: bool
  keys: dict[str, jax.Array]
  timings: dict[str, float]
  clock: float

  def tick(self, name: str) -> None:
    """Adds the time since the last tick to stage ``name``."""
    now = time.perf_counter()
    self.timings[name] = self.timings.get(name, 0.0) + now - self.clock
    self.clock = now

  def stage(self, message: str) -> None:
    """A stage message on stderr (when progress is on)."""
    if self.progress:
      tqdm.tqdm.write(f"[unlearn-jax] {message}", file=sys.stderr)


def context(config: Config, out: pathlib.Path, progress: bool) -> Context:
  root = jax.random.key(config.seed)
  keys = {name: jax.random.fold_in(root, i) for i, name in enumerate(KEY_NAMES)}
  return Context(config, out, progress, keys, {}, time.perf_counter())


class Setup(NamedTuple):
  """The data on the device(s), the model and the settings of every step of the study."""

  dataset: data_lib.Dataset
  x: jax.Array
  y: jax.Array
  x_test: jax.Array
  y_test: jax.Array
  num_examples: int
  train_data: PyTree  # (x, y), padded and sharded with --devices
  pad_mask: jax.Array | None
  model: models.Model
  loss_fn: Callable
  init_fn: Callable
  step: dict  # the keyword arguments of runtime.train/retrain shared by every run (mode, wd, R, q, B, C)

  @property
  def apply_fn(self) -> Callable:
    return self.model.apply_fn

  def as_mask(self, keep: Any) -> jax.Array:
    """(n,) 0/1 over the real examples -> (n_pad,) mask with the padding rows off."""
    keep = jnp.asarray(keep, jnp.float32)
    n_pad = int(jax.tree.leaves(self.train_data)[0].shape[0])
    return (
      keep
      if n_pad == self.num_examples
      else jnp.concatenate([keep, jnp.zeros((n_pad - self.num_examples,), jnp.float32)])
    )


def _load(cfg, seed: int) -> data_lib.Dataset:
  spec = data_lib.DATASETS[cfg.name]
  directory = None
  if spec.files is not None:
    if cfg.data_dir is None:
      raise DataMissingError(
        f"data set {cfg.name!r} is read from local files and config key 'data.data_dir' is "
        f"not set: pass --data-dir DIR (or set data.data_dir) to a directory holding "
        f"{spec.files}; nothing is downloaded"
      )
    directory = pathlib.Path(cfg.data_dir).expanduser()
    if not directory.exists():
      raise DataMissingError(
        f"data directory {str(directory)!r} (config key 'data.data_dir') does not exist; it must hold {spec.files}"
      )
    if not directory.is_dir():
      raise DataMissingError(
        f"data directory {str(directory)!r} (config key 'data.data_dir') is a file, not a "
        f"directory; it must hold {spec.files}"
      )
  try:
    return data_lib.load_dataset(
      cfg.name, seed=seed, n_train=cfg.num_train, n_test=cfg.num_test, data_dir=directory, **cfg.kwargs
    )
  except FileNotFoundError as e:
    raise DataMissingError(f"{e} (data.data_dir = {str(directory)!r} must hold {spec.files})") from e
  except TypeError as e:
    raise ConfigError(f"config key 'data.kwargs' does not fit data set {cfg.name!r}: {e}") from e
  except ValueError as e:
    if cfg.num_train is not None and "n_train" in str(e) or cfg.num_test is not None and "n_test" in str(e):
      raise ConfigError(f"config key 'data.num_train'/'data.num_test': {e}") from e
    if spec.files is not None:  # the loaders name the file and what is wrong with it
      raise DataMissingError(str(e)) from e
    raise


def _build_model(cfg, num_classes: int) -> models.Model:
  try:
    return models.get_model(cfg.name, num_classes, **cfg.kwargs)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config key 'model.kwargs' does not fit model {cfg.name!r}: {e}") from e


def _place(config: Config, data: PyTree):
  """(train_data, pad_mask): on one device as it is; with ``devices`` padded and sharded."""
  if config.devices is None or config.devices <= 1:
    return data, None
  if jax.device_count() < config.devices:
    raise ConfigError(
      f"config key 'devices' (--devices) asks for {config.devices} devices, but only "
      f"{jax.device_count()} {jax.default_backend()} device(s) are visible (on CPU, force N with "
      f"XLA_FLAGS=--xla_force_host_platform_device_count=N)"
    )
  mesh = distributed.make_mesh(config.devices)
  padded, pad_mask = distributed.pad_to_multiple(data, distributed.data_axis_size(mesh))
  return distributed.shard_data(padded, mesh), pad_mask


def _check_lsi(config: Config) -> None:
  tr, pv, uc = config.training, config.privacy, config.unlearning
  convex = config.model.name == "logistic_regression" and tr.weight_decay > 0
  if pv.lsi_constant is None and not convex:
    tau = uc.temperature if uc.temperature is not None else tr.ledger_temperature
    raise ConfigError(
      f"config key 'privacy.lsi_constant' is required for model {config.model.name!r}: its objective is not "
      f"strongly convex, so C_LSI is not known and the certificate must rest on an assumed value (e.g. "
      f"2*temperature/weight_decay = {2 * tau / max(tr.weight_decay, 1e-300):.3g}, what an m-strongly "
      f"convex objective would give)"
    )


def check_test_power(ctx: Context) -> evaluate.TestPower:
  """The power of the "unlearned" test at the configured seeds and set size (simulated); refuses a
  configuration whose test cannot tell an unlearned set from one 2 standard deviations away."""
  uc, fc, ec = ctx.config.unlearning, ctx.config.forget_sets, ctx.config.evaluation
  power = evaluate.unlearned_test_power(uc.num_seeds, fc.size, shift=2.0, percentile=100 * ec.floor_quantile)
  if power.power < ec.min_power:
    raise ConfigError(
      f"config key 'unlearning.num_seeds' = {uc.num_seeds}: with {uc.num_seeds} vs {uc.num_seeds} models and "
      f"forget sets of {fc.size}, the 'unlearned' test rejects a 2-standard-deviation shift in only "
      f"{100 * power.power:.1f}% of {power.trials} simulated sets (power below evaluation.min_power = "
      f"{ec.min_power:g}): it cannot tell an unlearned set from one that is not. Use num_seeds >= 16, or set "
      "evaluation.min_power = 0 to run the underpowered test anyway (the report states its power)"
    )
  ctx.tick("setup")
  return power


def setup(ctx: Context) -> Setup:
  """Loads the data set, builds the model and the step settings; checks what only the data can tell."""
  config = ctx.config
  _check_lsi(config)
  ctx.stage(f"loading {config.data.name}")
  ds = _load(config.data, config.seed)
  n = int(ds.x_train.shape[0])
  if config.forget_sets.size >= n // 2:
    raise ConfigError(
      f"config key 'forget_sets.size' must be below half the training set ({n // 2}), got {config.forget_sets.size}"
    )
  model = _build_model(config.model, int(ds.num_classes))
  x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train, dtype=jnp.int32)
  xt, yt = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test, dtype=jnp.int32)
  try:
    params_shape = jax.eval_shape(model.init_fn, jax.random.key(0), x[0])
  except (ValueError, TypeError) as e:
    raise ConfigError(
      f"config key 'model.name': model {config.model.name!r} does not take the examples of "
      f"{config.data.name!r} (shape {tuple(x.shape[1:])}): {e}"
    ) from e
  try:
    saved.check_savable(params_shape)  # refused now, not after hours of training
  except TypeError as e:
    raise ConfigError(f"config key 'model.name': model {config.model.name!r}: {e}") from e
  train_data, pad_mask = _place(config, (x, y))
  tr = config.training
  step = {
    "mode": tr.mode,
    "weight_decay": tr.weight_decay,
    "projection_radius": None if math.isinf(tr.projection_radius) else tr.projection_radius,
    "clip_norm": None if math.isinf(tr.clip_norm) else tr.clip_norm,
  }
  if tr.mode == "poisson":
    step["sampling_rate"] = tr.sampling_rate
  if tr.mode == "shuffled":
    step["batch_size"] = tr.batch_size
  example = jnp.zeros(tuple(x.shape[1:]), x.dtype)
  setup_ = Setup(
    ds,
    x,
    y,
    xt,
    yt,
    n,
    train_data,
    pad_mask,
    model,
    models.cross_entropy_loss_fn(model.apply_fn),
    lambda k: model.init_fn(k, example),
    step,
  )
  ctx.tick("setup")
  return setup_


def seeded(
  driver: Callable,
  *,
  num_seeds: int,
  key: jax.Array,
  vmap_seeds: bool,
  pick: Callable,
  bar,
  per_seed_params: Any = None,
  params_arg: str | None = None,
  **kwargs: Any,
) -> Any:
  """Runs ``driver`` for ``num_seeds`` chains: one vmapped call, or one call per seed.

  Seed r of a ``num_seeds=R`` call equals a single-chain call with ``key=fold_in(key, r)``; on CPUs the
  per-seed loop is faster (batched matmuls are slow there). ``pick(result)`` extracts the arrays to keep,
  stacked along a leading seed axis. ``bar`` is the stage's :class:`runtime.Progress` (or False).
  """
  if vmap_seeds:
    if per_seed_params is not None:
      kwargs[params_arg] = per_seed_params
      kwargs["params_per_seed"] = True
    return pick(driver(key=key, num_seeds=num_seeds, progress=bar, **kwargs))
  base_dir = kwargs.pop("checkpoint_dir", None)
  outs = []
  for r in range(num_seeds):
    if base_dir is not None:
      kwargs["checkpoint_dir"] = str(pathlib.Path(base_dir) / f"seed_{r}")
    if per_seed_params is not None:
      kwargs[params_arg] = _compile.take(per_seed_params, r)
    outs.append(pick(driver(key=jax.random.fold_in(key, r), num_seeds=None, progress=bar, **kwargs)))
  return _compile.stack(outs)


class Trained(NamedTuple):
  """Stage 1: the trained chains and their ledger."""

  params: PyTree  # (S, ...)
  checkpoints: PyTree  # (G, S, ...)
  checkpoint_steps: list[int]
  early_index: int  # position of the early checkpoint in ``checkpoints``
  realized_mean: np.ndarray  # (n, K) P(x, α) averaged over the chains
  realized_std: np.ndarray
  per_seed_p4: np.ndarray  # (S, n) each chain's own P(x, 4α)
  certified: bool
  exact: bool
  worst_case_loss: np.ndarray  # (K,)
  train_accuracy: float
  test_accuracy: float
  test_loss: float


def progress_bar(ctx: Context, num_seeds: int, num_steps: int, desc: str):
  """The stage's bar over every step of every seed (one vmapped call advances all seeds at once)."""
  total = num_steps if ctx.config.vmap_seeds else num_seeds * num_steps
  return runtime.Progress(total, desc, enabled=True) if ctx.progress else False


def train_with_ledger(ctx: Context, s: Setup, *, clip_norm: float | None = None, name: str = "train") -> Trained:
  """Trains ``training.num_seeds`` chains with the per-instance ledger (theory §2, §3); ``clip_norm``
  overrides the training's clip norm (the second-clip run), ``name`` names its checkpoints and bar."""
  tr, pv, mc = ctx.config.training, ctx.config.privacy, ctx.config.metrics
  T = tr.num_steps
  early = max(1, int(round(mc.early_fraction * T)))
  ckpt_steps = sorted({early, *[int(round(T * (c + 1) / tr.num_checkpoints)) for c in range(tr.num_checkpoints)]})
  acc_cfg = accounting.accountant(
    pv.orders, stride=pv.stride, filter_budget=pv.filter_budget, filter_order=pv.filter_order
  )
  steps_per_chunk = max(1, min(100, T))
  step = s.step if clip_norm is None else {**s.step, "clip_norm": clip_norm}
  clip_text = "" if clip_norm is None else f" at clip norm {clip_norm:g}"
  ctx.stage(f"training {tr.num_seeds} chain(s) x {T} steps with the per-instance ledger{clip_text}")
  bar = progress_bar(ctx, tr.num_seeds, T, name)
  trained = seeded(
    runtime.train,
    num_seeds=tr.num_seeds,
    key=ctx.keys["train"],
    vmap_seeds=ctx.config.vmap_seeds,
    bar=bar,
    pick=lambda res: {"params": res.state.params, "ledger": res.ledger, "recorded": res.recorded},
    loss_fn=s.loss_fn,
    params=s.init_fn,
    data=s.train_data,
    data_mask=s.pad_mask,
    num_steps=T,
    step_size=tr.step_size,
    temperature=tr.temperature,
    accounting_temperature=tr.accounting_temperature,
    accounting=acc_cfg,
    record_steps=ckpt_steps,
    checkpoint_dir=str(ctx.out / "checkpoints" / name),
    checkpoint_every=max(steps_per_chunk, T // 10),
    steps_per_chunk=steps_per_chunk,
    history_stride=max(1, T // 100),
    **step,
  )
  if bar:
    bar.close()
  ledger, ckpts = trained["ledger"], trained["recorded"]  # (G, S, ...) vmapped / (S, G, ...) looped
  if not ctx.config.vmap_seeds:
    ckpts = _compile.swap_leading_axes(ckpts)
  accounting.check_ledger(_compile.take(ledger, 0))
  mean, std = accounting.average_ledgers(jnp.asarray(ledger.realized)[:, : s.num_examples])
  train_acc, _ = evaluate.accuracy_and_loss(s.apply_fn, trained["params"], s.x, s.y, seed_axis=True)
  test_acc, test_loss = evaluate.accuracy_and_loss(s.apply_fn, trained["params"], s.x_test, s.y_test, seed_axis=True)
  result = Trained(
    trained["params"],
    ckpts,
    ckpt_steps,
    ckpt_steps.index(early),
    np.asarray(mean, np.float64),
    np.asarray(std, np.float64),
    np.asarray(ledger.realized, np.float64)[:, : s.num_examples, _index_of(pv.orders, 4 * pv.alpha)],
    bool(np.all(np.asarray(ledger.certified))),
    bool(np.all(np.asarray(ledger.exact))),
    np.asarray(ledger.worst_case)[0],
    float(np.mean(np.asarray(train_acc))),
    float(np.mean(np.asarray(test_acc))),
    float(np.mean(np.asarray(test_loss))),
  )
  ctx.tick(name)
  return result


class Baseline(NamedTuple):
  """The plain (non-private) model of the same training: no noise, no clipping."""

  test_accuracy: float
  train_accuracy: float
  steps: int


def train_baseline(ctx: Context, s: Setup) -> Baseline | None:
  """One chain of the same training without noise and without clipping (the accuracy to compare with)."""
  tr = ctx.config.training
  if not tr.baseline:
    return None
  ctx.stage(f"baseline: 1 plain (non-private) chain x {tr.num_steps} steps, no noise, no clipping")
  steps_per_chunk = max(1, min(100, tr.num_steps))
  res = runtime.train(
    s.loss_fn,
    s.init_fn,
    s.train_data,
    num_steps=tr.num_steps,
    key=jax.random.fold_in(ctx.keys["train"], 1_000_003),
    step_size=tr.step_size,
    temperature=0.0,
    data_mask=s.pad_mask,
    steps_per_chunk=steps_per_chunk,
    history_stride=max(1, tr.num_steps // 10),
    checkpoint_dir=str(ctx.out / "checkpoints" / "baseline"),
    checkpoint_every=max(steps_per_chunk, tr.num_steps // 10),
    progress=progress_bar(ctx, 1, tr.num_steps, "baseline") if ctx.progress else False,
    **{**s.step, "clip_norm": None},
  )
  test_acc, _ = evaluate.accuracy_and_loss(s.apply_fn, res.state.params, s.x_test, s.y_test)
  train_acc, _ = evaluate.accuracy_and_loss(s.apply_fn, res.state.params, s.x, s.y)
  ctx.tick("baseline")
  return Baseline(float(test_acc), float(train_acc), tr.num_steps)


class Certificates(NamedTuple):
  """Stage 2: every example's certified steps to unlearn (theory §4) and the worst-case baseline."""

  alpha: float
  order_index: int  # column of P(x, 4α) in the ledger
  privacy_loss: np.ndarray  # (n,) P(x, 4α)
  constants: dict  # alpha, step_size, temperature, lsi_constant, e1, e2 of the certificate
  lsi_status: str  # "certified" / "given" / "assumed"
  lsi_note: str
  stationarity: str
  certified_steps: np.ndarray  # (n,) k*(x)
  m_eff: float  # 2τ/C_LSI (the weight decay when C_LSI = 2τ/m)
  clip_norm: float | None
  num_examples: int

  def worst_case_steps(self, epsilon: float, num_removed: int) -> float:
    """Chien et al.'s K for removing ``num_removed`` points at (α, ε)."""
    if self.clip_norm is None:
      return math.inf
    c = self.constants
    with jax.enable_x64(True):  # K beyond float32's range (τ = 1e-30) is still a number to compare with
      return float(
        certify.worst_case_steps(
          epsilon,
          orders=[self.alpha],
          m=self.m_eff,
          step_size=c["step_size"],
          temperature=c["temperature"],
          num_removed=num_removed,
          clip_norm=self.clip_norm,
          num_examples=self.num_examples,
        )
      )


def _index_of(orders: tuple[float, ...], value: float) -> int:
  for i, a in enumerate(orders):
    if math.isclose(a, value):
      return i
  raise ValueError(f"order {value} not in {orders}")


def _lsi(config: Config, tau_u: float) -> tuple[float, str, str]:
  """(C_LSI, status, note): certified for L2-regularised logistic regression, else given or assumed."""
  tr, pv = config.training, config.privacy
  convex = config.model.name == "logistic_regression" and tr.weight_decay > 0
  if pv.lsi_constant is None:
    lsi = float(certify.lsi_constant_strongly_convex(tau_u, tr.weight_decay))
    return (
      lsi,
      "certified",
      f"certified: L2-regularised logistic regression is m-strongly convex, C_LSI = 2τ/m = {lsi:.4g}",
    )
  lsi = pv.lsi_constant
  if convex:
    return lsi, "given", f"given in the config: C_LSI = {lsi:.4g} (2τ/m would be {2 * tau_u / tr.weight_decay:.4g})"
  return (
    lsi,
    "assumed",
    (
      f"assumed C_LSI = {lsi:.4g} (config value; model {config.model.name!r} is not convex, "
      "so the certificate rests on this assumption)"
    ),
  )


def certify_examples(ctx: Context, s: Setup, trained: Trained) -> Certificates:
  """Turns each example's P(x, 4α) into certified steps to unlearn (theory §4)."""
  config = ctx.config
  tr, pv, uc = config.training, config.privacy, config.unlearning
  i4 = _index_of(pv.orders, 4 * pv.alpha)
  p4 = trained.realized_mean[:, i4]
  eta_u = uc.step_size if uc.step_size is not None else tr.step_size
  tau_u = uc.temperature if uc.temperature is not None else tr.ledger_temperature
  lsi, status, note = _lsi(config, tau_u)
  constants = dict(alpha=pv.alpha, step_size=eta_u, temperature=tau_u, lsi_constant=lsi, e1=pv.e1, e2=pv.e2)
  certified = np.asarray(certify.steps_to_unlearn(jnp.asarray(p4), pv.epsilon, **constants), dtype=np.float64)
  result = Certificates(
    pv.alpha,
    i4,
    p4,
    constants,
    status,
    note,
    certify.certificate_assumptions(pv.e1, pv.e2),
    certified,
    2 * tau_u / lsi,
    s.step["clip_norm"],
    s.num_examples,
  )
  ctx.tick("certify")
  return result


def _train_on_halves(ctx: Context, s: Setup) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
  """``() -> (correct (R, n), in_mask (R, n))`` of R models trained on random halves (memorization)."""
  tr, mc = ctx.config.training, ctx.config.metrics

  def run():
    key = ctx.keys["memorization"]
    masks = np.asarray(metrics.random_half_masks(key, mc.memorization_models, s.num_examples))
    mem_steps = mc.memorization_steps or tr.num_steps
    ctx.stage(f"memorization: {mc.memorization_models} models on random halves x {mem_steps} steps")
    correct = []
    for r in range(mc.memorization_models):
      res = runtime.train(
        s.loss_fn,
        s.init_fn,
        s.train_data,
        num_steps=mem_steps,
        key=jax.random.fold_in(key, r),
        step_size=tr.step_size,
        temperature=tr.temperature,
        data_mask=s.as_mask(masks[r]),
        steps_per_chunk=max(1, min(100, mem_steps)),
        history_stride=max(1, mem_steps // 10),
        progress=False,
        **s.step,
      )
      correct.append(np.asarray(call(metrics.correctness, (s.apply_fn,), res.state.params, s.x, s.y)))
    return np.stack(correct), masks

  return run


def compute_metrics(ctx: Context, s: Setup, trained: Trained) -> dict[str, np.ndarray]:
  """Stage 3: every configured difficulty metric for every training example (``evaluate.METRICS``)."""
  names = ctx.config.metrics.names
  ctx.stage(f"difficulty metrics: {', '.join(names)}")
  inputs = MetricInputs(
    s.apply_fn,
    s.loss_fn,
    s.x,
    s.y,
    trained.params,
    _compile.take(trained.checkpoints, trained.early_index),
    trained.checkpoints,
    _train_on_halves(ctx, s),
  )
  values = {name: np.asarray(METRICS[name].compute(inputs), dtype=np.float64) for name in names}
  ctx.tick("metrics")
  return values


class ForgetSet(NamedTuple):
  """A forget set: how it was chosen and its example indices."""

  label: str
  indices: np.ndarray


def tie_break_key(s: Setup, trained: Trained) -> np.ndarray:
  """(n,) the unclipped per-example gradient norm at the end of training, averaged over the chains: the
  secondary key of privacy-loss selections (the clip saturates P, not this norm)."""
  first = jax.tree.map(lambda leaf: leaf[0], trained.params)
  rows = per_example.api.norm_pass_rows(s.loss_fn, first, (s.x, s.y))  # the same for every chain
  norms = [
    np.asarray(
      per_example.per_example_grad_norms(
        s.loss_fn, jax.tree.map(lambda leaf, r=r: leaf[r], trained.params), (s.x, s.y), chunk_size=rows
      )
    )
    for r in range(int(jax.tree.leaves(trained.params)[0].shape[0]))
  ]
  return np.mean(np.stack(norms), axis=0).astype(np.float64)


def _bin_sets(fc, name: str, scores: np.ndarray, key: jax.Array, salt: int) -> list[ForgetSet]:
  """``sets_per_bin`` random sets from each quantile bin of ``scores`` (bin 0: the easiest)."""
  q, sets = fc.privacy_loss_bins, []
  for b in range(q):
    for j in range(fc.sets_per_bin):
      k = jax.random.fold_in(key, salt + 1000 + b if j == 0 else salt + 100_000 + 1000 * j + b)
      idx = selection.select_forget_set(scores, f"bin:{b}/{q}", size=fc.size, key=k)
      suffix = "" if fc.sets_per_bin == 1 else f"#{j}"
      sets.append(ForgetSet(f"{name}:bin{b}/{q}{suffix}", np.asarray(idx)))
  return sets


SECOND_CLIP_TOP = "privacy_loss@clip2:top"


def quantile_label(q: float) -> str:
  """The label of the forget set around the q-quantile of privacy loss, e.g. ``privacy_loss:q0.9``."""
  return f"privacy_loss:q{q:g}"


def select_forget_sets(
  ctx: Context,
  certs: Certificates,
  metric_values: dict[str, np.ndarray],
  tie_break: np.ndarray | None = None,
  second_p4: np.ndarray | None = None,
) -> list[ForgetSet]:
  """Stage 4: forget sets by privacy loss (ties broken by ``tie_break``), by each metric, at random and
  from privacy-loss quantile bins (theory §6)."""
  fc, key = ctx.config.forget_sets, ctx.keys["select"]
  p4 = certs.privacy_loss
  scores = {"privacy_loss": p4, **metric_values}
  sets = []
  for j, sel in enumerate(fc.selections):
    if sel == "random":
      idx = selection.select_forget_set(p4, "random", size=fc.size, key=jax.random.fold_in(key, j))
    elif sel.startswith("privacy_loss:"):
      idx = selection.select_forget_set(
        p4, sel.split(":")[1], size=fc.size, tie_break=tie_break, ties_within=fc.ties_within
      )
    else:
      name, kind = sel.split(":")
      idx = selection.select_forget_set(np.nan_to_num(METRICS[name].sign * scores[name], nan=0.0), kind, size=fc.size)
    sets.append(ForgetSet(sel, np.asarray(idx)))
  if second_p4 is not None:  # the top set by P at the second clip norm, unlearned from the main models
    idx = selection.select_forget_set(second_p4, "top", size=fc.size, tie_break=tie_break, ties_within=fc.ties_within)
    sets.append(ForgetSet(SECOND_CLIP_TOP, np.asarray(idx)))
  for q in fc.privacy_loss_quantiles:
    sets.append(ForgetSet(quantile_label(q), np.asarray(selection.around_quantile(p4, q, fc.size))))
  sets += _bin_sets(fc, "privacy_loss", p4, key, 0)
  for m, name in enumerate(fc.metric_bins, 1):  # oriented so that bin 0 is the easiest by the metric
    oriented = np.nan_to_num(METRICS[name].sign * metric_values[name], nan=0.0)
    sets += _bin_sets(fc, name, oriented, key, 1_000_000 * m)
  ctx.tick("select")
  return sets
