"""``"strips"``: a channels-last 2-D kernel gradient in strips of rows
(docs/derivation.md eq. 74).

In a channels-last layout the kernel gradient (9) of a 2-D layer is a
convolution (10) whose lhs is x^ with its axes read as (F, rows, cols, B):
the samples n are its contracted features F, the input features c its batch
B; whose kernel is the delta, (F, Q_0, Q_1, O), its positions the window;
and whose output positions (p_0, p_1) are the forward kernel's taps. With t
its stride (the forward dilation) and r its kernel dilation (the forward
stride),

    dw[p_0, p_1, c, o] = sum_{strips S} sum_{(n, q_0) in S} sum_{q_1}
        delta[n, q_0, q_1, o] P_S[n, t_0 p_0 + r_0 q_0, q_1, (p_1, c)]   (74)

with P_S[n, j, q_1, (p_1, c)] = x^[n, j, t_1 p_1 + r_1 q_1, c]: the strip's
rows of x^ with the P_1 column shifts side by side on the channel axis
(im2col over the last dimension only). Row p_0 of the kernel gradient is
then one matrix product per strip, contracted over the strip's merged
(n, q_0, q_1), whose operand is a row slice of P_S. The strips are visited
in a loop and their products summed: each strip's patches are built and
used while they are in cache, where im2col over the whole batch (an operand
of 9x the input for a 3x3 kernel) would not be. A strip is R rows of one
sample (R divides Q_0), or S whole samples (S divides the batch) when a
sample is small, with at most ``strip_elements`` elements in its largest
operand.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jaxconv._algorithms import common
from jaxconv._algorithms.policy import policy_of

# The operands' layout (B or O, F, rows, cols): channels last.
_SPEC = (3, 0, 1, 2)


def supports(geometry, lhs_shape, rhs_shape, out_shape) -> bool:
  """A channels-last 2-D kernel gradient (lhs and rhs in the layout above)
  without groups or input dilation, with at most ``max_unrolled`` kernel
  rows and columns."""
  if 0 in lhs_shape or 0 in rhs_shape or 0 in out_shape:
    return False
  lhs_spec, rhs_spec, out_spec = geometry.dimension_numbers
  return (lhs_spec == _SPEC and rhs_spec == _SPEC
          and geometry.feature_group_count == 1
          and geometry.batch_group_count == 1
          and all(a == 1 for a in geometry.lhs_dilation)
          and max(common.spatial_sizes(out_shape, out_spec))
          <= policy_of(geometry).thresholds.max_unrolled)


def _largest_divisor(n: int, at_most: int) -> int:
  return max(d for d in range(1, max(1, min(n, at_most)) + 1) if n % d == 0)


def strip_plan(lhs_shape, rhs_shape, out_shape, geometry):
  """``(samples, rows)`` of one strip (see above)."""
  out_spec = geometry.dimension_numbers.out_spec
  limit = policy_of(geometry).thresholds.strip_elements
  samples, q0, q1, out_features = rhs_shape
  p1 = out_shape[out_spec[3]]
  row = q1 * max(p1 * lhs_shape[3], out_features)   # elements per strip row
  rows = _largest_divisor(q0, limit // row)
  if rows < q0:
    return 1, rows
  return _largest_divisor(samples, limit // (row * q0)), q0


def evaluate(lhs, rhs, geometry, out_shape):
  """A channels-last 2-D kernel gradient, eq. (74): one matrix product per
  kernel row and strip of rows, the strip's column shifts concatenated on
  the channels, summed over the strips in a loop."""
  out_spec = geometry.dimension_numbers.out_spec
  x = common.prepared_input(lhs, geometry)              # (F, rows, cols, B)
  samples, q0, q1, out_features = rhs.shape
  p0, p1 = out_shape[out_spec[2]], out_shape[out_spec[3]]
  (t0, t1), (r0, r1) = geometry.window_strides, geometry.rhs_dilation
  channels = x.shape[3]
  accumulate = common.accumulation_dtype(lhs.dtype,
                                         geometry.preferred_element_type)
  dtype = accumulate or jnp.result_type(lhs.dtype, rhs.dtype)
  per_strip, rows = strip_plan(lhs.shape, rhs.shape, out_shape, geometry)
  extent = r0 * (rows - 1) + t0 * (p0 - 1) + 1          # x^ rows of a strip
  along = q0 // rows
  # The smaller free axis indexes the products' output rows (see
  # common._long_contraction): "o" is the delta's features, "w" the patch
  # width.
  first = "o" if out_features <= p1 * channels else "w"
  spec = "mo,mw->ow" if first == "o" else "mo,mw->wo"

  def strip(total, index):
    n, q = (index // along) * per_strip, (index % along) * rows
    zero = jnp.zeros((), index.dtype)
    xs = lax.dynamic_slice(x, (n, r0 * q, zero, zero),
                           (per_strip, extent, x.shape[2], channels))
    ds = lax.dynamic_slice(rhs, (n, q, zero, zero),
                           (per_strip, rows, q1, out_features))
    patches = jnp.concatenate(
        [lax.slice_in_dim(xs, t1 * p, t1 * p + r1 * (q1 - 1) + 1, r1, axis=2)
         for p in range(p1)], axis=3).astype(dtype)  # (S, extent, Q_1, P_1 B)
    ds = ds.reshape(-1, out_features).astype(dtype)
    terms = [jnp.einsum(spec, ds, lax.slice_in_dim(
        patches, t0 * p, t0 * p + r0 * (rows - 1) + 1, r0,
        axis=1).reshape(-1, p1 * channels), precision=geometry.precision,
        preferred_element_type=dtype) for p in range(p0)]
    return total + jnp.stack(terms), None

  shape = ((p0, out_features, p1 * channels) if first == "o"
           else (p0, p1 * channels, out_features))
  total, _ = lax.scan(strip, jnp.zeros(shape, dtype),
                      jnp.arange(samples // per_strip * along, dtype=jnp.int32))
  # Axes: k = p_0, l = p_1, c = the channels (the output's batch), o.
  if first == "o":
    total, axes = total.reshape(p0, out_features, p1, channels), "kolc"
  else:
    total, axes = total.reshape(p0, p1, channels, out_features), "klco"
  letters = [""] * 4
  for axis, letter in zip(out_spec, "cokl"):
    letters[axis] = letter
  y = jnp.transpose(total, [axes.index(a) for a in letters])
  return y.astype(geometry.preferred_element_type or lhs.dtype)
