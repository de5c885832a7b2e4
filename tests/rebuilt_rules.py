"""jaxconv's rules rebuilt in the tests from its public pieces.

A teeth test shows that the suite catches a wrong gradient rule. It builds the
wrong rule as a value -- a ``jax.custom_vjp`` function whose forward pass is
the library's public function and whose backward pass calls the library's
public gradient pieces with one of them swapped for a plausible wrong one --
and hands that function to the same comparison helper the other tests use.
Nothing in the library is replaced: with the default pieces, the functions
built here are jaxconv's own rules, and pass the same comparisons.
"""

from __future__ import annotations

import jax

import jaxconv


def conv_with(input_grad=jaxconv.conv_input_grad,
              kernel_grad=jaxconv.conv_kernel_grad, **kwargs):
  """``jaxconv.conv_general_dilated`` with ``kwargs`` as a function of
  ``(lhs, rhs)``, differentiated by the given gradient pieces.

  Args:
    input_grad: called as ``input_grad(cotangent, rhs, lhs_shape,
      **kwargs)``, with the signature of ``jaxconv.conv_input_grad``.
    kernel_grad: called as ``kernel_grad(lhs, cotangent, rhs_shape,
      **kwargs)``, with the signature of ``jaxconv.conv_kernel_grad``.
    **kwargs: every argument of ``conv_general_dilated`` after ``rhs``, by
      name (``window_strides``, ``padding``, ...).

  Returns:
    The convolution; with the default pieces, jaxconv's rule (eqs. 5-18).
  """

  @jax.custom_vjp
  def conv(lhs, rhs):
    return jaxconv.conv_general_dilated(lhs, rhs, **kwargs)

  def conv_fwd(lhs, rhs):
    return conv(lhs, rhs), (lhs, rhs)

  def conv_bwd(residuals, cotangent):
    lhs, rhs = residuals
    return (input_grad(cotangent, rhs, lhs.shape, **kwargs),
            kernel_grad(lhs, cotangent, rhs.shape, **kwargs))

  conv.defvjp(conv_fwd, conv_bwd)
  return conv


def pad_grad(cotangent, pads, mode):
  """``jaxconv.pad_grad`` with one ``(lo, hi)`` pair per axis: the right
  fold for :func:`pad_with`."""
  return jaxconv.pad_grad(cotangent, pads, mode)


def pad_with(pads, mode, fold=pad_grad):
  """``jaxconv.pad(x, pads, mode)`` as a function of ``x`` whose gradient is
  ``fold(cotangent, pads, mode)``.

  Args:
    pads: one ``(lo, hi)`` pair for every axis of ``x``.
    mode: a padding mode of ``jaxconv.pad``.
    fold: the gradient, eq. (26); :func:`pad_grad` by default.

  Returns:
    The padding; with the default fold, jaxconv's rule (eqs. 25-26).
  """
  pads = tuple((int(lo), int(hi)) for lo, hi in pads)

  @jax.custom_vjp
  def pad(x):
    return jaxconv.pad(x, pads, mode)

  def pad_fwd(x):
    return pad(x), None

  def pad_bwd(residuals, cotangent):
    del residuals
    return (fold(cotangent, pads, mode),)

  pad.defvjp(pad_fwd, pad_bwd)
  return pad
