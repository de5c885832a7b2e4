"""jaxconv: convolution and pooling for JAX with hand-derived gradients.

Every differentiable function here carries a ``jax.custom_vjp`` rule written
from the derivation in ``docs/derivation.md``; the equation numbers in the
docstrings and in the comment block atop each rule refer to that document.
"""

from jaxconv._algorithms import ALGORITHMS, choose_algorithm, use_algorithm
from jaxconv.convolution import (
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

from jaxconv.layers import (
    dense,
    dense_bias_grad,
    dense_input_grad,
    dense_kernel_grad,
    leaky_relu,
    leaky_relu_grad,
    mse,
    mse_predictions_grad,
    mse_targets_grad,
    relu,
    relu_grad,
    sigmoid,
    sigmoid_grad,
    softmax_cross_entropy,
    softmax_cross_entropy_grad,
    tanh,
    tanh_grad,
)

from jaxconv.pooling import (
    avg_pool,
    avg_pool_grad,
    lp_pool,
    lp_pool_grad,
    max_pool,
    max_pool_grad,
    max_pool_with_indices,
    max_unpool,
    max_unpool_grad,
    min_pool,
    min_pool_grad,
)

__version__ = "0.1.0"

__all__ = [
    "ALGORITHMS",
    "choose_algorithm",
    "use_algorithm",
    "ConvGeometry",
    "conv",
    "conv_bias_grad",
    "conv_general_dilated",
    "conv_input_grad",
    "conv_kernel_grad",
    "conv_output_shape",
    "conv_transpose",
    "make_conv_geometry",
    "dense",
    "dense_bias_grad",
    "dense_input_grad",
    "dense_kernel_grad",
    "leaky_relu",
    "leaky_relu_grad",
    "mse",
    "mse_predictions_grad",
    "mse_targets_grad",
    "relu",
    "relu_grad",
    "sigmoid",
    "sigmoid_grad",
    "softmax_cross_entropy",
    "softmax_cross_entropy_grad",
    "tanh",
    "tanh_grad",
    "avg_pool",
    "avg_pool_grad",
    "lp_pool",
    "lp_pool_grad",
    "max_pool",
    "max_pool_grad",
    "max_pool_with_indices",
    "max_unpool",
    "max_unpool_grad",
    "min_pool",
    "min_pool_grad",
]
