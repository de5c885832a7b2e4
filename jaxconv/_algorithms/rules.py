"""Which algorithm evaluates a convolution: an ordered table of rules.

``choose_algorithm`` walks ``RULES`` top to bottom and takes the first row
whose option the policy has (``None``: every policy) and whose condition
holds; no row, or a backend other than the CPU, means XLA's kernel. The
conditions read only the geometry, the shapes and the policy. The
measurements behind each row are in the generated records of
``docs/benchmarks/``; the reason beside it says what the row exploits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax

from jaxconv._algorithms import chunked, common, folded, grown, registry
from jaxconv._algorithms.policy import Policy, policy_of


class Convolution(NamedTuple):
  """What the rules read of one convolution (derived once per choice).

  Attributes:
    geometry: its ``ConvGeometry``.
    lhs_shape, rhs_shape, out_shape: its shapes.
    rank: number of spatial dimensions.
    kernel: the kernel's spatial sizes.
    out_spatial: the output's spatial sizes.
    taps: kernel taps (the product of ``kernel``).
    positions: output positions (the product of ``out_spatial``).
    batch: the input's batch (a kernel gradient: the input features).
    in_features: the input's features (a kernel gradient: the samples).
    in_per_group, out_per_group: kernel features per group.
    grouped: feature or batch groups.
    dilated_input: input dilation in some dimension.
    largest: elements of the largest of the three arrays.
  """

  geometry: object
  lhs_shape: tuple[int, ...]
  rhs_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  rank: int
  kernel: tuple[int, ...]
  out_spatial: tuple[int, ...]
  taps: int
  positions: int
  batch: int
  in_features: int
  in_per_group: int
  out_per_group: int
  grouped: bool
  dilated_input: bool
  largest: int

  def supported_by(self, name: str) -> bool:
    return registry.supports(name, self.geometry, self.lhs_shape,
                             self.rhs_shape, self.out_shape)


def describe(geometry, lhs_shape, rhs_shape, out_shape) -> Convolution:
  """The facts the rules read (see ``Convolution``)."""
  lhs_spec, rhs_spec, out_spec = geometry.dimension_numbers
  kernel = common.spatial_sizes(rhs_shape, rhs_spec)
  out_spatial = common.spatial_sizes(out_shape, out_spec)
  return Convolution(
      geometry, tuple(lhs_shape), tuple(rhs_shape), tuple(out_shape),
      rank=len(kernel), kernel=kernel, out_spatial=out_spatial,
      taps=math.prod(kernel), positions=math.prod(out_spatial),
      batch=lhs_shape[lhs_spec[0]], in_features=lhs_shape[lhs_spec[1]],
      in_per_group=rhs_shape[rhs_spec[1]],
      out_per_group=rhs_shape[rhs_spec[0]] // geometry.feature_group_count,
      grouped=(geometry.feature_group_count > 1
               or geometry.batch_group_count > 1),
      dilated_input=any(a > 1 for a in geometry.lhs_dilation),
      largest=max(math.prod(lhs_shape), math.prod(rhs_shape),
                  math.prod(out_shape)))


# The conditions, in the order of RULES. Each reads a Convolution ``c`` and
# the policy ``p`` (its thresholds ``p.thresholds``).

def _phases_meet_taps(c: Convolution, p: Policy) -> bool:
  # A 1x1 kernel meets one phase only; otherwise every phase has 2+ taps.
  a = c.geometry.lhs_dilation
  return (c.dilated_input and c.supported_by("phased") and (
      c.taps == 1 or (c.out_per_group >= p.thresholds.phase_min_out_features
                      and all(k >= 2 * a[i] for i, k in enumerate(c.kernel)
                              if a[i] > 1))))


def _phases_of_few_taps(c: Convolution, p: Policy) -> bool:
  return (c.dilated_input and c.supported_by("phased")
          and c.out_per_group >= p.thresholds.phase_min_out_features)


def _one_by_one(c: Convolution, p: Policy) -> bool:
  return c.taps == 1 and c.supported_by("shifted")


def _depthwise(c: Convolution, p: Policy) -> bool:
  return (c.in_per_group == 1 and c.taps <= p.thresholds.depthwise_max_taps
          and c.supported_by("shifted"))


def _few_groups(c: Convolution, p: Policy) -> bool:
  g = c.geometry
  count = g.feature_group_count * g.batch_group_count
  lhs_spec = g.dimension_numbers.lhs_spec
  axis = lhs_spec[1] if g.feature_group_count > 1 else lhs_spec[0]
  return (c.grouped and c.supported_by("split_groups")
          and count <= p.thresholds.split_max_groups
          and c.lhs_shape[axis] // count >= p.thresholds.split_min_group_size)


def _few_positions(c: Convolution, p: Policy) -> bool:
  t = p.thresholds
  return ((c.positions == 1 or (
      c.positions <= t.window_dot_max_positions
      and c.taps >= t.window_dot_min_taps_per_position * c.positions
      and (c.grouped or c.dilated_input)))
          and c.supported_by("window_dot"))


def _depthwise_kernel_gradient(c: Convolution, p: Policy) -> bool:
  # One output feature per (batch) group: eq. (9) per feature, a product
  # summed over the batch and the window, whatever the sizes.
  return (c.geometry.batch_group_count > 1
          and common.one_output_feature_per_group(
              c.rhs_shape[c.geometry.dimension_numbers.rhs_spec[0]], c.geometry)
          and c.positions <= p.thresholds.window_dot_max_positions
          and c.supported_by("window_dot"))


def _dense_2d(c: Convolution) -> bool:
  return c.rank == 2 and not c.grouped and not c.dilated_input


def _dense_2d_on_eigen(c: Convolution, p: Policy) -> bool:
  return _dense_2d(c) and not p.xla_convolutions_in_ynnpack


def _growable(c: Convolution, p: Policy) -> bool:
  t = p.thresholds
  if not (_dense_2d(c) and c.in_features >= t.grow_min_features
          and p.xla_convolutions_in_ynnpack
          and p.grown_convolutions_leave_ynnpack
          and c.supported_by("grown")):
    return False
  i, extra = grown.growth(c.geometry, c.lhs_shape, c.out_shape)
  return extra <= t.grow_max_fraction * c.out_spatial[i]


def _wide_kernel_gradient(c: Convolution, p: Policy) -> bool:
  t = p.thresholds
  return (c.largest >= t.strip_min_elements and c.supported_by("strips")
          and c.batch * c.out_spatial[1] >= t.strip_min_width
          and c.out_spatial[0] * c.rhs_shape[c.geometry.dimension_numbers
                                             .rhs_spec[0]]
          >= t.strip_min_reuse)


def _many_samples(c: Convolution, p: Policy) -> bool:
  t = p.thresholds
  return (not c.grouped and c.largest >= t.chunk_min_elements
          and c.supported_by("chunked")
          and (chunked.sample_axis(c.geometry) == "feature"
               or math.prod(c.out_shape)
               <= t.chunk_max_output_growth * math.prod(c.lhs_shape)))


def _foldable(c: Convolution, p: Policy) -> bool:
  t, g = p.thresholds, c.geometry
  kernel_gradient = chunked.sample_axis(g) == "feature"
  # 3-D and higher layers fold; so do 2-D kernel gradients of many samples
  # (the planes a 3-D fold makes: samples x rows, each plane small). Other
  # 2-D layers fold only under "fold_2d".
  return (not c.grouped and c.largest >= t.fold_min_elements
          and (c.rank > 2
               or (kernel_gradient and c.in_features >= t.fold_min_samples)
               or (p.has("fold_2d") and (
                   c.in_features >= t.fold_min_features
                   or (kernel_gradient and p.has("fold_kernel_gradients")))))
          and g.lhs_dilation[0] == 1
          and (folded.fold_form(g) == "positions" or g.window_strides[0] == 1
               or p.has("fold_strided"))
          and c.supported_by("folded"))


def _foldable_2d_taps(c: Convolution, p: Policy) -> bool:
  return c.rank == 2 and _foldable(c, p) and c.supported_by("stacked")


class Rule(NamedTuple):
  """One row of the table: ``algorithm`` where the policy has ``option``
  (``None``: always) and ``applies(convolution, policy)`` holds."""

  algorithm: str
  option: str | None
  applies: Callable[[Convolution, Policy], bool]
  reason: str


RULES = (
    Rule("phased", None, _phases_meet_taps,
         "input dilation: no product with an inserted zero (eq. 70)"),
    Rule("phased", "phase_few_taps", _phases_of_few_taps,
         "the same with one or two taps per phase, folded or stacked"),
    Rule("shifted", None, _one_by_one,
         "a 1x1 kernel is one matrix product over the features"),
    Rule("shifted", None, _depthwise,
         "a depthwise kernel is a fused multiply-add per tap"),
    Rule("split_groups", None, _few_groups,
         "XLA's grouped CPU kernel is slower than its groups one by one"),
    Rule("window_dot", None, _few_positions,
         "few outputs of large windows, where XLA's kernel is slowest"),
    Rule("window_dot", None, _depthwise_kernel_gradient,
         "a depthwise kernel gradient is one sum of products per tap"),
    Rule("xla", None, _dense_2d_on_eigen,
         "XLA's Eigen kernel beats every direct form on dense 2-D layers"),
    Rule("grown", "grow", _growable,
         "one more output row moves XLA from YNNPACK to its Eigen kernel"),
    Rule("strips", "strips", _wide_kernel_gradient,
         "im2col a strip at a time, in cache, one product per kernel row"),
    Rule("chunked", "chunk", _many_samples,
         "XLA's kernel is faster on chunks of samples than on a large batch"),
    Rule("stacked", "stack", _foldable_2d_taps,
         "a fold's kernel rows as one convolution: the input read once"),
    Rule("folded", "fold", _foldable,
         "XLA's kernel is faster on planes (or rows) than on the whole"),
)


def choose_algorithm(geometry, lhs_shape, rhs_shape, out_shape,
                     backend: str | None = None,
                     policy: Policy | None = None) -> str:
  """Picks the algorithm for one convolution: the first row of ``RULES``
  that applies, else ``"xla"``.

  A forced algorithm (``geometry.algorithm``, from ``algorithm=`` or
  ``use_algorithm``) is used wherever it supports the shape, XLA's kernel
  elsewhere. Every backend but the CPU gets XLA's kernel.

  Args:
    geometry: the normalised ``ConvGeometry``.
    lhs_shape: the input's shape.
    rhs_shape: the kernel's shape.
    out_shape: the output's shape.
    backend: ``jax.default_backend()`` when ``None``.
    policy: the ``Policy``; ``None`` for the geometry's own.

  Returns:
    One of ``ALGORITHMS`` other than ``"auto"``.
  """
  forced = geometry.algorithm
  if forced != "auto":
    return forced if registry.supports(forced, geometry, lhs_shape, rhs_shape,
                                       out_shape) else "xla"
  if (backend or jax.default_backend()) != "cpu":
    return "xla"
  policy = policy or policy_of(geometry)
  facts = describe(geometry, lhs_shape, rhs_shape, out_shape)
  for rule in RULES:
    if ((rule.option is None or policy.has(rule.option))
        and rule.applies(facts, policy)):
      return rule.algorithm
  return "xla"
