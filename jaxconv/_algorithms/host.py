"""What the policy needs to know about the host: its CPU class, and what
XLA's CPU backend does with 2-D convolutions.

Read once per process (each function caches its answer); nothing here
changes a result, only which algorithm computes it.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
from jax import lax


def cpuinfo_field(cpuinfo: str, key: str) -> str | None:
  """The value of ``key`` for the first processor listed in the text of
  ``/proc/cpuinfo`` (e.g. ``"model name"``, ``"flags"``); ``None`` where it
  has none."""
  for line in cpuinfo.splitlines():
    name, colon, value = line.partition(":")
    if colon and name.strip() == key:
      return value.strip()
  return None


@functools.cache
def host_cpuinfo() -> str:
  """The first processor's entry of ``/proc/cpuinfo``; ``""`` where there
  is no such file."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
      return "".join(itertools.takewhile(lambda line: line.strip(), f))
  except OSError:
    return ""


def cpu_class(cpuinfo: str) -> str:
  """The measured CPU class a ``/proc/cpuinfo`` text describes (the name of
  the preset of rules tuned on it): ``"intel-avx512"`` (an Intel x86 CPU
  with AVX-512), ``"amd-avx512"``, ``"amd-avx2"`` (an AMD one with AVX2 and
  without AVX-512), or ``"generic"`` for every CPU of another kind (ARM
  lists no ``flags``; other vendors and older x86 CPUs were never
  measured)."""
  flags = cpuinfo_field(cpuinfo, "flags")
  if flags is None:
    return "generic"
  flags = set(flags.split())
  vendor = cpuinfo_field(cpuinfo, "vendor_id")
  if vendor == "GenuineIntel" and "avx512f" in flags:
    return "intel-avx512"
  if vendor == "AuthenticAMD" and "avx512f" in flags:
    return "amd-avx512"
  if vendor == "AuthenticAMD" and "avx2" in flags:
    return "amd-avx2"
  return "generic"


def _probe_in_ynnpack(padding) -> bool | None:
  """Whether a 32-feature 3x3 convolution of an 8x8 input with ``padding``
  compiles to a YNNPACK fusion on the CPU device; ``None`` where this
  process has no CPU backend or the probe cannot be compiled or printed."""
  try:
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    x = jax.ShapeDtypeStruct((1, 8, 8, 32), jnp.float32, sharding=cpu)
    w = jax.ShapeDtypeStruct((3, 3, 32, 32), jnp.float32, sharding=cpu)
    probe = jax.jit(functools.partial(
        lax.conv_general_dilated, window_strides=(1, 1), padding=padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC")))
    text = probe.lower(x, w).compile().as_text()
  except Exception:  # a speed hint must never fail a call
    return None
  return "ynn_fusion" in text


@functools.cache
def xla_convolutions_in_ynnpack() -> bool:
  """Whether XLA's CPU backend, as configured in this process (``XLA_FLAGS``),
  hands a 2-D convolution to YNNPACK (jax 0.10's default): compiles a
  32-feature 3x3 one, once, and looks for a YNNPACK fusion in the optimised
  program. Options given to one ``jax.jit`` (``compiler_options=``) are not
  seen here; name a policy for those. Where the probe cannot run, XLA's
  default: ``True``."""
  return _probe_in_ynnpack(((1, 1), (1, 1))) is not False


@functools.cache
def grown_convolutions_leave_ynnpack() -> bool:
  """Whether XLA's CPU backend runs a 2-D convolution whose output is one
  row longer than its input on a kernel other than YNNPACK's (its Eigen
  one), as jax 0.10 does: compiles the probe of
  ``xla_convolutions_in_ynnpack`` with one more row of padding at the far
  end, once. ``False`` where it cannot tell."""
  return _probe_in_ynnpack(((1, 2), (1, 1))) is False
