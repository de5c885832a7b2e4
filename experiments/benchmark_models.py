"""Benchmark: training steps of standard CNNs, jaxconv against lax and PyTorch.

Each network of ``experiments/networks.py`` is written once and run three
ways, from the same initial parameters and the same batch:

* **jaxconv**: its layers from jaxconv, every gradient a hand-derived rule;
* **lax**: the same network from ``lax.conv_general_dilated``, Flax's pooling,
  ``jax.nn.relu`` and optax's cross-entropy, differentiated by ``jax.grad``;
* **torch**: the same network in PyTorch on the CPU, channels first (NCHW,
  PyTorch's default memory format).

A step is a whole training step: forward, backward and an SGD update with
momentum 0.9 (``optax.sgd`` / ``torch.optim.SGD``), float32. For each network
and batch size the script reports, measured in one run:

* step time: medians over interleaved rounds (``timing.interleaved``), and
  the ratios jaxconv / lax and jaxconv / torch (below 1: jaxconv is faster);
* compile time of the jitted step (tracing and lowering included) and the
  temporary memory XLA reports for it, jaxconv and lax;
* PyTorch's memory: how much a fresh process's peak resident memory grows
  over three steps, after its parameters and batch exist;
* GFLOP/s of the jaxconv step: the convolutions' and dense layers' FLOPs,
  counted from the network's operations (forward 2 x multiply-adds, step
  3 x forward), against the machine's float32 matrix-product rate;
* agreement, so that a wrong step is never timed unnoticed: jaxconv's step
  and the lax twin's, both in float64, must give the same loss and
  gradients (a wrong rule is off by O(1), float64 round-off by far less
  than the tolerance); and the float32 steps of all three, from the same
  parameters, the same loss as the float64 oracle. The errors of the
  float32 gradients against the oracle are reported too (after one step
  from zero momentum the momentum buffer is the gradient): float32
  round-off, which ReLU and max pooling can turn into a different but
  equally valid subgradient where a rounding flips which input wins;
* where the time goes: an XLA profile of a few steps of each JAX program,
  read back per layer type (``experiments/xla_profile.py``).

Writes a Markdown record, a JSON file and a chart.

    python experiments/benchmark_models.py                  # the full record
    python experiments/benchmark_models.py --only resnet18 --batch 32
    python experiments/benchmark_models.py --quick          # a tiny network
    python experiments/benchmark_models.py --only mobilenet --trace-dir /tmp/t
    python experiments/benchmark_models.py --no-profile --no-torch

The full record is written to ``docs/benchmarks/models-<machine>.md``, every
figure to ``experiments/results/models-<machine>.json`` and the chart to
``docs/figures/benchmark-models-<machine>.png``, ``<machine>`` being the
host's CPU class (``timing.cpu_class``); PyTorch's times are only meaningful
on an otherwise idle machine (its OpenMP threads lose most of their speed
when another process takes a core).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import json
import math
import os
import pickle
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import networks
import timing
import xla_profile

REPOSITORY = Path(__file__).resolve().parent.parent
# Named for the host's CPU class (timing.cpu_class), one record per machine.
DEFAULT_MARKDOWN = (REPOSITORY / "docs" / "benchmarks"
                    / f"models-{timing.cpu_class()}.md")
DEFAULT_JSON = (REPOSITORY / "experiments" / "results"
                / f"models-{timing.cpu_class()}.json")
DEFAULT_PLOT = (REPOSITORY / "docs" / "figures"
                / f"benchmark-models-{timing.cpu_class()}.png")

LEARNING_RATE = 0.01
MOMENTUM = 0.9
# jaxconv's float64 step against the lax twin's: a wrong rule is off by
# O(1), float64 round-off (even amplified by batch norm over a small batch)
# by orders of magnitude less than this.
FLOAT64_TOLERANCE = 1e-6
# A float32 step's loss against the float64 oracle: a different network is
# off by O(1), float32 round-off by about 1e-7.
LOSS_TOLERANCE = 1e-4
TORCH_MEMORY_STEPS = 3
PROFILE_INSTRUCTIONS_KEPT = 40
CONTENDERS = ("jaxconv", "lax", "torch")


# --- The step. ----------------------------------------------------------------


def optimizer() -> optax.GradientTransformation:
  return optax.sgd(LEARNING_RATE, momentum=MOMENTUM)


def make_step(network: networks.Network, ops: networks.Ops, transform):
  """A training step ``(params, state, x, labels) -> (params, state, loss)``
  of ``network`` with the layers of ``ops``: forward, ``jax.value_and_grad``
  and the optax update (scoped ``layer:optimizer`` in profiles)."""

  def loss(params, x, labels):
    return networks.loss(ops, network.apply(ops, params, x), labels)

  def step(params, state, x, labels):
    value, grads = jax.value_and_grad(loss)(params, x, labels)
    with jax.named_scope(networks.SCOPE_PREFIX + "optimizer"):
      updates, state = transform.update(grads, state, params)
      params = optax.apply_updates(params, updates)
    return params, state, value

  return step


def initial_parameters(network: networks.Network):
  """The network's parameters, from a fixed seed."""
  return network.init(0)


def batch_of(network: networks.Network, batch: int):
  """A batch of standard normal inputs and random labels, from a fixed
  seed."""
  rng = np.random.default_rng(1)
  x = rng.standard_normal((batch, *network.input_shape), np.float32)
  labels = rng.integers(0, network.classes, batch, np.int32)
  return jnp.asarray(x), jnp.asarray(labels)


def policy_context(name: str | None):
  """The context in which jaxconv's step is traced: the default policy, or
  ``name``, a policy preset (``jaxconv.use_policy``) or an algorithm forced
  on every convolution (``jaxconv.use_algorithm``)."""
  import jaxconv
  if name is None:
    return contextlib.nullcontext()
  presets = getattr(jaxconv, "PRESETS", {})
  if name in presets and hasattr(jaxconv, "use_policy"):
    return jaxconv.use_policy(name)
  if name in getattr(jaxconv, "ALGORITHMS", ()):
    return jaxconv.use_algorithm(name)
  known = sorted(presets) + list(getattr(jaxconv, "ALGORITHMS", ()))
  raise ValueError(f"--policy must be one of {known}, got {name!r}.")


def default_policy() -> str:
  """The name of the policy jaxconv picks for this machine."""
  import jaxconv
  host_policy = getattr(jaxconv, "host_policy", None)
  return f"{host_policy().name!r} (the host's)" if host_policy else "default"


# --- FLOPs. -------------------------------------------------------------------


def _subjaxprs(value):
  if hasattr(value, "eqns"):
    yield value
  elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
    yield value.jaxpr
  elif isinstance(value, (tuple, list)):
    for item in value:
      yield from _subjaxprs(item)


def _multiply_adds(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      out = eqn.outvars[0].aval.shape
      kernel = eqn.invars[1].aval.shape
      rhs_spec = eqn.params["dimension_numbers"].rhs_spec
      taps = math.prod(kernel[d] for d in rhs_spec[2:])
      total += math.prod(out) * taps * kernel[rhs_spec[1]]
    elif name == "dot_general":
      (contracting, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += (math.prod(eqn.outvars[0].aval.shape)
                * math.prod(lhs[d] for d in contracting))
    for value in eqn.params.values():
      for inner in _subjaxprs(value):
        total += _multiply_adds(inner)
  return total


def forward_flops(network: networks.Network, params, x) -> float:
  """2 x the multiply-adds of the convolutions and dense layers of one
  forward pass, counted from the lax twin's operations."""
  ops = networks.lax_ops()
  jaxpr = jax.make_jaxpr(lambda p, x: network.apply(ops, p, x))(params, x)
  return 2.0 * _multiply_adds(jaxpr.jaxpr)


# --- Agreement. -----------------------------------------------------------------


def gradients_of(state):
  """The momentum buffer: after one step from zero momentum, the gradient."""
  return optax.tree_utils.tree_get(state, "trace")


def float64_gradients(network: networks.Network, ops: networks.Ops, params,
                      x, labels):
  """The loss and gradients of ``network`` with the layers of ``ops``, in
  float64 (the lax twin's are the oracle)."""

  def loss(params, x):
    return networks.loss(ops, network.apply(ops, params, x), labels)

  with jax.enable_x64(True):
    params, x = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), (params, x))
    value, grads = jax.jit(jax.value_and_grad(loss))(params, x)
    return float(value), jax.tree.map(np.asarray, grads)


def difference(loss, grads, reference_loss, reference_grads) -> dict:
  """How far a step's loss and gradients are from a reference's: the
  relative loss difference, and the largest difference of any gradient
  relative to that gradient's largest entry (and which gradient)."""
  worst, worst_path = 0.0, ""
  for (path, got), want in zip(
      jax.tree_util.tree_leaves_with_path(grads),
      jax.tree.leaves(reference_grads)):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = max(float(np.abs(want).max()), 1e-30)
    gap = float(np.abs(got - want).max()) / scale
    if gap > worst:
      worst, worst_path = gap, jax.tree_util.keystr(path)
  loss_difference = abs(float(loss) - float(reference_loss)) / max(
      abs(float(reference_loss)), 1e-30)
  return {"loss": loss_difference, "grads": worst, "worst": worst_path}


def agrees(rules: dict | None, error: dict) -> bool:
  """Whether a step agrees: its float32 loss is the oracle's to float32
  round-off (``error``, from :func:`difference`) and, for jaxconv, its
  float64 loss and gradients are lax's (``rules``, ``None`` otherwise)."""
  rules_agree = rules is None or (rules["loss"] <= FLOAT64_TOLERANCE
                                  and rules["grads"] <= FLOAT64_TOLERANCE)
  return bool(rules_agree and error["loss"] <= LOSS_TOLERANCE)


# --- PyTorch. -------------------------------------------------------------------


def torch_step(network: networks.Network, params, x, labels):
  """PyTorch's step of ``network`` from ``params`` and the gradients of its
  first call: ``(step, gradients)``, ``gradients()`` in JAX's layouts."""
  import torch
  ops = networks.torch_ops()
  tensors = networks.torch_params(params)
  sgd = torch.optim.SGD(jax.tree.leaves(tensors), lr=LEARNING_RATE,
                        momentum=MOMENTUM)
  inputs = networks.torch_input(x)
  targets = torch.tensor(np.asarray(labels), dtype=torch.int64)

  def step():
    sgd.zero_grad(set_to_none=True)
    value = networks.loss(ops, network.apply(ops, tensors, inputs), targets)
    value.backward()
    sgd.step()
    return value

  def gradients():
    return jax.tree.map(
        lambda p: networks.from_torch_layout(
            sgd.state[p]["momentum_buffer"].numpy()), tensors)

  return step, gradients


def _status_kib(field: str) -> int:
  """A memory figure of this process from ``/proc/self/status``, KiB."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  raise OSError(f"no {field} in /proc/self/status")


def torch_peak_growth(path: str, name: str, steps: int) -> int:
  """Bytes by which this process's peak resident memory grows over
  ``steps`` PyTorch steps of network ``name``, from the parameters and batch
  pickled at ``path``: the peak (``VmHWM``, first reset to the resident
  memory through ``/proc/self/clear_refs``) less the resident memory before
  the steps. (``getrusage``'s peak will not do: after ``exec`` it starts
  from the parent's.)"""
  with open(path, "rb") as f:
    params, x, labels = pickle.load(f)
  step, _ = torch_step(networks.by_name(name), params, x, labels)
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")                   # the peak resident memory := the current
  before = _status_kib("VmRSS")
  for _ in range(steps):
    step()
  return (_status_kib("VmHWM") - before) * 1024


_TORCH_MEMORY = """
import sys
sys.path.insert(0, sys.argv[1])
import benchmark_models
print(benchmark_models.torch_peak_growth(sys.argv[2], sys.argv[3],
                                         int(sys.argv[4])))
"""


def torch_memory(network: networks.Network, params, x, labels) -> int | None:
  """:func:`torch_peak_growth` in a fresh interpreter; ``None`` where it
  fails (it needs Linux's ``/proc``)."""
  if not sys.platform.startswith("linux"):
    return None
  with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "inputs.pkl")
    with open(path, "wb") as f:
      pickle.dump(jax.tree.map(np.asarray, (params, x, labels)), f)
    result = subprocess.run(
        [sys.executable, "-c", _TORCH_MEMORY, str(Path(__file__).parent),
         path, network.name, str(TORCH_MEMORY_STEPS)],
        capture_output=True, text=True, check=False,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  if result.returncode != 0:
    print(result.stderr[-2000:], file=sys.stderr)
    return None
  return int(result.stdout.split()[-1])


# --- One network at one batch size. ---------------------------------------------


def _trimmed(profile: dict) -> dict:
  return {**profile,
          "instructions": profile["instructions"][:PROFILE_INSTRUCTIONS_KEPT]}


# Compile times vary by a third from one compile to the next: each step is
# compiled this many times, taking turns, and the median is reported.
COMPILES = 3


def compile_steps(network: networks.Network, transform, arguments, *,
                  policy: str | None, jaxconv_first: bool) -> dict:
  """The jaxconv and lax steps compiled for ``arguments``, each with its
  temporary memory and its median compile time over ``COMPILES`` compiles
  (``timing.Compiled``), jaxconv's traced under ``policy``."""
  ops = {"jaxconv": networks.jaxconv_ops(), "lax": networks.lax_ops()}
  compiled: dict = {}
  seconds: dict = {"jaxconv": [], "lax": []}
  for _ in range(COMPILES):
    for side in (("jaxconv", "lax") if jaxconv_first else ("lax", "jaxconv")):
      context = (policy_context(policy) if side == "jaxconv"
                 else contextlib.nullcontext())
      # A step made afresh each time, so that no cached trace is reused.
      step = make_step(network, ops[side], transform)
      with context:
        program = timing.compile_program(step, *arguments)
      compiled.setdefault(side, program)
      seconds[side].append(program.compile_seconds)
  return {side: dataclasses.replace(compiled[side], compile_seconds=float(
      np.median(seconds[side]))) for side in ("jaxconv", "lax")}


def check_one_step(network, compiled, torch_first_step, arguments,
                   policy) -> dict:
  """The losses and gradients of one step of each contender from the same
  parameters, against each other and against the float64 oracle, and
  jaxconv's float64 step against the oracle.

  Args:
    network: the network.
    compiled: the compiled jaxconv and lax steps.
    torch_first_step: ``None``, or PyTorch's step and gradient getter
      (from :func:`torch_step`, not called yet).
    arguments: ``(params, state, x, labels)``.
    policy: jaxconv's policy (see :func:`policy_context`).

  Returns:
    ``{"loss", "float64_rules" (jaxconv's float64 step against the
    oracle), "error" (each float32 step against the oracle), "difference"
    (each against lax's float32 step), "agrees"}``, see :func:`difference`
    and :func:`agrees`.
  """
  params, _, x, labels = arguments
  losses, grads = {}, {}
  for side, program in compiled.items():
    _, state, loss = program(*arguments)
    losses[side], grads[side] = float(loss), gradients_of(state)
  if torch_first_step is not None:
    step, gradients = torch_first_step
    losses["torch"] = float(step().detach())
    grads["torch"] = gradients()
  oracle = float64_gradients(network, networks.lax_ops(), params, x, labels)
  with policy_context(policy):
    rules = difference(*float64_gradients(network, networks.jaxconv_ops(),
                                          params, x, labels), *oracle)
  losses["float64"] = oracle[0]
  sides = [side for side in CONTENDERS if side in grads]
  error = {side: difference(losses[side], grads[side], *oracle)
           for side in sides}
  return {"loss": losses, "float64_rules": rules, "error": error,
          "difference": {side: difference(losses[side], grads[side],
                                          losses["lax"], grads["lax"])
                         for side in sides if side != "lax"},
          "agrees": {side: agrees(rules if side == "jaxconv" else None,
                                  error[side]) for side in sides}}


def measure(network: networks.Network, batch: int, args, order: int) -> dict:
  """Every figure of one row of the record (see the module's docstring)."""
  params = initial_parameters(network)
  x, labels = batch_of(network, batch)
  transform = optimizer()
  arguments = (params, transform.init(params), x, labels)
  # Alternate which side compiles first, in case compiling warms anything.
  compiled = compile_steps(network, transform, arguments, policy=args.policy,
                           jaxconv_first=order % 2 == 0)
  contenders = {side: functools.partial(program, *arguments)
                for side, program in compiled.items()}
  torch_first_step = None
  if args.torch:
    torch_first_step = torch_step(network, params, x, labels)
    contenders["torch"] = torch_first_step[0]
  row = {"network": network.name, "description": network.description,
         "batch": batch, "input": list(network.input_shape),
         "parameters": sum(leaf.size for leaf in jax.tree.leaves(params)),
         **check_one_step(network, compiled, torch_first_step, arguments,
                          args.policy)}

  timings = timing.interleaved(contenders, args.repeats,
                               apart=lambda name: name == "torch")
  row["step_ms"] = {side: t.seconds * 1e3 for side, t in timings.items()}
  row["step_samples_ms"] = {side: [s * 1e3 for s in t.samples]
                            for side, t in timings.items()}
  row["page_faults"] = {side: t.faults for side, t in timings.items()}
  row["compile_s"] = {side: c.compile_seconds for side, c in compiled.items()}
  row["temp_mb"] = {side: (c.temp_bytes / 2**20 if c.temp_bytes is not None
                           else None) for side, c in compiled.items()}
  growth = torch_memory(network, params, x, labels) if args.torch else None
  row["torch_peak_growth_mb"] = growth / 2**20 if growth is not None else None
  flops = 3 * forward_flops(network, params, x)
  row["step_gflop"] = flops / 1e9
  row["gflops"] = {side: flops / (ms * 1e-3) / 1e9
                   for side, ms in row["step_ms"].items()}
  row["profile"] = None
  if args.profile:
    row["profile"] = {}
    for side, program in compiled.items():
      keep = (os.path.join(args.trace_dir, f"{network.name}-b{batch}-{side}")
              if args.trace_dir else None)
      trace = xla_profile.profile(contenders[side], args.profile_steps, keep)
      row["profile"][side] = _trimmed(
          xla_profile.attribute(trace, program.program.as_text()))
  return row


# --- The record. ----------------------------------------------------------------


def _ratio(a, b):
  return a / b if a is not None and b else None


def _cell(value, digits=1):
  return "-" if value is None else f"{value:.{digits}f}"


def _ms(value):
  """Milliseconds to three significant figures (``-`` for none)."""
  if value is None:
    return "-"
  digits = 0 if value >= 100 else 1 if value >= 10 else 2 if value >= 1 else 3
  return f"{value:.{digits}f}"


def _scientific(value):
  return "-" if value is None else f"{value:.1e}"


def _times(value):
  """A ratio to three significant figures (``-`` for none)."""
  return "-" if value is None else f"{value:.3g}"


def _geometric_mean(values):
  values = [v for v in values if v]
  return math.exp(statistics.fmean(map(math.log, values))) if values else None


def _scope_label(scope: str) -> str:
  """``conv3x3_s2`` -> ``conv3x3/s2``."""
  return re.sub(r"_s(\d+)$", r"/s\1", scope)


# Scopes outside the differentiated function: no forward or backward pass.
UNDIRECTED = ("optimizer", xla_profile.RUNTIME, xla_profile.UNSCOPED)


def profile_table(row: dict) -> list[str]:
  """Per layer type: jaxconv's forward and backward time per step, its
  share, and lax's, from the two profiles of a row."""
  profile = row["profile"]
  ours, theirs = profile["jaxconv"], profile.get("lax")
  scopes = sorted(set(ours["scopes"]) | set(theirs["scopes"] if theirs else ()),
                  key=lambda s: -sum(ours["scopes"].get(s, {}).values()))
  lines = ["| layer type | jaxconv forward ms | jaxconv backward ms "
           "| jaxconv total ms | share | lax total ms | jaxconv / lax |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  for scope in scopes:
    mine = ours["scopes"].get(scope, {"fwd": 0.0, "bwd": 0.0})
    total = mine["fwd"] + mine["bwd"]
    other = sum(theirs["scopes"].get(scope, {}).values()) if theirs else None
    passes = ((_ms(mine["fwd"]), _ms(mine["bwd"])) if scope not in UNDIRECTED
              else ("-", "-"))
    lines.append(
        f"| {_scope_label(scope)} | {passes[0]} | {passes[1]} "
        f"| {_ms(total)} | {100 * total / max(ours['busy_ms'], 1e-9):.0f}% "
        f"| {_ms(other)} | {_times(_ratio(total, other))} |")
  kinds = ", ".join(f"{kind} {_ms(ms)} ms" for kind, ms in sorted(
      ours["kinds"].items(), key=lambda item: -item[1]))
  traced = "; ".join(
      f"{side} {_ms(p['busy_ms'])} ms found of {_ms(p['wall_ms'])} ms wall "
      f"({_ms(p['inferred_ms'])} ms placed by a neighbouring instruction's "
      f"scope), {_ms(p['process_cpu_ms'])} ms of CPU time used"
      for side, p in profile.items())
  lines += ["", f"jaxconv by kind of instruction: {kinds}. Per traced step "
            f"({ours['steps']} traced): {traced}."]
  return lines


def markdown(rows, meta) -> str:
  """The Markdown record."""
  lines = [
      f"# Training steps of standard CNNs on {meta['device']}",
      "",
      "jaxconv's layers against `jax.grad` of the same networks built from "
      "lax and Flax, and against PyTorch, whole training steps (forward, "
      "backward, SGD with momentum). Written by",
      "",
      "```bash",
      meta["command"],
      "```",
      "",
      f"on {meta['date']}: {meta['machine']}; PyTorch "
      f"{meta['torch'] or 'not run'}; float32 matrix-product rate "
      f"{meta['matmul_gflops']:.0f} GFLOP/s; jaxconv's algorithm policy: "
      f"{meta['policy']}; median of {meta['repeats']} interleaved "
      "rounds per step time (PyTorch in rounds of its own).",
      "",
      "How to read it: ratios are jaxconv / other (below 1: jaxconv is "
      "faster or smaller). PyTorch runs channels first (NCHW, its default "
      "memory format), the JAX programs channels last. Compile time is "
      "`jax.jit(step).lower(...).compile()`, tracing included, the median "
      f"of {COMPILES} compiles of each, taking turns. XLA "
      "temporaries are the compiled step's temporary buffers (parameters, "
      "inputs and outputs excluded); PyTorch's memory is how far a fresh "
      "process's peak resident memory rises, over "
      f"{TORCH_MEMORY_STEPS} steps, above its resident memory before them "
      "(gradients, momentum, activations and allocator overhead). GFLOP per "
      "step counts the convolutions and dense "
      "layers (forward 2 x multiply-adds, step 3 x forward).",
      "",
      "## Networks",
      ""]
  seen = set()
  for row in rows:
    if row["network"] not in seen:
      seen.add(row["network"])
      lines.append(f"- `{row['network']}`: {row['description']}; input "
                   f"{'x'.join(map(str, row['input']))}, "
                   f"{row['parameters']:,} parameters.")
  lines += [
      "",
      "## Step time",
      "",
      "| network | batch | jaxconv ms | lax ms | torch ms | jaxconv / lax "
      "| jaxconv / torch | GFLOP per step | jaxconv GFLOP/s | of matmul rate |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for row in rows:
    ms = row["step_ms"]
    lines.append(
        f"| {row['network']} | {row['batch']} | {_ms(ms['jaxconv'])} "
        f"| {_ms(ms['lax'])} | {_ms(ms.get('torch'))} "
        f"| {_times(_ratio(ms['jaxconv'], ms['lax']))} "
        f"| {_times(_ratio(ms['jaxconv'], ms.get('torch')))} "
        f"| {row['step_gflop']:.3g} | {row['gflops']['jaxconv']:.1f} "
        f"| {100 * row['gflops']['jaxconv'] / meta['matmul_gflops']:.0f}% |")
  lax_mean = _geometric_mean(r["step_ms"]["jaxconv"] / r["step_ms"]["lax"]
                             for r in rows)
  torch_mean = _geometric_mean(
      _ratio(r["step_ms"]["jaxconv"], r["step_ms"].get("torch")) for r in rows)
  lines += ["", f"Geometric mean over the rows: jaxconv / lax "
            f"{_times(lax_mean)}, jaxconv / torch {_times(torch_mean)}.",
            "",
            "## Compile time and memory",
            "",
            "| network | batch | compile s jaxconv | compile s lax "
            "| jaxconv / lax | XLA temp MB jaxconv | XLA temp MB lax "
            "| jaxconv / lax | PyTorch peak growth MB |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for row in rows:
    seconds, temp = row["compile_s"], row["temp_mb"]
    lines.append(
        f"| {row['network']} | {row['batch']} | {seconds['jaxconv']:.2f} "
        f"| {seconds['lax']:.2f} "
        f"| {_times(seconds['jaxconv'] / seconds['lax'])} "
        f"| {_cell(temp['jaxconv'])} | {_cell(temp['lax'])} "
        f"| {_times(_ratio(temp['jaxconv'], temp['lax']))} "
        f"| {_cell(row['torch_peak_growth_mb'])} |")
  lines += ["",
            "## Agreement of one step",
            "",
            "One step from the same parameters and batch. Errors are "
            "relative: of the loss, and of the gradients, the largest "
            "difference in any gradient over that gradient's largest entry. "
            "jaxconv's step in float64 against the lax twin's in float64 "
            f"(the oracle) must agree to {FLOAT64_TOLERANCE:g}: a wrong rule "
            "is off by O(1). Every float32 step's loss must be the oracle's "
            f"to {LOSS_TOLERANCE:g}. The float32 gradients' errors are "
            "round-off, which ReLU and max pooling can turn into a different, "
            "equally valid, subgradient where a rounding flips which input "
            "wins.",
            "",
            "| network | batch | loss (float64) | jaxconv in float64: loss "
            "/ gradient error | float32 loss error jaxconv / lax / torch "
            "| float32 gradient error jaxconv / lax / torch | agrees |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
  for row in rows:
    error, rules = row["error"], row["float64_rules"]
    losses = " / ".join(_scientific(error[side]["loss"]) if side in error
                        else "-" for side in CONTENDERS)
    gradients = " / ".join(_scientific(error[side]["grads"]) if side in error
                           else "-" for side in CONTENDERS)
    verdict = ", ".join(f"{side} {'yes' if ok else 'NO'}"
                        for side, ok in row["agrees"].items())
    lines.append(
        f"| {row['network']} | {row['batch']} | {row['loss']['float64']:.4f} "
        f"| {_scientific(rules['loss'])} / {_scientific(rules['grads'])} "
        f"| {losses} | {gradients} | {verdict} |")
  if any(row["profile"] for row in rows):
    lines += [
        "",
        "## Where the step's time goes",
        "",
        "Time per step by layer type, from an XLA profile of a few steps of "
        "each compiled program: every HLO instruction's time, its "
        "thread-pool tasks included, goes to the `jax.named_scope` of the "
        "layer it came from, a moment at which several instructions run "
        "being shared among them (`experiments/xla_profile.py` says how). "
        "A fusion counts for the layer most of its heaviest instructions "
        "come from, so elementwise layers (relu, residual additions) fused "
        "into a neighbour count with it. Tracing slows a step down; compare "
        "shares, not these times with the step times above. `(runtime)` is "
        "XLA's own work between instructions; `optimizer` includes the "
        "gradients' layout changes that XLA fused into the update."]
    for row in rows:
      if row["profile"]:
        lines += ["", f"### {row['network']}, batch {row['batch']}", "",
                  *profile_table(row)]
  return "\n".join(lines) + "\n"


def plot(rows, path):
  """Step times of the three contenders per network and batch, and where
  jaxconv's step spends its time."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  labels = [f"{row['network']} b{row['batch']}" for row in rows]
  profiled = [row for row in rows if row["profile"]]
  panels = 2 if profiled else 1
  fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels,
                                               0.55 * len(rows) + 2.4),
                           squeeze=False)
  ax = axes[0][0]
  height = 0.8 / len(CONTENDERS)
  for index, side in enumerate(CONTENDERS):
    values = [row["step_ms"].get(side) or 0.0 for row in rows]
    positions = [i + (index - 1) * height for i in range(len(rows))]
    ax.barh(positions, values, height, label=side)
  ax.set_yticks(range(len(rows)), labels)
  ax.set_xscale("log")
  ax.set_xlabel("training step, ms (median)")
  ax.invert_yaxis()
  ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3,
            fontsize="small", frameon=False)
  if profiled:
    ax = axes[0][1]
    totals = {}
    for row in profiled:
      for scope, ms in row["profile"]["jaxconv"]["scopes"].items():
        totals[scope] = totals.get(scope, 0.0) + sum(ms.values()) / max(
            row["profile"]["jaxconv"]["busy_ms"], 1e-9)
    shown = sorted(totals, key=lambda s: -totals[s])[:8]
    left = np.zeros(len(profiled))
    colours = plt.get_cmap("tab10")
    for index, scope in enumerate([*shown, "other"]):
      shares = []
      for row in profiled:
        profile = row["profile"]["jaxconv"]
        if scope == "other":
          ms = sum(sum(v.values()) for s, v in profile["scopes"].items()
                   if s not in shown)
        else:
          ms = sum(profile["scopes"].get(scope, {}).values())
        shares.append(100 * ms / max(profile["busy_ms"], 1e-9))
      ax.barh(range(len(profiled)), shares, left=left, label=_scope_label(
          scope), color=colours(index % 10))
      left += np.array(shares)
    ax.set_yticks(range(len(profiled)),
                  [f"{row['network']} b{row['batch']}" for row in profiled])
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("jaxconv step: share of the time by layer type, %")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=5,
              fontsize="x-small", frameon=False)
  fig.tight_layout()
  Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)


# --- The command line. ------------------------------------------------------------


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="a tiny network at batch 4, 3 rounds, 2 traced "
                      "steps; writes only the files named")
  parser.add_argument("--only", action="append", choices=sorted(
      networks.NETWORKS), help="run this network (repeatable); default all")
  parser.add_argument("--batch", type=int, action="append",
                      help="batch size (repeatable); default each network's "
                      "(32 and 128; 32 for small_resnet)")
  parser.add_argument("--repeats", type=int, default=None,
                      help="interleaved rounds (default 10, --quick 3)")
  parser.add_argument("--no-torch", dest="torch", action="store_false",
                      help="leave PyTorch out")
  parser.add_argument("--profile", action=argparse.BooleanOptionalAction,
                      default=True, help="profile each JAX step and report "
                      "the time per layer type (default on)")
  parser.add_argument("--profile-steps", type=int, default=None,
                      help="steps traced per program (default 3, --quick 2)")
  parser.add_argument("--trace-dir", default=None,
                      help="keep the traces here (TensorBoard's layout, with "
                      "a Perfetto trace)")
  parser.add_argument("--policy", default=None,
                      help="jaxconv's algorithm policy: a preset or an "
                      "algorithm name (default: jaxconv's own choice)")
  for flag, default, what in (("--markdown", DEFAULT_MARKDOWN, "the record"),
                              ("--json", DEFAULT_JSON, "every figure"),
                              ("--plot", DEFAULT_PLOT, "the chart")):
    parser.add_argument(flag, default=None, help=f"{what} (default "
                        f"{default.relative_to(REPOSITORY)}; --quick: none)")
  args = parser.parse_args(argv)
  if args.repeats is None:
    args.repeats = 3 if args.quick else 10
  if args.profile_steps is None:
    args.profile_steps = 2 if args.quick else 3
  if not args.quick:
    args.markdown = args.markdown or str(DEFAULT_MARKDOWN)
    args.json = args.json or str(DEFAULT_JSON)
    args.plot = args.plot or str(DEFAULT_PLOT)
  if args.torch:
    try:
      import torch  # noqa: F401
    except ImportError:
      print("PyTorch is not installed: leaving it out.", file=sys.stderr)
      args.torch = False
  try:
    policy_context(args.policy)
  except ValueError as error:
    parser.error(str(error))
  backend = jax.default_backend()
  if backend != "cpu" and args.torch:
    print(f"PyTorch runs on the CPU: left out on the {backend} backend.",
          file=sys.stderr)
    args.torch = False
  if backend != "cpu" and args.profile:
    print("The time per layer type reads the events of XLA's CPU runtime: "
          f"left out on the {backend} backend.", file=sys.stderr)
    args.profile = False
  return args


def _warm_up():
  """Compiles and runs a tiny step of both JAX variants, so that the first
  measured compile does not pay for starting jax, XLA and jaxconv."""
  network = networks.tiny_network()
  params = initial_parameters(network)
  x, labels = batch_of(network, 2)
  state = optimizer().init(params)
  for ops in (networks.jaxconv_ops(), networks.lax_ops()):
    step = make_step(network, ops, optimizer())
    timing.block(timing.compile_program(step, params, state, x, labels)(
        params, state, x, labels))


def main(argv=None) -> dict:
  """Runs the benchmark; returns the record as a dict (what ``--json``
  writes)."""
  args = parse_args(argv)
  if args.quick:
    chosen = [networks.tiny_network()]
  else:
    chosen = [networks.NETWORKS[name]
              for name in (args.only or list(networks.NETWORKS))]
  command = "python experiments/benchmark_models.py" + "".join(
      f" {a}" for a in (sys.argv[1:] if argv is None else argv))
  torch_version = None
  if args.torch:
    import torch
    torch_version = f"{torch.__version__}, {torch.get_num_threads()} threads"
  if not args.quick:
    _warm_up()
  rows = []
  for network in chosen:
    for batch in args.batch or network.batches:
      row = measure(network, batch, args, len(rows))
      rows.append(row)
      ms = row["step_ms"]
      agree = row["agrees"]["jaxconv"]
      print(f"{network.name:<12} b{batch:<4} step jaxconv {ms['jaxconv']:8.1f}"
            f" ms  lax {ms['lax']:8.1f} ms  torch "
            f"{_cell(ms.get('torch')):>8} ms  compile "
            f"{row['compile_s']['jaxconv']:.1f} / {row['compile_s']['lax']:.1f}"
            f" s  agrees {'yes' if agree else 'NO'} (float64 gradients "
            f"{row['float64_rules']['grads']:.1e})", flush=True)
  meta = {"command": command, "date": str(datetime.date.today()),
          "backend": jax.default_backend(),
          "device": (timing.cpu_model() if jax.default_backend() == "cpu"
                     else jax.devices()[0].device_kind),
          "machine": timing.machine(), "torch": torch_version,
          "matmul_gflops": (timing.matmul_gflops(3, 512) if args.quick
                            else timing.matmul_gflops()),
          "policy": args.policy or default_policy(), "repeats": args.repeats,
          "quick": args.quick,
          "float64_tolerance": FLOAT64_TOLERANCE,
          "loss_tolerance": LOSS_TOLERANCE}
  record = {"meta": meta, "rows": rows}
  text = markdown(rows, meta)
  print()
  print(text)
  for path, write in ((args.markdown, lambda f: f.write(text)),
                      (args.json, lambda f: json.dump(record, f, indent=1))):
    if path:
      Path(path).parent.mkdir(parents=True, exist_ok=True)
      with open(path, "w") as f:
        write(f)
  if args.plot:
    plot(rows, args.plot)
  return record


if __name__ == "__main__":
  record = main()
  wrong = {side: [f"{row['network']} b{row['batch']}"
                  for row in record["rows"]
                  if not row["agrees"].get(side, True)]
           for side in CONTENDERS}
  for side, rows in wrong.items():
    if rows:
      print(f"{side}'s step disagrees with the float64 oracle on: "
            f"{', '.join(rows)}.", file=sys.stderr)
  sys.exit(1 if wrong["jaxconv"] else 0)
