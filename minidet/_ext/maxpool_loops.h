/* The inner loop of minidet/_ext/maxpool.pyx for VGG16's 2x2, stride-2, unpadded windows, for float
   and for double, in C so that GCC compiles it for AVX-512, AVX2 and the x86-64 baseline at once
   (target_clones, as winograd_loops.h) and vectorises it: every comparison is a select, no branch.

   pool2x2_row: one output row. Window ow reads r0[2 ow], r0[2 ow + 1], r1[2 ow], r1[2 ow + 1] in that
   (row-major) order, the columns clipped to `width` and r1 NULL where the second row lies outside
   the input; a candidate replaces the best so far if it is larger or NaN (the rule of the general
   kernel: the first maximum wins a tie, the last NaN wins). y[ow] is the maximum, argmax[ow]
   base + its flat offset, for ow < out_width (<= ceil(width / 2)).

   unpool2x2_row: its backward, which writes the two input rows (d0, d1; d1 NULL where absent)
   whole: dy[ow] where argmax[ow] points, zero elsewhere, and zero in the columns no window covers
   (floor mode, width odd). A 2x2 window of stride 2 never overlaps another, so nothing is added and
   dx needs no clearing first. */
#ifndef MINIDET_MAXPOOL_LOOPS_H
#define MINIDET_MAXPOOL_LOOPS_H

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define MINIDET_POOL_WIDEST __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MINIDET_POOL_WIDEST
#endif

#define MINIDET_TAKE(v, offset) do {                                                              \
        const int take = (v) > best || (v) != (v);                                                \
        best = take ? (v) : best;                                                                 \
        at = take ? (offset) : at;                                                                \
    } while (0)

/* The windows of a row that hold two columns: all of them but a last one-column window (width odd). */
static inline Py_ssize_t minidet_two_column_windows(Py_ssize_t width, Py_ssize_t out_width) {
    return width / 2 < out_width ? width / 2 : out_width;
}

#define MINIDET_POOL2(T)                                                                          \
MINIDET_POOL_WIDEST static void pool2x2_row_##T(const T* restrict r0, const T* restrict r1,       \
                                                Py_ssize_t width, Py_ssize_t out_width,           \
                                                Py_ssize_t base, T* restrict y,                   \
                                                int* restrict argmax) {                           \
    const Py_ssize_t full = minidet_two_column_windows(width, out_width);                         \
    const int w = (int)width;                                                                     \
    for (Py_ssize_t ow = 0; ow < full; ow++) {   /* GCC unswitches the loop on r1 */              \
        T best = r0[2 * ow];                                                                      \
        int at = 0;                                                                               \
        MINIDET_TAKE(r0[2 * ow + 1], 1);                                                          \
        if (r1) {                                                                                 \
            MINIDET_TAKE(r1[2 * ow], w);                                                          \
            MINIDET_TAKE(r1[2 * ow + 1], w + 1);                                                  \
        }                                                                                         \
        y[ow] = best;                                                                             \
        argmax[ow] = (int)(base + 2 * ow) + at;                                                   \
    }                                                                                             \
    if (full < out_width) {                 /* the last window holds one column (width odd) */    \
        T best = r0[2 * full];                                                                    \
        int at = 0;                                                                               \
        if (r1) MINIDET_TAKE(r1[2 * full], w);                                                    \
        y[full] = best;                                                                           \
        argmax[full] = (int)(base + 2 * full) + at;                                               \
    }                                                                                             \
}

#define MINIDET_UNPOOL2(T)                                                                        \
MINIDET_POOL_WIDEST static void unpool2x2_row_##T(const T* restrict dy, const int* restrict argmax, \
                                                  Py_ssize_t width, Py_ssize_t out_width,         \
                                                  Py_ssize_t base, T* restrict d0,                \
                                                  T* restrict d1) {                               \
    const Py_ssize_t full = minidet_two_column_windows(width, out_width);                         \
    const int w = (int)width;                                                                     \
    for (Py_ssize_t ow = 0; ow < full; ow++) {                                                    \
        const int at = argmax[ow] - (int)(base + 2 * ow);                                         \
        const T g = dy[ow];                                                                       \
        d0[2 * ow] = at == 0 ? g : 0;                                                             \
        d0[2 * ow + 1] = at == 1 ? g : 0;                                                         \
        if (d1) {                                                                                 \
            d1[2 * ow] = at == w ? g : 0;                                                         \
            d1[2 * ow + 1] = at == w + 1 ? g : 0;                                                 \
        }                                                                                         \
    }                                                                                             \
    for (Py_ssize_t col = 2 * full; col < width; col++) {   /* one column left (width odd) */     \
        const int covered = full < out_width;                                                     \
        const int at = covered ? argmax[full] - (int)(base + col) : -1;                           \
        d0[col] = at == 0 ? dy[full] : 0;                                                         \
        if (d1) d1[col] = at == w ? dy[full] : 0;                                                 \
    }                                                                                             \
}

MINIDET_POOL2(float)
MINIDET_POOL2(double)
MINIDET_UNPOOL2(float)
MINIDET_UNPOOL2(double)

#endif
