"""One process of the two-process ("multi-host") check of test_distributed.py.

``tests/test_distributed.py`` starts two of these on localhost, each with 2 forced CPU devices; they
join through ``jax.distributed.initialize`` (gloo CPU collectives), build ``distributed.make_mesh()``
over the 4 global devices and run the same ``loops.train`` call (``reduction_blocks=8``) as on one
host. Process 0 also runs the one-device reference (plain arrays) and writes the differences to a
JSON file.

Usage: python tests/multihost_worker.py PROCESS_ID PORT OUT.json

Importing this file does nothing (pytest --doctest-modules imports it).
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def main(argv):
  process_id, port, out_path = int(argv[1]), int(argv[2]), argv[3]
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax

  jax.config.update("jax_enable_x64", True)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id, initialization_timeout=60
  )
  out = {
    "process_index": jax.process_index(),
    "process_count": jax.process_count(),
    "device_count": jax.device_count(),
    "local_device_count": jax.local_device_count(),
  }
  try:
    import numpy as np
    from jax.experimental import multihost_utils

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import distributed_worker as w

    from unlearn_jax.runtime import distributed

    params, data, loss_fn, _ = w._problem(13, np.float64)
    kw = dict(accounting=w._accounting(filter_budget=w.FULL_BATCH_BUDGET), clip_norm=1.0, reduction_blocks=8)
    mesh = distributed.make_mesh()
    out["mesh_shape"] = dict(mesh.shape)
    got = w._train(loss_fn, params, data, mesh=mesh, **kw)
    # The recipe of docs/distributed.md: gather the (unpadded, sharded across processes) ledger.
    realized = multihost_utils.process_allgather(got.ledger.realized, tiled=True)
    active = multihost_utils.process_allgather(got.ledger.active, tiled=True)
    out["realized_fully_addressable"] = bool(got.ledger.realized.is_fully_addressable)
    got_vals = {
      "params": jax.tree.map(np.asarray, got.params),
      "loss": np.asarray(got.history["loss"]),
      "realized": np.asarray(realized),
      "active": np.asarray(active),
    }
    if process_id == 0:
      with jax.default_device(jax.local_devices()[0]):
        ref = w._train(loss_fn, params, data, **kw)
      ref_vals = {
        "params": ref.params,
        "loss": ref.history["loss"],
        "realized": ref.ledger.realized,
        "active": ref.ledger.active,
      }
      for k in ref_vals:
        w._compare(out, k, ref_vals[k], got_vals[k])
      out["num_inactive"] = int(np.sum(~np.asarray(ref.ledger.active)))
  except Exception as e:  # reported to the test, which fails on it
    out["error"] = f"{type(e).__name__}: {e}"
    out["traceback"] = traceback.format_exc()
  if process_id == 0:
    with open(out_path, "w") as f:
      json.dump(out, f, indent=1)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(sys.argv)
