"""Batch normalisation with a hand-written reverse-mode rule.

The layer and its rule are Part V of ``docs/derivation.md``, equations (76)
to (80). As everywhere in jaxconv the rule comes in three parts: the public
function validates its arguments in Python; a private ``jax.custom_vjp``
primal; its ``_fwd`` / ``_bwd`` pair, whose math lives in the public
``batch_norm_*_grad`` functions. The backward pass is ordinary differentiable
``jax.numpy``, so gradients of gradients differentiate the rule itself.

Symbols, as in the derivation: per feature, ``x_i`` runs over the ``M``
elements of the batch (every axis but the feature axis); ``mu`` and
``sigma^2`` are their mean and biased variance, ``s = 1 / sqrt(sigma^2 +
epsilon)``, ``xhat_i = (x_i - mu) s`` and ``y_i = gamma xhat_i + beta``.
"""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv._geometry import check_floating
from jaxconv._pool_windows import accumulation_dtype

__all__ = [
    "batch_norm",
    "batch_norm_input_grad",
    "batch_norm_scale_grad",
    "batch_norm_offset_grad",
]


def _check_epsilon(epsilon) -> float:
  if isinstance(epsilon, jax.core.Tracer):
    raise TypeError("`epsilon` must be a static Python number, got a traced "
                    "value; pass it as a constant (or mark it static).")
  if (isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real)
      or not epsilon >= 0):
    raise ValueError(f"`epsilon` must be a number >= 0, got {epsilon!r}.")
  return float(epsilon)


def _check_feature_axis(feature_axis, ndim: int) -> int:
  if isinstance(feature_axis, bool) or not isinstance(
      feature_axis, (int, np.integer)):
    raise TypeError(f"`feature_axis` must be a Python int, got "
                    f"{feature_axis!r}.")
  if not -ndim <= feature_axis < ndim:
    raise ValueError(f"`feature_axis` must lie in [{-ndim}, {ndim}) for an "
                     f"input of {ndim} dimensions, got {feature_axis}.")
  return int(feature_axis) % ndim


def _check_per_feature(value, name: str, features: int):
  if value is None:
    return None
  check_floating(value, name)
  if tuple(value.shape) != (features,):
    raise ValueError(f"`{name}` must have shape (features,) = ({features},), "
                     f"got {tuple(value.shape)}.")
  return value


def batch_norm(x, scale=None, offset=None, *, epsilon: float = 1e-5,
               feature_axis: int = -1, return_statistics: bool = False):
  r"""Batch normalisation with the batch's own statistics (training mode).

  Implements eqs. (76)-(77) of docs/derivation.md: per feature,

  .. math:: \mu = \frac1M \sum_i x_i, \quad
            \sigma^2 = \frac1M \sum_i (x_i - \mu)^2, \quad
            y_i = \gamma \frac{x_i - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta,

  where ``i`` runs over the ``M`` elements of every axis but
  ``feature_axis`` (the batch and the spatial positions). This is PyTorch's
  ``F.batch_norm(..., training=True)`` and Flax's ``nn.BatchNorm`` with
  ``use_running_average=False``; running averages are the caller's (from the
  returned statistics), and at inference the layer is the affine map
  ``(x - mean) / sqrt(var + epsilon) * scale + offset``.

  Args:
    x: the input, at least 2-d, real floating point. 16-bit inputs are
      normalised in float32 and the result cast back.
    scale: optional ``gamma``, shape ``(features,)``; ``None`` for 1.
    offset: optional ``beta``, shape ``(features,)``; ``None`` for 0.
    epsilon: added to the variance, a Python number >= 0 (PyTorch's and
      Flax's default, 1e-5).
    feature_axis: the axis that keeps its own statistics: ``-1`` for
      channels last (Flax), ``1`` for NCHW (PyTorch).
    return_statistics: also return the batch's mean and biased variance.

  Returns:
    ``y`` in ``x``'s dtype and shape; with ``return_statistics``, the tuple
    ``(y, mean, variance)``, the statistics of shape ``(features,)`` in
    float32 for 16-bit inputs, else in ``x``'s dtype. They are outputs like
    ``y``: a loss that uses them gets their gradient too (eq. 80).

  Raises:
    TypeError: ``x``, ``scale`` or ``offset`` is not a real floating-point
      array, or ``epsilon`` or ``feature_axis`` is traced or of the wrong
      type.
    ValueError: ``x`` has fewer than 2 dimensions or nothing to average
      over, ``feature_axis`` is out of range, ``scale`` or ``offset`` has
      the wrong shape, or ``epsilon`` is negative.

  Examples:
    >>> import jax.numpy as jnp, jaxconv
    >>> x = jnp.array([[1.0, 10.0], [3.0, 30.0]])
    >>> jaxconv.batch_norm(x, epsilon=0.0)
    Array([[-1., -1.],
           [ 1.,  1.]], dtype=float32)
  """
  check_floating(x, "x")
  if x.ndim < 2:
    raise ValueError(f"`x` must have at least 2 dimensions (a batch and a "
                     f"feature axis), got shape {tuple(x.shape)}.")
  axis = _check_feature_axis(feature_axis, x.ndim)
  features = x.shape[axis]
  if x.size == 0:
    raise ValueError(f"`x` has no elements to average over per feature "
                     f"(shape {tuple(x.shape)}, feature axis {axis}).")
  scale = _check_per_feature(scale, "scale", features)
  offset = _check_per_feature(offset, "offset", features)
  return _batch_norm(x, scale, offset, _check_epsilon(epsilon), axis,
                     bool(return_statistics))


def _per_feature(v, ndim: int, axis: int):
  """A ``(features,)`` vector shaped to broadcast along ``axis``."""
  return v.reshape([-1 if a == axis else 1 for a in range(ndim)])


def _reduced_axes(ndim: int, axis: int) -> tuple[int, ...]:
  return tuple(a for a in range(ndim) if a != axis)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _batch_norm(x, scale, offset, epsilon: float, axis: int,
                statistics: bool):
  return _batch_norm_fwd(x, scale, offset, epsilon, axis, statistics)[0]


# Backward rule of batch normalisation, eqs. (76)-(80).
#
#   forward (76):  mu = (1/M) sum_i x_i,  sigma^2 = (1/M) sum_i (x_i - mu)^2
#           (77):  xhat_i = (x_i - mu) s,  s = (sigma^2 + eps)^(-1/2),
#                  y_i = gamma xhat_i + beta
#   offset  (78):  dE/dbeta  = sum_i ybar_i
#   scale   (78):  dE/dgamma = sum_i ybar_i xhat_i
#   input   (79):  dE/dx_j = gamma s (ybar_j - dE/dbeta / M
#                                     - xhat_j dE/dgamma / M)
#   statistics (80): + mubar / M + 2 vbar (x_j - mu) / M
#
# Every x_i enters every y of its feature through mu and sigma: (79) is the
# direct term minus the two sums that carry the coupling back. Residuals:
# the input x, the statistics and gamma; xhat is recomputed (one fused
# elementwise pass) rather than kept beside x.


def _batch_norm_fwd(x, scale, offset, epsilon: float, axis: int,
                    statistics: bool):
  dtype = accumulation_dtype(x.dtype)
  xc = x.astype(dtype)
  axes = _reduced_axes(x.ndim, axis)
  mean = jnp.mean(xc, axes)
  centred = xc - _per_feature(mean, x.ndim, axis)
  variance = jnp.mean(centred * centred, axes)
  factor = lax.rsqrt(variance + epsilon)
  if scale is not None:
    factor = factor * scale.astype(dtype)
  y = centred * _per_feature(factor, x.ndim, axis)
  if offset is not None:
    y = y + _per_feature(offset.astype(dtype), x.ndim, axis)
  y = y.astype(x.dtype)
  # Without the statistics as outputs, the rule has no zero cotangents of
  # them to add (eq. 80).
  return ((y, mean, variance) if statistics else y,
          (x, mean, variance, scale, offset))


def _batch_norm_bwd(epsilon: float, axis: int, statistics: bool, residuals,
                    cotangents):
  x, mean, variance, scale, offset = residuals
  y_bar, mean_bar, variance_bar = (cotangents if statistics
                                   else (cotangents, None, None))
  # (78) and (79) share their two sums: computed once, here.
  dx, dscale, doffset = _gradients(y_bar, x, mean, variance, scale, epsilon,
                                   axis, mean_bar, variance_bar)
  return (dx,
          None if scale is None else dscale.astype(scale.dtype),
          None if offset is None else doffset.astype(offset.dtype))


_batch_norm.defvjp(_batch_norm_fwd, _batch_norm_bwd)


def _normalized(x, mean, variance, epsilon, axis, dtype):
  """``xhat`` and ``s`` of eq. (77), in ``dtype``."""
  inv_std = lax.rsqrt(variance.astype(dtype) + epsilon)
  xhat = ((x.astype(dtype) - _per_feature(mean.astype(dtype), x.ndim, axis))
          * _per_feature(inv_std, x.ndim, axis))
  return xhat, inv_std


def batch_norm_offset_grad(cotangent, *, feature_axis: int = -1):
  r"""Gradient of batch normalisation with respect to its offset, eq. (78).

  .. math:: \frac{\partial E}{\partial \beta} = \sum_i \bar y_i

  Args:
    cotangent: ``dE/dy``, the shape of the layer's input.
    feature_axis: the feature axis.

  Returns:
    ``dE/dbeta``, shape ``(features,)``, in float32 for 16-bit cotangents.
  """
  axis = _check_feature_axis(feature_axis, cotangent.ndim)
  return jnp.sum(cotangent.astype(accumulation_dtype(cotangent.dtype)),
                 _reduced_axes(cotangent.ndim, axis))


def batch_norm_scale_grad(cotangent, x, mean, variance, *,
                          epsilon: float = 1e-5, feature_axis: int = -1):
  r"""Gradient of batch normalisation with respect to its scale, eq. (78).

  .. math:: \frac{\partial E}{\partial \gamma} = \sum_i \bar y_i \hat x_i

  Args:
    cotangent: ``dE/dy``, the shape of ``x``.
    x: the layer's input.
    mean, variance: the batch statistics of the forward pass (eq. 76).
    epsilon: the forward pass's epsilon.
    feature_axis: the feature axis.

  Returns:
    ``dE/dgamma``, shape ``(features,)``, in float32 for 16-bit inputs.
  """
  axis = _check_feature_axis(feature_axis, x.ndim)
  dtype = accumulation_dtype(x.dtype)
  xhat, _ = _normalized(x, mean, variance, epsilon, axis, dtype)
  return jnp.sum(cotangent.astype(dtype) * xhat, _reduced_axes(x.ndim, axis))


def batch_norm_input_grad(cotangent, x, mean, variance, scale=None, *,
                          epsilon: float = 1e-5, feature_axis: int = -1,
                          mean_cotangent=None, variance_cotangent=None):
  r"""Gradient of batch normalisation with respect to its input, eqs.
  (79)-(80).

  .. math:: \frac{\partial E}{\partial x_j} = \gamma s \Big(\bar y_j
            - \frac1M \sum_i \bar y_i - \hat x_j \frac1M \sum_i \bar y_i
            \hat x_i\Big) + \frac{\bar\mu}{M}
            + \frac{2 \bar v (x_j - \mu)}{M}

  Args:
    cotangent: ``dE/dy``, the shape of ``x``.
    x: the layer's input.
    mean, variance: the batch statistics of the forward pass (eq. 76).
    scale: ``gamma``, or ``None`` for 1.
    epsilon: the forward pass's epsilon.
    feature_axis: the feature axis.
    mean_cotangent, variance_cotangent: ``dE/dmu`` and ``dE/dsigma^2``
      where the loss uses the returned statistics (eq. 80); ``None`` for 0.

  Returns:
    ``dE/dx`` in ``x``'s dtype and shape.
  """
  axis = _check_feature_axis(feature_axis, x.ndim)
  return _gradients(cotangent, x, mean, variance, scale, epsilon, axis,
                    mean_cotangent, variance_cotangent)[0]


def _gradients(cotangent, x, mean, variance, scale, epsilon, axis,
               mean_cotangent, variance_cotangent):
  """``(dE/dx, dE/dgamma, dE/dbeta)`` of eqs. (78)-(80), each sum once;
  ``dE/dx`` in ``x``'s dtype, the others in the accumulation dtype."""
  dtype = accumulation_dtype(x.dtype)
  axes = _reduced_axes(x.ndim, axis)
  m = x.size // x.shape[axis]
  xhat, inv_std = _normalized(x, mean, variance, epsilon, axis, dtype)
  g = cotangent.astype(dtype)
  offset_grad = jnp.sum(g, axes)
  scale_grad = jnp.sum(g * xhat, axes)
  factor = inv_std if scale is None else inv_std * scale.astype(dtype)
  dx = _per_feature(factor, x.ndim, axis) * (
      g - _per_feature(offset_grad / m, x.ndim, axis)
      - xhat * _per_feature(scale_grad / m, x.ndim, axis))
  if mean_cotangent is not None:
    dx = dx + _per_feature(mean_cotangent.astype(dtype) / m, x.ndim, axis)
  if variance_cotangent is not None:
    # 2 (x_j - mu) / M = 2 xhat_j / (s M).
    dx = dx + xhat * _per_feature(
        2 * variance_cotangent.astype(dtype) / (inv_std * m), x.ndim, axis)
  return dx.astype(x.dtype), scale_grad, offset_grad
