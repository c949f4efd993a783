"""Progress in steps, with elapsed and remaining time, shared by the driver calls of one stage.

A driver called with ``progress=True`` shows a bar for its own steps; given a :class:`Progress`, it
advances that bar instead, so a stage that runs many calls (seeds one by one, one oracle per forget set)
shows one bar over all of their steps. Resumed runs say from which step they resume.
"""

from __future__ import annotations

import sys
from typing import IO

import tqdm

__all__ = ["Progress"]


class Progress:
  """A bar over ``total`` steps (tqdm: rate, elapsed and remaining time), or silent when disabled.

  Examples:
    >>> with Progress(10, "train", enabled=False) as bar:
    ...   bar.update(4)
    ...   bar.done
    4
  """

  def __init__(self, total: int, desc: str, *, enabled: bool = True, file: IO[str] | None = None, unit: str = "step"):
    self.total = int(total)
    self.done = 0
    self.enabled = bool(enabled)
    self._bar = None
    if self.enabled:
      self._bar = tqdm.tqdm(
        total=self.total,
        desc=desc,
        unit=unit,
        leave=False,
        dynamic_ncols=True,
        file=file if file is not None else sys.stderr,
      )

  def update(self, n: int) -> None:
    """Advances the bar by ``n`` steps."""
    self.done += int(n)
    if self._bar is not None:
      self._bar.update(int(n))

  def note(self, message: str) -> None:
    """A line above the bar (e.g. "resuming from step 300")."""
    if self._bar is not None:
      self._bar.write(message, file=self._bar.fp)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None

  def __enter__(self) -> Progress:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
