"""The pooling tests have teeth: each test here swaps one gradient (or
divisor) function of jaxconv.pooling for a plausible wrong version and shows
that the checks of test_pooling.py then fail.

Every test clears JAX's caches around the swap, so that no trace of the
right rule is reused for the wrong one (or the other way round).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv
from jaxconv import _pool_windows as windows
from jaxconv import pooling
from tests import pooling_oracles as oracles


@pytest.fixture
def swap(monkeypatch):
  jax.clear_caches()

  def replace(name, wrong, module=pooling):
    monkeypatch.setattr(module, name, wrong)

  yield replace
  monkeypatch.undo()
  jax.clear_caches()


def _fails(check, *args, **kwargs):
  # A numerical mismatch, not some other assertion (shapes, dtypes).
  with pytest.raises(AssertionError, match="scaled error|Mismatched elements"):
    check(*args, **kwargs)


def test_right_rules_pass_the_same_checks():
  jax.clear_caches()
  oracles.check_case(MAX_CASE)
  oracles.check_case(AVG_CASE)
  oracles.check_case(LP_CASE)
  _tie_table()


MAX_CASE = dict(kind="max", shape=(2, 7, 5, 2), window=(3, 2),
                strides=(2, 1), padding=((1, 1), (0, 1)))
AVG_CASE = dict(kind="avg", shape=(2, 8, 5, 2), window=(3, 2), strides=(2, 2),
                padding=1, ceil_mode=True, count_include_pad=False)
LP_CASE = dict(kind="lp", shape=(2, 7, 5, 2), window=(3, 2), strides=(2, 1),
               padding="SAME", p=3)


def _tie_table():
  x = jnp.array([1.0, 3.0, 3.0, 1.0])[:, None]
  _, vjp = jax.vjp(lambda v: jaxconv.max_pool(v, (2,)), x)
  np.testing.assert_array_equal(vjp(jnp.ones((3, 1)))[0][:, 0],
                                [0.0, 2.0, 1.0, 0.0])


def test_last_winner_on_ties_is_caught(swap):
  def last_winner(x, geometry, select):
    # The scan of extremum_and_offsets with `>=`: ties go to the last winner.
    del select
    best = offsets = None
    for flat, offset in enumerate(geometry.offsets):
      value = windows.window_view(x, geometry, offset, -jnp.inf)
      if best is None:
        best, offsets = value, jnp.zeros(value.shape, jnp.int8)
        continue
      take = value >= best
      best = jnp.where(take, value, best)
      offsets = jnp.where(take, jnp.int8(flat), offsets)
    return best, offsets

  swap("extremum_and_offsets", last_winner)
  _fails(_tie_table)


def test_routing_to_the_window_start_is_caught(swap):
  right = pooling.route_to_winners

  def first_tap(cotangent, offsets, geometry):
    return right(cotangent, jnp.zeros_like(offsets), geometry)

  swap("route_to_winners", first_tap)
  _fails(oracles.check_case, MAX_CASE)


def test_splitting_among_the_window_is_caught(swap):
  # What a jnp.max over gathered patches would do with a flat input: spread.
  def spread(cotangent, offsets, geometry):
    del offsets
    return pooling.spread_over_window(cotangent, geometry, True,
                                      geometry.window_size)

  swap("route_to_winners", spread)
  _fails(oracles.check_case, MAX_CASE)


def test_dividing_by_the_full_window_is_caught(swap):
  right = pooling.spread_over_window

  def full_window(cotangent, geometry, count_include_pad, divisor_override):
    del count_include_pad, divisor_override
    return right(cotangent, geometry, True, geometry.window_size)

  swap("spread_over_window", full_window)
  _fails(oracles.check_case, AVG_CASE)


def test_counting_the_ceil_overhang_is_caught(swap):
  right = windows.divisor_table

  def with_overhang(geometry, count_include_pad):
    del count_include_pad
    widened = geometry._replace(padding=tuple(
        (lo, c - lo - n) for (lo, _), c, n in zip(
            geometry.padding, geometry.covered, geometry.in_sizes)))
    return right(widened, True)

  swap("divisor_table", with_overhang, module=windows)
  _fails(oracles.check_case, dict(AVG_CASE, count_include_pad=True))


def test_lp_gradient_without_the_norm_is_caught(swap):
  right = pooling.lp_norm_grad

  def unnormalised(x, y, cotangent, geometry, p):
    # sign(x) |x|^(p-1) without dividing by y^(p-1).
    return right(x, jnp.ones_like(y), cotangent, geometry, p)

  swap("lp_norm_grad", unnormalised)
  _fails(oracles.check_case, LP_CASE)


def test_forgetting_the_stride_in_the_scatter_is_caught(swap):
  right = windows.scatter_to_input

  def stride_one(term, geometry, batch, features, dtype):
    # Scatter as if the windows were one apart.
    dense = geometry._replace(strides=(1,) * geometry.rank)
    return right(term, dense, batch, features, dtype)

  swap("scatter_to_input", stride_one, module=windows)
  _fails(oracles.check_case, MAX_CASE)
