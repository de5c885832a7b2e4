"""A literal, slow transcription of the convolution equations, in NumPy.

This module is an independent oracle for the tests and a reading aid: every
function is the equation of ``docs/derivation.md`` it names, written as a loop
over kernel offsets (or over matrix entries) with nothing clever in between.
It shares no code with the rules in ``jaxconv.convolution``; in particular the input
gradient here is the *scatter* form of eq. (12), each delta pushed back along
the edges that produced it, not the rotated-kernel convolution of eq. (14),
so agreement between the two is a real check of the derivation.

Layouts are canonical: input ``(N, C, *spatial)``, kernel
``(O, C / G, *spatial)``, output ``(N / B, O, *spatial)``. ``to_canonical`` and
``from_canonical`` convert from any ``lax`` dimension numbers. Everything is
computed in float64.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

__all__ = [
    "conv_forward",
    "conv_input_grad",
    "conv_kernel_grad",
    "conv_bias_grad",
    "conv_matrix",
    "conv_patches",
    "conv_patches_grad",
    "conv_local",
    "conv_local_input_grad",
    "conv_local_kernel_grad",
    "from_canonical",
    "to_canonical",
]


def to_canonical(array, spec: Sequence[int]) -> np.ndarray:
  """Transposes ``array`` so that its axes follow ``spec`` (e.g. N, C, spatial).

  Args:
    array: an array in any layout.
    spec: the axis of ``array`` that goes first, second, ...: a ``lax``
      dimension-numbers spec such as ``(0, 3, 1, 2)`` for NHWC.

  Returns:
    ``array`` as float64, with its axes in ``spec``'s order.
  """
  return np.transpose(np.asarray(array, dtype=np.float64), tuple(spec))


def from_canonical(array, spec: Sequence[int]) -> np.ndarray:
  """Inverse of ``to_canonical``: puts canonical axes back into ``spec``'s places.

  Args:
    array: an array in canonical order (e.g. N, C, spatial).
    spec: the same spec that was given to ``to_canonical``.

  Returns:
    ``array`` with its axes back in the original layout.
  """
  return np.transpose(array, tuple(np.argsort(spec)))


def _prepared_input(x, padding, lhs_dilation):
  """x^ of eq. (5): the input dilated by ``a`` and padded by ``(lo, hi)``.

  Negative padding crops. Returns x^ and, for the scatter in the input
  gradient, the position of each original element inside x^.
  """
  n_spatial = x.ndim - 2
  dilated_shape = x.shape[:2] + tuple(
      0 if size == 0 else (size - 1) * a + 1
      for size, a in zip(x.shape[2:], lhs_dilation))
  dilated = np.zeros(dilated_shape)
  dilated[(slice(None), slice(None)) + tuple(
      slice(None, None, a) for a in lhs_dilation)] = x
  # Pad generously, then crop: handles negative padding uniformly.
  grow = [(max(lo, 0), max(hi, 0)) for lo, hi in padding]
  padded = np.pad(dilated, [(0, 0), (0, 0)] + grow)
  crop = []
  for (lo, hi), size in zip(padding, padded.shape[2:]):
    start = max(-lo, 0)
    stop = size - max(-hi, 0)
    crop.append(slice(start, max(stop, start)))
  del n_spatial
  return padded[(slice(None), slice(None)) + tuple(crop)]


def _output_sizes(prepared_spatial, kernel_spatial, strides, rhs_dilation):
  sizes = []
  for size, k, s, d in zip(prepared_spatial, kernel_spatial, strides,
                           rhs_dilation):
    extent = (k - 1) * d + 1
    sizes.append(0 if size < extent else (size - extent) // s + 1)
  return sizes


def _window(prepared, offset, out_sizes, strides, rhs_dilation):
  """x^[:, :, s*i + d*k] for all output positions i, at kernel offset k."""
  index = tuple(
      slice(d * k, d * k + s * (m - 1) + 1, s) if m > 0 else slice(0, 0)
      for k, m, s, d in zip(offset, out_sizes, strides, rhs_dilation))
  return prepared[(slice(None), slice(None)) + index]


def _defaults(n, strides, padding, lhs_dilation, rhs_dilation):
  strides = tuple(strides) if strides is not None else (1,) * n
  padding = tuple(tuple(p) for p in padding) if padding is not None else (
      (0, 0),) * n
  lhs_dilation = tuple(lhs_dilation) if lhs_dilation is not None else (1,) * n
  rhs_dilation = tuple(rhs_dilation) if rhs_dilation is not None else (1,) * n
  return strides, padding, lhs_dilation, rhs_dilation


def conv_forward(x, w, strides=None, padding=None, lhs_dilation=None,
                 rhs_dilation=None, feature_group_count=1,
                 batch_group_count=1) -> np.ndarray:
  r"""Eqs. (5), (6) and (17), summed offset by offset.

  .. math::
    y[n, o, i] = \sum_{c \in \mathrm{group}(o)} \sum_k w[o, c, k]\,
                 \hat x[\mathrm{batch}(n, o), c, s i + d k]

  Args:
    x: input ``(N, C, *spatial)``.
    w: kernel ``(O, C / G, *window)``.
    strides: the stride ``s`` per spatial dimension (default 1).
    padding: a sequence of ``(lo, hi)`` pairs, one per spatial dimension
      (default none).
    lhs_dilation: the input dilation ``a`` per spatial dimension (default 1).
    rhs_dilation: the kernel dilation ``d`` per spatial dimension (default 1).
    feature_group_count: ``G``.
    batch_group_count: ``B``.

  Returns:
    ``y`` of shape ``(N / B, O, *out_spatial)``, float64.
  """
  x = np.asarray(x, dtype=np.float64)
  w = np.asarray(w, dtype=np.float64)
  n = x.ndim - 2
  strides, padding, lhs_dilation, rhs_dilation = _defaults(
      n, strides, padding, lhs_dilation, rhs_dilation)
  groups, batch_groups = feature_group_count, batch_group_count
  prepared = _prepared_input(x, padding, lhs_dilation)
  out_sizes = _output_sizes(prepared.shape[2:], w.shape[2:], strides,
                            rhs_dilation)
  batch, channels = x.shape[:2]
  out_features = w.shape[0]
  # Split the batch into B groups and the channels into G groups; output
  # feature o belongs to group o // (O / G) (and batch group o // (O / B)).
  xg = prepared.reshape((batch_groups, batch // batch_groups, groups,
                         channels // groups) + prepared.shape[2:])
  y = np.zeros((batch // batch_groups, out_features) + tuple(out_sizes))
  for o in range(out_features):
    g = o // (out_features // groups)
    bg = o // (out_features // batch_groups)
    for offset in itertools.product(*(range(k) for k in w.shape[2:])):
      window = _window(xg[bg, :, g], offset, out_sizes, strides, rhs_dilation)
      # sum over the input channels c of the group: w[o, c, k] * x^[n, c, ..]
      y[:, o] += np.einsum("nc...,c->n...", window, w[(o, slice(None)) + offset])
  return y


def conv_kernel_grad(x, delta, kernel_shape, strides=None, padding=None,
                     lhs_dilation=None, rhs_dilation=None,
                     feature_group_count=1, batch_group_count=1) -> np.ndarray:
  r"""Eq. (9): each weight collects the inputs it touched, times their deltas.

  .. math::
    \frac{\partial E}{\partial w[o, c, k]} = \sum_n \sum_i \delta[n, o, i]\,
    \hat x[\mathrm{batch}(n, o), c, s i + d k]

  Args:
    x: the forward input ``(N, C, *spatial)``.
    delta: ``dE/dy``, ``(N / B, O, *out_spatial)``.
    kernel_shape: ``(O, C / G, *window)``.
    strides: the forward stride per spatial dimension.
    padding: the forward ``(lo, hi)`` pairs.
    lhs_dilation: the forward input dilation.
    rhs_dilation: the forward kernel dilation.
    feature_group_count: the forward ``G``.
    batch_group_count: the forward ``B``.

  Returns:
    ``dE/dw``, float64.
  """
  x = np.asarray(x, dtype=np.float64)
  delta = np.asarray(delta, dtype=np.float64)
  n = x.ndim - 2
  strides, padding, lhs_dilation, rhs_dilation = _defaults(
      n, strides, padding, lhs_dilation, rhs_dilation)
  groups, batch_groups = feature_group_count, batch_group_count
  prepared = _prepared_input(x, padding, lhs_dilation)
  out_sizes = delta.shape[2:]
  batch, channels = x.shape[:2]
  out_features = kernel_shape[0]
  xg = prepared.reshape((batch_groups, batch // batch_groups, groups,
                         channels // groups) + prepared.shape[2:])
  grad = np.zeros(tuple(kernel_shape))
  for o in range(out_features):
    g = o // (out_features // groups)
    bg = o // (out_features // batch_groups)
    for offset in itertools.product(*(range(k) for k in kernel_shape[2:])):
      window = _window(xg[bg, :, g], offset, out_sizes, strides, rhs_dilation)
      # sum over the batch and the output positions: delta[n, o, i] x^[n, c, ..]
      products = window * delta[:, o][:, None]
      grad[(o, slice(None)) + offset] = products.sum(
          axis=(0,) + tuple(range(2, products.ndim)))
  return grad


def conv_input_grad(delta, w, input_shape, strides=None, padding=None,
                    lhs_dilation=None, rhs_dilation=None,
                    feature_group_count=1, batch_group_count=1) -> np.ndarray:
  r"""Eq. (12) in scatter form: every delta flows back along its edges.

  .. math::
    \frac{\partial E}{\partial \hat x[n, c, j]} = \sum_o
    \sum_{i, k:\ s i + d k = j} \delta[n, o, i]\, w[o, c, k]

  For each kernel offset ``k`` the products ``delta[:, o, i] w[o, c, k]`` are
  added into x^ at ``s i + d k``; padding positions are then dropped and only
  the positions of real (undilated) inputs kept.

  Args:
    delta: ``dE/dy``, ``(N / B, O, *out_spatial)``.
    w: kernel ``(O, C / G, *window)``.
    input_shape: ``(N, C, *spatial)``.
    strides: the forward stride per spatial dimension.
    padding: the forward ``(lo, hi)`` pairs.
    lhs_dilation: the forward input dilation.
    rhs_dilation: the forward kernel dilation.
    feature_group_count: the forward ``G``.
    batch_group_count: the forward ``B``.

  Returns:
    ``dE/dx``, float64.
  """
  delta = np.asarray(delta, dtype=np.float64)
  w = np.asarray(w, dtype=np.float64)
  n = len(input_shape) - 2
  strides, padding, lhs_dilation, rhs_dilation = _defaults(
      n, strides, padding, lhs_dilation, rhs_dilation)
  groups, batch_groups = feature_group_count, batch_group_count
  batch, channels = input_shape[:2]
  spatial = input_shape[2:]
  out_features = w.shape[0]
  # x^ before cropping: dilated input with non-negative padding on each side.
  dilated = [0 if size == 0 else (size - 1) * a + 1
             for size, a in zip(spatial, lhs_dilation)]
  grow = [(max(lo, 0), max(hi, 0)) for lo, hi in padding]
  full = [size + lo + hi for size, (lo, hi) in zip(dilated, grow)]
  # Where x^ (after cropping negative padding) starts inside that buffer.
  start = [max(-lo, 0) for lo, _ in padding]
  grad_full = np.zeros((batch_groups, batch // batch_groups, groups,
                        channels // groups) + tuple(full))
  out_sizes = delta.shape[2:]
  for o in range(out_features):
    g = o // (out_features // groups)
    bg = o // (out_features // batch_groups)
    for offset in itertools.product(*(range(k) for k in w.shape[2:])):
      index = tuple(
          slice(b + d * k, b + d * k + s * (m - 1) + 1, s) if m > 0
          else slice(0, 0)
          for b, k, m, s, d in zip(start, offset, out_sizes, strides,
                                   rhs_dilation))
      contribution = np.einsum("n...,c->nc...", delta[:, o],
                               w[(o, slice(None)) + offset])
      grad_full[(bg, slice(None), g, slice(None)) + index] += contribution
  grad_full = grad_full.reshape((batch, channels) + tuple(full))
  keep = tuple(slice(lo, lo + size, a) for (lo, _), size, a in zip(
      grow, dilated, lhs_dilation))
  return grad_full[(slice(None), slice(None)) + keep]


def conv_bias_grad(delta, feature_axis: int = 1) -> np.ndarray:
  r"""Eq. (11): the bias gradient is the sum of the deltas of its feature.

  Args:
    delta: ``dE/dz`` of any shape.
    feature_axis: the axis of the output features (1 for the canonical
      layout).

  Returns:
    ``dE/db``, one float64 entry per output feature.
  """
  delta = np.asarray(delta, dtype=np.float64)
  axes = tuple(a for a in range(delta.ndim) if a != feature_axis % delta.ndim)
  return delta.sum(axis=axes)


def conv_matrix(w, input_spatial: Sequence[int], strides=None, padding=None,
                lhs_dilation=None, rhs_dilation=None) -> np.ndarray:
  r"""The convolution as a dense matrix with tied weights (eqs. 20-21).

  A convolution layer is a fully connected layer in which most weights are
  fixed to zero and the others are copies of the few kernel weights. Row
  ``(o, i)`` of the matrix holds ``w[o, c, k]`` in column ``(c, j)`` whenever
  input position ``j`` sits under kernel offset ``k`` of window ``i``:

  .. math::
    T[(o, i), (c, j)] = \sum_{k:\ s i + d k - lo = a j} w[o, c, k]

  Then ``y = T x`` (one example, flattened), ``dE/dx = T^T delta`` and
  ``dE/dw[o, c, k]`` is the sum of ``delta (x)^T`` over the entries tied to
  that weight.

  Args:
    w: kernel ``(O, C, *window)`` (one feature group).
    input_spatial: the input's spatial shape.
    strides: the stride ``s`` per spatial dimension (default 1).
    padding: ``(lo, hi)`` pairs, one per spatial dimension (default none).
    lhs_dilation: the input dilation ``a`` per spatial dimension (default 1).
    rhs_dilation: the kernel dilation ``d`` per spatial dimension (default 1).

  Returns:
    ``T`` of shape ``(O * prod(out_spatial), C * prod(input_spatial))``.
  """
  w = np.asarray(w, dtype=np.float64)
  n = len(input_spatial)
  strides, padding, lhs_dilation, rhs_dilation = _defaults(
      n, strides, padding, lhs_dilation, rhs_dilation)
  out_features, channels = w.shape[:2]
  prepared_spatial = [
      (0 if size == 0 else (size - 1) * a + 1) + lo + hi
      for size, a, (lo, hi) in zip(input_spatial, lhs_dilation, padding)]
  out_sizes = _output_sizes(prepared_spatial, w.shape[2:], strides,
                            rhs_dilation)
  rows = out_features * int(np.prod(out_sizes))
  cols = channels * int(np.prod(input_spatial))
  matrix = np.zeros((rows, cols))
  for o in range(out_features):
    for i in itertools.product(*(range(m) for m in out_sizes)):
      row = np.ravel_multi_index((o,) + i, (out_features,) + tuple(out_sizes))
      for k in itertools.product(*(range(size) for size in w.shape[2:])):
        # Position of this tap in the dilated, unpadded input.
        position = [s * ii + d * kk - lo for ii, kk, s, d, (lo, _) in zip(
            i, k, strides, rhs_dilation, padding)]
        if any(p < 0 or p % a for p, a in zip(position, lhs_dilation)):
          continue  # a padding zero or a hole of the input dilation
        j = tuple(p // a for p, a in zip(position, lhs_dilation))
        if any(jj >= size for jj, size in zip(j, input_spatial)):
          continue
        for c in range(channels):
          col = np.ravel_multi_index((c,) + j, (channels,) + tuple(input_spatial))
          matrix[row, col] += w[(o, c) + k]
  return matrix


def _flat_taps(filter_shape):
  """Window offsets ``k`` in row-major order: tap ``t`` of a patch."""
  return list(itertools.product(*(range(k) for k in filter_shape)))


def conv_patches(x, filter_shape: Sequence[int], strides=None, padding=None,
                 lhs_dilation=None, rhs_dilation=None) -> np.ndarray:
  r"""Eq. (22), im2col: every window's inputs, copied entry by entry.

  .. math::
    P[n, (c, k), i] = \hat x[n, c,\; s\,i + d\,k]

  The patch feature ``(c, k)`` is ``c * prod(filter_shape) + t`` where ``t``
  numbers the offsets ``k`` row-major.

  Args:
    x: input ``(N, C, *spatial)``.
    filter_shape: the window ``K`` per spatial dimension.
    strides: the stride ``s`` per spatial dimension (default 1).
    padding: ``(lo, hi)`` pairs, one per spatial dimension (default none).
    lhs_dilation: the input dilation ``a`` per spatial dimension (default 1).
    rhs_dilation: the window dilation ``d`` per spatial dimension (default
      1).

  Returns:
    ``P`` of shape ``(N, C * prod(filter_shape), *out_spatial)``, float64.
  """
  x = np.asarray(x, dtype=np.float64)
  n = x.ndim - 2
  strides, padding, lhs_dilation, rhs_dilation = _defaults(
      n, strides, padding, lhs_dilation, rhs_dilation)
  prepared = _prepared_input(x, padding, lhs_dilation)
  out_sizes = _output_sizes(prepared.shape[2:], filter_shape, strides,
                            rhs_dilation)
  taps = _flat_taps(filter_shape)
  batch, channels = x.shape[:2]
  patches = np.zeros((batch, channels * len(taps)) + tuple(out_sizes))
  for c in range(channels):
    for t, k in enumerate(taps):
      for i in itertools.product(*(range(m) for m in out_sizes)):
        j = tuple(s * ii + d * kk for ii, kk, s, d in zip(
            i, k, strides, rhs_dilation))
        patches[(slice(None), c * len(taps) + t) + i] = prepared[
            (slice(None), c) + j]
  return patches


def conv_patches_grad(patch_grad, input_shape: Sequence[int],
                      filter_shape: Sequence[int], strides=None, padding=None,
                      lhs_dilation=None, rhs_dilation=None) -> np.ndarray:
  r"""Eq. (23), col2im: each patch entry's gradient goes back where it was read.

  .. math::
    \frac{\partial E}{\partial \hat x[n, c, j]} =
    \sum_{(k, i):\ s i + d k = j} \frac{\partial E}{\partial P[n, (c, k), i]}

  Entry by entry, every patch gradient is added into x^ at ``s i + d k``;
  then the padding positions are dropped and only the positions of real
  (undilated) inputs kept (eq. 15).

  Args:
    patch_grad: ``dE/dP``, ``(N, C * prod(filter_shape), *out_spatial)``.
    input_shape: ``(N, C, *spatial)``.
    filter_shape: the window ``K`` per spatial dimension.
    strides: the forward stride per spatial dimension.
    padding: the forward ``(lo, hi)`` pairs.
    lhs_dilation: the forward input dilation.
    rhs_dilation: the forward window dilation.

  Returns:
    ``dE/dx``, float64.
  """
  patch_grad = np.asarray(patch_grad, dtype=np.float64)
  n = len(input_shape) - 2
  strides, padding, lhs_dilation, rhs_dilation = _defaults(
      n, strides, padding, lhs_dilation, rhs_dilation)
  batch, channels = input_shape[:2]
  dilated = [0 if size == 0 else (size - 1) * a + 1
             for size, a in zip(input_shape[2:], lhs_dilation)]
  # x^ before any cropping: the dilated input with non-negative padding.
  grow = [(max(lo, 0), max(hi, 0)) for lo, hi in padding]
  full = [size + lo + hi for size, (lo, hi) in zip(dilated, grow)]
  start = [max(-lo, 0) for lo, _ in padding]  # where the cropped x^ begins
  grad_full = np.zeros((batch, channels) + tuple(full))
  taps = _flat_taps(filter_shape)
  out_sizes = patch_grad.shape[2:]
  for c in range(channels):
    for t, k in enumerate(taps):
      for i in itertools.product(*(range(m) for m in out_sizes)):
        j = tuple(b + s * ii + d * kk for b, ii, kk, s, d in zip(
            start, i, k, strides, rhs_dilation))
        grad_full[(slice(None), c) + j] += patch_grad[
            (slice(None), c * len(taps) + t) + i]
  keep = tuple(slice(lo, lo + size, a) for (lo, _), size, a in zip(
      grow, dilated, lhs_dilation))
  return grad_full[(slice(None), slice(None)) + keep]


def conv_local(x, w, filter_shape: Sequence[int], strides=None, padding=None,
               lhs_dilation=None, rhs_dilation=None) -> np.ndarray:
  r"""Eq. (24): a locally connected layer, one kernel per output position.

  .. math::
    y[n, o, i] = \sum_{f} W[o, f, i]\, P[n, f, i]

  with the patches ``P`` of eq. (22), position by position.

  Args:
    x: input ``(N, C, *spatial)``.
    w: kernels ``(O, C * prod(filter_shape), *out_spatial)``.
    filter_shape: the window ``K`` per spatial dimension.
    strides: the stride ``s`` per spatial dimension (default 1).
    padding: ``(lo, hi)`` pairs, one per spatial dimension (default none).
    lhs_dilation: the input dilation ``a`` per spatial dimension (default 1).
    rhs_dilation: the window dilation ``d`` per spatial dimension (default
      1).

  Returns:
    ``y`` of shape ``(N, O, *out_spatial)``, float64.
  """
  w = np.asarray(w, dtype=np.float64)
  patches = conv_patches(x, filter_shape, strides, padding, lhs_dilation,
                         rhs_dilation)
  out_sizes = patches.shape[2:]
  y = np.zeros((patches.shape[0], w.shape[0]) + tuple(out_sizes))
  for i in itertools.product(*(range(m) for m in out_sizes)):
    here = (slice(None), slice(None)) + i
    y[here] = patches[here] @ w[here].T
  return y


def conv_local_input_grad(delta, w, input_shape: Sequence[int],
                          filter_shape: Sequence[int], strides=None,
                          padding=None, lhs_dilation=None,
                          rhs_dilation=None) -> np.ndarray:
  r"""Eq. (24) then (23): the input gradient of a locally connected layer.

  .. math::
    \frac{\partial E}{\partial P[n, f, i]} = \sum_o \delta[n, o, i]\,
    W[o, f, i]

  position by position, carried back to the input by ``conv_patches_grad``.

  Args:
    delta: ``dE/dy``, ``(N, O, *out_spatial)``.
    w: kernels ``(O, C * prod(filter_shape), *out_spatial)``.
    input_shape: ``(N, C, *spatial)``.
    filter_shape: the window ``K`` per spatial dimension.
    strides: the forward stride per spatial dimension.
    padding: the forward ``(lo, hi)`` pairs.
    lhs_dilation: the forward input dilation.
    rhs_dilation: the forward window dilation.

  Returns:
    ``dE/dx``, float64.
  """
  delta = np.asarray(delta, dtype=np.float64)
  w = np.asarray(w, dtype=np.float64)
  out_sizes = delta.shape[2:]
  patch_grad = np.zeros((delta.shape[0], w.shape[1]) + tuple(out_sizes))
  for i in itertools.product(*(range(m) for m in out_sizes)):
    here = (slice(None), slice(None)) + i
    patch_grad[here] = delta[here] @ w[here]
  return conv_patches_grad(patch_grad, input_shape, filter_shape, strides,
                           padding, lhs_dilation, rhs_dilation)


def conv_local_kernel_grad(x, delta, filter_shape: Sequence[int], strides=None,
                           padding=None, lhs_dilation=None,
                           rhs_dilation=None) -> np.ndarray:
  r"""Eq. (24): eq. (9) untied, summed over the batch but not over positions.

  .. math::
    \frac{\partial E}{\partial W[o, f, i]} = \sum_n \delta[n, o, i]\,
    P[n, f, i]

  Args:
    x: the forward input ``(N, C, *spatial)``.
    delta: ``dE/dy``, ``(N, O, *out_spatial)``.
    filter_shape: the window ``K`` per spatial dimension.
    strides: the forward stride per spatial dimension.
    padding: the forward ``(lo, hi)`` pairs.
    lhs_dilation: the forward input dilation.
    rhs_dilation: the forward window dilation.

  Returns:
    ``dE/dW``, ``(O, C * prod(filter_shape), *out_spatial)``, float64.
  """
  delta = np.asarray(delta, dtype=np.float64)
  patches = conv_patches(x, filter_shape, strides, padding, lhs_dilation,
                         rhs_dilation)
  out_sizes = delta.shape[2:]
  grad = np.zeros((delta.shape[1], patches.shape[1]) + tuple(out_sizes))
  for i in itertools.product(*(range(m) for m in out_sizes)):
    here = (slice(None), slice(None)) + i
    grad[here] = delta[here].T @ patches[here]
  return grad
