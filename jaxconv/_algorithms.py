"""How a convolution is evaluated: XLA's kernel or a direct contraction.

The rules in ``convolution.py`` decide *what* to compute: the forward pass
and each gradient are convolutions with a known geometry (eqs. 5, 10, 14).
This module decides *how* to evaluate one such convolution. Because every
gradient is a convolution of its own, each of the three (forward, input
gradient, kernel gradient) picks its algorithm independently, by its own
shape.

Algorithms (all compute eq. 5 exactly, with groups and batch groups):

``"xla"``
    ``lax.conv_general_dilated``: XLA's native convolution.
``"shifted"``
    Shifted-slice accumulation, one term per kernel tap ``k``:
    ``y = sum_k contract_c(x^[s*i + d*k], w[k])``. A 1x1 kernel is a single
    matrix product over the channels; a depthwise kernel is a fused
    elementwise multiply-add. Needs few taps.
``"window_dot"``
    One contraction per *output position* ``i``: the whole window of ``x^``
    under output ``i`` against the whole kernel. This is eq. (9) read
    directly: the kernel gradient has as many outputs as the forward kernel
    has taps, and each is one large matrix product over batch and positions
    (or, with one output feature per group, a product summed over them; all
    positions are then one reduction). In channels-last layouts batch and
    positions are merged into one axis first (``_long_contraction``).
    Needs few output positions.
``"phased"``
    Input dilation ``a`` (stride 1 and kernel dilation 1 in those
    dimensions) split into its ``a^n`` output phases, eq. (23): each phase is
    an ordinary convolution of the undilated input with a sub-kernel,
    evaluated by the algorithm chosen for it, and the phases interleave back
    by a reshape. No product with an inserted zero is computed.
``"split_groups"``
    Feature groups (eq. 6) or batch groups (eq. 17) as that many independent
    dense convolutions on the feature (batch) blocks, each evaluated by the
    algorithm chosen for it, concatenated along the output features.
``"chunked"``
    The samples in chunks (``chunk_samples``: at most ``CHUNK_SAMPLES``, and
    fewer when a sample is large), each chunk a convolution of its own,
    evaluated by the algorithm chosen for it. The samples are the
    input's outermost axis: its batch in the forward pass and the input
    gradient (the chunks' outputs are concatenated), its contracted feature
    axis in the kernel gradient (eq. 9 sums over the batch; the chunks'
    kernel gradients are added).
``"folded"``
    The first spatial dimension unrolled, a row at a time (eq. 70, the sum
    of eq. 5 split over its rows): one convolution of one spatial
    dimension fewer per kernel row ("taps": the output rows merged with the
    batch, the terms summed) or per
    output row ("positions": the window's rows merged with the contracted
    features, the results stacked), each evaluated by the algorithm chosen
    for it. The merges are free reshapes, so each form needs its layout
    (``_fold_form``).
``"stacked"``
    The "taps" form of ``"folded"`` as a single convolution of one
    dimension fewer (eq. 72): the kernel's rows stacked on its output
    features, the input's rows merged with the batch, each output row the
    sum of ``K_0`` rows of the result; with a stride ``s`` in the first
    dimension, one such convolution per row phase of the input, at most
    ``s`` (eq. 73).
``"strips"``
    A kernel gradient of a channels-last 2-D layer (eq. 71) as a loop over
    strips of the delta's rows: in each strip the input's column shifts
    side by side on the channel axis (im2col over the last dimension), one
    matrix product per kernel row, the strips' products summed.
``"grown"``
    XLA's kernel on an output grown past the input: in one spatial
    dimension the input's far end is padded by enough zeros for one output
    position (or a few) beyond the input's length, which are sliced off
    again. The first positions are those of eq. (5) unchanged. XLA's CPU
    backend (jax 0.10) hands no such convolution to YNNPACK and runs it on
    its Eigen kernel instead.

The direct algorithms slice and contract the arrays in their own layouts
(the axes are named through the dimension numbers), so no operand is first
transposed into a working layout; XLA lays out each contraction.

``choose_algorithm`` is a pure function of the static geometry, the shapes and
the backend (and, through ``FOLD_KERNEL_GRADIENTS``, ``FOLD_STRIDED``,
``STACK_TAPS``, ``PHASE_FEW_TAPS`` and ``STRIP_KERNEL_GRADIENTS``, of the host
CPU's vendor and whether it has AVX-512, and through
``XLA_YNNPACK_CONVOLUTIONS`` and ``GROW_OUTPUTS`` of which kernel XLA uses
for 2-D convolutions, each read once per process); a user can
force an algorithm with the ``algorithm=`` keyword or the ``use_algorithm``
context manager. A forced algorithm is used for every convolution of the rule
whose shape it supports (at most ``MAX_UNROLLED`` taps, output positions,
phases or groups; ``"phased"`` needs input dilation, ``"split_groups"`` groups,
``"chunked"`` more than one chunk of samples, ``"folded"`` two spatial
dimensions and a layout it can merge, ``"stacked"`` that without groups or
input dilation in the first dimension, ``"strips"`` a channels-last
2-D kernel gradient, ``"grown"`` no input dilation), and XLA's kernel for
the rest. Inside ``"phased"``,
``"split_groups"`` and ``"chunked"`` a forced choice therefore leaves the
undilated phases, the dense groups and the chunks to XLA; a forced ``"folded"``
(or ``"stacked"``) folds its own convolutions again, down to one spatial
dimension.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

ALGORITHMS = ("auto", "xla", "shifted", "window_dot", "phased",
              "split_groups", "chunked", "folded", "stacked", "strips",
              "grown")

# Largest number of terms (kernel taps for "shifted", output positions for
# "window_dot", phases for "phased", groups for "split_groups", chunks for
# "chunked", rows for "folded"): beyond it compile time grows for little gain.
MAX_UNROLLED = 64

# "chunked": at most CHUNK_SAMPLES samples per chunk, and fewer where that
# would put more than CHUNK_ELEMENTS elements of the largest split array in one
# chunk; CHUNK_MIN_ELEMENTS is the size of the largest array from which the
# CPU policy chunks a dense convolution.
CHUNK_SAMPLES = 8
CHUNK_ELEMENTS = 2_000_000
CHUNK_MIN_ELEMENTS = 4_500_000

# "folded": the size of the largest array from which the CPU policy folds a
# dense convolution's first spatial dimension, and the fewest contracted
# features a 2-D one must have (3-D and higher fold whatever their features).
FOLD_MIN_ELEMENTS = 250_000
FOLD_MIN_FEATURES = 64

# "folded" for 2-D kernel gradients too (the convolutions of eq. 9, which
# contract the samples), whatever their number: ``None`` decides by the host,
# yes on an x86 CPU without AVX-512 or an Intel one with it, where folding
# measured faster, no on other AVX-512 CPUs (AMD's, where it measured slower)
# and where the CPU's flags are unknown (``host_has_avx512``,
# ``host_cpu_vendor``);
# ``True`` or ``False`` forces it.
FOLD_KERNEL_GRADIENTS = None

# "folded" in the "taps" form for a layer strided in its first spatial
# dimension too (the forward pass of a stride-2 layer): ``None`` decides by
# the host, yes on an x86 CPU with AVX-512 (measured faster on an Intel Xeon
# and, together with the three rules below, on an AMD EPYC), no elsewhere
# (on the AMD CPU without AVX-512 strided rows were no faster); ``True`` or
# ``False`` forces it.
FOLD_STRIDED = None

# "stacked" in place of "folded" where the fold is in the "taps" form (eq.
# 72: one convolution with the kernel's rows stacked on its output features
# instead of one per kernel row; with a stride, one per row phase, eq. 73):
# ``None`` decides by the host, yes on an x86 CPU with AVX-512, where it
# measured faster (Intel Xeon, AMD EPYC), no elsewhere (not measured);
# ``True`` or ``False`` forces it.
STACK_TAPS = None

# "phased" for input dilation a with fewer than 2a taps in a dilated
# dimension too (the input gradient of a 3x3 stride-2 layer, whose phases
# have one or two taps): ``None`` decides by the host, yes on an x86 CPU
# with AVX-512, where it measured faster with the phases' own convolutions
# folded or stacked (Intel Xeon, AMD EPYC), no elsewhere (XLA's kernel
# measured as fast or faster on the AMD CPUs against phases with XLA's
# kernel inside); ``True`` or ``False`` forces it.
PHASE_FEW_TAPS = None

# "strips" for the kernel gradients of channels-last 2-D layers (eq. 71)
# with an operand of at least STRIP_MIN_ELEMENTS elements, whose strip
# patches are at least STRIP_MIN_WIDTH wide (input features times kernel
# columns) and each patch element is used at least STRIP_MIN_REUSE times
# (kernel rows times output features): ``None`` decides by the host, yes on
# an x86 CPU with AVX-512, where it was measured faster (Intel Xeon, AMD
# EPYC), no elsewhere (not measured); ``True`` or ``False`` forces it.
STRIP_KERNEL_GRADIENTS = None
STRIP_MIN_ELEMENTS = 400_000
STRIP_MIN_WIDTH = 64
STRIP_MIN_REUSE = 96

# Whether XLA's own CPU kernel for a 2-D convolution is YNNPACK's. In jax
# 0.10 XLA hands 2-D channels-last float convolutions with more than 16
# features and no input dilation to YNNPACK by default; with those turned
# off (``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-LIBRARY_FUSION_
# TYPE_INDIVIDUAL_CONVOLUTION``) it uses its Eigen kernel, which on the
# Intel CPU with AVX-512 took 0.3-0.7 of YNNPACK's time on the suite's dense
# 2-D forward passes and input gradients and 0.2-0.8 on their kernel
# gradients, matched the direct algorithms below on the first and beat them
# on the kernel gradients and strided forward passes (docs/performance.md,
# "XLA's two CPU kernels"). Every other rule of the policy was measured
# against YNNPACK. ``None`` decides by compiling one small probe
# convolution, once per process, and looking for a YNNPACK fusion in it
# (``xla_convolutions_in_ynnpack``); ``True`` or ``False`` forces it.
XLA_YNNPACK_CONVOLUTIONS = None

# "grown" for dense 2-D convolutions without input dilation where XLA hands
# 2-D convolutions to YNNPACK: XLA (jax 0.10) declines YNNPACK for a
# convolution whose output is longer than its input in a spatial dimension
# and runs it on its Eigen kernel, so "grown" pads the input's far end by
# enough for one output row (or a few) past the input and slices them off.
# That costs at most GROW_MAX_FRACTION more output rows (one in 56 for a
# "same" 3x3 layer at 56x56). ``None`` decides by compiling one small
# probe, once per process, and checking that the grown convolution leaves
# YNNPACK (``grown_convolutions_leave_ynnpack``); ``True`` or ``False``
# forces it.
GROW_OUTPUTS = None
GROW_MAX_FRACTION = 0.125
GROW_MIN_FEATURES = 64

_ALGORITHM = contextvars.ContextVar("jaxconv_algorithm", default="auto")


@contextlib.contextmanager
def use_algorithm(name: str):
  """Forces the convolution algorithm inside a ``with`` block.

  The setting is read when a jaxconv function is traced, so it applies to
  functions (re)traced inside the block; an already-compiled ``jax.jit``
  function keeps the algorithm it was traced with.

  Args:
    name: one of ``"auto"``, ``"xla"``, ``"shifted"``, ``"window_dot"``,
      ``"phased"``, ``"split_groups"``, ``"chunked"``, ``"folded"``,
      ``"stacked"``, ``"strips"``, ``"grown"``.

  Returns:
    A context manager.
  """
  token = _ALGORITHM.set(check_algorithm(name))
  try:
    yield
  finally:
    _ALGORITHM.reset(token)


def check_algorithm(name, argument: str = "algorithm") -> str:
  """Validates an algorithm name; ``None`` means the context's setting."""
  if name is None:
    return _ALGORITHM.get()
  if not isinstance(name, str) or name not in ALGORITHMS:
    raise ValueError(f"`{argument}` must be one of {ALGORITHMS}, got {name!r}.")
  return name


def cpuinfo_field(cpuinfo: str, key: str) -> str | None:
  """The value of ``key`` for the first processor listed in the text of
  ``/proc/cpuinfo`` (e.g. ``"model name"``, ``"flags"``); ``None`` where it
  has none."""
  for line in cpuinfo.splitlines():
    name, colon, value = line.partition(":")
    if colon and name.strip() == key:
      return value.strip()
  return None


@functools.cache
def host_cpuinfo() -> str:
  """The first processor's entry of ``/proc/cpuinfo``; ``""`` where there
  is no such file."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
      return "".join(itertools.takewhile(lambda line: line.strip(), f))
  except OSError:
    return ""


def host_has_avx512() -> bool | None:
  """Whether this machine's x86 CPU has AVX-512 (the ``avx512f`` flag);
  ``None`` where that is unknown (no ``/proc/cpuinfo``, or a CPU without a
  ``flags`` line there: not x86)."""
  flags = cpuinfo_field(host_cpuinfo(), "flags")
  return None if flags is None else "avx512f" in flags.split()


def host_cpu_vendor() -> str | None:
  """The x86 CPU's vendor string (``"GenuineIntel"``, ``"AuthenticAMD"``,
  ...); ``None`` where it is unknown."""
  return cpuinfo_field(host_cpuinfo(), "vendor_id")


def _intel_avx512() -> bool:
  return host_has_avx512() is True and host_cpu_vendor() == "GenuineIntel"


def _fold_kernel_gradients() -> bool:
  if FOLD_KERNEL_GRADIENTS is None:
    return host_has_avx512() is False or _intel_avx512()
  return bool(FOLD_KERNEL_GRADIENTS)


def _on_avx512(setting) -> bool:
  """A rule measured on the x86 CPUs with AVX-512 (an Intel Xeon, an AMD
  EPYC): ``None`` decides by the host (``host_has_avx512``; an unknown
  CPU, no), ``True`` or ``False`` forces it."""
  return host_has_avx512() is True if setting is None else bool(setting)


def _fold_strided() -> bool:
  return _on_avx512(FOLD_STRIDED)


def _stack_taps() -> bool:
  return _on_avx512(STACK_TAPS)


def _phase_few_taps() -> bool:
  return _on_avx512(PHASE_FEW_TAPS)


def _strip_kernel_gradients() -> bool:
  return _on_avx512(STRIP_KERNEL_GRADIENTS)


def _probe_in_ynnpack(padding) -> bool | None:
  """Whether a 32-feature 3x3 convolution of an 8x8 input with ``padding``
  compiles to a YNNPACK fusion on the CPU device; ``None`` where this
  process has no CPU backend or the probe cannot be compiled or printed."""
  try:
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    x = jax.ShapeDtypeStruct((1, 8, 8, 32), jnp.float32, sharding=cpu)
    w = jax.ShapeDtypeStruct((3, 3, 32, 32), jnp.float32, sharding=cpu)
    probe = jax.jit(functools.partial(
        lax.conv_general_dilated, window_strides=(1, 1), padding=padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC")))
    text = probe.lower(x, w).compile().as_text()
  except Exception:  # noqa: BLE001  (a policy hint must not fail a call)
    return None
  return "ynn_fusion" in text


@functools.cache
def xla_convolutions_in_ynnpack() -> bool:
  """Whether XLA's CPU backend, as configured in this process (``XLA_FLAGS``),
  hands a 2-D convolution to YNNPACK: compiles a 32-feature 3x3 one, once,
  and looks for a YNNPACK fusion in the optimised program. Options given to
  one ``jax.jit`` (``compiler_options=``) are not seen here; set
  ``XLA_YNNPACK_CONVOLUTIONS`` for those. Where this process has no CPU
  backend to compile on, or the probe cannot be compiled or printed, XLA's
  default: ``True`` (the choice only affects speed, never the result)."""
  return _probe_in_ynnpack(((1, 1), (1, 1))) is not False


@functools.cache
def grown_convolutions_leave_ynnpack() -> bool:
  """Whether XLA's CPU backend runs a 2-D convolution whose output is one
  row longer than its input on a kernel other than YNNPACK's (its Eigen
  one), as jax 0.10 does: compiles the probe of
  ``xla_convolutions_in_ynnpack`` with one more row of padding at the far
  end, once. ``False`` where it cannot tell."""
  return _probe_in_ynnpack(((1, 2), (1, 1))) is False


def _xla_in_ynnpack() -> bool:
  if XLA_YNNPACK_CONVOLUTIONS is None:
    return xla_convolutions_in_ynnpack()
  return bool(XLA_YNNPACK_CONVOLUTIONS)


def _grow_outputs() -> bool:
  if GROW_OUTPUTS is None:
    return grown_convolutions_leave_ynnpack()
  return bool(GROW_OUTPUTS)


def _spatial(shape, spec):
  return tuple(int(shape[axis]) for axis in spec[2:])


def supports(name: str, geometry, lhs_shape, rhs_shape, out_shape) -> bool:
  """Whether ``name`` can evaluate this convolution."""
  if name == "xla":
    return True
  if 0 in lhs_shape or 0 in rhs_shape or 0 in out_shape:
    return False
  lhs_spec, rhs_spec, out_spec = geometry.dimension_numbers
  if name == "shifted":
    return math.prod(_spatial(rhs_shape, rhs_spec)) <= MAX_UNROLLED
  if name == "window_dot":
    return math.prod(_spatial(out_shape, out_spec)) <= MAX_UNROLLED
  if name == "split_groups":
    count = geometry.feature_group_count * geometry.batch_group_count
    return 1 < count <= MAX_UNROLLED
  if name == "phased":
    dims = _phase_dims(geometry)
    return bool(dims) and math.prod(
        geometry.lhs_dilation[i] for i in dims) <= MAX_UNROLLED
  if name == "chunked":
    if _sample_axis(geometry) is None:
      return False
    size = chunk_samples(geometry, lhs_shape, rhs_shape, out_shape)
    return size < lhs_shape[0] <= size * MAX_UNROLLED
  if name == "folded":
    form = _fold_form(geometry)
    if form is None:
      return False
    rows = (_spatial(rhs_shape, rhs_spec)[0] if form == "taps"
            else _spatial(out_shape, out_spec)[0])
    return rows <= MAX_UNROLLED
  if name == "stacked":
    return (_fold_form(geometry) == "taps"
            and geometry.lhs_dilation[0] == 1
            and geometry.feature_group_count == 1
            and _spatial(rhs_shape, rhs_spec)[0] <= MAX_UNROLLED)
  if name == "grown":
    return _growth(geometry, lhs_shape, out_shape) is not None
  if name == "strips":
    return (lhs_spec == _STRIP_SPEC and rhs_spec == _STRIP_SPEC
            and geometry.feature_group_count == 1
            and geometry.batch_group_count == 1
            and all(a == 1 for a in geometry.lhs_dilation)
            and max(_spatial(out_shape, out_spec)) <= MAX_UNROLLED)
  return False


def _sample_axis(geometry):
  """The input axis ``"chunked"`` splits, or ``None``: axis 0 when it is the
  batch (without batch groups) or the contracted feature axis (without any
  groups), so that every chunk is a contiguous block of the input."""
  lhs_spec = geometry.dimension_numbers.lhs_spec
  if lhs_spec[0] == 0 and geometry.batch_group_count == 1:
    return "batch"
  if (lhs_spec[1] == 0 and geometry.batch_group_count == 1
      and geometry.feature_group_count == 1):
    return "feature"
  return None


def chunk_samples(geometry, lhs_shape, rhs_shape, out_shape) -> int:
  """Samples per chunk for ``"chunked"``: ``CHUNK_SAMPLES``, or fewer so that
  a chunk holds at most ``CHUNK_ELEMENTS`` elements of the largest array it
  splits (at least one sample).

  A batch chunk splits the input and the output; a chunk of the contracted
  samples (a kernel gradient) splits the input and the cotangent, which is
  the kernel operand there.
  """
  samples = lhs_shape[0]
  second = out_shape if _sample_axis(geometry) == "batch" else rhs_shape
  per_sample = max(math.prod(lhs_shape), math.prod(second)) // max(samples, 1)
  return max(1, min(CHUNK_SAMPLES, CHUNK_ELEMENTS // max(per_sample, 1)))


def choose_algorithm(geometry, lhs_shape, rhs_shape, out_shape,
                     backend: str | None = None) -> str:
  """Picks the algorithm for one convolution.

  The default policy, measured on CPU (see ``docs/performance.md``):

  * input dilation ``a`` with stride 1 and no kernel dilation there, at
    least two taps per phase (``K >= 2a``) and at least 16 output features
    per group, as in the forward pass and kernel gradient of a transposed
    convolution: ``"phased"`` (eq. 23). With fewer taps per phase (the input
    gradient of a 3x3 stride-2 layer) or few output features (the input
    gradient of an RGB stem) XLA's dilated kernel measured as fast or faster
    on the AMD CPUs than phases running XLA's kernel inside; on the x86
    CPUs with AVX-512 the phases of the 3x3 stride-2 layers' input
    gradients, their own convolutions folded or stacked, took 0.60-0.86 of its time alone on an Intel Xeon
    and 0.42-0.87 on an AMD EPYC, and the 64->128 layer's whole step
    0.89-0.96 on the Intel one, so there fewer taps per phase are phased
    too (``PHASE_FEW_TAPS``). A 1x1 kernel with input dilation (the input
    gradient of a strided 1x1 layer) is phased on every CPU: one phase meets
    the kernel and the others are zeros, where ``"shifted"`` would multiply
    the whole dilated input (256->512 at 56x56: 0.28-0.32 of the time alone);
  * a 1x1 kernel: ``"shifted"`` (one matrix product over the channels);
  * one input feature per group (depthwise) with a small kernel:
    ``"shifted"`` (a fused elementwise multiply-add; XLA's CPU kernel for
    grouped convolutions is slow);
  * at most 32 feature groups (or batch groups, the kernel gradient of a
    grouped layer) of at least 2 features (batch entries) each:
    ``"split_groups"``, one dense convolution per group (XLA's CPU kernel
    for grouped convolutions measured 2-5x slower than the sum of its
    groups, and hundreds of times slower on their kernel gradient);
  * a single output position (the kernel gradient of a 1x1 kernel):
    ``"window_dot"``, one matrix product;
  * few output positions, a large window, and batch groups, feature groups
    or input dilation, as in the kernel gradient of a depthwise convolution
    (or of one with more than 32 groups): ``"window_dot"`` (XLA's CPU
    kernel is slowest exactly there);
  * where XLA's own kernel for 2-D convolutions is its Eigen one rather
    than YNNPACK's (``XLA_YNNPACK_CONVOLUTIONS``; YNNPACK's is XLA's
    default in jax 0.10), a dense 2-D convolution without input
    dilation: ``"xla"``. On the Intel CPU with AVX-512 the Eigen kernel
    took 0.3-0.7 of YNNPACK's time on the suite's dense 2-D passes and
    beat the folded, stacked, strip and chunked forms below, which were
    measured against YNNPACK's (forward+backward of the 3x3 64->64 layer
    in runs one after the other: 48 against 71 ms at batch 8 with the
    rules below, 225 against 256 ms at batch 32);
  * where XLA's 2-D convolutions are YNNPACK's and a convolution whose
    output is longer than its input is not (``GROW_OUTPUTS``, decided by a
    probe), a dense 2-D convolution without input dilation that contracts
    at least ``GROW_MIN_FEATURES`` features and can be grown past its input
    by at most ``GROW_MAX_FRACTION`` of a dimension's output positions (a
    stride-1 forward pass or input gradient: one more row): ``"grown"``,
    which runs it on XLA's Eigen kernel. On the Intel CPU with AVX-512 the
    forward+backward of the 3x3 64->64 layer took 0.86 of its time with
    the stacked and chunked forms below at batch 8 and 0.91-0.92 at batch
    32 (runs in both orders), its temporaries 12.9 MB instead of 43.5 at
    batch 8, below glibc's mapping threshold; the dilated layer's 0.82-0.86
    at batch 32 and 1.01-1.09 at batch 8, the transposed layer's 0.92-0.94
    and 1.05-1.09. With 16 or 32 contracted features (the 3-D layer's
    planes, the grouped layer's groups) the steps were 1.07-1.09 and
    0.93-1.06, so those keep the rules below;
  * the kernel gradient of a channels-last 2-D layer (eq. 71) with an
    operand of at least ``STRIP_MIN_ELEMENTS`` elements, strip patches at
    least ``STRIP_MIN_WIDTH`` wide (input features times kernel columns)
    and at least ``STRIP_MIN_REUSE`` multiply-adds per patch element
    (kernel rows times output features), where ``STRIP_KERNEL_GRADIENTS``
    says so (by default on an x86 CPU with AVX-512): ``"strips"``. On an
    Intel Xeon, alone, it took 0.54-0.71 of the time of the folded or
    chunked kernel gradient on the dense, strided, dilated and grouped
    layers at batch 32, 0.62-0.71 on the dense and strided ones at batch 8
    and 0.87-0.92 on the dilated one; on an AMD EPYC 0.64-0.87 of XLA's
    (YNNPACK's) or chunked time on the dense, strided and dilated layers.
    It was 1.07x slower on a 32-feature layer of 262 144 elements (so the
    size), even or slower on the RGB stem (3 features x 7 columns: so the
    width), and 1.12-1.56x slower in the whole step on the transposed
    layer, whose kernel-gradient phases have 2 rows of 32 output features
    (so the reuse);
  * a dense convolution with an operand or output of at least
    ``CHUNK_MIN_ELEMENTS`` elements and more samples than one chunk holds
    (``chunk_samples``): ``"chunked"`` (XLA's CPU kernel measured 1.2-2.3x
    faster on chunks of 8 samples than on a batch of 32, most on kernel
    gradients, and the RGB stem's gradients about 2x faster on chunks of 2
    than of 8), unless the batch is chunked and the output is more than
    twice the input;
  * a dense convolution with three or more spatial dimensions, or with two
    and at least ``FOLD_MIN_FEATURES`` contracted features, or with two
    contracting the samples (a kernel gradient) where
    ``FOLD_KERNEL_GRADIENTS`` says so, an operand or
    output of at least ``FOLD_MIN_ELEMENTS`` elements, no input dilation in
    the first spatial dimension and, in the "taps" form, stride 1 there
    unless ``FOLD_STRIDED`` says so (by default on an x86 CPU with
    AVX-512): ``"folded"``, convolutions of one dimension fewer, themselves
    chosen by this policy (so a chunk is folded, and a 3-D one folds into 2-D
    convolutions that fold again where they contract enough features).
    On an AMD CPU with AVX-512, XLA's kernel measured 1.4-4.1x faster on
    the planes of a 3-D convolution than on the whole, and 1.25-1.6x faster
    on the rows of a 2-D one contracting 64 features (within 8-sample
    chunks even or slower, 1.04-1.15); on rows contracting 32 features or
    fewer it was slower in 12 of 15 cases (up to 1.8x), as it was on the
    rows of 2-D kernel gradients, which contract only the samples
    (1.05-1.5x slower). On an x86 CPU without AVX-512 those kernel
    gradients measured 1.4-13x faster folded, and on an Intel CPU with
    AVX-512 they took 0.58-0.79 of the time on the large layers (a 3x3
    layer's whole training step 0.74-0.91), even on the stem and the
    grouped layer at batch 32, 1.10-1.17 on the small dilated layer at
    batch 8 (even in another run), so on both they fold as well, whatever
    the number of samples
    (``FOLD_KERNEL_GRADIENTS``, decided by ``host_has_avx512`` and
    ``host_cpu_vendor``).
    With input dilation in the first dimension (a strided layer's input
    gradient) rows measured 2-4x slower. Strided rows (the forward pass of
    a stride-2 layer) were no faster on the AMD CPU without AVX-512; on an
    Intel Xeon with it the 3x3 stride-2 64->128 layer's forward pass took
    0.54-0.90 of XLA's time alone at batch 8 and its whole step 0.82-0.93
    at batches 8 and 32. On an AMD EPYC with AVX-512, that layer's forward
    pass stacked by row phase and its input gradient in phases took its
    step to 0.83-0.91 of XLA's time, and with the kernel gradient in strips
    to 0.71-0.85 at batches 8 and 32, the suite's other layers within
    noise. Where such a 2-D fold is in the "taps" form and ``STACK_TAPS``
    says so (by default on an x86 CPU with AVX-512): ``"stacked"``, the
    same sum as one convolution (eq. 72), or one per row phase where the first
    dimension is strided (eq. 73), which there took 0.72-0.89 of the folded
    time alone on the 3x3 64->64 layers, 0.44-0.71 on the dilated ones and
    0.83-0.91 on the stride-2 one, their steps 0.81-0.94 (the stride-2
    one's even within noise, 0.82-1.23 in eleven runs at batches 8 and 32;
    the 3-D layer's planes even, 1.00-1.06, so they stay folded);
  * otherwise, and on every other backend: ``"xla"``. Plain kernel
    gradients stay with XLA: per-tap products measured slower there.

  Args:
    geometry: the normalised ``ConvGeometry`` (its ``algorithm`` field may
      force a choice).
    lhs_shape, rhs_shape, out_shape: the convolution's shapes.
    backend: ``jax.default_backend()`` when ``None``.

  Returns:
    ``"xla"``, ``"shifted"``, ``"window_dot"``, ``"phased"``,
    ``"split_groups"``, ``"chunked"``, ``"folded"``, ``"stacked"``,
    ``"strips"`` or ``"grown"``.
  """
  forced = geometry.algorithm
  if forced != "auto":
    return forced if supports(forced, geometry, lhs_shape, rhs_shape,
                              out_shape) else "xla"
  backend = backend or jax.default_backend()
  if backend != "cpu":
    return "xla"
  lhs_spec, rhs_spec, out_spec = geometry.dimension_numbers
  taps = math.prod(_spatial(rhs_shape, rhs_spec))
  positions = math.prod(_spatial(out_shape, out_spec))
  in_per_group = rhs_shape[rhs_spec[1]]
  grouped = geometry.feature_group_count > 1 or geometry.batch_group_count > 1
  dilated_input = any(a > 1 for a in geometry.lhs_dilation)
  if dilated_input and supports("phased", geometry, lhs_shape, rhs_shape,
                                 out_shape):
    kernel = _spatial(rhs_shape, rhs_spec)
    out_per_group = rhs_shape[rhs_spec[0]] // geometry.feature_group_count
    # A 1x1 kernel meets the input in one phase only: the others are zeros,
    # where "shifted" would multiply a dilated copy of the whole input.
    if taps == 1 or (out_per_group >= 16 and (_phase_few_taps() or all(
        kernel[i] >= 2 * a for i, a in enumerate(geometry.lhs_dilation)
        if a > 1))):
      return "phased"
  if taps == 1 or (in_per_group == 1 and taps <= 49):
    if supports("shifted", geometry, lhs_shape, rhs_shape, out_shape):
      return "shifted"
  if grouped and supports("split_groups", geometry, lhs_shape, rhs_shape,
                          out_shape):
    count = geometry.feature_group_count * geometry.batch_group_count
    axis = lhs_spec[1] if geometry.feature_group_count > 1 else lhs_spec[0]
    if count <= 32 and lhs_shape[axis] // count >= 2:
      return "split_groups"
  if positions == 1 or (positions <= 49 and taps >= 4 * positions
                        and (grouped or dilated_input)):
    if supports("window_dot", geometry, lhs_shape, rhs_shape, out_shape):
      return "window_dot"
  if (len(geometry.padding) == 2 and not grouped and not dilated_input
      and not _xla_in_ynnpack()):
    return "xla"
  if (len(geometry.padding) == 2 and not grouped and not dilated_input
      and lhs_shape[lhs_spec[1]] >= GROW_MIN_FEATURES
      and _grow_outputs() and _xla_in_ynnpack()
      and supports("grown", geometry, lhs_shape, rhs_shape, out_shape)
      and _cheap_growth(geometry, lhs_shape, out_shape)):
    return "grown"
  largest = max(math.prod(lhs_shape), math.prod(rhs_shape),
                math.prod(out_shape))
  if (largest >= STRIP_MIN_ELEMENTS and _strip_kernel_gradients()
      and supports("strips", geometry, lhs_shape, rhs_shape, out_shape)
      and (lhs_shape[lhs_spec[0]] * _spatial(out_shape, out_spec)[1]
           >= STRIP_MIN_WIDTH)
      and (_spatial(out_shape, out_spec)[0] * rhs_shape[rhs_spec[0]]
           >= STRIP_MIN_REUSE)):
    return "strips"
  if (not grouped and largest >= CHUNK_MIN_ELEMENTS
      and supports("chunked", geometry, lhs_shape, rhs_shape, out_shape)):
    # Batch chunks are concatenated, which copies the output once: not worth
    # it when the output is much larger than the input. The forward pass of
    # the RGB stem (output 5.3x its input) measured 15-25 % slower chunked,
    # the input gradient of the stride-2 layer (output 2x its input) 2x
    # faster (42 against 86 ms at batch 32).
    if (_sample_axis(geometry) == "feature"
        or math.prod(out_shape) <= 2 * math.prod(lhs_shape)):
      return "chunked"
  if (not grouped and largest >= FOLD_MIN_ELEMENTS
      and (len(geometry.padding) > 2
           or lhs_shape[lhs_spec[1]] >= FOLD_MIN_FEATURES
           or (_sample_axis(geometry) == "feature"
               and _fold_kernel_gradients()))
      and geometry.lhs_dilation[0] == 1
      and (_fold_form(geometry) == "positions"
           or geometry.window_strides[0] == 1 or _fold_strided())
      and supports("folded", geometry, lhs_shape, rhs_shape, out_shape)):
    if (len(geometry.padding) == 2 and _stack_taps()
        and supports("stacked", geometry, lhs_shape, rhs_shape, out_shape)):
      return "stacked"
    return "folded"
  return "xla"


# ---------------------------------------------------------------------------
# The direct algorithms. They work in the arrays' own layouts: slices and
# contractions name the axes through the dimension numbers, so no operand is
# transposed into a working layout first (XLA lays out each contraction).
# ---------------------------------------------------------------------------


def _prepared_input(x, geometry):
  """x^ of eq. (5): dilate by ``a`` and pad by ``(lo, hi)`` (negative crops)."""
  lhs_spec = geometry.dimension_numbers.lhs_spec
  config = [(0, 0, 0)] * x.ndim
  for axis, (lo, hi), a in zip(lhs_spec[2:], geometry.padding,
                               geometry.lhs_dilation):
    config[axis] = (lo, hi, a - 1)
  if all(c == (0, 0, 0) for c in config):
    return x
  return lax.pad(x, jnp.zeros((), x.dtype), config)


def _window_slice(x, spec, starts, counts, steps):
  """``x[..., start + step * m, ...]`` for ``m < count``, per spatial axis."""
  start, limit, stride = [0] * x.ndim, list(x.shape), [1] * x.ndim
  for axis, b, m, s in zip(spec[2:], starts, counts, steps):
    start[axis], limit[axis], stride[axis] = b, b + s * (m - 1) + 1, s
  return lax.slice(x, start, limit, stride)


def _letters(count, first):
  return [chr(ord(first) + i) for i in range(count)]


def _contract(patches, kernel, geometry, window: bool, accumulate):
  """Terms of eq. (5): contracts the features of each of ``patches`` (input
  slices of one shape, in the input's layout) with ``kernel``, respecting
  feature groups ``G`` and batch groups ``B``; with ``window`` the spatial
  axes are contracted too (one output position per patch), else they are
  output positions (one tap, ``kernel`` without spatial axes).

  Returns one term per patch, in the output's layout, spatial axes of size 1
  when ``window``.
  """
  lhs_spec, rhs_spec, out_spec = geometry.dimension_numbers
  groups, batch_groups = (geometry.feature_group_count,
                          geometry.batch_group_count)
  rank = len(lhs_spec)
  spatial = _letters(rank - 2, "p")                # window or output axes
  shape = patches[0].shape
  x_axes = [""] * len(shape)
  x_axes[lhs_spec[0]], x_axes[lhs_spec[1]] = "n", "c"
  for axis, letter in zip(lhs_spec[2:], spatial):
    x_axes[axis] = letter
  if window:
    k_axes = [""] * kernel.ndim
    for axis, letter in zip(rhs_spec[2:], spatial):
      k_axes[axis] = letter
    k_axes[rhs_spec[0]], k_axes[rhs_spec[1]] = "o", "c"
  else:                                            # (out, in) only, in order
    k_axes = ["o", "c"] if rhs_spec[0] < rhs_spec[1] else ["c", "o"]
  o_axes = [""] * rank
  o_axes[out_spec[0]], o_axes[out_spec[1]] = "n", "o"
  for axis, letter in zip(out_spec[2:], spatial):
    o_axes[axis] = "" if window else letter
  out_features = kernel.shape[rhs_spec[0] if window else k_axes.index("o")]
  split = groups if groups > 1 else batch_groups
  if split > 1:
    # G: features c -> (g, c'); B: batch n -> (g, n'). Kernel o -> (g, o').
    grouped = "c" if groups > 1 else "n"
    axis = x_axes.index(grouped)
    shape = shape[:axis] + (split, shape[axis] // split) + shape[axis + 1:]
    patches = [patch.reshape(shape) for patch in patches]
    x_axes[axis:axis + 1] = ["g", grouped]
    axis = k_axes.index("o")
    kernel = kernel.reshape(kernel.shape[:axis] + (split, out_features
                                                   // split)
                            + kernel.shape[axis + 1:])
    k_axes[axis:axis + 1] = ["g", "o"]
    o_axes[o_axes.index("o"):o_axes.index("o") + 1] = ["g", "o"]
  result = "".join(o_axes)
  sizes = dict(zip(x_axes, shape)) | dict(zip(k_axes, kernel.shape))
  # Only "o" is a kernel axis that the patch lacks.
  if _one_output_feature_per_group(out_features, geometry):
    outs = _broadcast_contract(patches, x_axes, kernel, k_axes, result,
                               accumulate, spatial)
  else:
    outs = [_dot_contract(patch, x_axes, kernel, k_axes, result, window,
                          accumulate, geometry.precision)
            for patch in patches]
  out_shape = [1] * rank
  out_shape[out_spec[0]] = sizes["n"]
  out_shape[out_spec[1]] = out_features
  if not window:
    for axis, letter in zip(out_spec[2:], spatial):
      out_shape[axis] = sizes[letter]
  return [out.reshape(out_shape) for out in outs]


def _one_output_feature_per_group(out_features: int, geometry) -> bool:
  """Whether the kernel has no free axis: every output feature is a group
  of its own, so a term of eq. (5) is a product summed, not a matrix
  product (:func:`_broadcast_contract`)."""
  return out_features == max(geometry.feature_group_count,
                             geometry.batch_group_count)


def _dot_contract(patch, x_axes, kernel, k_axes, result, window, accumulate,
                  precision):
  """The contraction as one ``dot_general`` (the kernel has a free axis);
  a channels-last kernel gradient's through ``_long_contraction``."""
  if accumulate is not None:
    # XLA's CPU dot has no bf16 x bf16 -> f32 kernel; products of
    # low-precision values are exact in the wider type anyway.
    patch, kernel = patch.astype(accumulate), kernel.astype(accumulate)
  if window:
    out = _long_contraction(patch, x_axes, kernel, k_axes, result,
                            accumulate, precision)
    if out is not None:
      return out
  operands = [("".join(x_axes), patch), ("".join(k_axes), kernel)]
  if window and patch.size > kernel.size:
    # A kernel gradient that _long_contraction cannot merge (its contracted
    # axes do not lead both operands, as in NCHW) contracts them over
    # several axes; XLA's CPU dot then copies one operand into a transposed
    # layout, and it is the first one. Put the smaller first: for the 1x1
    # benchmark layer at batch 32, when its kernel gradient took this path,
    # that copied the 25.7 MB cotangent instead of the 102.8 MB input.
    operands.reverse()
  first, second = operands
  # dot_general's output lists the shared (group) axes, then the first
  # operand's free axes, then the second's; transpose that afterwards.
  shared = [a for a in result if a in first[0] and a in second[0]]
  natural = "".join(shared + [a for a in result if a not in shared
                              and a in first[0]]
                    + [a for a in result if a not in shared
                       and a not in first[0]])
  out = jnp.einsum(f"{first[0]},{second[0]}->{natural}", first[1],
                   second[1], precision=precision,
                   preferred_element_type=accumulate)
  return jnp.transpose(out, [natural.index(a) for a in result])


def _long_contraction(patch, x_axes, kernel, k_axes, result, accumulate,
                      precision):
  """A kernel gradient's term of eq. (9) as a matrix product over one merged
  axis, where the contracted axes (the samples and the window) lead both
  operands in the same order and each operand has one free axis (no
  groups): the channels-last layouts. Else ``None``. The operands are
  already in the accumulation dtype.

  The merge is a free reshape to an ``(M, C)`` and an ``(M, K)`` matrix,
  whose product XLA's CPU dot ran 1.2-1.4x faster than the contraction
  over several axes in seven of ten comparisons, and even in the others.
  That product, contracted over the major axis of both, ran 1.2-2.4x faster
  still (on one core as on two) when the smaller of
  ``C`` and ``K`` indexes its output's rows. XLA lays a lone product out as
  its result is laid out, so to choose the rows the sum over ``M`` is split
  into two halves, one batched product whose two partial sums are then
  added: eq. (9)'s sum over the samples and the window, in two parts. That
  pays where ``M`` is at least ``C*K`` (the 1x1 256->64 layer's kernel
  gradient at 56x56 took 0.41-0.52 of its former time); with shorter
  contractions the batched product measured up to 4x slower, so those stay
  one product.
  """
  contracted = [a for a in x_axes if a in k_axes and a not in result]
  n = len(contracted)
  if (not contracted or x_axes[:n] != contracted or k_axes[:n] != contracted
      or len(x_axes) != n + 1 or len(k_axes) != n + 1):
    return None
  length = math.prod(patch.shape[:n])
  x_free, k_free = x_axes[n], k_axes[n]
  x = patch.reshape(length, patch.shape[n])
  k = kernel.reshape(length, kernel.shape[n])
  einsum = functools.partial(jnp.einsum, precision=precision,
                             preferred_element_type=accumulate)
  if length % 2 or length < x.shape[1] * k.shape[1]:
    return einsum(f"m{x_free},m{k_free}->{result}", x, k)
  rows, cols = (x_free, k_free) if x.shape[1] <= k.shape[1] else (k_free,
                                                                  x_free)
  halves = einsum(f"bm{x_free},bm{k_free}->b{rows}{cols}",
                  x.reshape(2, length // 2, -1), k.reshape(2, length // 2, -1))
  return jnp.einsum(f"b{rows}{cols}->{result}", halves)


def _broadcast_contract(patches, x_axes, kernel, k_axes, result, accumulate,
                        spatial):
  """The contraction when every kernel axis longer than 1 is also a patch
  axis (depthwise: one input and one output feature per group): a product
  in the patches' own layout, summed over the contracted axes. XLA fuses it
  into one pass, where a batched product of tiny matrices would transpose
  both operands first.

  Several patches (the output positions of :func:`window_dot`) are summed
  by one variadic reduction, which reads the operands once for all of them,
  in two stages: first over the ``spatial`` letters, then over the rest (a
  kernel gradient's batch), so that the first stage keeps a partial sum per
  sample.
  """
  dtype = accumulate or jnp.result_type(patches[0], kernel)
  sizes = dict(zip(k_axes, kernel.shape)) | dict(zip(x_axes,
                                                     patches[0].shape))
  kept = [a for a in k_axes if a in x_axes]       # the others have size 1
  shared = [a for a in x_axes if a in k_axes]
  kernel = kernel.reshape([sizes[a] for a in kept])
  kernel = jnp.transpose(kernel, [kept.index(a) for a in shared])
  kernel = kernel.reshape([sizes[a] if a in k_axes else 1 for a in x_axes])
  kernel = kernel.astype(dtype)
  outs = [patch.astype(dtype) * kernel for patch in patches]
  axes = list(x_axes)
  for stage in (lambda a: a in spatial, lambda a: True):
    summed = [i for i, a in enumerate(axes) if a not in result and stage(a)]
    outs = _sum_together(outs, summed)
    axes = [a for i, a in enumerate(axes) if i not in summed]
  outs = [jnp.transpose(out, [axes.index(a) for a in result if a in axes])
          for out in outs]
  return [out.reshape([sizes[a] for a in result]) for out in outs]


def _sum_together(arrays, axes):
  """Each of ``arrays`` (one shape and dtype) summed over ``axes``, by one
  variadic reduction."""
  if not axes:
    return arrays
  if all(arrays[0].shape[i] == 1 for i in axes):
    return [a.reshape([n for i, n in enumerate(a.shape) if i not in axes])
            for a in arrays]
  zeros = tuple(jnp.zeros((), a.dtype) for a in arrays)
  return list(lax.reduce(tuple(arrays), zeros,
                         lambda x, y: tuple(p + q for p, q in zip(x, y)),
                         tuple(axes)))


def _accumulation_dtype(dtype, preferred):
  if preferred is not None:
    return preferred
  if jnp.dtype(dtype).itemsize < 4:
    return jnp.float32  # sum the taps of low-precision inputs in float32
  return None


def shifted(lhs, rhs, geometry, out_shape):
  """``y = sum_k contract_c(x^[s*i + d*k], w[k])``: one term per kernel tap."""
  lhs_spec, rhs_spec, out_spec = geometry.dimension_numbers
  x = _prepared_input(lhs, geometry)
  window = _spatial(rhs.shape, rhs_spec)
  out_spatial = _spatial(out_shape, out_spec)
  accumulate = _accumulation_dtype(lhs.dtype, geometry.preferred_element_type)
  total = None
  for tap in itertools.product(*(range(k) for k in window)):
    starts = [d * k for d, k in zip(geometry.rhs_dilation, tap)]
    patch = _window_slice(x, lhs_spec, starts, out_spatial,
                          geometry.window_strides)
    index = [slice(None)] * rhs.ndim
    for axis, k in zip(rhs_spec[2:], tap):
      index[axis] = k
    [term] = _contract([patch], rhs[tuple(index)], geometry, False,
                       accumulate)
    total = term if total is None else total + term
  return total.astype(geometry.preferred_element_type or lhs.dtype)


def window_dot(lhs, rhs, geometry, out_shape):
  """``y[i] = contract_{k,c}(x^[s*i + d*k], w[k])``: one term per output.

  Where the kernel has a free axis (more than one output feature per group),
  each term is a matrix product, and with several output positions the terms
  are evaluated one after another in a loop (``lax.map``), each from a
  dynamic slice of ``x^``. XLA's CPU dot cannot read a sliced window in
  place, so every window is copied; unrolled, the scheduler makes all the
  copies before the first contraction (for the depthwise benchmark layer's
  kernel gradient at batch 32, when it was computed this way: nine 12.8 MB
  copies alive at once, 105 MB of temporaries page-faulted afresh on every
  call, 44 ms; in the loop 30 MB, 16 ms).

  Where it has none (one input and one output feature per group: the kernel
  gradient of a depthwise convolution), every term is a product summed over
  the batch and the window, and all of them are one variadic reduction over
  static slices (:func:`_broadcast_contract`). Both operands are first
  transposed so that their spatial axes are minor: each sample's feature
  planes are then contiguous, and the reduction over a plane reads
  consecutive memory. For the depthwise benchmark layer's kernel gradient
  (timed alone) that took 29-30 ms to 13-17 ms at batch 32 and 3.5-4.5 ms
  to 2.2-3.0 ms at batch 8, against the loop over positions.
  """
  lhs_spec, rhs_spec, out_spec = geometry.dimension_numbers
  window = _spatial(rhs.shape, rhs_spec)
  out_spatial = _spatial(out_shape, out_spec)
  accumulate = _accumulation_dtype(lhs.dtype, geometry.preferred_element_type)
  starts = [[s * i for s, i in zip(geometry.window_strides, position)]
            for position in itertools.product(*(range(m) for m in out_spatial))]
  if _one_output_feature_per_group(rhs.shape[rhs_spec[0]], geometry):
    lhs, lhs_spec = _spatial_minor(lhs, lhs_spec)
    rhs, rhs_spec = _spatial_minor(rhs, rhs_spec)
    geometry = geometry._replace(dimension_numbers=lax.ConvDimensionNumbers(
        lhs_spec, rhs_spec, out_spec))
    x = _prepared_input(lhs, geometry)
    patches = [_window_slice(x, lhs_spec, begin, window,
                             geometry.rhs_dilation) for begin in starts]
    terms = _contract(patches, rhs, geometry, True, accumulate)
  else:
    x = _prepared_input(lhs, geometry)
    extents = [d * (k - 1) + 1 for d, k in zip(geometry.rhs_dilation, window)]

    def term(begin):
      size = list(x.shape)
      at = [0] * x.ndim
      for j, (axis, extent) in enumerate(zip(lhs_spec[2:], extents)):
        at[axis], size[axis] = begin[j], extent
      patch = lax.dynamic_slice(x, [jnp.asarray(b, jnp.int32) for b in at],
                                size)
      patch = _window_slice(patch, lhs_spec, [0] * len(window), window,
                            geometry.rhs_dilation)
      return _contract([patch], rhs, geometry, True, accumulate)[0]

    if len(starts) == 1:
      terms = term(starts[0])[None]
    else:
      terms = lax.map(term, jnp.asarray(starts, jnp.int32))
  # The terms have size-1 spatial axes; lay them out along those axes.
  y = _interleave(terms, out_spec, range(len(out_spatial)), out_spatial)
  return y.astype(geometry.preferred_element_type or lhs.dtype)


def _spatial_minor(a, spec):
  """``a`` transposed so that its spatial axes (``spec[2:]``) are its minor
  ones, in order, and ``spec`` renumbered to match."""
  order = [axis for axis in range(a.ndim) if axis not in spec[2:]]
  order += list(spec[2:])
  if order == list(range(a.ndim)):
    return a, tuple(spec)
  return jnp.transpose(a, order), tuple(order.index(axis) for axis in spec)


def _interleave(blocks, out_spec, dims, factors):
  """Equal-shape blocks, one per index ``(p_1, ..., p_r)`` in row-major
  order over the spatial dims ``dims``, into one array in which block ``p``
  fills positions ``f_j*q + p_j`` of dim ``j``: the reshape
  ``(q, p) -> f*q + p`` of eq. (23), and, with blocks of one position each,
  the assembly of ``window_dot``'s per-position terms. ``blocks`` is a list
  or an array holding them along its leading axis."""
  shape = blocks[0].shape
  stacked = (jnp.stack(blocks, axis=-1) if isinstance(blocks, list) else
             jnp.moveaxis(blocks, 0, -1))
  stacked = stacked.reshape(shape + tuple(factors))
  perm, merged = [], list(shape)
  for axis in range(len(shape)):
    perm.append(axis)
    for j, i in enumerate(dims):
      if out_spec[2 + i] == axis:
        perm.append(len(shape) + j)
        merged[axis] *= factors[j]
  return jnp.transpose(stacked, perm).reshape(merged)


# Input dilation, phase by phase: docs/derivation.md eq. (23).
#
# In a dimension with input dilation a (stride 1, kernel dilation 1) only
# every a-th entry of x^ is an input; the rest are the zeros of eq. (5).
# Output i = a*q + p (phase p) meets inputs only through the taps
# k = k_p + a*t with k_p = (lo - p) mod a, which read x at q + t + c_p,
# c_p = (p + k_p - lo) / a:
#
#   y[a*q + p] = sum_t w[k_p + a*t] x[q + t + c_p]                       (23)
#
# So phase p of the output is an ordinary convolution of the undilated x
# with the sub-kernel w[k_p::a] and low padding -c_p (_phase_plan). No zero
# is multiplied, and the a^n phase outputs interleave back into y by a
# reshape (q, p) -> a*q + p. Used for the forward pass and the kernel
# gradient of a transposed convolution (eq. 10 keeps the input dilation),
# and for the input gradient of a strided layer (dilated by its stride).
def _phase_dims(geometry):
  """The spatial dims with input dilation, or ``None`` when some such dim
  also has a stride or kernel dilation (then phases do not separate)."""
  dims = [i for i, a in enumerate(geometry.lhs_dilation) if a > 1]
  if any(geometry.window_strides[i] != 1 or geometry.rhs_dilation[i] != 1
         for i in dims):
    return None
  return dims


def _phase_plan(a, n, lo, k, m, p):
  """One dim, phase ``p`` of eq. (23): the first tap ``k_p``, the number of
  taps, the sub-convolution's ``(lo, hi)`` padding and its output count, for
  input length ``n``, low padding ``lo``, kernel length ``k`` and ``m``
  outputs."""
  first = (lo - p) % a
  taps = max(0, -(-(k - first) // a))
  outputs = max(0, -(-(m - p) // a))
  pad_lo = -((p + first - lo) // a)
  pad_hi = outputs - 1 + taps - n - pad_lo
  return first, taps, (pad_lo, pad_hi), outputs


def phased(lhs, rhs, geometry, out_shape):
  """Input dilation split into ``a^n`` ordinary convolutions, one per phase."""
  lhs_spec, rhs_spec, out_spec = geometry.dimension_numbers
  dims = _phase_dims(geometry)
  dilations = [geometry.lhs_dilation[i] for i in dims]
  in_spatial = _spatial(lhs.shape, lhs_spec)
  k_spatial = _spatial(rhs.shape, rhs_spec)
  out_spatial = _spatial(out_shape, out_spec)
  rows = [-(-out_spatial[i] // geometry.lhs_dilation[i]) for i in dims]
  padded_shape = list(out_shape)
  for i, r in zip(dims, rows):
    padded_shape[out_spec[2 + i]] = r
  blocks = []
  for phase in itertools.product(*(range(a) for a in dilations)):
    padding = list(geometry.padding)
    starts, strides = [0] * rhs.ndim, [1] * rhs.ndim
    limits = list(rhs.shape)
    block_shape = list(padded_shape)
    empty = False
    for i, p in zip(dims, phase):
      a = geometry.lhs_dilation[i]
      first, taps, padding[i], outputs = _phase_plan(
          a, in_spatial[i], geometry.padding[i][0], k_spatial[i],
          out_spatial[i], p)
      axis = rhs_spec[2 + i]
      starts[axis], strides[axis] = first, a
      block_shape[out_spec[2 + i]] = outputs
      empty |= taps == 0 or outputs == 0
    if empty:
      block = jnp.zeros(block_shape, geometry.preferred_element_type
                        or lhs.dtype)
    else:
      sub = geometry._replace(
          padding=tuple(padding),
          lhs_dilation=(1,) * len(geometry.lhs_dilation))
      kernel = lax.slice(rhs, starts, limits, strides)
      block = evaluate(lhs, kernel, sub, block_shape)
    pads = [(0, full - size, 0) for full, size in zip(padded_shape,
                                                      block.shape)]
    if any(hi for _, hi, _ in pads):
      block = lax.pad(block, jnp.zeros((), block.dtype), pads)
    blocks.append(block)
  # Interleave the phases, (rows, a) -> a*rows, and crop to the output.
  y = _interleave(blocks, out_spec, dims, dilations)
  if tuple(y.shape) != tuple(out_shape):
    y = lax.slice(y, [0] * y.ndim, out_shape)
  return y


# Groups, one convolution each (eqs. 6 and 17 read block by block).
#
# With G feature groups, output block g of eq. (6) sees only input feature
# block g and kernel block g: the convolution is G independent dense
# convolutions whose outputs are concatenated along the features. Batch
# groups (eq. 17, the kernel gradient of a grouped layer) split the same way,
# with the input's batch blocks in place of its feature blocks. Each block is
# evaluated by the algorithm chosen for it.
def split_groups(lhs, rhs, geometry, out_shape):
  """``G`` (or ``B``) block convolutions, concatenated along the features."""
  lhs_spec, rhs_spec, out_spec = geometry.dimension_numbers
  groups = geometry.feature_group_count
  count = groups if groups > 1 else geometry.batch_group_count
  axis = lhs_spec[1] if groups > 1 else lhs_spec[0]
  block = lhs.shape[axis] // count
  out_block = rhs.shape[rhs_spec[0]] // count
  sub = geometry._replace(feature_group_count=1, batch_group_count=1)
  sub_out = list(out_shape)
  sub_out[out_spec[1]] = out_block
  outputs = []
  for g in range(count):
    x = lax.slice_in_dim(lhs, g * block, (g + 1) * block, axis=axis)
    w = lax.slice_in_dim(rhs, g * out_block, (g + 1) * out_block,
                         axis=rhs_spec[0])
    outputs.append(evaluate(x, w, sub, sub_out))
  return jnp.concatenate(outputs, axis=out_spec[1])


# Samples, a chunk at a time (eqs. 5 and 9 read chunk by chunk).
#
# Eq. (5) computes every sample of the batch on its own, so a batch chunk's
# output is the output's block of those samples; eq. (9), the kernel
# gradient, sums over the batch, which its geometry (10) contracts like an
# input feature, so the gradient of a batch is the sum of its chunks'
# gradients. Each chunk is evaluated by the algorithm chosen for it.
def chunked(lhs, rhs, geometry, out_shape):
  """The samples (input axis 0) in chunks of ``chunk_samples`` samples.

  A batch chunk is the convolution of its samples alone; the outputs are
  concatenated along the output batch. A chunk of the contracted feature
  axis (the samples of a kernel gradient, eq. 9) pairs with the same
  block of the kernel's input features; the chunks' results are summed, in
  float32 for 16-bit inputs. The chunks are unrolled: XLA's CPU convolution
  inside a loop measured many times slower.
  """
  lhs_spec, rhs_spec, out_spec = geometry.dimension_numbers
  batch = _sample_axis(geometry) == "batch"
  count = lhs.shape[0]
  accumulate = _accumulation_dtype(lhs.dtype, geometry.preferred_element_type)
  sub = geometry if batch or accumulate is None else geometry._replace(
      preferred_element_type=accumulate)
  size = chunk_samples(geometry, lhs.shape, rhs.shape, out_shape)
  outputs = []
  for start in range(0, count, size):
    stop = min(start + size, count)
    x = lax.slice_in_dim(lhs, start, stop, axis=0)
    if batch:
      sub_out = list(out_shape)
      sub_out[out_spec[0]] = stop - start
      outputs.append(evaluate(x, rhs, sub, sub_out))
    else:
      w = lax.slice_in_dim(rhs, start, stop, axis=rhs_spec[1])
      outputs.append(evaluate(x, w, sub, out_shape))
  if batch:
    return jnp.concatenate(outputs, axis=out_spec[0])
  total = functools.reduce(jnp.add, outputs)
  return total.astype(geometry.preferred_element_type or lhs.dtype)


# The first spatial dimension, one row at a time: docs/derivation.md eq. (70).
#
# Split the sum of eq. (5) over the first spatial dimension's taps k_0:
#
#   y[n, o, i_0, i'] = sum_{k_0} sum_{c, k'} x^[n, c, s_0 i_0 + d_0 k_0,
#                                               s' i' + d' k'] w[o, c, k_0, k']
#                                                                         (70)
#
# For one tap k_0 the inner sum is a convolution of one dimension fewer
# (the rest of the geometry, primed) in which i_0 is just another sample:
# the rows s_0 i_0 + d_0 k_0 of x^, merged with the batch, against the kernel
# row w[k_0]. Its output, split back into (n, i_0), is y's term for k_0
# ("taps" form, a sum of K_0 convolutions). Read the other way round, for
# one output row i_0 the rows j_0 < K_0 of x^ starting at s_0 i_0 meet the
# kernel rows j_0 in order: merged with the features, the kernel's rows with
# its input features, they are one convolution whose contraction includes
# j_0 ("positions" form, M_0 convolutions stacked along the first dimension;
# the kernel gradient of eq. 9, with its few output rows, the kernel taps).
# The merges are reshapes, free only where the merged axes are adjacent, so
# each form needs its layout: "taps" the input's and output's batch axis
# right before their first spatial axis (NHWC, and the input gradient
# there), "positions" the input's and kernel's feature axis right before
# theirs (the kernel gradient of an NHWC layer, or a forward NCHW/OIHW one).
# Each convolution of one dimension fewer is evaluated by the algorithm
# chosen for it.
def _fold_form(geometry):
  """``"taps"``, ``"positions"`` or ``None`` (see above)."""
  lhs_spec, rhs_spec, out_spec = geometry.dimension_numbers
  if len(lhs_spec) < 4:                     # at least two spatial dims
    return None
  if (lhs_spec[2] == lhs_spec[0] + 1 and out_spec[2] == out_spec[0] + 1
      and geometry.batch_group_count == 1):
    return "taps"
  if lhs_spec[2] == lhs_spec[1] + 1 and rhs_spec[2] == rhs_spec[1] + 1:
    return "positions"
  return None


def _merge(a, major):
  """``a`` with axes ``major`` and ``major + 1`` merged into one."""
  shape = a.shape
  return a.reshape(shape[:major] + (shape[major] * shape[major + 1],)
                   + shape[major + 2:])


def _without_first_spatial(spec):
  """``spec`` without its first spatial axis, the others renumbered."""
  gone = spec[2]
  return tuple(a - (a > gone) for i, a in enumerate(spec) if i != 2)


def _without_first_dimension(geometry):
  """The geometry of the convolutions ``folded`` and ``stacked`` make: the
  first spatial dimension's stride, padding and dilations dropped."""
  return geometry._replace(
      window_strides=geometry.window_strides[1:],
      padding=geometry.padding[1:],
      lhs_dilation=geometry.lhs_dilation[1:],
      rhs_dilation=geometry.rhs_dilation[1:],
      dimension_numbers=lax.ConvDimensionNumbers(
          *(_without_first_spatial(spec)
            for spec in geometry.dimension_numbers)))


def _prepared_first_dimension(lhs, geometry):
  """x^ of eq. (5) along the first spatial dimension only (its padding and
  input dilation); the convolutions of one dimension fewer that ``folded``
  and ``stacked`` make apply the rest."""
  rest = len(geometry.padding) - 1
  return _prepared_input(lhs, geometry._replace(
      padding=geometry.padding[:1] + ((0, 0),) * rest,
      lhs_dilation=geometry.lhs_dilation[:1] + (1,) * rest))


def folded(lhs, rhs, geometry, out_shape):
  """The first spatial dimension unrolled: ``K_0`` (taps) or ``M_0``
  (positions) convolutions of one spatial dimension fewer."""
  lhs_spec, rhs_spec, out_spec = geometry.dimension_numbers
  form = _fold_form(geometry)
  x = _prepared_first_dimension(lhs, geometry)
  s, d = geometry.window_strides[0], geometry.rhs_dilation[0]
  taps, rows = rhs.shape[rhs_spec[2]], out_shape[out_spec[2]]
  accumulate = _accumulation_dtype(lhs.dtype, geometry.preferred_element_type)
  sub = _without_first_dimension(geometry)
  if form == "taps":
    # One term per kernel row k_0, the output rows merged with the batch;
    # summed in float32 for 16-bit inputs.
    if accumulate is not None:
      sub = sub._replace(preferred_element_type=accumulate)
    merged_out = list(out_shape)
    merged_out[out_spec[0]] *= rows
    del merged_out[out_spec[2]]
    total = None
    for k in range(taps):
      patch = lax.slice_in_dim(x, d * k, d * k + s * (rows - 1) + 1, s,
                               axis=lhs_spec[2])
      kernel = lax.index_in_dim(rhs, k, axis=rhs_spec[2], keepdims=False)
      term = evaluate(_merge(patch, lhs_spec[0]), kernel, sub, merged_out)
      term = term.reshape(out_shape)
      total = term if total is None else total + term
    return total.astype(geometry.preferred_element_type or lhs.dtype)
  # One convolution per output row i_0: rows and features merged.
  kernel = _merge(rhs, rhs_spec[1])
  sub_out = [n for axis, n in enumerate(out_shape) if axis != out_spec[2]]
  terms = []
  for i in range(rows):
    patch = lax.slice_in_dim(x, s * i, s * i + d * (taps - 1) + 1, d,
                             axis=lhs_spec[2])
    terms.append(evaluate(_merge(patch, lhs_spec[1]), kernel, sub, sub_out))
  return jnp.stack(terms, axis=out_spec[2])


# The "taps" fold in one convolution: docs/derivation.md eqs. (72), (73).
#
# With stride 1 in the first spatial dimension, the K_0 terms of eq. (70)
# read the input rows j = i_0 + d_0 k_0 - lo. Instead of slicing (copying)
# the input once per kernel row, every input row meets every kernel row in
# one convolution of one dimension fewer,
#
#   T[(n, j), ..., (k_0, o)] = sum_c sum_k' w[k_0, k', c, o] x[n, j, ..., c]
#
# (the input's rows merged with its batch, the kernel's rows with its output
# features, both free reshapes after one transposition of the small
# kernel), and output row i_0 is the sum over k_0 of T's row i_0 + d_0 k_0
# - lo in block k_0, the rows outside the input (the padding) being zero:
# a pad and slice per term that XLA fuses into the sum. T holds K_0 times
# the output; the input is read once.
#
# With stride s > 1 there, tap k_0 reads row s i_0 + d_0 k_0 of x^, so the
# taps split by the residue r of d_0 k_0 modulo s: with g = gcd(d_0, s), the
# taps of residue r are k_r + (s/g) m, and they read rows s (i_0 + o_r +
# (d_0/g) m) + r, i.e. rows i_0 + o_r + (d_0/g) m of the phase x^_r = x^[r::s]
# (o_r = (d_0 k_r - r) / s):
#
#   y[i_0] = sum_r sum_m x^_r[i_0 + o_r + (d_0/g) m] . w[k_r + (s/g) m]   (73)
#
# a stride-1 convolution of each phase with every (s/g)-th kernel row, kernel
# dilation d_0/g and low padding -o_r, each stacked as above; apart from a
# few rows at the edges, no product is computed that the strided sum skips.
def stacked(lhs, rhs, geometry, out_shape):
  """The "taps" fold as one convolution (eq. 72): the kernel's rows stacked
  on its output features, the input's rows merged with the batch, and each
  output row summed from ``K_0`` rows of the result; with a stride in the
  first dimension, one such convolution per row phase (eq. 73)."""
  if geometry.window_strides[0] > 1:
    return _stacked_phases(lhs, rhs, geometry, out_shape)
  lhs_spec, rhs_spec, out_spec = geometry.dimension_numbers
  taps, rows = rhs.shape[rhs_spec[2]], out_shape[out_spec[2]]
  height, features = lhs.shape[lhs_spec[2]], rhs.shape[rhs_spec[0]]
  d = geometry.rhs_dilation[0]
  accumulate = _accumulation_dtype(lhs.dtype, geometry.preferred_element_type)
  sub = _without_first_dimension(geometry)._replace(
      preferred_element_type=accumulate or geometry.preferred_element_type)
  # The kernel's first spatial axis moved right before its output features
  # and merged with them, k_0 major: w'[..., (k_0, o)] = w[k_0, ..., o].
  order = [a for a in range(rhs.ndim) if a != rhs_spec[2]]
  major = order.index(rhs_spec[0])
  order.insert(major, rhs_spec[2])
  kernel = _merge(jnp.transpose(rhs, order), major)
  sub_out = list(out_shape)
  sub_out[out_spec[0]] *= height
  sub_out[out_spec[1]] *= taps
  del sub_out[out_spec[2]]
  # T[n, j, ..., (k_0, o)]: every input row j against every kernel row.
  whole = evaluate(_merge(lhs, lhs_spec[0]), kernel, sub, sub_out)
  full = list(out_shape)
  full[out_spec[2]], full[out_spec[1]] = height, taps * features
  whole = whole.reshape(full)
  # y[n, i] = sum_k T[n, i + d k - lo, k]: rows outside the input (the
  # padding) are zero, a pad that XLA fuses into the sum.
  pads = [(0, 0, 0)] * len(full)
  pads[out_spec[2]] = geometry.padding[0] + (0,)
  total = None
  for k in range(taps):
    term = lax.slice_in_dim(whole, k * features, (k + 1) * features,
                            axis=out_spec[1])
    term = lax.slice_in_dim(lax.pad(term, jnp.zeros((), term.dtype), pads),
                            d * k, d * k + rows, axis=out_spec[2])
    total = term if total is None else total + term
  return total.astype(geometry.preferred_element_type or lhs.dtype)


def _stacked_phases(lhs, rhs, geometry, out_shape):
  """Eq. (73): a first dimension of stride ``s`` as ``s`` (at most) stride-1
  stacked convolutions of the row phases of ``x^``, summed."""
  lhs_spec, rhs_spec, out_spec = geometry.dimension_numbers
  s, d = geometry.window_strides[0], geometry.rhs_dilation[0]
  taps, rows = rhs.shape[rhs_spec[2]], out_shape[out_spec[2]]
  x = _prepared_first_dimension(lhs, geometry)
  g = math.gcd(d, s)
  accumulate = _accumulation_dtype(lhs.dtype, geometry.preferred_element_type)
  total = None
  for r in range(s):
    first = next((k for k in range(taps) if d * k % s == r), None)
    if first is None:
      continue
    phase = lax.slice_in_dim(x, r, x.shape[lhs_spec[2]], s, axis=lhs_spec[2])
    kernel = lax.slice_in_dim(rhs, first, taps, s // g, axis=rhs_spec[2])
    offset, dilation = (d * first - r) // s, d // g
    hi = (rows + offset + dilation * (kernel.shape[rhs_spec[2]] - 1)
          - phase.shape[lhs_spec[2]])
    sub = geometry._replace(
        window_strides=(1,) + geometry.window_strides[1:],
        padding=((-offset, hi),) + geometry.padding[1:],
        rhs_dilation=(dilation,) + geometry.rhs_dilation[1:],
        preferred_element_type=accumulate or geometry.preferred_element_type)
    term = stacked(phase, kernel, sub, out_shape)
    total = term if total is None else total + term
  return total.astype(geometry.preferred_element_type or lhs.dtype)


# The kernel gradient in strips of rows: docs/derivation.md eq. (71).
#
# In a channels-last layout the kernel gradient (9) of a 2-D layer is a
# convolution (10) whose lhs is x^ with its axes read as (F, rows, cols, B):
# the samples n are its contracted features F, the input features c its
# batch B; whose kernel is the delta, (F, Q_0, Q_1, O), its positions the
# window; and whose output positions (p_0, p_1) are the forward kernel's
# taps. With t its stride (the forward dilation) and r its kernel dilation
# (the forward stride),
#
#   dw[p_0, p_1, c, o] = sum_{(n, q_0)} sum_{q_1} delta[n, q_0, q_1, o]
#                        x^[n, t_0 p_0 + r_0 q_0, t_1 p_1 + r_1 q_1, c]
#
#                      = sum_{strips S} sum_{(n, q_0) in S} sum_{q_1}
#                        delta[n, q_0, q_1, o] P_S[n, t_0 p_0 + r_0 q_0, q_1,
#                                                 (p_1, c)]            (71)
#
# with P_S[n, j, q_1, (p_1, c)] = x^[n, j, t_1 p_1 + r_1 q_1, c]: the strip's
# rows of x^ with the P_1 column shifts side by side on the channel axis
# (im2col over the last dimension only). Row p_0 of the kernel gradient is
# then one matrix product per strip, contracted over the strip's merged
# (n, q_0, q_1), whose operand is a row slice of P_S: rows t_0 p_0 + r_0 q_0,
# contiguous when r_0 = 1, so for a stride-1 layer its merge is free. The
# strips are visited in a loop and their products summed: each strip's
# patches are built and used while they are in cache, where im2col over
# the whole batch (an operand of 9x the input for a 3x3 kernel) measured
# 1.8-3.6x slower than XLA's kernel. A strip is R rows of one sample (R
# divides Q_0), or S whole samples (S divides the batch) when a sample is
# small, with at most STRIP_ELEMENTS elements in its largest operand.
STRIP_ELEMENTS = 1 << 19

# The operands' layout (B or O, F, rows, cols): channels last.
_STRIP_SPEC = (3, 0, 1, 2)


def _largest_divisor(n: int, at_most: int) -> int:
  return max(d for d in range(1, max(1, min(n, at_most)) + 1) if n % d == 0)


def strip_plan(lhs_shape, rhs_shape, out_shape, geometry):
  """``(samples, rows)`` of one strip of :func:`strips` (see above)."""
  out_spec = geometry.dimension_numbers.out_spec
  samples, q0, q1, out_features = rhs_shape
  p1 = out_shape[out_spec[3]]
  row = q1 * max(p1 * lhs_shape[3], out_features)   # elements per strip row
  rows = _largest_divisor(q0, STRIP_ELEMENTS // row)
  if rows < q0:
    return 1, rows
  return _largest_divisor(samples, STRIP_ELEMENTS // (row * q0)), q0


def strips(lhs, rhs, geometry, out_shape):
  """A channels-last 2-D kernel gradient, eq. (71): one matrix product per
  kernel row and strip of rows, the strip's column shifts concatenated on
  the channels, summed over the strips in a loop."""
  out_spec = geometry.dimension_numbers.out_spec
  x = _prepared_input(lhs, geometry)                   # (F, rows, cols, B)
  samples, q0, q1, out_features = rhs.shape
  p0, p1 = out_shape[out_spec[2]], out_shape[out_spec[3]]
  (t0, t1), (r0, r1) = geometry.window_strides, geometry.rhs_dilation
  channels = x.shape[3]
  accumulate = _accumulation_dtype(lhs.dtype, geometry.preferred_element_type)
  dtype = accumulate or jnp.result_type(lhs.dtype, rhs.dtype)
  per_strip, rows = strip_plan(lhs.shape, rhs.shape, out_shape, geometry)
  extent = r0 * (rows - 1) + t0 * (p0 - 1) + 1         # x^ rows of a strip
  along = q0 // rows
  # The smaller free axis indexes the products' output rows (see
  # _long_contraction): "o" is the delta's features, "w" the patch width.
  first = "o" if out_features <= p1 * channels else "w"
  spec = "mo,mw->ow" if first == "o" else "mo,mw->wo"

  def strip(total, index):
    n, q = (index // along) * per_strip, (index % along) * rows
    zero = jnp.zeros((), index.dtype)
    xs = lax.dynamic_slice(x, (n, r0 * q, zero, zero),
                           (per_strip, extent, x.shape[2], channels))
    ds = lax.dynamic_slice(rhs, (n, q, zero, zero),
                           (per_strip, rows, q1, out_features))
    patches = jnp.concatenate(
        [lax.slice_in_dim(xs, t1 * p, t1 * p + r1 * (q1 - 1) + 1, r1, axis=2)
         for p in range(p1)], axis=3).astype(dtype)  # (S, extent, Q_1, P_1 B)
    ds = ds.reshape(-1, out_features).astype(dtype)
    terms = [jnp.einsum(spec, ds, lax.slice_in_dim(
        patches, t0 * p, t0 * p + r0 * (rows - 1) + 1, r0,
        axis=1).reshape(-1, p1 * channels), precision=geometry.precision,
        preferred_element_type=dtype) for p in range(p0)]
    return total + jnp.stack(terms), None

  shape = ((p0, out_features, p1 * channels) if first == "o"
           else (p0, p1 * channels, out_features))
  total, _ = lax.scan(strip, jnp.zeros(shape, dtype),
                      jnp.arange(samples // per_strip * along, dtype=jnp.int32))
  # Axes: k = p_0, l = p_1, c = the channels (the output's batch), o.
  if first == "o":
    total, axes = total.reshape(p0, out_features, p1, channels), "kolc"
  else:
    total, axes = total.reshape(p0, p1, channels, out_features), "klco"
  letters = [""] * 4
  for axis, letter in zip(out_spec, "cokl"):
    letters[axis] = letter
  y = jnp.transpose(total, [axes.index(a) for a in letters])
  return y.astype(geometry.preferred_element_type or lhs.dtype)


# An output grown past the input, eq. (74) (see GROW_OUTPUTS). In spatial
# dimension i the output has
#   Q_i = floor((N_i + lo_i + hi_i - d_i (K_i - 1) - 1) / s_i) + 1
# positions. e more of them come from e s_i more elements at the far end
# (hi_i + e s_i: zeros of padding, or input that a negative hi_i had
# cropped); the first Q_i never read that far, so slicing the e back off
# gives eq. (5) exactly. Growing the dimension that needs the fewest extra
# positions for its length, e = N_i - Q_i + 1, makes the output longer
# than the input there.
def _growth(geometry, lhs_shape, out_shape):
  """``(i, e)``: the spatial dimension to grow and by how many output
  positions, the fewest for its length (``e = 0`` where the output is
  longer than the input already); ``None`` with input dilation, which XLA
  never hands to YNNPACK."""
  if any(a != 1 for a in geometry.lhs_dilation):
    return None
  lhs_spec, _, out_spec = geometry.dimension_numbers
  pairs = list(zip(_spatial(lhs_shape, lhs_spec), _spatial(out_shape,
                                                           out_spec)))
  for i, (n, q) in enumerate(pairs):
    if q > n:
      return i, 0
  costs = [(n - q + 1) / q for n, q in pairs]
  i = costs.index(min(costs))
  return i, pairs[i][0] - pairs[i][1] + 1


def _cheap_growth(geometry, lhs_shape, out_shape) -> bool:
  """Whether ``_growth`` adds at most ``GROW_MAX_FRACTION`` of the grown
  dimension's output positions."""
  growth = _growth(geometry, lhs_shape, out_shape)
  if growth is None:
    return False
  i, extra = growth
  out_spec = geometry.dimension_numbers.out_spec
  return extra <= GROW_MAX_FRACTION * out_shape[out_spec[2 + i]]


def grown(lhs, rhs, geometry, out_shape):
  """XLA's kernel on an output grown past the input in one spatial
  dimension, sliced back (see ``_growth``): on the CPU XLA then uses its
  Eigen kernel instead of YNNPACK's."""
  i, extra = _growth(geometry, lhs.shape, out_shape)
  padding = list(geometry.padding)
  lo, hi = padding[i]
  padding[i] = (lo, hi + extra * geometry.window_strides[i])
  y = xla(lhs, rhs, geometry._replace(padding=tuple(padding)), None)
  axis = geometry.dimension_numbers.out_spec[2 + i]
  return lax.slice_in_dim(y, 0, out_shape[axis], axis=axis)


def xla(lhs, rhs, geometry, out_shape):
  """XLA's native convolution."""
  del out_shape
  return lax.conv_general_dilated(
      lhs, rhs,
      window_strides=geometry.window_strides,
      padding=geometry.padding,
      lhs_dilation=geometry.lhs_dilation,
      rhs_dilation=geometry.rhs_dilation,
      dimension_numbers=geometry.dimension_numbers,
      feature_group_count=geometry.feature_group_count,
      batch_group_count=geometry.batch_group_count,
      precision=geometry.precision,
      preferred_element_type=geometry.preferred_element_type,
  )


IMPLEMENTATIONS = {"xla": xla, "shifted": shifted, "window_dot": window_dot,
                   "phased": phased, "split_groups": split_groups,
                   "chunked": chunked, "folded": folded, "stacked": stacked,
                   "strips": strips, "grown": grown}


def evaluate(lhs, rhs, geometry, out_shape: Sequence[int]):
  """Evaluates one convolution with the chosen algorithm."""
  name = choose_algorithm(geometry, lhs.shape, rhs.shape, out_shape)
  return IMPLEMENTATIONS[name](lhs, rhs, geometry, tuple(out_shape))
