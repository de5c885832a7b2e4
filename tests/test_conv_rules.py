"""The convolution rule (``_conv``, eqs. 5-18): forward and both gradients
against three independent oracles, ``jax.vjp`` of ``lax.conv_general_dilated``
in float64 at HIGHEST precision, the slow transcription in
``jaxconv.reference`` (scatter form of the input gradient), and finite
differences; eagerly and under ``jit`` and ``vmap``, and to second order.

The algorithms that evaluate each convolution are tested in
test_algorithms.py, the policy that picks them in test_policy.py.
"""

from __future__ import annotations

import functools

import chex
import hypothesis
import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from jax import lax

import jaxconv
from jaxconv import reference
from tests.conv_cases import (
    FIXED,
    FIXED_IDS,
    Case,
    compare_with_lax,
    conv_cases,
    jaxconv_conv,
    lax_conv,
)
from tests.helpers import TOLERANCE, assert_close, examples, scaled_error


@hypothesis.settings(max_examples=examples(40), deadline=None)
@hypothesis.given(case=conv_cases())
def test_matches_lax_float64(case):
  compare_with_lax(case, jnp.float64)


@hypothesis.settings(max_examples=examples(15), deadline=None)
@hypothesis.given(case=conv_cases(max_rank=2))
def test_matches_lax_float32(case):
  compare_with_lax(case, jnp.float32)


@hypothesis.settings(max_examples=examples(20), deadline=None)
@hypothesis.given(case=conv_cases())
def test_matches_reference(case):
  """The literal equations (scatter-form input gradient) agree."""
  lhs, rhs = case.arrays(jnp.float64)
  kw = case.kwargs
  dnums = kw["dimension_numbers"]
  geometry = jaxconv.make_conv_geometry(lhs.shape, rhs.shape, **kw)
  out, pullback = jax.vjp(jaxconv_conv(case), lhs, rhs)
  cotangent = jnp.asarray(np.random.default_rng(3).normal(size=out.shape))
  lhs_grad, rhs_grad = pullback(cotangent)
  args = dict(strides=geometry.window_strides, padding=geometry.padding,
              lhs_dilation=geometry.lhs_dilation,
              rhs_dilation=geometry.rhs_dilation,
              feature_group_count=geometry.feature_group_count,
              batch_group_count=geometry.batch_group_count)
  x = reference.to_canonical(lhs, dnums.lhs_spec)
  w = reference.to_canonical(rhs, dnums.rhs_spec)
  delta = reference.to_canonical(cotangent, dnums.out_spec)
  ref_out = reference.conv_forward(x, w, **args)
  ref_lhs_grad = reference.conv_input_grad(delta, w, x.shape, **args)
  ref_rhs_grad = reference.conv_kernel_grad(x, delta, w.shape, **args)
  assert_close(out, reference.from_canonical(ref_out, dnums.out_spec),
               jnp.float64, "forward")
  assert_close(lhs_grad, reference.from_canonical(ref_lhs_grad, dnums.lhs_spec),
               jnp.float64, "input gradient")
  assert_close(rhs_grad, reference.from_canonical(ref_rhs_grad, dnums.rhs_spec),
               jnp.float64, "kernel gradient")


@pytest.mark.parametrize("case", FIXED, ids=FIXED_IDS)
def test_fixed_cases_float32(case):
  compare_with_lax(case, jnp.float32)


@pytest.mark.parametrize("case", FIXED[:3], ids=FIXED_IDS[:3])
def test_check_grads_order_two(case):
  """Finite differences through the VJP and the VJP of the VJP."""
  lhs, rhs = case.arrays(jnp.float64)
  jax.test_util.check_grads(jaxconv_conv(case), (lhs, rhs), order=2,
                            modes=("rev",))


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("case", FIXED[:2], ids=FIXED_IDS[:2])
def test_low_precision(case, dtype):
  compare_with_lax(case, dtype)


def test_preferred_element_type():
  """bfloat16 inputs, float32 result: gradients come back in bfloat16."""
  case = FIXED[1]
  lhs, rhs = case.arrays(jnp.bfloat16)
  f = functools.partial(jaxconv.conv_general_dilated,
                        preferred_element_type=jnp.float32, **case.kwargs)
  g = functools.partial(lax.conv_general_dilated,
                        preferred_element_type=jnp.float32, **case.kwargs)
  out, pullback = jax.vjp(f, lhs, rhs)
  ref_out, ref_pullback = jax.vjp(g, lhs, rhs)
  assert out.dtype == jnp.float32
  np.testing.assert_array_equal(out, ref_out)
  cotangent = jnp.asarray(np.random.default_rng(0).normal(size=out.shape),
                          jnp.float32)
  for grad, ref_grad in zip(pullback(cotangent), ref_pullback(cotangent)):
    assert grad.dtype == jnp.bfloat16
    assert_close(grad, ref_grad, jnp.bfloat16)


def test_jaxpr_carries_custom_vjp():
  case = FIXED[0]
  lhs, rhs = case.arrays(jnp.float32)
  jaxpr = str(jax.make_jaxpr(jaxconv_conv(case))(lhs, rhs))
  assert "custom_vjp_call" in jaxpr
  grad_jaxpr = str(jax.make_jaxpr(jax.grad(
      lambda x, w: jnp.sum(jaxconv_conv(case)(x, w) ** 2)))(lhs, rhs))
  # The backward is made of jaxconv's own convolutions, not lax's transposes.
  assert "custom_vjp_call" in grad_jaxpr


@pytest.mark.parametrize("case", FIXED, ids=FIXED_IDS)
def test_jit_vmap_and_second_order(case):
  lhs, rhs = case.arrays(jnp.float64)
  ours, theirs = jaxconv_conv(case), lax_conv(case)

  def penalty(conv):
    # A gradient penalty: the squared norm of d(sum tanh(y))/dx, as a
    # function of the kernel. Needs the backward of the backward.
    def loss(x, w):
      grad_x = jax.grad(lambda x: jnp.sum(jnp.tanh(conv(x, w))))(x)
      return jnp.sum(grad_x ** 2) + jnp.sum(conv(x, w) ** 2)
    return loss

  ours_grad = jax.jit(jax.grad(penalty(ours), argnums=(0, 1)))(lhs, rhs)
  theirs_grad = jax.grad(penalty(theirs), argnums=(0, 1))(lhs, rhs)
  for a, b in zip(ours_grad, theirs_grad):
    assert_close(a, b, jnp.float64, "grad of gradient penalty")

  stacked = jnp.stack([lhs, lhs * 0.5 + 1.0])
  vmapped = jax.vmap(ours, in_axes=(0, None))(stacked, rhs)
  expected = jax.vmap(theirs, in_axes=(0, None))(stacked, rhs)
  assert_close(vmapped, expected, jnp.float64, "vmap forward")
  vgrad = jax.vmap(jax.grad(lambda x, w: jnp.sum(ours(x, w) ** 2), 1),
                   in_axes=(0, None))(stacked, rhs)
  egrad = jax.vmap(jax.grad(lambda x, w: jnp.sum(theirs(x, w) ** 2), 1),
                   in_axes=(0, None))(stacked, rhs)
  assert_close(vgrad, egrad, jnp.float64, "vmap of grad")


def test_jacrev_of_jacrev():
  case = Case((1, 2, 5), (2, 2, 2), dict(window_strides=(2,),
                                         padding=((1, 0),)))
  lhs, rhs = case.arrays(jnp.float64)
  f = lambda conv: lambda x: jnp.sin(conv(x, rhs)).sum()
  ours = jax.jacrev(jax.jacrev(f(jaxconv_conv(case))))(lhs)
  theirs = jax.jacrev(jax.jacrev(f(lax_conv(case))))(lhs)
  assert_close(ours, theirs, jnp.float64, "hessian")


def test_batch_zero_gradients_are_zero():
  case = Case((0, 3, 6), (2, 3, 3), dict(window_strides=(1,), padding="SAME"))
  lhs, rhs = case.arrays(jnp.float32)
  out, pullback = jax.vjp(jaxconv_conv(case), lhs, rhs)
  assert out.shape == (0, 2, 6)
  lhs_grad, rhs_grad = pullback(jnp.zeros_like(out))
  assert lhs_grad.shape == lhs.shape
  np.testing.assert_array_equal(rhs_grad, np.zeros(rhs.shape))


def test_public_gradient_pieces():
  """conv_input_grad / conv_kernel_grad / conv_bias_grad equal the VJP."""
  for case in FIXED:
    lhs, rhs = case.arrays(jnp.float64)
    out, pullback = jax.vjp(lax_conv(case), lhs, rhs)
    cotangent = jnp.asarray(np.random.default_rng(1).normal(size=out.shape))
    ref_lhs_grad, ref_rhs_grad = pullback(cotangent)
    kw = dict(case.kwargs, precision="highest")
    lhs_grad = jax.jit(
        lambda c, w, kw=kw, shape=lhs.shape: jaxconv.conv_input_grad(
            c, w, shape, **kw))(
            cotangent, rhs)
    rhs_grad = jax.jit(
        lambda x, c, kw=kw, shape=rhs.shape: jaxconv.conv_kernel_grad(
            x, c, shape, **kw))(
            lhs, cotangent)
    assert_close(lhs_grad, ref_lhs_grad, jnp.float64, "conv_input_grad")
    assert_close(rhs_grad, ref_rhs_grad, jnp.float64, "conv_kernel_grad")
  delta = jnp.arange(24.0).reshape(2, 3, 4)
  np.testing.assert_allclose(jaxconv.conv_bias_grad(delta, feature_axis=1),
                             delta.sum(axis=(0, 2)))


def test_output_shape_matches_lax():
  for case in FIXED:
    lhs, rhs = case.arrays(jnp.float32)
    geometry = jaxconv.make_conv_geometry(lhs.shape, rhs.shape, **case.kwargs)
    expected = jax.eval_shape(lax_conv(case), lhs, rhs).shape
    assert jaxconv.conv_output_shape(geometry, lhs.shape, rhs.shape) == expected


def test_scaled_error_is_not_vacuous():
  """The tolerance check fails on a gradient off by a modest factor."""
  case = FIXED[0]
  lhs, rhs = case.arrays(jnp.float64)
  _, pullback = jax.vjp(lax_conv(case), lhs, rhs)
  cotangent = jnp.ones((2, 4, 5))
  _, rhs_grad = pullback(cotangent)
  assert scaled_error(rhs_grad * 1.001, rhs_grad) > TOLERANCE[np.dtype("float32")]



class RuleVariantsTest(chex.TestCase):
  """The public function as users call it, eagerly and jitted (chex
  variants): output and both gradients against lax in float64."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_fixed_cases(self):
    for case in FIXED:
      lhs, rhs = case.arrays(jnp.float64)
      ours = self.variant(jax.value_and_grad(
          lambda x, w, case=case: jnp.sum(jnp.sin(jaxconv_conv(case)(x, w))),
          (0, 1)))
      theirs = jax.value_and_grad(
          lambda x, w, case=case: jnp.sum(jnp.sin(lax_conv(case)(x, w))),
          (0, 1))
      chex.assert_trees_all_close(ours(lhs, rhs), theirs(lhs, rhs),
                                  rtol=1e-10, atol=1e-10)
