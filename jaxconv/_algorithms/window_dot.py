"""``"window_dot"``: one contraction per output position (eq. 9 read
directly).

    y[i] = contract_{k,c}(x^[s*i + d*k], w[k])

The kernel gradient has as many outputs as the forward kernel has taps, and
each is one large matrix product over batch and positions (or, with one
output feature per group, a product summed over them; all positions are then
one reduction). Needs few output positions.
"""

from __future__ import annotations

import itertools
import math

import jax.numpy as jnp
from jax import lax

from jaxconv._algorithms import common
from jaxconv._algorithms.policy import policy_of


def supports(geometry, lhs_shape, rhs_shape, out_shape) -> bool:
  """At most ``max_unrolled`` output positions, and no empty operand."""
  if 0 in lhs_shape or 0 in rhs_shape or 0 in out_shape:
    return False
  out_spec = geometry.dimension_numbers.out_spec
  positions = math.prod(common.spatial_sizes(out_shape, out_spec))
  return positions <= policy_of(geometry).thresholds.max_unrolled


def evaluate(lhs, rhs, geometry, out_shape):
  """``y[i] = contract_{k,c}(x^[s*i + d*k], w[k])``: one term per output.

  Where the kernel has a free axis (more than one output feature per group),
  each term is a matrix product, and with several output positions the terms
  are evaluated one after another in a loop (``lax.map``), each from a
  dynamic slice of ``x^``: XLA's CPU dot cannot read a sliced window in
  place, and unrolled, the scheduler would make every window's copy before
  the first contraction.

  Where it has none (one input and one output feature per group: the kernel
  gradient of a depthwise convolution), every term is a product summed over
  the batch and the window, and all of them are one variadic reduction over
  static slices. Both operands are first transposed so that their spatial
  axes are minor: each sample's feature planes are then contiguous, and the
  reduction over a plane reads consecutive memory.
  """
  lhs_spec, rhs_spec, out_spec = geometry.dimension_numbers
  window = common.spatial_sizes(rhs.shape, rhs_spec)
  out_spatial = common.spatial_sizes(out_shape, out_spec)
  accumulate = common.accumulation_dtype(lhs.dtype,
                                         geometry.preferred_element_type)
  starts = [[s * i for s, i in zip(geometry.window_strides, position)]
            for position in itertools.product(*(range(m) for m in out_spatial))]
  if common.one_output_feature_per_group(rhs.shape[rhs_spec[0]], geometry):
    lhs, lhs_spec = _spatial_minor(lhs, lhs_spec)
    rhs, rhs_spec = _spatial_minor(rhs, rhs_spec)
    geometry = geometry._replace(dimension_numbers=lax.ConvDimensionNumbers(
        lhs_spec, rhs_spec, out_spec))
    x = common.prepared_input(lhs, geometry)
    patches = [common.window_slice(x, lhs_spec, begin, window,
                                   geometry.rhs_dilation) for begin in starts]
    terms = common.contract(patches, rhs, geometry, True, accumulate)
  else:
    x = common.prepared_input(lhs, geometry)
    extents = [d * (k - 1) + 1 for d, k in zip(geometry.rhs_dilation, window)]

    def term(begin):
      size = list(x.shape)
      at = [0] * x.ndim
      for j, (axis, extent) in enumerate(zip(lhs_spec[2:], extents)):
        at[axis], size[axis] = begin[j], extent
      patch = lax.dynamic_slice(x, [jnp.asarray(b, jnp.int32) for b in at],
                                size)
      patch = common.window_slice(patch, lhs_spec, [0] * len(window), window,
                                  geometry.rhs_dilation)
      return common.contract([patch], rhs, geometry, True, accumulate)[0]

    if len(starts) == 1:
      terms = term(starts[0])[None]
    else:
      terms = lax.map(term, jnp.asarray(starts, jnp.int32))
  # The terms have size-1 spatial axes; lay them out along those axes.
  y = common.interleave(terms, out_spec, range(len(out_spatial)), out_spatial)
  return y.astype(geometry.preferred_element_type or lhs.dtype)


def _spatial_minor(a, spec):
  """``a`` transposed so that its spatial axes (``spec[2:]``) are its minor
  ones, in order, and ``spec`` renumbered to match."""
  order = [axis for axis in range(a.ndim) if axis not in spec[2:]]
  order += list(spec[2:])
  if order == list(range(a.ndim)):
    return a, tuple(spec)
  return jnp.transpose(a, order), tuple(order.index(axis) for axis in spec)
