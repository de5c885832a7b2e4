"""Batch normalisation (docs/derivation.md Part V, eqs. 76-80): the rule
against ``jax.grad`` of the same formula in float64, Flax's ``nn.BatchNorm``
and PyTorch's ``F.batch_norm``, in every dtype, with the statistics as
outputs, under jit, vmap and grad of grad; its errors; and teeth: wrong
rules, built here from the public gradient pieces, fail the comparison that
the right one passes.
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

# (shape, feature axis): a dense layer's (N, C), channels last and first,
# 1-D and 3-D layers, a batch of one.
CASES = [
    ((16, 5), -1),
    ((4, 6, 5, 3), -1),
    ((4, 3, 6, 5), 1),
    ((3, 7, 4), -1),
    ((2, 3, 4, 3, 2), -1),
    ((1, 5, 4, 6), 3),
]


def reference(x, scale, offset, epsilon=1e-5, feature_axis=-1):
  """Eqs. (76)-(77) in jax.numpy, for jax.grad to differentiate: the
  oracle. Returns (y, mean, variance)."""
  axis = feature_axis % x.ndim
  axes = tuple(a for a in range(x.ndim) if a != axis)
  shape = [-1 if a == axis else 1 for a in range(x.ndim)]
  mean = jnp.mean(x, axes)
  variance = jnp.mean(jnp.square(x - mean.reshape(shape)), axes)
  y = (x - mean.reshape(shape)) * lax.rsqrt(variance.reshape(shape) + epsilon)
  if scale is not None:
    y = y * scale.reshape(shape)
  if offset is not None:
    y = y + offset.reshape(shape)
  return y, mean, variance


def _inputs(shape, axis, dtype=np.float64, seed=0):
  rng = np.random.default_rng(seed)
  features = shape[axis]
  x = rng.normal(size=shape) * 3 + 1.5
  scale = rng.normal(size=features)
  offset = rng.normal(size=features)
  cotangents = (rng.normal(size=shape), rng.normal(size=features),
                rng.normal(size=features))
  cast = lambda a: jnp.asarray(a, dtype)
  return cast(x), cast(scale), cast(offset), tuple(map(cast, cotangents))


def _step(batch_norm, x, scale, offset, cotangents, statistics, axis):
  """Outputs and the VJP for the given cotangents (of y, and of the
  statistics when they are outputs)."""
  f = lambda x, s, o: batch_norm(x, s, o, feature_axis=axis,
                                 return_statistics=statistics)
  out, pullback = jax.vjp(f, x, scale, offset)
  if statistics:
    cotangent = (cotangents[0].astype(out[0].dtype),
                 cotangents[1].astype(out[1].dtype),
                 cotangents[2].astype(out[2].dtype))
  else:
    out, cotangent = (out,), cotangents[0]
  return tuple(out) + tuple(pullback(cotangent))


def _oracle(x, scale, offset, *, feature_axis, return_statistics):
  out = reference(x, scale, offset, feature_axis=feature_axis)
  return out if return_statistics else out[0]


def compare_with_oracle(batch_norm, shape, axis, statistics, dtype=np.float64):
  """``batch_norm``'s outputs and gradients against the float64 oracle."""
  x, scale, offset, cotangents = _inputs(shape, axis)
  expected = _step(_oracle, x, scale, offset, cotangents, statistics, axis)
  lo = lambda a: a.astype(dtype)
  got = _step(batch_norm, lo(x), lo(scale), lo(offset),
              tuple(map(lo, cotangents)), statistics, axis)
  names = ("y", "mean", "variance")[:len(got) - 3] + ("dx", "dscale",
                                                      "doffset")
  for name, a, b in zip(names, got, expected):
    assert_close(a, b, dtype, name)


@pytest.mark.parametrize("statistics", [False, True])
@pytest.mark.parametrize("shape, axis", CASES)
def test_against_autodiff_float64(shape, axis, statistics):
  compare_with_oracle(jaxconv.batch_norm, shape, axis, statistics)


@pytest.mark.parametrize("dtype", [np.float32, jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("shape, axis", CASES[1:3])
def test_low_precision(shape, axis, dtype):
  """16-bit inputs are normalised in float32; the statistics come back in
  float32, y and the gradients in the inputs' dtypes."""
  compare_with_oracle(jaxconv.batch_norm, shape, axis, True, dtype)
  x, scale, offset, _ = _inputs(shape, axis, dtype)
  y, mean, variance = jaxconv.batch_norm(x, scale, offset, feature_axis=axis,
                                         return_statistics=True)
  stats = np.float32 if np.dtype(dtype).itemsize < 4 else dtype
  assert y.dtype == dtype and mean.dtype == variance.dtype == stats
  grads = jax.grad(lambda *a: jnp.sum(jaxconv.batch_norm(
      *a, feature_axis=axis).astype(jnp.float32)), (0, 1, 2))(x, scale, offset)
  assert all(g.dtype == dtype for g in grads)


def test_without_scale_or_offset():
  """``None`` means gamma = 1 and beta = 0, and gets no gradient."""
  x, scale, offset, (dy, _, _) = _inputs((6, 4, 3), -1)
  ours = jax.vjp(lambda x: jaxconv.batch_norm(x), x)
  theirs = jax.vjp(lambda x: reference(x, None, None)[0], x)
  assert_close(ours[0], theirs[0], np.float64, "y")
  assert_close(ours[1](dy)[0], theirs[1](dy)[0], np.float64, "dx")
  only_scale = jax.grad(lambda x, s: jnp.sum(jaxconv.batch_norm(x, s) * dy),
                        (0, 1))(x, scale)
  expected = jax.grad(lambda x, s: jnp.sum(reference(x, s, None)[0] * dy),
                      (0, 1))(x, scale)
  for a, b in zip(only_scale, expected):
    assert_close(a, b, np.float64, "scale only")


def test_against_flax():
  """Flax's ``nn.BatchNorm`` in training mode: the same output and
  gradients, and its batch statistics (momentum 0) are the returned ones."""
  linen = pytest.importorskip("flax.linen")
  x, scale, offset, (dy, _, _) = _inputs((8, 5, 5, 4), -1)
  layer = linen.BatchNorm(use_running_average=False, momentum=0.0,
                          epsilon=1e-5, dtype=jnp.float64,
                          param_dtype=jnp.float64)
  variables = layer.init(jax.random.key(0), x)

  def flax_y(x, s, o):
    params = {"params": {"scale": s, "bias": o},
              "batch_stats": variables["batch_stats"]}
    return layer.apply(params, x, mutable=["batch_stats"])

  theirs, stats = flax_y(x, scale, offset)
  pullback = jax.vjp(lambda *a: flax_y(*a)[0], x, scale, offset)[1]
  y, mean, variance = jaxconv.batch_norm(x, scale, offset,
                                         return_statistics=True)
  assert_close(y, theirs, np.float64, "y")
  assert_close(mean, stats["batch_stats"]["mean"], np.float64, "mean")
  assert_close(variance, stats["batch_stats"]["var"], np.float64, "var")
  ours = jax.vjp(lambda *a: jaxconv.batch_norm(*a), x, scale, offset)[1](dy)
  for name, a, b in zip(("dx", "dscale", "doffset"), ours, pullback(dy)):
    assert_close(a, b, np.float64, name)


def test_against_torch():
  """PyTorch's ``F.batch_norm(training=True)`` on NCHW (feature axis 1):
  the same output and gradients. Its running variance is the unbiased one,
  M / (M - 1) times the variance returned here (docs/conventions.md)."""
  torch = pytest.importorskip("torch")
  shape = (4, 3, 5, 6)
  x, scale, offset, (dy, _, _) = _inputs(shape, 1)
  tx, ts, to = (torch.tensor(np.asarray(a), requires_grad=True)
                for a in (x, scale, offset))
  running_mean = torch.zeros(3, dtype=torch.float64)
  running_var = torch.zeros(3, dtype=torch.float64)
  ty = torch.nn.functional.batch_norm(tx, running_mean, running_var, ts, to,
                                      training=True, momentum=1.0, eps=1e-5)
  ty.backward(torch.tensor(np.asarray(dy)))
  y, mean, variance = jaxconv.batch_norm(x, scale, offset, feature_axis=1,
                                         return_statistics=True)
  grads = jax.vjp(lambda *a: jaxconv.batch_norm(*a, feature_axis=1), x,
                  scale, offset)[1](dy)
  assert_close(y, ty.detach().numpy(), np.float64, "y")
  for name, a, b in zip(("dx", "dscale", "doffset"), grads, (tx, ts, to)):
    assert_close(a, b.grad.numpy(), np.float64, name)
  m = 4 * 5 * 6
  assert_close(mean, running_mean.numpy(), np.float64, "mean")
  assert_close(variance * m / (m - 1), running_var.numpy(), np.float64,
               "unbiased variance")


def test_gradient_pieces_are_the_rule():
  """The public gradient functions give the rule's gradients."""
  x, scale, offset, (dy, _, _) = _inputs((5, 4, 3), -1)
  y, mean, variance = jaxconv.batch_norm(x, scale, offset,
                                         return_statistics=True)
  dx, dscale, doffset = jax.vjp(jaxconv.batch_norm, x, scale, offset)[1](dy)
  np.testing.assert_allclose(
      jaxconv.batch_norm_input_grad(dy, x, mean, variance, scale), dx,
      rtol=1e-12)
  np.testing.assert_allclose(
      jaxconv.batch_norm_scale_grad(dy, x, mean, variance), dscale,
      rtol=1e-12)
  np.testing.assert_allclose(jaxconv.batch_norm_offset_grad(dy), doffset,
                             rtol=1e-12)


def test_jit_vmap_and_grad_of_grad():
  x, scale, offset, (dy, _, _) = _inputs((2, 6, 4, 3), -1)
  f = functools.partial(jaxconv.batch_norm, epsilon=1e-3)
  np.testing.assert_allclose(jax.jit(f)(x, scale, offset),
                             f(x, scale, offset), rtol=1e-12)
  # vmap over a leading axis: each slice keeps its own statistics.
  batched = jax.vmap(f, in_axes=(0, None, None))(x, scale, offset)
  for i in range(x.shape[0]):
    np.testing.assert_allclose(batched[i], f(x[i], scale, offset),
                               rtol=1e-12, atol=1e-12)
  # Hessian-vector products: reverse over the hand-written rule.
  def hvp(g, which):
    inner = lambda x, s: jnp.sum(jnp.tanh(g(x, s)) * dy)
    return jax.grad(lambda x, s: jnp.sum(
        jax.grad(inner, which)(x, s) ** 2), (0, 1))(x, scale)

  for which in (0, 1):
    ours = hvp(lambda x, s: f(x, s, offset), which)
    theirs = hvp(lambda x, s: reference(x, s, offset, epsilon=1e-3)[0], which)
    for a, b in zip(ours, theirs):
      assert_close(a, b, np.float64, f"hvp {which}")


def test_constant_feature():
  """A feature with no spread normalises to its offset, and its gradient is
  finite (epsilon keeps s finite)."""
  x = jnp.stack([jnp.full((6,), 2.0), jnp.arange(6.0)], axis=-1)
  y = jaxconv.batch_norm(x, offset=jnp.array([0.5, 0.0]))
  np.testing.assert_array_equal(y[:, 0], 0.5)
  g = jax.grad(lambda x: jnp.sum(jaxconv.batch_norm(x) * jnp.arange(12.0)
                                 .reshape(6, 2)))(x)
  assert np.all(np.isfinite(g))


# -----------------------------------------------------------------------------
# Errors, eagerly and under jit.
# -----------------------------------------------------------------------------

X = jnp.ones((4, 3))


@pytest.mark.parametrize("call, error, words", [
    (lambda: jaxconv.batch_norm([[1.0, 2.0]]), TypeError,
     ["x", "array", "list"]),
    (lambda: jaxconv.batch_norm(jnp.ones((4, 3), jnp.int32)), TypeError,
     ["x", "floating", "int32"]),
    (lambda: jaxconv.batch_norm(jnp.ones(3)), ValueError,
     ["x", "2 dimensions", "(3,)"]),
    (lambda: jaxconv.batch_norm(jnp.ones((0, 3))), ValueError,
     ["x", "no elements", "(0, 3)"]),
    (lambda: jaxconv.batch_norm(X, feature_axis=2), ValueError,
     ["feature_axis", "[-2, 2)", "2"]),
    (lambda: jaxconv.batch_norm(X, feature_axis=1.0), TypeError,
     ["feature_axis", "int", "1.0"]),
    (lambda: jaxconv.batch_norm(X, jnp.ones(4)), ValueError,
     ["scale", "(3,)", "(4,)"]),
    (lambda: jaxconv.batch_norm(X, None, jnp.ones((3, 1))), ValueError,
     ["offset", "(3,)", "(3, 1)"]),
    (lambda: jaxconv.batch_norm(X, jnp.ones(3, jnp.int32)), TypeError,
     ["scale", "floating", "int32"]),
    (lambda: jaxconv.batch_norm(X, epsilon=-1e-5), ValueError,
     ["epsilon", ">= 0", "-1e-05"]),
    (lambda: jaxconv.batch_norm(X, epsilon="small"), ValueError,
     ["epsilon", "'small'"]),
])
def test_errors(call, error, words):
  with pytest.raises(error) as raised:
    call()
  for word in words:
    assert word in str(raised.value), (word, str(raised.value))


def test_errors_under_jit():
  with pytest.raises(ValueError, match="`scale` must have shape"):
    jax.jit(lambda x: jaxconv.batch_norm(x, jnp.ones(4)))(X)
  with pytest.raises(TypeError, match="`epsilon` must be a static"):
    jax.jit(lambda x, e: jaxconv.batch_norm(x, epsilon=e))(X, 1e-5)
  with pytest.raises(TypeError, match="`feature_axis` must be a Python int"):
    jax.jit(lambda x, a: jaxconv.batch_norm(x, feature_axis=a))(X, 1)


# -----------------------------------------------------------------------------
# Teeth: wrong rules, built from the public pieces, fail the comparison.
# -----------------------------------------------------------------------------


def _rebuilt(input_grad):
  """A batch norm whose forward pass is jaxconv's and whose backward pass
  calls ``input_grad(dy, x, mean, variance, scale, mean_bar, var_bar,
  axis)`` beside the public scale and offset gradients."""

  def batch_norm(x, scale, offset, *, feature_axis, return_statistics):
    @jax.custom_vjp
    def f(x, scale, offset):
      return jaxconv.batch_norm(x, scale, offset, feature_axis=feature_axis,
                                return_statistics=True)

    def f_fwd(x, scale, offset):
      out = f(x, scale, offset)
      return out, (x, out[1], out[2], scale)

    def f_bwd(residuals, cotangents):
      x, mean, variance, scale = residuals
      dy, mean_bar, var_bar = cotangents
      kw = dict(feature_axis=feature_axis)
      return (input_grad(dy, x, mean, variance, scale, mean_bar, var_bar,
                         feature_axis),
              jaxconv.batch_norm_scale_grad(dy, x, mean, variance, **kw),
              jaxconv.batch_norm_offset_grad(dy, **kw))

    f.defvjp(f_fwd, f_bwd)
    out = f(x, scale, offset)
    return out if return_statistics else out[0]

  return batch_norm


def _right(dy, x, mean, variance, scale, mean_bar, var_bar, axis):
  return jaxconv.batch_norm_input_grad(
      dy, x, mean, variance, scale, feature_axis=axis,
      mean_cotangent=mean_bar, variance_cotangent=var_bar)


def _without_coupling(dy, x, mean, variance, scale, mean_bar, var_bar, axis):
  """Eq. (79) as if mu and sigma were constants: gamma s dy."""
  shape = [-1 if a == axis % x.ndim else 1 for a in range(x.ndim)]
  return dy * (scale * lax.rsqrt(variance + 1e-5)).reshape(shape)


def _without_variance_term(dy, x, mean, variance, scale, mean_bar, var_bar,
                           axis):
  """Eq. (79) without the xhat_j dE/dgamma / M term (mu's path only)."""
  shape = [-1 if a == axis % x.ndim else 1 for a in range(x.ndim)]
  axes = tuple(a for a in range(x.ndim) if a != axis % x.ndim)
  centred = dy - jnp.mean(dy, axes).reshape(shape)
  return centred * (scale * lax.rsqrt(variance + 1e-5)).reshape(shape)


def _without_statistics_cotangents(dy, x, mean, variance, scale, mean_bar,
                                   var_bar, axis):
  """Eq. (80) dropped: a loss on the returned statistics loses their
  gradient."""
  return jaxconv.batch_norm_input_grad(dy, x, mean, variance, scale,
                                       feature_axis=axis)


@pytest.mark.parametrize("wrong", [_without_coupling, _without_variance_term,
                                   _without_statistics_cotangents])
def test_wrong_rules_fail(wrong):
  shape, axis = CASES[2]
  compare_with_oracle(_rebuilt(_right), shape, axis, True)
  with pytest.raises(AssertionError):
    compare_with_oracle(_rebuilt(wrong), shape, axis, True)
