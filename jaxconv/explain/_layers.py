"""The layers of a small network: the spec a user writes (``conv:2x2,stride=2``,
``relu``, ``max_pool:2x2``) and the stage it becomes in the chain, with its
shapes and the wiring read off the library."""

from __future__ import annotations

import dataclasses
import math

from jaxconv.explain._formula import Symbol
from jaxconv.explain._parsing import parse_ints, parse_padding, parse_shape
from jaxconv.explain._text import shape_text
from jaxconv.explain._wiring import (
    ConvWiring,
    PoolWiring,
    conv_wiring,
    pool_wiring,
)

_ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "tanh")
_KINDS = {
    "conv": "conv", "convolution": "conv",
    "relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh",
    "leaky_relu": "leaky_relu", "leaky-relu": "leaky_relu",
    "leakyrelu": "leaky_relu",
    "max_pool": "max_pool", "maxpool": "max_pool", "max-pool": "max_pool",
    "avg_pool": "avg_pool", "avgpool": "avg_pool", "avg-pool": "avg_pool",
}
_OPTIONS = {
    "conv": {"stride", "padding", "dilation", "bias"},
    "max_pool": {"stride", "padding"},
    "avg_pool": {"stride", "padding"},
    "leaky_relu": {"slope"},
}
LAYER_HELP = (
    "conv:KxK[,stride=S][,padding=P][,dilation=D][,bias]; relu; "
    "leaky_relu[:SLOPE]; sigmoid; tanh; max_pool:KxK[,stride=S][,padding=P]; "
    "avg_pool:KxK[,stride=S][,padding=P]")


# ---------------------------------------------------------------------------
# Layers: the spec a user writes, and the stage it becomes.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Layer:
  """One layer as written, e.g. ``conv:2x2,stride=2,bias``."""

  kind: str
  text: str
  shape: tuple[int, ...] | None = None
  stride: object = None
  padding: object = "VALID"
  dilation: object = 1
  bias: bool = False
  slope: float = 0.01


def parse_layer(text: str) -> Layer:
  """A layer spec: ``conv:2x2,stride=2``, ``relu``, ``max_pool:2x2``, ...

  Raises:
    ValueError: an unknown layer or option, or a value that does not parse.
  """
  text = str(text).strip()
  head, *options = text.split(",")
  name, _, argument = head.partition(":")
  kind = _KINDS.get(name.strip().lower())
  if kind is None:
    raise ValueError(f"layer {text!r}: unknown layer {name!r}; a layer is "
                     f"one of {LAYER_HELP}.")
  fields: dict[str, object] = {}
  try:
    if kind in ("conv", "max_pool", "avg_pool"):
      if not argument:
        what = "kernel" if kind == "conv" else "window"
        raise ValueError(f"needs its {what} shape, like {name}:2x2")
      fields["shape"] = parse_shape(argument)
    elif kind == "leaky_relu":
      if argument:
        fields["slope"] = float(argument)
    elif argument:
      raise ValueError(f"{name} takes no argument, got {argument!r}")
    allowed = _OPTIONS.get(kind, set())
    for option in options:
      key, has_value, value = (part.strip() for part in option.partition("="))
      key = key.lower()
      if key not in allowed:
        listed = ", ".join(sorted(allowed)) or "none"
        raise ValueError(f"unknown option {key!r} (options of {name}: "
                         f"{listed})")
      if key == "bias":
        if has_value and value.lower() not in ("yes", "true", "1", "no",
                                               "false", "0"):
          raise ValueError(f"bias is a flag (bias or bias=no), got {value!r}")
        fields["bias"] = not has_value or value.lower() in ("yes", "true",
                                                            "1")
      elif not has_value:
        raise ValueError(f"option {key!r} needs a value, like {key}=1")
      elif key == "padding":
        fields["padding"] = parse_padding(value)
      elif key == "slope":
        fields["slope"] = float(value)
      else:
        fields[key] = parse_ints(value)
  except ValueError as error:
    raise ValueError(f"layer {text!r}: {error}.".replace("..", ".")) from None
  if kind == "conv" and fields.get("stride") is None:
    fields["stride"] = 1
  return Layer(kind=kind, text=text, **fields)


@dataclasses.dataclass(frozen=True)
class Stage:
  """A layer placed in the chain: its number, shapes and wiring."""

  number: int
  layer: Layer
  input_shape: tuple[int, ...]
  output_shape: tuple[int, ...]
  conv: ConvWiring | None = None
  pool: PoolWiring | None = None


def build_stages(input_shape, layers) -> list[Stage]:
  stages = []
  shape = tuple(input_shape)
  for layer_number, layer in enumerate(layers, start=1):
    conv = pool = None
    if layer.shape is not None and len(layer.shape) != len(shape):
      what = "kernel" if layer.kind == "conv" else "window"
      raise ValueError(
          f"layer {layer_number} ({layer.text}): its {what} "
          f"{shape_text(layer.shape)} has {len(layer.shape)} dimension"
          f"{'s' if len(layer.shape) != 1 else ''}, its input "
          f"{shape_text(shape)} has {len(shape)}.")
    try:
      if layer.kind == "conv":
        conv = conv_wiring(shape, layer.shape, layer.stride, layer.padding,
                           layer.dilation)
        output_shape = conv.output_shape
      elif layer.kind in ("max_pool", "avg_pool"):
        pool = pool_wiring(layer.kind[:3], shape, layer.shape, layer.stride,
                           layer.padding)
        output_shape = pool.output_shape
      else:
        output_shape = shape
    except ValueError as error:
      raise ValueError(f"layer {layer_number} ({layer.text}) on its "
                       f"{shape_text(shape)} input: {error}") from None
    if math.prod(output_shape) == 0:
      raise ValueError(f"layer {layer_number} ({layer.text}) on its "
                       f"{shape_text(shape)} input gives no output.")
    stages.append(Stage(layer_number, layer, shape, tuple(output_shape), conv,
                         pool))
    shape = tuple(output_shape)
  return stages


def output_symbol(layer: int, index: int) -> Symbol:
  """``o^l_j``; layer 0 is the input ``i_j``."""
  return Symbol("i", None, index) if layer == 0 else Symbol("o", layer, index)


def delta_symbol(layer: int, index: int) -> Symbol:
  return Symbol("d", layer, index)


# ---------------------------------------------------------------------------
