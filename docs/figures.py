"""Draws the documentation's figures from jaxconv itself.

    python docs/figures.py                 # every figure, into docs/figures/
    python docs/figures.py --only pooling  # one of them
    python docs/figures.py --results PATH  # training curves from that JSON

Nothing here is drawn by hand: every number and every highlighted cell comes
from a jaxconv function (or from ``jaxconv.reference``, the literal
transcription of the equations), and each figure checks what it shows against
the library's gradients before it is saved. A figure that disagrees with the
library is an error, not a picture.

Figures:

* ``sliding-window.png``: the 2x2 kernel sliding over a 3x3 input; each output
  reads four inputs through the same four (shared) weights.
* ``weight-gradient.png``: the inputs each weight touched, and the output delta
  each one is paired with in the sum of eq. (9).
* ``input-gradient.png``: the delta spread out by the stride, padded for a full
  correlation and correlated with the rotated kernel (eqs. 13-14).
* ``pooling.png``: max pooling routes each delta to its window's winner,
  average pooling spreads it over the window.
* ``training-curves.png``: custom rules against autodiff, while training the
  MNIST-1D network; drawn from the results JSON of
  ``experiments/train_mnist1d.py --compare`` and skipped when there is none.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

import jaxconv
from jaxconv import explain, reference

jax.config.update("jax_enable_x64", True)

ROOT = Path(__file__).resolve().parent.parent
FIGURES = Path(__file__).resolve().parent / "figures"
RESULTS = [ROOT / "experiments" / "results" / name / "results.json"
           for name in ("mnist1d-compare", "mnist1d")]

# One colour per kernel weight, reused in every figure.
WEIGHT_COLOURS = ["#f4a582", "#92c5de", "#b8e186", "#d5a6e6",
                  "#fddc84", "#80cdc1", "#f1b6da", "#c2a5cf", "#bababa"]
GREY = "#f0f0f0"
HIGHLIGHT = "#e34a33"


# ---------------------------------------------------------------------------
# Drawing helpers.
# ---------------------------------------------------------------------------


def _save(fig, name: str) -> Path:
  FIGURES.mkdir(parents=True, exist_ok=True)
  path = FIGURES / name
  # No "Software" entry: the PNG does not change with matplotlib's version.
  fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
  plt.close(fig)
  print(f"wrote {path.relative_to(ROOT)}")
  return path


def _grid(ax, texts, colours=None, title=None, fontsize=11, edges=None):
  """Draws a matrix of cells (row 0 at the top) with a text in each."""
  texts = np.asarray(texts, dtype=object)
  rows, cols = texts.shape
  for r in range(rows):
    for c in range(cols):
      colour = GREY if colours is None else colours[r][c]
      edge = "#444444" if edges is None else edges[r][c]
      ax.add_patch(Rectangle((c, rows - 1 - r), 1, 1, facecolor=colour,
                             edgecolor=edge, linewidth=1.0))
      ax.text(c + 0.5, rows - 0.5 - r, str(texts[r, c]), ha="center",
              va="center", fontsize=fontsize)
  ax.set_xlim(-0.05, cols + 0.05)
  ax.set_ylim(-0.05, rows + 0.05)
  ax.set_aspect("equal")
  ax.axis("off")
  if title:
    ax.set_title(title, fontsize=10)


def _outline(ax, rows, top, left, height, width, colour=HIGHLIGHT, lw=2.5):
  """Outlines a block of cells of a ``_grid`` drawing with ``rows`` rows."""
  ax.add_patch(Rectangle((left, rows - top - height), width, height,
                         fill=False, edgecolor=colour, linewidth=lw))


def _number(x) -> str:
  x = float(x)
  return str(int(round(x))) if abs(x - round(x)) < 1e-9 else f"{x:g}"


def _check(name: str, ours, library, tolerance=1e-10):
  difference = float(np.max(np.abs(np.asarray(ours) - np.asarray(library))))
  if difference > tolerance:
    raise RuntimeError(
        f"{name}: the figure's numbers differ from jaxconv's by "
        f"{difference:g}; not drawing a wrong figure.")


def _tied_pairs(input_shape, kernel_shape, stride=1):
  """``pairs[g]`` = list of ``(q, v)``: output g reads input v through weight
  q, read off the tied-weight matrix of ``jaxconv.reference.conv_matrix``."""
  weights = int(np.prod(kernel_shape))
  pairs = None
  for q in range(weights):
    one_hot = np.zeros(weights)
    one_hot[q] = 1.0
    matrix = reference.conv_matrix(one_hot.reshape((1, 1) + kernel_shape),
                                   input_shape, strides=(stride,) * 2)
    if pairs is None:
      pairs = [[] for _ in range(matrix.shape[0])]
    for g, v in zip(*np.nonzero(matrix)):
      pairs[g].append((q, int(v)))
  return pairs


def _image(a):
  return jnp.asarray(a, jnp.float64)[None, None]


# ---------------------------------------------------------------------------
# The figures.
# ---------------------------------------------------------------------------


def sliding_window() -> Path:
  """A 2x2 kernel over a 3x3 input: four windows, one set of weights."""
  input_shape, kernel_shape = (3, 3), (2, 2)
  pairs = _tied_pairs(input_shape, kernel_shape)
  equations = explain.forward_equations(input_shape, kernel_shape)
  # Check: the sums of the figure are the library's forward pass.
  rng = np.random.default_rng(0)
  v, w = rng.standard_normal(input_shape), rng.standard_normal(kernel_shape)
  library = jaxconv.conv_general_dilated(_image(v), _image(w), 1, "VALID")
  ours = [sum(v.ravel()[j] * w.ravel()[q] for q, j in p) for p in pairs]
  _check("sliding window", ours, np.asarray(library).ravel())

  fig, axes = plt.subplots(2, 3, figsize=(9.5, 7.2),
                           gridspec_kw={"width_ratios": [2, 3, 3]})
  kernel_names = np.array([f"W{q + 1}" for q in range(4)]).reshape(2, 2)
  _grid(axes[0, 0], kernel_names,
        colours=np.array(WEIGHT_COLOURS[:4]).reshape(2, 2),
        title="the kernel:\n4 shared weights")
  axes[1, 0].axis("off")
  for g, ax in enumerate([axes[0, 1], axes[0, 2], axes[1, 1], axes[1, 2]]):
    texts = np.array([f"V{v + 1}" for v in range(9)],
                     dtype=object).reshape(3, 3)
    colours = np.full((3, 3), GREY, dtype=object)
    for q, v in pairs[g]:
      r, c = divmod(v, 3)
      colours[r, c] = WEIGHT_COLOURS[q]
      texts[r, c] = f"V{v + 1}·W{q + 1}"
    _grid(ax, texts, colours, fontsize=10)
    top, left = divmod(pairs[g][0][1], 3)
    _outline(ax, 3, top, left, 2, 2)
    lhs, rhs = equations[g].split(" = ")
    terms = rhs.split(" + ")
    ax.set_title(f"{lhs} = " + " + ".join(terms[:2]) + "\n+ "
                 + " + ".join(terms[2:]), fontsize=10)
  fig.suptitle("The sliding window: every output G reads a 2×2 patch of the "
               "input\nthrough the same weights W1…W4 (eq. 5)", fontsize=12)
  return _save(fig, "sliding-window.png")


def weight_gradient() -> Path:
  """Each weight touched four inputs, once for each output (eq. 9)."""
  input_shape, kernel_shape = (3, 3), (2, 2)
  pairs = _tied_pairs(input_shape, kernel_shape)
  names = [f"W{q + 1}" for q in range(4)]
  equations = explain.gradient_equations(input_shape, kernel_shape, names)
  # Check: sum over the highlighted cells of delta(G) * V is the library's
  # kernel gradient.
  rng = np.random.default_rng(1)
  v, delta = rng.standard_normal(input_shape), rng.standard_normal((2, 2))
  library = jaxconv.conv_kernel_grad(_image(v), _image(delta), (1, 1, 2, 2), 1,
                                     "VALID")
  ours = np.zeros(4)
  for g, p in enumerate(pairs):
    for q, j in p:
      ours[q] += delta.ravel()[g] * v.ravel()[j]
  _check("weight gradient", ours, np.asarray(library).ravel())

  fig, axes = plt.subplots(2, 2, figsize=(8.5, 9.0))
  for q, ax in enumerate(axes.ravel()):
    texts = np.array([f"V{j + 1}" for j in range(9)],
                     dtype=object).reshape(3, 3)
    colours = np.full((3, 3), GREY, dtype=object)
    for g, p in enumerate(pairs):
      for qq, j in p:
        if qq == q:
          r, c = divmod(j, 3)
          colours[r, c] = WEIGHT_COLOURS[q]
          texts[r, c] = f"V{j + 1} ×\n∂E/∂G{g + 1}"
    _grid(ax, texts, colours, fontsize=9.5)
    lhs, rhs = equations[q].split(" = ")
    terms = rhs.split(" + ")
    ax.set_title(f"{lhs} =\n" + " + ".join(terms[:2]) + " +\n"
                 + " + ".join(terms[2:]), fontsize=9.5)
  fig.suptitle("The weight gradient: each weight sums, over the four outputs,\n"
               "the input it touched times that output's delta (eq. 9)",
               fontsize=12)
  return _save(fig, "weight-gradient.png")


def input_gradient() -> Path:
  """Stride 2: spread the delta, pad it fully, correlate with rot180(w)."""
  stride, kernel_size, input_size = 2, 3, 5
  w = np.arange(1.0, 10.0).reshape(3, 3)
  delta = np.array([[1.0, -1.0], [2.0, 1.0]])
  # Eq. (13): the delta on the stride grid.
  spread = np.zeros(((delta.shape[0] - 1) * stride + 1,) * 2)
  spread[::stride, ::stride] = delta
  # Eq. (14): full padding K - 1 on each side, then correlate with rot180(w).
  full = kernel_size - 1
  padded = np.pad(spread, full)
  rotated = w[::-1, ::-1]
  result = np.zeros((input_size, input_size))
  for i in range(input_size):
    for j in range(input_size):
      result[i, j] = np.sum(padded[i:i + 3, j:j + 3] * rotated)
  library = jaxconv.conv_input_grad(_image(delta), _image(w),
                                    (1, 1, input_size, input_size), stride,
                                    "VALID")
  _check("input gradient (jaxconv.conv_input_grad)", result, library[0, 0])
  scatter = reference.conv_input_grad(_image(delta), _image(w),
                                      (1, 1, input_size, input_size),
                                      strides=(stride, stride))
  _check("input gradient (reference, scatter form of eq. 12)", result,
         scatter[0, 0])

  fig = plt.figure(figsize=(10, 9.2))
  layout = fig.add_gridspec(2, 3, width_ratios=[2, 3, 7], height_ratios=[7, 5])
  axes = [fig.add_subplot(layout[0, 0]), fig.add_subplot(layout[0, 1]),
          fig.add_subplot(layout[0, 2]), fig.add_subplot(layout[1, 0:2]),
          fig.add_subplot(layout[1, 2])]
  _grid(axes[0], np.vectorize(_number)(delta),
        title="1. delta δ = ∂E/∂y\n(2×2)")
  spread_colours = np.where(spread != 0, "#fddbc7", "white").tolist()
  _grid(axes[1], np.vectorize(_number)(spread), spread_colours,
        title=f"2. spread on the stride grid\n(stride {stride}, eq. 13)")
  padded_colours = np.full(padded.shape, "white", dtype=object)
  padded_colours[full:-full, full:-full] = np.where(spread != 0, "#fddbc7",
                                                    "#f7f7f7")
  _grid(axes[2], np.vectorize(_number)(padded), padded_colours, fontsize=9,
        title=f"3. padded by K − 1 = {full} on every side (a full correlation);"
        f"\nthe window for ∂E/∂x[1, 2] is outlined")
  _outline(axes[2], padded.shape[0], 1, 2, 3, 3)
  _grid(axes[3], np.vectorize(_number)(rotated),
        np.full((3, 3), "#d1e5f0", dtype=object),
        title="4. the kernel rotated by 180°\n(w = 1…9 row by row)")
  _grid(axes[4], np.vectorize(_number)(result),
        title="5. correlation of 3 with 4\n= ∂E/∂x (eq. 14), as "
        "jaxconv.conv_input_grad")
  _outline(axes[4], input_size, 1, 2, 1, 1)
  fig.suptitle("The input gradient of a stride-2 convolution (5×5 input, 3×3 "
               "kernel):\nthe delta, dilated by the stride, fully convolved "
               "with the rotated kernel", fontsize=12)
  return _save(fig, "input-gradient.png")


def pooling() -> Path:
  """Max pooling routes, average pooling spreads (2x2 windows, stride 2)."""
  x = np.array([[1.0, 5.0, 2.0, 0.0],
                [3.0, 2.0, 7.0, 4.0],
                [0.0, 6.0, 1.0, 1.0],
                [8.0, 2.0, 3.0, 9.0]])
  upstream = np.array([[1.0, 2.0], [3.0, 4.0]])
  rows = []
  for kind, pool in (("max", jaxconv.max_pool), ("average", jaxconv.avg_pool)):
    pooled, vjp = jax.vjp(
        lambda a, pool=pool: pool(a[..., None], (2, 2), 2)[..., 0],
        jnp.asarray(x))
    (grad,) = vjp(jnp.asarray(upstream))
    pooled, grad = np.asarray(pooled), np.asarray(grad)
    # Check against the rule written out: routing to the first largest entry
    # of each window, or spreading a quarter to each.
    ours = np.zeros_like(x)
    for i in range(2):
      for j in range(2):
        window = x[2 * i:2 * i + 2, 2 * j:2 * j + 2]
        if kind == "max":
          r, c = np.unravel_index(np.argmax(window), (2, 2))
          ours[2 * i + r, 2 * j + c] += upstream[i, j]
        else:
          ours[2 * i:2 * i + 2, 2 * j:2 * j + 2] += upstream[i, j] / 4
    _check(f"{kind} pooling gradient", ours, grad)
    rows.append((kind, pooled, grad))

  fig, axes = plt.subplots(2, 4, figsize=(10, 6.6),
                           gridspec_kw={"width_ratios": [4, 2, 2, 4]})
  window_colours = np.array([["#fde0dd", "#fde0dd", "#deebf7", "#deebf7"],
                             ["#fde0dd", "#fde0dd", "#deebf7", "#deebf7"],
                             ["#e5f5e0", "#e5f5e0", "#fff7bc", "#fff7bc"],
                             ["#e5f5e0", "#e5f5e0", "#fff7bc", "#fff7bc"]],
                            dtype=object)
  pooled_colours = np.array([["#fde0dd", "#deebf7"], ["#e5f5e0", "#fff7bc"]],
                            dtype=object)
  for row, (kind, pooled, grad) in enumerate(rows):
    ax = axes[row]
    _grid(ax[0], np.vectorize(_number)(x), window_colours,
          title="input x\n(2×2 windows, stride 2)")
    if kind == "max":
      for i in range(2):
        for j in range(2):
          window = x[2 * i:2 * i + 2, 2 * j:2 * j + 2]
          r, c = np.unravel_index(np.argmax(window), (2, 2))
          _outline(ax[0], 4, 2 * i + r, 2 * j + c, 1, 1)
    _grid(ax[1], np.vectorize(_number)(pooled), pooled_colours,
          title=f"{kind} pool\nP")
    _grid(ax[2], np.vectorize(_number)(upstream), pooled_colours,
          title="incoming\ndelta ∂E/∂P")
    grad_colours = np.where(grad != 0, window_colours, "white").tolist()
    _grid(ax[3], np.vectorize(_number)(grad), grad_colours,
          title="∂E/∂x\n(jax.vjp of jaxconv."
          + ("max_pool)" if kind == "max" else "avg_pool)"))
    if kind == "max":
      for i in range(2):
        for j in range(2):
          window = x[2 * i:2 * i + 2, 2 * j:2 * j + 2]
          r, c = np.unravel_index(np.argmax(window), (2, 2))
          _outline(ax[3], 4, 2 * i + r, 2 * j + c, 1, 1)
    label = ("Max pooling: each delta goes to its window's winner (outlined); "
             "the other inputs get 0" if kind == "max" else
             "Average pooling: each delta is spread evenly, a quarter to each "
             "input of its window")
    ax[0].text(-0.2, 4.9, label, fontsize=11, ha="left", va="bottom",
               transform=ax[0].transData, fontweight="bold")
  fig.subplots_adjust(hspace=0.45)
  return _save(fig, "pooling.png")


def find_results(path: Path | None) -> Path | None:
  """The results JSON of a ``--compare`` MNIST-1D run, if there is one."""
  candidates = [path] if path else RESULTS + sorted(
      (ROOT / "experiments" / "results").glob("mnist1d*/results.json"))
  for candidate in candidates:
    if candidate and candidate.is_file():
      results = json.loads(candidate.read_text())
      if "compare" in results or "loss_autodiff" in results.get(
          "history", {}).get("step_metrics", {}):
        return candidate
  return None


def _smooth(values, window: int):
  values = np.asarray(values, dtype=float)
  if len(values) < window or window < 2:
    return values
  kernel = np.ones(window) / window
  return np.convolve(values, kernel, mode="valid")


def training_curves(path: Path | None) -> Path | None:
  """Training loss, test accuracy and gradient differences, custom rules
  against autodiff."""
  found = find_results(path)
  if found is None:
    where = path or RESULTS[0].relative_to(ROOT)
    print(f"skipped training-curves.png: no results JSON of a --compare run at "
          f"{where}; run `python experiments/train_mnist1d.py --compare` "
          f"first (or pass --results PATH).")
    return None
  results = json.loads(found.read_text())
  history = results["history"]
  metrics = history["step_metrics"]
  steps = np.asarray(history["step"])
  window = max(1, len(steps) // 100)

  fig = plt.figure(figsize=(10, 8))
  layout = fig.add_gridspec(2, 2)
  axes = [fig.add_subplot(layout[0, :]), fig.add_subplot(layout[1, 0]),
          fig.add_subplot(layout[1, 1])]
  styles = {"custom": dict(color="C0", lw=1.4, label="custom rules (jaxconv)"),
            "autodiff": dict(color="C1", lw=1.2, ls="--",
                             label="jax.grad of lax")}
  for grad, key in (("custom", "loss"), ("autodiff", "loss_autodiff")):
    smoothed = _smooth(metrics[key], window)
    axes[0].plot(steps[len(steps) - len(smoothed):], smoothed, **styles[grad])
  axes[0].set(xlabel="step", ylabel=f"training loss (mean of {window} steps)",
              yscale="log", title="training loss, two separate runs")
  axes[0].legend()
  for grad in ("custom", "autodiff"):
    accuracy = history["test_accuracy"].get(grad)
    if accuracy:
      axes[1].plot(history["epoch"], accuracy, **styles[grad])
  axes[1].set(xlabel="epoch", ylabel="test accuracy", title="test accuracy")
  axes[1].legend(loc="lower right")
  if "grad_difference" in metrics:
    axes[2].plot(steps, np.maximum(np.asarray(metrics["grad_difference"],
                                              float), 1e-12),
                 lw=0.7, label="custom vs autodiff, float32")
  # Once per epoch, both float32 gradients against a float64 autodiff one.
  yardstick = history.get("float64_yardstick", {})
  for key, label in (("custom", "custom vs float64 autodiff"),
                     ("autodiff", "float32 autodiff vs float64 autodiff")):
    if yardstick.get(key):
      axes[2].plot(yardstick["step"],
                   np.maximum(np.asarray(yardstick[key], float), 1e-12),
                   marker="o", ms=3, lw=0.8, label=label)
  axes[2].set(xlabel="step", ylabel="relative difference", yscale="log",
              title="gradients at the same parameters")
  axes[2].legend(fontsize="small")
  fig.suptitle(f"MNIST-1D, {results.get('steps', len(steps))} steps: "
               f"{results.get('command', '')}", fontsize=10)
  fig.tight_layout()
  shown = found.relative_to(ROOT) if found.is_relative_to(ROOT) else found
  print(f"read {shown}")
  return _save(fig, "training-curves.png")


FIGURE_FUNCTIONS = {
    "sliding-window": sliding_window,
    "weight-gradient": weight_gradient,
    "input-gradient": input_gradient,
    "pooling": pooling,
}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--only", choices=sorted(FIGURE_FUNCTIONS) +
                      ["training-curves"], action="append",
                      help="draw only these figures (repeatable)")
  parser.add_argument("--results", type=Path, default=None,
                      help="results JSON of `experiments/train_mnist1d.py "
                      "--compare` (default: the newest under "
                      "experiments/results/mnist1d*/)")
  args = parser.parse_args(argv)
  names = args.only or sorted(FIGURE_FUNCTIONS) + ["training-curves"]
  for name in names:
    if name == "training-curves":
      training_curves(args.results)
    else:
      FIGURE_FUNCTIONS[name]()
  return 0


if __name__ == "__main__":
  sys.exit(main())
