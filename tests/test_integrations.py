"""The examples of docs/integrations.md, run as they are written there.

Each section of the page (a plain-function model, Flax NNX, Equinox) is run
in a fresh namespace after the page's common setup block; the code blocks
carry their own asserts (the loss falls, the parameters of Flax and Equinox
layers drop into jaxconv, the gradients equal autodiff of lax). Running the
page's text, rather than a copy of it, keeps the page and the test from
drifting apart.
"""

from __future__ import annotations

import re
from pathlib import Path

import jax
import pytest

PAGE = Path(__file__).resolve().parent.parent / "docs" / "integrations.md"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)


def _sections() -> dict[str, list[str]]:
  """The python blocks of the page, by "## " section; "" is the preamble."""
  sections: dict[str, list[str]] = {}
  title = ""
  for part in re.split(r"^(## .*)$", PAGE.read_text(encoding="utf-8"),
                       flags=re.M):
    if part.startswith("## "):
      title = part[3:].strip()
    else:
      sections.setdefault(title, []).extend(_BLOCK.findall(part))
  return sections


def _run(title: str) -> dict:
  """Runs the setup and one section with JAX's default config (float32), as a
  reader would (conftest.py turns on float64 for the other tests)."""
  sections = _sections()
  assert sections.get(title), f"no python code under '## {title}' in {PAGE}"
  namespace: dict = {"__name__": f"integrations:{title}"}
  with jax.enable_x64(False):
    for i, block in enumerate(sections[""] + sections[title]):
      code = compile(block, f"{PAGE.name} [{title or 'setup'}, block {i}]",
                     "exec")
      exec(code, namespace)
  return namespace


def test_page_has_the_three_examples():
  assert {"A plain-function model", "Flax NNX", "Equinox"} <= set(_sections())


def test_plain_function_model():
  namespace = _run("A plain-function model")
  losses = namespace["losses"]
  assert len(losses) == 30 and losses[-1] < 0.5 * losses[0]


def test_flax_nnx_module():
  pytest.importorskip("flax.nnx")
  namespace = _run("Flax NNX")
  losses = namespace["losses"]
  assert len(losses) == 30 and losses[-1] < 0.5 * losses[0]


def test_equinox_module():
  pytest.importorskip("equinox")
  namespace = _run("Equinox")
  losses = namespace["losses"]
  assert len(losses) == 30 and losses[-1] < 0.5 * losses[0]


def test_batch_norm_with_running_statistics():
  """jaxconv.batch_norm in training, nnx.BatchNorm's running averages for
  inference: the module trains and classifies with the averages."""
  pytest.importorskip("flax.nnx")
  namespace = _run("Batch normalisation with running statistics")
  losses = namespace["losses"]
  assert len(losses) == 30 and losses[-1] < 0.5 * losses[0]
  assert float(namespace["accuracy"]) > 0.9


def test_explicit_sharding_example():
  """The page's sharding example, on this process's devices (one, unless
  XLA_FLAGS made more; tests/test_sharding.py runs several)."""
  namespace = _run("Explicit sharding")
  dw = namespace["dw"]
  assert dw.shape == (3, 3, 3, 16) and bool(jax.numpy.all(jax.numpy.isfinite(dw)))
