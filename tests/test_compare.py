"""The comparison CLI: runs, parses a case, and fails on a wrong rule."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from jaxconv import compare
from jaxconv import convolution as conv_module

SPEC = "input=2x9x9x3 kernel=3x3x3x4 stride=2 padding=SAME"


def test_cli_accepts_a_case_and_succeeds(capsys):
  status = compare.main(["--conv", SPEC, "--conv-transpose",
                         "input=2x5x5x3 kernel=3x3x3x4 stride=2 padding=VALID",
                         "--repeats", "1"])
  out = capsys.readouterr().out
  assert status == 0
  assert "d kernel" in out and "all 2 configurations agree" in out


def test_cli_exit_status_on_a_wrong_rule(monkeypatch, capsys):
  real = conv_module._kernel_gradient
  monkeypatch.setattr(
      conv_module, "_kernel_gradient",
      lambda *args: real(*args) * jnp.asarray(1.01, args[0].dtype))
  status = compare.main(["--conv", SPEC, "--repeats", "0"])
  out = capsys.readouterr().out
  assert status == 1
  assert "MISMATCH" in out


def test_bad_spec_is_a_usage_error():
  with pytest.raises(SystemExit) as info:
    compare.main(["--conv", "input=2x9x9x3 stride=2"])
  assert info.value.code == 2


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
