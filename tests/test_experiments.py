"""The experiment scripts: --quick runs end to end, --compare agrees to float32
round-off, and data-parallel training equals single-device training."""

import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.helpers import EXPERIMENTS, experiment_module

# The scripts' own dependencies: the `experiments` extra of pyproject.toml.
MISSING = [name for name in ("matplotlib", "mnist1d", "sklearn", "tqdm")
           if importlib.util.find_spec(name) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"needs the experiments extra ({MISSING} missing)")



def python(arguments, cwd, env=None) -> str:
  """Runs ``python *arguments`` in a fresh interpreter; returns its stdout."""
  result = subprocess.run(
      [sys.executable, *arguments], capture_output=True, text=True,
      timeout=300, cwd=cwd,
      env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})})
  assert result.returncode == 0, result.stdout + result.stderr
  return result.stdout


def test_mnist1d_quick_run(tmp_path):
  out = python([EXPERIMENTS / "train_mnist1d.py", "--quick", "--no-progress",
                "--out", tmp_path], tmp_path)
  lines = out.strip().splitlines()
  # What happens before training is said before it happens.
  assert lines[0].startswith("mnist1d: generating the data set"), lines[0]
  assert lines[1].startswith("mnist1d: compiling the training step"), lines[1]
  assert re.fullmatch(r"mnist1d: compiled in \d+\.\d s; training 80 steps\.",
                      lines[2]), lines[2]
  last = lines[-1]
  match = re.fullmatch(r"test accuracy: (0\.\d{3}|1\.000)", last)
  assert match, last
  assert float(match.group(1)) > 0.3  # chance is 0.1; about 0.45 measured
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["train_examples"] == 4000 and results["test_examples"] == 1000
  # The main job compares custom and autodiff by default.
  assert results["grads"] == ["custom", "autodiff"]
  assert results["compare"]["max_loss_difference"] < 1e-4, results["compare"]


def test_digits_quick_compare_run(tmp_path):
  out = python([EXPERIMENTS / "train_digits.py", "--quick", "--compare",
                "--no-progress", "--out", tmp_path], tmp_path)
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["test_accuracy"] > 0.7, out  # about 0.89 measured
  # The float64 check is compiled before training, and said so; the summary
  # tells the per-step gradient check from the drift of two separate runs.
  assert "and the float64 check..." in out.splitlines()[1], out
  per_step, = [line for line in out.splitlines()
               if line.startswith("custom vs autodiff at every step")]
  assert "(the gradient check)" in per_step
  two_runs, = [line for line in out.splitlines()
               if line.startswith("custom vs autodiff as two separate runs")]
  assert "(not a gradient check)" in two_runs
  assert 'see "Two runs drift apart" in docs/experiments.md' in out
  compare = results["compare"]
  # At the same parameters the hand-derived and autodiff gradients agree to
  # float32 round-off at every step (a wrong rule differs by O(1)), and the
  # custom gradient is no further from float64 than autodiff's own.
  assert compare["max_grad_difference"] < 1e-4, compare
  assert compare["max_loss_difference"] < 1e-5, compare
  assert (compare["max_float64_error_custom"]
          <= 10 * compare["max_float64_error_autodiff"]), compare
  metrics = results["history"]["step_metrics"]
  assert len(metrics["grad_difference"]) == results["steps"] == 84
  assert len(results["history"]["float64_yardstick"]["custom"]) == 2
  assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert set(np.load(tmp_path / "params.npz").files) == {
      "conv1/w", "conv1/b", "conv2/w", "conv2/b", "dense1/w", "dense1/b",
      "dense2/w", "dense2/b"}


def test_sharded_training_equals_single_device(tmp_path):
  # The device count must be fixed before jax starts: a fresh interpreter.
  code = textwrap.dedent(f"""
      import sys
      sys.path.insert(0, {str(EXPERIMENTS)!r})
      import jax, numpy as np
      import train_digits
      assert len(jax.devices()) == 4, jax.devices()
      params = {{}}
      for n in (1, 4):
        results = train_digits.main(
            ["--max-steps", "5", "--devices", str(n), "--no-progress",
             "--out", f"{tmp_path}/devices{{n}}"])
        params[n] = results["params"]
      for leaf in jax.tree.leaves(params[4]):
        assert len(leaf.sharding.device_set) == 4, leaf.sharding
        assert leaf.sharding.is_fully_replicated, leaf.sharding
      init = train_digits.models.init_lenet(jax.random.key(0))
      for one, four, start in zip(*map(jax.tree.leaves,
                                       (params[1], params[4], init))):
        one, four, start = map(np.asarray, (one, four, start))
        scale = np.abs(one).max()
        assert np.abs(one - start).max() > 1e-3 * scale  # training moved it
        assert np.abs(one - four).max() <= 1e-5 * scale, (one, four)
      print("sharded == single device")
      """)
  out = python(["-c", code], tmp_path, env={
      "XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
  assert "sharded == single device" in out



def test_too_many_devices_is_explained():
  training = experiment_module("training")
  with pytest.raises(SystemExit, match="xla_force_host_platform_device_count"):
    training._mesh(64, 64)


def test_benchmark_step_computes_the_forward_pass():
  # A convolution is linear: its gradients do not need its output, so a step
  # that returned only the gradients would let XLA drop the forward pass and
  # time the backward alone. Both contenders' compiled steps must hold all
  # three convolutions and return the output with the gradients.
  import functools

  import jax
  import jax.numpy as jnp
  benchmark = experiment_module("benchmark")
  layer = benchmark.QUICK[-1]                 # a dense 3x3 layer
  x_shape, w_shape = layer.shapes(2)
  x = jax.random.normal(jax.random.key(0), x_shape)
  w = jax.random.normal(jax.random.key(1), w_shape)
  ours, theirs = benchmark.functions(layer)
  cotangent = jax.random.normal(jax.random.key(2),
                                jax.eval_shape(theirs, x, w).shape)
  for f in (ours, theirs):
    step = jax.jit(functools.partial(benchmark.forward_backward, f))
    hlo = step.lower(x, w, cotangent).compile().as_text()
    assert len(re.findall(r"= \w+\[[\d,]*\]\S* convolution\(", hlo)) == 3
    # The cotangent is a parameter of the program, not a constant in it.
    entry = hlo[hlo.index("ENTRY"):]
    assert len(re.findall(r"= \S+ parameter\(\d+\)", entry)) == 3
    y, (dx, dw) = step(x, w, cotangent)
    np.testing.assert_allclose(y, theirs(x, w), rtol=1e-5, atol=1e-5)
    want = jax.grad(lambda x, w: jnp.sum(theirs(x, w) * cotangent),
                    (0, 1))(x, w)
    np.testing.assert_allclose(dx, want[0], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(dw, want[1], rtol=1e-5, atol=1e-4)


def test_benchmark_quick_run(tmp_path):
  python([EXPERIMENTS / "benchmark.py", "--quick", "--no-torch",
          "--repeats", "3", "--json", tmp_path / "rows.json",
          "--markdown", tmp_path / "table.md"], tmp_path)
  results = json.loads((tmp_path / "rows.json").read_text())
  rows = results["rows"]
  assert [row["layer"] for row in rows] == [
      layer.name for layer in experiment_module("benchmark").QUICK]
  for row in rows:
    assert len(row["algorithms"].split("/")) == 3, row
    for key in ("jaxconv_fwd_ms", "lax_fwd_ms", "jaxconv_fwdbwd_ms",
                "lax_fwdbwd_ms", "jaxconv_gflops", "ratio_fwdbwd"):
      assert row[key] > 0, (key, row)
  assert results["matmul_gflops"] > 0
  table = (tmp_path / "table.md").read_text()
  # Header, separator and one line per row.
  assert table.count("\n| ") == len(rows) + 2
  assert "geometric mean" in table
  # The machine, with the policy jaxconv chose for it, and the command.
  import jaxconv
  assert re.search(r"^Measured \S+ on .+\(.+, \d+ cores\), .*jaxconv policy "
                   rf"{jaxconv.host_policy().name} \(the host's\)", table,
                   re.M), table
  assert "Command: `python experiments/benchmark.py --quick" in table
  # ... and which kernel XLA runs 2-D convolutions with.
  assert results["xla_convolutions"] in ("ynnpack", "eigen")
  assert "XLA's 2-D convolutions: " in table


def test_benchmark_without_ynnpack_convolutions(tmp_path):
  """--no-ynnpack-convolutions turns XLA's YNNPACK convolutions off for the
  process (XLA_FLAGS, before XLA starts), for lax and jaxconv alike: the
  policy's probe sees it, and the table says so."""
  python([EXPERIMENTS / "benchmark.py", "--quick", "--no-torch",
          "--repeats", "1", "--only", "3x3", "--no-ynnpack-convolutions",
          "--json", tmp_path / "rows.json", "--markdown", tmp_path / "t.md"],
         tmp_path)
  assert json.loads((tmp_path / "rows.json").read_text())[
      "xla_convolutions"] == "eigen"
  assert "XLA's 2-D convolutions: Eigen's" in (tmp_path / "t.md").read_text()


_FAULTS_AFTER_FREE = """
import resource, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import benchmark
if sys.argv[2] == "keep":
  assert benchmark.keep_freed_memory()
for _ in range(3):      # 100 MB allocated, filled and freed, three times
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  a = np.ones(25_000_000, np.float32)
  del a
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="glibc's mallopt")
def test_keep_freed_memory_stops_fresh_page_faults():
  # --keep-freed-memory: a large buffer freed and allocated again is served
  # from memory already mapped, so filling it faults no page in; with
  # glibc's defaults it is mapped afresh each time.
  def faults(mode):
    out = subprocess.run([sys.executable, "-c", _FAULTS_AFTER_FREE,
                          str(EXPERIMENTS), mode], check=True,
                         capture_output=True, text=True).stdout
    return int(out.split()[-1])
  assert faults("keep") < 10
  assert faults("default") > 100


def test_benchmark_chunks_times_the_chunk_sizes_it_names(tmp_path):
  benchmark_chunks = experiment_module("benchmark_chunks")
  layer = next(layer for layer in benchmark_chunks.benchmark.SUITE
               if layer.name.startswith("1-D"))
  for chunk, count in ((1, 3), (2, 2), (None, 1)):
    compiled = benchmark_chunks.programs(layer, 3, chunk)
    for name, (f, _) in compiled.items():
      hlo = f.as_text()
      found = len(re.findall(r"= \w+\[[\d,]*\]\S* convolution\(", hlo))
      assert found == count, (chunk, name, found)
  out = python([EXPERIMENTS / "benchmark_chunks.py", "--only", "1-D",
                "--batch", "3", "--repeats", "1"], tmp_path)
  rows = out.strip().splitlines()[1:]
  assert [row.split("  ")[0] for row in rows] == [layer.name] * 3
  for row in rows:
    cells = row.rsplit("  ", 1)[-1].split(" / ")
    assert len(cells) == 5 and cells[2] == cells[3] == "-", row


def test_benchmark_algorithms_compiles_the_variants_it_names(capsys):
  """Each variant is traced under its algorithm and policy: forced "folded"
  leaves 1-D convolutions, one per kernel row; the host's policy keeps this
  small layer whole until its folding thresholds are lowered (and, without
  the "stack" option, folds it one kernel row at a time)."""
  import jaxconv
  bench = experiment_module("benchmark_algorithms")
  variant = bench.parse_variant("auto:fold_min_elements=inf,chunk_samples=2")
  assert variant.algorithm == "auto" and variant.compiler_options is None
  assert variant.policy.thresholds.fold_min_elements == float("inf")
  assert variant.policy.thresholds.chunk_samples == 2
  assert variant.policy.options == jaxconv.host_policy().options
  eigen = bench.parse_variant("auto:chunk_samples=2,stack=1/eigen")
  assert eigen.compiler_options == bench.EIGEN
  assert not eigen.policy.xla_convolutions_in_ynnpack
  assert eigen.policy.has("stack")
  generic = bench.parse_variant("xla:preset=generic,fold=1")
  assert generic.policy.name == "generic"
  assert generic.policy.options == ("fold",)
  for bad in ("fastest", "auto:fold_min_elements", "auto:no_such_setting=1",
              "auto:choose_algorithm=1", "auto:fold_min_elements=many",
              "auto:preset=fast"):
    with pytest.raises(ValueError, match="--variant"):
      bench.parse_variant(bad)
  layer = next(layer for layer, batch in bench.SMALL
               if layer.spatial == (16, 16))
  for text, count, rank in (("xla", 1, 4), ("folded", 3, 3),
                            ("auto:preset=intel-avx512", 1, 4),
                            ("auto:preset=intel-avx512,fold_min_elements=0,"
                             "fold_min_features=0,stack=0", 3, 3)):
    compiled = bench.pass_programs(layer, 2, bench.parse_variant(text))
    for name, (f, _) in compiled.items():
      shapes = re.findall(r"= \w+\[([\d,]*)\]\S* convolution\(", f.as_text())
      assert len(shapes) == count, (text, name, shapes)
      assert all(len(s.split(",")) == rank for s in shapes), (text, shapes)
  # "/eigen": compiled without YNNPACK's convolutions, so XLA's own kernel
  # is left in the program.
  for name, (f, _) in bench.pass_programs(
      layer, 2, bench.parse_variant("xla/eigen")).items():
    assert "ynn_fusion" not in f.as_text(), name
    assert re.search(r" convolution\(", f.as_text()), name

  bench.main(["--small", "--only", "@16", "--batch", "8", "--repeats", "1",
              "--variant", "xla", "--variant", "folded"])
  rows = capsys.readouterr().out.strip().splitlines()[1:]
  assert len(rows) == 3, rows
  for row, name in zip(rows, bench.PASSES):
    assert name in row and row.endswith("(xla / folded)"), row
    assert re.search(r"  [\d.]+ / [\d.]+  ratio [\d.]+  ", row), row
  bench.main(["--step", "--only", "1-D", "--batch", "2", "--repeats", "1",
              "--variant", "auto", "--variant", "xla"])
  (row,) = capsys.readouterr().out.strip().splitlines()[1:]
  assert re.search(r"ratio [\d.]+  temp MB [\d.]+ / [\d.]+  faults \d+ / \d+  "
                   r"\(xla/xla/xla \| xla/xla/xla\)$", row), row
  # --strided: the input gradient of a 3x3 stride-2 layer without and with
  # the "phase_few_taps" option.
  bench.main(["--strided", "--only", "32->32", "--batch", "1", "--repeats",
              "1", "--variant", "auto:phase_few_taps=0", "--variant",
              "auto:phase_few_taps=1"])
  rows = capsys.readouterr().out.strip().splitlines()[1:]
  assert len(rows) == 3, rows
  assert "input gradient" in rows[1] and rows[1].endswith("(xla / phased)"), (
      rows[1])


def test_interleaved_rounds_rotate_and_keep_apart_groups_apart():
  """Each round calls every contender once, in a rotated order; contenders
  kept apart (PyTorch) run in rounds of their own after all the others."""
  timing = experiment_module("timing")
  calls = []
  contenders = {name: (lambda name=name: calls.append(name))
                for name in ("a", "b", "torch_x", "c")}
  result = timing.interleaved(contenders, 3, warmup=0,
                              apart=lambda name: name.startswith("torch"))
  assert list(result) == ["a", "b", "torch_x", "c"]
  assert calls[:9] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
  assert calls[9:] == ["torch_x"] * 3
  assert all(len(t.samples) == 3 for t in result.values())
