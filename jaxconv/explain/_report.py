"""The text of a network's explanation: header, values, forward pass, deltas,
gradients, wrong answers and the check, section by section."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

from jaxconv.explain import _formula
from jaxconv.explain._equations import (
    Equation,
    break_sum,
    count,
    indented,
    join,
    polynomial,
    side_by_side_wrapped,
    sum_of_products,
)
from jaxconv.explain._formula import Symbol
from jaxconv.explain._layers import Stage, delta_symbol, output_symbol
from jaxconv.explain._text import (
    grid,
    number,
    padding_text,
    shape_text,
    side_by_side,
    sized,
)

# Terms listed when a wrong answer adds or drops many.
TERMS_SHOWN = 12


class Report:
  """The text-writing half of the network explainer (a mix-in: the
  computing half sets the numbers these methods print)."""

  def layer_description(self, stage: Stage) -> str:
    layer = stage.layer
    o = self.array_name("o", stage.number)
    if layer.kind == "conv":
      geometry = stage.conv.geometry
      text = (f"convolution with {sized(stage.conv.kernel_shape, 'kernel')} "
              f"{self.array_name('w', stage.number)}")
      if layer.bias:
        text += f" and a bias {self.array_name('b', stage.number)}"
      if any(s != 1 for s in geometry.window_strides):
        text += f", stride {shape_text(geometry.window_strides)}"
      if any(p != (0, 0) for p in geometry.padding):
        text += f", padding {padding_text(geometry.padding)} (lo:hi)"
      if any(d != 1 for d in geometry.rhs_dilation):
        text += f", dilation {shape_text(geometry.rhs_dilation)}"
    elif layer.kind in ("max_pool", "avg_pool"):
      pool = stage.pool
      function = "max_pool" if layer.kind == "max_pool" else "avg_pool"
      text = (f"{'max' if layer.kind == 'max_pool' else 'average'} pooling, "
              f"window {shape_text(pool.window)}, stride "
              f"{shape_text(pool.strides)}")
      if layer.stride is None:
        text += f" (the default of jaxconv.{function})"
      if isinstance(pool.padding, str):
        if pool.padding != "VALID":
          text += f", padding {pool.padding}"
      elif any(p != (0, 0) for p in pool.padding):
        text += f", padding {padding_text(pool.padding)} (lo:hi)"
    elif layer.kind == "leaky_relu":
      text = f"leaky relu, slope {number(layer.slope)} below 0"
    else:
      text = layer.kind
    return (f"layer {stage.number}: {text}; output {o}, "
            f"{shape_text(stage.output_shape)}.")

  def cost_description(self) -> str:
    o = self.array_name("o", self.last)
    if self.cost == "squared":
      return (f"cost: C = sum of (o - y)^2 over the outputs o of {o}, y the "
              f"targets." if self.ascii else
              f"cost: C = Σ (o - y)² over the outputs o of {o}, y the "
              f"targets.")
    if self.cost == "half-squared":
      return (f"cost: C = 1/2 sum of (y - o)^2 over the outputs o of {o}, y "
              f"the targets (jaxconv.mse of one example)." if self.ascii else
              f"cost: C = ½ Σ (y - o)² over the outputs o of {o}, y the "
              f"targets (jaxconv.mse of one example).")
    if self.cost == "softmax-cross-entropy":
      return (f"cost: softmax cross-entropy, C = -log p_y, where p is the "
              f"softmax of {o} and y the correct class (numbered from 1).")
    d = self.array_name("d", self.last)
    partial = "d" if self.ascii else "∂"
    return (f"no cost: the last delta, {d} = {partial}C/{partial}{o}, is "
            f"given; C stands for whatever loss follows.")

  def header(self) -> list[str]:
    d = "d" if self.ascii else "∂"
    sup_l = "^l" if self.ascii else "ˡ"
    lines = [f"A network of {len(self.stages)} layer"
             f"{'s' if len(self.stages) > 1 else ''} on "
             f"{sized(self.stages[0].input_shape, 'input')} i, one example "
             f"and one channel:"]
    for stage in self.stages:
      lines += indented(self.layer_description(stage))
    lines += indented(self.cost_description())
    lines.append(f"Every array is numbered row by row from 1. "
                 f"{self.array_name('d')}{sup_l} = {d}C/{d}o{sup_l} is the delta "
                 f"of layer l's output.")
    return lines

  def value_grid(self, values, shape) -> list[str]:
    values = np.ravel(values)
    if len(shape) > 2:
      return [" ".join(number(v) for v in values)]
    return grid([number(v) for v in values], shape or (1,))

  def named_grid(self, name: str, values, shape,
                 indent: str = "    ") -> list[str]:
    """``o¹ = 0.29 0.35`` with the further rows under the first."""
    rows = self.value_grid(values, shape)
    head = f"{indent}{name} = "
    return [head + rows[0]] + [" " * len(head) + row for row in rows[1:]]

  def values_section(self, seed: int) -> list[str]:
    def label(name):
      if name in ("i", "y"):
        return name
      return self.array_name(name[0], int(name[1:]))

    given = [label(n) for n in self.shapes if n in self.given]
    drawn = [label(n) for n in self.shapes if n not in self.given]
    parts = []
    if given:
      parts.append(f"{join(given)} given")
    if drawn:
      parts.append(f"{join(drawn)} drawn at random (seed {seed}, two "
                   f"decimals)")
    lines = ["Values: " + "; ".join(parts) + "."]
    blocks = []
    for name, shape in self.shapes.items():
      value = self.inputs[name]
      if name == "y" and self.classes is not None:
        blocks.append(("y (class)", [str(value)]))
        continue
      blocks.append((label(name), self.value_grid(value, shape)))
    return lines + side_by_side_wrapped(blocks)

  def names_section(self) -> list[str]:
    if len(self.stages[0].input_shape) > 2:
      return []
    blocks = [("i", grid([self.name(Symbol("i", None, j)) for j in range(
        math.prod(self.stages[0].input_shape))], self.stages[0].input_shape))]
    for stage in self.stages:
      layer_number = stage.number
      if stage.conv is not None:
        blocks.append((self.array_name("w", layer_number), grid(
            [self.name(Symbol("w", layer_number, q))
             for q in range(math.prod(stage.conv.kernel_shape))],
            stage.conv.kernel_shape)))
      blocks.append((self.array_name("o", layer_number), grid(
          [self.name(output_symbol(layer_number, j))
           for j in range(math.prod(stage.output_shape))],
          stage.output_shape)))
    return ["Where each value sits:"] + side_by_side_wrapped(blocks)

  def stage_rule(self, stage: Stage) -> str:
    """The forward rule of a layer, with its equation number."""
    kind = stage.layer.kind
    return {
        "conv": "convolution (eq. 5): each output is the sum of the weights "
                "times the values under them",
        "max_pool": "max pooling (eqs. 33-34): each output is the largest "
                    "value of its window, the first one if several are equal",
        "avg_pool": "average pooling (eq. 38): each output is the sum of its "
                    "window divided by the window's size",
        "relu": "relu (eq. 55): max(0, x) for each value",
        "leaky_relu": "leaky relu (eq. 55): x where x >= 0, "
                      f"{number(stage.layer.slope)}x elsewhere",
        "sigmoid": "sigmoid (eq. 55): 1/(1 + e^(-x)) for each value",
        "tanh": "tanh (eq. 55), for each value",
    }[kind]

  def forward_section(self) -> list[str]:
    lines = ["Forward"]
    for stage in self.stages:
      lines += indented(f"layer {stage.number}, {self.stage_rule(stage)}:")
      if self.brief:
        values = [e.value for e in self.forward_lines[stage.number]]
        lines += self.named_grid(self.array_name("o", stage.number), values,
                                 stage.output_shape)
      else:
        for equation in self.forward_lines[stage.number]:
          lines += equation.lines()
    if self.cost is not None:
      rule = {"squared": "the squared differences, summed",
              "half-squared": "half the sum of the squared differences "
                              "(eq. 61)",
              "softmax-cross-entropy": "the softmax, then minus the log of "
                                       "the correct class's probability "
                                       "(eqs. 64-65)"}[self.cost]
      lines += indented(f"the cost, {rule}:")
      for equation in self.cost_lines:
        lines += equation.lines()
    return lines

  def delta_rule(self, stage: Stage) -> str:
    kind = stage.layer.kind
    below = self.array_name("d", stage.number - 1)
    here = self.array_name("d", stage.number)
    return {
        "conv": f"each {below} collects, from every output that read its "
                f"value, that output's delta times the weight that read it "
                f"(eq. 12)",
        "max_pool": f"each {here} goes back to the largest value of its "
                    f"window (eq. 36); the other values of the window get "
                    f"nothing",
        "avg_pool": f"each {here} is spread evenly over its window, divided "
                    f"by the window's size (eq. 40)",
        "relu": f"{below} is {here} times the slope, 1 where the value was "
                f"positive and 0 elsewhere (eqs. 56-57)",
        "leaky_relu": f"{below} is {here} times the slope, 1 or "
                      f"{number(stage.layer.slope)} (eqs. 56, 58)",
        "sigmoid": f"{below} is {here} times the slope h(1 - h), with h the "
                   f"sigmoid's output (eqs. 56, 60)",
        "tanh": f"{below} is {here} times the slope 1 - h^2, with h the "
                f"output (eqs. 56, 59)",
    }[kind]

  def backward_section(self) -> list[str]:
    d = "d" if self.ascii else "∂"
    sup_l = "^l" if self.ascii else "ˡ"
    lines = [f"Backward: the deltas {self.array_name('d')}{sup_l} = "
             f"{d}C/{d}o{sup_l}, from the cost down"]
    last = self.array_name("d", self.last)
    squared = "^2" if self.ascii else "²"
    lines += indented({
        "squared": f"the cost: {last} = 2(o - y), the derivative of "
                   f"(o - y){squared}:",
        "half-squared": f"the cost: {last} = o - y, the derivative of "
                        f"(y - o){squared}/2 (eq. 62):",
        "softmax-cross-entropy": f"the cost: {last} = p - 1 for the correct "
                                 f"class and p for the others (eq. 66):",
        None: "given:",
    }[self.cost])
    if self.cost is None or self.brief:
      lines += self.named_grid(
          last, [e.value for e in self.delta_lines[self.last]],
          self.stages[-1].output_shape)
    else:
      for equation in self.delta_lines[self.last]:
        lines += equation.lines()
    for stage in reversed(self.stages[1:]):
      lines += indented(f"back through layer {stage.number}, "
                         f"{self.delta_rule(stage)}:")
      equations = self.delta_lines[stage.number - 1]
      if stage.layer.kind == "max_pool":
        lines += self.routing_picture(stage)
        if not self.brief:
          lines += self.winner_lines(stage, equations)
      elif self.brief:
        lines += self.named_grid(self.array_name("d", stage.number - 1),
                                 [e.value for e in equations],
                                 stage.input_shape)
      else:
        for equation in equations:
          lines += equation.lines()
    return lines

  def winner_lines(self, stage: Stage, equations) -> list[str]:
    lines = []
    winners = self.winners[stage.number]
    for j, equation in enumerate(equations):
      won = [p for p, w in enumerate(winners) if w == j]
      if won:
        outputs = join([self.name(output_symbol(stage.number, p))
                         for p in won])
        lines += dataclasses.replace(
            equation, note=f"the largest value of {outputs}'s window").lines()
    below = self.array_name("d", stage.number - 1)
    lines += indented(f"every other {below} is 0: its value is the largest "
                       f"of no window.", "    ", "      ")
    return lines

  def routing_picture(self, stage: Stage) -> list[str]:
    """The pool's input values, each window's largest starred, and the
    deltas below the pool: 0 except at the stars."""
    shape = stage.input_shape
    if len(shape) > 2:
      return []
    layer_number = stage.number
    size = math.prod(shape)
    winners = self.winners[layer_number]
    wins = [winners.count(j) for j in range(size)]
    values = [self.known[output_symbol(layer_number - 1, j)] for j in range(size)]
    deltas = [self.known[delta_symbol(layer_number - 1, j)] for j in range(size)]
    left = [number(v) + ("*" if wins[j] == 1 else f"*{wins[j]}" if wins[j]
                         else " ") for j, v in enumerate(values)]
    right = [number(v) for v in deltas]
    pool = stage.pool
    unpadded = (pool.padding == "VALID" if isinstance(pool.padding, str)
                else all(tuple(p) == (0, 0) for p in pool.padding))
    tiled = pool.strides == pool.window and unpadded
    rows = shape if len(shape) == 2 else (1, shape[0])
    window = pool.window if len(shape) == 2 else (1, pool.window[0])
    blocks = []
    for title, cells in ((f"{self.array_name('o', layer_number - 1)}, the window's "
                          f"largest starred", left),
                         (f"{self.array_name('d', layer_number - 1)}", right)):
      width = max(len(c) for c in cells)
      block = []
      for r in range(rows[0]):
        parts = []
        for c in range(rows[1]):
          if tiled and c and c % window[1] == 0:
            parts.append("|")
          parts.append(cells[r * rows[1] + c].rjust(width))
        row = " ".join(parts)
        if tiled and r and r % window[0] == 0:
          block.append("".join("+" if ch == "|" else "-" for ch in row))
        block.append(row)
      blocks.append((title, block))
    footnote = []
    if any(w > 1 for w in wins):
      footnote = indented("(*2: the largest of two windows, which both send "
                           "their delta there.)", "    ", "     ")
    return ["  " + line for line in side_by_side(blocks)] + footnote

  def gradients_section(self) -> list[str]:
    d = "d" if self.ascii else "∂"
    lines = ["Gradients"]
    current = None
    for name in self.requested:
      letter = name[0]
      layer = None if letter == "i" else int(re.match(r"[wb](\d+)", name)[1])
      if (letter == "i", layer) != current:
        current = (letter == "i", layer)
        if letter == "i":
          rule = ("the input: each i collects, from every output of layer 1 "
                  "that read it, that output's delta times the weight that "
                  "read it (eq. 12):"
                  if self.stages[0].layer.kind == "conv" else
                  f"the input: {self.delta_rule(self.stages[0])}:")
        else:
          rule = (f"layer {layer}: each weight of "
                  f"{self.array_name('w', layer)} collects, from every output "
                  f"it helped make, that output's delta times the value it "
                  f"multiplied there (eq. 9)"
                  + ("; the bias collects every delta (eq. 11):"
                     if self.stages[layer - 1].layer.bias else ":"))
        lines += indented(rule)
      symbol = self._gradient_symbol(name)
      lhs = f"{d}C/{d}{self.name(symbol)}"
      symbolic, numeric, value = sum_of_products(
          self.gradient_terms[name], self.known, self.ascii)
      note = ("no window reads it" if letter == "i"
              and not self.gradient_terms[name] else "")
      lines += Equation(lhs, symbolic, numeric, value, note).lines()
    # A whole kernel asked for: its gradient as an array too.
    for stage in self.stages:
      if stage.conv is None:
        continue
      layer_number = stage.number
      names = [f"w{layer_number}_{q + 1}" for q in range(math.prod(
          stage.conv.kernel_shape))]
      if len(names) > 1 and all(n in self.requested for n in names):
        kernel = self.array_name("w", layer_number)
        lines += indented(f"the whole gradient of {kernel}, laid out as "
                           f"the kernel:")
        lines += self.named_grid(
            f"{d}C/{d}{kernel}", [self.gradient_values[n] for n in names],
            stage.conv.kernel_shape)
    return lines if len(lines) > 1 else []

  @staticmethod
  def _gradient_symbol(name: str) -> Symbol:
    if name.startswith("i"):
      return Symbol("i", None, int(name[1:]) - 1)
    if name.startswith("b"):
      return Symbol("b", int(name[1:]))
    layer, index = name[1:].split("_")
    return Symbol("w", int(layer), int(index) - 1)

  # -- wrong answers --------------------------------------------------------

  def wrong_sections(self) -> tuple[list[list[str]], dict]:
    sections, answers = [], {}
    d = "d" if self.ascii else "∂"
    for name, tree, label in self.wrong:
      lhs = f"{d}C/{d}{self.name(self._gradient_symbol(name))}"
      true_value = self.gradient_values[name]
      wrong_value = _formula.evaluate(tree, self.known)
      answers[name] = (wrong_value, true_value)
      factors = _formula.render_factors(tree, self.known, self.ascii)
      lines = [f"A tempting wrong answer for {lhs}, {label}:"]
      lines += Equation("", _formula.render(tree, self.ascii),
                         _formula.render(tree, self.ascii, self.known),
                         wrong_value,
                         steps=(factors,) if factors else ()).lines("  ")
      symbolic, _, _ = sum_of_products(self.gradient_terms[name],
                                        self.known, self.ascii)
      equation = "eq. 9" if name.startswith("w") else (
          "eq. 11" if name.startswith("b") else "eq. 12")
      lines.append(f"The true gradient ({equation}):")
      lines += Equation(lhs, symbolic, symbolic, true_value).lines()
      lines += self.term_comparison(name, tree, label, wrong_value,
                                    true_value)
      sections.append(lines)
    return sections, answers

  def term_comparison(self, name, tree, label, wrong_value,
                      true_value) -> list[str]:
    verdict = (f"The wrong answer is off by "
               f"{number(wrong_value - true_value)}."
               if not math.isclose(wrong_value, true_value, rel_tol=1e-9,
                                   abs_tol=1e-12) else
               "It has the true gradient's value.")
    wrong_polynomial = _formula.expand(tree)
    if wrong_polynomial is None:
      return [verdict, "It is not a sum of products (it divides by a value, "
              "or has a power that is not a whole number), so it is not "
              "compared term by term."]
    wrong_polynomial = _formula.cleaned(wrong_polynomial)
    used = _formula.symbols_of(tree)
    kept_layers = {s.layer for s in used if s.letter == "d"}
    # The true gradient in the symbols the formula uses: the deltas of the
    # layers it does not mention are replaced by what they stand for (the
    # rules above), down to the cost.
    true_polynomial = polynomial(self.gradient_terms[name])
    expanded_layers = set()
    while True:
      replaceable = {s for term in true_polynomial for s, _ in term
                     if s.letter == "d" and s.layer not in kept_layers
                     and s in self.delta_terms}
      if not replaceable:
        break
      expanded_layers |= {s.layer for s in replaceable}
      true_polynomial = _formula.cleaned(_formula.substitute(
          true_polynomial, {s: polynomial(self.delta_terms[s])
                            for s in replaceable}))
    difference = _formula.cleaned(_formula.add(wrong_polynomial,
                                               true_polynomial, -1.0))
    added = {t: c for t, c in difference.items() if t not in true_polynomial}
    dropped = {t: -c for t, c in difference.items()
               if t not in wrong_polynomial}
    changed = {t: c for t, c in difference.items()
               if t in true_polynomial and t in wrong_polynomial}
    lines = [verdict]
    if expanded_layers:
      written = join([self.array_name("d", layer)
                       for layer in sorted(expanded_layers, reverse=True)])
      lines.append(f"Multiplied out in the symbols it uses ({written} "
                   f"written out by the rules above), the true gradient is "
                   f"a sum of {count(true_polynomial, 'product')}, {label} "
                   f"of {len(wrong_polynomial)}.")
    else:
      lines.append(f"Multiplied out, the true gradient is a sum of "
                   f"{count(true_polynomial, 'product')}, {label} of "
                   f"{len(wrong_polynomial)}.")
    if not difference:
      lines.append("They are the same products: the formula is right.")
      return lines
    listing = []
    if added:
      why = ""
      if label == "the product of sums":
        symbol = self.name(self._gradient_symbol(name))
        why = (f"; each pairs a value that {symbol} multiplied with the delta "
               f"of an output for which {symbol} multiplied another value"
               if name.startswith("w") else
               f"; each pairs a weight that read {symbol} with the delta of "
               f"an output for which that weight read another input")
      total = _formula.evaluate_polynomial(added, self.known)
      listing.append(f"It adds {count(added, 'product')}, together "
                     f"{number(total)}{why}:")
      listing += break_sum("    ", _formula.polynomial_text(
          added, self.ascii, TERMS_SHOWN), "    ")
    if dropped:
      total = _formula.evaluate_polynomial(dropped, self.known)
      listing.append(f"It drops {count(dropped, 'product')} of the true "
                     f"gradient, together {number(total)}:")
      listing += break_sum("    ", _formula.polynomial_text(
          dropped, self.ascii, TERMS_SHOWN), "    ")
    if changed:
      listing.append(f"It has {count(changed, 'product')} of the true "
                     f"gradient with another coefficient; the excess is:")
      listing += break_sum("    ", _formula.polynomial_text(
          changed, self.ascii, TERMS_SHOWN), "    ")
    if added and not dropped and not changed:
      listing.append("It drops none.")
    elif dropped and not added and not changed:
      listing.append("It adds none.")
    return lines + listing

  def check_section(self, max_difference, differing) -> list[str]:
    functions = []
    kinds = [s.layer.kind for s in self.stages]
    for kind, function in (("conv", "conv_general_dilated"),
                           ("relu", "relu"), ("leaky_relu", "leaky_relu"),
                           ("sigmoid", "sigmoid"), ("tanh", "tanh"),
                           ("max_pool", "max_pool"),
                           ("avg_pool", "avg_pool")):
      if kind in kinds:
        functions.append(f"jaxconv.{function}")
    if self.cost in ("squared", "half-squared"):
      functions.append("jaxconv.mse")
    elif self.cost == "softmax-cross-entropy":
      functions.append("jaxconv.softmax_cross_entropy")
    outputs = sum(math.prod(s.output_shape) for s in self.stages)
    deltas = sum(math.prod(s.output_shape) for s in self.stages)
    inputs = math.prod(self.stages[0].input_shape)
    weights = sum(math.prod(s.conv.kernel_shape) + s.layer.bias
                  for s in self.stages if s.conv is not None)
    if differing:
      return [f"Check FAILED: jax.grad of the same chain built from "
              f"{join(functions)} (float64) disagrees with these numbers at "
              f"{join(differing)}; the largest difference is "
              f"{max_difference:.1e}."]
    counted = join([count(outputs, "layer output")]
                    + (["the cost"] if self.cost else [])
                    + [count(deltas, "delta"),
                       count(weights, "weight gradient"),
                       count(inputs, "input gradient")])
    return [f"Check passed: jax.grad of the same chain built from "
            f"{join(functions)} (float64) gives the same {counted}, up to "
            f"a largest difference of {max_difference:.1e}."]
