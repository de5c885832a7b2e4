"""The pooling tests have teeth: each test here builds a plausible wrong
gradient rule and shows that the checks of test_pooling.py and
test_adaptive_pooling.py (``pooling_oracles.check_case``,
``check_adaptive_case``, the tie tables) fail on it, while the same rule
built with the right pieces passes them.

A wrong rule is a value, never a patch of the library: a ``jax.custom_vjp``
function whose forward pass is jaxconv's public pooling function and whose
backward pass calls the public gradient pieces (``max_pool_grad``,
``avg_pool_grad``, ``lp_pool_grad``, ``adaptive_*_pool_grad``,
``max_pool_with_indices``) with one deliberate mistake, or re-does the wrong
piece (a scatter, a divisor) in plain ``jnp``.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv
from tests import pooling_oracles as oracles

MAX_CASE = dict(kind="max", shape=(2, 7, 5, 2), window=(3, 2),
                strides=(2, 1), padding=((1, 1), (0, 1)))
AVG_CASE = dict(kind="avg", shape=(2, 8, 5, 2), window=(3, 2), strides=(2, 2),
                padding=1, ceil_mode=True, count_include_pad=False)
LP_CASE = dict(kind="lp", shape=(2, 7, 5, 2), window=(3, 2), strides=(2, 1),
               padding="SAME", p=3)
AVG_DILATED_CASE = dict(kind="avg", shape=(2, 9, 7, 2), window=(2, 3),
                        strides=(3, 1), padding=((1, 0), (2, 1)),
                        dilation=(3, 2), ceil_mode=True,
                        count_include_pad=True)
# Overlapping windows of unequal lengths in both axes: 7 -> 4 gives lengths
# 2, 3, 3, 2 and 5 -> 3 gives 2, 3, 2.
ADAPTIVE_CASE = ((2, 7, 5, 2), (4, 3))


def _fails(check, *args, **kwargs):
  # A numerical mismatch, not some other assertion (shapes, dtypes).
  with pytest.raises(AssertionError, match="scaled error|Mismatched elements"):
    check(*args, **kwargs)


# ----------------------------------------------------------------------------
# Rules rebuilt from the public pieces.
# ----------------------------------------------------------------------------


def _with_gradient(forward, gradient):
  """``forward(x, *args, **kwargs)`` as a rule whose backward pass is
  ``gradient(x, cotangent, *args, **kwargs)``."""

  def pool(x, *args, **kwargs):
    @jax.custom_vjp
    def rule(x):
      return forward(x, *args, **kwargs)

    def rule_fwd(x):
      return rule(x), x

    def rule_bwd(x, cotangent):
      return (gradient(x, cotangent, *args, **kwargs),)

    rule.defvjp(rule_fwd, rule_bwd)
    return rule(x)

  return pool


def _public_grad(x, cotangent, kind, window, strides=None, padding="VALID",
                 dilation=None, ceil_mode=False, count_include_pad=True,
                 divisor_override=None, p=None):
  """The public gradient of the pooling ``kind`` (``jaxconv_pool``'s
  arguments)."""
  common = dict(strides=strides, padding=padding, dilation=dilation or 1,
                ceil_mode=ceil_mode)
  if kind == "max":
    return jaxconv.max_pool_grad(x, cotangent, window, **common)
  if kind == "avg":
    return jaxconv.avg_pool_grad(x, cotangent, window,
                                 count_include_pad=count_include_pad,
                                 divisor_override=divisor_override, **common)
  assert kind == "lp"
  return jaxconv.lp_pool_grad(x, cotangent, p, window, **common)


def _pool(gradient):
  """A function with ``oracles.jaxconv_pool``'s signature: jaxconv's forward
  pass, differentiated by ``gradient`` (``_public_grad``'s signature)."""
  return _with_gradient(oracles.jaxconv_pool, gradient)


def _window_counts(case, inside, dilated=True):
  """Per window, the number of its taps ``t`` (with ``dilated=False``: of
  the positions of its extent) for which ``inside(t, n, lo, hi)`` holds in
  every spatial dimension; shaped ``(*out_sizes, 1)``. The geometry comes
  from the oracles' own formulas, not from jaxconv."""
  shape, window = case["shape"], case["window"]
  rank = len(window)
  in_sizes = shape[-rank - 1:-1]
  strides = case.get("strides") or (1,) * rank
  dilation = case.get("dilation") or (1,) * rank
  pairs = oracles.resolve_padding(case.get("padding", "VALID"), in_sizes,
                                  window, strides, dilation)
  outs = oracles.output_sizes(in_sizes, window, strides, dilation, pairs,
                              case.get("ceil_mode", False))
  counts = np.ones(())
  for n, (lo, hi), k, s, d, out in zip(in_sizes, pairs, window, strides,
                                       dilation, outs):
    offsets = d * np.arange(k) if dilated else np.arange((k - 1) * d + 1)
    taps = (np.arange(out) * s - lo)[:, None] + offsets[None, :]
    counts = np.multiply.outer(counts, inside(taps, n, lo, hi).sum(axis=1))
  # A window without any counted tap has no real tap either: it sends
  # nothing, whatever it is divided by.
  return np.maximum(counts, 1)[..., None]


def _divided_by(counts_of_case, case):
  """The average's gradient with the divisors ``counts_of_case(case)``:
  ``delta / D`` spread over the real taps of each window
  (``avg_pool_grad`` with divisor 1)."""
  divisors = jnp.asarray(counts_of_case(case))

  def gradient(x, cotangent, **kwargs):
    kwargs = dict(kwargs, count_include_pad=True, divisor_override=1)
    return _public_grad(x, cotangent / divisors, **kwargs)

  return gradient


def _declared_taps(case):
  """PyTorch's count_include_pad divisor: taps inside ``[-lo, n + hi)``."""
  return _window_counts(case, lambda t, n, lo, hi: (t >= -lo) & (t < n + hi))


def _real_taps(case):
  """The count_include_pad=False divisor: taps inside the input."""
  return _window_counts(case, lambda t, n, lo, hi: (t >= 0) & (t < n))


def _scatter_terms(terms, in_sizes, positions):
  """Adds ``terms[b, *i, c]`` at ``positions[dim][i_dim]`` of an input of
  spatial size ``in_sizes``; positions outside the input are dropped."""
  index = np.ix_(*[np.where((p >= 0) & (p < n), p, n)
                   for p, n in zip(positions, in_sizes)])
  shape = terms.shape[:1] + tuple(in_sizes) + terms.shape[-1:]
  return jnp.zeros(shape, terms.dtype).at[(slice(None),) + index].add(
      terms, mode="drop")


# ----------------------------------------------------------------------------
# Max, average and Lp pooling.
# ----------------------------------------------------------------------------


def _tie_table(max_pool=jaxconv.max_pool):
  x = jnp.array([1.0, 3.0, 3.0, 1.0])[:, None]
  _, vjp = jax.vjp(lambda v: max_pool(v, (2,)), x)
  np.testing.assert_array_equal(vjp(jnp.ones((3, 1)))[0][:, 0],
                                [0.0, 2.0, 1.0, 0.0])


def _flip_spatial(v, rank):
  return jnp.flip(v, axis=tuple(range(v.ndim - rank - 1, v.ndim - 1)))


def _max_pool_grad(x, cotangent, window_shape):
  return jaxconv.max_pool_grad(x, cotangent, window_shape)


def _last_winner_grad(x, cotangent, window_shape):
  """The first maximum of the reversed input is the last maximum: ties go
  to the last winner (the scan with ``>=`` instead of ``>``)."""
  rank = len(window_shape)
  return _flip_spatial(jaxconv.max_pool_grad(
      _flip_spatial(x, rank), _flip_spatial(cotangent, rank), window_shape),
      rank)


def _window_start_grad(x, cotangent, **kwargs):
  """Every window's delta to its first (real) tap, whatever the values:
  ``max_pool_grad`` of an input that decreases in row-major order."""
  rank = len(kwargs["window"])
  spatial = x.shape[-rank - 1:-1]
  ramp = -jnp.arange(math.prod(spatial), dtype=x.dtype).reshape(spatial)
  return _public_grad(jnp.broadcast_to(ramp[..., None], x.shape), cotangent,
                      **kwargs)


def _full_window_grad(x, cotangent, **kwargs):
  """The delta spread over every tap and divided by the whole window size,
  padding or not: what a ``jnp.max`` over gathered patches does with a flat
  input, or an average that ignores count_include_pad."""
  kwargs = dict(kwargs, kind="avg", count_include_pad=True,
                divisor_override=math.prod(kwargs["window"]))
  kwargs.pop("p", None)
  return _public_grad(x, cotangent, **kwargs)


def _unnormalised_lp_grad(x, cotangent, **kwargs):
  """``sign(x) |x|^(p-1)`` without dividing by ``y^(p-1)``: the public
  gradient of a cotangent multiplied by ``y^(p-1)``."""
  y = oracles.jaxconv_pool(x, **kwargs)
  return _public_grad(x, cotangent * y ** (kwargs["p"] - 1), **kwargs)


def _strideless_scatter_grad(x, cotangent, kind, window, strides=None,
                             **kwargs):
  """The winners right, but scattered as if the windows were one apart:
  winner ``s i + d k - lo`` lands on ``i + d k - lo``."""
  del kind
  rank = len(window)
  strides = strides or (1,) * rank
  _, indices = jaxconv.max_pool_with_indices(x, window, strides,
                                             kwargs["padding"])
  in_sizes, out_sizes = x.shape[1:-1], cotangent.shape[1:-1]
  positions = jnp.unravel_index(indices, in_sizes)
  flat = jnp.zeros(indices.shape, indices.dtype)
  valid = jnp.ones(indices.shape, bool)
  for dim, (p, n, o, s) in enumerate(zip(positions, in_sizes, out_sizes,
                                         strides)):
    shape = [1] * indices.ndim
    shape[dim + 1] = o
    p = p - (s - 1) * jnp.arange(o).reshape(shape)
    valid &= (p >= 0) & (p < n)
    flat = flat * n + p
  flat = jnp.where(valid, flat, math.prod(in_sizes))
  batch, features = x.shape[0], x.shape[-1]
  dx = jnp.zeros((batch, math.prod(in_sizes), features), x.dtype)
  dx = dx.at[jnp.arange(batch)[:, None, None],
             flat.reshape(batch, -1, features),
             jnp.arange(features)[None, None, :]].add(
                 cotangent.reshape(batch, -1, features), mode="drop")
  return dx.reshape(x.shape)


def _undilated_average_scatter_grad(case):
  """The divisors right, but ``delta / D`` scattered to the window's first
  ``k`` consecutive positions, as if it had no dilation."""
  divisors = jnp.asarray(_real_taps(case))

  def gradient(x, cotangent, window, strides, padding, **kwargs):
    del kwargs
    in_sizes = x.shape[1:-1]
    pairs = oracles.resolve_padding(padding, in_sizes, window, strides,
                                    case["dilation"])
    terms = cotangent / divisors
    dx = jnp.zeros_like(x)
    for offset in itertools.product(*(range(k) for k in window)):
      positions = [np.arange(o) * s - lo + k for o, s, (lo, _), k in zip(
          cotangent.shape[1:-1], strides, pairs, offset)]
      dx = dx + _scatter_terms(terms, in_sizes, positions)
    return dx

  return gradient


def _conjugated_grad(x, cotangent, **kwargs):
  """JAX's convention broken: the cotangent conjugated."""
  return _public_grad(x, jnp.conj(cotangent), **kwargs)


def _complex_average_check(pool=None):
  case = dict(kind="avg", shape=(2, 7, 6, 2), window=(3, 2), strides=(2, 1),
              padding=1, dilation=(2, 1), count_include_pad=False)
  real, cotangent_real = oracles.case_inputs(case)
  imag, cotangent_imag = oracles.case_inputs(case, seed=3)
  x = (real + 1j * imag).astype(jnp.complex128)
  cotangent = (cotangent_real - 2j * cotangent_imag).astype(jnp.complex128)
  kwargs = oracles._kwargs(case)
  _, dx = oracles.jaxconv_vjp(x, cotangent, pool, **kwargs)
  _, dx_ref = oracles.lax_vjp(x, cotangent, **kwargs)
  oracles.assert_close(dx, dx_ref, "complex128", "complex gradient")


def test_right_rules_pass_the_same_checks():
  """Built from the right pieces, the rules of the tests below (public
  gradients, divisors counted per window) pass every check that the wrong
  ones fail."""
  oracles.check_case(MAX_CASE, pool=_pool(_public_grad))
  oracles.check_case(LP_CASE, pool=_pool(_public_grad))
  for case, divisors in (
      (AVG_CASE, _real_taps),
      (dict(AVG_CASE, count_include_pad=True), _declared_taps),
      (AVG_DILATED_CASE, _declared_taps),
      (dict(AVG_DILATED_CASE, count_include_pad=False), _real_taps)):
    oracles.check_case(case, pool=_pool(_divided_by(divisors, case)))
  _tie_table(_with_gradient(jaxconv.max_pool, _max_pool_grad))
  _complex_average_check(_pool(_public_grad))


def test_last_winner_on_ties_is_caught():
  _fails(_tie_table, _with_gradient(jaxconv.max_pool, _last_winner_grad))


def test_routing_to_the_window_start_is_caught():
  _fails(oracles.check_case, MAX_CASE, pool=_pool(_window_start_grad))


def test_splitting_among_the_window_is_caught():
  # What a jnp.max over gathered patches would do with a flat input: spread.
  _fails(oracles.check_case, MAX_CASE, pool=_pool(_full_window_grad))


def test_dividing_by_the_full_window_is_caught():
  _fails(oracles.check_case, AVG_CASE, pool=_pool(_full_window_grad))


def test_counting_the_ceil_overhang_is_caught():
  """count_include_pad counting the ceil-mode overhang beyond the declared
  padding too: every tap from ``-lo`` on."""
  case = dict(AVG_CASE, count_include_pad=True)
  with_overhang = lambda case: _window_counts(
      case, lambda t, n, lo, hi: t >= -lo)
  _fails(oracles.check_case, case,
         pool=_pool(_divided_by(with_overhang, case)))


def test_lp_gradient_without_the_norm_is_caught():
  _fails(oracles.check_case, LP_CASE, pool=_pool(_unnormalised_lp_grad))


def test_forgetting_the_stride_in_the_scatter_is_caught():
  _fails(oracles.check_case, MAX_CASE, pool=_pool(_strideless_scatter_grad))


def test_counting_positions_instead_of_taps_is_caught():
  """Every position of the dilated extent counted, holes included."""
  positions = lambda case: _window_counts(
      case, lambda t, n, lo, hi: (t >= -lo) & (t < n + hi), dilated=False)
  _fails(oracles.check_case, AVG_DILATED_CASE,
         pool=_pool(_divided_by(positions, AVG_DILATED_CASE)))


def test_ignoring_the_dilation_in_the_average_scatter_is_caught():
  case = dict(AVG_DILATED_CASE, count_include_pad=False)
  _fails(oracles.check_case, case,
         pool=_pool(_undilated_average_scatter_grad(case)))


def test_conjugating_the_cotangent_is_caught():
  _fails(_complex_average_check, _pool(_conjugated_grad))


# ----------------------------------------------------------------------------
# Adaptive pooling.
# ----------------------------------------------------------------------------


def _adaptive_tie_table(pool=jaxconv.adaptive_max_pool):
  x = jnp.array([1.0, 3.0, 3.0, 1.0])[:, None]
  _, vjp = jax.vjp(lambda v: pool(v, (3,)), x)
  np.testing.assert_array_equal(vjp(jnp.ones((3, 1)))[0][:, 0],
                                [0.0, 2.0, 1.0, 0.0])


def _adaptive_row_major_table(pool=jaxconv.adaptive_max_pool):
  x = jnp.array([[0.0, 5.0], [5.0, 1.0]])[None, :, :, None]
  _, vjp = jax.vjp(lambda v: pool(v, (1, 1)), x)
  np.testing.assert_array_equal(vjp(jnp.ones((1, 1, 1, 1)))[0][0, :, :, 0],
                                [[0.0, 1.0], [0.0, 0.0]])


def _adaptive_max(gradient):
  return _with_gradient(jaxconv.adaptive_max_pool, gradient)


def _adaptive_avg(gradient):
  return _with_gradient(jaxconv.adaptive_avg_pool, gradient)


def _windows(n, m):
  """PyTorch's adaptive windows as (starts, ends), from the oracle."""
  bounds = np.array([oracles.adaptive_window(i, n, m) for i in range(m)])
  return bounds[:, 0], bounds[:, 1]


def _separable_average_grad(matrices):
  """``dx = sum_i delta[i] A_0[i_0, j_0] A_1[i_1, j_1]`` for the per-axis
  matrices ``matrices(n, m)`` of shape ``(m, n)`` (two spatial axes)."""

  def gradient(x, cotangent, output_size):
    (n0, n1), (m0, m1) = x.shape[1:3], output_size
    a0 = jnp.asarray(matrices(n0, m0), x.dtype)
    a1 = jnp.asarray(matrices(n1, m1), x.dtype)
    return jnp.einsum("bijc,ik,jl->bklc", cotangent, a0, a1)

  return gradient


def _window_matrix(starts, ends, lengths):
  """``A[i, j] = 1 / lengths[i]`` for ``starts[i] <= j < ends[i]``."""
  j = np.arange(max(ends))
  inside = (j >= starts[:, None]) & (j < ends[:, None])
  return inside / lengths[:, None]


def _right_windows(n, m):
  starts, ends = _windows(n, m)
  return _window_matrix(starts, ends, ends - starts)


def _divided_by_the_longest(n, m):
  """The right windows, each divided by the longest window's length."""
  starts, ends = _windows(n, m)
  return _window_matrix(starts, ends, np.full(m, (ends - starts).max()))


def _floor_ends(n, m):
  """Windows ending at ``floor((i + 1) n / m)`` instead of the ceiling."""
  starts, _ = _windows(n, m)
  ends = (np.arange(1, m + 1) * n) // m
  return _window_matrix(starts, ends, ends - starts)


def _first_window_only(n, m):
  """Each input sends its gradient to the first window holding it only."""
  right = _right_windows(n, m)
  first = np.argmax(right > 0, axis=0)
  return np.where(np.arange(m)[:, None] == first[None, :], right, 0.0)


def _adaptive_max_grad(x, cotangent, output_size):
  return jaxconv.adaptive_max_pool_grad(x, cotangent, output_size)


def _adaptive_last_winner_grad(x, cotangent, output_size):
  """Ties to the last maximum: the first maximum of the reversed input
  (adaptive windows are symmetric under reversal)."""
  rank = len(output_size)
  return _flip_spatial(jaxconv.adaptive_max_pool_grad(
      _flip_spatial(x, rank), _flip_spatial(cotangent, rank), output_size),
      rank)


def _without_last_window_grad(x, cotangent, output_size):
  """The last window along the first spatial axis sends nothing."""
  return jaxconv.adaptive_max_pool_grad(x, cotangent.at[:, -1].set(0),
                                        output_size)


def _column_major_grad(x, cotangent, output_size):
  """The spatial axes reduced in the other order: ties go to the first
  winner in column-major order."""
  swap = lambda v: jnp.swapaxes(v, 1, 2)
  return swap(jaxconv.adaptive_max_pool_grad(swap(x), swap(cotangent),
                                             tuple(output_size)[::-1]))


def test_right_adaptive_rules_pass_the_same_checks():
  """Built from the right pieces (the public gradient; for the average, the
  matrices of the right windows), the rules of the tests below pass."""
  oracles.check_adaptive_case(
      "avg", *ADAPTIVE_CASE,
      pool=_adaptive_avg(_separable_average_grad(_right_windows)))
  right_max = _adaptive_max(_adaptive_max_grad)
  oracles.check_adaptive_case("max", *ADAPTIVE_CASE, pool=right_max)
  _adaptive_tie_table(right_max)
  _adaptive_row_major_table(right_max)


def test_adaptive_average_dividing_by_the_longest_window_is_caught():
  _fails(oracles.check_adaptive_case, "avg", *ADAPTIVE_CASE,
         pool=_adaptive_avg(_separable_average_grad(_divided_by_the_longest)))


def test_adaptive_windows_ending_at_the_floor_are_caught():
  _fails(oracles.check_adaptive_case, "avg", *ADAPTIVE_CASE,
         pool=_adaptive_avg(_separable_average_grad(_floor_ends)))


def test_adaptive_max_ties_to_the_last_winner_are_caught():
  _fails(_adaptive_tie_table, _adaptive_max(_adaptive_last_winner_grad))


def test_adaptive_max_dropping_a_window_is_caught():
  _fails(oracles.check_adaptive_case, "max", *ADAPTIVE_CASE,
         pool=_adaptive_max(_without_last_window_grad))


def test_adaptive_average_dropping_the_overlaps_is_caught():
  _fails(oracles.check_adaptive_case, "avg", *ADAPTIVE_CASE,
         pool=_adaptive_avg(_separable_average_grad(_first_window_only)))


def test_adaptive_max_column_major_tie_break_is_caught():
  _fails(_adaptive_row_major_table, _adaptive_max(_column_major_grad))
