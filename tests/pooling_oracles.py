"""Independent oracles for the pooling tests.

Nothing here imports jaxconv's geometry: output sizes, padding and divisors are
re-derived from PyTorch's documented formulas so that a mistake in
``jaxconv._pool_windows`` cannot hide in the oracle too.

* ``lax_*``: ``lax.reduce_window`` forwards (differentiated by ``jax.vjp``, or
  by ``jax.jacfwd`` where lax has no reverse rule: max with window dilation).
* ``literal_*``: a slow, loop-by-loop NumPy transcription of the equations
  (forward and gradient), for small inputs; ``literal_adaptive_pool`` for
  adaptive pooling, with the window bounds taken from exact fractions.
* ``unique_values``: shuffled ``arange`` inputs (max/min have no ties).
* ``assert_close``: the scaled error and tolerances of ``tests/helpers.py``.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from tests import helpers


def assert_close(actual, expected, dtype="float64", what=""):
  """The shared scaled-error check of tests/helpers.py, float64 by default.

  Complex arrays are compared as their real and imaginary parts side by side,
  with the tolerance of the real dtype of that precision (complex64: that of
  float32).
  """
  dtype = np.dtype(dtype)
  if np.iscomplexobj(actual) or np.iscomplexobj(expected) or (
      dtype.kind == "c"):
    actual = np.asarray(actual).astype(np.complex128)
    expected = np.asarray(expected).astype(np.complex128)
    actual = np.stack([actual.real, actual.imag])
    expected = np.stack([expected.real, expected.imag])
    if dtype.kind == "c":
      dtype = np.dtype(np.float32 if dtype.itemsize == 8 else np.float64)
  helpers.assert_close(actual, expected, dtype, what)


def unique_values(shape, seed=0, dtype=np.float64, shift=0.0, scale=1.0):
  """A shuffled arange (distinct values), optionally shifted and scaled."""
  rng = np.random.default_rng(seed)
  size = math.prod(shape)
  values = rng.permutation(size).astype(np.float64) * scale + shift
  return values.reshape(shape).astype(dtype)


# ----------------------------------------------------------------------------
# Geometry, re-derived.
# ----------------------------------------------------------------------------


def resolve_padding(padding, in_sizes, window, strides, dilation):
  """(lo, hi) pairs for "SAME"/"VALID"/int/pairs, independent of jaxconv."""
  rank = len(in_sizes)
  if isinstance(padding, str):
    if padding == "VALID":
      return ((0, 0),) * rank
    pairs = []
    for n, k, s, d in zip(in_sizes, window, strides, dilation):
      extent = (k - 1) * d + 1
      out = -(-n // s)
      total = max((out - 1) * s + extent - n, 0)
      pairs.append((total // 2, total - total // 2))
    return tuple(pairs)
  if isinstance(padding, int):
    return ((padding, padding),) * rank
  return tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)


def output_size(n, lo, hi, k, s, d, ceil_mode):
  """Windows counted one by one.

  Floor mode: the windows lying inside the padded line. Ceil mode adds one
  partial window if the complete ones leave positions uncovered at the end
  and it starts before the right padding. This is PyTorch's rule wherever
  PyTorch accepts the padding (at most half the window).
  """
  extent = d * (k - 1) + 1
  padded = n + lo + hi
  count = 0
  while count * s + extent <= padded:
    count += 1
  uncovered = padded > (count - 1) * s + extent
  if ceil_mode and uncovered and count * s < n + lo:
    count += 1
  return count


def output_sizes(in_sizes, window, strides, dilation, pairs, ceil_mode):
  return tuple(
      output_size(n, lo, hi, k, s, d, ceil_mode)
      for n, (lo, hi), k, s, d in zip(in_sizes, pairs, window, strides,
                                      dilation))


# ----------------------------------------------------------------------------
# lax.reduce_window forwards.
# ----------------------------------------------------------------------------


def _reduce(x, init, op, window, strides, dilation, pairs, outs):
  """reduce_window over the spatial axes of (batch..., *spatial, C).

  The high padding is extended to cover the ceil-mode overhang (with `init`,
  which never wins / adds nothing) and the result cropped to `outs`.
  """
  rank = len(window)
  lead = x.ndim - rank - 1
  in_sizes = x.shape[lead:lead + rank]
  pads = []
  for n, (lo, hi), k, s, d, out in zip(in_sizes, pairs, window, strides,
                                       dilation, outs):
    need = (out - 1) * s + (k - 1) * d + 1 - n - lo
    pads.append((lo, max(hi, need, 0)))
  y = lax.reduce_window(x, init, op, (1,) * lead + tuple(window) + (1,),
                        (1,) * lead + tuple(strides) + (1,),
                        ((0, 0),) * lead + tuple(pads) + ((0, 0),),
                        window_dilation=(1,) * lead + tuple(dilation) + (1,))
  index = (slice(None),) * lead + tuple(slice(0, o) for o in outs)
  return y[index]


def lax_pool(x, kind, window, strides=None, padding="VALID", dilation=None,
             ceil_mode=False, count_include_pad=True, divisor_override=None,
             p=None):
  """The forward of `kind` in max/min/avg/lp via lax.reduce_window."""
  rank = len(window)
  strides = tuple(strides or (1,) * rank)
  dilation = tuple(dilation or (1,) * rank)
  lead = x.ndim - rank - 1
  in_sizes = x.shape[lead:lead + rank]
  pairs = resolve_padding(padding, in_sizes, window, strides, dilation)
  outs = output_sizes(in_sizes, window, strides, dilation, pairs, ceil_mode)
  reduce = lambda v, init, op: _reduce(v, init, op, window, strides, dilation,
                                       pairs, outs)
  if kind == "max":
    return reduce(x, -jnp.inf, lax.max)
  if kind == "min":
    return reduce(x, jnp.inf, lax.min)
  if kind == "lp":
    if math.isinf(p):
      # An empty window (padding only) has norm 0, not -inf.
      return jnp.maximum(reduce(jnp.abs(x), -jnp.inf, lax.max), 0.0)
    return reduce(jnp.abs(x) ** p, 0.0, lax.add) ** (1.0 / p)
  assert kind == "avg"
  total = reduce(x, 0.0, lax.add)
  if divisor_override is not None:
    return total / divisor_override
  # Count the taps: ones on the input and (if included) on the declared
  # padding; the ceil overhang, added by _reduce with init 0, never counts.
  ones = np.ones(in_sizes)
  if count_include_pad:
    ones = np.pad(ones, pairs, constant_values=1.0)
    shifted = [(0, 0)] * rank
    counts = _reduce(jnp.asarray(ones)[..., None], 0.0, lax.add, window,
                     strides, dilation, shifted, outs)[..., 0]
  else:
    counts = _reduce(jnp.asarray(ones)[..., None], 0.0, lax.add, window,
                     strides, dilation, pairs, outs)[..., 0]
  counts = jnp.where(counts > 0, counts, 1.0)
  return total / counts.astype(total.dtype)[..., None]


def lax_vjp(x, cotangent, kind, **kwargs):
  """(y, dx) from lax; jacfwd-contracted for max with window dilation."""
  f = lambda v: lax_pool(v, kind, **kwargs)
  dilation = kwargs.get("dilation")
  uses_max = kind in ("max", "min") or (kind == "lp" and math.isinf(
      kwargs["p"]))
  if uses_max and dilation and any(d > 1 for d in dilation):
    y = f(x)
    jacobian = jax.jacfwd(f)(x)
    axes = tuple(range(y.ndim))
    return y, jnp.tensordot(cotangent, jacobian, axes=(axes, axes))
  y, vjp = jax.vjp(f, x)
  return y, vjp(cotangent)[0]


# ----------------------------------------------------------------------------
# Literal transcription of the equations (loops; small inputs only).
# ----------------------------------------------------------------------------


def literal_pool(x, cotangent, kind, window, strides=None, padding="VALID",
                 dilation=None, ceil_mode=False, count_include_pad=True,
                 divisor_override=None, p=None):
  """Forward and input gradient, one window and one tap at a time.

  Max/min: first winner in row-major window order among real taps, NaN wins
  (first NaN). Avg: PyTorch's divisor. Lp: sum over real taps of |x|^p,
  gradient sign(x) (|x|/y)^(p-1), 0 at x = 0.

  Returns:
    (y, dx) as float64 NumPy arrays.
  """
  x = np.asarray(x, np.float64)
  cotangent = np.asarray(cotangent, np.float64)
  rank = len(window)
  strides = tuple(strides or (1,) * rank)
  dilation = tuple(dilation or (1,) * rank)
  lead = x.ndim - rank - 1
  batch_shape = x.shape[:lead]
  in_sizes = x.shape[lead:lead + rank]
  features = x.shape[-1]
  pairs = resolve_padding(padding, in_sizes, window, strides, dilation)
  outs = output_sizes(in_sizes, window, strides, dilation, pairs, ceil_mode)
  xb = x.reshape((-1,) + in_sizes + (features,))
  gb = cotangent.reshape((-1,) + outs + (features,))
  y = np.zeros(gb.shape)
  dx = np.zeros(xb.shape)
  offsets = list(itertools.product(*(range(k) for k in window)))
  for b in range(xb.shape[0]):
    for c in range(features):
      for o in itertools.product(*(range(n) for n in outs)):
        starts = [oi * s - lo for oi, s, (lo, _) in zip(o, strides, pairs)]
        taps = []  # real tap positions in row-major offset order
        counted = 0
        for k in offsets:
          t = tuple(st + ki * d for st, ki, d in zip(starts, k, dilation))
          # count_include_pad counts taps inside [-lo, n + hi): the declared
          # padding, not the ceil-mode overhang beyond it.
          counted += all(-lo <= ti < n + hi for ti, n, (lo, hi) in zip(
              t, in_sizes, pairs))
          if all(0 <= ti < n for ti, n in zip(t, in_sizes)):
            taps.append(t)
        values = [xb[(b,) + t + (c,)] for t in taps]
        g = gb[(b,) + o + (c,)]
        if kind in ("max", "min"):
          winner = None
          for i, v in enumerate(values):
            if np.isnan(v):
              winner = i
              break
          if winner is None:
            best = max(values) if kind == "max" else min(values)
            winner = values.index(best)  # the first occurrence
          y[(b,) + o + (c,)] = values[winner]
          dx[(b,) + taps[winner] + (c,)] += g
        elif kind == "avg":
          if divisor_override is not None:
            divisor = divisor_override
          elif count_include_pad:
            divisor = counted
          else:
            divisor = len(taps)
          divisor = divisor or 1
          y[(b,) + o + (c,)] = sum(values) / divisor
          for t in taps:
            dx[(b,) + t + (c,)] += g / divisor
        else:
          assert kind == "lp"
          if math.isinf(p):
            magnitudes = [abs(v) for v in values]
            if not magnitudes:
              continue
            winner = magnitudes.index(max(magnitudes))
            y[(b,) + o + (c,)] = magnitudes[winner]
            dx[(b,) + taps[winner] + (c,)] += g * np.sign(values[winner])
            continue
          norm = sum(abs(v) ** p for v in values) ** (1.0 / p)
          y[(b,) + o + (c,)] = norm
          for t, v in zip(taps, values):
            if v != 0:
              dx[(b,) + t + (c,)] += g * np.sign(v) * (abs(v) / norm) ** (p - 1)
  return (y.reshape(batch_shape + outs + (features,)),
          dx.reshape(x.shape))


# ----------------------------------------------------------------------------
# Running jaxconv on a test case, and the standard comparison.
# ----------------------------------------------------------------------------


def jaxconv_pool(x, kind, window, strides=None, padding="VALID", dilation=None,
                 ceil_mode=False, count_include_pad=True, divisor_override=None,
                 p=None):
  """Calls the public jaxconv pooling function named by `kind`."""
  import jaxconv  # Imported here so that the oracles above stand alone.
  common = dict(strides=strides, padding=padding, ceil_mode=ceil_mode)
  if kind == "max":
    return jaxconv.max_pool(x, window, dilation=dilation or 1, **common)
  if kind == "min":
    return jaxconv.min_pool(x, window, dilation=dilation or 1, **common)
  if kind == "avg":
    return jaxconv.avg_pool(x, window, count_include_pad=count_include_pad,
                            divisor_override=divisor_override,
                            dilation=dilation or 1, **common)
  assert kind == "lp"
  return jaxconv.lp_pool(x, p, window, dilation=dilation or 1, **common)


def jaxconv_vjp(x, cotangent, pool=None, **kwargs):
  """(y, dx) of the public jaxconv function, jitted (one compilation).

  ``pool`` is the function under test, with :func:`jaxconv_pool`'s
  signature; ``None`` means :func:`jaxconv_pool`.
  """
  pool = pool or jaxconv_pool

  def run(v, g):
    y, vjp = jax.vjp(lambda u: pool(u, **kwargs), v)
    return y, vjp(g)[0]

  return jax.jit(run)(x, cotangent)


def case_inputs(case, dtype="float64", seed=0):
  """Unique-valued input and cotangent for a case (exact in every dtype).

  Lp inputs are shifted by a quarter so that no |x| ties and no zeros occur
  (autodiff of |x|**p at 0 follows other conventions).
  """
  shape = case["shape"]
  size = math.prod(shape)
  if case["kind"] == "lp":
    x = unique_values(shape, seed, shift=0.25 - size // 2)
  else:
    x = unique_values(shape, seed, shift=-(size // 2))
  y_shape = jax.eval_shape(lambda v: lax_pool(v, **_kwargs(case)),
                           jax.ShapeDtypeStruct(shape, jnp.float64)).shape
  cotangent = unique_values(y_shape, seed + 1, shift=-(math.prod(y_shape) // 2))
  if np.dtype(dtype).itemsize < 4:  # keep the values exact in 16 bits
    x = x / max(1.0, size / 64)
    cotangent = cotangent / max(1.0, math.prod(y_shape) / 64)
  return (jnp.asarray(x, dtype), jnp.asarray(cotangent, dtype))


def _kwargs(case):
  return {k: v for k, v in case.items() if k != "shape"}


def check_case(case, dtype="float64", literal=False, seed=0, pool=None):
  """jaxconv's forward and VJP against lax (and the literal loops) in float64.

  ``pool`` is the function under test, with :func:`jaxconv_pool`'s
  signature; ``None`` means :func:`jaxconv_pool` (the public functions).
  Raises AssertionError with the relative errors (``"...: scaled error
  ..."``) when they exceed the dtype's tolerance. Returns the (y, dx) of the
  function under test.
  """
  x, cotangent = case_inputs(case, dtype, seed)
  kwargs = _kwargs(case)
  y, dx = jaxconv_vjp(x, cotangent, pool, **kwargs)
  assert y.dtype == x.dtype and dx.dtype == x.dtype, (y.dtype, dx.dtype)
  x64 = jnp.asarray(x, jnp.float64)
  ct64 = jnp.asarray(cotangent, jnp.float64)
  y_ref, dx_ref = jax.jit(lambda v, g: lax_vjp(v, g, **kwargs))(x64, ct64)
  assert_close(y, y_ref, dtype, f"forward vs lax {case}")
  assert_close(dx, dx_ref, dtype, f"gradient vs lax {case}")
  if literal:
    y_lit, dx_lit = literal_pool(x64, ct64, **kwargs)
    assert_close(y, y_lit, dtype, f"forward vs literal {case}")
    assert_close(dx, dx_lit, dtype, f"gradient vs literal {case}")
  return y, dx


# ----------------------------------------------------------------------------
# Adaptive pooling, literally (loops; small inputs only).
# ----------------------------------------------------------------------------


def adaptive_window(i, n, m):
  """PyTorch's window i of m over n inputs: [floor(i n/m), ceil((i+1) n/m)).

  Written with math.floor/math.ceil of exact fractions, independently of
  jaxconv's integer arithmetic.
  """
  return (math.floor(Fraction(i * n, m)), math.ceil(Fraction((i + 1) * n, m)))


def literal_adaptive_pool(x, cotangent, kind, output_size):
  """Forward and input gradient of adaptive avg/max pooling, one box at a time.

  Max: first winner in row-major order, NaN wins (its first occurrence),
  like `literal_pool`. Avg: sum over the box divided by its size. Complex
  inputs are kept complex (average only), and the gradient is not
  conjugated. Output entries `None` keep the input size.

  Returns:
    (y, dx, indices) as NumPy arrays; `indices` (max only, else None) holds
    the flat row-major spatial index of each winner.
  """
  dtype = np.complex128 if np.iscomplexobj(x) else np.float64
  x = np.asarray(x, dtype)
  cotangent = np.asarray(cotangent, dtype)
  rank = len(output_size)
  lead = x.ndim - rank - 1
  batch_shape = x.shape[:lead]
  in_sizes = x.shape[lead:lead + rank]
  outs = tuple(n if m is None else m for m, n in zip(output_size, in_sizes))
  features = x.shape[-1]
  batch = math.prod(batch_shape)
  xb = x.reshape((batch,) + in_sizes + (features,))
  gb = cotangent.reshape((batch,) + outs + (features,))
  y = np.zeros(gb.shape, dtype)
  dx = np.zeros(xb.shape, dtype)
  indices = np.zeros(gb.shape, np.int64)
  for b in range(xb.shape[0]):
    for c in range(features):
      for o in itertools.product(*(range(m) for m in outs)):
        bounds = [adaptive_window(i, n, m) for i, n, m in zip(o, in_sizes,
                                                              outs)]
        taps = list(itertools.product(*(range(lo, hi) for lo, hi in bounds)))
        values = [xb[(b,) + t + (c,)] for t in taps]
        g = gb[(b,) + o + (c,)]
        if kind == "avg":
          y[(b,) + o + (c,)] = sum(values) / len(values)
          for t in taps:
            dx[(b,) + t + (c,)] += g / len(values)
          continue
        assert kind == "max"
        winner = next((i for i, v in enumerate(values) if np.isnan(v)), None)
        if winner is None:
          winner = values.index(max(values))  # the first occurrence
        y[(b,) + o + (c,)] = values[winner]
        dx[(b,) + taps[winner] + (c,)] += g
        indices[(b,) + o + (c,)] = np.ravel_multi_index(taps[winner],
                                                        in_sizes)
  return (y.reshape(batch_shape + outs + (features,)), dx.reshape(x.shape),
          indices.reshape(batch_shape + outs + (features,))
          if kind == "max" else None)


def adaptive_case_inputs(shape, output_size, dtype="float64", seed=0):
  """Unique-valued input and cotangent for adaptive pooling (exact in every
  dtype), like `case_inputs`."""
  rank = len(output_size)
  lead = len(shape) - rank - 1
  in_sizes = shape[lead:-1]
  out_shape = (shape[:lead] + tuple(n if m is None else m for m, n in zip(
      output_size, in_sizes)) + shape[-1:])
  size, out_size = math.prod(shape), math.prod(out_shape)
  x = unique_values(shape, seed, shift=-(size // 2))
  cotangent = unique_values(out_shape, seed + 1, shift=-(out_size // 2))
  if np.dtype(dtype).itemsize < 4:  # keep the values exact in 16 bits
    x = x / max(1.0, size / 64)
    cotangent = cotangent / max(1.0, out_size / 64)
  return jnp.asarray(x, dtype), jnp.asarray(cotangent, dtype)


def check_adaptive_case(kind, shape, output_size, dtype="float64", seed=0,
                        pool=None):
  """jaxconv's adaptive pooling (forward, VJP, indices) against the loops.

  ``pool`` is the function of ``(x, output_size)`` under test; ``None``
  means ``jaxconv.adaptive_avg_pool`` or ``adaptive_max_pool``. Raises
  AssertionError with the scaled errors (``"...: scaled error ..."``) when
  they exceed the dtype's tolerance. Returns the (y, dx) of the function
  under test.
  """
  import jaxconv  # Imported here so that the oracles above stand alone.
  pool = pool or {"avg": jaxconv.adaptive_avg_pool,
                  "max": jaxconv.adaptive_max_pool}[kind]
  x, cotangent = adaptive_case_inputs(shape, output_size, dtype, seed)

  def run(v, g):
    y, vjp = jax.vjp(lambda u: pool(u, output_size), v)
    return y, vjp(g)[0]

  y, dx = jax.jit(run)(x, cotangent)
  assert y.dtype == x.dtype and dx.dtype == x.dtype, (y.dtype, dx.dtype)
  y_ref, dx_ref, indices_ref = literal_adaptive_pool(
      np.asarray(x, np.float64), np.asarray(cotangent, np.float64), kind,
      output_size)
  case = f"{kind} {shape} -> {output_size}"
  assert_close(y, y_ref, dtype, f"forward vs literal {case}")
  assert_close(dx, dx_ref, dtype, f"gradient vs literal {case}")
  if kind == "max":
    _, indices = jax.jit(lambda v: jaxconv.adaptive_max_pool_with_indices(
        v, output_size))(x)
    np.testing.assert_array_equal(indices, indices_ref)
  return y, dx
