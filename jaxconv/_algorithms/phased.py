"""``"phased"``: input dilation, phase by phase (docs/derivation.md eq. 70).

In a dimension with input dilation a (stride 1, kernel dilation 1) only
every a-th entry of x^ is an input; the rest are the zeros of eq. (5).
Output i = a*q + p (phase p) meets inputs only through the taps
k = k_p + a*t with k_p = (lo - p) mod a, which read x at q + t + c_p,
c_p = (p + k_p - lo) / a:

    y[a*q + p] = sum_t w[k_p + a*t] x[q + t + c_p]                      (70)

So phase p of the output is an ordinary convolution of the undilated x with
the sub-kernel w[k_p::a] and low padding -c_p (``phase_plan``), evaluated by
the algorithm chosen for it. No zero is multiplied, and the a^n phase
outputs interleave back into y by a reshape (q, p) -> a*q + p. Used for the
forward pass and the kernel gradient of a transposed convolution (eq. 10
keeps the input dilation), and for the input gradient of a strided layer
(dilated by its stride).
"""

from __future__ import annotations

import itertools
import math

import jax.numpy as jnp
from jax import lax

from jaxconv._algorithms import common, dispatch
from jaxconv._algorithms.policy import policy_of


def phase_dims(geometry):
  """The spatial dims with input dilation, or ``None`` when some such dim
  also has a stride or kernel dilation (then phases do not separate)."""
  dims = [i for i, a in enumerate(geometry.lhs_dilation) if a > 1]
  if any(geometry.window_strides[i] != 1 or geometry.rhs_dilation[i] != 1
         for i in dims):
    return None
  return dims


def supports(geometry, lhs_shape, rhs_shape, out_shape) -> bool:
  """Input dilation that separates into at most ``max_unrolled`` phases."""
  if 0 in lhs_shape or 0 in rhs_shape or 0 in out_shape:
    return False
  dims = phase_dims(geometry)
  return bool(dims) and math.prod(
      geometry.lhs_dilation[i] for i in dims
  ) <= policy_of(geometry).thresholds.max_unrolled


def phase_plan(a, n, lo, k, m, p):
  """One dim, phase ``p`` of eq. (70): the first tap ``k_p``, the number of
  taps, the sub-convolution's ``(lo, hi)`` padding and its output count, for
  input length ``n``, low padding ``lo``, kernel length ``k`` and ``m``
  outputs."""
  first = (lo - p) % a
  taps = max(0, -(-(k - first) // a))
  outputs = max(0, -(-(m - p) // a))
  pad_lo = -((p + first - lo) // a)
  pad_hi = outputs - 1 + taps - n - pad_lo
  return first, taps, (pad_lo, pad_hi), outputs


def evaluate(lhs, rhs, geometry, out_shape):
  """Input dilation split into ``a^n`` ordinary convolutions, one per phase."""
  lhs_spec, rhs_spec, out_spec = geometry.dimension_numbers
  dims = phase_dims(geometry)
  dilations = [geometry.lhs_dilation[i] for i in dims]
  in_spatial = common.spatial_sizes(lhs.shape, lhs_spec)
  k_spatial = common.spatial_sizes(rhs.shape, rhs_spec)
  out_spatial = common.spatial_sizes(out_shape, out_spec)
  rows = [-(-out_spatial[i] // geometry.lhs_dilation[i]) for i in dims]
  padded_shape = list(out_shape)
  for i, r in zip(dims, rows):
    padded_shape[out_spec[2 + i]] = r
  blocks = []
  for phase in itertools.product(*(range(a) for a in dilations)):
    padding = list(geometry.padding)
    starts, strides = [0] * rhs.ndim, [1] * rhs.ndim
    limits = list(rhs.shape)
    block_shape = list(padded_shape)
    empty = False
    for i, p in zip(dims, phase):
      a = geometry.lhs_dilation[i]
      first, taps, padding[i], outputs = phase_plan(
          a, in_spatial[i], geometry.padding[i][0], k_spatial[i],
          out_spatial[i], p)
      axis = rhs_spec[2 + i]
      starts[axis], strides[axis] = first, a
      block_shape[out_spec[2 + i]] = outputs
      empty |= taps == 0 or outputs == 0
    if empty:
      block = jnp.zeros(block_shape, geometry.preferred_element_type
                        or lhs.dtype)
    else:
      sub = geometry._replace(
          padding=tuple(padding),
          lhs_dilation=(1,) * len(geometry.lhs_dilation))
      kernel = lax.slice(rhs, starts, limits, strides)
      block = dispatch.evaluate(lhs, kernel, sub, block_shape)
    pads = [(0, full - size, 0) for full, size in zip(padded_shape,
                                                      block.shape)]
    if any(hi for _, hi, _ in pads):
      block = lax.pad(block, jnp.zeros((), block.dtype), pads)
    blocks.append(block)
  # Interleave the phases, (rows, a) -> a*rows, and crop to the output.
  y = common.interleave(blocks, out_spec, dims, dilations)
  if tuple(y.shape) != tuple(out_shape):
    y = lax.slice(y, [0] * y.ndim, out_shape)
  return y
