"""The suite has teeth: each deliberately wrong rule below is caught by the
same comparisons the rest of the suite relies on."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from jaxconv import convolution as conv_module
from tests import test_conv, test_conv_layer


def _no_rotation(rhs, spatial_axes):
  del spatial_axes
  return rhs                                   # kernel not rotated


def _forgotten_stride_dilation(geometry, lhs_shape, rhs_shape):
  derived = _real_input_geometry(geometry, lhs_shape, rhs_shape)
  return derived._replace(lhs_dilation=(1,) * len(derived.lhs_dilation))


def _zero_input_gradient(cotangent, rhs, lhs_shape, lhs_dtype, geometry):
  del cotangent, rhs, geometry
  return jnp.zeros(lhs_shape, lhs_dtype)


def _scaled_kernel_gradient(lhs, cotangent, rhs_shape, rhs_dtype, geometry):
  return 1.5 * _real_kernel_gradient(lhs, cotangent, rhs_shape, rhs_dtype,
                                     geometry)


def _mean_bias_gradient(cotangent, feature_axis):
  axes = tuple(a for a in range(cotangent.ndim) if a != feature_axis)
  return jnp.mean(cotangent, axis=axes)


_real_input_geometry = conv_module.input_gradient_geometry
_real_kernel_gradient = conv_module._kernel_gradient

WRONG_RULES = {
    "kernel not rotated": ("_rotate_180", _no_rotation),
    "stride dilation forgotten": ("input_gradient_geometry",
                                  _forgotten_stride_dilation),
    "zeroed input gradient": ("_input_gradient", _zero_input_gradient),
    "kernel gradient times 1.5": ("_kernel_gradient", _scaled_kernel_gradient),
}


@pytest.mark.parametrize("wrong", WRONG_RULES, ids=list(WRONG_RULES))
def test_wrong_rule_fails_the_lax_comparison(wrong, monkeypatch):
  name, replacement = WRONG_RULES[wrong]
  # The first fixed case has stride 2 and asymmetric padding.
  test_conv.compare_with_lax(test_conv.FIXED[0], jnp.float64)  # sane first
  monkeypatch.setattr(conv_module, name, replacement)
  with pytest.raises((AssertionError, TypeError, ValueError)):
    test_conv.compare_with_lax(test_conv.FIXED[0], jnp.float64)


def test_wrong_bias_rule_fails_the_layer_test(monkeypatch):
  case = test_conv_layer.LAYER_CASES[0]
  test_conv_layer.test_layer_matches_lax(case)
  monkeypatch.setattr(conv_module, "_bias_gradient", _mean_bias_gradient)
  with pytest.raises(AssertionError):
    test_conv_layer.test_layer_matches_lax(case)
