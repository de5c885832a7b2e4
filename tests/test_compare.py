"""The comparison CLI: runs, parses a case, and fails on a wrong rule."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

import jaxconv
from jaxconv import compare
from tests.rebuilt_rules import conv_with, pad_grad, pad_with

SPEC = "input=2x9x9x3 kernel=3x3x3x4 stride=2 padding=SAME"


def test_cli_accepts_a_case_and_succeeds(capsys):
  status = compare.main(["--conv", SPEC, "--conv-transpose",
                         "input=2x5x5x3 kernel=3x3x3x4 stride=2 padding=VALID",
                         "--repeats", "1"])
  out = capsys.readouterr().out
  assert status == 0
  assert "d kernel" in out and "all 2 configurations agree" in out


def test_cli_padding_modes_against_jnp_pad(capsys):
  status = compare.main([
      "--conv", SPEC + " padding_mode=reflect",
      "--conv", "input=2x9x3 kernel=4x3x4 padding=2 dilation=2 "
                "padding_mode=circular",
      "--conv", "input=2x6x5x2 kernel=2x3x2x3 padding=1 padding_mode=replicate",
      "--repeats", "0"])
  out = capsys.readouterr().out
  assert status == 0, out
  assert "reflect" in out and "circular" in out and "replicate" in out


# The exit status on a wrong rule: the case is parsed as main parses it, its
# jaxconv side replaced by a rule built in the test from jaxconv's public
# pieces (tests/rebuilt_rules.py), and run through what main runs once the
# cases are parsed (compare._run, whose return value main returns).


def _status(case, ours, capsys):
  status = compare._run([dataclasses.replace(case, ours=ours)], "float32",
                        seed=0, repeats=0)
  return status, capsys.readouterr().out


def test_cli_padding_mode_with_a_wrong_padding_gradient(capsys):
  """Replicate padding whose gradient drops the padding's cotangent instead
  of adding it to the end elements: exit status 1 and MISMATCH; the right
  fold gives 0."""
  case = compare.parse_conv_spec("input=2x6x5x2 kernel=2x3x2x3 padding=1 "
                                 "padding_mode=replicate")
  pads = ((0, 0), (1, 1), (1, 1), (0, 0))

  def padded_by(fold):
    return lambda x, w: jaxconv.conv(pad_with(pads, "replicate", fold)(x), w)

  status, out = _status(case, padded_by(pad_grad), capsys)
  assert status == 0, out
  no_edge_accumulation = lambda g, pads, mode: pad_grad(g, pads, "zeros")
  status, out = _status(case, padded_by(no_edge_accumulation), capsys)
  assert status == 1
  assert "MISMATCH" in out


def test_cli_exit_status_on_a_wrong_rule(capsys):
  """A kernel gradient 1 % too large: exit status 1 and MISMATCH; the rule
  rebuilt with the right kernel gradient gives 0."""
  case = compare.parse_conv_spec(SPEC)
  kwargs = dict(window_strides=(2, 2), padding="SAME",
                dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def kernel_grad_one_percent_off(*args, **kwargs):
    return 1.01 * jaxconv.conv_kernel_grad(*args, **kwargs)

  status, out = _status(case, conv_with(**kwargs), capsys)
  assert status == 0, out
  status, out = _status(
      case, conv_with(kernel_grad=kernel_grad_one_percent_off, **kwargs),
      capsys)
  assert status == 1
  assert "MISMATCH" in out


BAD_SPECS = [
    # (option, spec, words of the one-line message)
    ("--conv", "input=2x9x9x3 stride=2", ["kernel=", "input="]),
    ("--conv", "input=2x9x9x3 kernel=3x3x3x4 stride=two", ["stride=",
                                                           "'two'"]),
    ("--conv", "input=2x9x9x3 kernel=3x3x3x4 padding=FULL", ["padding=",
                                                             "'FULL'"]),
    ("--conv", "input=2x9x9x3 kernel3x3x3x4", ["key=value", "kernel3x3x3x4"]),
    # Well formed, but no such convolution: jaxconv's own message.
    ("--conv", "input=2x9x9x3 kernel=3x3x5x4", ["`w`", "input-feature", "5"]),
    ("--conv-transpose", "input=2x9x9x3 kernel=3x3x3x4 stride=0",
     ["strides", "positive"]),
    ("--conv", "input=2x3x3x3 kernel=3x3x3x4 padding=3 padding_mode=reflect",
     ["padding", "smaller", "reflect"]),
    ("--conv", "input=2x9x9x3 kernel=3x3x3x4 padding_mode=mirror",
     ["padding_mode", "'mirror'"]),
    ("--conv-transpose", "input=2x5x5x3 kernel=3x3x3x4 padding_mode=circular",
     ["padding_mode"]),
    ("--pool", "kind=sum input=2x9x9x3 window=3x3", ["kind", "'sum'"]),
    ("--pool", "kind=lp p=x input=2x9x9x3 window=3x3", ["p=", "'x'"]),
]


@pytest.mark.parametrize("option,spec,words", BAD_SPECS,
                         ids=[s for _, s, _ in BAD_SPECS])
def test_bad_spec_is_one_line_and_exit_2(option, spec, words, capsys):
  status = compare.main([option, spec, "--repeats", "0"])
  captured = capsys.readouterr()
  assert status == 2
  assert captured.out == ""  # nothing ran
  lines = captured.err.splitlines()
  assert len(lines) == 1, captured.err
  assert option in lines[0] and spec in lines[0]
  for word in words:
    assert word in lines[0], f"{word!r} not in {lines[0]!r}"


def test_bad_spec_after_good_ones_runs_nothing(capsys):
  status = compare.main(["--conv", SPEC, "--conv", "input=2x9x9x3 kernel=3",
                         "--repeats", "0"])
  captured = capsys.readouterr()
  assert status == 2 and captured.out == ""
  assert len(captured.err.splitlines()) == 1


def test_command_line_exit_status_2():
  """The installed command's exit status is main's return value."""
  result = subprocess.run(
      [sys.executable, "-m", "jaxconv.compare", "--conv",
       "input=2x9x9x3 kernel=3x3x5x4", "--repeats", "0"],
      capture_output=True, text=True, check=False, timeout=120)
  assert result.returncode == 2, result.stderr
  assert result.stdout == ""
  [line] = result.stderr.strip().splitlines()
  assert "bad --conv case" in line and "input-feature" in line


def test_cli_accepts_pooling_cases(capsys):
  status = compare.main([
      "--pool", "kind=max input=2x9x9x3 window=3x3 stride=2 padding=SAME",
      "--pool", "kind=avg input=2x9x9x3 window=3x3 stride=2 padding=1 "
                "count_include_pad=false",
      "--pool", "kind=lp p=3 input=2x8x8x3 window=2x2 stride=2",
      "--repeats", "0"])
  out = capsys.readouterr().out
  assert status == 0
  assert "max_pool" in out and "avg_pool" in out and "lp_pool" in out
