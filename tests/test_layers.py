"""Tests of jaxconv.layers: dense, activations and losses.

Oracles, as for the convolution (see /work/shared/notes/testing.md):
1. ``jax.vjp`` of the plain jax / jax.nn version, computed in float64 from the
   same values, for the forward and every gradient, per dtype;
2. finite differences to second order (``check_grads``, reverse mode only);
3. hand-computed cases (the seeds' E = 1/2 sum (t - y)^2);
4. teeth: the comparison used in 1 fails when one gradient formula is wrong.
Errors are measured as max |err| / max(1, max |ref|) (tests/helpers.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

import jaxconv
from tests.helpers import assert_close, scaled_error

DTYPES = [jnp.float64, jnp.float32, jnp.bfloat16]


# --- References: the same functions from plain jax operations. --------------


def reference_dense(x, w, b):
  return jnp.matmul(x, w, precision=lax.Precision.HIGHEST) + b


def reference_mse(predictions, targets):
  return 0.5 * jnp.sum((targets - predictions) ** 2) / predictions.shape[0]


def reference_softmax_cross_entropy(logits, labels):
  log_p = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(log_p, labels[..., None], axis=-1))


LABELS = np.array([[0, 4, 2], [1, 1, 3]])  # (2, 3) positions, 5 classes

# name -> (jaxconv function, reference, argument shapes, argument sampler)
CASES = {
    "dense": (jaxconv.dense, reference_dense, [(2, 3, 7), (7, 5), (5,)]),
    "dense_2d": (jaxconv.dense, reference_dense, [(6, 7), (7, 5), (5,)]),
    "relu": (jaxconv.relu, jax.nn.relu, [(4, 9)]),
    "leaky_relu": (lambda x: jaxconv.leaky_relu(x, 0.2),
                   lambda x: jax.nn.leaky_relu(x, 0.2), [(4, 9)]),
    "leaky_relu_negative_slope": (lambda x: jaxconv.leaky_relu(x, -0.5),
                                  lambda x: jax.nn.leaky_relu(x, -0.5),
                                  [(4, 9)]),
    "tanh": (jaxconv.tanh, jnp.tanh, [(4, 9)]),
    "sigmoid": (jaxconv.sigmoid, jax.nn.sigmoid, [(4, 9)]),
    "mse": (jaxconv.mse, reference_mse, [(4, 3, 2), (4, 3, 2)]),
    "softmax_cross_entropy": (
        lambda z: jaxconv.softmax_cross_entropy(z, jnp.asarray(LABELS)),
        lambda z: reference_softmax_cross_entropy(z, jnp.asarray(LABELS)),
        [(2, 3, 5)]),
}


def sample(shapes, seed=0, scale=2.0):
  """Float64 arguments of size ~scale, kept 0.05 away from relu's kink."""
  rng = np.random.default_rng(seed)
  args = []
  for shape in shapes:
    values = rng.normal(scale=scale, size=shape)
    values += np.where(values >= 0, 0.05, -0.05)
    args.append(jnp.asarray(values, jnp.float64))
  return args


def assert_matches_reference(function, reference, args, dtype, seed=1):
  """Forward and every gradient of ``function`` in ``dtype`` against
  ``jax.vjp`` of ``reference`` in float64, at the same (rounded) values."""
  low = [a.astype(dtype) for a in args]
  high = [a.astype(jnp.float64) for a in low]
  out, vjp = jax.vjp(function, *low)
  ref_out, ref_vjp = jax.vjp(reference, *high)
  assert out.dtype == dtype
  cotangent = jnp.asarray(
      np.random.default_rng(seed).normal(size=out.shape) + 1.0, dtype)
  grads = vjp(cotangent)
  ref_grads = ref_vjp(cotangent.astype(jnp.float64))
  assert_close(out, ref_out, dtype, "forward")
  for index, (grad, ref_grad, arg) in enumerate(zip(grads, ref_grads, low)):
    assert grad.dtype == arg.dtype, (index, grad.dtype, arg.dtype)
    assert_close(grad, ref_grad, dtype, f"gradient of argument {index}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_autodiff_of_reference(name, dtype):
  function, reference, shapes = CASES[name]
  assert_matches_reference(function, reference, sample(shapes), dtype)


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_autodiff_under_jit_and_second_order(name):
  # Reverse-over-reverse: the gradient of <grad f, v> differentiates the
  # hand-written rules themselves; compare it with the reference's.
  function, reference, shapes = CASES[name]
  args = sample(shapes)
  directions = sample(shapes, seed=2)

  def second_order(f):
    def directional(*a):
      g = jax.grad(lambda *b: jnp.sum(f(*b) ** 2) / 2,
                   argnums=tuple(range(len(a))))(*a)
      return sum(jnp.vdot(gi, di) for gi, di in zip(g, directions))
    return jax.jit(jax.grad(directional, argnums=tuple(range(len(args)))))

  for got, want in zip(second_order(function)(*args),
                       second_order(reference)(*args)):
    assert scaled_error(got, want) <= 1e-10


@pytest.mark.parametrize("name", sorted(CASES))
def test_finite_differences_second_order(name):
  function, _, shapes = CASES[name]
  check_grads(function, sample(shapes, seed=3, scale=1.0), order=2,
              modes=("rev",))


def test_dense_without_bias():
  x, w = sample([(3, 4), (4, 2)])
  out, vjp = jax.vjp(jaxconv.dense, x, w)
  ref_out, ref_vjp = jax.vjp(lambda x, w: x @ w, x, w)
  assert scaled_error(out, ref_out) <= 1e-10
  cotangent = jnp.ones_like(out)
  for got, want in zip(vjp(cotangent), ref_vjp(cotangent)):
    assert scaled_error(got, want) <= 1e-10


def test_per_example_gradients_under_vmap():
  x, w, b = sample([(5, 4), (4, 3), (3,)])

  def loss(w, b, x, f):
    return jnp.sum(jnp.tanh(f(x, w, b)))

  got = jax.vmap(jax.grad(lambda w, b, x: loss(w, b, x, jaxconv.dense),
                          argnums=(0, 1)), in_axes=(None, None, 0))(w, b, x)
  want = jax.vmap(jax.grad(lambda w, b, x: loss(w, b, x, reference_dense),
                           argnums=(0, 1)), in_axes=(None, None, 0))(w, b, x)
  for g, r in zip(got, want):
    assert scaled_error(g, r) <= 1e-10


# --- Edge cases. -------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_relu_subgradient_at_zero_is_zero_like_jax_nn(dtype):
  x = jnp.asarray([-1.0, -0.0, 0.0, 1e-30, 2.0, np.nan], dtype)
  grad = jax.grad(lambda x: jnp.sum(jaxconv.relu(x)))(x)
  np.testing.assert_array_equal(grad, [0, 0, 0, 1, 1, 0])
  np.testing.assert_array_equal(
      grad, jax.grad(lambda x: jnp.sum(jax.nn.relu(x)))(x))


def test_leaky_relu_derivative_at_zero_is_one_like_jax_nn():
  x = jnp.asarray([-1.0, -0.0, 0.0, 2.0])
  grad = jax.grad(lambda x: jnp.sum(jaxconv.leaky_relu(x, 0.1)))(x)
  np.testing.assert_array_equal(grad, [0.1, 1, 1, 1])
  np.testing.assert_array_equal(
      grad, jax.grad(lambda x: jnp.sum(jax.nn.leaky_relu(x, 0.1)))(x))


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_saturated_sigmoid_and_tanh_have_finite_exact_gradients(dtype):
  x = jnp.asarray([-1e4, -800.0, -80.0, -30.0, 30.0, 80.0, 800.0, 1e4],
                  dtype)
  for function, reference in [(jaxconv.sigmoid, jax.nn.sigmoid),
                              (jaxconv.tanh, jnp.tanh)]:
    grad = jax.grad(lambda x, f=function: jnp.sum(f(x)))(x)
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad) >= 0)
    np.testing.assert_array_equal(function(x), reference(x))
    np.testing.assert_allclose(
        grad, jax.grad(lambda x, f=reference: jnp.sum(f(x)))(x), rtol=1e-6,
        atol=0)
  # Far left, 1 - sigma rounds to 1 but sigma' = sigma(x) is still resolved:
  # e^-80 and e^-30 are normal float32 numbers.
  grad = jax.grad(lambda x: jnp.sum(jaxconv.sigmoid(x)))(x)
  np.testing.assert_allclose(grad[2:4], np.exp([-80.0, -30.0]), rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_softmax_cross_entropy_is_stable_for_large_logits(dtype):
  logits = jnp.asarray([[1e4, 0.0, -1e4], [3e4, 3e4 + 1.0, 3e4 - 2.0]], dtype)
  labels = jnp.asarray([1, 0])
  loss, grad = jax.value_and_grad(jaxconv.softmax_cross_entropy)(logits,
                                                                   labels)
  # Exact values, from the shift-invariant form in float64.
  z = np.asarray(logits, np.float64)
  shifted = z - z.max(-1, keepdims=True)
  log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  expected_loss = -np.mean(log_p[[0, 1], [1, 0]])  # (1e4 + 1.313...) / 2
  expected_grad = (np.exp(log_p) - np.eye(3)[[1, 0]]) / 2
  assert np.isfinite(loss) and np.all(np.isfinite(grad))
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)
  np.testing.assert_allclose(grad, expected_grad, atol=1e-7)


def test_hand_computed_cases():
  # The seeds' E = 1/2 sum_p (t_p - y_p)^2, one example (B = 1).
  y, t = jnp.asarray([[1.0, 2.0]]), jnp.asarray([[0.0, 4.0]])
  loss, (dy, dt) = jax.value_and_grad(jaxconv.mse, argnums=(0, 1))(y, t)
  assert loss == 2.5
  np.testing.assert_array_equal(dy, [[1.0, -2.0]])
  np.testing.assert_array_equal(dt, [[-1.0, 2.0]])
  # Two examples: the mean over the batch halves each gradient.
  loss, dy = jax.value_and_grad(jaxconv.mse)(jnp.concatenate([y, y]),
                                             jnp.concatenate([t, t]))
  assert loss == 2.5
  np.testing.assert_array_equal(dy, [[0.5, -1.0], [0.5, -1.0]])
  # Two equal logits: E = log 2, dE/dz = p - onehot = (-1/2, 1/2).
  loss, dz = jax.value_and_grad(jaxconv.softmax_cross_entropy)(
      jnp.zeros((1, 2)), jnp.asarray([0]))
  np.testing.assert_allclose(loss, np.log(2.0), rtol=1e-15)
  np.testing.assert_array_equal(dz, [[-0.5, 0.5]])
  # Dense, eqs. (52)-(54), with a unit cotangent on one output.
  x, w = jnp.asarray([[1.0, 2.0]]), jnp.asarray([[3.0, 4.0], [5.0, 6.0]])
  _, vjp = jax.vjp(jaxconv.dense, x, w, jnp.zeros(2))
  dx, dw, db = vjp(jnp.asarray([[1.0, 0.0]]))
  np.testing.assert_array_equal(dx, [[3.0, 5.0]])
  np.testing.assert_array_equal(dw, [[1.0, 0.0], [2.0, 0.0]])
  np.testing.assert_array_equal(db, [1.0, 0.0])


def test_empty_batch():
  x, w, b = jnp.zeros((0, 3)), jnp.ones((3, 2)), jnp.ones(2)
  dx, dw, db = jax.grad(lambda *a: jnp.sum(jaxconv.dense(*a)),
                        argnums=(0, 1, 2))(x, w, b)
  assert dx.shape == (0, 3)
  np.testing.assert_array_equal(dw, np.zeros((3, 2)))
  np.testing.assert_array_equal(db, np.zeros(2))


def test_traced_out_of_range_labels_give_nan_not_a_silent_loss():
  logits = jnp.asarray([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0], [0.0, 0.0, 5.0]])
  loss, grad = jax.jit(jax.value_and_grad(jaxconv.softmax_cross_entropy))(
      logits, jnp.asarray([3, 0, -1]))
  assert np.isnan(loss)
  assert np.all(np.isnan(grad[0])) and np.all(np.isnan(grad[2]))
  np.testing.assert_allclose(grad[1], [-2 / 9, 1 / 9, 1 / 9], rtol=1e-12)


# --- Teeth: the oracle comparison fails when one formula is wrong. ----------
#
# Each rule is rebuilt here as a value: a jax.custom_vjp function whose
# forward pass is jaxconv's public function and whose backward pass calls the
# public gradient pieces, looked up in a table of pieces. With the library's
# pieces it is jaxconv's rule and passes the comparison; with one piece
# replaced by a wrong formula it must fail it. Nothing in jaxconv is patched.

PIECES = {name: getattr(jaxconv, name) for name in (
    "dense_input_grad", "dense_kernel_grad", "dense_bias_grad", "relu_grad",
    "leaky_relu_grad", "tanh_grad", "sigmoid_grad", "mse_predictions_grad",
    "mse_targets_grad", "softmax_cross_entropy_grad")}


def _with_gradient(forward, save, backward):
  """``forward`` as a rule: ``save(output, *args)`` gives the residuals and
  ``backward(residuals, cotangent)`` the gradient of every argument."""
  rule = jax.custom_vjp(lambda *args: forward(*args))

  def rule_fwd(*args):
    output = forward(*args)
    return output, save(output, *args)

  rule.defvjp(rule_fwd, backward)
  return rule


def _rebuilt(case, pieces):
  """The rule of ``CASES[case]`` from the gradient pieces ``pieces``."""
  p = pieces
  function = CASES[case][0]
  if case in ("dense", "dense_2d"):
    return _with_gradient(
        function, lambda z, x, w, b: (x, w),
        lambda r, d: (p["dense_input_grad"](d, r[1]),
                      p["dense_kernel_grad"](r[0], d), p["dense_bias_grad"](d)))
  if case.startswith("leaky_relu"):
    slope = 0.2 if case == "leaky_relu" else -0.5
    return _with_gradient(
        function, lambda y, x: x >= 0,
        lambda mask, g: (p["leaky_relu_grad"](g, mask, slope),))
  if case in ("relu", "tanh", "sigmoid"):
    grad = p[f"{case}_grad"]
    return _with_gradient(function, lambda y, x: y,
                          lambda y, g: (grad(g, y),))
  if case == "mse":
    return _with_gradient(
        function, lambda e, y, t: y - t,
        lambda d, c: (p["mse_predictions_grad"](c, d),
                      p["mse_targets_grad"](c, d)))
  assert case == "softmax_cross_entropy"
  labels = jnp.asarray(LABELS)
  return _with_gradient(
      function, lambda e, z: jax.nn.softmax(z),
      lambda probabilities, c: (p["softmax_cross_entropy_grad"](
          c, probabilities, labels),))


WRONG_RULES = {
    "dense_kernel_grad x 1.5": (
        "dense", "dense_kernel_grad",
        lambda x, delta: 1.5 * (x.reshape(-1, x.shape[-1]).T
                                @ delta.reshape(-1, delta.shape[-1]))),
    "dense input gradient zeroed": (
        "dense", "dense_input_grad",
        lambda delta, w: jnp.zeros(delta.shape[:-1] + w.shape[:1],
                                   delta.dtype)),
    "dense bias gradient from first row only": (
        "dense_2d", "dense_bias_grad", lambda delta: delta[0]),
    "relu passes the gradient everywhere": (
        "relu", "relu_grad", lambda g, y: g),
    "leaky relu ignores the slope": (
        "leaky_relu", "leaky_relu_grad",
        lambda g, mask, slope: jnp.where(mask, g, 0.0)),
    "tanh derivative 1 - o": (
        "tanh", "tanh_grad", lambda g, y: g * (1 - y)),
    "sigmoid derivative o instead of o(1 - o)": (
        "sigmoid", "sigmoid_grad", lambda g, y: g * y),
    "mse without 1/B": (
        "mse", "mse_predictions_grad", lambda c, d: c * d),
    "mse targets gradient with the wrong sign": (
        "mse", "mse_targets_grad", lambda c, d: c * d / d.shape[0]),
    "softmax cross-entropy without 1/N": (
        "softmax_cross_entropy", "softmax_cross_entropy_grad",
        lambda c, p, labels: c * (p - jax.nn.one_hot(labels, p.shape[-1],
                                                      dtype=p.dtype))),
    "softmax cross-entropy without the one-hot": (
        "softmax_cross_entropy", "softmax_cross_entropy_grad",
        lambda c, p, labels: c * p / labels.size),
}


@pytest.mark.parametrize("wrong", sorted(WRONG_RULES))
def test_a_wrong_rule_fails_the_oracle(wrong):
  """The rule rebuilt from the library's pieces passes the comparison of
  test_matches_autodiff_of_reference at float32 tolerance; with one piece
  wrong, the same comparison fails on that gradient."""
  case, name, replacement = WRONG_RULES[wrong]
  _, reference, shapes = CASES[case]
  args = sample(shapes)
  assert_matches_reference(_rebuilt(case, PIECES), reference, args,
                           jnp.float32)
  wrong_rule = _rebuilt(case, dict(PIECES, **{name: replacement}))
  with pytest.raises(AssertionError, match="gradient of argument"):
    assert_matches_reference(wrong_rule, reference, args, jnp.float32)


# --- Bad input, rejected in Python at call time. ------------------------------

f64 = jnp.ones
BAD_CALLS = [
    ("dense int x", lambda: jaxconv.dense(jnp.ones((2, 3), jnp.int32),
                                          f64((3, 4))), TypeError, "`x`"),
    ("dense list w", lambda: jaxconv.dense(f64((2, 3)), [[1.0] * 4] * 3),
     TypeError, "`w`"),
    ("dense mixed dtypes", lambda: jaxconv.dense(
        jnp.ones((2, 3), jnp.float32), f64((3, 4))), TypeError, "same dtype"),
    ("dense bias dtype", lambda: jaxconv.dense(
        f64((2, 3)), f64((3, 4)), jnp.ones(4, jnp.float32)), TypeError, "`b`"),
    ("dense 0-d x", lambda: jaxconv.dense(f64(()), f64((1, 4))), ValueError,
     "`x`"),
    ("dense 1-d w", lambda: jaxconv.dense(f64((2, 3)), f64((3,))), ValueError,
     "`w`"),
    ("dense d_in mismatch", lambda: jaxconv.dense(f64((2, 3)), f64((4, 5))),
     ValueError, "d_in"),
    ("dense bias shape", lambda: jaxconv.dense(f64((2, 3)), f64((3, 4)),
                                               f64((3,))), ValueError, "`b`"),
    ("dense int bias", lambda: jaxconv.dense(
        f64((2, 3)), f64((3, 4)), jnp.ones(4, jnp.int32)), TypeError, "`b`"),
    ("relu int", lambda: jaxconv.relu(jnp.arange(3)), TypeError, "`x`"),
    ("relu bool", lambda: jaxconv.relu(jnp.ones(3, bool)), TypeError, "`x`"),
    ("tanh int", lambda: jaxconv.tanh(jnp.arange(3)), TypeError, "`x`"),
    ("sigmoid complex", lambda: jaxconv.sigmoid(jnp.ones(3, jnp.complex64)),
     TypeError, "`x`"),
    ("leaky_relu int", lambda: jaxconv.leaky_relu(jnp.arange(3)), TypeError,
     "`x`"),
    ("leaky_relu array slope", lambda: jaxconv.leaky_relu(
        f64(3), jnp.asarray(0.1)), TypeError, "`negative_slope`"),
    ("leaky_relu bool slope", lambda: jaxconv.leaky_relu(f64(3), True),
     TypeError, "`negative_slope`"),
    ("mse shape mismatch", lambda: jaxconv.mse(f64((4, 3)), f64((4, 2))),
     ValueError, "`targets`"),
    ("mse int targets", lambda: jaxconv.mse(f64((4, 3)),
                                            jnp.ones((4, 3), jnp.int32)),
     TypeError, "`targets`"),
    ("mse mixed dtypes", lambda: jaxconv.mse(
        f64((4, 3)), jnp.ones((4, 3), jnp.float32)), TypeError, "same dtype"),
    ("mse 0-d", lambda: jaxconv.mse(f64(()), f64(())), ValueError,
     "`predictions`"),
    ("ce float labels", lambda: jaxconv.softmax_cross_entropy(
        f64((2, 3)), f64(2)), TypeError, "`labels`"),
    ("ce list labels", lambda: jaxconv.softmax_cross_entropy(f64((2, 3)),
                                                             [0, 1]),
     TypeError, "`labels`"),
    ("ce int logits", lambda: jaxconv.softmax_cross_entropy(
        jnp.ones((2, 3), jnp.int32), jnp.zeros(2, jnp.int32)), TypeError,
     "`logits`"),
    ("ce label shape", lambda: jaxconv.softmax_cross_entropy(
        f64((2, 3)), jnp.zeros((2, 1), jnp.int32)), ValueError, "`labels`"),
    ("ce label too large", lambda: jaxconv.softmax_cross_entropy(
        f64((2, 3)), jnp.asarray([0, 3])), ValueError, r"\[0, 3\).*got 3"),
    ("ce negative label", lambda: jaxconv.softmax_cross_entropy(
        f64((2, 3)), np.asarray([-1, 0])), ValueError, "got -1"),
    ("ce no classes", lambda: jaxconv.softmax_cross_entropy(
        f64((2, 0)), jnp.zeros(2, jnp.int32)), ValueError, "`logits`"),
]


@pytest.mark.parametrize("call,error,match", [c[1:] for c in BAD_CALLS],
                         ids=[c[0] for c in BAD_CALLS])
def test_bad_input_is_rejected(call, error, match):
  with pytest.raises(error, match=match):
    call()


def test_errors_fire_under_jit_and_eval_shape():
  with pytest.raises(ValueError, match="d_in"):
    jax.jit(jaxconv.dense)(f64((2, 3)), f64((4, 5)))
  with pytest.raises(ValueError, match="`targets`"):
    jax.eval_shape(jaxconv.mse, f64((4, 3)), f64((4, 2)))
  with pytest.raises(TypeError, match="`labels`"):
    jax.jit(jaxconv.softmax_cross_entropy)(f64((2, 3)), f64(2))
