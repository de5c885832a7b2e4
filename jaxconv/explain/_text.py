"""Text helpers shared by the explainers: wrapping, grids, shapes, numbers."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np

# Prose is wrapped at this width; equations (indented lines) are never broken.
WIDTH = 76

UNICODE = {"d": "∂", "times": "·"}
ASCII = {"d": "d", "times": "*"}


def wrap(line: str) -> str:
  """Wraps prose at ``WIDTH`` columns; indented lines (equations) stay whole."""
  if line.startswith(" "):
    return line
  return textwrap.fill(line, width=WIDTH, break_on_hyphens=False)


def grid(names: Sequence[str], shape: Sequence[int]) -> list[str]:
  """Rows of a 1-D or 2-D arrangement of names, right-aligned."""
  shape = tuple(shape)
  rows = [list(names)] if len(shape) == 1 else [
      list(names[r * shape[1]:(r + 1) * shape[1]]) for r in range(shape[0])]
  width = max((len(n) for n in names), default=1)
  return [" ".join(n.rjust(width) for n in row) for row in rows]


def side_by_side(blocks: Sequence[tuple[str, list[str]]],
                 gap: int = 4) -> list[str]:
  """Titled blocks of rows laid out next to each other, indented by two."""
  height = max(len(rows) for _, rows in blocks)
  widths = [max(len(title), *(len(r) for r in rows)) for title, rows in blocks]
  spacer = " " * gap
  lines = [spacer.join(title.ljust(w) for (title, _), w in zip(blocks, widths))]
  for i in range(height):
    lines.append(spacer.join((rows[i] if i < len(rows) else "").ljust(w)
                             for (_, rows), w in zip(blocks, widths)))
  return ["  " + line.rstrip() for line in lines]


def shape_text(shape) -> str:
  """``3x3``."""
  return "x".join(str(s) for s in shape)


def padding_text(padding) -> str:
  """``VALID``, or ``lo:hi`` pairs as on the command line: ``1:1x0:1``."""
  if isinstance(padding, str):
    return padding
  if isinstance(padding, (int, np.integer)):
    return str(int(padding))
  return "x".join(f"{p[0]}:{p[1]}" if isinstance(p, (tuple, list)) else str(p)
                  for p in padding)


def sized(shape, what: str) -> str:
  """``a 3x3 input``, ``a length-5 input``."""
  if len(shape) == 1:
    return f"a length-{shape[0]} {what}"
  return f"a {shape_text(shape)} {what}"


def number(value: float) -> str:
  """A value with up to six significant digits: ``0.29``, ``-1.2096``."""
  value = float(value)
  if value == 0:
    return "0"
  text = f"{value:.6g}"
  if "e" in text:
    mantissa, exponent = text.split("e")
    text = f"{mantissa}e{int(exponent)}"
  return text


def factor(value: float) -> str:
  """A value as a factor of a product: negative ones in parentheses."""
  text = number(value)
  return f"({text})" if text.startswith("-") else text


def superscript(n: int) -> str:
  return str(n).translate(str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹"))


def subscript(n: int) -> str:
  return str(n).translate(str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉"))
