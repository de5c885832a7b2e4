"""Benchmark: jaxconv's convolutions against jax.grad of lax (and PyTorch).

For each layer of the suite and each batch size, in one run and interleaved
(``timing.interleaved``): compile time, forward time and forward+backward
time of

* jaxconv (the host's policy; the chosen algorithms are listed),
* ``jax.grad`` of ``lax.conv_general_dilated`` / ``lax.conv_transpose``,
* PyTorch on the CPU, when ``torch`` is importable,

plus GFLOP/s of the forward+backward, the temporary memory XLA reports for
the compiled forward+backward, and the minor page faults per forward+backward
call. The forward+backward returns the output with both gradients, as a
training step does. Ratios are jaxconv / lax (below 1: jaxconv is faster).

    python experiments/benchmark.py                  # the whole suite
    python experiments/benchmark.py --record         # ... as this machine's record
    python experiments/benchmark.py --quick          # a few small layers
    python experiments/benchmark.py --only depthwise --batch 8
    python experiments/benchmark.py --keep-freed-memory   # glibc keeps freed memory
    python experiments/benchmark.py --no-ynnpack-convolutions  # XLA's Eigen kernel

``--record`` writes the table to ``docs/benchmarks/layers-<machine>.md`` (with
the command and the machine) and the chart to
``docs/figures/benchmark-layers-<machine>.png``, where ``<machine>`` is the
host's CPU class (``timing.cpu_class``), with ``-eigen`` for XLA's Eigen
kernel and ``-policy-<name>`` under ``--policy``.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import datetime
import functools
import json
import math
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jaxconv

import timing

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Layer:
  name: str
  spatial: tuple[int, ...]
  window: tuple[int, ...]
  c_in: int
  c_out: int
  stride: int = 1
  padding: str = "SAME"
  dilation: int = 1
  groups: int = 1
  transpose: bool = False

  def shapes(self, batch):
    x = (batch,) + self.spatial + (self.c_in,)
    if self.transpose:
      w = self.window + (self.c_in, self.c_out)
    else:
      w = self.window + (self.c_in // self.groups, self.c_out)
    return x, w

  def layout(self):
    letters = "DHW"[-len(self.spatial):]
    return "N" + letters + "C", letters + "IO", "N" + letters + "C"


SUITE = [
    Layer("1x1 conv 256->64 @56", (56, 56), (1, 1), 256, 64),
    Layer("3x3 conv 64->64 @56", (56, 56), (3, 3), 64, 64),
    Layer("3x3 s2 conv 64->128 @56", (56, 56), (3, 3), 64, 128, stride=2),
    Layer("depthwise 3x3 128 @28", (28, 28), (3, 3), 128, 128, groups=128),
    Layer("3x3 d2 conv 64->64 @28", (28, 28), (3, 3), 64, 64, dilation=2),
    Layer("7x7 s2 stem 3->64 @224", (224, 224), (7, 7), 3, 64, stride=2),
    Layer("grouped 3x3 g4 128->128 @28", (28, 28), (3, 3), 128, 128,
          groups=4),
    Layer("1-D conv k5 64->64 @256", (256,), (5,), 64, 64),
    Layer("3-D conv 3x3x3 16->32 @16", (16, 16, 16), (3, 3, 3), 16, 32),
    Layer("transposed 4x4 s2 64->32 @28", (28, 28), (4, 4), 64, 32,
          stride=2, transpose=True),
]
QUICK = [
    Layer("1x1 conv 64->32 @16", (16, 16), (1, 1), 64, 32),
    Layer("depthwise 3x3 32 @16", (16, 16), (3, 3), 32, 32, groups=32),
    Layer("3x3 conv 16->16 @16", (16, 16), (3, 3), 16, 16),
]


def functions(layer: Layer):
  """(jaxconv forward, lax forward) for one layer."""
  n = len(layer.spatial)
  layout = layer.layout()
  if layer.transpose:
    ours = lambda x, w: jaxconv.conv_transpose(
        x, w, (layer.stride,) * n, layer.padding, dimension_numbers=layout)
    theirs = lambda x, w: lax.conv_transpose(
        x, w, (layer.stride,) * n, layer.padding, dimension_numbers=layout)
  else:
    ours = lambda x, w: jaxconv.conv(
        x, w, stride=layer.stride, padding=layer.padding,
        dilation=layer.dilation, groups=layer.groups)
    theirs = lambda x, w: lax.conv_general_dilated(
        x, w, (layer.stride,) * n, layer.padding,
        rhs_dilation=(layer.dilation,) * n, dimension_numbers=layout,
        feature_group_count=layer.groups)
  return ours, theirs


def chosen_algorithms(layer: Layer, batch: int) -> str:
  """The algorithms jaxconv's policy picks for the layer's training step:
  forward / input gradient / kernel gradient."""
  x_shape, w_shape = layer.shapes(batch)
  x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
  w = jax.ShapeDtypeStruct(w_shape, jnp.float32)
  ours, _ = functions(layer)
  step = jax.grad(lambda x, w: jnp.sum(ours(x, w)), (0, 1))
  return "/".join(c.algorithm for c in jaxconv.chosen_algorithms(step, x, w))


def flops(layer: Layer, batch: int, out_shape) -> float:
  """Multiply-adds x 2 of the forward; the backward is twice that."""
  x_shape, w_shape = layer.shapes(batch)
  if layer.transpose:
    per_input = math.prod(layer.window) * layer.c_out
    return 2.0 * math.prod(x_shape[:-1]) * layer.c_in * per_input
  per_output = math.prod(layer.window) * (layer.c_in // layer.groups)
  return 2.0 * math.prod(out_shape) * per_output


def torch_functions(layer: Layer, batch: int):
  try:
    import torch
  except ImportError:
    return None
  n = len(layer.spatial)
  x_shape, w_shape = layer.shapes(batch)
  x = torch.randn((batch, layer.c_in) + layer.spatial, requires_grad=True)
  conv = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d,
          3: torch.nn.functional.conv3d}[n]
  conv_t = {1: torch.nn.functional.conv_transpose1d,
            2: torch.nn.functional.conv_transpose2d,
            3: torch.nn.functional.conv_transpose3d}[n]
  if layer.transpose:
    w = torch.randn((layer.c_in, layer.c_out) + layer.window,
                    requires_grad=True)
    pad = (max(layer.window[0] - layer.stride, 0) + 1) // 2
    forward = lambda: conv_t(x, w, stride=layer.stride, padding=pad)
  else:
    w = torch.randn((layer.c_out, layer.c_in // layer.groups) + layer.window,
                    requires_grad=True)
    forward = lambda: conv(x, w, stride=layer.stride, padding=(
        "same" if layer.stride == 1 else tuple(
            (layer.dilation * (k - 1)) // 2 for k in layer.window)),
        dilation=layer.dilation, groups=layer.groups)

  def forward_only():
    with torch.no_grad():
      forward()

  with torch.no_grad():
    cotangent = torch.randn_like(forward())

  def forward_backward():
    y = forward()
    y.backward(cotangent)
    x.grad = None
    w.grad = None

  return forward_only, forward_backward


def keep_freed_memory() -> bool:
  """Tells glibc's malloc to keep freed memory for reuse; whether it could.

  By default each call of a compiled program maps its large temporary
  buffers afresh and faults every page in again (docs/performance.md,
  "Memory"). This sets what ``MALLOC_MMAP_THRESHOLD_=1000000000
  MALLOC_TRIM_THRESHOLD_=2000000000 MALLOC_ARENA_MAX=1`` would: requests up
  to 1 GB come from the heap, which is given back to the system only when
  more than 2 GB at its top are free, and every thread allocates from the
  main heap (a thread's own heap is at most 64 MiB, and a larger request is
  mapped afresh whatever the threshold). It applies to the whole process,
  PyTorch included, and must run before the first computation starts XLA's
  threads.
  """
  try:
    mallopt = ctypes.CDLL("libc.so.6").mallopt
  except (OSError, AttributeError):
    return False
  m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
  settings = ((m_mmap_threshold, 1_000_000_000),
              (m_trim_threshold, 2_000_000_000), (m_arena_max, 1))
  return all(mallopt(option, value) == 1 for option, value in settings)


# XLA's CPU backend hands 2-D convolutions to YNNPACK by default (jax 0.10);
# this turns that off for the whole process, lax and jaxconv alike, so that
# XLA's kernel is its Eigen one (docs/performance.md, "XLA's two CPU kernels").
NO_YNNPACK_CONVOLUTIONS = (
    "--xla_cpu_experimental_ynn_fusion_type="
    "-LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION")


def no_ynnpack_convolutions() -> bool:
  """Adds ``NO_YNNPACK_CONVOLUTIONS`` to ``XLA_FLAGS``; whether XLA took it
  (it reads the variable once, when the first computation starts it)."""
  flags = os.environ.get("XLA_FLAGS", "")
  if NO_YNNPACK_CONVOLUTIONS not in flags.split():
    os.environ["XLA_FLAGS"] = (flags + " " + NO_YNNPACK_CONVOLUTIONS).strip()
  return xla_kernel() == "eigen"


def forward_backward(f, x, w, cotangent):
  """The output and both gradients for a given cotangent, as in training.

  The output is returned: a convolution is linear, so its gradients do not
  need it, and a step that returned only the gradients (``jax.grad`` of
  ``sum(f(x, w) * cotangent)``) would let XLA drop the forward pass. The
  cotangent is an argument, with random values: closed over, it would be a
  constant of the compiled program, and one of all ones (``jnp.ones``, as
  an earlier version used) lets XLA simplify the gradients, which a
  training step, whose cotangent comes from the loss, never allows.
  """
  y, pullback = jax.vjp(f, x, w)
  return y, pullback(cotangent)


def measure(layer: Layer, batch: int, repeats: int, use_torch: bool) -> dict:
  x_shape, w_shape = layer.shapes(batch)
  key_x, key_w, key_g = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(key_x, x_shape, jnp.float32)
  w = jax.random.normal(key_w, w_shape, jnp.float32) * 0.1
  ours, theirs = functions(layer)
  out_shape = jax.eval_shape(theirs, x, w).shape
  cotangent = jax.random.normal(key_g, out_shape, jnp.float32)
  row = dict(layer=layer.name, batch=batch,
             algorithms=chosen_algorithms(layer, batch))
  contenders = {}
  for side, f in (("jaxconv", ours), ("lax", theirs)):
    forward = timing.compile_program(f, x, w)
    step = timing.compile_program(functools.partial(forward_backward, f), x,
                                  w, cotangent)
    row[f"{side}_compile_s"] = step.compile_seconds
    row[f"{side}_temp_mb"] = (step.temp_bytes / 2**20
                              if step.temp_bytes is not None else None)
    contenders[f"{side}_fwd"] = functools.partial(forward, x, w)
    contenders[f"{side}_fwdbwd"] = functools.partial(step, x, w, cotangent)
  torch_fns = torch_functions(layer, batch) if use_torch else None
  if torch_fns:
    contenders["torch_fwd"], contenders["torch_fwdbwd"] = torch_fns
  times = timing.interleaved(contenders, repeats,
                             apart=lambda name: name.startswith("torch"))
  for label in ("jaxconv_fwd", "lax_fwd", "jaxconv_fwdbwd", "lax_fwdbwd",
                "torch_fwd", "torch_fwdbwd"):
    row[f"{label}_ms"] = (times[label].seconds * 1e3 if label in times
                          else None)
  for side in ("jaxconv", "lax"):
    row[f"{side}_faults"] = times[f"{side}_fwdbwd"].faults
  work = 3 * flops(layer, batch, out_shape)
  row["jaxconv_gflops"] = work / (row["jaxconv_fwdbwd_ms"] * 1e-3) / 1e9
  row["lax_gflops"] = work / (row["lax_fwdbwd_ms"] * 1e-3) / 1e9
  row["ratio_fwd"] = row["jaxconv_fwd_ms"] / row["lax_fwd_ms"]
  row["ratio_fwdbwd"] = row["jaxconv_fwdbwd_ms"] / row["lax_fwdbwd_ms"]
  if row["torch_fwdbwd_ms"]:
    row["ratio_torch_fwdbwd"] = row["jaxconv_fwdbwd_ms"] / row["torch_fwdbwd_ms"]
  return row


def xla_kernel() -> str:
  """Which kernel XLA runs 2-D convolutions with in this process."""
  return ("ynnpack" if jaxconv.host_policy().xla_convolutions_in_ynnpack
          else "eigen")


def machine(policy: str | None = None) -> str:
  """The machine, and the jaxconv policy the measurement used."""
  name = policy or f"{jaxconv.host_policy().name} (the host's)"
  return f"{timing.machine()}, jaxconv policy {name}"


def record_name(policy: str | None = None) -> str:
  """The name of this machine's record: its CPU class, ``-eigen`` where XLA
  runs 2-D convolutions on its Eigen kernel, and the policy where it is not
  the host's."""
  suffix = "" if xla_kernel() == "ynnpack" else "-eigen"
  if policy:
    suffix += f"-policy-{policy}"
  return f"{timing.cpu_class()}{suffix}"


def markdown(rows, matmul_rate, args, command: str) -> str:
  head = ("| layer | batch | algorithms (fwd/dx/dw) | jaxconv fwd ms | lax fwd ms "
          "| jaxconv fwd+bwd ms | lax fwd+bwd ms | torch fwd+bwd ms "
          "| ratio fwd | ratio fwd+bwd | vs torch | jaxconv GFLOP/s "
          "| compile s (jaxconv/lax) | temp MB (jaxconv/lax) |")
  lines = [head, "|" + " --- |" * (head.count("|") - 1)]
  for r in rows:
    torch_ms = f"{r['torch_fwdbwd_ms']:.1f}" if r["torch_fwdbwd_ms"] else "-"
    vs_torch = (f"{r['ratio_torch_fwdbwd']:.2f}"
                if r.get("ratio_torch_fwdbwd") else "-")
    lines.append(
        f"| {r['layer']} | {r['batch']} | {r['algorithms']} "
        f"| {r['jaxconv_fwd_ms']:.1f} | {r['lax_fwd_ms']:.1f} "
        f"| {r['jaxconv_fwdbwd_ms']:.1f} | {r['lax_fwdbwd_ms']:.1f} "
        f"| {torch_ms} | {r['ratio_fwd']:.2f} | {r['ratio_fwdbwd']:.2f} "
        f"| {vs_torch} | {r['jaxconv_gflops']:.1f} "
        f"| {r['jaxconv_compile_s']:.2f}/{r['lax_compile_s']:.2f} "
        f"| {r['jaxconv_temp_mb']:.1f}/{r['lax_temp_mb']:.1f} |")
  ratios = {}
  for r in rows:
    ratios.setdefault(r["batch"], []).append(r["ratio_fwdbwd"])
  summary = [f"- batch {b}: geometric mean of fwd+bwd ratios (jaxconv / lax) "
             f"{math.exp(np.mean(np.log(v))):.2f} over {len(v)} layers"
             for b, v in sorted(ratios.items())]
  kernel = ("YNNPACK's (XLA's default)" if xla_kernel() == "ynnpack" else
            "Eigen's (YNNPACK's turned off, --no-ynnpack-convolutions or "
            "XLA_FLAGS)")
  info = [
      f"Measured {datetime.date.today()} on {machine(args.policy)}.",
      "",
      f"Command: `{command}`",
      "",
      f"float32, median of {args.repeats} interleaved rounds (PyTorch in "
      f"rounds of its own); matmul rate "
      f"(2048² float32) {matmul_rate:.0f} GFLOP/s; XLA's 2-D convolutions: "
      f"{kernel}."
      + (" glibc told to keep freed memory (--keep-freed-memory)."
         if getattr(args, "keep_freed_memory", False) else ""),
  ]
  return "\n".join([*info, "", *lines, "", *summary])


def plot(rows, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  labels = [f"{r['layer']} (b{r['batch']})" for r in rows]
  ratios = [1.0 / r["ratio_fwdbwd"] for r in rows]
  fig, ax = plt.subplots(figsize=(9, 0.35 * len(rows) + 1.5))
  ax.barh(labels, ratios, color=["tab:green" if v >= 1 else "tab:red"
                                 for v in ratios])
  ax.axvline(1.0, color="black", linewidth=0.8)
  ax.set_xscale("log")
  ax.set_xlabel("speed-up of jaxconv over jax.grad of lax (forward+backward)")
  ax.set_title(f"{timing.cpu_model()}, {timing.cpu_class()}", fontsize=9)
  ax.invert_yaxis()
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, action="append",
                      help="batch sizes (default 8 and 32)")
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--only", default=None,
                      help="run the layers whose name contains this text")
  parser.add_argument("--no-torch", action="store_true")
  parser.add_argument("--keep-freed-memory", action="store_true",
                      help="tell glibc's malloc to keep freed memory "
                      "(no fresh page faults per call)")
  parser.add_argument("--no-ynnpack-convolutions", action="store_true",
                      help="XLA's Eigen kernel for 2-D convolutions, not "
                      "YNNPACK's (for lax and jaxconv alike)")
  parser.add_argument("--policy", default=None,
                      help="a jaxconv policy preset to trace jaxconv's "
                      "programs under (default: the host's)")
  parser.add_argument("--record", action="store_true",
                      help="write this machine's record: the table to "
                      "docs/benchmarks/layers-<machine>.md, the chart to "
                      "docs/figures/benchmark-layers-<machine>.png")
  parser.add_argument("--markdown", default=None)
  parser.add_argument("--json", default=None)
  parser.add_argument("--plot", default=None)
  args = parser.parse_args(argv)
  command = "python experiments/benchmark.py " + " ".join(
      sys.argv[1:] if argv is None else map(str, argv))
  if args.keep_freed_memory and not keep_freed_memory():
    parser.error("--keep-freed-memory needs glibc's mallopt")
  if args.no_ynnpack_convolutions and not no_ynnpack_convolutions():
    parser.error("--no-ynnpack-convolutions: XLA still hands 2-D "
                 "convolutions to YNNPACK (was it started already?)")
  if args.policy and args.policy not in jaxconv.PRESETS:
    parser.error(f"--policy must be one of {tuple(jaxconv.PRESETS)}")
  if args.record:
    name = record_name(args.policy)
    args.markdown = args.markdown or ROOT / "docs" / "benchmarks" / (
        f"layers-{name}.md")
    args.plot = args.plot or ROOT / "docs" / "figures" / (
        f"benchmark-layers-{name}.png")
  layers = QUICK if args.quick else SUITE
  if args.only:
    layers = [layer for layer in layers if args.only in layer.name]
  batches = args.batch or ([2] if args.quick else [8, 32])
  rows = []
  for batch in batches:
    for layer in layers:
      with jaxconv.use_policy(args.policy or jaxconv.host_policy()):
        row = measure(layer, batch, args.repeats, not args.no_torch)
      rows.append(row)
      torch_ms = (f"{row['torch_fwdbwd_ms']:8.1f}" if row["torch_fwdbwd_ms"]
                  else "       -")
      print(f"{layer.name:<32} b{batch:<3} {row['algorithms']:<24} "
            f"fwd+bwd jaxconv {row['jaxconv_fwdbwd_ms']:8.1f} ms  lax "
            f"{row['lax_fwdbwd_ms']:8.1f} ms  torch {torch_ms} ms  "
            f"ratio {row['ratio_fwdbwd']:.2f}  page faults "
            f"{row['jaxconv_faults']:.0f} / {row['lax_faults']:.0f}",
            flush=True)
  rate = timing.matmul_gflops(args.repeats)
  table = markdown(rows, rate, args, command)
  print()
  print(table)
  if args.markdown:
    Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
    with open(args.markdown, "w") as f:
      f.write(f"# Layers on {timing.cpu_model()}\n\n" if args.record else "")
      f.write(table + "\n")
      if args.record:
        f.write(f"\n![Speed-up over jax.grad of lax](../figures/"
                f"{Path(args.plot).name})\n")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(rows=rows, matmul_gflops=rate,
                     machine=machine(args.policy),
                     xla_convolutions=xla_kernel()), f, indent=1)
  if args.plot:
    plot(rows, args.plot)
  return 0


if __name__ == "__main__":
  sys.exit(main())
