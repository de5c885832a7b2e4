"""The layers around the convolutions: dense, activations and losses.

Every function here has a hand-written reverse-mode rule (``jax.custom_vjp``)
taken from Part III of ``docs/derivation.md`` ("The whole network",
equations (50) to (69)); the rule's comment block names the equations it
implements. Each rule comes in three parts, as in the rest of jaxconv:

1. the documented public function, which validates its arguments in Python
   (so errors fire eagerly, under ``jax.jit`` and ``jax.eval_shape`` alike);
2. a private ``@jax.custom_vjp`` primal;
3. its ``_fwd`` / ``_bwd`` pair, with ``defvjp`` directly below. The ``_bwd``
   only unpacks the residuals and calls the named gradient function that holds
   the math; those functions are public so that they can be read and tested
   one at a time.

The backward rules are written with ordinary differentiable ``jax.numpy``
operations, never with ``jax.vjp`` of the forward, so that reverse-over-reverse
(``jax.grad`` of ``jax.grad``, Hessian-vector products) differentiates the
hand-written rules themselves.

Symbols (docs/derivation.md, Part III): a layer ``l`` reads ``o^{l-1}`` and
computes the pre-activation ``x^l``; the activation gives ``o^l = f(x^l)``;
``E`` is the loss and ``delta^l = dE/dx^l`` (50).
"""

from __future__ import annotations

import functools
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv._geometry import check_floating
from jaxconv._geometry import check_same_floating as _check_dtypes

__all__ = [
    "dense",
    "relu",
    "leaky_relu",
    "tanh",
    "sigmoid",
    "mse",
    "softmax_cross_entropy",
    "dense_input_grad",
    "dense_kernel_grad",
    "dense_bias_grad",
    "relu_grad",
    "leaky_relu_grad",
    "tanh_grad",
    "sigmoid_grad",
    "mse_predictions_grad",
    "mse_targets_grad",
    "softmax_cross_entropy_grad",
]

_HIGHEST = lax.Precision.HIGHEST


def _check_min_ndim(x, minimum: int, name: str, what: str) -> None:
  if x.ndim < minimum:
    raise ValueError(f"`{name}` must have at least {minimum} dimension(s) "
                     f"{what}, got shape {tuple(x.shape)}.")


# -----------------------------------------------------------------------------
# Dense (fully connected) layer.
# -----------------------------------------------------------------------------


def dense(x, w, b=None):
  r"""Fully connected layer, ``x @ w + b``.

  Implements eq. (51) of docs/derivation.md,

  .. math:: x^l_{n,j} = \sum_i o^{l-1}_{n,i} W^l_{i,j} + b^l_j,

  where ``n`` runs over every leading position of ``x`` (batch, or batch and
  any other leading axes) and ``i`` over its last axis.

  Args:
    x: the layer input ``o^{l-1}``, shape ``(..., d_in)``, real floating point.
    w: the kernel ``W^l``, shape ``(d_in, d_out)``; the layout of Flax's
      ``nn.Dense`` kernel.
    b: optional bias ``b^l``, shape ``(d_out,)``.

  Returns:
    The pre-activation ``x^l``, shape ``(..., d_out)``, in the arguments'
    dtype.

  Raises:
    TypeError: an argument is not a real floating-point array, or the dtypes
      differ (as in :func:`jaxconv.conv`, cast explicitly).
    ValueError: ``x`` is 0-d, ``w`` is not 2-d, ``x.shape[-1] != w.shape[0]``,
      or ``b.shape != (w.shape[1],)``.

  Examples:
    >>> import jax.numpy as jnp, jaxconv
    >>> jaxconv.dense(jnp.ones((2, 3)), jnp.ones((3, 4)), jnp.arange(4.0))
    Array([[3., 4., 5., 6.],
           [3., 4., 5., 6.]], dtype=float32)
  """
  _check_dtypes(x, w, "x", "w")
  _check_min_ndim(x, 1, "x", "(the last is the feature axis)")
  if w.ndim != 2:
    raise ValueError(f"`w` must be 2-d with shape (d_in, d_out), got shape "
                     f"{tuple(w.shape)}.")
  if x.shape[-1] != w.shape[0]:
    raise ValueError(
        f"`x` has {x.shape[-1]} features on its last axis but `w` expects "
        f"d_in = {w.shape[0]} (x shape {tuple(x.shape)}, w shape "
        f"{tuple(w.shape)}).")
  if b is not None:
    _check_dtypes(x, b, "x", "b")
    if tuple(b.shape) != (w.shape[1],):
      raise ValueError(f"`b` must have shape (d_out,) = ({w.shape[1]},), got "
                       f"{tuple(b.shape)}.")
  return _dense(x, w, b)


@jax.custom_vjp
def _dense(x, w, b):
  y = jnp.matmul(x, w, precision=_HIGHEST)
  return y if b is None else y + b


# Backward rule of the dense layer, eqs. (51)-(54).
#
#   forward (51):  x^l_{n,j} = sum_i o^{l-1}_{n,i} W_{i,j} + b_j
#   input   (52):  dE/do^{l-1}_{n,i} = sum_j delta_{n,j} W_{i,j}    = delta W^T
#   kernel  (53):  dE/dW_{i,j}      = sum_n o^{l-1}_{n,i} delta_{n,j} = o^T delta
#   bias    (54):  dE/db_j          = sum_n delta_{n,j}
#
# Residuals: the input o^{l-1} (for (53)) and the kernel W (for (52)); whether
# there is a bias is a Python bool. (53) and (54) sum over every leading
# position n, because the same W and b serve each of them: weight sharing, as
# in the convolution's kernel gradient.


def _dense_fwd(x, w, b):
  return _dense(x, w, b), (x, w, b is not None)


def _dense_bwd(residuals, cotangent):
  x, w, has_bias = residuals
  return (dense_input_grad(cotangent, w),
          dense_kernel_grad(x, cotangent),
          dense_bias_grad(cotangent) if has_bias else None)


_dense.defvjp(_dense_fwd, _dense_bwd)


def dense_input_grad(cotangent, w):
  r"""Gradient of a dense layer with respect to its input, eq. (52).

  .. math:: \frac{\partial E}{\partial o^{l-1}_{n,i}}
            = \sum_j \delta^l_{n,j} W^l_{i,j}

  Args:
    cotangent: ``delta^l = dE/dx^l``, shape ``(..., d_out)``.
    w: the kernel ``W^l``, shape ``(d_in, d_out)``.

  Returns:
    ``dE/do^{l-1}``, shape ``(..., d_in)``.
  """
  return jnp.matmul(cotangent, w.T, precision=_HIGHEST)


def dense_kernel_grad(x, cotangent):
  r"""Gradient of a dense layer with respect to its kernel, eq. (53).

  .. math:: \frac{\partial E}{\partial W^l_{i,j}}
            = \sum_n o^{l-1}_{n,i} \delta^l_{n,j}

  Args:
    x: the layer input ``o^{l-1}``, shape ``(..., d_in)``.
    cotangent: ``delta^l = dE/dx^l``, shape ``(..., d_out)``.

  Returns:
    ``dE/dW^l``, shape ``(d_in, d_out)``: a sum over every leading position.
  """
  x_rows = x.reshape(-1, x.shape[-1])
  cotangent_rows = cotangent.reshape(-1, cotangent.shape[-1])
  return jnp.matmul(x_rows.T, cotangent_rows, precision=_HIGHEST)


def dense_bias_grad(cotangent):
  r"""Gradient of a dense layer with respect to its bias, eq. (54).

  .. math:: \frac{\partial E}{\partial b^l_j} = \sum_n \delta^l_{n,j}

  Args:
    cotangent: ``delta^l = dE/dx^l``, shape ``(..., d_out)``.

  Returns:
    ``dE/db^l``, shape ``(d_out,)``.
  """
  return cotangent.reshape(-1, cotangent.shape[-1]).sum(axis=0)


# -----------------------------------------------------------------------------
# Activations: o^l = f(x^l), element by element.
# -----------------------------------------------------------------------------


def relu(x):
  r"""Rectified linear unit, ``max(x, 0)``, eq. (57).

  The derivative at ``x = 0`` is taken to be 0, the choice of
  ``jax.nn.relu`` (and PyTorch): the rule passes the gradient only where
  ``x > 0``, eq. (57). A NaN input gives a NaN output and a zero gradient.

  Args:
    x: the pre-activation ``x^l``, any shape, real floating point.

  Returns:
    ``o^l = max(x^l, 0)``, same shape and dtype.

  Raises:
    TypeError: ``x`` is not a real floating-point array.
  """
  check_floating(x, "x")
  return _relu(x)


@jax.custom_vjp
def _relu(x):
  return jnp.maximum(x, jnp.zeros((), x.dtype))


# Backward rule of relu, eqs. (56)-(57).
#
#   (56)  delta^l = dE/do^l * f'(x^l)           (f acts element by element)
#   (57)  f'(x) = 1 if x > 0 else 0  =  1 if o > 0 else 0     (f'(0) := 0)
#
# Residual: the output o^l. Since o > 0 exactly where x > 0, the output
# carries the whole mask; the next layer (a convolution, a pooling or a dense
# layer) keeps o^l as its own residual anyway, so keeping it here costs no
# extra memory, where a separate boolean mask would.


def _relu_fwd(x):
  y = _relu(x)
  return y, y


def _relu_bwd(y, cotangent):
  return (relu_grad(cotangent, y),)


_relu.defvjp(_relu_fwd, _relu_bwd)


def relu_grad(cotangent, y):
  r"""Gradient of relu with respect to its input, eqs. (56)-(57).

  .. math:: \delta^l = \frac{\partial E}{\partial o^l} \odot
            \mathbf{1}[o^l > 0]

  Args:
    cotangent: ``dE/do^l``, the shape of ``y``.
    y: the relu output ``o^l``.

  Returns:
    ``delta^l = dE/dx^l``.
  """
  return jnp.where(y > 0, cotangent, jnp.zeros_like(cotangent))


def leaky_relu(x, negative_slope=0.01):
  r"""Leaky rectified linear unit, eq. (58).

  ``x`` where ``x >= 0`` and ``negative_slope * x`` elsewhere. The derivative
  at ``x = 0`` is 1, the choice of ``jax.nn.leaky_relu``.

  Args:
    x: the pre-activation ``x^l``, any shape, real floating point.
    negative_slope: the slope ``alpha`` for negative inputs, a Python real
      number. It is a fixed hyperparameter: no gradient flows to it, and it
      cannot be a traced array (a learned slope is PReLU, not provided).

  Returns:
    ``o^l``, same shape and dtype as ``x``.

  Raises:
    TypeError: ``x`` is not a real floating-point array, or
      ``negative_slope`` is not a real number.
  """
  check_floating(x, "x")
  if isinstance(negative_slope, (bool, np.bool_)) or not isinstance(
      negative_slope, numbers.Real):
    raise TypeError(
        f"`negative_slope` must be a Python real number, got "
        f"{negative_slope!r} (type {type(negative_slope).__name__}).")
  return _leaky_relu(x, float(negative_slope))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _leaky_relu(x, negative_slope):
  return jnp.where(x >= 0, x, negative_slope * x)


# Backward rule of leaky relu, eqs. (56) and (58).
#
#   (56)  delta^l = dE/do^l * f'(x^l)
#   (58)  f'(x) = 1 if x >= 0 else alpha                      (f'(0) := 1)
#
# Residual: the boolean mask x >= 0 (one byte per element). The output alone
# would not do: with alpha <= 0 its sign does not tell x >= 0 from x < 0.
# alpha is a static Python float (nondiff_argnums), so it gets no cotangent.


def _leaky_relu_fwd(x, negative_slope):
  return _leaky_relu(x, negative_slope), x >= 0


def _leaky_relu_bwd(negative_slope, nonnegative, cotangent):
  return (leaky_relu_grad(cotangent, nonnegative, negative_slope),)


_leaky_relu.defvjp(_leaky_relu_fwd, _leaky_relu_bwd)


def leaky_relu_grad(cotangent, nonnegative, negative_slope):
  r"""Gradient of leaky relu with respect to its input, eqs. (56), (58).

  .. math:: \delta^l = \frac{\partial E}{\partial o^l} \odot
            \begin{cases} 1 & x^l \ge 0 \\ \alpha & x^l < 0 \end{cases}

  Args:
    cotangent: ``dE/do^l``.
    nonnegative: boolean mask ``x^l >= 0``, the shape of ``cotangent``.
    negative_slope: ``alpha``, a Python float.

  Returns:
    ``delta^l = dE/dx^l``.
  """
  return jnp.where(nonnegative, cotangent,
                   negative_slope * cotangent)


def tanh(x):
  r"""Hyperbolic tangent, eq. (59).

  Args:
    x: the pre-activation ``x^l``, any shape, real floating point.

  Returns:
    ``o^l = tanh(x^l)``, same shape and dtype.

  Raises:
    TypeError: ``x`` is not a real floating-point array.
  """
  check_floating(x, "x")
  return _tanh(x)


@jax.custom_vjp
def _tanh(x):
  return jnp.tanh(x)


# Backward rule of tanh, eqs. (56) and (59).
#
#   (56)  delta^l = dE/do^l * f'(x^l)
#   (59)  f'(x) = 1 - tanh(x)^2 = 1 - o^2
#
# Residual: the output o^l, from which (59) needs nothing else. Far out in the
# tails o rounds to +-1 and the factor to exactly 0; the true value is below
# the dtype's resolution there.


def _tanh_fwd(x):
  y = _tanh(x)
  return y, y


def _tanh_bwd(y, cotangent):
  return (tanh_grad(cotangent, y),)


_tanh.defvjp(_tanh_fwd, _tanh_bwd)


def tanh_grad(cotangent, y):
  r"""Gradient of tanh with respect to its input, eqs. (56), (59).

  .. math:: \delta^l = \frac{\partial E}{\partial o^l} \odot (1 - (o^l)^2)

  Args:
    cotangent: ``dE/do^l``.
    y: the tanh output ``o^l``.

  Returns:
    ``delta^l = dE/dx^l``.
  """
  return cotangent * (1 - y * y)


def sigmoid(x):
  r"""Logistic sigmoid, ``1 / (1 + exp(-x))``, eq. (60).

  Computed with ``lax.logistic``, which does not overflow for large ``|x|``.

  Args:
    x: the pre-activation ``x^l``, any shape, real floating point.

  Returns:
    ``o^l = sigma(x^l)``, same shape and dtype.

  Raises:
    TypeError: ``x`` is not a real floating-point array.
  """
  check_floating(x, "x")
  return _sigmoid(x)


@jax.custom_vjp
def _sigmoid(x):
  return lax.logistic(x)


# Backward rule of the sigmoid, eqs. (56) and (60).
#
#   (56)  delta^l = dE/do^l * f'(x^l)
#   (60)  f'(x) = sigma(x) (1 - sigma(x)) = o (1 - o)
#
# Residual: the output o^l. In saturation o rounds to 1 (x >~ 17 in float32)
# and the factor to exactly 0; for very negative x, o (1 - o) = o stays
# accurate until o itself underflows to 0. Neither end gives inf or NaN.


def _sigmoid_fwd(x):
  y = _sigmoid(x)
  return y, y


def _sigmoid_bwd(y, cotangent):
  return (sigmoid_grad(cotangent, y),)


_sigmoid.defvjp(_sigmoid_fwd, _sigmoid_bwd)


def sigmoid_grad(cotangent, y):
  r"""Gradient of the sigmoid with respect to its input, eqs. (56), (60).

  .. math:: \delta^l = \frac{\partial E}{\partial o^l} \odot o^l (1 - o^l)

  Args:
    cotangent: ``dE/do^l``.
    y: the sigmoid output ``o^l``.

  Returns:
    ``delta^l = dE/dx^l``.
  """
  return cotangent * (y * (1 - y))


# -----------------------------------------------------------------------------
# Losses.
# -----------------------------------------------------------------------------


def mse(predictions, targets):
  r"""Squared error, halved, summed per example and averaged over the batch.

  Implements eq. (61) of docs/derivation.md,

  .. math:: E = \frac{1}{B} \sum_{n=1}^{B} \frac{1}{2} \sum_p
            (t_{n,p} - y_{n,p})^2,

  with the batch on the first axis and ``p`` running over all the others.
  With ``B = 1`` it is the seeds' ``E = 1/2 sum_p (t_p - y_p)^2``; the 1/2
  cancels the 2 of the derivative, and the 1/B keeps the gradient's scale
  independent of the batch size. It is ``optax.l2_loss(y, t).sum() / B``, and
  NOT ``jnp.mean((y - t) ** 2)``, which divides by every element and omits
  the 1/2. An empty batch gives NaN (0 / 0), as ``jnp.mean`` does.

  Args:
    predictions: ``y``, shape ``(B, ...)``, real floating point.
    targets: ``t``, the shape of ``predictions``, real floating point. It is
      differentiable too (eq. (63)).

  Returns:
    The scalar loss ``E``, in the arguments' dtype.

  Raises:
    TypeError: an argument is not a real floating-point array, or the dtypes
      differ.
    ValueError: ``predictions`` is 0-d, or the shapes differ.
  """
  _check_dtypes(predictions, targets, "predictions", "targets")
  _check_min_ndim(predictions, 1, "predictions", "(the first is the batch)")
  if predictions.shape != targets.shape:
    raise ValueError(
        f"`targets` must have the shape of `predictions`, "
        f"{tuple(predictions.shape)}, got {tuple(targets.shape)}.")
  return _mse(predictions, targets)


@jax.custom_vjp
def _mse(predictions, targets):
  difference = predictions - targets
  return 0.5 * jnp.sum(difference * difference) / predictions.shape[0]


# Backward rule of the mean squared error, eqs. (61)-(63).
#
#   (61)  E = (1/B) sum_n 1/2 sum_p (t_{n,p} - y_{n,p})^2
#   (62)  dE/dy = (y - t) / B
#   (63)  dE/dt = (t - y) / B = -dE/dy
#
# Each is multiplied by the incoming cotangent dL/dE (1 when E is the final
# loss, eq. (69)). Residual: the difference y - t; B is static (the shape).


def _mse_fwd(predictions, targets):
  return _mse(predictions, targets), predictions - targets


def _mse_bwd(difference, cotangent):
  return (mse_predictions_grad(cotangent, difference),
          mse_targets_grad(cotangent, difference))


_mse.defvjp(_mse_fwd, _mse_bwd)


def mse_predictions_grad(cotangent, difference):
  r"""Gradient of :func:`mse` with respect to the predictions, eq. (62).

  .. math:: \frac{\partial E}{\partial y_{n,p}} = \frac{y_{n,p} - t_{n,p}}{B}

  Args:
    cotangent: the scalar ``dL/dE`` (1 for the final loss).
    difference: ``y - t``, shape ``(B, ...)``.

  Returns:
    ``dL/dy``, the shape of ``difference``.
  """
  return difference * (cotangent / difference.shape[0])


def mse_targets_grad(cotangent, difference):
  r"""Gradient of :func:`mse` with respect to the targets, eq. (63).

  .. math:: \frac{\partial E}{\partial t_{n,p}} = \frac{t_{n,p} - y_{n,p}}{B}

  Args:
    cotangent: the scalar ``dL/dE``.
    difference: ``y - t``, shape ``(B, ...)``.

  Returns:
    ``dL/dt``, the shape of ``difference``.
  """
  return difference * (-cotangent / difference.shape[0])


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def softmax_cross_entropy(logits, labels):
  r"""Cross-entropy of the softmax of ``logits`` against integer labels.

  Implements eqs. (64)-(65) of docs/derivation.md,

  .. math:: E = \frac{1}{N} \sum_n \Big( \log \sum_k e^{z_{n,k}}
            - z_{n,c_n} \Big) = -\frac{1}{N} \sum_n \log p_{n,c_n},

  averaged over the ``N`` label positions (the batch, or every leading
  position of ``logits``). The log-sum-exp is shifted by each row's maximum,
  so large logits neither overflow nor lose the answer (eq. (64)). It equals
  ``optax.softmax_cross_entropy_with_integer_labels(z, c).mean()``.

  Labels are checked against ``[0, K)`` when they are concrete. Under
  ``jax.jit`` they are traced and cannot be checked in Python; an
  out-of-range label (negative ones included) then makes the loss NaN, and
  its row of the gradient, so that the mistake cannot train silently.

  Args:
    logits: ``z``, shape ``(..., K)``, real floating point.
    labels: the classes ``c``, an integer array of shape ``logits.shape[:-1]``.

  Returns:
    The scalar loss ``E``, in the dtype of ``logits``.

  Raises:
    TypeError: ``logits`` is not a real floating-point array, or ``labels``
      is not an integer array.
    ValueError: ``logits`` is 0-d or has no classes, the shapes do not match,
      or a concrete label lies outside ``[0, K)``.
  """
  check_floating(logits, "logits")
  _check_min_ndim(logits, 1, "logits", "(the last is the class axis)")
  num_classes = logits.shape[-1]
  if num_classes == 0:
    raise ValueError(f"`logits` must have at least one class on its last axis, "
                     f"got shape {tuple(logits.shape)}.")
  label_dtype = getattr(labels, "dtype", None)
  if label_dtype is None or not np.issubdtype(np.dtype(label_dtype),
                                              np.integer):
    described = (f"dtype {np.dtype(label_dtype)}" if label_dtype is not None
                 else f"type {type(labels).__name__}")
    raise TypeError(f"`labels` must be an integer array (class indices), got "
                    f"{described}.")
  if tuple(labels.shape) != tuple(logits.shape[:-1]):
    raise ValueError(
        f"`labels` must have shape logits.shape[:-1] = "
        f"{tuple(logits.shape[:-1])}, got {tuple(labels.shape)}.")
  if _is_concrete(labels) and labels.size:
    values = np.asarray(labels)
    low, high = values.min(), values.max()
    if low < 0 or high >= num_classes:
      bad = low if low < 0 else high
      raise ValueError(f"`labels` must lie in [0, {num_classes}) for "
                       f"{num_classes} classes, got {int(bad)}.")
  return _softmax_cross_entropy(logits, labels)


def _one_hot(labels, num_classes, dtype):
  """Rows ``1[k = c_n]``; a row of NaN where ``c_n`` is outside ``[0, K)``."""
  one_hot = (labels[..., None] == jnp.arange(num_classes)).astype(dtype)
  valid = (labels >= 0) & (labels < num_classes)
  return jnp.where(valid[..., None], one_hot, jnp.asarray(jnp.nan, dtype))


def _log_softmax(logits):
  # (64): log p = z - m - log sum_k exp(z_k - m), with m the row maximum. The
  # shift cancels exactly, so it carries no gradient.
  shift = lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  shifted = logits - shift
  return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))


@jax.custom_vjp
def _softmax_cross_entropy(logits, labels):
  one_hot = _one_hot(labels, logits.shape[-1], logits.dtype)
  count = math.prod(labels.shape)
  return -jnp.sum(one_hot * _log_softmax(logits)) / count


# Backward rule of the softmax cross-entropy, eqs. (64)-(66).
#
#   (64)  p_{n,k} = exp(z_{n,k} - m_n) / sum_k' exp(z_{n,k'} - m_n)
#   (65)  E = -(1/N) sum_n log p_{n,c_n}
#   (66)  dE/dz_{n,k} = (p_{n,k} - [k = c_n]) / N
#
# times the incoming cotangent dL/dE (69). Residuals: the probabilities p and
# the labels c; N and K are static. Labels are integers: their cotangent is
# None (symbolically zero).


def _softmax_cross_entropy_fwd(logits, labels):
  loss = _softmax_cross_entropy(logits, labels)
  return loss, (jnp.exp(_log_softmax(logits)), labels)


def _softmax_cross_entropy_bwd(residuals, cotangent):
  probabilities, labels = residuals
  return (softmax_cross_entropy_grad(cotangent, probabilities, labels),
          None)


_softmax_cross_entropy.defvjp(_softmax_cross_entropy_fwd,
                              _softmax_cross_entropy_bwd)


def softmax_cross_entropy_grad(cotangent, probabilities, labels):
  r"""Gradient of :func:`softmax_cross_entropy` for the logits, eq. (66).

  .. math:: \frac{\partial E}{\partial z_{n,k}}
            = \frac{p_{n,k} - \mathbf{1}[k = c_n]}{N}

  Args:
    cotangent: the scalar ``dL/dE`` (1 for the final loss).
    probabilities: ``p = softmax(z)``, shape ``(..., K)``.
    labels: the classes ``c``, shape ``probabilities.shape[:-1]``.

  Returns:
    ``dL/dz``, the shape of ``probabilities``.
  """
  one_hot = _one_hot(labels, probabilities.shape[-1], probabilities.dtype)
  count = math.prod(labels.shape)
  return (probabilities - one_hot) * (cotangent / count)
