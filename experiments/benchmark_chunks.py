"""Chunk sizes: each convolution of a layer, whole and in chunks of samples.

The measurements behind the ``chunked`` rule (the policy's thresholds
``chunk_samples`` and ``chunk_elements``, ``jaxconv.Thresholds``). For every
dense layer of the benchmark suite (groups, 1x1 kernels and transposed layers have
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

import jax

import benchmark
import benchmark_algorithms

CHUNKS = (1, 2, 4, 8)


def programs(layer, batch, chunk):
  """The three compiled convolutions, with their arguments, in chunks of
  ``chunk`` samples (``None``: whole, XLA's kernel)."""
  if chunk is None:
    variant = benchmark_algorithms.parse_variant("xla")
  else:
    variant = benchmark_algorithms.parse_variant(
        f"chunked:chunk_samples={chunk},chunk_elements=inf")
  return benchmark_algorithms.pass_programs(layer, batch, variant)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  benchmark_algorithms.add_selection_arguments(parser)
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
      for name in benchmark_algorithms.PASSES:
        seconds = dict(zip(chunks, benchmark_algorithms.interleaved(
            [compiled[c][name] for c in chunks], args.repeats)[0]))
        cells = [f"{seconds[c] * 1e3:.1f}" if c in seconds else "-"
                 for c in CHUNKS + (None,)]
        print(f"{layer.name:<28} b{batch:<3} {name:<16} " + " / ".join(cells),
              flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
