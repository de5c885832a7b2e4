"""Evaluating one convolution with the algorithm chosen for it, and a
record of the choices for whoever asks (``chosen_algorithms``)."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Sequence
from typing import NamedTuple

from jaxconv._algorithms import registry, rules


class AlgorithmChoice(NamedTuple):
  """One convolution of a traced function and the algorithm that evaluates
  it.

  Attributes:
    algorithm: the algorithm's name.
    lhs_shape: the convolution's input shape.
    rhs_shape: its kernel shape.
    out_shape: its output shape.
    geometry: its ``ConvGeometry``.
  """

  algorithm: str
  lhs_shape: tuple[int, ...]
  rhs_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  geometry: object


# (choices, depth) while ``recording``: the choices of the convolutions the
# rules ask for (depth 0), not of those the algorithms make of them.
_RECORD = contextvars.ContextVar("jaxconv_record", default=None)


@contextlib.contextmanager
def recording():
  """Collects, in a list, the ``AlgorithmChoice`` of every convolution that a rule
  evaluates inside the block (not those an algorithm splits it into)."""
  choices: list[AlgorithmChoice] = []
  token = _RECORD.set((choices, [0]))
  try:
    yield choices
  finally:
    _RECORD.reset(token)


def evaluate(lhs, rhs, geometry, out_shape: Sequence[int]):
  """Evaluates one convolution with the chosen algorithm."""
  out_shape = tuple(out_shape)
  name = rules.choose_algorithm(geometry, lhs.shape, rhs.shape, out_shape)
  record = _RECORD.get()
  if record is None:
    return registry.REGISTRY[name].evaluate(lhs, rhs, geometry, out_shape)
  choices, depth = record
  if depth[0] == 0:
    choices.append(AlgorithmChoice(name, tuple(lhs.shape), tuple(rhs.shape), out_shape,
                          geometry))
  depth[0] += 1
  try:
    return registry.REGISTRY[name].evaluate(lhs, rhs, geometry, out_shape)
  finally:
    depth[0] -= 1
