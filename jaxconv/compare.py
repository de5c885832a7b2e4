"""Compare jaxconv's hand-derived gradients with ``jax.grad`` of lax.

Run ``python -m jaxconv.compare`` (or ``jaxconv-compare``) for the built-in
sweep, or describe one configuration on the command line::

    python -m jaxconv.compare \
        --conv "input=8x32x32x16 kernel=3x3x16x32 stride=2 padding=SAME"
    python -m jaxconv.compare \
        --conv-transpose "input=2x9x9x4 kernel=3x3x4x6 stride=2 padding=VALID"

For each configuration it prints the largest absolute and relative difference
of the output and of every gradient between jaxconv and lax (same inputs, same
random cotangent), and the ratio of the jitted forward+backward times
(jaxconv / lax; below 1 means jaxconv is faster). The exit status is 1 if any
relative difference exceeds the dtype's tolerance, 2 if a case given on the
command line is malformed or describes an impossible convolution (reported
in one line on stderr), else 0.

Relative difference: ``max |ours - lax| / max(1, max |lax|)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jaxconv

__all__ = ["Case", "CASES", "check_case", "compare_case", "conv_case", "main",
           "pool_case", "register_case", "TOLERANCE"]

# Largest accepted relative difference per dtype (both sides in that dtype).
TOLERANCE = {
    "float64": 1e-10,
    "float32": 1e-5,
    "float16": 2e-3,
    "bfloat16": 1.6e-2,
}


@dataclasses.dataclass(frozen=True)
class Case:
  """One comparison: two functions of the same arrays.

  Attributes:
    name: a short label for the table.
    shapes: the shapes of the differentiated arguments.
    ours: the jaxconv function of those arguments.
    theirs: the same function built from lax (autodiff gives its gradients).
    argnames: a label for each argument's gradient.
    positive: draw positive inputs (for functions undefined below zero).
  """

  name: str
  shapes: tuple[tuple[int, ...], ...]
  ours: Callable
  theirs: Callable
  argnames: tuple[str, ...]
  positive: bool = False


CASES: list[Case] = []


def register_case(case: Case) -> Case:
  """Adds a case to the default sweep and returns it.

  Args:
    case: the comparison to add to ``CASES``.

  Returns:
    ``case`` itself.
  """
  CASES.append(case)
  return case


def _channels_last(n: int) -> tuple[str, str, str]:
  letters = "DHW"[-n:] if n <= 3 else "".join(chr(ord("a") + i) for i in range(n))
  return "N" + letters + "C", letters + "IO", "N" + letters + "C"


# PyTorch's padding modes, as jnp.pad's modes (lax's side of a case).
_NUMPY_PADDING_MODES = {"zeros": "constant", "circular": "wrap",
                        "reflect": "reflect", "replicate": "edge"}


def conv_case(input_shape, kernel_shape, stride=1, padding="VALID", dilation=1,
              groups=1, transpose=False, name=None,
              padding_mode="zeros") -> Case:
  """A channels-last convolution (or transposed convolution) case.

  Args:
    input_shape: ``(batch, *spatial, C_in)``.
    kernel_shape: ``(*window, C_in // groups, C_out)`` (for ``transpose``:
      ``(*window, C_in, C_out)``).
    stride, padding, dilation, groups: as in ``jaxconv.conv`` (for
      ``transpose``: as in ``jaxconv.conv_transpose``, ``groups`` must be 1).
    transpose: compare ``conv_transpose`` instead of ``conv``.
    name: the label; made from the arguments when ``None``.
    padding_mode: as in ``jaxconv.conv`` (``"zeros"``, ``"circular"``,
      ``"reflect"``, ``"replicate"``); lax's side pads with ``jnp.pad`` and
      convolves without padding. Not for ``transpose``.

  Returns:
    A ``Case`` comparing jaxconv with lax.
  """
  if padding_mode not in _NUMPY_PADDING_MODES:
    raise ValueError(f"padding_mode must be one of "
                     f"{tuple(_NUMPY_PADDING_MODES)}, got {padding_mode!r}")
  if transpose and padding_mode != "zeros":
    raise ValueError("padding_mode is for conv cases, not conv_transpose")
  n = len(kernel_shape) - 2
  layout = _channels_last(n)
  strides = (stride,) * n if isinstance(stride, int) else tuple(stride)
  dilations = (dilation,) * n if isinstance(dilation, int) else tuple(dilation)
  if name is None:
    kind = "conv_transpose" if transpose else "conv"
    name = (f"{kind} {'x'.join(map(str, input_shape))} k"
            f"{'x'.join(map(str, kernel_shape))} s{stride} {padding}"
            + (f" d{dilation}" if dilation != 1 else "")
            + (f" g{groups}" if groups != 1 else "")
            + (f" {padding_mode}" if padding_mode != "zeros" else ""))
  if transpose:
    def ours(x, w):
      return jaxconv.conv_transpose(x, w, strides, padding, dilations, layout)

    def theirs(x, w):
      return lax.conv_transpose(x, w, strides, padding, dilations, layout)
  else:
    lax_padding = padding
    if not isinstance(padding, str):
      # conv's int / per-dimension padding is symmetric.
      lax_padding = jaxconv.convolution.layer_padding(padding, n)

    if padding_mode != "zeros":
      if isinstance(padding, str):
        windows = [(k - 1) * d + 1 for k, d in zip(kernel_shape[:n],
                                                   dilations)]
        lax_padding = lax.padtype_to_pads(input_shape[1:-1], windows,
                                          strides, padding)
      pad_width = ((0, 0),) + tuple(map(tuple, lax_padding)) + ((0, 0),)
      numpy_mode = _NUMPY_PADDING_MODES[padding_mode]
      lax_padding = "VALID"
    else:
      pad_width = numpy_mode = None

    def ours(x, w):
      return jaxconv.conv(x, w, stride=stride, padding=padding,
                          dilation=dilation, groups=groups,
                          padding_mode=padding_mode)

    def theirs(x, w):
      if pad_width is not None:
        x = jnp.pad(x, pad_width, mode=numpy_mode)
      return lax.conv_general_dilated(
          x, w, strides, lax_padding, rhs_dilation=dilations,
          dimension_numbers=layout, feature_group_count=groups)
  return Case(name, (tuple(input_shape), tuple(kernel_shape)), ours, theirs,
              ("input", "kernel"))


for _args in [
    dict(input_shape=(4, 28, 4), kernel_shape=(5, 4, 8), stride=2,
         padding="SAME"),
    dict(input_shape=(4, 16, 16, 8), kernel_shape=(3, 3, 8, 16),
         padding="SAME"),
    dict(input_shape=(4, 17, 15, 8), kernel_shape=(3, 3, 8, 16), stride=2,
         padding=1),
    dict(input_shape=(4, 16, 16, 8), kernel_shape=(3, 3, 8, 8), dilation=2,
         padding="SAME"),
    dict(input_shape=(4, 16, 16, 16), kernel_shape=(3, 3, 1, 16), stride=2,
         padding="SAME", groups=16),
    dict(input_shape=(4, 16, 16, 16), kernel_shape=(3, 3, 4, 16),
         padding="VALID", groups=4),
    dict(input_shape=(4, 16, 16, 32), kernel_shape=(1, 1, 32, 16)),
    dict(input_shape=(2, 6, 8, 8, 4), kernel_shape=(3, 3, 3, 4, 8), stride=2,
         padding="SAME"),
    dict(input_shape=(4, 8, 8, 8), kernel_shape=(3, 3, 8, 4), stride=2,
         padding="SAME", transpose=True),
    dict(input_shape=(4, 7, 9, 8), kernel_shape=(4, 4, 8, 4), stride=(2, 3),
         padding="VALID", transpose=True),
]:
  register_case(conv_case(**_args))



def pool_case(kind, input_shape, window_shape, strides=None, padding="VALID",
              p=None, count_include_pad=True, name=None) -> Case:
  """A channels-last pooling case: ``kind`` in max, min, avg, lp.

  lax's side is ``lax.reduce_window`` (max, min, add; the average divides by
  the window size or, without ``count_include_pad``, by the number of real
  taps), differentiated by JAX.

  Args:
    kind: ``"max"``, ``"min"``, ``"avg"`` or ``"lp"``.
    input_shape: ``(batch, *spatial, C)``.
    window_shape, strides, padding: as in ``jaxconv.max_pool`` (``padding``
      a string or ``(lo, hi)`` pairs).
    p: the norm's order for ``"lp"``.
    count_include_pad: as in ``jaxconv.avg_pool``.
    name: the label; made from the arguments when ``None``.

  Returns:
    A ``Case`` comparing jaxconv with lax.
  """
  n = len(window_shape)
  window = tuple(window_shape)
  strides = (1,) * n if strides is None else tuple(strides)
  if name is None:
    name = (f"{kind}_pool {'x'.join(map(str, input_shape))} w"
            f"{'x'.join(map(str, window))} s{'x'.join(map(str, strides))} "
            f"{padding if isinstance(padding, str) else 'pad'}"
            + (f" p{p}" if kind == "lp" else "")
            + ("" if count_include_pad else " no-pad-count"))
  dims, steps = (1,) + window + (1,), (1,) + strides + (1,)
  pads = padding if isinstance(padding, str) else (
      ((0, 0),) + tuple(map(tuple, padding)) + ((0, 0),))

  def reduce(x, init, op):
    return lax.reduce_window(x, init, op, dims, steps, pads)

  if kind == "max":
    def ours(x):
      return jaxconv.max_pool(x, window, strides, padding)

    def theirs(x):
      return reduce(x, -jnp.inf, lax.max)
  elif kind == "min":
    def ours(x):
      return jaxconv.min_pool(x, window, strides, padding)

    def theirs(x):
      return reduce(x, jnp.inf, lax.min)
  elif kind == "avg":
    def ours(x):
      return jaxconv.avg_pool(x, window, strides, padding, count_include_pad)

    def theirs(x):
      if count_include_pad:
        return reduce(x, 0.0, lax.add) / np.prod(window)
      counts = reduce(jnp.ones((1,) + x.shape[1:-1] + (1,), x.dtype), 0.0,
                      lax.add)
      return reduce(x, 0.0, lax.add) / counts
  elif kind == "lp":
    def ours(x):
      return jaxconv.lp_pool(x, p, window, strides, padding)

    def theirs(x):
      return reduce(jnp.abs(x) ** p, 0.0, lax.add) ** (1.0 / p)
  else:
    raise ValueError(f"kind must be max, min, avg or lp, got {kind!r}")
  return Case(name, (tuple(input_shape),), ours, theirs, ("input",))


for _args in [
    dict(kind="max", input_shape=(4, 16, 16, 8), window_shape=(2, 2),
         strides=(2, 2), padding="SAME"),
    dict(kind="max", input_shape=(4, 17, 15, 8), window_shape=(3, 3),
         strides=(2, 2), padding="SAME"),
    dict(kind="max", input_shape=(2, 6, 8, 8, 4), window_shape=(2, 3, 3),
         strides=(2, 2, 1), padding=((0, 1), (1, 1), (1, 0))),
    dict(kind="min", input_shape=(4, 28, 8), window_shape=(3,), strides=(1,),
         padding="SAME"),
    dict(kind="avg", input_shape=(4, 16, 16, 8), window_shape=(3, 3),
         strides=(2, 2), padding="SAME"),
    dict(kind="avg", input_shape=(4, 17, 15, 8), window_shape=(3, 2),
         strides=(2, 1), padding="SAME", count_include_pad=False),
    dict(kind="lp", input_shape=(4, 16, 16, 8), window_shape=(3, 3),
         strides=(2, 2), padding="SAME", p=2.0),
    dict(kind="lp", input_shape=(4, 28, 8), window_shape=(4,), strides=(2,),
         padding="VALID", p=3.5),
]:
  register_case(pool_case(**_args))


def _arrays(case: Case, dtype, seed: int):
  rng = np.random.default_rng(seed)
  arrays = []
  for shape in case.shapes:
    values = rng.normal(size=shape)
    if case.positive:
      values = np.abs(values) + 0.1
    arrays.append(jnp.asarray(values, dtype))
  return arrays


def _max_differences(ours, theirs) -> tuple[float, float]:
  ours = np.asarray(ours, dtype=np.float64)
  theirs = np.asarray(theirs, dtype=np.float64)
  if theirs.size == 0:
    return 0.0, 0.0
  absolute = float(np.max(np.abs(ours - theirs)))
  return absolute, absolute / max(1.0, float(np.max(np.abs(theirs))))


def _time_calls(function, args, repeats: int) -> list[float]:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(function(*args))
    times.append(time.perf_counter() - start)
  return times


def compare_case(case: Case, dtype="float32", seed: int = 0,
                 timing_repeats: int = 5) -> dict:
  """Compares one case; returns the differences, the time ratio and a verdict.

  Args:
    case: the ``Case``.
    dtype: the dtype of the inputs (both sides use it).
    seed: seeds the inputs and the cotangent.
    timing_repeats: interleaved timed calls of each side; 0 skips timing.

  Returns:
    A dict with ``name``, ``rows`` (``(what, max abs, max rel)`` for the
    output and each gradient), ``time_ratio`` (jaxconv / lax, or ``None``)
    and ``ok``.
  """
  dtype = jnp.dtype(dtype)
  args = _arrays(case, dtype, seed)
  ours_out, ours_pullback = jax.vjp(case.ours, *args)
  theirs_out, theirs_pullback = jax.vjp(case.theirs, *args)
  rng = np.random.default_rng(seed + 1)
  cotangent = jnp.asarray(rng.normal(size=theirs_out.shape), theirs_out.dtype)
  rows = [("output",) + _max_differences(ours_out, theirs_out)]
  for name, ours_grad, theirs_grad in zip(
      case.argnames, ours_pullback(cotangent), theirs_pullback(cotangent)):
    rows.append((f"d {name}",) + _max_differences(ours_grad, theirs_grad))
  tolerance = TOLERANCE[dtype.name]
  ok = all(rel <= tolerance for _, _, rel in rows)

  ratio = None
  if timing_repeats:
    def training_step(function):
      # The output and the gradients, as a training step needs them: a step
      # returning only the gradients of a linear convolution would let XLA
      # drop its forward pass. The cotangent is an argument, not a constant
      # of the compiled program.
      def step(*inputs):
        y, pullback = jax.vjp(function, *inputs[:-1])
        return y, pullback(inputs[-1])
      return jax.jit(step)
    ours_step, theirs_step = training_step(case.ours), training_step(case.theirs)
    step_args = tuple(args) + (cotangent,)
    ours_times, theirs_times = [], []
    for step in (ours_step, theirs_step):  # compile and warm up
      jax.block_until_ready(step(*step_args))
    for _ in range(timing_repeats):        # interleaved
      ours_times += _time_calls(ours_step, step_args, 1)
      theirs_times += _time_calls(theirs_step, step_args, 1)
    ratio = float(np.median(ours_times) / np.median(theirs_times))
  return dict(name=case.name, rows=rows, time_ratio=ratio, ok=ok,
              tolerance=tolerance)


def _parse_int(text: str, key: str) -> int:
  try:
    return int(text)
  except ValueError:
    raise ValueError(f"{key}= must be an integer, got {text!r}") from None


def _parse_shape(text: str, key: str = "shape") -> tuple[int, ...]:
  try:
    return tuple(int(v) for v in text.lower().split("x"))
  except ValueError:
    raise ValueError(
        f"{key}= must be sizes joined by 'x' (like 8x32x32x16), got "
        f"{text!r}") from None


def _parse_ints(text: str, key: str = "value"):
  values = _parse_shape(text, key)
  return values[0] if len(values) == 1 else values


def parse_conv_spec(spec: str, transpose: bool = False) -> Case:
  """Parses ``"input=8x32x32x16 kernel=3x3x16x32 stride=2 padding=SAME"``.

  Keys: ``input`` and ``kernel`` (required, shapes as ``AxBxC``), ``stride``,
  ``dilation`` (an int or ``AxB``), ``padding`` (``SAME``, ``VALID`` or an
  int), ``groups``, ``padding_mode`` (``zeros``, ``circular``, ``reflect``,
  ``replicate``; not for transposed convolutions).
  """
  optional = {"stride", "dilation", "padding", "groups"}
  if not transpose:
    optional.add("padding_mode")
  fields = _fields(spec, required={"input", "kernel"}, optional=optional)
  padding = fields.get("padding", "VALID")
  if padding.upper() not in ("SAME", "VALID", "SAME_LOWER"):
    padding = _parse_int(padding, "padding")
  else:
    padding = padding.upper()
  return conv_case(_parse_shape(fields["input"], "input"),
                   _parse_shape(fields["kernel"], "kernel"),
                   stride=_parse_ints(fields.get("stride", "1"), "stride"),
                   padding=padding,
                   dilation=_parse_ints(fields.get("dilation", "1"),
                                        "dilation"),
                   groups=_parse_int(fields.get("groups", "1"), "groups"),
                   transpose=transpose,
                   padding_mode=fields.get("padding_mode", "zeros").lower())


def parse_pool_spec(spec: str) -> Case:
  """Parses ``"kind=max input=8x32x32x16 window=3x3 stride=2 padding=SAME"``.

  Keys: ``kind`` (``max``, ``min``, ``avg`` or ``lp``) and ``input`` and
  ``window`` (required, shapes as ``AxB``), ``stride`` (an int or ``AxB``),
  ``padding`` (``SAME``, ``VALID`` or an int, symmetric), ``p`` (for ``lp``),
  ``count_include_pad`` (``true``/``false``, for ``avg``).

  Args:
    spec: the case, as ``key=value`` words.

  Returns:
    A ``Case`` comparing jaxconv with lax.
  """
  fields = _fields(spec, required={"kind", "input", "window"},
                   optional={"stride", "padding", "p", "count_include_pad"})
  window = _parse_shape(fields["window"], "window")
  stride = _parse_ints(fields.get("stride", "1"), "stride")
  strides = (stride,) * len(window) if isinstance(stride, int) else stride
  padding = fields.get("padding", "VALID").upper()
  if padding not in ("SAME", "VALID"):
    padding = ((_parse_int(padding, "padding"),) * 2,) * len(window)
  kind = fields["kind"].lower()
  if kind not in ("max", "min", "avg", "lp"):
    raise ValueError(f"kind must be max, min, avg or lp; got {kind!r}")
  try:
    p = float(fields["p"]) if "p" in fields else (2.0 if kind == "lp"
                                                 else None)
  except ValueError:
    raise ValueError(f"p= must be a number, got {fields['p']!r}") from None
  count = fields.get("count_include_pad", "true").lower() in ("true", "1",
                                                              "yes")
  return pool_case(kind, _parse_shape(fields["input"], "input"), window,
                   strides,
                   padding, p=p, count_include_pad=count)


def _fields(spec: str, required: set, optional: set) -> dict:
  fields = {}
  for item in spec.replace(",", " ").split():
    if "=" not in item:
      raise ValueError(f"expected key=value in the case spec, got {item!r}")
    key, value = item.split("=", 1)
    fields[key.strip().lower()] = value.strip()
  unknown = set(fields) - required - optional
  if unknown or not required <= set(fields):
    raise ValueError(
        f"case spec needs {', '.join(sorted(k + '=' for k in required))} and "
        f"accepts {', '.join(sorted(k + '=' for k in optional))}; got "
        f"{sorted(fields)}")
  return fields


def check_case(case: Case, dtype="float32") -> None:
  """Traces both sides of a case on abstract inputs, without computing.

  Args:
    case: the ``Case``.
    dtype: the inputs' dtype.

  Returns:
    ``None`` when both sides accept the case.

  Raises:
    ValueError, TypeError: a side refuses the case (a kernel that does not
      match the input, say), with that side's message.
  """
  args = [jax.ShapeDtypeStruct(shape, jnp.dtype(dtype)) for shape in case.shapes]
  jax.eval_shape(case.ours, *args)
  jax.eval_shape(case.theirs, *args)


def _one_line(error: Exception) -> str:
  return " ".join(str(error).split())


def format_table(results: Sequence[dict]) -> str:
  """The comparison table, one line per (case, output or gradient)."""
  lines = [f"{'configuration':<52} {'what':<10} {'max abs':>10} {'max rel':>10}"
           f" {'time ratio':>10}  verdict"]
  for result in results:
    for i, (what, absolute, relative) in enumerate(result["rows"]):
      name = result["name"] if i == 0 else ""
      ratio = ""
      if i == 0 and result["time_ratio"] is not None:
        ratio = f"{result['time_ratio']:.2f}"
      verdict = "ok" if relative <= result["tolerance"] else "MISMATCH"
      lines.append(f"{name[:52]:<52} {what:<10} {absolute:>10.2e} "
                   f"{relative:>10.2e} {ratio:>10}  {verdict}")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  """Command-line entry point of ``python -m jaxconv.compare``.

  Args:
    argv: the arguments without the program name; ``None`` means
      ``sys.argv[1:]``.

  Returns:
    The exit status: 1 if any difference exceeds the dtype's tolerance, 2 if
    a case on the command line is malformed or impossible (one line on
    stderr says why), else 0.
  """
  parser = argparse.ArgumentParser(
      prog="python -m jaxconv.compare",
      description="Compare jaxconv's hand-derived gradients with jax.grad of "
                  "lax. Exit status 1 if any difference exceeds the dtype's "
                  "tolerance.")
  parser.add_argument("--conv", action="append", default=[], metavar="SPEC",
                      help='a conv case, e.g. "input=8x32x32x16 '
                           'kernel=3x3x16x32 stride=2 padding=SAME" '
                           '(padding_mode=circular|reflect|replicate)')
  parser.add_argument("--conv-transpose", action="append", default=[],
                      metavar="SPEC", help="a conv_transpose case, same keys")
  parser.add_argument("--pool", action="append", default=[], metavar="SPEC",
                      help='a pooling case, e.g. "kind=max input=8x32x32x16 '
                           'window=3x3 stride=2 padding=SAME" (kind: max, '
                           'min, avg, lp; p=, count_include_pad=)')
  parser.add_argument("--dtype", default="float32", choices=sorted(TOLERANCE))
  parser.add_argument("--repeats", type=int, default=5,
                      help="interleaved timed runs per side (0: no timing)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if args.dtype == "float64":
    jax.config.update("jax_enable_x64", True)
  specs = ([("--conv", s, parse_conv_spec) for s in args.conv]
           + [("--conv-transpose", s,
               lambda s: parse_conv_spec(s, transpose=True))
              for s in args.conv_transpose]
           + [("--pool", s, parse_pool_spec) for s in args.pool])
  cases = []
  for option, spec, parse in specs:
    try:
      case = parse(spec)
      check_case(case, args.dtype)
    except (ValueError, TypeError) as error:
      print(f"{parser.prog}: error: bad {option} case {spec!r}: "
            f"{_one_line(error)}", file=sys.stderr)
      return 2
    cases.append(case)
  return _run(cases or list(CASES), args.dtype, args.seed, args.repeats)


def _run(cases: Sequence[Case], dtype: str, seed: int, repeats: int) -> int:
  """Compares ``cases``, prints the table and the verdict, and returns the
  exit status of :func:`main`: 1 if any difference exceeds the ``dtype``'s
  tolerance, else 0."""
  results = [compare_case(case, dtype, seed, repeats) for case in cases]
  print(format_table(results))
  failures = [r["name"] for r in results if not r["ok"]]
  ratios = [r["time_ratio"] for r in results if r["time_ratio"] is not None]
  if ratios:
    print(f"\ntime ratio jaxconv / lax (forward+backward, jitted, median of "
          f"{repeats}): geometric mean {np.exp(np.mean(np.log(ratios))):.2f}")
  if failures:
    print(f"\n{len(failures)} of {len(results)} configurations exceed the "
          f"{dtype} tolerance {TOLERANCE[dtype]:.1e}: " + ", ".join(failures))
    return 1
  print(f"\nall {len(results)} configurations agree within the {dtype} "
        f"tolerance {TOLERANCE[dtype]:.1e}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
