"""Symbols of a small network, formulas written with them, and polynomials.

A formula such as ``(i1+i2+i4+i5)*(d1_1+d1_2+d1_3+d1_4)`` is parsed into a
small tree that can be evaluated with numbers and multiplied out into a sum
of monomials, so that two formulas can be compared term by term: which
products one has and the other lacks.

Names: ``i5`` (input 5), ``w1_3`` (weight 3 of layer 1), ``b1`` (the bias
of layer 1), ``o2_1`` (output 1 of layer 2), ``d1_2`` (the delta
``∂C/∂o¹₂``), ``y1`` (target 1), ``p2`` (softmax probability 2); everything
is numbered from 1. The printed forms are accepted too: ``w^1_3``, ``w¹₃``,
``δ¹₂``, ``i₅``.
"""

from __future__ import annotations

import dataclasses
import math
import re

from jaxconv.explain._text import number, subscript, superscript

# Letters of the names with a layer (``w1_3``) and of those without (``i5``).
LAYERED = "wodb"
UNLAYERED = "iyp"
_LETTER_ORDER = "dwbopiy"  # the order of the factors within a printed product
_GREEK = {"d": "δ"}


@dataclasses.dataclass(frozen=True)
class Symbol:
  """A named scalar of the network.

  Attributes:
    letter: ``i`` input, ``w`` weight, ``b`` bias, ``o`` layer output, ``d``
      delta, ``y`` target, ``p`` softmax probability.
    layer: the layer (from 1) for ``w``, ``b``, ``o``, ``d``; ``None``
      otherwise.
    index: the position, from 0, row by row; ``None`` for ``b``.
  """

  letter: str
  layer: int | None = None
  index: int | None = None

  def text(self, ascii: bool = False) -> str:
    """``w¹₃`` (or ``w^1_3`` with ``ascii``)."""
    if ascii:
      name = self.letter
      if self.layer is not None:
        name += f"^{self.layer}"
      if self.index is not None:
        name += f"_{self.index + 1}"
      return name
    name = _GREEK.get(self.letter, self.letter)
    if self.layer is not None:
      name += superscript(self.layer)
    if self.index is not None:
      name += subscript(self.index + 1)
    return name

  def sort_key(self):
    return (_LETTER_ORDER.index(self.letter), -(self.layer or 0),
            self.index or 0)


# ---------------------------------------------------------------------------
# Parsing.
# ---------------------------------------------------------------------------

_SUPERSCRIPTS = "⁰¹²³⁴⁵⁶⁷⁸⁹"
_SUBSCRIPTS = "₀₁₂₃₄₅₆₇₈₉"
_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<number>\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)
  | (?P<layered>[wodb])\^?(?P<layer>\d+)(?:_(?P<position>\d+))?
  | (?P<unlayered>[iyp])_?(?P<index>\d+)
  | (?P<operator>\*\*|[-+*/^()])
""", re.X)


def _normalise(text: str) -> str:
  """Printed forms to typed ones: ``δ¹₂ − y₁`` to ``d^1_2 - y_1``."""
  text = (text.replace("δ", "d").replace("−", "-").replace("·", "*")
          .replace("×", "*").replace("⋅", "*").replace("÷", "/"))
  text = re.sub(f"[{_SUPERSCRIPTS}]+", lambda m: "^" + m.group().translate(
      str.maketrans(_SUPERSCRIPTS, "0123456789")), text)
  text = re.sub(f"[{_SUBSCRIPTS}]+", lambda m: "_" + m.group().translate(
      str.maketrans(_SUBSCRIPTS, "0123456789")), text)
  return text


def _tokens(text: str) -> list[tuple[str, object]]:
  tokens = []
  position = 0
  while position < len(text):
    match = _TOKEN.match(text, position)
    if not match:
      raise ValueError(
          f"cannot read {text[position:position + 10]!r} in the formula "
          f"{text!r}: names are like i5, w1_3, b1, o2_1, d1_2, y1, p2; "
          f"operators + - * / ^ and parentheses.")
    position = match.end()
    kind = match.lastgroup
    if kind == "space":
      continue
    if kind == "number":
      tokens.append(("number", float(match.group("number"))))
    elif match.group("layered"):
      letter = match.group("layered")
      layer = int(match.group("layer"))
      index = match.group("position")
      if letter == "b":
        if index is not None:
          raise ValueError(f"{match.group()!r}: a layer has one bias, "
                           f"written b{layer}.")
        tokens.append(("symbol", Symbol("b", layer)))
      else:
        if index is None:
          raise ValueError(
              f"{match.group()!r} needs a layer and a position, like "
              f"{letter}{layer}_1 ({letter} of layer {layer}, position 1).")
        tokens.append(("symbol", Symbol(letter, layer, int(index) - 1)))
    elif match.group("unlayered"):
      tokens.append(("symbol", Symbol(match.group("unlayered"), None,
                                      int(match.group("index")) - 1)))
    else:
      operator = match.group("operator")
      tokens.append(("operator", "^" if operator == "**" else operator))
  return tokens


class _Parser:
  """Recursive descent: sums of products of powers; ``2(a + b)`` is a
  product."""

  def __init__(self, text: str):
    self.text = text
    self.tokens = _tokens(_normalise(text))
    self.position = 0

  def peek(self):
    if self.position < len(self.tokens):
      return self.tokens[self.position]
    return (None, None)

  def take(self):
    token = self.peek()
    self.position += 1
    return token

  def fail(self, what: str):
    raise ValueError(f"cannot read the formula {self.text!r}: {what}.")

  def parse(self):
    if not self.tokens:
      self.fail("it is empty")
    tree = self.sum()
    if self.position != len(self.tokens):
      self.fail(f"unexpected {self.peek()[1]!r}")
    return tree

  def sum(self):
    tree = self.product()
    while self.peek() in (("operator", "+"), ("operator", "-")):
      operator = self.take()[1]
      tree = ("add" if operator == "+" else "sub", tree, self.product())
    return tree

  def product(self):
    tree = self.unary()
    while True:
      kind, value = self.peek()
      if (kind, value) in (("operator", "*"), ("operator", "/")):
        self.take()
        tree = ("mul" if value == "*" else "div", tree, self.unary())
      elif kind in ("number", "symbol") or (kind, value) == ("operator", "("):
        tree = ("mul", tree, self.power())  # implicit: 2(o - y)
      else:
        return tree

  def unary(self):
    if self.peek() == ("operator", "-"):
      self.take()
      return ("neg", self.unary())
    if self.peek() == ("operator", "+"):
      self.take()
      return self.unary()
    return self.power()

  def power(self):
    base = self.atom()
    if self.peek() == ("operator", "^"):
      self.take()
      return ("pow", base, self.unary())
    return base

  def atom(self):
    kind, value = self.take()
    if kind == "number":
      return ("num", value)
    if kind == "symbol":
      return ("sym", value)
    if (kind, value) == ("operator", "("):
      tree = self.sum()
      if self.take() != ("operator", ")"):
        self.fail("a parenthesis is not closed")
      return tree
    self.fail("it ends too early" if kind is None else f"unexpected {value!r}")


def parse(text: str):
  """The tree of a formula: ``("add", a, b)``, ``("sym", Symbol)``, ...

  Raises:
    ValueError: the text is not a formula of the accepted names.
  """
  return _Parser(text).parse()


def symbols_of(tree) -> set[Symbol]:
  """Every symbol the formula uses."""
  if tree[0] == "sym":
    return {tree[1]}
  if tree[0] == "num":
    return set()
  return set().union(*(symbols_of(t) for t in tree[1:]))


def evaluate(tree, values: dict[Symbol, float]) -> float:
  """The formula's value for the given symbol values."""
  kind = tree[0]
  if kind == "num":
    return tree[1]
  if kind == "sym":
    return values[tree[1]]
  if kind == "neg":
    return -evaluate(tree[1], values)
  a, b = evaluate(tree[1], values), evaluate(tree[2], values)
  if kind == "add":
    return a + b
  if kind == "sub":
    return a - b
  if kind == "mul":
    return a * b
  if kind == "div":
    return a / b if b != 0 else math.copysign(math.inf, a) if a else math.nan
  return a ** b


# Binding strength of each node; a negative number or a negation binds like
# a sum's term, so that it is parenthesised inside a product or a power.
_PRECEDENCE = {"add": 1, "sub": 1, "neg": 1.5, "mul": 2, "div": 2, "pow": 4,
               "atom": 5}


def render(tree, ascii: bool = False, values=None) -> str:
  """The formula in the printed notation, or with ``values`` substituted."""
  times = "*" if ascii else "·"
  operators = {"add": " + ", "sub": " - ", "mul": times, "div": "/"}

  def text(node, parent=None, side=None) -> str:
    kind = node[0]
    strength = _PRECEDENCE.get(kind, 5)
    if kind in ("num", "sym"):
      if kind == "num":
        out = number(node[1])
      elif values is None:
        out = node[1].text(ascii)
      else:
        out = number(values[node[1]])
      strength = _PRECEDENCE["neg" if out.startswith("-") else "atom"]
    elif kind == "neg":
      out = "-" + text(node[1], "neg", "right")
    elif kind == "pow":
      out = text(node[1], "pow", "left") + "^" + text(node[2], "pow", "right")
    else:
      operator = operators[kind]
      right = text(node[2], kind, "right")
      if kind in ("add", "sub") and node[2][0] in ("num", "sym") and \
          right.startswith("-"):
        # a + -0.5 is written a - 0.5.
        operator = " - " if kind == "add" else " + "
        right = right[1:]
      out = text(node[1], kind, "left") + operator + right
    if parent is None:
      return out
    bound = _PRECEDENCE[parent]
    needs_parentheses = strength < bound or (strength == bound and (
        (side == "right" and parent in ("sub", "div"))
        or (side == "left" and parent == "pow")))
    return f"({out})" if needs_parentheses else out

  return text(tree)


def render_factors(tree, values, ascii: bool = False) -> str | None:
  """A product with each factor replaced by its value, ``1.2·(-1.008)``;
  ``None`` when the formula is not a product of sums (nothing to add)."""
  times = "*" if ascii else "·"
  if tree[0] not in ("mul", "div"):
    return None
  compound = False

  def text(node) -> str:
    nonlocal compound
    if node[0] in ("mul", "div"):
      operator = times if node[0] == "mul" else "/"
      right = text(node[2])
      if node[0] == "div" and node[2][0] in ("mul", "div"):
        right = f"({right})"
      return text(node[1]) + operator + right
    compound = compound or node[0] not in ("num", "sym")
    value = number(evaluate(node, values))
    return f"({value})" if value.startswith("-") else value

  out = text(tree)
  return out if compound else None


# ---------------------------------------------------------------------------
# Polynomials: {monomial: coefficient}, a monomial being a sorted tuple of
# (symbol, power) pairs; the empty monomial is the constant term.
# ---------------------------------------------------------------------------

Monomial = tuple[tuple[Symbol, int], ...]
Polynomial = dict[Monomial, float]


def monomial(*factors: Symbol) -> Monomial:
  """The monomial of a product of symbols (repeats become powers)."""
  powers: dict[Symbol, int] = {}
  for symbol in factors:
    powers[symbol] = powers.get(symbol, 0) + 1
  return tuple(sorted(powers.items(), key=lambda item: item[0].sort_key()))


def _multiply_monomials(a: Monomial, b: Monomial) -> Monomial:
  powers = dict(a)
  for symbol, power in b:
    powers[symbol] = powers.get(symbol, 0) + power
  return tuple(sorted(powers.items(), key=lambda item: item[0].sort_key()))


def add(a: Polynomial, b: Polynomial, scale: float = 1.0) -> Polynomial:
  """``a + scale * b``."""
  out = dict(a)
  for term, coefficient in b.items():
    out[term] = out.get(term, 0.0) + scale * coefficient
  return out


def multiply(a: Polynomial, b: Polynomial) -> Polynomial:
  out: Polynomial = {}
  for term_a, coefficient_a in a.items():
    for term_b, coefficient_b in b.items():
      term = _multiply_monomials(term_a, term_b)
      out[term] = out.get(term, 0.0) + coefficient_a * coefficient_b
  return out


def expand(tree) -> Polynomial | None:
  """The formula multiplied out, or ``None`` when it is not a polynomial
  (division by a symbol, a power that is not a small whole number)."""
  kind = tree[0]
  if kind == "num":
    return {(): tree[1]}
  if kind == "sym":
    return {monomial(tree[1]): 1.0}
  if kind == "neg":
    inner = expand(tree[1])
    return None if inner is None else {t: -c for t, c in inner.items()}
  a, b = expand(tree[1]), expand(tree[2])
  if a is None or b is None:
    return None
  if kind == "add":
    return add(a, b)
  if kind == "sub":
    return add(a, b, -1.0)
  if kind == "mul":
    return multiply(a, b)
  constant = b.get((), 0.0) if set(b) <= {()} else None
  if kind == "div":
    if not constant:
      return None
    return {t: c / constant for t, c in a.items()}
  # A power: a whole exponent from 0 to 8.
  if constant is None or constant != int(constant) or not 0 <= constant <= 8:
    return None
  out: Polynomial = {(): 1.0}
  for _ in range(int(constant)):
    out = multiply(out, a)
  return out


def substitute(polynomial: Polynomial,
               replacements: dict[Symbol, Polynomial]) -> Polynomial:
  """Every symbol with a replacement replaced by it (once, not again)."""
  out: Polynomial = {}
  for term, coefficient in polynomial.items():
    product: Polynomial = {(): coefficient}
    for symbol, power in term:
      factor_polynomial = replacements.get(symbol, {monomial(symbol): 1.0})
      for _ in range(power):
        product = multiply(product, factor_polynomial)
    out = add(out, product)
  return out


def cleaned(polynomial: Polynomial, tolerance: float = 1e-12) -> Polynomial:
  """Without the terms whose coefficient cancelled to (nearly) zero."""
  return {t: c for t, c in polynomial.items() if abs(c) > tolerance}


def evaluate_polynomial(polynomial: Polynomial,
                        values: dict[Symbol, float]) -> float:
  return float(sum(c * math.prod(values[s] ** p for s, p in t)
                   for t, c in polynomial.items()))


def term_text(term: Monomial, coefficient: float, ascii: bool = False) -> str:
  """One product: ``δ¹₂·i₁``, ``2·w²₁·i₁``, ``-o²₁²``, ``i₁/4``."""
  times = "*" if ascii else "·"
  names = []
  for symbol, power in term:
    names.append(symbol.text(ascii) + ("" if power == 1 else (
        f"^{power}" if ascii else superscript(power))))
  body = times.join(names)
  magnitude = abs(coefficient)
  sign = "-" if coefficient < 0 else ""
  if not body:
    return sign + number(magnitude)
  if math.isclose(magnitude, 1.0, rel_tol=1e-12):
    return sign + body
  reciprocal = 1.0 / magnitude
  if math.isclose(reciprocal, round(reciprocal), rel_tol=1e-12):
    return f"{sign}{body}/{round(reciprocal)}"
  return f"{sign}{number(magnitude)}{times}{body}"


def polynomial_text(polynomial: Polynomial, ascii: bool = False,
                    limit: int | None = None) -> str:
  """``a + b - c``; with ``limit``, the first terms and a count of the rest."""
  items = list(polynomial.items())
  shown = items if limit is None else items[:limit]
  if not shown:
    return "0"
  text = term_text(*shown[0], ascii)
  for term, coefficient in shown[1:]:
    if coefficient < 0:
      text += " - " + term_text(term, -coefficient, ascii)
    else:
      text += " + " + term_text(term, coefficient, ascii)
  if len(items) > len(shown):
    text += f" + ... ({len(items) - len(shown)} more)"
  return text
