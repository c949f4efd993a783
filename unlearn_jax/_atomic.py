"""Atomic output files: every file is written to a fresh temporary file beside it, then renamed over it.

A reader, or a run killed at any instant, sees either the previous complete file or the new complete
one — never a truncated CSV that parses as a shorter table. The temporary file is created with
``O_CREAT | O_EXCL`` (``tempfile.mkstemp``) and ``os.replace`` renames over a symbolic link rather than
through it, so a link planted at an output's name is never followed.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from collections.abc import Callable

__all__ = ["replace_into", "write_bytes", "write_text"]


def replace_into(path: str | os.PathLike, write: Callable[[str], None]) -> pathlib.Path:
  """Calls ``write(tmp)`` on a new temporary file beside ``path``, then renames it to ``path``.

  The temporary name keeps ``path``'s suffix (``np.savez`` and ``savefig`` choose formats by it).

  Examples:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> _ = replace_into(p, lambda tmp: pathlib.Path(tmp).write_text("hi"))
    >>> p.read_text(), sorted(f.name for f in p.parent.iterdir())
    ('hi', ['a.txt'])
  """
  path = pathlib.Path(path)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
  os.close(fd)
  try:
    write(tmp)
    with open(tmp, "rb+") as f:
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    try:
      os.unlink(tmp)
    except FileNotFoundError:
      pass
    raise
  return path


def write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
  """Writes ``text`` (UTF-8) to ``path`` atomically."""
  return replace_into(path, lambda tmp: pathlib.Path(tmp).write_text(text, encoding="utf-8"))


def write_bytes(path: str | os.PathLike, data: bytes) -> pathlib.Path:
  """Writes ``data`` to ``path`` atomically."""
  return replace_into(path, lambda tmp: pathlib.Path(tmp).write_bytes(data))
