"""The command line of ``python -m jaxconv.explain``."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxconv.explain import _network, _one_layer, _values
from jaxconv.explain._parsing import parse_ints, parse_padding, parse_shape

_DESCRIPTION = """\
Write backpropagation through a small convolution, or a small network, out
by hand: every value named, every output and every gradient a sum of
products, each checked against jaxconv's own gradients (float64) before it
is printed. The exit status is 1 if a check fails, 2 for bad arguments.

One convolution (--kernel), in symbols: inputs V1.., weights W1..,
outputs G1.., pooled outputs P1.., loss E; the check runs on random numbers.

A network (--layers), in symbols and then with numbers: input i, layer l's
weights w^l and outputs o^l, deltas d^l = dC/do^l (printed δˡ), cost C.
Values come from --value, --values or a seeded random draw."""

_EPILOG = """\
layers (--layers, one word each, no spaces):
  conv:KxK[,stride=S][,padding=P][,dilation=D][,bias]
  relu | leaky_relu[:SLOPE] | sigmoid | tanh
  max_pool:KxK[,stride=S][,padding=P]    avg_pool:KxK[,stride=S][,padding=P]
  A pooling stride defaults to 1, as in jaxconv.max_pool and avg_pool
  (Flax's convention): write stride=2 for 2x2 windows side by side.

costs (--cost):
  squared                C = sum (o - y)^2
  half-squared           C = 1/2 sum (y - o)^2  (jaxconv.mse of one example)
  softmax-cross-entropy  C = -log p_y, p the softmax of the last outputs,
                         y the correct class (numbered from 1)
  without --cost, the last layer's delta is a value (--value d2=...).

values (--value NAME=..., repeatable):
  names: i (input), w1 (layer 1's kernel), b1 (its bias), y (targets or the
  class), d2 (the given delta of the last layer, without --cost).
  numbers row by row, rows optionally split by /:  i=0.1,0.2,0.3/0.4,0.5,0.6
  or a file: w1=kernel.npy, w1=kernel.json (a nested list).
  --values FILE.json sets several at once: {"i": [[...]], "w1": [[...]]}.

gradients (--grad, repeatable): w1_3 (one weight), w1 (all of layer 1's),
  b1, i5, i, all.  Default: every weight and bias.

wrong answers (--wrong, repeatable): GRADIENT=FORMULA or
  GRADIENT=product-of-sums, e.g.
  --wrong w1_1=product-of-sums
  --wrong 'w1_1=(i1+i2+i4+i5)*(w2_1+w2_2+w2_3+w2_4)*2*(o2_1-y1)'
  Names in formulas: i5, w1_3, b1, o2_1, d1_2 (a delta), y1, p2.

examples:
  python -m jaxconv.explain --input 3x3 --kernel 2x2 --grad W1 --grad V5
  python -m jaxconv.explain --input 3x3 --layers conv:2x2 conv:2x2 \\
      --cost squared --grad w1_1 --wrong w1_1=product-of-sums
  python -m jaxconv.explain --input 4x4 --layers conv:2x2 relu \\
      max_pool:2x2,stride=2 --cost half-squared --brief

The worked examples (docs/worked-examples.md) answer the classic questions
with one command each; docs/explain.md describes every option."""


class _Parser(argparse.ArgumentParser):
  """argparse, with its usage errors on one line (and exit status 2)."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message}\n")


def _argument_type(parse, what: str):
  def convert(text):
    try:
      return parse(text)
    except ValueError as error:
      raise argparse.ArgumentTypeError(f"{what}: {error}") from None
  convert.__name__ = what
  return convert


def _build_parser() -> argparse.ArgumentParser:
  parser = _Parser(
      prog="python -m jaxconv.explain", description=_DESCRIPTION,
      epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--input", required=True, metavar="SHAPE",
                      type=_argument_type(parse_shape, "shape"),
                      help="spatial shape of the input, e.g. 3x3 (or 5, or "
                      "3x3x3)")
  network = parser.add_argument_group("a network")
  network.add_argument("--layers", nargs="+", metavar="LAYER",
                       help="the chain of layers, e.g. conv:2x2 relu "
                       "max_pool:2x2,stride=2 conv:2x2 (see below)")
  network.add_argument("--cost", metavar="COST",
                       help="squared, half-squared or softmax-cross-entropy "
                       "(default: none, the last delta is a value)")
  network.add_argument("--value", action="append", metavar="NAME=VALUES",
                       default=[], help="set a value: i=0.1,0.2,..., "
                       "w1=0.5,-0.6/0.7,0.2, y=1, d2=..., or NAME=FILE.npy "
                       "(repeatable; the rest is drawn at random)")
  network.add_argument("--values", type=Path, metavar="FILE.json",
                       help="a JSON object of values by name")
  network.add_argument("--wrong", action="append", metavar="GRAD=FORMULA",
                       default=[], help="a tempting wrong answer to evaluate "
                       "beside the true gradient: w1_1=product-of-sums or "
                       "w1_1=FORMULA (repeatable)")
  network.add_argument("--brief", action="store_true",
                       help="forward values and deltas as grids of numbers, "
                       "not one equation each")
  one = parser.add_argument_group("one convolution")
  one.add_argument("--kernel", metavar="SHAPE",
                   type=_argument_type(parse_shape, "shape"),
                   help="spatial shape of the kernel, e.g. 2x2")
  one.add_argument("--stride", metavar="S",
                   type=_argument_type(parse_ints, "stride"),
                   help="an int or one per dimension, e.g. 2 or 2x1 "
                   "(default 1)")
  one.add_argument("--padding", metavar="P",
                   type=_argument_type(parse_padding, "padding"),
                   help="VALID (default), SAME, SAME_LOWER, an int, ints like "
                   "1x0, or lo:hi pairs like 0:1x1:0")
  one.add_argument("--dilation", metavar="D",
                   type=_argument_type(parse_ints, "dilation"),
                   help="kernel dilation, an int or one per dimension "
                   "(default 1)")
  one.add_argument("--pool", nargs=2, metavar=("KIND", "WINDOW"),
                   help="add a pooling stage: max or avg, and a window like "
                   "2x2")
  one.add_argument("--pool-stride", metavar="S",
                   type=_argument_type(parse_ints, "stride"),
                   help="pooling stride (default 1, as in jaxconv.max_pool "
                   "and avg_pool; give the window, e.g. 2, for windows side "
                   "by side)")
  one.add_argument("--pool-padding", metavar="P",
                   type=_argument_type(parse_padding, "padding"),
                   help="pooling padding, as --padding (default VALID)")
  both = parser.add_argument_group("both")
  both.add_argument("--grad", action="append", metavar="NAME",
                    help="a gradient to write out; repeat it, or say 'all'. "
                    "One convolution: W1 or V5 (default: every weight and "
                    "the most-read input). A network: w1_3, w1, b1, i5, i "
                    "(default: every weight and bias)")
  both.add_argument("--seed", type=int, default=0, metavar="N",
                    help="seed of the random numbers (default 0)")
  both.add_argument("--ascii", action="store_true",
                    help="write d, * and w^1_2 instead of ∂, · and w¹₂")
  return parser


def _can_print_unicode(stream) -> bool:
  """False only for a stream whose declared encoding has no ``∂``."""
  encoding = getattr(stream, "encoding", None)
  if not encoding:
    return True  # an in-memory text stream takes any str
  try:
    "∂·δ¹₁".encode(encoding)
  except (LookupError, UnicodeEncodeError):
    return False
  return True


def _read_file(path: Path, option: str):
  if not path.is_file():
    raise ValueError(f"{option}: no file {str(path)!r}.")
  if path.suffix.lower() == ".npy":
    try:
      return np.load(path, allow_pickle=False)
    except ValueError as error:
      raise ValueError(f"{option}: {path} is not a NumPy array file "
                       f"({error}).") from None
  if path.suffix.lower() == ".json":
    try:
      return json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as error:
      raise ValueError(f"{option}: {path} is not valid JSON ({error}).") \
          from None
  raise ValueError(f"{option}: a file of values ends in .npy or .json, got "
                   f"{str(path)!r}.")


def _parse_numbers(text: str, option: str):
  """``0.1,0.2/0.3,0.4``: numbers row by row, rows split by ``/``."""
  rows = [row for row in text.split("/")]
  try:
    parsed = [[float(entry) for entry in row.split(",")] for row in rows]
  except ValueError:
    raise ValueError(
        f"{option}: expected numbers separated by commas (rows split by /), "
        f"like 0.1,0.2/0.3,0.4, or a .npy or .json file; got {text!r}.") \
        from None
  if len(parsed) == 1:
    return np.asarray(parsed[0])
  if len({len(row) for row in parsed}) != 1:
    raise ValueError(f"{option}: the rows have different lengths "
                     f"({', '.join(str(len(r)) for r in parsed)}).")
  return np.asarray(parsed)


def _collect_values(args) -> dict:
  values: dict = {}
  if args.values is not None:
    loaded = _read_file(args.values, "--values")
    if not isinstance(loaded, dict):
      raise ValueError("--values: the JSON file must hold an object of "
                       "values by name, like {\"i\": [[0.1, 0.2], [0.3, "
                       "0.4]], \"w1\": [1, 2]}.")
    for name, value in loaded.items():
      values[_values.canonical_value_name(name)] = value
  for item in args.value:
    name, has_value, text = item.partition("=")
    if not has_value or not name.strip():
      raise ValueError(f"--value: expected NAME=VALUES like i=0.1,0.2 or "
                       f"w1=kernel.npy, got {item!r}.")
    option = f"--value {name.strip()}"
    text = text.strip()
    if text.lower().endswith((".npy", ".json")):
      value = _read_file(Path(text), option)
    else:
      value = _parse_numbers(text, option)
    values[_values.canonical_value_name(name)] = value
  return values


def _parse_wrong(items: Sequence[str], grads) -> dict:
  wrong: dict = {}
  for item in items:
    name, has_name, formula = item.partition("=")
    if has_name and re.fullmatch(r"\s*[wbi][\^]?\d+(_\d+)?\s*", name):
      wrong[name.strip()] = formula.strip()
      continue
    single = [g for g in (grads or []) if re.fullmatch(r"[wi]\d+_?\d*", g)
              and ("_" in g or g.startswith("i"))]
    if len(single) != 1:
      raise ValueError(
          f"--wrong: say which gradient it is an answer for, like "
          f"w1_1={item}; got {item!r}.")
    wrong[single[0]] = item.strip()
  return wrong


def _network_main(parser, args, explain_network) -> int:
  given = [option for option, value in (
      ("--kernel", args.kernel), ("--stride", args.stride),
      ("--padding", args.padding), ("--dilation", args.dilation),
      ("--pool", args.pool), ("--pool-stride", args.pool_stride),
      ("--pool-padding", args.pool_padding)) if value is not None]
  if given:
    verb = "describes" if len(given) == 1 else "describe"
    parser.error(f"{', '.join(given)} {verb} one convolution; with "
                 f"--layers, write them into the layer, like "
                 f"conv:3x3,stride=2,padding=1 or max_pool:2x2,stride=2")
  ascii_only = args.ascii or not _can_print_unicode(sys.stdout)
  try:
    values = _collect_values(args)
    wrong = _parse_wrong(args.wrong, args.grad)
    result = explain_network(
        args.input, args.layers, args.cost, values=values, grads=args.grad,
        wrong=wrong, seed=args.seed, brief=args.brief, ascii=ascii_only)
  except (ValueError, TypeError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  print(result, end="")
  return 0 if result.passed else 1


def main(argv: Sequence[str] | None = None) -> int:
  """Command-line entry point of ``python -m jaxconv.explain``.

  With ``--kernel`` it explains one convolution (and an optional pooling
  stage) in symbols; with ``--layers`` a small network, in symbols and
  numbers. ``python -m jaxconv.explain --help`` lists every option.

  Args:
    argv: the arguments, without the program name; ``None`` means
      ``sys.argv[1:]``.

  Returns:
    The exit status: 0 when the check passed, 1 when it failed, 2 for bad
    arguments (usage errors exit with status 2 from inside argparse).
  """
  return _main(argv, _one_layer.explain, _network.explain_network)


def _main(argv, explain, explain_network) -> int:
  """:func:`main`, with the functions that explain one convolution and a
  network passed in (the tests pass ones built with a wrong rule)."""
  parser = _build_parser()
  args = parser.parse_args(argv)
  if args.layers:
    return _network_main(parser, args, explain_network)
  network_only = [option for option, used in (
      ("--cost", args.cost is not None), ("--value", bool(args.value)),
      ("--values", args.values is not None), ("--wrong", bool(args.wrong)),
      ("--brief", args.brief)) if used]
  if network_only:
    verb = "needs" if len(network_only) == 1 else "need"
    parser.error(f"{', '.join(network_only)} {verb} --layers (a network); "
                 f"for one convolution write --layers conv:KxK")
  if args.kernel is None:
    parser.error("give --kernel (one convolution) or --layers (a network)")
  pool = pool_window = None
  if args.pool:
    pool = args.pool[0].lower()
    if pool not in ("max", "avg"):
      parser.error(f"--pool KIND must be max or avg, got {args.pool[0]!r}")
    try:
      pool_window = parse_shape(args.pool[1])
    except ValueError as error:
      parser.error(f"--pool WINDOW: {error}")
  elif args.pool_stride is not None or args.pool_padding is not None:
    parser.error("--pool-stride and --pool-padding need --pool")
  stride = 1 if args.stride is None else args.stride
  padding = "VALID" if args.padding is None else args.padding
  dilation = 1 if args.dilation is None else args.dilation
  pool_padding = "VALID" if args.pool_padding is None else args.pool_padding
  grads = args.grad
  ascii_only = args.ascii or not _can_print_unicode(sys.stdout)
  try:
    if grads and any(g.lower() == "all" for g in grads):
      wiring = _one_layer.conv_wiring(args.input, args.kernel, stride,
                                      padding, dilation)
      grads = ([f"W{q + 1}" for q in range(math.prod(wiring.kernel_shape))]
               + [f"V{j + 1}" for j in range(math.prod(wiring.input_shape))])
    result = explain(
        args.input, args.kernel, stride, padding, dilation, pool=pool,
        pool_window=pool_window, pool_stride=args.pool_stride,
        pool_padding=pool_padding, grads=grads, seed=args.seed,
        ascii=ascii_only)
  except (ValueError, TypeError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  print(result, end="")
  return 0 if result.passed else 1
