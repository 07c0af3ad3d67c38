"""Winograd F(2x2, 3x3) and F(4x4, 3x3) transforms on the CPU.

The mathematics, the matrices B^T, G, A^T and the layouts V (a*a, C, T), M and Z (a*a, F, T),
U (a*a, F, C) are in minidet/ops/winograd.py, beside a plain NumPy reference of every kernel here.
The matrices come from there as arguments, so both tile sizes share one kernel.

A call covers the tile rows g = n * TH + th in [g0, g0 + G). One task is one strip: a tile row of
one channel (or filter). A strip is copied into a small scratch of the call's own with its padding and its
columns de-interleaved by phase (scratch[i, p, q] = xpad row i, column m * q + p), so that every
1-D pass of a transform is `dst[t] = sum_j coef[j] * src_j[t]` over contiguous rows, tiles
innermost; that loop and the (de-)interleaving are in winograd_loops.h, compiled for the widest
vector unit the CPU has.

All kernels release the GIL and run on the calling thread, over the share `part` of `parts` of their
tasks (contiguous, in order): minidet/ops/winograd.py calls them from minidet.threads' Python
threads, the same that run the layer's GEMMs, so a layer's work never waits on OpenMP threads that
spin after a loop. Tasks write disjoint outputs: the forward transforms own their strip's outputs;
the input transform's adjoint adds overlapping tiles into dx, so a task there is a whole channel
(all its tile rows in order) and no two threads add into the same plane.
"""
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

ctypedef fused real:
    float
    double

cdef enum:
    MAX_TILE = 6        # a = m + 2 for the largest tile size, F(4x4, 3x3)
    BLOCK_TILES = 256   # tiles per task: rows long enough to amortise each pass's loop


cdef extern from "winograd_loops.h":
    void combine_float(const float*, Py_ssize_t, const float**, float*, Py_ssize_t, bint) noexcept nogil
    void combine_double(const double*, Py_ssize_t, const double**, double*, Py_ssize_t, bint) noexcept nogil
    void split_float(const float*, Py_ssize_t, Py_ssize_t, Py_ssize_t, float*, Py_ssize_t, Py_ssize_t) noexcept nogil
    void split_double(const double*, Py_ssize_t, Py_ssize_t, Py_ssize_t, double*, Py_ssize_t,
                      Py_ssize_t) noexcept nogil
    void merge_float(float*, Py_ssize_t, Py_ssize_t, Py_ssize_t, const float*, Py_ssize_t, float, bint) noexcept nogil
    void merge_double(double*, Py_ssize_t, Py_ssize_t, Py_ssize_t, const double*, Py_ssize_t, double,
                      bint) noexcept nogil


cdef inline void combine(const real* coef, Py_ssize_t count, const real** src, real* dst,
                         Py_ssize_t length, bint add) noexcept nogil:
    """dst[t] (+)= sum_j coef[j] * src[j][t] for t < length; zero coefficients cost nothing."""
    if real is float:
        combine_float(coef, count, src, dst, length, add)
    else:
        combine_double(coef, count, src, dst, length, add)


cdef inline void apply_matrix(const real* mat, Py_ssize_t n_out, Py_ssize_t n_in, const real** src,
                              real* dst, Py_ssize_t dst_step, Py_ssize_t length) noexcept nogil:
    """One 1-D pass of a transform: dst + q * dst_step = sum_i mat[q, i] * src[i] for q < n_out
    (mat row-major, n_out x n_in), each a row of `length`."""
    cdef Py_ssize_t q
    for q in range(n_out):
        combine(mat + q * n_in, n_in, src, dst + q * dst_step, length, False)


cdef inline void split_phases(const real* row, Py_ssize_t width, Py_ssize_t m, Py_ssize_t shift,
                              real* dst, Py_ssize_t plane, Py_ssize_t q_len) noexcept nogil:
    if real is float:
        split_float(row, width, m, shift, dst, plane, q_len)
    else:
        split_double(row, width, m, shift, dst, plane, q_len)


cdef inline void merge_phases(real* row, Py_ssize_t width, Py_ssize_t m, Py_ssize_t shift,
                              const real* src, Py_ssize_t plane, real bias, bint add) noexcept nogil:
    if real is float:
        merge_float(row, width, m, shift, src, plane, bias, add)
    else:
        merge_double(row, width, m, shift, src, plane, bias, add)


cdef inline Py_ssize_t block_rows(Py_ssize_t tw, Py_ssize_t left) noexcept nogil:
    """Tile rows per block: about BLOCK_TILES tiles, at least one row, at most `left`."""
    return min(max(BLOCK_TILES // tw, 1), left)


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
            split_phases(&x[n, c, row, 0] if 0 <= row < H else NULL, W, m, 1, rows + i * m * P + b * Q, P, Q)
    for i in range(a):
        src[i] = rows + i * m * P
    apply_matrix(&bt[0, 0], a, a, src, down, m * P, m * P)
    for k in range(a):
        for j in range(a):               # column j of tile tw is phase j % m, index tw + j // m
            for b in range(nb):
                memcpy(cols + j * L + b * TW, down + k * m * P + (j % m) * P + b * Q + j // m,
                       TW * sizeof(real))
            src[j] = cols + j * L
        apply_matrix(&bt[0, 0], a, a, src, &v[k * a, c, col0], v.shape[1] * v.shape[2], L)


cdef void output_block(const real[:, :, ::1] mm, const real[:, ::1] at, real bias, Py_ssize_t f,
                       Py_ssize_t g, Py_ssize_t nb, Py_ssize_t col0, real[:, :, :, ::1] y,
                       real* scratch) noexcept nogil:
    """y[n, f] of tile rows g .. g + nb - 1 = A^T M A + bias, cropped to y."""
    cdef Py_ssize_t m = at.shape[0], a = at.shape[1], H = y.shape[2], W = y.shape[3]
    cdef Py_ssize_t TW = (W + m - 1) // m, TH = (H + m - 1) // m, L = nb * TW
    cdef Py_ssize_t b, n, th, i, j, r
    cdef real* down = scratch            # (m, a, L): A^T applied down the tiles' columns
    cdef real* phase = down + m * a * L  # (m, m, L): output (r, s) of every tile
    cdef const real* src[MAX_TILE]
    for j in range(a):
        for i in range(a):
            src[i] = &mm[i * a + j, f, col0]
        apply_matrix(&at[0, 0], m, a, src, down + j * L, a * L, L)
    for r in range(m):
        for j in range(a):
            src[j] = down + (r * a + j) * L
        apply_matrix(&at[0, 0], m, a, src, phase + r * m * L, L, L)
    for b in range(nb):
        n, th = (g + b) // TH, (g + b) % TH
        for r in range(m):
            if m * th + r < H:
                merge_phases(&y[n, f, m * th + r, 0], W, m, 0, phase + r * m * L + b * TW, L, bias, False)


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
            split_phases(&dy[n, f, row, 0] if row < H else NULL, W, m, 0, rows + r * m * L + b * TW, L, TW)
    for r in range(m):
        for i in range(m):
            src[i] = rows + (r * m + i) * L
        apply_matrix(&a_mat[0, 0], a, m, src, across + r * a * L, L, L)
    for j in range(a):
        for r in range(m):
            src[r] = across + (r * a + j) * L
        apply_matrix(&a_mat[0, 0], a, m, src, &z[j, f, col0], a * z.shape[1] * z.shape[2], L)


cdef void input_adjoint_block(const real[:, :, ::1] dv, const real[:, ::1] b_mat, Py_ssize_t c,
                              Py_ssize_t g, Py_ssize_t nb, Py_ssize_t col0, real[:, :, :, ::1] dx,
                              real* scratch) noexcept nogil:
    """dx[n, c] += B dV B^T of every tile of tile rows g .. g + nb - 1, at its input pixels."""
    cdef Py_ssize_t a = b_mat.shape[0], m = a - 2, H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t TW = (W + m - 1) // m, TH = (H + m - 1) // m, Q = TW + 1
    cdef Py_ssize_t P = nb * Q, L = nb * TW, b, n, th, i, j, k, q, row
    cdef real* cols = scratch            # (a, L): B applied across the tiles, column j, for one k
    cdef real* across = cols + a * L     # (a, m, nb, Q): the same, added into padded columns by phase
    cdef real* rows = across + a * m * P # (a, m, nb, Q): then down: padded input rows
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
    apply_matrix(&b_mat[0, 0], a, a, src, rows, m * P, m * P)
    for b in range(nb):
        n, th = (g + b) // TH, (g + b) % TH
        for i in range(a):
            row = m * th + i - 1
            if 0 <= row < H:
                merge_phases(&dx[n, c, row, 0], W, m, 1, rows + i * m * P + b * Q, P, 0, True)


cdef inline real* new_scratch(Py_ssize_t a, Py_ssize_t rows_per, Py_ssize_t tw, real* kind) noexcept nogil:
    """Per-thread scratch for one block of any of the four tile transforms (the largest need)."""
    return <real*> malloc((2 * a * (a - 2) + a) * rows_per * (tw + 1) * sizeof(real))


cdef inline void check(tuple shape, tuple expected, str what) except *:
    if shape[:len(expected)] != expected:
        raise ValueError(f"{what} must be {expected}, got {shape[:len(expected)]}")


cdef inline Py_ssize_t share(Py_ssize_t tasks, Py_ssize_t part, Py_ssize_t parts) except -1:
    """The first of the tasks [tasks * part // parts, tasks * (part + 1) // parts) of share `part`."""
    if not 0 <= part < parts:
        raise ValueError(f"part must be in [0, parts), got part {part} of {parts}")
    return tasks * part // parts


def to_tiles(const real[:, :, :, ::1] x, const real[:, ::1] mat, Py_ssize_t g0, real[:, :, ::1] out,
             bint output_adjoint=False, Py_ssize_t part=0, Py_ssize_t parts=1):
    """Tiles (a*a, K, G*TW) of the tile rows [g0, g0 + G) of x (N, K, H, W): V = B^T d B with
    mat = B^T (a, a), or, output_adjoint=True, Z = A dY A^T with mat = A (a, m)."""
    cdef Py_ssize_t a = mat.shape[0], K = x.shape[1], TW = (x.shape[3] + a - 3) // (a - 2)
    cdef Py_ssize_t G = out.shape[2] // TW, rows_per = block_rows(TW, G), NB = (G + rows_per - 1) // rows_per
    cdef Py_ssize_t task, b, first = share(K * NB, part, parts), last = K * NB * (part + 1) // parts
    cdef real* scratch = NULL
    check(tuple(out.shape), (a * a, K, G * TW), "Z" if output_adjoint else "V")
    with nogil:
        scratch = new_scratch(a, rows_per, TW, scratch)
        for task in range(first, last):
            b = (task % NB) * rows_per
            if output_adjoint:
                output_adjoint_block(x, mat, task // NB, g0 + b, min(rows_per, G - b), b * TW, out, scratch)
            else:
                input_block(x, mat, task // NB, g0 + b, min(rows_per, G - b), b * TW, out, scratch)
        free(scratch)


def from_tiles(const real[:, :, ::1] t, const real[:, ::1] mat, const real[::1] bias, Py_ssize_t g0,
               real[:, :, :, ::1] image, bint input_adjoint=False, Py_ssize_t part=0, Py_ssize_t parts=1):
    """Write the tile rows [g0, g0 + G) of image (N, K, H, W) = A^T M A + bias of t = M (a*a, K, G*TW)
    with mat = A^T (m, a); or, input_adjoint=True, add B dV B^T of t = dV into them with mat = B (a, a)
    (bias unused). The adjoint's tiles overlap, so its task is a whole channel, its tile rows in order."""
    cdef Py_ssize_t a = mat.shape[1] if not input_adjoint else mat.shape[0], K = image.shape[1]
    cdef Py_ssize_t TW = (image.shape[3] + a - 3) // (a - 2)
    cdef Py_ssize_t G = t.shape[2] // TW, rows_per = block_rows(TW, G), NB = (G + rows_per - 1) // rows_per
    cdef Py_ssize_t tasks = K if input_adjoint else K * NB
    cdef Py_ssize_t task, b, first = share(tasks, part, parts), last = tasks * (part + 1) // parts
    cdef real* scratch = NULL
    check(tuple(t.shape)[:3] + (bias.shape[0],), (a * a, K, G * TW, K), "dV" if input_adjoint else "M and bias")
    with nogil:
        scratch = new_scratch(a, rows_per, TW, scratch)
        for task in range(first, last):
            if input_adjoint:
                b = 0
                while b < G:
                    input_adjoint_block(t, mat, task, g0 + b, min(rows_per, G - b), b * TW, image, scratch)
                    b = b + rows_per
            else:
                b = (task % NB) * rows_per
                output_block(t, mat, bias[task // NB], task // NB, g0 + b, min(rows_per, G - b), b * TW,
                             image, scratch)
        free(scratch)


cdef void filter_row(const real[:, :, ::1] w, const real[:, ::1] g_mat, Py_ssize_t f,
                     real[:, :, ::1] u, real* scratch) noexcept nogil:
    """U[:, f, :] = G w[f, c] G^T for every c (w as (F, C, 9)), channels innermost."""
    cdef Py_ssize_t a = g_mat.shape[0], C = w.shape[1], c, i, j, k
    cdef real* taps = scratch            # (9, C): w[f, :, k]
    cdef real* down = scratch + 9 * C    # (a, 3, C): G applied down the columns
    cdef const real* src[3]
    for c in range(C):
        for k in range(9):
            taps[k * C + c] = w[f, c, k]
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


cdef void filter_adjoint_row(const real[:, :, ::1] du, const real[:, ::1] g_mat, Py_ssize_t f,
                             real[:, :, ::1] dw, real* scratch) noexcept nogil:
    """dw[f, c] = G^T dU[:, f, c] G for every c (dw as (F, C, 9)), channels innermost."""
    cdef Py_ssize_t a = g_mat.shape[0], C = dw.shape[1], c, i, j, k
    cdef real* across = scratch              # (a, 3, C): G^T applied across
    cdef real* taps = scratch + 3 * a * C    # (9, C)
    cdef real gt[3 * MAX_TILE]               # G^T, row by row
    cdef const real* src[MAX_TILE]
    for i in range(a):
        for j in range(3):
            gt[j * a + i] = g_mat[i, j]
    for i in range(a):
        for k in range(a):
            src[k] = &du[i * a + k, f, 0]
        for j in range(3):
            combine(gt + j * a, a, src, across + (3 * i + j) * C, C, False)
    for j in range(3):
        for k in range(a):
            src[k] = across + (3 * k + j) * C
        for i in range(3):
            combine(gt + i * a, a, src, taps + (3 * i + j) * C, C, False)
    for c in range(C):
        for k in range(9):
            dw[f, c, k] = taps[k * C + c]


def filter_transform(const real[:, :, ::1] src, const real[:, ::1] g_mat, real[:, :, ::1] dst,
                     bint adjoint=False, Py_ssize_t part=0, Py_ssize_t parts=1):
    """U (a*a, F, C) = G w[f, c] G^T of w (F, C, 9); adjoint=True: dw (F, C, 9) = G^T dU[:, f, c] G
    of dU (a*a, F, C). g_mat = G (a, 3). A task is one filter f."""
    cdef Py_ssize_t a = g_mat.shape[0], F = dst.shape[1 - adjoint], C = dst.shape[2 - adjoint], f
    cdef Py_ssize_t first = share(F, part, parts), last = F * (part + 1) // parts
    cdef real* scratch = NULL
    cdef tuple filters = (F, C, 9), tiles = (a * a, F, C)
    check(tuple(src.shape), tiles if adjoint else filters, "the filters")
    check(tuple(dst.shape), filters if adjoint else tiles, "out")
    with nogil:
        scratch = <real*> malloc((9 + 3 * a) * C * sizeof(real))
        for f in range(first, last):
            if adjoint:
                filter_adjoint_row(src, g_mat, f, dst, scratch)
            else:
                filter_row(src, g_mat, f, dst, scratch)
        free(scratch)
