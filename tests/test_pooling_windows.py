"""The private window machinery on its own: the output-size rule, the static
tables, and the scatter as the exact transpose of the window gather."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv import _geometry
from jaxconv import _pool_windows as windows


def test_pool_window_count_properties():
  for n, lo, hi, k, s in itertools.product(range(1, 9), range(3), range(3),
                                           range(1, 6), range(1, 5)):
    floor = _geometry.pool_window_count(n, lo, hi, k, s, False)
    ceil = _geometry.pool_window_count(n, lo, hi, k, s, True)
    if n + lo + hi >= k:
      assert floor == _geometry.window_count(n + lo + hi, k, s)
    assert floor <= ceil <= floor + 1
    if (n + lo + hi - k) % s == 0:
      assert ceil == floor
    if ceil > floor:  # the extra window starts before the right padding
      assert (ceil - 1) * s < n + lo


def test_pool_window_count_matches_torch_within_its_padding_bound():
  torch = pytest.importorskip("torch")
  for n, k, s, d, ceil in itertools.product(range(1, 9), range(1, 5),
                                            range(1, 4), range(1, 3),
                                            (False, True)):
    for pad in range(k // 2 + 1):
      extent = (k - 1) * d + 1
      ours = _geometry.pool_window_count(n, pad, pad, extent, s, ceil)
      try:
        theirs = torch.nn.functional.max_pool1d(
            torch.zeros(1, 1, n), k, s, pad, d, ceil).shape[-1]
      except RuntimeError:  # PyTorch refuses output size < 1
        theirs = 0
      assert max(ours, 0) == theirs, (n, k, s, d, pad, ceil)


def test_pool_window_count_hand_cases():
  # PyTorch: max_pool1d(size 5, k=2, s=2, pad=1, ceil) -> 3 windows, the 4th
  # would start inside the right padding.
  assert _geometry.pool_window_count(5, 1, 1, 2, 2, True) == 3
  assert _geometry.pool_window_count(5, 1, 1, 2, 2, False) == 3
  assert _geometry.pool_window_count(5, 0, 0, 2, 2, True) == 3
  assert _geometry.pool_window_count(5, 0, 0, 2, 2, False) == 2
  # A window larger than the input still fits once in ceil mode (PyTorch).
  assert _geometry.pool_window_count(2, 0, 0, 3, 3, True) == 1
  assert _geometry.pool_window_count(2, 0, 0, 3, 1, True) == 0


def _geometry_of(in_sizes, window, strides, dilation, padding, ceil):
  return windows.pool_geometry((1,) + in_sizes + (1,), window, strides,
                               padding, dilation, ceil)


GEOMETRIES = [
    ((7,), (3,), (2,), (1,), ((1, 1),), True),
    ((10,), (2,), (3,), (3,), ((1, 2),), True),
    ((9, 8), (2, 3), (2, 1), (3, 2), ((1, 1), (1, 0)), False),
    ((6, 5), (3, 3), (2, 2), (1, 1), "SAME", True),
    ((10, 3), (2, 1), (4, 2), (1, 1), "VALID", False),  # gaps
    ((9, 7), (2, 3), (3, 2), (1, 1), "VALID", False),  # unread last inputs
    ((5, 6, 4), (2, 3, 2), (2, 1, 3), (1, 2, 1), ((1, 1), (0, 2), (1, 0)),
     True),
]


@pytest.mark.parametrize("shared", [False, True],
                         ids=["distinct-terms", "shared-terms"])
@pytest.mark.parametrize("geometry_args", GEOMETRIES)
def test_scatter_is_the_transpose_of_the_gather(geometry_args, shared):
  # With `shared`, offsets send the same array object (every other one), as
  # average pooling does: the scatter pads such a term once and slices it.
  geometry = _geometry_of(*geometry_args)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2,) + geometry.in_sizes + (3,)))
  count = 2 if shared else len(geometry.offsets)
  distinct = [jnp.asarray(rng.normal(size=(2,) + geometry.out_sizes + (3,)))
              for _ in range(count)]
  terms = [distinct[flat % count] for flat in range(len(geometry.offsets))]

  @jax.jit
  def both(x, distinct):
    gathered = sum(
        jnp.vdot(windows.window_view(x, geometry, k, 0.0), distinct[f % count])
        for f, k in enumerate(geometry.offsets))
    scattered = windows.scatter_to_input(
        lambda flat, offset: distinct[flat % count], geometry, 2, 3, x.dtype)
    return gathered, scattered

  gathered, scattered = both(x, distinct)
  np.testing.assert_allclose(jnp.vdot(x, scattered), gathered, rtol=1e-12)
  # And against a loop over the tap table.
  expected = np.zeros(x.shape)
  positions = windows.tap_positions(geometry)
  for flat, k in enumerate(geometry.offsets):
    for o in itertools.product(*(range(n) for n in geometry.out_sizes)):
      t = tuple(positions[d][o[d], k[d]] for d in range(geometry.rank))
      if all(0 <= ti < n for ti, n in zip(t, geometry.in_sizes)):
        expected[(slice(None),) + t] += np.asarray(terms[flat])[
            (slice(None),) + o]
  np.testing.assert_allclose(scattered, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("geometry_args", GEOMETRIES)
def test_views_of_the_padded_input_match_the_direct_views(geometry_args):
  # The two ways of reading tap k: slicing the unpadded input and padding the
  # view (average pooling), or padding the input once and slicing it (max,
  # min, Lp) -- against a literal loop over the tap table.
  geometry = _geometry_of(*geometry_args)
  x = np.random.default_rng(1).normal(size=(2,) + geometry.in_sizes + (3,))
  padded, covering = windows.pad_to_covered(jnp.asarray(x), geometry, -7.0)
  assert covering.out_sizes == geometry.out_sizes
  positions = windows.tap_positions(geometry)
  for k in geometry.offsets:
    expected = np.full((2,) + geometry.out_sizes + (3,), -7.0)
    for o in itertools.product(*(range(n) for n in geometry.out_sizes)):
      t = tuple(positions[d][o[d], k[d]] for d in range(geometry.rank))
      if all(0 <= ti < n for ti, n in zip(t, geometry.in_sizes)):
        expected[(slice(None),) + o] = x[(slice(None),) + t]
    direct = windows.window_view(jnp.asarray(x), geometry, k, -7.0)
    through_padding = windows.window_view(padded, covering, k, -7.0)
    np.testing.assert_array_equal(direct, expected)
    np.testing.assert_array_equal(through_padding, expected)


@pytest.mark.parametrize("geometry_args", GEOMETRIES)
def test_static_tables_match_the_tap_loops(geometry_args):
  geometry = _geometry_of(*geometry_args)
  positions = windows.tap_positions(geometry)
  first = windows.first_real_offset(geometry)
  with_pad = windows.divisor_table(geometry, True)
  without = windows.divisor_table(geometry, False)
  for o in itertools.product(*(range(n) for n in geometry.out_sizes)):
    taps = [tuple(positions[d][o[d], k[d]] for d in range(geometry.rank))
            for k in geometry.offsets]
    real = [all(0 <= ti < n for ti, n in zip(t, geometry.in_sizes))
            for t in taps]
    declared = [all(-lo <= ti < n + hi for ti, n, (lo, hi) in zip(
        t, geometry.in_sizes, geometry.padding)) for t in taps]
    assert first[o] == real.index(True)
    assert without[o] == sum(real)
    assert with_pad[o] == sum(declared)


def test_geometry_is_hashable_and_describes_the_cover():
  geometry = _geometry_of((7,), (3,), (2,), (1,), ((1, 1),), True)
  assert hash(geometry) == hash(_geometry_of((7,), (3,), (2,), (1,),
                                             ((1, 1),), True))
  assert geometry.out_sizes == (4,)
  assert geometry.covered == (9,)
  assert geometry.edge_pads == ((1, 1),)
  geometry = _geometry_of((10,), (2,), (4,), (1,), "VALID", False)
  assert geometry.out_sizes == (3,) and geometry.edge_pads == ((0, 0),)
  geometry = _geometry_of((11,), (2,), (4,), (1,), "VALID", False)
  assert geometry.edge_pads == ((0, -1),)  # the last element is never read
  assert windows.offset_dtype(geometry) == np.int8
  big = _geometry_of((200,), (129,), (1,), (1,), "VALID", False)
  assert windows.offset_dtype(big) == np.int16
