r"""One convolution (and a pooling stage), written out in symbols and checked.

The one-layer explainer: inputs ``V1, V2, ...``, kernel weights ``W1, ...``,
convolution outputs ``G1, ...`` and pooling outputs ``P1, ...``, numbered row
by row from 1; ``E`` is the loss. Every output is a sum of products, and each
requested gradient is the chain rule written out in terms of ``∂E/∂G`` (or
``∂E/∂P``). Before anything is printed, the sums are evaluated on random
numbers and compared with ``jaxconv.conv_general_dilated`` (and
``jaxconv.max_pool``/``avg_pool``) and their ``jax.vjp``.
"""

from __future__ import annotations

import dataclasses
import fractions
import math
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

import jaxconv
from jaxconv.explain import _wiring
from jaxconv.explain._text import (
  ASCII,
  UNICODE,
  grid,
  padding_text,
  shape_text,
  side_by_side,
  sized,
  wrap,
)
from jaxconv.explain._wiring import ConvWiring, PoolWiring, conv_wiring

# Agreement required of the check, relative to the size of the numbers
# (everything is computed in float64).
_CHECK_TOLERANCE = 1e-9


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
# The equations.
# ---------------------------------------------------------------------------


def _conv_gradient_terms(wiring: ConvWiring, variable: str,
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


def _pool_routing(pool: PoolWiring,
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
  symbols = ASCII if ascii else UNICODE
  wiring = conv_wiring(input_shape, kernel_shape, stride, padding, dilation)
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
  symbols = ASCII if ascii else UNICODE
  wiring = conv_wiring(input_shape, kernel_shape, stride, padding, dilation)
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


def _parse_variable(name: str, wiring: ConvWiring) -> tuple[str, int]:
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
    sections = [[wrap(line) for line in self.header]]
    if self.grids:
      sections.append(list(self.grids))
    sections.append(["Forward"] + ["  " + line for line in self.forward])
    if self.pool_backward:
      sections.append([wrap(line) for line in self.pool_backward])
    sections.append([wrap(line) for line in self.backward])
    sections.append([wrap(self.check)])
    return "\n\n".join("\n".join(lines) for lines in sections) + "\n"


def _padded_input_names(
    wiring: ConvWiring) -> tuple[list[str], tuple[int, ...]]:
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


def _grids(wiring: ConvWiring, pool: PoolWiring | None) -> list[str]:
  if len(wiring.input_shape) > 2:
    return []
  padded = any(p != (0, 0) for p in wiring.geometry.padding)
  blocks = []
  if padded:
    names, shape = _padded_input_names(wiring)
    blocks.append(("padded input", grid(names, shape)))
  else:
    blocks.append(("input", grid(
        [_name("V", v) for v in range(math.prod(wiring.input_shape))],
        wiring.input_shape)))
  blocks.append(("kernel", grid(
      [_name("W", q) for q in range(math.prod(wiring.kernel_shape))],
      wiring.kernel_shape)))
  blocks.append(("conv output", grid(
      [_name("G", g) for g in range(len(wiring.taps))], wiring.output_shape)))
  if pool is not None:
    blocks.append((f"{pool.kind} pool output", grid(
        [_name("P", p) for p in range(len(pool.members))], pool.output_shape)))
  return side_by_side(blocks)


def _default_names(wiring: ConvWiring) -> list[str]:
  """Every weight, and the input that the most outputs read (the first such)."""
  reads = np.zeros(math.prod(wiring.input_shape), dtype=int)
  for taps in wiring.taps:
    for _, v in taps:
      reads[v] += 1
  weights = [_name("W", q) for q in range(math.prod(wiring.kernel_shape))]
  return weights + [_name("V", int(np.argmax(reads)))]


def _library_function(wiring: ConvWiring, pool: PoolWiring | None):
  """The library's computation of the last stage, from (V, W)."""
  geometry = wiring.geometry

  def function(v, w):
    g = jaxconv.conv_general_dilated(
        v[None, None], w[None, None], geometry.window_strides,
        geometry.padding, rhs_dilation=geometry.rhs_dilation)[0, 0]
    if pool is None:
      return g
    pool_function = jaxconv.max_pool if pool.kind == "max" else jaxconv.avg_pool
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
    pool_stride: the pooling stride; ``None`` means 1, the default of
      ``jaxconv.max_pool`` and ``jaxconv.avg_pool`` (Flax's convention).
      Pass the window for windows side by side.
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
  return _explain(_conv_gradient_terms, input_shape, kernel_shape, stride,
                  padding, dilation, pool=pool, pool_window=pool_window,
                  pool_stride=pool_stride, pool_padding=pool_padding,
                  grads=grads, seed=seed, ascii=ascii)


def _explain(gradient_terms, input_shape, kernel_shape, stride, padding,
             dilation, *, pool, pool_window, pool_stride, pool_padding, grads,
             seed, ascii) -> Explanation:
  """:func:`explain`, with eqs. (9) and (12) given as ``gradient_terms(wiring,
  variable, index)`` (``_conv_gradient_terms``). The check does not depend
  on where the terms come from: the tests hand it wrong ones to show that it
  fails."""
  symbols = ASCII if ascii else UNICODE
  d = symbols["d"]
  wiring = conv_wiring(input_shape, kernel_shape, stride, padding, dilation)
  pool_wiring = None
  if pool is not None:
    if pool_window is None:
      raise ValueError("`pool_window` is required with `pool`.")
    pool_wiring = _wiring.pool_wiring(pool, wiring.output_shape,
                                      pool_window, pool_stride, pool_padding)
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
    terms = gradient_terms(wiring, variable, index)
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
      f"Convolution of {sized(wiring.input_shape, 'input')} with "
      f"{sized(wiring.kernel_shape, 'kernel')}: stride "
      f"{shape_text(geometry.window_strides)}, padding "
      f"{padding_text(geometry.padding)} (lo:hi per dimension), dilation "
      f"{shape_text(geometry.rhs_dilation)}; output "
      f"{shape_text(wiring.output_shape)}."]
  if pool_wiring is not None:
    header.append(
        f"Then {pool_wiring.kind} pooling: window "
        f"{shape_text(pool_wiring.window)}, stride "
        f"{shape_text(pool_wiring.strides)}, padding "
        f"{padding_text(pool_wiring.padding)}; output "
        f"{shape_text(pool_wiring.output_shape)}.")
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


def _pool_backward_lines(pool: PoolWiring, routing, outputs: int,
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


