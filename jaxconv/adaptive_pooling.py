"""N-D adaptive and global pooling with hand-derived gradients.

Adaptive pooling fixes the output size instead of the window: along a
dimension of ``n`` inputs pooled to ``m`` outputs, window ``i`` covers
``[floor(i n / m), ceil((i + 1) n / m))`` (PyTorch's rule, eq. (49) of
``docs/derivation.md``). Windows may differ in length by one, may overlap by
one element, and ``m > n`` repeats elements. Global pooling is adaptive
pooling to one element per dimension.

The layout is that of :mod:`jaxconv.pooling`: ``(batch..., *spatial,
features)`` with zero or more leading batch axes; here the length of
``output_size`` (or ``num_spatial_dims``) sets the number of spatial axes.

Each rule has three parts, as in :mod:`jaxconv.pooling`: the documented public
function, a private ``@jax.custom_vjp`` primal on canonical ``(batch,
*spatial, features)`` arrays, and its ``_fwd``/``_bwd`` right underneath; the
math of each forward and each gradient is a named function. The windows of a
dimension are static NumPy tables (:func:`~jaxconv._pool_windows.adaptive_taps`
for the forward, :func:`~jaxconv._pool_windows.adaptive_containing` for the
backward), so every gather below has static indices; where the windows are
equal and disjoint (``n`` a multiple of ``m``, global pooling among them) the
gathers are reshapes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv import _pool_windows as windows
from jaxconv import _sharding
from jaxconv._pool_windows import AdaptiveGeometry

__all__ = [
    "adaptive_avg_pool",
    "adaptive_max_pool",
    "adaptive_max_pool_with_indices",
    "global_avg_pool",
    "global_max_pool",
    "adaptive_avg_pool_grad",
    "adaptive_max_pool_grad",
    "global_avg_pool_grad",
    "global_max_pool_grad",
]


# ============================================================================
# Boundary helpers: validation and layout.
# ============================================================================


def _prepare(x, output_size, *, allow_complex, operation):
  """Validates ``x`` and ``output_size``; returns canonical x and geometry."""
  windows.check_dtype(x, "x", allow_complex=allow_complex, operation=operation)
  x = jnp.asarray(x)
  geometry = windows.adaptive_geometry(x.shape, output_size)
  batch_shape = x.shape[:x.ndim - geometry.rank - 1]
  return windows.to_canonical(x, geometry.rank), geometry, batch_shape


def _prepare_with_cotangent(x, cotangent, output_size, *, allow_complex,
                            operation, read_values):
  """Like :func:`_prepare`, also checking ``cotangent`` against the output.

  With ``read_values=False`` only ``x.shape`` and ``x.dtype`` are used, so a
  ``jax.ShapeDtypeStruct`` is accepted.
  """
  dtype = windows.check_dtype(x, "x", allow_complex=allow_complex,
                              operation=operation)
  geometry = windows.adaptive_geometry(x.shape, output_size)
  rank = geometry.rank
  batch_shape = tuple(x.shape[:len(x.shape) - rank - 1])
  expected = batch_shape + geometry.out_sizes + (x.shape[-1],)
  windows.check_cotangent(cotangent, dtype, expected,
                          allow_complex=allow_complex, operation=operation)
  cotangent = windows.to_canonical(jnp.asarray(cotangent, dtype), rank)
  if read_values:
    x = windows.to_canonical(jnp.asarray(x), rank)
  return x, cotangent, geometry, batch_shape


def _global_output_size(x, num_spatial_dims, *, allow_complex, operation):
  """``(1,) * num_spatial_dims`` after checking it and ``x``."""
  windows.check_dtype(x, "x", allow_complex=allow_complex, operation=operation)
  if isinstance(num_spatial_dims, jax.core.Tracer):
    raise TypeError(
        "`num_spatial_dims` must be a static Python int, got a traced value: "
        "it sets the output's shape, so it must be known while tracing.")
  if isinstance(num_spatial_dims, (bool, np.bool_)) or not isinstance(
      num_spatial_dims, (int, np.integer)):
    raise TypeError(
        "`num_spatial_dims` must be a Python int (it is static), got "
        f"{num_spatial_dims!r} (type {type(num_spatial_dims).__name__}).")
  ndim = len(getattr(x, "shape", ()))
  if not 1 <= num_spatial_dims <= ndim - 1:
    raise ValueError(
        f"`num_spatial_dims` must be between 1 and {max(ndim - 1, 0)} for `x` "
        f"with {ndim} axes (the layout is (batch..., *spatial, features)), "
        f"got {num_spatial_dims}.")
  return (1,) * int(num_spatial_dims)


def _squeeze_global(y, num_spatial_dims, keepdims):
  """Drops the size-1 spatial axes of a global pool unless ``keepdims``."""
  if keepdims:
    return y
  axes = tuple(range(y.ndim - 1 - num_spatial_dims, y.ndim - 1))
  return jnp.squeeze(y, axes)


def _global_cotangent(x, cotangent, num_spatial_dims, keepdims):
  """The cotangent of a global pool with its size-1 spatial axes restored."""
  windows.check_flag(keepdims, "keepdims")
  shape = getattr(cotangent, "shape", None)
  if keepdims or shape is None:
    return cotangent
  ndim = len(x.shape)
  expected = tuple(x.shape[:ndim - num_spatial_dims - 1]) + x.shape[-1:]
  if tuple(shape) != expected:
    raise ValueError(
        f"`cotangent` must have the pooled output's shape {expected} "
        f"(keepdims=False), got {tuple(shape)}.")
  return jnp.reshape(jnp.asarray(cotangent), expected[:-1] + (1,) * (
      num_spatial_dims) + expected[-1:])


# ============================================================================
# The two gathers, along one spatial axis, with static tables.
# ============================================================================


def _gather_windows(v, axis: int, n: int, m: int, fill):
  """The taps of every window along ``axis``: ``(..., m, K, ...)``.

  ``out[..., i, k, ...] = v[..., start[i] + k, ...]`` for the taps of window
  ``i`` and ``fill`` past its end (eq. (49)); a reshape when the windows
  partition the axis.
  """
  if windows.is_partition(n, m):
    return v.reshape(v.shape[:axis] + (m, n // m) + v.shape[axis + 1:])
  positions, _ = windows.adaptive_taps(n, m)
  taken = jnp.take(v, jnp.asarray(positions.reshape(-1), np.int32), axis=axis,
                   mode="fill", fill_value=fill)
  return taken.reshape(v.shape[:axis] + positions.shape + v.shape[axis + 1:])


def _gather_containing(v, axis: int, n: int, m: int, fill):
  """Every window containing each input position: ``(..., n, J, ...)``.

  ``out[..., j, r, ...] = v[..., i_r(j), ...]`` for the windows ``i_r(j)``
  that contain input position ``j``, and ``fill`` where ``j`` lies in fewer
  than ``J`` windows: the transpose of :func:`_gather_windows`'s table. A
  broadcast when the windows partition the axis (``J = 1``).
  """
  if windows.is_partition(n, m):
    size = n // m
    wide = jnp.expand_dims(v, axis + 1)
    shape = wide.shape[:axis + 1] + (size,) + wide.shape[axis + 2:]
    repeated = jnp.broadcast_to(wide, shape).reshape(
        v.shape[:axis] + (n,) + v.shape[axis + 1:])
    return jnp.expand_dims(repeated, axis + 1)
  containing = windows.adaptive_containing(n, m)
  taken = jnp.take(v, jnp.asarray(containing.reshape(-1), np.int32),
                   axis=axis, mode="fill", fill_value=fill)
  return taken.reshape(v.shape[:axis] + containing.shape + v.shape[axis + 1:])


def _along(table: np.ndarray, axis: int, ndim: int, dtype) -> jax.Array:
  """A 1-D static table shaped to broadcast along ``axis`` of ``ndim`` axes."""
  shape = [1] * ndim
  shape[axis] = -1
  return jnp.asarray(table.reshape(shape), dtype)


# ============================================================================
# Adaptive average pooling.
# ============================================================================


def adaptive_avg_pool(x, output_size):
  """Adaptive average pooling to a given output size, eq. (49).

  Along a spatial dimension of ``n`` inputs pooled to ``m`` outputs, output
  ``i`` averages the window ``[floor(i n / m), ceil((i + 1) n / m))``;
  in several dimensions the window is the box of these and its divisor the
  product of their lengths -- PyTorch's ``adaptive_avg_pool{1,2,3}d`` in any
  number of dimensions. ``m`` may exceed ``n`` (windows then share
  elements). The gradient spreads ``delta[i] / |window i|`` over the window;
  the backward keeps nothing but the static sizes.

  Complex inputs are averaged as they are; the gradient is the transpose of
  the (real) linear map, without conjugation, as JAX does for linear maps.

  Args:
    x: input of shape ``(batch..., *spatial, features)``, floating point or
      complex, with no empty spatial axis.
    output_size: one entry per spatial dimension (its length sets the number
      of spatial dimensions): an int ``>= 0``, or ``None`` to keep that
      dimension's size.

  Returns:
    ``(batch..., *output_size, features)`` in ``x``'s dtype (summed in float32
    for 16-bit dtypes).

  Raises:
    TypeError: ``x`` is not a floating-point or complex array, or
      ``output_size`` is not a sequence of ints and ``None``.
    ValueError: a negative output size, more entries than spatial axes, or an
      empty spatial axis.
  """
  xc, geometry, batch_shape = _prepare(x, output_size, allow_complex=True,
                                       operation="adaptive average pooling")
  y = _adaptive_avg_pool(xc, geometry)
  return windows.from_canonical(y, batch_shape)


def adaptive_avg_pool_grad(x, cotangent, output_size):
  """The input gradient of :func:`adaptive_avg_pool`, eq. (49).

  ``dE/dx[j] = sum over the windows i that contain j of delta[i] / |window
  i|``. Linear in the cotangent; it does not depend on the values of ``x``.

  Args:
    x: the primal input or anything with its ``shape`` and ``dtype`` (e.g. a
      ``jax.ShapeDtypeStruct``); only those are read.
    cotangent: the cotangent of the output, ``(batch..., *output_size,
      features)``; complex only for a complex ``x``.
    output_size: as in :func:`adaptive_avg_pool`.

  Returns:
    The gradient with respect to ``x``: ``x``'s shape and dtype.
  """
  _, ct, geometry, batch_shape = _prepare_with_cotangent(
      x, cotangent, output_size, allow_complex=True,
      operation="adaptive average pooling", read_values=False)
  dx = spread_over_adaptive_windows(ct, geometry)
  return windows.from_canonical(dx, batch_shape)


# ----------------------------------------------------------------------------
# Rule: adaptive average pooling.
#
#   Forward (49): along a dimension of n inputs and m outputs, window i is
#   W(i) = [floor(i n / m), ceil((i + 1) n / m)), of length L(i). The window
#   of output (i_1, ..., i_r) is the box W_1(i_1) x ... x W_r(i_r) and
#       y[i] = (1 / prod_d L_d(i_d)) sum over j in the box of x[j].
#   The box sum and the product divisor factor by dimension, so y is the
#   per-dimension averages applied one after the other:
#       y = A_r ... A_1 x,   A_d[i, j] = [j in W_d(i)] / L_d(i).
#
#   Backward (49): y is linear in x, so its VJP is the transpose
#       dE/dx = A_1^T ... A_r^T delta,
#       (A_d^T g)[j] = sum over i in W*_d(j) of g[i] / L_d(i),
#   i.e. every window spreads delta[i] / |box| over its box. The windows
#   containing j are W*(j) = [floor(j m / n), ceil((j + 1) m / n)) -- (49)
#   with n and m exchanged, at most ceil(m / n) + 1 of them (2 when m <= n)
#   -- read with a static gather: the backward gathers, it never scatters.
#   Complex x: A is real and JAX's VJP of a linear map is its transpose,
#   without conjugation -- the same formula.
#
#   Residuals: none (the tables are functions of the static sizes).
#   Second order: the backward is linear in delta and constant in x.
# ----------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _adaptive_avg_pool(x, geometry: AdaptiveGeometry):
  return adaptive_average(x, geometry)


def _adaptive_avg_pool_fwd(x, geometry):
  return _adaptive_avg_pool(x, geometry), None


def _adaptive_avg_pool_bwd(geometry, residuals, cotangent):
  del residuals  # Nothing is kept.
  return (spread_over_adaptive_windows(cotangent, geometry),)


_adaptive_avg_pool.defvjp(_adaptive_avg_pool_fwd, _adaptive_avg_pool_bwd)


@_sharding.keeps_batch_and_features
@functools.partial(jax.jit, static_argnames=("geometry",))
def adaptive_average(x, geometry: AdaptiveGeometry):
  """Eq. (49), forward: ``y = A_r ... A_1 x``, one dimension at a time.

  Args:
    x: canonical input ``(batch, *in_sizes, features)``.
    geometry: the adaptive geometry.

  Returns:
    ``(batch, *out_sizes, features)`` in ``x``'s dtype.
  """
  dtype = windows.accumulation_dtype(x.dtype)
  value = x.astype(dtype)
  for dim, (n, m) in enumerate(zip(geometry.in_sizes, geometry.out_sizes)):
    axis = dim + 1
    _, lengths = windows.adaptive_taps(n, m)
    total = jnp.sum(_gather_windows(value, axis, n, m, 0), axis=axis + 1)
    value = total / _along(lengths, axis, total.ndim,
                           windows.real_dtype(dtype))
  return value.astype(x.dtype)


@_sharding.keeps_batch_and_features
@functools.partial(jax.jit, static_argnames=("geometry",))
def spread_over_adaptive_windows(cotangent, geometry: AdaptiveGeometry):
  """Eq. (49), backward: ``dE/dx = A_1^T ... A_r^T delta``.

  Args:
    cotangent: canonical ``(batch, *out_sizes, features)``.
    geometry: the adaptive geometry.

  Returns:
    ``(batch, *in_sizes, features)`` in the cotangent's dtype.
  """
  dtype = windows.accumulation_dtype(cotangent.dtype)
  value = cotangent.astype(dtype)
  for dim, (n, m) in enumerate(zip(geometry.in_sizes, geometry.out_sizes)):
    axis = dim + 1
    _, lengths = windows.adaptive_taps(n, m)
    share = value / _along(lengths, axis, value.ndim,
                           windows.real_dtype(dtype))
    value = jnp.sum(_gather_containing(share, axis, n, m, 0), axis=axis + 1)
  return value.astype(cotangent.dtype)


# ============================================================================
# Adaptive max pooling.
# ============================================================================


def adaptive_max_pool(x, output_size):
  """Adaptive max pooling to a given output size, eq. (49).

  The windows are those of :func:`adaptive_avg_pool` (PyTorch's); each
  outputs its largest element. The gradient routes each window's cotangent
  to its first maximum in row-major window order, overlapping windows adding
  up; a window holding NaN outputs NaN and routes to its first NaN; a window
  of ``-inf`` routes to its first element -- the conventions of
  :func:`jaxconv.max_pool`. The backward keeps one int32 index per output
  element.

  Args:
    x: input of shape ``(batch..., *spatial, features)``, real floating
      point, with no empty spatial axis.
    output_size: one entry per spatial dimension (its length sets the number
      of spatial dimensions): an int ``>= 0``, or ``None`` to keep that
      dimension's size.

  Returns:
    ``(batch..., *output_size, features)`` in ``x``'s dtype.

  Raises:
    TypeError: ``x`` is not a real floating-point array (complex numbers have
      no order), or ``output_size`` is not a sequence of ints and ``None``.
    ValueError: as :func:`adaptive_avg_pool`.
  """
  xc, geometry, batch_shape = _prepare(x, output_size, allow_complex=False,
                                       operation="adaptive max pooling")
  y, _ = _adaptive_max_pool(xc, geometry)
  return windows.from_canonical(y, batch_shape)


def adaptive_max_pool_with_indices(x, output_size):
  """Adaptive max pooling that also returns where each maximum came from.

  The index of a window's winner is its flat row-major position in the
  spatial axes of the input, per batch element and feature (eq. (47)), as
  PyTorch's ``return_indices=True`` gives it: :func:`jaxconv.max_unpool` with
  the input's spatial shape puts the maxima back. The values are
  differentiable exactly as :func:`adaptive_max_pool`.

  Args:
    x: input of shape ``(batch..., *spatial, features)``, real floating
      point.
    output_size: as in :func:`adaptive_max_pool`.

  Returns:
    ``(values, indices)``, both ``(batch..., *output_size, features)``;
    ``indices`` is int32 (int64 when the spatial size needs it, which requires
    ``jax_enable_x64``).

  Raises:
    TypeError, ValueError: as :func:`adaptive_max_pool`.
  """
  xc, geometry, batch_shape = _prepare(x, output_size, allow_complex=False,
                                       operation="adaptive max pooling")
  y, indices = _adaptive_max_pool(xc, geometry)
  return (windows.from_canonical(y, batch_shape),
          windows.from_canonical(indices, batch_shape))


def adaptive_max_pool_grad(x, cotangent, output_size):
  """The input gradient of :func:`adaptive_max_pool`, eq. (49).

  ``dE/dx[j] = sum over the windows i whose first winner is j of
  delta[i]``. Jit-able and differentiable (linear in ``cotangent``; zero
  derivative in ``x`` almost everywhere).

  Args:
    x: the primal input, ``(batch..., *spatial, features)``.
    cotangent: the cotangent of the output, ``(batch..., *output_size,
      features)``.
    output_size: as in :func:`adaptive_max_pool`.

  Returns:
    The gradient with respect to ``x``, same shape and dtype as ``x``.
  """
  xc, ct, geometry, batch_shape = _prepare_with_cotangent(
      x, cotangent, output_size, allow_complex=False,
      operation="adaptive max pooling", read_values=True)
  _, indices = adaptive_maxima(lax.stop_gradient(xc), geometry)
  dx = route_to_adaptive_winners(ct, indices, geometry)
  return windows.from_canonical(dx, batch_shape)


# ----------------------------------------------------------------------------
# Rule: adaptive max pooling.
#
#   Forward (49): y[i] = max over the box W_1(i_1) x ... x W_r(i_r) of x[j],
#   with the first winner in row-major order (the conventions (34), (35) of
#   max pooling: a NaN beats every number and the first NaN is kept; ties go
#   to the first). The box maximum is taken one dimension at a time, from
#   the last to the first: reducing the last dimension leaves, for every
#   row, its maximum and its first winner; the first dimension's reduction
#   then picks the first row holding the overall maximum, whose own winner is
#   the first in row-major order. Taps past a window's end read -inf and
#   come after its real taps, so they never win, not even against -inf.
#   The winner is recorded as its flat input index iota(i) (47).
#
#   Backward (49) with (36): locally y[i] = x[iota(i)], so
#       dE/dx[j] = sum over i in W*(j) of delta[i] [iota(i) = j]
#   -- each delta goes to its winner; overlapping windows add up. Computed
#   as a gather: position j reads (delta, iota) of the windows containing it,
#   the box W*_1(j_1) x ... x W*_r(j_r), and keeps the deltas whose iota is
#   j.
#
#   Residuals: iota, one int32 per output element; neither x nor y.
#   Second order (45): the backward is linear in delta with integer data
#   iota, so differentiating it again is exact.
# ----------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _adaptive_max_pool(x, geometry: AdaptiveGeometry):
  return adaptive_maxima(x, geometry)


def _adaptive_max_pool_fwd(x, geometry):
  y, indices = _adaptive_max_pool(x, geometry)
  return (y, indices), indices


def _adaptive_max_pool_bwd(geometry, indices, cotangents):
  cotangent, _ = cotangents  # The indices are integers: no cotangent.
  return (route_to_adaptive_winners(cotangent, indices, geometry),)


_adaptive_max_pool.defvjp(_adaptive_max_pool_fwd, _adaptive_max_pool_bwd)


def _first_maximum(values, axis: int):
  """The maximum along ``axis`` and the position of its first occurrence.

  One variadic reduction over ``(value, position)`` pairs, ordered so that a
  NaN beats every number, a larger value beats a smaller one, and on a tie
  (two NaNs included) the earlier position wins: a total order, so the
  result does not depend on how the reduction is split.

  Returns:
    ``(best, position)``: ``values``' dtype and int32, ``axis`` removed.
  """
  size = values.shape[axis]
  positions = lax.broadcasted_iota(jnp.int32, values.shape, axis)

  def better(a, b):
    value_a, position_a = a
    value_b, position_b = b
    nan_a, nan_b = value_a != value_a, value_b != value_b
    earlier = position_b < position_a
    take_b = jnp.where(
        nan_a | nan_b, nan_b & (~nan_a | earlier),
        (value_b > value_a) | ((value_b == value_a) & earlier))
    return (jnp.where(take_b, value_b, value_a),
            jnp.where(take_b, position_b, position_a))

  init = (jnp.array(-jnp.inf, values.dtype), jnp.array(size, jnp.int32))
  return lax.reduce((values, positions), init, better, (axis,))


@_sharding.keeps_batch_and_features
@functools.partial(jax.jit, static_argnames=("geometry",))
def adaptive_maxima(x, geometry: AdaptiveGeometry):
  """Eq. (49), forward: box maxima and the flat indices of their winners.

  Args:
    x: canonical input ``(batch, *in_sizes, features)``.
    geometry: the adaptive geometry.

  Returns:
    ``(y, indices)``: the maxima ``(batch, *out_sizes, features)`` in ``x``'s
    dtype and the flat row-major spatial index (47) of each first winner.
  """
  index_dtype = windows.flat_index_dtype(geometry.in_sizes)
  value, index = x, None
  place = 1  # prod of the input sizes of the dimensions already reduced
  for dim in reversed(range(geometry.rank)):
    axis = dim + 1
    n, m = geometry.in_sizes[dim], geometry.out_sizes[dim]
    value, winner = _first_maximum(
        _gather_windows(value, axis, n, m, -jnp.inf), axis + 1)
    starts, _ = windows.adaptive_bounds(n, m)
    position = (_along(starts, axis, value.ndim, index_dtype)
                + winner.astype(index_dtype))
    if index is None:
      index = position
    else:
      # The winner's index within the dimensions reduced before.
      inner = _gather_windows(index, axis, n, m, 0)
      inner = jnp.take_along_axis(inner, jnp.expand_dims(winner, axis + 1),
                                  axis=axis + 1).squeeze(axis + 1)
      index = position * place + inner
    place *= n
  return value, index


@_sharding.keeps_batch_and_features
@functools.partial(jax.jit, static_argnames=("geometry",))
def route_to_adaptive_winners(cotangent, indices, geometry: AdaptiveGeometry):
  """Eq. (49) with (36): each window's cotangent goes to its winner.

  Args:
    cotangent: canonical ``(batch, *out_sizes, features)``.
    indices: the flat winner indices from :func:`adaptive_maxima`.
    geometry: the adaptive geometry.

  Returns:
    The input gradient ``(batch, *in_sizes, features)`` in the cotangent's
    dtype (summed in float32 for 16-bit dtypes).
  """
  dtype = windows.accumulation_dtype(cotangent.dtype)
  g = cotangent.astype(dtype)
  iota = indices
  # Expand one dimension at a time: (B, n_1, J_1, ..., n_d, J_d, m_d+1, ...).
  for dim, (n, m) in enumerate(zip(geometry.in_sizes, geometry.out_sizes)):
    axis = 2 * dim + 1
    g = _gather_containing(g, axis, n, m, 0)
    iota = _gather_containing(iota, axis, n, m, -1)
  # The flat index (47) of every input position j, on the same axes.
  flat = jnp.zeros((), iota.dtype)
  for dim, n in enumerate(geometry.in_sizes):
    flat = flat * n + lax.broadcasted_iota(iota.dtype, iota.shape, 2 * dim + 1)
  rank = geometry.rank
  hits = jnp.where(iota == flat, g, jnp.zeros((), dtype))
  dx = jnp.sum(hits, axis=tuple(2 * dim + 2 for dim in range(rank)))
  return dx.astype(cotangent.dtype)


# ============================================================================
# Global pooling.
# ============================================================================


def global_avg_pool(x, num_spatial_dims, *, keepdims=False):
  """The mean over all spatial positions: adaptive average pooling to 1.

  ``y[b, c] = mean over j of x[b, j, c]``, the rule of
  :func:`adaptive_avg_pool` with one window per dimension (eq. (49) with
  ``m = 1``): the gradient is ``delta / prod(spatial)`` everywhere.

  Args:
    x: input of shape ``(batch..., *spatial, features)``, floating point or
      complex, with no empty spatial axis.
    num_spatial_dims: how many axes before the last are spatial; a Python
      int between 1 and ``x.ndim - 1``.
    keepdims: keep the pooled spatial axes, with size 1 (the shape
      ``adaptive_avg_pool(x, (1,) * num_spatial_dims)`` returns).

  Returns:
    ``(batch..., features)``, or ``(batch..., 1, ..., 1, features)`` with
    ``keepdims``, in ``x``'s dtype.

  Raises:
    TypeError: ``x`` is not a floating-point or complex array,
      ``num_spatial_dims`` is not an int or ``keepdims`` not a bool.
    ValueError: ``num_spatial_dims`` out of range, or an empty spatial axis.
  """
  keepdims = windows.check_flag(keepdims, "keepdims")
  output_size = _global_output_size(x, num_spatial_dims, allow_complex=True,
                                    operation="global average pooling")
  y = adaptive_avg_pool(x, output_size)
  return _squeeze_global(y, len(output_size), keepdims)


def global_avg_pool_grad(x, cotangent, num_spatial_dims, *, keepdims=False):
  """The input gradient of :func:`global_avg_pool`.

  ``dE/dx[b, j, c] = delta[b, c] / prod(spatial)``, eq. (49) with ``m = 1``.

  Args:
    x: the primal input or anything with its ``shape`` and ``dtype``.
    cotangent: the cotangent of the output, ``(batch..., features)`` (with
      ``keepdims``: ``(batch..., 1, ..., 1, features)``).
    num_spatial_dims: as in :func:`global_avg_pool`.
    keepdims: as in :func:`global_avg_pool`.

  Returns:
    The gradient with respect to ``x``: ``x``'s shape and dtype.
  """
  output_size = _global_output_size(x, num_spatial_dims, allow_complex=True,
                                    operation="global average pooling")
  cotangent = _global_cotangent(x, cotangent, len(output_size), keepdims)
  return adaptive_avg_pool_grad(x, cotangent, output_size)


def global_max_pool(x, num_spatial_dims, *, keepdims=False):
  """The maximum over all spatial positions: adaptive max pooling to 1.

  The rule of :func:`adaptive_max_pool` with one window per dimension: the
  gradient goes to the first maximum in row-major order (the first NaN, if
  any), as in :func:`jaxconv.max_pool`.

  Args:
    x: input of shape ``(batch..., *spatial, features)``, real floating
      point, with no empty spatial axis.
    num_spatial_dims: how many axes before the last are spatial; a Python
      int between 1 and ``x.ndim - 1``.
    keepdims: keep the pooled spatial axes, with size 1.

  Returns:
    ``(batch..., features)``, or ``(batch..., 1, ..., 1, features)`` with
    ``keepdims``, in ``x``'s dtype.

  Raises:
    TypeError: ``x`` is not a real floating-point array,
      ``num_spatial_dims`` is not an int or ``keepdims`` not a bool.
    ValueError: ``num_spatial_dims`` out of range, or an empty spatial axis.
  """
  keepdims = windows.check_flag(keepdims, "keepdims")
  output_size = _global_output_size(x, num_spatial_dims, allow_complex=False,
                                    operation="global max pooling")
  y = adaptive_max_pool(x, output_size)
  return _squeeze_global(y, len(output_size), keepdims)


def global_max_pool_grad(x, cotangent, num_spatial_dims, *, keepdims=False):
  """The input gradient of :func:`global_max_pool`.

  ``delta[b, c]`` at the first maximum of ``x[b, :, c]``, zero elsewhere.

  Args:
    x: the primal input, ``(batch..., *spatial, features)``.
    cotangent: the cotangent of the output, ``(batch..., features)`` (with
      ``keepdims``: ``(batch..., 1, ..., 1, features)``).
    num_spatial_dims: as in :func:`global_max_pool`.
    keepdims: as in :func:`global_max_pool`.

  Returns:
    The gradient with respect to ``x``, same shape and dtype as ``x``.
  """
  output_size = _global_output_size(x, num_spatial_dims, allow_complex=False,
                                    operation="global max pooling")
  cotangent = _global_cotangent(x, cotangent, len(output_size), keepdims)
  return adaptive_max_pool_grad(x, cotangent, output_size)

