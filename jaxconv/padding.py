"""Padding modes with a hand-derived gradient.

``docs/derivation.md``, Part I, "Padding modes": a padded array reads every
position from one input position (or from nothing, for zeros), through an
index map fixed by the mode (eq. 25), so the gradient of the padding sums the
cotangent over the preimage of each input position (eq. 26):

* zeros: the padding reads nothing; the gradient crops it off;
* circular (``jnp.pad``'s ``"wrap"``): the input repeated periodically; the
  gradient wraps the padding's cotangent around and adds it in;
* reflect: the input mirrored about its first and last elements, which are
  not repeated; the gradient folds the padding's cotangent back onto the
  elements it mirrors;
* replicate (``jnp.pad``'s ``"edge"``): the first and last elements
  repeated; the gradient adds the padding's cotangent to them.

Layout: ``pad`` (the public function), the private ``custom_vjp`` primal
``_pad`` with ``_pad_fwd``/``_pad_bwd`` beside it, then the gradient
``_pad_gradient`` as a ``custom_vjp`` of its own whose backward is ``_pad``
again (the two are each other's transpose), so gradients of every order are
these two rules. ``pad_grad`` is the public gradient.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv import _geometry

__all__ = ["PADDING_MODES", "pad", "pad_grad"]

PADDING_MODES = ("zeros", "circular", "reflect", "replicate")

# Every spelling accepted, to the mode it names: PyTorch's ``padding_mode``
# names, ``jnp.pad``'s names and PyTorch's ``F.pad`` names.
_MODE_NAMES = {
    "zeros": "zeros", "constant": "zeros",
    "circular": "circular", "wrap": "circular",
    "reflect": "reflect",
    "replicate": "replicate", "edge": "replicate",
}

Pads = tuple[tuple[int, int], ...]


# ---------------------------------------------------------------------------
# Normalisation at the public boundary.
# ---------------------------------------------------------------------------


def canonical_mode(mode, name: str = "mode") -> str:
  """The mode's canonical name (one of ``PADDING_MODES``)."""
  key = mode.lower() if isinstance(mode, str) else None
  if key not in _MODE_NAMES:
    raise ValueError(
        f"`{name}` must be one of {tuple(sorted(_MODE_NAMES))}, got "
        f"{mode!r}.")
  return _MODE_NAMES[key]


def _is_sequence(value) -> bool:
  return (isinstance(value, (Sequence, np.ndarray))
          and not isinstance(value, str) and np.ndim(value) > 0)


def _axes(axes, ndim: int) -> tuple[int, ...]:
  """``axes`` as distinct non-negative axis numbers of an ``ndim`` array."""
  if axes is None:
    return tuple(range(ndim))
  values = ([_geometry.as_int(a, "axes") for a in axes] if _is_sequence(axes)
            else [_geometry.as_int(axes, "axes")])
  for a in values:
    if not -ndim <= a < ndim:
      raise ValueError(
          f"`axes` entries must lie in [-{ndim}, {ndim}) for an array of rank "
          f"{ndim}, got {tuple(values)}.")
  normal = tuple(a % ndim for a in values)
  if len(set(normal)) != len(normal):
    raise ValueError(f"`axes` must be distinct, got {tuple(values)}.")
  return normal


def _width_pairs(pad_width, count: int, name: str) -> Pads:
  """``pad_width`` as ``count`` ``(before, after)`` pairs, broadcast the way
  ``jnp.pad`` broadcasts it: an int, ``(pad,)``, ``(before, after)``,
  ``((before, after),)`` or one pair per padded axis."""
  if not _is_sequence(pad_width):
    value = _geometry.as_int(pad_width, name)
    return ((value, value),) * count
  entries = list(pad_width)
  nested = [_is_sequence(e) for e in entries]
  if all(nested):
    pairs = []
    for entry in entries:
      pair = tuple(_geometry.as_int(v, name) for v in entry)
      if len(pair) != 2:
        raise ValueError(
            f"`{name}` pairs must be (before, after), got {tuple(entry)!r}.")
      pairs.append(pair)
    if len(pairs) == 1:
      return tuple(pairs) * count
    if len(pairs) != count:
      raise ValueError(
          f"`{name}` must have one (before, after) pair per padded axis "
          f"({count}), got {len(pairs)}.")
    return tuple(pairs)
  if any(nested):
    raise TypeError(
        f"`{name}` must be an int, a (before, after) pair or a sequence of "
        f"pairs, got {pad_width!r}.")
  values = tuple(_geometry.as_int(v, name) for v in entries)
  if len(values) == 1:
    return ((values[0], values[0]),) * count
  if len(values) == 2:
    return (values,) * count
  raise ValueError(
      f"`{name}` must be an int, a (before, after) pair or one pair per "
      f"padded axis ({count}), got {len(values)} ints: {values!r}.")


def check_pads(sizes: Sequence[int], pads: Pads, mode: str, *,
               name: str = "pad_width", mode_name: str = "mode",
               labels: Sequence[str] | None = None) -> None:
  """Checks ``(before, after)`` pairs against the unpadded sizes.

  Args:
    sizes: the unpadded size of each padded axis.
    pads: one ``(before, after)`` pair per entry of ``sizes``.
    mode: a canonical mode.
    name: the padding argument's name, used in error messages.
    mode_name: the mode argument's name, used in error messages.
    labels: what to call each axis in error messages (default ``"axis i"``).

  Raises:
    ValueError: a negative amount; an empty axis padded by a mode that reads
      from it; a reflection at least as long as the axis (PyTorch's rule).
  """
  if labels is None:
    labels = [f"axis {i}" for i in range(len(sizes))]
  for label, size, (lo, hi) in zip(labels, sizes, pads):
    if lo < 0 or hi < 0:
      raise ValueError(
          f"`{name}` must be non-negative, got ({lo}, {hi}) for {label}.")
    if mode != "zeros" and (lo or hi) and size == 0:
      raise ValueError(
          f"`{mode_name}` {mode!r} reads the padding from the input, but "
          f"{label} is empty (size 0) and `{name}` asks for ({lo}, {hi}).")
    if mode == "reflect" and max(lo, hi) >= size:
      raise ValueError(
          f"`{name}` must be smaller than the input's size for `{mode_name}` "
          f"'reflect' (as in PyTorch; the reflection does not repeat the edge "
          f"element): {label} has size {size}, got ({lo}, {hi}).")


def _full_pads(shape, pad_width, mode, axes, *, unpadded: bool) -> tuple:
  """Per-axis pairs (``(0, 0)`` for axes not padded) and the mode, checked.

  ``shape`` is the unpadded input's shape, or with ``unpadded=False`` the
  padded one (``pad_grad``'s cotangent), from which the input's is derived.
  """
  mode = canonical_mode(mode)
  ndim = len(shape)
  axes = _axes(axes, ndim)
  pairs = _width_pairs(pad_width, len(axes), "pad_width")
  full = [(0, 0)] * ndim
  for axis, pair in zip(axes, pairs):
    full[axis] = pair
  sizes = list(shape)
  if not unpadded:
    for axis, (lo, hi) in zip(axes, pairs):
      sizes[axis] = shape[axis] - lo - hi
      if sizes[axis] < 0 and lo >= 0 and hi >= 0:
        raise ValueError(
            f"`pad_width` ({lo}, {hi}) exceeds the cotangent's size "
            f"{shape[axis]} along axis {axis}.")
  check_pads([sizes[a] for a in axes], pairs, mode,
             labels=[f"axis {a}" for a in axes])
  return tuple(full), mode


# ---------------------------------------------------------------------------
# The forward index map, eq. (25), one axis at a time.
# ---------------------------------------------------------------------------


def _slice(x, axis: int, start: int, stop: int):
  return lax.slice_in_dim(x, start, stop, axis=axis)


def _zeros_along(x, axis: int, lo: int, hi: int):
  """``x`` with ``lo`` zeros before and ``hi`` after along ``axis``."""
  config = [(0, 0, 0)] * x.ndim
  config[axis] = (lo, hi, 0)
  return lax.pad(x, jnp.zeros((), x.dtype), config)


def _wrap_extend(x, axis: int, lo: int, hi: int):
  """Circular: padded position ``p`` reads ``x[(p - lo) mod N]``. The
  periodic extension by whole periods, cut to ``lo + N + hi``."""
  n = x.shape[axis]
  before, after = -(-lo // n), -(-hi // n)
  periods = jnp.concatenate([x] * (before + 1 + after), axis=axis)
  start = before * n - lo
  return _slice(periods, axis, start, start + lo + n + hi)


def _reflect_extend(x, axis: int, lo: int, hi: int):
  """Reflect: ``x[(N - 1) - |(N - 1) - |u||]`` for ``u = p - lo``: ``x[-u]``
  before the input, ``x[2(N - 1) - u]`` after it; mirrored about the end
  elements, which are not repeated."""
  n = x.shape[axis]
  before = jnp.flip(_slice(x, axis, 1, lo + 1), axis=axis)
  after = jnp.flip(_slice(x, axis, n - 1 - hi, n - 1), axis=axis)
  return jnp.concatenate([before, x, after], axis=axis)


def _edge_extend(x, axis: int, lo: int, hi: int):
  """Replicate: ``x[min(max(u, 0), N - 1)]``, the end elements repeated."""
  n = x.shape[axis]
  before = jnp.repeat(_slice(x, axis, 0, 1), lo, axis=axis)
  after = jnp.repeat(_slice(x, axis, n - 1, n), hi, axis=axis)
  return jnp.concatenate([before, x, after], axis=axis)


_EXTEND = {"circular": _wrap_extend, "reflect": _reflect_extend,
           "replicate": _edge_extend}


def _pad_forward(x, pads: Pads, mode: str):
  """Eq. (25) on every axis: the padded array ``x^``."""
  if mode == "zeros":
    return lax.pad(x, jnp.zeros((), x.dtype),
                   [(lo, hi, 0) for lo, hi in pads])
  for axis, (lo, hi) in enumerate(pads):
    if lo or hi:
      x = _EXTEND[mode](x, axis, lo, hi)
  return x


# The rule. docs/derivation.md eqs. (25)-(26).
#
#   x^[p] = x[m(p - lo)]   (m(u) = u for 0 <= u < N; elsewhere by the mode)
#                                                                         (25)
#   dE/dx[j] = sum_{p : m(p - lo) = j} dE/dx^[p]                          (26)
#
# The padding is linear, so its gradient is its transpose: every padded
# position hands its cotangent to the one input position it was read from.
# The input's own positions (m(u) = u) give the cotangent's centre; what the
# mode adds is the padding's share: nothing for zeros, the padding wrapped
# around by whole periods for circular, folded back about the end elements
# for reflect, summed into the end elements for replicate. Axes are padded
# one after another and each step acts on one axis only, so the transpose of
# the whole is the per-axis transposes, in any order. Nothing is saved: the
# index map is static.
@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _pad(x, pads: Pads, mode: str):
  return _pad_forward(x, pads, mode)


def _pad_fwd(x, pads: Pads, mode: str):
  return _pad_forward(x, pads, mode), None


def _pad_bwd(pads: Pads, mode: str, residuals, cotangent):
  del residuals
  return (_pad_gradient(cotangent, pads, mode),)


_pad.defvjp(_pad_fwd, _pad_bwd)


# ---------------------------------------------------------------------------
# The gradient, eq. (26), one axis at a time.
# ---------------------------------------------------------------------------


def _centre(g, axis: int, lo: int, n: int):
  """The cotangent of the input's own positions, ``m(u) = u``."""
  return _slice(g, axis, lo, lo + n)


def _wrap_fold(g, axis: int, lo: int, hi: int, n: int):
  """Circular: ``dE/dx[j] = sum_t dE/dx^[lo + j + t N]``. Zeros complete the
  padded line to whole periods, aligned so that the input's own period is
  one of them; the periods are then summed."""
  before, after = -(-lo // n), -(-hi // n)
  periods = before + 1 + after
  g = _zeros_along(g, axis, before * n - lo, after * n - hi)
  shape = g.shape[:axis] + (periods, n) + g.shape[axis + 1:]
  return jnp.sum(g.reshape(shape), axis=axis)


def _reflect_fold(g, axis: int, lo: int, hi: int, n: int):
  """Reflect: the low padding (``u = -1, ..., -lo``) lands on ``j = 1, ...,
  lo``, the high padding (``u = N, ..., N - 1 + hi``) on ``j = N - 2, ...,
  N - 1 - hi``; the end elements themselves receive nothing extra."""
  low = jnp.flip(_slice(g, axis, 0, lo), axis=axis)
  high = jnp.flip(_slice(g, axis, lo + n, lo + n + hi), axis=axis)
  return (_centre(g, axis, lo, n) + _zeros_along(low, axis, 1, n - 1 - lo)
          + _zeros_along(high, axis, n - 1 - hi, 1))


def _edge_fold(g, axis: int, lo: int, hi: int, n: int):
  """Replicate: every low padding position adds to ``j = 0``, every high
  one to ``j = N - 1``."""
  low = jnp.sum(_slice(g, axis, 0, lo), axis=axis, keepdims=True)
  high = jnp.sum(_slice(g, axis, lo + n, lo + n + hi), axis=axis,
                 keepdims=True)
  return (_centre(g, axis, lo, n) + _zeros_along(low, axis, 0, n - 1)
          + _zeros_along(high, axis, n - 1, 0))


_FOLD = {"circular": _wrap_fold, "reflect": _reflect_fold,
         "replicate": _edge_fold}


def _pad_gradient_of(cotangent, pads: Pads, mode: str):
  """Eq. (26) on every axis: ``dE/dx`` from ``dE/dx^``."""
  if mode == "zeros":
    return lax.slice(cotangent, [lo for lo, _ in pads],
                     [size - hi for size, (_, hi) in zip(cotangent.shape,
                                                         pads)])
  g = cotangent
  for axis, (lo, hi) in enumerate(pads):
    if lo or hi:
      g = _FOLD[mode](g, axis, lo, hi, g.shape[axis] - lo - hi)
  return g


# The gradient is linear in the cotangent, and its transpose is the padding
# (25) again: the backward of eq. (26) is eq. (25), so the backward of the
# backward is this pair of rules once more, at any order.
@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _pad_gradient(cotangent, pads: Pads, mode: str):
  return _pad_gradient_of(cotangent, pads, mode)


def _pad_gradient_fwd(cotangent, pads: Pads, mode: str):
  return _pad_gradient_of(cotangent, pads, mode), None


def _pad_gradient_bwd(pads: Pads, mode: str, residuals, cotangent):
  del residuals
  return (_pad(cotangent, pads, mode),)


_pad_gradient.defvjp(_pad_gradient_fwd, _pad_gradient_bwd)


# ---------------------------------------------------------------------------
# Public API.
# ---------------------------------------------------------------------------


def pad(x: jax.Array, pad_width, mode: str = "constant", *,
        axes: int | Sequence[int] | None = None) -> jax.Array:
  r"""Pads an array, with a hand-derived gradient.

  The forward pass is ``jnp.pad``'s for its modes ``constant`` (zeros),
  ``wrap``, ``reflect`` and ``edge``; every padded position reads one input
  position through the index map of eq. (25),

  .. math::
    \hat x[p] = x[m(p - \mathit{lo})], \qquad
    m(u) = \begin{cases}
      u \bmod N & \text{circular} \\
      (N - 1) - |(N - 1) - |u|| & \text{reflect} \\
      \min(\max(u, 0), N - 1) & \text{replicate}
    \end{cases}

  (zeros read nothing), and the gradient is eq. (26): each input position
  receives the cotangent of every padded position that read it. Pad a
  channels-last input's spatial axes this way and run a ``"VALID"``
  convolution on the result to get any padding mode with any convolution.

  Args:
    x: the array, floating or complex.
    pad_width: as in ``jnp.pad``: an int, ``(before, after)``,
      ``((before, after),)``, or one ``(before, after)`` pair per padded
      axis. Non-negative.
    mode: ``"constant"`` or ``"zeros"`` (zeros), ``"wrap"`` or
      ``"circular"``, ``"reflect"``, ``"edge"`` or ``"replicate"``.
      ``"reflect"`` needs each amount smaller than its axis (as in PyTorch);
      ``"wrap"`` may go around several times (as in ``jnp.pad``).
    axes: the axes ``pad_width`` refers to: ``None`` for all of them (as in
      ``jnp.pad``), an int, or a sequence of ints.

  Returns:
    The padded array, in ``x``'s dtype.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jaxconv
    >>> jaxconv.pad(jnp.array([1.0, 2.0, 3.0]), (2, 1), "reflect")
    Array([3., 2., 1., 2., 3., 2.], dtype=float32)
  """
  x = _geometry.as_array(x, "x")
  _geometry.check_inexact(x, "x")
  pads, mode = _full_pads(x.shape, pad_width, mode, axes, unpadded=True)
  return _pad(x, pads, mode)


def pad_grad(cotangent: jax.Array, pad_width, mode: str = "constant", *,
             axes: int | Sequence[int] | None = None) -> jax.Array:
  r"""Gradient of ``pad`` with respect to its input, eq. (26).

  .. math::
    \frac{\partial E}{\partial x[j]} = \sum_{p:\ m(p - \mathit{lo}) = j}
    \frac{\partial E}{\partial \hat x[p]}

  Zeros crop the padding off; circular wraps its cotangent around and adds
  it in; reflect folds it back about the end elements; replicate adds it to
  the end elements. Differentiable to any order (its own gradient is
  ``pad``).

  Args:
    cotangent: ``dE/dx^``, shaped like ``pad``'s output.
    pad_width: the forward ``pad_width``.
    mode: the forward ``mode``.
    axes: the forward ``axes``.

  Returns:
    ``dE/dx``, shaped like the unpadded input, in the cotangent's dtype.
  """
  cotangent = _geometry.as_array(cotangent, "cotangent")
  _geometry.check_inexact(cotangent, "cotangent")
  pads, mode = _full_pads(cotangent.shape, pad_width, mode, axes,
                          unpadded=False)
  return _pad_gradient(cotangent, pads, mode)
