"""``"xla"``: XLA's native convolution, ``lax.conv_general_dilated``.

Eq. (5) as XLA computes it; the choice on every backend but the CPU, and on
the CPU wherever no rule of the policy names a direct algorithm.
"""

from __future__ import annotations

from jax import lax


def supports(geometry, lhs_shape, rhs_shape, out_shape) -> bool:
  """XLA evaluates every convolution."""
  del geometry, lhs_shape, rhs_shape, out_shape
  return True


def evaluate(lhs, rhs, geometry, out_shape):
  """XLA's native convolution."""
  del out_shape
  return lax.conv_general_dilated(
      lhs, rhs,
      window_strides=geometry.window_strides,
      padding=geometry.padding,
      lhs_dilation=geometry.lhs_dilation,
      rhs_dilation=geometry.rhs_dilation,
      dimension_numbers=geometry.dimension_numbers,
      feature_group_count=geometry.feature_group_count,
      batch_group_count=geometry.batch_group_count,
      precision=geometry.precision,
      preferred_element_type=geometry.preferred_element_type,
  )
