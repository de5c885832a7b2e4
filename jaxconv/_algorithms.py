"""How a convolution is evaluated: XLA's kernel or a direct contraction.

The rules in ``convolution.py`` decide *what* to compute: the forward pass
and each gradient are convolutions with a known geometry (eqs. 5, 10, 14).
This module decides *how* to evaluate one such convolution. Because every
gradient is a convolution of its own, each of the three (forward, input
gradient, kernel gradient) picks its algorithm independently, by its own
shape.

Algorithms (all compute eq. 5 exactly, with groups and batch groups):

``"xla"``
    ``lax.conv_general_dilated``: XLA's native convolution.
``"shifted"``
    Shifted-slice accumulation, one term per kernel tap ``k``:
    ``y = sum_k contract_c(x^[s*i + d*k], w[k])``. A 1x1 kernel is a single
    matrix product over the channels; a depthwise kernel is a fused
    elementwise multiply-add. Needs few taps.
``"window_dot"``
    One contraction per *output position* ``i``: the whole window of ``x^``
    under output ``i`` against the whole kernel. This is eq. (9) read
    directly: the kernel gradient has as many outputs as the forward kernel
    has taps, and each is one large matrix product over batch and positions.
    Needs few output positions.

``choose_algorithm`` is a pure function of the static geometry, the shapes
and the backend; a user can force an algorithm with the ``algorithm=``
keyword or the ``use_algorithm`` context manager. A forced algorithm is used
for every convolution of the rule whose size it supports (at most
``MAX_UNROLLED`` taps or output positions), and XLA's kernel for the rest.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

ALGORITHMS = ("auto", "xla", "shifted", "window_dot")

# Largest number of unrolled terms (kernel taps for "shifted", output
# positions for "window_dot"): beyond it compile time grows for little gain.
MAX_UNROLLED = 64

_ALGORITHM = contextvars.ContextVar("jaxconv_algorithm", default="auto")


@contextlib.contextmanager
def use_algorithm(name: str):
  """Forces the convolution algorithm inside a ``with`` block.

  The setting is read when a jaxconv function is traced, so it applies to
  functions (re)traced inside the block; an already-compiled ``jax.jit``
  function keeps the algorithm it was traced with.

  Args:
    name: one of ``"auto"``, ``"xla"``, ``"shifted"``, ``"window_dot"``.

  Returns:
    A context manager.
  """
  token = _ALGORITHM.set(check_algorithm(name))
  try:
    yield
  finally:
    _ALGORITHM.reset(token)


def check_algorithm(name, argument: str = "algorithm") -> str:
  """Validates an algorithm name; ``None`` means the context's setting."""
  if name is None:
    return _ALGORITHM.get()
  if not isinstance(name, str) or name not in ALGORITHMS:
    raise ValueError(f"`{argument}` must be one of {ALGORITHMS}, got {name!r}.")
  return name


def _spatial(shape, spec):
  return tuple(int(shape[axis]) for axis in spec[2:])


def supports(name: str, geometry, lhs_shape, rhs_shape, out_shape) -> bool:
  """Whether ``name`` can evaluate this convolution."""
  if name == "xla":
    return True
  if 0 in lhs_shape or 0 in rhs_shape or 0 in out_shape:
    return False
  lhs_spec, rhs_spec, out_spec = geometry.dimension_numbers
  if name == "shifted":
    return math.prod(_spatial(rhs_shape, rhs_spec)) <= MAX_UNROLLED
  if name == "window_dot":
    return math.prod(_spatial(out_shape, out_spec)) <= MAX_UNROLLED
  return False


def choose_algorithm(geometry, lhs_shape, rhs_shape, out_shape,
                     backend: str | None = None) -> str:
  """Picks the algorithm for one convolution.

  The default policy, measured on CPU (see ``docs/performance.md``):

  * a 1x1 kernel: ``"shifted"`` (one matrix product over the channels);
  * one input feature per group (depthwise) with a small kernel:
    ``"shifted"`` (a fused elementwise multiply-add; XLA's CPU kernel for
    grouped convolutions is slow);
  * a single output position (the kernel gradient of a 1x1 kernel):
    ``"window_dot"``, one matrix product;
  * few output positions, a large window, and batch groups, feature groups
    or input dilation, as in the kernel gradient of a grouped, depthwise or
    transposed convolution: ``"window_dot"`` (XLA's CPU kernel is slowest
    exactly there);
  * otherwise, and on every other backend: ``"xla"``. Plain kernel
    gradients stay with XLA: per-tap products measured slower there.

  Args:
    geometry: the normalised ``ConvGeometry`` (its ``algorithm`` field may
      force a choice).
    lhs_shape, rhs_shape, out_shape: the convolution's shapes.
    backend: ``jax.default_backend()`` when ``None``.

  Returns:
    ``"xla"``, ``"shifted"`` or ``"window_dot"``.
  """
  forced = geometry.algorithm
  if forced != "auto":
    return forced if supports(forced, geometry, lhs_shape, rhs_shape,
                              out_shape) else "xla"
  backend = backend or jax.default_backend()
  if backend != "cpu":
    return "xla"
  lhs_spec, rhs_spec, out_spec = geometry.dimension_numbers
  taps = math.prod(_spatial(rhs_shape, rhs_spec))
  positions = math.prod(_spatial(out_shape, out_spec))
  in_per_group = rhs_shape[rhs_spec[1]]
  grouped = geometry.feature_group_count > 1 or geometry.batch_group_count > 1
  dilated_input = any(a > 1 for a in geometry.lhs_dilation)
  if taps == 1 or (in_per_group == 1 and taps <= 49):
    if supports("shifted", geometry, lhs_shape, rhs_shape, out_shape):
      return "shifted"
  if positions == 1 or (positions <= 49 and taps >= 4 * positions
                        and (grouped or dilated_input)):
    if supports("window_dot", geometry, lhs_shape, rhs_shape, out_shape):
      return "window_dot"
  return "xla"


# ---------------------------------------------------------------------------
# The direct algorithms, in a channels-last working layout:
# input (N, *spatial, C), kernel (*window, C / G, O), output (N / B, *out, O).
# ---------------------------------------------------------------------------


def _to_working(x, spec):
  """(batch, feature, *spatial) spec -> array laid out (batch, *spatial, feature)."""
  perm = (spec[0],) + tuple(spec[2:]) + (spec[1],)
  return x if perm == tuple(range(x.ndim)) else jnp.transpose(x, perm)


def _kernel_to_working(w, spec):
  """(out, in, *spatial) spec -> array laid out (*spatial, in, out)."""
  perm = tuple(spec[2:]) + (spec[1], spec[0])
  return w if perm == tuple(range(w.ndim)) else jnp.transpose(w, perm)


def _from_working(y, spec):
  perm = (spec[0],) + tuple(spec[2:]) + (spec[1],)
  inverse = tuple(np.argsort(perm))
  return y if inverse == tuple(range(y.ndim)) else jnp.transpose(y, inverse)


def _prepared_input(x, geometry):
  """x^ of eq. (5): dilate by ``a`` and pad by ``(lo, hi)`` (negative crops)."""
  config = [(0, 0, 0)]
  config += [(lo, hi, a - 1) for (lo, hi), a in zip(geometry.padding,
                                                     geometry.lhs_dilation)]
  config += [(0, 0, 0)]
  if all(c == (0, 0, 0) for c in config):
    return x
  return lax.pad(x, jnp.zeros((), x.dtype), config)


def _contract(patch, kernel, groups, batch_groups, contracted, precision,
              accumulate):
  """Contracts the trailing ``contracted + 1`` axes of ``patch`` (window
  axes, then features) with the leading ones of ``kernel``, respecting
  feature and batch groups.

  ``patch``: (N, *free, *window, C); ``kernel``: (*window, C / G, O).
  Returns (N / B, *free, O).
  """
  window_axes = "".join(chr(ord("p") + i) for i in range(contracted))
  free_rank = patch.ndim - 2 - contracted
  free_axes = "".join(chr(ord("h") + i) for i in range(free_rank))
  out_features = kernel.shape[-1]
  kw = dict(precision=precision, preferred_element_type=accumulate)
  if groups == 1 and batch_groups == 1:
    spec = f"n{free_axes}{window_axes}c,{window_axes}co->n{free_axes}o"
    return jnp.einsum(spec, patch, kernel, **kw)
  if groups > 1:
    per_group = patch.shape[-1] // groups
    if per_group == 1 and out_features == groups:
      # Depthwise with one output per input: an elementwise product.
      product = patch * kernel[..., 0, :].astype(accumulate or patch.dtype)
      return product.sum(axis=tuple(range(1 + free_rank, patch.ndim - 1)),
                         dtype=accumulate) if contracted else product.astype(
                             accumulate or patch.dtype)
    patch = patch.reshape(patch.shape[:-1] + (groups, per_group))
    kernel = kernel.reshape(kernel.shape[:-2] + (per_group, groups,
                                                 out_features // groups))
    spec = (f"n{free_axes}{window_axes}gc,{window_axes}cgo->"
            f"n{free_axes}go")
    out = jnp.einsum(spec, patch, kernel, **kw)
    return out.reshape(out.shape[:-2] + (out_features,))
  batch = patch.shape[0]
  patch = patch.reshape((batch_groups, batch // batch_groups) + patch.shape[1:])
  kernel = kernel.reshape(kernel.shape[:-1] + (batch_groups,
                                               out_features // batch_groups))
  spec = (f"bn{free_axes}{window_axes}c,{window_axes}cbo->"
          f"n{free_axes}bo")
  out = jnp.einsum(spec, patch, kernel, **kw)
  return out.reshape(out.shape[:-2] + (out_features,))


def _accumulation_dtype(dtype, preferred):
  if preferred is not None:
    return preferred
  if jnp.dtype(dtype).itemsize < 4:
    return jnp.float32  # sum the taps of low-precision inputs in float32
  return None


def shifted(lhs, rhs, geometry, out_shape):
  """``y = sum_k contract_c(x^[s*i + d*k], w[k])``: one term per kernel tap."""
  lhs_spec, rhs_spec, out_spec = geometry.dimension_numbers
  x = _prepared_input(_to_working(lhs, lhs_spec), geometry)
  w = _kernel_to_working(rhs, rhs_spec)
  out_spatial = _spatial(out_shape, out_spec)
  accumulate = _accumulation_dtype(lhs.dtype, geometry.preferred_element_type)
  total = None
  for tap in itertools.product(*(range(k) for k in w.shape[:-2])):
    start = [0] + [d * k for d, k in zip(geometry.rhs_dilation, tap)] + [0]
    limit = ([x.shape[0]]
             + [b + s * (m - 1) + 1 for b, s, m in zip(
                 start[1:-1], geometry.window_strides, out_spatial)]
             + [x.shape[-1]])
    strides = [1] + list(geometry.window_strides) + [1]
    patch = lax.slice(x, start, limit, strides)
    term = _contract(patch, w[tap], geometry.feature_group_count,
                     geometry.batch_group_count, 0, geometry.precision,
                     accumulate)
    total = term if total is None else total + term
  out_dtype = geometry.preferred_element_type or lhs.dtype
  return _from_working(total.astype(out_dtype), out_spec)


def window_dot(lhs, rhs, geometry, out_shape):
  """``y[i] = contract_{k,c}(x^[s*i + d*k], w[k])``: one term per output."""
  lhs_spec, rhs_spec, out_spec = geometry.dimension_numbers
  x = _prepared_input(_to_working(lhs, lhs_spec), geometry)
  w = _kernel_to_working(rhs, rhs_spec)
  window = w.shape[:-2]
  out_spatial = _spatial(out_shape, out_spec)
  accumulate = _accumulation_dtype(lhs.dtype, geometry.preferred_element_type)
  outputs = []
  for position in itertools.product(*(range(m) for m in out_spatial)):
    start = [0] + [s * i for s, i in zip(geometry.window_strides,
                                         position)] + [0]
    limit = ([x.shape[0]]
             + [b + d * (k - 1) + 1 for b, d, k in zip(
                 start[1:-1], geometry.rhs_dilation, window)]
             + [x.shape[-1]])
    strides = [1] + list(geometry.rhs_dilation) + [1]
    patch = lax.slice(x, start, limit, strides)
    outputs.append(_contract(patch, w, geometry.feature_group_count,
                             geometry.batch_group_count, len(window),
                             geometry.precision, accumulate))
  stacked = jnp.stack(outputs, axis=1)
  batch, features = stacked.shape[0], stacked.shape[-1]
  stacked = stacked.reshape((batch,) + out_spatial + (features,))
  out_dtype = geometry.preferred_element_type or lhs.dtype
  return _from_working(stacked.astype(out_dtype), out_spec)


def xla(lhs, rhs, geometry, out_shape):
  """XLA's native convolution."""
  del out_shape
  return lax.conv_general_dilated(
      lhs, rhs,
      window_strides=geometry.window_strides,
      padding=geometry.padding,
      lhs_dilation=geometry.lhs_dilation,
      rhs_dilation=geometry.rhs_dilation,
      dimension_numbers=geometry.dimension_numbers,
      feature_group_count=geometry.feature_group_count,
      batch_group_count=geometry.batch_group_count,
      precision=geometry.precision,
      preferred_element_type=geometry.preferred_element_type,
  )


IMPLEMENTATIONS = {"xla": xla, "shifted": shifted, "window_dot": window_dot}


def evaluate(lhs, rhs, geometry, out_shape: Sequence[int]):
  """Evaluates one convolution with the chosen algorithm."""
  name = choose_algorithm(geometry, lhs.shape, rhs.shape, out_shape)
  return IMPLEMENTATIONS[name](lhs, rhs, geometry, tuple(out_shape))
