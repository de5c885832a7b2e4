"""Padding modes: ``jaxconv.pad`` / ``pad_grad`` (eqs. 25-26) and ``conv``'s
``padding_mode`` and Flax padding strings.

Oracles: ``jnp.pad`` (forward) and ``jax.vjp`` of it (gradient), a literal
NumPy transcription of the index map (25) and of the sum over its preimage
(26), Flax's ``nn.Conv`` and PyTorch's ``nn.Conv{1,2,3}d(padding_mode=...)``
in float64, and lax's convolution of a ``jnp.pad``-ded input.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from jax import lax

import jaxconv
from jaxconv import padding as padding_module
from tests.helpers import assert_close
from tests.rebuilt_rules import pad_grad, pad_with

NUMPY_MODE = {"zeros": "constant", "circular": "wrap", "reflect": "reflect",
              "replicate": "edge"}
MODES = list(NUMPY_MODE)


# ---------------------------------------------------------------------------
# A literal transcription of eqs. (25) and (26), one axis at a time.
# ---------------------------------------------------------------------------


def index_map(n, lo, hi, mode):
  """m(p - lo) for every padded position p, or -1 where zeros are read."""
  u = np.arange(-lo, n + hi)
  if mode == "zeros":
    return np.where((u >= 0) & (u < n), u, -1)
  if mode == "circular":
    return u % n
  if mode == "reflect":
    return (n - 1) - np.abs((n - 1) - np.abs(u))
  return np.minimum(np.maximum(u, 0), n - 1)


def reference_pad(x, pads, mode):
  x = np.asarray(x)
  for axis, (lo, hi) in enumerate(pads):
    source = index_map(x.shape[axis], lo, hi, mode)
    moved = np.moveaxis(x, axis, 0)
    out = np.zeros((len(source),) + moved.shape[1:], x.dtype)
    out[source >= 0] = moved[source[source >= 0]]
    x = np.moveaxis(out, 0, axis)
  return x


def reference_pad_grad(g, pads, mode):
  g = np.asarray(g, np.complex128 if np.iscomplexobj(g) else np.float64)
  for axis, (lo, hi) in enumerate(pads):
    n = g.shape[axis] - lo - hi
    source = index_map(n, lo, hi, mode)
    moved = np.moveaxis(g, axis, 0)
    out = np.zeros((n,) + moved.shape[1:], g.dtype)
    np.add.at(out, source[source >= 0], moved[source >= 0])  # eq. (26)
    g = np.moveaxis(out, 0, axis)
  return g


def _forward_and_gradient(f):
  """``(f(x), vjp(g))``, jitted: one compilation per function."""
  @jax.jit
  def step(x, g):
    y, pullback = jax.vjp(f, x)
    return y, pullback(g)[0]
  return step


def _vjp_step(f):
  """``(f(*args), *vjp(delta))``, jitted."""
  @jax.jit
  def step(args, delta):
    y, pullback = jax.vjp(f, *args)
    return (y,) + pullback(delta)
  return step


def _full(shape, pad_width, axes):
  """The per-axis pairs of a (shape, pad_width, axes) case, for the oracles."""
  axes = range(len(shape)) if axes is None else [
      a % len(shape) for a in np.atleast_1d(axes)]
  widths = np.broadcast_to(np.asarray(pad_width), (len(axes), 2))
  full = [(0, 0)] * len(shape)
  for a, (lo, hi) in zip(axes, widths):
    full[a] = (int(lo), int(hi))
  return tuple(full)


PAD_CASES = [
    # (shape, pad_width, axes)
    ((7,), (2, 3), None),
    ((5,), ((0, 4),), None),
    ((4, 6), ((1, 2), (3, 0)), None),
    ((2, 5, 4, 3), ((2, 1), (1, 3)), (1, 2)),       # channels-last spatial
    ((2, 3, 4, 5, 2), 1, (1, 2, 3)),
    ((3, 4), 3, -1),
    ((6, 1, 3), ((1, 1), (0, 0), (2, 1)), None),
]
WRAP_ONLY = [
    # circular may wrap around several times, as in jnp.pad
    ((3,), (7, 5), None),
    ((2, 3), ((4, 8), (0, 2)), None),
]


def _fits(mode, shape, pad_width, axes):
  full = _full(shape, pad_width, axes)
  if mode == "reflect":
    return all(max(p) < n for n, p in zip(shape, full) if max(p))
  return True


PAD_PARAMS = [pytest.param(mode, *case, id=f"{mode}-{case[0]}-{case[1]}")
              for mode in MODES for case in PAD_CASES + WRAP_ONLY
              if _fits(mode, *case) and (mode == "circular"
                                         or case not in WRAP_ONLY)]


def check_pad(mode, shape, pad_width, axes, pad=None):
  """``pad`` (a function of ``x``; ``None`` means ``jaxconv.pad`` with these
  arguments) against ``jnp.pad`` and eqs. (25)-(26): the forward bit for bit,
  the gradient in float64; and ``jaxconv.pad_grad``. Raises AssertionError
  (``"gradient ...: scaled error ..."``) on a numerical mismatch."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=shape))
  pads = _full(shape, pad_width, axes)
  theirs = _forward_and_gradient(
      lambda x: jnp.pad(x, pads, mode=NUMPY_MODE[mode]))
  g = jnp.asarray(rng.normal(size=reference_pad(x, pads, mode).shape))
  if pad is None:
    pad = lambda x: jaxconv.pad(x, pad_width, mode, axes=axes)

  @jax.jit
  def ours(x, g):
    y, pullback = jax.vjp(pad, x)
    return y, pullback(g)[0], jaxconv.pad_grad(g, pad_width, mode, axes=axes)

  y, dx, public = ours(x, g)
  y_ref, dx_ref = theirs(x, g)
  np.testing.assert_array_equal(y, y_ref)
  np.testing.assert_array_equal(y, reference_pad(x, pads, mode))
  assert dx.shape == x.shape and dx.dtype == x.dtype
  assert_close(dx, dx_ref, jnp.float64, "gradient vs jnp.pad")
  assert_close(dx, reference_pad_grad(g, pads, mode), jnp.float64,
               "gradient vs eq. (26)")
  # The public gradient is the same function.
  assert_close(public, dx_ref, jnp.float64, "pad_grad")


@pytest.mark.parametrize("mode,shape,pad_width,axes", PAD_PARAMS)
def test_pad_and_its_gradient(mode, shape, pad_width, axes):
  check_pad(mode, shape, pad_width, axes)


@pytest.mark.parametrize("spelling,mode", [
    ("constant", "zeros"), ("ZEROS", "zeros"), ("wrap", "circular"),
    ("Circular", "circular"), ("reflect", "reflect"), ("edge", "replicate"),
    ("replicate", "replicate")])
def test_mode_spellings(spelling, mode):
  x = jnp.arange(5.0)
  np.testing.assert_array_equal(
      jaxconv.pad(x, (2, 1), spelling),
      jnp.pad(x, (2, 1), mode=NUMPY_MODE[mode]))
  assert padding_module.canonical_mode(spelling) == mode


@pytest.mark.parametrize("pad_width", [2, (2,), (1, 3), ((1, 3),),
                                       np.array([[1, 3], [0, 2]]),
                                       [(1, 3), (0, 2)]])
def test_pad_width_broadcasts_as_in_jnp_pad(pad_width):
  x = jnp.arange(12.0).reshape(3, 4)
  np.testing.assert_array_equal(jaxconv.pad(x, pad_width, "edge"),
                                jnp.pad(x, pad_width, mode="edge"))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16, jnp.bfloat16,
                                   jnp.complex128])
@pytest.mark.parametrize("mode", MODES)
def test_dtypes(mode, dtype):
  rng = np.random.default_rng(1)
  shape, pad_width = (3, 6, 5), ((0, 0), (2, 5), (4, 3))
  if mode == "reflect":
    pad_width = ((0, 0), (2, 5), (4, 3))
  x64 = rng.normal(size=shape)
  g64 = rng.normal(size=(3, 13, 12))
  if dtype == jnp.complex128:
    x64 = x64 + 1j * rng.normal(size=shape)
    g64 = g64 + 1j * rng.normal(size=g64.shape)
  x, g = jnp.asarray(x64, dtype), jnp.asarray(g64, dtype)
  y, dx = _forward_and_gradient(lambda x: jaxconv.pad(x, pad_width, mode))(
      x, g)
  assert y.dtype == dtype
  # Padding copies: exactly jnp.pad in every dtype.
  np.testing.assert_array_equal(y, jnp.pad(x, pad_width,
                                           mode=NUMPY_MODE[mode]))
  assert dx.dtype == dtype
  expected = reference_pad_grad(np.asarray(g).astype(
      np.complex128 if dtype == jnp.complex128 else np.float64),
      pad_width, mode)
  assert_close(dx, expected, dtype, f"{mode} {dtype.__name__}")


def test_reflect_grid_needs_width_below_size():
  """The widest reflection allowed, N - 1 on both sides, against jnp.pad."""
  x = jnp.arange(1.0, 5.0)
  y, pullback = jax.vjp(lambda x: jaxconv.pad(x, 3, "reflect"), x)
  np.testing.assert_array_equal(y, jnp.pad(x, 3, mode="reflect"))
  g = jnp.arange(10.0)
  np.testing.assert_allclose(pullback(g)[0],
                             reference_pad_grad(g, ((3, 3),), "reflect"))


@pytest.mark.parametrize("mode", MODES)
def test_jit_vmap_and_second_order(mode):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(4, 5, 3)))
  f = lambda x: jaxconv.pad(x, ((2, 1), (1, 2)), mode, axes=(0, 1))
  y = jax.jit(f)(x)
  batched = jax.jit(jax.vmap(f, in_axes=2, out_axes=2))(x)
  np.testing.assert_array_equal(batched, y)
  # Gradients of gradients: pad_grad's own backward is pad, so the
  # gradient of x -> <pad_grad(pad(x)), v> is pad_grad(pad(v)).
  g = jnp.asarray(rng.normal(size=y.shape))
  back = lambda g: jaxconv.pad_grad(g, ((2, 1), (1, 2)), mode, axes=(0, 1))
  dy, pullback = jax.vjp(back, g)
  np.testing.assert_array_equal(pullback(x)[0], y)
  assert_close(dy, jax.vjp(lambda x: jnp.pad(
      x, ((2, 1), (1, 2), (0, 0)), mode=NUMPY_MODE[mode]), x)[1](g)[0],
      jnp.float64)
  # And through jax.grad twice, against jnp.pad.
  oracle = lambda x: jnp.pad(x, ((2, 1), (1, 2), (0, 0)),
                             mode=NUMPY_MODE[mode])
  energy = lambda pad: lambda x: jnp.sum(jnp.sin(pad(x)))
  twice = lambda pad: jax.jit(jax.grad(
      lambda x: jnp.sum(jax.grad(energy(pad))(x) ** 2)))
  assert_close(twice(f)(x), twice(oracle)(x), jnp.float64, "second order")


PAD_ERRORS = [
    # (name, thunk, exception, words)
    ("mode", lambda: jaxconv.pad(jnp.ones(4), 1, "mirror"), ValueError,
     ["mode", "'mirror'", "reflect", "wrap"]),
    ("negative", lambda: jaxconv.pad(jnp.ones(4), (-1, 2)), ValueError,
     ["pad_width", "non-negative", "(-1, 2)"]),
    ("reflect too wide", lambda: jaxconv.pad(jnp.ones((2, 3)), ((0, 0), (3, 0)),
                                             "reflect"), ValueError,
     ["pad_width", "smaller", "reflect", "axis 1", "size 3", "(3, 0)"]),
    ("empty axis", lambda: jaxconv.pad(jnp.ones((0, 3)), 1, "edge"),
     ValueError, ["mode", "'replicate'", "axis 0", "empty"]),
    ("pair count", lambda: jaxconv.pad(jnp.ones((2, 3)), ((1, 1),) * 3),
     ValueError, ["pad_width", "pair per padded axis (2)", "3"]),
    ("pair length", lambda: jaxconv.pad(jnp.ones(3), ((1, 1, 1),)),
     ValueError, ["pad_width", "(before, after)"]),
    ("flat ints", lambda: jaxconv.pad(jnp.ones((2, 3, 4)), (1, 2, 3)),
     ValueError, ["pad_width", "3 ints"]),
    ("float width", lambda: jaxconv.pad(jnp.ones(3), 1.5), TypeError,
     ["pad_width", "integers", "1.5"]),
    ("axes range", lambda: jaxconv.pad(jnp.ones((2, 3)), 1, axes=2),
     ValueError, ["axes", "[-2, 2)", "(2,)"]),
    ("axes repeated", lambda: jaxconv.pad(jnp.ones((2, 3)), 1, axes=(1, -1)),
     ValueError, ["axes", "distinct"]),
    ("integer input", lambda: jaxconv.pad(jnp.ones(3, jnp.int32), 1),
     TypeError, ["x", "floating-point or complex", "int32"]),
    ("list input", lambda: jaxconv.pad([1.0, 2.0], 1), TypeError,
     ["x", "JAX or NumPy array", "list"]),
    ("grad too wide", lambda: jaxconv.pad_grad(jnp.ones(3), (2, 2)),
     ValueError, ["pad_width", "(2, 2)", "size 3"]),
    ("grad reflect too wide", lambda: jaxconv.pad_grad(jnp.ones(5), (3, 0),
                                                       "reflect"),
     ValueError, ["pad_width", "reflect", "size 2", "(3, 0)"]),
]


@pytest.mark.parametrize("mode", ["eager", "jit", "eval_shape"])
@pytest.mark.parametrize("name,thunk,error,words", PAD_ERRORS,
                         ids=[c[0] for c in PAD_ERRORS])
def test_pad_bad_input(name, thunk, error, words, mode):
  del name
  call = {"eager": thunk, "jit": jax.jit(thunk),
          "eval_shape": lambda: jax.eval_shape(thunk)}[mode]
  with pytest.raises(error) as info:
    call()
  for word in words:
    assert word in str(info.value), f"{word!r} not in {str(info.value)!r}"


# ---------------------------------------------------------------------------
# conv with padding modes.
# ---------------------------------------------------------------------------


def _lax_conv(x, w, b, stride, pads, mode, dilation, groups):
  """lax's convolution of the input padded by jnp.pad: the oracle."""
  n = w.ndim - 2
  x = jnp.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),), mode=NUMPY_MODE[mode])
  spec = "DHW"[-n:] if n <= 3 else None
  y = lax.conv_general_dilated(
      x, w, (stride,) * n if isinstance(stride, int) else stride, "VALID",
      rhs_dilation=(dilation,) * n if isinstance(dilation, int) else dilation,
      dimension_numbers=("N" + spec + "C", spec + "IO", "N" + spec + "C"),
      feature_group_count=groups, precision="highest")
  return y + b


CONV_CASES = [
    # (x shape, window, C_out, stride, padding, pairs, dilation, groups)
    ((2, 9, 3), (3,), 4, 1, 1, ((1, 1),), 1, 1),
    ((2, 10, 4), (4,), 2, 2, ((3, 1),), ((3, 1),), 2, 2),
    ((2, 7, 6, 2), (3, 2), 3, (2, 1), (2, 1), ((2, 2), (1, 1)), 1, 1),
    ((1, 5, 4, 6, 2), (2, 3, 3), 2, 1, ((1, 0), (2, 2), (0, 1)),
     ((1, 0), (2, 2), (0, 1)), (1, 1, 2), 1),
]


@jax.jit
def _nothing():
  return None


@functools.cache
def _lax_of_jnp_pad(case, mode):
  """The arguments, the cotangent and lax's ``(y, dx, dw, db)`` for a
  CONV_CASES case (computed once per case and mode)."""
  shape, window, out, stride, _, pairs, dilation, groups = case
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=shape))
  w = jnp.asarray(rng.normal(size=window + (shape[-1] // groups, out)))
  b = jnp.asarray(rng.normal(size=(out,)))
  theirs = lambda x, w, b: _lax_conv(x, w, b, stride, pairs, mode, dilation,
                                     groups)
  delta = jnp.asarray(rng.normal(size=jax.eval_shape(theirs, x, w, b).shape))
  return (x, w, b), delta, _vjp_step(theirs)((x, w, b), delta)


def check_conv_padding_mode(case, mode, conv=jaxconv.conv):
  """``conv`` (with ``jaxconv.conv``'s signature) with ``padding_mode=mode``
  against lax's convolution of ``jnp.pad``'s padding, in float64: forward
  and the three VJPs. Raises AssertionError (``"d<arg>: scaled error ..."``)
  on a numerical mismatch."""
  _, _, _, stride, padding, _, dilation, groups = case
  args, delta, expected = _lax_of_jnp_pad(case, mode)
  ours = lambda x, w, b: conv(
      x, w, b, stride=stride, padding=padding, dilation=dilation,
      groups=groups, padding_mode=mode)
  results = _vjp_step(ours)(args, delta)
  for what, g, g_ref in zip(("forward", "dx", "dw", "db"), results, expected):
    assert_close(g, g_ref, jnp.float64, what)


# Zero padding goes through the convolution's own padding, tested with it.
@pytest.mark.parametrize("mode", ["circular", "reflect", "replicate"])
@pytest.mark.parametrize("case", CONV_CASES, ids=[str(c[0]) for c in CONV_CASES])
def test_conv_padding_mode_matches_lax_of_jnp_pad(case, mode):
  shape, pairs = case[0], case[5]
  if mode == "reflect" and not all(max(p) < n for n, p in zip(shape[1:-1],
                                                               pairs)):
    pytest.skip("reflect needs each amount below the input size")
  check_conv_padding_mode(case, mode)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("mode", ["circular", "reflect", "replicate"])
def test_conv_padding_mode_low_precision(mode, dtype):
  """Against the float64 oracle, within the dtype's tolerance."""
  rng = np.random.default_rng(4)
  x64 = rng.normal(size=(2, 6, 5, 3))
  w64 = rng.normal(size=(3, 3, 3, 4)) / 3
  kw = dict(stride=(1, 2), padding=((2, 1), (1, 2)), padding_mode=mode)
  x, w = jnp.asarray(x64, dtype), jnp.asarray(w64, dtype)

  @jax.jit
  def ours(x, w, delta):
    y, pullback = jax.vjp(lambda x, w: jaxconv.conv(x, w, **kw), x, w)
    return (y,) + pullback(delta)

  theirs = lambda x, w: _lax_conv(x, w, 0.0, (1, 2), ((2, 1), (1, 2)), mode,
                                  1, 1)
  y_ref, pullback_ref = jax.vjp(theirs, jnp.asarray(x64), jnp.asarray(w64))
  delta64 = rng.normal(size=y_ref.shape)
  results = ours(x, w, jnp.asarray(delta64, dtype))
  expected = (y_ref,) + pullback_ref(jnp.asarray(delta64))
  for what, g, g_ref in zip(("forward", "dx", "dw"), results, expected):
    assert g.dtype == dtype
    assert_close(g, g_ref, dtype, what)


FLAX_CASES = [
    # (padding, x shape, kernel_size, strides, kernel_dilation, groups)
    ("CIRCULAR", (2, 9, 8, 4), (3, 4), (1, 1), (1, 1), 1),
    ("CIRCULAR", (2, 9, 8, 4), (3, 3), (2, 3), (2, 1), 2),
    ("REFLECT", (2, 9, 8, 4), (4, 3), (1, 2), (1, 2), 1),
    ("REFLECT", (3, 7, 4), (5,), (2,), (1,), 4),
    ("CAUSAL", (2, 11, 3), (4,), (1,), (2,), 1),
    ("CIRCULAR", (1, 4, 5, 3, 2), (2, 3, 2), (1, 1, 2), (1, 1, 1), 1),
]


@pytest.mark.parametrize("case", FLAX_CASES,
                         ids=[f"{c[0]}-{c[2]}-s{c[3]}-d{c[4]}"
                              for c in FLAX_CASES])
def test_conv_matches_flax_padding_strings(case):
  nn = pytest.importorskip("flax.linen")
  padding, shape, kernel_size, strides, dilation, groups = case
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=shape))
  module = nn.Conv(features=4, kernel_size=kernel_size, strides=strides,
                   padding=padding, kernel_dilation=dilation,
                   feature_group_count=groups, dtype=jnp.float64,
                   param_dtype=jnp.float64)
  params = jax.jit(module.init)(jax.random.key(0), x)["params"]
  # Flax's parameters drop in: same kernel layout, same padding string.
  ours = lambda p, x: jaxconv.conv(x, p["kernel"], p["bias"], stride=strides,
                                   padding=padding, dilation=dilation,
                                   groups=groups)
  theirs = lambda p, x: module.apply({"params": p}, x)
  # The output and the gradients of a loss, one compilation per side.
  both = lambda f: jax.jit(lambda p, x: (f(p, x), jax.grad(
      lambda p, x: jnp.sum(jnp.sin(f(p, x))), argnums=(0, 1))(p, x)))
  (y, ours_grad), (y_ref, theirs_grad) = (both(ours)(params, x),
                                          both(theirs)(params, x))
  assert y.shape == y_ref.shape
  assert_close(y, y_ref, jnp.float64, "forward")
  for g, g_ref in zip(jax.tree.leaves(ours_grad),
                      jax.tree.leaves(theirs_grad)):
    assert_close(g, g_ref, jnp.float64, "gradient")


TORCH_CASES = [
    # (mode, x shape NC..., kernel, stride, padding, dilation, groups)
    ("circular", (2, 3, 9), (3,), 1, 2, 1, 1),
    ("reflect", (2, 4, 8), (4,), 2, 3, 2, 2),
    ("replicate", (2, 3, 7), (3,), 1, 4, 1, 3),
    ("zeros", (2, 3, 7), (3,), 2, 2, 1, 1),
    ("circular", (2, 2, 6, 7), (3, 2), (2, 1), (1, 2), (1, 2), 1),
    ("reflect", (1, 2, 5, 6), (3, 3), 1, (2, 1), 1, 2),
    ("replicate", (2, 2, 5, 6), (2, 3), (1, 2), 3, 1, 1),
    ("circular", (1, 2, 4, 5, 3), (2, 3, 2), 1, (1, 2, 1), 1, 1),
    ("reflect", (1, 2, 4, 5, 3), (3, 2, 2), 1, 1, (1, 2, 1), 1),
    ("replicate", (1, 2, 4, 5, 3), (2, 2, 2), 2, (0, 2, 1), 1, 2),
    ("reflect", (2, 3, 9), (4,), 1, "same", 2, 1),
]


@pytest.mark.parametrize("case", TORCH_CASES,
                         ids=[f"{c[0]}-{len(c[2])}d-p{c[4]}"
                              for c in TORCH_CASES])
def test_conv_matches_pytorch_padding_mode(case):
  torch = pytest.importorskip("torch")
  mode, shape, kernel, stride, padding, dilation, groups = case
  n = len(kernel)
  rng = np.random.default_rng(6)
  out = 6
  module = getattr(torch.nn, f"Conv{n}d")(
      shape[1], out, kernel, stride=stride, padding=padding,
      dilation=dilation, groups=groups, padding_mode=mode,
      dtype=torch.float64)
  x = torch.tensor(rng.normal(size=shape), requires_grad=True)
  y_ref = module(x)
  delta = rng.normal(size=tuple(y_ref.shape))
  y_ref.backward(torch.tensor(delta))
  # PyTorch's (O, I, *k) kernel and channels-first arrays, moved to
  # jaxconv's (*k, I, O) and channels last.
  last = lambda a: np.moveaxis(a, 1, -1)
  w = np.transpose(module.weight.detach().numpy(),
                   tuple(range(2, n + 2)) + (1, 0))
  b = module.bias.detach().numpy()
  ours = jax.jit(lambda x, w, b: jaxconv.conv(
      x, w, b, stride=stride, padding=padding.upper() if isinstance(
          padding, str) else padding, dilation=dilation, groups=groups,
      padding_mode=mode))
  y, pullback = jax.vjp(ours, jnp.asarray(last(x.detach().numpy())),
                        jnp.asarray(w), jnp.asarray(b))
  assert_close(y, last(y_ref.detach().numpy()), jnp.float64, "forward")
  dx, dw, db = pullback(jnp.asarray(last(delta)))
  assert_close(dx, last(x.grad.numpy()), jnp.float64, "dx")
  assert_close(dw, np.transpose(module.weight.grad.numpy(),
                                tuple(range(2, n + 2)) + (1, 0)),
               jnp.float64, "dw")
  assert_close(db, module.bias.grad.numpy(), jnp.float64, "db")


def test_pytorch_refuses_what_jaxconv_refuses_for_reflect():
  """The reflect bound is PyTorch's: amount < size."""
  torch = pytest.importorskip("torch")
  x = np.arange(6.0).reshape(1, 2, 3)
  with pytest.raises(RuntimeError):
    torch.nn.functional.pad(torch.tensor(x), (3, 0), mode="reflect")
  with pytest.raises(ValueError, match="smaller than the input's size"):
    jaxconv.conv(jnp.asarray(np.moveaxis(x, 1, -1)), jnp.ones((1, 2, 2)),
                 padding=((3, 0),), padding_mode="reflect")
  # One less is fine in both.
  torch.nn.functional.pad(torch.tensor(x), (2, 0), mode="reflect")
  jaxconv.conv(jnp.asarray(np.moveaxis(x, 1, -1)), jnp.ones((1, 2, 2)),
               padding=((2, 0),), padding_mode="reflect")


def test_padding_strings_with_modes():
  """SAME amounts with a PyTorch mode; CIRCULAR with its own mode named."""
  rng = np.random.default_rng(7)
  x = jnp.asarray(rng.normal(size=(2, 7, 6, 3)))
  w = jnp.asarray(rng.normal(size=(3, 4, 3, 2)))
  same = jaxconv.conv(x, w, stride=2, padding="SAME", padding_mode="edge")
  pads = lax.padtype_to_pads((7, 6), (3, 4), (2, 2), "SAME")
  expected = _lax_conv(x, w, 0.0, 2, pads, "replicate", 1, 1)
  assert_close(same, expected, jnp.float64)
  np.testing.assert_array_equal(
      jaxconv.conv(x, w, padding="CIRCULAR", padding_mode="wrap"),
      jaxconv.conv(x, w, padding="circular"))
  causal = jaxconv.conv(x[:, 0], w[:, 0], padding="CAUSAL",
                        padding_mode="replicate")
  assert_close(causal, _lax_conv(x[:, 0], w[:, 0], 0.0, 1, ((2, 0),),
                                 "replicate", 1, 1), jnp.float64)


def test_padding_composes_with_conv_transpose():
  """jaxconv.pad then any convolution: here a circular transposed one."""
  rng = np.random.default_rng(8)
  x = jnp.asarray(rng.normal(size=(2, 5, 3)))
  w = jnp.asarray(rng.normal(size=(3, 3, 4)))
  ours = lambda x, w: jaxconv.conv_transpose(
      jaxconv.pad(x, (1, 1), "wrap", axes=1), w, (2,), "VALID")
  theirs = lambda x, w: lax.conv_transpose(
      jnp.pad(x, ((0, 0), (1, 1), (0, 0)), mode="wrap"), w, (2,), "VALID")
  y, pullback = jax.vjp(ours, x, w)
  y_ref, pullback_ref = jax.vjp(theirs, x, w)
  assert_close(y, y_ref, jnp.float64)
  delta = jnp.asarray(rng.normal(size=y.shape))
  for g, g_ref in zip(pullback(delta), pullback_ref(delta)):
    assert_close(g, g_ref, jnp.float64)


# ---------------------------------------------------------------------------
# Teeth: each wrong gradient rule below fails the oracle comparisons above.
# A wrong rule is a value: jaxconv.pad differentiated by a fold built here
# (tests/rebuilt_rules.py), from jaxconv.pad_grad or jnp.pad, never a patch.
# ---------------------------------------------------------------------------


def _wrapped_the_wrong_way(g, pads, mode):
  """The periods aligned from the other end: the low padding lands where the
  high padding should (circular's fold with lo and hi exchanged)."""
  return jaxconv.pad_grad(g, tuple((hi, lo) for lo, hi in pads), mode)


def _symmetric_fold(g, pads, mode):
  """Mirrored about the edge *including* it: the gradient of ``jnp.pad``'s
  "symmetric" mode instead of "reflect"."""
  del mode
  shape = tuple(n - lo - hi for n, (lo, hi) in zip(g.shape, pads))
  _, pullback = jax.vjp(lambda x: jnp.pad(x, pads, mode="symmetric"),
                        jnp.zeros(shape, g.dtype))
  return pullback(g)[0]


def _no_edge_accumulation(g, pads, mode):
  """The padding's cotangent dropped, as with zero padding: nothing is added
  to the end elements."""
  del mode
  return jaxconv.pad_grad(g, pads, "constant")


WRONG_FOLDS = {
    "circular wrapped the wrong way": ("circular", _wrapped_the_wrong_way),
    "reflect including the edge": ("reflect", _symmetric_fold),
    "replicate without edge accumulation": ("replicate",
                                            _no_edge_accumulation),
}


def _conv_padded_by(fold, pairs):
  """``jaxconv.conv`` with a padding mode, written as jaxconv.conv does it:
  the spatial axes padded by ``pairs`` (the case's padding), then a VALID
  convolution; the padding's gradient is ``fold``."""

  def conv(x, w, b, *, padding, padding_mode, **kwargs):
    del padding  # the case's, as `pairs`
    pads = ((0, 0),) + tuple(pairs) + ((0, 0),)
    padded = pad_with(pads, padding_mode, fold)(x)
    return jaxconv.conv(padded, w, b, padding="VALID", **kwargs)

  return conv


@pytest.mark.parametrize("wrong", WRONG_FOLDS, ids=list(WRONG_FOLDS))
def test_wrong_padding_gradient_is_caught(wrong):
  """The rebuilt padding passes the pad and conv comparisons; with the wrong
  fold both fail on the gradient."""
  mode, fold = WRONG_FOLDS[wrong]
  case = next(c for c in PAD_PARAMS if c.values[0] == mode
              and c.values[1] == (4, 6))
  _, shape, pad_width, axes = case.values
  pads = _full(shape, pad_width, axes)
  check_pad(*case.values, pad=pad_with(pads, mode))   # sane first
  with pytest.raises(AssertionError, match="gradient vs jnp.pad: scaled"):
    check_pad(*case.values, pad=pad_with(pads, mode, fold))
  conv_case = CONV_CASES[1]   # asymmetric padding (3, 1)
  pairs = conv_case[5]
  check_conv_padding_mode(conv_case, mode, _conv_padded_by(pad_grad, pairs))
  with pytest.raises(AssertionError, match="dx: scaled error"):
    check_conv_padding_mode(conv_case, mode, _conv_padded_by(fold, pairs))
