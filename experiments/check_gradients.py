"""Compare jaxconv's hand-derived gradients with jax.grad of lax on a sweep.

Prints, for every configuration of ``jaxconv.compare``'s sweep (convolution,
transposed convolution and pooling), the largest absolute and relative
difference of the output and of each gradient, in float32 and in float64, and
the forward+backward time ratio. Exits non-zero if any difference exceeds the
dtype's tolerance.

    python experiments/check_gradients.py [--repeats N]
"""

from __future__ import annotations

import argparse
import sys

import jax

from jaxconv import compare


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5,
                      help="timed runs per side and configuration")
  args = parser.parse_args()
  jax.config.update("jax_enable_x64", True)
  status = 0
  for dtype in ("float32", "float64"):
    print(f"\n=== {dtype} ===")
    status |= compare.main(["--dtype", dtype, "--repeats",
                            str(args.repeats if dtype == "float32" else 0)])
  return status


if __name__ == "__main__":
  sys.exit(main())
