"""Pooling against PyTorch (float64, CPU): ceil_mode, dilation,
count_include_pad, divisor_override, lp_pool, return_indices and max_unpool;
adaptive and global pooling.

PyTorch is channels-first with symmetric integer padding and 1-3 spatial
dimensions; the helpers below move jaxconv's channels-last arrays across.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv
from tests import pooling_oracles as oracles

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _to_torch(x):
  """(B, *spatial, C) jax array -> (B, C, *spatial) float64 torch tensor."""
  x = np.array(x, np.float64)  # a writable copy
  axes = (0, x.ndim - 1) + tuple(range(1, x.ndim - 1))
  return torch.from_numpy(np.ascontiguousarray(x.transpose(axes)))


def _from_torch(t):
  """(B, C, *spatial) torch tensor -> (B, *spatial, C) NumPy array."""
  a = t.detach().numpy()
  return a.transpose((0,) + tuple(range(2, a.ndim)) + (1,))


def _torch_vjp(pool, x, cotangent):
  leaf = _to_torch(x).requires_grad_(True)
  out = pool(leaf)
  values = out[0] if isinstance(out, tuple) else out
  values.backward(_to_torch(cotangent))
  return out, _from_torch(leaf.grad)


MAX_CASES = [
    # (spatial, window, stride, padding, dilation, ceil_mode)
    ((9,), 3, 2, 1, 1, True),
    ((10,), 2, 3, 1, 3, True),
    ((7, 6), (3, 2), (2, 2), (1, 1), (1, 1), True),
    ((9, 8), (2, 3), (2, 1), (1, 1), (3, 2), False),
    ((8, 7), (3, 3), (3, 2), (1, 0), (2, 1), True),
    ((5, 6, 5), (2, 3, 2), (2, 1, 2), (1, 1, 0), (1, 2, 2), True),
]


@pytest.mark.parametrize("spatial, window, stride, padding, dilation, ceil",
                         MAX_CASES)
def test_max_pool_values_indices_and_gradient(spatial, window, stride, padding,
                                              dilation, ceil):
  rank = len(spatial)
  tup = lambda v: (v,) * rank if isinstance(v, int) else tuple(v)
  x = jnp.asarray(oracles.unique_values((2,) + spatial + (3,), shift=-100.0))
  pool_torch = getattr(F, f"max_pool{rank}d")

  def ours(v):
    return jaxconv.max_pool_with_indices(
        v, tup(window), tup(stride), [(p, p) for p in tup(padding)],
        dilation=tup(dilation), ceil_mode=ceil)

  y, indices = jax.jit(ours)(x)
  cotangent = jnp.asarray(oracles.unique_values(y.shape, seed=1))
  dx = jax.jit(lambda v, g: jax.vjp(lambda u: ours(u)[0], v)[1](g)[0])(
      x, cotangent)
  out, dx_torch = _torch_vjp(
      lambda t: pool_torch(t, window, stride, padding, dilation, ceil, True),
      x, cotangent)
  oracles.assert_close(y, _from_torch(out[0]), what="max values")
  np.testing.assert_array_equal(indices, _from_torch(out[1]))
  oracles.assert_close(dx, dx_torch, what="max gradient")
  # max_unpool, with PyTorch's output_size, and its gradient.
  unpool_torch = getattr(F, f"max_unpool{rank}d")
  leaf = _to_torch(y).requires_grad_(True)
  # PyTorch's unpool knows no dilation; its kernel_size only serves to check
  # output_size, so the effective window extent is passed.
  extent = tuple((k - 1) * d + 1 for k, d in zip(tup(window), tup(dilation)))
  unpooled = unpool_torch(leaf, out[1], extent, stride, padding,
                          output_size=spatial)
  ours_unpooled, vjp = jax.vjp(lambda v: jaxconv.max_unpool(v, indices,
                                                            spatial), y)
  np.testing.assert_array_equal(ours_unpooled, _from_torch(unpooled))
  g = oracles.unique_values(ours_unpooled.shape, seed=2)
  unpooled.backward(_to_torch(g))
  np.testing.assert_array_equal(vjp(jnp.asarray(g))[0],
                                _from_torch(leaf.grad))


AVG_CASES = [
    # (spatial, window, stride, padding, ceil, count_include_pad, divisor)
    ((9,), 3, 2, 1, True, True, None),
    ((9,), 3, 2, 1, True, False, None),
    ((8,), 2, 3, 1, True, False, None),
    ((7, 6), (3, 2), (2, 2), (1, 1), True, True, None),
    ((7, 6), (3, 2), (2, 2), (1, 1), True, False, None),
    ((7, 6), (3, 3), (2, 3), (1, 0), True, True, 5),
    ((6, 5, 7), (2, 3, 3), (2, 2, 3), (1, 1, 0), True, False, None),
    ((6, 5, 7), (2, 3, 3), (1, 2, 3), (0, 1, 1), False, True, -3),
]


@pytest.mark.parametrize("spatial, window, stride, padding, ceil, include, "
                         "divisor", AVG_CASES)
def test_avg_pool_divisors_and_gradient(spatial, window, stride, padding, ceil,
                                        include, divisor):
  rank = len(spatial)
  tup = lambda v: (v,) * rank if isinstance(v, int) else tuple(v)
  x = jnp.asarray(oracles.unique_values((2,) + spatial + (2,), shift=-50.0))
  kwargs = {} if divisor is None else {"divisor_override": divisor}

  def ours(v):
    return jaxconv.avg_pool(v, tup(window), tup(stride),
                            [(p, p) for p in tup(padding)], include,
                            ceil_mode=ceil, **kwargs)

  y = jax.jit(ours)(x)
  cotangent = jnp.asarray(oracles.unique_values(y.shape, seed=1))
  dx = jax.jit(lambda v, g: jax.vjp(ours, v)[1](g)[0])(x, cotangent)
  pool_torch = getattr(F, f"avg_pool{rank}d")
  out, dx_torch = _torch_vjp(
      lambda t: pool_torch(t, window, stride, padding, ceil, include,
                           **kwargs), x, cotangent)
  oracles.assert_close(y, _from_torch(out), what="avg values")
  oracles.assert_close(dx, dx_torch, what="avg gradient")


LP_CASES = [
    # (spatial, p, window, stride)
    ((9,), 2.0, 3, 2),
    ((9,), 1.0, 2, 1),
    ((7, 6), 3.5, (3, 2), (2, 1)),
    ((7, 6), 0.75, (2, 2), (2, 2)),
    ((5, 6, 4), 2.0, (2, 3, 2), (1, 2, 2)),
]


@pytest.mark.parametrize("spatial, p, window, stride", LP_CASES)
def test_lp_pool_matches_torch_on_positive_inputs(spatial, p, window, stride):
  # PyTorch computes (sum x^p)^(1/p) without |.|: compare on positive inputs.
  rank = len(spatial)
  pool_torch = getattr(F, f"lp_pool{rank}d", None)
  if pool_torch is None:
    pytest.skip(f"torch has no lp_pool{rank}d")
  tup = lambda v: (v,) * rank if isinstance(v, int) else tuple(v)
  x = jnp.asarray(oracles.unique_values((2,) + spatial + (2,), shift=1.0))
  ours = lambda v: jaxconv.lp_pool(v, p, tup(window), tup(stride))
  y = jax.jit(ours)(x)
  cotangent = jnp.asarray(oracles.unique_values(y.shape, seed=1))
  dx = jax.jit(lambda v, g: jax.vjp(ours, v)[1](g)[0])(x, cotangent)
  out, dx_torch = _torch_vjp(lambda t: pool_torch(t, p, window, stride), x,
                             cotangent)
  oracles.assert_close(y, _from_torch(out), what="lp values")
  oracles.assert_close(dx, dx_torch, what="lp gradient")


def test_lp_pool_differs_from_torch_only_where_documented():
  # (1) Negative inputs: PyTorch has no |x| (odd p gives a signed "norm").
  x = jnp.array([[[-3.0], [4.0], [-1.0], [2.0]]])
  ours = jaxconv.lp_pool(x, 3.0, (2,), 2)
  theirs = F.lp_pool1d(_to_torch(x), 3.0, 2, 2)
  np.testing.assert_allclose(np.asarray(ours)[0, :, 0],
                             [(27 + 64) ** (1 / 3), (1 + 8) ** (1 / 3)])
  assert not np.allclose(np.asarray(ours), _from_torch(theirs))
  # (2) ceil_mode partial windows: PyTorch averages over the real taps and
  # multiplies by the full window size, i.e. rescales by (K / count)^(1/p).
  x = jnp.asarray(oracles.unique_values((1, 5, 1), shift=1.0))
  ours = jaxconv.lp_pool(x, 2.0, (2,), 2, ceil_mode=True)
  theirs = _from_torch(F.lp_pool1d(_to_torch(x), 2.0, 2, 2, ceil_mode=True))
  np.testing.assert_allclose(ours[:, :2], theirs[:, :2], rtol=1e-12)
  np.testing.assert_allclose(ours[:, 2] * math.sqrt(2.0), theirs[:, 2],
                             rtol=1e-12)
  # (3) Gradients agree, including 0 at all-zero windows.
  zeros = torch.zeros((1, 1, 4), dtype=torch.float64, requires_grad=True)
  F.lp_pool1d(zeros, 2.0, 2, 2).sum().backward()
  _, vjp = jax.vjp(lambda v: jaxconv.lp_pool(v, 2.0, (2,), 2),
                   jnp.zeros((1, 4, 1)))
  dx = vjp(jnp.ones((1, 2, 1)))[0]
  np.testing.assert_array_equal(dx, np.zeros((1, 4, 1)))
  np.testing.assert_array_equal(dx, _from_torch(zeros.grad))


def test_ties_and_nan_agree_with_torch_where_torch_is_defined():
  # Ties: the first maximum in row-major order, in PyTorch too.
  x = jnp.asarray(np.array([[1.0, 3.0, 3.0, 1.0, 3.0]]).reshape(1, 5, 1))
  y, indices = jaxconv.max_pool_with_indices(x, (2,), 1)
  ty, tindices = F.max_pool1d(_to_torch(x), 2, 1, return_indices=True)
  np.testing.assert_array_equal(indices, _from_torch(tindices))
  x2 = jnp.asarray(np.array([[0.0, 5.0], [5.0, 1.0]]).reshape(1, 2, 2, 1))
  _, indices = jaxconv.max_pool_with_indices(x2, (2, 2))
  _, tindices = F.max_pool2d(_to_torch(x2), 2, return_indices=True)
  np.testing.assert_array_equal(indices, _from_torch(tindices))
  # NaN: PyTorch outputs NaN and points at a NaN; with one NaN per window the
  # choice is unique.
  x3 = jnp.asarray(np.array([1.0, np.nan, 3.0, 0.0, 2.0]).reshape(1, 5, 1))
  y, indices = jaxconv.max_pool_with_indices(x3, (3,), 2)
  ty, tindices = F.max_pool1d(_to_torch(x3), 3, 2, return_indices=True)
  np.testing.assert_array_equal(np.isnan(y), np.isnan(_from_torch(ty)))
  np.testing.assert_array_equal(indices, _from_torch(tindices))


ADAPTIVE_CASES = [
    # (spatial, output_size): overlapping, larger, partition, global.
    ((9,), (5,)),
    ((4,), (9,)),
    ((7, 6), (4, 4)),
    ((5, 6), (7, 2)),
    ((8, 6), (4, 3)),
    ((5, 6), (1, 1)),
    ((6, 5, 7), (4, 5, 3)),
]


def _unpool_geometry(spatial, output_size):
  """A PyTorch max_unpool kernel and padding whose default size is `spatial`.

  PyTorch only uses them to check `output_size`: with stride 1 the default
  size is m - 1 + k - 2p, which must equal n.
  """
  kernels, pads = [], []
  for n, m in zip(spatial, output_size):
    pad = max(0, -(-(m - n) // 2))
    kernels.append(n - m + 1 + 2 * pad)
    pads.append(pad)
  return tuple(kernels), tuple(pads)


@pytest.mark.parametrize("spatial, output_size", ADAPTIVE_CASES)
def test_adaptive_pooling_values_indices_and_gradients(spatial, output_size):
  rank = len(spatial)
  x = jnp.asarray(oracles.unique_values((2,) + spatial + (3,), shift=-100.0))
  # Average.
  y, vjp = jax.vjp(jax.jit(lambda v: jaxconv.adaptive_avg_pool(
      v, output_size)), x)
  cotangent = jnp.asarray(oracles.unique_values(y.shape, seed=1, shift=-9.5))
  out, dx_torch = _torch_vjp(
      lambda t: getattr(F, f"adaptive_avg_pool{rank}d")(t, output_size), x,
      cotangent)
  oracles.assert_close(y, _from_torch(out), what="adaptive avg values")
  oracles.assert_close(vjp(cotangent)[0], dx_torch,
                       what="adaptive avg gradient")
  # Max, with indices.
  y, indices = jax.jit(lambda v: jaxconv.adaptive_max_pool_with_indices(
      v, output_size))(x)
  _, vjp = jax.vjp(jax.jit(lambda v: jaxconv.adaptive_max_pool(
      v, output_size)), x)
  out, dx_torch = _torch_vjp(
      lambda t: getattr(F, f"adaptive_max_pool{rank}d")(t, output_size, True),
      x, cotangent)
  oracles.assert_close(y, _from_torch(out[0]), what="adaptive max values")
  np.testing.assert_array_equal(indices, _from_torch(out[1]))
  oracles.assert_close(vjp(cotangent)[0], dx_torch,
                       what="adaptive max gradient")
  # PyTorch's max_unpool with these indices, and jaxconv's.
  kernel, pad = _unpool_geometry(spatial, output_size)
  unpooled = getattr(F, f"max_unpool{rank}d")(
      _to_torch(y), out[1], kernel, 1, pad, output_size=spatial)
  np.testing.assert_array_equal(jaxconv.max_unpool(y, indices, spatial),
                                _from_torch(unpooled))


def test_global_pooling_is_adaptive_pooling_to_one():
  x = jnp.asarray(oracles.unique_values((2, 5, 6, 3), shift=-30.0))
  t = _to_torch(x)
  np.testing.assert_allclose(
      jaxconv.global_avg_pool(x, 2),
      F.adaptive_avg_pool2d(t, 1).numpy()[:, :, 0, 0], rtol=1e-14)
  np.testing.assert_array_equal(
      jaxconv.global_max_pool(x, 2, keepdims=True),
      _from_torch(F.adaptive_max_pool2d(t, 1)))


def test_adaptive_max_nan_agrees_with_torch_where_torch_is_defined():
  # One NaN per window: the same winner. Two: PyTorch takes its last NaN,
  # jaxconv its first (the conventions of max_pool).
  x = jnp.asarray(np.array([1.0, np.nan, 3.0, 0.0, 2.0]).reshape(1, 5, 1))
  y, indices = jaxconv.adaptive_max_pool_with_indices(x, (2,))
  ty, tindices = F.adaptive_max_pool1d(_to_torch(x), 2, return_indices=True)
  np.testing.assert_array_equal(np.isnan(y), np.isnan(_from_torch(ty)))
  np.testing.assert_array_equal(indices, _from_torch(tindices))
  x = jnp.asarray(np.array([np.nan, 1.0, np.nan]).reshape(1, 3, 1))
  _, indices = jaxconv.adaptive_max_pool_with_indices(x, (1,))
  _, tindices = F.adaptive_max_pool1d(_to_torch(x), 1, return_indices=True)
  assert int(indices[0, 0, 0]) == 0 and int(tindices[0, 0, 0]) == 2
