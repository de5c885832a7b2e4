"""Test configuration: float64 enabled so that lax in float64 can serve as oracle."""

import jax

jax.config.update("jax_enable_x64", True)
