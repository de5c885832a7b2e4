"""Training code shared by train_mnist1d.py and train_digits.py.

One loop serves both scripts: an optax optimiser, shuffled minibatches, a test
evaluation per epoch, a tqdm progress bar, a results JSON, the final
parameters (``params.npz``) and a PNG of the curves. Three switches:

* ``--grad {custom,autodiff}``: differentiate the network built from jaxconv
  (every gradient hand-derived) or its lax/jax.nn twin (JAX's autodiff); see
  ``jaxconv.models``.
* ``--compare``: train both from the same initialisation on the same batches.
  At every step, at the custom run's parameters, it records the relative
  loss and gradient differences between custom and autodiff. At the step of
  each epoch where they differ most, it also measures each one's gradient
  error against a float64 autodiff gradient: the yardstick of what float32
  round-off is at that step. And it records how far the two runs drift apart
  (their losses and parameters).
* ``--devices N``: data parallel over the first N devices. The batch is
  sharded along a one-axis mesh ``("batch",)``, the parameters and optimiser
  state are replicated, and XLA inserts the gradient all-reduce. On CPU, set
  ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before starting.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

import jaxconv
from jaxconv import models


def add_arguments(parser: argparse.ArgumentParser, *, epochs: int,
                  batch_size: int, learning_rate: float, weight_decay: float,
                  quick_epochs: int, compare_default: bool = False) -> None:
  """Adds the options both scripts share, with each script's defaults."""
  parser.add_argument("--grad", choices=models.GRADS, default="custom",
                      help="gradients from jaxconv's hand-derived rules "
                      "(custom) or JAX's autodiff of lax (default: custom)")
  parser.add_argument("--compare", action=argparse.BooleanOptionalAction,
                      default=compare_default,
                      help="train custom and autodiff side by side from the "
                      "same initialisation and report their differences "
                      f"(default: {'on' if compare_default else 'off'})")
  parser.add_argument("--devices", type=int, default=1,
                      help="data parallel over the first N devices (default 1)")
  parser.add_argument("--quick", action="store_true",
                      help=f"{quick_epochs} epoch(s) instead of --epochs: a "
                      "smoke test that runs in seconds")
  parser.add_argument("--epochs", type=int, default=epochs,
                      help=f"training epochs (default {epochs})")
  parser.add_argument("--batch-size", type=int, default=batch_size,
                      help=f"minibatch size (default {batch_size})")
  parser.add_argument("--learning-rate", type=float, default=learning_rate,
                      help=f"peak AdamW learning rate (default "
                      f"{learning_rate})")
  parser.add_argument("--weight-decay", type=float, default=weight_decay,
                      help=f"AdamW weight decay (default {weight_decay})")
  parser.add_argument("--max-steps", type=int, default=None,
                      help="stop after this many steps (default: all epochs)")
  parser.add_argument("--seed", type=int, default=0,
                      help="seed of the initialisation and the batch order")
  parser.add_argument("--out", type=Path, default=None,
                      help="output folder (default experiments/results/"
                      "NAME-MODE, e.g. mnist1d-custom)")
  parser.add_argument("--conv-algorithm", choices=jaxconv.ALGORITHMS,
                      default="auto",
                      help="how jaxconv evaluates its convolutions (see "
                      "jaxconv.use_algorithm; default auto). 'xla' makes the "
                      "custom forward pass bitwise equal to lax's")
  parser.add_argument("--no-progress", action="store_true",
                      help="no progress bar")
  parser.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                      help="multi-host: the address of process 0; every "
                      "process calls jax.distributed.initialize with it, then "
                      "--devices counts the devices of all hosts")
  parser.add_argument("--num-processes", type=int, default=None,
                      help="multi-host: the number of processes")
  parser.add_argument("--process-id", type=int, default=None,
                      help="multi-host: this process's rank, 0 .. N-1")
  parser.set_defaults(quick_epochs=quick_epochs)


def _mesh(devices: int, batch_size: int) -> tuple[NamedSharding, NamedSharding]:
  """(replicated, batch-sharded) shardings over the first ``devices``."""
  available = jax.devices()
  if not 1 <= devices <= len(available):
    hint = (" On CPU, start with XLA_FLAGS="
            f"--xla_force_host_platform_device_count={devices}."
            if available[0].platform == "cpu" else "")
    raise SystemExit(f"--devices {devices}: {len(available)} device(s) "
                     f"available.{hint}")
  if batch_size % devices:
    raise SystemExit(f"--batch-size {batch_size} must be a multiple of "
                     f"--devices {devices}.")
  mesh = Mesh(np.asarray(available[:devices]), ("batch",))
  return (NamedSharding(mesh, PartitionSpec()),
          NamedSharding(mesh, PartitionSpec("batch")))


# Final relative parameter difference from which two runs count as drifted
# apart (round-off alone keeps them within about 1e-5 over a short run).
_DRIFTED = 1e-2


def relative_difference(a, b) -> jax.Array:
  """Largest, over the leaves, of ``max |a - b| / max |b|`` (leaf-wise scale).

  Each leaf is measured against its own largest entry, so that entries that
  happen to be near zero do not turn round-off into large ratios. For two
  scalars (losses) it is ``|a - b| / |b|``.
  """
  def leaf(x, y):
    scale = jnp.maximum(jnp.max(jnp.abs(y)), jnp.finfo(y.dtype).tiny)
    return jnp.max(jnp.abs(x - y)) / scale
  return jnp.max(jnp.stack(jax.tree.leaves(jax.tree.map(leaf, a, b))))


def _accuracy(apply, params, x, y, grad) -> jax.Array:
  return jnp.mean(jnp.argmax(apply(params, x, grad), axis=-1) == y)


def _make_steps(apply, optimizer, grads: tuple[str, ...]):
  """The jitted train step for one run, or for custom and autodiff together."""

  def value_and_grad(grad, params, x, y):
    return jax.value_and_grad(models.loss, argnums=1)(apply, params, x, y, grad)

  def update(params, opt_state, gradient):
    updates, opt_state = optimizer.update(gradient, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  def single_step(states, x, y):
    (params, opt_state), = states
    loss, gradient = value_and_grad(grads[0], params, x, y)
    return (update(params, opt_state, gradient),), {"loss": loss}

  def compare_step(states, x, y):
    (params_c, opt_c), (params_a, opt_a) = states
    loss_c, grad_c = value_and_grad("custom", params_c, x, y)
    loss_a, grad_a = value_and_grad("autodiff", params_a, x, y)
    # The correctness check: both gradients at the same parameters.
    loss_same, grad_same = value_and_grad("autodiff", params_c, x, y)
    metrics = {
        "loss": loss_c,
        "loss_autodiff": loss_a,
        "loss_difference": relative_difference(loss_c, loss_same),
        "grad_difference": relative_difference(grad_c, grad_same),
        "trajectory_loss_difference": relative_difference(loss_c, loss_a),
        "trajectory_param_difference": relative_difference(params_c,
                                                           params_a),
    }
    return (update(params_c, opt_c, grad_c),
            update(params_a, opt_a, grad_a)), metrics

  return single_step if len(grads) == 1 else compare_step


def _make_yardstick(apply):
  """Float32 gradients' errors against a float64 autodiff gradient.

  Returns a function of ``(params, x, y)`` to be called under
  ``jax.enable_x64``: the relative error of the custom and of the autodiff
  float32 gradient, measured like :func:`relative_difference`. What the
  autodiff gradient misses is float32 round-off; the custom gradient should
  miss as much and no more.
  """
  def gradient(grad, params, x, y):
    return jax.grad(models.loss, argnums=1)(apply, params, x, y, grad)

  @jax.jit
  def yardstick(params, x, y):
    to64 = lambda tree: jax.tree.map(lambda v: v.astype(jnp.float64), tree)
    exact = gradient("autodiff", to64(params), to64(x), y)
    return {grad: relative_difference(to64(gradient(grad, params, x, y)),
                                      exact)
            for grad in models.GRADS}

  return yardstick


def _run_name(name: str, args) -> str:
  """Default output folder name, e.g. ``mnist1d-custom``,
  ``digits-compare-4devices``, ``mnist1d-autodiff-quick``."""
  parts = [name, "compare" if args.compare else args.grad]
  if args.conv_algorithm != "auto":
    parts.append(args.conv_algorithm)
  if args.devices > 1:
    parts.append(f"{args.devices}devices")
  if args.quick:
    parts.append("quick")
  return "-".join(parts)


def _save_params(path: Path, params) -> None:
  flat = {"/".join(str(getattr(k, "key", k)) for k in keys): np.asarray(leaf)
          for keys, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  np.savez(path, **flat)


def train(name: str, model: models.Model, data: dict, args,
          augment=None) -> dict:
  """Trains ``model`` on ``data`` as ``args`` says; writes and returns results.

  Args:
    name: the experiment's name (output folder, titles).
    model: a :class:`jaxconv.models.Model`.
    data: ``x_train``, ``y_train``, ``x_test``, ``y_test`` as NumPy arrays.
    args: the parsed options of :func:`add_arguments`.
    augment: optional ``augment(x_batch, rng) -> x_batch`` applied to each
      training batch on the host, with a NumPy generator seeded by ``--seed``
      (so that compared and sharded runs see the same batches).

  Returns:
    The results dict that is also written to ``results.json``, with the final
    parameters under ``"params"`` (not written to the JSON).
  """
  with jaxconv.use_algorithm(args.conv_algorithm):
    return _train(name, model, data, args, augment)


def _train(name, model, data, args, augment):
  grads = models.GRADS if args.compare else (args.grad,)
  epochs = args.quick_epochs if args.quick else args.epochs
  replicated, batch_sharded = _mesh(args.devices, args.batch_size)
  steps_per_epoch = len(data["x_train"]) // args.batch_size
  total_steps = epochs * steps_per_epoch
  if args.max_steps is not None:
    total_steps = min(total_steps, args.max_steps)
  if total_steps <= 0:
    raise SystemExit("no training steps: fewer examples than --batch-size.")

  schedule = optax.cosine_decay_schedule(args.learning_rate, total_steps)
  optimizer = optax.adamw(schedule, weight_decay=args.weight_decay)

  @jax.jit
  def initialise(key):
    params = model.init(key)
    return params, optimizer.init(params)

  # Every program is compiled here, ahead of time, so that the progress bar
  # below never stalls on a compilation and the timing is of training alone.
  what = ("the training step of custom and autodiff side by side, and the "
          "float64 check" if args.compare else f"the {grads[0]} training step")
  print(f"{name}: compiling {what}...", flush=True)
  start = time.perf_counter()
  # Same initialisation for every run; replicated over the mesh.
  state = jax.device_put(initialise(jax.random.key(args.seed)), replicated)
  states = (state,) * len(grads)
  x_test = jax.device_put(data["x_test"], replicated)
  y_test = jax.device_put(data["y_test"], replicated)
  batch_shape = (args.batch_size,) + data["x_train"].shape[1:]
  x_batch = jax.ShapeDtypeStruct(batch_shape, data["x_train"].dtype,
                                 sharding=batch_sharded)
  y_batch = jax.ShapeDtypeStruct((args.batch_size,), data["y_train"].dtype,
                                 sharding=batch_sharded)
  step = jax.jit(_make_steps(model.apply, optimizer, grads),
                 out_shardings=replicated).lower(states, x_batch,
                                                 y_batch).compile()
  accuracy = {
      grad: jax.jit(functools.partial(_accuracy, model.apply, grad=grad))
      .lower(state[0], x_test, y_test).compile() for grad in grads}

  history = {"step": [], "epoch": [], "test_accuracy": {g: [] for g in grads},
             "step_metrics": {}}
  if args.compare:
    with jax.enable_x64(True):
      yardstick = _make_yardstick(model.apply).lower(
          state[0], x_batch, y_batch).compile()
    history["float64_yardstick"] = {"step": [], **{g: [] for g in grads}}
  order = np.random.default_rng(args.seed)
  compile_seconds = time.perf_counter() - start
  print(f"{name}: compiled in {compile_seconds:.1f} s; training "
        f"{total_steps} steps.", flush=True)
  start = time.perf_counter()
  bar = tqdm(total=total_steps, desc=name, unit="step", file=sys.stderr,
             disable=args.no_progress, dynamic_ncols=True)
  done = 0
  for epoch in range(1, epochs + 1):
    steps = min(steps_per_epoch, total_steps - done)
    if steps == 0:
      break
    done += steps
    permutation = order.permutation(len(data["x_train"]))
    epoch_metrics, inputs = [], []
    for i in range(steps):
      batch = permutation[i * args.batch_size:(i + 1) * args.batch_size]
      x = data["x_train"][batch]
      if augment is not None:
        x = augment(x, order)
      x = jax.device_put(x, batch_sharded)
      y = jax.device_put(data["y_train"][batch], batch_sharded)
      if args.compare:
        inputs.append((states[0][0], x, y))
      states, metrics = step(states, x, y)
      epoch_metrics.append(metrics)
      bar.update()
    # Metrics come to the host once per epoch, not after every step.
    for metrics in jax.device_get(epoch_metrics):
      for key, value in metrics.items():
        history["step_metrics"].setdefault(key, []).append(float(value))
    if args.compare:
      # The float64 yardstick (slow on CPU, so once per epoch) at the step
      # of this epoch where custom and autodiff differed most.
      differences = history["step_metrics"]["grad_difference"][-steps:]
      worst = int(np.argmax(differences))
      with jax.enable_x64(True):
        errors = jax.device_get(yardstick(*inputs[worst]))
      history["float64_yardstick"]["step"].append(done - steps + worst + 1)
      for grad in grads:
        history["float64_yardstick"][grad].append(float(errors[grad]))
    for grad, (params, _) in zip(grads, states):
      history["test_accuracy"][grad].append(
          float(accuracy[grad](params, x_test, y_test)))
    history["epoch"].append(epoch)
    postfix = {"loss": f"{history['step_metrics']['loss'][-1]:.4f}",
               "test": f"{history['test_accuracy'][grads[0]][-1]:.3f}"}
    if args.compare:
      postfix["grad diff"] = (
          f"{max(history['step_metrics']['grad_difference']):.1e}")
    bar.set_postfix(postfix)
  bar.close()
  seconds = time.perf_counter() - start
  history["step"] = list(range(1, total_steps + 1))

  results = {
      "experiment": name,
      "command": args.command,
      "grads": list(grads),
      "epochs": history["epoch"][-1],
      "steps": total_steps,
      "batch_size": args.batch_size,
      "learning_rate": args.learning_rate,
      "weight_decay": args.weight_decay,
      "seed": args.seed,
      "conv_algorithm": args.conv_algorithm,
      "devices": [str(d) for d in jax.devices()[:args.devices]],
      "train_examples": len(data["x_train"]),
      "test_examples": len(data["x_test"]),
      "compile_seconds": compile_seconds,
      "seconds": seconds,
      "seconds_per_step": seconds / total_steps,
      "test_accuracy": history["test_accuracy"][grads[0]][-1],
      "versions": {"jax": jax.__version__, "optax": optax.__version__,
                   "python": platform.python_version()},
      "history": history,
  }
  if args.compare:
    metrics = history["step_metrics"]
    results["compare"] = {
        "max_loss_difference": max(metrics["loss_difference"]),
        "max_grad_difference": max(metrics["grad_difference"]),
        "max_float64_error_custom": max(
            history["float64_yardstick"]["custom"]),
        "max_float64_error_autodiff": max(
            history["float64_yardstick"]["autodiff"]),
        "max_trajectory_loss_difference": max(
            metrics["trajectory_loss_difference"]),
        "final_trajectory_param_difference": metrics[
            "trajectory_param_difference"][-1],
        "test_accuracy_autodiff": history["test_accuracy"]["autodiff"][-1],
    }

  out = args.out or Path(__file__).parent / "results" / _run_name(name, args)
  out.mkdir(parents=True, exist_ok=True)
  (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
  _save_params(out / "params.npz", states[0][0])
  plot(results, out / "curves.png")
  results["params"] = states[0][0]
  results["out"] = str(out)
  _summarise(results)
  return results


def plot(results: dict, path: Path) -> None:
  """Training loss (custom and autodiff on the same axes), test accuracy and,
  with ``--compare``, the per-step differences on a log scale."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  history = results["history"]
  metrics = history["step_metrics"]
  compare = "compare" in results
  fig, axes = plt.subplots(1, 3 if compare else 2,
                           figsize=(15 if compare else 10, 4))
  loss_axis, accuracy_axis = axes[0], axes[1]
  grads = results["grads"]
  styles = {"custom": dict(color="C0", lw=1.2),
            "autodiff": dict(color="C1", lw=1.0, ls="--")}
  losses = {grads[0]: metrics["loss"]}
  if compare:
    losses["autodiff"] = metrics["loss_autodiff"]
  steps_per_epoch = len(history["step"]) // len(history["epoch"])
  for grad, values in losses.items():
    loss_axis.plot(history["step"], values, alpha=0.25, lw=0.5,
                   color=styles[grad]["color"])
    epoch_means = np.asarray(values[:steps_per_epoch * len(history["epoch"])])
    epoch_means = epoch_means.reshape(-1, steps_per_epoch).mean(axis=1)
    loss_axis.plot(np.arange(1, len(epoch_means) + 1) * steps_per_epoch,
                   epoch_means, label=f"{grad} (epoch mean)", **styles[grad])
  loss_axis.set(xlabel="step", ylabel="training loss", yscale="log",
                title="training loss (batches, epoch means)")
  loss_axis.legend()
  for grad in grads:
    accuracy_axis.plot(history["epoch"], history["test_accuracy"][grad],
                       marker=".", label=grad, **styles[grad])
  accuracy_axis.set(xlabel="epoch", ylabel="test accuracy",
                    title=f"test accuracy (final "
                    f"{results['test_accuracy']:.3f})")
  accuracy_axis.legend()
  if compare:
    axis = axes[2]
    axis.plot(history["step"], np.maximum(metrics["grad_difference"], 1e-12),
              color="C2", lw=0.4, alpha=0.6, label="custom vs autodiff (f32)")
    yardstick = history["float64_yardstick"]
    for grad, style in [("autodiff", dict(color="C1", marker="o", ms=4,
                                          lw=0, mfc="none")),
                        ("custom", dict(color="C0", marker=".", lw=0))]:
      axis.plot(yardstick["step"], yardstick[grad],
                label=f"{grad} (f32) vs float64", **style)
    axis.plot(history["step"],
              np.maximum(metrics["trajectory_param_difference"], 1e-12),
              color="C3", lw=1.0, label="parameters, run vs run")
    axis.set_ylim(bottom=1e-9)
    axis.set(xlabel="step", ylabel="relative difference (max over leaves)",
             yscale="log", title="gradients at the same parameters")
    axis.legend(fontsize="small")
  fig.suptitle(f"{results['experiment']}: {results['command']}",
               fontsize="small")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _summarise(results: dict) -> None:
  print(f"{results['experiment']}: {results['steps']} steps in "
        f"{results['seconds']:.1f} s after {results['compile_seconds']:.1f} s "
        f"of compilation "
        f"({1e3 * results['seconds_per_step']:.2f} ms/step) on "
        f"{len(results['devices'])} device(s); results in {results['out']}")
  if "compare" in results:
    c = results["compare"]
    print(f"custom vs autodiff at every step, at the same parameters (the "
          f"gradient check), largest: relative loss difference "
          f"{c['max_loss_difference']:.1e}, relative gradient difference "
          f"{c['max_grad_difference']:.1e}")
    print(f"gradient error against float64 autodiff at each epoch's worst "
          f"step, largest: custom {c['max_float64_error_custom']:.1e}, "
          f"autodiff {c['max_float64_error_autodiff']:.1e} (float32 "
          f"round-off)")
    print(f"custom vs autodiff as two separate runs (not a gradient check): "
          f"largest relative loss difference "
          f"{c['max_trajectory_loss_difference']:.1e}, final relative "
          f"parameter difference {c['final_trajectory_param_difference']:.1e}"
          f", autodiff test accuracy {c['test_accuracy_autodiff']:.3f}")
    if c["final_trajectory_param_difference"] > _DRIFTED:
      print("  the runs drifted apart, as two float32 runs of a chaotic "
            "optimisation do even when every step agrees to round-off (the "
            "first line): see \"Two runs drift apart\" in "
            "docs/experiments.md")
    else:
      print("  the runs stayed together; on a long run they may drift apart "
            "even when every step agrees to round-off (the first line): see "
            "\"Two runs drift apart\" in docs/experiments.md")


def parse(parser: argparse.ArgumentParser, argv=None):
  """Parses ``argv`` (default: the command line)."""
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parser.parse_args(argv)
  if args.devices < 1:
    parser.error("--devices must be positive.")
  if args.coordinator is not None:
    # Before anything touches the devices: afterwards jax.devices() lists the
    # devices of every host, and the mesh of _mesh spans them. Every process
    # builds the same data and batch order from the same seed.
    jax.distributed.initialize(coordinator_address=args.coordinator,
                               num_processes=args.num_processes,
                               process_id=args.process_id)
  args.command = " ".join(["python", f"experiments/{parser.prog}", *argv])
  return args
