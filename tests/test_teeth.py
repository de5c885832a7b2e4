"""The convolution tests have teeth: each deliberately wrong rule below fails
the comparison with lax that the rule tests use (``conv_cases.
compare_with_lax``, ``test_conv_layer.compare_layer_with_lax``), and the same
rule rebuilt with the right pieces passes it.

A wrong rule is a value built here, never a patch of the library: a
``jax.custom_vjp`` convolution whose forward pass is jaxconv's and whose
backward pass calls jaxconv's public gradient pieces with one deliberate
mistake (``tests/rebuilt_rules.py``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jax import lax

import jaxconv
from jaxconv import convolution
from tests.conv_cases import FIXED, compare_with_lax
from tests.rebuilt_rules import conv_with
from tests.test_conv_layer import LAYER_CASES, compare_layer_with_lax

# Stride 2 and asymmetric padding (1, 2): the stride dilation and the
# rotation both matter.
CASE = FIXED[0]


def _kernel_spatial_axes(lhs_shape, rhs_shape, dimension_numbers=None):
  numbers = lax.conv_dimension_numbers(lhs_shape, rhs_shape,
                                       dimension_numbers)
  return tuple(numbers.rhs_spec[2:])


def _unrotated_input_grad(cotangent, rhs, lhs_shape, **kwargs):
  """Eq. (14) without rot180: the kernel is flipped once more before the
  public input gradient flips it, so the delta meets it unrotated."""
  axes = _kernel_spatial_axes(lhs_shape, rhs.shape,
                              kwargs.get("dimension_numbers"))
  return jaxconv.conv_input_grad(cotangent, jnp.flip(rhs, axes), lhs_shape,
                                 **kwargs)


def _undilated_input_grad(cotangent, rhs, lhs_shape, **kwargs):
  """Eq. (13) forgotten: the delta is not spread onto the stride grid. The
  convolution of eq. (14) (geometry from ``input_gradient_geometry``, kernel
  rotated) runs on the compact delta, and its result is cut or zero-filled at
  the high end to the input's shape, so that only the numbers are wrong."""
  geometry = jaxconv.make_conv_geometry(lhs_shape, rhs.shape, **kwargs)
  assert geometry.feature_group_count == geometry.batch_group_count == 1
  derived = convolution.input_gradient_geometry(geometry, lhs_shape,
                                                rhs.shape)
  lhs_spec, rhs_spec, _ = geometry.dimension_numbers
  grad = jaxconv.conv_general_dilated(
      cotangent, jnp.flip(rhs, rhs_spec[2:]), derived.window_strides,
      derived.padding, None, derived.rhs_dilation,
      derived.dimension_numbers, precision=kwargs.get("precision"))
  for axis in lhs_spec[2:]:
    size, want = grad.shape[axis], lhs_shape[axis]
    grad = lax.slice_in_dim(grad, 0, min(size, want), axis=axis)
    widths = [(0, 0)] * grad.ndim
    widths[axis] = (0, max(0, want - size))
    grad = jnp.pad(grad, widths)
  return grad


def _zero_input_grad(cotangent, rhs, lhs_shape, **kwargs):
  """No input gradient at all."""
  del cotangent, kwargs
  return jnp.zeros(lhs_shape, rhs.dtype)


def _scaled_kernel_grad(lhs, cotangent, rhs_shape, **kwargs):
  """Eq. (9) times 1.5."""
  return 1.5 * jaxconv.conv_kernel_grad(lhs, cotangent, rhs_shape, **kwargs)


WRONG_RULES = {
    "kernel not rotated": dict(input_grad=_unrotated_input_grad),
    "stride dilation forgotten": dict(input_grad=_undilated_input_grad),
    "zeroed input gradient": dict(input_grad=_zero_input_grad),
    "kernel gradient times 1.5": dict(kernel_grad=_scaled_kernel_grad),
}


def test_the_rebuilt_rule_passes_the_lax_comparison():
  """The public pieces, put together as jaxconv's rule does: no mismatch."""
  compare_with_lax(CASE, jnp.float64,
                   conv=conv_with(precision="highest", **CASE.kwargs))


@pytest.mark.parametrize("wrong", WRONG_RULES, ids=list(WRONG_RULES))
def test_wrong_rule_fails_the_lax_comparison(wrong):
  """One wrong piece in the backward pass: the comparison with lax fails
  on the numbers (not on a shape or a dtype)."""
  conv = conv_with(precision="highest", **WRONG_RULES[wrong], **CASE.kwargs)
  with pytest.raises(AssertionError, match="gradient: scaled error"):
    compare_with_lax(CASE, jnp.float64, conv=conv)


def _layer_with_bias_grad(bias_grad):
  """``jaxconv.conv`` followed by a bias whose gradient is ``bias_grad``
  (eq. 11 with ``jaxconv.conv_bias_grad``)."""

  def layer(x, w, b, **kwargs):
    @jax.custom_vjp
    def add_bias(y, b):
      return y + b

    def add_bias_fwd(y, b):
      return y + b, None

    def add_bias_bwd(residuals, cotangent):
      del residuals
      return cotangent, bias_grad(cotangent)

    add_bias.defvjp(add_bias_fwd, add_bias_bwd)
    return add_bias(jaxconv.conv(x, w, **kwargs), b)

  return layer


def _mean_bias_grad(cotangent):
  """The mean of the deltas instead of their sum."""
  return jnp.mean(cotangent.reshape(-1, cotangent.shape[-1]), axis=0)


def test_wrong_bias_rule_fails_the_layer_comparison():
  """Eq. (11) with a mean for the sum fails the layer test's comparison;
  the sum (``jaxconv.conv_bias_grad``) passes it."""
  case = LAYER_CASES[0]
  compare_layer_with_lax(case, _layer_with_bias_grad(jaxconv.conv_bias_grad))
  with pytest.raises(AssertionError, match="db: scaled error"):
    compare_layer_with_lax(case, _layer_with_bias_grad(_mean_bias_grad))
