"""Benchmark 4: the demo study end to end, with the wall time split by phase and the compile share.

Runs ``unlearn_jax.study.run`` on the demo configuration (``unlearn-jax demo``) and prints the
per-stage wall times that the pipeline records in ``timings.json``, with each stage's share of the total,
and the time JAX spent tracing, lowering and compiling (summed from ``jax.monitoring``'s duration events)
as a share of the wall time.

  python benchmarks/bench_demo.py                 # the demo as shipped
  python benchmarks/bench_demo.py --tiny          # a shrunk config: checks the script runs (seconds)
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import platform
import tempfile
import time

import jax

from unlearn_jax import study


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--tiny", action="store_true", help="shrink the study (seconds instead of minutes)")
  p.add_argument("--out", default=None, help="output directory (default: a temporary one)")
  args = p.parse_args()
  config = study.demo_config()
  if args.tiny:
    config = config.replace(
      training__num_steps=60,
      training__num_seeds=1,
      unlearning__num_seeds=4,
      unlearning__step_grid=[0, 10, 20],
      forget_sets__size=5,
      forget_sets__selections=["privacy_loss:top", "random"],
      unlearning__methods=["sgld"],
      metrics__memorization_models=2,
      evaluation__membership=False,
    )
  out = pathlib.Path(args.out or tempfile.mkdtemp(prefix="bench_demo_"))
  config = config.replace(out_dir=str(out))
  print(f"jax {jax.__version__}; devices {jax.devices()}; {platform.processor() or platform.machine()}")
  durations = collections.defaultdict(float)
  counts = collections.Counter()

  def listen(event, seconds, **kwargs):
    durations[event] += seconds
    counts[event] += 1

  jax.monitoring.register_event_duration_secs_listener(listen)
  start = time.perf_counter()
  study.run(config)
  total = time.perf_counter() - start
  timings = json.loads((out / "timings.json").read_text())
  print("\n| stage | wall s | share |\n|---|---|---|")
  for stage, sec in timings.items():
    if stage != "total":
      print(f"| {stage} | {sec:.1f} | {sec / timings['total']:.0%} |")
  print(f"| total | {timings['total']:.1f} | 100% |")
  print(f"(process wall time including imports' first compile: {total:.1f} s; output in {out})")
  print("\n| compile event (jax.monitoring) | count | s | share of wall |\n|---|---|---|---|")
  compiling = 0.0
  for event in sorted(durations):
    if any(k in event for k in ("trace", "lower", "mlir", "compile")) and "cache" not in event:
      compiling += durations[event]
      print(f"| {event} | {counts[event]} | {durations[event]:.1f} | {durations[event] / total:.0%} |")
  print(f"| all of them | | {compiling:.1f} | {compiling / total:.0%} |")


if __name__ == "__main__":
  main()
