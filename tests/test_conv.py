"""conv_general_dilated: forward and both gradients against lax and the reference.

Three independent oracles: ``jax.vjp`` of ``lax.conv_general_dilated`` in
float64 at HIGHEST precision, the slow transcription in ``jaxconv.reference``
(scatter form of the input gradient), and finite differences.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import subprocess
import sys

import hypothesis
import hypothesis.strategies as st
import jax
import jax.test_util  # noqa: F401  (check_grads)
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxconv
from jaxconv import _algorithms, reference
from tests.helpers import TOLERANCE, assert_close, examples, scaled_error


@dataclasses.dataclass(frozen=True)
class Case:
  """One convolution: shapes in its own layout plus every lax argument."""

  lhs_shape: tuple[int, ...]
  rhs_shape: tuple[int, ...]
  kwargs: dict = dataclasses.field(hash=False)

  def arrays(self, dtype, seed=0):
    rng = np.random.default_rng(seed)
    lhs = rng.normal(size=self.lhs_shape)
    rhs = rng.normal(size=self.rhs_shape)
    return jnp.asarray(lhs, dtype), jnp.asarray(rhs, dtype)


def _place(canonical_shape, spec):
  """Shape in a layout: canonical axis i goes to position spec[i]."""
  shape = [0] * len(spec)
  for size, axis in zip(canonical_shape, spec):
    shape[axis] = size
  return tuple(shape)


@st.composite
def conv_cases(draw, max_rank=3):
  """Random geometries over ranks 1-3, every padding kind, dilations, groups,
  batch groups, batch 0 and arbitrary layouts."""
  n = draw(st.integers(1, max_rank))
  small = n == 3
  grouping = draw(st.sampled_from(["none", "feature", "batch"]))
  groups = draw(st.integers(2, 3)) if grouping == "feature" else 1
  batch_groups = draw(st.integers(2, 3)) if grouping == "batch" else 1
  in_per_group = draw(st.integers(1, 2))
  out_per_group = draw(st.integers(1, 2))
  batch = batch_groups * draw(st.sampled_from([0, 1, 1, 2]))
  channels = groups * in_per_group
  out_features = groups * batch_groups * out_per_group
  kernel = [draw(st.integers(1, 2 if small else 3)) for _ in range(n)]
  rhs_dil = [draw(st.integers(1, 2)) for _ in range(n)]
  lhs_dil = [draw(st.sampled_from([1, 1, 2])) for _ in range(n)]
  strides = [draw(st.integers(1, 3)) for _ in range(n)]
  spatial = [draw(st.integers(1, 4 if small else 7)) for _ in range(n)]
  kinds = ["explicit"] + (["SAME", "SAME_LOWER", "VALID"]
                          if all(a == 1 for a in lhs_dil) else [])
  kind = draw(st.sampled_from(kinds))
  if kind == "explicit":
    padding = tuple((draw(st.integers(-1, 2)), draw(st.integers(-1, 2)))
                    for _ in range(n))
    for size, k, d, a, s, (lo, hi) in zip(spatial, kernel, rhs_dil, lhs_dil,
                                          strides, padding):
      hypothesis.assume((size - 1) * a + 1 + lo + hi >= (k - 1) * d + 1)
  else:
    padding = kind
    for size, k, d in zip(spatial, kernel, rhs_dil):
      hypothesis.assume(kind != "VALID" or size >= (k - 1) * d + 1)
  perm = lambda: tuple(draw(st.permutations(range(n + 2))))
  lhs_spec, rhs_spec, out_spec = perm(), perm(), perm()
  dnums = lax.ConvDimensionNumbers(lhs_spec, rhs_spec, out_spec)
  lhs_shape = _place([batch, channels] + spatial, lhs_spec)
  rhs_shape = _place([out_features, in_per_group] + kernel, rhs_spec)
  kwargs = dict(window_strides=tuple(strides), padding=padding,
                lhs_dilation=tuple(lhs_dil), rhs_dilation=tuple(rhs_dil),
                dimension_numbers=dnums, feature_group_count=groups,
                batch_group_count=batch_groups)
  return Case(lhs_shape, rhs_shape, kwargs)


def _lax_conv(case):
  return functools.partial(lax.conv_general_dilated, precision="highest",
                           **case.kwargs)


def _jaxconv_conv(case):
  return functools.partial(jaxconv.conv_general_dilated,
                           precision="highest", **case.kwargs)


def compare_with_lax(case, dtype, seed=0):
  """jaxconv in ``dtype`` against lax in float64: forward and both VJPs."""
  lhs, rhs = case.arrays(dtype, seed)
  out, pullback = jax.vjp(_jaxconv_conv(case), lhs, rhs)
  ref_out, ref_pullback = jax.vjp(_lax_conv(case), lhs.astype(jnp.float64),
                                  rhs.astype(jnp.float64))
  rng = np.random.default_rng(seed + 1)
  cotangent = rng.normal(size=ref_out.shape)
  lhs_grad, rhs_grad = pullback(jnp.asarray(cotangent, out.dtype))
  ref_lhs_grad, ref_rhs_grad = ref_pullback(jnp.asarray(cotangent))
  assert out.dtype == dtype and lhs_grad.dtype == dtype
  assert rhs_grad.dtype == dtype
  assert_close(out, ref_out, dtype, "forward")
  assert_close(lhs_grad, ref_lhs_grad, dtype, "input gradient")
  assert_close(rhs_grad, ref_rhs_grad, dtype, "kernel gradient")


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
  out, pullback = jax.vjp(_jaxconv_conv(case), lhs, rhs)
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


# A few fixed cases that every later test reuses: stride, padding, both
# dilations, groups and batch groups, several layouts.
FIXED = [
    Case((2, 3, 9), (4, 3, 3), dict(window_strides=(2,), padding=((1, 2),))),
    Case((2, 8, 7, 4), (3, 2, 2, 6), dict(
        window_strides=(2, 1), padding="SAME", rhs_dilation=(1, 2),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=2)),
    Case((2, 4, 7, 6), (4, 4, 2, 3), dict(
        window_strides=(1, 2), padding=((-1, 2), (0, 1)), lhs_dilation=(2, 1))),
    Case((4, 3, 6, 5), (4, 3, 3, 2), dict(
        window_strides=(2, 2), padding="VALID", batch_group_count=2)),
    Case((1, 2, 4, 5, 4), (2, 2, 2, 3, 2), dict(
        window_strides=(1, 2, 1), padding="SAME_LOWER",
        rhs_dilation=(1, 1, 2))),
]
FIXED_IDS = ["1d-stride-pad", "2d-nhwc-groups-dil", "2d-lhsdil-crop",
             "2d-batchgroups", "3d-same-lower"]

# Input dilation with stride 1, as in a transposed convolution: the cases the
# "phased" algorithm splits into stride phases (one with a kernel shorter than
# the dilation, so that some phases have no tap at all).
PHASED = [
    Case((2, 6, 5, 4), (3, 4, 2, 6), dict(
        window_strides=(1, 1), padding=((2, 1), (0, 3)), lhs_dilation=(2, 3),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=2)),
    Case((2, 3, 5, 7), (4, 3, 3, 2), dict(
        window_strides=(1, 2), padding=((1, 2), (1, 0)), lhs_dilation=(2, 1),
        rhs_dilation=(1, 2))),
    Case((4, 3, 5), (4, 3, 2), dict(
        window_strides=(1,), padding=((1, -1),), lhs_dilation=(3,),
        batch_group_count=2)),
]
PHASED_IDS = ["phased-2d-groups", "phased-mixed", "phased-1d-batch-groups"]

# More than CHUNK_SAMPLES samples, so that "chunked" splits them: a batch of
# 19 (chunks of 8, 8 and 3) in NCHW, and of 17 (8, 8 and 1) in NHWC with
# stride and dilation; the kernel gradient then chunks its contracted batch.
CHUNKED = [
    Case((19, 3, 6, 5), (4, 3, 2, 2), dict(window_strides=(1, 1),
                                           padding="SAME")),
    Case((17, 7, 6, 2), (3, 2, 2, 4), dict(
        window_strides=(2, 1), padding=((1, 0), (2, 1)), rhs_dilation=(1, 2),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))),
]
CHUNKED_IDS = ["chunked-nchw", "chunked-nhwc-stride-dil"]

# Stride, kernel dilation, input dilation and uneven padding in the first
# spatial dimension, the one "folded" unrolls: NHWC (its "taps" form in the
# forward pass and input gradient, "positions" in the kernel gradient),
# NCHW with feature groups (the "positions" form in the forward pass) and a
# 3-D NDHWC case folded twice when forced.
FOLDED = [
    Case((2, 9, 5, 3), (3, 2, 3, 4), dict(
        window_strides=(2, 1), padding=((2, 1), (0, 1)), rhs_dilation=(2, 1),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))),
    Case((2, 4, 6, 5), (6, 2, 3, 2), dict(
        window_strides=(1, 2), padding=((1, -1), (1, 0)), lhs_dilation=(2, 1),
        feature_group_count=2)),
    Case((2, 5, 4, 6, 2), (3, 2, 2, 2, 3), dict(
        window_strides=(2, 1, 1), padding="SAME", rhs_dilation=(1, 2, 1),
        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))),
]
FOLDED_IDS = ["folded-nhwc-stride-dil", "folded-nchw-groups-lhsdil",
              "folded-3d"]
ALL_ALGORITHMS = [name for name in jaxconv.ALGORITHMS if name != "auto"]


@pytest.mark.parametrize("case", FIXED, ids=FIXED_IDS)
def test_fixed_cases_float32(case):
  compare_with_lax(case, jnp.float32)


@pytest.mark.parametrize("case", FIXED[:3], ids=FIXED_IDS[:3])
def test_check_grads_order_two(case):
  """Finite differences through the VJP and the VJP of the VJP."""
  lhs, rhs = case.arrays(jnp.float64)
  jax.test_util.check_grads(_jaxconv_conv(case), (lhs, rhs), order=2,
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
  jaxpr = str(jax.make_jaxpr(_jaxconv_conv(case))(lhs, rhs))
  assert "custom_vjp_call" in jaxpr
  grad_jaxpr = str(jax.make_jaxpr(jax.grad(
      lambda x, w: jnp.sum(_jaxconv_conv(case)(x, w) ** 2)))(lhs, rhs))
  # The backward is made of jaxconv's own convolutions, not lax's transposes.
  assert "custom_vjp_call" in grad_jaxpr


@pytest.mark.parametrize("case", FIXED, ids=FIXED_IDS)
def test_jit_vmap_and_second_order(case):
  lhs, rhs = case.arrays(jnp.float64)
  ours, theirs = _jaxconv_conv(case), _lax_conv(case)

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
  ours = jax.jacrev(jax.jacrev(f(_jaxconv_conv(case))))(lhs)
  theirs = jax.jacrev(jax.jacrev(f(_lax_conv(case))))(lhs)
  assert_close(ours, theirs, jnp.float64, "hessian")


def test_batch_zero_gradients_are_zero():
  case = Case((0, 3, 6), (2, 3, 3), dict(window_strides=(1,), padding="SAME"))
  lhs, rhs = case.arrays(jnp.float32)
  out, pullback = jax.vjp(_jaxconv_conv(case), lhs, rhs)
  assert out.shape == (0, 2, 6)
  lhs_grad, rhs_grad = pullback(jnp.zeros_like(out))
  assert lhs_grad.shape == lhs.shape
  np.testing.assert_array_equal(rhs_grad, np.zeros(rhs.shape))


def test_public_gradient_pieces():
  """conv_input_grad / conv_kernel_grad / conv_bias_grad equal the VJP."""
  for case in FIXED:
    lhs, rhs = case.arrays(jnp.float64)
    out, pullback = jax.vjp(_lax_conv(case), lhs, rhs)
    cotangent = jnp.asarray(np.random.default_rng(1).normal(size=out.shape))
    ref_lhs_grad, ref_rhs_grad = pullback(cotangent)
    kw = dict(case.kwargs, precision="highest")
    lhs_grad = jax.jit(
        lambda c, w: jaxconv.conv_input_grad(c, w, lhs.shape, **kw))(
            cotangent, rhs)
    rhs_grad = jax.jit(
        lambda x, c: jaxconv.conv_kernel_grad(x, c, rhs.shape, **kw))(
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
    expected = jax.eval_shape(_lax_conv(case), lhs, rhs).shape
    assert jaxconv.conv_output_shape(geometry, lhs.shape, rhs.shape) == expected


def test_scaled_error_is_not_vacuous():
  """The tolerance check fails on a gradient off by a modest factor."""
  case = FIXED[0]
  lhs, rhs = case.arrays(jnp.float64)
  _, pullback = jax.vjp(_lax_conv(case), lhs, rhs)
  cotangent = jnp.ones((2, 4, 5))
  _, rhs_grad = pullback(cotangent)
  assert scaled_error(rhs_grad * 1.001, rhs_grad) > TOLERANCE[np.dtype("float32")]


# Every algorithm against the same oracles (the default sweep above runs
# "auto"; here each one is forced for every convolution it supports).
@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS)
@hypothesis.settings(max_examples=examples(8), deadline=None)
@hypothesis.given(case=conv_cases())
def test_each_algorithm_matches_lax(algorithm, case):
  with jaxconv.use_algorithm(algorithm):
    compare_with_lax(case, jnp.float64)


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS)
@pytest.mark.parametrize("case", FIXED + PHASED + CHUNKED + FOLDED,
                         ids=FIXED_IDS + PHASED_IDS + CHUNKED_IDS
                         + FOLDED_IDS)
def test_each_algorithm_fixed_cases(algorithm, case):
  with jaxconv.use_algorithm(algorithm):
    compare_with_lax(case, jnp.float32)


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS[1:])
@pytest.mark.parametrize("case", FIXED[:2] + PHASED + CHUNKED[1:],
                         ids=FIXED_IDS[:2] + PHASED_IDS + CHUNKED_IDS[1:])
def test_each_algorithm_check_grads(algorithm, case):
  lhs, rhs = case.arrays(jnp.float64)
  with jaxconv.use_algorithm(algorithm):
    f = jax.jit(_jaxconv_conv(case))  # traced here, inside the block
    jax.test_util.check_grads(f, (lhs, rhs), order=2, modes=("rev",))


@pytest.mark.parametrize("case", FOLDED[:2], ids=FOLDED_IDS[:2])
def test_folded_check_grads(case):
  """Second order through both forms of "folded", with stride, dilations
  and padding in the dimension it unrolls."""
  lhs, rhs = case.arrays(jnp.float64)
  with jaxconv.use_algorithm("folded"):
    f = jax.jit(_jaxconv_conv(case))
    jax.test_util.check_grads(f, (lhs, rhs), order=2, modes=("rev",))


@pytest.mark.parametrize("algorithm", ["shifted", "window_dot"])
def test_forced_algorithm_is_used(algorithm):
  """A forced direct algorithm replaces XLA's convolution in the forward."""
  case = Case((2, 3, 6, 5), (4, 3, 2, 2), dict(window_strides=(1, 1),
                                               padding="VALID"))
  lhs, rhs = case.arrays(jnp.float32)
  f = functools.partial(jaxconv.conv_general_dilated, algorithm=algorithm,
                        **case.kwargs)
  jaxpr = str(jax.make_jaxpr(f)(lhs, rhs))
  assert "conv_general_dilated" not in jaxpr
  assert "dot_general" in jaxpr or "mul" in jaxpr
  default = functools.partial(jaxconv.conv_general_dilated, algorithm="xla",
                              **case.kwargs)
  assert "conv_general_dilated" in str(jax.make_jaxpr(default)(lhs, rhs))


# Kernel gradients in channels-last layouts whose terms are one matrix product
# over the merged samples and window (``_long_contraction``): split into two
# halves where the contraction M is even and at least C*K, one product where
# it is odd or shorter; an NCHW layer, whose contracted axes do not lead,
# keeps the contraction over several axes. With a 1x1 kernel the policy picks
# "window_dot" (one term); forced, a 3x3 kernel gives one term per kernel tap,
# each from a sliced window of the input.
LONG_CONTRACTIONS = [
    # (lhs, rhs, stride, layout, forced algorithm, halves expected)
    ((4, 6, 6, 5), (1, 1, 5, 3), 1, "NHWC", None, True),        # M 144, C*K 15
    ((2, 4, 4, 3), (1, 1, 3, 3), 1, "NHWC", None, True),        # C = K
    ((4, 6, 6, 5), (1, 1, 5, 3), 2, "NHWC", None, True),        # strided, M 36
    ((3, 5, 1, 4), (1, 1, 4, 2), 1, "NHWC", None, False),       # M 15, odd
    ((2, 3, 3, 6), (1, 1, 6, 8), 1, "NHWC", None, False),       # M 18 < 48
    ((3, 7, 6, 4), (3, 2, 4, 2), 1, "NHWC", "window_dot", True),  # M 126
    ((3, 4, 7, 6), (2, 4, 3, 3), 1, "NCHW", "window_dot", False),
]


@pytest.mark.parametrize("case", LONG_CONTRACTIONS,
                         ids=[f"{c[3]}-{c[0]}-{c[1]}" for c in LONG_CONTRACTIONS])
def test_kernel_gradient_as_long_contraction(case):
  """The kernel gradient of eq. (9) over one merged contracted axis, whole
  or in two halves, equals lax's in float64 and float32; the halves are one
  batched ``dot_general`` with a batch of 2, present exactly where expected."""
  lhs_shape, rhs_shape, stride, layout, forced, halves = case
  numbers = ((layout, "HWIO", layout) if layout == "NHWC"
             else (layout, "OIHW", layout))
  kwargs = dict(window_strides=(stride, stride), padding="SAME",
                dimension_numbers=numbers)
  case = Case(lhs_shape, rhs_shape, kwargs)
  with jaxconv.use_algorithm(forced or "auto"):
    for dtype in (jnp.float64, jnp.float32):
      compare_with_lax(case, dtype)
    lhs, rhs = case.arrays(jnp.float32)
    out, pullback = jax.vjp(_jaxconv_conv(case), lhs, rhs)
    jaxpr = str(jax.make_jaxpr(pullback)(out))
  batched = re.findall(r":f32\[2,\d+,\d+\] = dot_general\[\s*dimension_numbers="
                       r"\(\(\[1\], \[1\]\), \(\[0\], \[0\]\)\)", jaxpr)
  assert bool(batched) == halves, jaxpr


# Kernel gradients of channels-last 2-D layers in strips of rows (eq. 71),
# with STRIP_ELEMENTS set so that the plan is several strips of a few rows
# per sample, several whole samples per strip, or one strip for the batch;
# stride, kernel dilation and uneven or cropping padding in both
# dimensions; the products' output rows indexed by the delta's features or,
# where those are more than the patch width (OHWI, 2 features x 2 kernel
# columns < 6), by the patch width.
STRIPS = [
    # (case, STRIP_ELEMENTS, plan (samples, rows), strips)
    (Case((3, 8, 7, 4), (3, 3, 4, 5), dict(
        window_strides=(1, 1), padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))), 200, (1, 2), 12),
    (Case((4, 11, 10, 5), (3, 2, 5, 4), dict(
        window_strides=(2, 3), padding=((2, -1), (0, 1)),
        rhs_dilation=(2, 1), dimension_numbers=("NHWC", "HWIO", "NHWC"))),
     600, (2, 4), 2),
    (Case((3, 9, 8, 2), (6, 3, 2, 2), dict(
        window_strides=(1, 2), padding="VALID", rhs_dilation=(1, 3),
        dimension_numbers=("NHWC", "OHWI", "NHWC"))), 10**6, (3, 7), 1),
]


@pytest.mark.parametrize("case, elements, plan, count", STRIPS,
                         ids=["rows", "samples-stride-dil", "ohwi-one-strip"])
@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32, jnp.bfloat16])
def test_strips_kernel_gradient(case, elements, plan, count, dtype,
                                monkeypatch):
  """Forced "strips", the kernel gradient (one loop over ``count`` strips
  of ``plan``) equals lax's; the other two convolutions are XLA's."""
  monkeypatch.setattr(_algorithms, "STRIP_ELEMENTS", elements)
  lhs_shape = case.lhs_shape
  geometry = jaxconv.make_conv_geometry(lhs_shape, case.rhs_shape,
                                        **case.kwargs)
  out_shape = jaxconv.conv_output_shape(geometry, lhs_shape, case.rhs_shape)
  dw = jaxconv.convolution.kernel_gradient_geometry(geometry, lhs_shape,
                                                    case.rhs_shape)
  # The kernel gradient's convolution: input, cotangent -> kernel's shape.
  assert _algorithms.supports("strips", dw, lhs_shape, out_shape,
                              case.rhs_shape)
  assert _algorithms.strip_plan(lhs_shape, out_shape, case.rhs_shape,
                                dw) == plan
  with jaxconv.use_algorithm("strips"):
    compare_with_lax(case, dtype)
    lhs, rhs = case.arrays(dtype)
    out, pullback = jax.vjp(_jaxconv_conv(case), lhs, rhs)
    jaxpr = str(jax.make_jaxpr(pullback)(out))
  assert re.findall(r"scan\[[^\]]*?length=(\d+)", jaxpr, re.S) == [str(count)]


def test_strips_only_where_supported():
  """Channels-last 2-D kernel gradients only: not the forward pass or the
  input gradient, not NCHW, grouped, input-dilated or 1-D ones."""
  def kernel_gradient(lhs_shape, rhs_shape, layout, padding="SAME",
                      **kwargs):
    geometry = jaxconv.make_conv_geometry(lhs_shape, rhs_shape, 1, padding,
                                          dimension_numbers=layout, **kwargs)
    out = jaxconv.conv_output_shape(geometry, lhs_shape, rhs_shape)
    dw = jaxconv.convolution.kernel_gradient_geometry(geometry, lhs_shape,
                                                      rhs_shape)
    return (_algorithms.supports("strips", dw, lhs_shape, out, rhs_shape),
            _algorithms.supports("strips", geometry, lhs_shape, rhs_shape,
                                 out))
  nhwc = ("NHWC", "HWIO", "NHWC")
  assert kernel_gradient((2, 6, 6, 4), (3, 3, 4, 4), nhwc) == (True, False)
  assert kernel_gradient((2, 4, 6, 6), (4, 4, 3, 3),
                         ("NCHW", "OIHW", "NCHW")) == (False, False)
  assert kernel_gradient((2, 6, 6, 4), (3, 3, 2, 4), nhwc,
                         feature_group_count=2) == (False, False)
  assert kernel_gradient((2, 6, 6, 4), (3, 3, 4, 4), nhwc, ((1, 1), (1, 1)),
                         lhs_dilation=(2, 1)) == (False, False)
  assert kernel_gradient((2, 6, 4), (3, 4, 4),
                         ("NWC", "WIO", "NWC")) == (False, False)


def test_phased_leaves_no_input_dilation():
  """Forced "phased", every convolution left in the program is undilated."""
  case = PHASED[0]
  lhs, rhs = case.arrays(jnp.float32)
  f = functools.partial(jaxconv.conv_general_dilated, algorithm="phased",
                        **case.kwargs)
  grad = jax.grad(lambda lhs, rhs: jnp.sum(f(lhs, rhs) ** 2), (0, 1))
  program = jax.jit(grad).lower(lhs, rhs).as_text()
  dilations = set(re.findall(r"lhs_dilate = \[[0-9, ]*\]", program))
  assert dilations <= {"lhs_dilate = [1, 1]"}, dilations
  # Forward and kernel gradient: 2 x 3 phases each.
  assert program.count("stablehlo.convolution") > 6


def test_split_groups_leaves_no_groups():
  """Forced "split_groups", the program's convolutions are all dense."""
  case = FIXED[1]  # two feature groups: the kernel gradient has two batch
                   # groups
  lhs, rhs = case.arrays(jnp.float32)
  f = functools.partial(jaxconv.conv_general_dilated,
                        algorithm="split_groups", **case.kwargs)
  grad = jax.grad(lambda lhs, rhs: jnp.sum(f(lhs, rhs) ** 2), (0, 1))
  program = jax.jit(grad).lower(lhs, rhs).as_text()
  counts = set(re.findall(r"(?:feature|batch)_group_count = \d+", program))
  assert counts <= {"feature_group_count = 1", "batch_group_count = 1"}, counts
  # forward, input gradient and kernel gradient: two blocks each
  assert program.count("stablehlo.convolution") == 6


def test_chunked_splits_the_samples():
  """Forced "chunked", every convolution sees at most CHUNK_SAMPLES samples:
  the forward and input gradient on their batch, the kernel gradient on its
  contracted feature axis (the forward batch)."""
  case = CHUNKED[1]
  lhs, rhs = case.arrays(jnp.float32)
  f = functools.partial(jaxconv.conv_general_dilated, algorithm="chunked",
                        **case.kwargs)
  grad = jax.grad(lambda lhs, rhs: jnp.sum(f(lhs, rhs) ** 2), (0, 1))
  program = jax.jit(grad).lower(lhs, rhs).as_text()
  # 17 samples: chunks of 8, 8 and 1 for each of the three convolutions.
  assert program.count("stablehlo.convolution") == 9
  operands = re.findall(r"stablehlo.convolution\(%[^)]*\).*?: \(tensor<(\d+)x",
                        program)
  assert operands and all(int(n) <= 8 for n in operands), operands


@pytest.mark.parametrize("case", [FIXED[1], FOLDED[0], FOLDED[2]],
                         ids=["2d-nhwc-groups-dil", "folded-nhwc", "3d"])
def test_folded_leaves_one_spatial_dimension(case):
  """Forced "folded" on channels-last layouts, every convolution of the
  forward pass and both gradients is one-dimensional (a 3-D one is folded
  twice), one per unrolled row: the kernel's rows in the forward pass and
  the input gradient, the kernel gradient's output rows (again the
  kernel's) in the kernel gradient."""
  lhs, rhs = case.arrays(jnp.float32)
  f = functools.partial(jaxconv.conv_general_dilated, algorithm="folded",
                        **case.kwargs)
  grad = jax.grad(lambda lhs, rhs: jnp.sum(f(lhs, rhs) ** 2), (0, 1))
  program = jax.jit(grad).lower(lhs, rhs).as_text()
  labels = re.findall(r"dim_numbers = \[([^\]]*)\]x", program)
  assert labels and all(len(l.split(",")) == 3 for l in labels), labels
  taps = rhs.shape[0] * (rhs.shape[1] if lhs.ndim == 5 else 1)
  assert program.count("stablehlo.convolution") == 3 * taps


STACKED = [
    Case((2, 7, 6, 5), (3, 2, 5, 4), dict(
        window_strides=(1, 2), padding=((2, -1), (1, 0)), rhs_dilation=(2, 1),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))),
    Case((3, 6, 5, 4), (4, 4, 3, 3), dict(
        window_strides=(1, 1), padding=((1, 2), (1, 1)),
        dimension_numbers=("NHWC", "OIHW", "NHWC"))),
    Case((2, 5, 4, 6, 3), (2, 3, 2, 3, 4), dict(
        window_strides=(1, 1, 2), padding="SAME", rhs_dilation=(1, 1, 2),
        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))),
    # Strided in the first dimension (eq. 73): with stride 2 and kernel
    # dilation 1 the phases hold kernel rows {0, 2} and {1}; with stride 2
    # and dilation 2 every tap has residue 0 (one phase, dilation 1 in it);
    # with stride 3, dilation 2 and 4 rows the residues 0, 2, 1, 0 of the
    # rows' offsets make three phases, rows {0, 3}, {1}, {2}.
    Case((2, 11, 6, 5), (3, 2, 5, 4), dict(
        window_strides=(2, 1), padding=((1, 1), (0, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))),
    Case((2, 12, 5, 4), (4, 4, 3, 2), dict(
        window_strides=(2, 2), padding=((2, -1), (1, 1)), rhs_dilation=(2, 1),
        dimension_numbers=("NHWC", "OIHW", "NHWC"))),
    Case((2, 17, 5, 3), (4, 2, 3, 4), dict(
        window_strides=(3, 1), padding="SAME", rhs_dilation=(2, 1),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))),
]
# The stacked kernels' row counts, one convolution each.
STACKED_ROWS = [[3], [3], [6], [2, 1], [3], [2, 1, 1]]


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("case,rows", list(zip(STACKED, STACKED_ROWS)),
                         ids=["dilated-cropped", "oihw", "3d", "stride-2",
                              "stride-2-dilated", "stride-3-dilated"])
def test_stacked_kernel_rows_in_one_convolution(case, rows, dtype):
  """Forced "stacked": the forward pass is one convolution of one dimension
  fewer (eq. 72; a 3-D one is stacked twice), or one per row phase where
  the first dimension is strided (eq. 73), whose kernel holds the kernel's
  rows (those of the phase) side by side on its output features; forward
  and both gradients equal lax's, with kernel dilation, cropping padding,
  another kernel layout and a stride in the other dimensions."""
  lhs, rhs = case.arrays(jnp.float32)
  geometry = jaxconv.make_conv_geometry(lhs.shape, rhs.shape, **case.kwargs)
  out = jaxconv.conv_output_shape(geometry, lhs.shape, rhs.shape)
  assert _algorithms.supports("stacked", geometry, lhs.shape, rhs.shape, out)
  f = functools.partial(jaxconv.conv_general_dilated, algorithm="stacked",
                        **case.kwargs)
  program = jax.jit(f).lower(lhs, rhs).as_text()
  kernels = re.findall(r"stablehlo.convolution\(%[^)]*\).*?: \(tensor<[^>]*>, "
                       r"tensor<([0-9x]*)x", program)
  assert len(kernels) == len(rows), program
  spec = geometry.dimension_numbers.rhs_spec
  features = rhs.shape[spec[0]]
  for kernel, count in zip(sorted(kernels, key=lambda k: -max(
      int(n) for n in k.split("x"))), sorted(rows, reverse=True)):
    assert str(features * count) in kernel.split("x"), (kernel, count)
  with jaxconv.use_algorithm("stacked"):
    compare_with_lax(case, dtype)


def test_stacked_only_where_supported():
  """No input dilation in the first spatial dimension, no feature groups,
  and the "taps" layouts of "folded"."""
  def supported(lhs_shape, rhs_shape, layout=("NHWC", "HWIO", "NHWC"),
                window_strides=1, padding="SAME", **kwargs):
    geometry = jaxconv.make_conv_geometry(lhs_shape, rhs_shape,
                                          window_strides, padding,
                                          dimension_numbers=layout, **kwargs)
    out = jaxconv.conv_output_shape(geometry, lhs_shape, rhs_shape)
    return _algorithms.supports("stacked", geometry, lhs_shape, rhs_shape,
                                out)
  assert supported((2, 6, 6, 4), (3, 3, 4, 4))
  assert supported((2, 6, 6, 4), (3, 3, 4, 4), window_strides=(1, 2))
  assert supported((2, 6, 6, 4), (3, 3, 4, 4), window_strides=(2, 1))
  assert not supported((2, 6, 6, 4), (3, 3, 4, 4), padding=((1, 1), (1, 1)),
                       lhs_dilation=(2, 1))
  assert not supported((2, 6, 6, 4), (3, 3, 2, 4), feature_group_count=2)
  assert not supported((2, 4, 6, 6), (4, 4, 3, 3), ("NCHW", "OIHW", "NCHW"))
  assert not supported((2, 6, 4), (3, 4, 4), ("NWC", "WIO", "NWC"))


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="the chunking policy is the CPU's")
@pytest.mark.parametrize("fold_kernel_gradients", [False, True])
def test_chunks_shrink_for_large_samples(fold_kernel_gradients, monkeypatch):
  """The RGB stem at batch 8: its gradients hold 0.8 M elements per sample of
  the cotangent, so the policy chunks them 2 samples at a time
  (CHUNK_ELEMENTS), while the forward pass (output 5x its input) stays
  whole (and, with 3 input features, unfolded). Lowered only, never run."""
  monkeypatch.setattr(_algorithms, "FOLD_KERNEL_GRADIENTS",
                      fold_kernel_gradients)
  lhs = jax.ShapeDtypeStruct((8, 224, 224, 3), jnp.float32)
  rhs = jax.ShapeDtypeStruct((7, 7, 3, 64), jnp.float32)
  f = functools.partial(jaxconv.conv, stride=2, padding=((3, 3), (3, 3)))

  def step(lhs, rhs):
    y, pullback = jax.vjp(f, lhs, rhs)
    return y, pullback(jnp.ones_like(y))

  program = jax.jit(step).lower(lhs, rhs).as_text()
  operands = re.findall(r"stablehlo.convolution\(%[^)]*\).*?: \(tensor<(\d+)x",
                        program)
  # The forward pass whole, then four chunks of 2 for dx and for dw. dx's
  # chunks are never folded (input dilation in their first dimension); dw's
  # contract only the chunk's 2 samples, fewer than FOLD_MIN_FEATURES, so
  # they are folded only with FOLD_KERNEL_GRADIENTS: each into its 7 output
  # rows, 1-D convolutions whose contracted features are the chunk's 2
  # samples times the 112 rows of x^ that one output row reads.
  if fold_kernel_gradients:
    assert sorted(int(n) for n in operands) == [2] * 4 + [8] + [224] * 28, (
        operands)
  else:
    assert sorted(int(n) for n in operands) == [2] * 8 + [8], operands
  def chunk(lhs_shape, rhs_shape, stride):
    geometry = jaxconv.make_conv_geometry(
        lhs_shape, rhs_shape, stride, "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    out = jaxconv.conv_output_shape(geometry, lhs_shape, rhs_shape)
    return _algorithms.chunk_samples(geometry, lhs_shape, rhs_shape, out)
  assert chunk((8, 224, 224, 3), (7, 7, 3, 64), 2) == 2
  # A 3x3 64-feature layer at 56x56 holds 0.2 M elements per sample: 8.
  assert chunk((32, 56, 56, 64), (3, 3, 64, 64), 1) == 8


def test_cpuinfo_and_avx512(monkeypatch):
  """``cpuinfo_field`` reads the first processor's entry of /proc/cpuinfo's
  text; ``host_has_avx512`` looks for ``avx512f`` among its flags, and knows
  a CPU without a flags line (ARM lists "Features"); ``host_cpu_vendor``
  reads its vendor_id. By default kernel gradients fold without AVX-512 and
  on Intel's AVX-512 CPUs, not on other AVX-512 ones nor an unknown CPU;
  they go in strips, strided layers fold, folded kernel rows are stacked
  and few-tap input gradients are phased on every AVX-512 CPU (Intel's,
  AMD's, one of unknown vendor), not without AVX-512 nor on an unknown
  CPU."""
  two = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC"
         "\nflags\t\t: fpu sse2 avx2 fma\n\nprocessor\t: 1\n"
         "vendor_id\t: GenuineIntel\nflags\t\t: fpu avx512f\n")
  assert _algorithms.cpuinfo_field(two, "flags") == "fpu sse2 avx2 fma"
  assert _algorithms.cpuinfo_field(two, "model name") == "AMD EPYC"
  assert _algorithms.cpuinfo_field(two, "microcode") is None
  assert _algorithms.host_has_avx512() in (True, False, None)
  intel, amd = "vendor_id\t: GenuineIntel\n", "vendor_id\t: AuthenticAMD\n"
  for text, avx512, vendor, fold, avx512_rules in (
      (two, False, "AuthenticAMD", True, False),
      (intel + "flags\t\t: fpu avx2\n", False, "GenuineIntel", True, False),
      (intel + "flags\t\t: fpu avx512f avx512bw\n", True, "GenuineIntel",
       True, True),
      (amd + "flags\t\t: fpu avx512f avx512bw\n", True, "AuthenticAMD",
       False, True),
      ("flags\t\t: fpu avx512f\n", True, None, False, True),
      (intel + "flags\t\t: fpu avx512fx\n", False, "GenuineIntel", True,
       False),
      ("processor\t: 0\nFeatures\t: fp asimd\n", None, None, False, False),
      ("", None, None, False, False)):
    monkeypatch.setattr(_algorithms, "host_cpuinfo", lambda text=text: text)
    assert _algorithms.host_has_avx512() is avx512, text
    assert _algorithms.host_cpu_vendor() == vendor, text
    for constant, decide, default in (
        ("FOLD_KERNEL_GRADIENTS", _algorithms._fold_kernel_gradients, fold),
        ("STRIP_KERNEL_GRADIENTS", _algorithms._strip_kernel_gradients,
         avx512_rules),
        ("FOLD_STRIDED", _algorithms._fold_strided, avx512_rules),
        ("STACK_TAPS", _algorithms._stack_taps, avx512_rules),
        ("PHASE_FEW_TAPS", _algorithms._phase_few_taps, avx512_rules)):
      monkeypatch.setattr(_algorithms, constant, None)
      assert decide() is default, (constant, text)
      for forced in (False, True):
        monkeypatch.setattr(_algorithms, constant, forced)
        assert decide() is forced, (constant, text)


@pytest.mark.parametrize("fold", [False, True])
def test_kernel_gradients_fold_where_told(fold, monkeypatch):
  """FOLD_KERNEL_GRADIENTS (by default: on an x86 CPU without AVX-512 or an
  Intel one with it) folds 2-D kernel gradients, which contract the
  samples, whatever their number; the forward pass, the input gradient and
  the GPU are left as they were. (Without strips, which come first.)"""
  monkeypatch.setattr(_algorithms, "FOLD_KERNEL_GRADIENTS", fold)
  monkeypatch.setattr(_algorithms, "STRIP_KERNEL_GRADIENTS", False)
  monkeypatch.setattr(_algorithms, "FOLD_STRIDED", False)
  monkeypatch.setattr(_algorithms, "STACK_TAPS", False)
  numbers = ("NHWC", "HWIO", "NHWC")
  for lhs_shape, rhs_shape, stride, forward in (
      ((8, 56, 56, 64), (3, 3, 64, 64), 1, "folded"),
      ((8, 56, 56, 64), (3, 3, 64, 128), 2, "xla"),
      ((32, 28, 28, 32), (3, 3, 32, 32), 1, "xla")):
    geometry = jaxconv.make_conv_geometry(lhs_shape, rhs_shape, stride, "SAME",
                                          dimension_numbers=numbers)
    out = jaxconv.conv_output_shape(geometry, lhs_shape, rhs_shape)
    dw = jaxconv.convolution.kernel_gradient_geometry(geometry, lhs_shape,
                                                      rhs_shape)
    assert jaxconv.choose_algorithm(dw, lhs_shape, out, rhs_shape,
                                    "cpu") == ("folded" if fold else "xla")
    assert jaxconv.choose_algorithm(dw, lhs_shape, out, rhs_shape,
                                    "gpu") == "xla"
    assert jaxconv.choose_algorithm(geometry, lhs_shape, rhs_shape, out,
                                    "cpu") == forward
  # Below FOLD_MIN_ELEMENTS a kernel gradient stays whole either way.
  small = jaxconv.make_conv_geometry((8, 8, 8, 16), (3, 3, 16, 16), 1, "SAME",
                                     dimension_numbers=numbers)
  dw = jaxconv.convolution.kernel_gradient_geometry(small, (8, 8, 8, 16),
                                                    (3, 3, 16, 16))
  assert jaxconv.choose_algorithm(dw, (8, 8, 8, 16), (8, 8, 8, 16),
                                  (3, 3, 16, 16), "cpu") == "xla"


def _default_choices(lhs_shape, rhs_shape, stride=1,
                     layout=("NHWC", "HWIO", "NHWC"), backend="cpu"):
  """The policy's choices for a "SAME"-padded layer's three convolutions:
  (forward, input gradient, kernel gradient)."""
  geometry = jaxconv.make_conv_geometry(lhs_shape, rhs_shape, stride, "SAME",
                                        dimension_numbers=layout)
  out = jaxconv.conv_output_shape(geometry, lhs_shape, rhs_shape)
  dx = jaxconv.convolution.input_gradient_geometry(geometry, lhs_shape,
                                                   rhs_shape)
  dw = jaxconv.convolution.kernel_gradient_geometry(geometry, lhs_shape,
                                                    rhs_shape)
  return (jaxconv.choose_algorithm(geometry, lhs_shape, rhs_shape, out,
                                   backend),
          jaxconv.choose_algorithm(dx, out, rhs_shape, lhs_shape, backend),
          jaxconv.choose_algorithm(dw, lhs_shape, out, rhs_shape, backend))


@pytest.mark.parametrize("strided", [False, True])
def test_strided_layers_fold_where_told(strided, monkeypatch):
  """FOLD_STRIDED (by default: on a CPU with AVX-512) folds the
  forward pass of a layer strided in its first spatial dimension, in the
  "taps" form, where it would fold unstrided: 64 contracted features and
  FOLD_MIN_ELEMENTS. The RGB stem (3 features), the input gradient (input
  dilation), NCHW's "positions" form (folded whatever the stride) and the
  GPU are left as they were; the strided forward folds when lowered, one
  1-D convolution per kernel row, each reading a strided row slice."""
  monkeypatch.setattr(_algorithms, "FOLD_STRIDED", strided)
  monkeypatch.setattr(_algorithms, "STACK_TAPS", False)
  monkeypatch.setattr(_algorithms, "PHASE_FEW_TAPS", False)
  yes = "folded" if strided else "xla"
  for lhs_shape, rhs_shape, stride, expected in (
      ((8, 56, 56, 64), (3, 3, 64, 128), 2, yes),
      ((8, 56, 56, 64), (3, 3, 64, 128), (2, 1), yes),
      ((8, 56, 56, 64), (3, 3, 64, 128), (1, 2), "folded"),
      ((8, 224, 224, 3), (7, 7, 3, 64), 2, "xla"),
      ((8, 16, 16, 64), (3, 3, 64, 64), 2, "xla")):   # 131 072 elements
    assert _default_choices(lhs_shape, rhs_shape, stride)[0] == expected, (
        lhs_shape, stride)
    assert _default_choices(lhs_shape, rhs_shape, stride,
                            backend="gpu")[0] == "xla"
  assert _default_choices((8, 64, 56, 56), (128, 64, 3, 3), 2,
                          ("NCHW", "OIHW", "NCHW"))[0] == "folded"
  # The input gradient is dilated in its first dimension: never folded.
  geometry = jaxconv.make_conv_geometry((8, 56, 56, 64), (3, 3, 64, 128), 2,
                                        "SAME", dimension_numbers=("NHWC",
                                                                   "HWIO",
                                                                   "NHWC"))
  dx = jaxconv.convolution.input_gradient_geometry(geometry, (8, 56, 56, 64),
                                                   (3, 3, 64, 128))
  assert dx.lhs_dilation[0] == 2
  assert _default_choices((8, 56, 56, 64), (3, 3, 64, 128), 2)[1] == "xla"
  lhs = jax.ShapeDtypeStruct((8, 56, 56, 64), jnp.float32)
  rhs = jax.ShapeDtypeStruct((3, 3, 64, 128), jnp.float32)
  program = jax.jit(functools.partial(jaxconv.conv, stride=2,
                                      padding="SAME")).lower(lhs, rhs)
  operands = re.findall(r"stablehlo.convolution\(%[^)]*\).*?: \(tensor<(\d+)x",
                        program.as_text())
  assert operands == (["224"] * 3 if strided else ["8"]), operands


@pytest.mark.parametrize("stack", [False, True])
def test_taps_stacked_where_told(stack, monkeypatch):
  """STACK_TAPS (by default: on a CPU with AVX-512) puts "stacked" in
  place of a 2-D fold in the "taps" form (the forward pass and the input
  gradient of a 3x3 stride-1 layer, the forward pass of a strided one); a
  3-D fold, NCHW's "positions" form and the GPU are left as they were."""
  monkeypatch.setattr(_algorithms, "STACK_TAPS", stack)
  monkeypatch.setattr(_algorithms, "FOLD_STRIDED", True)
  monkeypatch.setattr(_algorithms, "PHASE_FEW_TAPS", False)

  def choices(*args, **kwargs):
    return _default_choices(*args, **kwargs)[:2]

  yes = "stacked" if stack else "folded"
  assert choices((8, 56, 56, 64), (3, 3, 64, 64)) == (yes, yes)
  assert choices((8, 56, 56, 64), (3, 3, 64, 64), backend="gpu") == (
      "xla", "xla")
  assert choices((8, 56, 56, 64), (3, 3, 64, 128), 2) == (yes, "xla")
  assert choices((8, 16, 16, 16, 16), (3, 3, 3, 16, 32),
                 layout=("NDHWC", "DHWIO", "NDHWC")) == ("folded", "folded")
  assert choices((8, 64, 56, 56), (64, 64, 3, 3),
                 layout=("NCHW", "OIHW", "NCHW"))[0] == "folded"


@pytest.mark.parametrize("few", [False, True])
def test_few_tap_phases_where_told(few, monkeypatch):
  """PHASE_FEW_TAPS (by default: on a CPU with AVX-512) splits the
  input gradient of a 3x3 stride-2 layer into phases (eq. 23), though they
  have only one or two taps each; a strided 1x1 layer's input gradient is
  phased on every CPU (one phase meets the kernel, the others are zeros);
  the RGB stem (three output features) and the GPU are left as they were."""
  monkeypatch.setattr(_algorithms, "PHASE_FEW_TAPS", few)
  for batch, otherwise in ((8, "xla"), (32, "chunked")):
    assert _default_choices((batch, 56, 56, 64), (3, 3, 64, 128), 2)[1] == (
        "phased" if few else otherwise)
    assert _default_choices((batch, 56, 56, 256), (1, 1, 256, 512),
                            2)[1] == "phased"
    assert _default_choices((batch, 224, 224, 3), (7, 7, 3, 64),
                            2)[1] == "chunked"
    for shapes in (((batch, 56, 56, 64), (3, 3, 64, 128)),
                   ((batch, 56, 56, 256), (1, 1, 256, 512))):
      assert _default_choices(*shapes, 2, backend="gpu")[1] == "xla"


FEW_TAPS = [
    Case((2, 9, 8, 16), (3, 3, 16, 16), dict(
        window_strides=(2, 2), padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))),
    Case((2, 16, 7, 9), (16, 16, 3, 2), dict(
        window_strides=(2, 3), padding=((1, 0), (0, 1)),
        dimension_numbers=("NCHW", "OIHW", "NCHW"))),
    Case((2, 8, 8, 16), (1, 1, 16, 24), dict(
        window_strides=(2, 2), padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))),
]


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
@pytest.mark.parametrize("case", FEW_TAPS, ids=["3x3", "nchw-3x2", "1x1"])
def test_few_tap_phases_match_lax(case, dtype, monkeypatch):
  """A strided layer's input gradient in phases with one or two taps (some
  with none) and their own convolutions chosen by the policy (thresholds
  lowered so that they fold and stack): no convolution of the program is
  dilated, and forward and both gradients equal lax's."""
  for constant, value in (("PHASE_FEW_TAPS", True), ("FOLD_MIN_ELEMENTS", 0),
                          ("FOLD_MIN_FEATURES", 0), ("STACK_TAPS", True)):
    monkeypatch.setattr(_algorithms, constant, value)
  lhs, rhs = case.arrays(jnp.float32)
  geometry = jaxconv.make_conv_geometry(lhs.shape, rhs.shape, **case.kwargs)
  out = jaxconv.conv_output_shape(geometry, lhs.shape, rhs.shape)
  dx = jaxconv.convolution.input_gradient_geometry(geometry, lhs.shape,
                                                   rhs.shape)
  assert jaxconv.choose_algorithm(dx, out, rhs.shape, lhs.shape,
                                  "cpu") == "phased"
  program = jax.jit(lambda ct, w: jaxconv.conv_input_grad(
      ct, w, lhs.shape, **case.kwargs)).lower(
          jax.ShapeDtypeStruct(out, jnp.float32), rhs).as_text()
  dilations = re.findall(r"lhs_dilate = \[([0-9, ]*)\]", program)
  assert "dot_general" in program or dilations, program
  assert all(set(d.replace(" ", "").split(",")) == {"1"} for d in dilations), (
      dilations)
  compare_with_lax(case, dtype)


@pytest.mark.parametrize("strips", [False, True])
def test_kernel_gradients_in_strips_where_told(strips, monkeypatch):
  """STRIP_KERNEL_GRADIENTS (by default: on a CPU with AVX-512) puts
  the kernel gradients of channels-last 2-D layers in strips where their
  patches are at least STRIP_MIN_WIDTH wide, each patch element meets at
  least STRIP_MIN_REUSE kernel rows x output features and an operand has
  at least STRIP_MIN_ELEMENTS elements, before chunking or folding them;
  the RGB stem (3 features x 7 columns), smaller layers, 2-row kernels
  with 32 output features, NCHW and the GPU are left as they were."""
  monkeypatch.setattr(_algorithms, "STRIP_KERNEL_GRADIENTS", strips)
  monkeypatch.setattr(_algorithms, "FOLD_KERNEL_GRADIENTS", False)
  nchw = ("NCHW", "OIHW", "NCHW")

  def choice(*args, **kwargs):
    return _default_choices(*args, **kwargs)[2]

  yes = "strips" if strips else None
  for lhs_shape, rhs_shape, stride, otherwise in (
      ((8, 56, 56, 64), (3, 3, 64, 64), 1, "xla"),
      ((32, 56, 56, 64), (3, 3, 64, 64), 1, "chunked"),
      ((8, 56, 56, 64), (3, 3, 64, 128), 2, "xla"),
      ((32, 28, 28, 32), (3, 3, 32, 32), 1, "xla")):
    assert choice(lhs_shape, rhs_shape, stride) == (yes or otherwise)
    assert choice(lhs_shape, rhs_shape, stride, backend="gpu") == "xla"
  assert choice((8, 224, 224, 3), (7, 7, 3, 64), 2) == "chunked"
  assert choice((8, 8, 8, 16), (3, 3, 16, 16)) == "xla"
  assert choice((32, 16, 16, 32), (3, 3, 32, 32)) == "xla"     # 262 144
  # A kernel phase of the transposed benchmark layer: 2 rows x 32 features.
  assert choice((8, 28, 28, 64), (2, 2, 64, 32)) == "xla"
  assert choice((8, 28, 28, 64), (3, 2, 64, 32)) == (yes or "xla")
  assert choice((8, 64, 56, 56), (64, 64, 3, 3), layout=nchw) == "xla"
  monkeypatch.setattr(_algorithms, "STRIP_MIN_WIDTH", 21)
  assert choice((8, 224, 224, 3), (7, 7, 3, 64), 2) == (yes or "chunked")


def test_default_choice_is_a_pure_function_of_geometry(monkeypatch):
  # "folded" below; where STACK_TAPS puts "stacked" in its place, see
  # test_taps_stacked_where_told.
  monkeypatch.setattr(_algorithms, "STACK_TAPS", False)
  def choice(lhs_shape, rhs_shape, backend, padding="SAME", stride=1, **kw):
    geometry = jaxconv.make_conv_geometry(
        lhs_shape, rhs_shape, stride, padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), **kw)
    out = jaxconv.conv_output_shape(geometry, lhs_shape, rhs_shape)
    return jaxconv.choose_algorithm(geometry, lhs_shape, rhs_shape, out,
                                    backend)
  assert choice((8, 56, 56, 256), (1, 1, 256, 64), "cpu") == "shifted"
  assert choice((8, 28, 28, 128), (3, 3, 1, 128), "cpu",
                feature_group_count=128) == "shifted"
  # Dense 2-D layers of at least FOLD_MIN_ELEMENTS with at least
  # FOLD_MIN_FEATURES contracted features: the first spatial dimension
  # folded, row by row; smaller ones, fewer features, and the GPU, XLA's
  # kernel. 3-D layers fold whatever their features.
  assert choice((8, 56, 56, 64), (3, 3, 64, 64), "cpu") == "folded"
  assert choice((8, 56, 56, 64), (3, 3, 64, 64), "gpu") == "xla"
  assert choice((8, 8, 8, 16), (3, 3, 16, 16), "cpu") == "xla"
  assert choice((32, 28, 28, 32), (3, 3, 32, 32), "cpu") == "xla"
  volume = jaxconv.make_conv_geometry(
      (8, 16, 16, 16, 16), (3, 3, 3, 16, 32), 1, "SAME",
      dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
  assert jaxconv.choose_algorithm(volume, (8, 16, 16, 16, 16),
                                  (3, 3, 3, 16, 32), (8, 16, 16, 16, 32),
                                  "cpu") == "folded"
  assert choice((8, 56, 56, 256), (1, 1, 256, 64), "gpu") == "xla"
  # Large dense layers with more than 8 samples: in chunks of 8 on the CPU;
  # small ones (such as the dilated benchmark layer) stay whole.
  assert choice((32, 56, 56, 64), (3, 3, 64, 64), "cpu") == "chunked"
  assert choice((32, 56, 56, 64), (3, 3, 64, 64), "gpu") == "xla"
  assert choice((32, 28, 28, 64), (3, 3, 64, 64), "cpu",
                rhs_dilation=2) == "folded"
  assert choice((32, 28, 28, 64), (3, 3, 64, 64), "cpu") == "folded"
  # ... and so do forward passes whose output is more than twice their input
  # (the chunks' outputs are concatenated), which fold instead at stride 1
  # given enough features, but strided only with FOLD_STRIDED (a strided
  # first dimension folded measured no faster on AMD's CPUs; see
  # test_strided_layers_fold_where_told).
  assert choice((32, 224, 224, 64), (7, 7, 64, 256), "cpu") == "folded"
  for strided in (False, True):
    monkeypatch.setattr(_algorithms, "FOLD_STRIDED", strided)
    assert choice((32, 224, 224, 64), (7, 7, 64, 1024), "cpu",
                  stride=2) == ("folded" if strided else "xla")
  monkeypatch.setattr(_algorithms, "FOLD_STRIDED", None)
  assert choice((32, 224, 224, 3), (7, 7, 3, 64), "cpu") == "xla"
  assert choice((32, 56, 56, 64), (3, 3, 32, 64), "cpu",
                feature_group_count=2) == "split_groups"
  # Input dilation (a transposed convolution, a strided input gradient).
  transposed = dict(padding=((2, 2), (2, 2)), lhs_dilation=2)
  assert choice((8, 28, 28, 64), (4, 4, 64, 32), "cpu",
                **transposed) == "phased"
  assert choice((8, 28, 28, 64), (4, 4, 64, 32), "gpu",
                **transposed) == "xla"
  # Measured slower split into phases: few output features (the input
  # gradient of a 3-channel stem, which is chunked instead: 0.8 M elements
  # per sample), or, except where PHASE_FEW_TAPS says so, phases with a
  # single tap (K < 2a; see test_few_tap_phases_where_told).
  assert choice((8, 112, 112, 64), (7, 7, 64, 3), "cpu",
                **transposed) == "chunked"
  assert choice((2, 112, 112, 64), (7, 7, 64, 3), "cpu",
                **transposed) == "xla"
  for few in (False, True):
    monkeypatch.setattr(_algorithms, "PHASE_FEW_TAPS", few)
    assert choice((8, 28, 28, 128), (3, 3, 128, 64), "cpu",
                  **transposed) == ("phased" if few else "xla")
  # A 1x1 kernel meets one phase only: phased whatever the host.
  assert choice((8, 28, 28, 128), (1, 1, 128, 64), "cpu",
                padding=((0, 1), (0, 1)), lhs_dilation=2) == "phased"
  monkeypatch.setattr(_algorithms, "PHASE_FEW_TAPS", None)
  # Grouped: one dense convolution per group, up to 32 groups.
  assert choice((8, 28, 28, 128), (3, 3, 32, 128), "cpu",
                feature_group_count=4) == "split_groups"
  assert choice((8, 28, 28, 128), (3, 3, 32, 128), "gpu",
                feature_group_count=4) == "xla"
  assert choice((8, 28, 28, 128), (3, 3, 2, 128), "cpu",
                feature_group_count=64) == "xla"
  assert choice((8, 56, 56, 256), (1, 1, 256, 64), "cpu",
                algorithm="xla") == "xla"


@pytest.mark.parametrize("ynnpack", [True, False])
def test_xla_kernel_where_ynnpack_is_off(ynnpack, monkeypatch):
  """Where XLA's 2-D convolutions are not YNNPACK's but its Eigen kernel's
  (XLA_YNNPACK_CONVOLUTIONS), the dense 2-D convolutions without input
  dilation go to XLA: forward passes and kernel gradients, folded, stacked,
  in strips or in chunks otherwise. What XLA does slowly either way stays
  direct: the strided input gradients (phased, or chunked for the stem),
  1x1 and depthwise kernels, groups, a transposed layer's phases, 3-D
  layers (folded into 2-D planes). The kernel gradients' strips, which
  the rule comes before, are pinned on, so that the test holds on every
  host."""
  monkeypatch.setattr(_algorithms, "XLA_YNNPACK_CONVOLUTIONS", ynnpack)
  monkeypatch.setattr(_algorithms, "STRIP_KERNEL_GRADIENTS", True)
  assert _algorithms._xla_in_ynnpack() is ynnpack
  for batch in (8, 32):
    dense = _default_choices((batch, 56, 56, 64), (3, 3, 64, 64))
    strided = _default_choices((batch, 56, 56, 64), (3, 3, 64, 128), 2)
    stem = _default_choices((batch, 224, 224, 3), (7, 7, 3, 64), 2)
    if ynnpack:
      assert dense[0] in ("folded", "stacked", "chunked"), dense
      assert dense[2] == strided[2] == "strips", (dense, strided)
    else:
      assert dense == ("xla", "xla", "xla")
      assert strided[0] == strided[2] == "xla"
      assert stem[0] == stem[2] == "xla"
    assert strided[1] in ("phased", "chunked", "xla")
    assert stem[1] == "chunked"
    assert _default_choices((batch, 56, 56, 256), (1, 1, 256, 64)) == (
        "shifted", "shifted", "window_dot")
    for backend in ("gpu", "tpu"):
      assert _default_choices((batch, 56, 56, 64), (3, 3, 64, 64),
                              backend=backend) == ("xla", "xla", "xla")
  for per_group, groups, expected in ((32, 4, "split_groups"),
                                      (1, 128, "shifted")):
    kernel = (3, 3, per_group, 128)
    grouped = jaxconv.make_conv_geometry(
        (8, 28, 28, 128), kernel, (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups)
    assert jaxconv.choose_algorithm(grouped, (8, 28, 28, 128), kernel,
                                    (8, 28, 28, 128), "cpu") == expected
  assert _default_choices((8, 16, 16, 16, 16), (3, 3, 3, 16, 32),
                          layout=("NDHWC", "DHWIO", "NDHWC"))[0] == "folded"
  transposed = jaxconv.make_conv_geometry(
      (8, 28, 28, 64), (4, 4, 64, 32), (1, 1), ((2, 2), (2, 2)),
      lhs_dilation=(2, 2), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert jaxconv.choose_algorithm(transposed, (8, 28, 28, 64), (4, 4, 64, 32),
                                  (8, 57, 57, 32), "cpu") == "phased"


_PROBE = """
import jax, jax.numpy as jnp, numpy as np, jaxconv
from jax import lax
from jaxconv import _algorithms
x, w = jnp.ones((2, 9, 9, 32)), jnp.ones((3, 3, 32, 32)) / 9
loss = lambda conv: lambda x, w: jnp.sum(conv(x, w) ** 2)
ours = jax.jit(jax.grad(loss(lambda x, w: jaxconv.conv(x, w, padding="SAME")),
                        (0, 1)))(x, w)      # the probe runs while tracing
theirs = jax.grad(loss(lambda x, w: lax.conv_general_dilated(
    x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))),
                  (0, 1))(x, w)
for a, b in zip(ours, theirs):
  np.testing.assert_allclose(a, b, rtol=1e-5)
assert _algorithms.xla_convolutions_in_ynnpack.cache_info().currsize == 1
print(_algorithms.xla_convolutions_in_ynnpack(),
      _algorithms.grown_convolutions_leave_ynnpack(),
      _algorithms.choose_algorithm(
    jaxconv.make_conv_geometry(
        (8, 56, 56, 64), (3, 3, 64, 64), 1, "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC")),
    (8, 56, 56, 64), (3, 3, 64, 64), (8, 56, 56, 64), "cpu"))
"""


@pytest.mark.parametrize("flag, in_ynnpack", [
    ("=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION", True),
    ("=-LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION", False),
    ("=", False)])
def test_probe_reads_the_xla_flags(flag, in_ynnpack):
  """By default (XLA_YNNPACK_CONVOLUTIONS = None) a probe convolution
  compiled once per process, the first time the policy asks (here while a
  jitted gradient is traced, which still equals lax's), tells whether XLA
  hands 2-D convolutions to YNNPACK, as XLA_FLAGS configure it: on, off
  with YNNPACK's dots kept, all of YNNPACK off. The policy follows: "xla"
  where they are off, "grown" where they are on and a second probe
  (GROW_OUTPUTS = None) finds that a grown output leaves YNNPACK."""
  flags = "--xla_cpu_experimental_ynn_fusion_type" + flag
  result = subprocess.run(
      [sys.executable, "-c", _PROBE], capture_output=True, text=True,
      timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu",
                        "XLA_FLAGS": flags})
  assert result.returncode == 0, result.stderr
  probe, grown, choice = result.stdout.split()
  assert probe == str(in_ynnpack)
  assert (choice == "xla") is not in_ynnpack, choice
  assert (choice == "grown") is (in_ynnpack and grown == "True"), choice


def test_probe_without_a_cpu_backend(monkeypatch):
  """With no CPU device to compile the probes on, the policy assumes XLA's
  default, YNNPACK's kernel, and does not grow outputs."""
  def no_cpu(backend=None):
    raise RuntimeError(f"Unknown backend {backend}")
  monkeypatch.setattr(jax, "devices", no_cpu)
  assert _algorithms.xla_convolutions_in_ynnpack.__wrapped__() is True
  assert _algorithms.grown_convolutions_leave_ynnpack.__wrapped__() is False


def _geometry_and_out(lhs_shape, rhs_shape, stride=1, padding="SAME",
                      rhs_dilation=None, layout=("NHWC", "HWIO", "NHWC")):
  geometry = jaxconv.make_conv_geometry(
      lhs_shape, rhs_shape, stride, padding, rhs_dilation=rhs_dilation,
      dimension_numbers=layout)
  return geometry, jaxconv.conv_output_shape(geometry, lhs_shape, rhs_shape)


def test_growth_plan():
  """"grown" grows the dimension that needs the fewest extra output
  positions for its length (N - Q + 1 of Q), none where the output is
  longer already, and is unavailable with input dilation; the policy takes
  it only where that costs at most GROW_MAX_FRACTION."""
  cases = [
      ((8, 56, 56, 64), (3, 3, 64, 64), 1, "SAME", None, (0, 1), True),
      ((8, 56, 56, 64), (3, 3, 64, 64), 1, "VALID", None, (0, 3), True),
      ((8, 8, 64, 64), (3, 3, 64, 64), 1, "SAME", None, (1, 1), True),
      ((8, 28, 28, 64), (3, 3, 64, 64), 1, "SAME", (2, 2), (0, 1), True),
      ((8, 28, 28, 64), (7, 7, 64, 64), 1, "VALID", None, (0, 7), False),
      ((8, 56, 56, 64), (3, 3, 64, 128), 2, "SAME", None, (0, 29), False),
      ((8, 56, 56, 64), (3, 3, 64, 64), 1, ((2, 2), (1, 1)), None, (0, 0),
       True),
  ]
  for lhs, rhs, stride, padding, dilation, growth, cheap in cases:
    geometry, out = _geometry_and_out(lhs, rhs, stride, padding, dilation)
    assert _algorithms._growth(geometry, lhs, out) == growth, (lhs, padding)
    assert _algorithms._cheap_growth(geometry, lhs, out) is cheap
    assert _algorithms.supports("grown", geometry, lhs, rhs, out)
  strided, _ = _geometry_and_out((8, 56, 56, 64), (3, 3, 64, 128), 2)
  dx = jaxconv.convolution.input_gradient_geometry(
      strided, (8, 56, 56, 64), (3, 3, 64, 128))
  assert not _algorithms.supports("grown", dx, (8, 28, 28, 128),
                                  (3, 3, 64, 128), (8, 56, 56, 64))


@pytest.mark.parametrize("grow", [False, True])
def test_grown_where_told(grow, monkeypatch):
  """GROW_OUTPUTS (by default: where a probe finds that a grown output
  leaves YNNPACK) puts "grown" before the stacked, folded and chunked forms
  for dense 2-D forward passes and input gradients contracting at least
  GROW_MIN_FEATURES features, where one more row or a few suffice: not for
  kernel gradients (whose output, the kernel, is far shorter than their
  input), strided forward passes, layers of 32 features, 1-D layers, 3-D
  layers themselves (their planes follow the 2-D rules), other backends,
  nor where YNNPACK's convolutions are off."""
  monkeypatch.setattr(_algorithms, "GROW_OUTPUTS", grow)
  monkeypatch.setattr(_algorithms, "STRIP_KERNEL_GRADIENTS", True)
  for batch in (8, 32):
    dense = _default_choices((batch, 56, 56, 64), (3, 3, 64, 64))
    assert (dense[:2] == ("grown", "grown")) is grow, dense
    assert dense[2] == "strips"
    strided = _default_choices((batch, 56, 56, 64), (3, 3, 64, 128), 2)
    assert strided[0] != "grown" and strided[2] == "strips", strided
    narrow = _default_choices((batch, 56, 56, 32), (3, 3, 32, 32))
    assert "grown" not in narrow, narrow
    geometry, out = _geometry_and_out((batch, 28, 28, 64), (3, 3, 64, 64),
                                      rhs_dilation=(2, 2))
    dilated = jaxconv.choose_algorithm(geometry, (batch, 28, 28, 64),
                                       (3, 3, 64, 64), out, "cpu")
    assert (dilated == "grown") is grow, dilated
    assert "grown" not in _default_choices(
        (batch, 16, 16, 16, 64), (3, 3, 3, 64, 64),
        layout=("NDHWC", "DHWIO", "NDHWC"))
    assert "grown" not in _default_choices(
        (batch, 256, 64), (5, 64, 64), layout=("NWC", "WIO", "NWC"))
    for backend in ("gpu", "tpu"):
      assert _default_choices((batch, 56, 56, 64), (3, 3, 64, 64),
                              backend=backend) == ("xla", "xla", "xla")
  monkeypatch.setattr(_algorithms, "XLA_YNNPACK_CONVOLUTIONS", False)
  assert _default_choices((8, 56, 56, 64), (3, 3, 64, 64)) == (
      "xla", "xla", "xla")


def test_grown_convolutions_leave_ynnpack(monkeypatch):
  """What "grown" is for, checked against this process's XLA: a 2-D
  convolution with the output grown past the input compiles to no YNNPACK
  fusion exactly where the probe says so, while the same convolution as
  it is does reach YNNPACK where the other probe says that. And the
  policy's gradients with "grown" chosen equal lax's, for a "same" and a
  "valid" layer, in NHWC and NCHW."""
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 40, 36, 64)),
                  jnp.float32)
  w = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3, 64, 64)),
                  jnp.float32) / 24
  for algorithm, expected in (
      ("grown", not _algorithms.grown_convolutions_leave_ynnpack()),
      ("xla", _algorithms.xla_convolutions_in_ynnpack())):
    f = jax.jit(functools.partial(jaxconv.conv, padding="SAME",
                                  algorithm=algorithm))
    text = f.lower(x, w).compile().as_text()
    assert ("ynn_fusion" in text) is expected, algorithm
  monkeypatch.setattr(_algorithms, "GROW_OUTPUTS", True)
  for padding in ("SAME", "VALID"):
    for layout in (("NHWC", "HWIO", "NHWC"), ("NCHW", "OIHW", "NCHW")):
      lhs = x if layout[0] == "NHWC" else jnp.transpose(x, (0, 3, 1, 2))
      rhs = w if layout[1] == "HWIO" else jnp.transpose(w, (3, 2, 0, 1))
      geometry, out = _geometry_and_out(lhs.shape, rhs.shape, 1, padding,
                                        layout=layout)
      assert jaxconv.choose_algorithm(geometry, lhs.shape, rhs.shape, out,
                                      "cpu") == "grown", (padding, layout)
      def loss(conv):
        return lambda a, b: jnp.sum(jnp.sin(conv(a, b)))
      ours = jax.jit(jax.grad(loss(functools.partial(
          jaxconv.conv_general_dilated, window_strides=(1, 1),
          padding=padding, dimension_numbers=layout)), (0, 1)))(lhs, rhs)
      theirs = jax.grad(loss(functools.partial(
          lax.conv_general_dilated, window_strides=(1, 1), padding=padding,
          dimension_numbers=layout)), (0, 1))(lhs, rhs)
      for a, b in zip(ours, theirs):
        assert_close(a, b, jnp.float32)
