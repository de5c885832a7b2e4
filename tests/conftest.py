"""Test configuration: float64 enabled so that lax in float64 can serve as
oracle, the same property-based examples on every run, and the algorithm
policy pinned to XLA's default CPU kernel."""

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
  pinned here, so that they hold under any ``XLA_FLAGS``. The tests of the
  other setting set it themselves; the probe that decides it by default is
  tested in fresh interpreters (test_conv.py)."""
  monkeypatch.setattr(_algorithms, "XLA_YNNPACK_CONVOLUTIONS", True)
