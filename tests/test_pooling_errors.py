"""Bad input to the pooling functions fails in Python, eagerly, under jit and
under eval_shape alike, with a message naming the argument and the numbers."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv
from tests.helpers import BOUNDARY_MODES, assert_raises_at_the_boundary

X = jnp.zeros((2, 5, 5, 3))  # (batch, H, W, C)
X1 = jnp.zeros((1, 5, 1))  # (batch, W, C)
INF = float("inf")

# (id, function of x, exception, regex the message must match)
CASES = [
    ("window_zero", lambda x: jaxconv.max_pool(x, (0, 2)), ValueError,
     r"`window_shape` entries must be positive, got \(0, 2\)"),
    ("window_negative", lambda x: jaxconv.avg_pool(x, (2, -1)), ValueError,
     r"`window_shape`.*\(2, -1\)"),
    ("window_int", lambda x: jaxconv.max_pool(x, 2), TypeError,
     r"`window_shape` must be a sequence"),
    ("window_float", lambda x: jaxconv.max_pool(x, (2.0, 2)), TypeError,
     r"`window_shape` must hold integers, got 2\.0"),
    ("window_empty", lambda x: jaxconv.max_pool(x, ()), ValueError,
     r"`window_shape` must have at least one entry"),
    ("window_too_long", lambda x: jaxconv.max_pool(x, (2, 2, 2, 2)),
     ValueError, r"`window_shape` \(2, 2, 2, 2\) has 4 dimensions.*only 3"),
    ("stride_zero", lambda x: jaxconv.max_pool(x, (2, 2), 0), ValueError,
     r"`strides` entries must be positive, got \(0, 0\)"),
    ("stride_negative", lambda x: jaxconv.lp_pool(x, 2, (2, 2), (1, -2)),
     ValueError, r"`strides`.*\(1, -2\)"),
    ("stride_length", lambda x: jaxconv.min_pool(x, (2, 2), (1, 1, 1)),
     ValueError, r"`strides` must have one entry per spatial dimension \(2\)"),
    ("dilation_zero", lambda x: jaxconv.max_pool(x, (2, 2), dilation=(1, 0)),
     ValueError, r"`dilation` entries must be positive, got \(1, 0\)"),
    ("dilation_length", lambda x: jaxconv.lp_pool(x, 2, (2, 2),
                                                  dilation=(1, 1, 1)),
     ValueError, r"`dilation` must have one entry per spatial dimension"),
    ("avg_dilation_zero", lambda x: jaxconv.avg_pool(x, (2, 2), dilation=0),
     ValueError, r"`dilation` entries must be positive, got \(0, 0\)"),
    ("avg_dilation_float", lambda x: jaxconv.avg_pool_grad(
        x, jnp.zeros((2, 3, 3, 3)), (2, 2), dilation=(2.0, 1)), TypeError,
     r"`dilation` must hold integers, got 2\.0"),
    ("avg_output_size_dilated", lambda x: jaxconv.avg_pool(
        x, (2, 2), dilation=(5, 1)), ValueError, r"would be 0.*extent 6"),
    ("padding_unknown", lambda x: jaxconv.max_pool(x, (2, 2), padding="FULL"),
     ValueError, r"`padding` string must be one of .*'FULL'"),
    ("padding_negative", lambda x: jaxconv.avg_pool(x, (2, 2), padding=-1),
     ValueError, r"`padding` must be non-negative, got \(\(-1, -1\)"),
    ("padding_length", lambda x: jaxconv.avg_pool(x, (2, 2),
                                                  padding=((1, 1),)),
     ValueError, r"`padding` must have one entry per spatial dimension \(2\)"),
    ("padding_triple", lambda x: jaxconv.avg_pool(
        x, (2, 2), padding=((1, 1, 1), (0, 0))), ValueError,
     r"`padding` pairs must be \(lo, hi\)"),
    ("padding_over_half", lambda x: jaxconv.max_pool(x, (2, 2), padding=2),
     ValueError,
     r"`padding` \(2, 2\) along spatial dimension 0 is more than half the "
     r"effective window extent 2 \(at most 1\)"),
    ("padding_over_half_min", lambda x: jaxconv.min_pool(
        x, (3, 3), padding=((0, 0), (2, 1))), ValueError,
     r"`padding` \(2, 1\) along spatial dimension 1.*extent 3"),
    ("padding_only_window_dilated", lambda x: jaxconv.max_pool(
        x[:, :1], (2, 2), padding=((1, 2), (0, 0)), dilation=(3, 1)),
     ValueError, r"Window 0 along spatial dimension 0 holds padding only"),
    ("output_size", lambda x: jaxconv.avg_pool(x, (6, 2)), ValueError,
     r"output size along spatial dimension 0 would be 0: the input size 5 "
     r"plus padding \(0, 0\) is smaller than the effective window extent 6"),
    ("output_size_dilated", lambda x: jaxconv.max_pool(x, (2, 2),
                                                       dilation=(5, 1)),
     ValueError, r"would be 0.*extent 6"),
    ("ceil_mode_type", lambda x: jaxconv.max_pool(x, (2, 2), ceil_mode="yes"),
     TypeError, r"`ceil_mode` must be a bool, got 'yes'"),
    ("count_include_pad_type", lambda x: jaxconv.avg_pool(
        x, (2, 2), count_include_pad=None), TypeError,
     r"`count_include_pad` must be a bool, got None"),
    ("divisor_zero", lambda x: jaxconv.avg_pool(x, (2, 2),
                                                divisor_override=0),
     ValueError, r"`divisor_override` must be nonzero, got 0"),
    ("divisor_float", lambda x: jaxconv.avg_pool(x, (2, 2),
                                                 divisor_override=2.5),
     TypeError, r"`divisor_override` must be None or a nonzero int, got 2\.5"),
    ("p_zero", lambda x: jaxconv.lp_pool(x, 0, (2, 2)), ValueError,
     r"`p` must be positive \(or inf\), got 0\.0"),
    ("p_negative", lambda x: jaxconv.lp_pool(x, -2.0, (2, 2)), ValueError,
     r"`p` must be positive.*-2\.0"),
    ("p_nan", lambda x: jaxconv.lp_pool(x, float("nan"), (2, 2)), ValueError,
     r"`p` must be positive.*nan"),
    ("p_minus_inf", lambda x: jaxconv.lp_pool(x, -INF, (2, 2)), ValueError,
     r"`p` must be positive.*-inf"),
    ("p_string", lambda x: jaxconv.lp_pool(x, "2", (2, 2)), TypeError,
     r"`p` must be a positive Python number.*'2'"),
    ("p_bool", lambda x: jaxconv.lp_pool(x, True, (2, 2)), TypeError,
     r"`p` must be a positive Python number.*True"),
    ("p_array", lambda x: jaxconv.lp_pool(x, jnp.asarray(2.0), (2, 2)),
     TypeError, r"`p` must be a positive Python number"),
    ("cotangent_shape", lambda x: jaxconv.max_pool_grad(
        x, jnp.zeros((2, 4, 4, 3)), (2, 2), 2), ValueError,
     r"`cotangent` must have the pooled output's shape \(2, 2, 2, 3\), got "
     r"\(2, 4, 4, 3\)"),
    ("cotangent_int", lambda x: jaxconv.avg_pool_grad(
        x, jnp.zeros((2, 4, 4, 3), jnp.int32), (2, 2)), TypeError,
     r"`cotangent` must have a floating-point or complex dtype .*int32"),
    ("cotangent_int_max", lambda x: jaxconv.max_pool_grad(
        x, jnp.zeros((2, 4, 4, 3), jnp.int32), (2, 2)), TypeError,
     r"`cotangent` must have a real floating-point dtype .*int32"),
    ("unpool_indices_float", lambda x: jaxconv.max_unpool(
        x, jnp.zeros(x.shape), (10, 10)), TypeError,
     r"`indices` must be an integer array, got float"),
    ("unpool_indices_shape", lambda x: jaxconv.max_unpool(
        x, jnp.zeros((2, 5, 5, 1), jnp.int32), (10, 10)), ValueError,
     r"`indices` must have the shape of `x` \(2, 5, 5, 3\), got \(2, 5, 5, 1\)"),
    ("unpool_spatial_int", lambda x: jaxconv.max_unpool(
        x, jnp.zeros(x.shape, jnp.int32), 10), TypeError,
     r"`spatial_shape` must be a sequence"),
    ("unpool_spatial_long", lambda x: jaxconv.max_unpool(
        x, jnp.zeros(x.shape, jnp.int32), (2, 2, 2, 2)), ValueError,
     r"`spatial_shape` \(2, 2, 2, 2\) must have between 1 and 3 entries"),
    ("unpool_spatial_zero", lambda x: jaxconv.max_unpool(
        x, jnp.zeros(x.shape, jnp.int32), (10, 0)), ValueError,
     r"`spatial_shape` entries must be positive, got \(10, 0\)"),
]


@pytest.mark.parametrize("f, error, message", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
@pytest.mark.parametrize("mode", BOUNDARY_MODES)
def test_bad_arguments_raise_at_the_boundary(f, error, message, mode):
  assert_raises_at_the_boundary(f, X, error, message, mode)


ORDERED_POOLS = [
    ("max pooling", lambda x: jaxconv.max_pool(x, (2,))),
    ("min pooling", lambda x: jaxconv.min_pool(x, (2,))),
    ("Lp pooling", lambda x: jaxconv.lp_pool(x, 2, (2,))),
    ("max pooling", lambda x: jaxconv.max_pool_with_indices(x, (2,))),
    ("max pooling", lambda x: jaxconv.max_pool_grad(x, jnp.zeros((1, 4, 1)),
                                                    (2,))),
    ("min pooling", lambda x: jaxconv.min_pool_grad(x, jnp.zeros((1, 4, 1)),
                                                    (2,))),
    ("Lp pooling", lambda x: jaxconv.lp_pool_grad(x, jnp.zeros((1, 4, 1)), 2,
                                                  (2,))),
]
AVERAGE_POOLS = [
    lambda x: jaxconv.avg_pool(x, (2,)),
    lambda x: jaxconv.avg_pool_grad(x, jnp.zeros((1, 4, 1), x.dtype), (2,)),
]


def _raises_everywhere(pool, x, expected):
  for run in (lambda: pool(x), lambda: jax.jit(pool)(x),
              lambda: jax.eval_shape(pool, x)):
    with pytest.raises(TypeError, match=expected):
      run()


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_, jnp.uint8])
@pytest.mark.parametrize("pool", [p for _, p in ORDERED_POOLS] + AVERAGE_POOLS)
def test_non_floating_inputs_are_refused(pool, dtype):
  x = jnp.zeros((1, 5, 1), dtype)
  expected = r"`x` must have a (real )?floating-point (or complex )?dtype .*"
  _raises_everywhere(pool, x, expected + re.escape(str(np.dtype(dtype))))


@pytest.mark.parametrize("name, pool", ORDERED_POOLS)
def test_complex_inputs_are_refused_where_values_are_compared(name, pool):
  x = jnp.zeros((1, 5, 1), jnp.complex64)
  _raises_everywhere(pool, x, re.escape(
      "`x` must have a real floating-point dtype (float16, bfloat16, float32, "
      f"float64) for {name}, got complex64: complex numbers have no order"))


@pytest.mark.parametrize("pool", AVERAGE_POOLS)
def test_average_pooling_accepts_complex_inputs(pool):
  for dtype in (jnp.complex64, jnp.complex128):
    x = jnp.zeros((1, 5, 1), dtype)
    assert pool(x).dtype == dtype
    assert jax.jit(pool)(x).dtype == dtype


def test_complex_cotangent_of_a_real_average_is_refused():
  with pytest.raises(TypeError, match=r"`cotangent` is complex64 but `x` is "
                     r"float32: the cotangent of a real output must be real"):
    jaxconv.avg_pool_grad(jnp.zeros((1, 5, 1), jnp.float32),
                          jnp.zeros((1, 4, 1), jnp.complex64), (2,))


def test_non_arrays_are_refused():
  with pytest.raises(TypeError, match=r"`x` must be a JAX or NumPy array, "
                     r"got list"):
    jaxconv.max_pool([[1.0], [2.0]], (1,))


def test_valid_edge_geometries_are_accepted():
  # Padding of exactly half the effective window is allowed for max; SAME
  # with any stride never exceeds it; avg accepts any padding.
  assert jaxconv.max_pool(X1, (2,), padding=1).shape == (1, 6, 1)
  assert jaxconv.max_pool(X1, (3,), 5, "SAME").shape == (1, 1, 1)
  assert jaxconv.avg_pool(X1, (2,), padding=7).shape == (1, 18, 1)
  assert jaxconv.max_pool(X1, (2,), dilation=2, padding=1).shape == (1, 5, 1)
  # ceil_mode may give one window larger than the input (PyTorch agrees).
  assert jaxconv.max_pool(X1[:, :2], (3,), 3, ceil_mode=True).shape == (1, 1, 1)
