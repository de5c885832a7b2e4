r"""Write backpropagation through a small convolution or network out by hand.

Answers "is my derivation right?" for small cases, in the notation of the
questions people ask::

    python -m jaxconv.explain --input 3x3 --kernel 2x2 --grad W1 --grad V5
    python -m jaxconv.explain --input 3x3 --layers conv:2x2 conv:2x2 \
        --cost squared --grad w1_1 --wrong w1_1=product-of-sums
    python -m jaxconv.explain --input 4x4 --layers conv:2x2 relu \
        max_pool:2x2,stride=2 --cost half-squared --brief

**One convolution** (:func:`explain`, ``--kernel``): for one example with
one channel it names the inputs ``V1, V2, ...``, the kernel weights
``W1, W2, ...`` and the outputs ``G1, G2, ...`` (row by row, from 1), prints
every output as a sum of products,

    G1 = V1·W1 + V2·W2 + V4·W3 + V5·W4

and the chain rule written out for the gradients asked for,

    ∂E/∂W1 = ∂E/∂G1·V1 + ∂E/∂G2·V2 + ∂E/∂G3·V4 + ∂E/∂G4·V5

where ``E`` is the loss. With a pooling stage (``--pool max|avg KxK``) the
gradients are written in terms of the pooled outputs' ``∂E/∂P``.

**A small network** (:func:`explain_network`, ``--layers``): a chain of
convolutions, activations and pooling layers ending in a cost ``C``. The
input is ``i``, layer ``l`` has weights ``w^l`` and outputs ``o^l``, and
``δ^l = ∂C/∂o^l`` is its delta. Every forward value, every delta and every
requested gradient is written in symbols, then with the numbers (given, read
from a file, or drawn at random), then as a number::

    ∂C/∂w¹₁ = δ¹₁·i₁ + δ¹₂·i₂ + δ¹₃·i₄ + δ¹₄·i₅
            = (-0.63)·0.1 + 0.756·0.2 + (-0.882)·0.4 + (-0.252)·0.5 = -0.3906

A tempting wrong answer (a formula, or the product of sums) can be evaluated
beside the true gradient, with the products it adds or drops.

Nothing is derived a second time. Which input each weight multiplies is read
off the tied-weight matrix of ``jaxconv.reference.conv_matrix`` (eq. 20 of
``docs/derivation.md``); which positions a pooling window covers, and the
divisor of an average, come from ``jaxconv.avg_pool_grad``. The numbers are
computed from the printed sums, and before anything is reported as passed
they are compared with jaxconv's own functions differentiated by JAX
(``jax.vjp`` for one convolution, ``jax.grad`` of the whole chain for a
network), in float64: every output and every gradient, not only the printed
ones.
"""

from jaxconv.explain._cli import main
from jaxconv.explain._network import NetworkExplanation, explain_network
from jaxconv.explain._one_layer import (
    Explanation,
    explain,
    forward_equations,
    gradient_equations,
)

__all__ = [
    "Explanation",
    "NetworkExplanation",
    "explain",
    "explain_network",
    "forward_equations",
    "gradient_equations",
    "main",
]
