"""The one timing helper of the benchmark scripts.

Every benchmark compares programs side by side in one run: each round calls
every contender once, in a rotating order, and the medians over the rounds
are compared. Rules that the measurements taught:

* Every call is ended by ``jax.block_until_ready`` (PyTorch on the CPU is
  already synchronous), so a time is the whole call.
* Whatever runs right after a PyTorch call is slowed down (its thread pool
  keeps spinning for a while), and so is a JAX call after a pause: PyTorch
  is timed in rounds of its own, after the JAX programs' rounds.
* The minor page faults of each call are counted too: on glibc a large
  temporary buffer is mapped afresh, and faulted in, on every call.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxconv._algorithms import host


def block(result: Any) -> Any:
  """Waits for a JAX result; anything else (a PyTorch tensor) is returned
  as it is."""
  leaves = jax.tree_util.tree_leaves(result)
  if leaves and all(isinstance(leaf, jax.Array) for leaf in leaves):
    return jax.block_until_ready(result)
  return result


def minor_faults() -> int:
  """This process's minor page faults so far."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


@dataclasses.dataclass(frozen=True)
class Timing:
  """Medians over the rounds of one contender: seconds and minor page faults
  per call, and every call's seconds."""

  seconds: float
  faults: float
  samples: tuple[float, ...]


def interleaved(contenders: Mapping[str, Callable[[], Any]], repeats: int, *,
                warmup: int = 1,
                apart: Callable[[str], bool] = lambda name: False,
                ) -> dict[str, Timing]:
  """Times each of ``contenders`` (calls without arguments) ``repeats``
  times, one call of each per round, the order rotated every round.

  Args:
    contenders: name -> a call to time.
    repeats: rounds.
    warmup: untimed calls of each before the first round.
    apart: for a contender's name, whether it is timed in rounds of its own
      group, after the others' (``True`` for PyTorch: its thread pool keeps
      spinning after a call and slows whatever runs next).

  Returns:
    name -> ``Timing``.
  """
  groups = [[n for n in contenders if not apart(n)],
            [n for n in contenders if apart(n)]]
  timings = {}
  for names in groups:
    if names:
      timings.update(_rounds({n: contenders[n] for n in names}, repeats,
                             warmup))
  return {name: timings[name] for name in contenders}


def _rounds(contenders, repeats, warmup):
  names = list(contenders)
  for name in names:
    for _ in range(warmup):
      block(contenders[name]())
  seconds = {name: [] for name in names}
  faults = {name: [] for name in names}
  for round_index in range(repeats):
    shift = round_index % len(names)
    for name in names[shift:] + names[:shift]:
      before = minor_faults()
      start = time.perf_counter()
      block(contenders[name]())
      seconds[name].append(time.perf_counter() - start)
      faults[name].append(minor_faults() - before)
  return {name: Timing(statistics.median(seconds[name]),
                       statistics.median(faults[name]),
                       tuple(seconds[name])) for name in names}


@dataclasses.dataclass(frozen=True)
class Compiled:
  """A compiled program with its compile time and XLA's temporary memory."""

  program: Any
  compile_seconds: float
  temp_bytes: int | None

  def __call__(self, *args):
    return self.program(*args)


def compile_program(function: Callable, *args, **jit_options) -> Compiled:
  """``jax.jit(function)`` lowered and compiled for ``args``, timed (tracing
  and lowering included, as a user waits for them on a first call)."""
  start = time.perf_counter()
  program = jax.jit(function, **jit_options).lower(*args).compile()
  elapsed = time.perf_counter() - start
  memory = program.memory_analysis()
  temp = getattr(memory, "temp_size_in_bytes", None) if memory else None
  return Compiled(program, elapsed, temp)


def cpu_model() -> str:
  """The CPU's model name from ``/proc/cpuinfo``, or what Python knows."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
          return value.strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def cpu_class() -> str:
  """The host's CPU class as jaxconv's policy names it (``"amd-avx512"``,
  ``"intel-avx512"``, ``"amd-avx2"`` or ``"generic"``): the name of this
  machine's records."""
  return host.cpu_class(host.host_cpuinfo())


def machine() -> str:
  """The machine a record was measured on: CPU model, architecture, cores,
  the backend's devices and jax's version."""
  return (f"{cpu_model()} ({platform.machine()}, {os.cpu_count()} cores), "
          f"{jax.device_count()} {jax.default_backend()} device(s), "
          f"jax {jax.__version__}")


def matmul_gflops(repeats: int = 10, size: int = 2048) -> float:
  """The float32 matrix-product rate, GFLOP/s: the ceiling a convolution
  can approach on this machine."""
  a = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
  product = compile_program(lambda a: a @ a, a)
  best = interleaved({"matmul": lambda: product(a)}, repeats)["matmul"]
  return 2 * size**3 / best.seconds / 1e9
