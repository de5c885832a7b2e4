"""``"shifted"``: one term per kernel tap (eq. 5 summed tap by tap).

    y = sum_k contract_c(x^[s*i + d*k], w[k])

A 1x1 kernel is then a single matrix product over the channels, a depthwise
kernel a fused elementwise multiply-add. Needs few taps.
"""

from __future__ import annotations

import itertools
import math

from jaxconv._algorithms import common
from jaxconv._algorithms.policy import policy_of


def supports(geometry, lhs_shape, rhs_shape, out_shape) -> bool:
  """At most ``max_unrolled`` kernel taps, and no empty operand."""
  if 0 in lhs_shape or 0 in rhs_shape or 0 in out_shape:
    return False
  rhs_spec = geometry.dimension_numbers.rhs_spec
  taps = math.prod(common.spatial_sizes(rhs_shape, rhs_spec))
  return taps <= policy_of(geometry).thresholds.max_unrolled


def evaluate(lhs, rhs, geometry, out_shape):
  """``y = sum_k contract_c(x^[s*i + d*k], w[k])``: one term per kernel tap."""
  lhs_spec, rhs_spec, out_spec = geometry.dimension_numbers
  x = common.prepared_input(lhs, geometry)
  window = common.spatial_sizes(rhs.shape, rhs_spec)
  out_spatial = common.spatial_sizes(out_shape, out_spec)
  accumulate = common.accumulation_dtype(lhs.dtype,
                                         geometry.preferred_element_type)
  total = None
  for tap in itertools.product(*(range(k) for k in window)):
    starts = [d * k for d, k in zip(geometry.rhs_dilation, tap)]
    patch = common.window_slice(x, lhs_spec, starts, out_spatial,
                                geometry.window_strides)
    index = [slice(None)] * rhs.ndim
    for axis, k in zip(rhs_spec[2:], tap):
      index[axis] = k
    [term] = common.contract([patch], rhs[tuple(index)], geometry, False,
                             accumulate)
    total = term if total is None else total + term
  return total.astype(geometry.preferred_element_type or lhs.dtype)
