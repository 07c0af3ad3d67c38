"""2-D convolution, by im2col + GEMM or by Winograd's minimal filtering, in chunks of a shared workspace."""
import contextlib

import numpy as np

from minidet.backend import get_array_module
from minidet.nn.layer import Layer
from minidet.ops import im2col as im2col_ops
from minidet.ops import winograd
from minidet.ops.im2col import col2im, conv_output_size, im2col, pair
from minidet.threads import BATCH_PARALLEL_MIN_FLOPS, batched_matmul, blas_threads, parts_for, share_out

WORKSPACE_BYTES = 16 << 20   # a chunk's buffers: larger ones run no faster (docs/PERFORMANCE.md)
MIN_CHUNK_COLUMNS = 256      # GEMM columns of a chunk at least, for BLAS to run at full speed
# im2col chunks alternate between this many sets of buffers on the CPU, each half the workspace, so
# that two threads share a layer out chunk by chunk: VGG16's conv1_1 (C = 3) runs chunks of GEMMs
# too small for BLAS to split well, and without lanes ran on one core.
IM2COL_LANES = 2
ALGORITHMS = ("auto", "im2col", "winograd2", "winograd4")
# Below this many input channels a Winograd layer moves more transformed tiles than it saves
# multiplications (VGG16's conv1_1, C = 3, is faster by im2col): docs/PERFORMANCE.md.
WINOGRAD_MIN_CHANNELS = 16


class Workspace:
    """Scratch memory that convolutions share, one layer at a time, as Caffe's col_buffer.

    A convolution asks for its buffers (im2col's cols, Winograd's tiles, ...) for one chunk of its
    output rows at a time, beside a few of the size of its weights; `max_bytes` bounds a chunk's
    buffers (unless MIN_CHUNK_COLUMNS, or the whole images that GPU kernels need, take more), so
    the workspace holds one chunk of the most demanding layer, not one buffer per layer. One flat
    array per array module (NumPy, CuPy), grown on demand, never shrunk until `release()`. Layers
    that may run at the same time (threads) need workspaces of their own.
    """

    def __init__(self, max_bytes=WORKSPACE_BYTES):
        self.max_bytes = int(max_bytes)
        self._flat = {}

    @property
    def nbytes(self):
        return sum(int(flat.nbytes) for flat in self._flat.values())

    def release(self):
        """Drop the buffers (the next layer allocates again)."""
        self._flat.clear()

    def chunk_rows(self, total, row_bytes, row_columns, granule=1):
        """Rows per chunk: as many as fit max_bytes at row_bytes each, but at least MIN_CHUNK_COLUMNS
        GEMM columns (row_columns per row), a multiple of granule, at most total."""
        rows = max(self.max_bytes // max(int(row_bytes), 1), -(-MIN_CHUNK_COLUMNS // max(int(row_columns), 1)))
        rows = max(granule, rows // granule * granule)
        return int(min(rows, total))

    def arrays(self, xp, dtype, *shapes):
        """C-contiguous arrays of these shapes, carved one after another out of the shared buffer."""
        itemsize = np.dtype(dtype).itemsize
        sizes = [-(-int(np.prod(shape)) * itemsize // 64) * 64 for shape in shapes]   # 64-byte aligned
        flat = self._flat.get(xp)
        if flat is None or flat.size < sum(sizes):
            self._flat[xp] = None                     # let the old buffer go before the new one comes
            flat = self._flat[xp] = xp.empty(sum(sizes), dtype=np.uint8)
        views, offset = [], 0
        for shape, size in zip(shapes, sizes):
            count = int(np.prod(shape))
            views.append(flat[offset:offset + count * itemsize].view(dtype).reshape(shape))
            offset += size
        return views


SHARED_WORKSPACE = Workspace()


class Conv2d(Layer):
    """y[n, f] = sum_c W[f, c] (*) x[n, c] + b[f]   (cross-correlation, zero padding, stride s).

    Shapes: x (N, C, H, W) -> y (N, F, OH, OW), OH = (H + 2p - kh) // s + 1 (likewise OW).
    params: "weight" (F, C, kh, kw), "bias" (F,), He-initialised: W ~ N(0, 2 / (C*kh*kw)), b = 0.

    algorithm: "im2col" (minidet.ops.im2col: any kernel, stride, padding and dtype), "winograd2" or
    "winograd4" (minidet.ops.winograd, F(2x2, 3x3) or F(4x4, 3x3): 3x3, stride 1, pad 1 only), or
    "auto": F(4x4, 3x3) for float32 NumPy inputs of at least WINOGRAD_MIN_CHANNELS channels where it
    applies, im2col otherwise. The choice changes the rounding (docs/PERFORMANCE.md gives the
    errors), never the weights, so checkpoints do not record it.

    The layer keeps only its input, and only when a backward will need it for the weight gradient
    (trained, in training mode); the backward recomputes im2col's columns (or the input tiles) from
    it, chunk by chunk, as Caffe's weight_cpu_gemm does. `frozen` skips dW and db (grads stays
    empty); `needs_input_grad = False` skips dx (backward returns None). All buffers come from
    `workspace` (default: the one SHARED_WORKSPACE of every convolution). On the CPU, im2col's chunks
    alternate between two lanes of buffers that two threads can run side by side (IM2COL_LANES);
    a Winograd layer shares each chunk's transforms and GEMMs out instead.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dtype=np.float32, rng=None, algorithm="auto", workspace=None):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.padding = pair(kernel_size), pair(stride), pair(padding)
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
        if algorithm.startswith("winograd") and not self.winograd_applies():
            raise ValueError(f"{algorithm} takes 3x3 kernels with stride 1 and padding 1, got kernel "
                             f"{self.kernel_size}, stride {self.stride}, padding {self.padding}")
        self.algorithm = algorithm
        self.workspace = SHARED_WORKSPACE if workspace is None else workspace
        rng = np.random.default_rng(rng)
        kh, kw = self.kernel_size
        fan_in = self.in_channels * kh * kw
        weight = rng.normal(0.0, np.sqrt(2.0 / fan_in), (self.out_channels, self.in_channels, kh, kw))
        self.params = {"weight": weight.astype(dtype), "bias": np.zeros(self.out_channels, dtype=dtype)}
        self.x = None            # the input, kept for the weight gradient only
        self.x_shape = None
        self.used = None         # the algorithm of the last forward, which its backward follows

    def winograd_applies(self):
        return self.kernel_size == (3, 3) and self.stride == (1, 1) and self.padding == (1, 1)

    def output_shape(self, x_shape):
        n, _, h, w = x_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return n, self.out_channels, conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)

    def choose_algorithm(self, x):
        """The algorithm that a forward of x runs: `algorithm`, with "auto" resolved."""
        if self.algorithm != "auto":
            return self.algorithm
        fast = (get_array_module(x) is np and x.dtype == np.float32 and self.winograd_applies()
                and self.in_channels >= WINOGRAD_MIN_CHANNELS)
        return "winograd4" if fast else "im2col"

    def forward(self, x):
        xp = get_array_module(x)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"Conv2d({self.in_channels}, {self.out_channels}) takes (N, "
                             f"{self.in_channels}, H, W) inputs, got shape {x.shape}")
        y = xp.empty(self.output_shape(x.shape), dtype=x.dtype)
        weight = self.params["weight"].astype(x.dtype, copy=False)
        bias = self.params["bias"].astype(x.dtype, copy=False)
        self.used, self.x_shape = self.choose_algorithm(x), x.shape
        if self.used == "im2col":
            self._forward_im2col(x, weight, bias, y)
        else:
            self._forward_winograd(x, weight, bias, y, int(self.used[-1]))
        self.x = x if self.training and not self.frozen else None    # dW reads it; nothing else does
        return y

    def backward(self, dy):
        if self.frozen:
            self.grads.clear()
            if not self.needs_input_grad:
                return None
        elif self.x is None:
            raise RuntimeError("Conv2d.backward needs a forward in training mode first (the input "
                               "is kept for the weight gradient only then)")
        weight = self.params["weight"]
        dw, dx = self._backward_im2col(dy) if self.used == "im2col" else self._backward_winograd(dy)
        if not self.frozen:
            self.grads["weight"] = dw.reshape(weight.shape).astype(weight.dtype, copy=False)
            self.grads["bias"] = dy.sum(axis=(0, 2, 3)).astype(weight.dtype, copy=False)
        return dx

    # ---- im2col: Y = W2 @ cols, dW2 = dY @ cols^T, dcols = W2^T @ dY (see minidet.ops.im2col) ----

    def _geometry(self):
        return self.kernel_size, self.stride, self.padding

    def _chunks(self, total, row_bytes, row_columns, granule):
        step = self.workspace.chunk_rows(total, row_bytes, row_columns, granule)
        return step, [(g0, min(g0 + step, total)) for g0 in range(0, total, step)]

    def _lanes(self, xp):
        """How many sets of chunk buffers an im2col layer alternates between: two on the CPU, so
        that two threads can each run every other chunk; one on the GPU, whose whole-image chunks
        would otherwise double the workspace."""
        return IM2COL_LANES if xp is np else 1

    def _lane_buffers(self, xp, dtype, lanes, *shapes):
        """[the arrays of `shapes`] for each lane, out of the one workspace."""
        flat = self.workspace.arrays(xp, dtype, *(shapes * lanes))
        return [flat[i * len(shapes):(i + 1) * len(shapes)] for i in range(lanes)]

    @staticmethod
    def _run_lanes(xp, lane, lanes, flops):
        """lane(index, threaded) for every lane: on minidet.threads' Python threads when the layer
        is large enough work (flops; None: lanes that must run in order), else one after another
        here. The chunks of a lane are fixed (every lanes-th), so the result is the same either way."""
        parallel = xp is np and flops is not None
        parts = min(lanes, parts_for(flops, BATCH_PARALLEL_MIN_FLOPS)) if parallel else 1
        if parts == 1:
            for index in range(lanes):
                lane(index, False)
            return
        with blas_threads(0):                # each GEMM on its own thread's BLAS
            share_out(lambda part, parts: [lane(i, True) for i in range(part, lanes, parts)], parts)

    def _forward_im2col(self, x, weight, bias, y):
        xp = get_array_module(x)
        n, f, oh, ow = y.shape
        w2 = weight.reshape(f, -1)
        k, item, lanes = w2.shape[1], x.dtype.itemsize, self._lanes(xp)
        step, chunks = self._chunks(n * oh, lanes * (k + f) * ow * item, ow, im2col_ops.row_granule(xp, oh))
        buffers = self._lane_buffers(xp, x.dtype, lanes, (k, step * ow), (f, step * ow))

        def lane(index, threaded):           # chunks index, index + lanes, ...: disjoint rows of y
            cols, out = buffers[index]
            for g0, g1 in chunks[index::lanes]:
                chunk_cols, chunk_out = _first_columns(cols, (g1 - g0) * ow), _first_columns(out, (g1 - g0) * ow)
                im2col(x, *self._geometry(), out=chunk_cols, rows=(g0, g1))
                with _gemm_threads(threaded, 2 * f * k * chunk_cols.shape[1], xp):
                    xp.matmul(w2, chunk_cols, out=chunk_out)
                for img, r0, r1, c0 in _image_rows(g0, g1, oh):  # out is (F, rows x OW): y is per image
                    xp.add(chunk_out[:, c0 * ow:(c0 + r1 - r0) * ow].reshape(f, r1 - r0, ow), bias[:, None, None],
                           out=y[img, :, r0:r1])

        self._run_lanes(xp, lane, lanes, 2 * f * k * n * oh * ow)

    def _backward_im2col(self, dy):
        xp = get_array_module(dy)
        n, f, oh, ow = dy.shape
        w2 = self.params["weight"].reshape(f, -1).astype(dy.dtype, copy=False)
        k, item, lanes = w2.shape[1], dy.dtype.itemsize, self._lanes(xp)
        step, chunks = self._chunks(n * oh, lanes * (k + f) * ow * item, ow, im2col_ops.row_granule(xp, oh))
        buffers = self._lane_buffers(xp, dy.dtype, lanes, (k, step * ow), (f, step * ow), (f, k))
        dws = None if self.frozen else [xp.zeros((f, k), dtype=dy.dtype) for _ in range(lanes)]
        dx = xp.zeros(self.x_shape, dtype=dy.dtype) if self.needs_input_grad else None

        def lane(index, threaded):           # each lane sums its chunks' dW2 on its own
            cols, dy2, part = buffers[index]
            for g0, g1 in chunks[index::lanes]:
                chunk_cols, chunk_dy = _first_columns(cols, (g1 - g0) * ow), _first_columns(dy2, (g1 - g0) * ow)
                for img, r0, r1, c0 in _image_rows(g0, g1, oh):  # dY (F, rows x OW) of the chunk
                    chunk_dy[:, c0 * ow:(c0 + r1 - r0) * ow].reshape(f, r1 - r0, ow)[...] = dy[img, :, r0:r1]
                with _gemm_threads(threaded, 2 * f * k * chunk_cols.shape[1], xp):
                    if dws is not None:                          # dW2 += dY @ cols^T, cols recomputed
                        im2col(self.x, *self._geometry(), out=chunk_cols, rows=(g0, g1))
                        dws[index] += xp.matmul(chunk_dy, chunk_cols.T, out=part)
                    if dx is not None:                           # dcols = W2^T @ dY, in cols' place
                        xp.matmul(w2.T, chunk_dy, out=chunk_cols)
                        col2im(chunk_cols, self.x_shape, *self._geometry(), out=dx, rows=(g0, g1))

        # Neighbouring chunks add into the same rows of dx: with dx, the lanes run one after the other.
        self._run_lanes(xp, lane, lanes, None if dx is not None else 2 * f * k * n * oh * ow)
        return (None if dws is None else sum(dws[1:], dws[0])), dx

    # ---- Winograd: M = U V per tile position, the adjoints in reverse (see minidet.ops.winograd) ----

    @staticmethod
    def _products(xp, a, b, out, accumulate=False):
        """out[k] = a[k] @ b[k] (accumulate: out[k] += ...), the a*a GEMMs of one chunk
        (minidet.threads.batched_matmul on the CPU)."""
        if xp is np:
            batched_matmul(a, b, out, accumulate)
        elif accumulate:
            out += xp.matmul(a, b)
        else:
            xp.matmul(a, b, out=out)

    def _winograd_chunks(self, xp, m, dtype):
        """(a*a, TW, rows per chunk, [(g0, g1)]) of tile rows, for the input of the last forward."""
        n, c, h, w = self.x_shape
        a2, th, tw = (m + 2) ** 2, winograd.tiles(h, m), winograd.tiles(w, m)
        row_bytes = a2 * (c + self.out_channels) * tw * np.dtype(dtype).itemsize   # V and M (or Z) of a row
        return (a2, tw) + self._chunks(n * th, row_bytes, tw, winograd.row_granule(xp, th))

    def _forward_winograd(self, x, weight, bias, y, m):
        xp = get_array_module(x)
        c, f = self.in_channels, self.out_channels
        a2, tw, step, chunks = self._winograd_chunks(xp, m, x.dtype)
        u, v, mm = self.workspace.arrays(xp, x.dtype, (a2, f, c), (a2, c, step * tw), (a2, f, step * tw))
        winograd.filter_transform(weight, m, out=u)
        for g0, g1 in chunks:
            tiles_v, product = _first_columns(v, (g1 - g0) * tw), _first_columns(mm, (g1 - g0) * tw)
            winograd.input_transform(x, m, (g0, g1), out=tiles_v)
            self._products(xp, u, tiles_v, product)                         # M[k] = U[k] V[k]
            winograd.output_transform(product, bias, m, y, (g0, g1))

    def _backward_winograd(self, dy):
        xp = get_array_module(dy)
        m = int(self.used[-1])
        c, f = self.in_channels, self.out_channels
        a2, tw, step, chunks = self._winograd_chunks(xp, m, dy.dtype)
        # U, V (then dV), Z, dU
        u, v, z, du = self.workspace.arrays(xp, dy.dtype, (a2, f, c), (a2, c, step * tw), (a2, f, step * tw),
                                            (a2, f, c))
        dx = xp.zeros(self.x_shape, dtype=dy.dtype) if self.needs_input_grad else None
        if dx is not None:                   # dV needs U again: recomputed (cheaper than keeping it)
            winograd.filter_transform(self.params["weight"].astype(dy.dtype, copy=False), m, out=u)
        for index, (g0, g1) in enumerate(chunks):
            width = (g1 - g0) * tw
            tiles_v, tiles_z = _first_columns(v, width), _first_columns(z, width)
            winograd.output_transform_adjoint(dy, m, (g0, g1), out=tiles_z)
            if not self.frozen:                                  # dU += Z V^T, V recomputed
                winograd.input_transform(self.x, m, (g0, g1), out=tiles_v)
                self._products(xp, tiles_z, tiles_v.transpose(0, 2, 1), du, accumulate=index > 0)
            if dx is not None:                                   # dV = U^T Z, in V's place
                self._products(xp, u.transpose(0, 2, 1), tiles_z, tiles_v)
                winograd.input_transform_adjoint(tiles_v, m, dx, (g0, g1))
        dw = None if self.frozen else winograd.filter_transform_adjoint(du, m)
        return dw, dx


def _gemm_threads(threaded, flops, xp):
    """numpy's BLAS threads for one GEMM of a lane: already one each when lanes run on threads,
    else as minidet.threads.blas_threads decides by size."""
    return contextlib.nullcontext() if threaded else blas_threads(flops, xp)


def _first_columns(buffer, width):
    """The first `width` entries of the last axis of a workspace buffer (..., step), as a
    C-contiguous (..., width) array over the same memory (not a strided slice of it)."""
    shape = buffer.shape[:-1] + (width,)
    return buffer.reshape(-1)[:int(np.prod(shape))].reshape(shape)


def _image_rows(g0, g1, rows_per_image):
    """(image, first row, end row, offset of the first row in the chunk) of global rows [g0, g1)."""
    for img in range(g0 // rows_per_image, -(-g1 // rows_per_image)):
        r0 = max(g0 - img * rows_per_image, 0)
        r1 = min(g1 - img * rows_per_image, rows_per_image)
        yield img, r0, r1, img * rows_per_image + r0 - g0
