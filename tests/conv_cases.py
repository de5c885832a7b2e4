"""Convolution cases shared by the rule, algorithm and policy tests, and
the comparison with lax that all of them use.

The oracle is ``jax.vjp`` of ``lax.conv_general_dilated`` in float64 at
HIGHEST precision: forward and both gradients for a random cotangent.
"""

from __future__ import annotations

import dataclasses
import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jaxconv
from jaxconv import convolution
from tests.helpers import assert_close


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


def place(canonical_shape, spec):
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
    for size, k, d, a, (lo, hi) in zip(spatial, kernel, rhs_dil, lhs_dil,
                                       padding):
      hypothesis.assume((size - 1) * a + 1 + lo + hi >= (k - 1) * d + 1)
  else:
    padding = kind
    for size, k, d in zip(spatial, kernel, rhs_dil):
      hypothesis.assume(kind != "VALID" or size >= (k - 1) * d + 1)
  perm = lambda: tuple(draw(st.permutations(range(n + 2))))
  lhs_spec, rhs_spec, out_spec = perm(), perm(), perm()
  dnums = lax.ConvDimensionNumbers(lhs_spec, rhs_spec, out_spec)
  lhs_shape = place([batch, channels] + spatial, lhs_spec)
  rhs_shape = place([out_features, in_per_group] + kernel, rhs_spec)
  kwargs = dict(window_strides=tuple(strides), padding=padding,
                lhs_dilation=tuple(lhs_dil), rhs_dilation=tuple(rhs_dil),
                dimension_numbers=dnums, feature_group_count=groups,
                batch_group_count=batch_groups)
  return Case(lhs_shape, rhs_shape, kwargs)


def lax_conv(case):
  return functools.partial(lax.conv_general_dilated, precision="highest",
                           **case.kwargs)


def jaxconv_conv(case):
  return functools.partial(jaxconv.conv_general_dilated,
                           precision="highest", **case.kwargs)


def compare_with_lax(case, dtype, seed=0, conv=None):
  """jaxconv in ``dtype`` against lax in float64: forward and both VJPs.

  ``conv`` is the function of ``(lhs, rhs)`` under test; ``None`` means
  ``jaxconv.conv_general_dilated`` with the case's arguments. Raises
  AssertionError (``"...: scaled error ..."``) on a numerical mismatch.
  """
  lhs, rhs = case.arrays(dtype, seed)
  conv = jaxconv_conv(case) if conv is None else conv
  out, pullback = jax.vjp(conv, lhs, rhs)
  ref_out, ref_pullback = jax.vjp(lax_conv(case), lhs.astype(jnp.float64),
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

# More samples than a chunk holds (8 by default), so that "chunked" splits
# them: a batch of 19 (chunks of 8, 8 and 3) in NCHW, and of 17 (8, 8 and 1)
# in NHWC with stride and dilation; the kernel gradient then chunks its
# contracted batch.
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


def pass_shapes(lhs_shape, rhs_shape, window_strides=1, padding="SAME",
                dimension_numbers=("NHWC", "HWIO", "NHWC"), **kwargs):
  """The three convolutions of a layer's training step, each as
  ``(geometry, lhs_shape, rhs_shape, out_shape)``: the forward pass, the
  input gradient and the kernel gradient. Arguments as ``lax``'s (channels
  last and "SAME" by default); the policy is the ``use_policy`` setting's."""
  geometry = jaxconv.make_conv_geometry(
      lhs_shape, rhs_shape, window_strides, padding,
      dimension_numbers=dimension_numbers, **kwargs)
  out = jaxconv.conv_output_shape(geometry, lhs_shape, rhs_shape)
  dx = convolution.input_gradient_geometry(geometry, lhs_shape, rhs_shape)
  dw = convolution.kernel_gradient_geometry(geometry, lhs_shape, rhs_shape)
  return ((geometry, tuple(lhs_shape), tuple(rhs_shape), out),
          (dx, out, tuple(rhs_shape), tuple(lhs_shape)),
          (dw, tuple(lhs_shape), out, tuple(rhs_shape)))
