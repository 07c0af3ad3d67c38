"""Winograd's minimal filtering: a 3x3, stride 1, pad 1 convolution as a*a matrix products.

Lavin & Gray (2016), "Fast Algorithms for Convolutional Neural Networks". F(m x m, 3 x 3) computes an
m x m tile of outputs from an a x a tile d of the padded input (a = m + 2) with a*a multiplications
where the direct form needs 9 m*m:

    Y = A^T [ (G g G^T) * (B^T d B) ] A          g: a 3x3 filter, *: elementwise

F(2x2, 3x3), a = 4, 2.25x fewer multiplications:

    B^T = [1  0 -1  0]      G = [ 1    0    0 ]      A^T = [1  1  1  0]
          [0  1  1  0]          [1/2  1/2  1/2]            [0  1 -1 -1]
          [0 -1  1  0]          [1/2 -1/2  1/2]
          [0  1  0 -1]          [ 0    0    1 ]

F(4x4, 3x3), a = 6, 4x fewer:

    B^T = [4  0 -5  0  1  0]    G = [ 1/4     0     0  ]    A^T = [1  1  1  1  1  0]
          [0 -4 -4  1  1  0]        [-1/6  -1/6  -1/6 ]          [0  1 -1  2 -2  0]
          [0  4 -4 -1  1  0]        [-1/6   1/6  -1/6 ]          [0  1  1  4  4  0]
          [0 -2 -1  2  1  0]        [1/24  1/12   1/6 ]          [0  1 -1  8 -8  1]
          [0  2 -1 -2  1  0]        [1/24 -1/12   1/6 ]
          [0  4  0 -5  0  1]        [  0     0     1  ]

A layer: x (N, C, H, W), filters w (F, C, 3, 3), bias b (F,), y (N, F, H, W). With TH = ceil(H / m),
TW = ceil(W / m), tile row g = n TH + th and tile t = g TW + tw, tile t reads the input pixels
d[i, j] = x[n, c, m th + i - 1, m tw + j - 1] (zero outside x: the padding) and writes y rows
m th .. m th + m - 1, columns m tw .. m tw + m - 1 (those inside y):

    U[i a + j, f, c] = (G w[f, c] G^T)[i, j]           (a*a, F, C)   filter transform
    V[i a + j, c, t] = (B^T d[n, c, th, tw] B)[i, j]    (a*a, C, T)   input transform
    M[k] = U[k] @ V[k]                                  (a*a, F, T)   the a*a GEMMs: all multiplications
    y[n, f, tile t] = A^T M[:, f, t] A + b[f]                          output transform

The backward runs each step's adjoint in reverse, with dY the m x m tiles of dy (zero beyond its edges):

    Z[:, f, t] = A dY[n, f, tile t] A^T                 (a*a, F, T)   output transform adjoint
    dV[k] = U[k]^T @ Z[k]                               (a*a, C, T)
    dx[n, c, tile t's pixels] += B dV[:, c, t] B^T                     input transform adjoint (tiles overlap)
    dU[k] = Z[k] @ V[k]^T                               (a*a, F, C)
    dw[f, c] = G^T dU[:, f, c] G,   db[f] = sum of dy[:, f]            filter transform adjoint

Every function takes `rows` = (g0, g1), a range of tile rows, so that a caller can run a large layer
in chunks; V, M and Z then hold the tiles t - g0 TW of those rows, (a*a, ., (g1 - g0) TW).

NumPy arrays go to the Cython kernels of minidet/_ext/winograd.pyx (float32 and float64); other array
modules (CuPy) to the `*_reference` functions, plain array code that is also the reference the tests
compare the kernels with.
"""
import numpy as np

from minidet._ext import winograd as _cpu
from minidet.backend import get_array_module
from minidet.threads import parts_for, share_out

TILE_SIZES = (2, 4)
# Output elements from which a transform is shared out between minidet.threads' Python threads (the
# ones of the layer's GEMMs): about 1.5 ms of one core; below, a second thread gains less than it
# costs to wake (docs/PERFORMANCE.md, "Threads").
PARALLEL_MIN_SIZE = 1 << 20

_MATRICES = {  # m: (B^T, G, A^T), exact in float64 but for G's sixths and twenty-fourths
    2: ([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]]),
    4: ([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
         [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
         [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]),
}


def matrices(m, dtype=np.float64):
    """(B^T (a, a), G (a, 3), A^T (m, a)) of F(m x m, 3 x 3) as C-contiguous arrays of dtype."""
    if m not in _MATRICES:
        raise ValueError(f"Winograd tile size must be one of {TILE_SIZES}, got {m!r}")
    return tuple(np.ascontiguousarray(np.array(mat, dtype=np.float64).astype(dtype)) for mat in _MATRICES[m])


def tiles(size, m):
    """ceil(size / m): the tiles along one axis."""
    return -(-int(size) // m)


def row_granule(xp, tile_rows_per_image):
    """The tile rows a chunk should be a multiple of: any for the Cython kernels, whole images for
    the reference (which transforms whole images and would waste the rest)."""
    return 1 if xp is np else int(tile_rows_per_image)


def _rows(rows, total):
    g0, g1 = (0, total) if rows is None else (int(rows[0]), int(rows[1]))
    if not 0 <= g0 < g1 <= total:
        raise ValueError(f"rows must be a range of tile rows inside [0, {total}), got {rows!r}")
    return g0, g1


def _out(xp, out, shape, dtype, what):
    if out is None:
        return xp.empty(shape, dtype=dtype)
    if tuple(out.shape) != tuple(shape) or out.dtype != dtype or not out.flags.c_contiguous:
        raise ValueError(f"{what} must be a C-contiguous {tuple(shape)} {np.dtype(dtype)} array")
    return out


def _check(a, ndim, what):
    if a.dtype not in (np.float32, np.float64):
        raise TypeError(f"Winograd transforms take float32 or float64 arrays, got {a.dtype} for {what}")
    if a.ndim != ndim:
        raise ValueError(f"{what} must have {ndim} dimensions, got shape {a.shape}")


# ---- the transforms ---------------------------------------------------------------------------

def filter_transform(weight, m, out=None):
    """U (a*a, F, C) of weight (F, C, 3, 3)."""
    xp = get_array_module(weight)
    _check(weight, 4, "weight")
    f, c = weight.shape[:2]
    if weight.shape[2:] != (3, 3):
        raise ValueError(f"Winograd F(m x m, 3 x 3) takes 3x3 filters, got shape {weight.shape}")
    a = m + 2
    out = _out(xp, out, (a * a, f, c), weight.dtype, "out")
    if xp is not np:
        out[...] = filter_transform_reference(weight, m)
        return out
    g, w = matrices(m, weight.dtype)[1], np.ascontiguousarray(weight).reshape(f, c, 9)
    _shared(lambda part, parts: _cpu.filter_transform(w, g, out, False, part, parts), out.size)
    return out


def filter_transform_adjoint(du, m, out=None):
    """dw (F, C, 3, 3) of dU (a*a, F, C)."""
    xp = get_array_module(du)
    _check(du, 3, "dU")
    out = _out(xp, out, (du.shape[1], du.shape[2], 3, 3), du.dtype, "out")
    if xp is not np:
        out[...] = filter_transform_adjoint_reference(du, m)
        return out
    g, du, dw = matrices(m, du.dtype)[1], np.ascontiguousarray(du), out.reshape(du.shape[1], du.shape[2], 9)
    _shared(lambda part, parts: _cpu.filter_transform(du, g, dw, True, part, parts), du.size)
    return out


def input_transform(x, m, rows=None, out=None):
    """V (a*a, C, (g1 - g0) TW) of x (N, C, H, W), tile rows rows = (g0, g1) (default: all)."""
    return _image_to_tiles(x, m, rows, out, "x", False)


def output_transform(mm, bias, m, out, rows=None):
    """Write y = A^T M A + bias into the tile rows rows = (g0, g1) of out (N, F, H, W); returns out."""
    return _tiles_to_image(mm, m, out, rows, "M", "out", bias)


def output_transform_adjoint(dy, m, rows=None, out=None):
    """Z (a*a, F, (g1 - g0) TW) of dy (N, F, H, W), tile rows rows = (g0, g1) (default: all)."""
    return _image_to_tiles(dy, m, rows, out, "dy", True)


def input_transform_adjoint(dv, m, dx, rows=None):
    """Add the adjoint of the input transform of dV (a*a, C, (g1 - g0) TW) into dx (N, C, H, W); returns dx."""
    return _tiles_to_image(dv, m, dx, rows, "dV", "dx", None)


def _image_to_tiles(x, m, rows, out, what, output_adjoint):
    """(a*a, K, (g1 - g0) TW) of x (N, K, H, W): the input transform (B^T d B), or the output
    transform's adjoint (A dY A^T)."""
    xp = get_array_module(x)
    _check(x, 4, what)
    n, k, h, w = x.shape
    g0, g1 = _rows(rows, n * tiles(h, m))
    a = m + 2
    out = _out(xp, out, (a * a, k, (g1 - g0) * tiles(w, m)), x.dtype, "out")
    if xp is not np:
        reference = output_transform_adjoint_reference if output_adjoint else input_transform_reference
        out[...] = reference(x, m, (g0, g1))
        return out
    bt, _, at = matrices(m, x.dtype)
    mat = np.ascontiguousarray(at.T) if output_adjoint else bt
    x = np.ascontiguousarray(x)
    _shared(lambda part, parts: _cpu.to_tiles(x, mat, g0, out, output_adjoint, part, parts), out.size)
    return out


def _tiles_to_image(t, m, image, rows, what, image_what, bias):
    """Write (a*a, K, (g1 - g0) TW) tiles t into the tile rows (g0, g1) of image (N, K, H, W): the
    output transform, A^T M A + bias; or with bias None add them: the input transform's adjoint, B dV B^T."""
    xp = get_array_module(t)
    _check(t, 3, what)
    n, k, h, w = image.shape
    g0, g1 = _rows(rows, n * tiles(h, m))
    a = m + 2
    if t.shape != (a * a, k, (g1 - g0) * tiles(w, m)):
        raise ValueError(f"{what} must be {(a * a, k, (g1 - g0) * tiles(w, m))} for {image.shape}, got {t.shape}")
    _out(xp, image, image.shape, t.dtype, image_what)
    input_adjoint = bias is None
    if xp is not np:
        if input_adjoint:
            _add_tile_rows(image, input_transform_adjoint_reference(t, m, image.shape, (g0, g1)), m, (g0, g1))
        else:
            tiles_y = output_transform_reference(t, bias.astype(t.dtype, copy=False), m, image.shape, (g0, g1))
            _write_tile_rows(image, tiles_y, m, (g0, g1))
        return image
    bt, _, at = matrices(m, t.dtype)
    mat = np.ascontiguousarray(bt.T) if input_adjoint else at
    bias = np.zeros(k, t.dtype) if input_adjoint else np.ascontiguousarray(bias, dtype=t.dtype)
    t = np.ascontiguousarray(t)
    _shared(lambda part, parts: _cpu.from_tiles(t, mat, bias, g0, image, input_adjoint, part, parts), t.size)
    return image


def _shared(kernel, size):
    """kernel(part, parts) over minidet.threads' Python threads if size reaches PARALLEL_MIN_SIZE."""
    share_out(kernel, parts_for(size, PARALLEL_MIN_SIZE))


# ---- plain array references (NumPy or CuPy) ---------------------------------------------------

def _images(rows, th):
    """The images [n0, n1) that tile rows [g0, g1) touch."""
    return rows[0] // th, -(-rows[1] // th)


def _grid(shape, m, rows):
    """(TH, TW, a, (g0, g1), n0, n1) of an (N, K, H, W) array cut into m x m tiles, for tile rows `rows`."""
    n, _, h, w = shape
    th = tiles(h, m)
    rows = _rows(rows, n * th)
    return (th, tiles(w, m), m + 2, rows) + _images(rows, th)


def _unselect_rows(part, rows, th, tw, n0, n1):
    """(a*a, K, (n1 - n0) TH, TW), zero but for the tile rows `rows` taken from part (a*a, K, (g1 - g0) TW):
    the adjoint of _select_rows."""
    xp = get_array_module(part)
    full = xp.zeros((part.shape[0], part.shape[1], (n1 - n0) * th, tw), dtype=part.dtype)
    full[:, :, rows[0] - n0 * th:rows[1] - n0 * th] = part.reshape(part.shape[0], part.shape[1], -1, tw)
    return full


def _select_rows(full, rows, th, n0):
    """(a*a, K, (g1 - g0) TW) of full (a*a, K, (n1 - n0) TH, TW), tile rows counted from image n0."""
    k2, k, _, tw = full.shape
    part = full[:, :, rows[0] - n0 * th:rows[1] - n0 * th]
    return get_array_module(full).ascontiguousarray(part).reshape(k2, k, -1)


def filter_transform_reference(weight, m):
    """U = G w G^T for every (f, c), as (a*a, F, C)."""
    xp = get_array_module(weight)
    g = xp.asarray(matrices(m, weight.dtype)[1])
    u = g @ weight @ g.T                                         # (F, C, a, a)
    return xp.ascontiguousarray(u.reshape(u.shape[0], u.shape[1], -1).transpose(2, 0, 1))


def filter_transform_adjoint_reference(du, m):
    """dw = G^T dU G for every (f, c), as (F, C, 3, 3)."""
    xp = get_array_module(du)
    a = m + 2
    g = xp.asarray(matrices(m, du.dtype)[1])
    return g.T @ du.transpose(1, 2, 0).reshape(du.shape[1], du.shape[2], a, a) @ g


def input_transform_reference(x, m, rows=None):
    """V of the tile rows `rows`: every a x a tile of the padded input, B^T d B."""
    xp = get_array_module(x)
    c, h, w = x.shape[1:]
    th, tw, a, rows, n0, n1 = _grid(x.shape, m, rows)
    xpad = xp.zeros((n1 - n0, c, m * th + 2, m * tw + 2), dtype=x.dtype)
    xpad[:, :, 1:h + 1, 1:w + 1] = x[n0:n1]
    d = xp.empty((n1 - n0, c, th, tw, a, a), dtype=x.dtype)
    for i in range(a):
        for j in range(a):
            d[..., i, j] = xpad[:, :, i:i + m * th:m, j:j + m * tw:m]
    bt = xp.asarray(matrices(m, x.dtype)[0])
    v = (bt @ d @ bt.T).reshape(n1 - n0, c, th, tw, a * a).transpose(4, 1, 0, 2, 3)
    return _select_rows(v.reshape(a * a, c, (n1 - n0) * th, tw), rows, th, n0)


def output_transform_reference(mm, bias, m, y_shape, rows=None):
    """The output tiles A^T M A + b of tile rows `rows`, as (n1 - n0, F, m TH, m TW) (uncropped,
    zero outside those rows)."""
    xp = get_array_module(mm)
    f = y_shape[1]
    th, tw, a, rows, n0, n1 = _grid(y_shape, m, rows)
    full = _unselect_rows(mm, rows, th, tw, n0, n1)
    at = xp.asarray(matrices(m, mm.dtype)[2])
    t = full.reshape(a, a, f, n1 - n0, th, tw).transpose(3, 2, 4, 5, 0, 1)   # (n, F, TH, TW, a, a)
    y = at @ t @ at.T + bias.reshape(1, f, 1, 1, 1, 1)                   # (n, F, TH, TW, m, m)
    return y.transpose(0, 1, 2, 4, 3, 5).reshape(n1 - n0, f, m * th, m * tw)


def output_transform_adjoint_reference(dy, m, rows=None):
    """Z of the tile rows `rows`: A dY A^T of every m x m tile of dy (zero beyond its edges)."""
    xp = get_array_module(dy)
    f, h, w = dy.shape[1:]
    th, tw, a, rows, n0, n1 = _grid(dy.shape, m, rows)
    dypad = xp.zeros((n1 - n0, f, m * th, m * tw), dtype=dy.dtype)
    dypad[:, :, :h, :w] = dy[n0:n1]
    tiles_dy = dypad.reshape(n1 - n0, f, th, m, tw, m).transpose(0, 1, 2, 4, 3, 5)
    a_mat = xp.asarray(matrices(m, dy.dtype)[2]).T
    z = (a_mat @ tiles_dy @ a_mat.T).reshape(n1 - n0, f, th, tw, a * a).transpose(4, 1, 0, 2, 3)
    return _select_rows(z.reshape(a * a, f, (n1 - n0) * th, tw), rows, th, n0)


def input_transform_adjoint_reference(dv, m, x_shape, rows=None):
    """The adjoint of input_transform_reference applied to dV of tile rows `rows`: each tile's
    B dV B^T added onto the pixels it was read from, as (n1 - n0, C, H, W)."""
    xp = get_array_module(dv)
    c, h, w = x_shape[1:]
    th, tw, a, rows, n0, n1 = _grid(x_shape, m, rows)
    full = _unselect_rows(dv, rows, th, tw, n0, n1)
    b_mat = xp.asarray(matrices(m, dv.dtype)[0]).T
    t = full.reshape(a, a, c, n1 - n0, th, tw).transpose(3, 2, 4, 5, 0, 1)   # (n, C, TH, TW, a, a)
    d = b_mat @ t @ b_mat.T
    dxpad = xp.zeros((n1 - n0, c, m * th + 2, m * tw + 2), dtype=dv.dtype)
    for i in range(a):
        for j in range(a):
            dxpad[:, :, i:i + m * th:m, j:j + m * tw:m] += d[..., i, j]
    return dxpad[:, :, 1:h + 1, 1:w + 1]


def _write_tile_rows(y, tiles_y, m, rows):
    """y rows of tile rows `rows` from the (n1 - n0, F, m TH, m TW) tiles of output_transform_reference."""
    n, f, h, w = y.shape
    th = tiles(h, m)
    n0, n1 = _images(rows, th)
    for img in range(n0, n1):
        lo = max(rows[0] - img * th, 0) * m
        hi = min(min(rows[1] - img * th, th) * m, h)
        y[img, :, lo:hi] = tiles_y[img - n0, :, lo:hi, :w]


def _add_tile_rows(dx, part, m, rows):
    """dx[n0:n1] += part, the (n1 - n0, C, H, W) result of input_transform_adjoint_reference."""
    th = tiles(dx.shape[2], m)
    n0, n1 = _images(rows, th)
    dx[n0:n1] += part


def winograd_flops(n, c, f, h, w, m):
    """Multiply-adds x 2 of the a*a GEMMs of one pass (the transforms not counted)."""
    return 2 * (m + 2) ** 2 * f * c * n * tiles(h, m) * tiles(w, m)


def direct_flops(n, c, f, h, w):
    """Multiply-adds x 2 of the direct 3x3 convolution, for comparison."""
    return 2 * 9 * f * c * n * h * w

