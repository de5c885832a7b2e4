r"""Write a small convolution and its gradients out in symbols, and check them.

Answers "is my hand derivation right?" for any small case::

    python -m jaxconv.explain --input 3x3 --kernel 2x2
    python -m jaxconv.explain --input 4x4 --kernel 2x2 --stride 2 --padding 1 \
        --grad W1 --grad V6
    python -m jaxconv.explain --input 4x4 --kernel 3x3 --padding SAME \
        --pool max 2x2

For one example with one channel it names the inputs ``V1, V2, ...``, the
kernel weights ``W1, W2, ...`` and the outputs ``G1, G2, ...`` (row by row,
from 1), prints every output as a sum of products,

    G1 = V1·W1 + V2·W2 + V4·W3 + V5·W4

and the chain rule written out for the gradients asked for (by default every
weight and the input that the most windows read),

    ∂E/∂W1 = ∂E/∂G1·V1 + ∂E/∂G2·V2 + ∂E/∂G3·V4 + ∂E/∂G4·V5

where ``E`` is the loss. With ``--pool max|avg KxK`` a pooling stage follows
the convolution; its outputs are ``P1, P2, ...``, and the gradients are then
written in terms of ``∂E/∂P``: average pooling spreads each ``∂E/∂P`` evenly
over its window, max pooling routes it to the window's largest ``G`` (for
which, the printout says for the random numbers of the check).

Nothing is derived a second time here. Which input each weight multiplies for
each output is read off the tied-weight matrix of
``jaxconv.reference.conv_matrix`` (eq. 20 of ``docs/derivation.md``), built
with the geometry that ``jaxconv.make_conv_geometry`` normalises; which
outputs each pooling window covers, and the divisor of an average, come from
``jaxconv.avg_pool_grad``. Before anything is printed, the sums are evaluated
on random numbers and compared with ``jaxconv.conv_general_dilated`` (and
``jaxconv.max_pool``/``avg_pool``) and their ``jax.vjp``; the printout ends
with the largest difference.
"""

from __future__ import annotations

import argparse
import dataclasses
import fractions
import math
import re
import sys
import textwrap
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv import convolution, pooling, reference

__all__ = [
    "Explanation",
    "explain",
    "forward_equations",
    "gradient_equations",
    "main",
]

# Largest case explained: the tied-weight matrix has (outputs x inputs)
# entries per weight, and nobody reads a thousand equations.
MAX_INPUTS = 1024
MAX_WEIGHTS = 64

# Agreement required of the check, relative to the size of the numbers
# (everything is computed in float64).
_CHECK_TOLERANCE = 1e-9

_UNICODE = {"d": "∂", "times": "·"}
_ASCII = {"d": "d", "times": "*"}


# ---------------------------------------------------------------------------
# A linear combination of products, printed and evaluated from the same terms.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Term:
  """``coefficient * upstream[u] * factor[f]``: one product of a chain rule."""

  upstream: int
  factor: int
  coefficient: fractions.Fraction = fractions.Fraction(1)


def _name(prefix: str, index: int) -> str:
  return f"{prefix}{index + 1}"


def _format_sum(terms: Sequence[_Term], upstream: str, factor: str,
                symbols: dict[str, str]) -> str:
  """``∂E/∂G1·V1 + ...``; terms with the same upstream and coefficient are
  grouped: ``∂E/∂P1·(V1 + V2 + V4 + V5)/4``."""
  if not terms:
    return "0"
  groups: list[tuple[int, fractions.Fraction, list[int]]] = []
  for term in terms:
    if groups and groups[-1][:2] == (term.upstream, term.coefficient):
      groups[-1][2].append(term.factor)
    else:
      groups.append((term.upstream, term.coefficient, [term.factor]))
  parts = []
  for u, coefficient, factors in groups:
    names = [_name(factor, f) for f in factors]
    product = names[0] if len(names) == 1 else "(" + " + ".join(names) + ")"
    d, times = symbols["d"], symbols["times"]
    text = f"{d}E/{d}{_name(upstream, u)}{times}{product}"
    if coefficient != 1:
      if coefficient.numerator == 1:
        text += f"/{coefficient.denominator}"
      else:
        text += f"{symbols['times']}{coefficient}"
    parts.append(text)
  return " + ".join(parts)


def _evaluate(terms: Sequence[_Term], upstream, factor) -> float:
  return float(sum(float(t.coefficient) * upstream[t.upstream]
                   * factor[t.factor] for t in terms))


# ---------------------------------------------------------------------------
# The wiring of the convolution and of the pooling, read off the library.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _ConvWiring:
  """Which input each weight multiplies for each output.

  ``taps[g]`` lists ``(q, v)``: output ``g`` contains ``V[v] * W[q]``, in the
  order of the weights ``q`` (taps on padding are absent: they multiply 0).
  """

  input_shape: tuple[int, ...]
  kernel_shape: tuple[int, ...]
  output_shape: tuple[int, ...]
  geometry: convolution.ConvGeometry
  taps: tuple[tuple[tuple[int, int], ...], ...]


def _conv_wiring(input_shape, kernel_shape, stride, padding,
                 dilation) -> _ConvWiring:
  input_shape = tuple(input_shape)
  kernel_shape = tuple(kernel_shape)
  if len(input_shape) != len(kernel_shape) or not input_shape:
    raise ValueError(
        f"`input` and `kernel` must have the same number (>= 1) of spatial "
        f"dimensions, got input {input_shape} and kernel {kernel_shape}.")
  if (math.prod(input_shape) > MAX_INPUTS
      or math.prod(kernel_shape) > MAX_WEIGHTS):
    raise ValueError(
        f"explain writes out every product; it takes at most {MAX_INPUTS} "
        f"inputs and {MAX_WEIGHTS} weights, got input {input_shape} and "
        f"kernel {kernel_shape}.")
  geometry = convolution.make_conv_geometry(
      (1, 1) + input_shape, (1, 1) + kernel_shape, stride,
      _padding_pairs(padding, len(input_shape)), None, dilation)
  output_shape = convolution.conv_output_shape(
      geometry, (1, 1) + input_shape, (1, 1) + kernel_shape)[2:]
  outputs = math.prod(output_shape)
  weights = math.prod(kernel_shape)
  taps: list[list[tuple[int, int]]] = [[] for _ in range(outputs)]
  for q in range(weights):
    # The tied-weight matrix (eq. 20) of a kernel that is 1 at weight q and 0
    # elsewhere: entry (g, v) is 1 exactly where W_q multiplies V_v in G_g.
    one_hot = np.zeros(weights)
    one_hot[q] = 1.0
    matrix = reference.conv_matrix(
        one_hot.reshape((1, 1) + kernel_shape), input_shape,
        strides=geometry.window_strides, padding=geometry.padding,
        rhs_dilation=geometry.rhs_dilation)
    if matrix.shape != (outputs, math.prod(input_shape)):
      raise RuntimeError(
          f"jaxconv.reference.conv_matrix gives {matrix.shape[0]} outputs, "
          f"jaxconv.conv_output_shape {outputs}: the two disagree.")
    for g, v in zip(*np.nonzero(matrix)):
      taps[int(g)].append((q, int(v)))
  return _ConvWiring(input_shape, kernel_shape, tuple(output_shape), geometry,
                     tuple(tuple(t) for t in taps))


def _padding_pairs(padding, n: int):
  """A padding string as it is; an int, one int per dimension or one pair per
  dimension (or a single entry for all) as ``(lo, hi)`` pairs."""
  if isinstance(padding, str):
    return padding
  if isinstance(padding, (int, np.integer)):
    return ((int(padding), int(padding)),) * n
  entries = list(padding)
  if len(entries) == 1 and n > 1:
    entries = entries * n
  return tuple((int(e), int(e)) if isinstance(e, (int, np.integer))
               else tuple(e) for e in entries)


@dataclasses.dataclass(frozen=True)
class _PoolWiring:
  """``members[p]`` lists ``(g, 1 / D_p)`` for the outputs ``G_g`` that window
  ``p`` covers, in window order; ``D_p`` is the divisor of an average."""

  kind: str
  window: tuple[int, ...]
  strides: tuple[int, ...]
  padding: object
  output_shape: tuple[int, ...]
  members: tuple[tuple[tuple[int, fractions.Fraction], ...], ...]


def _pool_wiring(kind, conv_shape, window, strides, padding) -> _PoolWiring:
  if kind not in ("max", "avg"):
    raise ValueError(f"`pool` kind must be 'max' or 'avg', got {kind!r}.")
  window = tuple(window)
  strides = window if strides is None else strides
  padding = _padding_pairs(padding, len(window))
  features = conv_shape + (1,)
  pool = pooling.max_pool if kind == "max" else pooling.avg_pool
  # Validates the geometry the way the library does, and gives the shape.
  pooled = jax.eval_shape(lambda x: pool(x, window, strides, padding),
                          jax.ShapeDtypeStruct(features, jnp.float32))
  output_shape = tuple(pooled.shape[:-1])
  members = []
  for p in range(math.prod(output_shape)):
    # The average-pool gradient of a cotangent that is 1 at P_p: 1 / D_p on
    # every real position of window p, 0 elsewhere.
    cotangent = np.zeros(math.prod(output_shape))
    cotangent[p] = 1.0
    spread = pooling.avg_pool_grad(
        jax.ShapeDtypeStruct(features, jnp.float32),
        jnp.asarray(cotangent.reshape(pooled.shape), jnp.float32), window,
        strides, padding, count_include_pad=True)
    spread = np.asarray(spread, dtype=np.float64).ravel()
    members.append(tuple(
        (int(g), fractions.Fraction(float(spread[g])).limit_denominator(10**6))
        for g in np.flatnonzero(spread)))
  if isinstance(strides, int):
    strides = (strides,) * len(window)
  return _PoolWiring(kind, window, tuple(strides), padding, output_shape,
                     tuple(members))


# ---------------------------------------------------------------------------
# The equations.
# ---------------------------------------------------------------------------


def _conv_gradient_terms(wiring: _ConvWiring, variable: str,
                         index: int) -> list[_Term]:
  """Eq. (9) for ``W``, eq. (12) for ``V``: upstream ``∂E/∂G``."""
  terms = []
  for g, taps in enumerate(wiring.taps):
    for q, v in taps:
      if variable == "W" and q == index:
        terms.append(_Term(g, v))
      elif variable == "V" and v == index:
        terms.append(_Term(g, q))
  return terms


def _pool_routing(pool: _PoolWiring,
                  conv_values) -> list[list[tuple[int, fractions.Fraction]]]:
  """For each window ``p``: the ``(g, coefficient)`` with ``∂E/∂G_g`` gets
  ``coefficient * ∂E/∂P_p``. Average: every member, ``1/D_p``. Max: the first
  largest member, 1."""
  routing = []
  for members in pool.members:
    if pool.kind == "avg":
      routing.append(list(members))
    else:
      winner = max(members, key=lambda m: (conv_values[m[0]], -m[0]))[0]
      routing.append([(winner, fractions.Fraction(1))])
  return routing


def _chained_terms(conv_terms: Sequence[_Term], routing) -> list[_Term]:
  """Substitutes ``∂E/∂G_g = sum_p c_{p,g} ∂E/∂P_p`` into terms over
  ``∂E/∂G``."""
  by_output: dict[int, list[_Term]] = {}
  for term in conv_terms:
    by_output.setdefault(term.upstream, []).append(term)
  terms = []
  for p, window in enumerate(routing):
    for g, coefficient in window:
      for term in by_output.get(g, ()):
        terms.append(_Term(p, term.factor, coefficient))
  return terms


def forward_equations(input_shape: Sequence[int], kernel_shape: Sequence[int],
                      stride=1, padding="VALID", dilation=1, *,
                      ascii: bool = False) -> list[str]:
  """The forward equations of every output, ``G1 = V1·W1 + V2·W2 + ...``.

  Args:
    input_shape: the spatial shape of the input (one example, one channel).
    kernel_shape: the spatial shape of the kernel.
    stride: an int or one per spatial dimension.
    padding: ``"VALID"``, ``"SAME"``, ``"SAME_LOWER"`` or ``(lo, hi)`` pairs.
    dilation: kernel dilation, an int or one per spatial dimension.
    ascii: write ``*`` for the product sign.

  Returns:
    One string per output, in row-major order. Taps that fall on padding
    multiply a zero and are left out; an output made of padding only is
    ``G = 0``.
  """
  symbols = _ASCII if ascii else _UNICODE
  wiring = _conv_wiring(input_shape, kernel_shape, stride, padding, dilation)
  return [_forward_line(g, taps, symbols) for g, taps in enumerate(wiring.taps)]


def _forward_line(g, taps, symbols) -> str:
  products = [f"{_name('V', v)}{symbols['times']}{_name('W', q)}"
              for q, v in taps]
  return f"{_name('G', g)} = " + (" + ".join(products) if products else "0")


def gradient_equations(input_shape: Sequence[int], kernel_shape: Sequence[int],
                       names: Sequence[str], stride=1, padding="VALID",
                       dilation=1, *, ascii: bool = False) -> list[str]:
  """The chain rule written out for the named variables of a convolution.

  ``∂E/∂Wq`` is eq. (9): the deltas of the outputs that used ``Wq``, each
  times the input ``Wq`` multiplied there. ``∂E/∂Vv`` is eq. (12): the deltas
  of the outputs that read ``Vv``, each times the weight that read it.

  Args:
    input_shape: the spatial shape of the input (one example, one channel).
    kernel_shape: the spatial shape of the kernel.
    names: variables such as ``"W1"`` or ``"V5"`` (numbered from 1).
    stride: an int or one per spatial dimension.
    padding: ``"VALID"``, ``"SAME"``, ``"SAME_LOWER"`` or ``(lo, hi)`` pairs.
    dilation: kernel dilation, an int or one per spatial dimension.
    ascii: write ``d`` and ``*`` instead of ``∂`` and ``·``.

  Returns:
    One string per name, ``∂E/∂W1 = ∂E/∂G1·V1 + ...``.
  """
  symbols = _ASCII if ascii else _UNICODE
  wiring = _conv_wiring(input_shape, kernel_shape, stride, padding, dilation)
  lines = []
  for name in names:
    variable, index = _parse_variable(name, wiring)
    terms = _conv_gradient_terms(wiring, variable, index)
    lines.append(_gradient_line(variable, index, terms, "G", symbols))
  return lines


def _gradient_line(variable, index, terms, upstream, symbols) -> str:
  factor = "V" if variable == "W" else "W"
  d = symbols["d"]
  line = (f"{d}E/{d}{_name(variable, index)} = "
          + _format_sum(terms, upstream, factor, symbols))
  if not terms:
    line += (" (no window reads it)" if variable == "V" else
             " (it only ever multiplies padding)")
  return line


def _parse_variable(name: str, wiring: _ConvWiring) -> tuple[str, int]:
  match = re.fullmatch(r"\s*([WwVv])\s*(\d+)\s*", str(name))
  if not match:
    raise ValueError(
        f"a gradient is named like 'W1' (a weight) or 'V5' (an input), got "
        f"{name!r}.")
  variable, number = match.group(1).upper(), int(match.group(2))
  count = math.prod(wiring.kernel_shape if variable == "W"
                    else wiring.input_shape)
  if not 1 <= number <= count:
    what = "weights W1" if variable == "W" else "inputs V1"
    raise ValueError(
        f"{name!r} does not exist: there are {count} "
        f"{what}..{variable}{count}.")
  return variable, number - 1


# ---------------------------------------------------------------------------
# The whole explanation, checked against the library.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Explanation:
  """A small convolution (and pooling) written out, with its check.

  ``str(explanation)`` is the text that ``python -m jaxconv.explain`` prints.

  Attributes:
    header: what was convolved: shapes, stride, padding, dilation, pooling.
    grids: where each named value sits, for 1-D and 2-D cases.
    forward: ``G = ...`` for every output, then ``P = ...`` with pooling.
    pool_backward: with pooling, ``∂E/∂G = ...`` for every output of the
      convolution in terms of ``∂E/∂P``; empty without.
    backward: the expansion of every requested gradient, in terms of
      ``∂E/∂G`` (or ``∂E/∂P`` with pooling).
    check: the line that reports the numerical check.
    max_difference: the largest absolute difference between the equations
      evaluated on random numbers and the library's forward pass and VJP.
    passed: whether that difference is within rounding (float64).
  """

  header: tuple[str, ...]
  grids: tuple[str, ...]
  forward: tuple[str, ...]
  pool_backward: tuple[str, ...]
  backward: tuple[str, ...]
  check: str
  max_difference: float
  passed: bool

  def __str__(self) -> str:
    sections = [[_wrap(line) for line in self.header]]
    if self.grids:
      sections.append(list(self.grids))
    sections.append(["Forward"] + ["  " + line for line in self.forward])
    if self.pool_backward:
      sections.append([_wrap(line) for line in self.pool_backward])
    sections.append([_wrap(line) for line in self.backward])
    sections.append([_wrap(self.check)])
    return "\n\n".join("\n".join(lines) for lines in sections) + "\n"


def _wrap(line: str) -> str:
  """Wraps prose at 76 columns; equations (indented lines) stay whole."""
  if line.startswith(" "):
    return line
  return textwrap.fill(line, width=76, break_on_hyphens=False)


def _grid(names: Sequence[str], shape: Sequence[int]) -> list[str]:
  """Rows of a 1-D or 2-D arrangement of names, right-aligned."""
  shape = tuple(shape)
  rows = [names] if len(shape) == 1 else [
      names[r * shape[1]:(r + 1) * shape[1]] for r in range(shape[0])]
  width = max((len(n) for n in names), default=1)
  return [" ".join(n.rjust(width) for n in row) for row in rows]


def _padded_input_names(
    wiring: _ConvWiring) -> tuple[list[str], tuple[int, ...]]:
  """Names of the padded (or cropped) input, ``0`` on padding."""
  ranges = [range(-lo, n + hi) for n, (lo, hi) in
            zip(wiring.input_shape, wiring.geometry.padding)]
  names, shape = [], tuple(len(r) for r in ranges)
  for position in np.ndindex(*shape):
    index = tuple(r[i] for r, i in zip(ranges, position))
    if all(0 <= j < n for j, n in zip(index, wiring.input_shape)):
      names.append(_name("V", int(np.ravel_multi_index(index,
                                                        wiring.input_shape))))
    else:
      names.append("0")
  return names, shape


def _grids(wiring: _ConvWiring, pool: _PoolWiring | None) -> list[str]:
  if len(wiring.input_shape) > 2:
    return []
  padded = any(p != (0, 0) for p in wiring.geometry.padding)
  blocks = []
  if padded:
    names, shape = _padded_input_names(wiring)
    blocks.append(("padded input", _grid(names, shape)))
  else:
    blocks.append(("input", _grid(
        [_name("V", v) for v in range(math.prod(wiring.input_shape))],
        wiring.input_shape)))
  blocks.append(("kernel", _grid(
      [_name("W", q) for q in range(math.prod(wiring.kernel_shape))],
      wiring.kernel_shape)))
  blocks.append(("conv output", _grid(
      [_name("G", g) for g in range(len(wiring.taps))], wiring.output_shape)))
  if pool is not None:
    blocks.append((f"{pool.kind} pool output", _grid(
        [_name("P", p) for p in range(len(pool.members))], pool.output_shape)))
  height = max(len(rows) for _, rows in blocks)
  widths = [max(len(title), *(len(r) for r in rows)) for title, rows in blocks]
  lines = ["    ".join(title.ljust(w) for (title, _), w in zip(blocks, widths))]
  for i in range(height):
    lines.append("    ".join((rows[i] if i < len(rows) else "").ljust(w)
                             for (_, rows), w in zip(blocks, widths)))
  return ["  " + line.rstrip() for line in lines]


def _shape_text(shape) -> str:
  return "x".join(str(s) for s in shape)


def _padding_text(padding) -> str:
  """``VALID``, or ``lo:hi`` pairs as on the command line: ``1:1x0:1``."""
  if isinstance(padding, str):
    return padding
  if isinstance(padding, (int, np.integer)):
    return str(int(padding))
  return "x".join(f"{p[0]}:{p[1]}" if isinstance(p, (tuple, list)) else str(p)
                  for p in padding)


def _sized(shape, what: str) -> str:
  """``a 3x3 input``, ``a length-5 input``."""
  if len(shape) == 1:
    return f"a length-{shape[0]} {what}"
  return f"a {_shape_text(shape)} {what}"


def _default_names(wiring: _ConvWiring) -> list[str]:
  """Every weight, and the input that the most outputs read (the first such)."""
  reads = np.zeros(math.prod(wiring.input_shape), dtype=int)
  for taps in wiring.taps:
    for _, v in taps:
      reads[v] += 1
  weights = [_name("W", q) for q in range(math.prod(wiring.kernel_shape))]
  return weights + [_name("V", int(np.argmax(reads)))]


def _library_function(wiring: _ConvWiring, pool: _PoolWiring | None):
  """The library's computation of the last stage, from (V, W)."""
  geometry = wiring.geometry

  def function(v, w):
    g = convolution.conv_general_dilated(
        v[None, None], w[None, None], geometry.window_strides,
        geometry.padding, rhs_dilation=geometry.rhs_dilation)[0, 0]
    if pool is None:
      return g
    pool_function = pooling.max_pool if pool.kind == "max" else pooling.avg_pool
    return pool_function(g[..., None], pool.window, pool.strides,
                         pool.padding)[..., 0]

  return function


def explain(input_shape: Sequence[int], kernel_shape: Sequence[int], stride=1,
            padding="VALID", dilation=1, *, pool: str | None = None,
            pool_window: Sequence[int] | None = None, pool_stride=None,
            pool_padding="VALID", grads: Sequence[str] | None = None,
            seed: int = 0, ascii: bool = False) -> Explanation:
  """Writes out a small convolution (and pooling) and checks it numerically.

  One example, one channel. Inputs are ``V1, V2, ...``, weights ``W1, ...``,
  convolution outputs ``G1, ...`` and pooling outputs ``P1, ...``, numbered
  row by row from 1; ``E`` is the loss. The equations are evaluated on random
  numbers (float64) and compared with ``jaxconv.conv_general_dilated`` (then
  ``jaxconv.max_pool`` or ``jaxconv.avg_pool``) and its ``jax.vjp`` before
  they are returned: every output and every gradient, not only the requested
  ones.

  Args:
    input_shape: the spatial shape of the input, e.g. ``(3, 3)``.
    kernel_shape: the spatial shape of the kernel, e.g. ``(2, 2)``.
    stride: an int or one per spatial dimension.
    padding: ``"VALID"``, ``"SAME"``, ``"SAME_LOWER"`` or ``(lo, hi)`` pairs.
    dilation: kernel dilation, an int or one per spatial dimension.
    pool: ``None``, ``"max"`` or ``"avg"``: a pooling stage after the
      convolution.
    pool_window: the pooling window (required with ``pool``).
    pool_stride: the pooling stride; ``None`` means the window (windows side
      by side, the usual choice after a convolution).
    pool_padding: the pooling padding, as in ``jaxconv.max_pool``.
    grads: the gradients to expand, like ``["W1", "V5"]``; ``None`` means
      every weight and the input that the most windows read.
    seed: seed of the random numbers of the check.
    ascii: write ``d`` and ``*`` instead of ``∂`` and ``·``.

  Returns:
    An ``Explanation``; ``str()`` of it is the printout.

  Raises:
    ValueError: a bad geometry (as the library reports it), an unknown
      variable name, or a case too large to write out.
  """
  symbols = _ASCII if ascii else _UNICODE
  d = symbols["d"]
  wiring = _conv_wiring(input_shape, kernel_shape, stride, padding, dilation)
  pool_wiring = None
  if pool is not None:
    if pool_window is None:
      raise ValueError("`pool_window` is required with `pool`.")
    pool_wiring = _pool_wiring(pool, wiring.output_shape, pool_window,
                               pool_stride, pool_padding)
  names = list(grads) if grads else _default_names(wiring)
  requested = [_parse_variable(name, wiring) for name in names]

  # Random numbers, and the library's answer for them.
  rng = np.random.default_rng(seed)
  v_values = rng.standard_normal(wiring.input_shape)
  w_values = rng.standard_normal(wiring.kernel_shape)
  last_shape = (pool_wiring.output_shape if pool_wiring
                else wiring.output_shape)
  upstream_values = rng.standard_normal(last_shape)
  with jax.enable_x64(True):
    output, vjp = jax.vjp(_library_function(wiring, pool_wiring),
                          jnp.asarray(v_values), jnp.asarray(w_values))
    library_dv, library_dw = vjp(jnp.asarray(upstream_values))
    output, library_dv, library_dw = (np.asarray(a).ravel() for a in
                                      (output, library_dv, library_dw))
  v, w, upstream = (a.ravel() for a in (v_values, w_values, upstream_values))

  # The same numbers from the equations.
  conv_values = [sum(v[j] * w[q] for q, j in taps) for taps in wiring.taps]
  routing = None
  if pool_wiring is None:
    ours_output = np.asarray(conv_values)
  else:
    routing = _pool_routing(pool_wiring, conv_values)
    ours_output = np.asarray([
        sum(float(c) * conv_values[g] for g, c in window)
        for window in routing])

  def terms_for(variable, index):
    terms = _conv_gradient_terms(wiring, variable, index)
    return terms if routing is None else _chained_terms(terms, routing)

  ours_dv = [_evaluate(terms_for("V", j), upstream, w) for j in range(v.size)]
  ours_dw = [_evaluate(terms_for("W", q), upstream, v) for q in range(w.size)]
  differences = np.concatenate([
      np.abs(ours_output - output), np.abs(np.asarray(ours_dv) - library_dv),
      np.abs(np.asarray(ours_dw) - library_dw)])
  max_difference = float(differences.max(initial=0.0))
  scale = max(1.0, float(np.max(np.abs(np.concatenate(
      [output, library_dv, library_dw])), initial=0.0)))
  passed = max_difference <= _CHECK_TOLERANCE * scale

  # The text.
  geometry = wiring.geometry
  header = [
      f"Convolution of {_sized(wiring.input_shape, 'input')} with "
      f"{_sized(wiring.kernel_shape, 'kernel')}: stride "
      f"{_shape_text(geometry.window_strides)}, padding "
      f"{_padding_text(geometry.padding)} (lo:hi per dimension), dilation "
      f"{_shape_text(geometry.rhs_dilation)}; output "
      f"{_shape_text(wiring.output_shape)}."]
  if pool_wiring is not None:
    header.append(
        f"Then {pool_wiring.kind} pooling: window "
        f"{_shape_text(pool_wiring.window)}, stride "
        f"{_shape_text(pool_wiring.strides)}, padding "
        f"{_padding_text(pool_wiring.padding)}; output "
        f"{_shape_text(pool_wiring.output_shape)}.")
  stages = "G: convolution outputs" + (", P: pooling outputs" if pool_wiring
                                        else "")
  header.append(
      f"One example, one channel. V: inputs, W: weights, {stages}, numbered "
      f"row by row from 1. E: the loss.")

  forward = [_forward_line(g, taps, symbols)
             for g, taps in enumerate(wiring.taps)]
  pool_backward: list[str] = []
  if pool_wiring is not None:
    for p, members in enumerate(pool_wiring.members):
      listed = ", ".join(_name("G", g) for g, _ in members)
      if pool_wiring.kind == "max":
        forward.append(f"{_name('P', p)} = max({listed})")
      else:
        divisor = members[0][1].denominator if members else 1
        total = " + ".join(_name("G", g) for g, _ in members)
        forward.append(f"{_name('P', p)} = " + (
            total if divisor == 1 and len(members) == 1
            else f"({total})/{divisor}"))
    pool_backward = _pool_backward_lines(pool_wiring, routing,
                                         len(wiring.taps), symbols)

  if pool_wiring is None:
    backward = [
        f"Backward: {d}E/{d}G is the delta of each output. A weight collects "
        f"the inputs it multiplied, each times the delta of that output "
        f"(eq.\u00a09); an input collects the weights that multiplied it, "
        f"each times the delta of that output (eq.\u00a012)."]
  else:
    if pool_wiring.kind == "max":
      how = (f"each {d}E/{d}P goes to its window's winner; the winners are "
             f"those of the random numbers above")
    else:
      how = (f"each {d}E/{d}P goes to every member of its window, divided by "
             f"the window's divisor")
    backward = [f"Backward, with {d}E/{d}G substituted ({how}):"]
  upstream_name = "G" if pool_wiring is None else "P"
  for (variable, index) in requested:
    backward.append("  " + _gradient_line(
        variable, index, terms_for(variable, index), upstream_name, symbols))

  plural = "s" if len(ours_output) != 1 else ""
  checked = (f"{len(ours_output)} output{plural} and {v.size + w.size} "
             f"gradients ({d}E/{d}V and {d}E/{d}W)")
  against = "jaxconv.conv_general_dilated"
  if pool_wiring is not None:
    against += f" + jaxconv.{pool_wiring.kind}_pool"
  check = (
      f"Check {'passed' if passed else 'FAILED'}: on random V, W and "
      f"{d}E/{d}{upstream_name} (float64, seed {seed}) these equations give "
      f"the {checked} that {against} and jax.vjp give, up to a largest "
      f"difference of {max_difference:.1e}.")
  return Explanation(
      header=tuple(header), grids=tuple(_grids(wiring, pool_wiring)),
      forward=tuple(forward), pool_backward=tuple(pool_backward),
      backward=tuple(backward), check=check, max_difference=max_difference,
      passed=passed)


def _pool_backward_lines(pool: _PoolWiring, routing, outputs: int,
                         symbols) -> list[str]:
  """``∂E/∂G = ...`` for each of the ``outputs`` convolution outputs."""
  d, times = symbols["d"], symbols["times"]
  incoming: dict[int, list[tuple[int, fractions.Fraction]]] = {}
  for p, members in enumerate(pool.members):
    for g, coefficient in members:
      incoming.setdefault(g, []).append((p, coefficient))
  lines = []
  if pool.kind == "avg":
    lines.append(
        f"Pooling backward: average pooling spreads each {d}E/{d}P evenly "
        f"over its window.")
    for g in range(outputs):
      parts = [f"{d}E/{d}{_name('P', p)}"
               + ("" if c == 1 else f"/{c.denominator}")
               for p, c in incoming.get(g, ())]
      lines.append(f"  {d}E/{d}{_name('G', g)} = "
                   + (" + ".join(parts) if parts else "0"))
    return lines
  lines.append(
      f"Pooling backward: max pooling routes each {d}E/{d}P to the largest G "
      f"of its window (the first one, if several are equal); [Gg wins Pp] is "
      f"1 if it is, else 0.")
  for g in range(outputs):
    parts = [f"[{_name('G', g)} wins {_name('P', p)}]{times}"
             f"{d}E/{d}{_name('P', p)}" for p, _ in incoming.get(g, ())]
    lines.append(f"  {d}E/{d}{_name('G', g)} = "
                 + (" + ".join(parts) if parts else "0"))
  winners = ", ".join(f"{_name('G', window[0][0])} wins {_name('P', p)}"
                      for p, window in enumerate(routing))
  lines.append(f"With the random numbers of the check the winners are: "
               f"{winners}.")
  return lines


# ---------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------


def _parse_shape(text: str) -> tuple[int, ...]:
  parts = re.split(r"[x,×]", text.strip().lower())
  try:
    shape = tuple(int(p) for p in parts)
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"a shape is written like 3x3, got {text!r}") from None
  if any(s < 1 for s in shape):
    raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
  return shape


def _parse_ints(text: str):
  parts = re.split(r"[x,]", text.strip().lower())
  try:
    values = tuple(int(p) for p in parts)
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"expected an int or ints like 2x1, got {text!r}") from None
  return values[0] if len(values) == 1 else values


def _parse_padding(text: str):
  """``VALID``/``SAME``/``SAME_LOWER``, ``1`` (every side), ``1x0`` (per
  dimension, both sides) or ``lo:hi`` per dimension, like ``0:1x1:0``."""
  upper = text.strip().upper()
  if upper in ("VALID", "SAME", "SAME_LOWER"):
    return upper
  pairs = []
  for part in re.split(r"[x,]", text.strip().lower()):
    try:
      if ":" in part:
        lo, hi = part.split(":")
        pairs.append((int(lo), int(hi)))
      else:
        pairs.append((int(part), int(part)))
    except ValueError:
      raise argparse.ArgumentTypeError(
          f"padding is VALID, SAME, SAME_LOWER, an int, ints like 1x0, or "
          f"lo:hi pairs like 0:1x1:0; got {text!r}") from None
  return pairs


def _build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m jaxconv.explain",
      description="Write a small convolution (one example, one channel) and "
      "its gradients out in symbols, checked against jaxconv's VJP.",
      epilog="Example: python -m jaxconv.explain --input 3x3 --kernel 2x2 "
      "--grad W1 --grad V5")
  parser.add_argument("--input", required=True, type=_parse_shape,
                      help="spatial shape of the input, e.g. 3x3 (or 5, or "
                      "3x3x3)")
  parser.add_argument("--kernel", required=True, type=_parse_shape,
                      help="spatial shape of the kernel, e.g. 2x2")
  parser.add_argument("--stride", type=_parse_ints, default=1,
                      help="an int or one per dimension, e.g. 2 or 2x1 "
                      "(default 1)")
  parser.add_argument("--padding", type=_parse_padding, default="VALID",
                      help="VALID (default), SAME, SAME_LOWER, an int, ints "
                      "like 1x0, or lo:hi pairs like 0:1x1:0")
  parser.add_argument("--dilation", type=_parse_ints, default=1,
                      help="kernel dilation, an int or one per dimension "
                      "(default 1)")
  parser.add_argument("--pool", nargs=2, metavar=("KIND", "WINDOW"),
                      help="add a pooling stage: max or avg, and a window "
                      "like 2x2")
  parser.add_argument("--pool-stride", type=_parse_ints, default=None,
                      help="pooling stride (default: the window)")
  parser.add_argument("--pool-padding", type=_parse_padding, default="VALID",
                      help="pooling padding, as --padding (default VALID)")
  parser.add_argument("--grad", action="append", metavar="NAME",
                      help="a gradient to expand, like W1 or V5; repeat it, "
                      "or say 'all' (default: every weight and the most-read "
                      "input)")
  parser.add_argument("--seed", type=int, default=0,
                      help="seed of the random numbers of the check")
  parser.add_argument("--ascii", action="store_true",
                      help="write d and * instead of ∂ and ·")
  return parser


def _can_print_unicode(stream) -> bool:
  """False only for a stream whose declared encoding has no ``∂``."""
  encoding = getattr(stream, "encoding", None)
  if not encoding:
    return True  # an in-memory text stream takes any str
  try:
    "∂·".encode(encoding)
  except (LookupError, UnicodeEncodeError):
    return False
  return True


def main(argv: Sequence[str] | None = None) -> int:
  """Command-line entry point of ``python -m jaxconv.explain``.

  Args:
    argv: the arguments, without the program name; ``None`` means
      ``sys.argv[1:]``.

  Returns:
    The exit status: 0 when the check passed, 1 when it failed, 2 for bad
    arguments.
  """
  parser = _build_parser()
  args = parser.parse_args(argv)
  pool = pool_window = None
  if args.pool:
    pool = args.pool[0].lower()
    if pool not in ("max", "avg"):
      parser.error(f"--pool KIND must be max or avg, got {args.pool[0]!r}")
    try:
      pool_window = _parse_shape(args.pool[1])
    except argparse.ArgumentTypeError as error:
      parser.error(f"--pool WINDOW: {error}")
  elif args.pool_stride is not None or args.pool_padding != "VALID":
    parser.error("--pool-stride and --pool-padding need --pool")
  grads = args.grad
  ascii_only = args.ascii or not _can_print_unicode(sys.stdout)
  try:
    if grads and any(g.lower() == "all" for g in grads):
      wiring = _conv_wiring(args.input, args.kernel, args.stride, args.padding,
                            args.dilation)
      grads = ([_name("W", q) for q in range(math.prod(wiring.kernel_shape))]
               + [_name("V", j) for j in range(math.prod(wiring.input_shape))])
    result = explain(args.input, args.kernel, args.stride, args.padding,
                     args.dilation, pool=pool, pool_window=pool_window,
                     pool_stride=args.pool_stride,
                     pool_padding=args.pool_padding, grads=grads,
                     seed=args.seed, ascii=ascii_only)
  except (ValueError, TypeError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  print(result, end="")
  return 0 if result.passed else 1


if __name__ == "__main__":
  sys.exit(main())
