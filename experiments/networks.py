"""Standard CNNs, each written once and run with three tables of layers.

A network here is a function ``apply(ops, params, x)`` written against an
:class:`Ops` table, so that the same definition runs as

* ``jaxconv_ops()``: jaxconv's layers (``jaxconv.conv``, ``max_pool``,
  ``avg_pool``, ``batch_norm``, ``relu``, ``dense``,
  ``softmax_cross_entropy``), every gradient a hand-derived rule;
* ``lax_ops()``: the same layers from ``lax.conv_general_dilated``,
  ``flax.linen`` pooling (``lax.reduce_window``), batch normalisation in
  ``jax.numpy``, ``jax.nn.relu`` and optax's cross-entropy, differentiated by
  ``jax.grad``;
* ``torch_ops()``: PyTorch's functional layers, channels first (NCHW,
  PyTorch's default memory format), with the same parameters converted by
  :func:`torch_params`.

Batch normalisation is in training mode (the batch's statistics) in all
three. Every convolution pads ``k // 2`` on both sides, as PyTorch does, so that the
three tables compute the same function of the same parameters.

Each layer runs inside ``ops.scope(kind)`` (``jax.named_scope("layer:" +
kind)`` for JAX), so that a profile of the compiled step can be read back
per layer type: ``stem``, ``conv3x3``, ``conv3x3_s2``, ``conv1x1_s2``,
``depthwise3x3``, ``batch_norm``, ``relu``, ``residual``, ``max_pool``,
``global_avg_pool``, ``dense``, ``loss``...

Parameters are nested dicts and lists of JAX arrays, channels last and in
Flax's layouts (kernels ``(*window, C_in // groups, C_out)``, dense kernels
``(d_in, d_out)``), so that optax takes them as they are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jaxconv
import jaxconv.models

SCOPE_PREFIX = "layer:"


@dataclasses.dataclass(frozen=True)
class Ops:
  """The layers a network is written against.

  Attributes:
    name: ``"jaxconv"``, ``"lax"`` or ``"torch"``.
    conv: ``conv(x, w, b, stride, padding, groups)``, ``padding`` one
      symmetric int per spatial dimension, ``b`` may be ``None``.
    relu: the activation.
    max_pool: ``max_pool(x, window, strides, padding)``, ``padding`` as for
      ``conv``.
    avg_pool: as ``max_pool``, the padding counted in the divisor.
    dense: ``dense(x, w, b)`` with ``w`` of shape ``(d_in, d_out)``.
    batch_norm: ``batch_norm(x, scale, offset)`` over every axis but the
      channels', with the batch's statistics.
    loss: ``loss(logits, labels)``, the mean softmax cross-entropy.
    flatten: ``(batch, *spatial, C)`` (in the table's layout) to ``(batch,
      features)``, the features in channels-last order.
    window: a kernel's spatial shape.
    spatial_shape: an activation's spatial shape.
    scope: ``scope(kind)``, a context manager naming the layer type.
  """

  name: str
  conv: Callable
  relu: Callable
  max_pool: Callable
  avg_pool: Callable
  dense: Callable
  batch_norm: Callable
  loss: Callable
  flatten: Callable
  window: Callable
  spatial_shape: Callable
  scope: Callable[[str], Any]


# --- The two JAX tables. ------------------------------------------------------


def _jax_batch_norm(x, scale, offset, epsilon=1e-5):
  """Batch normalisation, channels last, biased variance (as PyTorch)."""
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axes)
  variance = jnp.mean(jnp.square(x - mean), axes)
  return (x - mean) * lax.rsqrt(variance + epsilon) * scale + offset


def _jax_scope(kind):
  return jax.named_scope(SCOPE_PREFIX + kind)


def _pairs(padding):
  return tuple((p, p) for p in padding)


def _jax_common(name, **layers) -> Ops:
  return Ops(name=name,
             flatten=lambda x: x.reshape(x.shape[0], -1),
             window=lambda w: tuple(w.shape[:-2]),
             spatial_shape=lambda x: tuple(x.shape[1:-1]),
             scope=_jax_scope, **layers)


def jaxconv_ops() -> Ops:
  """jaxconv's layers: every gradient a hand-derived ``custom_vjp`` rule."""
  return _jax_common(
      "jaxconv",
      conv=lambda x, w, b, stride, padding, groups: jaxconv.conv(
          x, w, b, stride=stride, padding=padding, groups=groups),
      relu=jaxconv.relu,
      max_pool=lambda x, window, strides, padding: jaxconv.max_pool(
          x, window, strides, padding),
      avg_pool=lambda x, window, strides, padding: jaxconv.avg_pool(
          x, window, strides, padding),
      dense=jaxconv.dense,
      batch_norm=lambda x, scale, offset, epsilon=1e-5: jaxconv.batch_norm(
          x, scale, offset, epsilon=epsilon),
      loss=jaxconv.softmax_cross_entropy)


def _lax_conv(x, w, b, stride, padding, groups):
  n = w.ndim - 2
  spatial = "DHW"[3 - n:]
  numbers = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
  y = lax.conv_general_dilated(x, w, (stride,) * n, _pairs(padding),
                               dimension_numbers=numbers,
                               feature_group_count=groups)
  return y if b is None else y + b


def _lax_dense(x, w, b):
  y = x @ w
  return y if b is None else y + b


def lax_ops() -> Ops:
  """The twins: ``lax.conv_general_dilated``, Flax's pooling
  (``lax.reduce_window``), ``jax.nn.relu``, ``x @ w + b``, batch
  normalisation in ``jax.numpy`` and optax's cross-entropy, all
  differentiated by ``jax.grad``."""
  import optax
  from flax import linen

  def loss(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, labels).mean()

  return _jax_common(
      "lax",
      conv=_lax_conv,
      relu=jax.nn.relu,
      max_pool=lambda x, window, strides, padding: linen.max_pool(
          x, window, strides, _pairs(padding)),
      avg_pool=lambda x, window, strides, padding: linen.avg_pool(
          x, window, strides, _pairs(padding)),
      dense=_lax_dense,
      batch_norm=_jax_batch_norm,
      loss=loss)


# --- PyTorch. -----------------------------------------------------------------


def torch_ops() -> Ops:
  """PyTorch's functional layers, channels first (``(N, C, *spatial)``)."""
  import torch
  from torch.nn import functional

  def by_rank(prefix, n):
    return getattr(functional, f"{prefix}{n}d")

  def conv(x, w, b, stride, padding, groups):
    return by_rank("conv", w.dim() - 2)(x, w, b, stride, padding, 1, groups)

  def max_pool(x, window, strides, padding):
    return by_rank("max_pool", len(window))(x, window, strides, padding)

  def avg_pool(x, window, strides, padding):
    return by_rank("avg_pool", len(window))(x, window, strides, padding)

  def dense(x, w, b):
    return x @ w if b is None else torch.addmm(b, x, w)

  def batch_norm(x, scale, offset, epsilon=1e-5):
    return functional.batch_norm(x, None, None, scale, offset, training=True,
                                 eps=epsilon)

  return Ops(
      name="torch", conv=conv, relu=functional.relu, max_pool=max_pool,
      avg_pool=avg_pool, dense=dense, batch_norm=batch_norm,
      loss=functional.cross_entropy,
      flatten=lambda x: torch.movedim(x, 1, -1).flatten(1),
      window=lambda w: tuple(w.shape[2:]),
      spatial_shape=lambda x: tuple(x.shape[2:]),
      scope=lambda kind: contextlib.nullcontext())


def torch_params(params):
  """``params`` as PyTorch leaf tensors that require gradients: kernels
  ``(*window, C_in, C_out)`` become ``(C_out, C_in, *window)``, everything
  else (dense kernels included, used as ``x @ w``) keeps its layout."""
  import numpy as np
  import torch

  def convert(leaf):
    array = np.asarray(leaf)
    if array.ndim >= 3:
      n = array.ndim - 2
      array = array.transpose(n + 1, n, *range(n))
    return torch.tensor(np.ascontiguousarray(array), requires_grad=True)

  return jax.tree.map(convert, params)


def from_torch_layout(array):
  """A kernel gradient from PyTorch's layout back to ``(*window, C_in,
  C_out)``; other arrays as they are (a NumPy array)."""
  import numpy as np
  array = np.asarray(array)
  if array.ndim >= 3:
    n = array.ndim - 2
    array = array.transpose(*range(2, n + 2), 1, 0)
  return array


def torch_input(x):
  """A channels-last JAX batch as a channels-first PyTorch tensor."""
  import numpy as np
  import torch
  array = np.asarray(x)
  return torch.tensor(np.ascontiguousarray(np.moveaxis(array, -1, 1)))


# --- Layers with their scopes. -------------------------------------------------


def conv_kind(window, stride=1, depthwise=False) -> str:
  """The layer type of a convolution: ``conv3x3``, ``conv3x3_s2``,
  ``depthwise3x3``, ``conv5`` (1-D), ``conv3x3x3`` (3-D)..."""
  kind = ("depthwise" if depthwise else "conv") + "x".join(map(str, window))
  return kind + (f"_s{stride}" if stride > 1 else "")


def conv(ops, p, x, *, stride=1, groups=1, kind=None):
  """The convolution of layer ``p`` (``{"w", "b"?}``), padded by ``k // 2``
  on both sides."""
  window = ops.window(p["w"])
  with ops.scope(kind or conv_kind(window, stride, groups > 1)):
    return ops.conv(x, p["w"], p.get("b"), stride,
                    tuple(k // 2 for k in window), groups)


def batch_norm(ops, p, x):
  with ops.scope("batch_norm"):
    return ops.batch_norm(x, p["scale"], p["offset"])


def relu(ops, x):
  with ops.scope("relu"):
    return ops.relu(x)


def max_pool(ops, x, window, stride, padding=0):
  with ops.scope("max_pool"):
    n = len(ops.spatial_shape(x))
    return ops.max_pool(x, (window,) * n, (stride,) * n, (padding,) * n)


def global_avg_pool(ops, x):
  """The mean over the spatial axes: an average pool over the whole input."""
  with ops.scope("global_avg_pool"):
    spatial = ops.spatial_shape(x)
    y = ops.avg_pool(x, spatial, spatial, (0,) * len(spatial))
    return y.reshape(y.shape[0], -1)


def dense(ops, p, x):
  with ops.scope("dense"):
    return ops.dense(x, p["w"], p["b"])


def residual(ops, x, shortcut):
  with ops.scope("residual"):
    return x + shortcut


def loss(ops, logits, labels):
  with ops.scope("loss"):
    return ops.loss(logits, labels)


# --- Initialisation. ----------------------------------------------------------


# NumPy's generator draws the parameters: initialising op by op with
# jax.random would compile a program for every new shape.


def _normal(rng, shape, scale):
  return jnp.asarray(rng.standard_normal(shape, np.float32) * scale)


def _conv_init(rng, window, c_in, c_out, *, groups=1, bias=True):
  """He-normal kernel (fan in = window x C_in / groups), zero bias."""
  fan_in = math.prod(window) * c_in // groups
  w = _normal(rng, (*window, c_in // groups, c_out), math.sqrt(2.0 / fan_in))
  return {"w": w, "b": jnp.zeros(c_out, jnp.float32)} if bias else {"w": w}


def _norm_init(channels):
  return {"scale": jnp.ones(channels, jnp.float32),
          "offset": jnp.zeros(channels, jnp.float32)}


def _dense_init(rng, d_in, d_out):
  w = _normal(rng, (d_in, d_out), 1.0 / math.sqrt(d_in))
  return {"w": w, "b": jnp.zeros(d_out, jnp.float32)}


# --- ResNet-18, CIFAR-style (He et al. 2016; 3x3 stem, no max pool). ---------

RESNET18_STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))  # (C_out, stride)


def init_resnet18(seed, *, channels=3, classes=10, stages=RESNET18_STAGES):
  """Parameters of :func:`resnet18`: two basic blocks per stage."""
  rng = np.random.default_rng(seed)
  width = stages[0][0]
  params = {"stem": {"conv": _conv_init(rng, (3, 3), channels, width,
                                        bias=False),
                     "norm": _norm_init(width)}, "stages": []}
  c_in = width
  for c_out, stride in stages:
    blocks = []
    for index in range(2):
      block = {"conv1": _conv_init(rng, (3, 3), c_in, c_out, bias=False),
               "norm1": _norm_init(c_out),
               "conv2": _conv_init(rng, (3, 3), c_out, c_out, bias=False),
               "norm2": _norm_init(c_out)}
      if index == 0 and (stride != 1 or c_in != c_out):
        block["shortcut"] = _conv_init(rng, (1, 1), c_in, c_out, bias=False)
        block["shortcut_norm"] = _norm_init(c_out)
      blocks.append(block)
      c_in = c_out
    params["stages"].append(blocks)
  params["head"] = _dense_init(rng, c_in, classes)
  return params


def _basic_block(ops, p, x, stride):
  y = relu(ops, batch_norm(ops, p["norm1"], conv(ops, p["conv1"], x,
                                                 stride=stride)))
  y = batch_norm(ops, p["norm2"], conv(ops, p["conv2"], y))
  if "shortcut" in p:
    x = batch_norm(ops, p["shortcut_norm"],
                   conv(ops, p["shortcut"], x, stride=stride))
  return relu(ops, residual(ops, y, x))


def resnet18(ops, params, x, *, stages=RESNET18_STAGES):
  """ResNet-18 for 32x32 images: a 3x3 stem, four stages of two basic blocks
  (3x3 convolutions, batch norm, relu; the first block of stages 2-4 strided,
  with a 1x1 strided projection), global average pooling, dense."""
  x = relu(ops, batch_norm(ops, params["stem"]["norm"],
                           conv(ops, params["stem"]["conv"], x, kind="stem")))
  for (_, stride), blocks in zip(stages, params["stages"]):
    for index, block in enumerate(blocks):
      x = _basic_block(ops, block, x, stride if index == 0 else 1)
  return dense(ops, params["head"], global_avg_pool(ops, x))


# --- MobileNet (v1, Howard et al. 2017), CIFAR-style: 3x3 stem, stride 1. ----

MOBILENET_BLOCKS = (64, (128, 2), 128, (256, 2), 256, (512, 2), 512, 512, 512,
                    512, 512, (1024, 2), 1024)  # C_out or (C_out, stride)


def _mobilenet_blocks(blocks):
  return [(b, 1) if isinstance(b, int) else b for b in blocks]


def init_mobilenet(seed, *, channels=3, classes=10, stem=32,
                   blocks=MOBILENET_BLOCKS):
  """Parameters of :func:`mobilenet`."""
  rng = np.random.default_rng(seed)
  params = {"stem": {"conv": _conv_init(rng, (3, 3), channels, stem,
                                        bias=False),
                     "norm": _norm_init(stem)}, "blocks": []}
  c_in = stem
  for c_out, _ in _mobilenet_blocks(blocks):
    params["blocks"].append({
        "depthwise": _conv_init(rng, (3, 3), c_in, c_in, groups=c_in,
                                bias=False),
        "depthwise_norm": _norm_init(c_in),
        "pointwise": _conv_init(rng, (1, 1), c_in, c_out, bias=False),
        "pointwise_norm": _norm_init(c_out)})
    c_in = c_out
  params["head"] = _dense_init(rng, c_in, classes)
  return params


def mobilenet(ops, params, x, *, stem=32, blocks=MOBILENET_BLOCKS):
  """MobileNet v1 for 32x32 images: a 3x3 stem, then depthwise-separable
  blocks (3x3 depthwise, batch norm, relu, 1x1 pointwise, batch norm, relu),
  global average pooling, dense."""
  x = relu(ops, batch_norm(ops, params["stem"]["norm"],
                           conv(ops, params["stem"]["conv"], x, kind="stem")))
  channels = stem
  for (c_out, stride), p in zip(_mobilenet_blocks(blocks), params["blocks"]):
    x = relu(ops, batch_norm(ops, p["depthwise_norm"], conv(
        ops, p["depthwise"], x, stride=stride, groups=channels)))
    x = relu(ops, batch_norm(ops, p["pointwise_norm"],
                             conv(ops, p["pointwise"], x)))
    channels = c_out
  return dense(ops, params["head"], global_avg_pool(ops, x))


# --- The MNIST-1D CNN of jaxconv.models. ---------------------------------------


def init_mnist1d_cnn(seed):
  """Parameters of :func:`mnist1d_cnn`: ``jaxconv.models.init_mnist1d_cnn``'s
  (float32), compiled once."""
  init = jax.jit(lambda key: jaxconv.models.init_mnist1d_cnn(
      key, dtype=jnp.float32))
  return init(jax.random.key(seed))


def mnist1d_cnn(ops, params, x):
  """``jaxconv.models.mnist1d_cnn`` on inputs ``(batch, 40, 1)``: three
  (convolution, relu, max pool 2) stages, then two dense layers."""
  for name in ("conv1", "conv2", "conv3"):
    x = max_pool(ops, relu(ops, conv(ops, params[name], x)), 2, 2)
  with ops.scope("flatten"):
    x = ops.flatten(x)
  x = relu(ops, dense(ops, params["dense1"], x))
  return dense(ops, params["dense2"], x)


# --- A small 3-D CNN (volumes 32^3, one channel). ------------------------------

CNN3D_CHANNELS = (16, 32, 64)


def init_cnn3d(seed, *, channels=1, classes=10, widths=CNN3D_CHANNELS):
  """Parameters of :func:`cnn3d`."""
  rng = np.random.default_rng(seed)
  params, c_in = {"convs": []}, channels
  for c_out in widths:
    params["convs"].append(_conv_init(rng, (3, 3, 3), c_in, c_out))
    c_in = c_out
  params["head"] = _dense_init(rng, c_in, classes)
  return params


def cnn3d(ops, params, x):
  """A 3-D CNN: (3x3x3 convolution, relu, max pool 2) twice, a third 3x3x3
  convolution and relu, global average pooling, dense."""
  last = len(params["convs"]) - 1
  for index, p in enumerate(params["convs"]):
    x = relu(ops, conv(ops, p, x))
    if index < last:
      x = max_pool(ops, x, 2, 2)
  return dense(ops, params["head"], global_avg_pool(ops, x))


# --- A small ResNet-style network on 64x64 images. ------------------------------

SMALL_RESNET_STAGES = ((32, 1), (64, 2), (128, 2), (256, 2))


def init_small_resnet(seed, *, channels=3, classes=10, stem=32,
                      stages=SMALL_RESNET_STAGES):
  """Parameters of :func:`small_resnet`."""
  rng = np.random.default_rng(seed)
  params = {"stem": _conv_init(rng, (3, 3), channels, stem), "stages": []}
  c_in = stem
  for c_out, _ in stages:
    params["stages"].append({
        "entry": _conv_init(rng, (3, 3), c_in, c_out),
        "conv": _conv_init(rng, (3, 3), c_out, c_out),
        "depthwise": _conv_init(rng, (3, 3), c_out, c_out, groups=c_out),
        "pointwise": _conv_init(rng, (1, 1), c_out, c_out)})
    c_in = c_out
  params["head"] = _dense_init(rng, c_in, classes)
  return params


def small_resnet(ops, params, x, *, stages=SMALL_RESNET_STAGES):
  """A small ResNet-style network, no normalisation: a 3x3 stem and relu, a
  3x3 max pool of stride 2, then four stages of (3x3 convolution, strided in
  stages 2-4; a residual 3x3 convolution; a residual depthwise 3x3 and 1x1
  pair), each followed by relu; global average pooling, dense."""
  x = relu(ops, conv(ops, params["stem"], x, kind="stem"))
  x = max_pool(ops, x, 3, 2, padding=1)
  for (channels, stride), p in zip(stages, params["stages"]):
    x = relu(ops, conv(ops, p["entry"], x, stride=stride))
    x = relu(ops, residual(ops, x, conv(ops, p["conv"], x)))
    y = relu(ops, conv(ops, p["depthwise"], x, groups=channels))
    x = relu(ops, residual(ops, x, conv(ops, p["pointwise"], y)))
  return dense(ops, params["head"], global_avg_pool(ops, x))


# --- The catalogue. --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Network:
  """A network of the benchmark.

  Attributes:
    name: its name on the command line.
    description: one line for the record.
    init: ``init(seed) -> params``, ``seed`` an int.
    apply: ``apply(ops, params, x) -> logits``.
    input_shape: one example, channels last.
    classes: the number of classes.
    batches: the batch sizes measured by default.
  """

  name: str
  description: str
  init: Callable
  apply: Callable
  input_shape: tuple[int, ...]
  classes: int = 10
  batches: tuple[int, ...] = (32, 128)


NETWORKS = {
    "resnet18": Network(
        "resnet18", "ResNet-18, CIFAR-style (3x3 stem), batch norm",
        init_resnet18, resnet18, (32, 32, 3)),
    "mobilenet": Network(
        "mobilenet", "MobileNet v1, CIFAR-style, 13 depthwise-separable "
        "blocks, batch norm", init_mobilenet, mobilenet, (32, 32, 3)),
    "mnist1d_cnn": Network(
        "mnist1d_cnn", "the MNIST-1D CNN of jaxconv.models",
        init_mnist1d_cnn, mnist1d_cnn, (40, 1)),
    "cnn3d": Network(
        "cnn3d", "3-D CNN, three 3x3x3 convolutions (16, 32, 64 channels), "
        "max pooling", init_cnn3d, cnn3d, (32, 32, 32, 1)),
    "small_resnet": Network(
        "small_resnet", "small ResNet-style network, 3x3 / strided 3x3 / "
        "depthwise 3x3 / 1x1 with residuals, 3x3/2 max pool, no batch norm",
        init_small_resnet, small_resnet, (64, 64, 3), batches=(32,)),
}


def tiny_network() -> Network:
  """A network of a few milliseconds, quick to compile, with most kinds of
  layer of the catalogue (for ``--quick``): small_resnet with one narrow
  stride-2 stage on 16x16 images."""
  stages = ((8, 2),)
  return Network(
      "tiny_resnet", "small_resnet with one narrow stage on 16x16 images",
      lambda seed: init_small_resnet(seed, stem=8, stages=stages),
      lambda ops, params, x: small_resnet(ops, params, x, stages=stages),
      (16, 16, 3), batches=(4,))


def by_name(name: str) -> Network:
  """The network called ``name``: one of ``NETWORKS``, or the tiny one."""
  tiny = tiny_network()
  return tiny if name == tiny.name else NETWORKS[name]


def conv_layers(network: Network, batch: int) -> list[dict]:
  """The distinct convolutions of ``network``'s forward pass at ``batch``,
  in order, each with how often it occurs: ``{"x", "w"}`` (shapes, channels
  last), ``"stride"``, ``"padding"`` (symmetric, per dimension),
  ``"groups"`` and ``"count"``. Traced abstractly; nothing is computed."""
  found: dict = {}
  ops = jaxconv_ops()

  def record(x, w, b, stride, padding, groups):
    key = (tuple(x.shape), tuple(w.shape), stride, tuple(padding), groups)
    found[key] = found.get(key, 0) + 1
    return ops.conv(x, w, b, stride, padding, groups)

  recording = dataclasses.replace(ops, conv=record)
  x = jax.ShapeDtypeStruct((batch, *network.input_shape), jnp.float32)
  jax.eval_shape(lambda params, x: network.apply(recording, params, x),
                 network.init(0), x)
  return [dict(x=x, w=w, stride=stride, padding=padding, groups=groups,
               count=count)
          for (x, w, stride, padding, groups), count in found.items()]
