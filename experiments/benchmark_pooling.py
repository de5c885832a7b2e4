"""Times jaxconv pooling against `jax.grad` of `lax.reduce_window` (and torch).

For each benchmark layer the script times, interleaved round by round so that
machine noise hits every contender alike:

* forward: the jitted pooling of an input;
* forward+backward: the jitted VJP (output and input gradient for a fixed
  random cotangent),

for jaxconv, Flax (`flax.linen.max_pool`/`avg_pool`, i.e. `lax.reduce_window`
differentiated by JAX: `SelectAndScatter` for max), and PyTorch on the CPU if
it is importable. Every contender is warmed up first; each round times one
call of each (in an order rotated from round to round) and blocks until the
result is ready; the median over the rounds is reported in milliseconds,
with the ratio `reference / jaxconv` (above 1: jaxconv is faster).

The column `floor` (forward+backward only) is the memory-traffic floor of
the pass, measured in the same rounds: a jitted `a + 1` over the input and
the cotangent, which moves exactly the bytes the pass must move at least
(read x and ct, write dx and y). `lax / floor` is then the largest speed-up
over lax that any implementation could reach on this machine.

The last two columns are the median minor page faults per call of jaxconv
and of flax/lax (``getrusage``): on glibc a large temporary buffer is mapped
afresh on every call, and each 4 KiB page faulted in costs time.

Usage:
    python experiments/benchmark_pooling.py [--reps 15] [--dtype float32]
    python experiments/benchmark_pooling.py --record   # this machine's record

``--record`` writes the table, with the command and the machine, to
``docs/benchmarks/pooling-<machine>.md`` (``<machine>``: the host's CPU
class).
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jaxconv

import timing

try:
  import torch
except ImportError:  # torch is optional.
  torch = None

SHAPE = (32, 56, 56, 64)

# (name, jaxconv kind, window, strides, torch padding giving the same output
# size; torch has only symmetric padding, so SAME's (0, 1) becomes 1 there).
LAYERS = [
    ("max 2x2/2 SAME", "max", (2, 2), (2, 2), 0),
    ("max 3x3/2 SAME", "max", (3, 3), (2, 2), 1),
    ("avg 2x2/2 SAME", "avg", (2, 2), (2, 2), 0),
    ("avg 3x3/2 SAME", "avg", (3, 3), (2, 2), 1),
]


def _lax_pool(kind, window, strides):
  """Flax's pooling: `lax.reduce_window` with SAME padding, batch and features
  untouched."""
  dims = (1,) + window + (1,)
  steps = (1,) + strides + (1,)
  if kind == "max":
    return lambda x: lax.reduce_window(x, -jnp.inf, lax.max, dims, steps,
                                       "SAME")
  size = float(np.prod(window))
  return lambda x: lax.reduce_window(x, 0.0, lax.add, dims, steps,
                                     "SAME") / size


def _jaxconv_pool(kind, window, strides):
  if kind == "max":
    return lambda x: jaxconv.max_pool(x, window, strides, "SAME")
  return lambda x: jaxconv.avg_pool(x, window, strides, "SAME")


def _flax_pool(kind, window, strides):
  try:
    from flax import linen
  except ImportError:
    return _lax_pool(kind, window, strides)
  if kind == "max":
    return lambda x: linen.max_pool(x, window, strides, "SAME")
  return lambda x: linen.avg_pool(x, window, strides, "SAME")


def _jax_contenders(pool, x, cotangent):
  forward = jax.jit(pool)

  @jax.jit
  def forward_backward(x, cotangent):
    y, vjp = jax.vjp(pool, x)
    return y, vjp(cotangent)[0]

  return (lambda: forward(x)), (lambda: forward_backward(x, cotangent))


def _torch_contenders(kind, window, strides, padding, x, cotangent):
  xt = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous()
  if kind == "max":
    pool = lambda t: torch.nn.functional.max_pool2d(t, window, strides,
                                                   padding)
  else:
    pool = lambda t: torch.nn.functional.avg_pool2d(t, window, strides,
                                                   padding)
  with torch.no_grad():
    out_shape = pool(xt).shape
  gt = torch.from_numpy(np.array(cotangent)).permute(0, 3, 1, 2)
  gt = gt[:, :, :out_shape[2], :out_shape[3]].contiguous()

  def forward():
    with torch.no_grad():
      return pool(xt)

  def forward_backward():
    leaf = xt.detach().requires_grad_(True)
    y = pool(leaf)
    y.backward(gt)
    return y, leaf.grad

  return forward, forward_backward


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reps", type=int, default=15)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--no-torch", action="store_true")
  parser.add_argument("--record", action="store_true",
                      help="write the table to docs/benchmarks/"
                      "pooling-<machine>.md")
  args = parser.parse_args(argv)
  use_torch = torch is not None and not args.no_torch
  command = "python experiments/benchmark_pooling.py " + " ".join(
      sys.argv[1:] if argv is None else map(str, argv))

  key_x, key_g = jax.random.split(jax.random.PRNGKey(0))
  dtype = jnp.dtype(args.dtype)
  x = jax.random.normal(key_x, SHAPE, dtype)
  lines = [f"input {SHAPE} {dtype}, {args.reps} interleaved rounds (PyTorch "
           "in rounds of its own), median ms; ratio = reference / jaxconv "
           "(> 1: jaxconv faster)."]
  if use_torch:
    lines.append(f"torch {torch.__version__}, {torch.get_num_threads()} "
                 "threads, NCHW, symmetric padding with the same output size.")
  head = ("| layer | pass | jaxconv ms | flax/lax ms | ratio | floor ms "
          "| lax / floor | jaxconv / floor |"
          + (" torch ms | ratio |" if use_torch else "")
          + " faults (jaxconv / lax) |")
  table = [head, "|" + " --- |" * (head.count("|") - 1)]
  print("\n".join(lines + [""] + table), flush=True)
  for name, kind, window, strides, torch_padding in LAYERS:
    out_shape = jax.eval_shape(_jaxconv_pool(kind, window, strides), x).shape
    cotangent = jax.random.normal(key_g, out_shape, dtype)
    ours_f, ours_fb = _jax_contenders(_jaxconv_pool(kind, window, strides), x,
                                      cotangent)
    ref_f, ref_fb = _jax_contenders(_flax_pool(kind, window, strides), x,
                                    cotangent)
    touch = jax.jit(lambda *arrays: [a + 1 for a in arrays])
    forward = {"jaxconv": ours_f, "flax": ref_f}
    both = {"jaxconv": ours_fb, "flax": ref_fb,
            "floor": lambda touch=touch, cotangent=cotangent: touch(
                x, cotangent)}
    if use_torch:
      torch_f, torch_fb = _torch_contenders(kind, window, strides,
                                            torch_padding, x, cotangent)
      forward["torch"], both["torch"] = torch_f, torch_fb
    for label, contenders in (("fwd", forward), ("fwd+bwd", both)):
      t = timing.interleaved(contenders, args.reps, warmup=2,
                             apart=lambda name: name == "torch")
      ms = {k: v.seconds * 1e3 for k, v in t.items()}
      cells = [name, label, f"{ms['jaxconv']:.2f}", f"{ms['flax']:.2f}",
               f"{ms['flax'] / ms['jaxconv']:.2f}"]
      cells += ([f"{ms['floor']:.2f}", f"{ms['flax'] / ms['floor']:.2f}",
                 f"{ms['jaxconv'] / ms['floor']:.2f}"] if "floor" in ms
                else ["-", "-", "-"])
      if use_torch:
        cells += [f"{ms['torch']:.2f}", f"{ms['torch'] / ms['jaxconv']:.2f}"]
      cells.append(f"{t['jaxconv'].faults:.0f} / {t['flax'].faults:.0f}")
      row = "| " + " | ".join(cells) + " |"
      table.append(row)
      print(row, flush=True)
  if args.record:
    import benchmark
    path = Path(__file__).resolve().parent.parent / "docs" / "benchmarks" / (
        f"pooling-{benchmark.record_name()}.md")
    path.write_text("\n".join([
        f"# Pooling on {timing.cpu_model()}", "",
        f"Measured {datetime.date.today()} on {benchmark.machine()}.", "",
        f"Command: `{command}`", "", *lines, "",
        "`floor` is a jitted `a + 1` over the input and the cotangent: the "
        "bytes a forward+backward must move at least.", "", *table, ""]))
    print(f"wrote {path}")


if __name__ == "__main__":
  main()
