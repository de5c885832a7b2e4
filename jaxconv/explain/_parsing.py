"""Reading shapes, strides and paddings as they are typed: ``3x3``, ``2x1``,
``SAME``, ``0:1x1:0``. Each raises ``ValueError`` with the text it got."""

from __future__ import annotations

import re


def parse_shape(text: str) -> tuple[int, ...]:
  """``3x3`` (or ``3,3``, ``3×3``, ``5``) to ``(3, 3)``; sizes positive."""
  parts = re.split(r"[x,×]", str(text).strip().lower())
  try:
    shape = tuple(int(p) for p in parts)
  except ValueError:
    raise ValueError(f"a shape is written like 3x3, got {text!r}") from None
  if any(s < 1 for s in shape):
    raise ValueError(f"sizes must be positive, got {text!r}")
  return shape


def parse_ints(text: str):
  """``2`` to ``2``; ``2x1`` to ``(2, 1)``."""
  parts = re.split(r"[x,×]", str(text).strip().lower())
  try:
    values = tuple(int(p) for p in parts)
  except ValueError:
    raise ValueError(
        f"expected an int or ints like 2x1, got {text!r}") from None
  return values[0] if len(values) == 1 else values


def parse_padding(text: str):
  """``VALID``/``SAME``/``SAME_LOWER``, ``1`` (every side), ``1x0`` (per
  dimension, both sides) or ``lo:hi`` per dimension, like ``0:1x1:0``."""
  upper = str(text).strip().upper()
  if upper in ("VALID", "SAME", "SAME_LOWER"):
    return upper
  pairs = []
  for part in re.split(r"[x,×]", str(text).strip().lower()):
    try:
      if ":" in part:
        lo, hi = part.split(":")
        pairs.append((int(lo), int(hi)))
      else:
        pairs.append((int(part), int(part)))
    except ValueError:
      raise ValueError(
          f"padding is VALID, SAME, SAME_LOWER, an int, ints like 1x0, or "
          f"lo:hi pairs like 0:1x1:0; got {text!r}") from None
  return pairs
