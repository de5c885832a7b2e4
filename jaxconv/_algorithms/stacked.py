"""``"stacked"``: the "taps" fold in one convolution (docs/derivation.md
eqs. 72 and 73).

With stride 1 in the first spatial dimension, the K_0 terms of eq. (71)
read the input rows j = i_0 + d_0 k_0 - lo. Instead of slicing (copying) the
input once per kernel row, every input row meets every kernel row in one
convolution of one dimension fewer,

    T[(n, j), ..., (k_0, o)] = sum_c sum_k' w[k_0, k', c, o] x[n, j, ..., c]
                                                                         (72)

(the input's rows merged with its batch, the kernel's rows with its output
features, both free reshapes after one transposition of the small kernel),
and output row i_0 is the sum over k_0 of T's row i_0 + d_0 k_0 - lo in
block k_0, the rows outside the input (the padding) being zero: a pad and
slice per term that XLA fuses into the sum. T holds K_0 times the output;
the input is read once.

With stride s > 1 there, tap k_0 reads row s i_0 + d_0 k_0 of x^, so the
taps split by the residue r of d_0 k_0 modulo s: with g = gcd(d_0, s), the
taps of residue r are k_r + (s/g) m, and they read rows s (i_0 + o_r +
(d_0/g) m) + r, i.e. rows i_0 + o_r + (d_0/g) m of the phase x^_r = x^[r::s]
(o_r = (d_0 k_r - r) / s):

    y[i_0] = sum_r sum_m x^_r[i_0 + o_r + (d_0/g) m] . w[k_r + (s/g) m]  (73)

a stride-1 convolution of each phase with every (s/g)-th kernel row, kernel
dilation d_0/g and low padding -o_r, each stacked as above; apart from a few
rows at the edges, no product is computed that the strided sum skips.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

from jaxconv._algorithms import common, dispatch, folded
from jaxconv._algorithms.policy import policy_of


def supports(geometry, lhs_shape, rhs_shape, out_shape) -> bool:
  """The "taps" layouts of ``folded``, no input dilation in the first
  spatial dimension, no feature groups, at most ``max_unrolled`` kernel
  rows."""
  if 0 in lhs_shape or 0 in rhs_shape or 0 in out_shape:
    return False
  rhs_spec = geometry.dimension_numbers.rhs_spec
  return (folded.fold_form(geometry) == "taps"
          and geometry.lhs_dilation[0] == 1
          and geometry.feature_group_count == 1
          and common.spatial_sizes(rhs_shape, rhs_spec)[0]
          <= policy_of(geometry).thresholds.max_unrolled)


def evaluate(lhs, rhs, geometry, out_shape):
  """The "taps" fold as one convolution (eq. 72): the kernel's rows stacked
  on its output features, the input's rows merged with the batch, and each
  output row summed from ``K_0`` rows of the result; with a stride in the
  first dimension, one such convolution per row phase (eq. 73)."""
  if geometry.window_strides[0] > 1:
    return _phases(lhs, rhs, geometry, out_shape)
  lhs_spec, rhs_spec, out_spec = geometry.dimension_numbers
  taps, rows = rhs.shape[rhs_spec[2]], out_shape[out_spec[2]]
  height, features = lhs.shape[lhs_spec[2]], rhs.shape[rhs_spec[0]]
  d = geometry.rhs_dilation[0]
  accumulate = common.accumulation_dtype(lhs.dtype,
                                         geometry.preferred_element_type)
  sub = folded.without_first_dimension(geometry)._replace(
      preferred_element_type=accumulate or geometry.preferred_element_type)
  # The kernel's first spatial axis moved right before its output features
  # and merged with them, k_0 major: w'[..., (k_0, o)] = w[k_0, ..., o].
  order = [a for a in range(rhs.ndim) if a != rhs_spec[2]]
  major = order.index(rhs_spec[0])
  order.insert(major, rhs_spec[2])
  kernel = folded.merge(jnp.transpose(rhs, order), major)
  sub_out = list(out_shape)
  sub_out[out_spec[0]] *= height
  sub_out[out_spec[1]] *= taps
  del sub_out[out_spec[2]]
  # T[n, j, ..., (k_0, o)]: every input row j against every kernel row.
  whole = dispatch.evaluate(folded.merge(lhs, lhs_spec[0]), kernel, sub,
                            sub_out)
  full = list(out_shape)
  full[out_spec[2]], full[out_spec[1]] = height, taps * features
  whole = whole.reshape(full)
  # y[n, i] = sum_k T[n, i + d k - lo, k]: rows outside the input (the
  # padding) are zero, a pad that XLA fuses into the sum.
  pads = [(0, 0, 0)] * len(full)
  pads[out_spec[2]] = geometry.padding[0] + (0,)
  total = None
  for k in range(taps):
    term = lax.slice_in_dim(whole, k * features, (k + 1) * features,
                            axis=out_spec[1])
    term = lax.slice_in_dim(lax.pad(term, jnp.zeros((), term.dtype), pads),
                            d * k, d * k + rows, axis=out_spec[2])
    total = term if total is None else total + term
  return total.astype(geometry.preferred_element_type or lhs.dtype)


def _phases(lhs, rhs, geometry, out_shape):
  """Eq. (73): a first dimension of stride ``s`` as ``s`` (at most) stride-1
  stacked convolutions of the row phases of ``x^``, summed."""
  lhs_spec, rhs_spec, out_spec = geometry.dimension_numbers
  s, d = geometry.window_strides[0], geometry.rhs_dilation[0]
  taps, rows = rhs.shape[rhs_spec[2]], out_shape[out_spec[2]]
  x = folded.prepared_first_dimension(lhs, geometry)
  g = math.gcd(d, s)
  accumulate = common.accumulation_dtype(lhs.dtype,
                                         geometry.preferred_element_type)
  total = None
  for r in range(s):
    first = next((k for k in range(taps) if d * k % s == r), None)
    if first is None:
      continue
    phase = lax.slice_in_dim(x, r, x.shape[lhs_spec[2]], s, axis=lhs_spec[2])
    kernel = lax.slice_in_dim(rhs, first, taps, s // g, axis=rhs_spec[2])
    offset, dilation = (d * first - r) // s, d // g
    hi = (rows + offset + dilation * (kernel.shape[rhs_spec[2]] - 1)
          - phase.shape[lhs_spec[2]])
    sub = geometry._replace(
        window_strides=(1,) + geometry.window_strides[1:],
        padding=((-offset, hi),) + geometry.padding[1:],
        rhs_dilation=(dilation,) + geometry.rhs_dilation[1:],
        preferred_element_type=accumulate or geometry.preferred_element_type)
    term = evaluate(phase, kernel, sub, out_shape)
    total = term if total is None else total + term
  return total.astype(geometry.preferred_element_type or lhs.dtype)
