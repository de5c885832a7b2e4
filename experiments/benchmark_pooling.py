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
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jaxconv

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


def _block(result):
  """Waits for a JAX result; PyTorch on the CPU is already synchronous."""
  leaves = result if isinstance(result, tuple) else (result,)
  if torch is not None and isinstance(leaves[0], torch.Tensor):
    return result
  return jax.block_until_ready(result)


def _minor_faults() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _time_interleaved(contenders, reps, warmup=2):
  """Median seconds and median minor page faults per contender, timing one
  call of each per round."""
  for fn in contenders.values():
    for _ in range(warmup):
      _block(fn())
  times = {name: [] for name in contenders}
  faults = {name: [] for name in contenders}
  names = list(contenders)
  previous = None
  for round_index in range(reps):
    # Rotate the order. Whatever runs right after a PyTorch call is slowed
    # down (experiments/benchmark.py measures by how much), so a contender
    # that follows PyTorch first runs once untimed.
    shift = round_index % len(names)
    for name in names[shift:] + names[:shift]:
      if previous == "torch":
        _block(contenders[name]())
      previous = name
      before = _minor_faults()
      start = time.perf_counter()
      _block(contenders[name]())
      times[name].append(time.perf_counter() - start)
      faults[name].append(_minor_faults() - before)
  return ({name: statistics.median(ts) for name, ts in times.items()},
          {name: statistics.median(fs) for name, fs in faults.items()})


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reps", type=int, default=15)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--no-torch", action="store_true")
  args = parser.parse_args()
  use_torch = torch is not None and not args.no_torch

  key_x, key_g = jax.random.split(jax.random.PRNGKey(0))
  dtype = jnp.dtype(args.dtype)
  x = jax.random.normal(key_x, SHAPE, dtype)
  print(f"input {SHAPE} {dtype}, backend {jax.default_backend()}, "
        f"{args.reps} interleaved rounds, median ms; ratio = reference / "
        "jaxconv (> 1: jaxconv faster)")
  if use_torch:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          "NCHW, symmetric padding with the same output size")
  header = (f"{'layer':<16} {'pass':<9} {'jaxconv':>8} {'flax/lax':>9} "
            f"{'ratio':>6} {'floor':>7} {'lax/floor':>9}")
  if use_torch:
    header += f" {'torch':>8} {'ratio':>6}"
  header += f" {'faults':>8} {'(lax)':>8}"
  print(header)
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
            "floor": lambda: touch(x, cotangent)}
    if use_torch:
      torch_f, torch_fb = _torch_contenders(kind, window, strides,
                                            torch_padding, x, cotangent)
      forward["torch"], both["torch"] = torch_f, torch_fb
    for label, contenders in (("fwd", forward), ("fwd+bwd", both)):
      t, faults = _time_interleaved(contenders, args.reps)
      line = (f"{name:<16} {label:<9} {t['jaxconv'] * 1e3:8.2f} "
              f"{t['flax'] * 1e3:9.2f} {t['flax'] / t['jaxconv']:6.2f}")
      line += (f" {t['floor'] * 1e3:7.2f} {t['flax'] / t['floor']:9.2f}"
               if "floor" in t else f" {'-':>7} {'-':>9}")
      if use_torch:
        line += f" {t['torch'] * 1e3:8.2f} {t['torch'] / t['jaxconv']:6.2f}"
      line += f" {faults['jaxconv']:8.0f} {faults['flax']:8.0f}"
      print(line, flush=True)


if __name__ == "__main__":
  main()
