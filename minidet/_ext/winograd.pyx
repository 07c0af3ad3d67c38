"""Winograd F(2x2, 3x3) and F(4x4, 3x3) transforms on the CPU.

The mathematics, the matrices B^T, G, A^T and the layouts V (a*a, C, T), M and Z (a*a, F, T),
U (a*a, F, C) are in minidet/ops/winograd.py, beside a plain NumPy reference of every kernel here.
The matrices come from there as arguments, so both tile sizes share one kernel.

A call covers the tile rows g = n * TH + th in [g0, g0 + G). One task is one strip: a tile row of
one channel (or filter). A strip is copied into a small per-thread scratch with its padding and its
columns de-interleaved by phase (scratch[i, p, q] = xpad row i, column m * q + p), so that every
1-D pass of a transform is `dst[t] = sum_j coef[j] * src_j[t]` over contiguous rows, tiles
innermost, which the compiler vectorises; zero coefficients are skipped.

All kernels release the GIL and run on the calling thread unless parallel=True (minidet/ops/winograd.py
decides by size, as for im2col). Parallel tasks write disjoint outputs: the forward transforms own
their strip's outputs; the input transform's adjoint adds overlapping tiles into dx, so a task there
is a whole channel (all its tile rows in order) and no two threads add into the same plane.
"""
from cython.parallel cimport parallel, prange
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

ctypedef fused real:
    float
    double

cdef enum:
    MAX_TILE = 6        # a = m + 2 for the largest tile size, F(4x4, 3x3)
    BLOCK_TILES = 256   # tiles per task: rows long enough to amortise each pass's loop


cdef extern from *:
    """
    /* The passes of every transform are this one loop; on x86-64 Linux it is compiled for AVX-512,
       AVX2 and the baseline, and the loader picks the widest the CPU has (the build itself targets
       the baseline). */
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
    #define MINIDET_WIDEST __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
    #else
    #define MINIDET_WIDEST
    #endif
    #define MINIDET_COMBINE(T)                                                                   \
    MINIDET_WIDEST static void combine_##T(const T* coef, Py_ssize_t count, const T** src,       \
                                           T* restrict dst, Py_ssize_t length, int add) {        \
        int first = !add;                                                                        \
        for (Py_ssize_t j = 0; j < count; j++) {                                                 \
            const T c = coef[j];                                                                 \
            const T* restrict s = src[j];                                                        \
            if (c == 0) continue;                                                                \
            if (first) { for (Py_ssize_t t = 0; t < length; t++) dst[t] = c * s[t]; first = 0; } \
            else { for (Py_ssize_t t = 0; t < length; t++) dst[t] += c * s[t]; }                 \
        }                                                                                        \
        if (first) for (Py_ssize_t t = 0; t < length; t++) dst[t] = 0;                          \
    }
    MINIDET_COMBINE(float)
    MINIDET_COMBINE(double)
    """
    void combine_float(const float* coef, Py_ssize_t count, const float** src, float* dst,
                       Py_ssize_t length, bint add) noexcept nogil
    void combine_double(const double* coef, Py_ssize_t count, const double** src, double* dst,
                        Py_ssize_t length, bint add) noexcept nogil


cdef inline void combine(const real* coef, Py_ssize_t count, const real** src, real* dst,
                         Py_ssize_t length, bint add) noexcept nogil:
    """dst[t] (+)= sum_j coef[j] * src[j][t] for t < length; zero coefficients cost nothing."""
    if real is float:
        combine_float(coef, count, src, dst, length, add)
    else:
        combine_double(coef, count, src, dst, length, add)


cdef inline void split_phases(const real* row, Py_ssize_t width, Py_ssize_t m, Py_ssize_t shift,
                              real* dst, Py_ssize_t plane, Py_ssize_t q_len) noexcept nogil:
    """dst[p * plane + q] = row[m * q + p - shift] for q < q_len (zero outside [0, width))."""
    cdef Py_ssize_t p, q, w
    for p in range(m):
        for q in range(q_len):
            w = m * q + p - shift
            dst[p * plane + q] = row[w] if 0 <= w < width else 0


cdef inline Py_ssize_t block_rows(Py_ssize_t tw, Py_ssize_t left) noexcept nogil:
    """Tile rows per block: about BLOCK_TILES tiles, at least one row, at most `left`."""
    cdef Py_ssize_t rows = BLOCK_TILES // tw
    if rows < 1:
        rows = 1
    return rows if rows < left else left


cdef void input_block(const real[:, :, :, ::1] x, const real[:, ::1] bt, Py_ssize_t c, Py_ssize_t g,
                      Py_ssize_t nb, Py_ssize_t col0, real[:, :, ::1] v, real* scratch) noexcept nogil:
    """V[:, c, col0 : col0 + nb TW] = B^T d B of the tiles of tile rows g .. g + nb - 1."""
    cdef Py_ssize_t a = bt.shape[0], m = a - 2, H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t TW = (W + m - 1) // m, TH = (H + m - 1) // m, Q = TW + 1
    cdef Py_ssize_t P = nb * Q, L = nb * TW, b, n, th, i, j, k, row
    cdef real* rows = scratch            # (a, m, nb, Q): padded input rows of each tile row, by phase
    cdef real* down = rows + a * m * P   # (a, m, nb, Q): B^T applied down the tiles' columns
    cdef real* cols = down + a * m * P   # (a, nb * TW): column j of every tile, for one k
    cdef const real* src[MAX_TILE]
    for b in range(nb):
        n, th = (g + b) // TH, (g + b) % TH
        for i in range(a):
            row = m * th + i - 1
            if 0 <= row < H:
                split_phases(&x[n, c, row, 0], W, m, 1, rows + i * m * P + b * Q, P, Q)
            else:
                for j in range(m):
                    memset(rows + i * m * P + j * P + b * Q, 0, Q * sizeof(real))
    for i in range(a):
        src[i] = rows + i * m * P
    for k in range(a):
        combine(&bt[k, 0], a, src, down + k * m * P, m * P, False)
    for k in range(a):
        for j in range(a):               # column j of tile tw is phase j % m, index tw + j // m
            for b in range(nb):
                memcpy(cols + j * L + b * TW, down + k * m * P + (j % m) * P + b * Q + j // m,
                       TW * sizeof(real))
            src[j] = cols + j * L
        for i in range(a):
            combine(&bt[i, 0], a, src, &v[k * a + i, c, col0], L, False)


cdef void output_block(const real[:, :, ::1] mm, const real[:, ::1] at, real bias, Py_ssize_t f,
                       Py_ssize_t g, Py_ssize_t nb, Py_ssize_t col0, real[:, :, :, ::1] y,
                       real* scratch) noexcept nogil:
    """y[n, f] of tile rows g .. g + nb - 1 = A^T M A + bias, cropped to y."""
    cdef Py_ssize_t m = at.shape[0], a = at.shape[1], H = y.shape[2], W = y.shape[3]
    cdef Py_ssize_t TW = (W + m - 1) // m, TH = (H + m - 1) // m, L = nb * TW
    cdef Py_ssize_t b, n, th, i, j, r, s, q, q_end, row
    cdef real* down = scratch            # (m, a, L): A^T applied down the tiles' columns
    cdef real* phase = down + m * a * L  # (m, m, L): output (r, s) of every tile
    cdef real* out
    cdef const real* part
    cdef const real* src[MAX_TILE]
    for j in range(a):
        for i in range(a):
            src[i] = &mm[i * a + j, f, col0]
        for r in range(m):
            combine(&at[r, 0], a, src, down + (r * a + j) * L, L, False)
    for r in range(m):
        for j in range(a):
            src[j] = down + (r * a + j) * L
        for s in range(m):
            combine(&at[s, 0], a, src, phase + (r * m + s) * L, L, False)
    for b in range(nb):
        n, th = (g + b) // TH, (g + b) % TH
        for r in range(m):
            row = m * th + r
            if row >= H:
                break
            out = &y[n, f, row, 0]
            for s in range(m):
                part = phase + (r * m + s) * L + b * TW
                q_end = (W - s + m - 1) // m
                for q in range(q_end):
                    out[m * q + s] = part[q] + bias


cdef void output_adjoint_block(const real[:, :, :, ::1] dy, const real[:, ::1] a_mat, Py_ssize_t f,
                               Py_ssize_t g, Py_ssize_t nb, Py_ssize_t col0, real[:, :, ::1] z,
                               real* scratch) noexcept nogil:
    """Z[:, f, col0 : col0 + nb TW] = A dY A^T of the tiles of tile rows g .. g + nb - 1."""
    cdef Py_ssize_t a = a_mat.shape[0], m = a_mat.shape[1], H = dy.shape[2], W = dy.shape[3]
    cdef Py_ssize_t TW = (W + m - 1) // m, TH = (H + m - 1) // m, L = nb * TW
    cdef Py_ssize_t b, n, th, i, j, r, row
    cdef real* rows = scratch            # (m, m, L): dy rows of each tile row, by phase
    cdef real* across = rows + m * m * L # (m, a, L): A applied across each tile
    cdef const real* src[MAX_TILE]
    for b in range(nb):
        n, th = (g + b) // TH, (g + b) % TH
        for r in range(m):
            row = m * th + r
            if row < H:
                split_phases(&dy[n, f, row, 0], W, m, 0, rows + r * m * L + b * TW, L, TW)
            else:
                for j in range(m):
                    memset(rows + (r * m + j) * L + b * TW, 0, TW * sizeof(real))
    for r in range(m):
        for i in range(m):
            src[i] = rows + (r * m + i) * L
        for j in range(a):
            combine(&a_mat[j, 0], m, src, across + (r * a + j) * L, L, False)
    for j in range(a):
        for r in range(m):
            src[r] = across + (r * a + j) * L
        for i in range(a):
            combine(&a_mat[i, 0], m, src, &z[i * a + j, f, col0], L, False)


cdef void input_adjoint_block(const real[:, :, ::1] dv, const real[:, ::1] b_mat, Py_ssize_t c,
                              Py_ssize_t g, Py_ssize_t nb, Py_ssize_t col0, real[:, :, :, ::1] dx,
                              real* scratch) noexcept nogil:
    """dx[n, c] += B dV B^T of every tile of tile rows g .. g + nb - 1, at its input pixels."""
    cdef Py_ssize_t a = b_mat.shape[0], m = a - 2, H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t TW = (W + m - 1) // m, TH = (H + m - 1) // m, Q = TW + 1
    cdef Py_ssize_t P = nb * Q, L = nb * TW, b, n, th, i, j, k, p, q, w, row
    cdef real* cols = scratch            # (a, L): B applied across the tiles, column j, for one k
    cdef real* across = cols + a * L     # (a, m, nb, Q): the same, added into padded columns by phase
    cdef real* rows = across + a * m * P # (a, m, nb, Q): then down: padded input rows
    cdef real* out
    cdef real* dst
    cdef const real* part
    cdef const real* src[MAX_TILE]
    memset(across, 0, a * m * P * sizeof(real))
    for k in range(a):
        for i in range(a):
            src[i] = &dv[k * a + i, c, col0]
        for j in range(a):               # column j of tile tw lands on phase j % m, index tw + j // m
            combine(&b_mat[j, 0], a, src, cols + j * L, L, False)
            for b in range(nb):
                dst = across + k * m * P + (j % m) * P + b * Q + j // m
                part = cols + j * L + b * TW
                for q in range(TW):
                    dst[q] += part[q]
    for k in range(a):
        src[k] = across + k * m * P
    for i in range(a):
        combine(&b_mat[i, 0], a, src, rows + i * m * P, m * P, False)
    for b in range(nb):
        n, th = (g + b) // TH, (g + b) % TH
        for i in range(a):
            row = m * th + i - 1
            if row < 0 or row >= H:
                continue
            out = &dx[n, c, row, 0]
            for p in range(m):
                part = rows + i * m * P + p * P + b * Q
                for q in range(Q):
                    w = m * q + p - 1
                    if 0 <= w < W:
                        out[w] += part[q]


def input_transform(const real[:, :, :, ::1] x, const real[:, ::1] bt, Py_ssize_t g0,
                    real[:, :, ::1] v, bint parallel=False):
    """V (a*a, C, G*TW) of the tile rows [g0, g0 + G) of x (N, C, H, W); bt = B^T (a, a)."""
    cdef Py_ssize_t a = bt.shape[0], m = a - 2, C = x.shape[1], W = x.shape[3]
    cdef Py_ssize_t TW = (W + m - 1) // m, G = v.shape[2] // TW, NB, rows_per, task, c, b, nb
    cdef real* scratch = NULL
    if v.shape[0] != a * a or v.shape[1] != C or v.shape[2] != G * TW:
        raise ValueError(f"V must be ({a * a}, {C}, G * {TW}), got {tuple(v.shape)[:3]}")
    rows_per = block_rows(TW, G)
    NB = (G + rows_per - 1) // rows_per
    with nogil, parallel(use_threads_if=parallel):
        scratch = <real*> malloc((2 * a * m * rows_per * (TW + 1) + a * rows_per * TW) * sizeof(real))
        for task in prange(C * NB, schedule="dynamic"):
            c = task // NB
            b = (task % NB) * rows_per
            nb = rows_per if b + rows_per <= G else G - b
            input_block(x, bt, c, g0 + b, nb, b * TW, v, scratch)
        free(scratch)


def output_transform(const real[:, :, ::1] mm, const real[:, ::1] at, const real[::1] bias,
                     Py_ssize_t g0, real[:, :, :, ::1] y, bint parallel=False):
    """Write the tile rows [g0, g0 + G) of y (N, F, H, W) = A^T M A + bias; at = A^T (m, a)."""
    cdef Py_ssize_t m = at.shape[0], a = at.shape[1], F = y.shape[1], W = y.shape[3]
    cdef Py_ssize_t TW = (W + m - 1) // m, G = mm.shape[2] // TW, NB, rows_per, task, f, b, nb
    cdef real* scratch = NULL
    if mm.shape[0] != a * a or mm.shape[1] != F or mm.shape[2] != G * TW or bias.shape[0] != F:
        raise ValueError(f"M must be ({a * a}, {F}, G * {TW}) and bias ({F},), "
                         f"got {tuple(mm.shape)[:3]} and ({bias.shape[0]},)")
    rows_per = block_rows(TW, G)
    NB = (G + rows_per - 1) // rows_per
    with nogil, parallel(use_threads_if=parallel):
        scratch = <real*> malloc((m * a + m * m) * rows_per * TW * sizeof(real))
        for task in prange(F * NB, schedule="dynamic"):
            f = task // NB
            b = (task % NB) * rows_per
            nb = rows_per if b + rows_per <= G else G - b
            output_block(mm, at, bias[f], f, g0 + b, nb, b * TW, y, scratch)
        free(scratch)


def output_transform_adjoint(const real[:, :, :, ::1] dy, const real[:, ::1] a_mat, Py_ssize_t g0,
                             real[:, :, ::1] z, bint parallel=False):
    """Z (a*a, F, G*TW) = A dY A^T of the tile rows [g0, g0 + G) of dy (N, F, H, W); a_mat = A (a, m)."""
    cdef Py_ssize_t a = a_mat.shape[0], m = a_mat.shape[1], F = dy.shape[1], W = dy.shape[3]
    cdef Py_ssize_t TW = (W + m - 1) // m, G = z.shape[2] // TW, NB, rows_per, task, f, b, nb
    cdef real* scratch = NULL
    if z.shape[0] != a * a or z.shape[1] != F or z.shape[2] != G * TW:
        raise ValueError(f"Z must be ({a * a}, {F}, G * {TW}), got {tuple(z.shape)[:3]}")
    rows_per = block_rows(TW, G)
    NB = (G + rows_per - 1) // rows_per
    with nogil, parallel(use_threads_if=parallel):
        scratch = <real*> malloc((m * m + m * a) * rows_per * TW * sizeof(real))
        for task in prange(F * NB, schedule="dynamic"):
            f = task // NB
            b = (task % NB) * rows_per
            nb = rows_per if b + rows_per <= G else G - b
            output_adjoint_block(dy, a_mat, f, g0 + b, nb, b * TW, z, scratch)
        free(scratch)


def input_transform_adjoint(const real[:, :, ::1] dv, const real[:, ::1] b_mat, Py_ssize_t g0,
                            real[:, :, :, ::1] dx, bint parallel=False):
    """dx (N, C, H, W) += the adjoint of the input transform of the tile rows [g0, g0 + G); b_mat = B."""
    cdef Py_ssize_t a = b_mat.shape[0], m = a - 2, C = dx.shape[1], W = dx.shape[3]
    cdef Py_ssize_t TW = (W + m - 1) // m, G = dv.shape[2] // TW, rows_per, c, b, nb
    cdef real* scratch = NULL
    if dv.shape[0] != a * a or dv.shape[1] != C or dv.shape[2] != G * TW:
        raise ValueError(f"dV must be ({a * a}, {C}, G * {TW}), got {tuple(dv.shape)[:3]}")
    rows_per = block_rows(TW, G)
    with nogil, parallel(use_threads_if=parallel):
        scratch = <real*> malloc((a * rows_per * TW + 2 * a * m * rows_per * (TW + 1)) * sizeof(real))
        for c in prange(C, schedule="dynamic"):
            b = 0
            while b < G:             # in order: the tiles of neighbouring rows add into the same pixels
                nb = rows_per if b + rows_per <= G else G - b
                input_adjoint_block(dv, b_mat, c, g0 + b, nb, b * TW, dx, scratch)
                b = b + nb
        free(scratch)


cdef void filter_row(const real[:, :, :, ::1] w, const real[:, ::1] g_mat, Py_ssize_t f,
                     real[:, :, ::1] u, real* scratch) noexcept nogil:
    """U[:, f, :] = G w[f, c] G^T for every c, channels innermost."""
    cdef Py_ssize_t a = g_mat.shape[0], C = w.shape[1], c, i, j, k
    cdef real* taps = scratch            # (9, C): w[f, :, k // 3, k % 3]
    cdef real* down = scratch + 9 * C    # (a, 3, C): G applied down the columns
    cdef const real* src[3]
    for k in range(9):
        for c in range(C):
            taps[k * C + c] = w[f, c, k // 3, k % 3]
    for j in range(3):
        for k in range(3):
            src[k] = taps + (3 * k + j) * C
        for i in range(a):
            combine(&g_mat[i, 0], 3, src, down + (3 * i + j) * C, C, False)
    for i in range(a):
        for k in range(3):
            src[k] = down + (3 * i + k) * C
        for j in range(a):
            combine(&g_mat[j, 0], 3, src, &u[i * a + j, f, 0], C, False)


cdef void filter_adjoint_row(const real[:, :, ::1] du, const real[:, ::1] gt, Py_ssize_t f,
                             real[:, :, :, ::1] dw, real* scratch) noexcept nogil:
    """dw[f, c] = G^T dU[:, f, c] G for every c, channels innermost."""
    cdef Py_ssize_t a = gt.shape[1], C = dw.shape[1], c, i, j, k
    cdef real* across = scratch          # (a, 3, C): G^T applied across
    cdef real* taps = scratch + 3 * a * C    # (9, C)
    cdef const real* src[MAX_TILE]
    for i in range(a):
        for k in range(a):
            src[k] = &du[i * a + k, f, 0]
        for j in range(3):
            combine(&gt[j, 0], a, src, across + (3 * i + j) * C, C, False)
    for j in range(3):
        for k in range(a):
            src[k] = across + (3 * k + j) * C
        for i in range(3):
            combine(&gt[i, 0], a, src, taps + (3 * i + j) * C, C, False)
    for k in range(9):
        for c in range(C):
            dw[f, c, k // 3, k % 3] = taps[k * C + c]


def filter_transform(const real[:, :, :, ::1] w, const real[:, ::1] g_mat, real[:, :, ::1] u,
                     bint parallel=False):
    """U (a*a, F, C) = G w[f, c] G^T of w (F, C, 3, 3); g_mat = G (a, 3)."""
    cdef Py_ssize_t a = g_mat.shape[0], F = w.shape[0], C = w.shape[1], f
    cdef real* scratch
    if u.shape[0] != a * a or u.shape[1] != F or u.shape[2] != C:
        raise ValueError(f"U must be ({a * a}, {F}, {C}), got {tuple(u.shape)[:3]}")
    with nogil, parallel(use_threads_if=parallel):
        scratch = <real*> malloc((9 + 3 * a) * C * sizeof(real))
        for f in prange(F, schedule="dynamic"):
            filter_row(w, g_mat, f, u, scratch)
        free(scratch)


def filter_transform_adjoint(const real[:, :, ::1] du, const real[:, ::1] gt, real[:, :, :, ::1] dw,
                             bint parallel=False):
    """dw (F, C, 3, 3) = G^T dU[:, f, c] G of dU (a*a, F, C); gt = G^T (3, a)."""
    cdef Py_ssize_t a = gt.shape[1], F = dw.shape[0], C = dw.shape[1], f
    cdef real* scratch
    if du.shape[0] != a * a or du.shape[1] != F or du.shape[2] != C:
        raise ValueError(f"dU must be ({a * a}, {F}, {C}), got {tuple(du.shape)[:3]}")
    with nogil, parallel(use_threads_if=parallel):
        scratch = <real*> malloc((3 * a + 9) * C * sizeof(real))
        for f in prange(F, schedule="dynamic"):
            filter_adjoint_row(du, gt, f, dw, scratch)
        free(scratch)
