"""Which value meets which, read off the library: the wiring of a convolution
and of a pooling window, for one example and one channel.

Nothing is derived here a second time. Which input each weight multiplies for
each output is read off the tied-weight matrix of
``jaxconv.reference.conv_matrix`` (eq. 20 of ``docs/derivation.md``), built
with the geometry that ``jaxconv.make_conv_geometry`` normalises; which
positions a pooling window covers, and the divisor of an average, come from
``jaxconv.avg_pool_grad``.
"""

from __future__ import annotations

import dataclasses
import fractions
import math

import jax
import jax.numpy as jnp
import numpy as np

import jaxconv
from jaxconv import reference

# Largest case explained: the tied-weight matrix has (outputs x inputs)
# entries per weight, and nobody reads a thousand equations.
MAX_INPUTS = 1024
MAX_WEIGHTS = 64


@dataclasses.dataclass(frozen=True)
class ConvWiring:
  """Which input each weight multiplies for each output.

  ``taps[g]`` lists ``(q, v)``: output ``g`` contains ``input[v] * weight[q]``,
  in the order of the weights ``q`` (taps on padding are absent: they
  multiply 0).
  """

  input_shape: tuple[int, ...]
  kernel_shape: tuple[int, ...]
  output_shape: tuple[int, ...]
  geometry: jaxconv.ConvGeometry
  taps: tuple[tuple[tuple[int, int], ...], ...]


def padding_pairs(padding, n: int):
  """A padding string as it is; an int, one int per dimension or one pair per
  dimension (or a single entry for all) as ``(lo, hi)`` pairs."""
  if isinstance(padding, str):
    return padding
  if isinstance(padding, (int, np.integer)):
    return ((int(padding), int(padding)),) * n
  entries = list(padding)
  if len(entries) == 1 and n > 1:
    entries = entries * n
  return tuple((int(e), int(e)) if isinstance(e, (int, np.integer))
               else tuple(e) for e in entries)


def conv_wiring(input_shape, kernel_shape, stride, padding,
                dilation) -> ConvWiring:
  """The wiring of a convolution, validated as the library validates it.

  Raises:
    ValueError: ranks that differ, a case too large to write out, or a
      geometry the library refuses (its own message).
  """
  input_shape = tuple(input_shape)
  kernel_shape = tuple(kernel_shape)
  if len(input_shape) != len(kernel_shape) or not input_shape:
    raise ValueError(
        f"`input` and `kernel` must have the same number (>= 1) of spatial "
        f"dimensions, got input {input_shape} and kernel {kernel_shape}.")
  if (math.prod(input_shape) > MAX_INPUTS
      or math.prod(kernel_shape) > MAX_WEIGHTS):
    raise ValueError(
        f"explain writes out every product; it takes at most {MAX_INPUTS} "
        f"inputs and {MAX_WEIGHTS} weights, got input {input_shape} and "
        f"kernel {kernel_shape}.")
  geometry = jaxconv.make_conv_geometry(
      (1, 1) + input_shape, (1, 1) + kernel_shape, stride,
      padding_pairs(padding, len(input_shape)), None, dilation)
  output_shape = jaxconv.conv_output_shape(
      geometry, (1, 1) + input_shape, (1, 1) + kernel_shape)[2:]
  outputs = math.prod(output_shape)
  weights = math.prod(kernel_shape)
  taps: list[list[tuple[int, int]]] = [[] for _ in range(outputs)]
  for q in range(weights):
    # The tied-weight matrix (eq. 20) of a kernel that is 1 at weight q and 0
    # elsewhere: entry (g, v) is 1 exactly where weight q multiplies input v
    # in output g.
    one_hot = np.zeros(weights)
    one_hot[q] = 1.0
    matrix = reference.conv_matrix(
        one_hot.reshape((1, 1) + kernel_shape), input_shape,
        strides=geometry.window_strides, padding=geometry.padding,
        rhs_dilation=geometry.rhs_dilation)
    if matrix.shape != (outputs, math.prod(input_shape)):
      raise RuntimeError(
          f"jaxconv.reference.conv_matrix gives {matrix.shape[0]} outputs, "
          f"jaxconv.conv_output_shape {outputs}: the two disagree.")
    for g, v in zip(*np.nonzero(matrix)):
      taps[int(g)].append((q, int(v)))
  return ConvWiring(input_shape, kernel_shape, tuple(output_shape), geometry,
                    tuple(tuple(t) for t in taps))


@dataclasses.dataclass(frozen=True)
class PoolWiring:
  """``members[p]`` lists ``(j, 1 / D_p)`` for the input positions ``j`` that
  window ``p`` covers, in window order; ``D_p`` is the divisor of an
  average."""

  kind: str
  window: tuple[int, ...]
  strides: tuple[int, ...]
  padding: object
  input_shape: tuple[int, ...]
  output_shape: tuple[int, ...]
  members: tuple[tuple[tuple[int, fractions.Fraction], ...], ...]


def pool_wiring(kind, input_shape, window, strides, padding) -> PoolWiring:
  """The windows of a pooling stage, validated as the library validates them.

  ``strides=None`` is the library's default: 1 in every dimension.

  Raises:
    ValueError: an unknown kind or a geometry the library refuses.
  """
  if kind not in ("max", "avg"):
    raise ValueError(f"`pool` kind must be 'max' or 'avg', got {kind!r}.")
  window = tuple(window)
  input_shape = tuple(input_shape)
  if len(window) != len(input_shape):
    raise ValueError(
        f"the pooling window {shape_of(window)} must have one size per "
        f"spatial dimension of its input {shape_of(input_shape)}.")
  padding = padding_pairs(padding, len(window))
  features = input_shape + (1,)
  pool = jaxconv.max_pool if kind == "max" else jaxconv.avg_pool
  # Validates the geometry the way the library does, and gives the shape.
  pooled = jax.eval_shape(lambda x: pool(x, window, strides, padding),
                          jax.ShapeDtypeStruct(features, jnp.float32))
  output_shape = tuple(pooled.shape[:-1])
  members = []
  for p in range(math.prod(output_shape)):
    # The average-pool gradient of a cotangent that is 1 at output p: 1 / D_p
    # on every real position of window p, 0 elsewhere.
    cotangent = np.zeros(math.prod(output_shape))
    cotangent[p] = 1.0
    spread = jaxconv.avg_pool_grad(
        jax.ShapeDtypeStruct(features, jnp.float32),
        jnp.asarray(cotangent.reshape(pooled.shape), jnp.float32), window,
        strides, padding, count_include_pad=True)
    spread = np.asarray(spread, dtype=np.float64).ravel()
    members.append(tuple(
        (int(j), fractions.Fraction(float(spread[j])).limit_denominator(10**6))
        for j in np.flatnonzero(spread)))
  if strides is None:
    strides = 1
  if isinstance(strides, (int, np.integer)):
    strides = (int(strides),) * len(window)
  return PoolWiring(kind, window, tuple(strides), padding, input_shape,
                    output_shape, tuple(members))


def shape_of(shape) -> str:
  return "x".join(str(s) for s in shape)
