r"""A small network written out: forward values, deltas and gradients, first in
symbols and then with numbers, checked against ``jax.grad``.

The network is a chain of layers on one example with one channel:
convolutions (``w^l``, an optional bias ``b^l``), activations, max or average
pooling, then a cost ``C``. The input is ``i``, layer ``l`` outputs ``o^l``,
and its delta is ``δ^l = ∂C/∂o^l`` (eq. 8 and eq. 50 of
``docs/derivation.md``; for a convolution ``o^l`` is the pre-activation
``z^l``). Every array is numbered row by row from 1, as in ``o¹₁ = i₁·w¹₁ +
i₂·w¹₂ + i₄·w¹₃ + i₅·w¹₄``.

The numbers are computed here from the printed sums, with the rules of the
derivation: eq. (5) forward and (9), (11), (12) backward for a convolution,
(33), (36) for max pooling, (38), (40) for average pooling, (56)-(60) for the
activations, (62) and (66) for the costs. Which input each weight multiplies,
and which positions each pooling window covers, are read off the library
(``_wiring``). Then the same chain is built from jaxconv's own functions, and
``jax.grad`` of it, in float64, must give every forward value, delta and
gradient (not only the printed ones) before anything is reported as passed.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import jaxconv
from jaxconv.explain import _formula
from jaxconv.explain._equations import Equation, sum_of_products
from jaxconv.explain._formula import Symbol
from jaxconv.explain._layers import (
    Stage,
    build_stages,
    delta_symbol,
    output_symbol,
    parse_layer,
)
from jaxconv.explain._report import Report
from jaxconv.explain._text import factor, number, superscript, wrap
from jaxconv.explain._values import (
    canonical_value_name,
    coerce,
    draw,
    value_shapes,
)

COSTS = ("squared", "half-squared", "softmax-cross-entropy")
_COST_ALIASES = {"cross-entropy": "softmax-cross-entropy",
                 "softmax": "softmax-cross-entropy"}
PRODUCT_OF_SUMS = "product-of-sums"

# Agreement required of the check, relative to the size of the numbers
# (everything is computed in float64).
_CHECK_TOLERANCE = 1e-9


@dataclasses.dataclass(frozen=True)
class NetworkExplanation:
  """A small network written out and checked; ``str()`` of it is the text
  that ``python -m jaxconv.explain --layers ...`` prints.

  Attributes:
    sections: the text, one tuple of lines per section (header, values,
      forward, backward, gradients, wrong answers, check).
    arrays: every value by its command-line name, as float64 arrays:
      ``"i"``, ``"w1"``, ``"b1"``, ``"y"`` (the class label is an int), the
      layer outputs ``"o1"``, ``"o2"``, ..., the deltas ``"d1"``, ...
      (``"d0"`` is the input gradient), the softmax probabilities ``"p"``
      and the cost ``"C"``.
    gradients: the gradient of every weight, bias and of the input, by name
      (``"w1"``, ``"b1"``, ``"i"``), in the shape of that value.
    wrong_answers: for each ``wrong`` formula, by gradient name, the pair
      (the formula's value, the true gradient).
    max_difference: the largest absolute difference between these numbers
      and ``jax.grad`` of the same chain built from jaxconv.
    passed: whether that difference is within rounding (float64).
  """

  sections: tuple[tuple[str, ...], ...]
  arrays: dict
  gradients: dict
  wrong_answers: dict
  max_difference: float
  passed: bool

  def __str__(self) -> str:
    return "\n\n".join("\n".join(wrap(line) for line in section)
                       for section in self.sections if section) + "\n"


def explain_network(input_shape: Sequence[int], layers: Sequence[str],
                    cost: str | None = None, *,
                    values: Mapping[str, object] | None = None,
                    grads: Sequence[str] | None = None,
                    wrong: Mapping[str, str] | None = None, seed: int = 0,
                    brief: bool = False,
                    ascii: bool = False) -> NetworkExplanation:
  r"""Writes out a small network's forward pass, deltas and gradients.

  One example, one channel. The input is ``i``, layer ``l`` outputs ``o^l``
  and its delta is ``δ^l = ∂C/∂o^l``; every array is numbered row by row
  from 1. Each forward value, each delta and each requested gradient is
  written as a sum of products of named values, then with the numbers, then
  as a number. All of them (requested or not) are compared with ``jax.grad``
  of the same chain built from jaxconv's functions, in float64, before they
  are returned.

  Args:
    input_shape: the spatial shape of the input, e.g. ``(3, 3)``.
    layers: the chain, as on the command line: ``"conv:2x2"`` (options
      ``stride=``, ``padding=``, ``dilation=``, ``bias``), ``"relu"``,
      ``"leaky_relu:0.1"``, ``"sigmoid"``, ``"tanh"``, ``"max_pool:2x2"`` and
      ``"avg_pool:2x2"`` (options ``stride=``, default 1 as in
      ``jaxconv.max_pool``, and ``padding=``).
    cost: ``"squared"``, ``C = Σ (o - y)²``; ``"half-squared"``,
      ``C = ½ Σ (y - o)²`` (``jaxconv.mse`` of one example);
      ``"softmax-cross-entropy"``, ``C = -log p_y`` with ``p`` the softmax of
      the last layer's outputs and ``y`` the correct class (from 1); or
      ``None``: no cost, the last delta ``d<L>`` is a value (the loss that
      follows is left open).
    values: values by name: ``"i"``, ``"w1"``, ``"b1"``, ``"y"``, ``"d2"``
      (for ``d<L>`` without a cost); numbers in row-major order or arrays of
      the right shape. What is not given is drawn at random with ``seed``.
    grads: gradients to write out: ``"w1_1"`` (one weight), ``"w1"`` (all
      of layer 1's weights), ``"b1"``, ``"i5"``, ``"i"``, or ``"all"``;
      ``None`` means every weight and bias.
    wrong: tempting wrong answers to evaluate beside the true gradient, by
      gradient name: ``{"w1_1": "product-of-sums"}`` or a formula such as
      ``{"w1_1": "(i1+i2+i4+i5)*(d1_1+d1_2+d1_3+d1_4)"}``. The result shows
      both numbers and, multiplied out, the products the formula adds or
      drops.
    seed: seed of the values not given.
    brief: forward values and deltas as grids of numbers instead of one
      equation each (the gradients are still written out).
    ascii: write ``d``, ``*`` and ``w^1_2`` instead of ``∂``, ``·`` and
      ``w¹₂``.

  Returns:
    A ``NetworkExplanation``; ``str()`` of it is the printout.

  Raises:
    ValueError: a bad layer, cost, value, gradient name or formula, or a
      geometry the library refuses; the message names what was expected.
  """
  return _explain_network(_Explainer, input_shape, layers, cost,
                          values=values, grads=grads, wrong=wrong, seed=seed,
                          brief=brief, ascii=ascii)


def _explain_network(explainer_class, input_shape, layers, cost, *, values,
                     grads, wrong, seed, brief, ascii) -> NetworkExplanation:
  """:func:`explain_network`, computed by ``explainer_class`` (``_Explainer``
  or a subclass). The check compares whatever the explainer computes with
  ``jax.grad``: the tests hand it subclasses with a wrong rule to show that
  it fails."""
  if not layers:
    raise ValueError("`layers` must name at least one layer, like "
                     "['conv:2x2'].")
  if cost is not None:
    cost = _COST_ALIASES.get(str(cost).lower(), str(cost).lower())
    if cost not in COSTS:
      raise ValueError(f"`cost` must be one of {', '.join(COSTS)} (or "
                       f"none, to give the last delta), got {cost!r}.")
  input_shape = tuple(int(s) for s in input_shape)
  if not input_shape or any(s < 1 for s in input_shape):
    raise ValueError(f"`input_shape` must be positive sizes, like (3, 3), "
                     f"got {input_shape}.")
  parsed = [parse_layer(text) for text in layers]
  stages = build_stages(input_shape, parsed)
  explainer = explainer_class(stages, cost, ascii, brief)
  explainer.set_values(values or {}, seed)
  explainer.compute()
  explainer.requested = explainer.parse_grads(grads, wrong or {})
  explainer.wrong = explainer.parse_wrong(wrong or {})
  return explainer.explanation(seed)


class _Explainer(Report):
  """Computes every number from the printed sums, then writes the text."""

  def __init__(self, stages, cost, ascii, brief):
    self.stages = stages
    self.cost = cost
    self.ascii = ascii
    self.brief = brief
    self.times = "*" if ascii else "·"
    self.last = stages[-1].number
    self.classes = (math.prod(stages[-1].output_shape)
                    if cost == "softmax-cross-entropy" else None)

  def name(self, symbol: Symbol) -> str:
    return symbol.text(self.ascii)

  def array_name(self, letter: str, layer: int | None = None) -> str:
    """``w¹``, ``o²``, ``δ¹``, ``i`` (``w^1`` with ascii)."""
    text = {"d": "d" if self.ascii else "δ"}.get(letter, letter)
    if layer is None:
      return text
    return text + (f"^{layer}" if self.ascii else superscript(layer))

  # -- values ---------------------------------------------------------------

  def set_values(self, given: Mapping[str, object], seed: int) -> None:
    self.shapes = value_shapes(self.stages[0].input_shape, self.stages,
                                self.cost)
    drawn = draw(self.shapes, self.classes, seed)
    self.given = []
    for raw_name, value in given.items():
      name = canonical_value_name(raw_name)
      if name not in self.shapes:
        raise ValueError(
            f"no value named {raw_name!r} in this network; it has "
            f"{', '.join(self.shapes)}.")
      drawn[name] = coerce(name, value, self.shapes[name], self.classes)
      self.given.append(name)
    self.inputs = drawn
    self.known: dict[Symbol, float] = {}
    for name, value in drawn.items():
      if name == "y" and self.classes is not None:
        continue
      for index, entry in enumerate(np.ravel(value)):
        self.known[self._value_symbol(name, index)] = float(entry)

  @staticmethod
  def _value_symbol(name: str, index: int) -> Symbol:
    letter = name[0]
    if letter in "iy":
      return Symbol(letter, None, index)
    if letter == "b":
      return Symbol("b", int(name[1:]))
    return Symbol(letter, int(name[1:]), index)

  # -- the numbers, from the equations --------------------------------------

  def compute(self) -> None:
    """Forward values, deltas and gradients, each from its equation."""
    self.forward_lines: dict[int, list[Equation]] = {}
    self.winners: dict[int, list[int]] = {}
    for stage in self.stages:
      self.forward_lines[stage.number] = [
          self._forward(stage, j) for j in range(math.prod(
              stage.output_shape))]
      for j, equation in enumerate(self.forward_lines[stage.number]):
        self.known[output_symbol(stage.number, j)] = equation.value
    self.cost_lines = self._cost_forward()
    # Deltas, from the cost down to the input (layer 0: the input gradient).
    self.delta_lines: dict[int, list[Equation]] = {}
    self.delta_terms: dict[Symbol, list] = {}
    self.delta_lines[self.last] = self._cost_deltas()
    for stage in reversed(self.stages):
      lines = []
      for j in range(math.prod(stage.input_shape)):
        terms, equation = self._delta(stage, j)
        self.known[delta_symbol(stage.number - 1, j)] = equation.value
        self.delta_terms[delta_symbol(stage.number - 1, j)] = terms
        lines.append(equation)
      self.delta_lines[stage.number - 1] = lines
    self.gradient_terms: dict[str, list] = {}
    self.gradient_values: dict[str, float] = {}
    for stage in self.stages:
      if stage.conv is None:
        continue
      for q in range(math.prod(stage.conv.kernel_shape)):
        name = f"w{stage.number}_{q + 1}"
        self.gradient_terms[name] = self._weight_gradient_terms(stage, q)
      if stage.layer.bias:
        self.gradient_terms[f"b{stage.number}"] = [
            (1.0, (delta_symbol(stage.number, g),))
            for g in range(math.prod(stage.output_shape))]
    for j in range(math.prod(self.stages[0].input_shape)):
      self.gradient_terms[f"i{j + 1}"] = self.delta_terms[delta_symbol(0, j)]
    for name, terms in self.gradient_terms.items():
      self.gradient_values[name] = sum_of_products(terms, self.known,
                                                    self.ascii)[2]

  def _forward(self, stage: Stage, j: int) -> Equation:
    layer_number = stage.number
    lhs = self.name(output_symbol(layer_number, j))
    kind = stage.layer.kind
    if kind == "conv":
      terms = [(1.0, (output_symbol(layer_number - 1, v),
                      Symbol("w", layer_number, q)))
               for q, v in stage.conv.taps[j]]
      if stage.layer.bias:
        terms.append((1.0, (Symbol("b", layer_number),)))
      return Equation(lhs, *sum_of_products(terms, self.known, self.ascii))
    if kind in ("max_pool", "avg_pool"):
      members = stage.pool.members[j]
      symbols = [output_symbol(layer_number - 1, m) for m, _ in members]
      names = ", ".join(self.name(s) for s in symbols)
      numbers = ", ".join(number(self.known[s]) for s in symbols)
      if kind == "max_pool":
        # Eq. (33)-(34): the largest value, the first one in window order.
        best = max(range(len(members)),
                   key=lambda k: (self.known[symbols[k]], -k))
        self.winners.setdefault(layer_number, []).append(members[best][0])
        return Equation(lhs, f"max({names})", f"max({numbers})",
                         self.known[symbols[best]])
      # Eq. (38): the sum over the window, divided by its divisor.
      divisor = members[0][1].denominator
      terms = [(float(coefficient), (symbol,))
               for (_, coefficient), symbol in zip(members, symbols)]
      value = sum_of_products(terms, self.known, self.ascii)[2]
      if len(members) == 1 and divisor == 1:
        return Equation(lhs, names, numbers, value)
      total = " + ".join(self.name(s) for s in symbols)
      total_numbers = " + ".join(number(self.known[s]) for s in symbols)
      return Equation(lhs, f"({total})/{divisor}",
                       f"({total_numbers})/{divisor}", value)
    x_symbol = output_symbol(layer_number - 1, j)
    x_name, x = self.name(x_symbol), self.known[x_symbol]
    if kind == "relu":
      return Equation(lhs, f"max(0, {x_name})", f"max(0, {number(x)})",
                       max(0.0, x))
    if kind == "leaky_relu":
      slope = stage.layer.slope
      if x >= 0:
        return Equation(lhs, x_name, number(x), x,
                         note=f"{x_name} {'>=' if self.ascii else '≥'} 0")
      return Equation(lhs, f"{number(slope)}{self.times}{x_name}",
                       f"{number(slope)}{self.times}{factor(x)}", slope * x,
                       note=f"{x_name} < 0")
    if kind == "sigmoid":
      return Equation(lhs, f"{'sigmoid' if self.ascii else 'σ'}({x_name})",
                       f"{'sigmoid' if self.ascii else 'σ'}({number(x)})",
                       1.0 / (1.0 + math.exp(-x)))
    return Equation(lhs, f"tanh({x_name})", f"tanh({number(x)})",
                     math.tanh(x))

  def _last_outputs(self) -> list[Symbol]:
    return [output_symbol(self.last, j)
            for j in range(math.prod(self.stages[-1].output_shape))]

  def _cost_forward(self) -> list[Equation]:
    outputs = self._last_outputs()
    squared = "^2" if self.ascii else "²"
    if self.cost in ("squared", "half-squared"):
      names, numbers, total = [], [], 0.0
      for j, o in enumerate(outputs):
        y = Symbol("y", None, j)
        if self.cost == "squared":
          names.append(f"({self.name(o)} - {self.name(y)}){squared}")
          numbers.append(f"({number(self.known[o])} - "
                         f"{factor(self.known[y])}){squared}")
          total += (self.known[o] - self.known[y]) ** 2
        else:
          names.append(f"({self.name(y)} - {self.name(o)}){squared}")
          numbers.append(f"({number(self.known[y])} - "
                         f"{factor(self.known[o])}){squared}")
          total += (self.known[y] - self.known[o]) ** 2
      symbolic, numeric = " + ".join(names), " + ".join(numbers)
      if self.cost == "half-squared":
        half = "1/2*" if self.ascii else "½·"
        total *= 0.5
        if len(outputs) > 1:
          symbolic, numeric = f"({symbolic})", f"({numeric})"
        symbolic, numeric = half + symbolic, half + numeric
      self.known_cost = total
      return [Equation("C", symbolic, numeric, total)]
    if self.cost == "softmax-cross-entropy":
      # Eq. (64): shifted by the largest logit, which changes nothing.
      values = np.asarray([self.known[o] for o in outputs])
      shifted = np.exp(values - values.max())
      probabilities = shifted / shifted.sum()
      exponential = "exp" if self.ascii else "e^"
      lines = []
      denominator = " + ".join(f"{exponential}{self._exponent(self.name(o))}"
                               for o in outputs)
      denominator_numbers = " + ".join(
          f"{exponential}{self._exponent(number(self.known[o]))}"
          for o in outputs)
      for j, o in enumerate(outputs):
        p = Symbol("p", None, j)
        self.known[p] = float(probabilities[j])
        lines.append(Equation(
            self.name(p),
            f"{exponential}{self._exponent(self.name(o))}/({denominator})",
            f"{exponential}{self._exponent(number(self.known[o]))}/"
            f"({denominator_numbers})", float(probabilities[j])))
      label = self.inputs["y"]
      p = Symbol("p", None, label - 1)
      self.known_cost = -math.log(self.known[p])
      lines.append(Equation("C", f"-log {self.name(p)}",
                             f"-log {number(self.known[p])}",
                             self.known_cost,
                             note=f"the correct class is y = {label}"))
      return lines
    self.known_cost = None
    return []

  def _exponent(self, text: str) -> str:
    return f"({text})" if self.ascii or text.startswith("-") else text

  def _cost_deltas(self) -> list[Equation]:
    """Eq. (62) (twice it for the squared cost) and eq. (66)."""
    lines = []
    for j, o in enumerate(self._last_outputs()):
      delta = delta_symbol(self.last, j)
      lhs = self.name(delta)
      if self.cost in ("squared", "half-squared"):
        y = Symbol("y", None, j)
        scale = 2.0 if self.cost == "squared" else 1.0
        prefix = f"2{self.times}" if scale == 2 else ""
        terms = [(scale, (o,)), (-scale, (y,))]
        equation = Equation(
            lhs, f"{prefix}({self.name(o)} - {self.name(y)})",
            f"{prefix}({number(self.known[o])} - {factor(self.known[y])})",
            scale * (self.known[o] - self.known[y]))
        if not prefix:
          equation = dataclasses.replace(
              equation, symbolic=equation.symbolic[1:-1],
              numeric=equation.numeric[1:-1])
      elif self.cost == "softmax-cross-entropy":
        p = Symbol("p", None, j)
        correct = j + 1 == self.inputs["y"]
        terms = [(1.0, (p,))] + ([(-1.0, ())] if correct else [])
        equation = Equation(
            lhs, f"{self.name(p)} - 1" if correct else self.name(p),
            f"{number(self.known[p])} - 1" if correct else
            number(self.known[p]), self.known[p] - (1.0 if correct else 0.0))
      else:
        terms = None
        equation = Equation(lhs, number(self.known[delta]),
                             number(self.known[delta]), self.known[delta])
      if terms is not None:
        self.known[delta] = equation.value
        self.delta_terms[delta] = terms
      lines.append(equation)
    return lines

  def _delta(self, stage: Stage, j: int):
    """``δ^{layer_number-1}_j`` from ``δ^l``: the terms (linear in ``δ^l``, numbers
    substituted for what is not a product) and the printed equation."""
    layer_number = stage.number
    lhs = self.name(delta_symbol(layer_number - 1, j))
    kind = stage.layer.kind
    if kind == "conv":
      # Eq. (12): every output that read input j, its delta times the weight
      # that read it.
      terms = [(1.0, (delta_symbol(layer_number, g), Symbol("w", layer_number, q)))
               for g, taps in enumerate(stage.conv.taps)
               for q, v in taps if v == j]
      equation = Equation(lhs, *sum_of_products(terms, self.known,
                                                  self.ascii))
      if not terms:
        equation = dataclasses.replace(equation, note="no window reads it")
      return terms, equation
    if kind == "max_pool":
      # Eq. (36): the delta of every window that input j wins.
      terms = [(1.0, (delta_symbol(layer_number, p),))
               for p, winner in enumerate(self.winners[layer_number]) if winner == j]
      return terms, Equation(lhs, *sum_of_products(terms, self.known,
                                                     self.ascii))
    if kind == "avg_pool":
      # Eq. (40): each window's delta divided by its divisor.
      terms = [(float(coefficient), (delta_symbol(layer_number, p),))
               for p, members in enumerate(stage.pool.members)
               for m, coefficient in members if m == j]
      return terms, Equation(
          lhs, *sum_of_products(terms, self.known, self.ascii),
          note="" if terms else "no window covers it")
    # Eq. (56): the delta of the same position times the slope f'.
    delta = delta_symbol(layer_number, j)
    x_symbol = output_symbol(layer_number - 1, j)
    h_symbol = output_symbol(layer_number, j)
    d_name, x_name, h_name = (self.name(delta), self.name(x_symbol),
                              self.name(h_symbol))
    d, x, h = self.known[delta], self.known[x_symbol], self.known[h_symbol]
    t = self.times
    if kind == "relu":
      # Eq. (57): slope 1 where the input was positive, else 0.
      slope = 1.0 if x > 0 else 0.0
      terms = [(slope, (delta,))] if slope else []
      return terms, Equation(lhs, f"{d_name}{t}[{x_name} > 0]",
                              f"{factor(d)}{t}{number(slope)}", d * slope)
    if kind == "leaky_relu":
      # Eq. (58).
      slope = 1.0 if x >= 0 else stage.layer.slope
      ge = ">=" if self.ascii else "≥"
      note = f"{x_name} {ge} 0" if x >= 0 else f"{x_name} < 0"
      symbolic = d_name if x >= 0 else f"{d_name}{t}{number(slope)}"
      numeric = number(d) if x >= 0 else f"{factor(d)}{t}{number(slope)}"
      return [(slope, (delta,))], Equation(lhs, symbolic, numeric,
                                            d * slope, note=note)
    if kind == "sigmoid":
      # Eq. (60): f' = h (1 - h), with h the sigmoid's output.
      terms = [(1.0, (delta, h_symbol)), (-1.0, (delta, h_symbol, h_symbol))]
      return terms, Equation(
          lhs, f"{d_name}{t}{h_name}{t}(1 - {h_name})",
          f"{factor(d)}{t}{factor(h)}{t}(1 - {factor(h)})", d * h * (1 - h))
    # Eq. (59): tanh' = 1 - h^2.
    squared = "^2" if self.ascii else "²"
    terms = [(1.0, (delta,)), (-1.0, (delta, h_symbol, h_symbol))]
    return terms, Equation(
        lhs, f"{d_name}{t}(1 - {h_name}{squared})",
        f"{factor(d)}{t}(1 - {factor(h)}{squared})", d * (1 - h * h))

  def _weight_gradient_terms(self, stage: Stage, q: int) -> list:
    """Eq. (9): every output that weight q helped make, its delta times the
    value weight q multiplied there."""
    layer_number = stage.number
    return [(1.0, (delta_symbol(layer_number, g), output_symbol(layer_number - 1, v)))
            for g, taps in enumerate(stage.conv.taps)
            for q_, v in taps if q_ == q]

  # -- requests -------------------------------------------------------------

  def parse_grads(self, grads, wrong) -> list[str]:
    """Element names like ``w1_3``, in the order asked, without repeats."""
    conv_stages = [s for s in self.stages if s.conv is not None]
    if grads is None:
      names = [n for n in self.gradient_terms if not n.startswith("i")]
      wanted = []
    else:
      names, wanted = [], list(grads)
    for name in list(wanted) + [n for n in wrong if n not in wanted]:
      names.extend(self._expand_grad_name(name, conv_stages))
    return list(dict.fromkeys(names))

  def _expand_grad_name(self, name: str, conv_stages) -> list[str]:
    text = _formula._normalise(str(name).strip()).replace("^", "")
    if text.lower() == "all":
      return [n for n in self.gradient_terms if not n.startswith("i")]
    match = re.fullmatch(r"([wbi])(\d+)?(?:_(\d+))?", text)
    layers = [s.number for s in conv_stages]
    example = (f"w{layers[0]}_1, w{layers[0]}, " if layers else "") + "i1, i"
    if not match:
      raise ValueError(f"a gradient is named like {example} or all; got "
                       f"{name!r}.")
    letter, first, second = match.groups()
    if letter == "i":
      if second is not None:
        raise ValueError(f"{name!r}: an input is named i5, not i1_5.")
      count = math.prod(self.stages[0].input_shape)
      if first is None:
        return [f"i{j + 1}" for j in range(count)]
      if not 1 <= int(first) <= count:
        raise ValueError(f"{name!r} does not exist: the inputs are "
                         f"i1..i{count}.")
      return [f"i{int(first)}"]
    if first is None:
      raise ValueError(f"{name!r} needs a layer, like {letter}{layers[0]} "
                       f"(layers with weights: "
                       f"{', '.join(map(str, layers)) or 'none'}).")
    layer = int(first)
    if layer not in layers:
      raise ValueError(
          f"{name!r}: layer {layer} has no weights; the convolutions are "
          f"layer{'s' if len(layers) > 1 else ''} "
          f"{', '.join(map(str, layers)) or 'none'}.")
    stage = self.stages[layer - 1]
    if letter == "b":
      if second is not None or not stage.layer.bias:
        raise ValueError(f"{name!r}: layer {layer} has "
                         + ("one bias, b" + str(layer) if stage.layer.bias
                            else "no bias (write conv:...,bias to add one)")
                         + ".")
      return [f"b{layer}"]
    count = math.prod(stage.conv.kernel_shape)
    if second is None:
      return [f"w{layer}_{q + 1}" for q in range(count)]
    if not 1 <= int(second) <= count:
      raise ValueError(f"{name!r} does not exist: layer {layer}'s weights "
                       f"are w{layer}_1..w{layer}_{count}.")
    return [f"w{layer}_{int(second)}"]

  def parse_wrong(self, wrong: Mapping[str, str]) -> list:
    """``(gradient name, formula tree, label)`` for each wrong answer."""
    out = []
    for raw_name, formula in wrong.items():
      names = self._expand_grad_name(raw_name, [
          s for s in self.stages if s.conv is not None])
      if len(names) != 1:
        raise ValueError(f"a wrong answer is for one gradient, like w1_1; "
                         f"{raw_name!r} names {len(names)}.")
      name = names[0]
      if str(formula).strip().lower() == PRODUCT_OF_SUMS:
        tree = self._product_of_sums(name)
        label = "the product of sums"
      else:
        tree = _formula.parse(str(formula))
        unknown = [s for s in _formula.symbols_of(tree)
                   if s not in self.known]
        if unknown:
          raise ValueError(
              f"the formula {formula!r} for {raw_name} uses "
              f"{', '.join(sorted(s.text(True) for s in unknown))}, which "
              f"this network does not have.")
        label = "your formula"
      out.append((name, tree, label))
    return out

  def _product_of_sums(self, name: str):
    """``(x_1 + x_2 + ...)·(δ_1 + δ_2 + ...)`` over the same products as the
    true gradient ``δ_1·x_1 + δ_2·x_2 + ...``."""
    terms = self.gradient_terms[name]
    if not name.startswith(("w", "i")) or any(len(f) != 2 for _, f in terms):
      raise ValueError(
          f"the product of sums is defined for a weight or an input of a "
          f"convolution, whose gradient is a sum of products; {name} is not.")
    if not terms:
      raise ValueError(f"{name} has no products: its gradient is 0.")

    def total(trees):
      tree = trees[0]
      for other in trees[1:]:
        tree = ("add", tree, other)
      return tree

    deltas = total([("sym", f[0]) for _, f in terms])
    others = total([("sym", f[1]) for _, f in terms])
    return ("mul", others, deltas)

  # -- the check ------------------------------------------------------------

  def check(self) -> tuple[float, float, list[str]]:
    """Largest difference from ``jax.grad`` of the chain built from jaxconv,
    the scale of the numbers, and the names that differ."""
    stages, cost = self.stages, self.cost
    with jax.enable_x64(True):
      parameters = {"i": jnp.asarray(self.inputs["i"], jnp.float64)}
      for stage in stages:
        if stage.conv is not None:
          parameters[f"w{stage.number}"] = jnp.asarray(
              self.inputs[f"w{stage.number}"], jnp.float64)
          if stage.layer.bias:
            parameters[f"b{stage.number}"] = jnp.asarray(
                self.inputs[f"b{stage.number}"], jnp.float64)
      shifts = [jnp.zeros(s.output_shape, jnp.float64) for s in stages]

      def chain(parameters, shifts):
        x = parameters["i"]
        outputs = []
        for stage, shift in zip(stages, shifts):
          layer = stage.layer
          if layer.kind == "conv":
            geometry = stage.conv.geometry
            w = parameters[f"w{stage.number}"]
            x = jaxconv.conv_general_dilated(
                x[None, None], w[None, None], geometry.window_strides,
                geometry.padding, rhs_dilation=geometry.rhs_dilation)[0, 0]
            if layer.bias:
              x = x + parameters[f"b{stage.number}"]
          elif layer.kind in ("max_pool", "avg_pool"):
            pool = (jaxconv.max_pool if layer.kind == "max_pool"
                    else jaxconv.avg_pool)
            x = pool(x[..., None], stage.pool.window, stage.pool.strides,
                     stage.pool.padding)[..., 0]
          elif layer.kind == "relu":
            x = jaxconv.relu(x)
          elif layer.kind == "leaky_relu":
            x = jaxconv.leaky_relu(x, layer.slope)
          elif layer.kind == "sigmoid":
            x = jaxconv.sigmoid(x)
          else:
            x = jaxconv.tanh(x)
          # A zero shift, whose gradient is the delta of this output.
          x = x + shift
          outputs.append(x)
        flat = x.reshape(1, -1)
        if cost == "squared":
          value = 2.0 * jaxconv.mse(flat, jnp.asarray(
              self.inputs["y"], jnp.float64).reshape(1, -1))
        elif cost == "half-squared":
          value = jaxconv.mse(flat, jnp.asarray(
              self.inputs["y"], jnp.float64).reshape(1, -1))
        elif cost == "softmax-cross-entropy":
          value = jaxconv.softmax_cross_entropy(
              flat, jnp.asarray([self.inputs["y"] - 1], jnp.int32))
        else:
          value = jnp.sum(jnp.asarray(self.inputs[f"d{self.last}"],
                                      jnp.float64) * x)
        return value, (outputs, value)

      # One compiled program: far quicker than op-by-op dispatch.
      (parameter_grads, shift_grads), (outputs, value) = jax.jit(jax.grad(
          chain, argnums=(0, 1), has_aux=True))(parameters, shifts)
      library = {}
      for stage, output, delta in zip(stages, outputs, shift_grads):
        library[f"o{stage.number}"] = np.asarray(output).ravel()
        library[f"d{stage.number}"] = np.asarray(delta).ravel()
      library["d0"] = np.asarray(parameter_grads["i"]).ravel()
      for key, grad in parameter_grads.items():
        if key != "i":
          library[f"grad {key}"] = np.asarray(grad).ravel()
      if cost is not None:
        library["C"] = np.asarray([float(value)])
    ours = self.arrays_by_name()
    differences, scale, differing = [], 1.0, []
    for key, reference_values in library.items():
      mine = ours[key]
      difference = np.abs(mine - reference_values)
      differences.append(difference.max(initial=0.0))
      scale = max(scale, float(np.abs(reference_values).max(initial=0.0)))
      if differences[-1] > _CHECK_TOLERANCE * max(
          1.0, float(np.abs(reference_values).max(initial=0.0))):
        differing.append(key)
    return float(max(differences)), scale, differing

  def arrays_by_name(self) -> dict[str, np.ndarray]:
    """Our numbers, flat, keyed as in :meth:`check`."""
    out = {}
    for stage in self.stages:
      size = math.prod(stage.output_shape)
      out[f"o{stage.number}"] = np.asarray(
          [self.known[output_symbol(stage.number, j)] for j in range(size)])
    for layer in range(self.last + 1):
      size = math.prod(self.stages[layer].input_shape if layer < self.last
                       else self.stages[-1].output_shape)
      out[f"d{layer}"] = np.asarray(
          [self.known[delta_symbol(layer, j)] for j in range(size)])
    for stage in self.stages:
      if stage.conv is None:
        continue
      count = math.prod(stage.conv.kernel_shape)
      out[f"grad w{stage.number}"] = np.asarray(
          [self.gradient_values[f"w{stage.number}_{q + 1}"]
           for q in range(count)])
      if stage.layer.bias:
        out[f"grad b{stage.number}"] = np.asarray(
            [self.gradient_values[f"b{stage.number}"]])
    if self.cost is not None:
      out["C"] = np.asarray([self.known_cost])
    return out

  # -- the text -------------------------------------------------------------

  def explanation(self, seed: int) -> NetworkExplanation:
    max_difference, scale, differing = self.check()
    passed = not differing
    wrong_sections, wrong_answers = self.wrong_sections()
    sections = [self.header(), self.values_section(seed)]
    if not self.brief:
      sections.append(self.names_section())
    sections += [self.forward_section(), self.backward_section(),
                 self.gradients_section(), *wrong_sections,
                 self.check_section(max_difference, differing)]
    arrays = self.public_arrays()
    gradients = {}
    for stage in self.stages:
      if stage.conv is None:
        continue
      layer_number = stage.number
      gradients[f"w{layer_number}"] = np.asarray(
          [self.gradient_values[f"w{layer_number}_{q + 1}"]
           for q in range(math.prod(stage.conv.kernel_shape))]).reshape(
               stage.conv.kernel_shape)
      if stage.layer.bias:
        gradients[f"b{layer_number}"] = np.asarray(
            self.gradient_values[f"b{layer_number}"])
    gradients["i"] = arrays["d0"]
    return NetworkExplanation(
        sections=tuple(tuple(s) for s in sections), arrays=arrays,
        gradients=gradients, wrong_answers=wrong_answers,
        max_difference=max_difference, passed=passed)

  def public_arrays(self) -> dict:
    arrays = {}
    for name, value in self.inputs.items():
      arrays[name] = value if isinstance(value, int) else np.asarray(value)
    flat = self.arrays_by_name()
    for stage in self.stages:
      arrays[f"o{stage.number}"] = flat[f"o{stage.number}"].reshape(
          stage.output_shape)
    for layer in range(self.last + 1):
      shape = (self.stages[layer].input_shape if layer < self.last
               else self.stages[-1].output_shape)
      arrays[f"d{layer}"] = flat[f"d{layer}"].reshape(shape)
    if self.cost == "softmax-cross-entropy":
      arrays["p"] = np.asarray(
          [self.known[Symbol("p", None, j)] for j in range(self.classes)]
      ).reshape(self.stages[-1].output_shape)
    if self.cost is not None:
      arrays["C"] = np.asarray(self.known_cost)
    return arrays
