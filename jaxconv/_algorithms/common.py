"""Slicing and contraction helpers shared by the direct algorithms.

They work in the arrays' own layouts: slices and contractions name the axes
through the dimension numbers, so no operand is transposed into a working
layout first (XLA lays out each contraction).
"""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp
from jax import lax

from jaxconv._geometry import spatial_sizes

__all__ = [
    "accumulation_dtype",
    "contract",
    "interleave",
    "one_output_feature_per_group",
    "prepared_input",
    "spatial_sizes",
    "window_slice",
]


def accumulation_dtype(dtype, preferred):
  """The dtype in which a direct algorithm sums its terms: the preferred one,
  float32 for 16-bit inputs, else ``None`` (the inputs' own)."""
  if preferred is not None:
    return preferred
  if jnp.dtype(dtype).itemsize < 4:
    return jnp.float32
  return None


def prepared_input(x, geometry):
  """x^ of eq. (5): dilate by ``a`` and pad by ``(lo, hi)`` (negative crops)."""
  lhs_spec = geometry.dimension_numbers.lhs_spec
  config = [(0, 0, 0)] * x.ndim
  for axis, (lo, hi), a in zip(lhs_spec[2:], geometry.padding,
                               geometry.lhs_dilation):
    config[axis] = (lo, hi, a - 1)
  if all(c == (0, 0, 0) for c in config):
    return x
  return lax.pad(x, jnp.zeros((), x.dtype), config)


def window_slice(x, spec, starts, counts, steps):
  """``x[..., start + step * m, ...]`` for ``m < count``, per spatial axis."""
  start, limit, stride = [0] * x.ndim, list(x.shape), [1] * x.ndim
  for axis, b, m, s in zip(spec[2:], starts, counts, steps):
    start[axis], limit[axis], stride[axis] = b, b + s * (m - 1) + 1, s
  return lax.slice(x, start, limit, stride)


def interleave(blocks, out_spec, dims, factors):
  """Equal-shape blocks, one per index ``(p_1, ..., p_r)`` in row-major
  order over the spatial dims ``dims``, into one array in which block ``p``
  fills positions ``f_j*q + p_j`` of dim ``j``: the reshape
  ``(q, p) -> f*q + p`` of eq. (70), and, with blocks of one position each,
  the assembly of ``window_dot``'s per-position terms. ``blocks`` is a list
  or an array holding them along its leading axis."""
  shape = blocks[0].shape
  stacked = (jnp.stack(blocks, axis=-1) if isinstance(blocks, list) else
             jnp.moveaxis(blocks, 0, -1))
  stacked = stacked.reshape(shape + tuple(factors))
  perm, merged = [], list(shape)
  for axis in range(len(shape)):
    perm.append(axis)
    for j, i in enumerate(dims):
      if out_spec[2 + i] == axis:
        perm.append(len(shape) + j)
        merged[axis] *= factors[j]
  return jnp.transpose(stacked, perm).reshape(merged)


def one_output_feature_per_group(out_features: int, geometry) -> bool:
  """Whether the kernel has no free axis: every output feature is a group
  of its own, so a term of eq. (5) is a product summed, not a matrix
  product (:func:`_broadcast_contract`)."""
  return out_features == max(geometry.feature_group_count,
                             geometry.batch_group_count)


def _letters(count, first):
  return [chr(ord(first) + i) for i in range(count)]


def contract(patches, kernel, geometry, window: bool, accumulate):
  """Terms of eq. (5): contracts the features of each of ``patches`` (input
  slices of one shape, in the input's layout) with ``kernel``, respecting
  feature groups ``G`` and batch groups ``B``; with ``window`` the spatial
  axes are contracted too (one output position per patch), else they are
  output positions (one tap, ``kernel`` without spatial axes).

  Returns one term per patch, in the output's layout, spatial axes of size 1
  when ``window``.
  """
  lhs_spec, rhs_spec, out_spec = geometry.dimension_numbers
  groups, batch_groups = (geometry.feature_group_count,
                          geometry.batch_group_count)
  rank = len(lhs_spec)
  spatial = _letters(rank - 2, "p")                # window or output axes
  shape = patches[0].shape
  x_axes = [""] * len(shape)
  x_axes[lhs_spec[0]], x_axes[lhs_spec[1]] = "n", "c"
  for axis, letter in zip(lhs_spec[2:], spatial):
    x_axes[axis] = letter
  if window:
    k_axes = [""] * kernel.ndim
    for axis, letter in zip(rhs_spec[2:], spatial):
      k_axes[axis] = letter
    k_axes[rhs_spec[0]], k_axes[rhs_spec[1]] = "o", "c"
  else:                                            # (out, in) only, in order
    k_axes = ["o", "c"] if rhs_spec[0] < rhs_spec[1] else ["c", "o"]
  o_axes = [""] * rank
  o_axes[out_spec[0]], o_axes[out_spec[1]] = "n", "o"
  for axis, letter in zip(out_spec[2:], spatial):
    o_axes[axis] = "" if window else letter
  out_features = kernel.shape[rhs_spec[0] if window else k_axes.index("o")]
  split = groups if groups > 1 else batch_groups
  if split > 1:
    # G: features c -> (g, c'); B: batch n -> (g, n'). Kernel o -> (g, o').
    grouped = "c" if groups > 1 else "n"
    axis = x_axes.index(grouped)
    shape = shape[:axis] + (split, shape[axis] // split) + shape[axis + 1:]
    patches = [patch.reshape(shape) for patch in patches]
    x_axes[axis:axis + 1] = ["g", grouped]
    axis = k_axes.index("o")
    kernel = kernel.reshape(kernel.shape[:axis] + (split, out_features
                                                   // split)
                            + kernel.shape[axis + 1:])
    k_axes[axis:axis + 1] = ["g", "o"]
    o_axes[o_axes.index("o"):o_axes.index("o") + 1] = ["g", "o"]
  result = "".join(o_axes)
  sizes = dict(zip(x_axes, shape)) | dict(zip(k_axes, kernel.shape))
  # Only "o" is a kernel axis that the patch lacks.
  if one_output_feature_per_group(out_features, geometry):
    outs = _broadcast_contract(patches, x_axes, kernel, k_axes, result,
                               accumulate, spatial)
  else:
    outs = [_dot_contract(patch, x_axes, kernel, k_axes, result, window,
                          accumulate, geometry.precision)
            for patch in patches]
  out_shape = [1] * rank
  out_shape[out_spec[0]] = sizes["n"]
  out_shape[out_spec[1]] = out_features
  if not window:
    for axis, letter in zip(out_spec[2:], spatial):
      out_shape[axis] = sizes[letter]
  return [out.reshape(out_shape) for out in outs]


def _dot_contract(patch, x_axes, kernel, k_axes, result, window, accumulate,
                  precision):
  """The contraction as one ``dot_general`` (the kernel has a free axis);
  a channels-last kernel gradient's through ``_long_contraction``."""
  if accumulate is not None:
    # XLA's CPU dot has no bf16 x bf16 -> f32 kernel; products of
    # low-precision values are exact in the wider type anyway.
    patch, kernel = patch.astype(accumulate), kernel.astype(accumulate)
  if window:
    out = _long_contraction(patch, x_axes, kernel, k_axes, result,
                            accumulate, precision)
    if out is not None:
      return out
  operands = [("".join(x_axes), patch), ("".join(k_axes), kernel)]
  if window and patch.size > kernel.size:
    # A kernel gradient that _long_contraction cannot merge (its contracted
    # axes do not lead both operands, as in NCHW) contracts them over
    # several axes; XLA's CPU dot then copies one operand into a transposed
    # layout, and it is the first one: put the smaller first.
    operands.reverse()
  first, second = operands
  # dot_general's output lists the shared (group) axes, then the first
  # operand's free axes, then the second's; transpose that afterwards.
  shared = [a for a in result if a in first[0] and a in second[0]]
  natural = "".join(shared + [a for a in result if a not in shared
                              and a in first[0]]
                    + [a for a in result if a not in shared
                       and a not in first[0]])
  out = jnp.einsum(f"{first[0]},{second[0]}->{natural}", first[1],
                   second[1], precision=precision,
                   preferred_element_type=accumulate)
  return jnp.transpose(out, [natural.index(a) for a in result])


def _long_contraction(patch, x_axes, kernel, k_axes, result, accumulate,
                      precision):
  """A kernel gradient's term of eq. (9) as a matrix product over one merged
  axis, where the contracted axes (the samples and the window) lead both
  operands in the same order and each operand has one free axis (no
  groups): the channels-last layouts. Else ``None``. The operands are
  already in the accumulation dtype.

  The merge is a free reshape to an ``(M, C)`` and an ``(M, K)`` matrix.
  XLA's CPU dot runs that product fastest when the smaller of ``C`` and
  ``K`` indexes its output's rows; XLA lays a lone product out as its result
  is laid out, so to choose the rows the sum over ``M`` is split into two
  halves, one batched product whose two partial sums are then added: eq.
  (9)'s sum over the samples and the window, in two parts. That pays where
  ``M`` is at least ``C*K``; shorter contractions stay one product.
  """
  contracted = [a for a in x_axes if a in k_axes and a not in result]
  n = len(contracted)
  if (not contracted or x_axes[:n] != contracted or k_axes[:n] != contracted
      or len(x_axes) != n + 1 or len(k_axes) != n + 1):
    return None
  length = math.prod(patch.shape[:n])
  x_free, k_free = x_axes[n], k_axes[n]
  x = patch.reshape(length, patch.shape[n])
  k = kernel.reshape(length, kernel.shape[n])
  einsum = functools.partial(jnp.einsum, precision=precision,
                             preferred_element_type=accumulate)
  if length % 2 or length < x.shape[1] * k.shape[1]:
    return einsum(f"m{x_free},m{k_free}->{result}", x, k)
  rows, cols = (x_free, k_free) if x.shape[1] <= k.shape[1] else (k_free,
                                                                  x_free)
  halves = einsum(f"bm{x_free},bm{k_free}->b{rows}{cols}",
                  x.reshape(2, length // 2, -1), k.reshape(2, length // 2, -1))
  return jnp.einsum(f"b{rows}{cols}->{result}", halves)


def _broadcast_contract(patches, x_axes, kernel, k_axes, result, accumulate,
                        spatial):
  """The contraction when every kernel axis longer than 1 is also a patch
  axis (depthwise: one input and one output feature per group): a product
  in the patches' own layout, summed over the contracted axes. XLA fuses it
  into one pass, where a batched product of tiny matrices would transpose
  both operands first.

  Several patches (the output positions of ``window_dot``) are summed by one
  variadic reduction, which reads the operands once for all of them, in two
  stages: first over the ``spatial`` letters, then over the rest (a kernel
  gradient's batch), so that the first stage keeps a partial sum per sample.
  """
  dtype = accumulate or jnp.result_type(patches[0], kernel)
  sizes = dict(zip(k_axes, kernel.shape)) | dict(zip(x_axes,
                                                     patches[0].shape))
  kept = [a for a in k_axes if a in x_axes]       # the others have size 1
  shared = [a for a in x_axes if a in k_axes]
  kernel = kernel.reshape([sizes[a] for a in kept])
  kernel = jnp.transpose(kernel, [kept.index(a) for a in shared])
  kernel = kernel.reshape([sizes[a] if a in k_axes else 1 for a in x_axes])
  kernel = kernel.astype(dtype)
  outs = [patch.astype(dtype) * kernel for patch in patches]
  axes = list(x_axes)
  for stage in (lambda a: a in spatial, lambda a: True):
    summed = [i for i, a in enumerate(axes) if a not in result and stage(a)]
    outs = _sum_together(outs, summed)
    axes = [a for i, a in enumerate(axes) if i not in summed]
  outs = [jnp.transpose(out, [axes.index(a) for a in result if a in axes])
          for out in outs]
  return [out.reshape([sizes[a] for a in result]) for out in outs]


def _sum_together(arrays, axes):
  """Each of ``arrays`` (one shape and dtype) summed over ``axes``, by one
  variadic reduction."""
  if not axes:
    return arrays
  if all(arrays[0].shape[i] == 1 for i in axes):
    return [a.reshape([n for i, n in enumerate(a.shape) if i not in axes])
            for a in arrays]
  zeros = tuple(jnp.zeros((), a.dtype) for a in arrays)
  return list(lax.reduce(tuple(arrays), zeros,
                         lambda x, y: tuple(p + q for p, q in zip(x, y)),
                         tuple(axes)))
