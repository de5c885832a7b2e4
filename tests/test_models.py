"""Whole networks: every layer's custom rule chained by jax.grad equals JAX's
autodiff of the same network built from lax.conv_general_dilated,
lax.reduce_window and jax.nn (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv import models
from tests.helpers import scaled_error

INPUT_SHAPES = {"mnist1d_cnn": (6, 40), "lenet": (6, 8, 8, 1)}


def setup(name, seed=0):
  model = models.MODELS[name]
  params = model.init(jax.random.key(seed), dtype=jnp.float64)
  x = jax.random.normal(jax.random.key(seed + 1), INPUT_SHAPES[name],
                        jnp.float64)
  labels = jnp.arange(x.shape[0]) % 10
  return model, params, x, labels


def gradients(model, params, x, labels, grad):
  """Gradients for the parameters and for the input, through every layer."""
  return jax.jit(jax.grad(models.loss, argnums=(1, 2)), static_argnums=(0, 4))(
      model.apply, params, x, labels, grad)


def assert_trees_close(got, want, tol):
  errors = jax.tree.map(scaled_error, got, want)
  worst = max(jax.tree.leaves(errors))
  assert worst <= tol, errors


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_model_gradient_equals_autodiff(name):
  model, params, x, labels = setup(name)
  apply = jax.jit(model.apply, static_argnums=2)
  np.testing.assert_allclose(apply(params, x, "custom"),
                             apply(params, x, "autodiff"), rtol=1e-12)
  custom = gradients(model, params, x, labels, "custom")
  autodiff = gradients(model, params, x, labels, "autodiff")
  # The gradients are not small: a zeroed or halved layer cannot pass.
  assert min(np.max(np.abs(g)) for g in jax.tree.leaves(autodiff)) > 1e-3
  assert_trees_close(custom, autodiff, 1e-10)


# The hand-written rule of each layer kind, and how often each network uses
# it: (convolution, its bias, relu, max pooling, dense, loss).
RULES = ("_conv", "_add_bias", "_relu", "_extremum_pool", "_dense",
         "_softmax_cross_entropy")
USES = {"lenet": (2, 2, 3, 2, 2, 1), "mnist1d_cnn": (3, 3, 4, 3, 2, 1)}


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_the_custom_network_runs_the_hand_written_rules(name):
  """"custom" really goes through jaxconv's rules: the loss's program is
  made of nothing but jaxconv's custom_vjp calls, one per layer, each
  carrying its hand-written backward, and changes of shape (the flatten;
  mnist1d_cnn's new channel axis); so jax.grad can only chain those rules.
  The "autodiff" program has none of them. That each rule is right, and
  that a wrong one is caught, is tested layer by layer (test_layers.py,
  test_teeth.py, test_pooling_teeth.py)."""
  model, params, x, labels = setup(name)
  programs = {grad: jax.make_jaxpr(models.loss, static_argnums=(0, 4))(
      model.apply, params, x, labels, grad) for grad in models.GRADS}
  custom = programs["custom"]
  assert {eqn.primitive.name for eqn in custom.jaxpr.eqns} <= {
      "custom_vjp_call", "reshape", "broadcast_in_dim"}
  text = str(custom)
  for rule, uses in zip(RULES, USES[name]):
    assert text.count(f"name={rule}\n") == uses, rule
    assert text.count(f"bwd={rule}_bwd\n") == uses, rule
  assert "custom_vjp_call" not in str(programs["autodiff"])


def test_model_hessian_vector_product_equals_autodiff():
  # Reverse over reverse through the whole network: the backward rules of
  # conv, relu, max pool, dense and the loss are differentiated in turn.
  model, params, x, labels = setup("lenet")
  direction = jax.tree.map(
      lambda p: jax.random.normal(jax.random.key(7), p.shape, p.dtype), params)

  def hvp(grad):
    def directional(p):
      g = jax.grad(models.loss, argnums=1)(model.apply, p, x, labels, grad)
      return sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g),
                                               jax.tree.leaves(direction)))
    return jax.jit(jax.grad(directional))(params)

  assert_trees_close(hvp("custom"), hvp("autodiff"), 1e-9)


def test_unknown_grad_is_rejected():
  with pytest.raises(ValueError, match="`grad`"):
    models.layers("numerical")


def test_gradient_consumed_inside_the_jitted_program():
  """Digits in float32, with the gradient reduced inside the same jitted
  program, as the training script's --compare check does. There XLA may
  recompute the first max pool's input (the 1-channel convolution, bias and
  relu) inside a later fusion, with other rounding. Winners found by
  comparing such recomputed taps with the stored pooled output, instead of
  by one scan, put the first layer's gradient 4 % off here (before the
  offsets were stored through a reduction, when XLA still fused the winner
  computation into the backward)."""
  datasets = pytest.importorskip("sklearn.datasets")
  digits = datasets.load_digits()
  x = jnp.asarray(digits.images[:32, :, :, None] / 16.0, jnp.float32)
  labels = jnp.asarray(digits.target[:32])
  params = models.init_lenet(jax.random.key(0))
  want = jax.grad(models.loss, argnums=1)(models.lenet, params, x, labels,
                                          "autodiff")

  @jax.jit
  def worst_error(params, x, labels):
    got = jax.grad(models.loss, argnums=1)(models.lenet, params, x, labels,
                                           "custom")
    return jnp.max(jnp.stack(jax.tree.leaves(jax.tree.map(
        lambda a, b: jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)),
        got, want))))

  assert float(worst_error(params, x, labels)) < 1e-5
