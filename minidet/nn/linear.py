"""Fully connected layer."""
import numpy as np

from minidet.backend import get_array_module
from minidet.threads import blas_threads
from minidet.nn.layer import Layer


class Linear(Layer):
    """y = x W^T + b.  x (N, in) -> y (N, out); weight (out, in), bias (out,).

    Initialised as He et al.: weight ~ N(0, sqrt(2 / in)), bias 0. `frozen` skips the
    weight and bias gradients (grads stays empty); `needs_input_grad = False` skips dx.
    grads["weight"] is overwritten by the next backward: read (or copy) it before then.
    """

    def __init__(self, in_features, out_features, dtype=np.float32, rng=None):
        super().__init__()
        rng = np.random.default_rng(rng)
        weight = rng.normal(0.0, np.sqrt(2.0 / in_features), (out_features, in_features))
        self.params = {"weight": weight.astype(dtype), "bias": np.zeros(out_features, dtype)}
        self._dw = None

    def forward(self, x):
        self.x = x if self.training and not self.frozen else None   # dW = dy^T x reads it; nothing else does
        with blas_threads(2 * x.shape[0] * self.params["weight"].size, get_array_module(x)):
            y = x @ self.params["weight"].T  # the one GEMM
        y += self.params["bias"]         # in place: no second (N, out) array
        return y

    def backward(self, dy):
        """dW = dy^T x, db = sum_n dy, dx = dy W.  dy (N, out) -> dx (N, in), or None."""
        xp = get_array_module(dy)
        with blas_threads(2 * dy.shape[0] * self.params["weight"].size, xp):
            if self.frozen:
                self.grads = {}
            elif self.x is None:
                raise RuntimeError("Linear.backward needs a forward in training mode first (the input "
                                   "is kept for the weight gradient only then)")
            else:
                dw = xp.matmul(dy.T, self.x, out=self._weight_grad_buffer(xp))
                self.grads = {"weight": dw, "bias": dy.sum(axis=0)}
            return dy @ self.params["weight"] if self.needs_input_grad else None

    def _weight_grad_buffer(self, xp):
        """The array dW is written into, kept from one backward to the next: fc6's is 411 MB in
        VGG16, and a new one at every step would pay for its pages again (docs/PERFORMANCE.md)."""
        w = self.params["weight"]
        if (self._dw is None or self._dw.shape != w.shape or self._dw.dtype != w.dtype
                or get_array_module(self._dw) is not xp):
            self._dw = xp.empty_like(w)
        return self._dw
