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
  """max |actual - expected| / max(1, max |expected|), computed in float64."""
  actual = np.asarray(actual, dtype=np.float64)
  expected = np.asarray(expected, dtype=np.float64)
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
# the complex modulus (assert_close_complex; scaled_error would drop the
# imaginary parts).
TOLERANCE[np.dtype(np.complex128)] = 1e-10
TOLERANCE[np.dtype(np.complex64)] = 1e-5


def scaled_error_complex(actual, expected) -> float:
  """max |actual - expected| / max(1, max |expected|), in complex128."""
  actual = np.asarray(actual, dtype=np.complex128)
  expected = np.asarray(expected, dtype=np.complex128)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  if expected.size == 0:
    return 0.0
  scale = max(1.0, float(np.max(np.abs(expected))))
  return float(np.max(np.abs(actual - expected))) / scale


def assert_close_complex(actual, expected, dtype, what: str = "") -> None:
  """``assert_close`` for real or complex arrays."""
  tolerance = TOLERANCE[np.dtype(dtype)]
  error = scaled_error_complex(actual, expected)
  assert error <= tolerance, (
      f"{what}: scaled error {error:.3e} exceeds {tolerance:.1e} for {dtype}")


EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def experiment_module(name: str):
  """Imports ``experiments/<name>.py`` (the folder is not a package)."""
  sys.path.insert(0, str(EXPERIMENTS))
  try:
    return importlib.import_module(name)
  finally:
    sys.path.remove(str(EXPERIMENTS))
