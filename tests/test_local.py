"""Image patches (im2col), col2im and the locally connected convolution.

Oracles: ``lax.conv_general_dilated_patches`` and
``lax.conv_general_dilated_local`` (forward, and ``jax.vjp`` of them in
float64: lax defines both through differentiable ops), Flax's
``nn.ConvLocal``, the slow transcription in ``jaxconv.reference``, the
adjoint identity of the patches and col2im, the tied-weight identity (a
locally connected layer with one kernel everywhere is a convolution),
finite differences, and deliberately wrong rules that must fail.
"""

from __future__ import annotations

import dataclasses

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from jax import lax

import jaxconv
from jaxconv import reference
from tests.helpers import assert_close, examples, scaled_error


@dataclasses.dataclass(frozen=True)
class Case:
  """One patch geometry: the input's shape, the window and lax's arguments."""

  lhs_shape: tuple[int, ...]
  filter_shape: tuple[int, ...]
  kwargs: dict = dataclasses.field(hash=False)
  out_features: int = 3

  @property
  def dnums(self):
    return lax.conv_dimension_numbers(
        self.lhs_shape, (1, 1) + self.filter_shape,
        self.kwargs.get("dimension_numbers"))

  def patches_shape(self):
    return jax.eval_shape(self.lax_patches, jax.ShapeDtypeStruct(
        self.lhs_shape, jnp.float32)).shape

  def kernel_shape(self):
    """The local kernels: ``O`` outputs, the patch features, the output's
    spatial sizes, placed by the rhs spec."""
    patches = self.patches_shape()
    lhs_spec, rhs_spec, out_spec = self.dnums
    shape = [0] * len(self.lhs_shape)
    shape[rhs_spec[0]] = self.out_features
    shape[rhs_spec[1]] = patches[out_spec[1]]
    for rhs_axis, out_axis in zip(rhs_spec[2:], out_spec[2:]):
      shape[rhs_axis] = patches[out_axis]
    return tuple(shape)

  def inputs(self, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=self.lhs_shape)
    w = rng.normal(size=self.kernel_shape())
    if jnp.issubdtype(dtype, jnp.complexfloating):
      x = x + 1j * rng.normal(size=x.shape)
      w = w + 1j * rng.normal(size=w.shape)
    return jnp.asarray(x, dtype), jnp.asarray(w, dtype)

  def _local_args(self):
    kw = self.kwargs
    return (kw["window_strides"], kw["padding"], self.filter_shape,
            kw.get("lhs_dilation"), kw.get("rhs_dilation"),
            kw.get("dimension_numbers"))

  def lax_patches(self, x, **extra):
    return lax.conv_general_dilated_patches(x, self.filter_shape,
                                            **self.kwargs, **extra)

  def our_patches(self, x, **extra):
    return jaxconv.conv_general_dilated_patches(x, self.filter_shape,
                                                **self.kwargs, **extra)

  def lax_local(self, x, w):
    return lax.conv_general_dilated_local(x, w, *self._local_args(),
                                          precision="highest")

  def our_local(self, x, w):
    return jaxconv.conv_general_dilated_local(x, w, *self._local_args(),
                                              precision="highest")

  def grad_kwargs(self):
    """The keyword arguments of the public gradient functions."""
    kw = self.kwargs
    return dict(window_strides=kw["window_strides"], padding=kw["padding"],
                filter_shape=self.filter_shape,
                lhs_dilation=kw.get("lhs_dilation"),
                rhs_dilation=kw.get("rhs_dilation"),
                dimension_numbers=kw.get("dimension_numbers"))


def _case(lhs_shape, filter_shape, **kwargs):
  return Case(tuple(lhs_shape), tuple(filter_shape), kwargs)


FIXED = {
    "nchw-stride-pad-dilation": _case(
        (2, 3, 7, 6), (2, 3), window_strides=(2, 1),
        padding=((1, 2), (0, 1)), rhs_dilation=(1, 2)),
    "nhwc-same-stride-2": _case(
        (2, 7, 6, 3), (3, 2), window_strides=(2, 2), padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC")),
    "1d-input-dilation-crop": _case(
        (2, 3, 5), (3,), window_strides=(3,), padding=((-1, 2),),
        lhs_dilation=(2,), rhs_dilation=(2,)),
    "out-cnhw-kernel-wh": _case(
        (2, 3, 5, 6), (2, 3), window_strides=(1, 1), padding="VALID",
        dimension_numbers=("NCHW", "OIWH", "CNHW")),
    "kernel-axes-swapped": _case(
        (2, 3, 5, 6), (2, 3), window_strides=(1, 2), padding="SAME_LOWER",
        dimension_numbers=lax.ConvDimensionNumbers((0, 1, 2, 3), (0, 1, 3, 2),
                                                   (0, 1, 2, 3))),
    "3d-same": _case(
        (2, 4, 3, 2, 5), (2, 1, 2), window_strides=(1, 2, 1), padding="SAME",
        dimension_numbers=("NDHWC", "DHWIO", "NDHWC")),
    "large-low-pad-crop-high": _case(
        (1, 2, 4), (2,), window_strides=(1,), padding=((5, -4),),
        lhs_dilation=(3,)),
    "no-spatial-dimension": _case((2, 3), (), window_strides=(),
                                  padding="VALID"),
    "empty-output": _case((2, 3, 3, 4), (4, 2), window_strides=(1, 1),
                          padding="VALID"),
    "empty-batch": _case((0, 3, 5, 4), (2, 2), window_strides=(1, 1),
                         padding=((1, 0), (0, 1))),
}
IDS = list(FIXED)
CASES = list(FIXED.values())


def _random(shape, dtype=jnp.float64, seed=1):
  rng = np.random.default_rng(seed)
  value = rng.normal(size=shape)
  if jnp.issubdtype(dtype, jnp.complexfloating):
    value = value + 1j * rng.normal(size=shape)
  return jnp.asarray(value, dtype)


def vjp_at(f, args, cotangent_seed: int, cotangent_dtype=None):
  """``f(*args)`` and its VJP for a random normal cotangent, compiled as one
  program (eager dispatch would compile every small op on its own)."""
  out = jax.eval_shape(f, *args)
  cotangent = _random(out.shape, cotangent_dtype or out.dtype,
                      seed=cotangent_seed)

  def run(args, cotangent):
    value, pullback = jax.vjp(f, *args)
    return value, pullback(cotangent)

  return (*jax.jit(run)(args, cotangent), cotangent)


# ---------------------------------------------------------------------------
# Against lax.
# ---------------------------------------------------------------------------


def compare_patches_with_lax(case, dtype, seed=0, patches=None):
  """Forward bit for bit in ``dtype``; the VJP against lax's in float64.

  ``patches`` is the function of ``x`` under test; ``None`` means
  ``case.our_patches``. Raises AssertionError on a mismatch (``"patches
  gradient: scaled error ..."`` for the gradient)."""
  x, _ = case.inputs(dtype, seed)
  out, (grad,), _ = vjp_at(patches or case.our_patches, (x,), seed + 1)
  expected = jax.jit(case.lax_patches)(x)
  assert out.shape == expected.shape and out.dtype == expected.dtype
  np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))
  _, (ref_grad,), _ = vjp_at(case.lax_patches, (x.astype(jnp.float64),),
                             seed + 1)
  assert grad.dtype == dtype
  assert_close(grad, ref_grad, dtype, "patches gradient")


def compare_local_with_lax(case, dtype, seed=0, local=None):
  """Forward and both VJPs in ``dtype`` against lax in float64.

  ``local`` is the function of ``(x, w)`` under test; ``None`` means
  ``case.our_local``. Raises AssertionError (``"...: scaled error ..."``) on
  a numerical mismatch."""
  x, w = case.inputs(dtype, seed)
  out, (x_grad, w_grad), _ = vjp_at(local or case.our_local, (x, w),
                                    seed + 1)
  ref_out, (ref_x_grad, ref_w_grad), _ = vjp_at(
      case.lax_local, (x.astype(jnp.float64), w.astype(jnp.float64)), seed + 1)
  assert out.dtype == x_grad.dtype == w_grad.dtype == dtype
  assert_close(out, ref_out, dtype, "forward")
  assert_close(x_grad, ref_x_grad, dtype, "input gradient")
  assert_close(w_grad, ref_w_grad, dtype, "kernel gradient")


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_patches_match_lax(case, dtype):
  compare_patches_with_lax(case, dtype)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_local_matches_lax_float64(case):
  compare_local_with_lax(case, jnp.float64)


@pytest.mark.parametrize("case", CASES[:3], ids=IDS[:3])
def test_local_matches_lax_float32(case):
  compare_local_with_lax(case, jnp.float32)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("case", CASES[:2], ids=IDS[:2])
def test_low_precision(case, dtype):
  compare_patches_with_lax(case, dtype)
  compare_local_with_lax(case, dtype)


@st.composite
def patch_cases(draw):
  """Random geometries over ranks 0-3, every padding kind, both dilations
  and arbitrary layouts."""
  n = draw(st.integers(0, 3))
  window = tuple(draw(st.integers(1, 3 if n < 3 else 2)) for _ in range(n))
  rhs_dil = [draw(st.integers(1, 2)) for _ in range(n)]
  lhs_dil = [draw(st.sampled_from([1, 1, 2])) for _ in range(n)]
  strides = [draw(st.integers(1, 3)) for _ in range(n)]
  spatial = [draw(st.integers(1, 6 if n < 3 else 4)) for _ in range(n)]
  kind = draw(st.sampled_from(
      ["explicit"] + (["SAME", "SAME_LOWER", "VALID"]
                      if all(a == 1 for a in lhs_dil) else [])))
  if kind == "explicit":
    padding = tuple((draw(st.integers(-1, 2)), draw(st.integers(-1, 2)))
                    for _ in range(n))
    for size, a, (lo, hi) in zip(spatial, lhs_dil, padding):
      hypothesis.assume((size - 1) * a + 1 + lo + hi >= 0)
  else:
    padding = kind
  perm = lambda: tuple(draw(st.permutations(range(n + 2))))
  dnums = lax.ConvDimensionNumbers(perm(), perm(), perm())
  canonical = [draw(st.integers(1, 2)), draw(st.integers(1, 2))] + spatial
  shape = [0] * (n + 2)
  for size, axis in zip(canonical, dnums.lhs_spec):
    shape[axis] = size
  return Case(tuple(shape), window, dict(
      window_strides=tuple(strides), padding=padding,
      lhs_dilation=tuple(lhs_dil), rhs_dilation=tuple(rhs_dil),
      dimension_numbers=dnums), out_features=draw(st.integers(1, 2)))


@hypothesis.settings(max_examples=examples(12), deadline=None)
@hypothesis.given(case=patch_cases())
def test_random_geometries_match_lax(case):
  compare_patches_with_lax(case, jnp.float64)
  compare_local_with_lax(case, jnp.float64)


@pytest.mark.parametrize("dtype", [jnp.complex128, jnp.complex64])
def test_complex(dtype):
  """JAX's convention: the VJP of a linear map is its transpose (no
  conjugation); a real operand of a complex product gets the real part."""
  case = FIXED["nchw-stride-pad-dilation"]
  x, w = case.inputs(dtype)
  real = jnp.float64 if dtype == jnp.complex128 else jnp.float32
  tolerance = 1e-10 if dtype == jnp.complex128 else 1e-5
  checks = ((case.our_patches, case.lax_patches, (x,)),
            (case.our_local, case.lax_local, (x, w)),
            (case.our_local, case.lax_local, (x, w.real.astype(real))),
            (case.our_local, case.lax_local, (x.real.astype(real), w)))
  if dtype == jnp.complex64:
    checks = checks[:2]
  for ours, theirs, args in checks:
    out, grads, _ = vjp_at(ours, args, 3)
    ref_out, ref_grads, _ = vjp_at(
        theirs, tuple(a.astype(jnp.complex128 if jnp.iscomplexobj(a)
                               else jnp.float64) for a in args), 3)
    assert out.dtype == dtype
    assert scaled_error(abs(out - ref_out), np.zeros(out.shape)) <= tolerance
    for grad, ref_grad, arg in zip(grads, ref_grads, args):
      assert grad.dtype == arg.dtype
      ref_grad = ref_grad if jnp.iscomplexobj(arg) else ref_grad.real
      assert scaled_error(abs(grad - ref_grad),
                          np.zeros(grad.shape)) <= tolerance


def test_integer_and_bool_patches():
  case = FIXED["nhwc-same-stride-2"]
  x = jnp.asarray(np.random.default_rng(0).integers(-50, 50, case.lhs_shape))
  for value in (x.astype(jnp.int8), x.astype(jnp.int32), x > 0):
    out = case.our_patches(value)
    assert out.dtype == value.dtype
    np.testing.assert_array_equal(out, case.lax_patches(value))
  out = case.our_patches(x.astype(jnp.int8), preferred_element_type=jnp.int32)
  assert out.dtype == jnp.int32
  np.testing.assert_array_equal(
      out, case.lax_patches(x.astype(jnp.int8),
                            preferred_element_type=jnp.int32))
  # An integer input has no gradient; the float kernel of a local
  # convolution still has one.
  kernel = case.inputs(jnp.float64)[1]
  grad = jax.grad(lambda w: jnp.sum(case.our_local(x.astype(jnp.int32), w)
                                    ** 2))(kernel)
  ref = jax.grad(lambda w: jnp.sum(case.lax_local(x.astype(jnp.int32), w)
                                   ** 2))(kernel)
  assert_close(grad, ref, jnp.float64, "kernel gradient, integer input")


def test_preferred_element_type():
  """Wider patches; the gradient comes back in the input's dtype."""
  case = FIXED["nchw-stride-pad-dilation"]
  x = case.inputs(jnp.float16)[0]
  out, (grad,), _ = vjp_at(
      lambda x: case.our_patches(x, preferred_element_type=jnp.float32), (x,),
      2)
  ref, (ref_grad,), _ = vjp_at(
      lambda x: case.lax_patches(x, preferred_element_type=jnp.float32), (x,),
      2)
  assert out.dtype == ref.dtype == jnp.float32
  np.testing.assert_array_equal(out, ref)
  assert grad.dtype == ref_grad.dtype == jnp.float16
  assert_close(grad, ref_grad.astype(jnp.float64), jnp.float16,
               "gradient with preferred_element_type")


def test_mixed_dtypes_and_numpy_inputs():
  """lax's dtypes: dot_general promotes mixed operands, gradients come back
  in each operand's dtype; NumPy arrays are taken as lax takes them."""
  case = FIXED["nhwc-same-stride-2"]
  x, w = case.inputs(jnp.float64)
  x32 = x.astype(jnp.float32)
  out, grads, _ = vjp_at(case.our_local, (x32, w), 2)
  ref, ref_grads, _ = vjp_at(case.lax_local, (x32, w), 2)
  assert out.dtype == ref.dtype == jnp.float64
  assert_close(out, ref, jnp.float32, "mixed forward")
  for grad, ref_grad in zip(grads, ref_grads):
    assert grad.dtype == ref_grad.dtype
    assert_close(grad, ref_grad, jnp.float32, "mixed gradient")
  np_out = case.our_local(np.asarray(x), np.asarray(w))
  assert np_out.dtype == jnp.float64
  np.testing.assert_array_equal(np_out, case.our_local(x, w))
  with jax.enable_x64(False):
    np_patches = case.our_patches(np.asarray(x))
    assert np_patches.dtype == case.lax_patches(np.asarray(x)).dtype
    np_local = case.our_local(np.asarray(x), np.asarray(w, np.float32))
    assert np_local.dtype == jnp.float32


def test_precision_arguments():
  """The precisions lax takes: the patches are the same copies under each;
  the local convolution passes a pair on to its contraction."""
  case = FIXED["nhwc-same-stride-2"]
  x, w = case.inputs(jnp.float32)
  expected = case.lax_patches(x, precision=lax.Precision.HIGHEST)
  for precision in (None, lax.Precision.HIGHEST, lax.Precision.DEFAULT):
    np.testing.assert_array_equal(case.our_patches(x, precision=precision),
                                  expected)
  pair = (lax.Precision.HIGHEST, lax.Precision.DEFAULT)
  ours = jaxconv.conv_general_dilated_local(x, w, *case._local_args(),
                                            precision=pair)
  theirs = lax.conv_general_dilated_local(x, w, *case._local_args(),
                                          precision=pair)
  assert_close(ours, theirs.astype(jnp.float64), jnp.float32, "pair")


def test_int_stride_and_no_input_features():
  """An int stride means every dimension (lax needs a sequence); no input
  features give empty patches and a zero local output (lax refuses them)."""
  case = FIXED["nchw-stride-pad-dilation"]
  x = case.inputs(jnp.float64)[0]
  np.testing.assert_array_equal(
      jaxconv.conv_general_dilated_patches(x, (2, 3), 1, "VALID"),
      lax.conv_general_dilated_patches(x, (2, 3), (1, 1), "VALID"))
  empty = jnp.ones((2, 0, 5, 6))
  assert jaxconv.conv_general_dilated_patches(
      empty, (2, 3), (1, 1), "VALID").shape == (2, 0, 4, 4)

  def loss(x, w):
    return jnp.sum(jaxconv.conv_general_dilated_local(
        x, w, (1, 1), "VALID", (2, 3)) ** 2 + 1)

  kernels = jnp.ones((4, 0, 4, 4))
  np.testing.assert_array_equal(jaxconv.conv_general_dilated_local(
      empty, kernels, (1, 1), "VALID", (2, 3)), jnp.zeros((2, 4, 4, 4)))
  x_grad, w_grad = jax.grad(loss, argnums=(0, 1))(empty, kernels)
  assert x_grad.shape == empty.shape and w_grad.shape == kernels.shape


# ---------------------------------------------------------------------------
# Against the slow reference, and identities.
# ---------------------------------------------------------------------------


def _explicit(case):
  """The reference's arguments: canonical layouts, explicit padding."""
  padding = case.kwargs["padding"]
  if padding == "VALID":
    padding = ((0, 0),) * len(case.filter_shape)
  return dict(strides=case.kwargs["window_strides"], padding=padding,
              lhs_dilation=case.kwargs.get("lhs_dilation"),
              rhs_dilation=case.kwargs.get("rhs_dilation"))


REFERENCE_IDS = ["nchw-stride-pad-dilation", "1d-input-dilation-crop",
                 "out-cnhw-kernel-wh", "large-low-pad-crop-high",
                 "no-spatial-dimension", "empty-batch"]


@pytest.mark.parametrize("name", REFERENCE_IDS)
def test_matches_reference(name):
  """Eqs. (22)-(24) written entry by entry, in canonical layouts."""
  case = FIXED[name]
  lhs_spec, rhs_spec, out_spec = case.dnums
  x, w = case.inputs(jnp.float64)
  geometry = (case.filter_shape,)
  options = _explicit(case)
  x_c = reference.to_canonical(x, lhs_spec)
  w_c = reference.to_canonical(w, rhs_spec)
  patches = reference.conv_patches(x_c, *geometry, **options)
  np.testing.assert_array_equal(
      reference.to_canonical(case.our_patches(x), out_spec), patches)
  out, (x_grad, w_grad), delta = vjp_at(case.our_local, (x, w), 1)
  assert_close(reference.to_canonical(out, out_spec),
               reference.conv_local(x_c, w_c, *geometry, **options),
               jnp.float64, "local forward")
  delta_c = reference.to_canonical(delta, out_spec)
  assert_close(reference.to_canonical(x_grad, lhs_spec),
               reference.conv_local_input_grad(delta_c, w_c, x_c.shape,
                                               *geometry, **options),
               jnp.float64, "local input gradient")
  assert_close(reference.to_canonical(w_grad, rhs_spec),
               reference.conv_local_kernel_grad(x_c, delta_c, *geometry,
                                                **options),
               jnp.float64, "local kernel gradient")
  _, (patch_grad,), patch_delta = vjp_at(case.our_patches, (x,), 5)
  assert_close(reference.to_canonical(patch_grad, lhs_spec),
               reference.conv_patches_grad(
                   reference.to_canonical(patch_delta, out_spec), x_c.shape,
                   *geometry, **options),
               jnp.float64, "col2im")


def _inner(a, b):
  return float(jnp.vdot(jnp.ravel(a), jnp.ravel(b)).real)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_adjoint_identities(case):
  """<patches(x), G> = <x, col2im(G)>, and for the bilinear local layer
  <local(x, W), delta> = <x, dE/dx> = <W, dE/dW>."""
  x, w = case.inputs(jnp.float64)
  kw = case.grad_kwargs()
  patches = case.our_patches(x)
  g = _random(patches.shape, seed=7)
  col2im = jaxconv.conv_patches_grad(g, x.shape, **kw)
  lhs, rhs = _inner(patches, g), _inner(x, col2im)
  assert abs(lhs - rhs) <= 1e-10 * max(1.0, abs(lhs))
  y = case.our_local(x, w)
  delta = _random(y.shape, seed=8)
  x_grad = jaxconv.conv_local_input_grad(delta, w, x.shape, precision="highest",
                                         **kw)
  w_grad = jaxconv.conv_local_kernel_grad(x, delta, precision="highest", **kw)
  assert x_grad.shape == x.shape and w_grad.shape == w.shape
  total = _inner(y, delta)
  for other in (_inner(x, x_grad), _inner(w, w_grad)):
    assert abs(total - other) <= 1e-10 * max(1.0, abs(total))


def test_tied_weights_give_the_convolution():
  """W[o, (c, k), i] = w[o, c, k] everywhere: the forward is eq. (5) and the
  kernel gradient summed over the positions is eq. (9)."""
  case = FIXED["nchw-stride-pad-dilation"]
  x = case.inputs(jnp.float64)[0]
  kernel = _random((case.out_features, 3) + case.filter_shape, seed=9)
  local_shape = case.kernel_shape()
  tied = jnp.broadcast_to(
      kernel.reshape(kernel.shape[:1] + (-1, 1, 1)), local_shape)
  conv_args = dict(window_strides=case.kwargs["window_strides"],
                   padding=case.kwargs["padding"],
                   rhs_dilation=case.kwargs["rhs_dilation"],
                   precision="highest")
  y = case.our_local(x, tied)
  assert_close(y, jaxconv.conv_general_dilated(x, kernel, **conv_args),
               jnp.float64, "tied forward")
  delta = _random(y.shape, seed=10)
  untied = jaxconv.conv_local_kernel_grad(x, delta, **case.grad_kwargs())
  tied_grad = jaxconv.conv_kernel_grad(x, delta, kernel.shape, **conv_args)
  assert_close(untied.sum(axis=(2, 3)).reshape(kernel.shape), tied_grad,
               jnp.float64, "kernel gradient summed over positions")


# ---------------------------------------------------------------------------
# Flax.
# ---------------------------------------------------------------------------


FLAX_LAYERS = {
    "2d-same-stride": (dict(features=4, kernel_size=(3, 3), strides=2,
                            padding="SAME"), (2, 7, 6, 3)),
    "1d-dilated": (dict(features=2, kernel_size=(2,), padding=((1, 2),),
                        kernel_dilation=2, input_dilation=2), (3, 5, 2)),
}


@pytest.mark.parametrize("name", list(FLAX_LAYERS))
def test_flax_conv_local_params_drop_in(name):
  """An ``nn.ConvLocal``'s kernel works unchanged, with Flax's channels-last
  dimension numbers; the output and both gradients agree."""
  nn = pytest.importorskip("flax.linen")
  settings, shape = FLAX_LAYERS[name]
  layer = nn.ConvLocal(param_dtype=jnp.float64, dtype=jnp.float64, **settings)
  x = _random(shape, seed=11)
  params = layer.init(jax.random.key(0), x)["params"]
  n = len(shape) - 2
  spec = "N" + "HWD"[:n] + "C"
  dnums = (spec, "HWD"[:n] + "IO", spec)
  padding = settings["padding"]
  strides = (settings.get("strides", 1),) * n
  lhs_dilation = (settings.get("input_dilation", 1),) * n
  rhs_dilation = (settings.get("kernel_dilation", 1),) * n

  def ours(x, params):
    y = jaxconv.conv_general_dilated_local(
        x, params["kernel"], strides, padding, settings["kernel_size"],
        lhs_dilation, rhs_dilation, dnums)
    return y + params["bias"]

  def theirs(x, params):
    return layer.apply({"params": params}, x)

  out, grads, _ = vjp_at(ours, (x, params), 12)
  ref, ref_grads, _ = vjp_at(theirs, (x, params), 12)
  assert_close(out, ref, jnp.float64, "flax forward")
  for grad, ref_grad in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    assert_close(grad, ref_grad, jnp.float64, "flax gradient")


# ---------------------------------------------------------------------------
# Transformations and higher orders.
# ---------------------------------------------------------------------------


def test_jit_and_vmap():
  case = FIXED["nhwc-same-stride-2"]
  x, w = case.inputs(jnp.float64)
  np.testing.assert_array_equal(jax.jit(case.our_patches)(x),
                                case.our_patches(x))
  assert_close(jax.jit(case.our_local)(x, w), case.lax_local(x, w),
               jnp.float64, "jit")
  xs = jnp.stack([x, 2 * x + 1])
  ws = jnp.stack([w, w[::-1]])
  batched = jax.vmap(case.our_local)(xs, ws)
  for b in range(2):
    assert_close(batched[b], case.lax_local(xs[b], ws[b]), jnp.float64,
                 "vmap")
  grads = jax.vmap(jax.grad(lambda x, w: jnp.sum(case.our_local(x, w) ** 2),
                            argnums=(0, 1)))(xs, ws)
  for b in range(2):
    ref = jax.grad(lambda x, w: jnp.sum(case.lax_local(x, w) ** 2),
                   argnums=(0, 1))(xs[b], ws[b])
    for grad, ref_grad in zip(grads, ref):
      assert_close(grad[b], ref_grad, jnp.float64, "vmap of grad")


def _second_order(local):
  """The gradient of a function of both first-order gradients."""
  def first(x, w):
    return jax.grad(lambda x, w: jnp.sum(jnp.cos(local(x, w))),
                    argnums=(0, 1))(x, w)

  def second(x, w):
    x_grad, w_grad = first(x, w)
    return jnp.sum(jnp.sin(x_grad)) + jnp.sum(w_grad ** 2)

  return jax.jit(jax.grad(second, argnums=(0, 1)))


@pytest.mark.parametrize("name", ["nchw-stride-pad-dilation",
                                  "1d-input-dilation-crop",
                                  "kernel-axes-swapped"])
def test_grad_of_grad_matches_lax(name):
  case = FIXED[name]
  x, w = case.inputs(jnp.float64)
  for grad, ref in zip(_second_order(case.our_local)(x, w),
                       _second_order(case.lax_local)(x, w)):
    assert_close(grad, ref, jnp.float64, "second order")
  jaxpr = str(jax.make_jaxpr(_second_order(case.our_local))(x, w))
  assert "custom_vjp_call" in jaxpr


def test_check_grads_order_two():
  case = FIXED["1d-input-dilation-crop"]
  x, w = case.inputs(jnp.float64)
  kw = case.grad_kwargs()
  delta = case.our_patches(x)
  jax.test_util.check_grads(case.our_patches, (x,), order=2, modes=("rev",))
  jax.test_util.check_grads(
      lambda g: jaxconv.conv_patches_grad(g, x.shape, **kw), (delta,),
      order=2, modes=("rev",))
  jax.test_util.check_grads(case.our_local, (x, w), order=2, modes=("rev",))


def test_public_gradients_are_the_rule():
  case = FIXED["out-cnhw-kernel-wh"]
  x, w = case.inputs(jnp.float64)
  kw = case.grad_kwargs()
  _, (x_grad, w_grad), delta = vjp_at(case.our_local, (x, w), 13)
  np.testing.assert_array_equal(
      jaxconv.conv_local_input_grad(delta, w, x.shape, precision="highest",
                                    **kw), x_grad)
  np.testing.assert_array_equal(
      jaxconv.conv_local_kernel_grad(x, delta, precision="highest", **kw),
      w_grad)
  _, (patch_grad,), g = vjp_at(case.our_patches, (x,), 14)
  np.testing.assert_array_equal(
      jaxconv.conv_patches_grad(g, x.shape, **kw), patch_grad)


# ---------------------------------------------------------------------------
# Errors: at call time, eagerly, under jit and under eval_shape.
# ---------------------------------------------------------------------------


X = jnp.ones((2, 3, 5, 6), jnp.float32)
W = jnp.ones((4, 18, 4, 4), jnp.float32)


def patches(**kw):
  args = dict(filter_shape=(2, 3), window_strides=(1, 1), padding="VALID")
  args.update(kw)
  lhs = args.pop("lhs", X)
  return lambda: jaxconv.conv_general_dilated_patches(lhs, **args)


def local(**kw):
  args = dict(window_strides=(1, 1), padding="VALID", filter_shape=(2, 3))
  args.update(kw)
  lhs, rhs = args.pop("lhs", X), args.pop("rhs", W)
  return lambda: jaxconv.conv_general_dilated_local(lhs, rhs, **args)


def patches_grad(cotangent, **kw):
  args = dict(lhs_shape=X.shape, filter_shape=(2, 3), window_strides=(1, 1),
              padding="VALID")
  args.update(kw)
  return lambda: jaxconv.conv_patches_grad(cotangent, **args)


def local_input_grad(cotangent, rhs=W):
  return lambda: jaxconv.conv_local_input_grad(cotangent, rhs, X.shape, (1, 1),
                                               "VALID", (2, 3))


def local_kernel_grad(cotangent):
  return lambda: jaxconv.conv_local_kernel_grad(X, cotangent, (1, 1), "VALID",
                                                (2, 3))


ERRORS = [
    # (name, thunk, exception, words the message must contain)
    ("filter_shape length", patches(filter_shape=(2,)), ValueError,
     ["filter_shape", "(2)", "1 entries"]),
    ("filter_shape zero", patches(filter_shape=(0, 3)), ValueError,
     ["filter_shape", "positive"]),
    ("filter_shape float", patches(filter_shape=(1.5, 3)), TypeError,
     ["filter_shape", "integers", "1.5"]),
    ("filter_shape int", patches(filter_shape=2), TypeError,
     ["filter_shape", "sequence"]),
    ("stride zero", patches(window_strides=(1, 0)), ValueError,
     ["window_strides", "positive"]),
    ("stride length", patches(window_strides=(1, 1, 1)), ValueError,
     ["window_strides", "3 entries"]),
    ("rhs dilation zero", patches(rhs_dilation=(0, 1)), ValueError,
     ["rhs_dilation", "positive"]),
    ("lhs dilation zero", patches(lhs_dilation=(1, 0),
                                  padding=((0, 0), (0, 0))),
     ValueError, ["lhs_dilation", "positive"]),
    ("padding string", patches(padding="FULL"), ValueError,
     ["padding", "'FULL'"]),
    ("padding pairs count", patches(padding=((1, 1),)), ValueError,
     ["padding", "2", "1"]),
    ("same with lhs dilation", patches(padding="SAME", lhs_dilation=(2, 2)),
     ValueError, ["padding", "lhs_dilation"]),
    ("lhs rank", patches(lhs=jnp.ones((3,)), filter_shape=()), ValueError,
     ["lhs", "rank", "(3,)"]),
    ("lhs not an array", patches(lhs=[[1.0]]), TypeError,
     ["lhs", "array", "list"]),
    ("dimension numbers", patches(dimension_numbers=("NCHW", "OIHQ", "NCHW")),
     TypeError, ["dimension_numbers"]),
    ("dimension numbers not a permutation",
     patches(dimension_numbers=lax.ConvDimensionNumbers(
         (0, 1, 2, 2), (0, 1, 2, 3), (0, 1, 2, 3))),
     ValueError, ["dimension_numbers", "permutation"]),
    ("preferred narrower", patches(preferred_element_type=jnp.float16),
     TypeError, ["preferred_element_type", "narrower", "float32"]),
    ("preferred float to int", patches(preferred_element_type=jnp.int32),
     TypeError, ["preferred_element_type", "int32", "float32"]),
    ("preferred signedness", patches(lhs=X.astype(jnp.int8),
                                     preferred_element_type=jnp.uint16),
     TypeError, ["preferred_element_type", "signed", "int8"]),
    ("precision string", patches(precision="fastest-ish"), ValueError,
     ["precision"]),
    ("local rhs rank", local(rhs=jnp.ones((4, 18, 4))), ValueError,
     ["rhs", "rank", "(4, 18, 4)"]),
    ("local rhs features", local(rhs=jnp.ones((4, 17, 4, 4))), ValueError,
     ["rhs", "(4, 18, 4, 4)", "3 * 6", "(4, 17, 4, 4)"]),
    ("local rhs spatial", local(rhs=jnp.ones((4, 18, 3, 4))), ValueError,
     ["rhs", "(4, 4)", "(4, 18, 3, 4)"]),
    ("local precision algorithm",
     local(precision=lax.DotAlgorithmPreset.F32_F32_F32), ValueError,
     ["precision", "lax.Precision"]),
    ("patches grad shape", patches_grad(jnp.ones((2, 18, 4, 3))), ValueError,
     ["cotangent", "(2, 18, 4, 4)", "(2, 18, 4, 3)"]),
    ("patches grad integer", patches_grad(jnp.ones((2, 18, 4, 4), jnp.int32)),
     TypeError, ["cotangent", "int32"]),
    ("local input grad shape", local_input_grad(jnp.ones((2, 4, 4, 3))),
     ValueError, ["cotangent", "(2, 4, 4, 4)", "(2, 4, 4, 3)"]),
    ("local input grad kernel", local_input_grad(
        jnp.ones((2, 4, 4, 4)), rhs=jnp.ones((4, 18, 4, 5))), ValueError,
     ["rhs", "(4, 18, 4, 4)", "(4, 18, 4, 5)"]),
    ("local kernel grad shape", local_kernel_grad(jnp.ones((2, 4, 5, 5))),
     ValueError, ["cotangent", "(2, 4, 4, 4)", "(2, 4, 5, 5)"]),
    ("local kernel grad rank", local_kernel_grad(jnp.ones((2, 4, 4))),
     ValueError, ["cotangent", "rank"]),
]


@pytest.mark.parametrize("mode", ["eager", "jit", "eval_shape"])
@pytest.mark.parametrize("name, thunk, exception, words", ERRORS,
                         ids=[e[0] for e in ERRORS])
def test_errors(name, thunk, exception, words, mode):
  del name
  run = {"eager": lambda f: f(), "jit": lambda f: jax.jit(f)(),
         "eval_shape": jax.eval_shape}[mode]
  with pytest.raises(exception) as info:
    run(thunk)
  message = str(info.value)
  for word in words:
    assert word in message, f"{word!r} not in {message!r}"


def test_traced_static_argument():
  with pytest.raises(TypeError, match="filter_shape.*static"):
    jax.jit(lambda k: jaxconv.conv_general_dilated_patches(
        X, (k, 2), (1, 1), "VALID"))(2)


# ---------------------------------------------------------------------------
# Teeth: each deliberately wrong rule fails the comparisons above, and the
# same rule rebuilt with the right pieces passes them. A wrong rule is a
# value, never a patch: the library's patches (or locally connected
# convolution) whose backward pass calls the public gradient pieces
# (conv_patches_grad, conv_local_input_grad, conv_local_kernel_grad) with
# one deliberate mistake.
# ---------------------------------------------------------------------------


def _patches_rule(case, patches_grad=jaxconv.conv_patches_grad):
  """``case.our_patches`` differentiated by ``patches_grad(cotangent,
  lhs_shape, **case.grad_kwargs())`` (col2im, eq. 23)."""

  @jax.custom_vjp
  def patches(x):
    return case.our_patches(x)

  def patches_fwd(x):
    return patches(x), None

  def patches_bwd(residuals, cotangent):
    del residuals
    return (patches_grad(cotangent, case.lhs_shape, **case.grad_kwargs()),)

  patches.defvjp(patches_fwd, patches_bwd)
  return patches


def _local_rule(case, input_grad=jaxconv.conv_local_input_grad,
                kernel_grad=jaxconv.conv_local_kernel_grad):
  """``case.our_local`` differentiated by ``input_grad(cotangent, w,
  lhs_shape, ...)`` and ``kernel_grad(x, cotangent, ...)`` (eq. 24)."""
  kwargs = dict(case.grad_kwargs(), precision="highest")

  @jax.custom_vjp
  def local(x, w):
    return case.our_local(x, w)

  def local_fwd(x, w):
    return local(x, w), (x, w)

  def local_bwd(residuals, cotangent):
    x, w = residuals
    return (input_grad(cotangent, w, x.shape, **kwargs),
            kernel_grad(x, cotangent, **kwargs))

  local.defvjp(local_fwd, local_bwd)
  return local


def _spatial_axes(case, spec_index):
  return tuple(case.dnums[spec_index][2:])


def _col2im_without_input_dilation(case):
  """Eq. (15) without the stride ``a``: col2im onto the dilated input (the
  public gradient of the patches of an input that is already dilated), then
  the first ``N`` positions instead of every ``a``-th."""

  def patches_grad(cotangent, lhs_shape, *, lhs_dilation, **kwargs):
    dilated = list(lhs_shape)
    for a, axis in zip(lhs_dilation, _spatial_axes(case, 0)):
      dilated[axis] = (lhs_shape[axis] - 1) * a + 1
    grad = jaxconv.conv_patches_grad(cotangent, tuple(dilated), **kwargs)
    return lax.slice(grad, (0,) * grad.ndim, lhs_shape)

  return _patches_rule(case, patches_grad)


def _col2im_without_stride(case):
  """col2im forgets the stride: each tap's slice of the cotangent is put
  back contiguously, as by col2im with stride 1 over the same padding, of the
  cotangent followed by zeros."""

  def patches_grad(cotangent, lhs_shape, *, window_strides, padding,
                   filter_shape, rhs_dilation, **kwargs):
    sizes = [lhs_shape[axis] for axis in _spatial_axes(case, 0)]
    extents = [(k - 1) * d + 1 for k, d in zip(
        filter_shape, rhs_dilation or (1,) * len(filter_shape))]
    pads = lax.padtype_to_pads(sizes, extents, window_strides, padding)
    widths = [(0, 0)] * cotangent.ndim
    for n, (lo, hi), k, axis in zip(sizes, pads, extents,
                                    _spatial_axes(case, 2)):
      widths[axis] = (0, n + lo + hi - k + 1 - cotangent.shape[axis])
    return jaxconv.conv_patches_grad(
        jnp.pad(cotangent, widths), lhs_shape, filter_shape=filter_shape,
        window_strides=(1,) * len(sizes), padding=pads,
        rhs_dilation=rhs_dilation, **kwargs)

  return _patches_rule(case, patches_grad)


def _patches_without_window_dilation(case):
  """The taps of every window read ``k`` apart instead of ``d k`` apart:
  the patches without window dilation, cut to the dilated windows' output
  positions. Wrong in the forward pass and in col2im."""

  def patches(x):
    kwargs = dict(case.kwargs, rhs_dilation=None)
    out = jaxconv.conv_general_dilated_patches(x, case.filter_shape, **kwargs)
    return lax.slice(out, (0,) * out.ndim, case.patches_shape())

  return patches


def _col2im_without_window_dilation(case):
  """The forward pass right, but col2im puts tap ``k`` back ``k`` (not
  ``d k``) positions into its window: the gradient of
  :func:`_patches_without_window_dilation`."""
  wrong = _patches_without_window_dilation(case)

  def patches_grad(cotangent, lhs_shape, **kwargs):
    del kwargs
    _, pullback = jax.vjp(wrong, jnp.zeros(lhs_shape, cotangent.dtype))
    return pullback(cotangent)[0]

  return _patches_rule(case, patches_grad)


def _tied_kernel_gradient(case):
  """The positions summed (weights tied), then copied to every position."""

  def kernel_grad(x, cotangent, **kwargs):
    grad = jaxconv.conv_local_kernel_grad(x, cotangent, **kwargs)
    spatial = _spatial_axes(case, 1)
    return jnp.broadcast_to(grad.sum(axis=spatial, keepdims=True), grad.shape)

  return _local_rule(case, kernel_grad=kernel_grad)


def _kernel_position_axis_reversed(case):
  """One of the kernel's position axes reversed in the input gradient."""

  def input_grad(cotangent, w, lhs_shape, **kwargs):
    axis = _spatial_axes(case, 1)[0]
    return jaxconv.conv_local_input_grad(cotangent, jnp.flip(w, axis),
                                         lhs_shape, **kwargs)

  return _local_rule(case, input_grad=input_grad)


WRONG_RULES = {
    # name: (the wrong function of the case, case, comparison, what fails)
    "col2im forgets the input dilation": (
        _col2im_without_input_dilation, "1d-input-dilation-crop",
        compare_patches_with_lax, "patches gradient: scaled error"),
    "col2im forgets the stride": (
        _col2im_without_stride, "nhwc-same-stride-2",
        compare_patches_with_lax, "patches gradient: scaled error"),
    "patches forget the window dilation": (
        _patches_without_window_dilation, "nchw-stride-pad-dilation",
        compare_patches_with_lax, "Mismatched elements"),
    "col2im forgets the window dilation": (
        _col2im_without_window_dilation, "nchw-stride-pad-dilation",
        compare_patches_with_lax, "patches gradient: scaled error"),
    "local weight gradient tied": (
        _tied_kernel_gradient, "nchw-stride-pad-dilation",
        compare_local_with_lax, "kernel gradient: scaled error"),
    "kernel position axis transposed": (
        _kernel_position_axis_reversed, "out-cnhw-kernel-wh",
        compare_local_with_lax, "input gradient: scaled error"),
}


@pytest.mark.parametrize("wrong", list(WRONG_RULES))
def test_wrong_rule_fails(wrong):
  """The rule rebuilt from the public pieces passes the comparison; the
  wrong one fails it, on the numbers."""
  build, case_name, compare, message = WRONG_RULES[wrong]
  case = FIXED[case_name]
  right = (_patches_rule if compare is compare_patches_with_lax
           else _local_rule)
  compare(case, jnp.float64, 0, right(case))
  with pytest.raises(AssertionError, match=message):
    compare(case, jnp.float64, 0, build(case))
