"""``"chunked"``: the samples a chunk at a time (eqs. 5 and 9 read chunk by
chunk).

Eq. (5) computes every sample of the batch on its own, so a batch chunk's
output is the output's block of those samples; eq. (9), the kernel
gradient, sums over the batch, which its geometry (10) contracts like an
input feature, so the gradient of a batch is the sum of its chunks'
gradients. Each chunk is evaluated by the algorithm chosen for it.
"""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp
from jax import lax

from jaxconv._algorithms import common, dispatch
from jaxconv._algorithms.policy import policy_of


def sample_axis(geometry):
  """The input axis ``"chunked"`` splits, or ``None``: axis 0 when it is the
  batch (without batch groups) or the contracted feature axis (without any
  groups), so that every chunk is a contiguous block of the input."""
  lhs_spec = geometry.dimension_numbers.lhs_spec
  if lhs_spec[0] == 0 and geometry.batch_group_count == 1:
    return "batch"
  if (lhs_spec[1] == 0 and geometry.batch_group_count == 1
      and geometry.feature_group_count == 1):
    return "feature"
  return None


def chunk_samples(geometry, lhs_shape, rhs_shape, out_shape) -> int:
  """Samples per chunk: the policy's ``chunk_samples``, or fewer so that a
  chunk holds at most ``chunk_elements`` elements of the largest array it
  splits (at least one sample).

  A batch chunk splits the input and the output; a chunk of the contracted
  samples (a kernel gradient) splits the input and the cotangent, which is
  the kernel operand there.
  """
  thresholds = policy_of(geometry).thresholds
  samples = lhs_shape[0]
  second = out_shape if sample_axis(geometry) == "batch" else rhs_shape
  per_sample = max(math.prod(lhs_shape), math.prod(second)) // max(samples, 1)
  return max(1, min(thresholds.chunk_samples,
                    thresholds.chunk_elements // max(per_sample, 1)))


def supports(geometry, lhs_shape, rhs_shape, out_shape) -> bool:
  """A splittable sample axis holding more than one chunk, and at most
  ``max_unrolled`` chunks."""
  if 0 in lhs_shape or 0 in rhs_shape or 0 in out_shape:
    return False
  if sample_axis(geometry) is None:
    return False
  size = chunk_samples(geometry, lhs_shape, rhs_shape, out_shape)
  limit = policy_of(geometry).thresholds.max_unrolled
  return size < lhs_shape[0] <= size * limit


def evaluate(lhs, rhs, geometry, out_shape):
  """The samples (input axis 0) in chunks of ``chunk_samples`` samples.

  A batch chunk is the convolution of its samples alone; the outputs are
  concatenated along the output batch. A chunk of the contracted feature
  axis (the samples of a kernel gradient, eq. 9) pairs with the same
  block of the kernel's input features; the chunks' results are summed, in
  float32 for 16-bit inputs. The chunks are unrolled: XLA's CPU convolution
  inside a loop is many times slower.
  """
  rhs_spec, out_spec = (geometry.dimension_numbers.rhs_spec,
                        geometry.dimension_numbers.out_spec)
  batch = sample_axis(geometry) == "batch"
  count = lhs.shape[0]
  accumulate = common.accumulation_dtype(lhs.dtype,
                                         geometry.preferred_element_type)
  sub = geometry if batch or accumulate is None else geometry._replace(
      preferred_element_type=accumulate)
  size = chunk_samples(geometry, lhs.shape, rhs.shape, out_shape)
  outputs = []
  for start in range(0, count, size):
    stop = min(start + size, count)
    x = lax.slice_in_dim(lhs, start, stop, axis=0)
    if batch:
      sub_out = list(out_shape)
      sub_out[out_spec[0]] = stop - start
      outputs.append(dispatch.evaluate(x, rhs, sub, sub_out))
    else:
      w = lax.slice_in_dim(rhs, start, stop, axis=rhs_spec[1])
      outputs.append(dispatch.evaluate(x, w, sub, out_shape))
  if batch:
    return jnp.concatenate(outputs, axis=out_spec[0])
  total = functools.reduce(jnp.add, outputs)
  return total.astype(geometry.preferred_element_type or lhs.dtype)
