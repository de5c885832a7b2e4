"""Test configuration: float64 enabled so that lax in float64 can serve as
oracle, and the same property-based examples on every run."""

import os

import hypothesis
import jax

jax.config.update("jax_enable_x64", True)

# The property-based sweeps draw the same examples on every run, so that a
# failure (or a crash of the interpreter, which leaves hypothesis no chance
# to report its example) happens again on the next run.
# JAXCONV_HYPOTHESIS=explore draws fresh ones each time.
hypothesis.settings.register_profile("repeatable", derandomize=True)
hypothesis.settings.register_profile("explore", derandomize=False)
hypothesis.settings.load_profile(
    os.environ.get("JAXCONV_HYPOTHESIS", "repeatable"))
