"""N-D max, min, average and Lp pooling with hand-derived gradients.

Every public pooling function takes Flax's layout -- ``(batch..., *spatial,
features)`` with zero or more leading batch axes, ``window_shape`` over the
spatial axes only, strides defaulting to 1 -- and carries a ``jax.custom_vjp``
rule written from the textbook derivation (Part II -- Pooling of
``docs/derivation.md``, equations (30)-(48)): max and min pooling route
each window's cotangent to its first winner, average pooling spreads it over
the window, Lp pooling scales it by ``sign(x) (|x| / y)^(p-1)``. The gradient
pieces are public functions of their own (``max_pool_grad``,
``avg_pool_grad``, ...), jit-able and differentiable, so second derivatives
work too. Adaptive and global pooling, whose windows follow from the output
size, live in :mod:`jaxconv.adaptive_pooling`.

Each rule below has three parts: the documented public function, a private
``@jax.custom_vjp`` primal on canonical ``(batch, *spatial, features)`` arrays,
and its ``_fwd``/``_bwd`` right underneath. The math of each forward and each
gradient is a named function; ``_bwd`` only unpacks residuals and calls it.
The geometry is validated and normalised once, at the public boundary, into a
hashable :class:`~jaxconv._pool_windows.PoolGeometry` that the rules trust.
"""

from __future__ import annotations

import functools
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv import _geometry, _sharding
from jaxconv import _pool_windows as windows
from jaxconv._pool_windows import PoolGeometry

__all__ = [
    "max_pool",
    "min_pool",
    "avg_pool",
    "lp_pool",
    "max_pool_with_indices",
    "max_unpool",
    "max_pool_grad",
    "min_pool_grad",
    "avg_pool_grad",
    "lp_pool_grad",
    "max_unpool_grad",
]

_MAX = "max"
_MIN = "min"


# ============================================================================
# Boundary helpers: validation and layout.
# ============================================================================


def _prepare(x, window_shape, strides, padding, dilation, ceil_mode, *,
             forbid_empty_windows=False, allow_complex=False,
             operation="pooling"):
  """Validates ``x`` and the geometry; returns canonical x and the geometry."""
  windows.check_dtype(x, "x", allow_complex=allow_complex, operation=operation)
  x = jnp.asarray(x)
  geometry = windows.pool_geometry(
      x.shape, window_shape, strides, padding, dilation, ceil_mode,
      forbid_empty_windows=forbid_empty_windows)
  batch_shape = x.shape[:x.ndim - geometry.rank - 1]
  return windows.to_canonical(x, geometry.rank), geometry, batch_shape


def _prepare_with_cotangent(x, cotangent, window_shape, strides, padding,
                            dilation, ceil_mode, *, forbid_empty_windows=False,
                            read_values=True, allow_complex=False,
                            operation="pooling"):
  """Like :func:`_prepare`, also checking the cotangent against the output.

  With ``read_values=False`` only ``x.shape`` and ``x.dtype`` are used, so a
  ``jax.ShapeDtypeStruct`` is accepted.
  """
  dtype = windows.check_dtype(x, "x", allow_complex=allow_complex,
                              operation=operation)
  geometry = windows.pool_geometry(
      x.shape, window_shape, strides, padding, dilation, ceil_mode,
      forbid_empty_windows=forbid_empty_windows)
  rank = geometry.rank
  batch_shape = tuple(x.shape[:len(x.shape) - rank - 1])
  expected = batch_shape + geometry.out_sizes + (x.shape[-1],)
  windows.check_cotangent(cotangent, dtype, expected,
                          allow_complex=allow_complex, operation=operation)
  cotangent = windows.to_canonical(jnp.asarray(cotangent, dtype), rank)
  if read_values:
    x = windows.to_canonical(jnp.asarray(x), rank)
  return x, cotangent, geometry, batch_shape


def _check_norm_order(p) -> float:
  """Returns ``p`` as a Python float after checking ``p > 0``."""
  if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real):
    raise TypeError(
        f"`p` must be a positive Python number (it is static), got {p!r} "
        f"(type {type(p).__name__}).")
  p = float(p)
  if math.isnan(p) or p <= 0:
    raise ValueError(f"`p` must be positive (or inf), got {p!r}.")
  return p


def _check_divisor_override(divisor_override):
  if divisor_override is None:
    return None
  if isinstance(divisor_override, (bool, np.bool_)) or not isinstance(
      divisor_override, numbers.Integral):
    raise TypeError(
        "`divisor_override` must be None or a nonzero int, got "
        f"{divisor_override!r} (type {type(divisor_override).__name__}).")
  if divisor_override == 0:
    raise ValueError("`divisor_override` must be nonzero, got 0.")
  return int(divisor_override)


def _power(base, exponent: float):
  """``base ** exponent`` for ``base >= 0``; integer powers by multiplication."""
  if exponent == 1:
    return base
  if float(exponent).is_integer() and 1 < exponent <= 64:
    return jax.lax.integer_pow(base, int(exponent))
  return jnp.power(base, jnp.asarray(exponent, base.dtype))


# ============================================================================
# Max and min pooling.
# ============================================================================


def max_pool(x, window_shape, strides=None, padding="VALID", *, dilation=1,
             ceil_mode=False):
  """Max pooling over the spatial axes, with a first-winner gradient.

  Computes, per window ``i`` (eq. (33)),

      y[i] = max over real taps k of x[t(i, k)],   t(i, k) = s*i + d*k - lo,

  and its gradient routes the whole cotangent of a window to the first maximum
  in row-major window order (eq. (36)); overlapping windows add up. Padding is
  never selected: a window whose real values are all ``-inf`` routes to its
  first real element (eq. (34)). A window holding NaN outputs NaN and routes
  to its first NaN (eq. (35)). The backward keeps only a small integer window
  offset per output element (int8 for windows of up to 128 taps).

  Args:
    x: input of shape ``(batch..., *spatial, features)``, floating point.
    window_shape: the number of taps per spatial dimension; its length sets
      the number of spatial dimensions.
    strides: an int or one int per spatial dimension; default 1.
    padding: ``"SAME"``, ``"VALID"``, ``"SAME_LOWER"``, an int, one int per
      dimension or ``(lo, hi)`` pairs. At most half the effective window per
      side (PyTorch's rule), so that no window is padding only.
    dilation: window dilation, an int or one per spatial dimension.
    ceil_mode: PyTorch's ``ceil_mode`` (eq. (31)): round the number of windows
      up, dropping a window that would start inside the right padding.

  Returns:
    The pooled array ``(batch..., *out_sizes, features)``, same dtype as ``x``.

  Raises:
    TypeError: ``x`` is not a real floating-point array, or an argument has
      the wrong type.
    ValueError: window, stride or dilation ``<= 0``, lengths that do not match
      the spatial rank, negative or excessive padding, output size ``< 1``.
  """
  xc, geometry, batch_shape = _prepare(
      x, window_shape, strides, padding, dilation, ceil_mode,
      forbid_empty_windows=True, operation="max pooling")
  y, _ = _extremum_pool(xc, geometry, _MAX)
  return windows.from_canonical(y, batch_shape)


def min_pool(x, window_shape, strides=None, padding="VALID", *, dilation=1,
             ceil_mode=False):
  """Min pooling: :func:`max_pool` with the order reversed (eq. (37)).

  The gradient goes to the first minimum of each window in row-major order;
  padding (``+inf``) is never selected; NaN wins as in :func:`max_pool`.

  Args:
    x: input of shape ``(batch..., *spatial, features)``, floating point.
    window_shape: the number of taps per spatial dimension.
    strides: an int or one int per spatial dimension; default 1.
    padding: as in :func:`max_pool`.
    dilation: window dilation, an int or one per spatial dimension.
    ceil_mode: PyTorch's ``ceil_mode`` (eq. (31)).

  Returns:
    The pooled array ``(batch..., *out_sizes, features)``.

  Raises:
    TypeError, ValueError: as :func:`max_pool`.
  """
  xc, geometry, batch_shape = _prepare(
      x, window_shape, strides, padding, dilation, ceil_mode,
      forbid_empty_windows=True, operation="min pooling")
  y, _ = _extremum_pool(xc, geometry, _MIN)
  return windows.from_canonical(y, batch_shape)


def max_pool_with_indices(x, window_shape, strides=None, padding="VALID", *,
                          dilation=1, ceil_mode=False):
  """Max pooling that also returns where each maximum came from.

  The index of a window's winner is its flat row-major position in the
  spatial axes of the unpadded input, per batch element and feature (eq.
  (47)) -- what PyTorch's ``return_indices=True`` gives, in any number of
  dimensions. :func:`max_unpool` inverts it. The values are differentiable
  exactly as :func:`max_pool`; the indices are integers.

  Args:
    x: input of shape ``(batch..., *spatial, features)``, floating point.
    window_shape: the number of taps per spatial dimension.
    strides: an int or one int per spatial dimension; default 1.
    padding: as in :func:`max_pool`.
    dilation: window dilation, an int or one per spatial dimension.
    ceil_mode: PyTorch's ``ceil_mode`` (eq. (31)).

  Returns:
    ``(values, indices)``, both of shape ``(batch..., *out_sizes, features)``;
    ``indices`` is int32 (int64 when the spatial size needs it, which requires
    ``jax_enable_x64``).

  Raises:
    TypeError, ValueError: as :func:`max_pool`.
  """
  xc, geometry, batch_shape = _prepare(
      x, window_shape, strides, padding, dilation, ceil_mode,
      forbid_empty_windows=True, operation="max pooling")
  y, offsets = _extremum_pool(xc, geometry, _MAX)
  indices = winner_indices(offsets, geometry)
  return (windows.from_canonical(y, batch_shape),
          windows.from_canonical(indices, batch_shape))


def max_pool_grad(x, cotangent, window_shape, strides=None, padding="VALID", *,
                  dilation=1, ceil_mode=False):
  """The input gradient of :func:`max_pool`: eq. (36).

  ``dE/dx[j] = sum over the windows i whose first winner is j of
  delta[i]``, with ``delta`` the cotangent.
  Jit-able and differentiable (linear in ``cotangent``; zero derivative in
  ``x`` almost everywhere).

  Args:
    x: the primal input, ``(batch..., *spatial, features)``.
    cotangent: the cotangent of the output, ``(batch..., *out_sizes,
      features)``.
    window_shape: the number of taps per spatial dimension.
    strides: an int or one int per spatial dimension; default 1.
    padding: as in :func:`max_pool`.
    dilation: window dilation.
    ceil_mode: PyTorch's ``ceil_mode``.

  Returns:
    The gradient with respect to ``x``, same shape and dtype as ``x``.
  """
  return _extremum_pool_grad(x, cotangent, window_shape, strides, padding,
                             dilation, ceil_mode, _MAX)


def min_pool_grad(x, cotangent, window_shape, strides=None, padding="VALID", *,
                  dilation=1, ceil_mode=False):
  """The input gradient of :func:`min_pool`: eq. (36) with eq. (37)'s winner.

  Args:
    x: the primal input, ``(batch..., *spatial, features)``.
    cotangent: the cotangent of the output.
    window_shape: the number of taps per spatial dimension.
    strides: an int or one int per spatial dimension; default 1.
    padding: as in :func:`min_pool`.
    dilation: window dilation.
    ceil_mode: PyTorch's ``ceil_mode``.

  Returns:
    The gradient with respect to ``x``, same shape and dtype as ``x``.
  """
  return _extremum_pool_grad(x, cotangent, window_shape, strides, padding,
                             dilation, ceil_mode, _MIN)


def _extremum_pool_grad(x, cotangent, window_shape, strides, padding, dilation,
                        ceil_mode, select):
  xc, ct, geometry, batch_shape = _prepare_with_cotangent(
      x, cotangent, window_shape, strides, padding, dilation, ceil_mode,
      forbid_empty_windows=True, operation=f"{select} pooling")
  _, offsets = extremum_and_offsets(jax.lax.stop_gradient(xc), geometry,
                                    select)
  return windows.from_canonical(route_to_winners(ct, offsets, geometry),
                                batch_shape)


# ----------------------------------------------------------------------------
# Rule: max / min pooling.
#
#   Forward (33), (34), (35), (37): tap k of window i reads x[t(i, k)],
#   t(i, k) = s*i + d*k - lo (32). Scanning the taps in row-major order,
#       y[i]  = max over real taps k of x[t(i, k)],
#       k*(i) = the first k attaining it; a NaN beats every number and the
#               first NaN is kept; padding (-inf) is never k*: if the best
#               value is -inf, k* is the first real tap.
#   Min is the same scan with the comparison reversed and +inf padding.
#
#   Backward (36): locally y[i] = x[t(i, k*(i))], so dy[i]/dx[j] is 1 when
#   t(i, k*(i)) = j and 0 otherwise, and
#       dE/dx[j] = sum_i delta[i] [t(i, k*(i)) = j]
#   -- the delta of each window goes to its winner; overlapping windows add
#   up. This is the scatter (46) of the terms c_k[i] = [k*(i) = k] delta[i].
#
#   Residuals: k*(i) as a flat tap offset, one small int per output element
#   (int8 up to 128 taps). Neither x nor y is kept. Under jit y and the
#   offsets pass through one trivial reduction (_stored) so that XLA stores
#   them instead of rerunning the scan inside the backward once per tap.
#
#   Second order (45): the backward is linear in delta with integer data k*,
#   so differentiating it again is exact; _fwd calls the primal itself so that
#   a second differentiation of y also goes through this rule.
# ----------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _extremum_pool(x, geometry: PoolGeometry, select: str):
  return extremum_and_offsets(x, geometry, select)


def _extremum_pool_fwd(x, geometry, select):
  y, offsets = _extremum_pool(x, geometry, select)
  return (y, offsets), offsets


def _extremum_pool_bwd(geometry, select, offsets, cotangents):
  del select  # The winners already encode max or min.
  cotangent, _ = cotangents  # The offsets are integers: no cotangent.
  return (route_to_winners(cotangent, offsets, geometry),)


_extremum_pool.defvjp(_extremum_pool_fwd, _extremum_pool_bwd)


@_sharding.keeps_batch_and_features
@functools.partial(jax.jit, static_argnames=("geometry", "select"))
def extremum_and_offsets(x, geometry: PoolGeometry, select: str):
  """Window maxima (or minima) and their first winners: eqs. (33)-(35), (37).

  Args:
    x: canonical input ``(batch, *in_sizes, features)``.
    geometry: the pooling geometry; every window must hold a real tap.
    select: ``"max"`` or ``"min"``.

  Returns:
    ``(y, offsets)``: the pooled values ``(batch, *out_sizes, features)`` and
    the flat row-major window offset ``k*`` of each winner, in the smallest
    int dtype that holds ``window_size - 1``.
  """
  pad_value = -jnp.inf if select == _MAX else jnp.inf
  padded, covering = windows.pad_to_covered(x, geometry, pad_value)
  offset_dtype = windows.offset_dtype(geometry)
  # The winner comes out of the same scan as the extremum. Comparing the taps
  # with a stored y instead (the first k with x[t(i, k)] == y[i]) is eq. (34)
  # too, but under jit XLA may recompute the taps elsewhere, for instance a
  # fused convolution that feeds the pool, with other rounding; the tap that
  # gave y then no longer equals it and the delta goes to the wrong tap. The
  # scan always yields a tap that wins its window, wherever XLA evaluates it.
  best = offsets = None
  for flat, offset in enumerate(geometry.offsets):
    value = windows.window_view(padded, covering, offset, pad_value)
    if best is None:
      best, offsets = value, jnp.zeros(value.shape, offset_dtype)
      continue
    # `value` wins if it is strictly better or NaN, unless the best so far is
    # already NaN: `not (best >= value)` is true for both, false on ties.
    worse_or_equal = best >= value if select == _MAX else best <= value
    take = ~worse_or_equal & (best == best)
    best = jnp.where(take, value, best)
    offsets = jnp.where(take, jnp.asarray(flat, offset_dtype), offsets)
  if windows.has_padding_taps(geometry):
    # Only a window whose real values are all -inf (+inf) can have kept a
    # padding tap; its first winner is its first real tap, eq. (34).
    first = windows.first_real_offset(geometry).astype(offset_dtype)
    first = first.reshape((1,) + geometry.out_sizes + (1,))
    offsets = jnp.where(best == pad_value, first, offsets)
  return _stored(best, offsets)


def _stored(best, offsets):
  """``(best, offsets)``, computed by one reduction so that XLA stores them.

  Under ``jit`` XLA fuses chains of cheap elementwise operations, such as the
  scan above, into their consumers, and a consumer that reads an element
  several times evaluates the chain once per read: the backward reads each
  window's offset once per tap, so fused into it the scan would run once per
  tap (9 times for 3x3 windows). XLA does not fuse an expensive producer, a
  reduction among them, into such a consumer. Here both results pass through
  one such reduction over a two-entry axis: the product of ``best`` and ones
  (exact for every value, -0, infinities and NaN included) and the sum of
  ``offsets`` and zeros. The offsets become a stored residual, as the rule
  intends, and the output and its winners come out of one evaluation of the
  scan. ``lax.optimization_barrier`` does not do this on the CPU, whose
  compiler removes it before fusion.
  ``tests/test_pooling.py::test_backward_reads_stored_offsets`` checks that
  the compiled backward does not rerun the scan.
  """
  one = jnp.ones((), best.dtype)
  zero = jnp.zeros((), offsets.dtype)
  pairs = (jnp.stack([best, jnp.broadcast_to(one, best.shape)]),
           jnp.stack([offsets, jnp.broadcast_to(zero, offsets.shape)]))
  return jax.lax.reduce(pairs, (one, zero),
                        lambda a, b: (a[0] * b[0], a[1] + b[1]), (0,))


@_sharding.keeps_batch_and_features
@functools.partial(jax.jit, static_argnames=("geometry",))
def route_to_winners(cotangent, offsets, geometry: PoolGeometry):
  """Eq. (36): each window's cotangent goes to its winner; overlaps add up.

  Args:
    cotangent: canonical ``(batch, *out_sizes, features)``.
    offsets: the flat winner offsets from :func:`extremum_and_offsets`.
    geometry: the pooling geometry.

  Returns:
    The input gradient ``(batch, *in_sizes, features)`` in the cotangent's
    dtype (summed in float32 for 16-bit dtypes).
  """
  dtype = windows.accumulation_dtype(cotangent.dtype)
  g = cotangent.astype(dtype)
  zero = jnp.zeros((), dtype)

  def term(flat, offset):
    del offset
    return jnp.where(offsets == flat, g, zero)

  dx = windows.scatter_to_input(term, geometry, g.shape[0], g.shape[-1], dtype)
  return dx.astype(cotangent.dtype)


@_sharding.keeps_batch_and_features
@functools.partial(jax.jit, static_argnames=("geometry",))
def winner_indices(offsets, geometry: PoolGeometry):
  """Eq. (47): flat row-major spatial index of each winner in the input.

  Args:
    offsets: the flat winner offsets from :func:`extremum_and_offsets`.
    geometry: the pooling geometry.

  Returns:
    An int32 (int64 if needed) array of the offsets' shape.
  """
  dtype = windows.flat_index_dtype(geometry.in_sizes)
  offsets = offsets.astype(dtype)
  flat = None
  window_place = math.prod(geometry.window)
  for dim in range(geometry.rank):
    window_place //= geometry.window[dim]
    tap = (offsets // window_place) % geometry.window[dim]
    start = (np.arange(geometry.out_sizes[dim]) * geometry.strides[dim]
             - geometry.padding[dim][0])
    shape = [1] * (geometry.rank + 2)
    shape[dim + 1] = -1
    position = jnp.asarray(start.reshape(shape), dtype) + tap * (
        geometry.dilation[dim])
    flat = position if flat is None else flat * geometry.in_sizes[dim] + (
        position)
  return flat


# ============================================================================
# Max unpooling.
# ============================================================================


def max_unpool(x, indices, spatial_shape):
  """Scatters pooled values back to the positions given by ``indices``.

  The inverse of :func:`max_pool_with_indices` (PyTorch's ``max_unpool``, in
  any number of dimensions, eq. (48)): the output is zero except
  ``u[..., indices[i], c] = x[..., i, c]`` in the flattened spatial axes.
  Indices outside ``[0, prod(spatial_shape))`` are dropped. When two windows
  share a winner both carry the same value; which write lands is unspecified
  for other inputs. The gradient is the gather ``dE/dx[i] = dE/du[indices[i]]``
  (:func:`max_unpool_grad`), as in PyTorch.

  Args:
    x: pooled values ``(batch..., *out_sizes, features)``, floating point.
    indices: integer array of the same shape, as returned by
      :func:`max_pool_with_indices`.
    spatial_shape: the spatial shape of the result, one int per spatial
      dimension (PyTorch's ``output_size``); its length sets the number of
      spatial dimensions.

  Returns:
    ``(batch..., *spatial_shape, features)`` with ``x``'s dtype.

  Raises:
    TypeError: ``x`` is not floating point or ``indices`` not integer.
    ValueError: shapes do not match.
  """
  _geometry.check_floating(x, "x")
  x = jnp.asarray(x)
  indices = _check_indices(indices, x.shape)
  spatial_shape = _unpool_spatial_shape(spatial_shape, x.ndim)
  rank = len(spatial_shape)
  batch_shape = x.shape[:x.ndim - rank - 1]
  y = _max_unpool(windows.to_canonical(x, rank),
                  windows.to_canonical(indices, rank), spatial_shape)
  return windows.from_canonical(y, batch_shape)


def max_unpool_grad(cotangent, indices, spatial_shape):
  """The input gradient of :func:`max_unpool`, eq. (48): a gather.

  ``dE/dx[i] = cotangent[indices[i]]`` per batch element and feature.

  Args:
    cotangent: cotangent of the unpooled output, ``(batch..., *spatial_shape,
      features)``.
    indices: the integer indices passed to :func:`max_unpool`, ``(batch...,
      *out_sizes, features)``.
    spatial_shape: the ``spatial_shape`` passed to :func:`max_unpool`.

  Returns:
    The gradient with respect to the pooled values: ``indices``' shape, the
    cotangent's dtype. Out-of-range indices receive 0.
  """
  _geometry.check_floating(cotangent, "cotangent")
  cotangent = jnp.asarray(cotangent)
  indices = _check_indices(indices, None)
  spatial_shape = _unpool_spatial_shape(spatial_shape, indices.ndim)
  rank = len(spatial_shape)
  batch_shape = indices.shape[:indices.ndim - rank - 1]
  expected = batch_shape + spatial_shape + indices.shape[-1:]
  if tuple(cotangent.shape) != expected:
    raise ValueError(
        f"`cotangent` must have the unpooled shape {expected}, got "
        f"{tuple(cotangent.shape)}.")
  batch = math.prod(batch_shape)
  g = cotangent.reshape((batch, -1, cotangent.shape[-1]))
  idx = indices.reshape((batch, -1, indices.shape[-1]))
  return gather_from_unpooled(g, idx).reshape(indices.shape)


def _check_indices(indices, shape):
  dtype = getattr(indices, "dtype", None)
  if dtype is None or not jnp.issubdtype(dtype, jnp.integer):
    raise TypeError(
        f"`indices` must be an integer array, got "
        f"{dtype if dtype is not None else type(indices).__name__}.")
  indices = jnp.asarray(indices)
  if shape is not None and tuple(indices.shape) != tuple(shape):
    raise ValueError(f"`indices` must have the shape of `x` {tuple(shape)}, "
                     f"got {tuple(indices.shape)}.")
  return indices


def _unpool_spatial_shape(spatial_shape, ndim):
  if isinstance(spatial_shape, (int, np.integer)) or not (
      isinstance(spatial_shape, (tuple, list, np.ndarray))):
    raise TypeError("`spatial_shape` must be a sequence with one int per "
                    f"spatial dimension, got {spatial_shape!r}.")
  rank = len(spatial_shape)
  if rank == 0 or rank + 1 > ndim:
    raise ValueError(
        f"`spatial_shape` {tuple(spatial_shape)!r} must have between 1 and "
        f"{ndim - 1} entries for `x` with {ndim} axes.")
  return _geometry.int_tuple(spatial_shape, rank, "spatial_shape")


# ----------------------------------------------------------------------------
# Rule: max unpooling, eq. (48).
#
#   Forward: u[b, iota[b, i, c], c] = x[b, i, c], zero elsewhere (iota: the
#   indices of (47)).
#   Backward: u is linear in x and du[j]/dx[i] = [iota[i] = j], so
#       dE/dx[b, i, c] = dE/du[b, iota[b, i, c], c]
#   -- a gather. Every window receives the delta of its position, also when
#   several windows share it (PyTorch does the same).
#   Residuals: the indices.
# ----------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _max_unpool(x, indices, spatial_shape):
  return scatter_to_unpooled(x, indices, spatial_shape)


def _max_unpool_fwd(x, indices, spatial_shape):
  return _max_unpool(x, indices, spatial_shape), indices


def _max_unpool_bwd(spatial_shape, indices, cotangent):
  batch, features = cotangent.shape[0], cotangent.shape[-1]
  g = cotangent.reshape((batch, math.prod(spatial_shape), features))
  idx = indices.reshape((batch, -1, features))
  dx = gather_from_unpooled(g, idx).reshape(indices.shape)
  return dx, None


_max_unpool.defvjp(_max_unpool_fwd, _max_unpool_bwd)


@_sharding.keeps_batch_and_features
@functools.partial(jax.jit, static_argnames=("spatial_shape",))
def scatter_to_unpooled(x, indices, spatial_shape):
  """Eq. (48), forward: canonical values scattered to flat spatial indices."""
  batch, features = x.shape[0], x.shape[-1]
  size = math.prod(spatial_shape)
  values = x.reshape((batch, -1, features))
  idx = indices.reshape((batch, -1, features))
  b = jnp.arange(batch)[:, None, None]
  c = jnp.arange(features)[None, None, :]
  out = jnp.zeros((batch, size, features), x.dtype)
  out = out.at[b, idx, c].set(values, mode="drop")
  return out.reshape((batch,) + tuple(spatial_shape) + (features,))


@_sharding.keeps_batch_and_features
@jax.jit
def gather_from_unpooled(cotangent, indices):
  """Eq. (48), backward: ``dE/dx[b, i, c] = cotangent[b, indices[b, i, c], c]``.

  Args:
    cotangent: ``(batch, size, features)``.
    indices: ``(batch, count, features)`` integers.

  Returns:
    ``(batch, count, features)``; 0 where an index is out of range.
  """
  return jnp.take_along_axis(cotangent, indices, axis=1, mode="fill",
                             fill_value=0)


# ============================================================================
# Average pooling.
# ============================================================================


def avg_pool(x, window_shape, strides=None, padding="VALID",
             count_include_pad=True, *, dilation=1, ceil_mode=False,
             divisor_override=None):
  """Average pooling with PyTorch's divisor rules (eqs. (38), (39)).

  ``y[i] = (1 / D[i]) * sum of the real taps of window i``. The divisor
  ``D[i]`` counts taps, not positions: the taps inside the declared padding
  when ``count_include_pad`` (Flax's and PyTorch's default), the real taps
  otherwise, or ``divisor_override``. With window dilation the positions
  skipped between taps never count, so the full window divides by
  ``prod(window_shape)``, as a sum over ``lax.reduce_window`` with
  ``window_dilation`` divided by its count of taps. Taps of the ceil-mode
  overhang beyond the padding are never counted. A window made of padding
  only outputs 0 with zero gradient, also with ``count_include_pad=False``.
  The gradient spreads ``delta[i] / D[i]`` over the real taps of the window
  (eq. (40)); the backward keeps nothing but the static geometry.

  Complex inputs are averaged as they are (real and imaginary parts alike);
  the gradient follows JAX's convention for a linear map, its transpose
  without conjugation: the cotangent is spread as it is.

  Args:
    x: input of shape ``(batch..., *spatial, features)``, floating point or
      complex.
    window_shape: the number of taps per spatial dimension; its length sets
      the number of spatial dimensions.
    strides: an int or one int per spatial dimension; default 1.
    padding: ``"SAME"``, ``"VALID"``, ``"SAME_LOWER"``, an int, one int per
      dimension or ``(lo, hi)`` pairs; non-negative. ``"SAME"`` uses the
      dilated window extent.
    count_include_pad: whether padding taps count in the divisor.
    dilation: window dilation, an int or one per spatial dimension: tap ``k``
      of a window reads ``dilation * k`` positions after its first.
    ceil_mode: PyTorch's ``ceil_mode`` (eq. (31)).
    divisor_override: a nonzero int that replaces every divisor.

  Returns:
    The pooled array ``(batch..., *out_sizes, features)``, same dtype as ``x``
    (summed in float32 for 16-bit dtypes).

  Raises:
    TypeError: ``x`` is not a floating-point or complex array, or an argument
      has the wrong type.
    ValueError: window, stride or dilation ``<= 0``, lengths that do not match
      the spatial rank, negative padding, output size ``< 1``, divisor 0.
  """
  count_include_pad = windows.check_flag(count_include_pad,
                                          "count_include_pad")
  divisor_override = _check_divisor_override(divisor_override)
  xc, geometry, batch_shape = _prepare(x, window_shape, strides, padding,
                                       dilation, ceil_mode, allow_complex=True)
  y = _avg_pool(xc, geometry, count_include_pad, divisor_override)
  return windows.from_canonical(y, batch_shape)


def avg_pool_grad(x, cotangent, window_shape, strides=None, padding="VALID",
                  count_include_pad=True, *, dilation=1, ceil_mode=False,
                  divisor_override=None):
  """The input gradient of :func:`avg_pool`: eq. (40).

  ``dE/dx[j] = sum over the windows i with a tap at j of delta[i] / D[i]``,
  with ``delta`` the cotangent (not conjugated when complex).
  Linear in the cotangent; it does not depend on the values of ``x``.

  Args:
    x: the primal input or anything with its ``shape`` and ``dtype`` (e.g. a
      ``jax.ShapeDtypeStruct``); only those are read.
    cotangent: the cotangent of the output, ``(batch..., *out_sizes,
      features)``; complex only for a complex ``x``.
    window_shape: the number of taps per spatial dimension.
    strides: an int or one int per spatial dimension; default 1.
    padding: as in :func:`avg_pool`.
    count_include_pad: whether padding taps count in the divisor.
    dilation: window dilation, as in :func:`avg_pool`.
    ceil_mode: PyTorch's ``ceil_mode``.
    divisor_override: a nonzero int that replaces every divisor.

  Returns:
    The gradient with respect to ``x``: ``x``'s shape and dtype.
  """
  count_include_pad = windows.check_flag(count_include_pad,
                                          "count_include_pad")
  divisor_override = _check_divisor_override(divisor_override)
  _, ct, geometry, batch_shape = _prepare_with_cotangent(
      x, cotangent, window_shape, strides, padding, dilation, ceil_mode,
      read_values=False, allow_complex=True)
  dx = spread_over_window(ct, geometry, count_include_pad, divisor_override)
  return windows.from_canonical(dx, batch_shape)


# ----------------------------------------------------------------------------
# Rule: average pooling.
#
#   Forward (38): y[i] = (1 / D[i]) sum over real taps k of x[t(i, k)], with
#   D[i] from (39): taps inside [-lo, N + hi) (count_include_pad), taps
#   inside [0, N) (not), or the override -- a product of per-dimension
#   counts, so a static table. Taps, not positions: with window dilation d
#   the tap positions t(i, k) = s*i + d*k - lo (32) skip d - 1 positions,
#   which are not counted. A window with no counted tap has an empty sum;
#   D = 1 there keeps it at 0 instead of 0/0.
#
#   Backward (40): dy[i]/dx[j] = 1 / D[i] for every real tap t(i, k) = j, so
#       dE/dx[j] = sum over (i, k) with t(i, k) = j of delta[i] / D[i]
#   -- the scatter (46) of the same term c_k[i] = delta[i] / D[i] for every
#   tap k; padding taps fall outside the input and are dropped.
#   Complex x: (38) is a real linear map y = A x; JAX's VJP of a linear map
#   is its transpose A^T delta, without conjugation, which is (40) as it is.
#
#   Residuals: none (the divisor table is a function of the static geometry).
#   Second order (45): the backward is linear in delta and constant in x.
# ----------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _avg_pool(x, geometry: PoolGeometry, count_include_pad: bool,
              divisor_override):
  return window_average(x, geometry, count_include_pad, divisor_override)


def _avg_pool_fwd(x, geometry, count_include_pad, divisor_override):
  return _avg_pool(x, geometry, count_include_pad, divisor_override), None


def _avg_pool_bwd(geometry, count_include_pad, divisor_override, residuals,
                  cotangent):
  del residuals  # Nothing is kept.
  return (spread_over_window(cotangent, geometry, count_include_pad,
                             divisor_override),)


_avg_pool.defvjp(_avg_pool_fwd, _avg_pool_bwd)


def average_divisors(geometry: PoolGeometry, count_include_pad: bool,
                     divisor_override):
  """The divisor ``D[i]`` of eq. (39) as a static float64 NumPy table.

  Returns a scalar when all windows share it; windows with no counted tap get
  1 (their sum is empty, so their output and gradient are 0).
  """
  if divisor_override is not None:
    return np.float64(divisor_override)
  table = windows.divisor_table(geometry, count_include_pad)
  table = np.where(table > 0, table, 1.0)
  if np.all(table == table.flat[0]):
    return np.float64(table.flat[0])
  return table


def _divisors_like(geometry, count_include_pad, divisor_override, dtype):
  """:func:`average_divisors` shaped to broadcast against ``(B, *out, C)``.

  In the real dtype of ``dtype`` (float32 for complex64): a complex array
  divided by a real one divides both parts.
  """
  dtype = windows.real_dtype(dtype)
  divisors = average_divisors(geometry, count_include_pad, divisor_override)
  if np.ndim(divisors) == 0:
    return jnp.asarray(divisors, dtype)
  return jnp.asarray(divisors.reshape((1,) + divisors.shape + (1,)), dtype)


@_sharding.keeps_batch_and_features
@functools.partial(jax.jit, static_argnames=("geometry", "count_include_pad",
                                             "divisor_override"))
def window_average(x, geometry: PoolGeometry, count_include_pad: bool,
                   divisor_override):
  """Eq. (38): the sum of each window's real taps divided by ``D[i]``.

  Args:
    x: canonical input ``(batch, *in_sizes, features)``.
    geometry: the pooling geometry.
    count_include_pad: whether taps in the declared padding count in ``D``.
    divisor_override: ``None`` or the nonzero int that replaces ``D``.

  Returns:
    ``(batch, *out_sizes, features)`` in ``x``'s dtype.
  """
  dtype = windows.accumulation_dtype(x.dtype)
  wide = x.astype(dtype)
  # Each view is read once, by the sum: it is sliced from the unpadded input
  # and fuses into the sum, so no padded copy of the input is stored.
  total = None
  for offset in geometry.offsets:
    value = windows.window_view(wide, geometry, offset, 0)
    total = value if total is None else total + value
  divisors = _divisors_like(geometry, count_include_pad, divisor_override,
                            dtype)
  return (total / divisors).astype(x.dtype)


@_sharding.keeps_batch_and_features
@functools.partial(jax.jit, static_argnames=("geometry", "count_include_pad",
                                             "divisor_override"))
def spread_over_window(cotangent, geometry: PoolGeometry,
                       count_include_pad: bool, divisor_override):
  """Eq. (40): every real tap of window i receives ``delta[i] / D[i]``.

  Args:
    cotangent: canonical ``(batch, *out_sizes, features)``.
    geometry: the pooling geometry.
    count_include_pad: whether taps in the declared padding count in ``D``.
    divisor_override: ``None`` or the nonzero int that replaces ``D``.

  Returns:
    ``(batch, *in_sizes, features)`` in the cotangent's dtype.
  """
  dtype = windows.accumulation_dtype(cotangent.dtype)
  divisors = _divisors_like(geometry, count_include_pad, divisor_override,
                            dtype)
  share = cotangent.astype(dtype) / divisors
  dx = windows.scatter_to_input(lambda flat, offset: share, geometry,
                                share.shape[0], share.shape[-1], dtype)
  return dx.astype(cotangent.dtype)


# ============================================================================
# Lp pooling.
# ============================================================================


def lp_pool(x, p, window_shape, strides=None, padding="VALID", *, dilation=1,
            ceil_mode=False):
  """Lp-norm pooling: ``y[i] = (sum over real taps |x|^p)^(1/p)``, eq. (41).

  Any ``p > 0``; ``p = inf`` is ``max |x|`` (eq. (44)). Padding contributes
  zeros. Unlike PyTorch's ``lp_pool``, the absolute value is taken (no NaN
  for negative inputs) and there is no rescaling of ceil-mode partial
  windows. The value is computed as ``m * (sum (|x|/m)^p)^(1/p)`` with ``m``
  the window's ``max |x|``, so large ``p`` does not overflow.

  The gradient (eq. (42)) is ``g * sign(x) * (|x| / y)^(p-1)``, taken as 0
  where ``x = 0`` -- in particular an all-zero window has gradient 0, not NaN
  (eq. (43)). For ``p = inf`` the cotangent goes to the first maximum of
  ``|x|`` times its sign. The backward keeps ``x`` and ``y`` (for ``p = inf``:
  the winner offsets and signs).

  Args:
    x: input of shape ``(batch..., *spatial, features)``, floating point.
    p: the norm's order, a Python number ``> 0`` or ``inf``; static (there is
      no gradient with respect to ``p``).
    window_shape: the number of taps per spatial dimension.
    strides: an int or one int per spatial dimension; default 1.
    padding: ``"SAME"``, ``"VALID"``, ``"SAME_LOWER"``, an int, one int per
      dimension or ``(lo, hi)`` pairs; non-negative.
    dilation: window dilation, an int or one per spatial dimension.
    ceil_mode: PyTorch's ``ceil_mode`` (eq. (31)).

  Returns:
    The pooled array ``(batch..., *out_sizes, features)``, same dtype as ``x``.

  Raises:
    TypeError: ``x`` is not a real floating-point array, ``p`` is not a real
      Python number, or an argument has the wrong type.
    ValueError: ``p <= 0`` or NaN, and the geometry errors of
      :func:`avg_pool`.
  """
  p = _check_norm_order(p)
  xc, geometry, batch_shape = _prepare(x, window_shape, strides, padding,
                                       dilation, ceil_mode,
                                       operation="Lp pooling")
  if math.isinf(p):
    y, _, _ = _max_abs_pool(xc, geometry)
  else:
    y = _lp_pool(xc, geometry, p)
  return windows.from_canonical(y, batch_shape)


def lp_pool_grad(x, cotangent, p, window_shape, strides=None, padding="VALID",
                 *, dilation=1, ceil_mode=False):
  """The input gradient of :func:`lp_pool`: eqs. (42)-(44).

  ``dE/dx[j] = sum over the windows i with a tap at j of delta[i] sign(x[j])
  (|x[j]| / y[i])^(p-1)``, 0 where ``x[j] = 0``; for ``p = inf`` the
  cotangent times the sign goes to the first maximum of ``|x|``.

  Args:
    x: the primal input, ``(batch..., *spatial, features)``.
    cotangent: the cotangent of the output.
    p: the norm's order, as in :func:`lp_pool`.
    window_shape: the number of taps per spatial dimension.
    strides: an int or one int per spatial dimension; default 1.
    padding: as in :func:`lp_pool`.
    dilation: window dilation.
    ceil_mode: PyTorch's ``ceil_mode``.

  Returns:
    The gradient with respect to ``x``, same shape and dtype as ``x``.
  """
  p = _check_norm_order(p)
  xc, ct, geometry, batch_shape = _prepare_with_cotangent(
      x, cotangent, window_shape, strides, padding, dilation, ceil_mode,
      operation="Lp pooling")
  xc = jax.lax.stop_gradient(xc)
  if math.isinf(p):
    _, offsets, signs = max_abs_and_offsets(xc, geometry)
    dx = route_to_winners(ct * signs, offsets, geometry)
  else:
    y = lp_norm(xc, geometry, p)
    dx = lp_norm_grad(xc, y, ct, geometry, p)
  return windows.from_canonical(dx, batch_shape)


# ----------------------------------------------------------------------------
# Rule: Lp pooling, finite p.
#
#   Forward (41): y[i] = (sum over real taps k of |x[t(i, k)]|^p)^(1/p),
#   evaluated as
#       y[i] = m[i] (sum_k (|x[t(i, k)]| / m[i])^p)^(1/p),  m[i] = max_k |x|,
#   which is the same number without overflow (every ratio is <= 1).
#
#   Backward (42): differentiating S = sum_k |x_k|^p and then S^(1/p),
#       dy[i]/dx[j] = (1/p) S^(1/p - 1) * p |x[j]|^(p-1) sign(x[j])
#                   = sign(x[j]) (|x[j]| / y[i])^(p-1),
#   so dE/dx[j] = sum over (i, k) with t(i, k) = j of
#                 delta[i] sign(x[j]) (|x[j]| / y[i])^(p-1),
#   the scatter (46) of one term per tap. Since |x[j]| <= y[i], the ratio is
#   at most 1 and the power cannot overflow for p >= 1.
#   (43): where x[j] = 0 the term is 0 (the derivative for p > 1, a
#   subgradient for p = 1). An all-zero window has y = 0 and only zero taps,
#   so its gradient is 0, not 0/0. Both divisions are guarded on both sides
#   of `where`, so differentiating the backward again stays finite.
#
#   Residuals: x and y.
#   Second order (45): the backward is smooth in (delta, x, y) away from
#   x = 0; it is differentiated by autodiff, and _fwd obtains y from the
#   primal itself so that dy/dx also uses this rule.
# ----------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _lp_pool(x, geometry: PoolGeometry, p: float):
  return lp_norm(x, geometry, p)


def _lp_pool_fwd(x, geometry, p):
  y = _lp_pool(x, geometry, p)
  return y, (x, y)


def _lp_pool_bwd(geometry, p, residuals, cotangent):
  x, y = residuals
  return (lp_norm_grad(x, y, cotangent, geometry, p),)


_lp_pool.defvjp(_lp_pool_fwd, _lp_pool_bwd)


@_sharding.keeps_batch_and_features
@functools.partial(jax.jit, static_argnames=("geometry", "p"))
def lp_norm(x, geometry: PoolGeometry, p: float):
  """Eq. (41): the p-norm of every window's real taps (finite ``p``).

  Args:
    x: canonical input ``(batch, *in_sizes, features)``.
    geometry: the pooling geometry.
    p: the norm's order, ``0 < p < inf``.

  Returns:
    ``(batch, *out_sizes, features)`` in ``x``'s dtype (computed in float32
    for 16-bit dtypes).
  """
  dtype = windows.accumulation_dtype(x.dtype)
  padded, covering = windows.pad_to_covered(jnp.abs(x.astype(dtype)),
                                             geometry, 0)
  views = [windows.window_view(padded, covering, offset, 0)
           for offset in geometry.offsets]
  if p == 1:
    return functools.reduce(jnp.add, views).astype(x.dtype)
  largest = functools.reduce(jnp.maximum, views)  # NaN propagates.
  scale = jnp.where(largest > 0, largest, jnp.ones((), dtype))
  total = functools.reduce(jnp.add, [_power(v / scale, p) for v in views])
  y = largest * _power(total, 1.0 / p)
  # inf / inf inside the sum would give NaN for a window holding inf.
  y = jnp.where(largest == jnp.inf, largest, y)
  return y.astype(x.dtype)


@_sharding.keeps_batch_and_features
@functools.partial(jax.jit, static_argnames=("geometry", "p"))
def lp_norm_grad(x, y, cotangent, geometry: PoolGeometry, p: float):
  """Eqs. (42), (43): ``g sign(x) (|x| / y)^(p-1)`` summed over windows.

  Args:
    x: canonical input ``(batch, *in_sizes, features)``.
    y: the Lp pooled output from :func:`lp_norm`.
    cotangent: canonical ``(batch, *out_sizes, features)``.
    geometry: the pooling geometry.
    p: the norm's order, ``0 < p < inf``.

  Returns:
    The input gradient, ``x``'s shape and dtype; 0 where ``x = 0``.
  """
  dtype = windows.accumulation_dtype(x.dtype)
  padded, covering = windows.pad_to_covered(x.astype(dtype), geometry, 0)
  g = cotangent.astype(dtype)
  one = jnp.ones((), dtype)
  zero = jnp.zeros((), dtype)
  safe_y = jnp.where(y > 0, y.astype(dtype), one)

  def term(flat, offset):
    del flat
    value = windows.window_view(padded, covering, offset, 0)
    if p == 1:
      return g * jnp.sign(value)
    magnitude = jnp.abs(value)
    nonzero = magnitude > 0
    ratio = jnp.where(nonzero, magnitude / safe_y, one)
    return jnp.where(nonzero, g * jnp.sign(value) * _power(ratio, p - 1), zero)

  dx = windows.scatter_to_input(term, geometry, g.shape[0], g.shape[-1], dtype)
  return dx.astype(x.dtype)


# ----------------------------------------------------------------------------
# Rule: Lp pooling, p = inf.
#
#   Forward (44): y[i] = max over real taps k of |x[t(i, k)]|, with the first
#   winner k*(i) of |x| in row-major order as in (34), (35); padding is
#   |0| = 0.
#   Backward (44): locally y[i] = sign(x[w]) x[w] at the winner w, so
#       dE/dx[j] = sum_i delta[i] sign(x[j]) [t(i, k*(i)) = j]
#   -- eq. (36) applied to the delta times the winner's sign. An all-zero
#   window has sign 0: gradient 0.
#
#   Residuals: k*(i) (small int) and the winner's sign per output element.
# ----------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_abs_pool(x, geometry: PoolGeometry):
  return max_abs_and_offsets(x, geometry)


def _max_abs_pool_fwd(x, geometry):
  y, offsets, signs = _max_abs_pool(x, geometry)
  return (y, offsets, signs), (offsets, signs)


def _max_abs_pool_bwd(geometry, residuals, cotangents):
  offsets, signs = residuals
  cotangent, _, _ = cotangents  # Offsets and signs are piecewise constant.
  return (route_to_winners(cotangent * signs, offsets, geometry),)


_max_abs_pool.defvjp(_max_abs_pool_fwd, _max_abs_pool_bwd)


@_sharding.keeps_batch_and_features
@functools.partial(jax.jit, static_argnames=("geometry",))
def max_abs_and_offsets(x, geometry: PoolGeometry):
  """Eq. (44): ``max |x|`` per window, its first winner and the winner's sign.

  Args:
    x: canonical input ``(batch, *in_sizes, features)``.
    geometry: the pooling geometry.

  Returns:
    ``(y, offsets, signs)``: ``y`` and ``signs`` in ``x``'s dtype, ``offsets``
    the flat winner offsets as in :func:`extremum_and_offsets`.
  """
  padded, covering = windows.pad_to_covered(x, geometry, 0)
  offset_dtype = windows.offset_dtype(geometry)
  best = winner = offsets = None
  for flat, offset in enumerate(geometry.offsets):
    value = windows.window_view(padded, covering, offset, 0)
    magnitude = jnp.abs(value)
    if best is None:
      best, winner = magnitude, value
      offsets = jnp.zeros(value.shape, offset_dtype)
      continue
    take = ~(best >= magnitude) & (best == best)
    best = jnp.where(take, magnitude, best)
    winner = jnp.where(take, value, winner)
    offsets = jnp.where(take, jnp.asarray(flat, offset_dtype), offsets)
  return best, offsets, jnp.sign(winner)
