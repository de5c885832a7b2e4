"""Explicit sharding at the rules' boundary.

Under a mesh whose axes are ``Explicit`` (``jax.make_mesh``'s default in jax
0.10), every array's type carries its sharding, and an operation whose
output sharding JAX cannot infer (a contraction over a sharded axis, an
operand made without one) raises ``ShardingTypeError``. jaxconv's rules are
written for arrays, not for shardings: each rule's computation runs inside
``jax.sharding.auto_axes``, where XLA's partitioner places the work and the
collectives, and its output gets the sharding a user of a data-parallel
model expects, the same rules as PyTorch's DTensor for these layers:

* an activation (a convolution's or pooling's output, an input gradient) is
  sharded like the input's batch axis (and, for pooling, its feature axis);
* a kernel's gradient is sharded like the kernel's own output-feature axis,
  and replicated over the batch (the partial sums are all-reduced).

Where no operand is sharded over an explicit axis (no mesh, ``Auto`` axes,
inside ``shard_map``) the rule runs as it is.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
from jax.sharding import AxisType, PartitionSpec


def explicit_spec(x) -> tuple | None:
  """The partition spec of ``x``, one entry per axis, where ``x`` is sharded
  over some ``Explicit`` mesh axis; ``None`` otherwise."""
  try:
    sharding = jax.typeof(x).sharding
  except (AttributeError, TypeError):
    return None
  mesh = getattr(sharding, "mesh", None)
  spec = getattr(sharding, "spec", None)
  if mesh is None or spec is None or not mesh.shape:
    return None
  explicit = {name for name, kind in zip(mesh.axis_names, mesh.axis_types)
              if kind == AxisType.Explicit}
  entries = tuple(spec) + (None,) * (x.ndim - len(spec))

  def names(entry):
    if entry is None:
      return ()
    return entry if isinstance(entry, tuple) else (entry,)

  if not any(set(names(e)) & explicit for e in entries):
    return None
  return entries


def spec_from(ndim: int, placed: Sequence[tuple[int, object]]) -> PartitionSpec:
  """A spec of ``ndim`` axes, ``None`` but for ``(axis, entry)`` pairs."""
  entries = [None] * ndim
  for axis, entry in placed:
    entries[axis] = entry
  return PartitionSpec(*entries)


def run(compute: Callable, out_specs, *operands):
  """``compute(*operands)``, inside ``auto_axes`` with the output sharding
  ``out_specs(*operand_specs)`` when some operand is sharded over an
  explicit mesh axis (``operand_specs`` has ``None`` for the others, and
  for every axis of an unsharded operand ``None`` entries); else plainly.
  ``out_specs`` returns a ``PartitionSpec`` or a pytree of them, matching
  ``compute``'s output."""
  specs = [explicit_spec(a) if hasattr(a, "ndim") else None for a in operands]
  if all(s is None for s in specs):
    return compute(*operands)
  specs = [s if s is not None or not hasattr(a, "ndim") else (None,) * a.ndim
           for s, a in zip(specs, operands)]
  return jax.sharding.auto_axes(compute, out_sharding=out_specs(*specs))(
      *operands)


def keeps_batch_and_features(function: Callable) -> Callable:
  """Decorates a pooling computation of canonical ``(batch, *spatial,
  features)`` arrays, whose leading array arguments are its operands and
  whose outputs are canonical arrays too: under explicit sharding each
  output is sharded like the first operand's batch and feature axes, its
  spatial axes replicated."""

  @functools.wraps(function)
  def wrapped(*args, **kwargs):
    count = 0
    while count < len(args) and hasattr(args[count], "ndim"):
      count += 1
    operands, static = args[:count], args[count:]
    compute = functools.partial(_call_with, function, static, kwargs)

    def out_specs(first, *_):
      # The output shapes, from operands without sharding (replicated).
      shapes = jax.eval_shape(compute, *(
          jax.ShapeDtypeStruct(a.shape, a.dtype) for a in operands))
      return jax.tree.map(
          lambda out: spec_from(out.ndim, [(0, first[0]),
                                           (out.ndim - 1, first[-1])]),
          shapes)

    return run(compute, out_specs, *operands)

  return wrapped


def _call_with(function, static, kwargs, *operands):
  return function(*operands, *static, **kwargs)


def summed_like(gradient, operand):
  """``gradient`` summed (``psum``) over the ``shard_map`` axes along which
  it varies and ``operand`` does not.

  Inside ``shard_map`` an operand that is the same on every device (a
  replicated kernel) meets per-device values (a block of the batch): JAX
  broadcasts it implicitly, and the transpose of that broadcast is a sum
  over the devices. ``jax.grad`` of lax's operations inserts it; a rule's
  backward must too, so that the kernel's gradient is the whole batch's,
  the same on every device, like the kernel.
  """
  try:
    varying = jax.typeof(gradient).manual_axis_type.varying
    extra = varying - jax.typeof(operand).manual_axis_type.varying
  except AttributeError:
    return gradient
  if not extra:
    return gradient
  return jax.lax.psum(gradient, tuple(sorted(extra)))
