"""`python -m jaxconv.explain --layers ...`: small networks written out with
numbers; the seeds' examples, every layer kind against plain JAX autodiff, the
wrong-answer comparison, values from files, errors, and a check that bites."""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxconv import explain
from jaxconv.explain import _cli, _formula, _layers, _network

# The two-layer question: a 3x3 input, two 2x2 kernels, C = (o2 - y)^2.
TWO_LAYERS = [
    "--input", "3x3", "--layers", "conv:2x2", "conv:2x2", "--cost", "squared",
    "--value", "i=0.1,0.2,0.3/0.4,0.5,0.6/0.7,0.8,0.9",
    "--value", "w1=0.1,-0.2/0.3,0.4", "--value", "w2=0.5,-0.6/0.7,0.2",
    "--value", "y=1", "--grad", "w1_1", "--grad", "w2_1",
    "--wrong", "w1_1=product-of-sums"]
# The published 5x5 input and the 4x4 delta of its 2x2 convolution.
SEED_INPUT = np.array([[0.51, 0.9, 0.88, 0.84, 0.05],
                       [0.4, 0.62, 0.22, 0.59, 0.1],
                       [0.11, 0.2, 0.74, 0.33, 0.14],
                       [0.47, 0.01, 0.85, 0.7, 0.09],
                       [0.76, 0.19, 0.72, 0.17, 0.57]])
SEED_DELTA = np.array([[0, 0, 0.0686, 0],
                       [0, 0.0364, 0, 0],
                       [0, 0.0467, 0, 0],
                       [0, 0, 0, -0.0681]])
# Max pooling after a convolution and a relu: the routing picture.
ROUTING = ["--input", "5x5", "--layers", "conv:2x2", "relu",
           "max_pool:2x2,stride=2", "--cost", "half-squared", "--value",
           "w1=0.5,-0.3/-0.2,0.4", "--grad", "w1_1", "--brief", "--seed", "1"]


def _rows(values: np.ndarray) -> str:
  return "/".join(",".join(repr(float(v)) for v in row) for row in values)


def _equation_value(text: str, lhs: str) -> float:
  """The number that ends the equation of ``lhs`` (which may span lines)."""
  lines = text[text.index(f"{lhs} = "):].splitlines()
  equation = [lines[0]]
  for line in lines[1:]:
    if not line.lstrip().startswith(("= ", "+ ", "- ")):
      break
    equation.append(line)
  return float(re.findall(r"= (-?\d[\d.]*(?:e-?\d+)?)",
                          " ".join(equation))[-1])


def test_two_layer_question_in_one_command():
  """dC/dw1_1 = sum_j delta1_j * i_(j) = -0.3906 (the worked example), the
  asker's dC/dw2_1 = o1_1 * 2 (o2 - y) = -0.3654, and the product of sums
  (i1 + i2 + i4 + i5) * sum_j delta1_j = -1.2096 beside it."""
  result = subprocess.run(
      [sys.executable, "-m", "jaxconv.explain", *TWO_LAYERS],
      capture_output=True, text=True, encoding="utf-8", check=False)
  assert result.returncode == 0, result.stderr
  out = result.stdout
  # The numbers, computed here from the question's own formulas.
  i = np.arange(1, 10).reshape(3, 3) / 10
  w1 = np.array([[0.1, -0.2], [0.3, 0.4]])
  w2 = np.array([[0.5, -0.6], [0.7, 0.2]])
  o1 = np.array([[np.sum(i[r:r + 2, c:c + 2] * w1) for c in range(2)]
                 for r in range(2)])
  o2 = np.sum(o1 * w2)
  delta1 = w2 * 2 * (o2 - 1.0)
  touched = np.array([[i[0, 0], i[0, 1]], [i[1, 0], i[1, 1]]])
  true = np.sum(delta1 * touched)
  product_of_sums = touched.sum() * delta1.sum()
  assert true == pytest.approx(-0.3906) and product_of_sums == pytest.approx(
      -1.2096)
  assert _equation_value(out, "∂C/∂w¹₁") == pytest.approx(true, abs=5e-5)
  assert _equation_value(out, "∂C/∂w²₁") == pytest.approx(
      o1[0, 0] * 2 * (o2 - 1.0), abs=5e-5)
  assert "∂C/∂w¹₁ = δ¹₁·i₁ + δ¹₂·i₂ + δ¹₃·i₄ + δ¹₄·i₅" in out
  wrong = out[out.index("A tempting wrong answer for ∂C/∂w¹₁"):]
  assert "(i₁ + i₂ + i₄ + i₅)·(δ¹₁ + δ¹₂ + δ¹₃ + δ¹₄)" in wrong
  assert f"= {product_of_sums:.4f}\n" in wrong
  assert "It adds 12 products" in wrong and "It drops none." in wrong
  assert "Check passed" in out


def test_two_layer_numbers_from_python():
  """The same through the function: every forward value and delta."""
  values = {"i": np.arange(1, 10) / 10, "w1": [0.1, -0.2, 0.3, 0.4],
            "w2": [0.5, -0.6, 0.7, 0.2], "y": 1.0}
  result = explain.explain_network(
      (3, 3), ["conv:2x2", "conv:2x2"], "squared", values=values,
      grads=["w1_1"], wrong={"w1_1": "product-of-sums"})
  assert result.passed and result.max_difference < 1e-12
  np.testing.assert_allclose(result.arrays["o1"], [[0.29, 0.35],
                                                   [0.47, 0.53]])
  np.testing.assert_allclose(result.arrays["o2"], [[0.37]])
  np.testing.assert_allclose(result.arrays["d2"], [[-1.26]])
  np.testing.assert_allclose(result.arrays["d1"], [[-0.63, 0.756],
                                                   [-0.882, -0.252]])
  np.testing.assert_allclose(result.wrong_answers["w1_1"],
                             (-1.2096, -0.3906))
  assert result.gradients["w2"][0, 0] == pytest.approx(-0.3654)


def test_seed_weight_gradient_of_the_5x5_input(capsys):
  """A 5x5 input, a given 4x4 delta, no cost: the printed 2x2 kernel
  gradient is the published [[0.044606, 0.094061], [0.011262, 0.068288]]."""
  argv = ["--input", "5x5", "--layers", "conv:2x2", "--value",
          f"i={_rows(SEED_INPUT)}", "--value", f"d1={_rows(SEED_DELTA)}",
          "--grad", "w1", "--brief"]
  assert explain.main(argv) == 0
  out = capsys.readouterr().out
  first, second = out.split("    ∂C/∂w¹ = ")[1].splitlines()[:2]
  printed = np.array([[float(v) for v in row.split()]
                      for row in (first, second)])
  published = np.array([[0.044606, 0.094061], [0.011262, 0.068288]])
  np.testing.assert_allclose(printed, published, atol=5e-7)
  # Each entry also ends its own written-out sum (eq. 9).
  for q, value in enumerate(published.ravel(), start=1):
    assert _equation_value(out, f"∂C/∂w¹{'₁₂₃₄'[q - 1]}") == pytest.approx(
        value, abs=5e-7)
  # Independently: the correlation of the input with the delta.
  correlation = np.array([[np.sum(SEED_INPUT[r:r + 4, c:c + 4] * SEED_DELTA)
                           for c in range(2)] for r in range(2)])
  np.testing.assert_allclose(printed, correlation, atol=5e-7)


def test_max_pool_routing_picture(capsys):
  """Each window's largest value is starred, and the delta below the pool
  is the pool's delta at the star and 0 elsewhere (eq. 36)."""
  assert explain.main(ROUTING) == 0
  out = capsys.readouterr().out
  picture = out.split("o², the window's largest starred")[1].splitlines()[1:6]
  assert set(picture[2].strip()) <= set("-+ ")  # the rule between windows
  cells = [[c for c in row.split() if c != "|"]
           for i, row in enumerate(picture) if i != 2]
  starred = np.array([["*" in c for c in row[:4]] for row in cells])
  routed = np.array([[float(c) for c in row[4:]] for row in cells])
  result = explain.explain_network(
      (5, 5), ["conv:2x2", "relu", "max_pool:2x2,stride=2"], "half-squared",
      values={"w1": [0.5, -0.3, -0.2, 0.4]}, seed=1)
  o2, d3 = result.arrays["o2"], result.arrays["d3"]
  expected = np.zeros((4, 4), bool)
  expected_delta = np.zeros((4, 4))
  for r in range(2):
    for c in range(2):
      window = o2[2 * r:2 * r + 2, 2 * c:2 * c + 2]
      k = int(np.argmax(window))  # the first largest, row by row
      expected[2 * r + k // 2, 2 * c + k % 2] = True
      expected_delta[2 * r + k // 2, 2 * c + k % 2] = d3[r, c]
      assert np.sum(window == window.max()) == 1  # no tie in this example
  np.testing.assert_array_equal(starred, expected)
  np.testing.assert_allclose(routed, expected_delta, atol=5e-4)
  np.testing.assert_allclose(result.arrays["d2"], expected_delta, atol=1e-15)


# ---------------------------------------------------------------------------
# Every layer kind, every cost: against plain JAX autodiff of lax / jax.nn.
# ---------------------------------------------------------------------------


def _lax_chain(input_shape, layers, cost, arrays):
  """The network from lax and jax.nn only, and jax.grad of it (float64)."""
  def chain(parameters):
    x = parameters["i"]
    for number, text in enumerate(layers, start=1):
      layer = _layers.parse_layer(text)
      if layer.kind == "conv":
        x = lax.conv_general_dilated(
            x[None, None], parameters[f"w{number}"][None, None],
            _per_dimension(layer.stride, x.ndim),
            layer.padding if isinstance(layer.padding, str)
            else layer.padding * (x.ndim if len(layer.padding) == 1 else 1),
            rhs_dilation=_per_dimension(layer.dilation, x.ndim),
            precision=lax.Precision.HIGHEST)[0, 0]
        if layer.bias:
          x = x + parameters[f"b{number}"]
      elif layer.kind == "max_pool":
        x = lax.reduce_window(x, -jnp.inf, lax.max, layer.shape,
                              _per_dimension(layer.stride or 1, x.ndim),
                              "VALID")
      elif layer.kind == "avg_pool":
        x = lax.reduce_window(x, 0.0, lax.add, layer.shape,
                              _per_dimension(layer.stride or 1, x.ndim),
                              "VALID") / np.prod(layer.shape)
      elif layer.kind == "leaky_relu":
        x = jax.nn.leaky_relu(x, layer.slope)
      else:
        x = {"relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid,
             "tanh": jnp.tanh}[layer.kind](x)
    if cost == "squared":
      return jnp.sum((x.ravel() - arrays["y"].ravel()) ** 2)
    if cost == "half-squared":
      return 0.5 * jnp.sum((arrays["y"].ravel() - x.ravel()) ** 2)
    if cost == "softmax-cross-entropy":
      return -jax.nn.log_softmax(x.ravel())[arrays["y"] - 1]
    return jnp.sum(arrays[f"d{len(layers)}"] * x)

  names = ["i"] + [n for n in arrays if n[0] in "wb"]
  with jax.enable_x64(True):
    parameters = {n: jnp.asarray(arrays[n], jnp.float64) for n in names}
    gradients = jax.jit(jax.grad(chain))(parameters)
    return {n: np.asarray(g) for n, g in gradients.items()}


def _per_dimension(value, n):
  return (value,) * n if isinstance(value, int) else tuple(value)


CHAINS = [
    # 1-D: bias, every smooth activation, average pooling, cross-entropy.
    ((6,), ["conv:3,bias", "sigmoid", "avg_pool:2,stride=2", "tanh",
            "leaky_relu:0.1"], "softmax-cross-entropy", 5),
    # 2-D: stride and padding, relu, overlapping max pooling (stride 1, the
    # library's default), a second convolution, the squared cost.
    ((5, 5), ["conv:2x2,stride=2,padding=1", "relu", "max_pool:2x2",
              "conv:2x2"], "squared", 5),
    # Kernel dilation, the half squared error.
    ((5, 4), ["conv:2x2,dilation=2x1", "tanh"], "half-squared", 5),
    # No cost: the last delta given (drawn).
    ((4, 4), ["conv:3x3,padding=SAME", "max_pool:2x2,stride=2"], None, 5),
    # A relu between two convolutions: negative inputs of the relu receive
    # a delta from the second convolution, which the relu's slope stops
    # (with seed 10, five of the nine do).
    ((4, 4), ["conv:2x2", "relu", "conv:2x2,bias"], "squared", 10),
]


@pytest.mark.parametrize("input_shape, layers, cost, seed", CHAINS,
                         ids=["1d-smooth-ce", "2d-stride-pool-conv",
                              "dilation-half", "given-delta", "relu-between"])
def test_every_layer_kind_matches_plain_autodiff(input_shape, layers, cost,
                                                 seed):
  """Our numbers (and the built-in check against jaxconv) agree with
  jax.grad of the same network written with lax and jax.nn."""
  result = explain.explain_network(input_shape, layers, cost, grads=["all"],
                                   seed=seed)
  assert result.passed and result.max_difference < 1e-12
  # Ties in a max-pool window (relu zeros) go to the first in lax too.
  reference = _lax_chain(input_shape, layers, cost, result.arrays)
  assert set(reference) == set(result.gradients)
  for name, gradient in reference.items():
    np.testing.assert_allclose(result.gradients[name], gradient, rtol=1e-10,
                               atol=1e-12, err_msg=name)
  assert np.abs(reference["i"]).max() > 1e-3  # the chain is not dead
  if layers[1:2] == ["relu"] and layers[2].startswith("conv"):
    # The case has teeth: some negative relu input gets a nonzero delta.
    stopped = (result.arrays["o1"] < 0) & (result.arrays["d2"] != 0)
    assert stopped.any() and np.all(result.arrays["d1"][stopped] == 0)


# ---------------------------------------------------------------------------
# The check bites: a wrong rule makes it fail (and the exit status 1). Each
# wrong rule is a subclass of the explainer, run through the command line's
# entry point, which takes the explainer as an argument; nothing in the
# library is patched.
# ---------------------------------------------------------------------------


class _DroppedConvTerm(_network._Explainer):
  """Eq. (12) with one product missing from every convolution delta."""

  def _delta(self, stage, j):
    terms, equation = super()._delta(stage, j)
    if stage.layer.kind != "conv":
      return terms, equation
    terms = terms[1:]
    value = sum(c * np.prod([self.known[s] for s in f]) for c, f in terms)
    return terms, dataclasses.replace(equation, value=float(value))


class _ReluWithoutSlope(_network._Explainer):
  """The delta passed through the relu without its slope (eq. 57)."""

  def _delta(self, stage, j):
    terms, equation = super()._delta(stage, j)
    if stage.layer.kind != "relu":
      return terms, equation
    symbol = _layers.delta_symbol(stage.number, j)
    return [(1.0, (symbol,))], dataclasses.replace(
        equation, value=self.known[symbol])


class _FlippedCostSign(_network._Explainer):
  """The cost's delta 2(y - o) instead of 2(o - y)."""

  def _cost_deltas(self):
    lines = super()._cost_deltas()
    for j, equation in enumerate(lines):
      symbol = _layers.delta_symbol(self.last, j)
      self.known[symbol] = -equation.value
      self.delta_terms[symbol] = [(-c, f) for c, f in
                                  self.delta_terms[symbol]]
    return [dataclasses.replace(e, value=-e.value) for e in lines]


class _WeightTermDropped(_network._Explainer):
  """Eq. (9) with the first product missing."""

  def _weight_gradient_terms(self, stage, q):
    return super()._weight_gradient_terms(stage, q)[1:]


WRONG_EXPLAINERS = {"dropped-conv-term": _DroppedConvTerm,
                    "relu-no-slope": _ReluWithoutSlope,
                    "flipped-cost-sign": _FlippedCostSign,
                    "weight-term-dropped": _WeightTermDropped}
# Two of the relu's inputs are negative (o1_6 and o1_7) with these values.
BITING_ARGV = ["--input", "4x4", "--layers", "conv:2x2", "relu", "conv:2x2",
               "--cost", "squared", "--value", "w1=0.5,-0.3/-0.2,0.4",
               "--brief"]


def _run_with(explainer_class, capsys):
  """The command line on BITING_ARGV with ``explainer_class``: the exit
  status and the last section of the printout."""
  network = functools.partial(_network._explain_network, explainer_class)
  status = _cli._main(BITING_ARGV, explain.explain, network)
  out = capsys.readouterr().out
  return status, out.split("\n\n")[-1]


def test_the_check_passes_with_the_right_rules(capsys):
  """The explainer itself, through the same entry point: passed, status 0."""
  status, check = _run_with(_network._Explainer, capsys)
  assert status == 0 and check.startswith("Check passed"), check


@pytest.mark.parametrize("mutation", list(WRONG_EXPLAINERS))
def test_the_check_catches_a_wrong_rule(mutation, capsys):
  """A wrong rule in the explainer: "Check FAILED" and exit status 1."""
  status, check = _run_with(WRONG_EXPLAINERS[mutation], capsys)
  assert status == 1
  assert check.startswith("Check FAILED"), check


# ---------------------------------------------------------------------------
# Wrong answers.
# ---------------------------------------------------------------------------


def _two_layers(**kwargs):
  values = {"i": np.arange(1, 10) / 10, "w1": [0.1, -0.2, 0.3, 0.4],
            "w2": [0.5, -0.6, 0.7, 0.2], "y": 1.0}
  return explain.explain_network((3, 3), ["conv:2x2", "conv:2x2"], "squared",
                                 values=values, **kwargs)


def test_the_askers_own_formula_is_the_product_of_sums():
  """Written as in the question, (i1 + i2 + i4 + i5) * sum_j w2_j 2(o2 - y),
  it is -1.2096; multiplied out with the deltas written out it has 32
  products, the true gradient 8: it adds 24 and drops none."""
  result = _two_layers(grads=["w1_1"], wrong={
      "w1_1": "(i1+i2+i4+i5)*(w2_1+w2_2+w2_3+w2_4)*2(o2_1-y1)"})
  wrong, true = result.wrong_answers["w1_1"]
  assert wrong == pytest.approx(-1.2096) and true == pytest.approx(-0.3906)
  text = "\n".join(result.sections[-2])
  assert "the true gradient is a sum of 8 products, your formula of 32" in (
      text.replace("\n", " "))
  assert "It adds 24 products" in text and "It drops none." in text


def test_a_right_formula_is_recognised():
  """The true sum of products in the printed notation: same value, same
  products."""
  result = _two_layers(grads=["w1_1"], wrong={
      "w1_1": "δ¹₁·i₁ + δ¹₂·i₂ + δ¹₃·i₄ + δ¹₄·i₅"})
  wrong, true = result.wrong_answers["w1_1"]
  assert wrong == pytest.approx(true, abs=1e-15)
  text = " ".join(result.sections[-2])
  assert "They are the same products: the formula is right." in text


def test_the_unrotated_kernel_adds_and_drops_four_products():
  """The input gradient with the kernel not rotated (eq. 14 forgotten)."""
  result = _two_layers(grads=["i5"], wrong={
      "i5": "d1_1*w1_1 + d1_2*w1_2 + d1_3*w1_3 + d1_4*w1_4"})
  text = "\n".join(result.sections[-2])
  assert "It adds 4 products" in text and "It drops 4 products" in text
  assert "δ¹₁·w¹₄ + δ¹₂·w¹₃ + δ¹₃·w¹₂ + δ¹₄·w¹₁" in text
  wrong, true = result.wrong_answers["i5"]
  d1, w1 = result.arrays["d1"].ravel(), np.array([0.1, -0.2, 0.3, 0.4])
  assert wrong == pytest.approx(np.dot(d1, w1))
  assert true == pytest.approx(np.dot(d1, w1[::-1]))


def test_a_formula_that_is_not_a_polynomial_is_compared_by_value():
  result = _two_layers(grads=["w1_1"], wrong={"w1_1": "i1/w1_1"})
  assert result.wrong_answers["w1_1"][0] == pytest.approx(0.1 / 0.1)
  assert "not compared term by term" in " ".join(result.sections[-2])


def test_formula_parsing_and_multiplying_out():
  typed = _formula.parse("2(o2_1 - y1)^2 - w^1_3/4")
  printed = _formula.parse("2·(o²₁ − y₁)² − w¹₃/4")
  assert _formula.expand(typed) == _formula.expand(printed)
  o, y, w = (_formula.Symbol("o", 2, 0), _formula.Symbol("y", None, 0),
             _formula.Symbol("w", 1, 2))
  expanded = _formula.cleaned(_formula.expand(typed))
  assert expanded == {_formula.monomial(o, o): 2.0,
                      _formula.monomial(o, y): -4.0,
                      _formula.monomial(y, y): 2.0,
                      _formula.monomial(w): -0.25}
  values = {o: 0.37, y: 1.0, w: 0.3}
  assert _formula.evaluate(typed, values) == pytest.approx(
      2 * (0.37 - 1) ** 2 - 0.3 / 4)
  assert _formula.render(typed) == "2·(o²₁ - y₁)^2 - w¹₃/4"
  with pytest.raises(ValueError, match="needs a layer and a position"):
    _formula.parse("w1 + 1")


# ---------------------------------------------------------------------------
# Values: files, rows, stable draws.
# ---------------------------------------------------------------------------


def test_values_from_json_and_npy_files(tmp_path, capsys):
  np.save(tmp_path / "kernel.npy", np.array([[0.1, -0.2], [0.3, 0.4]]))
  (tmp_path / "values.json").write_text(json.dumps(
      {"i": [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]],
       "w2": [[0.5, -0.6], [0.7, 0.2]], "y": 1}))
  argv = ["--input", "3x3", "--layers", "conv:2x2", "conv:2x2", "--cost",
          "squared", "--values", str(tmp_path / "values.json"), "--value",
          f"w1={tmp_path / 'kernel.npy'}", "--grad", "w1_1", "--brief"]
  assert explain.main(argv) == 0
  out = capsys.readouterr().out
  assert "Values: i, w¹, w² and y given." in out
  assert _equation_value(out, "∂C/∂w¹₁") == pytest.approx(-0.3906)


def test_giving_one_value_keeps_the_others_draws():
  drawn = explain.explain_network((4, 4), ["conv:2x2"], "half-squared",
                                  seed=7)
  partly = explain.explain_network((4, 4), ["conv:2x2"], "half-squared",
                                   values={"w1": [1, 2, 3, 4]}, seed=7)
  np.testing.assert_array_equal(drawn.arrays["i"], partly.arrays["i"])
  np.testing.assert_array_equal(drawn.arrays["y"], partly.arrays["y"])
  assert np.all(drawn.arrays["i"] == np.round(drawn.arrays["i"], 2))


@pytest.mark.parametrize("argv, message", [
    (["--layers", "conv:2x2,strid=2"], "unknown option 'strid'"),
    (["--layers", "convo:2x2"], "unknown layer 'convo'"),
    (["--layers", "conv:2"], "its kernel 2 has 1 dimension"),
    (["--layers", "conv:4x4"], "no output"),
    (["--layers", "conv:2x2", "--cost", "mse"], "`cost` must be one of"),
    (["--layers", "conv:2x2", "--value", "w1=1,2,3"],
     "`w1` needs 4 numbers (a 2x2 kernel), got 3"),
    (["--layers", "conv:2x2", "--value", "x=1"], "'x' is not a value name"),
    (["--layers", "conv:2x2", "--value", "i=1,2/3"], "different lengths"),
    (["--layers", "conv:2x2", "--grad", "w1_9"], "w1_1..w1_4"),
    (["--layers", "conv:2x2", "--grad", "w2"], "layer 2 has no weights"),
    (["--layers", "relu", "--cost", "softmax-cross-entropy", "--value",
      "y=10"], "from 1 to 9"),
    (["--layers", "conv:2x2", "--wrong", "w1_1=(i1+"], "ends too early"),
    (["--layers", "conv:2x2", "--wrong", "w1_1=w3_1"], "does not have"),
    (["--layers", "conv:2x2", "--wrong", "product-of-sums"],
     "say which gradient"),
])
def test_bad_network_arguments_exit_2_with_one_line(argv, message, capsys):
  assert explain.main(["--input", "3x3", *argv]) == 2
  err = capsys.readouterr().err
  assert message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("argv, message", [
    (["--layers", "conv:2x2", "--kernel", "2x2"], "--kernel describes one"),
    (["--kernel", "2x2", "--cost", "squared"], "--cost needs --layers"),
])
def test_mixing_the_two_modes_is_a_usage_error(argv, message, capsys):
  with pytest.raises(SystemExit) as error:
    explain.main(["--input", "3x3", *argv])
  assert error.value.code == 2
  assert message in capsys.readouterr().err


def test_ascii_output(capsys):
  assert explain.main(TWO_LAYERS[:-2] + ["--ascii", "--brief"]) == 0
  out = capsys.readouterr().out
  assert "dC/dw^1_1 = d^1_1*i_1 + d^1_2*i_2 + d^1_3*i_4 + d^1_4*i_5" in out
  assert not set(out) & set("∂·δ¹₁²")


def test_entry_points_resolve_to_main():
  scripts = importlib.metadata.entry_points(group="console_scripts")
  assert scripts["jaxconv-explain"].load() is explain.main
