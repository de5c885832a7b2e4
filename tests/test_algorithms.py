"""The algorithms that evaluate a convolution (``jaxconv._algorithms``), each
forced in turn on every convolution it supports (the forward pass and both
gradients), against the same oracles as the rule: ``jax.vjp`` of lax in
float64 and finite differences to second order. Then what each algorithm
makes of a convolution: the programs it lowers to (no input dilation left
by "phased", no groups by "split_groups", at most a chunk of samples per
convolution, one spatial dimension fewer per fold, ...).
"""

from __future__ import annotations

import functools
import re

import hypothesis
import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from jax import lax

import jaxconv
from jaxconv import _algorithms
from jaxconv._algorithms import chunked, grown, strips
from tests.conv_cases import (
    CHUNKED,
    CHUNKED_IDS,
    FIXED,
    FIXED_IDS,
    FOLDED,
    FOLDED_IDS,
    PHASED,
    PHASED_IDS,
    Case,
    compare_with_lax,
    conv_cases,
    jaxconv_conv,
    pass_shapes,
)
from tests.helpers import assert_close, examples

# Every registered algorithm, "xla" first.
ALL_ALGORITHMS = list(_algorithms.REGISTRY)


def with_thresholds(**changes):
  """``use_policy`` of the host's policy with some thresholds changed."""
  return jaxconv.use_policy(jaxconv.host_policy().replace(thresholds=changes))


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
    f = jax.jit(jaxconv_conv(case))  # traced here, inside the block
    jax.test_util.check_grads(f, (lhs, rhs), order=2, modes=("rev",))


@pytest.mark.parametrize("case", FOLDED[:2], ids=FOLDED_IDS[:2])
def test_folded_check_grads(case):
  """Second order through both forms of "folded", with stride, dilations
  and padding in the dimension it unrolls."""
  lhs, rhs = case.arrays(jnp.float64)
  with jaxconv.use_algorithm("folded"):
    f = jax.jit(jaxconv_conv(case))
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
    out, pullback = jax.vjp(jaxconv_conv(case), lhs, rhs)
    jaxpr = str(jax.make_jaxpr(pullback)(out))
  batched = re.findall(r":f32\[2,\d+,\d+\] = dot_general\[\s*dimension_numbers="
                       r"\(\(\[1\], \[1\]\), \(\[0\], \[0\]\)\)", jaxpr)
  assert bool(batched) == halves, jaxpr


# Kernel gradients of channels-last 2-D layers in strips of rows (eq. 74),
# with the strips' size (``strip_elements``) set so that the plan is several
# strips of a few rows per sample, several whole samples per strip, or one
# strip for the batch;
# stride, kernel dilation and uneven or cropping padding in both
# dimensions; the products' output rows indexed by the delta's features or,
# where those are more than the patch width (OHWI, 2 features x 2 kernel
# columns < 6), by the patch width.
STRIPS = [
    # (case, strip_elements, plan (samples, rows), strips)
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
def test_strips_kernel_gradient(case, elements, plan, count, dtype):
  """Forced "strips", the kernel gradient (one loop over ``count`` strips
  of ``plan``) equals lax's; the other two convolutions are XLA's."""
  with with_thresholds(strip_elements=elements):
    _, _, (dw, lhs_shape, out_shape, rhs_shape) = pass_shapes(
        case.lhs_shape, case.rhs_shape, **case.kwargs)
    assert _algorithms.supports("strips", dw, lhs_shape, out_shape, rhs_shape)
    assert strips.strip_plan(lhs_shape, out_shape, rhs_shape, dw) == plan
    with jaxconv.use_algorithm("strips"):
      compare_with_lax(case, dtype)
      lhs, rhs = case.arrays(dtype)
      out, pullback = jax.vjp(jaxconv_conv(case), lhs, rhs)
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
  """Forced "chunked", every convolution sees at most a chunk of samples:
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
  assert labels and all(len(x.split(",")) == 3 for x in labels), labels
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


def test_chunk_size_shrinks_for_large_samples():
  """A chunk holds at most ``chunk_samples`` samples, and fewer where a
  sample holds many elements: the RGB stem's gradients at 224x224 hold 0.8 M
  elements per sample of the cotangent, so 2 samples a chunk
  (``chunk_elements``); a 3x3 64-feature layer at 56x56, 0.2 M: 8."""
  def chunk(lhs_shape, rhs_shape, stride):
    geometry, lhs, rhs, out = pass_shapes(lhs_shape, rhs_shape, stride)[0]
    return chunked.chunk_samples(geometry, lhs, rhs, out)
  assert chunk((8, 224, 224, 3), (7, 7, 3, 64), 2) == 2
  assert chunk((32, 56, 56, 64), (3, 3, 64, 64), 1) == 8
  with with_thresholds(chunk_samples=4):
    assert chunk((32, 56, 56, 64), (3, 3, 64, 64), 1) == 4
  with with_thresholds(chunk_elements=10**9):
    assert chunk((8, 224, 224, 3), (7, 7, 3, 64), 2) == 8


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
def test_few_tap_phases_match_lax(case, dtype):
  """A strided layer's input gradient in phases with one or two taps (some
  with none) and their own convolutions chosen by the policy (thresholds
  lowered so that they fold and stack): no convolution of the program is
  dilated, and forward and both gradients equal lax's."""
  policy = jaxconv.PRESETS["intel-avx512"].replace(
      thresholds=dict(fold_min_elements=0, fold_min_features=0))
  with jaxconv.use_policy(policy):
    _, (dx, out, rhs_shape, lhs_shape), _ = pass_shapes(
        case.lhs_shape, case.rhs_shape, **case.kwargs)
    assert jaxconv.choose_algorithm(dx, out, rhs_shape, lhs_shape,
                                    "cpu") == "phased"
    program = jax.jit(lambda ct, w: jaxconv.conv_input_grad(
        ct, w, lhs_shape, **case.kwargs)).lower(
            jax.ShapeDtypeStruct(out, jnp.float32),
            jax.ShapeDtypeStruct(rhs_shape, jnp.float32)).as_text()
    compare_with_lax(case, dtype)
  dilations = re.findall(r"lhs_dilate = \[([0-9, ]*)\]", program)
  assert "dot_general" in program or dilations, program
  assert all(set(d.replace(" ", "").split(",")) == {"1"} for d in dilations), (
      dilations)


def test_growth_plan():
  """"grown" grows the dimension that needs the fewest extra output
  positions for its length (N - Q + 1 of Q), none where the output is
  longer already, and is unavailable with input dilation."""
  cases = [
      ((8, 56, 56, 64), (3, 3, 64, 64), 1, "SAME", None, (0, 1)),
      ((8, 56, 56, 64), (3, 3, 64, 64), 1, "VALID", None, (0, 3)),
      ((8, 8, 64, 64), (3, 3, 64, 64), 1, "SAME", None, (1, 1)),
      ((8, 28, 28, 64), (3, 3, 64, 64), 1, "SAME", (2, 2), (0, 1)),
      ((8, 28, 28, 64), (7, 7, 64, 64), 1, "VALID", None, (0, 7)),
      ((8, 56, 56, 64), (3, 3, 64, 128), 2, "SAME", None, (0, 29)),
      ((8, 56, 56, 64), (3, 3, 64, 64), 1, ((2, 2), (1, 1)), None, (0, 0)),
  ]
  for lhs, rhs, stride, padding, dilation, growth in cases:
    geometry, lhs, rhs, out = pass_shapes(lhs, rhs, stride, padding,
                                          rhs_dilation=dilation)[0]
    assert grown.growth(geometry, lhs, out) == growth, (lhs, padding)
    assert _algorithms.supports("grown", geometry, lhs, rhs, out)
  _, (dx, out, rhs, lhs), _ = pass_shapes((8, 56, 56, 64), (3, 3, 64, 128), 2)
  assert not _algorithms.supports("grown", dx, out, rhs, lhs)


def test_grown_convolutions_leave_ynnpack():
  """What "grown" is for, checked against this process's XLA: a 2-D
  convolution with the output grown past the input compiles to no YNNPACK
  fusion exactly where the probe says so, while the same convolution as it
  is does reach YNNPACK where the other probe says that. And the gradients
  with "grown" forced equal lax's, for a "same" and a "valid" layer, in
  NHWC and NCHW."""
  from jaxconv._algorithms import host
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 40, 36, 64)),
                  jnp.float32)
  w = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3, 64, 64)),
                  jnp.float32) / 24
  for algorithm, expected in (
      ("grown", not host.grown_convolutions_leave_ynnpack()),
      ("xla", host.xla_convolutions_in_ynnpack())):
    f = jax.jit(functools.partial(jaxconv.conv, padding="SAME",
                                  algorithm=algorithm))
    text = f.lower(x, w).compile().as_text()
    assert ("ynn_fusion" in text) is expected, algorithm
  for padding in ("SAME", "VALID"):
    for layout in (("NHWC", "HWIO", "NHWC"), ("NCHW", "OIHW", "NCHW")):
      lhs = x if layout[0] == "NHWC" else jnp.transpose(x, (0, 3, 1, 2))
      rhs = w if layout[1] == "HWIO" else jnp.transpose(w, (3, 2, 0, 1))

      def loss(conv):
        return lambda a, b: jnp.sum(jnp.sin(conv(a, b)))
      ours = jax.jit(jax.grad(loss(functools.partial(
          jaxconv.conv_general_dilated, window_strides=(1, 1),
          padding=padding, dimension_numbers=layout, algorithm="grown")),
          (0, 1)))(lhs, rhs)
      theirs = jax.grad(loss(functools.partial(
          lax.conv_general_dilated, window_strides=(1, 1), padding=padding,
          dimension_numbers=layout)), (0, 1))(lhs, rhs)
      for ours_grad, lax_grad in zip(ours, theirs):
        assert_close(ours_grad, lax_grad, jnp.float32)
