"""Explicit sharding: with a mesh from ``jax.make_mesh`` (Explicit axes) and
batch-sharded inputs, the forward pass and ``jit(grad)`` of every jaxconv
operation work, equal the unsharded results, and come back batch-sharded
(activations, input gradients) or replicated (kernel gradients); inside
``shard_map`` too.

The host's CPU must be split into devices before JAX starts, so the checks
run in a fresh interpreter with ``--xla_force_host_platform_device_count``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

_SCRIPT = textwrap.dedent("""
    import functools, json
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    import jaxconv
    from jaxconv import models

    jax.config.update("jax_enable_x64", True)   # float64: exact comparisons
    assert len(jax.devices()) == 2, jax.devices()
    mesh = jax.make_mesh((2,), ("batch",))
    keys = iter(jax.random.split(jax.random.key(0), 16))
    normal = lambda *shape: jax.random.normal(next(keys), shape, jnp.float64)
    nhwc = ("NHWC", "HWIO", "NHWC")
    x = normal(4, 9, 8, 6)                     # the sharded input
    w = normal(3, 3, 6, 8) * 0.3               # a replicated parameter
    results = {}

    # name -> (f(x, w), whether w is a parameter of f)
    OPS = {
        "conv": lambda a, w: jaxconv.conv(a, w, jnp.ones(8), stride=2,
                                          padding="SAME"),
        "conv, 64 features (direct algorithms)": lambda a, w: jaxconv.conv(
            jnp.tile(a, (1, 1, 1, 11)), jnp.tile(w, (1, 1, 11, 8)),
            padding="SAME"),
        "conv, circular padding": lambda a, w: jaxconv.conv(
            a, w, padding="CIRCULAR"),
        "conv_general_dilated": lambda a, w: jaxconv.conv_general_dilated(
            a, w, (1, 1), "SAME", rhs_dilation=(2, 2), dimension_numbers=nhwc),
        "grouped conv": lambda a, w: jaxconv.conv(a, w[:, :, :3], groups=2),
        "depthwise conv": lambda a, w: jaxconv.conv(a, w[:, :, :1, :6],
                                                    groups=6),
        "conv_transpose": lambda a, w: jaxconv.conv_transpose(
            a, w[..., :5], (2, 2), "SAME", dimension_numbers=nhwc),
        "conv_input_grad": lambda a, w: jaxconv.conv_input_grad(
            a[:, :7, :6, :], jnp.moveaxis(w, 2, 3)[..., :6], (4, 9, 8, 8),
            (1, 1), "VALID", dimension_numbers=nhwc),
        "conv_kernel_grad": lambda a, w: jaxconv.conv_kernel_grad(
            a, jaxconv.conv(a, w), (3, 3, 6, 8), (1, 1), "VALID",
            dimension_numbers=nhwc),
        "patches": lambda a, w: jaxconv.conv_general_dilated_patches(
            a, (3, 3), (1, 1), "SAME", dimension_numbers=nhwc),
        "local conv": lambda a, w: jaxconv.conv_general_dilated_local(
            a, jnp.tile(w.reshape(1, 1, 54, 8) / 3, (5, 3, 1, 1)), (2, 3),
            "SAME", (3, 3), dimension_numbers=nhwc),
        "pad, reflect": lambda a, w: jaxconv.pad(
            a, ((0, 0), (2, 1), (1, 2), (0, 0)), "reflect"),
        "max_pool": lambda a, w: jaxconv.max_pool(a, (3, 3), 2, "SAME"),
        "min_pool": lambda a, w: jaxconv.min_pool(a, (2, 2), 2),
        "avg_pool": lambda a, w: jaxconv.avg_pool(a, (3, 3), 2, "SAME"),
        "lp_pool": lambda a, w: jaxconv.lp_pool(a, 2.0, (2, 2), 2),
        "max_unpool": lambda a, w: jaxconv.max_unpool(
            *jaxconv.max_pool_with_indices(a, (2, 2), 2), (9, 8)),
        "adaptive_avg_pool": lambda a, w: jaxconv.adaptive_avg_pool(a, (4, 3)),
        "adaptive_max_pool": lambda a, w: jaxconv.adaptive_max_pool(a, (4, 3)),
        "global_avg_pool": lambda a, w: jaxconv.global_avg_pool(a, 2),
        "global_max_pool": lambda a, w: jaxconv.global_max_pool(a, 2),
        "batch_norm": lambda a, w: jaxconv.batch_norm(a, w[0, 0, :, 0],
                                                      w[0, 0, :, 1]),
        "dense and relu": lambda a, w: jaxconv.relu(jaxconv.dense(
            a.reshape(a.shape[0], -1), jnp.tile(w.reshape(-1, 8), (8, 1)) / 8,
            jnp.ones(8))),
    }

    def error(a, b):
      # max |a - b| / max(1, max |b|): float64 sums in another order.
      return float(jnp.max(jnp.abs(a - b)) / jnp.maximum(1, jnp.max(
          jnp.abs(b))))

    def loss(f):
      return lambda a, w: jnp.sum(jnp.sin(f(a, w)))

    def spec(array):
      return [str(e) for e in array.sharding.spec]

    with jax.set_mesh(mesh):
      xs = jax.device_put(x, NamedSharding(mesh, P("batch")))
      for name, f in OPS.items():
        y = jax.jit(f)(xs, w)
        dx, dw = jax.jit(jax.grad(loss(f), (0, 1)))(xs, w)
        ref_dx, ref_dw = jax.grad(loss(f), (0, 1))(x, w)
        results[name] = dict(
            y=spec(y), dx=spec(dx), dw=spec(dw),
            error=max(error(a, b) for a, b in (
                (y, f(x, w)), (dx, ref_dx), (dw, ref_dw))))

      # A whole model: the MNIST-1D CNN of jaxconv.models, its loss and
      # every parameter's gradient under jit(grad).
      params = models.init_mnist1d_cnn(next(keys), dtype=jnp.float64)
      signals = normal(8, 40)
      labels = jnp.arange(8) % 10
      step = lambda p, s: jax.value_and_grad(
          lambda p, s: models.loss(models.mnist1d_cnn, p, s, labels))(p, s)
      sharded = jax.device_put(signals, NamedSharding(mesh, P("batch")))
      (value, grads) = jax.jit(step)(params, sharded)
      (ref_value, ref_grads) = step(params, signals)
      results["model"] = dict(
          error=max(error(a, b) for a, b in zip(
              jax.tree.leaves((value, grads)),
              jax.tree.leaves((ref_value, ref_grads)))),
          dw=sorted({str(g.sharding.spec) for g in jax.tree.leaves(grads)}))

      # Inside shard_map the rules see each device's block of the batch; a
      # replicated kernel's gradient is the whole batch's, as for lax.
      shard_map_errors = {}
      for name in ("conv", "dense and relu", "local conv", "max_pool"):
        f = OPS[name]
        per_device = jax.shard_map(
            lambda a, w, f=f: jax.grad(loss(f), (0, 1))(a, w), mesh=mesh,
            in_specs=(P("batch"), P()), out_specs=(P("batch"), P()))
        dx, dw = jax.jit(per_device)(xs, w)
        ref_dx, ref_dw = jax.grad(loss(f), (0, 1))(x, w)
        shard_map_errors[name] = max(error(dx, ref_dx), error(dw, ref_dw))
      results["shard_map"] = shard_map_errors
    print(json.dumps(results))
    """)


@pytest.fixture(scope="module")
def results():
  out = subprocess.run(
      [sys.executable, "-c", _SCRIPT], capture_output=True, text=True,
      timeout=600, check=False, env={
          **os.environ, "JAX_PLATFORMS": "cpu",
          "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


OPERATIONS = ["conv", "conv, 64 features (direct algorithms)",
              "conv, circular padding", "conv_general_dilated",
              "grouped conv", "depthwise conv", "conv_transpose",
              "conv_input_grad", "conv_kernel_grad", "patches", "local conv",
              "pad, reflect", "max_pool", "min_pool", "avg_pool", "lp_pool",
              "max_unpool", "adaptive_avg_pool", "adaptive_max_pool",
              "global_avg_pool", "global_max_pool", "batch_norm",
              "dense and relu"]


@pytest.mark.parametrize("name", OPERATIONS)
def test_batch_sharded_operation(results, name):
  """Forward and ``jit(grad)``: the unsharded numbers, the output and the
  input gradient sharded over the batch, the parameter's gradient
  replicated."""
  result = results[name]
  assert result["error"] < 1e-10, result
  # A kernel gradient's output is a kernel: replicated like one.
  assert result["y"][0] == ("None" if name == "conv_kernel_grad" else
                            "batch"), result
  assert result["dx"][0] == "batch" and set(result["dx"][1:]) <= {"None"}
  assert set(result["dw"]) <= {"None"}, result


def test_model_step(results):
  result = results["model"]
  assert result["error"] < 1e-10, result
  assert not any(re.search(r"'batch'", spec) for spec in result["dw"]), result


def test_inside_shard_map(results):
  assert max(results["shard_map"].values()) < 1e-10, results["shard_map"]

