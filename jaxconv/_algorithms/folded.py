"""``"folded"``: the first spatial dimension, one row at a time
(docs/derivation.md eq. 71).

Split the sum of eq. (5) over the first spatial dimension's taps k_0:

    y[n, o, i_0, i'] = sum_{k_0} sum_{c, k'} x^[n, c, s_0 i_0 + d_0 k_0,
                                                s' i' + d' k'] w[o, c, k_0, k']
                                                                         (71)

For one tap k_0 the inner sum is a convolution of one dimension fewer (the
rest of the geometry, primed) in which i_0 is just another sample: the rows
s_0 i_0 + d_0 k_0 of x^, merged with the batch, against the kernel row
w[k_0]. Its output, split back into (n, i_0), is y's term for k_0 ("taps"
form, a sum of K_0 convolutions). Read the other way round, for one output
row i_0 the rows j_0 < K_0 of x^ starting at s_0 i_0 meet the kernel rows
j_0 in order: merged with the features, the kernel's rows with its input
features, they are one convolution whose contraction includes j_0
("positions" form, M_0 convolutions stacked along the first dimension; the
kernel gradient of eq. 9, with its few output rows, the kernel taps).

The merges are reshapes, free only where the merged axes are adjacent, so
each form needs its layout: "taps" the input's and output's batch axis right
before their first spatial axis (NHWC, and the input gradient there),
"positions" the input's and kernel's feature axis right before theirs (the
kernel gradient of an NHWC layer, or a forward NCHW/OIHW one). Each
convolution of one dimension fewer is evaluated by the algorithm chosen for
it.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jaxconv._algorithms import common, dispatch
from jaxconv._algorithms.policy import policy_of


def fold_form(geometry):
  """``"taps"``, ``"positions"`` or ``None`` (see above)."""
  lhs_spec, rhs_spec, out_spec = geometry.dimension_numbers
  if len(lhs_spec) < 4:                     # at least two spatial dims
    return None
  if (lhs_spec[2] == lhs_spec[0] + 1 and out_spec[2] == out_spec[0] + 1
      and geometry.batch_group_count == 1):
    return "taps"
  if lhs_spec[2] == lhs_spec[1] + 1 and rhs_spec[2] == rhs_spec[1] + 1:
    return "positions"
  return None


def supports(geometry, lhs_shape, rhs_shape, out_shape) -> bool:
  """Two or more spatial dimensions in a layout of either form, and at most
  ``max_unrolled`` rows to unroll."""
  if 0 in lhs_shape or 0 in rhs_shape or 0 in out_shape:
    return False
  form = fold_form(geometry)
  if form is None:
    return False
  _, rhs_spec, out_spec = geometry.dimension_numbers
  rows = (common.spatial_sizes(rhs_shape, rhs_spec)[0] if form == "taps"
          else common.spatial_sizes(out_shape, out_spec)[0])
  return rows <= policy_of(geometry).thresholds.max_unrolled


def merge(a, major):
  """``a`` with axes ``major`` and ``major + 1`` merged into one."""
  shape = a.shape
  return a.reshape(shape[:major] + (shape[major] * shape[major + 1],)
                   + shape[major + 2:])


def _without_first_spatial(spec):
  """``spec`` without its first spatial axis, the others renumbered."""
  gone = spec[2]
  return tuple(a - (a > gone) for i, a in enumerate(spec) if i != 2)


def without_first_dimension(geometry):
  """The geometry of the convolutions ``folded`` and ``stacked`` make: the
  first spatial dimension's stride, padding and dilations dropped."""
  return geometry._replace(
      window_strides=geometry.window_strides[1:],
      padding=geometry.padding[1:],
      lhs_dilation=geometry.lhs_dilation[1:],
      rhs_dilation=geometry.rhs_dilation[1:],
      dimension_numbers=lax.ConvDimensionNumbers(
          *(_without_first_spatial(spec)
            for spec in geometry.dimension_numbers)))


def prepared_first_dimension(lhs, geometry):
  """x^ of eq. (5) along the first spatial dimension only (its padding and
  input dilation); the convolutions of one dimension fewer that ``folded``
  and ``stacked`` make apply the rest."""
  rest = len(geometry.padding) - 1
  return common.prepared_input(lhs, geometry._replace(
      padding=geometry.padding[:1] + ((0, 0),) * rest,
      lhs_dilation=geometry.lhs_dilation[:1] + (1,) * rest))


def evaluate(lhs, rhs, geometry, out_shape):
  """The first spatial dimension unrolled: ``K_0`` (taps) or ``M_0``
  (positions) convolutions of one spatial dimension fewer."""
  lhs_spec, rhs_spec, out_spec = geometry.dimension_numbers
  form = fold_form(geometry)
  x = prepared_first_dimension(lhs, geometry)
  s, d = geometry.window_strides[0], geometry.rhs_dilation[0]
  taps, rows = rhs.shape[rhs_spec[2]], out_shape[out_spec[2]]
  accumulate = common.accumulation_dtype(lhs.dtype,
                                         geometry.preferred_element_type)
  sub = without_first_dimension(geometry)
  if form == "taps":
    # One term per kernel row k_0, the output rows merged with the batch;
    # summed in float32 for 16-bit inputs.
    if accumulate is not None:
      sub = sub._replace(preferred_element_type=accumulate)
    merged_out = list(out_shape)
    merged_out[out_spec[0]] *= rows
    del merged_out[out_spec[2]]
    total = None
    for k in range(taps):
      patch = lax.slice_in_dim(x, d * k, d * k + s * (rows - 1) + 1, s,
                               axis=lhs_spec[2])
      kernel = lax.index_in_dim(rhs, k, axis=rhs_spec[2], keepdims=False)
      term = dispatch.evaluate(merge(patch, lhs_spec[0]), kernel, sub,
                               merged_out)
      term = term.reshape(out_shape)
      total = term if total is None else total + term
    return total.astype(geometry.preferred_element_type or lhs.dtype)
  # One convolution per output row i_0: rows and features merged.
  kernel = merge(rhs, rhs_spec[1])
  sub_out = [n for axis, n in enumerate(out_shape) if axis != out_spec[2]]
  terms = []
  for i in range(rows):
    patch = lax.slice_in_dim(x, s * i, s * i + d * (taps - 1) + 1, d,
                             axis=lhs_spec[2])
    terms.append(dispatch.evaluate(merge(patch, lhs_spec[1]), kernel, sub,
                                   sub_out))
  return jnp.stack(terms, axis=out_spec[2])
