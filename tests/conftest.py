"""Shared pytest fixtures."""

from __future__ import annotations

import jax
import pytest


@pytest.fixture(scope="module")
def x64():
  """float64 for a whole test module (modules that need it per test define their own ``x64``)."""
  with jax.enable_x64(True):
    yield
