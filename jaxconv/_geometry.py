"""Argument normalisation shared by every public function.

Each public function turns its "int or sequence" arguments into plain tuples of
Python ints here, once, and validates them in Python. Everything downstream
trusts the result. Because the checks run on static Python values, the errors
fire eagerly, under ``jax.jit`` and under ``jax.eval_shape`` alike.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Pads = tuple[tuple[int, int], ...]

PADDING_STRINGS = ("SAME", "SAME_LOWER", "VALID")


def spatial_sizes(shape: Sequence[int], spec: Sequence[int]) -> tuple[int, ...]:
  """The sizes of the spatial axes ``spec[2:]`` of ``shape``, in order (a
  ``lax`` dimension-number spec lists batch or output features, features,
  then the spatial axes)."""
  return tuple(int(shape[axis]) for axis in spec[2:])


def _describe(value) -> str:
  return f"{value!r} (type {type(value).__name__})"


def check_static(value, name: str) -> None:
  """Raises TypeError if ``value`` is traced: a shape needs a Python value."""
  if isinstance(value, jax.core.Tracer):
    raise TypeError(
        f"`{name}` must be a static Python int, got a traced value of type "
        f"{value.aval.str_short()}: it sets the output's shape, so it must be "
        f"known while tracing. Pass a Python int, or mark the argument static "
        f"(e.g. `jax.jit(f, static_argnums=...)`).")


def concrete(value, name: str):
  """``value`` with a concrete JAX array turned into a NumPy array, so that
  it reads like any other sequence; a traced one is refused."""
  check_static(value, name)
  if isinstance(value, jax.Array):
    return np.asarray(value)
  return value


def as_int(value, name: str) -> int:
  """Returns ``value`` as a Python int, refusing bools, floats and arrays.

  A traced value (an argument of a ``jax.jit`` function, say) has no value
  while the function is traced, so it cannot set a shape: it is refused with
  a message saying so.
  """
  check_static(value, name)
  if isinstance(value, (bool, np.bool_)):
    raise TypeError(f"`{name}` must hold integers, got the bool {value!r}.")
  try:
    return operator.index(value)
  except TypeError:
    raise TypeError(
        f"`{name}` must hold integers, got {_describe(value)}.") from None


def int_tuple(value, n: int, name: str, *, minimum: int | None = 1,
              default: int | None = None) -> tuple[int, ...]:
  """Normalises an int-or-sequence argument to a tuple of ``n`` ints.

  Args:
    value: an int (used for every dimension), a sequence of ``n`` ints, or
      ``None`` (then ``default`` is used for every dimension).
    n: the number of spatial dimensions.
    name: the argument's name, used in error messages.
    minimum: smallest allowed entry, or ``None`` for no bound.
    default: the value used when ``value`` is ``None``.

  Returns:
    A tuple of ``n`` Python ints.

  Raises:
    TypeError: an entry is not an integer.
    ValueError: the length is not ``n`` or an entry is below ``minimum``.
  """
  if value is None:
    if default is None:
      raise TypeError(f"`{name}` is required, got None.")
    value = default
  value = concrete(value, name)
  if isinstance(value, str):
    raise TypeError(f"`{name}` must be an int or a sequence of {n} ints, got "
                    f"the string {value!r}.")
  if isinstance(value, (Sequence, np.ndarray)):
    values = tuple(as_int(v, name) for v in value)
    if len(values) != n:
      raise ValueError(
          f"`{name}` must have one entry per spatial dimension ({n}), got "
          f"{len(values)} entries: {tuple(value)!r}.")
  else:
    values = (as_int(value, name),) * n
  if minimum is not None and any(v < minimum for v in values):
    bound = "positive" if minimum == 1 else f">= {minimum}"
    raise ValueError(f"`{name}` entries must be {bound}, got {values!r}.")
  return values


def same_padding(in_sizes: Sequence[int], window_sizes: Sequence[int],
                 strides: Sequence[int], lower: bool = False) -> Pads:
  """The ``"SAME"`` padding: output size ``ceil(in / stride)`` per dimension.

  The total padding of a dimension is ``max((out - 1) * stride + window - in,
  0)``; ``"SAME"`` puts the odd element at the end, ``"SAME_LOWER"`` at the
  start. ``window_sizes`` are the effective (dilated) window extents.
  """
  pads = []
  for size, window, stride in zip(in_sizes, window_sizes, strides):
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    small, large = total // 2, total - total // 2
    pads.append((large, small) if lower else (small, large))
  return tuple(pads)


def padding_pairs(padding, in_sizes: Sequence[int], window_sizes: Sequence[int],
                  strides: Sequence[int], *, name: str = "padding",
                  allow_negative: bool = True,
                  strings: Sequence[str] = PADDING_STRINGS) -> Pads:
  """Normalises a padding argument to explicit ``(lo, hi)`` pairs.

  Args:
    padding: one of ``strings``; an int (the same on both sides of every
      dimension); a sequence of ints (symmetric, one per dimension); or a
      sequence of ``(lo, hi)`` pairs, one per dimension.
    in_sizes: the spatial sizes the padding applies to (after any input
      dilation).
    window_sizes: the effective (dilated) window extents, for ``"SAME"``.
    strides: the window strides, for ``"SAME"``.
    name: the argument's name, used in error messages.
    allow_negative: whether negative entries (cropping) are accepted.
    strings: the padding strings accepted.

  Returns:
    A tuple of ``(lo, hi)`` int pairs, one per spatial dimension.
  """
  n = len(in_sizes)
  padding = concrete(padding, name)
  if isinstance(padding, str):
    key = padding.upper()
    if key not in strings:
      raise ValueError(f"`{name}` string must be one of {tuple(strings)}, got "
                       f"{padding!r}.")
    if key == "VALID":
      return ((0, 0),) * n
    return same_padding(in_sizes, window_sizes, strides,
                        lower=key == "SAME_LOWER")
  if isinstance(padding, (Sequence, np.ndarray)) and not isinstance(
      padding, str):
    entries = list(padding)
    if len(entries) != n:
      raise ValueError(
          f"`{name}` must have one entry per spatial dimension ({n}), got "
          f"{len(entries)}: {padding!r}.")
    pairs = []
    for entry in entries:
      if isinstance(entry, (Sequence, np.ndarray)) and not isinstance(
          entry, str):
        if len(entry) != 2:
          raise ValueError(f"`{name}` pairs must be (lo, hi), got {entry!r} in "
                           f"{padding!r}.")
        pairs.append((as_int(entry[0], name), as_int(entry[1], name)))
      else:
        value = as_int(entry, name)
        pairs.append((value, value))
    pads = tuple(pairs)
  else:
    value = as_int(padding, name)
    pads = ((value, value),) * n
  if not allow_negative and any(lo < 0 or hi < 0 for lo, hi in pads):
    raise ValueError(f"`{name}` must be non-negative, got {pads!r}.")
  return pads


def dilated_size(size: int, dilation: int) -> int:
  """Extent of ``size`` elements with ``dilation - 1`` holes between them."""
  return 0 if size == 0 else (size - 1) * dilation + 1


def window_count(padded_size: int, window: int, stride: int) -> int:
  """Number of windows of extent ``window`` at stride ``stride``: eq. (4)."""
  if padded_size < window:
    return 0
  return (padded_size - window) // stride + 1


def pool_window_count(size: int, pad_lo: int, pad_hi: int, window: int,
                      stride: int, ceil_mode: bool = False) -> int:
  """Number of pooling windows along one dimension, eqs. (30) and (31).

  Floor mode counts the windows that fit in the padded line: eq. (4) on
  ``pad_lo + size + pad_hi``. ``ceil_mode`` adds one last, partial window when
  the division leaves a remainder, provided that window starts before the
  right padding (at padded position ``< pad_lo + size``); it may hang over
  the end of the padding.

  Wherever PyTorch accepts the padding (at most half the window) this is
  PyTorch's ``pooling_output_shape_pad_lr``. Beyond that bound PyTorch's
  formula can also drop a window that floor mode keeps; this one never
  returns fewer windows in ceil mode than in floor mode.

  Args:
    size: the unpadded input size.
    pad_lo: padding before the input.
    pad_hi: padding after the input.
    window: the effective (dilated) window extent.
    stride: the window stride.
    ceil_mode: also count the partial window described above.

  Returns:
    The number of windows; ``<= 0`` means no window fits.
  """
  span = size + pad_lo + pad_hi - window
  count = span // stride + 1
  if ceil_mode and span % stride and count * stride < size + pad_lo:
    count += 1
  return count


def _dtype_of(x, name: str) -> np.dtype:
  dtype = getattr(x, "dtype", None)
  if dtype is None:
    raise TypeError(f"`{name}` must be a JAX or NumPy array, got "
                    f"{type(x).__name__}.")
  return np.dtype(dtype)


def check_floating(x, name: str) -> np.dtype:
  """Raises TypeError unless ``x`` is a real floating-point array."""
  dtype = _dtype_of(x, name)
  # jnp.issubdtype, not np.issubdtype: NumPy does not count the ml_dtypes
  # extension type bfloat16 as floating.
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(
        f"`{name}` must have a real floating-point dtype (float16, bfloat16, "
        f"float32, float64), got {dtype}.")
  return dtype


def as_array(x, name: str) -> jax.Array:
  """``x`` as a JAX array with the dtype lax would give it.

  NumPy arrays are converted the way lax converts its operands, before any
  dtype check: with 64-bit types disabled (JAX's default) a float64 array
  becomes float32 and a complex128 one complex64. JAX arrays and tracers
  pass unchanged, weak types included.

  Args:
    x: a JAX or NumPy array (or NumPy scalar).
    name: the argument's name, used in error messages.

  Returns:
    A JAX array (or the tracer itself).

  Raises:
    TypeError: ``x`` is not an array (a list or a Python scalar, say).
  """
  if isinstance(x, (jax.Array, jax.core.Tracer)):
    return x
  if not isinstance(x, (np.ndarray, np.generic)):
    raise TypeError(f"`{name}` must be a JAX or NumPy array, got "
                    f"{type(x).__name__}.")
  return jnp.asarray(x)


def check_inexact(x, name: str) -> np.dtype:
  """Raises TypeError unless ``x`` is a floating-point or complex array."""
  dtype = _dtype_of(x, name)
  if not jnp.issubdtype(dtype, jnp.inexact):
    raise TypeError(
        f"`{name}` must have a floating-point or complex dtype (float16, "
        f"bfloat16, float32, float64, complex64, complex128), got {dtype}.")
  return dtype


def check_same_dtype(a, b, a_name: str = "lhs", b_name: str = "rhs", *,
                     complex_ok: bool = False):
  """Raises TypeError unless ``a`` and ``b`` have one dtype, floating (or,
  with ``complex_ok``, complex).

  Returns:
    The common dtype.
  """
  check = check_inexact if complex_ok else check_floating
  a_dtype, b_dtype = check(a, a_name), check(b, b_name)
  if a_dtype != b_dtype:
    raise TypeError(
        f"`{a_name}` and `{b_name}` must have the same dtype, got {a_dtype} "
        f"and {b_dtype}; cast one of them explicitly.")
  return a_dtype
