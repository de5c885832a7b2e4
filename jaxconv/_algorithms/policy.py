"""The policy: a value that says which of the optional rules apply on this
host, and the sizes the rules and algorithms use.

Every convolution's geometry carries the policy it was traced with, so the
choice is a pure function of the geometry, the shapes and that value
(``rules.choose_algorithm``). The default is the preset of the host's CPU
class, chosen once per process (``host_policy``); ``use_policy`` names
another for a ``with`` block. A host of a class nobody measured gets the
``"generic"`` preset: XLA's kernel plus the choices that need no option.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from typing import ClassVar

import jax

from jaxconv._algorithms import host

# The optional rules (rules.RULES names the one each row needs; the others
# widen a row's condition).
OPTIONS = (
    "fold",                   # "folded": 3-D layers, plane by plane, and
                              # 2-D kernel gradients of many samples by rows
    "fold_2d",                # ... and 2-D layers of many features, by rows
    "fold_kernel_gradients",  # ... and 2-D kernel gradients of any features
    "fold_strided",           # ... and a strided first dimension
    "stack",                  # "stacked" for a 2-D fold in the taps form
    "chunk",                  # "chunked": large dense convolutions by samples
    "phase_few_taps",         # "phased" with one or two taps per phase too
    "strips",                 # "strips" for channels-last 2-D kernel gradients
    "grow",                   # "grown" around YNNPACK's 2-D kernel
)


@dataclasses.dataclass(frozen=True)
class Thresholds:
  """The sizes behind the rules and the algorithms (elements are array
  elements; a "term" is one unrolled convolution or contraction).

  Attributes:
    max_unrolled: most terms of an unrolled algorithm (taps, positions,
      phases, groups, chunks or rows).
    phase_min_out_features: fewest output features per group for
      ``"phased"`` with a kernel larger than 1x1.
    depthwise_max_taps: most taps of a depthwise kernel for ``"shifted"``.
    split_max_groups: most groups for ``"split_groups"``.
    split_min_group_size: fewest features (batch entries) per group.
    window_dot_max_positions: most output positions for ``"window_dot"``
      beyond a single one.
    window_dot_min_taps_per_position: fewest taps per output position there.
    chunk_samples: most samples per chunk of ``"chunked"``.
    chunk_elements: most elements of the largest split array per chunk.
    chunk_min_elements: fewest elements of the largest array to chunk.
    chunk_max_output_growth: a batch is chunked only where the output is at
      most this many times the input (the chunks' outputs are copied).
    fold_min_elements: fewest elements of the largest array to fold.
    fold_min_features: fewest contracted features of a 2-D fold.
    fold_min_samples: fewest samples of a 2-D kernel gradient folded without
      ``"fold_2d"``.
    strip_elements: most elements of a strip's largest operand.
    strip_min_elements: fewest elements of the largest array for strips.
    strip_min_width: fewest patch columns (input features x kernel columns).
    strip_min_reuse: fewest uses of a patch element (kernel rows x output
      features).
    grow_min_features: fewest contracted features of a grown convolution.
    grow_max_fraction: most extra output positions, as a fraction of the
      grown dimension's.
  """

  max_unrolled: int = 64
  phase_min_out_features: int = 16
  depthwise_max_taps: int = 49
  split_max_groups: int = 32
  split_min_group_size: int = 2
  window_dot_max_positions: int = 49
  window_dot_min_taps_per_position: int = 4
  chunk_samples: int = 8
  chunk_elements: int = 2_000_000
  chunk_min_elements: int = 4_500_000
  chunk_max_output_growth: int = 2
  fold_min_elements: int = 250_000
  fold_min_features: int = 64
  fold_min_samples: int = 256
  strip_elements: int = 1 << 19
  strip_min_elements: int = 400_000
  strip_min_width: int = 64
  strip_min_reuse: int = 96
  grow_min_features: int = 64
  grow_max_fraction: float = 0.125


@dataclasses.dataclass(frozen=True)
class Policy:
  """How jaxconv picks the algorithm of each convolution on a CPU.

  A policy is an immutable value: the optional rules that apply (the
  always-on ones need no mention), two facts about XLA's CPU backend, and
  the thresholds. Build one from a preset with ``Policy.replace`` or
  ``dataclasses.replace``; name it with ``jaxconv.use_policy``.

  Attributes:
    name: the preset's name, or a name of your own.
    options: the optional rules that apply, a subset of ``OPTIONS``.
    xla_convolutions_in_ynnpack: whether XLA hands 2-D convolutions to
      YNNPACK (jax 0.10's default; probed by ``host_policy``).
    grown_convolutions_leave_ynnpack: whether a 2-D convolution grown one
      row past its input runs on XLA's Eigen kernel instead (probed).
    thresholds: the sizes, a ``Thresholds``.
    OPTIONS: (class attribute) every optional rule's name.
  """

  OPTIONS: ClassVar[tuple[str, ...]] = OPTIONS
  name: str
  options: tuple[str, ...] = ()
  xla_convolutions_in_ynnpack: bool = True
  grown_convolutions_leave_ynnpack: bool = True
  thresholds: Thresholds = Thresholds()

  def __post_init__(self):
    unknown = sorted(set(self.options) - set(OPTIONS))
    if unknown:
      raise ValueError(f"`options` must be among {OPTIONS}, got {unknown}.")
    # One order, so that equal policies are equal (and print the same).
    object.__setattr__(self, "options",
                       tuple(o for o in OPTIONS if o in self.options))

  def has(self, option: str) -> bool:
    """Whether the optional rule ``option`` applies."""
    return option in self.options

  def replace(self, **changes) -> Policy:
    """A copy with some fields changed; ``thresholds`` may be given as a
    dict of the thresholds to change."""
    thresholds = changes.get("thresholds")
    if isinstance(thresholds, dict):
      changes["thresholds"] = dataclasses.replace(self.thresholds,
                                                  **thresholds)
    return dataclasses.replace(self, **changes)


# The presets. A host of a measured x86 CPU class gets "x86": the rules that
# need no option, and 3-D convolutions folded into planes (the planes'
# kernel gradients into rows), which made whole training steps faster at no
# cost in compile time. The three presets named
# after a CPU class add the rules tuned on that class for large single 2-D
# layers; on whole networks they gained at most a tenth of a step and cost up
# to twice the compile time, so they are for a user to name. A host of
# another kind gets "generic". The measurements are in the generated records
# of docs/benchmarks/.
PRESETS = {
    "generic": Policy("generic"),
    "x86": Policy("x86", ("fold",)),
    "amd-avx2": Policy("amd-avx2", ("fold", "fold_2d", "fold_kernel_gradients",
                                    "chunk", "grow")),
    "amd-avx512": Policy("amd-avx512", ("fold", "fold_2d", "fold_strided",
                                        "stack", "chunk", "phase_few_taps",
                                        "strips", "grow")),
    "intel-avx512": Policy("intel-avx512", OPTIONS),
}

# The default preset of each CPU class (host.cpu_class).
HOST_PRESETS = {"intel-avx512": "x86", "amd-avx512": "x86", "amd-avx2": "x86",
                "generic": "generic"}


@functools.cache
def host_policy() -> Policy:
  """This host's policy: the default preset of its CPU class (``"x86"`` for
  a measured x86 class, ``"generic"`` for any other), with what XLA does to
  2-D convolutions in this process, probed by compiling two small ones, once
  (where the default backend is the CPU; elsewhere the policy is not read).

  Returns:
    A ``Policy``.
  """
  preset = PRESETS[HOST_PRESETS[host.cpu_class(host.host_cpuinfo())]]
  if jax.default_backend() != "cpu":
    return preset
  return preset.replace(
      xla_convolutions_in_ynnpack=host.xla_convolutions_in_ynnpack(),
      grown_convolutions_leave_ynnpack=host.grown_convolutions_leave_ynnpack())


_POLICY = contextvars.ContextVar("jaxconv_policy", default=None)


def check_policy(value, argument: str = "policy") -> Policy:
  """A ``Policy`` from a policy, a preset's name, or ``None`` (the
  ``use_policy`` setting, else ``host_policy()``)."""
  if value is None:
    return _POLICY.get() or host_policy()
  if isinstance(value, Policy):
    return value
  if isinstance(value, str) and value in PRESETS:
    return PRESETS[value]
  raise ValueError(f"`{argument}` must be a jaxconv.Policy or one of "
                   f"{tuple(PRESETS)}, got {value!r}.")


@contextlib.contextmanager
def use_policy(policy):
  """Uses ``policy`` for the convolutions traced inside a ``with`` block.

  Like ``use_algorithm``, the setting is read when a jaxconv function is
  traced: an already-compiled ``jax.jit`` function keeps the policy it was
  traced with.

  Args:
    policy: a ``Policy``, or the name of a preset: ``"generic"``, ``"x86"``,
      ``"amd-avx2"``, ``"amd-avx512"`` or ``"intel-avx512"``.

  Returns:
    A context manager.
  """
  token = _POLICY.set(check_policy(policy))
  try:
    yield
  finally:
    _POLICY.reset(token)


def policy_of(geometry) -> Policy:
  """The policy a geometry carries, or the current one for a geometry
  built by hand without one."""
  return getattr(geometry, "policy", None) or check_policy(None)
