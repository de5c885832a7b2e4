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
   the math; those functions are public (``*_grad``, like
   ``conv_input_grad``) so that they can be read and tested one at a time.

The backward rules are ordinary differentiable ``jax.numpy`` expressions,
never ``jax.vjp`` of the forward, so reverse-over-reverse (``jax.grad`` of
``jax.grad``, Hessian-vector products) differentiates the hand-written rules
themselves.

Symbols, as in the derivation: layer ``l`` reads ``h^{l-1}`` and computes the
pre-activation ``z^l`` (the ``z`` of Part I, eq. (7)); the activation gives
``h^l = f(z^l)``; ``E`` is the loss and ``delta^l = dE/dz^l`` (eq. (8)).
Indices: ``n`` the example (or any leading position), ``c`` an input feature,
``o`` an output feature.
"""

from __future__ import annotations

import functools
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv import _sharding
from jaxconv._geometry import check_floating, check_same_dtype

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

  .. math:: z^l_{n,o} = \sum_c h^{l-1}_{n,c} W^l_{c,o} + b^l_o,

  where ``n`` runs over every leading position of ``x`` (the batch, or the
  batch and any other leading axes) and ``c`` over its last axis. It is
  Part I's convolution with a one-tap kernel on a single position.

  Args:
    x: the layer input ``h^{l-1}``, shape ``(..., d_in)``, real floating
      point.
    w: the kernel ``W^l``, shape ``(d_in, d_out)``; the layout of Flax's
      ``nn.Dense`` kernel.
    b: optional bias ``b^l``, shape ``(d_out,)``.

  Returns:
    The pre-activation ``z^l``, shape ``(..., d_out)``, in the arguments'
    dtype.

  Raises:
    TypeError: an argument is not a real floating-point array, or the dtypes
      differ (as in :func:`jaxconv.conv`: cast explicitly).
    ValueError: ``x`` is 0-d, ``w`` is not 2-d, ``x.shape[-1] != w.shape[0]``,
      or ``b.shape != (w.shape[1],)``.

  Examples:
    >>> import jax.numpy as jnp, jaxconv
    >>> jaxconv.dense(jnp.ones((2, 3)), jnp.ones((3, 4)), jnp.arange(4.0))
    Array([[3., 4., 5., 6.],
           [3., 4., 5., 6.]], dtype=float32)
  """
  check_same_dtype(x, w, "x", "w")
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
    check_same_dtype(x, b, "x", "b")
    if tuple(b.shape) != (w.shape[1],):
      raise ValueError(f"`b` must have shape (d_out,) = ({w.shape[1]},), got "
                       f"{tuple(b.shape)}.")
  return _dense(x, w, b)


@jax.custom_vjp
def _dense(x, w, b):
  z = jnp.matmul(x, w, precision=_HIGHEST)
  return z if b is None else z + b


# Backward rule of the dense layer, eqs. (51)-(54).
#
#   forward (51):  z_{n,o} = sum_c h_{n,c} W_{c,o} + b_o
#   input   (52):  dE/dh_{n,c} = sum_o delta_{n,o} W_{c,o}      = delta W^T
#   kernel  (53):  dE/dW_{c,o} = sum_n h_{n,c} delta_{n,o}      = h^T delta
#   bias    (54):  dE/db_o     = sum_n delta_{n,o}
#
# Residuals: the input h (for (53)) and the kernel W (for (52)), and the bias
# (one number per feature, for its sharding inside shard_map). (53) and (54)
# sum over every position n because the same W and b serve all of them:
# weight sharing, as in Part I's (9) and (11).


def _dense_fwd(x, w, b):
  return _dense(x, w, b), (x, w, b)


def _dense_bwd(residuals, cotangent):
  x, w, b = residuals
  # summed_like: inside shard_map, a replicated kernel's gradient is the
  # whole batch's (the sum over the devices' blocks).
  return (_sharding.summed_like(dense_input_grad(cotangent, w), x),
          _sharding.summed_like(dense_kernel_grad(x, cotangent), w),
          None if b is None else _sharding.summed_like(
              dense_bias_grad(cotangent), b))


_dense.defvjp(_dense_fwd, _dense_bwd)


def dense_input_grad(cotangent, w):
  r"""Gradient of a dense layer with respect to its input, eq. (52).

  .. math:: \frac{\partial E}{\partial h^{l-1}_{n,c}}
            = \sum_o \delta^l_{n,o} W^l_{c,o}

  Args:
    cotangent: ``delta^l = dE/dz^l``, shape ``(..., d_out)``.
    w: the kernel ``W^l``, shape ``(d_in, d_out)``.

  Returns:
    ``dE/dh^{l-1}``, shape ``(..., d_in)``.
  """
  return jnp.matmul(cotangent, w.T, precision=_HIGHEST)


def dense_kernel_grad(x, cotangent):
  r"""Gradient of a dense layer with respect to its kernel, eq. (53).

  .. math:: \frac{\partial E}{\partial W^l_{c,o}}
            = \sum_n h^{l-1}_{n,c} \delta^l_{n,o}

  Args:
    x: the layer input ``h^{l-1}``, shape ``(..., d_in)``.
    cotangent: ``delta^l = dE/dz^l``, shape ``(..., d_out)``.

  Returns:
    ``dE/dW^l``, shape ``(d_in, d_out)``: a sum over every leading position.
  """
  x_rows = x.reshape(-1, x.shape[-1])
  cotangent_rows = cotangent.reshape(-1, cotangent.shape[-1])
  # Under explicit sharding the sum over the (sharded) rows is all-reduced:
  # the gradient is sharded like the features only.
  return _sharding.run(
      lambda h, d: jnp.matmul(h.T, d, precision=_HIGHEST),
      lambda h, d: _sharding.spec_from(2, [(0, h[-1]), (1, d[-1])]),
      x_rows, cotangent_rows)


def dense_bias_grad(cotangent):
  r"""Gradient of a dense layer with respect to its bias, eq. (54).

  .. math:: \frac{\partial E}{\partial b^l_o} = \sum_n \delta^l_{n,o}

  Args:
    cotangent: ``delta^l = dE/dz^l``, shape ``(..., d_out)``.

  Returns:
    ``dE/db^l``, shape ``(d_out,)``.
  """
  return cotangent.reshape(-1, cotangent.shape[-1]).sum(axis=0)


# -----------------------------------------------------------------------------
# Activations: h^l = f(z^l), element by element.
# -----------------------------------------------------------------------------


def relu(x):
  r"""Rectified linear unit, ``max(x, 0)``, eq. (57).

  The derivative at ``x = 0`` is taken to be 0, the choice of
  ``jax.nn.relu`` (and PyTorch): the gradient passes only where ``x > 0``.
  A NaN input gives a NaN output and a zero gradient, as in ``jax.nn.relu``.

  Args:
    x: the pre-activation ``z^l``, any shape, real floating point.

  Returns:
    ``h^l = max(z^l, 0)``, same shape and dtype.

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
#   (56)  delta^l = dE/dh^l * f'(z^l)            (f acts element by element)
#   (57)  f'(z) = 1 if z > 0 else 0  =  1 if h > 0 else 0      (f'(0) := 0)
#
# Residual: the output h^l. Since h > 0 exactly where z > 0, the output
# carries the whole mask; the next layer (a convolution, a pooling or a dense
# layer) keeps h^l as its own residual anyway, so keeping it here costs no
# memory, where a separate boolean mask would.


def _relu_fwd(x):
  output = _relu(x)
  return output, output


def _relu_bwd(output, cotangent):
  return (relu_grad(cotangent, output),)


_relu.defvjp(_relu_fwd, _relu_bwd)


def relu_grad(cotangent, output):
  r"""Gradient of relu with respect to its input, eqs. (56)-(57).

  .. math:: \delta^l = \frac{\partial E}{\partial h^l} \odot
            \mathbf{1}[h^l > 0]

  Args:
    cotangent: ``dE/dh^l``, the shape of ``output``.
    output: the relu output ``h^l``.

  Returns:
    ``delta^l = dE/dz^l``.
  """
  return jnp.where(output > 0, cotangent, jnp.zeros_like(cotangent))


def leaky_relu(x, negative_slope=0.01):
  r"""Leaky rectified linear unit, eq. (58).

  ``x`` where ``x >= 0`` and ``negative_slope * x`` elsewhere. The derivative
  at ``x = 0`` is 1, the choice of ``jax.nn.leaky_relu``.

  Args:
    x: the pre-activation ``z^l``, any shape, real floating point.
    negative_slope: the slope ``alpha`` for negative inputs, a Python real
      number. It is a fixed hyperparameter: no gradient flows to it, and it
      cannot be a traced array (a learned slope is PReLU, not provided).

  Returns:
    ``h^l``, same shape and dtype as ``x``.

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
#   (56)  delta^l = dE/dh^l * f'(z^l)
#   (58)  f'(z) = 1 if z >= 0 else alpha                        (f'(0) := 1)
#
# Residual: the boolean mask z >= 0 (one byte per element). The output alone
# would not do: with alpha <= 0 its sign does not tell z >= 0 from z < 0.
# alpha is a static Python float (nondiff_argnums), so it gets no cotangent.


def _leaky_relu_fwd(x, negative_slope):
  return _leaky_relu(x, negative_slope), x >= 0


def _leaky_relu_bwd(negative_slope, nonnegative, cotangent):
  return (leaky_relu_grad(cotangent, nonnegative, negative_slope),)


_leaky_relu.defvjp(_leaky_relu_fwd, _leaky_relu_bwd)


def leaky_relu_grad(cotangent, nonnegative, negative_slope):
  r"""Gradient of leaky relu with respect to its input, eqs. (56), (58).

  .. math:: \delta^l = \frac{\partial E}{\partial h^l} \odot
            \begin{cases} 1 & z^l \ge 0 \\ \alpha & z^l < 0 \end{cases}

  Args:
    cotangent: ``dE/dh^l``.
    nonnegative: boolean mask ``z^l >= 0``, the shape of ``cotangent``.
    negative_slope: ``alpha``, a Python float.

  Returns:
    ``delta^l = dE/dz^l``.
  """
  return jnp.where(nonnegative, cotangent, negative_slope * cotangent)


def tanh(x):
  r"""Hyperbolic tangent, eq. (59).

  Args:
    x: the pre-activation ``z^l``, any shape, real floating point.

  Returns:
    ``h^l = tanh(z^l)``, same shape and dtype.

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
#   (56)  delta^l = dE/dh^l * f'(z^l)
#   (59)  f'(z) = 1 - tanh(z)^2 = 1 - h^2
#
# Residual: the output h^l, from which (59) needs nothing else. Far out in the
# tails h rounds to +-1 and the factor to exactly 0; the true value is below
# the dtype's resolution there.


def _tanh_fwd(x):
  output = _tanh(x)
  return output, output


def _tanh_bwd(output, cotangent):
  return (tanh_grad(cotangent, output),)


_tanh.defvjp(_tanh_fwd, _tanh_bwd)


def tanh_grad(cotangent, output):
  r"""Gradient of tanh with respect to its input, eqs. (56), (59).

  .. math:: \delta^l = \frac{\partial E}{\partial h^l} \odot (1 - (h^l)^2)

  Args:
    cotangent: ``dE/dh^l``.
    output: the tanh output ``h^l``.

  Returns:
    ``delta^l = dE/dz^l``.
  """
  return cotangent * (1 - output * output)


def sigmoid(x):
  r"""Logistic sigmoid, ``1 / (1 + exp(-x))``, eq. (60).

  Computed with ``lax.logistic``, which does not overflow for large ``|x|``.

  Args:
    x: the pre-activation ``z^l``, any shape, real floating point.

  Returns:
    ``h^l = sigma(z^l)``, same shape and dtype.

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
#   (56)  delta^l = dE/dh^l * f'(z^l)
#   (60)  f'(z) = sigma(z) (1 - sigma(z)) = h (1 - h)
#
# Residual: the output h^l. In saturation h rounds to 1 (z >~ 17 in float32)
# and the factor to exactly 0; for very negative z, h (1 - h) = h stays
# accurate until h itself underflows to 0. Neither end gives inf or NaN.


def _sigmoid_fwd(x):
  output = _sigmoid(x)
  return output, output


def _sigmoid_bwd(output, cotangent):
  return (sigmoid_grad(cotangent, output),)


_sigmoid.defvjp(_sigmoid_fwd, _sigmoid_bwd)


def sigmoid_grad(cotangent, output):
  r"""Gradient of the sigmoid with respect to its input, eqs. (56), (60).

  .. math:: \delta^l = \frac{\partial E}{\partial h^l} \odot h^l (1 - h^l)

  Args:
    cotangent: ``dE/dh^l``.
    output: the sigmoid output ``h^l``.

  Returns:
    ``delta^l = dE/dz^l``.
  """
  return cotangent * (output * (1 - output))


# -----------------------------------------------------------------------------
# Losses.
# -----------------------------------------------------------------------------


def mse(predictions, targets):
  r"""Squared error, halved, summed per example and averaged over the batch.

  Implements eq. (61) of docs/derivation.md,

  .. math:: E = \frac{1}{B} \sum_{n=1}^{B} \frac{1}{2} \sum_p
            (t_{n,p} - y_{n,p})^2,

  with the batch on the first axis and ``p`` running over all the others.
  With ``B = 1`` it is the textbook ``E = 1/2 sum_p (t_p - y_p)^2``; the 1/2
  cancels the 2 of the derivative, and the 1/B keeps the gradient's scale
  independent of the batch size. It equals
  ``optax.l2_loss(y, t).sum() / B`` and is NOT ``jnp.mean((y - t) ** 2)``,
  which divides by every element and has no 1/2. An empty batch gives NaN
  (0 / 0), as ``jnp.mean`` does.

  Args:
    predictions: ``y``, shape ``(B, ...)``, real floating point.
    targets: ``t``, the shape and dtype of ``predictions``. It is
      differentiable too (eq. (63)).

  Returns:
    The scalar loss ``E``, in the arguments' dtype.

  Raises:
    TypeError: an argument is not a real floating-point array, or the dtypes
      differ.
    ValueError: ``predictions`` is 0-d, or the shapes differ.
  """
  check_same_dtype(predictions, targets, "predictions", "targets")
  _check_min_ndim(predictions, 1, "predictions", "(the first is the batch)")
  if predictions.shape != targets.shape:
    raise ValueError(
        f"`targets` must have the shape of `predictions`, "
        f"{tuple(predictions.shape)}, got {tuple(targets.shape)}.")
  return _mse(predictions, targets)


def _half_squared_error(difference):
  return 0.5 * jnp.sum(difference * difference) / difference.shape[0]


@jax.custom_vjp
def _mse(predictions, targets):
  return _half_squared_error(predictions - targets)


# Backward rule of the mean squared error, eqs. (61)-(63).
#
#   (61)  E = (1/B) sum_n 1/2 sum_p (t_{n,p} - y_{n,p})^2
#   (62)  dE/dy = (y - t) / B
#   (63)  dE/dt = (t - y) / B = -dE/dy
#
# Each is multiplied by the incoming cotangent dL/dE (1 when E is the final
# loss, eq. (69)). Residual: the difference y - t; B is static (a shape).


def _mse_fwd(predictions, targets):
  difference = predictions - targets
  return _half_squared_error(difference), difference


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


def softmax_cross_entropy(logits, labels):
  r"""Cross-entropy of the softmax of ``logits`` against integer labels.

  Implements eqs. (64)-(65) of docs/derivation.md,

  .. math:: E = \frac{1}{B} \sum_n \Big( \log \sum_q e^{z_{n,q}}
            - z_{n,t_n} \Big) = -\frac{1}{B} \sum_n \log p_{n,t_n},

  averaged over the ``B`` label positions (the batch, or every leading
  position of ``logits``). The log-sum-exp is shifted by each row's maximum,
  so large logits neither overflow nor lose the answer (eq. (64)). It equals
  ``optax.softmax_cross_entropy_with_integer_labels(z, t).mean()``.

  Labels are checked against ``[0, Q)`` when they are concrete. Under
  ``jax.jit`` they are traced and cannot be checked in Python; an
  out-of-range label (negative ones included) then makes the loss NaN, and
  its row of the gradient, so that the mistake cannot train silently.

  Args:
    logits: ``z``, shape ``(..., Q)`` for ``Q`` classes, real floating point.
    labels: the classes ``t``, an integer array of shape
      ``logits.shape[:-1]``.

  Returns:
    The scalar loss ``E``, in the dtype of ``logits``.

  Raises:
    TypeError: ``logits`` is not a real floating-point array, or ``labels``
      is not an integer array.
    ValueError: ``logits`` is 0-d or has no classes, the shapes do not match,
      or a concrete label lies outside ``[0, Q)``.
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
  if not isinstance(labels, jax.core.Tracer) and labels.size:
    values = np.asarray(labels)
    low, high = values.min(), values.max()
    if low < 0 or high >= num_classes:
      bad = low if low < 0 else high
      raise ValueError(f"`labels` must lie in [0, {num_classes}) for "
                       f"{num_classes} classes, got {int(bad)}.")
  return _softmax_cross_entropy(logits, labels)


def _one_hot(labels, num_classes, dtype):
  """Rows ``1[q = t_n]``; a row of NaN where ``t_n`` is outside ``[0, Q)``."""
  one_hot = (labels[..., None] == jnp.arange(num_classes)).astype(dtype)
  valid = (labels >= 0) & (labels < num_classes)
  return jnp.where(valid[..., None], one_hot, jnp.asarray(jnp.nan, dtype))


def _log_softmax(logits):
  # (64): log p = z - m - log sum_q exp(z_q - m), with m the row maximum. The
  # shift cancels exactly, so it carries no gradient.
  shift = lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  shifted = logits - shift
  return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))


def _cross_entropy(log_probabilities, labels):
  # (65): E = -(1/B) sum_n log p_{n,t_n}.
  one_hot = _one_hot(labels, log_probabilities.shape[-1],
                     log_probabilities.dtype)
  return -jnp.sum(one_hot * log_probabilities) / math.prod(labels.shape)


@jax.custom_vjp
def _softmax_cross_entropy(logits, labels):
  return _cross_entropy(_log_softmax(logits), labels)


# Backward rule of the softmax cross-entropy, eqs. (64)-(66).
#
#   (64)  p_{n,q} = exp(z_{n,q} - m_n) / sum_q' exp(z_{n,q'} - m_n)
#   (65)  E = -(1/B) sum_n log p_{n,t_n}
#   (66)  dE/dz_{n,q} = (p_{n,q} - 1[q = t_n]) / B
#
# times the incoming cotangent dL/dE (69). Residuals: the probabilities p and
# the labels t; B and Q are static. Labels are integers: their cotangent is
# None (a symbolic zero).


def _softmax_cross_entropy_fwd(logits, labels):
  log_probabilities = _log_softmax(logits)
  return (_cross_entropy(log_probabilities, labels),
          (jnp.exp(log_probabilities), labels))


def _softmax_cross_entropy_bwd(residuals, cotangent):
  probabilities, labels = residuals
  return (softmax_cross_entropy_grad(cotangent, probabilities, labels),
          None)


_softmax_cross_entropy.defvjp(_softmax_cross_entropy_fwd,
                              _softmax_cross_entropy_bwd)


def softmax_cross_entropy_grad(cotangent, probabilities, labels):
  r"""Gradient of :func:`softmax_cross_entropy` for the logits, eq. (66).

  .. math:: \frac{\partial E}{\partial z_{n,q}}
            = \frac{p_{n,q} - \mathbf{1}[q = t_n]}{B}

  Args:
    cotangent: the scalar ``dL/dE`` (1 for the final loss).
    probabilities: ``p = softmax(z)``, shape ``(..., Q)``.
    labels: the classes ``t``, shape ``probabilities.shape[:-1]``.

  Returns:
    ``dL/dz``, the shape of ``probabilities``.
  """
  one_hot = _one_hot(labels, probabilities.shape[-1], probabilities.dtype)
  count = math.prod(labels.shape)
  return (probabilities - one_hot) * (cotangent / count)
