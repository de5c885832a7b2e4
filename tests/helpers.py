"""Oracles and tolerances shared by the test modules."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

# Property-based sweeps draw examples(n) cases; JAXCONV_TEST_SCALE=10 pytest
# runs ten times as many (the default keeps the suite to a few minutes).
_SCALE = float(os.environ.get("JAXCONV_TEST_SCALE", "1"))


def examples(n: int) -> int:
  """The number of hypothesis examples for a sweep whose default is ``n``."""
  return max(1, int(round(n * _SCALE)))

# max |err| / max(1, max |ref|) against a float64 reference (testing notes).
TOLERANCE = {
    np.dtype(np.float64): 1e-10,
    np.dtype(np.float32): 1e-5,
    np.dtype(jnp.float16): 2e-3,
    np.dtype(jnp.bfloat16): 1.6e-2,
}


def scaled_error(actual, expected) -> float:
  """max |actual - expected| / max(1, max |expected|), computed in float64
  (complex128, with the complex modulus, where either side is complex)."""
  dtype = (np.complex128 if np.iscomplexobj(actual) or np.iscomplexobj(
      expected) else np.float64)
  actual = np.asarray(actual, dtype=dtype)
  expected = np.asarray(expected, dtype=dtype)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  if expected.size == 0:
    return 0.0
  scale = max(1.0, float(np.max(np.abs(expected))))
  return float(np.max(np.abs(actual - expected))) / scale


def assert_close(actual, expected, dtype, what: str = "") -> None:
  tolerance = TOLERANCE[np.dtype(dtype)]
  error = scaled_error(actual, expected)
  assert error <= tolerance, (
      f"{what}: scaled error {error:.3e} exceeds {tolerance:.1e} for {dtype}")


def vjp_of(f, *args, cotangent_seed: int = 0):
  """Output and the VJP of ``f`` at ``args`` for a random normal cotangent."""
  out, pullback = jax.vjp(f, *args)
  rng = np.random.default_rng(cotangent_seed)
  cotangent = jnp.asarray(rng.normal(size=out.shape), dtype=out.dtype)
  return out, pullback(cotangent), cotangent


# Complex dtypes: the same bounds as their real parts' dtypes, measured with
# the complex modulus (scaled_error).
TOLERANCE[np.dtype(np.complex128)] = 1e-10
TOLERANCE[np.dtype(np.complex64)] = 1e-5


BOUNDARY_MODES = ("eager", "jit", "eval_shape")


def assert_raises_at_the_boundary(f, x, error, message, mode) -> None:
  """``f(x)`` raises ``error`` matching ``message``, called eagerly, under
  ``jax.jit`` or under ``jax.eval_shape`` (``mode``): arguments are checked
  in Python, before anything is traced."""
  import pytest
  run = {"eager": lambda: f(x),
         "jit": lambda: jax.jit(f)(x),
         "eval_shape": lambda: jax.eval_shape(f, x)}[mode]
  with pytest.raises(error, match=message):
    run()


EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def experiment_module(name: str):
  """Imports ``experiments/<name>.py`` (the folder is not a package)."""
  sys.path.insert(0, str(EXPERIMENTS))
  try:
    return importlib.import_module(name)
  finally:
    sys.path.remove(str(EXPERIMENTS))
