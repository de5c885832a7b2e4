"""How a convolution is evaluated: XLA's kernel or a direct algorithm.

The rules in ``jaxconv/convolution.py`` decide *what* to compute: the
forward pass and each gradient are convolutions with a known geometry (eqs.
5, 10, 14). This package decides *how* to evaluate one such convolution.
Because every gradient is a convolution of its own, each of the three
(forward, input gradient, kernel gradient) picks its algorithm
independently, by its own shape.

* ``registry``: the algorithms, one module each (``xla``, ``shifted``,
  ``window_dot``, ``phased``, ``split_groups``, ``chunked``, ``folded``,
  ``stacked``, ``strips``, ``grown``), every one with ``supports`` and
  ``evaluate``; ``common`` holds the slicing and contraction helpers they
  share.
* ``policy``: the ``Policy`` value (which optional rules apply, and the
  thresholds), its presets and the host's (``host`` reads the CPU class
  and probes XLA).
* ``rules``: ``choose_algorithm``, an ordered table of (condition ->
  algorithm, reason).
* ``dispatch``: ``evaluate``, which the algorithms that split a convolution
  call again for each of its parts.
"""

from __future__ import annotations

import jax

from jaxconv._algorithms import dispatch, policy, registry, rules
from jaxconv._algorithms.dispatch import AlgorithmChoice, evaluate
from jaxconv._algorithms.policy import (
    OPTIONS,
    PRESETS,
    Policy,
    Thresholds,
    check_policy,
    host_policy,
    use_policy,
)
from jaxconv._algorithms.registry import (
    ALGORITHMS,
    REGISTRY,
    check_algorithm,
    supports,
    use_algorithm,
)
from jaxconv._algorithms.rules import RULES, choose_algorithm

__all__ = [
    "ALGORITHMS",
    "OPTIONS",
    "PRESETS",
    "REGISTRY",
    "RULES",
    "AlgorithmChoice",
    "Policy",
    "Thresholds",
    "check_algorithm",
    "check_policy",
    "choose_algorithm",
    "chosen_algorithms",
    "dispatch",
    "evaluate",
    "host_policy",
    "policy",
    "registry",
    "rules",
    "supports",
    "use_algorithm",
    "use_policy",
]


def chosen_algorithms(function, *args, **kwargs) -> list[AlgorithmChoice]:
  """The algorithm of every convolution that ``function`` computes with
  jaxconv's rules, in the order they are traced (for ``jax.grad`` of a
  layer: its forward pass, then its input gradient, then its kernel
  gradient).

  ``function`` is traced abstractly (``jax.eval_shape``): nothing is
  computed, and ``args`` may be ``jax.ShapeDtypeStruct``s. Pass the function
  itself, not an already traced ``jax.jit`` of it, whose convolutions are
  not traced again.

  Args:
    function: a function of arrays.
    *args: its arguments (arrays or ``jax.ShapeDtypeStruct``).
    **kwargs: its keyword arguments.

  Returns:
    A list of ``AlgorithmChoice``: algorithm, shapes and geometry of each
    convolution.
  """
  with dispatch.recording() as choices:
    jax.eval_shape(lambda *a, **k: function(*a, **k), *args, **kwargs)
  return list(choices)
