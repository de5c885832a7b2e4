"""Chunk sizes: each convolution of a layer, whole and in chunks of samples.

The measurements behind the ``chunked`` policy (``CHUNK_SAMPLES``,
``CHUNK_ELEMENTS`` in ``jaxconv/_algorithms.py``). For every dense layer of
the benchmark suite (groups, 1x1 kernels and transposed layers have
algorithms of their own) and each batch size, the three convolutions of the
rule are timed on their own: the forward pass (``conv_general_dilated``), the
input gradient (``conv_input_grad``) and the kernel gradient
(``conv_kernel_grad``), forced to ``"xla"`` (whole) and to ``"chunked"`` with
1, 2, 4 and 8 samples per chunk. Interleaved round by round, in alternating
order; medians in milliseconds.

    python experiments/benchmark_chunks.py                  # the whole table
    python experiments/benchmark_chunks.py --only stem --batch 8
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
from jax import lax

import benchmark
import jaxconv
from jaxconv import _algorithms

CHUNKS = (1, 2, 4, 8)


def programs(layer, batch, chunk):
  """The three compiled convolutions, with their arguments, in chunks of
  ``chunk`` samples (``None``: whole, XLA's kernel)."""
  n = len(layer.spatial)
  x_shape, w_shape = layer.shapes(batch)
  kw = dict(window_strides=(layer.stride,) * n, padding=layer.padding,
            rhs_dilation=(layer.dilation,) * n,
            dimension_numbers=layer.layout())
  algorithm = "xla" if chunk is None else "chunked"
  x = jax.random.normal(jax.random.key(0), x_shape)
  w = jax.random.normal(jax.random.key(1), w_shape)
  y = lax.conv_general_dilated(x, w, **kw)
  fns = {
      "forward": (lambda x, w: jaxconv.conv_general_dilated(
          x, w, algorithm=algorithm, **kw), (x, w)),
      "input gradient": (lambda ct, w: jaxconv.conv_input_grad(
          ct, w, x_shape, algorithm=algorithm, **kw), (y, w)),
      "kernel gradient": (lambda x, ct: jaxconv.conv_kernel_grad(
          x, ct, w_shape, algorithm=algorithm, **kw), (x, y)),
  }
  # The chunk size is read when the functions are traced.
  saved = _algorithms.CHUNK_SAMPLES, _algorithms.CHUNK_ELEMENTS
  if chunk is not None:
    _algorithms.CHUNK_SAMPLES, _algorithms.CHUNK_ELEMENTS = chunk, 2**62
  try:
    compiled = {name: (jax.jit(f).lower(*args).compile(), args)
                for name, (f, args) in fns.items()}
  finally:
    _algorithms.CHUNK_SAMPLES, _algorithms.CHUNK_ELEMENTS = saved
  for f, args in compiled.values():
    jax.block_until_ready(f(*args))
  return compiled


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, action="append",
                      help="batch sizes (default 8 and 32)")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--only", default=None,
                      help="run the layers whose name contains this text")
  args = parser.parse_args(argv)
  layers = [layer for layer in benchmark.SUITE
            if not layer.transpose and layer.groups == 1
            and any(k > 1 for k in layer.window)]
  if args.only:
    layers = [layer for layer in layers if args.only in layer.name]
  print(f"jax {jax.__version__}, {jax.default_backend()}, float32, median of "
        f"{args.repeats}; ms in chunks of " +
        " / ".join(str(c) for c in CHUNKS) + " / whole")
  for layer in layers:
    for batch in args.batch or [8, 32]:
      chunks = [c for c in CHUNKS if c < batch] + [None]
      compiled = {c: programs(layer, batch, c) for c in chunks}
      for name in ("forward", "input gradient", "kernel gradient"):
        times = {c: [] for c in chunks}
        for round_index in range(args.repeats):
          order = chunks if round_index % 2 else chunks[::-1]
          for c in order:
            f, inputs = compiled[c][name]
            start = time.perf_counter()
            jax.block_until_ready(f(*inputs))
            times[c].append(time.perf_counter() - start)
        cells = [f"{statistics.median(times[c]) * 1e3:.1f}"
                 if c in times else "-" for c in CHUNKS + (None,)]
        print(f"{layer.name:<28} b{batch:<3} {name:<16} " + " / ".join(cells),
              flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
