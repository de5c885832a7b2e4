"""Drop-in fidelity with lax: what lax accepts, jaxconv accepts, and returns
what lax returns (dtype, weak type, shape), with 64-bit types off and on.

The suite runs with x64 on (conftest); ``jax.enable_x64(False)`` switches it
off for a block, which is JAX's default and where NumPy float64 inputs are
canonicalised to float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxconv
from tests.helpers import assert_close


def _lax_step(kw):
  """(y, dlhs, drhs) of lax.conv_general_dilated: the oracle."""
  def step(lhs, rhs, delta):
    y, pullback = jax.vjp(
        lambda a, b: lax.conv_general_dilated(a, b, precision="highest",
                                              **kw), lhs, rhs)
    return (y,) + pullback(delta)
  return step


def _our_step(kw):
  def step(lhs, rhs, delta):
    y, pullback = jax.vjp(
        lambda a, b: jaxconv.conv_general_dilated(a, b, **kw), lhs, rhs)
    return (y,) + pullback(delta)
  return step


# ---------------------------------------------------------------------------
# Canonicalisation of NumPy inputs, before the dtype check.
# ---------------------------------------------------------------------------

KW = dict(window_strides=(2, 1), padding="SAME",
          dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _drop_in_calls(lhs, rhs, delta, bias):
  """(name, ours, theirs) for every lax-signature function and the layer:
  each pair called on the same (possibly NumPy) arguments."""
  lax_y = lambda: lax.conv_general_dilated(lhs, rhs, **KW)
  lax_vjp = lambda: jax.vjp(lambda a, b: lax.conv_general_dilated(a, b, **KW),
                            lhs, rhs)[1](delta)
  transpose_kw = dict(strides=(2, 1), padding="SAME")
  return [
      ("conv_general_dilated",
       lambda: jaxconv.conv_general_dilated(lhs, rhs, **KW), lax_y),
      ("conv_transpose",
       lambda: jaxconv.conv_transpose(lhs, rhs, **transpose_kw),
       lambda: lax.conv_transpose(lhs, rhs, **transpose_kw)),
      ("conv", lambda: jaxconv.conv(lhs, rhs, bias, stride=(2, 1),
                                    padding="SAME"),
       lambda: lax_y() + bias),
      ("conv_input_grad",
       lambda: jaxconv.conv_input_grad(delta, rhs, lhs.shape, **KW),
       lambda: lax_vjp()[0]),
      ("conv_kernel_grad",
       lambda: jaxconv.conv_kernel_grad(lhs, delta, rhs.shape, **KW),
       lambda: lax_vjp()[1]),
      ("conv_bias_grad", lambda: jaxconv.conv_bias_grad(delta),
       lambda: jnp.sum(jnp.asarray(delta), axis=(0, 1, 2))),
      ("pad", lambda: jaxconv.pad(lhs, 1, "wrap"),
       lambda: jnp.pad(lhs, 1, mode="wrap")),
  ]


NAMES = [c[0] for c in _drop_in_calls(*([np.zeros((1, 1, 1, 1))] * 3),
                                      np.zeros(1))]


def _numpy_arguments(rng, real_dtype):
  lhs = rng.normal(size=(2, 7, 6, 3)).astype(real_dtype)
  rhs = rng.normal(size=(3, 2, 3, 4)).astype(real_dtype)
  delta = rng.normal(size=(2, 4, 6, 4)).astype(real_dtype)
  bias = rng.normal(size=(4,)).astype(real_dtype)
  return lhs, rhs, delta, bias


# lax's own transpose rules warn when they meet the NumPy cotangent's
# float64 with x64 off; the warning is the oracle's, not jaxconv's.
@pytest.mark.filterwarnings("ignore:Explicitly requested dtype")
@pytest.mark.parametrize("kind", ["real", "complex"])
@pytest.mark.parametrize("name", NAMES)
def test_numpy_float64_with_x64_off(name, kind):
  """NumPy float64 (complex128) becomes float32 (complex64), as in lax;
  NumPy and JAX float32 operands mix freely then."""
  rng = np.random.default_rng(0)
  lhs, rhs, delta, bias = _numpy_arguments(rng, np.float64)
  if kind == "complex":
    lhs, rhs, delta, bias = (a + 1j * a[..., ::-1] for a in (lhs, rhs, delta,
                                                            bias))
  with jax.enable_x64(False):
    expected_dtype = jnp.complex64 if kind == "complex" else jnp.float32
    # The kernel as a JAX array (float32), the rest NumPy float64.
    rhs_jax = jnp.asarray(rhs)
    assert rhs_jax.dtype == expected_dtype
    calls = dict((c[0], c[1:]) for c in _drop_in_calls(lhs, rhs_jax, delta,
                                                       bias))
    ours, theirs = calls[name]
    expected = theirs()
    for result in (ours(), jax.jit(ours)()):
      assert result.dtype == expected.dtype == expected_dtype, name
      assert result.shape == expected.shape
      assert_close(result, expected, expected_dtype, name)


def test_numpy_float64_with_float32_kernel_and_x64_on():
  """With x64 on, NumPy float64 stays float64: a float32 kernel is then a
  dtype mismatch in lax and in jaxconv alike; float64 with float64 works."""
  rng = np.random.default_rng(1)
  lhs, rhs, delta, _ = _numpy_arguments(rng, np.float64)
  rhs32 = jnp.asarray(rhs, jnp.float32)
  with pytest.raises(TypeError, match="same dtype"):
    lax.conv_general_dilated(lhs, rhs32, **KW)
  with pytest.raises(TypeError, match="same dtype"):
    jaxconv.conv_general_dilated(lhs, rhs32, **KW)
  results = jax.jit(_our_step(KW))(lhs, rhs, delta)
  expected = _lax_step(KW)(lhs, rhs, delta)
  for result, reference in zip(results, expected):
    assert result.dtype == jnp.float64
    assert_close(result, reference, jnp.float64)


@pytest.mark.parametrize("lhs_dtype,rhs_dtype", [
    (jnp.bfloat16, jnp.float32), (jnp.float16, jnp.float32),
    (jnp.float32, jnp.complex64)])
def test_mixed_dtypes_are_refused_like_lax(lhs_dtype, rhs_dtype):
  lhs = jnp.ones((2, 7, 6, 3), lhs_dtype)
  rhs = jnp.ones((3, 2, 3, 4), rhs_dtype)
  with pytest.raises(TypeError, match="same dtype"):
    lax.conv_general_dilated(lhs, rhs, **KW)
  with pytest.raises(TypeError, match="same dtype"):
    jaxconv.conv_general_dilated(lhs, rhs, **KW)


@pytest.mark.parametrize("lhs_weak,rhs_weak", [(True, True), (True, False),
                                               (False, True)])
def test_weak_types_as_in_lax(lhs_weak, rhs_weak):
  """Weak types change nothing in lax's convolution (no promotion); the
  result is weak only where lax's is."""
  # An integer array times a Python float is a weakly typed float array.
  weak = lambda shape: jnp.sin(jnp.arange(np.prod(shape)).reshape(shape)
                               * 0.37)
  strong = lambda shape: jnp.asarray(np.cos(np.arange(np.prod(shape))
                                            ).reshape(shape))
  lhs = (weak if lhs_weak else strong)((2, 7, 6, 3))
  rhs = (weak if rhs_weak else strong)((3, 2, 3, 4))
  assert lhs.weak_type == lhs_weak and rhs.weak_type == rhs_weak
  ours = jaxconv.conv_general_dilated(lhs, rhs, **KW)
  theirs = lax.conv_general_dilated(lhs, rhs, **KW)
  assert ours.dtype == theirs.dtype
  assert ours.weak_type == theirs.weak_type
  assert_close(ours, theirs, jnp.float64)


def test_weak_float32_with_float16_is_refused_like_lax():
  with jax.enable_x64(False):
    lhs = jnp.full((2, 7, 6, 3), 0.5)
    assert lhs.weak_type and lhs.dtype == jnp.float32
    rhs = jnp.ones((3, 2, 3, 4), jnp.float16)
    with pytest.raises(TypeError, match="same dtype"):
      lax.conv_general_dilated(lhs, rhs, **KW)
    with pytest.raises(TypeError, match="same dtype"):
      jaxconv.conv_general_dilated(lhs, rhs, **KW)


# ---------------------------------------------------------------------------
# Empty outputs: lax returns empty arrays, and zero gradients.
# ---------------------------------------------------------------------------

EMPTY_CASES = [
    # (name, lhs shape, rhs shape, keyword arguments)
    ("kernel larger than input", (2, 3, 4, 4), (5, 3, 5, 2),
     dict(window_strides=(1, 1), padding="VALID")),
    ("empty spatial input, SAME", (2, 3, 0, 5), (4, 3, 3, 3),
     dict(window_strides=(1, 2), padding="SAME")),
    ("empty batch", (0, 3, 6, 6), (4, 3, 3, 3),
     dict(window_strides=(2, 2), padding="VALID")),
    ("no input features", (2, 0, 6), (4, 0, 3),
     dict(window_strides=(1,), padding="VALID")),
    ("no output features", (2, 3, 6), (0, 3, 3),
     dict(window_strides=(1,), padding=((1, 0),))),
    ("cropped to nothing", (2, 3, 4), (4, 3, 1),
     dict(window_strides=(1,), padding=((-2, -2),))),
    ("input dilation, kernel too large", (1, 2, 2), (3, 2, 5),
     dict(window_strides=(1,), padding=((0, 0),), lhs_dilation=(2,))),
    ("channels last, groups", (2, 3, 3, 4), (4, 4, 2, 6),
     dict(window_strides=(1, 1), padding="VALID", feature_group_count=2,
          dimension_numbers=("NHWC", "HWIO", "NHWC"))),
    ("batch groups, empty spatial", (4, 2, 0, 3), (6, 2, 1, 1),
     dict(window_strides=(1, 1), padding="VALID", batch_group_count=2)),
]


@pytest.mark.parametrize("x64", [True, False])
@pytest.mark.parametrize("name,lhs_shape,rhs_shape,kw", EMPTY_CASES,
                         ids=[c[0] for c in EMPTY_CASES])
def test_empty_convolutions_as_in_lax(name, lhs_shape, rhs_shape, kw, x64):
  rng = np.random.default_rng(2)
  with jax.enable_x64(x64):
    dtype = jnp.float64 if x64 else jnp.float32
    lhs = jnp.asarray(rng.normal(size=lhs_shape), dtype)
    rhs = jnp.asarray(rng.normal(size=rhs_shape), dtype)
    out = jax.eval_shape(lambda a, b: lax.conv_general_dilated(a, b, **kw),
                         lhs, rhs)
    delta = jnp.asarray(rng.normal(size=out.shape), dtype)
    expected = _lax_step(kw)(lhs, rhs, delta)
    runs = [jax.jit(_our_step(kw))] + ([_our_step(kw)] if x64 else [])
    for results in (run(lhs, rhs, delta) for run in runs):
      for what, result, reference in zip(("y", "dlhs", "drhs"), results,
                                         expected):
        assert result.shape == reference.shape, (name, what)
        assert result.dtype == reference.dtype == dtype, (name, what)
        np.testing.assert_array_equal(result, reference, f"{name} {what}")
    # The public gradient pieces agree.
    np.testing.assert_array_equal(
        jaxconv.conv_input_grad(delta, rhs, lhs.shape, **kw), expected[1])
    np.testing.assert_array_equal(
        jaxconv.conv_kernel_grad(lhs, delta, rhs.shape, **kw), expected[2])
  if 0 in out.shape:
    # Nothing reached the output: the gradients are zeros, not garbage.
    assert not np.any(expected[1]) and not np.any(expected[2])


@pytest.mark.parametrize("padding", ["VALID", ((0, -1),)])
def test_empty_conv_transpose_as_in_lax(padding):
  rng = np.random.default_rng(3)
  lhs = jnp.asarray(rng.normal(size=(2, 1, 3)))
  rhs = jnp.asarray(rng.normal(size=(3, 3, 4)))
  kw = dict(strides=(1,), padding=padding)
  ours = lambda a, b: jaxconv.conv_transpose(a, b, **kw)
  theirs = lambda a, b: lax.conv_transpose(a, b, **kw)
  y, pullback = jax.vjp(ours, lhs, rhs)
  y_ref, pullback_ref = jax.vjp(theirs, lhs, rhs)
  assert y.shape == y_ref.shape and y.dtype == y_ref.dtype
  delta = jnp.asarray(rng.normal(size=y.shape))
  for g, g_ref in zip(pullback(delta), pullback_ref(delta)):
    assert g.shape == g_ref.shape
    assert_close(g, g_ref, jnp.float64)


def test_layer_with_an_empty_batch():
  """The channels-last layer refuses an empty *output* (documented), but an
  empty batch is an ordinary call with zero kernel and bias gradients."""
  x = jnp.ones((0, 5, 5, 3))
  w = jnp.ones((3, 3, 3, 4))
  b = jnp.ones((4,))
  y, pullback = jax.vjp(lambda x, w, b: jaxconv.conv(x, w, b, padding=1),
                        x, w, b)
  assert y.shape == (0, 5, 5, 4)
  dx, dw, db = pullback(jnp.ones(y.shape))
  assert dx.shape == x.shape
  np.testing.assert_array_equal(dw, np.zeros(w.shape))
  np.testing.assert_array_equal(db, np.zeros(b.shape))


# ---------------------------------------------------------------------------
# No spatial dimension.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dimension_numbers,transpose_kernel", [
    (("NC", "IO", "NC"), False), (None, False), (("NC", "IO", "NC"), True),
    (("CN", "OI", "NC"), False)])
def test_conv_transpose_without_spatial_dimensions(dimension_numbers,
                                                   transpose_kernel):
  rng = np.random.default_rng(4)
  lhs = jnp.asarray(rng.normal(size=(2, 3) if dimension_numbers is None
                               or dimension_numbers[0] == "NC" else (3, 2)))
  rhs_shape = (3, 4) if dimension_numbers is None or (
      dimension_numbers[1] == "IO") != transpose_kernel else (4, 3)
  rhs = jnp.asarray(rng.normal(size=rhs_shape))
  kw = dict(strides=(), padding="SAME", dimension_numbers=dimension_numbers,
            transpose_kernel=transpose_kernel)
  ours = lambda a, b: jaxconv.conv_transpose(a, b, **kw)
  theirs = lambda a, b: lax.conv_transpose(a, b, precision="highest", **kw)
  y, pullback = jax.vjp(ours, lhs, rhs)
  y_ref, pullback_ref = jax.vjp(theirs, lhs, rhs)
  assert y.shape == y_ref.shape == (2, 4)
  assert_close(y, y_ref, jnp.float64, "forward")
  delta = jnp.asarray(rng.normal(size=y.shape))
  for g, g_ref in zip(pullback(delta), pullback_ref(delta)):
    assert_close(g, g_ref, jnp.float64, "gradient")


def test_conv_general_dilated_without_spatial_dimensions():
  rng = np.random.default_rng(5)
  lhs = jnp.asarray(rng.normal(size=(2, 3)))
  rhs = jnp.asarray(rng.normal(size=(4, 3)))
  results = jax.jit(_our_step(dict(window_strides=(), padding="VALID")))(
      lhs, rhs, jnp.ones((2, 4)))
  expected = _lax_step(dict(window_strides=(), padding="VALID"))(
      lhs, rhs, jnp.ones((2, 4)))
  for result, reference in zip(results, expected):
    assert_close(result, reference, jnp.float64)


# ---------------------------------------------------------------------------
# Precision: every spelling lax takes.
# ---------------------------------------------------------------------------

PRECISIONS = (None, "default", "high", "highest", "bfloat16", "bfloat16_3x",
              "tensorfloat32", "float32", "fastest", lax.Precision.HIGH,
              ("highest", "default"),
              (lax.Precision.HIGHEST, lax.Precision.DEFAULT),
              "F32_F32_F32", lax.DotAlgorithmPreset.DEFAULT)


@pytest.mark.parametrize("precision", PRECISIONS, ids=str)
def test_precision_spellings(precision):
  """lax's precision names and aliases, pairs of them, and dot algorithm
  presets by name or value: jaxconv takes each and, in float32, gives lax's
  output and gradients under it."""
  kw = dict(KW, precision=precision)
  rng = np.random.default_rng(0)
  lhs = rng.normal(size=(2, 7, 6, 3)).astype(np.float32)
  rhs = rng.normal(size=(3, 2, 3, 4)).astype(np.float32)
  delta = rng.normal(size=(2, 4, 6, 4)).astype(np.float32)

  def theirs(a, b, d):
    y, pullback = jax.vjp(
        lambda a, b: lax.conv_general_dilated(a, b, **kw), a, b)
    return (y,) + pullback(d)

  for ours, lax_ in zip(_our_step(kw)(lhs, rhs, delta),
                        theirs(lhs, rhs, delta)):
    assert ours.dtype == lax_.dtype == jnp.float32
    np.testing.assert_allclose(ours, lax_, rtol=1e-5, atol=1e-5)
