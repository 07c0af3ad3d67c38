"""Fully connected layer."""
import numpy as np

from minidet.backend import get_array_module
from minidet.threads import blas_threads
from minidet.nn.layer import Layer


class Linear(Layer):
    """y = x W^T + b.  x (N, in) -> y (N, out); weight (out, in), bias (out,).

    Initialised as He et al.: weight ~ N(0, sqrt(2 / in)), bias 0. `frozen` skips the
    weight and bias gradients (grads stays empty); `needs_input_grad = False` skips dx.
    """

    def __init__(self, in_features, out_features, dtype=np.float32, rng=None):
        super().__init__()
        rng = np.random.default_rng(rng)
        weight = rng.normal(0.0, np.sqrt(2.0 / in_features), (out_features, in_features))
        self.params = {"weight": weight.astype(dtype), "bias": np.zeros(out_features, dtype)}

    def forward(self, x):
        self.x = x                       # dW = dy^T x needs it
        with blas_threads(2 * x.shape[0] * self.params["weight"].size, get_array_module(x)):
            y = x @ self.params["weight"].T  # the one GEMM
        y += self.params["bias"]         # in place: no second (N, out) array
        return y

    def backward(self, dy):
        """dW = dy^T x, db = sum_n dy, dx = dy W.  dy (N, out) -> dx (N, in), or None."""
        with blas_threads(2 * dy.shape[0] * self.params["weight"].size, get_array_module(dy)):
            self.grads = {} if self.frozen else {"weight": dy.T @ self.x, "bias": dy.sum(axis=0)}
            return dy @ self.params["weight"] if self.needs_input_grad else None
