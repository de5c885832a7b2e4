"""Test configuration: float64 enabled so that lax in float64 can serve as
oracle, the same property-based examples on every run, and the algorithm
policy pinned to XLA's default CPU kernel, without "grown"."""

import os

import hypothesis
import jax
import pytest

from jaxconv import _algorithms

jax.config.update("jax_enable_x64", True)

# The property-based sweeps draw the same examples on every run, so that a
# failure (or a crash of the interpreter, which leaves hypothesis no chance
# to report its example) happens again on the next run.
# JAXCONV_HYPOTHESIS=explore draws fresh ones each time.
hypothesis.settings.register_profile("repeatable", derandomize=True)
hypothesis.settings.register_profile("explore", derandomize=False)
hypothesis.settings.load_profile(
    os.environ.get("JAXCONV_HYPOTHESIS", "repeatable"))


@pytest.fixture(autouse=True)
def _policy_measured_with_ynnpack(monkeypatch):
  """The policy's rules were measured with XLA's default CPU kernel for 2-D
  convolutions, YNNPACK's, and the tests that name its choices expect those:
  pinned here, so that they hold under any ``XLA_FLAGS`` and jax version;
  so is "grown" off (``GROW_OUTPUTS``), the rule that steps around YNNPACK
  and that comes before most of them. The tests of the other settings set
  them themselves; the probes that decide them by default are tested in
  fresh interpreters (test_conv.py), and "grown" runs with the other
  algorithms against the oracles."""
  monkeypatch.setattr(_algorithms, "XLA_YNNPACK_CONVOLUTIONS", True)
  monkeypatch.setattr(_algorithms, "GROW_OUTPUTS", False)
