"""Complex convolution: JAX's convention (eq. 28), checked against lax.

The cotangent of a complex convolution is the transpose of the linear map,
with no conjugation; lax's transpose rules are the oracle (in complex128).
Each algorithm is forced once on complex operands, so that a conjugation or
a real-only step anywhere in the evaluation fails here.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxconv
from tests.helpers import assert_close
from tests.rebuilt_rules import conv_with

COMPLEX = [jnp.complex128, jnp.complex64]


def _complex(rng, shape, dtype=jnp.complex128):
  values = rng.normal(size=shape) + 1j * rng.normal(size=shape)
  return jnp.asarray(values, dtype)


GENERAL_CASES = [
    # (name, lhs shape, rhs shape, keyword arguments)
    ("1-D stride dilation", (2, 3, 9), (4, 3, 3),
     dict(window_strides=(2,), padding=((1, 2),), rhs_dilation=(2,))),
    ("2-D NHWC groups", (2, 7, 6, 4), (3, 2, 2, 6),
     dict(window_strides=(1, 2), padding="SAME", feature_group_count=2,
          dimension_numbers=("NHWC", "HWIO", "NHWC"))),
    ("input dilation", (2, 3, 5, 4), (2, 3, 3, 3),
     dict(window_strides=(1, 1), padding=((2, 1), (0, 1)),
          lhs_dilation=(2, 1))),
    ("batch groups", (4, 2, 6, 6), (6, 2, 3, 3),
     dict(window_strides=(2, 1), padding="VALID", batch_group_count=2)),
    ("cropping", (1, 2, 8), (3, 2, 2),
     dict(window_strides=(3,), padding=((-1, 2),))),
]


def _forward_and_gradients(f):
  """``(y, *vjp(delta))`` of ``f``, jitted: one compilation per function
  instead of one per operation."""
  @jax.jit
  def step(args, delta):
    y, pullback = jax.vjp(f, *args)
    return (y,) + pullback(delta)
  return step


def _output(f, *args):
  return jax.eval_shape(f, *args)


def _lax_general(kw):
  return lambda lhs, rhs: lax.conv_general_dilated(lhs, rhs, precision="highest",
                                                   **kw)


# Every case in complex128; complex64 (against complex128) on two of them.
GENERAL_PARAMS = [pytest.param(*case, jnp.complex128,
                               id=f"{case[0]}-complex128")
                  for case in GENERAL_CASES] + [
    pytest.param(*case, jnp.complex64, id=f"{case[0]}-complex64")
    for case in GENERAL_CASES if case[0] in ("2-D NHWC groups",
                                             "input dilation")]


def compare_general_with_lax(lhs_shape, rhs_shape, kw, dtype, conv=None):
  """``conv`` (a function of ``(lhs, rhs)``; ``None`` means
  ``jaxconv.conv_general_dilated`` with ``kw``) in ``dtype`` against lax in
  complex128: forward and both VJPs. Raises AssertionError (``"...: scaled
  error ..."``) on a numerical mismatch. Returns the complex128 operands, the
  cotangent and lax's ``(y, d lhs, d rhs)``."""
  rng = np.random.default_rng(0)
  lhs, rhs = _complex(rng, lhs_shape), _complex(rng, rhs_shape)
  ours = conv or (lambda lhs, rhs: jaxconv.conv_general_dilated(lhs, rhs,
                                                                **kw))
  delta = _complex(rng, _output(ours, lhs, rhs).shape)
  results = _forward_and_gradients(ours)(
      (lhs.astype(dtype), rhs.astype(dtype)), delta.astype(dtype))
  expected = _forward_and_gradients(_lax_general(kw))((lhs, rhs), delta)
  for what, g, g_ref in zip(("forward", "d lhs", "d rhs"), results, expected):
    assert g.dtype == dtype
    assert_close(g, g_ref, dtype, what)
  return (lhs, rhs), delta, expected


@pytest.mark.parametrize("name,lhs_shape,rhs_shape,kw,dtype", GENERAL_PARAMS)
def test_general_matches_lax(name, lhs_shape, rhs_shape, kw, dtype):
  del name
  (lhs, rhs), delta, expected = compare_general_with_lax(lhs_shape,
                                                         rhs_shape, kw, dtype)
  # The public gradient pieces are the same functions.
  dx = jax.jit(lambda: jaxconv.conv_input_grad(delta, rhs, lhs.shape, **kw))()
  dw = jax.jit(lambda: jaxconv.conv_kernel_grad(lhs, delta, rhs.shape,
                                                **kw))()
  assert_close(dx, expected[1], jnp.complex128, "conv_input_grad")
  assert_close(dw, expected[2], jnp.complex128, "conv_kernel_grad")


def test_no_conjugation_in_either_gradient():
  """Eq. (28) by hand, on the smallest case: y = x w (one tap, one feature),
  so the cotangents are delta * w and delta * x, not their conjugates."""
  x = jnp.asarray([[[1.0 + 2.0j]]])
  w = jnp.asarray([[[3.0 - 1.0j]]])
  delta = jnp.asarray([[[0.5 + 1.5j]]])
  f = lambda x, w: jaxconv.conv_general_dilated(x, w, (1,), "VALID")
  y, pullback = jax.vjp(f, x, w)
  dx, dw = pullback(delta)
  np.testing.assert_allclose(y, x * w)
  np.testing.assert_allclose(dx, delta * w)
  np.testing.assert_allclose(dw, delta * x)


def test_gradient_of_a_real_loss_matches_lax():
  """jax.grad of a real loss of complex parameters (what an optimiser
  sees): JAX's convention end to end."""
  rng = np.random.default_rng(1)
  x, w = _complex(rng, (2, 6, 5, 3)), _complex(rng, (3, 3, 3, 4))
  kw = dict(window_strides=(2, 1), padding="SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
  loss = lambda f: lambda x, w: jnp.sum(jnp.abs(jnp.sin(f(x, w))) ** 2)
  ours = jax.jit(jax.grad(loss(
      lambda x, w: jaxconv.conv_general_dilated(x, w, **kw)),
      argnums=(0, 1)))(x, w)
  theirs = jax.jit(jax.grad(loss(_lax_general(kw)), argnums=(0, 1)))(x, w)
  for g, g_ref in zip(ours, theirs):
    assert_close(g, g_ref, jnp.complex128)


@pytest.mark.parametrize("transpose_kernel", [False, True])
@pytest.mark.parametrize("dtype", COMPLEX)
def test_conv_transpose_matches_lax(dtype, transpose_kernel):
  rng = np.random.default_rng(2)
  x, w = _complex(rng, (2, 5, 4, 3)), _complex(rng, (3, 2, 3, 4)[:2] + (
      (4, 3) if transpose_kernel else (3, 4)))
  kw = dict(strides=(2, 1), padding="SAME", rhs_dilation=(1, 2),
            transpose_kernel=transpose_kernel)
  ours = lambda x, w: jaxconv.conv_transpose(x, w, **kw)
  theirs = lambda x, w: lax.conv_transpose(x, w, precision="highest", **kw)
  delta = _complex(rng, _output(theirs, x, w).shape)
  results = _forward_and_gradients(ours)((x.astype(dtype), w.astype(dtype)),
                                         delta.astype(dtype))
  expected = _forward_and_gradients(theirs)((x, w), delta)
  for what, g, g_ref in zip(("forward", "dx", "dw"), results, expected):
    assert_close(g, g_ref, dtype, what)


@pytest.mark.parametrize("dtype", COMPLEX)
def test_layer_with_bias_matches_lax(dtype):
  rng = np.random.default_rng(3)
  x, w, b = (_complex(rng, (2, 3, 8, 7, 4)), _complex(rng, (3, 2, 2, 6)),
             _complex(rng, (6,)))
  ours = lambda x, w, b: jaxconv.conv(x, w, b, stride=(2, 1), padding=1,
                                      groups=2)

  def theirs(x, w, b):
    y = lax.conv_general_dilated(
        x.reshape(6, 8, 7, 4), w, (2, 1), ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=2,
        precision="highest")
    return (y + b).reshape((2, 3) + y.shape[1:])

  args = (x.astype(dtype), w.astype(dtype), b.astype(dtype))
  delta = _complex(rng, _output(theirs, x, w, b).shape)
  results = _forward_and_gradients(ours)(args, delta.astype(dtype))
  expected = _forward_and_gradients(theirs)((x, w, b), delta)
  for what, g, g_ref in zip(("forward", "dx", "dw", "db"), results, expected):
    assert_close(g, g_ref, dtype, what)
  # eq. (11): the bias gradient is the sum of the deltas, unconjugated.
  assert_close(jaxconv.conv_bias_grad(delta), delta.sum((0, 1, 2, 3)),
                       jnp.complex128)


@pytest.mark.parametrize("name", ["batch groups"])
def test_gradient_of_gradient_matches_lax(name):
  """Eq. (27) with complex operands: the backward of the backward."""
  _, lhs_shape, rhs_shape, kw = next(c for c in GENERAL_CASES if c[0] == name)
  rng = np.random.default_rng(4)
  lhs, rhs = _complex(rng, lhs_shape), _complex(rng, rhs_shape)

  def second(conv):
    def backward(lhs, rhs, delta):
      return jax.vjp(conv, lhs, rhs)[1](delta)
    return backward

  delta = _complex(rng, jax.eval_shape(_lax_general(kw), lhs, rhs).shape)
  ours = second(lambda a, b: jaxconv.conv_general_dilated(a, b, **kw))
  theirs = second(_lax_general(kw))
  cotangents = tuple(_complex(rng, g.shape)
                     for g in _output(theirs, lhs, rhs, delta))
  results = _forward_and_gradients(ours)((lhs, rhs, delta), cotangents)
  expected = _forward_and_gradients(theirs)((lhs, rhs, delta), cotangents)
  for g, g_ref in zip(results[0], expected[0]):
    assert_close(g, g_ref, jnp.complex128, "first order")
  for g, g_ref in zip(results[1:], expected[1:]):
    assert_close(g, g_ref, jnp.complex128, "second order")


@pytest.mark.parametrize("algorithm", ["auto", "shifted"])
def test_preferred_complex128_for_complex64(algorithm):
  """lax's rule: complex operands may accumulate in a wider complex type;
  the gradients come back in the operands' type."""
  rng = np.random.default_rng(7)
  lhs, rhs = _complex(rng, (2, 3, 9)), _complex(rng, (4, 3, 3))
  kw = dict(window_strides=(2,), padding="SAME",
            preferred_element_type=jnp.complex128)
  ours = lambda a, b: jaxconv.conv_general_dilated(a, b, algorithm=algorithm,
                                                   **kw)
  theirs = lambda a, b: lax.conv_general_dilated(a, b, precision="highest",
                                                 **kw)
  args = (lhs.astype(jnp.complex64), rhs.astype(jnp.complex64))
  delta = _complex(rng, _output(theirs, *args).shape)
  results = _forward_and_gradients(ours)(args, delta)
  expected = _forward_and_gradients(theirs)(args, delta)
  assert [r.dtype for r in results] == [e.dtype for e in expected] == [
      jnp.complex128, jnp.complex64, jnp.complex64]
  for what, g, g_ref in zip(("forward", "d lhs", "d rhs"), results, expected):
    assert_close(g, g_ref, jnp.complex64, what)


def test_jit_and_vmap():
  rng = np.random.default_rng(5)
  lhs, rhs = _complex(rng, (3, 2, 4, 9), jnp.complex64), _complex(
      rng, (5, 4, 3), jnp.complex64)
  f = lambda lhs: jaxconv.conv_general_dilated(lhs, rhs, (2,), "SAME")
  batched = jax.jit(jax.vmap(f))(lhs)
  for i in range(3):
    assert_close(batched[i], _lax_general(
        dict(window_strides=(2,), padding="SAME"))(lhs[i], rhs),
        jnp.complex64)


# Problems on which a forced algorithm is really used (checked with
# chosen_algorithms) in the forward pass or one of the two gradients.
PROBLEMS = {
    "layer": ((10, 6, 5, 3), (3, 3, 3, 4),
              dict(window_strides=(1, 1), padding="SAME",
                   dimension_numbers=("NHWC", "HWIO", "NHWC"))),
    "input dilation": ((2, 3, 4, 4), (4, 3, 2, 2),
                       dict(window_strides=(1, 1), padding=((1, 1), (0, 1)),
                            lhs_dilation=(2, 2))),
    "groups": ((2, 4, 4, 4), (3, 3, 2, 4),
               dict(window_strides=(2, 1), padding="VALID",
                    feature_group_count=2,
                    dimension_numbers=("NHWC", "HWIO", "NHWC"))),
}
PROBLEM_OF = {"phased": "input dilation", "split_groups": "groups"}


@functools.cache
def _lax_problem(name):
  lhs_shape, rhs_shape, kw = PROBLEMS[name]
  rng = np.random.default_rng(6)
  lhs, rhs = _complex(rng, lhs_shape), _complex(rng, rhs_shape)
  delta = _complex(rng, _output(_lax_general(kw), lhs, rhs).shape)
  return (lhs, rhs), delta, _forward_and_gradients(_lax_general(kw))(
      (lhs, rhs), delta)


@pytest.mark.parametrize("algorithm", [a for a in jaxconv.ALGORITHMS
                                       if a != "auto"])
def test_every_algorithm_on_complex_operands(algorithm):
  name = PROBLEM_OF.get(algorithm, "layer")
  kw = PROBLEMS[name][2]
  args, delta, expected = _lax_problem(name)
  ours = lambda a, b: jaxconv.conv_general_dilated(a, b, **kw)
  with jaxconv.use_algorithm(algorithm):
    step = _forward_and_gradients(ours)
    used = {choice.algorithm for choice in jaxconv.chosen_algorithms(
        step.__wrapped__, args, delta)}
    results = step(args, delta)
  assert algorithm in used, f"{algorithm} was not used on {name}: {used}"
  for what, g, g_ref in zip(("forward", "d lhs", "d rhs"), results, expected):
    assert g.dtype == jnp.complex128
    assert_close(g, g_ref, jnp.complex128, f"{algorithm} {what}")


# Teeth: conjugating an operand in either gradient (the Hermitian adjoint in
# place of the transpose) fails the comparison with lax. The wrong rule is a
# value: jaxconv's convolution differentiated by its public gradient pieces,
# one of them fed a conjugated operand (tests/rebuilt_rules.py).
def _conjugated_input_grad(cotangent, rhs, lhs_shape, **kw):
  return jaxconv.conv_input_grad(cotangent, jnp.conj(rhs), lhs_shape, **kw)


def _conjugated_kernel_grad(lhs, cotangent, rhs_shape, **kw):
  return jaxconv.conv_kernel_grad(jnp.conj(lhs), cotangent, rhs_shape, **kw)


CONJUGATED = {"input gradient": dict(input_grad=_conjugated_input_grad),
              "kernel gradient": dict(kernel_grad=_conjugated_kernel_grad)}


@pytest.mark.parametrize("wrong", CONJUGATED, ids=list(CONJUGATED))
def test_a_conjugated_gradient_is_caught(wrong):
  """The rule rebuilt from the public pieces passes the comparison of
  test_general_matches_lax; with one operand conjugated it fails."""
  _, lhs_shape, rhs_shape, kw, dtype = GENERAL_PARAMS[0].values
  compare_general_with_lax(lhs_shape, rhs_shape, kw, dtype,
                           conv=conv_with(**kw))
  with pytest.raises(AssertionError, match="d (lhs|rhs): scaled error"):
    compare_general_with_lax(lhs_shape, rhs_shape, kw, dtype,
                             conv=conv_with(**CONJUGATED[wrong], **kw))
