"""The algorithms by name. Each is a module of its own with
``supports(geometry, lhs_shape, rhs_shape, out_shape)`` and
``evaluate(lhs, rhs, geometry, out_shape)``; all compute eq. (5) exactly,
with groups and batch groups. Adding one is a module, a line here and a row
in ``rules.RULES``.
"""

from __future__ import annotations

import contextlib
import contextvars

from jaxconv._algorithms import (
    chunked,
    folded,
    grown,
    phased,
    shifted,
    split_groups,
    stacked,
    strips,
    window_dot,
    xla,
)

REGISTRY = {
    "xla": xla,                    # lax.conv_general_dilated
    "shifted": shifted,            # one term per kernel tap (eq. 5)
    "window_dot": window_dot,      # one contraction per output position (9)
    "phased": phased,              # input dilation, phase by phase (70)
    "split_groups": split_groups,  # one dense convolution per group (6, 17)
    "chunked": chunked,            # the samples, a chunk at a time (5, 9)
    "folded": folded,              # the first dimension, row by row (71)
    "stacked": stacked,            # a fold's kernel rows in one (72, 73)
    "strips": strips,              # a kernel gradient in strips of rows (74)
    "grown": grown,                # an output grown past the input (75)
}

ALGORITHMS = ("auto", *REGISTRY)


def supports(name: str, geometry, lhs_shape, rhs_shape, out_shape) -> bool:
  """Whether the algorithm ``name`` can evaluate this convolution."""
  return REGISTRY[name].supports(geometry, tuple(lhs_shape), tuple(rhs_shape),
                                 tuple(out_shape))


_ALGORITHM = contextvars.ContextVar("jaxconv_algorithm", default="auto")


def check_algorithm(name, argument: str = "algorithm") -> str:
  """Validates an algorithm name; ``None`` means the ``use_algorithm``
  setting (``"auto"`` by default)."""
  if name is None:
    return _ALGORITHM.get()
  if not isinstance(name, str) or name not in ALGORITHMS:
    raise ValueError(f"`{argument}` must be one of {ALGORITHMS}, got {name!r}.")
  return name


@contextlib.contextmanager
def use_algorithm(name: str):
  """Forces the convolution algorithm inside a ``with`` block.

  The setting is read when a jaxconv function is traced, so it applies to
  functions (re)traced inside the block; an already-compiled ``jax.jit``
  function keeps the algorithm it was traced with. A forced algorithm is
  used for every convolution of the rule whose shape it supports, and XLA's
  kernel for the rest.

  Args:
    name: one of ``ALGORITHMS``: ``"auto"`` (the policy's choice), ``"xla"``,
      ``"shifted"``, ``"window_dot"``, ``"phased"``, ``"split_groups"``,
      ``"chunked"``, ``"folded"``, ``"stacked"``, ``"strips"``, ``"grown"``.

  Returns:
    A context manager.
  """
  token = _ALGORITHM.set(check_algorithm(name))
  try:
    yield
  finally:
    _ALGORITHM.reset(token)
