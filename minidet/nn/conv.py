"""2-D convolution as im2col + one GEMM for the whole batch."""
import numpy as np

from minidet.backend import get_array_module
from minidet.nn.layer import Layer
from minidet.ops.im2col import col2im, conv_output_size, im2col, pair
from minidet.threads import blas_threads


class Conv2d(Layer):
    """y[n, f] = sum_c W[f, c] (*) x[n, c] + b[f]   (cross-correlation, zero padding, stride s).

    Shapes: x (N, C, H, W) -> y (N, F, OH, OW), OH = (H + 2p - kh) // s + 1 (likewise OW).
    params: "weight" (F, C, kh, kw), "bias" (F,), He-initialised: W ~ N(0, 2 / (C*kh*kw)), b = 0.

    As matrices, with cols = im2col(x) (C*kh*kw, N*OH*OW) and Y = y as (F, N*OH*OW):
        forward    Y = W2 @ cols + b          W2 = W.reshape(F, C*kh*kw)
        backward   dW2 = dY @ cols.T,  db = dY summed over its columns,
                   dcols = W2.T @ dY,  dx = col2im(dcols)
    `frozen` skips dW and db (grads stays empty); `needs_input_grad = False` skips dx
    (backward returns None), as for the first layers of a pretrained network.

    Why im2col and not the copy-free form of a stride-1 convolution (kh*kw GEMMs over
    shifted views of the padded input, accumulated into the output), measured on VGG16's
    conv3_1 and conv4_2 (2 images of 224x320, one thread, CPU ms, im2col vs shifted):
    forward 89 vs 95 and 147 vs 156, forward + backward 218 vs 257 and 465 vs 462. The
    Cython im2col costs 2-10 ms next to 40-80 ms of GEMM, the one GEMM with
    K = C*kh*kw runs at full speed where the K = C ones lose up to 17% (C = 128), and
    accumulating needs a GEMM with beta = 1, which numpy's matmul does not offer: SciPy's
    BLAS does, but it is a second OpenBLAS thread pool, and alternating GEMMs between the
    two pools (as convolutions and fully connected layers would) took 1.4-1.7x the time
    of each alone.

    The cols and dcols buffers are kept and reused while the shapes allow, so a training
    loop does not allocate (and page-fault) hundreds of megabytes per layer and iteration.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dtype=np.float32, rng=None):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.padding = pair(kernel_size), pair(stride), pair(padding)
        rng = np.random.default_rng(rng)
        kh, kw = self.kernel_size
        fan_in = self.in_channels * kh * kw
        weight = rng.normal(0.0, np.sqrt(2.0 / fan_in), (self.out_channels, self.in_channels, kh, kw))
        self.params = {"weight": weight.astype(dtype), "bias": np.zeros(self.out_channels, dtype=dtype)}
        self.cols = None
        self.x_shape = None
        self._buffers = {}

    def output_shape(self, x_shape):
        n, _, h, w = x_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return n, self.out_channels, conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)

    def forward(self, x):
        xp = get_array_module(x)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"Conv2d({self.in_channels}, {self.out_channels}) takes (N, "
                             f"{self.in_channels}, H, W) inputs, got shape {x.shape}")
        n, f, oh, ow = self.output_shape(x.shape)
        w2 = self.params["weight"].reshape(f, -1).astype(x.dtype, copy=False)
        bias = self.params["bias"].astype(x.dtype, copy=False)
        cols = im2col(x, self.kernel_size, self.stride, self.padding,
                      out=self._buffer("cols", (w2.shape[1], n * oh * ow), x.dtype, xp))
        with blas_threads(2 * cols.size * f, xp):
            out = xp.matmul(w2, cols, out=self._buffer("out", (f, n * oh * ow), x.dtype, xp))
        y = xp.empty((n, f, oh, ow), dtype=x.dtype)
        xp.add(out.reshape(f, n, oh * ow).transpose(1, 0, 2), bias[:, None], out=y.reshape(n, f, oh * ow))
        self.x_shape = x.shape
        self.cols = None if self.frozen else cols                     # dW = dY @ cols.T
        return y

    def backward(self, dy):
        xp = get_array_module(dy)
        if self.frozen:
            self.grads.clear()
            if not self.needs_input_grad:
                return None
        n, f, oh, ow = dy.shape
        weight = self.params["weight"]
        dy2 = dy.transpose(1, 0, 2, 3).reshape(f, n * oh * ow)       # dY, (F, N*OH*OW)
        with blas_threads(2 * weight.size * n * oh * ow, xp):          # flops of each GEMM
            if not self.frozen:
                self.grads["weight"] = (dy2 @ self.cols.T).reshape(weight.shape).astype(weight.dtype, copy=False)
                self.grads["bias"] = dy2.sum(axis=1).astype(weight.dtype, copy=False)
            if not self.needs_input_grad:
                return None
            w2 = weight.reshape(f, -1).astype(dy.dtype, copy=False)
            dcols = self._buffer("dcols", (w2.shape[1], n * oh * ow), dy.dtype, xp)
            xp.matmul(w2.T, dy2, out=dcols)
        return col2im(dcols, self.x_shape, self.kernel_size, self.stride, self.padding)

    def _buffer(self, name, shape, dtype, xp):
        """A C-contiguous `shape` view of a kept flat array, grown (never shrunk) on demand."""
        size = int(np.prod(shape))
        flat = self._buffers.get(name)
        if (flat is None or flat.size < size or flat.dtype != dtype
                or get_array_module(flat) is not xp):
            flat = xp.empty(size, dtype=dtype)
            self._buffers[name] = flat
        return flat[:size].reshape(shape)
