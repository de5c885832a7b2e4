"""Two small CNNs, each written once and run with either kind of gradient.

The networks are the ones of ``docs/derivation.md`` Part III: convolution,
activation ``f``, pooling, repeated, then flatten, dense layers and a loss.
Each is written once, against a small table of layers, ``Layers``:

* ``layers("custom")`` holds jaxconv's functions, so every gradient of the
  network is a hand-derived ``custom_vjp`` rule (convolution, relu, max
  pooling, dense, softmax cross-entropy) and ``jax.grad`` only chains them;
* ``layers("autodiff")`` holds the same layers built from
  ``lax.conv_general_dilated``, ``lax.reduce_window`` and ``jax.nn``, whose
  gradients are JAX's own. It is the oracle the custom network is checked
  against (tests/test_models.py, ``experiments/ --compare``).

Parameters are plain dicts of arrays (``params["conv1"]["w"]``), laid out
like Flax's ``nn.Conv`` and ``nn.Dense`` (kernels ``(*window, C_in, C_out)``
and ``(d_in, d_out)``), so they can be handed to optax as they are.

Example:
  >>> import jax, jaxconv.models as models
  >>> params = models.init_lenet(jax.random.key(0))
  >>> images = jax.numpy.zeros((5, 8, 8, 1))
  >>> models.lenet(params, images).shape
  (5, 10)
  >>> grads = jax.grad(models.loss, argnums=1)(models.lenet, params, images,
  ...                                          jax.numpy.zeros(5, int))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

import jaxconv

__all__ = [
    "GRADS",
    "Layers",
    "Model",
    "MODELS",
    "layers",
    "init_mnist1d_cnn",
    "mnist1d_cnn",
    "init_lenet",
    "lenet",
    "loss",
]

GRADS = ("custom", "autodiff")


class Layers(NamedTuple):
  """The layers a network is written against; see :func:`layers`."""
  conv: Callable
  relu: Callable
  max_pool: Callable
  dense: Callable
  softmax_cross_entropy: Callable


# --- The same layers from lax and jax.nn, differentiated by JAX. -------------


def _lax_conv(x, w, b=None, *, stride=1, padding="VALID"):
  """``jaxconv.conv``'s channels-last convolution from lax (no groups)."""
  n = w.ndim - 2
  if isinstance(padding, int):
    padding = ((padding, padding),) * n
  spatial = "DHW"[3 - n:] if n <= 3 else None
  numbers = lax.conv_dimension_numbers(
      x.shape, w.shape, (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"))
  strides = (stride,) * n if isinstance(stride, int) else tuple(stride)
  y = lax.conv_general_dilated(x, w, strides, padding,
                               dimension_numbers=numbers)
  return y if b is None else y + b


def _lax_max_pool(x, window_shape, strides=None, padding="VALID"):
  """Flax's ``max_pool`` (channels last, one batch axis) from reduce_window."""
  strides = window_shape if strides is None else strides
  if not isinstance(padding, str):
    padding = ((0, 0),) + tuple(padding) + ((0, 0),)
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window_shape, 1),
                           (1, *strides, 1), padding)


def _lax_dense(x, w, b=None):
  y = jnp.matmul(x, w, precision=lax.Precision.HIGHEST)
  return y if b is None else y + b


def _lax_softmax_cross_entropy(logits, labels):
  log_p = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(log_p, labels[..., None], axis=-1))


_AUTODIFF = Layers(conv=_lax_conv, relu=jax.nn.relu, max_pool=_lax_max_pool,
                   dense=_lax_dense,
                   softmax_cross_entropy=_lax_softmax_cross_entropy)


def layers(grad: str = "custom") -> Layers:
  """The layer table for ``grad``: ``"custom"`` (jaxconv) or ``"autodiff"``.

  Args:
    grad: ``"custom"`` for jaxconv's hand-derived rules, ``"autodiff"`` for
      the lax / jax.nn twins differentiated by JAX.

  Returns:
    A :class:`Layers` of functions with jaxconv's signatures.

  Raises:
    ValueError: ``grad`` is neither.
  """
  if grad == "custom":
    return Layers(conv=jaxconv.conv, relu=jaxconv.relu,
                  max_pool=jaxconv.max_pool,
                  dense=jaxconv.dense,
                  softmax_cross_entropy=jaxconv.softmax_cross_entropy)
  if grad == "autodiff":
    return _AUTODIFF
  raise ValueError(f"`grad` must be one of {GRADS}, got {grad!r}.")


# --- Initialisation. ---------------------------------------------------------


def _init_layer(key, kernel_shape, dtype):
  """He-normal kernel (fan in = window x C_in, suited to relu), zero bias."""
  init = jax.nn.initializers.he_normal(in_axis=-2, out_axis=-1)
  return {"w": init(key, kernel_shape, dtype),
          "b": jnp.zeros(kernel_shape[-1], dtype)}


def _init_stack(key, shapes, dtype):
  keys = jax.random.split(key, len(shapes))
  return {name: _init_layer(k, shape, dtype)
          for k, (name, shape) in zip(keys, shapes.items())}


# --- MNIST-1D: sequences of 40 samples, 10 classes. --------------------------


def init_mnist1d_cnn(key, *, length=40, channels=(32, 64, 64), hidden=128,
                     classes=10, dtype=jnp.float32):
  """Parameters of :func:`mnist1d_cnn`.

  Args:
    key: a ``jax.random`` key.
    length: the sequence length (40 for MNIST-1D).
    channels: output channels of the three convolutions.
    hidden: width of the hidden dense layer.
    classes: number of classes.
    dtype: parameter dtype.

  Returns:
    ``{"conv1", "conv2", "conv3", "dense1", "dense2"}``, each ``{"w", "b"}``.
  """
  c1, c2, c3 = channels
  flat = (length // 8) * c3  # three SAME convolutions, three pools of 2
  return _init_stack(key, {
      "conv1": (5, 1, c1), "conv2": (3, c1, c2), "conv3": (3, c2, c3),
      "dense1": (flat, hidden), "dense2": (hidden, classes)}, dtype)


def mnist1d_cnn(params, x, grad="custom"):
  """A 1-D CNN for MNIST-1D: (conv -> relu -> max pool) x 3 -> dense x 2.

  Args:
    params: from :func:`init_mnist1d_cnn`.
    x: sequences ``(batch, length)``.
    grad: ``"custom"`` or ``"autodiff"``, see :func:`layers`.

  Returns:
    Logits ``(batch, classes)``.
  """
  nn = layers(grad)
  o = x[..., None]                                     # (batch, 40, 1)
  for name in ("conv1", "conv2", "conv3"):
    x_l = nn.conv(o, params[name]["w"], params[name]["b"], padding="SAME")
    o = nn.max_pool(nn.relu(x_l), (2,), (2,))          # 40 -> 20 -> 10 -> 5
  o = o.reshape(o.shape[0], -1)                        # flatten
  o = nn.relu(nn.dense(o, params["dense1"]["w"], params["dense1"]["b"]))
  return nn.dense(o, params["dense2"]["w"], params["dense2"]["b"])


# --- Digits: 8 x 8 grey images, 10 classes (LeNet-style). --------------------


def init_lenet(key, *, size=8, channels=(16, 32), hidden=64, classes=10,
               dtype=jnp.float32):
  """Parameters of :func:`lenet`.

  Args:
    key: a ``jax.random`` key.
    size: the image side (8 for scikit-learn's digits; a multiple of 4).
    channels: output channels of the two convolutions.
    hidden: width of the hidden dense layer.
    classes: number of classes.
    dtype: parameter dtype.

  Returns:
    ``{"conv1", "conv2", "dense1", "dense2"}``, each ``{"w", "b"}``.
  """
  c1, c2 = channels
  flat = (size // 4) ** 2 * c2  # two SAME convolutions, two 2 x 2 pools
  return _init_stack(key, {
      "conv1": (3, 3, 1, c1), "conv2": (3, 3, c1, c2),
      "dense1": (flat, hidden), "dense2": (hidden, classes)}, dtype)


def lenet(params, x, grad="custom"):
  """A LeNet-style 2-D CNN: (conv -> relu -> max pool) x 2 -> dense x 2.

  Args:
    params: from :func:`init_lenet`.
    x: images ``(batch, height, width, 1)``.
    grad: ``"custom"`` or ``"autodiff"``, see :func:`layers`.

  Returns:
    Logits ``(batch, classes)``.
  """
  nn = layers(grad)
  o = x
  for name in ("conv1", "conv2"):
    x_l = nn.conv(o, params[name]["w"], params[name]["b"], padding="SAME")
    o = nn.max_pool(nn.relu(x_l), (2, 2), (2, 2))      # 8 -> 4 -> 2
  o = o.reshape(o.shape[0], -1)                        # flatten
  o = nn.relu(nn.dense(o, params["dense1"]["w"], params["dense1"]["b"]))
  return nn.dense(o, params["dense2"]["w"], params["dense2"]["b"])


class Model(NamedTuple):
  """A network: ``init(key) -> params`` and ``apply(params, x, grad)``."""
  init: Callable
  apply: Callable


MODELS = {"mnist1d_cnn": Model(init_mnist1d_cnn, mnist1d_cnn),
          "lenet": Model(init_lenet, lenet)}


def loss(apply, params, x, labels, grad="custom"):
  """The mean softmax cross-entropy of ``apply(params, x, grad)``.

  Args:
    apply: a network such as :func:`lenet`.
    params: its parameters.
    x: a batch of inputs.
    labels: integer classes ``(batch,)``.
    grad: ``"custom"`` or ``"autodiff"``; the loss is taken from the same
      layer table as the network.

  Returns:
    The scalar loss, eq. (65).
  """
  logits = apply(params, x, grad)
  return layers(grad).softmax_cross_entropy(logits, labels)
