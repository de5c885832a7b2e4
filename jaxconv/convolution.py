"""N-D convolution with hand-derived gradients.

The layout of this module follows ``docs/derivation.md``, Part I:

* ``ConvGeometry``: every static argument, normalised and validated once at the
  public boundary (strides, padding pairs, dilations, groups, layout).
* ``_conv``: the private ``jax.custom_vjp`` primal, with ``_conv_fwd`` and
  ``_conv_bwd`` right below it. ``_conv_bwd`` only unpacks residuals and calls
  the two gradient functions.
* ``_input_gradient`` (eqs. 12-16) and ``_kernel_gradient`` (eqs. 9-10, 18):
  each gradient is itself a call of ``_conv`` with a derived geometry, so the
  backward of the backward is again one of these rules and gradients of any
  reverse order are hand-derived.
* Public functions: ``conv_general_dilated`` (drop-in for
  ``lax.conv_general_dilated``), ``conv`` (the channels-last layer with bias),
  ``conv_transpose`` (drop-in for ``lax.conv_transpose``) and the public
  gradient pieces ``conv_input_grad``, ``conv_kernel_grad``, ``conv_bias_grad``.

Notation (as in the docs), per spatial dimension: input length ``N``, input
dilation ``a``, padding ``(lo, hi)``, kernel length ``K``, kernel dilation
``d``, stride ``s``; ``N_a = (N - 1) a + 1``, ``K_d = (K - 1) d + 1``,
``P = N_a + lo + hi``, output length ``M = (P - K_d) // s + 1`` (eq. 4), and
the stride remainder ``r = P - K_d - (M - 1) s`` (the input rows that no window
reaches).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv import _algorithms, _geometry, _sharding
from jaxconv import padding as _padding

__all__ = [
    "ConvGeometry",
    "conv",
    "conv_bias_grad",
    "conv_general_dilated",
    "conv_input_grad",
    "conv_kernel_grad",
    "conv_output_shape",
    "conv_transpose",
    "make_conv_geometry",
]

ConvDimensionNumbers = lax.ConvDimensionNumbers


class ConvGeometry(NamedTuple):
  """The static description of one convolution, normalised and validated.

  All fields are hashable Python values; the geometry is passed to the
  ``custom_vjp`` rule as a non-differentiable argument. Spatial entries are in
  the order of the kernel's spatial dimensions (as in ``lax``).

  Attributes:
    window_strides: stride ``s`` per spatial dimension.
    padding: explicit ``(lo, hi)`` pairs; negative entries crop.
    lhs_dilation: input dilation ``a`` per spatial dimension.
    rhs_dilation: kernel dilation ``d`` per spatial dimension.
    dimension_numbers: ``lax.ConvDimensionNumbers`` of integer axis specs
      ``(batch, feature, *spatial)`` for lhs and out, ``(out feature, in
      feature, *spatial)`` for rhs.
    feature_group_count: ``G``, the number of feature groups.
    batch_group_count: ``B``, the number of batch groups.
    precision: canonicalised ``lax`` precision.
    preferred_element_type: accumulation/result dtype, or ``None``.
    algorithm: ``"auto"`` or the algorithm forced for every convolution of
      the rule (see ``jaxconv.use_algorithm``).
    policy: the ``jaxconv.Policy`` that picks the algorithm of each of the
      rule's convolutions on a CPU (see ``jaxconv.use_policy``).
  """

  window_strides: tuple[int, ...]
  padding: tuple[tuple[int, int], ...]
  lhs_dilation: tuple[int, ...]
  rhs_dilation: tuple[int, ...]
  dimension_numbers: ConvDimensionNumbers
  feature_group_count: int
  batch_group_count: int
  precision: Any
  preferred_element_type: Any
  algorithm: str = "auto"
  policy: Any = None


# ---------------------------------------------------------------------------
# Geometry: shapes and the derived geometries of the two gradients.
# ---------------------------------------------------------------------------



def conv_output_shape(geometry: ConvGeometry, lhs_shape: Sequence[int],
                      rhs_shape: Sequence[int]) -> tuple[int, ...]:
  """Shape of ``conv_general_dilated``'s output, in the output layout.

  Args:
    geometry: a normalised ``ConvGeometry``.
    lhs_shape: the input's shape.
    rhs_shape: the kernel's shape.

  Returns:
    The output shape: batch ``N / B``, features ``O``, and per spatial
    dimension ``M = (P - K_d) // s + 1`` (eq. 4), or 0 where the kernel does
    not fit.
  """
  lhs_spec, rhs_spec, out_spec = geometry.dimension_numbers
  sizes = [0] * len(lhs_shape)
  sizes[out_spec[0]] = lhs_shape[lhs_spec[0]] // geometry.batch_group_count
  sizes[out_spec[1]] = rhs_shape[rhs_spec[0]]
  for i, (n, k) in enumerate(zip(_geometry.spatial_sizes(lhs_shape, lhs_spec),
                                 _geometry.spatial_sizes(rhs_shape, rhs_spec))):
    lo, hi = geometry.padding[i]
    padded = _geometry.dilated_size(n, geometry.lhs_dilation[i]) + lo + hi
    window = _geometry.dilated_size(k, geometry.rhs_dilation[i])
    sizes[out_spec[2 + i]] = _geometry.window_count(
        padded, window, geometry.window_strides[i])
  return tuple(sizes)


def _stride_remainders(geometry: ConvGeometry, lhs_shape, rhs_shape):
  """``r = P - K_d - (M - 1) s`` per spatial dim: input rows no window reaches."""
  lhs_spec, rhs_spec, _ = geometry.dimension_numbers
  remainders = []
  for i, (n, k) in enumerate(zip(_geometry.spatial_sizes(lhs_shape, lhs_spec),
                                 _geometry.spatial_sizes(rhs_shape, rhs_spec))):
    lo, hi = geometry.padding[i]
    span = (_geometry.dilated_size(n, geometry.lhs_dilation[i]) + lo + hi
            - _geometry.dilated_size(k, geometry.rhs_dilation[i]))
    remainders.append(span % geometry.window_strides[i])
  return tuple(remainders)


def _swap(spec: Sequence[int]) -> tuple[int, ...]:
  """Exchanges the roles of the first two axes of a spec (batch <-> feature)."""
  return (spec[1], spec[0]) + tuple(spec[2:])


def input_gradient_geometry(geometry: ConvGeometry, lhs_shape: Sequence[int],
                            rhs_shape: Sequence[int]) -> ConvGeometry:
  """The geometry of the input gradient's convolution (eqs. 13-17).

  The cotangent plays the input, the rotated kernel (I/O swapped) plays the
  kernel, and the result has the forward input's layout:

  * the forward stride ``s`` becomes input dilation of the delta (eq. 13);
  * the forward input dilation ``a`` becomes the stride (eq. 15);
  * the padding is the "full" padding ``K_d - 1`` minus the forward padding,
    plus the stride remainder ``r`` at the high end (eq. 14);
  * feature groups stay feature groups, batch groups become feature groups
    (eqs. 16-17).

  Args:
    geometry: the forward geometry.
    lhs_shape: the forward input's shape.
    rhs_shape: the forward kernel's shape.

  Returns:
    The derived ``ConvGeometry``.
  """
  lhs_spec, rhs_spec, out_spec = geometry.dimension_numbers
  remainders = _stride_remainders(geometry, lhs_shape, rhs_shape)
  padding = []
  for i, k in enumerate(_geometry.spatial_sizes(rhs_shape, rhs_spec)):
    lo, hi = geometry.padding[i]
    full = _geometry.dilated_size(k, geometry.rhs_dilation[i]) - 1
    padding.append((full - lo, full - hi + remainders[i]))
  return ConvGeometry(
      window_strides=geometry.lhs_dilation,
      padding=tuple(padding),
      lhs_dilation=geometry.window_strides,
      rhs_dilation=geometry.rhs_dilation,
      dimension_numbers=ConvDimensionNumbers(out_spec, _swap(rhs_spec),
                                             lhs_spec),
      feature_group_count=geometry.feature_group_count
      * geometry.batch_group_count,
      batch_group_count=1,
      precision=geometry.precision,
      preferred_element_type=geometry.preferred_element_type,
      algorithm=geometry.algorithm,
  )


def kernel_gradient_geometry(geometry: ConvGeometry, lhs_shape: Sequence[int],
                             rhs_shape: Sequence[int]) -> ConvGeometry:
  """The geometry of the kernel gradient's convolution (eqs. 10 and 18).

  The forward input plays the input with batch and feature axes exchanged
  (the batch is contracted), the cotangent plays the kernel, and the result
  has the kernel's layout:

  * the forward stride ``s`` becomes the delta's dilation (kernel dilation);
  * the forward kernel dilation ``d`` becomes the stride;
  * the input dilation ``a`` stays;
  * padding ``(lo, hi - r)``: the rows no forward window reached are cropped;
  * feature groups become batch groups and batch groups feature groups
    (eq. 18).

  Args:
    geometry: the forward geometry.
    lhs_shape: the forward input's shape.
    rhs_shape: the forward kernel's shape.

  Returns:
    The derived ``ConvGeometry``.
  """
  lhs_spec, rhs_spec, out_spec = geometry.dimension_numbers
  remainders = _stride_remainders(geometry, lhs_shape, rhs_shape)
  padding = tuple((lo, hi - r) for (lo, hi), r in zip(geometry.padding,
                                                       remainders))
  return ConvGeometry(
      window_strides=geometry.rhs_dilation,
      padding=padding,
      lhs_dilation=geometry.lhs_dilation,
      rhs_dilation=geometry.window_strides,
      dimension_numbers=ConvDimensionNumbers(_swap(lhs_spec), _swap(out_spec),
                                             _swap(rhs_spec)),
      feature_group_count=geometry.batch_group_count,
      batch_group_count=geometry.feature_group_count,
      precision=geometry.precision,
      preferred_element_type=geometry.preferred_element_type,
      algorithm=geometry.algorithm,
  )


def _rotate_180(rhs, spatial_axes):
  """rot180(w) of eq. (14): the kernel reversed along every spatial axis."""
  return jnp.flip(rhs, axis=tuple(spatial_axes))


def _regroup_kernel(rhs, rhs_spec, groups: int):
  """Rearranges a grouped kernel for the input gradient (eq. 16).

  The forward kernel has ``O = groups * O_g`` output features (axis
  ``rhs_spec[0]``) and ``C_g`` input features (axis ``rhs_spec[1]``). The
  input gradient's kernel maps, within group ``g``, the ``O_g`` cotangent
  features to the ``C_g`` input features: ``W'[o', (g, c')] = w[(g, o'),
  c']``. The group index moves from the output-feature axis to the front of
  the input-feature axis.
  """
  if groups == 1:
    return rhs
  out_axis, in_axis = rhs_spec[0], rhs_spec[1]
  moved = jnp.moveaxis(rhs, (out_axis, in_axis), (0, 1))
  out_features, in_features = moved.shape[:2]
  rest = moved.shape[2:]
  moved = moved.reshape((groups, out_features // groups, in_features) + rest)
  moved = jnp.swapaxes(moved, 0, 1)
  moved = moved.reshape((out_features // groups, groups * in_features) + rest)
  return jnp.moveaxis(moved, (0, 1), (out_axis, in_axis))


def _fold_groups_into_batch(x, lhs_spec, groups: int):
  """Moves a group-major factor of the feature axis into the batch axis.

  Used for batch groups (eq. 17): the input gradient's convolution returns
  ``(N / B, B * C)``; input batch block ``g`` is feature block ``g``.
  """
  if groups == 1:
    return x
  batch_axis, feature_axis = lhs_spec[0], lhs_spec[1]
  moved = jnp.moveaxis(x, (batch_axis, feature_axis), (0, 1))
  batch, features = moved.shape[:2]
  rest = moved.shape[2:]
  moved = moved.reshape((batch, groups, features // groups) + rest)
  moved = jnp.swapaxes(moved, 0, 1)
  moved = moved.reshape((groups * batch, features // groups) + rest)
  return jnp.moveaxis(moved, (0, 1), (batch_axis, feature_axis))


# ---------------------------------------------------------------------------
# The rule.
# ---------------------------------------------------------------------------


def _evaluate(lhs, rhs, geometry: ConvGeometry):
  """Computes eq. (5) with the algorithm chosen for this shape (the hot path:
  XLA's convolution or a direct contraction, see ``_algorithms``)."""
  out_shape = conv_output_shape(geometry, lhs.shape, rhs.shape)
  if 0 in out_shape or lhs.size == 0 or rhs.size == 0:
    # An empty output, or an empty sum in eq. (5) (no input features, or an
    # empty batch): zeros, as lax returns them, without a convolution.
    return jnp.zeros(out_shape, geometry.preferred_element_type or lhs.dtype)
  lhs_spec, rhs_spec, out_spec = geometry.dimension_numbers

  def out_sharding(lhs_sharding, rhs_sharding):
    # Explicit sharding (see _sharding): the output keeps the input's batch
    # sharding and the kernel's output-feature sharding; contracted axes
    # (a kernel gradient's samples) are summed across devices.
    batch = (lhs_sharding[lhs_spec[0]] if geometry.batch_group_count == 1
             else None)
    features = rhs_sharding[rhs_spec[0]]
    if features is not None and features == batch:
      features = None
    return _sharding.spec_from(len(out_shape), [(out_spec[0], batch),
                                                (out_spec[1], features)])

  return _sharding.run(
      functools.partial(_algorithms.evaluate, geometry=geometry,
                        out_shape=out_shape), out_sharding, lhs, rhs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(lhs, rhs, geometry: ConvGeometry):
  return _evaluate(lhs, rhs, geometry)


def _conv_fwd(lhs, rhs, geometry: ConvGeometry):
  # The input gradient needs only the kernel, the kernel gradient only the
  # input: these two are the whole residual.
  return _evaluate(lhs, rhs, geometry), (lhs, rhs)


def _conv_bwd(geometry: ConvGeometry, residuals, cotangent):
  lhs, rhs = residuals
  lhs_grad = _input_gradient(cotangent, rhs, lhs.shape, lhs.dtype, geometry)
  rhs_grad = _kernel_gradient(lhs, cotangent, rhs.shape, rhs.dtype, geometry)
  return (_sharding.summed_like(lhs_grad, lhs),
          _sharding.summed_like(rhs_grad, rhs))


_conv.defvjp(_conv_fwd, _conv_bwd)


# Input gradient, docs/derivation.md eqs. (12)-(17).
#
#   dE/dx^[n,c,j] = sum_o sum_{i,k : s*i + d*k = j} delta[n,o,i] w[o,c,k]   (12)
#
# Spread the delta onto the stride grid, delta~[s*i] = delta[i], zeros in
# between (eq. 13). Then the sum over i disappears and what is left is a true
# convolution of delta~ with the kernel, dilated by d:
#
#   dE/dx^[j] = sum_k delta~[j - d*k] w[k]
#             = sum_k' delta~[j - (K_d - 1) + d*k'] rot180(w)[k']           (14)
#
# i.e. a cross-correlation of delta~ with the 180-degree rotated kernel,
# summed over the output features o instead of the input features c (I/O
# swapped), over the "full" padding K_d - 1 on both sides. The forward
# padding was added to x^, so it is taken back: (K_d - 1 - lo) low and
# (K_d - 1 - hi + r) high, where r pads back the rows no window reached.
# Dividing out the input dilation keeps every a-th position (eq. 15): a
# window stride of a. Feature groups stay groups, with the kernel regrouped
# (eq. 16); batch groups become feature groups whose outputs are the batch
# blocks (eq. 17).
def _input_gradient(cotangent, rhs, lhs_shape, lhs_dtype, geometry):
  if cotangent.size == 0 or rhs.size == 0 or 0 in lhs_shape:
    return jnp.zeros(lhs_shape, lhs_dtype)
  derived = input_gradient_geometry(geometry, lhs_shape, rhs.shape)
  lhs_spec, rhs_spec, _ = geometry.dimension_numbers
  groups = geometry.feature_group_count * geometry.batch_group_count
  kernel = _rotate_180(rhs, rhs_spec[2:])  # eq. (14)
  kernel = _regroup_kernel(kernel, rhs_spec, groups)  # eq. (16)
  if kernel.dtype != cotangent.dtype:
    kernel = kernel.astype(cotangent.dtype)
  grad = _conv(cotangent, kernel, derived)
  grad = _fold_groups_into_batch(grad, lhs_spec, geometry.batch_group_count)
  return grad.astype(lhs_dtype)


# Kernel gradient, docs/derivation.md eqs. (9), (10) and (18).
#
#   dE/dw[o,c,k] = sum_n sum_i delta[n,o,i] x^[n,c, s*i + d*k]              (9)
#
# Read with c as the batch and n as the contracted feature, this is a
# cross-correlation of the (padded, dilated) input with the delta acting as
# the kernel: the delta's taps sit s apart (kernel dilation s) and
# consecutive k move the window by d (window stride d). The high padding
# loses the r rows no forward window reached (eq. 10). Feature groups of the
# forward become batch groups here and batch groups feature groups (eq. 18).
def _kernel_gradient(lhs, cotangent, rhs_shape, rhs_dtype, geometry):
  if cotangent.size == 0 or lhs.size == 0 or 0 in rhs_shape:
    return jnp.zeros(rhs_shape, rhs_dtype)
  derived = kernel_gradient_geometry(geometry, lhs.shape, rhs_shape)
  if lhs.dtype != cotangent.dtype:
    lhs = lhs.astype(cotangent.dtype)
  grad = _conv(lhs, cotangent, derived)
  return grad.astype(rhs_dtype)


# Bias, docs/derivation.md eq. (11): z = y + b[o], so dE/db[o] = sum of the
# deltas over every axis but the feature axis.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _add_bias(y, bias, feature_axis: int):
  return y + _broadcast_bias(bias, y.ndim, feature_axis)


def _broadcast_bias(bias, ndim: int, feature_axis: int):
  shape = [1] * ndim
  shape[feature_axis] = bias.shape[0]
  return bias.reshape(shape)


def _add_bias_fwd(y, bias, feature_axis: int):
  # The bias gradient needs only the cotangent; the bias itself (one number
  # per feature) is kept to match its sharding inside shard_map.
  return _add_bias(y, bias, feature_axis), bias


def _add_bias_bwd(feature_axis: int, bias, cotangent):
  return cotangent, _sharding.summed_like(
      _bias_gradient(cotangent, feature_axis), bias)


def _bias_gradient(cotangent, feature_axis: int):
  axes = tuple(a for a in range(cotangent.ndim) if a != feature_axis)
  return jnp.sum(cotangent, axis=axes)


_add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


# ---------------------------------------------------------------------------
# Normalisation at the public boundary.
# ---------------------------------------------------------------------------


def _dimension_numbers(lhs_shape, rhs_shape, dimension_numbers):
  if len(lhs_shape) != len(rhs_shape):
    raise ValueError(
        f"`lhs` and `rhs` must have the same rank, got lhs shape "
        f"{tuple(lhs_shape)} (rank {len(lhs_shape)}) and rhs shape "
        f"{tuple(rhs_shape)} (rank {len(rhs_shape)}).")
  if len(lhs_shape) < 2:
    raise ValueError(
        f"`lhs` must have rank >= 2 (batch and feature axes), got shape "
        f"{tuple(lhs_shape)}.")
  if isinstance(dimension_numbers, ConvDimensionNumbers):
    specs = tuple(tuple(int(a) for a in spec) for spec in dimension_numbers)
    for name, spec in zip(("lhs_spec", "rhs_spec", "out_spec"), specs):
      if sorted(spec) != list(range(len(lhs_shape))):
        raise ValueError(
            f"`dimension_numbers.{name}` must be a permutation of "
            f"range({len(lhs_shape)}), got {spec}.")
    return ConvDimensionNumbers(*specs)
  try:
    return lax.conv_dimension_numbers(tuple(lhs_shape), tuple(rhs_shape),
                                      dimension_numbers)
  except (TypeError, ValueError) as error:
    raise type(error)(f"`dimension_numbers`: {error}") from None


def _shape_of(value, name: str) -> tuple[int, ...]:
  if isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, str):
    return tuple(_geometry.as_int(v, name) for v in value)
  raise TypeError(f"`{name}` must be a sequence of ints, got {value!r}.")


_PRECISION_TYPES = (lax.Precision, lax.DotAlgorithm, lax.DotAlgorithmPreset)


def _canonical_precision(precision):
  """``None``, one precision, or a ``(lhs, rhs)`` pair, as hashable values.

  Strings are read as lax reads them: a ``lax.Precision`` name or alias
  (``"default"``, ``"high"``, ``"highest"``, ``"bfloat16"``,
  ``"tensorfloat32"``, ``"float32"``, ``"fastest"``, ...) or the name of a
  ``lax.DotAlgorithmPreset``.
  """
  if precision is None:
    return None
  if isinstance(precision, (list, tuple)) and len(precision) == 2:
    return tuple(_canonical_precision(p) for p in precision)
  if isinstance(precision, str):
    try:
      return lax.Precision(precision)
    except ValueError:
      pass
    try:
      return lax.DotAlgorithmPreset[precision]
    except KeyError:
      raise ValueError(
          f"`precision` string must name a lax.Precision ("
          f"{', '.join(repr(n) for n in _PRECISION_NAMES)}) or a "
          f"lax.DotAlgorithmPreset, got {precision!r}.") from None
  if isinstance(precision, _PRECISION_TYPES):
    return precision
  raise TypeError(
      f"`precision` must be None, a lax.Precision, a string, a dot algorithm "
      f"or a pair of them, got {precision!r}.")


_PRECISION_NAMES = ("default", "high", "highest", "bfloat16", "bfloat16_3x",
                    "tensorfloat32", "float32", "fastest")


_LAYER_NAMES = {"window_strides": "stride", "rhs_dilation": "dilation",
                "feature_group_count": "groups", "lhs": "x", "rhs": "w"}


def _argument_namer(names):
  names = names or {}
  return lambda key: names.get(key, key)


def make_conv_geometry(
    lhs_shape: Sequence[int],
    rhs_shape: Sequence[int],
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
    *,
    names: dict[str, str] | None = None,
    algorithm: str | None = None,
    policy=None,
    allow_empty: bool = False,
) -> ConvGeometry:
  """Validates convolution arguments and normalises them into a geometry.

  Takes the same arguments as ``lax.conv_general_dilated`` (with shapes in
  place of arrays) and checks everything in Python, so bad input fails with a
  ``ValueError``/``TypeError`` at call time, under ``jit`` and ``eval_shape``
  alike. Static arguments must be Python ints (or concrete integer arrays),
  not traced values.

  Args:
    lhs_shape: the input's shape.
    rhs_shape: the kernel's shape.
    window_strides: an int or one positive int per spatial dimension.
    padding: ``"SAME"``, ``"SAME_LOWER"``, ``"VALID"``, or ``(lo, hi)`` pairs
      (negative entries crop).
    lhs_dilation: input dilation, ``None`` for 1.
    rhs_dilation: kernel dilation, ``None`` for 1.
    dimension_numbers: as in ``lax.conv_general_dilated``.
    feature_group_count: number of feature groups.
    batch_group_count: number of batch groups.
    precision: as in ``lax``.
    preferred_element_type: accumulation/result dtype (floating or complex)
      or ``None``.
    names: how the caller calls these arguments, for error messages (e.g.
      ``{"window_strides": "stride"}``); missing keys keep the lax names.
    algorithm: ``None`` (the ``use_algorithm`` setting, ``"auto"`` by
      default), ``"auto"``, ``"xla"``, ``"shifted"``, ``"window_dot"``,
      ``"phased"``, ``"split_groups"``, ``"chunked"``, ``"folded"``,
      ``"stacked"``, ``"strips"`` or ``"grown"``.
    policy: ``None`` (the ``use_policy`` setting, else the host's
      preset), a ``jaxconv.Policy`` or a preset's name.
    allow_empty: accept a geometry whose output has a spatial size 0 (a
      dilated kernel larger than the padded input), as lax does; by default
      it is refused with a ``ValueError`` listing the sizes.

  Returns:
    A ``ConvGeometry``.
  """
  name = _argument_namer(names)
  lhs_shape = _shape_of(lhs_shape, "lhs_shape")
  rhs_shape = _shape_of(rhs_shape, "rhs_shape")
  dnums = _dimension_numbers(lhs_shape, rhs_shape, dimension_numbers)
  lhs_spec, rhs_spec, _ = dnums
  n = len(lhs_shape) - 2
  strides = _geometry.int_tuple(window_strides, n, name("window_strides"))
  lhs_dil = _geometry.int_tuple(lhs_dilation, n, name("lhs_dilation"),
                                default=1)
  rhs_dil = _geometry.int_tuple(rhs_dilation, n, name("rhs_dilation"),
                                default=1)
  kernel = _geometry.spatial_sizes(rhs_shape, rhs_spec)
  if any(k < 1 for k in kernel):
    raise ValueError(
        f"`{name('rhs')}` spatial sizes must be positive, got {kernel} "
        f"(shape {rhs_shape}).")
  in_sizes = _geometry.spatial_sizes(lhs_shape, lhs_spec)
  if isinstance(padding, str) and any(a != 1 for a in lhs_dil):
    raise ValueError(
        f"`{name('padding')}` string {padding!r} is not defined together "
        f"with `{name('lhs_dilation')}` {lhs_dil}; give explicit (lo, hi) "
        f"pairs, or use `conv_transpose` for a fractionally strided "
        f"convolution.")
  padding = _geometry.concrete(padding, name("padding"))
  if not isinstance(padding, str) and (
      not isinstance(padding, (Sequence, np.ndarray))
      or any(not isinstance(p, (Sequence, np.ndarray)) for p in padding)):
    raise TypeError(
        f"`{name('padding')}` must be 'SAME', 'SAME_LOWER', 'VALID' or a "
        f"sequence of {n} (lo, hi) pairs, got {padding!r}.")
  windows = [_geometry.dilated_size(k, d) for k, d in zip(kernel, rhs_dil)]
  pads = _geometry.padding_pairs(padding, in_sizes, windows, strides,
                                 name=name("padding"))
  padded = [_geometry.dilated_size(n, a) + lo + hi
            for n, a, (lo, hi) in zip(in_sizes, lhs_dil, pads)]
  if any(p < 0 for p in padded):
    raise ValueError(
        f"`{name('padding')}` {pads} crops more than the (dilated) input "
        f"holds: padded spatial sizes {tuple(padded)} for input spatial sizes "
        f"{in_sizes} and `{name('lhs_dilation')}` {lhs_dil}.")
  groups_name = name("feature_group_count")
  batch_groups_name = name("batch_group_count")
  groups = _geometry.as_int(feature_group_count, groups_name)
  batch_groups = _geometry.as_int(batch_group_count, batch_groups_name)
  if groups < 1:
    raise ValueError(f"`{groups_name}` must be positive, got {groups}.")
  if batch_groups < 1:
    raise ValueError(
        f"`{batch_groups_name}` must be positive, got {batch_groups}.")
  if groups > 1 and batch_groups > 1:
    raise ValueError(
        f"At most one of `{groups_name}` ({groups}) and "
        f"`{batch_groups_name}` ({batch_groups}) may exceed 1.")
  batch, in_features = lhs_shape[lhs_spec[0]], lhs_shape[lhs_spec[1]]
  out_features, kernel_in = rhs_shape[rhs_spec[0]], rhs_shape[rhs_spec[1]]
  if in_features % groups:
    raise ValueError(
        f"`{groups_name}` ({groups}) must divide the input features "
        f"({in_features}).")
  if kernel_in * groups != in_features:
    raise ValueError(
        f"`{name('rhs')}` input-feature size must be input features / "
        f"{groups_name} = {in_features} / {groups} = "
        f"{in_features // groups}, got {kernel_in} (shape {rhs_shape})."
        + _kernel_layout_hint(rhs_shape, rhs_spec, in_features // groups))
  if out_features % groups:
    raise ValueError(
        f"`{groups_name}` ({groups}) must divide the kernel's output "
        f"features ({out_features}).")
  if batch % batch_groups:
    raise ValueError(
        f"`{batch_groups_name}` ({batch_groups}) must divide the batch size "
        f"({batch}).")
  if out_features % batch_groups:
    raise ValueError(
        f"`{batch_groups_name}` ({batch_groups}) must divide the kernel's "
        f"output features ({out_features}).")
  if preferred_element_type is not None:
    preferred = np.dtype(preferred_element_type)
    if not jnp.issubdtype(preferred, jnp.inexact):
      raise TypeError(
          f"`{name('preferred_element_type')}` must be a floating or complex "
          f"dtype, got {preferred}.")
    preferred_element_type = jax.dtypes.canonicalize_dtype(preferred)
  precision = _canonical_precision(precision)
  geometry = ConvGeometry(strides, pads, lhs_dil, rhs_dil, dnums, groups,
                          batch_groups, precision, preferred_element_type,
                          _algorithms.check_algorithm(algorithm),
                          _algorithms.check_policy(policy))
  out_shape = conv_output_shape(geometry, lhs_shape, rhs_shape)
  out_spatial = _geometry.spatial_sizes(out_shape, dnums.out_spec)
  if not allow_empty and any(m < 1 for m in out_spatial):
    raise ValueError(
        f"The convolution has no output: output spatial sizes {out_spatial} "
        f"for input spatial sizes {in_sizes}, input dilation {lhs_dil}, "
        f"padding {pads}, kernel {kernel}, kernel dilation {rhs_dil}; the "
        f"dilated kernel must fit inside the padded input.")
  return geometry


def _kernel_layout_hint(rhs_shape, rhs_spec, expected: int) -> str:
  """A hint for a kernel whose input-feature axis has the wrong size while
  another axis has the right one: a kernel in another layout, most often
  PyTorch's ``(C_out, C_in, *window)`` where ``(*window, C_in, C_out)`` was
  expected."""
  others = [axis for axis, size in enumerate(rhs_shape)
            if axis != rhs_spec[1] and size == expected]
  if not others:
    return ""
  n = len(rhs_shape) - 2
  channels_last = tuple(rhs_spec) == (n + 1, n) + tuple(range(n))
  if channels_last and n >= 2 and rhs_shape[1] == expected:
    order = tuple(range(2, n + 2)) + (1, 0)
    return (f" It looks like PyTorch's (C_out, C_in, *window) layout; the "
            f"kernel here is (*window, C_in // groups, C_out): transpose it "
            f"with `jnp.transpose(w, {order})`.")
  return (f" Axis {others[0]} has {expected} entries: is the kernel in "
          f"another layout than `dimension_numbers` says (input features on "
          f"axis {rhs_spec[1]})?")


def _operands(lhs, rhs, lhs_name: str = "lhs", rhs_name: str = "rhs"):
  """Both operands as lax sees them: NumPy arrays converted to JAX arrays
  with the canonical dtype (float64 becomes float32 while 64-bit types are
  off) before the check that they share one floating or complex dtype."""
  lhs = _geometry.as_array(lhs, lhs_name)
  rhs = _geometry.as_array(rhs, rhs_name)
  _geometry.check_same_dtype(lhs, rhs, lhs_name, rhs_name,
                             complex_ok=True)
  return lhs, rhs


def _check_preferred(dtype, preferred_element_type) -> None:
  """lax's rule: a real operand accumulates in a real floating dtype, a
  complex one in a complex dtype, never a narrower one."""
  if preferred_element_type is None:
    return
  preferred = np.dtype(preferred_element_type)
  complex_operands = jnp.issubdtype(dtype, jnp.complexfloating)
  kind = jnp.complexfloating if complex_operands else jnp.floating
  if not jnp.issubdtype(preferred, kind):
    raise TypeError(
        f"`preferred_element_type` must be a "
        f"{'complex' if complex_operands else 'real floating'} dtype for "
        f"{dtype} operands, got {preferred}.")
  if preferred.itemsize < np.dtype(dtype).itemsize:
    raise TypeError(
        f"`preferred_element_type` must not be narrower than the operands' "
        f"dtype {dtype}, got {preferred}.")


def _check_same_kind(cotangent_dtype, operand_dtype, operand_name: str):
  """A real cotangent belongs to a real convolution, a complex one to a
  complex convolution."""
  if (jnp.issubdtype(cotangent_dtype, jnp.complexfloating)
      != jnp.issubdtype(operand_dtype, jnp.complexfloating)):
    raise TypeError(
        f"`cotangent` and `{operand_name}` must both be real or both be "
        f"complex, got {cotangent_dtype} and {operand_dtype}.")


# ---------------------------------------------------------------------------
# Public API.
# ---------------------------------------------------------------------------


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: int | Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
    *,
    algorithm: str | None = None,
) -> jax.Array:
  r"""General N-D convolution with hand-derived gradients.

  Same signature and results as ``lax.conv_general_dilated``; the gradients
  come from the derivation (``docs/derivation.md``, Part I) instead of lax's
  transpose rules. Implements eqs. (5)-(6) and (17):

  .. math::
    y[n, o, i] = \sum_{c \in \mathrm{group}(o)} \sum_k w[o, c, k]\,
                 \hat x[n, c, s i + d k]

  where :math:`\hat x` is the input dilated by ``lhs_dilation`` and padded.

  Args:
    lhs: input, rank ``n + 2``; floating or complex dtype. NumPy arrays are
      converted as lax converts them (float64 becomes float32 while 64-bit
      types are disabled).
    rhs: kernel, rank ``n + 2``, same dtype as ``lhs``.
    window_strides: an int or ``n`` positive ints.
    padding: ``"SAME"``, ``"SAME_LOWER"``, ``"VALID"``, or ``n`` ``(lo, hi)``
      pairs; negative entries crop.
    lhs_dilation: ``None`` or ``n`` positive ints (input dilation, as in a
      transposed convolution).
    rhs_dilation: ``None`` or ``n`` positive ints (kernel dilation, atrous).
    dimension_numbers: ``None`` (``NC...``, ``OI...``, ``NC...``), a tuple of
      three layout strings such as ``("NHWC", "HWIO", "NHWC")``, or a
      ``lax.ConvDimensionNumbers``.
    feature_group_count: ``G``; input features and output features are split
      into ``G`` groups convolved separately (depthwise when ``G`` = inputs).
    batch_group_count: ``B``; the batch is split into ``B`` groups, each
      producing its own block of output features.
    precision: as in ``lax``.
    preferred_element_type: accumulation and result dtype, or ``None``.
    algorithm: how each convolution of the rule is evaluated: ``None`` (the
      ``use_algorithm`` setting, ``"auto"`` by default), ``"auto"``,
      ``"xla"``, ``"shifted"``, ``"window_dot"``, ``"phased"``,
      ``"split_groups"``, ``"chunked"``, ``"folded"``, ``"stacked"``,
      ``"strips"`` or ``"grown"`` (see ``docs/performance.md``).
      The results are the same up to rounding.

  Returns:
    The convolution, in the layout of ``dimension_numbers``' output spec;
    empty (with zero gradients) where the dilated kernel does not fit the
    padded input, as in lax. Gradients with respect to ``lhs`` and ``rhs``
    come back in their dtypes; for complex operands they are JAX's cotangents
    (the transpose of the linear map, no conjugation: eq. 28).
  """
  lhs, rhs = _operands(lhs, rhs)
  geometry = make_conv_geometry(
      lhs.shape, rhs.shape, window_strides, padding, lhs_dilation,
      rhs_dilation, dimension_numbers, feature_group_count, batch_group_count,
      precision, preferred_element_type, algorithm=algorithm,
      allow_empty=True)
  _check_preferred(lhs.dtype, geometry.preferred_element_type)
  return _conv(lhs, rhs, geometry)


def conv_input_grad(
    cotangent: jax.Array,
    rhs: jax.Array,
    lhs_shape: Sequence[int],
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
    *,
    algorithm: str | None = None,
) -> jax.Array:
  r"""Gradient of ``conv_general_dilated`` with respect to its input.

  The input gradient of eqs. (12)-(17): the cotangent, dilated by the forward
  stride, fully convolved with the 180-degree rotated, I/O-swapped kernel

  .. math::
    \frac{\partial E}{\partial \hat x[n, c, j]} = \sum_o \sum_k
    \tilde\delta[n, o, j - d k]\, w[o, c, k],

  with the forward padding taken back and every ``a``-th position kept. Like
  PyTorch's ``torch.nn.grad.conv2d_input``, but N-D and with every option of
  ``lax.conv_general_dilated``. Differentiable to any order.

  Args:
    cotangent: ``dE/dy``, shaped like the forward output.
    rhs: the forward kernel.
    lhs_shape: the forward input's shape.
    window_strides: the forward stride, as in ``conv_general_dilated``.
    padding: the forward padding, as in ``conv_general_dilated``.
    lhs_dilation: the forward input dilation.
    rhs_dilation: the forward kernel dilation.
    dimension_numbers: the forward layouts.
    feature_group_count: the forward number of feature groups.
    batch_group_count: the forward number of batch groups.
    precision: as in ``conv_general_dilated``.
    preferred_element_type: as in ``conv_general_dilated``.
    algorithm: as in ``conv_general_dilated``.

  Returns:
    ``dE/dx`` with shape ``lhs_shape`` and ``rhs``'s dtype.
  """
  cotangent = _geometry.as_array(cotangent, "cotangent")
  rhs = _geometry.as_array(rhs, "rhs")
  cotangent_dtype = _geometry.check_inexact(cotangent, "cotangent")
  rhs_dtype = _geometry.check_inexact(rhs, "rhs")
  _check_same_kind(cotangent_dtype, rhs_dtype, "rhs")
  lhs_shape = _shape_of(lhs_shape, "lhs_shape")
  geometry = make_conv_geometry(
      lhs_shape, rhs.shape, window_strides, padding, lhs_dilation,
      rhs_dilation, dimension_numbers, feature_group_count, batch_group_count,
      precision, preferred_element_type, algorithm=algorithm,
      allow_empty=True)
  _check_preferred(rhs_dtype, geometry.preferred_element_type)
  _check_cotangent(cotangent, geometry, lhs_shape, rhs.shape)
  return _input_gradient(cotangent, rhs, lhs_shape, rhs_dtype, geometry)


def conv_kernel_grad(
    lhs: jax.Array,
    cotangent: jax.Array,
    rhs_shape: Sequence[int],
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
    *,
    algorithm: str | None = None,
) -> jax.Array:
  r"""Gradient of ``conv_general_dilated`` with respect to its kernel.

  The weight gradient of eqs. (9), (10) and (18): the correlation of the
  (padded, dilated) input with the cotangent, summed over the batch

  .. math::
    \frac{\partial E}{\partial w[o, c, k]} = \sum_n \sum_i
    \delta[n, o, i]\, \hat x[n, c, s i + d k].

  Like PyTorch's ``torch.nn.grad.conv2d_weight``, but N-D and with every
  option of ``lax.conv_general_dilated``. Differentiable to any order.

  Args:
    lhs: the forward input.
    cotangent: ``dE/dy``, shaped like the forward output.
    rhs_shape: the forward kernel's shape.
    window_strides: the forward stride, as in ``conv_general_dilated``.
    padding: the forward padding, as in ``conv_general_dilated``.
    lhs_dilation: the forward input dilation.
    rhs_dilation: the forward kernel dilation.
    dimension_numbers: the forward layouts.
    feature_group_count: the forward number of feature groups.
    batch_group_count: the forward number of batch groups.
    precision: as in ``conv_general_dilated``.
    preferred_element_type: as in ``conv_general_dilated``.
    algorithm: as in ``conv_general_dilated``.

  Returns:
    ``dE/dw`` with shape ``rhs_shape`` and ``lhs``'s dtype.
  """
  cotangent = _geometry.as_array(cotangent, "cotangent")
  lhs = _geometry.as_array(lhs, "lhs")
  cotangent_dtype = _geometry.check_inexact(cotangent, "cotangent")
  lhs_dtype = _geometry.check_inexact(lhs, "lhs")
  _check_same_kind(cotangent_dtype, lhs_dtype, "lhs")
  rhs_shape = _shape_of(rhs_shape, "rhs_shape")
  geometry = make_conv_geometry(
      lhs.shape, rhs_shape, window_strides, padding, lhs_dilation,
      rhs_dilation, dimension_numbers, feature_group_count, batch_group_count,
      precision, preferred_element_type, algorithm=algorithm,
      allow_empty=True)
  _check_preferred(lhs_dtype, geometry.preferred_element_type)
  _check_cotangent(cotangent, geometry, lhs.shape, rhs_shape)
  return _kernel_gradient(lhs, cotangent, rhs_shape, lhs_dtype, geometry)


def conv_bias_grad(cotangent: jax.Array, feature_axis: int = -1) -> jax.Array:
  r"""Gradient of a convolution's bias: the sum of the deltas (eq. 11).

  .. math::
    \frac{\partial E}{\partial b[o]} = \sum_n \sum_i \delta[n, o, i]

  Args:
    cotangent: ``dE/dz`` for ``z = y + b``.
    feature_axis: the axis of the output features (``-1`` for channels last).

  Returns:
    A vector with one entry per output feature.
  """
  cotangent = _geometry.as_array(cotangent, "cotangent")
  _geometry.check_inexact(cotangent, "cotangent")
  axis = _geometry.as_int(feature_axis, "feature_axis")
  if not -cotangent.ndim <= axis < cotangent.ndim:
    raise ValueError(
        f"`feature_axis` must lie in [-{cotangent.ndim}, {cotangent.ndim}) "
        f"for a cotangent of shape {cotangent.shape}, got {axis}.")
  return _bias_gradient(cotangent, axis % cotangent.ndim)


def _check_cotangent(cotangent, geometry, lhs_shape, rhs_shape):
  expected = conv_output_shape(geometry, lhs_shape, rhs_shape)
  if tuple(cotangent.shape) != expected:
    raise ValueError(
        f"`cotangent` must have the forward output's shape {expected}, got "
        f"{tuple(cotangent.shape)}.")


def _channels_last_numbers(n: int) -> ConvDimensionNumbers:
  """Flax's layout: input ``(N, *spatial, C)``, kernel ``(*spatial, I, O)``."""
  lhs = (0, n + 1) + tuple(range(1, n + 1))
  rhs = (n + 1, n) + tuple(range(n))
  return ConvDimensionNumbers(lhs, rhs, lhs)


def conv(
    x: jax.Array,
    w: jax.Array,
    b: jax.Array | None = None,
    *,
    stride: int | Sequence[int] = 1,
    padding="VALID",
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    padding_mode: str | None = None,
    algorithm: str | None = None,
) -> jax.Array:
  r"""Convolution layer, channels last, with hand-derived gradients.

  Implements eqs. (5)-(7): ``z = conv(x, w) + b`` with

  .. math::
    z[n, i, o] = \sum_{c} \sum_k w[k, c, o]\, \hat x[n, s i + d k, c] + b[o].

  The gradients are eqs. (9) (kernel), (11) (bias: the sum of the deltas) and
  (12)-(16) (input). Flax's ``nn.Conv`` kernels drop in unchanged, and so do
  its ``"CIRCULAR"``, ``"REFLECT"`` and ``"CAUSAL"`` paddings; PyTorch's
  ``padding_mode`` is ``padding_mode`` here. A padding mode other than zeros
  pads the input with ``jaxconv.pad`` (eqs. 25-26) and convolves the result
  without padding.

  Args:
    x: input ``(batch..., *spatial, C_in)``: any number of leading batch
      dimensions (flattened internally), or none for a single example.
      Floating or complex.
    w: kernel ``(*window, C_in // groups, C_out)``, in ``x``'s dtype.
    b: optional bias ``(C_out,)``, in ``x``'s dtype.
    stride: an int or one per spatial dimension.
    padding: how much to pad: ``"SAME"``, ``"SAME_LOWER"``, ``"VALID"``, an
      int (symmetric, every dimension), one int per dimension, or ``(lo,
      hi)`` pairs; or Flax's ``"CIRCULAR"`` and ``"REFLECT"`` (``((K_d -
      1) // 2, K_d // 2)`` per dimension, ``K_d`` the dilated kernel extent,
      padded circularly or by reflection) and ``"CAUSAL"`` (one spatial
      dimension: ``(K_d - 1, 0)``).
    dilation: kernel dilation, an int or one per spatial dimension.
    groups: feature groups (``groups = C_in`` gives a depthwise convolution).
    padding_mode: what fills the padding, as in PyTorch: ``"zeros"`` (the
      default), ``"circular"``, ``"reflect"`` or ``"replicate"`` (also
      ``jnp.pad``'s names ``"constant"``, ``"wrap"``, ``"edge"``). With
      ``"CIRCULAR"`` or ``"REFLECT"`` padding it may be left out or must
      agree. ``"reflect"`` needs each amount smaller than the input's size.
    algorithm: as in ``conv_general_dilated``.

  Returns:
    ``(batch..., *out_spatial, C_out)`` in ``x``'s dtype.
  """
  x, w = _operands(x, w, "x", "w")
  n = w.ndim - 2
  if n < 1:
    raise ValueError(
        f"`w` must have shape (*window, C_in // groups, C_out) with at least "
        f"one spatial dimension, got shape {w.shape}.")
  if x.ndim < n + 1:
    raise ValueError(
        f"`x` must have shape (batch..., *spatial, C_in) with {n} spatial "
        f"dimensions (from `w` of shape {w.shape}), got shape {x.shape}.")
  batch_shape = x.shape[:x.ndim - n - 1]
  lhs = x.reshape((int(np.prod(batch_shape, dtype=int)),) + x.shape[-n - 1:])
  pads, mode = _layer_padding_and_mode(lhs.shape[1:-1], w.shape[:n], stride,
                                       padding, dilation, padding_mode)
  if mode != "zeros":
    lhs = _padding._pad(lhs, ((0, 0),) + pads + ((0, 0),), mode)
    pads = ((0, 0),) * n
  geometry = make_conv_geometry(
      lhs.shape, w.shape, stride, pads, None, dilation,
      _channels_last_numbers(n), groups, names=_LAYER_NAMES,
      algorithm=algorithm)
  y = _conv(lhs, w, geometry)
  if b is not None:
    b = _geometry.as_array(b, "b")
    _geometry.check_inexact(b, "b")
    if tuple(b.shape) != (w.shape[-1],):
      raise ValueError(
          f"`b` must have shape (C_out,) = ({w.shape[-1]},), got {b.shape}.")
    if b.dtype != y.dtype:
      raise TypeError(f"`b` must have dtype {y.dtype} like `x`, got {b.dtype}.")
    y = _add_bias(y, b, y.ndim - 1)
  return y.reshape(batch_shape + y.shape[1:])


_LAYER_PADDING_STRINGS = ("SAME", "SAME_LOWER", "VALID", "CIRCULAR",
                          "REFLECT", "CAUSAL")

# Flax's padding strings that name a mode as well as an amount.
_MODE_OF_PADDING = {"CIRCULAR": "circular", "REFLECT": "reflect"}


def _layer_padding_and_mode(in_sizes, kernel, stride, padding, dilation,
                            padding_mode):
  """``conv``'s padding as ``(lo, hi)`` pairs and the mode filling them.

  Flax's ``"CIRCULAR"`` and ``"REFLECT"`` pad ``((K_d - 1) // 2, K_d // 2)``
  (whatever the stride) and ``"CAUSAL"`` ``(K_d - 1, 0)``; every other
  padding means what it means to ``conv_general_dilated``.
  """
  n = len(kernel)
  mode = (None if padding_mode is None
          else _padding.canonical_mode(padding_mode, "padding_mode"))
  strides = _geometry.int_tuple(stride, n, "stride")
  dilations = _geometry.int_tuple(dilation, n, "dilation", default=1)
  if any(k < 1 for k in kernel):
    raise ValueError(
        f"`w` spatial sizes must be positive, got {tuple(kernel)}.")
  windows = [_geometry.dilated_size(k, d) for k, d in zip(kernel, dilations)]
  if isinstance(padding, str):
    key = padding.upper()
    if key not in _LAYER_PADDING_STRINGS:
      raise ValueError(
          f"`padding` string must be one of {_LAYER_PADDING_STRINGS}, got "
          f"{padding!r}.")
    if key in _MODE_OF_PADDING:
      implied = _MODE_OF_PADDING[key]
      if mode not in (None, implied):
        raise ValueError(
            f"`padding` {padding!r} pads in mode {implied!r}; it cannot be "
            f"combined with `padding_mode` {padding_mode!r}.")
      mode = implied
      pads = tuple(((e - 1) // 2, e // 2) for e in windows)
    elif key == "CAUSAL":
      if n != 1:
        raise ValueError(
            f"`padding` 'CAUSAL' is defined for one spatial dimension (as in "
            f"Flax), got a kernel with {n}.")
      pads = ((windows[0] - 1, 0),)
    else:
      pads = _geometry.padding_pairs(key, in_sizes, windows, strides)
  else:
    pads = layer_padding(padding, n)
  mode = mode or "zeros"
  if mode != "zeros":
    _padding.check_pads(in_sizes, pads, mode, name="padding",
                        mode_name="padding_mode",
                        labels=[f"spatial dimension {i}" for i in range(n)])
  return pads, mode


def layer_padding(padding, n):
  """``conv``'s padding: an int or one int per dim means symmetric padding."""
  if isinstance(padding, (Sequence, np.ndarray)):
    entries = list(padding)
    if len(entries) != n:
      raise ValueError(
          f"`padding` must have one entry per spatial dimension ({n}), got "
          f"{len(entries)}: {padding!r}.")
  return _geometry.padding_pairs(padding, [0] * n, [0] * n, [1] * n)


def _transpose_padding(kernel_extent: int, stride: int, padding):
  """Padding of the fractionally strided convolution behind conv_transpose.

  ``conv_transpose`` spreads the input onto a grid of step ``s`` (input
  dilation) and correlates it with the kernel (extent ``K_d``), like the input
  gradient of eq. (14). The strings name the forward convolution whose
  gradient this would be:

  * ``"SAME"``: output length ``N s``. The total padding is ``K_d + s - 2``;
    the low side gets ``K_d - 1`` when ``s > K_d - 1`` (the full padding of a
    window that never overlaps its neighbour), half (rounded up) otherwise.
  * ``"VALID"``: output length ``N s + max(K_d - s, 0)``: low ``K_d - 1``,
    high ``s - 1 + max(K_d - s, 0)``.
  * ``(lo, hi)`` (only with ``use_consistent_padding=True``): the forward
    convolution's padding; the transposed one pads ``K_d - 1 - lo`` and
    ``K_d - 1 - hi``, as in eq. (14).
  """
  if padding == "SAME":
    total = kernel_extent + stride - 2
    low = (kernel_extent - 1 if stride > kernel_extent - 1
           else -(-total // 2))
    return low, total - low
  if padding == "VALID":
    return (kernel_extent - 1,
            stride - 1 + max(kernel_extent - stride, 0))
  lo, hi = padding
  return kernel_extent - 1 - lo, kernel_extent - 1 - hi


def conv_transpose(
    lhs: jax.Array,
    rhs: jax.Array,
    strides: int | Sequence[int],
    padding,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    transpose_kernel: bool = False,
    precision=None,
    preferred_element_type=None,
    use_consistent_padding: bool = False,
    *,
    algorithm: str | None = None,
) -> jax.Array:
  r"""Transposed convolution with hand-derived gradients.

  Same signature and results as ``lax.conv_transpose``. A transposed
  convolution is the operator of the input gradient (eq. 19): the input is
  spread onto a grid of step ``strides`` (input dilation) and correlated with
  the kernel,

  .. math::
    y[n, o, j] = \sum_c \sum_k \tilde x[n, c, j - p_{lo} + d k]\, w[o, c, k],
    \qquad \tilde x[s i] = x[i].

  Its gradients are those of ``conv_general_dilated`` with that geometry.

  Args:
    lhs: input, rank ``n + 2`` (``n = 0`` spatial dimensions included, as in
      lax); floating or complex, NumPy arrays converted as lax converts them.
    rhs: kernel, rank ``n + 2``, same dtype.
    strides: the upsampling factor per spatial dimension.
    padding: ``"SAME"`` (output ``N s``), ``"VALID"`` (output
      ``N s + max(K_d - s, 0)``), or ``(lo, hi)`` pairs: the padding of the
      fractionally strided convolution itself, or, with
      ``use_consistent_padding=True``, the forward convolution's padding.
    rhs_dilation: kernel dilation.
    dimension_numbers: as in ``lax``; ``None`` means channels last
      (``N...C``, ``...IO``, ``N...C``) for any number of spatial dimensions.
    transpose_kernel: flip the kernel's spatial axes and swap its I/O axes,
      giving the exact gradient operator of a forward convolution with the
      same kernel.
    precision: as in ``lax``.
    preferred_element_type: accumulation and result dtype, or ``None``.
    use_consistent_padding: interpret explicit pairs as the forward padding.
    algorithm: as in ``conv_general_dilated``.

  Returns:
    The transposed convolution, in the output layout; empty (with zero
    gradients) where no window fits, as in lax.
  """
  lhs, rhs = _operands(lhs, rhs)
  if lhs.ndim != rhs.ndim or lhs.ndim < 2:
    raise ValueError(
        f"`lhs` and `rhs` must have the same rank >= 2 (batch and feature "
        f"axes, then the spatial ones), got shapes {lhs.shape} and "
        f"{rhs.shape}.")
  n = lhs.ndim - 2
  if dimension_numbers is None:
    dimension_numbers = _channels_last_numbers(n)
  dnums = _dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  strides = _geometry.int_tuple(strides, n, "strides")
  dilation = _geometry.int_tuple(rhs_dilation, n, "rhs_dilation", default=1)
  kernel = _geometry.spatial_sizes(rhs.shape, dnums.rhs_spec)
  extents = [_geometry.dilated_size(k, d) for k, d in zip(kernel, dilation)]
  if isinstance(padding, str):
    if padding.upper() not in ("SAME", "VALID"):
      raise ValueError(
          f"`padding` string must be 'SAME' or 'VALID', got {padding!r}.")
    pads = tuple(_transpose_padding(e, s, padding.upper())
                 for e, s in zip(extents, strides))
  else:
    pairs = _geometry.padding_pairs(padding, [0] * n, [0] * n, [1] * n)
    if use_consistent_padding:
      pads = tuple(_transpose_padding(e, s, p)
                   for e, s, p in zip(extents, strides, pairs))
    else:
      pads = pairs
  if transpose_kernel:
    rhs = jnp.flip(rhs, axis=tuple(dnums.rhs_spec[2:]))
    rhs = jnp.swapaxes(rhs, dnums.rhs_spec[0], dnums.rhs_spec[1])
  geometry = make_conv_geometry(
      lhs.shape, rhs.shape, 1, pads, strides, dilation, dnums, 1, 1,
      precision, preferred_element_type, algorithm=algorithm,
      allow_empty=True)
  _check_preferred(lhs.dtype, geometry.preferred_element_type)
  return _conv(lhs, rhs, geometry)
