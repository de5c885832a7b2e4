"""experiments/benchmark_models.py: a --quick run writes a complete record
whose one-step agreement holds, and its parts (the networks, the FLOP count,
the profile's labels) are right. Timings are never checked."""

import importlib
import importlib.util
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import experiment_module

MISSING = [name for name in ("matplotlib", "optax", "flax")
           if importlib.util.find_spec(name) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"needs the experiments' packages ({MISSING} missing)")
HAS_TORCH = importlib.util.find_spec("torch") is not None




def test_quick_run_writes_a_complete_record(tmp_path):
  benchmark = experiment_module("benchmark_models")
  paths = {"json": tmp_path / "record.json", "markdown": tmp_path / "rec.md",
           "plot": tmp_path / "chart.png"}
  record = benchmark.main(["--quick", "--repeats", "2", "--profile-steps", "1",
                           *(f"--{flag}={path}" for flag, path in paths.items())])
  assert json.loads(paths["json"].read_text()) == json.loads(
      json.dumps(record))
  assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  (row,) = record["rows"]
  assert (row["network"], row["batch"]) == ("tiny_resnet", 4)
  sides = ["jaxconv", "lax"] + (["torch"] if HAS_TORCH else [])
  assert sorted(row["step_ms"]) == sorted(sides)
  for side in sides:
    assert row["step_ms"][side] > 0 and len(row["step_samples_ms"][side]) == 2
  for side in ("jaxconv", "lax"):
    assert row["compile_s"][side] > 0 and row["temp_mb"][side] is not None
  assert row["step_gflop"] > 0 and record["meta"]["matmul_gflops"] > 0
  if HAS_TORCH:
    assert row["torch_peak_growth_mb"] is not None

  # The sanity check: jaxconv's rules agree with lax's autodiff in float64,
  # and every float32 step with the float64 oracle to float32 round-off (a
  # wrong rule would be off by O(1)).
  assert sorted(row["agrees"]) == sorted(sides)
  assert all(row["agrees"].values()), (row["float64_rules"], row["error"])
  assert row["float64_rules"]["loss"] < 1e-12, row["float64_rules"]
  assert row["float64_rules"]["grads"] < 1e-10, row["float64_rules"]
  for side in sides:
    assert row["error"][side]["loss"] < 1e-5, row["error"]
    assert row["error"][side]["grads"] < 1e-4, row["error"]
  for side, check in row["difference"].items():
    assert check["loss"] < 1e-5 and check["grads"] < 1e-4, (side, check)
  assert math.isfinite(row["loss"]["float64"])

  # The profile: nearly all of each program's time lands on a layer type.
  for side in ("jaxconv", "lax"):
    profile = row["profile"][side]
    assert profile["steps"] == 1 and profile["busy_ms"] > 0
    assert {"stem", "conv3x3", "conv3x3_s2", "depthwise3x3", "conv1x1",
            "max_pool", "dense", "optimizer"} <= set(profile["scopes"]), (
                profile["scopes"])
    unscoped = sum(profile["scopes"].get("(unscoped)", {}).values())
    assert unscoped <= 0.05 * profile["busy_ms"], profile["instructions"][:5]
    assert profile["instructions"][0]["ms"] >= profile["instructions"][-1]["ms"]

  text = paths["markdown"].read_text()
  assert "python experiments/benchmark_models.py --quick" in text
  for heading in ("## Step time", "## Compile time and memory",
                  "## Agreement of one step", "## Where the step's time goes",
                  "### tiny_resnet, batch 4"):
    assert heading in text, heading
  assert "| tiny_resnet | 4 |" in text and "| NO |" not in text


def test_networks_compute_the_same_function_three_ways():
  networks = experiment_module("networks")
  network = networks.tiny_network()
  params = network.init(0)
  x = jnp.asarray(np.random.default_rng(0).standard_normal(
      (2, *network.input_shape), np.float32))
  # Compiled whole: run op by op, every new shape would compile alone.
  want = jax.jit(lambda p, x: network.apply(networks.lax_ops(), p, x))(
      params, x)
  got = jax.jit(lambda p, x: network.apply(networks.jaxconv_ops(), p, x))(
      params, x)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  if HAS_TORCH:
    import torch
    with torch.no_grad():
      got = network.apply(networks.torch_ops(), networks.torch_params(params),
                          networks.torch_input(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # The MNIST-1D CNN is jaxconv.models's own.
  import jaxconv.models
  params = networks.init_mnist1d_cnn(0)
  sequences = x.reshape(2, -1)[:, :40]
  ours = jax.jit(lambda p, x: networks.mnist1d_cnn(networks.jaxconv_ops(), p,
                                                   x[..., None]))
  np.testing.assert_allclose(
      ours(params, sequences),
      jax.jit(jaxconv.models.mnist1d_cnn)(params, sequences),
      rtol=1e-6, atol=1e-6)


def test_flops_are_counted_from_the_layers():
  benchmark = experiment_module("benchmark_models")
  network = benchmark.networks.NETWORKS["mnist1d_cnn"]
  params = jax.eval_shape(network.init, 0)           # only shapes are needed
  x = jax.ShapeDtypeStruct((3, *network.input_shape), jnp.float32)
  multiply_adds = (40 * 5 * 1 * 32 + 20 * 3 * 32 * 64 + 10 * 3 * 64 * 64
                   + 5 * 64 * 128 + 128 * 10)
  assert benchmark.forward_flops(network, params, x) == 2 * 3 * multiply_adds


def test_profile_labels_every_convolution_with_its_layer():
  """Forward and backward convolutions, including those XLA rebuilt
  without metadata to change their layout, get the scope of their layer."""
  xla_profile = experiment_module("xla_profile")
  networks = experiment_module("networks")
  ops = networks.lax_ops()

  def loss(w, head, x):
    y = networks.relu(ops, networks.conv(ops, {"w": w}, x))
    return jnp.sum(networks.conv(ops, {"w": head}, y, kind="head"))

  x = jnp.ones((2, 8, 8, 4), jnp.float32)
  w = jnp.ones((3, 3, 4, 4), jnp.float32)
  head = jnp.ones((3, 3, 4, 1), jnp.float32)
  hlo = jax.jit(jax.grad(loss, (0, 1))).lower(w, head, x).compile().as_text()
  labeller = xla_profile.Labeller(hlo)
  labels = [labeller.label(name) for name, instruction in
            labeller.instructions.items()
            if instruction.computation == labeller.entry]
  convolutions = [label for label in labels if label.kind == "convolution"]
  assert convolutions
  assert {label.scope for label in convolutions} <= {"conv3x3", "head"}
  found = {(label.scope, label.direction) for label in convolutions}
  assert {("conv3x3", "fwd"), ("conv3x3", "bwd"), ("head", "bwd")} <= found
  assert xla_profile.scope_of(
      "jit(step)/transpose(jvp(layer:conv3x3_s2))/conv_general_dilated") == (
          "conv3x3_s2", "bwd")
  assert xla_profile.scope_of("jit(step)/jvp(layer:relu)/max") == (
      "relu", "fwd")
  assert xla_profile.scope_of("jit(step)/add") is None


def test_agreement_flags_a_wrong_gradient():
  benchmark = experiment_module("benchmark_models")
  oracle = {"w": np.array([1.0, -2.0, 4.0]), "b": np.array([0.5])}
  near = {"w": oracle["w"] * (1 + 1e-12), "b": oracle["b"]}
  wrong = {"w": oracle["w"] * 1.5, "b": oracle["b"]}     # a wrong rule
  rules = benchmark.difference(2.0, wrong, 2.0, oracle)
  assert rules == {"loss": 0.0, "grads": pytest.approx(0.5), "worst": "['w']"}
  float32 = benchmark.difference(2.0 + 1e-7, near, 2.0, oracle)
  assert not benchmark.agrees(rules, float32)
  assert benchmark.agrees(benchmark.difference(2.0, near, 2.0, oracle),
                          float32)
  assert benchmark.agrees(None, float32)                 # PyTorch's
  assert not benchmark.agrees(None, benchmark.difference(2.1, near, 2.0,
                                                         oracle))
