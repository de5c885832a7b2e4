"""jaxconv: convolution and pooling for JAX with hand-derived gradients.

Every differentiable function here carries a ``jax.custom_vjp`` rule written
from the derivation in ``docs/derivation.md``; the equation numbers in the
docstrings and in the comment block atop each rule refer to that document.
"""

from jaxconv.conv import (
    ConvGeometry,
    conv,
    conv_bias_grad,
    conv_general_dilated,
    conv_input_grad,
    conv_kernel_grad,
    conv_output_shape,
    conv_transpose,
    make_conv_geometry,
)

__version__ = "0.1.0"

__all__ = [
    "ConvGeometry",
    "conv",
    "conv_bias_grad",
    "conv_general_dilated",
    "conv_input_grad",
    "conv_kernel_grad",
    "conv_output_shape",
    "conv_transpose",
    "make_conv_geometry",
]
