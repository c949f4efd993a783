"""docs/ARCHITECTURE.md and docs/theory.md stay true: every function they name exists at the path they
give, every module of the package is on the map, and no module outgrows the size guide."""

from __future__ import annotations

import ast
import importlib
import pathlib
import re

import jax
import jax.numpy as jnp
import pytest

import unlearn_jax as uj
from unlearn_jax import accounting

REPO = pathlib.Path(__file__).resolve().parents[1]
DOC = (REPO / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
THEORY = (REPO / "docs" / "theory.md").read_text(encoding="utf-8")
NAMES = sorted(set(re.findall(r"`(unlearn_jax(?:\.[a-z_0-9]+)+)`", DOC + THEORY)))


def test_the_table_names_functions():
  assert len(NAMES) >= 30, NAMES


@pytest.mark.parametrize("dotted", NAMES)
def test_every_named_function_is_importable_where_the_doc_says(dotted):
  try:
    importlib.import_module(dotted)  # a module named as a whole
    return
  except ModuleNotFoundError:
    pass
  module_name, _, attr = dotted.rpartition(".")
  module = importlib.import_module(module_name)
  obj = getattr(module, attr)
  assert callable(obj), dotted
  assert getattr(obj, "__module__", module_name) == module_name, (dotted, obj.__module__)


def test_every_package_folder_and_module_is_on_the_map():
  package = REPO / "unlearn_jax"
  for folder in sorted(p for p in package.iterdir() if (p / "__init__.py").exists()):
    assert f"`{folder.name}/`" in DOC, folder.name
    for module in sorted(folder.glob("[a-z]*.py")):
      assert f"`{module.stem}`" in DOC, f"{folder.name}/{module.name}"


def _body_lines(node: ast.FunctionDef) -> int:
  """Lines of a function's body: without its signature and docstring, and without the functions it
  defines inside (those are measured on their own)."""
  body = node.body
  if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
    body = body[1:]
  if not body:
    return 0
  lines = node.end_lineno - body[0].lineno + 1
  for statement in body:
    if isinstance(statement, ast.FunctionDef):
      lines -= statement.end_lineno - statement.lineno + 1
  return lines


def test_modules_and_functions_stay_within_the_size_guide():
  # ~600 lines a module, ~80 lines a function body (signature, docstring and nested functions aside).
  long_modules, long_functions = [], []
  for path in sorted((REPO / "unlearn_jax").rglob("*.py")):
    text = path.read_text(encoding="utf-8")
    rel = str(path.relative_to(REPO / "unlearn_jax"))
    if text.count("\n") > 660:
      long_modules.append((rel, text.count("\n")))
    for node in ast.walk(ast.parse(text)):
      if isinstance(node, ast.FunctionDef) and _body_lines(node) > 80:
        long_functions.append((rel, node.name, _body_lines(node)))
  assert not long_modules, long_modules
  assert not long_functions, long_functions


def test_readme_claim_step_arguments_never_recompile():
  # README: "step size, temperature, clip norm, weight decay and projection radius are array arguments
  # of the step, so changing them never recompiles" (the mode, q, B and the accounting are structure).
  loss_fn = lambda w, ex: 0.5 * (ex[0] @ w - ex[1]) ** 2  # noqa: E731
  data = (jnp.arange(12.0).reshape(6, 2), jnp.ones(6))
  alg = uj.sgld(loss_fn, clip_norm=1.0, accounting=accounting.accountant((2.0, 4.0)))
  step = jax.jit(alg.step)
  state = alg.init(jnp.zeros(2), 6)
  for i, (eta, tau, c, wd, r) in enumerate(
    [(0.1, 1e-3, 1.0, 0.0, 5.0), (0.05, 1e-2, 3.0, 1e-2, 2.0), (1.0, 1.0, 0.5, 1.0, 9.0)]
  ):
    state, _ = step(state, data, jax.random.key(i), eta, tau, clip_norm=c, weight_decay=wd, projection_radius=r)
  assert step._cache_size() == 1
