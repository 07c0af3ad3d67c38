/* The inner loops of minidet/_ext/winograd.pyx, for float and for double.

   They are in C so that GCC can compile each for AVX-512, AVX2 and the x86-64 baseline at once
   (target_clones: the loader picks the widest the CPU has, while the build targets the baseline).

   combine: dst[t] (+)= sum_j coef[j] * src[j][t], t < length (zero coefficients skipped).
   split:   dst[p * plane + q] = row[m q + p - shift], q < q_len: a row split by phase p = column mod m,
            zero outside [0, width), and everywhere when row is NULL (a row outside the input).
   merge:   row[m q + p - shift] (+)= src[p * plane + q] + bias, inside [0, width): split's inverse.
   m is 2 or 4 (F(2x2, 3x3) or F(4x4, 3x3)), a literal stride in every loop so that it vectorises. */
#ifndef MINIDET_WINOGRAD_LOOPS_H
#define MINIDET_WINOGRAD_LOOPS_H

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define MINIDET_WIDEST __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MINIDET_WIDEST
#endif

#define MINIDET_LOOPS(T)                                                                          \
MINIDET_WIDEST static void combine_##T(const T* coef, Py_ssize_t count, const T** src,            \
                                       T* restrict dst, Py_ssize_t length, int add) {             \
    int first = !add;                                                                             \
    for (Py_ssize_t j = 0; j < count; j++) {                                                      \
        const T c = coef[j];                                                                      \
        const T* restrict s = src[j];                                                             \
        if (c == 0) continue;                                                                     \
        if (first) for (Py_ssize_t t = 0; t < length; t++) dst[t] = c * s[t];                     \
        else for (Py_ssize_t t = 0; t < length; t++) dst[t] += c * s[t];                          \
        first = 0;                                                                                \
    }                                                                                             \
    if (first) for (Py_ssize_t t = 0; t < length; t++) dst[t] = 0;                               \
}                                                                                                 \
                                                                                                  \
MINIDET_WIDEST static void split_##T(const T* row, Py_ssize_t width, Py_ssize_t m,                \
                                     Py_ssize_t shift, T* dst, Py_ssize_t plane, Py_ssize_t q_len) { \
    for (Py_ssize_t p = 0; p < m; p++) {                                                          \
        T* out = dst + p * plane;                                                                 \
        const T* in = row ? row + p - shift : row;                                                \
        Py_ssize_t q = 0, lo = row ? p < shift : q_len, hi = (width - p + shift + m - 1) / m;     \
        if (hi > q_len) hi = q_len;                                                               \
        for (; q < lo; q++) out[q] = 0;                                                           \
        if (m == 2) for (; q < hi; q++) out[q] = in[2 * q];                                       \
        else for (; q < hi; q++) out[q] = in[4 * q];                                              \
        for (; q < q_len; q++) out[q] = 0;                                                        \
    }                                                                                             \
}                                                                                                 \
                                                                                                  \
MINIDET_WIDEST static void merge_##T(T* row, Py_ssize_t width, Py_ssize_t m, Py_ssize_t shift,    \
                                     const T* src, Py_ssize_t plane, T bias, int add) {           \
    for (Py_ssize_t p = 0; p < m; p++) {                                                          \
        const T* part = src + p * plane;                                                          \
        T* out = row + p - shift;                                                                 \
        Py_ssize_t lo = p < shift, hi = (width - p + shift + m - 1) / m;                          \
        if (add && m == 2) for (Py_ssize_t q = lo; q < hi; q++) out[2 * q] += part[q] + bias;     \
        else if (add) for (Py_ssize_t q = lo; q < hi; q++) out[4 * q] += part[q] + bias;          \
        else if (m == 2) for (Py_ssize_t q = lo; q < hi; q++) out[2 * q] = part[q] + bias;        \
        else for (Py_ssize_t q = lo; q < hi; q++) out[4 * q] = part[q] + bias;                    \
    }                                                                                             \
}

MINIDET_LOOPS(float)
MINIDET_LOOPS(double)

#endif
