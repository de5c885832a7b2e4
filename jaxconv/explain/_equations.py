"""Equations as they are printed: ``lhs = symbols = numbers = value``, laid out
on the page, and sums of products written and evaluated from the same
terms."""

from __future__ import annotations

import dataclasses
import math
import textwrap
from collections.abc import Sequence

from jaxconv.explain import _formula
from jaxconv.explain._text import WIDTH, factor, number, side_by_side


@dataclasses.dataclass(frozen=True)
class Equation:
  """``lhs = symbols = numbers = value``; ``steps`` are the middle parts."""

  lhs: str
  symbolic: str
  numeric: str
  value: float
  note: str = ""
  steps: tuple[str, ...] = ()

  def lines(self, indent: str = "    ") -> list[str]:
    """On one line if it fits; otherwise each part on a line of its own,
    under the ``=``, long sums broken between their terms."""
    result = number(self.value)
    parts = []
    for part in (self.symbolic, self.numeric, *self.steps, result):
      if part not in parts:
        parts.append(part)
    note = f"   ({self.note})" if self.note else ""
    head = f"{indent}{self.lhs} = " if self.lhs else f"{indent}  "
    one_line = head + " = ".join(parts) + note
    if len(one_line) <= WIDTH:
      return [one_line]
    continuation = (indent + " " * len(self.lhs) + " = " if self.lhs
                    else indent + "= ")
    lines = break_sum(head, parts[0], " " * len(head))
    rest = parts[1:]
    while rest:
      # The last two parts share a line when they fit: "= numbers = value".
      if len(rest) == 2 and len(continuation + " = ".join(rest)
                                + note) <= WIDTH:
        lines.append(continuation + " = ".join(rest))
        break
      lines += break_sum(continuation, rest[0], " " * len(continuation))
      rest = rest[1:]
    lines[-1] += note
    return lines


def break_sum(prefix: str, text: str, continuation: str) -> list[str]:
  """``prefix + text``, broken before top-level `` + `` and `` - `` signs
  where it is wider than the page."""
  if len(prefix + text) <= WIDTH:
    return [prefix + text]
  # The signs between terms, with their depth in parentheses: break at the
  # shallowest ones (inside ½·(...) when nothing is outside).
  signs, depth = [], 0
  for position, character in enumerate(text):
    if character in "([":
      depth += 1
    elif character in ")]":
      depth -= 1
    elif (position > 0 and text[position - 1] == " " and character in "+-"
          and text[position + 1:position + 2] == " "):
      signs.append((depth, position))
  if not signs:
    return [prefix + text]
  shallowest = min(depth for depth, _ in signs)
  pieces, start = [], 0
  for depth, position in signs:
    if depth == shallowest:
      pieces.append(text[start:position - 1])
      start = position
  pieces.append(text[start:])
  lines, line = [], prefix + pieces[0]
  for piece in pieces[1:]:
    if len(line) + 1 + len(piece) > WIDTH:
      lines.append(line)
      line = continuation + "  " + piece
    else:
      line += " " + piece
  return lines + [line]


def indented(text: str, first: str = "  ", rest: str = "    ") -> list[str]:
  """Prose wrapped at the page width, with a hanging indent."""
  return textwrap.wrap(text, width=WIDTH, initial_indent=first,
                       subsequent_indent=rest, break_on_hyphens=False,
                       break_long_words=False)


def sum_of_products(terms, values, ascii) -> tuple[str, str, float]:
  """Symbols, numbers and value of ``sum coefficient * product(factors)``.

  ``terms`` lists ``(coefficient, factors)``; a coefficient ``1/n`` is
  written as a division by ``n``. A term of one factor takes the sign of its
  value in the numbers: ``0.29 - 0.5``, not ``0.29 + (-0.5)``.
  """
  times = "*" if ascii else "·"
  if not terms:
    return "0", "0", 0.0
  symbolic, numeric, total = "", "", 0.0
  for position, (coefficient, factors) in enumerate(terms):
    magnitude = abs(coefficient)
    names = times.join(s.text(ascii) for s in factors)
    sign = -1.0 if coefficient < 0 else 1.0
    if len(factors) == 1:
      value = values[factors[0]]
      layer_numbersign = sign * (-1.0 if value < 0 else 1.0)
      numbers = number(abs(value))
    else:
      layer_numbersign = sign
      numbers = times.join(factor(values[s]) for s in factors)
    if math.isclose(magnitude, 1.0):
      pass
    elif math.isclose(1 / magnitude, round(1 / magnitude)):
      names += f"/{round(1 / magnitude)}"
      numbers += f"/{round(1 / magnitude)}"
    else:
      names = f"{number(magnitude)}{times}{names}"
      numbers = f"{number(magnitude)}{times}{numbers}"
    if position == 0:
      symbolic = ("-" if sign < 0 else "") + names
      numeric = ("-" if layer_numbersign < 0 else "") + numbers
    else:
      symbolic += (" - " if sign < 0 else " + ") + names
      numeric += (" - " if layer_numbersign < 0 else " + ") + numbers
    total += coefficient * math.prod(values[s] for s in factors)
  return symbolic, numeric, total


def polynomial(terms) -> _formula.Polynomial:
  out: _formula.Polynomial = {}
  for coefficient, factors in terms:
    key = _formula.monomial(*factors)
    out[key] = out.get(key, 0.0) + coefficient
  return _formula.cleaned(out)


# ---------------------------------------------------------------------------
# The explanation.
# ---------------------------------------------------------------------------


def count(things, noun: str) -> str:
  count = things if isinstance(things, int) else len(things)
  return f"{count} {noun}{'' if count == 1 else 's'}"


def join(items: Sequence[str]) -> str:
  items = list(items)
  if len(items) <= 1:
    return "".join(items)
  return ", ".join(items[:-1]) + " and " + items[-1]


def side_by_side_wrapped(blocks) -> list[str]:
  """Blocks side by side, in as many bands as the width needs."""
  lines, band = [], []
  for block in blocks:
    trial = side_by_side(band + [block])
    if band and max(len(line) for line in trial) > WIDTH:
      lines += side_by_side(band) + [""]
      band = [block]
    else:
      band.append(block)
  if band:
    lines += side_by_side(band)
  return lines
