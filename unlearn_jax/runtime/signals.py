"""Interrupts: SIGINT (Ctrl-C) and SIGTERM (schedulers, ``docker stop``) stop a run cleanly.

Inside a driver's host loop :class:`InterruptGuard` turns either signal into a flag that the loop checks
between jitted chunks: it writes a checkpoint (when the run has a ``checkpoint_dir``) and raises
:class:`Interrupted`, also when the signal arrived during the last chunk. A second signal interrupts at
once. Outside a guard the previous handlers apply.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["EXIT_CODES", "InterruptGuard", "Interrupted"]

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
"""Exit status of an interrupted command (128 + the signal number, the shell's convention)."""

_NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


class Interrupted(KeyboardInterrupt):
  """A signal stopped the run between two chunks after its state was saved.

  Attributes:
    step: steps done when the run stopped.
    checkpoint: path of the checkpoint written (None without ``checkpoint_dir``).
    signum: the signal (``signal.SIGINT`` or ``signal.SIGTERM``).
  """

  def __init__(self, step: int, checkpoint: str | None, signum: int = signal.SIGINT):
    self.step = int(step)
    self.checkpoint = checkpoint
    self.signum = signum
    where = f"; checkpoint saved to {checkpoint}, rerun the same call to resume" if checkpoint else ""
    super().__init__(f"interrupted by {_NAMES.get(signum, signum)} after step {self.step}{where}")

  @property
  def exit_code(self) -> int:
    return EXIT_CODES.get(self.signum, 130)


class InterruptGuard:
  """SIGINT and SIGTERM set :attr:`signum` (checked between chunks); a second one raises at once.

  Installed only in the main thread (signal handlers can be set nowhere else); elsewhere a no-op.
  """

  def __init__(self):
    self.signum: int | None = None
    self._old: dict[int, object] = {}

  @property
  def flag(self) -> bool:
    return self.signum is not None

  def _handler(self, signum, frame):
    del frame
    if self.signum is not None:
      raise Interrupted(0, None, signum)  # the second signal: at once
    self.signum = signum

  def __enter__(self) -> InterruptGuard:
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGINT, signal.SIGTERM):
        self._old[sig] = signal.signal(sig, self._handler)
    return self

  def __exit__(self, *exc) -> None:
    for sig, old in self._old.items():
      signal.signal(sig, old)
    self._old = {}
