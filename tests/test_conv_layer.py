"""The layer function `conv` (channels last, bias) and `conv_transpose`."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from jax import lax

import jaxconv
from jaxconv import reference
from tests.helpers import assert_close

LAYOUTS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"),
           3: ("NDHWC", "DHWIO", "NDHWC")}


def _lax_layer(x, w, b, stride, padding, dilation, groups):
  n = w.ndim - 2
  y = lax.conv_general_dilated(
      x, w, (stride,) * n, padding, rhs_dilation=(dilation,) * n,
      dimension_numbers=LAYOUTS[n], feature_group_count=groups,
      precision="highest")
  return y + b


LAYER_CASES = [
    # (x shape, window, C_out, stride, padding, lax padding, dilation, groups)
    ((3, 10, 4), (3,), 5, 2, "SAME", "SAME", 1, 1),
    ((2, 9, 8, 4), (3, 2), 6, 1, 1, ((1, 1), (1, 1)), 2, 2),
    ((2, 9, 8, 4), (3, 3), 4, 2, ((2, 0), (1, 1)), ((2, 0), (1, 1)), 1, 4),
    ((1, 5, 6, 4, 2), (2, 3, 2), 3, 1, (0, 1, 1), ((0, 0), (1, 1), (1, 1)), 1,
     1),
]


def compare_layer_with_lax(case, layer=jaxconv.conv):
  """``layer`` (with ``jaxconv.conv``'s signature) against lax in float64:
  forward and the three VJPs. Raises AssertionError (``"d<arg>: scaled error
  ..."``) on a numerical mismatch."""
  shape, window, out, stride, padding, lax_padding, dilation, groups = case
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=shape))
  w = jnp.asarray(rng.normal(size=window + (shape[-1] // groups, out)))
  b = jnp.asarray(rng.normal(size=(out,)))
  ours = lambda x, w, b: layer(x, w, b, stride=stride, padding=padding,
                               dilation=dilation, groups=groups)
  theirs = lambda x, w, b: _lax_layer(x, w, b, stride, lax_padding, dilation,
                                      groups)
  y, pullback = jax.vjp(ours, x, w, b)
  y_ref, pullback_ref = jax.vjp(theirs, x, w, b)
  assert_close(y, y_ref, jnp.float64, "forward")
  delta = jnp.asarray(rng.normal(size=y.shape))
  for name, g, g_ref in zip("xwb", pullback(delta), pullback_ref(delta)):
    assert_close(g, g_ref, jnp.float64, f"d{name}")
  # eq. (11): the bias gradient is the sum of the deltas, by the reference.
  np.testing.assert_allclose(pullback(delta)[2],
                             reference.conv_bias_grad(delta, feature_axis=-1))


@pytest.mark.parametrize("case", LAYER_CASES)
def test_layer_matches_lax(case):
  compare_layer_with_lax(case)


def test_layer_leading_batch_dims_and_unbatched():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 3, 7, 7, 4)))
  w = jnp.asarray(rng.normal(size=(3, 3, 4, 5)))
  b = jnp.asarray(rng.normal(size=(5,)))
  y = jaxconv.conv(x, w, b, padding="SAME")
  flat = jaxconv.conv(x.reshape(6, 7, 7, 4), w, b, padding="SAME")
  assert y.shape == (2, 3, 7, 7, 5)
  np.testing.assert_allclose(y.reshape(6, 7, 7, 5), flat)
  single = jaxconv.conv(x[0, 0], w, b, padding="SAME")
  np.testing.assert_allclose(single, flat[0])
  grad = jax.grad(lambda x: jnp.sum(jaxconv.conv(x, w, b) ** 2))(x)
  grad_flat = jax.grad(lambda x: jnp.sum(jaxconv.conv(x, w, b) ** 2))(
      x.reshape(6, 7, 7, 4))
  np.testing.assert_allclose(grad.reshape(6, 7, 7, 4), grad_flat)


def test_layer_without_bias_and_second_order():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(2, 8, 3)))
  w = jnp.asarray(rng.normal(size=(3, 3, 4)))
  b = jnp.asarray(rng.normal(size=(4,)))
  jax.test_util.check_grads(
      lambda x, w, b: jaxconv.conv(x, w, b, stride=2, padding=1), (x, w, b),
      order=2, modes=("rev",))
  y = jaxconv.conv(x, w, stride=2, padding=1)
  y_ref = _lax_layer(x, w, 0.0, 2, ((1, 1),), 1, 1)
  assert_close(y, y_ref, jnp.float64)


def test_layer_matches_flax():
  nn = pytest.importorskip("flax.linen")
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, 11, 10, 4)), jnp.float32)
  module = nn.Conv(features=8, kernel_size=(3, 3), strides=(2, 1),
                   padding="SAME", kernel_dilation=(1, 2),
                   feature_group_count=2)
  params = module.init(jax.random.key(0), x)["params"]
  # Flax's kernel layout drops in unchanged.
  ours = lambda p, x: jaxconv.conv(x, p["kernel"], p["bias"], stride=(2, 1),
                                   padding="SAME", dilation=(1, 2), groups=2)
  theirs = lambda p, x: module.apply({"params": p}, x)
  assert_close(ours(params, x), theirs(params, x), jnp.float32, "forward")
  loss = lambda f: lambda p, x: jnp.sum(jnp.sin(f(p, x)))
  ours_grad = jax.grad(loss(ours), argnums=(0, 1))(params, x)
  theirs_grad = jax.grad(loss(theirs), argnums=(0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(ours_grad), jax.tree.leaves(theirs_grad)):
    assert_close(a, b, jnp.float32)


TRANSPOSE_CASES = list(itertools.product(
    [1, 2, 3],                       # spatial rank
    ["SAME", "VALID", "pairs"],      # padding
    [False, True],                   # transpose_kernel
))


@pytest.mark.parametrize("rank,padding,transpose_kernel", TRANSPOSE_CASES)
def test_conv_transpose_matches_lax(rank, padding, transpose_kernel):
  rng = np.random.default_rng(rank)
  spatial = (5, 4, 3)[:rank]
  window = (3, 2, 2)[:rank]
  strides = (2, 3, 1)[:rank]
  dilation = (1, 2, 1)[:rank]
  x = jnp.asarray(rng.normal(size=(2,) + spatial + (3,)))
  w = jnp.asarray(rng.normal(size=window + (3, 4) if not transpose_kernel
                             else window + (4, 3)))
  pads = padding if padding != "pairs" else tuple(
      (k - 1, k - 2) for k in window)
  kw = dict(strides=strides, padding=pads, rhs_dilation=dilation,
            transpose_kernel=transpose_kernel, precision="highest")
  ours = lambda x, w: jaxconv.conv_transpose(x, w, **kw)
  theirs = lambda x, w: lax.conv_transpose(x, w, **kw)
  y, pullback = jax.vjp(ours, x, w)
  y_ref, pullback_ref = jax.vjp(theirs, x, w)
  assert_close(y, y_ref, jnp.float64, "forward")
  delta = jnp.asarray(rng.normal(size=y.shape))
  for g, g_ref in zip(pullback(delta), pullback_ref(delta)):
    assert_close(g, g_ref, jnp.float64, "gradient")


def test_conv_transpose_consistent_padding_and_layout():
  rng = np.random.default_rng(7)
  x = jnp.asarray(rng.normal(size=(2, 3, 6, 5)))      # N C H W
  w = jnp.asarray(rng.normal(size=(4, 3, 3, 3)))      # O I H W
  kw = dict(strides=(2, 2), padding=((1, 1), (0, 2)),
            dimension_numbers=("NCHW", "OIHW", "NCHW"),
            use_consistent_padding=True)
  np.testing.assert_allclose(jaxconv.conv_transpose(x, w, **kw),
                             lax.conv_transpose(x, w, **kw), rtol=1e-12)


def test_conv_transpose_is_the_input_gradient_operator():
  """Eq. (19): the input gradient of a strided convolution is a transposed
  convolution of the delta with the same kernel, flipped and I/O swapped."""
  rng = np.random.default_rng(8)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 3)))
  w = jnp.asarray(rng.normal(size=(3, 3, 3, 5)))
  y, pullback = jax.vjp(lambda x: jaxconv.conv(x, w, stride=2,
                                               padding="SAME"), x)
  delta = jnp.asarray(rng.normal(size=y.shape))
  (dx,) = pullback(delta)
  as_transpose = jaxconv.conv_transpose(delta, w, (2, 2), "SAME",
                                        transpose_kernel=True)
  assert_close(as_transpose, dx, jnp.float64)
