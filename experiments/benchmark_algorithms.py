"""Algorithms side by side: a layer's convolutions under chosen algorithms
and policies.

The measurements behind the CPU policy (``jaxconv.Policy``, its presets and
rules in ``jaxconv/_algorithms/``). Each *variant* is an algorithm name,
forced for every convolution that supports it (``auto`` is the policy's
choice), optionally with settings of the policy it is traced under (the
host's, unless ``preset=NAME`` names another): an option on or off, or a
threshold::

    xla                          XLA's kernel everywhere
    folded                       every convolution folded, down to 1-D
    auto                         the host's policy
    auto:preset=generic          the conservative preset
    auto:fold_min_elements=inf   the host's policy without "folded"
    auto:stack=0                 ... without the "stack" option
    chunked:chunk_samples=2,chunk_elements=inf   chunks of two samples
    xla/eigen                    XLA's kernel, its Eigen one (below)
    auto/eigen                   the policy where XLA's kernel is Eigen's

A variant ending in ``/eigen`` is compiled with XLA's YNNPACK convolutions
turned off (``compiler_options``, as benchmark.py's
``--no-ynnpack-convolutions`` does for a whole process), and its policy is
told so: both kernels side by side in one run.

Two modes, both interleaved round by round (``timing.interleaved``), medians
in milliseconds, with each variant's ratio to the first:

* per pass (default): the three convolutions of the rule compiled and timed
  on their own, the forward pass (``conv_general_dilated``), the input
  gradient (``conv_input_grad``) and the kernel gradient
  (``conv_kernel_grad``), with the algorithm each one ends up with;
* ``--step``: the compiled forward+backward of ``experiments/benchmark.py``
  (the output and both gradients for a random cotangent), with XLA's
  temporary memory for it and the minor page faults per call.

    python experiments/benchmark_algorithms.py --only "3x3 conv" --batch 8 \\
        --variant xla --variant folded
    python experiments/benchmark_algorithms.py --step \\
        --variant auto:fold_min_elements=inf --variant auto
    python experiments/benchmark_algorithms.py --step --small \\
        --variant xla --variant folded       # the folding threshold's layers
    python experiments/benchmark_algorithms.py --strided \\
        --variant auto:phase_few_taps=0 --variant auto   # strided layers
    python experiments/benchmark_algorithms.py --variant xla \\
        --variant xla/eigen --variant auto --variant auto/eigen  # both kernels
    python experiments/benchmark_algorithms.py --step --network resnet18 \\
        --variant xla --variant auto:preset=generic --variant auto
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

import jaxconv

import benchmark
import timing

# Small dense 3x3 layers, each at the batch it was measured at, for the size
# and the feature count from which the policy folds a 2-D convolution
# (fold_min_elements, fold_min_features): 16 to 64 features, 65 536 to
# 802 816 input elements.
SMALL = [
    (benchmark.Layer("3x3 conv 16->16 @8", (8, 8), (3, 3), 16, 16), 64),
    (benchmark.Layer("3x3 conv 32->32 @16", (16, 16), (3, 3), 32, 32), 8),
    (benchmark.Layer("3x3 conv 32->32 @28", (28, 28), (3, 3), 32, 32), 8),
    (benchmark.Layer("3x3 conv 64->64 @28", (28, 28), (3, 3), 64, 64), 4),
    (benchmark.Layer("3x3 conv 32->32 @16", (16, 16), (3, 3), 32, 32), 32),
    (benchmark.Layer("3x3 conv 32->32 @28", (28, 28), (3, 3), 32, 32), 32),
]

# Strided layers beside the suite's, for the phases of strided input
# gradients (the phase_few_taps option, and the 1x1 kernel's, against "shifted"):
# a ResNet-style 1x1 stride-2 shortcut and two more 3x3 stride-2 layers.
STRIDED = [
    benchmark.Layer("1x1 s2 conv 256->512 @56", (56, 56), (1, 1), 256, 512,
                    stride=2),
    benchmark.Layer("3x3 s2 conv 128->256 @28", (28, 28), (3, 3), 128, 256,
                    stride=2),
    benchmark.Layer("3x3 s2 conv 32->32 @32", (32, 32), (3, 3), 32, 32,
                    stride=2),
]

PASSES = ("forward", "input gradient", "kernel gradient")


def network_layers(name: str, batch: int) -> list[tuple[benchmark.Layer, int]]:
  """The distinct convolutions of a network of benchmark_models.py, as
  layers of the suite's kind, each at ``batch``; the name says how often
  the network has it."""
  import networks

  layers = []
  for spec in networks.conv_layers(networks.by_name(name), batch):
    spatial, window = spec["x"][1:-1], spec["w"][:-2]
    c_in, c_out, groups = spec["x"][-1], spec["w"][-1], spec["groups"]
    kind = "depthwise " if groups > 1 and groups == c_in else (
        f"g{groups} " if groups > 1 else "")
    stride = f" s{spec['stride']}" if spec["stride"] > 1 else ""
    layers.append((benchmark.Layer(
        f"{kind}{'x'.join(map(str, window))}{stride} {c_in}->{c_out} "
        f"@{'x'.join(map(str, spatial))} (x{spec['count']})", spatial, window,
        c_in, c_out, stride=spec["stride"],
        padding=tuple((p, p) for p in spec["padding"]), groups=groups),
                   batch))
  return layers


# XLA's YNNPACK convolutions off, for one compiled program: jax 0.10's
# default list of YNNPACK fusions less INDIVIDUAL_CONVOLUTION (compiler
# options take no "-" form, which XLA_FLAGS do).
EIGEN = {"xla_cpu_experimental_ynn_fusion_type":
         "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}

THRESHOLDS = {f.name for f in dataclasses.fields(jaxconv.Thresholds)}
OPTIONS = jaxconv.Policy.OPTIONS


@dataclasses.dataclass(frozen=True)
class Variant:
  """An algorithm, the policy it is traced under, and XLA's compiler
  options (``None``: the process's)."""

  algorithm: str
  policy: jaxconv.Policy
  compiler_options: dict | None = None


def _number(key, value):
  try:
    number = float(value)
  except ValueError:
    raise ValueError(f"--variant: {key} must be a number (or inf), got "
                     f"{value!r}") from None
  return int(number) if number.is_integer() else number


def parse_variant(text: str) -> Variant:
  """``"ALGORITHM[:SETTING=VALUE,...][/eigen]"`` -> a ``Variant`` (see the
  module's docstring)."""
  options = None
  if text.endswith("/eigen"):
    text, options = text[:-len("/eigen")], EIGEN
  name, _, rest = text.partition(":")
  if name not in jaxconv.ALGORITHMS:
    raise ValueError(f"--variant: {name!r} is not one of {jaxconv.ALGORITHMS}")
  policy = jaxconv.host_policy()
  settings = {}
  for item in filter(None, rest.split(",")):
    key, equals, value = item.partition("=")
    if not equals:
      raise ValueError(f"--variant: {item!r} is not SETTING=VALUE")
    if key == "preset":
      if value not in jaxconv.PRESETS:
        raise ValueError(f"--variant: preset must be one of "
                         f"{tuple(jaxconv.PRESETS)}, got {value!r}")
      policy = dataclasses.replace(
          jaxconv.PRESETS[value],
          xla_convolutions_in_ynnpack=policy.xla_convolutions_in_ynnpack,
          grown_convolutions_leave_ynnpack=(
              policy.grown_convolutions_leave_ynnpack))
    elif key in OPTIONS or key in THRESHOLDS:
      settings[key] = _number(key, value)
    else:
      raise ValueError(f"--variant: {key!r} is neither an option of the "
                       f"policy {OPTIONS} nor a threshold {sorted(THRESHOLDS)}")
  on = {k for k, v in settings.items() if k in OPTIONS and v}
  off = {k for k, v in settings.items() if k in OPTIONS and not v}
  policy = policy.replace(
      options=tuple((set(policy.options) | on) - off),
      thresholds={k: v for k, v in settings.items() if k in THRESHOLDS},
      **({"xla_convolutions_in_ynnpack": False} if options else {}))
  return Variant(name, policy, options)


@contextlib.contextmanager
def traced_under(variant: Variant):
  """Forces the variant's algorithm and policy while programs are traced."""
  with jaxconv.use_algorithm(variant.algorithm), jaxconv.use_policy(
      variant.policy):
    yield


def _conv_kwargs(layer):
  n = len(layer.spatial)
  return dict(window_strides=(layer.stride,) * n, padding=layer.padding,
              rhs_dilation=(layer.dilation,) * n,
              dimension_numbers=layer.layout(),
              feature_group_count=layer.groups)


def pass_programs(layer, batch, variant: Variant):
  """The rule's three convolutions, compiled under the variant, each with
  its arguments: ``{pass: (compiled, args)}``."""
  if layer.transpose:
    raise ValueError(f"{layer.name}: per-pass timing takes direct "
                     "convolutions; use --step for transposed layers")
  x_shape, w_shape = layer.shapes(batch)
  kw = _conv_kwargs(layer)
  x = jax.random.normal(jax.random.key(0), x_shape)
  w = jax.random.normal(jax.random.key(1), w_shape)
  y = lax.conv_general_dilated(x, w, **kw)
  fns = {
      "forward": (lambda x, w: jaxconv.conv_general_dilated(x, w, **kw),
                  (x, w)),
      "input gradient": (lambda ct, w: jaxconv.conv_input_grad(
          ct, w, x_shape, **kw), (y, w)),
      "kernel gradient": (lambda x, ct: jaxconv.conv_kernel_grad(
          x, ct, w_shape, **kw), (x, y)),
  }
  with traced_under(variant):
    compiled = {name: (jax.jit(f, compiler_options=variant.compiler_options)
                       .lower(*args).compile(), args)
                for name, (f, args) in fns.items()}
  for f, args in compiled.values():
    jax.block_until_ready(f(*args))
  return compiled


def step_program(layer, batch, variant: Variant):
  """The compiled forward+backward under the variant, with its arguments."""
  x_shape, w_shape = layer.shapes(batch)
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], x_shape, jnp.float32)
  w = jax.random.normal(keys[1], w_shape, jnp.float32) * 0.1
  ours, theirs = benchmark.functions(layer)
  out_shape = jax.eval_shape(theirs, x, w).shape
  cotangent = jax.random.normal(keys[2], out_shape, jnp.float32)
  step = jax.jit(functools.partial(benchmark.forward_backward, ours),
                 compiler_options=variant.compiler_options)
  with traced_under(variant):
    compiled = step.lower(x, w, cotangent).compile()
  args = (x, w, cotangent)
  jax.block_until_ready(compiled(*args))
  return compiled, args


def interleaved(programs, repeats):
  """Each ``(compiled, args)`` timed round by round: ``(median seconds,
  median minor page faults)`` per program."""
  times = timing.interleaved(
      {i: functools.partial(f, *args) for i, (f, args) in enumerate(programs)},
      repeats, warmup=0)
  return ([times[i].seconds for i in range(len(programs))],
          [times[i].faults for i in range(len(programs))])


def row(label, seconds, extra=""):
  cells = " / ".join(f"{s * 1e3:.1f}" for s in seconds)
  ratios = " / ".join(f"{s / seconds[0]:.2f}" for s in seconds[1:])
  return f"{label}  {cells}" + (f"  ratio {ratios}" if ratios else "") + extra


def add_selection_arguments(parser, repeats=7):
  """--batch, --repeats and --only, shared with benchmark_chunks.py."""
  parser.add_argument("--batch", type=int, action="append",
                      help="batch sizes (default 8 and 32)")
  parser.add_argument("--repeats", type=int, default=repeats)
  parser.add_argument("--only", default=None,
                      help="run the layers whose name contains this text")


def chosen_under(variant: Variant, layer, batch) -> str:
  """The algorithms the variant gives the layer: forward / input grad /
  kernel grad."""
  with traced_under(variant):
    return benchmark.chosen_algorithms(layer, batch)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variant", action="append",
                      help="ALGORITHM[:SETTING=VALUE,...][/eigen]; "
                      "several, the first is the reference (default: xla, "
                      "auto)")
  parser.add_argument("--step", action="store_true",
                      help="time the whole forward+backward, not each pass")
  parser.add_argument("--small", action="store_true",
                      help="the small 3x3 layers of the folding threshold, "
                      "each at its own batch")
  parser.add_argument("--strided", action="store_true",
                      help="strided layers beside the suite's (a 1x1 "
                      "shortcut, two 3x3 stride-2 layers)")
  parser.add_argument("--network", default=None,
                      help="the distinct convolutions of a network of "
                      "benchmark_models.py (resnet18, mobilenet, ...)")
  add_selection_arguments(parser)
  args = parser.parse_args(argv)
  try:
    variants = [parse_variant(v) for v in args.variant or ["xla", "auto"]]
  except ValueError as error:
    parser.error(str(error))
  if args.network:
    cases = [case for batch in args.batch or [32]
             for case in network_layers(args.network, batch)]
  elif args.small:
    cases = [(layer, batch) for layer, batch in SMALL
             if not args.batch or batch in args.batch]
  else:
    cases = [(layer, batch)
             for layer in (STRIDED if args.strided else benchmark.SUITE)
             for batch in args.batch or [8, 32]
             if args.step or not layer.transpose]
  if args.only:
    cases = [(layer, b) for layer, b in cases if args.only in layer.name]
  names = " / ".join(args.variant or ["xla", "auto"])
  print(f"{benchmark.machine()}; float32, median of "
        f"{args.repeats}; ms {'forward+backward' if args.step else 'per pass'}"
        f": {names}")
  for layer, batch in cases:
    label = f"{layer.name:<30} b{batch:<3}"
    if args.step:
      programs = [step_program(layer, batch, v) for v in variants]
      memory = [f.memory_analysis() for f, _ in programs]
      temp = " / ".join(f"{m.temp_size_in_bytes / 2**20:.1f}"
                        if m is not None else "-" for m in memory)
      chosen = [chosen_under(v, layer, batch) for v in variants]
      seconds, faults = interleaved(programs, args.repeats)
      print(row(label, seconds, f"  temp MB {temp}  faults " + " / ".join(
          f"{n:.0f}" for n in faults) + f"  ({' | '.join(chosen)})"),
                flush=True)
      continue
    compiled = [pass_programs(layer, batch, v) for v in variants]
    chosen = [chosen_under(v, layer, batch).split("/") for v in variants]
    for index, name in enumerate(PASSES):
      seconds, _ = interleaved([c[name] for c in compiled], args.repeats)
      picked = " / ".join(c[index] for c in chosen)
      print(row(f"{label} {name:<16}", seconds, f"  ({picked})"), flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
