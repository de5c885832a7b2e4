"""``"split_groups"``: groups, one dense convolution each (eqs. 6 and 17 read
block by block).

With G feature groups, output block g of eq. (6) sees only input feature
block g and kernel block g: the convolution is G independent dense
convolutions whose outputs are concatenated along the features. Batch
groups (eq. 17, the kernel gradient of a grouped layer) split the same way,
with the input's batch blocks in place of its feature blocks. Each block is
evaluated by the algorithm chosen for it.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jaxconv._algorithms import dispatch
from jaxconv._algorithms.policy import policy_of


def supports(geometry, lhs_shape, rhs_shape, out_shape) -> bool:
  """Two to ``max_unrolled`` feature or batch groups."""
  if 0 in lhs_shape or 0 in rhs_shape or 0 in out_shape:
    return False
  count = geometry.feature_group_count * geometry.batch_group_count
  return 1 < count <= policy_of(geometry).thresholds.max_unrolled


def evaluate(lhs, rhs, geometry, out_shape):
  """``G`` (or ``B``) block convolutions, concatenated along the features."""
  lhs_spec, rhs_spec, out_spec = geometry.dimension_numbers
  groups = geometry.feature_group_count
  count = groups if groups > 1 else geometry.batch_group_count
  axis = lhs_spec[1] if groups > 1 else lhs_spec[0]
  block = lhs.shape[axis] // count
  out_block = rhs.shape[rhs_spec[0]] // count
  sub = geometry._replace(feature_group_count=1, batch_group_count=1)
  sub_out = list(out_shape)
  sub_out[out_spec[1]] = out_block
  outputs = []
  for g in range(count):
    x = lax.slice_in_dim(lhs, g * block, (g + 1) * block, axis=axis)
    w = lax.slice_in_dim(rhs, g * out_block, (g + 1) * out_block,
                         axis=rhs_spec[0])
    outputs.append(dispatch.evaluate(x, w, sub, sub_out))
  return jnp.concatenate(outputs, axis=out_spec[1])
