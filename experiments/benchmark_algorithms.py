"""Algorithms side by side: a layer's convolutions under chosen algorithms.

The measurements behind the CPU policy (``choose_algorithm`` in
``jaxconv/_algorithms.py``, documented in docs/performance.md). Each
*variant* is an algorithm name, forced for every convolution that supports
it (``auto`` is the default policy), optionally with constants of
``jaxconv/_algorithms.py`` set while the programs are traced::

    xla                          XLA's kernel everywhere
    folded                       every convolution folded, down to 1-D
    auto                         the default policy
    auto:FOLD_MIN_ELEMENTS=inf   the default policy without "folded"
    chunked:CHUNK_SAMPLES=2,CHUNK_ELEMENTS=inf   chunks of two samples
    xla/eigen                    XLA's kernel, its Eigen one (below)
    auto/eigen                   the default policy where XLA's kernel is Eigen's

A variant ending in ``/eigen`` is compiled with XLA's YNNPACK convolutions
turned off (``compiler_options``, as ``NO_YNNPACK_CONVOLUTIONS`` of
benchmark.py does for a whole process), so that XLA's 2-D convolutions are
its Eigen kernel's, and the policy is told so (``XLA_YNNPACK_CONVOLUTIONS=0``):
both kernels side by side in one run.

Two modes, both interleaved round by round in alternating order, medians in
milliseconds, with each variant's ratio to the first:

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
        --variant auto:FOLD_MIN_ELEMENTS=inf --variant auto
    python experiments/benchmark_algorithms.py --step --small \\
        --variant xla --variant folded       # the folding threshold's layers
    python experiments/benchmark_algorithms.py --strided \\
        --variant auto:PHASE_FEW_TAPS=0 --variant auto   # strided layers
    python experiments/benchmark_algorithms.py --variant xla \\
        --variant xla/eigen --variant auto --variant auto/eigen  # both kernels
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import resource
import statistics
import time

import jax
import jax.numpy as jnp
from jax import lax

import benchmark
import jaxconv
from jaxconv import _algorithms

# Small dense 3x3 layers, each at the batch it was measured at, for the size
# and the feature count from which the policy folds a 2-D convolution
# (FOLD_MIN_ELEMENTS, FOLD_MIN_FEATURES): 16 to 64 features, 65 536 to
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
# gradients (PHASE_FEW_TAPS, and the 1x1 kernel's, against "shifted"):
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


# XLA's YNNPACK convolutions off, for one compiled program: jax 0.10's
# default list of YNNPACK fusions less INDIVIDUAL_CONVOLUTION (compiler
# options take no "-" form, which XLA_FLAGS do).
EIGEN = {"xla_cpu_experimental_ynn_fusion_type":
         "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


def parse_variant(text: str):
  """``"NAME[:CONST=VALUE,...][/eigen]"`` -> (algorithm, {constant: value},
  XLA compiler options or None)."""
  options = None
  if text.endswith("/eigen"):
    text, options = text[:-len("/eigen")], EIGEN
  name, _, rest = text.partition(":")
  _algorithms.check_algorithm(name, "--variant")
  constants = {}
  for item in filter(None, rest.split(",")):
    key, equals, value = item.partition("=")
    if not equals or not hasattr(_algorithms, key) or not key.isupper():
      raise ValueError(f"--variant: {item!r} is not CONSTANT=VALUE naming a "
                       "constant of jaxconv/_algorithms.py")
    try:
      number = float(value)
    except ValueError:
      raise ValueError(f"--variant: {key} must be a number (or inf), got "
                       f"{value!r}") from None
    constants[key] = int(number) if number.is_integer() else number
  if options is not None:
    constants.setdefault("XLA_YNNPACK_CONVOLUTIONS", 0)
  return name, constants, options


@contextlib.contextmanager
def policy(algorithm: str, constants: dict):
  """Forces ``algorithm`` and sets ``constants`` while programs are traced."""
  saved = {key: getattr(_algorithms, key) for key in constants}
  for key, value in constants.items():
    setattr(_algorithms, key, value)
  try:
    with jaxconv.use_algorithm(algorithm):
      yield
  finally:
    for key, value in saved.items():
      setattr(_algorithms, key, value)


def _conv_kwargs(layer):
  n = len(layer.spatial)
  return dict(window_strides=(layer.stride,) * n, padding=layer.padding,
              rhs_dilation=(layer.dilation,) * n,
              dimension_numbers=layer.layout(),
              feature_group_count=layer.groups)


def pass_programs(layer, batch, algorithm, constants=None, options=None):
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
  with policy(algorithm, constants or {}):
    compiled = {name: (jax.jit(f, compiler_options=options)
                       .lower(*args).compile(), args)
                for name, (f, args) in fns.items()}
  for f, args in compiled.values():
    jax.block_until_ready(f(*args))
  return compiled


def step_program(layer, batch, algorithm, constants=None, options=None):
  """The compiled forward+backward under the variant, with its arguments."""
  x_shape, w_shape = layer.shapes(batch)
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], x_shape, jnp.float32)
  w = jax.random.normal(keys[1], w_shape, jnp.float32) * 0.1
  ours, theirs = benchmark.functions(layer)
  out_shape = jax.eval_shape(theirs, x, w).shape
  cotangent = jax.random.normal(keys[2], out_shape, jnp.float32)
  step = jax.jit(functools.partial(benchmark.forward_backward, ours),
                 compiler_options=options)
  with policy(algorithm, constants or {}):
    compiled = step.lower(x, w, cotangent).compile()
  args = (x, w, cotangent)
  jax.block_until_ready(compiled(*args))
  return compiled, args


def interleaved(programs, repeats, faults=None):
  """Median seconds of each ``(compiled, args)``, timed round by round; the
  median minor page faults per call are appended to ``faults`` if given."""
  times = [[] for _ in programs]
  counts = [[] for _ in programs]
  order = list(range(len(programs)))
  for round_index in range(repeats):
    for i in (order if round_index % 2 else order[::-1]):
      f, args = programs[i]
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      start = time.perf_counter()
      jax.block_until_ready(f(*args))
      times[i].append(time.perf_counter() - start)
      counts[i].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                       - before)
  if faults is not None:
    faults.extend(statistics.median(c) for c in counts)
  return [statistics.median(t) for t in times]


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


def chosen_under(variant, layer, batch) -> str:
  """The algorithms the variant gives the layer: forward / input grad /
  kernel grad."""
  with policy(*variant[:2]):
    return benchmark.chosen_algorithms(layer, batch)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variant", action="append",
                      help="ALGORITHM[:CONSTANT=VALUE,...][/eigen]; "
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
  add_selection_arguments(parser)
  args = parser.parse_args(argv)
  try:
    variants = [parse_variant(v) for v in args.variant or ["xla", "auto"]]
  except ValueError as error:
    parser.error(str(error))
  if args.small:
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
  print(f"{benchmark.machine()}; jax {jax.__version__}, "
        f"{jax.default_backend()}, float32, median of "
        f"{args.repeats}; ms {'forward+backward' if args.step else 'per pass'}"
        f": {names}")
  for layer, batch in cases:
    label = f"{layer.name:<30} b{batch:<3}"
    if args.step:
      programs = [step_program(layer, batch, *v) for v in variants]
      memory = [f.memory_analysis() for f, _ in programs]
      temp = " / ".join(f"{m.temp_size_in_bytes / 2**20:.1f}"
                        if m is not None else "-" for m in memory)
      chosen = [chosen_under(v, layer, batch) for v in variants]
      faults = []
      seconds = interleaved(programs, args.repeats, faults)
      print(row(label, seconds, f"  temp MB {temp}  faults " + " / ".join(
          f"{n:.0f}" for n in faults) + f"  ({' | '.join(chosen)})"),
                flush=True)
      continue
    compiled = [pass_programs(layer, batch, *v) for v in variants]
    chosen = [chosen_under(v, layer, batch).split("/") for v in variants]
    for index, name in enumerate(PASSES):
      seconds = interleaved([c[name] for c in compiled], args.repeats)
      picked = " / ".join(c[index] for c in chosen)
      print(row(f"{label} {name:<16}", seconds, f"  ({picked})"), flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
