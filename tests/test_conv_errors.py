"""Bad input fails at call time with a clear error: eagerly, under jit and
under eval_shape alike (lax lets stride 0 through until compilation).

Where lax accepts an input (an empty output, complex operands), the
lax-signature functions accept it too; see test_conv_dropin.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import jaxconv

X = jnp.ones((2, 4, 9, 9), jnp.float32)        # N C H W
W = jnp.ones((6, 4, 3, 3), jnp.float32)        # O I H W
XL = jnp.ones((2, 9, 9, 4), jnp.float32)       # channels last, for `conv`
WL = jnp.ones((3, 3, 4, 6), jnp.float32)       # H W I O


def general(**kw):
  args = dict(window_strides=(1, 1), padding="VALID")
  args.update(kw)
  lhs = args.pop("lhs", X)
  rhs = args.pop("rhs", W)
  return lambda: jaxconv.conv_general_dilated(lhs, rhs, **args)


def layer(**kw):
  x = kw.pop("x", XL)
  w = kw.pop("w", WL)
  b = kw.pop("b", None)
  return lambda: jaxconv.conv(x, w, b, **kw)


def transpose(**kw):
  args = dict(strides=(2, 2), padding="SAME")
  args.update(kw)
  return lambda: jaxconv.conv_transpose(XL, WL, **args)


CASES = [
    # (name, thunk, exception, words the message must contain)
    ("stride zero", general(window_strides=(1, 0)), ValueError,
     ["window_strides", "positive", "(1, 0)"]),
    ("stride negative", general(window_strides=-2), ValueError,
     ["window_strides", "positive"]),
    ("stride length", general(window_strides=(1, 1, 1)), ValueError,
     ["window_strides", "2", "3 entries"]),
    ("stride float", general(window_strides=(1.5, 1)), TypeError,
     ["window_strides", "integers", "1.5"]),
    ("rhs dilation zero", general(rhs_dilation=(0, 1)), ValueError,
     ["rhs_dilation", "positive"]),
    ("lhs dilation zero", general(lhs_dilation=(1, 0), padding=((0, 0),) * 2),
     ValueError, ["lhs_dilation", "positive"]),
    ("padding string", general(padding="FULL"), ValueError,
     ["padding", "'FULL'", "SAME"]),
    ("padding pairs count", general(padding=((1, 1),)), ValueError,
     ["padding", "2", "1"]),
    ("padding pair length", general(padding=((1, 1, 1), (0, 0))), ValueError,
     ["padding", "(lo, hi)"]),
    ("padding not pairs", general(padding=3), TypeError,
     ["padding", "(lo, hi) pairs", "3"]),
    ("same with lhs dilation", general(padding="SAME", lhs_dilation=(2, 2)),
     ValueError, ["padding", "lhs_dilation", "conv_transpose"]),
    ("rank mismatch", general(rhs=jnp.ones((6, 4, 3), jnp.float32)),
     ValueError, ["rank", "(6, 4, 3)", "(2, 4, 9, 9)"]),
    ("channel mismatch", general(rhs=jnp.ones((6, 3, 3, 3), jnp.float32)),
     ValueError, ["rhs", "input-feature", "4", "3"]),
    ("groups do not divide", general(feature_group_count=3), ValueError,
     ["feature_group_count", "3", "4"]),
    ("groups zero", general(feature_group_count=0), ValueError,
     ["feature_group_count", "positive"]),
    ("both groups", general(rhs=jnp.ones((6, 2, 3, 3), jnp.float32),
                            feature_group_count=2, batch_group_count=2),
     ValueError, ["feature_group_count", "batch_group_count"]),
    ("batch groups do not divide", general(batch_group_count=4), ValueError,
     ["batch_group_count", "4", "batch size", "2"]),
    ("padding crops past the input", general(padding=((-5, -5), (0, 0))),
     ValueError, ["padding", "crops", "(-1, 9)"]),
    ("kernel in another layout", general(rhs=jnp.ones((3, 3, 4, 6),
                                                      jnp.float32)),
     ValueError, ["rhs", "input-feature", "Axis 2 has 4 entries", "layout"]),
    ("integer input", general(lhs=jnp.ones((2, 4, 9, 9), jnp.int32)),
     TypeError, ["lhs", "floating", "int32"]),
    ("bool kernel", general(rhs=jnp.ones((6, 4, 3, 3), bool)), TypeError,
     ["rhs", "floating", "bool"]),
    ("complex input, real kernel",
     general(lhs=jnp.ones((2, 4, 9, 9), jnp.complex64)),
     TypeError, ["lhs", "rhs", "same dtype", "complex64", "float32"]),
    ("list input", general(lhs=[[[[1.0]]]]), TypeError,
     ["lhs", "JAX or NumPy array", "list"]),
    ("bfloat16 and float32", general(lhs=jnp.ones((2, 4, 9, 9), jnp.bfloat16)),
     TypeError, ["lhs", "rhs", "same dtype", "bfloat16", "float32"]),
    ("dtype mismatch", general(rhs=jnp.ones((6, 4, 3, 3), jnp.float16)),
     TypeError, ["lhs", "rhs", "same dtype", "float16"]),
    ("dimension numbers", general(dimension_numbers=("NCHW", "OIHW", "NCXW")),
     TypeError, ["dimension_numbers"]),
    ("precision", general(precision="fastest-ish"), ValueError,
     ["precision", "'fastest-ish'", "'tensorfloat32'", "DotAlgorithmPreset"]),
    ("preferred type", general(preferred_element_type=jnp.int32), TypeError,
     ["preferred_element_type", "int32"]),
    ("preferred type narrower", general(preferred_element_type=jnp.float16),
     TypeError, ["preferred_element_type", "narrower", "float16"]),
    ("preferred type real for complex",
     general(lhs=X.astype(jnp.complex64), rhs=W.astype(jnp.complex64),
             preferred_element_type=jnp.float32),
     TypeError, ["preferred_element_type", "complex", "float32"]),
    ("layer stride", layer(stride=0), ValueError, ["stride", "positive"]),
    ("layer dilation", layer(dilation=(1, 2, 3)), ValueError,
     ["dilation", "2", "3 entries"]),
    ("layer groups", layer(groups=3), ValueError, ["groups", "3", "4"]),
    ("layer bias shape", layer(b=jnp.ones((5,), jnp.float32)), ValueError,
     ["b", "(6,)", "(5,)"]),
    ("layer bias dtype", layer(b=jnp.ones((6,), jnp.float16)), TypeError,
     ["b", "float32", "float16"]),
    ("layer channels", layer(w=jnp.ones((3, 3, 5, 6), jnp.float32)),
     ValueError, ["w", "4", "5"]),
    ("layer kernel in PyTorch's layout",
     layer(w=jnp.ones((6, 4, 3, 3), jnp.float32)), ValueError,
     ["w", "PyTorch", "(C_out, C_in, *window)",
      "jnp.transpose(w, (2, 3, 1, 0))"]),
    ("layer kernel larger than input",
     layer(w=jnp.ones((11, 3, 4, 6), jnp.float32)),
     ValueError, ["no output", "(11, 3)"]),
    ("layer padding string", layer(padding="FULL"), ValueError,
     ["padding", "'FULL'", "CIRCULAR", "CAUSAL"]),
    ("layer padding mode", layer(padding=1, padding_mode="mirror"),
     ValueError, ["padding_mode", "'mirror'", "circular", "replicate"]),
    ("layer padding mode conflict", layer(padding="CIRCULAR",
                                          padding_mode="reflect"),
     ValueError, ["padding", "'CIRCULAR'", "padding_mode", "'reflect'"]),
    ("layer causal in 2-D", layer(padding="CAUSAL"), ValueError,
     ["CAUSAL", "one spatial dimension", "2"]),
    ("layer reflect too wide", layer(padding=((9, 0), (1, 1)),
                                     padding_mode="reflect"),
     ValueError, ["padding", "smaller", "reflect", "size 9", "(9, 0)"]),
    ("layer negative padding with a mode",
     layer(padding=-1, padding_mode="replicate"), ValueError,
     ["padding", "non-negative", "(-1, -1)"]),
    ("layer circular of an empty input",
     layer(x=jnp.ones((2, 0, 9, 4), jnp.float32), padding=1,
           padding_mode="circular"), ValueError,
     ["padding_mode", "'circular'", "empty", "spatial dimension 0"]),
    ("layer input rank", layer(x=jnp.ones((9, 9), jnp.float32)), ValueError,
     ["x", "(9, 9)", "2 spatial"]),
    ("layer padding count", layer(padding=(1, 1, 1)), ValueError,
     ["padding", "2", "3"]),
    ("transpose padding", transpose(padding="SAME_LOWER"), ValueError,
     ["padding", "SAME", "VALID"]),
    ("transpose strides", transpose(strides=(0, 2)), ValueError,
     ["strides", "positive"]),
    ("input grad cotangent", lambda: jaxconv.conv_input_grad(
        jnp.ones((2, 6, 8, 8)), W, X.shape, 1, "VALID"), ValueError,
     ["cotangent", "(2, 6, 7, 7)", "(2, 6, 8, 8)"]),
    ("kernel grad cotangent", lambda: jaxconv.conv_kernel_grad(
        X, jnp.ones((2, 5, 7, 7), jnp.float32), W.shape, 1, "VALID"),
     ValueError, ["cotangent", "(2, 6, 7, 7)", "(2, 5, 7, 7)"]),
    ("input grad complex cotangent", lambda: jaxconv.conv_input_grad(
        jnp.ones((2, 6, 7, 7), jnp.complex64), W, X.shape, 1, "VALID"),
     TypeError, ["cotangent", "rhs", "complex", "complex64", "float32"]),
]


@pytest.mark.parametrize("mode", ["eager", "jit", "eval_shape"])
@pytest.mark.parametrize("name,thunk,error,words", CASES,
                         ids=[c[0] for c in CASES])
def test_bad_input(name, thunk, error, words, mode):
  del name
  if mode == "jit":
    call = jax.jit(thunk)
  elif mode == "eval_shape":
    call = lambda: jax.eval_shape(thunk)
  else:
    call = thunk
  with pytest.raises(error) as info:
    call()
  message = str(info.value)
  for word in words:
    assert word in message, f"{word!r} not in {message!r}"


# A traced value where a static int is needed: the message says so (the
# plain conversion error would show the tracer, "JitTracer(~int32[])").
TRACED = [
    ("conv stride", lambda s: jaxconv.conv(XL, WL, stride=s), "stride"),
    ("conv dilation", lambda s: jaxconv.conv(XL, WL, dilation=(1, s)),
     "dilation"),
    ("conv padding", lambda s: jaxconv.conv(XL, WL, padding=s), "padding"),
    ("conv padding pair", lambda s: jaxconv.conv(XL, WL, padding=((s, 0),
                                                                  (0, 0))),
     "padding"),
    ("conv groups", lambda s: jaxconv.conv(XL, WL[:, :, :2], groups=s),
     "groups"),
    ("general strides", lambda s: jaxconv.conv_general_dilated(
        X, W, (s, 1), "VALID"), "window_strides"),
    ("general strides array", lambda s: jaxconv.conv_general_dilated(
        X, W, jnp.stack([s, s]), "VALID"), "window_strides"),
    ("general padding array", lambda s: jaxconv.conv_general_dilated(
        X, W, 1, jnp.full((2, 2), s)), "padding"),
    ("transpose strides", lambda s: jaxconv.conv_transpose(
        XL, WL, (s, s), "SAME"), "strides"),
    ("bias grad axis", lambda s: jaxconv.conv_bias_grad(XL, s),
     "feature_axis"),
    ("pad width", lambda s: jaxconv.pad(XL, s, "wrap"), "pad_width"),
    ("pad axes", lambda s: jaxconv.pad(XL, 1, axes=s), "axes"),
]


@pytest.mark.parametrize("name,function,argument", TRACED,
                         ids=[c[0] for c in TRACED])
def test_traced_static_argument(name, function, argument):
  with pytest.raises(TypeError) as info:
    jax.jit(function)(2)
  message = str(info.value)
  assert f"`{argument}` must be a static Python int" in message, message
  assert "got a traced value of type int" in message, message
  assert "static_argnums" in message and "Tracer" not in message, message
  # The same value, static, works (a concrete array too, as in lax; built
  # under jit, an array is traced even from static ints).
  assert function(2) is not None
  if "array" not in name:
    assert jax.jit(function, static_argnums=0)(2) is not None


def test_good_input_still_works_under_eval_shape():
  out = jax.eval_shape(lambda: jaxconv.conv(XL, WL, stride=2, padding=1))
  assert out.shape == (2, 5, 5, 6)
