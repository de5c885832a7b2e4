"""Pooling geometry and the two data movements every pooling rule is made of.

A pooling layer reads, for every window (output position) ``i`` and every tap
(window offset) ``k``, the input element at (eq. (32) of the derivation)

    t(i, k) = stride * i + dilation * k - pad_lo        (per spatial dimension)

and every backward pass sends one value per ``(i, k)`` back to ``t(i, k)``.
This module holds the pieces shared by the max, min, average and Lp rules:

* :class:`PoolGeometry`, the hashable value the public functions build once
  (:func:`pool_geometry`) and pass to the rules as a static argument;
* :func:`window_view`, the strided slice that lines up the taps of offset ``k``
  of every window with the output grid (the forward gather), read either from
  the input itself or from the input padded once by :func:`pad_to_covered`;
* :func:`scatter_to_input`, its transpose: the sum over offsets of per-window
  terms placed back at their taps, computed phase by phase (eq. (46));
* static NumPy tables derived from the geometry: which taps are real, the first
  real tap of each window, and the average's divisor (eq. (39));
* :class:`AdaptiveGeometry` and the static tables of adaptive pooling, whose
  windows are not evenly spaced (eq. (49)): the taps of every window and, for
  the backward, the windows that contain every input position.

Arrays here are canonical: ``(batch, *spatial, features)`` with exactly one
batch axis. The public functions flatten and restore the user's leading axes.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv import _geometry

Pads = _geometry.Pads


class PoolGeometry(NamedTuple):
  """Everything a pooling rule needs to know about its windows.

  Built by :func:`pool_geometry` at the public boundary and trusted afterwards.
  All fields are tuples of Python ints with one entry per spatial dimension.

  Attributes:
    in_sizes: the spatial sizes of the unpadded input.
    window: the number of taps of the window in each dimension.
    strides: the distance between the starts of consecutive windows.
    dilation: the distance between consecutive taps of one window.
    padding: the declared ``(lo, hi)`` padding (after resolving ``"SAME"``).
    out_sizes: the number of windows, eqs. (30) and (31).
  """
  in_sizes: tuple[int, ...]
  window: tuple[int, ...]
  strides: tuple[int, ...]
  dilation: tuple[int, ...]
  padding: Pads
  out_sizes: tuple[int, ...]

  @property
  def rank(self) -> int:
    """The number of spatial dimensions."""
    return len(self.window)

  @property
  def window_extents(self) -> tuple[int, ...]:
    """The effective window extent ``(window - 1) * dilation + 1``."""
    return tuple(
        _geometry.dilated_size(k, d) for k, d in zip(self.window, self.dilation))

  @property
  def window_size(self) -> int:
    """The number of taps of one window."""
    return math.prod(self.window)

  @property
  def offsets(self) -> tuple[tuple[int, ...], ...]:
    """All window offsets ``k`` in row-major order (the tie-break order)."""
    return tuple(itertools.product(*(range(k) for k in self.window)))

  @property
  def covered(self) -> tuple[int, ...]:
    """The extent of the padded line the windows read: ``(out-1)*s + e``.

    Under ``ceil_mode`` this may exceed ``lo + in + hi`` (the overhang of the
    last window); in floor mode it may fall short of it (unread input).
    """
    return tuple((o - 1) * s + e for o, s, e in zip(
        self.out_sizes, self.strides, self.window_extents))

  @property
  def edge_pads(self) -> Pads:
    """The ``(lo, hi)`` that turn the input into exactly the covered extent.

    ``hi`` is negative when the last input elements are read by no window.
    """
    return tuple((lo, c - lo - n) for (lo, _), c, n in zip(
        self.padding, self.covered, self.in_sizes))


def _is_sequence(value) -> bool:
  return isinstance(value, (Sequence, np.ndarray)) and not isinstance(
      value, str)


def check_flag(value, name: str) -> bool:
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"`{name}` must be a bool, got {value!r} "
                    f"(type {type(value).__name__}).")
  return bool(value)


def pool_geometry(shape: Sequence[int], window_shape, strides, padding,
                  dilation=1, ceil_mode: bool = False, *,
                  forbid_empty_windows: bool = False) -> PoolGeometry:
  """Validates the pooling arguments once and returns their geometry.

  The layout is Flax's: ``shape`` is ``(batch..., *spatial, features)`` with
  zero or more leading batch axes and one spatial axis per entry of
  ``window_shape``.

  Args:
    shape: the input's shape.
    window_shape: a sequence with the window's number of taps per spatial
      dimension.
    strides: an int, a sequence of ints, or ``None`` (stride 1).
    padding: ``"SAME"``, ``"SAME_LOWER"``, ``"VALID"``, an int, a sequence of
      ints or a sequence of ``(lo, hi)`` pairs; never negative.
    dilation: an int or a sequence of ints: the window (not input) dilation.
    ceil_mode: PyTorch's ``ceil_mode``, eq. (31).
    forbid_empty_windows: enforce the rules of max and min pooling: no side's
      padding may exceed half the effective window (PyTorch's check) and no
      window may consist of padding only (which a dilated window can, even
      within that bound).

  Returns:
    The :class:`PoolGeometry`.

  Raises:
    TypeError: an argument has the wrong type.
    ValueError: an argument has the wrong length or value, or no window fits.
  """
  if not _is_sequence(window_shape):
    raise TypeError(
        "`window_shape` must be a sequence with one int per spatial dimension "
        f"(it also sets their number), got {window_shape!r} "
        f"(type {type(window_shape).__name__}).")
  rank = len(window_shape)
  if rank == 0:
    raise ValueError("`window_shape` must have at least one entry, got ().")
  shape = tuple(shape)
  if len(shape) < rank + 1:
    raise ValueError(
        f"`window_shape` {tuple(window_shape)!r} has {rank} dimensions, but "
        f"the input of shape {shape} has only {max(len(shape) - 1, 0)} spatial "
        "dimensions (the layout is (batch..., *spatial, features)).")
  window = _geometry.int_tuple(window_shape, rank, "window_shape")
  strides = _geometry.int_tuple(strides, rank, "strides", default=1)
  dilation = _geometry.int_tuple(dilation, rank, "dilation", default=1)
  ceil_mode = check_flag(ceil_mode, "ceil_mode")
  in_sizes = shape[len(shape) - rank - 1:-1]
  extents = tuple(
      _geometry.dilated_size(k, d) for k, d in zip(window, dilation))
  pads = _geometry.padding_pairs(padding, in_sizes, extents, strides,
                                 allow_negative=False)
  out_sizes = tuple(
      _geometry.pool_window_count(n, lo, hi, e, s, ceil_mode)
      for n, (lo, hi), e, s in zip(in_sizes, pads, extents, strides))
  for dim, (n, (lo, hi), e, out) in enumerate(
      zip(in_sizes, pads, extents, out_sizes)):
    if out < 1:
      raise ValueError(
          f"Pooling output size along spatial dimension {dim} would be {out}: "
          f"the input size {n} plus padding ({lo}, {hi}) is smaller than the "
          f"effective window extent {e}.")
  geometry = PoolGeometry(in_sizes, window, strides, dilation, pads, out_sizes)
  if forbid_empty_windows:
    _check_no_empty_windows(geometry)
  return geometry


def _check_no_empty_windows(geometry: PoolGeometry) -> None:
  """Raises ValueError when a max/min window could hold padding only."""
  for dim, ((lo, hi), e) in enumerate(
      zip(geometry.padding, geometry.window_extents)):
    if lo > e // 2 or hi > e // 2:
      raise ValueError(
          f"`padding` ({lo}, {hi}) along spatial dimension {dim} is more than "
          f"half the effective window extent {e} (at most {e // 2}); max and "
          "min pooling would then have windows made of padding only.")
  for dim, real in enumerate(real_taps(geometry)):
    empty = np.flatnonzero(~real.any(axis=1))
    if empty.size:
      raise ValueError(
          f"Window {int(empty[0])} along spatial dimension {dim} holds padding "
          f"only (input size {geometry.in_sizes[dim]}, padding "
          f"{geometry.padding[dim]}, window {geometry.window[dim]}, dilation "
          f"{geometry.dilation[dim]}, stride {geometry.strides[dim]}); max and "
          "min pooling need a real element in every window.")


# ----------------------------------------------------------------------------
# Static tables (NumPy, computed from the geometry alone).
# ----------------------------------------------------------------------------


def tap_positions(geometry: PoolGeometry) -> list[np.ndarray]:
  """Per dimension, the ``(out, window)`` table of tap positions, eq. (32)."""
  return [
      np.arange(out)[:, None] * s + np.arange(k)[None, :] * d - lo
      for out, k, s, d, (lo, _) in zip(geometry.out_sizes, geometry.window,
                                       geometry.strides, geometry.dilation,
                                       geometry.padding)
  ]


def real_taps(geometry: PoolGeometry) -> list[np.ndarray]:
  """Per dimension, the ``(out, window)`` table of taps that hit the input."""
  return [(t >= 0) & (t < n)
          for t, n in zip(tap_positions(geometry), geometry.in_sizes)]


def has_padding_taps(geometry: PoolGeometry) -> bool:
  """Whether any window reads padding (declared or ceil-mode overhang)."""
  return not all(real.all() for real in real_taps(geometry))


def first_real_offset(geometry: PoolGeometry) -> np.ndarray:
  """The flat offset of the first real tap of every window, row-major.

  Max/min pooling routes the gradient of a window whose real values are all
  ``-inf`` (``+inf`` for min) there, never to padding, eq. (34). Requires every
  window to hold a real tap (see ``forbid_empty_windows``).

  Returns:
    An int array of shape ``out_sizes``.
  """
  flat = np.zeros(geometry.out_sizes, np.int64)
  place = 1
  for dim in reversed(range(geometry.rank)):
    first = np.argmax(real_taps(geometry)[dim], axis=1)  # (out,)
    shape = [1] * geometry.rank
    shape[dim] = -1
    flat = flat + first.reshape(shape) * place
    place *= geometry.window[dim]
  return flat


def divisor_table(geometry: PoolGeometry, count_include_pad: bool) -> np.ndarray:
  """The average's divisor ``D_o`` of every window, eq. (39) (PyTorch's rule).

  With ``count_include_pad`` a window counts its taps inside the declared
  padding ``[-lo, n + hi)`` but never the ceil-mode overhang beyond it;
  without, only the taps inside the input ``[0, n)``. The count of a box
  window is the product of its per-dimension counts.

  Returns:
    A float64 array of shape ``out_sizes``; 0 for a window with no counted tap.
  """
  table = np.ones((), np.float64)
  for t, n, (lo, hi) in zip(tap_positions(geometry), geometry.in_sizes,
                            geometry.padding):
    low, high = (-lo, n + hi) if count_include_pad else (0, n)
    counts = ((t >= low) & (t < high)).sum(axis=1).astype(np.float64)
    table = np.multiply.outer(table, counts)
  return table


# ----------------------------------------------------------------------------
# The two data movements.
# ----------------------------------------------------------------------------


def pad_to_covered(x: jax.Array, geometry: PoolGeometry,
                   pad_value) -> tuple[jax.Array, PoolGeometry]:
  """Pads (or crops) the input to the extent its windows cover.

  For rules that read every tap's view more than once (max and min: the
  extremum and its winner; Lp: the largest magnitude and the scaled sum).
  XLA stores a padded view that has two readers, so padding the input once
  and slicing it moves less memory than one padded copy per tap. Average
  pooling reads each view once and calls :func:`window_view` on the input
  directly.

  Returns:
    ``(padded, covering)``: the padded input and the geometry of its windows
    in it (no padding), for :func:`window_view`.
  """
  config = [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in geometry.edge_pads]
  config.append((0, 0, 0))
  covering = geometry._replace(in_sizes=geometry.covered,
                               padding=((0, 0),) * geometry.rank)
  if all(lo == 0 and hi == 0 for lo, hi, _ in config):
    return x, covering
  return lax.pad(x, jnp.asarray(pad_value, x.dtype), config), covering


def window_view(x: jax.Array, geometry: PoolGeometry, offset: Sequence[int],
                pad_value) -> jax.Array:
  """Tap ``offset`` of every window: ``x[:, s*i + d*k - lo, :]``, eq. (32).

  Windows whose tap falls in the padding (or past the input, in ceil mode)
  read ``pad_value``. Only the output-sized view is padded, never the input:
  the view is a strided slice of ``x`` over the windows whose tap is real,
  padded out to all windows, which XLA fuses into whatever consumes it.

  Args:
    x: a canonical input ``(batch, *in_sizes, features)``.
    geometry: the pooling geometry.
    offset: the window offset ``k``, one int per spatial dimension.
    pad_value: the value of a tap in the padding.

  Returns:
    An array of shape ``(batch, *out_sizes, features)``.
  """
  start, limit, config = [0], [x.shape[0]], [(0, 0, 0)]
  for t, real, k, out in zip(tap_positions(geometry), real_taps(geometry),
                             offset, geometry.out_sizes):
    # t(i, k) grows with i, so the windows whose tap k is real are a run.
    hits = np.flatnonzero(real[:, k])
    if hits.size == 0:  # This tap is padding in every window.
      shape = (x.shape[0],) + geometry.out_sizes + (x.shape[-1],)
      return jnp.full(shape, pad_value, x.dtype)
    first, last = int(hits[0]), int(hits[-1])
    start.append(int(t[first, k]))
    limit.append(int(t[last, k]) + 1)
    config.append((first, out - 1 - last, 0))
  start.append(0)
  limit.append(x.shape[-1])
  config.append((0, 0, 0))
  view = lax.slice(x, start, limit, (1,) + geometry.strides + (1,))
  if any(lo or hi for lo, hi, _ in config):
    view = lax.pad(view, jnp.asarray(pad_value, x.dtype), config)
  return view


def scatter_to_input(term: Callable[[int, tuple[int, ...]], jax.Array],
                     geometry: PoolGeometry, batch: int, features: int,
                     dtype) -> jax.Array:
  """Sends per-window terms back to their taps and sums them, eq. (46).

  Computes ``dx[j] = sum over (i, k) with t(i, k) = j of term(k)[i]``, the
  transpose of :func:`window_view` summed over offsets. Instead of adding one
  full-size strided update per offset, the padded line is split into its
  ``stride`` phases: position ``p = q*s + r`` receives only the offsets with
  ``k*d = r (mod s)``, from window ``i = q - (k*d) // s``. Each phase is a sum
  of shifted output-sized arrays, and the phases interleave back by a
  reshape. A term used at several shifts (as in average pooling, where
  every offset sends the same array) is padded once and sliced per shift.
  With non-overlapping windows (``window == stride``, no dilation) every
  phase is a single term and the whole scatter is one reshape.

  Args:
    term: ``term(flat_offset, offset)`` returns the value every window sends to
      its tap ``offset``, shape ``(batch, *out_sizes, features)``, in
      ``dtype``. It is called once per offset.
    geometry: the pooling geometry.
    batch: the canonical batch size.
    features: the number of features.
    dtype: the dtype of the result.

  Returns:
    An array of shape ``(batch, *in_sizes, features)``; taps in the padding
    are dropped.
  """
  rank = geometry.rank
  # Phase position q of residue r is the padded position q * s + r; the
  # phases span the covered extent, which the end crops to the input.
  phase_len = tuple(-(-c // s) for c, s in zip(geometry.covered,
                                               geometry.strides))
  groups: dict[tuple[int, ...], list] = {}
  values: dict[int, jax.Array] = {}   # id -> term, kept alive while in use
  shifts: dict[int, set] = {}
  for flat, offset in enumerate(geometry.offsets):
    residue = tuple((k * d) % s for k, d, s in zip(
        offset, geometry.dilation, geometry.strides))
    # Window i = q - shift sends tap k to phase position q.
    shift = tuple((k * d) // s for k, d, s in zip(
        offset, geometry.dilation, geometry.strides))
    value = term(flat, offset)
    values[id(value)] = value
    shifts.setdefault(id(value), set()).add(shift)
    groups.setdefault(residue, []).append((id(value), shift))

  zero = jnp.zeros((), dtype)

  def pads(shift):
    # Phase position q holds window q - shift: pad lo = shift.
    return [(j, p - out - j) for j, p, out in zip(shift, phase_len,
                                                  geometry.out_sizes)]

  # A term used at several shifts is padded once to cover all of them.
  padded_once = {}
  for key, used in shifts.items():
    if len(used) > 1:
      config = [tuple(max(0, max(pair[i] for pair in pair_list))
                      for i in range(2))
                for pair_list in zip(*(pads(shift) for shift in used))]
      padded_once[key] = (config, lax.pad(
          values[key], zero,
          [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in config] + [(0, 0, 0)]))

  def placed(key, shift):
    if key in padded_once:
      config, padded = padded_once[key]
      start = [0] + [lo - j for (lo, _), j in zip(config, shift)] + [0]
      limit = [batch] + [a + p for a, p in zip(start[1:], phase_len)]
      limit.append(features)
      return lax.slice(padded, start, limit)
    config = [(lo, hi, 0) for lo, hi in pads(shift)]
    if not any(lo or hi for lo, hi, _ in config):
      return values[key]
    return lax.pad(values[key], zero, [(0, 0, 0)] + config + [(0, 0, 0)])

  built: dict[tuple, jax.Array] = {}

  def phase(residue):
    # Identical phases (the same terms at the same shifts, as in average
    # pooling) are built once and recognised by their key, so that the
    # interleaving below can broadcast them instead of concatenating copies.
    key = tuple(groups.get(residue, ()))
    if key not in built:
      parts = [placed(*item) for item in key]
      built[key] = (functools.reduce(jnp.add, parts) if parts else
                    jnp.zeros((batch,) + phase_len + (features,), dtype))
    return key, built[key]

  def interleave(prefix):
    # Stacks the phases of dimension len(prefix) next to its q axis and merges
    # the two, so that position q * s + r comes out in order.
    dim = len(prefix)
    if dim == rank:
      return phase(prefix)
    parts = [interleave(prefix + (r,)) for r in range(geometry.strides[dim])]
    if len(parts) == 1:
      return parts[0]
    key = ("interleave", dim) + tuple(part_key for part_key, _ in parts)
    if key in built:
      return key, built[key]
    if all(part_key == parts[0][0] for part_key, _ in parts):
      # The same phase at every residue: a broadcast, not a concatenation.
      expanded = jnp.expand_dims(parts[0][1], dim + 2)
      shape = list(expanded.shape)
      shape[dim + 2] = len(parts)
      stacked = jnp.broadcast_to(expanded, shape)
    else:
      stacked = jnp.stack([part for _, part in parts], axis=dim + 2)
    shape = stacked.shape
    merged = stacked.reshape(shape[:dim + 1] +
                             (shape[dim + 1] * shape[dim + 2],) +
                             shape[dim + 3:])
    built[key] = merged
    return key, merged

  _, full = interleave(())
  # `full` spans the padded positions [0, phase_len * s); keep the input's
  # [lo, lo + n), with zeros for input that no window reads.
  config = [(0, 0, 0)] + [(-lo, lo + n - q * s, 0) for (lo, _), n, q, s in zip(
      geometry.padding, geometry.in_sizes, phase_len, geometry.strides)]
  config.append((0, 0, 0))
  if all(lo == 0 and hi == 0 for lo, hi, _ in config):
    return full
  return lax.pad(full, zero, config)


# ----------------------------------------------------------------------------
# Adaptive windows, eq. (49).
# ----------------------------------------------------------------------------


class AdaptiveGeometry(NamedTuple):
  """The windows of adaptive pooling: an input and an output size per dimension.

  Built by :func:`adaptive_geometry` at the public boundary and trusted
  afterwards. The windows of a dimension follow from its two sizes alone
  (:func:`adaptive_bounds`); the window of an output element is the box of
  its per-dimension windows.

  Attributes:
    in_sizes: the spatial sizes of the input, each ``>= 1``.
    out_sizes: the spatial sizes of the output, each ``>= 0``.
  """
  in_sizes: tuple[int, ...]
  out_sizes: tuple[int, ...]

  @property
  def rank(self) -> int:
    """The number of spatial dimensions."""
    return len(self.in_sizes)


def adaptive_geometry(shape: Sequence[int], output_size) -> AdaptiveGeometry:
  """Validates an adaptive pooling's ``output_size`` against ``x.shape``.

  Args:
    shape: the input's shape, ``(batch..., *spatial, features)``.
    output_size: a sequence with one entry per spatial dimension (its length
      sets their number): an int ``>= 0``, or ``None`` to keep the input's
      size, as in PyTorch.

  Returns:
    The :class:`AdaptiveGeometry`.

  Raises:
    TypeError: ``output_size`` is not a sequence or holds a non-integer.
    ValueError: a negative entry, more entries than ``x`` has spatial axes,
      or an empty spatial axis.
  """
  if not _is_sequence(output_size):
    raise TypeError(
        "`output_size` must be a sequence with one int (or None) per spatial "
        "dimension (it also sets their number), got "
        f"{output_size!r} (type {type(output_size).__name__}).")
  rank = len(output_size)
  if rank == 0:
    raise ValueError("`output_size` must have at least one entry, got ().")
  shape = tuple(shape)
  if len(shape) < rank + 1:
    raise ValueError(
        f"`output_size` {tuple(output_size)!r} has {rank} dimensions, but the "
        f"input of shape {shape} has only {max(len(shape) - 1, 0)} spatial "
        "dimensions (the layout is (batch..., *spatial, features)).")
  if any(isinstance(m, jax.core.Tracer) for m in output_size):
    raise TypeError(
        "`output_size` must hold static Python ints, got a traced value: it "
        "sets the output's shape, so it must be known while tracing.")
  in_sizes = tuple(shape[len(shape) - rank - 1:-1])
  entries = tuple(n if m is None else m for m, n in zip(output_size, in_sizes))
  out_sizes = _geometry.int_tuple(entries, rank, "output_size", minimum=0)
  for dim, (n, m) in enumerate(zip(in_sizes, out_sizes)):
    if n == 0 and m > 0:
      raise ValueError(
          f"The input has size 0 along spatial dimension {dim}, so the "
          f"{m} adaptive windows there would be empty; every window needs at "
          "least one element.")
  return AdaptiveGeometry(in_sizes, out_sizes)


def adaptive_bounds(n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
  """Eq. (49): window ``i`` of ``m`` over ``n`` inputs is ``[start, end)``.

  ``start = floor(i n / m)`` and ``end = ceil((i + 1) n / m)`` (PyTorch's
  rule), in exact integer arithmetic.

  Returns:
    ``(starts, ends)``, two int64 arrays of length ``m``.
  """
  i = np.arange(m, dtype=np.int64)
  return (i * n) // m, -((-(i + 1) * n) // m)


def is_partition(n: int, m: int) -> bool:
  """Whether the ``m`` windows over ``n`` inputs are equal and disjoint.

  Then window ``i`` is ``[i n/m, (i + 1) n/m)`` and gathering the windows is a
  reshape.
  """
  return m > 0 and n % m == 0


def adaptive_taps(n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
  """The taps of every window of one dimension, for the forward gather.

  Returns:
    ``(positions, lengths)``: ``positions`` is ``(m, K)`` with ``K`` the
    longest window, ``positions[i, k] = start[i] + k`` for the window's taps
    and ``n`` (one past the input) for ``k >= lengths[i]``; ``lengths[i] =
    end[i] - start[i]``.
  """
  starts, ends = adaptive_bounds(n, m)
  lengths = ends - starts
  taps = int(lengths.max()) if m else 0
  k = np.arange(taps)
  positions = np.where(k < lengths[:, None], starts[:, None] + k, n)
  return positions, lengths


def adaptive_containing(n: int, m: int) -> np.ndarray:
  """The windows that contain every input position, for the backward gather.

  The transpose of :func:`adaptive_taps`. Window ``i`` contains ``j`` when
  ``floor(i n / m) <= j < ceil((i + 1) n / m)``, that is when
  ``j m / n - 1 < i < (j + 1) m / n``: the windows containing ``j`` are
  ``[floor(j m / n), ceil((j + 1) m / n))``, eq. (49) with ``n`` and ``m``
  exchanged -- at most ``ceil(m / n) + 1`` of them (2 when ``m <= n``).

  Returns:
    ``(n, J)``: ``windows[j, r]`` is the ``r``-th window containing ``j``, in
    increasing order, and ``m`` (one past the last window) where there are
    fewer than ``J``.
  """
  if m == 0:
    return np.zeros((n, 0), np.int64)
  first, last = adaptive_bounds(m, n)
  count = last - first
  r = np.arange(int(count.max()) if n else 0)
  return np.where(r < count[:, None], first[:, None] + r, m)


# ----------------------------------------------------------------------------
# Layout and dtypes.
# ----------------------------------------------------------------------------


def to_canonical(x: jax.Array, rank: int) -> jax.Array:
  """Reshapes ``(batch..., *spatial, features)`` to ``(B, *spatial, C)``."""
  batch_shape = x.shape[:x.ndim - rank - 1]
  return x.reshape((math.prod(batch_shape),) + x.shape[x.ndim - rank - 1:])


def from_canonical(y: jax.Array, batch_shape: tuple[int, ...]) -> jax.Array:
  """Restores the leading batch axes removed by :func:`to_canonical`."""
  return y.reshape(batch_shape + y.shape[1:])


def accumulation_dtype(dtype) -> np.dtype:
  """float32 for float16/bfloat16 sums, the dtype itself otherwise."""
  dtype = np.dtype(dtype)
  return np.dtype(np.float32) if dtype.itemsize < 4 else dtype


def real_dtype(dtype) -> np.dtype:
  """The real dtype of the same precision: float32 for complex64."""
  return np.dtype(jnp.finfo(dtype).dtype)


def check_dtype(x, name: str, *, allow_complex: bool = False,
                operation: str = "pooling") -> np.dtype:
  """Checks that ``x`` is an array of a dtype ``operation`` accepts.

  Real floating-point dtypes are always accepted; complex ones where
  ``allow_complex`` (average pooling, a linear map). NumPy float64 becomes
  float32 when ``jax_enable_x64`` is off, as ``jnp.asarray`` makes it.

  Returns:
    The canonical dtype of ``x``.

  Raises:
    TypeError: ``x`` is not an array or has another dtype.
  """
  dtype = getattr(x, "dtype", None)
  if dtype is None:
    raise TypeError(f"`{name}` must be a JAX or NumPy array, got "
                    f"{type(x).__name__}.")
  dtype = np.dtype(dtype)
  if jnp.issubdtype(dtype, jnp.floating):
    return np.dtype(jax.dtypes.canonicalize_dtype(dtype))
  if jnp.issubdtype(dtype, jnp.complexfloating):
    if allow_complex:
      return np.dtype(jax.dtypes.canonicalize_dtype(dtype))
    hint = (" Pool `jnp.abs(x)`, or the real and imaginary parts "
            "separately." if name == "x" else "")
    raise TypeError(
        f"`{name}` must have a real floating-point dtype (float16, bfloat16, "
        f"float32, float64) for {operation}, got {dtype}: complex numbers "
        f"have no order.{hint}")
  accepted = ("float16, bfloat16, float32, float64, complex64, complex128"
              if allow_complex else "float16, bfloat16, float32, float64")
  kind = "floating-point or complex" if allow_complex else (
      "real floating-point")
  raise TypeError(
      f"`{name}` must have a {kind} dtype ({accepted}), got {dtype}.")


def check_cotangent(cotangent, dtype, expected_shape: Sequence[int], *,
                    allow_complex: bool, operation: str) -> None:
  """Checks a gradient function's ``cotangent`` against its output.

  Args:
    cotangent: the cotangent passed by the user.
    dtype: the canonical dtype of the primal input ``x``.
    expected_shape: the shape of the output.
    allow_complex: whether the operation takes complex inputs.
    operation: the operation's name, for the messages.

  Raises:
    TypeError: a dtype :func:`check_dtype` refuses, or a complex cotangent
      for a real ``x``.
    ValueError: the shape is not the output's.
  """
  ct_dtype = check_dtype(cotangent, "cotangent", allow_complex=allow_complex,
                         operation=operation)
  if (jnp.issubdtype(ct_dtype, jnp.complexfloating)
      and not jnp.issubdtype(dtype, jnp.complexfloating)):
    raise TypeError(
        f"`cotangent` is {ct_dtype} but `x` is {dtype}: the cotangent of a "
        "real output must be real.")
  if tuple(cotangent.shape) != tuple(expected_shape):
    raise ValueError(
        f"`cotangent` must have the pooled output's shape "
        f"{tuple(expected_shape)}, got {tuple(cotangent.shape)}.")


def flat_index_dtype(in_sizes: Sequence[int]) -> np.dtype:
  """int32, or int64 when ``prod(in_sizes)`` needs it, for flat indices.

  Raises:
    ValueError: int64 is needed but ``jax_enable_x64`` is off.
  """
  total = math.prod(in_sizes)
  if total <= np.iinfo(np.int32).max:
    return np.dtype(np.int32)
  if not jax.config.read("jax_enable_x64"):
    raise ValueError(
        f"The input has {total} spatial positions, too many for int32 "
        "indices; enable `jax_enable_x64` for int64 indices.")
  return np.dtype(np.int64)


def offset_dtype(geometry: PoolGeometry) -> np.dtype:
  """The smallest signed int dtype that holds a flat window offset."""
  size = geometry.window_size
  if size <= np.iinfo(np.int8).max + 1:
    return np.dtype(np.int8)
  if size <= np.iinfo(np.int16).max + 1:
    return np.dtype(np.int16)
  return np.dtype(np.int32)
