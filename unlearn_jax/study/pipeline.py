"""The whole study in one call: the stages in order, then the outputs.

0. simulate the power of the "unlearned" test at the configured seeds and set size, and refuse a
   configuration whose test cannot reject (:func:`stages.check_test_power`);
1. train ``training.num_seeds`` chains with the per-instance ledger and keep the checkpoints the
   difficulty metrics need (:func:`stages.train_with_ledger`); one plain chain without noise or clipping
   as the accuracy baseline (:func:`stages.train_baseline`); with ``privacy.second_clip_norm``, the
   same chains again at that clip norm for a second ledger;
2. turn every example's privacy loss P(x, 4α) into certified steps to unlearn, with the worst-case
   baseline (:func:`stages.certify_examples`); the certificate is labelled certified / given / assumed
   after where C_LSI comes from, and E₁ = E₂ = 0 as the "trained to stationarity" assumption;
3. compute the difficulty metrics and pick forget sets by privacy loss (ties broken by the unclipped
   gradient norm), by each metric, at random and from quantile bins;
4. for each forget set: retrain the oracles, unlearn with every method recording the step grid, and
   measure distances, loss barriers and membership lower bounds (:mod:`study.unlearning`);
5. correlate and state the findings, then write ``report.md``, ``per_example.csv``, the figures and every
   trained, oracle and unlearned parameter tree (``params/*.msgpack``, :mod:`study.saved`; read back with
   :func:`study.load`), each atomically (temporary file, then rename); remove the outputs of an
   earlier run into the same directory that this run did not produce; write ``report.json`` last — it is
   the completion marker (deleted when a run starts, so a directory with ``report.json`` holds one
   complete run).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
import time
from typing import Any

import jax
import numpy as np

from unlearn_jax import _atomic
from unlearn_jax.evaluate import membership_resolvable_cap
from unlearn_jax.runtime import checkpoint
from unlearn_jax.study import figures, findings, report, saved, stages, unlearning
from unlearn_jax.study.config import Config

__all__ = ["OutputDirError", "run"]


class OutputDirError(OSError):
  """The output directory cannot be created or written, or another run holds its lock."""


def _prepare_out_dir(out_dir: str | os.PathLike) -> pathlib.Path:
  out = pathlib.Path(out_dir)
  try:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=out):  # a new file (O_EXCL): never writes through a planted link
      pass
  except OSError as e:
    raise OutputDirError(f"output directory {str(out)!r} cannot be created or written: {e}") from e
  return out


def _write_params(out: pathlib.Path, trained: stages.Trained, sets: list[unlearning.SetResult]) -> list[pathlib.Path]:
  """Every trained, oracle and unlearned parameter tree, in the restoring format of :mod:`study.saved`."""
  params_dir = out / "params"
  params_dir.mkdir(exist_ok=True)
  meta = {"kind": "trained", "num_seeds": int(jax.tree.leaves(trained.params)[0].shape[0])}
  written = [saved.save_params(params_dir / "trained.msgpack", trained.params, meta)]
  for i, r in enumerate(sets):
    tree = {"oracles": r.oracle.params, "unlearned": {m.method: m.params for m in r.methods}}
    meta = {"kind": "forget_set", "label": r.forget_set.label, "indices": r.forget_set.indices.tolist()}
    written.append(saved.save_params(params_dir / f"forget_set_{i}.msgpack", tree, meta))
  return written


_OUTPUT_PATTERNS = (
  "report.json",
  "report.md",
  "per_example.csv",
  "timings.json",
  "*.png",
  "params/*.msgpack",
  "params/*.npz",  # the bare-leaf format of earlier versions
)
"""What a study writes into its output directory (checkpoints/ is the resume state, kept)."""


def _remove_stale_outputs(out: pathlib.Path, produced: set[pathlib.Path]) -> list[str]:
  """Deletes outputs of an earlier run into ``out`` that this run did not produce; returns their names."""
  stale = sorted({p for pattern in _OUTPUT_PATTERNS for p in out.glob(pattern)} - produced)
  for p in stale:
    p.unlink(missing_ok=True)
  return [str(p.relative_to(out)) for p in stale]


def _run_stages(ctx: stages.Context) -> dict[str, Any]:
  config = ctx.config
  power = stages.check_test_power(ctx)
  s = stages.setup(ctx)
  trained = stages.train_with_ledger(ctx, s)
  baseline = stages.train_baseline(ctx, s)
  c2 = config.privacy.second_clip_norm
  second = None if c2 is None else stages.train_with_ledger(ctx, s, clip_norm=c2, name="train_clip2")
  certs = stages.certify_examples(ctx, s, trained)
  metric_values = stages.compute_metrics(ctx, s, trained)
  second_p4 = None if second is None else second.realized_mean[:, certs.order_index]
  forget_sets = stages.select_forget_sets(ctx, certs, metric_values, stages.tie_break_key(s, trained), second_p4)
  sets, _ = unlearning.unlearn_forget_sets(ctx, s, trained, certs, forget_sets)
  methods = tuple(config.unlearning.methods)
  corr = findings.correlate(certs, metric_values, sets, methods, trained.per_seed_p4)
  ctx.tick("correlations")
  result = report.build_report(config, s, trained, certs, sets, corr, power, baseline)
  if second is not None:
    result["second_clip"] = findings.second_clip(config, certs, second_p4, metric_values, sets)
  produced = set(_write_params(ctx.out, trained, sets))
  produced.add(
    report.write_per_example_csv(
      ctx.out / "per_example.csv",
      np.asarray(s.dataset.y_train),
      certs.privacy_loss,
      certs.certified_steps,
      {k: metric_values[k] for k in config.metrics.names},
    )
  )
  cap = (
    membership_resolvable_cap(config.unlearning.num_seeds, delta=config.evaluation.delta)
    if config.evaluation.membership
    else None
  )
  result["figures"] = figures.draw_figures(
    ctx.out,
    result["privacy"],
    certs,
    sets,
    corr,
    methods,
    list(config.unlearning.step_grid),
    config.unlearning.num_seeds,
    cap,
    config.unlearning.retrain_steps or config.training.num_steps,
    ctx.stage,
  )
  produced.update(ctx.out / name for name in result["figures"].values())
  ctx.tick("outputs")
  return report.jsonable(result), produced


def _discard_checkpoints(ctx: stages.Context) -> None:
  ckpts = ctx.out / "checkpoints"
  if ckpts.is_symlink() or ckpts.is_file():
    ckpts.unlink()
  elif ckpts.is_dir():
    shutil.rmtree(ckpts)
  else:
    return
  ctx.stage(f"fresh run: removed the checkpoints of an earlier run in {ckpts}")


def _resume_error(out: pathlib.Path, e: checkpoint.CheckpointError) -> checkpoint.CheckpointError:
  what = (
    "the checkpoints of a different run (configuration, data, seed or initial parameters differ)"
    if isinstance(e, checkpoint.ForeignCheckpointError)
    else f"checkpoints this run cannot resume from ({e})"
  )
  return type(e)(
    f"the output directory {str(out)!r} holds {what} in {str(out / 'checkpoints')!r}: pass fresh=True "
    "(the command line's --fresh) to discard them and start over, or use another output directory"
  )


def run(config: Config, *, progress: bool = False, fresh: bool = False) -> dict[str, Any]:
  """Runs the whole study of ``config`` and writes the report to ``config.out_dir``.

  A run interrupted (Ctrl-C, SIGTERM, a crash) resumes from its checkpoints when called again with the
  same config; ``fresh=True`` discards the checkpoints in the output directory first and starts over.

  The same config and seed give byte-identical ``per_example.csv`` and ``report.json`` except the
  ``created`` timestamp (wall times go to ``timings.json``).

  Args:
    config: a :class:`Config`.
    progress: show progress bars (in steps, with elapsed and remaining time) and stage messages on stderr.
    fresh: discard the checkpoints of an earlier run in ``config.out_dir`` and start over.

  Returns:
    The report (the content of ``report.json``).

  Raises:
    ConfigError: a setting that only the run can check (e.g. a missing ``privacy.lsi_constant`` for a
      non-convex model).
    OutputDirError: the output directory cannot be written or another run holds it.
    CheckpointError: the output directory holds checkpoints of another run
      (``ForeignCheckpointError``) or corrupt ones; the message says to pass ``fresh=True``.
    DataMissingError: a file-based data set has no data directory.
    runtime.Interrupted: SIGINT / SIGTERM; training saved a checkpoint first.

  Examples:
    >>> import tempfile
    >>> cfg = Config.from_dict({"out_dir": tempfile.mkdtemp(), "data": {"num_train": 60, "num_test": 30},
    ...     "model": {"kwargs": {"hidden_sizes": [8]}},
    ...     "training": {"num_steps": 20, "num_seeds": 2, "num_checkpoints": 2},
    ...     "privacy": {"lsi_constant": 0.02},
    ...     "forget_sets": {"size": 4, "selections": ["privacy_loss:top", "random"]},
    ...     "unlearning": {"methods": ["sgld"], "step_grid": [0, 5], "num_seeds": 4, "retrain_steps": 20},
    ...     "metrics": {"names": ["loss", "el2n"]}})
    >>> report = run(cfg)  # doctest: +SKIP
    >>> [fs["selection"] for fs in report["forget_sets"]]  # doctest: +SKIP
    ['privacy_loss:top', 'random']
  """
  if not isinstance(config, Config):
    raise TypeError(f"config must be an unlearn_jax.study.Config, got {type(config).__name__}")
  if not isinstance(fresh, bool):
    raise TypeError(f"fresh must be a bool, got {fresh!r}")
  out = _prepare_out_dir(config.out_dir)
  lock = checkpoint.RunLock(out)
  try:
    lock.acquire()
  except checkpoint.LockError as e:
    raise OutputDirError(str(e)) from e
  try:
    start = time.perf_counter()
    (out / "report.json").unlink(missing_ok=True)  # the completion marker goes first, and comes back last
    ctx = stages.context(config, out, progress)
    if fresh:
      _discard_checkpoints(ctx)
    try:
      result, produced = _run_stages(ctx)
    except checkpoint.CheckpointError as e:
      raise _resume_error(out, e) from e
    ctx.timings["total"] = time.perf_counter() - start
    timings = json.dumps({k: round(v, 3) for k, v in ctx.timings.items()}, indent=2) + "\n"
    produced.add(_atomic.write_text(out / "timings.json", timings))
    produced.add(report.write_report_md(out / "report.md", result, ctx.timings))
    produced.add(out / "report.json")
    removed = _remove_stale_outputs(out, produced)
    if removed:
      ctx.stage(f"removed {len(removed)} output(s) of an earlier run: {', '.join(removed)}")
    report.write_report_json(out / "report.json", result)
    return result
  finally:
    lock.release()
