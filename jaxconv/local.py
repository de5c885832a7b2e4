"""Image patches and locally connected convolution, with hand-derived gradients.

A convolution is a fully connected layer whose weights are local and tied
(``docs/derivation.md``, Part I, eqs. 20-21). Keep them local but untie them,
so that every output position has a kernel of its own, and the result is a
locally connected layer. Both read the same *patches* of the input, and this
module is built from that observation (Part I, "Locally connected layers and
patches", eqs. 22-24):

* ``_PatchGeometry``: the static description of the patches (a normalised
  ``ConvGeometry`` plus the window shape, tap order and dtypes), built and
  validated once at the public boundary.
* ``_patches`` (im2col, eq. 22) and ``_col2im`` (eq. 23): two ``custom_vjp``
  rules, each the other's transpose, so each one's backward is the other and
  gradients of any order stay on these two rules.
* ``_local``: the locally connected layer (eq. 24), a ``custom_vjp`` rule
  whose backward calls ``_local_input_gradient`` (eq. 24 then col2im) and
  ``_local_kernel_gradient`` (eq. 24: eq. 9 without the sum over positions).
* Public functions: ``conv_general_dilated_patches`` and
  ``conv_general_dilated_local`` (drop-in for the ``lax`` functions of the
  same names) and the gradients as functions of their own,
  ``conv_patches_grad``, ``conv_local_input_grad``,
  ``conv_local_kernel_grad``.

Notation as in ``jaxconv.convolution``, per spatial dimension: input length
``N``, input dilation ``a``, padding ``(lo, hi)``, window length ``K``,
window dilation ``d``, stride ``s``; ``P = (N - 1) a + 1 + lo + hi`` padded
positions and ``M`` output positions (eq. 4). Every array stays in the layout
its dimension numbers give it: the patches are sliced along the input's own
spatial axes, and only the finished patches are transposed into the output
layout.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv import _geometry, _sharding
from jaxconv.convolution import (
    ConvDimensionNumbers,
    ConvGeometry,
    conv_output_shape,
    make_conv_geometry,
)

__all__ = [
    "conv_general_dilated_local",
    "conv_general_dilated_patches",
    "conv_local_input_grad",
    "conv_local_kernel_grad",
    "conv_patches_grad",
]


class _PatchGeometry(NamedTuple):
  """The static description of one patch extraction, normalised and checked.

  Attributes:
    conv: the convolution whose windows the patches are: strides, padding
      pairs, dilations, dimension numbers and precision.
    lhs_shape: the input's shape.
    window: ``K`` per spatial dimension, in the dimension numbers' spatial
      order.
    tap_order: the spatial dimensions from the slowest-varying to the
      fastest-varying in the flattened patch axis (the order of the kernel's
      spatial axes in memory, as in ``lax``).
    out_shape: the patches' shape, in the output layout.
    lhs_dtype: the input's dtype (the dtype of ``col2im``'s result).
    dtype: the patches' dtype (the input's, or ``preferred_element_type``).
  """

  conv: ConvGeometry
  lhs_shape: tuple[int, ...]
  window: tuple[int, ...]
  tap_order: tuple[int, ...]
  out_shape: tuple[int, ...]
  lhs_dtype: np.dtype
  dtype: np.dtype


# ---------------------------------------------------------------------------
# Layout helpers.
# ---------------------------------------------------------------------------


def _taps(geometry: _PatchGeometry):
  """Every window offset ``k`` (one int per spatial dimension), in the order
  the taps are flattened into the patch axis: row-major over ``tap_order``."""
  ranges = [range(geometry.window[i]) for i in geometry.tap_order]
  for combination in itertools.product(*ranges):
    offset = [0] * len(geometry.window)
    for dim, k in zip(geometry.tap_order, combination):
      offset[dim] = k
    yield tuple(offset)


def _permutation(source_spec, target_spec) -> tuple[int, ...]:
  """The ``jnp.transpose`` permutation moving role ``r`` from axis
  ``source_spec[r]`` to axis ``target_spec[r]``."""
  permutation = [0] * len(source_spec)
  for source, target in zip(source_spec, target_spec):
    permutation[target] = source
  return tuple(permutation)


def _merge_after(x, axis: int):
  """Merges ``axis`` with the axis right after it (feature-major)."""
  shape = x.shape[:axis] + (x.shape[axis] * x.shape[axis + 1],) + x.shape[
      axis + 2:]
  return x.reshape(shape)


def _split_after(x, axis: int, inner: int):
  """Splits ``axis`` into ``(size // inner, inner)``: the inverse of
  ``_merge_after``."""
  shape = x.shape[:axis] + (x.shape[axis] // inner, inner) + x.shape[axis + 1:]
  return x.reshape(shape)


def _accumulation_dtype(dtype) -> np.dtype:
  """Sums of 16-bit floats are accumulated in float32."""
  dtype = np.dtype(dtype)
  if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4:
    return np.dtype(np.float32)
  return dtype


def _contract_per_position(a, a_spec, a_axis: int, b, b_spec, b_axis: int,
                           result_spec, precision):
  """``sum`` over one role of ``a`` against one role of ``b``, separately at
  every spatial position.

  ``a_spec`` and ``b_spec`` name the axes of the two operands' roles
  ``(first, second, *positions)``; ``a_axis``/``b_axis`` (0 or 1) pick the
  role that is summed. The other role of ``a`` becomes role 0 of the result,
  the other role of ``b`` role 1, and the result is laid out by
  ``result_spec``.
  """
  n = len(a_spec) - 2
  contracting = ((a_spec[a_axis],), (b_spec[b_axis],))
  batch = (tuple(a_spec[2:]), tuple(b_spec[2:]))

  def contract(a, b):
    product = lax.dot_general(a, b, (contracting, batch), precision=precision)
    # dot_general puts the positions first, then a's free role, then b's.
    product_spec = (n, n + 1) + tuple(range(n))
    return jnp.transpose(product, _permutation(product_spec, result_spec))

  def out_sharding(a_sharding, b_sharding):
    # Explicit sharding: each free role keeps its operand's sharding; the
    # summed role (a kernel gradient's samples) is summed across devices.
    first = a_sharding[a_spec[1 - a_axis]]
    second = b_sharding[b_spec[1 - b_axis]]
    return _sharding.spec_from(len(result_spec), [
        (result_spec[0], first),
        (result_spec[1], second if second != first else None)])

  return _sharding.run(contract, out_sharding, a, b)


def _cast(x, dtype):
  """``x`` in ``dtype``; a complex value cast to a real dtype keeps its real
  part (JAX's cotangent of a real operand of a complex product)."""
  if (jnp.issubdtype(x.dtype, jnp.complexfloating)
      and not jnp.issubdtype(dtype, jnp.complexfloating)):
    x = jnp.real(x)
  return x.astype(dtype)


def _swap_precision(precision):
  if isinstance(precision, tuple):
    return precision[1], precision[0]
  return precision


# ---------------------------------------------------------------------------
# The patches (im2col) and their transpose (col2im).
# ---------------------------------------------------------------------------


def _pad_config(geometry: _PatchGeometry, ndim: int, per_dimension):
  """A ``lax.pad`` configuration: ``per_dimension(i)`` on spatial dim ``i``,
  nothing on the batch and feature axes."""
  lhs_spec = geometry.conv.dimension_numbers.lhs_spec
  config = [(0, 0, 0)] * ndim
  for i, axis in enumerate(lhs_spec[2:]):
    config[axis] = per_dimension(i)
  return config


def _dilate_and_pad(lhs, geometry: _PatchGeometry):
  """x^ of eq. (5): ``a - 1`` zeros between inputs, then ``(lo, hi)``
  padding (negative entries crop)."""
  conv = geometry.conv
  config = _pad_config(geometry, lhs.ndim, lambda i: (
      conv.padding[i][0], conv.padding[i][1], conv.lhs_dilation[i] - 1))
  return lax.pad(lhs, jnp.zeros((), lhs.dtype), config)


def _undo_dilate_and_pad(padded_grad, geometry: _PatchGeometry):
  """Eq. (15): the gradient of x from that of x^.

  The forward padding is taken back (negative padding becomes zeros for the
  cropped inputs), then every ``a``-th position is kept: the others were
  the holes of the input dilation.
  """
  conv = geometry.conv
  unpadded = lax.pad(
      padded_grad, jnp.zeros((), padded_grad.dtype),
      _pad_config(geometry, padded_grad.ndim,
                  lambda i: (-conv.padding[i][0], -conv.padding[i][1], 0)))
  strides = [1] * unpadded.ndim
  for i, axis in enumerate(conv.dimension_numbers.lhs_spec[2:]):
    strides[axis] = conv.lhs_dilation[i]
  return lax.slice(unpadded, (0,) * unpadded.ndim, unpadded.shape, strides)


def _out_spatial(geometry: _PatchGeometry) -> tuple[int, ...]:
  out_spec = geometry.conv.dimension_numbers.out_spec
  return tuple(geometry.out_shape[axis] for axis in out_spec[2:])


def _tap_slice(geometry: _PatchGeometry, offset, padded_shape):
  """Where tap ``k`` of every window sits in x^: ``s i + d k`` for
  ``i = 0 .. M - 1``, as ``lax.slice`` start, limit and strides."""
  conv = geometry.conv
  ndim = len(padded_shape)
  start, limit, strides = [0] * ndim, list(padded_shape), [1] * ndim
  for i, (axis, m) in enumerate(zip(conv.dimension_numbers.lhs_spec[2:],
                                    _out_spatial(geometry))):
    s, d = conv.window_strides[i], conv.rhs_dilation[i]
    start[axis] = d * offset[i]
    limit[axis] = d * offset[i] + s * (m - 1) + 1
    strides[axis] = s
  return start, limit, strides


# Rule: the patches, docs/derivation.md eqs. (22) and (23).
#
#   Forward (22): P[n, (c, k), i] = x^[n, c, s*i + d*k]
#   -- tap k of every window, for every input feature c. For a fixed k the
#   positions s*i + d*k, i = 0 .. M - 1, are a strided slice of x^, so the
#   patches are K (one per tap) slices of the dilated, padded input, stacked
#   next to the feature axis (feature-major: (c, k)).
#
#   Backward (23): P is linear in x and each entry copies one entry of x^, so
#       dE/dx^[n, c, j] = sum_{(k, i): s*i + d*k = j} dE/dP[n, (c, k), i]
#   -- col2im: each tap's slice of the cotangent is put back where it was
#   read from (lax.pad with interior padding s - 1 undoes the stride), the
#   taps are added up, and eq. (15) drops the padding and keeps every a-th
#   position. Nothing is kept from the forward pass.
#
#   Second order: col2im is linear too, and its transpose is (22) again, so
#   _col2im is a rule whose backward is _patches and the other way round.
@functools.partial(jax.jit, static_argnames=("geometry",))
def _extract_patches(lhs, geometry: _PatchGeometry):
  """Eq. (22): the patches, in the output layout and ``geometry.dtype``."""
  if 0 in geometry.out_shape:
    return jnp.zeros(geometry.out_shape, geometry.dtype)
  lhs_spec = geometry.conv.dimension_numbers.lhs_spec
  out_spec = geometry.conv.dimension_numbers.out_spec
  padded = _dilate_and_pad(lhs.astype(geometry.dtype), geometry)
  columns = [lax.slice(padded, *_tap_slice(geometry, offset, padded.shape))
             for offset in _taps(geometry)]
  feature_axis = lhs_spec[1]
  stacked = jnp.stack(columns, axis=feature_axis + 1)  # (..., C, taps, ...)
  patches = _merge_after(stacked, feature_axis)
  return jnp.transpose(patches, _permutation(lhs_spec, out_spec))


def _place_tap(column, offset, geometry: _PatchGeometry):
  """The transpose of one tap's slice (``_tap_slice``): the column's entries
  go back to ``s i + d k`` in a zero x^, ``lax.pad`` with interior padding
  ``s - 1`` spreading them onto the stride grid."""
  conv = geometry.conv
  lhs_spec = conv.dimension_numbers.lhs_spec
  out_spatial = _out_spatial(geometry)

  def placement(i):
    s, d, m = conv.window_strides[i], conv.rhs_dilation[i], out_spatial[i]
    padded = (_geometry.dilated_size(geometry.lhs_shape[lhs_spec[2 + i]],
                                     conv.lhs_dilation[i])
              + conv.padding[i][0] + conv.padding[i][1])
    start = d * offset[i]
    return start, padded - start - s * (m - 1) - 1, s - 1

  return lax.pad(column, jnp.zeros((), column.dtype),
                 _pad_config(geometry, column.ndim, placement))


@functools.partial(jax.jit, static_argnames=("geometry",))
def _fold_patches(cotangent, geometry: _PatchGeometry):
  """Eq. (23) then (15): col2im, in the input layout and
  ``geometry.lhs_dtype``."""
  if 0 in geometry.lhs_shape or 0 in geometry.out_shape:
    return jnp.zeros(geometry.lhs_shape, geometry.lhs_dtype)
  lhs_spec = geometry.conv.dimension_numbers.lhs_spec
  out_spec = geometry.conv.dimension_numbers.out_spec
  taps = list(_taps(geometry))
  grad = jnp.transpose(cotangent, _permutation(out_spec, lhs_spec))
  grad = grad.astype(_accumulation_dtype(grad.dtype))
  feature_axis = lhs_spec[1]
  grad = _split_after(grad, feature_axis, len(taps))  # (..., C, taps, ...)
  total = None
  for t, offset in enumerate(taps):
    column = lax.index_in_dim(grad, t, axis=feature_axis + 1, keepdims=False)
    placed = _place_tap(column, offset, geometry)
    total = placed if total is None else total + placed
  return _undo_dilate_and_pad(total, geometry).astype(geometry.lhs_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _patches(lhs, geometry: _PatchGeometry):
  return _extract_patches(lhs, geometry)


def _patches_fwd(lhs, geometry: _PatchGeometry):
  # Linear in x: the backward needs nothing from the forward pass.
  return _extract_patches(lhs, geometry), None


def _patches_bwd(geometry: _PatchGeometry, residuals, cotangent):
  del residuals
  if not jnp.issubdtype(geometry.lhs_dtype, jnp.inexact):
    return (None,)  # integer or bool input: no gradient
  return (_col2im(_cast(cotangent, geometry.dtype), geometry),)


_patches.defvjp(_patches_fwd, _patches_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _col2im(cotangent, geometry: _PatchGeometry):
  return _fold_patches(cotangent, geometry)


def _col2im_fwd(cotangent, geometry: _PatchGeometry):
  return _fold_patches(cotangent, geometry), None


def _col2im_bwd(geometry: _PatchGeometry, residuals, lhs_cotangent):
  del residuals
  return (_patches(_cast(lhs_cotangent, geometry.lhs_dtype), geometry),)


_col2im.defvjp(_col2im_fwd, _col2im_bwd)


# ---------------------------------------------------------------------------
# The locally connected layer.
# ---------------------------------------------------------------------------


# Rule: locally connected convolution, docs/derivation.md eqs. (22)-(24).
#
#   Forward (24): y[n, o, i] = sum_f W[o, f, i] P[n, f, i],  f = (c, k)
#   -- the patches of (22) contracted, position by position, with that
#   position's own kernel. With W[o, (c, k), i] = w[o, c, k] for every i
#   this is the convolution (5): the weights tied again.
#
#   Input gradient: y is linear in P with the matrix W[., ., i] at each
#   position, so
#       dE/dP[n, f, i] = sum_o delta[n, o, i] W[o, f, i]              (24)
#   and col2im (23) carries dE/dP back to x.
#
#   Weight gradient (24), eq. (9) untied: each W[o, f, i] is used at one
#   position only, so the sum over the windows i of (9) disappears and only
#   the batch is summed:
#       dE/dW[o, f, i] = sum_n delta[n, o, i] P[n, f, i]
#
#   Residuals: x and W. The patches are recomputed from x in the backward
#   (K slices): they are K times larger than x.
#
#   Second order: the backward is made of the contractions above (bilinear)
#   and of the rules _patches and _col2im, so it is differentiable again.
def _local_forward(lhs, rhs, geometry: _PatchGeometry):
  dnums = geometry.conv.dimension_numbers
  patches = _patches(lhs, geometry)
  return _contract_per_position(
      patches, dnums.out_spec, 1, rhs, dnums.rhs_spec, 1, dnums.out_spec,
      geometry.conv.precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _local(lhs, rhs, geometry: _PatchGeometry):
  return _local_forward(lhs, rhs, geometry)


def _local_fwd(lhs, rhs, geometry: _PatchGeometry):
  return _local_forward(lhs, rhs, geometry), (lhs, rhs)


def _local_bwd(geometry: _PatchGeometry, residuals, cotangent):
  lhs, rhs = residuals
  lhs_grad = rhs_grad = None
  if jnp.issubdtype(lhs.dtype, jnp.inexact):
    lhs_grad = _local_input_gradient(cotangent, rhs, geometry)
  if jnp.issubdtype(rhs.dtype, jnp.inexact):
    rhs_grad = _cast(_local_kernel_gradient(lhs, cotangent, geometry),
                     rhs.dtype)
    rhs_grad = _sharding.summed_like(rhs_grad, rhs)
  if lhs_grad is not None:
    lhs_grad = _sharding.summed_like(lhs_grad, lhs)
  return lhs_grad, rhs_grad


_local.defvjp(_local_fwd, _local_bwd)


def _local_patch_gradient(cotangent, rhs, geometry: _PatchGeometry):
  """dE/dP[n, f, i] = sum_o delta[n, o, i] W[o, f, i] (eq. 24), in the
  patches' layout."""
  dnums = geometry.conv.dimension_numbers
  return _contract_per_position(
      cotangent, dnums.out_spec, 1, rhs, dnums.rhs_spec, 0, dnums.out_spec,
      geometry.conv.precision)


def _local_input_gradient(cotangent, rhs, geometry: _PatchGeometry):
  """dE/dx: the patch gradient of eq. (24), carried back by col2im (23).
  Returns ``geometry.lhs_dtype``."""
  patch_grad = _local_patch_gradient(cotangent, rhs, geometry)
  return _col2im(_cast(patch_grad, geometry.dtype), geometry)


def _local_kernel_gradient(lhs, cotangent, geometry: _PatchGeometry):
  """dE/dW[o, f, i] = sum_n delta[n, o, i] P[n, f, i] (eq. 24): eq. (9)
  summed over the batch only, in the kernel's layout."""
  dnums = geometry.conv.dimension_numbers
  patches = _patches(lhs, geometry)
  return _contract_per_position(
      cotangent, dnums.out_spec, 0, patches, dnums.out_spec, 0,
      dnums.rhs_spec, _swap_precision(geometry.conv.precision))


# ---------------------------------------------------------------------------
# Normalisation at the public boundary.
# ---------------------------------------------------------------------------


_PATCH_NAMES = {"rhs": "filter_shape"}


def _patch_dtype(lhs_dtype, preferred_element_type) -> np.dtype:
  """The patches' dtype, with ``lax``'s rules for ``preferred_element_type``:
  integers may widen to integers of the same signedness or become floats,
  floats widen to floats, complex to complex; nothing narrows."""
  lhs_dtype = np.dtype(lhs_dtype)
  if preferred_element_type is None:
    return lhs_dtype
  try:
    preferred = jax.dtypes.canonicalize_dtype(np.dtype(preferred_element_type))
  except TypeError:
    raise TypeError(
        f"`preferred_element_type` must be a dtype, got "
        f"{preferred_element_type!r}.") from None
  integer_to_float = (jnp.issubdtype(lhs_dtype, jnp.integer)
                      and jnp.issubdtype(preferred, jnp.floating))
  if not integer_to_float:
    for kind in (jnp.integer, jnp.floating, jnp.complexfloating):
      if jnp.issubdtype(lhs_dtype, kind) and not jnp.issubdtype(preferred,
                                                                kind):
        raise TypeError(
            f"`preferred_element_type` {preferred} cannot hold patches of a "
            f"{lhs_dtype} input: integers go to integers or floats, floats "
            f"to floats, complex to complex.")
    if (jnp.issubdtype(lhs_dtype, jnp.signedinteger)
        and not jnp.issubdtype(preferred, jnp.signedinteger)):
      raise TypeError(
          f"`preferred_element_type` {preferred} must be signed like the "
          f"{lhs_dtype} input.")
  if preferred.itemsize < lhs_dtype.itemsize:
    raise TypeError(
        f"`preferred_element_type` {preferred} must not be narrower than the "
        f"input's {lhs_dtype}.")
  return preferred


def _window_shape(filter_shape, n: int) -> tuple[int, ...]:
  if isinstance(filter_shape, (Sequence, np.ndarray)) and not isinstance(
      filter_shape, str):
    return _geometry.int_tuple(tuple(filter_shape), n, "filter_shape")
  raise TypeError(
      f"`filter_shape` must be a sequence of {n} positive ints (one per "
      f"spatial dimension), got {filter_shape!r}.")


def _parse_dimension_numbers(lhs_shape, window, dimension_numbers):
  """Dimension numbers as a ``ConvDimensionNumbers`` (strings parsed by
  ``lax.conv_dimension_numbers``; ``make_conv_geometry`` validates the
  result)."""
  if isinstance(dimension_numbers, ConvDimensionNumbers):
    return dimension_numbers
  try:
    return lax.conv_dimension_numbers(tuple(lhs_shape), (1, 1) + window,
                                      dimension_numbers)
  except (TypeError, ValueError) as error:
    raise type(error)(f"`dimension_numbers`: {error}") from None


def _kernel_shape(rhs_spec, rank: int, out_features: int, in_features: int,
                  window_in_memory_order):
  """A kernel shape in the rhs layout; the window sizes go to the spatial
  axes in increasing axis order, as ``filter_shape`` lists them."""
  if sorted(int(a) for a in rhs_spec) != list(range(rank)):
    # Not a layout: make_conv_geometry reports the bad dimension numbers.
    return (1,) * rank
  shape = [0] * rank
  shape[rhs_spec[0]] = out_features
  shape[rhs_spec[1]] = in_features
  for axis, size in zip(sorted(rhs_spec[2:]), window_in_memory_order):
    shape[axis] = size
  return tuple(shape)


def _patch_geometry(lhs_shape, lhs_dtype, filter_shape, window_strides,
                    padding, lhs_dilation, rhs_dilation, dimension_numbers,
                    precision, preferred_element_type) -> _PatchGeometry:
  """Validates the arguments of the patch functions, once, in Python."""
  lhs_shape = tuple(int(size) for size in lhs_shape)
  if len(lhs_shape) < 2:
    raise ValueError(
        f"`lhs` must have rank >= 2 (batch and feature axes), got shape "
        f"{lhs_shape}.")
  n = len(lhs_shape) - 2
  filter_shape = _window_shape(filter_shape, n)
  dtype = _patch_dtype(lhs_dtype, preferred_element_type)
  dnums = _parse_dimension_numbers(lhs_shape, filter_shape, dimension_numbers)
  lhs_spec = dnums.lhs_spec
  channels = (lhs_shape[lhs_spec[1]] if sorted(lhs_spec) == list(range(n + 2))
              else 1)
  taps = math.prod(filter_shape)
  rhs_shape = _kernel_shape(dnums.rhs_spec, n + 2, channels * taps, channels,
                            filter_shape)
  conv = make_conv_geometry(
      lhs_shape, rhs_shape, window_strides, padding, lhs_dilation,
      rhs_dilation, dnums, precision=precision, names=_PATCH_NAMES,
      allow_empty=True)
  rhs_spec = conv.dimension_numbers.rhs_spec
  window = tuple(rhs_shape[axis] for axis in rhs_spec[2:])
  tap_order = tuple(sorted(range(n), key=lambda i: rhs_spec[2 + i]))
  out_shape = conv_output_shape(conv, lhs_shape, rhs_shape)
  return _PatchGeometry(conv, lhs_shape, window, tap_order, out_shape,
                        np.dtype(lhs_dtype), dtype)


def _check_shape(value, expected, name: str, what: str):
  if tuple(value.shape) != tuple(expected):
    raise ValueError(
        f"`{name}` must have {what} {tuple(expected)}, got "
        f"{tuple(value.shape)}.")


def _local_kernel_shape(geometry: _PatchGeometry,
                        out_features: int) -> tuple[int, ...]:
  """``(O, C * prod(filter_shape), *output spatial)`` in the rhs layout."""
  rhs_spec = geometry.conv.dimension_numbers.rhs_spec
  out_spec = geometry.conv.dimension_numbers.out_spec
  shape = [0] * len(rhs_spec)
  shape[rhs_spec[0]] = out_features
  shape[rhs_spec[1]] = geometry.out_shape[out_spec[1]]
  for axis, size in zip(rhs_spec[2:], _out_spatial(geometry)):
    shape[axis] = size
  return tuple(shape)


def _check_local_kernel(rhs_shape, geometry: _PatchGeometry, name: str):
  rhs_spec = geometry.conv.dimension_numbers.rhs_spec
  if len(rhs_shape) != len(geometry.lhs_shape):
    raise ValueError(
        f"`{name}` must have the rank of `lhs` ({len(geometry.lhs_shape)}), "
        f"got shape {tuple(rhs_shape)}.")
  expected = _local_kernel_shape(geometry, rhs_shape[rhs_spec[0]])
  if tuple(rhs_shape) != expected:
    lhs_spec = geometry.conv.dimension_numbers.lhs_spec
    raise ValueError(
        f"`{name}` must have shape {expected}: input features * "
        f"prod(filter_shape) = {geometry.lhs_shape[lhs_spec[1]]} * "
        f"{math.prod(geometry.window)} along its input-feature axis and the "
        f"output's spatial sizes {_out_spatial(geometry)} along its spatial "
        f"axes; got {tuple(rhs_shape)}.")


def _check_local_precision(precision):
  """lax's locally connected convolution takes precisions, not dot
  algorithms."""
  values = precision if isinstance(precision, tuple) else (precision,)
  if any(p is not None and not isinstance(p, lax.Precision) for p in values):
    raise ValueError(
        f"`precision` must be None, a lax.Precision (or its name) or a pair "
        f"of them for a locally connected convolution, got {precision!r}.")


# ---------------------------------------------------------------------------
# Public API.
# ---------------------------------------------------------------------------


def conv_general_dilated_patches(
    lhs: jax.Array,
    filter_shape: Sequence[int],
    window_strides: int | Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    precision=None,
    preferred_element_type=None,
) -> jax.Array:
  r"""The patches (im2col) of every window of a convolution.

  Same signature and results as ``lax.conv_general_dilated_patches``. Every
  window of ``conv_general_dilated`` with these arguments is flattened into
  the output's feature axis (eq. 22):

  .. math::
    P[n, (c, k), i] = \hat x[n, c,\; s\,i + d\,k]

  where :math:`\hat x` is the input dilated by ``lhs_dilation`` and padded.
  The feature index is input-feature-major: ``c * prod(filter_shape) +
  flat(k)``, with ``k`` flattened row-major in the order of the kernel's
  spatial axes in ``dimension_numbers[1]`` (lax's order). The gradient is
  col2im (eq. 23, ``conv_patches_grad``): each patch entry's cotangent is
  added back to the input it was read from.

  Args:
    lhs: input, rank ``n + 2``; any dtype.
    filter_shape: the window, ``n`` positive ints in the order of the kernel
      spatial axes of ``dimension_numbers[1]``.
    window_strides: an int or ``n`` positive ints.
    padding: ``"SAME"``, ``"SAME_LOWER"``, ``"VALID"``, or ``n`` ``(lo, hi)``
      pairs; negative entries crop.
    lhs_dilation: ``None`` or ``n`` positive ints (input dilation).
    rhs_dilation: ``None`` or ``n`` positive ints (window dilation).
    dimension_numbers: as in ``lax.conv_general_dilated``; the output
      spec's feature axis holds the patches.
    precision: accepted for compatibility and checked; the patches are exact
      copies of the input, computed without multiplications.
    preferred_element_type: the output dtype, at least as wide as the
      input's (lax's rules); ``None`` keeps the input's dtype.

  Returns:
    The patches, shaped like the output of ``conv_general_dilated`` with
    ``C * prod(filter_shape)`` output features.
  """
  lhs = _geometry.as_array(lhs, "lhs")
  geometry = _patch_geometry(lhs.shape, lhs.dtype, filter_shape,
                             window_strides, padding, lhs_dilation,
                             rhs_dilation, dimension_numbers, precision,
                             preferred_element_type)
  return _patches(lhs, geometry)


def conv_general_dilated_local(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: int | Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    filter_shape: Sequence[int],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    precision=None,
) -> jax.Array:
  r"""Locally connected (unshared) convolution with hand-derived gradients.

  Same signature and results as ``lax.conv_general_dilated_local``. Every
  output position ``i`` has its own kernel ``W[., ., i]``, applied to that
  position's patch of eq. (22) (eq. 24):

  .. math::
    y[n, o, i] = \sum_{c, k} W[o, (c, k), i]\; \hat x[n, c,\; s\,i + d\,k]

  With the same kernel at every position this is ``conv_general_dilated``.
  The input gradient is col2im (eq. 23) of ``sum_o delta W``; the kernel
  gradient is eq. (9) without the sum over positions,
  ``dE/dW[o, f, i] = sum_n delta[n, o, i] P[n, f, i]``. Flax's
  ``nn.ConvLocal`` kernels drop in with its dimension numbers
  (``("NHWC", "HWIO", "NHWC")`` for 2-D).

  Args:
    lhs: input, rank ``n + 2``.
    rhs: the kernels, rank ``n + 2``: output features along ``O``,
      ``C * prod(filter_shape)`` along ``I`` (the patch features of
      ``conv_general_dilated_patches``), and the *output's* spatial sizes
      along the spatial axes of ``dimension_numbers[1]``.
    window_strides: an int or ``n`` positive ints.
    padding: ``"SAME"``, ``"SAME_LOWER"``, ``"VALID"``, or ``n`` ``(lo, hi)``
      pairs; negative entries crop.
    filter_shape: the window, ``n`` positive ints in the order of the kernel
      spatial axes of ``dimension_numbers[1]``.
    lhs_dilation: ``None`` or ``n`` positive ints (input dilation).
    rhs_dilation: ``None`` or ``n`` positive ints (window dilation).
    dimension_numbers: as in ``lax.conv_general_dilated``.
    precision: ``None``, a ``lax.Precision`` or its name, or a pair of them
      (input, kernel), for the contraction.

  Returns:
    The output, in the layout of ``dimension_numbers``' output spec, with
    ``lax.dot_general``'s dtype for the two operands. Gradients come back in
    the dtypes of ``lhs`` and ``rhs``.
  """
  lhs = _geometry.as_array(lhs, "lhs")
  rhs = _geometry.as_array(rhs, "rhs")
  geometry = _patch_geometry(lhs.shape, lhs.dtype, filter_shape,
                             window_strides, padding, lhs_dilation,
                             rhs_dilation, dimension_numbers, precision, None)
  _check_local_precision(geometry.conv.precision)
  _check_local_kernel(rhs.shape, geometry, "rhs")
  return _local(lhs, rhs, geometry)


def conv_patches_grad(
    cotangent: jax.Array,
    lhs_shape: Sequence[int],
    filter_shape: Sequence[int],
    window_strides: int | Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
) -> jax.Array:
  r"""Gradient of ``conv_general_dilated_patches``: col2im (eq. 23).

  Each entry of the patch cotangent is added back to the input position it
  was read from; padding positions and the holes of the input dilation are
  dropped (eq. 15):

  .. math::
    \frac{\partial E}{\partial \hat x[n, c, j]} =
    \sum_{(k, i):\ s i + d k = j} \frac{\partial E}{\partial P[n, (c, k), i]}

  It is the transpose of the patches: ``<patches(x), G> = <x, col2im(G)>``.
  Differentiable to any order (its gradient is the patches again).

  Args:
    cotangent: ``dE/dP``, shaped like the patches; floating or complex.
    lhs_shape: the forward input's shape.
    filter_shape: the forward window, as in
      ``conv_general_dilated_patches``.
    window_strides: the forward stride.
    padding: the forward padding.
    lhs_dilation: the forward input dilation.
    rhs_dilation: the forward window dilation.
    dimension_numbers: the forward layouts.

  Returns:
    ``dE/dx`` with shape ``lhs_shape`` and the cotangent's dtype.
  """
  cotangent = _geometry.as_array(cotangent, "cotangent")
  dtype = _geometry.check_inexact(cotangent, "cotangent")
  lhs_shape = _shape_argument(lhs_shape, "lhs_shape")
  geometry = _patch_geometry(lhs_shape, dtype, filter_shape, window_strides,
                             padding, lhs_dilation, rhs_dilation,
                             dimension_numbers, None, None)
  _check_shape(cotangent, geometry.out_shape, "cotangent",
               "the patches' shape")
  return _col2im(cotangent, geometry)


def conv_local_input_grad(
    cotangent: jax.Array,
    rhs: jax.Array,
    lhs_shape: Sequence[int],
    window_strides: int | Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    filter_shape: Sequence[int],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    precision=None,
) -> jax.Array:
  r"""Gradient of ``conv_general_dilated_local`` with respect to its input.

  The cotangent is contracted with each position's kernel, giving the
  gradient of the patches (eq. 24), and col2im (eq. 23) adds that back to
  the input positions the patches were read from:

  .. math::
    \frac{\partial E}{\partial P[n, f, i]} = \sum_o \delta[n, o, i]\,
    W[o, f, i]

  Differentiable to any order.

  Args:
    cotangent: ``dE/dy``, shaped like the forward output; floating or
      complex.
    rhs: the forward kernels.
    lhs_shape: the forward input's shape.
    window_strides: the forward stride.
    padding: the forward padding.
    filter_shape: the forward window.
    lhs_dilation: the forward input dilation.
    rhs_dilation: the forward window dilation.
    dimension_numbers: the forward layouts.
    precision: as in ``conv_general_dilated_local``.

  Returns:
    ``dE/dx`` with shape ``lhs_shape``, in ``lax.dot_general``'s dtype for
    the cotangent and ``rhs``.
  """
  cotangent = _geometry.as_array(cotangent, "cotangent")
  rhs = _geometry.as_array(rhs, "rhs")
  dtype = _geometry.check_inexact(cotangent, "cotangent")
  _geometry.check_inexact(rhs, "rhs")
  lhs_shape = _shape_argument(lhs_shape, "lhs_shape")
  geometry = _patch_geometry(lhs_shape, dtype, filter_shape, window_strides,
                             padding, lhs_dilation, rhs_dilation,
                             dimension_numbers, precision, None)
  _check_local_precision(geometry.conv.precision)
  _check_local_kernel(rhs.shape, geometry, "rhs")
  _check_cotangent(cotangent, geometry, rhs.shape)
  patch_grad = _local_patch_gradient(cotangent, rhs, geometry)
  dtype = np.dtype(patch_grad.dtype)
  return _col2im(patch_grad, geometry._replace(lhs_dtype=dtype, dtype=dtype))


def conv_local_kernel_grad(
    lhs: jax.Array,
    cotangent: jax.Array,
    window_strides: int | Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    filter_shape: Sequence[int],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    precision=None,
) -> jax.Array:
  r"""Gradient of ``conv_general_dilated_local`` with respect to its kernels.

  Eq. (9) untied (eq. 24): each kernel entry is used at one output position
  only, so its gradient is that position's patch times its delta, summed
  over the batch and *not* over positions:

  .. math::
    \frac{\partial E}{\partial W[o, (c, k), i]} = \sum_n \delta[n, o, i]\,
    \hat x[n, c,\; s\,i + d\,k]

  Summed over the positions ``i`` it is the kernel gradient of the tied
  convolution, eq. (9). Differentiable to any order.

  Args:
    lhs: the forward input.
    cotangent: ``dE/dy``, shaped like the forward output; floating or
      complex.
    window_strides: the forward stride.
    padding: the forward padding.
    filter_shape: the forward window.
    lhs_dilation: the forward input dilation.
    rhs_dilation: the forward window dilation.
    dimension_numbers: the forward layouts.
    precision: as in ``conv_general_dilated_local``.

  Returns:
    ``dE/dW`` in the kernel layout of ``dimension_numbers``: ``(O, C *
    prod(filter_shape), *output spatial)`` placed by its rhs spec, in
    ``lax.dot_general``'s dtype for the cotangent and ``lhs``.
  """
  lhs = _geometry.as_array(lhs, "lhs")
  cotangent = _geometry.as_array(cotangent, "cotangent")
  _geometry.check_inexact(cotangent, "cotangent")
  geometry = _patch_geometry(lhs.shape, lhs.dtype, filter_shape,
                             window_strides, padding, lhs_dilation,
                             rhs_dilation, dimension_numbers, precision, None)
  _check_local_precision(geometry.conv.precision)
  out_spec = geometry.conv.dimension_numbers.out_spec
  if cotangent.ndim != len(geometry.out_shape):
    raise ValueError(
        f"`cotangent` must have the forward output's rank "
        f"{len(geometry.out_shape)}, got shape {tuple(cotangent.shape)}.")
  rhs_shape = _local_kernel_shape(geometry, cotangent.shape[out_spec[1]])
  _check_cotangent(cotangent, geometry, rhs_shape)
  return _local_kernel_gradient(lhs, cotangent, geometry)


def _shape_argument(value, name: str) -> tuple[int, ...]:
  if isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, str):
    return _geometry.int_tuple(tuple(value), len(value), name, minimum=0)
  raise TypeError(f"`{name}` must be a sequence of ints, got {value!r}.")


def _check_cotangent(cotangent, geometry: _PatchGeometry, rhs_shape):
  """The local convolution's output shape: the patches' with ``O`` features."""
  out_spec = geometry.conv.dimension_numbers.out_spec
  rhs_spec = geometry.conv.dimension_numbers.rhs_spec
  expected = list(geometry.out_shape)
  expected[out_spec[1]] = rhs_shape[rhs_spec[0]]
  _check_shape(cotangent, expected, "cotangent", "the forward output's shape")
