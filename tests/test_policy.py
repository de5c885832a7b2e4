"""The policy: which algorithm each convolution of a layer gets, per preset
(one table), how the host's preset is found, what the probes of XLA see, and
how a user names a policy.

Whether each algorithm computes the right numbers is test_algorithms.py's
subject; here only the choice is.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import jaxconv
from jaxconv._algorithms import OPTIONS, PRESETS, RULES, host
from jaxconv._algorithms.policy import HOST_PRESETS
from tests.conv_cases import pass_shapes

NCHW = ("NCHW", "OIHW", "NCHW")
# The layers of experiments/benchmark.py's suite and a few neighbours:
# name -> (input without its batch, kernel, lax keyword arguments); channels
# last and "SAME" unless said otherwise.
LAYERS = {
    "1x1": ((56, 56, 256), (1, 1, 256, 64), {}),
    "1x1 s2": ((56, 56, 256), (1, 1, 256, 512), dict(window_strides=2)),
    "3x3": ((56, 56, 64), (3, 3, 64, 64), {}),
    "3x3 narrow": ((28, 28, 32), (3, 3, 32, 32), {}),
    "3x3 s2": ((56, 56, 64), (3, 3, 64, 128), dict(window_strides=2)),
    "3x3 d2": ((28, 28, 64), (3, 3, 64, 64), dict(rhs_dilation=(2, 2))),
    "3x3 nchw": ((64, 56, 56), (64, 64, 3, 3), dict(dimension_numbers=NCHW)),
    "3x3 s2 nchw": ((64, 56, 56), (128, 64, 3, 3),
                    dict(window_strides=2, dimension_numbers=NCHW)),
    "depthwise": ((28, 28, 128), (3, 3, 1, 128),
                  dict(feature_group_count=128)),
    "depthwise 4x4": ((4, 4, 512), (3, 3, 1, 512),
                      dict(feature_group_count=512)),
    "grouped": ((28, 28, 128), (3, 3, 32, 128), dict(feature_group_count=4)),
    "stem": ((224, 224, 3), (7, 7, 3, 64), dict(window_strides=2)),
    "1-D": ((256, 64), (5, 64, 64), dict(dimension_numbers=("NWC", "WIO",
                                                            "NWC"))),
    "3-D": ((16, 16, 16, 16), (3, 3, 3, 16, 32),
            dict(dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))),
    # A 3-D layer's planes once folded: many samples, small planes.
    "planes": ((16, 16, 16), (3, 3, 16, 32), {}),
    "transposed": ((28, 28, 64), (4, 4, 64, 32),
                   dict(padding=((2, 2), (2, 2)), lhs_dilation=(2, 2))),
}

# The algorithms, a letter each.
LETTERS = dict(x="xla", s="shifted", w="window_dot", p="phased",
               g="split_groups", c="chunked", f="folded", k="stacked",
               t="strips", r="grown")

# Layer, batch, then the forward pass, input gradient and kernel gradient's
# algorithms under each preset, as XLA 0.10 runs by default (2-D
# convolutions in YNNPACK, a grown one on the Eigen kernel).
#     layer, batch, then generic, x86, amd-avx2, amd-avx512, intel-avx512
TABLE = [
    ("1x1", 8, "ssw", "ssw", "ssw", "ssw", "ssw"),
    ("1x1", 32, "ssw", "ssw", "ssw", "ssw", "ssw"),
    ("1x1 s2", 8, "spw", "spw", "spw", "spw", "spw"),
    ("3x3", 8, "xxx", "xxx", "rrf", "rrt", "rrt"),
    ("3x3", 32, "xxx", "xxx", "rrc", "rrt", "rrt"),
    ("3x3 narrow", 8, "xxx", "xxx", "xxx", "xxx", "xxx"),
    ("3x3 narrow", 32, "xxx", "xxx", "xxf", "xxt", "xxt"),
    ("3x3 s2", 8, "xxx", "xxx", "xxf", "kpt", "kpt"),
    ("3x3 s2", 32, "xxx", "xxx", "ccc", "cpt", "cpt"),
    ("3x3 d2", 8, "xxx", "xxx", "rrf", "rrt", "rrt"),
    ("3x3 nchw", 8, "xxx", "xxx", "rrf", "rrx", "rrk"),
    ("3x3 nchw", 32, "xxx", "xxx", "rrc", "rrc", "rrc"),
    ("3x3 s2 nchw", 8, "xxx", "xxx", "fxf", "fpx", "fpk"),
    ("3x3 s2 nchw", 32, "xxx", "xxx", "ccc", "cpc", "cpc"),
    ("depthwise", 8, "ssw", "ssw", "ssw", "ssw", "ssw"),
    ("depthwise", 32, "ssw", "ssw", "ssw", "ssw", "ssw"),
    ("depthwise 4x4", 32, "ssw", "ssw", "ssw", "ssw", "ssw"),
    ("grouped", 8, "ggg", "ggg", "ggg", "ggg", "ggg"),
    ("stem", 8, "xxx", "xxx", "xcc", "xcc", "xcc"),
    ("1-D", 8, "xxx", "xxx", "xxx", "xxx", "xxx"),
    ("3-D", 8, "xxx", "fff", "fff", "fff", "fff"),
    ("planes", 128, "xxx", "xxx", "xxf", "xxf", "xxf"),
    ("planes", 512, "xxx", "xxf", "xxf", "xxf", "xxf"),
    ("transposed", 8, "pxp", "pxp", "pxp", "pxp", "pxp"),
    ("transposed", 32, "pxp", "pxp", "pxp", "pxp", "pxp"),
]

# The same with XLA's 2-D convolutions on its Eigen kernel (YNNPACK's turned
# off in XLA_FLAGS): dense 2-D convolutions go to XLA on every preset.
TABLE_EIGEN = [
    ("3x3", 8, "xxx", "xxx", "xxx", "xxx", "xxx"),
    ("3x3 s2", 8, "xxx", "xxx", "xxx", "xpx", "xpx"),
    ("3x3 s2", 32, "xxx", "xxx", "xcx", "xpx", "xpx"),
    ("stem", 32, "xxx", "xxx", "xcx", "xcx", "xcx"),
    ("3x3 nchw", 32, "xxx", "xxx", "xxx", "xxx", "xxx"),
    ("1x1", 8, "ssw", "ssw", "ssw", "ssw", "ssw"),
    ("3-D", 8, "xxx", "fff", "fff", "fff", "fff"),
    ("transposed", 8, "pxp", "pxp", "pxp", "pxp", "pxp"),
]
PRESET_COLUMNS = ("generic", "x86", "amd-avx2", "amd-avx512", "intel-avx512")


def layer_step(layer, batch):
  """A layer's training step (output and both gradients) and its arguments,
  as shapes: its convolutions are the forward pass, the input gradient and
  the kernel gradient, in that order."""
  x, w, kwargs = LAYERS[layer]
  lhs = jax.ShapeDtypeStruct((batch, *x), jnp.float32)
  rhs = jax.ShapeDtypeStruct(w, jnp.float32)
  kwargs = {"window_strides": 1, "padding": "SAME",
            "dimension_numbers": ("NHWC", "HWIO", "NHWC")} | kwargs
  if len(x) == 2:
    kwargs["dimension_numbers"] = ("NWC", "WIO", "NWC")
  elif len(x) == 4 and "dimension_numbers" not in LAYERS[layer][2]:
    kwargs["dimension_numbers"] = ("NDHWC", "DHWIO", "NDHWC")
  conv = functools.partial(jaxconv.conv_general_dilated, **kwargs)

  def step(lhs, rhs):
    y, pullback = jax.vjp(conv, lhs, rhs)
    return y, pullback(y)

  return step, lhs, rhs


def choices(policy, layer, batch, backend="cpu"):
  """The three algorithms of a layer's step under ``policy``, as letters,
  recorded while the step is traced (on ``backend``, chosen again from the
  recorded geometries)."""
  with jaxconv.use_policy(policy):
    recorded = jaxconv.chosen_algorithms(*layer_step(layer, batch))
  assert len(recorded) == 3, recorded
  names = {v: k for k, v in LETTERS.items()}
  return "".join(names[jaxconv.choose_algorithm(
      c.geometry, c.lhs_shape, c.rhs_shape, c.out_shape, backend, policy)]
                 for c in recorded)


def _rows(table, **facts):
  for layer, batch, *columns in table:
    for preset, expected in zip(PRESET_COLUMNS, columns):
      yield pytest.param(PRESETS[preset].replace(**facts), layer, batch,
                         expected, id=f"{preset}-{layer}-b{batch}")


@pytest.mark.parametrize("policy, layer, batch, expected", list(_rows(TABLE)))
def test_table(policy, layer, batch, expected):
  assert choices(policy, layer, batch) == expected
  assert choices(policy, layer, batch, "gpu") == "xxx"


@pytest.mark.parametrize("policy, layer, batch, expected", list(_rows(
    TABLE_EIGEN, xla_convolutions_in_ynnpack=False)))
def test_table_with_xla_eigen_kernel(policy, layer, batch, expected):
  assert choices(policy, layer, batch) == expected


def test_without_grown_convolutions_leaving_ynnpack():
  """Where a grown convolution would stay in YNNPACK, "grown" is never
  chosen: the rows below it decide."""
  policy = PRESETS["intel-avx512"].replace(
      grown_convolutions_leave_ynnpack=False)
  assert choices(policy, "3x3", 8) == "kkt"
  assert choices(policy, "3x3", 32) == "cct"
  assert choices(policy, "3x3 d2", 8) == "kkt"


@pytest.mark.parametrize("option", OPTIONS)
def test_every_option_changes_some_choice(option):
  """Each optional rule decides at least one choice of the tables: taken
  out of the Intel preset (which has them all), some row changes."""
  full = PRESETS["intel-avx512"]
  without = full.replace(options=tuple(o for o in full.options if o != option))
  rows = [(layer, batch) for layer, batch, *_ in TABLE + TABLE_EIGEN]
  rows += [("3x3", 8), ("3x3 s2", 32)]
  changed = [(layer, batch) for layer, batch in rows
             if choices(full, layer, batch) != choices(without, layer, batch)]
  assert changed, option


def test_rules_table_is_well_formed():
  """Every row names a registered algorithm, a known option (or none) and
  a one-line reason."""
  for rule in RULES:
    assert rule.algorithm in jaxconv.ALGORITHMS[1:]
    assert rule.option is None or rule.option in OPTIONS
    assert rule.reason and "\n" not in rule.reason and len(rule.reason) < 80
  assert {r.option for r in RULES} - {None} <= set(OPTIONS)


def test_forced_algorithm_where_supported_else_xla():
  """``algorithm=`` overrides the policy where the algorithm supports the
  convolution, and gives XLA's kernel elsewhere."""
  for algorithm, expected in (("window_dot", "xxw"), ("shifted", "ssx"),
                              ("folded", "fff"), ("phased", "xxx")):
    letters = {v: k for k, v in LETTERS.items()}
    got = "".join(letters[jaxconv.choose_algorithm(g, lhs, rhs, out, "cpu")]
                  for g, lhs, rhs, out in pass_shapes(
                      (8, 16, 16, 16), (3, 3, 16, 16), algorithm=algorithm))
    assert got == expected, algorithm


# /proc/cpuinfo texts -> the CPU class, whose preset the host gets.
CPUINFO = [
    ("vendor_id\t: GenuineIntel\nflags\t\t: fpu avx2 avx512f avx512bw\n",
     "intel-avx512"),
    ("vendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 avx512f avx512bw\n",
     "amd-avx512"),
    ("vendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2\n",
     "amd-avx2"),
    ("vendor_id\t: GenuineIntel\nflags\t\t: fpu avx2\n", "generic"),
    ("vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2\n", "generic"),
    ("vendor_id\t: HygonGenuine\nflags\t\t: fpu avx2 avx512f\n", "generic"),
    ("flags\t\t: fpu avx512f\n", "generic"),
    ("vendor_id\t: GenuineIntel\nflags\t\t: fpu avx512fx\n", "generic"),
    ("processor\t: 0\nFeatures\t: fp asimd\n", "generic"),
    ("", "generic"),
]


@pytest.mark.parametrize("cpuinfo, expected", CPUINFO)
def test_cpu_class(cpuinfo, expected):
  """The measured classes are told apart; every other CPU (other vendors,
  x86 without AVX2, ARM, no /proc/cpuinfo) is of the generic class."""
  assert host.cpu_class(cpuinfo) == expected


def test_cpuinfo_field_reads_the_first_processor():
  two = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC"
         "\nflags\t\t: fpu sse2 avx2 fma\n\nprocessor\t: 1\n"
         "vendor_id\t: GenuineIntel\nflags\t\t: fpu avx512f\n")
  assert host.cpuinfo_field(two, "flags") == "fpu sse2 avx2 fma"
  assert host.cpuinfo_field(two, "model name") == "AMD EPYC"
  assert host.cpuinfo_field(two, "microcode") is None
  assert host.cpu_class(two) == "amd-avx2"


def test_host_policy_is_the_preset_of_the_host():
  """The default preset of the host's CPU class (``x86`` for every measured
  x86 class, ``generic`` for the rest), with the two facts the probes
  found."""
  policy = jaxconv.host_policy()
  preset = PRESETS[HOST_PRESETS[host.cpu_class(host.host_cpuinfo())]]
  assert policy.name == preset.name and policy.options == preset.options
  assert policy.thresholds == preset.thresholds
  if jax.default_backend() == "cpu":
    assert policy.xla_convolutions_in_ynnpack is (
        host.xla_convolutions_in_ynnpack())
    assert policy.grown_convolutions_leave_ynnpack is (
        host.grown_convolutions_leave_ynnpack())


_PROBE = """
import jax, jax.numpy as jnp, numpy as np, jaxconv
from jax import lax
from jaxconv._algorithms import host
x, w = jnp.ones((2, 9, 9, 32)), jnp.ones((3, 3, 32, 32)) / 9
loss = lambda conv: lambda x, w: jnp.sum(conv(x, w) ** 2)
ours = jax.jit(jax.grad(loss(lambda x, w: jaxconv.conv(x, w, padding="SAME")),
                        (0, 1)))(x, w)      # the probes run while tracing
theirs = jax.grad(loss(lambda x, w: lax.conv_general_dilated(
    x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))),
                  (0, 1))(x, w)
for a, b in zip(ours, theirs):
  np.testing.assert_allclose(a, b, rtol=1e-5)
policy = jaxconv.host_policy()
print(host.xla_convolutions_in_ynnpack(),
      host.grown_convolutions_leave_ynnpack(), policy.name,
      policy.xla_convolutions_in_ynnpack)
"""


@pytest.mark.parametrize("flag, in_ynnpack", [
    ("=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION", True),
    ("=-LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION", False),
    ("=", False)])
def test_probe_reads_the_xla_flags(flag, in_ynnpack):
  """A probe convolution compiled once per process, the first time a
  convolution is traced (here a jitted gradient, which still equals lax's),
  tells whether XLA hands 2-D convolutions to YNNPACK, as XLA_FLAGS
  configure it: on, off with YNNPACK's dots kept, all of YNNPACK off; the
  host's policy carries what it found."""
  flags = "--xla_cpu_experimental_ynn_fusion_type" + flag
  result = subprocess.run(
      [sys.executable, "-c", _PROBE], capture_output=True, text=True,
      timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu",
                        "XLA_FLAGS": flags})
  assert result.returncode == 0, result.stderr
  probe, _, name, carried = result.stdout.split()
  assert probe == carried == str(in_ynnpack)
  assert name in PRESETS


def test_probe_without_a_cpu_backend(monkeypatch):
  """With no CPU device to compile the probes on, XLA's default is assumed
  (YNNPACK's kernel) and outputs are not grown."""
  def no_cpu(backend=None):
    raise RuntimeError(f"Unknown backend {backend}")
  monkeypatch.setattr(jax, "devices", no_cpu)
  assert host.xla_convolutions_in_ynnpack.__wrapped__() is True
  assert host.grown_convolutions_leave_ynnpack.__wrapped__() is False


def test_a_user_names_a_policy():
  """By preset name or as a value; the geometry carries the policy it was
  made under, so a function traced inside the block keeps it."""
  x = jax.ShapeDtypeStruct((8, 56, 56, 64), jnp.float32)
  w = jax.ShapeDtypeStruct((3, 3, 64, 64), jnp.float32)
  step = jax.grad(lambda x, w: jnp.sum(jaxconv.conv(x, w, padding="SAME")),
                  (0, 1))
  for policy in ("generic", PRESETS["amd-avx2"],
                 PRESETS["intel-avx512"].replace(options=("fold",))):
    with jaxconv.use_policy(policy):
      made = jaxconv.make_conv_geometry(x.shape, w.shape, 1, "SAME",
                                        dimension_numbers=("NHWC", "HWIO",
                                                           "NHWC"))
      recorded = [c.algorithm for c in jaxconv.chosen_algorithms(step, x, w)]
    expected = PRESETS[policy] if isinstance(policy, str) else policy
    assert made.policy == expected
    if jax.default_backend() == "cpu":
      assert "".join(
          {v: k for k, v in LETTERS.items()}[a] for a in recorded) == choices(
              expected, "3x3", 8)
  explicit = jaxconv.make_conv_geometry((1, 4, 4, 1), (3, 3, 1, 1), 1,
                                        "SAME", policy="amd-avx512",
                                        dimension_numbers=("NHWC", "HWIO",
                                                           "NHWC"))
  assert explicit.policy is PRESETS["amd-avx512"]


def test_chosen_algorithms_lists_the_three_passes():
  x = jax.ShapeDtypeStruct((8, 28, 28, 128), jnp.float32)
  w = jax.ShapeDtypeStruct((3, 3, 1, 128), jnp.float32)
  step = jax.grad(lambda x, w: jnp.sum(jaxconv.conv(x, w, groups=128)),
                  (0, 1))
  with jaxconv.use_policy("generic"):
    recorded = jaxconv.chosen_algorithms(step, x, w)
  expected = ["shifted", "shifted", "window_dot"] if (
      jax.default_backend() == "cpu") else ["xla"] * 3
  assert [c.algorithm for c in recorded] == expected
  assert [c.out_shape for c in recorded] == [(8, 26, 26, 128),
                                             (8, 28, 28, 128), (3, 3, 1, 128)]


def test_bad_policies_are_refused():
  with pytest.raises(ValueError, match="`policy` must be a jaxconv.Policy"):
    with jaxconv.use_policy("fast"):
      pass
  with pytest.raises(ValueError, match="`options` must be among"):
    jaxconv.Policy("mine", options=("fold", "fly"))
  with pytest.raises(ValueError, match="`policy`"):
    jaxconv.make_conv_geometry((1, 4, 4, 1), (3, 3, 1, 1), 1, "SAME",
                               dimension_numbers=("NHWC", "HWIO", "NHWC"),
                               policy=3)
  with pytest.raises(TypeError):
    PRESETS["generic"].replace(thresholds=dict(no_such_size=1))
  assert dataclasses.replace(PRESETS["generic"], name="x").options == ()


# What a choice becomes when lowered: the policy steers the program.

def _convolution_batches(program: str) -> list[int]:
  return [int(n) for n in re.findall(
      r"stablehlo.convolution\(%[^)]*\).*?: \(tensor<(\d+)x", program)]


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="the policy steers CPU convolutions only")
@pytest.mark.parametrize("fold_kernel_gradients", [False, True])
def test_stem_gradients_in_chunks(fold_kernel_gradients):
  """The RGB stem at batch 8, lowered only: the forward pass whole, then
  four chunks of 2 samples for the input gradient and for the kernel
  gradient. The kernel gradient's chunks contract only 2 samples, so they
  fold only with ``fold_kernel_gradients``: each into its 7 output rows, 1-D
  convolutions contracting the chunk's 2 samples times the 112 rows of x^
  that one output row reads."""
  options = ("chunk", "fold", "fold_2d") + (
      ("fold_kernel_gradients",) if fold_kernel_gradients else ())
  lhs = jax.ShapeDtypeStruct((8, 224, 224, 3), jnp.float32)
  rhs = jax.ShapeDtypeStruct((7, 7, 3, 64), jnp.float32)
  f = functools.partial(jaxconv.conv, stride=2, padding=((3, 3), (3, 3)))

  def step(lhs, rhs):
    y, pullback = jax.vjp(f, lhs, rhs)
    return y, pullback(jnp.ones_like(y))

  with jaxconv.use_policy(jaxconv.Policy("chunks", options)):
    program = jax.jit(step).lower(lhs, rhs).as_text()
  batches = sorted(_convolution_batches(program))
  if fold_kernel_gradients:
    assert batches == [2] * 4 + [8] + [224] * 28, batches
  else:
    assert batches == [2] * 8 + [8], batches


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="the policy steers CPU convolutions only")
@pytest.mark.parametrize("fold_strided", [False, True])
def test_strided_forward_folds_where_told(fold_strided):
  """With ``fold_strided`` (and 2-D folds, without ``stack``) the forward
  pass of the stride-2 layer is one 1-D convolution per kernel row, each
  reading a strided row slice merged with the batch (8 x 28 rows); without
  it, XLA's one 2-D convolution."""
  options = ("fold", "fold_2d") + (("fold_strided",) if fold_strided else ())
  lhs = jax.ShapeDtypeStruct((8, 56, 56, 64), jnp.float32)
  rhs = jax.ShapeDtypeStruct((3, 3, 64, 128), jnp.float32)
  with jaxconv.use_policy(jaxconv.Policy("strided", options)):
    program = jax.jit(functools.partial(jaxconv.conv, stride=2,
                                        padding="SAME")).lower(lhs, rhs)
  batches = _convolution_batches(program.as_text())
  assert batches == ([224] * 3 if fold_strided else [8]), batches
