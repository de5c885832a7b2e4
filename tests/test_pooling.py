"""Pooling forwards and gradients against lax, the literal loops, flax and
finite differences; fixed tables for ties, NaN, -inf, zero Lp windows and
pure-padding averages; average pooling with window dilation and of complex
inputs; dtypes, jit, vmap and second derivatives.

PyTorch comparisons live in test_pooling_torch.py, bad input in
test_pooling_errors.py, the proof that these tests catch wrong rules in
test_pooling_teeth.py, and the private window machinery in
test_pooling_windows.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import jaxconv
from tests import pooling_oracles as oracles

INF = float("inf")
SWEEP = settings(max_examples=8, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow])

# ----------------------------------------------------------------------------
# Fixed cases against lax and the literal transcription (float64).
# ----------------------------------------------------------------------------

CASES = [
    # max / min: overlap, asymmetric padding, batch dims 0-2, ranks 1-3.
    dict(kind="max", shape=(2, 7, 6, 3), window=(3, 2), strides=(2, 1),
         padding=((1, 1), (0, 1))),
    dict(kind="max", shape=(9, 2), window=(3,), strides=(2,), padding="SAME"),
    dict(kind="max", shape=(2, 1, 5, 4, 3, 2), window=(2, 3, 2),
         strides=(1, 2, 2), padding=((1, 0), (1, 1), (0, 1))),
    dict(kind="max", shape=(2, 8, 7, 2), window=(2, 2), strides=(2, 2),
         padding="VALID"),
    dict(kind="max", shape=(2, 9, 8, 2), window=(3, 2), strides=(2, 3),
         padding=(1, 1), dilation=(2, 3)),
    dict(kind="max", shape=(2, 7, 6, 2), window=(3, 2), strides=(2, 2),
         padding=1, ceil_mode=True),
    dict(kind="max", shape=(2, 10, 1), window=(2,), strides=(4,),
         padding="VALID"),  # stride > window: gaps
    dict(kind="min", shape=(2, 7, 6, 3), window=(3, 3), strides=(2, 2),
         padding="SAME"),
    dict(kind="min", shape=(8, 7, 2), window=(2, 3), strides=(3, 1),
         padding=((1, 0), (1, 1)), dilation=(2, 1), ceil_mode=True),
    # avg: divisors with and without padding, ceil overhang, override.
    dict(kind="avg", shape=(2, 7, 6, 3), window=(3, 2), strides=(2, 1),
         padding=((1, 1), (0, 1))),
    dict(kind="avg", shape=(2, 7, 6, 3), window=(3, 3), strides=(2, 2),
         padding="SAME", count_include_pad=False),
    dict(kind="avg", shape=(2, 7, 6, 3), window=(3, 2), strides=(2, 3),
         padding=1, ceil_mode=True, count_include_pad=True),
    dict(kind="avg", shape=(2, 7, 6, 3), window=(3, 2), strides=(2, 3),
         padding=1, ceil_mode=True, count_include_pad=False),
    dict(kind="avg", shape=(3, 5, 4, 2), window=(2, 3), strides=(1, 2),
         padding=((2, 0), (0, 2)), divisor_override=-4),
    dict(kind="avg", shape=(2, 8, 8, 2), window=(2, 2), strides=(2, 2)),
    # Lp: integer and fractional p, p < 1, p = inf, dilation, ceil.
    dict(kind="lp", shape=(2, 7, 6, 3), window=(3, 2), strides=(2, 1),
         padding=((1, 1), (0, 1)), p=2),
    dict(kind="lp", shape=(2, 7, 6, 3), window=(3, 2), strides=(2, 3),
         padding=1, ceil_mode=True, p=2.5, dilation=(1, 2)),
    dict(kind="lp", shape=(9, 2), window=(3,), strides=(2,), padding="SAME",
         p=0.5),
    dict(kind="lp", shape=(9, 2), window=(4,), strides=(1,), padding="VALID",
         p=1),
    dict(kind="lp", shape=(2, 6, 5, 2), window=(2, 2), strides=(1, 2),
         padding="SAME", p=7),
    dict(kind="lp", shape=(2, 7, 6, 3), window=(3, 2), strides=(2, 3),
         padding=1, ceil_mode=True, p=INF, dilation=(2, 1)),
    # avg with window dilation: the divisor counts taps, not positions.
    dict(kind="avg", shape=(2, 9, 8, 2), window=(3, 2), strides=(2, 3),
         padding=(1, 1), dilation=(2, 3)),
    dict(kind="avg", shape=(2, 9, 7, 2), window=(2, 3), strides=(3, 1),
         padding=((1, 0), (2, 1)), dilation=(3, 2), ceil_mode=True,
         count_include_pad=False),
    dict(kind="avg", shape=(2, 9, 7, 2), window=(2, 3), strides=(3, 1),
         padding=((2, 0), (2, 1)), dilation=(3, 2), ceil_mode=True,
         count_include_pad=True),
    dict(kind="avg", shape=(9, 2), window=(3,), strides=(2,), padding="SAME",
         dilation=(2,), divisor_override=3),
]
AVG_DILATED = CASES[-3]


def _case_id(case):
  return "-".join(f"{k}={v}" for k, v in case.items() if k != "shape")


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_lax_and_literal_float64(case):
  oracles.check_case(case, "float64", literal=True)


@pytest.mark.parametrize("case", CASES[::5], ids=_case_id)
def test_matches_float64_oracle_in_float32(case):
  oracles.check_case(case, "float32")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("case", [CASES[4], CASES[11], CASES[20],
                                  AVG_DILATED], ids=_case_id)
def test_half_precision_against_float64(case, dtype):
  oracles.check_case(case, dtype)


# ----------------------------------------------------------------------------
# Property-based sweep: ranks 1-3, batch dims 0-2, every padding kind.
# ----------------------------------------------------------------------------


@st.composite
def geometries(draw, kind):
  rank = draw(st.integers(1, 3))
  batch = tuple(draw(st.lists(st.integers(1, 2), min_size=0, max_size=2)))
  max_size = {1: 9, 2: 6, 3: 4}[rank]
  in_sizes = tuple(draw(st.integers(1, max_size)) for _ in range(rank))
  window = tuple(draw(st.integers(1, 3)) for _ in range(rank))
  strides = tuple(draw(st.integers(1, 3)) for _ in range(rank))
  dilation = None
  if draw(st.booleans()):
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(rank))
  padding_kind = draw(st.sampled_from(["VALID", "SAME", "int", "pairs"]))
  if padding_kind == "int":
    padding = draw(st.integers(0, 2))
  elif padding_kind == "pairs":
    padding = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2)))
                    for _ in range(rank))
  else:
    padding = padding_kind
  case = dict(kind=kind, shape=batch + in_sizes + (draw(st.integers(1, 2)),),
              window=window, strides=strides, padding=padding,
              dilation=dilation, ceil_mode=draw(st.booleans()))
  if kind == "avg":
    case["count_include_pad"] = draw(st.booleans())
    if draw(st.integers(0, 4)) == 0:
      case["divisor_override"] = draw(st.sampled_from([-2, 3]))
  if kind == "lp":
    case["p"] = draw(st.sampled_from([0.75, 1, 2, 3.5, INF]))
  return case


def _expected_problem(case):
  """Why the oracles consider a case invalid, or None."""
  rank = len(case["window"])
  in_sizes = case["shape"][-rank - 1:-1]
  dilation = case["dilation"] or (1,) * rank
  pairs = oracles.resolve_padding(case["padding"], in_sizes, case["window"],
                                  case["strides"], dilation)
  outs = oracles.output_sizes(in_sizes, case["window"], case["strides"],
                              dilation, pairs, case["ceil_mode"])
  if min(outs) < 1:
    return "output size"
  if case["kind"] in ("max", "min"):
    for n, (lo, hi), k, s, d, out in zip(in_sizes, pairs, case["window"],
                                         case["strides"], dilation, outs):
      extent = (k - 1) * d + 1
      if max(lo, hi) > extent // 2:
        return "padding"
      for o in range(out):
        if not any(0 <= o * s - lo + j * d < n for j in range(k)):
          return "padding only"
  return None


def _sweep(case):
  problem = _expected_problem(case)
  if problem is not None:
    x, _ = oracles.case_inputs(dict(case, kind="avg", dilation=None,
                                    padding="VALID", ceil_mode=False,
                                    window=(1,) * len(case["window"])))
    with pytest.raises(ValueError):
      oracles.jaxconv_pool(x, **oracles._kwargs(case))
    return
  oracles.check_case(case, "float64", literal=True)


@SWEEP
@given(geometries("max"))
def test_sweep_max(case):
  _sweep(case)


@SWEEP
@given(geometries("min"))
def test_sweep_min(case):
  _sweep(case)


@SWEEP
@given(geometries("avg"))
def test_sweep_avg(case):
  _sweep(case)


@SWEEP
@given(geometries("lp"))
def test_sweep_lp(case):
  _sweep(case)


# ----------------------------------------------------------------------------
# Flax.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("batch, padding", [((), "SAME"),
                                            ((2,), ((1, 1), (0, 1)))])
def test_matches_flax_linen(batch, padding):
  linen = pytest.importorskip("flax.linen")
  x = jnp.asarray(oracles.unique_values(batch + (7, 6, 3), shift=-60.0))
  window, strides = (3, 2), (2, 1)
  def flax_min_pool(v, window_shape, strides, padding):
    # linen has no min_pool (nnx has); linen.pool is what both build on.
    return linen.pool(v, jnp.inf, jax.lax.min, window_shape, strides, padding)

  pairs = [
      (jaxconv.max_pool, linen.max_pool, {}),
      (jaxconv.min_pool, flax_min_pool, {}),
      (jaxconv.avg_pool, linen.avg_pool, {}),
      (jaxconv.avg_pool, linen.avg_pool, {"count_include_pad": False}),
  ]
  for ours, theirs, options in pairs:
    f = jax.jit(functools.partial(ours, window_shape=window, strides=strides,
                                  padding=padding, **options))
    g = jax.jit(functools.partial(theirs, window_shape=window,
                                  strides=strides, padding=padding, **options))
    y, vjp = jax.vjp(f, x)
    y_ref, vjp_ref = jax.vjp(g, x)
    cotangent = jnp.asarray(oracles.unique_values(y.shape, seed=3))
    oracles.assert_close(y, y_ref, what=f"{ours.__name__} {options}")
    oracles.assert_close(vjp(cotangent)[0], vjp_ref(cotangent)[0],
                         what=f"{ours.__name__} grad {options}")


# ----------------------------------------------------------------------------
# Fixed tables.
# ----------------------------------------------------------------------------


def _grad(f, x, cotangent=None):
  y, vjp = jax.vjp(f, x)
  if cotangent is None:
    cotangent = jnp.ones_like(y)
  return y, vjp(cotangent)[0]


def test_ties_go_to_the_first_winner():
  x = jnp.array([1.0, 3.0, 3.0, 1.0])[:, None]
  y, dx = _grad(lambda v: jaxconv.max_pool(v, (2,)), x)
  np.testing.assert_array_equal(y[:, 0], [3.0, 3.0, 3.0])
  np.testing.assert_array_equal(dx[:, 0], [0.0, 2.0, 1.0, 0.0])
  y, dx = _grad(lambda v: jaxconv.min_pool(v, (2,)), -x)
  np.testing.assert_array_equal(dx[:, 0], [0.0, 2.0, 1.0, 0.0])
  # Row-major order in 2-D: the tie between (0, 1) and (1, 0) goes to (0, 1).
  x = jnp.array([[0.0, 5.0], [5.0, 1.0]])[:, :, None]
  _, dx = _grad(lambda v: jaxconv.max_pool(v, (2, 2)), x)
  np.testing.assert_array_equal(dx[:, :, 0], [[0.0, 1.0], [0.0, 0.0]])
  # A constant input: each window routes to its first tap.
  _, dx = _grad(lambda v: jaxconv.max_pool(v, (2,), padding=1),
                jnp.zeros((3, 1)))
  np.testing.assert_array_equal(dx[:, 0], [2.0, 1.0, 1.0])
  # p = inf: ties of |x| also go to the first, with its sign.
  x = jnp.array([1.0, -3.0, 3.0, 1.0])[:, None]
  y, dx = _grad(lambda v: jaxconv.lp_pool(v, INF, (2,)), x)
  np.testing.assert_array_equal(y[:, 0], [3.0, 3.0, 3.0])
  np.testing.assert_array_equal(dx[:, 0], [0.0, -2.0, 1.0, 0.0])


def test_nan_wins_and_takes_the_gradient():
  nan = float("nan")
  x = jnp.array([1.0, nan, 3.0, nan, 2.0])[:, None]
  for pool in (jaxconv.max_pool, jaxconv.min_pool):
    y, dx = _grad(functools.partial(pool, window_shape=(4,)), x)
    assert np.isnan(y).all()
    # Window 0 -> its first NaN (1); window 1 -> its first NaN (1).
    np.testing.assert_array_equal(dx[:, 0], [0.0, 2.0, 0.0, 0.0, 0.0])
    y, dx = _grad(functools.partial(pool, window_shape=(2,), strides=2), x)
    np.testing.assert_array_equal(np.isnan(y[:, 0]), [True, True])
    np.testing.assert_array_equal(dx[:, 0], [0.0, 1.0, 0.0, 1.0, 0.0])
  # A NaN after the maximum still wins; before it, it stays.
  x = jnp.array([5.0, nan, nan])[:, None]
  _, dx = _grad(lambda v: jaxconv.max_pool(v, (3,)), x)
  np.testing.assert_array_equal(dx[:, 0], [0.0, 1.0, 0.0])
  indices = jaxconv.max_pool_with_indices(x, (3,))[1]
  np.testing.assert_array_equal(indices[:, 0], [1])


def test_all_minus_inf_with_same_padding_never_selects_padding():
  x = jnp.full((1, 3, 3, 1), -jnp.inf)
  cotangent = jnp.arange(1.0, 10.0).reshape(1, 3, 3, 1)
  y, dx = _grad(lambda v: jaxconv.max_pool(v, (3, 3), padding="SAME"), x,
                cotangent)
  assert np.all(y == -np.inf)
  # Window (i, j) routes to its first real tap (max(i-1, 0), max(j-1, 0)).
  expected = np.zeros((3, 3))
  for i in range(3):
    for j in range(3):
      expected[max(i - 1, 0), max(j - 1, 0)] += cotangent[0, i, j, 0]
  np.testing.assert_array_equal(dx[0, :, :, 0], expected)
  assert float(dx.sum()) == float(cotangent.sum())
  _, indices = jaxconv.max_pool_with_indices(x, (3, 3), padding="SAME")
  np.testing.assert_array_equal(indices[0, :, :, 0],
                                [[0, 0, 1], [0, 0, 1], [3, 3, 4]])
  # Min pooling with +inf, and ceil-mode overhang.
  x = jnp.full((5, 1), jnp.inf)
  _, dx = _grad(lambda v: jaxconv.min_pool(v, (2,), 2, ceil_mode=True), x)
  np.testing.assert_array_equal(dx[:, 0], [1.0, 0.0, 1.0, 0.0, 1.0])


@pytest.mark.parametrize("p", [0.5, 2, INF])
def test_lp_all_zero_windows_have_zero_gradient(p):
  x = jnp.zeros((2, 4, 4, 2))
  f = lambda v: jaxconv.lp_pool(v, p, (2, 2), padding="SAME")
  y, dx = jax.jit(lambda v: _grad(f, v))(x)
  assert np.all(y == 0) and np.all(dx == 0)
  # Second order is finite too.
  hvp = jax.jit(jax.grad(
      lambda v: jnp.sum(jax.grad(lambda u: f(u).sum())(v))))(x)
  assert np.all(np.isfinite(hvp))
  # Zeros inside a nonzero window: gradient 0 there, finite elsewhere.
  x = jnp.array([0.0, 3.0, -4.0, 0.0])[:, None]
  y, dx = _grad(lambda v: jaxconv.lp_pool(v, p, (4,)), x)
  norm = (3.0 ** p + 4.0 ** p) ** (1 / p) if p != INF else 4.0
  np.testing.assert_allclose(y[0, 0], norm)
  if p == INF:
    expected = [0.0, 0.0, -1.0, 0.0]
  else:
    expected = [0.0, (3.0 / norm) ** (p - 1), -(4.0 / norm) ** (p - 1), 0.0]
  np.testing.assert_allclose(dx[:, 0], expected, rtol=1e-12)


def test_lp_takes_the_absolute_value_and_does_not_overflow():
  x = jnp.array([-3.0, 4.0])[:, None]
  np.testing.assert_allclose(jaxconv.lp_pool(x, 2, (2,))[0, 0], 5.0)
  np.testing.assert_allclose(jaxconv.lp_pool(x, 3, (2,))[0, 0],
                             (27.0 + 64.0) ** (1 / 3))
  big = jnp.array([3e30, 4e30], jnp.float32)[:, None]
  y = jaxconv.lp_pool(big, 4, (2,))
  np.testing.assert_allclose(y[0, 0], (3.0 ** 4 + 4.0 ** 4) ** 0.25 * 1e30,
                             rtol=1e-6)
  half = jnp.array([300.0, -400.0], jnp.float16)[:, None]
  y, dx = _grad(lambda v: jaxconv.lp_pool(v, 3, (2,)), half)
  assert np.isfinite(np.asarray(y, np.float32)).all()
  assert np.isfinite(np.asarray(dx, np.float32)).all()


def test_average_of_pure_padding_windows_is_zero():
  x = jnp.array([2.0, 4.0])[:, None]
  f = lambda v: jaxconv.avg_pool(v, (2,), 1, ((3, 0),),
                                 count_include_pad=False)
  y, dx = _grad(f, x, jnp.array([1.0, 10.0, 100.0, 1000.0])[:, None])
  # Windows at padded positions [0,1], [1,2] are pure padding; [2,3] holds
  # x[0]; [3,4] holds both.
  np.testing.assert_array_equal(y[:, 0], [0.0, 0.0, 2.0, 3.0])
  np.testing.assert_array_equal(dx[:, 0], [100.0 + 500.0, 500.0])
  y, dx = _grad(lambda v: jaxconv.avg_pool(v, (2,), 1, ((3, 0),)), x)
  np.testing.assert_array_equal(y[:, 0], [0.0, 0.0, 1.0, 3.0])
  np.testing.assert_array_equal(dx[:, 0], [1.0, 0.5])


def test_hand_computed_average_with_ceil_mode():
  # PyTorch: avg_pool1d(arange(5), 3, 2, padding=1, ceil_mode=True) and the
  # divisors 3, 3, 3 (with pad) or 2, 3, 2 (without).
  x = jnp.arange(5.0)[:, None]
  y = jaxconv.avg_pool(x, (3,), 2, 1, ceil_mode=True)
  np.testing.assert_allclose(y[:, 0], [1 / 3, 2.0, 7 / 3])
  y = jaxconv.avg_pool(x, (3,), 2, 1, False, ceil_mode=True)
  np.testing.assert_allclose(y[:, 0], [0.5, 2.0, 3.5])
  # Overhang beyond the padding never counts: window [4, 5] of arange(5)
  # with no padding divides by 1.
  y = jaxconv.avg_pool(x, (2,), 2, ceil_mode=True)
  np.testing.assert_allclose(y[:, 0], [0.5, 2.5, 4.0])
  y = jaxconv.avg_pool(x, (2,), 2, ceil_mode=True, divisor_override=2)
  np.testing.assert_allclose(y[:, 0], [0.5, 2.5, 2.0])


# ----------------------------------------------------------------------------
# Finite differences, order 2, and second derivatives against autodiff.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name, f", [
    ("max", lambda v: jaxconv.max_pool(v, (3, 2), (2, 1), "SAME",
                                       dilation=(1, 2))),
    ("min", lambda v: jaxconv.min_pool(v, (2, 2), 1, 1, ceil_mode=True)),
    ("avg", lambda v: jaxconv.avg_pool(v, (3, 3), 2, "SAME", False)),
    ("lp", lambda v: jaxconv.lp_pool(v, 2.5, (2, 3), (1, 2), "SAME")),
    ("lp_half", lambda v: jaxconv.lp_pool(v, 0.75, (2, 2), 1)),
    ("lp_inf", lambda v: jaxconv.lp_pool(v, INF, (3, 2), (2, 1), "SAME")),
])
def test_check_grads_order_two(name, f):
  x = jnp.asarray(oracles.unique_values((2, 5, 5, 2), shift=-49.7))
  if name.startswith("lp") and name != "lp_inf":
    x = jnp.asarray(oracles.unique_values((2, 5, 5, 2), shift=1.0))
  check_grads(jax.jit(f), (x,), order=2, modes=("rev",), eps=1e-3)


@pytest.mark.parametrize("p", [1.5, 3])
def test_lp_hessian_vector_product_matches_autodiff(p):
  x = jnp.asarray(oracles.unique_values((2, 5, 4, 2), shift=-39.5))
  v = jnp.asarray(oracles.unique_values((2, 5, 4, 2), seed=5, shift=-40.0))
  kwargs = dict(window=(2, 3), strides=(1, 2), padding="SAME", p=p)

  def hvp(pool):
    loss = lambda u: jnp.sum(pool(u) ** 2)
    return jax.jit(lambda u: jax.grad(lambda w: jnp.vdot(jax.grad(loss)(w),
                                                         v))(u))(x)

  ours = hvp(lambda u: oracles.jaxconv_pool(u, "lp", **kwargs))
  theirs = hvp(lambda u: oracles.lax_pool(u, "lp", **kwargs))
  oracles.assert_close(ours, theirs)


def _hvp_of_squares(pool, x, v):
  """The Hessian of sum(pool(x)^2) applied to v."""
  loss = lambda u: jnp.sum(pool(u) ** 2)
  return jax.grad(lambda w: jnp.vdot(jax.grad(loss)(w), v))(x)


def test_second_derivative_of_max_is_routing_of_the_cotangent():
  x = jnp.asarray(oracles.unique_values((1, 6, 5, 2)))
  v = jnp.asarray(oracles.unique_values((1, 6, 5, 2), seed=2))
  for pool, ref in [
      (lambda u: jaxconv.max_pool(u, (3, 3), 2, "SAME"),
       lambda u: oracles.lax_pool(u, "max", (3, 3), (2, 2), "SAME")),
      (lambda u: jaxconv.avg_pool(u, (2, 3), 2, "SAME"),
       lambda u: oracles.lax_pool(u, "avg", (2, 3), (2, 2), "SAME")),
  ]:
    oracles.assert_close(jax.jit(_hvp_of_squares, static_argnums=0)(pool, x, v),
                         jax.jit(_hvp_of_squares, static_argnums=0)(ref, x, v))


# ----------------------------------------------------------------------------
# Public gradient functions.
# ----------------------------------------------------------------------------


def test_public_gradient_functions_match_the_rules_and_jit():
  x = jnp.asarray(oracles.unique_values((2, 7, 6, 3), shift=-125.6))
  geometry = dict(window_shape=(3, 2), strides=(2, 1),
                  padding=((1, 1), (0, 1)))
  for pool, grad, extra in [
      (jaxconv.min_pool, jaxconv.min_pool_grad, {"dilation": (1, 2),
                                                 "ceil_mode": True}),
      (jaxconv.avg_pool, jaxconv.avg_pool_grad, {"count_include_pad": False,
                                                  "dilation": (2, 1)}),
  ]:
    y, vjp = jax.vjp(functools.partial(pool, **geometry, **extra), x)
    cotangent = jnp.asarray(oracles.unique_values(y.shape, seed=1))
    expected = vjp(cotangent)[0]
    np.testing.assert_array_equal(grad(x, cotangent, **geometry, **extra),
                                  expected)
    jitted = jax.jit(functools.partial(grad, **geometry, **extra))
    np.testing.assert_array_equal(jitted(x, cotangent), expected)
  for p in (2.5,):
    y, vjp = jax.vjp(functools.partial(jaxconv.lp_pool, p=p, **geometry), x)
    cotangent = jnp.asarray(oracles.unique_values(y.shape, seed=1))
    np.testing.assert_allclose(
        jaxconv.lp_pool_grad(x, cotangent, p, **geometry), vjp(cotangent)[0],
        rtol=1e-13)
  # avg_pool_grad reads only the shape and dtype of x.
  spec = jax.ShapeDtypeStruct(x.shape, x.dtype)
  y = jaxconv.avg_pool(x, (2, 2))
  np.testing.assert_array_equal(jaxconv.avg_pool_grad(spec, y, (2, 2)),
                                jaxconv.avg_pool_grad(x, y, (2, 2)))


def test_gradient_functions_are_differentiable_in_the_cotangent():
  x = jnp.asarray(oracles.unique_values((1, 5, 5, 2)))
  y = jaxconv.max_pool(x, (3, 3), 2)
  v = jnp.asarray(oracles.unique_values(x.shape, seed=4))
  # <max_pool_grad(x, g), v> is linear in g with gradient max_pool-gather of v.
  grad_g = jax.grad(lambda g: jnp.vdot(jaxconv.max_pool_grad(x, g, (3, 3), 2),
                                       v))(jnp.ones_like(y))
  _, indices = jaxconv.max_pool_with_indices(x, (3, 3), 2)
  expected = jnp.take_along_axis(v.reshape(1, 25, 2),
                                 indices.reshape(1, 4, 2), 1).reshape(y.shape)
  np.testing.assert_array_equal(grad_g, expected)
  # And the gradient functions agree with the rules' VJPs.
  cotangent = jnp.asarray(oracles.unique_values(y.shape, seed=3))
  for pool, grad in [
      (lambda u: jaxconv.max_pool(u, (3, 3), 2),
       lambda u, g: jaxconv.max_pool_grad(u, g, (3, 3), 2)),
      (lambda u: jaxconv.lp_pool(u - 24.5, INF, (3, 3), 2),
       lambda u, g: jaxconv.lp_pool_grad(u - 24.5, g, INF, (3, 3), 2)),
  ]:
    _, vjp = jax.vjp(pool, x)
    np.testing.assert_array_equal(grad(x, cotangent), vjp(cotangent)[0])


# ----------------------------------------------------------------------------
# Complex average pooling.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
@pytest.mark.parametrize("case", [CASES[10], CASES[12], AVG_DILATED,
                                  CASES[-1]], ids=_case_id)
def test_complex_average_matches_lax(case, dtype):
  """Against jax.vjp of lax.reduce_window in complex: the transpose of the
  linear map, with no conjugation of the cotangent."""
  real, cotangent_real = oracles.case_inputs(case)
  imag, cotangent_imag = oracles.case_inputs(case, seed=3)
  x = (real + 1j * imag).astype(dtype)
  cotangent = (cotangent_real - 2j * cotangent_imag).astype(dtype)
  kwargs = oracles._kwargs(case)
  y, dx = oracles.jaxconv_vjp(x, cotangent, **kwargs)
  assert y.dtype == x.dtype and dx.dtype == x.dtype
  y_ref, dx_ref = jax.jit(lambda v, g: oracles.lax_vjp(v, g, **kwargs))(
      x.astype(jnp.complex128), cotangent.astype(jnp.complex128))
  oracles.assert_close(y, y_ref, dtype, f"forward {case}")
  oracles.assert_close(dx, dx_ref, dtype, f"gradient {case}")
  options = {k: v for k, v in kwargs.items()
             if k in ("dilation", "ceil_mode", "count_include_pad",
                      "divisor_override", "strides", "padding")}
  options["dilation"] = options.get("dilation") or 1
  np.testing.assert_array_equal(
      jaxconv.avg_pool_grad(x, cotangent, case["window"], **options), dx)


# ----------------------------------------------------------------------------
# dtypes, jit, vmap, batch dims, empty batch.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64, jnp.bfloat16,
                                   jnp.float16])
def test_output_and_gradient_dtypes(dtype):
  x = jnp.asarray(oracles.unique_values((2, 4, 4, 2)) / 8, dtype)
  for f in (lambda v: jaxconv.max_pool(v, (2, 2)),
            lambda v: jaxconv.avg_pool(v, (2, 2), padding=1),
            lambda v: jaxconv.lp_pool(v, 2, (2, 2)),
            lambda v: jaxconv.lp_pool(v, INF, (2, 2))):
    y, dx = jax.jit(functools.partial(_grad, f))(x)
    assert y.dtype == dtype and dx.dtype == dtype


def test_jit_eager_and_vmap_agree():
  x = jnp.asarray(oracles.unique_values((3, 6, 5, 2), shift=-90.5))
  for f in (lambda v: jaxconv.lp_pool(v, 3, (2, 3), (2, 1), "SAME"),):
    y, dx = _grad(f, x)
    y_jit, dx_jit = jax.jit(functools.partial(_grad, f))(x)
    np.testing.assert_allclose(y_jit, y, rtol=1e-14)
    np.testing.assert_allclose(dx_jit, dx, rtol=1e-14)
    # vmap over the batch axis of a single-example (no batch dims) call.
    y_map, dx_map = jax.vmap(functools.partial(_grad, f))(x)
    np.testing.assert_allclose(y_map, y, rtol=1e-14)
    np.testing.assert_allclose(dx_map, dx, rtol=1e-14)


def _fused_computations(hlo_text):
  """The bodies of the computations in an optimised HLO module's text."""
  blocks, current = [], None
  for line in hlo_text.splitlines():
    if line.startswith("%") and line.rstrip().endswith("{"):
      current = []
    elif line.startswith("}") and current is not None:
      blocks.append("\n".join(current))
      current = None
    elif current is not None:
      current.append(line)
  return blocks


@pytest.mark.parametrize("kind", ["max", "min"])
@pytest.mark.parametrize("window, strides", [((3, 3), (2, 2)),
                                             ((2, 2), (2, 2)),
                                             ((3, 3), (1, 1))])
def test_backward_reads_stored_offsets(kind, window, strides):
  """One jitted forward+backward, as a training step compiles it: no fused
  computation of the backward reruns the forward's winner scan. (XLA fuses
  cheap producers into consumers and repeats them per read; left alone it
  fuses the scan into the backward, once per tap.) Structural, not timed."""
  pool = jaxconv.max_pool if kind == "max" else jaxconv.min_pool
  x = jnp.zeros((4, 12, 12, 8), jnp.float32)

  def step(x, ct):
    y, vjp = jax.vjp(lambda v: pool(v, window, strides, "SAME"), x)
    return y, vjp(ct)[0]

  y = jax.eval_shape(lambda v: pool(v, window, strides, "SAME"), x)
  text = jax.jit(step).lower(x, jnp.zeros(y.shape, y.dtype)).compile(
      ).as_text()
  bodies = _fused_computations(text)
  backward = [body for body in bodies if "route_to_winners" in body]
  assert backward, "no fused computation of the backward found"
  for body in backward:
    # (Constants shared with the scan may carry its name; its comparisons
    # may not.)
    rerun = [line for line in body.splitlines()
             if " compare(" in line and "extremum_and_offsets" in line]
    assert not rerun, "the backward reruns the winner scan:\n" + body


def test_leading_batch_dims_are_independent():
  x = jnp.asarray(oracles.unique_values((2, 3, 5, 4, 2)))
  y = jaxconv.max_pool(x, (2, 2), padding=((1, 0), (0, 1)))
  y_flat = jaxconv.max_pool(x.reshape(6, 5, 4, 2), (2, 2),
                            padding=((1, 0), (0, 1)))
  np.testing.assert_array_equal(y, y_flat.reshape(y.shape))
  single = jaxconv.max_pool(x[1, 2], (2, 2), padding=((1, 0), (0, 1)))
  np.testing.assert_array_equal(y[1, 2], single)


def test_empty_batch_and_features():
  for shape in [(0, 5, 5, 3), (2, 5, 5, 0)]:
    x = jnp.zeros(shape)
    for f in (lambda v: jaxconv.max_pool(v, (2, 2), 2, padding="SAME"),
              lambda v: jaxconv.avg_pool(v, (2, 2), 2, padding="SAME"),
              lambda v: jaxconv.lp_pool(v, 2, (2, 2), 2, padding="SAME")):
      y, dx = _grad(f, x)
      assert y.shape == shape[:1] + (3, 3) + shape[-1:]
      assert dx.shape == shape


def test_max_gradient_conserves_the_cotangent_sum():
  x = jnp.asarray(oracles.unique_values((2, 9, 8, 3)))
  f = lambda v: jaxconv.max_pool(v, (3, 3), (2, 1), "SAME", dilation=(2, 1))
  y, vjp = jax.vjp(f, x)
  cotangent = jnp.asarray(oracles.unique_values(y.shape, seed=7))
  np.testing.assert_allclose(vjp(cotangent)[0].sum(), cotangent.sum())


# ----------------------------------------------------------------------------
# Indices and unpooling (own checks; PyTorch in test_pooling_torch.py).
# ----------------------------------------------------------------------------


def test_indices_point_at_the_winners():
  x = jnp.asarray(oracles.unique_values((2, 7, 6, 5, 2)))
  kwargs = dict(strides=(2, 1, 2), padding=((1, 1), (0, 1), (1, 0)),
                dilation=(1, 2, 1), ceil_mode=True)
  y, indices = jaxconv.max_pool_with_indices(x, (3, 2, 2), **kwargs)
  assert indices.dtype == jnp.int32
  np.testing.assert_array_equal(y, jaxconv.max_pool(x, (3, 2, 2), **kwargs))
  flat = x.reshape(2, 7 * 6 * 5, 2)
  gathered = jnp.take_along_axis(flat, indices.reshape(2, -1, 2), axis=1)
  np.testing.assert_array_equal(gathered.reshape(y.shape), y)
  # Unpooling puts every winner back and zeros elsewhere.
  unpooled = jaxconv.max_unpool(y, indices, (7, 6, 5))
  winners = np.zeros((2, 210, 2), bool)
  np.put_along_axis(winners, np.asarray(indices.reshape(2, -1, 2)), True,
                    axis=1)
  np.testing.assert_array_equal(unpooled, jnp.where(winners.reshape(x.shape),
                                                    x, 0.0))


def test_unpool_gradient_is_the_gather_and_jits():
  x = jnp.asarray(oracles.unique_values((3, 6, 6, 2)))
  y, indices = jax.jit(lambda v: jaxconv.max_pool_with_indices(v, (2, 2), 2))(x)
  unpool = jax.jit(lambda v, i: jaxconv.max_unpool(v, i, (6, 6)))
  out, vjp = jax.vjp(lambda v: unpool(v, indices), y)
  cotangent = jnp.asarray(oracles.unique_values(out.shape, seed=9))
  dy = vjp(cotangent)[0]
  np.testing.assert_array_equal(
      dy, jaxconv.max_unpool_grad(cotangent, indices, (6, 6)))
  expected = jnp.take_along_axis(cotangent.reshape(3, 36, 2),
                                 indices.reshape(3, 9, 2), 1)
  np.testing.assert_array_equal(dy, expected.reshape(y.shape))
  # Unpooling the pooled values and pooling again is the identity (no
  # overlap); gradients flow through both.
  np.testing.assert_array_equal(jaxconv.max_pool(out, (2, 2), 2), y)
  check_grads(lambda v: unpool(v, indices), (y,), order=2, modes=("rev",))


def test_compare_cli_pooling_cases_agree():
  compare = pytest.importorskip("jaxconv.compare")
  cases = [case for case in compare.CASES
           if case.name.startswith(("max_pool 4x17", "lp_pool 4x28"))]
  assert len(cases) == 2
  for case in cases:
    result = compare.compare_case(case, "float32", timing_repeats=0)
    assert result["ok"], result
