"""``"grown"``: XLA's kernel on an output grown past the input
(docs/derivation.md eq. 75).

In spatial dimension i the output has

    Q_i = floor((N_i + lo_i + hi_i - d_i (K_i - 1) - 1) / s_i) + 1

positions. e more of them come from e s_i more elements at the far end
(hi_i + e s_i: zeros of padding, or input that a negative hi_i had cropped);
the first Q_i never read that far, so slicing the e back off gives eq. (5)
exactly (75). Growing the dimension that needs the fewest extra positions
for its length, e = N_i - Q_i + 1, makes the output longer than the input
there. XLA's CPU backend (jax 0.10) hands no such convolution to YNNPACK and
runs it on its Eigen kernel instead.
"""

from __future__ import annotations

from jax import lax

from jaxconv._algorithms import common, xla


def growth(geometry, lhs_shape, out_shape):
  """``(i, e)``: the spatial dimension to grow and by how many output
  positions, the fewest for its length (``e = 0`` where the output is
  longer than the input already); ``None`` with input dilation, which XLA
  never hands to YNNPACK."""
  if any(a != 1 for a in geometry.lhs_dilation):
    return None
  lhs_spec, _, out_spec = geometry.dimension_numbers
  pairs = list(zip(common.spatial_sizes(lhs_shape, lhs_spec),
                   common.spatial_sizes(out_shape, out_spec)))
  for i, (n, q) in enumerate(pairs):
    if q > n:
      return i, 0
  costs = [(n - q + 1) / q for n, q in pairs]
  i = costs.index(min(costs))
  return i, pairs[i][0] - pairs[i][1] + 1


def supports(geometry, lhs_shape, rhs_shape, out_shape) -> bool:
  """No input dilation, and no empty operand."""
  if 0 in lhs_shape or 0 in rhs_shape or 0 in out_shape:
    return False
  return growth(geometry, lhs_shape, out_shape) is not None


def evaluate(lhs, rhs, geometry, out_shape):
  """XLA's kernel on an output grown past the input in one spatial
  dimension, sliced back (see ``growth``)."""
  i, extra = growth(geometry, lhs.shape, out_shape)
  padding = list(geometry.padding)
  lo, hi = padding[i]
  padding[i] = (lo, hi + extra * geometry.window_strides[i])
  y = xla.evaluate(lhs, rhs, geometry._replace(padding=tuple(padding)), None)
  axis = geometry.dimension_numbers.out_spec[2 + i]
  return lax.slice_in_dim(y, 0, out_shape[axis], axis=axis)
