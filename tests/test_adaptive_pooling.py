"""Adaptive and global pooling: the window tables, forwards, gradients and
indices against the literal loops, PyTorch and Equinox; ties, NaN and -inf;
complex inputs; dtypes, jit, vmap and second derivatives; bad input.

The proof that these tests catch wrong rules is in test_pooling_teeth.py.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxconv
from jaxconv import _pool_windows as windows
from tests import pooling_oracles as oracles
from tests.helpers import BOUNDARY_MODES, assert_raises_at_the_boundary

NAN = float("nan")


def _pool(kind):
  return {"avg": jaxconv.adaptive_avg_pool,
          "max": jaxconv.adaptive_max_pool}[kind]


def _vjp(kind, x, cotangent, output_size):
  """(y, dx) of the public function, jitted: one compilation."""

  def run(v, g):
    y, vjp = jax.vjp(lambda u: _pool(kind)(u, output_size), v)
    return y, vjp(g)[0]

  return jax.jit(run)(x, cotangent)


_inputs = oracles.adaptive_case_inputs


# ----------------------------------------------------------------------------
# The window tables.
# ----------------------------------------------------------------------------


def test_windows_follow_the_pytorch_formula():
  for n, m in itertools.product(range(1, 13), range(0, 15)):
    starts, ends = windows.adaptive_bounds(n, m)
    expected = [oracles.adaptive_window(i, n, m) for i in range(m)]
    assert list(zip(starts.tolist(), ends.tolist())) == expected, (n, m)
    positions, lengths = windows.adaptive_taps(n, m)
    containing = windows.adaptive_containing(n, m)
    for i, (lo, hi) in enumerate(expected):
      assert lengths[i] == hi - lo
      real = positions[i][positions[i] < n]
      assert real.tolist() == list(range(lo, hi))
      assert np.all(positions[i][hi - lo:] == n)
    for j in range(n):
      inside = [i for i, (lo, hi) in enumerate(expected) if lo <= j < hi]
      row = containing[j]
      assert row[row < m].tolist() == inside, (n, m, j)
      assert np.all(row[len(inside):] == m)
      if m:
        assert inside  # every input belongs to some window
    if 0 < m <= n:
      assert containing.shape[1] <= 2  # overlaps of at most one element
    assert windows.is_partition(n, m) == (m > 0 and n % m == 0)


def test_hand_computed_windows():
  # 5 inputs to 3 outputs: windows [0, 2), [1, 4), [3, 5) (PyTorch's).
  x = jnp.arange(5.0)[:, None]
  np.testing.assert_allclose(jaxconv.adaptive_avg_pool(x, (3,))[:, 0],
                             [0.5, 2.0, 3.5])
  np.testing.assert_array_equal(jaxconv.adaptive_max_pool(x, (3,))[:, 0],
                                [1.0, 3.0, 4.0])
  dx = jax.vjp(lambda v: jaxconv.adaptive_avg_pool(v, (3,)), x)[1](
      jnp.array([6.0, 3.0, 12.0])[:, None])[0]
  np.testing.assert_allclose(dx[:, 0], [3.0, 4.0, 1.0, 7.0, 6.0])
  # 4 inputs to 7 outputs: [0,1), [0,2), [1,2), [1,3), [2,3), [2,4), [3,4).
  x = jnp.arange(4.0)[:, None]
  np.testing.assert_allclose(jaxconv.adaptive_avg_pool(x, (7,))[:, 0],
                             [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
  y, indices = jaxconv.adaptive_max_pool_with_indices(x, (7,))
  np.testing.assert_array_equal(indices[:, 0], [0, 1, 1, 2, 2, 3, 3])
  np.testing.assert_array_equal(y[:, 0], [0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0])


# ----------------------------------------------------------------------------
# Against the literal loops (float64), ranks 1-3, batch dims 0-2.
# ----------------------------------------------------------------------------

CASES = [
    # (shape, output_size); window lengths per axis in the comments.
    ((7, 2), (4,)),  # no batch dims, overlaps: 2, 3, 3, 2
    ((2, 4, 3), (7,)),  # output larger than the input: 1, 1, 2, 1, 2, 1, 1
    ((2, 1, 7, 6, 2), (3, None)),  # two batch dims, None keeps the size
    ((2, 6, 5, 2), (4, 3)),  # overlaps in both: 2, 2, 2, 2 and 2, 3, 2
    ((1, 5, 4, 3, 1), (3, 6, 1)),  # rank 3: overlap, larger, global
    ((2, 8, 9, 1), (4, 3)),  # partitions: reshapes only
    ((2, 5, 3, 2), (0, 2)),  # an empty output
]


@pytest.mark.parametrize("kind", ["avg", "max"])
@pytest.mark.parametrize("shape, output_size", CASES)
def test_matches_the_literal_loops(kind, shape, output_size):
  y, _ = oracles.check_adaptive_case(kind, shape, output_size)
  rank = len(output_size)
  assert y.shape == shape[:len(shape) - rank - 1] + tuple(
      n if m is None else m
      for m, n in zip(output_size, shape[-rank - 1:-1])) + shape[-1:]


def test_indices_are_int32():
  _, indices = jaxconv.adaptive_max_pool_with_indices(jnp.zeros((2, 5, 3)),
                                                      (2,))
  assert indices.dtype == jnp.int32


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("kind", ["avg", "max"])
def test_low_precision_against_float64(kind, dtype):
  oracles.check_adaptive_case(kind, (2, 7, 5, 2), (4, 3), dtype)


# ----------------------------------------------------------------------------
# Equinox (channels first, one example, no batch axis).
# ----------------------------------------------------------------------------


def _equinox(module, x):
  """Applies an Equinox pooling module to a channels-last example."""
  moved = jnp.moveaxis(x, -1, 0)
  return jnp.moveaxis(module(moved), 0, -1)


def equinox_windows(n, m):
  """The windows Equinox 0.13 actually uses: disjoint, the first n % m of
  them one element longer (``_adaptive_pool1d`` in ``equinox/nn/_pool.py``).
  """
  size, longer = divmod(n, m)
  lengths = [size + 1] * longer + [size] * (m - longer)
  ends = np.cumsum(lengths)
  return list(zip((ends - lengths).tolist(), ends.tolist()))


@pytest.mark.parametrize("kind, spatial, output_size", [
    ("avg", (8,), (4,)),
    ("max", (6, 9), (3, 3)),
    ("avg", (6, 9), (2, 1)),
    ("max", (4, 6, 2), (2, 3, 1)),
])
def test_matches_equinox_where_the_sizes_divide(kind, spatial, output_size):
  eqx = pytest.importorskip("equinox")
  rank = len(spatial)
  name = {"avg": "AdaptiveAvgPool", "max": "AdaptiveMaxPool"}[kind]
  module = getattr(eqx.nn, f"{name}{rank}d")(output_size)
  x, cotangent = _inputs(spatial + (3,), output_size)
  y, dx = _vjp(kind, x, cotangent, output_size)
  # Unique values: Equinox's max is jnp.max, whose gradient splits ties.
  y_ref, dx_ref = jax.jit(lambda v, g: _grad(
      lambda u: _equinox(module, u), v, g))(x, cotangent)
  oracles.assert_close(y, y_ref, what="forward vs equinox")
  oracles.assert_close(dx, dx_ref, what="gradient vs equinox")


def test_equinox_windows_differ_where_the_sizes_do_not_divide():
  eqx = pytest.importorskip("equinox")
  # 5 -> 3: PyTorch's windows [0, 2), [1, 4), [3, 5) overlap; Equinox's
  # [0, 2), [2, 4), [4, 5) partition the input.
  assert equinox_windows(5, 3) == [(0, 2), (2, 4), (4, 5)]
  x = jnp.arange(5.0)[:, None]
  theirs = jax.jit(lambda v: _equinox(eqx.nn.AdaptiveAvgPool1d(3), v))(x)
  np.testing.assert_allclose(theirs[:, 0], [0.5, 2.5, 4.0])
  np.testing.assert_allclose(jaxconv.adaptive_avg_pool(x, (3,))[:, 0],
                             [0.5, 2.0, 3.5])
  # In 2-D, Equinox is the box mean / max over its own windows.
  x, _ = _inputs((7, 5, 2), (3, 2))
  for name, reduce in (("AdaptiveAvgPool2d", np.mean),
                       ("AdaptiveMaxPool2d", np.max)):
    theirs = jax.jit(functools.partial(
        _equinox, getattr(eqx.nn, name)((3, 2))))(x)
    expected = np.array([[reduce(np.asarray(x)[r0:r1, c0:c1], axis=(0, 1))
                          for c0, c1 in equinox_windows(5, 2)]
                         for r0, r1 in equinox_windows(7, 3)])
    oracles.assert_close(theirs, expected, what=name)
    if name == "AdaptiveAvgPool2d":
      assert not np.allclose(jaxconv.adaptive_avg_pool(x, (3, 2)), theirs)
  # An output larger than the input fails in Equinox (integer division by
  # zero); PyTorch and jaxconv repeat elements.
  with pytest.raises(ZeroDivisionError):
    _equinox(eqx.nn.AdaptiveAvgPool1d(7), jnp.arange(4.0)[:, None])


# ----------------------------------------------------------------------------
# Fixed tables: ties, NaN, -inf, overlaps.
# ----------------------------------------------------------------------------


def _grad(f, x, cotangent=None):
  y, vjp = jax.vjp(f, x)
  return y, vjp(jnp.ones_like(y) if cotangent is None else cotangent)[0]


def test_ties_go_to_the_first_winner_and_overlaps_add_up():
  # 4 to 3: windows [0, 2), [1, 3), [2, 4) = [1, 3], [3, 3], [3, 1].
  x = jnp.array([1.0, 3.0, 3.0, 1.0])[:, None]
  y, dx = _grad(lambda v: jaxconv.adaptive_max_pool(v, (3,)), x)
  np.testing.assert_array_equal(y[:, 0], [3.0, 3.0, 3.0])
  np.testing.assert_array_equal(dx[:, 0], [0.0, 2.0, 1.0, 0.0])
  # Row-major order in 2-D: the tie between (0, 1) and (1, 0) goes to (0, 1),
  # also when reducing the last dimension first would meet (1, 0) first.
  x = jnp.array([[0.0, 5.0], [5.0, 1.0]])[:, :, None]
  for f in (lambda v: jaxconv.adaptive_max_pool(v, (1, 1)),
            lambda v: jaxconv.global_max_pool(v, 2, keepdims=True)):
    _, dx = _grad(f, x)
    np.testing.assert_array_equal(dx[:, :, 0], [[0.0, 1.0], [0.0, 0.0]])
  # A constant input: every window routes to its first element.
  _, dx = _grad(lambda v: jaxconv.adaptive_max_pool(v, (3, 2)),
                jnp.zeros((1, 5, 3, 1)))
  expected = np.zeros((5, 3))
  for (r0, _), (c0, _) in itertools.product(
      [oracles.adaptive_window(i, 5, 3) for i in range(3)],
      [oracles.adaptive_window(i, 3, 2) for i in range(2)]):
    expected[r0, c0] += 1.0
  np.testing.assert_array_equal(dx[0, :, :, 0], expected)


def test_nan_wins_and_takes_the_gradient():
  x = jnp.array([1.0, NAN, 3.0, NAN, 2.0])[:, None]
  # One window: its first NaN (1). Windows [0, 3), [2, 5): NaN at 1 and 3.
  y, dx = _grad(lambda v: jaxconv.adaptive_max_pool(v, (1,)), x)
  assert np.isnan(y).all()
  np.testing.assert_array_equal(dx[:, 0], [0.0, 1.0, 0.0, 0.0, 0.0])
  y, dx = _grad(lambda v: jaxconv.adaptive_max_pool(v, (2,)), x)
  assert np.isnan(y).all()
  np.testing.assert_array_equal(dx[:, 0], [0.0, 1.0, 0.0, 1.0, 0.0])
  # 2-D: the first NaN in row-major order, wherever the maximum is.
  x = jnp.array([[9.0, 1.0, NAN], [NAN, 2.0, 3.0]])[:, :, None]
  _, indices = jaxconv.adaptive_max_pool_with_indices(x, (1, 1))
  assert int(indices[0, 0, 0]) == 2
  _, dx = _grad(lambda v: jaxconv.global_max_pool(v, 2), x)
  np.testing.assert_array_equal(dx[:, :, 0], [[0, 0, 1], [0, 0, 0]])


def test_windows_of_minus_inf_route_to_their_first_element():
  x = jnp.full((1, 5, 1), -jnp.inf)
  cotangent = jnp.array([1.0, 10.0, 100.0])[None, :, None]
  y, dx = _grad(lambda v: jaxconv.adaptive_max_pool(v, (3,)), x, cotangent)
  assert np.all(y == -np.inf)
  # Windows [0, 2), [1, 4), [3, 5): first elements 0, 1, 3.
  np.testing.assert_array_equal(dx[0, :, 0], [1.0, 10.0, 0.0, 100.0, 0.0])
  _, indices = jaxconv.adaptive_max_pool_with_indices(x, (3,))
  np.testing.assert_array_equal(indices[0, :, 0], [0, 1, 3])


def test_max_gradient_conserves_the_cotangent_sum():
  x, cotangent = _inputs((2, 9, 7, 2), (4, 5))
  _, dx = _vjp("max", x, cotangent, (4, 5))
  np.testing.assert_allclose(dx.sum(), cotangent.sum())
  assert np.count_nonzero(np.asarray(dx)) <= cotangent.size


# ----------------------------------------------------------------------------
# Global pooling.
# ----------------------------------------------------------------------------


def test_global_pooling_is_the_mean_and_max_over_space():
  x, _ = _inputs((2, 3, 5, 4, 2), (1, 1))
  for keepdims in (False, True):
    y = jaxconv.global_avg_pool(x, 2, keepdims=keepdims)
    np.testing.assert_allclose(y, jnp.mean(x, axis=(2, 3),
                                           keepdims=keepdims), rtol=1e-14)
    y = jaxconv.global_max_pool(x, 2, keepdims=keepdims)
    np.testing.assert_array_equal(y, jnp.max(x, axis=(2, 3),
                                             keepdims=keepdims))
  assert jaxconv.global_avg_pool(x, 3).shape == (2, 2)
  assert jaxconv.global_max_pool(x, 3, keepdims=True).shape == (2, 1, 1, 1, 2)
  # Gradients: delta / size everywhere; delta at the (unique) maximum.
  cotangent = jnp.asarray(oracles.unique_values((2, 3, 2), seed=5))
  dx = jax.vjp(lambda v: jaxconv.global_avg_pool(v, 2), x)[1](cotangent)[0]
  np.testing.assert_allclose(
      dx, jnp.broadcast_to(cotangent[:, :, None, None] / 20, x.shape),
      rtol=1e-14)
  dx = jax.vjp(lambda v: jaxconv.global_max_pool(v, 2), x)[1](cotangent)[0]
  winners = x == jnp.max(x, axis=(2, 3), keepdims=True)
  np.testing.assert_array_equal(
      dx, jnp.where(winners, cotangent[:, :, None, None], 0.0))
  np.testing.assert_array_equal(
      jaxconv.global_max_pool_grad(x, cotangent, 2), dx)
  np.testing.assert_array_equal(
      jaxconv.global_avg_pool_grad(x, cotangent[:, :, None, None], 2,
                                   keepdims=True),
      jaxconv.global_avg_pool_grad(x, cotangent, 2))


# ----------------------------------------------------------------------------
# Public gradient functions, jit, vmap, second order.
# ----------------------------------------------------------------------------


def test_gradient_functions_match_the_rules_and_jit():
  x, cotangent = _inputs((2, 7, 5, 2), (4, 3))
  for kind, grad in (("avg", jaxconv.adaptive_avg_pool_grad),
                     ("max", jaxconv.adaptive_max_pool_grad)):
    _, expected = _vjp(kind, x, cotangent, (4, 3))
    np.testing.assert_array_equal(grad(x, cotangent, (4, 3)), expected)
    jitted = jax.jit(functools.partial(grad, output_size=(4, 3)))
    np.testing.assert_array_equal(jitted(x, cotangent), expected)
  spec = jax.ShapeDtypeStruct(x.shape, x.dtype)
  np.testing.assert_array_equal(
      jaxconv.adaptive_avg_pool_grad(spec, cotangent, (4, 3)),
      jaxconv.adaptive_avg_pool_grad(x, cotangent, (4, 3)))
  # Linear in the cotangent, with the gather of v as the gradient.
  v = jnp.asarray(oracles.unique_values(x.shape, seed=4))
  grad_g = jax.grad(lambda g: jnp.vdot(
      jaxconv.adaptive_max_pool_grad(x, g, (4, 3)), v))(cotangent)
  _, indices = jaxconv.adaptive_max_pool_with_indices(x, (4, 3))
  expected = jnp.take_along_axis(v.reshape(2, 35, 2),
                                 indices.reshape(2, 12, 2), 1)
  np.testing.assert_array_equal(grad_g, expected.reshape(cotangent.shape))


@pytest.mark.parametrize("kind", ["avg", "max"])
def test_check_grads_order_two(kind):
  x, _ = _inputs((2, 5, 7, 2), (3, 4))
  f = jax.jit(lambda v: _pool(kind)(v, (3, 4)))
  check_grads(f, (x,), order=2, modes=("rev",), eps=1e-3)


def test_jit_eager_vmap_and_batch_dims_agree():
  x, cotangent = _inputs((3, 2, 6, 5, 2), (4, 3))
  for kind in ("avg", "max"):
    pool = functools.partial(_pool(kind), output_size=(4, 3))
    y, dx = _grad(pool, x, cotangent)
    y_jit, dx_jit = jax.jit(functools.partial(_grad, pool))(x, cotangent)
    np.testing.assert_array_equal(y_jit, y)
    np.testing.assert_allclose(dx_jit, dx, rtol=1e-14)
    single = jax.vmap(jax.vmap(functools.partial(_grad, pool)))
    y_map, dx_map = single(x, cotangent)
    np.testing.assert_array_equal(y_map, y)
    np.testing.assert_allclose(dx_map, dx, rtol=1e-14)
    np.testing.assert_array_equal(pool(x[1, 0]), y[1, 0])


def test_second_derivative_of_average_is_its_gram_map():
  # loss = |A x|^2 / 2 has Hessian A^T A: hvp(v) = A^T (A v).
  x, _ = _inputs((1, 7, 5, 2), (4, 3))
  v, _ = _inputs((1, 7, 5, 2), (4, 3), seed=3)
  pool = lambda u: jaxconv.adaptive_avg_pool(u, (4, 3))
  loss = lambda u: 0.5 * jnp.sum(pool(u) ** 2)
  hvp = jax.jit(jax.grad(lambda u: jnp.vdot(jax.grad(loss)(u), v)))(x)
  expected = jaxconv.adaptive_avg_pool_grad(x, pool(v), (4, 3))
  oracles.assert_close(hvp, expected)


def test_numpy_inputs_and_empty_batches():
  x = oracles.unique_values((2, 5, 4, 2))
  y = jaxconv.adaptive_avg_pool(x, (3, 3))
  assert isinstance(y, jax.Array) and y.dtype == jnp.float64
  for f in (lambda v: jaxconv.adaptive_avg_pool(v, (3, 3)),
            lambda v: jaxconv.adaptive_max_pool(v, (3, 3))):
    for shape in [(0, 5, 4, 2), (2, 5, 4, 0)]:
      y, dx = _grad(f, jnp.zeros(shape))
      assert y.shape == shape[:1] + (3, 3) + shape[-1:]
      assert dx.shape == shape


def test_max_unpool_puts_the_adaptive_maxima_back():
  x, _ = _inputs((2, 7, 5, 2), (4, 3))
  y, indices = jaxconv.adaptive_max_pool_with_indices(x, (4, 3))
  unpooled = jaxconv.max_unpool(y, indices, (7, 5))
  winners = np.zeros((2, 35, 2), bool)
  np.put_along_axis(winners, np.asarray(indices.reshape(2, -1, 2)), True,
                    axis=1)
  np.testing.assert_array_equal(
      unpooled, jnp.where(winners.reshape(x.shape), x, 0.0))


# ----------------------------------------------------------------------------
# Complex average pooling.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
def test_complex_average_matches_lax_and_the_loops(dtype):
  shape = (2, 6, 5, 2)
  x = (_inputs(shape, (3, 1))[0] + 1j * _inputs(shape, (3, 1), seed=7)[0])
  x = x.astype(dtype)
  # 6 -> 3 and 5 -> 1 are partitions: reduce_window with window = stride
  # (2, 5) computes the same. 6 -> 2 is one too; 5 -> 2 overlaps (loops only).
  for output_size, lax_window in (((3, 1), (2, 5)), ((2, 2), None)):
    out_shape = (2,) + output_size + (2,)
    cotangent = (oracles.unique_values(out_shape, seed=2) * (0.5 - 2j)
                 + 3j).astype(dtype)
    y, dx = _vjp("avg", x, cotangent, output_size)
    assert y.dtype == x.dtype and dx.dtype == x.dtype
    y_lit, dx_lit, _ = oracles.literal_adaptive_pool(x, cotangent, "avg",
                                                     output_size)
    oracles.assert_close(y, y_lit, dtype, f"forward {output_size}")
    oracles.assert_close(dx, dx_lit, dtype, f"gradient {output_size}")
    np.testing.assert_array_equal(
        jaxconv.adaptive_avg_pool_grad(x, cotangent, output_size), dx)
    if lax_window:
      y_ref, vjp_ref = jax.vjp(functools.partial(
          oracles.lax_pool, kind="avg", window=lax_window, strides=lax_window),
          x)
      oracles.assert_close(y, y_ref, dtype, "forward vs lax")
      oracles.assert_close(dx, vjp_ref(cotangent)[0], dtype,
                           "gradient vs lax (no conjugation)")
  cotangent = (jnp.arange(4.0).reshape(2, 2) * (1 - 1j)).astype(dtype)
  dx = jax.vjp(lambda v: jaxconv.global_avg_pool(v, 2), x)[1](cotangent)[0]
  oracles.assert_close(
      dx, jnp.broadcast_to(cotangent[:, None, None] / 30, x.shape), dtype)


# ----------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------

X = jnp.zeros((2, 5, 4, 3))

ERRORS = [
    ("size_int", lambda x: jaxconv.adaptive_avg_pool(x, 3), TypeError,
     r"`output_size` must be a sequence with one int \(or None\)"),
    ("size_empty", lambda x: jaxconv.adaptive_max_pool(x, ()), ValueError,
     r"`output_size` must have at least one entry"),
    ("size_too_long", lambda x: jaxconv.adaptive_avg_pool(x, (2, 2, 2, 2)),
     ValueError, r"`output_size` \(2, 2, 2, 2\) has 4 dimensions.*only 3"),
    ("size_negative", lambda x: jaxconv.adaptive_max_pool(x, (2, -1)),
     ValueError, r"`output_size` entries must be >= 0, got \(2, -1\)"),
    ("size_float", lambda x: jaxconv.adaptive_avg_pool(x, (2.0, 2)),
     TypeError, r"`output_size` must hold integers, got 2\.0"),
    ("size_bool", lambda x: jaxconv.adaptive_avg_pool(x, (True, 2)),
     TypeError, r"`output_size` must hold integers, got the bool True"),
    ("empty_axis", lambda x: jaxconv.adaptive_avg_pool(x[:, :0], (2, 2)),
     ValueError, r"size 0 along spatial dimension 0.*2 adaptive windows"),
    ("cotangent_shape", lambda x: jaxconv.adaptive_max_pool_grad(
        x, jnp.zeros((2, 3, 3, 3)), (2, 2)), ValueError,
     r"`cotangent` must have the pooled output's shape \(2, 2, 2, 3\), got "
     r"\(2, 3, 3, 3\)"),
    ("cotangent_int", lambda x: jaxconv.adaptive_avg_pool_grad(
        x, jnp.zeros((2, 2, 2, 3), jnp.int32), (2, 2)), TypeError,
     r"`cotangent` must have a floating-point or complex dtype.*int32"),
    ("cotangent_complex", lambda x: jaxconv.adaptive_avg_pool_grad(
        x, jnp.zeros((2, 2, 2, 3), jnp.complex64), (2, 2)), TypeError,
     r"`cotangent` is complex64 but `x` is float64"),
    ("global_dims_zero", lambda x: jaxconv.global_avg_pool(x, 0), ValueError,
     r"`num_spatial_dims` must be between 1 and 3 for `x` with 4 axes.*got 0"),
    ("global_dims_large", lambda x: jaxconv.global_max_pool(x, 4),
     ValueError, r"`num_spatial_dims` must be between 1 and 3.*got 4"),
    ("global_dims_tuple", lambda x: jaxconv.global_max_pool(x, (1, 2)),
     TypeError, r"`num_spatial_dims` must be a Python int.*\(1, 2\)"),
    ("global_dims_bool", lambda x: jaxconv.global_avg_pool(x, True),
     TypeError, r"`num_spatial_dims` must be a Python int.*True"),
    ("global_keepdims", lambda x: jaxconv.global_avg_pool(x, 2,
                                                          keepdims=None),
     TypeError, r"`keepdims` must be a bool, got None"),
    ("global_cotangent", lambda x: jaxconv.global_avg_pool_grad(
        x, jnp.zeros((2, 1, 1, 3)), 2), ValueError,
     r"`cotangent` must have the pooled output's shape \(2, 3\) "
     r"\(keepdims=False\), got \(2, 1, 1, 3\)"),
]


@pytest.mark.parametrize("f, error, message", [c[1:] for c in ERRORS],
                         ids=[c[0] for c in ERRORS])
@pytest.mark.parametrize("mode", BOUNDARY_MODES)
def test_bad_arguments_raise_at_the_boundary(f, error, message, mode):
  assert_raises_at_the_boundary(f, X, error, message, mode)


def test_traced_static_arguments_are_refused_by_name():
  with pytest.raises(TypeError, match=r"`num_spatial_dims` must be a static "
                     r"Python int, got a traced value"):
    jax.jit(jaxconv.global_avg_pool)(X, 2)
  with pytest.raises(TypeError, match=r"`output_size` must hold static "
                     r"Python ints, got a traced value"):
    jax.jit(jaxconv.adaptive_avg_pool)(X, (2, 2))


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_, jnp.complex64])
@pytest.mark.parametrize("name, pool", [
    ("adaptive max pooling", lambda x: jaxconv.adaptive_max_pool(x, (2,))),
    ("adaptive max pooling",
     lambda x: jaxconv.adaptive_max_pool_with_indices(x, (2,))),
    ("adaptive max pooling", lambda x: jaxconv.adaptive_max_pool_grad(
        x, jnp.zeros((1, 2, 1)), (2,))),
    ("global max pooling", lambda x: jaxconv.global_max_pool(x, 1)),
    ("adaptive average pooling",
     lambda x: jaxconv.adaptive_avg_pool(x, (2,))),
    ("global average pooling", lambda x: jaxconv.global_avg_pool(x, 1)),
])
def test_wrong_dtypes_are_refused(name, pool, dtype):
  x = jnp.zeros((1, 5, 1), dtype)
  complex_ok = "average" in name
  if complex_ok and dtype == jnp.complex64:
    assert pool(x).dtype == jnp.complex64
    return
  expected = (r"`x` must have a floating-point or complex dtype .*"
              if complex_ok else r"`x` must have a real floating-point dtype")
  expected += ".*" + str(np.dtype(dtype))
  if dtype == jnp.complex64:
    expected = (r"`x` must have a real floating-point dtype .* for " + name
                + r", got complex64: complex numbers have no order")
  for run in (lambda: pool(x), lambda: jax.jit(pool)(x),
              lambda: jax.eval_shape(pool, x)):
    with pytest.raises(TypeError, match=expected):
      run()
