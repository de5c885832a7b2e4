"""The worked examples of the questions and answers this project grew from,
recomputed with jaxconv, with their numbers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv


def _as_image(a):
  """A 2-D array as a one-example, one-channel NCHW image."""
  return jnp.asarray(a, jnp.float64)[None, None]


def test_weight_gradient_of_the_2x2_kernel():
  """A 5x5 input, a 4x4 delta: the 2x2 weight gradient is the correlation
  of the input with the delta, eq. (9). Numbers as published (6 decimals)."""
  o = np.array([[0.51, 0.9, 0.88, 0.84, 0.05],
                [0.4, 0.62, 0.22, 0.59, 0.1],
                [0.11, 0.2, 0.74, 0.33, 0.14],
                [0.47, 0.01, 0.85, 0.7, 0.09],
                [0.76, 0.19, 0.72, 0.17, 0.57]])
  delta = np.array([[0, 0, 0.0686, 0],
                    [0, 0.0364, 0, 0],
                    [0, 0.0467, 0, 0],
                    [0, 0, 0, -0.0681]])
  expected = np.array([[0.044606, 0.094061],
                       [0.011262, 0.068288]])
  grad = jaxconv.conv_kernel_grad(_as_image(o), _as_image(delta),
                                  (1, 1, 2, 2), 1, "VALID")
  np.testing.assert_allclose(grad[0, 0], expected, atol=5e-7)
  # The same through the custom VJP: E = sum(delta * conv(o, w)).
  w = jnp.zeros((1, 1, 2, 2))
  energy = lambda w: jnp.sum(_as_image(delta) * jaxconv.conv_general_dilated(
      _as_image(o), w, 1, "VALID"))
  np.testing.assert_allclose(jax.grad(energy)(w)[0, 0], expected, atol=5e-7)


def test_g_equations_and_their_weight_gradient():
  """G1..G4 of a 3x3 input V and a 2x2 kernel W, and dE/dW1 as the sum over
  the four outputs that W1 touched (eq. 9)."""
  rng = np.random.default_rng(0)
  V = rng.normal(size=9)          # V1..V9 row-major, V[0] is V1
  W = rng.normal(size=4)          # W1..W4
  G = jaxconv.conv_general_dilated(_as_image(V.reshape(3, 3)),
                                   _as_image(W.reshape(2, 2)), 1, "VALID")
  G = np.asarray(G).ravel()
  v = lambda i: V[i - 1]
  w = lambda i: W[i - 1]
  np.testing.assert_allclose(G, [
      v(1) * w(1) + v(2) * w(2) + v(4) * w(3) + v(5) * w(4),
      v(2) * w(1) + v(3) * w(2) + v(5) * w(3) + v(6) * w(4),
      v(4) * w(1) + v(5) * w(2) + v(7) * w(3) + v(8) * w(4),
      v(5) * w(1) + v(6) * w(2) + v(8) * w(3) + v(9) * w(4)])
  dE_dG = rng.normal(size=4)
  grad = jaxconv.conv_kernel_grad(_as_image(V.reshape(3, 3)),
                                  _as_image(dE_dG.reshape(2, 2)),
                                  (1, 1, 2, 2), 1, "VALID")
  g = lambda i: dE_dG[i - 1]
  dE_dW1 = g(1) * v(1) + g(2) * v(2) + g(3) * v(4) + g(4) * v(5)
  np.testing.assert_allclose(grad[0, 0, 0, 0], dE_dW1)


def test_two_layer_example_and_the_product_of_sums():
  """A 3x3 input, a 2x2 kernel, then another 2x2 kernel down to one output,
  cost C = (o2 - y)^2. dC/dw2_1 = o1_1 * 2 (o2 - y) as the asker wrote; but
  dC/dw1_1 is a sum of products, sum_j w2_j * 2 (o2 - y) * i_(j), not the
  product of the sums (i1 + i2 + i4 + i5) * sum_j w2_j * 2 (o2 - y)."""
  rng = np.random.default_rng(1)
  i = rng.normal(size=9)
  w1 = rng.normal(size=4)
  w2 = rng.normal(size=4)
  y = 0.3

  def cost(w1, w2):
    o1 = jaxconv.conv_general_dilated(_as_image(i.reshape(3, 3)),
                                      w1.reshape(1, 1, 2, 2), 1, "VALID")
    o2 = jaxconv.conv_general_dilated(o1, w2.reshape(1, 1, 2, 2), 1, "VALID")
    return (o2[0, 0, 0, 0] - y) ** 2, (o1.ravel(), o2[0, 0, 0, 0])

  (grad_w1, grad_w2), (o1, o2) = jax.grad(cost, argnums=(0, 1), has_aux=True)(
      jnp.asarray(w1), jnp.asarray(w2))
  err = 2 * (o2 - y)
  np.testing.assert_allclose(grad_w2[0], o1[0] * err)           # asker: right
  windows = [(0, 1, 3, 4), (1, 2, 4, 5), (3, 4, 6, 7), (4, 5, 7, 8)]
  correct = sum(w2[j] * err * i[windows[j][0]] for j in range(4))
  np.testing.assert_allclose(grad_w1[0], correct)
  product_of_sums = (i[0] + i[1] + i[3] + i[4]) * sum(w2 * err)
  assert abs(float(grad_w1[0]) - product_of_sums) > 1e-3


def test_input_gradient_is_full_convolution_with_rotated_kernel():
  """Eq. (14) for one channel, stride 1, written out with loops: pad the
  delta by K - 1 on every side and correlate with the rotated kernel."""
  rng = np.random.default_rng(2)
  x = rng.normal(size=(5, 6))
  w = rng.normal(size=(2, 3))
  delta = rng.normal(size=(4, 4))
  padded = np.pad(delta, ((1, 1), (2, 2)))
  rotated = w[::-1, ::-1]
  expected = np.zeros_like(x)
  for r in range(5):
    for c in range(6):
      expected[r, c] = np.sum(padded[r:r + 2, c:c + 3] * rotated)
  grad = jaxconv.conv_input_grad(_as_image(delta), _as_image(w), (1, 1, 5, 6),
                                 1, "VALID")
  np.testing.assert_allclose(grad[0, 0], expected, rtol=1e-12)


@pytest.mark.parametrize("stride", [2, 3])
def test_stride_becomes_dilation_of_the_delta(stride):
  """Eq. (13): with stride s, the input gradient equals the stride-1 input
  gradient of the delta spread onto every s-th position."""
  rng = np.random.default_rng(stride)
  x_shape = (1, 1, 11)
  w = jnp.asarray(rng.normal(size=(1, 1, 3)))
  out = (11 - 3) // stride + 1
  delta = jnp.asarray(rng.normal(size=(1, 1, out)))
  spread = jnp.zeros((1, 1, 9)).at[..., ::stride].set(delta)
  strided = jaxconv.conv_input_grad(delta, w, x_shape, stride, "VALID")
  unit = jaxconv.conv_input_grad(spread, w, x_shape, 1, "VALID")
  np.testing.assert_allclose(strided, unit, rtol=1e-12)
