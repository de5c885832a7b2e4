"""The values of a small network: their names, their shapes, a seeded draw of
those not given, and the checking of those given."""

from __future__ import annotations

import math
import re

import numpy as np

from jaxconv.explain._text import number, shape_text, sized

# Values: the names a user sets, drawn at random where not given.
# ---------------------------------------------------------------------------


def value_shapes(input_shape, stages, cost) -> dict[str, tuple[int, ...]]:
  """Every value the network needs, by name, with its shape (``()`` for a
  bias or a class label)."""
  shapes = {"i": tuple(input_shape)}
  for stage in stages:
    if stage.conv is not None:
      shapes[f"w{stage.number}"] = stage.conv.kernel_shape
      if stage.layer.bias:
        shapes[f"b{stage.number}"] = ()
  last = stages[-1]
  if cost in ("squared", "half-squared"):
    shapes["y"] = last.output_shape
  elif cost == "softmax-cross-entropy":
    shapes["y"] = ()
  else:
    shapes[f"d{last.number}"] = last.output_shape
  return shapes


def canonical_value_name(name: str) -> str:
  """``w1``, ``w^1``, ``w¹`` to ``w1``; ``δ2`` to ``d2``.

  Raises:
    ValueError: not a value name.
  """
  text = re.sub(r"[⁰¹²³⁴⁵⁶⁷⁸⁹]+", lambda m: m.group().translate(
      str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")), str(name).strip())
  text = text.replace("δ", "d")
  match = re.fullmatch(r"([iy])|([wbd])\^?(\d+)", text)
  if not match:
    raise ValueError(
        f"{name!r} is not a value name: the input is i, the weights of layer "
        f"1 are w1, its bias b1, the targets y, a given delta d2.")
  return match.group(1) or f"{match.group(2)}{int(match.group(3))}"


def draw(shapes, label_classes: int | None, seed: int) -> dict:
  """Values drawn for every name, in a fixed order, so that giving one value
  does not change the others: inputs and targets uniform on [0, 1), weights,
  biases and deltas on [-1, 1), all rounded to two decimals; a class label
  uniform over the classes."""
  rng = np.random.default_rng(seed)
  drawn = {}
  for name, shape in shapes.items():
    if name == "y" and label_classes is not None:
      drawn[name] = int(rng.integers(1, label_classes + 1))
    elif name in ("i", "y"):
      drawn[name] = np.round(rng.uniform(0.0, 1.0, shape), 2)
    else:
      drawn[name] = np.round(rng.uniform(-1.0, 1.0, shape), 2)
  return drawn


def _describe_shape(name: str, shape) -> str:
  kinds = {"i": "input", "w": "kernel", "b": "bias", "y": "target",
           "d": "delta"}
  what = kinds[name[0]]
  if not shape:
    return f"one number (the {what})"
  return f"{math.prod(shape)} numbers ({sized(shape, what)})"


def coerce(name: str, value, shape, label_classes: int | None):
  """A given value as a float64 array of ``shape`` (a label as an int)."""
  if name == "y" and label_classes is not None:
    array = np.asarray(value)
    if array.size != 1:
      raise ValueError(
          f"`y` is the correct class, one whole number from 1 to "
          f"{label_classes}, got {array.size} numbers.")
    label = float(array.ravel()[0])
    if label != int(label) or not 1 <= label <= label_classes:
      raise ValueError(
          f"`y` is the correct class, a whole number from 1 to "
          f"{label_classes} (the outputs are numbered from 1), got "
          f"{number(label)}.")
    return int(label)
  try:
    array = np.asarray(value, dtype=np.float64)
  except (TypeError, ValueError):
    raise ValueError(f"`{name}` must be numbers, got {value!r}.") from None
  if array.size != math.prod(shape):
    raise ValueError(f"`{name}` needs {_describe_shape(name, shape)}, got "
                     f"{array.size}.")
  if array.ndim > 1 and array.shape != tuple(shape):
    raise ValueError(f"`{name}` needs the shape {shape_text(shape)}, got "
                     f"{shape_text(array.shape)}.")
  if not np.all(np.isfinite(array)):
    raise ValueError(f"`{name}` must be finite numbers.")
  return array.reshape(shape)


# ---------------------------------------------------------------------------
# Equations: a left side, the symbols, the numbers and the value.
# ---------------------------------------------------------------------------
