"""`python -m jaxconv.explain`: the symbolic equations; its check bites."""

from __future__ import annotations

import functools
import subprocess
import sys

import pytest

from jaxconv import explain
from jaxconv.explain import _cli, _network, _one_layer

CLASSIC_FORWARD = [
    "G1 = V1·W1 + V2·W2 + V4·W3 + V5·W4",
    "G2 = V2·W1 + V3·W2 + V5·W3 + V6·W4",
    "G3 = V4·W1 + V5·W2 + V7·W3 + V8·W4",
    "G4 = V5·W1 + V6·W2 + V8·W3 + V9·W4",
]


def test_classic_forward_equations():
  """A 3x3 input and a 2x2 kernel give exactly the four G equations."""
  assert explain.forward_equations((3, 3), (2, 2)) == CLASSIC_FORWARD


def test_classic_weight_gradient_sums_over_the_four_uses():
  """dE/dW1 = sum over the four outputs of their delta times the input W1
  touched there (eq. 9)."""
  lines = explain.gradient_equations((3, 3), (2, 2), ["W1", "W4"])
  assert lines == [
      "∂E/∂W1 = ∂E/∂G1·V1 + ∂E/∂G2·V2 + ∂E/∂G3·V4 + ∂E/∂G4·V5",
      "∂E/∂W4 = ∂E/∂G1·V5 + ∂E/∂G2·V6 + ∂E/∂G3·V8 + ∂E/∂G4·V9",
  ]


def test_centre_input_gradient_meets_the_rotated_kernel():
  """V5 is read by all four windows, by W4, W3, W2, W1 in turn: the delta
  meets the kernel rotated by 180 degrees (eq. 14)."""
  assert explain.gradient_equations((3, 3), (2, 2), ["V5", "V1"]) == [
      "∂E/∂V5 = ∂E/∂G1·W4 + ∂E/∂G2·W3 + ∂E/∂G3·W2 + ∂E/∂G4·W1",
      "∂E/∂V1 = ∂E/∂G1·W1",
  ]


def test_command_line_prints_the_classic_case_and_its_check():
  result = subprocess.run(
      [sys.executable, "-m", "jaxconv.explain", "--input", "3x3", "--kernel",
       "2x2", "--grad", "W1", "--grad", "V5"],
      capture_output=True, text=True, encoding="utf-8", check=False)
  assert result.returncode == 0, result.stderr
  lines = [line.strip() for line in result.stdout.splitlines()]
  printed_forward = [line for line in lines if line.startswith("G")
                     and "=" in line]
  assert printed_forward == CLASSIC_FORWARD
  assert "∂E/∂W1 = ∂E/∂G1·V1 + ∂E/∂G2·V2 + ∂E/∂G3·V4 + ∂E/∂G4·V5" in lines
  assert "∂E/∂V5 = ∂E/∂G1·W4 + ∂E/∂G2·W3 + ∂E/∂G3·W2 + ∂E/∂G4·W1" in lines
  assert "Check passed" in result.stdout


def test_stride_and_padding_case_verifies():
  """Stride 2 and padding 1 on a 4x4 input: the corner outputs see a single
  input through the opposite corner weight, and the check passes."""
  result = explain.explain((4, 4), (2, 2), stride=2, padding=1,
                           grads=["W1", "V6"])
  assert result.passed and result.max_difference < 1e-12
  assert result.forward[0] == "G1 = V1·W4"
  assert result.forward[4] == "G5 = V6·W1 + V7·W2 + V10·W3 + V11·W4"
  assert "  ∂E/∂W1 = ∂E/∂G5·V6 + ∂E/∂G6·V8 + ∂E/∂G8·V14 + ∂E/∂G9·V16" in (
      result.backward)
  assert "  ∂E/∂V6 = ∂E/∂G5·W1" in result.backward
  assert "padded input" in "\n".join(result.grids)


@pytest.mark.parametrize("case", [
    dict(input_shape=(5,), kernel_shape=(3,), stride=2, padding=[(0, 1)],
         dilation=2),
    dict(input_shape=(4, 5), kernel_shape=(3, 2), stride=(2, 1),
         padding="SAME"),
    dict(input_shape=(5, 5), kernel_shape=(2, 2), stride=2, padding="VALID"),
    dict(input_shape=(5, 4), kernel_shape=(2, 2), padding=[(-1, 1), (2, 0)],
         dilation=(1, 2)),
    dict(input_shape=(3, 3, 3), kernel_shape=(2, 2, 2), padding="SAME_LOWER"),
])
def test_geometries_verify(case):
  assert explain.explain(**case).passed


def test_untouched_inputs_have_zero_gradient():
  """With stride 2, a length-5 input and a length-2 kernel, V5 is read by no
  window (the stride remainder r of eq. 4)."""
  lines = explain.gradient_equations((5,), (2,), ["V5", "V4"], stride=2)
  assert lines == ["∂E/∂V5 = 0 (no window reads it)", "∂E/∂V4 = ∂E/∂G2·W2"]


def test_average_pooling_spreads():
  result = explain.explain((3, 3), (2, 2), pool="avg", pool_window=(2, 2),
                           grads=["W1"])
  assert result.passed
  assert result.forward[-1] == "P1 = (G1 + G2 + G3 + G4)/4"
  assert "  ∂E/∂G3 = ∂E/∂P1/4" in result.pool_backward
  assert result.backward[-1] == "  ∂E/∂W1 = ∂E/∂P1·(V1 + V2 + V4 + V5)/4"


def test_max_pooling_routes_to_the_winner():
  result = explain.explain((4, 4), (2, 2), pool="max", pool_window=(2, 2),
                           pool_stride=1, grads=["W1"], seed=3)
  assert result.passed
  assert result.forward[9] == "P1 = max(G1, G2, G4, G5)"
  assert "  ∂E/∂G5 = [G5 wins P1]·∂E/∂P1 + [G5 wins P2]·∂E/∂P2 + " \
         "[G5 wins P3]·∂E/∂P3 + [G5 wins P4]·∂E/∂P4" in result.pool_backward
  # Whatever the winners, dE/dW1 has one V per window.
  assert result.backward[-1].count("∂E/∂P") == 4


def _dropping_one(wiring, variable, index):
  """Eqs. (9) and (12) with the first product of every expansion dropped."""
  return _one_layer._conv_gradient_terms(wiring, variable, index)[1:]


def test_check_catches_a_wrong_equation(capsys):
  """The explainer run with a wrong rule (one product dropped from every
  expansion, handed to it as a value): the check fails, and the command
  line prints "Check FAILED" and exits with status 1. The same entry points
  with the right rule pass."""
  wrong = functools.partial(_one_layer._explain, _dropping_one)
  right = functools.partial(_one_layer._explain,
                            _one_layer._conv_gradient_terms)
  defaults = dict(stride=1, padding="VALID", dilation=1, pool=None,
                  pool_window=None, pool_stride=None, pool_padding="VALID",
                  grads=None, seed=0, ascii=False)
  assert right((3, 3), (2, 2), **defaults).passed
  result = wrong((3, 3), (2, 2), **defaults)
  assert not result.passed
  assert result.check.startswith("Check FAILED")
  argv = ["--input", "3x3", "--kernel", "2x2"]
  assert _cli._main(argv, right, _network.explain_network) == 0
  assert "Check passed" in capsys.readouterr().out
  assert _cli._main(argv, wrong, _network.explain_network) == 1
  assert "Check FAILED" in capsys.readouterr().out


def test_ascii_output(capsys):
  assert explain.main(["--input", "3x3", "--kernel", "2x2", "--ascii",
                       "--grad", "W1"]) == 0
  out = capsys.readouterr().out
  assert "G1 = V1*W1 + V2*W2 + V4*W3 + V5*W4" in out
  assert "dE/dW1 = dE/dG1*V1 + dE/dG2*V2 + dE/dG3*V4 + dE/dG4*V5" in out


@pytest.mark.parametrize("argv, message", [
    (["--input", "3x3", "--kernel", "2x2", "--grad", "W9"], "W1..W4"),
    (["--input", "3x3", "--kernel", "2x2", "--grad", "X1"], "'W1'"),
    (["--input", "2x2", "--kernel", "3x3"], "no output"),
    (["--input", "3x3", "--kernel", "2"], "same number"),
])
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys):
  assert explain.main(argv) == 2
  assert message in capsys.readouterr().err


def test_bad_pool_kind_is_a_usage_error():
  with pytest.raises(SystemExit) as error:
    explain.main(["--input", "3x3", "--kernel", "2x2", "--pool", "sum", "2x2"])
  assert error.value.code == 2


def test_average_pooling_with_padding_counts_the_padding():
  """With padding and count_include_pad (the default), a corner window holds
  one real output but still divides by 4."""
  result = explain.explain((4, 4), (2, 2), pool="avg", pool_window=(2, 2),
                           pool_padding=1, grads=["W1"])
  assert result.passed
  assert "P1 = (G1)/4" in result.forward


def test_pool_stride_defaults_to_the_library_default():
  """Like jaxconv.max_pool and avg_pool, the pooling stride defaults to 1:
  a 2x2 window over a 3x3 convolution output gives 2x2 pooled outputs;
  stride 2 gives one."""
  overlapping = explain.explain((4, 4), (2, 2), pool="max",
                                pool_window=(2, 2), grads=["W1"])
  assert overlapping.passed
  assert "Then max pooling: window 2x2, stride 1x1" in overlapping.header[1]
  assert [line for line in overlapping.forward if line.startswith("P")] == [
      "P1 = max(G1, G2, G4, G5)", "P2 = max(G2, G3, G5, G6)",
      "P3 = max(G4, G5, G7, G8)", "P4 = max(G5, G6, G8, G9)"]
  side_by_side = explain.explain((4, 4), (2, 2), pool="max",
                                 pool_window=(2, 2), pool_stride=2)
  assert [line for line in side_by_side.forward if line.startswith("P")] == [
      "P1 = max(G1, G2, G4, G5)"]
