"""TEMPORARY stand-in for jaxconv.max_pool until jaxconv/pooling.py lands.

Delete this file (and its import in models.py) once ``jaxconv.max_pool`` exists.
"""
import jax.numpy as jnp
from jax import lax


def max_pool(x, window_shape, strides=None, padding="VALID"):
  strides = window_shape if strides is None else strides
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window_shape, 1),
                           (1, *strides, 1), padding)
